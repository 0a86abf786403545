//! Rules in Docker's iptables chains, so that a `FORWARD` policy of `DROP` (which
//! Docker sets) does not drop a nat network's traffic, while the administrator's own
//! rules and Docker's isolation between bridge networks still apply to it.
//!
//! A packet has to be accepted by every base chain on its hook, so dovesnap's own
//! nftables table cannot override a drop in `ip filter FORWARD`. For each non-internal
//! nat network, three accepts go into `FORWARD` right below Docker's jumps to
//! `DOCKER-USER` and `DOCKER-ISOLATION-STAGE-1` (where Docker puts the accepts of its
//! own bridges; at the top of `FORWARD` on a host without those chains):
//!
//! ```text
//! -A FORWARD -j DOCKER-USER
//! -A FORWARD -j DOCKER-ISOLATION-STAGE-1
//! -A FORWARD -o BR -m conntrack --ctstate DNAT -m comment --comment "dovesnap:ID12" -j ACCEPT
//! -A FORWARD -o BR -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "dovesnap:ID12" -j ACCEPT
//! -A FORWARD -i BR -m comment --comment "dovesnap:ID12" -j ACCEPT
//! ```
//!
//! (a routed network, entered without DNAT, gets `-o BR -j ACCEPT` in place of the first
//! rule: its nft forward chain does the filtering)
//! so the administrator's `DOCKER-USER` rules see the network's traffic first, whether
//! they were added before or after the network. Where Docker's isolation chains exist,
//! the bridge joins them as Docker's own bridges do:
//!
//! ```text
//! -A DOCKER-ISOLATION-STAGE-1 -i BR ! -o BR -m comment --comment "dovesnap:ID12" -j DOCKER-ISOLATION-STAGE-2
//! -A DOCKER-ISOLATION-STAGE-2 -o BR -m conntrack ! --ctstate DNAT -m comment --comment "dovesnap:ID12" -j DROP
//! ```
//!
//! Forwarding between the network and a Docker bridge network is dropped both ways, as
//! between two Docker bridge networks; only the network's published ports (DNATed
//! flows) stay reachable from other bridges, as they are from anywhere (dovesnap's
//! published ports are public; the nft rules already isolate nat networks from each
//! other otherwise).
//!
//! Only traffic leaving the network, replies to it, and published ports are accepted;
//! dovesnap's nftables `forward` chain still drops what it must (isolation, internal
//! networks). Docker moves its jumps back to the top of `FORWARD` when it makes a
//! network and flushes its isolation chains when dockerd restarts: [`Iptables::ensure`]
//! (run at creation, at start and on every reconciler pass) puts back what is missing
//! and moves accepts that ended up above a jump. Accepts in `DOCKER-USER` (where
//! versions before this one put them) are deleted. `iptables` runs as a plain command
//! (no shell) with arguments made of validated names; rules are found again by their
//! comment.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::process::Command;

use super::command::{output_within, RunError, COMMAND_TIMEOUT};
use super::{network_tag, FirewallError, NatNetwork, TAG_PREFIX};

/// Docker's chain for user rules, evaluated first from `FORWARD`. dovesnap puts
/// nothing there (earlier versions did: [`Iptables::ensure`] removes those).
pub(crate) const USER_CHAIN: &str = "DOCKER-USER";
/// The filter table's forward chain, which holds the accepts.
pub(crate) const FORWARD_CHAIN: &str = "FORWARD";
/// Docker's first isolation chain: traffic from each bridge to another interface.
pub(crate) const ISOLATION_1: &str = "DOCKER-ISOLATION-STAGE-1";
/// Docker's second isolation chain: dropped when it goes to another bridge.
pub(crate) const ISOLATION_2: &str = "DOCKER-ISOLATION-STAGE-2";

/// One rule a network should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub chain: &'static str,
    /// The specification after the chain name.
    pub spec: Vec<String>,
}

