//! Typed addresses parsed once, the same way everywhere.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 address with a prefix length, `a.b.c.d/n` (an interface's address: the host
/// bits are kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// Text that is not `a.b.c.d/n` with `n` at most 32 (one or two digits, no sign).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IPv4 address with a prefix length (a.b.c.d/n)")]
pub struct BadCidr(pub String);

impl FromStr for Ipv4Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCidr(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        if !(1..=2).contains(&len.len()) || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Ipv4Cidr {
            addr: addr.parse().map_err(|_| bad())?,
            prefix,
        })
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
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
}
