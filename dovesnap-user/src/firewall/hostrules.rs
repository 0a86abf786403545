//! The administrator's forward rules as nat-fast sees them: which drop or reject rules
//! of the host could apply to a nat-fast network's routed traffic, and which far
//! addresses, protocols and ports the fast path must therefore leave to the kernel
//! (whose nft rules NAT them and whose filter then applies the rule).
//!
//! Read from `iptables -S DOCKER-USER` and from the forward-hook base chains of the
//! host's own `ip` and `inet` nftables tables (`nft -j list ruleset`; iptables-nft's
//! `ip filter` is what `iptables -S` shows, `inet dovesnap` is dovesnap's). A rule counts
//! when its verdict may drop: `DROP`, `REJECT`, a jump or goto into another chain (whose
//! rules are not followed: the jump's own matches bound them), or anything else that is
//! not known to let the packet go on (`ACCEPT`, `RETURN`, `LOG`, ...). A base chain
//! with a `drop` policy counts as a rule that matches everything.
//!
//! Compiling is conservative: a match that is not understood is left out, which only
//! widens the rule. What bounds a rule is its far address: `-d`/`ip daddr` (the far end
//! of a container's outbound traffic) with its protocol and destination port, and
//! `-s`/`ip saddr` (the far end of inbound traffic) with its protocol only. A rule with
//! neither, or with a prefix that overlaps a nat-fast subnet (it is about the
//! containers, not the far side), cannot be bounded: it keeps all of nat-fast's routed
//! traffic on the kernel's path ([`Honoured::Kernel`]).
//!
//! [`compile`] turns the bounded rules into the entries of the XDP program's `HOSTFW`
//! LPM trie: one per prefix, each covering every rule whose prefix contains it (a
//! longest-prefix lookup finds only the longest), merged to a superset.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use serde_json::Value;

use crate::host::addr::Ipv4Net;
use dovesnap_ebpf::{HostFwMatch, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// Far traffic a rule may drop: a far prefix, a protocol (0: all) and far ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FarMatch {
    pub prefix: Ipv4Net,
    pub proto: u8,
    pub ports: (u16, u16),
}

impl FarMatch {
    const ALL_PORTS: (u16, u16) = (0, u16::MAX);

    fn entry(&self) -> HostFwMatch {
        HostFwMatch {
            proto: self.proto,
            _pad: 0,
            port_lo: self.ports.0,
            port_hi: self.ports.1,
            _pad2: 0,
        }
    }

    /// The smallest match covering both (same prefix assumed by the caller).
    fn merge(self, other: FarMatch) -> FarMatch {
        if self.proto != other.proto || self.proto == 0 || other.proto == 0 {
            return FarMatch {
                proto: 0,
                ports: Self::ALL_PORTS,
                ..self
            };
        }
        FarMatch {
            ports: (
                self.ports.0.min(other.ports.0),
                self.ports.1.max(other.ports.1),
            ),
            ..self
        }
    }
}

impl fmt::Display for FarMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.prefix)?;
        match self.proto {
            0 => write!(f, " all protocols"),
            p => {
                write!(f, " {}", proto_name(p))?;
                match self.ports {
                    Self::ALL_PORTS => Ok(()),
                    (lo, hi) if lo == hi => write!(f, " port {lo}"),
                    (lo, hi) => write!(f, " ports {lo}-{hi}"),
                }
            }
        }
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "?",
    }
}

/// How nat-fast honours a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Honoured {
    /// Exactly: the frames it may match (and only a superset of those) take the
    /// kernel's path.
    Exact(Vec<FarMatch>),
    /// The whole of nat-fast's routed traffic takes the kernel's path, for this reason.
    Kernel(String),
    /// It cannot match nat-fast's traffic (a protocol the translator never carries).
    NotApplicable(String),
}

/// One of the host's forward rules that may drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    /// Where it is: `iptables DOCKER-USER`, `nft inet filter forward`.
    pub place: String,
    /// The rule as the tool prints it (nft: a summary with its handle).
    pub text: String,
    pub honoured: Honoured,
}

