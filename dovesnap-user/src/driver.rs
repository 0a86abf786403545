//! The network driver: Docker's calls turned into OVS bridges, ports and veth pairs.
//!
//! State lives in OVSDB: each network's bridge carries its Docker network id and its
//! options in `external_ids`, each endpoint's port carries the endpoint id, addresses
//! and interface names. The in-memory table is a cache of that, rebuilt by
//! [`Driver::recover`] at start, so a restarted plugin picks up where it was and never
//! touches a bridge or port it does not own.
//!
//! Lifecycle (flat mode):
//! - CreateNetwork: one OVSDB transaction makes the bridge, its internal port and any
//!   `ovs.bridge.add_ports` uplinks.
//! - CreateEndpoint: a veth pair; the host end becomes a port of the bridge (with the
//!   access VLAN tag), the container end waits for Join.
//! - Join: hands the container end to Docker (`SrcName`, `DstPrefix`), with the gateway.
//! - Leave: nothing to undo at L2 (Docker moves the interface back).
//! - DeleteEndpoint: port and veth removed. DeleteNetwork: bridge removed.
//!
//! Overlay mode has no bridge of its own: the network is an OVN logical switch
//! (`crate::ovn`), recorded on this host in `Open_vSwitch.external_ids`
//! (`dovesnap-overlay-<network id>`); each endpoint is a logical switch port, created
//! before its veth, whose host end joins the integration bridge with
//! `external_ids:iface-id` naming that port.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::api::{self, ApiError, ApiResult, NetworkDriver};
use crate::control::{EndpointStatus, NetworkStatus, Status, StatusSource};
use crate::fastpath::{self, EndpointSpec, FastPath, FastPathConfig, FastPathError};
use crate::firewall::hostrules;
use crate::firewall::{
    enable_ip_forward, parse_port_map, EndpointPorts, ExpectedNetwork, Firewall, FirewallError,
    Ipv4Net, NatNetwork, Proto, PublishedPort, PORT_MAP_OPTION,
};
use crate::netlink::{disable_tx_checksum, enable_gro, format_mac, link_mac, parse_mac, Netlink};
use crate::options::{Mode, NetworkOptions};
use crate::ovn::{self, Chassis, Northbound, OvnError};
use crate::ovsdb::{self, BridgeSpec, Ovsdb, PortSpec, Remote, UplinkSpec};

mod reconcile;
pub mod records;

/// `external_ids` key on bridges: the Docker network id (ownership marker).
pub const EXT_NETWORK_ID: &str = "dovesnap-network-id";
/// `external_ids` key on bridges: the network's addressing as JSON.
pub const EXT_NETWORK_IPAM: &str = "dovesnap-ipam";
/// `external_ids` key on bridges: `true` for `docker network create --internal`.
pub const EXT_NETWORK_INTERNAL: &str = "dovesnap-internal";
/// Docker's network option for `--internal`.
pub const DOCKER_INTERNAL_OPTION: &str = "com.docker.network.internal";
/// `external_ids` key prefix on bridges: one entry per network option.
pub const EXT_OPTION_PREFIX: &str = "dovesnap-opt-";
/// `external_ids` key on ports: the Docker endpoint id (ownership marker).
pub const EXT_ENDPOINT_ID: &str = "dovesnap-endpoint-id";
/// `external_ids` key on ports: the endpoint's addresses and names as JSON.
pub const EXT_ENDPOINT: &str = "dovesnap-endpoint";

/// `Open_vSwitch.external_ids` key prefix: an overlay network on this host, as JSON.
pub const EXT_OVERLAY_PREFIX: &str = "dovesnap-overlay-";

/// Prefix of the host end of an endpoint's veth (the OVS port).
pub const HOST_VETH_PREFIX: &str = "ovsv";
/// Prefix of the container end of an endpoint's veth, until Docker renames it.
pub const CONTAINER_VETH_PREFIX: &str = "ovsc";
/// Prefix of bridges whose name dovesnap chose.
pub const BRIDGE_PREFIX: &str = "ovsbr-";

/// What the network's IPAM gave (kept in OVSDB so a restart recovers it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ipam {
    /// IPv4 subnet in CIDR form.
    pub subnet: Option<String>,
    /// IPv4 gateway, without prefix length.
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone)]
struct Network {
    id: String,
    bridge: String,
    datapath_type: String,
    options: NetworkOptions,
    ipam: Ipam,
    internal: bool,
    endpoints: HashMap<String, Endpoint>,
    /// Overlay networks: the logical switch and this host's chassis.
    overlay: Option<Overlay>,
}

#[derive(Debug, Clone)]
struct Overlay {
    switch: String,
    northbound: Remote,
    chassis: String,
}

/// How an overlay network is recorded on this host (`Open_vSwitch.external_ids`);
/// the options hold the resolved switch and northbound database.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OverlayRecord {
    options: BTreeMap<String, String>,
    ipam: Ipam,
    chassis: String,
}

impl Network {
    /// What the firewall needs for a nat network (None for flat networks).
    fn nat(&self, fast: &FastPathConfig) -> Option<NatNetwork> {
        if !self.options.mode.is_nat() {
            return None;
        }
        let subnet: Ipv4Net = self.ipam.subnet.as_deref()?.parse().ok()?;
        Some(NatNetwork {
            id: self.id.clone(),
            bridge: self.bridge.clone(),
            subnet,
            gateway: self.ipam.gateway?,
            internal: self.internal,
            masquerade_ports: (self.options.mode == Mode::NatFast)
                .then(|| fast.kernel_masquerade_ports()),
        })
    }

    /// The gateway a container gets a default route through (Join, a repaired veth).
    /// None on overlay networks: internal in this version, the switch has no gateway.
    fn container_gateway(&self) -> Option<Ipv4Addr> {
        match self.overlay {
            Some(_) => None,
            None => self.ipam.gateway,
        }
    }
}

/// An endpoint as stored in its port's `external_ids`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    /// IPv4 address with prefix length, as Docker gave it (may be empty).
    pub address: String,
    pub mac: String,
    /// Host end of the veth: the OVS port.
    pub host_ifname: String,
    /// Container end of the veth, before Docker moves and renames it.
    pub container_ifname: String,
    /// Ports published for this endpoint (nat mode), host ports as chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublishedPort>,
    /// The container's network namespace (Docker's sandbox key), from Join until
    /// Leave: where the reconciler puts a re-created container end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// The driver; all Docker calls go through one lock, so they apply in order.
pub struct Driver {
    ovs: Ovsdb,
    netlink: Netlink,
    firewall: Box<dyn Firewall>,
    networks: Mutex<HashMap<String, Network>>,
    /// The daemon's `--ovn-nb`: the default northbound database of overlay networks.
    ovn_nb: Option<Remote>,
    /// One northbound connection per database, made on first use.
    northbound: std::sync::Mutex<HashMap<Remote, std::sync::Arc<Northbound>>>,
    /// The nat-fast data path, started with the first nat-fast endpoint. Only touched
    /// with `networks` held.
    fastpath: std::sync::Mutex<Option<FastPath>>,
    /// Given to the fast path when it starts; the nft rules' masquerade range too.
    fastpath_config: FastPathConfig,
    /// What the reconciler saw and repaired.
    reconciler: reconcile::State,
    /// The records recovery could not trust (and left alone).
    bad_records: std::sync::Mutex<Vec<crate::control::BadRecord>>,
}

