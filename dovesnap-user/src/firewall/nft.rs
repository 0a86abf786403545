//! The nftables backend: table `inet dovesnap` (both families in one table), built as `nftables::schema` values by
//! pure functions and applied with `nft -j -f -`, one atomic transaction per call.
//!
//! For a network `3f2a9c1d4e5b...` on bridge `ovsbr-3f2a9c1d` (10.231.1.0/24) whose
//! container 10.231.1.2 (endpoint `5b7e0e2a41c3...`) publishes `-p 8080:80` and
//! `-p 192.0.2.10:5353:53/udp`, `nft list table inet dovesnap` shows (nft 1.0.6):
//!
//! ```text
//! table inet dovesnap {
//!     set nat-bridges {
//!         type ifname
//!         elements = { "ovsbr-3f2a9c1d" }
//!     }
//!
//!     chain prerouting {
//!         type nat hook prerouting priority dstnat; policy accept;
//!         fib daddr type local jump published
//!     }
//!
//!     chain output {
//!         type nat hook output priority -100; policy accept;
//!         ip daddr != 127.0.0.0/8 fib daddr type local jump published
//!         ip6 daddr != ::1 fib daddr type local jump published
//!     }
//!
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 10.231.1.0/24 jump nw-3f2a9c1d4e5b-snat comment "dovesnap:3f2a9c1d4e5b"
//!     }
//!
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         iifname "ovsbr-3f2a9c1d" jump nw-3f2a9c1d4e5b-fwd comment "dovesnap:3f2a9c1d4e5b"
//!         oifname "ovsbr-3f2a9c1d" jump nw-3f2a9c1d4e5b-fwd comment "dovesnap:3f2a9c1d4e5b"
//!     }
//!
//!     chain published {
//!         jump nw-3f2a9c1d4e5b-dnat comment "dovesnap:3f2a9c1d4e5b"
//!     }
//!
//!     chain nw-3f2a9c1d4e5b-fwd {
//!         ct status dnat accept comment "published ports"
//!         oifname "ovsbr-3f2a9c1d" ct state established,related accept
//!         iifname "ovsbr-3f2a9c1d" oifname @nat-bridges oifname != "ovsbr-3f2a9c1d" drop comment "isolation from other nat networks"
//!         iifname "ovsbr-3f2a9c1d" accept
//!         oifname "ovsbr-3f2a9c1d" drop comment "nothing else enters the network"
//!     }
//!
//!     chain nw-3f2a9c1d4e5b-snat {
//!         ip daddr 10.231.1.0/24 ct status dnat masquerade comment "hairpin: containers reaching the network's own published ports"
//!         oifname != "ovsbr-3f2a9c1d" masquerade comment "outbound"
//!     }
//!
//!     chain nw-3f2a9c1d4e5b-dnat {
//!         tcp dport 8080 dnat ip to 10.231.1.2:80 comment "ep:5b7e0e2a41c3"
//!         ip daddr 192.0.2.10 udp dport 5353 dnat ip to 10.231.1.2:53 comment "ep:5b7e0e2a41c3"
//!     }
//! }
//! ```
//!
//! With `--ipv6` ([`NatNetwork::ipv6`], say fd31:231:1::/64 and the container
//! fd31:231:1::2) the network also gets `ip6 saddr fd31:231:1::/64 jump
//! nw-<id12>-snat` in `postrouting`, the hairpin rule for `ip6 daddr` in its snat
//! chain, and a port on every address a second DNAT, `tcp dport 8080 dnat ip6 to
//! [fd31:231:1::2]:80` (a port on an IPv6 host address has only that one, with `ip6
//! daddr`). The forward rules name interfaces only and serve both families.
//!
//! A routed network (`NatNetwork::routed`) has no `postrouting` or `published` jump and
//! no snat chain: its forward chain ends, before the final drop, with
//! `oifname BR meta l4proto icmp accept`, the same for `ipv6-icmp`, and `oifname BR
//! jump nw-<id12>-dnat`, and that chain holds one `ip daddr CONTAINER tcp dport PORT
//! accept` per published port and container address (`ip6 daddr` for its IPv6 one;
//! nothing is translated; the container is reached at its own address).
//!
//! The base chains `prerouting` and `output` only send traffic for local addresses to
//! `published`; per-network rules are reached through jump rules commented
//! `dovesnap:<id12>`, and published ports carry their endpoint (`ep:<id12>`). The
//! table is deleted with its last network.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::Mutex;

use nftables::expr::{
    Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, Range, CT,
};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{JumpTarget, Match, NATFamily, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::command::{output_within, RunError, COMMAND_TIMEOUT};
use super::iptables::Iptables;
use super::ports::{dynamic_range, host_listening_ports, resolve, Taken};
use super::{
    enable_ip_forward, enable_ipv6_forward, network_tag, short_id, EndpointPorts, ExpectedNetwork,
    Firewall, FirewallError, NatNetwork, PortMapping, Proto, PublishedPort,
};
use crate::host::addr::{Ipv4Net, Ipv6Cidr};

/// The table dovesnap owns (family `inet`: one table for IPv4 and IPv6).
pub const TABLE: &str = "dovesnap";
/// The family of [`TABLE`], as `nft` spells it.
pub const FAMILY: &str = "inet";
/// The family of the table versions before IPv6 support used (`ip dovesnap`),
/// deleted at start by [`NftFirewall::remove_legacy_table`].
pub const LEGACY_FAMILY: &str = "ip";
/// The set of every nat network's bridge (isolation).
pub const BRIDGE_SET: &str = "nat-bridges";

const PREROUTING: &str = "prerouting";
const OUTPUT: &str = "output";
const POSTROUTING: &str = "postrouting";
const FORWARD: &str = "forward";
/// Regular chain reached for packets to a local address: one jump per network.
const PUBLISHED: &str = "published";
/// Chains holding per-network jump rules.
const DISPATCH_CHAINS: [&str; 3] = [PUBLISHED, POSTROUTING, FORWARD];

/// The network's published ports (DNAT).
pub fn dnat_chain(id12: &str) -> String {
    format!("nw-{id12}-dnat")
}

/// The network's masquerade rules.
pub fn snat_chain(id12: &str) -> String {
    format!("nw-{id12}-snat")
}

/// The network's forwarding policy.
pub fn fwd_chain(id12: &str) -> String {
    format!("nw-{id12}-fwd")
}

/// The comment of an endpoint's port rules.
pub fn endpoint_tag(ep12: &str) -> String {
    format!("ep:{ep12}")
}

/// The network id prefix of a per-network chain name.
fn chain_network(chain: &str) -> Option<&str> {
    let rest = chain.strip_prefix("nw-")?;
    let (id, kind) = rest.rsplit_once('-')?;
    matches!(kind, "dnat" | "snat" | "fwd").then_some(id)
}

// ---- expression and statement helpers -------------------------------------------

fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Owned(protocol.to_string()),
            field: Cow::Owned(field.to_string()),
        },
    )))
}

fn prefix(net: Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(net.addr().to_string())),
        len: u32::from(net.prefix()),
    }))
}

fn prefix6(net: Ipv6Cidr) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(net.network().addr.to_string())),
        len: u32::from(net.prefix),
    }))
}

fn ct(key: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Owned(key.to_string()),
        family: None,
        dir: None,
    }))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn iifname(op: Operator, name: &str) -> Statement<'static> {
    matches(meta(MetaKey::Iifname), op, s(name))
}

fn oifname(op: Operator, name: &str) -> Statement<'static> {
    matches(meta(MetaKey::Oifname), op, s(name))
}

fn ct_status_dnat() -> Statement<'static> {
    matches(ct("status"), Operator::IN, s("dnat"))
}

fn jump(target: String) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: Cow::Owned(target),
    })
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop_() -> Statement<'static> {
    Statement::Drop(None)
}

fn rule(chain: &str, expr: Vec<Statement<'static>>, comment: Option<String>) -> Rule<'static> {
    Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: comment.map(Cow::Owned),
    }
}

fn chain(name: &str) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Owned(name.to_string()),
        newname: None,
        handle: None,
        _type: None,
        hook: None,
        prio: None,
        dev: None,
        policy: None,
    }
}

