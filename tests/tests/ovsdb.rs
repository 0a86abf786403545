//! The OVSDB client against a real Open vSwitch (ovsdb-server and ovs-vswitchd
//! running, `netdev` bridges). The client never runs ovs-vsctl; these tests use it to
//! check what the client did. Each bridge a test makes is held by a [`BridgeGuard`]
//! that deletes it with ovs-vsctl, also when the test panics.
//!
//! Run: `cargo test -p dovesnap-tests --test ovsdb -- --ignored --test-threads=1`.

use std::collections::BTreeMap;
use std::future::Future;

use dovesnap::ovsdb::{
    default_datapath_type, BridgeSpec, Ovsdb, OvsdbError, PortSpec, UplinkSpec, DEFAULT_SOCKET,
};
use dovesnap_tests::{ovs_bridges, require_root, run, sh, unique_name, Veth};

/// Deletes the bridge through ovs-vsctl on drop, whatever the client did.
struct BridgeGuard {
    name: String,
}

impl BridgeGuard {
    fn new() -> Self {
        BridgeGuard {
            name: unique_name("dst"),
        }
    }
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = run("ovs-vsctl", &["--if-exists", "del-br", &self.name]);
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

async fn connect() -> Ovsdb {
    Ovsdb::connect(DEFAULT_SOCKET)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A `netdev` bridge spec (this host has no OVS kernel datapath).
fn netdev_bridge(name: &str) -> BridgeSpec {
    BridgeSpec {
        name: name.to_string(),
        datapath_type: "netdev".into(),
        ..Default::default()
    }
}

/// `ovs-vsctl get TABLE RECORD COLUMN`, without the quotes it puts around strings.
fn get(table: &str, record: &str, column: &str) -> String {
    sh("ovs-vsctl", &["get", table, record, column])
        .trim()
        .trim_matches('"')
        .to_string()
}

/// Whether OVSDB has a row named `name` in `table` (Port, Interface, Bridge).
fn has_row(table: &str, name: &str) -> bool {
    run("ovs-vsctl", &["list", table, name]).status.success()
}

fn list_ports(bridge: &str) -> Vec<String> {
    sh("ovs-vsctl", &["list-ports", bridge])
        .lines()
        .map(str::to_string)
        .collect()
}

fn controller_targets() -> String {
    sh("ovs-vsctl", &["--columns=target", "list", "controller"])
}

#[test]
#[ignore = "needs root and a running Open vSwitch"]
fn bridge_with_ids_mtu_controller_and_dpid() {
    require_root();
    let br = BridgeGuard::new();
    let target = format!("tcp:127.0.0.1:{}", 20000 + std::process::id() % 20000);
    block_on(async {
        let ovsdb = connect().await;
        assert!(ovsdb
            .datapath_types()
            .await
            .unwrap()
            .contains(&default_datapath_type().to_string()));
        let spec = BridgeSpec {
            external_ids: BTreeMap::from([("dovesnap-network".into(), "net-1".into())]),
            mtu: Some(1400),
            controllers: vec![target.clone()],
            datapath_id: Some("00000000000000ab".into()),
            ..netdev_bridge(&br.name)
        };
        ovsdb.create_bridge(&spec).await.unwrap();

        assert!(ovs_bridges().contains(&br.name));
        assert_eq!(get("bridge", &br.name, "datapath_type"), "netdev");
        assert_eq!(
            get("bridge", &br.name, "external_ids:dovesnap-network"),
            "net-1"
        );
        assert_eq!(get("bridge", &br.name, "fail_mode"), "secure");
        assert_eq!(
            sh("ovs-vsctl", &["get-controller", &br.name]).trim(),
            target
        );
        assert_eq!(
            get("bridge", &br.name, "other_config:datapath-id"),
            "00000000000000ab"
        );
        // Written by ovs-vswitchd once it applied the change.
        assert_eq!(get("bridge", &br.name, "datapath_id"), "00000000000000ab");
        assert_eq!(get("interface", &br.name, "type"), "internal");
        assert_eq!(get("interface", &br.name, "mtu_request"), "1400");
        assert_eq!(get("interface", &br.name, "mtu"), "1400");

        let info = ovsdb
            .bridge(&br.name)
            .await
            .unwrap()
            .expect("bridge listed");
        assert_eq!(info.datapath_type, "netdev");
        assert_eq!(info.external_ids["dovesnap-network"], "net-1");
        assert_eq!(info.ports.len(), 1);
        assert_eq!(info.ports[0].name, br.name);
        assert_eq!(info.ports[0].interface_type, "internal");
        let all = ovsdb.list_bridges().await.unwrap();
        assert!(all.iter().any(|b| b.name == br.name));

        // A second bridge of the same name is refused and the first one stays.
        let again = ovsdb.create_bridge(&netdev_bridge(&br.name)).await;
        assert!(
            matches!(again, Err(OvsdbError::BridgeExists(_))),
            "{again:?}"
        );
        assert_eq!(get("bridge", &br.name, "fail_mode"), "secure");

        ovsdb.delete_bridge(&br.name).await.unwrap();
        assert!(!ovs_bridges().contains(&br.name));
        assert!(!has_row("port", &br.name));
        assert!(!has_row("interface", &br.name));
        assert!(
            !controller_targets().contains(&target),
            "controller row left behind"
        );
        assert!(ovsdb.bridge(&br.name).await.unwrap().is_none());
        let gone = ovsdb.delete_bridge(&br.name).await.unwrap_err();
        assert!(gone.is_not_found(), "{gone}");
    });
}

#[test]
#[ignore = "needs root and a running Open vSwitch"]
fn veth_port_with_tag_added_and_removed() {
    require_root();
    let br = BridgeGuard::new();
    let veth = Veth::new("dsv");
    block_on(async {
        let ovsdb = connect().await;
        ovsdb.create_bridge(&netdev_bridge(&br.name)).await.unwrap();
        let port = PortSpec {
            tag: Some(42),
            external_ids: BTreeMap::from([("dovesnap-endpoint".into(), "ep-1".into())]),
            mtu: Some(1450),
            ofport: Some(11),
            ..PortSpec::new(&veth.host)
        };
        ovsdb.add_port(&br.name, &port).await.unwrap();

        assert_eq!(list_ports(&br.name), std::slice::from_ref(&veth.host));
        assert_eq!(get("port", &veth.host, "tag"), "42");
        assert_eq!(
            get("port", &veth.host, "external_ids:dovesnap-endpoint"),
            "ep-1"
        );
        assert_eq!(get("interface", &veth.host, "ofport"), "11");
        assert_eq!(get("interface", &veth.host, "mtu"), "1450");
        assert_eq!(get("interface", &veth.host, "error"), "[]");

        let info = ovsdb.bridge(&br.name).await.unwrap().unwrap();
        let p = info.ports.iter().find(|p| p.name == veth.host).unwrap();
        assert_eq!(p.tag, Some(42));
        assert_eq!(p.ofport, Some(11));
        assert_eq!(p.interface_type, "");
        assert_eq!(p.external_ids["dovesnap-endpoint"], "ep-1");

        let twice = ovsdb.add_port(&br.name, &PortSpec::new(&veth.host)).await;
        assert!(matches!(twice, Err(OvsdbError::PortExists(_))), "{twice:?}");
        let nowhere = ovsdb
            .add_port("dsnobridge", &PortSpec::new(&veth.host))
            .await;
        assert!(
            matches!(nowhere, Err(OvsdbError::NoSuchBridge(_))),
            "{nowhere:?}"
        );
        let nobridge = ovsdb
            .delete_port("dsnobridge", &veth.host)
            .await
            .unwrap_err();
        assert!(
            matches!(nobridge, OvsdbError::NoSuchBridge(_)),
            "{nobridge}"
        );

        ovsdb.delete_port(&br.name, &veth.host).await.unwrap();
        assert!(list_ports(&br.name).is_empty());
        assert!(!has_row("port", &veth.host));
        assert!(!has_row("interface", &veth.host));
        let again = ovsdb.delete_port(&br.name, &veth.host).await.unwrap_err();
        assert!(again.is_not_found(), "{again}");
        ovsdb.delete_bridge(&br.name).await.unwrap();
    });
}

#[test]
#[ignore = "needs root and a running Open vSwitch"]
fn uplink_port_and_full_deletion() {
    require_root();
    let br = BridgeGuard::new();
    let uplink = Veth::new("dsu");
    let veth = Veth::new("dsv");
    block_on(async {
        let ovsdb = connect().await;
        let spec = BridgeSpec {
            uplinks: vec![UplinkSpec {
                name: uplink.host.clone(),
                ofport: Some(7),
                ..UplinkSpec::default()
            }],
            controllers: vec!["tcp:127.0.0.1:1".into(), "tcp:127.0.0.1:2".into()],
            ..netdev_bridge(&br.name)
        };
        ovsdb.create_bridge(&spec).await.unwrap();
        assert_eq!(
            sh("ovs-vsctl", &["port-to-br", &uplink.host]).trim(),
            br.name
        );
        assert_eq!(get("interface", &uplink.host, "ofport"), "7");
        assert_eq!(get("interface", &uplink.host, "type"), "");
        ovsdb
            .add_port(&br.name, &PortSpec::new(&veth.host))
            .await
            .unwrap();
        let ports = ovsdb.bridge(&br.name).await.unwrap().unwrap().ports;
        let mut names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        let mut want = [br.name.as_str(), &uplink.host, &veth.host];
        want.sort();
        assert_eq!(names, want);

        ovsdb.delete_bridge(&br.name).await.unwrap();
        assert!(!ovs_bridges().contains(&br.name));
        let all_ports = sh("ovs-vsctl", &["--columns=name", "list", "port"]);
        let all_ifaces = sh("ovs-vsctl", &["--columns=name", "list", "interface"]);
        for name in [&br.name, &uplink.host, &veth.host] {
            assert!(
                !all_ports.contains(name.as_str()),
                "port {name} left: {all_ports}"
            );
            assert!(!all_ifaces.contains(name.as_str()), "interface {name} left");
        }
        let bridge_rows = sh("ovs-vsctl", &["--columns=name", "list", "bridge"]);
        assert!(!bridge_rows.contains(&br.name));
        // The host interfaces themselves are untouched.
        sh("ip", &["link", "show", &uplink.host]);
        sh("ip", &["link", "show", &veth.host]);
    });
}

#[test]
#[ignore = "needs root and a running Open vSwitch"]
fn missing_interface_is_a_clear_error_and_leaves_nothing() {
    require_root();
    let br = BridgeGuard::new();
    let missing = unique_name("dsnone");
    block_on(async {
        let ovsdb = connect().await;
        ovsdb.create_bridge(&netdev_bridge(&br.name)).await.unwrap();

        let err = ovsdb
            .add_port(&br.name, &PortSpec::new(&missing))
            .await
            .unwrap_err();
        match &err {
            OvsdbError::Interface { name, message } => {
                assert_eq!(name, &missing);
                assert!(message.contains("No such device"), "{message}");
            }
            other => panic!("expected an interface error, got {other}"),
        }
        let text = err.to_string();
        assert!(text.contains(&missing), "{text}");
        assert!(list_ports(&br.name).is_empty(), "port left after failure");
        assert!(!has_row("port", &missing));
        assert!(!has_row("interface", &missing));

        // The same for an uplink: the whole bridge is rolled back.
        let br2 = BridgeGuard::new();
        let spec = BridgeSpec {
            uplinks: vec![UplinkSpec {
                name: missing.clone(),
                ..UplinkSpec::default()
            }],
            ..netdev_bridge(&br2.name)
        };
        let err = ovsdb.create_bridge(&spec).await.unwrap_err();
        assert!(
            matches!(&err, OvsdbError::Interface { name, .. } if name == &missing),
            "{err}"
        );
        assert!(
            !ovs_bridges().contains(&br2.name),
            "bridge left after failure"
        );
        assert!(!has_row("port", &missing));
        assert!(!has_row("port", &br2.name));

        // Without the OVS kernel module (as on the CI machines) a `system` bridge
        // cannot come up: that is an error too, and it is rolled back.
        if default_datapath_type() == "netdev" {
            let br3 = BridgeGuard::new();
            let spec = BridgeSpec {
                datapath_type: "system".into(),
                ..netdev_bridge(&br3.name)
            };
            let err = ovsdb.create_bridge(&spec).await.unwrap_err();
            assert!(err.to_string().contains("datapath type"), "{err}");
            assert!(
                !ovs_bridges().contains(&br3.name),
                "bridge left after failure"
            );
        }

        ovsdb.delete_bridge(&br.name).await.unwrap();
    });
}

#[test]
#[ignore = "needs root and a running Open vSwitch"]
fn concurrent_operations_from_several_tasks() {
    require_root();
    let bridges: Vec<BridgeGuard> = (0..3).map(|_| BridgeGuard::new()).collect();
    let veths: Vec<Veth> = (0..6).map(|_| Veth::new("dsc")).collect();
    block_on(async {
        let ovsdb = connect().await;

        // Three bridges at once, from clones of one handle.
        let creates: Vec<_> = bridges
            .iter()
            .map(|b| {
                let ovsdb = ovsdb.clone();
                let spec = netdev_bridge(&b.name);
                tokio::spawn(async move { ovsdb.create_bridge(&spec).await })
            })
            .collect();
        for task in creates {
            task.await.unwrap().unwrap();
        }
        let present = ovs_bridges();
        for b in &bridges {
            assert!(present.contains(&b.name), "{} missing", b.name);
        }

        // Six ports at once, two per bridge, each with its own VLAN.
        let adds: Vec<_> = veths
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ovsdb = ovsdb.clone();
                let bridge = bridges[i % 3].name.clone();
                let port = PortSpec {
                    tag: Some(100 + i as u16),
                    ..PortSpec::new(&v.host)
                };
                tokio::spawn(async move { ovsdb.add_port(&bridge, &port).await })
            })
            .collect();
        for task in adds {
            task.await.unwrap().unwrap();
        }
        for (i, v) in veths.iter().enumerate() {
            assert_eq!(
                sh("ovs-vsctl", &["port-to-br", &v.host]).trim(),
                bridges[i % 3].name
            );
            assert_eq!(get("port", &v.host, "tag"), (100 + i).to_string());
        }

        // A port is only removed from the bridge it is on.
        let wrong = ovsdb
            .delete_port(&bridges[1].name, &veths[0].host)
            .await
            .unwrap_err();
        assert!(matches!(wrong, OvsdbError::NoSuchPort { .. }), "{wrong}");
        assert_eq!(
            sh("ovs-vsctl", &["port-to-br", &veths[0].host]).trim(),
            bridges[0].name
        );

        // Remove them concurrently, half of them committed first and applied later
        // (DeleteEndpoint's way): once committed, the database no longer has them.
        let deletes: Vec<_> = veths
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ovsdb = ovsdb.clone();
                let bridge = bridges[i % 3].name.clone();
                let port = v.host.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        return ovsdb.delete_port(&bridge, &port).await;
                    }
                    let applied = ovsdb.delete_port_committed(&bridge, &port).await?;
                    assert!(!has_row("port", &port), "{port} committed, still there");
                    applied.await
                })
            })
            .collect();
        for task in deletes {
            task.await.unwrap().unwrap();
        }
        for b in &bridges {
            assert!(list_ports(&b.name).is_empty());
        }
        let drops: Vec<_> = bridges
            .iter()
            .map(|b| {
                let ovsdb = ovsdb.clone();
                let name = b.name.clone();
                tokio::spawn(async move { ovsdb.delete_bridge(&name).await })
            })
            .collect();
        for task in drops {
            task.await.unwrap().unwrap();
        }
        let present = ovs_bridges();
        for b in &bridges {
            assert!(!present.contains(&b.name));
        }
    });
}
