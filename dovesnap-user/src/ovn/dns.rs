//! Names across hosts: the names Docker gives an overlay endpoint (its container's name
//! and network aliases) as rows of OVN's `DNS` table on the network's logical switch,
//! which ovn-controller on every chassis answers for the switch's ports.
//!
//! The path of a query (docs/design/overlay.md, "Names across hosts"): a container
//! started with `--dns 169.254.53.53` asks Docker's embedded resolver (127.0.0.11),
//! which answers the containers of its own host and forwards the rest to
//! 169.254.53.53 from the container's namespace. Join gives every overlay endpoint a
//! connected route to that address through the overlay interface, so the query enters
//! the logical switch; ovn-controller's DNS responder (`ls_in_dns_lookup`) answers the
//! switch's names. The address is a `localport` logical port of every switch
//! ([`dns_port_name`]): OVN answers ARP for it on every chassis.
//!
//! What dovesnap keeps in the northbound database: one `DNS` row per endpoint,
//! `records` name → address, `external_ids` [`EXT_SWITCH`] (found even after the switch
//! went), [`EXT_CHASSIS`] and [`EXT_ENDPOINT_ID`], referenced (weakly) from
//! `Logical_Switch.dns_records`. Deleting the row is all a removal takes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::host::addr::Mac;
use crate::ovsdb::{self, OvsdbError, Row, Txn};

use super::northbound::{string_map, Northbound, DB, EXT_CHASSIS, EXT_ENDPOINT_ID};
use super::OvnError;

/// The address containers send their queries to: link-local, the same on every switch
/// (switches are isolated from one another), never routed off the host.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 53, 53);
/// The MAC of the DNS localport, `0a:00:a9:fe:35:35` (locally administered;
/// "a9:fe:35:35" is the address).
pub const DNS_MAC: Mac = Mac([0x0a, 0x00, 0xa9, 0xfe, 0x35, 0x35]);
/// `DNS.external_ids`: the logical switch the row belongs to.
pub const EXT_SWITCH: &str = "dovesnap-switch";

const DNS: &str = "DNS";
const LS: &str = "Logical_Switch";
const LSP: &str = "Logical_Switch_Port";
const RETRIES: usize = 5;
/// A DNS name's longest text form (RFC 1035).
const MAX_NAME: usize = 253;

/// The `localport` logical port holding [`DNS_ADDR`] on switch `switch` (port names are
/// unique across the whole northbound database, hence the switch in it).
pub fn dns_port_name(switch: &str) -> String {
    format!("dovesnap-dns-{switch}")
}

/// The names as OVN's DNS table wants them: lower case, no leading `/` (Docker's
/// container names) or trailing dot, only valid host names, once each, in order.
pub fn normalize<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let n = n.trim().trim_start_matches('/').trim_end_matches('.');
        let n = n.to_ascii_lowercase();
        let valid = !n.is_empty()
            && n.len() <= MAX_NAME
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if valid && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// One endpoint's row in the DNS table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRow {
    pub uuid: String,
    pub records: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
}

impl DnsRow {
    pub fn chassis(&self) -> Option<&str> {
        self.external_ids.get(EXT_CHASSIS).map(String::as_str)
    }
    pub fn endpoint_id(&self) -> Option<&str> {
        self.external_ids.get(EXT_ENDPOINT_ID).map(String::as_str)
    }
}

/// The names of one endpoint, to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub switch: String,
    /// The endpoint's logical port: the row is only written while it exists.
    pub port: String,
    pub chassis: String,
    pub endpoint_id: String,
    pub ip: Ipv4Addr,
    /// Already [`normalize`]d.
    pub names: Vec<String>,
}

fn by_uuid(uuid: &str) -> Vec<Value> {
    vec![ovsdb::eq("_uuid", json!(["uuid", uuid]))]
}

/// Reads the DNS rows of switch `switch` (result 0).
fn query_rows(switch: &str) -> Txn {
    let mut txn = Txn::on(DB);
    txn.select(
        DNS,
        vec![json!([
            "external_ids",
            "includes",
            string_map([(EXT_SWITCH, switch)])
        ])],
        &["_uuid", "records", "external_ids"],
    );
    txn
}

fn parse_rows(rows: &[Value]) -> Result<Vec<DnsRow>, OvsdbError> {
    rows.iter()
        .map(|r| {
            let row = Row::new(DNS, r)?;
            Ok(DnsRow {
                uuid: row.uuid("_uuid")?.to_string(),
                records: row.string_map("records")?,
                external_ids: row.string_map("external_ids")?,
            })
        })
        .collect()
}

