//! The tc engine's programs for established flows (`docs/design/nat-fast-tc.md` §2.2),
//! for tcx ingress: `dovesnap_tc_endpoint` on a container's host end (`ovst<id>`) and
//! `dovesnap_tc_uplink` on the uplink. They share the XDP program's maps (`IFACES`,
//! `STATE`, `HOSTFW`, `SESSIONS`, `PORTS`, `STATS`) and add `CT`, `NAT_CFG` and
//! `PUBLISHED`.
//!
//! The endpoint program makes the sessions of new TCP connections (at the SYN) and of
//! UDP flows routed out of the uplink itself, claiming an external port of `NAT_CFG`'s
//! range (see `create`); userspace collects them when they end. A frame of a `CT` session is rewritten with the kernel's checksum helpers (correct for
//! every `ip_summed`, GSO super-packets included) in the translator's order, so that
//! complete-checksum bytes equal the translator's, and redirected: out with
//! `bpf_redirect_neigh` (the kernel fills the L2 header), in with `bpf_redirect_peer`
//! into the container's namespace. Every other frame returns `TCX_NEXT`, the kernel's
//! path (on an endpoint, the legacy patch into OVS), counted by its reason. What the
//! design sends to the translator's slow port counts `tc-decline-slow` and, until that
//! port exists, also returns `TCX_NEXT`.

use aya_ebpf::{
    bindings::{
        tcx_action_base::{TCX_DROP, TCX_NEXT, TCX_REDIRECT},
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM, BPF_NOEXIST,
    },
    helpers::bpf_ktime_get_ns,
    helpers::generated::{
        bpf_check_mtu, bpf_get_prandom_u32, bpf_redirect_neigh, bpf_redirect_peer,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap},
    programs::TcContext,
    EbpfContext as _,
};
use dovesnap_ebpf::{
    checksum::{update16, update_sums},
    Counter, CtEntry, FlowAction, FlowKey, FragKey, IfaceConfig, NatConfig, PortKey, CT_FIN,
    CT_OWNER_KERNEL, CT_RST, CT_SEEN, CT_SYN, CT_SYN_ACK, FRAG_LIFETIME_NS, IFACE_ENDPOINT,
    IFACE_UPLINK, MAX_CT, MAX_FRAGS, MAX_PUBLISHED, NAT_PROBES, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
    STATE_BYPASS,
};

use super::{
    add, classify, count, endpoint_checks, far_port, host_filtered, owns_flow, owns_icmp, ptr_at,
    route, sum_addr, update_addr, EthHdr, IcmpHdr, Ipv4Hdr, Piece, Ports, Route, TcpHdr, UdpHdr,
    BPF_F_NO_PREALLOC, ICMP_DEST_UNREACH, ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED, IFACES,
    INNER_L3, INNER_L4, L3, L4, STATE, STATS, TCP_FIN, TCP_RST, TCP_SYN,
};

/// The tc engine's sessions, two entries each (see `dovesnap_ebpf::CT_MAP`).
#[map]
static CT: HashMap<FlowKey, CtEntry> = HashMap::with_max_entries(MAX_CT, BPF_F_NO_PREALLOC);

/// Container ports the kernel's DNAT publishes (see `dovesnap_ebpf::PUBLISHED_MAP`).
#[map]
static PUBLISHED: HashMap<PortKey, u32> = HashMap::with_max_entries(MAX_PUBLISHED, 0);

/// The ports `dovesnap_tc_endpoint` claims for the sessions it creates (entry 0).
#[map]
static NAT_CFG: Array<NatConfig> = Array::with_max_entries(1, 0);

/// Bytes made linear before the headers are read: Ethernet, IPv4 without options and
/// the longest TCP header.
const HEADERS: u32 = (L4 + 60) as u32;
/// Offset of the IPv4 header checksum, TTL, source and destination.
const IP_CSUM: usize = L3 + 10;
const IP_TTL: usize = L3 + 8;
const IP_SRC: usize = L3 + 12;
const IP_DST: usize = L3 + 16;
const TCP_ACK: u8 = 0x10;

