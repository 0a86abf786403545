//! Published ports: Docker's port map parsed and validated, and host ports chosen.
//!
//! Docker (20.10, `daemon/network.go` `buildCreateEndpointOptions`) hands a remote
//! driver the container's publications in the endpoint options (CreateEndpoint, and
//! the sandbox's in Join and ProgramExternalConnectivity) under
//! [`PORT_MAP_OPTION`], as a list of libnetwork `types.PortBinding`:
//!
//! ```json
//! [{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]
//! ```
//!
//! - `-p 8080:80` gives `HostPort` 8080 (`HostPortEnd` 8080, or 0 from older daemons);
//! - `-p 192.0.2.1:8080:80/udp` gives `Proto` 17 and `HostIP` "192.0.2.1" (loopback
//!   addresses are refused: kernel NAT cannot publish there, Docker's userland proxy
//!   does; IPv6 addresses too: nat networks are IPv4);
//! - `-p 8080-8081:80-81` gives one binding per port (the CLI expands equal ranges);
//! - `-p 8000-8100:80` gives `HostPort` 8000, `HostPortEnd` 8100: *one* port of that
//!   range is to be chosen ("use the host port range as the dynamic host port range to
//!   allocate into", go-connections `nat.ParsePortSpec`);
//! - `-p 80` and `-P` give `HostPort` 0: the bridge driver's port allocator would
//!   choose; for a remote driver nobody has, so dovesnap chooses.
//!
//! The list is `null` when nothing is published.
//! [`EXPOSED_PORTS_OPTION`] lists `{"Proto":6,"Port":80}` for every exposed port.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::FirewallError;

/// Endpoint option key of Docker's port map (`netlabel.PortMap`).
pub const PORT_MAP_OPTION: &str = "com.docker.network.portmap";

/// Endpoint option key of Docker's exposed ports (`netlabel.ExposedPorts`).
pub const EXPOSED_PORTS_OPTION: &str = "com.docker.network.endpoint.exposedports";

/// Where host ports are chosen from when Docker gives none, if the kernel's
/// `ip_local_port_range` cannot be read (Docker's own fallback).
pub const FALLBACK_DYNAMIC_RANGE: PortRange = PortRange {
    start: 49153,
    end: 65535,
};

/// A transport protocol that can be published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// From the IP protocol number Docker sends (6, 17).
    pub fn from_number(n: u64) -> Result<Self, FirewallError> {
        match n {
            6 => Ok(Proto::Tcp),
            17 => Ok(Proto::Udp),
            132 => Err(FirewallError::PortMap(
                "SCTP ports cannot be published on nat networks (only tcp and udp)".into(),
            )),
            n => Err(FirewallError::PortMap(format!(
                "unknown protocol number {n} (expected 6 for tcp or 17 for udp)"
            ))),
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// `tcp` or `udp`, as nft and Docker write them.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive range of ports, `start <= end`, never containing port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    /// `start..=end`; `None` unless `1 <= start <= end`.
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start >= 1 && start <= end).then_some(PortRange { start, end })
    }

    /// A single port; `None` for port 0.
    pub fn single(port: u16) -> Option<Self> {
        Self::new(port, port)
    }

    pub fn start(&self) -> u16 {
        self.start
    }

    pub fn end(&self) -> u16 {
        self.end
    }

    /// Number of ports.
    pub fn len(&self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    /// Always false: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    /// The ports, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.start..=self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// One publication as Docker asked for it (host ports possibly left open).
///
/// - `host_ports: None`: any free host port, chosen from the dynamic range
///   (`container_ports` must be a single port);
/// - `host_ports` as long as `container_ports`: port `i` of one goes to port `i` of
///   the other;
/// - `host_ports` a range and `container_ports` a single port: one free port of the
///   range is chosen.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub proto: Proto,
    /// The host address to publish on (IPv4 or, on `--ipv6` networks, IPv6); `None`
    /// for every address.
    pub host_ip: Option<IpAddr>,
    pub host_ports: Option<PortRange>,
    pub container_ports: PortRange,
}

