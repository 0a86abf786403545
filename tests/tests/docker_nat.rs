//! nat mode end to end: real dockerd, real plugin, real OVS, real netfilter.
//!
//! Topology: a "far" namespace joined to the host by a veth that plays the uplink
//! (host 10.232.100.1/24, far 10.232.100.2/24; for IPv6 fd31:232:100::1/64 and ::2, the
//! far side with no route to any container subnet). Servers in the far namespace report
//! the source address they see, which shows the masquerade.

use std::time::Duration;

use dovesnap_tests::docker::{
    assert_outbound_masqueraded, assert_published, container_tcp, docker, start_plugin, Container,
    Network, WHOAMI,
};
use dovesnap_tests::far::Far;
use dovesnap_tests::status::{endpoints, xdp_counter};
use dovesnap_tests::{require_root, run, sh, Netns};

const HOST_UPLINK_IP: &str = "10.232.100.1";
const FAR_IP: &str = "10.232.100.2";

/// Fetches `url` with busybox wget from namespace `ns` (the host's when None); returns
/// the trimmed body, empty on failure.
fn wget(ns: Option<&Netns>, url: &str) -> String {
    let args = ["5", "busybox", "wget", "-q", "-O", "-", url];
    let out = match ns {
        Some(ns) => ns.run("timeout", &args),
        None => run("timeout", &args),
    };
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Names of our rules still present anywhere: the nft table's chains for `net_id` and
/// `dovesnap:` iptables comments.
fn rules_left(net_id: &str) -> Vec<String> {
    let mut left = Vec::new();
    let nft = run("nft", &["list", "table", "inet", "dovesnap"]);
    let text = String::from_utf8_lossy(&nft.stdout);
    for l in text.lines() {
        if l.contains(&net_id[..12]) {
            left.push(l.trim().to_string());
        }
    }
    let ipt = String::from_utf8_lossy(&run("iptables", &["-w", "-S"]).stdout).into_owned();
    for l in ipt.lines() {
        if l.contains(&format!("dovesnap:{}", &net_id[..12])) {
            left.push(l.to_string());
        }
    }
    left
}

#[test]
#[ignore = "needs root, Open vSwitch, nftables and dockerd (cargo xtask test)"]
fn outbound_published_hairpin_and_cleanup() {
    let mut plugin = start_plugin();
    let mut far = Far::new("dsn", "10.232.100");
    far.add_ipv6("fd31:232:100");
    let net_id;
    {
        let net = Network::create(
            "dsnat-a",
            &[
                "-o",
                "mode=nat",
                "--subnet",
                "10.232.1.0/24",
                "--gateway",
                "10.232.1.1",
                "--ipv6",
                "--subnet",
                "fd31:232:1::/64",
                "--gateway",
                "fd31:232:1::1",
            ],
        );
        net_id = net.id();
        // The gateways sit on the bridge.
        let bridge = format!("ovsbr-{}", &net_id[..8]);
        let addrs = sh("ip", &["-o", "addr", "show", "dev", &bridge]);
        assert!(addrs.contains("10.232.1.1/24"), "{addrs}");
        assert!(addrs.contains("fd31:232:1::1/64"), "{addrs}");

        let web = Container::published_web("dsnat-web", &net, 18080, "nat-web");
        let c = Container::idle("dsnat-cli", &net);

        // Outbound: TCP, UDP and ICMP to the far side, masqueraded to the host's uplink
        // address.
        assert_outbound_masqueraded(&c, FAR_IP, HOST_UPLINK_IP);

        // Inbound: the far side reaches the published TCP port.
        let url = format!("http://{HOST_UPLINK_IP}:18080/");
        assert_published(&web, &far.ns, HOST_UPLINK_IP, 18080, "nat-web");

        // The host itself reaches the published port at its own address.
        assert_eq!(wget(None, &url), "nat-web", "host -> published port");

        // Hairpin: a container of the same network through the host's address.
        assert_eq!(
            c.fetch(&format!("http://{HOST_UPLINK_IP}:18080/"))
                .expect("hairpin")
                .trim(),
            "nat-web"
        );
        // And the web container to its own published port.
        assert_eq!(
            web.fetch(&format!("http://{HOST_UPLINK_IP}:18080/"))
                .expect("self hairpin")
                .trim(),
            "nat-web"
        );
        // IPv6: out to the far side masqueraded to the host's uplink address (the far
        // side has no route to fd31:232:1::/64), and the published ports answer on
        // the host's IPv6 address, from the far side and from the host itself.
        let (host6, far6) = far.ipv6();
        assert!(c.ip6(&net).starts_with("fd31:232:1::"), "container IPv6");
        assert_outbound_masqueraded(&c, far6, host6);
        assert_published(&web, &far.ns, host6, 18080, "nat-web");
        let url6 = format!("http://[{host6}]:18080/");
        assert_eq!(wget(None, &url6), "nat-web", "host -> published port, IPv6");

        // docker ps cannot show a remote driver's ports; dovesnap status does.
        let status = plugin.status().to_string();
        assert!(status.contains(":18080->80/tcp"), "{status}");
        let rules = rules_left(&net_id);
        assert!(!rules.is_empty(), "no rules while the network exists?");

        // A crash and a restart neither lose nor duplicate rules, and the published
        // port keeps working. The restart also deletes the table of versions before
        // IPv6 support (`ip dovesnap`) in favour of `inet dovesnap`.
        plugin.kill();
        sh("nft", &["add", "table", "ip", "dovesnap"]);
        plugin = start_plugin();
        let legacy = run("nft", &["list", "table", "ip", "dovesnap"]);
        assert!(
            !legacy.status.success(),
            "the old ip dovesnap table is left"
        );
        assert_eq!(rules_left(&net_id), rules, "rules changed across a restart");
        assert_eq!(wget(Some(&far.ns), &url6), "nat-web", "IPv6 after restart");
        assert_eq!(
            wget(Some(&far.ns), &url),
            "nat-web",
            "published port after restart"
        );
        // A clean stop keeps the rules, so running containers stay reachable while
        // the plugin is down (an upgrade, say); the next start finds them as they were.
        assert!(
            plugin.terminate(),
            "dovesnap did not stop cleanly on SIGTERM"
        );
        assert_eq!(rules_left(&net_id), rules, "rules changed by a clean stop");
        assert_eq!(
            wget(Some(&far.ns), &url),
            "nat-web",
            "published port while the plugin is stopped"
        );
        plugin = start_plugin();
        assert_eq!(
            rules_left(&net_id),
            rules,
            "rules changed across a clean stop and start"
        );
        assert_eq!(
            wget(Some(&far.ns), &url),
            "nat-web",
            "published port after a clean stop"
        );
    }
    drop(plugin);
    assert_eq!(
        rules_left(&net_id),
        Vec::<String>::new(),
        "rules left after removal"
    );
    drop(far);
}

/// `ovs-vsctl get TABLE RECORD external_ids:KEY`, as ovs-vsctl prints it (a quoted
/// string that `set` takes back as is).
fn external_id(table: &str, record: &str, key: &str) -> String {
    sh(
        "ovs-vsctl",
        &["get", table, record, &format!("external_ids:{key}")],
    )
    .trim()
    .to_string()
}

/// Sets (or restores) `external_ids:KEY` to `value`, given in ovs-vsctl's syntax.
fn set_external_id(table: &str, record: &str, key: &str, value: &str) {
    sh(
        "ovs-vsctl",
        &["set", table, record, &format!("external_ids:{key}={value}")],
    );
}

/// What the corrupting test changed in OVSDB, and the containers and networks it made:
/// on drop (pass or fail) the plugin is stopped, the records are put back, a fresh
/// plugin recovers them and Docker removes everything through it.
struct Corrupted {
    plugin: Option<dovesnap_tests::daemon::Daemon>,
    /// `ovs-vsctl` argument lists that put the records back.
    restore: Vec<Vec<String>>,
    containers: Vec<String>,
    networks: Vec<String>,
}

impl Drop for Corrupted {
    fn drop(&mut self) {
        if let Some(mut p) = self.plugin.take() {
            p.terminate();
        }
        for args in &self.restore {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = run("ovs-vsctl", &args);
        }
        let plugin = start_plugin();
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
        drop(plugin);
    }
}

#[test]
#[ignore = "needs root, Open vSwitch, nftables and dockerd (cargo xtask test)"]
fn records_that_cannot_be_trusted_are_left_alone() {
    let mut plugin = start_plugin();
    let far = Far::new("dsr", "10.232.100");
    let foreign = dovesnap_tests::Veth::new("dsfor");
    let mut nets = Vec::new();
    let mut containers = Vec::new();
    for (i, what) in ["opt", "ipam", "ep"].iter().enumerate() {
        let subnet = format!("10.232.{}.0/24", 21 + i);
        let gateway = format!("10.232.{}.1", 21 + i);
        let net = Network::create(
            &format!("dsrec-{what}"),
            &["-o", "mode=nat", "--subnet", &subnet, "--gateway", &gateway],
        );
        let publish = format!("{}:80", 18191 + i);
        containers.push(Container::httpd_with(
            &format!("dsrec-{what}"),
            &net,
            &["-p", &publish],
            &format!("rec-{what}"),
        ));
        nets.push(net);
    }
    let ids: Vec<String> = nets.iter().map(Network::id).collect();
    let bridges: Vec<String> = ids.iter().map(|id| format!("ovsbr-{}", &id[..8])).collect();
    let works = |i: usize| {
        let url = format!("http://{HOST_UPLINK_IP}:{}/", 18191 + i);
        wget(Some(&far.ns), &url) == ["rec-opt", "rec-ipam", "rec-ep"][i]
            && far.reached_from(&containers[i])
    };
    for i in 0..3 {
        assert!(works(i), "network {i} before the restart");
    }
    let rules: Vec<Vec<String>> = ids.iter().map(|id| rules_left(id)).collect();
    let port = sh("ovs-vsctl", &["list-ports", &bridges[2]])
        .lines()
        .find(|p| p.starts_with("ovsv"))
        .expect("the endpoint's port")
        .to_string();

    // Stopped plugin; three records corrupted behind its back.
    assert!(plugin.terminate(), "dovesnap did not stop cleanly");
    drop(plugin);
    let mut bad = Corrupted {
        plugin: None,
        restore: Vec::new(),
        containers: containers.iter().map(|c| c.name.clone()).collect(),
        networks: nets.iter().map(|n| n.name.clone()).collect(),
    };
    let opt = "dovesnap-opt-ovs.bridge.mtu";
    let restore = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    bad.restore.push(restore(&[
        "remove",
        "bridge",
        &bridges[0],
        "external_ids",
        opt,
    ]));
    set_external_id("bridge", &bridges[0], opt, "banana");
    let ipam = external_id("bridge", &bridges[1], "dovesnap-ipam");
    let arg = format!("external_ids:dovesnap-ipam={ipam}");
    bad.restore
        .push(restore(&["set", "bridge", &bridges[1], &arg]));
    set_external_id("bridge", &bridges[1], "dovesnap-ipam", "\"{not json\"");
    let record = external_id("port", &port, "dovesnap-endpoint");
    let arg = format!("external_ids:dovesnap-endpoint={record}");
    bad.restore.push(restore(&["set", "port", &port, &arg]));
    let json: String = serde_json::from_str(&record).expect("ovs-vsctl quotes like JSON");
    let mut ep: serde_json::Value = serde_json::from_str(&json).expect("endpoint record");
    ep["host_ifname"] = foreign.host.clone().into();
    ep["container_ifname"] = foreign.peer.clone().into();
    ep["sandbox"] = "/proc/1/ns/net".into();
    let quoted = serde_json::to_string(&ep.to_string()).unwrap();
    set_external_id("port", &port, "dovesnap-endpoint", &quoted);

    bad.plugin = Some(start_plugin());
    let plugin = bad.plugin.as_ref().unwrap();
    // Rules and connectivity of all three stay.
    for i in 0..3 {
        assert_eq!(
            rules_left(&ids[i]),
            rules[i],
            "rules of network {i} changed"
        );
        assert!(works(i), "network {i} after the restart");
    }
    // Status and doctor name the three records.
    let status = plugin.status();
    let records = status["bad_records"].to_string();
    for (record, why) in [
        (format!("bridge {}", bridges[0]), "options"),
        (format!("bridge {}", bridges[1]), "dovesnap-ipam"),
        (format!("port {port}"), "interfaces"),
    ] {
        assert!(
            records.contains(&record) && records.contains(why),
            "{record}: {records}"
        );
    }
    assert!(plugin.status_text().contains("unreadable records"));
    let doctor = run(
        dovesnap_tests::daemon::dovesnap_bin().to_str().unwrap(),
        &["doctor", "--json"],
    );
    let doctor = String::from_utf8_lossy(&doctor.stdout);
    let checks: serde_json::Value = serde_json::from_str(&doctor).expect("doctor --json");
    let check = checks
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["check"] == "records")
        .unwrap_or_else(|| panic!("no records check: {doctor}"));
    assert_eq!(check["status"], "WARN", "{check}");
    for record in [&bridges[0], &bridges[1], &port] {
        assert!(
            check["detail"].to_string().contains(record.as_str()),
            "{check}"
        );
    }
    // Docker removing the container reaches the plugin, which leaves the foreign
    // interface alone.
    docker(&["rm", "-f", &containers[2].name]);
    let link = run("ip", &["link", "show", &foreign.host]);
    assert!(link.status.success(), "the foreign interface was deleted");

    // Records put back: recovered, then removed by Docker through the plugin.
    drop(bad);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            rules_left(id),
            Vec::<String>::new(),
            "rules of network {i} left"
        );
    }
    let left = dovesnap_tests::ovs_bridges();
    assert!(
        bridges.iter().all(|b| !left.contains(b)),
        "bridges left: {left:?}"
    );
    drop(foreign);
    drop(far);
}

