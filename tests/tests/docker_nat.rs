//! nat mode end to end: real dockerd, real plugin, real OVS, real netfilter.
//!
//! Topology: a "far" namespace joined to the host by a veth that plays the uplink
//! (host 10.232.100.1/24, far 10.232.100.2/24). Servers in the far namespace report the
//! source address they see, which shows the masquerade.

use std::process::{Command, Stdio};
use std::time::Duration;

use dovesnap_tests::docker::{
    container_tcp, docker, start_plugin, udp_ask, Container, Network, UDP_PONG,
};
use dovesnap_tests::far::Far;
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
    let nft = run("nft", &["list", "table", "ip", "dovesnap"]);
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
    require_root();
    let mut plugin = start_plugin();
    let far = Far::new("dsn", "10.232.100");
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
            ],
        );
        net_id = net.id();
        // The gateway sits on the bridge.
        let bridge = format!("ovsbr-{}", &net_id[..8]);
        let addrs = sh("ip", &["-o", "addr", "show", "dev", &bridge]);
        assert!(addrs.contains("10.232.1.1/24"), "{addrs}");

        let web = Container::run(
            "dsnat-web",
            &net,
            &["-p", "18080:80", "-p", "18081:81/udp"],
            &[
                "sh",
                "-c",
                "echo nat-web > /www/index.html; exec httpd -f -p 80 -h /www",
            ],
        );
        let c = Container::idle("dsnat-cli", &net);

        // Outbound: TCP, UDP and ICMP to the far side, masqueraded to the host's uplink
        // address.
        let seen = container_tcp(&c, FAR_IP, 7000).expect("container -> far TCP");
        assert_eq!(seen.trim(), format!("from {HOST_UPLINK_IP}"));
        let c_pid = c.pid();
        let in_c = ["nsenter", "-t", &c_pid, "-n"];
        assert_eq!(
            udp_ask(&in_c, FAR_IP, 7000),
            format!("from {HOST_UPLINK_IP}"),
            "container -> far UDP"
        );
        assert!(c.ping(FAR_IP), "container -> far ICMP");

        // Inbound: the far side reaches the published TCP port.
        let url = format!("http://{HOST_UPLINK_IP}:18080/");
        assert_eq!(wget(Some(&far.ns), &url), "nat-web", "far -> published TCP");
        let web_pid = web.pid();
        let mut pong = Command::new("nsenter")
            .args(["-t", &web_pid, "-n", "python3", "-c", UDP_PONG, "81"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("UDP pong server");
        std::thread::sleep(Duration::from_millis(500));
        let in_far = ["ip", "netns", "exec", &far.ns.name];
        let answer = udp_ask(&in_far, HOST_UPLINK_IP, 18081);
        let _ = pong.kill();
        let _ = pong.wait();
        assert_eq!(answer, "udp-pong", "far -> published UDP");

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
        // docker ps cannot show a remote driver's ports; dovesnap status does.
        let status = plugin.status().to_string();
        assert!(status.contains(":18080->80/tcp"), "{status}");
        let rules = rules_left(&net_id);
        assert!(!rules.is_empty(), "no rules while the network exists?");

        // A crash and a restart neither lose nor duplicate rules, and the published
        // port keeps working.
        plugin.kill();
        plugin = start_plugin();
        assert_eq!(rules_left(&net_id), rules, "rules changed across a restart");
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

#[test]
#[ignore = "needs root, Open vSwitch, nftables and dockerd (cargo xtask test)"]
fn two_nat_networks_are_isolated() {
    require_root();
    let _plugin = start_plugin();
    let a = Network::create(
        "dsnat-iso-a",
        &["-o", "mode=nat", "--subnet", "10.232.2.0/24"],
    );
    let b = Network::create(
        "dsnat-iso-b",
        &["-o", "mode=nat", "--subnet", "10.232.3.0/24"],
    );
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
    let net = Network::create(
        "dsnat-drop",
        &["-o", "mode=nat", "--subnet", "10.232.4.0/24"],
    );
    let web = Container::run(
        "dsnat-drop-web",
        &net,
        &["-p", "18090:80"],
        &[
            "sh",
            "-c",
            "echo drop-ok > /www/index.html; exec httpd -f -p 80 -h /www",
        ],
    );
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
    status["networks"]
        .as_array()?
        .iter()
        .flat_map(|n| n["endpoints"].as_array().cloned().unwrap_or_default())
        .flat_map(|e| e["published"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_string))
        .find(|p| p.ends_with(&suffix))
        .and_then(|p| p.split("->").next()?.rsplit(':').next()?.parse().ok())
}

#[test]
#[ignore = "needs root, Open vSwitch, nftables and dockerd (cargo xtask test)"]
fn dynamic_and_ranged_host_ports() {
    require_root();
    let plugin = start_plugin();
    let far = Far::new("dsn", "10.232.100");
    let net = Network::create(
        "dsnat-dyn",
        &["-o", "mode=nat", "--subnet", "10.232.8.0/24"],
    );
    // -P: Docker sends host port 0 to a remote driver; dovesnap picks a free one.
    let _a = Container::run(
        "dsnat-dyn-a",
        &net,
        &["--expose", "80", "-P"],
        &[
            "sh",
            "-c",
            "echo dyn-a > /www/index.html; exec httpd -f -p 80 -h /www",
        ],
    );
    // A host range with one container port: one port of the range is chosen.
    let _b = Container::run(
        "dsnat-dyn-b",
        &net,
        &["-p", "18100-18102:81"],
        &[
            "sh",
            "-c",
            "echo dyn-b > /www/index.html; exec httpd -f -p 81 -h /www",
        ],
    );
    // Bound to one host address: reachable there only.
    let _c = Container::run(
        "dsnat-dyn-c",
        &net,
        &["-p", &format!("{HOST_UPLINK_IP}:18110:82")],
        &[
            "sh",
            "-c",
            "echo dyn-c > /www/index.html; exec httpd -f -p 82 -h /www",
        ],
    );
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
