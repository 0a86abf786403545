//! The vswitchd-schema transactions dovesnap runs, as pure functions: a spec in, a
//! [`Change`] (the transaction plus what is needed to read its result) out; select
//! results in, typed [`BridgeInfo`] out. No I/O here, so the message shapes are
//! unit-tested without a server.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use super::datum::{self, Row};
use super::txn::{self, eq, is_row, Refusal, Txn, DB};
use super::{BridgeInfo, BridgeSpec, OvsdbError, PortInfo, PortSpec, TunnelSpec};
use crate::host::ifname;

/// What a failed guard (`wait` operation) means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Guard {
    BridgeExists(String),
    NoSuchBridge(String),
    PortExists(String),
    NoSuchPort { bridge: String, port: String },
}

impl From<Guard> for OvsdbError {
    fn from(guard: Guard) -> Self {
        match guard {
            Guard::BridgeExists(name) => OvsdbError::BridgeExists(name),
            Guard::NoSuchBridge(name) => OvsdbError::NoSuchBridge(name),
            Guard::PortExists(name) => OvsdbError::PortExists(name),
            Guard::NoSuchPort { bridge, port } => OvsdbError::NoSuchPort { bridge, port },
        }
    }
}

/// How to take a change back when OVS could not apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    /// Delete the bridge inserted by operation `insert`.
    DeleteBridge { name: String, insert: usize },
    /// Remove the port inserted by operation `insert` from `bridge`.
    RemovePort {
        bridge: String,
        port: String,
        insert: usize,
    },
}

/// One change to the switch configuration: a transaction that ends by bumping
/// `next_cfg`, and how to interpret its result.
#[derive(Debug)]
pub(crate) struct Change {
    /// What the change does, for error messages ("create bridge br0").
    pub what: String,
    pub txn: Txn,
    /// `wait` operations that check preconditions, and what their failure means.
    guards: Vec<(usize, Guard)>,
    /// `insert` operations of Interface rows to check once vswitchd applied them.
    new_interfaces: Vec<usize>,
    /// The select that reads back `next_cfg`.
    pub next_cfg: usize,
    undo: Option<Undo>,
}

impl Change {
    fn new(what: String) -> Self {
        let mut txn = Txn::default();
        txn.comment(&format!("dovesnap: {what}"));
        Change {
            what,
            txn,
            guards: Vec::new(),
            new_interfaces: Vec::new(),
            next_cfg: 0,
            undo: None,
        }
    }

    fn guard(&mut self, table: &str, conditions: Vec<Value>, exists: bool, guard: Guard) {
        let op = self.txn.require(table, conditions, exists);
        self.guards.push((op, guard));
    }

    fn finish(mut self) -> Self {
        self.next_cfg = self.txn.bump_next_cfg();
        self
    }

    /// The error for a refused transaction: the guard's meaning, or OVSDB's own words.
    pub(crate) fn refused(&self, refusal: Refusal) -> OvsdbError {
        if let Some((_, guard)) = self.guards.iter().find(|(op, _)| Some(*op) == refusal.op) {
            return guard.clone().into();
        }
        OvsdbError::Transaction {
            what: self.what.clone(),
            error: refusal.error,
            details: refusal.details,
        }
    }

    /// The uuids of the Interface rows this change inserted.
    pub(crate) fn new_interfaces(&self, results: &[Value]) -> Result<Vec<String>, OvsdbError> {
        self.new_interfaces
            .iter()
            .map(|&op| txn::inserted(results, op))
            .collect()
    }

    /// The change that takes this one back, given its results.
    pub(crate) fn undo(&self, results: &[Value]) -> Result<Option<Change>, OvsdbError> {
        Ok(match &self.undo {
            None => None,
            Some(Undo::DeleteBridge { name, insert }) => {
                Some(delete_bridge(name, &txn::inserted(results, *insert)?))
            }
            Some(Undo::RemovePort {
                bridge,
                port,
                insert,
            }) => Some(remove_port(bridge, port, &txn::inserted(results, *insert)?)),
        })
    }
}

fn invalid(what: impl Into<String>, reason: impl Into<String>) -> OvsdbError {
    OvsdbError::Invalid {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Linux's rules for an interface name, which OVS port names here also are.
fn check_ifname(what: &str, name: &str) -> Result<(), OvsdbError> {
    ifname::check(name).map_err(|e| invalid(format!("{what} name {name:?}"), e.to_string()))
}

fn check_mtu(what: &str, mtu: Option<u32>) -> Result<Option<u32>, OvsdbError> {
    match mtu {
        Some(m) if !(68..=65535).contains(&m) => Err(invalid(
            format!("MTU {m} for {what}"),
            "expected 68..=65535",
        )),
        _ => Ok(mtu),
    }
}

fn check_ofport(what: &str, ofport: Option<u32>) -> Result<Option<u32>, OvsdbError> {
    match ofport {
        Some(p) if !(1..=65279).contains(&p) => Err(invalid(
            format!("OpenFlow port {p} for {what}"),
            "expected 1..=65279",
        )),
        _ => Ok(ofport),
    }
}

/// `other_config:datapath-id` wants exactly 16 hex digits.
fn normalize_dpid(dpid: &str) -> Result<String, OvsdbError> {
    let digits = dpid
        .strip_prefix("0x")
        .or_else(|| dpid.strip_prefix("0X"))
        .unwrap_or(dpid);
    if digits.len() != 16 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            format!("datapath id {dpid:?}"),
            "expected 16 hex digits, e.g. 0000000000000a01",
        ));
    }
    Ok(digits.to_ascii_lowercase())
}

