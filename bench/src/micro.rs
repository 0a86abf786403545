//! The translator alone, in process: nanoseconds and allocations per packet through
//! [`dovesnap::translator::Translator`], and how it scales with the size of its session table.
//!
//! Frames are built from scratch by `dovesnap_testbed::frame` (Ethernet II / IPv4 / UDP or
//! TCP, checksums by a plain RFC 1071 loop) and every workload checks, before timing it, that
//! the translator accepts its frames and that the translated frames' checksums verify
//! from scratch.
//!
//! Timing: each workload keeps a buffer of frames, restores it from templates (untimed)
//! and times one pass of translator calls over the whole buffer with [`Instant`]; the
//! figure is timed nanoseconds over frames, so neither the restoring copy nor the clock
//! reads of single packets are in it. The translator's `now` is one fixed [`Instant`].
//!
//! Workers (`translator-workers-*`): 1, 2 and up to the CPU count of worker threads, each
//! with its own translator over its own share of the ports
//! ([`dovesnap::translator::Translator::for_workers`]), each fed its own frames: new
//! sessions (SYNs) and established flows (UDP out and in). Reported per worker (per
//! CPU-second of its thread) and in total (over wall time), with the total's scaling
//! over one worker; see [`WorkerRates`].
//!
//! Allocations and memory come from `dovesnap_testbed::alloc::CountingAlloc`, which the `dovesnap-bench` binary
//! installs as its global allocator; without it the allocation figure is reported as not
//! measured and memory falls back to the RSS delta from `/proc/self/statm`.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dovesnap::fastpath::{MAX_SESSIONS, TRANSLATOR_PORTS};
use dovesnap::translator::{Config, EndpointInfo, PortShares, Timeouts, Translator, Verdict};
use dovesnap_testbed::alloc::{
    counting_allocator_installed, thread_allocations, thread_live_bytes,
};
use dovesnap_testbed::frame::{
    set_l4_checksum, verify, write_tcp, write_udp, Csum, Ipv4Header, DF, ETH_LEN, IP_LEN, L4_AT,
    PROTO_TCP, PROTO_UDP,
};
use dovesnap_testbed::rand::XorShift;

use crate::report::Record;

/// What [`run`] measures.
#[derive(Debug, Clone, Copy, Default)]
pub struct MicroOptions {
    /// Fewer runs, smaller tables (no 1M-session table), shorter loops.
    pub quick: bool,
}

/// The translator microbenchmark: one record per workload (see the module docs).
pub fn run(opts: &MicroOptions) -> Vec<Record> {
    let sizes = if opts.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    run_with(&sizes)
}

/// How much [`run_with`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    /// Runs per record (each record's value is the median).
    pub runs: usize,
    /// Established flows of the steady-state workloads (UDP and TCP each).
    pub flows: usize,
    /// Frames per run of each steady-state workload.
    pub steady_packets: usize,
    /// SYNs per fresh translator in the new-session workload (each opens a session and a
    /// mapping, so at most the size of the port range).
    pub syn_batch: usize,
    /// Fresh translators per run of the new-session workload.
    pub syn_batches: usize,
    /// Session-table sizes of the scale workloads.
    pub scale: Vec<usize>,
    /// Sessions, chosen at random, that the scale workloads send through.
    pub scale_subset: usize,
    /// Frames per run of each scale workload.
    pub scale_packets: usize,
    /// Worker counts of the workers section (see [`worker_counts`]).
    pub workers: Vec<usize>,
    /// Batches of `syn_batch` SYNs (at most a worker's share) each worker makes
    /// sessions from per run of the workers section.
    pub worker_batches: usize,
    /// Established-flow frames each worker translates per run of the workers section.
    pub worker_packets: usize,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            runs: 5,
            flows: 256,
            steady_packets: 2_000_000,
            syn_batch: 4096,
            syn_batches: 8,
            scale: vec![10_000, 100_000, 1_000_000],
            scale_subset: 65_536,
            scale_packets: 1_000_000,
            workers: worker_counts(cpus()),
            worker_batches: 32,
            worker_packets: 4_000_000,
        }
    }

    pub fn quick() -> Sizes {
        Sizes {
            runs: 3,
            flows: 256,
            steady_packets: 500_000,
            syn_batch: 4096,
            syn_batches: 4,
            scale: vec![10_000, 100_000],
            scale_subset: 65_536,
            scale_packets: 300_000,
            workers: worker_counts(cpus()),
            worker_batches: 16,
            worker_packets: 1_000_000,
        }
    }
}

/// [`run`] with explicit sizes.
pub fn run_with(sizes: &Sizes) -> Vec<Record> {
    let now = Instant::now();
    let mut records = steady_state(sizes, now);
    records.extend(new_sessions(sizes, now));
    for &n in &sizes.scale {
        records.extend(scale(sizes, n, now));
    }
    records.extend(workers(sizes, now));
    records
}

/// CPUs this process may run on.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Worker counts the workers section measures on a machine with `cpus` CPUs: 1, 2,
/// then the powers of two below `cpus`, and `cpus` itself (1 and 2 always, so the
/// scaling from one worker to two is shown even on one CPU).
pub fn worker_counts(cpus: usize) -> Vec<usize> {
    let mut counts = vec![1, 2];
    let mut n = 4;
    while n < cpus {
        counts.push(n);
        n *= 2;
    }
    if cpus > 2 {
        counts.push(cpus);
    }
    counts
}

/// Resident set size of this process, from `/proc/self/statm`.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

// ---------------------------------------------------------------------------------------
// Frames

/// 64 bytes on the wire with the FCS: 14 + 20 + 8 + 18 bytes of payload in memory.
const UDP_FRAME: usize = 60;
/// A 1500-byte IP packet: 14 + 20 + 20 + 1460 bytes of payload.
const TCP_FRAME: usize = 1514;
const SYN_FRAME: usize = ETH_LEN + IP_LEN + 20;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

const EXT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x01];
/// Containers behind the translator in every workload.
const CONTAINERS: usize = 16;

fn container_ip(c: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, 0, 2 + c as u8)
}

