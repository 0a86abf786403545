//! AF_XDP sockets for the nat-fast translator: one UMEM shared by every socket.
//!
//! [`Xsk`] owns a UMEM (the packet memory shared with the kernel), the pool of its free
//! frames and any number of AF_XDP sockets ("ports", [`PortId`]) bound to
//! `(interface, queue)` pairs: container veth host ends and the uplink's queues. Every
//! socket uses the same UMEM, so a frame received on one port can be transmitted on any
//! other without a userspace copy: [`Xsk::recv`] hands out [`Frame`]s, the translator
//! rewrites them in place ([`Xsk::frame_mut`]) and passes them to [`Xsk::send`] (or
//! [`Xsk::drop_frame`]); [`Xsk::flush`] submits the batch, reaps completions back into the
//! pool and tops the fill rings up. One thread owns the `Xsk` (it is `Send`, not shared):
//! nothing inside locks.
//!
//! # Sockets
//!
//! Sockets are bound with libxdp's program loading inhibited
//! (`XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`): dovesnap's own XDP program steers frames into
//! its `XskMap`, and the caller inserts [`Xsk::fd`] there. They use need_wakeup mode and
//! copy mode; `XDP_MAX_TX_SKB_BUDGET` is raised to 256 where the kernel knows it.
//! [`XskConfig::load_default_program`] lets libxdp attach its own redirect program
//! instead, for tests and diagnostics only.
//!
//! libxdp gives every `(interface, queue)` pair of a shared UMEM its own fill and
//! completion rings (`xsk_socket__create_shared`), so each port has all four rings: a
//! frame received on port A and sent on port B comes back on B's completion ring.
//!
//! # The anchor socket
//!
//! The kernel registers a UMEM on one socket, and every other socket shares it through
//! that socket's descriptor, which must stay bound for as long as the UMEM is in use;
//! libxdp reuses the descriptor for the first socket created and never closes it before
//! the UMEM goes. If that first socket were a port, closing the port would not unbind it.
//! So [`Xsk::new`] binds a receive-nothing *anchor* socket first, on
//! [`XskConfig::anchor_ifname`] queue 0 (`lo` by default; no program redirects to it and
//! it gets no frames), and every port can really be closed and reopened. The anchor is
//! bound in copy mode, and sockets sharing a UMEM take its mode: all ports run in copy
//! mode, whatever their driver supports.
//!
//! # UMEM memory and frame ownership
//!
//! The UMEM is memory the kernel reads and writes too. Each frame is owned by exactly one
//! party at a time, recorded in a ledger ([`FrameState`]): the free pool, the kernel
//! through a port's fill ring (until it comes back on that port's RX ring), userspace
//! through a [`Frame`] handle, or the kernel through a port's TX ring (until it comes back
//! on that port's completion ring). A [`Frame`] is not `Clone`, carries the identity of the
//! `Xsk` that made it, and exists only while userspace owns the frame, so a reference to
//! its bytes can never overlap a kernel access or another reference. The rings publish
//! ownership with release/acquire ordering (libxdp), so the kernel's writes are visible
//! when a frame is handed out. Closing a port hands back every frame its rings held: the
//! socket is closed first, and in copy mode the kernel's unbind waits for receives in
//! progress and transmits from copies, so it touches none of them afterwards. A `Frame`
//! that is dropped instead of returned stays [`FrameState::Held`] until the `Xsk` goes
//! ([`XskStats::frames`] shows it).

use std::error::Error as StdError;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::socket::SocketCreateError;
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// `SOL_XDP` socket option raising how many frames one `sendto` transmits in copy mode
/// (Linux 6.15+; not yet in Debian's headers). Older kernels answer `ENOPROTOOPT`.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// The budget asked for; the kernel's default is 32.
const TX_SKB_BUDGET: u32 = 256;
/// The kernel's `TX_BATCH_SIZE`: the smallest budget it accepts.
const KERNEL_TX_BATCH: u32 = 32;
/// How long [`Xsk::open`] retries a bind refused with `EBUSY`: the previous socket on the
/// queue is torn down asynchronously after it is closed.
const BIND_RETRY_FOR: Duration = Duration::from_millis(500);
const BIND_RETRY_STEP: Duration = Duration::from_millis(10);
/// Ring size of the anchor socket (it never carries traffic).
const ANCHOR_RING: u32 = 64;
/// Smallest and largest frame size of an aligned UMEM (the kernel's limits).
const MIN_FRAME_SIZE: u32 = 2048;
const MAX_FRAME_SIZE: u32 = 4096;

/// Everything that can go wrong creating or driving the AF_XDP sockets.
#[derive(Debug, Error)]
pub enum AfXdpError {
    /// The configuration cannot work.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),

    /// The UMEM could not be created (memory, or AF_XDP missing from the kernel).
    #[error(
        "cannot create the AF_XDP UMEM ({frames} frames of {frame_size} bytes): {cause}; \
         AF_XDP needs root (CAP_NET_RAW, CAP_IPC_LOCK) and a kernel with CONFIG_XDP_SOCKETS"
    )]
    Umem {
        frames: u32,
        frame_size: u32,
        /// The error with its causes.
        cause: String,
    },

    /// Binding a socket failed.
    #[error(
        "cannot bind an AF_XDP socket to {ifname} queue {queue}: {cause}; check that the \
         interface exists in this namespace, has that queue, and that nothing else (another \
         AF_XDP program or dovesnap instance) is bound to it"
    )]
    Bind {
        ifname: String,
        queue: u32,
        /// The error with its causes.
        cause: String,
    },

    /// The pair is already open in this `Xsk` (or is the anchor's).
    #[error("{ifname} queue {queue} already has a socket in this UMEM ({what})")]
    AlreadyOpen {
        ifname: String,
        queue: u32,
        what: &'static str,
    },

    /// More ports than a [`PortId`] can name.
    #[error("too many AF_XDP sockets open at once (at most 65536)")]
    TooManyPorts,

    /// A socket option the adapter relies on was refused.
    #[error("cannot set {what} on the AF_XDP socket for {ifname} queue {queue}: {source}")]
    SockOpt {
        what: &'static str,
        ifname: String,
        queue: u32,
        source: io::Error,
    },

    /// `poll(2)` on the sockets failed.
    #[error("poll on the AF_XDP sockets failed: {0}")]
    Poll(#[source] io::Error),

    /// The TX wakeup (`sendto`) failed with an error other than the transient ones.
    #[error(
        "waking the kernel to transmit on {ifname} queue {queue} failed: {source}; if the \
         interface is gone, close its port"
    )]
    Wakeup {
        port: PortId,
        ifname: String,
        queue: u32,
        source: io::Error,
    },
}