/// An Interface row for a host interface (type `""`) or the bridge's internal port.
fn interface_row(name: &str, kind: &str, mtu: Option<u32>, ofport: Option<u32>) -> Value {
    let mut row = Map::new();
    row.insert("name".into(), json!(name));
    row.insert("type".into(), json!(kind));
    if let Some(mtu) = mtu {
        row.insert("mtu_request".into(), json!(mtu));
    }
    if let Some(ofport) = ofport {
        row.insert("ofport_request".into(), json!(ofport));
    }
    Value::Object(row)
}

/// The tunnel kinds [`TunnelSpec::kind`] may name.
const TUNNEL_KINDS: [&str; 3] = ["vxlan", "gre", "geneve"];

fn check_tunnel(tunnel: &TunnelSpec) -> Result<(), OvsdbError> {
    check_ifname("tunnel", &tunnel.name)?;
    if !TUNNEL_KINDS.contains(&tunnel.kind.as_str()) {
        return Err(invalid(
            format!("tunnel {} of type {:?}", tunnel.name, tunnel.kind),
            "expected vxlan, gre or geneve",
        ));
    }
    Ok(())
}

/// The Interface row of a tunnel port: its type and `options:remote_ip` (and `key`).
fn tunnel_row(tunnel: &TunnelSpec) -> Value {
    let mut options = vec![("remote_ip".to_string(), tunnel.remote_ip.to_string())];
    if let Some(key) = tunnel.key {
        options.push(("key".to_string(), key.to_string()));
    }
    let mut row = interface_row(&tunnel.name, &tunnel.kind, None, None);
    row["options"] = datum::string_map(options.iter().map(|(k, v)| (k, v)));
    row
}

/// Adds a tunnel port to `bridge` (the reconciler's repair of one deleted by hand).
pub(crate) fn add_tunnel(bridge: &str, tunnel: &TunnelSpec) -> Result<Change, OvsdbError> {
    check_tunnel(tunnel)?;
    Ok(insert_port(
        bridge,
        &tunnel.name,
        tunnel_row(tunnel),
        Map::new(),
    ))
}

/// The Interface row of a port: a host interface, or a patch port to `patch_peer`.
fn port_interface_row(
    name: &str,
    patch_peer: Option<&str>,
    mtu: Option<u32>,
    ofport: Option<u32>,
) -> Result<Value, OvsdbError> {
    let Some(peer) = patch_peer else {
        return Ok(interface_row(name, "", mtu, ofport));
    };
    check_ifname("patch peer", peer)?;
    if peer == name {
        return Err(invalid(format!("patch port {name}"), "its peer is itself"));
    }
    let mut row = interface_row(name, "patch", None, ofport);
    let options = [("peer".to_string(), peer.to_string())];
    row["options"] = datum::string_map(options.iter().map(|(k, v)| (k, v)));
    Ok(row)
}

/// Checks a port's access VLAN and trunks (0..=4095).
fn check_vlans(port: &str, tag: Option<u16>, trunks: &[u16]) -> Result<(), OvsdbError> {
    match tag.iter().chain(trunks).find(|&&t| t > 4095) {
        Some(bad) => Err(invalid(
            format!("VLAN {bad} for port {port}"),
            "expected 0..=4095",
        )),
        None => Ok(()),
    }
}

/// The `tag` and `trunks` columns of a Port row, when set.
fn set_vlans(port: &mut Map<String, Value>, tag: Option<u16>, trunks: &[u16]) {
    if let Some(tag) = tag {
        port.insert("tag".into(), json!(tag));
    }
    if !trunks.is_empty() {
        port.insert("trunks".into(), datum::set(trunks.iter().map(|t| json!(t))));
    }
}

