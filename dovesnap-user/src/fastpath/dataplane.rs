//! The nat-fast data-plane thread: AF_XDP sockets in, translator, AF_XDP sockets out.
//!
//! One thread owns everything on the packet path: its frame I/O (a [`FrameIo`]: the
//! [`Xsk`], UMEM and sockets, in the daemon), one [`Translator`] per uplink, the
//! next-hop cache, and the eBPF maps the translator keeps current (a [`SteeringMaps`]:
//! the socket map, the ports and sessions maps, the offloaded flows). The control plane
//! talks to it only through [`Command`]s on a channel, answered on reply channels, so
//! nothing on the packet path takes a lock. Unit tests drive it on in-memory fakes of
//! both (see `dataplane/tests.rs`).
//!
//! Per batch: receive from every socket, translate each frame in place, address it
//! (the translator sets the Ethernet header towards containers; towards the uplink the
//! next hop comes from [`NextHops`]), queue it on the socket it leaves by, flush. A
//! frame whose next hop is not known yet waits in a bounded queue while the resolver
//! asks the kernel; it is sent when the answer comes, or dropped (counted) after
//! [`PENDING_TIMEOUT`].

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use dovesnap_ebpf::{FlowKey, PortKey};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

use crate::fastpath::afxdp::{PortId, Rx, Xsk, XskConfig};
use crate::fastpath::frameio::{FrameIo, SteeringMaps};
use crate::fastpath::nexthop::{Lookup, NextHopEvent, NextHops, Resolver};
use crate::fastpath::xdp::{DataplaneMaps, HostFwMatch, XdpError, PROTO_ICMP};
use crate::translator::{
    Config, EndpointInfo, PortEvent, Protocol, SessionView, Stats, Translator, Verdict,
};

use super::offload::{
    self, EndpointOf, EndpointPath, Offloads, RedirectTarget, SessionOf, UplinkPath,
};
use super::supervisor::{panic_message, Backoff, Health, State, SNAPSHOT_EVERY};
use super::EndpointSpec;

/// How long a frame may wait for its next hop before it is dropped.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames held for next-hop resolution, in all (each holds a UMEM frame).
pub const PENDING_MAX: usize = 256;
/// The least time between two warnings about the same recurring failure.
const WARN_INTERVAL: Duration = Duration::from_secs(5);
/// After the last frame, how long the thread keeps polling its rings without sleeping
/// (adaptive busy-poll): a request/response exchange or a burst finds it awake instead
/// of paying a wake-up from poll(2) per frame. Idle, it sleeps.
const SPIN_WINDOW: Duration = Duration::from_micros(200);
/// How often sessions are expired.
const EXPIRE_INTERVAL: Duration = Duration::from_millis(500);
/// How often the devices offloads redirect to are asked whether they still accept
/// redirects.
const RECHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long after taking flows over (or coming back) the kernel's entries of the flows
/// the translator carries are deleted: the program steers them by then.
const FORGET_KERNEL_ENTRIES_AFTER: Duration = Duration::from_secs(2);
/// How long the thread sleeps in poll(2) when nothing is happening (it also bounds how
/// late a command is seen).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Wakes the data-plane thread out of poll(2) when a command is queued (an eventfd in
/// its poll set), so control-plane calls do not wait for the idle timeout.
#[derive(Debug)]
pub struct Waker(std::os::fd::OwnedFd);

impl Waker {
    pub fn new() -> std::io::Result<Waker> {
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Waker(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// Makes the next (or current) poll return.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd; a full counter
        // (EAGAIN) already means "awake", so the result is ignored.
        unsafe {
            libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                (&one as *const u64).cast(),
                8,
            )
        };
    }

    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN (nothing pending) is
        // fine on this non-blocking fd.
        unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                (&mut v as *mut u64).cast(),
                8,
            )
        };
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.0)
    }
}

/// Why the data plane refused a command (shown to the user as the reason an endpoint,
/// uplink or published port is not on the fast path).
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot set up AF_XDP: {0}")]
    AfXdp(crate::fastpath::afxdp::AfXdpError),
    #[error("no nat-fast uplink {0}")]
    NoUplink(String),
    #[error("uplink {0} is already in use by the translator")]
    UplinkInUse(String),
    #[error("cannot open an AF_XDP socket on {ifname} queue {queue}: {cause}")]
    Socket {
        ifname: String,
        queue: u32,
        cause: crate::fastpath::afxdp::AfXdpError,
    },
    #[error("cannot register the AF_XDP socket of {ifname}: {cause}")]
    Register { ifname: String, cause: XdpError },
    #[error(transparent)]
    Nat(#[from] crate::translator::NatError),
    #[error(transparent)]
    Map(#[from] XdpError),
}

/// A request from the control plane.
pub enum Command {
    AddUplink {
        name: String,
        ifindex: u32,
        config: Config,
        /// Socket slots, one per rx queue: queue `q` gets `slots.first + q`.
        slots: Slots,
        reply: Sender<Result<(), DataplaneError>>,
    },
    RemoveUplink {
        name: String,
        reply: Sender<()>,
    },
    AddEndpoint {
        endpoint: EndpointSpec,
        uplink: String,
        /// Socket slots, one per rx queue of its veth.
        slots: Slots,
        reply: Sender<Result<(), DataplaneError>>,
    },
    RemoveEndpoint {
        host_ifname: String,
        reply: Sender<()>,
    },
    Publish {
        uplink: String,
        port: Publication,
        reply: Sender<Result<(), DataplaneError>>,
    },
    Unpublish {
        uplink: String,
        protocol: Protocol,
        external_port: u16,
        reply: Sender<()>,
    },
    /// The host's forward rules changed: `HOSTFW` becomes `entries` (see
    /// `firewall::hostrules`), after the sessions they newly cover were handed to the
    /// kernel's conntrack (their next frames take the kernel's path). Answers how many
    /// sessions went.
    HostFilter {
        entries: Vec<([u8; 4], u8, HostFwMatch)>,
        reply: Sender<Result<crate::fastpath::conntrack::Handed, DataplaneError>>,
    },
    Status {
        reply: Sender<DataplaneStatus>,
    },
    /// Test hook (`dovesnap daemon --test-hooks`): fail on purpose.
    Fault(Fault),
    Stop,
}

/// A published port: `external_port` of the uplink's address to `ip:internal_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publication {
    pub protocol: Protocol,
    pub external_port: u16,
    pub ip: Ipv4Addr,
    pub internal_port: u16,
}

/// A failure made on purpose, to test the supervision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The thread panics.
    Panic,
    /// The thread blocks this long without a turn of its loop.
    Stall(Duration),
}

