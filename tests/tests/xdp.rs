//! The XDP program on a real veth: it loads, attaches (native mode, generic fallback),
//! counts what it sees, passes traffic, and leaves nothing behind; and the nat-fast
//! steering decisions, with no AF_XDP socket in `XSKS`, so that every frame the program
//! would steer must still reach the kernel (fail-open).
//!
//! Privileged: run with `cargo test -p dovesnap-tests --test xdp -- --ignored
//! --test-threads=1` as root. Addresses are 10.201.0.0/16 /30s and 10.202.0.0/16 used
//! only between namespaces and interfaces the tests create; the steering tests route in a
//! namespace of their own, so the host's forwarding settings are never touched.

use std::fs::File;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::time::Duration;

use dovesnap::fastpath::xdp::{
    be_addr, steered_session_key, AttachMode, Counters, FlowKey, IfaceConfig, PortKey, XdpError,
    XdpProgram, IFACE_ENDPOINT, IFACE_UPLINK, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};
use dovesnap_testbed::cmd::veth_pair;
use dovesnap_testbed::frame::{self, icmp, Ipv4Header};
use dovesnap_tests::{host_veths, require_root, sh, unique_name, Netns, Veth};

/// Whether `ip link show dev IF` reports an XDP program (`xdp`, `xdpgeneric`,
/// `prog/xdp id N`, ...).
fn has_xdp(ifname: &str) -> bool {
    sh("ip", &["-d", "link", "show", "dev", ifname])
        .split_whitespace()
        .any(|w| w.starts_with("xdp") || w.starts_with("prog/xdp"))
}

/// BPF objects (programs, maps, links) this process holds file descriptors for.
fn bpf_fds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("anon_inode:bpf"))
        .collect()
}

fn ns_names() -> String {
    sh("ip", &["netns", "list"])
}

/// Asserts that nothing made by a test is left: veth, namespace, BPF descriptors.
fn assert_clean(veth: &str, ns: &str) {
    assert!(
        !host_veths().iter().any(|v| v == veth),
        "veth {veth} left behind"
    );
    assert_gone(&[ns.to_string()]);
}

#[test]
#[ignore = "needs root: netns, veth, XDP"]
fn counts_and_passes_traffic() {
    require_root();
    let (veth_name, ns_name);
    {
        let ns = Netns::new("dxn");
        let veth = Veth::new("dxv");
        (veth_name, ns_name) = (veth.host.clone(), ns.name.clone());
        veth.peer_into(&ns, "10.201.0.2/30");
        sh("ip", &["addr", "add", "10.201.0.1/30", "dev", &veth.host]);

        let mut xdp = XdpProgram::load().expect("load the XDP program");
        assert_eq!(xdp.counters().expect("counters"), Default::default());
        let mode = xdp.attach(&veth.host).expect("attach to the host end");
        assert_eq!(mode, AttachMode::Driver, "veth supports native XDP");
        assert_eq!(xdp.attach(&veth.host).expect("attach again"), mode);
        assert_eq!(xdp.attached(), vec![veth.host.clone()]);
        assert_eq!(xdp.mode(&veth.host), Some(AttachMode::Driver));
        assert!(has_xdp(&veth.host), "ip link shows no XDP program");

        // The namespace's neighbour cache is empty: the first ping resolves the host end
        // with ARP, then sends IPv4 echo requests. XDP sees what arrives on the host end.
        let before = xdp.counters().expect("counters");
        ns.sh("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.201.0.1"]);
        let after = xdp.counters().expect("counters");
        assert!(
            after.ipv4 >= before.ipv4 + 3,
            "IPv4 counter did not see 3 echo requests: {before:?} -> {after:?}"
        );
        assert!(
            after.arp > before.arp,
            "ARP counter did not grow: {before:?} -> {after:?}"
        );
        assert_eq!(after.malformed, 0, "{after:?}");
        assert_eq!(after.pass, after.frames(), "every frame passed: {after:?}");

        xdp.detach(&veth.host).expect("detach");
        assert!(xdp.attached().is_empty());
        assert!(!has_xdp(&veth.host), "XDP still attached after detach");
        assert!(matches!(
            xdp.detach(&veth.host),
            Err(XdpError::NotAttached { .. })
        ));
        // Still connected without the program, and the counters stopped.
        let detached = xdp.counters().expect("counters");
        ns.sh("ping", &["-c", "1", "-W", "2", "10.201.0.1"]);
        assert_eq!(xdp.counters().expect("counters"), detached);
    }
    assert_clean(&veth_name, &ns_name);
}

#[test]
#[ignore = "needs root: netns, veth, XDP"]
fn drop_detaches_everything() {
    require_root();
    let (veth_names, ns_name);
    {
        let ns = Netns::new("dxn");
        let a = Veth::new("dxa");
        let b = Veth::new("dxb");
        veth_names = [a.host.clone(), b.host.clone()];
        ns_name = ns.name.clone();
        a.peer_into(&ns, "10.201.0.6/30");

        let mut xdp = XdpProgram::load().expect("load the XDP program");
        xdp.attach(&a.host).expect("attach a");
        xdp.attach(&b.host).expect("attach b");
        let mut expected = veth_names.to_vec();
        expected.sort();
        assert_eq!(xdp.attached(), expected);
        assert!(has_xdp(&a.host) && has_xdp(&b.host));
        drop(xdp);
        assert!(!has_xdp(&a.host), "drop left XDP on {}", a.host);
        assert!(!has_xdp(&b.host), "drop left XDP on {}", b.host);
    }
    for veth in &veth_names {
        assert_clean(veth, &ns_name);
    }
}

#[test]
#[ignore = "needs root: netns, veth, XDP"]
fn falls_back_to_generic_mode() {
    require_root();
    let (veth_name, ns_name);
    {
        let ns = Netns::new("dxn");
        let veth = Veth::new("dxm");
        (veth_name, ns_name) = (veth.host.clone(), ns.name.clone());
        // macvlan has no native XDP support; it goes away with its lower veth.
        let macvlan = unique_name("dxmv");
        sh(
            "ip",
            &[
                "link", "add", &macvlan, "link", &veth.host, "type", "macvlan", "mode", "bridge",
            ],
        );

        let mut xdp = XdpProgram::load().expect("load the XDP program");
        assert_eq!(xdp.attach(&macvlan).expect("attach"), AttachMode::Skb);
        assert!(has_xdp(&macvlan));
        xdp.detach(&macvlan).expect("detach");
        assert!(!has_xdp(&macvlan));
    }
    assert_clean(&veth_name, &ns_name);
}

#[test]
#[ignore = "needs root: XDP"]
fn reports_bad_interfaces() {
    require_root();
    let mut xdp = XdpProgram::load().expect("load the XDP program");
    let missing = unique_name("dxnone");
    match xdp.attach(&missing) {
        Err(e @ XdpError::InterfaceNotFound { .. }) => {
            assert!(e.to_string().contains(&missing), "{e}")
        }
        other => panic!("attaching to a missing interface: {other:?}"),
    }
    assert!(matches!(
        xdp.attach("bad/name"),
        Err(XdpError::InvalidInterfaceName { .. })
    ));
    assert!(xdp.attached().is_empty());
}

#[test]
#[ignore = "needs root: netns, veth, XDP"]
fn detach_after_interface_is_gone() {
    require_root();
    let mut xdp = XdpProgram::load().expect("load the XDP program");
    let name = {
        let veth = Veth::new("dxg");
        xdp.attach(&veth.host).expect("attach");
        veth.host.clone()
    };
    // The veth (and with it the program's attachment) is gone; detaching is not an error.
    xdp.detach(&name).expect("detach from a deleted interface");
    assert!(xdp.attached().is_empty());
}

// ---------------------------------------------------------------------------------------
// nat-fast steering, fail-open (no AF_XDP socket in XSKS)
// ---------------------------------------------------------------------------------------

const XDP_PASS: u32 = 2;
/// The uplink's reserved translator port range in these tests.
const PORT_LO: u16 = 40000;
const PORT_HI: u16 = 40099;
/// XSKS slots the tests configure (and leave empty).
const ENDPOINT_SLOT: u32 = 3;
const UPLINK_SLOT: u32 = 8;
/// An ICMP echo identifier the tests hand to the translator.
const ECHO_ID: u16 = 0x4242;

/// Runs `f` on a thread that has entered namespace `ns` (a fresh thread, so no other
/// code runs in the namespace by accident). Sockets made there stay in `ns`; XDP
/// attachments and `BPF_PROG_TEST_RUN` resolve interfaces in `ns`.
fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns changes the network namespace of this thread only (a
                // thread made for this call); the descriptor is open during the call.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

fn ifindex(ns: &Netns, ifname: &str) -> u32 {
    ns.sh("cat", &[&format!("/sys/class/net/{ifname}/ifindex")])
        .trim()
        .parse()
        .expect("ifindex")
}

fn mac(ns: &Netns, ifname: &str) -> [u8; 6] {
    let text = ns.sh("cat", &[&format!("/sys/class/net/{ifname}/address")]);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("MAC byte"))
        .collect();
    bytes.try_into().expect("6-byte MAC")
}

fn addr(a: [u8; 4]) -> u32 {
    be_addr(a)
}

/// container (C) --veth-- router (R) --veth-- far (F).
///
/// C: eth0 10.202.1.2/24, default via 10.202.1.1. R (forwarding on): ep0 10.202.1.1/24
/// (the endpoint's host end, also the gateway: fib_ifindex; two rx queues), up0 10.202.2.1/24 (the
/// uplink and its "external" address; two rx queues, MTU 1280), dm0 10.202.3.1/24 (a
/// veth to nowhere: routed elsewhere), 10.202.9.0/24 via F. F (forwarding on): eth0 10.202.2.2/24,
/// 10.202.1.0/24 via R, no route to 10.202.9.0/24. IPv6 is off everywhere so that no
/// background traffic blurs the counters. Dropping the namespaces removes everything.
struct Topology {
    c: Netns,
    r: Netns,
    f: Netns,
    ep: u32,
    up: u32,
    gateway_mac: [u8; 6],
}

impl Topology {
    fn new() -> Self {
        let (c, r, f) = (Netns::new("dxc"), Netns::new("dxr"), Netns::new("dxf"));
        for ns in [&c, &r, &f] {
            for key in ["all", "default"] {
                ns.line(&format!("sysctl -qw net.ipv6.conf.{key}.disable_ipv6=1"));
            }
        }
        r.line(&veth_pair("ep0", None, "eth0", Some(&c.name), 2));
        r.line(&veth_pair("up0", None, "eth0", Some(&f.name), 2));
        // No dummy driver on every kernel: a veth pair inside R leads nowhere just as well.
        r.line("ip link add dm0 type veth peer name dm1");
        r.line("ip link set dm1 up");
        for (ns, dev, cidr) in [
            (&c, "eth0", "10.202.1.2/24"),
            (&r, "ep0", "10.202.1.1/24"),
            (&r, "up0", "10.202.2.1/24"),
            (&r, "dm0", "10.202.3.1/24"),
            (&f, "eth0", "10.202.2.2/24"),
        ] {
            ns.line(&format!("ip addr add {cidr} dev {dev}"));
            ns.line(&format!("ip link set {dev} up"));
        }
        r.line("ip link set up0 mtu 1280");
        c.line("ip route add default via 10.202.1.1");
        f.line("ip route add 10.202.1.0/24 via 10.202.2.1");
        r.line("ip route add 10.202.9.0/24 via 10.202.2.2");
        for ns in [&r, &f] {
            ns.line("sysctl -qw net.ipv4.conf.all.forwarding=1");
        }
        let (ep, up) = (ifindex(&r, "ep0"), ifindex(&r, "up0"));
        let gateway_mac = mac(&r, "ep0");
        Topology {
            c,
            r,
            f,
            ep,
            up,
            gateway_mac,
        }
    }

    fn names(&self) -> [String; 3] {
        [
            self.c.name.clone(),
            self.r.name.clone(),
            self.f.name.clone(),
        ]
    }

    /// The endpoint, with `queues` rx queues "having a socket", as for the uplink.
    fn endpoint_config(&self, queues: u32) -> IfaceConfig {
        IfaceConfig {
            kind: IFACE_ENDPOINT,
            xsk_slot: ENDPOINT_SLOT,
            xsk_slots: queues,
            addr: addr([10, 202, 1, 2]),
            subnet: addr([10, 202, 1, 0]),
            netmask: addr([255, 255, 255, 0]),
            fib_ifindex: self.ep,
            uplink_ifindex: self.up,
            gateway_mac: self.gateway_mac,
            _pad: [0; 2],
        }
    }