/// What a tc program does with a frame.
#[derive(Clone, Copy)]
enum Verdict {
    /// `TCX_NEXT`, counting why.
    Next(Counter),
    /// Rewritten: redirect out of this ifindex with `bpf_redirect_neigh`.
    Out(u32),
    /// Rewritten: redirect to the peer of this ifindex with `bpf_redirect_peer`.
    In(u32),
}

/// Container -> far: a `CT` session's frame is rewritten and sent to the uplink.
#[classifier]
pub fn dovesnap_tc_endpoint(ctx: TcContext) -> i32 {
    finish(&ctx, endpoint(&ctx))
}

/// Far -> container: a `CT` session's reply is rewritten and sent into the container.
#[classifier]
pub fn dovesnap_tc_uplink(ctx: TcContext) -> i32 {
    finish(&ctx, uplink(&ctx))
}

/// Counts the verdict and carries it out.
#[inline(always)]
fn finish(ctx: &TcContext, verdict: Verdict) -> i32 {
    let (ret, decision) = match verdict {
        Verdict::Next(why) => (TCX_NEXT, why),
        // SAFETY: raw helpers with plain integer arguments; a null `params` with length
        // 0 makes `bpf_redirect_neigh` look the next hop up itself (route by the
        // rewritten destination out of `ifindex`, then the neighbour).
        Verdict::Out(ifindex) => (
            unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32,
            Counter::TcOut,
        ),
        // SAFETY: as above.
        Verdict::In(ifindex) => (
            unsafe { bpf_redirect_peer(ifindex, 0) } as i32,
            Counter::TcIn,
        ),
    };
    if decision == Counter::TcOut || decision == Counter::TcIn {
        if ret != TCX_REDIRECT {
            // Already rewritten: the kernel must not see it as it is now.
            let _ = count(Counter::TcRedirectFailed);
            return TCX_DROP;
        }
        // SAFETY: `skb` is the program's own `__sk_buff`, readable for its whole run.
        let segs = unsafe { (*ctx.skb.skb).gso_segs };
        if segs > 1 {
            let _ = count(Counter::TcGsoFrames);
            add(&STATS, Counter::TcGsoSegments.index(), u64::from(segs));
        }
    }
    let _ = count(decision);
    ret
}

/// The interface's configuration if it is of `kind`, and the data plane is not
/// bypassed; the headers made linear.
#[inline(always)]
fn configured(ctx: &TcContext, kind: u32) -> Result<IfaceConfig, Verdict> {
    // SAFETY: `skb` is the program's own `__sk_buff`.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out at once.
    let cfg = match unsafe { IFACES.get(&ifindex) } {
        Some(cfg) if cfg.kind == kind => *cfg,
        _ => return Err(Verdict::Next(Counter::TcUnconfigured)),
    };
    if STATE.get(0).is_some_and(|s| s & STATE_BYPASS != 0) {
        return Err(Verdict::Next(Counter::TcBypassed));
    }
    // A GRO skb may hold its headers outside the linear area; a short frame pulls what
    // it has. Failure leaves the frame as it was: the header reads below then decline.
    let want = if ctx.len() < HEADERS {
        ctx.len()
    } else {
        HEADERS
    };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        let _ = ctx.skb.pull_data(want);
    }
    Ok(cfg)
}

/// The transport facts of a whole TCP/UDP packet, read before any rewrite (helpers
/// that change the packet invalidate every pointer into it).
struct Flow {
    key: FlowKey,
    /// IPv4 total length.
    tot_len: u16,
    ttl: u8,
    /// Offset of the TCP/UDP checksum.
    csum_at: usize,
    /// TCP flags (0 for UDP).
    tcp_flags: u8,
}

