//! nat-fast end to end: real dockerd, real plugin, real OVS, the XDP program in the
//! kernel, AF_XDP sockets and the userspace translator.
//!
//! Topology as in docker_nat.rs: a "far" namespace behind a veth that is the uplink
//! (host 10.232.110.1/24, far 10.232.110.2/24), named with `-o ovs.nat.uplink`.
//! Every check proves its path twice: the answer is right (the far side sees the
//! uplink's address, data arrives intact), and the counters say the frames went
//! through the translator while the host's conntrack table has no entry for them
//! (netfilter never saw them).

use std::time::Duration;

use serde_json::Value;

use dovesnap_tests::daemon::{metric_value, scrape_metrics};
use dovesnap_tests::docker::{
    assert_outbound_masqueraded, assert_published, container_tcp, docker, start_plugin,
    start_plugin_with, udp_ask, Container, Network,
};
use dovesnap_tests::far::Far;
use dovesnap_tests::status::{counter_in, translator_counter, xdp_counter};
use dovesnap_tests::{run, sh};

const HOST_UPLINK_IP: &str = "10.232.110.1";
const FAR_IP: &str = "10.232.110.2";

const BLOB_BYTES: usize = 4 << 20;
const METRICS_ADDR: &str = "127.0.0.1:19477";

/// The far side (see `dovesnap_tests::far`), standing in for a NIC, with an HTTP
/// server of a random blob on port 8000.
struct BlobFar {
    far: Far,
    dir: std::path::PathBuf,
}

