//! The plugin API driven directly (as Docker would), against real OVS and netlink:
//! bridge, port and veth lifecycle, bad requests, concurrency, calls cut off half way,
//! deletes of what is already gone, no leaks.

use std::path::PathBuf;
use std::time::Duration;

use dovesnap_tests::daemon::{api_call_hang_up, Daemon};
use dovesnap_tests::host_services::VswitchdPaused;
use dovesnap_tests::{host_veths, leftovers, ovs_bridges, run, sh, unique_name, wait_until};
use serde_json::{json, Value};

fn socket() -> PathBuf {
    std::env::temp_dir()
        .join(unique_name("dsapi"))
        .join("plugin.sock")
}

/// A fake Docker id: 64 hex digits starting with `prefix` (hex).
fn id(prefix: &str) -> String {
    format!("{prefix}{}", "0".repeat(64 - prefix.len()))
}

fn ok(d: &Daemon, path: &str, body: Value) -> Value {
    let (code, v) = d.call(path, &body.to_string());
    assert_eq!(code, 200, "{path}: {v}");
    assert!(v.get("Err").is_none(), "{path} failed: {v}");
    v
}

fn err(d: &Daemon, path: &str, body: &str) -> String {
    let (_, v) = d.call(path, body);
    v.get("Err")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{path} {body} did not fail: {v}"))
        .to_string()
}

fn delete_network(d: &Daemon, nid: &str) {
    ok(d, "/NetworkDriver.DeleteNetwork", json!({"NetworkID": nid}));
}

/// Deletes network `nid`, the test's last: nothing of the tests' may be left after it.
fn delete_network_leaving_nothing(d: &Daemon, nid: &str) {
    delete_network(d, nid);
    assert_eq!(ours_left(), Vec::<String>::new());
}

/// A deleted endpoint's veth goes just after DeleteEndpoint's answer (the plugin does
/// not make Docker wait for the kernel's RCU grace periods).
fn veth_goes(host: &str) {
    wait_until(
        "the deleted endpoint's veth to go",
        Duration::from_secs(2),
        || !host_veths().iter().any(|v| v == host),
    );
}

fn delete_endpoint(d: &Daemon, nid: &str, eid: &str) {
    let body = json!({"NetworkID": nid, "EndpointID": eid});
    ok(d, "/NetworkDriver.DeleteEndpoint", body);
}

fn create_network(d: &Daemon, nid: &str, subnet: &str, opts: Value) {
    let gw = subnet.replace(".0/24", ".1/24");
    ok(
        d,
        "/NetworkDriver.CreateNetwork",
        json!({"NetworkID": nid, "Options": {"com.docker.network.generic": opts},
               "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": subnet, "Gateway": gw}],
               "IPv6Data": []}),
    );
}

