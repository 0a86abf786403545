//! The nat-mode firewall (`dovesnap::firewall::NftFirewall`) on real traffic, without
//! OVS or Docker: a "container" namespace behind a plain veth whose host end plays the
//! bridge (it carries the gateway address), and a "far" namespace behind another veth
//! playing the uplink, with its own subnet and no route back to the containers (so
//! only masquerading makes replies come back).
//!
//! The host's own namespace is the router, next to dockerd's iptables-nft rules
//! (`FORWARD` policy `DROP`): nothing of Docker's is flushed or deleted, and what a
//! test changes (the `FORWARD` policy, our table, our tagged rules) is restored or
//! removed in `Drop`, also on panic.
//!
//! Privileged: `cargo test -p dovesnap-tests --test firewall -- --ignored
//! --test-threads=1` as root. Addresses are in 10.232.0.0/16, used only between
//! namespaces and interfaces the tests create.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dovesnap::firewall::nft::{list_table, FAMILY, TABLE};
use dovesnap::firewall::{
    EndpointPorts, ExpectedNetwork, Firewall, FirewallError, NatNetwork, NftFirewall, PortMapping,
    PortRange, Proto, PublishedPort,
};
use dovesnap_tests::{require_root, run, sh, unique_name, Netns, Veth};

// ---- fixtures -------------------------------------------------------------------

/// A Docker-like id (64 hex digits) whose first 12 digits are unique to this process
/// and call, so that leftovers of an earlier run never share a name.
fn new_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}{:04x}{}", std::process::id(), n, "ab".repeat(26))
}

fn id12(id: &str) -> &str {
    &id[..12]
}

/// A namespace behind a veth: the host end gets 10.232.`net`.1/24, the namespace end
/// 10.232.`net`.2/24 (and a default route through the host when `routed`).
struct Lan {
    ns: Netns,
    veth: Veth,
    net: u8,
}

impl Lan {
    fn new(prefix: &str, net: u8, routed: bool) -> Self {
        let ns = Netns::new(prefix);
        let veth = Veth::new(prefix);
        veth.peer_into(&ns, &format!("10.232.{net}.2/24"));
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.232.{net}.1/24"),
                "dev",
                &veth.host,
            ],
        );
        if routed {
            ns.sh(
                "ip",
                &["route", "add", "default", "via", &format!("10.232.{net}.1")],
            );
        }
        Lan { ns, veth, net }
    }

    /// The host's address on this LAN (the gateway).
    fn host_ip(&self) -> String {
        format!("10.232.{}.1", self.net)
    }

    /// The namespace's address.
    fn peer_ip(&self) -> String {
        format!("10.232.{}.2", self.net)
    }

    fn peer_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 232, self.net, 2)
    }

    /// The nat network whose bridge is this LAN's host end.
    fn nat_network(&self, id: &str, internal: bool) -> NatNetwork {
        NatNetwork {
            id: id.to_string(),
            bridge: self.veth.host.clone(),
            subnet: format!("10.232.{}.0/24", self.net).parse().unwrap(),
            gateway: Ipv4Addr::new(10, 232, self.net, 1),
            internal,
            routed: false,
            masquerade_ports: None,
            ipv6: None,
        }
    }
}

/// Removes the networks' firewall rules on drop (and with the last one, our table).
struct FirewallCleanup {
    ids: Vec<String>,
}

impl Drop for FirewallCleanup {
    fn drop(&mut self) {
        let fw = NftFirewall::new();
        for id in &self.ids {
            if let Err(e) = fw.remove_network(id) {
                eprintln!("cleanup of network {id}: {e}");
            }
        }
    }
}

/// Sets `iptables -P FORWARD DROP` and restores the previous policy on drop.
struct ForwardDrop {
    previous: String,
}

impl ForwardDrop {
    fn set() -> Self {
        let listing = sh("iptables", &["-w", "-S", "FORWARD"]);
        let previous = listing
            .lines()
            .find_map(|l| l.strip_prefix("-P FORWARD "))
            .expect("FORWARD policy in `iptables -S FORWARD`")
            .trim()
            .to_string();
        sh("iptables", &["-w", "-P", "FORWARD", "DROP"]);
        ForwardDrop { previous }
    }
}

