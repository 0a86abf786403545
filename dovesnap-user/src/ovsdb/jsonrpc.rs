//! JSON-RPC 1.0 as OVSDB uses it (RFC 7047 section 4): a stream of JSON objects in
//! both directions, no framing between them.
//!
//! A [`Connection`] owns two tasks: a writer that sends queued messages in order, and a
//! reader that splits the incoming stream into objects ([`Framer`]), hands each
//! response to the caller waiting for its id, answers the server's `echo` requests
//! (its liveness probe) and passes notifications (`update`) to a callback. Any number
//! of tasks may call [`Connection::call`] at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{OvsdbError, Remote};

/// Called by the reader task with each notification's method and params.
pub(crate) type NotifyFn = Box<dyn FnMut(&str, Value) + Send>;

/// How long a call (or connecting) waits before giving up. ovsdb-server answers in
/// milliseconds; driver calls make these under the driver lock, and Docker gives a
/// plugin call 30 s in all, so a hung or stopped server must fail a call well before.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest JSON-RPC message accepted from a peer. ovsdb-server's biggest answers
/// (a whole table of a large OVN northbound database) are a few MiB; a peer that sends
/// more without closing its object is not speaking OVSDB, and the reader drops the
/// connection instead of buffering it without end.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Splits a byte stream into top-level JSON objects without parsing them twice: it
/// tracks nesting depth and string state over the bytes it has not looked at yet.
/// An unfinished object longer than its limit ([`MAX_MESSAGE_BYTES`]) is an error.
#[derive(Debug)]
pub(crate) struct Framer {
    buf: Vec<u8>,
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    limit: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::with_limit(MAX_MESSAGE_BYTES)
    }
}

impl Framer {
    /// A framer that refuses unfinished objects of more than `limit` bytes.
    pub(crate) fn with_limit(limit: usize) -> Self {
        Framer {
            buf: Vec::new(),
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            limit,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete object, if the bytes received so far hold one.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Vec<u8>>, OvsdbError> {
        while self.scanned < self.buf.len() {
            let i = self.scanned;
            let b = self.buf[i];
            self.scanned += 1;
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'{' | b'[' if self.depth > 0 || b == b'{' => self.depth += 1,
                b'}' | b']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let frame: Vec<u8> = self.buf.drain(..=i).collect();
                        self.scanned = 0;
                        return Ok(Some(frame));
                    }
                }
                b'"' if self.depth > 0 => self.in_string = true,
                _ if self.depth > 0 || b.is_ascii_whitespace() => {}
                _ => {
                    return Err(OvsdbError::Protocol(format!(
                        "expected a JSON object from ovsdb-server, got byte {:?}",
                        char::from(b)
                    )))
                }
            }
        }
        // Everything buffered now belongs to one unfinished object.
        if self.buf.len() > self.limit {
            return Err(OvsdbError::MessageTooLarge {
                received: self.buf.len(),
                limit: self.limit,
            });
        }
        Ok(None)
    }
}

/// One message from the server, classified.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    /// The answer to our request `id`: its result, or its JSON-RPC error.
    Response {
        id: u64,
        result: Result<Value, Value>,
    },
    /// A request the server expects an answer to (`echo`).
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    /// A notification (`update` for a monitor).
    Notification { method: String, params: Value },
}

pub(crate) fn classify(message: Value) -> Result<Incoming, OvsdbError> {
    let Value::Object(mut m) = message else {
        return Err(OvsdbError::Protocol(format!(
            "message is not an object: {message}"
        )));
    };
    let id = m.remove("id").unwrap_or(Value::Null);
    if let Some(method) = m.get("method").and_then(Value::as_str).map(str::to_string) {
        let params = m.remove("params").unwrap_or(Value::Null);
        return Ok(if id.is_null() {
            Incoming::Notification { method, params }
        } else {
            Incoming::Request { id, method, params }
        });
    }
    let id = id
        .as_u64()
        .ok_or_else(|| OvsdbError::Protocol(format!("response without a valid id: {id}")))?;
    let error = m.remove("error").unwrap_or(Value::Null);
    let result = if error.is_null() {
        Ok(m.remove("result").unwrap_or(Value::Null))
    } else {
        Err(error)
    };
    Ok(Incoming::Response { id, result })
}

fn encode(message: &Value) -> Vec<u8> {
    serde_json::to_vec(message).expect("a serde_json::Value always serializes")
}

/// How a pending call ended, other than by a result.
enum Failure {
    Rpc(Value),
    Closed(String),
}

type Reply = Result<Value, Failure>;

