//! dovesnap's own OVSDB records, read at start without trusting them.
//!
//! Anything with write access to OVSDB (an operator's `ovs-vsctl set`, another tool, a
//! bug of an older version) can change a bridge's or port's `external_ids`. The root
//! daemon deletes the interfaces an endpoint record names and enters the namespace it
//! names, and keeps netfilter in line with the networks it recovered, so a record is
//! only used once it reads like what dovesnap itself writes: ids like the API's,
//! interface names as `CreateEndpoint` makes them, sandboxes in Docker's netns folder,
//! options and IPAM that parse. Anything else becomes a [`BadRecord`]: logged, shown by
//! `dovesnap status` and `dovesnap doctor`, and left alone (its bridge, ports,
//! interfaces and nat rules are never touched).

use std::collections::{BTreeMap, HashMap};

use super::{
    Datapath, DriverError, Endpoint, Ipam, Network, OverlayRecord, CONTAINER_VETH_PREFIX,
    EXT_ATTACHED_NETWORK_ID, EXT_ENDPOINT, EXT_ENDPOINT_ID, EXT_NETWORK_ID, EXT_NETWORK_INTERNAL,
    EXT_NETWORK_IPAM, EXT_OPTION_PREFIX, EXT_OVERLAY_PREFIX, HOST_VETH_PREFIX,
    RECORD_SLOT_SEPARATOR,
};
use crate::daemon::status::BadRecord;
use crate::host::addr::Ipv4Net;
use crate::ovsdb::{BridgeInfo, PortInfo, Remote};
use crate::plugin::options::NetworkOptions;

/// Where Docker keeps its containers' network namespaces (its sandbox keys), with and
/// without the `/var/run` -> `/run` link.
pub const DOCKER_NETNS_DIRS: [&str; 2] = ["/var/run/docker/netns/", "/run/docker/netns/"];

/// Docker ids as the API takes them: 12 to 128 ASCII letters and digits (so slicing
/// one is safe).
pub(super) fn check_id(what: &'static str, id: &str) -> Result<(), DriverError> {
    if id.len() >= 12 && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(DriverError::InvalidId {
            what,
            id: id.to_string(),
        })
    }
}

/// The veth pair of an endpoint (host end, container end); `eid` has passed
/// [`check_id`].
pub(super) fn veth_names(eid: &str) -> (String, String) {
    (
        format!("{HOST_VETH_PREFIX}{}", &eid[..10]),
        format!("{CONTAINER_VETH_PREFIX}{}", &eid[..10]),
    )
}

/// A sandbox key Docker would give: one namespace file in its netns folder.
pub fn check_sandbox(path: &str) -> Result<(), String> {
    let name = DOCKER_NETNS_DIRS.iter().find_map(|d| path.strip_prefix(d));
    match name {
        Some(n)
            if !n.is_empty()
                && n.len() <= 64
                && !n.starts_with('.')
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "sandbox {path:?} is not a namespace in Docker's netns folder ({})",
            DOCKER_NETNS_DIRS.join(" or ")
        )),
    }
}

/// An endpoint record against the port that holds it: everything dovesnap would act
/// on must be what `CreateEndpoint` and `Join` write.
fn check_endpoint(port: &PortInfo, ep: &Endpoint) -> Result<(), String> {
    check_id("endpoint", &ep.id).map_err(|e| e.to_string())?;
    if let Some(pid) = port.external_ids.get(EXT_ENDPOINT_ID) {
        if *pid != ep.id {
            return Err(format!(
                "the record is of endpoint {:?} but the port belongs to {pid:?}",
                ep.id
            ));
        }
    }
    let (host, container) = veth_names(&ep.id);
    if ep.host_ifname != host || ep.container_ifname != container {
        return Err(format!(
            "interfaces {:?}/{:?} are not the endpoint's veth pair {host}/{container}",
            ep.host_ifname, ep.container_ifname
        ));
    }
    if port.name != host {
        return Err(format!(
            "the port is {:?}, the endpoint's is {host}",
            port.name
        ));
    }
    if let Some(vlan) = ep.vlan.filter(|v| !(1..=4094).contains(v)) {
        return Err(format!("VLAN {vlan} is not from 1 to 4094"));
    }
    if let Some(sandbox) = &ep.sandbox {
        check_sandbox(sandbox)?;
    }
    Ok(())
}

