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

/// Name of the tc program for tcx ingress on a tc-engine container's host end
/// (`ovst<id>`): established flows out to the uplink (see `docs/design/nat-fast-tc.md`).
pub const TC_ENDPOINT_PROGRAM_NAME: &str = "dovesnap_tc_endpoint";
/// Name of the tc program for tcx ingress on the uplink: established flows' replies
/// into the container.
pub const TC_UPLINK_PROGRAM_NAME: &str = "dovesnap_tc_uplink";

/// Name of the per-CPU `u64` array holding one counter per [`Counter`].
pub const STATS_MAP: &str = "STATS";

/// Name of the hash map from ingress ifindex (`u32`) to [`IfaceConfig`]: the interfaces
/// whose traffic the program may steer. Frames arriving on any other interface are only
/// classified, counted and passed.
pub const IFACES_MAP: &str = "IFACES";
/// Capacity of [`IFACES_MAP`].
pub const MAX_IFACES: u32 = 1024;

/// Name of the hash map from [`PortKey`] to `u32` (unused value, write 0): the TCP/UDP
/// ports the translator publishes on an uplink address (new inbound flows come from any
/// remote, so these are steered by port). Dynamic sessions are in [`SESSIONS_MAP`].
pub const PORTS_MAP: &str = "PORTS";
/// Capacity of [`PORTS_MAP`].
pub const MAX_PORTS: u32 = 65536;

/// Name of the hash map from [`PortKey`] to `u32` (unused value, write 0) of the
/// container ports the kernel's DNAT publishes for tc-engine endpoints, keyed by the
/// container's address (`addr`) and port: a datagram leaving such a port answers a flow
/// conntrack carries, so `dovesnap_tc_endpoint` makes no session for it.
pub const PUBLISHED_MAP: &str = "PUBLISHED";
/// Capacity of [`PUBLISHED_MAP`].
pub const MAX_PUBLISHED: u32 = 16384;

/// Name of the hash map from [`FlowKey`] to `u32` (unused value, write 0): the dynamic
/// sessions the translator holds right now, each keyed by its reply as it arrives on the
/// uplink (`ifindex` 0, `src`/`sport` the remote, `dst`/`dport` the external address and
/// port; ICMP: `sport` 0, `dport` the echo identifier). The uplink steers a frame to the
/// translator only if its exact reverse tuple is here (or its port is in [`PORTS_MAP`],
/// published), so a host socket or another NAT using the same port number towards
/// another remote keeps its frames.
pub const SESSIONS_MAP: &str = "SESSIONS";
/// Default capacity of [`SESSIONS_MAP`]; the loader sizes it from the translator's
/// session limit. The map is not preallocated: only live entries take memory.
pub const MAX_STEERED_SESSIONS: u32 = 262144;

/// Name of the `XskMap` of AF_XDP sockets, indexed by slot ([`IfaceConfig::xsk_slot`]).
pub const XSKS_MAP: &str = "XSKS";
/// Capacity of [`XSKS_MAP`]: valid slots are `0..MAX_XSKS`.
pub const MAX_XSKS: u32 = 1024;

/// Name of the hash map from [`FlowKey`] to [`FlowAction`]: established sessions the
/// translator offloaded, one entry per direction. A frame of such a flow is rewritten and
/// redirected by the program itself ([`DEVS_MAP`]), never reaching userspace.
pub const FLOWS_MAP: &str = "FLOWS";
/// Capacity of [`FLOWS_MAP`] (two entries per offloaded session).
pub const MAX_FLOWS: u32 = 131072;

/// Name of the hash map from [`FlowKey`] to [`CtEntry`]: the tc engine's sessions, two
/// entries per session, keyed as frames arrive: outbound `{ifindex: the container's host
/// end, src: inside, dst: remote}`, inbound `{ifindex: 0, src: remote, dst: external}`
/// (the [`SESSIONS_MAP`] convention). The tc programs rewrite and redirect the frames of
/// these flows themselves. Not preallocated.
pub const CT_MAP: &str = "CT";
/// Default capacity of [`CT_MAP`] (two entries per session); the loader sizes it from
/// the session limit.
pub const MAX_CT: u32 = 2 * MAX_STEERED_SESSIONS;

/// Name of the one-entry `Array` of [`NatConfig`]: the ports the tc endpoint program
/// claims for the sessions it creates (written by the loader from
/// `--nat-kernel-ports`).
pub const NAT_CFG_MAP: &str = "NAT_CFG";
/// How many external ports `dovesnap_tc_endpoint` tries (each claimed with
/// `BPF_NOEXIST`) before it leaves a new flow to the kernel's masquerade.
pub const NAT_PROBES: u32 = 16;

/// [`CtEntry::flags`]: a frame of this direction was forwarded by a tc program.
pub const CT_SEEN: u32 = 0x01;
/// [`CtEntry::flags`]: a TCP SYN without ACK went this way.
pub const CT_SYN: u32 = 0x02;
/// [`CtEntry::flags`]: a TCP SYN with ACK went this way.
pub const CT_SYN_ACK: u32 = 0x04;
/// [`CtEntry::flags`]: a TCP FIN went this way.
pub const CT_FIN: u32 = 0x08;
/// [`CtEntry::flags`]: a TCP RST went this way.
pub const CT_RST: u32 = 0x10;

