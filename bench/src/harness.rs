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
//! Paths, all over the same interfaces (one [`NsPath`] entry each in [`PATHS`]):
//! - `routing`: plain forwarding, no NAT; `routing+xdp` with an XDP_PASS program on h0
//!   and u0 (which turns TSO off on their peers); `routing-tso` with the container end
//!   at kernel defaults (TX checksum offload and TSO on, as in a container on Docker's
//!   bridge): the true ceiling for TCP;
//! - `kernel-nat`: this project's nat mode (nftables masquerade), `kernel-nat+xdp` the
//!   same with the XDP_PASS program attached, `kernel-nat-tso` with the container end
//!   at kernel defaults (Docker's bridge's NAT, on the same veths);
//! - `nat-fast`: XDP steering + AF_XDP translator, established sessions offloaded to
//!   XDP (rewritten and redirected in the kernel; the kernel nat rules present, as in
//!   production, but unused by steered traffic); `nat-fast-no-offload`: every packet
//!   through the AF_XDP translator (`-o ovs.nat.offload=false`).
//!
//! Both veth pairs have two queues, and the container's transmit queue `i` is used by
//! CPU `i` (XPS), so one generator per CPU feeds one receive queue each (the
//! two-generator UDP round). Offloads are set per path ([`NsPath::container_end`],
//! [`NsPath::far_end`]) and read back into every record's note: the container end has
//! TX checksum offload off and GRO on as dovesnap sets them (kernel defaults in the
//! `-tso` paths); the far end runs kernel defaults except for nat-fast, where it has
//! GRO on (NAPI: it accepts XDP-redirected frames, as a NIC would) and sends complete
//! checksums (as a NIC's receive path delivers them).

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
use dovesnap_bench::report::{ratios_to, Record};
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
        ipv6: None,
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

/// What a namespace-section path installs in `dsb-h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Routing,
    RoutingXdp,
    KernelNat,
    KernelNatXdp,
    NatFast { offload: bool },
}

/// One path of the namespace section: a row of the report.
#[derive(Clone, Copy, Debug)]
pub struct NsPath {
    pub name: &'static str,
    pub kind: Kind,
    /// `ethtool -K c0 ...` while this path is measured.
    pub container_end: &'static [&'static str],
    /// `ethtool -K f0 ...` while this path is measured.
    pub far_end: &'static [&'static str],
    /// Whether the small-packet UDP rounds run (the `-tso` baselines skip them: the
    /// generator writes whole frames, which offloads do not touch).
    pub udp: bool,
}

/// As dovesnap sets a container's veth end: complete checksums (so a translator never
/// finishes a partial one) and GRO on (set while up, it makes the veth a target of XDP
/// redirects from its peer).
const DOVESNAP_END: &[&str] = &["tx-checksum-ip-generic", "off", "gro", "on"];
/// A fresh veth's features, what a container on Docker's bridge runs with.
pub const KERNEL_DEFAULTS: &[&str] = &["tx-checksum-ip-generic", "on", "tso", "on", "gro", "off"];
/// A far end standing in for a NIC, for nat-fast: GRO on (NAPI queues, so XDP redirects
/// into its peer are accepted) and complete checksums on what it sends. See
/// [`far_end_note`] for what each setting is needed for.
pub const NIC_LIKE: &[&str] = &["gro", "on", "tx-checksum-ip-generic", "off"];

