//! The driver's model of networks and endpoints: what it keeps in memory and in
//! OVSDB, and the pure conversions from Docker's requests (IPAM, addresses, MACs, ids)
//! and to OVS specs.

use super::*;

/// What the network's IPAM gave (kept in OVSDB so a restart recovers it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ipam {
    /// IPv4 subnet (`"a.b.c.d/n"` in the record).
    #[serde(
        serialize_with = "text::or_null",
        deserialize_with = "text::read_optional"
    )]
    pub subnet: Option<Ipv4Net>,
    /// IPv4 gateway, without prefix length.
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 subnet (`--ipv6`; not on overlay networks); records older versions wrote have none.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "text::optional"
    )]
    pub subnet6: Option<Ipv6Cidr>,
    /// IPv6 gateway, without prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
}

/// The OVS datapath of a network's bridge (`Bridge.datapath_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    /// The kernel module (OVS's default, also when `datapath_type` is empty).
    System,
    /// The userspace datapath.
    Netdev,
}

impl Datapath {
    /// The datapath a bridge's `datapath_type` names.
    pub fn of(datapath_type: &str) -> Self {
        match datapath_type {
            "netdev" => Datapath::Netdev,
            _ => Datapath::System,
        }
    }

    /// As OVSDB writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Datapath::System => "system",
            Datapath::Netdev => "netdev",
        }
    }
}

impl std::fmt::Display for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub(super) struct Network {
    pub(super) id: String,
    pub(super) bridge: String,
    pub(super) datapath: Datapath,
    /// What the network is (`options.mode`), with its settings.
    pub(super) options: NetworkOptions,
    pub(super) ipam: Ipam,
    pub(super) internal: bool,
    pub(super) endpoints: HashMap<String, Endpoint>,
    /// Overlay networks: this host's OVN chassis as recorded when the network was
    /// created (empty for the other modes; see [`Network::overlay`]).
    pub(super) chassis: String,
}

/// An overlay network's place in OVN: its logical switch and database, and this host.
#[derive(Debug, Clone)]
pub(super) struct Overlay {
    pub(super) switch: String,
    pub(super) northbound: Remote,
    pub(super) chassis: String,
}

/// How an overlay network is recorded on this host (`Open_vSwitch.external_ids`);
/// the options hold the resolved switch and northbound database.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct OverlayRecord {
    pub(super) options: BTreeMap<String, String>,
    pub(super) ipam: Ipam,
    pub(super) chassis: String,
}

impl Network {
    /// What the firewall needs for a nat or routed network (None for flat and overlay
    /// networks).
    pub(super) fn nat(&self, fast: &FastPathConfig) -> Option<NatNetwork> {
        if !self.options.mode.has_gateway() {
            return None;
        }
        Some(NatNetwork {
            id: self.id.clone(),
            bridge: self.bridge.clone(),
            subnet: self.ipam.subnet?,
            gateway: self.ipam.gateway?,
            internal: self.internal,
            routed: self.options.mode == Mode::Routed,
            masquerade_ports: (self.options.mode == Mode::NatFast)
                .then(|| fast.kernel_masquerade_ports()),
            ipv6: self
                .ipam
                .subnet6
                .zip(self.ipam.gateway6)
                .map(|(subnet, gateway)| Nat6 { subnet, gateway }),
        })
    }

    /// The `external_ids` key that marks the network's bridge as its own: the
    /// ownership marker for a bridge dovesnap made, the attachment marker for an
    /// existing one (`ovs.bridge.existing`), which nothing ever deletes a bridge for.
    pub(super) fn marker(&self) -> &'static str {
        if self.options.existing {
            EXT_ATTACHED_NETWORK_ID
        } else {
            EXT_NETWORK_ID
        }
    }

    /// Whether `bridge` carries this network's marker (in either slot).
    pub(super) fn marks(&self, bridge: &ovsdb::BridgeInfo) -> bool {
        self.slot_in(bridge).is_some()
    }

    /// The slot of the network's record on `bridge` ([`record_key`]): `Some(false)`
    /// plain, `Some(true)` keyed, `None` when the bridge does not carry it.
    pub(super) fn slot_in(&self, bridge: &ovsdb::BridgeInfo) -> Option<bool> {
        [false, true].into_iter().find(|&keyed| {
            let key = record_key(self.marker(), &self.id, keyed);
            bridge.external_ids.get(&key) == Some(&self.id)
        })
    }

    /// An overlay network's logical switch, database and chassis; `None` for the
    /// other modes. The mode says what the network is: the switch and database are its
    /// options (resolved at creation, required of a recovered record).
    pub(super) fn overlay(&self) -> Option<Overlay> {
        if self.options.mode != Mode::Overlay {
            return None;
        }
        Some(Overlay {
            switch: self.options.ovn_switch.clone()?,
            northbound: self.options.ovn_nb.clone()?,
            chassis: self.chassis.clone(),
        })
    }

    /// The subnet as OVN's switches take it (`""` when the network has none).
    pub(super) fn subnet_text(&self) -> String {
        self.ipam.subnet.map(|s| s.to_string()).unwrap_or_default()
    }

    /// The gateway a container gets a default route through (Join, a repaired veth).
    /// On overlay networks only with `ovs.ovn.gateway` (the OVN router holds it);
    /// without, the switch has no gateway and Docker's `docker_gwbridge` is the way out.
    pub(super) fn container_gateway(&self) -> Option<Ipv4Addr> {
        match self.options.mode {
            Mode::Overlay => self.options.ovn_gateway.as_ref().and(self.ipam.gateway),
            _ => self.ipam.gateway,
        }
    }
}

