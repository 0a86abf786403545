//! Load generators, the XDP counting sink and TCP servers/clients for the data-path
//! benchmark. Each runs as a subcommand of the `dovesnap-bench` binary inside a network
//! namespace (`ip netns exec NS dovesnap-bench TOOL ...`, see [`Tool`]) and prints one
//! JSON object line on stdout as its result; errors go to stderr with a non-zero exit.
//!
//! | tool            | result (stdout)                                                 |
//! |-----------------|-----------------------------------------------------------------|
//! | `udp-gen`       | [`UdpGenResult`] `{"sent","seconds","errors","mode"}`           |
//! | `sink`          | [`SinkResult`] `{"frames","bytes","passed","mode","seconds"}`   |
//! | `stream-client` | [`StreamResult`] `{"bytes","sent","seconds","gbps","streams"}`  |
//! | `stream-client --download` | [`StreamResult`] (bytes received; `sent` 0)          |
//! | `rr-client`     | [`RrResult`] `{"transactions","p50_us","p99_us","mean_us",...}` |
//! | `crr-client`    | [`CrrResult`] `{"connections","per_second","errors","seconds"}` |
//! | `*-server`      | `{"listening":"ADDR:PORT"}` once bound; then serves until killed |
//!
//! Choices that shape the figures:
//! - `udp-gen` sends batches of [`BATCH`] datagrams with `sendmmsg(2)`, `flows` flows,
//!   flow `i` to `dst:port+i`. Default `--mode packet`: prebuilt Ethernet/IPv4/UDP frames
//!   with complete checksums on an `AF_PACKET` socket (qdisc bypass) out of the route's
//!   device, flow `i` from source port [`PACKET_SRC_PORT`]` + i`, flows interleaved per
//!   datagram; the sender's IP/UDP stack is skipped, as trafgen does, because the path
//!   under test runs on the sender's CPU (veth forwards inline). `--mode socket`: `flows`
//!   connected UDP sockets from ephemeral source ports, one batch per socket in turn
//!   (about 3 us of sender CPU per datagram here, against about 1.3 us). `--payload 18`
//!   gives 64-byte Ethernet frames (14 + 20 + 8 + 18 + 4 FCS). No UDP GSO: every
//!   datagram is its own skb, as a NAT in its path must see it. A short batch or an
//!   error (full veth ring: ENOBUFS) yields the CPU to let the receiver drain.
//! - `sink` counts at XDP ([`XdpSink`]): IPv4 frames are counted and dropped, ARP and
//!   IPv6 pass uncounted (so the sink's address still resolves). Bytes exclude the FCS.
//! - `stream-client` counts at the receiver: after the window each connection
//!   half-closes, the server answers with the bytes it read (8 bytes, big-endian) and
//!   closes; `seconds` runs until the last answer, so in-flight data is included.
//! - `stream-client --download` is the other direction (server to client): `source-server` writes
//!   [`STREAM_WRITE`]-byte buffers on each connection until the client goes away; the
//!   client counts what it read from the common start until `seconds` pass.
//! - `crr-client` aborts each connection with `SO_LINGER` 0 (an RST after reading the
//!   response): no TIME_WAIT on either side, so the client's ephemeral ports never run
//!   out whatever the rate. The NAT in between sees SYN, data, RST per connection.
//! - Servers serve with [`SERVER_WORKERS`] threads blocked in `accept` on the shared
//!   listener, each handling a connection to its end: at most that many connections are
//!   served at once (others wait in the backlog).

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use dovesnap::fastpath::xdp::{AttachMode, XdpSink};
use dovesnap::host::addr::Mac;
use dovesnap_testbed::frame::{self, set_l4_checksum, Csum, Ipv4Header, DF};
use serde::{Deserialize, Serialize};

/// Datagrams per `sendmmsg(2)` call.
pub const BATCH: usize = 64;
/// Size of each write of `stream-client` (and each read of `stream-server`).
pub const STREAM_WRITE: usize = 128 * 1024;
/// Threads accepting and serving connections in each server.
pub const SERVER_WORKERS: usize = 64;
/// How long clients keep retrying their first connection (the server may be starting).
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);
/// `crr-client`: connect and read time-outs of one connection (a lost SYN is an error).
const CRR_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a client or generator sends: `--dst ADDR --port PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct Peer {
    /// Destination address.
    #[arg(long)]
    pub dst: Ipv4Addr,
    /// Destination port (generators: of the first flow; flow i goes to port + i).
    #[arg(long)]
    pub port: u16,
}

impl Peer {
    pub fn addr(self) -> SocketAddr {
        SocketAddr::from((self.dst, self.port))
    }
}

/// Where a server listens: `--bind ADDR` (default all) `--port PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct Listen {
    #[arg(long, default_value_t = Ipv4Addr::UNSPECIFIED)]
    pub bind: Ipv4Addr,
    #[arg(long)]
    pub port: u16,
}

