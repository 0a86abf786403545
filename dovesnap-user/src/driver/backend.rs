//! What the driver needs of the host, as small traits: the OVS switch ([`Switch`],
//! OVSDB's bridges and ports), the kernel's links ([`Links`], veth pairs and
//! addresses over netlink) and the nat-fast data path ([`NatFastPath`]). The daemon
//! runs on [`Ovsdb`], [`Netlink`] and [`FastPath`]; the driver's own tests on
//! in-memory fakes, so its mode logic is tested without root.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::fastpath::{EndpointSpec, FastPath, FastPathConfig, FastPathError, FastPathStatus};
use crate::fastpath::{Fault, UplinkSpec as FastUplinkSpec};
use crate::firewall::FirewallError;
use crate::host::addr::Ipv4Net;
use crate::host::ethtool;
use crate::host::netlink::{link_mac, Netlink, NetlinkError};
use crate::ovsdb::{Applied, BridgeInfo, BridgeSpec, Ovsdb, OvsdbError, PortSpec, TunnelSpec};
use crate::translator::Protocol;

/// The Open vSwitch database: bridges, their ports, and `external_ids` records.
pub trait Switch: Send + Sync + 'static {
    fn list_bridges(&self) -> impl Future<Output = Result<Vec<BridgeInfo>, OvsdbError>> + Send;
    fn bridge(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<BridgeInfo>, OvsdbError>> + Send;
    fn create_bridge(
        &self,
        spec: &BridgeSpec,
    ) -> impl Future<Output = Result<(), OvsdbError>> + Send;
    fn delete_bridge(&self, name: &str) -> impl Future<Output = Result<(), OvsdbError>> + Send;
    /// Sets the `set` keys and removes the `remove` keys of a bridge's `external_ids`.
    fn update_bridge_external_ids(
        &self,
        bridge: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> impl Future<Output = Result<(), OvsdbError>> + Send;
    fn add_port(
        &self,
        bridge: &str,
        spec: &PortSpec,
    ) -> impl Future<Output = Result<(), OvsdbError>> + Send;
    fn delete_port(
        &self,
        bridge: &str,
        port: &str,
    ) -> impl Future<Output = Result<(), OvsdbError>> + Send;
    /// [`Switch::delete_port`] answering once the removal is committed; the returned
    /// future waits for the switch to apply it. By default: removed and applied at once.
    fn delete_port_committed(
        &self,
        bridge: &str,
        port: &str,
    ) -> impl Future<Output = Result<Applied, OvsdbError>> + Send {
        async move {
            self.delete_port(bridge, port).await?;
            Ok(Box::pin(async { Ok(()) }) as Applied)
        }
    }
    /// Adds a tunnel port to `bridge` (made again after it was deleted).
    fn add_tunnel(
        &self,
        bridge: &str,
        tunnel: &TunnelSpec,
    ) -> impl Future<Output = Result<(), OvsdbError>> + Send;
    /// Sets the VLANs trunk port `port` of `bridge` carries (`Port.trunks`).
    fn set_port_trunks(
        &self,
        bridge: &str,
        port: &str,
        trunks: &[u16],
    ) -> impl Future<Output = Result<(), OvsdbError>> + Send;
    fn set_port_external_id(
        &self,
        port: &str,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), OvsdbError>> + Send;
    /// `Open_vSwitch.external_ids` (this host's chassis, overlay records).
    fn switch_external_ids(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, OvsdbError>> + Send;
    /// Sets (`Some`) or removes (`None`) one key of `Open_vSwitch.external_ids`.
    fn set_switch_external_id(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> impl Future<Output = Result<(), OvsdbError>> + Send;
}

/// A link as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: Option<[u8; 6]>,
}

/// The kernel's network interfaces in the daemon's namespace.
pub trait Links: Send + Sync + 'static {
    fn link(&self, name: &str) -> impl Future<Output = Result<Option<Link>, NetlinkError>> + Send;
    fn index(&self, name: &str) -> impl Future<Output = Result<Option<u32>, NetlinkError>> + Send {
        async move { Ok(self.link(name).await?.map(|l| l.index)) }
    }
    fn exists(&self, name: &str) -> impl Future<Output = Result<bool, NetlinkError>> + Send {
        async move { Ok(self.link(name).await?.is_some()) }
    }
    fn name_of(
        &self,
        ifindex: u32,
    ) -> impl Future<Output = Result<Option<String>, NetlinkError>> + Send;
    /// The names of the interfaces here whose veth peer (if any) is here too.
    fn names_without_remote_peer(
        &self,
    ) -> impl Future<Output = Result<Vec<String>, NetlinkError>> + Send;
    fn ipv4_addresses(
        &self,
        ifindex: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Addr>, NetlinkError>> + Send;
    /// The interface of the IPv4 default route, if any.
    fn default_route_interface(
        &self,
    ) -> impl Future<Output = Result<Option<u32>, NetlinkError>> + Send;
    /// A veth pair `host`/`peer`, the peer with `peer_mac`.
    fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Deletes `name` (for a veth, both ends). Returns whether it existed.
    fn delete(&self, name: &str) -> impl Future<Output = Result<bool, NetlinkError>> + Send;
    fn set_up(&self, name: &str) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn set_down(&self, name: &str) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn set_address_up(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// An IPv6 address on `name` (no duplicate address detection), the link up.
    fn set_address6_up(
        &self,
        name: &str,
        addr: Ipv6Addr,
        prefix_len: u8,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    fn move_to_netns(
        &self,
        name: &str,
        netns_fd: std::os::fd::RawFd,
    ) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Transmit checksum offload off (ethtool).
    fn disable_tx_checksum(&self, name: &str) -> Result<(), NetlinkError>;
    /// GRO on (ethtool).
    fn enable_gro(&self, name: &str) -> Result<(), NetlinkError>;
    /// `net.ipv4.ip_forward=1`: nat networks route between their bridge and the uplink.
    fn enable_ip_forward(&self) -> Result<(), FirewallError>;
    /// A tc patch: every frame `from` receives leaves through `to` (clsact, u32,
    /// mirred; [`crate::host::tc`]).
    fn patch(&self, from: &str, to: &str) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Removes every tc patch of `name` (its clsact qdisc); done if there is none.
    fn delete_patch(&self, name: &str) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// The ifindexes the ingress filters of `name` redirect to (`None`: no such link).
    fn patch_targets(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Vec<u32>>, NetlinkError>> + Send;
}

/// A port the fast path publishes: (protocol, external port, container port).
pub type FastPort = (Protocol, u16, u16);

/// The nat-fast data path (XDP + AF_XDP): blocking calls, made with the driver's
/// fast-path lock held.
pub trait NatFastPath: Send + 'static {
    fn start(config: FastPathConfig) -> Result<Self, FastPathError>
    where
        Self: Sized;
    fn stop(self);
    fn status(&self) -> FastPathStatus;
    fn endpoint_names(&self) -> Vec<String>;
    fn has_endpoint(&self, host_ifname: &str) -> bool;
    fn uplink_addr(&self, uplink: &str) -> Option<Ipv4Addr>;
    /// The subnets whose host forward rules the data path follows now.
    fn host_subnets(&self) -> Vec<Ipv4Net>;
    fn follow_host_rules(&mut self, subnets: Vec<Ipv4Net>) -> Result<(), FastPathError>;
    fn add_endpoint(
        &mut self,
        ep: &EndpointSpec,
        uplink: &FastUplinkSpec,
    ) -> Result<(), FastPathError>;
    fn remove_endpoint(&mut self, host_ifname: &str);
    /// Puts the tc engine's programs on a split endpoint (`ep.host_ifname` is its
    /// container-side host end) and its uplink.
    fn add_tc_endpoint(
        &mut self,
        ep: &EndpointSpec,
        uplink: &FastUplinkSpec,
    ) -> Result<(), FastPathError>;
    /// Takes them off again (idempotent); the uplink's program stays.
    fn remove_tc_endpoint(&mut self, host_ifname: &str);
    /// Takes the tc program off uplinks no tc-engine endpoint uses (a tc network went).
    fn release_idle_tc_uplinks(&mut self);
    /// The container ports the kernel's DNAT publishes for a tc-engine endpoint (the
    /// whole set, replacing the last one; only the container port of each is used).
    fn set_tc_published(
        &mut self,
        host_ifname: &str,
        ports: &[FastPort],
    ) -> Result<(), FastPathError>;
    /// Records why an endpoint stays on the kernel path (`dovesnap status`).
    fn set_kernel_path(&mut self, host_ifname: &str, why: String);
    /// Serves `port` of the uplink's address for the container at `ip`.
    fn publish(&self, uplink: &str, port: FastPort, ip: Ipv4Addr) -> Result<(), FastPathError>;
    fn unpublish(&self, uplink: &str, protocol: Protocol, external_port: u16);
    /// Test hook: makes the data plane fail.
    fn inject(&self, fault: Fault);
}

type Ovs<T> = Result<T, OvsdbError>;
type Nl<T> = Result<T, NetlinkError>;

impl Switch for Ovsdb {
    async fn list_bridges(&self) -> Ovs<Vec<BridgeInfo>> {
        Ovsdb::list_bridges(self).await
    }
    async fn bridge(&self, name: &str) -> Ovs<Option<BridgeInfo>> {
        Ovsdb::bridge(self, name).await
    }
    async fn create_bridge(&self, spec: &BridgeSpec) -> Ovs<()> {
        Ovsdb::create_bridge(self, spec).await
    }
    async fn delete_bridge(&self, name: &str) -> Ovs<()> {
        Ovsdb::delete_bridge(self, name).await
    }
    async fn update_bridge_external_ids(
        &self,
        bridge: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Ovs<()> {
        Ovsdb::update_bridge_external_ids(self, bridge, set, remove).await
    }
    async fn add_port(&self, bridge: &str, spec: &PortSpec) -> Ovs<()> {
        Ovsdb::add_port(self, bridge, spec).await
    }
    async fn delete_port(&self, bridge: &str, port: &str) -> Ovs<()> {
        Ovsdb::delete_port(self, bridge, port).await
    }
    async fn delete_port_committed(&self, bridge: &str, port: &str) -> Ovs<Applied> {
        Ovsdb::delete_port_committed(self, bridge, port).await
    }
    async fn add_tunnel(&self, bridge: &str, tunnel: &TunnelSpec) -> Ovs<()> {
        Ovsdb::add_tunnel(self, bridge, tunnel).await
    }
    async fn set_port_trunks(&self, bridge: &str, port: &str, trunks: &[u16]) -> Ovs<()> {
        Ovsdb::set_port_trunks(self, bridge, port, trunks).await
    }
    async fn set_port_external_id(&self, port: &str, key: &str, value: &str) -> Ovs<()> {
        Ovsdb::set_port_external_id(self, port, key, value).await
    }
    async fn switch_external_ids(&self) -> Ovs<BTreeMap<String, String>> {
        Ovsdb::switch_external_ids(self).await
    }
    async fn set_switch_external_id(&self, key: &str, value: Option<&str>) -> Ovs<()> {
        Ovsdb::set_switch_external_id(self, key, value).await
    }
}

impl Links for Netlink {
    async fn link(&self, name: &str) -> Nl<Option<Link>> {
        Ok(Netlink::get(self, name).await?.map(|l| Link {
            index: l.header.index,
            mac: link_mac(&l),
        }))
    }
    async fn name_of(&self, ifindex: u32) -> Nl<Option<String>> {
        Netlink::name_of(self, ifindex).await
    }
    async fn names_without_remote_peer(&self) -> Nl<Vec<String>> {
        Netlink::names_without_remote_peer(self).await
    }
    async fn ipv4_addresses(&self, ifindex: u32) -> Nl<Vec<Ipv4Addr>> {
        Netlink::ipv4_addresses(self, ifindex).await
    }
    async fn default_route_interface(&self) -> Nl<Option<u32>> {
        Netlink::default_route_interface(self).await
    }
    async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> Nl<()> {
        Netlink::create_veth(self, host, peer, mac, mtu).await
    }
    async fn delete(&self, name: &str) -> Nl<bool> {
        Netlink::delete(self, name).await
    }
    async fn set_up(&self, name: &str) -> Nl<()> {
        Netlink::set_up(self, name).await
    }
    async fn set_down(&self, name: &str) -> Nl<()> {
        Netlink::set_down(self, name).await
    }
    async fn set_address_up(&self, name: &str, addr: Ipv4Addr, prefix_len: u8) -> Nl<()> {
        Netlink::set_address_up(self, name, addr, prefix_len).await
    }
    async fn set_address6_up(&self, name: &str, addr: Ipv6Addr, prefix_len: u8) -> Nl<()> {
        Netlink::set_address_up(self, name, addr, prefix_len).await
    }
    async fn move_to_netns(&self, name: &str, netns_fd: std::os::fd::RawFd) -> Nl<()> {
        Netlink::move_to_netns(self, name, netns_fd).await
    }
    fn disable_tx_checksum(&self, name: &str) -> Nl<()> {
        Ok(ethtool::disable_tx_checksum(name)?)
    }
    fn enable_gro(&self, name: &str) -> Nl<()> {
        Ok(ethtool::enable_gro(name)?)
    }
    fn enable_ip_forward(&self) -> Result<(), FirewallError> {
        crate::firewall::enable_ip_forward()
    }
    async fn patch(&self, from: &str, to: &str) -> Nl<()> {
        Netlink::patch(self, from, to).await
    }
    async fn delete_patch(&self, name: &str) -> Nl<()> {
        Netlink::delete_patch(self, name).await
    }
    async fn patch_targets(&self, name: &str) -> Nl<Option<Vec<u32>>> {
        Netlink::patch_targets(self, name).await
    }
}

impl NatFastPath for FastPath {
    fn start(config: FastPathConfig) -> Result<Self, FastPathError> {
        FastPath::start(config)
    }
    fn stop(self) {
        FastPath::stop(self)
    }
    fn status(&self) -> FastPathStatus {
        FastPath::status(self)
    }
    fn endpoint_names(&self) -> Vec<String> {
        FastPath::endpoint_names(self)
    }
    fn has_endpoint(&self, host_ifname: &str) -> bool {
        FastPath::has_endpoint(self, host_ifname)
    }
    fn uplink_addr(&self, uplink: &str) -> Option<Ipv4Addr> {
        FastPath::uplink_addr(self, uplink)
    }
    fn host_subnets(&self) -> Vec<Ipv4Net> {
        FastPath::host_subnets(self)
    }
    fn follow_host_rules(&mut self, subnets: Vec<Ipv4Net>) -> Result<(), FastPathError> {
        FastPath::follow_host_rules(self, subnets)
    }
    fn add_endpoint(
        &mut self,
        ep: &EndpointSpec,
        up: &FastUplinkSpec,
    ) -> Result<(), FastPathError> {
        FastPath::add_endpoint(self, ep, up)
    }
    fn remove_endpoint(&mut self, host_ifname: &str) {
        FastPath::remove_endpoint(self, host_ifname)
    }
    fn add_tc_endpoint(
        &mut self,
        ep: &EndpointSpec,
        up: &FastUplinkSpec,
    ) -> Result<(), FastPathError> {
        FastPath::add_tc_endpoint(self, ep, up)
    }
    fn remove_tc_endpoint(&mut self, host_ifname: &str) {
        FastPath::remove_tc_endpoint(self, host_ifname);
    }
    fn release_idle_tc_uplinks(&mut self) {
        FastPath::release_idle_tc_uplinks(self);
    }
    fn set_tc_published(
        &mut self,
        host_ifname: &str,
        ports: &[FastPort],
    ) -> Result<(), FastPathError> {
        let ports: Vec<_> = ports
            .iter()
            .map(|&(proto, _, port)| (proto, port))
            .collect();
        FastPath::set_tc_published(self, host_ifname, &ports)
    }
    fn set_kernel_path(&mut self, host_ifname: &str, why: String) {
        FastPath::set_kernel_path(self, host_ifname, why)
    }
    fn publish(&self, uplink: &str, port: FastPort, ip: Ipv4Addr) -> Result<(), FastPathError> {
        let (protocol, external, internal) = port;
        FastPath::publish(self, uplink, protocol, external, ip, internal)
    }
    fn unpublish(&self, uplink: &str, protocol: Protocol, external_port: u16) {
        FastPath::unpublish(self, uplink, protocol, external_port)
    }
    fn inject(&self, fault: Fault) {
        FastPath::inject(self, fault)
    }
}
