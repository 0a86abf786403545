//! The dovesnap XDP program: the nat-fast steering program.
//!
//! Every frame is classified (IPv4, ARP, IPv6, other, malformed) and counted in the
//! per-CPU [`STATS`] map. What happens next depends on the ingress interface's entry in
//! [`IFACES`]:
//!
//! - no entry: the frame passes to the kernel stack (dovesnap's flat and nat networks,
//!   and anything else the program is attached to);
//! - an endpoint (the host end of a nat-fast container's veth): routed IPv4 TCP/UDP/ICMP
//!   that the kernel would send out of the uplink goes to the endpoint's AF_XDP socket;
//! - the uplink: IPv4 addressed to the external address whose exact reverse tuple is one
//!   of the translator's dynamic sessions ([`SESSIONS`]; for an ICMP error, the quoted
//!   packet's), or whose port is published ([`PORTS`]), goes to the rx queue's socket.
//!
//! IPv4 fragments go where their datagram's first fragment went: the first one (it
//! carries the transport header) is judged like a whole packet and, when steered,
//! recorded in [`FRAGS`]; a later fragment is steered iff its datagram is there.
//!
//! Before either decision, a TCP/UDP frame of a flow in [`FLOWS`] (a session the
//! translator found established both ways and offloaded) is rewritten here exactly as
//! the translator would (addresses, port, TTL, checksums, MACs) and redirected through
//! [`DEVS`] to its output interface, never waking userspace; frames the translator must
//! see (TCP SYN/FIN/RST, partial or bad checksums, too big, TTL expiring) take the
//! normal path.
//!
//! Before both, a frame to (endpoint) or from (uplink) a far address, protocol and port
//! that one of the host's forward rules may drop ([`HOSTFW`], written by userspace from
//! `DOCKER-USER` and nftables forward chains; only looked up while [`HOSTFW_ON`] is set)
//! passes to the kernel, whose nft rules NAT it and whose filter applies the rule.
//!
//! Everything else passes, and so does a steered frame whose [`XSKS`] slot holds no
//! socket (`bpf_redirect_map` with `XDP_PASS` as its fallback): with the translator
//! gone, the kernel's own nat rules take over. Each frame counts one classification, one
//! verdict (`pass`/`redirect`) and, on a configured interface, one decision counter.
//!
//! The object also carries `dovesnap_sink`, the benchmark's counting sink (its own
//! `SINK` map; see `dovesnap_ebpf::SINK_PROGRAM_NAME`), which the plugin never loads.
//!
//! Only the `bpf` target gets the program: built for the host (as a workspace member
//! under `cargo build --workspace` or `cargo clippy --workspace`) this is an empty
//! binary, so that the host never sees a second panic handler or `no_main`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    mod tc;

    use core::mem;

    use aya_ebpf::{
        bindings::{
            bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
            BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        },
        helpers::bpf_ktime_get_ns,
        helpers::generated::bpf_fib_lookup,
        macros::{map, xdp},
        maps::{
            lpm_trie::Key, Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, XskMap,
        },
        programs::XdpContext,
        EbpfContext as _,
    };
    use dovesnap_ebpf::checksum::{fold, is_partial, update16, update_sums};
    use dovesnap_ebpf::{
        Counter, FlowAction, FlowKey, FragKey, HostFwMatch, IfaceConfig, PortKey, COUNTERS,
        FRAG_LIFETIME_NS, IFACE_ENDPOINT, IFACE_UPLINK, MAX_DEVS, MAX_FLOWS, MAX_FRAGS, MAX_HOSTFW,
        MAX_IFACES, MAX_PORTS, MAX_STEERED_SESSIONS, MAX_XSKS, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
        SINK_BYTES, SINK_FRAMES, SINK_PASSED, SINK_SLOTS, STATE_BYPASS,
    };

    /// One `u64` per [`Counter`], per CPU; userspace sums the CPUs.
    #[map]
    static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

    /// Ingress ifindex -> how to steer that interface's frames.
    #[map]
    static IFACES: HashMap<u32, IfaceConfig> = HashMap::with_max_entries(MAX_IFACES, 0);

    /// Published ports of the translator (value unused).
    #[map]
    static PORTS: HashMap<PortKey, u32> = HashMap::with_max_entries(MAX_PORTS, 0);

    /// The translator's dynamic sessions, keyed by their reply's tuple on the uplink
    /// (value unused). Not preallocated (`BPF_F_NO_PREALLOC`): sized by the loader from
    /// the session limit, it only takes memory for live sessions.
    #[map]
    static SESSIONS: HashMap<FlowKey, u32> =
        HashMap::with_max_entries(MAX_STEERED_SESSIONS, BPF_F_NO_PREALLOC);

    const BPF_F_NO_PREALLOC: u32 = 1;

    /// The translator's AF_XDP sockets.
    #[map]
    static XSKS: XskMap = XskMap::with_max_entries(MAX_XSKS, 0);

    /// Offloaded flows, one entry per direction, keyed as the frames arrive.
    #[map]
    static FLOWS: HashMap<FlowKey, FlowAction> = HashMap::with_max_entries(MAX_FLOWS, 0);

    /// The interfaces offloaded frames leave by, keyed by ifindex.
    #[map]
    static DEVS: DevMapHash = DevMapHash::with_max_entries(MAX_DEVS, 0);

    /// The data plane's state: [`STATE_BYPASS`] while the translator is down.
    #[map]
    static STATE: Array<u32> = Array::with_max_entries(1, 0);

    /// Fragmented datagrams whose first fragment was steered -> when (ns).
    #[map]
    static FRAGS: LruHashMap<FragKey, u64> = LruHashMap::with_max_entries(MAX_FRAGS, 0);

    /// Far prefixes (wire-order address) -> what of them a host forward rule may drop
    /// (see [`host_filtered`]).
    #[map]
    static HOSTFW: LpmTrie<u32, HostFwMatch> = LpmTrie::with_max_entries(MAX_HOSTFW, 0);

    /// Entry 0 non-zero: [`HOSTFW`] has entries and is consulted.
    #[map]
    static HOSTFW_ON: Array<u32> = Array::with_max_entries(1, 0);

    /// The benchmark sink's counters (see `SINK_FRAMES`, ...), per CPU.
    #[map]
    static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(SINK_SLOTS, 0);

    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_ARP: u16 = 0x0806;
    const ETH_P_IPV6: u16 = 0x86dd;
    const AF_INET: u8 = 2;

    /// Offset of the IPv4 header (after an untagged Ethernet header).
    const L3: usize = mem::size_of::<EthHdr>();
    /// Offset of the L4 header of an IPv4 packet without options (IHL 5).
    const L4: usize = L3 + mem::size_of::<Ipv4Hdr>();
    /// Offset of the IPv4 header embedded in an ICMP error (after the 8-byte ICMP header).
    const INNER_L3: usize = L4 + 8;
    /// Offset of the L4 header embedded in an ICMP error (inner IHL 5).
    const INNER_L4: usize = INNER_L3 + mem::size_of::<Ipv4Hdr>();

    const ICMP_ECHO_REPLY: u8 = 0;
    const ICMP_DEST_UNREACH: u8 = 3;
    const ICMP_ECHO_REQUEST: u8 = 8;
    const ICMP_TIME_EXCEEDED: u8 = 11;
    const ICMP_PARAMETER_PROBLEM: u8 = 12;

    /// An Ethernet II header. Byte arrays only, so any alignment is fine.
    #[repr(C)]
    struct EthHdr {
        dst: [u8; 6],
        src: [u8; 6],
        ether_type: [u8; 2],
    }

    /// A 20-byte IPv4 header. Byte arrays only: the frame gives no alignment guarantee.
    #[repr(C)]
    struct Ipv4Hdr {
        version_ihl: u8,
        tos: u8,
        tot_len: [u8; 2],
        id: [u8; 2],
        frag_off: [u8; 2],
        ttl: u8,
        proto: u8,
        check: [u8; 2],
        src: [u8; 4],
        dst: [u8; 4],
    }

    impl Ipv4Hdr {
        /// Version 4 with no options.
        #[inline(always)]
        fn is_plain(&self) -> bool {
            self.version_ihl == 0x45
        }

        /// Which part of its datagram the packet is.
        #[inline(always)]
        fn piece(&self) -> Piece {
            let f = u16::from_be_bytes(self.frag_off);
            if f & 0x1fff != 0 {
                Piece::Later
            } else if f & 0x2000 != 0 {
                Piece::First
            } else {
                Piece::Whole
            }
        }

        /// The [`FRAGS`] key of the packet's datagram arriving on `ifindex`.
        #[inline(always)]
        fn frag_key(&self, ifindex: u32) -> FragKey {
            FragKey {
                ifindex,
                src: u32::from_ne_bytes(self.src),
                dst: u32::from_ne_bytes(self.dst),
                id: u16::from_ne_bytes(self.id),
                proto: self.proto,
                _pad: 0,
            }
        }
    }

    /// Where a packet stands in its datagram (RFC 791).
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Piece {
        /// Not fragmented.
        Whole,
        /// Offset 0, more fragments: carries the transport header.
        First,
        /// A non-zero offset: payload bytes only.
        Later,
    }

    /// The decision counters of one kind of interface, for the steps both share.
    struct Side {
        /// Arrived on an endpoint (offloaded frames go out of the uplink).
        outbound: bool,
        redirect: Counter,
        fragment: Counter,
        fragment_kernel: Counter,
        no_socket: Counter,
        offloaded: Counter,
    }

    const ENDPOINT: Side = Side {
        outbound: true,
        redirect: Counter::EndpointRedirect,
        fragment: Counter::EndpointFragment,
        fragment_kernel: Counter::EndpointFragmentKernel,
        no_socket: Counter::EndpointQueueWithoutSocket,
        offloaded: Counter::OffloadOutbound,
    };

    const UPLINK: Side = Side {
        outbound: false,
        redirect: Counter::UplinkRedirect,
        fragment: Counter::UplinkFragment,
        fragment_kernel: Counter::UplinkFragmentKernel,
        no_socket: Counter::UplinkQueueWithoutSocket,
        offloaded: Counter::OffloadInbound,
    };

    /// What both sides do before their own checks: a later fragment goes where its
    /// datagram's first fragment went; a whole packet of an offloaded flow is rewritten
    /// here. `None`: a first fragment or a whole packet that takes the side's ordinary
    /// path. Fragments never take an offloaded flow: only the translator knows which
    /// datagram a later one belongs to.
    #[inline(always)]
    fn later_or_offloaded(
        ctx: &XdpContext,
        cfg: &IfaceConfig,
        ip: &Ipv4Hdr,
        piece: Piece,
        side: &Side,
    ) -> Option<Steer> {
        match piece {
            Piece::Later if datagram_steered(ctx, ip) => {
                Some(to_queue(ctx, cfg, side.fragment, side.no_socket))
            }
            Piece::Later => Some(Steer::Pass(side.fragment_kernel)),
            Piece::First => None,
            Piece::Whole => {
                offload(ctx, side.outbound).map(|out| Steer::Offloaded(side.offloaded, out))
            }
        }
    }

    /// A frame that passed every check of its side goes to the socket of its rx queue;
    /// a steered first fragment records its datagram, so that the later ones follow.
    #[inline(always)]
    fn to_translator(
        ctx: &XdpContext,
        cfg: &IfaceConfig,
        ip: &Ipv4Hdr,
        piece: Piece,
        side: &Side,
    ) -> Steer {
        if piece != Piece::First {
            return to_queue(ctx, cfg, side.redirect, side.no_socket);
        }
        let steer = to_queue(ctx, cfg, side.fragment, side.no_socket);
        if matches!(steer, Steer::Redirect(..)) {
            record_datagram(ctx, ip);
        }
        steer
    }

    /// Steers to the socket of the rx queue the frame arrived on (`decision`), or passes
    /// it (`no_socket`) when that queue has none.
    #[inline(always)]
    fn to_queue(
        ctx: &XdpContext,
        cfg: &IfaceConfig,
        decision: Counter,
        no_socket: Counter,
    ) -> Steer {
        let queue = ctx.rx_queue_index();
        if queue >= cfg.xsk_slots {
            return Steer::Pass(no_socket);
        }
        Steer::Redirect(decision, cfg.xsk_slot.wrapping_add(queue))
    }

    /// Records that a first fragment is steered: its datagram's later fragments follow.
    #[inline(always)]
    fn record_datagram(ctx: &XdpContext, ip: &Ipv4Hdr) {
        let key = ip.frag_key(ctx.ingress_ifindex() as u32);
        // A full map evicts its least recently used entry; a failed insert (no memory)
        // leaves the later fragments to the kernel, which then drops the datagram.
        let _ = FRAGS.insert(&key, &unsafe { bpf_ktime_get_ns() }, 0);
    }

    /// Whether a later fragment's datagram had its first fragment steered (within the
    /// kernel's reassembly timeout).
    #[inline(always)]
    fn datagram_steered(ctx: &XdpContext, ip: &Ipv4Hdr) -> bool {
        let key = ip.frag_key(ctx.ingress_ifindex() as u32);
        // SAFETY: the value is copied out at once.
        match unsafe { FRAGS.get(&key) } {
            Some(at) => unsafe { bpf_ktime_get_ns() }.wrapping_sub(*at) < FRAG_LIFETIME_NS,
            None => false,
        }
    }

    /// Whether a host forward rule may drop a frame of `proto` to or from far address
    /// `far` (wire order) with far port `port` (wire bytes; `None` for ICMP): such a
    /// frame is left to the kernel, where the rule applies. A single array load while
    /// the host has no such rule.
    #[inline(always)]
    fn host_filtered(proto: u8, far: u32, port: Option<[u8; 2]>) -> bool {
        if !HOSTFW_ON.get(0).is_some_and(|on| *on != 0) {
            return false;
        }
        let key = Key::new(32, far);
        match HOSTFW.get(&key) {
            Some(m) => m.covers(proto, port.map(u16::from_be_bytes)),
            None => false,
        }
    }

    /// The far port of a whole TCP/UDP packet or first fragment: the destination port
    /// going out (`outbound`), the source port coming in. `None` for ICMP, or when the
    /// header is not there (then every port counts).
    #[inline(always)]
    fn far_port(ctx: &impl Frame, proto: u8, outbound: bool) -> Option<[u8; 2]> {
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return None;
        }
        let ports = ptr_at::<Ports>(ctx, L4)?;
        Some(if outbound { ports.dst } else { ports.src })
    }

    /// The first 4 bytes of a TCP or UDP header.
    #[repr(C)]
    struct Ports {
        src: [u8; 2],
        dst: [u8; 2],
    }

    /// The fixed 20-byte TCP header.
    #[repr(C)]
    struct TcpHdr {
        ports: Ports,
        _seq: [u8; 4],
        _ack: [u8; 4],
        data_off: u8,
        flags: u8,
        _window: [u8; 2],
        check: [u8; 2],
        _urgent: [u8; 2],
    }

    /// The 8-byte UDP header.
    #[repr(C)]
    struct UdpHdr {
        ports: Ports,
        len: [u8; 2],
        check: [u8; 2],
    }

    const TCP_FIN: u8 = 0x01;
    const TCP_SYN: u8 = 0x02;
    const TCP_RST: u8 = 0x04;

    /// The 8-byte ICMP header; `id` is the echo identifier for echo messages.
    #[repr(C)]
    struct IcmpHdr {
        kind: u8,
        _code: u8,
        _check: [u8; 2],
        id: [u8; 2],
        _seq: [u8; 2],
    }

    /// The fixed part of an ARP header (hardware/protocol types and sizes, opcode).
    #[repr(C)]
    struct ArpHdr {
        _fixed: [u8; 8],
    }

    /// The bytes of a packet the program may read directly: an XDP frame, or the linear
    /// part of an skb (tc). Both contexts' pointers are re-read at every use, so a helper
    /// that moves the skb's data (`bpf_skb_pull_data`, the checksum and store helpers)
    /// never leaves a stale one behind.
    trait Frame {
        fn start(&self) -> usize;
        fn end(&self) -> usize;
    }

    /// Both contexts name the bounds alike.
    macro_rules! frame_of {
        ($($context:ty),+) => {$(
            impl Frame for $context {
                #[inline(always)]
                fn start(&self) -> usize {
                    self.data()
                }
                #[inline(always)]
                fn end(&self) -> usize {
                    self.data_end()
                }
            }
        )+};
    }
    frame_of!(XdpContext, aya_ebpf::programs::TcContext);

    /// The fixed 40-byte IPv6 header; the version is the top nibble of the first byte.
    #[repr(C)]
    struct Ipv6Hdr {
        version_tc: u8,
        _rest: [u8; 39],
    }

    /// A reference to a `T` at `offset` into the frame, or `None` when the frame is too
    /// short. The explicit comparison against `data_end` is what the verifier needs to
    /// accept the later read. Only used with `T` made of bytes and byte arrays
    /// (alignment 1), so any offset is aligned.
    #[inline(always)]
    fn ptr_at<T>(ctx: &impl Frame, offset: usize) -> Option<&T> {
        let start = ctx.start();
        let end = ctx.end();
        if start + offset + mem::size_of::<T>() > end {
            return None;
        }
        // SAFETY: the bytes `offset..offset + size_of::<T>()` lie inside the frame, which
        // the kernel keeps valid for the program's run; every `T` used here has alignment
        // 1 and no invalid bit patterns.
        Some(unsafe { &*((start + offset) as *const T) })
    }

    /// A mutable `T` at `offset` into the frame, as [`ptr_at`].
    #[inline(always)]
    fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<&mut T> {
        let start = ctx.data();
        let end = ctx.data_end();
        if start + offset + mem::size_of::<T>() > end {
            return None;
        }
        // SAFETY: as in `ptr_at`; the frame is writable in XDP, and no other reference to
        // these bytes is alive while the returned one is used (callers re-borrow per
        // header and finish with one before taking the next).
        Some(unsafe { &mut *((start + offset) as *mut T) })
    }

    /// What to do with a frame on a configured interface, and the decision counter.
    enum Steer {
        Pass(Counter),
        Redirect(Counter, u32),
        /// Rewritten in place for an offloaded flow: redirect to this ifindex.
        Offloaded(Counter, u32),
    }

    #[xdp]
    pub fn dovesnap_xdp(ctx: XdpContext) -> u32 {
        try_dovesnap_xdp(&ctx).unwrap_or(xdp_action::XDP_ABORTED)
    }

    fn try_dovesnap_xdp(ctx: &XdpContext) -> Result<u32, ()> {
        let class = classify(ctx);
        count(class)?;
        let ifindex = ctx.ingress_ifindex() as u32;
        // SAFETY: the value is copied out at once; a concurrent update from userspace can
        // at worst mix old and new fields of one entry for this frame, which only changes
        // which way this frame goes.
        let cfg = match unsafe { IFACES.get(&ifindex) } {
            Some(cfg) => *cfg,
            None => return pass(),
        };
        // The translator is down: everything takes the kernel's path, whose conntrack
        // holds the sessions the translator handed over.
        if STATE.get(0).is_some_and(|s| s & STATE_BYPASS != 0) {
            count(Counter::Bypassed)?;
            return pass();
        }
        let steer = match cfg.kind {
            IFACE_ENDPOINT => endpoint(ctx, &cfg, class),
            IFACE_UPLINK => uplink(ctx, &cfg, class),
            _ => return pass(),
        };
        match steer {
            Steer::Pass(decision) => {
                count(decision)?;
                pass()
            }
            Steer::Offloaded(decision, ifindex) => match DEVS.redirect(ifindex, 0) {
                Ok(action) => {
                    count(decision)?;
                    count(Counter::Redirect)?;
                    Ok(action)
                }
                Err(_) => {
                    // Already rewritten: passing it would hand the kernel a translated
                    // frame. Userspace removes flows before their device, so this is a
                    // race at teardown only.
                    count(decision)?;
                    count(Counter::OffloadRedirectFailed)?;
                    Ok(xdp_action::XDP_DROP)
                }
            },
            Steer::Redirect(decision, slot) => {
                count(decision)?;
                // XDP_PASS in the flags' low bits is what the helper returns when the
                // slot has no socket: fail open to the kernel.
                match XSKS.redirect(slot, xdp_action::XDP_PASS as u64) {
                    Ok(action) => {
                        count(Counter::Redirect)?;
                        Ok(action)
                    }
                    Err(_) => {
                        count(Counter::XskMissing)?;
                        pass()
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn pass() -> Result<u32, ()> {
        count(Counter::Pass)?;
        Ok(xdp_action::XDP_PASS)
    }

    /// Why an endpoint's frame is not routed NAT traffic, in the order both the XDP and
    /// the tc endpoint programs check it; each names its counter per program.
    #[derive(Clone, Copy)]
    enum Check {
        NotToGateway,
        OtherProtocol,
        Options,
        SpoofedSource,
        TtlExpiring,
        InSubnet,
        HostFirewall,
    }

    impl Check {
        #[inline(always)]
        fn xdp(self) -> Counter {
            match self {
                Check::NotToGateway => Counter::EndpointNotToGateway,
                Check::OtherProtocol => Counter::EndpointOtherProtocol,
                Check::Options => Counter::EndpointOptions,
                Check::SpoofedSource => Counter::EndpointSpoofedSource,
                Check::TtlExpiring => Counter::EndpointTtlExpiring,
                Check::InSubnet => Counter::EndpointInSubnet,
                Check::HostFirewall => Counter::EndpointHostFirewall,
            }
        }

        #[inline(always)]
        fn tc(self) -> Counter {
            match self {
                Check::NotToGateway => Counter::TcDeclineNotToGateway,
                Check::OtherProtocol => Counter::TcDeclineOtherProtocol,
                Check::Options => Counter::TcDeclineOptions,
                Check::SpoofedSource => Counter::TcDeclineSpoofedSource,
                Check::TtlExpiring => Counter::TcDeclineTtlExpiring,
                Check::InSubnet => Counter::TcDeclineInSubnet,
                Check::HostFirewall => Counter::TcDeclineHostFirewall,
            }
        }
    }

    /// The checks every endpoint frame passes before it is NAT traffic: to the gateway
    /// MAC, plain IPv4 (`class` is the frame's classification), TCP/UDP/ICMP, the
    /// container's source, TTL > 1, not in the subnet, not covered by a host forward rule
    /// (a later fragment follows its first fragment instead). Returns the IPv4 header.
    #[inline(always)]
    fn endpoint_checks<'a>(
        ctx: &'a impl Frame,
        cfg: &IfaceConfig,
        class: Counter,
    ) -> Result<&'a Ipv4Hdr, Check> {
        let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Check::OtherProtocol)?;
        if eth.dst != cfg.gateway_mac {
            return Err(Check::NotToGateway);
        }
        if !matches!(class, Counter::Ipv4) {
            return Err(Check::OtherProtocol);
        }
        let ip = ptr_at::<Ipv4Hdr>(ctx, L3).ok_or(Check::OtherProtocol)?;
        if !ip.is_plain() {
            return Err(Check::Options);
        }
        if !matches!(ip.proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP) {
            return Err(Check::OtherProtocol);
        }
        let dst = u32::from_ne_bytes(ip.dst);
        if u32::from_ne_bytes(ip.src) != cfg.addr {
            return Err(Check::SpoofedSource);
        }
        if ip.ttl <= 1 {
            return Err(Check::TtlExpiring);
        }
        if cfg.in_subnet(dst) {
            return Err(Check::InSubnet);
        }
        // The administrator's forward rules apply on the kernel's path.
        if ip.piece() != Piece::Later && host_filtered(ip.proto, dst, far_port(ctx, ip.proto, true))
        {
            return Err(Check::HostFirewall);
        }
        Ok(ip)
    }

    /// Frames from a nat-fast container: routed traffic to the outside goes to the
    /// translator, the rest (ARP, in-subnet, local, expiring, oversized, odd) to the
    /// kernel.
    #[inline(always)]
    fn endpoint(ctx: &XdpContext, cfg: &IfaceConfig, class: Counter) -> Steer {
        let ip = match endpoint_checks(ctx, cfg, class) {
            Ok(ip) => ip,
            Err(check) => return Steer::Pass(check.xdp()),
        };
        let piece = ip.piece();
        // A later fragment: its first fragment went through the checks below.
        if let Some(steer) = later_or_offloaded(ctx, cfg, ip, piece, &ENDPOINT) {
            return steer;
        }

        // Ask the kernel where it would route the packet if it arrived on the gateway's
        // interface: only what leaves through the uplink is NAT traffic.
        match route(ctx.as_ptr(), cfg, ip, u16::from_be_bytes(ip.tot_len)) {
            Route::Uplink => to_translator(ctx, cfg, ip, piece, &ENDPOINT),
            Route::TooBig => Steer::Pass(Counter::EndpointTooBig),
            Route::NotForwarded => Steer::Pass(Counter::EndpointNotForwarded),
            Route::NotViaUplink => Steer::Pass(Counter::EndpointNotViaUplink),
        }
    }

    /// Where the kernel routes an endpoint's packet.
    enum Route {
        /// Forwarded out of the endpoint's uplink (neighbour resolved or not).
        Uplink,
        /// Larger than the output MTU (`tot_len` given non-zero, or an skb the kernel
        /// cannot forward whole).
        TooBig,
        /// Not forwarded: local destination, no route, forwarding off, ...
        NotForwarded,
        /// Forwarded out of another interface.
        NotViaUplink,
    }

    /// Asks the kernel where it would route `ip` if it arrived on the gateway's interface
    /// (`cfg.fib_ifindex`). `ctx` is the program's context (`xdp_md` or `__sk_buff`);
    /// `tot_len` 0 makes the kernel check the MTU on the skb itself, GSO-aware (tc).
    #[inline(always)]
    fn route(ctx: *mut core::ffi::c_void, cfg: &IfaceConfig, ip: &Ipv4Hdr, tot_len: u16) -> Route {
        // SAFETY: `bpf_fib_lookup` is plain data (integers and unions of integers), for
        // which all-zero bytes are a valid value.
        let mut params: FibParams = unsafe { mem::zeroed() };
        params.family = AF_INET;
        params.l4_protocol = ip.proto;
        params.ifindex = cfg.fib_ifindex;
        params.__bindgen_anon_1.tot_len = tot_len;
        params.__bindgen_anon_2.tos = ip.tos;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
        // SAFETY: `ctx` is the program's own context; `params` is a valid, writable
        // struct of exactly the size passed; flags 0 is a plain input-device lookup.
        let ret =
            unsafe { bpf_fib_lookup(ctx, &mut params, mem::size_of::<FibParams>() as i32, 0) };
        match ret as u32 {
            BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH => {}
            BPF_FIB_LKUP_RET_FRAG_NEEDED => return Route::TooBig,
            _ => return Route::NotForwarded,
        }
        if params.ifindex != cfg.uplink_ifindex {
            return Route::NotViaUplink;
        }
        Route::Uplink
    }

    /// Frames arriving on the uplink: the translator's return traffic goes to the socket
    /// of the rx queue it arrived on; the host's own traffic is untouched.
    #[inline(always)]
    fn uplink(ctx: &XdpContext, cfg: &IfaceConfig, class: Counter) -> Steer {
        if !matches!(class, Counter::Ipv4) {
            return Steer::Pass(Counter::UplinkNotForUs);
        }
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, L3) else {
            return Steer::Pass(Counter::UplinkNotForUs);
        };
        if u32::from_ne_bytes(ip.dst) != cfg.addr {
            return Steer::Pass(Counter::UplinkNotForUs);
        }
        if !ip.is_plain() {
            return Steer::Pass(Counter::UplinkOptions);
        }
        let piece = ip.piece();
        let remote = u32::from_ne_bytes(ip.src);
        if piece != Piece::Later && host_filtered(ip.proto, remote, far_port(ctx, ip.proto, false))
        {
            return Steer::Pass(Counter::UplinkHostFirewall);
        }
        if let Some(steer) = later_or_offloaded(ctx, cfg, ip, piece, &UPLINK) {
            return steer;
        }
        let ours = match ip.proto {
            PROTO_TCP | PROTO_UDP => match ptr_at::<Ports>(ctx, L4) {
                Some(ports) => owns_flow(cfg, ip.proto, ports.dst, remote, ports.src),
                None => false,
            },
            PROTO_ICMP => owns_icmp(ctx, cfg, remote),
            _ => false,
        };
        if !ours {
            return Steer::Pass(Counter::UplinkNoSession);
        }
        to_translator(ctx, cfg, ip, piece, &UPLINK)
    }

    /// Whether a frame to external `port` (or ICMP echo identifier) from `remote`:`rport`
    /// (wire bytes; `[0, 0]` for ICMP) is the translator's: the exact reverse tuple of one
    /// of its dynamic sessions, or a published port. Any other frame to a port of the
    /// translator's range is left to the kernel (a host socket's, another NAT's).
    #[inline(always)]
    fn owns_flow(cfg: &IfaceConfig, proto: u8, port: [u8; 2], remote: u32, rport: [u8; 2]) -> bool {
        let key = FlowKey {
            ifindex: 0,
            src: remote,
            dst: cfg.addr,
            sport: u16::from_ne_bytes(rport),
            dport: u16::from_ne_bytes(port),
            proto,
            _pad: [0; 3],
        };
        // SAFETY: only the presence of the key is used; the value is not read.
        if unsafe { SESSIONS.get(&key) }.is_some() {
            return true;
        }
        proto != PROTO_ICMP && owns_key(cfg, u16::from_be_bytes(port), proto)
    }

    /// Whether a TCP/UDP port (host order) on the external address is published by the
    /// translator.
    #[inline(always)]
    fn owns_key(cfg: &IfaceConfig, port: u16, proto: u8) -> bool {
        let key = PortKey {
            addr: cfg.addr,
            port: port.to_be(),
            proto,
            _pad: 0,
        };
        // SAFETY: only the presence of the key is used; the value is not read.
        unsafe { PORTS.get(&key) }.is_some()
    }

    /// ICMP to the external address from `remote` that belongs to the translator: echo
    /// replies of one of its echo sessions, and errors about a packet it sent (matched
    /// by the quoted packet's tuple, whoever reports the error).
    #[inline(always)]
    fn owns_icmp(ctx: &impl Frame, cfg: &IfaceConfig, remote: u32) -> bool {
        let Some(icmp) = ptr_at::<IcmpHdr>(ctx, L4) else {
            return false;
        };
        match icmp.kind {
            ICMP_ECHO_REPLY => owns_flow(cfg, PROTO_ICMP, icmp.id, remote, [0, 0]),
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, INNER_L3) else {
                    return false;
                };
                if !inner.is_plain() || u32::from_ne_bytes(inner.src) != cfg.addr {
                    return false;
                }
                let to = u32::from_ne_bytes(inner.dst);
                match inner.proto {
                    PROTO_TCP | PROTO_UDP => match ptr_at::<Ports>(ctx, INNER_L4) {
                        Some(ports) => owns_flow(cfg, inner.proto, ports.src, to, ports.dst),
                        None => false,
                    },
                    PROTO_ICMP => match ptr_at::<IcmpHdr>(ctx, INNER_L4) {
                        Some(echo) if echo.kind == ICMP_ECHO_REQUEST => {
                            owns_flow(cfg, PROTO_ICMP, echo.id, to, [0, 0])
                        }
                        _ => false,
                    },
                    _ => false,
                }
            }
            _ => false,
        }
    }

    /// The unfolded sum of an address's two 16-bit words.
    #[inline(always)]
    fn sum_addr(a: [u8; 4]) -> u32 {
        u32::from(u16::from_be_bytes([a[0], a[1]])) + u32::from(u16::from_be_bytes([a[2], a[3]]))
    }

    /// RFC 1624 equation 3 for an address, as `translator::checksum::update` does it.
    #[inline(always)]
    fn update_addr(hc: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
        update_sums(hc, sum_addr(old), sum_addr(new))
    }

    /// An offloaded flow's frame, rewritten in place: returns the ifindex to redirect to.
    /// `None` (frame untouched) when the frame has no offloaded flow, or needs the
    /// translator (counted `OffloadSlowPath`). The caller checked: IPv4, IHL 5, not a
    /// fragment; on an endpoint also the source, TTL and subnet. `outbound` rewrites the
    /// source address and port (container to uplink), else the destination.
    #[inline(always)]
    fn offload(ctx: &XdpContext, outbound: bool) -> Option<u32> {
        let ip = ptr_at::<Ipv4Hdr>(ctx, L3)?;
        let proto = ip.proto;
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return None;
        }
        let ports = ptr_at::<Ports>(ctx, L4)?;
        let key = FlowKey {
            ifindex: ctx.ingress_ifindex() as u32,
            src: u32::from_ne_bytes(ip.src),
            dst: u32::from_ne_bytes(ip.dst),
            sport: u16::from_ne_bytes(ports.src),
            dport: u16::from_ne_bytes(ports.dst),
            proto,
            _pad: [0; 3],
        };
        let flow = FLOWS.get_ptr_mut(&key)?;
        // SAFETY: a pointer from a successful lookup stays valid for this run (RCU); the
        // fields read here are written once by userspace before the entry is inserted.
        let act = unsafe { *flow };
        match rewrite(ctx, &act, outbound) {
            Some(()) => {
                // SAFETY: as above. Plain stores: the eBPF target has no atomic
                // read-modify-write in Rust's core, so two CPUs forwarding the same flow at
                // the same instant may lose a count (the counters are for reporting);
                // `last_seen` is one aligned 8-byte store either way.
                unsafe {
                    let len = (ctx.data_end() - ctx.data()) as u64;
                    core::ptr::write_volatile(&mut (*flow).last_seen, bpf_ktime_get_ns());
                    let packets = core::ptr::read_volatile(&(*flow).packets);
                    core::ptr::write_volatile(&mut (*flow).packets, packets + 1);
                    let bytes = core::ptr::read_volatile(&(*flow).bytes);
                    core::ptr::write_volatile(&mut (*flow).bytes, bytes + len);
                }
                Some(act.out_ifindex)
            }
            None => {
                let _ = count(Counter::OffloadSlowPath);
                None
            }
        }
    }

    /// Checks that the translator would forward the frame unchanged in structure, then
    /// applies its rewrite: TTL, address and IPv4 checksum, port and TCP/UDP checksum
    /// (the same RFC 1624 steps in the same order, so the bytes are identical), MACs.
    /// `None` leaves the frame as it was.
    #[inline(always)]
    fn rewrite(ctx: &XdpContext, act: &FlowAction, outbound: bool) -> Option<()> {
        let frame_len = ctx.data_end() - ctx.data();
        let ip = ptr_at_mut::<Ipv4Hdr>(ctx, L3)?;
        let tot_len = u16::from_be_bytes(ip.tot_len);
        let l4_len = usize::from(tot_len).checked_sub(mem::size_of::<Ipv4Hdr>())?;
        if L3 + usize::from(tot_len) > frame_len || tot_len > act.max_len || ip.ttl <= 1 {
            return None;
        }
        // The header checksum must verify, as the translator checks it.
        let words = [
            u16::from_be_bytes([ip.version_ihl, ip.tos]),
            tot_len,
            u16::from_be_bytes(ip.id),
            u16::from_be_bytes(ip.frag_off),
            u16::from_be_bytes([ip.ttl, ip.proto]),
            u16::from_be_bytes(ip.check),
        ];
        let mut sum = sum_addr(ip.src) + sum_addr(ip.dst);
        for w in words {
            sum += u32::from(w);
        }
        if fold(sum) != 0xffff {
            return None;
        }
        let proto = ip.proto;
        let (old_src, old_dst) = (ip.src, ip.dst);
        // The transport header: complete, no connection-state flags, a checksum that is
        // either absent (UDP 0) or complete (not the pseudo-header sum of offload).
        let (csum_at, cover) = if proto == PROTO_TCP {
            let tcp = ptr_at::<TcpHdr>(ctx, L4)?;
            let off = usize::from(tcp.data_off >> 4) * 4;
            if l4_len < mem::size_of::<TcpHdr>()
                || off < mem::size_of::<TcpHdr>()
                || off > l4_len
                || tcp.flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
            {
                return None;
            }
            (L4 + 16, l4_len as u16)
        } else {
            let udp = ptr_at::<UdpHdr>(ctx, L4)?;
            let len = u16::from_be_bytes(udp.len);
            if len < 8 || usize::from(len) > l4_len {
                return None;
            }
            (L4 + 6, len)
        };
        let check = ptr_at_mut::<[u8; 2]>(ctx, csum_at)?;
        let cs = u16::from_be_bytes(*check);
        let has_csum = !(proto == PROTO_UDP && cs == 0);
        let pseudo = sum_addr(old_src) + sum_addr(old_dst) + u32::from(proto) + u32::from(cover);
        if has_csum && is_partial(cs, pseudo) {
            return None;
        }

        // Rewrite: IPv4 header (TTL, then the address), as `translator::wire` does it.
        let (new_src, new_dst) = if outbound {
            (act.src.to_ne_bytes(), old_dst)
        } else {
            (old_src, act.dst.to_ne_bytes())
        };
        let ip = ptr_at_mut::<Ipv4Hdr>(ctx, L3)?;
        let old_tp = u16::from_be_bytes([ip.ttl, ip.proto]);
        ip.ttl -= 1;
        let mut hc = update16(
            u16::from_be_bytes(ip.check),
            old_tp,
            u16::from_be_bytes([ip.ttl, ip.proto]),
        );
        if outbound {
            hc = update_addr(hc, old_src, new_src);
            ip.src = new_src;
        } else {
            hc = update_addr(hc, old_dst, new_dst);
            ip.dst = new_dst;
        }
        ip.check = hc.to_be_bytes();

        // Transport: the port, then the checksum over both addresses and the port.
        let ports = ptr_at_mut::<Ports>(ctx, L4)?;
        let (old_port, new_port) = if outbound {
            let old = u16::from_be_bytes(ports.src);
            ports.src = act.sport.to_ne_bytes();
            (old, u16::from_be(act.sport))
        } else {
            let old = u16::from_be_bytes(ports.dst);
            ports.dst = act.dport.to_ne_bytes();
            (old, u16::from_be(act.dport))
        };
        if has_csum {
            let c = update_addr(cs, old_src, new_src);
            let c = update_addr(c, old_dst, new_dst);
            let c = update16(c, old_port, new_port);
            let c = if proto == PROTO_UDP && c == 0 {
                0xffff
            } else {
                c
            };
            let check = ptr_at_mut::<[u8; 2]>(ctx, csum_at)?;
            *check = c.to_be_bytes();
        }

        let eth = ptr_at_mut::<EthHdr>(ctx, 0)?;
        eth.dst = act.eth_dst;
        eth.src = act.eth_src;
        Some(())
    }

    /// The benchmark's counting sink (not part of nat-fast): counts and drops IPv4
    /// frames, passes the rest uncounted so that ARP still resolves the sink's address.
    #[xdp]
    pub fn dovesnap_sink(ctx: XdpContext) -> u32 {
        let ipv4 = matches!(ptr_at::<EthHdr>(&ctx, 0), Some(eth)
            if u16::from_be_bytes(eth.ether_type) == ETH_P_IP);
        if !ipv4 {
            add(&SINK, SINK_PASSED, 1);
            return xdp_action::XDP_PASS;
        }
        add(&SINK, SINK_FRAMES, 1);
        add(&SINK, SINK_BYTES, (ctx.data_end() - ctx.data()) as u64);
        xdp_action::XDP_DROP
    }

    /// Adds `n` to slot `index` of a per-CPU array on this CPU; an index outside the map
    /// (ruled out by the constants) is ignored.
    #[inline(always)]
    fn add(map: &PerCpuArray<u64>, index: u32, n: u64) {
        if let Some(slot) = map.get_ptr_mut(index) {
            // SAFETY: the pointer comes from a successful map lookup and points to this
            // CPU's slot of a per-CPU array; XDP runs with preemption disabled, so
            // nothing else writes it concurrently.
            unsafe { *slot += n };
        }
    }

    /// Sorts the frame into one classification counter. Truncated headers of a known
    /// protocol are `Malformed`, never an error: they are data, not a program fault.
    #[inline(always)]
    fn classify(ctx: &impl Frame) -> Counter {
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
            return Counter::Malformed;
        };
        match u16::from_be_bytes(eth.ether_type) {
            ETH_P_IP => match ptr_at::<Ipv4Hdr>(ctx, L3) {
                Some(ip) if ip.version_ihl >> 4 == 4 && ip.version_ihl & 0x0f >= 5 => Counter::Ipv4,
                _ => Counter::Malformed,
            },
            ETH_P_ARP => match ptr_at::<ArpHdr>(ctx, L3) {
                Some(_) => Counter::Arp,
                None => Counter::Malformed,
            },
            ETH_P_IPV6 => match ptr_at::<Ipv6Hdr>(ctx, L3) {
                Some(ip) if ip.version_tc >> 4 == 6 => Counter::Ipv6,
                _ => Counter::Malformed,
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

    /// The license the kernel checks before letting the program call helpers.
    /// `bpf_fib_lookup` is GPL-only (`gpl_only = true` in the kernel's
    /// `bpf_xdp_fib_lookup_proto`): a program declaring a non-GPL-compatible license such
    /// as "Apache-2.0" is rejected by the verifier ("cannot call GPL-restricted function
    /// from non-GPL compatible program"). So the eBPF object declares "Dual MIT/GPL", one
    /// of the strings the kernel accepts as GPL-compatible, as aya's own templates do.
    /// This string only describes the program loaded into the kernel; the crate's
    /// sources keep the workspace's Apache-2.0 license.
    #[link_section = "license"]
    #[no_mangle]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // Unreachable in a verified program: the verifier rejects code that could panic
        // at run time, since there is nowhere to unwind to.
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
