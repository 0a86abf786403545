//! `docker network create -o KEY=VALUE` options, parsed and validated.
//!
//! Docker hands the `-o` pairs to the driver under [`crate::plugin::api::GENERIC_OPTIONS`] as a
//! JSON object. The CLI always sends strings, but Docker API clients may send booleans
//! or numbers, so those are accepted too and read as their JSON text.
//!
//! Every key is checked: an unknown key is refused (a typo such as `ovs.bridge.vlna`
//! must not silently create an untagged network), and every error names the option,
//! the value given and what is accepted, because Docker shows the message to the user
//! as is.
//!
//! The driver stores the options of each network in OVSDB `external_ids` and parses
//! them again after a restart: [`NetworkOptions::to_string_map`] and
//! [`NetworkOptions::from_string_map`] round-trip exactly.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde_json::Value;

use crate::host::ifname;
use crate::plugin::api::GENERIC_OPTIONS;

/// `mode`: how containers reach the outside world.
pub const MODE: &str = "mode";
/// `ovs.bridge.mode`: alias of [`MODE`], the spelling of the Go dovesnap plugin.
pub const BRIDGE_MODE: &str = "ovs.bridge.mode";
/// `ovs.bridge.name`: the OVS bridge (and its Linux interface) name.
pub const BRIDGE_NAME: &str = "ovs.bridge.name";
/// `ovs.bridge.existing`: attach to the existing OVS bridge named by [`BRIDGE_NAME`]
/// (made by the administrator) instead of creating one; dovesnap then only adds and
/// removes its containers' ports and never changes or deletes the bridge.
pub const BRIDGE_EXISTING: &str = "ovs.bridge.existing";
/// `ovs.bridge.vlan`: the VLAN id the containers' ports are access ports of.
pub const BRIDGE_VLAN: &str = "ovs.bridge.vlan";
/// `ovs.bridge.mtu`: the MTU of the bridge and the containers' interfaces.
pub const BRIDGE_MTU: &str = "ovs.bridge.mtu";
/// `com.docker.network.driver.mtu`: alias of [`BRIDGE_MTU`], Docker's generic spelling
/// (`docker network create -o com.docker.network.driver.mtu=1400`).
pub const DOCKER_MTU: &str = "com.docker.network.driver.mtu";
/// `ovs.bridge.add_ports`: host interfaces to add to the bridge, `IFNAME[/OFPORT],...`.
pub const BRIDGE_ADD_PORTS: &str = "ovs.bridge.add_ports";
/// `ovs.bridge.controller`: OpenFlow controller targets, comma-separated.
pub const BRIDGE_CONTROLLER: &str = "ovs.bridge.controller";
/// `ovs.bridge.dpid`: the bridge's OpenFlow datapath id.
pub const BRIDGE_DPID: &str = "ovs.bridge.dpid";
/// `ovs.bridge.userspace`: use the userspace (netdev) datapath instead of the kernel's.
pub const BRIDGE_USERSPACE: &str = "ovs.bridge.userspace";
/// `ovs.bridge.tunnels`: tunnel ports to add to the bridge,
/// `KIND:REMOTE[:KEY],...` (see [`Tunnel`]).
pub const BRIDGE_TUNNELS: &str = "ovs.bridge.tunnels";
/// `ovs.nat.uplink`: nat-fast only, the interface the translator sends from (default:
/// the interface of the host's default route).
pub const NAT_UPLINK: &str = "ovs.nat.uplink";
/// `ovs.nat.offload`: nat-fast only, whether established sessions are rewritten and
/// forwarded in XDP (default `true`) or every packet goes through the AF_XDP translator.
pub const NAT_OFFLOAD: &str = "ovs.nat.offload";
/// `ovs.nat.engine`: nat-fast only, what carries the network's traffic: `tc` (default:
/// each endpoint split so that the container keeps TSO and checksum offload, sessions
/// made and carried by tcx programs) or `xdp` (XDP on the veths plus the AF_XDP
/// translator); see [`NatEngine`].
pub const NAT_ENGINE: &str = "ovs.nat.engine";
/// `ovs.ovn.switch`: overlay only, the OVN logical switch the network maps to (default:
/// derived from the subnet, so the same `--subnet` on every host gives the same switch).
pub const OVN_SWITCH: &str = "ovs.ovn.switch";
/// `ovs.ovn.nb`: overlay only, the OVN northbound database (`tcp:HOST:PORT` or
/// `unix:PATH`); default: the daemon's `--ovn-nb`, then this host's
/// `external_ids:ovn-nb`, then `ovn-remote` with port 6641.
pub const OVN_NB: &str = "ovs.ovn.nb";
/// `ovs.ovn.bridge`: overlay only, the integration bridge ovn-controller manages
/// (default `br-int`).
pub const OVN_BRIDGE: &str = "ovs.ovn.bridge";
/// `ovs.ovn.gateway`: overlay only, the OVN chassis (`system-id`) that carries the
/// network's gateway: an OVN logical router with the network's gateway address, SNAT
/// to `ovs.ovn.gateway_address` and `-p` as OVN load balancers (docs/design/overlay.md).
pub const OVN_GATEWAY: &str = "ovs.ovn.gateway";
/// `ovs.ovn.gateway_address`: with `ovs.ovn.gateway`, the gateway's external address
/// and next hop, `ADDR/PREFIX@NEXTHOP` (required).
pub const OVN_GATEWAY_ADDRESS: &str = "ovs.ovn.gateway_address";
/// `ovs.ovn.gateway_network`: with `ovs.ovn.gateway`, the OVN bridge mapping name of
/// the external network on the gateway chassis (`ovn-bridge-mappings`; default
/// [`crate::ovn::gateway::DEFAULT_NETWORK`]).
pub const OVN_GATEWAY_NETWORK: &str = "ovs.ovn.gateway_network";

/// `ovs.port.vlan`: endpoint option (`docker network connect --driver-opt
/// ovs.port.vlan=N`), the access VLAN of this container's port, overriding the
/// network's [`BRIDGE_VLAN`].
pub const PORT_VLAN: &str = "ovs.port.vlan";

/// Every endpoint (`--driver-opt`) option key dovesnap accepts.
pub const ACCEPTED_ENDPOINT_KEYS: &[&str] = &[PORT_VLAN];

/// Endpoint option keys under this prefix are Docker's own (port map, exposed ports,
/// MAC address, ...), sent beside the `--driver-opt` pairs and not checked here.
pub const DOCKER_OPTION_PREFIX: &str = "com.docker.";

/// Every option key dovesnap accepts, in the order they are listed to the user.
pub const ACCEPTED_KEYS: &[&str] = &[
    MODE,
    BRIDGE_MODE,
    BRIDGE_NAME,
    BRIDGE_EXISTING,
    BRIDGE_VLAN,
    BRIDGE_MTU,
    DOCKER_MTU,
    BRIDGE_ADD_PORTS,
    BRIDGE_CONTROLLER,
    BRIDGE_DPID,
    BRIDGE_USERSPACE,
    BRIDGE_TUNNELS,
    NAT_UPLINK,
    NAT_OFFLOAD,
    NAT_ENGINE,
    OVN_SWITCH,
    OVN_NB,
    OVN_BRIDGE,
    OVN_GATEWAY,
    OVN_GATEWAY_ADDRESS,
    OVN_GATEWAY_NETWORK,
];

/// The smallest MTU accepted: the IPv4 minimum (RFC 791).
pub const MIN_MTU: u32 = 68;
/// The largest MTU accepted: the usual jumbo-frame limit of NICs and switches.
pub const MAX_MTU: u32 = 9216;
/// The largest OpenFlow port number a port may ask for (`OFPP_MAX` is 0xff00).
pub const MAX_OFPORT: u32 = 0xfeff;

const EXPECTED_MODE: &str = "one of flat, nat, nat-fast, routed, overlay";
const EXPECTED_SWITCH: &str =
    "an OVN logical switch name: 1 to 63 characters from A-Z a-z 0-9 _ . -";
const EXPECTED_OVN_NAME: &str =
    "an OVN chassis or network name: 1 to 63 characters from A-Z a-z 0-9 _ . -";
const EXPECTED_NB: &str = "an OVSDB remote: tcp:HOST:PORT or unix:PATH";
const EXPECTED_IFNAME: &str =
    "a Linux interface name: 1 to 15 characters from A-Z a-z 0-9 _ . -, not \".\" or \"..\"";
const EXPECTED_VLAN: &str = "a VLAN id from 1 to 4094";
const EXPECTED_MTU: &str = "an MTU from 68 (the IPv4 minimum) to 9216 (jumbo frames)";
const EXPECTED_BOOL: &str = "one of true, false, 1, 0, yes, no";
const EXPECTED_DPID: &str =
    "a datapath id of 1 to 16 hex digits, optionally prefixed with 0x, e.g. 0x00000000000000a1";
const EXPECTED_CONTROLLER: &str = "comma-separated OpenFlow controller targets: tcp:IP[:PORT], \
     ssl:IP[:PORT], unix:PATH, ptcp:[PORT][:IP], pssl:[PORT][:IP] or punix:PATH \
     (IPv6 addresses in brackets, ports 1 to 65535)";

/// Errors in network options. Docker shows the message to the user verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A known option with a value it does not accept.
    #[error("invalid {key} {value:?}: expected {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
    /// A value reserved for a later version.
    #[error("{key}={value} is not yet supported by dovesnap; {hint}")]
    NotYetSupported {
        key: String,
        value: String,
        hint: String,
    },
    /// A key dovesnap does not know (often a typo).
    #[error(
        "unknown network option {key:?}{}; dovesnap accepts {}",
        did_you_mean(.suggestion),
        ACCEPTED_KEYS.join(", ")
    )]
    UnknownKey {
        key: String,
        suggestion: Option<&'static str>,
    },
    /// An endpoint (`--driver-opt`) key dovesnap does not know.
    #[error(
        "unknown endpoint option {key:?}{}; dovesnap accepts {} as --driver-opt",
        did_you_mean(.suggestion),
        ACCEPTED_ENDPOINT_KEYS.join(", ")
    )]
    UnknownEndpointKey {
        key: String,
        suggestion: Option<&'static str>,
    },
    /// An option and its alias (`mode` and `ovs.bridge.mode`, `ovs.bridge.mtu` and
    /// `com.docker.network.driver.mtu`) both given, with different values.
    #[error(
        "conflicting options {option}={value:?} and {alias}={alias_value:?}: \
         they are two names of the same option, give only one"
    )]
    ConflictingAlias {
        option: &'static str,
        value: String,
        alias: &'static str,
        alias_value: String,
    },
    /// A value that is a JSON array, object or null.
    #[error("invalid {key}: expected a string (or a boolean or number), not a JSON {found}")]
    WrongType { key: String, found: &'static str },
    /// The generic options themselves are not a JSON object.
    #[error(
        "invalid {}: expected a JSON object of option names to strings, not a JSON {found}",
        GENERIC_OPTIONS
    )]
    NotAnObject { found: &'static str },
}