fn spec(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The rules a network should have, given whether Docker's isolation chains exist.
pub(crate) fn desired_rules(net: &NatNetwork, id12: &str, isolation: bool) -> Vec<Wanted> {
    if net.internal {
        return Vec::new();
    }
    let tag = network_tag(id12);
    let br = net.bridge.as_str();
    let comment = ["-m", "comment", "--comment", &tag];
    let rule = |chain, matches: &[&str], target: &str| Wanted {
        chain,
        spec: spec(&[matches, &comment[..], &["-j", target]].concat()),
    };
    // A routed network is entered at its containers' own addresses, without DNAT: every
    // packet to it goes on to dovesnap's nft forward chain, which lets in only replies,
    // ICMP and the published container ports.
    let inbound: &[&str] = if net.routed {
        &["-o", br]
    } else {
        &["-o", br, "-m", "conntrack", "--ctstate", "DNAT"]
    };
    let mut out = vec![
        rule(FORWARD_CHAIN, inbound, "ACCEPT"),
        rule(
            FORWARD_CHAIN,
            &[
                "-o",
                br,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
            ],
            "ACCEPT",
        ),
        rule(FORWARD_CHAIN, &["-i", br], "ACCEPT"),
    ];
    if isolation {
        out.push(rule(ISOLATION_1, &["-i", br, "!", "-o", br], ISOLATION_2));
        out.push(rule(
            ISOLATION_2,
            &["-o", br, "-m", "conntrack", "!", "--ctstate", "DNAT"],
            "DROP",
        ));
    }
    out
}

/// The rules of `iptables -S FORWARD` output (the `-A` lines, tokenized), numbered
/// from 1 as `iptables -I FORWARD N` counts.
fn numbered(listing: &str) -> impl Iterator<Item = (usize, Vec<String>)> + '_ {
    listing
        .lines()
        .map(tokenize)
        .filter(|t| t.first().is_some_and(|f| f == "-A"))
        .enumerate()
        .map(|(i, t)| (i + 1, t))
}

/// The number of the last rule of `FORWARD` that jumps to Docker's `DOCKER-USER` or
/// `DOCKER-ISOLATION-STAGE-1` (0 when there is none): the accepts go right below it.
pub(crate) fn forward_anchor(listing: &str) -> usize {
    numbered(listing)
        .filter(|(_, t)| {
            t.len() == 4 && t[2] == "-j" && (t[3] == USER_CHAIN || t[3] == ISOLATION_1)
        })
        .map(|(n, _)| n)
        .last()
        .unwrap_or(0)
}

/// `iptables -S` output of the chains that can hold our rules (`None`: no such chain).
#[derive(Clone, Debug, Default)]
pub(crate) struct Listings {
    pub forward: Option<String>,
    pub user: Option<String>,
    pub isolation_1: Option<String>,
    pub isolation_2: Option<String>,
}

impl Listings {
    fn all(&self) -> impl Iterator<Item = &str> {
        [
            &self.forward,
            &self.user,
            &self.isolation_1,
            &self.isolation_2,
        ]
        .into_iter()
        .filter_map(|l| l.as_deref())
    }

    fn isolation(&self) -> bool {
        self.isolation_1.is_some() && self.isolation_2.is_some()
    }

    /// Every rule of ours, in every chain.
    pub(crate) fn ours(&self) -> Vec<TaggedRule> {
        self.all().flat_map(tagged_rules).collect()
    }
}

/// What [`plan`] found to do for one network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Rules to delete: duplicates, outdated, in the wrong chain or (accepts) above
    /// Docker's jumps.
    pub delete: Vec<TaggedRule>,
    /// Missing accepts, to insert below Docker's jumps in `FORWARD`, in this order.
    pub forward: Vec<Vec<String>>,
    /// Missing isolation rules, to insert at the top of their chain.
    pub top: Vec<Wanted>,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.forward.is_empty() && self.top.is_empty()
    }
}

/// How to bring network `id12`'s rules from `listings` to [`desired_rules`] (pure).
pub(crate) fn plan(net: &NatNetwork, id12: &str, listings: &Listings) -> Plan {
    let mut missing = desired_rules(net, id12, listings.isolation());
    let anchor = listings.forward.as_deref().map_or(0, forward_anchor);
    let mut out = Plan::default();
    for rule in listings.ours().into_iter().filter(|r| r.id12 == id12) {
        let placed = rule.chain != FORWARD_CHAIN || rule.number > anchor;
        match missing
            .iter()
            .position(|w| w.chain == rule.chain && w.spec == rule.args)
        {
            Some(i) if placed => {
                missing.remove(i);
            }
            _ => out.delete.push(rule),
        }
    }
    for w in missing {
        if w.chain == FORWARD_CHAIN {
            out.forward.push(w.spec);
        } else {
            out.top.push(w);
        }
    }
    out
}

