//! nat-fast: the XDP + AF_XDP data path of `mode=nat-fast` networks.
//!
//! [`FastPath`] is the control plane's handle. It owns the loaded XDP program (the
//! `IFACES` map and the attachments) and talks to the data-plane thread
//! ([`dataplane`]) that owns the sockets and the translators. What happens when:
//! - first endpoint of an uplink joins: the uplink gets AF_XDP sockets (one per RX
//!   queue), an `IFACES` entry and the XDP program;
//! - an endpoint joins: its veth host end gets a socket, an `IFACES` entry and the
//!   program; the translator learns its addresses;
//! - ports are published: the translator DNATs them and the `PORTS` map steers them;
//! - an endpoint leaves: everything above is undone in reverse; the last endpoint of
//!   an uplink takes the uplink's sockets and program with it;
//! - the daemon stops: the sessions go to the kernel's conntrack, then every program is
//!   detached and every socket closed, so traffic falls back to the kernel's nat rules,
//!   which nat-fast networks carry all along.
//!
//! Fail-open is the rule: whatever the XDP program does not steer, and everything
//! while no socket is registered, goes through the kernel path (netfilter NAT with
//! [`FastPathConfig::kernel_masquerade_ports`], clear of the translator's ports).

pub mod afxdp;
pub mod conntrack;
pub mod ct_gc;
pub mod dataplane;
#[cfg(test)]
mod fakes;
pub mod frameio;
pub mod nexthop;
pub mod offload;
pub mod supervisor;
mod tc;
pub mod xdp;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use dovesnap_ebpf::{IfaceConfig, NatConfig, IFACE_ENDPOINT, IFACE_UPLINK};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::fastpath::afxdp::XskConfig;
use crate::fastpath::xdp::{XdpError, XdpProgram};
use crate::firewall::hostrules::{self, HostRule};
use crate::host::addr::Ipv4Net;
use crate::translator::{Config, Protocol, Timeouts};
pub use dataplane::Fault;
use dataplane::{Command, Dataplane, DataplaneError, DataplaneStatus, Publication, Slots};
use supervisor::{Health, HealthStatus, Watchdog};

/// Default external TCP/UDP ports (and ICMP identifiers) the translator allocates from
/// (`dovesnap daemon --nat-ports`): below Linux's default ephemeral range (32768-60999),
/// so the host's own autobound sockets and the translator's ports never meet. The uplink
/// steers the translator's dynamic sessions by their exact reply tuple (the XDP
/// `SESSIONS` map), not by port, so a host service listening on a port of this range,
/// or another NAT's flow on one, keeps its frames.
pub const TRANSLATOR_PORTS: RangeInclusive<u16> = 1024..=32767;

/// Source ports the kernel's masquerade uses for nat-fast networks (the fallback path)
/// with the default [`TRANSLATOR_PORTS`]: the rest of the unprivileged ports.
pub const KERNEL_MASQUERADE_PORTS: (u16, u16) = (32768, 65535);

/// The smallest kernel masquerade range a `--nat-ports` choice must leave.
pub const MIN_KERNEL_MASQUERADE_PORTS: u32 = 1024;

/// Default share of the pool (per protocol) one container may map: 3/4, so that one
/// container's exhaustion leaves a quarter of the ports to the others.
pub fn default_port_share(range: &RangeInclusive<u16>) -> usize {
    (range_len(range) * 3 / 4).max(1)
}

fn range_len(range: &RangeInclusive<u16>) -> usize {
    if range.is_empty() {
        0
    } else {
        usize::from(range.end() - range.start()) + 1
    }
}

/// The kernel masquerade range of nat-fast networks for a translator range: the larger
/// of the unprivileged ports below and above it, so the fallback path and the
/// translator never pick the same port.
pub fn masquerade_ports_for(range: &RangeInclusive<u16>) -> (u16, u16) {
    let below = u32::from(*range.start()).saturating_sub(1024);
    let above = 65535 - u32::from(*range.end());
    if above >= below && above > 0 {
        (*range.end() + 1, 65535)
    } else {
        (1024, range.start().saturating_sub(1).max(1024))
    }
}

/// Parses `LO-HI` (ports, `lo <= hi`); `example` is shown when the dash is missing.
fn parse_port_range(text: &str, example: &str) -> Result<RangeInclusive<u16>, String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected LO-HI, e.g. {example}"))?;
    let port = |v: &str| {
        v.trim()
            .parse::<u16>()
            .map_err(|_| format!("{text:?}: {v:?} is not a port (1024-65535)"))
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(format!("{text:?}: {lo} is above {hi}"));
    }
    Ok(lo..=hi)
}

/// Parses and checks `--nat-ports LO-HI`: unprivileged ports only (1024-65535), and it
/// must leave at least [`MIN_KERNEL_MASQUERADE_PORTS`] contiguous ports to the kernel's
/// masquerade (the fallback path of nat-fast networks).
pub fn parse_nat_ports(text: &str) -> Result<RangeInclusive<u16>, String> {
    let range = parse_port_range(text, "1024-32767")?;
    let (lo, hi) = (*range.start(), *range.end());
    if lo < 1024 {
        return Err(format!(
            "{text:?}: the range must start at 1024 or above (ports below 1024 are the \
             host's privileged services)"
        ));
    }
    let left = (u32::from(lo) - 1024).max(65535 - u32::from(hi));
    if left < MIN_KERNEL_MASQUERADE_PORTS {
        return Err(format!(
            "{text:?} leaves {left} contiguous ports to the kernel's masquerade (the \
             fallback path of nat-fast networks); leave at least \
             {MIN_KERNEL_MASQUERADE_PORTS} below or above the range"
        ));
    }
    Ok(range)
}

