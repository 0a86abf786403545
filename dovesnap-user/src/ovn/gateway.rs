//! An overlay network's way out through OVN (`-o ovs.ovn.gateway=CHASSIS`): per
//! logical switch, one logical router holding the network's gateway address, with a
//! distributed gateway port on an external logical switch (a `localnet` port, bridged
//! by the gateway chassis' `ovn-bridge-mappings`), bound to the chassis through a
//! `Gateway_Chassis` row; a default route via the external next hop; SNAT of the
//! subnet to the gateway's external address; published ports as `Load_Balancer`s on
//! the router. See docs/design/overlay.md for the picture.
//!
//! Every host of the network makes sure the router exists when it creates the
//! network (one transaction, guarded on "no router of that name", so two hosts at
//! once make one); the host that deletes the switch (the last one) deletes the router,
//! the external switch and the load balancers in one transaction. The router, the
//! external switch and the load balancers carry `external_ids:dovesnap-switch`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde_json::{json, Value};

use crate::firewall::{PortMapping, Proto};
use crate::ovsdb::{self, Row, Txn};

use super::northbound::{string_map, Northbound, DB, EXT_ENDPOINT_ID, SB_DB};
use super::OvnError;

/// The bridge mapping name of the external network unless `ovs.ovn.gateway_network`
/// says otherwise: the gateway chassis needs
/// `ovs-vsctl set Open_vSwitch . external_ids:ovn-bridge-mappings=dovesnap:BRIDGE`.
pub const DEFAULT_NETWORK: &str = "dovesnap";
/// `external_ids` of the router, the external switch and the load balancers: the
/// network's logical switch.
pub const EXT_SWITCH: &str = "dovesnap-switch";
/// `Logical_Router.external_ids`: the gateway's settings (chassis, address, network),
/// compared by every host that joins.
pub const EXT_GATEWAY: &str = "dovesnap-gateway";

const LR: &str = "Logical_Router";
const LRP: &str = "Logical_Router_Port";
const LS: &str = "Logical_Switch";
const LSP: &str = "Logical_Switch_Port";
const LB: &str = "Load_Balancer";
/// How often a creation that lost a race with another host is retried.
const RETRIES: usize = 5;

/// `ovs.ovn.gateway_address`: the gateway's address on the external network, its
/// prefix length and the next hop there (`ADDR/PREFIX@NEXTHOP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayAddress {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub nexthop: Ipv4Addr,
}

/// What is wrong with an `ovs.ovn.gateway_address` (the expected form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadGatewayAddress(pub String);

impl FromStr for GatewayAddress {
    type Err = BadGatewayAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "ADDR/PREFIX@NEXTHOP, the gateway's IPv4 address on the external \
                            network with its prefix length and the next hop in that prefix, \
                            e.g. 198.51.100.10/24@198.51.100.1";
        let bad = |why: &str| BadGatewayAddress(format!("{FORM}{why}"));
        let (cidr, nexthop) = s.split_once('@').ok_or_else(|| bad(""))?;
        let (addr, prefix) = cidr.split_once('/').ok_or_else(|| bad(""))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad(""))?;
        let nexthop: Ipv4Addr = nexthop.parse().map_err(|_| bad(""))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=30).contains(p))
            .ok_or_else(|| bad(" (prefix length 1 to 30)"))?;
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & mask != u32::from(nexthop) & mask || addr == nexthop {
            return Err(bad(" (the next hop must be another address of the prefix)"));
        }
        Ok(GatewayAddress {
            addr,
            prefix,
            nexthop,
        })
    }
}

impl fmt::Display for GatewayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.addr, self.prefix, self.nexthop)
    }
}

/// The gateway of one network, as every host of the network must give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    /// The network's logical switch (names everything else).
    pub switch: String,
    /// The network's subnet, `10.30.0.0/24`: what is SNATed.
    pub subnet: String,
    /// The network's gateway address (Docker's IPAM) and the subnet's prefix length:
    /// the router's port on the network's switch.
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// The chassis (`system-id`) carrying the gateway port.
    pub chassis: String,
    pub external: GatewayAddress,
    /// The bridge mapping name of the external network.
    pub network: String,
}

