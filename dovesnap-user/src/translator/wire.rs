//! Typed views over frame bytes, in the manner of smoltcp's `wire` module.
//!
//! Each view wraps a buffer `T: AsRef<[u8]>`; `new_checked` validates the lengths once, so
//! no accessor can panic afterwards. Setters exist only where `T: AsMut<[u8]>`. Field
//! offsets live in a private `field` module per header. Nothing here allocates.

use std::net::Ipv4Addr;

/// Why a view could not be made over a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("buffer too short for the header or the length it declares")]
    Truncated,
    #[error("IP version is not 4")]
    BadVersion,
    #[error("a header length field is out of range")]
    BadHeaderLength,
}

type Field = std::ops::Range<usize>;

fn be16(b: &[u8], f: Field) -> u16 {
    u16::from_be_bytes([b[f.start], b[f.start + 1]])
}

fn set_be16(b: &mut [u8], f: Field, v: u16) {
    b[f].copy_from_slice(&v.to_be_bytes());
}

/// Getters of big-endian 16-bit fields of a view, and their setters where the buffer is
/// mutable: `be16_fields!(View { getter / setter: field::RANGE, ... })`.
macro_rules! be16_fields {
    ($view:ident { $($(#[$doc:meta])* $get:ident / $set:ident : $field:expr),* $(,)? }) => {
        impl<T: AsRef<[u8]>> $view<T> {
            $(
                $(#[$doc])*
                pub fn $get(&self) -> u16 {
                    be16(self.buffer.as_ref(), $field)
                }
            )*
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $view<T> {
            $(
                pub fn $set(&mut self, v: u16) {
                    set_be16(self.buffer.as_mut(), $field, v);
                }
            )*
        }
    };
}

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;

/// An Ethernet II frame (no VLAN tag handling: a tagged frame shows its TPID as type).
#[derive(Debug, Clone)]
pub struct EthernetFrame<T> {
    buffer: T,
}

mod eth {
    use super::Field;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const HEADER_LEN: usize = 14;
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    pub const HEADER_LEN: usize = eth::HEADER_LEN;

    /// A view without checks; accessors may panic on a short buffer. For buffers already
    /// validated by [`EthernetFrame::new_checked`].
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < eth::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }

    pub fn dst_addr(&self) -> [u8; 6] {
        let mut a = [0; 6];
        a.copy_from_slice(&self.buffer.as_ref()[eth::DST]);
        a
    }

    pub fn src_addr(&self) -> [u8; 6] {
        let mut a = [0; 6];
        a.copy_from_slice(&self.buffer.as_ref()[eth::SRC]);
        a
    }

    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), eth::ETHERTYPE)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[eth::HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[eth::DST].copy_from_slice(&mac);
    }

    pub fn set_src_addr(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[eth::SRC].copy_from_slice(&mac);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[eth::HEADER_LEN..]
    }
}

/// An IPv4 packet. Options (IHL > 5) are carried through untouched.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T> {
    buffer: T,
}

mod ip {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLAGS_FRAG: Field = 6..8;
    pub const TTL: usize = 8;
    /// TTL and protocol share the 16-bit word at offset 8.
    pub const TTL_PROTO: Field = 8..10;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
    pub const MIN_HEADER_LEN: usize = 20;
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub const MIN_HEADER_LEN: usize = ip::MIN_HEADER_LEN;

    /// A view without checks; accessors may panic on a short buffer. For buffers already
    /// validated by [`Ipv4Packet::new_checked`].
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// A complete packet: header present, `header_len <= total_len <= buffer.len()`.
    /// Bytes past the total length (Ethernet padding) are allowed and ignored.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_checked_header(buffer)?;
        let len = p.buffer.as_ref().len();
        if usize::from(p.total_len()) > len {
            return Err(WireError::Truncated);
        }
        Ok(p)
    }

    /// A packet whose header is present but whose payload may be cut short, as the copy
    /// of the offending packet inside an ICMP error is (RFC 792: header + 8 bytes).
    pub fn new_checked_header(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < ip::MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[ip::VER_IHL] >> 4 != 4 {
            return Err(WireError::BadVersion);
        }
        let hl = usize::from(b[ip::VER_IHL] & 0x0f) * 4;
        if hl < ip::MIN_HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        if hl > b.len() {
            return Err(WireError::Truncated);
        }
        let p = Ipv4Packet { buffer };
        if usize::from(p.total_len()) < hl {
            return Err(WireError::BadHeaderLength);
        }
        Ok(p)
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[ip::VER_IHL] & 0x0f) * 4
    }

    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), ip::TOTAL_LEN)
    }

    /// The identification field: with source, destination and protocol, it names the
    /// datagram a fragment belongs to.
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), ip::IDENT)
    }

    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), ip::FLAGS_FRAG) & 0x2000 != 0
    }

    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), ip::FLAGS_FRAG) & 0x1fff
    }

    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[ip::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[ip::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), ip::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[ip::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[ip::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The header bytes, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        super::checksum::fold(super::checksum::sum(self.header(), 0)) == 0xffff
    }

    /// The payload up to the total length, or to the end of the buffer if that comes first
    /// (only possible for a view made with [`Ipv4Packet::new_checked_header`]).
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = usize::from(self.total_len()).min(b.len());
        &b[self.header_len()..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[ip::SRC].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[ip::DST].copy_from_slice(&a.octets());
    }

    pub fn set_checksum(&mut self, c: u16) {
        set_be16(self.buffer.as_mut(), ip::CHECKSUM, c);
    }

    /// Recomputes the header checksum from scratch (the translator only ever updates it).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = super::checksum::checksum(self.header());
        self.set_checksum(c);
    }

    /// Decrements the TTL and updates the header checksum incrementally. The caller
    /// checks `ttl() > 1` first.
    pub fn decrement_ttl(&mut self) {
        let b = self.buffer.as_mut();
        let old = be16(b, ip::TTL_PROTO);
        b[ip::TTL] = b[ip::TTL].wrapping_sub(1);
        let new = be16(b, ip::TTL_PROTO);
        let c = super::checksum::update16(be16(b, ip::CHECKSUM), old, new);
        set_be16(b, ip::CHECKSUM, c);
    }

    /// Rewrites the source (`dst == false`) or destination address, updating the header
    /// checksum incrementally. Returns the old address.
    pub fn rewrite_addr(&mut self, dst: bool, new: Ipv4Addr) -> Ipv4Addr {
        let old = if dst {
            self.dst_addr()
        } else {
            self.src_addr()
        };
        if dst {
            self.set_dst_addr(new);
        } else {
            self.set_src_addr(new);
        }
        let c = super::checksum::update(self.checksum(), &old.octets(), &new.octets());
        self.set_checksum(c);
        old
    }

    /// The payload, bounded as for [`Ipv4Packet::payload`].
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        let end = usize::from(self.total_len()).min(self.buffer.as_ref().len());
        &mut self.buffer.as_mut()[hl..end]
    }
}