/// The fewest ports a `--nat-kernel-ports` choice must leave the translator.
pub const MIN_TRANSLATOR_PORTS: u32 = 256;

/// `dovesnap daemon --nat-kernel-ports`: the slice of `--nat-ports` the tc engine's
/// programs claim external ports from for the sessions they create themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelPorts {
    /// `none` or `0`: the programs create no session (new flows take the kernel's
    /// path, or the translator's); the translator keeps all of `--nat-ports`.
    Off,
    /// `LO-HI`, checked against `--nat-ports` by [`FastPathConfig::new`].
    Range(RangeInclusive<u16>),
}

/// Parses `--nat-kernel-ports`: `LO-HI`, or `none`/`0` (see [`KernelPorts`]). Where the
/// range may lie depends on `--nat-ports`: [`FastPathConfig::new`] checks that.
pub fn parse_kernel_ports(text: &str) -> Result<KernelPorts, String> {
    match text.trim() {
        "none" | "0" => Ok(KernelPorts::Off),
        t => parse_port_range(t, "16384-32767, or none").map(KernelPorts::Range),
    }
}

/// The default `--nat-kernel-ports` for a `--nat-ports` range: its upper half, the
/// start rounded down to a multiple of 1024 where that still leaves the translator
/// [`MIN_TRANSLATOR_PORTS`] (16384-32767 of the default 1024-32767); `None` (no session
/// creation) when the range is too small to split.
pub fn default_kernel_ports(ports: &RangeInclusive<u16>) -> Option<RangeInclusive<u16>> {
    let n = range_len(ports) as u32;
    if n < 2 * MIN_TRANSLATOR_PORTS {
        return None;
    }
    let start = u32::from(*ports.start());
    let half = start + n / 2;
    let rounded = half & !1023;
    let first = if rounded >= start + MIN_TRANSLATOR_PORTS {
        rounded
    } else {
        half
    };
    Some(u16::try_from(first).ok()?..=*ports.end())
}

/// Checks a `--nat-kernel-ports` range against `--nat-ports`: inside it, at its top or
/// bottom end (so the translator's rest stays one range), and leaving the translator
/// at least [`MIN_TRANSLATOR_PORTS`].
fn check_kernel_ports(
    ports: &RangeInclusive<u16>,
    kernel: &RangeInclusive<u16>,
) -> Result<(), String> {
    let (lo, hi) = (*kernel.start(), *kernel.end());
    let (plo, phi) = (*ports.start(), *ports.end());
    let what = format!("--nat-kernel-ports {lo}-{hi}");
    if lo < plo || hi > phi {
        return Err(format!(
            "{what} is not inside --nat-ports {plo}-{phi}: the tc programs claim their \
             ports from nat-fast's own; give a slice of it, or none"
        ));
    }
    if lo != plo && hi != phi {
        return Err(format!(
            "{what} is in the middle of --nat-ports {plo}-{phi}: put it at the top \
             (ending at {phi}) or the bottom (starting at {plo}), so the translator's \
             ports stay one range"
        ));
    }
    let left = range_len(ports) - range_len(kernel);
    if (left as u32) < MIN_TRANSLATOR_PORTS {
        return Err(format!(
            "{what} leaves {left} ports of --nat-ports {plo}-{phi} to the translator; \
             leave it at least {MIN_TRANSLATOR_PORTS}"
        ));
    }
    Ok(())
}

/// The translator's ports: `--nat-ports` less the tc programs' slice.
pub fn translator_ports_for(
    ports: &RangeInclusive<u16>,
    kernel: Option<&RangeInclusive<u16>>,
) -> RangeInclusive<u16> {
    match kernel {
        None => ports.clone(),
        Some(k) if k.start() == ports.start() => *k.end() + 1..=*ports.end(),
        Some(k) => *ports.start()..=*k.start() - 1,
    }
}

/// Sessions per uplink before the translator evicts (default of
/// `dovesnap daemon --nat-max-sessions`).
pub const MAX_SESSIONS: usize = 65536;

/// The daemon's nat-fast settings (`--nat-ports`, `--nat-kernel-ports`,
/// `--nat-ports-per-endpoint`, `--nat-max-sessions`, `--nat-max-sessions-per-endpoint`),
/// given to [`FastPath::start`] and to the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastPathConfig {
    /// All the external ports nat-fast owns (`--nat-ports`): the tc programs' slice and
    /// the translator's rest. The kernel masquerade takes the ports around them.
    pub ports: RangeInclusive<u16>,
    /// The slice of `ports` the tc programs claim for the sessions they create
    /// (`NAT_CFG`); `None`: they create none.
    pub kernel_ports: Option<RangeInclusive<u16>>,
    /// Ports one container may map per protocol through the translator.
    pub port_share: usize,
    /// Sessions per uplink.
    pub max_sessions: usize,
    /// Sessions one container may start (`None`: no limit but `max_sessions`).
    pub max_sessions_per_endpoint: Option<usize>,
}