/// An endpoint as stored in its port's `external_ids`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    /// IPv4 address with prefix length, as Docker gave it (`""` in the record when
    /// Docker gave none).
    #[serde(
        serialize_with = "text::or_empty",
        deserialize_with = "text::read_optional"
    )]
    pub address: Option<Ipv4Cidr>,
    /// IPv6 address with prefix length (`--ipv6` flat networks); absent from records
    /// of endpoints without one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "text::optional"
    )]
    pub address6: Option<Ipv6Cidr>,
    #[serde(serialize_with = "text::write", deserialize_with = "text::read")]
    pub mac: Mac,
    /// Host end of the veth: the OVS port.
    pub host_ifname: String,
    /// Container end of the veth, before Docker moves and renames it.
    pub container_ifname: String,
    /// Ports published for this endpoint (nat mode), host ports as chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublishedPort>,
    /// `ovs.port.vlan`: the port's own access VLAN, instead of the network's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The container's network namespace (Docker's sandbox key), from Join until
    /// Leave: where the reconciler puts a re-created container end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// The OVSDB bridge of `net`: its options and addressing go into `external_ids`, so a
/// restarted plugin (and the reconciler) can make it again.
pub(super) fn bridge_spec(net: &Network) -> BridgeSpec {
    BridgeSpec {
        name: net.bridge.clone(),
        datapath_type: net.datapath.as_str().to_string(),
        external_ids: network_record(net, false),
        mtu: net.options.mtu,
        controllers: net.options.controllers.clone(),
        datapath_id: net.options.dpid.clone(),
        // A VLAN network reaches its uplinks through their trunk bridges.
        uplinks: (net.options.add_ports.iter().enumerate())
            .map(|(i, u)| match trunk::trunked(&net.options) {
                true => trunk::network_patch(net, i, u),
                false => UplinkSpec {
                    name: u.name.clone(),
                    ofport: u.ofport,
                    ..UplinkSpec::default()
                },
            })
            .collect(),
        tunnels: super::tunnels::tunnel_specs(net),
    }
}

/// Between a record key and the network id of its slot (`KEY@ID`).
pub const RECORD_SLOT_SEPARATOR: char = '@';

/// Where `key` of network `id`'s record goes in its bridge's `external_ids`.
///
/// A bridge holds one record per network on it, each in its own *slot*: the first
/// network on a bridge writes the plain keys (`dovesnap-network-id`, `dovesnap-ipam`,
/// `dovesnap-opt-...`, as every version wrote them, so a bridge with one network looks
/// as it always did); a network joining a bridge whose plain slot is taken (a shared
/// bridge) writes the same keys followed by `@<network id>`. Recovery reads every slot
/// alike ([`records::networks_of`]).
pub(super) fn record_key(key: &str, id: &str, keyed: bool) -> String {
    if keyed {
        format!("{key}{RECORD_SLOT_SEPARATOR}{id}")
    } else {
        key.to_string()
    }
}

/// Whether the plain slot of `bridge`'s records is taken, so a network joining it
/// writes a keyed one (`None`, no bridge yet: plain).
pub(super) fn plain_slot_taken(bridge: Option<&ovsdb::BridgeInfo>) -> bool {
    bridge.is_some_and(|b| {
        [EXT_NETWORK_ID, EXT_ATTACHED_NETWORK_ID]
            .iter()
            .any(|k| b.external_ids.contains_key(*k))
    })
}

