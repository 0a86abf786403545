//! [`Translator`]: the outbound (container -> uplink) and inbound (uplink -> container)
//! rewrite paths over whole Ethernet frames, and the control-plane operations.
//!
//! Every check runs before the first byte is written, so a dropped frame is left as it
//! came (one exception: a hairpinned frame, translated outbound and then dropped by the
//! inbound pass).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::time::Instant;

use super::checksum;
use super::fragment::{FragKey, FragTable, FRAG_DATAGRAMS, FRAG_LIFETIME};
use super::session::{
    Direction, Endpoint, InsideKey, OutsideKey, Removal, Session, SessionTable, TcpTrack,
};
use super::wire::{
    icmp_type, tcp_flags, EthernetFrame, IcmpPacket, Ipv4Packet, QuotedL4, TcpPacket, UdpPacket,
    ETHERTYPE_IPV4,
};
#[cfg(doc)]
use super::PortShares;
use super::{
    Config, DropReason, EndpointInfo, NatError, Offloaded, PortEvent, Protocol, SessionView, Stats,
    Verdict,
};

const ETH_LEN: usize = EthernetFrame::<&[u8]>::HEADER_LEN;

/// The translator: configuration, endpoints, published ports, sessions, counters.
#[derive(Debug)]
pub struct Translator {
    config: Config,
    endpoints: HashMap<Ipv4Addr, EndpointInfo>,
    /// (protocol, external port) -> inside address and port.
    published: HashMap<(Protocol, u16), SocketAddrV4>,
    /// (protocol, inside endpoint) -> a published port targeting it, used as the external
    /// port of new outbound sessions from that endpoint.
    published_by_inside: HashMap<(Protocol, Endpoint), u16>,
    table: SessionTable,
    stats: Stats,
    /// The TCP/UDP session the last translated packet belonged to, for
    /// [`Translator::take_offload`].
    last_session: Option<u32>,
    /// Packets a session must have carried before it is offered for offload.
    offload_after: u32,
    /// Fragmented datagrams whose first fragment was translated.
    frags: FragTable,
    /// All the workers' ports when this translator is one of several
    /// ([`Translator::for_workers`]); [`Config::ports`] (its own share) otherwise.
    all_ports: RangeInclusive<u16>,
}

/// Packets a session carries through the translator before it is offloaded: short
/// exchanges (a DNS query, a connection per request) finish here without paying for
/// two map updates and two removals, long ones go to XDP after their first few packets.
pub const OFFLOAD_AFTER_PACKETS: u32 = 8;

/// Where a packet stands in its datagram (RFC 791).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// Not fragmented.
    Whole,
    /// Offset 0 with more fragments: carries the transport header.
    First,
    /// A non-zero offset: payload bytes only.
    Later,
}

/// The IPv4 header fields every path needs, read once the frame is validated.
#[derive(Debug, Clone, Copy)]
struct Head {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ident: u16,
    piece: Piece,
}

impl Head {
    /// The fragment table's key of this packet's datagram going `dir`.
    fn frag_key(&self, dir: Direction) -> FragKey {
        FragKey {
            protocol: self.protocol,
            src: self.src,
            dst: self.dst,
            ident: self.ident,
            dir,
        }
    }
}

/// Validates Ethernet and IPv4 headers; on success `frame[ETH_LEN..]` is a valid
/// `Ipv4Packet` (lengths, checksum) and its TTL allows forwarding.
fn check_frame(frame: &[u8], check_ttl: bool) -> Result<Head, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return Err(DropReason::NotIpv4);
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
    if !ip.verify_checksum() {
        return Err(DropReason::BadChecksum);
    }
    if check_ttl && ip.ttl() <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let piece = if ip.frag_offset() != 0 {
        Piece::Later
    } else if ip.more_frags() {
        Piece::First
    } else {
        Piece::Whole
    };
    Ok(Head {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        protocol: ip.protocol(),
        ident: ip.ident(),
        piece,
    })
}

fn ip_of(frame: &[u8]) -> Ipv4Packet<&[u8]> {
    Ipv4Packet::new_unchecked(&frame[ETH_LEN..])
}

fn ip_of_mut(frame: &mut [u8]) -> Ipv4Packet<&mut [u8]> {
    Ipv4Packet::new_unchecked(&mut frame[ETH_LEN..])
}

/// What a TCP/UDP packet says about itself.
#[derive(Debug, Clone, Copy)]
struct Ports {
    src: u16,
    dst: u16,
    tcp_flags: u8,
}

/// The ports of a TCP/UDP header; `first_fragment`: the header of a datagram that goes
/// on in later fragments (its UDP length is not held against `l4`'s; a TCP header must
/// still be whole in it).
fn transport_ports(
    protocol: Protocol,
    l4: &[u8],
    first_fragment: bool,
) -> Result<Ports, DropReason> {
    match protocol {
        Protocol::Tcp => {
            let t = TcpPacket::new_checked(l4).map_err(|_| DropReason::Malformed)?;
            Ok(Ports {
                src: t.src_port(),
                dst: t.dst_port(),
                tcp_flags: t.flags(),
            })
        }
        _ => {
            let u = if first_fragment {
                UdpPacket::new_checked_first_fragment(l4)
            } else {
                UdpPacket::new_checked(l4)
            }
            .map_err(|_| DropReason::Malformed)?;
            Ok(Ports {
                src: u.src_port(),
                dst: u.dst_port(),
                tcp_flags: 0,
            })
        }
    }
}

/// Type and echo identifier (meaningful for echo messages only) of a validated frame's ICMP
/// message.
/// Addresses a frame from the gateway to endpoint `ep`.
fn address_to(frame: &mut [u8], ep: &EndpointInfo) {
    let mut eth = EthernetFrame::new_unchecked(frame);
    eth.set_src_addr(ep.gateway_mac);
    eth.set_dst_addr(ep.mac);
}

fn icmp_head(frame: &[u8]) -> Result<(u8, u16), DropReason> {
    let ip = ip_of(frame);
    let icmp = IcmpPacket::new_checked(ip.payload()).map_err(|_| DropReason::Malformed)?;
    Ok((icmp.msg_type(), icmp.echo_ident()))
}

fn is_pure_syn(flags: u8) -> bool {
    flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN) == tcp_flags::SYN
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn set_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites the port at `port_at` of a validated TCP/UDP header and fixes its checksum.
/// `old_addrs` / `new_addrs` are the (source, destination) pseudo-header addresses before
/// and after the IP rewrite. A checksum field holding only the pseudo-header sum (transmit
/// offload) is recomputed from scratch; otherwise it is updated incrementally. `whole`
/// is false for a first fragment: its checksum covers bytes of later fragments, so it
/// is only ever updated incrementally (a sender completes the checksum of a datagram
/// before fragmenting it, so it is never partial).
fn rewrite_transport(
    l4: &mut [u8],
    protocol: Protocol,
    port_at: usize,
    new_port: u16,
    old_addrs: (Ipv4Addr, Ipv4Addr),
    new_addrs: (Ipv4Addr, Ipv4Addr),
    whole: bool,
) {
    let (csum_at, cover) = match protocol {
        Protocol::Tcp => (TcpPacket::<&[u8]>::CHECKSUM_OFFSET, l4.len()),
        _ => (
            UdpPacket::<&[u8]>::CHECKSUM_OFFSET,
            usize::from(UdpPacket::new_unchecked(&*l4).len()),
        ),
    };
    let old_port = be16(l4, port_at);
    set_be16(l4, port_at, new_port);
    let cs = be16(l4, csum_at);
    if protocol == Protocol::Udp && cs == 0 {
        return; // no checksum, and none is added
    }
    let proto = protocol.number();
    let len16 = cover as u16; // IP total length bounds it
    let old_pseudo = checksum::pseudo_header_sum(old_addrs.0, old_addrs.1, proto, len16);
    let new_cs = if whole && checksum::is_partial(cs, old_pseudo) {
        set_be16(l4, csum_at, 0);
        let pseudo = checksum::pseudo_header_sum(new_addrs.0, new_addrs.1, proto, len16);
        !checksum::fold(checksum::sum(&l4[..cover], pseudo))
    } else {
        let c = checksum::update(cs, &old_addrs.0.octets(), &new_addrs.0.octets());
        let c = checksum::update(c, &old_addrs.1.octets(), &new_addrs.1.octets());
        checksum::update16(c, old_port, new_port)
    };
    let new_cs = if protocol == Protocol::Udp && new_cs == 0 {
        0xffff
    } else {
        new_cs
    };
    set_be16(l4, csum_at, new_cs);
}

/// Rewrites the source (outbound) or destination (inbound) address and port / echo
/// identifier of a validated frame (a whole packet or a first fragment), decrements the
/// TTL, and fixes every checksum.
fn rewrite(frame: &mut [u8], dir: Direction, addr: Ipv4Addr, port: u16, decrement_ttl: bool) {
    let mut ip = ip_of_mut(frame);
    let whole = !ip.is_fragment();
    if decrement_ttl {
        ip.decrement_ttl();
    }
    let old_addrs = (ip.src_addr(), ip.dst_addr());
    ip.rewrite_addr(dir == Direction::Inbound, addr);
    let new_addrs = (ip.src_addr(), ip.dst_addr());
    let proto = Protocol::from_number(ip.protocol());
    let l4 = ip.payload_mut();
    match proto {
        Some(Protocol::Icmp) => {
            let mut icmp = IcmpPacket::new_unchecked(l4);
            let old = icmp.echo_ident();
            icmp.set_echo_ident(port);
            let c = checksum::update16(icmp.checksum(), old, port);
            icmp.set_checksum(c);
        }
        Some(p) => {
            let port_at = if dir == Direction::Inbound { 2 } else { 0 };
            rewrite_transport(l4, p, port_at, port, old_addrs, new_addrs, whole);
        }
        None => unreachable!("protocol checked before rewriting"),
    }
}

/// The packet quoted in an ICMP error, as far as the translator needs it.
#[derive(Debug, Clone, Copy)]
struct Quote {
    protocol: Protocol,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// TCP/UDP source port, or the echo identifier.
    src_port: u16,
    /// TCP/UDP destination port, 0 for ICMP.
    dst_port: u16,
}

/// Parses the ICMP error in a validated frame: the quoted IP header must be complete and
/// followed by at least 8 bytes of a TCP, UDP or ICMP echo header.
fn parse_quote(frame: &[u8]) -> Result<Quote, DropReason> {
    let ip = ip_of(frame);
    let icmp = IcmpPacket::new_checked(ip.payload()).map_err(|_| DropReason::Malformed)?;
    let inner = Ipv4Packet::new_checked_header(icmp.data()).map_err(|_| DropReason::Malformed)?;
    if inner.frag_offset() != 0 {
        // A later fragment quotes no transport header.
        return Err(DropReason::Fragment);
    }
    let protocol =
        Protocol::from_number(inner.protocol()).ok_or(DropReason::UnsupportedProtocol)?;
    let q = QuotedL4::new_checked(inner.payload(), protocol.number())
        .map_err(|_| DropReason::Malformed)?;
    if protocol == Protocol::Icmp
        && !matches!(
            q.icmp_type(),
            icmp_type::ECHO_REQUEST | icmp_type::ECHO_REPLY
        )
    {
        // No errors about errors (RFC 1122 3.2.2).
        return Err(DropReason::UnsupportedProtocol);
    }
    Ok(Quote {
        protocol,
        src: inner.src_addr(),
        dst: inner.dst_addr(),
        src_port: q.src_port(),
        dst_port: q.dst_port(),
    })
}

/// Translates an ICMP error in place (RFC 5508). Outbound: outer source and quoted
/// destination become the external address and port. Inbound: outer destination and
/// quoted source become the inside address and port. Fixes the outer IP checksum, the
/// quoted IP checksum, the quoted transport checksum if the quote holds it, and the ICMP
/// checksum (incrementally over the rewritten quote).
fn rewrite_error(frame: &mut [u8], dir: Direction, addr: Ipv4Addr, port: u16, ttl: bool) {
    let mut ip = ip_of_mut(frame);
    if ttl {
        ip.decrement_ttl();
    }
    let inbound = dir == Direction::Inbound;
    ip.rewrite_addr(inbound, addr);
    let mut icmp = IcmpPacket::new_unchecked(ip.payload_mut());
    let old_icmp_cs = icmp.checksum();
    let data = icmp.data_mut();
    let (hl, proto, quoted_len) = {
        let inner = Ipv4Packet::new_unchecked(&*data);
        let proto = Protocol::from_number(inner.protocol()).expect("quote checked");
        (inner.header_len(), proto, inner.payload().len())
    };
    // The rewritten region: the quoted IP header and the quoted transport header up to
    // its checksum. It starts at an even offset of the ICMP message, so its sum before
    // and after gives the ICMP checksum update.
    let region = hl + quoted_len.min(TcpPacket::<&[u8]>::CHECKSUM_OFFSET + 2);
    let old_sum = checksum::sum(&data[..region], 0);
    {
        let mut inner = Ipv4Packet::new_unchecked(&mut *data);
        let old_inner = inner.rewrite_addr(!inbound, addr);
        let mut q =
            QuotedL4::new_checked(inner.payload_mut(), proto.number()).expect("quote checked");
        // Outbound errors quote a packet sent to the container: its port is the
        // destination. The echo identifier is the same field both ways.
        let port_is_dst = !inbound && proto != Protocol::Icmp;
        let old_port = if port_is_dst {
            q.dst_port()
        } else {
            q.src_port()
        };
        q.set_port(port_is_dst, port);
        if let Some(cs) = q.checksum() {
            let fixed = match proto {
                Protocol::Icmp => Some(checksum::update16(cs, old_port, port)),
                Protocol::Udp if cs == 0 => None,
                _ => {
                    let c = checksum::update(cs, &old_inner.octets(), &addr.octets());
                    let c = checksum::update16(c, old_port, port);
                    Some(if proto == Protocol::Udp && c == 0 {
                        0xffff
                    } else {
                        c
                    })
                }
            };
            if let Some(c) = fixed {
                q.set_checksum(c);
            }
        }
    }
    let new_sum = checksum::sum(&data[..region], 0);
    icmp.set_checksum(checksum::update_sums(old_icmp_cs, old_sum, new_sum));
}

