//! nat-fast on its default engine, `ovs.nat.engine=tc`, end to end (real dockerd,
//! plugin, OVS): each endpoint is split in two veth pairs joined by tc redirects, so the
//! container keeps TSO and checksum offload while OVS's userspace datapath still sees
//! whole, checksummed frames. The tc programs sit on tcx ingress of the container's host
//! end and of the uplink: a container's TCP connection out gets its session from
//! `dovesnap_tc_endpoint` at the SYN and is carried by the programs both ways, GSO
//! super-packets whole, past OVS and netfilter; everything else (UDP, ICMP, in-subnet
//! traffic) takes the kernel path (OVS, the gateway, the nft masquerade), as in nat mode
//! (docs/design/nat-fast-tc.md).

use std::time::Duration;

use serde_json::Value;

use dovesnap::fastpath::xdp::{tcx_ingress_programs, CtEntry, CT_OWNER_KERNEL, PROTO_TCP};
use dovesnap_tests::bpf;
use dovesnap_tests::daemon::Daemon;
use dovesnap_tests::docker::{
    assert_outbound_masqueraded, assert_published, start_plugin_with, Container, Network,
};
use dovesnap_tests::far::Far;
use dovesnap_tests::status::{dataplane_counter, endpoint_at, xdp_counter};
use dovesnap_tests::{run, sh, wait_until};

const HOST_UPLINK_IP: &str = "10.237.100.1";
const FAR_IP: &str = "10.237.100.2";
const BULK_PORT: u16 = 9000;
const BULK_BYTES: usize = 20_000_000;

/// A bulk server for the far side: a client's first byte `G` gets the file `argv[2]`,
/// `P` has the rest of the connection read and its MD5 sent back.
const BULK_SERVER: &str = r#"
import hashlib,socket,sys
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind(('0.0.0.0',int(sys.argv[1]))); s.listen(4)
data=open(sys.argv[2],'rb').read()
while True:
    c,_=s.accept()
    if c.recv(1)==b'G': c.sendall(data)
    else:
        h=hashlib.md5()
        while True:
            b=c.recv(1<<20)
            if not b: break
            h.update(b)
        c.sendall(h.hexdigest().encode())
    c.close()
"#;

/// The client of [`BULK_SERVER`]: `get` prints the MD5 of what it received, `put FILE`
/// sends the file and prints the MD5 the server saw; `put FILE FLAG` sends the first
/// half, creates `FLAG.sent` and waits for `FLAG` to exist before the rest.
const BULK_CLIENT: &str = r#"
import hashlib,socket,sys
c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=20)
if sys.argv[3]=='get':
    c.sendall(b'G'); h=hashlib.md5()
    while True:
        b=c.recv(1<<20)
        if not b: break
        h.update(b)
    print(h.hexdigest())
else:
    data=open(sys.argv[4],'rb').read(); half=len(data)//2
    c.sendall(b'P'+data[:half])
    if len(sys.argv)>5:
        import os,time
        open(sys.argv[5]+'.sent','w').close()
        while not os.path.exists(sys.argv[5]): time.sleep(0.05)
    c.sendall(data[half:]); c.shutdown(socket.SHUT_WR)
    print(c.recv(64).decode())
"#;

