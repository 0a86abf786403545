//! The OVN northbound database (schema `OVN_Northbound`), spoken to with the same
//! RFC 7047 client as the local switch: one reconnecting connection, transactions
//! built as pure functions below (unit-tested), optimistic concurrency through `wait`
//! operations so that plugins on several hosts can change the same switch at once.
//!
//! What dovesnap keeps in the northbound database:
//! - `Logical_Switch`: `name` is the network's key (see [`super::switch_name`]);
//!   `external_ids:dovesnap-subnet` the subnet, and one
//!   `external_ids:dovesnap-host-<chassis>=<docker network id>` per host that has the
//!   network: the reference count. The last host to leave deletes the switch.
//! - `Logical_Switch_Port`: `name` is the OVS interface's `external_ids:iface-id`;
//!   `addresses` `["MAC IP"]`; `external_ids:dovesnap-chassis` the host that owns it
//!   (so a returning host can delete the ports it lost while down).
//! - `Address_Set` `dovesnap_pool_*`: the address pools of dovesnap's IPAM, see
//!   [`super::ipam`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::ovsdb::{self, Connection, OvsdbError, Remote, Row, Txn};

use super::OvnError;

/// The database name.
pub const DB: &str = "OVN_Northbound";
/// The southbound database (where the chassis register).
pub const SB_DB: &str = "OVN_Southbound";
/// `Logical_Switch.external_ids`: the network's subnet.
pub const EXT_SUBNET: &str = "dovesnap-subnet";
/// `Logical_Switch.external_ids` key prefix: one per host using the switch.
pub const EXT_HOST_PREFIX: &str = "dovesnap-host-";
/// `Logical_Switch_Port.external_ids`: the chassis (`system-id`) owning the port.
pub const EXT_CHASSIS: &str = "dovesnap-chassis";
/// `Logical_Switch_Port.external_ids`: the Docker endpoint id.
pub const EXT_ENDPOINT_ID: &str = "dovesnap-endpoint-id";

const LS: &str = "Logical_Switch";
const LSP: &str = "Logical_Switch_Port";
/// How often a transaction that lost a race with another host is retried.
const RETRIES: usize = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A logical switch as dovesnap reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchInfo {
    pub uuid: String,
    pub name: String,
    pub external_ids: BTreeMap<String, String>,
    pub ports: Vec<String>,
}

impl SwitchInfo {
    /// The chassis that hold a reference on the switch.
    pub fn hosts(&self) -> Vec<&str> {
        self.external_ids
            .keys()
            .filter_map(|k| k.strip_prefix(EXT_HOST_PREFIX))
            .collect()
    }
}

/// A logical switch port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub uuid: String,
    pub name: String,
    pub addresses: Vec<String>,
    pub external_ids: BTreeMap<String, String>,
}

impl PortInfo {
    /// Whether one of the port's addresses (`"MAC IP..."`) holds `ip`.
    pub fn has_ip(&self, ip: Ipv4Addr) -> bool {
        let ip = ip.to_string();
        self.addresses
            .iter()
            .any(|a| a.split_whitespace().skip(1).any(|w| w == ip))
    }
}

/// A port to add: an endpoint of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub mac: String,
    pub ip: Option<Ipv4Addr>,
    pub chassis: String,
    pub endpoint_id: String,
}

impl PortSpec {
    fn addresses(&self) -> String {
        match self.ip {
            Some(ip) => format!("{} {ip}", self.mac),
            None => self.mac.clone(),
        }
    }
}

fn host_key(chassis: &str) -> String {
    format!("{EXT_HOST_PREFIX}{chassis}")
}

/// An OVSDB map of strings, `["map", [[key, value], …]]`, of `pairs` in their order
/// (a `BTreeMap`'s, or a list's): the one encoder of the OVN code's maps, for rows,
/// `includes` conditions and mutations alike.
pub(super) fn string_map<K: AsRef<str>, V: AsRef<str>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Value {
    let pairs: Vec<Value> = pairs
        .into_iter()
        .map(|(k, v)| json!([k.as_ref(), v.as_ref()]))
        .collect();
    json!(["map", pairs])
}

