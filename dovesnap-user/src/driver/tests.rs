//! The driver's mode logic on in-memory fakes of OVSDB, the host's links, the
//! firewall and the fast path: what each Docker call makes and unmakes, and that a
//! failure half way leaves nothing behind.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::backend::{FastPort, Link};
use super::*;
use crate::fastpath::{FastPathStatus, Fault, UplinkSpec as FastUplinkSpec};
use crate::firewall::PortMapping;
use crate::host::netlink::NetlinkError;
use crate::ovsdb::{BridgeInfo, OvsdbError, PortInfo, TunnelSpec};
use crate::plugin::options::NatEngine;

const NID: &str = "3f2a9c1d4e5b6a7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";
const NID2: &str = "7e6d5c4b3a291807f6e5d4c3b2a1908f7e6d5c4b3a291807f6e5d4c3b2a19080";
const EID: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// The host as the fakes see it: OVSDB's bridges and the kernel's links, shared
/// (ovs-vswitchd makes a bridge's internal interface), every call recorded.
#[derive(Default)]
struct Host {
    bridges: BTreeMap<String, BridgeInfo>,
    /// Every bridge `create_bridge` was asked for.
    created: Vec<BridgeSpec>,
    switch_ids: BTreeMap<String, String>,
    links: BTreeMap<String, FakeLink>,
    next_index: u32,
    default_route: Option<u32>,
    /// Operations that fail (by name).
    failing: HashSet<&'static str>,
    calls: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct FakeLink {
    index: u32,
    mac: Option<[u8; 6]>,
    peer: Option<String>,
    addrs: Vec<Ipv4Addr>,
    /// The links its tc patches redirect to (by ifindex).
    patched_to: Vec<u32>,
}

impl Host {
    /// Records `op` on `name`; true when it is to fail.
    fn call(&mut self, op: &'static str, name: &str) -> bool {
        self.calls.push(format!("{op} {name}"));
        self.failing.contains(op)
    }

    fn add_link(&mut self, name: &str, mac: Option<[u8; 6]>, peer: Option<&str>) -> u32 {
        self.next_index += 1;
        let link = FakeLink {
            index: self.next_index,
            mac,
            peer: peer.map(str::to_string),
            addrs: Vec::new(),
            patched_to: Vec::new(),
        };
        self.links.insert(name.to_string(), link);
        self.next_index
    }

    fn port_names(&self, bridge: &str) -> Vec<String> {
        self.bridges[bridge]
            .ports
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    fn port(&self, name: &str) -> Option<&PortInfo> {
        self.bridges
            .values()
            .flat_map(|b| &b.ports)
            .find(|p| p.name == name)
    }
}

type Shared = Arc<Mutex<Host>>;
type Nl = Result<(), NetlinkError>;

fn ovs_failure(op: &str) -> OvsdbError {
    OvsdbError::Protocol(format!("{op} failed (injected)"))
}

fn nl_failure(op: &str) -> NetlinkError {
    NetlinkError::Connect(std::io::Error::other(format!("{op} failed (injected)")))
}

struct FakeSwitch(Shared);

/// The port OVSDB shows for a tunnel.
fn tunnel_port(tunnel: &TunnelSpec) -> PortInfo {
    PortInfo {
        name: tunnel.name.clone(),
        tag: None,
        external_ids: BTreeMap::new(),
        interface_type: tunnel.kind.clone(),
        ofport: None,
        trunks: Vec::new(),
    }
}

impl Switch for FakeSwitch {
    async fn list_bridges(&self) -> Result<Vec<BridgeInfo>, OvsdbError> {
        Ok(self.0.lock().unwrap().bridges.values().cloned().collect())
    }

    async fn bridge(&self, name: &str) -> Result<Option<BridgeInfo>, OvsdbError> {
        Ok(self.0.lock().unwrap().bridges.get(name).cloned())
    }

    async fn create_bridge(&self, spec: &BridgeSpec) -> Result<(), OvsdbError> {
        let mut h = self.0.lock().unwrap();
        if h.call("create_bridge", &spec.name) {
            return Err(ovs_failure("create_bridge"));
        }
        if h.bridges.contains_key(&spec.name) {
            return Err(OvsdbError::BridgeExists(spec.name.clone()));
        }
        if let Some(taken) = spec.uplinks.iter().find(|u| h.port(&u.name).is_some()) {
            return Err(OvsdbError::PortExists(taken.name.clone()));
        }
        h.created.push(spec.clone());
        let ports = (spec.uplinks.iter())
            .map(|u| PortInfo {
                name: u.name.clone(),
                tag: u.tag,
                external_ids: BTreeMap::new(),
                interface_type: if u.patch_peer.is_some() { "patch" } else { "" }.into(),
                ofport: u.ofport,
                trunks: u.trunks.clone(),
            })
            .chain(spec.tunnels.iter().map(tunnel_port))
            .collect();
        let br = BridgeInfo {
            name: spec.name.clone(),
            datapath_type: spec.datapath_type.clone(),
            external_ids: spec.external_ids.clone(),
            ports,
        };
        h.bridges.insert(spec.name.clone(), br);
        let index = h.next_index + 1;
        h.add_link(&spec.name, Some([0x0e, 0, 0, 0, 0, index as u8]), None);
        Ok(())
    }

    async fn delete_bridge(&self, name: &str) -> Result<(), OvsdbError> {
        let mut h = self.0.lock().unwrap();
        if h.call("delete_bridge", name) {
            return Err(ovs_failure("delete_bridge"));
        }
        h.bridges
            .remove(name)
            .ok_or_else(|| OvsdbError::NoSuchBridge(name.to_string()))?;
        h.links.remove(name);
        Ok(())
    }

    async fn update_bridge_external_ids(
        &self,
        bridge: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), OvsdbError> {
        let mut h = self.0.lock().unwrap();
        if h.call("update_bridge_external_ids", bridge) {
            return Err(ovs_failure("update_bridge_external_ids"));
        }
        let br = (h.bridges.get_mut(bridge))
            .ok_or_else(|| OvsdbError::NoSuchBridge(bridge.to_string()))?;
        br.external_ids.extend(set.clone());
        br.external_ids.retain(|k, _| !remove.contains(k));
        Ok(())
    }

    async fn add_port(&self, bridge: &str, spec: &PortSpec) -> Result<(), OvsdbError> {
        let mut h = self.0.lock().unwrap();
        if h.call("add_port", &spec.name) {
            return Err(ovs_failure("add_port"));
        }
        if h.port(&spec.name).is_some() {
            return Err(OvsdbError::PortExists(spec.name.clone()));
        }
        let br = (h.bridges.get_mut(bridge))
            .ok_or_else(|| OvsdbError::NoSuchBridge(bridge.to_string()))?;
        br.ports.push(PortInfo {
            name: spec.name.clone(),
            tag: spec.tag,
            external_ids: spec.external_ids.clone(),
            interface_type: if spec.patch_peer.is_some() {
                "patch"
            } else {
                ""
            }
            .into(),
            ofport: spec.ofport,
            trunks: spec.trunks.clone(),
        });
        Ok(())
    }

    async fn set_port_trunks(
        &self,
        bridge: &str,
        port: &str,
        trunks: &[u16],
    ) -> Result<(), OvsdbError> {
        let mut h = self.0.lock().unwrap();
        if h.call("set_port_trunks", port) {
            return Err(ovs_failure("set_port_trunks"));
        }
        let p = (h
            .bridges
            .get_mut(bridge)
            .into_iter()
            .flat_map(|b| &mut b.ports))
        .find(|p| p.name == port)
        .ok_or_else(|| OvsdbError::NoSuchPort {
            bridge: bridge.to_string(),
            port: port.to_string(),
        })?;
        p.trunks = trunks.to_vec();
        Ok(())
    }

    async fn add_tunnel(&self, bridge: &str, tunnel: &TunnelSpec) -> Result<(), OvsdbError> {
        let mut h = self.0.lock().unwrap();
        if h.call("add_tunnel", &tunnel.name) {
            return Err(ovs_failure("add_tunnel"));
        }
        if h.port(&tunnel.name).is_some() {
            return Err(OvsdbError::PortExists(tunnel.name.clone()));
        }
        let br = (h.bridges.get_mut(bridge))
            .ok_or_else(|| OvsdbError::NoSuchBridge(bridge.to_string()))?;
        br.ports.push(tunnel_port(tunnel));
        Ok(())
    }

    async fn delete_port(&self, bridge: &str, port: &str) -> Result<(), OvsdbError> {
        let mut h = self.0.lock().unwrap();
        if h.call("delete_port", port) {
            return Err(ovs_failure("delete_port"));
        }
        let no_port = || OvsdbError::NoSuchPort {
            bridge: bridge.to_string(),
            port: port.to_string(),
        };
        let br = h.bridges.get_mut(bridge).ok_or_else(no_port)?;
        let at = br.ports.iter().position(|p| p.name == port);
        br.ports.remove(at.ok_or_else(no_port)?);
        Ok(())
    }

    async fn set_port_external_id(
        &self,
        port: &str,
        key: &str,
        value: &str,
    ) -> Result<(), OvsdbError> {
        let mut h = self.0.lock().unwrap();
        if h.call("set_port_external_id", port) {
            return Err(ovs_failure("set_port_external_id"));
        }
        let p = (h.bridges.values_mut().flat_map(|b| &mut b.ports))
            .find(|p| p.name == port)
            .ok_or_else(|| OvsdbError::PortGone(port.to_string()))?;
        p.external_ids.insert(key.to_string(), value.to_string());
        Ok(())
    }

    async fn switch_external_ids(&self) -> Result<BTreeMap<String, String>, OvsdbError> {
        Ok(self.0.lock().unwrap().switch_ids.clone())
    }

    async fn set_switch_external_id(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), OvsdbError> {
        let mut h = self.0.lock().unwrap();
        match value {
            Some(v) => h.switch_ids.insert(key.to_string(), v.to_string()),
            None => h.switch_ids.remove(key),
        };
        Ok(())
    }
}

struct FakeLinks(Shared);

impl Links for FakeLinks {
    async fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let h = self.0.lock().unwrap();
        Ok(h.links.get(name).map(|l| Link {
            index: l.index,
            mac: l.mac,
        }))
    }

    async fn name_of(&self, ifindex: u32) -> Result<Option<String>, NetlinkError> {
        let h = self.0.lock().unwrap();
        Ok(h.links
            .iter()
            .find(|(_, l)| l.index == ifindex)
            .map(|(n, _)| n.clone()))
    }

    async fn names_without_remote_peer(&self) -> Result<Vec<String>, NetlinkError> {
        Ok(self.0.lock().unwrap().links.keys().cloned().collect())
    }

    async fn ipv4_addresses(&self, ifindex: u32) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        let h = self.0.lock().unwrap();
        let link = h.links.values().find(|l| l.index == ifindex);
        Ok(link.map(|l| l.addrs.clone()).unwrap_or_default())
    }

    async fn default_route_interface(&self) -> Result<Option<u32>, NetlinkError> {
        Ok(self.0.lock().unwrap().default_route)
    }