    /// The uplink with `queues` rx queues (from 0) "having a socket"; frames steered on
    /// a later queue pass as `uplink-queue-without-socket`. (The far end spreads flows
    /// over both of up0's queues, so real traffic needs 2.)
    fn uplink_config(&self, queues: u32) -> IfaceConfig {
        IfaceConfig {
            kind: IFACE_UPLINK,
            xsk_slot: UPLINK_SLOT,
            xsk_slots: queues,
            addr: addr([10, 202, 2, 1]),
            ..Default::default()
        }
    }

    /// Loads the program, configures both interfaces and attaches to both (in R).
    fn program(&self) -> XdpProgram {
        let mut xdp = self.configured(2);
        in_netns(&self.r, || {
            for dev in ["ep0", "up0"] {
                assert_eq!(
                    xdp.attach(dev).expect("attach"),
                    AttachMode::Driver,
                    "{dev}"
                );
            }
        });
        xdp
    }

    /// Loads the program and configures both interfaces (`queues` rx queues "with a
    /// socket" each), without attaching it: for `BPF_PROG_TEST_RUN`.
    /// [`Topology::configured`] with one queue, the tc programs loaded and the data
    /// plane's maps taken, as the tc tests start.
    fn tc_ready(&self) -> (XdpProgram, dovesnap::fastpath::xdp::DataplaneMaps) {
        let mut xdp = self.configured(1);
        xdp.tc_programs().expect("the tc programs load");
        let maps = xdp.take_dataplane_maps().expect("maps");
        (xdp, maps)
    }

    fn configured(&self, queues: u32) -> XdpProgram {
        let mut xdp = XdpProgram::load().expect("load the XDP program");
        xdp.set_iface(self.ep, &self.endpoint_config(queues))
            .expect("configure the endpoint");
        xdp.set_iface(self.up, &self.uplink_config(queues))
            .expect("configure the uplink");
        xdp
    }
}

/// Asserts the invariants that hold whatever the traffic, with no socket in XSKS: one
/// verdict per frame, no redirect, every steering attempt failed open.
fn assert_invariants(c: &Counters) {
    assert_eq!(c.verdicts(), c.frames(), "one verdict per frame: {c:?}");
    assert_eq!(c.redirect, 0, "redirected without a socket: {c:?}");
    assert_eq!(
        c.xsk_missing,
        c.steered(),
        "every steered frame found no socket: {c:?}"
    );
    assert!(
        c.endpoint_frames() + c.uplink_frames() <= c.frames(),
        "more decisions than frames: {c:?}"
    );
}

/// Runs `step`, then checks that exactly the listed counters grew by at least the given
/// amounts and that the given "must not move" counters stayed put.
struct Watch<'a> {
    xdp: &'a XdpProgram,
    before: Counters,
}

impl<'a> Watch<'a> {
    fn new(xdp: &'a XdpProgram) -> Self {
        Watch {
            xdp,
            before: xdp.counters().expect("counters"),
        }
    }

    /// Counters since `new`, with invariants checked.
    fn delta(&self, what: &str) -> Counters {
        let after = self.xdp.counters().expect("counters");
        assert_invariants(&after);
        eprintln!("{what}: {}", after.diff(&self.before));
        after.since(&self.before)
    }
}

fn ping(ns: &Netns, args: &[&str]) -> bool {
    let mut full = vec!["-c", "1", "-W", "2"];
    full.extend_from_slice(args);
    ns.run("ping", &full).status.success()
}

/// A UDP socket bound in `ns` to `addr`, with a read timeout.
fn udp_socket(ns: &Netns, addr: &str) -> UdpSocket {
    let addr = addr.to_string();
    let sock = in_netns(ns, move || UdpSocket::bind(&addr).expect("bind"));
    sock.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("read timeout");
    sock
}

/// Whether `sock` receives `payload` within its timeout.
fn receives(sock: &UdpSocket, payload: &[u8]) -> bool {
    let mut buf = [0u8; 64];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == payload)
}

/// Asserts that none of the namespaces `names` is left, nor any BPF descriptor.
fn assert_gone(names: &[String]) {
    let list = ns_names();
    for name in names {
        assert!(
            !list.split_whitespace().any(|n| n == name),
            "netns {name} left behind"
        );
    }
    let fds = bpf_fds();
    assert!(fds.is_empty(), "BPF objects still open: {fds:?}");
}

/// Real traffic through an endpoint and an uplink configured for nat-fast, with XSKS
/// empty: what would be steered is counted as `xsk-missing` and the kernel still routes
/// it (ping and UDP work end to end); everything else is passed under its own counter.
#[test]
#[ignore = "needs root: netns, veth, XDP"]
fn steering_fails_open_without_sockets() {
    require_root();
    let names;
    {
        let topo = Topology::new();
        names = topo.names();
        let mut xdp = topo.program();
        let mut maps = xdp.take_dataplane_maps().expect("take the dataplane maps");
        assert!(matches!(
            xdp.take_dataplane_maps(),
            Err(XdpError::MapsTaken)
        ));
        let ifaces = xdp.ifaces().expect("list interfaces");
        let mut expected = vec![
            (topo.ep, topo.endpoint_config(2)),
            (topo.up, topo.uplink_config(2)),
        ];
        expected.sort_by_key(|(i, _)| *i);
        assert_eq!(ifaces, expected);
        assert_invariants(&xdp.counters().expect("counters"));

        // Routed to the outside through the uplink: steered, found no socket, passed,
        // and the kernel forwarded it. The replies arrive on the uplink for the
        // container's address: not the external address, so not the translator's.
        let w = Watch::new(&xdp);
        assert!(
            ping(&topo.c, &["-c", "3", "-i", "0.2", "10.202.2.2"]),
            "container -> far failed: the program did not fail open"
        );
        let d = w.delta("container pings far");
        assert!(d.endpoint_redirect >= 3, "{d:?}");
        assert!(d.xsk_missing >= 3, "{d:?}");
        assert!(d.uplink_not_for_us >= 3, "{d:?}");
        assert!(d.endpoint_not_to_gateway >= 1, "ARP broadcast: {d:?}");
        assert_eq!(d.uplink_redirect, 0, "{d:?}");

        // UDP too.
        let far = udp_socket(&topo.f, "10.202.2.2:5000");
        let w = Watch::new(&xdp);
        let sock = udp_socket(&topo.c, "10.202.1.2:0");
        sock.send_to(b"out", "10.202.2.2:5000").expect("send");
        assert!(receives(&far, b"out"), "UDP container -> far lost");
        let d = w.delta("container UDP to far");
        assert_eq!(d.endpoint_redirect, 1, "{d:?}");
        assert_eq!(d.xsk_missing, 1, "{d:?}");

        // The gateway is inside the subnet: passed as in-subnet, never steered.
        let w = Watch::new(&xdp);
        assert!(ping(&topo.c, &["-c", "2", "-i", "0.2", "10.202.1.1"]));
        let d = w.delta("container pings gateway");
        assert!(d.endpoint_in_subnet >= 2, "{d:?}");
        assert_eq!(d.endpoint_redirect, 0, "{d:?}");

        // The router's own uplink address: the FIB says local, not forwarded.
        let w = Watch::new(&xdp);
        assert!(ping(&topo.c, &["10.202.2.1"]));
        let d = w.delta("container pings the external address");
        assert_eq!(d.endpoint_not_forwarded, 1, "{d:?}");
        assert_eq!(d.endpoint_redirect, 0, "{d:?}");

        // TTL 1: the kernel must answer with time-exceeded, so it gets the frame.
        let w = Watch::new(&xdp);
        let out = topo
            .c
            .run("ping", &["-c", "1", "-W", "2", "-t", "1", "10.202.2.2"]);
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(text.contains("time to live exceeded"), "{text}");
        let d = w.delta("container pings far with TTL 1");
        assert_eq!(d.endpoint_ttl_expiring, 1, "{d:?}");
        assert_eq!(d.endpoint_redirect, 0, "{d:?}");

        // Bigger than the uplink's MTU with DF: the kernel sends frag-needed.
        let w = Watch::new(&xdp);
        let out = topo.c.run(
            "ping",
            &["-c", "1", "-W", "2", "-M", "do", "-s", "1300", "10.202.2.2"],
        );
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(text.contains("frag needed"), "{text}");
        let d = w.delta("container sends 1328 bytes with DF");
        assert_eq!(d.endpoint_too_big, 1, "{d:?}");
        assert_eq!(d.endpoint_redirect, 0, "{d:?}");

        // Routed, but not out of the uplink (nobody answers behind dm0).
        let w = Watch::new(&xdp);
        assert!(!ping(&topo.c, &["-W", "1", "10.202.3.9"]));
        let d = w.delta("container pings behind dm0");
        assert_eq!(d.endpoint_not_via_uplink, 1, "{d:?}");
        assert_eq!(d.endpoint_redirect, 0, "{d:?}");

        // Another source address than the container's: the kernel's business.
        topo.c
            .sh("ip", &["addr", "add", "10.202.1.3/24", "dev", "eth0"]);
        let w = Watch::new(&xdp);
        assert!(ping(&topo.c, &["-I", "10.202.1.3", "10.202.2.2"]));
        let d = w.delta("container pings far from another address");
        assert_eq!(d.endpoint_spoofed_source, 1, "{d:?}");
        assert_eq!(d.endpoint_redirect, 0, "{d:?}");

        // Uplink: the host's own traffic (an echo request to its address) is untouched.
        let w = Watch::new(&xdp);
        assert!(ping(&topo.f, &["-c", "2", "-i", "0.2", "10.202.2.1"]));
        let d = w.delta("far pings the external address");
        assert!(d.uplink_no_session >= 2, "{d:?}");
        assert_eq!(d.uplink_redirect, 0, "{d:?}");

        // A port of the translator's range that it has not mapped is another NAT's or
        // a host socket's: untouched. Once a session maps it for one remote, that
        // remote's frames are steered (with no socket there, the kernel still delivers
        // them to whoever listens); every other remote's stay the host socket's.
        let listener = udp_socket(&topo.r, "10.202.2.1:40000");
        let sender = udp_socket(&topo.f, "10.202.2.2:0");
        let other = udp_socket(&topo.f, "10.202.2.2:0");
        let w = Watch::new(&xdp);
        sender.send_to(b"in", "10.202.2.1:40000").expect("send");
        assert!(receives(&listener, b"in"), "another NAT's reply lost");
        let d = w.delta("far sends to an unmapped port of the range");
        assert_eq!(d.uplink_no_session, 1, "{d:?}");
        assert_eq!(d.uplink_redirect, 0, "{d:?}");
        let sport = sender.local_addr().expect("local addr").port();
        let mapped = steered_session_key([10, 202, 2, 1], 40000, [10, 202, 2, 2], sport, PROTO_UDP);
        maps.set_session(&mapped).expect("map 40000/udp");
        maps.set_session(&mapped).expect("mapping again is fine");
        assert_eq!(maps.sessions().expect("sessions"), vec![mapped]);
        let w = Watch::new(&xdp);
        sender.send_to(b"in", "10.202.2.1:40000").expect("send");
        assert!(receives(&listener, b"in"), "uplink UDP lost: not fail-open");
        let d = w.delta("far sends to a mapped port");
        assert_eq!(d.uplink_redirect, 1, "{d:?}");
        assert_eq!(d.xsk_missing, 1, "{d:?}");
        let w = Watch::new(&xdp);
        other.send_to(b"other", "10.202.2.1:40000").expect("send");
        assert!(receives(&listener, b"other"));
        let d = w.delta("another remote port sends to the mapped port");
        assert_eq!(d.uplink_no_session, 1, "{d:?}");
        assert_eq!(d.uplink_redirect, 0, "{d:?}");
        maps.remove_session(&mapped).expect("unmap 40000/udp");
        maps.remove_session(&mapped)
            .expect("removing again is fine");
        assert!(maps.sessions().expect("sessions").is_empty());

        // A published port outside the range: steered only while it is in PORTS.
        let published = PortKey::new([10, 202, 2, 1], 8080, PROTO_UDP);
        maps.set_port(published).expect("publish 8080/udp");
        maps.set_port(published).expect("publishing again is fine");
        assert_eq!(maps.ports().expect("ports"), vec![published]);
        let listener = udp_socket(&topo.r, "10.202.2.1:8080");
        let w = Watch::new(&xdp);
        sender.send_to(b"pub", "10.202.2.1:8080").expect("send");
        assert!(receives(&listener, b"pub"));
        let d = w.delta("far sends to a published port");
        assert_eq!(d.uplink_redirect, 1, "{d:?}");
        maps.remove_port(&published).expect("unpublish");
        maps.remove_port(&published)
            .expect("removing again is fine");
        assert!(maps.ports().expect("ports").is_empty());
        let w = Watch::new(&xdp);
        sender.send_to(b"pub", "10.202.2.1:8080").expect("send");
        assert!(receives(&listener, b"pub"));
        let d = w.delta("far sends to an unpublished port");
        assert_eq!(d.uplink_no_session, 1, "{d:?}");
        assert_eq!(d.uplink_redirect, 0, "{d:?}");

        // Echo replies for an identifier the translator owns; without it, the host's.
        let echo = steered_session_key([10, 202, 2, 1], ECHO_ID, [10, 202, 2, 2], 0, PROTO_ICMP);
        let id = ECHO_ID.to_string();
        let w = Watch::new(&xdp);
        assert!(ping(&topo.r, &["-e", &id, "10.202.2.2"]));
        let d = w.delta("router pings far, identifier not owned");
        assert_eq!(d.uplink_redirect, 0, "{d:?}");
        assert!(d.uplink_no_session >= 1, "{d:?}");
        maps.set_session(&echo).expect("own the echo identifier");
        maps.set_session(&steered_session_key(
            [10, 202, 2, 1],
            ECHO_ID,
            [10, 202, 9, 9],
            0,
            PROTO_ICMP,
        ))
        .expect("own the echo identifier towards 10.202.9.9");
        let w = Watch::new(&xdp);
        assert!(
            ping(&topo.r, &["-c", "2", "-i", "0.2", "-e", &id, "10.202.2.2"]),
            "echo reply lost: not fail-open"
        );
        let d = w.delta("router pings far, identifier owned");
        assert_eq!(d.uplink_redirect, 2, "{d:?}");

        // ICMP errors about the translator's packets: an echo request it sent (F has no
        // route to 10.202.9.0/24) and a datagram from a port it has mapped (F port 9 is
        // closed).
        let w = Watch::new(&xdp);
        assert!(!ping(&topo.r, &["-W", "1", "-e", &id, "10.202.9.9"]));
        let d = w.delta("unreachable about an owned echo request");
        assert_eq!(d.uplink_redirect, 1, "{d:?}");
        let mapped = steered_session_key([10, 202, 2, 1], 40001, [10, 202, 2, 2], 9, PROTO_UDP);
        maps.set_session(&mapped).expect("map 40001/udp");
        let from_range = udp_socket(&topo.r, "10.202.2.1:40001");
        let w = Watch::new(&xdp);
        from_range.send_to(b"x", "10.202.2.2:9").expect("send");
        std::thread::sleep(Duration::from_millis(300));
        let d = w.delta("port unreachable about a mapped port");
        assert_eq!(d.uplink_redirect, 1, "{d:?}");
        maps.remove_session(&mapped).expect("unmap 40001/udp");
        // A datagram from a port the translator has not mapped draws an error that is
        // the host's.
        let from_host = udp_socket(&topo.r, "10.202.2.1:40002");
        let w = Watch::new(&xdp);
        from_host.send_to(b"x", "10.202.2.2:9").expect("send");
        std::thread::sleep(Duration::from_millis(300));
        let d = w.delta("port unreachable about a host port");
        assert_eq!(d.uplink_redirect, 0, "{d:?}");
        assert_eq!(d.uplink_no_session, 1, "{d:?}");

        // Removing the endpoint: back to classify-and-pass.
        xdp.remove_iface(topo.ep).expect("remove the endpoint");
        xdp.remove_iface(topo.ep).expect("removing again is fine");
        let w = Watch::new(&xdp);
        assert!(ping(&topo.c, &["10.202.2.2"]));
        let d = w.delta("container pings far, endpoint removed");
        assert_eq!(d.endpoint_frames(), 0, "{d:?}");
        assert!(d.ipv4 >= 1, "{d:?}");

        let totals = xdp.counters().expect("counters");
        assert_invariants(&totals);
        drop(maps);
        drop(xdp);
    }
    assert_gone(&names);
}

