//! Debian packages and the eBPF toolchain (nightly `rust-src`, `bpf-linker`).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{run, succeeds};

/// Debian packages the build, the daemon and the tests use.
const PACKAGES: &[&str] = &[
    // Open vSwitch (userspace datapath here; the kernel one where the module exists).
    "openvswitch-switch",
    // OVN for overlay mode: ovn-northd + NB/SB databases, ovn-controller.
    "ovn-central",
    "ovn-host",
    // Docker engine for the end-to-end tests.
    "docker.io",
    // The packaging test: Compose, a Debian base image where no registry answers,
    // `strip` for the image's binary, `systemd-analyze` for the unit file.
    "docker-compose",
    "debootstrap",
    "binutils",
    "systemd",
    // eBPF / AF_XDP build: clang and libelf for xsk-rs' libxdp build, llvm tools.
    "clang",
    "llvm",
    "m4",
    "libelf-dev",
    "zlib1g-dev",
    "pkg-config",
    "libpcap-dev",
    // Test tooling: busybox for the container image, netns and netfilter tools.
    "busybox-static",
    "iproute2",
    "iputils-ping",
    "nftables",
    "iptables",
    "ethtool",
    "tcpdump",
    "conntrack",
    "bpftool",
];

/// Installs the packages of [`PACKAGES`] that are not installed yet.
pub fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or("/root".into())).join(".cargo")
        })
}

/// Makes sure the nightly toolchain has `rust-src` and that a `bpf-linker` built
/// against the nightly's LLVM is on PATH (for this process and its children).
pub fn ensure_ebpf_toolchain() -> Result<()> {
    let bin = cargo_home().join("bin");
    let path = std::env::var("PATH").unwrap_or_default();
    if !path.split(':').any(|p| bin == std::path::Path::new(p)) {
        std::env::set_var("PATH", format!("{}:{path}", bin.display()));
    }

    let sysroot = nightly_sysroot()?;
    if !sysroot.join("lib/rustlib/src/rust/library").exists() {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    // bpf-linker has no prebuilt download here: build it against the LLVM inside the
    // nightly toolchain. It keeps an rpath to the prefix, so the prefix is persistent.
    let lib = std::fs::read_dir(sysroot.join("lib"))
        .context("cannot list the nightly toolchain's lib folder")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .context("the nightly toolchain ships no libLLVM.so.*: cannot build bpf-linker")?;
    let major = llvm_major()?;
    let prefix = PathBuf::from("/opt/dovesnap/llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for link in ["libLLVM.so".to_string(), lib.clone()] {
        let dst = prefix_lib.join(&link);
        let _ = std::fs::remove_file(&dst);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&lib), &dst)
            .with_context(|| format!("cannot link {}", dst.display()))?;
    }
    eprintln!("xtask: building bpf-linker against nightly's LLVM {major} (a few minutes, once)");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))?;
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but does not run; see the cargo install output above");
    }
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("cannot run rustc +nightly")?;
    if !out.status.success() {
        bail!(
            "the nightly Rust toolchain is missing (the eBPF program needs it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn llvm_major() -> Result<String> {
    let out = Command::new("rustc").args(["+nightly", "-vV"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_string)
        .context("cannot read the LLVM version from `rustc +nightly -vV`")
}

/// Makes sure `cargo fuzz` (cargo-fuzz, for the short fuzz runs of `cargo xtask test`)
/// is installed.
pub fn ensure_cargo_fuzz() -> Result<()> {
    if succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (once)");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    if !succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        bail!("cargo-fuzz was installed but `cargo fuzz` does not run; see the output above");
    }
    Ok(())
}
