//! The real `dovesnap` binary run as a daemon, and a raw client for its plugin API.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test: `$DOVESNAP_BIN` (set by `cargo xtask test`), else the
/// workspace's debug build.
pub fn dovesnap_bin() -> PathBuf {
    let bin = std::env::var_os("DOVESNAP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/dovesnap"));
    assert!(
        bin.exists(),
        "dovesnap binary not found at {}: build it (`cargo build -p dovesnap-user`) or run `cargo xtask test`",
        bin.display()
    );
    bin
}

/// A running `dovesnap daemon`, stopped on drop with SIGTERM (so it removes its sockets);
/// tests that want a crash call [`Daemon::kill`].
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub control: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon serving the plugin API on `socket`, its control socket beside
    /// it, and waits until both answer.
    pub fn start(socket: &Path) -> Self {
        Daemon::start_with(socket, &[])
    }

    /// [`Daemon::start`] with more `dovesnap daemon` flags (e.g. `--metrics ADDR`).
    pub fn start_with(socket: &Path, extra: &[&str]) -> Self {
        Daemon::start_in(None, socket, extra)
    }

    /// [`Daemon::start_with`] inside network namespace `netns` (`ip netns exec` execs
    /// the daemon, so signals reach it). Fails the test unless it runs as root: every
    /// daemon fixture starts here, so a test that starts one needs no check of its own.
    pub fn start_in(netns: Option<&str>, socket: &Path, extra: &[&str]) -> Self {
        crate::require_root();
        // The control socket and the log go to a folder of the test's own, never beside
        // the plugin socket: dockerd treats every socket in its plugin folder as a plugin.
        let scratch = std::env::temp_dir().join(crate::unique_name("dsd"));
        std::fs::create_dir_all(&scratch).expect("scratch folder");
        let control = scratch.join("control.sock");
        let log = scratch.join("daemon.log");
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).expect("socket folder");
        }
        let logf = std::fs::File::create(&log).expect("daemon log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(dovesnap_bin());
                c
            }
            None => Command::new(dovesnap_bin()),
        };
        let child = cmd
            .arg("--control-socket")
            .arg(&control)
            .arg("daemon")
            .arg("--socket")
            .arg(socket)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .spawn()
            .expect("cannot start dovesnap");
        let mut d = Daemon {
            child: Some(child),
            socket: socket.to_path_buf(),
            control,
            log,
        };
        let start = Instant::now();
        // Connect, not just look: a killed daemon leaves its socket files behind.
        while !(UnixStream::connect(&d.socket).is_ok() && UnixStream::connect(&d.control).is_ok()) {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("dovesnap daemon exited with {status}:\n{}", d.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "dovesnap daemon did not open its sockets in 20 s:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL (a crash: nothing is cleaned up).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` to the daemon (with `--test-hooks`, SIGUSR1 and SIGUSR2 fail its
    /// nat-fast data plane on purpose).
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// Stops the daemon with SIGTERM and waits for it; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `dovesnap status --json` against this daemon.
    pub fn status(&self) -> Value {
        serde_json::from_slice(&status_output(Some(&self.control), &["--json"]))
            .expect("status is JSON")
    }

    /// Runs `dovesnap status` (the table) against this daemon.
    pub fn status_text(&self) -> String {
        String::from_utf8_lossy(&status_output(Some(&self.control), &[])).into_owned()
    }

    /// One plugin API call: POST `path` with `body`; returns the HTTP status and the
    /// decoded JSON answer.
    pub fn call(&self, path: &str, body: &str) -> (u16, Value) {
        api_call(&self.socket, path, body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.terminate() {
            self.kill();
        }
        if std::thread::panicking() {
            eprintln!("--- dovesnap daemon log ---\n{}", self.log_text());
        }
        if let Some(scratch) = self.log.parent() {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

/// GET /metrics from a daemon's `--metrics ADDR` (plain HTTP/1.0 over TCP); what was
/// read in 5 s, empty if the connection failed or was closed unanswered.
pub fn scrape_metrics(addr: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of the first sample of `metric` whose labels contain `label`, 0 if none.
pub fn metric_value(text: &str, metric: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
        .next()
        .unwrap_or(0)
}

/// A raw HTTP/1.1 POST over a unix socket (what Docker does), returning status and JSON.
pub fn api_call(socket: &Path, path: &str, body: &str) -> (u16, Value) {
    let mut s = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write request");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read response");
    let text = String::from_utf8_lossy(&resp);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {text:?}"));
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (code, json)
}

/// Sends a plugin API call as [`api_call`] does, waits at most `patience` for the
/// answer and closes the connection (what dockerd does when a call times out).
/// Returns whether an answer came in time.
pub fn api_call_hang_up(socket: &Path, path: &str, body: &str, patience: Duration) -> bool {
    let mut s = UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", socket.display()));
    s.set_read_timeout(Some(patience)).ok();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write request");
    let mut first = [0u8; 1];
    matches!(s.read(&mut first), Ok(1))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The output of `dovesnap [--control-socket CONTROL] status ARGS...` (the default
/// control socket when `None`), asserting that it succeeded.
pub fn status_output(control: Option<&std::path::Path>, args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new(dovesnap_bin());
    if let Some(control) = control {
        cmd.arg("--control-socket").arg(control);
    }
    let out = cmd
        .arg("status")
        .args(args)
        .output()
        .expect("dovesnap status");
    assert!(
        out.status.success(),
        "dovesnap status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