impl Translator {
    /// Makes a translator. Panics if the configuration is invalid (see
    /// [`Translator::try_new`]).
    pub fn new(config: Config) -> Self {
        match Self::try_new(config) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    /// Makes a translator, refusing an empty port range, a range containing 0,
    /// `max_sessions == 0`, more than `u32::MAX` sessions or a per-endpoint limit of 0.
    pub fn try_new(config: Config) -> Result<Self, NatError> {
        if config.ports.is_empty() {
            return Err(NatError::InvalidConfig("the port range is empty"));
        }
        if *config.ports.start() == 0 {
            return Err(NatError::InvalidConfig("the port range must not contain 0"));
        }
        if config.max_sessions == 0 || config.max_sessions > u32::MAX as usize {
            return Err(NatError::InvalidConfig(
                "max_sessions must be between 1 and 2^32 - 1",
            ));
        }
        if config.max_sessions_per_endpoint == Some(0) {
            return Err(NatError::InvalidConfig(
                "max_sessions_per_endpoint must be at least 1",
            ));
        }
        if config.max_ports_per_endpoint == Some(0) {
            return Err(NatError::InvalidConfig(
                "max_ports_per_endpoint must be at least 1",
            ));
        }
        Ok(Translator {
            all_ports: config.ports.clone(),
            table: SessionTable::new(
                config.max_sessions,
                config.max_sessions_per_endpoint,
                config.max_ports_per_endpoint,
                &config.ports,
            ),
            config,
            endpoints: HashMap::new(),
            published: HashMap::new(),
            published_by_inside: HashMap::new(),
            stats: Stats::default(),
            last_session: None,
            offload_after: OFFLOAD_AFTER_PACKETS,
            frags: FragTable::new(FRAG_DATAGRAMS, FRAG_LIFETIME),
        })
    }

    /// `workers` translators that share `config`'s work, one per worker thread: each
    /// allocates only from its own share of [`Config::ports`] and holds its part of the
    /// limits ([`Config::split`]), so they never hand out the same external port and
    /// need no lock between them. A flow must always reach the same worker (see
    /// docs/design/nat-fast-tc.md, step 5): replies to a dynamic session reach the
    /// worker whose share holds their destination port ([`PortShares::owner`]).
    /// `workers == 1` is [`Translator::try_new`]. Endpoints and publications are each
    /// worker's to be told.
    pub fn for_workers(config: Config, workers: usize) -> Result<Vec<Self>, NatError> {
        let all_ports = config.ports.clone();
        config
            .split(workers)?
            .into_iter()
            .map(|c| {
                let mut t = Self::try_new(c)?;
                t.all_ports = all_ports.clone();
                Ok(t)
            })
            .collect()
    }

    /// Whether `port` is another worker's: in the workers' whole range, outside this
    /// translator's share.
    fn is_foreign(&self, port: u16) -> bool {
        self.all_ports.contains(&port) && !self.config.ports.contains(&port)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Registers (or updates) a container endpoint.
    pub fn add_endpoint(&mut self, info: EndpointInfo) {
        self.endpoints.insert(info.ip, info);
    }

    /// Forgets an endpoint and drops its sessions; returns how many. Published ports that
    /// target it stay (a container restarting on the same address keeps them).
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> usize {
        self.endpoints.remove(&ip);
        self.table
            .remove_where(Removal::Removed, &mut self.stats, |s| s.inside.0 == ip)
    }

    /// Forwards `external_port` of the external address to `ip:internal_port`. A port inside
    /// [`Config::ports`] is taken out of the dynamic pool while published.
    pub fn publish(
        &mut self,
        protocol: Protocol,
        external_port: u16,
        ip: Ipv4Addr,
        internal_port: u16,
    ) -> Result<(), NatError> {
        if protocol == Protocol::Icmp {
            return Err(NatError::IcmpNotPublishable);
        }
        if external_port == 0 || internal_port == 0 {
            return Err(NatError::ZeroPort);
        }
        if let Some(existing) = self.published.get(&(protocol, external_port)) {
            return Err(NatError::AlreadyPublished {
                protocol,
                port: external_port,
                existing: *existing,
            });
        }
        if self.table.reserve(protocol, external_port).is_err() {
            return Err(NatError::PortInUse {
                protocol,
                port: external_port,
            });
        }
        self.published.insert(
            (protocol, external_port),
            SocketAddrV4::new(ip, internal_port),
        );
        self.published_by_inside
            .entry((protocol, (ip, internal_port)))
            .or_insert(external_port);
        Ok(())
    }

    /// Withdraws a published port and drops the sessions made through it; returns how
    /// many (0 if it was not published).
    pub fn unpublish(&mut self, protocol: Protocol, external_port: u16) -> usize {
        let Some(target) = self.published.remove(&(protocol, external_port)) else {
            return 0;
        };
        self.table.unreserve(protocol, external_port);
        let inside = (*target.ip(), target.port());
        if self.published_by_inside.get(&(protocol, inside)) == Some(&external_port) {
            self.published_by_inside.remove(&(protocol, inside));
            // Another published port to the same place takes over (lowest first).
            if let Some(other) = self
                .published
                .iter()
                .filter(|((p, _), t)| *p == protocol && **t == target)
                .map(|((_, port), _)| *port)
                .min()
            {
                self.published_by_inside.insert((protocol, inside), other);
            }
        }
        self.table
            .remove_where(Removal::Removed, &mut self.stats, |s| {
                s.protocol == protocol
                    && s.origin == super::session::Origin::Published(external_port)
            })
    }

    /// Translates a frame sent by a container. On `Uplink`, the frame is rewritten and its
    /// source MAC set; the adapter writes the destination MAC for `remote`'s next hop. A
    /// frame to the external address itself is hairpinned: translated both ways and
    /// delivered to the target endpoint.
    pub fn outbound(&mut self, now: Instant, frame: &mut [u8]) -> Verdict {
        self.last_session = None;
        match self.translate_outbound(now, frame) {
            Ok(remote) => {
                self.stats.translated_outbound += 1;
                if remote == self.config.external_ip {
                    return self.finish_inbound(now, frame, true);
                }
                Verdict::Uplink { remote }
            }
            Err(r) => {
                self.stats.count_drop(r);
                Verdict::Drop(r)
            }
        }
    }

    /// Translates a frame that arrived on the uplink for the external address. On
    /// `Endpoint`, the frame is rewritten and both MACs set.
    pub fn inbound(&mut self, now: Instant, frame: &mut [u8]) -> Verdict {
        self.last_session = None;
        self.finish_inbound(now, frame, false)
    }

    fn finish_inbound(&mut self, now: Instant, frame: &mut [u8], hairpin: bool) -> Verdict {
        match self.translate_inbound(now, frame, hairpin) {
            Ok(port) => {
                self.stats.translated_inbound += 1;
                Verdict::Endpoint { port }
            }
            Err(r) => {
                self.stats.count_drop(r);
                Verdict::Drop(r)
            }
        }
    }

    fn translate_outbound(
        &mut self,
        now: Instant,
        frame: &mut [u8],
    ) -> Result<Ipv4Addr, DropReason> {
        let head = check_frame(frame, true)?;
        if !self.endpoints.contains_key(&head.src) {
            return Err(DropReason::UnknownEndpoint);
        }
        let protocol =
            Protocol::from_number(head.protocol).ok_or(DropReason::UnsupportedProtocol)?;
        let external_ip = self.config.external_ip;
        if head.piece == Piece::Later {
            let addr = self
                .frags
                .get(now, &head.frag_key(Direction::Outbound))
                .ok_or(DropReason::FragmentWithoutHead)?;
            let mut ip = ip_of_mut(frame);
            ip.decrement_ttl();
            ip.rewrite_addr(false, addr);
            EthernetFrame::new_unchecked(&mut *frame).set_src_addr(self.config.uplink_mac);
            self.stats.fragments_outbound += 1;
            return Ok(head.dst);
        }
        let first = head.piece == Piece::First;
        match protocol {
            Protocol::Tcp | Protocol::Udp => {
                let ports = transport_ports(protocol, ip_of(frame).payload(), first)?;
                let key = InsideKey {
                    protocol,
                    inside: (head.src, ports.src),
                    remote: (head.dst, ports.dst),
                };
                // Only a SYN opens a TCP session (RFC 5382); any datagram opens a UDP
                // one (RFC 4787).
                let opens = protocol != Protocol::Tcp || is_pure_syn(ports.tcp_flags);
                let id = self.outbound_session(now, &key, opens)?;
                let ext = self.refresh(now, id, Direction::Outbound, ports.tcp_flags);
                rewrite(frame, Direction::Outbound, external_ip, ext, true);
                self.last_session = Some(id);
            }
            Protocol::Icmp => {
                let (msg_type, ident) = icmp_head(frame)?;
                match msg_type {
                    icmp_type::ECHO_REQUEST => {
                        let key = InsideKey {
                            protocol,
                            inside: (head.src, ident),
                            remote: (head.dst, 0),
                        };
                        let id = self.outbound_session(now, &key, true)?;
                        let ext = self.refresh(now, id, Direction::Outbound, 0);
                        rewrite(frame, Direction::Outbound, external_ip, ext, true);
                    }
                    t if icmp_type::is_error(t) => {
                        let id = self.error_session(now, frame, first, Direction::Outbound)?;
                        let ext = self.table.get(id).external_port;
                        rewrite_error(frame, Direction::Outbound, external_ip, ext, true);
                    }
                    _ => return Err(DropReason::UnsupportedProtocol),
                }
            }
        }
        EthernetFrame::new_unchecked(&mut *frame).set_src_addr(self.config.uplink_mac);
        if first {
            self.frags
                .insert(now, head.frag_key(Direction::Outbound), external_ip);
            self.stats.fragments_outbound += 1;
        }
        Ok(head.dst)
    }

    fn translate_inbound(
        &mut self,
        now: Instant,
        frame: &mut [u8],
        hairpin: bool,
    ) -> Result<u32, DropReason> {
        // A hairpinned frame had its TTL checked and decremented on the way out.
        let head = check_frame(frame, !hairpin)?;
        if head.dst != self.config.external_ip {
            return Err(DropReason::NotForUs);
        }
        let protocol =
            Protocol::from_number(head.protocol).ok_or(DropReason::UnsupportedProtocol)?;
        if head.piece == Piece::Later {
            let addr = self
                .frags
                .get(now, &head.frag_key(Direction::Inbound))
                .ok_or(DropReason::FragmentWithoutHead)?;
            let ep = self.endpoint(addr)?;
            let mut ip = ip_of_mut(frame);
            if !hairpin {
                ip.decrement_ttl();
            }
            ip.rewrite_addr(true, addr);
            address_to(frame, &ep);
            self.stats.fragments_inbound += 1;
            return Ok(ep.port);
        }
        let first = head.piece == Piece::First;
        let (ep, inside) = match protocol {
            Protocol::Tcp | Protocol::Udp => {
                let ports = transport_ports(protocol, ip_of(frame).payload(), first)?;
                let key = OutsideKey {
                    protocol,
                    external_port: ports.dst,
                    remote: (head.src, ports.src),
                };
                let id = match self.table.lookup(now, &key, &mut self.stats) {
                    Some(id) => id,
                    None => self.open_published(now, &key, ports.tcp_flags)?,
                };
                let delivered = self.deliver(now, frame, id, ports.tcp_flags, hairpin)?;
                if !hairpin {
                    self.last_session = Some(id);
                }
                delivered
            }
            Protocol::Icmp => {
                let (msg_type, ident) = icmp_head(frame)?;
                match msg_type {
                    icmp_type::ECHO_REPLY => {
                        let key = OutsideKey {
                            protocol,
                            external_port: ident,
                            remote: (head.src, 0),
                        };
                        let id = self
                            .table
                            .lookup(now, &key, &mut self.stats)
                            .ok_or_else(|| self.miss(protocol, key.external_port))?;
                        self.deliver(now, frame, id, 0, hairpin)?
                    }
                    t if icmp_type::is_error(t) => {
                        let id = self.error_session(now, frame, first, Direction::Inbound)?;
                        let inside = self.table.get(id).inside;
                        let ep = self.endpoint(inside.0)?;
                        rewrite_error(frame, Direction::Inbound, inside.0, inside.1, !hairpin);
                        (ep, inside.0)
                    }
                    _ => return Err(DropReason::UnsupportedProtocol),
                }
            }
        };
        address_to(frame, &ep);
        if first {
            self.frags
                .insert(now, head.frag_key(Direction::Inbound), inside);
            self.stats.fragments_inbound += 1;
        }
        Ok(ep.port)
    }

    /// The session an ICMP error going `dir` is about, found by the packet it quotes: one
    /// that came in to the error's source (the container), for an outbound error; one
    /// that went out from the external address, for an inbound error. Errors neither
    /// create nor refresh sessions, and one in a first fragment is not translated.
    fn error_session(
        &mut self,
        now: Instant,
        frame: &[u8],
        first: bool,
        dir: Direction,
    ) -> Result<u32, DropReason> {
        if first {
            return Err(DropReason::Fragment);
        }
        let q = parse_quote(frame)?;
        let id = match dir {
            Direction::Outbound if q.dst == ip_of(frame).src_addr() => {
                let key = match q.protocol {
                    Protocol::Icmp => InsideKey {
                        protocol: q.protocol,
                        inside: (q.dst, q.src_port),
                        remote: (q.src, 0),
                    },
                    _ => InsideKey {
                        protocol: q.protocol,
                        inside: (q.dst, q.dst_port),
                        remote: (q.src, q.src_port),
                    },
                };
                self.table.lookup(now, &key, &mut self.stats)
            }
            Direction::Inbound if q.src == self.config.external_ip => {
                let key = OutsideKey {
                    protocol: q.protocol,
                    external_port: q.src_port,
                    remote: (q.dst, q.dst_port),
                };
                self.table.lookup(now, &key, &mut self.stats)
            }
            _ => None,
        };
        id.ok_or(DropReason::NoSession)
    }

    /// The session of an outbound packet: found, or made when `opens` (a packet that may
    /// start one).
    fn outbound_session(
        &mut self,
        now: Instant,
        key: &InsideKey,
        opens: bool,
    ) -> Result<u32, DropReason> {
        if let Some(id) = self.table.lookup(now, key, &mut self.stats) {
            return Ok(id);
        }
        if !opens {
            return Err(DropReason::NoSession);
        }
        let published = self
            .published_by_inside
            .get(&(key.protocol, key.inside))
            .copied();
        self.create_session(now, key, published)
    }

    /// A new session of `key`, through the published external port `published` if any
    /// (else one from the pool).
    fn create_session(
        &mut self,
        now: Instant,
        key: &InsideKey,
        published: Option<u16>,
    ) -> Result<u32, DropReason> {
        let timeouts = self.config.timeouts;
        self.table.create(
            now,
            &timeouts,
            &mut self.stats,
            key.protocol,
            key.inside,
            key.remote,
            published,
            TcpTrack::default(),
        )
    }

    /// Refreshes session `id` with an inbound packet and rewrites the packet's destination
    /// to the session's inside address: the endpoint it goes to, and that address.
    fn deliver(
        &mut self,
        now: Instant,
        frame: &mut [u8],
        id: u32,
        tcp_flags: u8,
        hairpin: bool,
    ) -> Result<(EndpointInfo, Ipv4Addr), DropReason> {
        self.refresh(now, id, Direction::Inbound, tcp_flags);
        let inside = self.table.get(id).inside;
        let ep = self.endpoint(inside.0)?;
        rewrite(frame, Direction::Inbound, inside.0, inside.1, !hairpin);
        Ok((ep, inside.0))
    }

    /// An inbound TCP/UDP packet without a session: a published port opens one (TCP: only
    /// with a SYN); otherwise tells a filtered packet from a plain miss.
    fn open_published(
        &mut self,
        now: Instant,
        key: &OutsideKey,
        flags: u8,
    ) -> Result<u32, DropReason> {
        let Some(target) = self
            .published
            .get(&(key.protocol, key.external_port))
            .copied()
        else {
            return Err(self.miss(key.protocol, key.external_port));
        };
        if key.protocol == Protocol::Tcp && !is_pure_syn(flags) {
            return Err(DropReason::NoSession);
        }
        self.endpoint(*target.ip())?;
        let inside = (*target.ip(), target.port());
        let ikey = InsideKey {
            protocol: key.protocol,
            inside,
            remote: key.remote,
        };
        if self.table.lookup(now, &ikey, &mut self.stats).is_some() {
            // The container already talks to this remote from this port through another
            // external port; a second session would make its replies ambiguous.
            return Err(DropReason::SessionConflict);
        }
        self.create_session(now, &ikey, Some(key.external_port))
    }

    fn miss(&self, protocol: Protocol, external_port: u16) -> DropReason {
        if self.table.is_mapped(protocol, external_port) {
            DropReason::Filtered
        } else {
            DropReason::NoSession
        }
    }

    fn endpoint(&self, ip: Ipv4Addr) -> Result<EndpointInfo, DropReason> {
        self.endpoints
            .get(&ip)
            .copied()
            .ok_or(DropReason::UnknownEndpoint)
    }

    /// Records a packet on a session (TCP flags, timeout); returns its external port.
    fn refresh(&mut self, now: Instant, id: u32, dir: Direction, flags: u8) -> u16 {
        let timeouts = self.config.timeouts;
        let s = self.table.get_mut(id);
        let was_evictable = s.is_evictable();
        if s.protocol == Protocol::Tcp {
            s.tcp.on_segment(dir, flags);
        }
        s.directions |= match dir {
            Direction::Outbound => Session::OUT,
            Direction::Inbound => Session::IN,
        };
        s.packets = s.packets.saturating_add(1);
        s.touch(now, &timeouts);
        let ext = s.external_port;
        let leaves_fast_path = s.offloaded && !s.is_offloadable();
        if !was_evictable && s.is_evictable() {
            self.table.note_evictable(id);
        }
        if leaves_fast_path {
            // A SYN, FIN or RST: the state changed, and the kernel must stop rewriting.
            self.table.unoffload(id);
        }
        ext
    }

    /// The session of the last packet translated, if it can now go to the XDP fast path
    /// (established both ways, not already there, not hairpinned): marks it offloaded and
    /// returns it. The caller installs its flow entries, or calls
    /// [`Translator::unoffload`] if it cannot.
    pub fn take_offload(&mut self) -> Option<Offloaded> {
        let id = self.last_session.take()?;
        let external_ip = self.config.external_ip;
        let s = self.table.get_mut(id);
        if s.offloaded
            || !s.is_offloadable()
            || s.packets < self.offload_after
            || s.remote.0 == external_ip
        {
            return None;
        }
        if !self.endpoints.get(&s.inside.0).is_some_and(|e| e.offload) {
            return None;
        }
        s.offloaded = true;
        Some(s.offloaded_view())
    }

    /// Whether `ip`'s sessions are offered for offload (the data plane turns it off
    /// while neither of the endpoint's devices accepts XDP redirects, so that no
    /// session is offered on every packet in vain).
    pub fn set_offload(&mut self, ip: Ipv4Addr, on: bool) {
        if let Some(e) = self.endpoints.get_mut(&ip) {
            e.offload = on;
        }
    }

    /// Sets how many packets a session carries here before [`Translator::take_offload`]
    /// offers it ([`OFFLOAD_AFTER_PACKETS`] by default): for tests of the offload itself.
    #[cfg(any(test, feature = "testing"))]
    pub fn set_offload_after(&mut self, packets: u32) {
        self.offload_after = packets;
    }

    /// Takes a session back from the fast path without queueing it in
    /// [`Translator::drain_unoffloaded`] (the caller already removed its entries, e.g.
    /// after a next-hop change). A missing session is ignored.
    pub fn unoffload(&mut self, o: &Offloaded) {
        let key = InsideKey {
            protocol: o.protocol,
            inside: (*o.inside.ip(), o.inside.port()),
            remote: (*o.remote.ip(), o.remote.port()),
        };
        if let Some(id) = self.table.find_inside(&key) {
            self.table.get_mut(id).offloaded = false;
        }
    }

    /// Offloaded sessions removed or taken back since the last call: their flow entries
    /// must go.
    pub fn drain_unoffloaded(&mut self) -> impl Iterator<Item = Offloaded> + '_ {
        self.table.drain_unoffloaded()
    }

    /// [`Translator::expire`], asking `last_seen(session)` when an offloaded session is
    /// due: the kernel's last forwarding time keeps a busy one alive.
    pub fn expire_offloaded(
        &mut self,
        now: Instant,
        mut last_seen: impl FnMut(&Offloaded) -> Option<Instant>,
    ) -> usize {
        let timeouts = self.config.timeouts;
        self.table
            .expire_offloaded(now, &timeouts, &mut self.stats, |s| {
                last_seen(&s.offloaded_view())
            })
    }

    /// Removes every session idle past its timeout (offloaded ones included, as if the
    /// kernel had forwarded nothing: see [`Translator::expire_offloaded`]); returns how
    /// many.
    pub fn expire(&mut self, now: Instant) -> usize {
        self.expire_offloaded(now, |_| None)
    }

    /// Dynamic sessions that started or ended since the last call, in order (see
    /// [`PortEvent`]).
    pub fn drain_port_events(&mut self) -> impl Iterator<Item = PortEvent> + '_ {
        self.table.drain_events()
    }