/// A minimal IPv4 frame: Ethernet to `dst_mac`, IPv4 (IHL 5 unless `options`) with
/// `proto`, `ttl`, `frag_off` (host order, flags included), then `l4`. Checksums are
/// left zero: the program does not read them.
#[allow(clippy::too_many_arguments)]
fn ipv4_frame(
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    ttl: u8,
    frag: u16,
    options: bool,
    l4: &[u8],
) -> Vec<u8> {
    let header = Ipv4Header::new(dst_mac, src, dst, proto);
    Ipv4Header {
        ttl,
        frag,
        options,
        ..header
    }
    .frame(l4)
}

fn udp(src: u16, dst: u16) -> Vec<u8> {
    frame::udp(src, dst, b"data")
}

/// An ICMP error of `kind` quoting an IPv4 header from `inner_src` with `inner_proto`
/// and the first 8 bytes of `inner_l4`.
fn icmp_error(kind: u8, inner_src: [u8; 4], inner_proto: u8, inner_l4: &[u8]) -> Vec<u8> {
    let inner = ipv4_frame(
        [0; 6],
        inner_src,
        [10, 202, 2, 2],
        inner_proto,
        64,
        0,
        false,
        inner_l4,
    );
    let quoted = &inner[14..14 + 20 + 8.min(inner_l4.len())];
    let mut v = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    v.extend_from_slice(quoted);
    v
}

/// A crafted frame, where it arrives and the decision expected.
struct Case {
    what: &'static str,
    frame: Vec<u8>,
    ifindex: u32,
    queue: u32,
    expected: dovesnap::fastpath::xdp::Counter,
}