/// The tools, as `dovesnap-bench` subcommands (`#[command(subcommand)]` or
/// `#[command(flatten)]` it into the binary's own enum). [`Tool::run`] runs one and
/// prints its JSON line.
#[derive(Clone, Debug, PartialEq, clap::Subcommand)]
pub enum Tool {
    /// UDP load generator (sendmmsg); prints {"sent","seconds","errors"}.
    UdpGen {
        #[command(flatten)]
        to: Peer,
        /// Number of flows (sockets, each with its own source port).
        #[arg(long, default_value_t = 256)]
        flows: u16,
        /// UDP payload bytes (18 = 64-byte Ethernet frames).
        #[arg(long, default_value_t = 18)]
        payload: usize,
        /// How long to send.
        #[arg(long, value_parser = parse_seconds)]
        seconds: Duration,
        /// Pin the generator to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
        /// `packet`: prebuilt frames on AF_PACKET; `socket`: UDP sockets.
        #[arg(long, value_enum, default_value_t = GenMode::Packet)]
        mode: GenMode,
    },
    /// Opens each of the generator's packet-mode flows both ways before a one-way flood
    /// (a stateful NAT offloads a UDP session once it has seen a reply): one datagram
    /// from source port `PACKET_SRC_PORT + i` to `dst:port + i`, then waits for the
    /// answers; prints {"flows","answered"}.
    UdpWarm {
        #[command(flatten)]
        to: Peer,
        #[arg(long, default_value_t = 256)]
        flows: u16,
        /// Pin to this CPU (so the datagrams leave by that CPU's transmit queue).
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Answers every datagram on ports `port..port + flows` until `seconds` pass.
    UdpEcho {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 256)]
        flows: u16,
        #[arg(long, value_parser = parse_seconds)]
        seconds: Duration,
    },
    /// XDP counting sink on an interface of this namespace; prints {"frames","bytes",..}.
    Sink {
        /// Interface to attach to.
        #[arg(long)]
        ifname: String,
        /// Counting window; SIGTERM or SIGINT end it early (the JSON is still printed).
        #[arg(long, value_parser = parse_seconds)]
        seconds: Duration,
        /// Also end the window when stdin reaches end of file.
        #[arg(long)]
        until_stdin_eof: bool,
        /// Attach in generic (SKB) mode instead of native-then-generic.
        #[arg(long)]
        generic: bool,
    },
    /// Bulk TCP receiver; reports each connection's byte count back to its client.
    StreamServer {
        #[command(flatten)]
        at: Listen,
    },
    /// Bulk TCP sender (128 KiB writes); prints {"bytes","seconds","gbps",..}.
    StreamClient {
        #[command(flatten)]
        to: Peer,
        /// Parallel connections.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, value_parser = parse_seconds)]
        seconds: Duration,
        /// The other direction: read from a source-server (`bytes` is what was read,
        /// `sent` 0).
        #[arg(long)]
        download: bool,
    },
    /// Bulk TCP sender to whoever connects, for `stream-client --download`; sends until
    /// the client closes.
    SourceServer {
        #[command(flatten)]
        at: Listen,
    },
    /// 1-byte echo server for rr-client.
    RrServer {
        #[command(flatten)]
        at: Listen,
    },
    /// TCP_RR over one connection; prints {"transactions","p50_us","p99_us","mean_us",..}.
    RrClient {
        #[command(flatten)]
        to: Peer,
        /// Measured window (after the warm-up).
        #[arg(long, value_parser = parse_seconds)]
        seconds: Duration,
        /// Transactions run but not recorded before the window.
        #[arg(long, value_parser = parse_seconds, default_value = "0.5")]
        warmup: Duration,
    },
    /// 1-byte echo server for crr-client (one request per connection).
    CrrServer {
        #[command(flatten)]
        at: Listen,
    },
    /// TCP_CRR (connect, 1-byte request, 1-byte response, RST); prints
    /// {"connections","per_second","errors",..}.
    CrrClient {
        #[command(flatten)]
        to: Peer,
        #[arg(long, value_parser = parse_seconds)]
        seconds: Duration,
        /// Connection loops running at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
}

impl Tool {
    /// Runs the tool; clients and the sink print their result as one JSON line on
    /// stdout, servers print `{"listening":...}` and never return unless they fail.
    pub fn run(self) -> Result<()> {
        match self {
            Tool::UdpGen {
                to,
                flows,
                payload,
                seconds,
                cpu,
                mode,
            } => print_json(&udp_gen(to, flows, payload, seconds, cpu, mode)?),
            Tool::UdpWarm { to, flows, cpu } => print_json(&udp_warm(to, flows, cpu)?),
            Tool::UdpEcho {
                port,
                flows,
                seconds,
            } => udp_echo(port, flows, seconds),
            Tool::Sink {
                ifname,
                seconds,
                until_stdin_eof,
                generic,
            } => print_json(&sink(&ifname, seconds, until_stdin_eof, generic)?),
            Tool::StreamServer { at } => stream_server(at),
            Tool::StreamClient {
                to,
                streams,
                seconds,
                download: false,
            } => print_json(&stream_client(to, streams, seconds)?),
            Tool::StreamClient {
                to,
                streams,
                seconds,
                download: true,
            } => print_json(&download_client(to, streams, seconds)?),
            Tool::SourceServer { at } => serve(at, Handler::Source),
            Tool::RrServer { at } | Tool::CrrServer { at } => echo_server(at),
            Tool::RrClient {
                to,
                seconds,
                warmup,
            } => print_json(&rr_client(to, seconds, warmup)?),
            Tool::CrrClient {
                to,
                seconds,
                concurrency,
            } => print_json(&crr_client(to, seconds, concurrency)?),
        }
    }
}

/// A duration from a number of seconds (`1`, `2.5`).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is not a valid duration"))
}

/// Prints `value` as one JSON line on stdout and flushes.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let line = serde_json::to_string(value)?;
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// How `udp-gen` puts datagrams on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GenMode {
    /// Prebuilt Ethernet/IPv4/UDP frames (complete checksums) on an `AF_PACKET` socket
    /// with `PACKET_QDISC_BYPASS`, straight to the route's egress device: the sender's
    /// own IP and UDP layers are skipped, so the CPU goes to the path under test.
    #[default]
    Packet,
    /// Connected UDP sockets through the sender's IP stack, as an application sends.
    /// About 3x the sender's CPU per datagram of `packet`.
    Socket,
}