/// [`CtEntry::owner`]: a session the tc programs created (step 3 of the design).
pub const CT_OWNER_KERNEL: u8 = 1;
/// [`CtEntry::owner`]: a session the AF_XDP translator created.
pub const CT_OWNER_TRANSLATOR: u8 = 2;
/// [`CtEntry::owner`]: a session adopted from the kernel's conntrack at start.
pub const CT_OWNER_ADOPTED: u8 = 3;

/// Name of the one-entry `Array<u32>` of the data plane's state ([`STATE_BYPASS`]).
pub const STATE_MAP: &str = "STATE";
/// [`STATE_MAP`] bit: the translator is down (crashed, stalled or restarting); the
/// program passes every frame to the kernel, whose nat path then carries all traffic.
pub const STATE_BYPASS: u32 = 1;

/// Name of the `DevMapHash` of the interfaces offloaded frames leave by, keyed by their
/// ifindex ([`FlowAction::out_ifindex`]).
pub const DEVS_MAP: &str = "DEVS";
/// Capacity of [`DEVS_MAP`].
pub const MAX_DEVS: u32 = 1024;

/// Name of the LRU hash map from [`FragKey`] to a `u64` timestamp
/// (`bpf_ktime_get_ns`): the fragmented datagrams whose first fragment the program
/// steered to the translator, so that their later fragments (which carry no transport
/// header) follow it. Written and read by the program only.
pub const FRAGS_MAP: &str = "FRAGS";
/// Capacity of [`FRAGS_MAP`] (least recently used entries go first).
pub const MAX_FRAGS: u32 = 4096;
/// How long after its first fragment a datagram's later fragments still follow it, in
/// nanoseconds: the kernel's default reassembly timeout (`ipfrag_time`, 30 s).
pub const FRAG_LIFETIME_NS: u64 = 30_000_000_000;

/// Name of the LPM trie (`Key<u32>` of far prefixes in network byte order ->
/// [`HostFwMatch`]) of the host's forward rules that nat-fast honours by leaving the
/// matching frames to the kernel: a container's frame to a far address in it, or an
/// uplink frame from one, is passed when its protocol and far port match too.
pub const HOSTFW_MAP: &str = "HOSTFW";
/// Capacity of [`HOSTFW_MAP`] (prefixes).
pub const MAX_HOSTFW: u32 = 4096;
/// Name of the one-entry `Array<u32>` that turns the [`HOSTFW_MAP`] lookup on (non-zero):
/// the fast path pays nothing for it while the host has no such rule.
pub const HOSTFW_ON_MAP: &str = "HOSTFW_ON";

/// The value of [`HOSTFW_MAP`]: which of the prefix's frames a host rule may drop.
/// 8 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostFwMatch {
    /// [`PROTO_TCP`], [`PROTO_UDP`], [`PROTO_ICMP`], or 0 for every protocol.
    pub proto: u8,
    /// Explicit padding; write zero.
    pub _pad: u8,
    /// Lowest far port (host byte order) for TCP/UDP; 0 with `port_hi` 65535 for all.
    pub port_lo: u16,
    /// Highest far port (host byte order).
    pub port_hi: u16,
    /// Explicit padding; write zero.
    pub _pad2: u16,
}

impl HostFwMatch {
    /// Whether a frame of `proto` with far port `port` (host order; `None` for ICMP
    /// or when unknown) is covered.
    #[inline(always)]
    pub const fn covers(&self, proto: u8, port: Option<u16>) -> bool {
        if self.proto == 0 {
            return true;
        }
        if self.proto != proto {
            return false;
        }
        match port {
            Some(p) => p >= self.port_lo && p <= self.port_hi,
            None => true,
        }
    }
}

/// [`IfaceConfig::kind`] of the host end of a nat-fast container's veth.
pub const IFACE_ENDPOINT: u32 = 1;
/// [`IfaceConfig::kind`] of the uplink carrying the external address.
pub const IFACE_UPLINK: u32 = 2;

/// Name of the benchmark's counting sink, a second XDP program in the same object: it
/// counts and drops every IPv4 frame and passes everything else uncounted (ARP, so that
/// the sink's address still resolves; IPv6 housekeeping). Only `cargo xtask bench` and
/// its tests attach it, never the plugin.
pub const SINK_PROGRAM_NAME: &str = "dovesnap_sink";

/// Name of the sink's per-CPU `u64` array, indexed by [`SINK_FRAMES`], [`SINK_BYTES`]
/// and [`SINK_PASSED`].
pub const SINK_MAP: &str = "SINK";
/// [`SINK_MAP`] index: IPv4 frames counted and dropped.
pub const SINK_FRAMES: u32 = 0;
/// [`SINK_MAP`] index: bytes of those frames, from the Ethernet header to the end of the
/// frame (no FCS: a minimal 64-byte frame on the wire counts 60).
pub const SINK_BYTES: u32 = 1;
/// [`SINK_MAP`] index: other frames (ARP, IPv6, ...) passed to the kernel uncounted.
pub const SINK_PASSED: u32 = 2;
/// Number of entries in [`SINK_MAP`].
pub const SINK_SLOTS: u32 = 3;

