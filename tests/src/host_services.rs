//! The host's Open vSwitch and Docker daemons, for tests that stop them (fault tests,
//! the packaging test that runs OVS in a container): stopped and started again by the
//! same code as `cargo xtask setup` (`xtask::services`), and guards that restart
//! whatever is down when a test ends, passed or failed: the host's services are shared.

use std::time::Duration;

pub use xtask::services::{docker_ready, ovsdb_running, vswitchd_running};
use xtask::services::{ovs_ready, start_ovsdb_server, wait_until};

/// Stops an Open vSwitch daemon and waits until its process is gone.
pub fn stop_ovs_daemon(name: &str) {
    xtask::services::stop_ovs_daemon(name).expect("stop an Open vSwitch daemon");
}

pub fn start_ovsdb() {
    start_ovsdb_server().expect("start ovsdb-server");
}

pub fn start_vswitchd() {
    xtask::services::start_vswitchd().expect("start ovs-vswitchd");
}

/// Stops dockerd with SIGTERM (what `systemctl stop docker` does) and waits for it.
pub fn stop_dockerd() {
    xtask::services::stop_dockerd().expect("stop dockerd");
}

/// Starts dockerd; does not wait for it to answer ([`docker_ready`]).
pub fn start_dockerd() {
    xtask::services::start_dockerd().expect("start dockerd");
}

/// Starts whatever of ovsdb-server and ovs-vswitchd is not running, on drop: the host's
/// Open vSwitch is shared, so a failed test must not leave it down.
pub struct OvsRestore;

impl Drop for OvsRestore {
    fn drop(&mut self) {
        if !ovsdb_running() {
            let _ = start_ovsdb_server();
        }
        if !vswitchd_running() {
            let _ = xtask::services::start_vswitchd();
        }
        let _ = wait_until("Open vSwitch", Duration::from_secs(30), ovs_ready);
    }
}

/// Starts dockerd again on drop if it is down.
pub struct DockerRestore;

impl Drop for DockerRestore {
    fn drop(&mut self) {
        if !docker_ready() {
            let _ = xtask::services::start_dockerd();
            let _ = wait_until("dockerd", Duration::from_secs(90), docker_ready);
        }
    }
}

/// ovs-vswitchd stopped with SIGSTOP (it neither applies changes nor answers) until
/// the guard is dropped, which sends SIGCONT, also when the test fails.
pub struct VswitchdPaused {
    pid: i32,
}

impl VswitchdPaused {
    pub fn pause() -> Self {
        let pid = std::fs::read_to_string("/var/run/openvswitch/ovs-vswitchd.pid")
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .expect("ovs-vswitchd's pidfile: is Open vSwitch running (`cargo xtask setup`)?");
        let guard = VswitchdPaused { pid };
        // SAFETY: kill(2) with a pid from ovs-vswitchd's pidfile; no memory is involved.
        let rc = unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(rc, 0, "cannot stop ovs-vswitchd (pid {pid})");
        guard
    }
}

impl Drop for VswitchdPaused {
    fn drop(&mut self) {
        // SAFETY: as in `pause`.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}
