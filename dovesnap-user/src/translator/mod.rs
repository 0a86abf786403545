//! The nat-fast packet translator: a pure NAPT (RFC 4787 / 5382 / 5508) over Ethernet
//! frames and a session table, with no I/O. The AF_XDP adapter hands it each frame and
//! transmits the frame where the returned [`Verdict`] says.
//!
//! - [`checksum`]: RFC 1071 sums and RFC 1624 incremental updates.
//! - [`wire`]: typed, bounds-checked views over Ethernet / IPv4 / TCP / UDP / ICMP bytes.
//! - [`session`]: the session table, port pools, TCP state tracking and eviction.
//! - [`shares`]: the port range split among worker translators ([`PortShares`]).
//! - [`translate`]: [`Translator`], the outbound and inbound rewrite paths.
//!
//! Behaviour in brief:
//! - Endpoint-independent mapping, address-and-port-dependent filtering; external ports
//!   (and ICMP echo identifiers, in their own namespace) come only from [`Config::ports`].
//! - IPv4 only, Ethernet II only (a VLAN-tagged frame is [`DropReason::NotIpv4`]); IP
//!   options (IHL > 5) are carried through.
//! - Fragments are translated one by one, never reassembled: the first (it carries the
//!   transport header) like a whole packet, its TCP/UDP/ICMP checksum updated
//!   incrementally since it covers the whole datagram; later ones get the addresses
//!   their first one got ([`fragment`]), or are dropped
//!   ([`DropReason::FragmentWithoutHead`]) when it was not seen.
//! - Frames from a container may carry partial (offloaded) TCP/UDP checksums; frames
//!   leaving the translator always carry complete ones.
//! - Time is [`std::time::Instant`], passed in by the caller.
//! - Per packet, nothing allocates except a new session's hash-map inserts (the maps are
//!   sized for [`Config::max_sessions`] up front) and a [`PortEvent`] push beyond
//!   the event queue's initial capacity (drain it regularly).
//! - Published ports may lie outside [`Config::ports`]; the steering must then send them
//!   to the translator too. A published port inside the range is withheld from dynamic use.
//! - A container sending to the external address itself is hairpinned (RFC 4787 REQ-9):
//!   translated out, then in, and delivered to the target endpoint.

pub mod checksum;
pub mod fragment;
pub mod session;
pub mod shares;
pub mod translate;
pub mod wire;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

pub use shares::{split_ports, PortShares, ShareError};
pub use translate::{Translator, OFFLOAD_AFTER_PACKETS};

/// What the translator is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The address containers share on the uplink.
    pub external_ip: Ipv4Addr,
    /// Source MAC of frames sent on the uplink.
    pub uplink_mac: [u8; 6],
    /// External ports (and ICMP echo identifiers) reserved for the translator. Must not
    /// contain 0.
    pub ports: RangeInclusive<u16>,
    /// Upper bound on live sessions (and so on memory).
    pub max_sessions: usize,
    /// Upper bound on the sessions one container address starts (those through its
    /// published ports are not counted); `None`: only `max_sessions` bounds them.
    pub max_sessions_per_endpoint: Option<usize>,
    /// Upper bound on the external ports (per protocol) one container address maps from
    /// [`Config::ports`]: its share of the pool, so that one container's exhaustion
    /// leaves ports for the others. `None`: the whole pool.
    pub max_ports_per_endpoint: Option<usize>,
    pub timeouts: Timeouts,
}

/// Idle timeouts per session kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Both SYNs seen, not closed (RFC 5382 REQ-5: at least 2 h 4 min).
    pub tcp_established: Duration,
    /// SYN seen one way only, FIN seen both ways, or RST (RFC 5382 REQ-5: at least 4 min).
    pub tcp_transitory: Duration,
    /// RFC 4787 REQ-5: at least 2 min; 5 min recommended.
    pub udp: Duration,
    /// UDP to port 53 not yet assured (a lone question and its answer): RFC 4787
    /// REQ-5a allows a shorter timer for well-known destination ports; resolvers use a
    /// fresh source port per question, and 5 minutes each would pin the port pool.
    pub udp_dns: Duration,
    /// RFC 5508 REQ-1: ICMP query sessions at least 60 s.
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_transitory: Duration::from_secs(4 * 60),
            udp: Duration::from_secs(5 * 60),
            udp_dns: Duration::from_secs(30),
            icmp: Duration::from_secs(60),
        }
    }
}

/// A container endpoint behind the translator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// The MAC the endpoint uses as its gateway; source of frames delivered to it.
    pub gateway_mac: [u8; 6],
    /// Opaque TX port id for the adapter.
    pub port: u32,
    /// Whether its established sessions may go to the XDP fast path
    /// ([`Translator::take_offload`]).
    pub offload: bool,
}

