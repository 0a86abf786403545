//! Overlay mode on OVN, with several "hosts" on one machine: each host is a network
//! namespace with its own ovsdb-server, ovs-vswitchd (userspace datapath),
//! ovn-controller and dovesnap daemon (driven through its plugin API, as dockerd would);
//! one central ovn-northd with its northbound and southbound databases sits in a
//! namespace of its own. The hosts reach the central databases and each other (geneve
//! tunnels) over a private LAN, 198.18.77.0/24 (RFC 2544 benchmarking space) on a Linux bridge in the central
//! namespace. Containers are namespaces that get the endpoint's interface, as Docker
//! does at Join. Nothing here touches the global Open vSwitch, dockerd or a global OVN.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dovesnap_tests::docker::{self, Container, Network};
use dovesnap_tests::hosts::{
    self, fetch_port, id, pings, spawn_in, start_daemon, stop_pidfile, web_server, Lan, Scratch,
    Spawned,
};
use dovesnap_tests::{require_root, run, sh, unique_name, wait_until, Netns};
use serde_json::{json, Value};

/// The test LAN (RFC 2544 benchmarking space, unused elsewhere); hosts are .1, .2, ...
const LAN: &str = "198.18.77";
const CENTRAL_IP: &str = "198.18.77.254";
const SUBNET: &str = "10.30.0.0/24";
/// The switch a network on [`SUBNET`] maps to without `ovs.ovn.switch`.
const SWITCH: &str = "dovesnap-10.30.0.0-24";
/// A second logical switch on the same subnet, to show overlay networks are isolated.
const ISOLATED: &str = "dsovl-isolated";
/// Where containers ask OVN for the switch's names (the DNS localport's address).
const DNS_ADDR: &str = "169.254.53.53";
/// The Docker host's address on the test LAN, where [`NxStub`] stands in for the
/// host's real resolver.
const UPSTREAM: &str = "198.18.77.100";

/// The API hosts' `--ovn-reap-after`: how long a chassis must be missing from the
/// southbound database before the other hosts remove its ports.
const REAP_AFTER: Duration = Duration::from_secs(8);

/// ovn-northd and the NB/SB databases, listening on [`CENTRAL_IP`] in the LAN namespace.
struct Central {
    dir: PathBuf,
    pidfiles: Vec<PathBuf>,
    lan: Lan,
}

impl Central {
    fn start(root: &Path) -> Self {
        let dir = root.join("central");
        std::fs::create_dir_all(&dir).unwrap();
        let lan = Lan::new("ovlan", LAN);
        assert_eq!(lan.ip(254), CENTRAL_IP);
        let mut central = Central {
            dir: dir.clone(),
            pidfiles: Vec::new(),
            lan,
        };
        let lan = &central.lan.ns;
        for (db, port) in [("nb", 6641), ("sb", 6642)] {
            let file = dir.join(format!("{db}.db"));
            sh(
                "ovsdb-tool",
                &[
                    "create",
                    file.to_str().unwrap(),
                    &format!("/usr/share/ovn/ovn-{db}.ovsschema"),
                ],
            );
            let pid = dir.join(format!("{db}.pid"));
            start_daemon(
                lan,
                &dir,
                "ovsdb-server",
                &[
                    file.display().to_string(),
                    format!(
                        "--remote=punix:{}",
                        dir.join(format!("{db}.sock")).display()
                    ),
                    format!("--remote=ptcp:{port}:{CENTRAL_IP}"),
                    format!("--pidfile={}", pid.display()),
                    format!("--unixctl={}", dir.join(format!("{db}.ctl")).display()),
                    format!("--log-file={}", dir.join(format!("{db}.log")).display()),
                    "--detach".into(),
                ],
            );
            central.pidfiles.push(pid);
        }
        let pid = dir.join("northd.pid");
        start_daemon(
            &central.lan.ns,
            &dir,
            "ovn-northd",
            &[
                format!("--ovnnb-db=unix:{}", dir.join("nb.sock").display()),
                format!("--ovnsb-db=unix:{}", dir.join("sb.sock").display()),
                format!("--pidfile={}", pid.display()),
                format!("--unixctl={}", dir.join("northd.ctl").display()),
                format!("--log-file={}", dir.join("northd.log").display()),
                "--detach".into(),
            ],
        );
        central.pidfiles.push(pid);
        central
    }

