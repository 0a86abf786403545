//! Types shared by the dovesnap XDP program and its userspace loader.
//!
//! This library is compiled twice: for `bpfel-unknown-none` as part of the eBPF binary
//! (`src/main.rs`), and for the host as a dependency of `dovesnap-user`. Everything the
//! kernel stores in a map is plain data with a fixed layout: `#[repr(C)]` structs with
//! explicit padding fields and integer tags, never `Option`, `bool` or implicit padding,
//! because the kernel and userspace exchange the raw bytes.
//!
//! Compatibility rule: the numbering below is part of the interface between the object
//! file and the loader, which are always built together, but keep it append-only anyway
//! so that counters read from an older program (e.g. a pinned one) keep their meaning.
#![cfg_attr(not(test), no_std)]

/// Name of the XDP program (the `#[xdp]` function) in the eBPF object.
pub const PROGRAM_NAME: &str = "dovesnap_xdp";

/// Name of the per-CPU `u64` array holding one counter per [`Counter`].
pub const STATS_MAP: &str = "STATS";

/// Number of entries in [`STATS_MAP`]: one per [`Counter`] variant.
pub const COUNTERS: u32 = 6;

/// Index of a counter in [`STATS_MAP`].
///
/// Every frame increments exactly one classification counter (`Ipv4`, `Arp`, `Ipv6`,
/// `Other` or `Malformed`) and then the counter of the verdict it received (`Pass`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// An IPv4 frame with at least a minimal, well-formed IPv4 header.
    Ipv4 = 0,
    /// An ARP frame with at least the fixed ARP header.
    Arp = 1,
    /// An IPv6 frame with at least the fixed IPv6 header.
    Ipv6 = 2,
    /// A well-formed Ethernet frame of any other EtherType (VLAN-tagged frames included).
    Other = 3,
    /// Shorter than an Ethernet header, or an IPv4/ARP/IPv6 header that is truncated or
    /// has the wrong version.
    Malformed = 4,
    /// Frames handed on to the kernel stack (`XDP_PASS`).
    Pass = 5,
}

impl Counter {
    /// Every counter, in map-index order.
    pub const ALL: [Counter; COUNTERS as usize] = [
        Counter::Ipv4,
        Counter::Arp,
        Counter::Ipv6,
        Counter::Other,
        Counter::Malformed,
        Counter::Pass,
    ];

    /// The counter's index in [`STATS_MAP`].
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// A short, stable, lower-case name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Ipv4 => "ipv4",
            Counter::Arp => "arp",
            Counter::Ipv6 => "ipv6",
            Counter::Other => "other",
            Counter::Malformed => "malformed",
            Counter::Pass => "pass",
        }
    }
}

// The map length, `ALL` and the discriminants must agree: `ALL[i].index() == i`.
const _: () = {
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i].index() as usize == i);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
