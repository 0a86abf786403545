//! Prometheus metrics (opt-in: `dovesnap daemon --metrics [ADDR]`, loopback by default).
//!
//! `GET /metrics` answers the text exposition format (version 0.0.4), rendered from the
//! same [`Status`] snapshot as `dovesnap status`: networks and endpoints, and for the
//! nat-fast path per-endpoint and per-network frames and bytes, per-uplink sessions,
//! translations, session churn and drops by reason, XDP decisions and data-plane
//! counters.
//!
//! The listener is open to anyone who can reach its address, so it is bounded: at most
//! [`MAX_METRICS_CONNECTIONS`] connections at once (more are closed as soon as they are
//! accepted and counted in `dovesnap_metrics_connections_rejected_total`), request
//! headers within [`HEADER_TIMEOUT`] (which also closes idle keep-alive connections),
//! each connection at most [`CONNECTION_TIMEOUT`]. A request never reads the driver:
//! it is answered from a rendered snapshot, which one background task refreshes when a
//! request finds it older than [`SNAPSHOT_MAX_AGE`] (so at most once per that period,
//! however many clients scrape); the request waits up to [`SNAPSHOT_WAIT`] for the new
//! one and else answers with the one it has. The driver's lock and the data plane's
//! status call are thus taken by one task, at most about once a second.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tracing::{debug, warn};

use crate::daemon::status::{Status, StatusSource};

/// Where `--metrics` listens when given without an address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9477";

const CONTENT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections served at once; more are closed at once (a scraper needs one).
pub const MAX_METRICS_CONNECTIONS: usize = 32;

/// How long a client may take to send its request headers (and how long a keep-alive
/// connection may stay idle).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection may last in all.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A snapshot younger than this is served as it is.
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(1);

/// How long a request waits for a fresher snapshot before answering with the last one.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// Collects samples per metric, so each metric's HELP/TYPE is written once.
#[derive(Default)]
struct Out {
    metrics: BTreeMap<&'static str, (&'static str, &'static str, Vec<String>)>,
}