#[test]
#[ignore = "needs root, Open vSwitch, nftables and dockerd (cargo xtask test)"]
fn two_nat_networks_are_isolated() {
    let _plugin = start_plugin();
    let a = Network::nat("dsnat-iso-a", "10.232.2.0/24");
    let b = Network::nat("dsnat-iso-b", "10.232.3.0/24");
    let ca = Container::httpd("dsnat-iso-ca", &a, "a");
    let cb = Container::idle("dsnat-iso-cb", &b);
    let ip = ca.ip(&a);
    assert!(cb.fetch(&format!("http://{ip}/")).is_err(), "b reached a");
    assert!(!cb.ping(&ip), "b pinged a");
    // An --internal nat network has no way out.
    let far = Far::new("dsn", "10.232.100");
    let internal = Network::create(
        "dsnat-iso-int",
        &["-o", "mode=nat", "--internal", "--subnet", "10.232.7.0/24"],
    );
    let ci = Container::idle("dsnat-iso-ci", &internal);
    assert!(
        container_tcp(&ci, FAR_IP, 7000).is_err(),
        "--internal reached the far side"
    );
    assert!(!ci.ping(FAR_IP), "--internal pinged the far side");
    drop(ci);
    drop(internal);
    drop(far);
    // Connected to both, a container reaches both.
    docker(&["network", "connect", &a.name, &cb.name]);
    assert_eq!(
        cb.fetch(&format!("http://{ip}/"))
            .expect("connected to both")
            .trim(),
        "a"
    );
}

