//! Kernel netfilter for `nat` and `routed` networks: masquerade, published ports,
//! isolation.
//!
//! A [`Firewall`] backend turns a [`NatNetwork`] and its containers' [`PortMapping`]s
//! into packet-filter state, netavark-style: [`NftFirewall`] drives nftables (the `nft`
//! binary, through JSON built with the `nftables` crate) and, where Docker's own
//! iptables rules would drop forwarded traffic, adds narrowly scoped accept rules to
//! `FORWARD` below Docker's jumps (so the administrator's `DOCKER-USER` rules come
//! first) and joins Docker's isolation chains (see `iptables`); [`NoopFirewall`] does
//! nothing (flat networks, tests).
//!
//! What a nat network gets (see [`nft`] for the ruleset):
//! - traffic from its subnet leaving by any interface other than its bridge is
//!   masqueraded (not for `--internal` networks, which get no way out at all);
//! - published ports are DNATed from every local address, for packets from other
//!   hosts (prerouting) and from the host itself (output), and container-to-published
//!   port traffic within the network is masqueraded too (hairpin);
//! - nothing enters the subnet from outside except replies and published ports;
//! - forwarding between two nat bridges is dropped (a container connected to both
//!   networks still reaches both: it does not go through the host's forwarding).
//!
//! A routed network ([`NatNetwork::routed`]) gets the same isolation and forwarding
//! without masquerade or DNAT: only replies, ICMP and its published container ports
//! (at the containers' own addresses) enter it.
//!
//! Every rule lives in the project's own table `inet dovesnap` (per-network chains
//! `nw-<id12>-*`, jump rules commented `dovesnap:<id12>`) or, for iptables, carries the
//! comment `dovesnap:<id12>`: removing one network touches nothing else, and
//! [`Firewall::reconcile`] removes what a crash left behind. The host's forward policy
//! is never changed; IPv4 forwarding (`net.ipv4.ip_forward`) is switched on for
//! non-internal networks, IPv6 forwarding (`net.ipv6.conf.all.forwarding`) for those
//! with `--ipv6` ([`NatNetwork::ipv6`]: the same masquerade, published ports and
//! isolation for the IPv6 subnet, in the same table). `ip6tables` is not touched.
//!
//! Ports come from Docker's endpoint options, parsed by [`parse_port_map`]. Docker
//! leaves host-port allocation to the driver for remote drivers: a mapping without a
//! host port (`-P`, `-p 80`) or with a host range for one container port
//! (`-p 8000-8100:80`) gets the lowest free port of the range (the kernel's
//! `ip_local_port_range` when none was given, as Docker's own allocator uses), and
//! the chosen ports are returned as [`PublishedPort`]s.

pub(crate) mod command;
pub mod hostrules;
mod iptables;
pub mod nft;
mod ports;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::host::addr::{Ipv4Net, Ipv6Cidr};
pub use nft::NftFirewall;
pub use ports::{
    parse_exposed_ports, parse_port_map, ExposedPort, PortMapping, PortRange, Proto, PublishedPort,
    EXPOSED_PORTS_OPTION, PORT_MAP_OPTION,
};

/// Comment prefix of every rule dovesnap adds outside its own nft chains
/// (`dovesnap:<id12>`), and of the jump rules into its per-network chains.
pub const TAG_PREFIX: &str = "dovesnap:";

/// Number of characters of a Docker id used in chain names and comments (Docker's
/// own short id length).
pub const SHORT_ID_LEN: usize = 12;

