//! The data plane's supervision: what happens when its thread panics or stops making
//! progress, so that a failure of the fast path never becomes a black hole.
//!
//! - **Panic**: the thread catches it ([`super::dataplane::Dataplane::supervise`]),
//!   hands every live TCP/UDP session to the kernel's conntrack with the translator's
//!   own mapping ([`crate::fastpath::conntrack`]), and turns the XDP program's bypass on: every
//!   frame takes the kernel's nat path, which nat-fast networks always carry, so
//!   connections go on. After a backoff ([`Backoff`]) the fast path comes back with
//!   the same sessions and mappings.
//! - **No progress** for [`STALL_AFTER`] (a loop that never returns, a blocked call):
//!   the watchdog thread, which shares nothing with the data plane but [`Health`] and
//!   a handle on the bypass switch, hands the sessions of the thread's last snapshot
//!   (taken every [`SNAPSHOT_EVERY`]) to conntrack and turns the bypass on. If the
//!   thread comes back, it hands over its sessions and takes the same backoff as after
//!   a panic.
//! - After [`GIVE_UP_AFTER`] failures within [`FAILURE_WINDOW`] the fast path stays off
//!   (everything on the kernel path) until the daemon restarts; status says so.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::error;

use crate::fastpath::xdp::Bypass;

/// A loop turn at least this late means the thread is stuck (it turns at least every
/// 100 ms when idle).
pub const STALL_AFTER: Duration = Duration::from_secs(3);
/// How often the data-plane thread leaves the watchdog a snapshot of its sessions.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);
/// How often the watchdog looks.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// Failures within [`FAILURE_WINDOW`] after which the fast path stays off.
pub const GIVE_UP_AFTER: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(600);
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The data plane's state as the watchdog and status see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Frames go through the fast path.
    Up = 0,
    /// Failed; the bypass is on until the backoff ends.
    Down = 1,
    /// The watchdog saw no progress and turned the bypass on.
    Stalled = 2,
    /// Failed too often: the bypass stays on until the daemon restarts.
    GaveUp = 3,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Up,
            1 => State::Down,
            2 => State::Stalled,
            _ => State::GaveUp,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Stalled => "stalled",
            State::GaveUp => "gave up",
        }
    }
}

#[derive(Debug, Default)]
struct Detail {
    last_failure: Option<String>,
    resume_at: Option<Instant>,
}

/// What the data-plane thread, the watchdog and status share.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    beat_ms: AtomicU64,
    state: AtomicU8,
    stopping: AtomicBool,
    failures: AtomicU64,
    restarts: AtomicU64,
    handed_over: AtomicU64,
    handover_failed: AtomicU64,
    detail: Mutex<Detail>,
    /// The sessions as conntrack entries, for the watchdog to hand over after a stall.
    snapshot: Mutex<Vec<crate::fastpath::conntrack::Entry>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            epoch: Instant::now(),
            beat_ms: AtomicU64::new(0),
            state: AtomicU8::new(State::Up as u8),
            stopping: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            handed_over: AtomicU64::new(0),
            handover_failed: AtomicU64::new(0),
            detail: Mutex::default(),
            snapshot: Mutex::default(),
        }
    }
}

/// For `dovesnap status` and the metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct HealthStatus {
    /// "up", "down", "stalled" or "gave up".
    pub state: String,
    /// Panics and stalls of the data-plane thread.
    pub failures: u64,
    /// Times the fast path came back after a failure.
    pub restarts: u64,
    /// Sessions given to the kernel's conntrack at failures, and those it refused.
    pub sessions_handed_to_kernel: u64,
    pub handover_failures: u64,
    pub last_failure: String,
    /// While down: when the fast path comes back.
    pub resumes_in_ms: Option<u64>,
}

impl Health {
    fn detail(&self) -> std::sync::MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The thread made progress.
    pub fn beat(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.beat_ms.store(ms, Ordering::Relaxed);
    }