/// Creates the bridge with its internal port, uplinks and controllers, and links it
/// from the `Open_vSwitch` row.
pub(crate) fn create_bridge(spec: &BridgeSpec) -> Result<Change, OvsdbError> {
    check_ifname("bridge", &spec.name)?;
    if spec.datapath_type.is_empty() {
        return Err(invalid(
            format!("datapath type for bridge {}", spec.name),
            "expected netdev or system",
        ));
    }
    let mtu = check_mtu(&spec.name, spec.mtu)?;
    let dpid = spec
        .datapath_id
        .as_deref()
        .map(normalize_dpid)
        .transpose()?;
    let mut names = BTreeSet::from([spec.name.as_str()]);
    for uplink in &spec.uplinks {
        check_ifname("uplink", &uplink.name)?;
        check_ofport(&uplink.name, uplink.ofport)?;
        check_vlans(&uplink.name, uplink.tag, &uplink.trunks)?;
        if !names.insert(&uplink.name) {
            return Err(invalid(
                format!("uplink {}", uplink.name),
                "named twice, or named like the bridge",
            ));
        }
    }
    for tunnel in &spec.tunnels {
        check_tunnel(tunnel)?;
        if !names.insert(&tunnel.name) {
            return Err(invalid(
                format!("tunnel {}", tunnel.name),
                "named twice, or named like the bridge or an uplink",
            ));
        }
    }
    if let Some(empty) = spec.controllers.iter().find(|c| c.trim().is_empty()) {
        return Err(invalid(
            format!("controller {empty:?}"),
            "expected a target like tcp:IP:PORT",
        ));
    }

    let mut change = Change::new(format!("create bridge {}", spec.name));
    change.guard(
        "Bridge",
        vec![eq("name", spec.name.as_str())],
        false,
        Guard::BridgeExists(spec.name.clone()),
    );
    for name in &names {
        change.guard(
            "Port",
            vec![eq("name", *name)],
            false,
            Guard::PortExists(name.to_string()),
        );
    }

    let mut ports = Vec::new();
    let mut attach =
        |change: &mut Change, name: &str, iface: Value, vlans: (Option<u16>, &[u16])| {
            let i = ports.len();
            let op = change.txn.insert("Interface", iface, &format!("iface{i}"));
            change.new_interfaces.push(op);
            let mut port = Map::new();
            port.insert("name".into(), json!(name));
            port.insert("interfaces".into(), datum::named_uuid(&format!("iface{i}")));
            set_vlans(&mut port, vlans.0, vlans.1);
            change
                .txn
                .insert("Port", Value::Object(port), &format!("port{i}"));
            ports.push(datum::named_uuid(&format!("port{i}")));
        };
    attach(
        &mut change,
        &spec.name,
        interface_row(&spec.name, "internal", mtu, None),
        (None, &[]),
    );
    for uplink in &spec.uplinks {
        let iface = port_interface_row(
            &uplink.name,
            uplink.patch_peer.as_deref(),
            None,
            uplink.ofport,
        )?;
        attach(
            &mut change,
            &uplink.name,
            iface,
            (uplink.tag, &uplink.trunks),
        );
    }
    for tunnel in &spec.tunnels {
        attach(&mut change, &tunnel.name, tunnel_row(tunnel), (None, &[]));
    }

    let mut controllers = Vec::new();
    for (i, target) in spec.controllers.iter().enumerate() {
        let name = format!("ctl{i}");
        change
            .txn
            .insert("Controller", json!({"target": target}), &name);
        controllers.push(datum::named_uuid(&name));
    }

    let mut bridge = Map::new();
    bridge.insert("name".into(), json!(spec.name));
    bridge.insert("datapath_type".into(), json!(spec.datapath_type));
    bridge.insert("ports".into(), datum::set(ports));
    bridge.insert("external_ids".into(), datum::string_map(&spec.external_ids));
    if !controllers.is_empty() {
        bridge.insert("controller".into(), datum::set(controllers));
        bridge.insert("fail_mode".into(), json!("secure"));
    }
    if let Some(dpid) = dpid {
        let other_config = [("datapath-id".to_string(), dpid)];
        bridge.insert(
            "other_config".into(),
            datum::string_map(other_config.iter().map(|(k, v)| (k, v))),
        );
    }
    let insert = change.txn.insert("Bridge", Value::Object(bridge), "bridge");
    change.txn.mutate(
        DB,
        vec![],
        vec![json!([
            "bridges",
            "insert",
            datum::set([datum::named_uuid("bridge")])
        ])],
    );
    change.undo = Some(Undo::DeleteBridge {
        name: spec.name.clone(),
        insert,
    });
    Ok(change.finish())
}

/// Finds a bridge's uuid (for [`delete_bridge`]): one select, result 0.
pub(crate) fn find_bridge(name: &str) -> Txn {
    find_named("Bridge", name)
}

/// One select of the `_uuid` of `table`'s row named `name`.
fn find_named(table: &str, name: &str) -> Txn {
    let mut txn = Txn::default();
    txn.select(table, vec![eq("name", name)], &["_uuid"]);
    txn
}

/// The uuid [`find_bridge`] found, if any.
pub(crate) fn found(results: &[Value], table: &'static str) -> Result<Option<String>, OvsdbError> {
    match txn::rows(results, 0)? {
        [] => Ok(None),
        [row] => Ok(Some(Row::new(table, row)?.uuid("_uuid")?.to_string())),
        rows => Err(OvsdbError::Protocol(format!(
            "{} {table} rows share one name",
            rows.len()
        ))),
    }
}

/// Deletes the bridge row `uuid`; its ports, interfaces and controllers are not root
/// rows, so OVSDB garbage-collects them with it.
pub(crate) fn delete_bridge(name: &str, uuid: &str) -> Change {
    let mut change = Change::new(format!("delete bridge {name}"));
    change.guard(
        "Bridge",
        vec![is_row(uuid)],
        true,
        Guard::NoSuchBridge(name.to_string()),
    );
    change.txn.mutate(
        DB,
        vec![],
        vec![json!([
            "bridges",
            "delete",
            datum::set([datum::uuid(uuid)])
        ])],
    );
    change.txn.delete("Bridge", vec![is_row(uuid)]);
    change.finish()
}

/// Adds a host interface as a port of `bridge`.
pub(crate) fn add_port(bridge: &str, spec: &PortSpec) -> Result<Change, OvsdbError> {
    check_ifname("port", &spec.name)?;
    let mtu = check_mtu(&spec.name, spec.mtu)?;
    let ofport = check_ofport(&spec.name, spec.ofport)?;
    check_vlans(&spec.name, spec.tag, &spec.trunks)?;

    let mut iface_row = port_interface_row(&spec.name, spec.patch_peer.as_deref(), mtu, ofport)?;
    if !spec.interface_external_ids.is_empty() {
        iface_row["external_ids"] = datum::string_map(&spec.interface_external_ids);
    }
    let mut port = Map::new();
    port.insert("external_ids".into(), datum::string_map(&spec.external_ids));
    set_vlans(&mut port, spec.tag, &spec.trunks);
    Ok(insert_port(bridge, &spec.name, iface_row, port))
}

/// Inserts port `name` with the one interface `iface_row` into `bridge`; `port` holds
/// the Port row's other columns.
fn insert_port(bridge: &str, name: &str, iface_row: Value, mut port: Map<String, Value>) -> Change {
    let mut change = Change::new(format!("add port {name} to bridge {bridge}"));
    change.guard(
        "Bridge",
        vec![eq("name", bridge)],
        true,
        Guard::NoSuchBridge(bridge.to_string()),
    );
    change.guard(
        "Port",
        vec![eq("name", name)],
        false,
        Guard::PortExists(name.to_string()),
    );
    let iface = change.txn.insert("Interface", iface_row, "iface");
    change.new_interfaces.push(iface);
    port.insert("name".into(), json!(name));
    port.insert("interfaces".into(), datum::named_uuid("iface"));
    let insert = change.txn.insert("Port", Value::Object(port), "port");
    change.txn.mutate(
        "Bridge",
        vec![eq("name", bridge)],
        vec![json!([
            "ports",
            "insert",
            datum::set([datum::named_uuid("port")])
        ])],
    );
    change.undo = Some(Undo::RemovePort {
        bridge: bridge.to_string(),
        port: name.to_string(),
        insert,
    });
    change.finish()
}