/// TCP flag bits (in the low byte of the offset/flags word).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

mod tcp {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: Field = 16..18;
    pub const MIN_HEADER_LEN: usize = 20;
}

/// A TCP segment: the IPv4 payload.
#[derive(Debug, Clone)]
pub struct TcpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const CHECKSUM_OFFSET: usize = tcp::CHECKSUM.start;

    /// A view without checks; accessors may panic on a short buffer. For buffers already
    /// validated by [`TcpPacket::new_checked`].
    pub fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Header present and its data offset within `20..=len`.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < tcp::MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let off = usize::from(b[tcp::DATA_OFF] >> 4) * 4;
        if off < tcp::MIN_HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        if off > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(TcpPacket { buffer })
    }

    /// The flag bits, see [`tcp_flags`].
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[tcp::FLAGS]
    }
}

be16_fields!(TcpPacket {
    src_port / set_src_port: tcp::SRC_PORT,
    dst_port / set_dst_port: tcp::DST_PORT,
    checksum / set_checksum: tcp::CHECKSUM,
});

mod udp {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    pub const HEADER_LEN: usize = 8;
}

/// A UDP datagram: the IPv4 payload.
#[derive(Debug, Clone)]
pub struct UdpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const CHECKSUM_OFFSET: usize = udp::CHECKSUM.start;

    /// A view without checks; accessors may panic on a short buffer. For buffers already
    /// validated by [`UdpPacket::new_checked`].
    pub fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Header present and its length field within `8..=len` (bytes past it are ignored,
    /// as the kernel does).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < udp::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let l = usize::from(be16(b, udp::LENGTH));
        if l < udp::HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        if l > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(UdpPacket { buffer })
    }

    /// The first fragment of a datagram: the header present and its length at least 8;
    /// the datagram goes on past the buffer (in later fragments), so the length is not
    /// held against the buffer's.
    pub fn new_checked_first_fragment(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        if b.len() < udp::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if usize::from(be16(b, udp::LENGTH)) < udp::HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        Ok(UdpPacket { buffer })
    }

    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), udp::LENGTH)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == udp::HEADER_LEN as u16
    }
}

