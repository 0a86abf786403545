//! The HTTP/1.1 server on the plugin's unix socket.
//!
//! Docker finds the plugin by its socket file (`/run/docker/plugins/ovs.sock` makes
//! the driver `ovs`) and POSTs JSON to `/Plugin.Activate`, `/NetworkDriver.*` and
//! `/IpamDriver.*` (the same object is Docker's IPAM driver, `--ipam-driver ovs`: see
//! [`crate::plugin::ipam`]). Each call is decoded into its request type and handed to
//! the [`NetworkDriver`] or [`IpamDriver`]; the answer goes back as JSON with
//! [`CONTENT_TYPE`].
//!
//! Status codes: a driver error is `200 {"Err": "..."}`, which is what Docker shows to
//! the user; a body that does not decode is 400, an unknown call 404, another method
//! than POST 405 and a body over [`MAX_BODY_BYTES`] 413, all with an `Err` message.
//!
//! Every connection is served by its own task, so a slow call (say, a `Join` waiting
//! on OVS) does not hold up the others. Every driver call runs as a task of its own
//! too, not as part of the request: when dockerd closes the connection before the
//! answer (its timeout, a restart), the call still runs to its end, never stopping
//! half way between OVSDB and the kernel. A call that made something (CreateNetwork,
//! CreateEndpoint, Join, ProgramExternalConnectivity) and whose answer nobody was
//! left to hear is then undone with its counterpart (DeleteNetwork, DeleteEndpoint,
//! Leave, RevokeExternalConnectivity): Docker took the call as failed and will never
//! delete what it does not know. At shutdown the server waits (bounded) for the calls
//! still running.
//!
//! The accept loop (`serve_unix`) is shared with the control socket
//! ([`crate::daemon::control`]).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::daemon::http::{bind_private_socket, json_response_as, method_not_allowed, serve_unix};
use crate::plugin::api::{
    ActivateResponse, AllocateNetworkRequest, ApiResult, CreateEndpointRequest,
    CreateNetworkRequest, EndpointRequest, ErrorResponse, JoinRequest, NetworkDriver,
    NetworkRequest, ProgramExternalConnectivityRequest, CONTENT_TYPE,
};
use crate::plugin::ipam::IpamDriver;

/// What the plugin socket serves: the network driver and the IPAM driver, one object.
pub trait Plugin: NetworkDriver + IpamDriver {}
impl<D: NetworkDriver + IpamDriver> Plugin for D {}

/// A JSON answer with the plugin content type; a unit answer (`null`) becomes `{}`.
fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    json_response_as(status, value, CONTENT_TYPE)
}

/// `{"Err": msg}` with the plugin content type.
fn error_response(status: StatusCode, msg: String) -> Response<Full<Bytes>> {
    json_response(status, &ErrorResponse { err: msg })
}

/// Where Docker looks for the plugin; the file name is the driver name (`ovs`).
pub const DEFAULT_PLUGIN_SOCKET: &str = "/run/docker/plugins/ovs.sock";

/// The largest request body accepted. Docker's requests are a few KiB at most.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Connections the plugin socket serves at once. dockerd opens one per concurrent
/// driver call and keeps two idle; at the cap the server stops accepting until a
/// connection ends, so the next ones wait in the socket's backlog instead of being
/// refused (dockerd would retry a refused call only after a second, its body maybe
/// spent by then).
pub const MAX_PLUGIN_CONNECTIONS: usize = 256;

/// How long shutdown then waits for driver calls whose connection is gone to finish
/// (or be undone). With [`DRAIN_TIMEOUT`] it stays within the 30 s that the systemd
/// unit and the Compose file give the daemon to stop.
const CALL_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Binds the plugin socket at `path` (normally [`DEFAULT_PLUGIN_SOCKET`]): creates
/// the parent directory, removes a stale socket left by a dead process (but refuses
/// if a live process still answers on it, or if `path` is not a socket), binds and
/// makes the socket root-only (mode 0600).
///
/// Must be called from within a Tokio runtime.
pub fn bind_plugin_socket(path: &Path) -> io::Result<UnixListener> {
    bind_private_socket(path)
}

/// The second driver name dovesnap answers to, the Go dovesnap's: `-d dovesnap` works like
/// `-d ovs`.
pub const ALIAS_SOCKET_NAME: &str = "dovesnap.sock";

/// Makes `DIR/dovesnap.sock` a symlink to the plugin socket when that is `DIR/ovs.sock`
/// (dockerd finds a plugin by `stat`ing `NAME.sock`, which follows the link), so that
/// `docker network create -d dovesnap` reaches this plugin. A stale symlink is replaced;
/// anything else at that path is left alone, with a warning. Returns the link made.
pub fn link_alias(socket: &Path) -> Option<PathBuf> {
    let target = socket.file_name()?;
    if target != "ovs.sock" {
        return None;
    }
    let alias = socket.with_file_name(ALIAS_SOCKET_NAME);
    match std::fs::symlink_metadata(&alias) {
        Ok(m) if m.file_type().is_symlink() => {
            let _ = std::fs::remove_file(&alias);
        }
        Ok(_) => {
            warn!(path = %alias.display(), "not answering as -d dovesnap: something else is there");
            return None;
        }
        Err(_) => {}
    }
    match std::os::unix::fs::symlink(target, &alias) {
        Ok(()) => Some(alias),
        Err(e) => {
            warn!(path = %alias.display(), error = %e, "not answering as -d dovesnap");
            None
        }
    }
}

/// Removes the link [`link_alias`] made, if it still points at `ovs.sock`.
pub fn unlink_alias(alias: &Path) {
    if std::fs::read_link(alias).is_ok_and(|t| t.as_os_str() == "ovs.sock") {
        let _ = std::fs::remove_file(alias);
    }
}