#[derive(Default)]
struct State {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Why the connection closed, once it has.
    closed: Option<String>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Wakes the writer when the connection closes, so it drops its half of the
    /// stream and the socket closes (the reader has stopped by then).
    closing: tokio::sync::Notify,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // The lock is never held across code that can panic; recover anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection closed and fails every pending call.
    fn close(&self, reason: String) {
        let pending = {
            let mut state = self.state();
            if state.closed.is_none() {
                tracing::debug!(%reason, "ovsdb connection closed");
                state.closed = Some(reason.clone());
            }
            std::mem::take(&mut state.pending)
        };
        for (_, tx) in pending {
            let _ = tx.send(Err(Failure::Closed(reason.clone())));
        }
        self.closing.notify_one();
    }
}

/// A JSON-RPC connection to ovsdb-server.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    tasks: [JoinHandle<()>; 2],
}

impl Connection {
    /// Connects to the unix socket at `path`.
    pub(crate) async fn connect(path: &Path, notify: NotifyFn) -> Result<Self, OvsdbError> {
        let stream = tokio::time::timeout(CALL_TIMEOUT, UnixStream::connect(path))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            .map_err(|source| OvsdbError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self::new(stream, notify))
    }

    /// Connects to `remote` (a unix socket or a TCP address), giving up after
    /// `timeout`.
    pub(crate) async fn connect_remote(
        remote: &Remote,
        timeout: Duration,
        notify: NotifyFn,
    ) -> Result<Self, OvsdbError> {
        let failed = |source| OvsdbError::ConnectRemote {
            remote: remote.to_string(),
            source,
        };
        let timed_out = || failed(std::io::ErrorKind::TimedOut.into());
        Ok(match remote {
            Remote::Unix(path) => Self::new(
                tokio::time::timeout(timeout, UnixStream::connect(path))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(failed)?,
                notify,
            ),
            Remote::Tcp(addr) => {
                let stream = tokio::time::timeout(timeout, TcpStream::connect(addr.as_str()))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(failed)?;
                let _ = stream.set_nodelay(true);
                Self::new(stream, notify)
            }
        })
    }

    /// Runs the protocol over an already connected stream.
    pub(crate) fn new<S>(stream: S, notify: NotifyFn) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::with_message_limit(stream, notify, MAX_MESSAGE_BYTES)
    }

    /// [`Connection::new`], dropping the connection when the peer sends more than
    /// `limit` bytes without finishing a message.
    fn with_message_limit<S>(stream: S, notify: NotifyFn, limit: usize) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        let shared = Arc::new(Shared::default());
        let (out, rx) = mpsc::unbounded_channel();
        let tasks = [
            tokio::spawn(write_loop(writer, rx, shared.clone())),
            tokio::spawn(read_loop(
                reader,
                Framer::with_limit(limit),
                shared.clone(),
                out.clone(),
                notify,
            )),
        ];
        Connection { shared, out, tasks }
    }

    /// Whether the connection has failed or been closed by the server.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.state().closed.is_some()
    }

    /// Sends a request and waits for its response.
    pub(crate) async fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.state();
            if let Some(reason) = &state.closed {
                return Err(OvsdbError::Disconnected(reason.clone()));
            }
            state.pending.insert(id, tx);
        }
        let request = json!({"method": method, "params": params, "id": id});
        tracing::trace!(%request, "ovsdb request");
        if self.out.send(encode(&request)).is_err() {
            self.shared.state().pending.remove(&id);
            return Err(OvsdbError::Disconnected(
                "the writer task has stopped".into(),
            ));
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(Failure::Rpc(error)))) => Err(OvsdbError::Rpc {
                method: method.to_string(),
                error,
            }),
            Ok(Ok(Err(Failure::Closed(reason)))) => Err(OvsdbError::Disconnected(reason)),
            Ok(Err(_)) => Err(OvsdbError::Disconnected(
                "the reader task has stopped".into(),
            )),
            Err(_) => {
                self.shared.state().pending.remove(&id);
                Err(OvsdbError::CallTimeout {
                    method: method.to_string(),
                    after: CALL_TIMEOUT,
                })
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.close("the connection was dropped".into());
    }
}

async fn write_loop<W: AsyncWrite>(
    writer: W,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    tokio::pin!(writer);
    loop {
        let message = tokio::select! {
            message = rx.recv() => match message {
                Some(message) => message,
                None => return,
            },
            () = shared.closing.notified() => return,
        };
        if let Err(e) = writer.write_all(&message).await {
            shared.close(format!("cannot write to ovsdb-server: {e}"));
            return;
        }
    }
}