/// Replaces the endpoint's rows (`old`) by one holding `names`, referenced from the
/// switch; only if the switch and the endpoint's logical port still exist (ops 0 and 1
/// fail otherwise: the endpoint was deleted meanwhile).
fn publish(n: &Names, old: &[&str]) -> Txn {
    let mut txn = Txn::on(DB);
    txn.require(LS, vec![ovsdb::eq("name", n.switch.as_str())], true);
    txn.require(LSP, vec![ovsdb::eq("name", n.port.as_str())], true);
    // Op 2: the endpoint's rows are still those read (two publishers at once, Join's
    // and the reconciler's, would otherwise both add one).
    let rows: Vec<Value> = old.iter().map(|u| json!({"_uuid": ["uuid", u]})).collect();
    txn.push_raw(json!({
        "op": "wait", "table": DNS, "timeout": 0,
        "where": [["external_ids", "includes",
                   string_map([(EXT_SWITCH, &n.switch), (EXT_ENDPOINT_ID, &n.endpoint_id)])]],
        "columns": ["_uuid"], "until": "==", "rows": rows,
    }));
    for uuid in old {
        txn.delete(DNS, by_uuid(uuid));
    }
    let records: BTreeMap<String, String> = n
        .names
        .iter()
        .map(|name| (name.clone(), n.ip.to_string()))
        .collect();
    let ids: BTreeMap<String, String> = [
        (EXT_SWITCH.to_string(), n.switch.clone()),
        (EXT_CHASSIS.to_string(), n.chassis.clone()),
        (EXT_ENDPOINT_ID.to_string(), n.endpoint_id.clone()),
    ]
    .into();
    txn.insert(
        DNS,
        json!({"records": string_map(&records), "external_ids": string_map(&ids)}),
        "dns",
    );
    txn.mutate(
        LS,
        vec![ovsdb::eq("name", n.switch.as_str())],
        vec![json!([
            "dns_records",
            "insert",
            ["set", [["named-uuid", "dns"]]]
        ])],
    );
    txn.comment(&format!(
        "dovesnap: {} publishes names {:?} of endpoint {}",
        n.chassis, n.names, n.endpoint_id
    ));
    txn
}

/// Deletes DNS rows (the switch's weak references go with them).
fn delete_rows(uuids: &[&str]) -> Txn {
    let mut txn = Txn::on(DB);
    for uuid in uuids {
        txn.delete(DNS, by_uuid(uuid));
    }
    txn
}

/// Adds the DNS localport to switch `switch` (`switch_uuid`); fails (op 0) when another
/// host added it meanwhile: port names are unique.
fn add_dns_port(switch: &str, switch_uuid: &str) -> Txn {
    let name = dns_port_name(switch);
    let mut txn = Txn::on(DB);
    txn.require(LSP, vec![ovsdb::eq("name", name.as_str())], false);
    txn.insert(
        LSP,
        json!({"name": name, "type": "localport",
               "addresses": format!("{DNS_MAC} {DNS_ADDR}")}),
        "dnsport",
    );
    txn.mutate(
        LS,
        by_uuid(switch_uuid),
        vec![json!([
            "ports",
            "insert",
            ["set", [["named-uuid", "dnsport"]]]
        ])],
    );
    txn
}

impl Northbound {
    /// The DNS rows dovesnap made for switch `switch`.
    pub async fn dns_rows(&self, switch: &str) -> Result<Vec<DnsRow>, OvnError> {
        let results = self
            .commit("read the DNS rows", &query_rows(switch))
            .await?;
        Ok(parse_rows(ovsdb::rows(&results, 0)?)?)
    }

    /// Makes sure switch `switch` has its DNS localport ([`DNS_ADDR`]).
    pub async fn ensure_dns_port(&self, switch: &str) -> Result<(), OvnError> {
        for _ in 0..RETRIES {
            let state = self
                .switch(switch)
                .await?
                .ok_or_else(|| OvnError::NoSwitch(switch.to_string()))?;
            let name = dns_port_name(switch);
            if state.ports.iter().any(|p| p.name == name) {
                return Ok(());
            }
            match self
                .transact(&add_dns_port(switch, &state.switch.uuid))
                .await?
            {
                Ok(_) => return Ok(()),
                Err(r) if r.op == Some(0) => continue,
                Err(r) => {
                    return Err(OvnError::Refused {
                        what: format!("add the DNS port to switch {switch}"),
                        error: r.error,
                        details: r.details.unwrap_or_default(),
                    })
                }
            }
        }
        Err(OvnError::Contended(format!(
            "add the DNS port to switch {switch}"
        )))
    }

    /// Publishes an endpoint's names (replacing what it had). `Ok(false)` when the
    /// switch or the endpoint's port is gone: nothing is written then.
    pub async fn publish_names(&self, n: &Names) -> Result<bool, OvnError> {
        for _ in 0..RETRIES {
            let old: Vec<String> = self
                .dns_rows(&n.switch)
                .await?
                .into_iter()
                .filter(|r| r.endpoint_id() == Some(&n.endpoint_id))
                .map(|r| r.uuid)
                .collect();
            let old: Vec<&str> = old.iter().map(String::as_str).collect();
            match self.transact(&publish(n, &old)).await? {
                Ok(_) => return Ok(true),
                Err(r) if matches!(r.op, Some(0) | Some(1)) => return Ok(false),
                // Another publisher of the same endpoint won: replace its row.
                Err(r) if r.op == Some(2) => continue,
                Err(r) => {
                    return Err(OvnError::Refused {
                        what: format!("publish the names of endpoint {}", n.endpoint_id),
                        error: r.error,
                        details: r.details.unwrap_or_default(),
                    })
                }
            }
        }
        Err(OvnError::Contended(format!(
            "publish the names of endpoint {}",
            n.endpoint_id
        )))
    }

