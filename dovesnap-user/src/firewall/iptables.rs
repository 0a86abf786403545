//! Accept rules in Docker's iptables chains, so that a `FORWARD` policy of `DROP`
//! (which Docker sets) does not drop a nat network's traffic.
//!
//! A packet has to be accepted by every base chain on its hook, so dovesnap's own
//! nftables table cannot override a drop in `ip filter FORWARD`. For each non-internal
//! nat network, three rules go to the top of `DOCKER-USER` (Docker jumps there first
//! from `FORWARD`), or of `FORWARD` itself when Docker's chain does not exist:
//!
//! ```text
//! -A DOCKER-USER -o BR -m conntrack --ctstate DNAT -m comment --comment "dovesnap:ID12" -j ACCEPT
//! -A DOCKER-USER -o BR -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "dovesnap:ID12" -j ACCEPT
//! -A DOCKER-USER -i BR -m comment --comment "dovesnap:ID12" -j ACCEPT
//! ```
//!
//! Only traffic leaving the network, replies to it, and published ports (DNATed
//! flows) are accepted; dovesnap's nftables `forward` chain still drops what it must
//! (isolation, internal networks). `iptables` runs as a plain command (no shell) with
//! arguments made of validated names; rules are found again by their comment.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::process::Command;

use super::command::{output_within, RunError, COMMAND_TIMEOUT};
use super::{network_tag, FirewallError, NatNetwork, TAG_PREFIX};

/// Docker's chain for user rules, evaluated first from `FORWARD`.
pub(crate) const USER_CHAIN: &str = "DOCKER-USER";
/// The filter table's forward chain, used when Docker's chain does not exist.
pub(crate) const FORWARD_CHAIN: &str = "FORWARD";

/// The rule specifications (after the chain name) for a network.
pub(crate) fn desired_rules(net: &NatNetwork, id12: &str) -> Vec<Vec<String>> {
    if net.internal {
        return Vec::new();
    }
    let tag = network_tag(id12);
    let br = net.bridge.as_str();
    let spec = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        spec(&[
            "-o",
            br,
            "-m",
            "conntrack",
            "--ctstate",
            "DNAT",
            "-m",
            "comment",
            "--comment",
            &tag,
            "-j",
            "ACCEPT",
        ]),
        spec(&[
            "-o",
            br,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-m",
            "comment",
            "--comment",
            &tag,
            "-j",
            "ACCEPT",
        ]),
        spec(&["-i", br, "-m", "comment", "--comment", &tag, "-j", "ACCEPT"]),
    ]
}

