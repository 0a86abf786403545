//! The daemon's control socket and the CLI client for it.
//!
//! The daemon serves `GET /status` on a root-only unix socket
//! ([`DEFAULT_CONTROL_SOCKET`]); `dovesnap status` fetches it with [`fetch_status`]
//! and prints it with [`render_status_table`]. The answer is plain JSON
//! (`application/json`) so that it can be read with `curl --unix-socket` too.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector};
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::daemon::http::{bind_private_socket, json_response_as, serve_unix};
use crate::plugin::api::ErrorResponse;

/// Where the daemon serves its control API.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/dovesnap/dovesnap.sock";

/// The path of the status call.
pub const STATUS_PATH: &str = "/status";

const JSON: &str = "application/json";

/// Connections the control socket serves at once (`dovesnap status` opens one per
/// call); at the cap it accepts again when one ends.
const MAX_CONTROL_CONNECTIONS: usize = 32;

/// How long the CLI waits for the daemon's answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the daemon manages. Every field has a default, so a CLI and a daemon of
/// neighbouring versions still understand each other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub networks: Vec<NetworkStatus>,
    /// The nat-fast data path, once a nat-fast network has had an endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<crate::fastpath::FastPathStatus>,
    /// Repairs the reconciler made since the daemon started, by kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<(String, u64)>,
    /// The reconciler's own supervision.
    #[serde(default)]
    pub reconciler: ReconcilerHealth,
    /// OVSDB records dovesnap found at start and could not trust: left alone (their
    /// bridge, ports, interfaces and rules untouched) and not managed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bad_records: Vec<BadRecord>,
}

/// An OVSDB record of dovesnap's that does not read (or names what dovesnap would not
/// have made): reported, never acted on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BadRecord {
    /// Where it is: `bridge NAME`, `port NAME` or `Open_vSwitch external_ids:KEY`.
    pub record: String,
    /// The network or endpoint id it claims (as recorded; may be invalid or empty).
    pub id: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (id {:?}): {}", self.record, self.id, self.reason)
    }
}

/// Passes of the reconciler, and those that failed (a panic, or a pass that did not
/// finish within its time limit); a failed pass is retried after a backoff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconcilerHealth {
    pub passes: u64,
    pub panics: u64,
    pub stalls: u64,
    pub last_failure: String,
}

/// One Docker network on an OVS bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkStatus {
    /// Docker's network id.
    pub id: String,
    /// The OVS bridge name.
    pub bridge: String,
    /// `flat`, `nat` or `nat-fast` (a string, so an older CLI can show a newer mode).
    pub mode: String,
    /// The IPv4 subnet in CIDR form; empty if none.
    pub subnet: String,
    /// The gateway address; empty if none.
    pub gateway: String,
    /// OVS `datapath_type`: `system` or `netdev`.
    pub datapath_type: String,
    pub endpoints: Vec<EndpointStatus>,
}

/// One container endpoint: a veth pair with its host side on the bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointStatus {
    /// Docker's endpoint id.
    pub id: String,
    /// The OVS port (the host side of the veth pair).
    pub port: String,
    pub mac: String,
    /// The IPv4 address with prefix length.
    pub address: String,
    /// Published ports (nat modes), e.g. `0.0.0.0:8080->80/tcp`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<String>,
    /// nat-fast: the endpoint's routed traffic goes through the XDP/AF_XDP translator.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fast_path: bool,
    /// nat-fast: why the endpoint is on the kernel's nat path instead.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kernel_path: String,
}

/// Where the control server gets the status from (the driver).
pub trait StatusSource: Send + Sync + 'static {
    fn status(&self) -> impl Future<Output = Status> + Send;
}

/// Errors of the control client.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot reach the dovesnap daemon at {}: is `dovesnap daemon` running?",
        .path.display()
    )]
    Unreachable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "permission denied on the dovesnap control socket {}: it is root-only, run this \
         command as root",
        .path.display()
    )]
    PermissionDenied {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the dovesnap daemon at {} did not answer within {} s; it may be stuck, see its log",
        .path.display(),
        .timeout.as_secs_f32()
    )]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("talking to the dovesnap daemon at {} failed: {message}", .path.display())]
    Http { path: PathBuf, message: String },
    #[error("the dovesnap daemon at {} answered {status}: {message}", .path.display())]
    Refused {
        path: PathBuf,
        status: StatusCode,
        message: String,
    },
    #[error(
        "cannot decode the status sent by the dovesnap daemon at {}; are the daemon and \
         this command the same version?",
        .path.display()
    )]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Binds the control socket at `path` (normally [`DEFAULT_CONTROL_SOCKET`]), as