/// Reads a whole TCP/UDP packet's flow as it arrives on `ifindex` (0: the uplink), or
/// declines a frame whose lengths do not fit.
#[inline(always)]
fn read_flow(ctx: &TcContext, ip: &Ipv4Hdr, ifindex: u32) -> Result<Flow, Verdict> {
    let truncated = Verdict::Next(Counter::TcDeclineTruncated);
    let tot_len = u16::from_be_bytes(ip.tot_len);
    let l4_len = usize::from(tot_len)
        .checked_sub(core::mem::size_of::<Ipv4Hdr>())
        .ok_or(truncated)?;
    if L3 + usize::from(tot_len) > ctx.len() as usize {
        return Err(truncated);
    }
    let (csum_at, tcp_flags) = if ip.proto == PROTO_TCP {
        let tcp = ptr_at::<TcpHdr>(ctx, L4).ok_or(truncated)?;
        let off = usize::from(tcp.data_off >> 4) * 4;
        if off < core::mem::size_of::<TcpHdr>() || off > l4_len {
            return Err(truncated);
        }
        (L4 + 16, tcp.flags)
    } else {
        let udp = ptr_at::<UdpHdr>(ctx, L4).ok_or(truncated)?;
        let len = usize::from(u16::from_be_bytes(udp.len));
        if len < core::mem::size_of::<UdpHdr>() || len > l4_len {
            return Err(truncated);
        }
        (L4 + 6, 0)
    };
    let ports = ptr_at::<Ports>(ctx, L4).ok_or(truncated)?;
    Ok(Flow {
        key: FlowKey {
            ifindex,
            src: u32::from_ne_bytes(ip.src),
            dst: u32::from_ne_bytes(ip.dst),
            sport: u16::from_ne_bytes(ports.src),
            dport: u16::from_ne_bytes(ports.dst),
            proto: ip.proto,
            _pad: [0; 3],
        },
        tot_len,
        ttl: ip.ttl,
        csum_at,
        tcp_flags,
    })
}

#[inline(always)]
fn endpoint(ctx: &TcContext) -> Verdict {
    let cfg = match configured(ctx, IFACE_ENDPOINT) {
        Ok(cfg) => cfg,
        Err(v) => return v,
    };
    let ip = match endpoint_checks(ctx, &cfg, classify(ctx)) {
        Ok(ip) => ip,
        Err(check) => return Verdict::Next(check.tc()),
    };
    // SAFETY: `skb` is the program's own `__sk_buff`.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // An ICMP error about a session's packet goes out translated; other ICMP and
    // fragments are the slow path's.
    if ip.piece() == Piece::Whole && ip.proto == PROTO_ICMP {
        let ttl = ip.ttl;
        if let Some(v) = icmp_error(ctx, cfg.addr, ttl, ifindex) {
            return v;
        }
    }
    if ip.piece() != Piece::Whole || ip.proto == PROTO_ICMP {
        return Verdict::Next(Counter::TcDeclineSlow);
    }
    let flow = match read_flow(ctx, ip, ifindex) {
        Ok(flow) => flow,
        Err(v) => return v,
    };
    if let Some(entry) = CT.get_ptr_mut(&flow.key) {
        return forward(ctx, entry, &flow, true);
    }
    // No session: only what the kernel routes out of the uplink is NAT traffic; `tot_len`
    // 0 checks the MTU on the skb, which is GSO-aware.
    match route(ctx.as_ptr(), &cfg, ip, 0) {
        Route::Uplink => {}
        Route::TooBig => return Verdict::Next(Counter::TcDeclineTooBig),
        Route::NotForwarded => return Verdict::Next(Counter::TcDeclineNotForwarded),
        Route::NotViaUplink => return Verdict::Next(Counter::TcDeclineNotViaUplink),
    }
    // A TCP connection's first packet, or a UDP datagram, makes its session here;
    // anything else without one (a TCP flow the kernel's masquerade already carries, a
    // stray segment, the answers of a published port) is the slow path's.
    let first = match flow.key.proto {
        PROTO_TCP => flow.tcp_flags & (TCP_SYN | TCP_ACK | TCP_FIN | TCP_RST) == TCP_SYN,
        _ => true,
    };
    if !first || published(&flow.key) {
        return Verdict::Next(Counter::TcDeclineSlow);
    }
    match create(ctx, &cfg, &flow) {
        Ok(entry) => {
            let _ = count(Counter::TcCreated);
            forward(ctx, entry, &flow, true)
        }
        Err(v) => v,
    }
}

