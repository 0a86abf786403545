//! The [`Ovsdb`] handle: one connection to ovsdb-server shared by every caller, and the
//! operations that run the [`bridge`] transactions on it.
//!
//! Waiting for ovs-vswitchd: each session monitors `Open_vSwitch.cur_cfg` (a `monitor`
//! request whose `update` notifications feed a `watch` channel). A change increments
//! `next_cfg` in its own transaction and reads the new value back; the call then waits
//! until `cur_cfg` reaches it, which ovs-vswitchd writes (together with each
//! interface's `ofport` and `error`) once it has reconfigured.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{watch, Mutex};

use super::bridge::{self, Change};
use super::jsonrpc::{Connection, NotifyFn};
use super::txn::{self, Refusal, Txn, DB};
use super::{BridgeInfo, BridgeSpec, OvsdbError, PortSpec, TunnelSpec, DEFAULT_APPLY_TIMEOUT};

/// The id of the `cur_cfg` monitor, echoed in its `update` notifications.
const MONITOR_ID: &str = "dovesnap-cur-cfg";

/// The highest `Open_vSwitch.cur_cfg` in a monitor's table-updates (the initial
/// `monitor` reply or an `update` notification's second parameter).
fn cur_cfg_from_updates(updates: &Value) -> Option<i64> {
    updates
        .get(DB)?
        .as_object()?
        .values()
        .filter_map(|row| row.get("new")?.get("cur_cfg")?.as_i64())
        .max()
}

/// Raises the watched `cur_cfg`, never lowers it: the monitor's initial reply and its
/// first notifications can be handled in either order.
fn raise(cur_cfg: &watch::Sender<i64>, seen: i64) {
    cur_cfg.send_if_modified(|current| {
        let newer = seen > *current;
        if newer {
            *current = seen;
        }
        newer
    });
}

/// One connection and its view of `cur_cfg`. The reader task holds the only sender,
/// so waiting on `cur_cfg` ends with an error when the connection goes.
struct Session {
    rpc: Connection,
    cur_cfg: watch::Receiver<i64>,
}

impl Session {
    async fn open(path: &Path) -> Result<Self, OvsdbError> {
        let (tx, cur_cfg) = watch::channel(0);
        let tx = Arc::new(tx);
        let notify_tx = tx.clone();
        let notify: NotifyFn = Box::new(move |method, params| {
            if method == "update" && params.get(0).and_then(Value::as_str) == Some(MONITOR_ID) {
                if let Some(seen) = params.get(1).and_then(cur_cfg_from_updates) {
                    raise(&notify_tx, seen);
                }
            }
        });
        let rpc = Connection::connect(path, notify).await?;
        let initial = rpc
            .call(
                "monitor",
                json!([DB, MONITOR_ID, {DB: {"columns": ["cur_cfg"]}}]),
            )
            .await?;
        if let Some(seen) = cur_cfg_from_updates(&initial) {
            raise(&tx, seen);
        }
        Ok(Session { rpc, cur_cfg })
    }

    async fn transact(&self, txn: &Txn) -> Result<Result<Vec<Value>, Refusal>, OvsdbError> {
        let result = self.rpc.call("transact", txn.params()).await?;
        txn::check(result, txn.len())
    }

    /// A read-only transaction.
    async fn read(&self, txn: &Txn) -> Result<Vec<Value>, OvsdbError> {
        self.transact(txn)
            .await?
            .map_err(|refusal| OvsdbError::Transaction {
                what: "read the switch configuration".into(),
                error: refusal.error,
                details: refusal.details,
            })
    }

    async fn commit(&self, change: &Change) -> Result<Vec<Value>, OvsdbError> {
        tracing::debug!(what = %change.what, "ovsdb transact");
        self.transact(&change.txn)
            .await?
            .map_err(|refusal| change.refused(refusal))
    }