/// Sizes of the UMEM and the rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XskConfig {
    /// Frames in the UMEM, shared by all sockets.
    pub frame_count: u32,
    /// Bytes per frame: a power of two, 2048 or 4096 (256 bytes of it are XDP headroom).
    pub frame_size: u32,
    /// Entries of every RX, TX, fill and completion ring (a power of two).
    pub ring_size: u32,
    /// Most descriptors taken from one socket's RX ring per [`Xsk::recv`].
    pub batch: usize,
    /// Let libxdp load and attach its default redirect program on each opened interface
    /// instead of inhibiting it. **Tests and diagnostics only**: dovesnap's own XDP program
    /// does the steering in production.
    pub load_default_program: bool,
    /// Interface whose queue 0 holds the anchor socket (see the module docs).
    pub anchor_ifname: String,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_count: 4096,
            frame_size: 2048,
            ring_size: 512,
            batch: 64,
            load_default_program: false,
            anchor_ifname: "lo".to_string(),
        }
    }
}

impl XskConfig {
    /// Checks the sizes before anything is allocated.
    pub fn validate(&self) -> Result<(), AfXdpError> {
        let bad = |msg: String| Err(AfXdpError::Config(msg));
        if !self.frame_size.is_power_of_two()
            || !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&self.frame_size)
        {
            return bad(format!(
                "frame_size {} must be {MIN_FRAME_SIZE} or {MAX_FRAME_SIZE}",
                self.frame_size
            ));
        }
        if !self.ring_size.is_power_of_two() || self.ring_size < 2 {
            return bad(format!(
                "ring_size {} must be a power of two of at least 2",
                self.ring_size
            ));
        }
        if self.batch == 0 || self.batch > self.ring_size as usize {
            return bad(format!(
                "batch {} must be between 1 and ring_size ({})",
                self.batch, self.ring_size
            ));
        }
        if (self.frame_count as usize) < 2 * self.batch {
            return bad(format!(
                "frame_count {} must be at least twice the batch ({})",
                self.frame_count, self.batch
            ));
        }
        if (self.frame_count as usize)
            .checked_mul(self.frame_size as usize)
            .is_none()
        {
            return bad(format!("frame_count {} is too large", self.frame_count));
        }
        if crate::host::ifname::check(&self.anchor_ifname).is_err() {
            return bad(format!(
                "anchor_ifname {:?} is not an interface name",
                self.anchor_ifname
            ));
        }
        Ok(())
    }
}

/// Our handle for one socket. Opaque apart from equality: the low 16 bits are a slot,
/// the high 16 bits a generation, so a closed port's id is not reused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

impl PortId {
    fn new(slot: usize, generation: u16) -> Self {
        debug_assert!(slot <= 0xffff);
        PortId((u32::from(generation) << 16) | slot as u32)
    }

    fn slot(self) -> usize {
        (self.0 & 0xffff) as usize
    }
}

/// Who owns a UMEM frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameState {
    /// In the free pool.
    Free,
    /// Userspace, through a [`Frame`].
    Held,
    /// The kernel, through the port's fill ring (or its RX ring, not yet read).
    Fill(PortId),
    /// The kernel, through the port's TX ring (queued, in flight, or completed and not
    /// yet reaped).
    Tx(PortId),
}

/// A UMEM frame userspace owns. Not `Clone`: hand it back with [`Xsk::send`] or
/// [`Xsk::drop_frame`]; one that is dropped stays out of the pool until the `Xsk` goes.
#[derive(Debug)]
#[must_use = "a Frame is UMEM memory: pass it to Xsk::send or Xsk::drop_frame"]
pub struct Frame {
    desc: FrameDesc,
    /// Identity of the `Xsk` that made it, checked on every use.
    xsk: u32,
}

impl Frame {
    /// Length of the packet in the frame.
    pub fn len(&self) -> usize {
        self.desc.lengths().data()
    }

    /// Whether the frame holds no packet bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset of the packet in the UMEM (diagnostics: see [`Xsk::frame_state`]).
    pub fn addr(&self) -> u64 {
        self.desc.addr() as u64
    }
}

/// One received frame and the port it came in on (a UMEM [`Frame`], or another
/// [`crate::fastpath::frameio::FrameIo`]'s frame).
#[derive(Debug)]
pub struct Rx<F = Frame> {
    pub port: PortId,
    pub frame: F,
}

/// Where the UMEM's frames are (always sums to `total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCounts {
    pub total: u32,
    pub free: u32,
    pub fill: u32,
    pub held: u32,
    pub tx: u32,
}

/// The kernel's `xdp_statistics` for one socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelXskStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// Counters of one open port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortStats {
    pub port: PortId,
    pub ifname: String,
    pub queue: u32,
    /// Frames received.
    pub rx: u64,
    /// Frames put on the TX ring.
    pub tx_submitted: u64,
    /// Frames the kernel reported transmitted (completion ring).
    pub tx_completed: u64,
    /// Frames sent to this port and dropped: TX ring full, or the port closed first.
    pub tx_dropped: u64,
    /// The kernel's own statistics; `None` if reading them failed.
    pub kernel: Option<KernelXskStats>,
}

/// Counters of the whole `Xsk` since [`Xsk::new`] (closed ports included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XskStats {
    pub rx: u64,
    pub tx_submitted: u64,
    pub tx_completed: u64,
    /// Frames handed to [`Xsk::send`] that were not transmitted (ring full, unknown or
    /// closed port).
    pub tx_dropped: u64,
    /// Received frames discarded because their port was closed before they were read.
    pub rx_dropped_on_close: u64,
    /// Fill-ring top-ups cut short because the free pool was empty.
    pub fill_starved: u64,
    /// Descriptors from the kernel that did not match the ledger (should stay 0).
    pub anomalies: u64,
    pub frames: FrameCounts,
    pub ports: Vec<PortStats>,
}