impl HostRule {
    /// How it is honoured, in words (status, doctor).
    pub fn how(&self) -> String {
        match &self.honoured {
            Honoured::Exact(m) => format!(
                "exact: {} on the kernel's path",
                m.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Honoured::Kernel(why) => {
                format!("all nat-fast traffic on the kernel's path ({why})")
            }
            Honoured::NotApplicable(why) => format!("not applicable ({why})"),
        }
    }
}

/// What the matches of a rule say, before it is judged.
#[derive(Default)]
struct Matches {
    src: Option<Ipv4Net>,
    dst: Option<Ipv4Net>,
    /// `None`: any protocol; `Some(0)`: one the translator never carries.
    proto: Option<u8>,
    dports: Option<(u16, u16)>,
}

impl Matches {
    fn judge(self, subnets: &[Ipv4Net]) -> Honoured {
        let proto = match self.proto {
            Some(0) => {
                return Honoured::NotApplicable(
                    "a protocol other than TCP, UDP and ICMP, which nat-fast leaves to the \
                     kernel"
                        .into(),
                )
            }
            Some(p) => p,
            None => 0,
        };
        let far = [self.dst, self.src];
        if let Some(p) = far
            .iter()
            .flatten()
            .find(|p| subnets.iter().any(|s| overlap(p, s)))
        {
            return Honoured::Kernel(format!("{p} overlaps a nat-fast subnet"));
        }
        if far.iter().all(Option::is_none) {
            return Honoured::Kernel("no destination or source address bounds it".into());
        }
        let ports = match (proto, self.dports) {
            (PROTO_TCP | PROTO_UDP, Some(r)) => r,
            _ => FarMatch::ALL_PORTS,
        };
        let mut out = Vec::new();
        if let Some(prefix) = self.dst {
            out.push(FarMatch {
                prefix,
                proto,
                ports,
            });
        }
        if let Some(prefix) = self.src {
            // Inbound from there: the rule's port is not the far side's.
            out.push(FarMatch {
                prefix,
                proto,
                ports: FarMatch::ALL_PORTS,
            });
        }
        Honoured::Exact(out)
    }
}

fn overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(b.addr()) || b.contains(a.addr())
}

fn proto_number(name: &str) -> Option<u8> {
    match name {
        "tcp" | "6" => Some(PROTO_TCP),
        "udp" | "17" => Some(PROTO_UDP),
        "icmp" | "1" => Some(PROTO_ICMP),
        "all" | "0" => None,
        _ => Some(0),
    }
}

/// `a.b.c.d` or `a.b.c.d/n`.
fn prefix(s: &str) -> Option<Ipv4Net> {
    match s.split_once('/') {
        Some(_) => s.parse().ok(),
        None => Ipv4Net::new(s.parse::<Ipv4Addr>().ok()?, 32),
    }
}

/// `N` or `N:M` (iptables) / `N-M`.
fn port_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once([':', '-']) {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => s.parse().ok().map(|p| (p, p)),
    }
}

/// Targets that never drop: the packet goes on (or is accepted).
const HARMLESS_TARGETS: [&str; 10] = [
    "ACCEPT", "RETURN", "LOG", "NFLOG", "TRACE", "ULOG", "CLASSIFY", "TCPMSS", "NOTRACK", "CT",
];