/// The network's record in its bridge's `external_ids`, in the slot `keyed` says
/// ([`record_key`]): its marker ([`Network::marker`]), addressing and options.
pub(super) fn network_record(net: &Network, keyed: bool) -> BTreeMap<String, String> {
    let key = |k: &str| record_key(k, &net.id, keyed);
    let mut external_ids = BTreeMap::new();
    external_ids.insert(key(net.marker()), net.id.clone());
    external_ids.insert(
        key(EXT_NETWORK_IPAM),
        serde_json::to_string(&net.ipam).expect("Ipam serializes"),
    );
    for (k, v) in net.options.to_string_map() {
        external_ids.insert(key(&format!("{EXT_OPTION_PREFIX}{k}")), v);
    }
    if net.internal {
        external_ids.insert(key(EXT_NETWORK_INTERNAL), "true".to_string());
    }
    external_ids
}

/// The OVSDB port of endpoint `ep` of `net`, with the endpoint's record.
pub(super) fn port_spec(net: &Network, ep: &Endpoint) -> PortSpec {
    let mut external_ids = BTreeMap::new();
    external_ids.insert(EXT_ENDPOINT_ID.to_string(), ep.id.clone());
    external_ids.insert(EXT_NETWORK_ID.to_string(), net.id.clone());
    external_ids.insert(
        EXT_ENDPOINT.to_string(),
        serde_json::to_string(ep).expect("Endpoint serializes"),
    );
    PortSpec {
        name: ep.host_ifname.clone(),
        tag: ep.vlan.or(net.options.vlan),
        external_ids,
        mtu: net.options.mtu,
        ofport: None,
        // Overlay: ovn-controller binds the interface to the endpoint's logical port.
        interface_external_ids: match net.options.mode {
            Mode::Overlay => BTreeMap::from([("iface-id".to_string(), ovn::port_name(&ep.id))]),
            _ => BTreeMap::new(),
        },
        ..PortSpec::default()
    }
}

pub(super) fn unknown_network(id: &str) -> DriverError {
    DriverError::UnknownNetwork(id.to_string())
}

pub(super) fn unknown_endpoint(nid: &str, eid: &str) -> DriverError {
    DriverError::UnknownEndpoint {
        network: nid.to_string(),
        endpoint: eid.to_string(),
    }
}

/// Docker ids are 64 hex digits; anything else is refused before it reaches a name.
pub(super) fn valid_id<'a>(what: &'static str, id: &'a str) -> DriverResult<&'a str> {
    records::check_id(what, id)?;
    Ok(id)
}

/// The network and endpoint ids of a request about an endpoint, checked.
pub(super) fn endpoint_ids<'a>(nid: &'a str, eid: &'a str) -> DriverResult<(&'a str, &'a str)> {
    Ok((valid_id("network", nid)?, valid_id("endpoint", eid)?))
}

/// The network's IPv4 addressing from Docker's IPAM data (first pool).
pub(super) fn ipam_from(pools: &[api::IpamData]) -> DriverResult<Ipam> {
    let Some(pool) = pools.first() else {
        return Ok(Ipam::default());
    };
    if pools.len() > 1 {
        return Err(DriverError::SeveralPools {
            pools: pools.iter().map(|p| p.pool.clone()).collect(),
        });
    }
    let subnet: Ipv4Net =
        (pool.pool.parse()).map_err(|_| DriverError::BadPool(pool.pool.clone()))?;
    let gateway = if pool.gateway.is_empty() {
        None
    } else {
        Some(
            (pool.gateway.parse::<Ipv4Cidr>().map(|c| c.addr).ok())
                .or_else(|| pool.gateway.parse().ok())
                .ok_or_else(|| DriverError::BadGateway(pool.gateway.clone()))?,
        )
    };
    Ok(Ipam {
        subnet: Some(subnet),
        gateway,
        ..Ipam::default()
    })
}

