//! Open vSwitch control through OVSDB, without `ovs-vsctl`.
//!
//! [`Ovsdb`] speaks RFC 7047 JSON-RPC to ovsdb-server over its unix socket
//! ([`DEFAULT_SOCKET`]) and offers the few operations the driver needs. Each change
//! (create or delete a bridge, add or remove a port) is one `transact` that also
//! increments `Open_vSwitch.next_cfg`; the call then waits until ovs-vswitchd reports
//! the change applied (`cur_cfg` catches up, seen through a `monitor`), checks the new
//! interfaces for errors and rolls the change back when OVS could not set one up.
//!
//! Layout:
//! - `jsonrpc`: the connection: framing, request/response matching, `echo`.
//! - `datum`: OVSDB's JSON notation for uuids, sets and maps.
//! - `txn`: transaction building and result checking.
//! - `bridge`: the vswitchd-schema transactions, as pure functions of the specs.
//! - `client`: the [`Ovsdb`] handle that runs them.

mod bridge;
mod client;
mod datum;
mod jsonrpc;
mod txn;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use client::{Applied, Ovsdb};
pub(crate) use datum::{set_strings, Row};
pub(crate) use jsonrpc::Connection;
pub(crate) use txn::{check, eq, rows, Refusal, Txn};

/// Where Debian's (and upstream's default) ovsdb-server listens.
pub const DEFAULT_SOCKET: &str = "/var/run/openvswitch/db.sock";

/// How long a change may take to reach ovs-vswitchd before the call fails.
pub const DEFAULT_APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The datapath new bridges should use on this host: `system` (the kernel datapath)
/// when the openvswitch kernel module is loaded, else `netdev` (the userspace one).
pub fn default_datapath_type() -> &'static str {
    if std::path::Path::new("/sys/module/openvswitch").exists() {
        "system"
    } else {
        "netdev"
    }
}

/// Where an OVSDB server listens, in the `ovs-vsctl --db` notation: `unix:PATH` or
/// `tcp:HOST:PORT` (a bare path is taken as a unix socket).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Remote {
    Unix(PathBuf),
    /// `HOST:PORT`, with an IPv6 host in brackets.
    Tcp(String),
}

impl std::str::FromStr for Remote {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: unix: needs a socket path"));
            }
            return Ok(Remote::Unix(path.into()));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            let (host, port) = addr
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?}: expected tcp:HOST:PORT"))?;
            if host.is_empty() || !port.parse::<u16>().is_ok_and(|p| p != 0) {
                return Err(format!("{s:?}: expected tcp:HOST:PORT with a port 1-65535"));
            }
            return Ok(Remote::Tcp(addr.to_string()));
        }
        if s.starts_with('/') {
            return Ok(Remote::Unix(s.into()));
        }
        Err(format!(
            "{s:?}: expected tcp:HOST:PORT or unix:PATH (ssl: is not supported)"
        ))
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Unix(path) => write!(f, "unix:{}", path.display()),
            Remote::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// A bridge to create: the bridge, its internal port (same name) and its uplinks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    /// `netdev` (userspace) or `system` (kernel); see [`default_datapath_type`].
    pub datapath_type: String,
    pub external_ids: BTreeMap<String, String>,
    /// MTU of the bridge's internal interface (`Interface.mtu_request`).
    pub mtu: Option<u32>,
    /// OpenFlow controller targets (`tcp:IP:PORT`, `unix:PATH`, ...). When any is set
    /// the bridge runs in `fail_mode=secure`: no flows until a controller adds them.
    pub controllers: Vec<String>,
    /// 16 hex digits (an optional `0x` is accepted) for `other_config:datapath-id`.
    pub datapath_id: Option<String>,
    /// Ports to attach: existing host interfaces, or patch ports (see [`UplinkSpec`]).
    pub uplinks: Vec<UplinkSpec>,
    /// Tunnel ports to make with the bridge.
    pub tunnels: Vec<TunnelSpec>,
}

impl BridgeSpec {
    /// A bridge named `name` on this host's [`default_datapath_type`].
    pub fn new(name: impl Into<String>) -> Self {
        BridgeSpec {
            name: name.into(),
            datapath_type: default_datapath_type().to_string(),
            ..Default::default()
        }
    }
}

/// A port made with a new bridge: an existing host interface, or (with `patch_peer`)
/// one end of an OVS patch-port pair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkSpec {
    pub name: String,
    /// The OpenFlow port number to ask for (`Interface.ofport_request`, 1..=65279).
    pub ofport: Option<u32>,
    /// Access VLAN (`Port.tag`, 0..=4095).
    pub tag: Option<u16>,
    /// The VLANs a trunk port carries (`Port.trunks`; empty: all of them).
    pub trunks: Vec<u16>,
    /// A patch port (`Interface.type=patch`) whose peer is the port of that name.
    pub patch_peer: Option<String>,
}

/// A tunnel port: a port whose one interface has a tunnel type and `options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// The port and interface name (OVSDB only: a tunnel has no Linux interface).
    pub name: String,
    /// `Interface.type`: `vxlan`, `gre` or `geneve`.
    pub kind: String,
    /// `options:remote_ip`.
    pub remote_ip: std::net::IpAddr,
    /// `options:key` (VNI or GRE key); absent, OVS's default (none).
    pub key: Option<u32>,
}