/// Reads the switch named `name` (result 0) and every port (result 1).
fn query(name: &str) -> Txn {
    let mut txn = Txn::on(DB);
    txn.select(
        LS,
        vec![ovsdb::eq("name", name)],
        &["_uuid", "name", "external_ids", "ports"],
    );
    txn.select(LSP, vec![], &["_uuid", "name", "addresses", "external_ids"]);
    txn
}

fn parse_switches(rows: &[Value]) -> Result<Vec<SwitchInfo>, OvsdbError> {
    rows.iter()
        .map(|r| {
            let row = Row::new(LS, r)?;
            Ok(SwitchInfo {
                uuid: row.uuid("_uuid")?.to_string(),
                name: row.string("name")?.to_string(),
                external_ids: row.string_map("external_ids")?,
                ports: row
                    .uuid_set("ports")?
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

fn parse_ports(rows: &[Value]) -> Result<Vec<PortInfo>, OvsdbError> {
    rows.iter()
        .map(|r| {
            let row = Row::new(LSP, r)?;
            let addresses = r
                .get("addresses")
                .map(crate::ovsdb::set_strings)
                .transpose()?
                .unwrap_or_default();
            Ok(PortInfo {
                uuid: row.uuid("_uuid")?.to_string(),
                name: row.string("name")?.to_string(),
                addresses,
                external_ids: row.string_map("external_ids")?,
            })
        })
        .collect()
}

/// A switch and its ports, as read in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchState {
    pub switch: SwitchInfo,
    pub ports: Vec<PortInfo>,
}

impl SwitchState {
    /// The chassis the switch names: those holding a reference and those owning a
    /// port, sorted, once each.
    pub fn chassis(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .switch
            .hosts()
            .into_iter()
            .chain(
                self.ports
                    .iter()
                    .filter_map(|p| p.external_ids.get(EXT_CHASSIS).map(String::as_str)),
            )
            .map(str::to_string)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn parse_query(name: &str, results: &[Value]) -> Result<Option<SwitchState>, OvnError> {
    let mut switches = parse_switches(ovsdb::rows(results, 0)?)?;
    if switches.len() > 1 {
        return Err(OvnError::DuplicateSwitch(name.to_string()));
    }
    let Some(switch) = switches.pop() else {
        return Ok(None);
    };
    let ports = parse_ports(ovsdb::rows(results, 1)?)?
        .into_iter()
        .filter(|p| switch.ports.contains(&p.uuid))
        .collect();
    Ok(Some(SwitchState { switch, ports }))
}

/// Only commits if the switch's `column` still reads `value` (what the caller saw).
fn guard_unchanged(txn: &mut Txn, uuid: &str, column: &str, value: Value) {
    let mut row = serde_json::Map::new();
    row.insert(column.to_string(), value);
    txn.push_raw(json!({
        "op": "wait", "table": LS, "timeout": 0,
        "where": [["_uuid", "==", ["uuid", uuid]]],
        "columns": [column], "until": "==", "rows": [row],
    }));
}

/// Creates switch `name` unless one exists (op 0 fails then: another host won).
fn create_switch(name: &str, subnet: &str, chassis: &str, network_id: &str) -> Txn {
    let mut txn = Txn::on(DB);
    txn.require(LS, vec![ovsdb::eq("name", name)], false);
    let ids: BTreeMap<String, String> = [
        (EXT_SUBNET.to_string(), subnet.to_string()),
        (host_key(chassis), network_id.to_string()),
    ]
    .into();
    txn.insert(
        LS,
        json!({"name": name, "external_ids": string_map(&ids)}),
        "ls",
    );
    txn.comment(&format!(
        "dovesnap: {chassis} creates logical switch {name}"
    ));
    txn
}

/// Adds (or refreshes) `chassis`'s reference on an existing switch.
fn add_host(uuid: &str, chassis: &str, network_id: &str) -> Txn {
    let key = host_key(chassis);
    let mut txn = Txn::on(DB);
    txn.mutate(
        LS,
        vec![ovsdb::eq("_uuid", json!(["uuid", uuid]))],
        vec![
            json!(["external_ids", "delete", ["set", [key]]]),
            json!([
                "external_ids",
                "insert",
                string_map([(key.as_str(), network_id)])
            ]),
        ],
    );
    txn
}

/// Drops `chassis`'s reference; the switch (and its ports) go with the last one.
/// Guarded on the `external_ids` read, so two hosts leaving at once cannot both think
/// the other stays.
fn remove_host(state: &SwitchInfo, chassis: &str) -> (Txn, bool) {
    let key = host_key(chassis);
    let mut txn = Txn::on(DB);
    guard_unchanged(
        &mut txn,
        &state.uuid,
        "external_ids",
        string_map(&state.external_ids),
    );
    let last = state.hosts().iter().all(|h| *h == chassis);
    let this = vec![ovsdb::eq("_uuid", json!(["uuid", state.uuid]))];
    if last {
        txn.delete(LS, this);
        txn.comment(&format!(
            "dovesnap: {chassis}, the last host, deletes logical switch {}",
            state.name
        ));
    } else {
        txn.mutate(
            LS,
            this,
            vec![json!(["external_ids", "delete", ["set", [key]]])],
        );
    }
    (txn, last)
}

/// Adds a port to the switch, guarded on the switch's port set as read (so no other
/// host added a port with the same address in between).
fn add_port(state: &SwitchInfo, spec: &PortSpec) -> Txn {
    let mut txn = Txn::on(DB);
    let ports: Vec<Value> = state.ports.iter().map(|u| json!(["uuid", u])).collect();
    guard_unchanged(&mut txn, &state.uuid, "ports", json!(["set", ports]));
    let ids: BTreeMap<String, String> = [
        (EXT_CHASSIS.to_string(), spec.chassis.clone()),
        (EXT_ENDPOINT_ID.to_string(), spec.endpoint_id.clone()),
    ]
    .into();
    txn.insert(
        LSP,
        json!({"name": spec.name, "addresses": spec.addresses(), "external_ids": string_map(&ids)}),
        "lsp",
    );
    txn.mutate(
        LS,
        vec![ovsdb::eq("_uuid", json!(["uuid", state.uuid]))],
        vec![json!(["ports", "insert", ["set", [["named-uuid", "lsp"]]]])],
    );
    txn
}

/// Removes ports from the switch; unreferenced, OVSDB deletes the port rows.
fn remove_ports(switch_uuid: &str, port_uuids: &[&str]) -> Txn {
    let mut txn = Txn::on(DB);
    let set: Vec<Value> = port_uuids.iter().map(|u| json!(["uuid", u])).collect();
    txn.mutate(
        LS,
        vec![ovsdb::eq("_uuid", json!(["uuid", switch_uuid]))],
        vec![json!(["ports", "delete", ["set", set]])],
    );
    txn
}

pub(super) fn refused(what: String, r: ovsdb::Refusal) -> OvnError {
    OvnError::Refused {
        what,
        error: r.error,
        details: r.details.unwrap_or_default(),
    }
}

/// Removes the ports of the chassis in `dead` and their references on the switch (one
/// transaction, guarded on what was read).
fn reap(state: &SwitchState, dead: &[String]) -> Option<(Txn, Vec<String>)> {
    let dead = |c: &str| dead.iter().any(|d| d == c);
    let ports: Vec<&str> = state
        .ports
        .iter()
        .filter(|p| p.external_ids.get(EXT_CHASSIS).is_some_and(|c| dead(c)))
        .map(|p| p.uuid.as_str())
        .collect();
    let hosts: Vec<String> = state
        .switch
        .hosts()
        .into_iter()
        .filter(|h| dead(h))
        .map(str::to_string)
        .collect();
    if ports.is_empty() && hosts.is_empty() {
        return None;
    }
    let mut txn = Txn::on(DB);
    let sw = &state.switch;
    guard_unchanged(
        &mut txn,
        &sw.uuid,
        "external_ids",
        string_map(&sw.external_ids),
    );
    let set: Vec<Value> = ports.iter().map(|u| json!(["uuid", u])).collect();
    let keys: Vec<String> = hosts.iter().map(|h| host_key(h)).collect();
    txn.mutate(
        LS,
        vec![ovsdb::eq("_uuid", json!(["uuid", sw.uuid]))],
        vec![
            json!(["ports", "delete", ["set", set]]),
            json!(["external_ids", "delete", ["set", keys]]),
        ],
    );
    txn.comment(&format!(
        "dovesnap: reaping chassis gone from the southbound database: {}",
        hosts.join(", ")
    ));
    Some((txn, hosts))
}

/// What a join did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    Created,
    Existing,
}

/// A handle on the northbound database; reconnects when the connection broke.
pub struct Northbound {
    remote: Remote,
    conn: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for Northbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Northbound")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl Northbound {
    /// A handle; the connection is made by the first call.
    pub fn new(remote: Remote) -> Self {
        Northbound {
            remote,
            conn: Mutex::new(None),
        }
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    fn nb_err(&self, source: OvsdbError) -> OvnError {
        OvnError::Northbound {
            remote: self.remote.to_string(),
            source,
        }
    }

    /// Runs `txn`: `Ok(Err(refusal))` when the server refused it.
    pub(super) async fn transact(
        &self,
        txn: &Txn,
    ) -> Result<Result<Vec<Value>, ovsdb::Refusal>, OvnError> {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_none_or(Connection::is_closed) {
            let c = Connection::connect_remote(&self.remote, CONNECT_TIMEOUT, Box::new(|_, _| {}))
                .await
                .map_err(|e| self.nb_err(e))?;
            *conn = Some(c);
        }
        let c = conn.as_ref().expect("just connected");
        let result = c
            .call("transact", txn.params())
            .await
            .map_err(|e| self.nb_err(e))?;
        ovsdb::check(result, txn.len()).map_err(|e| self.nb_err(e))
    }

    pub(super) async fn commit(&self, what: &str, txn: &Txn) -> Result<Vec<Value>, OvnError> {
        self.transact(txn).await?.map_err(|r| OvnError::Refused {
            what: what.to_string(),
            error: r.error,
            details: r.details.unwrap_or_default(),
        })
    }

    /// Checks that the database answers and is OVN's northbound one.
    pub async fn ping(&self) -> Result<(), OvnError> {
        let mut txn = Txn::on(DB);
        txn.select("NB_Global", vec![], &["_uuid"]);
        self.commit("read NB_Global", &txn).await.map(drop)
    }

    /// The switch named `name` and its ports.
    pub async fn switch(&self, name: &str) -> Result<Option<SwitchState>, OvnError> {
        let results = self
            .commit("read the logical switches", &query(name))
            .await?;
        parse_query(name, &results)
    }

    /// Takes `chassis`'s reference on switch `name` for `subnet`, creating the switch
    /// if no host has it yet. Refuses a switch that serves another subnet.
    pub async fn join_switch(
        &self,
        name: &str,
        subnet: &str,
        chassis: &str,
        network_id: &str,
    ) -> Result<Joined, OvnError> {
        for _ in 0..RETRIES {
            match self.switch(name).await? {
                None => {
                    let txn = create_switch(name, subnet, chassis, network_id);
                    match self.transact(&txn).await? {
                        Ok(_) => return Ok(Joined::Created),
                        // Another host created it first: join theirs.
                        Err(r) if r.op == Some(0) => continue,
                        Err(r) => return Err(refused(format!("create logical switch {name}"), r)),
                    }
                }
                Some(state) => {
                    let theirs = state.switch.external_ids.get(EXT_SUBNET);
                    if theirs.map(String::as_str) != Some(subnet) {
                        return Err(OvnError::SubnetMismatch {
                            switch: name.to_string(),
                            theirs: theirs.cloned().unwrap_or_else(|| "none".into()),
                            ours: subnet.to_string(),
                        });
                    }
                    let what = format!("join logical switch {name}");
                    self.commit(&what, &add_host(&state.switch.uuid, chassis, network_id))
                        .await?;
                    return Ok(Joined::Existing);
                }
            }
        }
        Err(OvnError::Contended(format!("join logical switch {name}")))
    }

    /// Drops `chassis`'s reference on switch `name`; returns whether the switch was
    /// deleted (this was the last host).
    pub async fn leave_switch(&self, name: &str, chassis: &str) -> Result<bool, OvnError> {
        for _ in 0..RETRIES {
            let Some(state) = self.switch(name).await? else {
                return Ok(false);
            };
            let (txn, last) = remove_host(&state.switch, chassis);
            match self.transact(&txn).await? {
                Ok(_) => return Ok(last),
                Err(r) if r.op == Some(0) => continue,
                Err(r) => return Err(refused(format!("leave logical switch {name}"), r)),
            }
        }
        Err(OvnError::Contended(format!("leave logical switch {name}")))
    }

    /// Adds port `spec` to switch `name`, refusing an IP address that another port of
    /// the switch already has (each host's Docker IPAM allocates on its own).
    pub async fn add_port(&self, name: &str, spec: &PortSpec) -> Result<(), OvnError> {
        for _ in 0..RETRIES {
            let state = self
                .switch(name)
                .await?
                .ok_or_else(|| OvnError::NoSwitch(name.to_string()))?;
            if let Some(ip) = spec.ip {
                if let Some(other) = state
                    .ports
                    .iter()
                    .find(|p| p.has_ip(ip) && p.name != spec.name)
                {
                    return Err(OvnError::AddressInUse {
                        ip,
                        switch: name.to_string(),
                        port: other.name.clone(),
                        chassis: other
                            .external_ids
                            .get(EXT_CHASSIS)
                            .cloned()
                            .unwrap_or_else(|| "unknown".into()),
                    });
                }
            }
            let stale: Vec<&str> = state
                .ports
                .iter()
                .filter(|p| p.name == spec.name)
                .map(|p| p.uuid.as_str())
                .collect();
            if !stale.is_empty() {
                // A leftover of a crash between the port and its OVS interface.
                self.commit(
                    &format!("replace logical port {}", spec.name),
                    &remove_ports(&state.switch.uuid, &stale),
                )
                .await?;
                continue;
            }
            match self.transact(&add_port(&state.switch, spec)).await? {
                Ok(_) => return Ok(()),
                Err(r) if r.op == Some(0) => continue,
                Err(r) => {
                    return Err(refused(
                        format!("add logical port {} to switch {name}", spec.name),
                        r,
                    ))
                }
            }
        }
        Err(OvnError::Contended(format!("add a port to switch {name}")))
    }

    /// Removes from switch `name` the ports and references of the chassis in `dead`:
    /// hosts that died and were removed from OVN (`ovn-sbctl chassis-del`), missing
    /// from the southbound database for the grace period (see [`crate::ovn::reap`]).
    /// Returns how many ports went.
    pub async fn reap_dead_chassis(&self, name: &str, dead: &[String]) -> Result<usize, OvnError> {
        for _ in 0..RETRIES {
            let Some(state) = self.switch(name).await? else {
                return Ok(0);
            };
            let Some((txn, hosts)) = reap(&state, dead) else {
                return Ok(0);
            };
            let ports = state
                .ports
                .iter()
                .filter(|p| {
                    p.external_ids
                        .get(EXT_CHASSIS)
                        .is_some_and(|c| dead.contains(c))
                })
                .count();
            match self.transact(&txn).await? {
                Ok(_) => {
                    tracing::info!(switch = %name, ?hosts, ports, "reaped dead chassis");
                    return Ok(ports);
                }
                Err(r) if r.op == Some(0) => continue,
                Err(r) => return Err(refused(format!("reap dead chassis on {name}"), r)),
            }
        }
        Err(OvnError::Contended(format!("reap dead chassis on {name}")))
    }

    /// The chassis registered in this (southbound) database.
    pub async fn chassis_names(&self) -> Result<Vec<String>, OvnError> {
        let mut txn = Txn::on(SB_DB);
        txn.select("Chassis", vec![], &["name"]);
        let results = self.commit("read the chassis", &txn).await?;
        ovsdb::rows(&results, 0)?
            .iter()
            .map(|r| Ok(Row::new("Chassis", r)?.string("name")?.to_string()))
            .collect()
    }

    /// Removes the ports named `ports` from switch `name` (missing ones are skipped).
    pub async fn remove_ports(&self, name: &str, ports: &[&str]) -> Result<(), OvnError> {
        let Some(state) = self.switch(name).await? else {
            return Ok(());
        };
        let uuids: Vec<&str> = state
            .ports
            .iter()
            .filter(|p| ports.contains(&p.name.as_str()))
            .map(|p| p.uuid.as_str())
            .collect();
        if uuids.is_empty() {
            return Ok(());
        }
        self.commit(
            &format!("remove ports from logical switch {name}"),
            &remove_ports(&state.switch.uuid, &uuids),
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(hosts: &[&str]) -> SwitchInfo {
        let mut ids: BTreeMap<String, String> =
            [(EXT_SUBNET.to_string(), "10.30.0.0/24".to_string())].into();
        for h in hosts {
            ids.insert(host_key(h), format!("net-{h}"));
        }
        SwitchInfo {
            uuid: "ls-1".into(),
            name: "sw".into(),
            external_ids: ids,
            ports: vec!["p-1".into()],
        }
    }

    #[test]
    fn creates_a_switch_only_if_none_has_the_name() {
        let p = create_switch("sw", "10.30.0.0/24", "h1", "abc").params();
        assert_eq!(p[0], json!(DB));
        assert_eq!(p[1]["op"], "wait");
        assert_eq!(p[1]["where"], json!([["name", "==", "sw"]]));
        assert_eq!(p[1]["rows"], json!([]));
        assert_eq!(p[2]["op"], "insert");
        assert_eq!(
            p[2]["row"]["external_ids"],
            json!([
                "map",
                [
                    ["dovesnap-host-h1", "abc"],
                    ["dovesnap-subnet", "10.30.0.0/24"]
                ]
            ])
        );
    }

    #[test]
    fn the_last_host_deletes_the_switch() {
        let (txn, last) = remove_host(&switch(&["h1", "h2"]), "h1");
        assert!(!last);
        let p = txn.params();
        assert_eq!(p[1]["op"], "wait");
        assert_eq!(p[1]["columns"], json!(["external_ids"]));
        assert_eq!(p[2]["op"], "mutate");
        assert_eq!(
            p[2]["mutations"],
            json!([["external_ids", "delete", ["set", ["dovesnap-host-h1"]]]])
        );

        let (txn, last) = remove_host(&switch(&["h2"]), "h2");
        assert!(last);
        assert_eq!(txn.params()[2]["op"], "delete");
        // A host that holds no reference and is alone: still the last.
        let (_, last) = remove_host(&switch(&[]), "h3");
        assert!(last);
    }

    #[test]
    fn adds_ports_guarded_on_the_port_set() {
        let spec = PortSpec {
            name: "dovesnap-e1".into(),
            mac: "02:42:0a:1e:00:05".into(),
            ip: Some(Ipv4Addr::new(10, 30, 0, 5)),
            chassis: "h1".into(),
            endpoint_id: "e1".into(),
        };
        let p = add_port(&switch(&["h1"]), &spec).params();
        assert_eq!(p[1]["rows"], json!([{"ports": ["set", [["uuid", "p-1"]]]}]));
        assert_eq!(p[2]["row"]["addresses"], "02:42:0a:1e:00:05 10.30.0.5");
        assert_eq!(
            p[3]["mutations"],
            json!([["ports", "insert", ["set", [["named-uuid", "lsp"]]]]])
        );
        let p = remove_ports("ls-1", &["p-1", "p-2"]).params();
        assert_eq!(
            p[1]["mutations"],
            json!([[
                "ports",
                "delete",
                ["set", [["uuid", "p-1"], ["uuid", "p-2"]]]
            ]])
        );
    }

    #[test]
    fn reaps_only_dead_chassis() {
        let mut sw = switch(&["h1", "h3"]);
        sw.ports = vec!["p-1".into(), "p-3".into()];
        let port = |uuid: &str, chassis: &str| PortInfo {
            uuid: uuid.into(),
            name: uuid.into(),
            addresses: vec![],
            external_ids: [(EXT_CHASSIS.to_string(), chassis.to_string())].into(),
        };
        let state = SwitchState {
            switch: sw,
            ports: vec![port("p-1", "h1"), port("p-3", "h3")],
        };
        assert_eq!(state.chassis(), ["h1", "h3"]);
        let (txn, hosts) = reap(&state, &["h3".to_string(), "h4".to_string()]).unwrap();
        assert_eq!(hosts, ["h3"]);
        let p = txn.params();
        assert_eq!(p[1]["op"], "wait");
        assert_eq!(
            p[2]["mutations"],
            json!([
                ["ports", "delete", ["set", [["uuid", "p-3"]]]],
                ["external_ids", "delete", ["set", ["dovesnap-host-h3"]]]
            ])
        );
        assert!(reap(&state, &["h2".to_string()]).is_none());
    }

    #[test]
    fn reads_switches_and_their_ports() {
        let results = vec![
            json!({"rows": [{"_uuid": ["uuid", "ls-1"], "name": "sw",
                "external_ids": ["map", [["dovesnap-host-h1", "n1"], ["dovesnap-host-h2", "n2"]]],
                "ports": ["set", [["uuid", "p-1"]]]}]}),
            json!({"rows": [
                {"_uuid": ["uuid", "p-1"], "name": "a", "addresses": "02:00:00:00:00:01 10.30.0.5",
                 "external_ids": ["map", [["dovesnap-chassis", "h2"]]]},
                {"_uuid": ["uuid", "p-9"], "name": "other-switch", "addresses": ["set", []],
                 "external_ids": ["map", []]}]}),
        ];
        let state = parse_query("sw", &results).unwrap().unwrap();
        assert_eq!(state.switch.hosts(), ["h1", "h2"]);
        assert_eq!(state.ports.len(), 1);
        assert!(state.ports[0].has_ip(Ipv4Addr::new(10, 30, 0, 5)));
        assert!(!state.ports[0].has_ip(Ipv4Addr::new(10, 30, 0, 50)));

        let none = vec![json!({"rows": []}), json!({"rows": []})];
        assert_eq!(parse_query("sw", &none).unwrap(), None);
        let two = vec![
            json!({"rows": [results[0]["rows"][0].clone(), results[0]["rows"][0].clone()]}),
            json!({"rows": []}),
        ];
        assert!(matches!(
            parse_query("sw", &two),
            Err(OvnError::DuplicateSwitch(_))
        ));
    }
}