    async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        mac: Option<[u8; 6]>,
        _: Option<u32>,
    ) -> Nl {
        let mut h = self.0.lock().unwrap();
        if h.call("create_veth", host) || h.links.contains_key(host) || h.links.contains_key(peer) {
            return Err(nl_failure("create_veth"));
        }
        h.add_link(host, Some([0x0e, 1, 1, 1, 1, 1]), Some(peer));
        h.add_link(peer, mac, Some(host));
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<bool, NetlinkError> {
        let mut h = self.0.lock().unwrap();
        if h.call("delete", name) {
            return Err(nl_failure("delete"));
        }
        let Some(link) = h.links.remove(name) else {
            return Ok(false);
        };
        if let Some(peer) = link.peer {
            h.links.remove(&peer);
        }
        Ok(true)
    }

    async fn set_up(&self, name: &str) -> Result<(), NetlinkError> {
        self.0.lock().unwrap().call("set_up", name);
        Ok(())
    }

    async fn set_down(&self, name: &str) -> Result<(), NetlinkError> {
        self.0.lock().unwrap().call("set_down", name);
        Ok(())
    }

    async fn set_address_up(
        &self,
        name: &str,
        addr: Ipv4Addr,
        _prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut h = self.0.lock().unwrap();
        if h.call("set_address_up", name) {
            return Err(nl_failure("set_address_up"));
        }
        let link = h
            .links
            .get_mut(name)
            .ok_or_else(|| nl_failure("set_address_up"))?;
        link.addrs.push(addr);
        Ok(())
    }

    async fn set_address6_up(
        &self,
        name: &str,
        addr: Ipv6Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut h = self.0.lock().unwrap();
        h.call("set_address6_up", &format!("{name} {addr}/{prefix}"));
        Ok(())
    }

    async fn move_to_netns(&self, name: &str, _fd: std::os::fd::RawFd) -> Result<(), NetlinkError> {
        self.0.lock().unwrap().links.remove(name);
        Ok(())
    }

    fn disable_tx_checksum(&self, name: &str) -> Result<(), NetlinkError> {
        self.0.lock().unwrap().call("disable_tx_checksum", name);
        Ok(())
    }

    fn enable_gro(&self, name: &str) -> Result<(), NetlinkError> {
        self.0.lock().unwrap().call("enable_gro", name);
        Ok(())
    }

    fn enable_ip_forward(&self) -> Result<(), FirewallError> {
        self.0.lock().unwrap().call("enable_ip_forward", "");
        Ok(())
    }

    async fn patch(&self, from: &str, to: &str) -> Nl {
        let mut h = self.0.lock().unwrap();
        if h.call("patch", from) {
            return Err(nl_failure("patch"));
        }
        let to = h.links.get(to).ok_or_else(|| nl_failure("patch"))?.index;
        let from = h.links.get_mut(from).ok_or_else(|| nl_failure("patch"))?;
        from.patched_to.push(to);
        Ok(())
    }

    async fn delete_patch(&self, name: &str) -> Nl {
        let mut h = self.0.lock().unwrap();
        h.call("delete_patch", name);
        if let Some(link) = h.links.get_mut(name) {
            link.patched_to.clear();
        }
        Ok(())
    }

    async fn patch_targets(&self, name: &str) -> Result<Option<Vec<u32>>, NetlinkError> {
        let h = self.0.lock().unwrap();
        Ok(h.links.get(name).map(|l| l.patched_to.clone()))
    }
}

/// The fast path: endpoints, uplinks and publications in memory. Refuses every
/// endpoint when started with `max_sessions: 0` (how a test makes it fail).
#[derive(Default)]
struct FakeFastPath {
    refuse: bool,
    endpoints: BTreeMap<String, EndpointSpec>,
    uplinks: BTreeMap<String, Ipv4Addr>,
    /// (uplink, port, container): `publish` takes `&self`.
    published: Mutex<Vec<(String, FastPort, Ipv4Addr)>>,
    kernel_path: BTreeMap<String, String>,
    subnets: Vec<Ipv4Net>,
    /// tc-engine endpoints by their container-side host end.
    tc_endpoints: BTreeMap<String, EndpointSpec>,
    tc_published: BTreeMap<String, Vec<FastPort>>,
    idle_tc_uplinks_released: usize,
}

impl FakeFastPath {
    /// Refuses (`refuse`) or takes the uplink in, for an endpoint of either engine.
    fn admit(&mut self, what: &'static str, up: &FastUplinkSpec) -> Result<(), FastPathError> {
        if self.refuse {
            return Err(FastPathError::Start {
                what,
                cause: std::io::Error::other("refused by the test"),
            });
        }
        self.uplinks.insert(up.name.clone(), up.addr);
        Ok(())
    }
}

impl NatFastPath for FakeFastPath {
    fn start(config: FastPathConfig) -> Result<Self, FastPathError> {
        Ok(FakeFastPath {
            refuse: config.max_sessions == 0,
            ..Default::default()
        })
    }
    fn stop(self) {}
    fn status(&self) -> FastPathStatus {
        FastPathStatus {
            kernel_path: self.kernel_path.clone().into_iter().collect(),
            ..Default::default()
        }
    }
    fn endpoint_names(&self) -> Vec<String> {
        self.endpoints.keys().cloned().collect()
    }
    fn has_endpoint(&self, host_ifname: &str) -> bool {
        self.endpoints.contains_key(host_ifname)
    }
    fn uplink_addr(&self, uplink: &str) -> Option<Ipv4Addr> {
        self.uplinks.get(uplink).copied()
    }
    fn host_subnets(&self) -> Vec<Ipv4Net> {
        self.subnets.clone()
    }
    fn follow_host_rules(&mut self, subnets: Vec<Ipv4Net>) -> Result<(), FastPathError> {
        self.subnets = subnets;
        Ok(())
    }
    fn add_endpoint(
        &mut self,
        ep: &EndpointSpec,
        up: &FastUplinkSpec,
    ) -> Result<(), FastPathError> {
        self.admit("attach the endpoint", up)?;
        self.endpoints.insert(ep.host_ifname.clone(), ep.clone());
        Ok(())
    }
    fn remove_endpoint(&mut self, host_ifname: &str) {
        self.endpoints.remove(host_ifname);
        self.kernel_path.remove(host_ifname);
    }
    fn add_tc_endpoint(
        &mut self,
        ep: &EndpointSpec,
        up: &FastUplinkSpec,
    ) -> Result<(), FastPathError> {
        self.admit("attach the tc programs", up)?;
        self.tc_endpoints.insert(ep.host_ifname.clone(), ep.clone());
        Ok(())
    }
    fn remove_tc_endpoint(&mut self, host_ifname: &str) {
        self.tc_endpoints.remove(host_ifname);
        self.tc_published.remove(host_ifname);
        self.kernel_path.remove(host_ifname);
    }
    fn release_idle_tc_uplinks(&mut self) {
        self.idle_tc_uplinks_released += 1;
    }
    fn set_tc_published(
        &mut self,
        host_ifname: &str,
        ports: &[FastPort],
    ) -> Result<(), FastPathError> {
        if self.tc_endpoints.contains_key(host_ifname) {
            self.tc_published
                .insert(host_ifname.to_string(), ports.to_vec());
        }
        Ok(())
    }
    fn set_kernel_path(&mut self, host_ifname: &str, why: String) {
        self.kernel_path.insert(host_ifname.to_string(), why);
    }
    fn publish(&self, uplink: &str, port: FastPort, ip: Ipv4Addr) -> Result<(), FastPathError> {
        let mut published = self.published.lock().unwrap();
        published.push((uplink.to_string(), port, ip));
        Ok(())
    }
    fn unpublish(&self, uplink: &str, protocol: crate::translator::Protocol, port: u16) {
        let mut published = self.published.lock().unwrap();
        published.retain(|(u, p, _)| (u.as_str(), p.0, p.1) != (uplink, protocol, port));
    }
    fn inject(&self, _fault: Fault) {}
}

/// The firewall's rules in memory.
#[derive(Default)]
struct Rules {
    networks: BTreeMap<String, NatNetwork>,
    ports: BTreeMap<(String, String), Vec<PublishedPort>>,
    /// The container's IPv6 address each endpoint's ports were published for.
    ports_ip6: BTreeMap<(String, String), Option<Ipv6Addr>>,
    fail_add_network: bool,
    fail_remove_ports: bool,
    /// How many times the endpoints' rules were looked up to be removed.
    port_removals: usize,
}

#[derive(Clone, Default)]
struct FakeFirewall(Arc<Mutex<Rules>>);

impl Firewall for FakeFirewall {
    fn add_network(&self, net: &NatNetwork) -> Result<(), FirewallError> {
        let mut r = self.0.lock().unwrap();
        r.networks.insert(net.id.clone(), net.clone());
        if r.fail_add_network {
            return Err(FirewallError::Nft {
                action: "add the network's rules".into(),
                stderr: "injected".into(),
            });
        }
        Ok(())
    }
    fn remove_network(&self, network_id: &str) -> Result<(), FirewallError> {
        let mut r = self.0.lock().unwrap();
        r.networks.remove(network_id);
        r.ports.retain(|(n, _), _| n != network_id);
        Ok(())
    }
    fn add_ports(
        &self,
        network_id: &str,
        endpoint_id: &str,
        _container_ip: Ipv4Addr,
        container_ip6: Option<Ipv6Addr>,
        ports: &[PortMapping],
    ) -> Result<Vec<PublishedPort>, FirewallError> {
        let published: Vec<PublishedPort> = ports
            .iter()
            .map(|m| PublishedPort {
                proto: m.proto,
                host_ip: m.host_ip,
                host_port: m.host_ports.map_or(0, |r| r.start()),
                container_port: m.container_ports.start(),
            })
            .collect();
        let key = (network_id.to_string(), endpoint_id.to_string());
        let mut rules = self.0.lock().unwrap();
        rules.ports_ip6.insert(key.clone(), container_ip6);
        rules.ports.insert(key, published.clone());
        Ok(published)
    }
    fn remove_ports(&self, network_id: &str, endpoint_id: &str) -> Result<(), FirewallError> {
        let key = (network_id.to_string(), endpoint_id.to_string());
        let mut rules = self.0.lock().unwrap();
        rules.port_removals += 1;
        if rules.fail_remove_ports {
            return Err(FirewallError::Nft {
                action: "withdraw the endpoint's ports".into(),
                stderr: "injected".into(),
            });
        }
        rules.ports.remove(&key);
        Ok(())
    }
    fn reconcile_keeping(&self, _: &[ExpectedNetwork], _: &[String]) -> Result<(), FirewallError> {
        Ok(())
    }
}

type TestDriver = Driver<FakeSwitch, FakeLinks, FakeFastPath>;

/// Asserts that a driver call fails with an error matching the pattern.
macro_rules! refused {
    ($call:expr, $pattern:pat $(if $guard:expr)?) => {{
        let e = $call.await.unwrap_err();
        assert!(matches!(&e, $pattern $(if $guard)?), "{e}");
    }};
}

/// A driver on fakes, and the fakes' state. The host has an uplink `eth0` (with an
/// address and the default route) and a spare interface `eth1`.
struct Rig {
    host: Shared,
    rules: Arc<Mutex<Rules>>,
    driver: TestDriver,
}

fn rig_with(config: FastPathConfig) -> Rig {
    let host = Shared::default();
    {
        let mut h = host.lock().unwrap();
        let eth0 = h.add_link("eth0", Some([0x0e, 9, 9, 9, 9, 9]), None);
        h.links.get_mut("eth0").unwrap().addrs.push(UPLINK_IP);
        h.default_route = Some(eth0);
        h.add_link("eth1", Some([0x0e, 8, 8, 8, 8, 8]), None);
    }
    let firewall = FakeFirewall::default();
    let rules = firewall.0.clone();
    let driver = TestDriver::with_backends(
        FakeSwitch(host.clone()),
        FakeLinks(host.clone()),
        Box::new(firewall),
    )
    .with_fastpath_config(config);
    Rig {
        host,
        rules,
        driver,
    }
}

fn rig() -> Rig {
    rig_with(FastPathConfig::default())
}

impl Rig {
    /// Network `nid` on VLAN `vlan` with uplink `eth1`, which must be made.
    async fn trunked_net(&self, nid: &str, vlan: u16) {
        let opts = format!("ovs.bridge.vlan={vlan}");
        self.create_network(vlan_net(nid, &opts)).await.unwrap()
    }

