//! Loading and attaching the embedded XDP program (`dovesnap-ebpf`).
//!
//! The eBPF object is built by `build.rs` (aya-build) and embedded in the binary, so a
//! dovesnap binary always carries the program it was built with. [`XdpProgram`] owns
//! the loaded program and every attachment it made: [`XdpProgram::attach`] tries native
//! (driver) XDP first and falls back to generic (SKB) XDP, [`XdpProgram::counters`]
//! reads the program's per-CPU statistics, and dropping the value detaches everything.
//!
//! The nat-fast steering is configured through three maps (see `dovesnap-ebpf`):
//! [`XdpProgram::set_iface`] and friends fill `IFACES` (which interfaces are endpoints or
//! uplinks), and [`XdpProgram::take_dataplane_maps`] hands `PORTS` and `XSKS` to the
//! translator thread as a [`DataplaneMaps`]. Interfaces not in `IFACES` see the program
//! classify, count and pass, nothing else.
//!
//! Behind features, for the other crates of the workspace only: `XdpSink` (`sink`,
//! feature `bench`), the benchmark's counting sink, a second program in the same object
//! that the plugin never loads; what the integration tests read of the program
//! (`testing`, feature `testing`): `XdpProgram::test_run`, `XdpProgram::ifaces`, and
//! per-direction sums and diffs of [`Counters`].
//!
//! Nothing is pinned to bpffs: the program lives exactly as long as the `XdpProgram`
//! (the maps as long as the last of it and its `DataplaneMaps`).

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::os::fd::AsRawFd;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, DevMapHash, HashMap, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
pub use dovesnap_ebpf::MAX_STEERED_SESSIONS;
pub use dovesnap_ebpf::{
    addr_octets, be_addr, Counter, CtEntry, FlowAction, FlowKey, HostFwMatch, IfaceConfig,
    NatConfig, PortKey, CT_FIN, CT_OWNER_ADOPTED, CT_OWNER_KERNEL, CT_OWNER_TRANSLATOR, CT_RST,
    CT_SEEN, CT_SYN, CT_SYN_ACK, IFACE_ENDPOINT, IFACE_UPLINK, MAX_HOSTFW, MAX_XSKS, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP,
};
use dovesnap_ebpf::{
    CT_MAP, DEVS_MAP, FLOWS_MAP, HOSTFW_MAP, HOSTFW_ON_MAP, IFACES_MAP, NAT_CFG_MAP, PORTS_MAP,
    PROGRAM_NAME, SESSIONS_MAP, STATE_BYPASS, STATE_MAP, STATS_MAP, XSKS_MAP,
};
use thiserror::Error;

mod batch;
#[cfg(any(test, feature = "bench"))]
mod sink;
mod tc;
pub use tc::{tcx_ingress_programs, TcProgram};
#[cfg(any(test, feature = "testing"))]
pub use testing::TcRun;
#[cfg(any(test, feature = "testing"))]
mod testing;
#[cfg(any(test, feature = "bench"))]
pub use sink::XdpSink;

/// The eBPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dovesnap-ebpf"))
}

use crate::host::ifname::IFNAME_MAX;

/// Everything that can go wrong loading, attaching or reading the XDP program.
#[derive(Debug, Error)]
pub enum XdpError {
    /// The binary was built with `AYA_BUILD_SKIP`, so it has no program to load.
    #[error(
        "this dovesnap was built without its XDP program (AYA_BUILD_SKIP was set); \
         rebuild it without AYA_BUILD_SKIP after `cargo xtask setup`"
    )]
    NotBuilt,

    /// The kernel refused for lack of privileges (EPERM).
    #[error(
        "{what} was refused by the kernel: loading and attaching XDP programs needs root \
         (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON); run dovesnap as root ({cause})"
    )]
    PermissionDenied {
        /// What was attempted.
        what: &'static str,
        /// The kernel's error, with its causes.
        cause: String,
    },

    /// The embedded object could not be loaded (parse, BTF, map creation).
    #[error("cannot load the embedded eBPF object: {cause}")]
    Load {
        /// The loader's error, with its causes.
        cause: String,
    },

    /// The embedded object lacks something the loader expects: a build mismatch.
    #[error(
        "the embedded eBPF object has no {kind} `{name}` of the expected type; \
         dovesnap-ebpf and dovesnap-user are out of step, rebuild both"
    )]
    ObjectMismatch {
        /// "program" or "map".
        kind: &'static str,
        /// The missing item's name.
        name: &'static str,
    },

    /// The kernel rejected the program (normally the verifier).
    #[error("the kernel rejected the XDP program `{PROGRAM_NAME}`: {cause}")]
    Verifier {
        /// The kernel's error and verifier log.
        cause: String,
    },

    /// The kernel rejected one of the tc engine's classifiers (normally the verifier).
    #[error("the kernel rejected the tc program `{program}`: {cause}")]
    TcVerifier {
        /// The program's name.
        program: &'static str,
        /// The kernel's error and verifier log.
        cause: String,
    },

    /// The programs on an interface's tcx ingress could not be listed.
    #[error("cannot list the tcx programs of {ifname}: {cause}")]
    TcQuery {
        /// The interface.
        ifname: String,
        /// The kernel's error, with its causes.
        cause: String,
    },

    /// A tc program could not be attached to an interface's tcx ingress.
    #[error("cannot attach the tc program `{program}` to {ifname}: {cause}")]
    TcAttach {
        /// The program's name.
        program: &'static str,
        /// The interface.
        ifname: String,
        /// The kernel's error, with its causes.
        cause: String,
    },

    /// The tc programs did not load with the XDP program, so the tc engine cannot run.
    #[error(
        "the tc engine's programs are not available on this host (the xdp engine still \
         is): {cause}"
    )]
    TcUnavailable {
        /// Why loading them failed.
        cause: String,
    },

    /// The kernel rejected the benchmark's counting sink (normally the verifier).
    #[cfg(any(test, feature = "bench"))]
    #[error(
        "the kernel rejected the benchmark's XDP sink `{}`: {cause}",
        dovesnap_ebpf::SINK_PROGRAM_NAME
    )]
    SinkVerifier {
        /// The kernel's error and verifier log.
        cause: String,
    },

    /// The interface name cannot be a Linux interface name.
    #[error(
        "`{ifname}` is not a valid interface name: it must be 1 to {IFNAME_MAX} bytes \
         without '/', ':', whitespace or NUL"
    )]
    InvalidInterfaceName {
        /// The name as given.
        ifname: String,
    },

    /// No interface of that name in this network namespace.
    #[error(
        "interface `{ifname}` not found in dovesnap's network namespace; \
         check the name with `ip link show`"
    )]
    InterfaceNotFound {
        /// The name as given.
        ifname: String,
    },

    /// Neither native nor generic XDP could be attached.
    #[error(
        "cannot attach XDP to `{ifname}`: native mode failed ({driver}), generic mode \
         failed ({skb}); if another XDP program is attached (`ip link show {ifname}`), \
         remove it first"
    )]
    Attach {
        /// The interface.
        ifname: String,
        /// Why native (driver) mode failed.
        driver: String,
        /// Why generic (SKB) mode failed.
        skb: String,
    },

    /// [`XdpProgram::detach`] for an interface this program is not attached to.
    #[error("XDP is not attached to `{ifname}` by this dovesnap; nothing to detach")]
    NotAttached {
        /// The name as given.
        ifname: String,
    },

    /// Detaching failed on one or more interfaces (each is still attempted).
    #[error("cannot detach XDP from {}", format_failures(.failures))]
    Detach {
        /// Each interface that kept the program, and why.
        failures: Vec<DetachFailure>,
    },

    /// The statistics map could not be read.
    #[error("cannot read the XDP counters from map `{STATS_MAP}`: {cause}")]
    Counters {
        /// The map error, with its causes.
        cause: String,
    },

    /// A steering map could not be read or written.
    #[error("cannot {what} in XDP map `{map}`: {cause}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The operation, naming the key or slot ("set interface 7", ...).
        what: String,
        /// The kernel's or loader's error, with its causes.
        cause: String,
    },

    /// [`XdpProgram::set_iface`] was given a configuration the program cannot use.
    #[error("invalid XDP configuration for interface {ifindex}: {reason}")]
    InvalidIface {
        /// The interface index.
        ifindex: u32,
        /// What is wrong with it.
        reason: String,
    },

    /// An AF_XDP socket slot outside the `XSKS` map.
    #[error("AF_XDP socket slot {slot} is outside the XDP map `{XSKS_MAP}` (0..{MAX_XSKS})")]
    InvalidSlot {
        /// The slot as given.
        slot: u32,
    },

    /// [`XdpProgram::take_dataplane_maps`] was called a second time.
    #[error(
        "the XDP maps `{PORTS_MAP}` and `{XSKS_MAP}` were already handed to the translator; \
         there is only one set per loaded program"
    )]
    MapsTaken,

    /// `BPF_PROG_TEST_RUN` failed.
    #[cfg(any(test, feature = "testing"))]
    #[error("cannot test-run the XDP program on interface {ifindex} queue {queue}: {cause}")]
    TestRun {
        /// The ingress ifindex given.
        ifindex: u32,
        /// The rx queue given.
        queue: u32,
        /// The kernel's error, with its causes.
        cause: String,
    },
}

