//! Child processes (`nft`, `iptables`) with a time limit.
//!
//! Firewall calls run under the driver lock: a child that never exits (`iptables -w`
//! waiting for a lock another process holds forever, a wedged `nft`) would hold up
//! every Docker call after it. [`output_within`] kills a child that is not done in
//! time and says so.

use std::io::{self, Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one `nft` or `iptables` run may take. They take milliseconds.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a child gave no output.
#[derive(Debug)]
pub(crate) enum RunError {
    /// It could not be started (`NotFound`: no such program).
    Spawn(io::Error),
    /// Its standard input could not be written, or waiting for it failed.
    Io(io::Error),
    /// It ran longer than the limit and was killed.
    TimedOut(Duration),
}

/// Runs `cmd` (its stdio is set here) with `stdin` on its standard input, and returns
/// its output; kills it after `limit`.
pub(crate) fn output_within(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> Result<Output, RunError> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Spawn)?;
    // Threads feed and drain the pipes, so a child blocked on a full pipe still ends.
    let writer = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => {
            let bytes = bytes.to_vec();
            Some(std::thread::spawn(move || pipe.write_all(&bytes)))
        }
        _ => None,
    };
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match wait_until(&mut child, Instant::now() + limit) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = (joined(stdout), joined(stderr));
            return Err(RunError::TimedOut(limit));
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(RunError::Io(e));
        }
    };
    let written = writer.map_or(Ok(()), |w| {
        w.join()
            .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")))
    });
    // A child that refused early may not have read everything: its stderr says why.
    if let Err(e) = written {
        if status.success() {
            return Err(RunError::Io(e));
        }
    }
    Ok(Output {
        status,
        stdout: joined(stdout),
        stderr: joined(stderr),
    })
}

/// Polls `child` until it exits (`Some`) or `deadline` passes (`None`).
fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> io::Result<Option<std::process::ExitStatus>> {
    let mut pause = Duration::from_micros(500);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

fn joined(h: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_output_and_feeds_stdin() {
        let out = output_within(
            Command::new("sh").args(["-c", "cat; echo oops >&2; exit 3"]),
            Some(b"ruleset"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"ruleset");
        assert_eq!(out.stderr, b"oops\n");
    }

    #[test]
    fn a_child_that_does_not_end_is_killed() {
        let start = Instant::now();
        let e = output_within(
            Command::new("sleep").arg("30"),
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(e, RunError::TimedOut(d) if d == Duration::from_millis(200)));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let e = output_within(
            &mut Command::new("dovesnap-no-such-program"),
            None,
            COMMAND_TIMEOUT,
        )
        .unwrap_err();
        assert!(matches!(e, RunError::Spawn(ref e) if e.kind() == io::ErrorKind::NotFound));
    }

    #[test]
    fn a_large_output_does_not_block_the_child() {
        let out = output_within(
            Command::new("head").args(["-c", "1000000", "/dev/zero"]),
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), 1_000_000);
    }
}
