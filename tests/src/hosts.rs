//! Several "hosts" on one machine, for the tests of networks that span hosts
//! (overlay, tunnels): each host is a network namespace with its own ovsdb-server,
//! ovs-vswitchd (userspace datapath) and dovesnap daemon, driven through its plugin
//! API as dockerd would drive it. The hosts share a private LAN, a Linux bridge in a
//! namespace of its own; each host's LAN address sits on `br-phy`, an OVS bridge
//! holding its LAN veth, as the userspace datapath's native tunnelling wants.
//! Containers are namespaces that get the endpoint's interface, as Docker does at
//! Join. Nothing here touches the global Open vSwitch or dockerd.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::{sh, unique_name, Netns};

/// A scratch folder, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Stops the daemon whose `--pidfile` is `pidfile` with `signal` (then SIGKILL after
/// 3 s); nothing when there is no pidfile.
pub fn stop_pidfile(pidfile: &Path, signal: i32) {
    let Some(pid) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: kill(2) on a pid a daemon we started wrote; no memory is involved.
    unsafe { libc::kill(pid, signal) };
    let start = Instant::now();
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        if start.elapsed() > Duration::from_secs(3) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(pidfile);
}

/// Runs an OVS/OVN daemon with `--detach` in `ns`, its run, log and db folders in `dir`.
pub fn start_daemon(ns: &Netns, dir: &Path, cmd: &str, args: &[String]) {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name, cmd]).args(args);
    for var in [
        "OVS_RUNDIR",
        "OVS_LOGDIR",
        "OVS_DBDIR",
        "OVN_RUNDIR",
        "OVN_LOGDIR",
        "OVN_DBDIR",
    ] {
        c.env(var, dir);
    }
    let out = c.output().expect("start daemon");
    assert!(
        out.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hosts' LAN: a Linux bridge `lanbr` in a namespace of its own, with the
/// address `PREFIX.254/24`; hosts are `PREFIX.1`, `PREFIX.2`, ...
pub struct Lan {
    pub ns: Netns,
    /// The first three octets, e.g. `198.18.77`.
    pub prefix: String,
}

impl Lan {
    pub fn new(ns_prefix: &str, prefix: &str) -> Self {
        let lan = Lan {
            ns: Netns::new(ns_prefix),
            prefix: prefix.to_string(),
        };
        lan.ns.sh("ip", &["link", "add", "lanbr", "type", "bridge"]);
        lan.ns.sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", lan.ip(254)),
                "dev",
                "lanbr",
            ],
        );
        lan.ns.sh("ip", &["link", "set", "lanbr", "up"]);
        lan
    }

    /// Address `n` of the LAN.
    pub fn ip(&self, n: u8) -> String {
        format!("{}.{n}", self.prefix)
    }

    /// A veth from the LAN: `end` in namespace `ns` (the root namespace if `None`),
    /// up; its peer `lan_end` a port of the LAN bridge. The userspace datapath
    /// forwards partially checksummed frames as they are: no TX offload on the LAN end.
    pub fn plug(&self, ns: Option<&str>, end: &str, lan_end: &str) {
        let mut args = vec!["link", "add", end];
        if let Some(ns) = ns {
            args.extend(["netns", ns]);
        }
        args.extend([
            "type",
            "veth",
            "peer",
            "name",
            lan_end,
            "netns",
            &self.ns.name,
        ]);
        sh("ip", &args);
        self.ns
            .sh("ip", &["link", "set", lan_end, "master", "lanbr", "up"]);
        self.ns.sh("ethtool", &["-K", lan_end, "tx", "off"]);
        match ns {
            Some(ns) => sh("ip", &["-n", ns, "link", "set", end, "up"]),
            None => sh("ip", &["link", "set", end, "up"]),
        };
    }
}

/// One host: its namespace on the LAN, its Open vSwitch (with `br-phy` holding its
/// LAN address) and, once started, its dovesnap daemon.
pub struct Host {
    /// `host1`, `host2`, ...
    pub name: String,
    /// Its LAN address.
    pub ip: String,
    pub dir: PathBuf,
    pub plugin: Option<Daemon>,
    pub ns: Netns,
    /// The namespace name prefix of its containers.
    container_prefix: &'static str,
}