/// What `udp-gen` did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UdpGenResult {
    /// Datagrams the kernel accepted (a datagram dropped further on, e.g. by a full
    /// device queue, can still count here: compare with the sink). In `packet` mode this
    /// includes the one datagram sent before the window to resolve the next hop's MAC
    /// address, when the neighbour table did not have it.
    pub sent: u64,
    /// Length of the sending window.
    pub seconds: f64,
    /// Failed `sendmmsg` calls (each lost at least one datagram).
    pub errors: u64,
    /// `packet` or `socket`.
    #[serde(default)]
    pub mode: GenMode,
    /// The last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Sends 64-byte-frame-style UDP load for `duration`: `flows` flows, flow `i` to
/// `dst:port_base + i`, in `sendmmsg` batches of [`BATCH`] datagrams of `payload` zero
/// bytes; pinned to `cpu` when given (the calling thread).
///
/// - [`GenMode::Packet`]: flow `i` comes from source port [`PACKET_SRC_PORT`]` + i`;
///   consecutive datagrams belong to consecutive flows (flow order within each batch).
///   The egress device, source address and next hop come from `ip route get`, the next
///   hop's MAC from the neighbour table (one datagram is sent through a UDP socket first
///   if it has no entry yet).
/// - [`GenMode::Socket`]: flow `i` is a connected UDP socket with its own ephemeral
///   source port; each batch goes to one socket, the sockets in turn.
pub fn udp_gen(
    to: Peer,
    flows: u16,
    payload: usize,
    duration: Duration,
    cpu: Option<usize>,
    mode: GenMode,
) -> Result<UdpGenResult> {
    let port_base = to.port;
    if flows == 0 {
        bail!("--flows must be at least 1");
    }
    if port_base == 0 || u32::from(port_base) + u32::from(flows) - 1 > u32::from(u16::MAX) {
        bail!(
            "destination ports {port_base}..{} do not fit in 1..=65535",
            u32::from(port_base) + u32::from(flows) - 1
        );
    }
    if payload > 65_507 {
        bail!("--payload {payload} exceeds the largest UDP/IPv4 payload (65507)");
    }
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu)?;
    }
    match mode {
        GenMode::Socket => socket_gen(to, flows, payload, duration),
        GenMode::Packet => packet_gen(to, flows, payload, duration),
    }
}

/// First source port of `udp-gen --mode packet` (flow `i` uses this + `i`).
pub const PACKET_SRC_PORT: u16 = 20000;

/// Runs `sendmmsg` for `duration` on the descriptor `next` returns, after `next` has
/// prepared the batch's headers.
fn send_loop(
    duration: Duration,
    msgs: &mut [libc::mmsghdr; BATCH],
    mode: GenMode,
    mut next: impl FnMut(&mut [libc::mmsghdr; BATCH]) -> RawFd,
) -> UdpGenResult {
    let mut result = UdpGenResult {
        mode,
        ..Default::default()
    };
    let start = Instant::now();
    let deadline = start + duration;
    while Instant::now() < deadline {
        let fd = next(msgs);
        // SAFETY: the callers keep `fd` open and every header's name and iovec (and the
        // bytes they point to) alive and unchanged for the whole loop; the kernel reads
        // them and writes only each header's `msg_len`.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as libc::c_uint, 0) };
        if n >= 0 {
            result.sent += n as u64;
            if (n as usize) < BATCH {
                // A short batch: the device queue is full. Let the receive side (often
                // ksoftirqd on this same CPU) drain it rather than fail against it.
                yield_cpu();
            }
        } else {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                result.errors += 1;
                result.last_error = Some(err.to_string());
                yield_cpu();
            }
        }
    }
    result.seconds = start.elapsed().as_secs_f64();
    result
}

fn yield_cpu() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

fn zeroed_msgs() -> [libc::mmsghdr; BATCH] {
    // SAFETY: mmsghdr is plain C data (integers and pointers); all-zero is a valid value
    // (null name and control, no iovecs).
    unsafe { std::mem::zeroed() }
}