/// Runs a (blocking, a few milliseconds) firewall call without stalling the runtime's
/// other tasks.
fn fw<T>(f: impl FnOnce() -> Result<T, FirewallError>) -> ApiResult<T> {
    tokio::task::block_in_place(f).map_err(|e| ApiError::new(e.to_string()))
}

impl Driver {
    pub fn new(ovs: Ovsdb, netlink: Netlink, firewall: Box<dyn Firewall>) -> Self {
        Driver {
            ovs,
            netlink,
            firewall,
            networks: Mutex::new(HashMap::new()),
            ovn_nb: None,
            northbound: std::sync::Mutex::new(HashMap::new()),
            fastpath: std::sync::Mutex::new(None),
            fastpath_config: FastPathConfig::default(),
            reconciler: reconcile::State::default(),
            bad_records: std::sync::Mutex::default(),
        }
    }

    /// The daemon's nat-fast settings (default: [`FastPathConfig::default`]).
    pub fn with_fastpath_config(mut self, config: FastPathConfig) -> Self {
        self.fastpath_config = config;
        self
    }

    /// Sets the northbound database overlay networks use unless `ovs.ovn.nb` says
    /// otherwise (the daemon's `--ovn-nb`).
    pub fn with_ovn_northbound(mut self, remote: Option<Remote>) -> Self {
        self.ovn_nb = remote;
        self
    }

    fn northbound(&self, remote: &Remote) -> std::sync::Arc<Northbound> {
        let mut all = self.northbound.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(remote.clone())
            .or_insert_with(|| std::sync::Arc::new(Northbound::new(remote.clone())))
            .clone()
    }