/// What the firewall needs to know about a nat network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatNetwork {
    /// Docker's network id (the first [`SHORT_ID_LEN`] characters name its rules).
    pub id: String,
    /// The bridge's host interface (OVS internal port), which carries the gateway.
    pub bridge: String,
    /// The network's IPv4 subnet from Docker's IPAM.
    pub subnet: Ipv4Net,
    /// The gateway address (on the bridge).
    pub gateway: Ipv4Addr,
    /// `docker network create --internal`: no way out, no way in, no published ports.
    pub internal: bool,
    /// `mode=routed`: no masquerade and no DNAT; the subnet is reached through a route
    /// via the host, and only replies, ICMP and the published container ports
    /// (`-p`, at the container's own address, the host port ignored) enter it.
    pub routed: bool,
    /// Source ports the outbound masquerade may use for TCP and UDP (`None`: any, the
    /// kernel's choice). nat-fast networks keep the kernel out of the range their
    /// userspace translator allocates from, so the two NATs never hand out the same
    /// external port.
    pub masquerade_ports: Option<(u16, u16)>,
    /// `--ipv6`: the network's IPv6 subnet and gateway, given the same treatment as
    /// IPv4 (masquerade, published ports, isolation; routed: no translation).
    pub ipv6: Option<Nat6>,
}

/// A nat or routed network's IPv6 side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nat6 {
    /// The IPv6 subnet (host bits clear).
    pub subnet: Ipv6Cidr,
    /// The gateway address on the bridge.
    pub gateway: Ipv6Addr,
}

impl Nat6 {
    /// The narrowest prefix accepted: wider subnets are refused, like IPv4's /8.
    pub const MIN_PREFIX: u8 = 48;
    /// The longest prefix accepted: room for the gateway and at least one container.
    pub const MAX_PREFIX: u8 = 126;

    /// Why the subnet and gateway cannot serve a nat or routed network, if they
    /// cannot: a prefix outside /48 to /126, or a gateway outside the subnet.
    pub fn problem(&self) -> Option<String> {
        let prefix = self.subnet.prefix;
        if !(Self::MIN_PREFIX..=Self::MAX_PREFIX).contains(&prefix) {
            return Some(format!(
                "IPv6 subnet {} has a prefix outside /{} to /{}: give a /64 (or any prefix \
                 in that range) with --subnet",
                self.subnet,
                Self::MIN_PREFIX,
                Self::MAX_PREFIX
            ));
        }
        if !self.subnet.contains(self.gateway) {
            return Some(format!(
                "IPv6 gateway {} is outside the subnet {}",
                self.gateway, self.subnet
            ));
        }
        None
    }
}

impl NatNetwork {
    /// Checks everything that ends up in a rule or a command line: the id, the bridge
    /// name (a valid interface name that cannot pass for an option), the subnet and
    /// the gateway.
    pub fn validate(&self) -> Result<(), FirewallError> {
        short_id("network", &self.id)?;
        let bad = |reason: String| FirewallError::InvalidNetwork {
            id: self.id.clone(),
            reason,
        };
        if !crate::host::ifname::is_plain(&self.bridge) || self.bridge.starts_with('-') {
            return Err(bad(format!(
                "bridge name {:?} is not an interface name (1 to 15 of A-Za-z0-9_.-, not \
                 starting with -)",
                self.bridge
            )));
        }
        if self.subnet.prefix() < 8 {
            return Err(bad(format!(
                "subnet {} is too wide to masquerade safely: use a prefix of /8 or longer",
                self.subnet
            )));
        }
        if let Some((lo, hi)) = self.masquerade_ports {
            if lo == 0 || lo > hi {
                return Err(bad(format!(
                    "masquerade port range {lo}-{hi} is empty or starts at 0"
                )));
            }
        }
        if !self.subnet.contains(self.gateway) {
            return Err(bad(format!(
                "gateway {} is outside the subnet {}",
                self.gateway, self.subnet
            )));
        }
        if let Some(reason) = self.ipv6.as_ref().and_then(Nat6::problem) {
            return Err(bad(reason));
        }
        Ok(())
    }

    /// The id prefix used in chain names and comments.
    pub fn short_id(&self) -> Result<&str, FirewallError> {
        short_id("network", &self.id)
    }
}