/// [`crate::plugin::server::bind_plugin_socket`] does: parent directory created, stale socket
/// replaced, a live one refused, mode 0600.
///
/// Must be called from within a Tokio runtime.
pub fn bind_control_socket(path: &Path) -> io::Result<UnixListener> {
    bind_private_socket(path)
}

/// Serves the control API on `listener` until `shutdown` completes; then removes the
/// socket file and returns once in-flight calls are done.
pub async fn serve_control<S: StatusSource>(
    listener: UnixListener,
    source: Arc<S>,
    shutdown: impl Future<Output = ()>,
) {
    let handler = move |req: Request<Incoming>| {
        let source = Arc::clone(&source);
        async move { handle(&*source, req).await }
    };
    serve_unix(
        listener,
        "control",
        MAX_CONTROL_CONNECTIONS,
        handler,
        shutdown,
    )
    .await;
}

async fn handle<S: StatusSource>(source: &S, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    debug!(method = %req.method(), %path, "control call");
    if path != STATUS_PATH {
        warn!(method = %req.method(), %path, "unknown control call");
        return control_error(
            StatusCode::NOT_FOUND,
            format!("unknown control call {path}; the dovesnap daemon serves GET {STATUS_PATH}"),
        );
    }
    if req.method() != Method::GET {
        let mut resp = control_error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{STATUS_PATH} must be a GET, not {}", req.method()),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    json_response_as(StatusCode::OK, &source.status().await, JSON)
}

fn control_error(status: StatusCode, err: String) -> Response<Full<Bytes>> {
    json_response_as(status, &ErrorResponse { err }, JSON)
}

/// Asks the daemon listening on `socket` for its status.
pub async fn fetch_status(socket: &Path) -> Result<Status, ControlError> {
    fetch_status_within(socket, FETCH_TIMEOUT).await
}

async fn fetch_status_within(socket: &Path, timeout: Duration) -> Result<Status, ControlError> {
    tokio::time::timeout(timeout, fetch_status_now(socket))
        .await
        .map_err(|_| ControlError::Timeout {
            path: socket.to_owned(),
            timeout,
        })?
}

async fn fetch_status_now(socket: &Path) -> Result<Status, ControlError> {
    let path = || socket.to_owned();
    let client: Client<UnixConnector, Empty<Bytes>> = Client::unix();
    let req = Request::get(hyperlocal::Uri::new(socket, STATUS_PATH))
        .body(Empty::new())
        .map_err(|e| ControlError::Http {
            path: path(),
            message: e.to_string(),
        })?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| request_error(socket, &e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ControlError::Http {
            path: path(),
            message: format!("cannot read the answer: {e}"),
        })?
        .to_bytes();
    if status != StatusCode::OK {
        let message = serde_json::from_slice::<ErrorResponse>(&body)
            .map(|e| e.err)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(ControlError::Refused {
            path: path(),
            status,
            message,
        });
    }
    serde_json::from_slice(&body).map_err(|source| ControlError::Decode {
        path: path(),
        source,
    })
}

/// Maps a client error: failing to connect means the daemon is not running (or we
/// may not talk to it); anything else is an HTTP failure.
fn request_error(socket: &Path, e: &hyper_util::client::legacy::Error) -> ControlError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.source();
    let mut io_cause = None;
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            io_cause = Some(io);
            break;
        }
        cause = c.source();
    }
    if e.is_connect() {
        let source = match io_cause {
            Some(io) => io::Error::new(io.kind(), io.to_string()),
            None => io::Error::other(e.to_string()),
        };
        if source.kind() == io::ErrorKind::PermissionDenied {
            return ControlError::PermissionDenied {
                path: socket.to_owned(),
                source,
            };
        }
        return ControlError::Unreachable {
            path: socket.to_owned(),
            source,
        };
    }
    let message = match io_cause {
        Some(io) => format!("{e}: {io}"),
        None => e.to_string(),
    };
    ControlError::Http {
        path: socket.to_owned(),
        message,
    }
}

