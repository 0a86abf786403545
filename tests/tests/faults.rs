//! Fault tests: real dockerd, real plugin, real OVS, and something breaking under them
//! (Open vSwitch restarted, dockerd restarted, a veth or a bridge deleted behind the
//! plugin's back, the translator's session table full, garbage frames). After each the
//! plugin must converge back, running containers keep or regain connectivity, nothing
//! leaks, and the test prints how long recovery took (`recovery: ...` lines).
//!
//! Restarting ovsdb-server, ovs-vswitchd or dockerd disrupts the whole host for a few
//! seconds: these tests run under the shared lock like every privileged test, and a
//! guard starts the services again (the way `cargo xtask setup` does) even when the
//! test fails.

use std::time::{Duration, Instant};

use dovesnap_tests::daemon::Daemon;
use dovesnap_tests::docker::{
    docker, docker_ok, start_plugin_with, udp_ask, Container, Network, UDP_PONG,
};
use dovesnap_tests::far::Far;
use dovesnap_tests::host_services::{
    docker_ready, start_dockerd, start_ovsdb, start_vswitchd, stop_dockerd, stop_ovs_daemon,
    DockerRestore, OvsRestore,
};
use dovesnap_tests::status::{
    counter_in, endpoint_at, endpoints, find_in, translator_counter as translator,
};
use dovesnap_tests::{host_veths, ovs_bridges, require_root, run, sh};

/// The plugin with a fast reconciler, so that repairs show within a test's patience.
fn start_plugin() -> Daemon {
    start_plugin_with(&["--reconcile-interval", "1"])
}

/// Polls `ok` every 100 ms until it holds; returns how long that took, or panics
/// after `limit` saying `what` did not recover.
fn recovery(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "{what} did not recover within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    eprintln!("recovery: {what}: {} ms", took.as_millis());
    took
}

/// One ping with a one-second wait, from inside the container.
fn ping_once(c: &Container, addr: &str) -> bool {
    c.exec(&["ping", "-c", "1", "-W", "1", addr])
        .status
        .success()
}