#[test]
#[ignore = "needs root, Open vSwitch, nftables and dockerd (cargo xtask test)"]
fn works_under_a_forward_drop_policy() {
    require_root();
    struct Policy(String);
    impl Drop for Policy {
        fn drop(&mut self) {
            let _ = run("iptables", &["-w", "-P", "FORWARD", &self.0]);
        }
    }
    let before = sh("iptables", &["-w", "-S", "FORWARD"]);
    let policy = if before.contains("-P FORWARD DROP") {
        "DROP"
    } else {
        "ACCEPT"
    };
    let _restore = Policy(policy.to_string());
    sh("iptables", &["-w", "-P", "FORWARD", "DROP"]);

    let _plugin = start_plugin();
    let far = Far::new("dsn", "10.232.100");
    let net = Network::nat("dsnat-drop", "10.232.4.0/24");
    let web = Container::httpd_with("dsnat-drop-web", &net, &["-p", "18090:80"], "drop-ok");
    let seen = container_tcp(&web, FAR_IP, 7000).expect("outbound under FORWARD DROP");
    assert_eq!(seen.trim(), format!("from {HOST_UPLINK_IP}"));
    let url = format!("http://{HOST_UPLINK_IP}:18090/");
    assert_eq!(
        wget(Some(&far.ns), &url),
        "drop-ok",
        "inbound under FORWARD DROP"
    );
    // The host's policy is untouched.
    assert!(sh("iptables", &["-w", "-S", "FORWARD"]).contains("-P FORWARD DROP"));
}

