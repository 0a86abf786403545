//! `cargo xtask`: set-up, run and test dovesnap on a fresh Debian machine.
//!
//! - `setup`: installs what is missing (Debian packages, nightly `rust-src`, a
//!   `bpf-linker` built against the nightly's own LLVM), mounts bpffs, and starts
//!   ovsdb-server/ovs-vswitchd and dockerd when they are not running. What it starts
//!   is recorded so that `teardown` stops exactly that and nothing else.
//! - `run`: set-up, build, run the plugin daemon in the foreground.
//! - `test`: set-up, then every test: unit, a short fuzz run of each fuzz target,
//!   privileged integration, Docker end to end.
//! - `bench`: set-up, release build, then the benchmark (`dovesnap-bench run`):
//!   containers on each network against Docker's bridge, namespace paths against the
//!   kernel, `target/bench/report.json`, `chart.svg` and `chart-containers.svg`.
//! - `image`: set-up, then the `dovesnap:local` image of the root `Dockerfile` (the
//!   packaging test builds it through `docker-compose up -d --build`).
//! - `teardown`: stops the services that `setup` started.

mod image;
mod toolchain;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use xtask::services;
use xtask::{run, succeeds};

#[derive(Parser)]
#[command(name = "xtask", about = "dovesnap developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install packages and toolchains, start Open vSwitch and dockerd if needed.
    Setup,
    /// Set up, build and run the plugin daemon in the foreground.
    Run {
        /// Arguments passed on to `dovesnap daemon`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: unit, privileged integration, Docker end to end.
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
    },
    /// Set up, build in release mode and run the benchmark.
    Bench {
        /// Fewer, shorter runs (about six minutes): CI's smoke test.
        #[arg(long)]
        quick: bool,
        /// More arguments for `dovesnap-bench run` (e.g. `--paths kernel-nat,nat-fast`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then build the `dovesnap:local` image that docker-compose.yml runs.
    Image,
    /// Stop the services that `setup` started (and nothing else).
    Teardown,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Run { args } => {
            setup()?;
            build_daemon()?;
            let bin = workspace_root().join("target/release/dovesnap");
            let status = Command::new(&bin)
                .arg("daemon")
                .args(&args)
                .status()
                .with_context(|| format!("cannot start {}", bin.display()))?;
            if !status.success() {
                bail!("dovesnap daemon exited with {status}");
            }
            Ok(())
        }
        Cmd::Test { filter } => {
            setup()?;
            test(filter.as_deref())
        }
        Cmd::Bench { quick, args } => {
            setup()?;
            // The control-plane part runs the plugin daemon from the same directory. Both
            // in one build over the default members: the same feature set as `test`'s
            // builds, so dovesnap-user (and its eBPF object) is compiled once.
            cargo(&[
                "build",
                "--release",
                "--bin",
                "dovesnap",
                "--bin",
                "dovesnap-bench",
            ])?;
            let bin = workspace_root().join("target/release/dovesnap-bench");
            let out = workspace_root().join("target/bench");
            let mut cmd = Command::new(&bin);
            cmd.arg("run").arg("--out").arg(&out);
            if quick {
                cmd.arg("--quick");
            }
            cmd.args(&args).current_dir(workspace_root());
            run(&mut cmd)
        }
        Cmd::Image => {
            setup()?;
            image::build()
        }
        Cmd::Teardown => services::teardown(),
    }
}

fn setup() -> Result<()> {
    require_root()?;
    services::close_inherited_fds();
    toolchain::install_packages()?;
    toolchain::ensure_ebpf_toolchain()?;
    toolchain::ensure_cargo_fuzz()?;
    services::ensure_bpffs()?;
    services::ensure_ovs()?;
    services::ensure_dockerd()?;
    Ok(())
}

