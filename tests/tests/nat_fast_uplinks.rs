//! nat-fast never loses traffic, whatever the uplink is: a plain veth, a veth whose
//! far end has GRO on, a Linux bridge holding the address and a macvlan.
//!
//! The far side keeps the kernel's defaults (no ethtool on its end unless the kind
//! says so: GRO off, TX checksum offload on), unlike docker_nat_fast.rs whose far end
//! stands in for a well-behaved NIC. On each uplink three nat-fast networks: one with
//! the xdp engine that offloads established sessions to XDP (the default), one with
//! `ovs.nat.offload=false`, and one with `ovs.nat.engine=tc`, each with one container
//! that carries a 20 MiB download, a 20 MiB upload (SHA-256 compared at both ends), a
//! ping and a published port. Then the status says which path each endpoint took.
//!
//! - xdp engine: the fast path on the veths (with offload one way only when the uplink
//!   takes no XDP redirects), the kernel's nat path (with the reason, generic XDP) on
//!   the bridge and the macvlan, where conntrack shows that netfilter carried the
//!   traffic.
//! - tc engine: its programs carry both transfers on every kind (sessions made at the
//!   SYNs, `tc-out`/`tc-in`/`tc-gso-frames` grown, no conntrack entry for either half
//!   of them). It puts no XDP on the uplink, only tcx ingress programs, which every
//!   device takes whatever its driver: the bridge and the macvlan, which have generic
//!   XDP only, stand for a NIC without native XDP, where the tc engine therefore runs
//!   its fast path as on a veth (GSO kept) while the xdp engine falls back to the
//!   kernel. On a bridge the uplink program also sits on the bridge's ports: a reply
//!   meets it there before the bridge's netfilter hooks (br_netfilter, which Docker
//!   turns on), which would see a new flow and apply DNAT to it. The daemon's tc slice
//!   is one port, the one the tc container is published on, so every tc session's
//!   replies come to a published port's number.
//!
//! Beside them: other NATs on the same uplink (an ovs nat network and Docker's own
//! bridge) whose flows leave from ports of the translator's range keep their replies.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use dovesnap_tests::docker::{start_plugin, start_plugin_with, Container, Network};
use dovesnap_tests::far::Far;
use dovesnap_tests::status::{
    dataplane_counter, endpoint_at, find_in, translator_counter, xdp_counter,
};
use dovesnap_tests::{run, sh};

const BLOB_BYTES: usize = 20 << 20;
/// Port of the far side's HTTP server of the blob.
const BLOB_PORT: u16 = 8000;
/// The nat-fast networks on each uplink, one container each, in this order: the xdp
/// engine with offload (its default), without, and the tc engine (nat-fast's default).
const FLAVOURS: [(&str, &[&str]); 3] = [
    ("on", &["-o", "ovs.nat.engine=xdp"]),
    (
        "off",
        &["-o", "ovs.nat.engine=xdp", "-o", "ovs.nat.offload=false"],
    ),
    ("tc", &[]), // the default engine
];
/// The tc engine's network in [`FLAVOURS`].
const TC: usize = 2;
/// The one external port the tc programs may claim (`--nat-kernel-ports`), which is
/// also the host port the tc engine's container is published on: every session it
/// makes has the external port of a published port, whose DNAT must not touch the
/// session's replies.
const TC_PORT: u16 = 18240;
/// Ports of the far side's upload receivers, one per network of [`FLAVOURS`].
const UPLOAD_PORTS: [u16; 3] = [9001, 9002, 9003];

