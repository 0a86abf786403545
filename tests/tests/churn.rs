//! Churn: 200 containers created and removed across a flat, a nat and a nat-fast
//! network by a few threads at once (published ports on the nat ones), with the
//! reconciler running every second. Then, with the survivors running and again after
//! everything is gone, what the host holds must be exactly what the live containers
//! need: OVS ports on each bridge, host veths, dovesnap's nftables rules, the eBPF maps
//! (`IFACES` through bpftool) and the fast path's endpoints, and the reconciler must
//! have repaired nothing (Docker's own teardown is not a fault).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use dovesnap_tests::bpf;
use dovesnap_tests::daemon::Daemon;
use dovesnap_tests::docker::{docker, ensure_image, start_plugin_with, Network, IMAGE};
use dovesnap_tests::far::Far;
use dovesnap_tests::{host_veths, require_root, run};

const TOTAL: usize = 200;
const THREADS: usize = 4;
/// Containers each thread keeps running while it churns.
const WINDOW: usize = 3;

/// Removes every container the test may have made, on drop (also on panic).
struct Sweep;

impl Drop for Sweep {
    fn drop(&mut self) {
        let out = run("docker", &["ps", "-aq", "--filter", "name=dschurn-"]);
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = docker(&args);
        }
    }
}

/// OVS ports of `bridge`.
fn ovs_ports(bridge: &str) -> BTreeSet<String> {
    String::from_utf8_lossy(&run("ovs-vsctl", &["list-ports", bridge]).stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Per network id: (bridge, mode, endpoint ports) from the daemon's status.
fn status_networks(status: &Value) -> BTreeMap<String, (String, String, BTreeSet<String>)> {
    status["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let ports = n["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["port"].as_str().map(str::to_string))
                .collect();
            (
                n["id"].as_str().unwrap_or_default().to_string(),
                (
                    n["bridge"].as_str().unwrap_or_default().to_string(),
                    n["mode"].as_str().unwrap_or_default().to_string(),
                    ports,
                ),
            )
        })
        .collect()
}