fn container_mac(c: usize) -> [u8; 6] {
    [0x02, 0, 0, 1, 0, c as u8]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4 {
    Udp,
    Tcp { flags: u8 },
}

#[derive(Debug, Clone, Copy)]
struct FrameSpec {
    /// The Ethernet and IPv4 headers: DF, TTL 64, the source port as identification.
    ip: Ipv4Header,
    sport: u16,
    dport: u16,
    l4: L4,
    /// Length of the whole frame.
    len: usize,
    csum: Csum,
}

impl FrameSpec {
    /// `l4` from `sport` to `dport` behind the addresses of `ip` (its protocol,
    /// identification and flags are set here).
    fn new(ip: Ipv4Header, sport: u16, dport: u16, l4: L4, len: usize) -> Self {
        let proto = match l4 {
            L4::Udp => PROTO_UDP,
            L4::Tcp { .. } => PROTO_TCP,
        };
        FrameSpec {
            ip: Ipv4Header {
                proto,
                ident: sport,
                frag: DF,
                ..ip
            },
            sport,
            dport,
            l4,
            len,
            csum: Csum::Full,
        }
    }

    /// From a container (outbound).
    fn out(c: usize, sport: u16, dst: Ipv4Addr, dport: u16, l4: L4, len: usize) -> Self {
        let ip = Ipv4Header {
            eth_src: container_mac(c),
            ..Ipv4Header::new(GW_MAC, container_ip(c), dst, PROTO_UDP)
        };
        FrameSpec::new(ip, sport, dport, l4, len)
    }

    /// From a remote, to the external address (inbound).
    fn inb(src: Ipv4Addr, sport: u16, ext_port: u16, l4: L4, len: usize) -> Self {
        let ip = Ipv4Header {
            eth_src: PEER_MAC,
            ..Ipv4Header::new(UPLINK_MAC, src, EXT, PROTO_UDP)
        };
        FrameSpec::new(ip, sport, ext_port, l4, len)
    }
}

/// Writes the frame `spec` describes into `buf[..spec.len]`, payload bytes counting up.
fn write_frame(buf: &mut [u8], spec: &FrameSpec) {
    let f = &mut buf[..spec.len];
    spec.ip.write(f);
    let hl = match spec.l4 {
        L4::Udp => {
            write_udp(&mut f[L4_AT..], spec.sport, spec.dport);
            8
        }
        L4::Tcp { flags } => {
            write_tcp(&mut f[L4_AT..], spec.sport, spec.dport, flags);
            20
        }
    };
    for (i, b) in f[L4_AT + hl..].iter_mut().enumerate() {
        *b = i as u8;
    }
    set_l4_checksum(f, spec.csum);
}

/// Frames concatenated, `frame_len` bytes each.
fn frames(specs: impl IntoIterator<Item = FrameSpec>, frame_len: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    for s in specs {
        debug_assert_eq!(s.len, frame_len);
        let at = buf.len();
        buf.resize(at + frame_len, 0);
        write_frame(&mut buf[at..], &s);
    }
    buf
}

/// TCP/UDP source port of a frame.
fn src_port(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[L4_AT], frame[L4_AT + 1]])
}

// ---------------------------------------------------------------------------------------
// Translators and timing

fn config(max_sessions: usize) -> Config {
    Config {
        external_ip: EXT,
        uplink_mac: UPLINK_MAC,
        ports: TRANSLATOR_PORTS,
        max_sessions,
        max_sessions_per_endpoint: None,
        max_ports_per_endpoint: None,
        timeouts: Timeouts::default(),
    }
}

fn translator(max_sessions: usize) -> Translator {
    let mut t = Translator::new(config(max_sessions));
    for c in 0..CONTAINERS {
        t.add_endpoint(endpoint(c));
    }
    t
}

fn endpoint(c: usize) -> EndpointInfo {
    EndpointInfo {
        ip: container_ip(c),
        mac: container_mac(c),
        gateway_mac: GW_MAC,
        port: c as u32,
        offload: true,
    }
}

fn is_uplink(v: Verdict) -> bool {
    matches!(v, Verdict::Uplink { .. })
}

fn is_endpoint(v: Verdict) -> bool {
    matches!(v, Verdict::Endpoint { .. })
}

/// Passes one frame through the translator and requires `expect` of the verdict.
fn once(
    frame: &mut [u8],
    what: &str,
    expect: fn(Verdict) -> bool,
    mut step: impl FnMut(&mut [u8]) -> Verdict,
) -> Result<(), String> {
    let v = step(frame);
    if expect(v) {
        Ok(())
    } else {
        Err(format!("{what}: unexpected verdict {v:?}"))
    }
}

/// What a timed loop saw.
#[derive(Debug, Clone, Copy, Default)]
struct Timed {
    elapsed: Duration,
    packets: u64,
    unexpected: u64,
    allocations: u64,
}

impl Timed {
    fn ns_per_packet(&self) -> f64 {
        self.elapsed.as_nanos() as f64 / self.packets.max(1) as f64
    }
}

/// Translates the frames of `templates` (`frame_len` bytes each) in passes over a work
/// copy until at least `packets` frames have gone through. Each pass restores the copy
/// (untimed) and times the translator calls of the whole pass. Counts verdicts failing
/// `expect` and this thread's allocations during the loop.
fn timed(
    templates: &[u8],
    frame_len: usize,
    work: &mut Vec<u8>,
    packets: usize,
    expect: fn(Verdict) -> bool,
    mut step: impl FnMut(&mut [u8]) -> Verdict,
) -> Timed {
    work.clear();
    work.extend_from_slice(templates);
    let mut out = Timed::default();
    let allocs_before = thread_allocations();
    while out.packets < packets as u64 {
        work.copy_from_slice(templates);
        let mut unexpected = 0u64;
        let start = Instant::now();
        for frame in work.chunks_exact_mut(frame_len) {
            unexpected += u64::from(!expect(step(frame)));
        }
        out.elapsed += start.elapsed();
        out.unexpected += unexpected;
        out.packets += (templates.len() / frame_len) as u64;
    }
    out.allocations = thread_allocations() - allocs_before;
    black_box(&work);
    out
}

fn failed(workload: &str, unit: &str, why: &str) -> Record {
    Record::from_runs(workload, "translator", unit, &[])
        .with_note(format!("FAILED, not measured: {why}"))
}

// ---------------------------------------------------------------------------------------
// Workloads

/// The remote of steady-state flow `i`.
fn remote(i: usize) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(198, 51, 100, 1 + (i % 64) as u8),
        5000 + (i / 64) as u16,
    )
}