    /// Waits until ovs-vswitchd has applied the committed `change`.
    async fn wait_applied(
        &self,
        change: &Change,
        results: &[Value],
        timeout: Duration,
    ) -> Result<(), OvsdbError> {
        let next_cfg = txn::next_cfg(results, change.next_cfg)?;
        let mut cur_cfg = self.cur_cfg.clone();
        // Drop the `Ref` that `wait_for` returns before reading `cur_cfg` again.
        let waited = tokio::time::timeout(timeout, cur_cfg.wait_for(|&c| c >= next_cfg))
            .await
            .map(|seen| seen.map(drop));
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(OvsdbError::Disconnected(format!(
                "closed while waiting for ovs-vswitchd to {}",
                change.what
            ))),
            Err(_) => Err(OvsdbError::VswitchdTimeout {
                what: change.what.clone(),
                after: timeout,
                cur_cfg: *cur_cfg.borrow(),
                next_cfg,
            }),
        }
    }

    /// Fails when ovs-vswitchd reported an error for an interface `change` inserted.
    async fn check_interfaces(&self, change: &Change, results: &[Value]) -> Result<(), OvsdbError> {
        let uuids = change.new_interfaces(results)?;
        if uuids.is_empty() {
            return Ok(());
        }
        let status = self.read(&bridge::interface_status(&uuids)).await?;
        match bridge::interface_failure(&status)? {
            Some((name, message)) => Err(OvsdbError::Interface { name, message }),
            None => Ok(()),
        }
    }
}

/// A change the database holds that ovs-vswitchd has yet to apply: awaiting it waits
/// for that (see [`Ovsdb::delete_port_committed`]).
pub type Applied =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), OvsdbError>> + Send>>;

/// A cloneable handle on one persistent connection to ovsdb-server. Calls from many
/// tasks run concurrently on it; when the connection breaks, the next call reconnects.
#[derive(Clone)]
pub struct Ovsdb {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    apply_timeout: Duration,
    session: Mutex<Arc<Session>>,
}

impl std::fmt::Debug for Ovsdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ovsdb")
            .field("path", &self.inner.path)
            .field("apply_timeout", &self.inner.apply_timeout)
            .finish_non_exhaustive()
    }
}