/// An existing host interface (a container's veth) to add to a bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    /// Access VLAN (`Port.tag`, 0..=4095).
    pub tag: Option<u16>,
    /// The VLANs a trunk port carries (`Port.trunks`; empty: all of them).
    pub trunks: Vec<u16>,
    pub external_ids: BTreeMap<String, String>,
    /// `Interface.mtu_request`.
    pub mtu: Option<u32>,
    /// The OpenFlow port number to ask for (`Interface.ofport_request`, 1..=65279).
    pub ofport: Option<u32>,
    /// `Interface.external_ids` (`iface-id`: the OVN logical port bound here).
    pub interface_external_ids: BTreeMap<String, String>,
    /// A patch port (`Interface.type=patch`) whose peer is the port of that name,
    /// instead of a host interface.
    pub patch_peer: Option<String>,
}

impl PortSpec {
    pub fn new(name: impl Into<String>) -> Self {
        PortSpec {
            name: name.into(),
            ..Default::default()
        }
    }
}

/// A bridge as OVSDB describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeInfo {
    pub name: String,
    pub datapath_type: String,
    pub external_ids: BTreeMap<String, String>,
    /// Every port, the bridge's own internal port included, sorted by name.
    pub ports: Vec<PortInfo>,
}

/// A port of a bridge (dovesnap's ports have exactly one interface each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    pub tag: Option<u16>,
    pub external_ids: BTreeMap<String, String>,
    /// The type of the port's (first) interface: `""` for a host interface,
    /// `"internal"` for the bridge's own port, ...
    pub interface_type: String,
    /// The OpenFlow port number, once ovs-vswitchd has assigned one.
    pub ofport: Option<u32>,
    /// The VLANs a trunk port carries (`Port.trunks`; empty: all of them).
    pub trunks: Vec<u16>,
}

/// Why an OVSDB operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error(
        "cannot reach ovsdb-server at {}: {source}: is Open vSwitch running? start it with \
         `/usr/share/openvswitch/scripts/ovs-ctl start` (without systemd), or \
         `ovsdb-server --remote=punix:{} --pidfile --detach` then \
         `ovs-vswitchd --pidfile --detach`",
        path.display(),
        path.display()
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the OVSDB server at {remote}: {source}")]
    ConnectRemote {
        remote: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the connection to ovsdb-server ({0}); the next call reconnects")]
    Disconnected(String),
    #[error(
        "ovsdb-server did not answer `{method}` within {after:?}: is it running, and not \
         stopped or overloaded?"
    )]
    CallTimeout { method: String, after: Duration },
    #[error("ovsdb-server answered `{method}` with an error: {error}")]
    Rpc {
        method: String,
        error: serde_json::Value,
    },
    #[error("unexpected data from ovsdb-server: {0}")]
    Protocol(String),
    #[error(
        "the OVSDB peer sent {received} bytes without finishing a JSON message (the limit is \
         {limit}); dropped the connection: is the remote an OVSDB server (ovsdb-server, the \
         OVN databases)? the next call reconnects"
    )]
    MessageTooLarge { received: usize, limit: usize },
    #[error(
        "OVSDB refused to {what}: {error}{}",
        details.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    Transaction {
        what: String,
        error: String,
        details: Option<String>,
    },
    #[error(
        "ovs-vswitchd did not apply the change ({what}) within {after:?} (cur_cfg {cur_cfg}, \
         waiting for {next_cfg}): is ovs-vswitchd running? start it with \
         `ovs-vswitchd --pidfile --detach` or `/usr/share/openvswitch/scripts/ovs-ctl start`"
    )]
    VswitchdTimeout {
        what: String,
        after: Duration,
        cur_cfg: i64,
        next_cfg: i64,
    },
    #[error("Open vSwitch could not set up interface {name}: {message}")]
    Interface { name: String, message: String },
    #[error("an OVS bridge named {0} already exists")]
    BridgeExists(String),
    #[error("there is no OVS bridge named {0}")]
    NoSuchBridge(String),
    #[error("an OVS port named {0} already exists (on this or another bridge)")]
    PortExists(String),
    #[error("OVS bridge {bridge} has no port named {port}")]
    NoSuchPort { bridge: String, port: String },
    #[error("there is no OVS port named {0}")]
    PortGone(String),
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

impl OvsdbError {
    /// Whether the bridge or port the call named does not exist (teardown treats this
    /// as already done).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            OvsdbError::NoSuchBridge(_) | OvsdbError::NoSuchPort { .. } | OvsdbError::PortGone(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_remotes() {
        assert_eq!(
            "tcp:192.0.2.1:6641".parse::<Remote>().unwrap(),
            Remote::Tcp("192.0.2.1:6641".into())
        );
        assert_eq!(
            "tcp:[2001:db8::1]:6641".parse::<Remote>().unwrap(),
            Remote::Tcp("[2001:db8::1]:6641".into())
        );
        assert_eq!(
            "unix:/run/ovn/ovnnb_db.sock".parse::<Remote>().unwrap(),
            Remote::Unix("/run/ovn/ovnnb_db.sock".into())
        );
        assert_eq!(
            "/run/x.sock".parse::<Remote>().unwrap().to_string(),
            "unix:/run/x.sock"
        );
        for bad in [
            "tcp:1.2.3.4",
            "tcp::6641",
            "tcp:h:0",
            "tcp:h:99999",
            "unix:",
            "ssl:h:1",
            "h",
        ] {
            assert!(bad.parse::<Remote>().is_err(), "{bad}");
        }
        assert_eq!(
            "tcp:h:6641".parse::<Remote>().unwrap().to_string(),
            "tcp:h:6641"
        );
    }
}