/// Makes the session of a connection's first packet, Cilium-style: an external port of
/// `NAT_CFG`'s range is claimed by inserting the reply direction's `CT` key with
/// `BPF_NOEXIST` (from a random start, at most `NAT_PROBES` tries), then the outbound
/// key is written. Returns the outbound entry. Declines when creation is off, the
/// uplink is not configured, no port is free or `CT` is full: the kernel's masquerade
/// then carries the connection.
#[inline(always)]
fn create(ctx: &TcContext, cfg: &IfaceConfig, flow: &Flow) -> Result<*mut CtEntry, Verdict> {
    let exhausted = Verdict::Next(Counter::TcDeclineExhausted);
    let nat = match NAT_CFG.get(0) {
        Some(nat) if nat.first != 0 && nat.last >= nat.first => *nat,
        _ => return Err(Verdict::Next(Counter::TcDeclineSlow)),
    };
    // SAFETY: the value is copied out at once.
    let ext = match unsafe { IFACES.get(&cfg.uplink_ifindex) } {
        Some(up) if up.kind == IFACE_UPLINK => up.addr,
        _ => return Err(Verdict::Next(Counter::TcUnconfigured)),
    };
    let container_mac = match ptr_at::<EthHdr>(ctx, 0) {
        Some(eth) => eth.src,
        None => return Err(Verdict::Next(Counter::TcDeclineTruncated)),
    };
    let k = flow.key;
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let entry = |act: FlowAction| CtEntry {
        act,
        created: now,
        flags: 0,
        owner: CT_OWNER_KERNEL,
        _pad: [0; 3],
    };
    let inbound = entry(FlowAction {
        dst: k.src,
        dport: k.sport,
        out_ifindex: k.ifindex,
        eth_dst: container_mac,
        eth_src: cfg.gateway_mac,
        max_len: mtu(ctx, k.ifindex),
        ..FlowAction::default()
    });
    let span = u32::from(nat.last - nat.first) + 1;
    // SAFETY: no arguments.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    let mut claimed = None;
    for i in 0..NAT_PROBES {
        let port = (nat.first as u32 + (start + i) % span) as u16;
        let key = FlowKey {
            ifindex: 0,
            src: k.dst,
            dst: ext,
            sport: k.dport,
            dport: port.to_be(),
            proto: k.proto,
            _pad: [0; 3],
        };
        if CT.insert(&key, &inbound, BPF_NOEXIST.into()).is_ok() {
            claimed = Some(key);
            break;
        }
    }
    let Some(reply) = claimed else {
        return Err(exhausted);
    };
    let outbound = entry(FlowAction {
        src: ext,
        sport: reply.dport,
        out_ifindex: cfg.uplink_ifindex,
        max_len: mtu(ctx, cfg.uplink_ifindex),
        ..FlowAction::default()
    });
    if CT.insert(&k, &outbound, BPF_NOEXIST.into()).is_err() {
        // Another CPU made this flow's session first (or `CT` is full): give the
        // port back and use theirs.
        let _ = CT.remove(&reply);
    }
    CT.get_ptr_mut(&k).ok_or(exhausted)
}

