//! Packaging: the files in `packaging/` and the root `docker-compose.yml` as a user
//! runs them.
//!
//! - The systemd unit passes `systemd-analyze verify`, the legacy discovery file names
//!   the socket the daemon serves, and Compose accepts `docker-compose.yml`.
//! - The quickstart, `docker-compose up -d --build` at the repository root: the image
//!   is built from the checkout (root `Dockerfile`; its bases from `DOVESNAP_BASE` and
//!   `DOVESNAP_TOOLCHAIN_BASE`, which `cargo xtask test` sets to locally made
//!   stand-ins where no registry answers), Open vSwitch and the plugin come up as
//!   containers, dockerd finds the plugin under both driver names (`ovs`,
//!   `dovesnap`), flat, nat and nat-fast networks work, `docker-compose stop plugin` (SIGTERM) detaches XDP and leaves
//!   containers connected, `start` recovers them, and nothing is left once the
//!   project is down.
//!
//! The Compose test stops the host's ovsdb-server and ovs-vswitchd for its duration
//! (the `ovs` service takes their sockets) and starts them again afterwards, passed or
//! failed. It runs Debian's `docker-compose` (v1, the same file format as
//! `docker compose`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dovesnap_tests::daemon::{dovesnap_bin, status_output};
use dovesnap_tests::docker::{docker, docker_ok, Container, Network, PLUGIN_SOCKET};
use dovesnap_tests::host_services::{stop_ovs_daemon, OvsRestore};
use dovesnap_tests::{host_veths, require_root, run, sh, Netns, Veth};
use serde_json::Value;

/// The image docker-compose.yml builds and runs.
const IMAGE: &str = "dovesnap:local";
/// The variables docker-compose.yml takes the Dockerfile's bases from, and their
/// default.
const BASE_ENVS: [&str; 2] = ["DOVESNAP_BASE", "DOVESNAP_TOOLCHAIN_BASE"];
const DEFAULT_BASE: &str = "debian:bookworm-slim";
/// The second name dockerd finds the plugin by (a symlink to `ovs.sock`).
const ALIAS_SOCKET: &str = "/run/docker/plugins/dovesnap.sock";
/// The Compose project name: containers are `dsxpkg_ovs_1` and `dsxpkg_plugin_1`.
const PROJECT: &str = "dsxpkg";
/// Docker's netns folder; the plugin service follows it as a slave mount.
const DOCKER_NETNS: &str = "/run/docker/netns";
/// The uplink of the nat networks: host end and far namespace.
const HOST_UPLINK_IP: &str = "10.236.9.1";
const FAR_IP: &str = "10.236.9.2";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn packaging(file: &str) -> PathBuf {
    repo_root().join("packaging").join(file)
}

/// `docker-compose -p PROJECT -f docker-compose.yml ARGS` at the repository root, as
/// the README's quickstart runs it.
fn compose(args: &[&str]) -> Output {
    let file = repo_root().join("docker-compose.yml");
    Command::new("docker-compose")
        .arg("-p")
        .arg(PROJECT)
        .arg("-f")
        .arg(&file)
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("cannot run docker-compose (cargo xtask setup installs it)")
}

