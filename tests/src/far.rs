//! The far side of a nat network: a namespace behind a veth that the plugin uses as its
//! uplink (host `PREFIX.1/24`, far `PREFIX.2/24`), with a who-am-I server (TCP and UDP
//! on port 7000, answering `from <source address>`) and whatever other servers a test
//! spawns there. Servers, namespace and veth go on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::docker::{container_tcp, docker, Container, WHOAMI};
use crate::{sh, Netns, Veth};

pub struct Far {
    pub ns: Netns,
    /// `host` is the uplink the plugin is given; `peer` sits in `ns`.
    pub uplink: Veth,
    pub host_ip: String,
    pub far_ip: String,
    /// IPv6 on the link, once [`Far::add_ipv6`] put it there: (host, far) addresses.
    pub ip6: Option<(String, String)>,
    servers: Vec<Child>,
}

impl Far {
    /// `tag` names the namespace (`<tag>far`) and the veth (`<tag>up`); `prefix24` is
    /// the first three octets of the link's /24.
    pub fn new(tag: &str, prefix24: &str) -> Self {
        let ns = Netns::new(&format!("{tag}far"));
        let uplink = Veth::new(&format!("{tag}up"));
        let (host_ip, far_ip) = (format!("{prefix24}.1"), format!("{prefix24}.2"));
        sh(
            "ip",
            &["addr", "add", &format!("{host_ip}/24"), "dev", &uplink.host],
        );
        uplink.peer_into(&ns, &format!("{far_ip}/24"));
        let mut far = Far {
            ns,
            uplink,
            host_ip,
            far_ip,
            ip6: None,
            servers: Vec::new(),
        };
        let ip = far.far_ip.clone();
        far.spawn(&["python3", "-c", WHOAMI, &ip, "7000"]);
        far
    }

    /// IPv6 on the link too: host `PREFIX::1/64`, far `PREFIX::2/64` (no duplicate
    /// address detection, so both answer at once), and a who-am-I server on the far
    /// address. The far side gets no route beyond the link: what it answers reaches
    /// the host's own address only.
    pub fn add_ipv6(&mut self, prefix: &str) {
        let (host, far) = (format!("{prefix}::1"), format!("{prefix}::2"));
        let with_len = |a: &str| format!("{a}/64");
        sh(
            "ip",
            &[
                "addr",
                "add",
                &with_len(&host),
                "dev",
                &self.uplink.host,
                "nodad",
            ],
        );
        self.ns.sh(
            "ip",
            &[
                "addr",
                "add",
                &with_len(&far),
                "dev",
                &self.uplink.peer,
                "nodad",
            ],
        );
        self.spawn(&["python3", "-c", WHOAMI, &far, "7000"]);
        self.ip6 = Some((host, far));
    }

    /// The (host, far) IPv6 addresses [`Far::add_ipv6`] set.
    pub fn ipv6(&self) -> (&str, &str) {
        let (host, far) = self.ip6.as_ref().expect("Far::add_ipv6 first");
        (host, far)
    }

    /// Starts a server in the far namespace (killed on drop) and gives it half a second
    /// to listen.
    pub fn spawn(&mut self, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("far server");
        self.servers.push(child);
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Whether a TCP connection from `c` reaches the who-am-I server masqueraded to the
    /// uplink's address.
    pub fn reached_from(&self, c: &Container) -> bool {
        container_tcp(c, &self.far_ip, 7000)
            .is_ok_and(|s| s.trim() == format!("from {}", self.host_ip))
    }

    /// Makes 30 short connections from `c` to the who-am-I server, one every 0.1 s, and
    /// calls `meanwhile` 1.2 s in (a plugin's death, say). Returns how many were answered
    /// masqueraded to the uplink's address, and the client's output.
    pub fn answered_across(&self, c: &Container, meanwhile: impl FnOnce()) -> (usize, String) {
        let looping = std::thread::spawn({
            let name = c.name.clone();
            let far_ip = self.far_ip.clone();
            move || {
                docker(&[
                    "exec",
                    &name,
                    "sh",
                    "-c",
                    &format!(
                        "for i in $(seq 1 30); do timeout 3 nc {far_ip} 7000 || echo lost; \
                         sleep 0.1; done"
                    ),
                ])
            }
        });
        std::thread::sleep(Duration::from_millis(1200));
        meanwhile();
        let out = looping.join().expect("client loop");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            text.matches(&format!("from {}", self.host_ip)).count(),
            text,
        )
    }
}

impl Drop for Far {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}