/// One endpoint's published ports, as [`Firewall::add_ports`] returned them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPorts {
    /// Docker's endpoint id.
    pub endpoint_id: String,
    /// The container's address on the network.
    pub container_ip: Ipv4Addr,
    /// The container's IPv6 address (`--ipv6` networks): published ports reach it
    /// from the host's IPv6 addresses.
    pub container_ip6: Option<Ipv6Addr>,
    /// Concrete publications (host ports already chosen).
    pub ports: Vec<PublishedPort>,
}

/// A nat network that should exist, with its endpoints' published ports: the input of
/// [`Firewall::reconcile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedNetwork {
    /// The network.
    pub network: NatNetwork,
    /// Endpoints with published ports (endpoints without may be left out). An endpoint
    /// listed without ports keeps whatever rules it has (its record could not be read);
    /// an endpoint id that is not an id keeps every endpoint's rules of the network.
    pub endpoints: Vec<EndpointPorts>,
}

/// A packet-filter backend for nat networks. Every method is idempotent: applying the
/// same thing twice leaves the same state as applying it once.
///
/// Calls are blocking (they run `nft`/`iptables` and wait, a few milliseconds); from
/// async code, call them through `tokio::task::spawn_blocking` or accept the short
/// stall.
pub trait Firewall: Send + Sync {
    /// Installs (or brings up to date) the network's masquerade, isolation and
    /// forwarding rules. Published ports already set for its endpoints are kept. On
    /// failure, what was applied stays (each nft step is atomic, the iptables rules
    /// come after): call [`Firewall::remove_network`] to roll back.
    fn add_network(&self, net: &NatNetwork) -> Result<(), FirewallError>;

    /// Removes every rule of the network, its published ports included. Removing a
    /// network that has no rules is not an error. Keeps going after a failure and
    /// reports every failure at the end.
    fn remove_network(&self, network_id: &str) -> Result<(), FirewallError>;

    /// Publishes `ports` of the container at `container_ip` (and, for IPv6 host
    /// addresses and mappings on every address, at `container_ip6`), replacing what the
    /// endpoint published before, and returns the concrete publications (with the host
    /// ports chosen for mappings that left them open). Fails without changing anything
    /// when a host port is already published by another endpoint or no port is free.
    fn add_ports(
        &self,
        network_id: &str,
        endpoint_id: &str,
        container_ip: Ipv4Addr,
        container_ip6: Option<Ipv6Addr>,
        ports: &[PortMapping],
    ) -> Result<Vec<PublishedPort>, FirewallError>;

    /// Withdraws every port the endpoint published (nothing to withdraw is not an error).
    fn remove_ports(&self, network_id: &str, endpoint_id: &str) -> Result<(), FirewallError>;

    /// Puts back the networks' rules in Docker's iptables chains that dockerd removed
    /// (a restart flushes its isolation chains) or moved (its jumps go back to the top
    /// of `FORWARD`), touching nothing else: the reconciler's check on every pass.
    /// Returns how many rules were put back.
    fn restore_forwarding(&self, _nets: &[NatNetwork]) -> Result<usize, FirewallError> {
        Ok(0)
    }

    /// Makes the rules match `expected` exactly: networks and endpoints not listed lose
    /// their rules (leftovers of a crash), listed ones get whatever is missing. Keeps
    /// going after a failure and reports every failure at the end.
    fn reconcile(&self, expected: &[ExpectedNetwork]) -> Result<(), FirewallError> {
        self.reconcile_keeping(expected, &[])
    }

    /// [`Firewall::reconcile`], leaving the rules of the `untouched` networks (whose
    /// records could not be read) exactly as they are. An id there that is not a Docker
    /// id (its rules cannot be told apart) keeps every unlisted network's rules.
    fn reconcile_keeping(
        &self,
        expected: &[ExpectedNetwork],
        untouched: &[String],
    ) -> Result<(), FirewallError>;
}