fn compose_ok(args: &[&str]) -> String {
    let out = compose(args);
    assert!(
        out.status.success(),
        "docker-compose {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs systemd-analyze and docker-compose (cargo xtask setup installs them); run by cargo xtask test"]
fn unit_file_discovery_file_and_compose_file_are_valid() {
    // systemd-analyze checks ExecStart's binary exists: point it at the built one.
    let unit = std::fs::read_to_string(packaging("dovesnap.service")).expect("the unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/dovesnap daemon"));
    let dir = std::env::temp_dir().join(format!("dovesnap-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bin = dovesnap_bin();
    let copy = dir.join("dovesnap.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/dovesnap", &bin.display().to_string()),
    )
    .expect("unit copy");
    let out = run("systemd-analyze", &["verify", &copy.display().to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
    // Warnings (an unknown key, a bad value) go to stderr with status 0.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // `dovesnap daemon` is what the unit and the image run.
    let help = Command::new(&bin)
        .args(["daemon", "--help"])
        .output()
        .expect("dovesnap daemon --help");
    assert!(help.status.success());

    // The legacy discovery file points where the daemon listens by default.
    let spec: Value =
        serde_json::from_slice(&std::fs::read(packaging("ovs.json")).expect("packaging/ovs.json"))
            .expect("ovs.json is JSON");
    assert_eq!(spec["Name"], "ovs");
    assert_eq!(spec["Addr"], format!("unix://{PLUGIN_SOCKET}"));

    let config = compose_ok(&["config", "--services"]);
    let mut services: Vec<&str> = config.lines().collect();
    services.sort_unstable();
    assert_eq!(services, ["ovs", "plugin"]);
}

/// Makes [`DOCKER_NETNS`] a shared mount if it is not (systemd makes every mount
/// shared; this machine's root is private, and Docker refuses the plugin service's
/// `rslave` bind of a private mount), the way `ip netns` does for /run/netns.
///
/// The mount is left in place: the namespaces Docker mounts while it is there (among
/// them `default`, the host's, which dockerd makes once for host-network containers
/// and then trusts) sit on top of it, and unmounting it took them along, after which
/// every `--network host` container failed to start ("can't get final child's PID
/// from pipe"). A shared bind of the folder onto itself is what systemd hosts have.
fn ensure_shared_netns_dir() {
    let out = sh("findmnt", &["-n", "-o", "PROPAGATION", "-T", DOCKER_NETNS]);
    if out.lines().next().unwrap_or("").contains("shared") {
        return;
    }
    sh("mount", &["--rbind", DOCKER_NETNS, DOCKER_NETNS]);
    sh("mount", &["--make-shared", DOCKER_NETNS]);
}

/// The Compose project, brought down with its volume on drop (after printing the
/// services' logs if the test failed).
struct Project;

impl Project {
    /// The quickstart: `docker-compose up -d --build`.
    fn up() -> Self {
        let project = Project;
        compose_ok(&["up", "-d", "--build"]);
        project
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = compose(&["logs", "--no-color", "--tail", "60"]);
            eprintln!("{}", String::from_utf8_lossy(&logs.stdout));
        }
        let _ = compose(&["down", "-v", "--timeout", "30"]);
    }
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

/// `dovesnap status --json` from the host, through the control socket the plugin
/// service shares at its default path.
fn status() -> Value {
    serde_json::from_slice(&status_output(None, &["--json"])).expect("status is JSON")
}

fn translated_outbound(status: &Value) -> u64 {
    status["fast_path"]["dataplane"]["uplinks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|u| u["counters"].as_array().into_iter().flatten())
        .filter(|c| c[0].as_str() == Some("outbound"))
        .filter_map(|c| c[1].as_u64())
        .sum()
}

fn xdp_attached(ifname: &str) -> bool {
    sh("ip", &["-d", "link", "show", "dev", ifname]).contains("prog/xdp")
}

/// The host end (OVS port) of a container's interface on a dovesnap network.
fn host_port_of(c: &Container, net: &Network) -> String {
    let endpoint = docker_ok(&[
        "inspect",
        "-f",
        &format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").EndpointID}}}}",
            net.name
        ),
        &c.name,
    ]);
    format!("ovsv{}", &endpoint[..10])
}

fn ping_once(c: &Container, addr: &str) -> bool {
    c.exec(&["ping", "-c", "1", "-W", "1", addr])
        .status
        .success()
}

#[test]
#[ignore = "privileged: stops the host's OVS, runs docker-compose.yml; run by cargo xtask test"]
fn compose_runs_open_vswitch_and_the_plugin() {
    require_root();
    for var in BASE_ENVS {
        let base = std::env::var(var).unwrap_or_else(|_| DEFAULT_BASE.into());
        assert!(
            docker(&["image", "inspect", &base]).status.success(),
            "no {base} image ({var}) to build {IMAGE} from: `cargo xtask test` finds or \
             makes one (by hand: `cargo xtask image` says what to set)"
        );
    }
    assert!(
        !Path::new(PLUGIN_SOCKET).exists(),
        "{PLUGIN_SOCKET} exists: another plugin is running"
    );
    let _ = compose(&["down", "-v"]);
    // The image is built (`up --build` below finds every layer cached) before the
    // host's Open vSwitch is stopped: a cold build takes minutes.
    let started = Instant::now();
    compose_ok(&["build"]);
    eprintln!(
        "packaging: docker-compose build: {} ms",
        started.elapsed().as_millis()
    );

    let far = Netns::new("dspfar");
    let uplink = Veth::new("dspup");
    sh(
        "ip",
        &[
            "addr",
            "add",
            &format!("{HOST_UPLINK_IP}/24"),
            "dev",
            &uplink.host,
        ],
    );
    uplink.peer_into(&far, &format!("{FAR_IP}/24"));

    // Guards drop in reverse order: the project goes down before the host's OVS
    // comes back.
    ensure_shared_netns_dir();
    let _restore = OvsRestore;
    stop_ovs_daemon("ovs-vswitchd");
    stop_ovs_daemon("ovsdb-server");

    let started = Instant::now();
    let project = Project::up();
    wait_for("the plugin's socket", Duration::from_secs(60), || {
        Path::new(PLUGIN_SOCKET).exists()
    });
    eprintln!(
        "packaging: compose up to the plugin's socket: {} ms",
        started.elapsed().as_millis()
    );
    // pid: host: the host's ovs-appctl finds the containers' daemons.
    sh("ovs-appctl", &["-t", "ovs-vswitchd", "version"]);
    let doctor = compose(&["exec", "-T", "plugin", "dovesnap", "doctor"]);
    let doctor_text = String::from_utf8_lossy(&doctor.stdout).into_owned();
    assert!(
        doctor.status.success(),
        "doctor inside the plugin service found failures:\n{doctor_text}"
    );
    for check in ["ovsdb ", "xdp ", "afxdp ", "docker ", "plugin-socket "] {
        let line = doctor_text
            .lines()
            .find(|l| l.starts_with(check))
            .unwrap_or_else(|| panic!("no `{check}` check:\n{doctor_text}"));
        assert!(line.contains(" OK "), "{line}");
    }

    // The Go dovesnap's driver name: the same plugin, through the alias socket.
    assert!(
        std::fs::read_link(ALIAS_SOCKET).is_ok_and(|t| t.as_os_str() == "ovs.sock"),
        "{ALIAS_SOCKET} is not a link to ovs.sock"
    );
    let flat =
        Network::create_with_driver("dspkg-flat", "dovesnap", &["--subnet", "10.236.1.0/24"]);
    assert_eq!(
        docker_ok(&["network", "inspect", "-f", "{{.Driver}}", &flat.name]),
        "dovesnap"
    );
    let nat = Network::nat("dspkg-nat", "10.236.2.0/24");
    let fast = Network::nat_fast("dspkg-fast", &uplink.host, "10.236.3.0/24");
    let a = Container::idle("dspkg-a", &flat);
    let b = Container::idle("dspkg-b", &flat);
    let c = Container::idle("dspkg-c", &nat);
    let d = Container::idle("dspkg-d", &fast);
    let b_ip = b.ip(&flat);
    assert!(a.ping(&b_ip), "flat: a cannot reach b");
    assert!(
        c.ping(FAR_IP),
        "nat: no way out through the host's netfilter"
    );
    let before = translated_outbound(&status());
    assert!(
        d.ping(FAR_IP),
        "nat-fast: no way out through the translator"
    );
    let after = translated_outbound(&status());
    assert!(
        after > before,
        "nat-fast: the translator saw nothing ({before} -> {after})"
    );
    let d_port = host_port_of(&d, &fast);
    assert!(xdp_attached(&uplink.host), "no XDP on the uplink");
    assert!(xdp_attached(&d_port), "no XDP on the nat-fast endpoint");

    // SIGTERM: XDP detached, exit status 0, containers keep L2 and kernel nat.
    compose_ok(&["stop", "plugin"]);
    let code = docker_ok(&[
        "inspect",
        "-f",
        "{{.State.ExitCode}}",
        &format!("{PROJECT}_plugin_1"),
    ]);
    assert_eq!(code, "0", "the plugin did not exit cleanly on SIGTERM");
    assert!(!xdp_attached(&uplink.host), "XDP left on the uplink");
    assert!(!xdp_attached(&d_port), "XDP left on the endpoint");
    assert!(ping_once(&a, &b_ip), "flat L2 lost when the plugin stopped");
    assert!(ping_once(&c, FAR_IP), "nat lost when the plugin stopped");

    // Started again: state recovered from OVSDB, the fast path back, new joins served.
    compose_ok(&["start", "plugin"]);
    let took = wait_for("recovery after start", Duration::from_secs(30), || {
        Path::new(PLUGIN_SOCKET).exists() && xdp_attached(&d_port)
    });
    eprintln!(
        "packaging: plugin start to the fast path back: {} ms",
        took.as_millis()
    );
    assert!(d.ping(FAR_IP), "nat-fast lost after the restart");
    let e = Container::idle("dspkg-e", &flat);
    assert!(
        e.ping(&b_ip),
        "a container joined after the restart cannot reach b"
    );

    // Everything down: containers, networks, then the project with its volume.
    drop((a, b, c, d, e));
    drop((flat, nat, fast));
    drop(project);
    assert!(
        !Path::new(PLUGIN_SOCKET).exists(),
        "the plugin's socket outlived it"
    );
    assert!(
        std::fs::symlink_metadata(ALIAS_SOCKET).is_err(),
        "{ALIAS_SOCKET} outlived the plugin"
    );
    let leftovers: Vec<String> = host_veths()
        .into_iter()
        .filter(|v| v.starts_with("ovsv") || v.starts_with("ovsc"))
        .collect();
    assert!(leftovers.is_empty(), "veths left: {leftovers:?}");
    let links = sh("ip", &["-o", "link", "show"]);
    assert!(!links.contains("ovsbr-"), "bridge devices left:\n{links}");
    let nft = sh("nft", &["list", "ruleset"]);
    assert!(!nft.contains("dovesnap:"), "nat rules left:\n{nft}");
    assert!(!xdp_attached(&uplink.host), "XDP left on the uplink");
    let remaining = sh(
        "docker",
        &["ps", "-a", "--filter", &format!("name={PROJECT}_"), "-q"],
    );
    assert!(remaining.trim().is_empty(), "project containers left");
}