struct Steady {
    udp_out: Vec<u8>,
    udp_in: Vec<u8>,
    tcp_out: Vec<u8>,
    tcp_out_partial: Vec<u8>,
}

/// Opens `flows` UDP and `flows` TCP sessions (SYN, SYN-ACK, ACK) on `t` and returns the
/// steady-state frame templates, each checked once through a clone of `t`.
fn steady_setup(t: &mut Translator, flows: usize, now: Instant) -> Result<Steady, String> {
    let udp_specs: Vec<FrameSpec> = (0..flows)
        .map(|i| {
            let (r, rp) = remote(i);
            FrameSpec::out(i % CONTAINERS, 40_000 + i as u16, r, rp, L4::Udp, UDP_FRAME)
        })
        .collect();
    let udp_out = frames(udp_specs.iter().copied(), UDP_FRAME);
    let mut udp_in_specs = Vec::with_capacity(flows);
    for (i, f) in udp_out.chunks_exact(UDP_FRAME).enumerate() {
        let mut f = f.to_vec();
        once(&mut f, "udp first packet", is_uplink, |f| {
            t.outbound(now, f)
        })?;
        let (r, rp) = remote(i);
        udp_in_specs.push(FrameSpec::inb(r, rp, src_port(&f), L4::Udp, UDP_FRAME));
    }
    let udp_in = frames(udp_in_specs, UDP_FRAME);

    let tcp_spec = |i: usize, flags: u8, len: usize| {
        let (r, rp) = remote(i);
        FrameSpec::out(
            i % CONTAINERS,
            50_000 + i as u16,
            r,
            rp,
            L4::Tcp { flags },
            len,
        )
    };
    for i in 0..flows {
        let mut syn = frames([tcp_spec(i, SYN, SYN_FRAME)], SYN_FRAME);
        once(&mut syn, "tcp syn", is_uplink, |f| t.outbound(now, f))?;
        let (r, rp) = remote(i);
        let syn_ack = FrameSpec::inb(
            r,
            rp,
            src_port(&syn),
            L4::Tcp { flags: SYN | ACK },
            SYN_FRAME,
        );
        let mut syn_ack = frames([syn_ack], SYN_FRAME);
        once(&mut syn_ack, "tcp syn-ack", is_endpoint, |f| {
            t.inbound(now, f)
        })?;
        let mut ack = frames([tcp_spec(i, ACK, SYN_FRAME)], SYN_FRAME);
        once(&mut ack, "tcp ack", is_uplink, |f| t.outbound(now, f))?;
    }
    let tcp_out = frames(
        (0..flows).map(|i| tcp_spec(i, ACK | PSH, TCP_FRAME)),
        TCP_FRAME,
    );
    let tcp_out_partial = frames(
        (0..flows).map(|i| FrameSpec {
            csum: Csum::Partial,
            ..tcp_spec(i, ACK | PSH, TCP_FRAME)
        }),
        TCP_FRAME,
    );
    let steady = Steady {
        udp_out,
        udp_in,
        tcp_out,
        tcp_out_partial,
    };
    let sessions = t.session_count();
    if sessions != 2 * flows {
        return Err(format!(
            "{sessions} sessions after setup, expected {}",
            2 * flows
        ));
    }
    // Check every template once (steady-state frames only refresh their sessions).
    let check = t;
    let checks: [(&[u8], usize, bool); 4] = [
        (&steady.udp_out, UDP_FRAME, true),
        (&steady.udp_in, UDP_FRAME, false),
        (&steady.tcp_out, TCP_FRAME, true),
        (&steady.tcp_out_partial, TCP_FRAME, true),
    ];
    for (templates, len, outbound) in checks {
        for f in templates.chunks_exact(len) {
            let mut f = f.to_vec();
            if outbound {
                once(&mut f, "template", is_uplink, |f| check.outbound(now, f))?;
            } else {
                once(&mut f, "template", is_endpoint, |f| check.inbound(now, f))?;
            }
            verify(&f).map_err(|e| format!("translated template: {e}"))?;
        }
    }
    if check.session_count() != sessions {
        return Err("steady-state frames created sessions".into());
    }
    Ok(steady)
}

