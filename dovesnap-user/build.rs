//! Builds the XDP program (`dovesnap-ebpf`, a `bpfel-unknown-none` binary) with
//! aya-build and leaves the object at `$OUT_DIR/dovesnap-ebpf`, where `src/fastpath/xdp.rs`
//! embeds it with `include_bytes_aligned!`.
//!
//! The eBPF build needs the nightly toolchain with `rust-src` (for `-Z build-std=core`)
//! and `bpf-linker` on `PATH`; `cargo xtask setup` installs them. The host crates keep
//! building with the stable toolchain.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (e.g. for a quick `cargo clippy` without the
//! eBPF toolchain): an empty object is written instead, and `XdpProgram::load` reports
//! that the binary was built without its XDP program.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// The eBPF package, and the binary (same name) whose object aya-build copies to OUT_DIR.
const EBPF_PACKAGE: &str = "dovesnap-ebpf";
/// The toolchain aya-build runs `cargo build` with (through `rustup run`).
const EBPF_TOOLCHAIN: &str = "nightly";
const SETUP_HINT: &str = "run `cargo xtask setup` to install the eBPF toolchain \
    (nightly with rust-src, and bpf-linker), or set AYA_BUILD_SKIP=1 to build without \
    the XDP program";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let workspace_dir = manifest_dir
        .parent()
        .context("dovesnap-user has no parent directory")?;
    let ebpf_dir = workspace_dir.join(EBPF_PACKAGE);
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("cannot find the eBPF crate at {}", ebpf_dir.display()))?;
    let ebpf_dir_str = ebpf_dir
        .to_str()
        .with_context(|| format!("non-UTF-8 path {}", ebpf_dir.display()))?;

    // The eBPF sources, and the lock file that pins aya-ebpf.
    println!("cargo::rerun-if-changed={ebpf_dir_str}");
    println!(
        "cargo::rerun-if-changed={}",
        workspace_dir.join("Cargo.lock").display()
    );
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    if skip_requested() {
        println!(
            "cargo::warning=AYA_BUILD_SKIP is set: dovesnap is built without its XDP \
             program, and loading it will fail"
        );
        fs::write(out_dir.join(EBPF_PACKAGE), b"")?;
        return Ok(());
    }

    check_toolchain()?;

    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: ebpf_dir_str,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .with_context(|| format!("building the XDP program ({EBPF_PACKAGE}) failed"))?;

    let object = out_dir.join(EBPF_PACKAGE);
    if !object.is_file() {
        bail!(
            "aya-build finished but left no {}; is `{EBPF_PACKAGE}` still a [[bin]]?",
            object.display()
        );
    }
    Ok(())
}

fn skip_requested() -> bool {
    env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Fails early, with the fix, when the eBPF toolchain is incomplete: otherwise the nested
/// cargo build fails with an error that does not say what to install.
fn check_toolchain() -> anyhow::Result<()> {
    if find_on_path("bpf-linker").is_none() {
        bail!("bpf-linker not found on PATH; {SETUP_HINT}");
    }
    let sysroot = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .output()
        .with_context(|| {
            format!("cannot run rustup to find the {EBPF_TOOLCHAIN} toolchain; {SETUP_HINT}")
        })?;
    if !sysroot.status.success() {
        bail!(
            "the {EBPF_TOOLCHAIN} toolchain is not installed ({}); {SETUP_HINT}",
            String::from_utf8_lossy(&sysroot.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let core_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        bail!(
            "the {EBPF_TOOLCHAIN} toolchain has no rust-src component ({} is missing); \
             {SETUP_HINT}",
            core_src.display()
        );
    }
    Ok(())
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