fn map_error(map: &'static str, what: String, err: &MapError) -> XdpError {
    XdpError::Map {
        map,
        what,
        cause: chain(err),
    }
}

/// Whether a map error is the kernel's ENOENT (deleting a key that is not there).
fn is_enoent(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// `key` with its padding zeroed: the kernel hashes the raw bytes.
fn padded(key: &FlowKey) -> FlowKey {
    FlowKey {
        _pad: [0; 3],
        ..*key
    }
}

/// The keys a map's key iterator yields, sorted; a failure is `map`'s, doing `what`.
fn sorted_keys<K: Ord>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    map: &'static str,
    what: &str,
) -> Result<Vec<K>, XdpError> {
    let mut keys = keys
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| map_error(map, what.into(), &e))?;
    keys.sort();
    Ok(keys)
}

/// The value of a map lookup or removal, `None` where the key is absent (not an error);
/// any other failure is `map`'s, doing `what`.
fn unless_absent<T>(
    result: Result<T, MapError>,
    map: &'static str,
    what: impl FnOnce() -> String,
) -> Result<Option<T>, XdpError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_enoent(&e) => Ok(None),
        Err(e) => Err(map_error(map, what(), &e)),
    }
}

/// Checks what the programs rely on: a known kind and socket slots inside `XSKS`; an
/// endpoint of the XDP program (`sockets`) needs at least one, a tc-engine endpoint none.
fn validate_iface(ifindex: u32, cfg: &IfaceConfig, sockets: bool) -> Result<(), XdpError> {
    let invalid = |reason: String| Err(XdpError::InvalidIface { ifindex, reason });
    if cfg.kind != IFACE_ENDPOINT && cfg.kind != IFACE_UPLINK {
        return invalid(format!(
            "kind {} is neither endpoint ({IFACE_ENDPOINT}) nor uplink ({IFACE_UPLINK})",
            cfg.kind
        ));
    }
    let end = u64::from(cfg.xsk_slot) + u64::from(cfg.xsk_slots);
    if end > u64::from(MAX_XSKS) {
        return invalid(format!(
            "socket slots {}..{end} are outside 0..{MAX_XSKS}",
            cfg.xsk_slot
        ));
    }
    if cfg.kind == IFACE_ENDPOINT {
        if sockets && cfg.xsk_slots == 0 {
            return invalid("an endpoint needs at least one socket slot (xsk_slots)".into());
        }
        if cfg.fib_ifindex == 0 || cfg.uplink_ifindex == 0 {
            return invalid("an endpoint needs fib_ifindex and uplink_ifindex".into());
        }
        if cfg.subnet & !cfg.netmask != 0 {
            return invalid("subnet has bits outside netmask".into());
        }
    }
    if ifindex == 0 {
        return invalid("ifindex 0 is no interface".into());
    }
    if cfg._pad != [0; 2] {
        return invalid("padding must be zero".into());
    }
    Ok(())
}

/// An interface the program could not be detached from, and why (the error with its
/// causes, as one line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetachFailure {
    pub ifname: String,
    pub cause: String,
}

impl fmt::Display for DetachFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ({})", self.ifname, self.cause)
    }
}

fn format_failures(failures: &[DetachFailure]) -> String {
    let each: Vec<String> = failures.iter().map(DetachFailure::to_string).collect();
    each.join(", ")
}

/// An error and all its sources as one line: aya's own messages are terse ("`bpf_link_create`
/// failed") and keep the useful part (the errno) in the source chain.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Whether an io error somewhere in the chain is EPERM, the kernel's answer to a caller
/// without CAP_BPF/CAP_NET_ADMIN. (EACCES is not counted: the verifier uses it for
/// rejected programs.)
fn is_eperm(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Loads the embedded object with `loader` (map sizes): parses it and creates its maps,
/// loading no program yet. `what` names the step in a refusal.
fn load_object(loader: &mut EbpfLoader<'_>, what: &'static str) -> Result<Ebpf, XdpError> {
    let bytes = object();
    if bytes.is_empty() {
        return Err(XdpError::NotBuilt);
    }
    loader
        .load(bytes)
        .map_err(refused_or(what, |cause| XdpError::Load { cause }))
}

/// Loads the object's program `name` into the kernel (the verifier runs here) and
/// returns it. `what` names the step in a refusal; `rejected` makes any other error.
fn load_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    what: &'static str,
    rejected: fn(String) -> XdpError,
) -> Result<&'a mut Xdp, XdpError> {
    let program = program_mut(ebpf, name)?;
    program.load().map_err(refused_or(what, rejected))?;
    Ok(program)
}

/// Maps a kernel refusal to [`XdpError::PermissionDenied`] naming `what` was refused
/// (EPERM, see [`is_eperm`]), any other error to `other` with the error's chain.
fn refused_or<E: StdError + 'static>(
    what: &'static str,
    other: fn(String) -> XdpError,
) -> impl FnOnce(E) -> XdpError {
    move |e| {
        let cause = chain(&e);
        if is_eperm(&e) {
            XdpError::PermissionDenied { what, cause }
        } else {
            other(cause)
        }
    }
}

/// Checks `ifname` the way the kernel would, before it reaches a `CString` or netlink.
fn validate_ifname(ifname: &str) -> Result<(), XdpError> {
    crate::host::ifname::check(ifname).map_err(|_| XdpError::InvalidInterfaceName {
        ifname: ifname.to_string(),
    })
}

/// Whether an interface of that name exists in this network namespace.
fn interface_exists(ifname: &str) -> bool {
    ifindex_of(ifname).is_some()
}