/// `python3 -c RECEIVER IP N PORT OUT [PORT OUT]...`: on each PORT (one process, so
/// one start-up wait), takes one connection, reads exactly N bytes (busybox nc does not
/// half-close, so no waiting for EOF), closes, then writes the hex SHA-256 of what came
/// (or how much was missing) to its OUT.
const RECEIVER: &str = r#"
import hashlib, os, socket, sys, threading
ip, n = sys.argv[1], int(sys.argv[2])
def serve(s, out):
    c, _ = s.accept(); c.settimeout(30)
    h, left = hashlib.sha256(), n
    try:
        while left:
            d = c.recv(min(left, 1 << 20))
            if not d:
                break
            h.update(d); left -= len(d)
    except OSError:
        pass
    c.close()
    with open(out + ".tmp", "w") as f:
        f.write(h.hexdigest() if left == 0 else "short by %d bytes" % left)
    os.rename(out + ".tmp", out)
for port, out in zip(sys.argv[3::2], sys.argv[4::2]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, int(port))); s.listen(1)
    threading.Thread(target=serve, args=(s, out)).start()
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The veth's host end holds the address; the far end has kernel defaults.
    Veth,
    /// The same with GRO on at the far end (NAPI, so the uplink takes XDP redirects).
    VethGro,
    /// A Linux bridge holds the address, the veth is its port.
    Bridge,
    /// A macvlan (mode bridge) on the veth holds the address.
    Macvlan,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Veth, Kind::VethGro, Kind::Bridge, Kind::Macvlan];

    /// Whether the xdp engine keeps the endpoints on the fast path over this uplink (the
    /// tc engine does on every kind).
    fn fast(self) -> bool {
        matches!(self, Kind::Veth | Kind::VethGro)
    }
}

/// A link made in the host namespace (bridge, macvlan), deleted on drop.
struct LinkDev {
    name: String,
}

impl LinkDev {
    /// `ip link add NAME ARGS...`, after removing a leftover of that name.
    fn new(name: &str, args: &[&str]) -> Self {
        let _ = run("ip", &["link", "del", name]);
        let mut full = vec!["link", "add", name];
        full.extend_from_slice(args);
        sh("ip", &full);
        LinkDev { name: name.into() }
    }
}

impl Drop for LinkDev {
    fn drop(&mut self) {
        let _ = run("ip", &["link", "del", &self.name]);
    }
}

/// A folder of the test's own (the blob, the upload results), removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("dovesnap-uplinks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www")).expect("scratch folder");
        let blob = dir.join("www/blob");
        sh(
            "sh",
            &[
                "-c",
                &format!("head -c {BLOB_BYTES} /dev/urandom > {}", blob.display()),
            ],
        );
        Scratch { dir }
    }

    fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    fn blob_sha(&self) -> String {
        first_word(&sh(
            "sha256sum",
            &[self.www().join("blob").to_str().unwrap()],
        ))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The far side of one kind of uplink: `Far` (namespace, veth, who-am-I server) with
/// the address moved to a bridge or macvlan where the kind says so, an HTTP server of
/// the blob and the two upload receivers.
struct Uplink {
    // Dropped first: the bridge or macvlan goes before the veth under it.
    _dev: Option<LinkDev>,
    far: Far,
    /// What `ovs.nat.uplink` names.
    name: String,
    /// Where the receivers write the SHA-256 of what they got, per upload port.
    results: [PathBuf; 3],
}

impl Uplink {
    fn new(kind: Kind, idx: usize, scratch: &Scratch) -> Self {
        let mut far = Far::new("dsu", &format!("10.232.{}", 130 + idx));
        let host = far.uplink.host.clone();
        let host_cidr = format!("{}/24", far.host_ip);
        let dev = match kind {
            Kind::Veth => {
                // The premise: kernel defaults at the far end.
                let k = far.ns.sh("ethtool", &["-k", &far.uplink.peer]);
                assert!(
                    k.contains("generic-receive-offload: off") && k.contains("tx-checksumming: on"),
                    "the far veth end does not have the defaults this test is about: {k}"
                );
                None
            }
            Kind::VethGro => {
                far.ns.sh("ethtool", &["-K", &far.uplink.peer, "gro", "on"]);
                None
            }
            Kind::Bridge => {
                sh("ip", &["addr", "flush", "dev", &host]);
                let br = LinkDev::new("dsubr0", &["type", "bridge"]);
                sh("ip", &["link", "set", &host, "master", &br.name]);
                Some(br)
            }
            Kind::Macvlan => {
                sh("ip", &["addr", "flush", "dev", &host]);
                Some(LinkDev::new(
                    "dsumv0",
                    &["link", &host, "type", "macvlan", "mode", "bridge"],
                ))
            }
        };
        if let Some(d) = &dev {
            sh("ip", &["addr", "add", &host_cidr, "dev", &d.name]);
            sh("ip", &["link", "set", &d.name, "up"]);
        }
        let name = dev.as_ref().map_or(host, |d| d.name.clone());
        far.spawn(&[
            "busybox",
            "httpd",
            "-f",
            "-p",
            &BLOB_PORT.to_string(),
            "-h",
            scratch.www().to_str().expect("utf-8 path"),
        ]);
        let results = UPLOAD_PORTS.map(|p| scratch.dir.join(format!("up-{idx}-{p}")));
        let far_ip = far.far_ip.clone();
        let bytes = BLOB_BYTES.to_string();
        let ports = UPLOAD_PORTS.map(|p| p.to_string());
        let mut receiver = vec!["python3", "-c", RECEIVER, &far_ip, &bytes];
        for (port, out) in ports.iter().zip(&results) {
            receiver.extend([port.as_str(), out.to_str().expect("utf-8 path")]);
        }
        far.spawn(&receiver);
        Uplink {
            _dev: dev,
            far,
            name,
            results,
        }
    }
}

fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or_default().to_string()
}