fn socket_gen(to: Peer, flows: u16, payload: usize, duration: Duration) -> Result<UdpGenResult> {
    let Peer {
        dst,
        port: port_base,
    } = to;
    let sockets = (0..flows)
        .map(|i| {
            let dst = SocketAddrV4::new(dst, port_base + i);
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                .context("cannot create a UDP socket")?;
            socket
                .connect(dst)
                .with_context(|| format!("cannot connect a UDP socket to {dst}"))?;
            Ok(socket)
        })
        .collect::<Result<Vec<_>>>()?;
    let buf = vec![0u8; payload];
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut msgs = zeroed_msgs();
    for m in msgs.iter_mut() {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut turn = 0;
    // `sockets`, `buf` and `iov` outlive the loop.
    Ok(send_loop(duration, &mut msgs, GenMode::Socket, |_| {
        let fd = sockets[turn].as_raw_fd();
        turn = (turn + 1) % sockets.len();
        fd
    }))
}

/// See [`Tool::UdpWarm`].
pub fn udp_warm(to: Peer, flows: u16, cpu: Option<usize>) -> Result<serde_json::Value> {
    let Peer { dst, port } = to;
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu)?;
    }
    let sockets = (0..flows)
        .map(|i| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PACKET_SRC_PORT.wrapping_add(i)))
                .context("cannot bind a warm-up socket")?;
            s.send_to(b"warm", (dst, port.wrapping_add(i)))
                .context("cannot send a warm-up datagram")?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut answered = vec![false; sockets.len()];
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline && answered.iter().any(|a| !a) {
        for (s, a) in sockets.iter().zip(answered.iter_mut()) {
            if !*a && s.recv(&mut buf).is_ok() {
                *a = true;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(serde_json::json!({
        "flows": flows,
        "answered": answered.iter().filter(|a| **a).count(),
    }))
}

/// See [`Tool::UdpEcho`].
pub fn udp_echo(port: u16, flows: u16, duration: Duration) -> Result<()> {
    let sockets = (0..flows)
        .map(|i| {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port.wrapping_add(i)))
                .context("cannot bind an echo socket")?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;
    let end = Instant::now() + duration;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        let mut busy = false;
        for s in &sockets {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
                busy = true;
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok(())
}

fn packet_gen(to: Peer, flows: u16, payload: usize, duration: Duration) -> Result<UdpGenResult> {
    let Peer {
        dst,
        port: port_base,
    } = to;
    let (path, primed) = resolve_path(dst, port_base, payload)?;
    if payload + 28 > path.mtu {
        bail!(
            "--payload {payload} does not fit {}'s MTU {} in one frame",
            path.ifname,
            path.mtu
        );
    }
    let frames: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            let header = Ipv4Header {
                eth_src: path.src_mac,
                ..Ipv4Header::new(path.dst_mac, path.src, dst, frame::PROTO_UDP)
            };
            udp_frame(
                header,
                PACKET_SRC_PORT.wrapping_add(i),
                port_base + i,
                payload,
            )
        })
        .collect();
    let mut iovs: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();

    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error())
            .context("cannot open an AF_PACKET socket (needs CAP_NET_RAW)");
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    set_option(&socket, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one)
        .context("cannot set PACKET_QDISC_BYPASS")?;
    // SAFETY: sockaddr_ll is plain C data; all-zero is valid before the fields are set.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = path.ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&path.dst_mac);

    let mut msgs = zeroed_msgs();
    for m in msgs.iter_mut() {
        m.msg_hdr.msg_name = &mut addr as *mut libc::sockaddr_ll as *mut libc::c_void;
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        m.msg_hdr.msg_iovlen = 1;
    }
    let flows = usize::from(flows);
    let iov_base = iovs.as_mut_ptr();
    let mut flow = 0;
    // `socket`, `addr`, `frames` and `iovs` outlive the loop.
    let mut result = send_loop(duration, &mut msgs, GenMode::Packet, |msgs| {
        for m in msgs.iter_mut() {
            // SAFETY: `flow < flows == iovs.len()`, so the pointer stays inside `iovs`,
            // which is neither moved nor resized while the loop runs.
            m.msg_hdr.msg_iov = unsafe { iov_base.add(flow) };
            flow += 1;
            if flow == flows {
                flow = 0;
            }
        }
        socket.as_raw_fd()
    });
    result.sent += primed;
    Ok(result)
}

/// Where `packet` mode sends: the route's egress device and the next hop's MAC.
#[derive(Debug)]
struct TxPath {
    ifname: String,
    ifindex: u32,
    mtu: usize,
    src: Ipv4Addr,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

/// Runs `ip -j ARGS` and parses its JSON array.
fn ip_json(args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = dovesnap_testbed::cmd::sh("ip", &full)?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text)
        .with_context(|| format!("`ip -j {}` printed {text}", args.join(" ")))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    s.trim().parse::<Mac>().ok().map(|m| m.0)
}

/// The next hop's MAC address if the neighbour table has a usable entry.
fn neighbour(ip: Ipv4Addr, dev: &str) -> Result<Option<[u8; 6]>> {
    let entries = ip_json(&["neigh", "show", "to", &ip.to_string(), "dev", dev])?;
    Ok(entries.iter().find_map(|e| {
        let states = e["state"].as_array().cloned().unwrap_or_default();
        let dead = states
            .iter()
            .any(|s| matches!(s.as_str(), Some("FAILED" | "INCOMPLETE")));
        if dead {
            None
        } else {
            e["lladdr"].as_str().and_then(parse_mac)
        }
    }))
}

/// Resolves the route to `dst`; returns it and how many datagrams were sent to resolve
/// the next hop (0 or 1).
fn resolve_path(dst: Ipv4Addr, port: u16, payload: usize) -> Result<(TxPath, u64)> {
    let routes = ip_json(&["route", "get", &dst.to_string()])?;
    let route = routes
        .first()
        .with_context(|| format!("no route to {dst}"))?;
    let ifname = route["dev"]
        .as_str()
        .with_context(|| format!("the route to {dst} has no device: {route}"))?
        .to_string();
    if ifname == "lo" {
        bail!("{dst} is local: --mode packet needs an Ethernet next hop; use --mode socket");
    }
    let src: Ipv4Addr = route["prefsrc"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("the route to {dst} has no source address: {route}"))?;
    let next_hop: Ipv4Addr = match route["gateway"].as_str() {
        Some(gw) => gw.parse().with_context(|| format!("bad gateway {gw}"))?,
        None => dst,
    };
    let sys = |attr: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{ifname}/{attr}"))
            .with_context(|| format!("cannot read {attr} of {ifname}"))
    };
    let src_mac =
        parse_mac(&sys("address")?).with_context(|| format!("{ifname} has no Ethernet address"))?;
    let mtu: usize = sys("mtu")?.trim().parse().context("bad MTU")?;
    let c_name = std::ffi::CString::new(ifname.clone())?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if ifindex == 0 {
        bail!("interface {ifname} disappeared");
    }
    let mut primed = 0;
    let dst_mac = match neighbour(next_hop, &ifname)? {
        Some(mac) => mac,
        None => {
            // Let the kernel resolve it: one datagram through the stack, counted as sent.
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket
                .send_to(&vec![0u8; payload], (dst, port))
                .with_context(|| format!("cannot send to {dst}:{port}"))?;
            primed = 1;
            let start = Instant::now();
            loop {
                if let Some(mac) = neighbour(next_hop, &ifname)? {
                    break mac;
                }
                if start.elapsed() > Duration::from_secs(3) {
                    bail!("{next_hop} on {ifname} does not answer ARP");
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    Ok((
        TxPath {
            ifname,
            ifindex,
            mtu,
            src,
            src_mac,
            dst_mac,
        },
        primed,
    ))
}

/// An Ethernet/IPv4/UDP frame with `payload` zero bytes, DF set, TTL 64 and complete
/// IPv4 and UDP checksums.
fn udp_frame(header: Ipv4Header, src_port: u16, dst_port: u16, payload: usize) -> Vec<u8> {
    let header = Ipv4Header { frag: DF, ..header };
    let mut f = header.frame(&frame::udp(src_port, dst_port, &vec![0; payload]));
    set_l4_checksum(&mut f, Csum::Full);
    f
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("CPU {cpu} is out of range");
    }
    // SAFETY: `cpu` is below CPU_SETSIZE, so the bit is inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("cannot pin the generator to CPU {cpu}"));
    }
    Ok(())
}

/// What `sink` counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkResult {
    /// IPv4 frames counted and dropped since the sink was attached.
    pub frames: u64,
    /// Their bytes, Ethernet header to end of frame (no FCS).
    pub bytes: u64,
    /// Other frames (ARP, IPv6) passed to the kernel uncounted.
    pub passed: u64,
    /// `native` or `generic` XDP.
    pub mode: String,
    /// Length of the counting window.
    pub seconds: f64,
}

