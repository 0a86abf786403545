//! Shared bridges: several flat VLAN networks on one OVS bridge.
//!
//! Networks that name the same bridge (`ovs.bridge.name`, dovesnap-made or, with
//! `ovs.bridge.existing=true`, the administrator's) share it, each on its own VLAN:
//!
//! - every network on a shared bridge is flat and has its own `ovs.bridge.vlan`
//!   (distinct; a network without one would see every VLAN's frames), and none may be
//!   a VLAN another network's container has as its `ovs.port.vlan`;
//! - the bridge-level options (`ovs.bridge.userspace`, `.controller`, `.dpid`, `.mtu`)
//!   are the bridge's: a joining network that leaves them out takes the bridge's, one
//!   that sets them must agree; `ovs.bridge.tunnels` is refused on a shared bridge
//!   (tunnel ports are named after one network and carry every VLAN);
//! - each network's `ovs.bridge.add_ports` are its own: a VLAN network reaches its
//!   uplinks through their trunk bridges ([`trunk`]), by patch ports named after it,
//!   so networks on one bridge may name the same uplinks or others;
//! - each network's record is its own *slot* of the bridge's `external_ids`
//!   ([`record_key`]); the first network out of a dovesnap-made bridge leaves it to
//!   the others, the last one deletes it; an existing bridge is never deleted.
//!
//! The joining itself is one operation for both kinds of bridge ([`Driver::join_bridge`]):
//! the network's record in a free slot, then its patch ports; and one for leaving
//! ([`Driver::leave_bridge`]).

use super::*;

/// Refuses network options that cannot share `bridge` with `others` (the networks of
/// this plugin already on it), and gives a network that leaves a bridge-level option
/// out the bridge's. Returns the datapath of the bridge.
pub(super) fn check_share(
    options: &mut NetworkOptions,
    bridge: &str,
    others: &[&Network],
) -> DriverResult<Datapath> {
    let Some(first) = others.first() else {
        return Err(DriverError::NoExistingBridge(bridge.to_string()));
    };
    for other in others {
        let refuse = |why: String| DriverError::BridgeShared {
            bridge: bridge.to_string(),
            other: other.id.clone(),
            why,
        };
        if let Some(mode) = [options.mode, other.options.mode]
            .into_iter()
            .find(|m| *m != Mode::Flat)
        {
            return Err(refuse(format!(
                " (mode={}); only flat networks share a bridge (mode={mode} puts its gateway \
                 and rules on its bridge): choose another ovs.bridge.name",
                other.options.mode
            )));
        }
        if options.existing != other.options.existing {
            return Err(refuse(format!(
                ", {} it with ovs.bridge.existing={}: networks sharing a bridge all set \
                 ovs.bridge.existing alike",
                if other.options.existing {
                    "attached to"
                } else {
                    "which made"
                },
                other.options.existing
            )));
        }
        match (options.vlan, other.options.vlan) {
            (None, _) => {
                return Err(refuse(
                    "; networks sharing a bridge each need their own ovs.bridge.vlan: give \
                     this network one"
                        .into(),
                ))
            }
            (_, None) => {
                return Err(refuse(
                    " without a VLAN, and sees every frame on it: delete that network, or \
                     choose another ovs.bridge.name"
                        .into(),
                ))
            }
            (Some(mine), Some(theirs)) if mine == theirs => {
                return Err(refuse(format!(
                    " with VLAN {theirs}: networks sharing a bridge each need their own \
                     ovs.bridge.vlan"
                )))
            }
            (Some(mine), _) => {
                if let Some(ep) = other.endpoints.values().find(|e| e.vlan == Some(mine)) {
                    return Err(refuse(format!(
                        ", whose endpoint {} has ovs.port.vlan={mine}: choose another \
                         ovs.bridge.vlan",
                        ep.id
                    )));
                }
            }
        }
        if !options.tunnels.is_empty() || !other.options.tunnels.is_empty() {
            return Err(refuse(
                "; ovs.bridge.tunnels are not supported on a shared bridge (a tunnel carries \
                 every VLAN of its bridge): give the tunnelled network a bridge of its own"
                    .into(),
            ));
        }
    }
    // The bridge-level options: the bridge's, as its networks all agree on them.
    let conflict = |option: &str, mine: String, theirs: String| DriverError::BridgeShared {
        bridge: bridge.to_string(),
        other: first.id.clone(),
        why: format!(
            " with {option}={theirs}, and this network asks for {option}={mine}: leave the \
             option out (a network joining a bridge takes its settings) or give the same"
        ),
    };
    let theirs = &first.options;
    if let Some(mtu) = options.mtu.filter(|m| Some(*m) != theirs.mtu) {
        let shown = theirs.mtu.map_or("(unset)".into(), |m| m.to_string());
        return Err(conflict("ovs.bridge.mtu", mtu.to_string(), shown));
    }
    if !options.controllers.is_empty() && options.controllers != theirs.controllers {
        let shown = |c: &[String]| match c {
            [] => "(unset)".to_string(),
            c => c.join(","),
        };
        return Err(conflict(
            "ovs.bridge.controller",
            shown(&options.controllers),
            shown(&theirs.controllers),
        ));
    }
    if let Some(dpid) = options
        .dpid
        .as_ref()
        .filter(|d| Some(*d) != theirs.dpid.as_ref())
    {
        let shown = theirs.dpid.clone().unwrap_or_else(|| "(unset)".into());
        return Err(conflict("ovs.bridge.dpid", dpid.clone(), shown));
    }
    if options.userspace && first.datapath != Datapath::Netdev {
        return Err(conflict(
            "ovs.bridge.userspace",
            "true".into(),
            format!("false (datapath {})", first.datapath),
        ));
    }
    options.mtu = theirs.mtu;
    options.controllers = theirs.controllers.clone();
    options.dpid = theirs.dpid.clone();
    options.userspace = theirs.userspace;
    Ok(first.datapath)
}