/// A run of slots of the socket map (`XSKS`): an interface's rx queue `q` gets
/// `first + q`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slots {
    pub first: u32,
    pub count: u32,
}

impl Slots {
    pub fn iter(self) -> std::ops::Range<u32> {
        self.first..self.first + self.count
    }
}

/// A snapshot for `dovesnap status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct DataplaneStatus {
    pub uplinks: Vec<UplinkStatus>,
    /// Frames and bytes through the translator, per endpoint.
    pub endpoints: Vec<EndpointCounters>,
    /// Data-plane counters (frames, drops by reason, next-hop waits).
    pub counters: Vec<(String, u64)>,
}

/// What the translator carried for one endpoint (frames it sent out for the container,
/// and frames it delivered to it).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct EndpointCounters {
    /// The veth host end.
    pub port: String,
    pub ip: String,
    pub out_frames: u64,
    pub out_bytes: u64,
    pub in_frames: u64,
    pub in_bytes: u64,
    /// Frames and bytes the XDP program forwarded itself for offloaded sessions.
    pub offload: offload::OffloadTraffic,
}

/// One uplink's translator.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UplinkStatus {
    pub name: String,
    pub external_ip: String,
    pub endpoints: usize,
    pub sessions: usize,
    /// Up to [`SESSIONS_SHOWN`] sessions, most recent first.
    pub session_list: Vec<String>,
    pub counters: Vec<(String, u64)>,
    /// The uplink accepts XDP redirects: offloaded sessions' outbound frames are sent
    /// by XDP; otherwise they stay on AF_XDP.
    #[serde(default)]
    pub redirect_target: bool,
    /// The translator's external port range (`LO-HI`).
    #[serde(default)]
    pub ports: String,
    /// Ports per protocol one container may map (0: the whole range).
    #[serde(default)]
    pub port_share: usize,
}

/// Sessions listed per uplink in a status snapshot.
pub const SESSIONS_SHOWN: usize = 50;

struct Uplink {
    translator: Translator,
    external_ip: Ipv4Addr,
    queues: Queues,
}

/// An interface's sockets: queue `q`'s is `ports[q]`, in socket-map slot
/// `first_slot + q`.
struct Queues {
    ports: Vec<PortId>,
    first_slot: u32,
}

impl Queues {
    /// Queue 0's socket: the one frames are sent from, and the endpoint's id.
    fn first(&self) -> PortId {
        self.ports[0]
    }
}

#[derive(Clone, Copy)]
enum Role {
    /// A container's veth (one of its queues): frames go outbound through `uplink`;
    /// `first` is the endpoint's first socket, its id for counters and TX.
    Endpoint { uplink: usize, first: u32 },
    /// One queue of an uplink: frames go inbound.
    Uplink { uplink: usize },
}

struct Held<F> {
    frame: F,
    uplink: usize,
    remote: Ipv4Addr,
    since: Instant,
}

#[derive(Default)]
struct Counters {
    rx: u64,
    to_uplink: u64,
    to_endpoint: u64,
    dropped: u64,
    held: u64,
    held_sent: u64,
    held_timeout: u64,
    held_overflow: u64,
    unreachable: u64,
    stray: u64,
    /// Sessions whose steering entry could not be written (`SESSIONS` full): their
    /// replies take the kernel path.
    steer_failed: u64,
}

impl Counters {
    fn list(&self) -> Vec<(String, u64)> {
        [
            ("rx", self.rx),
            ("to_uplink", self.to_uplink),
            ("to_endpoint", self.to_endpoint),
            ("dropped", self.dropped),
            ("nexthop_wait", self.held),
            ("nexthop_wait_sent", self.held_sent),
            ("nexthop_wait_timeout", self.held_timeout),
            ("nexthop_wait_overflow", self.held_overflow),
            ("nexthop_unreachable", self.unreachable),
            ("stray_frames", self.stray),
            ("steer_map_failed", self.steer_failed),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// An endpoint's sockets: one per rx queue of its veth, in the socket map's slots.
struct EndpointSockets {
    queues: Queues,
    /// Index of its uplink in `Dataplane::uplinks`.
    uplink: usize,
    ip: Ipv4Addr,
}

/// What the translator carried for one endpoint: out from the container, in to it.
#[derive(Clone, Copy, Debug, Default)]
struct Traffic {
    out_frames: u64,
    out_bytes: u64,
    in_frames: u64,
    in_bytes: u64,
}

/// The thread's state: generic over its frame I/O and its maps (AF_XDP sockets and
/// the eBPF maps in the daemon, in-memory fakes in unit tests).
pub struct Dataplane<Io: FrameIo = Xsk, Maps: SteeringMaps = DataplaneMaps> {
    io: Io,
    maps: Maps,
    uplinks: Vec<Option<Uplink>>,
    uplink_names: HashMap<String, usize>,
    /// By host ifname.
    endpoints: HashMap<String, EndpointSockets>,
    roles: HashMap<u32, Role>,
    /// Per endpoint socket: frames/bytes out (from the container) and in.
    traffic: HashMap<u32, Traffic>,
    nexthops: NextHops,
    resolver: Resolver,
    events: Receiver<NextHopEvent>,
    pending: VecDeque<Held<Io::Frame>>,
    counters: Counters,
    last_flush_warning: Instant,
    last_steer_warning: Instant,
    last_offload_warning: Instant,
    last_ct_warning: Instant,
    waker: std::sync::Arc<Waker>,
    offloads: Offloads,
    /// Asks the kernel for devices' XDP features (`None`: it cannot answer).
    netdev: Option<crate::host::netdev::Querier>,
    /// Shared with the watchdog and status (see [`super::supervisor`]).
    health: std::sync::Arc<Health>,
    backoff: Backoff,
    /// When to delete the kernel's entries of the flows the translator carries again
    /// (taken over, or handed over and back): a moment after it took them, once the
    /// program steers them.
    forget_kernel_entries_at: Option<Instant>,
    /// What `HOSTFW` holds (see [`Command::HostFilter`]).
    host_filter: Vec<([u8; 4], u8, HostFwMatch)>,
    /// `CT`'s sessions by owner at the last sweep, and what the sweeps removed.
    ct: super::ct_gc::CtTally,
}

/// What the data-plane thread is connected to besides its sockets and maps.
pub struct Links {
    /// Asks for next hops; the answers come on `events`.
    pub resolver: Resolver,
    pub events: Receiver<NextHopEvent>,
    /// Wakes the thread when a command is queued.
    pub waker: std::sync::Arc<Waker>,
    /// Shared with the watchdog and status (see [`super::supervisor`]).
    pub health: std::sync::Arc<Health>,
}

impl Dataplane {
    /// The daemon's data plane: AF_XDP sockets of a new UMEM, the loaded program's maps.
    pub fn new(
        xsk_config: XskConfig,
        maps: DataplaneMaps,
        links: Links,
    ) -> Result<Self, DataplaneError> {
        let xsk = Xsk::new(xsk_config).map_err(DataplaneError::AfXdp)?;
        let netdev = crate::host::netdev::Querier::new()
            .inspect_err(|e| {
                warn!("cannot ask the kernel for XDP features ({e}): no offload to XDP")
            })
            .ok();
        Ok(Dataplane::with_io(xsk, maps, links, netdev))
    }
}

impl<Io: FrameIo, Maps: SteeringMaps> Dataplane<Io, Maps> {
    /// A data plane on `io` and `maps`; `netdev` asks the kernel for devices' XDP
    /// features (`None`: nothing is offloaded to XDP).
    pub fn with_io(
        io: Io,
        maps: Maps,
        links: Links,
        netdev: Option<crate::host::netdev::Querier>,
    ) -> Self {
        let Links {
            resolver,
            events,
            waker,
            health,
        } = links;
        Dataplane {
            io,
            maps,
            uplinks: Vec::new(),
            uplink_names: HashMap::new(),
            endpoints: HashMap::new(),
            roles: HashMap::new(),
            traffic: HashMap::new(),
            nexthops: NextHops::new(65536),
            resolver,
            events,
            pending: VecDeque::new(),
            counters: Counters::default(),
            last_flush_warning: Instant::now() - WARN_INTERVAL,
            last_steer_warning: Instant::now() - WARN_INTERVAL,
            last_offload_warning: Instant::now() - WARN_INTERVAL,
            last_ct_warning: Instant::now() - WARN_INTERVAL,
            waker,
            offloads: Offloads::default(),
            netdev,
            health,
            backoff: Backoff::default(),
            forget_kernel_entries_at: None,
            host_filter: Vec::new(),
            ct: super::ct_gc::CtTally::default(),
        }
    }

    /// The thread's body: [`Dataplane::run`], and after a panic the same data plane
    /// again, its sessions handed to the kernel meanwhile (see [`super::supervisor`]).
    pub fn supervise(mut self, commands: Receiver<Command>) {
        loop {
            let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run(&commands);
            }));
            match turn {
                Ok(()) => return,
                Err(payload) => {
                    let why = format!(
                        "the data-plane thread panicked: {}",
                        panic_message(&*payload)
                    );
                    self.go_down(&why);
                }
            }
        }
    }

