//! The host's Open vSwitch daemons, for tests that stop them (fault tests, the
//! packaging test that runs OVS in a container): stop, start them again the way
//! `cargo xtask setup` does (xtask/src/services.rs), and a guard that restarts
//! whatever is down when a test ends, passed or failed: the host's OVS is shared.

use std::time::{Duration, Instant};

use crate::{run, sh};

pub fn ovsdb_running() -> bool {
    run("ovs-appctl", &["-t", "ovsdb-server", "version"])
        .status
        .success()
}

pub fn vswitchd_running() -> bool {
    run("ovs-appctl", &["-t", "ovs-vswitchd", "version"])
        .status
        .success()
}

/// Marks every inherited descriptor close-on-exec before this test starts a host
/// daemon: run under `flock LOCK cargo test ...`, the test holds the lock's descriptor,
/// and a daemon inheriting it would hold the shared lock for as long as it runs.
pub fn cloexec_inherited_fds() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number of this process touches no memory; a
        // stale number (the directory listing's own) just fails.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Stops an Open vSwitch daemon (`ovs-appctl exit`) and waits until its process is gone.
pub fn stop_ovs_daemon(name: &str) {
    let pidfile = format!("/var/run/openvswitch/{name}.pid");
    let pid = std::fs::read_to_string(&pidfile).expect("OVS pidfile");
    sh("ovs-appctl", &["-t", name, "exit"]);
    let start = Instant::now();
    while std::path::Path::new("/proc").join(pid.trim()).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts ovsdb-server as `cargo xtask setup` does (xtask/src/services.rs).
pub fn start_ovsdb() {
    cloexec_inherited_fds();
    sh(
        "ovsdb-server",
        &[
            "--remote=punix:/var/run/openvswitch/db.sock",
            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
            "--pidfile",
            "--detach",
            "--log-file",
        ],
    );
}

/// Starts ovs-vswitchd as `cargo xtask setup` does.
pub fn start_vswitchd() {
    cloexec_inherited_fds();
    sh("ovs-vswitchd", &["--pidfile", "--detach", "--log-file"]);
}

/// Starts whatever of ovsdb-server and ovs-vswitchd is not running, on drop: the host's
/// Open vSwitch is shared, so a failed test must not leave it down.
pub struct OvsRestore;

impl Drop for OvsRestore {
    fn drop(&mut self) {
        if !ovsdb_running() {
            start_ovsdb();
        }
        if !vswitchd_running() {
            start_vswitchd();
        }
        let start = Instant::now();
        while !run("ovs-vsctl", &["--timeout=2", "show"]).status.success()
            && start.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