fn base_chain(name: &str, kind: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..chain(name)
    }
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

fn bridge_element(bridge: &str) -> Element<'static> {
    Element {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(BRIDGE_SET),
        elem: Cow::Owned(vec![s(bridge)]),
    }
}

fn add(obj: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(obj))
}

fn delete(obj: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Delete(obj))
}

fn flush_chain(name: &str) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(chain(name))))
}

fn delete_rule(r: &Rule<'static>) -> NfObject<'static> {
    delete(NfListObject::Rule(Rule {
        expr: Cow::Owned(Vec::new()),
        comment: None,
        ..r.clone()
    }))
}

/// Flushes and deletes a chain (a chain must be empty and unreferenced to go).
fn remove_chain(name: &str, out: &mut Vec<NfObject<'static>>) {
    out.push(flush_chain(name));
    out.push(delete(NfListObject::Chain(chain(name))));
}

fn batch(objects: Vec<NfObject<'static>>) -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(objects),
    }
}

// ---- what is in the kernel --------------------------------------------------------

/// Table `ip dovesnap` as `nft -j list table` showed it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableState {
    /// Whether the table exists.
    pub exists: bool,
    /// Names of its chains.
    pub chains: BTreeSet<String>,
    /// Its rules, with their handles.
    pub rules: Vec<Rule<'static>>,
    /// Elements of [`BRIDGE_SET`].
    pub bridges: BTreeSet<String>,
}

/// One published port found in a per-network DNAT chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundPort {
    pub network: String,
    pub endpoint: String,
    /// The address the rule leads to (a port on every host address has one rule per
    /// family of the container's addresses).
    pub container_ip: IpAddr,
    pub port: PublishedPort,
    /// A routed network's port: an accept of the container's own address and port,
    /// which claims no host port.
    pub routed: bool,
}

impl TableState {
    /// Reads a listing of the table (other tables' objects are ignored).
    pub fn from_listing(listing: &Nftables<'static>) -> Self {
        let mut state = TableState::default();
        for obj in listing.objects.iter() {
            let NfObject::ListObject(obj) = obj else {
                continue;
            };
            match obj {
                NfListObject::Table(t) if t.family == NfFamily::INet && t.name == TABLE => {
                    state.exists = true;
                }
                NfListObject::Chain(c) if c.family == NfFamily::INet && c.table == TABLE => {
                    state.chains.insert(c.name.to_string());
                }
                NfListObject::Rule(r) if r.family == NfFamily::INet && r.table == TABLE => {
                    state.rules.push(r.clone());
                }
                NfListObject::Set(set)
                    if set.family == NfFamily::INet
                        && set.table == TABLE
                        && set.name == BRIDGE_SET =>
                {
                    for e in set.elem.iter().flat_map(|e| e.iter()) {
                        if let Some(name) = element_name(e) {
                            state.bridges.insert(name);
                        }
                    }
                }
                _ => {}
            }
        }
        state
    }

    /// Jump rules of network `id12` (in `published`, `postrouting`, `forward`).
    fn jump_rules<'s>(&'s self, id12: &str) -> impl Iterator<Item = &'s Rule<'static>> {
        let tag = network_tag(id12);
        self.rules.iter().filter(move |r| {
            DISPATCH_CHAINS.contains(&r.chain.as_ref()) && r.comment.as_deref() == Some(&tag)
        })
    }

    /// The per-network chains of `id12` that exist.
    fn network_chains(&self, id12: &str) -> Vec<String> {
        [dnat_chain(id12), snat_chain(id12), fwd_chain(id12)]
            .into_iter()
            .filter(|c| self.chains.contains(c))
            .collect()
    }

    /// Ids (12 characters) of every network with a chain or a jump rule here.
    pub fn network_ids(&self) -> BTreeSet<String> {
        let mut ids: BTreeSet<String> = self
            .chains
            .iter()
            .filter_map(|c| chain_network(c))
            .map(str::to_string)
            .collect();
        ids.extend(
            self.rules
                .iter()
                .filter(|r| DISPATCH_CHAINS.contains(&r.chain.as_ref()))
                .filter_map(|r| r.comment.as_deref()?.strip_prefix(super::TAG_PREFIX))
                .map(str::to_string),
        );
        ids
    }

    /// The bridge network `id12`'s forward jump rules name.
    pub fn bridge_of(&self, id12: &str) -> Option<String> {
        self.jump_rules(id12)
            .filter(|r| r.chain == FORWARD)
            .flat_map(|r| r.expr.iter())
            .find_map(|st| match st {
                Statement::Match(Match {
                    left:
                        Expression::Named(NamedExpression::Meta(Meta {
                            key: MetaKey::Iifname | MetaKey::Oifname,
                        })),
                    right: Expression::String(name),
                    op: Operator::EQ,
                }) => Some(name.to_string()),
                _ => None,
            })
    }

    /// Every published port in the table.
    pub fn published(&self) -> Vec<FoundPort> {
        self.rules
            .iter()
            .filter_map(|r| {
                let network = r.chain.strip_prefix("nw-")?.strip_suffix("-dnat")?;
                let endpoint = r.comment.as_deref()?.strip_prefix("ep:")?;
                let (container_ip, port, routed) = parse_port_rule(&r.expr)?;
                Some(FoundPort {
                    network: network.to_string(),
                    endpoint: endpoint.to_string(),
                    container_ip,
                    port,
                    routed,
                })
            })
            .collect()
    }

    /// Whether network `id12` is routed: its forward chain sends inbound traffic to its
    /// port chain (a nat network reaches that chain from `published` instead).
    pub fn is_routed(&self, id12: &str) -> bool {
        let (fwd, ports) = (fwd_chain(id12), dnat_chain(id12));
        self.rules.iter().any(|r| {
            r.chain == fwd
                && r.expr.iter().any(
                    |st| matches!(st, Statement::Jump(JumpTarget { target }) if *target == ports),
                )
        })
    }

    /// Rules of endpoint `ep12` in network `id12`'s DNAT chain.
    fn endpoint_rules<'s>(
        &'s self,
        id12: &str,
        ep12: &str,
    ) -> impl Iterator<Item = &'s Rule<'static>> {
        let chain = dnat_chain(id12);
        let tag = endpoint_tag(ep12);
        self.rules
            .iter()
            .filter(move |r| r.chain == chain && r.comment.as_deref() == Some(&tag))
    }
}

fn element_name(e: &Expression<'static>) -> Option<String> {
    match e {
        Expression::String(name) => Some(name.to_string()),
        Expression::Named(NamedExpression::Elem(elem)) => element_name(&elem.val),
        _ => None,
    }
}

fn number(e: &Expression<'static>) -> Option<u16> {
    match e {
        Expression::Number(n) => u16::try_from(*n).ok().filter(|&p| p != 0),
        _ => None,
    }
}

/// A port rule back into its parts: `[ip daddr A] tcp|udp dport P dnat to C:Q` (nat),
/// or `ip daddr C tcp|udp dport P accept` (routed, the last item `true`).
fn parse_port_rule(expr: &[Statement<'static>]) -> Option<(IpAddr, PublishedPort, bool)> {
    let (mut host_ip, mut proto_port, mut target, mut accepted) = (None, None, None, false);
    for st in expr {
        match st {
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(f))),
                right,
                op: Operator::EQ,
            }) => match (f.protocol.as_ref(), f.field.as_ref(), right) {
                ("ip", "daddr", Expression::String(a)) => {
                    host_ip = Some(IpAddr::V4(a.parse().ok()?))
                }
                ("ip6", "daddr", Expression::String(a)) => {
                    host_ip = Some(IpAddr::V6(a.parse().ok()?))
                }
                ("tcp", "dport", n) => proto_port = Some((Proto::Tcp, number(n)?)),
                ("udp", "dport", n) => proto_port = Some((Proto::Udp, number(n)?)),
                _ => return None,
            },
            Statement::DNAT(Some(NAT {
                addr: Some(Expression::String(a)),
                port: Some(p),
                ..
            })) => target = Some((a.parse::<IpAddr>().ok()?, number(p)?)),
            Statement::Accept(None) => accepted = true,
            _ => return None,
        }
    }
    let (proto, host_port) = proto_port?;
    if accepted {
        // Routed: the address is the container's, the port its own.
        let port = PublishedPort {
            proto,
            host_ip: None,
            host_port,
            container_port: host_port,
        };
        return (target.is_none()).then_some((host_ip?, port, true));
    }
    let (container_ip, container_port) = target?;
    Some((
        container_ip,
        PublishedPort {
            proto,
            host_ip,
            host_port,
            container_port,
        },
        false,
    ))
}