/// IPv4 protocol numbers the program steers.
pub const PROTO_ICMP: u8 = 1;
/// TCP's IPv4 protocol number.
pub const PROTO_TCP: u8 = 6;
/// UDP's IPv4 protocol number.
pub const PROTO_UDP: u8 = 17;

/// The value of [`IFACES_MAP`]: how to treat frames arriving on one interface.
///
/// Byte orders: `addr`, `subnet` and `netmask` are IPv4 addresses in network byte order,
/// i.e. the four wire bytes read as a native-endian `u32` (`u32::from_ne_bytes(octets)`,
/// see [`be_addr`]). 40 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceConfig {
    /// [`IFACE_ENDPOINT`] or [`IFACE_UPLINK`]; any other value: classify and pass.
    pub kind: u32,
    /// The interface's first [`XSKS_MAP`] slot: a frame received on rx queue `q` goes
    /// to slot `xsk_slot + q`, whose socket must be bound to this interface's queue `q`
    /// (the kernel drops frames redirected to a socket bound elsewhere).
    pub xsk_slot: u32,
    /// How many rx queues (from 0) have a socket (1 for an ordinary single-queue veth
    /// endpoint); frames that would be steered but arrive on a queue `>= xsk_slots` pass
    /// (counted `*-queue-without-socket`).
    pub xsk_slots: u32,
    /// Network byte order. Endpoint: the container's IPv4 address (frames with another
    /// source pass). Uplink: the external IPv4 address.
    pub addr: u32,
    /// Network byte order, endpoint only: destinations with
    /// `dst & netmask == subnet` pass (traffic inside the network stays on OVS).
    pub subnet: u32,
    /// Network byte order, endpoint only: see `subnet`.
    pub netmask: u32,
    /// Endpoint: the ifindex given to `bpf_fib_lookup` as the input device (the bridge's
    /// internal port carrying the gateway address). Must be in the same network namespace
    /// as the endpoint interface, and have IPv4 forwarding enabled.
    pub fib_ifindex: u32,
    /// Endpoint: only destinations the kernel routes out of this ifindex are steered.
    pub uplink_ifindex: u32,
    /// Endpoint: only frames addressed to this MAC (the gateway's) are routed traffic.
    pub gateway_mac: [u8; 6],
    /// Explicit padding; write zero.
    pub _pad: [u8; 2],
}

/// The key of [`PORTS_MAP`]. 8 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// The uplink's external IPv4 address, network byte order (see [`be_addr`]).
    pub addr: u32,
    /// Network byte order: the TCP/UDP port, or the ICMP echo identifier.
    pub port: u16,
    /// [`PROTO_TCP`], [`PROTO_UDP`] or [`PROTO_ICMP`].
    pub proto: u8,
    /// Explicit padding; must be zero (the kernel hashes every byte).
    pub _pad: u8,
}

/// The key of [`FLOWS_MAP`]: a TCP/UDP flow as it arrives on one interface. Addresses
/// and ports in network byte order (the wire bytes read natively). 20 bytes, no implicit
/// padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The interface the frame arrives on (a container's veth host end, or the uplink).
    pub ifindex: u32,
    /// Source address, network byte order.
    pub src: u32,
    /// Destination address, network byte order.
    pub dst: u32,
    /// Source port, network byte order.
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Explicit padding; must be zero (the kernel hashes every byte).
    pub _pad: [u8; 3],
}

/// The key of [`FRAGS_MAP`]: one fragmented datagram as it arrives on one interface
/// (RFC 791: source, destination, protocol and identification name it). Addresses in
/// network byte order, `id` as the wire bytes read natively. 16 bytes, no implicit
/// padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragKey {
    /// The interface the fragments arrive on.
    pub ifindex: u32,
    /// Source address, network byte order.
    pub src: u32,
    /// Destination address, network byte order.
    pub dst: u32,
    /// The IPv4 identification field, network byte order.
    pub id: u16,
    /// The IPv4 protocol.
    pub proto: u8,
    /// Explicit padding; must be zero (the kernel hashes every byte).
    pub _pad: u8,
}

/// The value of [`FLOWS_MAP`]: the rewrite the translator would do for a frame of the
/// flow, and where the frame goes. The program writes `last_seen`, `packets` and `bytes`;
/// userspace writes the rest once, at offload time. 56 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowAction {
    /// New source address, network byte order.
    pub src: u32,
    /// New destination address, network byte order.
    pub dst: u32,
    /// New source port, network byte order.
    pub sport: u16,
    /// New destination port, network byte order.
    pub dport: u16,
    /// The interface the rewritten frame is redirected to (must be in [`DEVS_MAP`]).
    pub out_ifindex: u32,
    /// New destination MAC (the next hop's, or the container's).
    pub eth_dst: [u8; 6],
    /// New source MAC (the uplink's, or the gateway's).
    pub eth_src: [u8; 6],
    /// Largest IPv4 total length allowed out (the output MTU); bigger frames go to the
    /// slow path, which leaves them to the kernel's fragmentation and ICMP.
    pub max_len: u16,
    /// Explicit padding; write zero.
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last frame the program forwarded.
    pub last_seen: u64,
    /// Frames the program forwarded.
    pub packets: u64,
    /// Their bytes, from the Ethernet header on.
    pub bytes: u64,
}

