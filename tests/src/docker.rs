//! Docker fixtures: the busybox test image, networks and containers removed on drop,
//! and the plugin daemon on the socket path where dockerd discovers the `ovs` driver.

use std::path::Path;
use std::process::Output;
use std::sync::Once;

use crate::daemon::Daemon;
use crate::{run, sh, Netns};

/// The image every test container runs: busybox with its applets, from `docker import`
/// (no registry is reachable).
pub const IMAGE: &str = "dovesnap-busybox:test";

/// Where dockerd looks for the `ovs` network driver.
pub const PLUGIN_SOCKET: &str = "/run/docker/plugins/ovs.sock";

/// Builds [`IMAGE`] once per test process if dockerd does not have it.
pub fn ensure_image() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if run("docker", &["image", "inspect", IMAGE]).status.success() {
            return;
        }
        let root = std::env::temp_dir().join(format!("dovesnap-rootfs-{}", std::process::id()));
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).expect("rootfs");
        for d in ["etc", "tmp", "www", "proc", "sys", "dev"] {
            std::fs::create_dir_all(root.join(d)).expect("rootfs dir");
        }
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("/bin/busybox missing: install busybox-static (cargo xtask setup does)");
        let list = sh("/bin/busybox", &["--list"]);
        for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
        let script = format!(
            "tar -C {} -c . | docker import -c 'ENV PATH=/bin' - {IMAGE}",
            root.display()
        );
        sh("sh", &["-c", &script]);
        let _ = std::fs::remove_dir_all(&root);
    });
}

/// Starts the plugin where dockerd finds it.
pub fn start_plugin() -> Daemon {
    Daemon::start(Path::new(PLUGIN_SOCKET))
}

/// [`start_plugin`] with more `dovesnap daemon` flags.
pub fn start_plugin_with(extra: &[&str]) -> Daemon {
    Daemon::start_with(Path::new(PLUGIN_SOCKET), extra)
}

/// Runs `docker ARGS`, returning the output whatever the status.
pub fn docker(args: &[&str]) -> Output {
    run("docker", args)
}

/// Runs `docker ARGS`, panicking with stderr on failure; returns trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    sh("docker", args).trim().to_string()
}

/// A Docker network, removed on drop.
pub struct Network {
    pub name: String,
}

impl Network {
    /// `docker network create -d ovs EXTRA... NAME`.
    pub fn create(name: &str, extra: &[&str]) -> Self {
        Network::create_with_driver(name, "ovs", extra)
    }

    /// A flat ovs network on `subnet`.
    pub fn flat(name: &str, subnet: &str) -> Self {
        Network::create(name, &["--subnet", subnet])
    }

    /// An ovs network in nat mode on `subnet`.
    pub fn nat(name: &str, subnet: &str) -> Self {
        Network::create(name, &["-o", "mode=nat", "--subnet", subnet])
    }

    /// An ovs network in nat-fast mode on the xdp engine (`ovs.nat.engine=xdp`: XDP on
    /// the veths and the AF_XDP translator, what these tests inspect) on `subnet`, its
    /// uplink interface `uplink`.
    pub fn nat_fast(name: &str, uplink: &str, subnet: &str) -> Self {
        Network::nat_fast_with(name, uplink, subnet, &["-o", "ovs.nat.engine=xdp"])
    }

    /// An ovs network in nat-fast mode with the default engine (tc) and `extra` options
    /// (`-o ovs.nat.engine=xdp`, ...) on `subnet`, its uplink interface `uplink`.
    pub fn nat_fast_with(name: &str, uplink: &str, subnet: &str, extra: &[&str]) -> Self {
        let uplink = format!("ovs.nat.uplink={uplink}");
        let mut args = vec!["-o", "mode=nat-fast", "-o", &uplink, "--subnet", subnet];
        args.extend_from_slice(extra);
        Network::create(name, &args)
    }

    /// `docker network create -d DRIVER EXTRA... NAME` (e.g. Docker's own `bridge`, as
    /// the reference users compare with).
    pub fn create_with_driver(name: &str, driver: &str, extra: &[&str]) -> Self {
        let mut args = vec!["network", "create", "-d", driver];
        args.extend_from_slice(extra);
        args.push(name);
        let _ = docker(&["network", "rm", name]);
        docker_ok(&args);
        Network { name: name.into() }
    }