impl PortMapping {
    /// Checks the host address and the combination of ranges (see the type's
    /// documentation).
    pub fn validate(&self) -> Result<(), FirewallError> {
        if let Some(ip) = self.host_ip {
            if ip.is_unspecified() {
                return Err(FirewallError::PortMap(
                    "host address 0.0.0.0 (or ::) must be given as no address (every address)"
                        .into(),
                ));
            }
            if ip.is_loopback() {
                return Err(FirewallError::PortMap(format!(
                    "cannot publish on loopback address {ip}: nat networks publish through \
                     the kernel's NAT, which does not forward loopback traffic (Docker uses \
                     its userland proxy for that); publish on every address (`-p \
                     {h}:{c}`) or on another host address",
                    h = self
                        .host_ports
                        .map_or_else(|| "HOSTPORT".into(), |r| r.to_string()),
                    c = self.container_ports,
                )));
            }
        }
        let c = self.container_ports;
        match self.host_ports {
            None if c.len() > 1 => Err(FirewallError::PortMap(format!(
                "container ports {c}/{} need explicit host ports of the same length",
                self.proto
            ))),
            Some(h) if h.len() != c.len() && c.len() > 1 => Err(FirewallError::PortMap(format!(
                "host ports {h} and container ports {c}/{} are ranges of different lengths",
                self.proto
            ))),
            _ => Ok(()),
        }
    }

    /// Whether the host port has to be chosen (no host port, or a range for one
    /// container port).
    fn is_open(&self) -> bool {
        match self.host_ports {
            None => true,
            Some(h) => h.len() > 1 && self.container_ports.len() == 1,
        }
    }
}

impl TryFrom<PublishedPort> for PortMapping {
    type Error = FirewallError;

    /// The mapping that publishes exactly `p` again (fails for port 0).
    fn try_from(p: PublishedPort) -> Result<Self, FirewallError> {
        Ok(PortMapping {
            proto: p.proto,
            host_ip: p.host_ip,
            host_ports: Some(PortRange::single(p.host_port).ok_or_else(|| {
                FirewallError::PortMap(format!("{p}: host port 0 is not a port"))
            })?),
            container_ports: PortRange::single(p.container_port).ok_or_else(|| {
                FirewallError::PortMap(format!("{p}: container port 0 is not a port"))
            })?,
        })
    }
}

/// One published port, host port chosen: `host_ip:host_port -> container:container_port`.
/// Ports are never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublishedPort {
    pub proto: Proto,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
}

impl PublishedPort {
    /// Whether the two claim the same host port (same protocol and port, and host
    /// addresses that overlap: equal, or one of them every address).
    pub fn clashes_with(&self, other: &PublishedPort) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for PublishedPort {
    /// Like `docker ps`: `0.0.0.0:8080->80/tcp`, `[fd31::1]:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            None => write!(f, "{}", Ipv4Addr::UNSPECIFIED)?,
        }
        write!(
            f,
            ":{}->{}/{}",
            self.host_port, self.container_port, self.proto
        )
    }
}

/// An exposed container port (`EXPOSE 80`, `--expose 53/udp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExposedPort {
    pub proto: Proto,
    pub port: u16,
}

/// libnetwork's `types.PortBinding` as JSON. Numbers are read wide so that an out of
/// range value gets a clear message rather than a serde one.
#[derive(Deserialize)]
struct WireBinding {
    #[serde(rename = "Proto")]
    proto: u64,
    #[serde(rename = "Port")]
    port: u64,
    #[serde(rename = "HostIP", default)]
    host_ip: Option<String>,
    #[serde(rename = "HostPort", default)]
    host_port: u64,
    #[serde(rename = "HostPortEnd", default)]
    host_port_end: u64,
}

/// libnetwork's `types.TransportPort` as JSON.
#[derive(Deserialize)]
struct WireTransportPort {
    #[serde(rename = "Proto")]
    proto: u64,
    #[serde(rename = "Port")]
    port: u64,
}

fn port_number(what: &str, n: u64) -> Result<u16, FirewallError> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| FirewallError::PortMap(format!("{what} {n} is not a port (1-65535)")))
}

