//! The data-path benchmark: one topology in network namespaces, the same workloads
//! through every path, several runs each.
//!
//! ```text
//!  dsb-c (container)            dsb-h (host: routing, NAT)             dsb-f (far)
//!  c0 10.240.1.2/24 ──veth── h0 10.240.1.1/24 · u0 10.240.2.1/24 ──veth── f0 10.240.2.2/24
//! ```
//!
//! The host is a namespace of its own, so the host's real firewall (Docker's FORWARD
//! DROP, say) plays no part and nothing of the bench leaks into it. The bench process
//! enters `dsb-h` before it starts any thread: the NAT, XDP and AF_XDP objects it makes
//! live there. Load generators and servers run in `dsb-c` and `dsb-f` as subcommands of
//! this binary (`ip netns exec`).
//!
//! Paths, all over the same interfaces:
//! - `routing`: plain forwarding, no NAT (the ceiling); `routing+xdp` with an XDP_PASS
//!   program on h0 and u0 (which turns TSO off on their peers);
//! - `kernel-nat`: this project's nat mode (nftables masquerade), `kernel-nat+xdp` the
//!   same with the XDP_PASS program attached;
//! - `nat-fast`: XDP steering + AF_XDP translator, established sessions offloaded to
//!   XDP (rewritten and redirected in the kernel; the kernel nat rules present, as in
//!   production, but unused by steered traffic); `nat-fast-no-offload`: every packet
//!   through the AF_XDP translator (`-o ovs.nat.offload=false`).
//!
//! Both veth pairs have two queues, and the container's transmit queue `i` is used by
//! CPU `i` (XPS), so one generator per CPU feeds one receive queue each (the
//! two-generator UDP round). The far end has GRO on (NAPI: it accepts XDP-redirected
//! frames, as a NIC would) and sends complete checksums, as the container does.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use dovesnap::fastpath::xdp::XdpProgram;
use dovesnap::fastpath::{EndpointSpec, FastPath, UplinkSpec};
use dovesnap::firewall::{Firewall, NatNetwork, NftFirewall};
use dovesnap::host::addr::Ipv4Net;
use dovesnap_bench::report::Record;
use dovesnap_testbed::cmd::{in_ns, in_ns_line, sh_line, veth_pair};

pub const NS_C: &str = "dsb-c";
pub const NS_H: &str = "dsb-h";
pub const NS_F: &str = "dsb-f";
const C_IP: Ipv4Addr = Ipv4Addr::new(10, 240, 1, 2);
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 240, 1, 1);
const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(10, 240, 2, 1);
const FAR_IP: Ipv4Addr = Ipv4Addr::new(10, 240, 2, 2);
const NET_ID: &str = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";

/// How long and how often.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub runs: usize,
    pub seconds: f64,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                runs: 3,
                seconds: 1.0,
            }
        } else {
            Plan {
                runs: 5,
                seconds: 4.0,
            }
        }
    }
}

/// The three namespaces; removed on drop.
pub struct Topology {
    _private: (),
}

