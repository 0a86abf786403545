//! What the driver refuses or fails at. Each message is what Docker shows the user
//! (`{"Err": ...}`, converted at the [`NetworkDriver`](crate::plugin::api::NetworkDriver)
//! edge): it says what was asked, what was expected, and what to do.

use crate::fastpath::FastPathError;
use crate::firewall::FirewallError;
use crate::host::netlink::NetlinkError;
use crate::ovn::OvnError;
use crate::ovsdb::OvsdbError;
use crate::plugin::api::ApiError;
use crate::plugin::options::{Mode, OptionsError, PORT_VLAN};

/// Why a driver call failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    // Docker's requests.
    #[error(
        "invalid {what} id {id:?}: expected Docker's hexadecimal id (12 to 128 letters and digits)"
    )]
    InvalidId { what: &'static str, id: String },
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(
        "IPv6 is not supported on {mode} networks in this version (given the IPv6 pool \
         {pool:?}); create the network without --ipv6, or with another mode"
    )]
    Ipv6 { mode: Mode, pool: String },
    #[error(
        "a mode={mode} network with --ipv6 needs an IPv6 gateway (its address on the \
         bridge), and Docker's IPAM gave none for {pool:?}; pass --gateway with an address \
         of the IPv6 subnet"
    )]
    NoGateway6 { mode: Mode, pool: String },
    #[error("cannot make a mode={mode} network with --ipv6: {reason}")]
    BadIpv6 { mode: Mode, reason: String },
    #[error(
        "a dovesnap network has at most one IPv6 subnet, Docker passed {} ({}); give one \
         IPv6 --subnet",
        pools.len(),
        pools.join(", ")
    )]
    SeveralPools6 { pools: Vec<String> },
    #[error("IPAM pool {0:?} is not an IPv6 CIDR")]
    BadPool6(String),
    #[error("IPv6 gateway {0:?} is not an IPv6 address")]
    BadGateway6(String),
    #[error("endpoint address {0:?} is not an IPv6 CIDR")]
    BadAddress6(String),
    #[error(
        "a dovesnap network has one IPv4 subnet, Docker passed {} ({}); give one --subnet",
        pools.len(),
        pools.join(", ")
    )]
    SeveralPools { pools: Vec<String> },
    #[error("IPAM pool {0:?} is not an IPv4 CIDR")]
    BadPool(String),
    #[error("IPAM gateway {0:?} is not an IPv4 address")]
    BadGateway(String),
    #[error("mode={0} needs an IPv4 subnet and gateway from IPAM; give --subnet")]
    NatWithoutSubnet(Mode),
    #[error("endpoint address {0:?} is not an IPv4 CIDR")]
    BadAddress(String),
    #[error("endpoint MAC address {:?} is not of the form aa:bb:cc:dd:ee:ff", .0.0)]
    BadMac(#[from] crate::host::addr::BadMac),
    #[error(
        "{} is not for overlay networks: OVN gives their ports no VLAN",
        PORT_VLAN
    )]
    VlanOnOverlay,

    // The driver's table.
    #[error("network {0} already exists")]
    NetworkExists(String),
    #[error(
        "network {0} is not known to dovesnap (was it created while another plugin served \
         the ovs driver?)"
    )]
    UnknownNetwork(String),
    #[error("endpoint {0} already exists")]
    EndpointExists(String),
    #[error("endpoint {endpoint} does not exist in network {network}")]
    UnknownEndpoint { network: String, endpoint: String },

    // The host: bridges and interfaces.
    #[error("bridge {bridge} already serves network {other}{why}")]
    BridgeShared {
        bridge: String,
        other: String,
        why: String,
    },
    #[error(
        "the bridge {0} of the networks this one would share it with is missing from OVSDB \
         (deleted behind dovesnap's back); the reconciler makes it again within a pass: \
         retry then"
    )]
    SharedBridgeGone(String),
    #[error(
        "ovs.port.vlan={vlan} is the VLAN of network {other}, which shares bridge {bridge} \
         with this one: the container would join that network; choose another VLAN"
    )]
    PortVlanShared {
        vlan: u16,
        bridge: String,
        other: String,
    },
    #[error(
        "an OVS bridge named {0} already exists and dovesnap does not own it; choose another \
         ovs.bridge.name, or attach the network to it with -o ovs.bridge.existing=true"
    )]
    BridgeNotOurs(String),
    #[error("a host interface named {0} already exists; choose another ovs.bridge.name")]
    InterfaceExists(String),
    #[error("ovs.bridge.add_ports names {0}, but the host has no such interface")]
    NoSuchPort(String),
    #[error("ovs.bridge.add_ports names {uplink}, which network {other} already uses{how}")]
    UplinkShared {
        uplink: String,
        other: String,
        how: String,
    },
    #[error(
        "ovs.bridge.add_ports names {uplink}, but it is a port of the OVS bridge {bridge}, \
         which is not dovesnap's trunk bridge for it: take it off there (ovs-vsctl del-port \
         {bridge} {uplink}) or choose another uplink; if {bridge} is the bridge of a network \
         made by an earlier dovesnap version, re-create that network to share the uplink"
    )]
    UplinkInUse { uplink: String, bridge: String },
    #[error(
        "the trunk bridge of uplink {uplink} is named {bridge}, but an OVS bridge of that \
         name exists that dovesnap did not make for {uplink}; remove or rename it"
    )]
    TrunkBridgeNotOurs { bridge: String, uplink: String },
    #[error(
        "a network with ovs.bridge.vlan takes at most {max} uplinks, ovs.bridge.add_ports \
         names {0}",
        max = super::trunk::MAX_TRUNK_UPLINKS
    )]
    TooManyTrunkUplinks(usize),
    #[error(
        "ovs.bridge.existing=true names the OVS bridge {0}, but OVS has no bridge of that name; \
         make it first (ovs-vsctl add-br {0}) or leave out ovs.bridge.existing to let dovesnap \
         create it"
    )]
    NoExistingBridge(String),
    #[error(
        "the OVS bridge {bridge} carries the record of dovesnap network {other}, which this \
         plugin does not serve (a record it did not trust: see dovesnap status); remove that \
         record or choose another ovs.bridge.name"
    )]
    ExistingBridgeInUse { bridge: String, other: String },
    #[error(
        "the container end {ifname} of endpoint {endpoint} is gone (deleted behind dovesnap's \
         back?); disconnect and reconnect the container"
    )]
    ContainerEndGone { endpoint: String, ifname: String },
    #[error("endpoint {0} has no IPv4 address to publish ports to")]
    NoAddressToPublish(String),

    // nat-fast.
    #[error(
        "mode=nat-fast needs an uplink: the host has no IPv4 default route; give -o \
         ovs.nat.uplink=IFNAME"
    )]
    NoDefaultRoute,
    #[error("the default route's interface vanished")]
    DefaultRouteVanished,
    #[error(
        "ovs.nat.uplink {0} is also in ovs.bridge.add_ports: the uplink must be a routed \
         interface, not a bridge port"
    )]
    UplinkIsBridgePort(String),
    #[error("ovs.nat.uplink names {0}, but the host has no such interface")]
    NoSuchUplink(String),
    #[error("the nat-fast uplink {0} has no IPv4 address to translate to")]
    UplinkWithoutAddress(String),
    #[error("the nat-fast uplink {0} has no MAC address")]
    UplinkWithoutMac(String),
    #[error("nat-fast network {0} has no uplink")]
    NoUplink(String),
    #[error("the nat-fast uplink {uplink} of network {network} is gone")]
    UplinkGone { uplink: String, network: String },
    #[error("network {0} has no subnet")]
    NoSubnet(String),
    #[error("{what} of endpoint {endpoint} is gone")]
    EndpointPartGone {
        what: &'static str,
        endpoint: String,
    },

    // overlay.
    #[error(
        "mode=overlay needs an IPv4 subnet: give --subnet, the same on every host (and each \
         host its own --ip-range of it)"
    )]
    OverlayWithoutSubnet,
    #[error(
        "the OVN integration bridge {0} does not exist: is ovn-controller running on this host? \
         (it creates the bridge; another name: -o ovs.ovn.bridge)"
    )]
    NoIntegrationBridge(String),
    #[error(
        "mode=overlay: where is the OVN northbound database? give -o ovs.ovn.nb=tcp:HOST:6641, \
         the daemon's --ovn-nb, or set external_ids:ovn-nb (or a tcp: external_ids:ovn-remote) \
         in Open_vSwitch"
    )]
    NoNorthbound,
    #[error(
        "--ipam-driver ovs shares addresses between hosts through OVN, for mode=overlay \
         networks only (this one is mode={0}): leave out --ipam-driver ovs"
    )]
    IpamNotOverlay(Mode),
    /// A request of Docker's IPAM protocol that dovesnap cannot take.
    #[error("{}", .0 .0)]
    Ipam(crate::plugin::api::ApiError),

    /// A teardown that went on past failures: every one of them.
    #[error("could not fully remove {what}: {}", errors.join("; "))]
    Incomplete { what: String, errors: Vec<String> },

    // The backends, in their own words.
    #[error(transparent)]
    Ovsdb(#[from] OvsdbError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error(transparent)]
    FastPath(#[from] FastPathError),
    #[error(transparent)]
    Ovn(#[from] OvnError),
}

pub type DriverResult<T> = Result<T, DriverError>;

impl From<DriverError> for ApiError {
    /// Docker's `{"Err": ...}`: the message as it is.
    fn from(e: DriverError) -> Self {
        ApiError::new(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_docker_shows_them() {
        let e = DriverError::SeveralPools {
            pools: vec!["10.0.0.0/24".into(), "10.0.1.0/24".into()],
        };
        assert_eq!(
            e.to_string(),
            "a dovesnap network has one IPv4 subnet, Docker passed 2 (10.0.0.0/24, \
             10.0.1.0/24); give one --subnet"
        );
        let e = DriverError::Incomplete {
            what: "endpoint e1".into(),
            errors: vec!["a".into(), "b".into()],
        };
        assert_eq!(e.to_string(), "could not fully remove endpoint e1: a; b");
        assert_eq!(
            ApiError::from(DriverError::NetworkExists("n1".into())).0,
            "network n1 already exists"
        );
        assert_eq!(
            DriverError::VlanOnOverlay.to_string(),
            "ovs.port.vlan is not for overlay networks: OVN gives their ports no VLAN"
        );
    }
}
