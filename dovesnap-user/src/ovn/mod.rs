//! Overlay mode on OVN: a Docker network is one OVN logical switch shared by every host
//! that creates it, each endpoint one logical switch port bound to the local
//! integration bridge through `external_ids:iface-id`; ovn-controller on each host
//! does the tunnels.
//!
//! - `gateway`: the optional OVN gateway of a network (logical router, SNAT, load
//!   balancers for published ports).
//! - `northbound`: the northbound database client (switches, ports, the per-host
//!   reference count, the address collision check).
//! - `ipam`: the address pools of `--ipam-driver ovs`, claims shared by the hosts.
//! - `dns`: the endpoints' names in OVN's DNS table and the switch's DNS localport;
//!   `docker_names`: where the names come from (Docker's Engine API, after Join).
//! - `dns_forward`: the forwarder behind the DNS localport (queries OVN did not answer).
//! - here: the host's chassis settings (read from the local `Open_vSwitch` table, where
//!   ovn-controller reads them too), where the northbound database is, and which
//!   switch a network maps to.

pub mod dns;
pub mod dns_forward;
pub mod docker_names;
pub mod gateway;
pub mod ipam;
pub mod northbound;
pub mod reap;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::ovsdb::{OvsdbError, Remote};

pub use northbound::Northbound;

/// The integration bridge ovn-controller creates and manages.
pub const DEFAULT_BRIDGE: &str = "br-int";
/// `Open_vSwitch.external_ids` key of the northbound database (dovesnap's; OVN itself
/// only needs the southbound one, `ovn-remote`).
pub const EXT_OVN_NB: &str = "ovn-nb";
/// `Open_vSwitch.external_ids`: the chassis name (OVN's).
pub const EXT_SYSTEM_ID: &str = "system-id";
/// `Open_vSwitch.external_ids`: the southbound database (OVN's).
pub const EXT_OVN_REMOTE: &str = "ovn-remote";
/// `Open_vSwitch.external_ids`: the tunnel endpoint address (OVN's).
pub const EXT_ENCAP_IP: &str = "ovn-encap-ip";
/// `Open_vSwitch.external_ids`: the tunnel type(s) (OVN's).
pub const EXT_ENCAP_TYPE: &str = "ovn-encap-type";
/// The containers' MTU on an overlay network unless `ovs.bridge.mtu` says otherwise:
/// a 1500-byte underlay minus geneve's 58 bytes of encapsulation.
pub const DEFAULT_MTU: u32 = 1442;
/// The northbound port OVN's tools use by default.
pub const NB_PORT: u16 = 6641;
/// The southbound port OVN's tools use by default.
pub const SB_PORT: u16 = 6642;

/// Why an overlay operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OvnError {
    #[error(
        "OVN northbound database at {remote}: {source}; is it reachable from this host? \
         (on the central host: `ovn-nbctl set-connection ptcp:6641:ADDRESS`)"
    )]
    Northbound {
        remote: String,
        #[source]
        source: OvsdbError,
    },
    #[error("the OVN northbound database refused to {what}: {error} {details}")]
    Refused {
        what: String,
        error: String,
        details: String,
    },
    #[error(
        "several OVN logical switches are named {0}; dovesnap cannot tell which is the \
         network's (remove the extra ones with `ovn-nbctl ls-del UUID`)"
    )]
    DuplicateSwitch(String),
    #[error(
        "OVN logical switch {switch} serves subnet {theirs}, not {ours}: give the same \
         --subnet on every host, or another -o ovs.ovn.switch"
    )]
    SubnetMismatch {
        switch: String,
        theirs: String,
        ours: String,
    },
    #[error("OVN logical switch {0} is gone (removed behind dovesnap's back?)")]
    NoSwitch(String),
    #[error(
        "address {ip} is already used on OVN logical switch {switch} by port {port} of host \
         {chassis}: each host's Docker IPAM allocates on its own, so give each host its \
         own --ip-range of the subnet"
    )]
    AddressInUse {
        ip: Ipv4Addr,
        switch: String,
        port: String,
        chassis: String,
    },
    #[error(
        "the address pool {0} is gone from the OVN northbound database (removed behind \
         dovesnap's back?): remove the network and create it again"
    )]
    NoPool(String),
    #[error(
        "several OVN address sets are named {0}; dovesnap cannot tell which is the pool \
         (remove the extra ones with `ovn-nbctl destroy Address_Set UUID`)"
    )]
    DuplicatePool(String),
    #[error(
        "no free address left in pool {pool} ({claimed} claimed by the hosts): use a \
         larger --subnet, or remove containers"
    )]
    PoolExhausted { pool: String, claimed: usize },
    #[error(
        "address {ip} is already claimed in pool {pool} by {holder}: choose another --ip, \
         or leave it out and let dovesnap pick a free one"
    )]
    Claimed {
        ip: Ipv4Addr,
        pool: String,
        holder: String,
    },
    #[error("other hosts kept changing OVN at the same time; could not {0}, try again")]
    Contended(String),
    #[error("{0}")]
    Chassis(String),
    /// The OVN gateway of an overlay network (`ovs.ovn.gateway`).
    #[error("{0}")]
    Gateway(String),
    #[error("unexpected answer from the OVN northbound database: {0}")]
    Unexpected(OvsdbError),
}