/// Which party owns each frame, and the free pool. Pure bookkeeping, no I/O.
#[derive(Debug)]
struct Ledger {
    frame_size: usize,
    state: Vec<FrameState>,
    /// Free chunk indices; LIFO so recently used (cache-warm) frames go out first.
    free: Vec<u32>,
    fill: u32,
    held: u32,
    tx: u32,
    anomalies: u64,
}

impl Ledger {
    fn new(frame_count: u32, frame_size: u32) -> Self {
        Ledger {
            frame_size: frame_size as usize,
            state: vec![FrameState::Free; frame_count as usize],
            free: (0..frame_count).rev().collect(),
            fill: 0,
            held: 0,
            tx: 0,
            anomalies: 0,
        }
    }

    /// The chunk a UMEM offset falls in (any offset inside a frame names it).
    fn chunk(&self, addr: usize) -> Option<usize> {
        let chunk = addr / self.frame_size;
        (chunk < self.state.len()).then_some(chunk)
    }

    fn counter(&mut self, state: FrameState) -> Option<&mut u32> {
        match state {
            FrameState::Free => None,
            FrameState::Held => Some(&mut self.held),
            FrameState::Fill(_) => Some(&mut self.fill),
            FrameState::Tx(_) => Some(&mut self.tx),
        }
    }

    /// Takes a frame from the pool for `to` (not `Free`).
    fn take(&mut self, to: FrameState) -> Option<usize> {
        debug_assert_ne!(to, FrameState::Free);
        let chunk = self.free.pop()? as usize;
        debug_assert_eq!(self.state[chunk], FrameState::Free);
        self.state[chunk] = to;
        if let Some(n) = self.counter(to) {
            *n += 1;
        }
        Some(chunk)
    }

    /// Moves `chunk` from `from` to `to`; a frame not in `from` is left alone and counted
    /// as an anomaly (the kernel handed back something it was not given).
    fn transition(&mut self, chunk: usize, from: FrameState, to: FrameState) -> bool {
        if self.state[chunk] != from || from == to || from == FrameState::Free {
            self.anomalies += 1;
            return false;
        }
        if let Some(n) = self.counter(from) {
            *n -= 1;
        }
        if let Some(n) = self.counter(to) {
            *n += 1;
        }
        self.state[chunk] = to;
        if to == FrameState::Free {
            self.free.push(chunk as u32);
        }
        true
    }

    /// Returns every frame `port`'s rings held to the pool (after its socket is gone);
    /// how many.
    fn reclaim(&mut self, port: PortId) -> usize {
        let mut n = 0;
        for chunk in 0..self.state.len() {
            let from = self.state[chunk];
            if from == FrameState::Fill(port) || from == FrameState::Tx(port) {
                self.transition(chunk, from, FrameState::Free);
                n += 1;
            }
        }
        n
    }

    fn counts(&self) -> FrameCounts {
        FrameCounts {
            total: self.state.len() as u32,
            free: self.free.len() as u32,
            fill: self.fill,
            held: self.held,
            tx: self.tx,
        }
    }
}

/// How many frames each port's fill ring is topped up to: the ring's size, but no more
/// than a fair share of half the UMEM, so that many ports cannot pin every frame in fill
/// rings and leave none for frames in flight.
fn fill_target(ring_size: u32, frame_count: u32, ports: usize) -> u32 {
    let ports = u32::try_from(ports.max(1)).unwrap_or(u32::MAX);
    (frame_count / 2 / ports).clamp(1, ring_size)
}

/// The `XDP_MAX_TX_SKB_BUDGET` to ask for: the kernel accepts 32 up to the TX ring size.
fn tx_budget(ring_size: u32) -> Option<u32> {
    (ring_size >= KERNEL_TX_BATCH).then(|| TX_SKB_BUDGET.min(ring_size))
}

/// `poll(2)` timeout in milliseconds, rounded up so a short wait still waits.
fn poll_timeout_ms(timeout: Duration) -> libc::c_int {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

/// An error and its causes on one line.
fn chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

fn os_error(err: &SocketCreateError) -> Option<i32> {
    err.source()?.downcast_ref::<io::Error>()?.raw_os_error()
}

/// Calls `bind` until it succeeds or fails with something other than `EBUSY`, for at most
/// [`BIND_RETRY_FOR`].
fn bind_with_retry<T>(
    mut bind: impl FnMut() -> Result<T, SocketCreateError>,
) -> Result<T, SocketCreateError> {
    let start = Instant::now();
    loop {
        match bind() {
            Err(e) if os_error(&e) == Some(libc::EBUSY) && start.elapsed() < BIND_RETRY_FOR => {
                std::thread::sleep(BIND_RETRY_STEP)
            }
            other => return other,
        }
    }
}

/// Marks `fd` close-on-exec: libxdp creates its sockets without `SOCK_CLOEXEC`, and a
/// child process (the daemon runs `ip`, `nft`, ...) holding a copy would keep a closed
/// port's socket alive and receiving into frames the pool has taken back.
fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD on a descriptor we own only changes its descriptor flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the copy-mode TX budget; `Ok(false)` when the kernel predates the option.
fn set_tx_budget(fd: RawFd, budget: u32) -> io::Result<bool> {
    // SAFETY: `budget` is a live u32 and the length passed is its size; the kernel only
    // reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOPROTOOPT) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Per-port counters (see [`PortStats`]).
#[derive(Debug, Default, Clone, Copy)]
struct PortCounters {
    rx: u64,
    tx_submitted: u64,
    tx_completed: u64,
    tx_dropped: u64,
}

/// One open socket with its four rings. Dropping it deletes the socket (every ring holds
/// a handle on it).
#[derive(Debug)]
struct Port {
    id: PortId,
    ifname: String,
    queue: u32,
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Frames passed to [`Xsk::send`] for this port, not yet on the TX ring.
    pending: Vec<FrameDesc>,
    /// Frames in state `Fill(id)`.
    in_fill: u32,
    counters: PortCounters,
}

/// The socket the UMEM is registered on (see the module docs). Never read; its rings
/// are kept only because each holds a handle on the socket.
#[derive(Debug)]
struct Anchor {
    _tx: TxQueue,
    _rx: RxQueue,
    _rings: Option<(FillQueue, CompQueue)>,
}

/// Totals of the whole `Xsk` (see [`XskStats`]).
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    rx: u64,
    tx_submitted: u64,
    tx_completed: u64,
    tx_dropped: u64,
    rx_dropped_on_close: u64,
    fill_starved: u64,
}

/// The AF_XDP sockets of one translator thread over one shared UMEM (module docs).
#[derive(Debug)]
pub struct Xsk {
    /// Tells this instance's [`Frame`]s from another's.
    id: u32,
    cfg: XskConfig,
    /// Open ports by slot. Declared before `anchor` and `umem`, so they are dropped first.
    ports: Vec<Option<Port>>,
    /// Generation of each slot's next port.
    generations: Vec<u16>,
    _anchor: Anchor,
    umem: Umem,
    /// The canonical descriptor of every frame, by chunk index.
    descs: Vec<FrameDesc>,
    ledger: Ledger,
    pollfds: Vec<libc::pollfd>,
    rx_scratch: Vec<FrameDesc>,
    fill_scratch: Vec<FrameDesc>,
    /// Slot [`Xsk::recv`] starts at (round robin).
    next_rx: usize,
    totals: Totals,
}

// The translator moves the `Xsk` into its thread.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Xsk>();
};