/// Docker's short form of an id.
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Pads `rows` into aligned columns two spaces apart, each line prefixed by
/// `indent`; no trailing spaces.
fn align(rows: &[Vec<&str>], indent: &str) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = indent.to_owned();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[c] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            line.truncate(line.trim_end().len());
            line
        })
        .collect()
}

/// The status as a table for people: one line per network, its endpoints indented
/// under it; ids shortened to 12 characters as Docker does; `-` for empty fields.
pub fn render_status_table(status: &Status) -> String {
    if status.networks.is_empty() {
        return "no dovesnap networks\n".to_owned();
    }
    let mut net_rows: Vec<Vec<&str>> = vec![vec![
        "NETWORK", "BRIDGE", "MODE", "DATAPATH", "SUBNET", "GATEWAY",
    ]];
    let mut ep_rows: Vec<Vec<&str>> = vec![vec!["ENDPOINT", "PORT", "MAC", "ADDRESS", "PUBLISHED"]];
    let published: Vec<Vec<String>> = status
        .networks
        .iter()
        .map(|n| n.endpoints.iter().map(|e| e.published.join(",")).collect())
        .collect();
    for (n, published) in status.networks.iter().zip(&published) {
        net_rows.push(vec![
            short_id(&n.id),
            or_dash(&n.bridge),
            or_dash(&n.mode),
            or_dash(&n.datapath_type),
            or_dash(&n.subnet),
            or_dash(&n.gateway),
        ]);
        for (e, published) in n.endpoints.iter().zip(published) {
            ep_rows.push(vec![
                short_id(&e.id),
                or_dash(&e.port),
                or_dash(&e.mac),
                or_dash(&e.address),
                or_dash(published),
            ]);
        }
    }
    let net_lines = align(&net_rows, "");
    let ep_lines = align(&ep_rows, "  ");
    let mut out = String::new();
    let mut push = |line: &str| {
        out.push_str(line);
        out.push('\n');
    };
    push(&net_lines[0]);
    let has_endpoints = ep_lines.len() > 1;
    if has_endpoints {
        push(&ep_lines[0]);
    }
    let mut eps = ep_lines[1..].iter();
    for (n, line) in status.networks.iter().zip(&net_lines[1..]) {
        push(line);
        for ep_line in eps.by_ref().take(n.endpoints.len()) {
            push(ep_line);
        }
    }
    if let Some(fp) = &status.fast_path {
        render_fast_path(fp, &mut push);
    }
    if !status.repairs.is_empty() {
        let repairs: Vec<String> = status
            .repairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        push("");
        push(&format!("repaired: {}", repairs.join(" ")));
    }
    let r = &status.reconciler;
    if r.panics + r.stalls > 0 {
        push(&format!(
            "reconciler: {} failed pass(es) of {} ({} panicked, {} stuck; last: {})",
            r.panics + r.stalls,
            r.passes,
            r.panics,
            r.stalls,
            r.last_failure
        ));
    }
    if !status.bad_records.is_empty() {
        push("");
        push("unreadable records (left alone, not managed):");
        for b in &status.bad_records {
            push(&format!("  {b}"));
        }
    }
    out
}