/// Every decision, on crafted frames run through the loaded program with
/// `BPF_PROG_TEST_RUN` as if they arrived on the endpoint or the uplink: each one passes
/// (XSKS is empty) and lands in exactly the expected decision counter.
#[test]
#[ignore = "needs root: netns, veth, XDP"]
fn steering_decisions_on_crafted_frames() {
    require_root();
    let names;
    {
        let topo = Topology::new();
        names = topo.names();
        let mut xdp = topo.configured(1);
        let mut maps = xdp.take_dataplane_maps().expect("maps");
        maps.set_port(PortKey::new([10, 202, 2, 1], 8443, PROTO_TCP))
            .expect("publish 8443/tcp");
        // Sessions of the translator (the data plane adds them as the translator makes
        // them), keyed by their replies' tuple; the same port from another remote, and
        // the rest of the range, are not its own.
        for (port, remote_port, proto) in [
            (ECHO_ID, 0, PROTO_ICMP),
            (PORT_LO, 53, PROTO_UDP),
            (PORT_HI, 80, PROTO_TCP),
            (PORT_LO + 5, 9, PROTO_UDP),
        ] {
            let key =
                steered_session_key([10, 202, 2, 1], port, [10, 202, 2, 2], remote_port, proto);
            maps.set_session(&key).expect("map a translator session");
        }

        let gw = topo.gateway_mac;
        let other_mac = [0x02, 0, 0, 0, 0, 0x77];
        let ours = [10, 202, 1, 2];
        let far = [10, 202, 2, 2];
        let ext = [10, 202, 2, 1];
        let e = |proto, ttl, frag, options, l4: &[u8]| {
            ipv4_frame(gw, ours, far, proto, ttl, frag, options, l4)
        };
        let big = vec![0u8; 1300];
        let mut ipv6 = ipv4_frame(gw, ours, far, PROTO_UDP, 64, 0, false, &udp(1, 2));
        ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        ipv6[14] = 0x60;
        ipv6.resize(14 + 40 + 8, 0);
        let mut truncated = e(PROTO_UDP, 64, 0, false, &udp(1, 2));
        truncated.truncate(14 + 12);

        use dovesnap::fastpath::xdp::Counter as C;
        // Frames from the container: to the far side (`e`), or to `dst` (`to`).
        let to =
            |dst, proto, frag, l4: &[u8]| ipv4_frame(gw, ours, dst, proto, 64, frag, false, l4);
        // Frames from the far side to the external address (`i`), or from `src` to `dst`.
        let i =
            |proto, frag, l4: &[u8]| ipv4_frame(other_mac, far, ext, proto, 64, frag, false, l4);
        let ia = |src, dst, l4: &[u8]| ipv4_frame(other_mac, src, dst, PROTO_UDP, 64, 0, false, l4);
        // An ICMP error from the far side quoting a packet from `src`.
        let err = |kind, src, proto, l4: &[u8]| i(PROTO_ICMP, 0, &icmp_error(kind, src, proto, l4));
        let truncated_quote = &icmp_error(3, ext, PROTO_UDP, &udp(PORT_LO, 9))[..8 + 20 + 1];
        let ep = |what, frame, expected| Case {
            what,
            frame,
            ifindex: topo.ep,
            queue: 0,
            expected,
        };
        let up = |what, frame, expected| Case {
            what,
            frame,
            ifindex: topo.up,
            queue: 0,
            expected,
        };
        let udp12 = &udp(1, 2);
        #[rustfmt::skip]
        let cases = [
            ep("endpoint UDP out", e(PROTO_UDP, 64, 0, false, &udp(1234, 53)), C::EndpointRedirect),
            Case { queue: 1, ..ep("endpoint queue 1", e(PROTO_UDP, 64, 0, false, &udp(1234, 53)), C::EndpointQueueWithoutSocket) },
            ep("endpoint TCP out", e(PROTO_TCP, 64, 0, false, &udp(1234, 80)), C::EndpointRedirect),
            ep("endpoint ICMP out", e(PROTO_ICMP, 64, 0, false, &icmp(8, 7, &[])), C::EndpointRedirect),
            ep("endpoint TTL 2", e(PROTO_UDP, 2, 0, false, udp12), C::EndpointRedirect),
            ep("endpoint other MAC", ipv4_frame(other_mac, ours, far, PROTO_UDP, 64, 0, false, udp12), C::EndpointNotToGateway),
            ep("endpoint IPv6", ipv6, C::EndpointOtherProtocol),
            ep("endpoint truncated IPv4", truncated, C::EndpointOtherProtocol),
            ep("endpoint GRE", e(47, 64, 0, false, udp12), C::EndpointOtherProtocol),
            ep("endpoint options", e(PROTO_UDP, 64, 0, true, udp12), C::EndpointOptions),
            ep("endpoint later fragment before its first", e(PROTO_UDP, 64, 0x0010, false, udp12), C::EndpointFragmentKernel),
            ep("endpoint first fragment", e(PROTO_UDP, 64, 0x2000, false, udp12), C::EndpointFragment),
            ep("endpoint later fragment", e(PROTO_UDP, 64, 0x0010, false, udp12), C::EndpointFragment),
            ep("endpoint later fragment of another datagram", e(PROTO_TCP, 64, 0x0010, false, udp12), C::EndpointFragmentKernel),
            ep("endpoint first fragment to a local address", to(ext, PROTO_TCP, 0x2000, udp12), C::EndpointNotForwarded),
            ep("endpoint its later fragment", to(ext, PROTO_TCP, 0x0010, udp12), C::EndpointFragmentKernel),
            ep("endpoint DF is no fragment", e(PROTO_UDP, 64, 0x4000, false, udp12), C::EndpointRedirect),
            ep("endpoint spoofed", ipv4_frame(gw, [10, 202, 1, 9], far, PROTO_UDP, 64, 0, false, udp12), C::EndpointSpoofedSource),
            ep("endpoint TTL 1", e(PROTO_UDP, 1, 0, false, udp12), C::EndpointTtlExpiring),
            ep("endpoint in subnet", to([10, 202, 1, 77], PROTO_UDP, 0, udp12), C::EndpointInSubnet),
            ep("endpoint to local", to(ext, PROTO_UDP, 0, udp12), C::EndpointNotForwarded),
            ep("endpoint no route", to([192, 0, 2, 1], PROTO_UDP, 0, udp12), C::EndpointNotForwarded),
            ep("endpoint via dm0", to([10, 202, 3, 9], PROTO_UDP, 0, udp12), C::EndpointNotViaUplink),
            ep("endpoint routed via far", to([10, 202, 9, 9], PROTO_UDP, 0, udp12), C::EndpointRedirect),
            ep("endpoint too big", e(PROTO_UDP, 64, 0, false, &big), C::EndpointTooBig),
            up("uplink range low", i(PROTO_UDP, 0, &udp(53, PORT_LO)), C::UplinkRedirect),
            up("uplink range high", i(PROTO_TCP, 0, &udp(80, PORT_HI)), C::UplinkRedirect),
            up("uplink range port the translator does not use (another NAT's)", i(PROTO_UDP, 0, &udp(53, PORT_LO + 1)), C::UplinkNoSession),
            up("uplink mapped port, other remote port (a host socket's)", i(PROTO_UDP, 0, &udp(54, PORT_LO)), C::UplinkNoSession),
            up("uplink mapped port, other remote address", ia([10, 202, 2, 3], ext, &udp(53, PORT_LO)), C::UplinkNoSession),
            up("uplink mapped port, other protocol", i(PROTO_TCP, 0, &udp(53, PORT_LO)), C::UplinkNoSession),
            up("uplink published", i(PROTO_TCP, 0, &udp(5555, 8443)), C::UplinkRedirect),
            up("uplink published, other proto", i(PROTO_UDP, 0, &udp(5555, 8443)), C::UplinkNoSession),
            Case { queue: 1, ..up("uplink queue 1", i(PROTO_UDP, 0, &udp(53, PORT_LO)), C::UplinkQueueWithoutSocket) },
            up("uplink not ours", ia(far, [10, 202, 1, 2], &udp(53, PORT_LO)), C::UplinkNotForUs),
            up("uplink first fragment, translator's port", i(PROTO_UDP, 0x2000, &udp(53, PORT_LO)), C::UplinkFragment),
            up("uplink its later fragment", i(PROTO_UDP, 0x00b9, &[7; 8]), C::UplinkFragment),
            up("uplink first fragment, another NAT's port", i(PROTO_TCP, 0x2000, &udp(53, PORT_LO + 1)), C::UplinkNoSession),
            up("uplink its later fragment", i(PROTO_TCP, 0x00b9, &[7; 8]), C::UplinkFragmentKernel),
            up("uplink options", ipv4_frame(other_mac, far, ext, PROTO_UDP, 64, 0, true, &udp(53, PORT_LO)), C::UplinkOptions),
            up("uplink GRE", i(47, 0, &udp(53, PORT_LO)), C::UplinkNoSession),
            up("uplink echo reply owned", i(PROTO_ICMP, 0, &icmp(0, ECHO_ID, &[])), C::UplinkRedirect),
            up("uplink echo reply other", i(PROTO_ICMP, 0, &icmp(0, ECHO_ID + 1, &[])), C::UplinkNoSession),
            up("uplink echo request owned id", i(PROTO_ICMP, 0, &icmp(8, ECHO_ID, &[])), C::UplinkNoSession),
            up("uplink unreachable, our UDP", err(3, ext, PROTO_UDP, &udp(PORT_LO + 5, 9)), C::UplinkRedirect),
            up("uplink time exceeded, published TCP", err(11, ext, PROTO_TCP, &udp(8443, 9)), C::UplinkRedirect),
            up("uplink param problem, our echo", err(12, ext, PROTO_ICMP, &icmp(8, ECHO_ID, &[])), C::UplinkRedirect),
            up("uplink unreachable, host UDP", err(3, ext, PROTO_UDP, &udp(22, 9)), C::UplinkNoSession),
            up("uplink unreachable, other source", err(3, far, PROTO_UDP, &udp(PORT_LO, 9)), C::UplinkNoSession),
            up("uplink unreachable, quoted reply", err(3, ext, PROTO_ICMP, &icmp(0, ECHO_ID, &[])), C::UplinkNoSession),
            up("uplink unreachable, truncated quote", i(PROTO_ICMP, 0, truncated_quote), C::UplinkNoSession),
            up("uplink redirect type 5", err(5, ext, PROTO_UDP, &udp(PORT_LO, 9)), C::UplinkNoSession),
        ];

        in_netns(&topo.r, || {
            for Case {
                what,
                frame,
                ifindex,
                queue,
                expected,
            } in &cases
            {
                let before = xdp.counters().expect("counters");
                let action = xdp
                    .test_run(frame, *ifindex, *queue)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let after = xdp.counters().expect("counters");
                assert_eq!(
                    action, XDP_PASS,
                    "{what}: every frame passes without sockets"
                );
                assert_eq!(
                    after.get(*expected),
                    before.get(*expected) + 1,
                    "{what}: expected {}, got {}",
                    expected.name(),
                    after.diff(&before)
                );
                let decisions = (after.endpoint_frames() + after.uplink_frames())
                    - (before.endpoint_frames() + before.uplink_frames());
                assert_eq!(decisions, 1, "{what}: {}", after.diff(&before));
                let steered = matches!(
                    expected,
                    C::EndpointRedirect
                        | C::UplinkRedirect
                        | C::EndpointFragment
                        | C::UplinkFragment
                );
                assert_eq!(
                    after.xsk_missing - before.xsk_missing,
                    u64::from(steered),
                    "{what}: {}",
                    after.diff(&before)
                );
                assert_eq!(after.pass - before.pass, 1, "{what}");
                assert_invariants(&after);
            }

            // A frame on an unconfigured interface: classified and passed, no decision.
            let lo = 1;
            let before = xdp.counters().expect("counters");
            let frame = e(PROTO_UDP, 64, 0, false, &udp(1, 2));
            assert_eq!(xdp.test_run(&frame, lo, 0).expect("run on lo"), XDP_PASS);
            let after = xdp.counters().expect("counters");
            assert_eq!(after.ipv4 - before.ipv4, 1);
            assert_eq!(after.endpoint_frames(), before.endpoint_frames());
            assert_eq!(after.uplink_frames(), before.uplink_frames());
            // Short frames are malformed, not a fault.
            for len in [0usize, 13] {
                let short = vec![0u8; len];
                match xdp.test_run(&short, topo.ep, 0) {
                    Ok(action) => assert_eq!(action, XDP_PASS, "{len}-byte frame"),
                    // The kernel refuses frames shorter than an Ethernet header.
                    Err(XdpError::TestRun { .. }) => {}
                    Err(e) => panic!("{len}-byte frame: {e}"),
                }
            }
        });

        // Map API errors name what failed.
        let err = maps.set_xsk(MAX_SLOT, 0).unwrap_err();
        assert!(
            matches!(err, XdpError::InvalidSlot { slot: MAX_SLOT }),
            "{err}"
        );
        let not_xsk = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
        let err = maps.set_xsk(5, not_xsk.as_raw_fd()).unwrap_err();
        assert!(err.to_string().contains("slot 5"), "{err}");
        maps.clear_xsk(5).expect("clearing an empty slot is fine");
        let err = xdp
            .set_iface(
                topo.up,
                &IfaceConfig {
                    kind: 9,
                    ..topo.uplink_config(1)
                },
            )
            .unwrap_err();
        assert!(matches!(err, XdpError::InvalidIface { .. }), "{err}");
        drop(maps);
        drop(xdp);
    }
    assert_gone(&names);
}

const MAX_SLOT: u32 = dovesnap::fastpath::xdp::MAX_XSKS;

/// An IPv4 frame with every checksum right: Ethernet `src_mac` -> `dst_mac`, IHL 5,
/// `ttl`, then a TCP segment (`flags`, data offset 5) or a UDP datagram (`udp_sum`: with
/// a checksum, or 0) carrying `payload`.
#[allow(clippy::too_many_arguments)]
fn full_frame(
    macs: ([u8; 6], [u8; 6]),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    proto: u8,
    ttl: u8,
    tcp_flags: u8,
    udp_sum: bool,
    payload: &[u8],
) -> Vec<u8> {
    use dovesnap::translator::checksum::{fold, pseudo_header_sum, sum};
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.1.to_be_bytes());
    l4.extend_from_slice(&dst.1.to_be_bytes());
    let csum_at = if proto == PROTO_TCP {
        l4.extend_from_slice(&[0, 0, 0x10, 0x01, 0, 0, 0x20, 0x02, 0x50, tcp_flags]);
        l4.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
        16
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        6
    };
    l4.extend_from_slice(payload);
    if proto == PROTO_TCP || udp_sum {
        let pseudo = pseudo_header_sum(src.0, dst.0, proto, l4.len() as u16);
        let mut c = !fold(sum(&l4, pseudo));
        if proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    }
    ethernet_ipv4(macs, (src.0, dst.0), [0x12, 0x34, 0x40, 0, ttl, proto], &l4)
}

/// An Ethernet frame (`macs`: source, destination) carrying an IPv4 packet from
/// `addrs.0` to `addrs.1`: IHL 5, `id_to_proto` (identification, flags and fragment
/// offset, TTL, protocol), the header checksum right, then `payload`.
fn ethernet_ipv4(
    macs: ([u8; 6], [u8; 6]),
    addrs: (Ipv4Addr, Ipv4Addr),
    id_to_proto: [u8; 6],
    payload: &[u8],
) -> Vec<u8> {
    use dovesnap::translator::checksum::checksum;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&id_to_proto);
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&addrs.0.octets());
    ip.extend_from_slice(&addrs.1.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    [
        &macs.1[..],
        &macs.0[..],
        &0x0800u16.to_be_bytes(),
        &ip,
        payload,
    ]
    .concat()
}

/// An ICMP error (`kind`, `code`) from `addrs.0` to `addrs.1` quoting `quoted` (an IPv4
/// packet, cut), with every checksum right, TTL 64, Ethernet `macs` (source, destination).
fn icmp_error_frame(
    macs: ([u8; 6], [u8; 6]),
    addrs: (Ipv4Addr, Ipv4Addr),
    kind: u8,
    code: u8,
    quoted: &[u8],
) -> Vec<u8> {
    use dovesnap::translator::checksum::checksum;
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    if (kind, code) == (3, 4) {
        icmp[6..8].copy_from_slice(&1200u16.to_be_bytes());
    }
    icmp.extend_from_slice(quoted);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ethernet_ipv4(macs, addrs, [0x56, 0x78, 0, 0, 64, PROTO_ICMP], &icmp)
}

/// A whole IPv4 frame split in two fragments: the first carries `first_len` bytes of
/// its payload (a multiple of 8), the second the rest; IPv4 checksums right.
fn fragments(frame: &[u8], first_len: usize) -> (Vec<u8>, Vec<u8>) {
    use dovesnap::translator::checksum::checksum;
    let (l2, header, payload) = (&frame[..14], &frame[14..34], &frame[34..]);
    let piece = |bytes: &[u8], frag: u16| {
        let mut ip = header.to_vec();
        ip[2..4].copy_from_slice(&((20 + bytes.len()) as u16).to_be_bytes());
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        [l2, &ip, bytes].concat()
    };
    (
        piece(&payload[..first_len], 0x2000),
        piece(&payload[first_len..], (first_len / 8) as u16),
    )
}

/// The tcx verdicts the tc programs return (`TCX_NEXT`: the kernel's path).
const TCX_NEXT: i32 = -1;
const TCX_REDIRECT: i32 = 7;

const EXT: Ipv4Addr = Ipv4Addr::new(10, 202, 2, 1);
const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 202, 1, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 202, 9, 7);

/// The sessions the rewrite tests run: protocol, UDP checksum, (inside, remote) ports.
const KINDS: [(u8, bool, (u16, u16)); 3] = [
    (PROTO_TCP, true, (43512, 80)),
    (PROTO_UDP, true, (5353, 53)),
    (PROTO_UDP, false, (5354, 53)),
];

/// Payloads of many lengths (odd ones, empty, near the MTU), of varied bytes.
fn payloads() -> Vec<Vec<u8>> {
    [0usize, 1, 2, 3, 7, 64, 511, 1000, 1200]
        .iter()
        .map(|n| (0..*n).map(|i| (i * 7 + *n) as u8).collect())
        .collect()
}

/// The translator for the topology's container and uplink, and the data plane's paths
/// to both, as the daemon sets them up; it offers sessions as soon as they are
/// established (the daemon waits a few packets).
struct Nat {
    t: dovesnap::translator::Translator,
    up: dovesnap::fastpath::offload::UplinkPath,
    ep: dovesnap::fastpath::offload::EndpointPath,
    far_mac: [u8; 6],
}