    /// Takes over flows the kernel's conntrack carried for this translator's endpoints
    /// (see [`super::session::SessionTable::adopt`]); flows of other addresses, through
    /// a port that is not published to that container, or (one of several workers) on
    /// another worker's port, are skipped. Returns how
    /// many were adopted and how many refused (their external side is taken).
    pub fn adopt(
        &mut self,
        now: Instant,
        flows: impl IntoIterator<Item = super::session::Adoptee>,
    ) -> (u64, u64) {
        let timeouts = self.config.timeouts;
        let (mut adopted, mut refused) = (0, 0);
        for a in flows {
            let inside = SocketAddrV4::new(a.inside.0, a.inside.1);
            // A publication is registered after its endpoint: a published flow is taken
            // unless its port is published to another container. A dynamic flow on
            // another worker's port is that worker's to adopt.
            let ours = self.endpoints.contains_key(&a.inside.0)
                && if a.published {
                    self.published
                        .get(&(a.protocol, a.external_port))
                        .is_none_or(|to| *to == inside)
                } else {
                    !self.is_foreign(a.external_port)
                };
            if !ours {
                continue;
            }
            match self.table.adopt(now, &timeouts, &mut self.stats, a) {
                Ok(_) => adopted += 1,
                Err(_) => refused += 1,
            }
        }
        self.table.adoption_done();
        (adopted, refused)
    }