// ---- batches ------------------------------------------------------------------------

/// The table, the bridge set, the chains every network uses and the static rules
/// (only traffic for a local address goes to `published`). Flushing and re-adding the
/// static rules makes this safe to apply any number of times.
pub fn skeleton() -> Vec<NfObject<'static>> {
    let local = matches(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: HashSet::from([FibFlag::Daddr]),
        })),
        Operator::EQ,
        s("local"),
    );
    let not_loopback = matches(
        payload("ip", "daddr"),
        Operator::NEQ,
        prefix(Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid prefix")),
    );
    let not_loopback6 = matches(
        payload("ip6", "daddr"),
        Operator::NEQ,
        s(Ipv6Addr::LOCALHOST.to_string()),
    );
    vec![
        add(NfListObject::Table(table())),
        add(NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: Cow::Borrowed(TABLE),
            name: Cow::Borrowed(BRIDGE_SET),
            handle: None,
            set_type: SetTypeValue::Single(SetType::Ifname),
            policy: None,
            flags: None,
            elem: None,
            timeout: None,
            gc_interval: None,
            size: None,
            // Bridges of nat networks: no forwarding between two of them. (No
            // comment on the set: nft 1.0.6 drops set comments given in JSON.)
            comment: None,
        }))),
        add(NfListObject::Chain(base_chain(
            PREROUTING,
            NfChainType::NAT,
            NfHook::Prerouting,
            -100,
        ))),
        add(NfListObject::Chain(base_chain(
            OUTPUT,
            NfChainType::NAT,
            NfHook::Output,
            -100,
        ))),
        add(NfListObject::Chain(base_chain(
            POSTROUTING,
            NfChainType::NAT,
            NfHook::Postrouting,
            100,
        ))),
        add(NfListObject::Chain(base_chain(
            FORWARD,
            NfChainType::Filter,
            NfHook::Forward,
            0,
        ))),
        add(NfListObject::Chain(chain(PUBLISHED))),
        flush_chain(PREROUTING),
        add(NfListObject::Rule(rule(
            PREROUTING,
            vec![local.clone(), jump(PUBLISHED.into())],
            None,
        ))),
        flush_chain(OUTPUT),
        add(NfListObject::Rule(rule(
            OUTPUT,
            vec![not_loopback, local.clone(), jump(PUBLISHED.into())],
            None,
        ))),
        add(NfListObject::Rule(rule(
            OUTPUT,
            vec![not_loopback6, local, jump(PUBLISHED.into())],
            None,
        ))),
    ]
}

/// The rules of the network's own chains and its jump rules.
fn network_rules(net: &NatNetwork, id12: &str) -> Vec<Rule<'static>> {
    let tag = Some(network_tag(id12));
    let br = net.bridge.as_str();
    let (fwd, snat, dnat) = (fwd_chain(id12), snat_chain(id12), dnat_chain(id12));
    let note = |s: &str| Some(s.to_string());
    let mut rules = vec![
        rule(
            FORWARD,
            vec![iifname(Operator::EQ, br), jump(fwd.clone())],
            tag.clone(),
        ),
        rule(
            FORWARD,
            vec![oifname(Operator::EQ, br), jump(fwd.clone())],
            tag.clone(),
        ),
    ];
    if net.internal {
        rules.extend([
            rule(
                &fwd,
                vec![
                    iifname(Operator::EQ, br),
                    oifname(Operator::EQ, br),
                    accept(),
                ],
                None,
            ),
            rule(
                &fwd,
                vec![iifname(Operator::EQ, br), drop_()],
                note("internal network: no way out"),
            ),
            rule(
                &fwd,
                vec![oifname(Operator::EQ, br), drop_()],
                note("internal network: no way in"),
            ),
        ]);
        return rules;
    }
    if net.routed {
        let icmp_in = |l4proto: &str, what: &str| {
            rule(
                &fwd,
                vec![
                    oifname(Operator::EQ, br),
                    matches(meta(MetaKey::L4proto), Operator::EQ, s(l4proto)),
                    accept(),
                ],
                note(&format!("routed: {what} reaches the containers")),
            )
        };
        rules.extend(forward_rules(
            &fwd,
            br,
            vec![],
            vec![
                icmp_in("icmp", "ICMP"),
                icmp_in("ipv6-icmp", "ICMPv6"),
                rule(
                    &fwd,
                    vec![oifname(Operator::EQ, br), jump(dnat)],
                    note("routed: the published container ports"),
                ),
            ],
        ));
        return rules;
    }
    // The network's subnets, as (payload protocol, prefix): IPv4's, and IPv6's.
    let subnets: Vec<(&str, Expression<'static>)> = std::iter::once(("ip", prefix(net.subnet)))
        .chain(net.ipv6.map(|v6| ("ip6", prefix6(v6.subnet))))
        .collect();
    for (proto, subnet) in &subnets {
        rules.push(rule(
            POSTROUTING,
            vec![
                matches(payload(proto, "saddr"), Operator::EQ, subnet.clone()),
                jump(snat.clone()),
            ],
            tag.clone(),
        ));
    }
    rules.push(rule(PUBLISHED, vec![jump(dnat)], tag));
    for (proto, subnet) in subnets {
        rules.push(rule(
            &snat,
            vec![
                matches(payload(proto, "daddr"), Operator::EQ, subnet),
                ct_status_dnat(),
                Statement::Masquerade(None),
            ],
            note("hairpin: containers reaching the network's own published ports"),
        ));
    }
    if let Some((lo, hi)) = net.masquerade_ports {
        for proto in ["tcp", "udp"] {
            rules.push(rule(
                &snat,
                vec![
                    oifname(Operator::NEQ, br),
                    matches(meta(MetaKey::L4proto), Operator::EQ, s(proto)),
                    Statement::Masquerade(Some(NAT {
                        addr: None,
                        family: None,
                        port: Some(Expression::Range(Box::new(Range {
                            range: [Expression::Number(lo.into()), Expression::Number(hi.into())],
                        }))),
                        flags: None,
                    })),
                ],
                note("outbound, clear of the nat-fast translator's ports"),
            ));
        }
    }
    rules.push(rule(
        &snat,
        vec![oifname(Operator::NEQ, br), Statement::Masquerade(None)],
        note("outbound"),
    ));
    let published = rule(
        &fwd,
        vec![ct_status_dnat(), accept()],
        note("published ports"),
    );
    rules.extend(forward_rules(&fwd, br, vec![published], vec![]));
    rules
}

/// The forwarding policy of a network that is not internal: `first`, replies, isolation
/// from the other nat and routed networks, everything out, `inbound`, and nothing else
/// in.
fn forward_rules(
    fwd: &str,
    br: &str,
    first: Vec<Rule<'static>>,
    inbound: Vec<Rule<'static>>,
) -> Vec<Rule<'static>> {
    let note = |s: &str| Some(s.to_string());
    let mut rules = first;
    rules.extend([
        rule(
            fwd,
            vec![
                oifname(Operator::EQ, br),
                matches(
                    ct("state"),
                    Operator::IN,
                    Expression::List(vec![s("established"), s("related")]),
                ),
                accept(),
            ],
            None,
        ),
        rule(
            fwd,
            vec![
                iifname(Operator::EQ, br),
                oifname(Operator::EQ, &format!("@{BRIDGE_SET}")),
                oifname(Operator::NEQ, br),
                drop_(),
            ],
            note("isolation from other nat networks"),
        ),
        rule(fwd, vec![iifname(Operator::EQ, br), accept()], None),
    ]);
    rules.extend(inbound);
    rules.push(rule(
        fwd,
        vec![oifname(Operator::EQ, br), drop_()],
        note("nothing else enters the network"),
    ));
    rules
}