be16_fields!(UdpPacket {
    src_port / set_src_port: udp::SRC_PORT,
    dst_port / set_dst_port: udp::DST_PORT,
    checksum / set_checksum: udp::CHECKSUM,
});

/// ICMPv4 message types the translator knows.
pub mod icmp_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;

    /// The error messages that carry the offending packet's header.
    pub fn is_error(t: u8) -> bool {
        matches!(t, DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM)
    }
}

mod icmp {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const HEADER_LEN: usize = 8;
}

/// An ICMPv4 message: the 8-byte header (type, code, checksum, rest of header) and data.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    pub const HEADER_LEN: usize = icmp::HEADER_LEN;
    pub const CHECKSUM_OFFSET: usize = icmp::CHECKSUM.start;
    pub const ECHO_IDENT_OFFSET: usize = icmp::ECHO_IDENT.start;

    /// A view without checks; accessors may panic on a short buffer. For buffers already
    /// validated by [`IcmpPacket::new_checked`].
    pub fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < icmp::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[icmp::TYPE]
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[icmp::CODE]
    }

    /// Everything after the 8-byte header (for errors: the offending packet's copy).
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[icmp::HEADER_LEN..]
    }
}

be16_fields!(IcmpPacket {
    checksum / set_checksum: icmp::CHECKSUM,
    /// Echo request/reply identifier (bytes 4..6).
    echo_ident / set_echo_ident: icmp::ECHO_IDENT,
});

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[icmp::HEADER_LEN..]
    }
}

/// The first bytes of a transport header quoted inside an ICMP error: at least 8 bytes
/// (RFC 792), perhaps more. Ports (or the echo identifier) are always there; a checksum
/// only when the quote reaches it.
#[derive(Debug, Clone)]
pub struct QuotedL4<T> {
    buffer: T,
    protocol: u8,
}

/// IP protocol numbers.
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

impl<T: AsRef<[u8]>> QuotedL4<T> {
    pub const MIN_LEN: usize = 8;

    /// `protocol` must be TCP, UDP or ICMP; the buffer must hold 8 bytes.
    pub fn new_checked(buffer: T, protocol: u8) -> Result<Self, WireError> {
        if buffer.as_ref().len() < Self::MIN_LEN {
            return Err(WireError::Truncated);
        }
        if !matches!(protocol, ip_proto::TCP | ip_proto::UDP | ip_proto::ICMP) {
            return Err(WireError::BadHeaderLength);
        }
        Ok(QuotedL4 { buffer, protocol })
    }

    /// Where the source port (or echo identifier) sits.
    fn src_field(&self) -> Field {
        if self.protocol == ip_proto::ICMP {
            icmp::ECHO_IDENT
        } else {
            tcp::SRC_PORT
        }
    }

