//! `dovesnap-bench`: the benchmark binary behind `cargo xtask bench`.
//!
//! `dovesnap-bench run [--quick]` measures containers on each network through dockerd
//! (Docker's bridge the reference), then builds the namespaces and measures every path
//! and workload, and writes `target/bench/report.json`, `chart.svg` and
//! `chart-containers.svg`; the other subcommands are the load tools it runs inside the
//! namespaces and containers.

mod chart;
mod control;
mod harness;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use dovesnap_bench::micro::{self, MicroOptions};
use dovesnap_bench::report::Record;
use dovesnap_bench::traffic;

/// Counts allocations, so the translator microbenchmark can show it makes none.
#[global_allocator]
static ALLOC: dovesnap_testbed::alloc::CountingAlloc = dovesnap_testbed::alloc::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "dovesnap-bench",
    about = "dovesnap's networks against Docker's bridge and the kernel path"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark (as root): namespaces, every path, every workload.
    Run {
        /// Fewer and shorter runs (about six minutes); for CI's smoke test.
        #[arg(long)]
        quick: bool,
        /// Where report.json and chart.svg go.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Only these namespace paths (comma-separated), e.g. kernel-nat,nat-fast.
        #[arg(long, value_delimiter = ',')]
        paths: Vec<String>,
        /// Skip the in-process translator microbenchmark.
        #[arg(long)]
        skip_micro: bool,
        /// Skip the Docker control-plane part.
        #[arg(long)]
        skip_docker: bool,
    },
    /// The load tools, run inside the namespaces.
    #[command(flatten)]
    Tool(traffic::Tool),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            quick,
            out,
            paths,
            skip_micro,
            skip_docker,
        } => run(quick, out, paths, skip_micro, skip_docker),
        Cmd::Tool(tool) => tool.run(),
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "kernel": kernel.trim(),
    })
}