/// The router of the network on switch `switch`.
pub fn router_name(switch: &str) -> String {
    format!("dovesnap-lr-{switch}")
}

/// The external logical switch of the network on switch `switch`.
pub fn external_switch_name(switch: &str) -> String {
    format!("dovesnap-ext-{switch}")
}

/// A router port's MAC, from its address (locally administered, `0a:58:` + the four
/// octets, as ovn-kubernetes does).
fn router_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn named_set(names: &[&str]) -> Value {
    let items: Vec<Value> = names.iter().map(|n| json!(["named-uuid", n])).collect();
    json!(["set", items])
}

impl GatewaySpec {
    /// What `external_ids:dovesnap-gateway` holds: the settings every host must share.
    pub fn summary(&self) -> String {
        format!(
            "chassis={} address={} network={} gateway={}/{}",
            self.chassis, self.external, self.network, self.gateway, self.prefix
        )
    }

    fn internal_port(&self) -> String {
        format!("dovesnap-lrp-{}", self.switch)
    }

    fn external_port(&self) -> String {
        format!("dovesnap-lrp-ext-{}", self.switch)
    }

    /// Creates the router, its ports, route, NAT and gateway chassis, its port on the
    /// network's switch and the external switch with its localnet port, unless a
    /// router of that name exists (op 0 fails then: another host won). What a router
    /// deleted behind dovesnap's back left (`found`: its port on the network's switch,
    /// the external switch) is replaced, and the network's load balancers are attached
    /// again.
    fn create(&self, found: &Found) -> Txn {
        let sw = self.switch.as_str();
        let router = router_name(sw);
        let (lrp_in, lrp_ex) = (self.internal_port(), self.external_port());
        let mut txn = Txn::on(DB);
        txn.require(LR, vec![ovsdb::eq("name", router.as_str())], false);
        let this_switch = || vec![ovsdb::eq("_uuid", json!(["uuid", found.switch]))];
        txn.delete(
            LS,
            vec![ovsdb::eq("name", external_switch_name(sw).as_str())],
        );
        if !found.stale_ports.is_empty() {
            let stale: Vec<Value> = found
                .stale_ports
                .iter()
                .map(|u| json!(["uuid", u]))
                .collect();
            txn.mutate(
                LS,
                this_switch(),
                vec![json!(["ports", "delete", ["set", stale]])],
            );
        }
        txn.insert(
            "Gateway_Chassis",
            json!({"name": format!("{lrp_ex}-{}", self.chassis),
                   "chassis_name": self.chassis, "priority": 1}),
            "gwc",
        );
        txn.insert(
            LRP,
            json!({"name": lrp_in, "mac": router_mac(self.gateway),
                   "networks": format!("{}/{}", self.gateway, self.prefix)}),
            "lrp_in",
        );
        let ext = self.external;
        txn.insert(
            LRP,
            json!({"name": lrp_ex, "mac": router_mac(ext.addr),
                   "networks": format!("{}/{}", ext.addr, ext.prefix),
                   "gateway_chassis": named_set(&["gwc"])}),
            "lrp_ex",
        );
        txn.insert(
            "Logical_Router_Static_Route",
            json!({"ip_prefix": "0.0.0.0/0", "nexthop": ext.nexthop.to_string(),
                   "output_port": lrp_ex}),
            "route",
        );
        txn.insert(
            "NAT",
            json!({"type": "snat", "logical_ip": self.subnet,
                   "external_ip": ext.addr.to_string()}),
            "nat",
        );
        let summary = self.summary();
        let lbs: Vec<Value> = found.balancers.iter().map(|u| json!(["uuid", u])).collect();
        txn.insert(
            LR,
            json!({"name": router, "ports": named_set(&["lrp_in", "lrp_ex"]),
                   "static_routes": named_set(&["route"]), "nat": named_set(&["nat"]),
                   "load_balancer": ["set", lbs],
                   "external_ids": string_map([(EXT_SWITCH, sw), (EXT_GATEWAY, &summary)])}),
            "lr",
        );
        let router_lsp = |name: String, port: &str| {
            json!({"name": name, "type": "router", "addresses": "router",
                   "options": string_map([("router-port", port)]),
                   "external_ids": string_map([(EXT_SWITCH, sw)])})
        };
        txn.insert(LSP, router_lsp(router_port_name(sw), &lrp_in), "rtr");
        txn.mutate(
            LS,
            this_switch(),
            vec![json!(["ports", "insert", named_set(&["rtr"])])],
        );
        txn.insert(
            LSP,
            router_lsp(format!("dovesnap-ext-rtr-{sw}"), &lrp_ex),
            "ext_rtr",
        );
        txn.insert(
            LSP,
            json!({"name": format!("dovesnap-ln-{sw}"), "type": "localnet",
                   "addresses": "unknown",
                   "options": string_map([("network_name", &self.network)])}),
            "ln",
        );
        txn.insert(
            LS,
            json!({"name": external_switch_name(sw), "ports": named_set(&["ext_rtr", "ln"]),
                   "external_ids": string_map([(EXT_SWITCH, sw)])}),
            "ext",
        );
        txn.comment(&format!(
            "dovesnap: OVN gateway of logical switch {sw} on chassis {}",
            self.chassis
        ));
        txn
    }
}