    /// TCP/UDP source port, or the ICMP echo identifier.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), self.src_field())
    }

    /// TCP/UDP destination port; 0 for ICMP.
    pub fn dst_port(&self) -> u16 {
        if self.protocol == ip_proto::ICMP {
            0
        } else {
            be16(self.buffer.as_ref(), tcp::DST_PORT)
        }
    }

    /// ICMP type of a quoted ICMP message.
    pub fn icmp_type(&self) -> u8 {
        self.buffer.as_ref()[icmp::TYPE]
    }

    /// The checksum field's range, if the quote holds it.
    pub fn checksum_field(&self) -> Option<Field> {
        let f = match self.protocol {
            ip_proto::TCP => tcp::CHECKSUM,
            ip_proto::UDP => udp::CHECKSUM,
            _ => icmp::CHECKSUM,
        };
        (f.end <= self.buffer.as_ref().len()).then_some(f)
    }

    pub fn checksum(&self) -> Option<u16> {
        self.checksum_field().map(|f| be16(self.buffer.as_ref(), f))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> QuotedL4<T> {
    /// Sets the source port (`dst == false`; the echo identifier for ICMP) or the
    /// destination port (TCP/UDP only).
    pub fn set_port(&mut self, dst: bool, p: u16) {
        let f = if dst { tcp::DST_PORT } else { self.src_field() };
        set_be16(self.buffer.as_mut(), f, p);
    }

    /// Sets the checksum if the quote holds it.
    pub fn set_checksum(&mut self, c: u16) {
        if let Some(f) = self.checksum_field() {
            set_be16(self.buffer.as_mut(), f, c);
        }
    }
}

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// An Ethernet/IPv4 ARP message (RFC 826) as a value, smoltcp's `Repr` style: [`emit`]
/// writes it with its Ethernet header, [`parse`] reads one back.
///
/// [`emit`]: ArpRepr::emit
/// [`parse`]: ArpRepr::parse
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// 1 request, 2 reply.
    pub operation: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

mod arp {
    use super::Field;
    /// Hardware type 1 (Ethernet), protocol IPv4, address lengths 6 and 4.
    pub const HEADER: [u8; 6] = [0, 1, 8, 0, 6, 4];
    pub const FIXED: Field = 14..20;
    pub const OPER: Field = 20..22;
    pub const SHA: Field = 22..28;
    pub const SPA: Field = 28..32;
    pub const THA: Field = 32..38;
    pub const TPA: Field = 38..42;
}

impl ArpRepr {
    /// Length of the frame [`ArpRepr::emit`] writes (Ethernet header and ARP message).
    pub const FRAME_LEN: usize = 42;
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;

    /// A gratuitous ARP: a request from `mac` for its own `ip`, so that neighbours
    /// replace the MAC they hold for `ip`.
    pub fn gratuitous(mac: [u8; 6], ip: Ipv4Addr) -> Self {
        ArpRepr {
            operation: Self::REQUEST,
            sender_mac: mac,
            sender_ip: ip,
            target_mac: [0; 6],
            target_ip: ip,
        }
    }

    /// Writes the message into `frame`, in an Ethernet frame from the sender's MAC to
    /// `eth_dst`.
    pub fn emit(&self, eth_dst: [u8; 6], frame: &mut [u8; Self::FRAME_LEN]) {
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_dst_addr(eth_dst);
        eth.set_src_addr(self.sender_mac);
        set_be16(frame, eth::ETHERTYPE, ETHERTYPE_ARP);
        frame[arp::FIXED].copy_from_slice(&arp::HEADER);
        set_be16(frame, arp::OPER, self.operation);
        frame[arp::SHA].copy_from_slice(&self.sender_mac);
        frame[arp::SPA].copy_from_slice(&self.sender_ip.octets());
        frame[arp::THA].copy_from_slice(&self.target_mac);
        frame[arp::TPA].copy_from_slice(&self.target_ip.octets());
    }

    /// The Ethernet/IPv4 ARP message of `frame`.
    pub fn parse(frame: &[u8]) -> Result<Self, WireError> {
        if frame.len() < Self::FRAME_LEN
            || be16(frame, eth::ETHERTYPE) != ETHERTYPE_ARP
            || frame[arp::FIXED] != arp::HEADER
        {
            return Err(WireError::Truncated);
        }
        let mac = |f: Field| <[u8; 6]>::try_from(&frame[f]).expect("6 bytes");
        let ip = |f: Field| Ipv4Addr::from(<[u8; 4]>::try_from(&frame[f]).expect("4 bytes"));
        Ok(ArpRepr {
            operation: be16(frame, arp::OPER),
            sender_mac: mac(arp::SHA),
            sender_ip: ip(arp::SPA),
            target_mac: mac(arp::THA),
            target_ip: ip(arp::TPA),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_checks() {
        let mut h = [0u8; 24];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&24u16.to_be_bytes());
        assert!(Ipv4Packet::new_checked(&h[..]).is_ok());
        assert_eq!(
            Ipv4Packet::new_checked(&h[..23]).unwrap_err(),
            WireError::Truncated
        );
        assert!(Ipv4Packet::new_checked_header(&h[..23]).is_ok());
        h[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).unwrap_err(),
            WireError::BadHeaderLength
        );
        h[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).unwrap_err(),
            WireError::BadVersion
        );
        h[0] = 0x46;
        h[2..4].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).unwrap_err(),
            WireError::BadHeaderLength
        );
        h[2..4].copy_from_slice(&24u16.to_be_bytes());
        let p = Ipv4Packet::new_checked(&h[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn ttl_and_addr_rewrite_keep_checksum() {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&20u16.to_be_bytes());
        h[8] = 64;
        h[9] = 17;
        h[12..16].copy_from_slice(&[10, 0, 0, 1]);
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let mut p = Ipv4Packet::new_checked(&mut h[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum());
        p.decrement_ttl();
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum());
        let old = p.rewrite_addr(false, Ipv4Addr::new(192, 0, 2, 200));
        assert_eq!(old, Ipv4Addr::new(10, 0, 0, 1));
        assert!(p.verify_checksum());
    }

    #[test]
    fn l4_views_reject_short_or_inconsistent() {
        assert!(TcpPacket::new_checked(&[0u8; 19][..]).is_err());
        let mut t = [0u8; 20];
        t[12] = 0x40; // data offset 16 bytes
        assert!(TcpPacket::new_checked(&t[..]).is_err());
        t[12] = 0x60; // 24 bytes > 20
        assert!(TcpPacket::new_checked(&t[..]).is_err());
        t[12] = 0x50;
        assert!(TcpPacket::new_checked(&t[..]).is_ok());

        let mut u = [0u8; 8];
        assert!(UdpPacket::new_checked(&u[..]).is_err()); // length 0
        u[5] = 9;
        assert!(UdpPacket::new_checked(&u[..]).is_err()); // length 9 > 8
        u[5] = 8;
        assert!(UdpPacket::new_checked(&u[..]).is_ok());
        // A first fragment: the length may exceed what this fragment holds.
        u[4..6].copy_from_slice(&65008u16.to_be_bytes());
        assert!(UdpPacket::new_checked(&u[..]).is_err());
        assert!(UdpPacket::new_checked_first_fragment(&u[..]).is_ok());
        u[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert!(UdpPacket::new_checked_first_fragment(&u[..]).is_err());
        assert!(UdpPacket::new_checked_first_fragment(&u[..7]).is_err());

        assert!(IcmpPacket::new_checked(&[0u8; 7][..]).is_err());
        assert!(QuotedL4::new_checked(&[0u8; 8][..], 6).is_ok());
        assert!(QuotedL4::new_checked(&[0u8; 8][..], 6)
            .unwrap()
            .checksum()
            .is_none());
        assert!(QuotedL4::new_checked(&[0u8; 8][..], 17)
            .unwrap()
            .checksum()
            .is_some());
        assert!(QuotedL4::new_checked(&[0u8; 8][..], 47).is_err());
    }

    #[test]
    fn arp_emits_and_parses() {
        let mac = [2, 0, 0, 0, 0, 7];
        let ip = Ipv4Addr::new(10, 9, 8, 7);
        let garp = ArpRepr::gratuitous(mac, ip);
        let mut frame = [0u8; ArpRepr::FRAME_LEN];
        garp.emit([0xff; 6], &mut frame);
        assert_eq!(
            &frame[..14],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 7, 8, 6]
        );
        assert_eq!(&frame[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&frame[28..32], &ip.octets());
        assert_eq!(&frame[32..38], &[0; 6]);
        assert_eq!(&frame[38..42], &ip.octets());
        assert_eq!(ArpRepr::parse(&frame), Ok(garp));
        assert!(ArpRepr::parse(&frame[..41]).is_err());
        frame[12] = 0x08;
        frame[13] = 0x00;
        assert!(ArpRepr::parse(&frame).is_err(), "IPv4 is no ARP");
    }
}
