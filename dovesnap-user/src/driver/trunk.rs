//! Trunks: VLAN networks sharing one uplink.
//!
//! A host interface sits on one OVS bridge only, so networks cannot each put it on
//! their own bridge. A network with a VLAN (`ovs.bridge.vlan`) and uplinks
//! (`ovs.bridge.add_ports`) keeps its own bridge (its gateway, controller and
//! datapath id stay its own) and reaches each uplink through the uplink's *trunk
//! bridge* ([`trunk_bridge`], `ovstk-<uplink>`), shared by every network on that
//! uplink:
//!
//! - the uplink is a trunk port of the trunk bridge whose `trunks` are exactly the
//!   VLANs of the networks on it (kept in step on create and delete);
//! - each network is joined to it by a patch-port pair ([`patch_names`]): both ends
//!   access ports of the network's VLAN, so what a container sends leaves the uplink
//!   tagged with its network's VLAN and only that VLAN comes back;
//! - the first network on an uplink makes the trunk bridge, the last one out deletes
//!   it, which gives the interface back as it was.
//!
//! State lives in OVSDB as everywhere else: the trunk bridge carries
//! [`EXT_TRUNK_UPLINK`], each trunk-side patch port [`EXT_TRUNK_NETWORK`], and the
//! networks' own records say which uplinks and VLAN they use, so recovery needs
//! nothing more. A network without a VLAN takes its uplinks whole, directly on its
//! bridge, as before; so did VLAN networks made by earlier versions (recognised by the
//! uplink being a port of the network's bridge, and left that way until deleted).

use std::collections::HashSet;

use super::*;
use crate::ovsdb::OvsdbError;
use crate::plugin::options::Uplink;

/// `external_ids` key on a trunk bridge: the uplink it carries (ownership marker).
pub const EXT_TRUNK_UPLINK: &str = "dovesnap-trunk";

/// `external_ids` key on a trunk-side patch port: the network it joins.
pub const EXT_TRUNK_NETWORK: &str = "dovesnap-trunk-network";

/// Prefix of trunk bridges.
pub const TRUNK_BRIDGE_PREFIX: &str = "ovstk-";

/// The most uplinks a VLAN network takes (one digit in its patch ports' names).
pub const MAX_TRUNK_UPLINKS: usize = 10;

/// Whether the network's uplinks go through trunk bridges: a VLAN network with
/// uplinks.
pub(super) fn trunked(options: &NetworkOptions) -> bool {
    options.vlan.is_some() && !options.add_ports.is_empty()
}

/// The trunk bridge of `uplink`: `ovstk-<uplink>`, or, for a name too long for
/// that, `ovstk-` and 9 hex digits of a hash of it (the bridge's [`EXT_TRUNK_UPLINK`]
/// says which uplink it carries).
pub fn trunk_bridge(uplink: &str) -> String {
    if TRUNK_BRIDGE_PREFIX.len() + uplink.len() <= crate::host::ifname::IFNAME_MAX {
        return format!("{TRUNK_BRIDGE_PREFIX}{uplink}");
    }
    // FNV-1a: stable across versions and hosts, unlike std's hasher.
    let hash = uplink.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{TRUNK_BRIDGE_PREFIX}{:09x}", hash & 0xf_ffff_ffff)
}

/// The patch-port pair joining network `id` to the trunk bridge of its `index`-th
/// uplink: (the end on the network's bridge, the end on the trunk bridge).
pub(super) fn patch_names(id: &str, index: usize) -> (String, String) {
    let id = &id[..8];
    (format!("ovsnp{index}-{id}"), format!("ovstp{index}-{id}"))
}

/// The end of a network's patch pair on its own bridge, part of its [`bridge_spec`]:
/// an access port of the network's VLAN that asks for the uplink's OpenFlow port (so
/// a controller sees the uplink where `ovs.bridge.add_ports=IF/OFPORT` put it).
pub(super) fn network_patch(net: &Network, index: usize, uplink: &Uplink) -> UplinkSpec {
    let (here, there) = patch_names(&net.id, index);
    UplinkSpec {
        name: here,
        ofport: uplink.ofport,
        tag: net.options.vlan,
        trunks: Vec::new(),
        patch_peer: Some(there),
    }
}