fn did_you_mean(suggestion: &Option<&'static str>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean {s:?}?)"),
        None => String::new(),
    }
}

/// A name OVN keeps in its databases (a switch, a chassis, a bridge mapping).
fn is_ovn_name(value: &str) -> bool {
    (1..=63).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn invalid(key: &str, value: &str, expected: impl Into<String>) -> OptionsError {
    OptionsError::Invalid {
        key: key.to_owned(),
        value: value.to_owned(),
        expected: expected.into(),
    }
}

/// How a network's containers reach the outside world.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Containers sit on the bridge with the uplink ports; no address translation.
    #[default]
    Flat,
    /// The host routes and masquerades for the network (kernel NAT).
    Nat,
    /// As [`Mode::Nat`], with the translation done by the XDP/AF_XDP fast path.
    NatFast,
    /// The host routes for the network without translating: containers leave with
    /// their own addresses, and the far side reaches them through a route to the
    /// subnet via the host (Docker's `gateway_mode_ipv4=routed`).
    Routed,
    /// One L2 network across hosts: an OVN logical switch, containers on the
    /// integration bridge; internal (no way out) in this version.
    Overlay,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Flat => "flat",
            Mode::Nat => "nat",
            Mode::NatFast => "nat-fast",
            Mode::Routed => "routed",
            Mode::Overlay => "overlay",
        }
    }

    /// Whether the host does address translation for the network.
    pub fn is_nat(self) -> bool {
        matches!(self, Mode::Nat | Mode::NatFast)
    }

    /// Whether the host is the network's gateway: the gateway address on the bridge,
    /// forwarding, and the firewall's rules (nat, nat-fast and routed).
    pub fn has_gateway(self) -> bool {
        self.is_nat() || self == Mode::Routed
    }

    /// Parses a mode given under `key` (the error names that key).
    fn parse_for(key: &str, value: &str) -> Result<Mode, OptionsError> {
        match value.to_ascii_lowercase().as_str() {
            "flat" => Ok(Mode::Flat),
            "nat" => Ok(Mode::Nat),
            "nat-fast" => Ok(Mode::NatFast),
            "routed" => Ok(Mode::Routed),
            "overlay" => Ok(Mode::Overlay),
            _ => Err(invalid(key, value, EXPECTED_MODE)),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = OptionsError;

    /// Parses `flat`, `nat`, `nat-fast`, `routed` or `overlay` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::parse_for(MODE, s)
    }
}

/// A host interface added to the bridge, optionally at a fixed OpenFlow port number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Uplink {
    pub name: String,
    pub ofport: Option<u32>,
}

impl fmt::Display for Uplink {
    /// `IFNAME` or `IFNAME/OFPORT`, the syntax of `ovs.bridge.add_ports`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ofport {
            Some(p) => write!(f, "{}/{}", self.name, p),
            None => f.write_str(&self.name),
        }
    }
}

/// The validated options of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkOptions {
    pub mode: Mode,
    pub bridge_name: Option<String>,
    /// `ovs.bridge.existing`: the bridge is the administrator's, dovesnap only plugs
    /// its containers' ports into it.
    pub existing: bool,
    pub vlan: Option<u16>,
    pub mtu: Option<u32>,
    pub add_ports: Vec<Uplink>,
    /// Controller targets as given (validated), e.g. `tcp:192.0.2.1:6653`.
    pub controllers: Vec<String>,
    /// Normalised to 16 lowercase hex digits without `0x`, as OVS's
    /// `other_config:datapath-id` wants it.
    pub dpid: Option<String>,
    pub userspace: bool,
    /// nat-fast: the uplink interface named by `ovs.nat.uplink`.
    pub nat_uplink: Option<String>,
    /// nat-fast: `ovs.nat.offload` as given (absent: on, see [`NetworkOptions::offload`]).
    pub nat_offload: Option<bool>,
    /// nat-fast: `ovs.nat.engine`; CreateNetwork records [`NatEngine::DEFAULT`] when
    /// none is given (absent in a record: see [`NetworkOptions::engine`]).
    pub nat_engine: Option<NatEngine>,
    /// overlay: the logical switch named by `ovs.ovn.switch`.
    pub ovn_switch: Option<String>,
    /// overlay: the northbound database named by `ovs.ovn.nb`.
    pub ovn_nb: Option<crate::ovsdb::Remote>,
    /// overlay: the integration bridge named by `ovs.ovn.bridge`.
    pub ovn_bridge: Option<String>,
    /// overlay: the gateway chassis named by `ovs.ovn.gateway`.
    pub ovn_gateway: Option<String>,
    /// overlay: `ovs.ovn.gateway_address`.
    pub ovn_gateway_address: Option<crate::ovn::gateway::GatewayAddress>,
    /// overlay: `ovs.ovn.gateway_network` as given.
    pub ovn_gateway_network: Option<String>,
    /// `ovs.bridge.tunnels`: tunnel ports on the bridge, in the order given.
    pub tunnels: Vec<Tunnel>,
}

/// What carries a nat-fast network's traffic (`ovs.nat.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatEngine {
    /// XDP on each endpoint's veth and the AF_XDP translator. The container end has
    /// TX checksum offload (and so TSO) off.
    Xdp,
    /// The endpoint is split in two veth pairs joined by tc redirects, so the container
    /// keeps TSO and checksum offload and OVS still sees whole, checksummed frames;
    /// tcx programs on the container's pair and the uplink make and carry TCP and UDP
    /// sessions, and what they decline takes the kernel path (OVS, the gateway, the nft
    /// masquerade), as in nat mode (docs/design/nat-fast-tc.md).
    Tc,
}

impl NatEngine {
    /// The engine of a nat-fast network created without `ovs.nat.engine`: the one that
    /// is faster than Docker's bridge on every workload of the bench.
    pub const DEFAULT: NatEngine = NatEngine::Tc;

    fn parse(value: &str) -> Result<Self, OptionsError> {
        match value {
            "xdp" => Ok(NatEngine::Xdp),
            "tc" => Ok(NatEngine::Tc),
            _ => Err(invalid(NAT_ENGINE, value, "one of xdp, tc")),
        }
    }
}

impl fmt::Display for NatEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatEngine::Xdp => "xdp",
            NatEngine::Tc => "tc",
        })
    }
}

impl NetworkOptions {
    /// Whether a nat-fast network offloads established sessions to XDP.
    pub fn offload(&self) -> bool {
        self.nat_offload.unwrap_or(true)
    }

    /// What carries a nat-fast network's traffic (meaningless for other modes). A record
    /// without `ovs.nat.engine` was written before tc became the default (CreateNetwork
    /// now always records it): its endpoints are built for xdp.
    pub fn engine(&self) -> NatEngine {
        self.nat_engine.unwrap_or(NatEngine::Xdp)
    }

    /// The engine CreateNetwork records for a nat-fast network: the one given; else xdp
    /// when `ovs.nat.offload` is given (a setting of the xdp engine's); else
    /// [`NatEngine::DEFAULT`].
    pub fn chosen_engine(&self) -> NatEngine {
        match (self.nat_engine, self.nat_offload) {
            (Some(engine), _) => engine,
            (None, Some(_)) => NatEngine::Xdp,
            (None, None) => NatEngine::DEFAULT,
        }
    }