/// The host port `dovesnap status` reports for `container_port`/tcp of the network's
/// endpoints (`IP:HOSTPORT->CPORT/tcp`).
fn published_host_port(status: &serde_json::Value, container_port: u16) -> Option<u16> {
    let suffix = format!("->{container_port}/tcp");
    endpoints(status, None)
        .iter()
        .flat_map(|e| e["published"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_string))
        .find(|p| p.ends_with(&suffix))
        .and_then(|p| p.split("->").next()?.rsplit(':').next()?.parse().ok())
}

#[test]
#[ignore = "needs root, Open vSwitch, nftables and dockerd (cargo xtask test)"]
fn dynamic_and_ranged_host_ports() {
    let plugin = start_plugin();
    let far = Far::new("dsn", "10.232.100");
    let net = Network::nat("dsnat-dyn", "10.232.8.0/24");
    // -P: Docker sends host port 0 to a remote driver; dovesnap picks a free one.
    let _a = Container::httpd_with("dsnat-dyn-a", &net, &["--expose", "80", "-P"], "dyn-a");
    // A host range with one container port: one port of the range is chosen.
    let _b = Container::httpd_on("dsnat-dyn-b", &net, 81, &["-p", "18100-18102:81"], "dyn-b");
    // Bound to one host address: reachable there only.
    let bound = format!("{HOST_UPLINK_IP}:18110:82");
    let _c = Container::httpd_on("dsnat-dyn-c", &net, 82, &["-p", &bound], "dyn-c");
    assert_eq!(
        wget(Some(&far.ns), &format!("http://{HOST_UPLINK_IP}:18110/")),
        "dyn-c"
    );
    let gateway = "10.232.8.1";
    assert_eq!(
        wget(None, &format!("http://{gateway}:18110/")),
        "",
        "bound port on another address"
    );
    let status = plugin.status();
    let pa = published_host_port(&status, 80).unwrap_or_else(|| panic!("-P: {status}"));
    let pb = published_host_port(&status, 81).unwrap_or_else(|| panic!("range: {status}"));
    assert!((18100..=18102).contains(&pb), "{pb} outside 18100-18102");
    assert_eq!(
        wget(Some(&far.ns), &format!("http://{HOST_UPLINK_IP}:{pa}/")),
        "dyn-a"
    );
    assert_eq!(
        wget(Some(&far.ns), &format!("http://{HOST_UPLINK_IP}:{pb}/")),
        "dyn-b"
    );
}