/// The nat-fast section: where XDP is attached, each uplink's translator with its
/// sessions, and every non-zero counter.
fn render_fast_path(fp: &crate::fastpath::FastPathStatus, push: &mut impl FnMut(&str)) {
    push("");
    let attached: Vec<String> = fp
        .attached
        .iter()
        .map(|(i, m)| format!("{i} ({m})"))
        .collect();
    push(&format!(
        "nat-fast: XDP on {}",
        if attached.is_empty() {
            "nothing".to_owned()
        } else {
            attached.join(", ")
        }
    ));
    let h = &fp.health;
    if h.state != "up" && !h.state.is_empty() {
        let back = match h.resumes_in_ms {
            Some(ms) => format!("; fast path back in {} s", ms.div_ceil(1000)),
            None => "; stays on the kernel path until the daemon restarts".to_owned(),
        };
        push(&format!(
            "  DATA PLANE {}: {}; every nat-fast frame takes the kernel's path{back}",
            h.state.to_uppercase(),
            h.last_failure
        ));
    }
    if h.failures > 0 {
        push(&format!(
            "  data plane failures: {} (last: {}), restarts: {}, sessions handed to the kernel: {}{}",
            h.failures,
            h.last_failure,
            h.restarts,
            h.sessions_handed_to_kernel,
            if h.handover_failures > 0 {
                format!(" ({} refused)", h.handover_failures)
            } else {
                String::new()
            }
        ));
    }
    for (port, why) in &fp.kernel_path {
        push(&format!("  kernel path: {port}: {why}"));
    }
    for (place, rule, how) in &fp.host_rules {
        push(&format!("  host rule ({place}) {rule}: {how}"));
    }
    for u in &fp.dataplane.uplinks {
        let ports = match (u.ports.as_str(), u.port_share) {
            ("", _) => String::new(),
            (r, 0) => format!(", ports {r}"),
            (r, n) => format!(", ports {r} (at most {n} per container and protocol)"),
        };
        push(&format!(
            "  uplink {} ({}): {} endpoint(s), {} session(s){ports}{}",
            u.name,
            u.external_ip,
            u.endpoints,
            u.sessions,
            if u.redirect_target {
                ""
            } else {
                "; not an XDP redirect target: offloaded sessions send out through AF_XDP"
            }
        ));
        for s in &u.session_list {
            push(&format!("    {s}"));
        }
        let counters = nonzero(&u.counters);
        if !counters.is_empty() {
            push(&format!("    translator: {counters}"));
        }
    }
    let dp = nonzero(&fp.dataplane.counters);
    if !dp.is_empty() {
        push(&format!("  data plane: {dp}"));
    }
    let xdp = nonzero(&fp.xdp_counters);
    if !xdp.is_empty() {
        push(&format!("  xdp: {xdp}"));
    }
}