    /// Parses the `com.docker.network.generic` map of a `CreateNetwork` request.
    pub fn from_generic(generic: &HashMap<String, Value>) -> Result<Self, OptionsError> {
        let mut sorted: Vec<(&String, &Value)> = generic.iter().collect();
        sorted.sort_by_key(|(k, _)| *k);
        let mut pairs = Vec::with_capacity(sorted.len());
        for (key, value) in sorted {
            let key = resolve_key(key)?;
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(OptionsError::WrongType {
                        key: key.to_owned(),
                        found: json_kind(other),
                    })
                }
            };
            pairs.push((key, text));
        }
        Self::from_pairs(pairs)
    }

    /// Parses the options of a `CreateNetwork` request's `Options` map: the `-o` pairs
    /// under [`GENERIC_OPTIONS`]; no options at all gives the defaults.
    pub fn from_docker_options(
        options: Option<&HashMap<String, Value>>,
    ) -> Result<Self, OptionsError> {
        match options.and_then(|o| o.get(GENERIC_OPTIONS)) {
            None | Some(Value::Null) => Ok(Self::default()),
            Some(Value::Object(map)) => {
                let generic: HashMap<String, Value> =
                    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                Self::from_generic(&generic)
            }
            Some(other) => Err(OptionsError::NotAnObject {
                found: json_kind(other),
            }),
        }
    }

    /// Parses options stored by [`NetworkOptions::to_string_map`] (or any map of
    /// option keys to strings).
    pub fn from_string_map(map: &BTreeMap<String, String>) -> Result<Self, OptionsError> {
        let mut pairs = Vec::with_capacity(map.len());
        for (key, value) in map {
            pairs.push((resolve_key(key)?, value.clone()));
        }
        Self::from_pairs(pairs)
    }

    /// The options as option keys to strings, for storing; `mode` is always present so
    /// a stored network keeps its mode even if the default changes.
    pub fn to_string_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        map.insert(MODE.to_owned(), self.mode.to_string());
        if let Some(name) = &self.bridge_name {
            map.insert(BRIDGE_NAME.to_owned(), name.clone());
        }
        if self.existing {
            map.insert(BRIDGE_EXISTING.to_owned(), "true".to_owned());
        }
        if let Some(vlan) = self.vlan {
            map.insert(BRIDGE_VLAN.to_owned(), vlan.to_string());
        }
        if let Some(mtu) = self.mtu {
            map.insert(BRIDGE_MTU.to_owned(), mtu.to_string());
        }
        if !self.add_ports.is_empty() {
            let ports: Vec<String> = self.add_ports.iter().map(Uplink::to_string).collect();
            map.insert(BRIDGE_ADD_PORTS.to_owned(), ports.join(","));
        }
        if !self.controllers.is_empty() {
            map.insert(BRIDGE_CONTROLLER.to_owned(), self.controllers.join(","));
        }
        if let Some(dpid) = &self.dpid {
            map.insert(BRIDGE_DPID.to_owned(), dpid.clone());
        }
        if self.userspace {
            map.insert(BRIDGE_USERSPACE.to_owned(), "true".to_owned());
        }
        if let Some(uplink) = &self.nat_uplink {
            map.insert(NAT_UPLINK.to_owned(), uplink.clone());
        }
        if let Some(offload) = self.nat_offload {
            map.insert(NAT_OFFLOAD.to_owned(), offload.to_string());
        }
        if let Some(engine) = self.nat_engine {
            map.insert(NAT_ENGINE.to_owned(), engine.to_string());
        }
        if let Some(switch) = &self.ovn_switch {
            map.insert(OVN_SWITCH.to_owned(), switch.clone());
        }
        if let Some(nb) = &self.ovn_nb {
            map.insert(OVN_NB.to_owned(), nb.to_string());
        }
        if let Some(bridge) = &self.ovn_bridge {
            map.insert(OVN_BRIDGE.to_owned(), bridge.clone());
        }
        if let Some(chassis) = &self.ovn_gateway {
            map.insert(OVN_GATEWAY.to_owned(), chassis.clone());
        }
        if let Some(address) = &self.ovn_gateway_address {
            map.insert(OVN_GATEWAY_ADDRESS.to_owned(), address.to_string());
        }
        if let Some(network) = &self.ovn_gateway_network {
            map.insert(OVN_GATEWAY_NETWORK.to_owned(), network.clone());
        }
        if !self.tunnels.is_empty() {
            let tunnels: Vec<String> = self.tunnels.iter().map(Tunnel::to_string).collect();
            map.insert(BRIDGE_TUNNELS.to_owned(), tunnels.join(","));
        }
        map
    }

    fn from_pairs(mut pairs: Vec<(&'static str, String)>) -> Result<Self, OptionsError> {
        // A stable order, so that with several bad options the same one is reported.
        pairs.sort_by_key(|(k, _)| ACCEPTED_KEYS.iter().position(|a| a == k));
        let mut opts = NetworkOptions::default();
        let mut mode: Option<(Mode, String)> = None;
        for (key, value) in pairs {
            match key {
                MODE | BRIDGE_MODE => {
                    let parsed = Mode::parse_for(key, &value)?;
                    match &mode {
                        Some((earlier, earlier_text)) if *earlier != parsed => {
                            return Err(OptionsError::ConflictingAlias {
                                option: MODE,
                                value: earlier_text.clone(),
                                alias: BRIDGE_MODE,
                                alias_value: value,
                            });
                        }
                        _ => mode = Some((parsed, value)),
                    }
                }
                BRIDGE_NAME => opts.bridge_name = Some(parse_bridge_name(&value)?),
                BRIDGE_EXISTING => opts.existing = parse_bool(key, &value)?,
                BRIDGE_VLAN => opts.vlan = Some(parse_vlan(key, &value)?),
                BRIDGE_MTU | DOCKER_MTU => {
                    let mtu = parse_mtu(key, &value)?;
                    match opts.mtu {
                        Some(earlier) if earlier != mtu => {
                            return Err(OptionsError::ConflictingAlias {
                                option: BRIDGE_MTU,
                                value: earlier.to_string(),
                                alias: DOCKER_MTU,
                                alias_value: value,
                            });
                        }
                        _ => opts.mtu = Some(mtu),
                    }
                }
                BRIDGE_ADD_PORTS => opts.add_ports = parse_add_ports(&value)?,
                BRIDGE_CONTROLLER => opts.controllers = parse_controllers(&value)?,
                BRIDGE_DPID => opts.dpid = Some(parse_dpid(&value)?),
                BRIDGE_USERSPACE => opts.userspace = parse_bool(key, &value)?,
                BRIDGE_TUNNELS => opts.tunnels = parse_tunnels(&value)?,
                NAT_UPLINK => {
                    if !ifname::is_plain(&value) {
                        return Err(invalid(
                            key,
                            &value,
                            "an interface name (1 to 15 of A-Za-z0-9_.-)",
                        ));
                    }
                    opts.nat_uplink = Some(value)
                }
                NAT_OFFLOAD => opts.nat_offload = Some(parse_bool(key, &value)?),
                NAT_ENGINE => opts.nat_engine = Some(NatEngine::parse(&value)?),
                OVN_SWITCH => {
                    if !is_ovn_name(&value) {
                        return Err(invalid(key, &value, EXPECTED_SWITCH));
                    }
                    opts.ovn_switch = Some(value)
                }
                OVN_NB => {
                    opts.ovn_nb = Some(
                        value
                            .parse()
                            .map_err(|_| invalid(key, &value, EXPECTED_NB))?,
                    )
                }
                OVN_BRIDGE => opts.ovn_bridge = Some(parse_bridge_name(&value)?),
                OVN_GATEWAY | OVN_GATEWAY_NETWORK => {
                    if !is_ovn_name(&value) {
                        return Err(invalid(key, &value, EXPECTED_OVN_NAME));
                    }
                    if key == OVN_GATEWAY {
                        opts.ovn_gateway = Some(value)
                    } else {
                        opts.ovn_gateway_network = Some(value)
                    }
                }
                OVN_GATEWAY_ADDRESS => {
                    opts.ovn_gateway_address = Some(value.parse().map_err(
                        |e: crate::ovn::gateway::BadGatewayAddress| invalid(key, &value, e.0),
                    )?)
                }
                _ => unreachable!("resolve_key only returns accepted keys"),
            }
        }
        if let Some((m, _)) = mode {
            opts.mode = m;
        }
        if opts.mode != Mode::NatFast {
            let given = [
                (NAT_UPLINK, opts.nat_uplink.clone()),
                (NAT_OFFLOAD, opts.nat_offload.map(|b| b.to_string())),
                (NAT_ENGINE, opts.nat_engine.map(|e| e.to_string())),
            ];
            if let Some((key, Some(value))) = given.into_iter().find(|(_, v)| v.is_some()) {
                return Err(OptionsError::Invalid {
                    key: key.to_owned(),
                    value,
                    expected: "only with mode=nat-fast".to_owned(),
                });
            }
        }
        if let (Some(NatEngine::Tc), Some(offload)) = (opts.nat_engine, opts.nat_offload) {
            return Err(OptionsError::Invalid {
                key: NAT_OFFLOAD.to_owned(),
                value: offload.to_string(),
                expected: format!(
                    "nothing with {NAT_ENGINE}=tc: it turns XDP offload on or off, \
                     and the tc engine uses no XDP"
                ),
            });
        }
        opts.check_overlay()?;
        opts.check_existing()?;
        opts.check_tunnels()?;
        opts.default_tunnel_mtu();
        Ok(opts)
    }

    /// `ovs.bridge.existing=true` needs the bridge's name, works in flat mode only (nat
    /// would put the gateway address on the administrator's bridge), and refuses every
    /// option that would change the bridge: dovesnap only adds its containers' ports.
    fn check_existing(&self) -> Result<(), OptionsError> {
        if !self.existing {
            return Ok(());
        }
        let existing_with = |key: &str, value: String, why: &str| OptionsError::Invalid {
            key: key.to_owned(),
            value,
            expected: format!("nothing with {BRIDGE_EXISTING}=true: {why}"),
        };
        if self.bridge_name.is_none() {
            return Err(OptionsError::Invalid {
                key: BRIDGE_EXISTING.to_owned(),
                value: "true".to_owned(),
                expected: format!(
                    "{BRIDGE_NAME}=BRIDGE as well, naming the existing OVS bridge to attach to"
                ),
            });
        }
        if self.mode != Mode::Flat {
            return Err(existing_with(
                MODE,
                self.mode.to_string(),
                "only mode=flat attaches to an existing bridge (nat, nat-fast and routed would \
                 put the gateway address and rules on the administrator's bridge)",
            ));
        }
        let map = self.to_string_map();
        for key in [
            BRIDGE_MTU,
            BRIDGE_ADD_PORTS,
            BRIDGE_CONTROLLER,
            BRIDGE_DPID,
            BRIDGE_USERSPACE,
            BRIDGE_TUNNELS,
        ] {
            if let Some(v) = map.get(key) {
                return Err(existing_with(
                    key,
                    v.clone(),
                    "dovesnap does not change a bridge it did not create; set it on the \
                     bridge with ovs-vsctl",
                ));
            }
        }
        Ok(())
    }

    /// The `ovs.ovn.*` options go with mode=overlay only, and an overlay network has no
    /// bridge of its own for the `ovs.bridge.*` options (but `ovs.bridge.mtu` sets
    /// its containers' MTU).
    fn check_overlay(&self) -> Result<(), OptionsError> {
        let only_overlay = |key: &str, value: String| OptionsError::Invalid {
            key: key.to_owned(),
            value,
            expected: "only with mode=overlay".to_owned(),
        };
        if self.mode != Mode::Overlay {
            if let Some(v) = &self.ovn_switch {
                return Err(only_overlay(OVN_SWITCH, v.clone()));
            }
            if let Some(v) = &self.ovn_nb {
                return Err(only_overlay(OVN_NB, v.to_string()));
            }
            if let Some(v) = &self.ovn_bridge {
                return Err(only_overlay(OVN_BRIDGE, v.clone()));
            }
            if let Some(v) = &self.ovn_gateway {
                return Err(only_overlay(OVN_GATEWAY, v.clone()));
            }
        }
        self.check_ovn_gateway()?;
        if self.mode != Mode::Overlay {
            return Ok(());
        }
        let not_overlay = |key: &str, value: String| OptionsError::Invalid {
            key: key.to_owned(),
            value,
            expected: "nothing with mode=overlay: containers go on OVN's integration \
                       bridge (ovs.ovn.bridge), not on a bridge of the network's own"
                .to_owned(),
        };
        let map = self.to_string_map();
        for key in [
            BRIDGE_NAME,
            BRIDGE_VLAN,
            BRIDGE_ADD_PORTS,
            BRIDGE_CONTROLLER,
            BRIDGE_DPID,
            BRIDGE_USERSPACE,
            BRIDGE_TUNNELS,
        ] {
            if let Some(v) = map.get(key) {
                return Err(not_overlay(key, v.clone()));
            }
        }
        Ok(())
    }
}