    /// Deletes the DNS rows of switch `switch` that `remove` picks; returns how many.
    pub async fn remove_names(
        &self,
        switch: &str,
        remove: impl Fn(&DnsRow) -> bool,
    ) -> Result<usize, OvnError> {
        let rows = self.dns_rows(switch).await?;
        let gone: Vec<&str> = rows
            .iter()
            .filter(|r| remove(r))
            .map(|r| r.uuid.as_str())
            .collect();
        self.delete_names(switch, &gone).await?;
        Ok(gone.len())
    }

    /// Deletes the DNS rows `uuids` (of switch `switch`, for the error message).
    pub async fn delete_names(&self, switch: &str, uuids: &[&str]) -> Result<(), OvnError> {
        if uuids.is_empty() {
            return Ok(());
        }
        self.commit(
            &format!("remove names from switch {switch}"),
            &delete_rows(uuids),
        )
        .await
        .map(drop)
    }
}

/// How many names the rows hold.
pub fn name_count(rows: &[DnsRow]) -> usize {
    rows.iter().map(|r| r.records.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case_valid_and_once() {
        assert_eq!(
            normalize([
                "/Web",
                "web",
                "db.Example.",
                "bad name",
                "",
                "-x",
                "a_b",
                "c1"
            ]),
            ["web", "db.example", "a_b", "c1"]
        );
        assert!(normalize([&*"a".repeat(64)]).is_empty());
    }

    #[test]
    fn publishes_only_while_the_port_exists_and_replaces_old_rows() {
        let n = Names {
            switch: "sw".into(),
            port: "dovesnap-e1".into(),
            chassis: "h1".into(),
            endpoint_id: "e1".into(),
            ip: Ipv4Addr::new(10, 30, 0, 5),
            names: vec!["web".into(), "www".into()],
        };
        let p = publish(&n, &["d-old"]).params();
        assert_eq!(p[1]["op"], "wait");
        assert_eq!(p[1]["table"], LS);
        assert_eq!(p[1]["rows"], json!([{}]));
        assert_eq!(p[2]["table"], LSP);
        assert_eq!(p[2]["where"], json!([["name", "==", "dovesnap-e1"]]));
        assert_eq!(p[3]["op"], "wait");
        assert_eq!(p[3]["rows"], json!([{"_uuid": ["uuid", "d-old"]}]));
        assert_eq!(p[4]["op"], "delete");
        assert_eq!(p[4]["where"], json!([["_uuid", "==", ["uuid", "d-old"]]]));
        assert_eq!(
            p[5]["row"]["records"],
            json!(["map", [["web", "10.30.0.5"], ["www", "10.30.0.5"]]])
        );
        assert_eq!(
            p[5]["row"]["external_ids"],
            json!([
                "map",
                [
                    ["dovesnap-chassis", "h1"],
                    ["dovesnap-endpoint-id", "e1"],
                    ["dovesnap-switch", "sw"]
                ]
            ])
        );
        assert_eq!(
            p[6]["mutations"],
            json!([["dns_records", "insert", ["set", [["named-uuid", "dns"]]]]])
        );
    }

    #[test]
    fn the_dns_port_is_a_localport_added_once() {
        let p = add_dns_port("sw", "ls-1").params();
        assert_eq!(p[1]["where"], json!([["name", "==", "dovesnap-dns-sw"]]));
        assert_eq!(p[1]["rows"], json!([]));
        assert_eq!(p[2]["row"]["type"], "localport");
        assert_eq!(p[2]["row"]["addresses"], "0a:00:a9:fe:35:35 169.254.53.53");
        assert_eq!(
            p[3]["mutations"],
            json!([["ports", "insert", ["set", [["named-uuid", "dnsport"]]]]])
        );
    }

    #[test]
    fn reads_rows_of_one_switch() {
        let q = query_rows("sw").params();
        assert_eq!(
            q[1]["where"],
            json!([[
                "external_ids",
                "includes",
                ["map", [["dovesnap-switch", "sw"]]]
            ]])
        );
        let rows = parse_rows(&[json!({"_uuid": ["uuid", "d-1"],
            "records": ["map", [["web", "10.30.0.5"], ["www", "10.30.0.5"]]],
            "external_ids": ["map", [["dovesnap-chassis", "h1"], ["dovesnap-endpoint-id", "e1"]]]})])
        .unwrap();
        assert_eq!(rows[0].chassis(), Some("h1"));
        assert_eq!(rows[0].endpoint_id(), Some("e1"));
        assert_eq!(name_count(&rows), 2);
        let p = delete_rows(&["d-1", "d-2"]).params();
        assert_eq!(p.as_array().unwrap().len(), 3);
        assert_eq!(p[2]["op"], "delete");
    }
}