/// Set by SIGTERM/SIGINT while [`sink`] runs.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGTERM and SIGINT set [`STOP`] while this lives; the previous handlers come back on
/// drop.
struct StopSignals {
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl StopSignals {
    fn install() -> Result<Self> {
        STOP.store(false, Ordering::SeqCst);
        let mut guard = StopSignals { old: Vec::new() };
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: sigaction is plain C data; all-zero is a valid (empty) value.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            // SAFETY: both structs are valid; the handler only stores to an atomic,
            // which is async-signal-safe.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: as above; `signal` is a valid, catchable signal number.
            if unsafe { libc::sigaction(signal, &action, &mut old) } != 0 {
                return Err(io::Error::last_os_error()).context("cannot install a signal handler");
            }
            guard.old.push((signal, old));
        }
        Ok(guard)
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        for (signal, old) in &self.old {
            // SAFETY: restores the action saved by `install` for the same signal.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
    }
}

/// Attaches an [`XdpSink`] to `ifname` (in the calling thread's namespace), waits
/// `duration` (less on SIGTERM/SIGINT, or at end of stdin when `until_stdin_eof`), and
/// returns what it counted since attaching; detaches before returning. Meant to be the
/// process's only work: it takes over SIGTERM/SIGINT while it runs.
pub fn sink(
    ifname: &str,
    duration: Duration,
    until_stdin_eof: bool,
    generic: bool,
) -> Result<SinkResult> {
    let signals = StopSignals::install()?;
    let mode = generic.then_some(AttachMode::Skb);
    let sink = XdpSink::attach_in(ifname, mode)
        .with_context(|| format!("cannot start the sink on {ifname}"))?;
    let start = Instant::now();
    let stdin_closed = Arc::new(AtomicBool::new(false));
    if until_stdin_eof {
        let closed = Arc::clone(&stdin_closed);
        thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            closed.store(true, Ordering::SeqCst);
        });
    }
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration || STOP.load(Ordering::SeqCst) || stdin_closed.load(Ordering::SeqCst)
        {
            break;
        }
        thread::sleep((duration - elapsed).min(Duration::from_millis(20)));
    }
    let seconds = start.elapsed().as_secs_f64();
    let (frames, bytes) = sink.counts()?;
    let passed = sink.passed()?;
    let mode = sink.mode().to_string();
    drop(sink);
    drop(signals);
    Ok(SinkResult {
        frames,
        bytes,
        passed,
        mode,
        seconds,
    })
}

/// Bulk TCP receiver (see the module docs for the protocol); serves until killed.
pub fn stream_server(at: Listen) -> Result<()> {
    serve(at, Handler::Stream)
}

/// 1-byte echo server for [`rr_client`] and [`crr_client`] (for the latter each
/// connection carries one transaction and ends with the client's RST); serves until
/// killed.
pub fn echo_server(at: Listen) -> Result<()> {
    serve(at, Handler::Echo)
}

/// What a server does with each connection.
#[derive(Clone, Copy, Debug)]
enum Handler {
    /// Read to end of file, answer with the byte count (u64 big-endian), close.
    Stream,
    /// Answer every byte with one byte, until end of file or reset.
    Echo,
    /// Write until the peer goes away (its close or reset ends the connection).
    Source,
}

fn serve(at: Listen, handler: Handler) -> Result<()> {
    let Listen { bind, port } = at;
    let listener = TcpListener::bind((bind, port))
        .with_context(|| format!("cannot listen on {bind}:{port}"))?;
    print_json(&serde_json::json!({ "listening": listener.local_addr()?.to_string() }))?;
    serve_on(listener, handler)
}

/// Fails unless `n` (the value of `flag`) is 1 to [`SERVER_WORKERS`]: a client's
/// connections each need a server thread of their own.
fn check_workers(flag: &str, n: usize) -> Result<()> {
    if n == 0 || n > SERVER_WORKERS {
        bail!("{flag} must be 1 to {SERVER_WORKERS} (the server's worker count)");
    }
    Ok(())
}

/// Serves `listener` with [`SERVER_WORKERS`] accepting threads; returns only if every
/// worker failed to start.
fn serve_on(listener: TcpListener, handler: Handler) -> Result<()> {
    let listener = Arc::new(listener);
    let mut workers = Vec::new();
    for _ in 0..SERVER_WORKERS {
        let listener = Arc::clone(&listener);
        let worker = thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        // A client going away mid-connection is normal (crr ends with RST).
                        let _ = handle(stream, handler);
                    }
                    Err(e) => {
                        eprintln!("accept: {e}");
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            })
            .context("cannot start a server thread")?;
        workers.push(worker);
    }
    for worker in workers {
        let _ = worker.join();
    }
    bail!("every server thread ended")
}