impl Host {
    /// Host `n` of `lan` (address `.n`), its files under `root`, its namespace and
    /// its containers' namespaces named with the given prefixes.
    pub fn start(
        root: &Path,
        lan: &Lan,
        n: u8,
        ns_prefix: &str,
        container_prefix: &'static str,
    ) -> Self {
        let name = format!("host{n}");
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let host = Host {
            name,
            ip: lan.ip(n),
            dir,
            plugin: None,
            ns: Netns::new(ns_prefix),
            container_prefix,
        };
        lan.plug(Some(&host.ns.name), "uplink", &format!("lan{n}"));

        let db = host.dir.join("conf.db");
        sh(
            "ovsdb-tool",
            &[
                "create",
                db.to_str().unwrap(),
                "/usr/share/openvswitch/vswitch.ovsschema",
            ],
        );
        start_daemon(
            &host.ns,
            &host.dir,
            "ovsdb-server",
            &[
                db.display().to_string(),
                format!("--remote=punix:{}", host.db_sock().display()),
                format!("--pidfile={}", host.pidfile("ovsdb-server").display()),
                format!("--unixctl={}", host.dir.join("ovsdb.ctl").display()),
                format!("--log-file={}", host.dir.join("ovsdb-server.log").display()),
                "--detach".into(),
            ],
        );
        host.vsctl(&["--no-wait", "init"]);
        start_daemon(
            &host.ns,
            &host.dir,
            "ovs-vswitchd",
            &[
                format!("unix:{}", host.db_sock().display()),
                format!("--pidfile={}", host.pidfile("ovs-vswitchd").display()),
                format!("--unixctl={}", host.dir.join("vswitchd.ctl").display()),
                format!("--log-file={}", host.dir.join("ovs-vswitchd.log").display()),
                "--detach".into(),
            ],
        );
        // Userspace tunnelling: the host's address lives on a bridge holding the uplink.
        host.vsctl(&[
            "--timeout=20",
            "add-br",
            "br-phy",
            "--",
            "set",
            "bridge",
            "br-phy",
            "datapath_type=netdev",
            "--",
            "add-port",
            "br-phy",
            "uplink",
        ]);
        host.ns.sh(
            "ip",
            &["addr", "add", &format!("{}/24", host.ip), "dev", "br-phy"],
        );
        host.ns.sh("ip", &["link", "set", "br-phy", "up"]);
        host.ns.sh("ethtool", &["-K", "br-phy", "tx", "off"]);
        host
    }