/// One session's frames with every checksum right: `out` from the container to
/// `REMOTE`, `inb` the replies to the external port the translator picked.
struct Session {
    proto: u8,
    udp_sum: bool,
    ports: (u16, u16),
    ext_port: u16,
    to_gw: ([u8; 6], [u8; 6]),
    to_ext: ([u8; 6], [u8; 6]),
}

impl Nat {
    fn new(topo: &Topology) -> Self {
        use dovesnap::fastpath::offload::{EndpointPath, UplinkPath};
        use dovesnap::translator::{Config, EndpointInfo, Timeouts, Translator};
        let (up_mac, c_mac, far_mac) = (
            mac(&topo.r, "up0"),
            mac(&topo.c, "eth0"),
            mac(&topo.f, "eth0"),
        );
        let gw = topo.gateway_mac;
        let mut t = Translator::new(Config {
            external_ip: EXT,
            uplink_mac: up_mac,
            ports: PORT_LO..=PORT_HI,
            max_sessions: 64,
            max_sessions_per_endpoint: None,
            max_ports_per_endpoint: None,
            timeouts: Timeouts::default(),
        });
        t.set_offload_after(0);
        t.add_endpoint(EndpointInfo {
            ip: INSIDE,
            mac: c_mac,
            gateway_mac: gw,
            port: 1,
            offload: true,
        });
        let up = UplinkPath {
            ifindex: topo.up,
            mac: up_mac,
            mtu: 1280,
            external_ip: EXT,
            redirect_target: true,
        };
        let ep = EndpointPath {
            ifindex: topo.ep,
            mac: c_mac,
            gateway_mac: gw,
            mtu: 1500,
            redirect_target: true,
        };
        Nat { t, up, ep, far_mac }
    }

    /// Opens a session through the translator, as the AF_XDP path would: the first
    /// packet out (a TCP SYN) takes an external port.
    fn open(
        &mut self,
        now: std::time::Instant,
        proto: u8,
        udp_sum: bool,
        ports: (u16, u16),
    ) -> Session {
        use dovesnap::translator::Verdict;
        let mut s = Session {
            proto,
            udp_sum,
            ports,
            ext_port: 0,
            to_gw: (self.ep.mac, self.ep.gateway_mac),
            to_ext: (self.far_mac, self.up.mac),
        };
        let mut first = s.out(0x02, 64, b"");
        let v = self.t.outbound(now, &mut first);
        let Verdict::Uplink { .. } = v else {
            panic!("first packet: {v:?}")
        };
        s.ext_port = u16::from_be_bytes([first[34], first[35]]);
        s
    }
}

impl Session {
    fn out(&self, flags: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
        full_frame(
            self.to_gw,
            (INSIDE, self.ports.0),
            (REMOTE, self.ports.1),
            self.proto,
            ttl,
            flags,
            self.udp_sum,
            payload,
        )
    }

    fn inb(&self, flags: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
        full_frame(
            self.to_ext,
            (REMOTE, self.ports.1),
            (EXT, self.ext_port),
            self.proto,
            ttl,
            flags,
            self.udp_sum,
            payload,
        )
    }
}

/// Established-flow offload: for TCP and UDP sessions the translator established, the
/// program's rewrite of every later frame (both directions, payloads of many lengths,
/// UDP with and without a checksum) is byte for byte what the translator (plus the data
/// plane's next-hop MAC) produces, and it redirects them; frames the translator must see
/// (FIN, RST, SYN, a partial or broken checksum, too big, TTL 1) are left untouched for
/// the slow path; removing the flow restores plain steering.
#[test]
#[ignore = "needs root: netns, veth, XDP"]
fn offloaded_flows_rewrite_like_the_translator() {
    use dovesnap::fastpath::offload::Offloads;
    use dovesnap::translator::Verdict;
    use std::time::Instant;
    const XDP_PASS: u32 = 2;
    const XDP_REDIRECT: u32 = 4;

    require_root();
    let names;
    {
        let topo = Topology::new();
        names = topo.names();
        let mut xdp = topo.configured(1);
        let mut maps = xdp.take_dataplane_maps().expect("maps");
        let (inside, remote) = (INSIDE, REMOTE);
        let mut nat = Nat::new(&topo);
        let (up_path, ep_path, far_mac) = (nat.up, nat.ep, nat.far_mac);
        let mut offloads = Offloads::default();
        offloads
            .add_uplink(&mut maps, 0, up_path)
            .expect("uplink device");
        offloads
            .add_endpoint(&mut maps, 0, inside, ep_path)
            .expect("endpoint device");
        let run = |frame: &[u8], ifindex: u32| {
            in_netns(&topo.r, || xdp.test_run_frame(frame, ifindex, 0)).expect("test run")
        };
        let now = Instant::now();
        let ack = 0x10;
        let (fin, syn, rst) = (0x01, 0x02, 0x04);

        for (proto, udp_sum, (sport, dport)) in KINDS {
            let s = nat.open(now, proto, udp_sum, (sport, dport));
            let (out, inb) = (
                |f, ttl, p: &[u8]| s.out(f, ttl, p),
                |f, ttl, p: &[u8]| s.inb(f, ttl, p),
            );
            let ext_port = s.ext_port;
            let mut reply = inb(syn | ack, 64, b"");
            assert!(matches!(
                nat.t.inbound(now, &mut reply),
                Verdict::Endpoint { .. }
            ));
            let o = nat.t.take_offload().expect("established both ways");
            assert_eq!(o.external_port, ext_port);
            offloads
                .install(&mut maps, 0, &o, far_mac)
                .expect("install the flow");

            let before = xdp.counters().expect("counters");
            let payloads = payloads();
            for p in &payloads {
                // Outbound: the translator's bytes, with the next hop's MAC as the data
                // plane writes it.
                let frame = out(ack, 64, p);
                let mut want = frame.clone();
                assert!(matches!(
                    nat.t.outbound(now, &mut want),
                    Verdict::Uplink { .. }
                ));
                want[..6].copy_from_slice(&far_mac);
                let (action, got) = run(&frame, topo.ep);
                assert_eq!(action, XDP_REDIRECT, "outbound {proto} {} bytes", p.len());
                assert_eq!(got, want, "outbound {proto} {} bytes", p.len());
                // Inbound.
                let frame = inb(ack, 64, p);
                let mut want = frame.clone();
                assert!(matches!(
                    nat.t.inbound(now, &mut want),
                    Verdict::Endpoint { .. }
                ));
                let (action, got) = run(&frame, topo.up);
                assert_eq!(action, XDP_REDIRECT, "inbound {proto} {} bytes", p.len());
                assert_eq!(got, want, "inbound {proto} {} bytes", p.len());
            }
            let d = xdp.counters().expect("counters").since(&before);
            let n = payloads.len() as u64;
            assert_eq!((d.offload_outbound, d.offload_inbound), (n, n), "{d:?}");
            assert_eq!(d.redirect, 2 * n);
            assert_eq!(
                d.offload_slow_path + d.endpoint_redirect + d.uplink_redirect,
                0
            );

            // What the translator must see stays untouched and takes the usual way.
            let mut slow: Vec<(Vec<u8>, u32, &str)> = vec![
                (inb(ack, 1, b"x"), topo.up, "inbound TTL 1"),
                (
                    out(ack, 64, &[0u8; 1300]),
                    topo.ep,
                    "bigger than the uplink MTU",
                ),
            ];
            let mut bad_ip = out(ack, 64, b"x");
            bad_ip[24] ^= 0x55;
            slow.push((bad_ip, topo.ep, "bad IPv4 checksum"));
            if proto == PROTO_TCP {
                for (flags, what) in [(fin | ack, "FIN"), (rst, "RST"), (syn, "SYN")] {
                    slow.push((out(flags, 64, b""), topo.ep, what));
                    slow.push((inb(flags, 64, b""), topo.up, what));
                }
            }
            if udp_sum {
                // A partial checksum (transmit offload): only the pseudo-header sum.
                let mut partial = out(ack, 64, b"data");
                let l4_len = partial.len() as u16 - 34;
                let p = dovesnap::translator::checksum::pseudo_header_sum(
                    inside, remote, proto, l4_len,
                );
                let at = if proto == PROTO_TCP { 50 } else { 40 };
                partial[at..at + 2]
                    .copy_from_slice(&dovesnap::translator::checksum::fold(p).to_be_bytes());
                slow.push((partial, topo.ep, "partial checksum"));
            }
            for (frame, ifindex, what) in &slow {
                let before = xdp.counters().expect("counters");
                let (action, got) = run(frame, *ifindex);
                let d = xdp.counters().expect("counters").since(&before);
                assert_eq!(action, XDP_PASS, "{what}: no socket, so the kernel");
                assert_eq!(&got, frame, "{what}: left as it was");
                assert_eq!(d.offload_slow_path, 1, "{what}: {d:?}");
                assert_eq!(d.offload_outbound + d.offload_inbound, 0, "{what}");
            }
            // A fragment of the flow is never offloaded: the translator alone knows
            // which datagram a later fragment belongs to.
            for (mut frame, ifindex, what) in [
                (out(ack, 64, b"frag"), topo.ep, "outbound first fragment"),
                (inb(ack, 64, b"frag"), topo.up, "inbound first fragment"),
            ] {
                frame[20] |= 0x20; // MF
                frame[24..26].copy_from_slice(&[0, 0]);
                let c = dovesnap::translator::checksum::checksum(&frame[14..34]);
                frame[24..26].copy_from_slice(&c.to_be_bytes());
                let before = xdp.counters().expect("counters");
                let (action, got) = run(&frame, ifindex);
                let d = xdp.counters().expect("counters").since(&before);
                assert_eq!(action, XDP_PASS, "{what}: no socket, so the kernel");
                assert_eq!(&got, &frame, "{what}: left as it was");
                assert_eq!(
                    d.offload_outbound + d.offload_inbound + d.offload_slow_path,
                    0,
                    "{what}: {d:?}"
                );
            }

            // The entries carry the kernel's bookkeeping; removing them ends the offload.
            let flows = maps.flows().expect("flows");
            assert_eq!(flows.len(), 2);
            for (_, a) in &flows {
                assert_eq!(a.packets, n, "{a:?}");
                assert!(a.last_seen > 0 && a.bytes > 0, "{a:?}");
            }
            offloads.remove(&mut maps, 0, &o);
            assert!(maps.flows().expect("flows").is_empty());
            let before = xdp.counters().expect("counters");
            let frame = out(ack, 64, b"after");
            let (action, got) = run(&frame, topo.ep);
            let d = xdp.counters().expect("counters").since(&before);
            assert_eq!((action, &got), (XDP_PASS, &frame));
            assert_eq!(
                (d.endpoint_redirect, d.xsk_missing, d.offload_slow_path),
                (1, 1, 0)
            );
        }
        offloads.remove_endpoint(&mut maps, 0, inside);
        offloads.remove_uplink(&mut maps, 0);
        drop(maps);
        drop(xdp);
    }
    assert_gone(&names);
}

