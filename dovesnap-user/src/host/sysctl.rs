//! Kernel settings under `/proc/sys`, read and parsed in one place.

use std::io;
use std::ops::RangeInclusive;
use std::path::Path;

/// The trimmed value of the setting at `name` (a path under `/proc/sys`, for example
/// `net/ipv4/ip_forward`).
pub fn read(name: &str) -> io::Result<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name)).map(|s| s.trim().to_owned())
}

/// `net.ipv4.ip_local_port_range`: the kernel's range for automatically chosen local
/// ports (which Docker's port allocator also uses). An unparsable value is an
/// `InvalidData` error naming it.
pub fn local_port_range() -> io::Result<RangeInclusive<u16>> {
    let text = read("net/ipv4/ip_local_port_range")?;
    parse_port_range(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse net.ipv4.ip_local_port_range `{text}`"),
        )
    })
}

/// `net.ipv4.ip_local_port_range`'s value: two port numbers (tab or space separated),
/// the first not above the second.
pub fn parse_port_range(s: &str) -> Option<RangeInclusive<u16>> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (it.next().is_none() && lo <= hi).then_some(lo..=hi)
}

/// `kernel.osrelease`'s version, `(major, minor)`; `None` when it cannot be read.
pub fn kernel_version() -> Option<(u32, u32)> {
    parse_kernel_version(&read("kernel/osrelease").ok()?)
}

/// The `(major, minor)` a kernel release string starts with (`6.18.0-1-amd64`).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.15.0"), Some((5, 15)));
        assert_eq!(parse_kernel_version("6.6"), Some((6, 6)));
        assert_eq!(parse_kernel_version("linux"), None);
        assert!(kernel_version().is_some());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("1024 65535"), Some(1024..=65535));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range("a b"), None);
        assert_eq!(parse_port_range("1 70000"), None);
    }

    #[test]
    fn this_hosts_range_reads() {
        let r = local_port_range().expect("ip_local_port_range");
        assert!(r.start() <= r.end());
    }
}