impl Topology {
    /// Builds it (removing leftovers of an earlier run first).
    pub fn build() -> Result<Topology> {
        Topology::remove();
        for ns in [NS_C, NS_H, NS_F] {
            sh_line(&format!("ip netns add {ns}"))?;
            in_ns_line(ns, "ip link set lo up")?;
        }
        let t = Topology { _private: () };
        for (a, a_ns, b, b_ns) in [("c0", NS_C, "h0", NS_H), ("f0", NS_F, "u0", NS_H)] {
            sh_line(&veth_pair(a, Some(a_ns), b, Some(b_ns), 2))?;
        }
        in_ns(
            NS_C,
            &[
                "sh",
                "-c",
                "echo 1 > /sys/class/net/c0/queues/tx-0/xps_cpus && \
                 echo 2 > /sys/class/net/c0/queues/tx-1/xps_cpus",
            ],
        )?;
        for (ns, dev, ip) in [
            (NS_C, "c0", C_IP),
            (NS_H, "h0", GW_IP),
            (NS_H, "u0", UPLINK_IP),
            (NS_F, "f0", FAR_IP),
        ] {
            in_ns_line(ns, &format!("ip addr add {ip}/24 dev {dev}"))?;
            in_ns_line(ns, &format!("ip link set {dev} up"))?;
        }
        in_ns_line(NS_C, &format!("ip route add default via {GW_IP}"))?;
        in_ns_line(NS_F, &format!("ip route add 10.240.1.0/24 via {UPLINK_IP}"))?;
        in_ns_line(NS_H, "sysctl -qw net.ipv4.ip_forward=1")?;
        // As dovesnap does for containers' veth ends: complete checksums from the
        // container, so the translator never needs to finish a partial one.
        // As dovesnap does for containers with offload: GRO on (set while up) makes c0
        // a target of XDP redirects from h0.
        in_ns_line(NS_C, "ethtool -K c0 tx-checksum-ip-generic off gro on")?;
        in_ns_line(NS_F, "ethtool -K f0 gro on tx off")?;
        // Static neighbours: no ARP in the measured window.
        let mac = |ns: &str, dev: &str| -> Result<String> {
            let out = in_ns(ns, &["cat", &format!("/sys/class/net/{dev}/address")])?;
            Ok(out.trim().to_string())
        };
        for (ns, ip, (mac_ns, mac_dev), dev) in [
            (NS_C, GW_IP, (NS_H, "h0"), "c0"),
            (NS_F, UPLINK_IP, (NS_H, "u0"), "f0"),
            (NS_H, C_IP, (NS_C, "c0"), "h0"),
            (NS_H, FAR_IP, (NS_F, "f0"), "u0"),
        ] {
            let lladdr = mac(mac_ns, mac_dev)?;
            in_ns_line(
                ns,
                &format!("ip neigh replace {ip} lladdr {lladdr} dev {dev}"),
            )?;
        }
        Ok(t)
    }