impl NetworkOptions {
    /// `ovs.ovn.gateway_address` and `ovs.ovn.gateway_network` go with
    /// `ovs.ovn.gateway`, which needs the address.
    fn check_ovn_gateway(&self) -> Result<(), OptionsError> {
        let map = self.to_string_map();
        if self.ovn_gateway.is_none() {
            for key in [OVN_GATEWAY_ADDRESS, OVN_GATEWAY_NETWORK] {
                if let Some(v) = map.get(key) {
                    return Err(invalid(
                        key,
                        v,
                        format!("only with {OVN_GATEWAY}=CHASSIS (and mode=overlay)"),
                    ));
                }
            }
        } else if self.ovn_gateway_address.is_none() {
            return Err(invalid(
                OVN_GATEWAY,
                &map[OVN_GATEWAY],
                format!(
                    "{OVN_GATEWAY_ADDRESS}=ADDR/PREFIX@NEXTHOP as well: the gateway's \
                     address on the external network and its next hop there"
                ),
            ));
        }
        Ok(())
    }
}

/// The MTU a network with tunnels gets when `ovs.bridge.mtu` is not given: an
/// Ethernet underlay's 1500 bytes less the largest encapsulation among its tunnels,
/// so full-size container packets fit in one underlay packet.
pub const UNDERLAY_MTU: u32 = 1500;

impl NetworkOptions {
    /// Tunnels stretch a flat network's L2 segment to other hosts; a nat or routed
    /// network's bridge holds its gateway address, which every host would then answer
    /// for.
    fn check_tunnels(&self) -> Result<(), OptionsError> {
        if self.tunnels.is_empty() || !self.mode.has_gateway() {
            return Ok(());
        }
        Err(OptionsError::Invalid {
            key: BRIDGE_TUNNELS.to_owned(),
            value: self.to_string_map()[BRIDGE_TUNNELS].clone(),
            expected: format!(
                "nothing with mode={}: tunnels join flat networks across hosts, and each \
                 host's bridge would answer for the same gateway address",
                self.mode
            ),
        })
    }

    /// With tunnels and no `ovs.bridge.mtu`, the MTU is [`UNDERLAY_MTU`] less the
    /// largest tunnel overhead (stored like a given MTU, so it survives restarts).
    fn default_tunnel_mtu(&mut self) {
        if self.mtu.is_none() {
            if let Some(overhead) = self.tunnels.iter().map(Tunnel::overhead).max() {
                self.mtu = Some(UNDERLAY_MTU - overhead);
            }
        }
    }
}

/// The encapsulation of a tunnel port (OVS `Interface.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    Vxlan,
    Gre,
    Geneve,
}

impl TunnelKind {
    /// The OVS interface type, also the option's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelKind::Vxlan => "vxlan",
            TunnelKind::Gre => "gre",
            TunnelKind::Geneve => "geneve",
        }
    }

    /// The largest key: a 24-bit VNI for VXLAN and Geneve, a 32-bit GRE key.
    pub fn max_key(self) -> u32 {
        match self {
            TunnelKind::Vxlan | TunnelKind::Geneve => (1 << 24) - 1,
            TunnelKind::Gre => u32::MAX,
        }
    }

    /// Bytes the encapsulation adds over an IPv4 underlay, the inner Ethernet header
    /// included: outer IPv4 20 + UDP 8 + VXLAN/Geneve 8 + 14, or IPv4 20 + GRE 4 + 14.
    fn base_overhead(self) -> u32 {
        match self {
            TunnelKind::Vxlan | TunnelKind::Geneve => 50,
            TunnelKind::Gre => 38,
        }
    }
}

impl fmt::Display for TunnelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tunnel port of `ovs.bridge.tunnels`: `KIND:REMOTE[:KEY]`, the remote an IPv4
/// address or a bracketed IPv6 one (`vxlan:[2001:db8::2]:42`). The key is the VNI
/// of VXLAN and Geneve, the GRE key of GRE; absent, OVS uses none (VNI 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tunnel {
    pub kind: TunnelKind,
    pub remote: IpAddr,
    pub key: Option<u32>,
}

impl Tunnel {
    /// Bytes the encapsulation adds to each container packet on the underlay.
    pub fn overhead(&self) -> u32 {
        let v6 = if self.remote.is_ipv6() { 20 } else { 0 };
        let gre_key = if self.kind == TunnelKind::Gre && self.key.is_some() {
            4
        } else {
            0
        };
        self.kind.base_overhead() + v6 + gre_key
    }
}

impl fmt::Display for Tunnel {
    /// The syntax of `ovs.bridge.tunnels`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.remote {
            IpAddr::V4(ip) => write!(f, "{}:{ip}", self.kind)?,
            IpAddr::V6(ip) => write!(f, "{}:[{ip}]", self.kind)?,
        }
        match self.key {
            Some(key) => write!(f, ":{key}"),
            None => Ok(()),
        }
    }
}

/// The most tunnels one network takes: their port names carry the index (see
/// `driver::tunnels`), and a flat bridge meshed to more hosts than this wants OVN.
pub const MAX_TUNNELS: usize = 64;

const EXPECTED_TUNNELS: &str = "comma-separated KIND:REMOTE[:KEY] items, where KIND is vxlan, \
     gre or geneve, REMOTE the far end's IPv4 address or [IPv6] address, and KEY the VNI \
     (0 to 16777215) of vxlan and geneve or the key (0 to 4294967295) of gre";

fn parse_tunnels(value: &str) -> Result<Vec<Tunnel>, OptionsError> {
    let bad = |why: String| invalid(BRIDGE_TUNNELS, value, format!("{EXPECTED_TUNNELS}; {why}"));
    let mut tunnels: Vec<Tunnel> = Vec::new();
    for item in split_list(BRIDGE_TUNNELS, value, "KIND:REMOTE[:KEY] items")? {
        let tunnel = parse_tunnel(&item).map_err(|why| bad(format!("{item:?} {why}")))?;
        if let Some(other) = tunnels.iter().find(|t| t.remote == tunnel.remote) {
            return Err(bad(format!(
                "each remote at most once (two tunnels to one host would make a loop), \
                 but {other} and {tunnel} both go to {}",
                tunnel.remote
            )));
        }
        tunnels.push(tunnel);
    }
    if tunnels.len() > MAX_TUNNELS {
        return Err(bad(format!(
            "at most {MAX_TUNNELS} tunnels, not {}",
            tunnels.len()
        )));
    }
    Ok(tunnels)
}

/// Parses one `KIND:REMOTE[:KEY]`; the error completes "ITEM ...".
fn parse_tunnel(item: &str) -> Result<Tunnel, String> {
    let (kind, rest) = item.split_once(':').ok_or("has no remote address")?;
    let kind = match kind.to_ascii_lowercase().as_str() {
        "vxlan" => TunnelKind::Vxlan,
        "gre" => TunnelKind::Gre,
        "geneve" => TunnelKind::Geneve,
        _ => return Err(format!("has an unknown kind {kind:?}")),
    };
    let (remote, key) = split_host_port(rest)?;
    let remote = remote.ok_or("has no remote address")?;
    let remote: IpAddr = remote
        .parse()
        .map_err(|_| format!("has {remote:?}, which is not an IP address"))?;
    if remote.is_unspecified() || remote.is_multicast() || remote.is_loopback() {
        return Err(format!(
            "has {remote}, which is not the unicast address of another host"
        ));
    }
    let key = match key {
        None => None,
        Some(k) => Some(
            parse_decimal::<u32>(k)
                .filter(|k| *k <= kind.max_key())
                .ok_or_else(|| {
                    format!("has key {k:?}, expected 0 to {} for {kind}", kind.max_key())
                })?,
        ),
    };
    Ok(Tunnel { kind, remote, key })
}

/// The validated endpoint options of one container's connection to a network
/// (`docker network connect --driver-opt KEY=VALUE`, `docker run --network
/// name=NET,driver-opt=KEY=VALUE`). Docker sends them as top-level keys of
/// CreateEndpoint's `Options`, beside its own `com.docker.*` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointOptions {
    /// `ovs.port.vlan`: the port's access VLAN, instead of the network's.
    pub vlan: Option<u16>,
}

impl EndpointOptions {
    /// Parses CreateEndpoint's `Options`: Docker's `com.docker.*` keys are skipped,
    /// every other key must be an endpoint option dovesnap knows.
    pub fn from_docker_options(
        options: Option<&HashMap<String, Value>>,
    ) -> Result<Self, OptionsError> {
        let mut sorted: Vec<(&String, &Value)> = options.into_iter().flatten().collect();
        sorted.sort_by_key(|(k, _)| *k);
        let mut opts = EndpointOptions::default();
        for (key, value) in sorted {
            if key.starts_with(DOCKER_OPTION_PREFIX) {
                continue;
            }
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => {
                    return Err(OptionsError::WrongType {
                        key: key.clone(),
                        found: json_kind(other),
                    })
                }
            };
            match key.as_str() {
                PORT_VLAN => opts.vlan = Some(parse_vlan(PORT_VLAN, &text)?),
                _ => {
                    let lower = key.to_ascii_lowercase();
                    let close = edit_distance(&lower, PORT_VLAN) <= 2
                        || lower == "vlan"
                        || lower == BRIDGE_VLAN;
                    return Err(OptionsError::UnknownEndpointKey {
                        key: key.clone(),
                        suggestion: close.then_some(PORT_VLAN),
                    });
                }
            }
        }
        Ok(opts)
    }
}

