//! The AF_XDP adapter on real veths: sockets over one shared UMEM forward frames between
//! two namespaces, and every frame comes back to the pool.
//!
//! Privileged: run with `cargo test -p dovesnap-tests --test afxdp -- --ignored
//! --test-threads=1` as root. Addresses are 10.207.0.0/24, used only inside the
//! namespaces the tests create.
//!
//! In production dovesnap's own XDP program steers frames into its `XskMap`; these tests
//! have none, so the forwarding test lets libxdp attach its default redirect program
//! (`XskConfig::load_default_program`, test-only), and the other test checks the
//! production setting (program loading inhibited) on the transmit side.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dovesnap::fastpath::afxdp::{AfXdpError, FrameState, PortId, Rx, Xsk, XskConfig, XskStats};
use dovesnap_tests::{require_root, sh, Netns, Veth};

/// Whether `ip link show dev IF` reports an XDP program.
fn has_xdp(ifname: &str) -> bool {
    sh("ip", &["-d", "link", "show", "dev", ifname])
        .split_whitespace()
        .any(|w| w.starts_with("xdp") || w.starts_with("prog/xdp"))
}

/// A namespace with one veth whose host end stays in the root namespace, IPv6 off on
/// the host end (no stray router solicitations), TX checksum offload off on the
/// namespace end (frames leave it with complete checksums, which AF_XDP needs).
struct Side {
    veth: Veth,
    ns: Netns,
}

impl Side {
    fn new(prefix: &str, addr: &str) -> Side {
        let ns = Netns::new(prefix);
        let veth = Veth::new(prefix);
        sh(
            "sysctl",
            &[
                "-qw",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", veth.host),
            ],
        );
        veth.peer_into(&ns, addr);
        ns.sh("ethtool", &["-K", &veth.peer, "tx", "off"]);
        Side { veth, ns }
    }

    fn peer_counter(&self, name: &str) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/{name}", self.veth.peer);
        self.ns.sh("cat", &[&path]).trim().parse().expect("counter")
    }
}

/// A thread moving every frame received on one port to the other, through the shared
/// UMEM. Stopped (and joined) on drop, also when the test panics.
struct Forwarder {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Xsk>>,
}