/// Why a far end is tuned, for the records' notes; `None` at kernel defaults.
pub fn far_end_note(far_end: &[&str]) -> Option<&'static str> {
    (far_end != KERNEL_DEFAULTS).then_some(
        "far end tuned as a NIC stands in: GRO on (a veth takes XDP redirects into its peer \
         only then; at defaults nat-fast's upload fell to about 0 Gbit/s) and tx-csum off \
         (a NIC delivers complete checksums; with the veth's partial ones nat-fast's download \
         fell to about 0.3 Gbit/s)",
    )
}
/// The paths, in report order. A new path is one entry here (and a [`Kind`] if it
/// installs something new).
pub const PATHS: &[NsPath] = &[
    NsPath {
        name: "routing",
        kind: Kind::Routing,
        container_end: DOVESNAP_END,
        far_end: KERNEL_DEFAULTS,
        udp: true,
    },
    NsPath {
        name: "routing-tso",
        kind: Kind::Routing,
        container_end: KERNEL_DEFAULTS,
        far_end: KERNEL_DEFAULTS,
        udp: false,
    },
    NsPath {
        name: "routing+xdp",
        kind: Kind::RoutingXdp,
        container_end: DOVESNAP_END,
        far_end: KERNEL_DEFAULTS,
        udp: true,
    },
    NsPath {
        name: "kernel-nat",
        kind: Kind::KernelNat,
        container_end: DOVESNAP_END,
        far_end: KERNEL_DEFAULTS,
        udp: true,
    },
    NsPath {
        name: "kernel-nat-tso",
        kind: Kind::KernelNat,
        container_end: KERNEL_DEFAULTS,
        far_end: KERNEL_DEFAULTS,
        udp: false,
    },
    NsPath {
        name: "kernel-nat+xdp",
        kind: Kind::KernelNatXdp,
        container_end: DOVESNAP_END,
        far_end: KERNEL_DEFAULTS,
        udp: true,
    },
    NsPath {
        name: "nat-fast",
        kind: Kind::NatFast { offload: true },
        container_end: DOVESNAP_END,
        far_end: NIC_LIKE,
        udp: true,
    },
    NsPath {
        name: "nat-fast-no-offload",
        kind: Kind::NatFast { offload: false },
        container_end: DOVESNAP_END,
        far_end: NIC_LIKE,
        udp: true,
    },
];

/// `ethtool -K IF ARGS` where `place` says.
pub fn set_offloads(place: &Place, ifname: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-K", ifname];
    full.extend_from_slice(args);
    place.run("ethtool", &full).map(drop)
}

/// `offloads: container IF: ...; far IF: ...` and why the far end is tuned, if it is.
pub fn offload_note(
    container: &Place,
    container_if: &str,
    far: &Place,
    far_if: &str,
    far_end: &[&str],
) -> String {
    let mut note = format!(
        "offloads: container {}; far {}",
        offloads_or_why(container, container_if),
        offloads_or_why(far, far_if)
    );
    if let Some(why) = far_end_note(far_end) {
        note = format!("{note}; {why}");
    }
    note
}

/// [`offloads`], or why they could not be read.
fn offloads_or_why(place: &Place, ifname: &str) -> String {
    offloads(place, ifname).unwrap_or_else(|e| format!("{ifname}: {e:#}"))
}

/// `IF: tx-csum on, tso on, gro off` as `ethtool -k IF` where `place` says shows them.
pub fn offloads(place: &Place, ifname: &str) -> Result<String> {
    let out = place.run("ethtool", &["-k", ifname])?;
    Ok(format!("{ifname}: {}", summarize_offloads(&out)))
}

