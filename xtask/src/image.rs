//! `cargo xtask image`: builds `dovesnap:local`, the image the root
//! `docker-compose.yml` runs, from the root `Dockerfile` (which compiles dovesnap in a
//! builder stage: `docker-compose up -d --build` does the same build).
//!
//! The Dockerfile starts from `debian:bookworm-slim`. Where no registry answers (our
//! CI machines), the same Debian release is made locally with `debootstrap` (minbase
//! variant, from the Debian mirror apt uses) and imported as [`LOCAL_BASE`], which the
//! build then takes as its `BASE` (Compose: `DOVESNAP_BASE`). Such machines cannot
//! download Rust inside a build either: [`LOCAL_TOOLCHAIN`], that base plus the host's
//! own toolchains, is the toolchain stage's base there (`TOOLCHAIN_BASE`, Compose:
//! `DOVESNAP_TOOLCHAIN_BASE`). Everything after `FROM` is the Dockerfile as users run it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{run, succeeds, workspace_root};

/// The image docker-compose.yml runs.
pub const IMAGE: &str = "dovesnap:local";
/// The Dockerfile's default base.
const UPSTREAM_BASE: &str = "debian:bookworm-slim";
/// The same release made by debootstrap where the registry cannot be reached.
const LOCAL_BASE: &str = "dovesnap-base:bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Made from [`LOCAL_BASE`] and the host's toolchains where a build cannot download
/// Rust (see [`toolchain_image`]).
const LOCAL_TOOLCHAIN: &str = "dovesnap-toolchain:local";
/// The label of [`LOCAL_TOOLCHAIN`] that says what it was made from.
const TOOLCHAIN_LABEL: &str = "dovesnap.toolchain";

/// What the Dockerfile builds from: its `BASE` and `TOOLCHAIN_BASE` build arguments,
/// which docker-compose.yml takes from `DOVESNAP_BASE` and `DOVESNAP_TOOLCHAIN_BASE`.
pub struct Bases {
    base: &'static str,
    toolchain: String,
}

impl Bases {
    /// `debian:bookworm-slim` for both where dockerd has it or can pull it (the
    /// toolchain stage downloads Rust); else [`LOCAL_BASE`] and [`LOCAL_TOOLCHAIN`],
    /// made here (or kept, if still current).
    pub fn find() -> Result<Self> {
        let base = base_image()?;
        let toolchain = if base == LOCAL_BASE {
            toolchain_image(base)?
        } else {
            base.to_string()
        };
        Ok(Bases { base, toolchain })
    }

    /// (build argument, docker-compose.yml's variable, value).
    pub fn args(&self) -> [(&'static str, &'static str, &str); 2] {
        [
            ("BASE", "DOVESNAP_BASE", self.base),
            ("TOOLCHAIN_BASE", "DOVESNAP_TOOLCHAIN_BASE", &self.toolchain),
        ]
    }
}

/// `docker build` of the repository root from the bases [`Bases::find`] finds or
/// makes: the same build as `docker-compose up -d --build`.
pub fn build() -> Result<()> {
    let bases = Bases::find()?;
    let mut cmd = Command::new("docker");
    cmd.arg("build");
    let mut vars = Vec::new();
    for (arg, var, value) in bases.args() {
        cmd.arg("--build-arg").arg(format!("{arg}={value}"));
        vars.push(format!("{var}={value}"));
    }
    run(cmd.args(["-t", IMAGE]).arg(workspace_root()))?;
    eprintln!(
        "xtask: built {IMAGE}; `{} docker-compose up -d --build` runs it",
        vars.join(" ")
    );
    Ok(())
}

