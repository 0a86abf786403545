//! Running commands, on the host or inside a network namespace, and waiting for a
//! condition.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Runs `cmd args` and returns its standard output; fails with both outputs when it
/// exits non-zero.
pub fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{cmd}`"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`sh`] of a command line split at whitespace (no quoting: for lines of names,
/// numbers and addresses).
pub fn sh_line(line: &str) -> Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (cmd, args) = words.split_first().context("empty command line")?;
    sh(cmd, args)
}

/// [`sh`] of `args` (the command first) inside network namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    sh("ip", &full)
}

/// [`sh_line`] inside network namespace `ns`.
pub fn in_ns_line(ns: &str, line: &str) -> Result<String> {
    sh_line(&format!("ip netns exec {ns} {line}"))
}

/// The `ip link add` command line of a veth pair `a` (in namespace `a_ns`, or where
/// the command runs when `None`) and `b` (in `b_ns`), each end with `queues` rx and tx
/// queues.
pub fn veth_pair(a: &str, a_ns: Option<&str>, b: &str, b_ns: Option<&str>, queues: u32) -> String {
    let end = |name: &str, ns: Option<&str>| {
        let ns = ns.map(|n| format!(" netns {n}")).unwrap_or_default();
        format!("{name}{ns} numtxqueues {queues} numrxqueues {queues}")
    };
    format!(
        "ip link add {} type veth peer name {}",
        end(a, a_ns),
        end(b, b_ns)
    )
}

/// Polls `ready` every 200 ms until it holds; fails naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > timeout {
            bail!("{what} did not happen within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_pair_lines() {
        assert_eq!(
            veth_pair("a", Some("n1"), "b", None, 2),
            "ip link add a netns n1 numtxqueues 2 numrxqueues 2 type veth peer name b \
             numtxqueues 2 numrxqueues 2"
        );
    }

    #[test]
    fn commands_report_failures() {
        assert_eq!(sh_line("echo a  b").unwrap(), "a b\n");
        let e = sh("false", &[]).unwrap_err().to_string();
        assert!(e.contains("`false ` failed"), "{e}");
        assert!(sh_line(" ").is_err());
        let mut n = 0;
        wait_until("n reaches 2", Duration::from_secs(2), || {
            n += 1;
            n >= 2
        })
        .unwrap();
        assert!(wait_until("never", Duration::ZERO, || false).is_err());
    }
}