/// Sets the VLANs trunk port `port` of `bridge` carries (`Port.trunks`; empty: all).
pub(crate) fn set_port_trunks(
    bridge: &str,
    port: &str,
    trunks: &[u16],
) -> Result<Change, OvsdbError> {
    check_vlans(port, None, trunks)?;
    let mut change = Change::new(format!("set the VLANs of port {port} on bridge {bridge}"));
    change.guard(
        "Port",
        vec![eq("name", port)],
        true,
        Guard::NoSuchPort {
            bridge: bridge.to_string(),
            port: port.to_string(),
        },
    );
    change.txn.update(
        "Port",
        vec![eq("name", port)],
        json!({"trunks": datum::set(trunks.iter().map(|t| json!(t)))}),
    );
    Ok(change.finish())
}

/// Finds a port's uuid (for [`remove_port`]): one select, result 0.
pub(crate) fn find_port(name: &str) -> Txn {
    find_named("Port", name)
}

/// Sets `key=value` in port `port`'s `external_ids`, replacing any earlier value: one
/// mutate (delete the key, then insert it), result 0 counts the rows changed.
pub(crate) fn set_port_external_id(port: &str, key: &str, value: &str) -> Txn {
    let mut txn = Txn::default();
    txn.mutate(
        "Port",
        vec![eq("name", port)],
        vec![
            json!(["external_ids", "delete", datum::set([json!(key)])]),
            json!(["external_ids", "insert", ["map", [[key, value]]]]),
        ],
    );
    txn
}

/// Sets the `set` entries and removes the `remove` keys in the `external_ids` of
/// bridge `bridge`, nothing else of it.
pub(crate) fn update_bridge_external_ids(
    bridge: &str,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Txn {
    let mut txn = Txn::default();
    let keys = set.keys().chain(remove).map(|k| json!(k));
    let pairs: Vec<Value> = set.iter().map(|(k, v)| json!([k, v])).collect();
    txn.mutate(
        "Bridge",
        vec![eq("name", bridge)],
        vec![
            json!(["external_ids", "delete", datum::set(keys)]),
            json!(["external_ids", "insert", ["map", pairs]]),
        ],
    );
    txn
}

/// Removes port `uuid` (named `port`) from `bridge`; its interface goes with it.
pub(crate) fn remove_port(bridge: &str, port: &str, uuid: &str) -> Change {
    let mut change = Change::new(format!("remove port {port} from bridge {bridge}"));
    change.guard(
        "Bridge",
        vec![eq("name", bridge)],
        true,
        Guard::NoSuchBridge(bridge.to_string()),
    );
    let no_port = Guard::NoSuchPort {
        bridge: bridge.to_string(),
        port: port.to_string(),
    };
    let on_bridge = vec![
        eq("name", bridge),
        json!(["ports", "includes", datum::uuid(uuid)]),
    ];
    change.guard("Bridge", on_bridge, true, no_port);
    change.txn.mutate(
        "Bridge",
        vec![eq("name", bridge)],
        vec![json!(["ports", "delete", datum::set([datum::uuid(uuid)])])],
    );
    change.txn.delete("Port", vec![is_row(uuid)]);
    change.finish()
}

/// Reads the given Interface rows' names, errors and OpenFlow port numbers.
pub(crate) fn interface_status(uuids: &[String]) -> Txn {
    let mut txn = Txn::default();
    for uuid in uuids {
        txn.select(
            "Interface",
            vec![is_row(uuid)],
            &["name", "type", "error", "ofport"],
        );
    }
    txn
}

/// The first interface [`interface_status`] found broken: `(name, OVS's message)`.
///
/// ovs-vswitchd writes each interface's `ofport` (and `error` on failure) in the same
/// transaction as `cur_cfg`, so once the change is applied: `error` set or `ofport`
/// -1 means it could not open the interface, and an empty `ofport` means it never got
/// to it, which happens when the bridge itself could not be created. Patch ports are
/// not judged: one end reports "No usable peer" until the other end is made (a
/// separate change), and their names and peers are checked before the change.
pub(crate) fn interface_failure(results: &[Value]) -> Result<Option<(String, String)>, OvsdbError> {
    for i in 0..results.len() {
        for row in txn::rows(results, i)? {
            let row = Row::new("Interface", row)?;
            if row.string("type")? == "patch" {
                continue;
            }
            let name = row.string("name")?.to_string();
            if let Some(error) = row.opt_string("error")? {
                return Ok(Some((name, error.to_string())));
            }
            let message = match row.opt_int("ofport")? {
                Some(-1) => "ovs-vswitchd could not add it (ofport -1)",
                None => {
                    "ovs-vswitchd applied the change but did not attach it (no ofport): its \
                     bridge could not be created, e.g. for a datapath type this host lacks \
                     (see ovs-vswitchd.log)"
                }
                Some(_) => continue,
            };
            return Ok(Some((name, message.to_string())));
        }
    }
    Ok(None)
}

/// Reads bridges (all, or the one named), ports and interfaces, for [`parse_bridges`].
pub(crate) fn query_bridges(name: Option<&str>) -> Txn {
    let mut txn = Txn::default();
    let conditions = name.map(|n| vec![eq("name", n)]).unwrap_or_default();
    txn.select(
        "Bridge",
        conditions,
        &["name", "datapath_type", "external_ids", "ports"],
    );
    txn.select(
        "Port",
        vec![],
        &[
            "_uuid",
            "name",
            "tag",
            "trunks",
            "external_ids",
            "interfaces",
        ],
    );
    txn.select("Interface", vec![], &["_uuid", "type", "ofport"]);
    txn
}

pub(crate) fn parse_bridges(results: &[Value]) -> Result<Vec<BridgeInfo>, OvsdbError> {
    let mut interfaces = HashMap::new();
    for row in txn::rows(results, 2)? {
        let row = Row::new("Interface", row)?;
        let ofport = row
            .opt_int("ofport")?
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0);
        interfaces.insert(
            row.uuid("_uuid")?,
            (row.string("type")?.to_string(), ofport),
        );
    }
    let mut ports = HashMap::new();
    for row in txn::rows(results, 1)? {
        let row = Row::new("Port", row)?;
        let first = row
            .uuid_set("interfaces")?
            .first()
            .and_then(|i| interfaces.get(i));
        let (interface_type, ofport) = first.cloned().unwrap_or_default();
        let tag = row.opt_int("tag")?.and_then(|t| u16::try_from(t).ok());
        let info = PortInfo {
            name: row.string("name")?.to_string(),
            tag,
            external_ids: row.string_map("external_ids")?,
            interface_type,
            ofport,
            trunks: row
                .int_set("trunks")?
                .into_iter()
                .filter_map(|t| u16::try_from(t).ok())
                .collect(),
        };
        ports.insert(row.uuid("_uuid")?, info);
    }
    let mut bridges = txn::rows(results, 0)?
        .iter()
        .map(|row| {
            let row = Row::new("Bridge", row)?;
            let mut bridge_ports: Vec<PortInfo> = row
                .uuid_set("ports")?
                .iter()
                .filter_map(|p| ports.get(p).cloned())
                .collect();
            bridge_ports.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(BridgeInfo {
                name: row.string("name")?.to_string(),
                datapath_type: row.string("datapath_type")?.to_string(),
                external_ids: row.string_map("external_ids")?,
                ports: bridge_ports,
            })
        })
        .collect::<Result<Vec<_>, OvsdbError>>()?;
    bridges.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(bridges)
}