/// Serves the libnetwork remote driver protocol on `listener` until `shutdown`
/// completes. Then it stops accepting, removes the socket file (so Docker does not
/// find a dead plugin), lets in-flight calls finish (and answer) for a few seconds,
/// waits a while longer for driver calls still running without a connection (see
/// the module's documentation) and returns.
pub async fn serve<D: Plugin>(
    listener: UnixListener,
    driver: Arc<D>,
    shutdown: impl Future<Output = ()>,
) {
    let calls = InFlight::default();
    let handler = {
        let calls = calls.clone();
        move |req: Request<Incoming>| {
            let driver = Arc::clone(&driver);
            let calls = calls.clone();
            async move { handle(driver, &calls, req).await }
        }
    };
    serve_unix(
        listener,
        "plugin",
        MAX_PLUGIN_CONNECTIONS,
        handler,
        shutdown,
    )
    .await;
    if tokio::time::timeout(CALL_DRAIN_TIMEOUT, calls.idle())
        .await
        .is_err()
    {
        warn!(
            calls = calls.count(),
            "driver calls still running after shutdown; abandoning them"
        );
    }
}

/// Counts the driver calls running as tasks, so shutdown can wait for them.
#[derive(Clone, Default)]
struct InFlight(Arc<watch::Sender<usize>>);

/// One running call; dropping it (the call's task ended) lowers the count.
struct CallGuard(InFlight);

impl InFlight {
    fn enter(&self) -> CallGuard {
        self.0.send_modify(|n| *n += 1);
        CallGuard(self.clone())
    }

    fn count(&self) -> usize {
        *self.0.borrow()
    }