/// Everything to install (or bring up to date) a network, given what the table holds
/// now: the skeleton, the network's chains flushed and refilled (its DNAT chain is
/// kept, with its ports), its old jump rules replaced, its bridge in the set, and
/// set elements no network uses any more removed.
pub fn network_batch(
    net: &NatNetwork,
    state: &TableState,
) -> Result<Nftables<'static>, FirewallError> {
    net.validate()?;
    let id12 = net.short_id()?;
    let mut out = skeleton();
    for r in state.jump_rules(id12) {
        out.push(delete_rule(r));
    }
    let (fwd, snat, dnat) = (fwd_chain(id12), snat_chain(id12), dnat_chain(id12));
    out.push(add(NfListObject::Chain(chain(&fwd))));
    out.push(flush_chain(&fwd));
    if net.internal {
        // A network that was not internal before loses its NAT chains.
        for c in [&snat, &dnat] {
            if state.chains.contains(c.as_str()) {
                remove_chain(c, &mut out);
            }
        }
    } else if net.routed {
        // No translation: the DNAT chain holds the ports' accepts (kept, like NAT's).
        if state.chains.contains(snat.as_str()) {
            remove_chain(&snat, &mut out);
        }
        out.push(add(NfListObject::Chain(chain(&dnat))));
    } else {
        out.push(add(NfListObject::Chain(chain(&snat))));
        out.push(flush_chain(&snat));
        out.push(add(NfListObject::Chain(chain(&dnat))));
    }
    for r in network_rules(net, id12) {
        out.push(add(NfListObject::Rule(r)));
    }
    out.push(add(NfListObject::Element(bridge_element(&net.bridge))));
    let mut in_use: BTreeSet<String> = state
        .network_ids()
        .iter()
        .filter(|id| id.as_str() != id12)
        .filter_map(|id| state.bridge_of(id))
        .collect();
    in_use.insert(net.bridge.clone());
    for stale in state.bridges.difference(&in_use) {
        out.push(delete(NfListObject::Element(bridge_element(stale))));
    }
    Ok(batch(out))
}

/// Removes network `id12`: its jump rules, its chains, its bridge from the set; the
/// whole table when no other network is left. `None` when there is nothing to remove.
pub fn remove_network_batch(id12: &str, state: &TableState) -> Option<Nftables<'static>> {
    let ids = state.network_ids();
    if !ids.contains(id12) {
        return None;
    }
    if ids.len() == 1 {
        return Some(batch(vec![delete(NfListObject::Table(table()))]));
    }
    let mut out: Vec<NfObject<'static>> = state.jump_rules(id12).map(delete_rule).collect();
    for c in state.network_chains(id12) {
        remove_chain(&c, &mut out);
    }
    if let Some(bridge) = state.bridge_of(id12) {
        let used_elsewhere = ids
            .iter()
            .filter(|id| id.as_str() != id12)
            .any(|id| state.bridge_of(id).as_deref() == Some(bridge.as_str()));
        if state.bridges.contains(&bridge) && !used_elsewhere {
            out.push(delete(NfListObject::Element(bridge_element(&bridge))));
        }
    }
    Some(batch(out))
}

/// A container's addresses on a network: IPv4, and IPv6 on `--ipv6` networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerIps {
    pub v4: Ipv4Addr,
    pub v6: Option<Ipv6Addr>,
}

/// The payload protocol (`ip`, `ip6`) and NAT family of an address.
fn family_of(ip: IpAddr) -> (&'static str, NATFamily) {
    match ip {
        IpAddr::V4(_) => ("ip", NATFamily::IP),
        IpAddr::V6(_) => ("ip6", NATFamily::IP6),
    }
}

/// The rules of one published port: a DNAT from the host port to each of the
/// container's addresses the host address allows (nat: every address means both
/// families; an IPv6 host address the IPv6 one), or on a routed network an accept of
/// each of the container's own addresses and the port.
fn port_rules(
    id12: &str,
    ep12: &str,
    ips: ContainerIps,
    p: &PublishedPort,
    routed: bool,
) -> Vec<Rule<'static>> {
    let targets: Vec<IpAddr> = [Some(IpAddr::V4(ips.v4)), ips.v6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .filter(|t| routed || p.host_ip.is_none_or(|h| h.is_ipv4() == t.is_ipv4()))
        .collect();
    let dport = |port: u16| {
        matches(
            payload(p.proto.as_str(), "dport"),
            Operator::EQ,
            Expression::Number(u32::from(port)),
        )
    };
    targets
        .into_iter()
        .map(|target| {
            let (proto, family) = family_of(target);
            let expr = if routed {
                vec![
                    matches(payload(proto, "daddr"), Operator::EQ, s(target.to_string())),
                    dport(p.container_port),
                    accept(),
                ]
            } else {
                let mut expr = Vec::new();
                if let Some(ip) = p.host_ip {
                    expr.push(matches(
                        payload(proto, "daddr"),
                        Operator::EQ,
                        s(ip.to_string()),
                    ));
                }
                expr.push(dport(p.host_port));
                expr.push(Statement::DNAT(Some(NAT {
                    addr: Some(s(target.to_string())),
                    family: Some(family),
                    port: Some(Expression::Number(u32::from(p.container_port))),
                    flags: None,
                })));
                expr
            };
            rule(&dnat_chain(id12), expr, Some(endpoint_tag(ep12)))
        })
        .collect()
}

/// Replaces endpoint `ep12`'s published ports with `ports` (the network's kind read
/// from `state`: see [`TableState::is_routed`]).
pub fn ports_batch(
    id12: &str,
    ep12: &str,
    ips: ContainerIps,
    ports: &[PublishedPort],
    state: &TableState,
) -> Nftables<'static> {
    let routed = state.is_routed(id12);
    let mut out: Vec<NfObject<'static>> =
        state.endpoint_rules(id12, ep12).map(delete_rule).collect();
    out.extend(
        ports
            .iter()
            .flat_map(|p| port_rules(id12, ep12, ips, p, routed))
            .map(|r| add(NfListObject::Rule(r))),
    );
    batch(out)
}

/// Withdraws the ports of every endpoint of network `id12` that `keep` does not list
/// (ids of 12 characters). `None` when there is nothing to withdraw.
fn stale_endpoints_batch(
    id12: &str,
    keep: &BTreeSet<String>,
    state: &TableState,
) -> Option<Nftables<'static>> {
    let chain = dnat_chain(id12);
    let out: Vec<NfObject<'static>> = state
        .rules
        .iter()
        .filter(|r| r.chain == chain)
        .filter(|r| {
            r.comment
                .as_deref()
                .and_then(|c| c.strip_prefix("ep:"))
                .is_none_or(|ep| !keep.contains(ep))
        })
        .map(delete_rule)
        .collect();
    (!out.is_empty()).then(|| batch(out))
}