    /// Runs `f` on the fast path, starting it first if needed (blocking: it waits for
    /// the data-plane thread).
    fn with_fastpath<T>(
        &self,
        f: impl FnOnce(&mut FastPath) -> Result<T, FastPathError>,
    ) -> Result<T, FastPathError> {
        tokio::task::block_in_place(|| {
            let mut guard = self.fastpath.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                *guard = Some(FastPath::start(self.fastpath_config.clone())?);
            }
            f(guard.as_mut().expect("just started"))
        })
    }

    /// Runs `f` on the fast path if it is running.
    fn if_fastpath(&self, f: impl FnOnce(&mut FastPath)) {
        tokio::task::block_in_place(|| {
            let mut guard = self.fastpath.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(fp) = guard.as_mut() {
                f(fp);
            }
        })
    }

    /// The uplink of a nat-fast network as it is now (address, MAC, queues).
    async fn uplink_spec(&self, net: &Network) -> ApiResult<fastpath::UplinkSpec> {
        let name =
            net.options.nat_uplink.clone().ok_or_else(|| {
                ApiError::new(format!("nat-fast network {} has no uplink", net.id))
            })?;
        let link = self
            .netlink
            .get(&name)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| {
                ApiError::new(format!(
                    "the nat-fast uplink {name} of network {} is gone",
                    net.id
                ))
            })?;
        let ifindex = link.header.index;
        let addr = *self
            .netlink
            .ipv4_addresses(ifindex)
            .await
            .map_err(nl_err)?
            .first()
            .ok_or_else(|| {
                ApiError::new(format!(
                    "the nat-fast uplink {name} has no IPv4 address to translate to"
                ))
            })?;
        let mac = link_mac(&link).ok_or_else(|| {
            ApiError::new(format!("the nat-fast uplink {name} has no MAC address"))
        })?;
        Ok(fastpath::UplinkSpec {
            rx_queues: fastpath::rx_queues(&name),
            name,
            ifindex,
            addr,
            mac,
        })
    }

    /// What the fast path needs of an endpoint; `None` when it has no address.
    async fn endpoint_spec(&self, net: &Network, ep: &Endpoint) -> ApiResult<Option<EndpointSpec>> {
        let Some((ip, _)) = parse_cidr(&ep.address) else {
            return Ok(None);
        };
        let nat = net
            .nat(&self.fastpath_config)
            .ok_or_else(|| ApiError::new(format!("network {} has no subnet", net.id)))?;
        let gone = |what: &str| ApiError::new(format!("{what} of endpoint {} is gone", ep.id));
        let host_ifindex = self
            .netlink
            .index(&ep.host_ifname)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| gone("the host end"))?;
        let bridge = self
            .netlink
            .get(&net.bridge)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| gone("the bridge"))?;
        let bridge_ifindex = bridge.header.index;
        let gateway_mac = link_mac(&bridge).ok_or_else(|| gone("the bridge MAC"))?;
        let mac = parse_mac(&ep.mac)
            .ok_or_else(|| ApiError::new(format!("endpoint {} has a bad MAC", ep.id)))?;
        Ok(Some(EndpointSpec {
            host_ifname: ep.host_ifname.clone(),
            host_ifindex,
            ip,
            mac,
            gateway_mac,
            bridge_ifindex,
            subnet: nat.subnet,
            offload: net.options.offload(),
            adopt: false,
        }))
    }

    /// Sets up a new veth's container end, still in the host namespace, for the
    /// network's data path. The userspace datapath forwards partially checksummed frames
    /// as they are, and the nat-fast translator sees them as the container wrote them:
    /// transmit checksum offload off. Offloaded nat-fast sessions reach the container by
    /// an XDP redirect to the veth, which needs the container end's NAPI queues (GRO on
    /// gives them); the kernel marks the host end as a redirect target only when GRO goes
    /// on while the container end is up: up, GRO, down again before Docker moves it (the
    /// mark and the setting survive the move).
    async fn prepare_container_end(
        &self,
        net: &Network,
        name: &str,
    ) -> Result<(), crate::netlink::NetlinkError> {
        if net.datapath_type == "netdev" || net.options.mode == Mode::NatFast {
            disable_tx_checksum(name)?;
        }
        if net.options.mode == Mode::NatFast && net.options.offload() {
            self.netlink.set_up(name).await?;
            enable_gro(name)?;
            self.netlink.set_down(name).await?;
        }
        Ok(())
    }

    /// Puts a joined nat-fast endpoint (and its published ports) on the fast path.
    /// Fail-open: on error the endpoint stays on the kernel nat path, which is
    /// logged and visible in `dovesnap status`.
    /// Puts a nat-fast endpoint on the fast path; `adopt` takes over the flows the
    /// kernel's conntrack carries for it (recovery: the container lived on while the
    /// daemon was away).
    async fn fast_join(&self, net: &Network, ep: &Endpoint, adopt: bool) {
        if net.options.mode != Mode::NatFast || net.internal {
            return;
        }
        let specs = async {
            let Some(spec) = self.endpoint_spec(net, ep).await? else {
                return Ok(None);
            };
            Ok::<_, ApiError>(Some((spec, self.uplink_spec(net).await?)))
        };
        let (spec, uplink) = match specs.await {
            Ok(Some((spec, uplink))) => (EndpointSpec { adopt, ..spec }, uplink),
            Ok(None) => return,
            Err(e) => {
                warn!(endpoint = %ep.id, "staying on the kernel nat path: {}", e.0);
                return;
            }
        };
        let subnet = net.nat(&self.fastpath_config).map(|n| n.subnet);
        let r = self.with_fastpath(|fp| {
            // The host's forward rules first: the container's first frame must not
            // pass them by.
            let mut subnets = fp.host_subnets();
            subnets.extend(subnet.filter(|s| !subnets.contains(s)));
            let rules = hostrules::read_or_all(&subnets);
            fp.set_host_rules(subnets, rules)?;
            fp.add_endpoint(&spec, &uplink)?;
            for p in fast_ports(&ep.published, uplink.addr) {
                fp.publish(&uplink.name, p.0, p.1, spec.ip, p.2)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            warn!(endpoint = %ep.id, "staying on the kernel nat path: {e}");
            self.if_fastpath(|fp| {
                fp.remove_endpoint(&ep.host_ifname);
                fp.set_kernel_path(&ep.host_ifname, e.to_string());
            });
        }
    }

    /// Takes an endpoint and its published ports off the fast path (idempotent).
    fn fast_leave(&self, net: &Network, ep: &Endpoint) {
        if net.options.mode != Mode::NatFast {
            return;
        }
        let uplink = net.options.nat_uplink.clone().unwrap_or_default();
        self.if_fastpath(|fp| {
            for p in &ep.published {
                fp.unpublish(&uplink, fast_proto(p.proto), p.host_port);
            }
            fp.remove_endpoint(&ep.host_ifname);
        });
    }

    /// Rebuilds the network table from the bridges and ports dovesnap owns in OVSDB.
    /// Returns how many networks and endpoints it found.
    pub async fn recover(&self) -> Result<(usize, usize), ovsdb::OvsdbError> {
        let bridges = self.ovs.list_bridges().await?;
        let mut networks = self.networks.lock().await;
        let mut endpoints = 0;
        let mut bad = Vec::new();
        // Records that cannot be trusted are left alone: their network's rules (or the
        // endpoint's published ports) are kept as they are, not reconciled away.
        let mut untouched_networks = Vec::new();
        let mut untouched_endpoints: HashMap<String, Vec<String>> = HashMap::new();
        for br in &bridges {
            let (net, bad_endpoints) = match records::network_of(br) {
                None => continue,
                Some(Ok(read)) => read,
                Some(Err(b)) => {
                    untouched_networks.push(b.id.clone());
                    bad.push(b);
                    continue;
                }
            };
            untouched_endpoints
                .entry(net.id.clone())
                .or_default()
                .extend(bad_endpoints.iter().map(|b| b.id.clone()));
            bad.extend(bad_endpoints);
            endpoints += net.endpoints.len();
            info!(network = %net.id, bridge = %br.name, endpoints = net.endpoints.len(), "recovered network");
            networks.insert(net.id.clone(), net);
        }
        for net in self.recover_overlays(&bridges, &mut bad).await? {
            endpoints += net.endpoints.len();
            networks.insert(net.id.clone(), net);
        }
        for b in &bad {
            warn!(record = %b.record, id = %b.id,
                  "leaving alone a record that cannot be trusted: {}", b.reason);
        }
        *self.bad_records.lock().unwrap_or_else(|e| e.into_inner()) = bad;
        // Netfilter follows what OVSDB says: leftovers of a crash go, missing rules
        // (published ports included) come back.
        let expected: Vec<ExpectedNetwork> = networks
            .values()
            .filter_map(|n| {
                let untouched = untouched_endpoints.get(&n.id).into_iter().flatten();
                Some(ExpectedNetwork {
                    network: n.nat(&self.fastpath_config)?,
                    endpoints: n
                        .endpoints
                        .values()
                        .filter(|e| !e.published.is_empty())
                        .filter_map(|e| {
                            Some(EndpointPorts {
                                endpoint_id: e.id.clone(),
                                container_ip: parse_cidr(&e.address)?.0,
                                ports: e.published.clone(),
                            })
                        })
                        // Listed without ports: whatever rules they have are kept.
                        .chain(untouched.map(|id| EndpointPorts {
                            endpoint_id: id.clone(),
                            container_ip: Ipv4Addr::UNSPECIFIED,
                            ports: Vec::new(),
                        }))
                        .collect(),
                })
            })
            .collect();
        if !expected.is_empty() {
            if let Err(e) = enable_ip_forward() {
                warn!("{e}");
            }
        }
        if let Err(e) = tokio::task::block_in_place(|| {
            self.firewall
                .reconcile_keeping(&expected, &untouched_networks)
        }) {
            warn!("could not reconcile the nat rules with OVSDB: {e}");
        }
        // Joined nat-fast endpoints (their container end has left the host namespace)
        // go back on the fast path.
        for net in networks.values() {
            if net.options.mode != Mode::NatFast {
                continue;
            }
            for ep in net.endpoints.values() {
                let joined = self.netlink.exists(&ep.host_ifname).await.unwrap_or(false)
                    && !self
                        .netlink
                        .exists(&ep.container_ifname)
                        .await
                        .unwrap_or(true);
                if joined {
                    self.fast_join(net, ep, true).await;
                }
            }
        }
        Ok((networks.len(), endpoints))
    }

    /// Overlay networks recorded in `Open_vSwitch.external_ids`, with their endpoints
    /// from the integration bridge's ports. Each is then reconciled with OVN (a failure
    /// there is logged: the northbound database may be down for now).
    async fn recover_overlays(
        &self,
        bridges: &[ovsdb::BridgeInfo],
        bad: &mut Vec<crate::control::BadRecord>,
    ) -> Result<Vec<Network>, ovsdb::OvsdbError> {
        let ids = self.ovs.switch_external_ids().await?;
        let mut found = Vec::new();
        for (key, json) in &ids {
            let records::OverlayRead {
                id,
                record,
                options,
                switch,
                northbound,
            } = match records::overlay_of(key, json) {
                None => continue,
                Some(Ok(read)) => read,
                Some(Err(b)) => {
                    bad.push(b);
                    continue;
                }
            };
            let id = id.as_str();
            let bridge = integration_bridge(&options);
            let br = bridges.iter().find(|b| b.name == bridge);
            let mut untrusted_ids = Vec::new();
            let net = Network {
                id: id.to_string(),
                datapath_type: br.map(|b| b.datapath_type.clone()).unwrap_or_default(),
                endpoints: match br {
                    Some(b) => {
                        let (good, untrusted) = records::endpoints_of(b, Some(id));
                        untrusted_ids.extend(untrusted.iter().map(|b| b.id.clone()));
                        bad.extend(untrusted);
                        good
                    }
                    None => HashMap::new(),
                },
                bridge,
                options,
                ipam: record.ipam,
                internal: false,
                overlay: Some(Overlay {
                    switch,
                    northbound,
                    chassis: record.chassis,
                }),
            };
            if br.is_none() {
                // Without the bridge this host's endpoints are unknown: reconciling
                // would take every port of this chassis for stale.
                warn!(network = %id, bridge = %net.bridge,
                      "integration bridge missing: not reconciling with OVN");
                found.push(net);
                continue;
            }
            match self.reconcile_overlay(&net, &untrusted_ids).await {
                Ok(removed) => {
                    info!(network = %id, switch = ?net.overlay.as_ref().map(|o| &o.switch),
                          endpoints = net.endpoints.len(), stale_ports_removed = removed,
                          "recovered overlay network")
                }
                Err(e) => warn!(network = %id, "could not reconcile with OVN: {e}"),
            }
            found.push(net);
        }
        Ok(found)
    }

    /// Makes OVN match this host's view of an overlay network: the host's reference on
    /// the switch (re-creating the switch if it went), no logical port of this chassis
    /// without a local endpoint (a container that went while the plugin was down), and
    /// a logical port for each local endpoint. The ports of `untrusted` endpoints (whose
    /// records cannot be trusted) are left as they are. Returns how many stale ports it
    /// removed.
    async fn reconcile_overlay(
        &self,
        net: &Network,
        untrusted: &[String],
    ) -> Result<usize, OvnError> {
        let Some(ov) = &net.overlay else {
            return Ok(0);
        };
        let nb = self.northbound(&ov.northbound);
        let subnet = net.ipam.subnet.clone().unwrap_or_default();
        nb.join_switch(&ov.switch, &subnet, &ov.chassis, &net.id)
            .await?;
        self.reap_dead_chassis(ov).await?;
        let state = nb
            .switch(&ov.switch)
            .await?
            .ok_or_else(|| OvnError::NoSwitch(ov.switch.clone()))?;
        let live: Vec<String> = net
            .endpoints
            .keys()
            .chain(untrusted)
            .map(|e| ovn::port_name(e))
            .collect();
        let stale: Vec<&str> = state
            .ports
            .iter()
            .filter(|p| {
                p.external_ids.get(ovn::northbound::EXT_CHASSIS) == Some(&ov.chassis)
                    && !live.contains(&p.name)
            })
            .map(|p| p.name.as_str())
            .collect();
        nb.remove_ports(&ov.switch, &stale).await?;
        for ep in net.endpoints.values() {
            if !state.ports.iter().any(|p| p.name == ovn::port_name(&ep.id)) {
                nb.add_port(&ov.switch, &logical_port(ov, ep)).await?;
            }
        }
        Ok(stale.len())
    }

    /// Removes from the overlay's switch the ports and references of hosts that are no
    /// longer OVN chassis (removed from the southbound database after they died).
    /// Skipped while this host itself is not registered (its view is not to be trusted
    /// then) or when the southbound database is not a TCP/unix remote we can reach.
    async fn reap_dead_chassis(&self, ov: &Overlay) -> Result<usize, OvnError> {
        let ids = self.ovs.switch_external_ids().await?;
        let Some(sb) = Chassis::from_external_ids(&ids).southbound() else {
            return Ok(0);
        };
        let live = self.northbound(&sb).chassis_names().await?;
        if !live.contains(&ov.chassis) {
            return Ok(0);
        }
        self.northbound(&ov.northbound)
            .reap_dead_chassis(&ov.switch, &live)
            .await
    }

    /// Overlay: the network's logical switch, joined (or created) in OVN, and the
    /// network recorded on this host.
    async fn create_overlay_network(
        &self,
        id: &str,
        mut options: NetworkOptions,
        ipam: Ipam,
    ) -> ApiResult<Network> {
        let subnet = ipam.subnet.clone().ok_or_else(|| {
            ApiError::new(
                "mode=overlay needs an IPv4 subnet: give --subnet, the same on every host \
                 (and each host its own --ip-range of it)",
            )
        })?;
        let chassis =
            Chassis::from_external_ids(&self.ovs.switch_external_ids().await.map_err(ovs_err)?);
        let host = chassis.name().map_err(ovn_err)?.to_string();
        let bridge = integration_bridge(&options);
        let br = self
            .ovs
            .bridge(&bridge)
            .await
            .map_err(ovs_err)?
            .ok_or_else(|| {
                ApiError::new(format!(
                    "the OVN integration bridge {bridge} does not exist: is ovn-controller \
                 running on this host? (it creates the bridge; another name: -o ovs.ovn.bridge)"
                ))
            })?;
        let northbound = options
            .ovn_nb
            .clone()
            .or_else(|| self.ovn_nb.clone())
            .or_else(|| chassis.northbound())
            .ok_or_else(|| {
                ApiError::new(
                    "mode=overlay: where is the OVN northbound database? give -o \
                     ovs.ovn.nb=tcp:HOST:6641, the daemon's --ovn-nb, or set \
                     external_ids:ovn-nb (or a tcp: external_ids:ovn-remote) in Open_vSwitch",
                )
            })?;
        // Tunnelled frames must still fit the hosts' links: geneve adds 58 bytes.
        options.mtu.get_or_insert(ovn::DEFAULT_MTU);
        let switch = ovn::switch_name(options.ovn_switch.as_deref(), &subnet);
        options.ovn_nb = Some(northbound.clone());
        options.ovn_switch = Some(switch.clone());
        let nb = self.northbound(&northbound);
        nb.join_switch(&switch, &subnet, &host, id)
            .await
            .map_err(ovn_err)?;
        let record = OverlayRecord {
            options: options.to_string_map(),
            ipam: ipam.clone(),
            chassis: host.clone(),
        };
        let json = serde_json::to_string(&record).expect("OverlayRecord serializes");
        let key = format!("{EXT_OVERLAY_PREFIX}{id}");
        if let Err(e) = self.ovs.set_switch_external_id(&key, Some(&json)).await {
            let _ = nb.leave_switch(&switch, &host).await;
            return Err(ovs_err(e));
        }
        let overlay = Overlay {
            switch,
            northbound,
            chassis: host,
        };
        if let Err(e) = self.reap_dead_chassis(&overlay).await {
            warn!(network = %id, "could not remove the ports of dead hosts: {e}");
        }
        Ok(Network {
            id: id.to_string(),
            bridge,
            datapath_type: br.datapath_type,
            options,
            ipam,
            internal: false,
            endpoints: HashMap::new(),
            overlay: Some(overlay),
        })
    }

    /// Overlay: the endpoints' OVS ports and logical ports, this host's reference on
    /// the switch (the last host deletes it) and the host's record. Returns the errors.
    async fn delete_overlay_network(&self, net: &Network, ov: &Overlay) -> Vec<String> {
        let mut errors = Vec::new();
        for ep in net.endpoints.values() {
            if let Err(e) = self.ovs.delete_port(&net.bridge, &ep.host_ifname).await {
                if !e.is_not_found() {
                    errors.push(e.to_string());
                }
            }
        }
        let nb = self.northbound(&ov.northbound);
        let ports: Vec<String> = net.endpoints.keys().map(|e| ovn::port_name(e)).collect();
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        if let Err(e) = nb.remove_ports(&ov.switch, &ports).await {
            errors.push(e.to_string());
        }
        match nb.leave_switch(&ov.switch, &ov.chassis).await {
            Ok(deleted) => {
                info!(network = %net.id, switch = %ov.switch, deleted, "left logical switch")
            }
            Err(e) => errors.push(e.to_string()),
        }
        let key = format!("{EXT_OVERLAY_PREFIX}{}", net.id);
        if let Err(e) = self.ovs.set_switch_external_id(&key, None).await {
            errors.push(e.to_string());
        }
        errors
    }

    /// On a clean stop: detaches every XDP program and closes every AF_XDP socket
    /// (nat-fast traffic falls back to the kernel path). Bridges, ports and netfilter
    /// rules stay, so running containers keep their connectivity while the plugin is
    /// down (an upgrade, say); the next start's [`Driver::recover`] reconciles them,
    /// and they go with their network.
    pub async fn shutdown(&self) -> Result<(), FirewallError> {
        let _networks = self.networks.lock().await;
        tokio::task::block_in_place(|| {
            let fp = self
                .fastpath
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(fp) = fp {
                fp.stop();
            }
        });
        Ok(())
    }

    async fn create_network_inner(&self, req: api::CreateNetworkRequest) -> ApiResult<()> {
        let id = valid_id("network", &req.network_id)?;
        let mut options = NetworkOptions::from_docker_options(req.options.as_ref())
            .map_err(|e| ApiError::new(e.to_string()))?;
        if options.mode == Mode::NatFast {
            options.nat_uplink = Some(self.check_uplink(&options).await?);
        }
        let ipam = ipam_from(req.ipv4_data.as_deref().unwrap_or_default())?;
        let internal = req
            .options
            .as_ref()
            .and_then(|o| o.get(DOCKER_INTERNAL_OPTION))
            .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"));
        if options.mode.is_nat() && (ipam.gateway.is_none() || ipam.subnet.is_none()) {
            return Err(ApiError::new(format!(
                "mode={} needs an IPv4 subnet and gateway from IPAM; give --subnet",
                options.mode
            )));
        }

        let mut networks = self.networks.lock().await;
        if networks.contains_key(id) {
            return Err(ApiError::new(format!("network {id} already exists")));
        }
        if options.mode == Mode::Overlay {
            let net = self.create_overlay_network(id, options, ipam).await?;
            info!(network = %id, switch = ?net.overlay.as_ref().map(|o| &o.switch),
                  bridge = %net.bridge, "created overlay network");
            networks.insert(id.to_string(), net);
            return Ok(());
        }
        let bridge = options
            .bridge_name
            .clone()
            .unwrap_or_else(|| format!("{BRIDGE_PREFIX}{}", &id[..8]));
        if let Some(other) = networks.values().find(|n| n.bridge == bridge) {
            return Err(ApiError::new(format!(
                "bridge {bridge} already serves network {}; choose another ovs.bridge.name",
                other.id
            )));
        }
        if self.ovs.bridge(&bridge).await.map_err(ovs_err)?.is_some() {
            return Err(ApiError::new(format!(
                "an OVS bridge named {bridge} already exists and dovesnap does not own it; \
                 choose another ovs.bridge.name"
            )));
        }
        if self.netlink.exists(&bridge).await.map_err(nl_err)? {
            return Err(ApiError::new(format!(
                "a host interface named {bridge} already exists; choose another ovs.bridge.name"
            )));
        }
        for up in &options.add_ports {
            if !self.netlink.exists(&up.name).await.map_err(nl_err)? {
                return Err(ApiError::new(format!(
                    "ovs.bridge.add_ports names {}, but the host has no such interface",
                    up.name
                )));
            }
        }
        let datapath_type = if options.userspace {
            "netdev".to_string()
        } else {
            ovsdb::default_datapath_type().to_string()
        };

        let net = Network {
            id: id.to_string(),
            bridge,
            datapath_type,
            options,
            ipam,
            internal,
            endpoints: HashMap::new(),
            overlay: None,
        };
        self.ovs
            .create_bridge(&bridge_spec(&net))
            .await
            .map_err(ovs_err)?;
        if let Err(e) = self.program_nat(&net).await {
            // Leave nothing behind: the bridge and any rule go with the failed network.
            let _ = fw(|| self.firewall.remove_network(id));
            let _ = self.ovs.delete_bridge(&net.bridge).await;
            return Err(e);
        }
        info!(network = %id, bridge = %net.bridge, datapath_type = %net.datapath_type,
              mode = %net.options.mode, internal, "created network");
        networks.insert(id.to_string(), net);
        Ok(())
    }

    /// nat-fast: the uplink named by `ovs.nat.uplink`, or the interface of the default
    /// route; it must exist, have an IPv4 address and not be one of the bridge's ports.
    async fn check_uplink(&self, options: &NetworkOptions) -> ApiResult<String> {
        let name = match &options.nat_uplink {
            Some(n) => n.clone(),
            None => {
                let ifindex = self
                    .netlink
                    .default_route_interface()
                    .await
                    .map_err(nl_err)?
                    .ok_or_else(|| {
                        ApiError::new(
                            "mode=nat-fast needs an uplink: the host has no IPv4 default route; \
                             give -o ovs.nat.uplink=IFNAME",
                        )
                    })?;
                self.netlink
                    .name_of(ifindex)
                    .await
                    .map_err(nl_err)?
                    .ok_or_else(|| ApiError::new("the default route's interface vanished"))?
            }
        };
        if options.add_ports.iter().any(|u| u.name == name) {
            return Err(ApiError::new(format!(
                "ovs.nat.uplink {name} is also in ovs.bridge.add_ports: the uplink must be a \
                 routed interface, not a bridge port"
            )));
        }
        let ifindex = self
            .netlink
            .index(&name)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| {
                ApiError::new(format!(
                    "ovs.nat.uplink names {name}, but the host has no such interface"
                ))
            })?;
        if self
            .netlink
            .ipv4_addresses(ifindex)
            .await
            .map_err(nl_err)?
            .is_empty()
        {
            return Err(ApiError::new(format!(
                "the nat-fast uplink {name} has no IPv4 address to translate to"
            )));
        }
        Ok(name)
    }

    /// nat mode: the gateway on the bridge's internal port, IPv4 forwarding, and the
    /// network's netfilter rules.
    async fn program_nat(&self, net: &Network) -> ApiResult<()> {
        let Some(nat) = net.nat(&self.fastpath_config) else {
            return Ok(());
        };
        self.netlink
            .set_address_up(&net.bridge, nat.gateway, nat.subnet.prefix())
            .await
            .map_err(nl_err)?;
        fw(enable_ip_forward)?;
        fw(|| self.firewall.add_network(&nat))
    }

    async fn delete_network_inner(&self, req: api::NetworkRequest) -> ApiResult<()> {
        let id = valid_id("network", &req.network_id)?;
        let mut networks = self.networks.lock().await;
        let Some(net) = networks.get(id) else {
            // Deleting what is not there is success: Docker may retry.
            return Ok(());
        };
        let mut errors = Vec::new();
        if net.options.mode.is_nat() {
            if let Err(e) = fw(|| self.firewall.remove_network(id)) {
                errors.push(e.to_string());
            }
        }
        for ep in net.endpoints.values() {
            if let Err(e) = self.netlink.delete(&ep.host_ifname).await {
                errors.push(e.to_string());
            }
        }
        if let Some(ov) = &net.overlay {
            errors.extend(self.delete_overlay_network(net, ov).await);
        } else {
            self.delete_bridge_of(net, id, &mut errors).await;
        }
        if !errors.is_empty() {
            return Err(ApiError::new(format!(
                "could not fully remove network {id}: {}",
                errors.join("; ")
            )));
        }
        info!(network = %id, bridge = %net.bridge, "deleted network");
        networks.remove(id);
        Ok(())
    }

    /// Deletes a network's own bridge, if it still carries the network's id.
    async fn delete_bridge_of(&self, net: &Network, id: &str, errors: &mut Vec<String>) {
        match self.ovs.bridge(&net.bridge).await {
            Ok(Some(br)) if br.external_ids.get(EXT_NETWORK_ID).map(String::as_str) == Some(id) => {
                match self.ovs.delete_bridge(&net.bridge).await {
                    Err(e) if !e.is_not_found() => errors.push(e.to_string()),
                    _ => {}
                }
            }
            Ok(_) => {
                warn!(bridge = %net.bridge, "bridge is gone or no longer ours; not deleting it")
            }
            Err(e) => errors.push(e.to_string()),
        }
    }

    async fn create_endpoint_inner(
        &self,
        req: api::CreateEndpointRequest,
    ) -> ApiResult<api::CreateEndpointResponse> {
        let nid = valid_id("network", &req.network_id)?;
        let eid = valid_id("endpoint", &req.endpoint_id)?;
        let iface = req.interface.unwrap_or_default();
        let address = iface.address.clone();
        if !address.is_empty() {
            parse_cidr(&address).ok_or_else(|| {
                ApiError::new(format!("endpoint address {address:?} is not an IPv4 CIDR"))
            })?;
        }
        let (mac, mac_from_us) = if iface.mac_address.is_empty() {
            (generate_mac(&address, eid), true)
        } else {
            let mac = parse_mac(&iface.mac_address).ok_or_else(|| {
                ApiError::new(format!(
                    "endpoint MAC address {:?} is not of the form aa:bb:cc:dd:ee:ff",
                    iface.mac_address
                ))
            })?;
            (mac, false)
        };

        let mut networks = self.networks.lock().await;
        let net = networks.get_mut(nid).ok_or_else(|| unknown_network(nid))?;
        if net.endpoints.contains_key(eid) {
            return Err(ApiError::new(format!("endpoint {eid} already exists")));
        }
        let (host_ifname, container_ifname) = records::veth_names(eid);
        let ep = Endpoint {
            id: eid.to_string(),
            address,
            mac: format_mac(mac),
            host_ifname,
            container_ifname,
            published: Vec::new(),
            sandbox: None,
        };
        // Overlay: the logical port first, so an address another host uses is refused
        // before anything is made here.
        let lsp = match &net.overlay {
            Some(ov) => {
                let spec = logical_port(ov, &ep);
                self.northbound(&ov.northbound)
                    .add_port(&ov.switch, &spec)
                    .await
                    .map_err(ovn_err)?;
                Some((ov.clone(), spec.name))
            }
            None => None,
        };
        if let Err(e) = self.plumb_endpoint(net, &ep, mac).await {
            if let Some((ov, name)) = &lsp {
                let _ = self
                    .northbound(&ov.northbound)
                    .remove_ports(&ov.switch, &[name])
                    .await;
            }
            return Err(e);
        }
        info!(network = %nid, endpoint = %eid, port = %ep.host_ifname, mac = %ep.mac, "created endpoint");
        net.endpoints.insert(eid.to_string(), ep.clone());
        Ok(api::CreateEndpointResponse {
            interface: mac_from_us.then(|| api::EndpointInterface {
                mac_address: ep.mac,
                ..Default::default()
            }),
        })
    }

    /// The veth pair of an endpoint, its host end a port of the network's bridge (for
    /// overlay, of the integration bridge, bound to the endpoint's logical port). On
    /// failure nothing is left behind.
    async fn plumb_endpoint(&self, net: &Network, ep: &Endpoint, mac: [u8; 6]) -> ApiResult<()> {
        // A leftover from a crash between veth and port creation is ours to replace.
        self.netlink.delete(&ep.host_ifname).await.map_err(nl_err)?;
        self.netlink
            .create_veth(
                &ep.host_ifname,
                &ep.container_ifname,
                Some(mac),
                net.options.mtu,
            )
            .await
            .map_err(nl_err)?;
        if let Err(e) = self.prepare_container_end(net, &ep.container_ifname).await {
            let _ = self.netlink.delete(&ep.host_ifname).await;
            return Err(nl_err(e));
        }
        let port = port_spec(net, ep);
        if let Err(e) = self.ovs.add_port(&net.bridge, &port).await {
            // Leave nothing behind: the veth goes with the failed port.
            let _ = self.netlink.delete(&ep.host_ifname).await;
            return Err(ovs_err(e));
        }
        Ok(())
    }

    async fn delete_endpoint_inner(&self, req: api::EndpointRequest) -> ApiResult<()> {
        let nid = valid_id("network", &req.network_id)?;
        let eid = valid_id("endpoint", &req.endpoint_id)?;
        let mut networks = self.networks.lock().await;
        let Some(net) = networks.get_mut(nid) else {
            return Ok(());
        };
        let Some(ep) = net.endpoints.get(eid).cloned() else {
            return Ok(());
        };
        let mut errors = Vec::new();
        self.fast_leave(net, &ep);
        if net.options.mode.is_nat() {
            if let Err(e) = fw(|| self.firewall.remove_ports(nid, eid)) {
                errors.push(e.to_string());
            }
        }
        // What is already gone (a port or veth deleted by hand, an earlier attempt
        // that stopped half way) counts as done: a retry always succeeds.
        if let Err(e) = self.ovs.delete_port(&net.bridge, &ep.host_ifname).await {
            if !e.is_not_found() {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = self.netlink.delete(&ep.host_ifname).await {
            errors.push(e.to_string());
        }
        if let Some(ov) = &net.overlay {
            let name = ovn::port_name(eid);
            let removed = self
                .northbound(&ov.northbound)
                .remove_ports(&ov.switch, &[&name])
                .await;
            if let Err(e) = removed {
                errors.push(e.to_string());
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::new(format!(
                "could not fully remove endpoint {eid}: {}",
                errors.join("; ")
            )));
        }
        net.endpoints.remove(eid);
        info!(network = %nid, endpoint = %eid, "deleted endpoint");
        Ok(())
    }

    async fn join_inner(&self, req: api::JoinRequest) -> ApiResult<api::JoinResponse> {
        let nid = valid_id("network", &req.network_id)?;
        let eid = valid_id("endpoint", &req.endpoint_id)?;
        let mut networks = self.networks.lock().await;
        let net = networks.get_mut(nid).ok_or_else(|| unknown_network(nid))?;
        let ep = net
            .endpoints
            .get_mut(eid)
            .ok_or_else(|| unknown_endpoint(nid, eid))?;
        if !self
            .netlink
            .exists(&ep.container_ifname)
            .await
            .map_err(nl_err)?
        {
            return Err(ApiError::new(format!(
                "the container end {} of endpoint {eid} is gone (deleted behind dovesnap's back?); \
                 disconnect and reconnect the container",
                ep.container_ifname
            )));
        }
        // The reconciler needs the container's namespace to re-create a lost veth.
        // Only a namespace in Docker's netns folder: the one the reconciler may enter.
        let sandbox = Some(req.sandbox_key.clone()).filter(|k| match records::check_sandbox(k) {
            Ok(()) => true,
            Err(e) => {
                if !k.is_empty() {
                    warn!(endpoint = %eid, "not recording the sandbox (a lost veth cannot be repaired): {e}");
                }
                false
            }
        });
        if ep.sandbox != sandbox {
            ep.sandbox = sandbox;
            let json = serde_json::to_string(&*ep).expect("Endpoint serializes");
            if let Err(e) = self
                .ovs
                .set_port_external_id(&ep.host_ifname, EXT_ENDPOINT, &json)
                .await
            {
                warn!(endpoint = %eid, "could not record the sandbox in OVSDB: {e}");
            }
        }
        let net = &*net;
        let ep = &net.endpoints[eid];
        self.fast_join(net, ep, false).await;
        Ok(api::JoinResponse {
            interface_name: api::InterfaceName {
                src_name: ep.container_ifname.clone(),
                dst_prefix: "eth".into(),
            },
            gateway: net
                .container_gateway()
                .map(|g| g.to_string())
                .unwrap_or_default(),
            ..Default::default()
        })
    }

    /// nat mode: publishes the container's `-p` ports (Docker sends the port map here
    /// and with CreateEndpoint; only this call is made once per container and network).
    async fn program_external_inner(
        &self,
        req: api::ProgramExternalConnectivityRequest,
    ) -> ApiResult<()> {
        let nid = valid_id("network", &req.network_id)?;
        let eid = valid_id("endpoint", &req.endpoint_id)?;
        let mut networks = self.networks.lock().await;
        let net = networks.get_mut(nid).ok_or_else(|| unknown_network(nid))?;
        if !net.options.mode.is_nat() {
            return Ok(());
        }
        let ep = net
            .endpoints
            .get_mut(eid)
            .ok_or_else(|| unknown_endpoint(nid, eid))?;
        let map = req
            .options
            .as_ref()
            .and_then(|o| o.get(PORT_MAP_OPTION))
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let mappings = parse_port_map(&map).map_err(|e| ApiError::new(e.to_string()))?;
        if mappings.is_empty() || net.internal {
            return Ok(());
        }
        let ip = parse_cidr(&ep.address)
            .ok_or_else(|| {
                ApiError::new(format!(
                    "endpoint {eid} has no IPv4 address to publish ports to"
                ))
            })?
            .0;
        let published = fw(|| self.firewall.add_ports(nid, eid, ip, &mappings))?;
        let mut stored = ep.clone();
        stored.published = published.clone();
        let json = serde_json::to_string(&stored).expect("Endpoint serializes");
        if let Err(e) = self
            .ovs
            .set_port_external_id(&ep.host_ifname, EXT_ENDPOINT, &json)
            .await
        {
            let _ = fw(|| self.firewall.remove_ports(nid, eid));
            return Err(ovs_err(e));
        }
        info!(network = %nid, endpoint = %eid, ports = ?published, "published ports");
        ep.published = published;
        if net.options.mode == Mode::NatFast {
            let uplink = net.options.nat_uplink.clone().unwrap_or_default();
            let host_ifname = ep.host_ifname.clone();
            let ports = ep.published.clone();
            self.if_fastpath(|fp| {
                if !fp.has_endpoint(&host_ifname) {
                    return;
                }
                let Some(addr) = fp.uplink_addr(&uplink) else {
                    return;
                };
                for p in fast_ports(&ports, addr) {
                    if let Err(e) = fp.publish(&uplink, p.0, p.1, ip, p.2) {
                        warn!(endpoint = %eid, "port {} stays on the kernel path: {e}", p.1);
                    }
                }
            });
        }
        Ok(())
    }

    async fn revoke_external_inner(&self, req: api::EndpointRequest) -> ApiResult<()> {
        let nid = valid_id("network", &req.network_id)?;
        let eid = valid_id("endpoint", &req.endpoint_id)?;
        let mut networks = self.networks.lock().await;
        let Some(net) = networks.get_mut(nid) else {
            return Ok(());
        };
        let Some(ep) = net.endpoints.get_mut(eid) else {
            return Ok(());
        };
        if ep.published.is_empty() {
            return Ok(());
        }
        if net.options.mode == Mode::NatFast {
            let uplink = net.options.nat_uplink.clone().unwrap_or_default();
            let ports = ep.published.clone();
            self.if_fastpath(|fp| {
                for p in &ports {
                    fp.unpublish(&uplink, fast_proto(p.proto), p.host_port);
                }
            });
        }
        fw(|| self.firewall.remove_ports(nid, eid))?;
        ep.published.clear();
        let json = serde_json::to_string(&*ep).expect("Endpoint serializes");
        match self
            .ovs
            .set_port_external_id(&ep.host_ifname, EXT_ENDPOINT, &json)
            .await
        {
            // A port deleted by hand keeps no record to update.
            Err(e) if !e.is_not_found() => Err(ovs_err(e)),
            _ => Ok(()),
        }
    }

    async fn endpoint_info_inner(
        &self,
        req: api::EndpointRequest,
    ) -> ApiResult<api::EndpointInfoResponse> {
        let nid = valid_id("network", &req.network_id)?;
        let eid = valid_id("endpoint", &req.endpoint_id)?;
        let networks = self.networks.lock().await;
        let net = networks.get(nid).ok_or_else(|| unknown_network(nid))?;
        let ep = net
            .endpoints
            .get(eid)
            .ok_or_else(|| unknown_endpoint(nid, eid))?;
        let mut value = HashMap::new();
        value.insert("bridge".into(), net.bridge.clone().into());
        value.insert("port".into(), ep.host_ifname.clone().into());
        value.insert("mac".into(), ep.mac.clone().into());
        Ok(api::EndpointInfoResponse { value })
    }
}

impl NetworkDriver for Driver {
    async fn create_network(&self, req: api::CreateNetworkRequest) -> ApiResult<()> {
        self.create_network_inner(req).await
    }
    async fn delete_network(&self, req: api::NetworkRequest) -> ApiResult<()> {
        self.delete_network_inner(req).await
    }
    async fn create_endpoint(
        &self,
        req: api::CreateEndpointRequest,
    ) -> ApiResult<api::CreateEndpointResponse> {
        self.create_endpoint_inner(req).await
    }
    async fn endpoint_info(
        &self,
        req: api::EndpointRequest,
    ) -> ApiResult<api::EndpointInfoResponse> {
        self.endpoint_info_inner(req).await
    }
    async fn delete_endpoint(&self, req: api::EndpointRequest) -> ApiResult<()> {
        self.delete_endpoint_inner(req).await
    }
    async fn join(&self, req: api::JoinRequest) -> ApiResult<api::JoinResponse> {
        self.join_inner(req).await
    }
    async fn program_external_connectivity(
        &self,
        req: api::ProgramExternalConnectivityRequest,
    ) -> ApiResult<()> {
        self.program_external_inner(req).await
    }
    async fn revoke_external_connectivity(&self, req: api::EndpointRequest) -> ApiResult<()> {
        self.revoke_external_inner(req).await
    }
    async fn leave(&self, req: api::EndpointRequest) -> ApiResult<()> {
        let nid = valid_id("network", &req.network_id)?;
        let eid = valid_id("endpoint", &req.endpoint_id)?;
        let mut networks = self.networks.lock().await;
        if let Some(net) = networks.get_mut(nid) {
            if let Some(ep) = net.endpoints.get(eid) {
                self.fast_leave(net, ep);
            }
            // The container is leaving: its namespace is no place for a repair
            // (in memory only; a plugin restart in between is harmless: the
            // reconciler only enters a namespace that still exists).
            if let Some(ep) = net.endpoints.get_mut(eid) {
                ep.sandbox = None;
            }
        }
        Ok(())
    }
}

impl Driver {
    /// Test hook (`dovesnap daemon --test-hooks`): makes the nat-fast data plane fail.
    /// False when no nat-fast data plane runs.
    pub fn inject_fault(&self, fault: crate::fastpath::Fault) -> bool {
        let guard = self.fastpath.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|fp| fp.inject(fault)).is_some()
    }
}

impl StatusSource for Driver {
    async fn status(&self) -> Status {
        let networks = self.networks.lock().await;
        let fast_path = tokio::task::block_in_place(|| {
            let guard = self.fastpath.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_ref().map(|fp| (fp.status(), fp.endpoint_names()))
        });
        let mut out: Vec<NetworkStatus> = networks
            .values()
            .map(|n| {
                let mut endpoints: Vec<EndpointStatus> = n
                    .endpoints
                    .values()
                    .map(|e| EndpointStatus {
                        id: e.id.clone(),
                        port: e.host_ifname.clone(),
                        mac: e.mac.clone(),
                        address: e.address.clone(),
                        published: e.published.iter().map(|p| p.to_string()).collect(),
                        fast_path: fast_path.as_ref().is_some_and(|(s, names)| {
                            names.contains(&e.host_ifname)
                                && !s.kernel_path.iter().any(|(p, _)| *p == e.host_ifname)
                        }),
                        kernel_path: fast_path
                            .as_ref()
                            .and_then(|(s, _)| {
                                s.kernel_path.iter().find(|(p, _)| *p == e.host_ifname)
                            })
                            .map(|(_, why)| why.clone())
                            .unwrap_or_default(),
                    })
                    .collect();
                endpoints.sort_by(|a, b| a.id.cmp(&b.id));
                NetworkStatus {
                    id: n.id.clone(),
                    bridge: n.bridge.clone(),
                    mode: n.options.mode.to_string(),
                    subnet: n.ipam.subnet.clone().unwrap_or_default(),
                    gateway: n.ipam.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    datapath_type: n.datapath_type.clone(),
                    endpoints,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Status {
            networks: out,
            fast_path: fast_path.map(|(s, _)| s),
            repairs: self.repairs(),
            reconciler: self.reconciler_health(),
            bad_records: self
                .bad_records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// The OVSDB bridge of `net`: its options and addressing go into `external_ids`, so a
/// restarted plugin (and the reconciler) can make it again.
fn bridge_spec(net: &Network) -> BridgeSpec {
    let mut external_ids = BTreeMap::new();
    external_ids.insert(EXT_NETWORK_ID.to_string(), net.id.clone());
    external_ids.insert(
        EXT_NETWORK_IPAM.to_string(),
        serde_json::to_string(&net.ipam).expect("Ipam serializes"),
    );
    for (k, v) in net.options.to_string_map() {
        external_ids.insert(format!("{EXT_OPTION_PREFIX}{k}"), v);
    }
    if net.internal {
        external_ids.insert(EXT_NETWORK_INTERNAL.to_string(), "true".to_string());
    }
    BridgeSpec {
        name: net.bridge.clone(),
        datapath_type: net.datapath_type.clone(),
        external_ids,
        mtu: net.options.mtu,
        controllers: net.options.controllers.clone(),
        datapath_id: net.options.dpid.clone(),
        uplinks: net
            .options
            .add_ports
            .iter()
            .map(|u| UplinkSpec {
                name: u.name.clone(),
                ofport: u.ofport,
            })
            .collect(),
    }
}

/// The OVSDB port of endpoint `ep` of `net`, with the endpoint's record.
fn port_spec(net: &Network, ep: &Endpoint) -> PortSpec {
    let mut external_ids = BTreeMap::new();
    external_ids.insert(EXT_ENDPOINT_ID.to_string(), ep.id.clone());
    external_ids.insert(EXT_NETWORK_ID.to_string(), net.id.clone());
    external_ids.insert(
        EXT_ENDPOINT.to_string(),
        serde_json::to_string(ep).expect("Endpoint serializes"),
    );
    PortSpec {
        name: ep.host_ifname.clone(),
        tag: net.options.vlan,
        external_ids,
        mtu: net.options.mtu,
        ofport: None,
        // Overlay: ovn-controller binds the interface to the endpoint's logical port.
        interface_external_ids: match net.overlay {
            Some(_) => BTreeMap::from([("iface-id".to_string(), ovn::port_name(&ep.id))]),
            None => BTreeMap::new(),
        },
    }
}

fn fast_proto(p: Proto) -> crate::nat::Protocol {
    match p {
        Proto::Tcp => crate::nat::Protocol::Tcp,
        Proto::Udp => crate::nat::Protocol::Udp,
    }
}

/// The publications the translator serves: those on every address or on the uplink's
/// own (others, e.g. bound to a second address, stay with the kernel's DNAT), as
/// (protocol, external port, container port).
fn fast_ports(
    published: &[PublishedPort],
    uplink_addr: Ipv4Addr,
) -> Vec<(crate::nat::Protocol, u16, u16)> {
    published
        .iter()
        .filter(|p| p.host_ip.is_none_or(|ip| ip == uplink_addr))
        .map(|p| (fast_proto(p.proto), p.host_port, p.container_port))
        .collect()
}

fn ovn_err(e: OvnError) -> ApiError {
    ApiError::new(e.to_string())
}

/// The integration bridge of an overlay network.
fn integration_bridge(options: &NetworkOptions) -> String {
    options
        .ovn_bridge
        .clone()
        .unwrap_or_else(|| ovn::DEFAULT_BRIDGE.to_string())
}

/// The logical switch port of an endpoint of this host.
fn logical_port(ov: &Overlay, ep: &Endpoint) -> ovn::northbound::PortSpec {
    ovn::northbound::PortSpec {
        name: ovn::port_name(&ep.id),
        mac: ep.mac.clone(),
        ip: parse_cidr(&ep.address).map(|(ip, _)| ip),
        chassis: ov.chassis.clone(),
        endpoint_id: ep.id.clone(),
    }
}

fn ovs_err(e: ovsdb::OvsdbError) -> ApiError {
    ApiError::new(e.to_string())
}

fn nl_err(e: crate::netlink::NetlinkError) -> ApiError {
    ApiError::new(e.to_string())
}

fn unknown_network(id: &str) -> ApiError {
    ApiError::new(format!(
        "network {id} is not known to dovesnap (was it created while another plugin served \
         the ovs driver?)"
    ))
}

fn unknown_endpoint(nid: &str, eid: &str) -> ApiError {
    ApiError::new(format!("endpoint {eid} does not exist in network {nid}"))
}

/// Docker ids are 64 hex digits; anything else is refused before it reaches a name.
fn valid_id<'a>(what: &str, id: &'a str) -> ApiResult<&'a str> {
    records::check_id(what, id).map_err(ApiError::new)?;
    Ok(id)
}

/// `a.b.c.d/n` into its parts.
fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some(())?;
    Some((addr.parse().ok()?, len))
}

/// The network's IPv4 addressing from Docker's IPAM data (first pool).
fn ipam_from(pools: &[api::IpamData]) -> ApiResult<Ipam> {
    let Some(pool) = pools.first() else {
        return Ok(Ipam::default());
    };
    parse_cidr(&pool.pool)
        .ok_or_else(|| ApiError::new(format!("IPAM pool {:?} is not an IPv4 CIDR", pool.pool)))?;
    let gateway = if pool.gateway.is_empty() {
        None
    } else {
        Some(
            parse_cidr(&pool.gateway)
                .map(|(a, _)| a)
                .or_else(|| pool.gateway.parse().ok())
                .ok_or_else(|| {
                    ApiError::new(format!(
                        "IPAM gateway {:?} is not an IPv4 address",
                        pool.gateway
                    ))
                })?,
        )
    };
    Ok(Ipam {
        subnet: Some(pool.pool.clone()),
        gateway,
    })
}

/// A MAC for an endpoint Docker gave none: `02:42` and the IPv4 address, as Docker's
/// bridge driver does, or locally administered bytes from the endpoint id.
fn generate_mac(address: &str, endpoint_id: &str) -> [u8; 6] {
    if let Some((ip, _)) = parse_cidr(address) {
        let o = ip.octets();
        return [0x02, 0x42, o[0], o[1], o[2], o[3]];
    }
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    for (i, pair) in endpoint_id.as_bytes().chunks(2).skip(1).take(5).enumerate() {
        let s = std::str::from_utf8(pair).unwrap_or("0");
        mac[i + 1] = u8::from_str_radix(s, 16).unwrap_or(0);
    }
    mac
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
            assert!(err.0.contains("invalid network id"), "{err}");
        }
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
        assert_eq!(ipam.subnet.as_deref(), Some("10.0.0.0/24"));
        assert_eq!(ipam_from(&[]).unwrap(), Ipam::default());
        assert!(ipam_from(&[api::IpamData {
            pool: "nonsense".into(),
            ..Default::default()
        }])
        .is_err());
    }

    #[test]
    fn macs_follow_docker_convention() {
        assert_eq!(generate_mac("10.1.2.3/24", "x"), [0x02, 0x42, 10, 1, 2, 3]);
        let m = generate_mac("", "00112233445566778899");
        assert_eq!(m, [0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
    }
}