impl Out {
    fn add(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: u64,
    ) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let sample = if labels.is_empty() {
            format!("{name} {value}")
        } else {
            format!("{name}{{{}}} {value}", labels.join(","))
        };
        self.metrics
            .entry(name)
            .or_insert((kind, help, Vec::new()))
            .2
            .push(sample);
    }

    fn finish(self) -> String {
        let mut s = String::new();
        for (name, (kind, help, samples)) in self.metrics {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {kind}");
            for x in samples {
                s.push_str(&x);
                s.push('\n');
            }
        }
        s
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The exposition text for `status`.
/// A pair of counter families: (frames name, frames help, bytes name, bytes help).
type Family = (&'static str, &'static str, &'static str, &'static str);

pub fn render(status: &Status) -> String {
    let mut o = Out::default();
    let mut by_port: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for n in &status.networks {
        o.add(
            "dovesnap_network_endpoints",
            "gauge",
            "Endpoints (containers) on the network.",
            &[
                ("network", short(&n.id)),
                ("bridge", &n.bridge),
                ("mode", &n.mode),
            ],
            n.endpoints.len() as u64,
        );
        for e in &n.endpoints {
            by_port.insert(&e.port, (short(&n.id), short(&e.id)));
            if n.mode == "nat-fast" {
                o.add(
                    "dovesnap_endpoint_fast_path",
                    "gauge",
                    "1 when the endpoint's routed traffic goes through the nat-fast translator, 0 when it is on the kernel path.",
                    &[
                        ("network", short(&n.id)),
                        ("endpoint", short(&e.id)),
                        ("port", &e.port),
                    ],
                    u64::from(e.fast_path),
                );
            }
        }
    }
    for (what, n) in &status.repairs {
        o.add(
            "dovesnap_repairs_total",
            "counter",
            "Things the reconciler found missing and made again (bridge, port, veth, gateway, fast-path, logical-switch, logical-port).",
            &[("what", what)],
            *n,
        );
    }
    let r = &status.reconciler;
    for (kind, n) in [("panic", r.panics), ("stall", r.stalls)] {
        o.add(
            "dovesnap_reconciler_failures_total",
            "counter",
            "Reconciler passes that panicked or did not finish in time (retried after a backoff).",
            &[("kind", kind)],
            n,
        );
    }
    let Some(fp) = &status.fast_path else {
        return o.finish();
    };
    let mut per_network: BTreeMap<&str, [u64; 8]> = BTreeMap::new();
    for e in &fp.dataplane.endpoints {
        let Some((net, ep)) = by_port.get(e.port.as_str()).copied() else {
            continue;
        };
        let x = &e.offload;
        const TRANSLATOR: Family = (
            "dovesnap_endpoint_frames_total",
            "Frames the translator carried for the endpoint (out: from the container).",
            "dovesnap_endpoint_bytes_total",
            "Bytes the translator carried for the endpoint (out: from the container).",
        );
        const OFFLOADED: Family = (
            "dovesnap_endpoint_offloaded_frames_total",
            "Frames of offloaded sessions XDP forwarded itself for the endpoint (out: from the container).",
            "dovesnap_endpoint_offloaded_bytes_total",
            "Bytes of offloaded sessions XDP forwarded itself for the endpoint (out: from the container).",
        );
        for (family, dir, frames, bytes) in [
            (TRANSLATOR, "out", e.out_frames, e.out_bytes),
            (TRANSLATOR, "in", e.in_frames, e.in_bytes),
            (OFFLOADED, "out", x.out_frames, x.out_bytes),
            (OFFLOADED, "in", x.in_frames, x.in_bytes),
        ] {
            let labels = [
                ("network", net),
                ("endpoint", ep),
                ("port", e.port.as_str()),
                ("direction", dir),
            ];
            o.add(family.0, "counter", family.1, &labels, frames);
            o.add(family.2, "counter", family.3, &labels, bytes);
        }
        let t = per_network.entry(net).or_default();
        for (i, v) in [
            e.out_frames,
            e.out_bytes,
            e.in_frames,
            e.in_bytes,
            x.out_frames,
            x.out_bytes,
            x.in_frames,
            x.in_bytes,
        ]
        .into_iter()
        .enumerate()
        {
            t[i] += v;
        }
    }
    for (net, t) in per_network {
        const TRANSLATOR: Family = (
            "dovesnap_network_frames_total",
            "Frames the translator carried for the network's endpoints.",
            "dovesnap_network_bytes_total",
            "Bytes the translator carried for the network's endpoints.",
        );
        const OFFLOADED: Family = (
            "dovesnap_network_offloaded_frames_total",
            "Frames of offloaded sessions XDP forwarded itself for the network's endpoints.",
            "dovesnap_network_offloaded_bytes_total",
            "Bytes of offloaded sessions XDP forwarded itself for the network's endpoints.",
        );
        for (family, dir, frames, bytes) in [
            (TRANSLATOR, "out", t[0], t[1]),
            (TRANSLATOR, "in", t[2], t[3]),
            (OFFLOADED, "out", t[4], t[5]),
            (OFFLOADED, "in", t[6], t[7]),
        ] {
            let labels = [("network", net), ("direction", dir)];
            o.add(family.0, "counter", family.1, &labels, frames);
            o.add(family.2, "counter", family.3, &labels, bytes);
        }
    }
    let h = &fp.health;
    o.add(
        "dovesnap_dataplane_up",
        "gauge",
        "1 while nat-fast frames go through the fast path; 0 while its data plane is down and every frame takes the kernel's path.",
        &[],
        u64::from(h.state == "up"),
    );
    for (name, help, v) in [
        (
            "dovesnap_dataplane_failures_total",
            "Panics and stalls of the nat-fast data-plane thread.",
            h.failures,
        ),
        (
            "dovesnap_dataplane_restarts_total",
            "Times the nat-fast fast path came back after a failure.",
            h.restarts,
        ),
        (
            "dovesnap_dataplane_sessions_handed_to_kernel_total",
            "Translator sessions given to the kernel's conntrack when the data plane failed.",
            h.sessions_handed_to_kernel,
        ),
    ] {
        o.add(name, "counter", help, &[], v);
    }
    for u in &fp.dataplane.uplinks {
        o.add(
            "dovesnap_translator_sessions",
            "gauge",
            "Live translator sessions on the uplink.",
            &[("uplink", &u.name)],
            u.sessions as u64,
        );
        for (k, v) in &u.counters {
            if let Some(reason) = k.strip_prefix("drop_") {
                o.add(
                    "dovesnap_translator_drops_total",
                    "counter",
                    "Frames the translator dropped, by reason.",
                    &[("uplink", &u.name), ("reason", reason)],
                    *v,
                );
            } else {
                o.add(
                    "dovesnap_translator_events_total",
                    "counter",
                    "Translations (outbound, inbound) and session churn (created, expired, evicted, removed).",
                    &[("uplink", &u.name), ("event", k)],
                    *v,
                );
            }
        }
    }
    for (k, v) in &fp.xdp_counters {
        o.add(
            "dovesnap_xdp_frames_total",
            "counter",
            "Frames seen by the XDP program, by classification and decision (all CPUs).",
            &[("counter", k)],
            *v,
        );
    }
    for (k, v) in &fp.dataplane.counters {
        o.add(
            "dovesnap_dataplane_total",
            "counter",
            "Data-plane thread counters (frames, next-hop waits, AF_XDP rings).",
            &[("counter", k)],
            *v,
        );
    }
    o.finish()
}

/// The last rendered exposition text and when its status was read.
struct Snapshot {
    taken: Instant,
    text: String,
}

/// What the connections share: the snapshot, the refresher's wake-up and the
/// listener's own counters.
#[derive(Default)]
struct Shared {
    latest: watch::Sender<Option<Arc<Snapshot>>>,
    wanted: Notify,
    rejected: AtomicU64,
}

impl Shared {
    /// A snapshot no older than [`SNAPSHOT_MAX_AGE`] if the refresher makes one within
    /// [`SNAPSHOT_WAIT`], else the last one (None before the first).
    async fn snapshot(&self) -> Option<Arc<Snapshot>> {
        let mut rx = self.latest.subscribe();
        let last = rx.borrow_and_update().clone();
        if last
            .as_ref()
            .is_some_and(|s| s.taken.elapsed() < SNAPSHOT_MAX_AGE)
        {
            return last;
        }
        self.wanted.notify_one();
        match tokio::time::timeout(SNAPSHOT_WAIT, rx.changed()).await {
            Ok(Ok(())) => rx.borrow().clone(),
            _ => last,
        }
    }

    /// The listener's own metrics, appended to every answer.
    fn own_metrics(&self, open: usize) -> String {
        let mut o = Out::default();
        o.add(
            "dovesnap_metrics_connections_rejected_total",
            "counter",
            "Metrics connections closed unserved because MAX_METRICS_CONNECTIONS were open.",
            &[],
            self.rejected.load(Ordering::Relaxed),
        );
        o.add(
            "dovesnap_metrics_connections",
            "gauge",
            "Metrics connections open.",
            &[],
            open as u64,
        );
        o.finish()
    }
}

/// Reads `source`'s status when a request asks for a fresher snapshot: the only task
/// of the listener that reaches the driver.
async fn refresh<S: StatusSource>(source: Arc<S>, shared: Arc<Shared>) {
    loop {
        shared.wanted.notified().await;
        let fresh = shared
            .latest
            .borrow()
            .as_ref()
            .is_some_and(|s| s.taken.elapsed() < SNAPSHOT_MAX_AGE);
        if fresh {
            // Another request's refresh just finished: it sees that one.
            shared.latest.send_modify(|_| {});
            continue;
        }
        let taken = Instant::now();
        let text = render(&source.status().await);
        shared
            .latest
            .send_replace(Some(Arc::new(Snapshot { taken, text })));
    }
}

/// Serves `GET /metrics` until `shutdown`, with at most [`MAX_METRICS_CONNECTIONS`]
/// connections at once (see the module's documentation).
pub async fn serve_metrics<S: StatusSource>(
    listener: TcpListener,
    source: Arc<S>,
    shutdown: impl Future<Output = ()>,
) {
    serve_metrics_capped(listener, source, MAX_METRICS_CONNECTIONS, shutdown).await
}

async fn serve_metrics_capped<S: StatusSource>(
    listener: TcpListener,
    source: Arc<S>,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared::default());
    let refresher = tokio::spawn(refresh(source, Arc::clone(&shared)));
    let slots = Arc::new(Semaphore::new(max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        drop(stream);
                        let n = shared.rejected.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            warn!(%peer, rejected = n, max_connections,
                                  "metrics connections over the cap closed unserved");
                        }
                        continue;
                    };
                    let shared = Arc::clone(&shared);
                    let slots = Arc::clone(&slots);
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let shared = Arc::clone(&shared);
                            let open = max_connections - slots.available_permits();
                            async move { Ok::<_, std::convert::Infallible>(handle(&shared, open, req).await) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), svc);
                        match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                            Err(_) => debug!(%peer, "metrics connection timed out"),
                            Ok(Err(e)) => debug!(%peer, "metrics connection ended: {e}"),
                            Ok(Ok(())) => {}
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "cannot accept a metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    refresher.abort();
}

