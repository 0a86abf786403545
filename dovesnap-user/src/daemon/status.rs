//! What the daemon reports of itself: the status model (networks, endpoints, the fast
//! path, the reconciler's repairs and health, records it could not trust), the
//! [`StatusSource`] the driver implements, and the table `dovesnap status` prints.
//!
//! Every field has a default, so a CLI and a daemon of neighbouring versions still
//! understand each other; the control socket ([`super::control`]) serves it as JSON and
//! the metrics endpoint ([`super::metrics`]) as Prometheus text.

use std::future::Future;

use serde::{Deserialize, Serialize};

/// What the daemon manages. Every field has a default, so a CLI and a daemon of
/// neighbouring versions still understand each other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub networks: Vec<NetworkStatus>,
    /// The nat-fast data path, once a nat-fast network has had an endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<crate::fastpath::FastPathStatus>,
    /// Repairs the reconciler made since the daemon started, by kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<(String, u64)>,
    /// The reconciler's own supervision.
    #[serde(default)]
    pub reconciler: ReconcilerHealth,
    /// OVSDB records dovesnap found at start and could not trust: left alone (their
    /// bridge, ports, interfaces and rules untouched) and not managed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bad_records: Vec<BadRecord>,
}

/// An OVSDB record of dovesnap's that does not read (or names what dovesnap would not
/// have made): reported, never acted on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BadRecord {
    /// Where it is: `bridge NAME`, `port NAME` or `Open_vSwitch external_ids:KEY`.
    pub record: String,
    /// The network or endpoint id it claims (as recorded; may be invalid or empty).
    pub id: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (id {:?}): {}", self.record, self.id, self.reason)
    }
}

/// Passes of the reconciler, and those that failed (a panic, or a pass that did not
/// finish within its time limit); a failed pass is retried after a backoff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconcilerHealth {
    pub passes: u64,
    pub panics: u64,
    pub stalls: u64,
    pub last_failure: String,
}

/// One Docker network on an OVS bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkStatus {
    /// Docker's network id.
    pub id: String,
    /// The OVS bridge name.
    pub bridge: String,
    /// `flat`, `nat`, `nat-fast`, `routed` or `overlay` (a string, so an older CLI can
    /// show a newer mode).
    pub mode: String,
    /// nat-fast: `ovs.nat.engine`, `xdp` or `tc`; empty for other modes.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub engine: String,
    /// The IPv4 subnet in CIDR form; empty if none.
    pub subnet: String,
    /// The IPv6 subnet (`--ipv6`, flat networks) in CIDR form.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subnet_ipv6: String,
    /// The gateway address; empty if none.
    pub gateway: String,
    /// OVS `datapath_type`: `system` or `netdev`.
    pub datapath_type: String,
    /// The shared uplinks of a VLAN network, `TRUNK-BRIDGE:UPLINK/VLAN` each, space
    /// separated (see `driver::trunk`); empty when it has none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trunk: String,
    /// The network's VLAN (`ovs.bridge.vlan`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// The other networks on the same bridge (a shared bridge, see
    /// `driver::shared`), by id; empty when the bridge is the network's alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
    pub endpoints: Vec<EndpointStatus>,
    /// Tunnel ports (`ovs.bridge.tunnels`), `PORT: KIND:REMOTE[:KEY]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tunnels: Vec<String>,
    /// overlay: how many names (of every host) the switch's DNS table holds, as of the
    /// last reconciler pass; none before the first or for other modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<usize>,
    /// overlay: this host's forwarder behind the switch's DNS localport (namespace,
    /// state, counters); none without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_forwarder: Option<String>,
}

/// One container endpoint: a veth pair with its host side on the bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointStatus {
    /// Docker's endpoint id.
    pub id: String,
    /// The OVS port (the host side of the veth pair).
    pub port: String,
    pub mac: String,
    /// The IPv4 address with prefix length.
    pub address: String,
    /// The IPv6 address with prefix length (`--ipv6`, flat networks).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address_ipv6: String,
    /// Published ports (nat modes), e.g. `0.0.0.0:8080->80/tcp`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<String>,
    /// nat-fast: the endpoint's routed traffic goes through the XDP/AF_XDP translator.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fast_path: bool,
    /// nat-fast: why the endpoint is on the kernel's nat path instead.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kernel_path: String,
}