/// `ifname`'s index in the calling thread's network namespace, `None` when there is none.
fn ifindex_of(ifname: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(ifname).ok()?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

/// How the program ended up attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// Native XDP, run by the driver (veth supports it).
    Driver,
    /// Generic XDP, run by the kernel stack after the skb is built (slower, works on
    /// every device).
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Driver => "native",
            AttachMode::Skb => "generic",
        })
    }
}

/// Declares [`Counters`] with one public field per [`Counter`], and the mapping between
/// them, from one list so that neither can miss a counter.
macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident => $field:ident,)+) => {
        /// The program's counters, summed over all CPUs. See [`Counter`] for their
        /// meaning.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Counters {
            $($(#[$doc])* pub $field: u64,)+
        }

        impl Counters {
            /// The value of one counter.
            pub fn get(&self, counter: Counter) -> u64 {
                match counter {
                    $(Counter::$variant => self.$field,)+
                }
            }

            fn slot(&mut self, counter: Counter) -> &mut u64 {
                match counter {
                    $(Counter::$variant => &mut self.$field,)+
                }
            }
        }
    };
}

counters! {
    Ipv4 => ipv4,
    Arp => arp,
    Ipv6 => ipv6,
    Other => other,
    Malformed => malformed,
    /// Frames passed on to the kernel stack.
    Pass => pass,
    /// Frames redirected into an AF_XDP socket.
    Redirect => redirect,
    /// Steered frames whose socket slot was empty, passed to the kernel instead.
    XskMissing => xsk_missing,
    EndpointRedirect => endpoint_redirect,
    EndpointNotToGateway => endpoint_not_to_gateway,
    EndpointOtherProtocol => endpoint_other_protocol,
    EndpointOptions => endpoint_options,
    EndpointTtlExpiring => endpoint_ttl_expiring,
    EndpointInSubnet => endpoint_in_subnet,
    EndpointNotForwarded => endpoint_not_forwarded,
    EndpointNotViaUplink => endpoint_not_via_uplink,
    EndpointTooBig => endpoint_too_big,
    EndpointSpoofedSource => endpoint_spoofed_source,
    UplinkRedirect => uplink_redirect,
    UplinkNotForUs => uplink_not_for_us,
    UplinkNoSession => uplink_no_session,
    UplinkQueueWithoutSocket => uplink_queue_without_socket,
    UplinkOptions => uplink_options,
    EndpointQueueWithoutSocket => endpoint_queue_without_socket,
    /// Container frames of offloaded flows rewritten and redirected in XDP.
    OffloadOutbound => offload_outbound,
    /// Uplink frames of offloaded flows rewritten and redirected in XDP.
    OffloadInbound => offload_inbound,
    /// Frames of offloaded flows left to the translator (TCP SYN/FIN/RST, partial or bad
    /// checksum, too big, TTL expiring).
    OffloadSlowPath => offload_slow_path,
    /// Offloaded frames dropped because their output device was gone.
    OffloadRedirectFailed => offload_redirect_failed,
    /// Container fragments steered to the translator.
    EndpointFragment => endpoint_fragment,
    /// Container fragments left to the kernel with their first fragment.
    EndpointFragmentKernel => endpoint_fragment_kernel,
    /// Uplink fragments steered to the translator.
    UplinkFragment => uplink_fragment,
    /// Uplink fragments left to the kernel with their first fragment.
    UplinkFragmentKernel => uplink_fragment_kernel,
    /// Frames passed to the kernel while the translator was down.
    Bypassed => bypassed,
    /// Container frames kept on the kernel's path by a host forward rule.
    EndpointHostFirewall => endpoint_host_firewall,
    /// Uplink frames kept on the kernel's path by a host forward rule.
    UplinkHostFirewall => uplink_host_firewall,
    /// tc: container frames of `CT` sessions rewritten and sent to the uplink.
    TcOut => tc_out,
    /// tc: uplink frames of `CT` sessions rewritten and sent into the container.
    TcIn => tc_in,
    /// tc: rewritten GSO super-packets.
    TcGsoFrames => tc_gso_frames,
    /// tc: the segments of those super-packets.
    TcGsoSegments => tc_gso_segments,
    /// tc: rewritten frames dropped because the redirect helper refused.
    TcRedirectFailed => tc_redirect_failed,
    /// tc: frames left to the kernel while the data plane was bypassed.
    TcBypassed => tc_bypassed,
    /// tc: frames on an interface without the right configuration.
    TcUnconfigured => tc_unconfigured,
    TcDeclineNotToGateway => tc_decline_not_to_gateway,
    TcDeclineOtherProtocol => tc_decline_other_protocol,
    TcDeclineOptions => tc_decline_options,
    TcDeclineSpoofedSource => tc_decline_spoofed_source,
    TcDeclineTtlExpiring => tc_decline_ttl_expiring,
    TcDeclineInSubnet => tc_decline_in_subnet,
    TcDeclineHostFirewall => tc_decline_host_firewall,
    TcDeclineNotForwarded => tc_decline_not_forwarded,
    TcDeclineNotViaUplink => tc_decline_not_via_uplink,
    TcDeclineTooBig => tc_decline_too_big,
    TcDeclineTruncated => tc_decline_truncated,
    TcDeclineNotForUs => tc_decline_not_for_us,
    TcDeclineNoSession => tc_decline_no_session,
    /// tc: what goes to the translator's slow port (the kernel until it exists).
    TcDeclineSlow => tc_decline_slow,
    /// tc: sessions the endpoint program created (on top of `tc_out`).
    TcCreated => tc_created,
    /// tc: new flows left to the kernel for want of a free port or `CT` room.
    TcDeclineExhausted => tc_decline_exhausted,
    /// tc: ICMP errors about `CT` sessions translated (on top of `tc_out`/`tc_in`).
    TcIcmpError => tc_icmp_error,
}

impl Counters {
    /// Every frame the program saw (each is classified exactly once).
    pub fn frames(&self) -> u64 {
        self.ipv4 + self.arp + self.ipv6 + self.other + self.malformed
    }

    /// Every verdict given (each frame gets exactly one): equals [`Counters::frames`].
    pub fn verdicts(&self) -> u64 {
        self.pass + self.redirect + self.offload_redirect_failed
    }

    /// Frames the program decided to steer to a socket (whole or fragments, both
    /// kinds of interface): each then counts `redirect` or `xsk_missing`.
    pub fn steered(&self) -> u64 {
        self.endpoint_redirect
            + self.uplink_redirect
            + self.endpoint_fragment
            + self.uplink_fragment
    }

    /// What each counter grew by since `before` (wrapping, like the kernel's counters).
    pub fn since(&self, before: &Counters) -> Counters {
        let mut d = Counters::default();
        for c in Counter::ALL {
            *d.slot(c) = self.get(c).wrapping_sub(before.get(c));
        }
        d
    }

    /// Builds the totals from per-CPU values, as `read(counter)` returns them.
    fn from_per_cpu<E>(mut read: impl FnMut(Counter) -> Result<Vec<u64>, E>) -> Result<Self, E> {
        let mut counters = Counters::default();
        for counter in Counter::ALL {
            let total = read(counter)?
                .iter()
                .fold(0u64, |sum, v| sum.wrapping_add(*v));
            *counters.slot(counter) = total;
        }
        Ok(counters)
    }
}

/// One attachment made by this program.
#[derive(Debug)]
struct Attachment {
    link: aya::programs::xdp::XdpLinkId,
    mode: AttachMode,
}