/// Removes, also on panic, the bridge and veths of fake network/endpoint ids that start
/// with `prefix` (the test's own), so a failed test does not fail the next ones.
struct Cleanup(&'static str);

impl Cleanup {
    /// The id of the test's network `prefix` (see [`id`]), and the cleanup of what the
    /// plugin makes for it.
    fn network(prefix: &'static str) -> (String, Cleanup) {
        (id(prefix), Cleanup(prefix))
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let bridge = format!("ovsbr-{}", id(self.0).get(..8).unwrap_or_default());
        let _ = run("ovs-vsctl", &["--if-exists", "del-br", &bridge]);
        for v in host_veths() {
            if v.starts_with(&format!("ovsv{}", self.0)) {
                let _ = run("ip", &["link", "del", &v]);
            }
        }
    }
}

fn ours_left() -> Vec<String> {
    leftovers(&["ovsbr-a", "dsapi"], &["ovsva", "ovsca"])
}

#[test]
#[ignore = "needs root and a running Open vSwitch (cargo xtask test)"]
fn activate_and_capabilities() {
    let d = Daemon::start(&socket());
    let v = ok(&d, "/Plugin.Activate", json!({}));
    // One plugin, two Docker interfaces: the network driver and the IPAM driver
    // (`--ipam-driver ovs`, addresses claimed in OVN for overlay networks).
    assert_eq!(v, json!({"Implements": ["NetworkDriver", "IpamDriver"]}));
    let v = ok(&d, "/NetworkDriver.GetCapabilities", json!({}));
    assert_eq!(v["Scope"], "local");
    let v = ok(&d, "/IpamDriver.GetCapabilities", json!({}));
    assert!(v.is_object(), "{v}");
    let (code, _) = d.call("/NetworkDriver.NoSuchCall", "{}");
    assert_eq!(code, 404);
}

#[test]
#[ignore = "needs root and a running Open vSwitch (cargo xtask test)"]
fn endpoint_lifecycle_makes_and_removes_everything() {
    let d = Daemon::start(&socket());
    let (nid, _cleanup) = Cleanup::network("a1");
    let eid = id("a1e1");
    create_network(
        &d,
        &nid,
        "10.231.10.0/24",
        json!({"ovs.bridge.vlan": "42", "ovs.bridge.mtu": "1400"}),
    );
    let bridge = "ovsbr-a1000000";
    assert!(ovs_bridges().contains(&bridge.to_string()));
    let dp = sh("ovs-vsctl", &["get", "bridge", bridge, "datapath_type"]);
    assert_eq!(
        dp.trim(),
        "netdev",
        "no OVS kernel module here: userspace datapath"
    );

    let v = ok(
        &d,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": nid, "EndpointID": eid,
               "Interface": {"Address": "10.231.10.2/24"}}),
    );
    assert_eq!(v["Interface"]["MacAddress"], "02:42:0a:e7:0a:02");
    let host = format!("ovsv{}", &eid[..10]);
    let cont = format!("ovsc{}", &eid[..10]);
    // The host end answers no ARP: it is only an OVS port.
    let host_link = sh("ip", &["-o", "link", "show", &host]);
    assert!(host_link.contains("NOARP"), "{host_link}");
    let tag = sh("ovs-vsctl", &["get", "port", &host, "tag"]);
    assert_eq!(tag.trim(), "42");
    let link = sh("ip", &["-o", "link", "show", &cont]);
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains("02:42:0a:e7:0a:02"), "{link}");

    let v = ok(
        &d,
        "/NetworkDriver.Join",
        json!({"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/var/run/docker/netns/x"}),
    );
    assert_eq!(v["InterfaceName"]["SrcName"], cont.as_str());
    assert_eq!(v["InterfaceName"]["DstPrefix"], "eth");
    assert_eq!(v["Gateway"], "10.231.10.1");
    let v = ok(
        &d,
        "/NetworkDriver.EndpointOperInfo",
        json!({"NetworkID": nid, "EndpointID": eid}),
    );
    assert_eq!(v["Value"]["port"], host.as_str());

    // Status over the control socket.
    let st = d.status();
    let net = &st["networks"][0];
    assert_eq!(net["bridge"], bridge);
    assert_eq!(net["endpoints"][0]["port"], host.as_str());

    ok(
        &d,
        "/NetworkDriver.Leave",
        json!({"NetworkID": nid, "EndpointID": eid}),
    );
    delete_endpoint(&d, &nid, &eid);
    veth_goes(&host);
    let ports = sh("ovs-vsctl", &["list-ports", bridge]);
    assert!(!ports.contains(&host), "port left behind: {ports}");
    // Deleting twice is fine (Docker retries).
    delete_endpoint(&d, &nid, &eid);
    delete_network_leaving_nothing(&d, &nid);
}