impl Drop for ForwardDrop {
    fn drop(&mut self) {
        let out = run("iptables", &["-w", "-P", "FORWARD", &self.previous]);
        if !out.status.success() {
            eprintln!(
                "could not restore the FORWARD policy {}: {}",
                self.previous,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// An iptables rule a test inserts, deleted on drop.
struct TempIptablesRule {
    spec: Vec<String>,
}

/// An iptables rule spec accepting what `dir` (`-i` in, `-o` out) `iface`, with comment
/// `tag`.
fn accept_spec<'a>(dir: &'a str, iface: &'a str, tag: &'a str) -> [&'a str; 8] {
    [
        dir,
        iface,
        "-m",
        "comment",
        "--comment",
        tag,
        "-j",
        "ACCEPT",
    ]
}

impl TempIptablesRule {
    /// Accepts FORWARD traffic in and out of `iface` (comment `fwtest`), as a host's
    /// own firewall set-up would; both rules go on drop.
    fn accept_forward(iface: &str) -> [Self; 2] {
        ["-i", "-o"].map(|dir| Self::insert("FORWARD", &accept_spec(dir, iface, "fwtest")))
    }

    fn insert(chain: &str, spec: &[&str]) -> Self {
        let mut args = vec!["-w", "-I", chain];
        args.extend_from_slice(spec);
        sh("iptables", &args);
        let mut stored = vec![chain.to_string()];
        stored.extend(spec.iter().map(|s| s.to_string()));
        TempIptablesRule { spec: stored }
    }
}

impl Drop for TempIptablesRule {
    fn drop(&mut self) {
        let mut args = vec!["-w".to_string(), "-D".to_string()];
        args.extend(self.spec.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = run("iptables", &args);
    }
}

/// A process started in a namespace, killed (by its pid) on drop.
struct Background {
    child: Child,
}

impl Background {
    fn spawn(ns: &Netns, cmd: &[&str]) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?} in {}: {e}", ns.name));
        Background { child }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// busybox httpd in a namespace serving `/cgi-bin/ip`, which answers the client's
/// address as the server sees it (`REMOTE_ADDR`).
struct Httpd {
    _process: Background,
    root: PathBuf,
}

impl Httpd {
    fn start(ns: &Netns, port: u16) -> Self {
        let root = std::env::temp_dir().join(format!("dovesnap-fw-{}", unique_name("www")));
        let cgi = root.join("cgi-bin");
        std::fs::create_dir_all(&cgi).expect("create the httpd root");
        let script = cgi.join("ip");
        std::fs::write(
            &script,
            "#!/bin/busybox sh\necho \"Content-Type: text/plain\"\necho\necho \"$REMOTE_ADDR\"\n",
        )
        .expect("write the CGI script");
        sh("chmod", &["0755", script.to_str().unwrap()]);
        let listen = format!("0.0.0.0:{port}");
        let process = Background::spawn(
            ns,
            &[
                "busybox",
                "httpd",
                "-f",
                "-p",
                &listen,
                "-h",
                root.to_str().unwrap(),
            ],
        );
        let httpd = Httpd {
            _process: process,
            root,
        };
        let url = format!("http://127.0.0.1:{port}/cgi-bin/ip");
        let deadline = Instant::now() + Duration::from_secs(5);
        while wget(Some(ns), &url).is_none() {
            assert!(
                Instant::now() < deadline,
                "httpd in {} did not start",
                ns.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        httpd
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

// ---- traffic ----------------------------------------------------------------------

/// `busybox wget -qO- URL` (from `ns`, or from the host), with a 4 s limit; the body,
/// trimmed, when it succeeded.
fn wget(ns: Option<&Netns>, url: &str) -> Option<String> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, "timeout", "4"]);
            c
        }
        None => {
            let mut c = Command::new("timeout");
            c.arg("4");
            c
        }
    };
    let out = cmd
        .args(["busybox", "wget", "-qO-", url])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .stdin(Stdio::null())
        .output()
        .expect("run busybox wget");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One ping from `ns` to `ip`.
fn ping(ns: &Netns, ip: &str) -> bool {
    ns.run("ping", &["-c", "1", "-W", "1", ip]).status.success()
}

/// Runs `f` on a thread that has entered network namespace `ns`: sockets it creates
/// stay in that namespace wherever they are used afterwards.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns changes the network namespace of this thread only (a thread
        // made for this call); the descriptor is open for the duration of the call.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in a namespace panicked")
}

/// A UDP server in `ns` on `port` that answers each datagram with the sender's
/// address as it sees it, until `count` datagrams were answered or 15 s passed.
fn udp_echo(ns: &Netns, port: u16, count: usize) -> JoinHandle<()> {
    let sock = in_netns(&ns.name, move || {
        UdpSocket::bind(("0.0.0.0", port)).expect("bind the UDP echo")
    });
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("set a read timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..count {
            let Ok((_, from)) = sock.recv_from(&mut buf) else {
                return;
            };
            let _ = sock.send_to(from.ip().to_string().as_bytes(), from);
        }
    })
}

/// Sends a datagram to `to` from `ns` (or from the host) and returns the answer.
fn udp_ask(ns: Option<&Netns>, to: SocketAddr) -> Option<String> {
    let make = || UdpSocket::bind(("0.0.0.0", 0)).expect("bind a UDP client");
    let sock = match ns {
        Some(ns) => in_netns(&ns.name, make),
        None => make(),
    };
    sock.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    sock.send_to(b"who am i", to).ok()?;
    let mut buf = [0u8; 64];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

// ---- state checks -----------------------------------------------------------------

/// `nft list table inet dovesnap`, or "" when the table does not exist.
fn nft_table_text() -> String {
    let out = run("nft", &["list", "table", FAMILY, TABLE]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every `dovesnap:` tagged rule in the filter table, from `iptables -S`.
fn iptables_tagged() -> Vec<String> {
    sh("iptables", &["-w", "-S"])
        .lines()
        .filter(|l| l.contains("dovesnap:"))
        .map(str::to_string)
        .collect()
}

/// Whether dockerd's isolation chains exist (dovesnap's bridges join them).
fn docker_isolation() -> bool {
    ["DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2"]
        .iter()
        .all(|c| run("iptables", &["-w", "-S", c]).status.success())
}

/// Number of rules in our table, and of our iptables rules, for `id12`.
fn rule_counts(id12: &str) -> (usize, usize) {
    let nft = list_table().expect("list our table");
    let ours = nft
        .rules
        .iter()
        .filter(|r| {
            r.chain.contains(id12) || r.comment.as_deref() == Some(&format!("dovesnap:{id12}"))
        })
        .count();
    let ipt = iptables_tagged()
        .iter()
        .filter(|l| l.contains(&format!("dovesnap:{id12}")))
        .count();
    (ours, ipt)
}

/// Fails unless every network in our table or iptables is one of `ours`: a running
/// dovesnap daemon's rules must not be removed by a test's reconcile.
fn assert_no_foreign_state() {
    let ids = list_table().expect("list our table").network_ids();
    let tagged = iptables_tagged();
    assert!(
        ids.is_empty() && tagged.is_empty(),
        "table inet {TABLE} or iptables already holds dovesnap rules ({ids:?}, {tagged:?}): is \
         a dovesnap daemon running? stop it (and remove its networks) before these tests"
    );
}

/// Nothing of network `id12` is left: no chain or rule in our table, no tagged
/// iptables rule.
fn assert_gone(id12: &str) {
    let text = nft_table_text();
    assert!(
        !text.contains(id12),
        "rules of {id12} left in our table:\n{text}"
    );
    let tagged = iptables_tagged();
    assert!(
        !tagged.iter().any(|l| l.contains(id12)),
        "iptables rules of {id12} left: {tagged:?}"
    );
}

fn tcp(host_port: u16, container_port: u16) -> PortMapping {
    PortMapping {
        proto: Proto::Tcp,
        host_ip: None,
        host_ports: PortRange::single(host_port),
        container_ports: PortRange::single(container_port).unwrap(),
    }
}

fn udp(host_port: u16, container_port: u16) -> PortMapping {
    PortMapping {
        proto: Proto::Udp,
        ..tcp(host_port, container_port)
    }
}

// ---- tests --------------------------------------------------------------------------

#[test]
#[ignore = "needs root: netns, nftables"]
fn masquerade_published_ports_hairpin_and_removal() {
    require_root();
    assert_no_foreign_state();
    let ctr = Lan::new("fwc", 11, true);
    let far = Lan::new("fwf", 12, false);
    let (net_id, ep_id) = (new_id(), new_id());
    let _cleanup = FirewallCleanup {
        ids: vec![net_id.clone()],
    };
    let fw = NftFirewall::new();
    fw.probe().expect("nft runs");
    let net = ctr.nat_network(&net_id, false);

    let far_web = Httpd::start(&far.ns, 80);
    let far_url = format!("http://{}/cgi-bin/ip", far.peer_ip());
    assert_eq!(
        wget(Some(&ctr.ns), &far_url),
        None,
        "the container reached the far side before any rule"
    );

    // Applying twice duplicates nothing.
    fw.add_network(&net).expect("add the network");
    let once = rule_counts(id12(&net_id));
    fw.add_network(&net).expect("add the network again");
    assert_eq!(rule_counts(id12(&net_id)), once);
    assert_eq!(
        once.1,
        if docker_isolation() { 5 } else { 3 },
        "three FORWARD accepts (and two isolation rules beside dockerd)"
    );
    let forward = sh("iptables", &["-w", "-S", "FORWARD"]);
    let first_ours = forward.lines().position(|l| l.contains("dovesnap:"));
    let last_jump = forward.lines().collect::<Vec<_>>().iter().rposition(|l| {
        *l == "-A FORWARD -j DOCKER-USER" || *l == "-A FORWARD -j DOCKER-ISOLATION-STAGE-1"
    });
    assert!(
        first_ours > last_jump,
        "our accepts are above Docker's jumps:\n{forward}"
    );

    // Outbound: the far side sees the host's uplink address.
    assert_eq!(wget(Some(&ctr.ns), &far_url), Some(far.host_ip()));
    assert!(ping(&ctr.ns, &far.peer_ip()));

    // Published ports: tcp 18080 -> 80 and udp 15353 -> 5353.
    let _ctr_web = Httpd::start(&ctr.ns, 80);
    let echo = udp_echo(&ctr.ns, 5353, 3);
    let asked = [tcp(18080, 80), udp(15353, 5353)];
    let published = fw
        .add_ports(&net_id, &ep_id, ctr.peer_addr(), None, &asked)
        .expect("publish the ports");
    let expected = vec![
        PublishedPort {
            proto: Proto::Tcp,
            host_ip: None,
            host_port: 18080,
            container_port: 80,
        },
        PublishedPort {
            proto: Proto::Udp,
            host_ip: None,
            host_port: 15353,
            container_port: 5353,
        },
    ];
    assert_eq!(published, expected);
    let with_ports = rule_counts(id12(&net_id));
    assert_eq!(
        fw.add_ports(&net_id, &ep_id, ctr.peer_addr(), None, &asked)
            .expect("publish again"),
        expected
    );
    assert_eq!(rule_counts(id12(&net_id)), with_ports);
    fw.add_network(&net).expect("re-adding keeps the ports");
    assert_eq!(rule_counts(id12(&net_id)), with_ports);

    eprintln!("--- nft list table inet {TABLE} ---\n{}", nft_table_text());
    eprintln!("--- iptables ---\n{}", iptables_tagged().join("\n"));

    // From the far side: the client's own address is kept.
    let published_url = format!("http://{}:18080/cgi-bin/ip", far.host_ip());
    assert_eq!(wget(Some(&far.ns), &published_url), Some(far.peer_ip()));
    let udp_to: SocketAddr = format!("{}:15353", far.host_ip()).parse().unwrap();
    assert_eq!(udp_ask(Some(&far.ns), udp_to), Some(far.peer_ip()));

    // From the host itself (output hook), by its uplink and by its gateway address.
    assert_eq!(wget(None, &published_url), Some(far.host_ip()));
    let via_gateway = format!("http://{}:18080/cgi-bin/ip", ctr.host_ip());
    assert_eq!(wget(None, &via_gateway), Some(ctr.host_ip()));
    assert_eq!(udp_ask(None, udp_to), Some(far.host_ip()));

    // Hairpin: the container reaches its own published port through the host's
    // address, masqueraded to the gateway.
    assert_eq!(wget(Some(&ctr.ns), &published_url), Some(ctr.host_ip()));
    assert_eq!(udp_ask(Some(&ctr.ns), udp_to), Some(ctr.host_ip()));
    echo.join().expect("UDP echo");

    // A port Docker left open (`-P`): the lowest free one of the dynamic range.
    let other_ep = new_id();
    let open = PortMapping {
        host_ports: None,
        ..tcp(1, 80)
    };
    let chosen = fw
        .add_ports(&net_id, &other_ep, ctr.peer_addr(), None, &[open])
        .expect("publish an open port");
    assert_eq!(chosen.len(), 1);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    assert!(chosen[0].host_port >= low, "{chosen:?} outside {range}");
    let chosen_url = format!(
        "http://{}:{}/cgi-bin/ip",
        far.host_ip(),
        chosen[0].host_port
    );
    assert_eq!(wget(Some(&far.ns), &chosen_url), Some(far.peer_ip()));

    // A clash with another endpoint's port is refused, with nothing changed.
    let before = nft_table_text();
    let err = fw
        .add_ports(&net_id, &other_ep, ctr.peer_addr(), None, &[tcp(18080, 80)])
        .unwrap_err();
    assert!(matches!(err, FirewallError::PortInUse { .. }), "{err}");
    assert_eq!(nft_table_text(), before);

    // Withdrawing the ports closes them.
    fw.remove_ports(&net_id, &ep_id)
        .expect("withdraw the ports");
    fw.remove_ports(&net_id, &ep_id).expect("withdraw again");
    assert_eq!(wget(Some(&far.ns), &published_url), None);
    assert_eq!(wget(Some(&far.ns), &chosen_url), Some(far.peer_ip()));

    // Removing the network removes every rule; the container is cut off again.
    fw.remove_network(&net_id).expect("remove the network");
    fw.remove_network(&net_id).expect("remove it again");
    assert_gone(id12(&net_id));
    assert_eq!(wget(Some(&ctr.ns), &far_url), None);
    drop(far_web);
}

#[test]
#[ignore = "needs root: netns, nftables"]
fn forward_drop_policy_opens_only_our_networks() {
    require_root();
    assert_no_foreign_state();
    let _policy = ForwardDrop::set();
    let ctr = Lan::new("fdc", 21, true);
    let far = Lan::new("fdf", 22, false);
    let stranger = Lan::new("fds", 23, true);
    // The far side could answer the stranger directly: only the filter stops it.
    far.ns.sh(
        "ip",
        &["route", "add", "10.232.23.0/24", "via", &far.host_ip()],
    );
    let net_id = new_id();
    let _cleanup = FirewallCleanup {
        ids: vec![net_id.clone()],
    };
    let fw = NftFirewall::new();
    fw.add_network(&ctr.nat_network(&net_id, false))
        .expect("add the network");

    assert!(ping(&ctr.ns, &far.peer_ip()), "nat network blocked by DROP");
    let _web = Httpd::start(&ctr.ns, 80);
    fw.add_ports(&net_id, &new_id(), ctr.peer_addr(), None, &[tcp(28080, 80)])
        .expect("publish");
    let url = format!("http://{}:28080/cgi-bin/ip", far.host_ip());
    assert_eq!(wget(Some(&far.ns), &url), Some(far.peer_ip()));

    // Another interface of the host gets nothing from us: still dropped...
    assert!(
        !ping(&stranger.ns, &far.peer_ip()),
        "forwarding opened for an interface that is not ours"
    );
    // ...and that is the policy's doing: accepted by hand, it passes.
    {
        let _accepted = TempIptablesRule::accept_forward(&stranger.veth.host);
        assert!(
            ping(&stranger.ns, &far.peer_ip()),
            "the stranger's set-up is broken"
        );
    }
    assert!(!ping(&stranger.ns, &far.peer_ip()));

    fw.remove_network(&net_id).expect("remove the network");
    assert_gone(id12(&net_id));
    assert!(!ping(&ctr.ns, &far.peer_ip()));
}

#[test]
#[ignore = "needs root: netns, nftables"]
fn nat_networks_are_isolated() {
    require_root();
    assert_no_foreign_state();
    let a = Lan::new("isa", 41, true);
    let b = Lan::new("isb", 42, true);
    let far = Lan::new("isf", 43, false);
    let internal = Lan::new("isi", 44, true);
    let (a_id, b_id, i_id) = (new_id(), new_id(), new_id());
    let _cleanup = FirewallCleanup {
        ids: vec![a_id.clone(), b_id.clone(), i_id.clone()],
    };
    let fw = NftFirewall::new();
    fw.add_network(&a.nat_network(&a_id, false)).expect("add a");
    fw.add_network(&b.nat_network(&b_id, false)).expect("add b");
    fw.add_network(&internal.nat_network(&i_id, true))
        .expect("add the internal network");
    assert_eq!(rule_counts(id12(&i_id)).1, 0, "internal: no iptables rules");

    assert!(ping(&a.ns, &far.peer_ip()));
    assert!(ping(&b.ns, &far.peer_ip()));
    assert!(!ping(&a.ns, &b.peer_ip()), "a reached b");
    assert!(!ping(&b.ns, &a.peer_ip()), "b reached a");

    // An internal network has no way out, nor in; the host itself is still reachable.
    // Docker's FORWARD policy would drop its traffic anyway: accept it there by hand
    // to see dovesnap's own rules do it.
    let _accepted = TempIptablesRule::accept_forward(&internal.veth.host);
    assert!(!ping(&internal.ns, &far.peer_ip()), "internal reached far");
    assert!(!ping(&internal.ns, &a.peer_ip()), "internal reached a");
    assert!(!ping(&a.ns, &internal.peer_ip()), "a reached internal");
    assert!(ping(&internal.ns, &internal.host_ip()));
    let err = fw
        .add_ports(
            &i_id,
            &new_id(),
            internal.peer_addr(),
            None,
            &[tcp(48080, 80)],
        )
        .unwrap_err();
    assert!(matches!(err, FirewallError::UnknownNetwork { .. }), "{err}");

    // A published port is public: reachable from the other nat network through a
    // host address (masqueraded as it leaves its network, like any outbound traffic).
    let _web = Httpd::start(&b.ns, 80);
    fw.add_ports(&b_id, &new_id(), b.peer_addr(), None, &[tcp(48080, 80)])
        .expect("publish on b");
    let url = format!("http://{}:48080/cgi-bin/ip", far.host_ip());
    assert_eq!(wget(Some(&a.ns), &url), Some(b.host_ip()));
    assert!(!ping(&a.ns, &b.peer_ip()), "a reached b after publishing");

    // Removing one network leaves the others working.
    fw.remove_network(&a_id).expect("remove a");
    assert_gone(id12(&a_id));
    assert!(ping(&b.ns, &far.peer_ip()));
    assert!(!ping(&internal.ns, &far.peer_ip()));
}

#[test]
#[ignore = "needs root: netns, nftables"]
fn reconcile_removes_leftovers_and_restores_missing_rules() {
    require_root();
    assert_no_foreign_state();
    let a = Lan::new("rca", 31, true);
    let b = Lan::new("rcb", 32, true);
    let far = Lan::new("rcf", 33, false);
    let (a_id, b_id, a_ep, b_ep, b_stale_ep) = (new_id(), new_id(), new_id(), new_id(), new_id());
    let _cleanup = FirewallCleanup {
        ids: vec![a_id.clone(), b_id.clone()],
    };
    {
        // A daemon that is then "killed": its rules stay in the kernel.
        let fw = NftFirewall::new();
        fw.add_network(&a.nat_network(&a_id, false)).expect("add a");
        fw.add_network(&b.nat_network(&b_id, false)).expect("add b");
        fw.add_ports(&a_id, &a_ep, a.peer_addr(), None, &[tcp(38080, 80)])
            .expect("publish on a");
        fw.add_ports(&b_id, &b_ep, b.peer_addr(), None, &[tcp(38081, 80)])
            .expect("publish on b");
        fw.add_ports(&b_id, &b_stale_ep, b.peer_addr(), None, &[tcp(38082, 80)])
            .expect("publish a stale endpoint on b");
    }
    let b_counts = rule_counts(id12(&b_id));
    let b_ports = vec![PublishedPort {
        proto: Proto::Tcp,
        host_ip: None,
        host_port: 38081,
        container_port: 80,
    }];
    let expected = [ExpectedNetwork {
        network: b.nat_network(&b_id, false),
        endpoints: vec![EndpointPorts {
            endpoint_id: b_ep.clone(),
            container_ip: b.peer_addr(),
            container_ip6: None,
            ports: b_ports.clone(),
        }],
    }];

    // An earlier version's accepts at the top of DOCKER-USER (when dockerd made it).
    let old_tag = format!("dovesnap:{}", id12(&b_id));
    let old_rule = accept_spec("-i", &b.veth.host, &old_tag);
    let user_chain = run("iptables", &["-w", "-S", "DOCKER-USER"])
        .status
        .success();
    if user_chain {
        let mut args = vec!["-w", "-I", "DOCKER-USER"];
        args.extend(old_rule);
        sh("iptables", &args);
    }

    // A new daemon: a is gone, b's stale endpoint too; b's own ports stay; the old
    // accepts are gone from DOCKER-USER.
    let fw = NftFirewall::new();
    fw.reconcile(&expected).expect("reconcile");
    assert_gone(id12(&a_id));
    if user_chain {
        let user = sh("iptables", &["-w", "-S", "DOCKER-USER"]);
        assert!(!user.contains("dovesnap:"), "old accepts left:\n{user}");
    }
    let state = list_table().expect("list");
    let found: Vec<_> = state.published().into_iter().map(|f| f.port).collect();
    assert_eq!(found, b_ports);
    assert_eq!(rule_counts(id12(&b_id)).1, b_counts.1);
    assert!(ping(&b.ns, &far.peer_ip()));
    assert!(!ping(&a.ns, &far.peer_ip()), "a still masqueraded");

    // Reconciling again changes nothing.
    let before = rule_counts(id12(&b_id));
    fw.reconcile(&expected).expect("reconcile again");
    assert_eq!(rule_counts(id12(&b_id)), before);

    // Rules lost behind dovesnap's back come back.
    let tag = format!("dovesnap:{}", id12(&b_id));
    let mut args = vec!["-w", "-D", "FORWARD"];
    args.extend(accept_spec("-i", &b.veth.host, &tag));
    sh("iptables", &args);
    let snat = format!("nw-{}-snat", id12(&b_id));
    sh("nft", &["flush", "chain", FAMILY, TABLE, &snat]);
    assert!(
        !ping(&b.ns, &far.peer_ip()),
        "b still works without its rules"
    );
    fw.reconcile(&expected).expect("reconcile after losses");
    assert_eq!(rule_counts(id12(&b_id)), before);
    assert!(ping(&b.ns, &far.peer_ip()));

    // Nothing expected: nothing left, not even the table.
    fw.reconcile(&[]).expect("reconcile to nothing");
    assert_gone(id12(&b_id));
    assert!(
        nft_table_text().is_empty(),
        "table left:\n{}",
        nft_table_text()
    );
    assert!(iptables_tagged().is_empty());
}
