//! The dovesnap XDP program.
//!
//! For now it classifies every frame (IPv4, ARP, IPv6, other, malformed), counts the
//! classification and the verdict in the per-CPU [`STATS`] map and passes the frame on
//! to the kernel stack. The NAT fast path (AF_XDP steering through an `XskMap`) will
//! hook in after the classification.
//!
//! Only the `bpf` target gets the program: built for the host (as a workspace member
//! under `cargo build --workspace` or `cargo clippy --workspace`) this is an empty
//! binary, so that the host never sees a second panic handler or `no_main`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use core::mem;

    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::PerCpuArray,
        programs::XdpContext,
    };
    use dovesnap_ebpf::{Counter, COUNTERS};

    /// One `u64` per [`Counter`], per CPU; userspace sums the CPUs.
    #[map]
    static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_ARP: u16 = 0x0806;
    const ETH_P_IPV6: u16 = 0x86dd;

    /// An Ethernet II header. Byte arrays only, so any alignment is fine.
    #[repr(C)]
    struct EthHdr {
        _dst: [u8; 6],
        _src: [u8; 6],
        ether_type: [u8; 2],
    }

    /// The first byte of an IPv4 header (version, IHL) and the rest of its 20-byte
    /// minimum.
    #[repr(C)]
    struct Ipv4Hdr {
        version_ihl: u8,
        _rest: [u8; 19],
    }

    /// The fixed part of an ARP header (hardware/protocol types and sizes, opcode).
    #[repr(C)]
    struct ArpHdr {
        _fixed: [u8; 8],
    }

    /// The fixed 40-byte IPv6 header; the version is the top nibble of the first byte.
    #[repr(C)]
    struct Ipv6Hdr {
        version_tc: u8,
        _rest: [u8; 39],
    }

    /// A pointer to a `T` at `offset` into the frame, or `None` when the frame is too
    /// short. The explicit comparison against `data_end` is what the verifier needs to
    /// accept the later read.
    #[inline(always)]
    fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
        let start = ctx.data();
        let end = ctx.data_end();
        if start + offset + mem::size_of::<T>() > end {
            return None;
        }
        Some((start + offset) as *const T)
    }

    #[xdp]
    pub fn dovesnap_xdp(ctx: XdpContext) -> u32 {
        try_dovesnap_xdp(&ctx).unwrap_or(xdp_action::XDP_ABORTED)
    }

    fn try_dovesnap_xdp(ctx: &XdpContext) -> Result<u32, ()> {
        count(classify(ctx))?;
        count(Counter::Pass)?;
        Ok(xdp_action::XDP_PASS)
    }

    /// Sorts the frame into one classification counter. Truncated headers of a known
    /// protocol are `Malformed`, never an error: they are data, not a program fault.
    #[inline(always)]
    fn classify(ctx: &XdpContext) -> Counter {
        const L3: usize = mem::size_of::<EthHdr>();
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
            return Counter::Malformed;
        };
        // SAFETY: `ptr_at` checked that the whole header lies inside the frame.
        let ether_type = u16::from_be_bytes(unsafe { (*eth).ether_type });
        match ether_type {
            ETH_P_IP => match ptr_at::<Ipv4Hdr>(ctx, L3) {
                Some(ip) => {
                    // SAFETY: `ptr_at` checked that the 20-byte header lies inside the frame.
                    let version_ihl = unsafe { (*ip).version_ihl };
                    if version_ihl >> 4 == 4 && version_ihl & 0x0f >= 5 {
                        Counter::Ipv4
                    } else {
                        Counter::Malformed
                    }
                }
                None => Counter::Malformed,
            },
            ETH_P_ARP => match ptr_at::<ArpHdr>(ctx, L3) {
                Some(_) => Counter::Arp,
                None => Counter::Malformed,
            },
            ETH_P_IPV6 => match ptr_at::<Ipv6Hdr>(ctx, L3) {
                Some(ip) => {
                    // SAFETY: `ptr_at` checked that the 40-byte header lies inside the frame.
                    let version_tc = unsafe { (*ip).version_tc };
                    if version_tc >> 4 == 6 {
                        Counter::Ipv6
                    } else {
                        Counter::Malformed
                    }
                }
                None => Counter::Malformed,
            },
            _ => Counter::Other,
        }
    }

    /// Adds one to `counter` on this CPU. Fails only if the index is outside the map,
    /// which `COUNTERS` rules out.
    #[inline(always)]
    fn count(counter: Counter) -> Result<(), ()> {
        let slot = STATS.get_ptr_mut(counter.index()).ok_or(())?;
        // SAFETY: the pointer comes from a successful map lookup and points to this
        // CPU's slot of a per-CPU array; XDP runs with preemption disabled, so nothing
        // else writes it concurrently.
        unsafe { *slot += 1 };
        Ok(())
    }

    /// The kernel needs a license string; GPL-only helpers (e.g. `bpf_trace_printk`,
    /// perf-event output used by aya-log) would need a GPL-compatible one. None of the
    /// helpers used here (map lookup, and later `bpf_redirect_map`) are GPL-only, so the
    /// string states the crate's own license.
    #[link_section = "license"]
    #[no_mangle]
    static LICENSE: [u8; 11] = *b"Apache-2.0\0";

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // Unreachable in a verified program: the verifier rejects code that could panic
        // at run time, since there is nowhere to unwind to.
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
