//! `dovesnap doctor --json` on this machine, where `cargo xtask setup` has started Open
//! vSwitch and dockerd and mounted bpffs. Run by `cargo xtask test`.
//!
//! The test creates nothing: doctor only looks (it loads and unloads the XDP program and
//! binds and closes one AF_XDP socket on `lo`).

use std::process::Command;

use dovesnap_tests::daemon::dovesnap_bin;
use dovesnap_tests::require_root;
use serde_json::Value;

/// Runs `dovesnap doctor --json`; returns the checks and whether it exited with 0.
fn doctor() -> (Vec<Value>, bool, String) {
    let out = Command::new(dovesnap_bin())
        .args(["doctor", "--json"])
        .output()
        .expect("cannot run dovesnap doctor");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "dovesnap doctor exited with {:?} (0 or 1 expected):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let checks: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{stdout}"));
    let checks = checks
        .as_array()
        .unwrap_or_else(|| panic!("doctor --json printed no array:\n{stdout}"))
        .clone();
    (checks, code == Some(0), stdout)
}

fn status_of<'a>(checks: &'a [Value], name: &str, all: &str) -> &'a str {
    let check = checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no `{name}` check in:\n{all}"));
    check["status"]
        .as_str()
        .unwrap_or_else(|| panic!("`{name}` has no status string:\n{all}"))
}

#[test]
#[ignore = "needs root, Open vSwitch, dockerd and the XDP-enabled binary (cargo xtask test)"]
fn doctor_reports_a_healthy_host_as_json() {
    require_root();
    let (checks, success, all) = doctor();

    for c in &checks {
        for field in ["check", "status", "detail"] {
            assert!(c[field].is_string(), "`{field}` is not a string in {c}");
        }
        let status = c["status"].as_str().unwrap();
        assert!(
            ["OK", "WARN", "FAIL"].contains(&status),
            "unknown status in {c}"
        );
        // A fix exactly when something is to be done.
        assert_eq!(
            c["fix"].is_string(),
            status != "OK",
            "fix must be given unless OK: {c}"
        );
    }

    assert_eq!(status_of(&checks, "root", &all), "OK", "{all}");
    assert_eq!(status_of(&checks, "ovsdb", &all), "OK", "{all}");
    assert_eq!(status_of(&checks, "ovs-vswitchd", &all), "OK", "{all}");
    assert_eq!(status_of(&checks, "xdp", &all), "OK", "{all}");
    assert_eq!(status_of(&checks, "docker", &all), "OK", "{all}");
    // WARN only when a running daemon holds the AF_XDP anchor on lo.
    assert_ne!(status_of(&checks, "afxdp", &all), "FAIL", "{all}");

    let any_fail = checks.iter().any(|c| c["status"] == "FAIL");
    assert_eq!(
        success, !any_fail,
        "exit status (success: {success}) must match the FAIL entries:\n{all}"
    );
}

#[test]
#[ignore = "needs root and AF_XDP (cargo xtask test)"]
fn doctor_says_when_a_daemon_holds_the_afxdp_anchor() {
    require_root();
    // Hold the anchor socket on lo queue 0 as a running daemon's translator does.
    let held = dovesnap::fastpath::afxdp::Xsk::new(dovesnap::fastpath::afxdp::XskConfig::default())
        .expect("cannot create an AF_XDP socket on lo (is another one bound there?)");
    let (checks, _, all) = doctor();
    drop(held);
    let afxdp = checks
        .iter()
        .find(|c| c["check"] == "afxdp")
        .unwrap_or_else(|| panic!("no afxdp check in:\n{all}"));
    assert_eq!(afxdp["status"], "WARN", "{all}");
    assert!(
        afxdp["detail"]
            .as_str()
            .is_some_and(|d| d.contains("running dovesnap daemon")),
        "{all}"
    );
}