/// A firewall that does nothing: for flat networks and for tests of the driver.
/// [`Firewall::add_ports`] publishes nothing and says so by returning no ports.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopFirewall;

impl Firewall for NoopFirewall {
    fn add_network(&self, _net: &NatNetwork) -> Result<(), FirewallError> {
        Ok(())
    }

    fn remove_network(&self, _network_id: &str) -> Result<(), FirewallError> {
        Ok(())
    }

    fn add_ports(
        &self,
        _network_id: &str,
        _endpoint_id: &str,
        _container_ip: Ipv4Addr,
        _container_ip6: Option<Ipv6Addr>,
        _ports: &[PortMapping],
    ) -> Result<Vec<PublishedPort>, FirewallError> {
        Ok(Vec::new())
    }

    fn remove_ports(&self, _network_id: &str, _endpoint_id: &str) -> Result<(), FirewallError> {
        Ok(())
    }

    fn reconcile_keeping(
        &self,
        _expected: &[ExpectedNetwork],
        _untouched: &[String],
    ) -> Result<(), FirewallError> {
        Ok(())
    }
}

/// Why a firewall operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The `nft` binary could not be started.
    #[error(
        "cannot run `nft` ({source}): nat networks need nftables; run `cargo xtask setup` \
         (or `apt-get install nftables`)"
    )]
    NftMissing {
        #[source]
        source: std::io::Error,
    },

    /// `nft` ran and refused.
    #[error("nft failed to {action}: {stderr}{}", permission_hint(stderr))]
    Nft { action: String, stderr: String },

    /// `nft` answered something dovesnap cannot read.
    #[error("cannot read nft's answer while trying to {action}: {detail}")]
    NftOutput { action: String, detail: String },

    /// `iptables` ran and refused.
    #[error("`iptables {args}` failed: {stderr}{}", permission_hint(stderr))]
    Iptables { args: String, stderr: String },

    /// `iptables` exists but could not be started.
    #[error("cannot run `iptables {args}`: {source}")]
    IptablesSpawn {
        args: String,
        #[source]
        source: std::io::Error,
    },

    /// `nft` or `iptables` did not finish in time and was killed.
    #[error(
        "`{command}` did not finish within {after:?} and was killed: another process may \
         hold the netfilter (xtables) lock, or the kernel is not answering; nothing else \
         was changed by this call"
    )]
    Timeout { command: String, after: Duration },

    /// A Docker id that cannot name a chain or a comment.
    #[error(
        "invalid {what} id {id:?}: expected Docker's hexadecimal id (12 to 128 letters and \
         digits)"
    )]
    InvalidId { what: &'static str, id: String },

    /// The network description is unusable.
    #[error("invalid nat network {id}: {reason}")]
    InvalidNetwork { id: String, reason: String },

    /// An iptables argument outside the characters dovesnap's rules use.
    #[error(
        "refusing to pass {0:?} to iptables: dovesnap's rules only use letters, digits and \
         _.:,@/- (a name that reached this point escaped validation: please report it)"
    )]
    UnsafeArgument(String),

    /// Docker's port map (or a [`PortMapping`] built by hand) is unusable.
    #[error("invalid port mapping: {0}")]
    PortMap(String),

    /// The host port is already published by another endpoint, or a host socket
    /// listens on it.
    #[error(
        "cannot publish {proto} port {port} on {host}: {holder}; publish the container \
         port on another host port (`-p OTHER:{container_port}`) or stop what holds it"
    )]
    PortInUse {
        proto: Proto,
        host: String,
        port: u16,
        container_port: u16,
        holder: String,
    },

    /// No free host port in the range to choose from.
    #[error(
        "no free {proto} host port in {range} for container port {container_port}; free \
         one, or publish with an explicit host port (`-p HOSTPORT:{container_port}`)"
    )]
    NoFreePort {
        proto: Proto,
        range: PortRange,
        container_port: u16,
    },

    /// Ports were asked for on a network without a published-port chain.
    #[error(
        "network {id} has no published-port chain in table inet {table}: it was not added \
         (add_network) or it is internal (internal networks publish no ports)"
    )]
    UnknownNetwork { id: String, table: String },

    /// `/proc/sys/net/ipv4/ip_forward` could not be written.
    #[error(
        "cannot enable IPv4 forwarding (write 1 to /proc/sys/net/ipv4/ip_forward): {source}; \
         dovesnap must run as root in the host's network namespace"
    )]
    IpForward {
        #[source]
        source: std::io::Error,
    },

    /// `/proc/sys/net/ipv6/conf/all/forwarding` could not be read or written.
    #[error(
        "cannot enable IPv6 forwarding (write 1 to /proc/sys/net/ipv6/conf/all/forwarding): \
         {source}; --ipv6 nat and routed networks need it (is IPv6 disabled on this host?)"
    )]
    Ipv6Forward {
        #[source]
        source: std::io::Error,
    },

    /// A published port's host address is IPv6 but the container has no IPv6 address.
    #[error(
        "cannot publish on IPv6 host address {0}: the network has no IPv6 (create it with \
         --ipv6) or the container got no IPv6 address"
    )]
    NoIpv6Container(IpAddr),

    /// Several steps of a teardown or reconciliation failed; each was still tried.
    #[error("{} firewall operations failed: {}", .0.len(), join_errors(.0))]
    Multiple(Vec<FirewallError>),
}