/// The MD5 of a file, as `md5sum` prints it.
fn md5_of(path: &str) -> String {
    let out = sh("md5sum", &[path]);
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// [`BULK_CLIENT`] in container `c`'s network namespace (so with its eth0 and offload
/// settings), started.
fn bulk_client(c: &Container, args: &[&str]) -> std::process::Child {
    let port = BULK_PORT.to_string();
    std::process::Command::new("nsenter")
        .args([
            "-t",
            &c.pid(),
            "-n",
            "python3",
            "-c",
            BULK_CLIENT,
            FAR_IP,
            &port,
        ])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nsenter")
}

/// What a [`bulk_client`] printed, once it succeeded.
fn bulk_output(client: std::process::Child, args: &[&str]) -> String {
    let out = client.wait_with_output().expect("bulk client");
    assert!(
        out.status.success(),
        "bulk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs [`BULK_CLIENT`] to the end and returns what it printed.
fn bulk(c: &Container, args: &[&str]) -> String {
    bulk_output(bulk_client(c, args), args)
}

/// Deletes conntrack's entries of the container's bulk transfers (those a hand-over
/// made outlive the test otherwise).
fn forget_bulk_flows(ip: &str) {
    let port = BULK_PORT.to_string();
    let _ = run(
        "conntrack",
        &["-D", "-p", "tcp", "-s", ip, "--dport", &port],
    );
}

/// An endpoint's links: (the OVS port, the container's host end, the OVS port's peer).
fn split_links(ep: &Value) -> (String, String, String) {
    let port = ep["port"].as_str().expect("endpoint port").to_string();
    let id = port
        .strip_prefix("ovsv")
        .expect("ovsv<id> port")
        .to_string();
    (port, format!("ovst{id}"), format!("ovsq{id}"))
}

/// `tc filter show dev NAME ingress`'s redirect targets, one per filter action.
fn redirects(name: &str) -> Vec<String> {
    let out = run("tc", &["filter", "show", "dev", name, "ingress"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("Redirect to device ").nth(1))
        .map(|rest| rest.split(')').next().unwrap_or(rest).trim().to_string())
        .collect()
}

/// Whether the patch between the container's end and the OVS port's peer is whole:
/// exactly one redirect each way, and the OVS port is on the bridge.
fn patch_whole(port: &str, tc_end: &str, patch_end: &str) -> bool {
    let on_bridge = run("ovs-vsctl", &["port-to-br", port]).status.success();
    on_bridge
        && redirects(tc_end) == [patch_end.to_string()]
        && redirects(patch_end) == [tc_end.to_string()]
}

/// The programs on `ifname`'s tcx ingress (the kernel keeps 15 bytes of each name).
fn tcx(ifname: &str) -> Vec<String> {
    tcx_ingress_programs(ifname).expect("query tcx")
}

/// A temporary folder, removed on drop (also when an assertion fails).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The loader wrote `NAT_CFG` from the default `--nat-kernel-ports` (16384-32767), and
/// the data plane's `CT` sweep deletes what the tc programs created once it is stale:
/// here a kernel-owned outbound entry whose inbound half is gone, written long ago.
fn assert_nat_cfg_written_and_stale_kernel_sessions_swept(plugin: &Daemon) {
    let [nat_cfg] = &bpf::maps_named("NAT_CFG")[..] else {
        panic!("one NAT_CFG map: {:?}", bpf::maps_named("NAT_CFG"))
    };
    let [first, last] = [16384u16, 32767].map(u16::to_ne_bytes);
    assert_eq!(
        bpf::lookup(nat_cfg, &[0; 4]),
        Some([first, last, [0; 2], [0; 2]].concat())
    );
    let [prog] = &bpf::programs_named("dovesnap_tc_endpoint")[..] else {
        panic!("one tc endpoint program loaded")
    };
    let ct = bpf::map_of(prog, "CT").expect("the tc endpoint program uses CT");
    // FlowKey {ifindex 1 (no tc program keys on lo), 10.237.1.250:40000 -> far:9, TCP}.
    let key = [
        &1u32.to_ne_bytes()[..],
        &[10, 237, 1, 250],
        &[10, 237, 100, 2],
        &40000u16.to_be_bytes(),
        &9u16.to_be_bytes(),
        &[PROTO_TCP, 0, 0, 0],
    ]
    .concat();
    // CtEntry: no rewrite, created 1 ns after boot, owned by the tc programs.
    let mut value = vec![0u8; std::mem::size_of::<CtEntry>()];
    let created = std::mem::offset_of!(CtEntry, created);
    value[created..created + 8].copy_from_slice(&1u64.to_ne_bytes());
    value[std::mem::offset_of!(CtEntry, owner)] = CT_OWNER_KERNEL;
    bpf::update(&ct, &key, &value);
    wait_until(
        "the CT sweep deletes a stale kernel session",
        Duration::from_secs(5),
        || bpf::lookup(&ct, &key).is_none(),
    );
    assert!(dataplane_counter(&plugin.status(), "ct_gc_removed") >= 1);
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

#[test]
#[ignore = "needs root, Open vSwitch, nftables and dockerd (cargo xtask test)"]
fn split_endpoint_keeps_tso_and_carries_traffic() {
    let mut plugin = start_plugin_with(&["--reconcile-interval", "1"]);
    let mut far = Far::new("dtc", "10.237.100");
    let tmp = TempDir(std::env::temp_dir().join(format!("dovesnap-tc-{}", std::process::id())));
    let dir = &tmp.0;
    std::fs::create_dir_all(dir).expect("temp dir");
    let blob = dir.join("blob").to_string_lossy().into_owned();
    sh(
        "sh",
        &["-c", &format!("head -c {BULK_BYTES} /dev/urandom > {blob}")],
    );
    let blob_md5 = md5_of(&blob);
    far.spawn(&["python3", "-c", BULK_SERVER, &BULK_PORT.to_string(), &blob]);

    let links;
    {
        // No ovs.nat.engine: tc is nat-fast's default.
        let net = Network::nat_fast_with("dstc-net", &far.uplink.host, "10.237.1.0/24", &[]);
        let web = Container::published_web("dstc-web", &net, 18280, "tc-web");
        let c = Container::idle("dstc-cli", &net);

        // Status names the engine; no endpoint is on the XDP fast path.
        let status = plugin.status();
        let net_status = (status["networks"].as_array().into_iter().flatten())
            .find(|n| n["id"].as_str() == Some(&net.id()))
            .cloned()
            .expect("network in status");
        assert_eq!(net_status["engine"], "tc", "{net_status}");
        assert!(plugin.status_text().contains("nat-fast/tc"));
        let ep = endpoint_at(&status, None, &c.ip(&net));
        assert_ne!(ep["fast_path"], true, "{ep}");
        let (port, tc_end, patch_end) = split_links(&ep);
        links = (port.clone(), tc_end.clone(), patch_end.clone());
        assert!(
            patch_whole(&port, &tc_end, &patch_end),
            "filters: {tc_end} {:?}, {patch_end} {:?}",
            redirects(&tc_end),
            redirects(&patch_end)
        );

        // The tc programs: on the container's host end (not the OVS port) and first on
        // the uplink, through links the daemon owns.
        assert_eq!(tcx(&tc_end), ["dovesnap_tc_end"]);
        assert!(tcx(&port).is_empty());
        assert_eq!(
            tcx(&far.uplink.host).first().map(String::as_str),
            Some("dovesnap_tc_upl")
        );
        assert_nat_cfg_written_and_stale_kernel_sessions_swept(&plugin);

        // The container keeps TSO and TX checksum offload.
        let features = sh("nsenter", &["-t", &c.pid(), "-n", "ethtool", "-k", "eth0"]);
        for f in ["tcp-segmentation-offload: on", "tx-checksumming: on"] {
            assert!(features.contains(f), "{f}? {features}");
        }

        // Out to the far side (TCP, UDP, ICMP), masqueraded; in from the far side to
        // published TCP and UDP ports (the kernel's DNAT; the endpoint program makes no
        // session for their answers); hairpin; in-subnet to a neighbour.
        assert_outbound_masqueraded(&c, FAR_IP, HOST_UPLINK_IP);
        assert_published(&web, &far.ns, HOST_UPLINK_IP, 18280, "tc-web");
        let hairpin = c.fetch(&format!("http://{HOST_UPLINK_IP}:18280/"));
        assert_eq!(hairpin.expect("hairpin").trim(), "tc-web");
        let web_ip = web.ip(&net);
        assert!(c.ping(&web_ip), "in-subnet ping");
        let page = c
            .fetch(&format!("http://{web_ip}/"))
            .expect("in-subnet TCP");
        assert_eq!(page.trim(), "tc-web");

        // 20 MB down and up, intact, with TSO on in the container, carried by the tc
        // programs (sessions made at the SYN, super-packets whole both ways) and never
        // by the kernel's conntrack.
        let sent = dir.join("sent").to_string_lossy().into_owned();
        sh("cp", &[&blob, &sent]);
        // (An entry an earlier run's hand-over left for the same tuple would read as
        // tracked: none may be there before.)
        forget_bulk_flows(&c.ip(&net));
        let removed = dataplane_counter(&plugin.status(), "ct_gc_removed");
        for (what, args) in [("download", vec!["get"]), ("upload", vec!["put", &sent])] {
            let before = plugin.status();
            assert_eq!(bulk(&c, &args), blob_md5, "{what}");
            let after = plugin.status();
            let d = |name| xdp_counter(&after, name) - xdp_counter(&before, name);
            assert_eq!(
                d("tc-created"),
                1,
                "{what}: one session: {}",
                after["fast_path"]
            );
            assert!(
                d("tc-gso-frames") > 0 && d("tc-out") > 0 && d("tc-in") > 0,
                "{what}: super-packets through the tc programs: {}",
                after["fast_path"]
            );
        }
        let tracked = run(
            "conntrack",
            &[
                "-L",
                "-p",
                "tcp",
                "-s",
                &c.ip(&net),
                "--dport",
                &BULK_PORT.to_string(),
            ],
        );
        let tracked = String::from_utf8_lossy(&tracked.stdout);
        assert!(
            !tracked.contains("dport="),
            "the kernel tracked a tc session: {tracked}"
        );
        // Closed both ways, both sessions leave CT within seconds.
        wait_until(
            "the closed sessions are collected",
            Duration::from_secs(10),
            || dataplane_counter(&plugin.status(), "ct_gc_removed") >= removed + 2,
        );

        // The reconciler re-makes a deleted OVS-side pair and lost filters.
        sh("ip", &["link", "del", &patch_end]);
        wait_until(
            "the OVS-side pair is re-made",
            Duration::from_secs(15),
            || link_exists(&patch_end) && patch_whole(&port, &tc_end, &patch_end),
        );
        assert!(far.reached_from(&c), "traffic after the pair was re-made");
        sh("tc", &["qdisc", "del", "dev", &tc_end, "clsact"]);
        wait_until("the patch is re-made", Duration::from_secs(15), || {
            patch_whole(&port, &tc_end, &patch_end)
        });
        assert!(far.reached_from(&c), "traffic after the patch was re-made");
        assert_eq!(
            tcx(&tc_end),
            ["dovesnap_tc_end"],
            "the tcx link outlives clsact"
        );

        // kill -9 during traffic: the tcx links die with the process (nothing pinned),
        // the patch stays, so connections go on through the kernel's path.
        let (answered, text) = far.answered_across(&c, || plugin.kill());
        assert!(
            answered >= 29,
            "lost across the plugin's death: {answered}/30: {text}"
        );
        assert!(tcx(&tc_end).is_empty(), "a tcx link outlived the plugin");
        assert!(
            tcx(&far.uplink.host).is_empty(),
            "a tcx link outlived the plugin"
        );
        // A restart puts the programs back on the running container's endpoint, a
        // clean stop takes them off, and a start puts them back again.
        for round in ["kill -9", "stop"] {
            plugin = start_plugin_with(&["--reconcile-interval", "1"]);
            assert_eq!(
                tcx(&tc_end),
                ["dovesnap_tc_end"],
                "not re-attached after {round}"
            );
            let attached = &plugin.status()["fast_path"]["attached"];
            assert!(
                (attached.as_array().into_iter().flatten())
                    .any(|a| a[0] == tc_end.as_str() && a[1] == "tcx dovesnap_tc_endpoint"),
                "status: {attached}"
            );
            if round == "kill -9" {
                // A clean stop hands the programs' sessions to conntrack with their
                // mappings: an upload open across it finishes intact.
                let flag = dir.join("go").to_string_lossy().into_owned();
                let args = ["put", sent.as_str(), flag.as_str()];
                let client = bulk_client(&c, &args);
                wait_until("half the upload is sent", Duration::from_secs(20), || {
                    std::path::Path::new(&format!("{flag}.sent")).exists()
                });
                assert!(plugin.terminate(), "clean stop");
                std::fs::write(&flag, b"").expect("flag");
                assert_eq!(
                    bulk_output(client, &args),
                    blob_md5,
                    "upload across the stop"
                );
                forget_bulk_flows(&c.ip(&net));
                assert!(tcx(&tc_end).is_empty(), "a tcx link outlived a clean stop");
                assert!(
                    tcx(&far.uplink.host).is_empty(),
                    "a tcx link outlived a clean stop"
                );
            }
        }
        assert!(far.reached_from(&c), "traffic after the restart");
    }
    // The last endpoint gone, the uplink's program went with it.
    assert!(tcx(&far.uplink.host).is_empty());
    // Containers and network gone: nothing of the split is left.
    let (port, tc_end, patch_end) = links;
    for name in [&port, &tc_end, &patch_end] {
        assert!(!link_exists(name), "{name} left after docker network rm");
    }
    drop(far);
}