/// Ports of OVS bridge `bridge` (empty when it is gone).
fn ovs_ports(bridge: &str) -> Vec<String> {
    let out = run("ovs-vsctl", &["list-ports", bridge]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Host veths dovesnap made (`ovsv...`).
fn dovesnap_veths() -> Vec<String> {
    host_veths()
        .into_iter()
        .filter(|v| v.starts_with("ovsv") || v.starts_with("ovsc"))
        .collect()
}

/// The bridge of network `id` in `dovesnap status --json`.
fn bridge_of(plugin: &Daemon, id: &str) -> String {
    let status = plugin.status();
    find_in(&status["networks"], "id", id)["bridge"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("network {id} not in status: {status:#}"))
}

/// The repairs the reconciler counted, by kind.
fn repairs(plugin: &Daemon, what: &str) -> u64 {
    counter_in(&plugin.status()["repairs"], what)
}

/// Waits for `n` dovesnap veths (a deleted endpoint's go just after its
/// DeleteEndpoint's answer), panicking with them if that does not come.
fn veths_settle_at(n: usize) {
    let settled =
        dovesnap_tests::eventually(Duration::from_secs(3), || dovesnap_veths().len() == n);
    assert!(settled, "not {n} veths: {:?}", dovesnap_veths());
}

/// Nothing of dovesnap's is left: no bridge of `bridges`, no dovesnap veth.
fn assert_no_leak(bridges: &[String]) {
    let left: Vec<String> = ovs_bridges()
        .into_iter()
        .filter(|b| bridges.contains(b))
        .collect();
    assert!(left.is_empty(), "bridges left behind: {left:?}");
    let veths = dovesnap_veths();
    assert!(veths.is_empty(), "veths left behind: {veths:?}");
}

#[test]
#[ignore = "needs root, Open vSwitch and dockerd; restarts the host's OVS (cargo xtask test)"]
fn ovs_restarts_under_the_plugin() {
    let plugin = start_plugin();
    let far = Far::new("dsx", "10.233.100");
    let flat = Network::flat("dsflt-ovs-flat", "10.233.1.0/24");
    let nat = Network::nat("dsflt-ovs-nat", "10.233.2.0/24");
    let a = Container::idle("dsflt-ovs-a", &flat);
    let b = Container::idle("dsflt-ovs-b", &flat);
    let n = Container::idle("dsflt-ovs-n", &nat);
    let b_ip = b.ip(&flat);
    assert!(a.ping(&b_ip), "flat L2 before the fault");
    assert!(far.reached_from(&n), "nat outbound before the fault");
    let bridges = vec![
        bridge_of(&plugin, &flat.id()),
        bridge_of(&plugin, &nat.id()),
    ];

    // ovs-vswitchd: the userspace datapath lives in the process, so its bridges'
    // internal ports (and the nat gateway's address on them) vanish with it; the new
    // process rebuilds bridges and ports from the database, and the plugin's
    // reconciler puts the gateway address back.
    // Declared after the fixtures, so dropped before them: they clean up through OVS.
    let _restore = OvsRestore;
    stop_ovs_daemon("ovs-vswitchd");
    let down = Instant::now();
    start_vswitchd();
    recovery(
        "ovs-vswitchd restart: flat L2",
        Duration::from_secs(30),
        || ping_once(&a, &b_ip),
    );
    recovery(
        "ovs-vswitchd restart: nat outbound",
        Duration::from_secs(30),
        || far.reached_from(&n),
    );
    eprintln!(
        "recovery: ovs-vswitchd restart: both paths back {} ms after the exit",
        down.elapsed().as_millis()
    );
    // The plugin still serves Docker: a new container joins and talks.
    let c = Container::idle("dsflt-ovs-c", &flat);
    assert!(c.ping(&b_ip), "a container created after the restart");

    // ovsdb-server: ovs-vswitchd keeps forwarding and reconnects; the plugin's OVSDB
    // client reconnects on its next call.
    stop_ovs_daemon("ovsdb-server");
    let down = Instant::now();
    start_ovsdb();
    recovery(
        "ovsdb-server restart: flat L2",
        Duration::from_secs(30),
        || ping_once(&a, &b_ip),
    );
    let d = Container::idle("dsflt-ovs-d", &flat);
    assert!(
        d.ping(&b_ip),
        "a container created after the ovsdb-server restart"
    );
    assert!(
        far.reached_from(&n),
        "nat outbound after the ovsdb-server restart"
    );
    eprintln!(
        "recovery: ovsdb-server restart: create/join served {} ms after the exit",
        down.elapsed().as_millis()
    );

    // Exactly the live endpoints: four containers on flat, one on nat.
    let flat_ports = ovs_ports(&bridges[0]);
    assert_eq!(flat_ports.len(), 4, "flat bridge ports: {flat_ports:?}");
    assert_eq!(ovs_ports(&bridges[1]).len(), 1);
    veths_settle_at(5);

    drop((a, b, c, d, n));
    drop((flat, nat));
    assert_no_leak(&bridges);
    drop(plugin);
    drop(far);
}

// ---- deleted behind the plugin's back ------------------------------------------------

/// The OVS port (veth host end) of the endpoint with address `ip`, and whether it is
/// on the nat-fast path.
fn port_of(plugin: &Daemon, ip: &str) -> (String, bool) {
    let status = plugin.status();
    let e = endpoint_at(&status, None, ip);
    assert!(!e.is_null(), "no endpoint with address {ip}: {status:#}");
    (
        e["port"].as_str().unwrap_or_default().to_string(),
        e["fast_path"] == true,
    )
}

#[test]
#[ignore = "needs root, Open vSwitch, XDP and dockerd (cargo xtask test)"]
fn veths_and_bridges_deleted_behind_the_plugins_back_come_back() {
    let plugin = start_plugin();
    let far = Far::new("dsx", "10.233.102");
    let flat = Network::flat("dsflt-del-flat", "10.233.5.0/24");
    let nat = Network::nat("dsflt-del-nat", "10.233.6.0/24");
    let fast = Network::nat_fast("dsflt-del-fast", &far.uplink.host, "10.233.7.0/24");
    let a = Container::idle("dsflt-del-a", &flat);
    let b = Container::idle("dsflt-del-b", &flat);
    let n = Container::idle("dsflt-del-n", &nat);
    let f = Container::idle("dsflt-del-f", &fast);
    let (a_ip, b_ip, f_ip) = (a.ip(&flat), b.ip(&flat), f.ip(&fast));
    assert!(a.ping(&b_ip), "flat L2 before the fault");
    assert!(far.reached_from(&n), "nat outbound before the fault");
    assert!(far.reached_from(&f), "nat-fast outbound before the fault");
    let bridges = vec![
        bridge_of(&plugin, &flat.id()),
        bridge_of(&plugin, &nat.id()),
        bridge_of(&plugin, &fast.id()),
    ];

    // A container's veth deleted (both ends go): re-created into the container with its
    // address and MAC, its OVS port made again.
    let (a_port, _) = port_of(&plugin, &a_ip);
    sh("ip", &["link", "del", &a_port]);
    // The reconciler ticks every second: a ping that gets through was answered after
    // the repair, which then shows in its counter.
    assert!(
        !ping_once(&a, &b_ip) || repairs(&plugin, "veth") >= 1,
        "the fault did not cut the container off"
    );
    recovery("veth deleted: flat L2", Duration::from_secs(15), || {
        ping_once(&a, &b_ip)
    });
    assert!(repairs(&plugin, "veth") >= 1);
    let inside = String::from_utf8_lossy(&a.exec(&["ip", "-o", "-4", "addr"]).stdout).into_owned();
    assert!(inside.contains(&format!("{a_ip}/24")), "{inside}");
    assert!(
        String::from_utf8_lossy(&a.exec(&["ip", "route"]).stdout).contains("default via"),
        "no default route after the repair"
    );

    // The same on nat-fast: the endpoint goes back on the fast path.
    let (f_port, on_fast) = port_of(&plugin, &f_ip);
    assert!(on_fast, "nat-fast endpoint not on the fast path");
    sh("ip", &["link", "del", &f_port]);
    recovery(
        "veth deleted: nat-fast outbound",
        Duration::from_secs(15),
        || far.reached_from(&f),
    );
    recovery(
        "veth deleted: nat-fast endpoint back on the fast path",
        Duration::from_secs(15),
        || port_of(&plugin, &f_ip).1,
    );

    // A bridge deleted from OVSDB (its ports with it): made again with its ports.
    sh("ovs-vsctl", &["del-br", &bridges[0]]);
    recovery("bridge deleted: flat L2", Duration::from_secs(15), || {
        ping_once(&a, &b_ip)
    });
    assert!(repairs(&plugin, "bridge") >= 1);
    // A nat bridge: its internal port (the gateway) goes too; the address comes back.
    sh("ovs-vsctl", &["del-br", &bridges[1]]);
    recovery(
        "bridge deleted: nat outbound",
        Duration::from_secs(15),
        || far.reached_from(&n),
    );
    assert!(repairs(&plugin, "gateway") >= 1);
    // A nat-fast bridge: the fast path follows the new bridge port.
    sh("ovs-vsctl", &["del-br", &bridges[2]]);
    recovery(
        "bridge deleted: nat-fast outbound",
        Duration::from_secs(15),
        || far.reached_from(&f) && port_of(&plugin, &f_ip).1,
    );
    eprintln!("{}", plugin.status_text());

    // Exactly what the live containers need, and the plugin still serves Docker.
    assert_eq!(
        ovs_ports(&bridges[0]).len(),
        2,
        "{:?}",
        ovs_ports(&bridges[0])
    );
    assert_eq!(ovs_ports(&bridges[1]).len(), 1);
    assert_eq!(ovs_ports(&bridges[2]).len(), 1);
    veths_settle_at(4);
    let c = Container::idle("dsflt-del-c", &flat);
    assert!(c.ping(&a_ip), "a new container reaches the repaired one");

    drop((a, b, c, n, f));
    drop((flat, nat, fast));
    assert_no_leak(&bridges);
    drop(plugin);
    drop(far);
}

// ---- the translator: a full session table, garbage frames ---------------------------

/// Sends one datagram from a fixed source port (`argv[3]`) to `argv[1]:argv[2]` and
/// prints the answer (empty on a timeout): the same 5-tuple, so the same session.
const UDP_FIXED: &str = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',int(sys.argv[3])))\ns.settimeout(2)\ns.sendto(b'x',(sys.argv[1],int(sys.argv[2])))\ntry:\n    print(s.recv(2048).decode().strip())\nexcept OSError:\n    pass";

/// Holds a short conversation (a datagram, its answer, a second datagram and its
/// answer) from each of `argv[3]` source ports, `argv[4]` and up, with
/// `argv[1]:argv[2]` (one new translator session each, assured like a conntrack
/// entry), waiting up to 0.3 s for each answer, so every session is a conversation
/// before the next is made. Fixed ports: no flow can land on an existing session.
const UDP_SPRAY: &str = "import socket,sys\nfor i in range(int(sys.argv[3])):\n    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n    s.bind(('0.0.0.0',int(sys.argv[4])+i))\n    s.settimeout(0.3)\n    for m in (b'x', b'y'):\n        s.sendto(m,(sys.argv[1],int(sys.argv[2])))\n        try:\n            s.recv(2048)\n        except OSError:\n            break\n    s.close()";

/// Garbage frames from a container (AF_PACKET on eth0), addressed to the gateway's MAC
/// and routed destinations so that the XDP program steers what it can parse to the
/// translator: bad checksums, truncated and inconsistent headers, fragments, TTL 1,
/// other protocols, unhandled ICMP, random bytes. argv: gateway MAC, own MAC, own IP,
/// destination IP, rounds.
const GARBAGE: &str = r#"
import random, socket, struct, sys
gw, me, sip, dip, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
mac = lambda m: bytes(int(x, 16) for x in m.split(':'))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
eth = mac(gw) + mac(me) + b'\x08\x00'
r = random.Random(7)
def csum(b):
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
def ip(proto, payload, ihl=5, ttl=64, frag=0, good=True, tot=None):
    h = struct.pack('!BBHHHBBH4s4s', 0x40 | ihl, 0, tot if tot is not None else 20 + len(payload),
                    r.randrange(65536), frag, ttl, proto, 0, socket.inet_aton(sip), socket.inet_aton(dip))
    if good: h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
    return h + payload
udp = lambda sport: struct.pack('!HHHH', sport, 7000, 12, 0) + b'abcd'
kinds = [
    lambda: ip(17, udp(40000), good=False),
    lambda: ip(6, b'\x9c\x40\x1b'),
    lambda: ip(17, b'\x9c\x40'),
    lambda: ip(1, b'\x08'),
    lambda: ip(6, bytes(20), ihl=3),
    lambda: ip(6, bytes(20), ihl=15),
    lambda: ip(17, bytes(8), tot=1400),
    lambda: ip(17, bytes(8), tot=10),
    lambda: ip(17, udp(40001), frag=0x2000),
    lambda: ip(17, udp(40002), ttl=1),
    lambda: ip(47, bytes(8)),
    lambda: ip(1, bytes([42, 0, 0, 0]) + bytes(4)),
    lambda: ip(1, bytes([3, 3, 0, 0, 0, 0, 0, 0]) + bytes(r.randrange(0, 40))),
    lambda: ip(6, struct.pack('!HHIIBBHHH', 40003, 7000, 1, 0, 0x20, 0xff, 512, 0, 0)),
    lambda: bytes(r.randrange(256) for _ in range(r.randrange(1, 80))),
]
n = 0
for _ in range(rounds):
    for k in kinds:
        try:
            s.send(eth + k()); n += 1
        except OSError:
            pass
print(n)
"#;

/// Every `drop_*` translator counter, summed over uplinks.
fn translator_drops(status: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for u in status["fast_path"]["dataplane"]["uplinks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for p in u["counters"].as_array().into_iter().flatten() {
            if let (Some(k), Some(v)) = (p[0].as_str(), p[1].as_u64()) {
                if k.starts_with("drop_") {
                    *out.entry(k.to_string()).or_default() += v;
                }
            }
        }
    }
    out
}

fn sessions(status: &serde_json::Value) -> u64 {
    status["fast_path"]["dataplane"]["uplinks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["sessions"].as_u64())
        .sum()
}

const TABLE: u64 = 32;

/// A plugin with the given flags, a far namespace behind the uplink, and two
/// containers (`c`, and `hog` which fills the table) on one nat-fast network. Fields
/// drop in this order: containers, network, plugin, far side.
struct TwoOnFast {
    c: Container,
    hog: Container,
    fast: Network,
    plugin: Daemon,
    far: Far,
}

impl TwoOnFast {
    fn new(name: &str, far_prefix: &str, subnet: &str, plugin_args: &[&str]) -> Self {
        let plugin = start_plugin_with(plugin_args);
        let far = Far::new("dsx", far_prefix);
        let fast = Network::nat_fast(&format!("dsflt-{name}-fast"), &far.uplink.host, subnet);
        TwoOnFast {
            c: Container::idle(&format!("dsflt-{name}-c"), &fast),
            hog: Container::idle(&format!("dsflt-{name}-hog"), &fast),
            fast,
            plugin,
            far,
        }
    }
}

impl TwoOnFast {
    /// Both containers open a new UDP flow (from source port `sport`) and a new TCP
    /// connection to the far side, masqueraded to the uplink's address.
    fn new_flows_work(&self, sport: &str, when: &str) {
        let from_host = format!("from {}", self.far.host_ip);
        for (c, who) in [(&self.c, "c"), (&self.hog, "hog")] {
            assert_eq!(
                python_in(&c.pid(), UDP_FIXED, &[&self.far.far_ip, "7000", sport]),
                from_host,
                "{who} cannot open UDP {when}"
            );
            assert!(self.far.reached_from(c), "{who} cannot open TCP {when}");
        }
    }
}

/// Runs a python3 script in the network namespace of process `pid` (60 s at most);
/// returns its trimmed stdout.
fn python_in(pid: &str, script: &str, args: &[&str]) -> String {
    let mut full = vec!["-t", pid, "-n", "timeout", "60", "python3", "-c", script];
    full.extend_from_slice(args);
    String::from_utf8_lossy(&run("nsenter", &full).stdout)
        .trim()
        .to_string()
}

#[test]
#[ignore = "needs root, Open vSwitch, XDP, AF_XDP and dockerd (cargo xtask test)"]
fn translator_survives_a_full_table_and_garbage() {
    require_root();
    let t = TwoOnFast::new(
        "tr",
        "10.233.103",
        "10.233.8.0/24",
        &["--nat-max-sessions", &TABLE.to_string()],
    );
    let c_pid = t.c.pid();
    let in_c = |script: &str, args: &[&str]| python_in(&c_pid, script, args);
    let from_host = format!("from {}", t.far.host_ip);
    // A conversation of c's (two exchanges on one session: assured) made before the
    // table fills.
    for _ in 0..2 {
        assert_eq!(
            in_c(UDP_FIXED, &[&t.far.far_ip, "7000", "40100"]),
            from_host
        );
    }

    // The hog fills the table with UDP conversations, which are not evicted before
    // they time out (RFC 4787; a lone question and its answer would be): new flows
    // are refused and counted, the daemon keeps going, established sessions keep
    // working.
    let before = t.plugin.status();
    python_in(
        &t.hog.pid(),
        UDP_SPRAY,
        &[&t.far.far_ip, "7000", "40", "20000"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let full = t.plugin.status();
    assert_eq!(
        sessions(&full),
        TABLE,
        "{:#}",
        full["fast_path"]["dataplane"]
    );
    let exhausted =
        translator(&full, "drop_ports_exhausted") - translator(&before, "drop_ports_exhausted");
    assert!(
        exhausted > 0,
        "no refusal counted: {:#}",
        full["fast_path"]["dataplane"]
    );
    assert_eq!(
        in_c(UDP_FIXED, &[&t.far.far_ip, "7000", "40100"]),
        from_host,
        "an established session stopped working under a full table"
    );
    // The hog goes (its sessions with its endpoint): new flows work again at once.
    drop(t.hog);
    recovery(
        "full session table: new flows after the hog left",
        Duration::from_secs(15),
        || t.far.reached_from(&t.c),
    );

    // Unanswered UDP makes room (a scan, or one-way traffic to a silent peer): c
    // sprays a port the far side drops, filling the table, and a new conversation
    // still gets through by evicting the oldest unanswered session.
    t.far.ns.sh(
        "iptables",
        &["-A", "INPUT", "-p", "udp", "--dport", "7001", "-j", "DROP"],
    );
    let before = t.plugin.status();
    in_c(UDP_SPRAY, &[&t.far.far_ip, "7001", "40", "21000"]);
    assert_eq!(
        in_c(UDP_FIXED, &[&t.far.far_ip, "7000", "40101"]),
        from_host,
        "a new flow was refused while unanswered sessions filled the table"
    );
    let after = t.plugin.status();
    let evicted = translator(&after, "sessions_evicted") - translator(&before, "sessions_evicted");
    let refused =
        translator(&after, "drop_ports_exhausted") - translator(&before, "drop_ports_exhausted");
    assert!(
        evicted >= 8 && refused == 0,
        "evicted {evicted}, refused {refused}: {:#}",
        after["fast_path"]["dataplane"]
    );

    // Evictable sessions (closed TCP) make room: 60 connections through a 32-slot table
    // all succeed, and the evictions are counted.
    let before = t.plugin.status();
    let out = t.c.exec(&[
        "sh",
        "-c",
        &format!(
            "for i in $(seq 1 60); do timeout 3 nc {} 7000; done",
            t.far.far_ip
        ),
    ]);
    let answered = String::from_utf8_lossy(&out.stdout)
        .matches(&from_host)
        .count();
    assert_eq!(answered, 60, "connections lost while evicting");
    let after = t.plugin.status();
    let evicted = translator(&after, "sessions_evicted") - translator(&before, "sessions_evicted");
    assert!(
        evicted > 0,
        "no eviction counted: {:#}",
        after["fast_path"]["dataplane"]
    );
    eprintln!("evicted {evicted} sessions for 60 connections through {TABLE} slots");

    // Garbage: the translator drops what it cannot translate, by reason; nothing
    // crashes and legit traffic goes on.
    let gw_mac = std::fs::read_to_string(format!(
        "/sys/class/net/{}/address",
        bridge_of(&t.plugin, &t.fast.id())
    ))
    .expect("bridge MAC");
    let my_mac = String::from_utf8_lossy(&t.c.exec(&["cat", "/sys/class/net/eth0/address"]).stdout)
        .trim()
        .to_string();
    let c_ip = t.c.ip(&t.fast);
    let before = t.plugin.status();
    let started = Instant::now();
    let sent = in_c(
        GARBAGE,
        &[gw_mac.trim(), &my_mac, &c_ip, &t.far.far_ip, "400"],
    );
    eprintln!(
        "garbage: {sent} frames in {} ms",
        started.elapsed().as_millis()
    );
    assert!(sent.parse::<u64>().unwrap_or(0) >= 5000, "sent {sent}");
    let after = t.plugin.status();
    let (b, a) = (translator_drops(&before), translator_drops(&after));
    let grew: Vec<String> = a
        .iter()
        .filter(|(k, v)| **v > b.get(*k).copied().unwrap_or(0))
        .map(|(k, v)| format!("{k}+{}", v - b.get(k).copied().unwrap_or(0)))
        .collect();
    eprintln!("translator drops by reason: {grew:?}");
    assert!(grew.len() >= 2, "garbage not dropped by reason: {a:?}");
    eprintln!("{}", t.plugin.status_text());
    recovery("garbage flood: legit TCP", Duration::from_secs(5), || {
        t.far.reached_from(&t.c)
    });
    assert_eq!(
        in_c(UDP_FIXED, &[&t.far.far_ip, "7000", "40101"]),
        from_host
    );
    assert!(t.c.ping(&t.far.far_ip), "ICMP after the garbage");
    assert!(port_of(&t.plugin, &c_ip).1, "c fell off the fast path");
}

/// `--nat-max-sessions-per-endpoint`: a container that would fill the table holds only
/// its share; the others still start conversations.
#[test]
#[ignore = "needs root, Open vSwitch, XDP, AF_XDP and dockerd (cargo xtask test)"]
fn one_container_cannot_fill_the_table_for_the_others() {
    const SHARE: u64 = 20;
    require_root();
    let t = TwoOnFast::new(
        "share",
        "10.233.104",
        "10.233.9.0/24",
        &[
            "--nat-max-sessions",
            &TABLE.to_string(),
            "--nat-max-sessions-per-endpoint",
            &SHARE.to_string(),
        ],
    );
    let from_host = format!("from {}", t.far.host_ip);
    // The hog tries 40 conversations (more than the whole table): it gets its share,
    // the rest is refused by reason.
    python_in(
        &t.hog.pid(),
        UDP_SPRAY,
        &[&t.far.far_ip, "7000", "40", "20000"],
    );
    let status = t.plugin.status();
    assert_eq!(
        sessions(&status),
        SHARE,
        "{:#}",
        status["fast_path"]["dataplane"]
    );
    let refused = translator(&status, "drop_endpoint_session_limit");
    assert!(
        refused >= 40 - SHARE,
        "refused {refused}: {:#}",
        status["fast_path"]["dataplane"]
    );
    assert_eq!(translator(&status, "drop_ports_exhausted"), 0);
    // c still starts new conversations, UDP and TCP.
    assert_eq!(
        python_in(&t.c.pid(), UDP_FIXED, &[&t.far.far_ip, "7000", "40100"]),
        from_host
    );
    assert!(
        t.far.reached_from(&t.c),
        "c's new TCP connection was refused"
    );
    eprintln!("hog held {SHARE} of {TABLE} sessions, {refused} of its flows refused; c unaffected");
}

/// Asks `argv[3]` questions of `argv[1]:argv[2]` over UDP, each from a fresh source
/// port as resolvers do, one at a time (up to 1 s for each answer); prints how many
/// were answered.
const DNS_CHURN: &str = "import socket,sys\nn=0\nfor i in range(int(sys.argv[3])):\n    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n    s.settimeout(1)\n    s.sendto(b'q',(sys.argv[1],int(sys.argv[2])))\n    try:\n        s.recv(2048); n+=1\n    except OSError:\n        pass\n    s.close()\nprint(n)";

/// From the far side, with raw sockets: `argv[5]` UDP datagrams to `argv[1]:argv[3]`
/// and as many TCP SYNs to `argv[1]:argv[4]`, each pair from a different source port
/// of `argv[2]` (cycling through 64,000 of them).
const PUBLISHED_SPRAY: &str = r#"
import socket, struct, sys
dst, src, uport, tport, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
S, D = socket.inet_aton(src), socket.inet_aton(dst)
def csum(b):
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('!%dH' % (len(b) // 2), b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
def ip(proto, l4):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, S, D)
    return h[:10] + struct.pack('!H', csum(h)) + h[12:] + l4
def l4sum(proto, seg):
    return csum(S + D + struct.pack('!BBH', 0, proto, len(seg)) + seg)
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(n):
    sp = 1024 + i % 64000
    u = struct.pack('!HHHH', sp, uport, 12, 0) + b'spry'
    u = u[:6] + struct.pack('!H', l4sum(17, u) or 0xffff) + u[8:]
    r.sendto(ip(17, u), (dst, 0))
    t = struct.pack('!HHIIBBHHH', sp, tport, i, 0, 5 << 4, 0x02, 65535, 0, 0)
    t = t[:16] + struct.pack('!H', l4sum(6, t)) + t[18:]
    r.sendto(ip(6, t), (dst, 0))
"#;

/// A TCP server for many concurrent connections (epoll): greets each with `k`, echoes
/// what it receives, holds the connection until the client closes it.
const HOLD_SERVER: &str = r#"
import resource, selectors, socket, sys
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", int(sys.argv[1]))); l.listen(4096); l.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(l, selectors.EVENT_READ)
while True:
    for k, _ in sel.select():
        s = k.fileobj
        if s is l:
            while True:
                try:
                    c, _ = l.accept()
                except BlockingIOError:
                    break
                c.setblocking(False); c.send(b"k"); sel.register(c, selectors.EVENT_READ)
        else:
            try:
                d = s.recv(64)
            except OSError:
                d = b""
            if d:
                s.send(d)
            else:
                sel.unregister(s); s.close()
"#;

/// Opens `argv[3]` TCP connections to `argv[1]:argv[2]` and keeps them all open; prints
/// `open N` (N: those the server greeted), waits for a line on stdin, then sends a
/// byte on every one and prints `alive N` (N: those that echoed it).
const HOLD_CLIENT: &str = r#"
import resource, socket, sys
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ss = [socket.create_connection((dst, port), 5) for _ in range(n)]
def count(b):
    ok = 0
    for s in ss:
        s.settimeout(5)
        try:
            ok += s.recv(1) == b
        except OSError:
            pass
    return ok
print("open", count(b"k"), flush=True)
sys.stdin.readline()
for s in ss:
    s.sendall(b"p")
print("alive", count(b"p"), flush=True)
"#;

/// A process in the background, killed on drop.
struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The port pool and the table under ordinary churn and hostile traffic, with the
/// default limits: a resolver's 20,000 questions from fresh source ports (lone
/// exchanges, evictable like conntrack's unassured entries), 10,000 concurrent TCP
/// connections from one container (while a host socket bound to one of their external
/// ports keeps its own traffic from another remote), then 70,000 datagrams and
/// 70,000 SYNs from distinct source ports at a container's published ports, each
/// answered by it (the far side drops its own RSTs and ICMP errors, so nothing closes
/// them). Afterwards both containers open UDP and TCP flows at once, and the published
/// ports answer new conversations.
#[test]
#[ignore = "needs root, Open vSwitch, XDP, AF_XDP and dockerd (cargo xtask test)"]
fn churn_and_sprays_never_pin_the_pool() {
    const QUESTIONS: u64 = 20_000;
    const CONNECTIONS: u64 = 10_000;
    const SPRAY: u32 = 70_000;
    require_root();
    let mut t = TwoOnFast::new("pool", "10.233.105", "10.233.10.0/24", &[]);
    t.far.spawn(&["python3", "-c", UDP_PONG, "53"]);
    let started = Instant::now();
    let answered = python_in(
        &t.c.pid(),
        DNS_CHURN,
        &[&t.far.far_ip, "53", &QUESTIONS.to_string()],
    );
    let churn_time = started.elapsed();
    let status = t.plugin.status();
    assert_eq!(
        answered,
        QUESTIONS.to_string(),
        "questions lost: {:#}",
        status["fast_path"]["dataplane"]
    );
    assert_eq!(
        translator(&status, "drop_ports_exhausted"),
        0,
        "{:#}",
        status["fast_path"]["dataplane"]
    );
    let ready = Instant::now();
    t.new_flows_work("40100", "after the resolver's churn");
    eprintln!(
        "{QUESTIONS} questions from fresh ports in {:.1?}; new flows {:.0?} after",
        churn_time,
        ready.elapsed()
    );

    // Many concurrent connections from one container (the kernel path's count, not
    // 4,536): c holds CONNECTIONS TCP connections to one far server at once, all
    // greeted; meanwhile both containers still open new flows at once.
    t.far.spawn(&["python3", "-c", HOLD_SERVER, "7100"]);
    let started = Instant::now();
    let mut client = std::process::Command::new("nsenter")
        .args(["-t", &t.c.pid(), "-n", "timeout", "180", "python3", "-c"])
        .args([HOLD_CLIENT, &t.far.far_ip, "7100", &CONNECTIONS.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("connection holder in c's namespace");
    let mut stdin = client.stdin.take().expect("stdin");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        client.stdout.take().expect("stdout"),
    ));
    let _client = Background(client);
    let mut line = || lines.next().and_then(Result::ok).unwrap_or_default();
    let opened = line();
    let open_time = started.elapsed();
    let status = t.plugin.status();
    assert_eq!(
        opened,
        format!("open {CONNECTIONS}"),
        "{:#}",
        status["fast_path"]["dataplane"]
    );
    assert!(
        sessions(&status) >= CONNECTIONS,
        "{:#}",
        status["fast_path"]["dataplane"]
    );
    for refusal in ["drop_ports_exhausted", "drop_endpoint_port_share"] {
        assert_eq!(translator(&status, refusal), 0, "{refusal}");
    }
    let ready = Instant::now();
    t.new_flows_work("40101", &format!("while c holds {CONNECTIONS} connections"));
    let new_flows = ready.elapsed();

    // A host socket on a port the translator maps (to the far server) keeps its own
    // traffic: the uplink steers the translator's replies by their whole tuple, so a
    // connection from another remote port to that port number reaches the host.
    let peers = t.far.ns.sh(
        "ss",
        &["-Htn", "state", "established", "sport", "=", ":7100"],
    );
    let port: u16 = peers
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .last()?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()
        })
        .next()
        .unwrap_or_else(|| panic!("no held connection seen from the far side: {peers}"));
    let host_socket = std::net::TcpListener::bind((t.far.host_ip.as_str(), port))
        .unwrap_or_else(|e| panic!("cannot bind a host socket to {port}: {e}"));
    host_socket.set_nonblocking(true).expect("nonblocking");
    let accepter = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok((mut s, _)) = host_socket.accept() {
                let _ = std::io::Write::write_all(&mut s, b"host\n");
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let far_client = "import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),5)\nprint(s.recv(64).decode().strip())";
    let got = t.far.ns.sh(
        "python3",
        &["-c", far_client, &t.far.host_ip, &port.to_string()],
    );
    assert!(
        accepter.join().expect("accepter"),
        "the host socket on {port} got nothing"
    );
    assert_eq!(
        got.trim(),
        "host",
        "the host socket on port {port} lost its traffic"
    );
    // And c's connections, the one on that port included, all still answer.
    std::io::Write::write_all(&mut stdin, b"go\n").expect("tell the holder");
    assert_eq!(line(), format!("alive {CONNECTIONS}"));
    eprintln!(
        "{CONNECTIONS} concurrent connections from one container opened in {open_time:.1?}; \
         new flows {new_flows:.0?} after; a host socket on mapped port {port} reached"
    );
    drop(_client);

    // A server with a published TCP port (httpd) and UDP port (an answerer in its
    // namespace); the far side sprays both.
    let srv = Container::httpd_with(
        "dsflt-pool-srv",
        &t.fast,
        &["-p", "18310:80", "-p", "18311:53/udp"],
        "pool",
    );
    let _answerer = srv.udp_pong(53);
    for rule in [
        &[
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--tcp-flags",
            "RST",
            "RST",
            "-j",
            "DROP",
        ][..],
        &["-A", "OUTPUT", "-p", "icmp", "-j", "DROP"][..],
    ] {
        t.far.ns.sh("iptables", rule);
    }
    let started = Instant::now();
    t.far.ns.sh(
        "python3",
        &[
            "-c",
            PUBLISHED_SPRAY,
            &t.far.host_ip,
            &t.far.far_ip,
            "18311",
            "18310",
            &SPRAY.to_string(),
        ],
    );
    let spray_time = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let status = t.plugin.status();
    let ready = Instant::now();
    let far_ns = ["ip", "netns", "exec", t.far.ns.name.as_str()];
    assert_eq!(
        udp_ask(&far_ns, &t.far.host_ip, 18311),
        "udp-pong",
        "the published UDP port stopped answering: {:#}",
        status["fast_path"]["dataplane"]
    );
    assert_eq!(
        t.far.ns.wget(&format!("http://{}:18310/", t.far.host_ip)),
        "pool",
        "the published TCP port stopped answering: {:#}",
        status["fast_path"]["dataplane"]
    );
    t.new_flows_work("40102", "after the spray");
    eprintln!(
        "{SPRAY} datagrams and {SPRAY} SYNs at published ports in {:.1?} ({} sessions, {} evicted); new conversations {:.0?} after",
        spray_time,
        status["fast_path"]["dataplane"]["uplinks"][0]["sessions"],
        translator(&status, "sessions_evicted"),
        ready.elapsed()
    );
}

// ---- dockerd -----------------------------------------------------------------------

/// Endpoint ids of the plugin's network `id`.
fn endpoints_of(plugin: &Daemon, id: &str) -> Vec<String> {
    endpoints(&plugin.status(), Some(id))
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect()
}

#[test]
#[ignore = "needs root, Open vSwitch and dockerd; restarts the host's dockerd (cargo xtask test)"]
fn dockerd_restarts_under_the_plugin() {
    let plugin = start_plugin();
    let far = Far::new("dsx", "10.233.101");
    let flat = Network::flat("dsflt-dk-flat", "10.233.3.0/24");
    let nat = Network::nat("dsflt-dk-nat", "10.233.4.0/24");
    // This host's dockerd runs without live-restore (Docker's default): stopping it
    // stops every container. What a user expects then: containers with a restart
    // policy come back on their networks, with their addresses, and the plugin holds
    // exactly their endpoints (the old ones are deleted, none leak).
    // Fixed addresses: Docker restores those; without `--ip` the restarted containers
    // may trade addresses (seen in CI), and a ping to "b's address" would prove nothing.
    let always = ["--restart", "always"];
    let a = Container::run(
        "dsflt-dk-a",
        &flat,
        &["--restart", "always", "--ip", "10.233.3.10"],
        &["sleep", "3600"],
    );
    let b = Container::run(
        "dsflt-dk-b",
        &flat,
        &["--restart", "always", "--ip", "10.233.3.20"],
        &["sleep", "3600"],
    );
    let n = Container::run("dsflt-dk-n", &nat, &always, &["sleep", "3600"]);
    let once = Container::idle("dsflt-dk-once", &flat);
    let b_ip = b.ip(&flat);
    assert!(a.ping(&b_ip), "flat L2 before the fault");
    assert!(far.reached_from(&n), "nat outbound before the fault");
    let live_restore = docker_ok(&["info", "-f", "{{.LiveRestoreEnabled}}"]);
    assert_eq!(live_restore, "false", "this test expects Docker's default");
    let flat_id = flat.id();
    let bridges = vec![bridge_of(&plugin, &flat_id), bridge_of(&plugin, &nat.id())];
    let before = endpoints_of(&plugin, &flat_id);
    assert_eq!(before.len(), 3);

    // Declared after the fixtures, so dropped before them: they clean up through Docker.
    let _restore = DockerRestore;
    stop_dockerd();
    let down = Instant::now();
    // Every container stopped: Docker left and deleted its endpoints on the way down.
    assert!(
        endpoints_of(&plugin, &flat_id).is_empty(),
        "endpoints kept while dockerd is down: {:?}",
        endpoints_of(&plugin, &flat_id)
    );
    start_dockerd();
    recovery(
        "dockerd restart: docker answers",
        Duration::from_secs(90),
        docker_ready,
    );
    recovery(
        "dockerd restart: restarted containers talk on flat",
        Duration::from_secs(60),
        || ping_once(&a, &b_ip),
    );
    recovery(
        "dockerd restart: nat outbound",
        Duration::from_secs(60),
        || far.reached_from(&n),
    );
    // dockerd flushed its isolation chains and put its jumps back on top of FORWARD:
    // the reconciler puts the nat network's rules back (issue 16).
    let tag = format!("dovesnap:{}", &nat.id()[..12]);
    let in_chain = |chain: &str| sh("iptables", &["-w", "-S", chain]).contains(&tag);
    recovery(
        "dockerd restart: the nat network in Docker's isolation chains",
        Duration::from_secs(30),
        || in_chain("DOCKER-ISOLATION-STAGE-1") && in_chain("DOCKER-ISOLATION-STAGE-2"),
    );
    let forward = sh("iptables", &["-w", "-S", "FORWARD"]);
    let lines: Vec<&str> = forward.lines().collect();
    let first_ours = lines.iter().position(|l| l.contains(&tag));
    let last_jump = lines
        .iter()
        .rposition(|l| l.ends_with("-j DOCKER-USER") || l.ends_with("-j DOCKER-ISOLATION-STAGE-1"));
    assert!(
        first_ours > last_jump,
        "accepts above Docker's jumps:\n{forward}"
    );
    eprintln!(
        "recovery: dockerd restart: containers back {} ms after dockerd stopped",
        down.elapsed().as_millis()
    );
    assert_eq!(b.ip(&flat), b_ip, "b came back with another address");
    let state = docker_ok(&["inspect", "-f", "{{.State.Running}}", &once.name]);
    assert_eq!(
        state, "false",
        "a container without restart policy stays down"
    );
    let after = endpoints_of(&plugin, &flat_id);
    assert_eq!(
        after.len(),
        2,
        "flat endpoints after the restart: {after:?}"
    );
    assert!(
        after.iter().all(|e| !before.contains(e)),
        "old endpoints kept"
    );
    assert_eq!(ovs_ports(&bridges[0]).len(), 2);
    assert_eq!(ovs_ports(&bridges[1]).len(), 1);
    // The plugin serves the restarted dockerd: a new container joins.
    let c = Container::idle("dsflt-dk-c", &flat);
    assert!(c.ping(&b_ip), "a container created after the restart");

    drop((a, b, c, n, once));
    drop((flat, nat));
    assert_no_leak(&bridges);
    let _ = docker(&["ps"]);
    drop(plugin);
    drop(far);
}

/// A far-side TCP server sending each client (in a thread of its own) `argv[2]` blocks
/// of 64 KiB of a known pattern, `argv[3]` seconds apart, so that a download lasts a
/// few seconds.
const SLOW_SERVER: &str = "import socket,time,sys,threading\nb=bytes(range(256))*256\ndef serve(c):\n    for i in range(int(sys.argv[2])):\n        c.sendall(b)\n        time.sleep(float(sys.argv[3]))\n    c.close()\nl=socket.socket()\nl.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\nl.bind(('0.0.0.0',int(sys.argv[1])))\nl.listen(16)\nwhile True:\n    c,_=l.accept()\n    threading.Thread(target=serve,args=(c,),daemon=True).start()";

/// Downloads from `argv[1]:argv[2]` until the server closes; prints the byte count and
/// the SHA-256.
const DOWNLOAD: &str = "import socket,sys,hashlib\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=20)\nh=hashlib.sha256()\nn=0\nwhile True:\n    d=s.recv(65536)\n    if not d:\n        break\n    h.update(d)\n    n+=len(d)\nprint(n,h.hexdigest())";

fn health(plugin: &Daemon) -> serde_json::Value {
    plugin.status()["fast_path"]["health"].clone()
}

/// What [`DOWNLOAD`] prints for `blocks` blocks of [`SLOW_SERVER`].
fn expected_download(blocks: u32) -> String {
    let script = "import hashlib,sys\nb=bytes(range(256))*256\nn=int(sys.argv[1])\nprint(len(b)*n,hashlib.sha256(b*n).hexdigest())";
    String::from_utf8_lossy(&run("python3", &["-c", script, &blocks.to_string()]).stdout)
        .trim()
        .to_string()
}

/// Starts [`DOWNLOAD`] from `far_ip:port` in the network namespace of `pid`.
fn download_from(pid: String, far_ip: String, port: u16) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || python_in(&pid, DOWNLOAD, &[&far_ip, &port.to_string()]))
}

/// The conntrack entries of TCP flows to `far_ip:port`.
fn conntrack_to(far_ip: &str, port: u16) -> String {
    let port = port.to_string();
    let out = run(
        "conntrack",
        &["-L", "-p", "tcp", "--orig-port-dst", &port, "-d", far_ip],
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
#[ignore = "needs root, Open vSwitch, XDP, AF_XDP and dockerd (cargo xtask test)"]
fn a_failed_data_plane_hands_its_flows_to_the_kernel_and_comes_back() {
    // 64 KiB blocks 20 ms apart: 10 MiB over about 3 s, 25 MiB over about 8 s.
    const SHORT: (u16, u32) = (7100, 160);
    const LONG: (u16, u32) = (7101, 400);
    const ARGS: [&str; 3] = ["--reconcile-interval", "1", "--test-hooks"];
    require_root();
    let mut t = TwoOnFast::new("sup", "10.233.106", "10.233.11.0/24", &ARGS);
    for (port, blocks) in [SHORT, LONG] {
        let (port, blocks) = (port.to_string(), blocks.to_string());
        t.far
            .spawn(&["python3", "-c", SLOW_SERVER, &port, &blocks, "0.02"]);
    }
    let c_ip = t.c.ip(&t.fast);
    let far_ip = t.far.far_ip.clone();

    // A panic one second into a download.
    let download = download_from(t.c.pid(), far_ip.clone(), SHORT.0);
    std::thread::sleep(Duration::from_secs(1));
    let bypassed_before = dovesnap_tests::status::xdp_counter(&t.plugin.status(), "bypassed");
    t.plugin.signal(libc::SIGUSR1);
    recovery(
        "the failure shown in status",
        Duration::from_secs(5),
        || health(&t.plugin)["failures"] == 1,
    );
    let h = health(&t.plugin);
    assert!(
        h["last_failure"]
            .as_str()
            .is_some_and(|s| s.contains("panicked")),
        "{h:#}"
    );
    assert!(
        h["sessions_handed_to_kernel"].as_u64() >= Some(1),
        "the download's session was not handed to conntrack: {h:#}"
    );
    // The kernel holds the download with the translator's mapping: from the container,
    // to the uplink's address.
    let ct = conntrack_to(&far_ip, SHORT.0);
    assert!(
        ct.contains(&format!("src={c_ip}")) && ct.contains(&format!("dst={}", t.far.host_ip)),
        "no conntrack entry for the download:\n{ct}"
    );
    let got = download.join().expect("download thread");
    assert_eq!(
        got,
        expected_download(SHORT.1),
        "the download broke when the data plane failed"
    );
    assert!(
        dovesnap_tests::status::xdp_counter(&t.plugin.status(), "bypassed") > bypassed_before,
        "no frame took the kernel's path while the data plane was down"
    );
    // It comes back (after a 1 s backoff) and new connections use the fast path again.
    recovery(
        "the fast path after the panic",
        Duration::from_secs(5),
        || health(&t.plugin)["state"] == "up",
    );
    assert_eq!(health(&t.plugin)["restarts"], 1);
    let outbound = translator(&t.plugin.status(), "outbound");
    assert!(
        t.far.reached_from(&t.c),
        "no new connection after the restart"
    );
    assert!(
        translator(&t.plugin.status(), "outbound") > outbound,
        "the new connection did not go through the translator"
    );

    // A stall: the watchdog hands the sessions of its last snapshot (1 s old at most)
    // to conntrack and turns the bypass on, so a download running through the stall
    // goes on; a download started meanwhile runs on the kernel's path and is taken
    // over, with the kernel's mapping, when the fast path comes back.
    let through = download_from(t.c.pid(), far_ip.clone(), LONG.0);
    std::thread::sleep(Duration::from_secs(2));
    t.plugin.signal(libc::SIGUSR2);
    recovery("the stall noticed", Duration::from_secs(6), || {
        health(&t.plugin)["state"] == "stalled"
    });
    let long = download_from(t.c.pid(), far_ip.clone(), LONG.0);
    assert!(t.far.reached_from(&t.c), "no new connection while stalled");
    recovery(
        "the fast path after the stall",
        Duration::from_secs(15),
        || {
            let h = health(&t.plugin);
            h["state"] == "up" && h["restarts"] == 2
        },
    );
    let adopted = translator(&t.plugin.status(), "sessions_adopted");
    assert!(adopted >= 1, "the kernel's download was not taken over");
    assert_eq!(
        long.join().expect("download thread"),
        expected_download(LONG.1),
        "a download started on the kernel's path broke when the fast path came back"
    );
    assert_eq!(
        through.join().expect("download thread"),
        expected_download(LONG.1),
        "a download running through the stall broke"
    );
    assert!(
        t.far.reached_from(&t.c),
        "no new connection after the stall"
    );
    let text = t.plugin.status_text();
    assert!(text.contains("data plane failures: 2"), "{text}");

    // The daemon restarted during a download: its sessions go to conntrack at the
    // stop, and the new daemon takes them back.
    let download = download_from(t.c.pid(), far_ip.clone(), SHORT.0);
    std::thread::sleep(Duration::from_secs(1));
    assert!(t.plugin.terminate(), "the daemon did not stop cleanly");
    t.plugin = start_plugin_with(&ARGS);
    assert_eq!(
        download.join().expect("download thread"),
        expected_download(SHORT.1),
        "the download broke across a restart of the daemon"
    );
    let status = t.plugin.status();
    assert!(
        translator(&status, "sessions_adopted") >= 1,
        "the restarted daemon took no flow over: {:#}",
        status["fast_path"]["dataplane"]
    );
    assert!(
        t.far.reached_from(&t.c),
        "no new connection after the restart"
    );
    // Once the translator carries them again, the kernel's entries go (they would
    // linger for days and be taken over again, long dead, at the next start).
    recovery(
        "the kernel's entries of taken-over flows deleted",
        Duration::from_secs(6),
        || {
            [SHORT.0, LONG.0]
                .iter()
                .all(|p| !conntrack_to(&far_ip, *p).contains(&format!("src={c_ip}")))
        },
    );
}
