//! The benchmark's traffic tools (`dovesnap-bench` subcommands, `bench/src/traffic.rs`)
//! between two namespaces joined by a veth: the XDP sink, attached from inside its
//! namespace, counts exactly what the UDP generator sent; the TCP request/response,
//! connect/request/response and stream clients complete against their servers with sane
//! figures.
//!
//! Privileged, and needs the bench binary: `cargo build -p dovesnap-bench`, then
//! `cargo test -p dovesnap-tests --test bench_tools -- --ignored --test-threads=1` as
//! root. `DOVESNAP_BENCH_BIN` overrides where the binary is looked for. Addresses are
//! 10.215.0.0/30, used only between the two namespaces the tests create.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use dovesnap_tests::{require_root, sh, unique_name, Netns};
use serde_json::Value;

const GEN_IP: &str = "10.215.0.1";
const SINK_IP: &str = "10.215.0.2";

/// The `dovesnap-bench` binary, built by `cargo build -p dovesnap-bench`.
fn bench_bin() -> PathBuf {
    let path = match std::env::var_os("DOVESNAP_BENCH_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/debug/dovesnap-bench"
        )),
    };
    assert!(
        path.is_file(),
        "{} is missing: these tests run the bench binary's tools; build it first with \
         `cargo build -p dovesnap-bench` (or point DOVESNAP_BENCH_BIN at one)",
        path.display()
    );
    path
}

/// Two namespaces joined by a veth: `gen` (GEN_IP on `gen_if`) and `sink` (SINK_IP on
/// `sink_if`). Deleting the namespaces deletes the veth.
struct Pair {
    gen: Netns,
    sink: Netns,
    gen_if: String,
    sink_if: String,
}

impl Pair {
    fn new() -> Pair {
        let gen = Netns::new("dsbg");
        let sink = Netns::new("dsbs");
        let gen_if = unique_name("dsbv");
        let sink_if = format!("{gen_if}p");
        sh(
            "ip",
            &[
                "link", "add", &gen_if, "netns", &gen.name, "type", "veth", "peer", "name",
                &sink_if, "netns", &sink.name,
            ],
        );
        for (ns, dev, addr) in [(&gen, &gen_if, GEN_IP), (&sink, &sink_if, SINK_IP)] {
            ns.sh("ip", &["addr", "add", &format!("{addr}/30"), "dev", dev]);
            ns.sh("ip", &["link", "set", dev, "up"]);
        }
        Pair {
            gen,
            sink,
            gen_if,
            sink_if,
        }
    }
}

fn tool_command(ns: &Netns, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(bench_bin())
        .args(args);
    cmd
}

/// The tool's last stdout line as JSON.
fn json_line(stdout: &str, what: &str) -> Value {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{what} printed no JSON line: {stdout:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what} printed bad JSON {line}: {e}"))
}

