//! Flat mode end to end: the real dockerd drives the real plugin binary, which drives the
//! real Open vSwitch (userspace datapath here). Run by `cargo xtask test`.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use dovesnap_tests::daemon::{metric_value, scrape_metrics};
use dovesnap_tests::docker::{
    docker, docker_ok, ensure_image, start_plugin, start_plugin_with, Container, Network, IMAGE,
    PLUGIN_SOCKET,
};
use dovesnap_tests::{
    host_veths, leftovers, ovs_bridges, require_root, run, sh, wait_until, Netns, TestBridge, Veth,
};

fn dovesnap_leftovers() -> Vec<String> {
    leftovers(&["ovsbr-", "dsflat", "dsbr"], &["ovsv", "ovsc", "dsbr"])
}

#[test]
#[ignore = "needs root, Open vSwitch and dockerd (cargo xtask test)"]
fn two_containers_talk_by_ip_and_name() {
    let _plugin = start_plugin();
    {
        let net = Network::create(
            "dsflat-web",
            &["--subnet", "10.231.1.0/24", "--gateway", "10.231.1.1"],
        );
        let srv = Container::httpd("dsflat-srv", &net, "hello-from-dovesnap");
        let cli = Container::idle("dsflat-cli", &net);
        let ip = srv.ip(&net);
        assert!(ip.starts_with("10.231.1."), "server got {ip}");

        let by_ip = cli.fetch(&format!("http://{ip}/")).expect("fetch by IP");
        assert_eq!(by_ip.trim(), "hello-from-dovesnap");
        let by_name = cli.fetch("http://dsflat-srv/").expect("fetch by name");
        assert_eq!(by_name.trim(), "hello-from-dovesnap");

        // The gateway from --gateway is the container's default route.
        let routes = String::from_utf8_lossy(&cli.exec(&["ip", "route"]).stdout).into_owned();
        assert!(
            routes.contains("default via 10.231.1.1"),
            "routes: {routes}"
        );

        // The bridge is an OVS bridge carrying the network id, with both ports.
        let id = net.id();
        let bridge = format!("ovsbr-{}", &id[..8]);
        assert!(ovs_bridges().contains(&bridge), "no bridge {bridge}");
        let ports = sh("ovs-vsctl", &["list-ports", &bridge]);
        assert_eq!(
            ports.lines().filter(|p| p.starts_with("ovsv")).count(),
            2,
            "{ports}"
        );
        let owner = sh(
            "ovs-vsctl",
            &["br-get-external-id", &bridge, "dovesnap-network-id"],
        );
        assert_eq!(owner.trim(), id);
        // Flat mode: the gateway is not placed on the host.
        let addrs = sh("ip", &["-o", "addr"]);
        assert!(!addrs.contains("10.231.1.1/"), "gateway on host: {addrs}");
    }
    assert_eq!(dovesnap_leftovers(), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, Open vSwitch and dockerd (cargo xtask test)"]
fn ipv6_containers_talk_by_name() {
    let plugin = start_plugin();
    {
        let net = Network::create(
            "dsflat-v6",
            &[
                "--ipv6",
                "--subnet",
                "10.231.94.0/24",
                "--subnet",
                "fd31:231:94::/64",
            ],
        );
        let srv = Container::httpd("dsflat-v6-srv", &net, "hello-over-ipv6");
        let cli = Container::idle("dsflat-v6-cli", &net);
        let v6 = |c: &Container| {
            let out = c.exec(&[
                "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
            ]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let srv_addrs = v6(&srv);
        assert!(srv_addrs.contains("fd31:231:94::"), "server: {srv_addrs}");
        // By name, over IPv6 only: Docker's resolver answers the AAAA record.
        wait_until(
            "ping6 to the server by name",
            Duration::from_secs(10),
            || {
                cli.exec(&["ping6", "-c", "1", "-W", "1", "dsflat-v6-srv"])
                    .status
                    .success()
            },
        );
        let srv_ip = srv_addrs
            .split_whitespace()
            .find(|w| w.starts_with("fd31:"))
            .and_then(|a| a.split('/').next())
            .expect("server's IPv6 address")
            .to_string();
        let body = cli
            .fetch(&format!("http://[{srv_ip}]/"))
            .expect("fetch over IPv6");
        assert_eq!(body.trim(), "hello-over-ipv6");
        // The plugin knows both addresses (`dovesnap status`).
        let status = plugin.status();
        let srv_v6 = format!("{srv_ip}/64");
        let known = status["networks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| {
                n["subnet_ipv6"] == "fd31:231:94::/64"
                    && (n["endpoints"].as_array().into_iter().flatten())
                        .any(|e| e["address_ipv6"] == srv_v6.as_str())
            });
        assert!(known, "{status}");
    }
    assert_eq!(dovesnap_leftovers(), Vec::<String>::new());
}

/// The OVS bridge holding `port`, if any.
fn bridge_of_port(port: &str) -> Option<String> {
    let out = run("ovs-vsctl", &["port-to-br", port]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
#[ignore = "needs root, Open vSwitch and dockerd (cargo xtask test)"]
fn vlan_networks_share_one_trunk_uplink() {
    let plugin = start_plugin();
    // The far end of the uplink: an OVS switch (this kernel has no 802.1Q links) with
    // the uplink's peer as its trunk port and an access port per VLAN, each leading
    // to a namespace with the VLAN's far address. Each also holds a decoy address in
    // the other VLAN's subnet: reached only by frames that crossed VLANs.
    let uplink = Veth::new("dstkup");
    let far_switch = TestBridge::new("dstkf");
    sh("ip", &["link", "set", &uplink.peer, "up"]);
    sh("ovs-vsctl", &["add-port", &far_switch.name, &uplink.peer]);
    let _far = [
        (100, "10.237.100.254/24", "10.237.200.253/24"),
        (200, "10.237.200.254/24", "10.237.100.253/24"),
    ]
    .map(|(vlan, addr, decoy)| {
        let ns = Netns::new("dstkns");
        let link = Veth::new("dstkv");
        let tag = format!("tag={vlan}");
        sh(
            "ovs-vsctl",
            &["add-port", &far_switch.name, &link.host, &tag],
        );
        link.peer_into(&ns, addr);
        ns.sh("ip", &["addr", "add", decoy, "dev", &link.peer]);
        (ns, link)
    });
    {
        let add_ports = format!("ovs.bridge.add_ports={}", uplink.host);
        let net = |name: &str, subnet: &str, vlan: &str| {
            Network::create(name, &["--subnet", subnet, "-o", vlan, "-o", &add_ports])
        };
        let n100 = net("dstk-100", "10.237.100.0/24", "ovs.bridge.vlan=100");
        let n200 = net("dstk-200", "10.237.200.0/24", "ovs.bridge.vlan=200");
        let a = Container::run(
            "dstk-a",
            &n100,
            &["--cap-add", "NET_ADMIN"],
            &["sleep", "3600"],
        );
        let b = Container::idle("dstk-b", &n200);

        // One trunk bridge holds the uplink, which carries exactly the two VLANs.
        let trunk = bridge_of_port(&uplink.host).expect("the uplink is on a bridge");
        assert!(trunk.starts_with("ovstk-"), "{trunk}");
        let vlans = || sh("ovs-vsctl", &["get", "port", &uplink.host, "trunks"]);
        assert_eq!(vlans().trim(), "[100, 200]");
        let status = plugin.status().to_string();
        assert!(
            status.contains(&format!("{trunk}:{}/200", uplink.host)),
            "{status}"
        );

        // Each network's frames leave tagged with its VLAN: they reach that VLAN's
        // far address, never the other VLAN's decoy.
        assert!(
            a.ping("10.237.100.254"),
            "VLAN 100 does not reach its far end"
        );
        assert!(
            b.ping("10.237.200.254"),
            "VLAN 200 does not reach its far end"
        );
        assert!(
            !a.ping("10.237.100.253"),
            "VLAN 100 frames reached VLAN 200"
        );
        assert!(
            !b.ping("10.237.200.253"),
            "VLAN 200 frames reached VLAN 100"
        );
        // Containers of the two networks cannot reach each other, even when one
        // takes the other's subnet as on-link (its decoy on VLAN 100 answers).
        let b_ip = b.ip(&n200);
        let on_link = ["ip", "route", "add", "10.237.200.0/24", "dev", "eth0"];
        assert!(a.exec(&on_link).status.success());
        assert!(a.ping("10.237.200.253"), "the on-link route does not work");
        assert!(
            !a.ping(&b_ip),
            "a container on VLAN 100 reached {b_ip} on VLAN 200"
        );

        // A third network on a VLAN the uplink already carries is refused.
        assert_refused(
            &["-o", "ovs.bridge.vlan=100", "-o", &add_ports],
            "with VLAN 100",
        );

        // One network out: the other keeps the uplink and its VLAN.
        drop(b);
        drop(n200);
        assert_eq!(vlans().trim(), "[100]");
        assert!(a.ping("10.237.100.254"), "VLAN 100 lost its uplink");
        drop(a);
        drop(n100);
    }
    // The last one out takes the trunk bridge: the uplink is the host's again.
    assert_eq!(bridge_of_port(&uplink.host), None);
    assert!(host_veths().contains(&uplink.host));
    assert_eq!(
        leftovers(&["ovsbr-", "ovstk-"], &["ovsv", "ovsc"]),
        Vec::<String>::new()
    );
}

#[test]
#[ignore = "needs root, Open vSwitch and dockerd (cargo xtask test)"]
fn bad_options_are_refused_clearly() {
    let _plugin = start_plugin();
    let cases: &[(&[&str], &str)] = &[
        (&["-o", "ovs.bridge.vlan=5000"], "ovs.bridge.vlan"),
        (&["-o", "mode=bogus"], "mode"),
        (&["-o", "ovs.bridge.mtu=abc"], "ovs.bridge.mtu"),
        (&["-o", "ovs.bridge.vlna=10"], "ovs.bridge.vlna"),
        (&["-o", "ovs.bridge.name=bad name"], "ovs.bridge.name"),
        (&["-o", "ovs.bridge.add_ports=nosuchif0"], "nosuchif0"),
        (
            &["-o", "com.docker.network.driver.mtu=20"],
            "com.docker.network.driver.mtu",
        ),
        (
            &[
                "-o",
                "ovs.bridge.mtu=1400",
                "-o",
                "com.docker.network.driver.mtu=1500",
            ],
            "two names of the same option",
        ),
        (
            &["--subnet", "10.231.90.0/24", "--subnet", "10.231.91.0/24"],
            "one IPv4 subnet",
        ),
        (
            &[
                "-o",
                "mode=nat",
                "--ipv6",
                "--subnet",
                "10.231.92.0/24",
                "--subnet",
                "fd00:d0e5::/40",
            ],
            "has a prefix outside /48 to /126",
        ),
    ];
    for (opts, needle) in cases {
        assert_refused(opts, needle);
    }
    // Docker's own spelling of the MTU option works like ovs.bridge.mtu, and the plugin
    // answers as `-d dovesnap` too (the Go dovesnap's driver name).
    {
        let net = Network::create_with_driver(
            "dsflat-mtu",
            "dovesnap",
            &[
                "--subnet",
                "10.231.93.0/24",
                "-o",
                "com.docker.network.driver.mtu=1400",
            ],
        );
        let c = Container::idle("dsflat-mtu-c", &net);
        let mtu = c.exec(&["cat", "/sys/class/net/eth0/mtu"]);
        assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1400");
        let driver = docker(&["network", "inspect", "-f", "{{.Driver}}", &net.name]);
        assert_eq!(String::from_utf8_lossy(&driver.stdout).trim(), "dovesnap");
    }
    assert_eq!(dovesnap_leftovers(), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, Open vSwitch and dockerd (cargo xtask test)"]
fn plugin_restart_keeps_containers_connected() {
    let mut plugin = start_plugin();
    {
        let net = Network::flat("dsflat-restart", "10.231.3.0/24");
        let a = Container::httpd("dsflat-ra", &net, "still-here");
        let b = Container::idle("dsflat-rb", &net);
        let ip = a.ip(&net);
        assert_eq!(
            b.fetch(&format!("http://{ip}/")).unwrap().trim(),
            "still-here"
        );

        plugin.kill();
        // L2 lives in OVS: containers keep talking while the plugin is down.
        assert_eq!(
            b.fetch(&format!("http://{ip}/")).unwrap().trim(),
            "still-here"
        );

        let plugin = start_plugin();
        let status = plugin.status();
        let id = net.id();
        let nets = status["networks"].as_array().expect("networks");
        let ours = nets
            .iter()
            .find(|n| n["id"] == id.as_str())
            .expect("network recovered");
        assert_eq!(
            ours["endpoints"].as_array().map(Vec::len),
            Some(2),
            "{ours}"
        );
        assert_eq!(
            b.fetch(&format!("http://{ip}/")).unwrap().trim(),
            "still-here"
        );
        // And the recovered plugin removes them cleanly.
        drop(a);
        drop(b);
        drop(net);
        drop(plugin);
    }
    // A stopped plugin (SIGTERM) removes its socket, so dockerd does not find a dead one.
    assert!(!std::path::Path::new(PLUGIN_SOCKET).exists());
    assert_eq!(dovesnap_leftovers(), Vec::<String>::new());
}

/// `docker network create -d ovs OPTS... dsflat-bad` must fail with an error naming
/// `needle`.
fn assert_refused(opts: &[&str], needle: &str) {
    let mut args = vec!["network", "create", "-d", "ovs"];
    args.extend_from_slice(opts);
    args.push("dsflat-bad");
    let out = docker(&args);
    let _ = docker(&["network", "rm", "dsflat-bad"]);
    assert!(!out.status.success(), "{opts:?} was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "{opts:?}: error does not name {needle}: {err}"
    );
}

/// The bridge's external ids as `ovs-vsctl br-get-external-id` prints them.
fn bridge_ids(bridge: &str) -> String {
    sh("ovs-vsctl", &["br-get-external-id", bridge])
}

#[test]
#[ignore = "needs root, Open vSwitch and dockerd (cargo xtask test)"]
fn a_network_on_an_existing_bridge_leaves_the_bridge_as_it_was() {
    let mut plugin = start_plugin_with(&["--reconcile-interval", "1"]);
    // The administrator's bridge, with a port and an external id of their own.
    let bridge = TestBridge::new("dsbr");
    let admin = Veth::new("dsbra");
    sh("ovs-vsctl", &["add-port", &bridge.name, &admin.host]);
    sh(
        "ovs-vsctl",
        &["br-set-external-id", &bridge.name, "owner", "admin"],
    );
    let name = format!("ovs.bridge.name={}", bridge.name);
    let existing = ["-o", "ovs.bridge.existing=true", "-o", &name];
    let with = |more: &[&'static str]| [&existing[..], more].concat();
    assert_refused(&["-o", "ovs.bridge.existing=true"], "ovs.bridge.name");
    assert_refused(&["-o", &name], "ovs.bridge.existing=true");
    assert_refused(
        &[
            "-o",
            "ovs.bridge.existing=true",
            "-o",
            "ovs.bridge.name=dsbrnone",
        ],
        "has no bridge of that name",
    );
    for (opt, key) in [
        ("ovs.bridge.mtu=1400", "ovs.bridge.mtu"),
        ("ovs.bridge.dpid=a1", "ovs.bridge.dpid"),
        ("ovs.bridge.userspace=true", "ovs.bridge.userspace"),
        (
            "ovs.bridge.controller=tcp:127.0.0.1:6653",
            "ovs.bridge.controller",
        ),
        ("mode=nat", "mode"),
    ] {
        assert_refused(&with(&["--subnet", "10.235.9.0/24", "-o", opt]), key);
    }
    {
        let mut args = with(&["--subnet", "10.235.1.0/24"]);
        let net = Network::create("dsbr-net", &args);
        args[5] = "10.235.8.0/24";
        assert_refused(&args, "already serves");
        let a = Container::httpd("dsbr-a", &net, "on-the-admins-bridge");
        let b = Container::idle("dsbr-b", &net);
        let url = format!("http://{}/", a.ip(&net));
        assert_eq!(b.fetch(&url).unwrap().trim(), "on-the-admins-bridge");
        let ids = bridge_ids(&bridge.name);
        assert!(
            ids.contains(&format!("dovesnap-attached-network-id={}", net.id())),
            "{ids}"
        );
        assert!(!ids.contains("dovesnap-network-id="), "{ids}");

        plugin.kill();
        plugin = start_plugin_with(&["--reconcile-interval", "1"]);
        let status = plugin.status();
        let recovered = status["networks"]
            .as_array()
            .expect("networks")
            .iter()
            .any(|n| {
                n["id"] == net.id().as_str() && n["endpoints"].as_array().map(Vec::len) == Some(2)
            });
        assert!(
            recovered,
            "network and its endpoints not recovered: {status}"
        );
        assert_eq!(b.fetch(&url).unwrap().trim(), "on-the-admins-bridge");
    }
    // docker network rm: the bridge, the admin's port and id stay; dovesnap's go.
    assert_eq!(
        sh("ovs-vsctl", &["list-ports", &bridge.name]).trim(),
        admin.host
    );
    let ids = bridge_ids(&bridge.name);
    assert_eq!(ids.trim(), "owner=admin");
    {
        // The reconciler never re-creates an existing bridge the admin deleted...
        let net = Network::create("dsbr-net", &with(&["--subnet", "10.235.1.0/24"]));
        let a = Container::httpd("dsbr-a", &net, "attached-again");
        let b = Container::idle("dsbr-b", &net);
        let url = format!("http://{}/", a.ip(&net));
        sh("ovs-vsctl", &["del-br", &bridge.name]);
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            !ovs_bridges().contains(&bridge.name),
            "existing bridge re-created"
        );
        // ...and attaches to it again, with its containers' ports, once the admin has
        // made it again.
        bridge.remake();
        wait_until(
            "the network attached again",
            Duration::from_secs(10),
            || {
                sh("ovs-vsctl", &["list-ports", &bridge.name])
                    .lines()
                    .count()
                    == 2
            },
        );
        let ids = bridge_ids(&bridge.name);
        assert!(
            ids.contains(&format!("dovesnap-attached-network-id={}", net.id())),
            "{ids}"
        );
        assert_eq!(b.fetch(&url).unwrap().trim(), "attached-again");
    }
    drop(plugin);
    drop(admin);
    drop(bridge);
    assert_eq!(dovesnap_leftovers(), Vec::<String>::new());
}

/// A container running `sleep` on `net`, its port on VLAN `vlan` (`docker run
/// --network name=NET,driver-opt=ovs.port.vlan=VLAN`).
fn vlan_container(name: &str, net: &Network, vlan: u16) -> Container {
    ensure_image();
    let _ = docker(&["rm", "-f", name]);
    let network = format!("name={},driver-opt=ovs.port.vlan={vlan}", net.name);
    let c = Container { name: name.into() };
    docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        &network,
        IMAGE,
        "sleep",
        "3600",
    ]);
    c
}

/// The OVS port of `c`'s endpoint on `net`.
fn port_of(c: &Container, net: &Network) -> String {
    let fmt = format!(
        "{{{{(index .NetworkSettings.Networks \"{}\").EndpointID}}}}",
        net.name
    );
    let eid = docker_ok(&["inspect", "-f", &fmt, &c.name]);
    let port = sh(
        "ovs-vsctl",
        &[
            "--bare",
            "--columns=name",
            "find",
            "port",
            &format!("external_ids:dovesnap-endpoint-id={eid}"),
        ],
    );
    port.trim().to_string()
}

/// The VLAN tag of the port of `c`'s endpoint on `net`.
fn port_tag(c: &Container, net: &Network) -> String {
    let port = port_of(c, net);
    sh("ovs-vsctl", &["get", "port", &port, "tag"])
        .trim()
        .to_string()
}

#[test]
#[ignore = "needs root, Open vSwitch and dockerd (cargo xtask test)"]
fn a_container_vlan_overrides_the_networks() {
    let _plugin = start_plugin_with(&["--reconcile-interval", "1"]);
    {
        let net = Network::create(
            "dsbr-vlan",
            &["--subnet", "10.235.2.0/24", "-o", "ovs.bridge.vlan=5"],
        );
        let other = Network::flat("dsbr-vlan2", "10.235.3.0/24");
        let a = vlan_container("dsbr-va", &net, 10);
        let b = vlan_container("dsbr-vb", &net, 20);
        let c = Container::idle("dsbr-vc", &other);
        for (opt, key) in [
            ("ovs.port.vlan=5000", "ovs.port.vlan"),
            ("ovs.port.vlna=3", "ovs.port.vlna"),
        ] {
            let out = docker(&[
                "network",
                "connect",
                "--driver-opt",
                opt,
                &net.name,
                &c.name,
            ]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains(key), "{opt}: {err}");
        }
        docker_ok(&[
            "network",
            "connect",
            "--driver-opt",
            "ovs.port.vlan=10",
            &net.name,
            &c.name,
        ]);
        assert_eq!(port_tag(&a, &net), "10");
        assert_eq!(port_tag(&b, &net), "20");
        assert_eq!(port_tag(&c, &net), "10");
        let ip = a.ip(&net);
        assert!(c.ping(&ip), "same VLAN 10: no ping");
        assert!(!b.ping(&ip), "VLAN 20 reached VLAN 10");
        // The reconciler puts a deleted port back with the container's own tag.
        sh("ovs-vsctl", &["del-port", &port_of(&a, &net)]);
        wait_until("port re-added", Duration::from_secs(10), || {
            run("ovs-vsctl", &["get", "port", &port_of(&a, &net), "tag"]).stdout == b"10\n"
        });
    }
    assert_eq!(dovesnap_leftovers(), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, Open vSwitch and dockerd (cargo xtask test)"]
fn networks_naming_one_bridge_share_it_on_their_vlans() {
    let plugin = start_plugin();
    let bridge = "dssb0";
    let name = format!("ovs.bridge.name={bridge}");
    {
        let net = |n: &str, subnet: &str, vlan: &str| {
            Network::create(n, &["--subnet", subnet, "-o", &name, "-o", vlan])
        };
        let n300 = net("dssb-300", "10.239.3.0/24", "ovs.bridge.vlan=300");
        let n400 = net("dssb-400", "10.239.4.0/24", "ovs.bridge.vlan=400");
        let a = Container::run(
            "dssb-a",
            &n300,
            &["--cap-add", "NET_ADMIN"],
            &["sleep", "3600"],
        );
        let a2 = Container::idle("dssb-a2", &n300);
        let b = Container::idle("dssb-b", &n400);
        // One bridge, each network's ports on its own VLAN.
        for (c, net, vlan) in [(&a, &n300, "300"), (&a2, &n300, "300"), (&b, &n400, "400")] {
            assert_eq!(bridge_of_port(&port_of(c, net)).as_deref(), Some(bridge));
            assert_eq!(port_tag(c, net), vlan);
        }
        let ids = bridge_ids(bridge);
        assert!(
            ids.contains(&format!("dovesnap-network-id={}", n300.id())),
            "{ids}"
        );
        assert!(
            ids.contains(&format!("dovesnap-network-id@{0}={0}", n400.id())),
            "{ids}"
        );
        let status = plugin.status();
        let shares = status["networks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["id"] == n300.id().as_str() && n["shared_with"][0] == n400.id().as_str());
        assert!(shares, "{status}");

        // Two containers of one network reach each other; across networks nothing
        // passes, even with the other's subnet on-link.
        assert!(a.ping(&a2.ip(&n300)), "same network, same VLAN: no ping");
        let b_ip = b.ip(&n400);
        let on_link = ["ip", "route", "add", "10.239.4.0/24", "dev", "eth0"];
        assert!(a.exec(&on_link).status.success());
        assert!(!a.ping(&b_ip), "VLAN 300 reached {b_ip} on VLAN 400");
        assert_refused(&["-o", &name, "-o", "ovs.bridge.vlan=300"], "with VLAN 300");

        // The first network out leaves the bridge and the other network working.
        drop((a, a2));
        drop(n300);
        assert!(ovs_bridges().contains(&bridge.to_string()));
        let b2 = Container::idle("dssb-b2", &n400);
        assert!(b2.ping(&b_ip), "the remaining network lost its bridge");
        drop((b, b2));
    }
    // The last one out deletes the bridge.
    assert!(!ovs_bridges().contains(&bridge.to_string()));

    // An administrator's bridge serves two networks and keeps its own port and ids.
    let admin_bridge = TestBridge::new("dssba");
    let admin = Veth::new("dssbf");
    sh("ovs-vsctl", &["add-port", &admin_bridge.name, &admin.host]);
    let name = format!("ovs.bridge.name={}", admin_bridge.name);
    {
        let net = |n: &str, subnet: &str, vlan: &str| {
            let opts = ["-o", "ovs.bridge.existing=true", "-o", &name, "-o", vlan];
            Network::create(n, &[&["--subnet", subnet][..], &opts].concat())
        };
        let _n5 = net("dssb-e5", "10.239.5.0/24", "ovs.bridge.vlan=500");
        let n6 = net("dssb-e6", "10.239.6.0/24", "ovs.bridge.vlan=600");
        let ids = bridge_ids(&admin_bridge.name);
        let attached = format!("dovesnap-attached-network-id@{0}={0}", n6.id());
        assert!(ids.contains(&attached), "{ids}");
    }
    assert_eq!(
        sh("ovs-vsctl", &["list-ports", &admin_bridge.name]).trim(),
        admin.host
    );
    assert_eq!(bridge_ids(&admin_bridge.name).trim(), "");
    drop(plugin);
    drop(admin);
    drop(admin_bridge);
    assert_eq!(
        leftovers(&["ovsbr-", "dssb"], &["ovsv", "ovsc", "dssb"]),
        Vec::<String>::new()
    );
}

/// Where the limits test's daemon serves metrics.
const METRICS_ADDR: &str = "127.0.0.1:19478";

/// Idle connections the limits test opens to the metrics port.
const IDLE_CONNECTIONS: usize = 2000;

/// `docker network create` of `name` on `subnet`, then `docker run --rm` of a container
/// on it; the network (removed on drop) and how long both took.
fn create_and_run(name: &str, subnet: &str) -> (Network, Duration) {
    let start = Instant::now();
    let net = Network::create(name, &["--subnet", subnet]);
    let out = docker(&["run", "--rm", "--network", name, IMAGE, "true"]);
    assert!(
        out.status.success(),
        "docker run on {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (net, start.elapsed())
}

/// Raises this process's soft RLIMIT_NOFILE to at least `n` (within its hard limit).
fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the rlimit struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(lim.rlim_cur >= n, "RLIMIT_NOFILE hard limit below {n}");
}

/// The metrics listener's limits (issue 16): 2,000 idle connections to it leave the
/// daemon with a few dozen descriptors, `docker network create` and `docker run` take
/// their normal time (the plugin socket, capped too, serves dockerd as usual) and
/// `dovesnap status` answers; the metrics answer again once the idle ones hit the
/// header timeout, counting those closed unserved.
#[test]
#[ignore = "needs root, Open vSwitch and dockerd (cargo xtask test)"]
fn idle_metrics_connections_do_not_slow_docker() {
    require_root();
    ensure_image();
    raise_nofile(IDLE_CONNECTIONS as u64 + 512);
    let plugin = start_plugin_with(&["--metrics", METRICS_ADDR]);
    let (_first, baseline) = create_and_run("dslim-a", "10.234.30.0/24");

    let opened = Instant::now();
    let idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|i| {
            TcpStream::connect(METRICS_ADDR)
                .unwrap_or_else(|e| panic!("metrics connection {i} of {IDLE_CONNECTIONS}: {e}"))
        })
        .collect();
    let open_took = opened.elapsed();
    let pid = plugin.pid().expect("the daemon runs");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's descriptors")
        .count();
    assert!(fds < 200, "the daemon holds {fds} descriptors");

    let (_second, loaded) = create_and_run("dslim-b", "10.234.31.0/24");
    eprintln!(
        "create + run: {baseline:?} before, {loaded:?} with {IDLE_CONNECTIONS} idle metrics \
         connections (opened in {open_took:?}; daemon descriptors {fds})"
    );
    assert!(
        loaded < baseline * 3 + Duration::from_secs(3),
        "create + run took {loaded:?} with idle metrics connections, {baseline:?} without"
    );
    let status = plugin.status();
    assert_eq!(
        status["networks"].as_array().map(Vec::len),
        Some(2),
        "{status:#}"
    );

    // The idle ones within the cap are closed after the header timeout (5 s).
    let text = loop {
        let text = scrape_metrics(METRICS_ADDR);
        if text.lines().next().is_some_and(|l| l.contains(" 200 ")) {
            break text;
        }
        assert!(
            opened.elapsed() < Duration::from_secs(20),
            "metrics did not answer again: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // At most 32 held at once, each for the 5 s header timeout: the rest were closed
    // unserved (more were served when opening them took longer).
    let served = 32 * (open_took.as_secs() / 5 + 2);
    let rejected = metric_value(&text, "dovesnap_metrics_connections_rejected_total", "");
    assert!(
        rejected >= IDLE_CONNECTIONS as u64 - served,
        "{rejected} connections rejected: {text}"
    );
    assert!(
        text.contains("dovesnap_network_endpoints{"),
        "no network metrics: {text}"
    );
    drop(idle);
}