/// Which of a bridge's ports [`endpoints_of`] reads.
#[derive(Clone, Copy)]
pub(super) enum PortsOf<'a> {
    /// Every port (a bridge with one network on it, as every version wrote them).
    All,
    /// The ports recorded as network `id`'s (the integration bridge carries the ports
    /// of every overlay network; a shared bridge, those of each network on it).
    Network(&'a str),
    /// Network `id`'s and those recorded without a network (the plain slot's network
    /// on a shared bridge: ports of versions that did not record the network).
    NetworkOrUnlabelled(&'a str),
}

impl PortsOf<'_> {
    fn takes(self, port: &PortInfo) -> bool {
        let recorded = port.external_ids.get(EXT_NETWORK_ID).map(String::as_str);
        match self {
            PortsOf::All => true,
            PortsOf::Network(id) => recorded == Some(id),
            PortsOf::NetworkOrUnlabelled(id) => recorded.is_none_or(|n| n == id),
        }
    }
}

/// The endpoints recorded on a bridge's ports (those `which` says), and the records
/// that cannot be trusted.
pub(super) fn endpoints_of(
    br: &BridgeInfo,
    which: PortsOf<'_>,
) -> (HashMap<String, Endpoint>, Vec<BadRecord>) {
    let mut good = HashMap::new();
    let mut bad = Vec::new();
    for p in &br.ports {
        if !which.takes(p) {
            continue;
        }
        let claimed = p.external_ids.get(EXT_ENDPOINT_ID);
        let Some(json) = p.external_ids.get(EXT_ENDPOINT) else {
            if let Some(id) = claimed {
                bad.push(BadRecord {
                    record: format!("port {}", p.name),
                    id: id.clone(),
                    reason: format!("{EXT_ENDPOINT_ID} without a {EXT_ENDPOINT} record"),
                });
            }
            continue;
        };
        let read = serde_json::from_str::<Endpoint>(json)
            .map_err(|e| format!("{EXT_ENDPOINT} does not read: {e}"))
            .and_then(|ep| check_endpoint(p, &ep).map(|()| ep));
        match read {
            Ok(ep) => {
                good.insert(ep.id.clone(), ep);
            }
            Err(reason) => bad.push(BadRecord {
                record: format!("port {}", p.name),
                id: claimed.cloned().unwrap_or_default(),
                reason,
            }),
        }
    }
    (good, bad)
}

/// A network read from a bridge's records: the network (with its trusted endpoints)
/// and its endpoint records that cannot be trusted, or why the network's own record
/// cannot be.
pub(super) type NetworkRead = Result<(Network, Vec<BadRecord>), BadRecord>;

/// The slots of a bridge's records ([`record_key`](super::model::record_key)): `None`
/// for the plain one, `Some(id)` for each keyed one, the plain first.
fn slots(br: &BridgeInfo) -> Vec<Option<&str>> {
    let markers = [EXT_NETWORK_ID, EXT_ATTACHED_NETWORK_ID];
    let plain = markers.iter().any(|k| br.external_ids.contains_key(*k));
    let keyed = (br.external_ids.keys())
        .filter_map(|k| k.rsplit_once(RECORD_SLOT_SEPARATOR))
        .filter(|(base, _)| markers.contains(base))
        .map(|(_, id)| Some(id));
    let mut slots: Vec<Option<&str>> = plain.then_some(None).into_iter().chain(keyed).collect();
    slots.dedup();
    slots
}