    fn ctl(&self, tool: &str, db: &str, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.dir.join(db).display());
        let mut full = vec![db.as_str()];
        full.extend_from_slice(args);
        sh(tool, &full)
    }

    fn nbctl(&self, args: &[&str]) -> String {
        self.ctl("ovn-nbctl", "nb.sock", args)
    }

    fn sbctl(&self, args: &[&str]) -> String {
        self.ctl("ovn-sbctl", "sb.sock", args)
    }

    /// The logical switches' names.
    fn switches(&self) -> Vec<String> {
        self.nbctl(&["--bare", "--columns=name", "list", "Logical_Switch"])
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// The names of the switch's endpoint ports (not its DNS localport).
    fn ports(&self, switch: &str) -> Vec<String> {
        let dns = format!("dovesnap-dns-{switch}");
        let mut p: Vec<String> = self
            .nbctl(&["lsp-list", switch])
            .lines()
            .filter_map(|l| Some(l.split_once(" (")?.1.trim_end_matches(')').to_string()))
            .filter(|p| *p != dns)
            .collect();
        p.sort();
        p
    }

    /// Every DNS row's records.
    fn dns_records(&self) -> Vec<String> {
        self.nbctl(&["--bare", "--columns=records", "list", "DNS"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    fn switch_ids(&self, switch: &str) -> String {
        self.nbctl(&["get", "Logical_Switch", switch, "external_ids"])
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        for p in self.pidfiles.iter().rev() {
            stop_pidfile(p, libc::SIGTERM);
        }
    }
}

/// One OVN host: a [`hosts::Host`] that is also a chassis (its ovn-controller).
struct Host(hosts::Host);

impl std::ops::Deref for Host {
    type Target = hosts::Host;
    fn deref(&self) -> &hosts::Host {
        &self.0
    }
}

impl std::ops::DerefMut for Host {
    fn deref_mut(&mut self) -> &mut hosts::Host {
        &mut self.0
    }
}

impl Host {
    fn start(root: &Path, central: &Central, n: u8) -> Self {
        let host = Host(hosts::Host::start(root, &central.lan, n, "ovh", "ovc"));
        host.vsctl(&[
            "set",
            "Open_vSwitch",
            ".",
            &format!("external_ids:ovn-remote=tcp:{CENTRAL_IP}:6642"),
            &format!("external_ids:ovn-encap-ip={}", host.ip),
            "external_ids:ovn-encap-type=geneve",
            &format!("external_ids:system-id={}", host.name),
            "external_ids:ovn-bridge-datapath-type=netdev",
        ]);
        host.start_controller(central);
        host
    }

    /// Starts ovn-controller and waits until it made br-int and registered its chassis.
    fn start_controller(&self, central: &Central) {
        start_daemon(
            &self.ns,
            &self.dir,
            "ovn-controller",
            &[
                format!("unix:{}", self.db_sock().display()),
                format!("--pidfile={}", self.pidfile("ovn-controller").display()),
                format!(
                    "--log-file={}",
                    self.dir.join("ovn-controller.log").display()
                ),
                "--detach".into(),
            ],
        );
        wait_until(
            &format!("{}'s chassis and br-int", self.name),
            Duration::from_secs(30),
            || {
                central
                    .sbctl(&["--bare", "--columns=name", "list", "Chassis"])
                    .split_whitespace()
                    .any(|c| c == self.name)
                    && self.vsctl(&["list-br"]).lines().any(|b| b == "br-int")
            },
        );
    }

    /// Kills ovn-controller as a crash would (its chassis stays in the southbound
    /// database, its flows stay in ovs-vswitchd).
    fn kill_controller(&self) {
        stop_pidfile(&self.pidfile("ovn-controller"), libc::SIGKILL);
    }

    fn start_plugin(&mut self) {
        let reap_after = REAP_AFTER.as_secs().to_string();
        self.0.start_plugin(&["--ovn-reap-after", &reap_after]);
    }

    fn create_network(&self, nid: &str, opts: Value) {
        self.0.create_network(nid, opts, SUBNET, "10.30.0.1/24");
    }

    /// Attaches a container (see [`hosts::Host::attach`]); overlay gives no gateway.
    fn attach(&self, nid: &str, eid: &str, addr: &str) -> Netns {
        let (ctr, joined) = self.0.attach(nid, eid, addr);
        assert!(
            joined["Gateway"].as_str().unwrap_or_default().is_empty(),
            "overlay networks are internal, no gateway: {joined}"
        );
        // The route to the switch's DNS address, added as Docker adds Join's routes.
        assert_eq!(
            joined["StaticRoutes"],
            json!([{"Destination": format!("{DNS_ADDR}/32"), "RouteType": 1}]),
            "{joined}"
        );
        ctr.sh(
            "ip",
            &["route", "add", &format!("{DNS_ADDR}/32"), "dev", "eth0"],
        );
        ctr
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Before the plugin, OVS and the namespace go (hosts::Host's own drop).
        stop_pidfile(&self.pidfile("ovn-controller"), libc::SIGTERM);
    }
}

/// Fetches `http://to:8080/` from `ctr` (TCP across the tunnel); the body.
fn fetch(ctr: &Netns, to: &str) -> String {
    fetch_port(ctr, to, 8080)
}

fn lsp(eid: &str) -> String {
    format!("dovesnap-{eid}")
}

fn wait_port_up(central: &Central, port: &str) {
    wait_until(&format!("{port} up"), Duration::from_secs(30), || {
        central.nbctl(&["lsp-get-up", port]).trim() == "up"
    });
}

// dovesnap's IPAM (`--ipam-driver ovs`): the hosts share one pool per subnet, its
// claims in the northbound database.

/// The subnet the API hosts allocate from through dovesnap's IPAM.
const IPAM_SUBNET: &str = "10.32.0.0/24";

/// What Docker asks of the IPAM driver on each host at `docker network create
/// --ipam-driver ovs --subnet SUBNET`: the pool, then the gateway, which every host
/// gets alike. The pool id.
fn ipam_pool(h: &hosts::Host, subnet: &str) -> String {
    let pool = h.ok(
        "/IpamDriver.RequestPool",
        json!({"AddressSpace": "dovesnap-ovn", "Pool": subnet, "SubPool": "",
               "Options": {}, "V6": false}),
    );
    let id = pool["PoolID"].as_str().unwrap().to_string();
    let gw = ipam_request(h, &id, "", true);
    assert_eq!(gw["Address"], subnet.replace(".0/", ".1/"), "{gw}");
    id
}

/// `IpamDriver.RequestAddress` (`preferred` empty: any free address); the answer.
fn ipam_request(h: &hosts::Host, pool: &str, preferred: &str, gateway: bool) -> Value {
    let opts = if gateway {
        json!({"RequestAddressType": "com.docker.network.gateway"})
    } else {
        json!({})
    };
    let body = json!({"PoolID": pool, "Address": preferred, "Options": opts});
    h.plugin()
        .call("/IpamDriver.RequestAddress", &body.to_string())
        .1
}

/// The pools (`Address_Set` rows) in the northbound database: name and external_ids.
fn pools(central: &Central) -> String {
    central.nbctl(&[
        "--bare",
        "--columns=name,external_ids",
        "list",
        "Address_Set",
    ])
}

#[test]
#[ignore = "needs root and OVN (cargo xtask test)"]
fn three_hosts_share_a_switch_survive_host_loss_and_clean_up() {
    require_root();
    let scratch = Scratch::new("dsovn");
    let root = scratch.0.clone();
    let central = Central::start(&root);
    let mut h1 = Host::start(&root, &central, 1);
    let mut h2 = Host::start(&root, &central, 2);
    h1.start_plugin();
    h2.start_plugin();

    // The same network on both hosts (Docker gives each host its own network id):
    // one logical switch, referenced by both.
    let (n1, n2) = (id("a1"), id("b2"));
    // Both at once: one creates the switch, the other joins it.
    std::thread::scope(|t| {
        t.spawn(|| {
            h1.create_network(
                &n1,
                json!({"mode": "overlay", "ovs.ovn.nb": format!("tcp:{CENTRAL_IP}:6641")}),
            )
        });
        // host2 finds the northbound database from its ovn-remote (port 6641).
        t.spawn(|| h2.create_network(&n2, json!({"mode": "overlay"})));
    });
    assert_eq!(central.switches(), [SWITCH]);
    let ids = central.switch_ids(SWITCH);
    assert!(ids.contains(&format!("dovesnap-host-host1={n1}")), "{ids}");
    assert!(ids.contains(&format!("dovesnap-host-host2={n2}")), "{ids}");

    // Containers: one on host1, two on host2 (each host its own --ip-range).
    let (e1, e2, e3) = (id("e1"), id("e2"), id("e3"));
    let c1 = h1.attach(&n1, &e1, "10.30.0.11/24");
    let c2 = h2.attach(&n2, &e2, "10.30.0.21/24");
    let _c3 = h2.attach(&n2, &e3, "10.30.0.22/24");
    let mut ports = vec![lsp(&e1), lsp(&e2), lsp(&e3)];
    ports.sort();
    assert_eq!(central.ports(SWITCH), ports);
    let iface = format!("ovsv{}", &e1[..10]);
    let bound = h1.vsctl(&["get", "Interface", &iface, "external_ids:iface-id"]);
    assert_eq!(bound.trim().trim_matches('"'), lsp(&e1));
    assert_eq!(
        central
            .nbctl(&["lsp-get-addresses", &lsp(&e2)])
            .split_whitespace()
            .nth(1),
        Some("10.30.0.21")
    );
    for p in &ports {
        wait_port_up(&central, p);
    }
    let binding = central.sbctl(&["show"]);
    assert!(binding.contains("Chassis host1") && binding.contains("Chassis host2"));

    // ICMP both ways and TCP across the tunnel.
    assert!(pings(&c1, "10.30.0.21"), "host1 -> host2 ping");
    assert!(pings(&c2, "10.30.0.11"), "host2 -> host1 ping");
    // A body of many full-size segments: they fit the tunnel (overlay MTU 1442).
    let big = "0123456789abcdef".repeat(16 * 1024);
    let _web = web_server(&c2, &root, &big);
    assert!(
        fetch(&c1, "10.30.0.21") == big,
        "the 256 KiB body did not come through whole"
    );
    let mtu = c1.sh("ip", &["-o", "link", "show", "eth0"]);
    assert!(mtu.contains("mtu 1442"), "{mtu}");

    // Two overlay networks cannot reach each other, even on the same addresses plan:
    // another logical switch across the same two hosts.
    let (m1, m2, f1, f2) = (id("m1"), id("m2"), id("f1"), id("f2"));
    let other = json!({"mode": "overlay", "ovs.ovn.switch": ISOLATED});
    h1.create_network(&m1, other.clone());
    h2.create_network(&m2, other);
    let d1 = h1.attach(&m1, &f1, "10.30.0.31/24");
    let d2 = h2.attach(&m2, &f2, "10.30.0.32/24");
    wait_port_up(&central, &lsp(&f1));
    wait_port_up(&central, &lsp(&f2));
    assert!(
        pings(&d1, "10.30.0.32"),
        "the second network works across hosts"
    );
    for (from, to) in [
        (&c1, "10.30.0.31"),
        (&c2, "10.30.0.32"),
        (&d1, "10.30.0.11"),
        (&d2, "10.30.0.21"),
    ] {
        let crossed = from
            .run("ping", &["-c", "2", "-W", "1", to])
            .status
            .success();
        assert!(!crossed, "{to} answered from the other overlay network");
    }
    h1.detach(&m1, &f1);
    h2.detach(&m2, &f2);
    h1.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": m1}));
    h2.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": m2}));
    assert_eq!(
        central.switches(),
        [SWITCH],
        "the second switch went with its networks"
    );
    let start = Instant::now();
    ovn_gateway_reaches_far_side_and_publishes(&central, &h1, &h2, &root);
    eprintln!("ovn gateway block: {} ms", start.elapsed().as_millis());

    // An address another host's container has is refused, and nothing is left.
    let e4 = id("e4");
    let msg = h1.err(
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": n1, "EndpointID": e4, "Interface": {"Address": "10.30.0.21/24"}}),
    );
    assert!(
        msg.contains("address 10.30.0.21 is already used") && msg.contains("host2"),
        "{msg}"
    );
    assert!(!h1
        .ns
        .run("ip", &["link", "show", &format!("ovsv{}", &e4[..10])])
        .status
        .success());
    assert_eq!(central.ports(SWITCH).len(), 3);
    // The same new address on both hosts at once: exactly one gets it.
    let (e5, e6) = (id("e5"), id("e6"));
    let create = |h: &Host, nid: &str, eid: &str| {
        let body = json!({"NetworkID": nid, "EndpointID": eid,
                          "Interface": {"Address": "10.30.0.50/24"}});
        let (_, v) = h
            .plugin()
            .call("/NetworkDriver.CreateEndpoint", &body.to_string());
        v.get("Err").is_none()
    };
    let (ok1, ok2) = std::thread::scope(|t| {
        let a = t.spawn(|| create(&h1, &n1, &e5));
        let b = t.spawn(|| create(&h2, &n2, &e6));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(ok1 ^ ok2, "both or neither got 10.30.0.50: {ok1} {ok2}");
    let (winner, nid, eid) = if ok1 {
        (&h1, &n1, &e5)
    } else {
        (&h2, &n2, &e6)
    };
    winner.ok(
        "/NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": nid, "EndpointID": eid}),
    );
    assert_eq!(central.ports(SWITCH).len(), 3);

    // host2 goes down (plugin and ovn-controller crash). Meanwhile its container e3
    // goes away with the host's state (port and veth gone); its logical port is stale.
    h2.plugin.as_mut().unwrap().kill();
    h2.kill_controller();
    let e3_port = format!("ovsv{}", &e3[..10]);
    h2.vsctl(&["del-port", "br-int", &e3_port]);
    let _ = h2.ns.run("ip", &["link", "del", &e3_port]);
    assert!(central.ports(SWITCH).contains(&lsp(&e3)));
    // host2 returns: the plugin reconciles OVN with what the host has.
    h2.start_controller(&central);
    h2.start_plugin();
    wait_until("the stale port to go", Duration::from_secs(10), || {
        !central.ports(SWITCH).contains(&lsp(&e3))
    });
    assert_eq!(central.ports(SWITCH), {
        let mut p = vec![lsp(&e1), lsp(&e2)];
        p.sort();
        p
    });
    wait_port_up(&central, &lsp(&e2));
    assert!(pings(&c1, "10.30.0.21"), "ping after host2's return");
    assert!(fetch(&c1, "10.30.0.21") == big, "after host2's return");

    // A third host joins. Its chassis missing from the southbound database for less
    // than the grace period (ovn-controller restarted) keeps its ports.
    let mut h3 = Host::start(&root, &central, 3);
    h3.start_plugin();
    let n3 = id("c3");
    h3.create_network(&n3, json!({"mode": "overlay"}));
    let e7 = id("e7");
    let _c7 = h3.attach(&n3, &e7, "10.30.0.31/24");
    wait_port_up(&central, &lsp(&e7));
    assert!(pings(&c1, "10.30.0.31"), "host1 -> host3 ping");

    // dovesnap's IPAM: the three hosts make the same request (no --ip-range) and 21
    // containers' addresses are asked for at once, 7 per host: none twice, all in the
    // subnet, none the gateway.
    let ipam_start = Instant::now();
    let all = [&*h1, &*h2, &*h3];
    let pool_ids: Vec<String> = all.iter().map(|h| ipam_pool(h, IPAM_SUBNET)).collect();
    let claimed: Vec<Vec<String>> = std::thread::scope(|t| {
        let tasks: Vec<Vec<_>> = all
            .iter()
            .zip(&pool_ids)
            .map(|(h, p)| {
                (0..7)
                    .map(|_| t.spawn(move || ipam_request(h, p, "", false)))
                    .collect()
            })
            .collect();
        tasks
            .into_iter()
            .map(|host| {
                host.into_iter()
                    .map(|c| {
                        let v = c.join().unwrap();
                        let a = v["Address"].as_str();
                        a.unwrap_or_else(|| panic!("no address: {v}")).to_string()
                    })
                    .collect()
            })
            .collect()
    });
    let mut flat: Vec<&String> = claimed.iter().flatten().collect();
    flat.sort();
    flat.dedup();
    assert_eq!(
        flat.len(),
        21,
        "an address was handed out twice: {claimed:?}"
    );
    eprintln!(
        "ipam: 3 pools, 3 gateways and 21 addresses on three hosts at once: {} ms",
        ipam_start.elapsed().as_millis()
    );
    for a in &flat {
        let host = a
            .strip_prefix("10.32.0.")
            .and_then(|h| h.strip_suffix("/24"));
        let n: u8 = host.and_then(|h| h.parse().ok()).unwrap_or(0);
        assert!(
            (2..=254).contains(&n),
            "{a} is not a container address of {IPAM_SUBNET}"
        );
    }
    // An address another host holds is refused; once released, it can be had.
    let theirs = claimed[1][0].trim_end_matches("/24");
    let refused = ipam_request(&h1, &pool_ids[0], theirs, false);
    let msg = refused["Err"].as_str().unwrap_or_default();
    assert!(
        msg.contains("already claimed") && msg.contains("host2"),
        "{refused}"
    );
    let release = |h: &hosts::Host, pool: &str, a: &str| {
        h.ok(
            "/IpamDriver.ReleaseAddress",
            json!({"PoolID": pool, "Address": a}),
        );
    };
    release(&h2, &pool_ids[1], theirs);
    let mine = ipam_request(&h1, &pool_ids[0], theirs, false);
    assert_eq!(mine["Address"], claimed[1][0], "{mine}");
    // host1 and host2 give everything back; host3's claims stay until it is reaped.
    release(&h1, &pool_ids[0], theirs);
    for (i, h) in [(0, &*h1), (1, &*h2)] {
        for a in &claimed[i] {
            release(h, &pool_ids[i], a);
        }
        h.ok("/IpamDriver.ReleasePool", json!({"PoolID": pool_ids[i]}));
    }
    let left = pools(&central);
    assert!(!left.contains("host1") && !left.contains("host2"), "{left}");
    // host3's seven and the gateway.
    assert_eq!(left.matches("dovesnap-ip-").count(), 8, "{left}");
    assert!(left.contains("host3"), "{left}");

    h3.kill_controller();
    let missing = Instant::now();
    central.sbctl(&["chassis-del", "host3"]);
    // The other hosts' reconcilers (1 s) see it missing meanwhile.
    std::thread::sleep(Duration::from_secs(2));
    h3.start_controller(&central);
    let back = missing.elapsed();
    assert!(back < REAP_AFTER, "host3 took {back:?} to register again");
    std::thread::sleep((REAP_AFTER + Duration::from_secs(2)).saturating_sub(back));
    assert!(
        central.ports(SWITCH).contains(&lsp(&e7)),
        "host3's port was reaped after {back:?} missing"
    );
    assert!(central.switch_ids(SWITCH).contains("host3"));
    // Its own logical port deleted behind its back: host3's reconciler makes it again.
    central.nbctl(&["lsp-del", &lsp(&e7)]);
    wait_until(
        "host3's logical port to come back",
        Duration::from_secs(10),
        || central.ports(SWITCH).contains(&lsp(&e7)),
    );
    wait_port_up(&central, &lsp(&e7));
    assert!(pings(&c1, "10.30.0.31"), "host1 -> host3 after the repair");

    // Then it dies for good: once an operator removes its chassis from OVN, the other
    // hosts' reconcilers remove its ports and reference after the grace period. Its
    // DNS forwarder's namespace goes with it (a real host's /run/netns would; here
    // the namespace hosts share the machine's).
    let forwarder = h3.plugin.as_ref().unwrap().status()["networks"][0]["dns_forwarder"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(forwarder.starts_with("dsdns-"), "{forwarder}");
    h3.plugin.as_mut().unwrap().kill();
    h3.kill_controller();
    let netns = forwarder.split_whitespace().next().unwrap_or_default();
    sh("ip", &["netns", "del", netns]);
    let gone = Instant::now();
    central.sbctl(&["chassis-del", "host3"]);
    assert!(central.ports(SWITCH).contains(&lsp(&e7)));
    wait_until("host3's ports to be reaped", REAP_AFTER * 3, || {
        !central.ports(SWITCH).contains(&lsp(&e7))
    });
    assert!(
        gone.elapsed() >= REAP_AFTER,
        "reaped after {:?}, before the grace period",
        gone.elapsed()
    );
    let ids = central.switch_ids(SWITCH);
    assert!(!ids.contains("host3"), "{ids}");
    // Its addresses in the IPAM pool go too, and with them the pool: nobody uses it.
    wait_until(
        "host3's pool claims to be reaped",
        Duration::from_secs(5),
        || pools(&central).trim().is_empty(),
    );
    assert!(pings(&c1, "10.30.0.21"), "host1 -> host2 after the reaping");

    // The network leaves host1: the switch stays for host2.
    h1.detach(&n1, &e1);
    h1.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": n1}));
    assert_eq!(central.switches(), [SWITCH]);
    assert_eq!(central.ports(SWITCH), [lsp(&e2)]);
    let ids = central.switch_ids(SWITCH);
    assert!(!ids.contains("host1") && ids.contains("host2"), "{ids}");
    assert!(!h1.vsctl(&["list-ports", "br-int"]).contains("ovsv"));
    let record = h1.vsctl(&["get", "Open_vSwitch", ".", "external_ids"]);
    assert!(!record.contains("dovesnap-overlay"), "{record}");
    // And the last host: the switch goes.
    h2.detach(&n2, &e2);
    h2.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": n2}));
    assert!(central.switches().is_empty(), "{:?}", central.switches());
    // The hosts' DNS forwarders went with the network (and host3's with the host).
    let netns = sh("ip", &["netns", "list"]);
    assert!(!netns.contains("dsdns-"), "{netns}");
}

/// The OVN gateway test's external network (RFC 2544 space, unused elsewhere): the
/// far namespace is [`FAR_IP`], the next hop; the gateway's address is [`GW_EXT`].
const FAR_IP: &str = "198.18.79.254";
const GW_EXT: &str = "198.18.79.10";
const GW_SUBNET: &str = "10.31.0.0/24";
const GW_SWITCH: &str = "dsovl-gw";

/// What the far side's who-am-I server (TCP 7000) says of a connection from `ctr`
/// (`from ADDRESS`), retrying for up to 20 s.
fn far_sees(ctr: &Netns) -> String {
    let script = format!("exec 3<>/dev/tcp/{FAR_IP}/7000 && cat <&3");
    let start = Instant::now();
    loop {
        let out = ctr.run("timeout", &["5", "bash", "-c", &script]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if text.starts_with("from ") || start.elapsed() > Duration::from_secs(20) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The external network of the OVN gateway tests behind `host`: a far namespace
/// ([`FAR_IP`], the next hop, with a who-am-I server on TCP 7000) on a veth whose other
/// end is a port of `br-ext`, an OVS bridge of `host`, which [`ExtNet::map`] makes
/// the bridge mapping `dovesnap`. Drop removes bridge and mapping; the veth goes with
/// the namespace.
struct ExtNet<'a> {
    host: &'a hosts::Host,
    _whoami: Spawned,
    far: Netns,
}

impl<'a> ExtNet<'a> {
    fn start(host: &'a hosts::Host) -> Self {
        let far = Netns::new("ovfar");
        sh(
            "ip",
            &[
                "link",
                "add",
                "extv",
                "netns",
                &host.ns.name,
                "type",
                "veth",
                "peer",
                "name",
                "farv",
                "netns",
                &far.name,
            ],
        );
        far.sh(
            "ip",
            &["addr", "add", &format!("{FAR_IP}/24"), "dev", "farv"],
        );
        far.sh("ip", &["link", "set", "farv", "up"]);
        // The userspace datapath forwards partially checksummed frames as they are.
        far.sh("ethtool", &["-K", "farv", "tx", "off"]);
        host.ns.sh("ip", &["link", "set", "extv", "up"]);
        host.vsctl(&[
            "add-br",
            "br-ext",
            "--",
            "set",
            "bridge",
            "br-ext",
            "datapath_type=netdev",
            "--",
            "add-port",
            "br-ext",
            "extv",
        ]);
        let whoami = spawn_in(&far, &["python3", "-c", docker::WHOAMI, FAR_IP, "7000"]);
        ExtNet {
            host,
            _whoami: whoami,
            far,
        }
    }

    /// What the gateway chassis' administrator does once.
    fn map(&self) {
        self.host.vsctl(&[
            "set",
            "Open_vSwitch",
            ".",
            "external_ids:ovn-bridge-mappings=dovesnap:br-ext",
        ]);
    }
}

impl Drop for ExtNet<'_> {
    fn drop(&mut self) {
        self.host.vsctl(&["--if-exists", "del-br", "br-ext"]);
        self.host.vsctl(&[
            "remove",
            "Open_vSwitch",
            ".",
            "external_ids",
            "ovn-bridge-mappings",
        ]);
    }
}

/// The options of a network on [`GW_SWITCH`] with its OVN gateway on `chassis`.
fn gateway_options(chassis: &str) -> Value {
    json!({"mode": "overlay", "ovs.ovn.switch": GW_SWITCH, "ovs.ovn.gateway": chassis,
           "ovs.ovn.gateway_address": format!("{GW_EXT}/24@{FAR_IP}")})
}

/// CreateNetwork of a gateway network on `h`, retried while the gateway chassis' new
/// bridge mapping is on its way to the southbound database.
fn create_gateway_network(h: &hosts::Host, nid: &str, chassis: &str) {
    let body = hosts::Host::create_network_request(
        nid,
        gateway_options(chassis),
        GW_SUBNET,
        "10.31.0.1/24",
    );
    wait_until(
        "the bridge mapping in the southbound database",
        Duration::from_secs(10),
        || {
            h.plugin()
                .call("/NetworkDriver.CreateNetwork", &body.to_string())
                .1
                .get("Err")
                .is_none()
        },
    );
}

/// The names of the northbound rows of `table`.
fn nb_names(central: &Central, table: &str) -> String {
    central
        .nbctl(&["--bare", "--columns=name", "list", table])
        .trim()
        .to_string()
}

/// `-o ovs.ovn.gateway=host1`: host1 maps the bridge mapping `dovesnap` to `br-ext`
/// ([`ExtNet`]); a container on each host has its default route via the OVN router,
/// reaches the far side SNATed to the gateway's address, pings the gateway; a port
/// published on host2 answers the far side at the gateway's address. Removing the
/// network removes router, external switch and load balancers.
fn ovn_gateway_reaches_far_side_and_publishes(
    central: &Central,
    h1: &Host,
    h2: &Host,
    root: &Path,
) {
    let ext = ExtNet::start(h1);
    let far = &ext.far;
    let create = |nid: &str, chassis: &str| {
        hosts::Host::create_network_request(
            nid,
            gateway_options(chassis),
            GW_SUBNET,
            "10.31.0.1/24",
        )
    };
    // Refused before anything is made: an unknown chassis, one without the mapping.
    let e = h2.err("/NetworkDriver.CreateNetwork", create(&id("gx"), "nohost"));
    assert!(e.contains("no such chassis"), "{e}");
    let e = h2.err("/NetworkDriver.CreateNetwork", create(&id("gx"), "host1"));
    assert!(
        e.contains("chassis host1 has no bridge mapping dovesnap")
            && e.contains("ovn-bridge-mappings=dovesnap:BRIDGE"),
        "{e}"
    );
    let mut internal = create(&id("gx"), "host1");
    internal["Options"]["com.docker.network.internal"] = json!(true);
    let e = h2.err("/NetworkDriver.CreateNetwork", internal);
    assert!(e.contains("--internal with ovs.ovn.gateway"), "{e}");
    assert!(!central.switches().contains(&GW_SWITCH.to_string()));
    assert!(central.nbctl(&["lr-list"]).is_empty());
    ext.map();
    let (g1, g2, x1, x2) = (id("g1"), id("g2"), id("x1"), id("x2"));
    create_gateway_network(h1, &g1, "host1");
    h2.ok("/NetworkDriver.CreateNetwork", create(&g2, "host1"));
    let router = format!("dovesnap-lr-{GW_SWITCH}");
    assert_eq!(nb_names(central, "Logical_Router"), router);
    let (cx1, j1) = h1.0.attach(&g1, &x1, "10.31.0.11/24");
    let (cx2, j2) = h2.0.attach(&g2, &x2, "10.31.0.21/24");
    for (c, j, x) in [(&cx1, &j1, &x1), (&cx2, &j2, &x2)] {
        assert_eq!(j["Gateway"], "10.31.0.1", "Join gives the OVN router: {j}");
        // What Docker does with Join's gateway.
        c.sh("ip", &["route", "add", "default", "via", "10.31.0.1"]);
        wait_port_up(central, &lsp(x));
        let route = c.sh("ip", &["route", "get", FAR_IP]);
        assert!(route.contains("via 10.31.0.1 dev eth0"), "{route}");
        assert!(pings(c, "10.31.0.1"), "the gateway answers ping");
        assert_eq!(far_sees(c), format!("from {GW_EXT}"), "SNAT to the gateway");
    }
    assert!(
        pings(far, GW_EXT),
        "the gateway's external address answers ping"
    );
    // A published port on host2 (not the gateway chassis), as dockerd sends it.
    let _web = web_server(&cx2, root, "published through OVN");
    let ids = json!({"NetworkID": g2, "EndpointID": x2});
    let mut program = ids.clone();
    program["Options"] = json!({"com.docker.network.portmap": [
        {"Proto": 6, "IP": "", "Port": 8080, "HostIP": "", "HostPort": 8081}]});
    h2.ok("/NetworkDriver.ProgramExternalConnectivity", program);
    let lb = central.nbctl(&["lb-list"]);
    assert!(
        lb.contains(&format!("{GW_EXT}:8081")) && lb.contains("10.31.0.21:8080"),
        "{lb}"
    );
    assert_eq!(fetch_port(far, GW_EXT, 8081), "published through OVN");
    // The router deleted behind dovesnap's back: a reconciler pass makes it again, with
    // the published port.
    central.nbctl(&["lr-del", &router]);
    wait_until("the router to come back", Duration::from_secs(10), || {
        nb_names(central, "Logical_Router") == router
    });
    assert_eq!(fetch_port(far, GW_EXT, 8081), "published through OVN");
    assert_eq!(
        far_sees(&cx1),
        format!("from {GW_EXT}"),
        "SNAT after the repair"
    );
    h2.ok("/NetworkDriver.RevokeExternalConnectivity", ids);
    assert!(central.nbctl(&["lb-list"]).is_empty());
    // The port is published again, then the network goes from both hosts: nothing of
    // the gateway is left in the northbound database.
    let mut program = json!({"NetworkID": g2, "EndpointID": x2});
    program["Options"] = json!({"com.docker.network.portmap": [
        {"Proto": 17, "IP": "", "Port": 53, "HostIP": "", "HostPort": 53}]});
    h2.ok("/NetworkDriver.ProgramExternalConnectivity", program);
    h1.detach(&g1, &x1);
    h1.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": g1}));
    assert_eq!(nb_names(central, "Logical_Router"), router);
    h2.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": g2}));
    assert_no_gateway_left(central);
}

/// Nothing of a gateway network is left in the northbound database.
fn assert_no_gateway_left(central: &Central) {
    for table in ["Logical_Router", "Load_Balancer", "NAT", "Gateway_Chassis"] {
        let left = central.nbctl(&["--bare", "--columns=_uuid", "list", table]);
        assert!(left.trim().is_empty(), "{table} left: {left}");
    }
    let switches = central.switches();
    assert!(
        !switches.iter().any(|s| s.contains(GW_SWITCH)),
        "network and external switch left: {switches:?}"
    );
}

#[test]
#[ignore = "needs root and OVN (cargo xtask test)"]
fn overlay_refusals_are_clear_and_leak_nothing() {
    require_root();
    let scratch = Scratch::new("dsovn");
    let root = scratch.0.clone();
    let central = Central::start(&root);
    let mut h1 = Host::start(&root, &central, 1);
    h1.start_plugin();
    let create = |nid: &str, opts: Value, pool: Value| {
        let (_, v) = h1.plugin().call(
            "/NetworkDriver.CreateNetwork",
            &json!({"NetworkID": nid, "Options": {"com.docker.network.generic": opts},
                    "IPv4Data": pool, "IPv6Data": []})
            .to_string(),
        );
        v["Err"].as_str().unwrap_or_default().to_string()
    };
    let pool = json!([{"AddressSpace": "x", "Pool": SUBNET, "Gateway": "10.30.0.1/24"}]);
    // No subnet.
    let e = create(&id("d1"), json!({"mode": "overlay"}), json!([]));
    assert!(e.contains("needs an IPv4 subnet"), "{e}");
    // A switch that already serves another subnet.
    central.nbctl(&[
        "ls-add",
        "taken",
        "--",
        "set",
        "Logical_Switch",
        "taken",
        "external_ids:dovesnap-subnet=10.99.0.0/24",
    ]);
    let refusals = [
        (
            json!({"mode": "overlay", "ovs.ovn.bridge": "br-nope"}),
            "integration bridge br-nope does not exist",
        ),
        (
            json!({"mode": "overlay", "ovs.ovn.nb": "tcp:198.18.77.253:6641"}),
            "OVN northbound database at tcp:198.18.77.253:6641",
        ),
        (
            json!({"mode": "overlay", "ovs.ovn.switch": "taken"}),
            "serves subnet 10.99.0.0/24, not 10.30.0.0/24",
        ),
        (
            json!({"mode": "overlay", "ovs.bridge.vlan": "7"}),
            "nothing with mode=overlay",
        ),
    ];
    for (i, (opts, expected)) in refusals.into_iter().enumerate() {
        let e = create(&id(&format!("c{i}")), opts, pool.clone());
        assert!(e.contains(expected), "{e}");
    }
    assert_eq!(central.switches(), ["taken"]);
    let record = h1.vsctl(&["get", "Open_vSwitch", ".", "external_ids"]);
    assert!(!record.contains("dovesnap-overlay"), "{record}");
    // `dovesnap doctor` on this host: the chassis settings, br-int and the northbound
    // database found from ovn-remote.
    let doctor = |h: &Host| -> Vec<Value> {
        let db = h.db_sock().display().to_string();
        let bin = dovesnap_tests::daemon::dovesnap_bin();
        let out =
            h.ns.run(bin.to_str().unwrap(), &["doctor", "--json", "--ovsdb", &db]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_else(|| panic!("doctor: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let status = |checks: &[Value], name: &str| {
        let c = checks.iter().find(|c| c["check"] == name).cloned();
        c.unwrap_or_else(|| panic!("no {name} in {checks:?}"))
    };
    let checks = doctor(&h1);
    let chassis = status(&checks, "ovn-chassis");
    assert_eq!(chassis["status"], "OK", "{chassis}");
    assert!(
        chassis["detail"]
            .as_str()
            .unwrap()
            .starts_with("chassis host1"),
        "{chassis}"
    );
    let nb = status(&checks, "ovn-northbound");
    assert_eq!(nb["status"], "OK", "{nb}");
    assert!(
        nb["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("tcp:{CENTRAL_IP}:6641")),
        "{nb}"
    );
    // A host that is no chassis.
    h1.vsctl(&["remove", "Open_vSwitch", ".", "external_ids", "system-id"]);
    let e = create(&id("d6"), json!({"mode": "overlay"}), pool);
    assert!(e.contains("external_ids:system-id is not set"), "{e}");
    let chassis = status(&doctor(&h1), "ovn-chassis");
    assert_eq!(chassis["status"], "FAIL", "{chassis}");
    assert!(
        chassis["fix"].as_str().unwrap().contains("system-id"),
        "{chassis}"
    );
}

/// The root namespace as an OVN host: the global Open vSwitch (where dockerd's plugin
/// works) becomes a chassis for the test's central, with its own uplink bridge on the
/// test LAN. Drop stops its ovn-controller, deletes br-int and the uplink bridge and
/// removes the chassis settings, leaving the global OVS as it was.
struct RootChassis {
    veth: String,
    phy: String,
    pidfile: PathBuf,
}

/// The `Open_vSwitch` keys the root chassis sets (and removes).
const ROOT_KEYS: [&str; 5] = [
    "ovn-remote",
    "ovn-encap-ip",
    "ovn-encap-type",
    "system-id",
    "ovn-bridge-datapath-type",
];

impl RootChassis {
    fn start(root: &Path, central: &Central) -> Self {
        let ids = sh("ovs-vsctl", &["get", "Open_vSwitch", ".", "external_ids"]);
        assert!(
            !ids.contains("ovn-remote") && !ids.contains("system-id"),
            "the global Open vSwitch is already an OVN chassis ({ids}): not disturbing it"
        );
        assert!(
            !sh("ovs-vsctl", &["list-br"]).lines().any(|b| b == "br-int"),
            "the global Open vSwitch already has a br-int: not disturbing it"
        );
        let veth = unique_name("dsova");
        let chassis = RootChassis {
            phy: format!("{veth}b"),
            pidfile: root.join("root-ovn-controller.pid"),
            veth,
        };
        central.lan.plug(None, &chassis.veth, "lan0");
        sh(
            "ovs-vsctl",
            &[
                "--timeout=20",
                "add-br",
                &chassis.phy,
                "--",
                "set",
                "bridge",
                &chassis.phy,
                "datapath_type=netdev",
                "--",
                "add-port",
                &chassis.phy,
                &chassis.veth,
            ],
        );
        sh(
            "ip",
            &["addr", "add", &format!("{LAN}.100/24"), "dev", &chassis.phy],
        );
        sh("ip", &["link", "set", &chassis.phy, "up"]);
        sh("ethtool", &["-K", &chassis.phy, "tx", "off"]);
        sh(
            "ovs-vsctl",
            &[
                "set",
                "Open_vSwitch",
                ".",
                &format!("external_ids:ovn-remote=tcp:{CENTRAL_IP}:6642"),
                &format!("external_ids:ovn-encap-ip={LAN}.100"),
                "external_ids:ovn-encap-type=geneve",
                "external_ids:system-id=dockerhost",
                "external_ids:ovn-bridge-datapath-type=netdev",
            ],
        );
        let mut c = Command::new("ovn-controller");
        c.arg(format!("--pidfile={}", chassis.pidfile.display()))
            .arg(format!(
                "--log-file={}",
                root.join("root-ovn-controller.log").display()
            ))
            .arg("--detach");
        for var in ["OVN_RUNDIR", "OVN_LOGDIR"] {
            c.env(var, root);
        }
        let out = c.output().expect("ovn-controller");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until("the root chassis", Duration::from_secs(30), || {
            central
                .sbctl(&["--bare", "--columns=name", "list", "Chassis"])
                .split_whitespace()
                .any(|c| c == "dockerhost")
                && sh("ovs-vsctl", &["list-br"]).lines().any(|b| b == "br-int")
        });
        chassis
    }
}

impl Drop for RootChassis {
    fn drop(&mut self) {
        stop_pidfile(&self.pidfile, libc::SIGTERM);
        let _ = run("ovs-vsctl", &["--if-exists", "del-br", "br-int"]);
        let _ = run("ovs-vsctl", &["--if-exists", "del-br", &self.phy]);
        for key in ROOT_KEYS {
            let _ = run(
                "ovs-vsctl",
                &["remove", "Open_vSwitch", ".", "external_ids", key],
            );
        }
        let _ = run("ip", &["link", "del", &self.veth]);
    }
}

/// Docker creates its `docker_gwbridge` network for containers whose network has no
/// gateway; removed on drop unless it was there before.
struct GwBridge(bool);

impl GwBridge {
    fn note() -> Self {
        GwBridge(
            docker::docker(&["network", "inspect", "docker_gwbridge"])
                .status
                .success(),
        )
    }
}

impl Drop for GwBridge {
    fn drop(&mut self) {
        if !self.0 {
            let _ = docker::docker(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

/// The name for `--ipam-driver`: `ovs`, unless this dockerd activated the plugin before
/// it was an IPAM driver too (dockerd keeps a legacy plugin's first `Plugin.Activate`
/// answer until it restarts; CI's dockerd is fresh): then a name it has never seen, a
/// link to the same socket, removed on drop.
struct IpamDriverName {
    name: String,
    link: Option<PathBuf>,
}

impl IpamDriverName {
    /// Finds the name while checking, through Docker, that a network of another mode
    /// than overlay is refused dovesnap's IPAM, and that its pool goes with it.
    fn probe(central: &Central) -> Self {
        let refused = |driver: &str| {
            let out = docker::docker(&[
                "network",
                "create",
                "-d",
                "ovs",
                "--ipam-driver",
                driver,
                "--subnet",
                IPAM_SUBNET,
                "dsovl-flat",
            ]);
            assert!(!out.status.success(), "a flat network took dovesnap's IPAM");
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        let mut d = IpamDriverName {
            name: "ovs".into(),
            link: None,
        };
        let mut msg = refused(&d.name);
        if msg.contains("does not implement the requested driver") {
            let name = unique_name("dsipam");
            let link = Path::new(docker::PLUGIN_SOCKET).with_file_name(format!("{name}.sock"));
            std::os::unix::fs::symlink("ovs.sock", &link).unwrap();
            eprintln!("this dockerd activated `ovs` before it was an IPAM driver: using {name}");
            d = IpamDriverName {
                name,
                link: Some(link),
            };
            msg = refused(&d.name);
        }
        assert!(msg.contains("for mode=overlay networks only"), "{msg}");
        assert_eq!(
            pools(central).trim(),
            "",
            "the refused network's pool stayed"
        );
        d
    }
}

impl Drop for IpamDriverName {
    fn drop(&mut self) {
        if let Some(link) = &self.link {
            let _ = std::fs::remove_file(link);
        }
    }
}

#[test]
#[ignore = "needs root, Open vSwitch, dockerd and OVN (cargo xtask test)"]
fn a_docker_host_and_an_api_host_share_a_network() {
    require_root();
    let scratch = Scratch::new("dsovn");
    let root = scratch.0.clone();
    let central = Central::start(&root);
    let mut h2 = Host::start(&root, &central, 2);
    h2.start_plugin();
    let _chassis = RootChassis::start(&root, &central);
    let _gwbridge = GwBridge::note();
    // A fast reconciler, for the veth deleted behind its back below; the DNS
    // forwarder's upstream is the test's stub resolver.
    let upstream = format!("{UPSTREAM}:53");
    let plugin =
        docker::start_plugin_with(&["--reconcile-interval", "1", "--dns-upstream", &upstream]);
    let ipam = IpamDriverName::probe(&central);

    // The same command on both hosts, no --ip-range: dovesnap's IPAM hands out the
    // addresses from one pool in the northbound database. host2 asks as Docker would.
    let n2 = id("d2");
    let pool2 = ipam_pool(&h2, SUBNET);
    h2.create_network(&n2, json!({"mode": "overlay"}));
    let h2_addr = ipam_request(&h2, &pool2, "", false)["Address"]
        .as_str()
        .expect("host2's address")
        .to_string();
    let h2_ip = h2_addr.trim_end_matches("/24").to_string();
    let e2 = id("f2");
    let c2 = h2.attach(&n2, &e2, &h2_addr);
    {
        let net = Network::create(
            "dsovl-net",
            &[
                "--ipam-driver",
                &ipam.name,
                "-o",
                "mode=overlay",
                "--subnet",
                SUBNET,
            ],
        );
        // Opted in to names across hosts: OVN's answers after Docker's own, and the
        // rest from the host's forwarder behind the DNS address: no second --dns.
        let web = Container::httpd_with(
            "dsovl-web",
            &net,
            &["--network-alias", "WWW-Alias", "--dns", DNS_ADDR],
            "hello-from-docker",
        );
        let ip = web.ip(&net);
        assert!(
            ip.starts_with("10.30.0.") && ip != h2_ip,
            "{ip} (host2 has {h2_ip})"
        );
        let claims = pools(&central);
        assert!(
            claims.contains(&format!("dovesnap-ip-{ip}=dockerhost "))
                && claims.contains(&format!("dovesnap-ip-{h2_ip}=host2 ")),
            "{claims}"
        );
        let ids = central.switch_ids(SWITCH);
        assert!(
            ids.contains("dovesnap-host-dockerhost") && ids.contains("dovesnap-host-host2"),
            "{ids}"
        );
        let ports = central.ports(SWITCH);
        assert_eq!(ports.len(), 2, "{ports:?}");
        for p in &ports {
            wait_port_up(&central, p);
        }
        // ICMP both ways, TCP from host2's container to the Docker container.
        assert!(pings(&c2, &ip), "host2 -> docker ping");
        assert!(web.ping(&h2_ip), "docker -> host2 ping");
        assert_eq!(fetch_port(&c2, &ip, 80).trim(), "hello-from-docker");
        let _far_web = web_server(&c2, &root, "far");
        let _upstream = NxStub::start(UPSTREAM);
        names_across_hosts(&central, &plugin, (&c2, &h2_ip), &web, &ip);
        // No gateway on the switch: no default route through the overlay (Docker gives
        // the container its docker_gwbridge for the way out instead).
        let routes = String::from_utf8_lossy(&web.exec(&["ip", "route"]).stdout).into_owned();
        assert!(
            !routes
                .lines()
                .any(|l| l.starts_with("default") && l.contains("dev eth0")),
            "{routes}"
        );
        // The container's veth deleted behind the plugin's back: the reconciler makes
        // it again into the container and puts its port back on br-int with its
        // iface-id; ovn-controller binds it again and host2 reaches it.
        let endpoint = docker::docker_ok(&[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"dsovl-net\").EndpointID}}",
            &web.name,
        ]);
        let port = format!("ovsv{}", &endpoint[..10]);
        sh("ip", &["link", "del", &port]);
        let start = Instant::now();
        while !(pings(&c2, &ip) && web.ping(&h2_ip)) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "overlay: the deleted veth was not repaired; plugin log:\n{}",
                plugin.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "recovery: overlay veth deleted: {} ms",
            start.elapsed().as_millis()
        );
        let repairs = plugin.status()["repairs"].to_string();
        assert!(repairs.contains("\"veth\""), "{repairs}");
        assert_eq!(fetch_port(&c2, &ip, 80).trim(), "hello-from-docker");
    }
    // The container went: so did its names, on every host.
    assert!(
        central.dns_records().is_empty(),
        "{:?}",
        central.dns_records()
    );
    assert_eq!(resolve(&c2, "dsovl-web"), None, "a gone container's name");
    // `docker network rm` on the docker host: the switch stays for host2.
    assert_eq!(central.switches(), [SWITCH]);
    let ids = central.switch_ids(SWITCH);
    assert!(
        !ids.contains("dockerhost") && ids.contains("host2"),
        "{ids}"
    );
    assert_eq!(central.ports(SWITCH), [lsp(&e2)]);
    assert!(!sh("ovs-vsctl", &["list-ports", "br-int"]).contains("ovsv"));
    // Docker released its addresses and its use of the pool: host2's remain.
    let claims = pools(&central);
    assert!(!claims.contains("dockerhost"), "{claims}");
    h2.detach(&n2, &e2);
    h2.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": n2}));
    assert!(central.switches().is_empty());
    h2.ok(
        "/IpamDriver.ReleaseAddress",
        json!({"PoolID": pool2, "Address": h2_addr}),
    );
    h2.ok("/IpamDriver.ReleasePool", json!({"PoolID": pool2}));
    // The DNS forwarders went with the networks (namespaces, veths, OVS ports).
    let netns = sh("ip", &["netns", "list"]);
    assert!(!netns.contains("dsdns-"), "{netns}");
    assert!(!sh("ip", &["-o", "link"]).contains("dsdns"));
    assert!(!sh("ovs-vsctl", &["list-ports", "br-int"]).contains("dsdns"));
    assert_eq!(
        pools(&central).trim(),
        "",
        "the pool went with its last user"
    );

    // With an OVN gateway on host2 (`ovs.ovn.gateway`): dockerd routes the container
    // through OVN (Join's gateway) and attaches no docker_gwbridge; its traffic leaves
    // SNATed to the gateway's address and its `-p` answers at that address.
    let ext = ExtNet::start(&h2);
    ext.map();
    let g2 = id("g2");
    create_gateway_network(&h2, &g2, "host2");
    {
        let net = Network::create(
            GW_SWITCH,
            &[
                "-o",
                "mode=overlay",
                "-o",
                &format!("ovs.ovn.switch={GW_SWITCH}"),
                "-o",
                "ovs.ovn.gateway=host2",
                "-o",
                &format!("ovs.ovn.gateway_address={GW_EXT}/24@{FAR_IP}"),
                "--subnet",
                GW_SUBNET,
                // With --ip-range, Docker's IPAM takes the range's first address for
                // the gateway unless told: every host must give the router's.
                "--gateway",
                "10.31.0.1",
                "--ip-range",
                "10.31.0.128/25",
            ],
        );
        let web = Container::httpd_with("dsovl-gwweb", &net, &["-p", "8082:80"], "via-ovn");
        let routes = String::from_utf8_lossy(&web.exec(&["ip", "route"]).stdout).into_owned();
        assert!(
            routes.contains("default via 10.31.0.1 dev eth0"),
            "{routes}"
        );
        let links = String::from_utf8_lossy(&web.exec(&["ip", "-o", "link"]).stdout).into_owned();
        assert!(!links.contains("eth1"), "docker_gwbridge attached: {links}");
        assert!(web.ping("10.31.0.1"), "docker -> the OVN gateway");
        wait_until("docker -> far through OVN", Duration::from_secs(20), || {
            docker::container_tcp(&web, FAR_IP, 7000)
                .is_ok_and(|s| s.trim() == format!("from {GW_EXT}"))
        });
        assert_eq!(fetch_port(&ext.far, GW_EXT, 8082).trim(), "via-ovn");
    }
    h2.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": g2}));
    assert_no_gateway_left(&central);
}

/// Asks the switch's DNS address for `name`'s A record from `ctr` (busybox nslookup);
/// the address, or None without an answer.
fn resolve(ctr: &Netns, name: &str) -> Option<String> {
    let out = ctr.run(
        "timeout",
        &[
            "3",
            "busybox",
            "nslookup",
            "-type=a",
            "-timeout=1",
            name,
            DNS_ADDR,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let answer = text.split_once(&format!("Name:\t{name}"))?.1;
    answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("Address: "))
        .map(|a| a.trim().to_string())
}

/// Names across hosts: dovesnap publishes the Docker container's name and alias (from
/// Docker's Engine API) in OVN's DNS table; ovn-controller on host2 answers them to
/// host2's container, which fetches from the name's address; the Docker container's
/// own route to the DNS address (Join's) reaches OVN on the Docker host too.
fn names_across_hosts(
    central: &Central,
    plugin: &dovesnap_tests::daemon::Daemon,
    (c2, c2_ip): (&Netns, &str),
    web: &Container,
    ip: &str,
) {
    let start = Instant::now();
    wait_until(
        "the container's names in OVN",
        Duration::from_secs(20),
        || {
            central
                .dns_records()
                .iter()
                .any(|r| r.contains("dsovl-web"))
        },
    );
    let records = central.dns_records().join(" ");
    assert!(
        records.contains(&format!("dsovl-web={ip}"))
            && records.contains(&format!("www-alias={ip}")),
        "{records}"
    );
    wait_until("host2's answer", Duration::from_secs(15), || {
        resolve(c2, "dsovl-web").is_some()
    });
    eprintln!(
        "names: published and answered on host2 after {} ms",
        start.elapsed().as_millis()
    );
    let resolved = resolve(c2, "DSOVL-web").expect("an answer for dsovl-web");
    assert_eq!(resolved, ip);
    assert_eq!(resolve(c2, "www-alias").as_deref(), Some(ip));
    assert_eq!(fetch_port(c2, &resolved, 80).trim(), "hello-from-docker");
    let own = web.exec(&["nslookup", "-type=a", "dsovl-web", DNS_ADDR]);
    let own = String::from_utf8_lossy(&own.stdout).into_owned();
    assert!(
        own.contains(&format!("Address: {ip}")),
        "docker host's OVN: {own}"
    );

    // The whole path from a Docker container (`--dns` DNS_ADDR): its resolver
    // (127.0.0.11, Docker's embedded one) does not know host2's container and forwards
    // the query from the container's namespace, through the overlay to OVN. host2 is an
    // API host with no Docker to ask, so its container's name is added by hand here.
    let row = central.nbctl(&[
        "create",
        "DNS",
        &format!("records:far-c2={c2_ip}"),
        &format!("external_ids:dovesnap-switch={SWITCH}"),
    ]);
    central.nbctl(&["add", "Logical_Switch", SWITCH, "dns_records", row.trim()]);
    // A and AAAA (busybox nslookup asks both): OVN answers the A, the host's forwarder
    // the AAAA OVN leaves unanswered (the stub's NXDOMAIN), with no 4 s wait; an
    // external name is the stub's answer through the forwarder.
    let lookup = |name: &str| {
        let t = Instant::now();
        let out = web.exec(&["nslookup", name]);
        let ms = t.elapsed().as_millis();
        eprintln!("names: {name} (A+AAAA) through Docker's resolver in {ms} ms");
        (String::from_utf8_lossy(&out.stdout).into_owned(), ms)
    };
    let (far, ms) = lookup("far-c2");
    assert!(
        far.contains(&format!("Address: {c2_ip}")) && ms < 2000,
        "{ms} ms: {far}"
    );
    let (ext, ms) = lookup(EXTERNAL_NAME);
    assert!(ext.contains(EXTERNAL_IP) && ms < 2000, "{ms} ms: {ext}");
    let fwd = plugin.status()["networks"][0]["dns_forwarder"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        fwd.starts_with("dsdns-") && fwd.contains("serving"),
        "{fwd}"
    );
    let t = Instant::now();
    let fetched = web.fetch("http://far-c2:8080/");
    eprintln!("names: fetch by name in {} ms", t.elapsed().as_millis());
    assert_eq!(fetched.as_deref().map(str::trim), Ok("far"));
    central.nbctl(&["destroy", "DNS", row.trim()]);
    // Its namespace deleted behind the plugin's back: the reconciler makes it again.
    let netns = fwd.split_whitespace().next().unwrap_or_default();
    sh("ip", &["netns", "del", netns]);
    wait_until("the forwarder repaired", Duration::from_secs(10), || {
        plugin.status()["repairs"]
            .to_string()
            .contains("dns-forwarder")
    });
    wait_until("external names again", Duration::from_secs(10), || {
        lookup(EXTERNAL_NAME).0.contains(EXTERNAL_IP)
    });

    // `dovesnap status` counts the switch's names (its reconciler's last read: the
    // container's name, alias and short id); a row deleted behind dovesnap's back is
    // published again by the reconciler.
    let names = || {
        let status = plugin.status();
        let nets = status["networks"].as_array().cloned().unwrap_or_default();
        nets.iter().find_map(|n| n["names"].as_u64())
    };
    wait_until("the names count in status", Duration::from_secs(10), || {
        names() == Some(3)
    });
    let ours = central.nbctl(&[
        "--bare",
        "--columns=_uuid",
        "find",
        "DNS",
        "external_ids:dovesnap-chassis=dockerhost",
    ]);
    central.nbctl(&["destroy", "DNS", ours.trim()]);
    wait_until("the names published again", Duration::from_secs(10), || {
        central
            .dns_records()
            .iter()
            .any(|r| r.contains("dsovl-web"))
    });
}

/// An external-style name the stub resolver knows, and its address.
const EXTERNAL_NAME: &str = "ext.example";
const EXTERNAL_IP: &str = "192.0.2.7";

/// A stand-in for a host's real resolver, on UDP port 53 of `addr` until dropped:
/// answers the A query of [`EXTERNAL_NAME`] and every other query with NXDOMAIN.
struct NxStub {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NxStub {
    fn start(addr: &str) -> Self {
        let sock = std::net::UdpSocket::bind((addr, 53)).expect("bind the stub resolver");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n < 12 {
                    continue;
                }
                let reply = stub_answer(&buf[..n]);
                let _ = sock.send_to(&reply, from);
            }
        });
        NxStub {
            stop,
            thread: Some(thread),
        }
    }
}

/// The stub's reply to `query`: the query back (QR set, RD kept, RA set) with RCODE 3
/// (NXDOMAIN), or, for the A question of [`EXTERNAL_NAME`], its question and one answer.
fn stub_answer(query: &[u8]) -> Vec<u8> {
    let mut out = query.to_vec();
    out[2] = 0x80 | (query[2] & 0x01);
    out[3] = 0x83;
    // The question's name: labels from byte 12 to the root label.
    let (mut at, mut labels) = (12, Vec::new());
    while let Some(&len) = query.get(at) {
        if len == 0 || at + 1 + len as usize > query.len() {
            break;
        }
        labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + len as usize]).into_owned());
        at += 1 + len as usize;
    }
    let qend = at + 5;
    if labels.join(".") != EXTERNAL_NAME || query.get(at + 1..qend) != Some(&[0, 1, 0, 1]) {
        return out;
    }
    out.truncate(qend);
    out[3] = 0x80;
    // QDCOUNT 1, ANCOUNT 1, NSCOUNT 0, ARCOUNT 0.
    out[4..12].copy_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]);
    // The question's name (pointer), A, IN, TTL 60, 4 bytes of address.
    out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    let ip: std::net::Ipv4Addr = EXTERNAL_IP.parse().unwrap();
    out.extend_from_slice(&ip.octets());
    out
}

impl Drop for NxStub {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