fn permission_hint(stderr: &str) -> &'static str {
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        " (dovesnap needs root, or CAP_NET_ADMIN, to change the packet filter)"
    } else {
        ""
    }
}

fn join_errors(errors: &[FirewallError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl FirewallError {
    /// `Ok` when `errors` is empty, the error itself when there is one, else
    /// [`FirewallError::Multiple`].
    pub(crate) fn collect(mut errors: Vec<FirewallError>) -> Result<(), FirewallError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(FirewallError::Multiple(errors)),
        }
    }
}

/// The first [`SHORT_ID_LEN`] characters of a Docker id, after checking it is one
/// (12 to 128 ASCII letters and digits, like the driver accepts).
pub fn short_id<'a>(what: &'static str, id: &'a str) -> Result<&'a str, FirewallError> {
    if (SHORT_ID_LEN..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(&id[..SHORT_ID_LEN])
    } else {
        Err(FirewallError::InvalidId {
            what,
            id: id.to_string(),
        })
    }
}

/// The comment that tags a network's rules: `dovesnap:<id12>`.
pub fn network_tag(short_id: &str) -> String {
    format!("{TAG_PREFIX}{short_id}")
}

/// Turns on IPv4 forwarding (`net.ipv4.ip_forward=1`) unless it is already on. This
/// does not change any firewall policy; the kernel also turns on forwarding on every
/// interface, as it always does when this switch is set.
pub fn enable_ip_forward() -> Result<(), FirewallError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    let current =
        std::fs::read_to_string(PATH).map_err(|source| FirewallError::IpForward { source })?;
    if current.trim() != "1" {
        std::fs::write(PATH, "1\n").map_err(|source| FirewallError::IpForward { source })?;
        tracing::info!("enabled IPv4 forwarding (net.ipv4.ip_forward=1) for nat networks");
    }
    Ok(())
}