impl Xsk {
    /// Creates the UMEM and binds the anchor socket. Needs root.
    pub fn new(cfg: XskConfig) -> Result<Self, AfXdpError> {
        cfg.validate()?;
        let config_err = |e: &dyn StdError| AfXdpError::Config(e.to_string());
        let ring = QueueSize::new(cfg.ring_size).map_err(|e| config_err(&e))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(cfg.frame_size).map_err(|e| config_err(&e))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .frame_headroom(0)
            .build()
            .map_err(|e| config_err(&e))?;
        let frames = NonZeroU32::new(cfg.frame_count)
            .ok_or_else(|| AfXdpError::Config("frame_count must not be 0".into()))?;
        let (umem, descs) = Umem::new(umem_cfg, frames, false).map_err(|e| AfXdpError::Umem {
            frames: cfg.frame_count,
            frame_size: cfg.frame_size,
            cause: chain(&e),
        })?;
        debug_assert!(descs
            .iter()
            .enumerate()
            .all(|(i, d)| d.addr() / cfg.frame_size as usize == i));

        let anchor_ring =
            QueueSize::new(cfg.ring_size.min(ANCHOR_RING)).map_err(|e| config_err(&e))?;
        let anchor_cfg = SocketConfig::builder()
            .rx_queue_size(anchor_ring)
            .tx_queue_size(anchor_ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_COPY)
            .build();
        let bind_err = |cause: String| AfXdpError::Bind {
            ifname: cfg.anchor_ifname.clone(),
            queue: 0,
            cause: format!("{cause} (this is the UMEM's anchor socket)"),
        };
        let iface: Interface = cfg
            .anchor_ifname
            .parse()
            .map_err(|_| bind_err("not an interface name".into()))?;
        let (tx, rx, rings) = bind_with_retry(|| {
            // SAFETY: the UMEM is new, so no socket of it is bound to this pair yet (the
            // xsk-rs contract only restricts binding a pair twice).
            unsafe { Socket::new(anchor_cfg, &umem, &iface, 0) }
        })
        .map_err(|e| bind_err(chain(&e)))?;
        set_cloexec(rx.fd().as_raw_fd()).map_err(|e| bind_err(format!("FD_CLOEXEC: {e}")))?;

        static NEXT_ID: AtomicU32 = AtomicU32::new(1);
        let batch = cfg.batch;
        Ok(Xsk {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ledger: Ledger::new(cfg.frame_count, cfg.frame_size),
            cfg,
            ports: Vec::new(),
            generations: Vec::new(),
            _anchor: Anchor {
                _tx: tx,
                _rx: rx,
                _rings: rings,
            },
            umem,
            descs,
            pollfds: Vec::new(),
            rx_scratch: vec![FrameDesc::default(); batch],
            fill_scratch: Vec::with_capacity(batch),
            next_rx: 0,
            totals: Totals::default(),
        })
    }

    /// The configuration this `Xsk` was made with.
    pub fn config(&self) -> &XskConfig {
        &self.cfg
    }

    /// Binds a socket to `ifname` queue `queue` and fills its fill ring. A bind refused
    /// with `EBUSY` (the previous socket there still being torn down) is retried for
    /// 500 ms.
    pub fn open(&mut self, ifname: &str, queue: u32) -> Result<PortId, AfXdpError> {
        let already = |what| AfXdpError::AlreadyOpen {
            ifname: ifname.to_string(),
            queue,
            what,
        };
        if ifname == self.cfg.anchor_ifname && queue == 0 {
            return Err(already("it holds the UMEM's anchor socket"));
        }
        if self
            .ports
            .iter()
            .flatten()
            .any(|p| p.ifname == ifname && p.queue == queue)
        {
            return Err(already("opened before and not closed"));
        }
        let bind_err = |cause: String| AfXdpError::Bind {
            ifname: ifname.to_string(),
            queue,
            cause,
        };
        if let Err(e) = crate::host::ifname::check(ifname) {
            return Err(bind_err(format!("not an interface name: {e}")));
        }
        let iface: Interface = ifname
            .parse()
            .map_err(|_| bind_err("not an interface name".into()))?;
        let slot = match self.ports.iter().position(Option::is_none) {
            Some(slot) => slot,
            None if self.ports.len() <= 0xffff => {
                self.ports.push(None);
                self.generations.push(0);
                self.ports.len() - 1
            }
            None => return Err(AfXdpError::TooManyPorts),
        };
        let id = PortId::new(slot, self.generations[slot]);

        let ring =
            QueueSize::new(self.cfg.ring_size).map_err(|e| AfXdpError::Config(e.to_string()))?;
        let flags = if self.cfg.load_default_program {
            LibxdpFlags::empty()
        } else {
            LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD
        };
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(flags)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_COPY)
            .build();
        let (tx, rx, rings) = bind_with_retry(|| {
            // SAFETY: no socket of this UMEM is bound to `(ifname, queue)`: open ports
            // were checked above and the anchor's pair is refused, so the xsk-rs
            // requirement for binding a pair twice (inhibited program loading) does not
            // arise.
            unsafe { Socket::new(sock_cfg, &self.umem, &iface, queue) }
        })
        .map_err(|e| bind_err(chain(&e)))?;
        let Some((fill, comp)) = rings else {
            return Err(bind_err(
                "libxdp shared the fill and completion rings of another socket on this \
                 queue, which this adapter does not support"
                    .into(),
            ));
        };
        let fd = rx.fd().as_raw_fd();
        let sockopt_err = |what, source| AfXdpError::SockOpt {
            what,
            ifname: ifname.to_string(),
            queue,
            source,
        };
        set_cloexec(fd).map_err(|e| sockopt_err("FD_CLOEXEC", e))?;
        if let Some(budget) = tx_budget(self.cfg.ring_size) {
            match set_tx_budget(fd, budget) {
                Ok(true) => {}
                Ok(false) => tracing::debug!(
                    ifname,
                    queue,
                    "kernel has no XDP_MAX_TX_SKB_BUDGET; copy-mode TX sends 32 frames per wakeup"
                ),
                Err(e) => return Err(sockopt_err("XDP_MAX_TX_SKB_BUDGET", e)),
            }
        }