/// Reads `Open_vSwitch.external_ids` (the chassis settings of OVN live there).
pub(crate) fn query_switch_external_ids() -> Txn {
    let mut txn = Txn::default();
    txn.select(DB, vec![], &["external_ids"]);
    txn
}

pub(crate) fn parse_switch_external_ids(
    results: &[Value],
) -> Result<BTreeMap<String, String>, OvsdbError> {
    match txn::rows(results, 0)? {
        [row] => Row::new(DB, row)?.string_map("external_ids"),
        rows => Err(OvsdbError::Protocol(format!(
            "expected one Open_vSwitch row, found {}; run `ovs-vsctl --no-wait init`",
            rows.len()
        ))),
    }
}

/// Sets `key=value` in `Open_vSwitch.external_ids` (`None`: removes the key).
pub(crate) fn set_switch_external_id(key: &str, value: Option<&str>) -> Txn {
    let mut txn = Txn::default();
    let mut mutations = vec![json!(["external_ids", "delete", datum::set([json!(key)])])];
    if let Some(value) = value {
        mutations.push(json!(["external_ids", "insert", ["map", [[key, value]]]]));
    }
    txn.mutate(DB, vec![], mutations);
    txn
}

/// Reads `Open_vSwitch.datapath_types`.
pub(crate) fn query_datapath_types() -> Txn {
    let mut txn = Txn::default();
    txn.select(DB, vec![], &["datapath_types"]);
    txn
}