    pub fn db_sock(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    pub fn pidfile(&self, daemon: &str) -> PathBuf {
        self.dir.join(format!("{daemon}.pid"))
    }

    /// `ovs-vsctl` on this host's Open vSwitch.
    pub fn vsctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.db_sock().display());
        let mut full = vec![db.as_str()];
        full.extend_from_slice(args);
        sh("ovs-vsctl", &full)
    }

    /// Starts the host's dovesnap on its OVS, reconciling every second, with `extra`
    /// arguments.
    pub fn start_plugin(&mut self, extra: &[&str]) {
        let socket = self.dir.join("plugin.sock");
        let db = self.db_sock().display().to_string();
        let mut args = vec!["--ovsdb", &db, "--reconcile-interval", "1"];
        args.extend_from_slice(extra);
        self.plugin = Some(Daemon::start_in(Some(&self.ns.name), &socket, &args));
    }

    pub fn plugin(&self) -> &Daemon {
        self.plugin.as_ref().expect("plugin running")
    }

    /// Calls the plugin API, which must succeed; its answer.
    pub fn ok(&self, path: &str, body: Value) -> Value {
        let (code, v) = self.plugin().call(path, &body.to_string());
        assert_eq!(code, 200, "{path}: {v}");
        assert!(v.get("Err").is_none(), "{} {path} failed: {v}", self.name);
        v
    }

    /// Calls the plugin API, which must refuse; its error message.
    pub fn err(&self, path: &str, body: Value) -> String {
        let (_, v) = self.plugin().call(path, &body.to_string());
        v.get("Err")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{path} {body} did not fail: {v}"))
            .to_string()
    }

    /// The CreateNetwork request Docker sends for `-o` options `opts` (a JSON object)
    /// and an IPv4 pool.
    pub fn create_network_request(nid: &str, opts: Value, subnet: &str, gateway: &str) -> Value {
        json!({"NetworkID": nid, "Options": {"com.docker.network.generic": opts},
               "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": subnet,
                             "Gateway": gateway}],
               "IPv6Data": []})
    }

    /// CreateNetwork, which must succeed.
    pub fn create_network(&self, nid: &str, opts: Value, subnet: &str, gateway: &str) {
        self.ok(
            "/NetworkDriver.CreateNetwork",
            Self::create_network_request(nid, opts, subnet, gateway),
        );
    }

    /// CreateEndpoint + Join, then what Docker does: the container end into a new
    /// container namespace as eth0, with the address. The namespace and Join's answer.
    pub fn attach(&self, nid: &str, eid: &str, addr: &str) -> (Netns, Value) {
        self.ok(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": nid, "EndpointID": eid, "Interface": {"Address": addr}}),
        );
        let joined = self.ok(
            "/NetworkDriver.Join",
            json!({"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/var/run/docker/netns/x"}),
        );
        let src = joined["InterfaceName"]["SrcName"]
            .as_str()
            .unwrap()
            .to_string();
        let ctr = Netns::new(self.container_prefix);
        self.ns.sh("ip", &["link", "set", &src, "netns", &ctr.name]);
        ctr.sh("ip", &["link", "set", &src, "name", "eth0"]);
        ctr.sh("ip", &["addr", "add", addr, "dev", "eth0"]);
        ctr.sh("ip", &["link", "set", "eth0", "up"]);
        (ctr, joined)
    }

    /// Leave + DeleteEndpoint.
    pub fn detach(&self, nid: &str, eid: &str) {
        let ids = json!({"NetworkID": nid, "EndpointID": eid});
        self.ok("/NetworkDriver.Leave", ids.clone());
        self.ok("/NetworkDriver.DeleteEndpoint", ids);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        drop(self.plugin.take());
        for d in ["ovs-vswitchd", "ovsdb-server"] {
            stop_pidfile(&self.pidfile(d), libc::SIGTERM);
        }
    }
}

/// A process in a namespace, in a process group of its own: the group (the process
/// and what it forked, e.g. httpd's per-connection children) is killed on drop.
pub struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group our own child leads; no memory involved.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Runs `args` in namespace `ns` as a [`Spawned`] process group.
pub fn spawn_in(ns: &Netns, args: &[&str]) -> Spawned {
    Spawned(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?} in {}: {e}", ns.name)),
    )
}

/// A web server in `ctr` on port 8080 answering `body`, its files under `root`.
pub fn web_server(ctr: &Netns, root: &Path, body: &str) -> Spawned {
    let www = root.join(format!("www-{}", ctr.name));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), body).unwrap();
    let www = www.display().to_string();
    spawn_in(ctr, &["busybox", "httpd", "-f", "-p", "8080", "-h", &www])
}

/// Pings `to` from `ctr` until a reply comes, for up to 20 s (flows and tunnel
/// neighbours take a moment).
pub fn pings(ctr: &Netns, to: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if ctr
            .run("ping", &["-c", "1", "-W", "1", to])
            .status
            .success()
        {
            return true;
        }
    }
    false
}

/// Fetches `http://to:port/` from `ctr` (TCP), retrying for up to 20 s; the body.
pub fn fetch_port(ctr: &Netns, to: &str, port: u16) -> String {
    // bash's /dev/tcp (busybox wget's -T crashes).
    let script = format!(
        "exec 3<>/dev/tcp/{to}/{port} && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let start = Instant::now();
    loop {
        let out = ctr.run("timeout", &["5", "bash", "-c", &script]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.starts_with("HTTP/1.") {
            return text
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_string())
                .unwrap_or_default();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "GET http://{to}:{port}/ from {}: {text} {}",
            ctr.name,
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A Docker-shaped id (64 characters): `prefix` padded with zeros.
pub fn id(prefix: &str) -> String {
    format!("{prefix}{}", "0".repeat(64 - prefix.len()))
}