/// What the host's Rust toolchains and crate cache would give the build here: where a
/// container cannot download them (no registry, or TLS that only the host trusts),
/// [`LOCAL_TOOLCHAIN`] is `base` plus the toolchains `cargo xtask setup` made (stable,
/// nightly with rust-src, bpf-linker and its LLVM prefix, at the same paths) and the
/// crate cache, with CARGO_NET_OFFLINE: the Dockerfile's toolchain stage finds Rust
/// installed, and its build stage compiles from the cache. Made again when the
/// toolchains or Cargo.lock changed (the label holds what it was made from).
fn toolchain_image(base: &str) -> Result<String> {
    let fingerprint = toolchain_fingerprint()?;
    let made_from = Command::new("docker")
        .args(["image", "inspect", "-f"])
        .arg(format!(
            "{{{{index .Config.Labels \"{TOOLCHAIN_LABEL}\"}}}}"
        ))
        .arg(LOCAL_TOOLCHAIN)
        .output()
        .context("cannot run docker")?;
    if made_from.status.success()
        && String::from_utf8_lossy(&made_from.stdout).trim() == fingerprint
    {
        return Ok(LOCAL_TOOLCHAIN.into());
    }
    eprintln!("xtask: making {LOCAL_TOOLCHAIN} from {base} and this host's Rust toolchains");
    let container = "dovesnap-toolchain-make";
    let _ = succeeds(Command::new("docker").args(["rm", "-f", container]));
    run(Command::new("docker").args(["create", "--name", container, base, "true"]))?;
    // What the build uses, at the paths it has on the host; no documentation.
    let copied = run(Command::new("sh").arg("-c").arg(format!(
        "tar -C / -c --exclude='root/.rustup/toolchains/*/share/doc' \
           root/.rustup/settings.toml root/.rustup/toolchains \
           root/.cargo/bin/rustup root/.cargo/bin/cargo root/.cargo/bin/rustc \
           root/.cargo/bin/bpf-linker opt/dovesnap/llvm \
           root/.cargo/registry/index root/.cargo/registry/cache \
         | docker cp - {container}:/"
    )))
    .and_then(|()| {
        run(Command::new("docker").args([
            "commit",
            "-c",
            "ENV CARGO_NET_OFFLINE=true",
            "-c",
            &format!("LABEL {TOOLCHAIN_LABEL}={fingerprint}"),
            container,
            LOCAL_TOOLCHAIN,
        ]))
    });
    let _ = succeeds(Command::new("docker").args(["rm", "-f", container]));
    copied.context("cannot make the toolchain image (does /root/.cargo hold `cargo xtask setup`'s toolchains?)")?;
    Ok(LOCAL_TOOLCHAIN.into())
}

/// The versions of the host's toolchains and a digest of Cargo.lock (the crates the
/// cache must hold), as one label value.
fn toolchain_fingerprint() -> Result<String> {
    let mut text = String::new();
    for args in [
        &["rustc", "-V"][..],
        &["rustc", "+nightly", "-V"],
        &["bpf-linker", "--version"],
    ] {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .with_context(|| format!("cannot run {}", args.join(" ")))?;
        text.push_str(String::from_utf8_lossy(&out.stdout).trim());
        text.push(';');
    }
    let lock = Command::new("sha256sum")
        .arg(workspace_root().join("Cargo.lock"))
        .output()
        .context("cannot run sha256sum")?;
    let lock = String::from_utf8_lossy(&lock.stdout);
    text.push_str(lock.split_whitespace().next().unwrap_or(""));
    Ok(text.replace(' ', "_"))
}

fn image_exists(name: &str) -> bool {
    succeeds(Command::new("docker").args(["image", "inspect", name]))
}

/// `debian:bookworm-slim` if dockerd has it or can pull it, else [`LOCAL_BASE`] (made
/// once).
fn base_image() -> Result<&'static str> {
    for base in [UPSTREAM_BASE, LOCAL_BASE] {
        if image_exists(base) {
            return Ok(base);
        }
    }
    if succeeds(Command::new("timeout").args(["120", "docker", "pull", UPSTREAM_BASE])) {
        return Ok(UPSTREAM_BASE);
    }
    eprintln!("xtask: cannot pull {UPSTREAM_BASE}: making {LOCAL_BASE} with debootstrap");
    let rootfs = workspace_root().join("target/image-rootfs");
    remove_rootfs(&rootfs)?;
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&rootfs)
        .arg(MIRROR))?;
    // What debian:bookworm-slim leaves out too: downloaded packages and indexes.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        for entry in std::fs::read_dir(rootfs.join(dir))? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::remove_file(&path)?;
            }
        }
    }
    run(Command::new("sh").arg("-c").arg(format!(
        "tar -C '{}' -c . | docker import -c 'CMD [\"bash\"]' - {LOCAL_BASE}",
        rootfs.display()
    )))?;
    remove_rootfs(&rootfs)?;
    Ok(LOCAL_BASE)
}

fn remove_rootfs(rootfs: &Path) -> Result<()> {
    if rootfs.exists() {
        std::fs::remove_dir_all(rootfs)
            .with_context(|| format!("cannot remove {}", rootfs.display()))?;
    }
    Ok(())
}
