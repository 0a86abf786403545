//! The control plane: how long `docker run` takes on an ovs network against Docker's
//! own bridge driver, and how long attaching a running container to a network
//! (endpoint create + join) and detaching it take. Needs dockerd (which `cargo xtask
//! bench` starts) and runs its own `dovesnap daemon` (the release binary beside this
//! one). Runs in the host's namespace, before the data-path part.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use dovesnap_bench::report::Record;

const IMAGE: &str = "dovesnap-busybox:bench";
const PLUGIN_SOCKET: &str = "/run/docker/plugins/ovs.sock";

fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("cannot run docker")?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn timed(args: &[&str]) -> Result<f64> {
    let t = Instant::now();
    docker(args)?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// A busybox image made from Debian's static busybox (no registry here).
fn ensure_image() -> Result<()> {
    if docker(&["image", "inspect", IMAGE]).is_ok() {
        return Ok(());
    }
    let root = std::env::temp_dir().join(format!("dovesnap-bench-rootfs-{}", std::process::id()));
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("busybox-static is needed (cargo xtask setup installs it)")?;
    let script = format!(
        "cd {} && for a in $(./bin/busybox --list); do [ \"$a\" = busybox ] || ln -sf busybox bin/$a; done && tar -c . | docker import -c 'ENV PATH=/bin' - {IMAGE}",
        root.display()
    );
    let ok = Command::new("sh").args(["-c", &script]).status()?.success();
    let _ = std::fs::remove_dir_all(&root);
    if !ok {
        bail!("docker import of the bench image failed");
    }
    Ok(())
}

struct Plugin(Child);

impl Plugin {
    fn start() -> Result<Plugin> {
        let bin: PathBuf = std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("dovesnap");
        let child = Command::new(&bin)
            .args(["daemon", "--socket", PLUGIN_SOCKET])
            .args(["--control-socket", "/run/dovesnap/bench.sock"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (cargo xtask bench builds it)",
                    bin.display()
                )
            })?;
        let t = Instant::now();
        while !std::path::Path::new(PLUGIN_SOCKET).exists() {
            if t.elapsed() > Duration::from_secs(10) {
                bail!("dovesnap daemon did not come up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Plugin(child))
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Removes what it made, also on error.
struct Cleanup {
    networks: Vec<String>,
    containers: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
        let _ = Command::new("ip")
            .args(["link", "del", "dsbup0"])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs the control-plane workloads; `runs` samples each.
pub fn run(runs: usize) -> Result<Vec<Record>> {
    docker(&["version", "--format", "{{.Server.Version}}"])
        .context("dockerd is not reachable (cargo xtask bench starts it)")?;
    ensure_image()?;
    let _plugin = Plugin::start()?;
    let mut clean = Cleanup {
        networks: Vec::new(),
        containers: Vec::new(),
    };
    // A veth uplink for the nat-fast network, so no real NIC gets an XDP program.
    let _ = Command::new("ip")
        .args(["link", "del", "dsbup0"])
        .stderr(Stdio::null())
        .status();
    for args in [
        vec![
            "link", "add", "dsbup0", "type", "veth", "peer", "name", "dsbup1",
        ],
        vec!["addr", "add", "10.241.9.1/24", "dev", "dsbup0"],
        vec!["link", "set", "dsbup0", "up"],
        vec!["link", "set", "dsbup1", "up"],
    ] {
        if !Command::new("ip").args(&args).status()?.success() {
            bail!("ip {} failed", args.join(" "));
        }
    }
    let nets: [(&str, Vec<&str>); 4] = [
        (
            "docker-bridge",
            vec!["-d", "bridge", "--subnet", "10.241.1.0/24"],
        ),
        ("ovs-flat", vec!["-d", "ovs", "--subnet", "10.241.2.0/24"]),
        (
            "ovs-nat",
            vec!["-d", "ovs", "-o", "mode=nat", "--subnet", "10.241.3.0/24"],
        ),
        (
            "ovs-nat-fast",
            vec![
                "-d",
                "ovs",
                "-o",
                "mode=nat-fast",
                "-o",
                "ovs.nat.uplink=dsbup0",
                "--subnet",
                "10.241.4.0/24",
            ],
        ),
    ];
    for (name, args) in &nets {
        let net = format!("dsb-{name}");
        let _ = docker(&["network", "rm", &net]);
        let mut full = vec!["network", "create"];
        full.extend(args.iter().copied());
        full.push(&net);
        docker(&full)?;
        clean.networks.push(net);
    }
    // A container to connect and disconnect, living on a network of its own.
    let home = "dsb-home";
    let _ = docker(&["network", "rm", home]);
    docker(&[
        "network",
        "create",
        "-d",
        "bridge",
        "--subnet",
        "10.241.8.0/24",
        home,
    ])?;
    clean.networks.push(home.into());
    let idle = "dsb-idle";
    let _ = docker(&["rm", "-f", idle]);
    docker(&[
        "run",
        "-d",
        "--name",
        idle,
        "--network",
        home,
        IMAGE,
        "sleep",
        "3600",
    ])?;
    clean.containers.push(idle.into());

    let mut records = Vec::new();
    for (name, _) in &nets {
        let net = format!("dsb-{name}");
        let mut run_ms = Vec::new();
        let mut join_ms = Vec::new();
        let mut leave_ms = Vec::new();
        for _ in 0..runs {
            run_ms.push(timed(&["run", "--rm", "--network", &net, IMAGE, "true"])?);
            join_ms.push(timed(&["network", "connect", &net, idle])?);
            leave_ms.push(timed(&["network", "disconnect", &net, idle])?);
        }
        records.push(
            Record::from_runs("docker-run", name, "ms", &run_ms)
                .with_note("docker run --rm --network NET busybox true, end to end"),
        );
        records.push(
            Record::from_runs("endpoint-join", name, "ms", &join_ms)
                .with_note("docker network connect: create endpoint + join, as Docker sees it"),
        );
        records.push(
            Record::from_runs("endpoint-leave", name, "ms", &leave_ms)
                .with_note("docker network disconnect: leave + delete endpoint"),
        );
    }
    // Ratios against Docker's own bridge driver.
    let base: Vec<(String, f64)> = records
        .iter()
        .filter(|r| r.path == "docker-bridge")
        .map(|r| (r.workload.clone(), r.value))
        .collect();
    for r in records.iter_mut().filter(|r| r.path != "docker-bridge") {
        if let Some((_, b)) = base.iter().find(|(w, _)| *w == r.workload) {
            let n = format!("{:.2}x Docker's bridge driver", r.value / b);
            r.note = Some(match r.note.take() {
                Some(x) => format!("{x}; {n}"),
                None => n,
            });
        }
    }
    drop(clean);
    Ok(records)
}