impl Default for FastPathConfig {
    fn default() -> Self {
        let kernel_ports = default_kernel_ports(&TRANSLATOR_PORTS);
        let translator = translator_ports_for(&TRANSLATOR_PORTS, kernel_ports.as_ref());
        FastPathConfig {
            ports: TRANSLATOR_PORTS,
            kernel_ports,
            port_share: default_port_share(&translator),
            max_sessions: MAX_SESSIONS,
            max_sessions_per_endpoint: None,
        }
    }
}

impl FastPathConfig {
    /// Checks the settings: a non-empty range, a tc slice at one end of it (default
    /// [`default_kernel_ports`]), a share that fits the translator's rest (default 3/4
    /// of it, see [`default_port_share`]).
    pub fn new(
        ports: RangeInclusive<u16>,
        kernel_ports: Option<KernelPorts>,
        port_share: Option<usize>,
        max_sessions: usize,
        max_sessions_per_endpoint: Option<usize>,
    ) -> Result<Self, String> {
        if range_len(&ports) == 0 {
            return Err("the nat-fast port range is empty".into());
        }
        let kernel_ports = match kernel_ports {
            None => default_kernel_ports(&ports),
            Some(KernelPorts::Off) => None,
            Some(KernelPorts::Range(k)) => {
                check_kernel_ports(&ports, &k)?;
                Some(k)
            }
        };
        let translator = translator_ports_for(&ports, kernel_ports.as_ref());
        let n = range_len(&translator);
        if let Some(s) = port_share {
            if s == 0 || s > n {
                return Err(format!(
                    "--nat-ports-per-endpoint {s}: give 1 to {n} (the translator's ports \
                     {}-{}: --nat-ports less --nat-kernel-ports)",
                    translator.start(),
                    translator.end()
                ));
            }
        }
        Ok(FastPathConfig {
            port_share: port_share.unwrap_or_else(|| default_port_share(&translator)),
            ports,
            kernel_ports,
            max_sessions,
            max_sessions_per_endpoint,
        })
    }

    /// The kernel masquerade range of nat-fast networks (see [`masquerade_ports_for`]):
    /// from the daemon's setting, so the rules of a network made before a restart are
    /// brought to it at start (`Firewall::reconcile`).
    pub fn kernel_masquerade_ports(&self) -> (u16, u16) {
        masquerade_ports_for(&self.ports)
    }

    /// The translator's external ports: `--nat-ports` less the tc programs' slice.
    pub fn translator_ports(&self) -> RangeInclusive<u16> {
        translator_ports_for(&self.ports, self.kernel_ports.as_ref())
    }

    /// `NAT_CFG`'s entry: the tc programs' slice, or `first == 0` (no session creation).
    pub fn nat_config(&self) -> NatConfig {
        let (first, last) = self
            .kernel_ports
            .as_ref()
            .map_or((0, 0), |k| (*k.start(), *k.end()));
        NatConfig {
            first,
            last,
            _pad: 0,
        }
    }

    /// An uplink translator's configuration.
    fn translator(&self, spec: &UplinkSpec) -> Config {
        Config {
            external_ip: spec.addr,
            uplink_mac: spec.mac,
            ports: self.translator_ports(),
            max_sessions: self.max_sessions,
            max_sessions_per_endpoint: self.max_sessions_per_endpoint,
            max_ports_per_endpoint: Some(self.port_share),
            timeouts: Timeouts::default(),
        }
    }
}

/// How long a control call waits for the data-plane thread (it answers between two
/// batches, normally within microseconds).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long status waits for the data-plane thread.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Slots of the socket map (`XSKS`); one per endpoint, one per uplink queue.
const XSK_SLOTS: u32 = 1024;

/// Why a nat-fast operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    #[error("nat-fast: {0}")]
    Xdp(#[from] XdpError),
    #[error("nat-fast: {0}")]
    Dataplane(#[from] dataplane::DataplaneError),
    #[error("nat-fast: cannot start: {what}: {cause}")]
    Start {
        what: &'static str,
        cause: std::io::Error,
    },
    #[error("nat-fast: the data-plane thread has stopped")]
    Stopped,
    #[error(
        "nat-fast: the data-plane thread did not answer within {} s",
        CALL_TIMEOUT.as_secs()
    )]
    Timeout,
    #[error("nat-fast: all {XSK_SLOTS} AF_XDP socket slots are in use")]
    NoSlot,
    #[error(
        "nat-fast: {ifname} has {features}: XDP would run in generic mode there, after GRO, \
         on super-packets larger than any AF_XDP frame, so this endpoint stays on the \
         kernel's nat path (as fast as mode=nat). A Linux bridge, a macvlan or a NIC driver \
         without XDP is such an interface; name one with native XDP in ovs.nat.uplink, or \
         use mode=nat"
    )]
    GenericXdp {
        ifname: String,
        features: crate::host::netdev::XdpFeatures,
    },
    #[error("nat-fast: cannot ask the kernel for {ifname}'s XDP features: {cause}")]
    Features {
        ifname: String,
        cause: std::io::Error,
    },
}