        let port = Port {
            id,
            ifname: ifname.to_string(),
            queue,
            tx,
            rx,
            fill,
            comp,
            pending: Vec::with_capacity(self.cfg.ring_size as usize),
            in_fill: 0,
            counters: PortCounters::default(),
        };
        let target = fill_target(
            self.cfg.ring_size,
            self.cfg.frame_count,
            self.open_ports() + 1,
        );
        self.ports[slot] = Some(port);
        self.refill(slot, target);
        self.rebuild_pollfds();
        Ok(id)
    }

    /// The socket's descriptor, for the `XskMap`; `None` if the port is not open.
    pub fn fd(&self, port: PortId) -> Option<RawFd> {
        self.port(port).map(|p| p.rx.fd().as_raw_fd())
    }

    /// Closes the port's socket. Every frame its rings held, and every frame queued for it
    /// and not yet transmitted, goes back to the pool; frames received on it that
    /// userspace still holds stay valid. Unknown ports are ignored.
    pub fn close(&mut self, port: PortId) {
        let Some(slot) = self.ports.get_mut(port.slot()) else {
            return;
        };
        if slot.as_ref().map(|p| p.id) != Some(port) {
            return;
        }
        let Some(mut p) = slot.take() else {
            return;
        };
        // Received and never read: back to the pool.
        loop {
            // SAFETY: the scratch descriptors are plain values the consume overwrites with
            // frames of this UMEM that the kernel has finished writing.
            let n = unsafe { p.rx.consume(&mut self.rx_scratch) };
            for d in &self.rx_scratch[..n] {
                if let Some(c) = self.ledger.chunk(d.addr()) {
                    self.ledger
                        .transition(c, FrameState::Fill(port), FrameState::Free);
                }
            }
            self.totals.rx_dropped_on_close += n as u64;
            if n < self.rx_scratch.len() {
                break;
            }
        }
        reap(
            &mut p,
            &mut self.ledger,
            &mut self.rx_scratch,
            &mut self.totals,
        );
        let unsent = p.pending.len() as u64;
        self.totals.tx_dropped += unsent;
        // Delete the socket. Its descriptor is not the UMEM's (that is the anchor's), so
        // libxdp closes it, and the kernel's release unbinds it from the queue and waits
        // for receives in progress (synchronize_net); copy-mode TX has copied what it
        // took. From here the kernel touches none of the frames its rings held.
        drop(p);
        self.ledger.reclaim(port);
        let slot = port.slot();
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        self.rebuild_pollfds();
    }

    /// Waits up to `timeout` for any socket to have frames to read (`POLLIN`); the
    /// number of sockets ready. The poll also drives pending copy-mode TX. Call it only
    /// when idle, after [`Xsk::flush`]; `EINTR` counts as nothing ready.
    pub fn poll(&mut self, timeout: Duration) -> Result<usize, AfXdpError> {
        for p in &mut self.pollfds {
            p.revents = 0;
        }
        // SAFETY: `pollfds` is a valid array of `pollfd` of the length passed, exclusively
        // borrowed for the call.
        let rc = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                poll_timeout_ms(timeout),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(AfXdpError::Poll(err));
        }
        Ok(rc as usize)
    }

    /// [`Xsk::poll`] that also returns when `wake` (the data plane's eventfd) is
    /// readable.
    pub fn poll_or_woken(
        &mut self,
        timeout: Duration,
        wake: BorrowedFd<'_>,
    ) -> Result<usize, AfXdpError> {
        self.pollfds.push(libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let ready = self.poll(timeout);
        self.pollfds.pop();
        ready
    }

    /// Appends up to [`XskConfig::batch`] received frames per socket to `out` and tops up
    /// the fill rings it read from; how many were appended.
    pub fn recv(&mut self, out: &mut Vec<Rx>) -> usize {
        let slots = self.ports.len();
        if slots == 0 {
            return 0;
        }
        let target = fill_target(self.cfg.ring_size, self.cfg.frame_count, self.open_ports());
        let start = self.next_rx % slots;
        self.next_rx = start + 1;
        let mut total = 0;
        for k in 0..slots {
            let Some(port) = self.ports[(start + k) % slots].as_mut() else {
                continue;
            };
            // SAFETY: the scratch descriptors are plain values the consume overwrites with
            // frames of this UMEM that the kernel has finished writing and released.
            let n = unsafe { port.rx.consume(&mut self.rx_scratch) };
            if n == 0 {
                continue;
            }
            for d in &self.rx_scratch[..n] {
                let owned = self.ledger.chunk(d.addr()).is_some_and(|c| {
                    self.ledger
                        .transition(c, FrameState::Fill(port.id), FrameState::Held)
                });
                if !owned {
                    // Not a frame this port's fill ring had: never hand it out.
                    continue;
                }
                port.in_fill -= 1;
                out.push(Rx {
                    port: port.id,
                    frame: Frame {
                        desc: *d,
                        xsk: self.id,
                    },
                });
                total += 1;
            }
            port.counters.rx += n as u64;
            self.refill((start + k) % slots, target);
        }
        self.totals.rx += total as u64;
        total
    }

    /// The frame's packet bytes.
    pub fn frame<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        self.check(frame);
        // SAFETY: `frame` was made by this `Xsk` (checked), so its descriptor is a frame
        // of this UMEM; a `Frame` exists only while userspace owns the frame (ledger state
        // `Held`, on no ring), so the kernel does not write it, and the shared borrow of
        // the `Frame` excludes `frame_mut` on it for `'a`.
        unsafe { self.umem.data(&frame.desc) }.contents()
    }

    /// The frame's packet bytes, writable (length as received, or as [`Xsk::set_len`]
    /// left it). Frames are disjoint, so several may be borrowed at once.
    pub fn frame_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        self.check(frame);
        // SAFETY: as in `frame`: a frame of this UMEM that only userspace owns, and the
        // exclusive borrow of its only `Frame` excludes every other access for `'a`.
        let mut data = unsafe { self.umem.data_mut(&mut frame.desc) };
        let bytes = data.contents_mut();
        let (ptr, len) = (bytes.as_mut_ptr(), bytes.len());
        // SAFETY: `ptr..ptr + len` is the packet data that `data` borrowed exclusively for
        // `'a` (through `&'a self` and `&'a mut frame`); `contents_mut` only narrows that
        // borrow to the life of `data`, and nothing else can reach this memory during
        // `'a`, so the slice may keep the full lifetime.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    /// Sets the packet length (for frames that grow, shrink or are built from
    /// [`Xsk::alloc`]), capped at the frame's capacity; the new length. Bytes a longer
    /// length exposes hold whatever the frame held before.
    pub fn set_len(&self, frame: &mut Frame, len: usize) -> usize {
        self.check(frame);
        // SAFETY: as in `frame_mut`.
        let mut data = unsafe { self.umem.data_mut(&mut frame.desc) };
        let mut cursor = data.cursor();
        cursor.set_pos(len);
        cursor.pos()
    }

    /// A free frame with length 0, for a packet userspace builds; `None` if the pool is
    /// empty.
    pub fn alloc(&mut self) -> Option<Frame> {
        let chunk = self.ledger.take(FrameState::Held)?;
        Some(Frame {
            desc: self.descs[chunk],
            xsk: self.id,
        })
    }

    /// Queues `frame` for transmission on `port` (submitted by [`Xsk::flush`], or at once
    /// when a ring's worth is queued). Any port will do: the UMEM is shared. A frame for a
    /// port that is not open goes back to the pool and counts as dropped.
    pub fn send(&mut self, port: PortId, frame: Frame) {
        self.check(&frame);
        let Some(chunk) = self.ledger.chunk(frame.desc.addr()) else {
            unreachable!("a Frame of this Xsk names a frame of its UMEM");
        };
        let open = self
            .ports
            .get_mut(port.slot())
            .and_then(Option::as_mut)
            .filter(|p| p.id == port);
        let Some(p) = open else {
            self.ledger
                .transition(chunk, FrameState::Held, FrameState::Free);
            self.totals.tx_dropped += 1;
            return;
        };
        self.ledger
            .transition(chunk, FrameState::Held, FrameState::Tx(port));
        p.pending.push(frame.desc);
        if p.pending.len() >= self.cfg.ring_size as usize {
            submit(p, &mut self.totals);
        }
    }

    /// Returns `frame` to the pool.
    pub fn drop_frame(&mut self, frame: Frame) {
        self.check(&frame);
        if let Some(chunk) = self.ledger.chunk(frame.desc.addr()) {
            self.ledger
                .transition(chunk, FrameState::Held, FrameState::Free);
        }
    }

    /// Tops up the fill ring of the port in `slot` to `target` frames (see [`top_up`]).
    fn refill(&mut self, slot: usize, target: u32) {
        if let Some(port) = self.ports[slot].as_mut() {
            top_up(
                port,
                &mut self.ledger,
                &self.descs,
                &mut self.fill_scratch,
                target,
                &mut self.totals,
            );
        }
    }

    /// Per port: reaps the completion ring into the pool, puts queued frames on the TX
    /// ring (if it is full, wakes the kernel and tries once more; what still does not fit
    /// is dropped back to the pool and counted), wakes the kernel with one `sendto` if
    /// the TX ring wants it, and tops the fill ring up. Every port is flushed even if one
    /// fails; the first error is returned.
    pub fn flush(&mut self) -> Result<(), AfXdpError> {
        let ring_size = self.cfg.ring_size;
        let target = fill_target(ring_size, self.cfg.frame_count, self.open_ports());
        let mut first_err = None;
        for slot in 0..self.ports.len() {
            let Some(port) = self.ports[slot].as_mut() else {
                continue;
            };
            reap(
                port,
                &mut self.ledger,
                &mut self.rx_scratch,
                &mut self.totals,
            );
            let mut result = Ok(());
            if !port.pending.is_empty() {
                submit(port, &mut self.totals);
                if !port.pending.is_empty() {
                    // TX ring full: in copy mode the wakeup transmits synchronously.
                    result = port.tx.wakeup();
                    reap(
                        port,
                        &mut self.ledger,
                        &mut self.rx_scratch,
                        &mut self.totals,
                    );
                    submit(port, &mut self.totals);
                    for d in port.pending.drain(..) {
                        if let Some(c) = self.ledger.chunk(d.addr()) {
                            self.ledger
                                .transition(c, FrameState::Tx(port.id), FrameState::Free);
                        }
                        port.counters.tx_dropped += 1;
                        self.totals.tx_dropped += 1;
                    }
                }
            }
            // One wakeup per port per flush, and only while the kernel has not consumed
            // everything on the TX ring.
            if result.is_ok() && port.tx.needs_wakeup() && port.tx.nb_free_exact() < ring_size {
                result = port.tx.wakeup();
            }
            if let Err(source) = result {
                first_err.get_or_insert(AfXdpError::Wakeup {
                    port: port.id,
                    ifname: port.ifname.clone(),
                    queue: port.queue,
                    source,
                });
            }
            self.refill(slot, target);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Counters, where the frames are, and each open port's counters with the kernel's
    /// `xdp_statistics` (one `getsockopt` per port).
    pub fn stats(&self) -> XskStats {
        let t = &self.totals;
        XskStats {
            rx: t.rx,
            tx_submitted: t.tx_submitted,
            tx_completed: t.tx_completed,
            tx_dropped: t.tx_dropped,
            rx_dropped_on_close: t.rx_dropped_on_close,
            fill_starved: t.fill_starved,
            anomalies: self.ledger.anomalies,
            frames: self.ledger.counts(),
            ports: self
                .ports
                .iter()
                .flatten()
                .map(|p| PortStats {
                    port: p.id,
                    ifname: p.ifname.clone(),
                    queue: p.queue,
                    rx: p.counters.rx,
                    tx_submitted: p.counters.tx_submitted,
                    tx_completed: p.counters.tx_completed,
                    tx_dropped: p.counters.tx_dropped,
                    kernel: p.rx.fd().xdp_statistics().ok().map(|s| KernelXskStats {
                        rx_dropped: s.rx_dropped(),
                        rx_invalid_descs: s.rx_invalid_descs(),
                        tx_invalid_descs: s.tx_invalid_descs(),
                        rx_ring_full: s.rx_ring_full(),
                        rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs(),
                        tx_ring_empty_descs: s.tx_ring_empty_descs(),
                    }),
                })
                .collect(),
        }
    }

    /// Who owns the frame at UMEM offset `addr` (diagnostics and tests); `None` if the
    /// offset is outside the UMEM.
    pub fn frame_state(&self, addr: u64) -> Option<FrameState> {
        let chunk = self.ledger.chunk(usize::try_from(addr).ok()?)?;
        Some(self.ledger.state[chunk])
    }

    fn port(&self, port: PortId) -> Option<&Port> {
        self.ports
            .get(port.slot())?
            .as_ref()
            .filter(|p| p.id == port)
    }

    fn open_ports(&self) -> usize {
        self.ports.iter().flatten().count()
    }

    fn rebuild_pollfds(&mut self) {
        self.pollfds = self
            .ports
            .iter()
            .flatten()
            .map(|p| libc::pollfd {
                fd: p.rx.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
    }

    fn check(&self, frame: &Frame) {
        assert_eq!(
            frame.xsk, self.id,
            "a Frame was passed to an Xsk other than the one it came from"
        );
    }
}

/// Moves as many queued frames as fit onto the port's TX ring.
fn submit(port: &mut Port, totals: &mut Totals) {
    let want = u32::try_from(port.pending.len()).unwrap_or(u32::MAX);
    let room = port.tx.nb_free(want).min(want) as usize;
    if room == 0 {
        return;
    }
    // SAFETY: every pending descriptor is a frame of this UMEM in state `Tx(port)`: its
    // `Frame` was consumed by `send`, so nothing in userspace reads or writes it until it
    // comes back on this port's completion ring (or the port is closed).
    let n = unsafe { port.tx.produce(&port.pending[..room]) };
    port.pending.drain(..n);
    port.counters.tx_submitted += n as u64;
    totals.tx_submitted += n as u64;
}

/// Returns the frames the kernel has finished transmitting on the port to the pool.
fn reap(port: &mut Port, ledger: &mut Ledger, scratch: &mut [FrameDesc], totals: &mut Totals) {
    loop {
        // SAFETY: the scratch descriptors are plain values the consume overwrites with the
        // addresses of frames the kernel has finished with.
        let n = unsafe { port.comp.consume(scratch) };
        for d in &scratch[..n] {
            if let Some(c) = ledger.chunk(d.addr()) {
                ledger.transition(c, FrameState::Tx(port.id), FrameState::Free);
            }
        }
        port.counters.tx_completed += n as u64;
        totals.tx_completed += n as u64;
        if n < scratch.len() {
            break;
        }
    }
}

/// Tops the port's fill ring up to `target` frames from the pool.
fn top_up(
    port: &mut Port,
    ledger: &mut Ledger,
    descs: &[FrameDesc],
    scratch: &mut Vec<FrameDesc>,
    target: u32,
    totals: &mut Totals,
) {
    let want = target.saturating_sub(port.in_fill);
    if want == 0 {
        return;
    }
    let room = port.fill.nb_free(want).min(want) as usize;
    scratch.clear();
    while scratch.len() < room {
        let Some(chunk) = ledger.take(FrameState::Fill(port.id)) else {
            totals.fill_starved += 1;
            break;
        };
        scratch.push(descs[chunk]);
    }
    if scratch.is_empty() {
        return;
    }
    // SAFETY: each descriptor is the canonical descriptor of a frame of this UMEM just
    // taken from the pool: nothing else references it, and from here the kernel owns it
    // until it comes back on this port's RX ring (or the port is closed).
    let n = unsafe { port.fill.produce(scratch) };
    // `nb_free` guaranteed the room; anything not produced is still ours.
    for d in &scratch[n..] {
        if let Some(c) = ledger.chunk(d.addr()) {
            ledger.transition(c, FrameState::Fill(port.id), FrameState::Free);
        }
    }
    port.in_fill += n as u32;
    if n > 0 && port.fill.needs_wakeup() {
        // Zero-copy drivers may wait for a wakeup before taking new fill entries; a
        // zero-timeout poll is that wakeup (never needed in copy mode).
        let _ = port.fill.wakeup(port.rx.fd_mut(), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: u32 = 2048;

    fn port(n: u32) -> PortId {
        PortId(n)
    }

    fn assert_consistent(l: &Ledger) {
        let c = l.counts();
        assert_eq!(c.free + c.fill + c.held + c.tx, c.total, "{c:?}");
        let in_state = |f: fn(&FrameState) -> bool| l.state.iter().filter(|s| f(s)).count() as u32;
        assert_eq!(in_state(|s| *s == FrameState::Free), c.free);
        assert_eq!(in_state(|s| matches!(s, FrameState::Fill(_))), c.fill);
        assert_eq!(in_state(|s| *s == FrameState::Held), c.held);
        assert_eq!(in_state(|s| matches!(s, FrameState::Tx(_))), c.tx);
    }

    #[test]
    fn ledger_starts_full_and_hands_out_each_frame_once() {
        let mut l = Ledger::new(8, FS);
        assert_eq!(l.counts().free, 8);
        let mut seen = Vec::new();
        while let Some(c) = l.take(FrameState::Fill(port(1))) {
            seen.push(c);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        assert_eq!(l.counts().fill, 8);
        assert_eq!(l.take(FrameState::Held), None);
        assert_consistent(&l);
    }

    #[test]
    fn ledger_follows_a_frame_from_one_port_to_another() {
        let (a, b) = (port(1), port(2));
        let mut l = Ledger::new(4, FS);
        let c = l.take(FrameState::Fill(a)).unwrap();
        // Received on A, sent on B, completed on B.
        assert!(l.transition(c, FrameState::Fill(a), FrameState::Held));
        assert!(l.transition(c, FrameState::Held, FrameState::Tx(b)));
        assert_eq!(l.counts().tx, 1);
        // A's completion ring cannot return it: only B's.
        assert!(!l.transition(c, FrameState::Tx(a), FrameState::Free));
        assert!(l.transition(c, FrameState::Tx(b), FrameState::Free));
        assert_eq!(l.counts().free, 4);
        assert_eq!(l.anomalies, 1);
        assert_consistent(&l);
    }

    #[test]
    fn ledger_refuses_a_double_free() {
        let mut l = Ledger::new(4, FS);
        let c = l.take(FrameState::Held).unwrap();
        assert!(l.transition(c, FrameState::Held, FrameState::Free));
        assert!(!l.transition(c, FrameState::Held, FrameState::Free));
        assert!(!l.transition(c, FrameState::Free, FrameState::Free));
        assert_eq!(l.free.len(), 4, "a frame went into the pool twice");
        assert_eq!(l.anomalies, 2);
        assert_consistent(&l);
    }

    #[test]
    fn ledger_reclaims_only_the_closed_ports_frames() {
        let (a, b) = (port(1), port(2));
        let mut l = Ledger::new(16, FS);
        for _ in 0..4 {
            l.take(FrameState::Fill(a)).unwrap();
            l.take(FrameState::Fill(b)).unwrap();
        }
        let held = l.take(FrameState::Held).unwrap();
        let to_a = l.take(FrameState::Held).unwrap();
        l.transition(to_a, FrameState::Held, FrameState::Tx(a));
        let to_b = l.take(FrameState::Held).unwrap();
        l.transition(to_b, FrameState::Held, FrameState::Tx(b));

        assert_eq!(l.reclaim(a), 5);
        let c = l.counts();
        assert_eq!((c.free, c.fill, c.held, c.tx), (16 - 4 - 1 - 1, 4, 1, 1));
        assert_eq!(l.state[held], FrameState::Held);
        assert_eq!(l.state[to_b], FrameState::Tx(b));
        assert_eq!(l.reclaim(a), 0);
        assert_consistent(&l);
    }

    #[test]
    fn chunk_is_found_from_any_offset_in_the_frame() {
        let l = Ledger::new(4, FS);
        assert_eq!(l.chunk(0), Some(0));
        assert_eq!(l.chunk(256), Some(0)); // packet start after the XDP headroom
        assert_eq!(l.chunk(2047), Some(0));
        assert_eq!(l.chunk(2048 + 256), Some(1));
        assert_eq!(l.chunk(3 * 2048 + 2047), Some(3));
        assert_eq!(l.chunk(4 * 2048), None);
    }

    #[test]
    fn fill_target_shares_half_the_umem() {
        assert_eq!(fill_target(512, 4096, 0), 512);
        assert_eq!(fill_target(512, 4096, 1), 512);
        assert_eq!(fill_target(512, 4096, 4), 512);
        assert_eq!(fill_target(512, 4096, 8), 256);
        assert_eq!(fill_target(512, 4096, 100), 20);
        assert_eq!(fill_target(512, 64, 100), 1);
        assert_eq!(fill_target(512, 4096, usize::MAX), 1);
    }

    #[test]
    fn tx_budget_stays_within_what_the_kernel_accepts() {
        assert_eq!(tx_budget(512), Some(256));
        assert_eq!(tx_budget(128), Some(128));
        assert_eq!(tx_budget(32), Some(32));
        assert_eq!(tx_budget(16), None);
    }

    #[test]
    fn poll_timeout_rounds_up() {
        assert_eq!(poll_timeout_ms(Duration::ZERO), 0);
        assert_eq!(poll_timeout_ms(Duration::from_micros(10)), 1);
        assert_eq!(poll_timeout_ms(Duration::from_millis(25)), 25);
        assert_eq!(poll_timeout_ms(Duration::MAX), libc::c_int::MAX);
    }

    #[test]
    fn port_ids_carry_slot_and_generation() {
        let id = PortId::new(3, 7);
        assert_eq!(id.slot(), 3);
        assert_ne!(id, PortId::new(3, 8));
        assert_eq!(PortId::new(0xffff, 0xffff).slot(), 0xffff);
    }

    #[test]
    fn config_validation() {
        assert!(XskConfig::default().validate().is_ok());
        let with = |f: fn(&mut XskConfig)| {
            let mut c = XskConfig::default();
            f(&mut c);
            c.validate()
        };
        assert!(with(|c| c.frame_size = 3000).is_err());
        assert!(with(|c| c.frame_size = 1024).is_err());
        assert!(with(|c| c.frame_size = 8192).is_err());
        assert!(with(|c| c.frame_size = 4096).is_ok());
        assert!(with(|c| c.ring_size = 500).is_err());
        assert!(with(|c| c.batch = 0).is_err());
        assert!(with(|c| c.batch = 1024).is_err());
        assert!(with(|c| c.frame_count = 100).is_err());
        assert!(with(|c| c.anchor_ifname = String::new()).is_err());
        assert!(with(|c| c.anchor_ifname = "x".repeat(16)).is_err());
    }

    #[test]
    fn chain_joins_causes() {
        let inner = io::Error::from_raw_os_error(libc::EBUSY);
        let outer = io::Error::other(inner);
        assert!(chain(&outer).contains("busy"), "{}", chain(&outer));
    }
}