/// Maps a user's key to the accepted key, or explains that it is unknown.
fn resolve_key(key: &str) -> Result<&'static str, OptionsError> {
    ACCEPTED_KEYS
        .iter()
        .copied()
        .find(|k| *k == key)
        .ok_or_else(|| OptionsError::UnknownKey {
            key: key.to_owned(),
            suggestion: suggest_key(key),
        })
}

/// The accepted key closest to a mistyped one, if it is close enough to be a typo.
fn suggest_key(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    ACCEPTED_KEYS
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
        .or_else(|| {
            // `vlan` for `ovs.bridge.vlan`: a known key without its prefix.
            ACCEPTED_KEYS
                .iter()
                .copied()
                .find(|k| k.strip_prefix("ovs.bridge.") == Some(lower.as_str()))
        })
}

/// Levenshtein distance over bytes (keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Parses an unsigned decimal number of plain digits (no sign, no spaces); `None`
/// for anything else, including overflow.
fn parse_decimal<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_bridge_name(value: &str) -> Result<String, OptionsError> {
    if ifname::is_plain(value) {
        Ok(value.to_owned())
    } else {
        Err(invalid(BRIDGE_NAME, value, EXPECTED_IFNAME))
    }
}

fn parse_vlan(key: &str, value: &str) -> Result<u16, OptionsError> {
    parse_decimal::<u16>(value)
        .filter(|v| (1..=4094).contains(v))
        .ok_or_else(|| invalid(key, value, EXPECTED_VLAN))
}

fn parse_mtu(key: &str, value: &str) -> Result<u32, OptionsError> {
    parse_decimal::<u32>(value)
        .filter(|v| (MIN_MTU..=MAX_MTU).contains(v))
        .ok_or_else(|| invalid(key, value, EXPECTED_MTU))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, OptionsError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(key, value, EXPECTED_BOOL)),
    }
}

fn parse_dpid(value: &str) -> Result<String, OptionsError> {
    let digits = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
        .unwrap_or(value);
    if (1..=16).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(format!("{:0>16}", digits.to_ascii_lowercase()))
    } else {
        Err(invalid(BRIDGE_DPID, value, EXPECTED_DPID))
    }
}

/// Splits a comma-separated list; an empty (or all-blank) value is an empty list.
/// Spaces around the commas are ignored; an empty item (`a,,b`) is an error.
fn split_list(key: &str, value: &str, what: &str) -> Result<Vec<String>, OptionsError> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                Err(invalid(
                    key,
                    value,
                    format!("comma-separated {what} with no empty items"),
                ))
            } else {
                Ok(item.to_owned())
            }
        })
        .collect()
}

fn parse_add_ports(value: &str) -> Result<Vec<Uplink>, OptionsError> {
    const WHAT: &str = "IFNAME or IFNAME/OFPORT items";
    let mut ports: Vec<Uplink> = Vec::new();
    for item in split_list(BRIDGE_ADD_PORTS, value, WHAT)? {
        let (name, ofport) = match item.split_once('/') {
            Some((name, port)) => (name, Some(port)),
            None => (item.as_str(), None),
        };
        if !ifname::is_plain(name) {
            return Err(invalid(
                BRIDGE_ADD_PORTS,
                value,
                format!(
                    "comma-separated {WHAT}, where IFNAME is {EXPECTED_IFNAME}; {name:?} is not"
                ),
            ));
        }
        let ofport = match ofport {
            None => None,
            Some(p) => Some(
                parse_decimal::<u32>(p)
                    .filter(|p| (1..=MAX_OFPORT).contains(p))
                    .ok_or_else(|| {
                        invalid(
                            BRIDGE_ADD_PORTS,
                            value,
                            format!(
                                "comma-separated {WHAT}, where OFPORT is an OpenFlow port \
                                 number from 1 to {MAX_OFPORT}; {p:?} is not"
                            ),
                        )
                    })?,
            ),
        };
        if ports.iter().any(|u| u.name == name) {
            return Err(invalid(
                BRIDGE_ADD_PORTS,
                value,
                format!("each interface at most once, but {name:?} is listed twice"),
            ));
        }
        if let Some(p) = ofport {
            if let Some(other) = ports.iter().find(|u| u.ofport == Some(p)) {
                return Err(invalid(
                    BRIDGE_ADD_PORTS,
                    value,
                    format!(
                        "each OpenFlow port number at most once, but {} and {name} both ask for {p}",
                        other.name
                    ),
                ));
            }
        }
        ports.push(Uplink {
            name: name.to_owned(),
            ofport,
        });
    }
    Ok(ports)
}

fn parse_controllers(value: &str) -> Result<Vec<String>, OptionsError> {
    let mut targets: Vec<String> = Vec::new();
    for item in split_list(BRIDGE_CONTROLLER, value, "controller targets")? {
        if let Err(why) = check_controller_target(&item) {
            return Err(invalid(
                BRIDGE_CONTROLLER,
                value,
                format!("{EXPECTED_CONTROLLER}; {item:?} {why}"),
            ));
        }
        if targets.contains(&item) {
            return Err(invalid(
                BRIDGE_CONTROLLER,
                value,
                format!("each controller at most once, but {item:?} is listed twice"),
            ));
        }
        targets.push(item);
    }
    Ok(targets)
}

/// Checks one OVS controller target; the error completes "TARGET ...".
fn check_controller_target(target: &str) -> Result<(), String> {
    let Some((method, rest)) = target.split_once(':') else {
        return Err("has no method (tcp:, ssl:, unix:, ptcp:, pssl:, punix:)".into());
    };
    match method {
        "tcp" | "ssl" => {
            let (host, port) = split_host_port(rest)?;
            let host = host.ok_or("has no IP address")?;
            check_ip(host)?;
            port.map(check_port).transpose()?;
            Ok(())
        }
        "ptcp" | "pssl" => {
            // ptcp:[PORT][:IP]; the IP may be a bracketed IPv6 address.
            let (port, ip) = match rest.split_once(':') {
                Some((port, ip)) => (port, Some(ip)),
                None => (rest, None),
            };
            if !port.is_empty() {
                check_port(port)?;
            }
            if let Some(ip) = ip {
                let ip = ip
                    .strip_prefix('[')
                    .and_then(|i| i.strip_suffix(']'))
                    .unwrap_or(ip);
                check_ip(ip)?;
            }
            Ok(())
        }
        "unix" | "punix" => {
            if rest.is_empty() {
                Err("has no socket path".into())
            } else {
                Ok(())
            }
        }
        other if other.parse::<IpAddr>().is_ok() => {
            Err("has no method; write tcp:IP:PORT for an active connection".into())
        }
        other => Err(format!(
            "has an unknown method {other:?} (tcp, ssl, unix, ptcp, pssl and punix are known)"
        )),
    }
}

/// Splits `IP[:PORT]` or `[IPV6][:PORT]`.
fn split_host_port(s: &str) -> Result<(Option<&str>, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("has a '[' without the closing ']'")?;
        return match after {
            "" => Ok((Some(host), None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((Some(host), Some(port))),
                None => Err("has text after the bracketed address that is not :PORT".into()),
            },
        };
    }
    let host_port = match s.split_once(':') {
        Some((host, port)) => {
            if port.contains(':') {
                return Err("has an IPv6 address without brackets, write [ADDRESS]:PORT".into());
            }
            (host, Some(port))
        }
        None => (s, None),
    };
    Ok((
        (!host_port.0.is_empty()).then_some(host_port.0),
        host_port.1,
    ))
}

fn check_ip(ip: &str) -> Result<(), String> {
    ip.parse::<IpAddr>()
        .map(|_| ())
        .map_err(|_| format!("has {ip:?}, which is not an IP address"))
}