/// The loaded XDP program and the interfaces it is attached to.
///
/// Dropping it detaches every attachment (errors are logged) and unloads the program.
pub struct XdpProgram {
    ebpf: Ebpf,
    attachments: BTreeMap<String, Attachment>,
    /// Whether `take_dataplane_maps` moved `PORTS` and `XSKS` out of `ebpf`.
    maps_taken: bool,
    /// Why the tc programs did not load (`None`: they did), see
    /// [`XdpProgram::tc_programs`].
    tc_refused: Option<String>,
    /// The tcx links of the tc programs, see [`XdpProgram::tc_attach`].
    tc_links: tc::TcLinks,
    /// tcx links out of service, closed once their interface is gone.
    tc_retired: Vec<tc::RetiredTcLink>,
}

impl fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpProgram")
            .field("attachments", &self.attachments)
            .finish_non_exhaustive()
    }
}

impl XdpProgram {
    /// Loads the embedded object: creates its maps and loads the program into the
    /// kernel (the verifier runs here). Attaches nothing. Needs root or CAP_BPF.
    pub fn load() -> Result<Self, XdpError> {
        Self::load_sized(MAX_STEERED_SESSIONS)
    }

    /// [`XdpProgram::load`] with room for `sessions` steered dynamic sessions in
    /// `SESSIONS` (the translators' session limits; the map is not preallocated, so a
    /// large size costs nothing until used).
    pub fn load_sized(sessions: u32) -> Result<Self, XdpError> {
        let mut ebpf = load_object(
            EbpfLoader::new()
                .map_max_entries(SESSIONS_MAP, sessions.max(1))
                .map_max_entries(CT_MAP, sessions.max(1).saturating_mul(2)),
            "creating the XDP program's maps",
        )?;
        load_program(
            &mut ebpf,
            PROGRAM_NAME,
            "loading the XDP program",
            |cause| XdpError::Verifier { cause },
        )?;
        // The tc engine's classifiers come with the object; a kernel that refuses them
        // still runs the xdp engine, so this is reported, not fatal.
        let tc_refused = match tc::load(&mut ebpf) {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!("{e}; networks with ovs.nat.engine=tc stay on the kernel path");
                Some(e.to_string())
            }
        };
        Ok(XdpProgram {
            ebpf,
            attachments: BTreeMap::new(),
            maps_taken: false,
            tc_refused,
            tc_links: tc::TcLinks::new(),
            tc_retired: Vec::new(),
        })
    }

    /// Attaches the program to `ifname`: native (driver) mode if the device supports
    /// it, generic (SKB) mode otherwise. Attaching to an interface this program is
    /// already attached to does nothing and returns the existing mode.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode, XdpError> {
        validate_ifname(ifname)?;
        if let Some(existing) = self.attachments.get(ifname) {
            return Ok(existing.mode);
        }
        let program = xdp_mut(&mut self.ebpf)?;
        let (link, mode) = attach_native_or_skb(program, ifname)?;
        tracing::info!(ifname, %mode, "attached XDP program");
        self.attachments
            .insert(ifname.to_string(), Attachment { link, mode });
        Ok(mode)
    }

    /// Detaches the program from `ifname`. An interface that has disappeared since
    /// counts as detached (the kernel dropped the program with it).
    pub fn detach(&mut self, ifname: &str) -> Result<(), XdpError> {
        let attachment = self
            .attachments
            .remove(ifname)
            .ok_or_else(|| XdpError::NotAttached {
                ifname: ifname.to_string(),
            })?;
        self.detach_one(ifname, attachment)
            .map_err(|failure| XdpError::Detach {
                failures: vec![failure],
            })
    }

    /// Detaches the program (and the tc programs) from every interface, trying all of
    /// them even when some fail, and reports every failure.
    pub fn detach_all(&mut self) -> Result<(), XdpError> {
        let attachments = std::mem::take(&mut self.attachments);
        let mut failures: Vec<DetachFailure> = attachments
            .into_iter()
            .filter_map(|(ifname, attachment)| self.detach_one(&ifname, attachment).err())
            .collect();
        failures.extend(self.tc_detach_all());
        if failures.is_empty() {
            Ok(())
        } else {
            Err(XdpError::Detach { failures })
        }
    }

    fn detach_one(&mut self, ifname: &str, attachment: Attachment) -> Result<(), DetachFailure> {
        let failure = |cause| DetachFailure {
            ifname: ifname.to_string(),
            cause,
        };
        let program = xdp_mut(&mut self.ebpf).map_err(|e| failure(e.to_string()))?;
        match program.detach(attachment.link) {
            Ok(()) => {
                tracing::info!(ifname, "detached XDP program");
                Ok(())
            }
            Err(_) if !interface_exists(ifname) => {
                tracing::info!(ifname, "interface gone; XDP program went with it");
                Ok(())
            }
            Err(e) => Err(failure(chain(&e))),
        }
    }

    /// The interfaces the program is attached to, sorted.
    pub fn attached(&self) -> Vec<String> {
        self.attachments.keys().cloned().collect()
    }

    /// How the program is attached to `ifname`, if it is.
    pub fn mode(&self, ifname: &str) -> Option<AttachMode> {
        self.attachments.get(ifname).map(|a| a.mode)
    }

    /// The program's counters, summed over all CPUs, since it was loaded.
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let map = self.ebpf.map(STATS_MAP).ok_or(XdpError::ObjectMismatch {
            kind: "map",
            name: STATS_MAP,
        })?;
        let stats = PerCpuArray::<_, u64>::try_from(map).map_err(|_| XdpError::ObjectMismatch {
            kind: "map",
            name: STATS_MAP,
        })?;
        Counters::from_per_cpu(|counter| {
            stats
                .get(&counter.index(), 0)
                .map(|values| values.to_vec())
                .map_err(|e| XdpError::Counters { cause: chain(&e) })
        })
    }
}

impl XdpProgram {
    /// Makes `ifindex` an endpoint or uplink (see [`IfaceConfig`]), replacing any earlier
    /// configuration. Takes effect for the next frame; the program must also be attached
    /// to the interface. The ifindex is the one in the interface's own network namespace.
    pub fn set_iface(&mut self, ifindex: u32, cfg: &IfaceConfig) -> Result<(), XdpError> {
        validate_iface(ifindex, cfg, true)?;
        self.insert_iface(ifindex, cfg)
    }

    /// [`XdpProgram::set_iface`] for an interface only the tc programs serve (a
    /// tc-engine endpoint's host end, an uplink no xdp-engine network uses): no socket
    /// slots needed.
    pub fn set_tc_iface(&mut self, ifindex: u32, cfg: &IfaceConfig) -> Result<(), XdpError> {
        validate_iface(ifindex, cfg, false)?;
        self.insert_iface(ifindex, cfg)
    }

    fn insert_iface(&mut self, ifindex: u32, cfg: &IfaceConfig) -> Result<(), XdpError> {
        let mut map = self.ifaces_mut()?;
        map.insert(ifindex, *cfg, 0)
            .map_err(|e| map_error(IFACES_MAP, format!("set interface {ifindex}"), &e))
    }

    /// Stops steering `ifindex`: its frames are classified, counted and passed again.
    /// Removing an interface that is not configured is not an error.
    pub fn remove_iface(&mut self, ifindex: u32) -> Result<(), XdpError> {
        let mut map = self.ifaces_mut()?;
        unless_absent(map.remove(&ifindex), IFACES_MAP, || {
            format!("remove interface {ifindex}")
        })
        .map(|_| ())
    }