/// An uplink: the interface the translator sends from and receives on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UplinkSpec {
    pub name: String,
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
    pub rx_queues: u32,
}

/// A joining endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The veth host end (an OVS port).
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// The network's gateway: its bridge's internal port.
    pub gateway_mac: [u8; 6],
    pub bridge_ifindex: u32,
    pub subnet: Ipv4Net,
    /// Established sessions go to the XDP fast path (`-o ovs.nat.offload`, default on).
    pub offload: bool,
    /// Take over the flows the kernel's conntrack carries for it (recovery at start:
    /// sessions handed over at the last shutdown, flows started while it was down).
    pub adopt: bool,
}

/// Status for `dovesnap status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FastPathStatus {
    /// Interfaces with the XDP program, and how it is attached.
    pub attached: Vec<(String, String)>,
    /// nat-fast endpoints (veth host ends) on the kernel's nat path, and why.
    pub kernel_path: Vec<(String, String)>,
    /// XDP counters by name (all CPUs).
    pub xdp_counters: Vec<(String, u64)>,
    pub dataplane: DataplaneStatus,
    /// The data-plane thread's supervision: up, or down and why.
    pub health: HealthStatus,
    /// The host's forward rules that may drop nat-fast traffic: where, the rule, and
    /// how nat-fast honours it (`firewall::hostrules`).
    pub host_rules: Vec<(String, String, String)>,
}

/// An endpoint on the fast path: its veth and the socket-map slots of its queues.
struct EndpointSlots {
    ifindex: u32,
    slots: Slots,
    uplink: String,
}

struct UplinkState {
    spec: UplinkSpec,
    slots: Slots,
    users: usize,
}

/// The control plane's handle on the fast path.
pub struct FastPath {
    xdp: XdpProgram,
    commands: Sender<Command>,
    waker: std::sync::Arc<dataplane::Waker>,
    thread: Option<JoinHandle<()>>,
    config: FastPathConfig,
    health: std::sync::Arc<Health>,
    watchdog: Watchdog,
    uplinks: HashMap<String, UplinkState>,
    /// Endpoints on the fast path, by host ifname.
    endpoints: HashMap<String, EndpointSlots>,
    /// Endpoints that could not go on the fast path: host ifname -> why.
    kernel_path: HashMap<String, String>,
    slots: Vec<bool>,
    /// The host's forward rules last read, and what `HOSTFW` holds for them.
    host_rules: Vec<HostRule>,
    host_entries: Vec<([u8; 4], u8, crate::fastpath::xdp::HostFwMatch)>,
    host_subnets: Vec<Ipv4Net>,
    /// tc-engine endpoints, by their container-side host end (see `tc`).
    tc_endpoints: HashMap<String, tc::TcEndpoint>,
    /// Uplinks carrying the tc engine's uplink program, by name.
    tc_uplinks: HashMap<String, tc::TcUplink>,
}

impl FastPath {
    /// Loads the XDP program and starts the data-plane thread and the next-hop
    /// resolver (on the current tokio runtime). Nothing is attached yet.
    pub fn start(config: FastPathConfig) -> Result<Self, FastPathError> {
        let ports = config.ports.clone();
        if let Ok(range) = crate::host::sysctl::local_port_range() {
            let (lo, hi) = (*range.start(), *range.end());
            if hi >= *ports.start() && lo <= *ports.end() {
                warn!(
                    "net.ipv4.ip_local_port_range ({lo}-{hi}) overlaps nat-fast's ports \
                     ({}-{}, the translator's and the tc programs'): a host connection \
                     and a translated one could pick the same port towards the same \
                     remote, and the host's would lose its replies; keep the two ranges \
                     apart (see --nat-ports)",
                    ports.start(),
                    ports.end(),
                );
            }
        }
        // Room in the steering map for every uplink's full table (not preallocated).
        let steered = u32::try_from(config.max_sessions.saturating_mul(2)).unwrap_or(u32::MAX);
        let mut xdp =
            XdpProgram::load_sized(steered.max(crate::fastpath::xdp::MAX_STEERED_SESSIONS))?;
        xdp.set_nat_config(&config.nat_config())?;
        let maps = xdp.take_dataplane_maps()?;
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let (resolver, _task) =
            nexthop::spawn_resolver(ev_tx).map_err(|cause| FastPathError::Start {
                what: "rtnetlink",
                cause,
            })?;
        let waker =
            std::sync::Arc::new(
                dataplane::Waker::new().map_err(|cause| FastPathError::Start {
                    what: "eventfd",
                    cause,
                })?,
            );
        let health = std::sync::Arc::new(Health::default());
        let watchdog_bypass = maps.bypass.try_clone()?;
        let links = dataplane::Links {
            resolver,
            events: ev_rx,
            waker: waker.clone(),
            health: health.clone(),
        };
        let dp = Dataplane::new(XskConfig::default(), maps, links)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("dovesnap-nat".into())
            .spawn(move || dp.supervise(rx))
            .map_err(|cause| FastPathError::Start {
                what: "data-plane thread",
                cause,
            })?;
        let watchdog = Watchdog::start(health.clone(), watchdog_bypass).map_err(|cause| {
            FastPathError::Start {
                what: "watchdog thread",
                cause,
            }
        })?;
        info!("nat-fast data plane started");
        Ok(FastPath {
            xdp,
            commands: tx,
            waker,
            thread: Some(thread),
            config,
            health,
            watchdog,
            uplinks: HashMap::new(),
            endpoints: HashMap::new(),
            kernel_path: HashMap::new(),
            slots: vec![false; XSK_SLOTS as usize],
            host_rules: Vec::new(),
            host_entries: Vec::new(),
            host_subnets: Vec::new(),
            tc_endpoints: HashMap::new(),
            tc_uplinks: HashMap::new(),
        })
    }