fn output_text(out: &Output) -> String {
    format!(
        "{}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The SHA-256 of the far side's blob as container `c` downloads it.
fn download_sha(c: &Container, far_ip: &str) -> (String, Output) {
    let out = c.exec(&[
        "sh",
        "-c",
        &format!("timeout 30 wget -q -O - http://{far_ip}:{BLOB_PORT}/blob | sha256sum"),
    ]);
    (first_word(&String::from_utf8_lossy(&out.stdout)), out)
}

/// Uploads 20 MiB of fresh random data from `c` to the receiver on `port`; returns the
/// SHA-256 the container computed and the one the receiver wrote to `result`.
fn upload(c: &Container, far_ip: &str, port: u16, result: &Path) -> (String, String, Output) {
    let out = c.exec(&[
        "sh",
        "-c",
        &format!(
            "head -c {BLOB_BYTES} /dev/urandom > /tmp/up && sha256sum /tmp/up && \
             timeout 30 nc {far_ip} {port} < /tmp/up; rm -f /tmp/up"
        ),
    ]);
    let sent = first_word(&String::from_utf8_lossy(&out.stdout));
    let start = Instant::now();
    let got = loop {
        if let Ok(s) = std::fs::read_to_string(result) {
            break s.trim().to_string();
        }
        if start.elapsed() > Duration::from_secs(15) {
            break "no result from the receiver".to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (sent, got, out)
}

/// Conntrack entries of the host that mention every one of `needles`.
fn conntrack_entries(needles: &[&str]) -> Vec<String> {
    let out = run("conntrack", &["-L"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// Download, upload, ping and published port of one container; returns its address.
fn traffic(
    what: &str,
    up: &Uplink,
    scratch: &Scratch,
    net: &Network,
    c: &Container,
    slot: usize,
    host_port: u16,
) -> String {
    let far = &up.far;
    let c_ip = c.ip(net);
    let (got, out) = download_sha(c, &far.far_ip);
    assert_eq!(
        got,
        scratch.blob_sha(),
        "{what}: 20 MiB download lost or corrupted: {}",
        output_text(&out)
    );
    let (sent, received, out) = upload(c, &far.far_ip, UPLOAD_PORTS[slot], &up.results[slot]);
    assert_eq!(sent.len(), 64, "{what}: no upload: {}", output_text(&out));
    assert_eq!(
        received,
        sent,
        "{what}: 20 MiB upload lost or corrupted: {}",
        output_text(&out)
    );
    let out = c.exec(&["ping", "-c", "2", "-W", "2", &far.far_ip]);
    assert!(
        out.status.success(),
        "{what}: no ping to {}: {}",
        far.far_ip,
        output_text(&out)
    );
    let url = format!("http://{}:{host_port}/", far.host_ip);
    assert_eq!(far.ns.wget(&url), what, "{what}: published port {url}");
    c_ip
}

/// Network `slot` of [`FLAVOURS`] on uplink `idx`: (its name, its subnet, the host port
/// its container's port 80 is published on). The xdp engine's keep the numbers they had
/// before the tc engine's joined them.
fn flavour(idx: usize, slot: usize) -> (String, String, u16) {
    let what = format!("dsup-{idx}-{}", FLAVOURS[slot].0);
    let (net, port) = if slot == TC {
        (70 + idx, usize::from(TC_PORT))
    } else {
        (50 + 2 * idx + slot, 18230 + 2 * idx + slot)
    };
    (what, format!("10.232.{net}.0/24"), port as u16)
}

fn one_kind(plugin: &dovesnap_tests::daemon::Daemon, kind: Kind, idx: usize, scratch: &Scratch) {
    let started = Instant::now();
    let up = Uplink::new(kind, idx, scratch);
    let uplink_opt = format!("ovs.nat.uplink={}", up.name);
    let mut nets = Vec::new();
    let mut containers = Vec::new();
    for (slot, (_, extra)) in FLAVOURS.into_iter().enumerate() {
        let (what, subnet, host_port) = flavour(idx, slot);
        let mut args = vec![
            "-o",
            "mode=nat-fast",
            "-o",
            &uplink_opt,
            "--subnet",
            &subnet,
        ];
        args.extend_from_slice(extra);
        let net = Network::create(&what, &args);
        let publish = format!("{host_port}:80");
        let c = Container::httpd_with(&what, &net, &["-p", &publish], &what);
        nets.push(net);
        containers.push(c);
    }
    let _ = run("conntrack", &["-F"]);
    let s0 = plugin.status();
    let mut ips = Vec::new();
    let mut statuses = Vec::new();
    for slot in 0..FLAVOURS.len() {
        let (what, _, host_port) = flavour(idx, slot);
        ips.push(traffic(
            &what,
            &up,
            scratch,
            &nets[slot],
            &containers[slot],
            slot,
            host_port,
        ));
        statuses.push(plugin.status());
    }
    // s1: after the offload network's transfers, s2: after the other's.
    let (s1, s2) = (&statuses[0], &statuses[1]);
    for slot in 0..2 {
        let (net, ip) = (&nets[slot], ips[slot].as_str());
        let ep = endpoint_at(s2, Some(&net.id()), ip);
        assert!(
            ep.is_object(),
            "{kind:?}: no endpoint {ip} in the status: {s2:#}"
        );
        let reason = ep["kernel_path"].as_str().unwrap_or_default();
        if kind.fast() {
            assert_eq!(
                ep["fast_path"], true,
                "{kind:?}: endpoint {ip} not on the fast path: {s2:#}"
            );
            assert!(
                reason.is_empty(),
                "{kind:?}: endpoint {ip} on the fast path with a kernel_path reason: {s2:#}"
            );
            let t = find_in(&s2["fast_path"]["dataplane"]["endpoints"], "ip", ip);
            assert!(
                t["out_frames"].as_u64().unwrap_or(0) > 0,
                "{kind:?}: the translator carried nothing for {ip}: {s2:#}"
            );
            let left = conntrack_entries(&[ip]);
            assert!(
                left.is_empty(),
                "{kind:?}: netfilter tracked fast-path traffic of {ip}: {left:#?}\n{s2:#}"
            );
        } else {
            assert_ne!(
                ep["fast_path"], true,
                "{kind:?}: endpoint {ip} on the fast path over a generic-XDP uplink: {s2:#}"
            );
            assert!(
                reason.to_ascii_lowercase().contains("generic"),
                "{kind:?}: endpoint {ip}'s kernel_path does not name generic XDP \
                 ({reason:?}): {s2:#}"
            );
            let seen = conntrack_entries(&[ip, &up.far.far_ip]);
            assert!(
                !seen.is_empty(),
                "{kind:?}: no conntrack entry for {ip} -> {}: the kernel path did not \
                 carry it: {s2:#}",
                up.far.far_ip
            );
        }
    }
    if kind.fast() {
        let u = find_in(&s2["fast_path"]["dataplane"]["uplinks"], "name", &up.name);
        let redirect = kind == Kind::VethGro;
        assert_eq!(
            u["redirect_target"].as_bool(),
            Some(redirect),
            "{kind:?}: uplink {} redirect_target: {s2:#}",
            up.name
        );
        // Nothing is offloaded where offload is off.
        let off = &find_in(&s2["fast_path"]["dataplane"]["endpoints"], "ip", &ips[1])["offload"];
        assert_eq!(
            off["out_frames"].as_u64().unwrap_or(0) + off["in_frames"].as_u64().unwrap_or(0),
            0,
            "{kind:?}: ovs.nat.offload=false offloaded: {s2:#}"
        );
        let one_way = |s: &Value| dataplane_counter(s, "offload_one_way");
        if redirect {
            assert_eq!(
                one_way(s2),
                one_way(&s0),
                "{kind:?}: one-way offload on an uplink that takes redirects: {s2:#}"
            );
        } else {
            assert!(
                one_way(s1) > one_way(&s0),
                "{kind:?}: no session offloaded one way on an uplink that takes no \
                 redirects: {s1:#}"
            );
            assert_eq!(
                one_way(s2),
                one_way(s1),
                "{kind:?}: ovs.nat.offload=false counted one-way offloads: {s2:#}"
            );
        }
        assert_eq!(
            xdp_counter(s2, "offload-redirect-failed"),
            0,
            "{kind:?}: XDP redirects failed: {s2:#}"
        );
    }
    tc_carried(kind, &up, &ips[TC], s2, &statuses[TC]);
    if kind == Kind::Bridge {
        // A port added to the bridge later gets the program at the next Join.
        let late = LinkDev::new("dsubrx0", &["type", "veth", "peer", "name", "dsubrx1"]);
        sh("ip", &["link", "set", &late.name, "master", "dsubr0"]);
        let c = Container::idle(&format!("dsup-late-{idx}"), &nets[TC]);
        let s = plugin.status();
        let on = (s["fast_path"]["attached"].as_array().into_iter().flatten())
            .any(|a| a[0] == late.name.as_str() && a[1] == "tcx dovesnap_tc_uplink");
        assert!(
            on,
            "no tc program on the bridge's later port: {:#}",
            s["fast_path"]
        );
        drop(c);
        drop(late);
    }
    // Containers, then networks, then the uplink.
    drop(containers);
    drop(nets);
    drop(up);
    eprintln!("{kind:?}: {:.1?}", started.elapsed());
}

/// Which path carried the tc engine's container `ip` on this uplink, from the status
/// before its traffic and after: the tc programs (sessions made at the SYNs, GSO
/// super-packets rewritten and redirected both ways, the transfers unseen by
/// conntrack), or the kernel's path with the reason in the status.
fn tc_carried(kind: Kind, up: &Uplink, ip: &str, before: &Value, after: &Value) {
    let grew = |name| xdp_counter(after, name) - xdp_counter(before, name);
    let fp = &after["fast_path"];
    let download = format!("dport={BLOB_PORT}");
    let upload = format!("dport={}", UPLOAD_PORTS[TC]);
    let mut tracked: Vec<String> = [download, upload]
        .iter()
        .flat_map(|port| conntrack_entries(&[ip, port]))
        .collect();
    // Nor the far side's half alone, which netfilter would see before the program if it
    // ran first (a bridge's br_netfilter hooks).
    let (far, host) = (&up.far.far_ip, &up.far.host_ip);
    for port in [BLOB_PORT, UPLOAD_PORTS[TC]] {
        let half = format!("{far} dst={host} sport={port} ");
        let original = |l: &String| l.split("src=").nth(1).is_some_and(|o| o.starts_with(&half));
        tracked.extend(conntrack_entries(&[&half]).into_iter().filter(original));
    }
    // On the uplink, and on a bridge's port too: a reply must meet the program before
    // the bridge's netfilter hooks (br_netfilter), whose DNAT of the published port
    // equal to the sessions' external port would take it.
    let mut devices = vec![up.name.as_str()];
    if kind == Kind::Bridge {
        devices.push(&up.far.uplink.host);
    }
    for dev in devices {
        let on = (fp["attached"].as_array().into_iter().flatten())
            .any(|a| a[0] == dev && a[1] == "tcx dovesnap_tc_uplink");
        assert!(on, "{kind:?}: no tc program on {dev}: {fp:#}");
    }
    let names = [
        "tc-created",
        "tc-out",
        "tc-in",
        "tc-gso-frames",
        "tc-gso-segments",
    ];
    let counts: Vec<(&str, u64)> = names.iter().map(|&n| (n, grew(n))).collect();
    eprintln!("{kind:?}, tc engine: {counts:?}");
    // The download's and the upload's connections.
    assert!(
        grew("tc-created") >= 2,
        "{kind:?}: the tc program made no sessions for {ip}: {fp:#}"
    );
    for name in ["tc-out", "tc-in", "tc-gso-frames"] {
        assert!(grew(name) > 0, "{kind:?}: {name} did not grow: {fp:#}");
    }
    assert_eq!(grew("tc-redirect-failed"), 0, "{kind:?}: {fp:#}");
    // No tc endpoint (`ovst<id>`) is said to be on the kernel's path.
    let fallback: Vec<&Value> = (fp["kernel_path"].as_array().into_iter().flatten())
        .filter(|e| e[0].as_str().is_some_and(|p| p.starts_with("ovst")))
        .collect();
    assert!(fallback.is_empty(), "{kind:?}: {fallback:?}");
    assert!(
        tracked.is_empty(),
        "{kind:?}: netfilter tracked the tc engine's transfers of {ip}: {tracked:#?}"
    );
}

#[test]
#[ignore = "needs root, Open vSwitch, XDP, AF_XDP and dockerd (cargo xtask test)"]
fn every_kind_of_uplink_carries_traffic_intact() {
    let (ports, kernel_ports) = (format!("1024-{TC_PORT}"), format!("{TC_PORT}-{TC_PORT}"));
    let plugin = start_plugin_with(&["--nat-ports", &ports, "--nat-kernel-ports", &kernel_ports]);
    let scratch = Scratch::new();
    for (idx, kind) in Kind::ALL.into_iter().enumerate() {
        one_kind(&plugin, kind, idx, &scratch);
    }
    drop(plugin);
    drop(scratch);
}

/// `python3 -c FIXED_PORT_CLIENT PROTO SPORT IP PORT`: one UDP datagram or TCP
/// connection from source port SPORT; prints the who-am-I answer.
const FIXED_PORT_CLIENT: &str = r#"
import socket, sys
proto, sport, ip, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", sport)); s.settimeout(3); s.connect((ip, port))
if proto == "udp":
    s.send(b"who")
print(s.recv(2048).decode().strip())
"#;

/// Runs `python3 -c script args...` in container `c`'s network namespace within
/// `secs` seconds; returns what it printed, trimmed.
fn python_in(c: &Container, secs: &str, script: &str, args: &[&str]) -> String {
    let pid = c.pid();
    let mut full = vec!["-t", &pid, "-n", "timeout", secs, "python3", "-c", script];
    full.extend_from_slice(args);
    let out = run("nsenter", &full);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What the who-am-I server answers `c` from source port `sport` (`udp` or `tcp`).
fn ask_from_port(c: &Container, proto: &str, sport: u16, far: &Far) -> String {
    let sport = sport.to_string();
    python_in(
        c,
        "5",
        FIXED_PORT_CLIENT,
        &[proto, &sport, &far.far_ip, "7000"],
    )
}

#[test]
#[ignore = "needs root, Open vSwitch, XDP, AF_XDP and dockerd (cargo xtask test)"]
fn other_nats_on_the_uplink_keep_their_replies() {
    let plugin = start_plugin();
    let mut far = Far::new("dsc", "10.232.134");
    let uplink_opt = format!("ovs.nat.uplink={}", far.uplink.host);
    let fast = Network::create(
        "dsup-co-fast",
        &[
            "-o",
            "mode=nat-fast",
            "-o",
            "ovs.nat.engine=xdp",
            "-o",
            &uplink_opt,
            "--subnet",
            "10.232.58.0/24",
        ],
    );
    let nat = Network::nat("dsup-co-nat", "10.232.59.0/24");
    let bridge =
        Network::create_with_driver("dsup-co-br", "bridge", &["--subnet", "10.232.60.0/24"]);
    let cf = Container::idle("dsup-co-fast", &fast);
    let cn = Container::idle("dsup-co-nat", &nat);
    let cb = Container::idle("dsup-co-br", &bridge);
    // The nat-fast container talks first: the uplink has the program, and the
    // translator has mapped ports of its range.
    assert!(far.reached_from(&cf), "nat-fast container cut off");
    let status = plugin.status();
    let ep = endpoint_at(&status, Some(&fast.id()), &cf.ip(&fast));
    assert_eq!(ep["fast_path"], true, "{status:#}");
    let before = xdp_counter(&status, "uplink-no-session");
    // The kernel keeps these source ports through its masquerade: replies come back to
    // ports of the translator's range (default 1024-32767) that it does not use. (The
    // faults test `churn_and_sprays_never_pin_the_pool` checks a host socket on a port
    // the translator does use, towards another remote.)
    let expected = format!("from {}", far.host_ip);
    for (c, what, sport) in [(&cn, "ovs nat", 30000), (&cb, "Docker bridge", 30100)] {
        for proto in ["udp", "tcp"] {
            let got = ask_from_port(c, proto, sport, &far);
            assert_eq!(
                got,
                expected,
                "{what} container, {proto} from port {sport}: {}",
                plugin.status()
            );
        }
    }
    let status = plugin.status();
    assert!(
        xdp_counter(&status, "uplink-no-session") >= before + 4,
        "the replies did not pass the uplink's program untouched: {status:#}"
    );
    // And the translator's own flows still work beside them.
    assert!(
        far.reached_from(&cf),
        "nat-fast container cut off afterwards"
    );
    let seen = ask_from_port(&cf, "udp", 65000, &far);
    assert_eq!(
        seen,
        expected,
        "nat-fast container, udp: {}",
        plugin.status()
    );
    big_datagrams(&plugin, &mut far, (&cf, &cf.ip(&fast)), &cn);
    drop((cf, cn, cb));
    drop((fast, nat, bridge));
}

/// A status counter reader (`xdp_counter`, `translator_counter`).
type Counter = fn(&Value, &str) -> u64;

/// Port of the far side's big-datagram server.
const BIG_PORT: u16 = 7100;

/// Python that makes `big`: the 65,000 bytes every big datagram carries.
const BIG: &str = "import hashlib, socket, sys\nbig = b''.join(hashlib.sha256(b'%d' % i).digest() for i in range(2032))[:65000]\n";

/// After [`BIG`], `python3 -c` with `IP PORT`: answers `big?` with one datagram of
/// `big`, any other datagram with its length and SHA-256.
const BIG_SERVER: &str = r#"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((sys.argv[1], int(sys.argv[2])))
while True:
    d, a = u.recvfrom(65535)
    u.sendto(big if d == b"big?" else ("%d %s" % (len(d), hashlib.sha256(d).hexdigest())).encode(), a)
"#;

/// After [`BIG`], `python3 -c` with `IP PORT down|up`: `down` asks for the big datagram
/// and prints its length and SHA-256; `up` sends `big` and prints what the server
/// says it got.
const BIG_CLIENT: &str = r#"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); s.connect((sys.argv[1], int(sys.argv[2])))
if sys.argv[3] == "down":
    s.send(b"big?"); d = s.recv(65535); print(len(d), hashlib.sha256(d).hexdigest())
else:
    s.send(big); print(s.recv(2048).decode())
"#;

/// One big-datagram exchange from container `c`'s namespace (`down` or `up`).
fn big_exchange(c: &Container, far: &Far, way: &str) -> String {
    let client = format!("{BIG}{BIG_CLIENT}");
    let port = BIG_PORT.to_string();
    python_in(c, "8", &client, &[&far.far_ip, &port, way])
}

/// 65,000-byte UDP datagrams, fragmented by the sender with the kernel's defaults: the
/// nat-fast container gets one from the far side and sends one, both intact and every
/// fragment through the translator (none through netfilter); the kernel-nat container
/// beside it gets one through the kernel, its fragments left alone by the uplink.
fn big_datagrams(
    plugin: &dovesnap_tests::daemon::Daemon,
    far: &mut Far,
    (cf, cf_ip): (&Container, &str),
    cn: &Container,
) {
    far.spawn(&[
        "python3",
        "-c",
        &format!("{BIG}{BIG_SERVER}"),
        &far.far_ip.clone(),
        &BIG_PORT.to_string(),
    ]);
    let want = sh(
        "python3",
        &[
            "-c",
            &format!("{BIG}print(len(big), hashlib.sha256(big).hexdigest())"),
        ],
    );
    let want = want.trim();
    // 65,008 bytes of UDP in 1,480-byte pieces.
    const PIECES: u64 = 44;
    let before = plugin.status();
    // The reply to a small question, then a datagram out.
    for way in ["down", "up"] {
        let got = big_exchange(cf, far, way);
        assert_eq!(got, want, "nat-fast container, {way}: {}", plugin.status());
    }
    let after = plugin.status();
    let counts: Vec<(&str, u64)> = [
        (xdp_counter as Counter, "uplink-fragment"),
        (xdp_counter, "endpoint-fragment"),
        (translator_counter, "fragments_inbound"),
        (translator_counter, "fragments_outbound"),
        (xdp_counter, "uplink-fragment-kernel"),
        (xdp_counter, "endpoint-fragment-kernel"),
        (translator_counter, "drop_fragment_without_head"),
    ]
    .into_iter()
    .map(|(f, name)| (name, f(&after, name) - f(&before, name)))
    .collect();
    eprintln!("big datagrams: {counts:?}");
    // Every fragment steered and translated both ways, none left to the kernel.
    for (i, (name, n)) in counts.iter().enumerate() {
        let ok = if i < 4 { *n >= PIECES } else { *n == 0 };
        assert!(ok, "{name}: {n}: {after:#}");
    }
    let port = format!("dport={BIG_PORT}");
    let left = conntrack_entries(&[cf_ip, &port]);
    assert!(
        left.is_empty(),
        "netfilter saw the big datagrams: {left:#?}"
    );
    // The kernel's NAT beside it: its reply's fragments pass the uplink untouched.
    let before = plugin.status();
    assert_eq!(
        big_exchange(cn, far, "down"),
        want,
        "kernel-nat container: the 65,000-byte reply: {}",
        plugin.status()
    );
    let after = plugin.status();
    let grew = |name| xdp_counter(&after, name) - xdp_counter(&before, name);
    assert!(grew("uplink-fragment-kernel") >= PIECES - 1, "{after:#}");
    assert_eq!(grew("uplink-fragment"), 0, "{after:#}");
}
