//! What `cargo xtask` and the privileged tests share: how this project starts and stops
//! the host's services (ovsdb-server, ovs-vswitchd, dockerd). The fault and packaging
//! tests stop and restart them, and must do it exactly as set-up does.

pub mod services;

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs a command, failing with its name on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs a command and says whether it succeeded, printing nothing.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