/// The rules of `iptables -S DOCKER-USER` that may drop, judged against the nat-fast
/// `subnets`. dovesnap's own (tagged) rules are skipped.
pub fn parse_iptables(listing: &str, subnets: &[Ipv4Net]) -> Vec<HostRule> {
    let mut out = Vec::new();
    for line in listing.lines() {
        let tokens = super::iptables::tokenize(line);
        let [flag, chain, args @ ..] = tokens.as_slice() else {
            continue;
        };
        if flag != "-A" || line.contains(super::TAG_PREFIX) {
            continue;
        }
        let mut m = Matches::default();
        let mut target = None;
        let mut negated = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "!" {
                negated = true;
                continue;
            }
            let value = match a.as_str() {
                "-s" | "--source" | "-d" | "--destination" | "-p" | "--protocol" | "--dport"
                | "--destination-port" | "-j" | "--jump" | "-g" | "--goto" => it.next(),
                _ => None,
            };
            match (a.as_str(), value) {
                ("-j" | "--jump" | "-g" | "--goto", Some(v)) => target = Some(v.clone()),
                // A negated match is left out: the rule only gets wider.
                _ if negated => {}
                ("-s" | "--source", Some(v)) => m.src = prefix(v),
                ("-d" | "--destination", Some(v)) => m.dst = prefix(v),
                ("-p" | "--protocol", Some(v)) => m.proto = proto_number(v),
                ("--dport" | "--destination-port", Some(v)) => m.dports = port_range(v),
                _ => {}
            }
            negated = false;
        }
        let Some(target) = target else { continue };
        if HARMLESS_TARGETS.contains(&target.as_str()) {
            continue;
        }
        out.push(HostRule {
            place: format!("iptables {chain}"),
            text: line.to_string(),
            honoured: m.judge(subnets),
        });
    }
    out
}

/// Tables never read here: iptables-nft's filter table (read through `iptables -S`)
/// and dovesnap's own (`inet dovesnap`, and `ip dovesnap` of older versions).
fn skipped_table(family: &str, table: &str) -> bool {
    (family == "ip" && table == "filter")
        || (table == super::nft::TABLE
            && (family == super::nft::FAMILY || family == super::nft::LEGACY_FAMILY))
}

/// The rules that may drop in the forward-hook base chains of the `ip` and `inet`
/// tables of `nft -j list ruleset`, judged against the nat-fast `subnets`.
pub fn parse_nft(json: &Value, subnets: &[Ipv4Net]) -> Vec<HostRule> {
    let objects = json["nftables"].as_array().cloned().unwrap_or_default();
    let mut forward = BTreeSet::new();
    let mut out = Vec::new();
    for o in &objects {
        let c = &o["chain"];
        let (Some(family), Some(table), Some(name)) = (
            c["family"].as_str(),
            c["table"].as_str(),
            c["name"].as_str(),
        ) else {
            continue;
        };
        if c["hook"] != "forward"
            || !matches!(family, "ip" | "inet")
            || skipped_table(family, table)
        {
            continue;
        }
        forward.insert((family.to_string(), table.to_string(), name.to_string()));
        if c["policy"] == "drop" {
            out.push(HostRule {
                place: format!("nft {family} {table} {name}"),
                text: "policy drop".into(),
                honoured: Honoured::Kernel("a forward chain's drop policy matches all".into()),
            });
        }
    }
    for o in &objects {
        let r = &o["rule"];
        let key = (
            r["family"].as_str().unwrap_or_default().to_string(),
            r["table"].as_str().unwrap_or_default().to_string(),
            r["chain"].as_str().unwrap_or_default().to_string(),
        );
        if !forward.contains(&key) {
            continue;
        }
        let exprs = r["expr"].as_array().cloned().unwrap_or_default();
        let mut m = Matches::default();
        let mut verdict = None;
        for e in &exprs {
            if let Some(v) = ["drop", "reject", "jump", "goto", "queue"]
                .into_iter()
                .find(|v| e.get(*v).is_some())
            {
                verdict = Some(v);
            }
            nft_match(e.get("match"), &mut m);
        }
        let Some(verdict) = verdict else { continue };
        let (family, table, chain) = key;
        out.push(HostRule {
            place: format!("nft {family} {table} {chain}"),
            text: format!(
                "handle {} ({verdict})",
                r["handle"].as_u64().unwrap_or_default()
            ),
            honoured: m.judge(subnets),
        });
    }
    out
}

