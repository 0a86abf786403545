//! The services dovesnap needs: bpffs, ovsdb-server + ovs-vswitchd, dockerd.
//!
//! Each `ensure_*` starts its service only when it is not already running and records
//! that in [`STATE_DIR`], so [`teardown`] stops exactly what set-up started.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{run, succeeds};

const STATE_DIR: &str = "/run/dovesnap-xtask";
const OVS_DB: &str = "/etc/openvswitch/conf.db";
const OVS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const OVS_RUNDIR: &str = "/var/run/openvswitch";
const DOCKERD_LOG: &str = "/var/log/dovesnap-xtask-dockerd.log";

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

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > timeout {
            bail!("{what} did not become ready within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

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

fn ovs_ready() -> bool {
    succeeds(Command::new("ovs-vsctl").args(["--timeout=2", "show"]))
}

fn vswitchd_running() -> bool {
    succeeds(Command::new("ovs-appctl").args(["-t", "ovs-vswitchd", "version"]))
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
    if !succeeds(Command::new("ovs-appctl").args(["-t", "ovsdb-server", "version"])) {
        run(Command::new("ovsdb-server").args([
            "--remote=punix:/var/run/openvswitch/db.sock",
            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
            "--pidfile",
            "--detach",
            "--log-file",
        ]))?;
        mark_started("ovsdb-server")?;
        run(Command::new("ovs-vsctl").args(["--no-wait", "init"]))?;
    }
    if !vswitchd_running() {
        run(Command::new("ovs-vswitchd").args(["--pidfile", "--detach", "--log-file"]))?;
        mark_started("ovs-vswitchd")?;
    }
    wait_until("Open vSwitch", Duration::from_secs(30), ovs_ready)
}

fn docker_ready() -> bool {
    succeeds(Command::new("timeout").args(["5", "docker", "info"]))
}

/// Starts dockerd (vfs storage: no overlay support needed) unless it is running.
pub fn ensure_dockerd() -> Result<()> {
    if docker_ready() {
        return Ok(());
    }
    let log = std::fs::File::create(DOCKERD_LOG).context("cannot create the dockerd log")?;
    // setsid: dockerd outlives this process, in a session of its own.
    Command::new("setsid")
        .args([
            "dockerd",
            "--storage-driver=vfs",
            "--pidfile=/var/run/docker.pid",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start dockerd (is docker.io installed?)")?;
    mark_started("dockerd")?;
    wait_until("dockerd", Duration::from_secs(90), docker_ready)
        .with_context(|| format!("see {DOCKERD_LOG}"))
}

/// Stops what set-up started, in reverse order, and keeps going past failures.
pub fn teardown() -> Result<()> {
    let mut failures = Vec::new();
    if was_started("dockerd") {
        if let Ok(pid) = std::fs::read_to_string("/var/run/docker.pid") {
            let pid = pid.trim().to_string();
            if run(Command::new("kill").arg(&pid)).is_err() {
                failures.push("dockerd".to_string());
            }
            let _ = wait_until("dockerd exit", Duration::from_secs(30), || {
                !Path::new("/proc").join(&pid).exists()
            });
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