    fn ifaces_mut(&mut self) -> Result<HashMap<&mut MapData, u32, IfaceConfig>, XdpError> {
        let mismatch = XdpError::ObjectMismatch {
            kind: "map",
            name: IFACES_MAP,
        };
        let map = self
            .ebpf
            .map_mut(IFACES_MAP)
            .ok_or(XdpError::ObjectMismatch {
                kind: "map",
                name: IFACES_MAP,
            })?;
        HashMap::try_from(map).map_err(|_| mismatch)
    }

    /// Writes `NAT_CFG`: the external ports the tc endpoint program claims for the
    /// sessions it creates (`first == 0`: it creates none). Takes effect for the next
    /// new flow.
    pub fn set_nat_config(&mut self, cfg: &NatConfig) -> Result<(), XdpError> {
        let mismatch = || XdpError::ObjectMismatch {
            kind: "map",
            name: NAT_CFG_MAP,
        };
        let map = self.ebpf.map_mut(NAT_CFG_MAP).ok_or_else(mismatch)?;
        let mut array: Array<&mut MapData, NatConfig> =
            Array::try_from(map).map_err(|_| mismatch())?;
        array.set(0, cfg, 0).map_err(|e| {
            map_error(
                NAT_CFG_MAP,
                format!("set ports {}-{}", cfg.first, cfg.last),
                &e,
            )
        })
    }

    /// `NAT_CFG` as the programs read it.
    pub fn nat_config(&self) -> Result<NatConfig, XdpError> {
        let mismatch = || XdpError::ObjectMismatch {
            kind: "map",
            name: NAT_CFG_MAP,
        };
        let map = self.ebpf.map(NAT_CFG_MAP).ok_or_else(mismatch)?;
        let array: Array<&MapData, NatConfig> = Array::try_from(map).map_err(|_| mismatch())?;
        array
            .get(&0, 0)
            .map_err(|e| map_error(NAT_CFG_MAP, "read the ports".into(), &e))
    }

    /// Moves the maps the translator thread keeps current (`PORTS`, `SESSIONS`, `XSKS`,
    /// `FLOWS`, `DEVS`) out of the program into a [`DataplaneMaps`]. Works once per loaded program
    /// ([`XdpError::MapsTaken`] after). The maps stay shared with the kernel program:
    /// dropping the `DataplaneMaps` closes userspace's handle, not the maps.
    pub fn take_dataplane_maps(&mut self) -> Result<DataplaneMaps, XdpError> {
        if self.maps_taken {
            return Err(XdpError::MapsTaken);
        }
        fn take<M: TryFrom<aya::maps::Map>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<M, XdpError> {
            let mismatch = || XdpError::ObjectMismatch { kind: "map", name };
            let map = ebpf.take_map(name).ok_or_else(mismatch)?;
            M::try_from(map).map_err(|_| mismatch())
        }
        let maps = DataplaneMaps {
            bypass: Bypass(take(&mut self.ebpf, STATE_MAP)?),
            ports: take(&mut self.ebpf, PORTS_MAP)?,
            sessions: take(&mut self.ebpf, SESSIONS_MAP)?,
            xsks: take(&mut self.ebpf, XSKS_MAP)?,
            flows: take(&mut self.ebpf, FLOWS_MAP)?,
            devs: take(&mut self.ebpf, DEVS_MAP)?,
            hostfw: take(&mut self.ebpf, HOSTFW_MAP)?,
            hostfw_on: take(&mut self.ebpf, HOSTFW_ON_MAP)?,
            ct: take(&mut self.ebpf, CT_MAP)?,
        };
        self.maps_taken = true;
        Ok(maps)
    }
}

/// The maps the translator thread updates: published ports (`PORTS`), the reply tuples
/// of its dynamic sessions (`SESSIONS`), its AF_XDP sockets (`XSKS`), offloaded flows
/// (`FLOWS`) and the devices they leave by (`DEVS`). `Send`, so the thread can own it.
pub struct DataplaneMaps {
    /// The whole fast path's off switch; a second handle serves the watchdog.
    pub bypass: Bypass,
    ports: HashMap<MapData, PortKey, u32>,
    sessions: HashMap<MapData, FlowKey, u32>,
    xsks: XskMap<MapData>,
    flows: HashMap<MapData, FlowKey, FlowAction>,
    devs: DevMapHash<MapData>,
    hostfw: LpmTrie<MapData, u32, HostFwMatch>,
    hostfw_on: Array<MapData, u32>,
    ct: HashMap<MapData, FlowKey, CtEntry>,
}

impl fmt::Debug for DataplaneMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataplaneMaps").finish_non_exhaustive()
    }
}

/// The `SESSIONS` key of a dynamic session: its reply's tuple as it arrives on the
/// uplink, from `remote`:`remote_port` (0 for ICMP) to `external`:`port` (ICMP: the echo
/// identifier). Host-order ports.
pub fn steered_session_key(
    external: [u8; 4],
    port: u16,
    remote: [u8; 4],
    remote_port: u16,
    proto: u8,
) -> FlowKey {
    FlowKey {
        ifindex: 0,
        src: be_addr(remote),
        dst: be_addr(external),
        sport: remote_port.to_be(),
        dport: port.to_be(),
        proto,
        _pad: [0; 3],
    }
}

fn describe_key(key: &PortKey) -> String {
    let [a, b, c, d] = addr_octets(key.addr);
    let proto = match key.proto {
        PROTO_TCP => "tcp".to_string(),
        PROTO_UDP => "udp".to_string(),
        PROTO_ICMP => "icmp id".to_string(),
        other => format!("protocol {other}"),
    };
    format!("{proto} {a}.{b}.{c}.{d}:{}", key.port_host())
}

/// The program's off switch ([`STATE_MAP`]): while on, every frame on every configured
/// interface goes to the kernel, as if no program were attached.
pub struct Bypass(Array<MapData, u32>);

impl fmt::Debug for Bypass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Bypass").field(&self.is_on()).finish()
    }
}

impl Bypass {
    /// Turns the switch on (everything to the kernel) or off.
    pub fn set(&mut self, on: bool) -> Result<(), XdpError> {
        let value = if on { STATE_BYPASS } else { 0 };
        self.0
            .set(0, value, 0)
            .map_err(|e| map_error(STATE_MAP, format!("set bypass {on}"), &e))
    }

    /// Whether the switch is on (false if the map cannot be read).
    pub fn is_on(&self) -> bool {
        self.0.get(&0, 0).is_ok_and(|v| v & STATE_BYPASS != 0)
    }

    /// A second handle on the same map (a duplicated descriptor).
    pub fn try_clone(&self) -> Result<Bypass, XdpError> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        let fd = self
            .0
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| XdpError::Load {
                cause: format!("cannot duplicate the {STATE_MAP} map's descriptor: {e}"),
            })?;
        let data = MapData::from_fd(fd).map_err(|e| map_error(STATE_MAP, "reopen".into(), &e))?;
        Array::try_from(aya::maps::Map::Array(data))
            .map(Bypass)
            .map_err(|e| map_error(STATE_MAP, "reopen".into(), &e))
    }
}