fn nonzero(counters: &[(String, u64)]) -> String {
    counters
        .iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::http::testutil::{request, TempDir};
    use tokio::sync::oneshot;

    fn sample() -> Status {
        Status {
            networks: vec![
                NetworkStatus {
                    id: "3f2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a".into(),
                    bridge: "ovsbr-3f2a1".into(),
                    mode: "nat-fast".into(),
                    subnet: "10.0.0.0/24".into(),
                    gateway: "10.0.0.1".into(),
                    datapath_type: "system".into(),
                    endpoints: vec![
                        EndpointStatus {
                            id: "1a2b3c4d5e6f7a8b9c0d".into(),
                            port: "ovs1a2b3c4d".into(),
                            mac: "02:42:0a:00:00:02".into(),
                            address: "10.0.0.2/24".into(),
                            published: vec!["0.0.0.0:8080->80/tcp".into()],
                            fast_path: true,
                            kernel_path: String::new(),
                        },
                        EndpointStatus {
                            id: "9f8e7d6c5b4a".into(),
                            port: "ovs9f8e7d6c".into(),
                            mac: "02:42:0a:00:00:03".into(),
                            address: "10.0.0.3/24".into(),
                            published: vec![],
                            fast_path: false,
                            kernel_path: "nat-fast: br0 has generic only XDP".into(),
                        },
                    ],
                },
                NetworkStatus {
                    id: "abc".into(),
                    bridge: "br-flat".into(),
                    mode: "flat".into(),
                    subnet: String::new(),
                    gateway: String::new(),
                    datapath_type: "netdev".into(),
                    endpoints: vec![],
                },
            ],
            fast_path: None,
            repairs: vec![],
            reconciler: ReconcilerHealth::default(),
            bad_records: vec![],
        }
    }

    struct Fixed(Status);

    impl StatusSource for Fixed {
        async fn status(&self) -> Status {
            self.0.clone()
        }
    }

    struct Stuck;

    impl StatusSource for Stuck {
        async fn status(&self) -> Status {
            std::future::pending().await
        }
    }

    struct Daemon {
        _dir: TempDir,
        socket: PathBuf,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start<S: StatusSource>(source: S) -> Daemon {
        let dir = TempDir::new("control");
        let socket = dir.path().join("run").join("dovesnap.sock");
        let listener = bind_control_socket(&socket).unwrap();
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(serve_control(listener, Arc::new(source), async {
            let _ = rx.await;
        }));
        Daemon {
            _dir: dir,
            socket,
            stop,
            task,
        }
    }

    impl Daemon {
        async fn stop(self) {
            self.stop.send(()).unwrap();
            tokio::time::timeout(Duration::from_secs(15), self.task)
                .await
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn status_round_trip_over_the_socket() {
        let d = start(Fixed(sample()));
        let meta = std::fs::metadata(&d.socket).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fetch_status(&d.socket).await.unwrap(), sample());
        d.stop().await;
    }

    #[tokio::test]
    async fn status_is_plain_json() {
        let d = start(Fixed(sample()));
        let (status, ctype, body) = request(&d.socket, Method::GET, "/status", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["networks"][0]["endpoints"][0]["port"], "ovs1a2b3c4d");
        assert_eq!(v["networks"][0]["datapath_type"], "system");
        d.stop().await;
    }

    #[tokio::test]
    async fn other_paths_are_404_and_other_methods_405() {
        let d = start(Fixed(Status::default()));
        let (status, _, body) = request(&d.socket, Method::GET, "/networks", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["Err"],
            "unknown control call /networks; the dovesnap daemon serves GET /status"
        );
        let (status, _, body) = request(&d.socket, Method::POST, "/status", "{}").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(body.contains("/status must be a GET, not POST"), "{body}");
        d.stop().await;
    }

    #[tokio::test]
    async fn empty_status_round_trips() {
        let d = start(Fixed(Status::default()));
        assert_eq!(fetch_status(&d.socket).await.unwrap(), Status::default());
        d.stop().await;
    }

    #[tokio::test]
    async fn no_daemon_is_a_clear_error() {
        let dir = TempDir::new("nodaemon");
        let missing = dir.path().join("dovesnap.sock");
        let e = fetch_status(&missing).await.unwrap_err();
        assert!(matches!(e, ControlError::Unreachable { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "cannot reach the dovesnap daemon at {}: is `dovesnap daemon` running?",
                missing.display()
            )
        );
        let ControlError::Unreachable { source, .. } = e else {
            unreachable!()
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);

        // A socket file left behind by a dead daemon.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let e = fetch_status(&stale).await.unwrap_err();
        assert!(
            matches!(&e, ControlError::Unreachable { source, .. }
                if source.kind() == io::ErrorKind::ConnectionRefused),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_stuck_daemon_times_out() {
        let d = start(Stuck);
        let e = fetch_status_within(&d.socket, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, ControlError::Timeout { .. }), "{e:?}");
        assert!(e.to_string().contains("did not answer within 0.2 s"), "{e}");
        // Shutdown abandons the stuck call after the drain timeout.
        d.stop().await;
    }

    #[test]
    fn status_decodes_with_missing_and_unknown_fields() {
        let s: Status = serde_json::from_str(
            r#"{"networks":[{"id":"n","endpoints":[{"id":"e","extra":1}]}],"version":2}"#,
        )
        .unwrap();
        assert_eq!(s.networks[0].id, "n");
        assert_eq!(s.networks[0].bridge, "");
    }

    #[test]
    fn table_lists_networks_with_endpoints_indented() {
        let table = render_status_table(&sample());
        let expected = "\
NETWORK       BRIDGE       MODE      DATAPATH  SUBNET       GATEWAY
  ENDPOINT      PORT         MAC                ADDRESS      PUBLISHED
3f2a1b9c8d7e  ovsbr-3f2a1  nat-fast  system    10.0.0.0/24  10.0.0.1
  1a2b3c4d5e6f  ovs1a2b3c4d  02:42:0a:00:00:02  10.0.0.2/24  0.0.0.0:8080->80/tcp
  9f8e7d6c5b4a  ovs9f8e7d6c  02:42:0a:00:00:03  10.0.0.3/24  -
abc           br-flat      flat      netdev    -            -
";
        assert_eq!(table, expected);
    }

    #[test]
    fn table_without_endpoints_has_no_endpoint_header() {
        let mut s = sample();
        s.networks.remove(0);
        assert_eq!(
            render_status_table(&s),
            "NETWORK  BRIDGE   MODE  DATAPATH  SUBNET  GATEWAY\nabc      br-flat  flat  netdev    -       -\n"
        );
    }

    #[test]
    fn table_ends_with_the_repairs() {
        let mut s = sample();
        s.repairs = vec![("bridge".into(), 1), ("veth".into(), 2)];
        let table = render_status_table(&s);
        assert!(table.ends_with("\nrepaired: bridge=1 veth=2\n"), "{table}");
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains(r#""repairs":[["bridge",1],["veth",2]]"#),
            "{json}"
        );
    }

    #[test]
    fn table_names_the_bad_records() {
        let mut s = sample();
        assert!(!serde_json::to_string(&s).unwrap().contains("bad_records"));
        s.bad_records = vec![BadRecord {
            record: "bridge ovsbr-3f2a9c1d".into(),
            id: "3f2a9c1d4e5b".into(),
            reason: "options: bad mode".into(),
        }];
        let table = render_status_table(&s);
        assert!(
            table.ends_with(
                "unreadable records (left alone, not managed):\n  bridge ovsbr-3f2a9c1d (id \"3f2a9c1d4e5b\"): options: bad mode\n"
            ),
            "{table}"
        );
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn table_says_which_endpoints_and_uplinks_fall_short_of_the_fast_path() {
        let mut s = sample();
        s.fast_path = Some(crate::fastpath::FastPathStatus {
            kernel_path: vec![("ovs9f8e7d6c".into(), "br0 has generic only XDP".into())],
            dataplane: crate::fastpath::dataplane::DataplaneStatus {
                uplinks: vec![
                    crate::fastpath::dataplane::UplinkStatus {
                        name: "veth0".into(),
                        external_ip: "192.0.2.1".into(),
                        endpoints: 1,
                        redirect_target: false,
                        ..Default::default()
                    },
                    crate::fastpath::dataplane::UplinkStatus {
                        name: "eth1".into(),
                        external_ip: "198.51.100.1".into(),
                        redirect_target: true,
                        ports: "1024-32767".into(),
                        port_share: 23808,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            health: crate::fastpath::supervisor::HealthStatus {
                state: "down".into(),
                failures: 1,
                restarts: 0,
                sessions_handed_to_kernel: 2,
                last_failure: "the data-plane thread panicked: boom".into(),
                resumes_in_ms: Some(1500),
                ..Default::default()
            },
            host_rules: vec![(
                "iptables DOCKER-USER".into(),
                "-A DOCKER-USER -d 192.0.2.9/32 -j DROP".into(),
                "exact: 192.0.2.9/32 all protocols on the kernel's path".into(),
            )],
            ..Default::default()
        });
        s.reconciler.passes = 9;
        s.reconciler.stalls = 1;
        s.reconciler.last_failure = "did not finish within 60 s".into();
        let table = render_status_table(&s);
        assert!(
            table.contains("  kernel path: ovs9f8e7d6c: br0 has generic only XDP\n"),
            "{table}"
        );
        for line in [
            "  host rule (iptables DOCKER-USER) -A DOCKER-USER -d 192.0.2.9/32 -j DROP: exact: \
             192.0.2.9/32 all protocols on the kernel's path\n",
            "  DATA PLANE DOWN: the data-plane thread panicked: boom; every nat-fast frame \
             takes the kernel's path; fast path back in 2 s\n",
            "  data plane failures: 1 (last: the data-plane thread panicked: boom), restarts: 0, \
             sessions handed to the kernel: 2\n",
            "reconciler: 1 failed pass(es) of 9 (0 panicked, 1 stuck; last: did not finish \
             within 60 s)\n",
        ] {
            assert!(table.contains(line), "missing {line:?} in\n{table}");
        }
        assert!(
            table.contains(
                "  uplink eth1 (198.51.100.1): 0 endpoint(s), 0 session(s), ports 1024-32767 \
                 (at most 23808 per container and protocol)\n"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "  uplink veth0 (192.0.2.1): 1 endpoint(s), 0 session(s); not an XDP redirect \
                 target: offloaded sessions send out through AF_XDP\n"
            ),
            "{table}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["networks"][0]["endpoints"][1]["kernel_path"],
            "nat-fast: br0 has generic only XDP"
        );
    }

    #[test]
    fn table_of_nothing_says_so() {
        assert_eq!(
            render_status_table(&Status::default()),
            "no dovesnap networks\n"
        );
    }
}
