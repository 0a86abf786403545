//! Ethernet/IPv4 frames built byte by byte, for tests and the benchmark's generators.
//!
//! [`Ipv4Header`] writes the Ethernet and IPv4 headers (with a correct header checksum);
//! [`udp`], [`tcp`] and [`icmp`] make transport headers; [`set_l4_checksum`] fills the
//! TCP/UDP checksum of a built frame, completely or as a transmit offload leaves it;
//! [`verify`] checks a frame's checksums from scratch.

use std::net::Ipv4Addr;

/// Length of an Ethernet header.
pub const ETH_LEN: usize = 14;
/// Length of an IPv4 header without options.
pub const IP_LEN: usize = 20;
/// Where the transport header starts in a frame without IPv4 options.
pub const L4_AT: usize = ETH_LEN + IP_LEN;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// The IPv4 "don't fragment" flag, in the flags/fragment-offset field.
pub const DF: u16 = 0x4000;

/// The Ethernet and IPv4 headers of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Header {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub ident: u16,
    /// Flags and fragment offset (for example [`DF`], or `0x2000` for a first fragment).
    pub frag: u16,
    /// Four bytes of IPv4 options (NOP NOP NOP EOL) after the fixed header.
    pub options: bool,
}

impl Ipv4Header {
    /// From `src` to `dst` through `eth_dst`: TTL 64, identification 1, no flags, no
    /// options, source MAC 02:00:00:00:00:09.
    pub fn new(
        eth_dst: [u8; 6],
        src: impl Into<Ipv4Addr>,
        dst: impl Into<Ipv4Addr>,
        proto: u8,
    ) -> Self {
        Ipv4Header {
            eth_dst,
            eth_src: [0x02, 0, 0, 0, 0, 0x09],
            src: src.into(),
            dst: dst.into(),
            proto,
            ttl: 64,
            ident: 1,
            frag: 0,
            options: false,
        }
    }

    /// Length of both headers.
    pub fn header_len(&self) -> usize {
        ETH_LEN + self.ip_header_len()
    }

    fn ip_header_len(&self) -> usize {
        if self.options {
            IP_LEN + 4
        } else {
            IP_LEN
        }
    }

    /// The frame of these headers followed by `l4`.
    pub fn frame(&self, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0; self.header_len() + l4.len()];
        f[self.header_len()..].copy_from_slice(l4);
        self.write(&mut f);
        f
    }

    /// Writes both headers at the start of `frame`, the IPv4 total length covering the
    /// rest of it.
    pub fn write(&self, frame: &mut [u8]) {
        frame[0..6].copy_from_slice(&self.eth_dst);
        frame[6..12].copy_from_slice(&self.eth_src);
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let hl = self.ip_header_len();
        let total = (frame.len() - ETH_LEN) as u16;
        let ip = &mut frame[ETH_LEN..ETH_LEN + hl];
        ip.fill(0);
        ip[0] = 0x40 | (hl / 4) as u8;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&self.ident.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = self.proto;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        if self.options {
            ip[20..24].copy_from_slice(&[1, 1, 1, 0]);
        }
        let c = !fold(sum(ip, 0));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// A UDP header (length set, checksum 0) followed by `payload`.
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&src_port.to_be_bytes());
    v.extend_from_slice(&dst_port.to_be_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(payload);
    v
}

/// A TCP header with `flags` (no options, window 64240, checksum 0) followed by `payload`.
pub fn tcp(src_port: u16, dst_port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0; 20];
    write_tcp(&mut v, src_port, dst_port, flags);
    v.extend_from_slice(payload);
    v
}

/// Writes a TCP header (see [`tcp`]) into `l4[..20]`.
pub fn write_tcp(l4: &mut [u8], src_port: u16, dst_port: u16, flags: u8) {
    let h = &mut l4[..20];
    h.fill(0);
    h[0..2].copy_from_slice(&src_port.to_be_bytes());
    h[2..4].copy_from_slice(&dst_port.to_be_bytes());
    h[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    h[8..12].copy_from_slice(&0x2000_0000u32.to_be_bytes());
    h[12] = 0x50;
    h[13] = flags;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes());
}

/// Writes a UDP header (see [`udp`]) into `l4[..8]`, its length covering all of `l4`.
pub fn write_udp(l4: &mut [u8], src_port: u16, dst_port: u16) {
    let len = l4.len() as u16;
    l4[0..2].copy_from_slice(&src_port.to_be_bytes());
    l4[2..4].copy_from_slice(&dst_port.to_be_bytes());
    l4[4..6].copy_from_slice(&len.to_be_bytes());
    l4[6..8].fill(0);
}