/// Docker's `HostIP`: empty, `0.0.0.0` or `::` for every address (both families on
/// an `--ipv6` network), else one IPv4 or IPv6 address (brackets allowed).
fn host_address(raw: Option<&str>) -> Result<Option<IpAddr>, FirewallError> {
    match raw.unwrap_or("") {
        "" | "0.0.0.0" | "::" | "[::]" => Ok(None),
        s => {
            let bare = s
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .unwrap_or(s);
            bare.parse::<IpAddr>().map(Some).map_err(|_| {
                FirewallError::PortMap(format!("host address {s:?} is not an IP address"))
            })
        }
    }
}

/// Docker's list-valued option `option` decoded as a list of `T` (`what`, for the
/// error); `null` is the empty list.
fn wire_list<T: serde::de::DeserializeOwned>(
    value: &Value,
    option: &str,
    what: &str,
) -> Result<Vec<T>, FirewallError> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    serde_json::from_value(value.clone()).map_err(|e| {
        FirewallError::PortMap(format!("{option} is not a list of {what} ({e}): {value}"))
    })
}

/// Parses Docker's [`PORT_MAP_OPTION`] value. `null` (nothing published) gives an
/// empty list.
pub fn parse_port_map(value: &Value) -> Result<Vec<PortMapping>, FirewallError> {
    let wire: Vec<WireBinding> = wire_list(value, PORT_MAP_OPTION, "port bindings")?;
    wire.iter()
        .map(|b| {
            let proto = Proto::from_number(b.proto)?;
            let port = port_number("container port", b.port)?;
            let host_ip = host_address(b.host_ip.as_deref())?;
            let host_ports = match (b.host_port, b.host_port_end) {
                (0, 0) => None,
                (0, end) => {
                    return Err(FirewallError::PortMap(format!(
                        "HostPortEnd {end} without a HostPort for container port {port}/{proto}"
                    )))
                }
                (start, end) => {
                    let start = port_number("host port", start)?;
                    // Daemons before ranges existed send no HostPortEnd.
                    let end = if end == 0 {
                        start
                    } else {
                        port_number("host port", end)?
                    };
                    Some(PortRange::new(start, end).ok_or_else(|| {
                        FirewallError::PortMap(format!(
                            "HostPortEnd {end} is below HostPort {start} for container port \
                             {port}/{proto}"
                        ))
                    })?)
                }
            };
            let mapping = PortMapping {
                proto,
                host_ip,
                host_ports,
                container_ports: PortRange::single(port).expect("port_number excludes 0"),
            };
            mapping.validate()?;
            Ok(mapping)
        })
        .collect()
}

/// Parses Docker's [`EXPOSED_PORTS_OPTION`] value. `null` gives an empty list.
pub fn parse_exposed_ports(value: &Value) -> Result<Vec<ExposedPort>, FirewallError> {
    let wire: Vec<WireTransportPort> = wire_list(value, EXPOSED_PORTS_OPTION, "ports")?;
    wire.iter()
        .map(|p| {
            Ok(ExposedPort {
                proto: Proto::from_number(p.proto)?,
                port: port_number("exposed port", p.port)?,
            })
        })
        .collect()
}

/// A host port held by someone else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Taken {
    pub port: PublishedPort,
    /// Who holds it, for messages (`endpoint 5b7e0e2a41c3 of network 3f2a9c1d4e5b`).
    pub holder: String,
}

