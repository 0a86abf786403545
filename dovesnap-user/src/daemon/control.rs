//! The daemon's control socket and the CLI client for it.
//!
//! The daemon serves `GET /status` on a root-only unix socket
//! ([`DEFAULT_CONTROL_SOCKET`]); `dovesnap status` fetches it with [`fetch_status`]
//! and prints it with [`super::status::render_status_table`]. The answer is plain JSON
//! (`application/json`) so that it can be read with `curl --unix-socket` too.

use crate::daemon::status::{Status, StatusSource};
use std::error::Error as _;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector};
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::daemon::http::{
    bind_private_socket, json_response_as, method_not_allowed, serve_unix, ErrorResponse,
};

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

/// Binds the control socket at `path` (normally [`DEFAULT_CONTROL_SOCKET`]) as the
/// plugin socket is bound: parent directory created, stale socket replaced, a live one
/// refused, mode 0600.
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
        let why = format!("{STATUS_PATH} must be a GET, not {}", req.method());
        return method_not_allowed(control_error(StatusCode::METHOD_NOT_ALLOWED, why), "GET");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::http::testutil::{request, TempDir};
    use crate::daemon::status::tests::sample;
    use tokio::sync::oneshot;

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
}