/// The tc engine's programs (`dovesnap_tc_endpoint`, `dovesnap_tc_uplink`), run with
/// `BPF_PROG_TEST_RUN` on skbs (`CHECKSUM_NONE`) as if they arrived on the endpoint or
/// the uplink: for TCP, UDP and UDP without a checksum, with the `CT` entries
/// `offload::ct_entries` makes from the translator's session, every frame comes out as
/// the translator writes it (outbound from the IPv4 header on: the kernel writes the
/// Ethernet header at `bpf_redirect_neigh`) and is redirected; GSO super-packets are
/// counted and not held to the MTU; every decline returns `TCX_NEXT` with the frame
/// untouched and counts its own reason; so does everything under bypass.
#[test]
#[ignore = "needs root: netns, veth, BPF_PROG_TEST_RUN"]
fn tc_programs_rewrite_established_flows_like_the_translator() {
    use dovesnap::fastpath::offload::ct_entries;
    use dovesnap::fastpath::xdp::{
        Counter as C, HostFwMatch, TcProgram, CT_FIN, CT_OWNER_TRANSLATOR, CT_SEEN,
    };
    use dovesnap::translator::Verdict;
    use std::time::Instant;

    require_root();
    let names;
    {
        let topo = Topology::new();
        names = topo.names();
        let (xdp, mut maps) = topo.tc_ready();
        let ext = EXT;
        let mut nat = Nat::new(&topo);
        let (up_path, ep_path, gw) = (nat.up, nat.ep, topo.gateway_mac);
        let run = |program, frame: &[u8], ifindex: u32, gso: (u32, u32)| {
            in_netns(&topo.r, || xdp.tc_test_run(program, frame, ifindex, gso))
                .expect("tc test run")
        };
        let out_run = |frame: &[u8], gso| run(TcProgram::Endpoint, frame, topo.ep, gso);
        let in_run = |frame: &[u8]| run(TcProgram::Uplink, frame, topo.up, (0, 0));
        // Runs a frame that must be declined with `why`: TCX_NEXT, untouched, one decision.
        let declined = |program, frame: &[u8], ifindex, why: C, what: &str| {
            let before = xdp.counters().expect("counters");
            let got = in_netns(&topo.r, || xdp.tc_test_run(program, frame, ifindex, (0, 0)))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let d = xdp.counters().expect("counters").since(&before);
            assert_eq!(got.ret, TCX_NEXT, "{what}");
            assert_eq!(got.frame, frame, "{what}: left as it was");
            assert_eq!(d.get(why), 1, "{what}: expected {}, got {d:?}", why.name());
            assert_eq!(d.tc_frames(), 1, "{what}: one decision: {d:?}");
            assert_eq!(
                d.frames(),
                0,
                "{what}: the XDP counters are not the tc programs'"
            );
        };
        let now = Instant::now();
        let ack = 0x10;
        let (fin, syn) = (0x01, 0x02);

        for (proto, udp_sum, (sport, dport)) in KINDS {
            let s = nat.open(now, proto, udp_sum, (sport, dport));
            let (out, inb) = (
                |f, ttl, p: &[u8]| s.out(f, ttl, p),
                |f, ttl, p: &[u8]| s.inb(f, ttl, p),
            );
            let ext_port = s.ext_port;
            // A reply before the session is in CT is the translator's (slow port).
            maps.set_session(&steered_session_key(
                ext.octets(),
                ext_port,
                REMOTE.octets(),
                dport,
                proto,
            ))
            .expect("steer the session's replies");
            declined(
                TcProgram::Uplink,
                &inb(ack, 64, b"early"),
                topo.up,
                C::TcDeclineSlow,
                "reply without CT",
            );
            let mut reply = inb(syn | ack, 64, b"");
            assert!(matches!(
                nat.t.inbound(now, &mut reply),
                Verdict::Endpoint { .. }
            ));
            let o = nat.t.take_offload().expect("established both ways");
            let ct = ct_entries(&o, &up_path, &ep_path, CT_OWNER_TRANSLATOR, 1);
            for r in ct.iter() {
                maps.set_ct(&r.key, &r.entry).expect("write CT");
            }

            let before = xdp.counters().expect("counters");
            let payloads = payloads();
            for p in &payloads {
                let what = format!("{proto} udp_sum={udp_sum} {} bytes", p.len());
                let frame = out(ack, 64, p);
                let mut want = frame.clone();
                assert!(matches!(
                    nat.t.outbound(now, &mut want),
                    Verdict::Uplink { .. }
                ));
                let got = out_run(&frame, (0, 0));
                assert_eq!(got.ret, TCX_REDIRECT, "outbound {what}");
                assert_eq!(got.frame[14..], want[14..], "outbound {what}");
                assert_eq!(
                    got.frame[..14],
                    frame[..14],
                    "outbound {what}: L2 is the kernel's"
                );
                let frame = inb(ack, 64, p);
                let mut want = frame.clone();
                assert!(matches!(
                    nat.t.inbound(now, &mut want),
                    Verdict::Endpoint { .. }
                ));
                let got = in_run(&frame);
                assert_eq!(got.ret, TCX_REDIRECT, "inbound {what}");
                assert_eq!(got.frame, want, "inbound {what}");
            }
            let d = xdp.counters().expect("counters").since(&before);
            let n = payloads.len() as u64;
            assert_eq!((d.tc_out, d.tc_in, d.tc_frames()), (n, n, 2 * n), "{d:?}");
            assert_eq!((d.tc_gso_frames, d.frames()), (0, 0), "{d:?}");

            // ICMP errors about the session, both ways, quoting 8 bytes or more of the
            // transport header: translated as the translator does it.
            for quote in [8, 40] {
                let what = format!("{proto} udp_sum={udp_sum} error quoting {quote}");
                let sent = full_frame(
                    s.to_ext,
                    (EXT, ext_port),
                    (REMOTE, dport),
                    proto,
                    63,
                    ack,
                    udp_sum,
                    &[0x33; 100],
                );
                let err =
                    icmp_error_frame(s.to_ext, (REMOTE, EXT), 3, 4, &sent[14..14 + 20 + quote]);
                let mut want = err.clone();
                assert!(matches!(
                    nat.t.inbound(now, &mut want),
                    Verdict::Endpoint { .. }
                ));
                let before = xdp.counters().expect("counters");
                let got = in_run(&err);
                let d = xdp.counters().expect("counters").since(&before);
                assert_eq!(
                    (got.ret, d.tc_in, d.tc_icmp_error),
                    (TCX_REDIRECT, 1, 1),
                    "{what}: {d:?}"
                );
                assert_eq!(got.frame, want, "inbound {what}");

                let received = full_frame(
                    s.to_gw,
                    (REMOTE, dport),
                    (INSIDE, sport),
                    proto,
                    63,
                    ack,
                    udp_sum,
                    &[0x44; 100],
                );
                let err = icmp_error_frame(
                    s.to_gw,
                    (INSIDE, REMOTE),
                    3,
                    3,
                    &received[14..14 + 20 + quote],
                );
                let mut want = err.clone();
                assert!(matches!(
                    nat.t.outbound(now, &mut want),
                    Verdict::Uplink { .. }
                ));
                let before = xdp.counters().expect("counters");
                let got = out_run(&err, (0, 0));
                let d = xdp.counters().expect("counters").since(&before);
                assert_eq!(
                    (got.ret, d.tc_out, d.tc_icmp_error),
                    (TCX_REDIRECT, 1, 1),
                    "{what}: {d:?}"
                );
                assert_eq!(got.frame[14..], want[14..], "outbound {what}");
            }

            // A GSO super-packet bigger than the uplink's MTU is forwarded whole and
            // counted; the same bytes as one plain frame are the kernel's to fragment.
            let big = out(ack, 64, &[0x5a; 1300]);
            let before = xdp.counters().expect("counters");
            let got = out_run(&big, (2, 1000));
            let d = xdp.counters().expect("counters").since(&before);
            assert_eq!(got.ret, TCX_REDIRECT, "GSO");
            assert_eq!((d.tc_out, d.tc_gso_frames, d.tc_gso_segments), (1, 1, 2));
            declined(
                TcProgram::Endpoint,
                &big,
                topo.ep,
                C::TcDeclineTooBig,
                "too big",
            );
            declined(
                TcProgram::Uplink,
                &inb(ack, 1, b"x"),
                topo.up,
                C::TcDeclineTtlExpiring,
                "inbound TTL 1",
            );
            let mut short = out(ack, 64, b"truncated");
            short.truncate(short.len() - 3);
            declined(
                TcProgram::Endpoint,
                &short,
                topo.ep,
                C::TcDeclineTruncated,
                "shorter than tot_len",
            );

            // Under bypass the kernel carries everything, sessions included.
            maps.bypass.set(true).expect("bypass on");
            declined(
                TcProgram::Endpoint,
                &out(ack, 64, b"b"),
                topo.ep,
                C::TcBypassed,
                "bypass out",
            );
            declined(
                TcProgram::Uplink,
                &inb(ack, 64, b"b"),
                topo.up,
                C::TcBypassed,
                "bypass in",
            );
            maps.bypass.set(false).expect("bypass off");

            // The programs keep each direction's bookkeeping and TCP state bits.
            if proto == PROTO_TCP {
                let frame = out(fin | ack, 64, b"");
                let mut want = frame.clone();
                assert!(matches!(
                    nat.t.outbound(now, &mut want),
                    Verdict::Uplink { .. }
                ));
                let got = out_run(&frame, (0, 0));
                assert_eq!(
                    (got.ret, &got.frame[14..]),
                    (TCX_REDIRECT, &want[14..]),
                    "FIN"
                );
            }
            let o_entry = maps.ct(&ct.outbound.key).expect("read").expect("outbound");
            let i_entry = maps.ct(&ct.inbound.key).expect("read").expect("inbound");
            let fins = u64::from(proto == PROTO_TCP);
            assert_eq!(o_entry.act.packets, n + 1 + fins, "{o_entry:?}");
            assert_eq!(i_entry.act.packets, n, "{i_entry:?}");
            assert!(o_entry.act.last_seen > 0 && i_entry.act.bytes > 0);
            let want_flags = if proto == PROTO_TCP {
                CT_SEEN | CT_FIN
            } else {
                CT_SEEN
            };
            assert_eq!((o_entry.flags, i_entry.flags), (want_flags, CT_SEEN));
            for r in ct.iter() {
                maps.remove_ct(&r.key).expect("remove CT");
            }
            assert!(maps.ct(&ct.outbound.key).expect("read").is_none());
        }

        // Every other decline, on frames of no session.
        let other_mac = [0x02, 0, 0, 0, 0, 0x77];
        let (ours, far, extb) = ([10, 202, 1, 2], [10, 202, 2, 2], [10, 202, 2, 1]);
        let e = |proto, ttl, frag, options, l4: &[u8]| {
            ipv4_frame(gw, ours, far, proto, ttl, frag, options, l4)
        };
        let to = |dst, l4: &[u8]| ipv4_frame(gw, ours, dst, PROTO_UDP, 64, 0, false, l4);
        let i = |proto, frag, options, l4: &[u8]| {
            ipv4_frame(other_mac, far, extb, proto, 64, frag, options, l4)
        };
        let udp12 = &udp(1, 2);
        let mut ipv6 = e(PROTO_UDP, 64, 0, false, udp12);
        ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        ipv6[14] = 0x60;
        ipv6.resize(14 + 40 + 8, 0);
        // A malformed IPv4 header (IHL 4). A truncated one cannot be test-run: the kernel
        // refuses IPv4 skbs shorter than an IPv4 header (checked at the end).
        let mut cut_ip = e(PROTO_UDP, 64, 0, false, udp12);
        cut_ip[14] = 0x44;
        maps.set_port(PortKey::new(extb, 8443, PROTO_TCP))
            .expect("publish 8443/tcp");
        maps.set_host_filter(&[(
            [10, 202, 9, 0],
            24,
            HostFwMatch {
                proto: PROTO_UDP,
                port_lo: 7000,
                port_hi: 7000,
                ..Default::default()
            },
        )])
        .expect("a host forward rule");
        let (ep, up) = (TcProgram::Endpoint, TcProgram::Uplink);
        #[rustfmt::skip]
        let cases: Vec<(TcProgram, Vec<u8>, u32, C, &str)> = vec![
            (ep, e(PROTO_UDP, 64, 0, false, udp12), topo.up, C::TcUnconfigured, "endpoint program on the uplink"),
            (up, i(PROTO_UDP, 0, false, udp12), topo.ep, C::TcUnconfigured, "uplink program on the endpoint"),
            (ep, ipv4_frame(other_mac, ours, far, PROTO_UDP, 64, 0, false, udp12), topo.ep, C::TcDeclineNotToGateway, "other MAC"),
            (ep, ipv6.clone(), topo.ep, C::TcDeclineOtherProtocol, "IPv6"),
            (ep, cut_ip.clone(), topo.ep, C::TcDeclineOtherProtocol, "IPv4 header with IHL 4"),
            (ep, e(47, 64, 0, false, udp12), topo.ep, C::TcDeclineOtherProtocol, "GRE"),
            (ep, e(PROTO_UDP, 64, 0, true, udp12), topo.ep, C::TcDeclineOptions, "options"),
            (ep, ipv4_frame(gw, [10, 202, 1, 9], far, PROTO_UDP, 64, 0, false, udp12), topo.ep, C::TcDeclineSpoofedSource, "spoofed"),
            (ep, e(PROTO_UDP, 1, 0, false, udp12), topo.ep, C::TcDeclineTtlExpiring, "TTL 1"),
            (ep, to([10, 202, 1, 77], udp12), topo.ep, C::TcDeclineInSubnet, "in subnet"),
            (ep, to([10, 202, 9, 9], &udp(1, 7000)), topo.ep, C::TcDeclineHostFirewall, "host forward rule"),
            (ep, to(extb, udp12), topo.ep, C::TcDeclineNotForwarded, "to a local address"),
            (ep, to([192, 0, 2, 1], udp12), topo.ep, C::TcDeclineNotForwarded, "no route"),
            (ep, to([10, 202, 3, 9], udp12), topo.ep, C::TcDeclineNotViaUplink, "via dm0"),
            (ep, to([10, 202, 9, 9], udp12), topo.ep, C::TcDeclineSlow, "no session, via the uplink"),
            (ep, e(PROTO_ICMP, 64, 0, false, &icmp(8, 7, &[])), topo.ep, C::TcDeclineSlow, "ICMP echo"),
            (ep, e(PROTO_UDP, 64, 0x2000, false, udp12), topo.ep, C::TcDeclineSlow, "first fragment"),
            (ep, e(PROTO_UDP, 64, 0x0010, false, udp12), topo.ep, C::TcDeclineSlow, "later fragment"),
            (ep, e(PROTO_TCP, 64, 0, false, &udp(1, 2)[..6]), topo.ep, C::TcDeclineTruncated, "TCP header cut"),
            (up, ipv6, topo.up, C::TcDeclineNotForUs, "uplink IPv6"),
            (up, cut_ip, topo.up, C::TcDeclineNotForUs, "uplink IPv4 header with IHL 4"),
            (up, ipv4_frame(other_mac, far, ours, PROTO_UDP, 64, 0, false, udp12), topo.up, C::TcDeclineNotForUs, "not to the external address"),
            (up, i(PROTO_UDP, 0, true, udp12), topo.up, C::TcDeclineOptions, "uplink options"),
            (up, ipv4_frame(other_mac, [10, 202, 9, 9], extb, PROTO_UDP, 64, 0, false, &udp(7000, 2)), topo.up, C::TcDeclineHostFirewall, "uplink host forward rule"),
            (up, i(PROTO_UDP, 0, false, &udp(53, PORT_LO + 1)), topo.up, C::TcDeclineNoSession, "no session (a host socket's)"),
            (up, i(47, 0, false, udp12), topo.up, C::TcDeclineNoSession, "uplink GRE"),
            (up, i(PROTO_ICMP, 0, false, &icmp(0, ECHO_ID, &[])), topo.up, C::TcDeclineNoSession, "echo reply, not the translator's"),
            (up, i(PROTO_TCP, 0, false, &frame::tcp(5555, 8443, 0x02, b"")), topo.up, C::TcDeclineSlow, "published port"),
            (up, i(PROTO_UDP, 0x2000, false, udp12), topo.up, C::TcDeclineSlow, "uplink first fragment"),
            (up, i(PROTO_UDP, 0x00b9, false, &[7; 8]), topo.up, C::TcDeclineSlow, "uplink later fragment"),
            (up, i(PROTO_UDP, 0, false, &udp(1, 2)[..6]), topo.up, C::TcDeclineTruncated, "UDP header cut"),
        ];
        for (program, frame, ifindex, why, what) in &cases {
            declined(*program, frame, *ifindex, *why, what);
        }
        maps.set_host_filter(&[]).expect("no host forward rules");
        // Frames shorter than an Ethernet header, or IPv4 ones shorter than an IPv4
        // header: the kernel refuses to run them.
        let mut cut = e(PROTO_UDP, 64, 0, false, udp12);
        cut.truncate(14 + 12);
        for frame in [&[0u8; 13][..], &cut] {
            let run = in_netns(&topo.r, || xdp.tc_test_run(ep, frame, topo.ep, (0, 0)));
            assert!(run.is_err(), "{} bytes: {run:?}", frame.len());
        }
        drop(maps);
        drop(xdp);
    }
    assert_gone(&names);
}

