//! `ovs.bridge.tunnels`: one flat network across two hosts joined by a VXLAN port.
//!
//! Each "host" is a namespace with its own Open vSwitch (userspace datapath, its LAN
//! address on `br-phy` for native tunnelling) and dovesnap, driven through the plugin
//! API as dockerd would (the `hosts` fixtures, shared with the overlay tests). The same
//! flat network (same subnet) is created on both, each with a VXLAN tunnel to the
//! other; containers on either side talk across it.

use std::time::{Duration, Instant};

use dovesnap_tests::hosts::{fetch_port, id, pings, web_server, Host, Lan, Scratch};
use dovesnap_tests::{require_root, wait_until, Netns};
use serde_json::{json, Value};

/// The test LAN (RFC 2544 benchmarking space; overlay's is 198.18.77.0/24).
const LAN: &str = "198.18.78";
const SUBNET: &str = "10.241.0.0/24";
const GATEWAY: &str = "10.241.0.1/24";
const VNI: u32 = 4242;

/// The port dovesnap names the first VXLAN tunnel of network `nid`.
fn tunnel_port(nid: &str) -> String {
    format!("vxl{}0", &nid[..8])
}

/// The MTU of `ctr`'s eth0.
fn mtu(ctr: &Netns) -> String {
    ctr.sh("cat", &["/sys/class/net/eth0/mtu"])
        .trim()
        .to_string()
}

#[test]
#[ignore = "needs root and Open vSwitch (cargo xtask test)"]
fn a_vxlan_tunnel_carries_a_flat_network_across_two_hosts() {
    require_root();
    let scratch = Scratch::new("dstn");
    let root = scratch.0.clone();
    let lan = Lan::new("dstnl", LAN);
    let mut h1 = Host::start(&root, &lan, 1, "dstnh", "dstnc");
    let mut h2 = Host::start(&root, &lan, 2, "dstnh", "dstnc");
    h1.start_plugin(&[]);
    h2.start_plugin(&[]);

    // Bad tunnels are refused with the option's name, and nothing is made.
    let e = h1.err(
        "/NetworkDriver.CreateNetwork",
        Host::create_network_request(
            &id("bad"),
            json!({"ovs.bridge.tunnels": "vxlan:198.18.78.2:16777216"}),
            SUBNET,
            GATEWAY,
        ),
    );
    assert!(
        e.starts_with("invalid ovs.bridge.tunnels \"vxlan:198.18.78.2:16777216\"")
            && e.contains("0 to 16777215 for vxlan"),
        "{e}"
    );
    assert_eq!(h1.vsctl(&["list-br"]).trim(), "br-phy");

    // The same network on both hosts (Docker gives each its own id), tunnelled.
    let (n1, n2) = (id("a1"), id("b2"));
    let opts = |peer: &Host| {
        json!({"ovs.bridge.userspace": "true",
               "ovs.bridge.tunnels": format!("vxlan:{}:{VNI}", peer.ip)})
    };
    h1.create_network(&n1, opts(&h2), SUBNET, GATEWAY);
    h2.create_network(&n2, opts(&h1), SUBNET, GATEWAY);
    let (bridge, port) = (format!("ovsbr-{}", &n1[..8]), tunnel_port(&n1));
    assert_eq!(
        h1.vsctl(&["get", "Interface", &port, "type", "options"]),
        format!("vxlan\n{{key=\"{VNI}\", remote_ip=\"{}\"}}\n", h2.ip)
    );
    // `dovesnap status`, as JSON and as the table.
    let shown = format!("{port}: vxlan:{}:{VNI}", h2.ip);
    let status = h1.plugin().status();
    assert_eq!(status["networks"][0]["tunnels"], json!([shown]), "{status}");
    let table = h1.plugin().status_text();
    assert!(table.contains(&format!("\n  tunnel {shown}\n")), "{table}");

    let (e1, e2) = (id("e1"), id("e2"));
    let (c1, _) = h1.attach(&n1, &e1, "10.241.0.11/24");
    let (c2, _) = h2.attach(&n2, &e2, "10.241.0.12/24");
    // No ovs.bridge.mtu: 1500 less VXLAN's 50 bytes.
    assert_eq!(mtu(&c1), "1450");
    assert_eq!(mtu(&c2), "1450");

    // ICMP both ways, and TCP: a body of many full-size segments across the tunnel.
    assert!(pings(&c1, "10.241.0.12"), "host1 -> host2 ping");
    assert!(pings(&c2, "10.241.0.11"), "host2 -> host1 ping");
    let big = "0123456789abcdef".repeat(16 * 1024);
    let _web = web_server(&c2, &root, &big);
    assert!(
        fetch_port(&c1, "10.241.0.12", 8080) == big,
        "the 256 KiB body did not come through whole"
    );
    // The network's bridge has no port but the containers' and the tunnel: the body
    // crossed the LAN from host2 (the kernel's count; OVS's lag by seconds).
    let from_h2 = lan
        .ns
        .sh("cat", &["/sys/class/net/lan2/statistics/rx_bytes"]);
    assert!(
        from_h2.trim().parse::<usize>().unwrap() > big.len(),
        "{from_h2}"
    );

    // The tunnel port deleted by hand: the reconciler makes it again, traffic resumes.
    h1.vsctl(&["del-port", &bridge, &port]);
    let start = Instant::now();
    wait_until(
        "the tunnel port to come back",
        Duration::from_secs(10),
        || {
            h1.vsctl(&["list-ports", &bridge])
                .lines()
                .any(|p| p == port)
        },
    );
    assert!(pings(&c1, "10.241.0.12"), "ping after the repair");
    eprintln!(
        "recovery: tunnel port deleted: {} ms",
        start.elapsed().as_millis()
    );
    let repairs = h1.plugin().status()["repairs"].to_string();
    assert!(repairs.contains("[\"tunnel\",1]"), "{repairs}");
    assert_eq!(fetch_port(&c1, "10.241.0.12", 8080), big);

    // Removing the network (what `docker network rm` does) removes its bridge and
    // tunnel; the host keeps only its own br-phy.
    for (h, n, e) in [(&h1, &n1, &e1), (&h2, &n2, &e2)] {
        h.detach(n, e);
        h.ok("/NetworkDriver.DeleteNetwork", json!({"NetworkID": n}));
        assert_eq!(h.vsctl(&["list-br"]).trim(), "br-phy");
        let ifaces = h.vsctl(&["--bare", "--columns=name", "list", "Interface"]);
        let left: Vec<&str> = ifaces
            .split_whitespace()
            .filter(|i| !["br-phy", "uplink"].contains(i))
            .collect();
        assert!(left.is_empty(), "{} left {left:?}", h.name);
        let status: Value = h.plugin().status();
        assert_eq!(status["networks"], json!([]), "{status}");
    }
}