/// Running containers of the test on network `name`.
fn live_on(name: &str) -> usize {
    let out = run(
        "docker",
        &[
            "ps",
            "-q",
            "--filter",
            "name=dschurn-",
            "--filter",
            &format!("network={name}"),
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .count()
}

/// Published-port rules (`ep:` comments) in dovesnap's nftables table for a network.
fn nft_port_rules(net_id: &str) -> usize {
    let out = run("nft", &["list", "table", "inet", "dovesnap"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let chain = format!("chain nw-{}-dnat", &net_id[..12]);
    let Some(start) = text.find(&chain) else {
        return 0;
    };
    let body = &text[start..];
    let end = body.find('}').unwrap_or(body.len());
    body[..end].matches("comment \"ep:").count()
}

/// Entries of the plugin's `IFACES` eBPF map: the map of that name used by the XDP
/// program attached to `uplink` (bpftool); None when nothing is attached there.
fn ifaces_entries(uplink: &str) -> Option<usize> {
    let link: Value =
        serde_json::from_slice(&run("ip", &["-d", "-j", "link", "show", "dev", uplink]).stdout)
            .ok()?;
    let prog = link[0]["xdp"]["prog"]["id"].as_u64()?.to_string();
    let id = bpf::map_of(&prog, "IFACES").expect("the XDP program uses an IFACES map");
    Some(bpf::entries(&id))
}

/// Checks that the host holds exactly what the running containers need; returns how
/// many containers that is.
fn check_exact(plugin: &Daemon, nets: &[(&Network, String)], uplink: &str) -> usize {
    let status = plugin.status();
    let known = status_networks(&status);
    let mut all_ports = BTreeSet::new();
    let mut live_total = 0;
    let mut fast_ports = BTreeSet::new();
    for (net, id) in nets {
        let (bridge, mode, ports) = known
            .get(id)
            .unwrap_or_else(|| panic!("{} not in status", net.name));
        let live = live_on(&net.name);
        live_total += live;
        assert_eq!(
            ports.len(),
            live,
            "{}: endpoints vs running containers",
            net.name
        );
        assert_eq!(
            &ovs_ports(bridge),
            ports,
            "{}: OVS ports vs endpoints",
            net.name
        );
        if mode != "flat" {
            assert_eq!(
                nft_port_rules(id),
                live,
                "{}: published-port rules",
                net.name
            );
        }
        if mode == "nat-fast" {
            fast_ports.extend(ports.iter().cloned());
        }
        all_ports.extend(ports.iter().cloned());
    }
    let veths = || -> BTreeSet<String> {
        (host_veths().into_iter())
            .filter(|v| v.starts_with("ovsv") || v.starts_with("ovsc"))
            .collect()
    };
    // A deleted endpoint's veth goes just after DeleteEndpoint's answer.
    dovesnap_tests::eventually(Duration::from_secs(3), || veths() == all_ports);
    assert_eq!(veths(), all_ports, "host veths vs endpoints");
    // The fast path: one data-plane entry and one XDP attachment per live nat-fast
    // endpoint, plus the uplink while any is there; IFACES holds the same.
    let fp = &status["fast_path"];
    let dp_ports: BTreeSet<String> = fp["dataplane"]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["port"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        dp_ports, fast_ports,
        "fast-path endpoints vs nat-fast endpoints"
    );
    let attached: BTreeSet<String> = fp["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a[0].as_str().map(str::to_string))
        .collect();
    let mut want = fast_ports.clone();
    if !fast_ports.is_empty() {
        want.insert(uplink.to_string());
    }
    assert_eq!(attached, want, "XDP attachments");
    let ifaces = ifaces_entries(uplink);
    eprintln!("IFACES entries held by the plugin: {ifaces:?}");
    if !fast_ports.is_empty() {
        assert!(
            ifaces.is_some(),
            "bpftool shows no IFACES map of the plugin"
        );
    }
    if let Some(n) = ifaces {
        let uplink_entries = usize::from(!fast_ports.is_empty());
        assert_eq!(n, fast_ports.len() + uplink_entries, "IFACES entries");
    }
    live_total
}

#[test]
#[ignore = "needs root, Open vSwitch, XDP, AF_XDP and dockerd (cargo xtask test)"]
fn churn_leaves_exactly_what_live_containers_need() {
    require_root();
    ensure_image();
    let plugin = start_plugin_with(&["--reconcile-interval", "1"]);
    // The uplink of the nat networks: a far namespace behind a veth.
    let far = Far::new("dsh", "10.234.100");
    let uplink = far.uplink.host.clone();
    let flat = Network::flat("dschurn-flat", "10.234.1.0/22");
    let nat = Network::nat("dschurn-nat", "10.234.4.0/22");
    let fast = Network::nat_fast("dschurn-fast", &uplink, "10.234.8.0/22");
    let nets = [(&flat, flat.id()), (&nat, nat.id()), (&fast, fast.id())];
    let _sweep = Sweep;

    let start = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let names = [flat.name.clone(), nat.name.clone(), fast.name.clone()];
            std::thread::spawn(move || {
                let mut window = std::collections::VecDeque::new();
                let mut failures = Vec::new();
                for i in 0..TOTAL / THREADS {
                    let name = format!("dschurn-{t}-{i}");
                    let net = &names[(t + i) % names.len()];
                    let mut args = vec!["run", "-d", "--name", &name, "--network", net];
                    if !net.ends_with("flat") {
                        args.extend(["-p", "80"]);
                    }
                    args.extend([IMAGE, "sleep", "3600"]);
                    let out = docker(&args);
                    if out.status.success() {
                        window.push_back(name);
                    } else {
                        failures.push(format!(
                            "{name}: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ));
                    }
                    if window.len() > WINDOW {
                        let old = window.pop_front().expect("non-empty");
                        let out = docker(&["rm", "-f", &old]);
                        if !out.status.success() {
                            failures.push(format!(
                                "rm {old}: {}",
                                String::from_utf8_lossy(&out.stderr).trim()
                            ));
                        }
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("churn thread"))
        .collect();
    let took = start.elapsed();
    eprintln!(
        "churn: {TOTAL} containers created and {} removed in {} s ({} ms per container)",
        TOTAL - THREADS * WINDOW,
        took.as_secs(),
        took.as_millis() / TOTAL as u128
    );
    assert!(failures.is_empty(), "docker failures: {failures:#?}");

    let live = check_exact(&plugin, &nets, &uplink);
    assert_eq!(live, THREADS * WINDOW);
    eprintln!("{}", plugin.status_text());

    // The survivors still talk: every nat-fast survivor reaches the far side.
    let out = run("docker", &["ps", "-q", "--filter", "network=dschurn-fast"]);
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let out = docker(&["exec", id, "timeout", "5", "nc", "10.234.100.2", "7000"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "from 10.234.100.1",
            "nat-fast survivor {id}"
        );
    }

    drop(_sweep);
    let left = check_exact(&plugin, &nets, &uplink);
    assert_eq!(left, 0);
    let repairs = plugin.status()["repairs"].clone();
    assert!(
        repairs.as_array().is_none_or(Vec::is_empty),
        "the reconciler repaired something during plain churn: {repairs}"
    );
    let bridges: Vec<String> = status_networks(&plugin.status())
        .into_values()
        .map(|(b, _, _)| b)
        .collect();
    let ids: Vec<String> = nets.iter().map(|(_, id)| id.clone()).collect();
    drop((flat, nat, fast));
    let still: Vec<String> = dovesnap_tests::ovs_bridges()
        .into_iter()
        .filter(|b| bridges.contains(b))
        .collect();
    assert!(still.is_empty(), "bridges left: {still:?}");
    let nft = String::from_utf8_lossy(&run("nft", &["list", "table", "inet", "dovesnap"]).stdout)
        .into_owned();
    for id in &ids {
        assert!(!nft.contains(&id[..12]), "rules of {id} left: {nft}");
    }
    drop(plugin);
    drop(far);
}