/// A transport protocol the translator handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp];

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => wire::ip_proto::TCP,
            Protocol::Udp => wire::ip_proto::UDP,
            Protocol::Icmp => wire::ip_proto::ICMP,
        }
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            wire::ip_proto::TCP => Some(Protocol::Tcp),
            wire::ip_proto::UDP => Some(Protocol::Udp),
            wire::ip_proto::ICMP => Some(Protocol::Icmp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl From<Protocol> for u8 {
    fn from(p: Protocol) -> u8 {
        p.number()
    }
}

/// `Display` as the type's `name()`.
macro_rules! display_by_name {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    )*};
}

display_by_name!(Protocol, DropReason);

/// Where a translated frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send on the uplink. The source MAC is set; the adapter resolves the next hop for
    /// `remote` and writes the destination MAC.
    Uplink {
        remote: Ipv4Addr,
    },
    /// Deliver to the endpoint on TX port `port`; both MACs are set.
    Endpoint {
        port: u32,
    },
    Drop(DropReason),
}

macro_rules! drop_reasons {
    ($($(#[$m:meta])* $v:ident => $name:literal,)*) => {
        /// Why a frame was not translated.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropReason { $($(#[$m])* $v,)* }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$v,)*];
            pub const COUNT: usize = Self::ALL.len();

            /// A stable snake_case name, for counters and logs.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$v => $name,)* }
            }
        }
    };
}

drop_reasons! {
    /// Truncated or inconsistent headers anywhere.
    Malformed => "malformed",
    /// Not an untagged IPv4 Ethernet frame.
    NotIpv4 => "not_ipv4",
    /// A fragment that cannot be translated by itself: part of a fragmented ICMP error,
    /// or an ICMP error quoting a later fragment (no transport header to match).
    Fragment => "fragment",
    /// A later fragment whose datagram's first fragment was not translated (lost,
    /// dropped, reordered behind it, or older than the fragment table remembers).
    FragmentWithoutHead => "fragment_without_head",
    /// Not TCP, UDP or ICMP, or an ICMP type the translator does not handle.
    UnsupportedProtocol => "unsupported_protocol",
    /// TTL <= 1 on arrival.
    TtlExceeded => "ttl_exceeded",
    /// No session (nor a published port) matches, or the packet may not create one.
    NoSession => "no_session",
    /// Outbound from an address that is not a registered endpoint, or a published port
    /// whose target is not registered.
    UnknownEndpoint => "unknown_endpoint",
    /// No free external port or session slot, and nothing could be evicted.
    PortsExhausted => "ports_exhausted",
    /// The container already holds its limit of sessions (`Config::max_sessions_per_endpoint`)
    /// and none of them could be evicted.
    EndpointSessionLimit => "endpoint_session_limit",
    /// The container already holds its share of the protocol's port pool
    /// (`Config::max_ports_per_endpoint`) and none of its own sessions could be evicted
    /// to free one; other containers still get ports.
    EndpointPortShare => "endpoint_port_share",
    /// The external port is mapped, but not for this remote (address-and-port-dependent
    /// filtering).
    Filtered => "filtered",
    /// The IPv4 header checksum does not verify.
    BadChecksum => "bad_checksum",
    /// Inbound frame not addressed to the external IP.
    NotForUs => "not_for_us",
    /// A published-port session would duplicate the inside 5-tuple of another session.
    SessionConflict => "session_conflict",
}

/// A change the XDP steering needs to know about: a dynamic session (from the port pool)
/// started or ended. The uplink steers exactly these sessions' replies, by their full
/// tuple (`remote` to `port` on the external address; for ICMP `port` is the echo
/// identifier and `remote`'s port 0), and published ports by port; so a host socket or
/// another NAT using a port number of the translator's range keeps its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortEvent {
    Opened {
        protocol: Protocol,
        port: u16,
        remote: SocketAddrV4,
    },
    Closed {
        protocol: Protocol,
        port: u16,
        remote: SocketAddrV4,
    },
}

/// A session handed to the XDP fast path ([`Translator::take_offload`]): established
/// both ways, its frames rewritten in the kernel until the translator takes it back
/// ([`Translator::drain_unoffloaded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Offloaded {
    pub protocol: Protocol,
    /// Container address and port.
    pub inside: SocketAddrV4,
    /// Remote address and port.
    pub remote: SocketAddrV4,
    /// External port on [`Config::external_ip`].
    pub external_port: u16,
}