/// The end of a network's patch pair on the trunk bridge.
fn trunk_patch(net: &Network, index: usize) -> PortSpec {
    let (here, there) = patch_names(&net.id, index);
    PortSpec {
        tag: net.options.vlan,
        external_ids: BTreeMap::from([(EXT_TRUNK_NETWORK.to_string(), net.id.clone())]),
        patch_peer: Some(here),
        ..PortSpec::new(there)
    }
}

/// The trunk bridge of `uplink` as first made: the uplink a trunk of `vlans`.
fn trunk_spec(uplink: &str, datapath: Datapath, vlans: &[u16]) -> BridgeSpec {
    BridgeSpec {
        name: trunk_bridge(uplink),
        datapath_type: datapath.as_str().to_string(),
        external_ids: BTreeMap::from([(EXT_TRUNK_UPLINK.to_string(), uplink.to_string())]),
        uplinks: vec![UplinkSpec {
            name: uplink.to_string(),
            trunks: vlans.to_vec(),
            ..UplinkSpec::default()
        }],
        ..BridgeSpec::default()
    }
}

/// Whether `bridge` is the trunk bridge dovesnap made for `uplink`.
fn is_trunk_of(bridge: &ovsdb::BridgeInfo, uplink: &str) -> bool {
    bridge
        .external_ids
        .get(EXT_TRUNK_UPLINK)
        .map(String::as_str)
        == Some(uplink)
}

/// Whether the network's bridge holds `uplink` itself (a network without a VLAN, or
/// one made by an earlier version), so no trunk bridge is involved.
fn holds_uplink(bridge: &ovsdb::BridgeInfo, uplink: &str) -> bool {
    bridge.ports.iter().any(|p| p.name == uplink)
}

/// Whether some bridge records network `id` (trusted or not, in any slot of a shared
/// bridge): its patch port on a trunk is alive, not the leftover of a network gone in
/// a crash.
fn recorded(bridges: &[ovsdb::BridgeInfo], id: &str) -> bool {
    (bridges.iter()).any(|b| super::shared::recorded_networks(b).contains(&id))
}

/// The VLANs the trunk of `uplink` carries for the networks of `networks` other than
/// `except`, and for the patch ports found on `trunk` whose network still has a
/// bridge (networks whose records dovesnap did not trust keep theirs; a crash's
/// leftovers do not count), sorted.
fn vlans_on(
    networks: &HashMap<String, Network>,
    uplink: &str,
    except: &str,
    trunk: Option<&ovsdb::BridgeInfo>,
    bridges: &[ovsdb::BridgeInfo],
) -> Vec<u16> {
    let mut vlans: Vec<u16> = networks
        .values()
        .filter(|n| n.id != except && trunked(&n.options))
        .filter(|n| n.options.add_ports.iter().any(|u| u.name == uplink))
        .filter_map(|n| n.options.vlan)
        .chain(
            (trunk.iter().flat_map(|b| &b.ports))
                .filter(|p| {
                    p.external_ids
                        .get(EXT_TRUNK_NETWORK)
                        .is_some_and(|n| n != except && recorded(bridges, n))
                })
                .filter_map(|p| p.tag),
        )
        .collect();
    vlans.sort_unstable();
    vlans.dedup();
    vlans
}

/// What `dovesnap status` shows of a network's trunks: `BRIDGE:UPLINK/VLAN`, one per
/// uplink (empty for a network without).
pub(super) fn trunk_status(net: &Network) -> String {
    if !trunked(&net.options) || net.options.mode == Mode::Overlay {
        return String::new();
    }
    let vlan = net.options.vlan.unwrap_or_default();
    (net.options.add_ports.iter())
        .map(|u| format!("{}:{}/{vlan}", trunk_bridge(&u.name), u.name))
        .collect::<Vec<_>>()
        .join(" ")
}

