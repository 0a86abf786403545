//! HTTP/1.1 over unix sockets, as the plugin socket and the control socket serve it:
//! binding a root-only socket, serving connections under a cap and timeouts with a
//! graceful drain, JSON answers in Docker's plugin content type; and one client GET (dockerd's API).

use std::convert::Infallible;
use std::fs::Permissions;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// How long a client may take to send the request headers. hyper starts this timer
/// when a connection opens and again after each answer, so it also closes a
/// keep-alive connection left idle this long (dockerd's HTTP client keeps at most two
/// idle and opens a new one when the server closed them).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long in-flight calls may take to finish once shutdown is asked for.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a GET to a unix-socket HTTP server (dockerd's API) failed.
#[derive(Debug)]
pub enum GetError {
    /// The socket could not be connected (missing, stale, permission).
    Connect(io::Error),
    /// The HTTP exchange failed.
    Http(String),
}

/// The answer to a GET: status, headers and the whole body.
pub struct GetAnswer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// One `GET path` on the HTTP/1.1 server at `socket` (dockerd's Engine API): a fresh
/// connection, the whole body read, the connection closed.
pub async fn get(socket: &Path, path: &str) -> Result<GetAnswer, GetError> {
    use http_body_util::{BodyExt, Empty};

    let stream = UnixStream::connect(socket)
        .await
        .map_err(GetError::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| GetError::Http(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let answer = async {
        let req = Request::get(path)
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| GetError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| GetError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| GetError::Http(e.to_string()))?
            .to_bytes();
        Ok(GetAnswer {
            status,
            headers,
            body,
        })
    }
    .await;
    conn.abort();
    answer
}

/// The `{"Err": "..."}` body of a failed call: Docker's plugin protocol's shape, which
/// the control socket shares.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

/// A JSON answer with `content_type`; a unit answer (`null`) becomes `{}`.
pub(crate) fn json_response_as<T: Serialize>(
    status: StatusCode,
    value: &T,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) if body == b"null" => (status, b"{}".to_vec()),
        Ok(body) => (status, body),
        Err(e) => {
            warn!(error = %e, "cannot encode an answer");
            let err = ErrorResponse {
                err: format!("dovesnap cannot encode its answer: {e}"),
            };
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::to_vec(&err).unwrap_or_default(),
            )
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    resp
}

/// `resp` (an error answer) as a 405 that names the one method `allowed` in `Allow`.
pub(crate) fn method_not_allowed(
    mut resp: Response<Full<Bytes>>,
    allowed: &'static str,
) -> Response<Full<Bytes>> {
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp.headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static(allowed));
    resp
}

/// Binds a unix socket only root can use: creates the parent directory, replaces a
/// stale socket, refuses a live one or a non-socket file, binds and sets mode 0600.
///
/// The socket exists with the umask's mode for the moment between `bind` and
/// `chmod`; the daemon runs as root with root-owned parent directories.
pub(crate) fn bind_private_socket(path: &Path) -> io::Result<UnixListener> {
    let ctx = |what: String, e: io::Error| {
        let hint = if e.kind() == io::ErrorKind::PermissionDenied {
            "; dovesnap must run as root"
        } else {
            ""
        };
        io::Error::new(e.kind(), format!("{what}: {e}{hint}"))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| ctx(format!("cannot create {}", parent.display()), e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it, remove it if it \
                     is not needed",
                    path.display()
                ),
            ));
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another process is serving on {}; is another dovesnap running? \
                         Stop it first",
                        path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                info!(path = %path.display(), "removing a stale socket");
                std::fs::remove_file(path).map_err(|e| {
                    ctx(format!("cannot remove stale socket {}", path.display()), e)
                })?;
            }
            Err(e) => {
                return Err(ctx(
                    format!("cannot check whether {} is in use", path.display()),
                    e,
                ));
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx(format!("cannot inspect {}", path.display()), e)),
    }
    let listener =
        UnixListener::bind(path).map_err(|e| ctx(format!("cannot bind {}", path.display()), e))?;
    std::fs::set_permissions(path, Permissions::from_mode(0o600))
        .map_err(|e| ctx(format!("cannot make {} root-only", path.display()), e))?;
    Ok(listener)
}

/// Serves HTTP/1.1 on `listener`, one task per connection and at most `max_connections`
/// at once (at the cap it accepts again when one ends), until `shutdown` completes;
/// then removes the socket file, asks every connection to close after its current
/// request and waits up to [`DRAIN_TIMEOUT`] for them. `what` names the socket in
/// logs.
pub(crate) async fn serve_unix<H, Fut>(
    listener: UnixListener,
    what: &'static str,
    max_connections: usize,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let path: Option<PathBuf> = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let (stop_tx, stop_rx) = watch::channel(());
    let mut conns = JoinSet::new();
    let mut at_cap = false;
    tokio::pin!(shutdown);
    loop {
        if conns.len() >= max_connections && !at_cap {
            warn!(
                socket = what,
                connections = conns.len(),
                "connection cap reached: accepting again when one ends"
            );
        }
        at_cap = conns.len() >= max_connections;
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept(), if !at_cap => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, handler.clone(), stop_rx.clone(), what));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(socket = what, error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => log_task_end(what, done),
        }
    }
    // Remove the file while still listening, so no other process's socket is removed.
    if let Some(path) = &path {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(socket = what, path = %path.display(), error = %e, "cannot remove the socket")
            }
        }
    }
    drop(listener);
    // Receivers see the change even if the value is the same.
    stop_tx.send_replace(());
    let drain = async {
        while let Some(done) = conns.join_next().await {
            log_task_end(what, done);
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        warn!(
            socket = what,
            connections = conns.len(),
            "calls still running after shutdown; abandoning them"
        );
        conns.shutdown().await;
    }
    debug!(socket = what, "server stopped");
}

fn log_task_end(what: &'static str, done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            warn!(socket = what, error = %e, "a connection task panicked");
        }
    }
}

async fn serve_connection<H, Fut>(
    stream: UnixStream,
    handler: H,
    mut stop: watch::Receiver<()>,
    what: &'static str,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(socket = what, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Temporary directories and an HTTP client for the socket tests.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Method, Request, StatusCode};
    use hyper_util::client::legacy::Client;
    use hyperlocal::{UnixClientExt, UnixConnector};

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("dovesnap-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create test dir");
            TempDir(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Sends one request and returns the status, content type and body.
    pub(crate) async fn request(
        socket: &Path,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, String, String) {
        let client: Client<UnixConnector, Full<Bytes>> = Client::unix();
        let req = Request::builder()
            .method(method)
            .uri(hyperlocal::Uri::new(socket, path))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let resp = client.request(req).await.expect("request");
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ctype, String::from_utf8(body.to_vec()).unwrap())
    }
}