fn handle(mut stream: TcpStream, handler: Handler) -> io::Result<()> {
    match handler {
        Handler::Stream => {
            let mut buf = vec![0u8; STREAM_WRITE];
            let mut total = 0u64;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            stream.write_all(&total.to_be_bytes())?;
            stream.shutdown(Shutdown::Write)
        }
        Handler::Source => {
            let buf = vec![0x5au8; STREAM_WRITE];
            loop {
                stream.write_all(&buf)?;
            }
        }
        Handler::Echo => {
            stream.set_nodelay(true)?;
            let mut byte = [0u8; 1];
            loop {
                match stream.read(&mut byte) {
                    Ok(0) => return Ok(()),
                    Ok(_) => stream.write_all(&byte)?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Connects to `addr`, retrying for [`CONNECT_PATIENCE`] (the server may be starting).
fn connect_retry(addr: SocketAddr) -> Result<TcpStream> {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => return Ok(stream),
            Err(e) if start.elapsed() >= CONNECT_PATIENCE => {
                return Err(e).with_context(|| format!("cannot connect to {addr}"))
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// What `stream-client` moved.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamResult {
    /// Bytes the server read, over all connections.
    pub bytes: u64,
    /// Bytes the client wrote.
    pub sent: u64,
    /// From the common start to the last connection's byte count arriving.
    pub seconds: f64,
    /// `bytes * 8 / seconds / 1e9`.
    pub gbps: f64,
    /// Connections used.
    pub streams: usize,
}

/// Writes [`STREAM_WRITE`]-byte buffers on `streams` connections for `duration`; the
/// result counts what the server read (see the module docs).
pub fn stream_client(to: Peer, streams: usize, duration: Duration) -> Result<StreamResult> {
    run_streams(to, streams, move |mut conn| {
        let buf = vec![0xa5u8; STREAM_WRITE];
        let started = Instant::now();
        let deadline = started + duration;
        let mut sent = 0u64;
        while Instant::now() < deadline {
            conn.write_all(&buf)?;
            sent += buf.len() as u64;
        }
        conn.shutdown(Shutdown::Write)?;
        let mut count = [0u8; 8];
        conn.read_exact(&mut count)?;
        Ok(StreamRun {
            bytes: u64::from_be_bytes(count),
            sent,
            started,
            done: Instant::now(),
        })
    })
}

/// Reads on `streams` connections to a `source-server` for `duration` (the download
/// direction); the result counts the bytes read, from the first stream's start to the
/// last one's end (`sent` is 0).
pub fn download_client(to: Peer, streams: usize, duration: Duration) -> Result<StreamResult> {
    run_streams(to, streams, move |mut conn| {
        let mut buf = vec![0u8; STREAM_WRITE];
        let started = Instant::now();
        let deadline = started + duration;
        let mut bytes = 0u64;
        while Instant::now() < deadline {
            match conn.read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the source server closed early",
                    ))
                }
                Ok(n) => bytes += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Closing with unread data resets the connection: the server's write fails and
        // its worker moves on.
        Ok(StreamRun {
            bytes,
            sent: 0,
            started,
            done: Instant::now(),
        })
    })
}

/// One connection's share of a stream or download run.
struct StreamRun {
    bytes: u64,
    sent: u64,
    started: Instant,
    done: Instant,
}

/// Connects `streams` connections to `to`, runs `each` on every one in its own thread
/// (all starting together) and sums their counts.
fn run_streams<F>(to: Peer, streams: usize, each: F) -> Result<StreamResult>
where
    F: Fn(TcpStream) -> io::Result<StreamRun> + Clone + Send + 'static,
{
    check_workers("--streams", streams)?;
    let addr = to.addr();
    let conns = (0..streams)
        .map(|_| connect_retry(addr))
        .collect::<Result<Vec<_>>>()?;
    let barrier = Arc::new(Barrier::new(streams + 1));
    let threads: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let barrier = Arc::clone(&barrier);
            let each = each.clone();
            thread::spawn(move || {
                barrier.wait();
                each(conn)
            })
        })
        .collect();
    barrier.wait();
    let mut result = StreamResult {
        streams,
        ..Default::default()
    };
    // The window is the streams' own: from the first one's start (taken by the stream's
    // thread itself, so a late-scheduled coordinator cannot shorten it) to the last
    // one's end.
    let mut window: Option<(Instant, Instant)> = None;
    for t in threads {
        let run = t
            .join()
            .map_err(|_| anyhow::anyhow!("a stream thread panicked"))?
            .with_context(|| format!("a stream with {addr} failed"))?;
        result.bytes += run.bytes;
        result.sent += run.sent;
        window = Some(window.map_or((run.started, run.done), |(s, e)| {
            (s.min(run.started), e.max(run.done))
        }));
    }
    let (start, end) = window.context("no stream ran")?;
    result.seconds = (end - start).as_secs_f64();
    result.gbps = result.bytes as f64 * 8.0 / result.seconds / 1e9;
    Ok(result)
}

/// What `rr-client` measured (latencies in microseconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RrResult {
    /// Transactions in the measured window.
    pub transactions: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    /// Length of the measured window.
    pub seconds: f64,
}

/// TCP_RR: one connection with TCP_NODELAY, 1-byte request, 1-byte response, as fast as
/// they come back; `warmup` of transactions first, then `duration` recorded (each
/// transaction's latency into a preallocated vector, sorted at the end; percentiles by
/// nearest rank).
pub fn rr_client(to: Peer, duration: Duration, warmup: Duration) -> Result<RrResult> {
    let addr = to.addr();
    let mut conn = connect_retry(addr)?;
    conn.set_nodelay(true)?;
    // Room for 250k transactions/s, well above what a veth round trip allows.
    let mut latencies: Vec<u64> =
        Vec::with_capacity((duration.as_secs_f64().ceil() as usize + 1) * 250_000);
    let mut request = [1u8; 1];
    let mut response = [0u8; 1];
    let mut transact = |conn: &mut TcpStream| -> Result<()> {
        conn.write_all(&request)?;
        conn.read_exact(&mut response)
            .with_context(|| format!("no response from {addr}"))?;
        request[0] = request[0].wrapping_add(1);
        Ok(())
    };
    let warm_end = Instant::now() + warmup;
    while Instant::now() < warm_end {
        transact(&mut conn)?;
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut t0 = start;
    while t0 < deadline {
        transact(&mut conn)?;
        let t1 = Instant::now();
        latencies.push((t1 - t0).as_nanos() as u64);
        t0 = t1;
    }
    let seconds = start.elapsed().as_secs_f64();
    rr_stats(&mut latencies, seconds).with_context(|| format!("no transaction with {addr}"))
}

/// Summarises latencies (ns; sorted in place).
fn rr_stats(latencies: &mut [u64], seconds: f64) -> Option<RrResult> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let sum: u128 = latencies.iter().map(|&ns| u128::from(ns)).sum();
    Some(RrResult {
        transactions: latencies.len() as u64,
        p50_us: us(percentile(latencies, 50.0)),
        p99_us: us(percentile(latencies, 99.0)),
        mean_us: sum as f64 / latencies.len() as f64 / 1000.0,
        min_us: us(latencies[0]),
        max_us: us(latencies[latencies.len() - 1]),
        seconds,
    })
}

/// The nearest-rank percentile `p` (0..=100) of sorted, non-empty `values`.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What `crr-client` measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CrrResult {
    /// Completed connections (connect, request, response, RST).
    pub connections: u64,
    /// `connections / seconds`.
    pub per_second: f64,
    /// Connections that failed (refused, timed out after 1 s, reset early).
    pub errors: u64,
    pub seconds: f64,
    /// The last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// TCP_CRR: `concurrency` threads each loop connect, 1-byte request, 1-byte response,
/// abortive close (`SO_LINGER` 0: RST, no TIME_WAIT) for `duration`.
pub fn crr_client(to: Peer, duration: Duration, concurrency: usize) -> Result<CrrResult> {
    check_workers("--concurrency", concurrency)?;
    let addr = to.addr();
    // Wait for the server once, so that start-up is not counted as errors.
    abort_on_close(&connect_retry(addr)?)?;
    let barrier = Arc::new(Barrier::new(concurrency + 1));
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                let deadline = Instant::now() + duration;
                let (mut ok, mut errors, mut last_error) = (0u64, 0u64, None);
                while Instant::now() < deadline {
                    match one_crr(addr) {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            errors += 1;
                            last_error = Some(e.to_string());
                        }
                    }
                }
                (ok, errors, last_error)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut result = CrrResult::default();
    for t in threads {
        let (ok, errors, last_error) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a crr thread panicked"))?;
        result.connections += ok;
        result.errors += errors;
        result.last_error = result.last_error.or(last_error);
    }
    result.seconds = start.elapsed().as_secs_f64();
    result.per_second = result.connections as f64 / result.seconds;
    Ok(result)
}