/// Runs a tool to completion in `ns` and returns its JSON result.
fn run_tool(ns: &Netns, args: &[&str]) -> Value {
    let out = tool_command(ns, args)
        .output()
        .expect("run the bench binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "`dovesnap-bench {}` failed ({}): {stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    json_line(&stdout, &args.join(" "))
}

/// A tool running in the background; killed (SIGKILL) on drop if still running.
struct Background {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
    what: String,
}

impl Background {
    fn start(ns: &Netns, args: &[&str]) -> Background {
        let mut child = tool_command(ns, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the bench binary");
        let stdout = child.stdout.take().map(BufReader::new);
        Background {
            child,
            stdout,
            what: args.join(" "),
        }
    }

    /// Reads the server's `{"listening":...}` line (blocks until it is printed, or fails
    /// when the server exits first).
    fn wait_listening(&mut self) {
        let mut line = String::new();
        let reader = self.stdout.as_mut().expect("stdout");
        reader.read_line(&mut line).expect("read server output");
        assert!(
            line.contains("\"listening\""),
            "`{}` did not start: {line:?} ({:?})",
            self.what,
            self.child.try_wait()
        );
    }

    /// Sends SIGTERM and returns the tool's JSON result.
    fn terminate(mut self) -> Value {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill has no memory-safety preconditions; `pid` is our own child (the
        // `ip netns exec` process execs the tool, so it is the tool), not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill");
        let mut out = String::new();
        let mut reader = self.stdout.take().expect("stdout");
        std::io::Read::read_to_string(&mut reader, &mut out).expect("read output");
        let status = self.child.wait().expect("wait");
        assert!(
            status.success(),
            "`{}` ended with {status}: {out}",
            self.what
        );
        json_line(&out, &self.what)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn has_xdp(ns: &Netns, dev: &str) -> bool {
    ns.sh("ip", &["link", "show", "dev", dev])
        .split_whitespace()
        .any(|w| w.starts_with("prog/xdp") || w.starts_with("xdp"))
}

/// The veth's transmit drop counter in `ns`.
fn tx_dropped(ns: &Netns, dev: &str) -> u64 {
    let out = ns.sh("ip", &["-j", "-s", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_str(&out).expect("ip -j -s link");
    v[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .expect("tx dropped")
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer `{key}` in {v}"))
}

fn f64_of(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number `{key}` in {v}"))
}

/// The sink, attached from inside its namespace, counts every frame the generator sent
/// in both modes (and passes ARP, so the generator resolves its address), then stops on
/// SIGTERM and detaches.
#[test]
#[ignore = "needs root: netns, veth, XDP, and the dovesnap-bench binary"]
fn sink_counts_what_the_generator_sent() {
    require_root();
    let pair = Pair::new();
    let sink = Background::start(
        &pair.sink,
        &["sink", "--ifname", &pair.sink_if, "--seconds", "30"],
    );
    let start = Instant::now();
    while !has_xdp(&pair.sink, &pair.sink_if) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the sink did not attach to {}",
            pair.sink_if
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dropped_before = tx_dropped(&pair.gen, &pair.gen_if);

    // Packet mode first: it resolves the sink's MAC (one priming datagram, in `sent`).
    let gen = |rest: &str| {
        let line = format!("udp-gen --dst {SINK_IP} --port 9000 --flows 16 --payload 18 {rest}");
        run_tool(&pair.gen, &line.split_whitespace().collect::<Vec<_>>())
    };
    let packet = gen("--seconds 1 --mode packet");
    let socket = gen("--seconds 0.5 --mode socket --cpu 0");
    let counted = sink.terminate();
    assert!(
        !has_xdp(&pair.sink, &pair.sink_if),
        "the sink left its program attached"
    );

    let sent = u64_of(&packet, "sent") + u64_of(&socket, "sent");
    let frames = u64_of(&counted, "frames");
    let dropped = tx_dropped(&pair.gen, &pair.gen_if) - dropped_before;
    eprintln!("packet {packet}\nsocket {socket}\nsink {counted}\nveth tx dropped {dropped}");
    assert!(
        u64_of(&packet, "sent") > 10_000 && u64_of(&socket, "sent") > 10_000,
        "too little sent: {packet} {socket}"
    );
    assert!(
        frames <= sent && sent - frames <= dropped,
        "the sink counted {frames} frames, the generator sent {sent} and the veth dropped \
         {dropped}"
    );
    // 18-byte payloads: 60-byte frames (64 on the wire with the FCS).
    assert_eq!(u64_of(&counted, "bytes"), frames * 60, "{counted}");
    assert_eq!(counted["mode"], "native", "{counted}");
    // The window ended on SIGTERM, long before its 30 s.
    assert!(f64_of(&counted, "seconds") < 20.0, "{counted}");
    drop(pair);
}

/// rr, crr and stream clients (both directions) complete against their servers with
/// sane figures.
#[test]
#[ignore = "needs root: netns, veth, and the dovesnap-bench binary"]
fn tcp_tools_complete() {
    require_root();
    let pair = Pair::new();
    let mut servers = Vec::new();
    for (tool, port) in [
        ("stream-server", "5201"),
        ("rr-server", "5202"),
        ("crr-server", "5203"),
        ("source-server", "5204"),
    ] {
        let mut server = Background::start(&pair.sink, &[tool, "--port", port]);
        server.wait_listening();
        servers.push(server);
    }

    let rr = run_tool(
        &pair.gen,
        &[
            "rr-client",
            "--dst",
            SINK_IP,
            "--port",
            "5202",
            "--seconds",
            "1",
            "--warmup",
            "0.2",
        ],
    );
    eprintln!("rr {rr}");
    assert!(u64_of(&rr, "transactions") > 1000, "{rr}");
    let (p50, p99, mean) = (
        f64_of(&rr, "p50_us"),
        f64_of(&rr, "p99_us"),
        f64_of(&rr, "mean_us"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 < 10_000.0, "{rr}");
    assert!(mean > 0.0 && mean < 10_000.0, "{rr}");

    let crr = run_tool(
        &pair.gen,
        &[
            "crr-client",
            "--dst",
            SINK_IP,
            "--port",
            "5203",
            "--seconds",
            "1",
            "--concurrency",
            "2",
        ],
    );
    eprintln!("crr {crr}");
    assert!(u64_of(&crr, "connections") > 100, "{crr}");
    assert_eq!(u64_of(&crr, "errors"), 0, "{crr}");
    assert!(f64_of(&crr, "per_second") > 100.0, "{crr}");
    // SO_LINGER 0: the client leaves no TIME_WAIT behind.
    let tw = pair.gen.sh(
        "ss",
        &["-Htan", "state", "time-wait", "dport", "=", ":5203"],
    );
    assert!(tw.trim().is_empty(), "crr left TIME_WAIT sockets: {tw}");

    let stream = run_tool(
        &pair.gen,
        &[
            "stream-client",
            "--dst",
            SINK_IP,
            "--port",
            "5201",
            "--streams",
            "2",
            "--seconds",
            "1",
        ],
    );
    eprintln!("stream {stream}");
    let bytes = u64_of(&stream, "bytes");
    assert!(bytes > 10 << 20, "{stream}");
    assert_eq!(
        bytes,
        u64_of(&stream, "sent"),
        "receiver and sender disagree: {stream}"
    );
    assert!(f64_of(&stream, "gbps") > 0.1, "{stream}");
    assert!(f64_of(&stream, "seconds") >= 1.0, "{stream}");

    // The download direction: the far side sends, the client counts what it read.
    let download = run_tool(
        &pair.gen,
        &[
            "stream-client",
            "--dst",
            SINK_IP,
            "--port",
            "5204",
            "--seconds",
            "1",
            "--download",
        ],
    );
    eprintln!("download {download}");
    assert!(u64_of(&download, "bytes") > 10 << 20, "{download}");
    assert_eq!(u64_of(&download, "sent"), 0, "{download}");
    assert!(f64_of(&download, "seconds") >= 1.0, "{download}");

    drop(servers);
    drop(pair);
}