/// A raw packet socket on `ifname` in `ns` (every IPv4 frame it receives or sends),
/// with a read timeout.
struct Capture(std::os::fd::OwnedFd);

impl Capture {
    fn open(ns: &Netns, ifname: &str) -> Self {
        let index = ifindex(ns, ifname);
        in_netns(ns, || {
            use std::os::fd::FromRawFd as _;
            let proto = (libc::ETH_P_IP as u16).to_be();
            // SAFETY: plain socket(2); the descriptor is owned at once.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `fd` is a new descriptor nothing else owns.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain data; zeroes are valid.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = index as i32;
            let timeout = libc::timeval {
                tv_sec: 3,
                tv_usec: 0,
            };
            // SAFETY: valid pointers to values of the sizes passed, for the calls only.
            unsafe {
                let rc = libc::bind(
                    fd.as_raw_fd(),
                    &addr as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
                let rc = libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &timeout as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
            }
            Capture(fd)
        })
    }

    /// The first UDP frame to `dst`:`dport`, or a panic after the timeout.
    fn udp_to(&self, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(
                n > 0,
                "no UDP frame to {dst}:{dport}: {}",
                std::io::Error::last_os_error()
            );
            let f = &buf[..n as usize];
            if f.len() >= 42
                && f[23] == PROTO_UDP
                && f[30..34] == dst.octets()
                && f[36..38] == dport.to_be_bytes()
            {
                return f.to_vec();
            }
        }
    }
}

/// The tc programs attached for real (tcx ingress on the endpoint and the uplink) with
/// a session in `CT`: UDP from sockets reaches the far side and the container through
/// `bpf_redirect_neigh` and `bpf_redirect_peer`. The sockets' frames carry partial
/// checksums (veth transmit checksum offload, `CHECKSUM_PARTIAL`, what
/// `BPF_PROG_TEST_RUN` cannot make): the checksum field that arrives holds the fold of
/// the *rewritten* pseudo header, so the receiver's checksum completion is right. Then
/// TCP both ways with TSO on: intact, carried as GSO super-packets.
#[test]
#[ignore = "needs root: netns, veth, tcx"]
fn tc_programs_forward_real_traffic() {
    use dovesnap::fastpath::offload::ct_entries;
    use dovesnap::fastpath::xdp::{tcx_ingress_programs, TcProgram, CT_OWNER_TRANSLATOR};
    use dovesnap::translator::checksum::{fold, pseudo_header_sum};
    use dovesnap::translator::Verdict;

    require_root();
    let names;
    {
        let topo = Topology::new();
        names = topo.names();
        topo.f.line(&format!("ip addr add {REMOTE}/32 dev lo"));
        let mut xdp = topo.configured(1);
        let tcx =
            |ifname: &str| in_netns(&topo.r, || tcx_ingress_programs(ifname).expect("query tcx"));
        in_netns(&topo.r, || {
            xdp.tc_attach(TcProgram::Endpoint, "ep0")
                .expect("attach to ep0");
            xdp.tc_attach(TcProgram::Uplink, "up0")
                .expect("attach to up0");
            // Attaching again changes nothing.
            xdp.tc_attach(TcProgram::Uplink, "up0")
                .expect("attach to up0 again");
        });
        // The kernel keeps 15 bytes of a program's name.
        assert_eq!(tcx("ep0"), ["dovesnap_tc_end"]);
        assert_eq!(tcx("up0"), ["dovesnap_tc_upl"]);
        assert_eq!(xdp.tc_attached().len(), 2);
        let mut maps = xdp.take_dataplane_maps().expect("maps");
        let mut nat = Nat::new(&topo);
        let now = std::time::Instant::now();
        let s = nat.open(now, PROTO_UDP, true, (5353, 53));
        let mut reply = s.inb(0, 64, b"");
        assert!(matches!(
            nat.t.inbound(now, &mut reply),
            Verdict::Endpoint { .. }
        ));
        let o = nat.t.take_offload().expect("established both ways");
        for r in ct_entries(&o, &nat.up, &nat.ep, CT_OWNER_TRANSLATOR, 1).iter() {
            maps.set_ct(&r.key, &r.entry).expect("write CT");
        }
        let (cap_f, cap_c) = (
            Capture::open(&topo.f, "eth0"),
            Capture::open(&topo.c, "eth0"),
        );
        let inside = udp_socket(&topo.c, &format!("{INSIDE}:5353"));
        let far = udp_socket(&topo.f, &format!("{REMOTE}:53"));
        let before = xdp.counters().expect("counters");

        // A partial checksum holds the folded pseudo-header sum (ones' complement: 0 and
        // 0xffff are the same number).
        let partial = |frame: &[u8], src: Ipv4Addr, dst: Ipv4Addr, what: &str| {
            let len = u16::from_be_bytes([frame[38], frame[39]]);
            let field = u16::from_be_bytes([frame[40], frame[41]]);
            let want = fold(pseudo_header_sum(src, dst, PROTO_UDP, len));
            assert!(
                field == want || (field | want == 0xffff && field & want == 0),
                "{what}: field {field:#06x}, the new pseudo header folds to {want:#06x}"
            );
            assert_eq!(frame[22], 63, "{what}: TTL decremented");
            let ip_sum = dovesnap::translator::checksum::checksum(&frame[14..34]);
            assert_eq!(ip_sum, 0, "{what}: IPv4 header checksum");
        };
        inside
            .send_to(b"hello", (REMOTE, 53))
            .expect("send from the container");
        let out = cap_f.udp_to(REMOTE, 53);
        assert_eq!(out[26..30], EXT.octets(), "source translated");
        assert_eq!(
            out[34..36],
            s.ext_port.to_be_bytes(),
            "source port translated"
        );
        partial(&out, EXT, REMOTE, "outbound");
        assert!(receives(&far, b"hello"), "the far side got it");

        far.send_to(b"world", (EXT, s.ext_port))
            .expect("send from far");
        let inb = cap_c.udp_to(INSIDE, 5353);
        assert_eq!(inb[26..30], REMOTE.octets());
        assert_eq!(inb[..6], nat.ep.mac, "to the container's MAC");
        assert_eq!(inb[6..12], nat.ep.gateway_mac, "from the gateway's");
        partial(&inb, REMOTE, INSIDE, "inbound");
        assert!(receives(&inside, b"world"), "the container got it");

        let d = xdp.counters().expect("counters").since(&before);
        assert_eq!(
            (d.tc_out, d.tc_in, d.tc_redirect_failed),
            (1, 1, 0),
            "{d:?}"
        );

        // TCP with TSO on both ends (veth defaults), every segment through the programs
        // from the SYN on: a session in CT before the connection opens (the client's
        // port is fixed), 4 MB up then 4 MB down, intact, as GSO super-packets.
        nat.up.mtu = 1500;
        topo.r.line("ip link set up0 mtu 1500");
        let session = dovesnap::translator::Offloaded {
            protocol: dovesnap::translator::Protocol::Tcp,
            inside: std::net::SocketAddrV4::new(INSIDE, 43600),
            remote: std::net::SocketAddrV4::new(REMOTE, 8080),
            external_port: PORT_LO + 50,
        };
        for r in ct_entries(&session, &nat.up, &nat.ep, CT_OWNER_TRANSLATOR, 1).iter() {
            maps.set_ct(&r.key, &r.entry).expect("write CT");
        }
        let up: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 4093) as u8).collect();
        let down: Vec<u8> = up.iter().rev().copied().collect();
        let listener =
            in_netns(&topo.f, || std::net::TcpListener::bind((REMOTE, 8080))).expect("listen");
        let before = xdp.counters().expect("counters");
        let (got_up, got_down) = std::thread::scope(|scope| {
            let server = scope.spawn(|| {
                use std::io::{Read as _, Write as _};
                let (mut conn, peer) = listener.accept().expect("accept");
                assert_eq!(peer, std::net::SocketAddr::from((EXT, PORT_LO + 50)));
                let mut got = Vec::new();
                conn.read_to_end(&mut got).expect("read the upload");
                conn.write_all(&down).expect("send the download");
                got
            });
            use std::io::{Read as _, Write as _};
            let mut client = in_netns(&topo.c, || tcp_from((INSIDE, 43600), (REMOTE, 8080)));
            client.write_all(&up).expect("upload");
            client
                .shutdown(std::net::Shutdown::Write)
                .expect("half-close");
            let mut got = Vec::new();
            client.read_to_end(&mut got).expect("download");
            (server.join().expect("server"), got)
        });
        assert!(
            got_up == up,
            "upload intact ({} of {} bytes)",
            got_up.len(),
            up.len()
        );
        assert!(
            got_down == down,
            "download intact ({} bytes)",
            got_down.len()
        );
        let d = xdp.counters().expect("counters").since(&before);
        eprintln!("TCP: {}", d.diff(&Default::default()));
        assert!(d.tc_out > 0 && d.tc_in > 0, "{d:?}");
        assert!(
            d.tc_gso_frames > 0,
            "super-packets took the programs: {d:?}"
        );
        assert!(d.tc_gso_segments > 2 * d.tc_gso_frames, "{d:?}");
        assert_eq!(
            d.tc_decline_slow + d.tc_decline_too_big + d.tc_redirect_failed,
            0,
            "{d:?}"
        );
        in_netns(&topo.r, || xdp.tc_detach(TcProgram::Endpoint, "ep0")).expect("detach");
        assert!(tcx("ep0").is_empty());
        drop(maps);
        // Dropping the program closes its links: nothing stays on the uplink.
        drop(xdp);
        assert!(tcx("up0").is_empty());
    }
    assert_gone(&names);
}