/// The networks recorded on a bridge, one per slot of its records (none when the
/// bridge is not dovesnap's; several on a shared bridge).
/// A bridge dovesnap made carries [`EXT_NETWORK_ID`]; an existing bridge a network is
/// attached to, [`EXT_ATTACHED_NETWORK_ID`] (and its options say
/// `ovs.bridge.existing`); each in the plain slot or keyed by the network's id.
pub(super) fn networks_of(br: &BridgeInfo) -> Vec<NetworkRead> {
    let slots = slots(br);
    let shared = slots.len() > 1;
    (slots.iter())
        .filter_map(|slot| {
            // The slot's keys, without their `@ID`.
            let ids: BTreeMap<String, String> = (br.external_ids.iter())
                .filter_map(|(k, v)| {
                    let base = match (slot, k.rsplit_once(RECORD_SLOT_SEPARATOR)) {
                        (None, None) => k.as_str(),
                        (Some(id), Some((base, of))) if of == *id => base,
                        _ => return None,
                    };
                    Some((base.to_string(), v.clone()))
                })
                .collect();
            let which = match (slot, shared) {
                (_, false) => PortsOf::All,
                (Some(id), true) => PortsOf::Network(id),
                (None, true) => PortsOf::NetworkOrUnlabelled(
                    (ids.get(EXT_NETWORK_ID).or(ids.get(EXT_ATTACHED_NETWORK_ID)))
                        .map_or("", String::as_str),
                ),
            };
            read_slot(br, *slot, &ids, which)
        })
        .collect()
}

/// One slot's record: `ids` are its keys (without `@ID`).
fn read_slot(
    br: &BridgeInfo,
    slot: Option<&str>,
    ids: &BTreeMap<String, String>,
    which: PortsOf<'_>,
) -> Option<NetworkRead> {
    let (id, attached) = match ids.get(EXT_NETWORK_ID) {
        Some(id) => (id, false),
        None => (ids.get(EXT_ATTACHED_NETWORK_ID)?, true),
    };
    let bad = |reason: String| BadRecord {
        record: format!("bridge {}", br.name),
        id: id.clone(),
        reason,
    };
    Some((|| {
        check_id("network", id).map_err(|e| bad(e.to_string()))?;
        if slot.is_some_and(|s| s != id) {
            return Err(bad(format!(
                "the record is keyed by network {:?} but names network {id:?}",
                slot.unwrap_or_default()
            )));
        }
        let opts: BTreeMap<String, String> = ids
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(EXT_OPTION_PREFIX)?.to_string(), v.clone())))
            .collect();
        let options = NetworkOptions::from_string_map(&opts)
            .map_err(|e| bad(format!("options do not read: {e}")))?;
        let mixed = options.existing != attached
            || (!attached && ids.contains_key(EXT_ATTACHED_NETWORK_ID));
        if mixed {
            return Err(bad(format!(
                "{EXT_NETWORK_ID} and {EXT_ATTACHED_NETWORK_ID} are for bridges dovesnap made \
                 and existing bridges (ovs.bridge.existing) respectively, and this record mixes \
                 them"
            )));
        }
        let ipam = match ids.get(EXT_NETWORK_IPAM) {
            None => Ipam::default(),
            Some(json) => check_ipam(json).map_err(bad)?,
        };
        if options.mode.has_gateway() && (ipam.subnet.is_none() || ipam.gateway.is_none()) {
            return Err(bad(format!(
                "a {} network without an IPv4 subnet and gateway in {EXT_NETWORK_IPAM}",
                options.mode
            )));
        }
        let (endpoints, bad_endpoints) = endpoints_of(br, which);
        let net = Network {
            id: id.clone(),
            bridge: br.name.clone(),
            datapath: Datapath::of(&br.datapath_type),
            options,
            ipam,
            internal: ids.get(EXT_NETWORK_INTERNAL).map(String::as_str) == Some("true"),
            endpoints,
            chassis: String::new(),
        };
        Ok((net, bad_endpoints))
    })())
}

/// An IPAM record: JSON whose subnet, if any, is an IPv4 CIDR.
fn check_ipam(json: &str) -> Result<Ipam, String> {
    serde_json::from_str(json).map_err(|e| format!("{EXT_NETWORK_IPAM} does not read: {e}"))
}

/// An overlay record (`Open_vSwitch.external_ids:dovesnap-overlay-ID`): the network id,
/// the record, its options, switch and northbound database.
#[derive(Debug)]
pub(super) struct OverlayRead {
    pub id: String,
    pub record: OverlayRecord,
    pub options: NetworkOptions,
    pub switch: String,
    pub northbound: Remote,
}