    /// The network's full id.
    pub fn id(&self) -> String {
        docker_ok(&["network", "inspect", "-f", "{{.Id}}", &self.name])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// A container running [`IMAGE`], removed (forcibly) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `docker run -d --name NAME --network NET EXTRA... IMAGE CMD...`.
    pub fn run(name: &str, net: &Network, extra: &[&str], cmd: &[&str]) -> Self {
        ensure_image();
        let _ = docker(&["rm", "-f", name]);
        let mut args = vec!["run", "-d", "--name", name, "--network", &net.name];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        docker_ok(&args);
        Container { name: name.into() }
    }

    /// An httpd serving `body` at `/` on port 80.
    pub fn httpd(name: &str, net: &Network, body: &str) -> Self {
        Container::httpd_with(name, net, &[], body)
    }

    /// [`Container::httpd`] publishing 80/tcp on host port `tcp_port` and 81/udp (for a
    /// [`Container::udp_pong`]) on `tcp_port + 1`; see [`assert_published`].
    pub fn published_web(name: &str, net: &Network, tcp_port: u16, body: &str) -> Self {
        let tcp = format!("{tcp_port}:80");
        let udp = format!("{}:81/udp", tcp_port + 1);
        Container::httpd_with(name, net, &["-p", &tcp, "-p", &udp], body)
    }

    /// [`Container::httpd`] with `extra` `docker run` arguments (e.g. `-p`).
    pub fn httpd_with(name: &str, net: &Network, extra: &[&str], body: &str) -> Self {
        Container::httpd_on(name, net, 80, extra, body)
    }

    /// [`Container::httpd_with`] serving on `port` instead of 80.
    pub fn httpd_on(name: &str, net: &Network, port: u16, extra: &[&str], body: &str) -> Self {
        let script = format!("echo {body} > /www/index.html && exec httpd -f -p {port} -h /www");
        Container::run(name, net, extra, &["sh", "-c", &script])
    }

    /// A container that just sleeps, to run commands in.
    pub fn idle(name: &str, net: &Network) -> Self {
        Container::run(name, net, &[], &["sleep", "3600"])
    }

    /// `docker exec NAME ARGS...`.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["exec", &self.name];
        full.extend_from_slice(args);
        docker(&full)
    }