/// What `-p` means on a routed network (as Docker's `gateway_mode_ipv4=routed`): each
/// container port of the mappings, reachable at the container's own address; host
/// addresses and ports are ignored.
pub fn routed_ports(mappings: &[PortMapping]) -> Vec<PublishedPort> {
    let mut out: Vec<PublishedPort> = Vec::new();
    for m in mappings {
        for port in m.container_ports.start()..=m.container_ports.end() {
            let p = PublishedPort {
                proto: m.proto,
                host_ip: None,
                host_port: port,
                container_port: port,
            };
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

// ---- running nft ------------------------------------------------------------------

/// Runs `nft` with `args`, `stdin` on its standard input; stdout on success.
pub(super) fn run_nft(
    args: &[&str],
    stdin: Option<&str>,
    action: &str,
) -> Result<String, FirewallError> {
    let out = match output_within(
        Command::new("nft").args(args),
        stdin.map(str::as_bytes),
        COMMAND_TIMEOUT,
    ) {
        Ok(out) => out,
        Err(RunError::Spawn(source)) => return Err(FirewallError::NftMissing { source }),
        Err(RunError::Io(e)) => {
            return Err(FirewallError::Nft {
                action: action.to_string(),
                stderr: format!("cannot feed or wait for nft: {e}"),
            })
        }
        Err(RunError::TimedOut(after)) => {
            return Err(FirewallError::Timeout {
                command: format!("nft {} ({action})", args.join(" ")),
                after,
            })
        }
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(FirewallError::Nft {
            action: action.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Lists table `inet dovesnap` (absent: an empty state).
pub fn list_table() -> Result<TableState, FirewallError> {
    let action = format!("list table {FAMILY} {TABLE}");
    match run_nft(&["-j", "list", "table", FAMILY, TABLE], None, &action) {
        Ok(json) => {
            let listing: Nftables<'static> =
                serde_json::from_str(&json).map_err(|e| FirewallError::NftOutput {
                    action,
                    detail: e.to_string(),
                })?;
            Ok(TableState::from_listing(&listing))
        }
        Err(FirewallError::Nft { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(TableState::default())
        }
        Err(e) => Err(e),
    }
}

/// Applies a batch in one transaction.
pub fn apply(batch: &Nftables<'_>, action: &str) -> Result<(), FirewallError> {
    let json = serde_json::to_string(batch).map_err(|e| FirewallError::NftOutput {
        action: action.to_string(),
        detail: format!("cannot serialize the ruleset: {e}"),
    })?;
    run_nft(&["-j", "-f", "-"], Some(&json), action).map(drop)
}

// ---- the backend ------------------------------------------------------------------

/// The nftables (+ Docker-compatible iptables) firewall. Operations are serialized by
/// an internal lock; the kernel's table is the only state, so a restarted daemon
/// carries on where the previous one stopped.
pub struct NftFirewall {
    lock: Mutex<()>,
    iptables: Iptables,
}

impl Default for NftFirewall {
    fn default() -> Self {
        Self::new()
    }
}

impl NftFirewall {
    pub fn new() -> Self {
        NftFirewall {
            lock: Mutex::new(()),
            iptables: Iptables::new(),
        }
    }

    /// Checks that `nft` runs and the table can be read: call it at start-up to fail
    /// early with a clear message.
    pub fn probe(&self) -> Result<(), FirewallError> {
        list_table().map(drop)
    }

    /// Deletes the table `ip dovesnap` of versions before IPv6 support, if there is
    /// one: call it at start, before the reconciler puts every network's rules back in
    /// `inet dovesnap` (until then the networks' forwarding and NAT are down). Returns
    /// whether there was one.
    pub fn remove_legacy_table(&self) -> Result<bool, FirewallError> {
        let _g = self.guard();
        let action = format!("delete the old table {LEGACY_FAMILY} {TABLE}");
        match run_nft(&["delete", "table", LEGACY_FAMILY, TABLE], None, &action) {
            Ok(_) => Ok(true),
            Err(FirewallError::Nft { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves no half-state in memory: go on.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_network_locked(&self, net: &NatNetwork) -> Result<(), FirewallError> {
        net.validate()?;
        let id12 = net.short_id()?;
        if !net.internal {
            enable_ip_forward()?;
            if net.ipv6.is_some() {
                enable_ipv6_forward()?;
            }
        }
        let state = list_table()?;
        apply(
            &network_batch(net, &state)?,
            &format!("add nat network {id12} (bridge {})", net.bridge),
        )?;
        self.iptables.ensure(net, id12).map(drop)
    }

    fn remove_network_locked(&self, id12: &str) -> Result<(), FirewallError> {
        let mut errors = Vec::new();
        match list_table() {
            Ok(state) => {
                if let Some(b) = remove_network_batch(id12, &state) {
                    if let Err(e) = apply(&b, &format!("remove nat network {id12}")) {
                        errors.push(e);
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        if let Err(e) = self.iptables.remove(id12) {
            errors.push(e);
        }
        FirewallError::collect(errors)
    }

    fn add_ports_locked(
        &self,
        id12: &str,
        ep12: &str,
        ips: ContainerIps,
        ports: &[PortMapping],
    ) -> Result<Vec<PublishedPort>, FirewallError> {
        let state = list_table()?;
        if !state.chains.contains(&dnat_chain(id12)) {
            return Err(FirewallError::UnknownNetwork {
                id: id12.to_string(),
                table: TABLE.to_string(),
            });
        }
        if state.is_routed(id12) {
            // The container's own ports at its own address: no host port to choose or
            // to clash over.
            let direct = routed_ports(ports);
            apply(
                &ports_batch(id12, ep12, ips, &direct, &state),
                &format!("open ports of endpoint {ep12} on routed network {id12}"),
            )?;
            return Ok(direct);
        }
        for p in ports {
            p.validate()?;
            if let Some(ip @ IpAddr::V6(_)) = p.host_ip {
                if ips.v6.is_none() {
                    return Err(FirewallError::NoIpv6Container(ip));
                }
            }
        }
        let (mine, others): (Vec<FoundPort>, Vec<FoundPort>) = state
            .published()
            .into_iter()
            .filter(|f| !f.routed)
            .partition(|f| f.network == id12 && f.endpoint == ep12);
        let taken: Vec<Taken> = others
            .into_iter()
            .map(|f| Taken {
                port: f.port,
                holder: format!("endpoint {} of network {}", f.endpoint, f.network),
            })
            .collect();
        // A port on every address has a rule per family: one publication.
        let mut previous: Vec<PublishedPort> = mine.into_iter().map(|f| f.port).collect();
        previous.sort();
        previous.dedup();
        let listening = host_listening_ports();
        let resolved = resolve(ports, &taken, &previous, dynamic_range(), &|proto, port| {
            listening.contains(&(proto, port))
        })?;
        apply(
            &ports_batch(id12, ep12, ips, &resolved, &state),
            &format!("publish ports of endpoint {ep12} on network {id12}"),
        )?;
        Ok(resolved)
    }

    fn reconcile_network(&self, exp: &ExpectedNetwork) -> Result<(), FirewallError> {
        self.add_network_locked(&exp.network)?;
        let id12 = exp.network.short_id()?;
        let mut errors = Vec::new();
        let mut keep = BTreeSet::new();
        let mut keep_all = false;
        for ep in &exp.endpoints {
            match short_id("endpoint", &ep.endpoint_id) {
                Ok(ep12) => {
                    keep.insert(ep12.to_string());
                }
                Err(e) => {
                    // Its rules cannot be told apart: none is withdrawn.
                    keep_all = true;
                    errors.push(e);
                }
            }
        }
        let state = list_table()?;
        if let Some(b) = (!keep_all)
            .then(|| stale_endpoints_batch(id12, &keep, &state))
            .flatten()
        {
            if let Err(e) = apply(&b, &format!("withdraw stale ports of network {id12}")) {
                errors.push(e);
            }
        }
        for ep in exp.endpoints.iter().filter(|ep| !ep.ports.is_empty()) {
            if let Err(e) = self.reconcile_endpoint(id12, ep) {
                errors.push(e);
            }
        }
        FirewallError::collect(errors)
    }

    fn reconcile_endpoint(&self, id12: &str, ep: &EndpointPorts) -> Result<(), FirewallError> {
        let ep12 = short_id("endpoint", &ep.endpoint_id)?;
        let mappings = ep
            .ports
            .iter()
            .map(|p| PortMapping::try_from(*p))
            .collect::<Result<Vec<_>, _>>()?;
        let ips = ContainerIps {
            v4: ep.container_ip,
            v6: ep.container_ip6,
        };
        self.add_ports_locked(id12, ep12, ips, &mappings).map(drop)
    }
}

impl Firewall for NftFirewall {
    fn add_network(&self, net: &NatNetwork) -> Result<(), FirewallError> {
        let _g = self.guard();
        self.add_network_locked(net)
    }

    fn remove_network(&self, network_id: &str) -> Result<(), FirewallError> {
        let id12 = short_id("network", network_id)?;
        let _g = self.guard();
        self.remove_network_locked(id12)
    }

    fn add_ports(
        &self,
        network_id: &str,
        endpoint_id: &str,
        container_ip: Ipv4Addr,
        container_ip6: Option<Ipv6Addr>,
        ports: &[PortMapping],
    ) -> Result<Vec<PublishedPort>, FirewallError> {
        let id12 = short_id("network", network_id)?;
        let ep12 = short_id("endpoint", endpoint_id)?;
        let _g = self.guard();
        let ips = ContainerIps {
            v4: container_ip,
            v6: container_ip6,
        };
        self.add_ports_locked(id12, ep12, ips, ports)
    }

    fn remove_ports(&self, network_id: &str, endpoint_id: &str) -> Result<(), FirewallError> {
        let id12 = short_id("network", network_id)?;
        let ep12 = short_id("endpoint", endpoint_id)?;
        let _g = self.guard();
        let state = list_table()?;
        let out: Vec<NfObject<'static>> =
            state.endpoint_rules(id12, ep12).map(delete_rule).collect();
        if out.is_empty() {
            return Ok(());
        }
        apply(
            &batch(out),
            &format!("withdraw ports of endpoint {ep12} on network {id12}"),
        )
    }

    fn restore_forwarding(&self, nets: &[NatNetwork]) -> Result<usize, FirewallError> {
        let ids = nets
            .iter()
            .map(|n| n.validate().and_then(|()| n.short_id()))
            .collect::<Result<Vec<_>, _>>()?;
        let pairs: Vec<_> = nets.iter().zip(ids).collect();
        let _g = self.guard();
        self.iptables.ensure_all(&pairs)
    }

    fn reconcile_keeping(
        &self,
        expected: &[ExpectedNetwork],
        untouched: &[String],
    ) -> Result<(), FirewallError> {
        let _g = self.guard();
        let mut errors = Vec::new();
        // Ids of every network meant to exist, even if its description is refused
        // below: its rules are then left as they are rather than removed.
        let mut keep: BTreeSet<String> = expected
            .iter()
            .filter_map(|e| short_id("network", &e.network.id).ok())
            .map(str::to_string)
            .collect();
        let mut keep_all = false;
        for id in untouched {
            match short_id("network", id) {
                Ok(id12) => {
                    keep.insert(id12.to_string());
                }
                Err(_) => keep_all = true,
            }
        }

        let mut present = BTreeSet::new();
        match list_table() {
            Ok(state) => present.extend(state.network_ids()),
            Err(e) => errors.push(e),
        }
        match self.iptables.tagged_ids() {
            Ok(ids) => present.extend(ids),
            Err(e) => errors.push(e),
        }
        if keep_all {
            tracing::warn!(
                "a network record's id does not read: keeping the rules of every network"
            );
            present.clear();
        }
        for stale in present.difference(&keep) {
            tracing::info!(network = %stale, "removing firewall rules of a network that is gone");
            if let Err(e) = self.remove_network_locked(stale) {
                errors.push(e);
            }
        }
        for exp in expected {
            if let Err(e) = self.reconcile_network(exp) {
                errors.push(e);
            }
        }
        FirewallError::collect(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::PortRange;
    use serde_json::{json, Value};

    const NET_ID: &str = "3f2a9c1d4e5b6a7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

    fn net() -> NatNetwork {
        NatNetwork {
            id: NET_ID.into(),
            bridge: "ovsbr-3f2a9c1d".into(),
            subnet: "10.231.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 231, 1, 1),
            internal: false,
            routed: false,
            masquerade_ports: None,
            ipv6: None,
        }
    }

    /// The batch publishing `ports` for endpoint 5b7e0e2a41c3 (10.231.1.2) of [`net`].
    fn publish_on_net(ports: &[PublishedPort], state: &TableState) -> Nftables<'static> {
        ports_batch(
            "3f2a9c1d4e5b",
            "5b7e0e2a41c3",
            ContainerIps {
                v4: Ipv4Addr::new(10, 231, 1, 2),
                v6: None,
            },
            ports,
            state,
        )
    }

    fn two_ports() -> Vec<PublishedPort> {
        vec![
            PublishedPort {
                proto: Proto::Tcp,
                host_ip: None,
                host_port: 8080,
                container_port: 80,
            },
            PublishedPort {
                proto: Proto::Udp,
                host_ip: Some(Ipv4Addr::new(192, 0, 2, 10).into()),
                host_port: 5353,
                container_port: 53,
            },
        ]
    }

    fn to_json(b: &Nftables<'_>) -> Value {
        serde_json::to_value(b).unwrap()
    }

    /// The `add rule` commands of a batch, as `(chain, comment, expr)`.
    fn added_rules(b: &Nftables<'_>) -> Vec<(String, Option<String>, Value)> {
        to_json(b)["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("add")?.get("rule"))
            .map(|r| {
                (
                    r["chain"].as_str().unwrap().to_string(),
                    r.get("comment").and_then(Value::as_str).map(str::to_string),
                    r["expr"].clone(),
                )
            })
            .collect()
    }

    /// A listing as `nft -j list table` would give it after applying `batches`
    /// (handles numbered in order), for tests without root.
    fn listing_after(batches: &[Nftables<'static>]) -> TableState {
        let mut objects = Vec::new();
        let mut handle = 0;
        for b in batches {
            for o in b.objects.iter() {
                let NfObject::CmdObject(NfCmd::Add(obj)) = o else {
                    continue;
                };
                handle += 1;
                let obj = match obj.clone() {
                    NfListObject::Rule(mut r) => {
                        r.handle = Some(handle);
                        NfListObject::Rule(r)
                    }
                    NfListObject::Element(e) => NfListObject::Set(Box::new(Set {
                        family: NfFamily::INet,
                        table: Cow::Borrowed(TABLE),
                        name: e.name,
                        handle: None,
                        set_type: SetTypeValue::Single(SetType::Ifname),
                        policy: None,
                        flags: None,
                        elem: Some(e.elem),
                        timeout: None,
                        gc_interval: None,
                        size: None,
                        comment: None,
                    })),
                    other => other,
                };
                objects.push(NfObject::ListObject(obj));
            }
        }
        // Through JSON, like a real listing.
        let json = serde_json::to_string(&batch(objects)).unwrap();
        let listing: Nftables<'static> = serde_json::from_str(&json).unwrap();
        TableState::from_listing(&listing)
    }

    /// The forward chain rules of [`net`]'s batch `b`, after checking that the batch
    /// sends nothing to `postrouting` or `published` (no masquerade, no DNAT).
    fn untranslated_forward(b: &Nftables<'_>) -> Vec<(String, Option<String>, Value)> {
        let rules = added_rules(b);
        assert!(rules
            .iter()
            .all(|r| r.0 != "postrouting" && r.0 != "published"));
        rules
            .into_iter()
            .filter(|r| r.0 == "nw-3f2a9c1d4e5b-fwd")
            .collect()
    }

    #[test]
    fn skeleton_sends_only_local_traffic_to_published() {
        let b = batch(skeleton());
        let rules = added_rules(&b);
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].0, "prerouting");
        assert_eq!(
            rules[0].2,
            json!([
                {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
                {"jump": {"target": "published"}}
            ])
        );
        assert_eq!(rules[1].0, "output");
        assert_eq!(
            rules[1].2[0],
            json!({"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}})
        );
        // IPv6's output rule: anything local but ::1 (the kernel cannot DNAT loopback).
        assert_eq!(rules[2].0, "output");
        assert_eq!(
            rules[2].2[0],
            json!({"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "daddr"}},
                   "right": "::1"}})
        );
        assert_eq!(rules[2].2[1], rules[1].2[1]);
        let v = to_json(&b);
        let chains: Vec<&Value> = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("add")?.get("chain"))
            .collect();
        assert_eq!(
            chains[0],
            &json!({"family": "inet", "table": "dovesnap", "name": "prerouting", "type": "nat",
                    "hook": "prerouting", "prio": -100, "policy": "accept"})
        );
        assert_eq!(chains[3]["type"], "filter");
        assert_eq!(
            chains[4],
            &json!({"family": "inet", "table": "dovesnap", "name": "published"})
        );
    }

    #[test]
    fn network_rules_masquerade_isolate_and_jump() {
        let b = network_batch(&net(), &TableState::default()).unwrap();
        let rules = added_rules(&b);
        let tag = Some("dovesnap:3f2a9c1d4e5b".to_string());
        let find = |chain: &str| -> Vec<&(String, Option<String>, Value)> {
            rules.iter().filter(|r| r.0 == chain).collect()
        };

        let post = find("postrouting");
        assert_eq!(post.len(), 1);
        assert_eq!(post[0].1, tag);
        assert_eq!(
            post[0].2,
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": {"prefix": {"addr": "10.231.1.0", "len": 24}}}},
                {"jump": {"target": "nw-3f2a9c1d4e5b-snat"}}
            ])
        );
        let fwd = find("forward");
        assert_eq!(fwd.len(), 2);
        assert!(fwd.iter().all(|r| r.1 == tag));
        assert_eq!(
            fwd[0].2[0],
            json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "ovsbr-3f2a9c1d"}})
        );
        assert_eq!(
            find("published")[0].2,
            json!([{"jump": {"target": "nw-3f2a9c1d4e5b-dnat"}}])
        );

        let snat = find("nw-3f2a9c1d4e5b-snat");
        assert_eq!(snat.len(), 2);
        assert_eq!(
            snat[0].2[1],
            json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}})
        );
        assert_eq!(snat[0].2[2], json!({"masquerade": null}));
        assert_eq!(
            snat[1].2,
            json!([
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "ovsbr-3f2a9c1d"}},
                {"masquerade": null}
            ])
        );

        let f = find("nw-3f2a9c1d4e5b-fwd");
        assert_eq!(f.len(), 5);
        assert_eq!(
            f[1].2[1],
            json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}})
        );
        assert_eq!(
            f[2].2[1],
            json!({"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "@nat-bridges"}})
        );
        assert_eq!(f[2].2[3], json!({"drop": null}));
        assert_eq!(f[4].2[1], json!({"drop": null}));

        let v = to_json(&b);
        let cmds = v["nftables"].as_array().unwrap();
        assert!(cmds.contains(
            &json!({"add": {"element": {"family": "inet", "table": "dovesnap",
            "name": "nat-bridges", "elem": ["ovsbr-3f2a9c1d"]}}})
        ));
        // The DNAT chain is added but never flushed: its ports survive a re-apply.
        assert!(cmds.contains(
            &json!({"add": {"chain": {"family": "inet", "table": "dovesnap",
            "name": "nw-3f2a9c1d4e5b-dnat"}}})
        ));
        assert!(!cmds.contains(
            &json!({"flush": {"chain": {"family": "inet", "table": "dovesnap",
            "name": "nw-3f2a9c1d4e5b-dnat"}}})
        ));
        assert!(cmds.contains(
            &json!({"flush": {"chain": {"family": "inet", "table": "dovesnap",
            "name": "nw-3f2a9c1d4e5b-fwd"}}})
        ));
    }

    #[test]
    fn internal_networks_get_no_way_out_and_no_nat() {
        let internal = NatNetwork {
            internal: true,
            masquerade_ports: None,
            ipv6: None,
            ..net()
        };
        let b = network_batch(&internal, &TableState::default()).unwrap();
        let rules = added_rules(&b);
        assert!(rules
            .iter()
            .all(|r| !r.0.ends_with("-snat") && !r.0.ends_with("-dnat")));
        let fwd = untranslated_forward(&b);
        assert_eq!(fwd.len(), 3);
        assert!(fwd[1..].iter().all(|r| r.2[1] == json!({"drop": null})));
        let text = to_json(&b).to_string();
        assert!(
            !text.contains("masquerade") && !text.contains("dnat\""),
            "{text}"
        );
    }

    #[test]
    fn port_rules_dnat_with_endpoint_comment() {
        let b = publish_on_net(&two_ports(), &TableState::default());
        let rules = added_rules(&b);
        assert_eq!(rules.len(), 2);
        assert!(rules
            .iter()
            .all(|r| r.0 == "nw-3f2a9c1d4e5b-dnat" && r.1.as_deref() == Some("ep:5b7e0e2a41c3")));
        assert_eq!(
            rules[0].2,
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
                {"dnat": {"addr": "10.231.1.2", "family": "ip", "port": 80}}
            ])
        );
        assert_eq!(
            rules[1].2,
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.0.2.10"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 5353}},
                {"dnat": {"addr": "10.231.1.2", "family": "ip", "port": 53}}
            ])
        );
    }

    #[test]
    fn listing_round_trip_finds_networks_bridges_and_ports() {
        let n = net();
        let state = listing_after(&[
            network_batch(&n, &TableState::default()).unwrap(),
            publish_on_net(&two_ports(), &TableState::default()),
        ]);
        assert!(state.exists);
        assert_eq!(
            state.network_ids().into_iter().collect::<Vec<_>>(),
            vec!["3f2a9c1d4e5b".to_string()]
        );
        assert_eq!(
            state.bridge_of("3f2a9c1d4e5b").as_deref(),
            Some("ovsbr-3f2a9c1d")
        );
        assert!(state.bridges.contains("ovsbr-3f2a9c1d"));
        let found = state.published();
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|f| f.network == "3f2a9c1d4e5b"
            && f.endpoint == "5b7e0e2a41c3"
            && f.container_ip == IpAddr::V4(Ipv4Addr::new(10, 231, 1, 2))));
        assert_eq!(
            found.iter().map(|f| f.port).collect::<Vec<_>>(),
            two_ports()
        );

        // Re-applying the network replaces its 4 jump rules and keeps the ports.
        let again = network_batch(&n, &state).unwrap();
        let cmds = to_json(&again)["nftables"].as_array().unwrap().clone();
        let deletes: Vec<_> = cmds.iter().filter_map(|c| c.get("delete")).collect();
        assert_eq!(deletes.len(), 4, "{deletes:?}");
        assert!(deletes.iter().all(|d| d["rule"]["handle"].is_u64()));
        assert!(!to_json(&again).to_string().contains("ep:5b7e0e2a41c3"));

        // Re-publishing the endpoint deletes its two rules first.
        let ports_again = publish_on_net(&two_ports()[..1], &state);
        let v = to_json(&ports_again);
        let cmds = v["nftables"].as_array().unwrap();
        assert_eq!(cmds.iter().filter(|c| c.get("delete").is_some()).count(), 2);
        assert_eq!(added_rules(&ports_again).len(), 1);
    }

    #[test]
    fn removal_touches_only_its_network() {
        let a = net();
        let b = NatNetwork {
            id: "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b".into(),
            bridge: "ovsbr-9a8b7c6d".into(),
            subnet: "10.231.2.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 231, 2, 1),
            internal: false,
            routed: false,
            masquerade_ports: None,
            ipv6: None,
        };
        let state = listing_after(&[
            network_batch(&a, &TableState::default()).unwrap(),
            network_batch(&b, &TableState::default()).unwrap(),
            publish_on_net(&two_ports(), &TableState::default()),
        ]);
        assert_eq!(state.network_ids().len(), 2);
        let rm = remove_network_batch("3f2a9c1d4e5b", &state).unwrap();
        let v = to_json(&rm);
        let text = v.to_string();
        assert!(!text.contains("9a8b7c6d5e4f"), "{text}");
        assert!(!text.contains("ovsbr-9a8b7c6d"), "{text}");
        let cmds = v["nftables"].as_array().unwrap();
        for c in [
            "nw-3f2a9c1d4e5b-dnat",
            "nw-3f2a9c1d4e5b-snat",
            "nw-3f2a9c1d4e5b-fwd",
        ] {
            assert!(cmds.contains(
                &json!({"delete": {"chain": {"family": "inet", "table": "dovesnap", "name": c}}})
            ));
        }
        assert!(cmds.contains(
            &json!({"delete": {"element": {"family": "inet", "table": "dovesnap",
            "name": "nat-bridges", "elem": ["ovsbr-3f2a9c1d"]}}})
        ));
        // Deleting the chains deletes their rules: only the 4 jump rules go one by one.
        assert_eq!(
            cmds.iter()
                .filter(|c| c["delete"].get("rule").is_some())
                .count(),
            4
        );

        // The last network takes the table with it; an unknown one is a no-op.
        let only_b = listing_after(&[network_batch(&b, &TableState::default()).unwrap()]);
        assert_eq!(
            to_json(&remove_network_batch("9a8b7c6d5e4f", &only_b).unwrap()),
            json!({"nftables": [{"delete": {"table": {"family": "inet", "name": "dovesnap"}}}]})
        );
        assert!(remove_network_batch("3f2a9c1d4e5b", &only_b).is_none());
    }

    #[test]
    fn stale_bridges_are_dropped_from_the_set() {
        let mut state = listing_after(&[network_batch(&net(), &TableState::default()).unwrap()]);
        state.bridges.insert("ovsbr-deadbeef".into());
        let b = network_batch(&net(), &state).unwrap();
        let cmds = to_json(&b)["nftables"].as_array().unwrap().clone();
        assert!(cmds.contains(
            &json!({"delete": {"element": {"family": "inet", "table": "dovesnap",
            "name": "nat-bridges", "elem": ["ovsbr-deadbeef"]}}})
        ));
    }

    #[test]
    fn stale_endpoints_are_found() {
        let state = listing_after(&[
            network_batch(&net(), &TableState::default()).unwrap(),
            publish_on_net(&two_ports(), &TableState::default()),
        ]);
        let keep: BTreeSet<String> = ["5b7e0e2a41c3".to_string()].into();
        assert!(stale_endpoints_batch("3f2a9c1d4e5b", &keep, &state).is_none());
        let b = stale_endpoints_batch("3f2a9c1d4e5b", &BTreeSet::new(), &state).unwrap();
        assert_eq!(b.objects.len(), 2);
    }

    fn net6() -> NatNetwork {
        NatNetwork {
            ipv6: Some(crate::firewall::Nat6 {
                subnet: "fd31:231:1::/64".parse().unwrap(),
                gateway: "fd31:231:1::1".parse().unwrap(),
            }),
            ..net()
        }
    }

    fn ips6() -> ContainerIps {
        ContainerIps {
            v4: Ipv4Addr::new(10, 231, 1, 2),
            v6: Some("fd31:231:1::2".parse().unwrap()),
        }
    }

    #[test]
    fn ipv6_networks_masquerade_their_v6_subnet_too() {
        let b = network_batch(&net6(), &TableState::default()).unwrap();
        let rules = added_rules(&b);
        let post: Vec<_> = rules.iter().filter(|r| r.0 == "postrouting").collect();
        assert_eq!(post.len(), 2);
        assert_eq!(
            post[1].2,
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                           "right": {"prefix": {"addr": "fd31:231:1::", "len": 64}}}},
                {"jump": {"target": "nw-3f2a9c1d4e5b-snat"}}
            ])
        );
        assert_eq!(post[1].1.as_deref(), Some("dovesnap:3f2a9c1d4e5b"));
        let snat: Vec<_> = rules
            .iter()
            .filter(|r| r.0 == "nw-3f2a9c1d4e5b-snat")
            .collect();
        // Hairpin for each family, then the outbound masquerade (family-neutral).
        assert_eq!(snat.len(), 3);
        assert_eq!(
            snat[1].2[0]["match"]["left"]["payload"]["protocol"],
            json!("ip6")
        );
        assert_eq!(snat[2].2[1], json!({"masquerade": null}));
        // Its jump rules are found and replaced like IPv4's.
        let state = listing_after(&[b]);
        let again = network_batch(&net6(), &state).unwrap();
        let deletes = to_json(&again)["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c.get("delete").is_some())
            .count();
        assert_eq!(deletes, 5);
        let mut bad = net6();
        bad.ipv6.as_mut().unwrap().gateway = "fd31:9::1".parse().unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("outside"));
    }

    #[test]
    fn ipv6_ports_dnat_to_the_containers_v6_address() {
        let ports = vec![
            two_ports()[0],
            PublishedPort {
                proto: Proto::Tcp,
                host_ip: Some("fd31:ff::1".parse().unwrap()),
                host_port: 8443,
                container_port: 443,
            },
        ];
        let state = listing_after(&[network_batch(&net6(), &TableState::default()).unwrap()]);
        let b = ports_batch("3f2a9c1d4e5b", "5b7e0e2a41c3", ips6(), &ports, &state);
        let rules = added_rules(&b);
        // Every address: one DNAT per family; an IPv6 host address: IPv6's only.
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[0].2[1],
            json!({"dnat": {"addr": "10.231.1.2", "family": "ip", "port": 80}})
        );
        assert_eq!(
            rules[1].2[1],
            json!({"dnat": {"addr": "fd31:231:1::2", "family": "ip6", "port": 80}})
        );
        assert_eq!(
            rules[2].2,
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "fd31:ff::1"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8443}},
                {"dnat": {"addr": "fd31:231:1::2", "family": "ip6", "port": 443}}
            ])
        );
        // Read back: the port on every address is found once per family.
        let after = listing_after(&[network_batch(&net6(), &TableState::default()).unwrap(), b]);
        let found = after.published();
        assert_eq!(found.len(), 3);
        assert_eq!(
            found[1].container_ip,
            "fd31:231:1::2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(found[2].port, ports[1]);
        assert_eq!(ports[1].to_string(), "[fd31:ff::1]:8443->443/tcp");

        // Routed: each of the container's addresses is opened.
        let routed = NatNetwork {
            routed: true,
            ..net6()
        };
        let state = listing_after(&[network_batch(&routed, &TableState::default()).unwrap()]);
        let b = ports_batch("3f2a9c1d4e5b", "5b7e0e2a41c3", ips6(), &ports[..1], &state);
        let rules = added_rules(&b);
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[1].2[0],
            json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "fd31:231:1::2"}})
        );
        assert_eq!(rules[1].2[2], json!({"accept": null}));
    }

    #[test]
    fn routed_networks_translate_nothing_and_open_only_published_ports() {
        let routed = NatNetwork {
            routed: true,
            ..net()
        };
        let b = network_batch(&routed, &TableState::default()).unwrap();
        let text = to_json(&b).to_string();
        assert!(
            !text.contains("masquerade") && !text.contains("{\"dnat\""),
            "{text}"
        );
        let fwd: Vec<_> = untranslated_forward(&b)
            .into_iter()
            .map(|r| r.1.unwrap_or_default())
            .collect();
        assert_eq!(
            fwd,
            [
                "",
                "isolation from other nat networks",
                "",
                "routed: ICMP reaches the containers",
                "routed: ICMPv6 reaches the containers",
                "routed: the published container ports",
                "nothing else enters the network",
            ]
        );

        // `-p 8080:80 -p 53-54/udp -p 9090:80`: the container's own ports, the host
        // ports ignored, each port opened once.
        let mapping = |proto, host: Option<u16>, (lo, hi)| PortMapping {
            proto,
            host_ip: None,
            host_ports: host.and_then(PortRange::single),
            container_ports: PortRange::new(lo, hi).unwrap(),
        };
        let mappings = [
            mapping(Proto::Tcp, Some(8080), (80, 80)),
            mapping(Proto::Udp, None, (53, 54)),
            mapping(Proto::Tcp, Some(9090), (80, 80)),
        ];
        let direct = routed_ports(&mappings);
        assert_eq!(
            direct
                .iter()
                .map(|p| (p.host_ip, p.host_port, p.container_port))
                .collect::<Vec<_>>(),
            [(None, 80, 80), (None, 53, 53), (None, 54, 54)]
        );
        let state = listing_after(&[b]);
        assert!(state.is_routed("3f2a9c1d4e5b"));
        let ports = publish_on_net(&direct, &state);
        assert_eq!(
            added_rules(&ports)[0].2,
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.231.1.2"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
                {"accept": null}
            ])
        );
        // Read back: the container's ports, no host port claimed.
        let found = listing_after(&[
            network_batch(&routed, &TableState::default()).unwrap(),
            ports,
        ])
        .published();
        assert_eq!(found.len(), 3);
        assert!(found
            .iter()
            .all(|f| f.routed && f.container_ip == Ipv4Addr::new(10, 231, 1, 2)));
        assert_eq!(found[0].port, direct[0]);

        let nat = listing_after(&[network_batch(&net(), &TableState::default()).unwrap()]);
        assert!(!nat.is_routed("3f2a9c1d4e5b"));
    }

    #[test]
    fn chain_names_map_back_to_networks() {
        assert_eq!(chain_network("nw-3f2a9c1d4e5b-fwd"), Some("3f2a9c1d4e5b"));
        assert_eq!(chain_network("nw-3f2a9c1d4e5b-dnat"), Some("3f2a9c1d4e5b"));
        assert_eq!(chain_network("published"), None);
        assert_eq!(chain_network("nw-x-other"), None);
    }
}