impl DataplaneMaps {
    /// Marks `key` (a published port) as the translator's: uplink frames for it are
    /// steered. Setting a present key again is not an error.
    pub fn set_port(&mut self, key: PortKey) -> Result<(), XdpError> {
        let key = PortKey { _pad: 0, ..key };
        self.ports
            .insert(key, 0, 0)
            .map_err(|e| map_error(PORTS_MAP, format!("add {}", describe_key(&key)), &e))
    }

    /// Gives `key` back to the kernel. Removing an absent key is not an error.
    pub fn remove_port(&mut self, key: &PortKey) -> Result<(), XdpError> {
        let key = PortKey { _pad: 0, ..*key };
        unless_absent(self.ports.remove(&key), PORTS_MAP, || {
            format!("remove {}", describe_key(&key))
        })
        .map(|_| ())
    }

    /// Every key in `PORTS`, sorted.
    pub fn ports(&self) -> Result<Vec<PortKey>, XdpError> {
        sorted_keys(self.ports.keys(), PORTS_MAP, "list the ports")
    }

    /// Removes every published port and steered session of the uplink address `addr`
    /// (network byte order): the address left the translator.
    pub fn remove_address(&mut self, addr: u32) {
        for k in self.ports().unwrap_or_default() {
            if k.addr == addr {
                let _ = self.remove_port(&k);
            }
        }
        for k in self.sessions().unwrap_or_default() {
            if k.dst == addr {
                let _ = self.remove_session(&k);
            }
        }
    }

    /// Steers the replies of a dynamic session to the translator: `key` is the reply's
    /// tuple as it arrives on the uplink ([`steered_session_key`]). Setting a present
    /// key again is not an error.
    pub fn set_session(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        let key = padded(key);
        self.sessions
            .insert(key, 0, 0)
            .map_err(|e| map_error(SESSIONS_MAP, format!("add session {key:?}"), &e))
    }

    /// Gives a session's replies back to the kernel. Removing an absent key is not an
    /// error.
    pub fn remove_session(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        let key = padded(key);
        unless_absent(self.sessions.remove(&key), SESSIONS_MAP, || {
            format!("remove session {key:?}")
        })
        .map(|_| ())
    }

    /// Every key in `SESSIONS`, sorted.
    pub fn sessions(&self) -> Result<Vec<FlowKey>, XdpError> {
        sorted_keys(self.sessions.keys(), SESSIONS_MAP, "list the sessions")
    }

    /// Puts the AF_XDP socket `fd` in `slot`: frames steered there go to it. The socket
    /// must be bound to the interface and rx queue that slot serves (an uplink's slot
    /// `xsk_slot + q` to queue `q`, an endpoint's to queue 0), or the kernel drops the
    /// frames. Closing the socket empties the slot.
    pub fn set_xsk(&mut self, slot: u32, fd: impl AsRawFd) -> Result<(), XdpError> {
        if slot >= MAX_XSKS {
            return Err(XdpError::InvalidSlot { slot });
        }
        self.xsks
            .set(slot, fd, 0)
            .map_err(|e| map_error(XSKS_MAP, format!("set socket slot {slot}"), &e))
    }

    /// Installs (or replaces) an offloaded flow: frames matching `key` are rewritten by
    /// the program as `action` says and redirected to `action.out_ifindex`, which must be
    /// in `DEVS` ([`DataplaneMaps::set_dev`]) first.
    pub fn set_flow(&mut self, key: &FlowKey, action: &FlowAction) -> Result<(), XdpError> {
        let key = padded(key);
        self.flows
            .insert(key, action, 0)
            .map_err(|e| map_error(FLOWS_MAP, format!("add flow {key:?}"), &e))
    }

    /// Writes (or replaces) one direction of a tc-engine session in `CT`
    /// ([`crate::fastpath::offload::ct_entries`] makes both): the tc programs then
    /// rewrite and redirect its frames.
    pub fn set_ct(&mut self, key: &FlowKey, entry: &CtEntry) -> Result<(), XdpError> {
        let key = padded(key);
        self.ct
            .insert(key, entry, 0)
            .map_err(|e| map_error(CT_MAP, format!("add session {key:?}"), &e))
    }

    /// One direction of a tc-engine session as the kernel holds it now (with the
    /// program's `last_seen`, `packets`, `bytes` and `flags`).
    pub fn ct(&self, key: &FlowKey) -> Result<Option<CtEntry>, XdpError> {
        let key = padded(key);
        unless_absent(self.ct.get(&key, 0), CT_MAP, || {
            format!("read session {key:?}")
        })
    }

    /// The `CT` entries (at least `limit` of them when it holds more), for the sweep of
    /// `fastpath::ct_gc`: by batch lookups, or entry by entry on a kernel without them.
    /// One inserted during the read may be missed.
    pub fn ct_entries(&self, limit: usize) -> Result<Vec<(FlowKey, CtEntry)>, XdpError> {
        match batch::lookup_all(&self.ct, limit) {
            Ok(entries) => Ok(entries),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self
                .ct
                .iter()
                .take(limit)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| map_error(CT_MAP, "list the sessions".into(), &e)),
            Err(e) => Err(XdpError::Map {
                map: CT_MAP,
                what: "list the sessions".into(),
                cause: e.to_string(),
            }),
        }
    }

    /// Removes one direction of a tc-engine session. Removing an absent key is not an
    /// error.
    pub fn remove_ct(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        let key = padded(key);
        unless_absent(self.ct.remove(&key), CT_MAP, || {
            format!("remove session {key:?}")
        })
        .map(|_| ())
    }

    /// The flow's current entry (with the program's `last_seen`, `packets`, `bytes`).
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowAction>, XdpError> {
        let key = padded(key);
        unless_absent(self.flows.get(&key, 0), FLOWS_MAP, || {
            format!("read flow {key:?}")
        })
    }

    /// Removes a flow: its frames take the translator's path again. Absent is not an
    /// error.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        let key = padded(key);
        unless_absent(self.flows.remove(&key), FLOWS_MAP, || {
            format!("remove flow {key:?}")
        })
        .map(|_| ())
    }

    /// Every flow entry, for status and tests.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowAction)>, XdpError> {
        let mut flows = self
            .flows
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_error(FLOWS_MAP, "list the flows".into(), &e))?;
        flows.sort_by_key(|(k, _)| *k);
        Ok(flows)
    }

    /// Lets offloaded frames be redirected to `ifindex`.
    pub fn set_dev(&mut self, ifindex: u32) -> Result<(), XdpError> {
        self.devs
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| XdpError::Map {
                map: DEVS_MAP,
                what: format!("add device {ifindex}"),
                cause: chain(&e),
            })
    }

    /// Removes `ifindex` from the redirect targets (after its flows). Absent is not an
    /// error.
    pub fn remove_dev(&mut self, ifindex: u32) -> Result<(), XdpError> {
        unless_absent(self.devs.remove(ifindex), DEVS_MAP, || {
            format!("remove device {ifindex}")
        })
        .map(|_| ())
    }

    /// Makes `HOSTFW` exactly `entries` (far prefix as octets and length, what of it
    /// stays on the kernel's path) and turns its lookup on when there are any (off
    /// when none). Prefixes no longer wanted go first, then the wanted ones are written
    /// in place (an update replaces its entry whole), so a prefix that stays is never
    /// missing in between.
    pub fn set_host_filter(
        &mut self,
        entries: &[([u8; 4], u8, HostFwMatch)],
    ) -> Result<(), XdpError> {
        if entries.len() > MAX_HOSTFW as usize {
            return Err(XdpError::Map {
                map: HOSTFW_MAP,
                what: "write the host forward rules".into(),
                cause: format!(
                    "{} prefixes, more than the map's {MAX_HOSTFW}",
                    entries.len()
                ),
            });
        }
        let old: Vec<LpmKey<u32>> = self.hostfw.keys().filter_map(Result::ok).collect();
        let key = |addr: [u8; 4], len: u8| LpmKey::new(u32::from(len), be_addr(addr));
        let wanted: Vec<LpmKey<u32>> = entries.iter().map(|(a, l, _)| key(*a, *l)).collect();
        for k in &old {
            let gone = !wanted
                .iter()
                .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data());
            if gone {
                self.hostfw
                    .remove(k)
                    .map_err(|e| map_error(HOSTFW_MAP, "remove a prefix".into(), &e))?;
            }
        }
        for (k, (_, _, m)) in wanted.iter().zip(entries) {
            self.hostfw
                .insert(k, m, 0)
                .map_err(|e| map_error(HOSTFW_MAP, "write a prefix".into(), &e))?;
        }
        let on = u32::from(!entries.is_empty());
        self.hostfw_on
            .set(0, on, 0)
            .map_err(|e| map_error(HOSTFW_ON_MAP, format!("set {on}"), &e))
    }

    /// Empties `slot`: frames steered there pass to the kernel (`xsk-missing`). Clearing
    /// an empty slot is not an error.
    pub fn clear_xsk(&mut self, slot: u32) -> Result<(), XdpError> {
        if slot >= MAX_XSKS {
            return Err(XdpError::InvalidSlot { slot });
        }
        unless_absent(self.xsks.unset(slot), XSKS_MAP, || {
            format!("clear socket slot {slot}")
        })
        .map(|_| ())
    }
}