/// The switch port of the router on switch `switch`.
fn router_port_name(switch: &str) -> String {
    format!("dovesnap-rtr-{switch}")
}

/// Reads the router of switch `switch` (result 0), the switch itself (1), the
/// router's switch port (2) and the network's load balancers (3).
fn query(switch: &str) -> Txn {
    let mut txn = Txn::on(DB);
    txn.select(
        LR,
        vec![ovsdb::eq("name", router_name(switch).as_str())],
        &["_uuid", "external_ids"],
    );
    txn.select(LS, vec![ovsdb::eq("name", switch)], &["_uuid"]);
    txn.select(
        LSP,
        vec![ovsdb::eq("name", router_port_name(switch).as_str())],
        &["_uuid"],
    );
    txn.select(LB, vec![tagged(&[(EXT_SWITCH, switch)])], &["_uuid"]);
    txn
}

/// What [`query`] found when there is no router: the network's switch, a router
/// port left on it, the network's load balancers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Found {
    switch: String,
    stale_ports: Vec<String>,
    balancers: Vec<String>,
}

/// The uuids of the rows the `select` at `index` read.
fn uuids(results: &[Value], index: usize, table: &'static str) -> Result<Vec<String>, OvnError> {
    ovsdb::rows(results, index)?
        .iter()
        .map(|r| Ok(Row::new(table, r)?.uuid("_uuid")?.to_string()))
        .collect()
}

/// Where `external_ids` holds `pairs`.
fn tagged(pairs: &[(&str, &str)]) -> Value {
    json!([
        "external_ids",
        "includes",
        string_map(pairs.iter().copied())
    ])
}

/// Deletes the router of switch `switch` (its ports, route, NAT and gateway chassis
/// with it), the external switch and every load balancer of the network.
fn remove(switch: &str) -> Txn {
    let mut txn = Txn::on(DB);
    txn.delete(LR, vec![ovsdb::eq("name", router_name(switch).as_str())]);
    txn.delete(
        LS,
        vec![ovsdb::eq("name", external_switch_name(switch).as_str())],
    );
    txn.delete(LB, vec![tagged(&[(EXT_SWITCH, switch)])]);
    txn
}

/// One published port: `external port -> container ip:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vip {
    pub proto: Proto,
    pub external_port: u16,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// The VIPs of Docker's port map for a container at `ip`, published on the gateway's