    /// The container's IPv4 address on `net`.
    pub fn ip(&self, net: &Network) -> String {
        let fmt = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            net.name
        );
        docker_ok(&["inspect", "-f", &fmt, &self.name])
    }

    /// The container's global IPv6 address on `net` (empty without one).
    pub fn ip6(&self, net: &Network) -> String {
        let fmt = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").GlobalIPv6Address}}}}",
            net.name
        );
        docker_ok(&["inspect", "-f", &fmt, &self.name])
    }

    /// Fetches `url` from inside the container with busybox wget (bounded by `timeout`,
    /// since busybox's own `-T` crashes); returns the body on success.
    pub fn fetch(&self, url: &str) -> Result<String, String> {
        let out = self.exec(&["timeout", "10", "wget", "-q", "-O", "-", url]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "wget {url} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The pid of the container's init process (to enter its namespaces).
    pub fn pid(&self) -> String {
        docker_ok(&["inspect", "-f", "{{.State.Pid}}", &self.name])
    }

    /// A python UDP server in the container's network namespace answering every
    /// datagram on `port` with `udp-pong` (the image's busybox has none); stopped on
    /// drop. Returns once it had time to bind.
    pub fn udp_pong(&self, port: u16) -> UdpPong {
        let child = std::process::Command::new("nsenter")
            .args(["-t", &self.pid(), "-n", "python3", "-c", UDP_PONG])
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("UDP pong server");
        std::thread::sleep(std::time::Duration::from_millis(500));
        UdpPong(child)
    }

    /// Pings `addr` from inside the container; returns whether a reply came.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c", "2", "-W", "2", addr])
            .status
            .success()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

/// A [`Container::udp_pong`] server, killed on drop.
pub struct UdpPong(std::process::Child);

impl Drop for UdpPong {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP and TCP "who am I" server in python (`python3 -c WHOAMI IP PORT`): answers
/// each datagram or connection with the peer's address (`from A.B.C.D`).
pub const WHOAMI: &str = r#"
import socket, sys, threading
ip, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((ip, port))
t = socket.socket(fam); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((ip, port)); t.listen(64)
def udp():
    while True:
        d, a = u.recvfrom(2048); u.sendto(("from %s\n" % a[0]).encode(), a)
threading.Thread(target=udp, daemon=True).start()
while True:
    c, a = t.accept(); c.sendall(("from %s\n" % a[0]).encode()); c.close()
"#;

/// One datagram to `argv[1]:argv[2]`; prints the answer, or `refused` when an ICMP
/// port unreachable came back (the kernel turns it into ECONNREFUSED on a connected
/// socket).
const UDP_CLIENT: &str = "import socket,sys\ns=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(3)\ns.connect((sys.argv[1],int(sys.argv[2])))\ns.send(b'ping')\ntry:\n    print(s.recv(2048).decode().strip())\nexcept ConnectionRefusedError:\n    print('refused')";

/// Answers every datagram on port `argv[1]` with `udp-pong`, over IPv4 and, where the
/// namespace has IPv6, IPv6 (one dual-stack socket).
pub const UDP_PONG: &str = "import socket,sys\ntry:\n    u=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM); u.bind(('::',int(sys.argv[1])))\nexcept OSError:\n    u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(('0.0.0.0',int(sys.argv[1])))\nwhile True:\n    d,a=u.recvfrom(2048); u.sendto(b'udp-pong',a)";

/// Sends one datagram to `ip:port` from python run with `prefix` (the command that
/// enters a namespace, e.g. `nsenter -t PID -n`); returns the answer (`refused` on an
/// ICMP port unreachable), empty on failure. The test image's busybox has no UDP
/// netcat, so UDP runs from python inside the container's network namespace.
pub fn udp_ask(prefix: &[&str], ip: &str, port: u16) -> String {
    let port = port.to_string();
    let mut args: Vec<&str> = prefix[1..].to_vec();
    args.extend(["timeout", "5", "python3", "-c", UDP_CLIENT, ip, &port]);
    let out = run(prefix[0], &args);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Asserts that TCP, UDP (port 7000, a [`WHOAMI`] server) and ICMP echo from `c` reach
/// `far_ip` and that the far side sees them from `masquerade` (the host's address).
pub fn assert_outbound_masqueraded(c: &Container, far_ip: &str, masquerade: &str) {
    let seen = container_tcp(c, far_ip, 7000).expect("container -> far TCP");
    assert_eq!(seen.trim(), format!("from {masquerade}"));
    let c_pid = c.pid();
    assert_eq!(
        udp_ask(&["nsenter", "-t", &c_pid, "-n"], far_ip, 7000),
        format!("from {masquerade}"),
        "container -> far UDP"
    );
    assert!(c.ping(far_ip), "container -> far ICMP echo");
}

/// Asserts that `far` reaches `web` (a [`Container::published_web`] serving `body` on
/// `tcp_port`) at `host_ip` by TCP and by UDP.
pub fn assert_published(web: &Container, far: &Netns, host_ip: &str, tcp_port: u16, body: &str) {
    let url = format!("http://{}:{tcp_port}/", url_host(host_ip));
    assert_eq!(far.wget(&url), body, "far -> published TCP");
    let pong = web.udp_pong(81);
    let answer = udp_ask(&["ip", "netns", "exec", &far.name], host_ip, tcp_port + 1);
    drop(pong);
    assert_eq!(answer, "udp-pong", "far -> published UDP");
}

/// `ip` as a URL's host: an IPv6 address in brackets.
pub fn url_host(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// Opens a TCP connection from the container to `ip:port` (busybox nc) and returns
/// what the server said; an error when nothing came back.
pub fn container_tcp(c: &Container, ip: &str, port: u16) -> Result<String, String> {
    let out = c.exec(&["timeout", "5", "nc", ip, &port.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.is_empty() {
        Err(format!("container got no TCP answer from {ip}:{port}"))
    } else {
        Ok(text)
    }
}