/// The value of [`CT_MAP`]: one direction of a tc-engine session. `act` is the rewrite
/// (outbound: new source address and port, `out_ifindex` the uplink for
/// `bpf_redirect_neigh`; inbound: new destination address and port, the container's and
/// gateway's MACs, `out_ifindex` the container's host end for `bpf_redirect_peer`;
/// `max_len` the output MTU for frames that are not GSO). The program of this direction
/// writes `act.last_seen`, `act.packets`, `act.bytes` and `flags`, and nothing else
/// writes them: no read-modify-write crosses CPUs of different directions. 72 bytes, no
/// implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtEntry {
    /// The rewrite and the kernel's bookkeeping, as in [`FLOWS_MAP`].
    pub act: FlowAction,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the session was created.
    pub created: u64,
    /// This direction's TCP state bits: [`CT_SEEN`], [`CT_SYN`], [`CT_SYN_ACK`],
    /// [`CT_FIN`], [`CT_RST`]. The session's state is the union of both directions'.
    pub flags: u32,
    /// [`CT_OWNER_KERNEL`], [`CT_OWNER_TRANSLATOR`] or [`CT_OWNER_ADOPTED`].
    pub owner: u8,
    /// Explicit padding; write zero.
    pub _pad: [u8; 3],
}

/// The value of [`NAT_CFG_MAP`]'s entry 0: the external ports (host order, inclusive)
/// the tc endpoint program claims for the TCP sessions it creates. `first == 0` (the
/// map's initial value) turns session creation off: new flows take the kernel's path.
/// The range must be clear of the translator's ports, the kernel masquerade's and the
/// host's local port range. 8 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatConfig {
    /// First port of the range (host order); 0: no session creation.
    pub first: u16,
    /// Last port of the range (host order), `>= first`.
    pub last: u16,
    /// Explicit padding; write zero.
    pub _pad: u32,
}