    pub fn sessions(&self) -> impl Iterator<Item = SessionView> + '_ {
        self.table.iter().map(|s| s.view())
    }

    pub fn session_count(&self) -> usize {
        self.table.len()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Published ports: (protocol, external port, target).
    pub fn published(&self) -> impl Iterator<Item = (Protocol, u16, SocketAddrV4)> + '_ {
        self.published.iter().map(|((p, port), t)| (*p, *port, *t))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testkit::*;
    use super::super::Timeouts;
    use super::*;
    use dovesnap_testbed::rand::XorShift;

    const PORTS: std::ops::RangeInclusive<u16> = 40000..=40099;

    fn config(ports: std::ops::RangeInclusive<u16>, max_sessions: usize) -> Config {
        Config {
            external_ip: EXT,
            uplink_mac: UPLINK_MAC,
            ports,
            max_sessions,
            max_sessions_per_endpoint: None,
            max_ports_per_endpoint: None,
            timeouts: Timeouts::default(),
        }
    }

    fn with(ports: std::ops::RangeInclusive<u16>, max_sessions: usize) -> Translator {
        with_config(config(ports, max_sessions))
    }

    fn with_config(config: Config) -> Translator {
        with_endpoints(Translator::new(config))
    }

    /// `t` with C1 (TX port 1) and C2 (TX port 2) registered.
    fn with_endpoints(mut t: Translator) -> Translator {
        t.add_endpoint(EndpointInfo {
            ip: C1,
            mac: C1_MAC,
            gateway_mac: GW_MAC,
            port: 1,
            offload: true,
        });
        t.add_endpoint(EndpointInfo {
            ip: C2,
            mac: C2_MAC,
            gateway_mac: GW2_MAC,
            port: 2,
            offload: true,
        });
        t
    }

    fn nat() -> Translator {
        with(PORTS, 1000)
    }

    /// [`nat`] offering sessions for offload from their first packet both ways.
    fn offloading_nat() -> Translator {
        let mut t = nat();
        t.set_offload_after(0);
        t
    }

    fn out_tcp(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16, flags: u8) -> Vec<u8> {
        from_container(src, dst, 6, &tcp(src, dst, sp, dp, flags, b"hello"))
    }

    fn in_tcp(src: Ipv4Addr, sp: u16, dp: u16, flags: u8) -> Vec<u8> {
        from_uplink(src, EXT, 6, &tcp(src, EXT, sp, dp, flags, b"world!"))
    }

    fn out_udp(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16) -> Vec<u8> {
        from_container(src, dst, 17, &udp(src, dst, sp, dp, b"query", true))
    }

    fn in_udp(src: Ipv4Addr, sp: u16, dp: u16) -> Vec<u8> {
        from_uplink(src, EXT, 17, &udp(src, EXT, sp, dp, b"answer", true))
    }

    /// Sends outbound, expects `Uplink`, verifies checksums, returns what left.
    fn go_out(t: &mut Translator, now: Instant, mut f: Vec<u8>) -> Seen {
        let v = t.outbound(now, &mut f);
        let s = verify(&f);
        assert_eq!(v, Verdict::Uplink { remote: s.dst }, "{s:?}");
        assert_eq!(s.eth_src, UPLINK_MAC);
        assert_eq!(s.src, EXT);
        s
    }

    fn go_in(t: &mut Translator, now: Instant, mut f: Vec<u8>) -> (Verdict, Seen) {
        let v = t.inbound(now, &mut f);
        (v, verify(&f))
    }

    /// A UDP conversation from `src:sp` to `dst:dp`: a question, its answer and one
    /// more datagram (assured, like conntrack's). Returns the external port.
    fn converse_udp(
        t: &mut Translator,
        now: Instant,
        src: Ipv4Addr,
        sp: u16,
        dst: Ipv4Addr,
        dp: u16,
    ) -> u16 {
        let p = go_out(t, now, out_udp(src, sp, dst, dp)).sport;
        go_in(t, now, in_udp(dst, dp, p));
        go_out(t, now, out_udp(src, sp, dst, dp));
        p
    }

    /// Why `go` (outbound or inbound) drops `f`, which it must leave alone.
    fn dropped(
        t: &mut Translator,
        now: Instant,
        mut f: Vec<u8>,
        go: fn(&mut Translator, Instant, &mut [u8]) -> Verdict,
    ) -> DropReason {
        let before = f.clone();
        match go(t, now, &mut f) {
            Verdict::Drop(r) => {
                assert_eq!(f, before, "a dropped frame is left alone");
                r
            }
            v => panic!("expected a drop, got {v:?}"),
        }
    }

    fn drop_out(t: &mut Translator, now: Instant, f: Vec<u8>) -> DropReason {
        dropped(t, now, f, Translator::outbound)
    }

    fn drop_in(t: &mut Translator, now: Instant, f: Vec<u8>) -> DropReason {
        dropped(t, now, f, Translator::inbound)
    }

    #[test]
    fn tcp_outbound_and_reply() {
        let mut t = nat();
        let now = Instant::now();
        let s = go_out(&mut t, now, out_tcp(C1, 33000, R, 443, SYN));
        assert!(PORTS.contains(&s.sport));
        assert_eq!((s.dst, s.dport, s.ttl), (R, 443, 63));
        assert_eq!(s.eth_dst, GW_MAC, "destination MAC is the adapter's job");
        assert_eq!(&s.l4[20..], b"hello");
        let view = t.sessions().next().unwrap();
        assert_eq!(view.state, "SYN_SENT");
        assert_eq!(view.inside, SocketAddrV4::new(C1, 33000));
        assert_eq!(view.remote, SocketAddrV4::new(R, 443));
        assert_eq!(view.external_port, s.sport);
        assert_eq!(view.expires, now + Timeouts::default().tcp_transitory);

        let (v, r) = go_in(&mut t, now, in_tcp(R, 443, s.sport, SYN | ACK));
        assert_eq!(v, Verdict::Endpoint { port: 1 });
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport, r.ttl),
            (R, 443, C1, 33000, 56)
        );
        assert_eq!((r.eth_src, r.eth_dst), (GW_MAC, C1_MAC));
        assert_eq!(&r.l4[20..], b"world!");
        assert_eq!(t.sessions().next().unwrap().state, "ESTABLISHED");
        assert_eq!(t.stats().translated_outbound, 1);
        assert_eq!(t.stats().translated_inbound, 1);
        assert_eq!(t.stats().sessions_created, 1);
    }

    #[test]
    fn offload_waits_for_both_directions() {
        let mut t = offloading_nat();
        let now = Instant::now();
        // UDP: the first datagram out is not enough, the reply is.
        let sport = go_out(&mut t, now, out_udp(C1, 5000, R, 53)).sport;
        assert_eq!(t.take_offload(), None, "no reply yet");
        let (v, _) = go_in(&mut t, now, in_udp(R, 53, sport));
        assert!(matches!(v, Verdict::Endpoint { port: 1 }));
        let o = t.take_offload().expect("replied UDP is offloadable");
        assert_eq!(o.protocol, Protocol::Udp);
        assert_eq!(o.inside, SocketAddrV4::new(C1, 5000));
        assert_eq!(o.remote, SocketAddrV4::new(R, 53));
        assert_eq!(o.external_port, sport);
        assert_eq!(t.take_offload(), None, "taken once");
        go_out(&mut t, now, out_udp(C1, 5000, R, 53));
        assert_eq!(t.take_offload(), None, "already offloaded");

        // TCP: only once both SYNs went through, never with a FIN seen.
        let ext = go_out(&mut t, now, out_tcp(C1, 7000, R, 80, SYN)).sport;
        assert_eq!(t.take_offload(), None);
        go_in(&mut t, now, in_tcp(R, 80, ext, SYN | ACK));
        let o = t.take_offload().expect("established TCP");
        assert_eq!(o.protocol, Protocol::Tcp);
        assert_eq!(t.drain_unoffloaded().count(), 0);
        // A FIN reaches the translator (XDP leaves it alone): the session comes back.
        go_out(&mut t, now, out_tcp(C1, 7000, R, 80, FIN | ACK));
        assert_eq!(t.drain_unoffloaded().collect::<Vec<_>>(), vec![o]);
        assert_eq!(t.take_offload(), None, "closing sessions stay in userspace");
    }

    #[test]
    fn short_sessions_stay_in_userspace() {
        let mut t = nat();
        let now = Instant::now();
        let sport = go_out(&mut t, now, out_udp(C1, 5000, R, 53)).sport;
        go_in(&mut t, now, in_udp(R, 53, sport));
        assert_eq!(
            t.take_offload(),
            None,
            "2 packets: a DNS exchange stays here"
        );
        for _ in 2..OFFLOAD_AFTER_PACKETS - 1 {
            go_out(&mut t, now, out_udp(C1, 5000, R, 53));
            assert_eq!(t.take_offload(), None);
        }
        go_out(&mut t, now, out_udp(C1, 5000, R, 53));
        assert!(t.take_offload().is_some(), "offered at the threshold");
    }

    #[test]
    fn an_endpoint_without_offload_is_not_offered() {
        let mut t = offloading_nat();
        let now = Instant::now();
        t.set_offload(C1, false);
        let sport = go_out(&mut t, now, out_udp(C1, 5000, R, 53)).sport;
        go_in(&mut t, now, in_udp(R, 53, sport));
        assert_eq!(t.take_offload(), None, "offload off for C1");
        t.set_offload(C1, true);
        go_out(&mut t, now, out_udp(C1, 5000, R, 53));
        assert!(t.take_offload().is_some(), "offered once it is on again");
    }

    #[test]
    fn icmp_and_hairpin_are_not_offloaded() {
        let mut t = offloading_nat();
        let now = Instant::now();
        let mut f = from_container(C1, R, 1, &echo(8, 77, 1));
        assert!(matches!(t.outbound(now, &mut f), Verdict::Uplink { .. }));
        assert_eq!(t.take_offload(), None);
        t.publish(Protocol::Udp, 8053, C2, 53).unwrap();
        let mut f = out_udp(C1, 6000, EXT, 8053);
        assert!(matches!(
            t.outbound(now, &mut f),
            Verdict::Endpoint { port: 2 }
        ));
        assert_eq!(t.take_offload(), None, "hairpin stays in userspace");
    }

    #[test]
    fn offloaded_sessions_expire_by_the_kernels_clock() {
        let mut t = offloading_nat();
        let t0 = Instant::now();
        let sport = go_out(&mut t, t0, out_udp(C1, 5000, R, 53)).sport;
        go_in(&mut t, t0, in_udp(R, 53, sport));
        let o = t.take_offload().unwrap();
        let udp = t.config().timeouts.udp;
        // Busy in the kernel: each expiry pass finds a recent last-seen.
        let later = t0 + udp + Duration::from_secs(1);
        let seen = later - Duration::from_secs(2);
        assert_eq!(t.expire_offloaded(later, |s| (*s == o).then_some(seen)), 0);
        assert_eq!(t.session_count(), 1);
        // Table pressure never expires an offloaded session behind the kernel's back.
        let even_later = seen + udp + Duration::from_secs(1);
        assert_eq!(t.expire_offloaded(even_later, |_| Some(seen)), 1);
        assert_eq!(t.session_count(), 0);
        assert_eq!(t.drain_unoffloaded().collect::<Vec<_>>(), vec![o]);
    }

    #[test]
    fn unoffload_lets_the_session_return() {
        let mut t = offloading_nat();
        let now = Instant::now();
        let sport = go_out(&mut t, now, out_udp(C1, 5000, R, 53)).sport;
        go_in(&mut t, now, in_udp(R, 53, sport));
        let o = t.take_offload().unwrap();
        t.unoffload(&o);
        assert_eq!(
            t.drain_unoffloaded().count(),
            0,
            "the caller cleared the entries"
        );
        go_out(&mut t, now, out_udp(C1, 5000, R, 53));
        assert_eq!(
            t.take_offload(),
            Some(o),
            "offloaded again on the next packet"
        );
        assert_eq!(t.remove_endpoint(C1), 1);
        assert_eq!(t.drain_unoffloaded().collect::<Vec<_>>(), vec![o]);
    }

    #[test]
    fn tcp_needs_a_syn() {
        let mut t = nat();
        let now = Instant::now();
        assert_eq!(
            drop_out(&mut t, now, out_tcp(C1, 1, R, 80, ACK)),
            DropReason::NoSession
        );
        assert_eq!(
            drop_out(&mut t, now, out_tcp(C1, 1, R, 80, SYN | ACK)),
            DropReason::NoSession
        );
        assert_eq!(
            drop_in(&mut t, now, in_tcp(R, 80, 40000, SYN)),
            DropReason::NoSession
        );
        assert_eq!(t.session_count(), 0);
        assert_eq!(t.stats().drops(DropReason::NoSession), 3);
    }

    #[test]
    fn endpoint_independent_mapping() {
        let mut t = nat();
        let now = Instant::now();
        let a = go_out(&mut t, now, out_udp(C1, 5000, R, 53)).sport;
        let b = go_out(&mut t, now, out_udp(C1, 5000, R2, 53)).sport;
        let c = go_out(&mut t, now, out_udp(C1, 5000, R, 5353)).sport;
        assert_eq!(a, b);
        assert_eq!(a, c);
        let d = go_out(&mut t, now, out_udp(C1, 5001, R, 53)).sport;
        let e = go_out(&mut t, now, out_udp(C2, 5000, R, 53)).sport;
        assert_ne!(a, d);
        assert_ne!(a, e);
        assert_ne!(d, e);
        // TCP has its own namespace, same rule.
        let x = go_out(&mut t, now, out_tcp(C1, 5000, R, 80, SYN)).sport;
        let y = go_out(&mut t, now, out_tcp(C1, 5000, R2, 80, SYN)).sport;
        assert_eq!(x, y);
        assert_eq!(t.session_count(), 7);
    }

    #[test]
    fn address_and_port_dependent_filtering() {
        let mut t = nat();
        let now = Instant::now();
        let p = go_out(&mut t, now, out_udp(C1, 5000, R, 53)).sport;
        assert_eq!(
            drop_in(&mut t, now, in_udp(R2, 53, p)),
            DropReason::Filtered
        );
        assert_eq!(drop_in(&mut t, now, in_udp(R, 54, p)), DropReason::Filtered);
        assert_eq!(
            drop_in(&mut t, now, in_udp(R, 53, p + 1)),
            DropReason::NoSession
        );
        assert_eq!(
            drop_in(&mut t, now, in_tcp(R, 53, p, SYN)),
            DropReason::NoSession
        );
        // Once the container talks to R2, R2 gets through on the same port.
        go_out(&mut t, now, out_udp(C1, 5000, R2, 53));
        let (v, r) = go_in(&mut t, now, in_udp(R2, 53, p));
        assert_eq!(v, Verdict::Endpoint { port: 1 });
        assert_eq!((r.dst, r.dport), (C1, 5000));
        assert_eq!(t.stats().drops(DropReason::Filtered), 2);
    }

    #[test]
    fn tcp_timeouts_follow_state() {
        let to = Timeouts::default();
        let now = Instant::now();
        // SYN only: transitory.
        let mut t = nat();
        go_out(&mut t, now, out_tcp(C1, 1000, R, 80, SYN));
        assert_eq!(
            t.expire(now + to.tcp_transitory - Duration::from_secs(1)),
            0
        );
        assert_eq!(t.expire(now + to.tcp_transitory), 1);

        // Both SYNs: established, survives far past the transitory timeout.
        let mut t = nat();
        let p = go_out(&mut t, now, out_tcp(C1, 1000, R, 80, SYN)).sport;
        go_in(&mut t, now, in_tcp(R, 80, p, SYN | ACK));
        go_out(&mut t, now, out_tcp(C1, 1000, R, 80, ACK));
        assert_eq!(t.expire(now + Duration::from_secs(3600)), 0);
        assert_eq!(t.sessions().next().unwrap().state, "ESTABLISHED");
        // One FIN: half-closed, still established.
        let later = now + Duration::from_secs(3600);
        go_out(&mut t, later, out_tcp(C1, 1000, R, 80, FIN | ACK));
        assert_eq!(t.sessions().next().unwrap().state, "FIN_WAIT");
        assert_eq!(
            t.sessions().next().unwrap().expires,
            later + to.tcp_established
        );
        // FIN both ways: transitory.
        go_in(&mut t, later, in_tcp(R, 80, p, FIN | ACK));
        assert_eq!(t.sessions().next().unwrap().state, "CLOSING");
        assert_eq!(
            t.sessions().next().unwrap().expires,
            later + to.tcp_transitory
        );
        assert_eq!(t.expire(later + to.tcp_transitory), 1);
        assert_eq!(t.stats().sessions_expired, 1);

        // Established then RST: transitory.
        let mut t = nat();
        let p = go_out(&mut t, now, out_tcp(C1, 1000, R, 80, SYN)).sport;
        go_in(&mut t, now, in_tcp(R, 80, p, SYN | ACK));
        assert_eq!(
            t.sessions().next().unwrap().expires,
            now + to.tcp_established
        );
        go_in(&mut t, now, in_tcp(R, 80, p, RST));
        assert_eq!(t.sessions().next().unwrap().state, "RESET");
        assert_eq!(t.expire(now + to.tcp_transitory), 1);
        // A session past its timeout is gone even before expire() runs.
        let mut t = nat();
        let p = go_out(&mut t, now, out_tcp(C1, 1000, R, 80, SYN)).sport;
        let late = now + to.tcp_transitory;
        assert_eq!(
            drop_in(&mut t, late, in_tcp(R, 80, p, SYN | ACK)),
            DropReason::NoSession
        );
        assert_eq!(t.session_count(), 0);
    }

    #[test]
    fn udp_sessions_refresh_both_ways_and_expire() {
        let to = Timeouts::default();
        let now = Instant::now();
        let mut t = nat();
        let p = go_out(&mut t, now, out_udp(C1, 5000, R, 7000)).sport;
        let t1 = now + Duration::from_secs(200);
        let (v, _) = go_in(&mut t, t1, in_udp(R, 7000, p));
        assert_eq!(v, Verdict::Endpoint { port: 1 });
        // Refreshed by the inbound datagram (RFC 4787 REQ-6).
        assert_eq!(t.expire(now + to.udp), 0);
        assert_eq!(t.sessions().next().unwrap().last_seen, t1);
        assert_eq!(t.expire(t1 + to.udp), 1);
        assert_eq!(
            drop_in(&mut t, t1 + to.udp, in_udp(R, 7000, p)),
            DropReason::NoSession
        );
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut t = nat();
        let now = Instant::now();
        let f = from_container(C1, R, 17, &udp(C1, R, 5000, 53, b"x", false));
        let s = go_out(&mut t, now, f);
        assert_eq!(&s.l4[6..8], &[0, 0]);
        let f = from_uplink(R, EXT, 17, &udp(R, EXT, 53, s.sport, b"y", false));
        let (_, r) = go_in(&mut t, now, f);
        assert_eq!(&r.l4[6..8], &[0, 0]);
    }

    /// A UDP datagram whose translated checksum computes to 0 must carry 0xffff, on both
    /// the incremental and the from-scratch path.
    #[test]
    fn udp_checksum_zero_becomes_ffff() {
        for partial in [false, true] {
            let mut t = nat();
            let now = Instant::now();
            // The first UDP mapping gets the first port of the range.
            let ext = *PORTS.start();
            // Choose the payload word so the translated datagram sums to 0xffff.
            let mut data = [0u8; 2];
            let mut hdr = udp(EXT, R, ext, 53, &data, false);
            let s = ref_sum(&[&pseudo(EXT, R, 17, hdr.len()), &hdr]);
            let w = 0xffffu16.wrapping_sub(s);
            let w = if s == 0xffff { 0 } else { w };
            data.copy_from_slice(&w.to_be_bytes());
            hdr = udp(EXT, R, ext, 53, &data, false);
            assert_eq!(ref_sum(&[&pseudo(EXT, R, 17, hdr.len()), &hdr]), 0xffff);

            let mut l4 = udp(C1, R, 5000, 53, &data, true);
            if partial {
                make_partial(&mut l4, C1, R, 17);
            }
            let s = go_out(&mut t, now, from_container(C1, R, 17, &l4));
            assert_eq!(s.sport, ext);
            assert_eq!(&s.l4[6..8], &[0xff, 0xff], "partial={partial}");
        }
    }

    #[test]
    fn partial_checksums_are_completed() {
        let now = Instant::now();
        for proto in [6u8, 17] {
            let mut t = nat();
            t.publish(Protocol::Udp, 8053, C1, 53).unwrap();
            let mut l4 = if proto == 6 {
                tcp(C1, R, 33000, 443, SYN, &[7u8; 301])
            } else {
                udp(C1, R, 33000, 443, &[7u8; 301], true)
            };
            make_partial(&mut l4, C1, R, proto);
            let s = go_out(&mut t, now, from_container(C1, R, proto, &l4));
            assert!(PORTS.contains(&s.sport));
            // And on the way in (a veth uplink may deliver offloaded frames too).
            let mut l4 = if proto == 6 {
                tcp(R, EXT, 443, s.sport, SYN | ACK, &[9u8; 33])
            } else {
                udp(R, EXT, 443, s.sport, &[9u8; 33], true)
            };
            make_partial(&mut l4, R, EXT, proto);
            let (v, r) = go_in(&mut t, now, from_uplink(R, EXT, proto, &l4));
            assert_eq!(v, Verdict::Endpoint { port: 1 });
            assert_eq!((r.dst, r.dport), (C1, 33000));
        }
    }

    #[test]
    fn flows_the_kernel_carried_are_adopted_with_its_mapping() {
        use super::super::session::Adoptee;
        let now = Instant::now();
        let mut t = nat();
        t.publish(Protocol::Tcp, 8080, C2, 80).unwrap();
        let flow = |inside: (Ipv4Addr, u16), ext: u16, published: bool| Adoptee {
            protocol: Protocol::Tcp,
            inside,
            remote: (R, 443),
            external_port: ext,
            published,
        };
        let (adopted, refused) = t.adopt(
            now,
            [
                // Handed over earlier: a pool port.
                flow((C1, 5000), 40050, false),
                // Started by the kernel's masquerade: a port outside the pool.
                flow((C1, 5001), 33000, false),
                // In through a published port.
                flow((C2, 80), 8080, true),
                // The same external side again, for another flow: refused.
                flow((C2, 5002), 40050, false),
                // Not this translator's container: skipped.
                flow((Ipv4Addr::new(10, 9, 9, 9), 1), 40060, false),
            ],
        );
        assert_eq!((adopted, refused), (3, 1));
        assert_eq!(t.stats().sessions_adopted, 3);
        // Both ways go on with the kernel's mapping, as established TCP.
        let s = go_out(&mut t, now, out_tcp(C1, 5000, R, 443, tcp_flags::ACK));
        assert_eq!(s.sport, 40050);
        let s = go_out(&mut t, now, out_tcp(C1, 5001, R, 443, tcp_flags::ACK));
        assert_eq!(s.sport, 33000);
        let (v, r) = go_in(&mut t, now, in_tcp(R, 443, 33000, tcp_flags::ACK));
        assert_eq!(v, Verdict::Endpoint { port: 1 });
        assert_eq!((r.dst, r.dport), (C1, 5001));
        let (v, r) = go_in(&mut t, now, in_tcp(R, 443, 8080, tcp_flags::ACK));
        assert_eq!(v, Verdict::Endpoint { port: 2 });
        assert_eq!((r.dst, r.dport), (C2, 80));
        // The uplink steers the two dynamic ones by their tuples.
        let ev: Vec<_> = t.drain_port_events().collect();
        for port in [40050, 33000] {
            assert!(ev.contains(&PortEvent::Opened {
                protocol: Protocol::Tcp,
                port,
                remote: SocketAddrV4::new(R, 443),
            }));
        }
        // The pool port is that inside endpoint's mapping (EIM) and out of the free
        // list; the foreign one is not a mapping: its endpoint's next flow gets a pool
        // port.
        let s = go_out(&mut t, now, out_tcp(C1, 5000, R2, 443, tcp_flags::SYN));
        assert_eq!(s.sport, 40050);
        let s = go_out(&mut t, now, out_tcp(C1, 5001, R2, 443, tcp_flags::SYN));
        assert!(PORTS.contains(&s.sport) && s.sport != 40050, "{}", s.sport);
        for p in 0..98 {
            let s = go_out(&mut t, now, out_tcp(C2, 6000 + p, R, 443, tcp_flags::SYN));
            assert_ne!(s.sport, 40050, "a claimed port was handed out again");
        }
        // Adopting the same flows again changes nothing.
        let created = t.stats().sessions_adopted;
        t.adopt(now, [flow((C1, 5000), 40050, false)]);
        assert_eq!(t.stats().sessions_adopted, created);
    }

    #[test]
    fn workers_never_hand_out_the_same_port() {
        use super::super::session::Adoptee;
        use super::super::{PortShares, ShareError};
        let now = Instant::now();
        let one = Translator::for_workers(config(PORTS, 1000), 1).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].config(), &config(PORTS, 1000));
        assert_eq!(
            Translator::for_workers(config(PORTS, 1000), 101).unwrap_err(),
            NatError::Shares(ShareError::TooManyWorkers {
                workers: 101,
                ports: 100,
                first: 40000,
                last: 40099
            })
        );
        let shares = PortShares::new(&PORTS, 3).unwrap();
        let mut workers: Vec<Translator> = Translator::for_workers(config(PORTS, 1000), 3)
            .unwrap()
            .into_iter()
            .map(with_endpoints)
            .collect();
        // Each worker maps new inside endpoints until its share runs out.
        let mut seen = std::collections::HashSet::new();
        for (i, t) in workers.iter_mut().enumerate() {
            let share = shares.share(i).unwrap();
            assert_eq!(t.config().ports, share);
            assert_eq!(t.config().max_sessions, 334);
            for sp in 0..share.len() as u16 {
                let s = go_out(t, now, out_udp(C1, 2000 + sp, R, 53));
                assert!(share.contains(&s.sport), "worker {i}: {}", s.sport);
                assert_eq!(shares.owner(s.sport), Some(i));
                assert!(seen.insert(s.sport), "port {} handed out twice", s.sport);
            }
            // Its share is all mapped: a new endpoint's port comes from evicting one of
            // its own (unanswered) sessions, never from another share.
            let s = go_out(t, now, out_udp(C1, 3000, R, 53));
            assert!(share.contains(&s.sport), "worker {i}: {}", s.sport);
            assert_eq!(t.stats().sessions_evicted, 1);
        }
        assert_eq!(seen.len(), PORTS.len(), "the shares together are the range");
        // A reply reaches only the worker that owns its port.
        let mut f = in_udp(R, 53, 40050);
        assert_eq!(shares.owner(40050), Some(1));
        assert!(matches!(
            workers[0].inbound(now, &mut f),
            Verdict::Drop(DropReason::NoSession)
        ));
        // Adoption: a dynamic flow on a worker's port is that worker's alone, whichever
        // workers are given it; a port outside the range (the masquerade's) is taken by
        // the worker it is given to (the caller picks one).
        let flow = |sp: u16, ext: u16| Adoptee {
            protocol: Protocol::Tcp,
            inside: (C2, sp),
            remote: (R2, 443),
            external_port: ext,
            published: false,
        };
        let flows = [flow(1, 40000), flow(2, 40040), flow(3, 40090)];
        let got: Vec<(u64, u64)> = workers.iter_mut().map(|t| t.adopt(now, flows)).collect();
        assert_eq!(got, [(1, 0), (1, 0), (1, 0)]);
        assert_eq!(workers[2].adopt(now, [flow(4, 33000)]), (1, 0));
    }

    #[test]
    fn icmp_echo_and_port_events() {
        let to = Timeouts::default();
        let now = Instant::now();
        let mut t = nat();
        let f = from_container(C1, R, 1, &echo(8, 0x4242, 1));
        let s = go_out(&mut t, now, f);
        assert_eq!(s.sport, 8 << 8);
        let id = s.dport;
        assert!(PORTS.contains(&id));
        let sock = |ip: Ipv4Addr, port: u16| SocketAddrV4::new(ip, port);
        let ev: Vec<_> = t.drain_port_events().collect();
        assert_eq!(
            ev,
            vec![PortEvent::Opened {
                protocol: Protocol::Icmp,
                port: id,
                remote: sock(R, 0),
            }]
        );
        // Same identifier to another host: same external identifier (EIM), and a
        // session of its own that the uplink steers by its tuple.
        let s2 = go_out(&mut t, now, from_container(C1, R2, 1, &echo(8, 0x4242, 1)));
        assert_eq!(s2.dport, id);
        let ev: Vec<_> = t.drain_port_events().collect();
        assert_eq!(
            ev,
            vec![PortEvent::Opened {
                protocol: Protocol::Icmp,
                port: id,
                remote: sock(R2, 0),
            }]
        );
        // A packet of a known session announces nothing.
        go_out(&mut t, now, from_container(C1, R2, 1, &echo(8, 0x4242, 2)));
        assert_eq!(t.drain_port_events().count(), 0);

        let (v, r) = go_in(&mut t, now, from_uplink(R, EXT, 1, &echo(0, id, 1)));
        assert_eq!(v, Verdict::Endpoint { port: 1 });
        assert_eq!((r.dst, r.dport, r.sport), (C1, 0x4242, 0));
        assert_eq!(&r.l4[8..], b"dovesnap ping payload");
        // A reply from a host never pinged is filtered.
        let f = from_uplink(ROUTER, EXT, 1, &echo(0, id, 1));
        assert_eq!(drop_in(&mut t, now, f), DropReason::Filtered);
        // Echo requests from outside are the kernel's business.
        let f = from_uplink(R, EXT, 1, &echo(8, id, 1));
        assert_eq!(drop_in(&mut t, now, f), DropReason::UnsupportedProtocol);

        assert_eq!(t.expire(now + to.icmp), 2);
        let mut ev: Vec<_> = t.drain_port_events().collect();
        ev.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            ev,
            vec![
                PortEvent::Closed {
                    protocol: Protocol::Icmp,
                    port: id,
                    remote: sock(R, 0),
                },
                PortEvent::Closed {
                    protocol: Protocol::Icmp,
                    port: id,
                    remote: sock(R2, 0),
                },
            ]
        );
        // TCP and UDP sessions are announced too, with their remote: the uplink steers
        // exactly their replies.
        let u = go_out(&mut t, now, out_udp(C1, 1, R, 2));
        let c = go_out(&mut t, now, out_tcp(C1, 1, R, 2, SYN));
        let ev: Vec<PortEvent> = t.drain_port_events().collect();
        assert_eq!(
            ev,
            vec![
                PortEvent::Opened {
                    protocol: Protocol::Udp,
                    port: u.sport,
                    remote: sock(R, 2),
                },
                PortEvent::Opened {
                    protocol: Protocol::Tcp,
                    port: c.sport,
                    remote: sock(R, 2),
                }
            ]
        );
    }

    /// The original packet C1 sent, translated, as the remote side sees it; and the ICMP
    /// error a router returns about it, quoting `quote_len` bytes of it (None: all).
    fn error_about(translated: &[u8], ty: u8, code: u8, quote_len: Option<usize>) -> Vec<u8> {
        let ipb = &translated[14..];
        let n = quote_len.unwrap_or(ipb.len()).min(ipb.len());
        let msg = icmp(ty, code, [0, 0, 0, 0], &ipb[..n]);
        from_uplink(ROUTER, EXT, 1, &msg)
    }

    /// Checks the quote inside a translated ICMP error: IP header checksum, addresses and
    /// ports, and the transport checksum where the quote has it: verified from scratch when
    /// the quote is whole, else compared with the checksum the packet had when `original`
    /// (the untranslated frame) was sent.
    fn check_quote(seen: &Seen, original: &[u8], src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) {
        let q = &seen.l4[8..];
        let hl = usize::from(q[0] & 0x0f) * 4;
        assert_eq!(ref_sum(&[&q[..hl]]), 0xffff, "quoted IP header checksum");
        let qsrc = Ipv4Addr::new(q[12], q[13], q[14], q[15]);
        let qdst = Ipv4Addr::new(q[16], q[17], q[18], q[19]);
        let proto = q[9];
        let l4 = &q[hl..];
        let be = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
        assert_eq!((qsrc, qdst), (src.0, dst.0));
        if proto == 1 {
            // For ICMP the caller passes the echo identifier as `src.1`.
            assert_eq!(be(4), src.1);
        } else {
            assert_eq!((be(0), be(2)), (src.1, dst.1));
        }
        let orig_ip = &original[14..];
        let ohl = usize::from(orig_ip[0] & 0x0f) * 4;
        let orig_l4 = &orig_ip[ohl..];
        let whole = l4.len() == orig_l4.len();
        let cs_at = match proto {
            6 => 16,
            17 => 6,
            _ => 2,
        };
        if l4.len() >= cs_at + 2 {
            let cs = be(cs_at);
            let orig = u16::from_be_bytes([orig_l4[cs_at], orig_l4[cs_at + 1]]);
            assert!(
                ones_eq(cs, orig),
                "quoted checksum {cs:#x} vs original {orig:#x}"
            );
            if whole {
                let ok = match proto {
                    1 => ref_sum(&[l4]),
                    _ => ref_sum(&[&pseudo(qsrc, qdst, proto, l4.len()), l4]),
                };
                assert_eq!(ok, 0xffff, "whole quoted transport checksum");
            }
        }
    }

    #[test]
    fn inbound_icmp_errors_full_and_truncated() {
        let now = Instant::now();
        type Make = fn() -> (Vec<u8>, (Ipv4Addr, u16), (Ipv4Addr, u16));
        let cases: [(u8, Make); 3] = [
            (17, || (out_udp(C1, 5000, R, 53), (C1, 5000), (R, 53))),
            (6, || (out_tcp(C1, 5000, R, 80, SYN), (C1, 5000), (R, 80))),
            (1, || {
                (
                    from_container(C1, R, 1, &echo(8, 0x99, 3)),
                    (C1, 0x99),
                    (R, 0),
                )
            }),
        ];
        for (proto, make) in cases {
            for quote in [None, Some(28), Some(20 + 18), Some(20 + 12), Some(20 + 20)] {
                for (ty, code) in [(3, 3), (11, 0), (12, 0), (3, 4)] {
                    let mut t = nat();
                    let (orig, src, dst) = make();
                    let mut f = orig.clone();
                    assert!(matches!(t.outbound(now, &mut f), Verdict::Uplink { .. }));
                    let err = error_about(&f, ty, code, quote);
                    let (v, seen) = go_in(&mut t, now, err);
                    let what = format!("proto {proto} quote {quote:?} type {ty}");
                    assert_eq!(v, Verdict::Endpoint { port: 1 }, "{what}");
                    assert_eq!((seen.src, seen.dst, seen.proto), (ROUTER, C1, 1), "{what}");
                    assert_eq!((seen.eth_src, seen.eth_dst), (GW_MAC, C1_MAC));
                    assert_eq!(seen.sport, u16::from(ty) << 8 | u16::from(code));
                    check_quote(&seen, &orig, src, dst);
                }
            }
        }
    }

    #[test]
    fn inbound_icmp_error_needs_a_session() {
        let now = Instant::now();
        let mut t = nat();
        let mut f = out_udp(C1, 5000, R, 53);
        t.outbound(now, &mut f);
        // About a different remote port: no session.
        let other = from_container(EXT, R, 17, &udp(EXT, R, 40000, 54, b"q", true));
        assert_eq!(
            drop_in(&mut t, now, error_about(&other, 3, 3, None)),
            DropReason::NoSession
        );
        // Quote too short for the transport ports.
        assert_eq!(
            drop_in(&mut t, now, error_about(&f, 3, 3, Some(27))),
            DropReason::Malformed
        );
        // Quote of an unsupported protocol.
        let gre = from_container(EXT, R, 47, &[0u8; 8]);
        assert_eq!(
            drop_in(&mut t, now, error_about(&gre, 3, 3, None)),
            DropReason::UnsupportedProtocol
        );
        // Errors do not refresh: expiry stays where the datagram put it.
        let before = t.sessions().next().unwrap().expires;
        go_in(
            &mut t,
            now + Duration::from_secs(10),
            error_about(&f, 3, 3, None),
        );
        assert_eq!(t.sessions().next().unwrap().expires, before);
    }

    #[test]
    fn outbound_icmp_errors() {
        let now = Instant::now();
        for quote in [None, Some(28)] {
            // Port unreachable for a datagram that came in through a published port.
            let mut t = nat();
            t.publish(Protocol::Udp, 5353, C1, 53).unwrap();
            let (v, _) = go_in(&mut t, now, in_udp(R, 7777, 5353));
            assert_eq!(v, Verdict::Endpoint { port: 1 });
            let mut delivered = in_udp(R, 7777, 5353);
            t.inbound(now, &mut delivered);
            let ipb = &delivered[14..];
            let n = quote.unwrap_or(ipb.len());
            let err = from_container(C1, R, 1, &icmp(3, 3, [0; 4], &ipb[..n]));
            let s = go_out(&mut t, now, err);
            assert_eq!((s.src, s.dst), (EXT, R));
            check_quote(&s, &in_udp(R, 7777, 5353), (R, 7777), (EXT, 5353));

            // And for a reply to a dynamic session whose socket has gone.
            let p = go_out(&mut t, now, out_udp(C1, 6000, R2, 53)).sport;
            let mut delivered = in_udp(R2, 53, p);
            assert_eq!(
                t.inbound(now, &mut delivered),
                Verdict::Endpoint { port: 1 }
            );
            let ipb = &delivered[14..];
            let n = quote.unwrap_or(ipb.len());
            let err = from_container(C1, R2, 1, &icmp(3, 3, [0; 4], &ipb[..n]));
            let s = go_out(&mut t, now, err);
            check_quote(&s, &in_udp(R2, 53, p), (R2, 53), (EXT, p));

            // About a packet with no session: dropped.
            let stray = from_uplink(R2, C1, 17, &udp(R2, C1, 53, 9999, b"?", true));
            let err = from_container(C1, R2, 1, &icmp(3, 3, [0; 4], &stray[14..]));
            assert_eq!(drop_out(&mut t, now, err), DropReason::NoSession);
        }
    }

    #[test]
    fn published_tcp_port_and_reply_path() {
        let to = Timeouts::default();
        let now = Instant::now();
        let mut t = nat();
        t.publish(Protocol::Tcp, 8080, C2, 80).unwrap();
        // Only a SYN opens it.
        assert_eq!(
            drop_in(&mut t, now, in_tcp(R, 50000, 8080, ACK)),
            DropReason::NoSession
        );
        let (v, r) = go_in(&mut t, now, in_tcp(R, 50000, 8080, SYN));
        assert_eq!(v, Verdict::Endpoint { port: 2 });
        assert_eq!((r.src, r.sport, r.dst, r.dport), (R, 50000, C2, 80));
        assert_eq!((r.eth_src, r.eth_dst), (GW2_MAC, C2_MAC));
        let view = t.sessions().next().unwrap();
        assert_eq!((view.state, view.published), ("SYN_RECEIVED", Some(8080)));
        assert_eq!(view.expires, now + to.tcp_transitory);

        let s = go_out(&mut t, now, out_tcp(C2, 80, R, 50000, SYN | ACK));
        assert_eq!((s.sport, s.dst, s.dport), (8080, R, 50000));
        assert_eq!(t.sessions().next().unwrap().state, "ESTABLISHED");
        let (v, _) = go_in(&mut t, now, in_tcp(R, 50000, 8080, ACK));
        assert_eq!(v, Verdict::Endpoint { port: 2 });
        // A second client.
        let (v, _) = go_in(&mut t, now, in_tcp(R2, 50000, 8080, SYN));
        assert_eq!(v, Verdict::Endpoint { port: 2 });
        assert_eq!(t.session_count(), 2);
        // A published port whose endpoint is gone.
        t.publish(Protocol::Tcp, 8081, Ipv4Addr::new(10, 9, 9, 9), 80)
            .unwrap();
        assert_eq!(
            drop_in(&mut t, now, in_tcp(R, 1, 8081, SYN)),
            DropReason::UnknownEndpoint
        );

        assert_eq!(t.unpublish(Protocol::Tcp, 8080), 2);
        assert_eq!(t.session_count(), 0);
        assert_eq!(t.stats().sessions_removed, 2);
        assert_eq!(
            drop_in(&mut t, now, in_tcp(R, 3, 8080, SYN)),
            DropReason::NoSession
        );
        assert_eq!(t.unpublish(Protocol::Tcp, 8080), 0);
    }

    #[test]
    fn published_udp_port_serves_and_originates() {
        let now = Instant::now();
        let mut t = nat();
        t.publish(Protocol::Udp, 40050, C1, 53).unwrap();
        let (v, r) = go_in(&mut t, now, in_udp(R, 7777, 40050));
        assert_eq!(v, Verdict::Endpoint { port: 1 });
        assert_eq!((r.dst, r.dport), (C1, 53));
        let s = go_out(&mut t, now, out_udp(C1, 53, R, 7777));
        assert_eq!(s.sport, 40050);
        // New traffic from the published inside port keeps the published external port.
        let s = go_out(&mut t, now, out_udp(C1, 53, R2, 7000));
        assert_eq!(s.sport, 40050);
        assert_eq!(
            t.sessions().filter(|s| s.published == Some(40050)).count(),
            2
        );
        // The published port is never handed out dynamically (conversations, so none
        // is evicted to make room).
        for i in 0..99u16 {
            let p = converse_udp(&mut t, now, C2, 1000 + i, R, 7000);
            assert_ne!(p, 40050);
        }
        assert_eq!(
            drop_out(&mut t, now, out_udp(C2, 2000, R, 7000)),
            DropReason::PortsExhausted
        );
        assert_eq!(t.unpublish(Protocol::Udp, 40050), 2);
        // Returned to the pool.
        assert_eq!(go_out(&mut t, now, out_udp(C2, 2000, R, 7000)).sport, 40050);
    }

    #[test]
    fn publish_refuses_bad_requests() {
        let now = Instant::now();
        let mut t = nat();
        t.publish(Protocol::Tcp, 8080, C1, 80).unwrap();
        let e = t.publish(Protocol::Tcp, 8080, C2, 81).unwrap_err();
        assert_eq!(
            e,
            NatError::AlreadyPublished {
                protocol: Protocol::Tcp,
                port: 8080,
                existing: SocketAddrV4::new(C1, 80)
            }
        );
        assert!(
            e.to_string().contains("already published to 10.0.0.2:80"),
            "{e}"
        );
        // Same number, other protocol: fine.
        t.publish(Protocol::Udp, 8080, C2, 81).unwrap();
        assert_eq!(
            t.publish(Protocol::Icmp, 1, C1, 1),
            Err(NatError::IcmpNotPublishable)
        );
        assert_eq!(t.publish(Protocol::Tcp, 0, C1, 1), Err(NatError::ZeroPort));
        assert_eq!(t.publish(Protocol::Tcp, 1, C1, 0), Err(NatError::ZeroPort));
        // A range port in use by a mapping.
        let p = go_out(&mut t, now, out_tcp(C1, 1, R, 2, SYN)).sport;
        assert_eq!(
            t.publish(Protocol::Tcp, p, C1, 80),
            Err(NatError::PortInUse {
                protocol: Protocol::Tcp,
                port: p
            })
        );
        assert_eq!(t.published().count(), 2);
    }

    #[test]
    fn published_conflict_with_existing_flow() {
        let now = Instant::now();
        let mut t = nat();
        go_out(&mut t, now, out_udp(C1, 53, R, 7777));
        t.publish(Protocol::Udp, 5353, C1, 53).unwrap();
        assert_eq!(
            drop_in(&mut t, now, in_udp(R, 7777, 5353)),
            DropReason::SessionConflict
        );
    }

    #[test]
    fn eviction_when_the_table_is_full() {
        let to = Timeouts::default();
        let now = Instant::now();
        let mut t = with(PORTS, 2);
        // Two half-open TCP sessions: transitory, the older one goes first.
        let a = go_out(&mut t, now, out_tcp(C1, 1, R, 80, SYN)).sport;
        go_out(
            &mut t,
            now + Duration::from_secs(1),
            out_tcp(C1, 2, R, 80, SYN),
        );
        go_out(
            &mut t,
            now + Duration::from_secs(2),
            out_tcp(C1, 3, R, 80, SYN),
        );
        assert_eq!(t.session_count(), 2);
        assert_eq!(t.stats().sessions_evicted, 1);
        assert!(t.sessions().all(|s| s.inside.port() != 1));
        assert_eq!(
            drop_in(&mut t, now, in_tcp(R, 80, a, SYN | ACK)),
            DropReason::NoSession
        );

        // Established sessions (the handshake completed) are not evicted.
        let mut t = with(PORTS, 2);
        for sp in [1, 2] {
            let p = go_out(&mut t, now, out_tcp(C1, sp, R, 80, SYN)).sport;
            go_in(&mut t, now, in_tcp(R, 80, p, SYN | ACK));
            go_out(&mut t, now, out_tcp(C1, sp, R, 80, ACK));
        }
        assert_eq!(
            drop_out(&mut t, now, out_tcp(C1, 3, R, 80, SYN)),
            DropReason::PortsExhausted
        );
        assert_eq!(
            drop_out(&mut t, now, out_udp(C1, 3, R, 80)),
            DropReason::PortsExhausted
        );
        // Again, from the memo: no scan, same answer.
        assert_eq!(
            drop_out(&mut t, now, out_udp(C1, 4, R, 80)),
            DropReason::PortsExhausted
        );
        // One turns transitory (RST): it can go.
        let p1 = t
            .sessions()
            .find(|s| s.inside.port() == 1)
            .unwrap()
            .external_port;
        go_in(&mut t, now, in_tcp(R, 80, p1, RST));
        go_out(&mut t, now, out_udp(C1, 3, R, 80));
        assert_eq!(t.stats().sessions_evicted, 1);
        assert!(t.sessions().all(|s| s.inside.port() != 1));

        // Expired sessions are reclaimed first, counted as expired.
        let mut t = with(PORTS, 2);
        for sp in [1, 2] {
            converse_udp(&mut t, now, C1, sp, R, 80);
        }
        assert_eq!(
            drop_out(&mut t, now, out_udp(C1, 3, R, 80)),
            DropReason::PortsExhausted
        );
        go_out(&mut t, now + to.udp, out_udp(C1, 3, R, 80));
        assert_eq!(t.session_count(), 1);
        assert_eq!(t.stats().sessions_expired, 2);
        assert_eq!(t.stats().drops(DropReason::PortsExhausted), 1);
    }

    #[test]
    fn unassured_udp_and_icmp_make_room_conversations_do_not() {
        let now = Instant::now();
        let mut t = with(PORTS, 3);
        // A silent peer: three unanswered UDP sessions fill the table.
        for (i, sp) in [1, 2, 3].into_iter().enumerate() {
            go_out(
                &mut t,
                now + Duration::from_secs(i as u64),
                out_udp(C1, sp, R, 9),
            );
        }
        // A new flow takes the least recently seen one's place.
        let later = now + Duration::from_secs(5);
        let p = go_out(&mut t, later, out_udp(C1, 4, R, 7000)).sport;
        assert_eq!(t.stats().sessions_evicted, 1);
        assert!(t.sessions().all(|s| s.inside.port() != 1));
        // A conversation (an answer, then more) is never evicted: the next oldest goes.
        go_in(&mut t, later, in_udp(R, 7000, p));
        go_out(&mut t, later, out_udp(C1, 4, R, 7000));
        for sp in [5, 6] {
            go_out(&mut t, now + Duration::from_secs(6), out_udp(C1, sp, R, 9));
        }
        assert_eq!(t.stats().sessions_evicted, 3);
        assert!(t.sessions().any(|s| s.inside.port() == 4));
        // An unanswered echo request is evictable, and so is a lone request with its
        // reply; a second exchange makes it a conversation.
        let mut t = with(PORTS, 1);
        go_out(&mut t, now, from_container(C1, R, 1, &echo(8, 7, 1)));
        go_out(&mut t, now, out_udp(C1, 1, R, 7000));
        assert_eq!(t.stats().sessions_evicted, 1);
        let mut t = with(PORTS, 1);
        let id = go_out(&mut t, now, from_container(C1, R, 1, &echo(8, 7, 1))).dport;
        go_in(&mut t, now, from_uplink(R, EXT, 1, &echo(0, id, 1)));
        go_out(&mut t, now, out_udp(C1, 1, R, 7000));
        assert_eq!(t.stats().sessions_evicted, 1);
        let mut t = with(PORTS, 1);
        let id = go_out(&mut t, now, from_container(C1, R, 1, &echo(8, 7, 1))).dport;
        go_in(&mut t, now, from_uplink(R, EXT, 1, &echo(0, id, 1)));
        go_out(&mut t, now, from_container(C1, R, 1, &echo(8, 7, 2)));
        assert_eq!(
            drop_out(&mut t, now, out_udp(C1, 1, R, 7000)),
            DropReason::PortsExhausted
        );
    }

    /// A resolver asks each question from a fresh source port: 20 times the pool in
    /// lone question/answer pairs never exhausts it (each is evictable, like
    /// conntrack's unassured entries, and DNS's timer is short), a conversation held
    /// meanwhile survives, and other flows get through at once.
    #[test]
    fn dns_churn_never_pins_the_pool() {
        let to = Timeouts::default();
        assert!(to.udp_dns < to.udp);
        let now = Instant::now();
        let mut t = with(50000..=50009, 1000);
        let kept = converse_udp(&mut t, now, C1, 9000, R, 7000);
        for i in 0..200u16 {
            let at = now + Duration::from_millis(u64::from(i) * 10);
            let p = go_out(&mut t, at, out_udp(C1, 10000 + i, R, 53)).sport;
            let (v, _) = go_in(&mut t, at, in_udp(R, 53, p));
            assert_eq!(v, Verdict::Endpoint { port: 1 }, "answer {i} lost");
        }
        assert_eq!(t.stats().drops(DropReason::PortsExhausted), 0);
        assert!(t.sessions().any(|s| s.external_port == kept));
        let at = now + Duration::from_secs(3);
        go_out(&mut t, at, out_tcp(C1, 4000, R, 443, SYN));
        go_out(&mut t, at, out_udp(C2, 4000, R, 7000));
        // Unevicted, a lone DNS exchange still leaves within the DNS timer.
        let mut t = nat();
        let p = go_out(&mut t, now, out_udp(C1, 1, R, 53)).sport;
        go_in(&mut t, now, in_udp(R, 53, p));
        assert_eq!(t.expire(now + to.udp_dns), 1);
    }

    /// Datagrams from distinct source ports to a published UDP port, each answered by
    /// the container, and SYNs to a published TCP port answered by SYN-ACKs: none pins
    /// the table; a real conversation through the published port still gets in.
    #[test]
    fn inbound_spray_on_published_ports_never_pins_the_table() {
        let mut t = with(PORTS, 50);
        t.publish(Protocol::Udp, 5353, C1, 53).unwrap();
        t.publish(Protocol::Tcp, 8080, C1, 80).unwrap();
        let now = Instant::now();
        for i in 0..500u16 {
            let at = now + Duration::from_millis(u64::from(i));
            let (v, _) = go_in(&mut t, at, in_udp(R, 20000 + i, 5353));
            assert_eq!(v, Verdict::Endpoint { port: 1 }, "datagram {i} refused");
            go_out(&mut t, at, out_udp(C1, 53, R, 20000 + i));
            let (v, _) = go_in(&mut t, at, in_tcp(R, 30000 + i, 8080, SYN));
            assert_eq!(v, Verdict::Endpoint { port: 1 }, "SYN {i} refused");
            go_out(&mut t, at, out_tcp(C1, 80, R, 30000 + i, SYN | ACK));
        }
        assert!(t.session_count() <= 50);
        assert_eq!(t.stats().drops(DropReason::PortsExhausted), 0);
        // Outbound flows of the container, and another container's, still fit.
        let at = now + Duration::from_secs(1);
        go_out(&mut t, at, out_udp(C1, 1, R, 7000));
        go_out(&mut t, at, out_tcp(C2, 1, R, 443, SYN));
    }

    #[test]
    fn per_endpoint_limit_keeps_one_container_from_filling_the_table() {
        let to = Timeouts::default();
        let now = Instant::now();
        let limited = || {
            with_config(Config {
                max_sessions_per_endpoint: Some(3),
                ..config(PORTS, 100)
            })
        };
        assert!(Translator::try_new(Config {
            max_sessions_per_endpoint: Some(0),
            ..config(PORTS, 100)
        })
        .is_err());
        // C1 holds three conversations: its fourth flow is refused, C2's not.
        let mut t = limited();
        for sp in [1, 2, 3] {
            converse_udp(&mut t, now, C1, sp, R, 7000);
        }
        assert_eq!(
            drop_out(&mut t, now, out_udp(C1, 4, R, 7000)),
            DropReason::EndpointSessionLimit
        );
        assert_eq!(t.stats().drops(DropReason::EndpointSessionLimit), 1);
        go_out(&mut t, now, out_udp(C2, 4, R, 7000));
        // Its existing flows carry on, and sessions through its published ports are
        // not counted.
        go_out(&mut t, now, out_udp(C1, 1, R, 7000));
        t.publish(Protocol::Tcp, 8080, C1, 80).unwrap();
        go_in(&mut t, now, in_tcp(R, 50000, 8080, SYN));
        // Once they expire, it starts again (without waiting for an expiry sweep).
        go_out(&mut t, now + to.udp, out_udp(C1, 4, R, 7000));

        // At its limit, C1 makes room among its own sessions: its unanswered one goes,
        // not C2's older unanswered one.
        let mut t = limited();
        go_out(&mut t, now, out_udp(C2, 9, R, 7000));
        for sp in [1, 2] {
            converse_udp(&mut t, now, C1, sp, R, 7000);
        }
        let later = now + Duration::from_secs(1);
        go_out(&mut t, later, out_udp(C1, 3, R, 9));
        go_out(&mut t, later, out_udp(C1, 4, R, 7000));
        assert_eq!(t.stats().sessions_evicted, 1);
        assert!(t.sessions().any(|s| s.inside.ip() == &C2));
        assert!(t.sessions().all(|s| s.inside.port() != 3));

        // Refused once (nothing of its own to evict), then one of its connections
        // closes: the next SYN gets through at once.
        let mut t = limited();
        let mut ports = Vec::new();
        for sp in [1, 2, 3] {
            let p = go_out(&mut t, now, out_tcp(C1, sp, R, 80, SYN)).sport;
            go_in(&mut t, now, in_tcp(R, 80, p, SYN | ACK));
            go_out(&mut t, now, out_tcp(C1, sp, R, 80, ACK));
            ports.push(p);
        }
        assert_eq!(
            drop_out(&mut t, now, out_tcp(C1, 4, R, 80, SYN)),
            DropReason::EndpointSessionLimit
        );
        go_out(&mut t, now, out_tcp(C1, 2, R, 80, FIN | ACK));
        go_in(&mut t, now, in_tcp(R, 80, ports[1], FIN | ACK));
        go_out(&mut t, later, out_tcp(C1, 4, R, 80, SYN));
        assert_eq!(t.stats().sessions_evicted, 1);
        assert_eq!(t.session_count(), 3);
    }

    #[test]
    fn port_share_leaves_ports_to_the_other_containers() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        // 10 ports per protocol, a share of 6 per container.
        let shared = || {
            with_config(Config {
                max_ports_per_endpoint: Some(6),
                ..config(40000..=40009, 100)
            })
        };
        assert!(Translator::try_new(Config {
            max_ports_per_endpoint: Some(0),
            ..config(PORTS, 100)
        })
        .is_err());
        let connect = |t: &mut Translator, ip: Ipv4Addr, sp: u16| {
            let p = go_out(t, now, out_tcp(ip, sp, R, 80, SYN)).sport;
            go_in(t, now, in_tcp(R, 80, p, SYN | ACK));
            go_out(t, now, out_tcp(ip, sp, R, 80, ACK));
            p
        };
        // C1 holds six connections (assured, not evictable): its seventh is refused
        // and counted, though the pool has four ports left.
        let mut t = shared();
        for sp in 1..=6 {
            connect(&mut t, C1, sp);
        }
        assert_eq!(
            drop_out(&mut t, now, out_tcp(C1, 7, R, 80, SYN)),
            DropReason::EndpointPortShare
        );
        assert_eq!(t.stats().drops(DropReason::EndpointPortShare), 1);
        // Its mapped ports still reach other remotes (no new port), and UDP has a share
        // of its own.
        go_out(&mut t, now, out_tcp(C1, 1, R2, 80, SYN));
        go_out(&mut t, now, out_udp(C1, 1, R, 53));
        // C2 opens the four ports left at once.
        for sp in 1..=4 {
            connect(&mut t, C2, sp);
        }
        assert_eq!(
            drop_out(&mut t, now, out_tcp(C2, 5, R, 80, SYN)),
            DropReason::PortsExhausted
        );
        // C1 closes one connection: its next one gets through.
        go_out(&mut t, now, out_tcp(C1, 2, R, 80, RST));
        go_out(&mut t, later, out_tcp(C1, 7, R, 80, SYN));
        assert_eq!(t.stats().sessions_evicted, 1);

        // At its share, C1 frees one of its own evictable ports (an unanswered SYN),
        // never C2's older unanswered one.
        let mut t = shared();
        go_out(&mut t, now, out_tcp(C2, 9, R, 80, SYN));
        for sp in 1..=5 {
            connect(&mut t, C1, sp);
        }
        go_out(&mut t, now, out_tcp(C1, 6, R, 80, SYN));
        go_out(&mut t, later, out_tcp(C1, 7, R, 80, SYN));
        assert_eq!(t.stats().sessions_evicted, 1);
        assert!(t.sessions().any(|s| s.inside.ip() == &C2));
        assert!(t.sessions().all(|s| s.inside.port() != 6));
        assert_eq!(t.stats().drops(DropReason::EndpointPortShare), 0);
    }

    #[test]
    fn port_range_exhaustion() {
        let to = Timeouts::default();
        let now = Instant::now();
        let mut t = with(50000..=50001, 100);
        let a = go_out(&mut t, now, out_udp(C1, 1, R, 7000)).sport;
        let b = go_out(&mut t, now, out_udp(C1, 2, R, 7000)).sport;
        assert_ne!(a, b);
        // Conversations: not evictable, so the pool stays exhausted for new mappings.
        for (sp, p) in [(1, a), (2, b)] {
            go_in(&mut t, now, in_udp(R, 7000, p));
            go_out(&mut t, now, out_udp(C1, sp, R, 7000));
        }
        // Sessions of existing mappings still fit.
        go_out(&mut t, now, out_udp(C1, 1, R2, 7000));
        assert_eq!(
            drop_out(&mut t, now, out_udp(C1, 3, R, 7000)),
            DropReason::PortsExhausted
        );
        // Other protocols have their own identifiers.
        go_out(&mut t, now, out_tcp(C1, 3, R, 53, SYN));
        go_out(&mut t, now, from_container(C1, R, 1, &echo(8, 7, 1)));
        // A transitory TCP session gives its port to a new TCP mapping.
        go_out(&mut t, now, out_tcp(C1, 4, R, 53, SYN));
        go_out(
            &mut t,
            now + Duration::from_secs(1),
            out_tcp(C1, 5, R, 53, SYN),
        );
        assert_eq!(t.stats().sessions_evicted, 1);
        // The UDP ports come back when their sessions expire.
        let later = now + to.udp;
        let c = go_out(&mut t, later, out_udp(C1, 3, R, 7000)).sport;
        assert!(c == a || c == b);
    }

    #[test]
    fn expire_and_remove() {
        let to = Timeouts::default();
        let now = Instant::now();
        let mut t = nat();
        go_out(&mut t, now, out_udp(C1, 1, R, 7000));
        go_out(&mut t, now, out_udp(C1, 2, R, 7000));
        go_out(&mut t, now, out_udp(C2, 2, R, 7000));
        go_out(&mut t, now, from_container(C1, R, 1, &echo(8, 1, 1)));
        t.drain_port_events().for_each(drop);
        assert_eq!(t.expire(now + to.icmp), 1);
        assert_eq!(t.drain_port_events().count(), 1);
        assert_eq!(t.remove_endpoint(C1), 2);
        assert_eq!(t.session_count(), 1);
        assert_eq!(
            drop_out(&mut t, now, out_udp(C1, 1, R, 7000)),
            DropReason::UnknownEndpoint
        );
        assert_eq!(t.expire(now + to.udp), 1);
        assert_eq!(t.session_count(), 0);
        assert_eq!(t.stats().sessions_removed, 2);
        assert_eq!(t.stats().sessions_expired, 2);
    }

    #[test]
    fn ttl_handling() {
        let now = Instant::now();
        let mut t = nat();
        for ttl in [0u8, 1] {
            let f = eth(
                GW_MAC,
                C1_MAC,
                &ip(C1, R, 17, ttl, &[], &udp(C1, R, 1, 2, b"", true)),
            );
            assert_eq!(drop_out(&mut t, now, f), DropReason::TtlExceeded);
            let f = eth(
                UPLINK_MAC,
                UPLINK_PEER_MAC,
                &ip(R, EXT, 17, ttl, &[], &udp(R, EXT, 2, 1, b"", true)),
            );
            assert_eq!(drop_in(&mut t, now, f), DropReason::TtlExceeded);
        }
        let f = eth(
            GW_MAC,
            C1_MAC,
            &ip(C1, R, 17, 2, &[], &udp(C1, R, 1, 2, b"", true)),
        );
        assert_eq!(go_out(&mut t, now, f).ttl, 1);
        let f = eth(
            GW_MAC,
            C1_MAC,
            &ip(C1, R, 17, 255, &[], &udp(C1, R, 1, 2, b"", true)),
        );
        assert_eq!(go_out(&mut t, now, f).ttl, 254);
    }

    /// Splits an IPv4 packet (IHL 5) into fragments of `chunk` payload bytes (a multiple
    /// of 8): offsets, MF, total lengths, DF cleared, header checksums redone.
    fn fragments(packet: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        assert_eq!(chunk % 8, 0);
        let payload = &packet[20..];
        payload
            .chunks(chunk)
            .enumerate()
            .map(|(i, part)| {
                let mut h = packet[..20].to_vec();
                h[2..4].copy_from_slice(&((20 + part.len()) as u16).to_be_bytes());
                let mf = if (i + 1) * chunk < payload.len() {
                    0x2000
                } else {
                    0
                };
                h[6..8].copy_from_slice(&((i * chunk / 8) as u16 | mf).to_be_bytes());
                h[10..12].copy_from_slice(&[0, 0]);
                let c = !ref_sum(&[&h]);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                h.extend_from_slice(part);
                h
            })
            .collect()
    }

    /// [`fragments`] as frames from C1.
    fn container_pieces(packet: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let pieces = fragments(packet, chunk);
        pieces.iter().map(|p| eth(GW_MAC, C1_MAC, p)).collect()
    }

    /// [`fragments`] as frames arriving on the uplink.
    fn uplink_pieces(packet: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let pieces = fragments(packet, chunk);
        pieces
            .iter()
            .map(|p| eth(UPLINK_MAC, UPLINK_PEER_MAC, p))
            .collect()
    }

    /// Puts translated fragments (Ethernet frames, in order) back together as the
    /// receiver would: each fragment's IPv4 header checksum verifies, all agree on
    /// addresses, protocol, identification and MACs, and the offsets line up. Returns
    /// the whole datagram as `verify` sees it: its transport checksum is checked over
    /// the reassembled bytes, so an incremental update that went wrong shows.
    fn reassemble(frames: &[Vec<u8>]) -> Seen {
        let first = &frames[0];
        let mut data = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let ipb = &f[14..];
            assert_eq!(
                ref_sum(&[&ipb[..20]]),
                0xffff,
                "fragment {i}: IPv4 checksum"
            );
            assert_eq!(f[..12], first[..12], "fragment {i}: MACs");
            assert_eq!(ipb[4..6], first[18..20], "fragment {i}: identification");
            assert_eq!(ipb[8..10], first[22..24], "fragment {i}: TTL and protocol");
            assert_eq!(ipb[12..20], first[26..34], "fragment {i}: addresses");
            let flags = u16::from_be_bytes([ipb[6], ipb[7]]);
            assert_eq!(usize::from(flags & 0x1fff) * 8, data.len(), "fragment {i}");
            assert_eq!(
                flags & 0x2000 != 0,
                i + 1 < frames.len(),
                "fragment {i}: MF"
            );
            let total = usize::from(u16::from_be_bytes([ipb[2], ipb[3]]));
            data.extend_from_slice(&ipb[20..total]);
        }
        let mut h = first[14..34].to_vec();
        h[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        h[6..8].copy_from_slice(&[0, 0]);
        h[10..12].copy_from_slice(&[0, 0]);
        let c = !ref_sum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&data);
        verify(&eth(
            first[..6].try_into().unwrap(),
            first[6..12].try_into().unwrap(),
            &h,
        ))
    }

    /// Every fragment through the translator one way; every verdict must be `want`.
    fn send_fragments(
        t: &mut Translator,
        now: Instant,
        frames: Vec<Vec<u8>>,
        inbound: bool,
        want: Verdict,
    ) -> Vec<Vec<u8>> {
        frames
            .into_iter()
            .enumerate()
            .map(|(i, mut f)| {
                let v = if inbound {
                    t.inbound(now, &mut f)
                } else {
                    t.outbound(now, &mut f)
                };
                assert_eq!(v, want, "fragment {i}");
                f
            })
            .collect()
    }

    /// A datagram's payload the size of `n` with no repeating pattern.
    fn big_payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn udp_fragments_are_translated_both_ways() {
        let now = Instant::now();
        let mut t = nat();
        // Out: 3000 bytes of data in three fragments (the first holds the UDP header).
        let data = big_payload(3000);
        let ipb = ip(C1, R, 17, 64, &[], &udp(C1, R, 5000, 53, &data, true));
        let frames = container_pieces(&ipb, 1200);
        let out = send_fragments(&mut t, now, frames, false, Verdict::Uplink { remote: R });
        assert_eq!(out.len(), 3);
        let s = reassemble(&out);
        assert_eq!((s.src, s.dst, s.dport, s.ttl), (EXT, R, 53, 63));
        assert_eq!(s.eth_src, UPLINK_MAC);
        assert!(PORTS.contains(&s.sport), "{s:?}");
        assert_eq!(&s.l4[8..], &data[..]);
        assert_eq!(t.session_count(), 1);
        // In: the answer, fragmented by the remote, reaches the container.
        let back = big_payload(4000);
        let ipb = ip(R, EXT, 17, 57, &[], &udp(R, EXT, 53, s.sport, &back, true));
        let frames = uplink_pieces(&ipb, 1480);
        let got = send_fragments(&mut t, now, frames, true, Verdict::Endpoint { port: 1 });
        let r = reassemble(&got);
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport, r.ttl),
            (R, 53, C1, 5000, 56)
        );
        assert_eq!((r.eth_src, r.eth_dst), (GW_MAC, C1_MAC));
        assert_eq!(&r.l4[8..], &back[..]);
        assert_eq!(t.stats().fragments_outbound, 3);
        assert_eq!(t.stats().fragments_inbound, 3);
        assert_eq!(t.stats().translated_outbound, 3);
        assert_eq!(t.stats().translated_inbound, 3);
        assert_eq!(t.stats().total_drops(), 0);
        // Without a UDP checksum: it stays 0.
        let ipb = ip(C1, R, 17, 64, &[], &udp(C1, R, 5000, 53, &data, false));
        let frames = container_pieces(&ipb, 1200);
        let out = send_fragments(&mut t, now, frames, false, Verdict::Uplink { remote: R });
        assert_eq!(reassemble(&out).l4[6..8], [0, 0]);
    }

    #[test]
    fn tcp_and_icmp_echo_fragments() {
        let now = Instant::now();
        let mut t = nat();
        // A TCP segment fragmented on its way (no DF): the header stays in the first.
        let p = go_out(&mut t, now, out_tcp(C1, 5001, R, 80, SYN)).sport;
        go_in(&mut t, now, in_tcp(R, 80, p, SYN | ACK));
        let data = big_payload(2500);
        let ipb = ip(C1, R, 6, 64, &[], &tcp(C1, R, 5001, 80, ACK, &data));
        let frames = container_pieces(&ipb, 1000);
        let out = send_fragments(&mut t, now, frames, false, Verdict::Uplink { remote: R });
        let s = reassemble(&out);
        assert_eq!((s.src, s.sport, s.dst, s.dport), (EXT, p, R, 80));
        assert_eq!(&s.l4[20..], &data[..]);
        let ipb = ip(R, EXT, 6, 57, &[], &tcp(R, EXT, 80, p, ACK, &data));
        let frames = uplink_pieces(&ipb, 1000);
        let got = send_fragments(&mut t, now, frames, true, Verdict::Endpoint { port: 1 });
        let r = reassemble(&got);
        assert_eq!((r.dst, r.dport), (C1, 5001));
        // A big ping: the echo identifier is mapped in the first fragment, the ICMP
        // checksum (over the whole message) follows.
        let mut rest = [0u8; 4];
        rest[..2].copy_from_slice(&77u16.to_be_bytes());
        let req = icmp(8, 0, rest, &data);
        let frames = container_pieces(&ip(C1, R, 1, 64, &[], &req), 1480);
        let out = send_fragments(&mut t, now, frames, false, Verdict::Uplink { remote: R });
        let s = reassemble(&out);
        let id = s.dport;
        assert_eq!((s.src, s.proto, &s.l4[8..]), (EXT, 1, &data[..]));
        assert!(PORTS.contains(&id));
        let mut rest = [0u8; 4];
        rest[..2].copy_from_slice(&id.to_be_bytes());
        let reply = icmp(0, 0, rest, &data);
        let frames = uplink_pieces(&ip(R, EXT, 1, 57, &[], &reply), 1480);
        let got = send_fragments(&mut t, now, frames, true, Verdict::Endpoint { port: 1 });
        let r = reassemble(&got);
        assert_eq!((r.dst, r.dport, &r.l4[8..]), (C1, 77, &data[..]));
    }

    #[test]
    fn fragments_hairpin_through_a_published_port() {
        let now = Instant::now();
        let mut t = nat();
        t.publish(Protocol::Udp, 5353, C2, 53).unwrap();
        let data = big_payload(2000);
        let ipb = ip(C1, EXT, 17, 64, &[], &udp(C1, EXT, 4000, 5353, &data, true));
        let frames = container_pieces(&ipb, 1200);
        let got = send_fragments(&mut t, now, frames, false, Verdict::Endpoint { port: 2 });
        let s = reassemble(&got);
        assert_eq!((s.src, s.dst, s.dport, s.ttl), (EXT, C2, 53, 63));
        assert_eq!((s.eth_src, s.eth_dst), (GW2_MAC, C2_MAC));
        assert_eq!(&s.l4[8..], &data[..]);
    }

    #[test]
    fn later_fragments_without_their_first_are_dropped() {
        let now = Instant::now();
        let mut t = nat();
        let data = big_payload(3000);
        let p = go_out(&mut t, now, out_udp(C1, 5000, R, 53)).sport;
        let answer = |ident: u16| {
            let mut ipb = ip(R, EXT, 17, 57, &[], &udp(R, EXT, 53, p, &data, true));
            ipb[4..6].copy_from_slice(&ident.to_be_bytes());
            uplink_pieces(&ipb, 1480)
        };
        // The first fragment lost: the others are dropped, each counted.
        let frames = answer(1);
        for f in &frames[1..] {
            assert_eq!(
                drop_in(&mut t, now, f.clone()),
                DropReason::FragmentWithoutHead
            );
        }
        assert_eq!(t.stats().drops(DropReason::FragmentWithoutHead), 2);
        // Another datagram's first fragment does not adopt them.
        let other = answer(2);
        let mut head = other[0].clone();
        assert_eq!(t.inbound(now, &mut head), Verdict::Endpoint { port: 1 });
        assert_eq!(
            drop_in(&mut t, now, frames[1].clone()),
            DropReason::FragmentWithoutHead
        );
        // Nor one going the other way, nor one from another remote.
        let mut ipb = ip(C1, R, 17, 64, &[], &udp(C1, R, 5000, 53, &data, true));
        ipb[4..6].copy_from_slice(&2u16.to_be_bytes());
        let out_later = fragments(&ipb, 1480).pop().unwrap();
        assert_eq!(
            drop_out(&mut t, now, eth(GW_MAC, C1_MAC, &out_later)),
            DropReason::FragmentWithoutHead
        );
        let mut stray = other[1].clone();
        stray[14 + 12..14 + 16].copy_from_slice(&R2.octets());
        let mut ipb = stray[14..].to_vec();
        ipb[10..12].copy_from_slice(&[0, 0]);
        let c = !ref_sum(&[&ipb[..20]]);
        stray[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(drop_in(&mut t, now, stray), DropReason::FragmentWithoutHead);
        // Its own later fragments follow it, until the kernel's reassembly time is up.
        let mut f = other[1].clone();
        assert_eq!(t.inbound(now, &mut f), Verdict::Endpoint { port: 1 });
        let late = now + FRAG_LIFETIME;
        assert_eq!(
            drop_in(&mut t, late, other[2].clone()),
            DropReason::FragmentWithoutHead
        );
        // A first fragment the translator drops (no session) takes its datagram with it.
        let mut ipb = ip(R, EXT, 17, 57, &[], &udp(R, EXT, 53, 40099, &data, true));
        ipb[4..6].copy_from_slice(&3u16.to_be_bytes());
        let frames: Vec<_> = uplink_pieces(&ipb, 1480);
        assert_eq!(
            drop_in(&mut t, now, frames[0].clone()),
            DropReason::NoSession
        );
        assert_eq!(
            drop_in(&mut t, now, frames[1].clone()),
            DropReason::FragmentWithoutHead
        );
        // A first fragment too short for its UDP header is malformed.
        let mut ipb = ip(C1, R, 17, 64, &[], &udp(C1, R, 5000, 53, &data, true));
        ipb[4..6].copy_from_slice(&4u16.to_be_bytes());
        let tiny = fragments(&ipb, 8);
        let mut short = tiny[0].clone();
        short.truncate(20 + 4);
        short[2..4].copy_from_slice(&24u16.to_be_bytes());
        short[10..12].copy_from_slice(&[0, 0]);
        let c = !ref_sum(&[&short[..20]]);
        short[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            drop_out(&mut t, now, eth(GW_MAC, C1_MAC, &short)),
            DropReason::Malformed
        );
        assert_eq!(t.stats().drops(DropReason::FragmentWithoutHead), 7);
    }

    #[test]
    fn the_fragment_table_stays_bounded() {
        let now = Instant::now();
        let mut t = nat();
        let data = big_payload(1500);
        let datagram = |ident: u16| {
            let mut ipb = ip(C1, R, 17, 64, &[], &udp(C1, R, 5000, 53, &data, true));
            ipb[4..6].copy_from_slice(&ident.to_be_bytes());
            container_pieces(&ipb, 1480)
        };
        let n = FRAG_DATAGRAMS as u16 + 100;
        for ident in 0..n {
            let mut head = datagram(ident).remove(0);
            assert_eq!(t.outbound(now, &mut head), Verdict::Uplink { remote: R });
            assert!(t.frags.len() <= FRAG_DATAGRAMS);
        }
        assert_eq!(t.frags.len(), FRAG_DATAGRAMS);
        assert_eq!(t.frags.evicted(), 100);
        // The oldest were forgotten, the newest are known.
        let mut oldest = datagram(0).pop().unwrap();
        assert!(matches!(
            t.outbound(now, &mut oldest),
            Verdict::Drop(DropReason::FragmentWithoutHead)
        ));
        let mut newest = datagram(n - 1).pop().unwrap();
        assert_eq!(t.outbound(now, &mut newest), Verdict::Uplink { remote: R });
        // Old entries lapse when new ones come.
        let mut head = datagram(n).remove(0);
        assert_eq!(
            t.outbound(now + FRAG_LIFETIME, &mut head),
            Verdict::Uplink { remote: R }
        );
        assert_eq!(t.frags.len(), 1);
    }

    #[test]
    fn other_drops() {
        let now = Instant::now();
        let mut t = nat();
        // A later fragment whose first one was never seen.
        let ipb = ip(C1, R, 17, 64, &[], &udp(C1, R, 1, 2, &[7; 24], true));
        let later = fragments(&ipb, 16).pop().unwrap();
        assert_eq!(
            drop_out(&mut t, now, eth(GW_MAC, C1_MAC, &later)),
            DropReason::FragmentWithoutHead
        );
        // The first fragment of an ICMP error.
        let err = icmp(3, 3, [0; 4], &in_udp(R, 53, 5000)[14..]);
        let first = fragments(&ip(C1, R, 1, 64, &[], &err), 16).remove(0);
        assert_eq!(
            drop_out(&mut t, now, eth(GW_MAC, C1_MAC, &first)),
            DropReason::Fragment
        );
        // Not IPv4.
        let mut f = out_udp(C1, 1, R, 2);
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(drop_out(&mut t, now, f), DropReason::NotIpv4);
        let mut f = out_udp(C1, 1, R, 2);
        f[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(drop_out(&mut t, now, f), DropReason::NotIpv4);
        // Version 6 inside an IPv4 ethertype.
        let mut f = out_udp(C1, 1, R, 2);
        f[14] = 0x65;
        assert_eq!(drop_out(&mut t, now, f), DropReason::Malformed);
        // GRE.
        let f = from_container(C1, R, 47, &[0u8; 12]);
        assert_eq!(drop_out(&mut t, now, f), DropReason::UnsupportedProtocol);
        let f = from_uplink(R, EXT, 47, &[0u8; 12]);
        assert_eq!(drop_in(&mut t, now, f), DropReason::UnsupportedProtocol);
        // ICMP types other than echo and errors.
        let f = from_container(C1, R, 1, &icmp(13, 0, [0; 4], &[0; 12]));
        assert_eq!(drop_out(&mut t, now, f), DropReason::UnsupportedProtocol);
        // Bad IP header checksum.
        let mut f = out_udp(C1, 1, R, 2);
        f[14 + 10] ^= 0x55;
        assert_eq!(drop_out(&mut t, now, f), DropReason::BadChecksum);
        // Unknown source.
        let f = out_udp(Ipv4Addr::new(10, 0, 0, 99), 1, R, 2);
        assert_eq!(drop_out(&mut t, now, f), DropReason::UnknownEndpoint);
        // Inbound for another address.
        let f = from_uplink(
            R,
            Ipv4Addr::new(192, 0, 2, 2),
            17,
            &udp(R, EXT, 1, 40000, b"", true),
        );
        assert_eq!(drop_in(&mut t, now, f), DropReason::NotForUs);
        assert_eq!(t.session_count(), 0);
        let names: Vec<_> = t
            .stats()
            .drop_counts()
            .filter(|(_, n)| *n > 0)
            .map(|(r, _)| r.name())
            .collect();
        assert_eq!(
            names,
            [
                "malformed",
                "not_ipv4",
                "fragment",
                "fragment_without_head",
                "unsupported_protocol",
                "unknown_endpoint",
                "bad_checksum",
                "not_for_us"
            ]
        );
        assert_eq!(t.stats().total_drops(), 11);
    }

    #[test]
    fn ip_options_and_padding_are_carried() {
        let now = Instant::now();
        let mut t = nat();
        // IHL 6 with a NOP/EOL option word; 10 bytes of Ethernet padding after it.
        let l4 = udp(C1, R, 5000, 53, b"opt", true);
        let mut f = eth(GW_MAC, C1_MAC, &ip(C1, R, 17, 64, &[1, 1, 1, 0], &l4));
        f.extend_from_slice(&[0xee; 10]);
        let v = t.outbound(now, &mut f);
        assert_eq!(v, Verdict::Uplink { remote: R });
        let s = verify(&f);
        assert_eq!(&f[14 + 20..14 + 24], &[1, 1, 1, 0]);
        assert_eq!(&f[f.len() - 10..], &[0xee; 10]);
        assert_eq!(&s.l4[8..], b"opt");
        let l4 = udp(R, EXT, 53, s.sport, b"back", true);
        let mut f = eth(
            UPLINK_MAC,
            UPLINK_PEER_MAC,
            &ip(R, EXT, 17, 60, &[7, 4, 4, 0, 0, 0, 0, 0], &l4),
        );
        assert_eq!(t.inbound(now, &mut f), Verdict::Endpoint { port: 1 });
        let r = verify(&f);
        assert_eq!((r.dst, r.dport), (C1, 5000));
    }

    #[test]
    fn hairpin_through_a_published_port() {
        let now = Instant::now();
        let mut t = nat();
        t.publish(Protocol::Udp, 5353, C2, 53).unwrap();
        let mut f = out_udp(C1, 4000, EXT, 5353);
        assert_eq!(t.outbound(now, &mut f), Verdict::Endpoint { port: 2 });
        let s = verify(&f);
        assert_eq!((s.src, s.dst, s.dport, s.ttl), (EXT, C2, 53, 63));
        assert_eq!((s.eth_src, s.eth_dst), (GW2_MAC, C2_MAC));
        let a = s.sport;
        let mut f = from_container(C2, EXT, 17, &udp(C2, EXT, 53, a, b"re", true));
        assert_eq!(t.outbound(now, &mut f), Verdict::Endpoint { port: 1 });
        let r = verify(&f);
        assert_eq!((r.src, r.sport, r.dst, r.dport), (EXT, 5353, C1, 4000));
    }

    /// Every prefix of valid frames, and every single-byte corruption of the headers, in
    /// both directions: no panic, and whatever is not dropped verifies.
    #[test]
    fn truncated_and_corrupted_frames_do_not_panic() {
        let now = Instant::now();
        let mut t = nat();
        t.publish(Protocol::Tcp, 8080, C1, 80).unwrap();
        let mut seed = out_udp(C1, 5000, R, 53);
        t.outbound(now, &mut seed);
        let mut tseed = out_tcp(C1, 5001, R, 80, SYN);
        t.outbound(now, &mut tseed);
        let frames = vec![
            out_udp(C1, 5000, R, 53),
            out_tcp(C1, 5001, R, 80, SYN | ACK),
            from_container(C1, R, 1, &echo(8, 1, 1)),
            in_udp(R, 53, 40000),
            in_tcp(R, 9, 8080, SYN),
            from_uplink(R, EXT, 1, &echo(0, 40000, 1)),
            error_about(&seed, 3, 3, None),
            error_about(&seed, 3, 3, Some(28)),
            error_about(&tseed, 11, 0, Some(28)),
            from_container(C1, R, 1, &icmp(3, 3, [0; 4], &in_udp(R, 53, 5000)[14..])),
        ];
        for f in &frames {
            for n in 0..=f.len() {
                for inbound in [false, true] {
                    let mut g = f[..n].to_vec();
                    let v = if inbound {
                        t.inbound(now, &mut g)
                    } else {
                        t.outbound(now, &mut g)
                    };
                    if !matches!(v, Verdict::Drop(_)) {
                        verify(&g);
                    }
                }
            }
            for i in 0..f.len().min(14 + 60 + 28) {
                for x in [0x01u8, 0x80, 0xff] {
                    let mut g = f.clone();
                    g[i] ^= x;
                    let _ = t.outbound(now, &mut g);
                    let mut g = f.clone();
                    g[i] ^= x;
                    let _ = t.inbound(now, &mut g);
                }
            }
        }
        assert!(t.stats().drops(DropReason::Malformed) > 0);
    }

    #[test]
    fn config_is_validated() {
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 2..=1;
        assert!(Translator::try_new(config(empty, 10)).is_err());
        assert!(Translator::try_new(config(0..=10, 10)).is_err());
        assert!(Translator::try_new(config(1..=10, 0)).is_err());
        assert!(Translator::try_new(config(65535..=65535, 1)).is_ok());
        let d = Timeouts::default();
        assert_eq!(d.tcp_established, Duration::from_secs(7440));
        assert_eq!(d.tcp_transitory, Duration::from_secs(240));
        assert_eq!(d.udp, Duration::from_secs(300));
        assert_eq!(d.icmp, Duration::from_secs(60));
        assert_eq!(Protocol::Udp.number(), 17);
        assert_eq!(Protocol::from_number(6), Some(Protocol::Tcp));
        assert_eq!(DropReason::PortsExhausted.name(), "ports_exhausted");
    }

    #[global_allocator]
    static ALLOCATOR: dovesnap_testbed::alloc::CountingAlloc =
        dovesnap_testbed::alloc::CountingAlloc;

    #[test]
    fn no_allocation_per_packet_on_live_sessions() {
        let now = Instant::now();
        let mut t = nat();
        t.publish(Protocol::Tcp, 8080, C1, 80).unwrap();
        let p = go_out(&mut t, now, out_udp(C1, 5000, R, 53)).sport;
        let q = go_out(&mut t, now, out_tcp(C1, 5001, R, 443, SYN)).sport;
        let i = go_out(&mut t, now, from_container(C1, R, 1, &echo(8, 5, 1))).dport;
        go_in(&mut t, now, in_tcp(R2, 1234, 8080, SYN));
        let mut partial = tcp(C1, R, 5001, 443, ACK, &[1u8; 1000]);
        make_partial(&mut partial, C1, R, 6);
        let mut trans = out_udp(C1, 5000, R, 53);
        t.outbound(now, &mut trans);
        let big = ip(R, EXT, 17, 57, &[], &udp(R, EXT, 53, p, &[9; 2000], true));
        let pieces: Vec<_> = uplink_pieces(&big, 1480);
        let frames: [(bool, Vec<u8>); 13] = [
            (false, out_udp(C1, 5000, R, 53)),
            (true, in_udp(R, 53, p)),
            (false, out_tcp(C1, 5001, R, 443, ACK)),
            (false, from_container(C1, R, 6, &partial)),
            (true, in_tcp(R, 443, q, ACK)),
            (false, from_container(C1, R, 1, &echo(8, 5, 2))),
            (true, from_uplink(R, EXT, 1, &echo(0, i, 2))),
            (true, in_tcp(R2, 1234, 8080, ACK)),
            (false, out_tcp(C1, 80, R2, 1234, SYN | ACK)),
            (true, error_about(&trans, 3, 3, Some(28))),
            (true, in_udp(R2, 53, p)), // filtered: a drop allocates nothing either
            (true, pieces[0].clone()),
            (true, pieces[1].clone()),
        ];
        let mut copies: Vec<Vec<u8>> = frames.iter().map(|(_, f)| f.clone()).collect();
        let before = dovesnap_testbed::alloc::thread_allocations();
        for _ in 0..100 {
            for ((inbound, f), c) in frames.iter().zip(copies.iter_mut()) {
                c.copy_from_slice(f);
                if *inbound {
                    t.inbound(now, c);
                } else {
                    t.outbound(now, c);
                }
            }
        }
        let after = dovesnap_testbed::alloc::thread_allocations();
        assert_eq!(after - before, 0, "allocations on the per-packet path");
        assert_eq!(t.stats().drops(DropReason::Filtered), 100);
        assert_eq!(t.stats().total_drops(), 100);
    }

    /// The fuzz target's harness (`crate::fuzz::translate`) over deterministic
    /// pseudo-random inputs: mutated valid frames of every kind, in records, so sessions
    /// form and are hit.
    #[test]
    fn fuzz_harness_on_pseudo_random_inputs() {
        let mut seed_out = out_udp(C1, 5000, R, 53);
        let mut t = with(40000..=40007, 16);
        t.publish(Protocol::Udp, 40001, C1, 53).unwrap();
        t.outbound(Instant::now(), &mut seed_out);
        let corpus: Vec<(bool, Vec<u8>)> = vec![
            (false, out_udp(C1, 5000, R, 53)),
            (false, out_tcp(C1, 5001, R, 80, SYN)),
            (false, out_tcp(C1, 5001, R, 80, ACK | FIN)),
            (false, from_container(C1, R, 1, &echo(8, 1, 1))),
            (
                false,
                from_container(C1, R, 1, &icmp(3, 3, [0; 4], &in_udp(R, 53, 5000)[14..])),
            ),
            (true, in_udp(R, 53, 40000)),
            (true, in_udp(R, 9, 40001)),
            (true, in_tcp(R, 80, 40000, SYN | ACK)),
            (true, in_tcp(R, 80, 8080, SYN)),
            (true, from_uplink(R, EXT, 1, &echo(0, 40000, 1))),
            (true, error_about(&seed_out, 3, 3, None)),
            (true, error_about(&seed_out, 11, 0, Some(28))),
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut input = Vec::new();
        let (mut out, mut inb, mut created) = (0, 0, 0);
        for _ in 0..3000 {
            input.clear();
            for _ in 0..1 + rng.below(8) {
                let (inbound, f) = &corpus[rng.below(corpus.len())];
                let mut f = f.clone();
                for _ in 0..rng.below(4) {
                    let i = rng.below(f.len());
                    f[i] = rng.next_u64() as u8;
                }
                if rng.below(8) == 0 {
                    f.truncate(rng.below(f.len() + 1));
                }
                let n = f.len().min(0x7ff);
                let patch = if rng.below(2) == 0 { 2 } else { 0 };
                let time = (rng.below(8) as u8) << 2;
                let ctl = u8::from(*inbound) | patch | time & 0x1c | ((n >> 8) as u8) << 5;
                input.push(ctl);
                input.push(n as u8);
                input.extend_from_slice(&f[..n]);
            }
            let st = crate::fuzz::translate(&input);
            out += st.translated_outbound;
            inb += st.translated_inbound;
            created += st.sessions_created;
        }
        // The inputs reach the translation paths, not only the early drops.
        assert!(
            out > 1000 && inb > 300 && created > 1000,
            "{out} {inb} {created}"
        );
        // Pure noise too.
        for _ in 0..500 {
            let n = rng.below(600);
            let noise: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            crate::fuzz::translate(&noise);
        }
    }
}