/// Reading a northbound answer (a malformed row, ...).
impl From<OvsdbError> for OvnError {
    fn from(e: OvsdbError) -> Self {
        OvnError::Unexpected(e)
    }
}

/// This host's OVN chassis settings, from `Open_vSwitch.external_ids`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chassis {
    pub system_id: Option<String>,
    pub ovn_remote: Option<String>,
    pub encap_ip: Option<String>,
    pub encap_type: Option<String>,
    pub ovn_nb: Option<String>,
}

impl Chassis {
    pub fn from_external_ids(ids: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| ids.get(k).filter(|v| !v.is_empty()).cloned();
        Chassis {
            system_id: get(EXT_SYSTEM_ID),
            ovn_remote: get(EXT_OVN_REMOTE),
            encap_ip: get(EXT_ENCAP_IP),
            encap_type: get(EXT_ENCAP_TYPE),
            ovn_nb: get(EXT_OVN_NB),
        }
    }

    /// The chassis name, or what to do when this host is not an OVN chassis.
    pub fn name(&self) -> Result<&str, OvnError> {
        let missing = |key: &str| {
            OvnError::Chassis(format!(
                "mode=overlay needs this host to be an OVN chassis, and external_ids:{key} \
                 is not set in the local Open_vSwitch table: run `ovs-vsctl set \
                 Open_vSwitch . external_ids:system-id=HOSTNAME \
                 external_ids:ovn-remote=tcp:CENTRAL:6642 external_ids:ovn-encap-ip=THIS_IP \
                 external_ids:ovn-encap-type=geneve` and start ovn-controller \
                 (README, \"Multi-host networks\")"
            ))
        };
        if self.ovn_remote.is_none() {
            return Err(missing(EXT_OVN_REMOTE));
        }
        if self.encap_ip.is_none() {
            return Err(missing(EXT_ENCAP_IP));
        }
        self.system_id
            .as_deref()
            .ok_or_else(|| missing(EXT_SYSTEM_ID))
    }

    /// The southbound database (the first of `ovn-remote`).
    pub fn southbound(&self) -> Option<Remote> {
        self.ovn_remote
            .as_deref()?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Where the northbound database is: `external_ids:ovn-nb`, else the host of the
    /// first `ovn-remote` (the southbound database, usually on the same central host)
    /// with the northbound port 6641.
    pub fn northbound(&self) -> Option<Remote> {
        if let Some(nb) = &self.ovn_nb {
            return nb.parse().ok();
        }
        let first = self.ovn_remote.as_deref()?.split(',').next()?.trim();
        match first.parse().ok()? {
            Remote::Tcp(addr) => {
                let (host, _) = addr.rsplit_once(':')?;
                Some(Remote::Tcp(format!("{host}:{NB_PORT}")))
            }
            Remote::Unix(_) => None,
        }
    }
}

/// The logical switch of a network: `ovs.ovn.switch`, else derived from the subnet
/// (`dovesnap-10.30.0.0-24`), so the same `docker network create --subnet` on every host
/// lands on the same switch (Docker does not tell a driver the network's name).
pub fn switch_name(explicit: Option<&str>, subnet: &str) -> String {
    match explicit {
        Some(name) => name.to_string(),
        None => format!("dovesnap-{}", subnet.replace('/', "-")),
    }
}

/// The logical switch port (and OVS `iface-id`) of an endpoint.
pub fn port_name(endpoint_id: &str) -> String {
    format!("dovesnap-{endpoint_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn northbound_from_the_chassis_settings() {
        let c = Chassis::from_external_ids(&ids(&[
            ("ovn-remote", "tcp:192.0.2.254:6642,tcp:192.0.2.253:6642"),
            ("system-id", "h1"),
            ("ovn-encap-ip", "192.0.2.1"),
        ]));
        assert_eq!(c.name().unwrap(), "h1");
        assert_eq!(c.northbound(), Some(Remote::Tcp("192.0.2.254:6641".into())));
        let c = Chassis::from_external_ids(&ids(&[
            ("ovn-remote", "tcp:192.0.2.254:6642"),
            ("ovn-nb", "tcp:198.51.100.7:16641"),
        ]));
        assert_eq!(
            c.northbound(),
            Some(Remote::Tcp("198.51.100.7:16641".into()))
        );
        let e = c.name().unwrap_err().to_string();
        assert!(e.contains("external_ids:ovn-encap-ip is not set"), "{e}");
        let c = Chassis::from_external_ids(&ids(&[("ovn-remote", "unix:/run/ovn/sb.sock")]));
        assert_eq!(c.northbound(), None);
        assert_eq!(Chassis::default().northbound(), None);
    }

    #[test]
    fn names() {
        assert_eq!(switch_name(None, "10.30.0.0/24"), "dovesnap-10.30.0.0-24");
        assert_eq!(switch_name(Some("web"), "10.30.0.0/24"), "web");
        assert_eq!(port_name("abc"), "dovesnap-abc");
    }
}