/// Attaches a loaded program to `ifname`: native (driver) mode, generic (SKB) mode when
/// native fails.
fn attach_native_or_skb(
    program: &mut Xdp,
    ifname: &str,
) -> Result<(aya::programs::xdp::XdpLinkId, AttachMode), XdpError> {
    match program.attach(ifname, XdpMode::Driver) {
        Ok(link) => Ok((link, AttachMode::Driver)),
        Err(ProgramError::UnknownInterface { .. }) => Err(XdpError::InterfaceNotFound {
            ifname: ifname.to_string(),
        }),
        Err(driver) => match program.attach(ifname, XdpMode::Skb) {
            Ok(link) => Ok((link, AttachMode::Skb)),
            Err(skb) if is_eperm(&driver) && is_eperm(&skb) => Err(XdpError::PermissionDenied {
                what: "attaching the XDP program",
                cause: chain(&skb),
            }),
            Err(skb) => Err(XdpError::Attach {
                ifname: ifname.to_string(),
                driver: chain(&driver),
                skb: chain(&skb),
            }),
        },
    }
}

fn xdp_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    program_mut(ebpf, PROGRAM_NAME)
}

/// The object's XDP program `name`; a missing one is a build mismatch.
fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, XdpError> {
    let mismatch = XdpError::ObjectMismatch {
        kind: "program",
        name,
    };
    match ebpf.program_mut(name) {
        Some(program) => program.try_into().map_err(|_| mismatch),
        None => Err(mismatch),
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for ok in ["eth0", "veth1234567890a", "br-ovs.1", "a"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "veth1234567890ab",
            "a/b",
            "a b",
            "a:b",
            ".",
            "..",
            "a\0b",
        ] {
            let err = validate_ifname(bad).unwrap_err();
            assert!(
                matches!(err, XdpError::InvalidInterfaceName { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn counters_sum_cpus() {
        let counters = Counters::from_per_cpu(|c| Ok::<_, ()>(vec![c.index() as u64, 10, 100]))
            .expect("no error");
        for c in Counter::ALL {
            assert_eq!(counters.get(c), c.index() as u64 + 110, "{c:?}");
        }
        assert_eq!(counters.frames(), (0..5).map(|i| i + 110).sum::<u64>());
    }

    #[test]
    fn counters_helpers() {
        let c = Counters {
            ipv4: 3,
            arp: 1,
            pass: 3,
            redirect: 1,
            endpoint_redirect: 2,
            endpoint_in_subnet: 1,
            uplink_no_session: 1,
            ..Default::default()
        };
        assert_eq!(c.frames(), 4);
        assert_eq!(c.verdicts(), 4);
        assert_eq!(c.endpoint_frames(), 3);
        assert_eq!(c.uplink_frames(), 1);
        let before = Counters { ipv4: 1, ..c };
        assert_eq!(c.diff(&before), "ipv4: +2");
        assert_eq!(c.diff(&c), "");
        // Every counter reads back what was stored in it.
        let numbered = Counters::from_per_cpu(|k| Ok::<_, ()>(vec![u64::from(k.index())])).unwrap();
        for k in Counter::ALL {
            assert_eq!(numbered.get(k), u64::from(k.index()), "{}", k.name());
        }
    }

    fn endpoint() -> IfaceConfig {
        IfaceConfig {
            kind: IFACE_ENDPOINT,
            xsk_slot: 3,
            xsk_slots: 1,
            addr: be_addr([10, 0, 0, 2]),
            subnet: be_addr([10, 0, 0, 0]),
            netmask: be_addr([255, 255, 255, 0]),
            fib_ifindex: 4,
            uplink_ifindex: 2,
            gateway_mac: [2, 0, 0, 0, 0, 1],
            ..Default::default()
        }
    }

    #[test]
    fn iface_validation() {
        assert!(validate_iface(7, &endpoint(), true).is_ok());
        let uplink = IfaceConfig {
            kind: IFACE_UPLINK,
            xsk_slot: MAX_XSKS - 4,
            xsk_slots: 4,
            addr: be_addr([192, 0, 2, 1]),
            ..Default::default()
        };
        assert!(validate_iface(2, &uplink, true).is_ok());
        // A tc-engine endpoint has no sockets; everything else is checked the same.
        let tc_endpoint = IfaceConfig {
            xsk_slots: 0,
            ..endpoint()
        };
        assert!(validate_iface(7, &tc_endpoint, true).is_err());
        assert!(validate_iface(7, &tc_endpoint, false).is_ok());
        let no_uplink = IfaceConfig {
            uplink_ifindex: 0,
            ..tc_endpoint
        };
        assert!(validate_iface(7, &no_uplink, false).is_err());
        let bad = [
            (
                7,
                IfaceConfig {
                    kind: 0,
                    ..endpoint()
                },
                "kind 0",
            ),
            (
                7,
                IfaceConfig {
                    xsk_slot: MAX_XSKS,
                    ..endpoint()
                },
                "slots 1024..1025",
            ),
            (
                7,
                IfaceConfig {
                    fib_ifindex: 0,
                    ..endpoint()
                },
                "fib_ifindex",
            ),
            (
                7,
                IfaceConfig {
                    subnet: be_addr([10, 0, 0, 1]),
                    ..endpoint()
                },
                "outside netmask",
            ),
            (
                2,
                IfaceConfig {
                    xsk_slots: 5,
                    ..uplink
                },
                "slots 1020..1025",
            ),
            (
                2,
                IfaceConfig {
                    xsk_slot: u32::MAX,
                    ..uplink
                },
                "outside",
            ),
            (0, uplink, "ifindex 0"),
            (
                2,
                IfaceConfig {
                    _pad: [1, 0],
                    ..uplink
                },
                "padding",
            ),
        ];
        for (ifindex, cfg, needle) in bad {
            match validate_iface(ifindex, &cfg, true) {
                Ok(()) => panic!("accepted {cfg:?}"),
                Err(e) => {
                    assert!(matches!(e, XdpError::InvalidIface { .. }), "{e}");
                    assert!(e.to_string().contains(needle), "{e} lacks {needle}");
                    assert!(
                        e.to_string().contains(&format!("interface {ifindex}")),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn keys_are_described() {
        let key = PortKey::new([192, 0, 2, 1], 8080, PROTO_TCP);
        assert_eq!(describe_key(&key), "tcp 192.0.2.1:8080");
        let key = PortKey::new([192, 0, 2, 1], 7, PROTO_ICMP);
        assert_eq!(describe_key(&key), "icmp id 192.0.2.1:7");
        let err = map_error(
            PORTS_MAP,
            format!("add {}", describe_key(&key)),
            &MapError::KeyNotFound,
        );
        assert!(err.to_string().contains("`PORTS`"), "{err}");
        assert!(err.to_string().contains("icmp id 192.0.2.1:7"), "{err}");
    }

    #[test]
    fn missing_keys_are_recognised() {
        assert!(is_enoent(&MapError::KeyNotFound));
        let enoent = MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_delete_elem",
            io_error: io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert!(is_enoent(&enoent));
        let eperm = MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_delete_elem",
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        });
        assert!(!is_enoent(&eperm));
    }

    /// The translator thread owns the maps.
    #[test]
    fn dataplane_maps_are_send() {
        fn send<T: Send>() {}
        send::<DataplaneMaps>();
    }

    #[test]
    fn counters_report_read_errors() {
        let err = Counters::from_per_cpu(|c| {
            if c == Counter::Ipv6 {
                Err("boom")
            } else {
                Ok(vec![1])
            }
        });
        assert_eq!(err, Err("boom"));
    }

    /// The embedded object is a BPF ELF with the names the loader looks up.
    #[test]
    fn embedded_object_is_bpf() {
        let obj = object();
        if obj.is_empty() {
            // Built with AYA_BUILD_SKIP: the loader must say so rather than fail oddly.
            assert!(matches!(XdpProgram::load(), Err(XdpError::NotBuilt)));
            return;
        }
        assert_eq!(&obj[..4], b"\x7fELF", "not an ELF file");
        const EM_BPF: u16 = 247;
        assert_eq!(
            u16::from_le_bytes([obj[18], obj[19]]),
            EM_BPF,
            "not a BPF object"
        );
        for name in [
            PROGRAM_NAME,
            STATS_MAP,
            IFACES_MAP,
            PORTS_MAP,
            XSKS_MAP,
            dovesnap_ebpf::SINK_PROGRAM_NAME,
            dovesnap_ebpf::SINK_MAP,
        ] {
            assert!(
                obj.windows(name.len()).any(|w| w == name.as_bytes()),
                "object lacks `{name}`"
            );
        }
    }

    #[test]
    fn permission_errors_are_recognised() {
        let eperm = aya::sys::SyscallError {
            call: "bpf_map_create",
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(is_eperm(&eperm));
        assert!(chain(&eperm).contains("not permitted"), "{}", chain(&eperm));
        let eacces = aya::sys::SyscallError {
            call: "bpf_prog_load",
            io_error: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(!is_eperm(&eacces));
    }

    /// Loading works with privileges and fails with an explanation without them; both
    /// outcomes are checked, nothing is skipped. Loading attaches nothing, so this is
    /// harmless as root.
    #[test]
    fn load_or_explain() {
        match XdpProgram::load() {
            Ok(mut program) => {
                assert!(program.attached().is_empty());
                assert_eq!(program.counters().expect("counters"), Counters::default());
                // The tc links: bad input is refused and leaves nothing recorded.
                assert!(program.tc_attached().is_empty());
                let bad = program.tc_attach(TcProgram::Endpoint, "no/such");
                assert!(
                    matches!(bad, Err(XdpError::InvalidInterfaceName { .. })),
                    "{bad:?}"
                );
                let gone = program.tc_attach(TcProgram::Uplink, "dsnnosuch0");
                assert!(
                    gone.as_ref()
                        .is_err_and(|e| e.to_string().contains("dsnnosuch0")),
                    "{gone:?}"
                );
                assert!(program.tc_attached().is_empty());
                let never = program.tc_detach(TcProgram::Uplink, "dsnnosuch0");
                assert!(
                    matches!(never, Err(XdpError::NotAttached { .. })),
                    "{never:?}"
                );
                // NAT_CFG starts off and takes the tc programs' ports.
                assert_eq!(program.nat_config().expect("read"), NatConfig::default());
                let ports = crate::fastpath::FastPathConfig::default().nat_config();
                program.set_nat_config(&ports).expect("write NAT_CFG");
                assert_eq!(program.nat_config().expect("read"), ports);
                ct_entries_are_read_whole(&mut program.take_dataplane_maps().expect("maps"));
            }
            Err(XdpError::NotBuilt) => assert!(object().is_empty()),
            Err(e @ XdpError::PermissionDenied { .. }) => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let euid = unsafe { libc::geteuid() };
                assert_ne!(euid, 0, "root was refused: {e}");
                assert!(e.to_string().contains("needs root"), "{e}");
            }
            Err(e) => panic!("loading the XDP program failed: {e}"),
        }
    }

    /// More `CT` entries than one batch call returns are all read, once each, and a
    /// limit stops the read early; removals leave the map empty again.
    fn ct_entries_are_read_whole(maps: &mut DataplaneMaps) {
        assert!(maps.ct_entries(usize::MAX).expect("read").is_empty());
        let key = |i: u32| FlowKey {
            ifindex: 1,
            src: i,
            proto: PROTO_TCP,
            ..FlowKey::default()
        };
        let n = 5000;
        for i in 0..n {
            let entry = CtEntry {
                created: u64::from(i),
                owner: CT_OWNER_KERNEL,
                ..CtEntry::default()
            };
            maps.set_ct(&key(i), &entry).expect("write CT");
        }
        let mut read = maps.ct_entries(usize::MAX).expect("read");
        read.sort_by_key(|(k, _)| k.src);
        assert_eq!(read.len(), n as usize);
        assert!(read
            .iter()
            .zip(0..)
            .all(|((k, e), i)| *k == key(i) && e.created == u64::from(i)));
        let some = maps.ct_entries(10).expect("read");
        assert!((10..n as usize).contains(&some.len()), "{}", some.len());
        for i in 0..n {
            maps.remove_ct(&key(i)).expect("remove CT");
        }
        assert!(maps.ct_entries(usize::MAX).expect("read").is_empty());
    }

    /// The driver keeps the program behind a lock shared by async tasks.
    #[test]
    fn program_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<XdpProgram>();
        send_sync::<XdpError>();
    }

    #[test]
    fn detach_unknown_interface() {
        let err = XdpError::NotAttached {
            ifname: "nosuch0".into(),
        };
        assert!(err.to_string().contains("nosuch0"));
        let err = XdpError::Detach {
            failures: vec![
                DetachFailure {
                    ifname: "a0".into(),
                    cause: "x".into(),
                },
                DetachFailure {
                    ifname: "b0".into(),
                    cause: "y".into(),
                },
            ],
        };
        assert_eq!(err.to_string(), "cannot detach XDP from `a0` (x), `b0` (y)");
    }
}