/// Chooses host ports and checks for clashes: the pure core of
/// [`super::Firewall::add_ports`].
///
/// - `taken`: ports published by other endpoints;
/// - `previous`: what this endpoint publishes now: an open mapping keeps its previous
///   host port when it still fits, so applying the same request twice gives the same
///   ports;
/// - `dynamic`: where to choose when Docker gave no host port;
/// - `host_busy`: whether a host socket listens on the port (such ports are never
///   chosen, and asking for one explicitly is refused, since the DNAT would hide the
///   host's service).
///
/// Explicit ports are placed first, then open ones get the lowest free port of their
/// range. The result is sorted.
pub(crate) fn resolve(
    requests: &[PortMapping],
    taken: &[Taken],
    previous: &[PublishedPort],
    dynamic: PortRange,
    host_busy: &dyn Fn(Proto, u16) -> bool,
) -> Result<Vec<PublishedPort>, FirewallError> {
    let mut placed: Vec<PublishedPort> = Vec::new();
    let holder_of = |p: &PublishedPort, placed: &[PublishedPort]| -> Option<String> {
        if let Some(t) = taken.iter().find(|t| t.port.clashes_with(p)) {
            return Some(format!("already published by {}", t.holder));
        }
        if placed.iter().any(|q| q.clashes_with(p)) {
            return Some("asked for twice by this container".into());
        }
        if host_busy(p.proto, p.host_port) {
            return Some("a socket on the host listens on it".into());
        }
        None
    };

    for m in requests.iter().filter(|m| !m.is_open()) {
        m.validate()?;
        let host = m.host_ports.expect("closed mappings have host ports");
        for (host_port, container_port) in host.iter().zip(m.container_ports.iter()) {
            let p = PublishedPort {
                proto: m.proto,
                host_ip: m.host_ip,
                host_port,
                container_port,
            };
            if let Some(holder) = holder_of(&p, &placed) {
                return Err(in_use(&p, holder));
            }
            placed.push(p);
        }
    }

    for m in requests.iter().filter(|m| m.is_open()) {
        m.validate()?;
        let range = m.host_ports.unwrap_or(dynamic);
        let container_port = m.container_ports.start();
        let candidate = |host_port| PublishedPort {
            proto: m.proto,
            host_ip: m.host_ip,
            host_port,
            container_port,
        };
        let reuse = previous
            .iter()
            .filter(|p| {
                p.proto == m.proto
                    && p.host_ip == m.host_ip
                    && p.container_port == container_port
                    && range.contains(p.host_port)
            })
            .map(|p| candidate(p.host_port))
            .find(|p| holder_of(p, &placed).is_none());
        let chosen = reuse
            .or_else(|| {
                range
                    .iter()
                    .map(candidate)
                    .find(|p| holder_of(p, &placed).is_none())
            })
            .ok_or(FirewallError::NoFreePort {
                proto: m.proto,
                range,
                container_port,
            })?;
        placed.push(chosen);
    }
    placed.sort();
    Ok(placed)
}

fn in_use(p: &PublishedPort, holder: String) -> FirewallError {
    FirewallError::PortInUse {
        proto: p.proto,
        host: p
            .host_ip
            .map_or_else(|| "every host address".to_string(), |a| a.to_string()),
        port: p.host_port,
        container_port: p.container_port,
        holder,
    }
}

/// The kernel's range for automatically chosen local ports
/// (`/proc/sys/net/ipv4/ip_local_port_range`), which Docker's allocator also uses;
/// [`FALLBACK_DYNAMIC_RANGE`] when it cannot be read.
pub(crate) fn dynamic_range() -> PortRange {
    crate::host::sysctl::local_port_range()
        .ok()
        .and_then(|r| PortRange::new(*r.start(), *r.end()))
        .unwrap_or(FALLBACK_DYNAMIC_RANGE)
}

/// Ports on which a socket of the host's network namespace listens (TCP) or is bound
/// (UDP) on a non-loopback address, from `/proc/net/{tcp,tcp6,udp,udp6}`.
pub(crate) fn host_listening_ports() -> BTreeSet<(Proto, u16)> {
    let mut ports = BTreeSet::new();
    for (file, proto, state) in [
        ("/proc/net/tcp", Proto::Tcp, "0A"),
        ("/proc/net/tcp6", Proto::Tcp, "0A"),
        ("/proc/net/udp", Proto::Udp, "07"),
        ("/proc/net/udp6", Proto::Udp, "07"),
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
            ports.extend(
                parse_proc_net(&text, state)
                    .into_iter()
                    .map(|port| (proto, port)),
            );
        }
    }
    ports
}