/// Refuses any argument that is not made of `[A-Za-z0-9_.:,@/-]`: everything dovesnap
/// passes is a fixed keyword, a validated interface name or a tag.
fn validate_args(args: &[String]) -> Result<(), FirewallError> {
    for a in args {
        let ok = !a.is_empty()
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
}

/// Splits an `iptables -S` line into arguments: words, with `"..."` quoting (and
/// backslash escapes inside quotes), as iptables prints comments.
fn tokenize(line: &str) -> Vec<String> {
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
    listing
        .lines()
        .filter_map(|line| {
            let tokens = tokenize(line);
            let [flag, chain, args @ ..] = tokens.as_slice() else {
                return None;
            };
            if flag != "-A" {
                return None;
            }
            let id12 = args
                .windows(2)
                .find(|w| w[0] == "--comment")
                .and_then(|w| w[1].strip_prefix(TAG_PREFIX))?;
            Some(TaggedRule {
                chain: chain.clone(),
                id12: id12.to_string(),
                args: args.to_vec(),
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

    /// Our rules in Docker's chain and in `FORWARD`.
    fn ours(&self) -> Result<Vec<TaggedRule>, FirewallError> {
        let mut found = Vec::new();
        for chain in [USER_CHAIN, FORWARD_CHAIN] {
            if let Some(listing) = self.list(chain)? {
                found.extend(tagged_rules(&listing));
            }
        }
        Ok(found)
    }

    /// Makes the network's rules exactly [`desired_rules`] in the right chain:
    /// duplicates, rules in the wrong chain and outdated ones are deleted, missing ones
    /// inserted at the top.
    pub(crate) fn ensure(&self, net: &NatNetwork, id12: &str) -> Result<(), FirewallError> {
        if self.run(&["--version".to_string()])?.is_none() {
            tracing::warn!(
                "iptables not found: no Docker forward rules to accommodate for nat network {id12}"
            );
            return Ok(());
        }
        let chain = if self.list(USER_CHAIN)?.is_some() {
            USER_CHAIN
        } else {
            FORWARD_CHAIN
        };
        let mut missing = desired_rules(net, id12);
        for rule in self.ours()?.into_iter().filter(|r| r.id12 == id12) {
            match missing.iter().position(|d| *d == rule.args) {
                Some(i) if rule.chain == chain => {
                    missing.remove(i);
                }
                _ => self.delete(&rule)?,
            }
        }
        // Inserted at the top, last first, so they read in order.
        for spec in missing.into_iter().rev() {
            let mut args = vec!["-I".to_string(), chain.to_string()];
            args.extend(spec);
            self.must(args)?;
        }
        Ok(())
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

    fn net(internal: bool) -> NatNetwork {
        NatNetwork {
            id: "3f2a9c1d4e5b6a7f".into(),
            bridge: "ovsbr-3f2a9c1d".into(),
            subnet: "10.231.1.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 231, 1, 1),
            internal,
            masquerade_ports: None,
        }
    }

    /// `iptables -S DOCKER-USER` after inserting the rules (as iptables-nft 1.8.9
    /// prints them: same order of options, comment quoted).
    const LISTING: &str = r#"-N DOCKER-USER
-A DOCKER-USER -o ovsbr-3f2a9c1d -m conntrack --ctstate DNAT -m comment --comment "dovesnap:3f2a9c1d4e5b" -j ACCEPT
-A DOCKER-USER -o ovsbr-3f2a9c1d -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "dovesnap:3f2a9c1d4e5b" -j ACCEPT
-A DOCKER-USER -i ovsbr-3f2a9c1d -m comment --comment "dovesnap:3f2a9c1d4e5b" -j ACCEPT
-A DOCKER-USER -i docker0 -m comment --comment "someone else" -j ACCEPT
-A DOCKER-USER -j RETURN
"#;

    #[test]
    fn rules_are_scoped_to_the_bridge_and_tagged() {
        let rules = desired_rules(&net(false), "3f2a9c1d4e5b");
        assert_eq!(rules.len(), 3);
        for r in &rules {
            assert!(validate_args(r).is_ok());
            assert!(r
                .windows(2)
                .any(|w| w == ["--comment", "dovesnap:3f2a9c1d4e5b"]));
            assert!(r
                .windows(2)
                .any(|w| (w[0] == "-i" || w[0] == "-o") && w[1] == "ovsbr-3f2a9c1d"));
            assert_eq!(r[r.len() - 2..], ["-j", "ACCEPT"]);
        }
        assert!(desired_rules(&net(true), "3f2a9c1d4e5b").is_empty());
    }

    #[test]
    fn listing_is_read_back_exactly_as_written() {
        let found = tagged_rules(LISTING);
        assert_eq!(found.len(), 3);
        assert!(found
            .iter()
            .all(|r| r.chain == "DOCKER-USER" && r.id12 == "3f2a9c1d4e5b"));
        let desired = desired_rules(&net(false), "3f2a9c1d4e5b");
        assert_eq!(
            found.iter().map(|r| r.args.clone()).collect::<Vec<_>>(),
            desired
        );
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
        for bad in ["", "a b", "x;y", "$(id)", "\"q\""] {
            assert!(validate_args(&[bad.to_string()]).is_err(), "{bad:?}");
        }
        assert!(validate_args(&["RELATED,ESTABLISHED".into(), "dovesnap:abc".into()]).is_ok());
    }
}
