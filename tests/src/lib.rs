//! Shared fixtures for the privileged integration and end-to-end tests.
//!
//! Every fixture is RAII: what it creates (namespace, veth, OVS bridge) is removed in
//! `Drop`, also when the test panics. Privileged tests are `#[ignore = "needs root ..."]`
//! and `cargo xtask test` runs them with `--ignored --test-threads=1`; they call
//! [`require_root`] first (the daemon fixtures, `Daemon::start*` and `start_plugin*`,
//! call it themselves) so that a run without the privileges fails loudly instead of
//! passing.

use std::process::{Command, Output};

use dovesnap_testbed::cmd;
use std::sync::atomic::{AtomicU32, Ordering};

/// Fails the test unless it runs as root: privileged tests never pass by skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (netns, veth, OVS); run it through `cargo xtask test`"
    );
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    cmd::sh(cmd, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`sh`] of a command line split at whitespace (names, numbers and addresses only).
pub fn sh_line(line: &str) -> String {
    cmd::sh_line(line).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Polls `ready` every 200 ms, panicking naming `what` when it does not hold within
/// `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, ready: impl FnMut() -> bool) {
    cmd::wait_until(what, timeout, ready).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Polls `ready` every 200 ms for up to `timeout`; whether it came to hold (for checks
/// that then assert with their own message).
pub fn eventually(timeout: std::time::Duration, ready: impl FnMut() -> bool) -> bool {
    cmd::wait_until("", timeout, ready).is_ok()
}

/// Runs a command and returns its output whatever the exit status.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd}`: {e}"))
}

/// A name unique to this process and call, short enough for an interface name
/// (`prefix` at most 6 characters).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    assert!(prefix.len() <= 6, "prefix too long for an interface name");
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:05}{n:02}", std::process::id() % 100_000)
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        sh("ip", &["netns", "add", &name]);
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `cmd args` inside the namespace and returns its output.
    pub fn run(&self, cmd: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Like [`Netns::run`] but panics when the command fails.
    pub fn sh(&self, cmd: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// [`sh_line`] inside the namespace.
    pub fn line(&self, line: &str) -> String {
        cmd::in_ns_line(&self.name, line).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The body of `url` fetched from inside the namespace by busybox wget within 5 s
    /// (trimmed; empty on failure).
    pub fn wget(&self, url: &str) -> String {
        let out = self.run("timeout", &["5", "busybox", "wget", "-q", "-O", "-", url]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A veth pair created in the host namespace; deleting one end deletes both, so drop
/// removes it wherever the peer was moved (a namespace's deletion also removes it).
pub struct Veth {
    pub host: String,
    pub peer: String,
}

impl Veth {
    pub fn new(prefix: &str) -> Self {
        let host = unique_name(prefix);
        let peer = format!("{host}p");
        sh(
            "ip",
            &["link", "add", &host, "type", "veth", "peer", "name", &peer],
        );
        sh("ip", &["link", "set", &host, "up"]);
        Veth { host, peer }
    }

    /// Moves the peer end into `ns`, gives it `addr` (CIDR) and brings it up.
    pub fn peer_into(&self, ns: &Netns, addr: &str) {
        sh("ip", &["link", "set", &self.peer, "netns", &ns.name]);
        ns.sh("ip", &["addr", "add", addr, "dev", &self.peer]);
        ns.sh("ip", &["link", "set", &self.peer, "up"]);
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.host]);
    }
}

/// An OVS bridge made by a test through ovs-vsctl (test set-up only: the product talks
/// OVSDB itself), deleted on drop.
pub struct TestBridge {
    pub name: String,
}

impl TestBridge {
    pub fn new(prefix: &str) -> Self {
        let bridge = TestBridge {
            name: unique_name(prefix),
        };
        bridge.remake();
        bridge
    }

    /// Makes the bridge (again, after a test deleted it), as an administrator would.
    pub fn remake(&self) {
        let name = self.name.as_str();
        let args = [
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            "datapath_type=netdev",
        ];
        sh("ovs-vsctl", &args);
    }
}

impl Drop for TestBridge {
    fn drop(&mut self) {
        let _ = run("ovs-vsctl", &["--if-exists", "del-br", &self.name]);
    }
}

/// Names of every veth interface in the host namespace.
pub fn host_veths() -> Vec<String> {
    let out = sh("ip", &["-o", "link", "show", "type", "veth"]);
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Names of every OVS bridge.
pub fn ovs_bridges() -> Vec<String> {
    sh("ovs-vsctl", &["list-br"])
        .lines()
        .map(str::to_string)
        .collect()
}

pub mod bpf;
pub mod daemon;
pub mod docker;
pub mod far;
pub mod host_services;
pub mod hosts;
pub mod status;

/// OVS bridges and host veths whose names start with one of the given prefixes: what a
/// test checks is not left behind.
pub fn leftovers(bridge_prefixes: &[&str], veth_prefixes: &[&str]) -> Vec<String> {
    let mut left: Vec<String> = ovs_bridges()
        .into_iter()
        .filter(|b| bridge_prefixes.iter().any(|p| b.starts_with(p)))
        .collect();
    left.extend(
        host_veths()
            .into_iter()
            .filter(|v| veth_prefixes.iter().any(|p| v.starts_with(p))),
    );
    left
}