fn run(
    quick: bool,
    out: PathBuf,
    only: Vec<String>,
    skip_micro: bool,
    skip_docker: bool,
) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the benchmark builds network namespaces and loads XDP: run it as root");
    }
    let started = std::time::Instant::now();
    let plan = harness::Plan::new(quick);
    let paths: Vec<&harness::NsPath> = harness::PATHS
        .iter()
        .filter(|p| only.is_empty() || only.iter().any(|o| o == p.name))
        .collect();
    let mut records: Vec<Record> = Vec::new();
    let mut container_counters = None;

    if !skip_micro {
        eprintln!("bench: translator microbenchmark");
        records.extend(micro::run(&MicroOptions { quick }));
    }

    if !skip_docker {
        eprintln!("bench: control plane through dockerd");
        // A `docker run` here varies by +-30% from one to the next: enough rounds
        // that the medians' ratios are worth reading.
        match control::run(if quick { 5 } else { 20 }, plan) {
            Ok(section) => {
                records.extend(section.records);
                container_counters = Some(section.counters);
            }
            Err(e) => eprintln!("bench: control-plane part skipped: {e:#}"),
        }
    }

    eprintln!(
        "bench: building namespaces {}, {}, {}",
        harness::NS_C,
        harness::NS_H,
        harness::NS_F
    );
    let topo = harness::Topology::build()?;
    topo.enter_host()?;
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let _guard = rt.enter();

    eprintln!("bench: generator alone (XDP drop on its own veth peer)");
    let gen = harness::generator_alone(plan)?;
    let mut alone = Record::from_runs("udp-64B-pps", "generator-alone", "packets/s", &gen)
        .with_note("the generator into an XDP drop on its veth peer: the most any path can get");
    alone.add_note(&harness::generator_alone_offloads());
    records.push(alone);
    let mut fast_counters = None;
    for path in &paths {
        eprintln!("bench: path {}", path.name);
        let state = harness::PathState::install(path)
            .with_context(|| format!("cannot set up path {}", path.name))?;
        let offloads = harness::PathState::offload_note(path);
        eprintln!("    {offloads}");
        let result = harness::measure_path(plan, &harness::Ends::namespaces(), path.udp);
        if let Some(s) = state.fast_status() {
            fast_counters = Some(s);
        }
        state.uninstall();
        let mut path_records = harness::records("", path.name, &result?);
        for r in &mut path_records {
            r.add_note(&offloads);
        }
        records.extend(path_records);
    }
    harness::add_ratios(&mut records);
    drop(_guard);
    drop(rt);
    drop(topo);

    std::fs::create_dir_all(&out)?;
    let report = json!({
        "machine": machine(),
        "settings": {
            "quick": quick,
            "runs": plan.runs,
            "seconds_per_run": plan.seconds,
            "topology": "netns container -- veth -- netns host (routing/NAT) -- veth -- netns far",
            "xdp": "routing and kernel-nat: no XDP program; +xdp: dovesnap's XDP program attached to h0 and u0 passing everything (turns TSO off on their peers); nat-fast: the steering program on h0 and u0",
            "offloads": "per path and per container row, read back with ethtool -k into each record's note: namespace container end tx-csum off + GRO on as dovesnap sets it for the xdp engine (kernel defaults, tx-csum and TSO on, in the -tso paths); container eth0 as Docker or dovesnap made it (tx-csum and TSO on on Docker's bridge and on the tc engine); far end kernel defaults except where the xdp engine needs GRO on + tx-csum off (nat-fast, ovs-nat-fast: XDP redirect target, complete checksums as from a NIC)",
            "container_section": "container-* records: real containers through dockerd on each network, to a far namespace behind a veth uplink; docker-bridge is the reference row (ratio_to_bridge, 1.0 on itself); ovs-nat-fast is nat-fast's xdp engine (-o ovs.nat.engine=xdp), ovs-nat-fast-tc its tc engine (-o ovs.nat.engine=tc, the default)",
            "container_counters": "per nat-fast container row: the data-plane counters (dovesnap status) that grew during its data-path runs, i.e. which path carried the traffic",
            "udp_generator": "sendmmsg, one CPU (pinned to CPU 0), 256 flows, 64-byte frames",
            "sink": "XDP drop program counting on the far veth",
            "af_xdp": "copy mode (veth), one UMEM, one translator thread",
        },
        "elapsed_seconds": started.elapsed().as_secs_f64(),
        "nat_fast_counters": fast_counters,
        "container_counters": container_counters,
        "results": records,
    });
    let json_path = out.join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    let names: Vec<&str> = paths.iter().map(|p| p.name).collect();
    let svg = chart::svg(
        &records,
        &names,
        "kernel-nat",
        "",
        "dovesnap nat-fast vs the kernel path (same run)",
    );
    let svg_path = out.join("chart.svg");
    std::fs::write(&svg_path, svg)?;
    let svg = chart::svg(
        &records,
        &control::data_path_networks(),
        control::REFERENCE,
        "container-",
        "docker containers: dovesnap networks vs Docker's bridge (same run)",
    );
    std::fs::write(out.join("chart-containers.svg"), svg)?;
    print!("{}", table(&records));
    eprintln!(
        "bench: wrote {}, {} and chart-containers.svg in {:.0} s",
        json_path.display(),
        svg_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The stdout table: one line per record.
fn table(records: &[Record]) -> String {
    let mut s = format!(
        "{:<38} {:<20} {:>12} {:<15} {:>12} {:>12} {:>8}\n",
        "WORKLOAD", "PATH", "MEDIAN", "UNIT", "MIN", "MAX", "RATIO"
    );
    for r in records {
        s.push_str(&format!(
            "{:<38} {:<20} {:>12} {:<15} {:>12} {:>12} {:>8}\n",
            r.workload,
            r.path,
            fmt(r.median),
            r.unit,
            fmt(r.min),
            fmt(r.max),
            // Namespace section: to kernel-nat; container section: to Docker's bridge.
            r.ratio_to_kernel
                .map(|x| format!("{x:.2}xK"))
                .or(r.ratio_to_bridge.map(|x| format!("{x:.2}xB")))
                .unwrap_or_else(|| "-".into())
        ));
    }
    s
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}