impl Ovsdb {
    /// Connects to ovsdb-server's unix socket (usually [`super::DEFAULT_SOCKET`]).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, OvsdbError> {
        Self::connect_with_timeout(path, DEFAULT_APPLY_TIMEOUT).await
    }

    /// Like [`Ovsdb::connect`], waiting at most `apply_timeout` for ovs-vswitchd to
    /// apply each change.
    pub async fn connect_with_timeout(
        path: impl AsRef<Path>,
        apply_timeout: Duration,
    ) -> Result<Self, OvsdbError> {
        let path = path.as_ref().to_path_buf();
        let session = Session::open(&path).await?;
        Ok(Ovsdb {
            inner: Arc::new(Inner {
                path,
                apply_timeout,
                session: Mutex::new(Arc::new(session)),
            }),
        })
    }

    /// The socket this handle talks to.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn session(&self) -> Result<Arc<Session>, OvsdbError> {
        let mut current = self.inner.session.lock().await;
        if current.rpc.is_closed() {
            tracing::info!(path = %self.inner.path.display(), "reconnecting to ovsdb-server");
            *current = Arc::new(Session::open(&self.inner.path).await?);
        }
        Ok(current.clone())
    }

    /// Commits `change`, waits for ovs-vswitchd to apply it and checks its new
    /// interfaces. When that fails the change is rolled back (best effort, logged)
    /// before the error is returned, so a failed call leaves nothing behind.
    async fn apply(&self, change: Change) -> Result<(), OvsdbError> {
        self.commit(change).await?.await
    }

    /// [`Ovsdb::apply`] in two halves: answers once the database holds `change`; the
    /// returned future waits for ovs-vswitchd, checks and rolls back.
    async fn commit(&self, change: Change) -> Result<Applied, OvsdbError> {
        let session = self.session().await?;
        let timeout = self.inner.apply_timeout;
        let results = session.commit(&change).await?;
        Ok(Box::pin(async move {
            let outcome = match session.wait_applied(&change, &results, timeout).await {
                Ok(()) => session.check_interfaces(&change, &results).await,
                Err(e) => Err(e),
            };
            let Err(error) = outcome else {
                return Ok(());
            };
            // Without ovs-vswitchd the rollback cannot be waited for either: only
            // commit it.
            let vswitchd_alive = !matches!(error, OvsdbError::VswitchdTimeout { .. });
            let rollback = async {
                let Some(undo) = change.undo(&results)? else {
                    return Ok(());
                };
                let undo_results = session.commit(&undo).await?;
                if vswitchd_alive {
                    session.wait_applied(&undo, &undo_results, timeout).await?;
                }
                Ok::<_, OvsdbError>(())
            };
            if let Err(e) = rollback.await {
                tracing::warn!(what = %change.what, error = %e, "could not roll back a failed change");
            }
            Err(error)
        }))
    }

    async fn read(&self, txn: &Txn) -> Result<Vec<Value>, OvsdbError> {
        self.session().await?.read(txn).await
    }

    /// Creates a bridge with its internal port, uplinks and controllers, in one
    /// transaction, and waits until ovs-vswitchd has set it up.
    pub async fn create_bridge(&self, spec: &BridgeSpec) -> Result<(), OvsdbError> {
        self.apply(bridge::create_bridge(spec)?).await
    }

    /// Deletes a bridge with its ports, interfaces and controllers.
    pub async fn delete_bridge(&self, name: &str) -> Result<(), OvsdbError> {
        let found = self.read(&bridge::find_bridge(name)).await?;
        let uuid = bridge::found(&found, "Bridge")?
            .ok_or_else(|| OvsdbError::NoSuchBridge(name.to_string()))?;
        self.apply(bridge::delete_bridge(name, &uuid)).await
    }

    /// Adds an existing host interface to `bridge` as a port.
    pub async fn add_port(&self, bridge: &str, spec: &PortSpec) -> Result<(), OvsdbError> {
        self.apply(bridge::add_port(bridge, spec)?).await
    }

    /// Adds a tunnel port to `bridge`.
    pub async fn add_tunnel(&self, bridge: &str, tunnel: &TunnelSpec) -> Result<(), OvsdbError> {
        self.apply(bridge::add_tunnel(bridge, tunnel)?).await
    }

    /// Sets the VLANs trunk port `port` of `bridge` carries (empty: all of them).
    pub async fn set_port_trunks(
        &self,
        bridge: &str,
        port: &str,
        trunks: &[u16],
    ) -> Result<(), OvsdbError> {
        self.apply(bridge::set_port_trunks(bridge, port, trunks)?)
            .await
    }

    /// Removes port `port` (and its interface) from `bridge`.
    pub async fn delete_port(&self, bridge: &str, port: &str) -> Result<(), OvsdbError> {
        self.delete_port_committed(bridge, port).await?.await
    }

    /// Removes port `port` from `bridge` like [`Ovsdb::delete_port`], answering once
    /// the database holds the change; the returned future waits for ovs-vswitchd to
    /// apply it.
    pub async fn delete_port_committed(
        &self,
        bridge: &str,
        port: &str,
    ) -> Result<Applied, OvsdbError> {
        let found = self.read(&bridge::find_port(port)).await?;
        let Some(uuid) = bridge::found(&found, "Port")? else {
            let bridge_found = self.read(&bridge::find_bridge(bridge)).await?;
            return Err(match bridge::found(&bridge_found, "Bridge")? {
                Some(_) => OvsdbError::NoSuchPort {
                    bridge: bridge.to_string(),
                    port: port.to_string(),
                },
                None => OvsdbError::NoSuchBridge(bridge.to_string()),
            });
        };
        self.commit(bridge::remove_port(bridge, port, &uuid)).await
    }

    /// Sets `key=value` in the `external_ids` of port `port` (bookkeeping only: the
    /// datapath does not change, so there is nothing for ovs-vswitchd to apply).
    pub async fn set_port_external_id(
        &self,
        port: &str,
        key: &str,
        value: &str,
    ) -> Result<(), OvsdbError> {
        let txn = bridge::set_port_external_id(port, key, value);
        if !self.mutated(&txn).await? {
            return Err(OvsdbError::PortGone(port.to_string()));
        }
        Ok(())
    }

    /// Runs a transaction of one mutation; whether it matched a row.
    async fn mutated(&self, txn: &Txn) -> Result<bool, OvsdbError> {
        let results = self.read(txn).await?;
        let count = results
            .first()
            .and_then(|r| r.get("count"))
            .and_then(Value::as_i64);
        Ok(count != Some(0))
    }

    /// Sets `set` and removes `remove` in the `external_ids` of bridge `bridge`
    /// (bookkeeping only, as [`Ovsdb::set_port_external_id`]); the bridge must exist.
    pub async fn update_bridge_external_ids(
        &self,
        bridge: &str,
        set: &std::collections::BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), OvsdbError> {
        let txn = bridge::update_bridge_external_ids(bridge, set, remove);
        if !self.mutated(&txn).await? {
            return Err(OvsdbError::NoSuchBridge(bridge.to_string()));
        }
        Ok(())
    }

    /// Every bridge with its ports, sorted by name.
    pub async fn list_bridges(&self) -> Result<Vec<BridgeInfo>, OvsdbError> {
        bridge::parse_bridges(&self.read(&bridge::query_bridges(None)).await?)
    }

    /// The bridge named `name`, if it exists.
    pub async fn bridge(&self, name: &str) -> Result<Option<BridgeInfo>, OvsdbError> {
        let results = self.read(&bridge::query_bridges(Some(name))).await?;
        Ok(bridge::parse_bridges(&results)?.into_iter().next())
    }

    /// `Open_vSwitch.external_ids`: OVN's chassis settings (`system-id`,
    /// `ovn-remote`, `ovn-encap-ip`, ...) and dovesnap's overlay network records.
    pub async fn switch_external_ids(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>, OvsdbError> {
        bridge::parse_switch_external_ids(&self.read(&bridge::query_switch_external_ids()).await?)
    }

    /// Sets (or with `None` removes) `key` in `Open_vSwitch.external_ids`
    /// (bookkeeping: nothing for ovs-vswitchd to apply).
    pub async fn set_switch_external_id(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), OvsdbError> {
        self.read(&bridge::set_switch_external_id(key, value))
            .await
            .map(drop)
    }

    /// The datapath types ovs-vswitchd supports (`Open_vSwitch.datapath_types`).
    pub async fn datapath_types(&self) -> Result<Vec<String>, OvsdbError> {
        bridge::parse_datapath_types(&self.read(&bridge::query_datapath_types()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovsdb::jsonrpc::Framer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    #[test]
    fn reads_cur_cfg_from_monitor_updates() {
        let initial = json!({"Open_vSwitch": {"u1": {"new": {"cur_cfg": 7}}}});
        assert_eq!(cur_cfg_from_updates(&initial), Some(7));
        let modify =
            json!({"Open_vSwitch": {"u1": {"old": {"cur_cfg": 7}, "new": {"cur_cfg": 8}}}});
        assert_eq!(cur_cfg_from_updates(&modify), Some(8));
        assert_eq!(cur_cfg_from_updates(&json!({})), None);
        assert_eq!(
            cur_cfg_from_updates(&json!({"Open_vSwitch": {"u1": {"old": {}}}})),
            None
        );

        let (tx, rx) = watch::channel(5);
        raise(&tx, 3);
        assert_eq!(*rx.borrow(), 5);
        raise(&tx, 9);
        assert_eq!(*rx.borrow(), 9);
    }

    #[tokio::test]
    async fn missing_socket_says_how_to_start_ovs() {
        let err = Ovsdb::connect("/nonexistent/dovesnap/db.sock")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("cannot reach ovsdb-server at /nonexistent/dovesnap/db.sock"),
            "{text}"
        );
        assert!(text.contains("is Open vSwitch running?"), "{text}");
        assert!(text.contains("start it with"), "{text}");
    }

    /// A fake ovsdb-server: answers `monitor` with cur_cfg 4 and every transact with
    /// plausible results (next_cfg 5). With `vswitchd` it then announces cur_cfg 5 as
    /// ovs-vswitchd would. With `hang_ups`, it closes the first connections right
    /// after their `monitor`. Returns the changes (transactions that mutate) it got.
    async fn fake_server(listener: UnixListener, vswitchd: bool, hang_ups: usize) -> Vec<Value> {
        for _ in 0..hang_ups {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let n = stream.read(&mut buf).await.unwrap();
            let req: Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!(req["method"], "monitor");
            let reply = json!({"id": req["id"], "result": {}, "error": null});
            stream
                .write_all(&serde_json::to_vec(&reply).unwrap())
                .await
                .unwrap();
        }
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut framer = Framer::default();
        let mut buf = vec![0u8; 65536];
        let mut transactions = Vec::new();
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return transactions;
            }
            framer.push(&buf[..n]);
            while let Some(frame) = framer.next_frame().unwrap() {
                let req: Value = serde_json::from_slice(&frame).unwrap();
                let (id, params) = (req["id"].clone(), req["params"].clone());
                let mut notify = None;
                let result = match req["method"].as_str().unwrap() {
                    "monitor" => json!({"Open_vSwitch": {"o": {"new": {"cur_cfg": 4}}}}),
                    "transact" => {
                        let ops = &params.as_array().unwrap()[1..];
                        if ops.iter().any(|o| o["op"] == "mutate") {
                            transactions.push(params.clone());
                            if vswitchd {
                                notify = Some(json!({"id": null, "method": "update", "params":
                                    [MONITOR_ID, {"Open_vSwitch": {"o": {"new": {"cur_cfg": 5}}}}]}));
                            }
                        }
                        let results: Vec<Value> = ops
                            .iter()
                            .map(|o| match (o["op"].as_str().unwrap(), o["table"].as_str()) {
                                ("insert", _) => json!({"uuid": ["uuid", "0000-fake"]}),
                                ("select", Some("Open_vSwitch")) => json!({"rows": [
                                    {"next_cfg": 5, "datapath_types": ["set", ["netdev"]]}]}),
                                ("select", Some("Interface")) => json!({"rows": [
                                    {"name": "fake0", "type": "", "error": ["set", []], "ofport": 1}]}),
                                _ => json!({}),
                            })
                            .collect();
                        Value::Array(results)
                    }
                    other => panic!("unexpected method {other}"),
                };
                let reply = json!({"id": id, "result": result, "error": null});
                stream
                    .write_all(&serde_json::to_vec(&reply).unwrap())
                    .await
                    .unwrap();
                if let Some(n) = notify {
                    stream
                        .write_all(&serde_json::to_vec(&n).unwrap())
                        .await
                        .unwrap();
                }
            }
        }
    }

    fn socket_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("dovesnap-ovsdb-{tag}-{}.sock", std::process::id()))
    }

    fn spec() -> BridgeSpec {
        BridgeSpec {
            name: "fakebr".into(),
            datapath_type: "netdev".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn waits_for_cur_cfg_from_the_monitor() {
        let path = socket_path("ok");
        let _ = std::fs::remove_file(&path);
        let server = tokio::spawn(fake_server(UnixListener::bind(&path).unwrap(), true, 0));
        let ovsdb = Ovsdb::connect_with_timeout(&path, Duration::from_secs(5))
            .await
            .unwrap();
        ovsdb.create_bridge(&spec()).await.unwrap();
        drop(ovsdb);
        let transactions = server.await.unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            transactions.len(),
            1,
            "no rollback expected: {transactions:?}"
        );
    }

    #[tokio::test]
    async fn times_out_and_rolls_back_without_vswitchd() {
        let path = socket_path("timeout");
        let _ = std::fs::remove_file(&path);
        let server = tokio::spawn(fake_server(UnixListener::bind(&path).unwrap(), false, 0));
        let ovsdb = Ovsdb::connect_with_timeout(&path, Duration::from_millis(200))
            .await
            .unwrap();
        let err = ovsdb.create_bridge(&spec()).await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                OvsdbError::VswitchdTimeout {
                    cur_cfg: 4,
                    next_cfg: 5,
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("is ovs-vswitchd running?"), "{text}");
        assert!(text.contains("create bridge fakebr"), "{text}");
        drop(ovsdb);
        let transactions = server.await.unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(transactions.len(), 2, "the change and its rollback");
        let rollback = transactions[1].to_string();
        assert!(
            rollback.contains(r#"["bridges","delete",["set",[["uuid","0000-fake"]]]]"#),
            "{rollback}"
        );
    }

    #[tokio::test]
    async fn reconnects_after_the_server_hangs_up() {
        let path = socket_path("reconnect");
        let _ = std::fs::remove_file(&path);
        let server = tokio::spawn(fake_server(UnixListener::bind(&path).unwrap(), true, 1));
        let ovsdb = Ovsdb::connect(&path).await.unwrap();
        // Wait for the reader task to see the hang-up.
        for _ in 0..100 {
            if ovsdb.inner.session.lock().await.rpc.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ovsdb.inner.session.lock().await.rpc.is_closed());
        assert_eq!(ovsdb.datapath_types().await.unwrap(), ["netdev"]);
        ovsdb.create_bridge(&spec()).await.unwrap();
        drop(ovsdb);
        assert_eq!(server.await.unwrap().len(), 1);
        let _ = std::fs::remove_file(&path);
    }
}
