//! The network driver: Docker's calls turned into OVS bridges, ports and veth pairs.
//!
//! State lives in OVSDB: each network's bridge carries its Docker network id and its
//! options in `external_ids`, each endpoint's port carries the endpoint id, addresses
//! and interface names. The in-memory table is a cache of that, rebuilt by
//! [`Driver::recover`] at start, so a restarted plugin picks up where it was and never
//! touches a bridge or port it does not own.
//!
//! Lifecycle (flat mode):
//! - CreateNetwork: one OVSDB transaction makes the bridge, its internal port, any
//!   `ovs.bridge.add_ports` uplinks and any `ovs.bridge.tunnels` tunnel ports
//!   ([`tunnels`]); a VLAN network's uplinks are shared with other
//!   VLAN networks through their trunk bridges instead ([`trunk`]).
//! - CreateEndpoint: a veth pair; the host end becomes a port of the bridge (with the
//!   access VLAN tag), the container end waits for Join.
//! - Join: hands the container end to Docker (`SrcName`, `DstPrefix`), with the gateway.
//! - Leave: nothing to undo at L2 (Docker moves the interface back).
//! - DeleteEndpoint: port and veth removed. DeleteNetwork: bridge removed.
//!
//! A flat network on an existing bridge (`ovs.bridge.existing`) skips the bridge's
//! creation and deletion: its record goes on the administrator's bridge under
//! [`EXT_ATTACHED_NETWORK_ID`] and leaves with the network; only its ports are its own.
//! Flat VLAN networks naming one bridge share it ([`shared`]): the first makes it (or
//! the administrator did), the others join it, each with its own record slot; the
//! last one out of a dovesnap-made bridge deletes it.
//!
//! Overlay mode has no bridge of its own: the network is an OVN logical switch
//! (`crate::ovn`), recorded on this host in `Open_vSwitch.external_ids`
//! (`dovesnap-overlay-<network id>`); each endpoint is a logical switch port, created
//! before its veth, whose host end joins the integration bridge with
//! `external_ids:iface-id` naming that port.
//!
//! Where each mode lives: this file holds the table, the lock and Docker's calls, with
//! what every mode shares (a bridge per network, a veth and port per endpoint: flat mode
//! is exactly that); [`model`] the typed network and endpoint and their pure conversions;
//! [`nat`] the nftables rules of nat networks and published ports; [`nat_fast`] the fast
//! path's endpoints and uplink; [`overlay`] the OVN logical switch and ports;
//! [`reconcile`] the periodic repair and [`records`] the distrustful reading of OVSDB at
//! start.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::daemon::status::{EndpointStatus, NetworkStatus, Status, StatusSource};
use crate::fastpath::{self, EndpointSpec, FastPath, FastPathConfig, FastPathError};
use crate::firewall::{
    parse_port_map, EndpointPorts, ExpectedNetwork, Firewall, FirewallError, Nat6, NatNetwork,
    Proto, PublishedPort, PORT_MAP_OPTION,
};
use crate::host::addr::{Ipv4Cidr, Ipv4Net, Ipv6Cidr, Mac};
use crate::host::netlink::Netlink;
use crate::ovn::{self, Chassis, Northbound, OvnError};
use crate::ovsdb::{self, Applied, BridgeSpec, Ovsdb, PortSpec, Remote, UplinkSpec};
use crate::plugin::api::{self, ApiResult, NetworkDriver};
use crate::plugin::options::{EndpointOptions, Mode, NatEngine, NetworkOptions};

mod backend;
mod error;
mod ipam;
mod model;
mod nat;
mod nat_fast;
mod overlay;
mod overlay_dns;
mod ovn_gateway;
mod reconcile;
pub mod records;
mod shared;
#[cfg(test)]
mod tests;
mod trunk;
mod tunnels;

pub use backend::{Link, Links, NatFastPath, Switch};
pub use error::{DriverError, DriverResult};
use model::*;
pub use model::{Datapath, Endpoint, Ipam, RECORD_SLOT_SEPARATOR};
use nat_fast::{fast_leave, fast_ports, fast_unpublish};
use overlay::{integration_bridge, logical_port};
pub use trunk::{trunk_bridge, EXT_TRUNK_NETWORK, EXT_TRUNK_UPLINK, TRUNK_BRIDGE_PREFIX};

/// `external_ids` key on bridges: the Docker network id (ownership marker).
pub const EXT_NETWORK_ID: &str = "dovesnap-network-id";

/// `external_ids` key on an existing bridge a network is attached to
/// (`ovs.bridge.existing`): the Docker network id. Not an ownership marker: dovesnap
/// never deletes a bridge for it, only its own ports and this record.
pub const EXT_ATTACHED_NETWORK_ID: &str = "dovesnap-attached-network-id";

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