/// A rule of the test's in `DOCKER-USER`, deleted on drop (also on failure).
struct UserRule(Vec<String>);

impl UserRule {
    /// `iptables -I DOCKER-USER -d IP -p tcp --dport PORT -j DROP`, as an administrator
    /// would add it (commented so that a leftover is recognisable).
    fn drop_tcp(ip: &str, port: u16) -> Self {
        let spec: Vec<String> = [
            "-d",
            ip,
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-m",
            "comment",
            "--comment",
            "hfwtest",
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let rule = UserRule(spec);
        rule.iptables("-I");
        rule
    }

    fn iptables(&self, op: &str) -> std::process::Output {
        let mut args = vec!["-w", op, "DOCKER-USER"];
        args.extend(self.0.iter().map(String::as_str));
        run("iptables", &args)
    }
}

impl Drop for UserRule {
    fn drop(&mut self) {
        while self.iptables("-D").status.success() {}
    }
}

/// An administrator's nftables table `inet hfwt` with a forward chain that drops TCP
/// to one address and port; deleted on drop.
struct NftTable;

impl NftTable {
    fn drop_tcp(ip: &str, port: u16) -> Self {
        let _ = run("nft", &["delete", "table", "inet", "hfwt"]);
        let table = NftTable;
        sh("nft", &["add", "table", "inet", "hfwt"]);
        let hook = "{ type filter hook forward priority 0; policy accept; }";
        sh("nft", &["add", "chain", "inet", "hfwt", "hfwchain", hook]);
        let port = port.to_string();
        let rule = ["ip", "daddr", ip, "tcp", "dport", &port, "drop"];
        let mut args = vec!["add", "rule", "inet", "hfwt", "hfwchain"];
        args.extend(rule);
        sh("nft", &args);
        table
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = run("nft", &["delete", "table", "inet", "hfwt"]);
    }
}

/// The test's tagged rule lines of `iptables -S CHAIN` for network `id`.
fn tagged_in(chain: &str, id: &str) -> Vec<String> {
    let tag = format!("dovesnap:{}", &id[..12]);
    sh("iptables", &["-w", "-S", chain])
        .lines()
        .filter(|l| l.contains(&tag))
        .map(str::to_string)
        .collect()
}

/// issue 16: the administrator's DOCKER-USER rules apply to nat and nat-fast
/// containers whether added before or after the network, and a nat network is isolated
/// from Docker's bridge networks as two Docker bridge networks are from each other. A
/// Docker bridge container is the reference for both.
#[test]
#[ignore = "needs root, Open vSwitch, nftables and dockerd (cargo xtask test)"]
fn docker_user_rules_and_docker_isolation_apply() {
    require_root();
    assert!(
        run("iptables", &["-w", "-S", "DOCKER-USER"])
            .status
            .success(),
        "dockerd's DOCKER-USER chain is missing: run `cargo xtask setup`"
    );
    let plugin = start_plugin();
    let mut far = Far::new("hfw", "10.234.10");
    // As in docker_nat_fast: the far end stands in for a NIC (GRO on, full checksums).
    far.ns.sh(
        "ethtool",
        &["-K", &far.uplink.peer, "gro", "on", "tx", "off"],
    );
    let far_ip = far.far_ip.clone();
    // P1 and P2 are dropped by the administrator, P3 (the who-am-I's own 7000) not.
    // P4 is dropped by a forward chain of an nftables table of the administrator's.
    let (p1, p2, p3, p4) = (7001, 7002, 7000, 7003);
    for port in [p1, p2, p4] {
        far.spawn(&["python3", "-c", WHOAMI, &far_ip, &port.to_string()]);
    }
    let _before = UserRule::drop_tcp(&far_ip, p1);
    let nat = Network::create("hfw-nat", &["-o", "mode=nat", "--subnet", "10.234.1.0/24"]);
    let fast = Network::nat_fast("hfw-fast", &far.uplink.host, "10.234.2.0/24");
    let bridge = Network::create_with_driver("hfw-br", "bridge", &["--subnet", "10.234.3.0/24"]);
    let cn = Container::idle("hfw-nat-c", &nat);
    let cf = Container::idle("hfw-fast-c", &fast);
    let cb = Container::idle("hfw-br-c", &bridge);
    let reach = |c: &Container, port| container_tcp(c, &far_ip, port).is_ok();
    for c in [&cn, &cf, &cb] {
        assert!(reach(c, p3), "{} cannot reach {far_ip}:{p3}", c.name);
        assert!(reach(c, p2), "{} cannot reach {far_ip}:{p2}", c.name);
        assert!(
            !reach(c, p1),
            "{} reached {far_ip}:{p1} (dropped before)",
            c.name
        );
    }
    // nat-fast left P1 to the kernel (where the rule dropped it) and carried P3 itself.
    let status = plugin.status();
    assert!(
        xdp_counter(&status, "endpoint-host-firewall") > 0,
        "{status}"
    );
    assert!(xdp_counter(&status, "endpoint-redirect") > 0, "{status}");
    let _after = UserRule::drop_tcp(&far_ip, p2);
    // nat-fast reads the rules again on every reconciler pass (5 s).
    let picked_up = |n: usize| {
        let seen = (0..40).any(|_| {
            std::thread::sleep(Duration::from_millis(500));
            plugin.status()["fast_path"]["host_rules"]
                .as_array()
                .map_or(0, Vec::len)
                == n
        });
        assert!(
            seen,
            "nat-fast does not list {n} host rules: {}",
            plugin.status()
        );
    };
    picked_up(2);
    for c in [&cn, &cf, &cb] {
        assert!(
            !reach(c, p2),
            "{} reached {far_ip}:{p2} (dropped after)",
            c.name
        );
        assert!(reach(c, p3), "{} cannot reach {far_ip}:{p3}", c.name);
    }

    let _table = NftTable::drop_tcp(&far_ip, p4);
    picked_up(3);
    assert!(!reach(&cf, p4), "nat-fast reached {far_ip}:{p4} (nft drop)");
    assert!(reach(&cf, p3), "nat-fast cannot reach {far_ip}:{p3}");

    // Docker's default bridge: its unpublished port is out of reach from the nat
    // network as from another Docker bridge network; the same container is reachable
    // from its own network.
    let default = std::mem::ManuallyDrop::new(Network {
        name: "bridge".into(),
    });
    let web = Container::httpd("hfw-def-web", &default, "default-web");
    let url = format!("http://{}/", web.ip(&default));
    let neighbour = Container::idle("hfw-def-c", &default);
    assert_eq!(
        neighbour.fetch(&url).expect("same bridge").trim(),
        "default-web"
    );
    assert!(
        cb.fetch(&url).is_err(),
        "Docker bridge network reached the default bridge"
    );
    assert!(
        cn.fetch(&url).is_err(),
        "nat network reached the default bridge"
    );

    // dockerd flushes its isolation chains when it restarts: the reconciler puts the
    // network's rules back within a pass.
    let nat_id = nat.id();
    let iso = tagged_in("DOCKER-ISOLATION-STAGE-1", &nat_id);
    assert_eq!(iso.len(), 1, "{iso:?}");
    let mut del: Vec<&str> = vec!["-w", "-D"];
    del.extend(
        iso[0]
            .split_whitespace()
            .skip(1)
            .map(|w| w.trim_matches('"')),
    );
    sh("iptables", &del);
    let back = (0..40).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        tagged_in("DOCKER-ISOLATION-STAGE-1", &nat_id) == iso
    });
    assert!(back, "the isolation rule was not put back");
    assert!(
        cn.fetch(&url).is_err(),
        "nat network reached the default bridge"
    );
}