    /// The patch port joining network `nid` to `eth1`'s trunk bridge.
    fn trunk_patch(&self, nid: &str) -> Option<PortInfo> {
        let name = format!("ovstp0-{}", &nid[..8]);
        self.host.lock().unwrap().port(&name).cloned()
    }

    /// Another driver on the same host and rules: the plugin restarted.
    fn restarted(&self) -> TestDriver {
        TestDriver::with_backends(
            FakeSwitch(self.host.clone()),
            FakeLinks(self.host.clone()),
            Box::new(FakeFirewall(self.rules.clone())),
        )
    }

    fn fail(&self, op: &'static str) {
        self.host.lock().unwrap().failing.insert(op);
    }

    fn links(&self) -> Vec<String> {
        self.host.lock().unwrap().links.keys().cloned().collect()
    }

    /// The ports of network [`NID`]'s bridge.
    fn ports(&self) -> Vec<String> {
        self.host.lock().unwrap().port_names(&bridge_of(NID))
    }

    fn bridges(&self) -> Vec<String> {
        self.host.lock().unwrap().bridges.keys().cloned().collect()
    }

    /// Network [`NID`], which must be made.
    async fn net(&self, opts: &str, subnet: Option<&str>) {
        self.create_network(network(NID, opts, subnet))
            .await
            .unwrap()
    }

    async fn create_network(&self, req: api::CreateNetworkRequest) -> DriverResult<()> {
        self.driver.create_network_inner(req).await
    }

    async fn endpoint(
        &self,
        nid: &str,
        eid: &str,
        address: &str,
    ) -> DriverResult<api::CreateEndpointResponse> {
        self.driver
            .create_endpoint_inner(endpoint(nid, eid, address))
            .await
    }

    async fn delete_network(&self, nid: &str) -> DriverResult<()> {
        let req = api::NetworkRequest {
            network_id: nid.into(),
        };
        self.driver.delete_network_inner(req).await
    }

    fn fast<T>(&self, f: impl FnOnce(&FakeFastPath) -> T) -> T {
        let state = self.driver.state.try_lock().expect("no call under way");
        f(state.fastpath.get().expect("the fast path started"))
    }
}

fn bridge_of(nid: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", &nid[..8])
}

/// CreateNetwork with `opts` (`KEY=VALUE ...`, as after `-o`) and a /24 `subnet`
/// whose gateway is `.1`.
fn network(nid: &str, opts: &str, subnet: Option<&str>) -> api::CreateNetworkRequest {
    let generic: serde_json::Map<String, serde_json::Value> = (opts.split_whitespace())
        .map(|kv| kv.split_once('=').expect("KEY=VALUE"))
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    api::CreateNetworkRequest {
        network_id: nid.into(),
        options: Some([(api::GENERIC_OPTIONS.to_string(), json!(generic))].into()),
        ipv4_data: subnet.map(|s| {
            let gateway = s.replace(".0/", ".1/");
            vec![api::IpamData {
                pool: s.into(),
                gateway,
                ..Default::default()
            }]
        }),
        ipv6_data: None,
    }
}

fn endpoint(nid: &str, eid: &str, address: &str) -> api::CreateEndpointRequest {
    api::CreateEndpointRequest {
        network_id: nid.into(),
        endpoint_id: eid.into(),
        interface: Some(api::EndpointInterface {
            address: address.into(),
            ..Default::default()
        }),
        options: None,
    }
}

fn ids(nid: &str, eid: &str) -> api::EndpointRequest {
    api::EndpointRequest {
        network_id: nid.into(),
        endpoint_id: eid.into(),
    }
}

fn join(nid: &str, eid: &str) -> api::JoinRequest {
    api::JoinRequest {
        network_id: nid.into(),
        endpoint_id: eid.into(),
        ..Default::default()
    }
}

/// `-p HOST:CONTAINER` (TCP) as Docker sends it.
fn port_map(
    nid: &str,
    eid: &str,
    host: u16,
    container: u16,
) -> api::ProgramExternalConnectivityRequest {
    let map = json!([{"Proto": 6, "IP": "", "Port": container, "HostIP": "",
                      "HostPort": host, "HostPortEnd": host}]);
    api::ProgramExternalConnectivityRequest {
        network_id: nid.into(),
        endpoint_id: eid.into(),
        options: Some([(PORT_MAP_OPTION.to_string(), map)].into()),
    }
}