/// An ICMP error (destination unreachable, time exceeded, parameter problem) quoting a
/// `CT` session's packet, translated as the translator does it (RFC 5508) and sent on:
/// `ifindex` 0 is the uplink (the quote was sent from the external address: the outer
/// destination and the quoted source become the container's address and port), else
/// the container's host end (the quote was sent to `addr`, the container: the outer
/// source and the quoted destination become the external address and port). The outer
/// TTL and IPv4 checksum, the quoted IPv4 checksum, the quoted TCP/UDP checksum when
/// the quote holds it, and the ICMP checksum follow. `None`: not such an error, the
/// frame untouched.
#[inline(always)]
fn icmp_error(ctx: &TcContext, addr: u32, ttl: u8, ifindex: u32) -> Option<Verdict> {
    let inbound = ifindex == 0;
    let icmp = ptr_at::<IcmpHdr>(ctx, L4)?;
    if !matches!(
        icmp.kind,
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
    ) {
        return None;
    }
    let icmp_csum = u16::from_be_bytes(icmp._check);
    let inner = ptr_at::<Ipv4Hdr>(ctx, INNER_L3)?;
    let (inner_src, inner_dst) = (u32::from_ne_bytes(inner.src), u32::from_ne_bytes(inner.dst));
    let ours = if inbound { inner_src } else { inner_dst };
    if !inner.is_plain()
        || inner.piece() == Piece::Later
        || ours != addr
        || !matches!(inner.proto, PROTO_TCP | PROTO_UDP)
    {
        return None;
    }
    let proto = inner.proto;
    let inner_csum = u16::from_be_bytes(inner.check);
    let quote = ptr_at::<[u8; 8]>(ctx, INNER_L4)?;
    let (qsrc, qdst) = (
        u16::from_ne_bytes([quote[0], quote[1]]),
        u16::from_ne_bytes([quote[2], quote[3]]),
    );
    // The quoted transport checksum, when the quote holds it (UDP: not "none").
    let l4_csum_at = if proto == PROTO_TCP {
        INNER_L4 + 16
    } else {
        INNER_L4 + 6
    };
    let l4_csum = match ptr_at::<[u8; 2]>(ctx, l4_csum_at) {
        Some(c) if proto == PROTO_TCP || u16::from_ne_bytes(*c) != 0 => {
            Some(u16::from_be_bytes(*c))
        }
        _ => None,
    };
    // The session of the quoted packet, keyed as a packet opposite to it arrives here
    // (inbound: the remote's reply; outbound: the container's next packet).
    let key = FlowKey {
        ifindex,
        src: inner_dst,
        dst: inner_src,
        sport: qdst,
        dport: qsrc,
        proto,
        _pad: [0; 3],
    };
    // SAFETY: the value is copied out at once.
    let act = unsafe { CT.get(&key) }?.act;
    if ttl <= 1 {
        return Some(Verdict::Next(Counter::TcDeclineTtlExpiring));
    }
    let (outer_at, inner_at, port_at, new_addr, old_port, new_port) = if inbound {
        (IP_DST, INNER_L3 + 12, INNER_L4, act.dst, qsrc, act.dport)
    } else {
        (
            IP_SRC,
            INNER_L3 + 16,
            INNER_L4 + 2,
            act.src,
            qdst,
            act.sport,
        )
    };
    let (old_b, new_b) = (addr.to_ne_bytes(), new_addr.to_ne_bytes());
    let (old_p, new_p) = (u16::from_be(old_port), u16::from_be(new_port));
    let new_inner_csum = update_addr(inner_csum, old_b, new_b);
    let new_l4_csum = l4_csum.map(|c| {
        let c = update16(update_addr(c, old_b, new_b), old_p, new_p);
        if proto == PROTO_UDP && c == 0 {
            0xffff
        } else {
            c
        }
    });
    // The ICMP checksum over the rewritten words of the quote.
    let mut old_sum = sum_addr(old_b) + u32::from(inner_csum) + u32::from(old_p);
    let mut new_sum = sum_addr(new_b) + u32::from(new_inner_csum) + u32::from(new_p);
    if let (Some(o), Some(n)) = (l4_csum, new_l4_csum) {
        old_sum += u32::from(o);
        new_sum += u32::from(n);
    }
    let new_icmp_csum = update_sums(icmp_csum, old_sum, new_sum);
    let rewritten = (|| -> Result<(), i64> {
        let recompute = u64::from(BPF_F_RECOMPUTE_CSUM);
        ctx.skb
            .store(L4 + 2, &new_icmp_csum.to_be_bytes(), recompute)?;
        ctx.skb
            .store(INNER_L3 + 10, &new_inner_csum.to_be_bytes(), recompute)?;
        ctx.skb.store(inner_at, &new_b, recompute)?;
        ctx.skb.store(port_at, &new_port.to_ne_bytes(), recompute)?;
        if let Some(c) = new_l4_csum {
            ctx.skb.store(l4_csum_at, &c.to_be_bytes(), recompute)?;
        }
        Ok(())
    })();
    // Then the outer header, stopping at the first error.
    let rewritten = rewritten.is_ok()
        && rewrite_ipv4(ctx, ttl, PROTO_ICMP, outer_at, addr, new_addr).is_ok()
        && (!inbound || set_macs(ctx, &act).is_ok());
    if !rewritten {
        return Some(Verdict::Next(Counter::TcDeclineSlow));
    }
    let _ = count(Counter::TcIcmpError);
    Some(if inbound {
        Verdict::In(act.out_ifindex)
    } else {
        Verdict::Out(act.out_ifindex)
    })
}