/// Reads one `match` expression into `m` (`==` only; anything else is left out).
fn nft_match(e: Option<&Value>, m: &mut Matches) {
    let Some(e) = e else { return };
    if e["op"] != "==" {
        return;
    }
    let (left, right) = (&e["left"], &e["right"]);
    let payload = &left["payload"];
    let net = || match right {
        Value::String(s) => prefix(s),
        v => {
            let p = &v["prefix"];
            Ipv4Net::new(p["addr"].as_str()?.parse().ok()?, p["len"].as_u64()? as u8)
        }
    };
    match (payload["protocol"].as_str(), payload["field"].as_str()) {
        (Some("ip"), Some("daddr")) => m.dst = net(),
        (Some("ip"), Some("saddr")) => m.src = net(),
        (Some("ip"), Some("protocol")) => m.proto = right.as_str().and_then(proto_number),
        (Some(p @ ("tcp" | "udp")), Some("dport")) => {
            m.proto = proto_number(p);
            m.dports = match right {
                Value::Number(n) => n
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .map(|p| (p, p)),
                v => v["range"].as_array().and_then(|r| {
                    Some((
                        u16::try_from(r.first()?.as_u64()?).ok()?,
                        u16::try_from(r.get(1)?.as_u64()?).ok()?,
                    ))
                }),
            };
        }
        _ if left["meta"]["key"] == "l4proto" => {
            m.proto = right.as_str().and_then(proto_number);
        }
        _ => {}
    }
}

/// Reads the host's rules that may drop (see the module documentation), judged against
/// the nat-fast `subnets`.
pub fn read(subnets: &[Ipv4Net]) -> Result<Vec<HostRule>, super::FirewallError> {
    let mut rules = match super::iptables::Iptables::new().list_user()? {
        Some(listing) => parse_iptables(&listing, subnets),
        None => Vec::new(),
    };
    let action = "list the host's ruleset for nat-fast";
    let text = super::nft::run_nft(&["-j", "list", "ruleset"], None, action)?;
    let json: Value = serde_json::from_str(&text).map_err(|e| super::FirewallError::NftOutput {
        action: action.into(),
        detail: e.to_string(),
    })?;
    rules.extend(parse_nft(&json, subnets));
    Ok(rules)
}

/// [`read`], or when the rules cannot be read, one rule that keeps all of nat-fast's
/// routed traffic on the kernel's path and says why (never a silent bypass).
pub fn read_or_all(subnets: &[Ipv4Net]) -> Vec<HostRule> {
    read(subnets).unwrap_or_else(|e| {
        vec![HostRule {
            place: "host".into(),
            text: "(the forward rules could not be read)".into(),
            honoured: Honoured::Kernel(e.to_string()),
        }]
    })
}