fn veths() -> (String, String) {
    records::veth_names(EID)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn flat_network_makes_its_bridge_with_its_options_and_removes_it() {
    let r = rig();
    r.net(
        "mode=flat ovs.bridge.mtu=1400 ovs.bridge.vlan=100 ovs.bridge.add_ports=eth1/5",
        None,
    )
    .await;
    let spec = r.host.lock().unwrap().created[1].clone();
    assert_eq!(spec.name, bridge_of(NID));
    assert_eq!(spec.mtu, Some(1400));
    assert_eq!(spec.uplinks.len(), 1);
    // A VLAN network reaches its uplink through the uplink's trunk bridge.
    assert_eq!(spec.uplinks[0].name, format!("ovsnp0-{}", &NID[..8]));
    assert_eq!(spec.uplinks[0].ofport, Some(5));
    assert_eq!(spec.external_ids[EXT_NETWORK_ID], NID);
    assert_eq!(spec.external_ids["dovesnap-opt-ovs.bridge.vlan"], "100");
    // A flat network has no gateway on the host, no rules and no fast path.
    assert!(r.rules.lock().unwrap().networks.is_empty());
    assert!(!r.driver.inject_fault(Fault::Panic));

    r.delete_network(NID).await.unwrap();
    assert!(r.bridges().is_empty());
    assert!(r.driver.state.lock().await.networks.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_endpoint_is_a_veth_and_a_tagged_port_until_it_is_deleted() {
    let r = rig();
    r.net("mode=flat ovs.bridge.vlan=100", Some("10.231.1.0/24"))
        .await;
    let created = r.endpoint(NID, EID, "10.231.1.2/24").await.unwrap();
    // Docker gave no MAC: the driver's, from the address, goes back to Docker.
    assert_eq!(created.interface.unwrap().mac_address, "02:42:0a:e7:01:02");
    let (host_end, container_end) = veths();
    assert!(r.links().contains(&host_end) && r.links().contains(&container_end));
    let port = r.host.lock().unwrap().port(&host_end).cloned().unwrap();
    assert_eq!(port.tag, Some(100));
    assert_eq!(port.external_ids[EXT_ENDPOINT_ID], EID);
    let record: Endpoint = serde_json::from_str(&port.external_ids[EXT_ENDPOINT]).unwrap();
    assert_eq!(record.address, "10.231.1.2/24".parse().ok());

    let joined = r.driver.join_inner(join(NID, EID)).await.unwrap();
    assert_eq!(joined.interface_name.src_name, container_end);
    assert_eq!(joined.interface_name.dst_prefix, "eth");
    assert_eq!(joined.gateway, "10.231.1.1");
    r.driver.leave_inner(ids(NID, EID)).await.unwrap();

    r.driver.delete_endpoint_inner(ids(NID, EID)).await.unwrap();
    assert!(r.ports().is_empty());
    // The veth goes after the answer; DeleteNetwork and a stop wait for it.
    r.driver.links_reaped().await;
    assert!(!r.links().contains(&host_end) && !r.links().contains(&container_end));
    // Deleting it again (Docker retries) is no error.
    r.driver.delete_endpoint_inner(ids(NID, EID)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_nat_network_gets_its_gateway_and_rules_and_loses_them_with_it() {
    let r = rig();
    r.net("mode=nat", Some("10.232.1.0/24")).await;
    let bridge = bridge_of(NID);
    let gateway = Ipv4Addr::new(10, 232, 1, 1);
    assert_eq!(r.host.lock().unwrap().links[&bridge].addrs, vec![gateway]);
    let nat = r.rules.lock().unwrap().networks[NID].clone();
    assert_eq!(nat.subnet, "10.232.1.0/24".parse().unwrap());
    assert_eq!(nat.gateway, gateway);
    assert_eq!(nat.bridge, bridge);
    assert!(nat.masquerade_ports.is_none(), "only nat-fast shares ports");

    r.delete_network(NID).await.unwrap();
    assert!(r.rules.lock().unwrap().networks.is_empty());
    assert!(r.bridges().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_routed_network_gets_its_gateway_and_unmasqueraded_rules_and_keeps_its_mode() {
    let r = rig();
    refused!(
        r.create_network(network(NID, "mode=routed", None)),
        DriverError::NatWithoutSubnet(Mode::Routed)
    );
    refused!(
        r.create_network(network(
            NID,
            "mode=routed ovs.bridge.name=br-admin ovs.bridge.existing=true",
            Some("10.238.1.0/24"),
        )),
        DriverError::Options(_)
    );
    assert!(r.bridges().is_empty());

    r.net("mode=routed", Some("10.238.1.0/24")).await;
    let gateway = Ipv4Addr::new(10, 238, 1, 1);
    assert_eq!(
        r.host.lock().unwrap().links[&bridge_of(NID)].addrs,
        vec![gateway]
    );
    let rules = r.rules.lock().unwrap().networks[NID].clone();
    assert!(rules.routed && rules.masquerade_ports.is_none());
    assert_eq!(rules.gateway, gateway);
    r.endpoint(NID, EID, "10.238.1.2/24").await.unwrap();
    r.driver
        .program_external_inner(port_map(NID, EID, 8080, 80))
        .await
        .unwrap();
    let key = (NID.to_string(), EID.to_string());
    assert!(r.rules.lock().unwrap().ports.contains_key(&key));

    let restarted = TestDriver::with_backends(
        FakeSwitch(r.host.clone()),
        FakeLinks(r.host.clone()),
        Box::new(FakeFirewall(r.rules.clone())),
    );
    assert_eq!(restarted.recover().await.unwrap(), (1, 1));
    assert_eq!(restarted.status().await.networks[0].mode, "routed");
    r.driver.delete_endpoint_inner(ids(NID, EID)).await.unwrap();
    assert!(!r.rules.lock().unwrap().ports.contains_key(&key));
    r.delete_network(NID).await.unwrap();
    assert!(r.rules.lock().unwrap().networks.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_nat_network_without_a_subnet_is_refused_before_anything_is_made() {
    let r = rig();
    refused!(
        r.create_network(network(NID, "mode=nat", None)),
        DriverError::NatWithoutSubnet(Mode::Nat)
    );
    assert!(r.bridges().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn dovesnap_ipam_is_for_overlay_networks_and_checks_before_asking_ovn() {
    use crate::plugin::ipam::{IpamDriver, RequestAddressRequest, RequestPoolRequest};
    let r = rig();
    let mut req = network(NID, "mode=nat", Some("10.32.0.0/24"));
    req.ipv4_data.as_mut().unwrap()[0].address_space = "dovesnap-ovn".into();
    refused!(
        r.create_network(req),
        DriverError::IpamNotOverlay(Mode::Nat)
    );
    assert!(r.bridges().is_empty());
    // Bad requests are refused before the northbound database is asked for anything.
    let pool = |pool: &str, v6: bool| RequestPoolRequest {
        pool: pool.into(),
        v6,
        ..Default::default()
    };
    let e = r.driver.request_pool(pool("", false)).await.unwrap_err().0;
    assert!(e.contains("needs --subnet"), "{e}");
    let e = r
        .driver
        .request_pool(pool("fd00::/64", true))
        .await
        .unwrap_err()
        .0;
    assert!(e.contains("IPv4 only"), "{e}");
    // A host that is no OVN chassis cannot take part.
    let e = r
        .driver
        .request_pool(pool("10.32.0.0/24", false))
        .await
        .unwrap_err()
        .0;
    assert!(e.contains("external_ids:ovn-remote is not set"), "{e}");
    let e = (r.driver)
        .request_address(RequestAddressRequest {
            pool_id: "10.32.0.0/24".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .0;
    assert!(e.contains("not a pool id"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_firewall_failure_takes_the_new_network_back() {
    let r = rig();
    r.rules.lock().unwrap().fail_add_network = true;
    refused!(
        r.create_network(network(NID, "mode=nat", Some("10.232.1.0/24"))),
        DriverError::Firewall(_)
    );
    assert!(r.bridges().is_empty(), "the bridge went with the network");
    assert!(!r.links().contains(&bridge_of(NID)));
    assert!(
        r.rules.lock().unwrap().networks.is_empty(),
        "rules rolled back"
    );
    assert!(r.driver.state.lock().await.networks.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_port_failure_takes_the_new_veth_back() {
    let r = rig();
    r.net("mode=flat", Some("10.231.1.0/24")).await;
    let before = r.links();
    r.fail("add_port");
    refused!(r.endpoint(NID, EID, "10.231.1.2/24"), DriverError::Ovsdb(_));
    assert_eq!(r.links(), before, "no veth end left");
    let state = r.driver.state.lock().await;
    let networks = &state.networks;
    assert!(networks[NID].endpoints.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_veth_failure_leaves_no_port() {
    let r = rig();
    r.net("mode=flat", None).await;
    r.fail("create_veth");
    refused!(r.endpoint(NID, EID, ""), DriverError::Netlink(_));
    assert!(r.ports().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn nat_fast_join_puts_the_endpoint_on_the_fast_path_and_leave_takes_it_off() {
    let r = rig();
    r.net(
        "mode=nat-fast ovs.nat.engine=xdp ovs.nat.uplink=eth0",
        Some("10.233.1.0/24"),
    )
    .await;
    let nat = r.rules.lock().unwrap().networks[NID].clone();
    assert!(
        nat.masquerade_ports.is_some(),
        "the kernel path keeps its own ports"
    );
    r.endpoint(NID, EID, "10.233.1.2/24").await.unwrap();
    let (host_end, container_end) = veths();
    let calls = r.host.lock().unwrap().calls.clone();
    assert!(
        calls.contains(&format!("disable_tx_checksum {container_end}")),
        "{calls:?}"
    );
    assert!(
        calls.contains(&format!("enable_gro {container_end}")),
        "{calls:?}"
    );

    r.driver.join_inner(join(NID, EID)).await.unwrap();
    let spec = r.fast(|fp| fp.endpoints[&host_end].clone());
    assert_eq!(spec.ip, Ipv4Addr::new(10, 233, 1, 2));
    assert_eq!(spec.mac, [0x02, 0x42, 10, 233, 1, 2]);
    assert_eq!(spec.subnet, "10.233.1.0/24".parse().unwrap());
    assert_eq!(r.fast(|fp| fp.uplinks["eth0"]), UPLINK_IP);
    assert_eq!(r.fast(|fp| fp.subnets.clone()), vec![spec.subnet]);

    // Published ports of an endpoint on the fast path are the translator's too.
    r.driver
        .program_external_inner(port_map(NID, EID, 8080, 80))
        .await
        .unwrap();
    let published = r.fast(|fp| fp.published.lock().unwrap().clone());
    let tcp = crate::translator::Protocol::Tcp;
    assert_eq!(
        published,
        vec![("eth0".to_string(), (tcp, 8080, 80), spec.ip)]
    );

    // The test hook reaches the running data plane (taking the driver's lock).
    assert!(r.driver.inject_fault(Fault::Panic));

    r.driver.leave_inner(ids(NID, EID)).await.unwrap();
    assert!(r.fast(|fp| fp.endpoints.is_empty()));
    assert!(r.fast(|fp| fp.published.lock().unwrap().is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_fast_path_failure_leaves_the_endpoint_on_the_kernel_path() {
    let r = rig_with(FastPathConfig {
        max_sessions: 0,
        ..Default::default()
    });
    r.net(
        "mode=nat-fast ovs.nat.engine=xdp ovs.nat.uplink=eth0",
        Some("10.233.1.0/24"),
    )
    .await;
    r.endpoint(NID, EID, "10.233.1.2/24").await.unwrap();
    // Fail-open: the join succeeds, the endpoint is on the kernel's nat path.
    r.driver.join_inner(join(NID, EID)).await.unwrap();
    let (host_end, _) = veths();
    assert!(r.fast(|fp| fp.endpoints.is_empty()));
    let why = r.fast(|fp| fp.kernel_path[&host_end].clone());
    assert!(why.contains("refused by the test"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_tc_attach_failure_leaves_the_endpoint_on_the_kernel_path() {
    let r = rig_with(FastPathConfig {
        max_sessions: 0,
        ..Default::default()
    });
    r.net(TC_NET, Some("10.233.1.0/24")).await;
    r.endpoint(NID, EID, "10.233.1.2/24").await.unwrap();
    r.driver.join_inner(join(NID, EID)).await.unwrap();
    let (tc_end, _) = split();
    assert!(r.fast(|fp| fp.tc_endpoints.is_empty()));
    let why = r.fast(|fp| fp.kernel_path[&tc_end].clone());
    assert!(why.contains("refused by the test"), "{why}");
    // The status says why on the endpoint itself.
    let status = r.driver.status().await;
    let shown = &status.networks[0].endpoints[0].kernel_path;
    assert!(shown.contains("refused by the test"), "{shown}");
    // Leaving clears the reason with the endpoint.
    r.driver.leave_inner(ids(NID, EID)).await.unwrap();
    assert!(r.fast(|fp| fp.kernel_path.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn nat_fast_needs_a_usable_uplink() {
    let r = rig();
    let no_such = "mode=nat-fast ovs.nat.uplink=eth9";
    refused!(
        r.create_network(network(NID, no_such, Some("10.233.1.0/24"))),
        DriverError::NoSuchUplink(n) if n == "eth9"
    );
    let no_address = "mode=nat-fast ovs.nat.uplink=eth1";
    refused!(
        r.create_network(network(NID, no_address, Some("10.233.1.0/24"))),
        DriverError::UplinkWithoutAddress(n) if n == "eth1"
    );
    // Without ovs.nat.uplink, the default route's interface; without ovs.nat.engine,
    // the default engine, recorded: a later default does not change the network.
    r.net("mode=nat-fast", Some("10.233.1.0/24")).await;
    {
        let state = r.driver.state.lock().await;
        let options = &state.networks[NID].options;
        assert_eq!(options.nat_uplink.as_deref(), Some("eth0"));
        assert_eq!(options.nat_engine, Some(NatEngine::Tc));
    }
    let restarted = r.restarted();
    restarted.recover().await.unwrap();
    let state = restarted.state.lock().await;
    assert_eq!(state.networks[NID].options.engine(), NatEngine::Tc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn published_ports_are_recorded_and_revoked() {
    let r = rig();
    r.net("mode=nat", Some("10.232.1.0/24")).await;
    r.endpoint(NID, EID, "10.232.1.2/24").await.unwrap();
    r.driver
        .program_external_inner(port_map(NID, EID, 8080, 80))
        .await
        .unwrap();
    let key = (NID.to_string(), EID.to_string());
    assert_eq!(r.rules.lock().unwrap().ports[&key][0].host_port, 8080);
    let (host_end, _) = veths();
    let record = r.host.lock().unwrap().port(&host_end).unwrap().external_ids[EXT_ENDPOINT].clone();
    let record: Endpoint = serde_json::from_str(&record).unwrap();
    assert_eq!(
        record.published.len(),
        1,
        "the port's record holds the publication"
    );

    r.driver.unpublish_ports(ids(NID, EID)).await.unwrap();
    assert!(!r.rules.lock().unwrap().ports.contains_key(&key));
    let record = r.host.lock().unwrap().port(&host_end).unwrap().external_ids[EXT_ENDPOINT].clone();
    assert!(!record.contains("published"), "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn delete_endpoint_withdraws_only_ports_still_published() {
    let r = rig();
    r.net("mode=nat", Some("10.232.1.0/24")).await;
    r.endpoint(NID, EID, "10.232.1.2/24").await.unwrap();
    // Nothing published: no rule to look for (a listing costs a process).
    r.driver.delete_endpoint_inner(ids(NID, EID)).await.unwrap();
    assert_eq!(r.rules.lock().unwrap().port_removals, 0);

    // Published, and the revoke failed: DeleteEndpoint withdraws them.
    r.endpoint(NID, EID, "10.232.1.2/24").await.unwrap();
    r.driver
        .program_external_inner(port_map(NID, EID, 8080, 80))
        .await
        .unwrap();
    r.rules.lock().unwrap().fail_remove_ports = true;
    assert!(r.driver.unpublish_ports(ids(NID, EID)).await.is_err());
    r.rules.lock().unwrap().fail_remove_ports = false;
    r.driver.delete_endpoint_inner(ids(NID, EID)).await.unwrap();
    let key = (NID.to_string(), EID.to_string());
    assert!(!r.rules.lock().unwrap().ports.contains_key(&key));

    // A record that could not be written after publishing, nor the rules withdrawn:
    // still remembered, so DeleteEndpoint withdraws them.
    r.endpoint(NID, EID, "10.232.1.2/24").await.unwrap();
    r.rules.lock().unwrap().fail_remove_ports = true;
    r.fail("set_port_external_id");
    assert!(r
        .driver
        .program_external_inner(port_map(NID, EID, 8080, 80))
        .await
        .is_err());
    r.host.lock().unwrap().failing.clear();
    r.rules.lock().unwrap().fail_remove_ports = false;
    assert!(r.rules.lock().unwrap().ports.contains_key(&key));
    r.driver.delete_endpoint_inner(ids(NID, EID)).await.unwrap();
    assert!(!r.rules.lock().unwrap().ports.contains_key(&key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn duplicate_and_unknown_ids_are_typed_refusals() {
    let r = rig();
    let flat = || network(NID, "mode=flat", Some("10.231.1.0/24"));
    r.create_network(flat()).await.unwrap();
    refused!(
        r.create_network(flat()),
        DriverError::NetworkExists(id) if id == NID
    );
    r.endpoint(NID, EID, "").await.unwrap();
    refused!(
        r.endpoint(NID, EID, ""),
        DriverError::EndpointExists(id) if id == EID
    );
    refused!(
        r.driver.join_inner(join(NID2, EID)),
        DriverError::UnknownNetwork(id) if id == NID2
    );
    refused!(
        r.driver.join_inner(join(NID, NID2)),
        DriverError::UnknownEndpoint { .. }
    );
    refused!(
        r.driver.join_inner(join("../etc", EID)),
        DriverError::InvalidId {
            what: "network",
            ..
        }
    );
    refused!(
        r.endpoint(NID, NID2, "10.231.1.2"),
        DriverError::BadAddress(_)
    );
    // Two networks on one bridge name.
    let named = |nid| network(nid, "mode=flat ovs.bridge.name=br-x", None);
    r.create_network(named(NID2)).await.unwrap();
    refused!(
        r.create_network(named(&NID2.replace('7', "1"))),
        DriverError::BridgeShared { .. }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn docker_sees_the_same_messages_at_the_edge() {
    let r = rig();
    let flat = || network(NID, "mode=flat", None);
    NetworkDriver::create_network(&r.driver, flat())
        .await
        .unwrap();
    let e = NetworkDriver::create_network(&r.driver, flat())
        .await
        .unwrap_err();
    assert_eq!(e.0, format!("network {NID} already exists"));
    let e = NetworkDriver::join(&r.driver, join(NID2, EID))
        .await
        .unwrap_err();
    assert!(e.0.contains("is not known to dovesnap"), "{e}");
}

/// An administrator's bridge `name` with a port of theirs, `admin0`.
fn admin_bridge(name: &str) -> BridgeInfo {
    BridgeInfo {
        name: name.into(),
        datapath_type: "system".into(),
        external_ids: BTreeMap::new(),
        ports: vec![PortInfo {
            name: "admin0".into(),
            tag: None,
            external_ids: BTreeMap::new(),
            interface_type: String::new(),
            ofport: Some(1),
            trunks: Vec::new(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_existing_bridge_is_attached_to_and_never_deleted() {
    let r = rig();
    (r.host.lock().unwrap().bridges).insert("br-admin".into(), admin_bridge("br-admin"));
    let opts = "mode=flat ovs.bridge.name=br-admin ovs.bridge.existing=true";
    r.net(opts, None).await;
    assert!(r.host.lock().unwrap().created.is_empty(), "no bridge made");
    let ids_now = r.host.lock().unwrap().bridges["br-admin"]
        .external_ids
        .clone();
    assert_eq!(ids_now[EXT_ATTACHED_NETWORK_ID], NID);
    assert!(!ids_now.contains_key(EXT_NETWORK_ID));
    r.endpoint(NID, EID, "").await.unwrap();
    // A second network may not take the bridge.
    refused!(
        r.create_network(network(NID2, opts, None)),
        DriverError::BridgeShared { .. }
    );

    // Docker deletes the endpoints first; a network deleted with an endpoint left
    // (a plugin restarted meanwhile, a forced removal) takes its port off too.
    let second = "0123456789ab0123456789ab0123456789ab0123456789ab0123456789ab0123";
    r.endpoint(NID, second, "").await.unwrap();
    r.driver.delete_endpoint_inner(ids(NID, EID)).await.unwrap();
    r.delete_network(NID).await.unwrap();
    let h = r.host.lock().unwrap();
    let br = &h.bridges["br-admin"];
    assert!(
        br.external_ids.is_empty(),
        "the record left: {:?}",
        br.external_ids
    );
    assert_eq!(h.port_names("br-admin"), vec!["admin0".to_string()]);
    assert!(!h.calls.iter().any(|c| c.starts_with("delete_bridge")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_existing_bridge_must_exist_and_a_foreign_one_is_not_taken() {
    let r = rig();
    let existing = "mode=flat ovs.bridge.name=br-none ovs.bridge.existing=true";
    refused!(
        r.create_network(network(NID, existing, None)),
        DriverError::NoExistingBridge(b) if b == "br-none"
    );
    r.net("mode=flat", None).await;
    // Another driver (a plugin that lost its table) finds the bridge foreign.
    let other = TestDriver::with_backends(
        FakeSwitch(r.host.clone()),
        FakeLinks(r.host.clone()),
        Box::new(FakeFirewall::default()),
    );
    let opts = format!("mode=flat ovs.bridge.name={}", bridge_of(NID));
    refused!(
        other.create_network_inner(network(NID2, &opts, None)),
        DriverError::BridgeNotOurs(_)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_failed_teardown_reports_every_error_and_keeps_the_network_for_a_retry() {
    let r = rig();
    r.net("mode=flat", None).await;
    r.endpoint(NID, EID, "").await.unwrap();
    r.fail("delete");
    r.fail("delete_bridge");
    let e = r.delete_network(NID).await.unwrap_err();
    let DriverError::Incomplete { errors, .. } = &e else {
        panic!("{e}");
    };
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(r.driver.state.lock().await.networks.contains_key(NID));
    r.host.lock().unwrap().failing.clear();
    r.delete_network(NID).await.unwrap();
    assert!(r.bridges().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_restarted_driver_recovers_its_networks_from_the_switch() {
    let r = rig();
    r.net("mode=nat", Some("10.232.1.0/24")).await;
    r.endpoint(NID, EID, "10.232.1.2/24").await.unwrap();
    let restarted = r.restarted();
    assert_eq!(restarted.recover().await.unwrap(), (1, 1));
    let status = restarted.status().await;
    let net = &status.networks[0];
    assert_eq!(net.subnet, "10.232.1.0/24");
    assert_eq!(net.endpoints[0].address, "10.232.1.2/24");
    assert_eq!(net.endpoints[0].mac, "02:42:0a:e8:01:02");
    restarted.join_inner(join(NID, EID)).await.unwrap();
}

/// [`endpoint`] 10.231.1.2/24 with the IPv6 address `address6` (as Docker sends it).
fn endpoint6(address6: &str) -> api::CreateEndpointRequest {
    api::CreateEndpointRequest {
        interface: Some(api::EndpointInterface {
            address: "10.231.1.2/24".into(),
            address_ipv6: address6.into(),
            ..Default::default()
        }),
        ..endpoint(NID, EID, "10.231.1.2/24")
    }
}

/// `network` with Docker's IPv6 pool as `--ipv6 --subnet fd31:1::/64` gives it.
fn network6(opts: &str) -> api::CreateNetworkRequest {
    api::CreateNetworkRequest {
        ipv6_data: Some(vec![api::IpamData {
            pool: "fd31:1::/64".into(),
            gateway: "fd31:1::1/64".into(),
            ..Default::default()
        }]),
        ..network(NID, opts, Some("10.231.1.0/24"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn nat_and_routed_networks_carry_ipv6_through_their_gateway() {
    for mode in ["nat", "routed"] {
        let r = rig();
        r.create_network(network6(&format!("mode={mode}")))
            .await
            .unwrap();
        let gateway6: Ipv6Addr = "fd31:1::1".parse().unwrap();
        let nat = r.rules.lock().unwrap().networks[NID].clone();
        assert_eq!(
            nat.ipv6,
            Some(Nat6 {
                subnet: "fd31:1::/64".parse().unwrap(),
                gateway: gateway6,
            }),
            "{mode}"
        );
        let bridge = bridge_of(NID);
        let calls = r.host.lock().unwrap().calls.clone();
        assert!(
            calls.contains(&format!("set_address6_up {bridge} fd31:1::1/64")),
            "{mode}: {calls:?}"
        );
        r.driver
            .create_endpoint_inner(endpoint6("fd31:1::2/64"))
            .await
            .unwrap();
        let joined = r.driver.join_inner(join(NID, EID)).await.unwrap();
        assert_eq!(joined.gateway, "10.231.1.1");
        assert_eq!(joined.gateway_ipv6, gateway6.to_string(), "{mode}");
        // A re-made bridge port (no addresses) gets both gateways back.
        {
            let mut host = r.host.lock().unwrap();
            host.links.get_mut(&bridge).unwrap().addrs.clear();
            host.calls.clear();
        }
        r.driver.reconcile().await;
        let calls = r.host.lock().unwrap().calls.clone();
        assert!(
            calls.contains(&format!("set_address6_up {bridge} fd31:1::1/64")),
            "{mode}: {calls:?}"
        );
        r.driver
            .program_external_inner(port_map(NID, EID, 8080, 80))
            .await
            .unwrap();
        let key = (NID.to_string(), EID.to_string());
        assert_eq!(
            r.rules.lock().unwrap().ports_ip6[&key],
            Some("fd31:1::2".parse().unwrap()),
            "{mode}: the ports reach the container's IPv6 address too"
        );
        r.driver.delete_endpoint_inner(ids(NID, EID)).await.unwrap();
        r.delete_network(NID).await.unwrap();
        assert!(r.rules.lock().unwrap().networks.is_empty());
        assert!(r.bridges().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_flat_network_carries_ipv6_and_records_it() {
    let r = rig();
    r.create_network(network6("mode=flat")).await.unwrap();
    let spec = r.host.lock().unwrap().created[0].clone();
    let ipam: Ipam = serde_json::from_str(&spec.external_ids[EXT_NETWORK_IPAM]).unwrap();
    assert_eq!(ipam.subnet6, "fd31:1::/64".parse().ok());
    assert_eq!(ipam.gateway6, "fd31:1::1".parse().ok());
    r.driver
        .create_endpoint_inner(endpoint6("fd31:1::2/64"))
        .await
        .unwrap();
    let (host_end, _) = veths();
    let port = r.host.lock().unwrap().port(&host_end).cloned().unwrap();
    let record: Endpoint = serde_json::from_str(&port.external_ids[EXT_ENDPOINT]).unwrap();
    assert_eq!(record.address6, "fd31:1::2/64".parse().ok());
    let joined = r.driver.join_inner(join(NID, EID)).await.unwrap();
    assert_eq!(joined.gateway, "10.231.1.1");
    assert_eq!(joined.gateway_ipv6, "fd31:1::1");
    let status = r.driver.status().await;
    assert_eq!(status.networks[0].subnet_ipv6, "fd31:1::/64");
    assert_eq!(status.networks[0].endpoints[0].address_ipv6, "fd31:1::2/64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn ipv6_on_other_modes_and_bad_ipv6_input_are_refused_before_anything_is_made() {
    let r = rig();
    let err = r
        .create_network(network6("mode=overlay"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DriverError::Ipv6 { pool, .. } if pool == "fd31:1::/64"),
        "{err:?}"
    );
    assert!(err.to_string().contains("overlay networks"), "{err}");
    // A mode with a gateway needs an IPv6 gateway inside a subnet of /48 to /126.
    let with_pool = |mode: &str, pool: &str, gateway: &str| {
        let mut req = network6(&format!("mode={mode}"));
        let data = &mut req.ipv6_data.as_mut().unwrap()[0];
        data.pool = pool.into();
        data.gateway = gateway.into();
        req
    };
    refused!(
        r.create_network(with_pool("nat", "fd31:1::/64", "")),
        DriverError::NoGateway6 { .. }
    );
    for (mode, pool, gateway, expected) in [
        ("nat", "fd31:1::/64", "fd31:2::1", "outside the subnet"),
        (
            "routed",
            "fd31::/32",
            "fd31::1",
            "prefix outside /48 to /126",
        ),
        ("nat-fast", "fd31:1::/127", "fd31:1::1", "prefix outside"),
    ] {
        let err = r
            .create_network(with_pool(mode, pool, gateway))
            .await
            .unwrap_err();
        assert!(matches!(&err, DriverError::BadIpv6 { .. }), "{err:?}");
        assert!(err.to_string().contains(expected), "{mode} {pool}: {err}");
    }
    assert!(r.bridges().is_empty());
    let mut bad = network6("mode=flat");
    bad.ipv6_data.as_mut().unwrap()[0].pool = "fd31:1::/129".into();
    refused!(r.create_network(bad), DriverError::BadPool6(_));
    assert!(r.bridges().is_empty());
    assert!(r.rules.lock().unwrap().networks.is_empty());

    r.create_network(network6("mode=flat")).await.unwrap();
    refused!(
        r.driver.create_endpoint_inner(endpoint6("fd31:1::2")),
        DriverError::BadAddress6(_)
    );
    let (host_end, container_end) = veths();
    assert!(r.ports().is_empty());
    assert!(!r.links().contains(&host_end) && !r.links().contains(&container_end));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_existing_bridge_made_again_is_attached_to_again() {
    let r = rig();
    let admin_bridge = || BridgeInfo {
        name: "br-admin".into(),
        datapath_type: "system".into(),
        external_ids: BTreeMap::new(),
        ports: vec![],
    };
    r.host
        .lock()
        .unwrap()
        .bridges
        .insert("br-admin".into(), admin_bridge());
    r.net(
        "mode=flat ovs.bridge.name=br-admin ovs.bridge.existing=true",
        None,
    )
    .await;
    r.endpoint(NID, EID, "").await.unwrap();
    let (host_end, _) = veths();

    // The administrator deletes the bridge: the reconciler does not make it again.
    r.host.lock().unwrap().bridges.remove("br-admin");
    r.driver.reconcile().await;
    assert!(r.bridges().is_empty(), "an existing bridge was re-created");

    // They make it again: the network attaches to it, and its port comes back.
    r.host
        .lock()
        .unwrap()
        .bridges
        .insert("br-admin".into(), admin_bridge());
    r.driver.reconcile().await;
    let h = r.host.lock().unwrap();
    let br = &h.bridges["br-admin"];
    assert_eq!(br.external_ids[EXT_ATTACHED_NETWORK_ID], NID);
    assert_eq!(h.port_names("br-admin"), vec![host_end]);
    assert!(h.created.is_empty(), "no bridge made by dovesnap");
}

const NID3: &str = "5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b";

/// The uplink port of `eth1`'s trunk bridge: its VLANs, or None without a trunk bridge.
fn eth1_trunks(r: &Rig) -> Option<Vec<u16>> {
    let h = r.host.lock().unwrap();
    let trunk = h.bridges.get("ovstk-eth1")?;
    assert_eq!(trunk.external_ids[EXT_TRUNK_UPLINK], "eth1");
    Some(
        trunk
            .ports
            .iter()
            .find(|p| p.name == "eth1")?
            .trunks
            .clone(),
    )
}

fn vlan_net(nid: &str, vlan: &str) -> api::CreateNetworkRequest {
    let opts = format!("mode=flat ovs.bridge.add_ports=eth1 {vlan}");
    network(nid, &opts, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn vlan_networks_share_an_uplink_through_its_trunk_bridge() {
    let r = rig();
    r.trunked_net(NID, 100).await;
    assert_eq!(eth1_trunks(&r), Some(vec![100]));
    r.trunked_net(NID2, 200).await;
    assert_eq!(eth1_trunks(&r), Some(vec![100, 200]));
    {
        let h = r.host.lock().unwrap();
        // Each network joins the trunk by a patch pair, both ends on its VLAN.
        let theirs = h.port(&format!("ovstp0-{}", &NID2[..8])).unwrap();
        assert_eq!(
            (theirs.tag, theirs.interface_type.as_str()),
            (Some(200), "patch")
        );
        assert_eq!(theirs.external_ids[EXT_TRUNK_NETWORK], NID2);
        let ours = h.port(&format!("ovsnp0-{}", &NID2[..8])).unwrap();
        assert_eq!(
            (ours.tag, ours.interface_type.as_str()),
            (Some(200), "patch")
        );
        assert!(h.port_names(&bridge_of(NID2)).contains(&ours.name));
    }
    let status = r.driver.status().await;
    let shown: Vec<&str> = status.networks.iter().map(|n| n.trunk.as_str()).collect();
    assert!(shown.contains(&"ovstk-eth1:eth1/200"), "{shown:?}");

    // Refusals name the other network and change nothing.
    let before = r.bridges();
    let refusals = [
        ("ovs.bridge.vlan=100", "with VLAN 100"),
        ("", "without ovs.bridge.vlan takes its uplink whole"),
    ];
    for (opts, says) in refusals {
        let e = r.create_network(vlan_net(NID3, opts)).await.unwrap_err();
        assert!(matches!(&e, DriverError::UplinkShared { .. }), "{e}");
        assert!(e.to_string().contains(says), "{opts}: {e}");
        assert!(e.to_string().contains("which network"), "{e}");
    }
    assert_eq!(r.bridges(), before);
    assert_eq!(eth1_trunks(&r), Some(vec![100, 200]));

    // One network out: the other keeps the trunk and its VLAN.
    r.delete_network(NID).await.unwrap();
    assert_eq!(eth1_trunks(&r), Some(vec![200]));
    assert!(r.trunk_patch(NID).is_none());
    // The last one out: the trunk bridge goes, and the uplink with it is the host's again.
    r.delete_network(NID2).await.unwrap();
    assert!(r.bridges().is_empty(), "{:?}", r.bridges());
    // An untagged network may take it whole now, and then keeps it to itself.
    r.create_network(vlan_net(NID3, "")).await.unwrap();
    assert!(r
        .host
        .lock()
        .unwrap()
        .port_names(&bridge_of(NID3))
        .contains(&"eth1".to_string()));
    let e = r
        .create_network(vlan_net(NID, "ovs.bridge.vlan=100"))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("without a VLAN, which takes the whole uplink"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_failed_trunk_join_takes_back_what_it_did() {
    let r = rig();
    r.trunked_net(NID, 100).await;
    let before = r.bridges();
    // The trunk widened and the patch port added, then the network's bridge fails.
    r.fail("create_bridge");
    refused!(
        r.create_network(vlan_net(NID2, "ovs.bridge.vlan=200")),
        DriverError::Ovsdb(_)
    );
    assert_eq!(eth1_trunks(&r), Some(vec![100]));
    assert!(r.trunk_patch(NID2).is_none());
    r.host.lock().unwrap().failing.clear();
    // The patch port fails on a new trunk bridge: the trunk bridge goes again.
    r.delete_network(NID).await.unwrap();
    r.fail("add_port");
    refused!(
        r.create_network(vlan_net(NID2, "ovs.bridge.vlan=200")),
        DriverError::Ovsdb(_)
    );
    assert!(r.bridges().is_empty(), "{:?}", r.bridges());
    assert_eq!(before.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_reconciler_and_a_restart_keep_the_trunk() {
    let r = rig();
    r.trunked_net(NID, 100).await;
    r.trunked_net(NID2, 200).await;
    // Deleted behind dovesnap's back: the trunk bridge (with the uplink and both patch
    // ports), and a network's own patch port.
    {
        let mut h = r.host.lock().unwrap();
        h.bridges.remove("ovstk-eth1");
        let own = h.bridges.get_mut(&bridge_of(NID)).unwrap();
        own.ports.retain(|p| !p.name.starts_with("ovsnp"));
    }
    r.driver.reconcile().await;
    assert_eq!(eth1_trunks(&r), Some(vec![100, 200]));
    {
        let h = r.host.lock().unwrap();
        for nid in [NID, NID2] {
            assert!(h.port(&format!("ovstp0-{}", &nid[..8])).is_some());
            assert!(h.port(&format!("ovsnp0-{}", &nid[..8])).is_some());
        }
    }
    let repairs = r.driver.repairs();
    assert!(repairs.contains(&("trunk".to_string(), 4)), "{repairs:?}");
    // Someone narrows the uplink's VLANs: put right.
    r.driver
        .ovs
        .set_port_trunks("ovstk-eth1", "eth1", &[100])
        .await
        .unwrap();
    r.driver.reconcile().await;
    assert_eq!(eth1_trunks(&r), Some(vec![100, 200]));

    // A restarted plugin finds the networks in their bridges' records and removes
    // the trunk with the last of them.
    let restarted = r.restarted();
    assert_eq!(restarted.recover().await.unwrap(), (2, 0));
    for nid in [NID, NID2] {
        let req = api::NetworkRequest {
            network_id: nid.into(),
        };
        restarted.delete_network_inner(req).await.unwrap();
    }
    assert!(r.bridges().is_empty(), "{:?}", r.bridges());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_vlan_network_of_an_earlier_version_keeps_its_uplink_until_deleted() {
    let r = rig();
    r.trunked_net(NID, 100).await;
    // As earlier versions made it: the uplink on the network's own bridge, no trunk.
    {
        let mut h = r.host.lock().unwrap();
        let mut uplink = h.bridges.remove("ovstk-eth1").unwrap().ports.remove(0);
        uplink.trunks.clear();
        let own = h.bridges.get_mut(&bridge_of(NID)).unwrap();
        own.ports = vec![uplink];
    }
    let old = r.restarted();
    assert_eq!(old.recover().await.unwrap(), (1, 0));
    old.reconcile().await;
    assert_eq!(r.bridges(), vec![bridge_of(NID)], "no trunk made for it");
    let e = old
        .create_network_inner(vlan_net(NID2, "ovs.bridge.vlan=200"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DriverError::UplinkInUse { bridge, .. } if *bridge == bridge_of(NID)),
        "{e}"
    );
    let req = |nid: &str| api::NetworkRequest {
        network_id: nid.into(),
    };
    old.delete_network_inner(req(NID)).await.unwrap();
    assert!(r.bridges().is_empty(), "{:?}", r.bridges());
    old.create_network_inner(vlan_net(NID2, "ovs.bridge.vlan=200"))
        .await
        .unwrap();
    assert!(eth1_trunks(&r).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn uplinks_on_foreign_bridges_are_refused_before_anything_is_made() {
    let r = rig();
    let foreign = |name: &str, port: Option<&str>| BridgeInfo {
        name: name.into(),
        datapath_type: "netdev".into(),
        external_ids: BTreeMap::new(),
        ports: (port.iter())
            .map(|p| PortInfo {
                name: p.to_string(),
                tag: None,
                external_ids: BTreeMap::new(),
                interface_type: String::new(),
                ofport: None,
                trunks: Vec::new(),
            })
            .collect(),
    };
    let add = |b: BridgeInfo| r.host.lock().unwrap().bridges.insert(b.name.clone(), b);
    add(foreign("br-admin", Some("eth1")));
    for vlan in ["", "ovs.bridge.vlan=100"] {
        let e = r.create_network(vlan_net(NID, vlan)).await.unwrap_err();
        assert!(
            matches!(&e, DriverError::UplinkInUse { bridge, .. } if bridge == "br-admin"),
            "{e}"
        );
        assert!(
            e.to_string().contains("ovs-vsctl del-port br-admin eth1"),
            "{e}"
        );
    }
    r.host.lock().unwrap().bridges.clear();
    add(foreign("ovstk-eth1", None));
    refused!(
        r.create_network(vlan_net(NID, "ovs.bridge.vlan=100")),
        DriverError::TrunkBridgeNotOurs { .. }
    );
    assert_eq!(r.bridges(), vec!["ovstk-eth1".to_string()]);
    r.host.lock().unwrap().bridges.clear();

    let names: Vec<String> = (0..11).map(|i| format!("up{i}")).collect();
    for n in &names {
        r.host.lock().unwrap().add_link(n, None, None);
    }
    let opts = format!("ovs.bridge.vlan=5 ovs.bridge.add_ports={}", names.join(","));
    refused!(
        r.create_network(network(NID, &opts, None)),
        DriverError::TooManyTrunkUplinks(11)
    );
    assert!(r.bridges().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_trunk_left_by_a_crash_does_not_keep_a_gone_networks_vlan() {
    let r = rig();
    r.trunked_net(NID, 100).await;
    // The plugin died between deleting the network's bridge and leaving the trunk:
    // a restarted one finds no network, but the trunk with its patch port.
    r.host.lock().unwrap().bridges.remove(&bridge_of(NID));
    let restarted = r.restarted();
    assert_eq!(restarted.recover().await.unwrap(), (0, 0));
    let create = vlan_net(NID2, "ovs.bridge.vlan=200");
    restarted.create_network_inner(create).await.unwrap();
    assert_eq!(
        eth1_trunks(&r),
        Some(vec![200]),
        "the gone network's VLAN stays off"
    );
    let req = api::NetworkRequest {
        network_id: NID2.into(),
    };
    restarted.delete_network_inner(req).await.unwrap();
    assert!(r.bridges().is_empty(), "{:?}", r.bridges());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn tunnels_are_made_with_the_bridge_repaired_and_shown() {
    let r = rig();
    r.net(
        "mode=flat ovs.bridge.tunnels=vxlan:198.18.78.2:4242,gre:[2001:db8::2]",
        Some("10.241.0.0/24"),
    )
    .await;
    let (vxlan, gre) = ("vxl3f2a9c1d0".to_string(), "gre3f2a9c1d1".to_string());
    let spec = r.host.lock().unwrap().created[0].clone();
    assert_eq!(
        spec.tunnels,
        vec![
            TunnelSpec {
                name: vxlan.clone(),
                kind: "vxlan".into(),
                remote_ip: "198.18.78.2".parse().unwrap(),
                key: Some(4242),
            },
            TunnelSpec {
                name: gre.clone(),
                kind: "gre".into(),
                remote_ip: "2001:db8::2".parse().unwrap(),
                key: None,
            },
        ]
    );
    // No MTU given: 1500 less the largest overhead (GRE over IPv6, 58 bytes).
    assert_eq!(spec.mtu, Some(1442));
    assert_eq!(
        spec.external_ids["dovesnap-opt-ovs.bridge.tunnels"],
        "vxlan:198.18.78.2:4242,gre:[2001:db8::2]"
    );
    let status = r.driver.status().await;
    assert_eq!(
        status.networks[0].tunnels,
        vec![
            format!("{vxlan}: vxlan:198.18.78.2:4242"),
            format!("{gre}: gre:[2001:db8::2]")
        ]
    );

    // A tunnel port deleted by hand comes back with the next pass; the other stays.
    r.host.lock().unwrap().failing.clear();
    let bridge = bridge_of(NID);
    r.driver.ovs.delete_port(&bridge, &vxlan).await.unwrap();
    r.driver.reconcile().await;
    let mut ports = r.ports();
    ports.sort();
    assert_eq!(ports, vec![gre.clone(), vxlan.clone()]);
    assert_eq!(r.driver.repairs(), vec![("tunnel".to_string(), 1)]);
    let calls = r.host.lock().unwrap().calls.clone();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("add_tunnel")).count(),
        1,
        "{calls:?}"
    );

    // A bridge deleted by hand is made again with its tunnels, in one transaction.
    r.host.lock().unwrap().bridges.remove(&bridge);
    r.driver.reconcile().await;
    let remade = r.host.lock().unwrap().created.last().cloned().unwrap();
    assert_eq!(remade.tunnels, spec.tunnels);
    let mut ports = r.ports();
    ports.sort();
    assert_eq!(ports, vec![gre.clone(), vxlan.clone()]);

    // A restarted daemon reads them back from the record and names them the same.
    let restarted = TestDriver::with_backends(
        FakeSwitch(r.host.clone()),
        FakeLinks(r.host.clone()),
        Box::new(FakeFirewall(r.rules.clone())),
    );
    assert_eq!(restarted.recover().await.unwrap(), (1, 0));
    assert_eq!(
        restarted.status().await.networks[0].tunnels,
        status.networks[0].tunnels
    );

    // They go with the bridge.
    r.delete_network(NID).await.unwrap();
    assert!(r.bridges().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn bad_tunnels_are_refused_before_anything_is_made() {
    let r = rig();
    for opts in [
        "mode=flat ovs.bridge.tunnels=vxlan:198.18.78.2:16777216",
        "mode=nat ovs.bridge.tunnels=vxlan:198.18.78.2",
        "mode=flat ovs.bridge.tunnels=vxlan:198.18.78.2,geneve:198.18.78.2",
    ] {
        let e = r
            .create_network(network(NID, opts, Some("10.241.0.0/24")))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid ovs.bridge.tunnels"), "{e}");
    }
    assert!(r.bridges().is_empty());
    assert!(r.host.lock().unwrap().created.is_empty());
}

const TC_NET: &str = "mode=nat-fast ovs.nat.uplink=eth0 ovs.nat.engine=tc";

/// The extra links of [`EID`]'s split endpoint: (the container's host end, the OVS
/// port's peer).
fn split() -> (String, String) {
    let id = &EID[..10];
    (format!("ovst{id}"), format!("ovsq{id}"))
}

impl Rig {
    /// Whether each end of [`EID`]'s patch redirects to the other and nowhere else.
    fn patch_whole(&self) -> bool {
        let (tc_end, patch_end) = split();
        let h = self.host.lock().unwrap();
        let (Some(t), Some(p)) = (h.links.get(&tc_end), h.links.get(&patch_end)) else {
            return false;
        };
        t.patched_to == [p.index] && p.patched_to == [t.index]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn nat_fast_tc_splits_the_endpoint_and_delete_takes_all_of_it() {
    let r = rig();
    r.net(TC_NET, Some("10.233.1.0/24")).await;
    let before = r.links();
    r.endpoint(NID, EID, "10.233.1.2/24").await.unwrap();
    let (host_end, container_end) = veths();
    let (tc_end, patch_end) = split();
    for name in [&host_end, &container_end, &tc_end, &patch_end] {
        assert!(r.links().contains(name), "{name} missing: {:?}", r.links());
    }
    // The OVS port is the usual name; the container's veth is not on the bridge.
    assert_eq!(r.ports(), vec![host_end.clone()]);
    assert!(r.patch_whole());
    let calls = r.host.lock().unwrap().calls.clone();
    assert!(calls.contains(&format!("disable_tx_checksum {patch_end}")));
    assert!(
        !calls.iter().any(|c| c.ends_with(&container_end)),
        "the container end keeps its offloads: {calls:?}"
    );

    // Joined, the tc programs go on the container's host end (not the OVS port) and
    // the uplink; no XDP endpoint. Until CT is written the kernel path carries it.
    r.driver.join_inner(join(NID, EID)).await.unwrap();
    {
        let state = r.driver.state.lock().await;
        let fp = state.fastpath.get().expect("started for the tc programs");
        assert!(fp.endpoints.is_empty(), "no XDP endpoint");
        let spec = &fp.tc_endpoints[&tc_end];
        assert_eq!(spec.ip, "10.233.1.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(fp.tc_endpoints.len(), 1);
        assert_eq!(fp.uplinks.len(), 1);
    }
    let status = r.driver.status().await;
    assert_eq!(status.networks[0].engine, "tc");
    assert!(!status.networks[0].endpoints[0].fast_path);

    // A published port is the kernel's DNAT's: the endpoint program is told to make no
    // session for what leaves the container port; revoked, it is told again.
    async fn tc_published(r: &Rig) -> Vec<FastPort> {
        let state = r.driver.state.lock().await;
        let fp = state.fastpath.get().expect("running");
        fp.tc_published.get(&split().0).cloned().unwrap_or_default()
    }
    r.driver
        .program_external_inner(port_map(NID, EID, 8080, 80))
        .await
        .unwrap();
    assert_eq!(
        tc_published(&r).await,
        vec![(crate::translator::Protocol::Tcp, 8080, 80)]
    );
    r.driver.unpublish_ports(ids(NID, EID)).await.unwrap();
    assert!(tc_published(&r).await.is_empty());

    r.driver.delete_endpoint_inner(ids(NID, EID)).await.unwrap();
    assert!(
        (r.driver.state.lock().await.fastpath.get()).is_some_and(|fp| fp.tc_endpoints.is_empty()),
        "the tc programs are taken off"
    );
    r.driver.links_reaped().await;
    assert_eq!(r.links(), before, "split links left");
    assert!(r.ports().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn deleting_a_tc_network_with_its_endpoints_takes_their_split_links() {
    let r = rig();
    let before = r.links();
    r.net(TC_NET, Some("10.233.1.0/24")).await;
    r.endpoint(NID, EID, "10.233.1.2/24").await.unwrap();
    r.driver.join_inner(join(NID, EID)).await.unwrap();
    let (tc_end, _) = split();
    assert!(r.links().contains(&tc_end));
    r.delete_network(NID).await.unwrap();
    assert_eq!(r.links(), before, "split links left");
    // The uplink's program, kept while the network lived, goes with it.
    let state = r.driver.state.lock().await;
    let fp = state.fastpath.get().expect("started at Join");
    assert_eq!(fp.idle_tc_uplinks_released, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_failed_split_leaves_nothing() {
    for op in ["patch", "add_port"] {
        let r = rig();
        r.net(TC_NET, Some("10.233.1.0/24")).await;
        let before = r.links();
        r.fail(op);
        assert!(r.endpoint(NID, EID, "10.233.1.2/24").await.is_err(), "{op}");
        assert_eq!(r.links(), before, "links left after a failed {op}");
        assert!(r.ports().is_empty(), "port left after a failed {op}");
        let state = r.driver.state.lock().await;
        assert!(state.networks[NID].endpoints.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_reconciler_remakes_a_lost_split_pair_and_patch() {
    let r = rig();
    r.net(TC_NET, Some("10.233.1.0/24")).await;
    r.endpoint(NID, EID, "10.233.1.2/24").await.unwrap();
    let (host_end, _) = veths();
    let (tc_end, patch_end) = split();

    // `ip link del ovsq...` takes the OVS port's end with it.
    r.driver.netlink.delete(&patch_end).await.unwrap();
    assert!(!r.links().contains(&host_end));
    r.driver.reconcile().await;
    assert!(r.links().contains(&host_end) && r.links().contains(&patch_end));
    assert!(r.patch_whole(), "the patch is re-made with the pair");
    assert_eq!(r.ports(), vec![host_end.clone()]);

    // `tc qdisc del dev ovst... clsact`: the filters are re-made.
    r.driver.netlink.delete_patch(&tc_end).await.unwrap();
    assert!(!r.patch_whole());
    r.driver.reconcile().await;
    assert!(r.patch_whole());
    let repairs: BTreeMap<String, u64> = r.driver.repairs().into_iter().collect();
    assert_eq!(repairs.get("split"), Some(&1), "{repairs:?}");
    assert_eq!(repairs.get("patch"), Some(&1), "{repairs:?}");

    // A whole split is left alone.
    r.driver.reconcile().await;
    assert_eq!(r.driver.repairs().len(), repairs.len());
}

/// Network `nid` on the shared bridge `br-x` with `opts` (`ovs.bridge.vlan=...`).
fn on_br_x(nid: &str, opts: &str) -> api::CreateNetworkRequest {
    network(nid, &format!("mode=flat ovs.bridge.name=br-x {opts}"), None)
}

const EID2: &str = "0123456789ab0123456789ab0123456789ab0123456789ab0123456789ab0123";

impl Rig {
    fn br_x_ids(&self) -> BTreeMap<String, String> {
        self.host.lock().unwrap().bridges["br-x"]
            .external_ids
            .clone()
    }

    /// Networks [`NID`] (VLAN 300) and [`NID2`] (VLAN 400) sharing `br-x`, an
    /// endpoint each.
    async fn shared_br_x(&self) {
        for (nid, eid, vlan) in [(NID, EID, 300), (NID2, EID2, 400)] {
            let opts = format!("ovs.bridge.vlan={vlan}");
            self.create_network(on_br_x(nid, &opts)).await.unwrap();
            self.endpoint(nid, eid, "").await.unwrap();
        }
    }

    fn tag(&self, port: &str) -> Option<u16> {
        self.host.lock().unwrap().port(port).and_then(|p| p.tag)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn vlan_networks_share_a_named_bridge_whichever_leaves_first() {
    for first_out in [NID, NID2] {
        let r = rig();
        let opts = "ovs.bridge.vlan=300 ovs.bridge.mtu=1400 ovs.bridge.userspace=true";
        r.create_network(on_br_x(NID, opts)).await.unwrap();
        r.create_network(on_br_x(NID2, "ovs.bridge.vlan=400"))
            .await
            .unwrap();
        assert_eq!(r.host.lock().unwrap().created.len(), 1, "one bridge made");
        // One record per network: the first in the plain keys, the second keyed.
        let ids = r.br_x_ids();
        assert_eq!(ids[EXT_NETWORK_ID], NID);
        assert_eq!(ids[&format!("{EXT_NETWORK_ID}@{NID2}")], NID2);
        assert_eq!(ids[&format!("dovesnap-opt-ovs.bridge.vlan@{NID2}")], "400");
        // The joiner takes the bridge's settings (its veths get the bridge's MTU).
        {
            let state = r.driver.state.lock().await;
            let joined = &state.networks[NID2];
            assert_eq!(joined.options.mtu, Some(1400));
            assert_eq!(joined.datapath, Datapath::Netdev);
        }
        r.endpoint(NID, EID, "").await.unwrap();
        r.endpoint(NID2, EID2, "").await.unwrap();
        let (p1, p2) = (records::veth_names(EID).0, records::veth_names(EID2).0);
        assert_eq!((r.tag(&p1), r.tag(&p2)), (Some(300), Some(400)));
        let status = r.driver.status().await;
        let shown: Vec<_> = (status.networks.iter())
            .map(|n| (n.bridge.as_str(), n.vlan, n.shared_with.clone()))
            .collect();
        assert!(
            shown.contains(&("br-x", Some(300), vec![NID2.to_string()])),
            "{shown:?}"
        );
        assert!(
            shown.contains(&("br-x", Some(400), vec![NID.to_string()])),
            "{shown:?}"
        );

        // A restarted plugin reads both records and each network's own endpoint.
        let restarted = r.restarted();
        assert_eq!(restarted.recover().await.unwrap(), (2, 2));
        {
            let state = restarted.state.lock().await;
            assert_eq!(state.networks[NID2].options.vlan, Some(400));
            assert!(state.networks[NID2].endpoints.contains_key(EID2));
            assert!(state.networks[NID].endpoints.contains_key(EID));
        }

        // The first out (its endpoint still there) leaves the bridge and the other.
        let (last_out, stays) = if first_out == NID {
            (NID2, &p2)
        } else {
            (NID, &p1)
        };
        let req = |nid: &str| api::NetworkRequest {
            network_id: nid.into(),
        };
        restarted
            .delete_network_inner(req(first_out))
            .await
            .unwrap();
        let ids = r.br_x_ids();
        assert!(!ids.values().any(|v| v == first_out), "{ids:?}");
        assert!(ids.values().any(|v| v == last_out), "{ids:?}");
        assert_eq!(
            r.host.lock().unwrap().port_names("br-x"),
            vec![stays.clone()]
        );
        // The last one out deletes it.
        restarted.delete_network_inner(req(last_out)).await.unwrap();
        assert!(r.bridges().is_empty(), "{:?}", r.bridges());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_bridge_is_shared_only_as_it_can_be() {
    let r = rig();
    let opts = "ovs.bridge.vlan=300 ovs.bridge.mtu=1400 ovs.bridge.controller=tcp:192.0.2.1:6653";
    r.create_network(on_br_x(NID, opts)).await.unwrap();
    let before = r.br_x_ids();
    let refusals = [
        ("ovs.bridge.vlan=300", "with VLAN 300"),
        ("", "each need their own ovs.bridge.vlan"),
        (
            "ovs.bridge.vlan=400 ovs.bridge.mtu=1500",
            "ovs.bridge.mtu=1400, and this network asks for ovs.bridge.mtu=1500",
        ),
        (
            "ovs.bridge.vlan=400 ovs.bridge.controller=tcp:192.0.2.2:6653",
            "ovs.bridge.controller",
        ),
        (
            "ovs.bridge.vlan=400 ovs.bridge.tunnels=vxlan:192.0.2.9",
            "tunnels are not supported on a shared bridge",
        ),
        (
            "ovs.bridge.vlan=400 mode=nat",
            "only flat networks share a bridge",
        ),
        (
            "ovs.bridge.vlan=400 ovs.bridge.existing=true",
            "ovs.bridge.existing alike",
        ),
    ];
    for (opts, says) in refusals {
        let req = if opts.contains("mode=nat") {
            network(
                NID2,
                &format!("ovs.bridge.name=br-x {opts}"),
                Some("10.239.9.0/24"),
            )
        } else {
            on_br_x(NID2, opts)
        };
        let e = r.create_network(req).await.unwrap_err();
        assert!(
            matches!(&e, DriverError::BridgeShared { .. }),
            "{opts}: {e}"
        );
        assert!(e.to_string().contains(says), "{opts}: {e}");
        assert!(e.to_string().contains(NID), "names the other network: {e}");
        assert_eq!(r.br_x_ids(), before, "{opts}: the bridge changed");
        assert_eq!(r.bridges(), vec!["br-x".to_string()]);
    }
    // An untagged first network keeps its bridge to itself.
    let r2 = rig();
    r2.create_network(on_br_x(NID, "")).await.unwrap();
    let e = r2
        .create_network(on_br_x(NID2, "ovs.bridge.vlan=400"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("without a VLAN"), "{e}");

    // A container's own VLAN may not be another network's on the bridge, and a
    // network may not join on a VLAN a container there has as its own.
    r.create_network(on_br_x(NID2, "ovs.bridge.vlan=400"))
        .await
        .unwrap();
    let mut req = endpoint(NID2, EID, "");
    req.options = Some([(crate::plugin::options::PORT_VLAN.to_string(), json!("300"))].into());
    refused!(
        r.driver.create_endpoint_inner(req.clone()),
        DriverError::PortVlanShared { vlan: 300, .. }
    );
    req.options = Some([(crate::plugin::options::PORT_VLAN.to_string(), json!("500"))].into());
    r.driver.create_endpoint_inner(req).await.unwrap();
    let e = r
        .create_network(on_br_x(NID3, "ovs.bridge.vlan=500"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ovs.port.vlan=500"), "{e}");
    assert!(r.links().iter().filter(|l| l.starts_with("ovsv")).count() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn networks_on_a_shared_bridge_each_reach_their_uplink_through_its_trunk() {
    let r = rig();
    let opts = |vlan| format!("ovs.bridge.vlan={vlan} ovs.bridge.add_ports=eth1");
    r.create_network(on_br_x(NID, &opts(300))).await.unwrap();
    r.create_network(on_br_x(NID2, &opts(400))).await.unwrap();
    assert_eq!(eth1_trunks(&r), Some(vec![300, 400]));
    let patch = |nid: &str| format!("ovsnp0-{}", &nid[..8]);
    let ports = r.host.lock().unwrap().port_names("br-x");
    assert!(
        ports.contains(&patch(NID)) && ports.contains(&patch(NID2)),
        "{ports:?}"
    );
    assert_eq!(r.tag(&patch(NID2)), Some(400));
    r.delete_network(NID).await.unwrap();
    assert_eq!(eth1_trunks(&r), Some(vec![400]));
    assert_eq!(r.host.lock().unwrap().port_names("br-x"), vec![patch(NID2)]);
    r.delete_network(NID2).await.unwrap();
    assert!(r.bridges().is_empty(), "{:?}", r.bridges());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_failed_join_leaves_the_shared_bridge_as_it_was() {
    let r = rig();
    r.create_network(on_br_x(NID, "ovs.bridge.vlan=300"))
        .await
        .unwrap();
    let before = r.br_x_ids();
    r.fail("add_port");
    let opts = "ovs.bridge.vlan=400 ovs.bridge.add_ports=eth1";
    assert!(r.create_network(on_br_x(NID2, opts)).await.is_err());
    assert_eq!(r.br_x_ids(), before);
    assert_eq!(r.bridges(), vec!["br-x".to_string()], "no trunk left");
    r.host.lock().unwrap().failing.clear();
    r.create_network(on_br_x(NID2, opts)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_reconciler_makes_a_shared_bridge_again_with_every_network_on_it() {
    let r = rig();
    r.shared_br_x().await;
    r.host.lock().unwrap().bridges.remove("br-x");
    r.driver.reconcile().await;
    let (p1, p2) = (records::veth_names(EID).0, records::veth_names(EID2).0);
    assert_eq!((r.tag(&p1), r.tag(&p2)), (Some(300), Some(400)));
    let restarted = r.restarted();
    assert_eq!(restarted.recover().await.unwrap(), (2, 2));
    let repairs = r.driver.repairs();
    assert!(repairs.contains(&("bridge".to_string(), 2)), "{repairs:?}");
    // A second pass has nothing to do.
    r.driver.reconcile().await;
    assert_eq!(r.driver.repairs(), repairs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_existing_bridge_serves_several_networks_and_keeps_its_ports() {
    let r = rig();
    let admin = || {
        let mut br = admin_bridge("br-x");
        br.external_ids.insert("owner".into(), "admin".into());
        br
    };
    r.host
        .lock()
        .unwrap()
        .bridges
        .insert("br-x".into(), admin());
    let existing = |vlan| format!("ovs.bridge.existing=true ovs.bridge.vlan={vlan}");
    r.create_network(on_br_x(NID, &existing(300)))
        .await
        .unwrap();
    r.create_network(on_br_x(NID2, &existing(400)))
        .await
        .unwrap();
    let ids = r.br_x_ids();
    assert_eq!(ids[EXT_ATTACHED_NETWORK_ID], NID);
    assert_eq!(ids[&format!("{EXT_ATTACHED_NETWORK_ID}@{NID2}")], NID2);
    r.endpoint(NID2, EID2, "").await.unwrap();
    // The administrator makes the bridge again: both networks attach to it again.
    r.host
        .lock()
        .unwrap()
        .bridges
        .insert("br-x".into(), admin());
    r.driver.reconcile().await;
    assert_eq!(r.restarted().recover().await.unwrap(), (2, 1));
    for nid in [NID, NID2] {
        r.delete_network(nid).await.unwrap();
    }
    let h = r.host.lock().unwrap();
    assert_eq!(h.bridges["br-x"].external_ids, admin().external_ids);
    assert_eq!(h.port_names("br-x"), vec!["admin0".to_string()]);
    assert!(h.created.is_empty() && !h.calls.iter().any(|c| c.starts_with("delete_bridge")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_shared_bridge_stays_for_a_network_whose_record_was_not_trusted() {
    let r = rig();
    r.shared_br_x().await;
    // Someone spoils the second network's record: a restarted plugin leaves it alone.
    let key = format!("dovesnap-opt-ovs.bridge.vlan@{NID2}");
    let spoiled = BTreeMap::from([(key, "banana".to_string())]);
    (r.driver
        .ovs
        .update_bridge_external_ids("br-x", &spoiled, &[])
        .await)
        .unwrap();
    let restarted = r.restarted();
    assert_eq!(restarted.recover().await.unwrap(), (1, 1));
    let req = api::NetworkRequest {
        network_id: NID.into(),
    };
    restarted.delete_network_inner(req).await.unwrap();
    // The bridge stays with the untrusted network's port; the deleted one's went.
    let ports = r.host.lock().unwrap().port_names("br-x");
    assert_eq!(ports, vec![records::veth_names(EID2).0]);
    assert!(r.br_x_ids().values().any(|v| v == NID2));
}

#[test]
fn orphan_endpoint_links_are_those_named_like_an_unknown_endpoints() {
    let names: Vec<String> = [
        "ovsv0123456789", // a known endpoint's
        "ovsqabcdef0123", // the tc engine's patch end of an unknown one
        "ovstabcdef0123",
        "ovscabcdef0123",
        "ovsvabcdef0123",
        "ovstk-eth1",     // a trunk bridge
        "ovsbr-01234567", // a bridge
        "ovs-netdev",
        "ovsvABCDEFxyz0", // not hex
        "ovsv0123",       // too short
        "eth0",
    ]
    .map(String::from)
    .into();
    let known = ["0123456789".repeat(6) + "0123"];
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    assert_eq!(
        super::orphan_endpoint_links(&names, &known),
        [
            "ovsqabcdef0123",
            "ovstabcdef0123",
            "ovscabcdef0123",
            "ovsvabcdef0123"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_restart_deletes_the_links_of_endpoints_no_record_claims() {
    let r = rig();
    r.net("", Some("10.231.1.0/24")).await;
    r.endpoint(NID, EID, "10.231.1.2/24").await.unwrap();
    let kept = r.links();
    // What a stop between DeleteEndpoint's answer and the links' deletion leaves.
    r.host
        .lock()
        .unwrap()
        .add_link("ovsvfedcba9876", None, Some("ovscfedcba9876"));
    assert_eq!(r.restarted().recover().await.unwrap(), (1, 1));
    assert_eq!(r.links(), kept);
}