/// An IPv4 address as the program compares it: its four wire bytes as a native-endian
/// `u32`, which is what a 4-byte load from the packet yields.
#[inline(always)]
pub const fn be_addr(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The wire bytes of an address stored with [`be_addr`].
#[inline(always)]
pub const fn addr_octets(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}

impl PortKey {
    /// A key from host-order values: `addr` as octets, `port` (or echo identifier) as a
    /// number.
    pub const fn new(addr: [u8; 4], port: u16, proto: u8) -> Self {
        PortKey {
            addr: be_addr(addr),
            port: port.to_be(),
            proto,
            _pad: 0,
        }
    }

    /// The port (or echo identifier) in host byte order.
    pub const fn port_host(&self) -> u16 {
        u16::from_be(self.port)
    }
}

impl IfaceConfig {
    /// Whether an endpoint's `dst` (network byte order) lies inside its subnet.
    #[inline(always)]
    pub const fn in_subnet(&self, dst: u32) -> bool {
        dst & self.netmask == self.subnet
    }
}

// SAFETY: both are `#[repr(C)]` structs of integers and byte arrays whose fields cover
// every byte (sizes checked below), so any bit pattern is valid and there are no padding
// bytes with undefined contents.
#[cfg(feature = "user")]
unsafe impl aya::Pod for IfaceConfig {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowAction {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for HostFwMatch {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CtEntry {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for NatConfig {}

const _: () = {
    assert!(core::mem::size_of::<IfaceConfig>() == 40);
    assert!(core::mem::size_of::<PortKey>() == 8);
    assert!(core::mem::size_of::<FlowKey>() == 20);
    assert!(core::mem::size_of::<FlowAction>() == 56);
    assert!(core::mem::size_of::<FragKey>() == 16);
    assert!(core::mem::size_of::<HostFwMatch>() == 8);
    assert!(core::mem::size_of::<CtEntry>() == 72);
    assert!(core::mem::size_of::<NatConfig>() == 8);
};

/// Number of entries in [`STATS_MAP`]: one per [`Counter`] variant.
pub const COUNTERS: u32 = 59;

/// Index of a counter in [`STATS_MAP`].
///
/// Every frame increments exactly one classification counter (`Ipv4`, `Arp`, `Ipv6`,
/// `Other` or `Malformed`) and exactly one verdict counter (`Pass`, `Redirect`, or
/// `OffloadRedirectFailed`, a drop). A frame of an offloaded flow rewritten by the
/// program itself counts `OffloadOutbound` (arrived on an endpoint) or `OffloadInbound`
/// (on the uplink) as its decision; one that matched an offloaded flow but needs the
/// translator (TCP SYN/FIN/RST, a partial or wrong checksum, too big) counts
/// `OffloadSlowPath` besides its ordinary decision.
/// A frame arriving on an interface in [`IFACES_MAP`] also increments exactly one
/// decision counter (`Endpoint*` or `Uplink*`); a frame the program tried to redirect
/// but whose [`XSKS_MAP`] slot holds no socket additionally counts `XskMissing` and is
/// passed (verdict `Pass`), so the kernel handles it as if the program were absent.
///
/// The tc programs (`Tc*`, names `tc-*`) count apart from the XDP program's: they count
/// no classification or verdict above, and every frame they see counts exactly one of
/// `TcOut`, `TcIn`, `TcRedirectFailed`, `TcBypassed`, `TcUnconfigured` or a
/// `TcDecline*` (all of which return `TCX_NEXT`: the kernel's path). `TcGsoFrames` and
/// `TcGsoSegments` come on top, for rewritten GSO super-packets, `TcCreated` for a
/// session the endpoint program made and `TcIcmpError` for a translated ICMP error.
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
    /// Frames redirected into an AF_XDP socket (`XDP_REDIRECT`).
    Redirect = 6,
    /// A redirect found no socket in its [`XSKS_MAP`] slot: the frame was passed.
    XskMissing = 7,
    /// Endpoint: steered to the endpoint's socket (see `XskMissing` for failures).
    EndpointRedirect = 8,
    /// Endpoint: not addressed to the gateway MAC (ARP broadcasts, L2 traffic).
    EndpointNotToGateway = 9,
    /// Endpoint: not IPv4 (or a malformed IPv4 header), or an IPv4 protocol other than
    /// TCP, UDP and ICMP.
    EndpointOtherProtocol = 10,
    /// Endpoint: IPv4 header with options (IHL != 5), left to the kernel (fragments
    /// are counted `EndpointFragment*`).
    EndpointOptions = 11,
    /// Endpoint: TTL <= 1, left to the kernel to answer with time-exceeded.
    EndpointTtlExpiring = 12,
    /// Endpoint: destination inside the endpoint's subnet.
    EndpointInSubnet = 13,
    /// Endpoint: the FIB lookup did not forward (local destination, no route,
    /// forwarding disabled on `fib_ifindex`, ...).
    EndpointNotForwarded = 14,
    /// Endpoint: routed out of an interface other than `uplink_ifindex`.
    EndpointNotViaUplink = 15,
    /// Endpoint: larger than the output MTU; the kernel fragments it or sends the ICMP.
    EndpointTooBig = 16,
    /// Endpoint: source address is not the container's.
    EndpointSpoofedSource = 17,
    /// Uplink: steered to the queue's socket (see `XskMissing` for failures).
    UplinkRedirect = 18,
    /// Uplink: not IPv4 (or malformed), or not addressed to the external address.
    UplinkNotForUs = 19,
    /// Uplink: to the external address, but no reserved port, published port or echo
    /// session matches (including IPv4 protocols the translator does not handle).
    UplinkNoSession = 20,
    /// Uplink: would be steered, but arrived on an rx queue without a socket.
    UplinkQueueWithoutSocket = 21,
    /// Uplink: to the external address, with IPv4 options (fragments are counted
    /// `UplinkFragment*`).
    UplinkOptions = 22,
    /// Endpoint: would be steered, but arrived on an rx queue without a socket.
    EndpointQueueWithoutSocket = 23,
    /// Offloaded: a container's frame rewritten and redirected to the uplink in XDP.
    OffloadOutbound = 24,
    /// Offloaded: an uplink frame rewritten and redirected to the container in XDP.
    OffloadInbound = 25,
    /// Matched an offloaded flow but left for the translator (TCP SYN/FIN/RST, partial
    /// or bad checksum, larger than the output MTU, TTL expiring).
    OffloadSlowPath = 26,
    /// Verdict: an offloaded frame whose redirect failed (output device missing from
    /// `DEVS`), dropped since it was already rewritten.
    OffloadRedirectFailed = 27,
    /// Endpoint: a fragment steered to the socket (see `XskMissing` for failures): a
    /// first fragment that passed every check a whole packet must pass (its datagram is
    /// recorded in [`FRAGS_MAP`]), or a later fragment of such a datagram.
    EndpointFragment = 28,
    /// Endpoint: a later fragment whose first fragment was not steered (left to the
    /// kernel, which holds the rest of the datagram).
    EndpointFragmentKernel = 29,
    /// Uplink: a fragment steered to the queue's socket: a first fragment whose port,
    /// echo identifier or quoted flow is the translator's (its datagram is recorded in
    /// [`FRAGS_MAP`]), or a later fragment of such a datagram.
    UplinkFragment = 30,
    /// Uplink: a later fragment whose first fragment was not steered (another NAT's or
    /// a host socket's datagram): left to the kernel.
    UplinkFragmentKernel = 31,
    /// Passed to the kernel on a configured interface because the translator is down
    /// ([`STATE_BYPASS`]).
    Bypassed = 32,
    /// Endpoint: to a far address, protocol and port that a host forward rule may drop
    /// ([`HOSTFW_MAP`]): left to the kernel, where the rule applies.
    EndpointHostFirewall = 33,
    /// Uplink: from a far address, protocol and port that a host forward rule covers
    /// ([`HOSTFW_MAP`]; the host's own traffic from there included): left to the kernel.
    UplinkHostFirewall = 34,
    /// tc: a container's frame of a `CT` session rewritten and redirected to the uplink.
    TcOut = 35,
    /// tc: an uplink frame of a `CT` session rewritten and redirected into the container.
    TcIn = 36,
    /// tc: rewritten frames that were GSO super-packets (`gso_segs > 1`).
    TcGsoFrames = 37,
    /// tc: the segments those super-packets carried (sum of `gso_segs`).
    TcGsoSegments = 38,
    /// tc: rewritten, but the redirect helper refused: dropped (`TCX_DROP`).
    TcRedirectFailed = 39,
    /// tc: the data plane is bypassed ([`STATE_BYPASS`]): left to the kernel.
    TcBypassed = 40,
    /// tc: arrived on an interface without the right [`IFACES_MAP`] entry.
    TcUnconfigured = 41,
    /// tc endpoint: not addressed to the gateway MAC.
    TcDeclineNotToGateway = 42,
    /// tc: not IPv4 (or a truncated or wrong-version IPv4 header), or an IPv4
    /// protocol other than TCP, UDP and ICMP.
    TcDeclineOtherProtocol = 43,
    /// tc: IPv4 options (IHL != 5).
    TcDeclineOptions = 44,
    /// tc endpoint: the source address is not the container's.
    TcDeclineSpoofedSource = 45,
    /// tc: TTL <= 1, left to the kernel to answer with time-exceeded.
    TcDeclineTtlExpiring = 46,
    /// tc endpoint: destination inside the endpoint's subnet.
    TcDeclineInSubnet = 47,
    /// tc: a host forward rule may drop it ([`HOSTFW_MAP`]).
    TcDeclineHostFirewall = 48,
    /// tc endpoint: no session, and the FIB lookup did not forward it (local
    /// destination, no route, ...).
    TcDeclineNotForwarded = 49,
    /// tc endpoint: no session, and routed out of another interface than the uplink.
    TcDeclineNotViaUplink = 50,
    /// tc: a session's frame that is not GSO and larger than the output MTU (the kernel
    /// fragments it or answers frag-needed).
    TcDeclineTooBig = 51,
    /// tc: the IPv4 total length or the TCP/UDP header does not fit the frame.
    TcDeclineTruncated = 52,
    /// tc uplink: not IPv4 to the external address.
    TcDeclineNotForUs = 53,
    /// tc uplink: to the external address, but neither a `CT` session nor the
    /// translator's (the host's own traffic, the kernel masquerade's replies).
    TcDeclineNoSession = 54,
    /// tc: what the design sends to the slow port (the translator): fragments, ICMP,
    /// a flow without a `CT` session routed via the uplink, the translator's sessions and
    /// published ports on the uplink, a session's frame the program failed to rewrite.
    /// Until the slow port exists, these go to the kernel.
    TcDeclineSlow = 55,
    /// tc endpoint: a session the program created (a TCP SYN routed via the uplink,
    /// with a port claimed from [`NAT_CFG_MAP`]'s range); counts on top of `TcOut`.
    TcCreated = 56,
    /// tc endpoint: a new flow left to the kernel because no port was free after
    /// [`NAT_PROBES`] tries, or `CT` was full.
    TcDeclineExhausted = 57,
    /// tc: an ICMP error quoting a `CT` session's packet, translated (RFC 5508) and
    /// sent on; counts on top of `TcOut` or `TcIn`.
    TcIcmpError = 58,
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
        Counter::Redirect,
        Counter::XskMissing,
        Counter::EndpointRedirect,
        Counter::EndpointNotToGateway,
        Counter::EndpointOtherProtocol,
        Counter::EndpointOptions,
        Counter::EndpointTtlExpiring,
        Counter::EndpointInSubnet,
        Counter::EndpointNotForwarded,
        Counter::EndpointNotViaUplink,
        Counter::EndpointTooBig,
        Counter::EndpointSpoofedSource,
        Counter::UplinkRedirect,
        Counter::UplinkNotForUs,
        Counter::UplinkNoSession,
        Counter::UplinkQueueWithoutSocket,
        Counter::UplinkOptions,
        Counter::EndpointQueueWithoutSocket,
        Counter::OffloadOutbound,
        Counter::OffloadInbound,
        Counter::OffloadSlowPath,
        Counter::OffloadRedirectFailed,
        Counter::EndpointFragment,
        Counter::EndpointFragmentKernel,
        Counter::UplinkFragment,
        Counter::UplinkFragmentKernel,
        Counter::Bypassed,
        Counter::EndpointHostFirewall,
        Counter::UplinkHostFirewall,
        Counter::TcOut,
        Counter::TcIn,
        Counter::TcGsoFrames,
        Counter::TcGsoSegments,
        Counter::TcRedirectFailed,
        Counter::TcBypassed,
        Counter::TcUnconfigured,
        Counter::TcDeclineNotToGateway,
        Counter::TcDeclineOtherProtocol,
        Counter::TcDeclineOptions,
        Counter::TcDeclineSpoofedSource,
        Counter::TcDeclineTtlExpiring,
        Counter::TcDeclineInSubnet,
        Counter::TcDeclineHostFirewall,
        Counter::TcDeclineNotForwarded,
        Counter::TcDeclineNotViaUplink,
        Counter::TcDeclineTooBig,
        Counter::TcDeclineTruncated,
        Counter::TcDeclineNotForUs,
        Counter::TcDeclineNoSession,
        Counter::TcDeclineSlow,
        Counter::TcCreated,
        Counter::TcDeclineExhausted,
        Counter::TcIcmpError,
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
            Counter::Redirect => "redirect",
            Counter::XskMissing => "xsk-missing",
            Counter::EndpointRedirect => "endpoint-redirect",
            Counter::EndpointNotToGateway => "endpoint-not-to-gateway",
            Counter::EndpointOtherProtocol => "endpoint-other-protocol",
            Counter::EndpointOptions => "endpoint-options",
            Counter::EndpointTtlExpiring => "endpoint-ttl-expiring",
            Counter::EndpointInSubnet => "endpoint-in-subnet",
            Counter::EndpointNotForwarded => "endpoint-not-forwarded",
            Counter::EndpointNotViaUplink => "endpoint-not-via-uplink",
            Counter::EndpointTooBig => "endpoint-too-big",
            Counter::EndpointSpoofedSource => "endpoint-spoofed-source",
            Counter::UplinkRedirect => "uplink-redirect",
            Counter::UplinkNotForUs => "uplink-not-for-us",
            Counter::UplinkNoSession => "uplink-no-session",
            Counter::UplinkQueueWithoutSocket => "uplink-queue-without-socket",
            Counter::UplinkOptions => "uplink-options",
            Counter::EndpointQueueWithoutSocket => "endpoint-queue-without-socket",
            Counter::OffloadOutbound => "offload-outbound",
            Counter::OffloadInbound => "offload-inbound",
            Counter::OffloadSlowPath => "offload-slow-path",
            Counter::OffloadRedirectFailed => "offload-redirect-failed",
            Counter::EndpointFragment => "endpoint-fragment",
            Counter::EndpointFragmentKernel => "endpoint-fragment-kernel",
            Counter::UplinkFragment => "uplink-fragment",
            Counter::UplinkFragmentKernel => "uplink-fragment-kernel",
            Counter::Bypassed => "bypassed",
            Counter::EndpointHostFirewall => "endpoint-host-firewall",
            Counter::UplinkHostFirewall => "uplink-host-firewall",
            Counter::TcOut => "tc-out",
            Counter::TcIn => "tc-in",
            Counter::TcGsoFrames => "tc-gso-frames",
            Counter::TcGsoSegments => "tc-gso-segments",
            Counter::TcRedirectFailed => "tc-redirect-failed",
            Counter::TcBypassed => "tc-bypassed",
            Counter::TcUnconfigured => "tc-unconfigured",
            Counter::TcDeclineNotToGateway => "tc-decline-not-to-gateway",
            Counter::TcDeclineOtherProtocol => "tc-decline-other-protocol",
            Counter::TcDeclineOptions => "tc-decline-options",
            Counter::TcDeclineSpoofedSource => "tc-decline-spoofed-source",
            Counter::TcDeclineTtlExpiring => "tc-decline-ttl-expiring",
            Counter::TcDeclineInSubnet => "tc-decline-in-subnet",
            Counter::TcDeclineHostFirewall => "tc-decline-host-firewall",
            Counter::TcDeclineNotForwarded => "tc-decline-not-forwarded",
            Counter::TcDeclineNotViaUplink => "tc-decline-not-via-uplink",
            Counter::TcDeclineTooBig => "tc-decline-too-big",
            Counter::TcDeclineTruncated => "tc-decline-truncated",
            Counter::TcDeclineNotForUs => "tc-decline-not-for-us",
            Counter::TcDeclineNoSession => "tc-decline-no-session",
            Counter::TcDeclineSlow => "tc-decline-slow",
            Counter::TcCreated => "tc-created",
            Counter::TcDeclineExhausted => "tc-decline-exhausted",
            Counter::TcIcmpError => "tc-icmp-error",
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

/// The Internet checksum's incremental arithmetic (RFC 1624), shared so that the XDP
/// program's in-place rewrites and the userspace translator compute exactly the same
/// value. Written without loops, as the verifier prefers.
pub mod checksum {
    /// Folds a 32-bit ones' complement sum to 16 bits (end-around carry). Two rounds
    /// fold any `u32`: the first leaves at most 0x1fffe, the second at most 0xffff.
    #[inline(always)]
    pub const fn fold(mut sum: u32) -> u16 {
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        sum as u16
    }

    /// RFC 1624 equation 3 for one 16-bit word: `HC' = ~(~HC + ~m + m')`.
    #[inline(always)]
    pub const fn update16(hc: u16, old: u16, new: u16) -> u16 {
        !fold((!hc) as u32 + (!old) as u32 + new as u32)
    }

    /// RFC 1624 equation 3 with the old and new contents given as unfolded sums (e.g. a
    /// region summed before and after it was rewritten in place).
    #[inline(always)]
    pub const fn update_sums(hc: u16, old_sum: u32, new_sum: u32) -> u16 {
        !fold((!hc) as u32 + (!fold(old_sum)) as u32 + fold(new_sum) as u32)
    }

    /// Whether a TCP/UDP checksum field holds only the pseudo-header sum, as a frame
    /// with `CHECKSUM_PARTIAL` (transmit offload) carries it: Linux writes
    /// `~tcp_v4_check(len, saddr, daddr, 0)`, the folded, non-complemented pseudo-header
    /// sum. Compared in ones' complement arithmetic, where 0x0000 and 0xffff are both
    /// zero.
    #[inline(always)]
    pub const fn is_partial(field: u16, pseudo_sum: u32) -> bool {
        const fn norm(v: u16) -> u16 {
            if v == 0 {
                0xffff
            } else {
                v
            }
        }
        norm(field) == norm(fold(pseudo_sum))
    }
}

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

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(core::mem::align_of::<IfaceConfig>(), 4);
        assert_eq!(core::mem::offset_of!(IfaceConfig, gateway_mac), 32);
        assert_eq!(core::mem::offset_of!(PortKey, port), 4);
        assert_eq!(core::mem::offset_of!(PortKey, proto), 6);
        assert_eq!(core::mem::offset_of!(FlowKey, sport), 12);
        assert_eq!(core::mem::offset_of!(FlowKey, proto), 16);
        assert_eq!(core::mem::offset_of!(FlowAction, out_ifindex), 12);
        assert_eq!(core::mem::offset_of!(FlowAction, max_len), 28);
        assert_eq!(core::mem::offset_of!(FlowAction, last_seen), 32);
        assert_eq!(core::mem::align_of::<FlowAction>(), 8);
        assert_eq!(core::mem::offset_of!(FragKey, id), 12);
        assert_eq!(core::mem::offset_of!(FragKey, proto), 14);
        assert_eq!(core::mem::offset_of!(CtEntry, created), 56);
        assert_eq!(core::mem::offset_of!(CtEntry, flags), 64);
        assert_eq!(core::mem::offset_of!(CtEntry, owner), 68);
        assert_eq!(core::mem::align_of::<CtEntry>(), 8);
    }

    #[test]
    fn port_key_byte_orders() {
        let key = PortKey::new([192, 0, 2, 1], 0x1f90, PROTO_TCP);
        // SAFETY: PortKey is repr(C) with no padding; reading its 8 bytes is sound.
        let bytes: [u8; 8] = unsafe { core::mem::transmute(key) };
        assert_eq!(bytes, [192, 0, 2, 1, 0x1f, 0x90, 6, 0]);
        assert_eq!(key.port_host(), 0x1f90);
        assert_eq!(addr_octets(key.addr), [192, 0, 2, 1]);
    }

    #[test]
    fn host_firewall_matches() {
        let any = HostFwMatch::default();
        assert!(any.covers(PROTO_ICMP, None));
        let tcp = HostFwMatch {
            proto: PROTO_TCP,
            port_lo: 7001,
            port_hi: 7002,
            ..Default::default()
        };
        assert!(tcp.covers(PROTO_TCP, Some(7001)) && tcp.covers(PROTO_TCP, Some(7002)));
        assert!(!tcp.covers(PROTO_TCP, Some(7000)));
        assert!(!tcp.covers(PROTO_UDP, Some(7001)));
        assert!(!tcp.covers(PROTO_ICMP, None));
        assert!(tcp.covers(PROTO_TCP, None));
    }

    #[test]
    fn subnets() {
        let cfg = IfaceConfig {
            subnet: be_addr([10, 1, 0, 0]),
            netmask: be_addr([255, 255, 0, 0]),
            ..Default::default()
        };
        assert!(cfg.in_subnet(be_addr([10, 1, 200, 3])));
        assert!(!cfg.in_subnet(be_addr([10, 2, 0, 1])));
    }

    #[test]
    fn decision_names_are_prefixed() {
        for c in Counter::ALL {
            let name = c.name();
            let endpoint = format!("{c:?}").starts_with("Endpoint");
            let uplink = format!("{c:?}").starts_with("Uplink");
            let tc = format!("{c:?}").starts_with("Tc");
            assert_eq!(endpoint, name.starts_with("endpoint-"), "{name}");
            assert_eq!(uplink, name.starts_with("uplink-"), "{name}");
            assert_eq!(tc, name.starts_with("tc-"), "{name}");
            let decline = format!("{c:?}").starts_with("TcDecline");
            assert_eq!(decline, name.starts_with("tc-decline-"), "{name}");
        }
    }
}