impl BlobFar {
    fn new() -> Self {
        let mut far = Far::new("dsf", "10.232.110");
        // The far end stands in for a NIC: it takes frames redirected by XDP (a veth
        // needs GRO on for that, which gives it NAPI queues) and sends complete
        // checksums (a veth would otherwise send partial ones, which offloaded flows
        // leave to the translator).
        far.ns.sh(
            "ethtool",
            &["-K", &far.uplink.peer, "gro", "on", "tx", "off"],
        );
        let dir = std::env::temp_dir().join(format!("dovesnap-far-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("far www dir");
        sh(
            "sh",
            &[
                "-c",
                &format!("head -c {BLOB_BYTES} /dev/urandom > {}/blob", dir.display()),
            ],
        );
        far.spawn(&[
            "busybox",
            "httpd",
            "-f",
            "-p",
            "8000",
            "-h",
            dir.to_str().expect("utf-8 path"),
        ]);
        BlobFar { far, dir }
    }

    fn blob_md5(&self) -> String {
        let out = sh("md5sum", &[self.dir.join("blob").to_str().unwrap()]);
        out.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

impl std::ops::Deref for BlobFar {
    type Target = Far;

    fn deref(&self) -> &Far {
        &self.far
    }
}

impl std::ops::DerefMut for BlobFar {
    fn deref_mut(&mut self) -> &mut Far {
        &mut self.far
    }
}

impl Drop for BlobFar {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The MD5 of the far side's blob as container `name` receives it over HTTP, the
/// body piped through `reader` (a shell command ending in `md5sum`) within `secs`.
fn blob_md5_in(name: &str, secs: u32, reader: &str) -> String {
    let out = docker(&[
        "exec",
        name,
        "sh",
        "-c",
        &format!("timeout {secs} wget -q -O - http://{FAR_IP}:8000/blob | {reader}"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Conntrack entries of the host that mention `needle` (an address).
fn conntrack_entries(needle: &str) -> Vec<String> {
    let out = run("conntrack", &["-L"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

fn flush_conntrack() {
    let _ = run("conntrack", &["-F"]);
}

fn xdp_attached(ifname: &str) -> bool {
    let out = sh("ip", &["-d", "link", "show", "dev", ifname]);
    out.contains("prog/xdp")
}

fn create_network(name: &str, subnet: &str, uplink: &str) -> Network {
    create_network_with(name, subnet, uplink, &[])
}

/// A nat-fast network on the xdp engine (what this file tests) with `extra` options.
fn create_network_with(name: &str, subnet: &str, uplink: &str, extra: &[&str]) -> Network {
    let mut options = vec!["-o", "ovs.nat.engine=xdp"];
    options.extend_from_slice(extra);
    Network::nat_fast_with(name, uplink, subnet, &options)
}

#[test]
#[ignore = "needs root, Open vSwitch, XDP, AF_XDP and dockerd (cargo xtask test)"]
fn two_networks_at_once_and_fallback_when_the_plugin_dies() {
    let mut plugin = start_plugin();
    let far = BlobFar::new();
    let a = create_network("dsfast-na", "10.232.12.0/24", &far.uplink.host);
    // One network offloads established sessions to XDP (the default), the other keeps
    // every packet on the AF_XDP translator.
    let b = create_network_with(
        "dsfast-nb",
        "10.232.13.0/24",
        &far.uplink.host,
        &["-o", "ovs.nat.offload=false"],
    );
    let ca = Container::idle("dsfast-ca", &a);
    let cb = Container::idle("dsfast-cb", &b);
    let (ip_a, ip_b) = (ca.ip(&a), cb.ip(&b));
    flush_conntrack();
    // Both networks at once, in parallel, through one uplink's translator.
    let script = format!("for i in 1 2 3 4 5; do timeout 5 nc {FAR_IP} 7000; done");
    std::thread::scope(|scope| {
        let clients = [("a", &ca), ("b", &cb)]
            .map(|(who, c)| (who, scope.spawn(|| c.exec(&["sh", "-c", &script]))));
        for (who, t) in clients {
            let out = t.join().expect("client thread");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                text.matches(&format!("from {HOST_UPLINK_IP}")).count(),
                5,
                "network {who}: {text}"
            );
        }
    });
    // A bulk download on each: a's goes to XDP after its first packets, b's stays on
    // the translator; both arrive intact.
    for c in [&ca, &cb] {
        assert_eq!(
            blob_md5_in(&c.name, 20, "md5sum"),
            far.blob_md5(),
            "download on {}",
            c.name
        );
    }
    let status = plugin.status();
    assert!(translator_counter(&status, "outbound") > 0, "{status:#}");
    let offloaded = |ip: &str| {
        status["fast_path"]["dataplane"]["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["ip"].as_str() == Some(ip))
            .map(|e| {
                e["offload"]["out_frames"].as_u64().unwrap_or(0)
                    + e["offload"]["in_frames"].as_u64().unwrap_or(0)
            })
            .expect("the endpoint's counters")
    };
    assert!(
        offloaded(&ip_a) > 0,
        "network a offloaded nothing: {status:#}"
    );
    assert_eq!(
        offloaded(&ip_b),
        0,
        "ovs.nat.offload=false offloaded: {status:#}"
    );
    for ip in [&ip_a, &ip_b] {
        assert!(conntrack_entries(ip).is_empty(), "netfilter saw {ip}");
    }
    // Isolation holds on the fast path: a does not reach b.
    assert!(!ca.ping(&ip_b), "network a reached network b");

    // The plugin dies during traffic: its XDP links go with the process, the kernel
    // nat rules stay, and new connections take the kernel path (conntrack now sees
    // them). At most the one connection in flight at the kill may be lost.
    let (answered, text) = far.answered_across(&ca, || plugin.kill());
    assert!(
        answered >= 29,
        "connections lost across the plugin's death: {answered}/30: {text}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!xdp_attached(&far.uplink.host), "XDP outlived the plugin");
    let seen = container_tcp(&ca, FAR_IP, 7000).expect("kernel fallback TCP");
    assert_eq!(seen.trim(), format!("from {HOST_UPLINK_IP}"));
    assert!(
        !conntrack_entries(&ip_a).is_empty(),
        "the fallback did not go through netfilter"
    );
    // A restart puts the running containers back on the fast path.
    plugin = start_plugin();
    assert!(
        xdp_attached(&far.uplink.host),
        "not re-attached after restart"
    );
    flush_conntrack();
    let seen = container_tcp(&cb, FAR_IP, 7000).expect("fast path after restart");
    assert_eq!(seen.trim(), format!("from {HOST_UPLINK_IP}"));
    assert!(
        conntrack_entries(&ip_b).is_empty(),
        "restart left b on netfilter"
    );
    // A clean stop detaches everything and leaves the kernel path working.
    assert!(plugin.terminate(), "dovesnap did not stop cleanly");
    assert!(
        !xdp_attached(&far.uplink.host),
        "XDP left after a clean stop"
    );
    let seen = container_tcp(&cb, FAR_IP, 7000).expect("kernel path after a clean stop");
    assert_eq!(seen.trim(), format!("from {HOST_UPLINK_IP}"));
    plugin = start_plugin();
    drop(ca);
    drop(cb);
    drop(a);
    drop(b);
    drop(plugin);
    drop(far);
}

#[test]
#[ignore = "needs root, Open vSwitch, XDP, AF_XDP and dockerd (cargo xtask test)"]
fn translator_carries_tcp_udp_icmp_and_published_ports() {
    let plugin = start_plugin_with(&["--metrics", METRICS_ADDR]);
    let mut far = BlobFar::new();
    far.add_ipv6("fd31:232:110");
    let v6 = [
        "--ipv6",
        "--subnet",
        "fd31:232:11::/64",
        "--gateway",
        "fd31:232:11::1",
    ];
    let net = create_network_with("dsfast-a", "10.232.11.0/24", &far.uplink.host, &v6);
    let net_id = net.id();
    // Nothing is attached before an endpoint joins.
    assert!(
        !xdp_attached(&far.uplink.host),
        "XDP on the uplink too early"
    );

    let web = Container::published_web("dsfast-web", &net, 18180, "fast-web");
    let c = Container::idle("dsfast-cli", &net);
    let c_ip = c.ip(&net);
    assert!(xdp_attached(&far.uplink.host), "no XDP on the uplink");
    let status = plugin.status();
    let eps = status["networks"][0]["endpoints"].as_array().cloned();
    assert!(
        eps.iter().flatten().all(|e| e["fast_path"] == true),
        "endpoints not on the fast path: {status:#}"
    );
    flush_conntrack();
    let before = plugin.status();

    // Outbound TCP, UDP and ICMP: the far side sees the uplink's address.
    assert_outbound_masqueraded(&c, FAR_IP, HOST_UPLINK_IP);
    let c_pid = c.pid();
    let in_c = ["nsenter", "-t", &c_pid, "-n"];
    // An ICMP error comes back to the right container: port unreachable from the far
    // side reaches the client's socket as ECONNREFUSED.
    assert_eq!(
        udp_ask(&in_c, FAR_IP, 7999),
        "refused",
        "ICMP port unreachable back to the container"
    );
    // HTTP and a bulk transfer with intact data.
    assert_eq!(
        blob_md5_in(&c.name, 20, "md5sum"),
        far.blob_md5(),
        "bulk transfer through the translator corrupted or lost data"
    );
    // The next hop changes its MAC (and the host learns it): offloaded sessions must
    // leave XDP at once, or they would go on sending to the old address. A download is
    // in flight while it happens (its reader stalls, so the connection is open and
    // offloaded at the change), and must arrive intact.
    let invalidated = |st: &Value| {
        counter_in(
            &st["fast_path"]["dataplane"]["counters"],
            "offload_nexthop_invalidations",
        )
    };
    let invalidated_before = invalidated(&plugin.status());
    let download = std::thread::spawn({
        let name = c.name.clone();
        move || blob_md5_in(&name, 30, "(sleep 1.5; md5sum)")
    });
    std::thread::sleep(Duration::from_millis(900));
    let new_mac = "02:00:5e:10:20:30";
    far.ns.sh(
        "ip",
        &["link", "set", "dev", &far.uplink.peer, "address", new_mac],
    );
    sh(
        "ip",
        &[
            "neigh",
            "replace",
            FAR_IP,
            "lladdr",
            new_mac,
            "dev",
            &far.uplink.host,
        ],
    );
    let got = download.join().expect("download thread");
    assert_eq!(
        got,
        far.blob_md5(),
        "a download across a next-hop MAC change lost data"
    );
    assert!(
        invalidated(&plugin.status()) > invalidated_before,
        "no offloaded session left XDP on the neighbour change"
    );

    // Inbound: published TCP and UDP from the far side.
    assert_published(&web, &far.ns, HOST_UPLINK_IP, 18180, "fast-web");

    // The counters: frames were steered both ways and translated; netfilter saw none.
    let after = plugin.status();
    let delta = |f: fn(&Value, &str) -> u64, name: &str| f(&after, name) - f(&before, name);
    let out_steered = delta(xdp_counter, "endpoint-redirect");
    let in_steered = delta(xdp_counter, "uplink-redirect");
    // Established sessions were offloaded: the bulk of the download was rewritten and
    // forwarded by XDP itself, the handshakes and everything else by the translator.
    let out_offloaded = delta(xdp_counter, "offload-outbound");
    let in_offloaded = delta(xdp_counter, "offload-inbound");
    assert!(
        out_steered + out_offloaded > 40 && out_steered > 5,
        "too few container frames steered ({out_steered} + {out_offloaded}): {after:#}"
    );
    assert!(
        in_steered + in_offloaded > BLOB_BYTES as u64 / 1500,
        "too few uplink frames steered ({in_steered} + {in_offloaded}): {after:#}"
    );
    assert!(
        in_offloaded > BLOB_BYTES as u64 / 1500 / 2,
        "the download was not offloaded to XDP ({in_offloaded} frames): {after:#}"
    );
    assert!(out_offloaded > 0, "no ACK offloaded: {after:#}");
    assert_eq!(
        delta(xdp_counter, "offload-redirect-failed"),
        0,
        "{after:#}"
    );
    assert!(
        counter_in(
            &after["fast_path"]["dataplane"]["counters"],
            "offload_installs"
        ) > 0,
        "{after:#}"
    );
    assert!(delta(translator_counter, "outbound") >= out_steered / 2);
    assert!(delta(translator_counter, "inbound") >= in_steered / 2);
    for ip in [c_ip.as_str(), FAR_IP, HOST_UPLINK_IP] {
        let left = conntrack_entries(ip);
        assert!(
            left.is_empty(),
            "netfilter tracked translator traffic for {ip}: {left:#?}"
        );
    }

    // Prometheus metrics: per-endpoint frames both ways, sessions, XDP decisions.
    let metrics = scrape_metrics(METRICS_ADDR);
    assert!(
        metrics.starts_with("HTTP/1.0 200") || metrics.starts_with("HTTP/1.1 200"),
        "{metrics}"
    );
    let c_port = status["networks"][0]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| {
            e["address"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{c_ip}/")))
        })
        .and_then(|e| e["port"].as_str())
        .map(str::to_string)
        .expect("the client's endpoint in the status");
    let out_frames = metric_value(
        &metrics,
        "dovesnap_endpoint_frames_total",
        &format!("port=\"{c_port}\",direction=\"out\""),
    );
    let out_offloaded = metric_value(
        &metrics,
        "dovesnap_endpoint_offloaded_frames_total",
        &format!("port=\"{c_port}\",direction=\"out\""),
    );
    let in_bytes = metric_value(
        &metrics,
        "dovesnap_endpoint_bytes_total",
        &format!("port=\"{c_port}\",direction=\"in\""),
    ) + metric_value(
        &metrics,
        "dovesnap_endpoint_offloaded_bytes_total",
        &format!("port=\"{c_port}\",direction=\"in\""),
    );
    assert!(
        out_frames > 5 && out_frames + out_offloaded > 40,
        "endpoint out frames {out_frames} + {out_offloaded}: {metrics}"
    );
    assert!(
        in_bytes > BLOB_BYTES as u64,
        "endpoint in bytes {in_bytes}: {metrics}"
    );
    assert!(
        metrics.contains("dovesnap_translator_sessions{uplink="),
        "{metrics}"
    );

    // `dovesnap status` shows the fast path: attachments, sessions, counters.
    let table = plugin.status_text();
    eprintln!("{table}");
    assert!(table.contains("nat-fast: XDP on"), "{table}");
    assert!(
        table.contains(&format!("uplink {} ({HOST_UPLINK_IP})", far.uplink.host)),
        "{table}"
    );
    assert!(
        table.contains(&format!("{c_ip}:")),
        "no session of {c_ip}: {table}"
    );
    // IPv6 takes the kernel's path (the XDP program passes it): masqueraded to the
    // uplink's IPv6 address, and `dovesnap status` says so under the network.
    let (host6, far6) = far.ipv6();
    assert_outbound_masqueraded(&c, far6, host6);
    assert!(
        table.contains("\n  ipv6: kernel path (nft masquerade)\n"),
        "{table}"
    );

    drop(c);
    drop(web);
    // The last endpoint took the uplink's program with it, and every offloaded flow
    // went with its session.
    assert!(!xdp_attached(&far.uplink.host), "XDP left on the uplink");
    let last = plugin.status();
    let counters = &last["fast_path"]["dataplane"]["counters"];
    assert_eq!(counter_in(counters, "offloaded_sessions"), 0, "{last:#}");
    assert_eq!(
        counter_in(counters, "offload_installs"),
        counter_in(counters, "offload_removals"),
        "an offloaded flow outlived its endpoint: {last:#}"
    );
    drop(net);
    let _ = net_id;
    drop(plugin);
    drop(far);
}