async fn handle(shared: &Shared, open: usize, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |code: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT));
        r
    };
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "dovesnap serves GET /metrics\n".into(),
        );
    }
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "/metrics must be a GET\n".into(),
        );
    }
    match shared.snapshot().await {
        Some(s) => text(
            StatusCode::OK,
            format!("{}{}", s.text, shared.own_metrics(open)),
        ),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the daemon's status did not answer within {SNAPSHOT_WAIT:?}: is a driver \
                 call holding it? try again\n"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::status::{EndpointStatus, NetworkStatus};
    use crate::fastpath::dataplane::{DataplaneStatus, EndpointCounters, UplinkStatus};
    use crate::fastpath::FastPathStatus;

    fn status() -> Status {
        Status {
            networks: vec![NetworkStatus {
                id: "0123456789abcdef".into(),
                bridge: "ovsbr-01234567".into(),
                mode: "nat-fast".into(),
                endpoints: vec![EndpointStatus {
                    id: "fedcba9876543210".into(),
                    port: "ovsvfedcba9876".into(),
                    fast_path: true,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            fast_path: Some(FastPathStatus {
                attached: vec![],
                kernel_path: vec![],
                host_rules: vec![],
                xdp_counters: vec![("endpoint-redirect".into(), 7)],
                dataplane: DataplaneStatus {
                    uplinks: vec![UplinkStatus {
                        name: "eth0".into(),
                        sessions: 3,
                        counters: vec![("outbound".into(), 10), ("drop_no_session".into(), 2)],
                        ..Default::default()
                    }],
                    endpoints: vec![EndpointCounters {
                        port: "ovsvfedcba9876".into(),
                        ip: "10.0.0.2".into(),
                        out_frames: 5,
                        out_bytes: 500,
                        in_frames: 6,
                        in_bytes: 600,
                        offload: crate::fastpath::offload::OffloadTraffic {
                            out_frames: 50,
                            out_bytes: 5000,
                            in_frames: 60,
                            in_bytes: 6000,
                        },
                    }],
                    counters: vec![("rx".into(), 11)],
                },
                health: crate::fastpath::supervisor::HealthStatus {
                    state: "down".into(),
                    failures: 1,
                    sessions_handed_to_kernel: 4,
                    ..Default::default()
                },
            }),
            repairs: vec![("veth".into(), 1)],
            reconciler: crate::daemon::status::ReconcilerHealth {
                panics: 2,
                ..Default::default()
            },
            bad_records: vec![],
        }
    }

    #[test]
    fn renders_every_family_once_with_labels() {
        let t = render(&status());
        for line in [
            r#"dovesnap_network_endpoints{network="0123456789ab",bridge="ovsbr-01234567",mode="nat-fast"} 1"#,
            r#"dovesnap_endpoint_fast_path{network="0123456789ab",endpoint="fedcba987654",port="ovsvfedcba9876"} 1"#,
            r#"dovesnap_endpoint_frames_total{network="0123456789ab",endpoint="fedcba987654",port="ovsvfedcba9876",direction="out"} 5"#,
            r#"dovesnap_endpoint_bytes_total{network="0123456789ab",endpoint="fedcba987654",port="ovsvfedcba9876",direction="in"} 600"#,
            r#"dovesnap_network_frames_total{network="0123456789ab",direction="in"} 6"#,
            r#"dovesnap_endpoint_offloaded_frames_total{network="0123456789ab",endpoint="fedcba987654",port="ovsvfedcba9876",direction="out"} 50"#,
            r#"dovesnap_network_offloaded_bytes_total{network="0123456789ab",direction="in"} 6000"#,
            r#"dovesnap_translator_sessions{uplink="eth0"} 3"#,
            r#"dovesnap_translator_drops_total{uplink="eth0",reason="no_session"} 2"#,
            r#"dovesnap_translator_events_total{uplink="eth0",event="outbound"} 10"#,
            r#"dovesnap_xdp_frames_total{counter="endpoint-redirect"} 7"#,
            r#"dovesnap_dataplane_total{counter="rx"} 11"#,
            r#"dovesnap_repairs_total{what="veth"} 1"#,
            "dovesnap_dataplane_up 0",
            "dovesnap_dataplane_failures_total 1",
            "dovesnap_dataplane_sessions_handed_to_kernel_total 4",
            r#"dovesnap_reconciler_failures_total{kind="panic"} 2"#,
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line}\n{t}");
        }
        assert_eq!(
            t.matches("# TYPE dovesnap_endpoint_frames_total counter")
                .count(),
            1
        );
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = l.rsplit_once(' ').expect("sample has a value");
            value.parse::<u64>().expect("numeric value");
        }
    }

    /// Counts its status calls; each takes a little while, like the driver's.
    #[derive(Default)]
    struct Counting(AtomicU64);

    impl StatusSource for Counting {
        async fn status(&self) -> Status {
            self.0.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            status()
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// Over the cap a connection is closed unserved and counted; the ones within it
    /// are served; many scrapes at once read the status once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caps_connections_and_serves_scrapes_from_one_snapshot() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let source = Arc::new(Counting::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics_capped(listener, source.clone(), 3, async {
            let _ = stopped.await;
        }));
        let idle: Vec<_> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
            v
        };
        // The fourth is accepted and closed at once.
        let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf))
            .await
            .expect("a connection over the cap is closed, not kept");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        drop(idle);
        // Served again once the server has seen the idle ones go (until then a scrape
        // can still be over the cap: tried again).
        let scrape = || async move {
            loop {
                match get(addr, "/metrics").await {
                    Ok(t) if !t.is_empty() => break t,
                    _ => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        };
        let scrapes: Vec<_> = (0..3).map(|_| tokio::spawn(scrape())).collect();
        for s in scrapes {
            let text = tokio::time::timeout(Duration::from_secs(5), s)
                .await
                .expect("served again")
                .unwrap();
            assert!(text.starts_with("HTTP/1.0 200"), "{text}");
            assert!(text.contains("dovesnap_translator_sessions{uplink=\"eth0\"} 3"));
            let rejected = text
                .lines()
                .find_map(|l| l.strip_prefix("dovesnap_metrics_connections_rejected_total "))
                .and_then(|v| v.parse::<u64>().ok());
            assert!(rejected >= Some(1), "{text}");
        }
        assert_eq!(source.0.load(Ordering::Relaxed), 1, "one status read");
        stop.send(()).unwrap();
        server.await.unwrap();
    }

    /// A status that does not come in time (no refresher here): the request answers
    /// with the last snapshot after a bounded wait, never waiting for the driver.
    #[tokio::test]
    async fn a_slow_status_is_not_waited_for() {
        let shared = Shared::default();
        shared.latest.send_replace(Some(Arc::new(Snapshot {
            taken: Instant::now() - SNAPSHOT_MAX_AGE * 2,
            text: "old".into(),
        })));
        let before = Instant::now();
        let last = shared.snapshot().await.expect("the last snapshot");
        assert_eq!(last.text, "old");
        assert!(before.elapsed() < SNAPSHOT_WAIT * 2);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn no_fast_path_no_fast_path_metrics() {
        let mut s = status();
        s.fast_path = None;
        let t = render(&s);
        assert!(t.contains("dovesnap_network_endpoints"));
        assert!(!t.contains("dovesnap_translator"));
    }
}