/// Errors of the control-plane operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    #[error("{protocol} port {port} is already published to {existing}; unpublish it first")]
    AlreadyPublished {
        protocol: Protocol,
        port: u16,
        existing: SocketAddrV4,
    },
    #[error(
        "{protocol} port {port} is inside the translator's port range and an active session \
         uses it; publish a port outside the range, or retry once the session has expired"
    )]
    PortInUse { protocol: Protocol, port: u16 },
    #[error("ICMP cannot be published; publish a TCP or UDP port")]
    IcmpNotPublishable,
    #[error("port 0 cannot be published or used; give a port in 1..=65535")]
    ZeroPort,
    #[error("invalid NAT configuration: {0}")]
    InvalidConfig(&'static str),
    #[error(transparent)]
    Shares(#[from] ShareError),
}

/// Counters. Monotonic since the translator was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub translated_outbound: u64,
    pub translated_inbound: u64,
    /// Fragments translated outbound (first and later ones; also in
    /// `translated_outbound`).
    pub fragments_outbound: u64,
    /// Fragments translated inbound (also in `translated_inbound`).
    pub fragments_inbound: u64,
    pub sessions_created: u64,
    /// Removed by [`Translator::expire`] or reclaimed after their timeout.
    pub sessions_expired: u64,
    /// Removed before their timeout to make room (transitory TCP, unanswered UDP/ICMP).
    pub sessions_evicted: u64,
    /// Removed by `remove_endpoint` / `unpublish`.
    pub sessions_removed: u64,
    /// Taken over from the kernel's conntrack (see `SessionTable::adopt`).
    pub sessions_adopted: u64,
    drops: [u64; DropReason::COUNT],
}

impl Stats {
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Every drop, whatever the reason (for the unit tests).
    #[cfg(test)]
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Every reason with its count (zeros included).
    pub fn drop_counts(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.drops[*r as usize]))
    }

    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }
}

/// One session, for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView {
    pub protocol: Protocol,
    /// Container address and port (ICMP: echo identifier).
    pub inside: SocketAddrV4,
    /// External port (ICMP: echo identifier) on [`Config::external_ip`].
    pub external_port: u16,
    /// Remote address and port (ICMP: port 0).
    pub remote: SocketAddrV4,
    /// `SYN_SENT`, `SYN_RECEIVED`, `ESTABLISHED`, `FIN_WAIT`, `CLOSING`, `RESET` for TCP;
    /// `ACTIVE` for UDP and ICMP.
    pub state: &'static str,
    /// The published external port the session was created through, if any.
    pub published: Option<u16>,
    pub last_seen: Instant,
    /// When it expires unless refreshed.
    pub expires: Instant,
}

/// Frames built from scratch and checked from scratch, for the tests of this module. The
/// checksums here use their own RFC 1071 loop, not [`checksum`].
#[cfg(test)]
pub(crate) mod testkit {
    use std::net::Ipv4Addr;

    use dovesnap_testbed::frame::Ipv4Header;