/// A datagram whose first fragment a tc program forwarded: its session's `CT` key and
/// when the first fragment came (`bpf_ktime_get_ns`).
#[repr(C)]
#[derive(Clone, Copy)]
struct TcFrag {
    session: FlowKey,
    _pad: u32,
    created: u64,
}

/// Fragmented datagrams of `CT` sessions arriving on the uplink, by their first
/// fragment's (`ifindex` 0, source, destination, id, protocol).
#[map]
static TC_FRAGS: LruHashMap<FragKey, TcFrag> = LruHashMap::with_max_entries(MAX_FRAGS, 0);

/// A fragment arriving on the uplink: a first fragment of a `CT` session's datagram is
/// rewritten like a whole packet (its transport checksum covers the whole datagram, so
/// the incremental update stays right) and its datagram recorded; a later fragment of a
/// recorded datagram gets the new destination address and goes the same way (the
/// container reassembles). Others (a later fragment ahead of its first, the
/// translator's) are the slow path's.
#[inline(always)]
fn fragment(ctx: &TcContext, ip: &Ipv4Hdr, first: bool) -> Verdict {
    let slow = Verdict::Next(Counter::TcDeclineSlow);
    let frag = ip.frag_key(0);
    let ttl = ip.ttl;
    if !matches!(ip.proto, PROTO_TCP | PROTO_UDP) {
        return slow;
    }
    if ttl <= 1 {
        return Verdict::Next(Counter::TcDeclineTtlExpiring);
    }
    // SAFETY: no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let (session, ports, csum_at) = if first {
        let Some(ports) = ptr_at::<Ports>(ctx, L4) else {
            return Verdict::Next(Counter::TcDeclineTruncated);
        };
        let (sport, dport) = (u16::from_ne_bytes(ports.src), u16::from_ne_bytes(ports.dst));
        let csum_at = if ip.proto == PROTO_TCP {
            L4 + 16
        } else {
            L4 + 6
        };
        if ptr_at::<[u8; 2]>(ctx, csum_at).is_none() {
            return Verdict::Next(Counter::TcDeclineTruncated);
        }
        let session = FlowKey {
            ifindex: 0,
            src: frag.src,
            dst: frag.dst,
            sport,
            dport,
            proto: frag.proto,
            _pad: [0; 3],
        };
        (session, true, csum_at)
    } else {
        // SAFETY: the value is copied out at once.
        match unsafe { TC_FRAGS.get(&frag) } {
            Some(f) if now.wrapping_sub(f.created) < FRAG_LIFETIME_NS => (f.session, false, 0),
            _ => return slow,
        }
    };
    // SAFETY: the value is copied out at once.
    let Some(act) = (unsafe { CT.get(&session) }).map(|e| e.act) else {
        return slow;
    };
    let flow = Flow {
        key: session,
        tot_len: 0,
        ttl,
        csum_at,
        tcp_flags: 0,
    };
    let rewritten = if ports {
        rewrite(ctx, &act, &flow, false)
    } else {
        // No closure (`and_then`): the verifier would see a call and its stack.
        match rewrite_ipv4(ctx, ttl, frag.proto, IP_DST, frag.dst, act.dst) {
            Ok(()) => set_macs(ctx, &act),
            Err(e) => Err(e),
        }
    };
    if rewritten.is_err() {
        return slow;
    }
    if ports {
        let entry = TcFrag {
            session,
            _pad: 0,
            created: now,
        };
        let _ = TC_FRAGS.insert(&frag, &entry, 0);
    }
    Verdict::In(act.out_ifindex)
}

/// Whether the flow leaves a container port the kernel's DNAT publishes.
#[inline(always)]
fn published(k: &FlowKey) -> bool {
    let key = PortKey {
        addr: k.src,
        port: k.sport,
        proto: k.proto,
        _pad: 0,
    };
    // SAFETY: only the presence of the key is used.
    unsafe { PUBLISHED.get(&key) }.is_some()
}