/// The driver. The daemon's runs on OVSDB, netlink and the XDP fast path; the
/// driver's tests on fakes.
///
/// Locks: every Docker call and reconciler pass holds [`Driver::state`] (the network
/// table and the fast path) from start to end, so they apply in order. The other
/// mutexes are leaves: each guards one map or counter for one access, never across an
/// await or while taking another lock, so there is no order to keep.
pub struct Driver<S = Ovsdb, L = Netlink, F = FastPath> {
    ovs: S,
    netlink: std::sync::Arc<L>,
    firewall: Box<dyn Firewall>,
    /// Deletions of links whose endpoint is gone (see [`Driver::reap_links`]).
    reaping: std::sync::Mutex<tokio::task::JoinSet<()>>,
    /// The driver's one lock.
    state: Mutex<DriverState<F>>,
    /// The daemon's `--ovn-nb`: the default northbound database of overlay networks.
    ovn_nb: Option<Remote>,
    /// One northbound connection per database, made on first use.
    northbound: std::sync::Mutex<HashMap<Remote, std::sync::Arc<Northbound>>>,
    /// Since when each chassis named by an overlay switch has been missing from the
    /// southbound database (its ports are reaped after the grace period).
    missing_chassis: std::sync::Mutex<ovn::reap::MissingChassis>,
    /// Where overlay endpoints' names come from (`ovn::docker_names`); none: no names.
    names: Option<std::sync::Arc<dyn ovn::docker_names::NamesSource>>,
    /// How many names each overlay network's switch holds, as the reconciler last read.
    name_counts: std::sync::Mutex<HashMap<String, usize>>,
    /// The endpoints whose names are being asked for now (one lookup each at a time).
    names_in_flight: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The forwarders behind the switches' DNS localports (`ovn::dns_forward`); none:
    /// the localports stay unbound on this host.
    dns_forwarders: Option<std::sync::Arc<ovn::dns_forward::Forwarders>>,
    /// Given to the fast path when it starts; the nft rules' masquerade range too.
    fastpath_config: FastPathConfig,
    /// What the reconciler saw and repaired.
    reconciler: reconcile::State,
    /// The records recovery could not trust (and left alone).
    bad_records: std::sync::Mutex<Vec<crate::daemon::status::BadRecord>>,
}

/// What Docker's calls change, behind the driver's one lock: the network table and the
/// nat-fast data path serving its endpoints. Neither is reachable without the other's
/// lock, which is what keeps the fast path in step with the table.
struct DriverState<F> {
    networks: HashMap<String, Network>,
    fastpath: nat_fast::FastSlot<F>,
}

/// An endpoint's host-side links, each deleted with its veth peer: the OVS port's
/// veth, and on the tc engine the container's (`nat_fast::split_names`).
fn endpoint_links(net: &Network, ep: &Endpoint) -> Vec<String> {
    let mut links = vec![ep.host_ifname.clone()];
    if nat_fast::is_split(net) {
        links.insert(0, nat_fast::split_names(ep).0);
    }
    links
}

/// The links among `names` named like an endpoint's (`ovsv`, `ovsc`, `ovst` or `ovsq`
/// and the first ten hex digits of its id) whose endpoint is not in `known` (ids).
fn orphan_endpoint_links<'a>(names: &'a [String], known: &[&str]) -> Vec<&'a str> {
    const PREFIXES: [&str; 4] = [
        HOST_VETH_PREFIX,
        CONTAINER_VETH_PREFIX,
        nat_fast::TC_VETH_PREFIX,
        nat_fast::PATCH_VETH_PREFIX,
    ];
    (names.iter())
        .filter_map(|name| {
            let id = PREFIXES.iter().find_map(|p| name.strip_prefix(p))?;
            let ours = id.len() == 10 && id.bytes().all(|b| b.is_ascii_hexdigit());
            (ours && !known.iter().any(|k| k.starts_with(id))).then_some(name.as_str())
        })
        .collect()
}

/// Whether the kernel has tcx (Linux 6.6 and later), which the tc engine's programs
/// need; unknown counts as yes (the endpoints then say why they are on the kernel path).
fn tcx_likely() -> bool {
    crate::host::sysctl::kernel_version().is_none_or(|v| v >= (6, 6))
}

/// Runs a (blocking, a few milliseconds) firewall call without stalling the runtime's
/// other tasks.
fn fw<T>(f: impl FnOnce() -> Result<T, FirewallError>) -> DriverResult<T> {
    Ok(tokio::task::block_in_place(f)?)
}

impl Driver {
    pub fn new(ovs: Ovsdb, netlink: Netlink, firewall: Box<dyn Firewall>) -> Self {
        Driver::with_backends(ovs, netlink, firewall)
    }
}

