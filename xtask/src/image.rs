//! `cargo xtask image`: builds `dovesnap:local`, the image `packaging/docker-compose.yml`
//! runs, from `packaging/Dockerfile` and the release binary.
//!
//! The Dockerfile starts from `debian:bookworm-slim`. Where no registry answers (our
//! CI machines), the same Debian release is made locally with `debootstrap` (minbase
//! variant, from the Debian mirror apt uses) and imported as [`LOCAL_BASE`], which the
//! build then takes as its `BASE`; everything after `FROM` is the Dockerfile as users
//! run it.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{build_daemon, run, succeeds, workspace_root};

/// The image docker-compose.yml runs.
pub const IMAGE: &str = "dovesnap:local";
/// The Dockerfile's default base.
const UPSTREAM_BASE: &str = "debian:bookworm-slim";
/// The same release made by debootstrap where the registry cannot be reached.
const LOCAL_BASE: &str = "dovesnap-base:bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// Release build, a build context in `target/image` (the Dockerfile, its
/// `.dockerignore`, `ovs-run` and the binary without debug info), then `docker build`.
pub fn build() -> Result<()> {
    build_daemon()?;
    let root = workspace_root();
    let ctx = root.join("target/image");
    if ctx.exists() {
        std::fs::remove_dir_all(&ctx).context("cannot empty target/image")?;
    }
    std::fs::create_dir_all(&ctx).context("cannot create target/image")?;
    for file in ["Dockerfile", ".dockerignore", "ovs-run"] {
        std::fs::copy(root.join("packaging").join(file), ctx.join(file))
            .with_context(|| format!("cannot copy packaging/{file}"))?;
    }
    // The release profile keeps debug info (for perf); the image does not need it.
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(ctx.join("dovesnap"))
        .arg(root.join("target/release/dovesnap")))?;
    let base = base_image()?;
    run(Command::new("docker")
        .args(["build", "--build-arg"])
        .arg(format!("BASE={base}"))
        .args(["-t", IMAGE])
        .arg(&ctx))?;
    eprintln!("xtask: built {IMAGE} (from {base})");
    Ok(())
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