/// `None` when `key` is not an overlay record.
pub(super) fn overlay_of(key: &str, json: &str) -> Option<Result<OverlayRead, BadRecord>> {
    let id = key.strip_prefix(EXT_OVERLAY_PREFIX)?;
    let read = || -> Result<OverlayRead, String> {
        check_id("network", id).map_err(|e| e.to_string())?;
        let record = serde_json::from_str::<OverlayRecord>(json).map_err(|e| e.to_string())?;
        let options = NetworkOptions::from_string_map(&record.options)
            .map_err(|e| format!("options do not read: {e}"))?;
        let (Some(switch), Some(northbound)) = (options.ovn_switch.clone(), options.ovn_nb.clone())
        else {
            return Err("no logical switch or northbound database".into());
        };
        Ok(OverlayRead {
            id: id.to_string(),
            record,
            options,
            switch,
            northbound,
        })
    };
    Some(read().map_err(|reason| BadRecord {
        record: format!("Open_vSwitch external_ids:{key}"),
        id: id.to_string(),
        reason,
    }))
}

/// Every record of dovesnap's in OVSDB that cannot be trusted (what recovery would
/// leave alone): for `dovesnap doctor`, which reads OVSDB itself.
/// The subnets of the nat-fast networks recorded on `bridges`, read as recovery reads
/// them (records that cannot be trusted are skipped): what `dovesnap doctor` judges the
/// host's forward rules against.
pub fn nat_fast_subnets(bridges: &[BridgeInfo]) -> Vec<Ipv4Net> {
    bridges
        .iter()
        .flat_map(networks_of)
        .filter_map(|read| match read {
            Ok((net, _)) if net.options.mode == crate::plugin::options::Mode::NatFast => {
                net.ipam.subnet
            }
            _ => None,
        })
        .collect()
}

