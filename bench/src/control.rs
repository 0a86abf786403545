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
use dovesnap_testbed::cmd::sh;

const IMAGE: &str = "dovesnap-busybox:bench";
const PLUGIN_SOCKET: &str = "/run/docker/plugins/ovs.sock";

fn docker(args: &[&str]) -> Result<String> {
    Ok(sh("docker", args)?.trim().to_string())
}

/// Removes the nat-fast network's veth uplink and its far namespace, if there.
fn remove_uplink() {
    let _ = sh("ip", &["link", "del", "dsbup0"]);
    let _ = sh("ip", &["netns", "del", DFAR_NS]);
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

impl Cleanup {
    /// Creates network `name` with `args` (after removing a stale one), to be removed.
    fn network(&mut self, name: &str, args: &[&str]) -> Result<()> {
        let _ = docker(&["network", "rm", name]);
        let mut full = vec!["network", "create"];
        full.extend_from_slice(args);
        full.push(name);
        docker(&full)?;
        self.networks.push(name.into());
        Ok(())
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
        remove_uplink();
    }
}

/// The far side of the control-plane part's uplink, for the data-path workloads
/// through real containers: a namespace holding `dsbup1` (10.241.9.2) and the servers.
const DFAR_NS: &str = "dsb-dfar";
const DFAR_IP: &str = "10.241.9.2";

/// Runs a bench tool inside the network namespace of a container (its init's pid) and
/// parses the JSON line it prints.
fn tool_in_container(pid: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("nsenter")
        .args(["-t", pid, "-n"])
        .arg(crate::harness::self_exe())
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!(
            "bench tool {args:?} in container {pid} failed: {}",
            out.status
        );
    }
    crate::harness::tool_result(&out.stdout)
}

/// TCP stream, request/response and connection rate from a real container on each
/// network to the far namespace, through that network's NAT.
fn container_data_path(nets: &[&str], runs: usize, seconds: f64) -> Result<Vec<Record>> {
    let secs = format!("{seconds}");
    let mut servers = Vec::new();
    for (tool, port) in [
        ("stream-server", "5301"),
        ("rr-server", "5302"),
        ("crr-server", "5303"),
    ] {
        servers.push(KillOnDrop(
            Command::new("ip")
                .args(["netns", "exec", DFAR_NS])
                .arg(crate::harness::self_exe())
                .args([tool, "--port", port])
                .stdout(Stdio::null())
                .spawn()?,
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut records = Vec::new();
    for name in nets {
        let net = format!("dsb-{name}");
        let c = format!("dsb-dp-{name}");
        let _ = docker(&["rm", "-f", &c]);
        docker(&[
            "run",
            "-d",
            "--name",
            &c,
            "--network",
            &net,
            IMAGE,
            "sleep",
            "3600",
        ])?;
        let _guard = RemoveContainer(c.clone());
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &c])?;
        let (mut gbps, mut p50, mut p99, mut crr) = (vec![], vec![], vec![], vec![]);
        for _ in 0..runs {
            let v = tool_in_container(
                &pid,
                &[
                    "stream-client",
                    "--dst",
                    DFAR_IP,
                    "--port",
                    "5301",
                    "--seconds",
                    &secs,
                ],
            )?;
            gbps.push(v["gbps"].as_f64().unwrap_or(0.0));
            let v = tool_in_container(
                &pid,
                &[
                    "rr-client",
                    "--dst",
                    DFAR_IP,
                    "--port",
                    "5302",
                    "--seconds",
                    &secs,
                ],
            )?;
            p50.push(v["p50_us"].as_f64().unwrap_or(f64::NAN));
            p99.push(v["p99_us"].as_f64().unwrap_or(f64::NAN));
            let v = tool_in_container(
                &pid,
                &[
                    "crr-client",
                    "--dst",
                    DFAR_IP,
                    "--port",
                    "5303",
                    "--seconds",
                    &secs,
                ],
            )?;
            crr.push(v["per_second"].as_f64().unwrap_or(0.0));
        }
        let note = "from a docker container to a far namespace behind a veth uplink";
        records.push(
            Record::from_runs("container-tcp-1-stream", name, "Gbit/s", &gbps).with_note(note),
        );
        records.push(Record::from_runs("container-tcp-rr-p50", name, "us", &p50).with_note(note));
        records.push(Record::from_runs("container-tcp-rr-p99", name, "us", &p99).with_note(note));
        records.push(
            Record::from_runs("container-tcp-crr", name, "connections/s", &crr).with_note(note),
        );
    }
    Ok(records)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct RemoveContainer(String);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// Runs the control-plane workloads; `runs` samples each.
pub fn run(runs: usize, seconds: f64) -> Result<Vec<Record>> {
    docker(&["version", "--format", "{{.Server.Version}}"])
        .context("dockerd is not reachable (cargo xtask bench starts it)")?;
    ensure_image()?;
    let _plugin = Plugin::start()?;
    let mut clean = Cleanup {
        networks: Vec::new(),
        containers: Vec::new(),
    };
    // A veth uplink for the nat-fast network, so no real NIC gets an XDP program.
    remove_uplink();
    for args in [
        vec![
            "link", "add", "dsbup0", "type", "veth", "peer", "name", "dsbup1",
        ],
        vec!["addr", "add", "10.241.9.1/24", "dev", "dsbup0"],
        vec!["link", "set", "dsbup0", "up"],
        vec!["netns", "add", DFAR_NS],
        vec!["link", "set", "dsbup1", "netns", DFAR_NS],
        vec![
            "netns",
            "exec",
            DFAR_NS,
            "ip",
            "addr",
            "add",
            "10.241.9.2/24",
            "dev",
            "dsbup1",
        ],
        vec![
            "netns", "exec", DFAR_NS, "ip", "link", "set", "dsbup1", "up",
        ],
        vec!["netns", "exec", DFAR_NS, "ip", "link", "set", "lo", "up"],
        // The far end stands in for a NIC: it takes XDP-redirected frames (GRO gives a
        // veth the NAPI queues that needs) and sends complete checksums.
        vec![
            "netns", "exec", DFAR_NS, "ethtool", "-K", "dsbup1", "gro", "on", "tx", "off",
        ],
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
        clean.network(&format!("dsb-{name}"), args)?;
    }
    // A container to connect and disconnect, living on a network of its own.
    let home = "dsb-home";
    clean.network(home, &["-d", "bridge", "--subnet", "10.241.8.0/24"])?;
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
    records.extend(container_data_path(
        &["docker-bridge", "ovs-nat", "ovs-nat-fast"],
        runs.min(5),
        seconds,
    )?);
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