/// Sets `SO_LINGER` 0: closing sends an RST and leaves no TIME_WAIT.
fn abort_on_close(conn: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_option(conn, libc::SOL_SOCKET, libc::SO_LINGER, &linger)
}

/// `setsockopt(2)` of `level`/`name` to `value`, which must be the C type the option
/// takes (`c_int`, `linger`, ...).
fn set_option<T>(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `socket` is an open descriptor; `value` is a valid `T` of the size passed,
    // which the kernel only reads.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn one_crr(addr: SocketAddr) -> io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&addr, CRR_TIMEOUT)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(CRR_TIMEOUT))?;
    abort_on_close(&conn)?;
    conn.write_all(&[1])?;
    let mut response = [0u8; 1];
    conn.read_exact(&mut response)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        tool: Tool,
    }

    fn parse(args: &[&str]) -> Tool {
        Cli::try_parse_from(std::iter::once("dovesnap-bench").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .tool
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            parse(&[
                "udp-gen",
                "--dst",
                "10.0.0.2",
                "--port",
                "9000",
                "--flows",
                "256",
                "--payload",
                "18",
                "--seconds",
                "2.5",
                "--cpu",
                "0",
            ]),
            Tool::UdpGen {
                to: Peer {
                    dst: Ipv4Addr::new(10, 0, 0, 2),
                    port: 9000
                },
                flows: 256,
                payload: 18,
                seconds: Duration::from_millis(2500),
                cpu: Some(0),
                mode: GenMode::Packet,
            }
        );
        assert!(matches!(
            parse(&[
                "udp-gen",
                "--dst",
                "10.0.0.2",
                "--port",
                "9",
                "--seconds",
                "1",
                "--mode",
                "socket",
            ]),
            Tool::UdpGen {
                mode: GenMode::Socket,
                flows: 256,
                payload: 18,
                cpu: None,
                ..
            }
        ));
        assert!(matches!(
            parse(&[
                "stream-client",
                "--dst",
                "10.0.0.2",
                "--port",
                "5204",
                "--seconds",
                "1",
                "--download"
            ]),
            Tool::StreamClient {
                streams: 1,
                download: true,
                ..
            }
        ));
        assert!(matches!(
            parse(&["source-server", "--port", "5204"]),
            Tool::SourceServer {
                at: Listen { port: 5204, .. }
            }
        ));
        assert_eq!(
            parse(&["sink", "--ifname", "f0", "--seconds", "3"]),
            Tool::Sink {
                ifname: "f0".into(),
                seconds: Duration::from_secs(3),
                until_stdin_eof: false,
                generic: false,
            }
        );
        assert_eq!(
            parse(&["stream-server", "--port", "5201"]),
            Tool::StreamServer {
                at: Listen {
                    bind: Ipv4Addr::UNSPECIFIED,
                    port: 5201
                }
            }
        );
        // The TCP clients take the same peer and window.
        let to = Peer {
            dst: Ipv4Addr::new(10, 0, 0, 2),
            port: 1,
        };
        let client = |tool| parse(&[tool, "--dst", "10.0.0.2", "--port", "1", "--seconds", "1"]);
        assert_eq!(
            client("rr-client"),
            Tool::RrClient {
                to,
                seconds: Duration::from_secs(1),
                warmup: Duration::from_millis(500),
            }
        );
        assert_eq!(
            client("crr-client"),
            Tool::CrrClient {
                to,
                seconds: Duration::from_secs(1),
                concurrency: 4,
            }
        );
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("x").is_err());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        let mut ns = vec![3000, 1000, 2000];
        let r = rr_stats(&mut ns, 1.0).expect("stats");
        assert_eq!((r.transactions, r.p50_us, r.p99_us), (3, 2.0, 3.0));
        assert_eq!((r.mean_us, r.min_us, r.max_us), (2.0, 1.0, 3.0));
        assert!(rr_stats(&mut [], 1.0).is_none());
    }

    /// A server on an ephemeral loopback port, serving in the background for the rest
    /// of the test process.
    fn loopback_server(handler: Handler) -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        thread::spawn(move || serve_on(listener, handler));
        port
    }

    fn local(port: u16) -> Peer {
        Peer {
            dst: Ipv4Addr::LOCALHOST,
            port,
        }
    }

    #[test]
    fn udp_gen_on_loopback() {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = rx.local_addr().expect("addr").port();
        let r = udp_gen(
            local(port),
            1,
            18,
            Duration::from_millis(100),
            None,
            GenMode::Socket,
        )
        .expect("udp_gen");
        assert!(r.sent >= BATCH as u64, "{r:?}");
        assert_eq!(r.errors, 0, "{r:?}");
        let mut buf = [0u8; 64];
        assert_eq!(rx.recv(&mut buf).expect("recv"), 18);
        let gen = |port, flows, mode| udp_gen(local(port), flows, 18, Duration::ZERO, None, mode);
        assert!(gen(65535, 2, GenMode::Socket).is_err());
        assert!(gen(9, 0, GenMode::Socket).is_err());
        // Packet mode needs an Ethernet next hop, and says so.
        let err = gen(9, 1, GenMode::Packet).expect_err("loopback has no next hop");
        assert!(format!("{err:#}").contains("--mode socket"), "{err:#}");
    }

    /// The generated frame: layout, and checksums that verify (the one's-complement
    /// sum over a header including its checksum is 0xffff).
    #[test]
    fn udp_frames_are_valid() {
        let (src, dst) = (Ipv4Addr::new(10, 240, 1, 2), Ipv4Addr::new(10, 240, 2, 2));
        let header = Ipv4Header {
            eth_src: [2, 0, 0, 0, 0, 1],
            ..Ipv4Header::new([2, 0, 0, 0, 0, 2], src, dst, frame::PROTO_UDP)
        };
        for payload in [18, 19, 0, 1000] {
            let f = udp_frame(header, 20007, 9007, payload);
            assert_eq!(f.len(), 42 + payload);
            assert_eq!(&f[0..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
            assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, 28 + payload);
            assert_eq!((f[20], f[23]), (0x40, 17), "DF, UDP");
            assert_eq!(u16::from_be_bytes([f[34], f[35]]), 20007);
            assert_eq!(u16::from_be_bytes([f[36], f[37]]), 9007);
            frame::verify(&f).unwrap();
            assert_ne!(&f[40..42], &[0, 0], "UDP checksum filled");
        }
        assert_eq!(
            parse_mac("aa:37:af:10:b7:4e"),
            Some([0xaa, 0x37, 0xaf, 0x10, 0xb7, 0x4e])
        );
        assert_eq!(parse_mac("aa:37:af:10:b7"), None);
        assert_eq!(parse_mac("aa:37:af:10:b7:4e:00"), None);
    }

    #[test]
    fn tcp_tools_on_loopback() {
        let stream = loopback_server(Handler::Stream);
        let echo = loopback_server(Handler::Echo);
        let short = Duration::from_millis(200);

        let s = stream_client(local(stream), 2, short).expect("stream");
        assert!(s.bytes > 0 && s.bytes == s.sent, "{s:?}");
        assert!(s.gbps > 0.0 && s.seconds >= 0.2, "{s:?}");

        let source = loopback_server(Handler::Source);
        let d = download_client(local(source), 2, short).expect("download");
        assert!(d.bytes > 0 && d.sent == 0 && d.streams == 2, "{d:?}");
        assert!(d.gbps > 0.0 && d.seconds >= 0.2, "{d:?}");
        // The server survives its clients going away: a second download works.
        let again = download_client(local(source), 1, short).expect("download again");
        assert!(again.bytes > 0, "{again:?}");

        let rr = rr_client(local(echo), short, Duration::from_millis(50)).expect("rr");
        assert!(rr.transactions > 100, "{rr:?}");
        assert!(rr.min_us <= rr.p50_us && rr.p50_us <= rr.p99_us && rr.p99_us <= rr.max_us);

        let crr = crr_client(local(echo), short, 2).expect("crr");
        assert!(crr.connections > 10 && crr.errors == 0, "{crr:?}");
        assert!(crr.per_second > 0.0);
    }

    #[test]
    fn json_lines_round_trip() {
        let r = UdpGenResult {
            sent: 5,
            seconds: 1.0,
            errors: 0,
            mode: GenMode::Packet,
            last_error: None,
        };
        let line = serde_json::to_string(&r).expect("json");
        assert_eq!(
            line,
            r#"{"sent":5,"seconds":1.0,"errors":0,"mode":"packet"}"#
        );
        assert_eq!(
            serde_json::from_str::<UdpGenResult>(&line).expect("parse"),
            r
        );
    }
}