/// Local ports of the sockets in state `state` (hex, as the kernel writes it) of a
/// `/proc/net/{tcp,udp}[6]` table, skipping loopback-only sockets.
fn parse_proc_net(text: &str, state: &str) -> Vec<u16> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let st = fields.nth(1)?;
            if st != state {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            // 127.0.0.0/8 is "XX00007F" (little-endian words); ::1 ends in "01000000".
            let loopback = (addr.len() == 8 && addr.ends_with("7F"))
                || addr == "00000000000000000000000001000000";
            if loopback {
                return None;
            }
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn range(a: u16, b: u16) -> PortRange {
        PortRange::new(a, b).unwrap()
    }

    fn mapping(proto: Proto, host: Option<(u16, u16)>, container: u16) -> PortMapping {
        PortMapping {
            proto,
            host_ip: None,
            host_ports: host.map(|(a, b)| range(a, b)),
            container_ports: range(container, container),
        }
    }

    fn published(proto: Proto, host_port: u16, container_port: u16) -> PublishedPort {
        PublishedPort {
            proto,
            host_ip: None,
            host_port,
            container_port,
        }
    }

    fn no_host_sockets(_: Proto, _: u16) -> bool {
        false
    }

    #[test]
    fn parses_docker_port_map() {
        let v = json!([
            {"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},
            {"Proto":17,"IP":"","Port":53,"HostIP":"192.0.2.1","HostPort":5353,"HostPortEnd":5353},
            {"Proto":6,"IP":"","Port":443,"HostIP":"0.0.0.0","HostPort":8000,"HostPortEnd":8100},
            {"Proto":6,"Port":22,"HostPort":2222},
            {"Proto":6,"IP":"","Port":9000,"HostIP":"","HostPort":0,"HostPortEnd":0}
        ]);
        let got = parse_port_map(&v).unwrap();
        assert_eq!(
            got,
            vec![
                mapping(Proto::Tcp, Some((8080, 8080)), 80),
                PortMapping {
                    host_ip: Some(Ipv4Addr::new(192, 0, 2, 1).into()),
                    ..mapping(Proto::Udp, Some((5353, 5353)), 53)
                },
                mapping(Proto::Tcp, Some((8000, 8100)), 443),
                mapping(Proto::Tcp, Some((2222, 2222)), 22),
                mapping(Proto::Tcp, None, 9000),
            ]
        );
        assert!(parse_port_map(&Value::Null).unwrap().is_empty());
        assert!(parse_port_map(&json!([])).unwrap().is_empty());
        // IPv6: `::` is every address; an address with or without brackets.
        let v6 = json!([
            {"Proto":6,"Port":80,"HostIP":"::","HostPort":8080},
            {"Proto":6,"Port":80,"HostIP":"fd31::1","HostPort":8081},
            {"Proto":6,"Port":80,"HostIP":"[fd31::1]","HostPort":8082}
        ]);
        let got = parse_port_map(&v6).unwrap();
        assert_eq!(got[0].host_ip, None);
        let fd31: std::net::IpAddr = "fd31::1".parse().unwrap();
        assert_eq!((got[1].host_ip, got[2].host_ip), (Some(fd31), Some(fd31)));
    }

    #[test]
    fn refuses_bad_port_maps() {
        let cases = [
            (json!({"Proto":6}), "not a list"),
            (json!([{"Port":80}]), "not a list"),
            (
                json!([{"Proto":6,"Port":0,"HostPort":80}]),
                "container port 0",
            ),
            (
                json!([{"Proto":6,"Port":70000,"HostPort":80}]),
                "container port 70000",
            ),
            (
                json!([{"Proto":6,"Port":80,"HostPort":65536}]),
                "host port 65536",
            ),
            (
                json!([{"Proto":6,"Port":80,"HostPort":9000,"HostPortEnd":8000}]),
                "below HostPort",
            ),
            (
                json!([{"Proto":6,"Port":80,"HostPort":0,"HostPortEnd":8000}]),
                "without a HostPort",
            ),
            (json!([{"Proto":132,"Port":80,"HostPort":80}]), "SCTP"),
            (
                json!([{"Proto":1,"Port":80,"HostPort":80}]),
                "protocol number 1",
            ),
            (
                json!([{"Proto":6,"Port":80,"HostIP":"::1","HostPort":80}]),
                "loopback address ::1",
            ),
            (
                json!([{"Proto":6,"Port":80,"HostIP":"example.org","HostPort":80}]),
                "not an IP address",
            ),
            (
                json!([{"Proto":6,"Port":80,"HostIP":"127.0.0.1","HostPort":8080}]),
                "loopback address 127.0.0.1",
            ),
        ];
        for (value, expected) in cases {
            let err = parse_port_map(&value).unwrap_err().to_string();
            assert!(err.contains(expected), "{value}: {err}");
        }
    }

    #[test]
    fn parses_exposed_ports() {
        let v = json!([{"Proto":6,"Port":80},{"Proto":17,"Port":53}]);
        assert_eq!(
            parse_exposed_ports(&v).unwrap(),
            vec![
                ExposedPort {
                    proto: Proto::Tcp,
                    port: 80
                },
                ExposedPort {
                    proto: Proto::Udp,
                    port: 53
                }
            ]
        );
        assert!(parse_exposed_ports(&Value::Null).unwrap().is_empty());
        assert!(parse_exposed_ports(&json!([{"Proto":6,"Port":0}])).is_err());
        assert!(parse_exposed_ports(&json!("80/tcp")).is_err());
    }

    #[test]
    fn validates_range_combinations() {
        let both = PortMapping {
            host_ports: Some(range(8080, 8081)),
            container_ports: range(80, 81),
            ..mapping(Proto::Tcp, None, 80)
        };
        assert!(both.validate().is_ok());
        let uneven = PortMapping {
            host_ports: Some(range(8080, 8082)),
            ..both.clone()
        };
        assert!(uneven
            .validate()
            .unwrap_err()
            .to_string()
            .contains("different lengths"));
        let open_range = PortMapping {
            host_ports: None,
            ..both
        };
        assert!(open_range
            .validate()
            .unwrap_err()
            .to_string()
            .contains("explicit host ports"));
        let any = PortMapping {
            host_ip: Some(Ipv4Addr::UNSPECIFIED.into()),
            ..mapping(Proto::Tcp, Some((80, 80)), 80)
        };
        assert!(any.validate().is_err());
        assert!(PortRange::new(0, 5).is_none());
        assert!(PortRange::new(6, 5).is_none());
        assert_eq!(range(8000, 8100).to_string(), "8000-8100");
        assert_eq!(range(80, 80).len(), 1);
    }

    #[test]
    fn resolves_fixed_ranges_one_to_one() {
        let m = PortMapping {
            host_ports: Some(range(8080, 8081)),
            container_ports: range(80, 81),
            ..mapping(Proto::Tcp, None, 80)
        };
        let got = resolve(&[m], &[], &[], range(40000, 40010), &no_host_sockets).unwrap();
        assert_eq!(
            got,
            vec![
                published(Proto::Tcp, 8080, 80),
                published(Proto::Tcp, 8081, 81)
            ]
        );
    }

    #[test]
    fn chooses_lowest_free_port_deterministically() {
        let taken = vec![Taken {
            port: published(Proto::Tcp, 40000, 80),
            holder: "endpoint aaa".into(),
        }];
        let busy = |proto: Proto, port: u16| proto == Proto::Tcp && port == 40001;
        let reqs = [
            mapping(Proto::Tcp, None, 80),
            mapping(Proto::Tcp, None, 81),
            mapping(Proto::Udp, None, 53),
            mapping(Proto::Tcp, Some((40000, 40010)), 443),
        ];
        let dynamic = range(40000, 40010);
        let got = resolve(&reqs, &taken, &[], dynamic, &busy).unwrap();
        assert_eq!(
            got,
            vec![
                published(Proto::Tcp, 40002, 80),
                published(Proto::Tcp, 40003, 81),
                published(Proto::Tcp, 40004, 443),
                published(Proto::Udp, 40000, 53),
            ]
        );
        // Same request again, with its own previous ports: the same answer.
        let again = resolve(&reqs, &taken, &got, dynamic, &busy).unwrap();
        assert_eq!(again, got);
        // Its previous ports are kept even when a lower one became free.
        let again = resolve(&reqs, &[], &got, dynamic, &busy).unwrap();
        assert_eq!(again, got);
    }

    #[test]
    fn refuses_clashes() {
        let taken = vec![Taken {
            port: PublishedPort {
                host_ip: Some(Ipv4Addr::new(192, 0, 2, 1).into()),
                ..published(Proto::Tcp, 8080, 80)
            },
            holder: "endpoint 5b7e0e2a41c3 of network 3f2a9c1d4e5b".into(),
        }];
        let dynamic = range(40000, 40010);
        // Every address overlaps 192.0.2.1.
        let err = resolve(
            &[mapping(Proto::Tcp, Some((8080, 8080)), 80)],
            &taken,
            &[],
            dynamic,
            &no_host_sockets,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("already published by endpoint 5b7e0e2a41c3"),
            "{msg}"
        );
        assert!(msg.contains("-p OTHER:80"), "{msg}");
        // Another address, or another protocol, does not clash.
        let other_ip = PortMapping {
            host_ip: Some(Ipv4Addr::new(192, 0, 2, 2).into()),
            ..mapping(Proto::Tcp, Some((8080, 8080)), 80)
        };
        assert!(resolve(&[other_ip], &taken, &[], dynamic, &no_host_sockets).is_ok());
        let udp = mapping(Proto::Udp, Some((8080, 8080)), 80);
        assert!(resolve(&[udp], &taken, &[], dynamic, &no_host_sockets).is_ok());
        // Twice in one request.
        let twice = [
            mapping(Proto::Tcp, Some((9090, 9090)), 80),
            mapping(Proto::Tcp, Some((9090, 9090)), 81),
        ];
        let msg = resolve(&twice, &[], &[], dynamic, &no_host_sockets)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("asked for twice"), "{msg}");
        // A host socket listens on it.
        let busy = |_: Proto, port: u16| port == 9090;
        let msg = resolve(&twice[..1], &[], &[], dynamic, &busy)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("listens"), "{msg}");
    }

    #[test]
    fn reports_exhausted_ranges() {
        let busy = |_: Proto, _: u16| true;
        let err = resolve(
            &[mapping(Proto::Udp, Some((7000, 7001)), 53)],
            &[],
            &[],
            range(40000, 40001),
            &busy,
        )
        .unwrap_err();
        assert!(
            matches!(err, FirewallError::NoFreePort { range: r, .. } if r == range(7000, 7001)),
            "{err}"
        );
        assert!(err.to_string().contains("-p HOSTPORT:53"));
    }

    #[test]
    fn reads_proc_net_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0205A80A:D2B4 0105A80A:0050 01 00000000:00000000 00:00000000 00000000     0        0 3 1
";
        assert_eq!(parse_proc_net(tcp, "0A"), vec![8080]);
        let tcp6 =
            "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A
   1: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A
";
        assert_eq!(parse_proc_net(tcp6, "0A"), vec![22]);
        assert!(dynamic_range().len() > 1);
    }

    #[test]
    fn published_port_display_and_conversion() {
        let p = PublishedPort {
            host_ip: Some(Ipv4Addr::new(192, 0, 2, 1).into()),
            ..published(Proto::Udp, 5353, 53)
        };
        assert_eq!(p.to_string(), "192.0.2.1:5353->53/udp");
        assert_eq!(
            published(Proto::Tcp, 8080, 80).to_string(),
            "0.0.0.0:8080->80/tcp"
        );
        let m = PortMapping::try_from(p).unwrap();
        assert_eq!(m.host_ports, Some(range(5353, 5353)));
        let again = resolve(&[m], &[], &[], range(1, 2), &no_host_sockets).unwrap();
        assert_eq!(again, vec![p]);
        assert!(PortMapping::try_from(published(Proto::Tcp, 0, 80)).is_err());
    }
}