    fn since_beat(&self, now: Instant) -> Duration {
        let last = self.epoch + Duration::from_millis(self.beat_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Whether frames bypass the fast path now.
    pub fn is_down(&self) -> bool {
        self.state() != State::Up
    }

    /// A failure: counted (a stall the watchdog counted already is the same one) and
    /// remembered; `resume_at` `None` gives up.
    pub fn failed(&self, why: &str, resume_at: Option<Instant>) {
        if self.state() != State::Stalled {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let mut d = self.detail();
        d.last_failure = Some(why.to_string());
        d.resume_at = resume_at;
        self.set_state(if resume_at.is_some() {
            State::Down
        } else {
            State::GaveUp
        });
    }

    /// The thread's sessions now (see [`SNAPSHOT_EVERY`]).
    pub fn set_snapshot(&self, entries: Vec<crate::fastpath::conntrack::Entry>) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = entries;
    }

    fn take_snapshot(&self) -> Vec<crate::fastpath::conntrack::Entry> {
        std::mem::take(&mut *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Down, and its backoff is over.
    pub fn resume_due(&self, now: Instant) -> bool {
        self.state() == State::Down && self.detail().resume_at.is_some_and(|t| now >= t)
    }

    pub fn handed_over(&self, created: u64, failed: u64) {
        self.handed_over.fetch_add(created, Ordering::Relaxed);
        self.handover_failed.fetch_add(failed, Ordering::Relaxed);
    }

    /// The fast path is back.
    pub fn resumed(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        self.detail().resume_at = None;
        self.set_state(State::Up);
    }

    pub fn status(&self) -> HealthStatus {
        let now = Instant::now();
        let d = self.detail();
        HealthStatus {
            state: self.state().name().to_string(),
            failures: self.failures.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            sessions_handed_to_kernel: self.handed_over.load(Ordering::Relaxed),
            handover_failures: self.handover_failed.load(Ordering::Relaxed),
            last_failure: d.last_failure.clone().unwrap_or_default(),
            resumes_in_ms: d
                .resume_at
                .map(|t| t.saturating_duration_since(now).as_millis() as u64),
        }
    }
}

/// How long the fast path stays off after a failure: 1 s, doubling per failure within
/// [`FAILURE_WINDOW`] up to 30 s; `None` after [`GIVE_UP_AFTER`] of them.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: VecDeque<Instant>,
}

impl Backoff {
    pub fn on_failure(&mut self, now: Instant) -> Option<Duration> {
        while self
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > FAILURE_WINDOW)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        let n = self.failures.len();
        (n < GIVE_UP_AFTER).then(|| (BACKOFF_FIRST * (1 << (n - 1).min(5))).min(BACKOFF_MAX))
    }
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// The watchdog thread: turns the bypass on when the data plane stops making progress.
pub struct Watchdog {
    health: Arc<Health>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(health: Arc<Health>, mut bypass: Bypass) -> std::io::Result<Watchdog> {
        let h = health.clone();
        let thread = std::thread::Builder::new()
            .name("dovesnap-watch".into())
            .spawn(move || {
                while !h.stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(WATCH_EVERY);
                    let late = h.since_beat(Instant::now());
                    if h.state() == State::Up && late >= STALL_AFTER {
                        let why = format!(
                            "the data-plane thread made no progress for {} ms",
                            late.as_millis()
                        );
                        error!("nat-fast: {why}: every nat-fast frame goes to the kernel's path");
                        // Its sessions first, as after a panic, from its last snapshot.
                        let entries = h.take_snapshot();
                        match crate::fastpath::conntrack::Conntrack::open() {
                            Ok(ct) => {
                                let handed = ct.hand_over(entries);
                                h.handed_over(handed.created, handed.failed);
                            }
                            Err(e) => error!("nat-fast: cannot hand sessions to conntrack: {e}"),
                        }
                        if let Err(e) = bypass.set(true) {
                            error!("nat-fast: cannot turn the XDP bypass on: {e}");
                        }
                        h.failures.fetch_add(1, Ordering::Relaxed);
                        h.detail().last_failure = Some(why);
                        h.set_state(State::Stalled);
                    }
                }
            })?;
        Ok(Watchdog {
            health,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.health.stopping.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_gives_up_and_forgets_old_failures() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        let got: Vec<_> = (0..5)
            .map(|i| b.on_failure(t0 + Duration::from_secs(i)))
            .collect();
        assert_eq!(
            got,
            vec![
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(8)),
                None
            ]
        );
        // Long after: the window forgot them.
        let later = t0 + FAILURE_WINDOW + Duration::from_secs(10);
        assert_eq!(b.on_failure(later), Some(Duration::from_secs(1)));
    }

    #[test]
    fn health_reports_failures_and_recovery() {
        let h = Health::default();
        assert_eq!(h.status().state, "up");
        h.failed(
            "panicked: boom",
            Some(Instant::now() + Duration::from_secs(1)),
        );
        h.handed_over(3, 1);
        let s = h.status();
        assert_eq!((s.state.as_str(), s.failures), ("down", 1));
        assert_eq!((s.sessions_handed_to_kernel, s.handover_failures), (3, 1));
        assert!(s.resumes_in_ms.is_some_and(|ms| ms <= 1000));
        assert!(h.is_down());
        h.resumed();
        let s = h.status();
        assert_eq!((s.state.as_str(), s.restarts), ("up", 1));
        assert_eq!(s.last_failure, "panicked: boom");
        assert_eq!(s.resumes_in_ms, None);
        h.failed("again", None);
        assert_eq!(h.status().state, "gave up");
    }

    #[test]
    fn stalls_are_measured_from_the_last_beat() {
        let h = Health::default();
        let now = Instant::now();
        h.beat(now);
        assert!(h.since_beat(now + Duration::from_secs(4)) >= STALL_AFTER);
        assert!(h.since_beat(now) < STALL_AFTER);
    }

    #[test]
    fn panic_payloads_are_read() {
        let p = std::panic::catch_unwind(|| panic!("at {}", 3)).unwrap_err();
        assert_eq!(panic_message(&*p), "at 3");
        let p = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(&*p), "plain");
    }
}