/// Outbound / inbound UDP and outbound TCP over established flows, and allocations per
/// packet over all of them.
fn steady_state(sizes: &Sizes, now: Instant) -> Vec<Record> {
    const WORKLOADS: [&str; 4] = [
        "translator-outbound",
        "translator-inbound",
        "translator-outbound-tcp",
        "translator-outbound-tcp-partial-csum",
    ];
    let mut t = translator(MAX_SESSIONS);
    let steady = match steady_setup(&mut t, sizes.flows, now) {
        Ok(s) => s,
        Err(e) => {
            let mut r: Vec<Record> = WORKLOADS
                .iter()
                .map(|w| failed(w, "ns/packet", &e))
                .collect();
            r.push(failed("translator-allocations", "allocs/packet", &e));
            return r;
        }
    };
    let counting = counting_allocator_installed();
    let mut work = Vec::new();
    let mut runs: [Vec<f64>; 4] = Default::default();
    let mut alloc_runs = Vec::new();
    let mut totals = [Timed::default(); 4];
    // Warm-up, then runs with the workloads interleaved.
    for run in 0..=sizes.runs {
        let packets = if run == 0 {
            sizes.steady_packets / 10
        } else {
            sizes.steady_packets
        };
        let results = [
            timed(
                &steady.udp_out,
                UDP_FRAME,
                &mut work,
                packets,
                is_uplink,
                |f| t.outbound(now, f),
            ),
            timed(
                &steady.udp_in,
                UDP_FRAME,
                &mut work,
                packets,
                is_endpoint,
                |f| t.inbound(now, f),
            ),
            timed(
                &steady.tcp_out,
                TCP_FRAME,
                &mut work,
                packets,
                is_uplink,
                |f| t.outbound(now, f),
            ),
            timed(
                &steady.tcp_out_partial,
                TCP_FRAME,
                &mut work,
                packets,
                is_uplink,
                |f| t.outbound(now, f),
            ),
        ];
        if run == 0 {
            continue;
        }
        let run_allocs: u64 = results.iter().map(|r| r.allocations).sum();
        let run_packets: u64 = results.iter().map(|r| r.packets).sum();
        alloc_runs.push(run_allocs as f64 / run_packets as f64);
        for (i, r) in results.iter().enumerate() {
            runs[i].push(r.ns_per_packet());
            totals[i].packets += r.packets;
            totals[i].unexpected += r.unexpected;
            totals[i].allocations += r.allocations;
        }
    }
    let flows = sizes.flows;
    let common = format!(
        "Translator call only: passes over {flows} frames restored from templates untimed \
         between passes, each pass timed as a whole; fixed `now`; {} frames per run; \
         ports {}..={}, max_sessions {MAX_SESSIONS}",
        sizes.steady_packets,
        TRANSLATOR_PORTS.start(),
        TRANSLATOR_PORTS.end()
    );
    let setups = [
        format!(
            "Outbound UDP, 60-byte frames (64 B on the wire), {flows} established flows from \
             {CONTAINERS} containers, one EIM mapping each."
        ),
        format!(
            "Inbound UDP replies on the same {flows} sessions, 60-byte frames (64 B on the \
             wire)."
        ),
        format!(
            "Outbound TCP ACK|PSH segments, 1514-byte frames (1500-byte IP packets), {flows} \
             established sessions (SYN, SYN-ACK, ACK seen); complete checksums, so the \
             translator updates them incrementally (RFC 1624)."
        ),
        "As translator-outbound-tcp but the TCP checksum holds only the pseudo-header sum \
         (a container's transmit offload), so the translator sums all 1480 bytes."
            .to_string(),
    ];
    let mut records = Vec::new();
    for i in 0..4 {
        let r = if totals[i].unexpected > 0 {
            failed(
                WORKLOADS[i],
                "ns/packet",
                &format!("{} frames got an unexpected verdict", totals[i].unexpected),
            )
        } else {
            Record::from_runs(WORKLOADS[i], "translator", "ns/packet", &runs[i])
                .with_note(format!("{} {common}.", setups[i]))
        };
        records.push(r);
    }
    let packets: u64 = totals.iter().map(|t| t.packets).sum();
    let per_workload = WORKLOADS
        .iter()
        .zip(&totals)
        .map(|(w, t)| format!("{w} {}", t.allocations))
        .collect::<Vec<_>>()
        .join(", ");
    records.push(if counting {
        Record::from_runs(
            "translator-allocations",
            "translator",
            "allocs/packet",
            &alloc_runs,
        )
        .with_note(format!(
            "Allocations by the benchmark thread (counting global allocator) during the \
                 steady-state loops of the four workloads above: {packets} frames in all; \
                 allocations per workload over all runs: {per_workload}; each run's value is \
                 its allocations over its frames of all four workloads."
        ))
    } else {
        Record::from_runs("translator-allocations", "translator", "allocs/packet", &[]).with_note(
            "Not measured: dovesnap_bench::micro::CountingAlloc is not the global \
                 allocator of this binary (a deliberate Vec allocation did not move its \
                 counter).",
        )
    });
    records
}

/// `batch` outbound SYNs, each from a fresh inside port (as a client's ephemeral
/// ports), so each needs a new session and a new mapping.
fn syn_templates(batch: usize) -> Vec<u8> {
    frames(
        (0..batch).map(|i| {
            let (r, rp) = remote(i);
            FrameSpec::out(
                i % CONTAINERS,
                20_000 + (i / CONTAINERS) as u16,
                r,
                rp,
                L4::Tcp { flags: SYN },
                SYN_FRAME,
            )
        }),
        SYN_FRAME,
    )
}

/// Drops every session of `t` (its containers leave and come back).
fn empty(t: &mut Translator) {
    for c in 0..CONTAINERS {
        t.remove_endpoint(container_ip(c));
        t.add_endpoint(endpoint(c));
    }
}

/// ns per SYN that opens a session and a mapping, on fresh translators.
fn new_sessions(sizes: &Sizes, now: Instant) -> Vec<Record> {
    const WORKLOAD: &str = "translator-new-session";
    let batch = sizes.syn_batch;
    let range = usize::from(TRANSLATOR_PORTS.end() - TRANSLATOR_PORTS.start()) + 1;
    if batch == 0 || batch > range {
        return vec![failed(
            WORKLOAD,
            "ns/packet",
            &format!("a batch of {batch} SYNs needs 1..={range} fresh mappings"),
        )];
    }
    let templates = syn_templates(batch);
    let mut work = templates.clone();
    let mut runs = Vec::new();
    let mut cold = Vec::new();
    let mut unexpected = 0u64;
    for run in 0..=sizes.runs {
        // Batch 0 goes through a fresh translator (its tables' pages not yet touched);
        // the timed batches reuse it, emptied untimed in between.
        let mut t = translator(MAX_SESSIONS);
        let mut elapsed = Duration::ZERO;
        for b in 0..=sizes.syn_batches {
            if b > 0 {
                empty(&mut t);
            }
            work.copy_from_slice(&templates);
            let start = Instant::now();
            for f in work.chunks_exact_mut(SYN_FRAME) {
                unexpected += u64::from(!is_uplink(t.outbound(now, f)));
            }
            let took = start.elapsed();
            if b == 0 {
                cold.push(took.as_nanos() as f64 / batch as f64);
            } else {
                elapsed += took;
            }
            if t.session_count() != batch {
                unexpected += 1;
            }
            if let Some(f) = work.chunks_exact(SYN_FRAME).next() {
                if verify(f).is_err() {
                    unexpected += 1;
                }
            }
        }
        drop(black_box(t));
        if run > 0 {
            runs.push(elapsed.as_nanos() as f64 / (sizes.syn_batches * batch) as f64);
        }
    }
    if unexpected > 0 {
        return vec![failed(
            WORKLOAD,
            "ns/packet",
            &format!("{unexpected} SYNs were not translated into new sessions"),
        )];
    }
    vec![
        Record::from_runs(WORKLOAD, "translator", "ns/packet", &runs).with_note(format!(
            "Outbound TCP SYNs (54-byte frames), each from a fresh inside port, so each \
             creates a session and an EIM mapping (port from the pool); per run {} batches of \
             {batch} SYNs through one translator (max_sessions {MAX_SESSIONS}, ports {}..={}), \
             emptied (remove_endpoint) untimed before each batch, so the table fills from \
             empty over memory already touched; translator call only, timed per batch; fixed \
             `now`. The first batch on a freshly made translator, page faults of its \
             preallocated tables included, took {:.0} ns per SYN (median).",
            sizes.syn_batches,
            TRANSLATOR_PORTS.start(),
            TRANSLATOR_PORTS.end(),
            crate::report::median(&cold),
        )),
    ]
}