#[test]
#[ignore = "needs root and a running Open vSwitch (cargo xtask test)"]
fn bad_requests_change_nothing() {
    let d = Daemon::start(&socket());
    let (nid, _cleanup) = Cleanup::network("a2");
    let bad_json = err(&d, "/NetworkDriver.CreateNetwork", "{not json");
    assert!(bad_json.contains("CreateNetwork"), "{bad_json}");
    let wrong_type = err(&d, "/NetworkDriver.CreateNetwork", r#"{"NetworkID": 5}"#);
    assert!(!wrong_type.is_empty());
    let bad_id = err(
        &d,
        "/NetworkDriver.CreateNetwork",
        &json!({"NetworkID": "../../x", "IPv4Data": []}).to_string(),
    );
    assert!(bad_id.contains("invalid network id"), "{bad_id}");
    for (opts, needle) in [
        (json!({"ovs.bridge.vlan": "0"}), "ovs.bridge.vlan"),
        (json!({"mode": "warp"}), "mode"),
        (json!({"ovs.bridge.dpid": "xyz"}), "ovs.bridge.dpid"),
        (
            json!({"ovs.bridge.controller": "tcp:999.1.1.1:6653"}),
            "ovs.bridge.controller",
        ),
        (json!({"ovs.bridge.add_ports": "nosuchif9"}), "nosuchif9"),
    ] {
        let body = json!({"NetworkID": nid, "Options": {"com.docker.network.generic": opts},
                          "IPv4Data": [{"Pool": "10.231.11.0/24", "Gateway": "10.231.11.1/24"}]});
        let e = err(&d, "/NetworkDriver.CreateNetwork", &body.to_string());
        assert!(e.contains(needle), "{opts}: {e}");
    }
    // Endpoint calls against an unknown network.
    let e = err(
        &d,
        "/NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": nid, "EndpointID": id("a2e1")}).to_string(),
    );
    assert!(e.contains("not known"), "{e}");
    // A bad MAC from Docker is refused before any veth exists.
    create_network(&d, &nid, "10.231.11.0/24", json!({}));
    let e = err(
        &d,
        "/NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": nid, "EndpointID": id("a2e2"),
                "Interface": {"Address": "10.231.11.5/24", "MacAddress": "zz"}})
        .to_string(),
    );
    assert!(e.contains("MAC"), "{e}");
    delete_network_leaving_nothing(&d, &nid);
}

#[test]
#[ignore = "needs root and a running Open vSwitch (cargo xtask test)"]
fn concurrent_endpoints_and_restart_recovery() {
    let (nid, _cleanup) = Cleanup::network("a3");
    let mut d = Daemon::start(&socket());
    create_network(&d, &nid, "10.231.12.0/24", json!({}));
    std::thread::scope(|s| {
        for i in 0..8 {
            let d = &d;
            let nid = &nid;
            s.spawn(move || {
                let eid = id(&format!("a3e{i}"));
                ok(
                    d,
                    "/NetworkDriver.CreateEndpoint",
                    json!({"NetworkID": nid, "EndpointID": eid,
                           "Interface": {"Address": format!("10.231.12.{}/24", 10 + i)}}),
                );
            });
        }
    });
    let ports = sh("ovs-vsctl", &["list-ports", "ovsbr-a3000000"]);
    assert_eq!(
        ports.lines().filter(|p| p.starts_with("ovsva3e")).count(),
        8,
        "{ports}"
    );
    d.kill();
    // The first daemon crashed (SIGKILL): a new one on its socket recovers from OVSDB.
    let d = Daemon::start(&d.socket);
    let st = d.status();
    assert_eq!(
        st["networks"][0]["endpoints"].as_array().map(Vec::len),
        Some(8),
        "{st}"
    );
    for i in 0..8 {
        ok(
            &d,
            "/NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": nid, "EndpointID": id(&format!("a3e{i}"))}),
        );
    }
    delete_network_leaving_nothing(&d, &nid);
}