    /// Sends a command to the data-plane thread and waits for its answer, at most
    /// [`CALL_TIMEOUT`]: the driver lock is held meanwhile, and a stuck thread must not
    /// hold Docker's calls with it.
    fn call<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, FastPathError> {
        self.call_within(CALL_TIMEOUT, make)
    }

    /// [`FastPath::call`] for a command the data plane may refuse.
    fn request<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, DataplaneError>>) -> Command,
    ) -> Result<T, FastPathError> {
        Ok(self.call(make)??)
    }

    fn call_within<T>(
        &self,
        timeout: std::time::Duration,
        make: impl FnOnce(Sender<T>) -> Command,
    ) -> Result<T, FastPathError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.commands
            .send(make(tx))
            .map_err(|_| FastPathError::Stopped)?;
        self.waker.wake();
        rx.recv_timeout(timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => FastPathError::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => FastPathError::Stopped,
        })
    }

    fn alloc_slots(&mut self, count: u32) -> Result<Slots, FastPathError> {
        let n = count as usize;
        let start = (0..=self.slots.len().saturating_sub(n))
            .find(|&s| self.slots[s..s + n].iter().all(|u| !u))
            .ok_or(FastPathError::NoSlot)?;
        for s in &mut self.slots[start..start + n] {
            *s = true;
        }
        Ok(Slots {
            first: start as u32,
            count,
        })
    }

    fn free_slots(&mut self, slots: Slots) {
        for s in slots.iter() {
            if let Some(u) = self.slots.get_mut(s as usize) {
                *u = false;
            }
        }
    }

    fn acquire_uplink(&mut self, spec: &UplinkSpec) -> Result<(), FastPathError> {
        if let Some(u) = self.uplinks.get_mut(&spec.name) {
            u.users += 1;
            return Ok(());
        }
        let slots = self.alloc_slots(spec.rx_queues.max(1))?;
        let config = self.config.translator(spec);
        let name = spec.name.clone();
        let ifindex = spec.ifindex;
        let r = self.request(|reply| Command::AddUplink {
            name,
            ifindex,
            config,
            slots,
            reply,
        });
        if let Err(e) = r {
            self.free_slots(slots);
            return Err(e);
        }
        let cfg = iface_entry(IFACE_UPLINK, slots, spec.addr, spec.ifindex);
        if let Err(e) = self.steer(&spec.name, spec.ifindex, &cfg) {
            let _ = self.xdp.remove_iface(spec.ifindex);
            let _ = self.keep_tc_uplink_entry(&spec.name);
            let name = spec.name.clone();
            let _ = self.call(|reply| Command::RemoveUplink { name, reply });
            self.free_slots(slots);
            return Err(e.into());
        }
        self.uplinks.insert(
            spec.name.clone(),
            UplinkState {
                spec: spec.clone(),
                slots,
                users: 1,
            },
        );
        Ok(())
    }

    fn release_uplink(&mut self, name: &str) {
        let Some(u) = self.uplinks.get_mut(name) else {
            return;
        };
        u.users -= 1;
        if u.users > 0 {
            return;
        }
        let u = self.uplinks.remove(name).expect("present");
        if let Err(e) = self.xdp.detach(&u.spec.name) {
            warn!(uplink = %u.spec.name, "cannot detach XDP: {e}");
        }
        let _ = self.xdp.remove_iface(u.spec.ifindex);
        if let Err(e) = self.keep_tc_uplink_entry(&u.spec.name) {
            warn!(uplink = %u.spec.name, "the tc programs lose the uplink: {e}");
        }
        let name = name.to_string();
        let _ = self.call(|reply| Command::RemoveUplink { name, reply });
        self.free_slots(u.slots);
        info!(uplink = %u.spec.name, "nat-fast uplink released");
    }

    /// Puts an endpoint on the fast path (Join, or recovery after a restart).
    pub fn add_endpoint(
        &mut self,
        ep: &EndpointSpec,
        uplink: &UplinkSpec,
    ) -> Result<(), FastPathError> {
        if self.endpoints.contains_key(&ep.host_ifname) {
            self.remove_endpoint(&ep.host_ifname);
        }
        // The program must run natively on both interfaces: in generic mode it sees
        // GRO/GSO super-packets, and steering those to AF_XDP would lose them.
        require_native_xdp(&uplink.name, uplink.ifindex)?;
        require_native_xdp(&ep.host_ifname, ep.host_ifindex)?;
        self.acquire_uplink(uplink)?;
        // A socket per rx queue: a frame steered on a queue without one would take the
        // kernel path, and a connection would start on one path and go on on the other.
        let queues = rx_queues(&ep.host_ifname).max(1);
        let slots = match self.alloc_slots(queues) {
            Ok(s) => s,
            Err(e) => {
                self.release_uplink(&uplink.name);
                return Err(e);
            }
        };
        let endpoint = ep.clone();
        let up_name = uplink.name.clone();
        let r = self.request(|reply| Command::AddEndpoint {
            endpoint,
            uplink: up_name,
            slots,
            reply,
        });
        if let Err(e) = r {
            self.free_slots(slots);
            self.release_uplink(&uplink.name);
            return Err(e);
        }
        let cfg = IfaceConfig {
            subnet: u32::from_ne_bytes(ep.subnet.addr().octets()),
            netmask: u32::from_ne_bytes(ep.subnet.netmask().octets()),
            fib_ifindex: ep.bridge_ifindex,
            gateway_mac: ep.gateway_mac,
            ..iface_entry(IFACE_ENDPOINT, slots, ep.ip, uplink.ifindex)
        };
        self.endpoints.insert(
            ep.host_ifname.clone(),
            EndpointSlots {
                ifindex: ep.host_ifindex,
                slots,
                uplink: uplink.name.clone(),
            },
        );
        if let Err(e) = self.steer(&ep.host_ifname, ep.host_ifindex, &cfg) {
            self.remove_endpoint(&ep.host_ifname);
            return Err(e.into());
        }
        info!(port = %ep.host_ifname, ip = %ep.ip, uplink = %uplink.name, "endpoint on the nat-fast path");
        Ok(())
    }

    /// Configures `ifname` in `IFACES` and attaches the program to it.
    fn steer(&mut self, ifname: &str, ifindex: u32, cfg: &IfaceConfig) -> Result<(), XdpError> {
        self.xdp.set_iface(ifindex, cfg)?;
        self.xdp.attach(ifname).map(|_| ())
    }

    /// Records why an endpoint stays on the kernel's nat path (shown by `dovesnap
    /// status` until the endpoint is removed or goes on the fast path).
    pub fn set_kernel_path(&mut self, host_ifname: &str, why: String) {
        self.kernel_path.insert(host_ifname.to_string(), why);
    }

    /// Takes an endpoint off the fast path (Leave, DeleteEndpoint). Idempotent.
    pub fn remove_endpoint(&mut self, host_ifname: &str) {
        self.kernel_path.remove(host_ifname);
        let Some(EndpointSlots {
            ifindex,
            slots,
            uplink,
        }) = self.endpoints.remove(host_ifname)
        else {
            return;
        };
        if self.xdp.attached().iter().any(|a| a == host_ifname) {
            if let Err(e) = self.xdp.detach(host_ifname) {
                warn!(port = %host_ifname, "cannot detach XDP: {e}");
            }
        }
        let _ = self.xdp.remove_iface(ifindex);
        let name = host_ifname.to_string();
        let _ = self.call(|reply| Command::RemoveEndpoint {
            host_ifname: name,
            reply,
        });
        self.free_slots(slots);
        self.release_uplink(&uplink);
    }

    /// The host ends of the endpoints on the fast path.
    pub fn endpoint_names(&self) -> Vec<String> {
        self.endpoints.keys().cloned().collect()
    }

    /// The external address of an uplink in use.
    pub fn uplink_addr(&self, name: &str) -> Option<Ipv4Addr> {
        self.uplinks.get(name).map(|u| u.spec.addr)
    }

    /// Whether the endpoint is on the fast path.
    pub fn has_endpoint(&self, host_ifname: &str) -> bool {
        self.endpoints.contains_key(host_ifname)
    }

    /// Publishes `external_port` of the uplink's address to `ip:internal_port`.
    pub fn publish(
        &self,
        uplink: &str,
        protocol: Protocol,
        external_port: u16,
        ip: Ipv4Addr,
        internal_port: u16,
    ) -> Result<(), FastPathError> {
        let uplink = uplink.to_string();
        let port = Publication {
            protocol,
            external_port,
            ip,
            internal_port,
        };
        self.request(|reply| Command::Publish {
            uplink,
            port,
            reply,
        })
    }

    /// Withdraws a publication. Idempotent.
    pub fn unpublish(&self, uplink: &str, protocol: Protocol, external_port: u16) {
        let uplink = uplink.to_string();
        let _ = self.call(|reply| Command::Unpublish {
            uplink,
            protocol,
            external_port,
            reply,
        });
    }

    /// Reads the host's forward rules, judged against the nat-fast `subnets`, and keeps
    /// on the kernel's path what they may drop (see `firewall::hostrules`): when their
    /// compiled entries changed, the data plane hands the sessions they newly cover to
    /// the kernel's conntrack and then rewrites `HOSTFW`. Call it before the first
    /// endpoint goes on the fast path, and again whenever the rules may have changed.
    pub fn follow_host_rules(&mut self, subnets: Vec<Ipv4Net>) -> Result<(), FastPathError> {
        let rules: Vec<HostRule> = hostrules::read_or_all(&subnets);
        let entries = hostrules::compile(&rules);
        self.host_rules = rules;
        self.host_subnets = subnets;
        if entries == self.host_entries {
            return Ok(());
        }
        let handed = self.request(|reply| Command::HostFilter {
            entries: entries.clone(),
            reply,
        })?;
        info!(
            prefixes = entries.len(),
            sessions_handed_over = handed.created,
            refused = handed.failed,
            "nat-fast: the host's forward rules changed; what they may drop takes the kernel's path"
        );
        self.host_entries = entries;
        Ok(())
    }

    /// The nat-fast subnets the host's rules were last judged against.
    pub fn host_subnets(&self) -> Vec<Ipv4Net> {
        self.host_subnets.clone()
    }

    /// A snapshot of counters and sessions.
    pub fn status(&self) -> FastPathStatus {
        let attached = self
            .xdp
            .attached()
            .into_iter()
            .map(|i| {
                let mode = self.xdp.mode(&i).map(|m| m.to_string()).unwrap_or_default();
                (i, mode)
            })
            .chain(
                (self.xdp.tc_attached().into_iter())
                    .map(|(i, program)| (i, format!("tcx {}", program.name()))),
            )
            .collect();
        let xdp_counters = match self.xdp.counters() {
            Ok(c) => dovesnap_ebpf::Counter::ALL
                .iter()
                .map(|k| (k.name().to_string(), c.get(*k)))
                .collect(),
            Err(_) => Vec::new(),
        };
        // Status must answer while the thread is stuck: not asked then, and asked
        // briefly otherwise (the watchdog needs a few seconds to call a stall one).
        let dataplane = if self.health.state() == supervisor::State::Stalled {
            DataplaneStatus::default()
        } else {
            self.call_within(STATUS_TIMEOUT, |reply| Command::Status { reply })
                .unwrap_or_default()
        };
        let health = self.health.status();
        let mut kernel_path: Vec<(String, String)> = self
            .kernel_path
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.health.is_down() {
            // Every endpoint's frames go to the kernel while the data plane is down.
            let why = format!(
                "the nat-fast data plane is {}: {}",
                health.state, health.last_failure
            );
            kernel_path.extend(self.endpoints.keys().map(|k| (k.clone(), why.clone())));
        }
        kernel_path.sort();
        FastPathStatus {
            attached,
            kernel_path,
            xdp_counters,
            dataplane,
            health,
            host_rules: self
                .host_rules
                .iter()
                .map(|r| (r.place.clone(), r.text.clone(), r.how()))
                .collect(),
        }
    }

    /// Test hook (`dovesnap daemon --test-hooks`): makes the data-plane thread fail.
    pub fn inject(&self, fault: Fault) {
        warn!(?fault, "test hook: failing the data plane on purpose");
        let _ = self.commands.send(Command::Fault(fault));
        self.waker.wake();
    }

    /// Detaches every program, closes every socket and stops the thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.watchdog.stop();
        // The thread hands its sessions to conntrack and turns the bypass on before it
        // closes its sockets; only then do the programs go.
        let _ = self.commands.send(Command::Stop);
        self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = self.xdp.detach_all() {
            warn!("cannot detach every XDP program: {e}");
        }
        self.endpoints.clear();
        self.uplinks.clear();
    }
}