    /// After a failure: sessions to conntrack, then every frame to the kernel's path,
    /// then a backoff before the fast path comes back (or never, after too many).
    fn go_down(&mut self, why: &str) {
        let now = Instant::now();
        error!("nat-fast: {why}: its sessions go to the kernel's conntrack and every nat-fast frame to the kernel's path");
        // Sessions first: a frame of theirs reaching the kernel before its entry exists
        // would get a different mapping, or a reset from the host.
        let handed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.hand_over()));
        match handed {
            Ok(Ok(h)) => {
                info!(
                    created = h.created,
                    failed = h.failed,
                    "nat-fast: sessions handed to conntrack"
                );
                if let Some(e) = &h.first_error {
                    warn!("nat-fast: conntrack refused a session: {e}");
                }
                self.health.handed_over(h.created, h.failed);
            }
            Ok(Err(e)) => error!("nat-fast: cannot hand sessions to conntrack: {e}"),
            Err(p) => error!(
                "nat-fast: handing sessions over panicked: {}",
                panic_message(&*p)
            ),
        }
        if let Err(e) = self.maps.set_bypass(true) {
            error!("nat-fast: cannot turn the XDP bypass on: {e}");
        }
        match self.backoff.on_failure(now) {
            Some(wait) => {
                warn!(
                    "nat-fast: the fast path comes back in {} ms",
                    wait.as_millis()
                );
                self.health.failed(why, Some(now + wait));
            }
            None => {
                error!("nat-fast: too many failures: the fast path stays off (everything on the kernel's path) until the daemon restarts");
                self.health.failed(why, None);
            }
        }
    }

    /// Deletes the kernel's entries of the flows the translator carries (see
    /// `forget_kernel_entries_at`), once the fast path is up.
    fn forget_kernel_entries(&mut self, now: Instant) {
        if self.forget_kernel_entries_at.is_none_or(|t| now < t) || self.health.is_down() {
            return;
        }
        self.forget_kernel_entries_at = None;
        let ct = match crate::fastpath::conntrack::Conntrack::open() {
            Ok(c) => c,
            Err(e) => {
                warn!("nat-fast: cannot open conntrack to clear taken-over entries: {e}");
                return;
            }
        };
        let mut failed = 0u64;
        for up in self.uplinks.iter().flatten() {
            for s in up.translator.sessions() {
                if let Some(e) =
                    crate::fastpath::conntrack::Entry::of_session(&s, up.external_ip, now)
                {
                    failed += u64::from(ct.forget(&e).is_err());
                }
            }
        }
        if failed > 0 {
            warn!(
                failed,
                "nat-fast: some kernel entries of taken-over flows could not be deleted"
            );
        }
    }

    /// Every live TCP/UDP session, as the conntrack entry that carries it on.
    fn kernel_entries(&self, now: Instant) -> Vec<crate::fastpath::conntrack::Entry> {
        let mut entries: Vec<_> = self
            .uplinks
            .iter()
            .flatten()
            .flat_map(|up| {
                up.translator.sessions().filter_map(move |s| {
                    crate::fastpath::conntrack::Entry::from_session(&s, up.external_ip, now)
                })
            })
            .collect();
        entries.extend(super::ct_gc::handover(&self.maps));
        entries
    }

    /// [`Command::HostFilter`]: sessions first (a frame of theirs reaching the kernel
    /// before its entry exists would get another mapping), then the map.
    fn set_host_filter(
        &mut self,
        entries: Vec<([u8; 4], u8, HostFwMatch)>,
    ) -> Result<crate::fastpath::conntrack::Handed, DataplaneError> {
        use crate::firewall::hostrules::covered;
        let now = Instant::now();
        let old = std::mem::take(&mut self.host_filter);
        let newly = |s: &crate::translator::SessionView| {
            let proto = s.protocol.number();
            let port = (proto != PROTO_ICMP).then(|| s.remote.port());
            covered(&entries, *s.remote.ip(), proto, port)
                && !covered(&old, *s.remote.ip(), proto, port)
        };
        let moving: Vec<_> = self
            .uplinks
            .iter()
            .flatten()
            .flat_map(|up| {
                up.translator
                    .sessions()
                    .filter(|s| newly(s))
                    .filter_map(|s| {
                        crate::fastpath::conntrack::Entry::from_session(&s, up.external_ip, now)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let handed = if moving.is_empty() {
            crate::fastpath::conntrack::Handed::default()
        } else {
            match crate::fastpath::conntrack::Conntrack::open() {
                Ok(ct) => ct.hand_over(moving),
                Err(e) => {
                    warn!("nat-fast: cannot open conntrack to hand over sessions the host's rules now cover: {e}");
                    crate::fastpath::conntrack::Handed::default()
                }
            }
        };
        let written = self.maps.set_host_filter(&entries);
        self.host_filter = entries;
        written?;
        Ok(handed)
    }

    /// Hands every live TCP/UDP session to conntrack, with the same mapping.
    fn hand_over(&self) -> std::io::Result<crate::fastpath::conntrack::Handed> {
        let entries = self.kernel_entries(Instant::now());
        Ok(crate::fastpath::conntrack::Conntrack::open()?.hand_over(entries))
    }

    /// Deletes the sessions the tc programs created once they expire, and counts `CT`'s
    /// sessions by owner (see [`super::ct_gc`]); `now_ns` is CLOCK_MONOTONIC, the
    /// programs' clock.
    fn sweep_ct(&mut self, now_ns: u64) {
        let failed = self.ct.failed;
        super::ct_gc::sweep(&mut self.maps, now_ns, &mut self.ct);
        if self.ct.failed > failed && self.last_ct_warning.elapsed() >= WARN_INTERVAL {
            self.last_ct_warning = Instant::now();
            warn!(
                failed = self.ct.failed,
                "nat-fast: the CT sweep could not read or delete some tc sessions; it tries again"
            );
        }
    }

    /// Follows the supervision's state at each turn of the loop.
    fn supervision_turn(&mut self, now: Instant) {
        self.health.beat(now);
        match self.health.state() {
            State::Up | State::GaveUp => {}
            State::Stalled => self.go_down("the data-plane thread made no progress"),
            State::Down if self.health.resume_due(now) => {
                // Flows the kernel started meanwhile keep the mapping the far side knows.
                self.adopt_from_kernel(None);
                match self.maps.set_bypass(false) {
                    Ok(()) => {
                        info!("nat-fast: the fast path is back");
                        self.health.resumed();
                        self.forget_kernel_entries_at = Some(now + FORGET_KERNEL_ENTRIES_AFTER);
                    }
                    Err(e) => error!("nat-fast: cannot turn the XDP bypass off: {e}"),
                }
            }
            State::Down => {}
        }
    }

    /// Runs until [`Command::Stop`] or until the control plane hangs up; closes every
    /// socket on the way out.
    pub fn run(&mut self, commands: &Receiver<Command>) {
        let mut batch: Vec<Rx<Io::Frame>> = Vec::with_capacity(256);
        let mut last_expire = Instant::now();
        let mut last_recheck = Instant::now();
        let mut last_ct_sweep = Instant::now();
        let mut ct_sweep_every = super::ct_gc::INTERVAL;
        let mut last_snapshot = Instant::now();
        let mut last_frame = Instant::now() - SPIN_WINDOW;
        loop {
            loop {
                match commands.try_recv() {
                    Ok(Command::Stop) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        self.shutdown();
                        return;
                    }
                    Ok(cmd) => self.command(cmd),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            self.supervision_turn(now);
            let n = self.process(&mut batch, now);
            if now.duration_since(last_expire) >= EXPIRE_INTERVAL {
                last_expire = now;
                let mono = offload::monotonic_ns();
                let (offloads, maps) = (&self.offloads, &self.maps);
                for (idx, up) in self.uplinks.iter_mut().enumerate() {
                    if let Some(up) = up {
                        up.translator
                            .expire_offloaded(now, |o| offloads.last_seen(maps, idx, o, now, mono));
                    }
                }
                self.sync_port_events();
                self.sync_offloads();
            }
            if now.duration_since(last_ct_sweep) >= ct_sweep_every {
                last_ct_sweep = now;
                self.sweep_ct(offload::monotonic_ns());
                ct_sweep_every = super::ct_gc::interval_after(now.elapsed());
            }
            if now.duration_since(last_snapshot) >= SNAPSHOT_EVERY {
                last_snapshot = now;
                self.health.set_snapshot(self.kernel_entries(now));
            }
            if now.duration_since(last_recheck) >= RECHECK_INTERVAL {
                last_recheck = now;
                self.recheck_redirect_targets();
                self.forget_kernel_entries(now);
            }
            if n > 0 {
                last_frame = now;
            } else if now.duration_since(last_frame) < SPIN_WINDOW {
                std::hint::spin_loop();
            } else {
                let wait = if self.pending.is_empty() {
                    IDLE_POLL
                } else {
                    Duration::from_millis(1)
                };
                self.wait(wait);
            }
        }
    }

    /// One batch: next-hop answers (and the frames that waited for them), every frame
    /// received (translated, addressed, queued on the port it leaves by), the frames
    /// that waited too long, a flush, and the maps brought up to date. How many frames
    /// came in.
    fn process(&mut self, batch: &mut Vec<Rx<Io::Frame>>, now: Instant) -> usize {
        while let Ok(ev) = self.events.try_recv() {
            let routes_changed = matches!(ev, NextHopEvent::RoutesChanged);
            let changed = self.nexthops.apply(ev);
            if !changed.is_empty() {
                self.retry_pending(&changed, now);
            }
            if routes_changed {
                // Ask again for every offloaded destination: the answers say which
                // flows' next hop changed, and only those leave XDP.
                for remote in self.offloads.remotes() {
                    self.resolver.request(remote);
                }
            } else if !self.offloads.is_empty() && !changed.is_empty() {
                self.revalidate_offloads(&changed);
            }
        }
        batch.clear();
        let n = self.io.recv(batch);
        for rx in batch.drain(..) {
            self.handle(rx, now);
        }
        self.sweep_pending(now);
        if let Err(e) = self.io.flush() {
            // Once per interval: a vanished interface fails every flush.
            if now.duration_since(self.last_flush_warning) >= WARN_INTERVAL {
                self.last_flush_warning = now;
                warn!("AF_XDP flush failed: {e}");
            }
        }
        self.sync_port_events();
        self.sync_offloads();
        n
    }

    /// Sleeps until a socket has frames, a command is queued or `timeout` passes.
    fn wait(&mut self, timeout: Duration) {
        if let Err(e) = self.io.wait(timeout, self.waker.fd()) {
            debug!("{e}");
            std::thread::sleep(timeout);
        }
        self.waker.drain();
    }

    fn handle(&mut self, mut rx: Rx<Io::Frame>, now: Instant) {
        self.counters.rx += 1;
        let Some(role) = self.roles.get(&rx.port.0).copied() else {
            self.counters.stray += 1;
            self.io.drop_frame(rx.frame);
            return;
        };
        let len = self.io.len(&rx.frame) as u64;
        if let Role::Endpoint { first, .. } = role {
            if let Some(t) = self.traffic.get_mut(&first) {
                t.out_frames += 1;
                t.out_bytes += len;
            }
        }
        let (uplink_idx, verdict) = {
            let frame = self.io.bytes_mut(&mut rx.frame);
            match role {
                Role::Endpoint { uplink: u, .. } => {
                    match self.uplinks.get_mut(u).and_then(Option::as_mut) {
                        Some(up) => (u, up.translator.outbound(now, frame)),
                        None => (
                            u,
                            Verdict::Drop(crate::translator::DropReason::UnknownEndpoint),
                        ),
                    }
                }
                Role::Uplink { uplink: u } => {
                    match self.uplinks.get_mut(u).and_then(Option::as_mut) {
                        Some(up) => (u, up.translator.inbound(now, frame)),
                        None => (u, Verdict::Drop(crate::translator::DropReason::NoSession)),
                    }
                }
            }
        };
        // A session the translator just started must be in SESSIONS before the frame
        // leaves: the reply can arrive (in softirq) before this thread runs again, and
        // one the uplink does not steer is the kernel's.
        self.sync_port_events_of(uplink_idx);
        match verdict {
            Verdict::Endpoint { port } => {
                self.counters.to_endpoint += 1;
                if let Some(t) = self.traffic.get_mut(&port) {
                    t.in_frames += 1;
                    t.in_bytes += len;
                }
                self.io.send(PortId(port), rx.frame);
            }
            Verdict::Uplink { remote } => self.send_uplink(uplink_idx, remote, rx.frame, now),
            Verdict::Drop(_) => {
                self.counters.dropped += 1;
                self.io.drop_frame(rx.frame);
                return;
            }
        }
        self.try_offload(uplink_idx, now);
    }

    /// Hands the session of the frame just translated to the XDP program if the
    /// translator says it is ready; gives it back on any failure (it stays on this path).
    fn try_offload(&mut self, idx: usize, now: Instant) {
        let Some(up) = self.uplinks.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        let Some(o) = up.translator.take_offload() else {
            return;
        };
        let r = match self.nexthops.lookup(*o.remote.ip()) {
            Lookup::Ready { mac, .. } => self.offloads.install(&mut self.maps, idx, &o, mac),
            // Not resolved yet: the next packet tries again.
            _ => Err(offload::NotOffloaded::NextHopPending),
        };
        if let Err(e) = r {
            up.translator.unoffload(&o);
            if e.is_failure() && now.duration_since(self.last_offload_warning) >= WARN_INTERVAL {
                self.last_offload_warning = now;
                warn!("cannot offload a session to XDP (it stays on AF_XDP): {e}");
            }
        }
    }

    /// Removes the flow entries of sessions the translators took back.
    fn sync_offloads(&mut self) {
        for (idx, up) in self.uplinks.iter_mut().enumerate() {
            if let Some(up) = up {
                for o in up.translator.drain_unoffloaded() {
                    self.offloads.remove(&mut self.maps, idx, &o);
                }
            }
        }
    }

    /// After a route or neighbour answer for `remotes`: sessions whose next hop is no
    /// longer what their entries say (or is not known now) leave the fast path at once.
    fn revalidate_offloads(&mut self, remotes: &[Ipv4Addr]) {
        let nexthops = &self.nexthops;
        let current = |ip| match nexthops.lookup(ip) {
            Lookup::Ready { mac, .. } => Some(mac),
            _ => None,
        };
        let stale = self.offloads.stale_next_hops(remotes, current);
        self.offloads.nexthop_invalidations += stale.len() as u64;
        for s in &stale {
            self.offloads.remove(&mut self.maps, s.uplink, &s.session);
        }
        self.give_back(stale);
    }

    /// Hands sessions whose flow entries were removed back to their translators.
    fn give_back(&mut self, sessions: Vec<SessionOf>) {
        for s in sessions {
            if let Some(up) = self.uplinks.get_mut(s.uplink).and_then(Option::as_mut) {
                up.translator.unoffload(&s.session);
            }
        }
    }

    /// Whether XDP redirects to `ifindex` are delivered now; `false` when the kernel
    /// cannot say (no redirect is then risked).
    fn redirect_target(&self, ifindex: u32) -> bool {
        self.netdev
            .as_ref()
            .and_then(|q| q.get(ifindex).ok())
            .is_some_and(|f| f.redirect_target())
    }

    /// Asks the kernel again whether each device offloads redirect to still accepts
    /// them (a veth peer's GRO can be turned off at any time): flows toward one that
    /// stopped leave XDP at once, and new sessions use one that started.
    fn recheck_redirect_targets(&mut self) {
        for RedirectTarget {
            ifindex,
            accepts: was,
        } in self.offloads.redirect_targets()
        {
            let now = self.redirect_target(ifindex);
            if now == was {
                continue;
            }
            info!(
                ifindex,
                redirect_target = now,
                "a nat-fast device changed whether it accepts XDP redirects"
            );
            let stale = self
                .offloads
                .set_redirect_target(&mut self.maps, ifindex, now);
            self.give_back(stale);
            self.sync_offload_offers();
        }
    }

    /// Offers for offload only sessions that can be offloaded: an endpoint neither of
    /// whose devices accepts XDP redirects keeps every session on AF_XDP without
    /// asking on every packet.
    fn sync_offload_offers(&mut self) {
        for e in self.endpoints.values() {
            let Some(can) = self.offloads.can_offload(e.uplink, e.ip) else {
                continue;
            };
            if let Some(up) = self.uplinks.get_mut(e.uplink).and_then(Option::as_mut) {
                up.translator.set_offload(e.ip, can);
            }
        }
    }

    fn send_uplink(&mut self, uplink: usize, remote: Ipv4Addr, mut frame: Io::Frame, now: Instant) {
        match self.nexthops.lookup(remote) {
            Lookup::Ready { mac, .. } => {
                let Some(port) = self
                    .uplinks
                    .get(uplink)
                    .and_then(Option::as_ref)
                    .map(|u| u.queues.first())
                else {
                    self.counters.dropped += 1;
                    self.io.drop_frame(frame);
                    return;
                };
                let bytes = self.io.bytes_mut(&mut frame);
                if bytes.len() >= 6 {
                    bytes[..6].copy_from_slice(&mac);
                }
                self.counters.to_uplink += 1;
                self.io.send(port, frame);
            }
            Lookup::Unreachable => {
                self.counters.unreachable += 1;
                self.io.drop_frame(frame);
            }
            Lookup::Unknown => {
                if self.nexthops.should_ask(remote, now) {
                    self.resolver.request(remote);
                }
                if self.pending.len() >= PENDING_MAX {
                    self.counters.held_overflow += 1;
                    self.io.drop_frame(frame);
                    return;
                }
                self.counters.held += 1;
                self.pending.push_back(Held {
                    frame,
                    uplink,
                    remote,
                    since: now,
                });
            }
        }
    }

    fn retry_pending(&mut self, changed: &[Ipv4Addr], now: Instant) {
        let held: Vec<Held<Io::Frame>> = self.pending.drain(..).collect();
        for h in held {
            if changed.contains(&h.remote) && self.nexthops.lookup(h.remote) != Lookup::Unknown {
                if matches!(self.nexthops.lookup(h.remote), Lookup::Ready { .. }) {
                    self.counters.held_sent += 1;
                }
                self.send_uplink(h.uplink, h.remote, h.frame, now);
            } else {
                self.pending.push_back(h);
            }
        }
    }

    fn sweep_pending(&mut self, now: Instant) {
        while let Some(h) = self.pending.front() {
            if now.duration_since(h.since) < PENDING_TIMEOUT {
                break;
            }
            let h = self.pending.pop_front().expect("front exists");
            self.counters.held_timeout += 1;
            self.io.drop_frame(h.frame);
        }
    }

    /// Mirrors every translator's session starts and ends into the steering map.
    fn sync_port_events(&mut self) {
        for idx in 0..self.uplinks.len() {
            self.sync_port_events_of(idx);
        }
    }

    /// Mirrors the dynamic sessions uplink `idx`'s translator started or ended into
    /// `SESSIONS`, keyed by their replies' tuple: the uplink steers exactly those.
    fn sync_port_events_of(&mut self, idx: usize) {
        let Some(up) = self.uplinks.get_mut(idx).and_then(Option::as_mut) else {
            return;
        };
        let addr = up.external_ip;
        for ev in up.translator.drain_port_events() {
            let (protocol, port, remote, open) = match ev {
                PortEvent::Opened {
                    protocol,
                    port,
                    remote,
                } => (protocol, port, remote, true),
                PortEvent::Closed {
                    protocol,
                    port,
                    remote,
                } => (protocol, port, remote, false),
            };
            let key = session_key(addr, protocol, port, remote);
            let r = if open {
                self.maps.set_session(&key)
            } else {
                self.maps.remove_session(&key)
            };
            if let Err(e) = r {
                self.counters.steer_failed += 1;
                let now = Instant::now();
                if now.duration_since(self.last_steer_warning) >= WARN_INTERVAL {
                    self.last_steer_warning = now;
                    warn!("cannot update the XDP sessions map: {e}");
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::AddUplink {
                name,
                ifindex,
                config,
                slots,
                reply,
            } => {
                let _ = reply.send(self.add_uplink(name, ifindex, config, slots));
            }
            Command::RemoveUplink { name, reply } => {
                self.remove_uplink(&name);
                let _ = reply.send(());
            }
            Command::AddEndpoint {
                endpoint,
                uplink,
                slots,
                reply,
            } => {
                let _ = reply.send(self.add_endpoint(endpoint, &uplink, slots));
            }
            Command::RemoveEndpoint { host_ifname, reply } => {
                self.remove_endpoint(&host_ifname);
                let _ = reply.send(());
            }
            Command::HostFilter { entries, reply } => {
                let _ = reply.send(self.set_host_filter(entries));
            }
            Command::Publish {
                uplink,
                port,
                reply,
            } => {
                let _ = reply.send(self.publish(&uplink, port));
            }
            Command::Unpublish {
                uplink,
                protocol,
                external_port,
                reply,
            } => {
                if let Some((addr, up)) = self.uplink_mut(&uplink) {
                    up.translator.unpublish(protocol, external_port);
                    let _ = self
                        .maps
                        .remove_port(&port_key(addr, protocol, external_port));
                }
                let _ = reply.send(());
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Fault(Fault::Panic) => panic!("test hook: told to panic"),
            Command::Fault(Fault::Stall(d)) => std::thread::sleep(d),
            Command::Stop => unreachable!("handled by run"),
        }
    }

    fn publish(&mut self, uplink: &str, p: Publication) -> Result<(), DataplaneError> {
        let Some((addr, up)) = self.uplink_mut(uplink) else {
            return Err(DataplaneError::NoUplink(uplink.to_string()));
        };
        up.translator
            .publish(p.protocol, p.external_port, p.ip, p.internal_port)?;
        self.maps
            .set_port(port_key(addr, p.protocol, p.external_port))?;
        Ok(())
    }

    fn uplink_mut(&mut self, name: &str) -> Option<(Ipv4Addr, &mut Uplink)> {
        let idx = *self.uplink_names.get(name)?;
        let up = self.uplinks.get_mut(idx)?.as_mut()?;
        Some((up.external_ip, up))
    }

    fn add_uplink(
        &mut self,
        name: String,
        ifindex: u32,
        config: Config,
        slots: Slots,
    ) -> Result<(), DataplaneError> {
        if self.uplink_names.contains_key(&name) {
            return Err(DataplaneError::UplinkInUse(name));
        }
        let external_ip = config.external_ip;
        let queues = self.open_queues(&name, slots)?;
        let idx = match self.uplinks.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.uplinks.push(None);
                self.uplinks.len() - 1
            }
        };
        for p in &queues.ports {
            self.roles.insert(p.0, Role::Uplink { uplink: idx });
        }
        let path = UplinkPath {
            ifindex,
            mac: config.uplink_mac,
            mtu: offload::mtu_of(&name),
            external_ip,
            redirect_target: self.redirect_target(ifindex),
        };
        if !path.redirect_target {
            warn!(
                uplink = %name,
                "the uplink does not accept XDP redirects (a veth whose peer has GRO off, \
                 or a driver without ndo_xdp_xmit): offloaded sessions send their outbound \
                 frames through AF_XDP"
            );
        }
        if let Err(e) = self.offloads.add_uplink(&mut self.maps, idx, path) {
            warn!(uplink = %name, "no XDP offload through this uplink: {e}");
        }
        info!(uplink = %name, %external_ip, queues = queues.ports.len(), "nat-fast uplink ready");
        self.uplinks[idx] = Some(Uplink {
            translator: Translator::new(config),
            external_ip,
            queues,
        });
        self.uplink_names.insert(name, idx);
        Ok(())
    }

    /// Opens a socket on each of `ifname`'s first `slots.count` rx queues (at least
    /// one) and registers queue `q`'s in slot `slots.first + q`. All or nothing.
    fn open_queues(&mut self, ifname: &str, slots: Slots) -> Result<Queues, DataplaneError> {
        let mut queues = Queues {
            ports: Vec::new(),
            first_slot: slots.first,
        };
        for q in 0..slots.count.max(1) {
            let port = match self.io.open(ifname, q) {
                Ok(p) => p,
                Err(e) => {
                    self.close_queues(&queues);
                    return Err(DataplaneError::Socket {
                        ifname: ifname.to_string(),
                        queue: q,
                        cause: e,
                    });
                }
            };
            let fd = self.io.fd(port).expect("just opened");
            if let Err(e) = self.maps.set_xsk(slots.first + q, fd) {
                self.io.close(port);
                self.close_queues(&queues);
                return Err(DataplaneError::Register {
                    ifname: ifname.to_string(),
                    cause: e,
                });
            }
            queues.ports.push(port);
        }
        Ok(queues)
    }

    fn close_queues(&mut self, queues: &Queues) {
        for slot in (queues.first_slot..).take(queues.ports.len()) {
            let _ = self.maps.clear_xsk(slot);
        }
        for p in &queues.ports {
            self.roles.remove(&p.0);
            self.io.close(*p);
        }
    }

    fn remove_uplink(&mut self, name: &str) {
        let Some(idx) = self.uplink_names.remove(name) else {
            return;
        };
        let eps: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.uplink == idx)
            .map(|(k, _)| k.clone())
            .collect();
        for ep in eps {
            self.remove_endpoint(&ep);
        }
        self.offloads.remove_uplink(&mut self.maps, idx);
        if let Some(up) = self.uplinks[idx].take() {
            // Published ports and sessions of this address leave the maps too.
            self.maps.remove_address(u32::from(up.external_ip).to_be());
            self.close_queues(&up.queues);
            self.pending.retain(|h| h.uplink != idx);
        }
    }

    fn add_endpoint(
        &mut self,
        spec: EndpointSpec,
        uplink: &str,
        slots: Slots,
    ) -> Result<(), DataplaneError> {
        let Some(&idx) = self.uplink_names.get(uplink) else {
            return Err(DataplaneError::NoUplink(uplink.to_string()));
        };
        let host_ifname = spec.host_ifname;
        if self.endpoints.contains_key(&host_ifname) {
            self.remove_endpoint(&host_ifname);
        }
        let queues = self.open_queues(&host_ifname, slots)?;
        let first = queues.first();
        let mut offload = spec.offload;
        if offload {
            let path = EndpointPath {
                ifindex: spec.host_ifindex,
                mac: spec.mac,
                gateway_mac: spec.gateway_mac,
                mtu: offload::mtu_of(&host_ifname),
                redirect_target: self.redirect_target(spec.host_ifindex),
            };
            if let Err(e) = self
                .offloads
                .add_endpoint(&mut self.maps, idx, spec.ip, path)
            {
                warn!(port = %host_ifname, "no XDP offload for this endpoint: {e}");
                offload = false;
            }
        }
        let up = self.uplinks[idx].as_mut().expect("named uplink exists");
        up.translator.add_endpoint(EndpointInfo {
            ip: spec.ip,
            mac: spec.mac,
            gateway_mac: spec.gateway_mac,
            port: first.0,
            offload,
        });
        let role = Role::Endpoint {
            uplink: idx,
            first: first.0,
        };
        for p in &queues.ports {
            self.roles.insert(p.0, role);
        }
        self.traffic.insert(first.0, Traffic::default());
        self.endpoints.insert(
            host_ifname,
            EndpointSockets {
                queues,
                uplink: idx,
                ip: spec.ip,
            },
        );
        self.sync_offload_offers();
        if spec.adopt {
            // Before the control plane attaches the program to its veth: the first
            // frame it steers already finds its flow.
            self.adopt_from_kernel(Some(spec.ip));
        }
        Ok(())
    }

    /// Takes over the open flows the kernel's conntrack carries for the endpoints (all,
    /// or the one at `only`), with the kernel's mappings (see
    /// [`crate::translator::session::SessionTable::adopt`]): those handed over at a failure or
    /// a shutdown, and those the kernel started while the fast path was off.
    fn adopt_from_kernel(&mut self, only: Option<Ipv4Addr>) {
        use crate::translator::session::Adoptee;
        let flows = match crate::fastpath::conntrack::Conntrack::open().and_then(|c| c.list()) {
            Ok(f) => f,
            Err(e) => {
                warn!("nat-fast: cannot read the kernel's conntrack, no flow taken over: {e}");
                return;
            }
        };
        let now = Instant::now();
        for up in self.uplinks.iter_mut().flatten() {
            let ext = up.external_ip;
            let adoptees = flows.iter().filter(|f| f.is_open()).filter_map(|f| {
                let protocol = if f.protocol == 6 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                let (inside, remote, external_port, published) =
                    if let Some((inside, remote, port)) = f.masqueraded(ext) {
                        (inside, remote, port, false)
                    } else {
                        let (remote, port, inside) = f.published(ext)?;
                        (inside, remote, port, true)
                    };
                only.is_none_or(|ip| *inside.ip() == ip).then_some(Adoptee {
                    protocol,
                    inside: (*inside.ip(), inside.port()),
                    remote: (*remote.ip(), remote.port()),
                    external_port,
                    published,
                })
            });
            let (adopted, refused) = up.translator.adopt(now, adoptees);
            if adopted > 0 {
                self.forget_kernel_entries_at = Some(now + FORGET_KERNEL_ENTRIES_AFTER);
            }
            if adopted + refused > 0 {
                info!(uplink = %ext, adopted, refused, "nat-fast: flows taken over from the kernel's conntrack");
            }
        }
        self.sync_port_events();
    }

    fn remove_endpoint(&mut self, host_ifname: &str) {
        let Some(EndpointSockets {
            queues,
            uplink: idx,
            ip,
        }) = self.endpoints.remove(host_ifname)
        else {
            return;
        };
        if let Some(up) = self.uplinks.get_mut(idx).and_then(Option::as_mut) {
            up.translator.remove_endpoint(ip);
        }
        self.sync_port_events();
        self.sync_offloads();
        self.offloads.remove_endpoint(&mut self.maps, idx, ip);
        self.traffic.remove(&queues.first().0);
        self.close_queues(&queues);
    }

    fn status(&self) -> DataplaneStatus {
        let now = Instant::now();
        let uplinks = self
            .uplink_names
            .iter()
            .filter_map(|(name, idx)| {
                let up = self.uplinks.get(*idx)?.as_ref()?;
                let endpoints = self.endpoints.values().filter(|e| e.uplink == *idx).count();
                Some(UplinkStatus {
                    name: name.clone(),
                    external_ip: up.external_ip.to_string(),
                    endpoints,
                    sessions: up.translator.session_count(),
                    session_list: up
                        .translator
                        .sessions()
                        .take(SESSIONS_SHOWN)
                        .map(|s| session_line(&s, up.external_ip, now))
                        .collect(),
                    counters: translator_counters(up.translator.stats()),
                    redirect_target: self.offloads.uplink_redirect_target(*idx),
                    ports: {
                        let r = &up.translator.config().ports;
                        format!("{}-{}", r.start(), r.end())
                    },
                    port_share: up.translator.config().max_ports_per_endpoint.unwrap_or(0),
                })
            })
            .collect();
        let mut counters = self.counters.list();
        counters.extend((self.ct.list().into_iter()).map(|(k, v)| (k.to_string(), v)));
        counters.extend(
            [
                ("offloaded_sessions", self.offloads.len() as u64),
                ("offload_installs", self.offloads.installs),
                ("offload_removals", self.offloads.removals),
                ("offload_failures", self.offloads.failures),
                (
                    "offload_nexthop_invalidations",
                    self.offloads.nexthop_invalidations,
                ),
                ("offload_one_way", self.offloads.one_way),
                ("offload_declined", self.offloads.declined),
                (
                    "offload_target_invalidations",
                    self.offloads.target_invalidations,
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
        );
        let offloaded = self.offloads.traffic(&self.maps);
        let x = self.io.stats();
        counters.extend(
            [
                ("xsk_rx", x.rx),
                ("xsk_tx_submitted", x.tx_submitted),
                ("xsk_tx_completed", x.tx_completed),
                ("xsk_tx_dropped", x.tx_dropped),
                ("xsk_rx_dropped_on_close", x.rx_dropped_on_close),
                ("xsk_fill_starved", x.fill_starved),
                ("xsk_anomalies", x.anomalies),
                ("umem_frames_free", u64::from(x.frames.free)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
        );
        let mut endpoints: Vec<EndpointCounters> = self
            .endpoints
            .iter()
            .map(|(name, e)| {
                let t = self
                    .traffic
                    .get(&e.queues.first().0)
                    .copied()
                    .unwrap_or_default();
                EndpointCounters {
                    port: name.clone(),
                    ip: e.ip.to_string(),
                    out_frames: t.out_frames,
                    out_bytes: t.out_bytes,
                    in_frames: t.in_frames,
                    in_bytes: t.in_bytes,
                    offload: offloaded
                        .get(&EndpointOf {
                            uplink: e.uplink,
                            ip: e.ip,
                        })
                        .copied()
                        .unwrap_or_default(),
                }
            })
            .collect();
        endpoints.sort_by(|a, b| a.port.cmp(&b.port));
        DataplaneStatus {
            uplinks,
            endpoints,
            counters,
        }
    }

    fn shutdown(&mut self) {
        // The kernel's path carries on while the daemon is away: its sessions too, with
        // their mappings (taken back by the next start's recovery).
        match self.hand_over() {
            Ok(h) => {
                if h.created + h.failed > 0 {
                    info!(
                        created = h.created,
                        failed = h.failed,
                        "nat-fast: sessions handed to conntrack at shutdown"
                    );
                }
                self.health.handed_over(h.created, h.failed);
            }
            Err(e) => warn!("nat-fast: cannot hand sessions to conntrack: {e}"),
        }
        if let Err(e) = self.maps.set_bypass(true) {
            warn!("nat-fast: cannot turn the XDP bypass on: {e}");
        }
        let names: Vec<String> = self.uplink_names.keys().cloned().collect();
        for n in names {
            self.remove_uplink(&n);
        }
        for h in std::mem::take(&mut self.pending) {
            self.io.drop_frame(h.frame);
        }
    }
}

#[cfg(test)]
mod tests;

/// `tcp 10.0.0.2:43512 -> 192.0.2.1:61003 -> 198.51.100.7:80 ESTABLISHED (idle 2s)`.
fn session_line(s: &SessionView, external_ip: Ipv4Addr, now: Instant) -> String {
    format!(
        "{} {} -> {}:{} -> {} {}{} (idle {}s)",
        s.protocol.name(),
        s.inside,
        external_ip,
        s.external_port,
        s.remote,
        s.state,
        s.published
            .map(|p| format!(" via published {p}"))
            .unwrap_or_default(),
        now.saturating_duration_since(s.last_seen).as_secs()
    )
}

/// The translator's counters by name: translations, session churn, drops by reason.
fn translator_counters(st: &Stats) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = [
        ("outbound", st.translated_outbound),
        ("inbound", st.translated_inbound),
        ("fragments_outbound", st.fragments_outbound),
        ("fragments_inbound", st.fragments_inbound),
        ("sessions_created", st.sessions_created),
        ("sessions_expired", st.sessions_expired),
        ("sessions_evicted", st.sessions_evicted),
        ("sessions_removed", st.sessions_removed),
        ("sessions_adopted", st.sessions_adopted),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    out.extend(
        st.drop_counts()
            .map(|(r, n)| (format!("drop_{}", r.name()), n)),
    );
    out
}

/// The `SESSIONS` key of a dynamic session of `addr` (see [`PortEvent`]).
pub fn session_key(
    addr: Ipv4Addr,
    protocol: Protocol,
    port: u16,
    remote: std::net::SocketAddrV4,
) -> FlowKey {
    crate::fastpath::xdp::steered_session_key(
        addr.octets(),
        port,
        remote.ip().octets(),
        remote.port(),
        protocol.number(),
    )
}

/// The ports-map key of `port` (a TCP/UDP port or an ICMP identifier) on `addr`.
pub fn port_key(addr: Ipv4Addr, protocol: Protocol, port: u16) -> PortKey {
    PortKey {
        addr: u32::from(addr).to_be(),
        port: port.to_be(),
        proto: protocol.number(),
        _pad: 0,
    }
}
