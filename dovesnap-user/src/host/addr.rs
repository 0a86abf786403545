//! Typed addresses parsed once, the same way everywhere.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 address with a prefix length, `a.b.c.d/n` (an interface's address: the host
/// bits are kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// Text that is not an address with a prefix length: `a.b.c.d/n` (`n` at most 32) or
/// `a:b::c/n` (`n` at most 128), `n` plain digits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP address with a prefix length (a.b.c.d/n or a:b::c/n)")]
pub struct BadCidr(pub String);

/// `FromStr` and `Display` of an address-with-prefix type: `ADDRESS/N`, `N` at most
/// `$max`.
macro_rules! cidr_text {
    ($name:ident, $max:expr) => {
        impl FromStr for $name {
            type Err = BadCidr;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let (addr, prefix) = split_cidr(s, $max)?;
                Ok($name { addr, prefix })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}", self.addr, self.prefix)
            }
        }
    };
}

/// `ADDRESS/N`: the address as `A` parses it and `N` plain decimal digits (no sign,
/// no leading zero) at most `max_prefix`.
fn split_cidr<A: FromStr>(s: &str, max_prefix: u8) -> Result<(A, u8), BadCidr> {
    let bad = || BadCidr(s.to_string());
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let plain = !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit());
    if !plain || (len.len() > 1 && len.starts_with('0')) {
        return Err(bad());
    }
    let prefix = len
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= max_prefix)
        .ok_or_else(bad)?;
    Ok((addr.parse().map_err(|_| bad())?, prefix))
}

cidr_text!(Ipv4Cidr, 32);

/// An IPv4 subnet: network address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// The subnet of `addr/prefix`; host bits of `addr` are cleared. `None` when the
    /// prefix is longer than 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask(prefix)),
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask of the prefix (e.g. 255.255.255.0 for /24).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(Self::mask(self.prefix))
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl From<Ipv4Cidr> for Ipv4Net {
    /// The subnet an interface address lies in.
    fn from(c: Ipv4Cidr) -> Self {
        Ipv4Net::new(c.addr, c.prefix).expect("an Ipv4Cidr's prefix is at most 32")
    }
}

impl FromStr for Ipv4Net {
    type Err = BadCidr;

    /// `a.b.c.d/n`, parsed as [`Ipv4Cidr`] is; host bits are cleared.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<Ipv4Cidr>().map(Ipv4Net::from)
    }
}

/// An IPv6 address with a prefix length, `a:b::c/n`: an interface's address (host bits
/// kept) or, through [`Ipv6Cidr::network`], a subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv6Cidr {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl Ipv6Cidr {
    /// The subnet the address lies in: host bits cleared.
    pub fn network(self) -> Ipv6Cidr {
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        Ipv6Cidr {
            addr: Ipv6Addr::from(u128::from(self.addr) & mask),
            prefix: self.prefix,
        }
    }

    /// Whether `ip` lies in the subnet of this address.
    pub fn contains(self, ip: Ipv6Addr) -> bool {
        Ipv6Cidr {
            addr: ip,
            prefix: self.prefix,
        }
        .network()
            == self.network()
    }
}

cidr_text!(Ipv6Cidr, 128);

/// An Ethernet address, `aa:bb:cc:dd:ee:ff` in records, in Docker's API and in `ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

/// Text that is not six two-digit hex bytes separated by `:`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (aa:bb:cc:dd:ee:ff)")]
pub struct BadMac(pub String);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = BadMac;

    /// `aa:bb:cc:dd:ee:ff`, either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(Mac(mac)),
            Some(_) => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strictly() {
        let c: Ipv4Cidr = "10.1.2.3/24".parse().unwrap();
        assert_eq!((c.addr, c.prefix), (Ipv4Addr::new(10, 1, 2, 3), 24));
        assert_eq!(c.to_string(), "10.1.2.3/24");
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().prefix, 0);
        for bad in [
            "10.1.2.3",
            "10.1.2.3/",
            "10.1.2.3/+24",
            "10.1.2.3/33",
            "10.1.2.3/024",
            "10.1.2/24",
            "a/24",
            "10.1.2.3/2 4",
            "",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subnet_parsing_masks_and_validates() {
        let s: Ipv4Net = "10.231.1.7/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.231.1.0/24");
        assert!(s.contains(Ipv4Addr::new(10, 231, 1, 255)));
        assert!(!s.contains(Ipv4Addr::new(10, 231, 2, 1)));
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!("0.0.0.0/0".parse::<Ipv4Net>().unwrap().prefix(), 0);
        assert_eq!(
            "0.0.0.0/0".parse::<Ipv4Net>().unwrap().netmask(),
            Ipv4Addr::UNSPECIFIED
        );
        assert_eq!(
            "10.0.0.1/32".parse::<Ipv4Net>().unwrap().addr(),
            Ipv4Addr::new(10, 0, 0, 1)
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/+8",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = Mac([0x02, 0x42, 0x0a, 0x00, 0x00, 0xff]);
        assert_eq!(mac.to_string(), "02:42:0a:00:00:ff");
        assert_eq!("02:42:0A:00:00:FF".parse::<Mac>(), Ok(mac));
        for s in [
            "",
            "02:42:0a:00:00",
            "02:42:0a:00:00:ff:01",
            "2:42:0a:00:00:ff",
            "zz:42:0a:00:00:ff",
            "+2:42:0a:00:00:ff",
        ] {
            assert!(s.parse::<Mac>().is_err(), "{s}");
        }
    }

    #[test]
    fn ipv6_cidrs_parse_strictly() {
        let c: Ipv6Cidr = "fd00:d0e5:1::7/64".parse().unwrap();
        assert_eq!(c.to_string(), "fd00:d0e5:1::7/64");
        assert_eq!(c.network().to_string(), "fd00:d0e5:1::/64");
        assert_eq!("::/0".parse::<Ipv6Cidr>().unwrap().network().prefix, 0);
        assert!(c.contains("fd00:d0e5:1::1".parse().unwrap()));
        assert!(!c.contains("fd00:d0e5:2::1".parse().unwrap()));
        for bad in [
            "fd00::1",
            "fd00::1/",
            "fd00::1/129",
            "fd00::1/+64",
            "fd00::1/064",
            "10.0.0.1/8",
            "x/64",
        ] {
            assert!(bad.parse::<Ipv6Cidr>().is_err(), "{bad:?}");
        }
    }
}