    fn remove() {
        for ns in [NS_C, NS_H, NS_F] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Moves the calling thread (and every thread it starts later) into `dsb-h`.
    pub fn enter_host(&self) -> Result<()> {
        let f = File::open(format!("/run/netns/{NS_H}")).context("open the host netns")?;
        // SAFETY: setns on a namespace fd we own; it changes only this thread's
        // namespace, before any other thread of the bench exists.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns({NS_H}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Topology::remove();
    }
}

/// One path's state: what is installed in `dsb-h` while it is measured.
pub enum PathState {
    Routing,
    RoutingXdp(XdpProgram),
    KernelNat(NftFirewall),
    KernelNatXdp(NftFirewall, XdpProgram),
    NatFast(NftFirewall, Box<FastPath>),
}

fn nat_network(masquerade_ports: Option<(u16, u16)>) -> NatNetwork {
    NatNetwork {
        id: NET_ID.into(),
        bridge: "h0".into(),
        subnet: Ipv4Net::new(Ipv4Addr::new(10, 240, 1, 0), 24).expect("valid"),
        gateway: GW_IP,
        internal: false,
        routed: false,
        masquerade_ports,
    }
}

fn passive_xdp() -> Result<XdpProgram> {
    let mut x = XdpProgram::load()?;
    x.attach("h0")?;
    x.attach("u0")?;
    Ok(x)
}

// sysfs shows the namespace it was mounted in, not the one this thread entered:
// interface facts come from netlink (opened in `dsb-h`).
fn ifindex(name: &str) -> Result<u32> {
    let nl = dovesnap::host::netlink::Netlink::new()?;
    tokio::runtime::Handle::current()
        .block_on(nl.index(name))?
        .with_context(|| format!("no interface {name} in {NS_H}"))
}

fn mac_of(name: &str) -> Result<[u8; 6]> {
    let nl = dovesnap::host::netlink::Netlink::new()?;
    tokio::runtime::Handle::current()
        .block_on(nl.mac(name))?
        .with_context(|| format!("no MAC on {name} in {NS_H}"))
}

fn rx_queues(name: &str) -> Result<u32> {
    let out = in_ns(NS_H, &["ls", &format!("/sys/class/net/{name}/queues")]);
    // `ip netns exec` remounts /sys for the namespace, so this one is right.
    Ok(out
        .map(|t| {
            t.split_whitespace()
                .filter(|q| q.starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1))
}

/// The names of the paths, in report order.
pub const PATHS: &[&str] = &[
    "routing",
    "routing+xdp",
    "kernel-nat",
    "kernel-nat+xdp",
    "nat-fast",
    "nat-fast-no-offload",
];

impl PathState {
    /// Installs `path` (run inside `dsb-h`, on the tokio runtime for nat-fast).
    pub fn install(path: &str) -> Result<PathState> {
        Ok(match path {
            "routing" => PathState::Routing,
            "routing+xdp" => PathState::RoutingXdp(passive_xdp()?),
            "kernel-nat" => {
                let fw = NftFirewall::new();
                fw.add_network(&nat_network(None))?;
                PathState::KernelNat(fw)
            }
            "kernel-nat+xdp" => {
                let fw = NftFirewall::new();
                fw.add_network(&nat_network(None))?;
                PathState::KernelNatXdp(fw, passive_xdp()?)
            }
            "nat-fast" | "nat-fast-no-offload" => {
                let fw = NftFirewall::new();
                fw.add_network(&nat_network(Some(
                    dovesnap::fastpath::KERNEL_MASQUERADE_PORTS,
                )))?;
                let mut fp = FastPath::start(dovesnap::fastpath::FastPathConfig::default())?;
                let uplink = UplinkSpec {
                    name: "u0".into(),
                    ifindex: ifindex("u0")?,
                    addr: UPLINK_IP,
                    mac: mac_of("u0")?,
                    rx_queues: rx_queues("u0")?,
                };
                let c0_mac = {
                    let s = in_ns(NS_C, &["cat", "/sys/class/net/c0/address"])?;
                    s.trim().parse::<dovesnap::host::addr::Mac>()?.0
                };
                let ep = EndpointSpec {
                    host_ifname: "h0".into(),
                    host_ifindex: ifindex("h0")?,
                    ip: C_IP,
                    mac: c0_mac,
                    gateway_mac: mac_of("h0")?,
                    bridge_ifindex: ifindex("h0")?,
                    subnet: Ipv4Net::new(Ipv4Addr::new(10, 240, 1, 0), 24).expect("valid"),
                    offload: path == "nat-fast",
                    adopt: false,
                };
                fp.add_endpoint(&ep, &uplink)?;
                PathState::NatFast(fw, Box::new(fp))
            }
            other => bail!("unknown path {other}"),
        })
    }

    /// Removes what `install` put in place.
    pub fn uninstall(self) {
        match self {
            PathState::Routing => {}
            PathState::RoutingXdp(x) => drop(x),
            PathState::KernelNat(fw) => {
                let _ = fw.remove_network(NET_ID);
            }
            PathState::KernelNatXdp(fw, x) => {
                drop(x);
                let _ = fw.remove_network(NET_ID);
            }
            PathState::NatFast(fw, fp) => {
                fp.stop();
                let _ = fw.remove_network(NET_ID);
            }
        }
        // Nothing of one path may carry over into the next one's numbers.
        let _ = Command::new("conntrack")
            .args(["-F"])
            .stderr(Stdio::null())
            .status();
    }

    /// The nat-fast status (counters) when this is the nat-fast path.
    pub fn fast_status(&self) -> Option<dovesnap::fastpath::FastPathStatus> {
        match self {
            PathState::NatFast(_, fp) => Some(fp.status()),
            _ => None,
        }
    }
}

/// Busy and total CPU time of the whole machine so far, in seconds (from /proc/stat;
/// every namespace shares it).
pub fn cpu_times() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let first = text.lines().next().unwrap_or_default();
    let v: Vec<f64> = first
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let total: f64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    ((total - idle) / hz, total / hz)
}

/// This binary, to run tools inside the other namespaces.
pub fn self_exe() -> PathBuf {
    std::env::current_exe().expect("current exe")
}

fn tool(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(self_exe()).args(args);
    c
}

/// Starts a long-running tool (a server) in `ns`; killed on drop.
pub struct Bg(Child);

impl Bg {
    pub fn start(ns: &str, args: &[&str]) -> Result<Bg> {
        let child = tool(ns, args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start a bench tool")?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Bg(child))
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The result a tool printed: its last line that is a JSON object (`{}` if none).
pub fn tool_result(stdout: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("{}");
    Ok(serde_json::from_str(line)?)
}

/// Runs a tool to completion in `ns` and parses its one-line JSON result.
pub fn run_tool(ns: &str, args: &[&str]) -> Result<Value> {
    let out = tool(ns, args).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("bench tool {args:?} in {ns} failed: {}", out.status);
    }
    tool_result(&out.stdout)
}

/// A spawned tool whose JSON result is read when it ends.
pub fn spawn_tool(ns: &str, args: &[&str]) -> Result<Child> {
    Ok(tool(ns, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?)
}

pub fn wait_tool(child: Child) -> Result<Value> {
    tool_result(&child.wait_with_output()?.stdout)
}

/// One small-packet UDP round: an XDP drop sink on `sink_if` in `sink_ns`, `gens`
/// generators in the container, generator `g` pinned to CPU `g` (and so to transmit
/// queue `g`), 256 flows in all, for `plan.seconds`. Towards the far side, every flow
/// is first opened both ways (one datagram out, the echo back) so that a stateful NAT
/// sees established sessions, as it would for real UDP traffic.
struct UdpRound {
    sent: f64,
    seconds: f64,
    frames: f64,
    /// Machine CPU time (all CPUs) spent while the generators ran.
    busy_seconds: f64,
}

fn udp_round(plan: Plan, sink_ns: &str, sink_if: &str, gens: u16) -> Result<UdpRound> {
    let per = 256 / gens;
    let (far, flows) = (FAR_IP.to_string(), per.to_string());
    let ports: Vec<String> = (0..gens)
        .map(|g| (UDP_PORT + g * per).to_string())
        .collect();
    // Generator `g`'s flows: `tool --dst FAR_IP --port P --flows N`, `P` its first port.
    let flow_args = |tool: &'static str, g: u16| -> Vec<&str> {
        vec![
            tool,
            "--dst",
            &far,
            "--port",
            &ports[usize::from(g)],
            "--flows",
            &flows,
        ]
    };
    if sink_ns == NS_F {
        let echo = spawn_tool(
            NS_F,
            &[
                "udp-echo",
                "--port",
                &ports[0],
                "--flows",
                "256",
                "--seconds",
                "4",
            ],
        )?;
        std::thread::sleep(Duration::from_millis(300));
        for g in 0..gens {
            let mut args = flow_args("udp-warm", g);
            args.extend(["--cpu", "0"]);
            run_tool(NS_C, &args)?;
        }
        wait_tool(echo).ok();
    }
    let sink_secs = format!("{}", plan.seconds + 1.5);
    let sink = spawn_tool(
        sink_ns,
        &["sink", "--ifname", sink_if, "--seconds", &sink_secs],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let (busy0, _) = cpu_times();
    let t0 = Instant::now();
    let run_secs = format!("{}", plan.seconds);
    let generators = (0..gens)
        .map(|g| {
            let cpu = g.to_string();
            let mut args = flow_args("udp-gen", g);
            args.extend(["--payload", "18", "--seconds", &run_secs, "--cpu", &cpu]);
            spawn_tool(NS_C, &args)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut sent = 0.0;
    let mut seconds: f64 = 0.0;
    for gen in generators {
        let v = wait_tool(gen)?;
        sent += v["sent"].as_f64().unwrap_or(0.0);
        seconds = seconds.max(v["seconds"].as_f64().unwrap_or(0.0));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (busy1, _) = cpu_times();
    let sunk = wait_tool(sink)?;
    Ok(UdpRound {
        sent,
        seconds: if seconds > 0.0 { seconds } else { elapsed },
        frames: sunk["frames"].as_f64().unwrap_or(0.0),
        busy_seconds: busy1 - busy0,
    })
}

/// Per-run values of the small-packet UDP workload with a given number of generators.
#[derive(Default, Debug)]
pub struct UdpRuns {
    pub pps: Vec<f64>,
    pub loss: Vec<f64>,
    pub cpu_ns: Vec<f64>,
}

/// Per-run values of the data-path workloads on one path.
#[derive(Default, Debug)]
pub struct PathRuns {
    /// With one generator (one CPU, one queue), then with two (two CPUs, two queues).
    pub udp: [UdpRuns; 2],
    pub tcp1_gbps: Vec<f64>,
    pub tcp4_gbps: Vec<f64>,
    pub rr_p50: Vec<f64>,
    pub rr_p99: Vec<f64>,
    pub crr_per_s: Vec<f64>,
}

const UDP_PORT: u16 = 9000;
const STREAM_PORT: u16 = 5201;
const RR_PORT: u16 = 5202;
const CRR_PORT: u16 = 5203;

/// Measures every workload on the installed path, `plan.runs` times.
pub fn measure_path(plan: Plan, quiet: bool) -> Result<PathRuns> {
    let secs = format!("{}", plan.seconds);
    let far = FAR_IP.to_string();
    let mut r = PathRuns::default();
    let _stream = Bg::start(NS_F, &["stream-server", "--port", &STREAM_PORT.to_string()])?;
    let _rr = Bg::start(NS_F, &["rr-server", "--port", &RR_PORT.to_string()])?;
    let _crr = Bg::start(NS_F, &["crr-server", "--port", &CRR_PORT.to_string()])?;
    for run in 0..plan.runs {
        // Small-packet UDP: one generator pinned to CPU 0, then two (CPUs 0 and 1), in
        // the container; XDP sink on the far side.
        for (gens, udp) in (1..).zip(&mut r.udp) {
            let UdpRound {
                sent,
                seconds,
                frames,
                busy_seconds,
            } = udp_round(plan, NS_F, "f0", gens)?;
            udp.pps.push(frames / seconds);
            udp.loss.push(if sent > 0.0 {
                (sent - frames).max(0.0) / sent
            } else {
                1.0
            });
            if frames > 0.0 {
                udp.cpu_ns.push(busy_seconds * 1e9 / frames);
            }
        }
        // TCP streams.
        for (streams, out) in [("1", &mut r.tcp1_gbps), ("4", &mut r.tcp4_gbps)] {
            let v = run_tool(
                NS_C,
                &[
                    "stream-client",
                    "--dst",
                    &far,
                    "--port",
                    &STREAM_PORT.to_string(),
                    "--streams",
                    streams,
                    "--seconds",
                    &secs,
                ],
            )?;
            out.push(v["gbps"].as_f64().unwrap_or(0.0));
        }
        // Request/response latency.
        let v = run_tool(
            NS_C,
            &[
                "rr-client",
                "--dst",
                &far,
                "--port",
                &RR_PORT.to_string(),
                "--seconds",
                &secs,
            ],
        )?;
        r.rr_p50.push(v["p50_us"].as_f64().unwrap_or(f64::NAN));
        r.rr_p99.push(v["p99_us"].as_f64().unwrap_or(f64::NAN));
        // New connections per second.
        let v = run_tool(
            NS_C,
            &[
                "crr-client",
                "--dst",
                &far,
                "--port",
                &CRR_PORT.to_string(),
                "--seconds",
                &secs,
            ],
        )?;
        r.crr_per_s.push(v["per_second"].as_f64().unwrap_or(0.0));
        if !quiet {
            eprintln!(
                "    run {}: udp {:.0} pps (loss {:.1}%), 2 CPUs {:.0} pps, tcp {:.2}/{:.2} Gbit/s, rr p50 {:.1} us, crr {:.0}/s",
                run + 1,
                r.udp[0].pps.last().unwrap_or(&0.0),
                r.udp[0].loss.last().unwrap_or(&0.0) * 100.0,
                r.udp[1].pps.last().unwrap_or(&0.0),
                r.tcp1_gbps.last().unwrap_or(&0.0),
                r.tcp4_gbps.last().unwrap_or(&0.0),
                r.rr_p50.last().unwrap_or(&0.0),
                r.crr_per_s.last().unwrap_or(&0.0),
            );
        }
    }
    Ok(r)
}

/// The generator alone: the same generator into an XDP drop sink on the container's
/// own veth peer (h0), nothing forwarded. Shows the generator is not the bottleneck.
pub fn generator_alone(plan: Plan) -> Result<Vec<f64>> {
    let mut pps = Vec::new();
    for _ in 0..plan.runs {
        let round = udp_round(plan, NS_H, "h0", 1)?;
        pps.push(round.frames / round.seconds);
    }
    Ok(pps)
}

/// Records for one path's runs.
pub fn records(path: &str, r: &PathRuns) -> Vec<Record> {
    const ONE_CPU: &str =
        "64-byte frames, 256 flows, one generator CPU, XDP drop sink on the far side";
    const TWO_CPUS: &str =
        "64-byte frames, 256 flows, two generators on CPUs 0 and 1 (one queue each)";
    const CPU: &str = "CPU time the whole machine spent, divided by packets delivered";
    let cpu_ns = "ns CPU/packet";
    let table: [(&str, &str, &Vec<f64>, Option<&str>); 11] = [
        ("udp-64B-pps", "packets/s", &r.udp[0].pps, Some(ONE_CPU)),
        ("udp-64B-loss", "fraction", &r.udp[0].loss, None),
        (
            "udp-64B-cpu-per-packet",
            cpu_ns,
            &r.udp[0].cpu_ns,
            Some(CPU),
        ),
        (
            "udp-64B-pps-2cpu",
            "packets/s",
            &r.udp[1].pps,
            Some(TWO_CPUS),
        ),
        ("udp-64B-loss-2cpu", "fraction", &r.udp[1].loss, None),
        (
            "udp-64B-cpu-per-packet-2cpu",
            cpu_ns,
            &r.udp[1].cpu_ns,
            None,
        ),
        ("tcp-1-stream", "Gbit/s", &r.tcp1_gbps, None),
        ("tcp-4-streams", "Gbit/s", &r.tcp4_gbps, None),
        ("tcp-rr-p50", "us", &r.rr_p50, None),
        ("tcp-rr-p99", "us", &r.rr_p99, None),
        ("tcp-crr", "connections/s", &r.crr_per_s, None),
    ];
    table
        .into_iter()
        .map(|(workload, unit, runs, note)| {
            let record = Record::from_runs(workload, path, unit, runs);
            match note {
                Some(n) => record.with_note(n),
                None => record,
            }
        })
        .collect()
}

/// Fills in `ratio_to_kernel`: each path against `kernel-nat` (no XDP) for the same
/// workload; nat-fast also gets a note with its ratio to `kernel-nat+xdp` (the kernel
/// path in the same XDP attachment state).
pub fn add_ratios(records: &mut [Record]) {
    let base: Vec<(String, f64)> = records
        .iter()
        .filter(|r| r.path == "kernel-nat")
        .map(|r| (r.workload.clone(), r.value))
        .collect();
    let same_xdp: Vec<(String, f64)> = records
        .iter()
        .filter(|r| r.path == "kernel-nat+xdp")
        .map(|r| (r.workload.clone(), r.value))
        .collect();
    for r in records.iter_mut() {
        if r.path == "kernel-nat" {
            continue;
        }
        if let Some((_, b)) = base.iter().find(|(w, _)| *w == r.workload) {
            if *b != 0.0 && b.is_finite() && r.value.is_finite() {
                r.ratio_to_kernel = Some(r.value / b);
            }
        }
        if r.path.starts_with("nat-fast") {
            if let Some((_, b)) = same_xdp.iter().find(|(w, _)| *w == r.workload) {
                if *b != 0.0 && b.is_finite() {
                    let note = format!("ratio to kernel-nat+xdp: {:.2}", r.value / b);
                    r.note = Some(match r.note.take() {
                        Some(n) => format!("{n}; {note}"),
                        None => note,
                    });
                }
            }
        }
    }
}