impl<S: Switch, L: Links, F: NatFastPath> Driver<S, L, F> {
    /// A driver on the given switch, links and firewall (its fast path, of type `F`,
    /// starts with the first nat-fast endpoint).
    pub fn with_backends(ovs: S, netlink: L, firewall: Box<dyn Firewall>) -> Self {
        Driver {
            ovs,
            netlink: std::sync::Arc::new(netlink),
            firewall,
            reaping: std::sync::Mutex::default(),
            state: Mutex::new(DriverState {
                networks: HashMap::new(),
                fastpath: nat_fast::FastSlot::default(),
            }),
            ovn_nb: None,
            northbound: std::sync::Mutex::new(HashMap::new()),
            missing_chassis: std::sync::Mutex::default(),
            names: None,
            name_counts: std::sync::Mutex::default(),
            names_in_flight: std::sync::Arc::default(),
            dns_forwarders: None,
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
    ) -> Result<(), crate::host::netlink::NetlinkError> {
        if net.datapath == Datapath::Netdev || net.options.mode == Mode::NatFast {
            self.netlink.disable_tx_checksum(name)?;
        }
        if net.options.mode == Mode::NatFast && net.options.offload() {
            self.netlink.set_up(name).await?;
            self.netlink.enable_gro(name)?;
            self.netlink.set_down(name).await?;
        }
        Ok(())
    }

    /// Rebuilds the network table from the bridges and ports dovesnap owns in OVSDB.
    /// Returns how many networks and endpoints it found.
    pub async fn recover(&self) -> Result<(usize, usize), ovsdb::OvsdbError> {
        let bridges = self.ovs.list_bridges().await?;
        let mut state = self.state.lock().await;
        let DriverState { networks, fastpath } = &mut *state;
        let mut endpoints = 0;
        let mut bad = Vec::new();
        // Records that cannot be trusted are left alone: their network's rules (or the
        // endpoint's published ports) are kept as they are, not reconciled away.
        let mut untouched_networks = Vec::new();
        let mut untouched_endpoints: HashMap<String, Vec<String>> = HashMap::new();
        for (br, read) in (bridges.iter())
            .flat_map(|br| records::networks_of(br).into_iter().map(move |r| (br, r)))
        {
            let (net, bad_endpoints) = match read {
                Ok(read) => read,
                Err(b) => {
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
        // Endpoint links no record claims, their peer on the host (not in a container):
        // left by a stop between DeleteEndpoint's answer and their deletion
        // (`reap_links`) or half way through CreateEndpoint. Not while a network's record
        // is unreadable: its endpoints are unknown.
        if untouched_networks.is_empty() {
            let known: Vec<&str> = (networks.values())
                .flat_map(|n| n.endpoints.keys())
                .chain(untouched_endpoints.values().flatten())
                .map(String::as_str)
                .collect();
            match self.netlink.names_without_remote_peer().await {
                Ok(names) => {
                    for name in orphan_endpoint_links(&names, &known) {
                        info!(link = %name, "deleting a link of an endpoint that is gone");
                        if let Err(e) = self.netlink.delete(name).await {
                            warn!(link = %name, "{e}");
                        }
                    }
                }
                Err(e) => warn!("cannot list links to find endpoints' leftovers: {e}"),
            }
        }
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
                                container_ip: e.address?.addr,
                                container_ip6: e.address6.map(|a| a.addr),
                                ports: e.published.clone(),
                            })
                        })
                        // Listed without ports: whatever rules they have are kept.
                        .chain(untouched.map(|id| EndpointPorts {
                            endpoint_id: id.clone(),
                            container_ip: Ipv4Addr::UNSPECIFIED,
                            container_ip6: None,
                            ports: Vec::new(),
                        }))
                        .collect(),
                })
            })
            .collect();
        if !expected.is_empty() {
            if let Err(e) = self.netlink.enable_ip_forward() {
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
                    self.fast_join(fastpath, net, ep, true).await;
                }
            }
        }
        Ok((networks.len(), endpoints))
    }

    /// On a clean stop: detaches every XDP program and closes every AF_XDP socket
    /// (nat-fast traffic falls back to the kernel path). Bridges, ports and netfilter
    /// rules stay, so running containers keep their connectivity while the plugin is
    /// down (an upgrade, say); the next start's [`Driver::recover`] reconciles them,
    /// and they go with their network.
    pub async fn shutdown(&self) -> Result<(), FirewallError> {
        let mut state = self.state.lock().await;
        self.links_reaped().await;
        if let Some(fp) = state.fastpath.take() {
            tokio::task::block_in_place(|| fp.stop());
        }
        Ok(())
    }

    async fn create_network_inner(&self, req: api::CreateNetworkRequest) -> DriverResult<()> {
        let id = valid_id("network", &req.network_id)?;
        let mut options = NetworkOptions::from_docker_options(req.options.as_ref())?;
        if options.mode == Mode::NatFast {
            options.nat_uplink = Some(self.check_uplink(&options).await?);
            options.nat_engine = Some(match options.chosen_engine() {
                // tcx came with Linux 6.6: the default's programs would never attach.
                NatEngine::Tc if options.nat_engine.is_none() && !tcx_likely() => {
                    warn!(network = %id, "nat-fast: the kernel predates tcx (Linux 6.6): \
                          the network takes the xdp engine");
                    NatEngine::Xdp
                }
                engine => engine,
            });
        }
        ipam::check_ipam_mode(options.mode, req.ipv4_data.as_deref().unwrap_or_default())?;
        let mut ipam = ipam_from(req.ipv4_data.as_deref().unwrap_or_default())?;
        add_ipv6(
            &mut ipam,
            options.mode,
            req.ipv6_data.as_deref().unwrap_or_default(),
        )?;
        let internal = req
            .options
            .as_ref()
            .and_then(|o| o.get(DOCKER_INTERNAL_OPTION))
            .is_some_and(|v| v.as_bool() == Some(true) || v.as_str() == Some("true"));
        if options.mode.has_gateway() && (ipam.gateway.is_none() || ipam.subnet.is_none()) {
            return Err(DriverError::NatWithoutSubnet(options.mode));
        }

        let mut state = self.state.lock().await;
        let networks = &mut state.networks;
        if networks.contains_key(id) {
            return Err(DriverError::NetworkExists(id.to_string()));
        }
        if options.mode == Mode::Overlay {
            if internal && options.ovn_gateway.is_some() {
                return Err(OvnError::Gateway(
                    "--internal with ovs.ovn.gateway: an internal network has no way out; \
                     drop one of them"
                        .into(),
                )
                .into());
            }
            let net = self.create_overlay_network(id, options, ipam).await?;
            info!(network = %id, switch = ?net.options.ovn_switch,
                  bridge = %net.bridge, "created overlay network");
            networks.insert(id.to_string(), net);
            return Ok(());
        }
        let bridge = options
            .bridge_name
            .clone()
            .unwrap_or_else(|| format!("{BRIDGE_PREFIX}{}", &id[..8]));
        // Networks of this plugin on the bridge already: the new one shares it with
        // them ([`shared`]) or is refused.
        let sharing: Vec<&Network> = networks.values().filter(|n| n.bridge == bridge).collect();
        let shared_datapath = match sharing.is_empty() {
            true => None,
            false => Some(shared::check_share(&mut options, &bridge, &sharing)?),
        };
        let found = self.ovs.bridge(&bridge).await?;
        let datapath = if options.existing {
            existing_bridge(&bridge, found, &sharing)?
        } else {
            match (&found, shared_datapath) {
                // Another network's bridge: still there and still its.
                (Some(b), Some(_)) if sharing.iter().any(|n| n.marks(b)) => {}
                (Some(_), _) => return Err(DriverError::BridgeNotOurs(bridge)),
                (None, Some(_)) => return Err(DriverError::SharedBridgeGone(bridge)),
                (None, None) if self.netlink.exists(&bridge).await? => {
                    return Err(DriverError::InterfaceExists(bridge))
                }
                (None, None) => {}
            }
            for up in &options.add_ports {
                if !self.netlink.exists(&up.name).await? {
                    return Err(DriverError::NoSuchPort(up.name.clone()));
                }
            }
            match shared_datapath {
                Some(d) => d,
                None if options.userspace => Datapath::Netdev,
                None => Datapath::of(ovsdb::default_datapath_type()),
            }
        };

        let net = Network {
            id: id.to_string(),
            bridge,
            datapath,
            options,
            ipam,
            internal,
            endpoints: HashMap::new(),
            chassis: String::new(),
        };
        // Uplinks shared through trunk bridges: joined before the bridge whose patch
        // ports point at them.
        self.check_uplinks(&net, networks).await?;
        self.join_trunks(&net, networks).await?;
        // A bridge that is there (another network's, the administrator's) is joined:
        // the network's record and patch ports go on it; else it is made.
        let made = if net.options.existing || shared_datapath.is_some() {
            self.join_bridge(&net).await
        } else {
            (self.ovs.create_bridge(&bridge_spec(&net)).await).map_err(DriverError::from)
        };
        if let Err(e) = made {
            self.leave_trunks(&net, networks, &mut Vec::new()).await;
            return Err(e);
        }
        if let Err(e) = self.program_nat(&net).await {
            // Leave nothing behind: the bridge and any rule go with the failed network.
            let _ = fw(|| self.firewall.remove_network(id));
            self.release_bridge(&net, &mut Vec::new()).await;
            self.leave_trunks(&net, networks, &mut Vec::new()).await;
            return Err(e);
        }
        info!(network = %id, bridge = %net.bridge, datapath_type = %net.datapath,
              mode = %net.options.mode, internal, "created network");
        networks.insert(id.to_string(), net);
        Ok(())
    }

    async fn delete_network_inner(&self, req: api::NetworkRequest) -> DriverResult<()> {
        let id = valid_id("network", &req.network_id)?;
        let mut state = self.state.lock().await;
        // The links of the network's deleted endpoints go first.
        self.links_reaped().await;
        let DriverState { networks, fastpath } = &mut *state;
        let Some(net) = networks.get(id) else {
            // Deleting what is not there is success: Docker may retry.
            return Ok(());
        };
        if nat_fast::is_split(net) {
            fastpath.if_running(|fp| fp.release_idle_tc_uplinks());
        }
        let mut errors = Vec::new();
        if net.options.mode.has_gateway() {
            if let Err(e) = fw(|| self.firewall.remove_network(id)) {
                errors.push(e.to_string());
            }
        }
        // A bridge that stays (an administrator's, overlay's br-int, one shared with
        // other networks) keeps no port of the network's; a bridge of our own goes with
        // its ports.
        let shared_with_unknown = match self.ovs.bridge(&net.bridge).await {
            Ok(Some(br)) => (shared::recorded_networks(&br).iter()).any(|n| *n != net.id),
            _ => false,
        };
        let bridge_stays = net.options.existing
            || net.options.mode == Mode::Overlay
            || !shared::shared_with(networks, net).is_empty()
            || shared_with_unknown;
        for ep in net.endpoints.values() {
            if bridge_stays {
                match self.ovs.delete_port(&net.bridge, &ep.host_ifname).await {
                    Err(e) if !e.is_not_found() => errors.push(e.to_string()),
                    _ => {}
                }
            }
            if let Err(e) = self.delete_endpoint_links(net, ep).await {
                errors.push(e.to_string());
            }
        }
        if let Some(ov) = net.overlay() {
            errors.extend(self.delete_overlay_network(net, &ov).await);
        } else {
            self.release_bridge(net, &mut errors).await;
            self.leave_trunks(net, networks, &mut errors).await;
        }
        if !errors.is_empty() {
            return Err(DriverError::Incomplete {
                what: format!("network {id}"),
                errors,
            });
        }
        info!(network = %id, bridge = %net.bridge, "deleted network");
        networks.remove(id);
        Ok(())
    }

    /// Deletes a network's own bridge, if it still carries the network's id and no
    /// other network's; from an existing bridge (`ovs.bridge.existing`) or one another
    /// network shares, only the network's record and patch ports go, the bridge and its
    /// other ports stay.
    async fn release_bridge(&self, net: &Network, errors: &mut Vec<String>) {
        match self.ovs.bridge(&net.bridge).await {
            Ok(Some(br))
                if net.marks(&br)
                    && (net.options.existing
                        || shared::recorded_networks(&br).iter().any(|n| *n != net.id)) =>
            {
                self.leave_bridge(net, &br, errors).await;
            }
            Ok(Some(br)) if net.marks(&br) => match self.ovs.delete_bridge(&net.bridge).await {
                Err(e) if !e.is_not_found() => errors.push(e.to_string()),
                _ => {}
            },
            Ok(_) => {
                warn!(bridge = %net.bridge, "bridge is gone or no longer ours; not deleting it")
            }
            Err(e) => errors.push(e.to_string()),
        }
    }

    async fn create_endpoint_inner(
        &self,
        req: api::CreateEndpointRequest,
    ) -> DriverResult<api::CreateEndpointResponse> {
        let (nid, eid) = endpoint_ids(&req.network_id, &req.endpoint_id)?;
        let endpoint_options = EndpointOptions::from_docker_options(req.options.as_ref())?;
        let iface = req.interface.unwrap_or_default();
        let address = match iface.address.as_str() {
            "" => None,
            a => Some(
                a.parse::<Ipv4Cidr>()
                    .map_err(|_| DriverError::BadAddress(a.to_string()))?,
            ),
        };
        let address6 = match iface.address_ipv6.as_str() {
            "" => None,
            a => Some(
                a.parse::<Ipv6Cidr>()
                    .map_err(|_| DriverError::BadAddress6(a.to_string()))?,
            ),
        };
        let (mac, mac_from_us) = match iface.mac_address.as_str() {
            "" => (generate_mac(address, eid), true),
            m => (m.parse::<Mac>()?, false),
        };

        let mut state = self.state.lock().await;
        let networks = &mut state.networks;
        let net = networks.get(nid).ok_or_else(|| unknown_network(nid))?;
        shared::check_port_vlan(networks, net, endpoint_options.vlan)?;
        let net = networks.get_mut(nid).ok_or_else(|| unknown_network(nid))?;
        if net.endpoints.contains_key(eid) {
            return Err(DriverError::EndpointExists(eid.to_string()));
        }
        if net.options.mode == Mode::Overlay && endpoint_options.vlan.is_some() {
            return Err(DriverError::VlanOnOverlay);
        }
        let (host_ifname, container_ifname) = records::veth_names(eid);
        let ep = Endpoint {
            id: eid.to_string(),
            address,
            address6,
            mac,
            host_ifname,
            container_ifname,
            published: Vec::new(),
            vlan: endpoint_options.vlan,
            sandbox: None,
        };
        // Overlay: the logical port first, so an address another host uses is refused
        // before anything is made here.
        let lsp = match net.overlay() {
            Some(ov) => {
                let spec = logical_port(&ov, &ep);
                self.northbound(&ov.northbound)
                    .add_port(&ov.switch, &spec)
                    .await?;
                Some((ov, spec.name))
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
                mac_address: ep.mac.to_string(),
                ..Default::default()
            }),
        })
    }

    /// The veth pair of an endpoint, its host end a port of the network's bridge (for
    /// overlay, of the integration bridge, bound to the endpoint's logical port). On
    /// failure nothing is left behind.
    async fn plumb_endpoint(&self, net: &Network, ep: &Endpoint, mac: Mac) -> DriverResult<()> {
        if nat_fast::is_split(net) {
            return self.plumb_split(net, ep, mac).await;
        }
        // A leftover from a crash between veth and port creation is ours to replace.
        self.netlink.delete(&ep.host_ifname).await?;
        self.netlink
            .create_veth(
                &ep.host_ifname,
                &ep.container_ifname,
                Some(mac.0),
                net.options.mtu,
            )
            .await?;
        if let Err(e) = self.prepare_container_end(net, &ep.container_ifname).await {
            let _ = self.netlink.delete(&ep.host_ifname).await;
            return Err(e.into());
        }
        let port = port_spec(net, ep);
        if let Err(e) = self.ovs.add_port(&net.bridge, &port).await {
            // Leave nothing behind: the veth goes with the failed port.
            let _ = self.netlink.delete(&ep.host_ifname).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Deletes an endpoint's links in the host: its veth (the container end with it,
    /// if still there) and, when split (`ovs.nat.engine=tc`), the container's pair too.
    /// What is already gone counts as done.
    async fn delete_endpoint_links(
        &self,
        net: &Network,
        ep: &Endpoint,
    ) -> Result<(), crate::host::netlink::NetlinkError> {
        let mut result = Ok(());
        for name in endpoint_links(net, ep) {
            if let Err(e) = self.netlink.delete(&name).await {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Finishes an endpoint's deletion after DeleteEndpoint has answered: waits for
    /// ovs-vswitchd to apply the removal of its port (`applied`, committed already),
    /// then deletes its links. Both would otherwise lengthen every `docker run --rm`
    /// and `docker stop`: vswitchd's reconfiguration takes about 12 ms here, and each
    /// veth pair's deletion waits for RCU grace periods (20-30 ms, two pairs on the tc
    /// engine). The names are the endpoint's alone. DeleteNetwork and a stop wait for
    /// them ([`Driver::links_reaped`]); a failure is logged (the next start's sweep of
    /// unknown endpoint links finds a link left over).
    fn reap_links(&self, applied: Option<Applied>, names: Vec<String>) {
        let netlink = std::sync::Arc::clone(&self.netlink);
        let mut reaping = self.reaping.lock().unwrap_or_else(|p| p.into_inner());
        while reaping.try_join_next().is_some() {}
        reaping.spawn(async move {
            if let Some(applied) = applied {
                if let Err(e) = applied.await {
                    warn!("ovs-vswitchd did not confirm a deleted endpoint's port removal: {e}");
                }
            }
            for name in names {
                if let Err(e) = netlink.delete(&name).await {
                    warn!(link = %name, "cannot delete a deleted endpoint's link: {e}");
                }
            }
        });
    }

    /// Waits until the links handed to [`Driver::reap_links`] so far are deleted.
    pub async fn links_reaped(&self) {
        loop {
            let mut pending =
                std::mem::take(&mut *self.reaping.lock().unwrap_or_else(|p| p.into_inner()));
            if pending.is_empty() {
                return;
            }
            while pending.join_next().await.is_some() {}
        }
    }

    async fn delete_endpoint_inner(&self, req: api::EndpointRequest) -> DriverResult<()> {
        let (nid, eid) = endpoint_ids(&req.network_id, &req.endpoint_id)?;
        let mut state = self.state.lock().await;
        let DriverState { networks, fastpath } = &mut *state;
        let Some(net) = networks.get_mut(nid) else {
            return Ok(());
        };
        let Some(ep) = net.endpoints.get(eid).cloned() else {
            return Ok(());
        };
        let mut errors = Vec::new();
        fast_leave(fastpath, net, &ep);
        // Published ports are withdrawn by RevokeExternalConnectivity; these are what
        // it could not withdraw. None published, none to look for (listing the rules
        // costs a process and about 10 ms).
        if net.options.mode.has_gateway() && !ep.published.is_empty() {
            if let Err(e) = fw(|| self.firewall.remove_ports(nid, eid)) {
                errors.push(e.to_string());
            }
        }
        // What is already gone (a port or veth deleted by hand, an earlier attempt
        // that stopped half way) counts as done: a retry always succeeds.
        let applied = match (self.ovs)
            .delete_port_committed(&net.bridge, &ep.host_ifname)
            .await
        {
            Ok(applied) => Some(applied),
            Err(e) => {
                if !e.is_not_found() {
                    errors.push(e.to_string());
                }
                None
            }
        };
        self.reap_links(applied, endpoint_links(net, &ep));
        if let Some(ov) = net.overlay() {
            if let Err(e) = self.unpublish_on_gateway(net, &ov, eid).await {
                errors.push(e.to_string());
            }
            let name = ovn::port_name(eid);
            let removed = self
                .northbound(&ov.northbound)
                .remove_ports(&ov.switch, &[&name])
                .await;
            if let Err(e) = removed {
                errors.push(e.to_string());
            }
            if let Err(e) = self.remove_endpoint_names(&ov, &[eid]).await {
                errors.push(e.to_string());
            }
        }
        if !errors.is_empty() {
            return Err(DriverError::Incomplete {
                what: format!("endpoint {eid}"),
                errors,
            });
        }
        net.endpoints.remove(eid);
        info!(network = %nid, endpoint = %eid, "deleted endpoint");
        Ok(())
    }

    async fn join_inner(&self, req: api::JoinRequest) -> DriverResult<api::JoinResponse> {
        let (nid, eid) = endpoint_ids(&req.network_id, &req.endpoint_id)?;
        let mut state = self.state.lock().await;
        let DriverState { networks, fastpath } = &mut *state;
        let net = networks.get_mut(nid).ok_or_else(|| unknown_network(nid))?;
        let ep = net
            .endpoints
            .get_mut(eid)
            .ok_or_else(|| unknown_endpoint(nid, eid))?;
        if !self.netlink.exists(&ep.container_ifname).await? {
            return Err(DriverError::ContainerEndGone {
                endpoint: eid.to_string(),
                ifname: ep.container_ifname.clone(),
            });
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
        self.fast_join(fastpath, net, ep, false).await;
        let overlay = net.overlay();
        if let Some(ov) = &overlay {
            self.publish_names_later(net, ov, ep);
        }
        Ok(api::JoinResponse {
            interface_name: api::InterfaceName {
                src_name: ep.container_ifname.clone(),
                dst_prefix: "eth".into(),
            },
            gateway: net
                .container_gateway()
                .map(|g| g.to_string())
                .unwrap_or_default(),
            // A flat network's IPv6 gateway is the container's; a nat or routed
            // network's is on the bridge (`program_nat`).
            gateway_ipv6: net.ipam.gateway6.map(|g| g.to_string()).unwrap_or_default(),
            static_routes: overlay
                .map(|_| overlay_dns::dns_route())
                .into_iter()
                .collect(),
            ..Default::default()
        })
    }

    async fn endpoint_info_inner(
        &self,
        req: api::EndpointRequest,
    ) -> DriverResult<api::EndpointInfoResponse> {
        let (nid, eid) = endpoint_ids(&req.network_id, &req.endpoint_id)?;
        let state = self.state.lock().await;
        let networks = &state.networks;
        let net = networks.get(nid).ok_or_else(|| unknown_network(nid))?;
        let ep = net
            .endpoints
            .get(eid)
            .ok_or_else(|| unknown_endpoint(nid, eid))?;
        let mut value = HashMap::new();
        value.insert("bridge".into(), net.bridge.clone().into());
        value.insert("port".into(), ep.host_ifname.clone().into());
        value.insert("mac".into(), ep.mac.to_string().into());
        Ok(api::EndpointInfoResponse { value })
    }

    async fn leave_inner(&self, req: api::EndpointRequest) -> DriverResult<()> {
        let (nid, eid) = endpoint_ids(&req.network_id, &req.endpoint_id)?;
        let mut state = self.state.lock().await;
        let DriverState { networks, fastpath } = &mut *state;
        if let Some(net) = networks.get_mut(nid) {
            if let Some(ep) = net.endpoints.get(eid) {
                fast_leave(fastpath, net, ep);
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

/// Docker's calls: the driver's typed errors become `{"Err": ...}` here.
impl<S: Switch, L: Links, F: NatFastPath> NetworkDriver for Driver<S, L, F> {
    async fn create_network(&self, req: api::CreateNetworkRequest) -> ApiResult<()> {
        Ok(self.create_network_inner(req).await?)
    }
    async fn delete_network(&self, req: api::NetworkRequest) -> ApiResult<()> {
        Ok(self.delete_network_inner(req).await?)
    }
    async fn create_endpoint(
        &self,
        req: api::CreateEndpointRequest,
    ) -> ApiResult<api::CreateEndpointResponse> {
        Ok(self.create_endpoint_inner(req).await?)
    }
    async fn endpoint_info(
        &self,
        req: api::EndpointRequest,
    ) -> ApiResult<api::EndpointInfoResponse> {
        Ok(self.endpoint_info_inner(req).await?)
    }
    async fn delete_endpoint(&self, req: api::EndpointRequest) -> ApiResult<()> {
        Ok(self.delete_endpoint_inner(req).await?)
    }
    async fn join(&self, req: api::JoinRequest) -> ApiResult<api::JoinResponse> {
        Ok(self.join_inner(req).await?)
    }
    async fn program_external_connectivity(
        &self,
        req: api::ProgramExternalConnectivityRequest,
    ) -> ApiResult<()> {
        Ok(self.program_external_inner(req).await?)
    }
    async fn revoke_external_connectivity(&self, req: api::EndpointRequest) -> ApiResult<()> {
        Ok(self.unpublish_ports(req).await?)
    }
    async fn leave(&self, req: api::EndpointRequest) -> ApiResult<()> {
        Ok(self.leave_inner(req).await?)
    }
}

impl<S: Switch, L: Links, F: NatFastPath> StatusSource for Driver<S, L, F> {
    async fn status(&self) -> Status {
        let state = self.state.lock().await;
        let networks = &state.networks;
        let fast_path = (state.fastpath.get())
            .map(|fp| tokio::task::block_in_place(|| (fp.status(), fp.endpoint_names())));
        let mut out: Vec<NetworkStatus> = networks
            .values()
            .map(|n| {
                let shared_with = shared::shared_with(networks, n);
                let mut endpoints: Vec<EndpointStatus> = n
                    .endpoints
                    .values()
                    .map(|e| (e, endpoint_links(n, e)))
                    .map(|(e, links)| EndpointStatus {
                        id: e.id.clone(),
                        port: e.host_ifname.clone(),
                        mac: e.mac.to_string(),
                        address: e.address.map(|a| a.to_string()).unwrap_or_default(),
                        address_ipv6: e.address6.map(|a| a.to_string()).unwrap_or_default(),
                        published: e.published.iter().map(|p| p.to_string()).collect(),
                        fast_path: fast_path.as_ref().is_some_and(|(s, names)| {
                            names.contains(&e.host_ifname)
                                && !s.kernel_path.iter().any(|(p, _)| *p == e.host_ifname)
                        }),
                        // Under the OVS port's name, or (tc engine) the container side's.
                        kernel_path: fast_path
                            .as_ref()
                            .and_then(|(s, _)| {
                                s.kernel_path.iter().find(|(p, _)| links.contains(p))
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
                    engine: match n.options.mode {
                        Mode::NatFast => n.options.engine().to_string(),
                        _ => String::new(),
                    },
                    subnet: n.subnet_text(),
                    subnet_ipv6: n.ipam.subnet6.map(|s| s.to_string()).unwrap_or_default(),
                    gateway: n.ipam.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    datapath_type: n.datapath.to_string(),
                    trunk: trunk::trunk_status(n),
                    vlan: n.options.vlan,
                    shared_with,
                    endpoints,
                    tunnels: tunnels::tunnel_status(n),
                    names: self.name_count(&n.id),
                    dns_forwarder: n.overlay().and_then(|ov| self.dns_forwarder_status(&ov)),
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

/// The datapath type of the existing bridge `name` a network attaches to
/// (`ovs.bridge.existing`): it must be there, and carry the record of no dovesnap
/// network but those of `sharing` (this plugin's networks on it, already checked by
/// [`shared::check_share`]).
fn existing_bridge(
    name: &str,
    found: Option<ovsdb::BridgeInfo>,
    sharing: &[&Network],
) -> DriverResult<Datapath> {
    let Some(br) = found else {
        return Err(DriverError::NoExistingBridge(name.to_string()));
    };
    let other = (shared::recorded_networks(&br).into_iter())
        .find(|id| !sharing.iter().any(|n| n.id == *id));
    if let Some(other) = other {
        return Err(DriverError::ExistingBridgeInUse {
            bridge: name.to_string(),
            other: other.to_string(),
        });
    }
    Ok(Datapath::of(&br.datapath_type))
}
