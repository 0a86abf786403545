//! The XDP program on a real veth: it loads, attaches (native mode, generic fallback),
//! counts what it sees, passes traffic, and leaves nothing behind.
//!
//! Privileged: run with `cargo test -p dovesnap-tests --test xdp -- --ignored
//! --test-threads=1` as root. Addresses are 10.201.0.0/16 /30s used only between the
//! namespace and interfaces the test creates.

use dovesnap::xdp::{AttachMode, XdpError, XdpProgram};
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
    assert!(
        !ns_names().split_whitespace().any(|n| n == ns),
        "netns {ns} left behind"
    );
    let fds = bpf_fds();
    assert!(fds.is_empty(), "BPF objects still open: {fds:?}");
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