/// An ICMP echo-shaped message: `kind`, code 0, checksum 0, identifier `ident`, sequence
/// 1, then `rest`.
pub fn icmp(kind: u8, ident: u16, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, 0, 0, 0];
    v.extend_from_slice(&ident.to_be_bytes());
    v.extend_from_slice(&[0, 1]);
    v.extend_from_slice(rest);
    v
}

/// How [`set_l4_checksum`] fills the TCP/UDP checksum field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Csum {
    /// Complete.
    Full,
    /// Only the pseudo-header sum, as a container's transmit offload leaves it.
    Partial,
}

/// Fills the TCP or UDP checksum of `frame` (an IPv4 frame without options); a complete
/// UDP checksum that comes out 0 is sent as 0xffff.
pub fn set_l4_checksum(frame: &mut [u8], csum: Csum) {
    let (src, dst, proto) = addresses(frame);
    let at = match proto {
        PROTO_UDP => 6,
        PROTO_TCP => 16,
        other => panic!("no TCP/UDP checksum in protocol {other}"),
    };
    let l4 = &mut frame[L4_AT..];
    l4[at..at + 2].fill(0);
    let ps = pseudo(src, dst, proto, l4.len());
    let c = match csum {
        Csum::Partial => fold(ps),
        Csum::Full => match !fold(sum(l4, ps)) {
            0 if proto == PROTO_UDP => 0xffff,
            c => c,
        },
    };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

fn addresses(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr, u8) {
    let ip = &frame[ETH_LEN..L4_AT];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    (src, dst, ip[9])
}

/// Checks a frame from scratch: IPv4 without options, header checksum, complete TCP/UDP
/// checksum (UDP: unless 0).
pub fn verify(frame: &[u8]) -> Result<(), String> {
    if frame.len() < L4_AT || frame[12..14] != [0x08, 0x00] || frame[ETH_LEN] != 0x45 {
        return Err("not an IPv4 frame without options".into());
    }
    let ip = &frame[ETH_LEN..L4_AT];
    if fold(sum(ip, 0)) != 0xffff {
        return Err("bad IPv4 header checksum".into());
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = frame
        .get(L4_AT..ETH_LEN + total)
        .ok_or("IPv4 total length beyond the frame")?;
    let (src, dst, proto) = addresses(frame);
    if proto == PROTO_UDP && l4.get(6..8) == Some(&[0, 0]) {
        return Ok(());
    }
    if fold(sum(l4, pseudo(src, dst, proto, l4.len()))) != 0xffff {
        return Err(format!("bad transport checksum (protocol {proto})"));
    }
    Ok(())
}

/// RFC 1071 sum of `data` added to `acc`, not folded.
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits (not complemented).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The sum of the TCP/UDP pseudo-header.
pub fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u64 {
    sum(
        &src.octets(),
        sum(&dst.octets(), u64::from(proto) + len as u64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_verify_and_corruption_is_caught() {
        let h = Ipv4Header::new([2; 6], [10, 0, 0, 1], [10, 0, 0, 2], PROTO_UDP);
        let mut f = h.frame(&udp(1000, 53, &[7; 33]));
        assert_eq!(f.len(), ETH_LEN + IP_LEN + 8 + 33);
        assert!(verify(&f).is_ok(), "UDP without checksum");
        set_l4_checksum(&mut f, Csum::Full);
        assert!(verify(&f).is_ok());
        f[L4_AT + 10] ^= 1;
        assert!(verify(&f).unwrap_err().contains("transport"));

        let h = Ipv4Header {
            proto: PROTO_TCP,
            ..h
        };
        let mut f = h.frame(&tcp(1000, 80, 0x02, &[1; 10]));
        set_l4_checksum(&mut f, Csum::Partial);
        assert!(verify(&f).is_err(), "a partial checksum is not complete");
        set_l4_checksum(&mut f, Csum::Full);
        assert!(verify(&f).is_ok());
        f[ETH_LEN + 8] = 1;
        assert!(verify(&f).unwrap_err().contains("header"));

        let with_options = Ipv4Header { options: true, ..h }.frame(&icmp(8, 7, &[]));
        assert_eq!(with_options[ETH_LEN], 0x46);
        assert!(verify(&with_options).is_err());
    }
}