/// Turns on IPv6 forwarding (`net.ipv6.conf.all.forwarding=1`) unless it is already
/// on, as Docker does for IPv6 bridges. With forwarding on, the kernel stops accepting
/// router advertisements on interfaces whose `accept_ra` is 1 (the default): those are
/// named in a warning (`accept_ra=2` keeps them configured by SLAAC).
pub fn enable_ipv6_forward() -> Result<(), FirewallError> {
    const NAME: &str = "net/ipv6/conf/all/forwarding";
    let err = |source| FirewallError::Ipv6Forward { source };
    if crate::host::sysctl::read(NAME).map_err(err)? == "1" {
        return Ok(());
    }
    let ra_hosts = ra_accepting_interfaces();
    std::fs::write(std::path::Path::new("/proc/sys").join(NAME), "1\n").map_err(err)?;
    tracing::info!("enabled IPv6 forwarding (net.ipv6.conf.all.forwarding=1) for --ipv6 networks");
    if !ra_hosts.is_empty() {
        tracing::warn!(
            interfaces = ?ra_hosts,
            "with IPv6 forwarding on, these interfaces (accept_ra=1) no longer take router \
             advertisements; set net.ipv6.conf.IFACE.accept_ra=2 where the host's IPv6 \
             address or default route comes from SLAAC"
        );
    }
    Ok(())
}

/// Interfaces whose `accept_ra` is 1: they ignore router advertisements once IPv6
/// forwarding is on.
fn ra_accepting_interfaces() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv6/conf") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !matches!(n.as_str(), "all" | "default" | "lo"))
        .filter(|n| {
            crate::host::sysctl::read(&format!("net/ipv6/conf/{n}/accept_ra"))
                .is_ok_and(|v| v == "1")
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NatNetwork {
        NatNetwork {
            id: "3f2a9c1d4e5b6a7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7".into(),
            bridge: "ovsbr-3f2a9c1d".into(),
            subnet: "10.231.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 231, 1, 1),
            internal: false,
            routed: false,
            masquerade_ports: None,
            ipv6: None,
        }
    }

    #[test]
    fn network_validation() {
        assert!(net().validate().is_ok());
        assert_eq!(net().short_id().unwrap(), "3f2a9c1d4e5b");

        let mut n = net();
        n.id = "short".into();
        assert!(matches!(n.validate(), Err(FirewallError::InvalidId { .. })));
        n = net();
        n.id = "3f2a9c1d4e5b;rm -rf".into();
        assert!(n.validate().is_err());

        for bridge in ["", "-j", "a b", "way-too-long-bridge-name", "br\"0"] {
            let mut n = net();
            n.bridge = bridge.into();
            let err = n.validate().unwrap_err().to_string();
            assert!(err.contains("bridge name"), "{bridge:?}: {err}");
        }

        let mut n = net();
        n.gateway = Ipv4Addr::new(10, 9, 9, 1);
        assert!(n.validate().unwrap_err().to_string().contains("outside"));

        let mut n = net();
        n.subnet = "0.0.0.0/0".parse().unwrap();
        n.gateway = Ipv4Addr::new(10, 0, 0, 1);
        assert!(n.validate().unwrap_err().to_string().contains("too wide"));
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = FirewallError::NftMissing {
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(e.to_string().contains("cargo xtask setup"));
        let e = FirewallError::Nft {
            action: "add network x".into(),
            stderr: "Error: Could not process rule: Operation not permitted".into(),
        };
        assert!(e.to_string().contains("needs root"));
        assert!(FirewallError::collect(Vec::new()).is_ok());
        let two = vec![
            FirewallError::PortMap("a".into()),
            FirewallError::PortMap("b".into()),
        ];
        let msg = FirewallError::collect(two).unwrap_err().to_string();
        assert!(msg.starts_with("2 firewall operations failed"), "{msg}");
    }

    #[test]
    fn noop_firewall_does_nothing() {
        let fw: &dyn Firewall = &NoopFirewall;
        fw.add_network(&net()).unwrap();
        let ports = fw
            .add_ports(
                &net().id,
                &net().id,
                Ipv4Addr::new(10, 231, 1, 2),
                None,
                &[],
            )
            .unwrap();
        assert!(ports.is_empty());
        fw.remove_ports(&net().id, &net().id).unwrap();
        fw.remove_network(&net().id).unwrap();
        fw.reconcile(&[]).unwrap();
    }
}