/// external address `external` (a host address in the map must be that one). A port
/// without a host port is published on the same port.
pub fn vips(
    mappings: &[PortMapping],
    ip: Ipv4Addr,
    external: Ipv4Addr,
) -> Result<Vec<Vip>, OvnError> {
    let mut out = Vec::new();
    for m in mappings {
        if let Some(host) = m.host_ip.filter(|h| *h != external) {
            return Err(OvnError::Gateway(format!(
                "a port published on {host}: on a network with an OVN gateway, ports are \
                 published on the gateway's address {external} only (-p PORT or \
                 -p {external}:PORT)"
            )));
        }
        let ctr = m.container_ports;
        let host = m.host_ports.unwrap_or(ctr);
        let pairs: Vec<(u16, u16)> = if host.len() == ctr.len() {
            (host.start()..=host.end())
                .zip(ctr.start()..=ctr.end())
                .collect()
        } else if ctr.len() == 1 {
            vec![(host.start(), ctr.start())]
        } else {
            return Err(OvnError::Gateway(format!(
                "host ports {}-{} for container ports {}-{}: give as many of each",
                host.start(),
                host.end(),
                ctr.start(),
                ctr.end()
            )));
        };
        out.extend(pairs.into_iter().map(|(e, p)| Vip {
            proto: m.proto,
            external_port: e,
            ip,
            port: p,
        }));
    }
    Ok(out)
}

/// A load balancer per protocol on the router `router_uuid` for `endpoint`'s VIPs.
fn publish(
    switch: &str,
    router_uuid: &str,
    endpoint: &str,
    external: Ipv4Addr,
    vips: &[Vip],
) -> Txn {
    let mut txn = Txn::on(DB);
    let mut names = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        let map: BTreeMap<String, String> = vips
            .iter()
            .filter(|v| v.proto == proto)
            .map(|v| {
                (
                    format!("{external}:{}", v.external_port),
                    format!("{}:{}", v.ip, v.port),
                )
            })
            .collect();
        if map.is_empty() {
            continue;
        }
        let named = format!("lb_{proto}");
        txn.insert(
            LB,
            json!({"name": format!("dovesnap-lb-{endpoint}-{proto}"), "protocol": proto.as_str(),
                   "vips": string_map(&map),
                   "external_ids": string_map([(EXT_SWITCH, switch), (EXT_ENDPOINT_ID, endpoint)])}),
            &named,
        );
        names.push(named);
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    txn.mutate(
        LR,
        vec![ovsdb::eq("_uuid", json!(["uuid", router_uuid]))],
        vec![json!(["load_balancer", "insert", named_set(&names)])],
    );
    txn
}

/// Deletes `endpoint`'s load balancers (the router's weak references go with them).
fn unpublish(switch: &str, endpoint: &str) -> Txn {
    let mut txn = Txn::on(DB);
    txn.delete(
        LB,
        vec![tagged(&[(EXT_SWITCH, switch), (EXT_ENDPOINT_ID, endpoint)])],
    );
    txn
}

/// The bridge mapping names in `ovn-bridge-mappings` (`net:bridge,net2:bridge2`).
fn mapping_names(mappings: &str) -> Vec<String> {
    mappings
        .split(',')
        .filter_map(|m| m.split_once(':'))
        .map(|(net, _)| net.trim().to_string())
        .collect()
}

impl Northbound {
    /// Makes sure the gateway of `spec.switch` exists (creating it if no host has yet,
    /// or again when it went); refuses one made with other settings. Whether it made it.
    pub async fn ensure_gateway(&self, spec: &GatewaySpec) -> Result<bool, OvnError> {
        let what = format!("create the OVN gateway of logical switch {}", spec.switch);
        for _ in 0..RETRIES {
            let results = self
                .commit("read the routers", &query(&spec.switch))
                .await?;
            if let Some(r) = ovsdb::rows(&results, 0)?.first() {
                let ids = Row::new(LR, r)?.string_map("external_ids")?;
                let theirs = ids.get(EXT_GATEWAY).cloned().unwrap_or_default();
                if theirs != spec.summary() {
                    return Err(OvnError::Gateway(format!(
                        "logical router {} has {theirs}, not {}: give the same \
                         ovs.ovn.gateway* options on every host",
                        router_name(&spec.switch),
                        spec.summary()
                    )));
                }
                return Ok(false);
            }
            let found = Found {
                switch: (uuids(&results, 1, LS)?.pop())
                    .ok_or_else(|| OvnError::NoSwitch(spec.switch.clone()))?,
                stale_ports: uuids(&results, 2, LSP)?,
                balancers: uuids(&results, 3, LB)?,
            };
            match self.transact(&spec.create(&found)).await? {
                Ok(_) => {
                    tracing::info!(switch = %spec.switch, gateway = %spec.summary(),
                                   "created OVN gateway");
                    return Ok(true);
                }
                Err(r) if r.op == Some(0) => continue,
                Err(r) => {
                    return Err(OvnError::Refused {
                        what,
                        error: r.error,
                        details: r.details.unwrap_or_default(),
                    })
                }
            }
        }
        Err(OvnError::Contended(what))
    }

