//! The control plane: how long `docker run` takes on an ovs network against Docker's
//! own bridge driver, and how long attaching a running container to a network
//! (endpoint create + join) and detaching it take. Needs dockerd (which `cargo xtask
//! bench` starts) and runs its own `dovesnap daemon` (the release binary beside this
//! one). Runs in the host's namespace, before the data-path part.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use dovesnap_bench::report::{ratios_to, Record};
use dovesnap_testbed::cmd::sh;

use crate::harness::{offload_note, set_offloads, Ends, Place, Plan, KERNEL_DEFAULTS, NIC_LIKE};

const IMAGE: &str = "dovesnap-busybox:bench";
const PLUGIN_SOCKET: &str = "/run/docker/plugins/ovs.sock";
const CONTROL_SOCKET: &str = "/run/dovesnap/bench.sock";

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
            .args(["--control-socket", CONTROL_SOCKET])
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
const DFAR_IF: &str = "dsbup1";
const DFAR_IP: Ipv4Addr = Ipv4Addr::new(10, 241, 9, 2);

/// One network of the container section: a row of the report. A new row is one entry
/// in [`NETWORKS`].
struct Network {
    /// The path name in the report; the docker network is `dsb-{name}`.
    name: &'static str,
    /// `docker network create` arguments (before the name), space-separated.
    create: &'static str,
    /// `ethtool -K dsbup1 ...` (the far end) while this network's data path is
    /// measured; `None`: no data-path workloads (the network reaches nothing outside).
    far_end: Option<&'static [&'static str]>,
    /// The data-plane counters (`dovesnap status`) whose increase over this row's
    /// data-path runs its records' note states, to show which path carried the
    /// traffic; a name ending in `*` is the sum of every counter it prefixes.
    counters: &'static [&'static str],
}

/// The reference row: Docker's own bridge driver.
pub const REFERENCE: &str = "docker-bridge";

/// The rows of the container section's data-path workloads, in report order.
pub fn data_path_networks() -> Vec<&'static str> {
    NETWORKS
        .iter()
        .filter(|n| n.far_end.is_some())
        .map(|n| n.name)
        .collect()
}

const NETWORKS: &[Network] = &[
    Network {
        name: REFERENCE,
        create: "-d bridge --subnet 10.241.1.0/24",
        far_end: Some(KERNEL_DEFAULTS),
        counters: &[],
    },
    Network {
        name: "ovs-flat",
        create: "-d ovs --subnet 10.241.2.0/24",
        far_end: None,
        counters: &[],
    },
    Network {
        name: "ovs-nat",
        create: "-d ovs -o mode=nat --subnet 10.241.3.0/24",
        far_end: Some(KERNEL_DEFAULTS),
        counters: &[],
    },
    Network {
        name: "ovs-nat-fast",
        create: "-d ovs -o mode=nat-fast -o ovs.nat.engine=xdp -o ovs.nat.uplink=dsbup0 --subnet 10.241.4.0/24",
        // The far end stands in for a NIC: it takes XDP-redirected frames (GRO gives a
        // veth the NAPI queues that needs) and sends complete checksums.
        far_end: Some(NIC_LIKE),
        // Frames steered to the AF_XDP translator, and rewritten in XDP.
        counters: &["redirect", "offload-outbound", "offload-inbound"],
    },
    Network {
        name: "ovs-nat-fast-tc",
        // nat-fast's default engine, named so that the row says what it measures.
        create: "-d ovs -o mode=nat-fast -o ovs.nat.engine=tc -o ovs.nat.uplink=dsbup0 --subnet 10.241.5.0/24",
        // tc/tcx programs keep GSO and partial checksums: no XDP, so kernel defaults.
        far_end: Some(KERNEL_DEFAULTS),
        // Frames the tc programs carried (and of them GSO super-packets), sessions they
        // created, and frames they left to the kernel's path.
        counters: &[
            "tc-out",
            "tc-in",
            "tc-gso-frames",
            "tc-created",
            "tc-decline-*",
        ],
    },
];