/// The `HOSTFW` entries for `rules`: one per prefix of the exact rules, merged with
/// every rule whose prefix contains it; a single `0.0.0.0/0` covering all when one
/// rule keeps the whole network on the kernel's path.
pub fn compile(rules: &[HostRule]) -> Vec<([u8; 4], u8, HostFwMatch)> {
    let all = FarMatch {
        prefix: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid prefix"),
        proto: 0,
        ports: FarMatch::ALL_PORTS,
    };
    if rules
        .iter()
        .any(|r| matches!(r.honoured, Honoured::Kernel(_)))
    {
        return vec![([0; 4], 0, all.entry())];
    }
    let matches: Vec<FarMatch> = rules
        .iter()
        .filter_map(|r| match &r.honoured {
            Honoured::Exact(m) => Some(m.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    let prefixes: BTreeSet<Ipv4Net> = matches.iter().map(|m| m.prefix).collect();
    prefixes
        .into_iter()
        .filter_map(|p| {
            let merged = matches
                .iter()
                .filter(|m| m.prefix.prefix() <= p.prefix() && m.prefix.contains(p.addr()))
                .copied()
                .reduce(FarMatch::merge)?;
            Some((p.addr().octets(), p.prefix(), merged.entry()))
        })
        .collect()
}

/// What the XDP program decides for compiled `entries`: whether a frame of `proto` to
/// or from far `addr` with far `port` (`None` for ICMP) stays on the kernel's path
/// (the longest prefix containing `addr` decides, as in the LPM trie).
pub fn covered(
    entries: &[([u8; 4], u8, HostFwMatch)],
    addr: Ipv4Addr,
    proto: u8,
    port: Option<u16>,
) -> bool {
    entries
        .iter()
        .filter(|(a, len, _)| {
            Ipv4Net::new(Ipv4Addr::from(*a), *len).is_some_and(|n| n.contains(addr))
        })
        .max_by_key(|(_, len, _)| *len)
        .is_some_and(|(_, _, m)| m.covers(proto, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subnets() -> Vec<Ipv4Net> {
        vec!["10.234.2.0/24".parse().unwrap()]
    }

    fn exact(r: &HostRule) -> Vec<FarMatch> {
        match &r.honoured {
            Honoured::Exact(m) => m.clone(),
            other => panic!("{}: {other:?}", r.text),
        }
    }

    const USER: &str = r#"-N DOCKER-USER
-A DOCKER-USER -d 10.234.10.2/32 -p tcp -m tcp --dport 7001 -m comment --comment hfwtest -j DROP
-A DOCKER-USER -d 169.254.169.254/32 -j REJECT --reject-with icmp-port-unreachable
-A DOCKER-USER -s 192.0.2.0/24 -p udp -m udp --dport 53 -j DROP
-A DOCKER-USER -d 198.51.100.0/24 -p tcp -m multiport --dports 80,443 -j DROP
-A DOCKER-USER -i docker0 -j ACCEPT
-A DOCKER-USER -m set --match-set banned dst -j DROP
-A DOCKER-USER -p gre -j DROP
-A DOCKER-USER -d 10.234.2.7/32 -j DROP
-A DOCKER-USER ! -d 10.0.0.0/8 -p tcp --dport 25 -j MYCHAIN
-A DOCKER-USER -j RETURN
"#;

    #[test]
    fn iptables_rules_are_bounded_by_their_far_address() {
        let rules = parse_iptables(USER, &subnets());
        assert_eq!(rules.len(), 8, "{rules:#?}");
        assert!(rules.iter().all(|r| r.place == "iptables DOCKER-USER"));
        let tcp7001 = exact(&rules[0]);
        assert_eq!(tcp7001.len(), 1);
        assert_eq!(tcp7001[0].to_string(), "10.234.10.2/32 tcp port 7001");
        assert_eq!(
            exact(&rules[1])[0].to_string(),
            "169.254.169.254/32 all protocols"
        );
        // A source address is the far side of inbound traffic: not its port.
        assert_eq!(exact(&rules[2])[0].to_string(), "192.0.2.0/24 udp");
        // multiport is not read: every port of the protocol.
        assert_eq!(exact(&rules[3])[0].to_string(), "198.51.100.0/24 tcp");
        // An ipset: nothing bounds it.
        assert!(
            matches!(rules[4].honoured, Honoured::Kernel(_)),
            "{rules:#?}"
        );
        assert!(matches!(rules[5].honoured, Honoured::NotApplicable(_)));
        // About the containers themselves.
        assert!(matches!(&rules[6].honoured, Honoured::Kernel(w) if w.contains("overlaps")));
        // A negated address and a jump: unbounded, conservatively.
        assert!(matches!(rules[7].honoured, Honoured::Kernel(_)));
        assert!(rules[0]
            .how()
            .starts_with("exact: 10.234.10.2/32 tcp port 7001"));
        assert!(rules[4].how().contains("all nat-fast traffic"));
    }

    #[test]
    fn port_ranges_and_prefixes_parse() {
        assert_eq!(port_range("7001"), Some((7001, 7001)));
        assert_eq!(port_range("7001:7010"), Some((7001, 7010)));
        assert_eq!(port_range("x"), None);
        assert_eq!(
            prefix("10.1.2.3"),
            Ipv4Net::new(Ipv4Addr::new(10, 1, 2, 3), 32)
        );
        assert_eq!(prefix("10.1.2.3/16").unwrap().to_string(), "10.1.0.0/16");
    }

    #[test]
    fn nft_forward_chains_are_read_and_others_skipped() {
        // As nft 1.0.6 prints `nft -j list ruleset`.
        let rs = json!({"nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"table": {"family": "inet", "name": "adm", "handle": 1}},
            {"chain": {"family": "inet", "table": "adm", "name": "fwd", "handle": 1,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "adm", "name": "in", "handle": 2,
                       "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 3,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"rule": {"family": "inet", "table": "adm", "chain": "fwd", "handle": 4, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                           "right": {"prefix": {"addr": "203.0.113.0", "len": 24}}}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                           "right": {"range": [8000, 8080]}}},
                {"drop": null}]}},
            {"rule": {"family": "inet", "table": "adm", "chain": "fwd", "handle": 5, "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}},
                {"accept": null}]}},
            {"rule": {"family": "inet", "table": "adm", "chain": "fwd", "handle": 6, "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
                {"reject": {"type": "icmp", "expr": "port-unreachable"}}]}},
            {"rule": {"family": "inet", "table": "adm", "chain": "in", "handle": 7, "expr": [
                {"drop": null}]}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 8, "expr": [
                {"drop": null}]}},
            // dovesnap's own forward chain (its drops are isolation, not the host's).
            {"chain": {"family": "inet", "table": "dovesnap", "name": "forward", "handle": 9,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "dovesnap", "chain": "forward", "handle": 10,
                      "expr": [{"drop": null}]}}
        ]});
        let rules = parse_nft(&rs, &subnets());
        assert_eq!(rules.len(), 2, "{rules:#?}");
        assert_eq!(rules[0].place, "nft inet adm fwd");
        assert_eq!(rules[0].text, "handle 4 (drop)");
        assert_eq!(
            exact(&rules[0])[0].to_string(),
            "203.0.113.0/24 tcp ports 8000-8080"
        );
        assert!(matches!(rules[1].honoured, Honoured::Kernel(_)));
    }

    #[test]
    fn compiled_prefixes_cover_their_enclosing_rules() {
        let rules = parse_iptables(
            "-A DOCKER-USER -d 172.16.0.0/12 -p tcp --dport 22 -j DROP\n\
             -A DOCKER-USER -d 172.17.2.3/32 -p tcp --dport 7001 -j DROP\n\
             -A DOCKER-USER -d 192.0.2.1/32 -p udp --dport 53 -j DROP\n",
            &subnets(),
        );
        let entries = compile(&rules);
        assert_eq!(entries.len(), 3);
        let find = |a: [u8; 4]| entries.iter().find(|e| e.0 == a).unwrap();
        let host = find([172, 17, 2, 3]);
        assert_eq!(host.1, 32);
        // The /32 also carries the /12's port 22: merged to 22-7001.
        assert_eq!(
            (host.2.proto, host.2.port_lo, host.2.port_hi),
            (PROTO_TCP, 22, 7001)
        );
        let twelve = find([172, 16, 0, 0]);
        assert_eq!((twelve.1, twelve.2.port_lo, twelve.2.port_hi), (12, 22, 22));
        assert_eq!(find([192, 0, 2, 1]).2.proto, PROTO_UDP);
        // One unbounded rule: everything.
        let mut all = rules.clone();
        all.extend(parse_iptables(
            "-A DOCKER-USER -p tcp -j DROP\n",
            &subnets(),
        ));
        let entries = compile(&all);
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].1, entries[0].2.proto), (0, 0));
        assert!(compile(&[]).is_empty());
        let three = compile(&rules);
        let at = |a: [u8; 4]| Ipv4Addr::from(a);
        assert!(covered(&three, at([172, 17, 2, 3]), PROTO_TCP, Some(7001)));
        assert!(covered(&three, at([172, 20, 9, 9]), PROTO_TCP, Some(22)));
        assert!(!covered(&three, at([172, 20, 9, 9]), PROTO_TCP, Some(7001)));
        assert!(!covered(&three, at([172, 17, 2, 3]), PROTO_ICMP, None));
        assert!(!covered(&three, at([192, 168, 0, 1]), PROTO_TCP, Some(22)));
        assert!(covered(&entries, at([192, 168, 0, 1]), PROTO_ICMP, None));
        // Different protocols on one prefix: all of them.
        let mixed = parse_iptables(
            "-A DOCKER-USER -d 192.0.2.1/32 -p udp -j DROP\n-A DOCKER-USER -d 192.0.2.1/32 -p tcp --dport 1 -j DROP\n",
            &subnets(),
        );
        assert_eq!(compile(&mixed)[0].2.proto, 0);
    }
}