fn check_port(port: &str) -> Result<(), String> {
    parse_decimal::<u16>(port)
        .filter(|p| *p != 0)
        .map(|_| ())
        .ok_or_else(|| format!("has port {port:?}, expected 1 to 65535"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn generic(pairs: &[(&str, Value)]) -> HashMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<NetworkOptions, OptionsError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        NetworkOptions::from_generic(&map)
    }

    fn one(key: &str, value: &str) -> Result<NetworkOptions, OptionsError> {
        parse(&[(key, value)])
    }

    fn err(key: &str, value: &str) -> String {
        one(key, value)
            .expect_err(&format!("{key}={value} should be refused"))
            .to_string()
    }

    #[test]
    fn no_options_are_the_defaults() {
        let o = NetworkOptions::from_generic(&HashMap::new()).unwrap();
        assert_eq!(o, NetworkOptions::default());
        assert_eq!(o.mode, Mode::Flat);
    }

    #[test]
    fn mode_strings() {
        for (s, m) in [
            ("flat", Mode::Flat),
            ("nat", Mode::Nat),
            ("nat-fast", Mode::NatFast),
            ("routed", Mode::Routed),
        ] {
            assert_eq!(s.parse::<Mode>().unwrap(), m);
            assert_eq!(m.to_string(), s);
            assert_eq!(one(MODE, s).unwrap().mode, m);
            assert_eq!(one(BRIDGE_MODE, s).unwrap().mode, m);
        }
        assert_eq!("NAT".parse::<Mode>().unwrap(), Mode::Nat);
        assert!(Mode::NatFast.is_nat() && Mode::Nat.is_nat() && !Mode::Flat.is_nat());
        assert!(!Mode::Routed.is_nat() && Mode::Routed.has_gateway());
        assert!(Mode::Nat.has_gateway() && !Mode::Flat.has_gateway());
        assert!(!Mode::Overlay.has_gateway());
    }

    #[test]
    fn bad_mode_names_key_value_and_choices() {
        assert_eq!(
            err(MODE, "bridge"),
            r#"invalid mode "bridge": expected one of flat, nat, nat-fast, routed, overlay"#
        );
        assert_eq!(
            err(BRIDGE_MODE, ""),
            r#"invalid ovs.bridge.mode "": expected one of flat, nat, nat-fast, routed, overlay"#
        );
        assert!(err(MODE, "natfast").contains("nat-fast"));
    }

    #[test]
    fn overlay_options() {
        let o = parse(&[
            (MODE, "overlay"),
            (OVN_SWITCH, "web-tier"),
            (OVN_NB, "tcp:192.0.2.254:6641"),
            (OVN_BRIDGE, "br-int"),
            (BRIDGE_MTU, "1400"),
        ])
        .unwrap();
        assert_eq!(o.mode, Mode::Overlay);
        assert_eq!(o.ovn_switch.as_deref(), Some("web-tier"));
        assert_eq!(
            o.ovn_nb,
            Some(crate::ovsdb::Remote::Tcp("192.0.2.254:6641".into()))
        );
        assert_eq!(
            NetworkOptions::from_string_map(&o.to_string_map()).unwrap(),
            o
        );

        let e = parse(&[(OVN_SWITCH, "s")]).unwrap_err().to_string();
        assert_eq!(
            e,
            r#"invalid ovs.ovn.switch "s": expected only with mode=overlay"#
        );
        let e = parse(&[(MODE, "overlay"), (BRIDGE_VLAN, "5")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(r#"invalid ovs.bridge.vlan "5": expected nothing with mode=overlay"#),
            "{e}"
        );
        let e = parse(&[(MODE, "overlay"), (OVN_NB, "ssl:h:1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tcp:HOST:PORT or unix:PATH"), "{e}");
        let e = parse(&[(MODE, "overlay"), (OVN_SWITCH, "a b")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("logical switch name"), "{e}");
    }

    #[test]
    fn ovn_gateway_options() {
        let o = parse(&[
            (MODE, "overlay"),
            (OVN_GATEWAY, "host1"),
            (OVN_GATEWAY_ADDRESS, "198.51.100.10/24@198.51.100.1"),
        ])
        .unwrap();
        assert_eq!(o.ovn_gateway.as_deref(), Some("host1"));
        let a = o.ovn_gateway_address.unwrap();
        assert_eq!(a.to_string(), "198.51.100.10/24@198.51.100.1");
        assert_eq!(
            NetworkOptions::from_string_map(&o.to_string_map()).unwrap(),
            o
        );
        let refused = [
            (
                vec![(OVN_GATEWAY, "host1")],
                "expected only with mode=overlay",
            ),
            (
                vec![(MODE, "overlay"), (OVN_GATEWAY, "host1")],
                "ovs.ovn.gateway_address=ADDR/PREFIX@NEXTHOP as well",
            ),
            (
                vec![(MODE, "overlay"), (OVN_GATEWAY_NETWORK, "physnet")],
                "only with ovs.ovn.gateway=CHASSIS",
            ),
            (
                vec![(MODE, "overlay"), (OVN_GATEWAY, "host 1")],
                "an OVN chassis or network name",
            ),
            (
                vec![
                    (MODE, "overlay"),
                    (OVN_GATEWAY, "h"),
                    (OVN_GATEWAY_ADDRESS, "198.51.100.10/24"),
                ],
                "ADDR/PREFIX@NEXTHOP",
            ),
        ];
        for (pairs, expected) in refused {
            let e = parse(&pairs).unwrap_err().to_string();
            assert!(e.contains(expected), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn mode_and_alias() {
        let o = parse(&[(MODE, "nat"), (BRIDGE_MODE, "nat")]).unwrap();
        assert_eq!(o.mode, Mode::Nat);
        let o = parse(&[(MODE, "nat"), (BRIDGE_MODE, "NAT")]).unwrap();
        assert_eq!(o.mode, Mode::Nat);
        let e = parse(&[(MODE, "nat"), (BRIDGE_MODE, "flat")]).unwrap_err();
        assert_eq!(
            e,
            OptionsError::ConflictingAlias {
                option: MODE,
                value: "nat".into(),
                alias: BRIDGE_MODE,
                alias_value: "flat".into()
            }
        );
        assert!(e.to_string().contains("give only one"));
    }

    #[test]
    fn dockers_mtu_option_is_an_alias() {
        assert_eq!(one(DOCKER_MTU, "1400").unwrap().mtu, Some(1400));
        let same = parse(&[(BRIDGE_MTU, "1400"), (DOCKER_MTU, "1400")]).unwrap();
        assert_eq!(same.mtu, Some(1400));
        let e = parse(&[(BRIDGE_MTU, "1400"), (DOCKER_MTU, "1500")]).unwrap_err();
        assert!(
            e.to_string().contains("com.docker.network.driver.mtu"),
            "{e}"
        );
        let e = one(DOCKER_MTU, "20").unwrap_err().to_string();
        assert!(e.contains("invalid com.docker.network.driver.mtu"), "{e}");
    }

    #[test]
    fn bridge_name() {
        for good in ["b", "ovsbr0", "br-ext.100", "a_b", "abcdefghijklmno", "..."] {
            assert_eq!(
                one(BRIDGE_NAME, good).unwrap().bridge_name.as_deref(),
                Some(good)
            );
        }
        for bad in [
            "",
            ".",
            "..",
            "abcdefghijklmnop",
            "br 0",
            "br/0",
            "br:0",
            "brü",
        ] {
            let e = err(BRIDGE_NAME, bad);
            assert_eq!(
                e,
                format!("invalid ovs.bridge.name {bad:?}: expected {EXPECTED_IFNAME}")
            );
        }
    }

    #[test]
    fn vlan() {
        assert_eq!(one(BRIDGE_VLAN, "1").unwrap().vlan, Some(1));
        assert_eq!(one(BRIDGE_VLAN, "4094").unwrap().vlan, Some(4094));
        assert_eq!(one(BRIDGE_VLAN, "0100").unwrap().vlan, Some(100));
        assert_eq!(
            err(BRIDGE_VLAN, "5000"),
            r#"invalid ovs.bridge.vlan "5000": expected a VLAN id from 1 to 4094"#
        );
        for bad in ["0", "4095", "65536", "-1", "+5", " 5", "", "ten", "1.0"] {
            assert!(err(BRIDGE_VLAN, bad).contains("from 1 to 4094"), "{bad}");
        }
    }

    #[test]
    fn existing_bridge() {
        let o = parse(&[
            (BRIDGE_EXISTING, "true"),
            (BRIDGE_NAME, "br0"),
            (BRIDGE_VLAN, "7"),
        ])
        .unwrap();
        assert!(o.existing);
        assert_eq!(o.bridge_name.as_deref(), Some("br0"));
        assert_eq!(NetworkOptions::from_string_map(&o.to_string_map()), Ok(o));
        assert!(!parse(&[(BRIDGE_EXISTING, "false")]).unwrap().existing);
        assert_eq!(
            err(BRIDGE_EXISTING, "true"),
            "invalid ovs.bridge.existing \"true\": expected ovs.bridge.name=BRIDGE as well, \
             naming the existing OVS bridge to attach to"
        );
        assert!(err(BRIDGE_EXISTING, "maybe").contains("one of true, false"));
        for (key, value) in [
            (BRIDGE_MTU, "1400"),
            (DOCKER_MTU, "1400"),
            (BRIDGE_ADD_PORTS, "eth1"),
            (BRIDGE_CONTROLLER, "tcp:192.0.2.1:6653"),
            (BRIDGE_DPID, "a1"),
            (BRIDGE_USERSPACE, "true"),
            (MODE, "nat"),
            (MODE, "nat-fast"),
        ] {
            let e = parse(&[
                (BRIDGE_EXISTING, "true"),
                (BRIDGE_NAME, "br0"),
                (key, value),
            ])
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("nothing with ovs.bridge.existing=true"),
                "{key}: {e}"
            );
            let named = if key == DOCKER_MTU { BRIDGE_MTU } else { key };
            assert!(e.starts_with(&format!("invalid {named} ")), "{key}: {e}");
        }
        // Overlay has no bridge of its own to name.
        let e = parse(&[
            (BRIDGE_EXISTING, "true"),
            (BRIDGE_NAME, "br0"),
            (MODE, "overlay"),
        ]);
        assert!(e.unwrap_err().to_string().contains("mode=overlay"));
    }

    fn endpoint(pairs: &[(&str, Value)]) -> Result<EndpointOptions, OptionsError> {
        EndpointOptions::from_docker_options(Some(&generic(pairs)))
    }

    #[test]
    fn endpoint_vlan() {
        assert_eq!(
            EndpointOptions::from_docker_options(None),
            Ok(Default::default())
        );
        let o = endpoint(&[(PORT_VLAN, "42".into())]).unwrap();
        assert_eq!(o.vlan, Some(42));
        assert_eq!(
            endpoint(&[(PORT_VLAN, 4094.into())]).unwrap().vlan,
            Some(4094)
        );
        for bad in ["0", "4095", "", "x"] {
            assert_eq!(
                endpoint(&[(PORT_VLAN, bad.into())])
                    .unwrap_err()
                    .to_string(),
                format!("invalid ovs.port.vlan {bad:?}: expected a VLAN id from 1 to 4094")
            );
        }
        assert!(endpoint(&[(PORT_VLAN, Value::Null)]).is_err());
    }

    #[test]
    fn endpoint_options_skip_dockers_keys_and_refuse_unknown_ones() {
        let dockers = [
            ("com.docker.network.portmap", serde_json::json!([])),
            (
                "com.docker.network.endpoint.exposedports",
                serde_json::json!([]),
            ),
            ("com.docker.network.endpoint.macaddress", "AkIKAAAC".into()),
        ];
        assert_eq!(endpoint(&dockers).unwrap(), EndpointOptions::default());
        assert_eq!(
            endpoint(&[("ovs.port.vlna", "5".into())])
                .unwrap_err()
                .to_string(),
            "unknown endpoint option \"ovs.port.vlna\" (did you mean \"ovs.port.vlan\"?); \
             dovesnap accepts ovs.port.vlan as --driver-opt"
        );
        for key in ["vlan", BRIDGE_VLAN] {
            let e = endpoint(&[(key, "5".into())]).unwrap_err().to_string();
            assert!(e.contains("did you mean \"ovs.port.vlan\""), "{e}");
        }
        let e = endpoint(&[("color", "blue".into())])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("unknown endpoint option \"color\"; "), "{e}");
    }

    #[test]
    fn mtu() {
        assert_eq!(one(BRIDGE_MTU, "68").unwrap().mtu, Some(68));
        assert_eq!(one(BRIDGE_MTU, "1500").unwrap().mtu, Some(1500));
        assert_eq!(one(BRIDGE_MTU, "9216").unwrap().mtu, Some(9216));
        for bad in ["67", "9217", "0", "", "1500b", "99999999999"] {
            assert_eq!(
                err(BRIDGE_MTU, bad),
                format!(
                    "invalid ovs.bridge.mtu {bad:?}: expected an MTU from 68 (the IPv4 minimum) \
                     to 9216 (jumbo frames)"
                )
            );
        }
    }

    #[test]
    fn add_ports() {
        let o = one(BRIDGE_ADD_PORTS, "eth1,eth2/5, enp3s0/65279").unwrap();
        assert_eq!(
            o.add_ports,
            vec![
                Uplink {
                    name: "eth1".into(),
                    ofport: None
                },
                Uplink {
                    name: "eth2".into(),
                    ofport: Some(5)
                },
                Uplink {
                    name: "enp3s0".into(),
                    ofport: Some(65279)
                },
            ]
        );
        assert!(one(BRIDGE_ADD_PORTS, "").unwrap().add_ports.is_empty());
        assert_eq!(o.add_ports[1].to_string(), "eth2/5");

        let e = err(BRIDGE_ADD_PORTS, "eth1/0");
        assert!(
            e.starts_with(r#"invalid ovs.bridge.add_ports "eth1/0": expected"#),
            "{e}"
        );
        assert!(e.contains(r#"from 1 to 65279; "0" is not"#), "{e}");
        assert!(err(BRIDGE_ADD_PORTS, "eth1/65280").contains(r#""65280" is not"#));
        assert!(err(BRIDGE_ADD_PORTS, "eth1/").contains(r#""" is not"#));
        assert!(err(BRIDGE_ADD_PORTS, "eth1/x").contains(r#""x" is not"#));
        assert!(err(BRIDGE_ADD_PORTS, "eth1/2/3").contains(r#""2/3" is not"#));
        assert!(err(BRIDGE_ADD_PORTS, "/2").contains(r#""" is not"#));
        assert!(err(BRIDGE_ADD_PORTS, "a-very-long-interface").contains("Linux interface name"));
        assert!(err(BRIDGE_ADD_PORTS, "eth1,,eth2").contains("no empty items"));
        assert!(err(BRIDGE_ADD_PORTS, "eth1,").contains("no empty items"));
        assert!(err(BRIDGE_ADD_PORTS, "eth1,eth1/3").contains(r#""eth1" is listed twice"#));
        let e = err(BRIDGE_ADD_PORTS, "eth1/3,eth2/3");
        assert!(e.contains("eth1 and eth2 both ask for 3"), "{e}");
    }

    #[test]
    fn controllers() {
        let good = "tcp:192.0.2.1:6653,ssl:[2001:db8::1]:6653,unix:/run/ctl.sock,ptcp:6653,\
                    ptcp:6653:127.0.0.1,ptcp:6653:[::1],pssl:6654,punix:/tmp/p,tcp:10.0.0.1,\
                    ssl:[::1],ptcp:";
        let o = one(BRIDGE_CONTROLLER, good).unwrap();
        assert_eq!(o.controllers.len(), 11);
        assert_eq!(o.controllers[1], "ssl:[2001:db8::1]:6653");
        assert!(one(BRIDGE_CONTROLLER, "").unwrap().controllers.is_empty());
        assert_eq!(
            one(BRIDGE_CONTROLLER, "tcp:192.0.2.1:6653 , tcp:192.0.2.2:6653")
                .unwrap()
                .controllers,
            vec!["tcp:192.0.2.1:6653", "tcp:192.0.2.2:6653"]
        );

        for (bad, why) in [
            ("192.0.2.1:6653", "has no method"),
            ("http:192.0.2.1:80", r#"unknown method "http""#),
            ("tcp:", "has no IP address"),
            ("tcp::6653", "has no IP address"),
            (
                "tcp:300.0.0.1:6653",
                r#"has "300.0.0.1", which is not an IP address"#,
            ),
            ("tcp:ctl.example:6653", "not an IP address"),
            ("tcp:192.0.2.1:0", r#"has port "0", expected 1 to 65535"#),
            ("tcp:192.0.2.1:65536", "expected 1 to 65535"),
            ("tcp:192.0.2.1:", r#"has port """#),
            ("tcp:2001:db8::1:6653", "without brackets"),
            ("tcp:[2001:db8::1:6653", "without the closing"),
            ("tcp:[2001:db8::1]6653", "not :PORT"),
            ("tcp:[10.0.0.x]:1", "not an IP address"),
            ("ptcp:x", r#"has port "x""#),
            ("ptcp:6653:nothere", "not an IP address"),
            ("unix:", "has no socket path"),
            ("punix:", "has no socket path"),
        ] {
            let e = err(BRIDGE_CONTROLLER, bad);
            assert!(
                e.starts_with(&format!("invalid ovs.bridge.controller {bad:?}: expected")),
                "{e}"
            );
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(err(BRIDGE_CONTROLLER, "tcp:192.0.2.1:6653,tcp:192.0.2.1:6653").contains("twice"));
    }

    #[test]
    fn dpid() {
        for (given, normal) in [
            ("1", "0000000000000001"),
            ("0xA1", "00000000000000a1"),
            ("0XFFFFFFFFFFFFFFFF", "ffffffffffffffff"),
            ("00000000000000ab", "00000000000000ab"),
        ] {
            assert_eq!(
                one(BRIDGE_DPID, given).unwrap().dpid.as_deref(),
                Some(normal)
            );
        }
        for bad in [
            "",
            "0x",
            "0x1ffffffffffffffff",
            "xyz",
            "12345678901234567",
            "0x-1",
        ] {
            assert_eq!(
                err(BRIDGE_DPID, bad),
                format!("invalid ovs.bridge.dpid {bad:?}: expected {EXPECTED_DPID}")
            );
        }
    }

    #[test]
    fn userspace() {
        for t in ["true", "TRUE", "1", "yes", "Yes"] {
            let o = one(BRIDGE_USERSPACE, t).unwrap();
            assert!(o.userspace, "{t}");
        }
        for f in ["false", "0", "no", "NO"] {
            assert!(!one(BRIDGE_USERSPACE, f).unwrap().userspace, "{f}");
        }
        assert_eq!(
            err(BRIDGE_USERSPACE, "maybe"),
            r#"invalid ovs.bridge.userspace "maybe": expected one of true, false, 1, 0, yes, no"#
        );
        assert!(err(BRIDGE_USERSPACE, "").contains("one of true"));
    }

    #[test]
    fn json_booleans_and_numbers_are_accepted() {
        let o = NetworkOptions::from_generic(&generic(&[
            (BRIDGE_USERSPACE, json!(true)),
            (BRIDGE_VLAN, json!(100)),
            (BRIDGE_MTU, json!(9000)),
        ]))
        .unwrap();
        assert!(o.userspace);
        assert_eq!(o.vlan, Some(100));
        assert_eq!(o.mtu, Some(9000));
        let e = NetworkOptions::from_generic(&generic(&[(BRIDGE_VLAN, json!(100.5))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid ovs.bridge.vlan "100.5": expected a VLAN id from 1 to 4094"#
        );
    }

    #[test]
    fn json_arrays_objects_and_null_are_refused() {
        for (v, kind) in [
            (json!(["eth1"]), "array"),
            (json!({}), "object"),
            (Value::Null, "null"),
        ] {
            let e = NetworkOptions::from_generic(&generic(&[(BRIDGE_ADD_PORTS, v)])).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "invalid ovs.bridge.add_ports: expected a string (or a boolean or number), \
                     not a JSON {kind}"
                )
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_the_accepted_list() {
        let e = err("ovs.bridge.vlna", "100");
        assert_eq!(
            e,
            format!(
                "unknown network option \"ovs.bridge.vlna\" (did you mean \"ovs.bridge.vlan\"?); \
                 dovesnap accepts {}",
                ACCEPTED_KEYS.join(", ")
            )
        );
        assert!(err("vlan", "100").contains(r#"(did you mean "ovs.bridge.vlan"?)"#));
        assert!(err("MODE", "nat").contains(r#"(did you mean "mode"?)"#));
        let e = err("com.example.something", "x");
        assert!(!e.contains("did you mean"), "{e}");
        for k in ACCEPTED_KEYS {
            assert!(e.contains(k), "{e} lacks {k}");
        }
        // An unknown key is refused even next to valid ones.
        assert!(parse(&[(MODE, "nat"), ("ovs.bridge.lbport", "1")]).is_err());
    }

    #[test]
    fn the_first_bad_option_in_key_order_is_reported() {
        let e = parse(&[(BRIDGE_USERSPACE, "x"), (BRIDGE_VLAN, "0"), (MODE, "y")]).unwrap_err();
        assert!(e.to_string().starts_with("invalid mode"), "{e}");
    }

    #[test]
    fn docker_options_wrapper() {
        assert_eq!(
            NetworkOptions::from_docker_options(None).unwrap(),
            NetworkOptions::default()
        );
        let mut opts = generic(&[("com.docker.network.enable_ipv6", json!(false))]);
        assert_eq!(
            NetworkOptions::from_docker_options(Some(&opts)).unwrap(),
            NetworkOptions::default()
        );
        opts.insert(
            GENERIC_OPTIONS.into(),
            json!({"mode": "nat", "ovs.bridge.vlan": "7"}),
        );
        let o = NetworkOptions::from_docker_options(Some(&opts)).unwrap();
        assert_eq!((o.mode, o.vlan), (Mode::Nat, Some(7)));
        opts.insert(GENERIC_OPTIONS.into(), json!("mode=nat"));
        let e = NetworkOptions::from_docker_options(Some(&opts)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid com.docker.network.generic: expected a JSON object of option names to \
             strings, not a JSON string"
        );
    }

    #[test]
    fn round_trip_through_the_string_map() {
        let full = NetworkOptions {
            mode: Mode::NatFast,
            bridge_name: Some("ovsbr-test".into()),
            vlan: Some(4094),
            mtu: Some(9000),
            add_ports: vec![
                Uplink {
                    name: "eth1".into(),
                    ofport: Some(7),
                },
                Uplink {
                    name: "eth2".into(),
                    ofport: None,
                },
            ],
            controllers: vec!["tcp:192.0.2.1:6653".into(), "ptcp:6653:[::1]".into()],
            dpid: Some("00000000000000a1".into()),
            userspace: true,
            nat_uplink: Some("eth0".into()),
            nat_offload: Some(false),
            ..NetworkOptions::default()
        };
        let tc = NetworkOptions {
            mode: Mode::NatFast,
            nat_engine: Some(NatEngine::Tc),
            ..NetworkOptions::default()
        };
        let existing = NetworkOptions {
            bridge_name: Some("br0".into()),
            existing: true,
            vlan: Some(5),
            ..NetworkOptions::default()
        };
        for o in [full, existing, tc, NetworkOptions::default()] {
            let map = o.to_string_map();
            assert_eq!(NetworkOptions::from_string_map(&map).unwrap(), o);
        }
    }

    #[test]
    fn nat_uplink_only_for_nat_fast() {
        let o = parse(&[(MODE, "nat-fast"), (NAT_UPLINK, "eth1")]).unwrap();
        assert_eq!(o.nat_uplink.as_deref(), Some("eth1"));
        let e = parse(&[(MODE, "nat"), (NAT_UPLINK, "eth1")]).unwrap_err();
        assert!(e.to_string().contains("only with mode=nat-fast"), "{e}");
        let e = parse(&[(MODE, "nat-fast"), (NAT_UPLINK, "bad name!")]).unwrap_err();
        assert!(e.to_string().contains("interface name"), "{e}");
    }

    #[test]
    fn nat_engine_defaults_to_tc_and_is_checked() {
        let default = parse(&[(MODE, "nat-fast")]).unwrap();
        assert_eq!(default.chosen_engine(), NatEngine::Tc);
        // A record without the option predates the tc default.
        assert_eq!(default.engine(), NatEngine::Xdp);
        let offload = parse(&[(MODE, "nat-fast"), (NAT_OFFLOAD, "false")]).unwrap();
        assert_eq!(offload.chosen_engine(), NatEngine::Xdp);
        let tc = parse(&[(MODE, "nat-fast"), (NAT_ENGINE, "tc")]).unwrap();
        assert_eq!(tc.engine(), NatEngine::Tc);
        let xdp = parse(&[(MODE, "nat-fast"), (NAT_ENGINE, "xdp")]).unwrap();
        assert_eq!(xdp.engine(), NatEngine::Xdp);
        let e = parse(&[(MODE, "nat"), (NAT_ENGINE, "tc")]).unwrap_err();
        assert!(e.to_string().contains("only with mode=nat-fast"), "{e}");
        let e = parse(&[(MODE, "nat-fast"), (NAT_ENGINE, "ebpf")]).unwrap_err();
        assert!(e.to_string().contains("one of xdp, tc"), "{e}");
        let e = parse(&[
            (MODE, "nat-fast"),
            (NAT_ENGINE, "tc"),
            (NAT_OFFLOAD, "true"),
        ]);
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("ovs.nat.engine=tc") && e.contains("uses no XDP"),
            "{e}"
        );
    }

    #[test]
    fn nat_offload_defaults_on_for_nat_fast_only() {
        assert!(parse(&[(MODE, "nat-fast")]).unwrap().offload());
        let off = parse(&[(MODE, "nat-fast"), (NAT_OFFLOAD, "false")]).unwrap();
        assert!(!off.offload());
        let e = parse(&[(MODE, "nat"), (NAT_OFFLOAD, "false")]).unwrap_err();
        assert!(e.to_string().contains("only with mode=nat-fast"), "{e}");
        let e = parse(&[(MODE, "nat-fast"), (NAT_OFFLOAD, "sometimes")]).unwrap_err();
        assert!(e.to_string().contains("expected one of true, false"), "{e}");
    }

    #[test]
    fn string_map_is_canonical() {
        let parsed = parse(&[
            (BRIDGE_MODE, "NAT"),
            (BRIDGE_DPID, "0xA1"),
            (BRIDGE_USERSPACE, "yes"),
            (BRIDGE_ADD_PORTS, " eth1/7 , eth2 "),
            (BRIDGE_VLAN, "010"),
        ])
        .unwrap();
        let map = parsed.to_string_map();
        let expected: BTreeMap<String, String> = [
            (MODE, "nat"),
            (BRIDGE_DPID, "00000000000000a1"),
            (BRIDGE_USERSPACE, "true"),
            (BRIDGE_ADD_PORTS, "eth1/7,eth2"),
            (BRIDGE_VLAN, "10"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(map, expected);
        assert_eq!(
            NetworkOptions::default().to_string_map(),
            BTreeMap::from([(MODE.to_owned(), "flat".to_owned())])
        );
    }

    #[test]
    fn string_map_refuses_unknown_keys_too() {
        let map = BTreeMap::from([("ovs.bridge.colour".to_owned(), "blue".to_owned())]);
        assert!(matches!(
            NetworkOptions::from_string_map(&map),
            Err(OptionsError::UnknownKey { .. })
        ));
    }

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("vlna", "vlan"), 2);
    }

    #[test]
    fn tunnels() {
        let o = one(
            BRIDGE_TUNNELS,
            "vxlan:198.18.78.2:4242, GRE:192.0.2.7,geneve:[2001:db8::2]:0",
        )
        .unwrap();
        let v6: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(
            o.tunnels,
            vec![
                Tunnel {
                    kind: TunnelKind::Vxlan,
                    remote: "198.18.78.2".parse().unwrap(),
                    key: Some(4242)
                },
                Tunnel {
                    kind: TunnelKind::Gre,
                    remote: "192.0.2.7".parse().unwrap(),
                    key: None
                },
                Tunnel {
                    kind: TunnelKind::Geneve,
                    remote: v6,
                    key: Some(0)
                },
            ]
        );
        // The MTU defaults to 1500 less the largest overhead: Geneve over IPv6.
        assert_eq!(o.mtu, Some(1430));
        assert_eq!(
            o.to_string_map()[BRIDGE_TUNNELS],
            "vxlan:198.18.78.2:4242,gre:192.0.2.7,geneve:[2001:db8::2]:0"
        );
        assert_eq!(NetworkOptions::from_string_map(&o.to_string_map()), Ok(o));
        let mtu = |v: &str| one(BRIDGE_TUNNELS, v).unwrap().mtu;
        assert_eq!(mtu("vxlan:192.0.2.1:16777215"), Some(1450));
        assert_eq!(mtu("gre:192.0.2.1"), Some(1462));
        assert_eq!(mtu("gre:192.0.2.1:4294967295"), Some(1458));
        assert_eq!(mtu(""), None);
        // A given MTU is kept (a jumbo-frame underlay has room).
        let o = parse(&[(BRIDGE_TUNNELS, "vxlan:192.0.2.1"), (BRIDGE_MTU, "8950")]).unwrap();
        assert_eq!(o.mtu, Some(8950));

        for (bad, why) in [
            ("vxlan", "has no remote address"),
            ("vxlan:", "has no remote address"),
            ("ipip:192.0.2.1", r#"has an unknown kind "ipip""#),
            ("vxlan:192.0.2.300", "not an IP address"),
            ("vxlan:host.example", "not an IP address"),
            ("vxlan:2001:db8::1", "without brackets"),
            (
                "vxlan:192.0.2.1:16777216",
                r#"has key "16777216", expected 0 to 16777215 for vxlan"#,
            ),
            ("geneve:192.0.2.1:-1", "expected 0 to 16777215 for geneve"),
            (
                "gre:192.0.2.1:4294967296",
                "expected 0 to 4294967295 for gre",
            ),
            ("vxlan:192.0.2.1:", r#"has key """#),
            ("vxlan:0.0.0.0", "not the unicast address of another host"),
            ("vxlan:127.0.0.1", "not the unicast address"),
            ("vxlan:[ff02::1]", "not the unicast address"),
        ] {
            let e = err(BRIDGE_TUNNELS, bad);
            assert!(
                e.starts_with(&format!("invalid ovs.bridge.tunnels {bad:?}: expected comma-separated KIND:REMOTE[:KEY]")),
                "{e}"
            );
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(err(BRIDGE_TUNNELS, "vxlan:192.0.2.1,,gre:192.0.2.2").contains("no empty items"));
        assert!(err(BRIDGE_TUNNELS, "x").contains("where KIND is vxlan, gre or geneve, REMOTE"));
        let e = err(BRIDGE_TUNNELS, "vxlan:192.0.2.1:5,gre:192.0.2.1");
        assert!(
            e.contains("but vxlan:192.0.2.1:5 and gre:192.0.2.1 both go to 192.0.2.1"),
            "{e}"
        );
        let many: Vec<String> = (1..=65).map(|i| format!("vxlan:10.9.0.{i}")).collect();
        assert!(err(BRIDGE_TUNNELS, &many.join(",")).contains("at most 64 tunnels, not 65"));

        // Only flat networks on bridges of dovesnap's own.
        for mode in ["nat", "nat-fast", "routed"] {
            let e = parse(&[(MODE, mode), (BRIDGE_TUNNELS, "vxlan:192.0.2.1")])
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!(
                    "invalid ovs.bridge.tunnels \"vxlan:192.0.2.1\": expected nothing with mode={mode}"
                )),
                "{e}"
            );
        }
        let e = parse(&[(MODE, "overlay"), (BRIDGE_TUNNELS, "vxlan:192.0.2.1")]).unwrap_err();
        assert!(e.to_string().contains("nothing with mode=overlay"), "{e}");
        let e = parse(&[
            (BRIDGE_EXISTING, "true"),
            (BRIDGE_NAME, "br0"),
            (BRIDGE_TUNNELS, "vxlan:192.0.2.1"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("invalid ovs.bridge.tunnels \"vxlan:192.0.2.1\": expected nothing with ovs.bridge.existing=true"),
            "{e}"
        );
    }
}