/// dockerd gives up on calls while ovs-vswitchd hangs (SIGSTOP): CreateEndpoint (veth
/// made, port committed, waiting for ovs-vswitchd) and CreateNetwork (queued behind it)
/// lose their connections. ovs-vswitchd comes back and the plugin is restarted at once:
/// the calls ran to their end during shutdown and, unheard, were undone; the new
/// plugin finds no bridge, port, veth or rule Docker does not know about. Then deletes
/// of what was removed by hand succeed.
#[test]
#[ignore = "needs root and a running Open vSwitch (cargo xtask test)"]
fn calls_cut_off_half_way_leave_nothing_docker_does_not_know() {
    let sock = socket();
    let (known, _cleanup) = Cleanup::network("a4");
    let (cut_net, _cleanup_nat) = Cleanup::network("a41");
    let cut_ep = id("a4e1");
    let first_log = {
        let mut d = Daemon::start(&sock);
        create_network(&d, &known, "10.231.14.0/24", json!({}));
        {
            let _paused = VswitchdPaused::pause();
            let patience = Duration::from_millis(1500);
            let body = json!({"NetworkID": known, "EndpointID": cut_ep,
                              "Interface": {"Address": "10.231.14.2/24"}});
            assert!(
                !api_call_hang_up(
                    &sock,
                    "/NetworkDriver.CreateEndpoint",
                    &body.to_string(),
                    patience
                ),
                "CreateEndpoint answered while ovs-vswitchd was stopped"
            );
            let body = json!({"NetworkID": cut_net,
                              "Options": {"com.docker.network.generic": {"mode": "nat"}},
                              "IPv4Data": [{"Pool": "10.231.15.0/24", "Gateway": "10.231.15.1/24"}]});
            assert!(
                !api_call_hang_up(
                    &sock,
                    "/NetworkDriver.CreateNetwork",
                    &body.to_string(),
                    patience
                ),
                "CreateNetwork answered while ovs-vswitchd was stopped"
            );
            // The cut-off endpoint's veth exists: the call stopped half way.
            assert!(host_veths().contains(&format!("ovsv{}", &cut_ep[..10])));
        }
        // Resumed (the guard's SIGCONT); stop the plugin right away.
        assert!(
            d.terminate(),
            "the plugin did not stop cleanly:\n{}",
            d.log_text()
        );
        d.log_text()
    };
    // No reconciler: it would put back what the deletes below find removed by hand.
    let d = Daemon::start_with(&sock, &["--reconcile-interval", "0"]);
    let st = d.status();
    let nets = st["networks"].as_array().cloned().unwrap_or_default();
    assert_eq!(nets.len(), 1, "only the network Docker knows: {st}");
    assert_eq!(
        nets[0]["endpoints"].as_array().map(Vec::len),
        Some(0),
        "{st}"
    );
    assert!(!ovs_bridges().contains(&"ovsbr-a4100000".to_string()));
    let ports = sh("ovs-vsctl", &["list-ports", "ovsbr-a4000000"]);
    assert!(!ports.contains("ovsva4e1"), "port left behind: {ports}");
    assert!(
        !host_veths()
            .iter()
            .any(|v| v.starts_with("ovsva4e1") || v.starts_with("ovsca4e1")),
        "veth left behind"
    );
    let id12 = &cut_net[..12];
    let nft = String::from_utf8_lossy(&run("nft", &["list", "ruleset"]).stdout).into_owned();
    assert!(!nft.contains(id12), "nft rules left behind:\n{nft}");
    let ipt = String::from_utf8_lossy(&run("iptables", &["-S"]).stdout).into_owned();
    assert!(!ipt.contains(id12), "iptables rules left behind:\n{ipt}");
    assert!(
        first_log.contains("undoing it"),
        "nothing was undone:\n{first_log}"
    );

    // Deletes of what was removed by hand succeed: what is gone counts as done.
    let eid = id("a4e2");
    ok(
        &d,
        "/NetworkDriver.CreateEndpoint",
        json!({"NetworkID": known, "EndpointID": eid,
               "Interface": {"Address": "10.231.14.3/24"}}),
    );
    let host = format!("ovsv{}", &eid[..10]);
    sh("ovs-vsctl", &["del-port", "ovsbr-a4000000", &host]);
    let ep = json!({"NetworkID": known, "EndpointID": eid});
    ok(&d, "/NetworkDriver.DeleteEndpoint", ep.clone());
    veth_goes(&host);
    ok(&d, "/NetworkDriver.DeleteEndpoint", ep);
    sh("ovs-vsctl", &["del-br", "ovsbr-a4000000"]);
    delete_network(&d, &known);
    assert_eq!(d.status()["networks"], json!([]));
    assert_eq!(ours_left(), Vec::<String>::new());
}