/// The plugin daemon's data-plane counters now (`dovesnap status`), by name.
fn counters_now() -> Result<BTreeMap<String, u64>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(dovesnap::daemon::control::fetch_status(Path::new(
        CONTROL_SOCKET,
    )))?;
    let fast = status
        .fast_path
        .context("the daemon runs no nat-fast data plane")?;
    Ok(fast.xdp_counters.into_iter().collect())
}

/// How much each counter grew from `before` to `after`; counters that did not grow are
/// left out.
fn counter_growth(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(name, n)| {
            let d = n.saturating_sub(before.get(name).copied().unwrap_or(0));
            (name.clone(), d)
        })
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// `counters over this row's runs: NAME N, ...` for `names` (a trailing `*` sums the
/// counters it prefixes), zeros included: a zero says what did not carry the traffic.
fn counter_note(names: &[&str], growth: &BTreeMap<String, u64>) -> String {
    let shown: Vec<String> = names
        .iter()
        .map(|name| {
            let n: u64 = match name.strip_suffix('*') {
                Some(prefix) => growth
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(_, v)| v)
                    .sum(),
                None => growth.get(*name).copied().unwrap_or(0),
            };
            format!("{name} {n}")
        })
        .collect();
    format!(
        "data-plane counters over this row's runs: {}",
        shown.join(", ")
    )
}

/// The container section's results: its records, and for each row with counters the
/// data-plane counters that grew during its data-path runs (`container_counters` in
/// the report).
pub struct Section {
    pub records: Vec<Record>,
    pub counters: BTreeMap<&'static str, BTreeMap<String, u64>>,
}

/// Every data-path workload from a real container on each network (with a data path) to
/// the far namespace, through that network's NAT; records named `container-*`, each
/// noting the offloads in force on the container's eth0 and the far end, and the
/// counters of rows that name some.
fn container_data_path(plan: Plan, section: &mut Section) -> Result<()> {
    let far = Place::netns(DFAR_NS);
    for net in NETWORKS {
        let Some(far_end) = net.far_end else {
            continue;
        };
        eprintln!("bench: container data path {}", net.name);
        let c = format!("dsb-dp-{}", net.name);
        let _ = docker(&["rm", "-f", &c]);
        docker(&[
            "run",
            "-d",
            "--name",
            &c,
            "--network",
            &format!("dsb-{}", net.name),
            IMAGE,
            "sleep",
            "3600",
        ])?;
        let _guard = RemoveContainer(c.clone());
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &c])?;
        let sender = Place::Container { pid };
        set_offloads(&far, DFAR_IF, far_end)?;
        let offloads = format!(
            "from a docker container to a far namespace behind a veth uplink; {}",
            offload_note(&sender, "eth0", &far, DFAR_IF, far_end)
        );
        eprintln!("    {offloads}");
        let ends = Ends {
            sender,
            far_ns: DFAR_NS,
            far_if: DFAR_IF,
            far_ip: DFAR_IP,
        };
        let before = (!net.counters.is_empty()).then(counters_now);
        let runs = crate::harness::measure_path(plan, &ends, true)?;
        let mut notes = vec![offloads];
        if let Some(before) = before {
            let grown = before.and_then(|b| Ok(counter_growth(&b, &counters_now()?)));
            match grown {
                Ok(grown) => {
                    let note = counter_note(net.counters, &grown);
                    eprintln!("    {note}");
                    notes.push(note);
                    section.counters.insert(net.name, grown);
                }
                Err(e) => notes.push(format!("data-plane counters unavailable: {e:#}")),
            }
        }
        for mut r in crate::harness::records("container-", net.name, &runs) {
            for n in &notes {
                r.add_note(n);
            }
            section.records.push(r);
        }
    }
    set_offloads(&far, DFAR_IF, KERNEL_DEFAULTS)?;
    Ok(())
}