    /// Deletes the gateway of switch `switch`: router, external switch, load balancers
    /// (what is not there is skipped).
    pub async fn remove_gateway(&self, switch: &str) -> Result<(), OvnError> {
        self.commit(
            &format!("delete the OVN gateway of logical switch {switch}"),
            &remove(switch),
        )
        .await
        .map(drop)
    }

    /// Publishes `vips` of `endpoint` on the gateway of switch `switch` (replacing
    /// what the endpoint had).
    pub async fn publish(
        &self,
        switch: &str,
        endpoint: &str,
        external: Ipv4Addr,
        vips: &[Vip],
    ) -> Result<(), OvnError> {
        self.unpublish(switch, endpoint).await?;
        if vips.is_empty() {
            return Ok(());
        }
        let results = self.commit("read the routers", &query(switch)).await?;
        let router = ovsdb::rows(&results, 0)?
            .first()
            .map(|r| Ok::<_, OvnError>(Row::new(LR, r)?.uuid("_uuid")?.to_string()))
            .transpose()?
            .ok_or_else(|| {
                OvnError::Gateway(format!(
                    "logical router {} is gone (removed behind dovesnap's back?)",
                    router_name(switch)
                ))
            })?;
        self.commit(
            &format!("publish ports of endpoint {endpoint}"),
            &publish(switch, &router, endpoint, external, vips),
        )
        .await
        .map(drop)
    }

    /// Withdraws the published ports of `endpoint`.
    pub async fn unpublish(&self, switch: &str, endpoint: &str) -> Result<(), OvnError> {
        self.commit(
            &format!("withdraw the published ports of endpoint {endpoint}"),
            &unpublish(switch, endpoint),
        )
        .await
        .map(drop)
    }