pub(crate) fn parse_datapath_types(results: &[Value]) -> Result<Vec<String>, OvsdbError> {
    let mut types = Vec::new();
    for row in txn::rows(results, 0)? {
        let Some(set) = row.get("datapath_types") else {
            return Err(OvsdbError::Protocol(
                "Open_vSwitch row without datapath_types".into(),
            ));
        };
        for t in datum::set_elements(set) {
            let t = t.as_str().ok_or_else(|| {
                OvsdbError::Protocol(format!("Open_vSwitch.datapath_types: not a string: {t}"))
            })?;
            types.push(t.to_string());
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovsdb::UplinkSpec;

    fn ops(change: &Change) -> Vec<Value> {
        let params = change.txn.params();
        assert_eq!(params[0], "Open_vSwitch");
        params.as_array().unwrap()[1..].to_vec()
    }

    fn op_of<'a>(ops: &'a [Value], op: &str, table: &str) -> Vec<&'a Value> {
        ops.iter()
            .filter(|o| o["op"] == op && o["table"] == table)
            .collect()
    }

    fn full_spec() -> BridgeSpec {
        BridgeSpec {
            name: "br0".into(),
            datapath_type: "netdev".into(),
            external_ids: [("dovesnap-network".to_string(), "n1".to_string())].into(),
            mtu: Some(1400),
            controllers: vec!["tcp:127.0.0.1:6653".into()],
            datapath_id: Some("0x00000000000000AB".into()),
            uplinks: vec![UplinkSpec {
                name: "eth1".into(),
                ofport: Some(7),
                ..UplinkSpec::default()
            }],
            tunnels: vec![TunnelSpec {
                name: "vxl1".into(),
                kind: "vxlan".into(),
                remote_ip: "192.0.2.2".parse().unwrap(),
                key: Some(42),
            }],
        }
    }

    #[test]
    fn create_bridge_is_one_transaction_with_named_references() {
        let change = create_bridge(&full_spec()).unwrap();
        let ops = ops(&change);
        assert_eq!(
            ops[0],
            json!({"op": "comment", "comment": "dovesnap: create bridge br0"})
        );

        let ifaces = op_of(&ops, "insert", "Interface");
        assert_eq!(
            ifaces[0]["row"],
            json!({"name": "br0", "type": "internal", "mtu_request": 1400})
        );
        assert_eq!(ifaces[0]["uuid-name"], "iface0");
        assert_eq!(
            ifaces[1]["row"],
            json!({"name": "eth1", "type": "", "ofport_request": 7})
        );
        assert_eq!(
            ifaces[2]["row"],
            json!({"name": "vxl1", "type": "vxlan",
                   "options": ["map", [["remote_ip", "192.0.2.2"], ["key", "42"]]]})
        );
        let ports = op_of(&ops, "insert", "Port");
        assert_eq!(
            ports[0]["row"],
            json!({"name": "br0", "interfaces": ["named-uuid", "iface0"]})
        );
        assert_eq!(ports[1]["uuid-name"], "port1");
        let ctl = op_of(&ops, "insert", "Controller");
        assert_eq!(ctl[0]["row"], json!({"target": "tcp:127.0.0.1:6653"}));

        let bridge = op_of(&ops, "insert", "Bridge");
        assert_eq!(
            bridge[0]["row"],
            json!({
                "name": "br0",
                "datapath_type": "netdev",
                "ports": ["set", [["named-uuid", "port0"], ["named-uuid", "port1"],
                                  ["named-uuid", "port2"]]],
                "external_ids": ["map", [["dovesnap-network", "n1"]]],
                "controller": ["set", [["named-uuid", "ctl0"]]],
                "fail_mode": "secure",
                "other_config": ["map", [["datapath-id", "00000000000000ab"]]],
            })
        );
        let link = op_of(&ops, "mutate", "Open_vSwitch");
        assert_eq!(
            link[0]["mutations"],
            json!([["bridges", "insert", ["set", [["named-uuid", "bridge"]]]]])
        );
        assert_eq!(link[1]["mutations"], json!([["next_cfg", "+=", 1]]));
        assert_eq!(ops[change.next_cfg]["op"], "select");
        assert_eq!(change.next_cfg, ops.len() - 1);

        // Guards: bridge absent, the three port names absent.
        let waits = op_of(&ops, "wait", "Bridge");
        assert_eq!(waits[0]["where"], json!([["name", "==", "br0"]]));
        assert_eq!(waits[0]["rows"], json!([]));
        assert_eq!(op_of(&ops, "wait", "Port").len(), 3);
    }

    #[test]
    fn plain_bridge_has_no_controller_or_fail_mode() {
        let mut spec = BridgeSpec::new("br1");
        spec.datapath_type = "netdev".into();
        let change = create_bridge(&spec).unwrap();
        let ops = ops(&change);
        let row = &op_of(&ops, "insert", "Bridge")[0]["row"];
        assert!(row.get("controller").is_none());
        assert!(row.get("fail_mode").is_none());
        assert!(row.get("other_config").is_none());
        assert_eq!(row["external_ids"], json!(["map", []]));
        assert_eq!(
            op_of(&ops, "insert", "Interface")[0]["row"],
            json!({"name": "br1", "type": "internal"})
        );
    }

    #[test]
    fn rejects_bad_specs() {
        let bad = |f: fn(&mut BridgeSpec)| {
            let mut spec = full_spec();
            f(&mut spec);
            create_bridge(&spec).unwrap_err().to_string()
        };
        assert!(bad(|s| s.datapath_id = Some("12".into())).contains("16 hex digits"));
        assert!(bad(|s| s.datapath_id = Some("zz00000000000000".into())).contains("hex"));
        assert!(bad(|s| s.name = "a-very-long-bridge-name".into()).contains("15 bytes"));
        assert!(bad(|s| s.name = String::new()).contains("non-empty"));
        assert!(bad(|s| s.uplinks[0].name = "br0".into()).contains("named twice"));
        assert!(bad(|s| s.uplinks[0].ofport = Some(0)).contains("1..=65279"));
        assert!(bad(|s| s.mtu = Some(10)).contains("MTU"));
        assert!(bad(|s| s.datapath_type = String::new()).contains("datapath type"));
        assert!(bad(|s| s.controllers = vec![" ".into()]).contains("controller"));
        assert!(bad(|s| s.tunnels[0].name = "eth1".into()).contains("named twice"));
        assert!(bad(|s| s.tunnels[0].kind = "stt".into()).contains("vxlan, gre or geneve"));
        assert!(bad(|s| s.tunnels[0].name = "x".repeat(16)).contains("15 bytes"));
        let mut port = PortSpec::new("v1");
        port.tag = Some(4096);
        assert!(add_port("br0", &port).is_err());
        assert!(add_port("br0", &PortSpec::new("a/b")).is_err());
    }

    #[test]
    fn add_tunnel_is_a_guarded_port_with_its_options() {
        let tunnel = full_spec().tunnels.remove(0);
        let change = add_tunnel("br0", &tunnel).unwrap();
        let ops = ops(&change);
        assert_eq!(
            op_of(&ops, "insert", "Interface")[0]["row"],
            json!({"name": "vxl1", "type": "vxlan",
                   "options": ["map", [["remote_ip", "192.0.2.2"], ["key", "42"]]]})
        );
        assert_eq!(
            op_of(&ops, "insert", "Port")[0]["row"],
            json!({"name": "vxl1", "interfaces": ["named-uuid", "iface"]})
        );
        assert_eq!(op_of(&ops, "wait", "Bridge").len(), 1);
        assert_eq!(op_of(&ops, "wait", "Port")[0]["rows"], json!([]));
        let keyless = TunnelSpec {
            key: None,
            ..tunnel
        };
        let change = add_tunnel("br0", &keyless).unwrap();
        assert_eq!(
            op_of(&super::tests::ops(&change), "insert", "Interface")[0]["row"]["options"],
            json!(["map", [["remote_ip", "192.0.2.2"]]])
        );
    }

    #[test]
    fn add_port_guards_and_links_the_port() {
        let spec = PortSpec {
            name: "veth1".into(),
            tag: Some(10),
            external_ids: [("endpoint".to_string(), "e1".to_string())].into(),
            mtu: Some(1450),
            ofport: Some(5),
            interface_external_ids: [("iface-id".to_string(), "lsp1".to_string())].into(),
            ..PortSpec::default()
        };
        let change = add_port("br0", &spec).unwrap();
        let ops = ops(&change);
        assert_eq!(
            op_of(&ops, "insert", "Interface")[0]["row"],
            json!({"name": "veth1", "type": "", "mtu_request": 1450, "ofport_request": 5,
                   "external_ids": ["map", [["iface-id", "lsp1"]]]})
        );
        assert_eq!(
            op_of(&ops, "insert", "Port")[0]["row"],
            json!({
                "name": "veth1", "interfaces": ["named-uuid", "iface"],
                "external_ids": ["map", [["endpoint", "e1"]]], "tag": 10,
            })
        );
        let link = op_of(&ops, "mutate", "Bridge");
        assert_eq!(link[0]["where"], json!([["name", "==", "br0"]]));
        assert_eq!(
            link[0]["mutations"],
            json!([["ports", "insert", ["set", [["named-uuid", "port"]]]]])
        );
        assert_eq!(op_of(&ops, "wait", "Bridge")[0]["rows"], json!([{}]));
        assert_eq!(op_of(&ops, "wait", "Port")[0]["rows"], json!([]));
    }

    #[test]
    fn refusals_map_to_guards_or_ovsdb_details() {
        let change = add_port("br0", &PortSpec::new("veth1")).unwrap();
        // Operation 1 is the "bridge exists" guard, 2 the "port absent" one (0 is the comment).
        let refusal = |op| Refusal {
            op,
            error: "timed out".into(),
            details: Some("\"where\" clause test failed".into()),
        };
        assert!(
            matches!(change.refused(refusal(Some(1))), OvsdbError::NoSuchBridge(b) if b == "br0")
        );
        assert!(
            matches!(change.refused(refusal(Some(2))), OvsdbError::PortExists(p) if p == "veth1")
        );
        let other = change.refused(Refusal {
            op: None,
            error: "constraint violation".into(),
            details: Some("identical values (veth1) for index on column \"name\"".into()),
        });
        let text = other.to_string();
        assert!(text.contains("add port veth1 to bridge br0"), "{text}");
        assert!(
            text.contains("constraint violation: identical values"),
            "{text}"
        );
    }

    #[test]
    fn undo_uses_the_inserted_uuids() {
        let change = add_port("br0", &PortSpec::new("veth1")).unwrap();
        let ops_len = change.txn.len();
        let mut results = vec![json!({}); ops_len];
        let port_insert = ops(&change)
            .iter()
            .position(|o| o["op"] == "insert" && o["table"] == "Port")
            .unwrap();
        results[port_insert] = json!({"uuid": ["uuid", "pppp"]});
        let undo = change.undo(&results).unwrap().unwrap();
        let undo_ops = ops(&undo);
        assert_eq!(
            op_of(&undo_ops, "mutate", "Bridge")[0]["mutations"],
            json!([["ports", "delete", ["set", [["uuid", "pppp"]]]]])
        );
        assert_eq!(
            op_of(&undo_ops, "delete", "Port")[0]["where"],
            json!([["_uuid", "==", ["uuid", "pppp"]]])
        );
        assert_eq!(
            op_of(&undo_ops, "wait", "Bridge")[1]["where"],
            json!([
                ["name", "==", "br0"],
                ["ports", "includes", ["uuid", "pppp"]]
            ])
        );
    }

    #[test]
    fn delete_bridge_unlinks_and_deletes() {
        let change = delete_bridge("br0", "bbbb");
        let ops = ops(&change);
        assert_eq!(
            op_of(&ops, "mutate", "Open_vSwitch")[0]["mutations"],
            json!([["bridges", "delete", ["set", [["uuid", "bbbb"]]]]])
        );
        assert_eq!(
            op_of(&ops, "delete", "Bridge")[0]["where"],
            json!([["_uuid", "==", ["uuid", "bbbb"]]])
        );
        let refused = change.refused(Refusal {
            op: Some(1),
            error: "timed out".into(),
            details: None,
        });
        assert!(refused.is_not_found());
    }

    #[test]
    fn finds_rows_by_name() {
        assert_eq!(found(&[json!({"rows": []})], "Bridge").unwrap(), None);
        let one = [json!({"rows": [{"_uuid": ["uuid", "u1"]}]})];
        assert_eq!(found(&one, "Bridge").unwrap().as_deref(), Some("u1"));
        assert_eq!(
            find_port("p1").params()[1],
            json!({"op": "select", "table": "Port", "where": [["name", "==", "p1"]],
                   "columns": ["_uuid"]})
        );
        assert_eq!(find_bridge("b").params()[1]["table"], "Bridge");
    }

    #[test]
    fn trunks_and_patch_ports() {
        let spec = BridgeSpec {
            uplinks: vec![
                UplinkSpec {
                    name: "eth1".into(),
                    trunks: vec![100, 200],
                    ..UplinkSpec::default()
                },
                UplinkSpec {
                    name: "p-here".into(),
                    ofport: Some(3),
                    tag: Some(100),
                    patch_peer: Some("p-there".into()),
                    ..UplinkSpec::default()
                },
            ],
            ..BridgeSpec::new("ovstk-eth1")
        };
        let made = ops(&create_bridge(&spec).unwrap());
        let ports = op_of(&made, "insert", "Port");
        assert_eq!(ports[1]["row"]["trunks"], json!(["set", [100, 200]]));
        assert_eq!(ports[2]["row"]["tag"], json!(100));
        assert!(ports[2]["row"].get("trunks").is_none());
        let ifaces = op_of(&made, "insert", "Interface");
        assert_eq!(
            ifaces[2]["row"],
            json!({"name": "p-here", "type": "patch", "ofport_request": 3,
                   "options": ["map", [["peer", "p-there"]]]})
        );
        let patch = PortSpec {
            tag: Some(200),
            patch_peer: Some("p-here".into()),
            ..PortSpec::new("p-there")
        };
        let added = ops(&add_port("ovstk-eth1", &patch).unwrap());
        assert_eq!(
            op_of(&added, "insert", "Interface")[0]["row"]["type"],
            "patch"
        );
        assert_eq!(op_of(&added, "insert", "Port")[0]["row"]["tag"], 200);
        let change = set_port_trunks("ovstk-eth1", "eth1", &[100]).unwrap();
        let set = ops(&change);
        assert_eq!(
            op_of(&set, "update", "Port")[0]["row"],
            json!({"trunks": ["set", [100]]})
        );
        let e = change.refused(Refusal {
            op: Some(1),
            error: "timed out".into(),
            details: None,
        });
        assert!(e.is_not_found(), "{e}");
        // Bad VLANs and a patch port that is its own peer are refused before OVSDB.
        assert!(set_port_trunks("b", "eth1", &[4096]).is_err());
        let own_peer = PortSpec {
            patch_peer: Some("p".into()),
            ..PortSpec::new("p")
        };
        assert!(add_port("b", &own_peer).is_err());
    }

    #[test]
    fn reports_interface_errors() {
        let ok = [json!({"rows": [{"name": "v1", "type": "", "error": ["set", []], "ofport": 3}]})];
        assert_eq!(interface_failure(&ok).unwrap(), None);
        let waiting = [
            json!({"rows": [{"name": "p0", "type": "patch", "ofport": -1,
            "error": "No usable peer 'p1' exists in 'netdev' datapath."}]}),
        ];
        assert_eq!(interface_failure(&waiting).unwrap(), None);
        let failed = [
            json!({"rows": [{"name": "br0", "type": "internal", "error": ["set", []], "ofport": 65534}]}),
            json!({"rows": [{"name": "nope0", "type": "", "ofport": -1,
                             "error": "could not open network device nope0 (No such device)"}]}),
        ];
        let (name, message) = interface_failure(&failed).unwrap().unwrap();
        assert_eq!(name, "nope0");
        assert!(message.contains("No such device"));
        let silent =
            [json!({"rows": [{"name": "x", "type": "", "error": ["set", []], "ofport": -1}]})];
        assert!(interface_failure(&silent)
            .unwrap()
            .unwrap()
            .1
            .contains("ofport -1"));
        assert_eq!(interface_status(&["a".into(), "b".into()]).len(), 2);
    }

    #[test]
    fn parses_bridges_ports_and_interfaces() {
        let results = [
            json!({"rows": [
                {"name": "br1", "datapath_type": "netdev", "external_ids": ["map", []],
                 "ports": ["uuid", "p3"]},
                {"name": "br0", "datapath_type": "netdev",
                 "external_ids": ["map", [["net", "n0"]]],
                 "ports": ["set", [["uuid", "p2"], ["uuid", "p1"]]]},
            ]}),
            json!({"rows": [
                {"_uuid": ["uuid", "p1"], "name": "br0", "tag": ["set", []],
                 "trunks": ["set", [100, 200]],
                 "external_ids": ["map", []], "interfaces": ["uuid", "i1"]},
                {"_uuid": ["uuid", "p2"], "name": "a-veth", "tag": 10, "trunks": ["set", []],
                 "external_ids": ["map", [["ep", "e1"]]], "interfaces": ["uuid", "i2"]},
                {"_uuid": ["uuid", "p3"], "name": "br1", "tag": ["set", []], "trunks": 300,
                 "external_ids": ["map", []], "interfaces": ["uuid", "i3"]},
            ]}),
            json!({"rows": [
                {"_uuid": ["uuid", "i1"], "type": "internal", "ofport": 65534},
                {"_uuid": ["uuid", "i2"], "type": "", "ofport": 1},
                {"_uuid": ["uuid", "i3"], "type": "internal", "ofport": ["set", []]},
            ]}),
        ];
        let bridges = parse_bridges(&results).unwrap();
        assert_eq!(bridges.len(), 2);
        assert_eq!(bridges[0].name, "br0");
        assert_eq!(bridges[0].external_ids["net"], "n0");
        let ports = &bridges[0].ports;
        assert_eq!(ports[0].name, "a-veth");
        assert_eq!(ports[0].tag, Some(10));
        assert_eq!(ports[0].trunks, Vec::<u16>::new());
        assert_eq!(ports[1].trunks, vec![100, 200]);
        assert_eq!(bridges[1].ports[0].trunks, vec![300]);
        assert_eq!(ports[0].interface_type, "");
        assert_eq!(ports[0].ofport, Some(1));
        assert_eq!(ports[0].external_ids["ep"], "e1");
        assert_eq!(ports[1].interface_type, "internal");
        assert_eq!(bridges[1].ports[0].ofport, None);

        let q = query_bridges(Some("br0")).params();
        assert_eq!(q[1]["where"], json!([["name", "==", "br0"]]));
        assert_eq!(query_bridges(None).params()[1]["where"], json!([]));
    }

    #[test]
    fn parses_datapath_types() {
        let results = [json!({"rows": [{"datapath_types": ["set", ["netdev", "system"]]}]})];
        assert_eq!(
            parse_datapath_types(&results).unwrap(),
            ["netdev", "system"]
        );
        assert_eq!(
            query_datapath_types().params()[1]["columns"],
            json!(["datapath_types"])
        );
    }
}