/// The MTU of `ifindex` (its L3 size, as an IPv4 total length), or the largest length
/// when the kernel cannot say (the frame is then never declined as too big).
#[inline(always)]
fn mtu(ctx: &TcContext, ifindex: u32) -> u16 {
    let mut mtu: u32 = 0;
    // SAFETY: `ctx` is the program's own `__sk_buff`; `mtu` is a valid, writable u32
    // (0: check the skb's own length; the MTU is written back whatever the verdict).
    let ret = unsafe { bpf_check_mtu(ctx.as_ptr(), ifindex, &mut mtu, 0, 0) };
    if ret < 0 || mtu == 0 || mtu > u32::from(u16::MAX) {
        u16::MAX
    } else {
        mtu as u16
    }
}

#[inline(always)]
fn uplink(ctx: &TcContext) -> Verdict {
    let cfg = match configured(ctx, IFACE_UPLINK) {
        Ok(cfg) => cfg,
        Err(v) => return v,
    };
    let not_ours = Verdict::Next(Counter::TcDeclineNotForUs);
    if !matches!(classify(ctx), Counter::Ipv4) {
        return not_ours;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, L3) else {
        return not_ours;
    };
    if u32::from_ne_bytes(ip.dst) != cfg.addr {
        return not_ours;
    }
    if !ip.is_plain() {
        return Verdict::Next(Counter::TcDeclineOptions);
    }
    let piece = ip.piece();
    let remote = u32::from_ne_bytes(ip.src);
    if piece != Piece::Later && host_filtered(ip.proto, remote, far_port(ctx, ip.proto, false)) {
        return Verdict::Next(Counter::TcDeclineHostFirewall);
    }
    // A fragment of a `CT` session's datagram follows its first fragment; any other
    // goes to the translator, which knows whose datagram each one is.
    if piece != Piece::Whole {
        return fragment(ctx, ip, piece == Piece::First);
    }
    match ip.proto {
        PROTO_TCP | PROTO_UDP => {}
        PROTO_ICMP => {
            // An error about a `CT` session is translated here; the translator's own
            // ICMP is the slow path's.
            let ttl = ip.ttl;
            if let Some(v) = icmp_error(ctx, cfg.addr, ttl, 0) {
                return v;
            }
            return Verdict::Next(if owns_icmp(ctx, &cfg, remote) {
                Counter::TcDeclineSlow
            } else {
                Counter::TcDeclineNoSession
            });
        }
        _ => return Verdict::Next(Counter::TcDeclineNoSession),
    }
    let flow = match read_flow(ctx, ip, 0) {
        Ok(flow) => flow,
        Err(v) => return v,
    };
    let Some(entry) = CT.get_ptr_mut(&flow.key) else {
        let (port, rport) = (flow.key.dport.to_ne_bytes(), flow.key.sport.to_ne_bytes());
        return if owns_flow(&cfg, flow.key.proto, port, remote, rport) {
            Verdict::Next(Counter::TcDeclineSlow)
        } else {
            Verdict::Next(Counter::TcDeclineNoSession)
        };
    };
    if flow.ttl <= 1 {
        return Verdict::Next(Counter::TcDeclineTtlExpiring);
    }
    forward(ctx, entry, &flow, false)
}