pub fn audit(bridges: &[BridgeInfo], switch_ids: &BTreeMap<String, String>) -> Vec<BadRecord> {
    let mut bad = Vec::new();
    for read in bridges.iter().flat_map(networks_of) {
        match read {
            Ok((_, eps)) => bad.extend(eps),
            Err(b) => bad.push(b),
        }
    }
    for (key, json) in switch_ids {
        match overlay_of(key, json) {
            None => {}
            Some(Err(b)) => bad.push(b),
            Some(Ok(ov)) => {
                let bridge = super::integration_bridge(&ov.options);
                if let Some(br) = bridges.iter().find(|b| b.name == bridge) {
                    bad.extend(endpoints_of(br, PortsOf::Network(&ov.id)).1);
                }
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    const NID: &str = "3f2a9c1d4e5b6a7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";
    const EID: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";

    fn endpoint() -> Endpoint {
        let (host, container) = veth_names(EID);
        Endpoint {
            id: EID.into(),
            address: "10.231.1.2/24".parse().ok(),
            address6: None,
            mac: "02:42:0a:e7:01:02".parse().unwrap(),
            host_ifname: host,
            container_ifname: container,
            published: vec![],
            vlan: Some(7),
            sandbox: Some("/var/run/docker/netns/1a2b3c4d5e6f".into()),
        }
    }

    fn port(ep: &Endpoint) -> PortInfo {
        PortInfo {
            name: ep.host_ifname.clone(),
            tag: None,
            external_ids: [
                (EXT_ENDPOINT_ID.to_string(), ep.id.clone()),
                (EXT_ENDPOINT.to_string(), serde_json::to_string(ep).unwrap()),
            ]
            .into(),
            interface_type: String::new(),
            ofport: Some(2),
            trunks: Vec::new(),
        }
    }

    fn bridge(ids: &[(&str, &str)], ports: Vec<PortInfo>) -> BridgeInfo {
        BridgeInfo {
            name: "ovsbr-3f2a9c1d".into(),
            datapath_type: "netdev".into(),
            external_ids: ids
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports,
        }
    }

    fn nat_ids() -> Vec<(&'static str, &'static str)> {
        vec![
            (EXT_NETWORK_ID, NID),
            ("dovesnap-opt-mode", "nat"),
            (
                EXT_NETWORK_IPAM,
                r#"{"subnet":"10.231.1.0/24","gateway":"10.231.1.1"}"#,
            ),
        ]
    }

    /// The one network a bridge records (None when it records none).
    fn network_of(br: &BridgeInfo) -> Option<NetworkRead> {
        let mut reads = networks_of(br);
        assert!(reads.len() <= 1, "{reads:?}");
        reads.pop()
    }

    #[test]
    fn ids_are_checked_before_they_are_sliced() {
        assert!(check_id("endpoint", EID).is_ok());
        assert!(check_id("endpoint", "short").is_err());
        // Ten bytes would cut the 'é' in half.
        assert!(check_id("endpoint", "abcdefghié0123456").is_err());
        assert!(check_id("endpoint", "../../etc/passwd").is_err());
        assert!(check_id("endpoint", &"a".repeat(129)).is_err());
    }

    #[test]
    fn sandboxes_must_be_in_dockers_netns_folder() {
        assert!(check_sandbox("/var/run/docker/netns/1a2b3c4d5e6f").is_ok());
        assert!(check_sandbox("/run/docker/netns/default").is_ok());
        for bad in [
            "/proc/1/ns/net",
            "/run/netns/foreign",
            "/var/run/docker/netns/",
            "/var/run/docker/netns/../../../proc/1/ns/net",
            "/var/run/docker/netns/a/b",
            "/var/run/docker/netns/..",
            "var/run/docker/netns/x",
        ] {
            assert!(check_sandbox(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_sound_network_and_endpoint_are_recovered() {
        let ep = endpoint();
        let br = bridge(&nat_ids(), vec![port(&ep)]);
        let (net, bad) = network_of(&br).unwrap().unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(net.endpoints[EID], ep);
        assert_eq!(net.ipam.subnet, "10.231.1.0/24".parse().ok());
        assert!(audit(&[br], &BTreeMap::new()).is_empty());
    }

    #[test]
    fn an_attached_existing_bridge_is_recovered_without_its_foreign_ports() {
        let ep = endpoint();
        let mut foreign = port(&ep);
        foreign.name = "admin0".into();
        foreign.external_ids.clear();
        let attached = [
            (EXT_ATTACHED_NETWORK_ID, NID),
            ("dovesnap-opt-mode", "flat"),
            ("dovesnap-opt-ovs.bridge.name", "ovsbr-3f2a9c1d"),
            ("dovesnap-opt-ovs.bridge.existing", "true"),
        ];
        let br = bridge(&attached, vec![port(&ep), foreign]);
        let (net, bad) = network_of(&br).unwrap().unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert!(net.options.existing);
        assert_eq!(net.marker(), EXT_ATTACHED_NETWORK_ID);
        assert_eq!(net.endpoints.len(), 1);
        assert_eq!(net.endpoints[EID].vlan, Some(7));
        let mut bad_vlan = endpoint();
        bad_vlan.vlan = Some(4095);
        let br = bridge(&attached, vec![port(&bad_vlan)]);
        let (net, bad) = network_of(&br).unwrap().unwrap();
        assert!(
            net.endpoints.is_empty() && bad[0].reason.contains("VLAN 4095"),
            "{bad:?}"
        );
        // A marker that does not match the options is not trusted either way.
        let b = network_of(&bridge(&attached[..3], vec![]))
            .unwrap()
            .unwrap_err();
        assert!(b.reason.contains("mixes"), "{b:?}");
        let mut both = attached.to_vec();
        both[0].0 = EXT_NETWORK_ID;
        assert!(network_of(&bridge(&both, vec![])).unwrap().is_err());
        both.push((EXT_ATTACHED_NETWORK_ID, NID));
        both.retain(|(k, _)| *k != "dovesnap-opt-ovs.bridge.existing");
        assert!(network_of(&bridge(&both, vec![])).unwrap().is_err());
    }

    #[test]
    fn a_shared_bridge_records_each_network_in_its_slot() {
        const NID2: &str = "7e6d5c4b3a291807f6e5d4c3b2a1908f7e6d5c4b3a291807f6e5d4c3b2a19080";
        const EID2: &str = "0123456789ab0123456789ab0123456789ab0123456789ab0123456789ab0123";
        let keyed = |k: &str| format!("{k}@{NID2}");
        let ids: Vec<(String, String)> = vec![
            // The plain slot as older versions wrote it.
            (EXT_ATTACHED_NETWORK_ID.into(), NID.into()),
            ("dovesnap-opt-ovs.bridge.existing".into(), "true".into()),
            (
                "dovesnap-opt-ovs.bridge.name".into(),
                "ovsbr-3f2a9c1d".into(),
            ),
            ("dovesnap-opt-ovs.bridge.vlan".into(), "300".into()),
            (keyed(EXT_ATTACHED_NETWORK_ID), NID2.into()),
            (keyed("dovesnap-opt-ovs.bridge.existing"), "true".into()),
            (
                keyed("dovesnap-opt-ovs.bridge.name"),
                "ovsbr-3f2a9c1d".into(),
            ),
            (keyed("dovesnap-opt-ovs.bridge.vlan"), "400".into()),
            ("admin-key".into(), "admin value".into()),
        ];
        let ids: Vec<(&str, &str)> = ids.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        // An older version's port (no network recorded on it) is the plain slot's.
        let mut old = port(&endpoint());
        old.external_ids.remove(EXT_NETWORK_ID);
        let mut theirs = endpoint();
        theirs.id = EID2.into();
        (theirs.host_ifname, theirs.container_ifname) = veth_names(EID2);
        let mut p2 = port(&theirs);
        p2.external_ids.insert(EXT_NETWORK_ID.into(), NID2.into());
        let reads = networks_of(&bridge(&ids, vec![old, p2]));
        let nets: Vec<Network> = reads.into_iter().map(|r| r.unwrap().0).collect();
        assert_eq!(nets.len(), 2);
        let (a, b) = (&nets[0], &nets[1]);
        assert_eq!((a.id.as_str(), a.options.vlan), (NID, Some(300)));
        assert_eq!((b.id.as_str(), b.options.vlan), (NID2, Some(400)));
        assert!(a.options.existing && b.options.existing);
        assert_eq!(a.endpoints.keys().collect::<Vec<_>>(), vec![EID]);
        assert_eq!(b.endpoints.keys().collect::<Vec<_>>(), vec![EID2]);
        // A keyed slot whose marker names another network is not trusted.
        let mut forged = ids.clone();
        forged[4].1 = NID;
        let reads = networks_of(&bridge(&forged, vec![]));
        let bad = reads.into_iter().find_map(Result::err).expect("refused");
        assert!(bad.reason.contains("keyed by network"), "{bad:?}");
    }

    #[test]
    fn records_read_as_older_versions_wrote_them() {
        let json = format!(
            r#"{{"id":"{EID}","address":"","mac":"02:42:0A:E7:01:02","host_ifname":"ovsv{}","container_ifname":"ovsc{}"}}"#,
            &EID[..10],
            &EID[..10]
        );
        let ep: Endpoint = serde_json::from_str(&json).unwrap();
        assert_eq!(ep.address, None);
        assert_eq!(ep.mac.0, [0x02, 0x42, 0x0a, 0xe7, 0x01, 0x02]);
        let written = serde_json::to_value(&ep).unwrap();
        assert_eq!(written["address"], "");
        assert_eq!(written["mac"], "02:42:0a:e7:01:02");
        let ep = endpoint();
        let written = serde_json::to_value(&ep).unwrap();
        assert_eq!(written["address"], "10.231.1.2/24");
        let ipam: Ipam =
            serde_json::from_str(r#"{"subnet":"10.231.1.0/24","gateway":"10.231.1.1"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&ipam).unwrap(),
            r#"{"subnet":"10.231.1.0/24","gateway":"10.231.1.1"}"#
        );
        let none: Ipam = serde_json::from_str(r#"{"subnet":null,"gateway":null}"#).unwrap();
        assert_eq!(none, Ipam::default());
        assert_eq!(
            serde_json::to_string(&none).unwrap(),
            r#"{"subnet":null,"gateway":null}"#
        );
    }

    #[test]
    fn bridges_without_dovesnap_ids_are_not_records() {
        assert!(network_of(&bridge(&[], vec![])).is_none());
    }

    #[test]
    fn a_network_whose_options_or_ipam_do_not_read_is_bad() {
        let mut ids = nat_ids();
        ids.push(("dovesnap-opt-ovs.bridge.mtu", "banana"));
        let b = network_of(&bridge(&ids, vec![])).unwrap().unwrap_err();
        assert_eq!(b.record, "bridge ovsbr-3f2a9c1d");
        assert_eq!(b.id, NID);
        assert!(b.reason.contains("options"), "{b:?}");

        for ipam in [
            "{not json",
            r#"{"subnet":"banana","gateway":"10.231.1.1"}"#,
            r#"{"subnet":null,"gateway":null}"#,
        ] {
            let mut ids = nat_ids();
            ids[2].1 = ipam;
            let b = network_of(&bridge(&ids, vec![])).unwrap().unwrap_err();
            assert!(
                b.reason.contains("IPAM") || b.reason.contains("ipam"),
                "{b:?}"
            );
        }
        // A flat network may have no IPAM at all.
        let flat = [(EXT_NETWORK_ID, NID), ("dovesnap-opt-mode", "flat")];
        assert!(network_of(&bridge(&flat, vec![])).unwrap().is_ok());
    }

    #[test]
    fn a_network_id_that_is_not_an_id_is_bad() {
        let mut ids = nat_ids();
        ids[0].1 = "ééééééééééééé";
        assert!(network_of(&bridge(&ids, vec![])).unwrap().is_err());
    }

    #[test]
    fn endpoint_records_naming_foreign_things_are_bad_and_left_out() {
        let mutations = [
            ("host_ifname", "eth0"),
            ("container_ifname", "foreign0"),
            ("sandbox", "/proc/1/ns/net"),
            ("id", "ééééééééééééé"),
            ("address", "banana"),
            ("address", "10.231.1.2"),
            ("mac", "banana"),
        ];
        for (field, value) in mutations {
            let good = endpoint();
            let mut ep = serde_json::to_value(&good).unwrap();
            ep[field] = value.into();
            let mut p = port(&good);
            p.external_ids
                .insert(EXT_ENDPOINT.into(), serde_json::to_string(&ep).unwrap());
            let br = bridge(&nat_ids(), vec![p]);
            let (net, bad) = network_of(&br).unwrap().unwrap();
            assert!(net.endpoints.is_empty(), "{ep:?}");
            assert_eq!(bad.len(), 1, "{ep:?}");
            assert_eq!(bad[0].record, format!("port {}", good.host_ifname));
            assert_eq!(bad[0].id, EID, "the port's id is the one reported");
            assert_eq!(audit(&[br], &BTreeMap::new()), bad);
        }
        // A record that is not JSON, and an id without a record.
        let good = endpoint();
        let mut p = port(&good);
        p.external_ids.insert(EXT_ENDPOINT.into(), "{".into());
        let mut q = port(&good);
        q.name = "ovsvother".into();
        q.external_ids.remove(EXT_ENDPOINT);
        let (_, bad) = endpoints_of(&bridge(&nat_ids(), vec![p, q]), PortsOf::All);
        assert_eq!(bad.len(), 2, "{bad:?}");
        // The port of another endpoint.
        let mut p = port(&good);
        p.name = "ovsv0123456789".into();
        assert_eq!(
            endpoints_of(&bridge(&nat_ids(), vec![p]), PortsOf::All)
                .1
                .len(),
            1
        );
    }

    #[test]
    fn overlay_records_are_checked() {
        assert!(overlay_of("something-else", "{}").is_none());
        let key = format!("{EXT_OVERLAY_PREFIX}{NID}");
        let b = overlay_of(&key, "{").unwrap().unwrap_err();
        assert_eq!(b.id, NID);
        let ok = r#"{"options":{"mode":"overlay","ovs.ovn.switch":"ls0","ovs.ovn.nb":"tcp:127.0.0.1:6641"},"ipam":{"subnet":"10.9.0.0/24","gateway":null},"chassis":"h1"}"#;
        assert!(overlay_of(&key, ok).unwrap().is_ok());
        let bad_key = format!("{EXT_OVERLAY_PREFIX}é-not-an-id");
        assert!(overlay_of(&bad_key, ok).unwrap().is_err());
        let ids: BTreeMap<String, String> = [(bad_key, ok.to_string())].into();
        assert_eq!(audit(&[], &ids).len(), 1);
    }
}