async fn read_loop<R: AsyncRead>(
    reader: R,
    mut framer: Framer,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Vec<u8>>,
    mut notify: NotifyFn,
) {
    tokio::pin!(reader);
    let mut buf = vec![0u8; 64 * 1024];
    let reason = 'read: loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break "ovsdb-server closed the connection".to_string(),
            Ok(n) => n,
            Err(e) => break format!("cannot read from ovsdb-server: {e}"),
        };
        framer.push(&buf[..n]);
        loop {
            let frame = match framer.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => break 'read e.to_string(),
            };
            let message = match serde_json::from_slice(&frame)
                .map_err(|e| OvsdbError::Protocol(format!("invalid JSON from ovsdb-server: {e}")))
            {
                Ok(message) => message,
                Err(e) => break 'read e.to_string(),
            };
            match classify(message) {
                Ok(Incoming::Response { id, result }) => {
                    let waiter = shared.state().pending.remove(&id);
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(result.map_err(Failure::Rpc));
                        }
                        None => tracing::debug!(id, "ovsdb response nobody waits for"),
                    }
                }
                Ok(Incoming::Request { id, method, params }) => {
                    let reply = if method == "echo" {
                        json!({"id": id, "result": params, "error": null})
                    } else {
                        tracing::debug!(%method, "unexpected request from ovsdb-server");
                        json!({"id": id, "result": null, "error": "unknown method"})
                    };
                    let _ = out.send(encode(&reply));
                }
                Ok(Incoming::Notification { method, params }) => notify(&method, params),
                Err(e) => break 'read e.to_string(),
            }
        }
    };
    shared.close(reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    fn frames(framer: &mut Framer) -> Vec<String> {
        std::iter::from_fn(|| framer.next_frame().unwrap())
            .map(|f| String::from_utf8(f).unwrap())
            .collect()
    }

    #[test]
    fn framer_splits_back_to_back_objects() {
        let mut f = Framer::default();
        f.push(br#"{"id":1,"result":[]}{"id":2,"result":{"a":[1,{"b":2}]}}"#);
        let got = frames(&mut f);
        assert_eq!(
            got,
            [
                r#"{"id":1,"result":[]}"#,
                r#"{"id":2,"result":{"a":[1,{"b":2}]}}"#
            ]
        );
    }

    #[test]
    fn framer_waits_for_split_objects_and_ignores_braces_in_strings() {
        let text = br#" {"method":"echo","params":["}{\"]\\"],"id":"x"}"#;
        let mut f = Framer::default();
        for chunk in text.chunks(3) {
            assert!(f.next_frame().unwrap().is_none());
            f.push(chunk);
        }
        let got = frames(&mut f);
        assert_eq!(got.len(), 1);
        let v: Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(v["params"][0], "}{\"]\\");
    }

    #[test]
    fn framer_rejects_non_objects() {
        let mut f = Framer::default();
        f.push(b"\n[1]");
        assert!(f.next_frame().is_err());
    }

    #[test]
    fn framer_refuses_an_endless_object_but_not_one_at_the_limit() {
        let mut f = Framer::with_limit(16);
        f.push(br#"{"a":"0123456789"}"#[..16].as_ref());
        assert!(f.next_frame().unwrap().is_none());
        f.push(b"xx");
        let err = f.next_frame().unwrap_err();
        assert!(
            matches!(
                err,
                OvsdbError::MessageTooLarge {
                    received: 18,
                    limit: 16
                }
            ),
            "{err:?}"
        );
        // Complete objects are split off before the rest is measured.
        let mut f = Framer::with_limit(16);
        f.push(br#"{"id":1,"result":[]}{"a""#);
        assert_eq!(frames(&mut f), [r#"{"id":1,"result":[]}"#]);
    }

    /// A peer that opens an object and never closes it: the pending call fails with
    /// an error naming the limit, the connection is dropped (the peer reads EOF), and
    /// the buffer never grew much past the limit.
    #[tokio::test]
    async fn an_endless_message_drops_the_connection() {
        const LIMIT: usize = 1 << 20;
        let (client, mut server) = UnixStream::pair().unwrap();
        let conn = Connection::with_message_limit(client, Box::new(|_, _| {}), LIMIT);
        let flood = async move {
            let mut request = [0u8; 256];
            let _ = server.read(&mut request).await.unwrap();
            server.write_all(br#"{"id":0,"result":""#).await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            // Until the client hangs up; far more than the limit if it never does.
            while sent < 64 * LIMIT {
                if server.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            // Closed with our bytes unread: EOF or a reset, never a hang.
            let mut rest = Vec::new();
            let closed = match server.read_to_end(&mut rest).await {
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            };
            (sent, closed)
        };
        let (result, (sent, closed)) = tokio::join!(conn.call("list_dbs", json!([])), flood);
        let err = result.unwrap_err().to_string();
        assert!(err.contains("without finishing a JSON message"), "{err}");
        assert!(err.contains(&LIMIT.to_string()), "{err}");
        assert!(
            sent < 4 * LIMIT,
            "the client read {sent} bytes before giving up"
        );
        assert!(closed, "the client did not close the connection");
        assert!(conn.is_closed());
    }

    #[test]
    fn classifies_messages() {
        assert_eq!(
            classify(json!({"id": 3, "result": [1], "error": null})).unwrap(),
            Incoming::Response {
                id: 3,
                result: Ok(json!([1]))
            }
        );
        assert_eq!(
            classify(json!({"id": 4, "result": null, "error": "unknown database"})).unwrap(),
            Incoming::Response {
                id: 4,
                result: Err(json!("unknown database"))
            }
        );
        assert_eq!(
            classify(json!({"id": "echo", "method": "echo", "params": []})).unwrap(),
            Incoming::Request {
                id: json!("echo"),
                method: "echo".into(),
                params: json!([])
            }
        );
        assert_eq!(
            classify(json!({"id": null, "method": "update", "params": ["m", {}]})).unwrap(),
            Incoming::Notification {
                method: "update".into(),
                params: json!(["m", {}])
            }
        );
        assert!(classify(json!({"id": "x", "result": 1})).is_err());
        assert!(classify(json!([1])).is_err());
    }

    /// A fake server on the other end of a socket pair: answers requests out of order,
    /// probes with `echo` and sends a notification, and checks the echo reply.
    #[tokio::test]
    async fn matches_concurrent_calls_and_answers_echo() {
        let (client, server) = UnixStream::pair().unwrap();
        let (note_tx, mut note_rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Connection::new(
            client,
            Box::new(move |method, params| {
                let _ = note_tx.send((method.to_string(), params));
            }),
        ));

        let server = tokio::spawn(async move {
            let (r, mut w) = server.into_split();
            let mut lines = BufReader::new(r);
            let mut framer = Framer::default();
            let mut requests = Vec::new();
            while requests.len() < 3 {
                let buf = lines.fill_buf().await.unwrap();
                let n = buf.len();
                framer.push(buf);
                lines.consume(n);
                while let Some(frame) = framer.next_frame().unwrap() {
                    requests.push(serde_json::from_slice::<Value>(&frame).unwrap());
                }
            }
            // Probe first, then answer in reverse order, one byte at a time for the last.
            w.write_all(br#"{"id":"probe","method":"echo","params":["hi"]}"#)
                .await
                .unwrap();
            w.write_all(br#"{"id":null,"method":"update","params":["m",{}]}"#)
                .await
                .unwrap();
            for (i, req) in requests.iter().rev().enumerate() {
                let answer = json!({"id": req["id"], "result": req["params"], "error": null});
                let bytes = serde_json::to_vec(&answer).unwrap();
                if i == 2 {
                    for b in bytes {
                        w.write_all(&[b]).await.unwrap();
                    }
                } else {
                    w.write_all(&bytes).await.unwrap();
                }
            }
            // The echo reply comes back.
            let reply = loop {
                let buf = lines.fill_buf().await.unwrap();
                let n = buf.len();
                framer.push(buf);
                lines.consume(n);
                if let Some(frame) = framer.next_frame().unwrap() {
                    break frame;
                }
            };
            serde_json::from_slice::<Value>(&reply).unwrap()
        });

        let calls: Vec<_> = (0..3)
            .map(|i| {
                let conn = conn.clone();
                tokio::spawn(async move { conn.call("transact", json!([i])).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), json!([i]));
        }
        let echo = server.await.unwrap();
        assert_eq!(
            echo,
            json!({"id": "probe", "result": ["hi"], "error": null})
        );
        let (method, params) = note_rx.recv().await.unwrap();
        assert_eq!((method.as_str(), params), ("update", json!(["m", {}])));
    }

    #[tokio::test]
    async fn fails_pending_and_later_calls_when_the_server_goes_away() {
        let (client, server) = UnixStream::pair().unwrap();
        let conn = Connection::new(client, Box::new(|_, _| {}));
        let call = conn.call("list_dbs", json!([]));
        let closer = async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(server);
        };
        let (result, ()) = tokio::join!(call, closer);
        assert!(
            matches!(result, Err(OvsdbError::Disconnected(_))),
            "{result:?}"
        );
        assert!(conn.is_closed());
        let again = conn.call("list_dbs", json!([])).await;
        assert!(
            matches!(again, Err(OvsdbError::Disconnected(_))),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn rpc_errors_surface() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let conn = Connection::new(client, Box::new(|_, _| {}));
        let answer = async move {
            let mut buf = [0u8; 256];
            let _ = server.read(&mut buf).await.unwrap();
            server
                .write_all(br#"{"id":0,"result":null,"error":"unknown database"}"#)
                .await
                .unwrap();
            server
        };
        let (result, _server) = tokio::join!(conn.call("transact", json!(["Nope"])), answer);
        let err = result.unwrap_err().to_string();
        assert!(err.contains("unknown database"), "{err}");
    }
}