    pub const EXT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    pub const UPLINK_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
    pub const C1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    pub const C1_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x02];
    pub const C2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
    pub const C2_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x03];
    pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x01];
    pub const GW2_MAC: [u8; 6] = [0x02, 0, 0, 0, 2, 0x01];
    pub const R: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    pub const R2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
    pub const ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);

    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    /// RFC 1071, byte by byte.
    pub fn ref_sum(parts: &[&[u8]]) -> u16 {
        let mut acc: u64 = 0;
        for data in parts {
            let mut i = 0;
            while i < data.len() {
                let hi = u64::from(data[i]) << 8;
                let lo = if i + 1 < data.len() {
                    u64::from(data[i + 1])
                } else {
                    0
                };
                acc += hi + lo;
                i += 2;
            }
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    pub fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
        p
    }

    /// Same value in ones' complement (0x0000 == 0xffff)?
    pub fn ones_eq(a: u16, b: u16) -> bool {
        a == b || (a | b == 0xffff && a & b == 0)
    }

    pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sp: u16, dp: u16, flags: u8, data: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sp.to_be_bytes());
        t[2..4].copy_from_slice(&dp.to_be_bytes());
        t[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
        t[12] = 0x50;
        t[13] = flags;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        t.extend_from_slice(data);
        let c = !ref_sum(&[&pseudo(src, dst, 6, t.len()), &t]);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        t
    }

    pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sp: u16, dp: u16, data: &[u8], csum: bool) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&sp.to_be_bytes());
        u[2..4].copy_from_slice(&dp.to_be_bytes());
        u[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(data);
        if csum {
            let mut c = !ref_sum(&[&pseudo(src, dst, 17, u.len()), &u]);
            if c == 0 {
                c = 0xffff;
            }
            u[6..8].copy_from_slice(&c.to_be_bytes());
        }
        u
    }

    /// Replaces a TCP/UDP checksum with the partial (offload) value: the folded pseudo-header
    /// sum, not complemented.
    pub fn make_partial(l4: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8) {
        let at = if proto == 6 { 16 } else { 6 };
        let len = if proto == 6 {
            l4.len()
        } else {
            usize::from(u16::from_be_bytes([l4[4], l4[5]]))
        };
        let p = ref_sum(&[&pseudo(src, dst, proto, len)]);
        l4[at..at + 2].copy_from_slice(&p.to_be_bytes());
    }

    pub fn icmp(ty: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
        let mut m = vec![ty, code, 0, 0];
        m.extend_from_slice(&rest);
        m.extend_from_slice(data);
        let c = !ref_sum(&[&m]);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        m
    }

    pub fn echo(ty: u8, id: u16, seq: u16) -> Vec<u8> {
        let mut rest = [0u8; 4];
        rest[0..2].copy_from_slice(&id.to_be_bytes());
        rest[2..4].copy_from_slice(&seq.to_be_bytes());
        icmp(ty, 0, rest, b"dovesnap ping payload")
    }

    pub fn ip(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        ttl: u8,
        options: &[u8],
        l4: &[u8],
    ) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let hl = 20 + options.len();
        let mut h = vec![0u8; hl];
        h[0] = 0x40 | (hl / 4) as u8;
        h[2..4].copy_from_slice(&((hl + l4.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        h[6] = 0x40; // DF
        h[8] = ttl;
        h[9] = proto;
        h[12..16].copy_from_slice(&src.octets());
        h[16..20].copy_from_slice(&dst.octets());
        h[20..].copy_from_slice(options);
        let c = !ref_sum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(l4);
        h
    }

    pub fn eth(dst: [u8; 6], src: [u8; 6], ip: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(ip);
        f
    }

    /// A frame from C1 (or another container) towards the gateway.
    pub fn from_container(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
        eth(GW_MAC, C1_MAC, &ip(src, dst, proto, 64, &[], l4))
    }

    /// A frame arriving on the uplink.
    pub fn from_uplink(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
        eth(
            UPLINK_MAC,
            UPLINK_PEER_MAC,
            &ip(src, dst, proto, 57, &[], l4),
        )
    }

    /// The fields of a frame whose IPv4 header checksum verifies: its headers (read
    /// through `Deref`, as `seen.src`; `options` says whether the IPv4 header has any)
    /// and its transport header's.
    #[derive(Debug)]
    pub struct Seen {
        pub header: Ipv4Header,
        /// TCP/UDP ports; ICMP: (type << 8 | code, echo identifier).
        pub sport: u16,
        pub dport: u16,
        pub l4: Vec<u8>,
    }

    impl std::ops::Deref for Seen {
        type Target = Ipv4Header;

        fn deref(&self) -> &Ipv4Header {
            &self.header
        }
    }

    /// Parses a translated frame and checks every checksum from scratch: IPv4 header,
    /// TCP, UDP (unless 0), ICMP over the whole message. Panics on any mismatch.
    pub fn verify(frame: &[u8]) -> Seen {
        let ipb = &frame[14..];
        let hl = usize::from(ipb[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ipb[2], ipb[3]]));
        assert_eq!(ref_sum(&[&ipb[..hl]]), 0xffff, "IPv4 header checksum");
        let src = Ipv4Addr::new(ipb[12], ipb[13], ipb[14], ipb[15]);
        let dst = Ipv4Addr::new(ipb[16], ipb[17], ipb[18], ipb[19]);
        let proto = ipb[9];
        let l4 = &ipb[hl..total];
        let be = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
        let (sport, dport) = match proto {
            6 => {
                assert_eq!(
                    ref_sum(&[&pseudo(src, dst, 6, l4.len()), l4]),
                    0xffff,
                    "TCP checksum"
                );
                (be(0), be(2))
            }
            17 => {
                if be(6) != 0 {
                    let ul = usize::from(be(4));
                    assert_eq!(
                        ref_sum(&[&pseudo(src, dst, 17, ul), &l4[..ul]]),
                        0xffff,
                        "UDP checksum"
                    );
                }
                (be(0), be(2))
            }
            1 => {
                assert_eq!(ref_sum(&[l4]), 0xffff, "ICMP checksum");
                (be(0), be(4))
            }
            _ => (0, 0),
        };
        let mut eth_dst = [0; 6];
        eth_dst.copy_from_slice(&frame[0..6]);
        let mut eth_src = [0; 6];
        eth_src.copy_from_slice(&frame[6..12]);
        let header = Ipv4Header {
            eth_dst,
            eth_src,
            src,
            dst,
            proto,
            ttl: ipb[8],
            ident: u16::from_be_bytes([ipb[4], ipb[5]]),
            frag: u16::from_be_bytes([ipb[6], ipb[7]]),
            options: hl > 20,
        };
        Seen {
            header,
            sport,
            dport,
            l4: l4.to_vec(),
        }
    }
}