/// A session's frame: checks it fits the output, rewrites it (`outbound`: the source,
/// else the destination and the MACs), records this direction's state and returns
/// where it goes.
#[inline(always)]
fn forward(ctx: &TcContext, entry: *mut CtEntry, flow: &Flow, outbound: bool) -> Verdict {
    // SAFETY: a pointer from a successful lookup stays valid for this run (RCU); the
    // rewrite fields are written once by userspace before the entry is inserted.
    let act = unsafe { (*entry).act };
    // SAFETY: `skb` is the program's own `__sk_buff`.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    if !gso && flow.tot_len > act.max_len {
        return Verdict::Next(Counter::TcDeclineTooBig);
    }
    if rewrite(ctx, &act, flow, outbound).is_err() {
        // The slow port's job: the kernel would pick another port for a session's frame.
        return Verdict::Next(Counter::TcDeclineSlow);
    }
    let mut seen = CT_SEEN;
    if flow.tcp_flags & TCP_SYN != 0 {
        seen |= if flow.tcp_flags & TCP_ACK != 0 {
            CT_SYN_ACK
        } else {
            CT_SYN
        };
    }
    if flow.tcp_flags & TCP_FIN != 0 {
        seen |= CT_FIN;
    }
    if flow.tcp_flags & TCP_RST != 0 {
        seen |= CT_RST;
    }
    // SAFETY: as above. Plain stores: this direction's program is the only writer of
    // these fields (two CPUs forwarding the same direction at once may lose a count;
    // flag bits only ever grow, and a lost one comes back with the next such frame).
    unsafe {
        core::ptr::write_volatile(&mut (*entry).act.last_seen, bpf_ktime_get_ns());
        let packets = core::ptr::read_volatile(&(*entry).act.packets);
        core::ptr::write_volatile(&mut (*entry).act.packets, packets + 1);
        let bytes = core::ptr::read_volatile(&(*entry).act.bytes);
        core::ptr::write_volatile(&mut (*entry).act.bytes, bytes + u64::from(ctx.len()));
        let flags = core::ptr::read_volatile(&(*entry).flags);
        if flags | seen != flags {
            core::ptr::write_volatile(&mut (*entry).flags, flags | seen);
        }
    }
    if outbound {
        Verdict::Out(act.out_ifindex)
    } else {
        Verdict::In(act.out_ifindex)
    }
}

/// The translator's rewrite with the kernel's helpers: the IPv4 header (`rewrite_ipv4`:
/// TTL and address with their checksum updates); the TCP/UDP checksum for the address
/// (pseudo header), then for the port (a UDP checksum of 0, "none", stays 0; a result of
/// 0 becomes 0xffff), and the port; inbound also the MACs. An error can leave the frame
/// partly rewritten.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    act: &dovesnap_ebpf::FlowAction,
    flow: &Flow,
    outbound: bool,
) -> Result<(), i64> {
    let k = &flow.key;
    let (addr_at, old_addr, new_addr, port_at, old_port, new_port) = if outbound {
        (IP_SRC, k.src, act.src, L4, k.sport, act.sport)
    } else {
        (IP_DST, k.dst, act.dst, L4 + 2, k.dport, act.dport)
    };
    let proto = k.proto;
    let mangled = if proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    rewrite_ipv4(ctx, flow.ttl, proto, addr_at, old_addr, new_addr)?;
    let pseudo = u64::from(BPF_F_PSEUDO_HDR);
    ctx.skb.l4_csum_replace(
        flow.csum_at,
        u64::from(old_addr),
        u64::from(new_addr),
        pseudo | mangled | 4,
    )?;
    ctx.skb.l4_csum_replace(
        flow.csum_at,
        u64::from(old_port),
        u64::from(new_port),
        mangled | 2,
    )?;
    ctx.skb.store(port_at, &new_port.to_ne_bytes(), 0)?;
    if !outbound {
        set_macs(ctx, act)?;
    }
    Ok(())
}

/// The IPv4 header's part of every rewrite: the TTL decremented and the address at
/// `addr_at` (source or destination) replaced, each with the header checksum.
#[inline(always)]
fn rewrite_ipv4(
    ctx: &TcContext,
    ttl: u8,
    proto: u8,
    addr_at: usize,
    old_addr: u32,
    new_addr: u32,
) -> Result<(), i64> {
    let new_ttl = ttl - 1;
    let old_tp = u16::from_ne_bytes([ttl, proto]);
    let new_tp = u16::from_ne_bytes([new_ttl, proto]);
    ctx.skb
        .l3_csum_replace(IP_CSUM, u64::from(old_tp), u64::from(new_tp), 2)?;
    ctx.skb
        .l3_csum_replace(IP_CSUM, u64::from(old_addr), u64::from(new_addr), 4)?;
    ctx.skb.store(IP_TTL, &new_ttl, 0)?;
    ctx.skb.store(addr_at, &new_addr.to_ne_bytes(), 0)
}

/// An inbound frame's Ethernet addresses: the container's and the gateway's.
#[inline(always)]
fn set_macs(ctx: &TcContext, act: &dovesnap_ebpf::FlowAction) -> Result<(), i64> {
    ctx.skb.store(0, &act.eth_dst, 0)?;
    ctx.skb.store(6, &act.eth_src, 0)
}