    /// Returns once no call is running.
    async fn idle(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`: `wait_for` cannot fail.
        let _ = rx.wait_for(|&n| n == 0).await;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n -= 1);
    }
}

/// What undoes a call that made something, when its answer reached nobody.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    Nothing,
    DeleteNetwork(NetworkRequest),
    FreeNetwork(NetworkRequest),
    DeleteEndpoint(EndpointRequest),
    Leave(EndpointRequest),
    Revoke(EndpointRequest),
}

impl Undo {
    fn network(id: &str) -> NetworkRequest {
        NetworkRequest {
            network_id: id.to_owned(),
        }
    }

    fn endpoint(network: &str, endpoint: &str) -> EndpointRequest {
        EndpointRequest {
            network_id: network.to_owned(),
            endpoint_id: endpoint.to_owned(),
        }
    }

    fn of_create_network(r: &CreateNetworkRequest) -> Undo {
        Undo::DeleteNetwork(Undo::network(&r.network_id))
    }

    fn of_allocate_network(r: &AllocateNetworkRequest) -> Undo {
        Undo::FreeNetwork(Undo::network(&r.network_id))
    }

    fn of_create_endpoint(r: &CreateEndpointRequest) -> Undo {
        Undo::DeleteEndpoint(Undo::endpoint(&r.network_id, &r.endpoint_id))
    }

    fn of_join(r: &JoinRequest) -> Undo {
        Undo::Leave(Undo::endpoint(&r.network_id, &r.endpoint_id))
    }

    fn of_program(r: &ProgramExternalConnectivityRequest) -> Undo {
        Undo::Revoke(Undo::endpoint(&r.network_id, &r.endpoint_id))
    }

    fn nothing<R>(_: &R) -> Undo {
        Undo::Nothing
    }

    /// The counterpart's name, for logs (None: nothing to undo).
    fn name(&self) -> Option<&'static str> {
        Some(match self {
            Undo::Nothing => return None,
            Undo::DeleteNetwork(_) => Route::DeleteNetwork.name(),
            Undo::FreeNetwork(_) => Route::FreeNetwork.name(),
            Undo::DeleteEndpoint(_) => Route::DeleteEndpoint.name(),
            Undo::Leave(_) => Route::Leave.name(),
            Undo::Revoke(_) => Route::RevokeExternalConnectivity.name(),
        })
    }

    async fn run<D: NetworkDriver>(self, driver: &D) -> ApiResult<()> {
        match self {
            Undo::Nothing => Ok(()),
            Undo::DeleteNetwork(r) => driver.delete_network(r).await,
            Undo::FreeNetwork(r) => driver.free_network(r).await,
            Undo::DeleteEndpoint(r) => driver.delete_endpoint(r).await,
            Undo::Leave(r) => driver.leave(r).await,
            Undo::Revoke(r) => driver.revoke_external_connectivity(r).await,
        }
    }
}

/// The calls of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Activate,
    GetCapabilities,
    CreateNetwork,
    DeleteNetwork,
    AllocateNetwork,
    FreeNetwork,
    CreateEndpoint,
    EndpointOperInfo,
    DeleteEndpoint,
    Join,
    Leave,
    DiscoverNew,
    DiscoverDelete,
    ProgramExternalConnectivity,
    RevokeExternalConnectivity,
    IpamCapabilities,
    AddressSpaces,
    RequestPool,
    ReleasePool,
    RequestAddress,
    ReleaseAddress,
}

const NETWORK_EXAMPLE: &str = r#"{"NetworkID":"..."}"#;
const ENDPOINT_EXAMPLE: &str = r#"{"NetworkID":"...","EndpointID":"..."}"#;
const DISCOVERY_EXAMPLE: &str = r#"{"DiscoveryType":1,"DiscoveryData":{}}"#;

impl Route {
    const ALL: [Route; 21] = [
        Route::Activate,
        Route::GetCapabilities,
        Route::CreateNetwork,
        Route::DeleteNetwork,
        Route::AllocateNetwork,
        Route::FreeNetwork,
        Route::CreateEndpoint,
        Route::EndpointOperInfo,
        Route::DeleteEndpoint,
        Route::Join,
        Route::Leave,
        Route::DiscoverNew,
        Route::DiscoverDelete,
        Route::ProgramExternalConnectivity,
        Route::RevokeExternalConnectivity,
        Route::IpamCapabilities,
        Route::AddressSpaces,
        Route::RequestPool,
        Route::ReleasePool,
        Route::RequestAddress,
        Route::ReleaseAddress,
    ];

    /// The call's name, which is also its path without the leading `/`.
    fn name(self) -> &'static str {
        match self {
            Route::Activate => "Plugin.Activate",
            Route::GetCapabilities => "NetworkDriver.GetCapabilities",
            Route::CreateNetwork => "NetworkDriver.CreateNetwork",
            Route::DeleteNetwork => "NetworkDriver.DeleteNetwork",
            Route::AllocateNetwork => "NetworkDriver.AllocateNetwork",
            Route::FreeNetwork => "NetworkDriver.FreeNetwork",
            Route::CreateEndpoint => "NetworkDriver.CreateEndpoint",
            Route::EndpointOperInfo => "NetworkDriver.EndpointOperInfo",
            Route::DeleteEndpoint => "NetworkDriver.DeleteEndpoint",
            Route::Join => "NetworkDriver.Join",
            Route::Leave => "NetworkDriver.Leave",
            Route::DiscoverNew => "NetworkDriver.DiscoverNew",
            Route::DiscoverDelete => "NetworkDriver.DiscoverDelete",
            Route::ProgramExternalConnectivity => "NetworkDriver.ProgramExternalConnectivity",
            Route::RevokeExternalConnectivity => "NetworkDriver.RevokeExternalConnectivity",
            Route::IpamCapabilities => "IpamDriver.GetCapabilities",
            Route::AddressSpaces => "IpamDriver.GetDefaultAddressSpaces",
            Route::RequestPool => "IpamDriver.RequestPool",
            Route::ReleasePool => "IpamDriver.ReleasePool",
            Route::RequestAddress => "IpamDriver.RequestAddress",
            Route::ReleaseAddress => "IpamDriver.ReleaseAddress",
        }
    }

    fn from_path(path: &str) -> Option<Route> {
        let name = path.strip_prefix('/')?;
        Route::ALL.into_iter().find(|r| r.name() == name)
    }

    /// A minimal valid request body, for the message about a malformed one.
    fn example(self) -> &'static str {
        match self {
            Route::Activate
            | Route::GetCapabilities
            | Route::IpamCapabilities
            | Route::AddressSpaces => "{}",
            Route::RequestPool => r#"{"AddressSpace":"dovesnap-ovn","Pool":"10.0.0.0/24"}"#,
            Route::ReleasePool => r#"{"PoolID":"..."}"#,
            Route::RequestAddress => r#"{"PoolID":"...","Address":""}"#,
            Route::ReleaseAddress => r#"{"PoolID":"...","Address":"10.0.0.2"}"#,
            Route::CreateNetwork => {
                r#"{"NetworkID":"...","Options":{"com.docker.network.generic":{"mode":"nat"}},"IPv4Data":[{"Pool":"10.0.0.0/24","Gateway":"10.0.0.1/24"}]}"#
            }
            Route::AllocateNetwork => r#"{"NetworkID":"...","Options":{},"IPv4Data":[]}"#,
            Route::DeleteNetwork | Route::FreeNetwork => NETWORK_EXAMPLE,
            Route::CreateEndpoint => {
                r#"{"NetworkID":"...","EndpointID":"...","Interface":{"Address":"10.0.0.2/24"}}"#
            }
            Route::Join => {
                r#"{"NetworkID":"...","EndpointID":"...","SandboxKey":"/var/run/docker/netns/..."}"#
            }
            Route::ProgramExternalConnectivity => {
                r#"{"NetworkID":"...","EndpointID":"...","Options":{}}"#
            }
            Route::EndpointOperInfo
            | Route::DeleteEndpoint
            | Route::Leave
            | Route::RevokeExternalConnectivity => ENDPOINT_EXAMPLE,
            Route::DiscoverNew | Route::DiscoverDelete => DISCOVERY_EXAMPLE,
        }
    }
}

async fn handle<D: Plugin>(
    driver: Arc<D>,
    calls: &InFlight,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let Some(route) = Route::from_path(&path) else {
        warn!(%path, method = %req.method(), "unknown plugin call");
        return error_response(
            StatusCode::NOT_FOUND,
            format!(
                "unknown plugin call {path}; dovesnap serves Plugin.Activate, NetworkDriver.* and IpamDriver.*"
            ),
        );
    };
    if req.method() != Method::POST {
        warn!(call = route.name(), method = %req.method(), "plugin call with the wrong method");
        let why = format!("plugin call {path} must be a POST, not {}", req.method());
        return method_not_allowed(error_response(StatusCode::METHOD_NOT_ALLOWED, why), "POST");
    }
    let body = match read_body(route, req).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    debug!(call = route.name(), bytes = body.len(), "plugin call");
    // What Docker sends, for whoever needs to see it (`RUST_LOG=dovesnap::plugin=trace`).
    tracing::trace!(call = route.name(), body = %String::from_utf8_lossy(&body), "plugin call body");
    let resp = dispatch(driver, calls, route, &body).await;
    debug!(
        call = route.name(),
        status = resp.status().as_u16(),
        "plugin call answered"
    );
    resp
}

async fn dispatch<D: Plugin>(
    driver: Arc<D>,
    calls: &InFlight,
    route: Route,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let c = Call {
        route,
        body,
        driver,
        calls,
    };
    match route {
        // Docker sends these with an empty or `null` body: nothing to decode.
        Route::Activate => json_response(
            StatusCode::OK,
            &ActivateResponse {
                implements: vec!["NetworkDriver".into(), "IpamDriver".into()],
            },
        ),
        Route::GetCapabilities => json_response(StatusCode::OK, &c.driver.capabilities()),
        Route::IpamCapabilities => json_response(StatusCode::OK, &c.driver.ipam_capabilities()),
        Route::AddressSpaces => json_response(StatusCode::OK, &c.driver.address_spaces()),
        // An address or pool whose answer reached nobody stays claimed until its
        // network goes (the pool's last user deletes it): the request does not say
        // which claim the answer made.
        Route::RequestPool => c.run(|d, r| async move { d.request_pool(r).await }).await,
        Route::ReleasePool => c.run(|d, r| async move { d.release_pool(r).await }).await,
        Route::RequestAddress => {
            c.run(|d, r| async move { d.request_address(r).await })
                .await
        }
        Route::ReleaseAddress => {
            c.run(|d, r| async move { d.release_address(r).await })
                .await
        }
        Route::CreateNetwork => {
            c.run_undoable(
                |d, r| async move { d.create_network(r).await },
                Undo::of_create_network,
            )
            .await
        }
        Route::DeleteNetwork => c.run(|d, r| async move { d.delete_network(r).await }).await,
        Route::AllocateNetwork => {
            c.run_undoable(
                |d, r| async move { d.allocate_network(r).await },
                Undo::of_allocate_network,
            )
            .await
        }
        Route::FreeNetwork => c.run(|d, r| async move { d.free_network(r).await }).await,
        Route::CreateEndpoint => {
            c.run_undoable(
                |d, r| async move { d.create_endpoint(r).await },
                Undo::of_create_endpoint,
            )
            .await
        }
        Route::EndpointOperInfo => c.run(|d, r| async move { d.endpoint_info(r).await }).await,
        Route::DeleteEndpoint => {
            c.run(|d, r| async move { d.delete_endpoint(r).await })
                .await
        }
        Route::Join => {
            c.run_undoable(|d, r| async move { d.join(r).await }, Undo::of_join)
                .await
        }
        Route::Leave => c.run(|d, r| async move { d.leave(r).await }).await,
        Route::DiscoverNew => c.run(|d, r| async move { d.discover_new(r).await }).await,
        Route::DiscoverDelete => {
            c.run(|d, r| async move { d.discover_delete(r).await })
                .await
        }
        Route::ProgramExternalConnectivity => {
            c.run_undoable(
                |d, r| async move { d.program_external_connectivity(r).await },
                Undo::of_program,
            )
            .await
        }
        Route::RevokeExternalConnectivity => {
            c.run(|d, r| async move { d.revoke_external_connectivity(r).await })
                .await
        }
    }
}

/// One driver call on its way: the decoded request runs in a task of its own.
struct Call<'a, D> {
    route: Route,
    body: &'a [u8],
    driver: Arc<D>,
    calls: &'a InFlight,
}

impl<D: Plugin> Call<'_, D> {
    /// [`Call::run_undoable`] for a call that makes nothing to undo.
    async fn run<Req, Resp, Fut>(
        self,
        method: impl FnOnce(Arc<D>, Req) -> Fut + Send + 'static,
    ) -> Response<Full<Bytes>>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        Fut: Future<Output = ApiResult<Resp>> + Send + 'static,
    {
        self.run_undoable(method, Undo::nothing).await
    }

    /// Decodes the request, runs the driver method in its own task and encodes its
    /// answer. When the request goes away first (the connection closed), the task
    /// still runs the method to its end and, if it succeeded, runs `undo`'s
    /// counterpart: nobody heard that it did.
    async fn run_undoable<Req, Resp, Fut>(
        self,
        method: impl FnOnce(Arc<D>, Req) -> Fut + Send + 'static,
        undo: fn(&Req) -> Undo,
    ) -> Response<Full<Bytes>>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        Fut: Future<Output = ApiResult<Resp>> + Send + 'static,
    {
        let route = self.route;
        let req: Req = match serde_json::from_slice(self.body) {
            Ok(req) => req,
            Err(e) => {
                warn!(call = route.name(), error = %e, "malformed plugin call");
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "malformed {} request: {e}; expected a JSON object like {}",
                        route.name(),
                        route.example()
                    ),
                );
            }
        };
        let undo = undo(&req);
        let (tx, rx) = oneshot::channel();
        let guard = self.calls.enter();
        let driver = self.driver;
        tokio::spawn(async move {
            let _guard = guard;
            let result = method(Arc::clone(&driver), req).await;
            let made = result.is_ok();
            let resp = match result {
                Ok(resp) => json_response(StatusCode::OK, &resp),
                Err(e) => {
                    warn!(call = route.name(), error = %e, "plugin call failed");
                    // 200 with `Err` is how libnetwork expects a driver to refuse.
                    error_response(StatusCode::OK, e.0)
                }
            };
            if tx.send(resp).is_ok() {
                return;
            }
            let Some(counterpart) = undo.name().filter(|_| made) else {
                info!(
                    call = route.name(),
                    "plugin call finished after its connection closed"
                );
                return;
            };
            warn!(
                call = route.name(),
                undo = counterpart,
                "the connection closed before the answer: Docker takes the call as failed; \
                 undoing it"
            );
            match undo.run(&*driver).await {
                Ok(()) => info!(call = route.name(), "undone"),
                Err(e) => {
                    warn!(call = route.name(), undo = counterpart, error = %e, "could not undo")
                }
            }
        });
        match rx.await {
            Ok(resp) => resp,
            Err(_) => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "dovesnap's {} call ended without an answer (it panicked; see the \
                     daemon's log)",
                    route.name()
                ),
            ),
        }
    }
}

/// Reads the whole body, up to [`MAX_BODY_BYTES`].
async fn read_body(route: Route, req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    let too_large = || {
        warn!(
            call = route.name(),
            limit = MAX_BODY_BYTES,
            "plugin call body too large"
        );
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} request body is larger than {} bytes; Docker's requests are a few KiB, \
                 so this is not a Docker engine talking",
                route.name(),
                MAX_BODY_BYTES
            ),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => {
            warn!(call = route.name(), error = %e, "cannot read plugin call body");
            Err(error_response(
                StatusCode::BAD_REQUEST,
                format!("cannot read the {} request body: {e}", route.name()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::http::testutil::{request, TempDir};
    use crate::plugin::api::*;
    use crate::plugin::ipam::{
        ReleaseAddressRequest, ReleasePoolRequest, RequestAddressRequest, RequestAddressResponse,
        RequestPoolRequest, RequestPoolResponse,
    };
    use serde_json::{json, Value};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::path::PathBuf;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;
    use tokio::sync::{oneshot, Barrier, Semaphore};
    use tokio::task::JoinHandle;
    use tokio::task::JoinSet;

    /// Records every call; refuses anything on network `fail`; `Join` can wait on a
    /// barrier to prove calls run concurrently.
    #[derive(Default)]
    struct TestDriver {
        calls: Mutex<Vec<String>>,
        join_barrier: Option<Barrier>,
        /// CreateNetwork waits for a permit (once it has recorded the call).
        create_gate: Option<Semaphore>,
    }

    impl TestDriver {
        fn record(&self, call: &str, network: &str) -> ApiResult<()> {
            self.calls.lock().unwrap().push(format!("{call} {network}"));
            if network == "fail" {
                Err(ApiError::new(format!(
                    "{call}: network {network} refused by the test driver"
                )))
            } else {
                Ok(())
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl crate::plugin::ipam::IpamDriver for TestDriver {
        async fn request_pool(&self, req: RequestPoolRequest) -> ApiResult<RequestPoolResponse> {
            self.record("request_pool", &req.pool)?;
            Ok(RequestPoolResponse {
                pool_id: format!("id-{}", req.pool),
                pool: req.pool,
                ..Default::default()
            })
        }
        async fn release_pool(&self, req: ReleasePoolRequest) -> ApiResult<()> {
            self.record("release_pool", &req.pool_id)
        }
        async fn request_address(
            &self,
            req: RequestAddressRequest,
        ) -> ApiResult<RequestAddressResponse> {
            self.record("request_address", &req.pool_id)?;
            Ok(RequestAddressResponse {
                address: "10.0.0.2/24".into(),
                ..Default::default()
            })
        }
        async fn release_address(&self, req: ReleaseAddressRequest) -> ApiResult<()> {
            self.record("release_address", &req.pool_id)
        }
    }

    impl NetworkDriver for TestDriver {
        async fn create_network(&self, req: CreateNetworkRequest) -> ApiResult<()> {
            let result = self.record("create_network", &req.network_id);
            if let Some(gate) = &self.create_gate {
                gate.acquire().await.unwrap().forget();
            }
            result
        }
        async fn delete_network(&self, req: NetworkRequest) -> ApiResult<()> {
            self.record("delete_network", &req.network_id)
        }
        async fn allocate_network(
            &self,
            req: AllocateNetworkRequest,
        ) -> ApiResult<AllocateNetworkResponse> {
            self.record("allocate_network", &req.network_id)?;
            Ok(AllocateNetworkResponse {
                options: [("k".to_owned(), "v".to_owned())].into(),
            })
        }
        async fn free_network(&self, req: NetworkRequest) -> ApiResult<()> {
            self.record("free_network", &req.network_id)
        }
        async fn create_endpoint(
            &self,
            req: CreateEndpointRequest,
        ) -> ApiResult<CreateEndpointResponse> {
            self.record("create_endpoint", &req.network_id)?;
            Ok(CreateEndpointResponse {
                interface: Some(EndpointInterface {
                    mac_address: "02:42:0a:00:00:02".into(),
                    ..Default::default()
                }),
            })
        }
        async fn endpoint_info(&self, req: EndpointRequest) -> ApiResult<EndpointInfoResponse> {
            self.record("endpoint_info", &req.network_id)?;
            Ok(EndpointInfoResponse {
                value: [("port".to_owned(), json!("ovs-1"))].into(),
            })
        }
        async fn delete_endpoint(&self, req: EndpointRequest) -> ApiResult<()> {
            self.record("delete_endpoint", &req.network_id)
        }
        async fn join(&self, req: JoinRequest) -> ApiResult<JoinResponse> {
            self.record("join", &req.network_id)?;
            if let Some(b) = &self.join_barrier {
                b.wait().await;
            }
            Ok(JoinResponse {
                interface_name: InterfaceName {
                    src_name: format!("veth-{}", req.endpoint_id),
                    dst_prefix: "eth".into(),
                },
                gateway: "10.0.0.1".into(),
                ..Default::default()
            })
        }
        async fn leave(&self, req: EndpointRequest) -> ApiResult<()> {
            self.record("leave", &req.network_id)
        }
        async fn program_external_connectivity(
            &self,
            req: ProgramExternalConnectivityRequest,
        ) -> ApiResult<()> {
            self.record("program_external_connectivity", &req.network_id)
        }
        async fn revoke_external_connectivity(&self, req: EndpointRequest) -> ApiResult<()> {
            self.record("revoke_external_connectivity", &req.network_id)
        }
        async fn discover_new(&self, req: DiscoveryNotification) -> ApiResult<()> {
            self.record("discover_new", &req.discovery_type.to_string())
        }
        async fn discover_delete(&self, req: DiscoveryNotification) -> ApiResult<()> {
            self.record("discover_delete", &req.discovery_type.to_string())
        }
    }

    struct TestServer {
        dir: TempDir,
        socket: PathBuf,
        driver: Arc<TestDriver>,
        stop: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<()>>,
    }

    impl TestServer {
        fn start(driver: TestDriver) -> TestServer {
            let dir = TempDir::new("server");
            // A missing parent directory is created.
            let socket = dir.path().join("plugins").join("ovs.sock");
            let listener = bind_plugin_socket(&socket).unwrap();
            let driver = Arc::new(driver);
            let (tx, rx) = oneshot::channel();
            let task = tokio::spawn(serve(listener, Arc::clone(&driver), async {
                let _ = rx.await;
            }));
            TestServer {
                dir,
                socket,
                driver,
                stop: Some(tx),
                task: Some(task),
            }
        }

        async fn post(&self, call: &str, body: &str) -> (StatusCode, Value) {
            let (status, ctype, body) = request(&self.socket, Method::POST, call, body).await;
            assert_eq!(ctype, CONTENT_TYPE, "content type of {call}");
            let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{call}: {e}: {body}"));
            (status, v)
        }

        /// Stops the server; returns the temp dir so a test can look at it afterwards.
        async fn stop(mut self) -> TempDir {
            self.stop.take().unwrap().send(()).unwrap();
            tokio::time::timeout(Duration::from_secs(5), self.task.take().unwrap())
                .await
                .expect("server stops")
                .unwrap();
            self.dir
        }
    }

    /// Writes raw bytes and reads the answer until the server closes or 2 s pass.
    async fn raw_exchange(socket: &Path, head: &str, body_chunk: Option<Vec<u8>>) -> String {
        let mut stream = UnixStream::connect(socket).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let writer = tokio::spawn(async move {
            if let Some(chunk) = body_chunk {
                // The server may answer and close before reading all of it.
                let _ = wr.write_all(&chunk).await;
            }
            wr
        });
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match rd.read(&mut tmp).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf.extend_from_slice(&tmp[..n]);
                        if String::from_utf8_lossy(&buf).contains("\"}") {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        writer.abort();
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test]
    async fn activate_and_capabilities_accept_empty_and_null_bodies() {
        let s = TestServer::start(TestDriver::default());
        for body in ["", "null", "{}"] {
            let (status, v) = s.post("/Plugin.Activate", body).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(v, json!({"Implements": ["NetworkDriver", "IpamDriver"]}));
            let (status, v) = s.post("/NetworkDriver.GetCapabilities", body).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(v, json!({"Scope": "local", "ConnectivityScope": "local"}));
            let (status, v) = s.post("/IpamDriver.GetCapabilities", body).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                v,
                json!({"RequiresMACAddress": false, "RequiresRequestReplay": false})
            );
            let (_, v) = s.post("/IpamDriver.GetDefaultAddressSpaces", body).await;
            assert_eq!(
                v,
                json!({"LocalDefaultAddressSpace": "dovesnap-ovn",
                       "GlobalDefaultAddressSpace": "dovesnap-ovn"})
            );
        }
        s.stop().await;
    }

    #[tokio::test]
    async fn every_driver_route_reaches_the_driver() {
        let s = TestServer::start(TestDriver::default());
        let net = r#"{"NetworkID":"n1"}"#;
        let ep = r#"{"NetworkID":"n1","EndpointID":"e1"}"#;
        let disc = r#"{"DiscoveryType":1,"DiscoveryData":{"Address":"10.0.0.1"}}"#;
        let cases: Vec<(&str, String, Value)> = vec![
            (
                "CreateNetwork",
                r#"{"NetworkID":"n1","Options":{"com.docker.network.generic":{"mode":"nat"}},
                   "IPv4Data":[{"AddressSpace":"LocalDefault","Pool":"10.0.0.0/24","Gateway":"10.0.0.1/24"}],
                   "IPv6Data":[]}"#
                    .into(),
                json!({}),
            ),
            (
                "AllocateNetwork",
                r#"{"NetworkID":"n1","Options":null,"IPv4Data":[]}"#.into(),
                json!({"Options": {"k": "v"}}),
            ),
            (
                "CreateEndpoint",
                r#"{"NetworkID":"n1","EndpointID":"e1","Interface":{"Address":"10.0.0.2/24"},"Options":{}}"#
                    .into(),
                json!({"Interface": {"MacAddress": "02:42:0a:00:00:02"}}),
            ),
            (
                "EndpointOperInfo",
                ep.into(),
                json!({"Value": {"port": "ovs-1"}}),
            ),
            (
                "Join",
                r#"{"NetworkID":"n1","EndpointID":"e1","SandboxKey":"/var/run/docker/netns/x","Options":{}}"#
                    .into(),
                json!({"InterfaceName": {"SrcName": "veth-e1", "DstPrefix": "eth"},
                       "Gateway": "10.0.0.1", "DisableGatewayService": false}),
            ),
            (
                "ProgramExternalConnectivity",
                r#"{"NetworkID":"n1","EndpointID":"e1","Options":{"com.docker.network.portmap":[]}}"#
                    .into(),
                json!({}),
            ),
            ("RevokeExternalConnectivity", ep.into(), json!({})),
            ("Leave", ep.into(), json!({})),
            ("DeleteEndpoint", ep.into(), json!({})),
            ("FreeNetwork", net.into(), json!({})),
            ("DeleteNetwork", net.into(), json!({})),
            ("DiscoverNew", disc.into(), json!({})),
            ("DiscoverDelete", disc.into(), json!({})),
        ];
        for (call, body, want) in &cases {
            let (status, v) = s.post(&format!("/NetworkDriver.{call}"), body).await;
            assert_eq!(status, StatusCode::OK, "{call}: {v}");
            assert_eq!(&v, want, "{call}");
        }
        assert_eq!(
            s.driver.calls(),
            vec![
                "create_network n1",
                "allocate_network n1",
                "create_endpoint n1",
                "endpoint_info n1",
                "join n1",
                "program_external_connectivity n1",
                "revoke_external_connectivity n1",
                "leave n1",
                "delete_endpoint n1",
                "free_network n1",
                "delete_network n1",
                "discover_new 1",
                "discover_delete 1",
            ]
        );
        s.stop().await;
    }

    #[tokio::test]
    async fn driver_errors_are_200_with_err() {
        let s = TestServer::start(TestDriver::default());
        let (status, v) = s
            .post("/NetworkDriver.CreateNetwork", r#"{"NetworkID":"fail"}"#)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            v,
            json!({"Err": "create_network: network fail refused by the test driver"})
        );
        let (status, v) = s
            .post(
                "/NetworkDriver.Join",
                r#"{"NetworkID":"fail","EndpointID":"e"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["Err"], "join: network fail refused by the test driver");
        s.stop().await;
    }

    #[tokio::test]
    async fn unknown_calls_are_404() {
        let s = TestServer::start(TestDriver::default());
        for path in ["/IpamDriver.Frobnicate", "/NetworkDriver.Frobnicate", "/"] {
            let (status, v) = s.post(path, "{}").await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(
                v["Err"],
                format!(
                    "unknown plugin call {path}; dovesnap serves Plugin.Activate, \
                     NetworkDriver.* and IpamDriver.*"
                )
            );
        }
        assert!(s.driver.calls().is_empty());
        s.stop().await;
    }

    #[tokio::test]
    async fn other_methods_than_post_are_405() {
        let s = TestServer::start(TestDriver::default());
        let (status, ctype, body) = request(&s.socket, Method::GET, "/Plugin.Activate", "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(ctype, CONTENT_TYPE);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["Err"],
            "plugin call /Plugin.Activate must be a POST, not GET"
        );
        s.stop().await;
    }

    #[tokio::test]
    async fn malformed_requests_are_400_with_an_example() {
        let s = TestServer::start(TestDriver::default());
        for body in [
            "",
            "not json",
            r#"{"NetworkID":5,"EndpointID":"e"}"#,
            r#"{"EndpointID":"e"}"#,
            "[]",
        ] {
            let (status, v) = s.post("/NetworkDriver.Join", body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            let msg = v["Err"].as_str().unwrap();
            assert!(
                msg.starts_with("malformed NetworkDriver.Join request: "),
                "{msg}"
            );
            assert!(
                msg.ends_with(
                    r#"; expected a JSON object like {"NetworkID":"...","EndpointID":"...","SandboxKey":"/var/run/docker/netns/..."}"#
                ),
                "{msg}"
            );
        }
        let (_, v) = s
            .post("/NetworkDriver.Join", r#"{"NetworkID":5,"EndpointID":"e"}"#)
            .await;
        assert!(v["Err"]
            .as_str()
            .unwrap()
            .contains("invalid type: integer `5`"));
        let (_, v) = s.post("/NetworkDriver.Join", r#"{"EndpointID":"e"}"#).await;
        assert!(v["Err"]
            .as_str()
            .unwrap()
            .contains("missing field `NetworkID`"));
        assert!(s.driver.calls().is_empty());
        s.stop().await;
    }

    #[tokio::test]
    async fn every_route_has_a_valid_example() {
        // The example in the 400 message must itself be accepted.
        let s = TestServer::start(TestDriver::default());
        for route in Route::ALL {
            let (status, v) = s.post(&format!("/{}", route.name()), route.example()).await;
            assert_eq!(status, StatusCode::OK, "{}: {v}", route.name());
            assert!(v.get("Err").is_none(), "{}: {v}", route.name());
        }
        s.stop().await;
    }

    #[tokio::test]
    async fn oversized_bodies_are_413() {
        let s = TestServer::start(TestDriver::default());
        // Declared too large: refused before reading the body.
        let head = format!(
            "POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let answer = raw_exchange(&s.socket, &head, None).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(
            answer.contains("request body is larger than 1048576 bytes"),
            "{answer}"
        );

        // Chunked, no length: refused once the limit is crossed.
        let head = "POST /NetworkDriver.CreateNetwork HTTP/1.1\r\nHost: x\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
        let size = MAX_BODY_BYTES + 10;
        let mut chunk = format!("{size:x}\r\n").into_bytes();
        chunk.extend(std::iter::repeat_n(b' ', size));
        chunk.extend_from_slice(b"\r\n0\r\n\r\n");
        let answer = raw_exchange(&s.socket, head, Some(chunk)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains(CONTENT_TYPE), "{answer}");
        assert!(s.driver.calls().is_empty());

        // A body just under the limit is read; the unknown field is ignored.
        let big = format!(
            r#"{{"NetworkID":"n1","pad":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES - 64)
        );
        let (status, _) = s.post("/NetworkDriver.DeleteNetwork", &big).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(s.driver.calls(), vec!["delete_network n1"]);
        s.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_are_served_concurrently() {
        const N: usize = 4;
        let s = TestServer::start(TestDriver {
            join_barrier: Some(Barrier::new(N)),
            ..Default::default()
        });
        let socket = Arc::new(s.socket.clone());
        let mut tasks = JoinSet::new();
        for i in 0..N {
            let socket = Arc::clone(&socket);
            tasks.spawn(async move {
                let body = format!(r#"{{"NetworkID":"n","EndpointID":"e{i}"}}"#);
                request(&socket, Method::POST, "/NetworkDriver.Join", &body).await
            });
        }
        // Every Join waits until all N are inside the driver at once.
        let all = tokio::time::timeout(Duration::from_secs(10), tasks.join_all())
            .await
            .expect("the Join calls did not run concurrently");
        let mut names: Vec<String> = all
            .into_iter()
            .map(|(status, _, body)| {
                assert_eq!(status, StatusCode::OK);
                let v: Value = serde_json::from_str(&body).unwrap();
                v["InterfaceName"]["SrcName"].as_str().unwrap().to_owned()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["veth-e0", "veth-e1", "veth-e2", "veth-e3"]);
        s.stop().await;
    }

    /// At the cap a new connection is not refused: it waits in the backlog and is
    /// served as soon as another connection ends.
    #[tokio::test]
    async fn at_the_connection_cap_a_new_connection_waits_for_a_free_slot() {
        let dir = TempDir::new("cap");
        let path = dir.path().join("cap.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let handler =
            |_req: Request<Incoming>| async { Response::new(Full::new(Bytes::from_static(b"ok"))) };
        let server = tokio::spawn(serve_unix(listener, "test", 2, handler, async {
            let _ = stop_rx.await;
        }));
        // Accepted in order: these two take both slots and send nothing.
        let idle = UnixStream::connect(&path).await.unwrap();
        let _idle2 = UnixStream::connect(&path).await.unwrap();
        let mut third = UnixStream::connect(&path).await.unwrap();
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
                .await
                .is_err(),
            "a third connection was served past the cap of 2"
        );
        drop(idle);
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("served once a slot is free")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        stop_tx.send(()).unwrap();
        drop(third);
        tokio::time::timeout(Duration::from_secs(15), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_lets_an_inflight_call_finish() {
        let mut s = TestServer::start(TestDriver {
            join_barrier: Some(Barrier::new(2)),
            ..Default::default()
        });
        let socket = s.socket.clone();
        let call = tokio::spawn(async move {
            let body = r#"{"NetworkID":"n","EndpointID":"e1"}"#;
            request(&socket, Method::POST, "/NetworkDriver.Join", body).await
        });
        // Wait until the Join is inside the driver, then ask for shutdown.
        tokio::time::timeout(Duration::from_secs(5), async {
            while s.driver.calls().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the Join reaches the driver");
        s.stop.take().unwrap().send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let server = s.task.take().unwrap();
        assert!(!server.is_finished(), "the server waits for the call");
        assert!(!s.socket.exists(), "no new connections once shutting down");
        // Let the Join finish: its answer is delivered and the server stops.
        s.driver.join_barrier.as_ref().unwrap().wait().await;
        let (status, _, body) = call.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops after the call")
            .unwrap();
    }

    /// Sends `body` to `call` on a raw connection, waits until the driver has seen
    /// the call, and closes the connection without reading the answer (dockerd
    /// timing out).
    async fn send_and_hang_up(s: &TestServer, call: &str, body: &str) {
        let seen = s.driver.calls().len() + 1;
        let mut stream = UnixStream::connect(&s.socket).await.unwrap();
        let head = format!(
            "POST {call} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while s.driver.calls().len() < seen {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the call reaches the driver");
        drop(stream);
        // Let the server notice the connection is gone.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_whose_connection_closed_runs_to_its_end_and_is_undone() {
        let mut s = TestServer::start(TestDriver {
            create_gate: Some(Semaphore::new(0)),
            ..Default::default()
        });
        send_and_hang_up(&s, "/NetworkDriver.CreateNetwork", r#"{"NetworkID":"n1"}"#).await;
        // Shutdown waits for the call, which has no connection any more.
        s.stop.take().unwrap().send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let server = s.task.take().unwrap();
        assert!(
            !server.is_finished(),
            "the server waits for the detached call"
        );
        assert_eq!(s.driver.calls(), ["create_network n1"]);
        // The call ends well; nobody heard it, so it is undone before the server stops.
        s.driver.create_gate.as_ref().unwrap().add_permits(1);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops after the call")
            .unwrap();
        assert_eq!(s.driver.calls(), ["create_network n1", "delete_network n1"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_call_whose_connection_closed_is_not_undone() {
        let mut s = TestServer::start(TestDriver {
            create_gate: Some(Semaphore::new(0)),
            ..Default::default()
        });
        send_and_hang_up(
            &s,
            "/NetworkDriver.CreateNetwork",
            r#"{"NetworkID":"fail"}"#,
        )
        .await;
        s.driver.create_gate.as_ref().unwrap().add_permits(1);
        // A call that was heard is not undone either.
        s.driver.create_gate.as_ref().unwrap().add_permits(1);
        let (status, _) = s
            .post("/NetworkDriver.CreateNetwork", r#"{"NetworkID":"n2"}"#)
            .await;
        assert_eq!(status, StatusCode::OK);
        s.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.task.take().unwrap())
            .await
            .expect("server stops")
            .unwrap();
        assert_eq!(
            s.driver.calls(),
            ["create_network fail", "create_network n2"]
        );
    }

    #[test]
    fn calls_that_make_something_have_a_counterpart() {
        let ep = || EndpointRequest {
            network_id: "n".into(),
            endpoint_id: "e".into(),
        };
        let undo = Undo::of_create_endpoint(&CreateEndpointRequest {
            network_id: "n".into(),
            endpoint_id: "e".into(),
            ..Default::default()
        });
        assert_eq!(undo, Undo::DeleteEndpoint(ep()));
        assert_eq!(undo.name(), Some("NetworkDriver.DeleteEndpoint"));
        let join = Undo::of_join(&JoinRequest {
            network_id: "n".into(),
            endpoint_id: "e".into(),
            ..Default::default()
        });
        assert_eq!(join, Undo::Leave(ep()));
        let program = Undo::of_program(&ProgramExternalConnectivityRequest {
            network_id: "n".into(),
            endpoint_id: "e".into(),
            options: None,
        });
        assert_eq!(program, Undo::Revoke(ep()));
        assert_eq!(Undo::nothing(&ep()).name(), None);
    }

    #[tokio::test]
    async fn shutdown_removes_the_socket_file() {
        let s = TestServer::start(TestDriver::default());
        let socket = s.socket.clone();
        assert!(socket.exists());
        let _dir = s.stop().await;
        assert!(!socket.exists());
        // The directory itself stays (it is Docker's plugin directory).
        assert!(socket.parent().unwrap().is_dir());
    }

    #[tokio::test]
    async fn bind_makes_the_socket_root_only() {
        let dir = TempDir::new("bind");
        let socket = dir.path().join("a").join("b").join("ovs.sock");
        let _listener = bind_plugin_socket(&socket).unwrap();
        let meta = std::fs::metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_socket() {
        let dir = TempDir::new("stale");
        let socket = dir.path().join("ovs.sock");
        // A listener that is closed without removing its file, as after a crash.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert!(socket.exists());
        let listener = bind_plugin_socket(&socket).unwrap();
        // The new socket works.
        let _client = UnixStream::connect(&socket).await.unwrap();
        listener.accept().await.unwrap();
    }

    #[tokio::test]
    async fn bind_refuses_a_live_socket() {
        let dir = TempDir::new("live");
        let socket = dir.path().join("ovs.sock");
        let _first = bind_plugin_socket(&socket).unwrap();
        let e = bind_plugin_socket(&socket).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(
            e.to_string().contains("another process is serving on"),
            "{e}"
        );
        assert!(socket.exists());
    }

    #[tokio::test]
    async fn bind_refuses_to_replace_a_file() {
        let dir = TempDir::new("file");
        let path = dir.path().join("ovs.sock");
        std::fs::write(&path, b"precious").unwrap();
        let e = bind_plugin_socket(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn the_dovesnap_alias_links_to_ovs_sock_only() {
        let dir = TempDir::new("alias");
        let sock = dir.path().join("ovs.sock");
        let alias = link_alias(&sock).expect("alias made");
        assert_eq!(alias, dir.path().join(ALIAS_SOCKET_NAME));
        assert_eq!(
            std::fs::read_link(&alias).unwrap(),
            PathBuf::from("ovs.sock")
        );
        // A stale link is replaced; a foreign file is left alone.
        assert_eq!(link_alias(&sock), Some(alias.clone()));
        unlink_alias(&alias);
        assert!(std::fs::symlink_metadata(&alias).is_err());
        std::fs::write(&alias, b"someone else's").unwrap();
        assert_eq!(link_alias(&sock), None);
        unlink_alias(&alias);
        assert!(alias.exists(), "a foreign file was removed");
        assert_eq!(link_alias(&dir.path().join("other.sock")), None);
    }
}