/// Adds Docker's IPv6 pool (`--ipv6`), if any, to `ipam`: refused on overlay networks.
/// A mode with a gateway (nat, nat-fast, routed) needs the gateway, inside a subnet of
/// /48 to /126 ([`Nat6::problem`]).
pub(super) fn add_ipv6(ipam: &mut Ipam, mode: Mode, pools: &[api::IpamData]) -> DriverResult<()> {
    let Some(pool) = pools.first() else {
        return Ok(());
    };
    if mode == Mode::Overlay {
        return Err(DriverError::Ipv6 {
            mode,
            pool: pool.pool.clone(),
        });
    }
    if pools.len() > 1 {
        return Err(DriverError::SeveralPools6 {
            pools: pools.iter().map(|p| p.pool.clone()).collect(),
        });
    }
    let subnet = (pool.pool.parse::<Ipv6Cidr>())
        .map_err(|_| DriverError::BadPool6(pool.pool.clone()))?
        .network();
    let gateway = match pool.gateway.as_str() {
        "" => None,
        g => Some(
            (g.parse::<Ipv6Cidr>().map(|c| c.addr).ok())
                .or_else(|| g.parse().ok())
                .ok_or_else(|| DriverError::BadGateway6(g.to_string()))?,
        ),
    };
    if mode.has_gateway() {
        let gateway = gateway.ok_or_else(|| DriverError::NoGateway6 {
            mode,
            pool: pool.pool.clone(),
        })?;
        if let Some(reason) = (Nat6 { subnet, gateway }).problem() {
            return Err(DriverError::BadIpv6 { mode, reason });
        }
    }
    ipam.subnet6 = Some(subnet);
    ipam.gateway6 = gateway;
    Ok(())
}

/// A MAC for an endpoint Docker gave none: `02:42` and the IPv4 address, as Docker's
/// bridge driver does, or locally administered bytes from the endpoint id.
pub(super) fn generate_mac(address: Option<Ipv4Cidr>, endpoint_id: &str) -> Mac {
    if let Some(c) = address {
        let o = c.addr.octets();
        return Mac([0x02, 0x42, o[0], o[1], o[2], o[3]]);
    }
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    for (i, pair) in endpoint_id.as_bytes().chunks(2).skip(1).take(5).enumerate() {
        let s = std::str::from_utf8(pair).unwrap_or("0");
        mac[i + 1] = u8::from_str_radix(s, 16).unwrap_or(0);
    }
    Mac(mac)
}

/// Record fields kept as text (as older versions wrote them) but typed in memory.
pub(super) mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    /// A value as its text.
    pub fn write<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// `None` as `null`.
    pub fn or_null<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(ToString::to_string).serialize(s)
    }

    /// `None` as `""`.
    pub fn or_empty<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref()
            .map_or_else(String::new, ToString::to_string)
            .serialize(s)
    }

    fn parse<'de, T: FromStr, D: Deserializer<'de>>(s: &str) -> Result<T, D::Error> {
        s.parse()
            .map_err(|_| D::Error::custom(format!("{s:?} does not read")))
    }

    /// A value from its text.
    pub fn read<'de, T: FromStr, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        parse::<T, D>(&String::deserialize(d)?)
    }

    /// An optional value as its text, `None` as `null` (`#[serde(with = ...)]`).
    pub mod optional {
        pub use super::or_null as serialize;
        pub use super::read_optional as deserialize;
    }

    /// `null` and `""` read as `None`.
    pub fn read_optional<'de, T: FromStr, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Option::<String>::deserialize(d)?
            .filter(|s| !s.is_empty())
            .map(|s| parse::<T, D>(&s))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(valid_id("network", &"a".repeat(64)).is_ok());
        for bad in [
            "",
            "short",
            "../../etc/passwd",
            "abc def ghi jkl",
            &"a".repeat(129),
        ] {
            let err = valid_id("network", bad).unwrap_err();
            assert!(err.to_string().contains("invalid network id"), "{err}");
        }
    }

    #[test]
    fn ipam_refuses_several_pools() {
        let pool = |p: &str| api::IpamData {
            pool: p.into(),
            ..Default::default()
        };
        let e = ipam_from(&[pool("10.0.0.0/24"), pool("10.0.1.0/24")]).unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/24, 10.0.1.0/24"), "{e}");
    }

    #[test]
    fn ipam_takes_first_pool() {
        let ipam = ipam_from(&[api::IpamData {
            pool: "10.0.0.0/24".into(),
            gateway: "10.0.0.1/24".into(),
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(ipam.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(ipam.subnet, Some("10.0.0.0/24".parse().unwrap()));
        assert_eq!(ipam_from(&[]).unwrap(), Ipam::default());
        assert!(ipam_from(&[api::IpamData {
            pool: "nonsense".into(),
            ..Default::default()
        }])
        .is_err());
    }

    #[test]
    fn macs_follow_docker_convention() {
        let addr = "10.1.2.3/24".parse().ok();
        assert_eq!(generate_mac(addr, "x"), Mac([0x02, 0x42, 10, 1, 2, 3]));
        let m = generate_mac(None, "00112233445566778899");
        assert_eq!(m, Mac([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]));
    }
}