/// A TCP connection from `from` (bound first, so the source port is known) to `to`.
fn tcp_from(from: (Ipv4Addr, u16), to: (Ipv4Addr, u16)) -> std::net::TcpStream {
    use std::os::fd::FromRawFd as _;
    let sockaddr = |(ip, port): (Ipv4Addr, u16)| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: plain socket(2); the descriptor is owned by the stream below at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let (from, to) = (sockaddr(from), sockaddr(to));
    let (from, to) = (
        &from as *const libc::sockaddr_in as *const libc::sockaddr,
        &to as *const libc::sockaddr_in as *const libc::sockaddr,
    );
    // SAFETY: both point to valid sockaddr_in values of `len` bytes, alive for the calls.
    let rc = unsafe { libc::bind(fd, from, len) };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, to, len) };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
}

/// Sessions made by `dovesnap_tc_endpoint` itself: off until `NAT_CFG` has a range; then
/// a TCP SYN (or a UDP datagram not from a published port) routed via the uplink claims
/// a port of the range, is rewritten exactly as
/// the translator would (source, TTL, both checksums) and redirected, and both `CT`
/// directions exist (owner kernel, the SYN recorded), so the SYN-ACK comes back in and
/// a retransmitted SYN keeps its port; what is not a connection's first packet, and a
/// SYN when every port is taken toward that far end, are left to the kernel untouched.
#[test]
#[ignore = "needs root: netns, veth, BPF_PROG_TEST_RUN"]
fn tc_endpoint_creates_sessions_for_new_flows() {
    use dovesnap::fastpath::xdp::{
        Counter as C, NatConfig, TcProgram, CT_OWNER_KERNEL, CT_SEEN, CT_SYN,
    };
    const PORTS: std::ops::RangeInclusive<u16> = 20000..=20003;
    let (syn, ack) = (0x02, 0x10);

    require_root();
    let names;
    {
        let topo = Topology::new();
        names = topo.names();
        let (mut xdp, maps) = topo.tc_ready();
        let nat = Nat::new(&topo);
        let session = |inside_port: u16| Session {
            proto: PROTO_TCP,
            udp_sum: true,
            ports: (inside_port, 80),
            ext_port: 0,
            to_gw: (nat.ep.mac, nat.ep.gateway_mac),
            to_ext: (nat.far_mac, nat.up.mac),
        };
        let run = |xdp: &XdpProgram, frame: &[u8]| {
            let before = xdp.counters().expect("counters");
            let got = in_netns(&topo.r, || {
                xdp.tc_test_run(TcProgram::Endpoint, frame, topo.ep, (0, 0))
            })
            .expect("tc test run");
            (got, xdp.counters().expect("counters").since(&before))
        };
        let declined = |xdp: &XdpProgram, frame: &[u8], why: C, what: &str| {
            let (got, d) = run(xdp, frame);
            assert_eq!(got.ret, TCX_NEXT, "{what}");
            assert_eq!(got.frame, frame, "{what}: left as it was");
            assert_eq!((d.get(why), d.tc_frames()), (1, 1), "{what}: {d:?}");
            assert_eq!(d.tc_created, 0, "{what}");
        };

        let s = session(43512);
        declined(&xdp, &s.out(syn, 64, b""), C::TcDeclineSlow, "creation off");
        xdp.set_nat_config(&NatConfig {
            first: *PORTS.start(),
            last: *PORTS.end(),
            _pad: 0,
        })
        .expect("NAT_CFG");
        declined(&xdp, &s.out(ack, 64, b"x"), C::TcDeclineSlow, "no SYN");
        declined(
            &xdp,
            &s.out(syn | ack, 64, b""),
            C::TcDeclineSlow,
            "SYN-ACK",
        );
        // UDP: a datagram from a published container port answers a flow the kernel's
        // DNAT carries; any other makes a session.
        let udp = Session {
            proto: PROTO_UDP,
            ..session(5353)
        };
        let published = PortKey {
            addr: be_addr(INSIDE.octets()),
            port: 5353u16.to_be(),
            proto: PROTO_UDP,
            _pad: 0,
        };
        xdp.set_published(published, true).expect("PUBLISHED");
        declined(
            &xdp,
            &udp.out(0, 64, b"q"),
            C::TcDeclineSlow,
            "published UDP",
        );
        xdp.set_published(published, false).expect("PUBLISHED");
        let (got, d) = run(&xdp, &udp.out(0, 64, b"q"));
        assert_eq!(
            (got.ret, d.tc_created, d.tc_out),
            (TCX_REDIRECT, 1, 1),
            "UDP"
        );
        let udp_port = u16::from_be_bytes([got.frame[34], got.frame[35]]);
        let udp = Session {
            ext_port: udp_port,
            ..udp
        };
        let want = full_frame(
            udp.to_gw,
            (EXT, udp_port),
            (REMOTE, 80),
            PROTO_UDP,
            63,
            0,
            true,
            b"q",
        );
        assert_eq!(got.frame, want, "the translator's rewrite of a datagram");
        let (got, d) = run(&xdp, &udp.out(0, 64, b"again"));
        assert_eq!((got.ret, d.tc_created, d.tc_out), (TCX_REDIRECT, 0, 1));
        assert_eq!(u16::from_be_bytes([got.frame[34], got.frame[35]]), udp_port);

        // The SYN: a port of the range, the translator's rewrite, both directions.
        let (got, d) = run(&xdp, &s.out(syn, 64, b""));
        assert_eq!(got.ret, TCX_REDIRECT, "{d:?}");
        assert_eq!((d.tc_created, d.tc_out, d.tc_frames()), (1, 1, 1), "{d:?}");
        let ext_port = u16::from_be_bytes([got.frame[34], got.frame[35]]);
        assert!(PORTS.contains(&ext_port), "port {ext_port}");
        let s = Session { ext_port, ..s };
        let want = full_frame(
            s.to_gw,
            (EXT, ext_port),
            (REMOTE, 80),
            PROTO_TCP,
            63,
            syn,
            true,
            b"",
        );
        assert_eq!(got.frame, want, "the translator's rewrite of the SYN");
        let out_key = FlowKey {
            ifindex: topo.ep,
            src: u32::from_ne_bytes(INSIDE.octets()),
            dst: u32::from_ne_bytes(REMOTE.octets()),
            sport: 43512u16.to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let in_key = FlowKey {
            ifindex: 0,
            src: u32::from_ne_bytes(REMOTE.octets()),
            dst: u32::from_ne_bytes(EXT.octets()),
            sport: 80u16.to_be(),
            dport: ext_port.to_be(),
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let out = maps.ct(&out_key).expect("read").expect("outbound entry");
        let inb = maps.ct(&in_key).expect("read").expect("inbound entry");
        assert_eq!((out.owner, inb.owner), (CT_OWNER_KERNEL, CT_OWNER_KERNEL));
        assert_eq!(out.flags, CT_SEEN | CT_SYN);
        assert_eq!(
            (out.act.out_ifindex, inb.act.out_ifindex),
            (topo.up, topo.ep)
        );
        assert_eq!(
            (inb.act.eth_dst, inb.act.eth_src),
            (nat.ep.mac, topo.gateway_mac)
        );

        // The SYN-ACK goes in, rewritten as the translator would.
        let before = xdp.counters().expect("counters");
        let got = in_netns(&topo.r, || {
            let frame = s.inb(syn | ack, 64, b"");
            xdp.tc_test_run(TcProgram::Uplink, &frame, topo.up, (0, 0))
        })
        .expect("tc test run");
        let d = xdp.counters().expect("counters").since(&before);
        assert_eq!((got.ret, d.tc_in), (TCX_REDIRECT, 1), "{d:?}");
        let want = full_frame(
            (topo.gateway_mac, nat.ep.mac),
            (REMOTE, 80),
            (INSIDE, 43512),
            PROTO_TCP,
            63,
            syn | ack,
            true,
            b"",
        );
        assert_eq!(got.frame, want, "the translator's rewrite of the SYN-ACK");

        // A retransmitted SYN keeps its session and port.
        let (got, d) = run(&xdp, &s.out(syn, 64, b""));
        assert_eq!((got.ret, d.tc_created, d.tc_out), (TCX_REDIRECT, 0, 1));
        assert_eq!(u16::from_be_bytes([got.frame[34], got.frame[35]]), ext_port);

        // A reply datagram in two fragments: the first rewritten like a whole one, the
        // second follows it; the container reassembles the datagram its socket sent
        // for (checksum right for the rewritten pseudo header). A later fragment of
        // another datagram is the slow path's.
        let reply = full_frame(
            udp.to_ext,
            (REMOTE, 80),
            (EXT, udp_port),
            PROTO_UDP,
            64,
            0,
            true,
            &[0x5c; 100],
        );
        let (first, later) = fragments(&reply, 32);
        let mut payload = Vec::new();
        for frag in [&first, &later] {
            let before = xdp.counters().expect("counters");
            let got = in_netns(&topo.r, || {
                xdp.tc_test_run(TcProgram::Uplink, frag, topo.up, (0, 0))
            })
            .expect("tc test run");
            let d = xdp.counters().expect("counters").since(&before);
            assert_eq!((got.ret, d.tc_in), (TCX_REDIRECT, 1), "{d:?}");
            assert_eq!(got.frame[30..34], INSIDE.octets(), "fragment's destination");
            assert_eq!(got.frame[22], 63, "TTL");
            let header = &got.frame[14..34];
            assert_eq!(dovesnap::translator::checksum::checksum(header), 0);
            payload.extend_from_slice(&got.frame[34..]);
        }
        assert_eq!(payload[2..4], 5353u16.to_be_bytes(), "the container's port");
        let pseudo = dovesnap::translator::checksum::pseudo_header_sum(
            REMOTE,
            INSIDE,
            PROTO_UDP,
            payload.len() as u16,
        );
        let sum = dovesnap::translator::checksum::fold(dovesnap::translator::checksum::sum(
            &payload, pseudo,
        ));
        assert_eq!(sum, 0xffff, "the reassembled datagram's checksum");
        let mut stray = later.clone();
        stray[18] ^= 0x01;
        let before = xdp.counters().expect("counters");
        let got = in_netns(&topo.r, || {
            xdp.tc_test_run(TcProgram::Uplink, &stray, topo.up, (0, 0))
        })
        .expect("tc test run");
        let d = xdp.counters().expect("counters").since(&before);
        assert_eq!((got.ret, d.tc_decline_slow), (TCX_NEXT, 1), "{d:?}");

        // Three more connections to the same far end take the other three ports (the
        // datagrams' flow is UDP, another protocol's ports); the fifth finds none free
        // and goes to the kernel's masquerade.
        let mut taken = vec![ext_port];
        for inside_port in 43513..43516 {
            let (got, d) = run(&xdp, &session(inside_port).out(syn, 64, b""));
            assert_eq!((got.ret, d.tc_created), (TCX_REDIRECT, 1), "{d:?}");
            taken.push(u16::from_be_bytes([got.frame[34], got.frame[35]]));
        }
        taken.sort_unstable();
        assert_eq!(taken, PORTS.collect::<Vec<_>>(), "each port once");
        declined(
            &xdp,
            &session(43516).out(syn, 64, b""),
            C::TcDeclineExhausted,
            "no port left",
        );
        drop(maps);
        drop(xdp);
    }
    assert_gone(&names);
}