fn test(filter: Option<&str>) -> Result<()> {
    let filter: Vec<&str> = filter.into_iter().collect();
    // Every build below selects the workspace's default members (all but the eBPF
    // crate), never one package with `-p`: cargo unifies features over the packages it
    // is asked for, so each different selection compiled dovesnap-user (and its eBPF
    // object) again. The end-to-end tests drive the real binary; the bench tools' own
    // test runs the bench binary inside namespaces.
    cargo(&["build", "--bin", "dovesnap", "--bin", "dovesnap-bench"])?;
    let bin = workspace_root().join("target/debug/dovesnap");
    std::env::set_var("DOVESNAP_BIN", &bin);
    // Unit tests and unprivileged integration tests.
    let mut unit = vec!["test", "--"];
    unit.extend(&filter);
    cargo(&unit)?;
    if filter.is_empty() {
        fuzz()?;
    }
    // The packaging test runs `docker-compose up -d --build` at the root: its build
    // starts FROM the bases this machine has (made locally where no registry answers),
    // passed on as docker-compose.yml's DOVESNAP_BASE and DOVESNAP_TOOLCHAIN_BASE.
    for (_, var, value) in image::Bases::find()?.args() {
        std::env::set_var(var, value);
    }
    // Privileged tests (netns, OVS, XDP, Docker): ignored by default so a plain
    // `cargo test` never reports them as passed without running them; run here,
    // serially, since they share the host's OVS, netfilter and Docker.
    // `--tests`: the fixtures crate has no doc tests, and a closing "0 passed" line
    // from an empty doc-test run would misreport the run.
    // The daemon crate's own root-only unit tests (e.g. `host::netns`) run with them;
    // the bench's ignored tests are microbenchmarks (release mode, alone): skipped.
    let mut privileged = vec![
        "test",
        "--lib",
        "--tests",
        "--",
        "--ignored",
        "--test-threads=1",
        "--skip",
        "micro::tests::",
    ];
    privileged.extend(&filter);
    cargo(&privileged)
}

/// Seconds of libFuzzer per fuzz target in `cargo xtask test` (`DOVESNAP_FUZZ_SECONDS`
/// to change, 0 to skip).
const FUZZ_SECONDS: u64 = 20;

/// A short libFuzzer run of each fuzz target (`dovesnap-user/fuzz`), seeded with the
/// repository's corpus, built in the dev profile without a sanitizer (`--dev -s none`):
/// the targets are safe Rust, overflow checks and debug assertions stay on, and the
/// build takes about 1.7 min here instead of 5.3 (release with AddressSanitizer) for
/// two thirds of the executions per second; a crash fails the test command (libFuzzer exits non-zero and
/// leaves the input in `dovesnap-user/fuzz/artifacts/TARGET/`). New inputs go to a
/// scratch corpus under `target/`, so the repository's stays as committed.
fn fuzz() -> Result<()> {
    let seconds = match std::env::var("DOVESNAP_FUZZ_SECONDS") {
        Ok(s) => s
            .parse()
            .context("DOVESNAP_FUZZ_SECONDS must be a number of seconds")?,
        Err(_) => FUZZ_SECONDS,
    };
    if seconds == 0 {
        eprintln!("xtask: fuzzing skipped (DOVESNAP_FUZZ_SECONDS=0)");
        return Ok(());
    }
    let dir = workspace_root().join("dovesnap-user/fuzz");
    for target in ["translate", "api"] {
        let scratch = workspace_root().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", "--dev", "-s", "none", target])
            .arg(&scratch)
            .current_dir(&dir)
            // The fuzz targets do not load the XDP program: skip building it.
            .env("AYA_BUILD_SKIP", "1");
        let seeds = dir.join("corpus").join(target);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--").arg(format!("-max_total_time={seconds}"));
        run(&mut cmd).with_context(|| {
            format!(
                "fuzz target {target} failed: the crashing input is in {}",
                dir.join("artifacts").join(target).display()
            )
        })?;
    }
    Ok(())
}

fn require_root() -> Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("cannot run id")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("cargo xtask needs root: it installs packages and starts Open vSwitch and dockerd; run it as root");
    }
    Ok(())
}

/// Runs cargo from the workspace root, failing on a non-zero exit.
/// Builds the release `dovesnap` binary (`target/release/dovesnap`).
pub(crate) fn build_daemon() -> Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "dovesnap-user",
        "--bin",
        "dovesnap",
    ])
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args).current_dir(workspace_root()))
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}