/// Refuses an endpoint's own VLAN (`ovs.port.vlan`) that would put it on another
/// network of its bridge: that network's VLAN, or the same own VLAN as one of that
/// network's endpoints.
pub(super) fn check_port_vlan(
    networks: &HashMap<String, Network>,
    net: &Network,
    vlan: Option<u16>,
) -> DriverResult<()> {
    let Some(vlan) = vlan else {
        return Ok(());
    };
    let other = (networks.values())
        .filter(|n| n.id != net.id && n.bridge == net.bridge)
        .find(|n| {
            n.options.vlan == Some(vlan) || n.endpoints.values().any(|e| e.vlan == Some(vlan))
        });
    match other {
        Some(other) => Err(DriverError::PortVlanShared {
            vlan,
            bridge: net.bridge.clone(),
            other: other.id.clone(),
        }),
        None => Ok(()),
    }
}

/// The network ids recorded on `bridge` in any slot.
pub(super) fn recorded_networks(bridge: &ovsdb::BridgeInfo) -> Vec<&str> {
    let markers = [EXT_NETWORK_ID, EXT_ATTACHED_NETWORK_ID];
    (bridge.external_ids.iter())
        .filter(|(k, _)| {
            let base = k
                .rsplit_once(RECORD_SLOT_SEPARATOR)
                .map_or(k.as_str(), |(b, _)| b);
            markers.contains(&base)
        })
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The ports of `net`'s own on its bridge that are not endpoints: its patch ports to
/// its uplinks' trunk bridges (a shared bridge's other ports are not its).
fn own_ports(net: &Network) -> Vec<PortSpec> {
    (bridge_spec(net).uplinks.into_iter())
        .filter(|u| u.patch_peer.is_some())
        .map(|u| PortSpec {
            tag: u.tag,
            ofport: u.ofport,
            patch_peer: u.patch_peer,
            ..PortSpec::new(u.name)
        })
        .collect()
}

impl<S: Switch, L: Links, F: NatFastPath> Driver<S, L, F> {
    /// Puts `net` on its bridge, which is there already (another network's, or the
    /// administrator's): its record in the first free slot, then its patch ports. On
    /// failure nothing is left behind.
    pub(super) async fn join_bridge(&self, net: &Network) -> DriverResult<()> {
        let found = self.ovs.bridge(&net.bridge).await?;
        let Some(found) = found else {
            return Err(DriverError::NoExistingBridge(net.bridge.clone()));
        };
        let record = network_record(net, plain_slot_taken(Some(&found)));
        (self.ovs)
            .update_bridge_external_ids(&net.bridge, &record, &[])
            .await?;
        let mut added: Vec<String> = Vec::new();
        for port in own_ports(net) {
            if let Err(e) = self.ovs.add_port(&net.bridge, &port).await {
                for name in &added {
                    let _ = self.ovs.delete_port(&net.bridge, name).await;
                }
                let keys: Vec<String> = record.into_keys().collect();
                let _ = (self.ovs)
                    .update_bridge_external_ids(&net.bridge, &BTreeMap::new(), &keys)
                    .await;
                return Err(e.into());
            }
            added.push(port.name);
        }
        info!(network = %net.id, bridge = %net.bridge, vlan = ?net.options.vlan,
              existing = net.options.existing, "joined the bridge");
        Ok(())
    }

    /// Takes `net` off its bridge `br`, which stays (for its other networks, or the
    /// administrator's): its patch ports and its record go. Errors go to `errors`;
    /// what is already gone counts as done.
    pub(super) async fn leave_bridge(
        &self,
        net: &Network,
        br: &ovsdb::BridgeInfo,
        errors: &mut Vec<String>,
    ) {
        for port in own_ports(net) {
            match self.ovs.delete_port(&net.bridge, &port.name).await {
                Err(e) if !e.is_not_found() => errors.push(e.to_string()),
                _ => {}
            }
        }
        let keyed = net.slot_in(br).unwrap_or(false);
        let record: Vec<String> = network_record(net, keyed).into_keys().collect();
        let released = (self.ovs)
            .update_bridge_external_ids(&net.bridge, &BTreeMap::new(), &record)
            .await;
        match released {
            Err(e) if !e.is_not_found() => errors.push(e.to_string()),
            _ => info!(network = %net.id, bridge = %net.bridge, "left the bridge"),
        }
    }
}

/// What `dovesnap status` shows of the networks a network shares its bridge with:
/// their ids, sorted.
pub(super) fn shared_with(networks: &HashMap<String, Network>, net: &Network) -> Vec<String> {
    if net.options.mode == Mode::Overlay {
        return Vec::new();
    }
    let mut ids: Vec<String> = (networks.values())
        .filter(|n| n.id != net.id && n.bridge == net.bridge)
        .map(|n| n.id.clone())
        .collect();
    ids.sort();
    ids
}