/// Remote peers per inside endpoint in the scale workloads: 1M sessions need 4000 inside
/// endpoints, which fits the default port range (31,744 ports) under endpoint-independent
/// mapping.
const REMOTES_PER_ENDPOINT: usize = 250;

/// Session `i` of a scale table: inside endpoint `i / 250` (container, port) talking to
/// its `i % 250`-th remote.
fn scale_spec(i: usize) -> FrameSpec {
    let e = i / REMOTES_PER_ENDPOINT;
    let j = i % REMOTES_PER_ENDPOINT;
    // 198.18.0.0/15; j * 7919 is a bijection mod 2^17, so remotes differ per endpoint.
    let r = Ipv4Addr::from(0xc612_0000 | ((j as u32 * 7919 + e as u32) & 0x1_ffff));
    FrameSpec::out(
        e % CONTAINERS,
        10_000 + (e / CONTAINERS) as u16,
        r,
        443 + (j % 7) as u16,
        L4::Udp,
        UDP_FRAME,
    )
}

/// A table of `n` live UDP sessions: memory per session, and outbound ns per packet
/// over a random subset.
fn scale(sizes: &Sizes, n: usize, now: Instant) -> Vec<Record> {
    let ns_name = format!("translator-outbound-at-{n}-sessions");
    let mem_name = format!("translator-memory-at-{n}-sessions");
    let endpoints = n.div_ceil(REMOTES_PER_ENDPOINT);
    let range = usize::from(TRANSLATOR_PORTS.end() - TRANSLATOR_PORTS.start()) + 1;
    if n == 0 || endpoints > range {
        let why = format!(
            "{n} sessions at {REMOTES_PER_ENDPOINT} remotes per inside endpoint need \
             {endpoints} mappings; the port range has {range}"
        );
        return vec![
            failed(&ns_name, "ns/packet", &why),
            failed(&mem_name, "bytes/session", &why),
        ];
    }
    let counting = counting_allocator_installed();
    let subset = sizes.scale_subset.min(n);
    let mut ns_runs = Vec::new();
    let mut mem_runs = Vec::new();
    let mut rss_runs = Vec::new();
    let mut fill_ns = Vec::new();
    let mut problem = None;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let mut frame = [0u8; UDP_FRAME];
    let mut work = Vec::new();
    for _ in 0..sizes.runs {
        let live0 = thread_live_bytes();
        let rss0 = rss_bytes();
        let mut t = translator(n);
        let start = Instant::now();
        for i in 0..n {
            write_frame(&mut frame, &scale_spec(i));
            if !is_uplink(t.outbound(now, &mut frame)) {
                problem.get_or_insert_with(|| format!("filling: session {i} was not created"));
            }
        }
        fill_ns.push(start.elapsed().as_nanos() as f64 / n as f64);
        let live1 = thread_live_bytes();
        let rss1 = rss_bytes();
        if t.session_count() != n {
            problem.get_or_insert_with(|| format!("{} sessions, expected {n}", t.session_count()));
        }
        if counting {
            mem_runs.push((live1 - live0) as f64 / n as f64);
        }
        if let (Some(a), Some(b)) = (rss0, rss1) {
            rss_runs.push((b as f64 - a as f64) / n as f64);
        }
        // A random subset, in random order (partial Fisher-Yates).
        let mut ids: Vec<u32> = (0..n as u32).collect();
        for k in 0..subset {
            let pick = k + rng.below(n - k);
            ids.swap(k, pick);
        }
        let templates = frames(
            ids[..subset].iter().map(|&i| scale_spec(i as usize)),
            UDP_FRAME,
        );
        drop(ids);
        let r = timed(
            &templates,
            UDP_FRAME,
            &mut work,
            sizes.scale_packets,
            is_uplink,
            |f| t.outbound(now, f),
        );
        if r.unexpected > 0 {
            problem.get_or_insert_with(|| format!("{} unexpected verdicts", r.unexpected));
        }
        if t.session_count() != n {
            problem.get_or_insert_with(|| "the timed frames changed the table".into());
        }
        ns_runs.push(r.ns_per_packet());
        drop(black_box(t));
    }
    if let Some(why) = problem {
        return vec![
            failed(&ns_name, "ns/packet", &why),
            failed(&mem_name, "bytes/session", &why),
        ];
    }
    let setup = format!(
        "{n} live UDP sessions: {endpoints} inside endpoints ({CONTAINERS} containers) with \
         {REMOTES_PER_ENDPOINT} remotes each, one EIM mapping per endpoint; max_sessions {n}, \
         production ports {}..={}",
        TRANSLATOR_PORTS.start(),
        TRANSLATOR_PORTS.end()
    );
    let fill = crate::report::median(&fill_ns);
    let rss = crate::report::median(&rss_runs);
    let ns = Record::from_runs(&ns_name, "translator", "ns/packet", &ns_runs).with_note(format!(
        "{setup}. Outbound 60-byte UDP frames over {subset} sessions picked at random, in \
         random order; translator call only, passes restored untimed; {} frames per run; \
         fixed `now`. Filling the table took {fill:.0} ns per session (median; frame \
         building included).",
        sizes.scale_packets
    ));
    let mem = if counting {
        Record::from_runs(&mem_name, "translator", "bytes/session", &mem_runs).with_note(format!(
            "{setup}. Heap bytes live after building and filling the translator, divided by \
             {n} (counting allocator, this thread; includes the capacity reserved up front \
             for max_sessions). RSS delta for comparison: {rss:.0} bytes/session (median; \
             understated after the first run, the allocator reuses freed memory)."
        ))
    } else {
        Record::from_runs(&mem_name, "translator", "bytes/session", &rss_runs).with_note(format!(
            "{setup}. RSS delta (/proc/self/statm) over building and filling, divided by {n}; \
             the counting allocator is not installed, so heap bytes are not measured (RSS \
             misses untouched reserved capacity and memory the allocator reused)."
        ))
    };
    vec![ns, mem]
}