impl Forwarder {
    fn spawn(mut xsk: Xsk, a: PortId, b: PortId) -> Forwarder {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut rx: Vec<Rx> = Vec::with_capacity(256);
            while !stopped.load(Ordering::Relaxed) {
                if xsk.recv(&mut rx) == 0 {
                    xsk.flush().expect("flush");
                    xsk.poll(Duration::from_millis(10)).expect("poll");
                    continue;
                }
                for Rx { port, frame } in rx.drain(..) {
                    let to = if port == a { b } else { a };
                    let addr = frame.addr();
                    assert_eq!(xsk.frame_state(addr), Some(FrameState::Held));
                    xsk.send(to, frame);
                    // No copy: the very UMEM frame the kernel wrote on one socket's RX
                    // ring is now queued on the other socket's TX ring.
                    assert_eq!(xsk.frame_state(addr), Some(FrameState::Tx(to)));
                }
                xsk.flush().expect("flush");
            }
            xsk
        });
        Forwarder {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread and takes the `Xsk` back.
    fn finish(mut self) -> Xsk {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().expect("running");
        match handle.join() {
            Ok(xsk) => xsk,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Flushes until every submitted frame has completed (or `timeout`), then returns stats.
fn settle(xsk: &mut Xsk, timeout: Duration) -> XskStats {
    let deadline = Instant::now() + timeout;
    loop {
        xsk.flush().expect("flush");
        let stats = xsk.stats();
        if stats.tx_completed == stats.tx_submitted || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn assert_frames_consistent(stats: &XskStats) {
    let f = stats.frames;
    assert_eq!(f.free + f.fill + f.held + f.tx, f.total, "{f:?}");
    assert_eq!(stats.anomalies, 0, "{stats:#?}");
}

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `data` over TCP from `from` to `to_addr` with busybox nc and returns what the
/// listener in `to` received.
fn tcp_transfer(from: &Netns, to: &Netns, to_addr: &str, data: &[u8]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("dovesnap-afxdp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (sent, received) = (dir.join("sent"), dir.join("received"));
    std::fs::write(&sent, data).expect("write");
    // The listener quits when its stdin ends: keep a pipe open until it is killed.
    let _server = Reaped(
        Command::new("ip")
            .args([
                "netns", "exec", &to.name, "busybox", "nc", "-l", "-p", "5001",
            ])
            .stdin(Stdio::piped())
            .stdout(File::create(&received).expect("create"))
            .spawn()
            .expect("spawn nc -l"),
    );
    // busybox nc listens on a dual-stack IPv6 socket: look in both tables.
    let listening = || {
        to.sh("cat", &["/proc/net/tcp", "/proc/net/tcp6"])
            .lines()
            .any(|l| l.contains(":1389 ") && l.split_whitespace().nth(3) == Some("0A"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !listening() {
        assert!(Instant::now() < deadline, "nc -l never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The client exits at the end of its input; its socket still delivers what it holds.
    let client = Command::new("ip")
        .args([
            "netns", "exec", &from.name, "busybox", "nc", to_addr, "5001",
        ])
        .stdin(File::open(&sent).expect("open"))
        .output()
        .expect("run nc");
    assert!(client.status.success(), "nc client: {client:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    loop {
        let len = std::fs::metadata(&received).map_or(0, |m| m.len()) as usize;
        if len >= data.len() || (Instant::now() > deadline && len == last) {
            break;
        }
        last = len;
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = std::fs::read(&received).expect("read");
    let _ = std::fs::remove_dir_all(&dir);
    got
}

/// Deterministic incompressible bytes (xorshift), so a corrupted byte shows.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
#[ignore = "needs root: netns, veth, AF_XDP, XDP"]
fn forwards_between_namespaces_over_one_umem() {
    require_root();
    let a = Side::new("dxa", "10.207.0.1/24");
    let b = Side::new("dxb", "10.207.0.2/24");

    let cfg = XskConfig {
        load_default_program: true,
        ..XskConfig::default()
    };
    let mut xsk = Xsk::new(cfg).expect("create the UMEM and the anchor socket");
    let total = xsk.stats().frames.total;
    assert_eq!(total, 4096);
    let pa = xsk.open(&a.veth.host, 0).expect("open A");
    let pb = xsk.open(&b.veth.host, 0).expect("open B");
    assert_ne!(xsk.fd(pa), xsk.fd(pb));
    assert!(
        has_xdp(&a.veth.host) && has_xdp(&b.veth.host),
        "libxdp attached no redirect program"
    );
    assert_frames_consistent(&xsk.stats());

    // Ping, then a TCP transfer, through the forwarder (ARP included: it forwards all).
    let fwd = Forwarder::spawn(xsk, pa, pb);
    a.ns.sh("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.207.0.2"]);
    let data = pattern(4 << 20);
    let got = tcp_transfer(&a.ns, &b.ns, "10.207.0.2", &data);
    assert_eq!(got.len(), data.len(), "TCP transfer truncated");
    assert!(got == data, "TCP transfer corrupted");
    let mut xsk = fwd.finish();

    let stats = settle(&mut xsk, Duration::from_secs(2));
    eprintln!("after ping and TCP: {stats:#?}");
    assert_frames_consistent(&stats);
    let (sa, sb) = (&stats.ports[0], &stats.ports[1]);
    assert_eq!((sa.port, sb.port), (pa, pb));
    // 4 MiB in at most 1500-byte frames one way, acks the other.
    assert!(sa.rx > 2800, "A received too little: {sa:?}");
    assert!(sb.rx > 100, "B received too little: {sb:?}");
    // Everything received on one socket was transmitted, and completed, on the other.
    assert_eq!(stats.tx_dropped, 0);
    assert_eq!(sb.tx_submitted, sa.rx);
    assert_eq!(sa.tx_submitted, sb.rx);
    assert_eq!(stats.tx_completed, stats.tx_submitted);
    assert_eq!(stats.frames.held + stats.frames.tx, 0);
    assert!(sa.kernel.is_some() && sb.kernel.is_some());

    // Close both: every frame is back, libxdp's program is gone.
    xsk.close(pa);
    xsk.close(pb);
    let stats = xsk.stats();
    assert!(stats.ports.is_empty());
    assert_eq!(
        stats.frames.free, total,
        "frames leaked: {:?}",
        stats.frames
    );
    assert!(!has_xdp(&a.veth.host) && !has_xdp(&b.veth.host));
    assert_eq!(xsk.fd(pa), None);

    // Reopen at once (the kernel tears the old sockets down asynchronously: EBUSY is
    // retried) and forward again.
    let reopen = Instant::now();
    let pa2 = xsk.open(&a.veth.host, 0).expect("reopen A");
    let pb2 = xsk.open(&b.veth.host, 0).expect("reopen B");
    eprintln!("reopening both took {:?}", reopen.elapsed());
    assert_ne!(pa2, pa, "a closed port's id was reused");
    let fwd = Forwarder::spawn(xsk, pa2, pb2);
    b.ns.sh("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.207.0.1"]);
    let mut xsk = fwd.finish();
    let stats = settle(&mut xsk, Duration::from_secs(2));
    assert_frames_consistent(&stats);
    assert!(stats.ports.iter().all(|p| p.rx >= 3), "{stats:#?}");

    xsk.close(pa2);
    xsk.close(pb2);
    let stats = xsk.stats();
    assert_eq!(
        stats.frames.free, total,
        "frames leaked: {:?}",
        stats.frames
    );
    assert_eq!(stats.anomalies, 0);
    drop(xsk);
    assert!(!has_xdp(&a.veth.host) && !has_xdp(&b.veth.host));
}

#[test]
#[ignore = "needs root: netns, veth, AF_XDP"]
fn inhibited_sockets_load_no_program_and_transmit() {
    require_root();
    let side = Side::new("dxt", "10.207.0.9/24");
    let mut xsk = Xsk::new(XskConfig::default()).expect("create the UMEM and the anchor");
    let total = xsk.stats().frames.total;

    let port = xsk.open(&side.veth.host, 0).expect("open");
    assert!(
        !has_xdp(&side.veth.host),
        "a program was loaded despite INHIBIT"
    );
    let fd = xsk.fd(port).expect("fd");
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("fd link");
    assert!(
        target.to_string_lossy().starts_with("socket:"),
        "{target:?}"
    );
    let stats = xsk.stats();
    assert_eq!(stats.frames.fill, 512, "fill ring not prefilled: {stats:?}");
    assert!(stats.ports[0].kernel.is_some());

    // Opening a pair twice, the anchor's pair, or a missing interface fails clearly.
    assert!(matches!(
        xsk.open(&side.veth.host, 0),
        Err(AfXdpError::AlreadyOpen { .. })
    ));
    assert!(matches!(
        xsk.open("lo", 0),
        Err(AfXdpError::AlreadyOpen { .. })
    ));
    let missing = xsk.open("dxnosuchif0", 0).expect_err("no such interface");
    assert!(matches!(missing, AfXdpError::Bind { .. }), "{missing}");
    eprintln!("missing interface: {missing}");

    // Frames built in the UMEM and sent on the socket arrive on the namespace end.
    let before = side.peer_counter("rx_packets");
    const N: u64 = 300;
    for i in 0..N {
        let mut frame = xsk.alloc().expect("a free frame");
        assert_eq!(xsk.set_len(&mut frame, 60), 60);
        let bytes = xsk.frame_mut(&mut frame);
        bytes[..6].copy_from_slice(&[0xff; 6]);
        bytes[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        bytes[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental EtherType
        bytes[14..22].copy_from_slice(&i.to_be_bytes());
        assert_eq!(xsk.frame(&frame)[14..22], i.to_be_bytes());
        xsk.send(port, frame);
        if i % 64 == 63 {
            xsk.flush().expect("flush");
        }
    }
    let stats = settle(&mut xsk, Duration::from_secs(2));
    assert_eq!(stats.tx_completed, N, "{stats:#?}");
    assert_eq!(stats.tx_dropped, 0);
    assert_frames_consistent(&stats);
    let arrived = side.peer_counter("rx_packets") - before;
    assert!(arrived >= N, "only {arrived} of {N} frames arrived");

    // Close and reopen in a tight loop: binds refused while the previous socket is torn
    // down are retried, and no frame is lost on the way.
    let mut port = port;
    for _ in 0..20 {
        xsk.close(port);
        assert_eq!(xsk.stats().frames.free, total);
        port = xsk.open(&side.veth.host, 0).expect("reopen");
    }

    // A frame dropped or sent to a closed port goes back to the pool.
    let frame = xsk.alloc().expect("a free frame");
    xsk.drop_frame(frame);
    xsk.close(port);
    let frame = xsk.alloc().expect("a free frame");
    xsk.send(port, frame);
    let stats = xsk.stats();
    assert_eq!(stats.tx_dropped, 1);
    assert_eq!(
        stats.frames.free, total,
        "frames leaked: {:?}",
        stats.frames
    );
}