struct RemoveContainer(String);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// Runs the control-plane workloads (`runs` samples each), then the data-path workloads
/// through containers (`plan`); every record of a workload the reference row measured
/// gets `ratio_to_bridge` (1.0 on the reference row).
pub fn run(runs: usize, plan: Plan) -> Result<Section> {
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
    ] {
        if !Command::new("ip").args(&args).status()?.success() {
            bail!("ip {} failed", args.join(" "));
        }
    }
    for net in NETWORKS {
        let args: Vec<&str> = net.create.split_whitespace().collect();
        clean.network(&format!("dsb-{}", net.name), &args)?;
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

    let mut section = Section {
        records: Vec::new(),
        counters: BTreeMap::new(),
    };
    let records = &mut section.records;
    // Round by round over the networks, not network by network: a machine whose speed
    // drifts during the section (other jobs, caches) then weighs on every row alike,
    // and the ratios compare like with like.
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; NETWORKS.len()];
    for _ in 0..runs {
        for (Network { name, .. }, [run_ms, join_ms, leave_ms]) in
            NETWORKS.iter().zip(samples.iter_mut())
        {
            let net = format!("dsb-{name}");
            run_ms.push(timed(&["run", "--rm", "--network", &net, IMAGE, "true"])?);
            join_ms.push(timed(&["network", "connect", &net, idle])?);
            leave_ms.push(timed(&["network", "disconnect", &net, idle])?);
        }
    }
    for (Network { name, .. }, [run_ms, join_ms, leave_ms]) in NETWORKS.iter().zip(samples) {
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
    container_data_path(
        Plan {
            runs: plan.runs.min(runs),
            ..plan
        },
        &mut section,
    )?;
    let ratios = ratios_to(&section.records, REFERENCE);
    for (r, ratio) in section.records.iter_mut().zip(ratios) {
        r.ratio_to_bridge = ratio;
    }
    drop(clean);
    Ok(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_row_leads_and_every_network_is_its_own() {
        assert_eq!(
            NETWORKS[0].name, REFERENCE,
            "Docker's bridge is the first row"
        );
        let rows = data_path_networks();
        assert_eq!(
            rows,
            [
                "docker-bridge",
                "ovs-nat",
                "ovs-nat-fast",
                "ovs-nat-fast-tc"
            ]
        );
        // Only the xdp engine tunes the far end; the reference and the tc engine run
        // kernel defaults.
        for net in NETWORKS {
            let tuned = net.far_end.is_some_and(|f| f != KERNEL_DEFAULTS);
            assert_eq!(tuned, net.name == "ovs-nat-fast", "{}", net.name);
        }
        let mut subnets: Vec<&str> = NETWORKS
            .iter()
            .filter_map(|n| n.create.split_once("--subnet ").map(|(_, s)| s))
            .collect();
        subnets.sort_unstable();
        subnets.dedup();
        assert_eq!(subnets.len(), NETWORKS.len(), "one subnet per network");
        // Both nat-fast engines are rows, each saying which path carried its traffic.
        for (row, engine) in [("ovs-nat-fast", "xdp"), ("ovs-nat-fast-tc", "tc")] {
            let net = NETWORKS.iter().find(|n| n.name == row).expect("row");
            assert!(net.create.contains("-o mode=nat-fast "), "{row}");
            let option = format!("-o ovs.nat.engine={engine} ");
            assert!(net.create.contains(&option), "{row}");
            assert!(!net.counters.is_empty(), "{row}");
        }
    }

    #[test]
    fn counter_notes_show_growth_and_sum_prefixes() {
        let map = |v: &[(&str, u64)]| -> BTreeMap<String, u64> {
            v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
        };
        let before = map(&[("tc-out", 5), ("tc-decline-slow", 10), ("redirect", 7)]);
        let after = map(&[
            ("tc-out", 5),
            ("tc-decline-slow", 25),
            ("tc-decline-no-session", 3),
            ("redirect", 7),
        ]);
        let grown = counter_growth(&before, &after);
        assert_eq!(
            grown,
            map(&[("tc-decline-slow", 15), ("tc-decline-no-session", 3)]),
            "unchanged counters are left out, new ones count from 0"
        );
        assert_eq!(
            counter_note(&["tc-out", "tc-decline-*"], &grown),
            "data-plane counters over this row's runs: tc-out 0, tc-decline-* 18"
        );
    }
}