/// The offloads that shape the figures, from `ethtool -k` output. TSO is the IPv4 TCP
/// feature itself (`tx-tcp-segmentation`): the `tcp-segmentation-offload` summary line
/// stays `on` while any TCP variant is (e.g. `tx-tcp-accecn-segmentation`, which does
/// not need a checksum offload).
pub fn summarize_offloads(ethtool_k: &str) -> String {
    [
        ("tx-checksum-ip-generic", "tx-csum"),
        ("tx-tcp-segmentation", "tso"),
        ("generic-receive-offload", "gro"),
    ]
    .iter()
    .map(|(feature, short)| {
        let state = ethtool_k
            .lines()
            .find_map(|l| l.trim().strip_prefix(feature)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("?");
        format!("{short} {state}")
    })
    .collect::<Vec<_>>()
    .join(", ")
}

impl PathState {
    /// Installs `path` (run inside `dsb-h`, on the tokio runtime for nat-fast), with
    /// its offload settings on the container and far ends.
    pub fn install(path: &NsPath) -> Result<PathState> {
        set_offloads(&Place::netns(NS_C), "c0", path.container_end)?;
        set_offloads(&Place::netns(NS_F), "f0", path.far_end)?;
        Ok(match path.kind {
            Kind::Routing => PathState::Routing,
            Kind::RoutingXdp => PathState::RoutingXdp(passive_xdp()?),
            Kind::KernelNat => {
                let fw = NftFirewall::new();
                fw.add_network(&nat_network(None))?;
                PathState::KernelNat(fw)
            }
            Kind::KernelNatXdp => {
                let fw = NftFirewall::new();
                fw.add_network(&nat_network(None))?;
                PathState::KernelNatXdp(fw, passive_xdp()?)
            }
            Kind::NatFast { offload } => {
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
                    offload,
                    adopt: false,
                };
                fp.add_endpoint(&ep, &uplink)?;
                PathState::NatFast(fw, Box::new(fp))
            }
        })
    }

    /// The offloads in force on `path`, for the records' notes (read after `install`:
    /// an XDP program on a veth changes its peer's features).
    pub fn offload_note(path: &NsPath) -> String {
        offload_note(
            &Place::netns(NS_C),
            "c0",
            &Place::netns(NS_F),
            "f0",
            path.far_end,
        )
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

/// Where a tool runs: a named network namespace, or a container's (its init's pid).
/// Both `ip netns exec` and `nsenter` exec the tool, so a child's pid is the tool's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Netns(String),
    Container { pid: String },
}

impl Place {
    pub fn netns(name: &str) -> Place {
        Place::Netns(name.to_string())
    }

    /// `program args` in this place's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut c = match self {
            Place::Netns(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                c
            }
            Place::Container { pid } => {
                let mut c = Command::new("nsenter");
                c.args(["-t", pid, "-n"]);
                c
            }
        };
        c.arg(program).args(args);
        c
    }

    /// Runs `program args` here to completion; its stdout, or an error with its stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.command(program, args).output()?;
        if !out.status.success() {
            bail!(
                "{program} {} in {self:?} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn tool(place: &Place, args: &[&str]) -> Command {
    place.command(self_exe(), args)
}

/// Starts a long-running tool (a server) in `place`; killed on drop.
pub struct Bg(Child);

impl Bg {
    pub fn start(place: &Place, args: &[&str]) -> Result<Bg> {
        let child = tool(place, args)
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

/// Runs a tool to completion in `place` and parses its one-line JSON result.
pub fn run_tool(place: &Place, args: &[&str]) -> Result<Value> {
    let out = tool(place, args).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("bench tool {args:?} in {place:?} failed: {}", out.status);
    }
    tool_result(&out.stdout)
}

/// A spawned tool whose JSON result is read when it ends.
pub fn spawn_tool(place: &Place, args: &[&str]) -> Result<Child> {
    Ok(tool(place, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?)
}

pub fn wait_tool(child: Child) -> Result<Value> {
    tool_result(&child.wait_with_output()?.stdout)
}

/// Ends a spawned tool early with SIGTERM (the sink still prints its result) and reads
/// its result.
fn stop_tool(child: Child) -> Result<Value> {
    // SAFETY: kill(2) on our own child's pid (not yet reaped: `child` is unwaited).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_tool(child)
}

/// The two ends of a measured path: the sender (container) and the far namespace with
/// its servers and sink.
#[derive(Clone, Debug)]
pub struct Ends {
    pub sender: Place,
    pub far_ns: &'static str,
    pub far_if: &'static str,
    pub far_ip: Ipv4Addr,
}

impl Ends {
    /// The namespace section's ends: `dsb-c` to `dsb-f`.
    pub fn namespaces() -> Ends {
        Ends {
            sender: Place::netns(NS_C),
            far_ns: NS_F,
            far_if: "f0",
            far_ip: FAR_IP,
        }
    }

    fn far(&self) -> Place {
        Place::netns(self.far_ns)
    }
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

fn udp_round(plan: Plan, ends: &Ends, sink: (&Place, &str), gens: u16) -> Result<UdpRound> {
    let (sink_place, sink_if) = sink;
    let per = 256 / gens;
    let (far, flows) = (ends.far_ip.to_string(), per.to_string());
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
    if *sink_place == ends.far() {
        let echo = spawn_tool(
            sink_place,
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
            run_tool(&ends.sender, &args)?;
        }
        // Every flow has been answered (or the warm-up gave up): no need to wait out
        // the echo's window.
        let mut echo = echo;
        let _ = echo.kill();
        let _ = echo.wait();
    }
    // The sink's own limit is a safety net: it is stopped once the generators are done.
    let sink_secs = format!("{}", plan.seconds + 5.0);
    let sink = spawn_tool(
        sink_place,
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
            spawn_tool(&ends.sender, &args)
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
    // Frames still in flight reach the sink within microseconds.
    std::thread::sleep(Duration::from_millis(200));
    let sunk = stop_tool(sink)?;
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
    pub tcp1_down_gbps: Vec<f64>,
    pub tcp4_gbps: Vec<f64>,
    pub rr_p50: Vec<f64>,
    pub rr_p99: Vec<f64>,
    pub crr_per_s: Vec<f64>,
}

const UDP_PORT: u16 = 9000;
const STREAM_PORT: u16 = 5201;
const SOURCE_PORT: u16 = 5204;
const RR_PORT: u16 = 5202;
const CRR_PORT: u16 = 5203;

/// Measures every workload between `ends` on the installed path, `plan.runs` times;
/// the small-packet UDP rounds only when `with_udp`.
pub fn measure_path(plan: Plan, ends: &Ends, with_udp: bool) -> Result<PathRuns> {
    let secs = format!("{}", plan.seconds);
    let far = ends.far_ip.to_string();
    let far_place = ends.far();
    let mut r = PathRuns::default();
    let _servers = [
        ("stream-server", STREAM_PORT),
        ("source-server", SOURCE_PORT),
        ("rr-server", RR_PORT),
        ("crr-server", CRR_PORT),
    ]
    .into_iter()
    .map(|(server, port)| Bg::start(&far_place, &[server, "--port", &port.to_string()]))
    .collect::<Result<Vec<_>>>()?;
    // `CLIENT --dst FAR --port PORT --seconds S` plus `more`, in the container.
    let client = |name: &str, port: u16, more: &[&str]| -> Result<Value> {
        let port = port.to_string();
        let mut args = vec![name, "--dst", &far, "--port", &port, "--seconds", &secs];
        args.extend_from_slice(more);
        run_tool(&ends.sender, &args)
    };
    for run in 0..plan.runs {
        // Small-packet UDP: one generator pinned to CPU 0, then two (CPUs 0 and 1), in
        // the container; XDP sink on the far side.
        for (gens, udp) in (1..).zip(&mut r.udp).filter(|_| with_udp) {
            let UdpRound {
                sent,
                seconds,
                frames,
                busy_seconds,
            } = udp_round(plan, ends, (&far_place, ends.far_if), gens)?;
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
        // TCP streams: upload with one and four connections, download with one.
        let gbps = |v: Value| v["gbps"].as_f64().unwrap_or(0.0);
        r.tcp1_gbps
            .push(gbps(client("stream-client", STREAM_PORT, &[])?));
        r.tcp4_gbps.push(gbps(client(
            "stream-client",
            STREAM_PORT,
            &["--streams", "4"],
        )?));
        r.tcp1_down_gbps
            .push(gbps(client("stream-client", SOURCE_PORT, &["--download"])?));
        // Request/response latency.
        let v = client("rr-client", RR_PORT, &[])?;
        r.rr_p50.push(v["p50_us"].as_f64().unwrap_or(f64::NAN));
        r.rr_p99.push(v["p99_us"].as_f64().unwrap_or(f64::NAN));
        // New connections per second.
        let v = client("crr-client", CRR_PORT, &[])?;
        r.crr_per_s.push(v["per_second"].as_f64().unwrap_or(0.0));
        let last = |v: &Vec<f64>| v.last().copied().unwrap_or(f64::NAN);
        let udp = if with_udp {
            format!(
                "udp {:.0} pps (loss {:.1}%), 2 CPUs {:.0} pps, ",
                last(&r.udp[0].pps),
                last(&r.udp[0].loss) * 100.0,
                last(&r.udp[1].pps),
            )
        } else {
            String::new()
        };
        eprintln!(
            "    run {}: {udp}tcp up {:.2} / 4 streams {:.2} / down {:.2} Gbit/s, rr p50 {:.1} us, crr {:.0}/s",
            run + 1,
            last(&r.tcp1_gbps),
            last(&r.tcp4_gbps),
            last(&r.tcp1_down_gbps),
            last(&r.rr_p50),
            last(&r.crr_per_s),
        );
    }
    Ok(r)
}

/// The generator alone: the same generator into an XDP drop sink on the container's
/// own veth peer (h0), nothing forwarded. Shows the generator is not the bottleneck.
pub fn generator_alone(plan: Plan) -> Result<Vec<f64>> {
    let mut pps = Vec::new();
    for _ in 0..plan.runs {
        let round = udp_round(plan, &Ends::namespaces(), (&Place::netns(NS_H), "h0"), 1)?;
        pps.push(round.frames / round.seconds);
    }
    Ok(pps)
}

/// `offloads: container c0: ...; sink h0: ...` for the generator-alone record, read
/// once the sink's XDP program has left h0 (while it is there, c0 has TSO off). The
/// generator writes whole frames, so none of them changes what it sends.
pub fn generator_alone_offloads() -> String {
    format!(
        "offloads (read after the run, TSO off on c0 while the sink is attached): \
         container {}; sink {}",
        offloads_or_why(&Place::netns(NS_C), "c0"),
        offloads_or_why(&Place::netns(NS_H), "h0")
    )
}

/// Records for one path's runs, workloads named `{prefix}{workload}`; workloads not
/// measured (no runs) are left out.
pub fn records(prefix: &str, path: &str, r: &PathRuns) -> Vec<Record> {
    const ONE_CPU: &str =
        "64-byte frames, 256 flows, one generator CPU, XDP drop sink on the far side";
    const TWO_CPUS: &str = "64-byte frames, 256 flows, two generators on CPUs 0 and 1";
    const CPU: &str = "CPU time the whole machine spent, divided by packets delivered";
    let cpu_ns = "ns CPU/packet";
    let table: [(&str, &str, &Vec<f64>, Option<&str>); 12] = [
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
        (
            "tcp-1-stream",
            "Gbit/s",
            &r.tcp1_gbps,
            Some("upload: container to far"),
        ),
        (
            "tcp-1-stream-download",
            "Gbit/s",
            &r.tcp1_down_gbps,
            Some("download: far to container, on a connection the container opened"),
        ),
        ("tcp-4-streams", "Gbit/s", &r.tcp4_gbps, Some("upload")),
        ("tcp-rr-p50", "us", &r.rr_p50, None),
        ("tcp-rr-p99", "us", &r.rr_p99, None),
        ("tcp-crr", "connections/s", &r.crr_per_s, None),
    ];
    table
        .into_iter()
        .filter(|(_, _, runs, _)| !runs.is_empty())
        .map(|(workload, unit, runs, note)| {
            let record = Record::from_runs(&format!("{prefix}{workload}"), path, unit, runs);
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
    let to_kernel = ratios_to(records, "kernel-nat");
    let to_same_xdp = ratios_to(records, "kernel-nat+xdp");
    for ((r, k), x) in records.iter_mut().zip(to_kernel).zip(to_same_xdp) {
        r.ratio_to_kernel = k;
        if let (true, Some(x)) = (r.path.starts_with("nat-fast"), x) {
            r.add_note(&format!("ratio to kernel-nat+xdp: {x:.2}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_summary_from_ethtool() {
        let out = "Features for c0:\nrx-checksumming: on\ntx-checksumming: on\n\
                   \ttx-checksum-ipv4: off [fixed]\n\ttx-checksum-ip-generic: off\n\
                   \ttx-checksum-sctp: on\ntcp-segmentation-offload: on\n\
                   \ttx-tcp-segmentation: off [requested on]\n\
                   \ttx-tcp6-segmentation: off [requested on]\n\
                   \ttx-tcp-accecn-segmentation: on\ngeneric-receive-offload: on\n";
        assert_eq!(summarize_offloads(out), "tx-csum off, tso off, gro on");
        assert_eq!(summarize_offloads(""), "tx-csum ?, tso ?, gro ?");
    }

    #[test]
    fn every_path_has_a_unique_name_and_the_kernel_baseline_exists() {
        let mut names: Vec<&str> = PATHS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), PATHS.len());
        assert!(names.contains(&"kernel-nat") && names.contains(&"kernel-nat+xdp"));
        // The true kernel baselines: TSO and checksum offload on at both ends, as on
        // Docker's bridge.
        for name in ["routing-tso", "kernel-nat-tso"] {
            let p = PATHS.iter().find(|p| p.name == name).expect(name);
            assert_eq!(p.container_end, KERNEL_DEFAULTS, "{name}");
            assert_eq!(p.far_end, KERNEL_DEFAULTS, "{name}");
        }
    }

    #[test]
    fn records_leave_out_what_was_not_measured_and_ratios_fill_in() {
        let runs = PathRuns {
            tcp1_gbps: vec![2.0, 4.0, 3.0],
            ..Default::default()
        };
        let recs = records("container-", "x", &runs);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].workload, "container-tcp-1-stream");
        assert_eq!((recs[0].value, recs[0].runs), (3.0, 3));

        let rec = |p: &str, v: f64| Record::from_runs("tcp-1-stream", p, "Gbit/s", &[v]);
        let mut all = vec![
            rec("kernel-nat", 2.0),
            rec("kernel-nat+xdp", 1.0),
            rec("nat-fast", 4.0),
        ];
        add_ratios(&mut all);
        assert_eq!(
            all[0].ratio_to_kernel,
            Some(1.0),
            "the baseline reads as 1.0"
        );
        assert_eq!(all[1].ratio_to_kernel, Some(0.5));
        assert_eq!(all[2].ratio_to_kernel, Some(2.0));
        assert_eq!(
            all[2].note.as_deref(),
            Some("ratio to kernel-nat+xdp: 4.00")
        );
    }
}