// ---------------------------------------------------------------------------------------
// Workers: one translator per thread, each over its own share of the ports

/// When one worker ran one timed phase (a batch of SYNs or a round of established-flow
/// frames), the CPU time its thread spent in it, and how much it did.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: Instant,
    end: Instant,
    cpu: Duration,
    work: u64,
}

/// CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What one worker thread measured in one run: its new-session batches and its
/// established-flow rounds.
#[derive(Debug, Default)]
struct WorkerSpans {
    sessions: Vec<Span>,
    packets: Vec<Span>,
}

/// Rates of one run at one worker count, from the workers' spans: the total is all the
/// workers' work over the wall time of each phase (the first start to the last end,
/// phases summed: the workers start each phase together), what this machine did; per
/// worker, its own work over its own thread's CPU time, averaged over the workers: what
/// one worker does per CPU it holds, whatever else runs on the machine (on a host with
/// a CPU per worker, the total approaches workers × per worker unless they slow each
/// other down, which the per-worker figure at several workers against one shows).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerRates {
    pub total: f64,
    pub per_worker: f64,
}

impl WorkerRates {
    fn of(workers: &[Vec<Span>]) -> WorkerRates {
        let phases = workers.iter().map(Vec::len).min().unwrap_or(0);
        let (mut work, mut wall) = (0u64, Duration::ZERO);
        for p in 0..phases {
            let start = workers.iter().map(|w| w[p].start).min().expect("a worker");
            let end = workers.iter().map(|w| w[p].end).max().expect("a worker");
            wall += end - start;
            work += workers.iter().map(|w| w[p].work).sum::<u64>();
        }
        let rate = |work: u64, wall: Duration| work as f64 / wall.as_secs_f64().max(1e-9);
        let per_worker = workers
            .iter()
            .map(|w| {
                let spent = w.iter().map(|s| s.cpu).sum::<Duration>();
                rate(w.iter().map(|s| s.work).sum(), spent)
            })
            .sum::<f64>()
            / workers.len().max(1) as f64;
        WorkerRates {
            total: rate(work, wall),
            per_worker,
        }
    }
}

/// One worker thread: new sessions in `batches` batches of `syn` SYNs (the table
/// emptied untimed in between), then `rounds` rounds of established UDP frames, out and
/// in, over its own flows; every phase starts at the barrier with the other workers.
/// Checks that each session's external port is in `share`.
#[allow(clippy::too_many_arguments)]
fn worker(
    mut t: Translator,
    share: &std::ops::RangeInclusive<u16>,
    barrier: &std::sync::Barrier,
    syn: &[u8],
    batches: usize,
    rounds: usize,
    packets_per_round: usize,
    flows: usize,
    now: Instant,
) -> Result<WorkerSpans, String> {
    for c in 0..CONTAINERS {
        t.add_endpoint(endpoint(c));
    }
    let mut spans = WorkerSpans::default();
    let mut work = syn.to_vec();
    let mut problem = None;
    // Batch 0 warms the tables' pages, untimed.
    for b in 0..=batches {
        empty(&mut t);
        work.copy_from_slice(syn);
        barrier.wait();
        let (start, cpu0) = (Instant::now(), thread_cpu());
        let mut created = 0u64;
        for f in work.chunks_exact_mut(SYN_FRAME) {
            created += u64::from(is_uplink(t.outbound(now, f)));
        }
        let (end, cpu) = (Instant::now(), thread_cpu() - cpu0);
        let n = syn.len() / SYN_FRAME;
        if created != n as u64 || t.session_count() != n {
            problem.get_or_insert(format!("{created} of {n} SYNs made sessions"));
        }
        if let Some(p) = work
            .chunks_exact(SYN_FRAME)
            .map(src_port)
            .find(|p| !share.contains(p))
        {
            problem.get_or_insert(format!("port {p} outside the worker's share {share:?}"));
        }
        if b > 0 {
            spans.sessions.push(Span {
                start,
                end,
                cpu,
                work: created,
            });
        }
    }
    empty(&mut t);
    let steady = steady_setup(&mut t, flows, now)?;
    let mut scratch = Vec::new();
    for r in 0..=rounds {
        barrier.wait();
        let (start, cpu0) = (Instant::now(), thread_cpu());
        let out = timed(
            &steady.udp_out,
            UDP_FRAME,
            &mut scratch,
            packets_per_round / 2,
            is_uplink,
            |f| t.outbound(now, f),
        );
        let inb = timed(
            &steady.udp_in,
            UDP_FRAME,
            &mut scratch,
            packets_per_round / 2,
            is_endpoint,
            |f| t.inbound(now, f),
        );
        let (end, cpu) = (Instant::now(), thread_cpu() - cpu0);
        if out.unexpected + inb.unexpected > 0 {
            problem.get_or_insert(format!(
                "{} established frames got an unexpected verdict",
                out.unexpected + inb.unexpected
            ));
        }
        if r > 0 {
            spans.packets.push(Span {
                start,
                end,
                cpu,
                work: out.packets + inb.packets,
            });
        }
    }
    drop(black_box(t));
    problem.map_or(Ok(spans), Err)
}