/// Refuses any argument that is not made of `[A-Za-z0-9_.:,@/-]` (or a lone `!`):
/// everything dovesnap passes is a fixed keyword, a validated interface name or a tag.
fn validate_args(args: &[String]) -> Result<(), FirewallError> {
    for a in args {
        let ok = a == "!"
            || !a.is_empty()
                && a.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'_' | b'.' | b':' | b',' | b'@' | b'/' | b'-')
                });
        if !ok {
            return Err(FirewallError::UnsafeArgument(a.clone()));
        }
    }
    Ok(())
}

/// A rule of ours found in `iptables -S CHAIN` output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TaggedRule {
    pub chain: String,
    /// The network id prefix from the `dovesnap:<id12>` comment.
    pub id12: String,
    /// The specification after `-A CHAIN`, as `-D CHAIN` takes it.
    pub args: Vec<String>,
    /// Its number in the chain, from 1.
    pub number: usize,
}

/// Splits an `iptables -S` line into arguments: words, with `"..."` quoting (and
/// backslash escapes inside quotes), as iptables prints comments.
pub(super) fn tokenize(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        q => cur.push(q),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The rules of `iptables -S` output that carry a `dovesnap:<id12>` comment.
pub(crate) fn tagged_rules(listing: &str) -> Vec<TaggedRule> {
    numbered(listing)
        .filter_map(|(number, tokens)| {
            let [_, chain, args @ ..] = tokens.as_slice() else {
                return None;
            };
            let id12 = args
                .windows(2)
                .find(|w| w[0] == "--comment")
                .and_then(|w| w[1].strip_prefix(TAG_PREFIX))?;
            Some(TaggedRule {
                chain: chain.clone(),
                id12: id12.to_string(),
                args: args.to_vec(),
                number,
            })
        })
        .collect()
}

/// Runs `iptables -w ...`.
#[derive(Debug)]
pub(crate) struct Iptables {
    program: &'static str,
}

/// The outcome of one `iptables` run.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Iptables {
    pub(crate) fn new() -> Self {
        Iptables {
            program: "iptables",
        }
    }

    /// `Ok(None)` when there is no `iptables` at all.
    fn run(&self, args: &[String]) -> Result<Option<Run>, FirewallError> {
        let mut cmd = Command::new(self.program);
        cmd.arg("-w").args(args);
        let out = match output_within(&mut cmd, None, COMMAND_TIMEOUT) {
            Ok(out) => out,
            Err(RunError::Spawn(e)) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(RunError::Spawn(source) | RunError::Io(source)) => {
                return Err(FirewallError::IptablesSpawn {
                    args: args.join(" "),
                    source,
                })
            }
            Err(RunError::TimedOut(after)) => {
                return Err(FirewallError::Timeout {
                    command: format!("{} -w {}", self.program, args.join(" ")),
                    after,
                })
            }
        };
        Ok(Some(Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }))
    }

    /// Runs and fails unless iptables succeeded (no iptables: nothing to do).
    fn must(&self, args: Vec<String>) -> Result<(), FirewallError> {
        validate_args(&args)?;
        match self.run(&args)? {
            Some(r) if !r.ok => Err(FirewallError::Iptables {
                args: args.join(" "),
                stderr: r.stderr,
            }),
            _ => Ok(()),
        }
    }

    /// `iptables -S CHAIN`; `None` when the chain (or iptables) does not exist.
    fn list(&self, chain: &str) -> Result<Option<String>, FirewallError> {
        Ok(self
            .run(&["-S".to_string(), chain.to_string()])?
            .filter(|r| r.ok)
            .map(|r| r.stdout))
    }

    /// `iptables -S DOCKER-USER`; `None` when there is no such chain (or no iptables).
    pub(crate) fn list_user(&self) -> Result<Option<String>, FirewallError> {
        self.list(USER_CHAIN)
    }

    /// `iptables -S` of every chain that can hold our rules; `None` when there is no
    /// iptables at all.
    fn listings(&self) -> Result<Option<Listings>, FirewallError> {
        let Some(forward) = self.list(FORWARD_CHAIN)? else {
            if self.run(&["--version".to_string()])?.is_none() {
                return Ok(None);
            }
            return Ok(Some(Listings::default()));
        };
        Ok(Some(Listings {
            forward: Some(forward),
            user: self.list(USER_CHAIN)?,
            isolation_1: self.list(ISOLATION_1)?,
            isolation_2: self.list(ISOLATION_2)?,
        }))
    }

    /// Our rules in every chain that can hold them.
    fn ours(&self) -> Result<Vec<TaggedRule>, FirewallError> {
        Ok(self.listings()?.map(|l| l.ours()).unwrap_or_default())
    }

    /// Makes the network's rules exactly [`desired_rules`], in the right chains and
    /// places (see [`plan`]). Returns how many rules it inserted (0: all was in place).
    pub(crate) fn ensure(&self, net: &NatNetwork, id12: &str) -> Result<usize, FirewallError> {
        self.ensure_all(&[(net, id12)])
    }

    /// [`Iptables::ensure`] for several networks, reading the chains once when nothing
    /// is to be done (the reconciler's pass). Every network is tried; failures are
    /// reported together.
    pub(crate) fn ensure_all(&self, nets: &[(&NatNetwork, &str)]) -> Result<usize, FirewallError> {
        let Some(listings) = self.listings()? else {
            if !nets.is_empty() {
                tracing::warn!("iptables not found: no Docker forward rules to accommodate");
            }
            return Ok(0);
        };
        let mut inserted = 0;
        let mut errors = Vec::new();
        for (net, id12) in nets {
            let plan = plan(net, id12, &listings);
            if plan.is_empty() {
                continue;
            }
            match self.apply(plan) {
                Ok(n) => inserted += n,
                Err(e) => errors.push(e),
            }
        }
        FirewallError::collect(errors).map(|()| inserted)
    }

    /// Carries out a [`plan`]: deletes first, then inserts the isolation rules at the
    /// top of their chains and the accepts below Docker's jumps (found again after the
    /// deletes, and after an earlier network's inserts).
    fn apply(&self, plan: Plan) -> Result<usize, FirewallError> {
        for rule in &plan.delete {
            self.delete(rule)?;
        }
        let inserted = plan.top.len() + plan.forward.len();
        for w in plan.top {
            let mut args = vec!["-I".to_string(), w.chain.to_string()];
            args.extend(w.spec);
            self.must(args)?;
        }
        if !plan.forward.is_empty() {
            let anchor = self
                .list(FORWARD_CHAIN)?
                .as_deref()
                .map_or(0, forward_anchor);
            // Inserted at the same place, last first, so they read in order.
            for spec in plan.forward.into_iter().rev() {
                let mut args = vec![
                    "-I".to_string(),
                    FORWARD_CHAIN.to_string(),
                    (anchor + 1).to_string(),
                ];
                args.extend(spec);
                self.must(args)?;
            }
        }
        Ok(inserted)
    }

    fn delete(&self, rule: &TaggedRule) -> Result<(), FirewallError> {
        let mut args = vec!["-D".to_string(), rule.chain.clone()];
        args.extend(rule.args.iter().cloned());
        self.must(args)
    }

    /// Deletes every rule of network `id12`, trying each even after a failure.
    pub(crate) fn remove(&self, id12: &str) -> Result<(), FirewallError> {
        let errors = self
            .ours()?
            .iter()
            .filter(|r| r.id12 == id12)
            .filter_map(|r| self.delete(r).err())
            .collect();
        FirewallError::collect(errors)
    }

    /// Ids (12 characters) of every network with a rule here.
    pub(crate) fn tagged_ids(&self) -> Result<BTreeSet<String>, FirewallError> {
        Ok(self.ours()?.into_iter().map(|r| r.id12).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const ID12: &str = "3f2a9c1d4e5b";

    fn net(internal: bool) -> NatNetwork {
        NatNetwork {
            id: "3f2a9c1d4e5b6a7f".into(),
            bridge: "ovsbr-3f2a9c1d".into(),
            subnet: "10.231.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 231, 1, 1),
            internal,
            routed: false,
            masquerade_ports: None,
            ipv6: None,
        }
    }

    /// `iptables -S FORWARD` on Docker 20.10 (iptables-nft 1.8.9) with the network's
    /// accepts in place below Docker's jumps.
    const FORWARD: &str = r#"-P FORWARD DROP
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o ovsbr-3f2a9c1d -m conntrack --ctstate DNAT -m comment --comment "dovesnap:3f2a9c1d4e5b" -j ACCEPT
-A FORWARD -o ovsbr-3f2a9c1d -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "dovesnap:3f2a9c1d4e5b" -j ACCEPT
-A FORWARD -i ovsbr-3f2a9c1d -m comment --comment "dovesnap:3f2a9c1d4e5b" -j ACCEPT
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
"#;

    const ISO1: &str = r#"-N DOCKER-ISOLATION-STAGE-1
-A DOCKER-ISOLATION-STAGE-1 -i ovsbr-3f2a9c1d ! -o ovsbr-3f2a9c1d -m comment --comment "dovesnap:3f2a9c1d4e5b" -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
"#;

    const ISO2: &str = r#"-N DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-2 -o ovsbr-3f2a9c1d -m conntrack ! --ctstate DNAT -m comment --comment "dovesnap:3f2a9c1d4e5b" -j DROP
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
"#;

    /// What a previous version left: the accepts at the top of `DOCKER-USER`.
    const OLD_USER: &str = r#"-N DOCKER-USER
-A DOCKER-USER -o ovsbr-3f2a9c1d -m conntrack --ctstate DNAT -m comment --comment "dovesnap:3f2a9c1d4e5b" -j ACCEPT
-A DOCKER-USER -o ovsbr-3f2a9c1d -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "dovesnap:3f2a9c1d4e5b" -j ACCEPT
-A DOCKER-USER -i ovsbr-3f2a9c1d -m comment --comment "dovesnap:3f2a9c1d4e5b" -j ACCEPT
-A DOCKER-USER -i docker0 -m comment --comment "someone else" -j ACCEPT
-A DOCKER-USER -j RETURN
"#;

    const USER: &str =
        "-N DOCKER-USER\n-A DOCKER-USER -d 10.9.9.9/32 -j DROP\n-A DOCKER-USER -j RETURN\n";

    fn docker_host() -> Listings {
        Listings {
            forward: Some(FORWARD.into()),
            user: Some(USER.into()),
            isolation_1: Some(ISO1.into()),
            isolation_2: Some(ISO2.into()),
        }
    }

    /// The listing with our rules taken out.
    fn without_ours(l: &str) -> String {
        l.lines()
            .filter(|l| !l.contains("dovesnap:"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn rules_are_scoped_to_the_bridge_and_tagged() {
        let rules = desired_rules(&net(false), ID12, true);
        assert_eq!(rules.len(), 5);
        for r in &rules {
            assert!(validate_args(&r.spec).is_ok());
            assert!(r
                .spec
                .windows(2)
                .any(|w| w == ["--comment", "dovesnap:3f2a9c1d4e5b"]));
            assert!(r
                .spec
                .windows(2)
                .any(|w| (w[0] == "-i" || w[0] == "-o") && w[1] == "ovsbr-3f2a9c1d"));
        }
        let chains: Vec<_> = rules.iter().map(|r| r.chain).collect();
        assert_eq!(
            chains,
            [
                FORWARD_CHAIN,
                FORWARD_CHAIN,
                FORWARD_CHAIN,
                ISOLATION_1,
                ISOLATION_2
            ]
        );
        assert_eq!(desired_rules(&net(false), ID12, false).len(), 3);
        assert!(desired_rules(&net(true), ID12, true).is_empty());
    }

    #[test]
    fn routed_networks_are_entered_without_dnat() {
        let routed = NatNetwork {
            routed: true,
            ..net(false)
        };
        let rules = desired_rules(&routed, ID12, true);
        assert_eq!(rules.len(), 5);
        assert_eq!(
            rules[0].spec.join(" "),
            "-o ovsbr-3f2a9c1d -m comment --comment dovesnap:3f2a9c1d4e5b -j ACCEPT"
        );
        assert_eq!(rules[1..], desired_rules(&net(false), ID12, true)[1..]);
    }

    #[test]
    fn listing_is_read_back_exactly_as_written() {
        let found = docker_host().ours();
        let desired = desired_rules(&net(false), ID12, true);
        assert_eq!(
            found
                .iter()
                .map(|r| (r.chain.as_str(), r.args.clone()))
                .collect::<Vec<_>>(),
            desired
                .iter()
                .map(|w| (w.chain, w.spec.clone()))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            found.iter().map(|r| r.number).collect::<Vec<_>>(),
            [3, 4, 5, 1, 1]
        );
        assert!(plan(&net(false), ID12, &docker_host()).is_empty());
    }

    #[test]
    fn accepts_go_below_dockers_jumps() {
        assert_eq!(forward_anchor(FORWARD), 2);
        assert_eq!(forward_anchor("-P FORWARD ACCEPT\n"), 0);
        assert_eq!(
            forward_anchor("-P FORWARD DROP\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n-A FORWARD -i x -j ACCEPT\n-A FORWARD -j DOCKER-USER\n"),
            3
        );
        // Nothing there yet: everything is inserted.
        let mut l = docker_host();
        l.forward = Some(without_ours(FORWARD));
        l.isolation_1 = Some(without_ours(ISO1));
        l.isolation_2 = Some(without_ours(ISO2));
        let p = plan(&net(false), ID12, &l);
        assert!(p.delete.is_empty());
        assert_eq!(p.forward.len(), 3);
        assert_eq!(
            p.top.iter().map(|w| w.chain).collect::<Vec<_>>(),
            [ISOLATION_1, ISOLATION_2]
        );
        // Docker moved its jumps below our accepts (a new network, a restart): the
        // accepts are moved back below them.
        let mut l = docker_host();
        let moved = FORWARD.replace(
            "-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n",
            "",
        ) + "-A FORWARD -j DOCKER-USER\n";
        l.forward = Some(moved);
        let p = plan(&net(false), ID12, &l);
        assert_eq!(p.delete.len(), 3);
        assert_eq!(p.forward.len(), 3);
        assert!(p.top.is_empty());
    }

    #[test]
    fn rules_of_an_older_version_in_docker_user_are_moved() {
        let mut l = docker_host();
        l.user = Some(OLD_USER.into());
        l.forward = Some(without_ours(FORWARD));
        let p = plan(&net(false), ID12, &l);
        assert_eq!(p.delete.len(), 3);
        assert!(p.delete.iter().all(|r| r.chain == USER_CHAIN));
        assert_eq!(p.forward.len(), 3);
        // Someone else's rule is not ours.
        assert!(tagged_rules(OLD_USER).iter().all(|r| r.id12 == ID12));
    }

    #[test]
    fn without_docker_the_accepts_top_forward_and_nothing_isolates() {
        let l = Listings {
            forward: Some("-P FORWARD DROP\n-A FORWARD -i eth9 -j ACCEPT\n".into()),
            ..Listings::default()
        };
        let p = plan(&net(false), ID12, &l);
        assert_eq!(p.forward.len(), 3);
        assert!(p.top.is_empty() && p.delete.is_empty());
        // An internal network has nothing, and loses what it had.
        let p = plan(&net(true), ID12, &docker_host());
        assert_eq!(p.delete.len(), 5);
        assert!(p.forward.is_empty() && p.top.is_empty());
    }

    #[test]
    fn tokenizer_handles_quotes() {
        assert_eq!(
            tokenize(r#"-A X -m comment --comment "a b \"c\"" -j ACCEPT"#),
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "a b \"c\"",
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(tokenize("  "), Vec::<String>::new());
        assert_eq!(tokenize(r#"--comment """#), ["--comment", ""]);
    }

    #[test]
    fn odd_arguments_are_refused() {
        for bad in ["", "a b", "x;y", "$(id)", "\"q\"", "!!"] {
            assert!(validate_args(&[bad.to_string()]).is_err(), "{bad:?}");
        }
        assert!(validate_args(&[
            "RELATED,ESTABLISHED".into(),
            "dovesnap:abc".into(),
            "!".into()
        ])
        .is_ok());
    }
}
