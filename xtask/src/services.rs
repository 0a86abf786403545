//! The services dovesnap needs: bpffs, ovsdb-server + ovs-vswitchd, dockerd.
//!
//! Each `ensure_*` starts its service only when it is not already running and records
//! that in [`STATE_DIR`], so [`teardown`] stops exactly what set-up started. The
//! `start_*` and `stop_*` primitives are also what the fault tests use to restart the
//! host's services under the plugin.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{run, succeeds};

const STATE_DIR: &str = "/run/dovesnap-xtask";
const OVS_DB: &str = "/etc/openvswitch/conf.db";
const OVS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const OVS_RUNDIR: &str = "/var/run/openvswitch";
const DOCKERD_LOG: &str = "/var/log/dovesnap-xtask-dockerd.log";
const DOCKERD_PIDFILE: &str = "/var/run/docker.pid";

/// Marks every descriptor above stderr close-on-exec. Run as `flock LOCK cargo xtask
/// ...` (or a test under it), this process inherits the lock's descriptor; without
/// this, the daemons started here would inherit it too and hold the lock for as long
/// as they run.
pub fn close_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number of this process; setting FD_CLOEXEC
        // touches no memory, and a stale number (the directory's own) just fails.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

fn mark_started(what: &str) -> Result<()> {
    std::fs::create_dir_all(STATE_DIR)?;
    std::fs::write(Path::new(STATE_DIR).join(what), b"")?;
    Ok(())
}

fn was_started(what: &str) -> bool {
    Path::new(STATE_DIR).join(what).exists()
}

fn forget(what: &str) {
    let _ = std::fs::remove_file(Path::new(STATE_DIR).join(what));
}

pub use dovesnap_testbed::cmd::wait_until;

/// Mounts bpffs on /sys/fs/bpf if nothing is mounted there.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    mark_started("bpffs")
}

pub fn ovs_ready() -> bool {
    succeeds(Command::new("ovs-vsctl").args(["--timeout=2", "show"]))
}

pub fn ovsdb_running() -> bool {
    succeeds(Command::new("ovs-appctl").args(["-t", "ovsdb-server", "version"]))
}

pub fn vswitchd_running() -> bool {
    succeeds(Command::new("ovs-appctl").args(["-t", "ovs-vswitchd", "version"]))
}

/// Starts ovsdb-server on the host's database (detached, with a pidfile).
pub fn start_ovsdb_server() -> Result<()> {
    close_inherited_fds();
    run(Command::new("ovsdb-server").args([
        "--remote=punix:/var/run/openvswitch/db.sock",
        "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
        "--pidfile",
        "--detach",
        "--log-file",
    ]))
}

/// Starts ovs-vswitchd (detached, with a pidfile).
pub fn start_vswitchd() -> Result<()> {
    close_inherited_fds();
    run(Command::new("ovs-vswitchd").args(["--pidfile", "--detach", "--log-file"]))
}

/// Stops an Open vSwitch daemon (`ovs-appctl exit`) and waits until its process is gone.
pub fn stop_ovs_daemon(name: &str) -> Result<()> {
    let pidfile = format!("{OVS_RUNDIR}/{name}.pid");
    let pid = std::fs::read_to_string(&pidfile).with_context(|| format!("no {pidfile}"))?;
    let pid = pid.trim().to_string();
    run(Command::new("ovs-appctl").args(["-t", name, "exit"]))?;
    wait_until(&format!("{name} exit"), Duration::from_secs(20), || {
        !Path::new("/proc").join(&pid).exists()
    })
}

/// Starts ovsdb-server and ovs-vswitchd (no systemd here) unless they are running.
pub fn ensure_ovs() -> Result<()> {
    if ovs_ready() && vswitchd_running() {
        return Ok(());
    }
    std::fs::create_dir_all(OVS_RUNDIR)?;
    std::fs::create_dir_all("/etc/openvswitch")?;
    if !Path::new(OVS_DB).exists() {
        run(Command::new("ovsdb-tool").args(["create", OVS_DB, OVS_SCHEMA]))?;
    }
    if !ovsdb_running() {
        start_ovsdb_server()?;
        mark_started("ovsdb-server")?;
        run(Command::new("ovs-vsctl").args(["--no-wait", "init"]))?;
    }
    if !vswitchd_running() {
        start_vswitchd()?;
        mark_started("ovs-vswitchd")?;
    }
    wait_until("Open vSwitch", Duration::from_secs(30), ovs_ready)
}

pub fn docker_ready() -> bool {
    succeeds(Command::new("timeout").args(["5", "docker", "info"]))
}

/// Starts dockerd (vfs storage: no overlay support needed) in a session of its own,
/// appending to [`DOCKERD_LOG`]; does not wait for it.
pub fn start_dockerd() -> Result<()> {
    close_inherited_fds();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(DOCKERD_LOG)
        .context("cannot open the dockerd log")?;
    // setsid: dockerd outlives this process, in a session of its own.
    Command::new("setsid")
        .args([
            "dockerd",
            "--storage-driver=vfs",
            &format!("--pidfile={DOCKERD_PIDFILE}"),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start dockerd (is docker.io installed?)")?;
    Ok(())
}

/// Stops dockerd with SIGTERM (what `systemctl stop docker` does) and waits for it.
pub fn stop_dockerd() -> Result<()> {
    let pid = std::fs::read_to_string(DOCKERD_PIDFILE).context("no dockerd pidfile")?;
    let pid = pid.trim().to_string();
    run(Command::new("kill").arg(&pid))?;
    wait_until("dockerd exit", Duration::from_secs(60), || {
        !Path::new("/proc").join(&pid).exists()
    })
}

/// Starts dockerd unless it is running, and waits until it answers.
pub fn ensure_dockerd() -> Result<()> {
    if docker_ready() {
        return Ok(());
    }
    if let Err(e) = std::fs::remove_file(DOCKERD_LOG) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e).context("cannot reset the dockerd log");
        }
    }
    start_dockerd()?;
    mark_started("dockerd")?;
    wait_until("dockerd", Duration::from_secs(90), docker_ready)
        .with_context(|| format!("see {DOCKERD_LOG}"))
}

/// Stops what set-up started, in reverse order, and keeps going past failures.
pub fn teardown() -> Result<()> {
    let mut failures = Vec::new();
    if was_started("dockerd") {
        if Path::new(DOCKERD_PIDFILE).exists() && stop_dockerd().is_err() {
            failures.push("dockerd".to_string());
        }
        forget("dockerd");
    }
    for daemon in ["ovs-vswitchd", "ovsdb-server"] {
        if was_started(daemon) {
            if run(Command::new("ovs-appctl").args(["-t", daemon, "exit"])).is_err() {
                failures.push(daemon.to_string());
            }
            forget(daemon);
        }
    }
    if was_started("bpffs") {
        if run(Command::new("umount").arg("/sys/fs/bpf")).is_err() {
            failures.push("bpffs".to_string());
        }
        forget("bpffs");
    }
    if !failures.is_empty() {
        bail!("could not stop: {}", failures.join(", "));
    }
    Ok(())
}