/// One run at `n` workers: `n` translators from [`Translator::for_workers`] over the
/// production range, one thread each.
fn run_workers(
    n: usize,
    sizes: &Sizes,
    syn: &[u8],
    now: Instant,
) -> Result<(WorkerRates, WorkerRates), String> {
    let translators =
        Translator::for_workers(config(MAX_SESSIONS), n).map_err(|e| e.to_string())?;
    let shares = PortShares::new(&TRANSLATOR_PORTS, n).map_err(|e| e.to_string())?;
    let barrier = std::sync::Barrier::new(n);
    let rounds = 8;
    let results: Vec<Result<WorkerSpans, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = translators
            .into_iter()
            .zip(shares.iter())
            .map(|(t, share)| {
                let barrier = &barrier;
                s.spawn(move || {
                    worker(
                        t,
                        &share,
                        barrier,
                        syn,
                        sizes.worker_batches,
                        rounds,
                        sizes.worker_packets / rounds,
                        sizes.flows,
                        now,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a worker panicked".into())))
            .collect()
    });
    let spans = results.into_iter().collect::<Result<Vec<_>, String>>()?;
    let sessions: Vec<Vec<Span>> = spans.iter().map(|w| w.sessions.clone()).collect();
    let packets: Vec<Vec<Span>> = spans.iter().map(|w| w.packets.clone()).collect();
    Ok((WorkerRates::of(&sessions), WorkerRates::of(&packets)))
}

/// Sessions/s and packets/s at each worker count of `sizes.workers`, per worker and in
/// total, and the total's scaling against one worker (see [`worker_records`]).
fn workers(sizes: &Sizes, now: Instant) -> Vec<Record> {
    let Some(&most) = sizes.workers.iter().max() else {
        return Vec::new();
    };
    // The same batch at every count: at most the smallest share of the most workers.
    let smallest = PortShares::new(&TRANSLATOR_PORTS, most)
        .map(|s| s.iter().map(|r| r.len()).min().unwrap_or(0))
        .unwrap_or(0);
    let batch = sizes.syn_batch.min(smallest);
    let syn = syn_templates(batch);
    // Runs interleave the counts, so one worker and two see the same machine.
    let mut rates: Vec<Vec<(WorkerRates, WorkerRates)>> = vec![Vec::new(); sizes.workers.len()];
    let mut problem = None;
    for _ in 0..sizes.runs {
        for (k, &n) in sizes.workers.iter().enumerate() {
            match run_workers(n, sizes, &syn, now) {
                Ok(r) => rates[k].push(r),
                Err(e) => {
                    problem.get_or_insert(format!("{n} workers: {e}"));
                }
            }
        }
    }
    let setup = format!(
        "Each worker a thread (not pinned) with its own translator from \
         Translator::for_workers over its share of ports {}..={} (max_sessions {MAX_SESSIONS} \
         split among them), no lock between them; {} CPUs here. New sessions: per run {} \
         batches of {batch} outbound SYNs per worker, each a new session and mapping from \
         the worker's share (every port checked), the table emptied untimed between \
         batches. Packets: {} established-flow UDP frames (60 bytes) per worker per run, \
         half outbound and half inbound replies, over {} flows of its own, passes restored \
         untimed but inside the wall time. Total: all workers' work over the wall time of \
         each phase (workers start together at a barrier), what this machine did with \
         whatever else ran on it; per worker: each worker's work over its thread's CPU \
         time (CLOCK_THREAD_CPUTIME_ID), the mean over the workers; fixed `now`",
        TRANSLATOR_PORTS.start(),
        TRANSLATOR_PORTS.end(),
        cpus(),
        sizes.worker_batches,
        sizes.worker_packets,
        sizes.flows,
    );
    worker_records(&sizes.workers, &rates, problem.as_deref(), &setup)
}

/// The workers section's records, from each count's per-run (sessions, packets)
/// rates: per count `translator-workers-N-{sessions,packets}` (total) and
/// `...-per-worker`, and for counts above one `...-scaling`, the total over one
/// worker's total in the same run (median over runs).
pub fn worker_records(
    counts: &[usize],
    rates: &[Vec<(WorkerRates, WorkerRates)>],
    problem: Option<&str>,
    setup: &str,
) -> Vec<Record> {
    let mut records = Vec::new();
    let one = counts.iter().position(|&n| n == 1).map(|k| &rates[k]);
    for (k, &n) in counts.iter().enumerate() {
        for (what, unit, pick) in [("sessions", "sessions/s", 0), ("packets", "packets/s", 1)] {
            let get = |r: &(WorkerRates, WorkerRates)| if pick == 0 { r.0 } else { r.1 };
            let name = format!("translator-workers-{n}-{what}");
            let per_name = format!("{name}-per-worker");
            let scale_name = format!("{name}-scaling");
            if let Some(why) = problem {
                records.push(failed(&name, unit, why));
                records.push(failed(&per_name, unit, why));
                if n > 1 {
                    records.push(failed(&scale_name, "x", why));
                }
                continue;
            }
            let totals: Vec<f64> = rates[k].iter().map(|r| get(r).total).collect();
            let per: Vec<f64> = rates[k].iter().map(|r| get(r).per_worker).collect();
            records.push(
                Record::from_runs(&name, "translator", unit, &totals)
                    .with_note(format!("{n} worker(s), {what} in total. {setup}.")),
            );
            records.push(
                Record::from_runs(&per_name, "translator", unit, &per).with_note(format!(
                    "{n} worker(s), {what} per worker per CPU-second of its thread (mean over \
                     the workers). {setup}."
                )),
            );
            if n > 1 {
                let ratios: Vec<f64> = one
                    .map(|base| {
                        base.iter()
                            .zip(&rates[k])
                            .map(|(b, r)| get(r).total / get(b).total)
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(
                    Record::from_runs(&scale_name, "translator", "x", &ratios).with_note(format!(
                        "translator-workers-{n}-{what} over translator-workers-1-{what}, \
                             run by run (ideal: {n}.0). {setup}."
                    )),
                );
            }
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: dovesnap_testbed::alloc::CountingAlloc = dovesnap_testbed::alloc::CountingAlloc;

    fn tiny() -> Sizes {
        Sizes {
            runs: 2,
            flows: 16,
            steady_packets: 2_000,
            syn_batch: 256,
            syn_batches: 2,
            scale: vec![1_000, 2_600],
            scale_subset: 500,
            scale_packets: 2_000,
            workers: vec![1, 2],
            worker_batches: 2,
            worker_packets: 2_000,
        }
    }

    #[test]
    fn frames_verify_and_corruption_is_caught() {
        let spec = FrameSpec::out(1, 4000, Ipv4Addr::new(198, 51, 100, 1), 53, L4::Udp, 60);
        let mut f = frames([spec], 60);
        verify(&f).unwrap();
        f[50] ^= 1;
        assert!(verify(&f).is_err());
        let tcp = FrameSpec::out(
            1,
            4000,
            Ipv4Addr::new(198, 51, 100, 1),
            80,
            L4::Tcp { flags: ACK },
            TCP_FRAME,
        );
        let f = frames([tcp], TCP_FRAME);
        verify(&f).unwrap();
        let partial = frames(
            [FrameSpec {
                csum: Csum::Partial,
                ..tcp
            }],
            TCP_FRAME,
        );
        assert!(verify(&partial).is_err());
    }

    #[test]
    fn tiny_run_measures_everything() {
        let records = run_with(&tiny());
        let names: Vec<&str> = records.iter().map(|r| r.workload.as_str()).collect();
        assert_eq!(
            names,
            [
                "translator-outbound",
                "translator-inbound",
                "translator-outbound-tcp",
                "translator-outbound-tcp-partial-csum",
                "translator-allocations",
                "translator-new-session",
                "translator-outbound-at-1000-sessions",
                "translator-memory-at-1000-sessions",
                "translator-outbound-at-2600-sessions",
                "translator-memory-at-2600-sessions",
                "translator-workers-1-sessions",
                "translator-workers-1-sessions-per-worker",
                "translator-workers-1-packets",
                "translator-workers-1-packets-per-worker",
                "translator-workers-2-sessions",
                "translator-workers-2-sessions-per-worker",
                "translator-workers-2-sessions-scaling",
                "translator-workers-2-packets",
                "translator-workers-2-packets-per-worker",
                "translator-workers-2-packets-scaling",
            ]
        );
        for r in &records {
            assert_eq!(r.runs, 2, "{r:?}");
            assert!(
                r.note.as_deref().is_some_and(|n| !n.contains("FAILED")),
                "{r:?}"
            );
            if r.unit == "allocs/packet" {
                assert_eq!(r.value, 0.0, "{r:?}");
            } else {
                assert!(r.value > 0.0 && r.value.is_finite(), "{r:?}");
            }
        }
    }

    fn print_run(quick: bool) {
        let start = Instant::now();
        for r in run(&MicroOptions { quick }) {
            println!(
                "{:<45} {:>12.1} {:<14} min {:>10.1} max {:>10.1} runs {}\n    {}",
                r.workload,
                r.value,
                r.unit,
                r.min,
                r.max,
                r.runs,
                r.note.unwrap_or_default()
            );
        }
        println!("took {:?}", start.elapsed());
    }

    /// `cargo test --release -p dovesnap-bench --lib micro::tests::print_quick -- --ignored --nocapture`
    #[test]
    #[ignore = "a benchmark: run in release mode, alone"]
    fn print_quick_run() {
        print_run(true);
    }

    #[test]
    #[ignore = "a benchmark: run in release mode, alone"]
    fn print_full_run() {
        print_run(false);
    }

    #[test]
    fn worker_counts_go_up_to_the_cpus() {
        assert_eq!(worker_counts(1), [1, 2]);
        assert_eq!(worker_counts(2), [1, 2]);
        assert_eq!(worker_counts(3), [1, 2, 3]);
        assert_eq!(worker_counts(4), [1, 2, 4]);
        assert_eq!(worker_counts(6), [1, 2, 4, 6]);
        assert_eq!(worker_counts(16), [1, 2, 4, 8, 16]);
        assert_eq!(worker_counts(24), [1, 2, 4, 8, 16, 24]);
    }

    #[test]
    fn worker_rates_are_work_over_wall_time() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let span = |from: u64, to: u64, work: u64| Span {
            start: at(from),
            end: at(to),
            cpu: Duration::from_millis(to - from),
            work,
        };
        // Two workers side by side, 100 each in 100 ms, twice.
        let both = [
            vec![span(0, 100, 100), span(200, 300, 100)],
            vec![span(0, 100, 100), span(200, 300, 100)],
        ];
        let r = WorkerRates::of(&both);
        assert!((r.total - 2000.0).abs() < 1e-6, "{r:?}");
        assert!((r.per_worker - 1000.0).abs() < 1e-6, "{r:?}");
        // One after the other (one CPU): the total is no better than one worker.
        let serial = [vec![span(0, 100, 100)], vec![span(100, 200, 100)]];
        let r = WorkerRates::of(&serial);
        assert!((r.total - 1000.0).abs() < 1e-6, "{r:?}");
        assert!((r.per_worker - 1000.0).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn worker_records_report_totals_per_worker_and_scaling() {
        let rates = |s: f64, p: f64, per: f64| {
            (
                WorkerRates {
                    total: s,
                    per_worker: s * per,
                },
                WorkerRates {
                    total: p,
                    per_worker: p * per,
                },
            )
        };
        let counts = [1, 2];
        let runs = [
            vec![rates(100.0, 1000.0, 1.0), rates(110.0, 900.0, 1.0)],
            vec![rates(190.0, 1900.0, 0.5), rates(231.0, 1800.0, 0.5)],
        ];
        let r = worker_records(&counts, &runs, None, "setup");
        let by = |name: &str| r.iter().find(|r| r.workload == name).unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(by("translator-workers-1-sessions").value, 105.0);
        assert_eq!(by("translator-workers-1-sessions").unit, "sessions/s");
        assert_eq!(by("translator-workers-2-packets").unit, "packets/s");
        assert_eq!(by("translator-workers-2-sessions-per-worker").value, 105.25);
        // Run by run: 190/100 and 231/110, median 2.0; packets 1.9 and 2.0.
        let s = by("translator-workers-2-sessions-scaling");
        assert_eq!((s.unit.as_str(), s.runs), ("x", 2));
        assert!((s.value - 2.0).abs() < 1e-9, "{s:?}");
        let p = by("translator-workers-2-packets-scaling");
        assert!((p.value - 1.95).abs() < 1e-9, "{p:?}");
        assert!(p.note.as_deref().unwrap().contains("ideal: 2.0"));
        assert!(r.iter().all(|r| r.path == "translator"));
        // A failure marks every record.
        let r = worker_records(&counts, &[vec![], vec![]], Some("boom"), "setup");
        assert_eq!(r.len(), 10);
        assert!(r
            .iter()
            .all(|r| r.runs == 0 && r.note.as_deref().unwrap().contains("FAILED")));
    }

    #[test]
    fn too_many_sessions_for_the_port_range_is_reported() {
        let sizes = Sizes { runs: 1, ..tiny() };
        let range = usize::from(TRANSLATOR_PORTS.end() - TRANSLATOR_PORTS.start()) + 1;
        let r = scale(&sizes, (range + 1) * REMOTES_PER_ENDPOINT, Instant::now());
        assert_eq!(r.len(), 2);
        assert!(r
            .iter()
            .all(|r| r.runs == 0 && r.note.as_deref().unwrap().contains("FAILED")));
    }
}