/// `mode=routed`: no translation either way. The far side routes the subnet via the
/// host and reaches a container at its own address, on its published port only (the
/// host port of `-p` ignored, as Docker's `gateway_mode_ipv4=routed` does) and by ICMP;
/// the container reaches the far side with its own address as the source.
#[test]
#[ignore = "needs root, Open vSwitch, nftables and dockerd (cargo xtask test)"]
fn routed_network_is_reached_at_the_containers_own_addresses() {
    let mut plugin = start_plugin();
    let mut far = Far::new("dsr", "10.238.100");
    far.add_ipv6("fd31:238:100");
    far.ns.sh(
        "ip",
        &["route", "add", "10.238.1.0/24", "via", &far.host_ip],
    );
    let (host6, far6) = far.ipv6();
    let (host6, far6) = (host6.to_string(), far6.to_string());
    far.ns
        .sh("ip", &["route", "add", "fd31:238:1::/64", "via", &host6]);
    let net_id;
    {
        let net = Network::create(
            "dsrt-a",
            &[
                "-o",
                "mode=routed",
                "--subnet",
                "10.238.1.0/24",
                "--ipv6",
                "--subnet",
                "fd31:238:1::/64",
                "--gateway",
                "fd31:238:1::1",
            ],
        );
        net_id = net.id();
        let web = Container::httpd_with("dsrt-web", &net, &["-p", "18070:80"], "routed-web");
        let plain = Container::httpd("dsrt-plain", &net, "unpublished");
        let (web_ip, plain_ip) = (web.ip(&net), plain.ip(&net));

        // Inbound through the route: the published container port and ICMP, at the
        // container's own address; nothing else, and nothing on the host port.
        assert_eq!(far.ns.wget(&format!("http://{web_ip}/")), "routed-web");
        let ping = far.ns.run("ping", &["-c", "1", "-W", "2", &web_ip]);
        assert!(ping.status.success(), "far -> routed container ICMP echo");
        assert_eq!(
            far.ns.wget(&format!("http://{plain_ip}/")),
            "",
            "unpublished"
        );
        let host_port = format!("http://{}:18070/", far.host_ip);
        assert_eq!(far.ns.wget(&host_port), "", "routed mode maps no host port");

        // Outbound: the far side sees the container's own address.
        let seen = container_tcp(&plain, &far.far_ip, 7000).expect("routed -> far TCP");
        assert_eq!(seen.trim(), format!("from {plain_ip}"));

        // IPv6 alike: through the route to fd31:238:1::/64, the published port and
        // ICMPv6 at the container's own IPv6 address; outbound untranslated.
        let (web_ip6, plain_ip6) = (web.ip6(&net), plain.ip6(&net));
        assert_eq!(far.ns.wget(&format!("http://[{web_ip6}]/")), "routed-web");
        let ping6 = far.ns.run("ping", &["-6", "-c", "1", "-W", "2", &web_ip6]);
        assert!(
            ping6.status.success(),
            "far -> routed container ICMPv6 echo"
        );
        assert_eq!(
            far.ns.wget(&format!("http://[{plain_ip6}]/")),
            "",
            "unpublished"
        );
        let seen = container_tcp(&plain, &far6, 7000).expect("routed -> far TCP, IPv6");
        assert_eq!(seen.trim(), format!("from {plain_ip6}"));

        let status = plugin.status();
        let mode = status["networks"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["id"].as_str().is_some_and(|id| net_id.starts_with(id)))
            .map(|n| n["mode"].clone());
        assert_eq!(mode, Some(serde_json::json!("routed")), "{status}");

        // A crash and a restart keep the routed rules as they were (the restarted
        // plugin tells the network routed from its records and its table).
        let rules = rules_left(&net_id);
        plugin.kill();
        plugin = start_plugin();
        assert_eq!(rules_left(&net_id), rules, "rules changed across a restart");
        assert_eq!(far.ns.wget(&format!("http://{web_ip}/")), "routed-web");
    }
    drop(plugin);
    assert_eq!(rules_left(&net_id), Vec::<String>::new(), "rules left");
}