    /// Checks (in this southbound database) that `chassis` is registered and maps
    /// bridge `network` (`ovn-bridge-mappings`).
    pub async fn check_gateway_chassis(
        &self,
        chassis: &str,
        network: &str,
    ) -> Result<(), OvnError> {
        let mut txn = Txn::on(SB_DB);
        txn.select(
            "Chassis",
            vec![ovsdb::eq("name", chassis)],
            &["other_config", "external_ids"],
        );
        let results = self.commit("read the chassis", &txn).await?;
        let Some(row) = ovsdb::rows(&results, 0)?.first() else {
            return Err(OvnError::Gateway(format!(
                "ovs.ovn.gateway={chassis}: no such chassis in the OVN southbound database \
                 (`ovn-sbctl list Chassis` shows their names, the hosts' system-id)"
            )));
        };
        let row = Row::new("Chassis", row)?;
        let mut names = Vec::new();
        for column in ["other_config", "external_ids"] {
            if let Some(m) = row.string_map(column)?.get("ovn-bridge-mappings") {
                names.extend(mapping_names(m));
            }
        }
        if !names.iter().any(|n| n == network) {
            return Err(OvnError::Gateway(format!(
                "chassis {chassis} has no bridge mapping {network} (it maps: {}): on that \
                 host run `ovs-vsctl set Open_vSwitch . \
                 external_ids:ovn-bridge-mappings={network}:BRIDGE`, BRIDGE an OVS bridge \
                 holding the external network's uplink",
                if names.is_empty() {
                    "nothing".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::PortRange;

    fn spec() -> GatewaySpec {
        GatewaySpec {
            switch: "sw".into(),
            subnet: "10.30.0.0/24".into(),
            gateway: Ipv4Addr::new(10, 30, 0, 1),
            prefix: 24,
            chassis: "host1".into(),
            external: "198.51.100.10/24@198.51.100.1".parse().unwrap(),
            network: DEFAULT_NETWORK.into(),
        }
    }

    fn op<'a>(p: &'a Value, table: &str, name: &str) -> &'a Value {
        p.as_array()
            .unwrap()
            .iter()
            .find(|o| o["table"] == table && o["row"]["name"] == name)
            .unwrap_or_else(|| panic!("no insert of {table} {name} in {p}"))
    }

    #[test]
    fn gateway_addresses() {
        let a: GatewayAddress = "198.51.100.10/24@198.51.100.1".parse().unwrap();
        assert_eq!(a.addr, Ipv4Addr::new(198, 51, 100, 10));
        assert_eq!((a.prefix, a.nexthop), (24, Ipv4Addr::new(198, 51, 100, 1)));
        for bad in [
            "198.51.100.10/24",
            "198.51.100.10@198.51.100.1",
            "198.51.100.10/33@198.51.100.1",
            "198.51.100.10/24@198.51.101.1",
            "198.51.100.10/24@198.51.100.10",
            "x/24@198.51.100.1",
        ] {
            let e = bad.parse::<GatewayAddress>().unwrap_err();
            assert!(e.0.starts_with("ADDR/PREFIX@NEXTHOP"), "{bad}: {}", e.0);
        }
    }

    #[test]
    fn creates_the_router_once_with_snat_route_and_chassis() {
        let found = Found {
            switch: "ls-1".into(),
            ..Default::default()
        };
        let p = spec().create(&found).params();
        assert_eq!(p[1]["op"], "wait");
        assert_eq!(p[1]["table"], LR);
        assert_eq!(p[1]["where"], json!([["name", "==", "dovesnap-lr-sw"]]));
        assert_eq!(p[1]["rows"], json!([]));
        let gwc = op(&p, "Gateway_Chassis", "dovesnap-lrp-ext-sw-host1");
        assert_eq!(gwc["row"]["chassis_name"], "host1");
        let lrp = op(&p, LRP, "dovesnap-lrp-sw");
        assert_eq!(lrp["row"]["networks"], "10.30.0.1/24");
        assert_eq!(lrp["row"]["mac"], "0a:58:0a:1e:00:01");
        let ext = op(&p, LRP, "dovesnap-lrp-ext-sw");
        assert_eq!(ext["row"]["networks"], "198.51.100.10/24");
        assert_eq!(
            ext["row"]["gateway_chassis"],
            json!(["set", [["named-uuid", "gwc"]]])
        );
        let ops = p.as_array().unwrap();
        let nat = ops.iter().find(|o| o["table"] == "NAT").unwrap();
        assert_eq!(nat["row"]["type"], "snat");
        assert_eq!(nat["row"]["logical_ip"], "10.30.0.0/24");
        assert_eq!(nat["row"]["external_ip"], "198.51.100.10");
        let route = ops
            .iter()
            .find(|o| o["table"] == "Logical_Router_Static_Route")
            .unwrap();
        assert_eq!(route["row"]["nexthop"], "198.51.100.1");
        let lr = op(&p, LR, "dovesnap-lr-sw");
        assert_eq!(
            lr["row"]["external_ids"],
            string_map([(EXT_SWITCH, "sw"), (EXT_GATEWAY, &spec().summary())])
        );
        let rtr = op(&p, LSP, "dovesnap-rtr-sw");
        assert_eq!(
            rtr["row"]["options"],
            string_map([("router-port", "dovesnap-lrp-sw")])
        );
        let attach = ops.iter().find(|o| o["op"] == "mutate").unwrap();
        assert_eq!(attach["where"], json!([["_uuid", "==", ["uuid", "ls-1"]]]));
        assert_eq!(
            attach["mutations"],
            json!([["ports", "insert", ["set", [["named-uuid", "rtr"]]]]])
        );
        assert_eq!(lr["row"]["load_balancer"], json!(["set", []]));
        // Again after the router was deleted behind dovesnap's back: its leftovers are
        // replaced, the network's load balancers attached again.
        let again = Found {
            switch: "ls-1".into(),
            stale_ports: vec!["lsp-old".into()],
            balancers: vec!["lb-1".into()],
        };
        let p = spec().create(&again).params();
        assert_eq!(p[2]["op"], "delete");
        assert_eq!(p[2]["where"], json!([["name", "==", "dovesnap-ext-sw"]]));
        assert_eq!(
            p[3]["mutations"],
            json!([["ports", "delete", ["set", [["uuid", "lsp-old"]]]]])
        );
        let lr = op(&p, LR, "dovesnap-lr-sw");
        assert_eq!(
            lr["row"]["load_balancer"],
            json!(["set", [["uuid", "lb-1"]]])
        );
        let ln = op(&p, LSP, "dovesnap-ln-sw");
        assert_eq!(ln["row"]["type"], "localnet");
        assert_eq!(
            ln["row"]["options"],
            string_map([("network_name", "dovesnap")])
        );
        let ls = op(&p, LS, "dovesnap-ext-sw");
        assert_eq!(
            ls["row"]["ports"],
            json!(["set", [["named-uuid", "ext_rtr"], ["named-uuid", "ln"]]])
        );
    }

    #[test]
    fn removes_router_external_switch_and_load_balancers() {
        let p = remove("sw").params();
        assert_eq!(p[1]["op"], "delete");
        assert_eq!(p[1]["where"], json!([["name", "==", "dovesnap-lr-sw"]]));
        assert_eq!(p[2]["where"], json!([["name", "==", "dovesnap-ext-sw"]]));
        assert_eq!(
            p[3]["where"],
            json!([[
                "external_ids",
                "includes",
                ["map", [["dovesnap-switch", "sw"]]]
            ]])
        );
        let p = unpublish("sw", "e1").params();
        assert_eq!(
            p[1]["where"],
            json!([[
                "external_ids",
                "includes",
                [
                    "map",
                    [["dovesnap-switch", "sw"], ["dovesnap-endpoint-id", "e1"]]
                ]
            ]])
        );
    }

    #[test]
    fn published_ports_become_load_balancers_on_the_router() {
        let ext = Ipv4Addr::new(198, 51, 100, 10);
        let ip = Ipv4Addr::new(10, 30, 0, 5);
        let mapping = |proto, host: Option<(u16, u16)>, ctr: (u16, u16)| PortMapping {
            proto,
            host_ip: None,
            host_ports: host.map(|(a, b)| PortRange::new(a, b).unwrap()),
            container_ports: PortRange::new(ctr.0, ctr.1).unwrap(),
        };
        let v = vips(
            &[
                mapping(Proto::Tcp, Some((80, 80)), (8080, 8080)),
                mapping(Proto::Udp, None, (53, 53)),
                mapping(Proto::Tcp, Some((9000, 9001)), (7000, 7001)),
            ],
            ip,
            ext,
        )
        .unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[3].external_port, 9001);
        assert_eq!(v[3].port, 7001);
        let p = publish("sw", "lr-1", "e1", ext, &v).params();
        assert_eq!(p[1]["row"]["protocol"], "tcp");
        assert_eq!(
            p[1]["row"]["vips"],
            json!([
                "map",
                [
                    ["198.51.100.10:80", "10.30.0.5:8080"],
                    ["198.51.100.10:9000", "10.30.0.5:7000"],
                    ["198.51.100.10:9001", "10.30.0.5:7001"]
                ]
            ])
        );
        assert_eq!(p[2]["row"]["protocol"], "udp");
        assert_eq!(
            p[3]["mutations"],
            json!([[
                "load_balancer",
                "insert",
                ["set", [["named-uuid", "lb_tcp"], ["named-uuid", "lb_udp"]]]
            ]])
        );
        let mut elsewhere = mapping(Proto::Tcp, None, (80, 80));
        elsewhere.host_ip = Some(Ipv4Addr::new(192, 0, 2, 1).into());
        let e = vips(&[elsewhere], ip, ext).unwrap_err().to_string();
        assert!(e.contains("published on the gateway's address"), "{e}");
        let uneven = mapping(Proto::Tcp, Some((80, 81)), (80, 82));
        assert!(vips(&[uneven], ip, ext).is_err());
    }

    #[test]
    fn bridge_mapping_names() {
        assert_eq!(
            mapping_names("dovesnap:br-ext, physnet:br-phy"),
            ["dovesnap", "physnet"]
        );
        assert!(mapping_names("").is_empty());
    }
}