impl<S: Switch, L: Links, F: NatFastPath> Driver<S, L, F> {
    /// Refuses a new network whose uplinks cannot be shared as it asks: an uplink of
    /// another network without a VLAN (or, without a VLAN itself, of any other
    /// network), a VLAN another network already has on it, another datapath than the
    /// trunk bridge's, an uplink on a bridge that is not its trunk bridge.
    pub(super) async fn check_uplinks(
        &self,
        net: &Network,
        networks: &HashMap<String, Network>,
    ) -> DriverResult<()> {
        let ups = &net.options.add_ports;
        if ups.is_empty() {
            return Ok(());
        }
        if trunked(&net.options) && ups.len() > MAX_TRUNK_UPLINKS {
            return Err(DriverError::TooManyTrunkUplinks(ups.len()));
        }
        let bridges = self.ovs.list_bridges().await?;
        for up in ups {
            let shared = |other: &Network, how: String| DriverError::UplinkShared {
                uplink: up.name.clone(),
                other: other.id.clone(),
                how,
            };
            for other in networks.values() {
                if !other.options.add_ports.iter().any(|u| u.name == up.name) {
                    continue;
                }
                match (net.options.vlan, other.options.vlan) {
                    (None, _) => {
                        return Err(shared(
                            other,
                            "; a network without ovs.bridge.vlan takes its uplink whole: \
                             give each network sharing it its own ovs.bridge.vlan"
                                .into(),
                        ))
                    }
                    (_, None) => {
                        return Err(shared(
                            other,
                            " without a VLAN, which takes the whole uplink: delete that \
                             network or choose another uplink"
                                .into(),
                        ))
                    }
                    (Some(mine), Some(theirs)) if mine == theirs => {
                        return Err(shared(
                            other,
                            format!(
                                " with VLAN {theirs}: each network sharing an uplink needs \
                                 its own ovs.bridge.vlan"
                            ),
                        ))
                    }
                    _ if other.datapath != net.datapath => {
                        return Err(shared(
                            other,
                            format!(
                                " on the {} datapath; patch ports join bridges of one \
                                 datapath only: create this network with the same \
                                 ovs.bridge.userspace setting",
                                other.datapath
                            ),
                        ))
                    }
                    _ => {}
                }
            }
            let trunk = trunk_bridge(&up.name);
            let foreign = bridges
                .iter()
                .any(|b| b.name == trunk && !is_trunk_of(b, &up.name));
            if foreign && trunked(&net.options) {
                return Err(DriverError::TrunkBridgeNotOurs {
                    bridge: trunk,
                    uplink: up.name.clone(),
                });
            }
            let holder = bridges.iter().find(|b| holds_uplink(b, &up.name));
            if let Some(b) = holder.filter(|b| !(trunked(&net.options) && b.name == trunk)) {
                return Err(DriverError::UplinkInUse {
                    uplink: up.name.clone(),
                    bridge: b.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Joins a new network to the trunk bridge of each of its uplinks (made if need
    /// be, the uplink's VLANs widened), before its own bridge is made. On failure the
    /// uplinks joined so far are left again: nothing is left behind.
    pub(super) async fn join_trunks(
        &self,
        net: &Network,
        networks: &HashMap<String, Network>,
    ) -> DriverResult<()> {
        if !trunked(&net.options) {
            return Ok(());
        }
        for (i, up) in net.options.add_ports.iter().enumerate() {
            if let Err(e) = self.join_trunk(net, i, &up.name, networks).await {
                let mut ignored = Vec::new();
                for (j, up) in net.options.add_ports.iter().enumerate().take(i + 1) {
                    self.leave_trunk(net, j, &up.name, networks, &mut ignored)
                        .await;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    async fn join_trunk(
        &self,
        net: &Network,
        index: usize,
        uplink: &str,
        networks: &HashMap<String, Network>,
    ) -> DriverResult<()> {
        let trunk = trunk_bridge(uplink);
        let bridges = self.ovs.list_bridges().await?;
        let found = bridges.iter().find(|b| b.name == trunk);
        let mut vlans = vlans_on(networks, uplink, &net.id, found, &bridges);
        vlans.extend(net.options.vlan);
        vlans.sort_unstable();
        match found {
            None => {
                (self.ovs)
                    .create_bridge(&trunk_spec(uplink, net.datapath, &vlans))
                    .await?
            }
            Some(_) => self.ovs.set_port_trunks(&trunk, uplink, &vlans).await?,
        }
        self.ovs.add_port(&trunk, &trunk_patch(net, index)).await?;
        info!(network = %net.id, uplink, bridge = %trunk, ?vlans, "joined the uplink's trunk");
        Ok(())
    }

    /// Takes a network off the trunk bridges of its uplinks (when it has some): its
    /// patch port goes, the uplink carries the VLANs of the others, and the last
    /// network out deletes the trunk bridge. Errors go to `errors`; what is already
    /// gone counts as done.
    pub(super) async fn leave_trunks(
        &self,
        net: &Network,
        networks: &HashMap<String, Network>,
        errors: &mut Vec<String>,
    ) {
        if !trunked(&net.options) {
            return;
        }
        for (i, up) in net.options.add_ports.iter().enumerate() {
            self.leave_trunk(net, i, &up.name, networks, errors).await;
        }
    }

    async fn leave_trunk(
        &self,
        net: &Network,
        index: usize,
        uplink: &str,
        networks: &HashMap<String, Network>,
        errors: &mut Vec<String>,
    ) {
        let trunk = trunk_bridge(uplink);
        let bridges = match self.ovs.list_bridges().await {
            Ok(b) => b,
            Err(e) => return errors.push(e.to_string()),
        };
        let found = bridges.iter().find(|b| b.name == trunk);
        // Gone already, or never made (the network's bridge held the uplink).
        let Some(found) = found.filter(|b| is_trunk_of(b, uplink)) else {
            return;
        };
        let (_, there) = patch_names(&net.id, index);
        match self.ovs.delete_port(&trunk, &there).await {
            Err(e) if !e.is_not_found() => return errors.push(e.to_string()),
            _ => {}
        }
        let vlans = vlans_on(networks, uplink, &net.id, Some(found), &bridges);
        let left = if vlans.is_empty() {
            self.ovs.delete_bridge(&trunk).await
        } else {
            self.ovs.set_port_trunks(&trunk, uplink, &vlans).await
        };
        match left {
            Err(e) if !e.is_not_found() => errors.push(e.to_string()),
            _ => {
                info!(network = %net.id, uplink, bridge = %trunk, ?vlans, "left the uplink's trunk")
            }
        }
    }

    /// The reconciler's part for trunks (after the networks' bridges are back): each
    /// VLAN network's patch ports, each uplink's trunk bridge, its uplink port and its
    /// VLANs, made again when gone or put right when changed. Returns the repairs.
    pub(super) async fn reconcile_trunks(&self, networks: &HashMap<String, Network>) -> u64 {
        if !networks.values().any(|n| trunked(&n.options)) {
            return 0;
        }
        let mut bridges: HashMap<String, ovsdb::BridgeInfo> = match self.ovs.list_bridges().await {
            Ok(b) => b.into_iter().map(|b| (b.name.clone(), b)).collect(),
            Err(e) => {
                debug!("reconcile: OVSDB not answering, next pass will retry: {e}");
                return 0;
            }
        };
        let mut repairs = 0;
        let mut repaired = |what: &str, net: &str, name: &str, r: Result<(), OvsdbError>| match r {
            Ok(()) => {
                repairs += 1;
                info!(network = %net, port = %name, "repaired: {what}");
            }
            Err(e) => warn!(network = %net, port = %name, "reconcile: cannot repair ({what}): {e}"),
        };
        for net in networks.values().filter(|n| trunked(&n.options)) {
            let Some(own) = bridges.get(&net.bridge).filter(|b| net.marks(b)) else {
                continue;
            };
            let own_ports: HashSet<String> = own.ports.iter().map(|p| p.name.clone()).collect();
            for (i, up) in net.options.add_ports.iter().enumerate() {
                if own_ports.contains(&up.name) {
                    continue;
                }
                let (here, there) = patch_names(&net.id, i);
                if !own_ports.contains(&here) {
                    let patch = network_patch(net, i, up);
                    let spec = PortSpec {
                        tag: patch.tag,
                        ofport: patch.ofport,
                        patch_peer: patch.patch_peer,
                        ..PortSpec::new(here.clone())
                    };
                    let r = self.ovs.add_port(&net.bridge, &spec).await;
                    repaired(
                        "the network's patch port was gone; made it again",
                        &net.id,
                        &here,
                        r,
                    );
                }
                let trunk = trunk_bridge(&up.name);
                if !bridges.contains_key(&trunk) {
                    let vlans = vlans_on(networks, &up.name, "", None, &[]);
                    let spec = trunk_spec(&up.name, net.datapath, &vlans);
                    let r = self.ovs.create_bridge(&spec).await;
                    let made = r.is_ok();
                    repaired(
                        "the uplink's trunk bridge was gone; made it again",
                        &net.id,
                        &trunk,
                        r,
                    );
                    if !made {
                        continue;
                    }
                    if let Ok(Some(b)) = self.ovs.bridge(&trunk).await {
                        bridges.insert(trunk.clone(), b);
                    }
                }
                let Some(tb) = bridges.get(&trunk).filter(|b| is_trunk_of(b, &up.name)) else {
                    warn!(network = %net.id, bridge = %trunk,
                          "reconcile: the uplink's trunk bridge now belongs to something else; leaving it");
                    continue;
                };
                let all: Vec<_> = bridges.values().cloned().collect();
                let vlans = vlans_on(networks, &up.name, "", Some(tb), &all);
                if !tb.ports.iter().any(|p| p.name == there) {
                    let r = self.ovs.add_port(&trunk, &trunk_patch(net, i)).await;
                    repaired(
                        "the trunk's patch port was gone; made it again",
                        &net.id,
                        &there,
                        r,
                    );
                }
                match tb.ports.iter().find(|p| p.name == up.name) {
                    None => {
                        let spec = PortSpec {
                            trunks: vlans.clone(),
                            ..PortSpec::new(up.name.clone())
                        };
                        let r = self.ovs.add_port(&trunk, &spec).await;
                        repaired(
                            "the uplink was off its trunk bridge; put it back",
                            &net.id,
                            &up.name,
                            r,
                        );
                    }
                    Some(p) if p.trunks != vlans => {
                        let r = self.ovs.set_port_trunks(&trunk, &up.name, &vlans).await;
                        repaired(
                            "the uplink's VLANs had changed; set them again",
                            &net.id,
                            &up.name,
                            r,
                        );
                    }
                    Some(_) => continue,
                }
                // Seen as repaired: the next network on this uplink need not do it again.
                if let Ok(Some(b)) = self.ovs.bridge(&trunk).await {
                    bridges.insert(trunk.clone(), b);
                }
            }
        }
        repairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunk_and_patch_names_fit_an_interface_name() {
        assert_eq!(trunk_bridge("eth1"), "ovstk-eth1");
        assert_eq!(trunk_bridge("enp5s0f1"), "ovstk-enp5s0f1");
        let long = trunk_bridge("enp175s0f1np1");
        assert_eq!(long.len(), 15, "{long}");
        assert!(long.starts_with(TRUNK_BRIDGE_PREFIX), "{long}");
        // Stable (the reconciler and a restarted plugin find it again), and distinct.
        assert_eq!(long, trunk_bridge("enp175s0f1np1"));
        assert_ne!(long, trunk_bridge("enp175s0f1np2"));
        let id = "3f2a9c1d4e5b6a7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";
        let (here, there) = patch_names(id, MAX_TRUNK_UPLINKS - 1);
        assert_eq!(
            (here.as_str(), there.as_str()),
            ("ovsnp9-3f2a9c1d", "ovstp9-3f2a9c1d")
        );
        for name in [long, here, there] {
            crate::host::ifname::check(&name).unwrap();
        }
    }
}