impl Drop for FastPath {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_inner();
        }
    }
}

/// The `IFACES` entry of an interface of `kind` whose rx queues have `slots`, with
/// address `addr` (the container's, or the uplink's external one), translating through
/// the uplink `uplink_ifindex`. Endpoints add their subnet, FIB input and gateway.
fn iface_entry(kind: u32, slots: Slots, addr: Ipv4Addr, uplink_ifindex: u32) -> IfaceConfig {
    IfaceConfig {
        kind,
        xsk_slot: slots.first,
        xsk_slots: slots.count,
        addr: u32::from_ne_bytes(addr.octets()),
        uplink_ifindex,
        ..IfaceConfig::default()
    }
}

/// Refuses an interface whose driver cannot run XDP itself.
fn require_native_xdp(ifname: &str, ifindex: u32) -> Result<(), FastPathError> {
    let features =
        crate::host::netdev::query(ifindex).map_err(|cause| FastPathError::Features {
            ifname: ifname.to_string(),
            cause,
        })?;
    if features.native() {
        Ok(())
    } else {
        Err(FastPathError::GenericXdp {
            ifname: ifname.to_string(),
            features,
        })
    }
}

/// The number of RX queues of `ifname` (one AF_XDP socket each): from the driver,
/// asked in the calling thread's network namespace, else from sysfs (which shows the
/// namespace sysfs was mounted in).
pub fn rx_queues(ifname: &str) -> u32 {
    if let Some(n) = crate::host::ethtool::rx_queue_count(ifname) {
        return n;
    }
    std::fs::read_dir(format!("/sys/class/net/{ifname}/queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_ports_are_checked_and_leave_the_kernel_the_rest() {
        assert_eq!(parse_nat_ports("1024-32767"), Ok(1024..=32767));
        assert_eq!(
            masquerade_ports_for(&TRANSLATOR_PORTS),
            KERNEL_MASQUERADE_PORTS
        );
        assert_eq!(masquerade_ports_for(&(61000..=65535)), (1024, 60999));
        // In the middle: the larger side.
        assert_eq!(masquerade_ports_for(&(20000..=30000)), (30001, 65535));
        assert_eq!(masquerade_ports_for(&(40000..=60000)), (1024, 39999));
        let err = |t: &str| parse_nat_ports(t).unwrap_err();
        assert!(err("1024").contains("expected LO-HI"));
        assert!(err("80-2000").contains("1024 or above"));
        assert!(err("3000-2000").contains("3000 is above 2000"));
        assert!(err("2000-70000").contains("not a port"));
        assert!(err("1024-65535").contains("leaves 0 contiguous ports"));
        assert!(err("1024-64600").contains("leave at least 1024"));
        assert_eq!(parse_nat_ports("2048-64511"), Ok(2048..=64511));
        assert_eq!(default_port_share(&TRANSLATOR_PORTS), 23808);
        assert_eq!(default_port_share(&(5..=5)), 1);
    }

    #[test]
    fn settings_are_checked_and_defaulted() {
        let c = FastPathConfig::new(2048..=4095, None, None, 100, Some(10)).unwrap();
        // The tc slice takes the upper half; the translator's share follows its rest.
        assert_eq!(c.kernel_ports, Some(3072..=4095));
        assert_eq!(c.translator_ports(), 2048..=3071);
        assert_eq!(c.port_share, 768);
        assert_eq!(c.kernel_masquerade_ports(), (4096, 65535));
        let d = FastPathConfig::default();
        assert_eq!(d.kernel_ports, Some(16384..=32767));
        assert_eq!(d.translator_ports(), 1024..=16383);
        assert_eq!(d.port_share, 11520);
        assert_eq!(d.kernel_masquerade_ports(), KERNEL_MASQUERADE_PORTS);
        assert_eq!((d.nat_config().first, d.nat_config().last), (16384, 32767));
        let err = FastPathConfig::new(2048..=4095, None, Some(1500), 100, None).unwrap_err();
        assert!(err.contains("give 1 to 1024"), "{err}");
        assert!(err.contains("2048-3071"), "{err}");
        assert!(FastPathConfig::new(2048..=4095, None, Some(0), 100, None).is_err());
        // Off: the translator keeps everything, NAT_CFG says "create nothing".
        let off = FastPathConfig::new(2048..=4095, Some(KernelPorts::Off), Some(2048), 100, None)
            .unwrap();
        assert_eq!(
            (off.kernel_ports.clone(), off.translator_ports()),
            (None, 2048..=4095)
        );
        assert_eq!(off.nat_config(), NatConfig::default());
    }

    #[test]
    fn the_tc_slice_sits_at_one_end_of_the_nat_ports_and_leaves_the_translator_some() {
        assert_eq!(parse_kernel_ports("none"), Ok(KernelPorts::Off));
        assert_eq!(parse_kernel_ports("0"), Ok(KernelPorts::Off));
        assert_eq!(
            parse_kernel_ports("20000-32767"),
            Ok(KernelPorts::Range(20000..=32767))
        );
        assert!(parse_kernel_ports("20000")
            .unwrap_err()
            .contains("expected LO-HI"));
        assert!(parse_kernel_ports("3-2")
            .unwrap_err()
            .contains("3 is above 2"));
        assert!(parse_kernel_ports("x-2")
            .unwrap_err()
            .contains("not a port"));
        let with = |k: RangeInclusive<u16>| {
            FastPathConfig::new(
                TRANSLATOR_PORTS,
                Some(KernelPorts::Range(k)),
                None,
                100,
                None,
            )
        };
        // At the bottom: the translator gets the top.
        let c = with(1024..=4095).unwrap();
        assert_eq!(c.translator_ports(), 4096..=32767);
        assert_eq!(c.port_share, default_port_share(&(4096..=32767)));
        assert_eq!(
            with(20000..=32767).unwrap().translator_ports(),
            1024..=19999
        );
        let err = |k| with(k).unwrap_err();
        assert!(err(30000..=40000).contains("not inside --nat-ports 1024-32767"));
        assert!(err(512..=2000).contains("not inside"));
        assert!(err(4096..=8191).contains("in the middle"));
        assert!(err(1024..=32767).contains("leaves 0 ports"));
        assert!(err(1024..=32600).contains("leave it at least 256"));
        assert_eq!(
            with(32512..=32767).unwrap().translator_ports(),
            1024..=32511
        );
        assert_eq!(
            with(1024..=32511).unwrap().translator_ports(),
            32512..=32767
        );
        // Defaults: the upper half, rounded to 1024 where the translator keeps enough;
        // nothing for a range too small to split.
        assert_eq!(default_kernel_ports(&(1024..=32767)), Some(16384..=32767));
        assert_eq!(default_kernel_ports(&(40000..=40999)), Some(40500..=40999));
        assert_eq!(default_kernel_ports(&(2048..=2559)), Some(2304..=2559));
        assert_eq!(default_kernel_ports(&(2048..=2558)), None);
        for ports in [1024..=32767, 40000..=40999, 2048..=2559, 5000..=65000] {
            let k = default_kernel_ports(&ports).unwrap();
            check_kernel_ports(&ports, &k).unwrap();
        }
    }
}