/// Where the control server gets the status from (the driver).
pub trait StatusSource: Send + Sync + 'static {
    fn status(&self) -> impl Future<Output = Status> + Send;
}

/// Docker's short form of an id.
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Under a nat-fast network with IPv6: its IPv6 traffic takes the kernel's nat path.
pub const NAT_FAST_IPV6_LINE: &str = "  ipv6: kernel path (nft masquerade)";

/// The mode column: `nat-fast/tc` for the tc engine; the default engine goes unsaid,
/// as before the option existed.
fn mode_with_engine(n: &NetworkStatus) -> String {
    match n.engine.as_str() {
        "" | "xdp" => n.mode.clone(),
        engine => format!("{}/{engine}", n.mode),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// Pads `rows` into aligned columns two spaces apart, each line prefixed by
/// `indent`; no trailing spaces.
fn align(rows: &[Vec<&str>], indent: &str) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = indent.to_owned();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[c] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            line.truncate(line.trim_end().len());
            line
        })
        .collect()
}

/// The status as a table for people: one line per network, its endpoints indented
/// under it; ids shortened to 12 characters as Docker does; `-` for empty fields.
pub fn render_status_table(status: &Status) -> String {
    if status.networks.is_empty() {
        return "no dovesnap networks\n".to_owned();
    }
    let mut net_rows: Vec<Vec<&str>> = vec![vec![
        "NETWORK", "BRIDGE", "MODE", "DATAPATH", "SUBNET", "GATEWAY",
    ]];
    let mut ep_rows: Vec<Vec<&str>> = vec![vec!["ENDPOINT", "PORT", "MAC", "ADDRESS", "PUBLISHED"]];
    let published: Vec<Vec<String>> = status
        .networks
        .iter()
        .map(|n| n.endpoints.iter().map(|e| e.published.join(",")).collect())
        .collect();
    // Both families in one column: `v4 v6`, either alone, or nothing.
    let both = |v4: &str, v6: &str| {
        [v4, v6]
            .iter()
            .filter(|a| !a.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let subnets: Vec<String> = status
        .networks
        .iter()
        .map(|n| both(&n.subnet, &n.subnet_ipv6))
        .collect();
    // A VLAN network's shared uplinks after its bridge, and the networks it shares
    // the bridge with (`br-x/300 shared:1a2b3c4d5e6f,...`).
    let bridges: Vec<String> = (status.networks.iter())
        .map(|n| {
            let bridge = match n.vlan {
                Some(v) if !n.shared_with.is_empty() => format!("{}/{v}", n.bridge),
                _ => n.bridge.clone(),
            };
            let shared = match n.shared_with.as_slice() {
                [] => String::new(),
                ids => {
                    let ids: Vec<&str> = ids.iter().map(|i| short_id(i)).collect();
                    format!("shared:{}", ids.join(","))
                }
            };
            both(&both(&bridge, &n.trunk), &shared)
        })
        .collect();
    let addresses: Vec<Vec<String>> = status
        .networks
        .iter()
        .map(|n| {
            n.endpoints
                .iter()
                .map(|e| both(&e.address, &e.address_ipv6))
                .collect()
        })
        .collect();
    let modes: Vec<String> = status.networks.iter().map(mode_with_engine).collect();
    for (((((n, published), subnet), addresses), bridge), mode) in status
        .networks
        .iter()
        .zip(&published)
        .zip(&subnets)
        .zip(&addresses)
        .zip(&bridges)
        .zip(&modes)
    {
        net_rows.push(vec![
            short_id(&n.id),
            or_dash(bridge),
            or_dash(mode),
            or_dash(&n.datapath_type),
            or_dash(subnet),
            or_dash(&n.gateway),
        ]);
        for ((e, published), address) in n.endpoints.iter().zip(published).zip(addresses) {
            ep_rows.push(vec![
                short_id(&e.id),
                or_dash(&e.port),
                or_dash(&e.mac),
                or_dash(address),
                or_dash(published),
            ]);
        }
    }
    let net_lines = align(&net_rows, "");
    let ep_lines = align(&ep_rows, "  ");
    let mut out = String::new();
    let mut push = |line: &str| {
        out.push_str(line);
        out.push('\n');
    };
    push(&net_lines[0]);
    let has_endpoints = ep_lines.len() > 1;
    if has_endpoints {
        push(&ep_lines[0]);
    }
    let mut eps = ep_lines[1..].iter();
    for (n, line) in status.networks.iter().zip(&net_lines[1..]) {
        push(line);
        for tunnel in &n.tunnels {
            push(&format!("  tunnel {tunnel}"));
        }
        if n.mode == "nat-fast" && !n.subnet_ipv6.is_empty() {
            // The XDP program passes every non-IPv4 frame to the kernel.
            push(NAT_FAST_IPV6_LINE);
        }
        if let Some(names) = n.names {
            push(&format!("  names in OVN's DNS table: {names}"));
        }
        if let Some(f) = &n.dns_forwarder {
            push(&format!("  DNS forwarder: {f}"));
        }
        for ep_line in eps.by_ref().take(n.endpoints.len()) {
            push(ep_line);
        }
    }
    if let Some(fp) = &status.fast_path {
        render_fast_path(fp, &mut push);
    }
    if !status.repairs.is_empty() {
        let repairs: Vec<String> = status
            .repairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        push("");
        push(&format!("repaired: {}", repairs.join(" ")));
    }
    let r = &status.reconciler;
    if r.panics + r.stalls > 0 {
        push(&format!(
            "reconciler: {} failed pass(es) of {} ({} panicked, {} stuck; last: {})",
            r.panics + r.stalls,
            r.passes,
            r.panics,
            r.stalls,
            r.last_failure
        ));
    }
    if !status.bad_records.is_empty() {
        push("");
        push("unreadable records (left alone, not managed):");
        for b in &status.bad_records {
            push(&format!("  {b}"));
        }
    }
    out
}

/// The nat-fast section: where XDP is attached, each uplink's translator with its
/// sessions, and every non-zero counter.
fn render_fast_path(fp: &crate::fastpath::FastPathStatus, push: &mut impl FnMut(&str)) {
    push("");
    let attached: Vec<String> = fp
        .attached
        .iter()
        .map(|(i, m)| format!("{i} ({m})"))
        .collect();
    push(&format!(
        "nat-fast: XDP on {}",
        if attached.is_empty() {
            "nothing".to_owned()
        } else {
            attached.join(", ")
        }
    ));
    let h = &fp.health;
    if h.state != "up" && !h.state.is_empty() {
        let back = match h.resumes_in_ms {
            Some(ms) => format!("; fast path back in {} s", ms.div_ceil(1000)),
            None => "; stays on the kernel path until the daemon restarts".to_owned(),
        };
        push(&format!(
            "  DATA PLANE {}: {}; every nat-fast frame takes the kernel's path{back}",
            h.state.to_uppercase(),
            h.last_failure
        ));
    }
    if h.failures > 0 {
        push(&format!(
            "  data plane failures: {} (last: {}), restarts: {}, sessions handed to the kernel: {}{}",
            h.failures,
            h.last_failure,
            h.restarts,
            h.sessions_handed_to_kernel,
            if h.handover_failures > 0 {
                format!(" ({} refused)", h.handover_failures)
            } else {
                String::new()
            }
        ));
    }
    for (port, why) in &fp.kernel_path {
        push(&format!("  kernel path: {port}: {why}"));
    }
    for (place, rule, how) in &fp.host_rules {
        push(&format!("  host rule ({place}) {rule}: {how}"));
    }
    for u in &fp.dataplane.uplinks {
        let ports = match (u.ports.as_str(), u.port_share) {
            ("", _) => String::new(),
            (r, 0) => format!(", ports {r}"),
            (r, n) => format!(", ports {r} (at most {n} per container and protocol)"),
        };
        push(&format!(
            "  uplink {} ({}): {} endpoint(s), {} session(s){ports}{}",
            u.name,
            u.external_ip,
            u.endpoints,
            u.sessions,
            if u.redirect_target {
                ""
            } else {
                "; not an XDP redirect target: offloaded sessions send out through AF_XDP"
            }
        ));
        for s in &u.session_list {
            push(&format!("    {s}"));
        }
        let counters = nonzero(&u.counters);
        if !counters.is_empty() {
            push(&format!("    translator: {counters}"));
        }
    }
    let dp = nonzero(&fp.dataplane.counters);
    if !dp.is_empty() {
        push(&format!("  data plane: {dp}"));
    }
    let xdp = nonzero(&fp.xdp_counters);
    if !xdp.is_empty() {
        push(&format!("  xdp: {xdp}"));
    }
}

fn nonzero(counters: &[(String, u64)]) -> String {
    counters
        .iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Status {
        Status {
            networks: vec![
                NetworkStatus {
                    id: "3f2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a".into(),
                    bridge: "ovsbr-3f2a1".into(),
                    mode: "nat-fast".into(),
                    engine: "xdp".into(),
                    subnet: "10.0.0.0/24".into(),
                    subnet_ipv6: String::new(),
                    gateway: "10.0.0.1".into(),
                    datapath_type: "system".into(),
                    tunnels: vec![],
                    names: None,
                    dns_forwarder: None,
                    trunk: String::new(),
                    vlan: None,
                    shared_with: vec![],
                    endpoints: vec![
                        EndpointStatus {
                            id: "1a2b3c4d5e6f7a8b9c0d".into(),
                            port: "ovs1a2b3c4d".into(),
                            mac: "02:42:0a:00:00:02".into(),
                            address: "10.0.0.2/24".into(),
                            address_ipv6: String::new(),
                            published: vec!["0.0.0.0:8080->80/tcp".into()],
                            fast_path: true,
                            kernel_path: String::new(),
                        },
                        EndpointStatus {
                            id: "9f8e7d6c5b4a".into(),
                            port: "ovs9f8e7d6c".into(),
                            mac: "02:42:0a:00:00:03".into(),
                            address: "10.0.0.3/24".into(),
                            address_ipv6: String::new(),
                            published: vec![],
                            fast_path: false,
                            kernel_path: "nat-fast: br0 has generic only XDP".into(),
                        },
                    ],
                },
                NetworkStatus {
                    id: "abc".into(),
                    bridge: "br-flat".into(),
                    mode: "flat".into(),
                    engine: String::new(),
                    subnet: String::new(),
                    subnet_ipv6: String::new(),
                    gateway: String::new(),
                    datapath_type: "netdev".into(),
                    trunk: String::new(),
                    vlan: None,
                    shared_with: vec![],
                    endpoints: vec![],
                    tunnels: vec![],
                    names: None,
                    dns_forwarder: None,
                },
            ],
            fast_path: None,
            repairs: vec![],
            reconciler: ReconcilerHealth::default(),
            bad_records: vec![],
        }
    }

    #[test]
    fn a_shared_uplink_follows_the_bridge() {
        let mut s = sample();
        s.networks[1].trunk = "ovstk-eth1:eth1/100".into();
        let table = render_status_table(&s);
        assert!(table.contains("br-flat ovstk-eth1:eth1/100"), "{table}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["networks"][1]["trunk"], "ovstk-eth1:eth1/100");
        assert!(json["networks"][0].get("trunk").is_none());
    }

    #[test]
    fn a_shared_bridge_shows_the_vlan_and_the_other_networks() {
        let mut s = sample();
        s.networks[1].vlan = Some(300);
        s.networks[1].shared_with = vec!["d53fd46efc27d3a4d8382207".into()];
        let table = render_status_table(&s);
        assert!(
            table.contains("br-flat/300 shared:d53fd46efc27 "),
            "{table}"
        );
        // Alone on its bridge, a VLAN network's line is as before.
        s.networks[1].shared_with.clear();
        assert!(!render_status_table(&s).contains("br-flat/"));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["networks"][1]["vlan"], 300);
        assert!(json["networks"][0].get("shared_with").is_none());
    }

    #[test]
    fn an_overlay_network_shows_its_name_count() {
        let mut s = sample();
        s.networks[1].mode = "overlay".into();
        s.networks[1].names = Some(3);
        s.networks[1].dns_forwarder = Some("dsdns-0a1b2c3d serving, forwarded 2".into());
        let table = render_status_table(&s);
        assert!(
            table.contains("\n  names in OVN's DNS table: 3\n")
                && table.contains("\n  DNS forwarder: dsdns-0a1b2c3d serving, forwarded 2"),
            "{table}"
        );
        assert_eq!(table.matches("names in OVN").count(), 1, "{table}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["networks"][1]["names"], 3);
        assert!(json["networks"][0].get("names").is_none());
    }

    #[test]
    fn status_decodes_with_missing_and_unknown_fields() {
        let s: Status = serde_json::from_str(
            r#"{"networks":[{"id":"n","endpoints":[{"id":"e","extra":1}]}],"version":2}"#,
        )
        .unwrap();
        assert_eq!(s.networks[0].id, "n");
        assert_eq!(s.networks[0].bridge, "");
    }

    #[test]
    fn the_mode_column_names_the_tc_engine_only() {
        let mut status = sample();
        assert!(!render_status_table(&status).contains("nat-fast/"));
        status.networks[0].engine = "tc".into();
        assert!(render_status_table(&status).contains(" nat-fast/tc "));
    }

    #[test]
    fn table_lists_networks_with_endpoints_indented() {
        let table = render_status_table(&sample());
        let expected = "\
NETWORK       BRIDGE       MODE      DATAPATH  SUBNET       GATEWAY
  ENDPOINT      PORT         MAC                ADDRESS      PUBLISHED
3f2a1b9c8d7e  ovsbr-3f2a1  nat-fast  system    10.0.0.0/24  10.0.0.1
  1a2b3c4d5e6f  ovs1a2b3c4d  02:42:0a:00:00:02  10.0.0.2/24  0.0.0.0:8080->80/tcp
  9f8e7d6c5b4a  ovs9f8e7d6c  02:42:0a:00:00:03  10.0.0.3/24  -
abc           br-flat      flat      netdev    -            -
";
        assert_eq!(table, expected);
    }

    #[test]
    fn table_shows_both_families() {
        let mut status = sample();
        status.networks.truncate(1);
        status.networks[0].subnet_ipv6 = "fd00:d0e5::/64".into();
        status.networks[0].endpoints.truncate(1);
        status.networks[0].endpoints[0].address_ipv6 = "fd00:d0e5::2/64".into();
        let table = render_status_table(&status);
        assert!(table.contains(" 10.0.0.0/24 fd00:d0e5::/64 "), "{table}");
        assert!(table.contains(" 10.0.0.2/24 fd00:d0e5::2/64 "), "{table}");
        // nat-fast carries IPv6 on the kernel path, and says so under the network.
        assert!(
            table.contains(&format!("\n{NAT_FAST_IPV6_LINE}\n")),
            "{table}"
        );
        assert!(!render_status_table(&sample()).contains("ipv6:"));
        let json = serde_json::to_string(&status).unwrap();
        assert!(
            json.contains(r#""address_ipv6":"fd00:d0e5::2/64""#),
            "{json}"
        );
        // An IPv4-only status says nothing of IPv6.
        assert!(!serde_json::to_string(&sample()).unwrap().contains("ipv6"));
    }

    #[test]
    fn table_without_endpoints_has_no_endpoint_header() {
        let mut s = sample();
        s.networks.remove(0);
        assert_eq!(
            render_status_table(&s),
            "NETWORK  BRIDGE   MODE  DATAPATH  SUBNET  GATEWAY\nabc      br-flat  flat  netdev    -       -\n"
        );
    }

    #[test]
    fn table_lists_a_networks_tunnels_under_it() {
        let mut s = sample();
        s.networks.remove(0);
        s.networks[0].tunnels = vec![
            "vxlabc000000: vxlan:198.18.78.2:42".into(),
            "greabc000001: gre:[2001:db8::2]".into(),
        ];
        assert_eq!(
            render_status_table(&s),
            "NETWORK  BRIDGE   MODE  DATAPATH  SUBNET  GATEWAY\n\
             abc      br-flat  flat  netdev    -       -\n  \
             tunnel vxlabc000000: vxlan:198.18.78.2:42\n  \
             tunnel greabc000001: gre:[2001:db8::2]\n"
        );
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains(r#""tunnels":["vxlabc000000: vxlan"#),
            "{json}"
        );
        assert!(!serde_json::to_string(&sample())
            .unwrap()
            .contains("tunnels"));
    }

    #[test]
    fn table_ends_with_the_repairs() {
        let mut s = sample();
        s.repairs = vec![("bridge".into(), 1), ("veth".into(), 2)];
        let table = render_status_table(&s);
        assert!(table.ends_with("\nrepaired: bridge=1 veth=2\n"), "{table}");
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains(r#""repairs":[["bridge",1],["veth",2]]"#),
            "{json}"
        );
    }

    #[test]
    fn table_names_the_bad_records() {
        let mut s = sample();
        assert!(!serde_json::to_string(&s).unwrap().contains("bad_records"));
        s.bad_records = vec![BadRecord {
            record: "bridge ovsbr-3f2a9c1d".into(),
            id: "3f2a9c1d4e5b".into(),
            reason: "options: bad mode".into(),
        }];
        let table = render_status_table(&s);
        assert!(
            table.ends_with(
                "unreadable records (left alone, not managed):\n  bridge ovsbr-3f2a9c1d (id \"3f2a9c1d4e5b\"): options: bad mode\n"
            ),
            "{table}"
        );
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn table_says_which_endpoints_and_uplinks_fall_short_of_the_fast_path() {
        let mut s = sample();
        s.fast_path = Some(crate::fastpath::FastPathStatus {
            kernel_path: vec![("ovs9f8e7d6c".into(), "br0 has generic only XDP".into())],
            dataplane: crate::fastpath::dataplane::DataplaneStatus {
                uplinks: vec![
                    crate::fastpath::dataplane::UplinkStatus {
                        name: "veth0".into(),
                        external_ip: "192.0.2.1".into(),
                        endpoints: 1,
                        redirect_target: false,
                        ..Default::default()
                    },
                    crate::fastpath::dataplane::UplinkStatus {
                        name: "eth1".into(),
                        external_ip: "198.51.100.1".into(),
                        redirect_target: true,
                        ports: "1024-32767".into(),
                        port_share: 23808,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            health: crate::fastpath::supervisor::HealthStatus {
                state: "down".into(),
                failures: 1,
                restarts: 0,
                sessions_handed_to_kernel: 2,
                last_failure: "the data-plane thread panicked: boom".into(),
                resumes_in_ms: Some(1500),
                ..Default::default()
            },
            host_rules: vec![(
                "iptables DOCKER-USER".into(),
                "-A DOCKER-USER -d 192.0.2.9/32 -j DROP".into(),
                "exact: 192.0.2.9/32 all protocols on the kernel's path".into(),
            )],
            ..Default::default()
        });
        s.reconciler.passes = 9;
        s.reconciler.stalls = 1;
        s.reconciler.last_failure = "did not finish within 60 s".into();
        let table = render_status_table(&s);
        assert!(
            table.contains("  kernel path: ovs9f8e7d6c: br0 has generic only XDP\n"),
            "{table}"
        );
        for line in [
            "  host rule (iptables DOCKER-USER) -A DOCKER-USER -d 192.0.2.9/32 -j DROP: exact: \
             192.0.2.9/32 all protocols on the kernel's path\n",
            "  DATA PLANE DOWN: the data-plane thread panicked: boom; every nat-fast frame \
             takes the kernel's path; fast path back in 2 s\n",
            "  data plane failures: 1 (last: the data-plane thread panicked: boom), restarts: 0, \
             sessions handed to the kernel: 2\n",
            "reconciler: 1 failed pass(es) of 9 (0 panicked, 1 stuck; last: did not finish \
             within 60 s)\n",
        ] {
            assert!(table.contains(line), "missing {line:?} in\n{table}");
        }
        assert!(
            table.contains(
                "  uplink eth1 (198.51.100.1): 0 endpoint(s), 0 session(s), ports 1024-32767 \
                 (at most 23808 per container and protocol)\n"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "  uplink veth0 (192.0.2.1): 1 endpoint(s), 0 session(s); not an XDP redirect \
                 target: offloaded sessions send out through AF_XDP\n"
            ),
            "{table}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["networks"][0]["endpoints"][1]["kernel_path"],
            "nat-fast: br0 has generic only XDP"
        );
    }

    #[test]
    fn table_of_nothing_says_so() {
        assert_eq!(
            render_status_table(&Status::default()),
            "no dovesnap networks\n"
        );
    }
}
