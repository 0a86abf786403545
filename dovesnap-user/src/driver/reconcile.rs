//! The reconciler: puts back what dovesnap made when it vanished behind its back.
//!
//! The daemon runs [`Driver::reconcile`] every few seconds (`--reconcile-interval`).
//! One pass, under the driver lock (so never in the middle of a Docker call), compares
//! every network with OVSDB and the kernel and repairs, logging each repair and
//! counting it by kind (`dovesnap status`, `dovesnap_repairs_total`):
//!
//! - `bridge`: the network's bridge is missing from OVSDB (`ovs-vsctl del-br`): made
//!   again from the options and addressing the driver holds, then its ports below.
//!   Never an existing bridge a network is attached to (`ovs.bridge.existing`): that
//!   one is the administrator's, its absence is logged each pass instead.
//! - `port`: an endpoint's veth is there but its port is missing from the bridge.
//! - `veth`: an endpoint's veth pair is gone (`ip link del`, which takes both ends)
//!   while its container runs: made again with the same names and MAC, the container
//!   end moved into the container's namespace (Docker's sandbox, recorded at Join),
//!   named the first free `ethN` there (the name it had is not known to the driver),
//!   given its address and, when the container has no default route, one through the
//!   gateway; its OVS port is made again so ovs-vswitchd opens the new interface.
//! - `gateway`: a nat network's gateway address is missing from its bridge port (when
//!   ovs-vswitchd restarts, the userspace datapath makes its internal ports anew).
//! - `fast-path`: a nat-fast endpoint's veth or bridge was made anew (another ifindex,
//!   maybe another MAC): the endpoint is taken off the fast path and put back on.
//! - `trunk`: a VLAN network's patch port (on its bridge or its uplink's trunk bridge),
//!   the trunk bridge, the uplink on it, or the uplink's VLANs are gone or changed
//!   (`driver::trunk`): made again, set again.
//! - `firewall`: a nat network's rules in Docker's iptables chains are missing or out
//!   of place: dockerd flushes its isolation chains when it restarts and puts its jumps
//!   back at the top of `FORWARD` (`Firewall::restore_forwarding`).
//!
//! Overlay networks get the port and veth repairs on the integration bridge, which is
//! never re-created here (ovn-controller owns it); the port is made again with its
//! `iface-id`, so ovn-controller binds it to the endpoint's logical port again. In the
//! northbound database:
//!
//! - `logical-switch`: this host's reference on the network's logical switch is gone
//!   (or the switch itself): taken again (the switch made again if need be).
//! - `logical-port`: an endpoint's logical switch port is gone (another host reaped
//!   this chassis, an operator deleted it): made again.
//!
//! and then the ports of chassis missing from the southbound database for the grace
//! period are reaped (`crate::ovn::reap`).
//!
//! An endpoint whose veth is gone and whose container has left (or never joined) is
//! not repaired: Docker is about to delete it, or will fail its Join with a clear error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use tracing::{debug, info, warn};

use super::{
    bridge_spec, logical_port, port_spec, shared, Driver, DriverState, Endpoint, Links,
    NatFastPath, Network, Switch,
};
use crate::host::netlink::{Netlink, NetlinkError};
use crate::plugin::options::Mode;
use crate::translator::wire::ArpRepr;

/// The reconciler's memory between passes.
#[derive(Default)]
pub(super) struct State {
    /// ifindex last seen of each bridge and veth host end of nat-fast networks.
    seen: Mutex<HashMap<String, u32>>,
    /// Repairs made since start, by kind.
    repairs: Mutex<BTreeMap<&'static str, u64>>,
    /// Passes and failed passes (see [`Driver::reconcile_supervised`]).
    health: Mutex<crate::daemon::status::ReconcilerHealth>,
}

impl State {
    pub(super) fn count(&self, what: &'static str) {
        *self
            .repairs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(what)
            .or_default() += 1;
    }

    /// Whether `name`'s ifindex is not what the last pass saw (false the first time).
    fn moved(&self, name: &str, ifindex: u32) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(name.to_string(), ifindex)
            .is_some_and(|old| old != ifindex)
    }

    fn forget(&self, keep: &HashSet<String>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|k, _| keep.contains(k));
    }
}

impl<S: Switch, L: Links, F: NatFastPath> Driver<S, L, F> {
    /// Repairs made since the daemon started, by kind.
    pub fn repairs(&self) -> Vec<(String, u64)> {
        let repairs = self
            .reconciler
            .repairs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        repairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// The reconciler's passes and failures.
    pub fn reconciler_health(&self) -> crate::daemon::status::ReconcilerHealth {
        self.reconciler
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One pass in its own task, so that a panic or a pass stuck past `limit` is
    /// caught, logged and counted instead of ending reconciliation for good. Returns
    /// whether the pass finished; the caller backs off after a failure.
    pub async fn reconcile_supervised(self: &Arc<Self>, limit: std::time::Duration) -> bool {
        let me = Arc::clone(self);
        let mut task = tokio::spawn(async move { me.reconcile().await });
        let outcome = tokio::time::timeout(limit, &mut task).await;
        let mut h = self
            .reconciler
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.passes += 1;
        match outcome {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                let why = if e.is_panic() {
                    crate::fastpath::supervisor::panic_message(&*e.into_panic())
                } else {
                    e.to_string()
                };
                tracing::error!("reconciler pass failed: {why}; retrying after a backoff");
                h.panics += 1;
                h.last_failure = format!("panicked: {why}");
                false
            }
            Err(_) => {
                task.abort();
                tracing::error!(
                    "reconciler pass still running after {} s: abandoned; retrying after a backoff",
                    limit.as_secs()
                );
                h.stalls += 1;
                h.last_failure = format!("did not finish within {} s", limit.as_secs());
                false
            }
        }
    }

    /// One reconciliation pass over every network (see the module documentation).
    pub async fn reconcile(&self) {
        let mut state = self.state.lock().await;
        let DriverState { networks, fastpath } = &mut *state;
        let bridges = match self.ovs.list_bridges().await {
            Ok(b) => b,
            Err(e) => {
                debug!("reconcile: OVSDB not answering, next pass will retry: {e}");
                return;
            }
        };
        let mut keep = HashSet::new();
        // Northbound databases that did not answer this pass: not asked again in it,
        // so one unreachable database costs one timeout, not one per network.
        let mut unreachable = HashSet::new();
        // Bridges made again in this pass: the other networks sharing one join it.
        let mut remade = HashSet::new();
        for net in networks.values() {
            let bridge = bridges.iter().find(|b| b.name == net.bridge);
            if let Some(ov) = net.overlay() {
                // The integration bridge is ovn-controller's: never re-created or
                // claimed here, but the ports and veths of our endpoints on it are ours.
                let Some(b) = bridge else {
                    debug!(network = %net.id, bridge = %net.bridge,
                           "reconcile: no integration bridge (ovn-controller makes it)");
                    continue;
                };
                let ports = port_names(b);
                self.reconcile_network(fastpath, net, &ports, &mut keep)
                    .await;
                if !unreachable.contains(&ov.northbound) && !self.reconcile_ovn(net).await {
                    unreachable.insert(ov.northbound);
                }
                continue;
            }
            let (repair, ports) = match bridge {
                // An existing bridge (`ovs.bridge.existing`) is the administrator's: never
                // re-created, its other ports never touched; only ours are repaired.
                None if net.options.existing => {
                    warn!(network = %net.id, bridge = %net.bridge,
                          "reconcile: the existing bridge the network is attached to is gone; \
                           dovesnap does not re-create a bridge it did not make: make it again \
                           (ovs-vsctl add-br) and the network attaches to it, or remove the \
                           network");
                    continue;
                }
                // The administrator made the bridge again (it carries the record of no
                // network but those sharing it here): attach to it as at creation; the
                // ports follow below.
                Some(b) if net.options.existing && !net.marks(b) && !foreign(b, networks) => {
                    let attached = self.join_bridge(net).await;
                    let repair = (
                        "attach to the existing bridge made again",
                        "the existing bridge was made again; attached the network to it",
                    );
                    (Some((attached, repair)), port_names(b))
                }
                Some(b) if !net.marks(b) => {
                    warn!(network = %net.id, bridge = %net.bridge,
                          "reconcile: the bridge now belongs to something else; leaving it");
                    continue;
                }
                Some(b) => {
                    let ports = port_names(b);
                    self.reconcile_tunnels(net, &ports).await;
                    (None, ports)
                }
                // Another network sharing the bridge made it again in this pass.
                None if remade.contains(&net.bridge) => {
                    let joined = self.join_bridge(net).await;
                    let repair = (
                        "join the shared bridge made again",
                        "the shared bridge was missing from OVSDB; joined it again",
                    );
                    (Some((joined, repair)), HashSet::new())
                }
                None => {
                    let made = (self.ovs.create_bridge(&bridge_spec(net)).await)
                        .map_err(super::DriverError::from);
                    if made.is_ok() {
                        remade.insert(net.bridge.clone());
                    }
                    let repair = (
                        "re-create the missing bridge",
                        "the bridge was missing from OVSDB; re-created it",
                    );
                    (Some((made, repair)), HashSet::new())
                }
            };
            if let Some((result, (action, repaired))) = repair {
                if let Err(e) = result {
                    warn!(network = %net.id, bridge = %net.bridge, "reconcile: cannot {action}: {e}");
                    continue;
                }
                self.reconciler.count("bridge");
                info!(network = %net.id, bridge = %net.bridge, "repaired: {repaired}");
            }
            self.reconcile_network(fastpath, net, &ports, &mut keep)
                .await;
        }
        self.reconciler.forget(&keep);
        for _ in 0..self.reconcile_trunks(networks).await {
            self.reconciler.count("trunk");
        }
        let nats: Vec<_> = networks
            .values()
            .filter_map(|n| n.nat(&self.fastpath_config))
            .collect();
        // The host's forward rules may have changed: nat-fast follows within a pass.
        let fast: Vec<_> = networks
            .values()
            .filter(|n| n.options.mode == Mode::NatFast && !n.internal)
            .filter_map(|n| n.nat(&self.fastpath_config).map(|n| n.subnet))
            .collect();
        if !fast.is_empty() {
            fastpath.if_running(|fp| {
                if let Err(e) = fp.follow_host_rules(fast) {
                    warn!("reconcile: cannot bring nat-fast up to date with the host's forward rules: {e}");
                }
            });
        }
        if !nats.is_empty() {
            match tokio::task::block_in_place(|| self.firewall.restore_forwarding(&nats)) {
                Ok(0) => {}
                Ok(n) => {
                    self.reconciler.count("firewall");
                    info!("repaired: put back {n} rules of nat networks in Docker's iptables chains (dockerd restarted or moved its jumps)");
                }
                Err(e) => warn!("reconcile: cannot check the nat networks' iptables rules: {e}"),
            }
        }
    }

    /// Overlay: this host's reference on the logical switch and a logical port for
    /// each of its endpoints, made again when gone; then the chassis missing for the
    /// grace period are reaped (see the module documentation). False when the
    /// northbound database did not answer.
    async fn reconcile_ovn(&self, net: &Network) -> bool {
        let Some(ov) = net.overlay() else {
            return true;
        };
        let nb = self.northbound(&ov.northbound);
        let state = match nb.switch(&ov.switch).await {
            Ok(state) => state,
            Err(e) => {
                debug!(network = %net.id, "reconcile: OVN northbound not answering: {e}");
                return false;
            }
        };
        let joined = state
            .as_ref()
            .is_some_and(|s| s.switch.hosts().contains(&ov.chassis.as_str()));
        if !joined {
            let subnet = net.subnet_text();
            if let Err(e) = nb
                .join_switch(&ov.switch, &subnet, &ov.chassis, &net.id)
                .await
            {
                warn!(network = %net.id, switch = %ov.switch,
                      "reconcile: cannot take this host's reference on the switch again: {e}");
                return true;
            }
            self.reconciler.count("logical-switch");
            info!(network = %net.id, switch = %ov.switch,
                  "repaired: this host's reference on the logical switch was gone; took it again");
        }
        self.repair_gateway(net, &ov, &nb).await;
        let ports: HashSet<&str> = state
            .iter()
            .flat_map(|s| s.ports.iter().map(|p| p.name.as_str()))
            .collect();
        for ep in net.endpoints.values() {
            let name = crate::ovn::port_name(&ep.id);
            if ports.contains(name.as_str()) {
                continue;
            }
            if let Err(e) = nb.add_port(&ov.switch, &logical_port(&ov, ep)).await {
                warn!(endpoint = %ep.id, port = %name,
                      "reconcile: cannot make the logical port again: {e}");
                continue;
            }
            self.reconciler.count("logical-port");
            info!(network = %net.id, endpoint = %ep.id, port = %name,
                  "repaired: the endpoint's logical port was gone; made it again");
        }
        if let Err(e) = self.reap_dead_chassis(&ov).await {
            debug!(network = %net.id, "reconcile: could not reap dead chassis: {e}");
        }
        let live: Vec<&str> = net.endpoints.keys().map(String::as_str).collect();
        match self.reconcile_names(net, &ov, &live).await {
            Ok(0) => {}
            Ok(n) => {
                self.reconciler.count("dns-name");
                info!(network = %net.id, rows = n,
                      "repaired: removed the names of endpoints that are gone");
            }
            Err(e) => debug!(network = %net.id, "reconcile: could not check the names: {e}"),
        }
        match self.bind_dns_port(net, &ov).await {
            Ok(false) => {}
            Ok(true) => {
                self.reconciler.count("dns-forwarder");
                info!(network = %net.id, switch = %ov.switch,
                      "repaired: the DNS localport's forwarder was gone; made it again");
            }
            Err(e) => warn!(network = %net.id, "reconcile: cannot bind the DNS localport: {e}"),
        }
        true
    }

    async fn reconcile_network(
        &self,
        fastpath: &mut super::nat_fast::FastSlot<F>,
        net: &Network,
        ports: &HashSet<String>,
        keep: &mut HashSet<String>,
    ) {
        let mut remade = HashSet::new();
        for ep in net.endpoints.values() {
            if super::nat_fast::is_split(net) && self.reconcile_split(net, ep, ports).await {
                continue;
            }
            match self.netlink.exists(&ep.host_ifname).await {
                Ok(true) if !ports.contains(&ep.host_ifname) => {
                    if let Err(e) = self.ovs.add_port(&net.bridge, &port_spec(net, ep)).await {
                        warn!(endpoint = %ep.id, "reconcile: cannot re-add the port: {e}");
                        continue;
                    }
                    self.reconciler.count("port");
                    info!(network = %net.id, endpoint = %ep.id, port = %ep.host_ifname,
                          "repaired: the port was missing from the bridge; re-added it");
                }
                Ok(true) => {}
                Ok(false) => {
                    let Some(sandbox) = ep
                        .sandbox
                        .as_deref()
                        .filter(|s| std::path::Path::new(s).exists())
                    else {
                        continue;
                    };
                    match self.repair_veth(net, ep, sandbox, ports).await {
                        Ok(name) => {
                            self.reconciler.count("veth");
                            remade.insert(ep.host_ifname.clone());
                            info!(network = %net.id, endpoint = %ep.id, port = %ep.host_ifname,
                                  container_ifname = %name,
                                  "repaired: the veth was gone; re-created it into the container");
                        }
                        Err(e) => {
                            warn!(endpoint = %ep.id, "reconcile: cannot re-create the veth: {e}")
                        }
                    }
                }
                Err(e) => warn!(endpoint = %ep.id, "reconcile: {e}"),
            }
        }
        let Some(nat) = net.nat(&self.fastpath_config) else {
            return;
        };
        let Ok(Some(bridge_index)) = self.netlink.index(&net.bridge).await else {
            // ovs-vswitchd has not made the bridge's port (yet): next pass.
            return;
        };
        let has_gateway = self
            .netlink
            .ipv4_addresses(bridge_index)
            .await
            .is_ok_and(|a| a.contains(&nat.gateway));
        if !has_gateway {
            match self
                .netlink
                .set_address_up(&net.bridge, nat.gateway, nat.subnet.prefix())
                .await
            {
                Ok(()) => {
                    // A re-made bridge port lost its IPv6 gateway too.
                    if let Some(v6) = nat.ipv6 {
                        if let Err(e) = (self.netlink)
                            .set_address6_up(&net.bridge, v6.gateway, v6.subnet.prefix)
                            .await
                        {
                            warn!(network = %net.id, "reconcile: cannot restore the IPv6 gateway: {e}");
                        }
                    }
                    // The bridge port is new, with a new MAC: containers' ARP caches
                    // still name the old one until told.
                    let link = self.netlink.link(&net.bridge).await;
                    if let Ok(Some(super::Link { mac: Some(mac), .. })) = link {
                        if let Err(e) = announce(bridge_index, mac, nat.gateway) {
                            warn!(network = %net.id, "reconcile: {e}");
                        }
                    }
                    self.reconciler.count("gateway");
                    info!(network = %net.id, bridge = %net.bridge, gateway = %nat.gateway,
                          "repaired: the gateway address was missing from the bridge; restored it");
                }
                Err(e) => warn!(network = %net.id, "reconcile: cannot restore the gateway: {e}"),
            }
        }
        if net.options.mode != Mode::NatFast || net.internal || super::nat_fast::is_split(net) {
            return;
        }
        keep.insert(net.bridge.clone());
        let bridge_moved = self.reconciler.moved(&net.bridge, bridge_index);
        for ep in net.endpoints.values() {
            let Ok(Some(index)) = self.netlink.index(&ep.host_ifname).await else {
                continue;
            };
            keep.insert(ep.host_ifname.clone());
            let moved = self.reconciler.moved(&ep.host_ifname, index);
            let joined = ep.sandbox.is_some();
            if joined && (bridge_moved || moved || remade.contains(&ep.host_ifname)) {
                super::fast_leave(fastpath, net, ep);
                self.fast_join(fastpath, net, ep, false).await;
                self.reconciler.count("fast-path");
                info!(network = %net.id, endpoint = %ep.id,
                      "repaired: an interface under the endpoint was re-created; back on the fast path");
            }
        }
    }

    /// A split endpoint (`ovs.nat.engine=tc`) whose container pair is there: re-makes
    /// its OVS port's pair (and port) or its patch when they are gone. Returns false
    /// when the container pair itself is gone, which the common veth repair handles
    /// (it re-makes the whole split).
    async fn reconcile_split(&self, net: &Network, ep: &Endpoint, ports: &HashSet<String>) -> bool {
        let (tc_end, _) = super::nat_fast::split_names(ep);
        match self.netlink.exists(&tc_end).await {
            Ok(true) => {}
            Ok(false) => {
                // Also when the OVS pair is there: the veth repair starts anew.
                let _ = self.netlink.delete(&ep.host_ifname).await;
                return false;
            }
            Err(e) => {
                warn!(endpoint = %ep.id, "reconcile: {e}");
                return true;
            }
        }
        let repaired = match self.patch_is_whole(ep).await {
            Ok(Some(true)) => None,
            // The OVS port's pair is gone (one end deleted takes both).
            Ok(None) => Some(("split", "the OVS port's veth pair was gone; re-made it")),
            Ok(Some(false)) => Some(("patch", "the tc patch was not whole; re-made it")),
            Err(e) => {
                warn!(endpoint = %ep.id, "reconcile: {e}");
                return true;
            }
        };
        if let Some((what, message)) = repaired {
            // Re-making the pair re-makes both filters too.
            if let Err(e) = self.make_ovs_pair(net, ep).await {
                warn!(endpoint = %ep.id, "reconcile: cannot re-make the split: {e}");
                return true;
            }
            if ports.contains(&ep.host_ifname) {
                if let Err(e) = self.ovs.delete_port(&net.bridge, &ep.host_ifname).await {
                    warn!(endpoint = %ep.id, "reconcile: cannot replace the port: {e}");
                    return true;
                }
            }
            self.reconciler.count(what);
            info!(network = %net.id, endpoint = %ep.id, port = %ep.host_ifname, "repaired: {message}");
        } else if ports.contains(&ep.host_ifname) {
            return true;
        }
        match self.ovs.add_port(&net.bridge, &port_spec(net, ep)).await {
            Ok(()) if repaired.is_none() => {
                self.reconciler.count("port");
                info!(network = %net.id, endpoint = %ep.id, port = %ep.host_ifname,
                      "repaired: the port was missing from the bridge; re-added it");
            }
            Ok(()) => {}
            Err(e) => warn!(endpoint = %ep.id, "reconcile: cannot re-add the port: {e}"),
        }
        true
    }

    /// Makes `ep`'s veth pair again, moves the container end into `sandbox` and
    /// configures it there, and re-creates the OVS port. Returns the container-side
    /// name.
    async fn repair_veth(
        &self,
        net: &Network,
        ep: &Endpoint,
        sandbox: &str,
        ports: &HashSet<String>,
    ) -> Result<String, String> {
        let netns = std::fs::File::open(sandbox)
            .map_err(|e| format!("cannot open the container's namespace {sandbox}: {e}"))?;
        let mac = Some(ep.mac.0);
        let nl = |e: NetlinkError| e.to_string();
        self.netlink
            .delete(&ep.container_ifname)
            .await
            .map_err(nl)?;
        // A split endpoint's container pair ends in the tc end, not the OVS port.
        let split = super::nat_fast::is_split(net);
        let host_end = match split {
            true => super::nat_fast::split_names(ep).0,
            false => ep.host_ifname.clone(),
        };
        self.netlink
            .create_veth(&host_end, &ep.container_ifname, mac, net.options.mtu)
            .await
            .map_err(nl)?;
        let configured = async {
            if !split {
                self.prepare_container_end(net, &ep.container_ifname)
                    .await
                    .map_err(nl)?;
            }
            self.netlink
                .move_to_netns(&ep.container_ifname, netns.as_raw_fd())
                .await
                .map_err(nl)?;
            let address = ep.address.map(|c| (c.addr, c.prefix));
            let gateway = net.container_gateway();
            let peer = ep.container_ifname.clone();
            tokio::task::block_in_place(|| {
                std::thread::spawn(move || configure_in_netns(netns, &peer, address, gateway))
                    .join()
                    .map_err(|_| "the namespace thread panicked".to_string())?
            })
        };
        let name = match configured.await {
            Ok(name) => name,
            Err(e) => {
                let _ = self.netlink.delete(&host_end).await;
                return Err(e);
            }
        };
        if split {
            self.make_ovs_pair(net, ep).await.map_err(nl)?;
        }
        // A port row whose interface vanished is not re-opened by every datapath:
        // replace it, which makes ovs-vswitchd open the new interface.
        if ports.contains(&ep.host_ifname) {
            self.ovs
                .delete_port(&net.bridge, &ep.host_ifname)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.ovs
            .add_port(&net.bridge, &port_spec(net, ep))
            .await
            .map_err(|e| e.to_string())?;
        Ok(name)
    }
}

/// In a thread of its own that enters the container's network namespace: names the
/// container end the first free `ethN`, gives it `address`, brings it up, and adds a
/// default route through `gateway` when the container has none. Returns the name.
fn configure_in_netns(
    netns: std::fs::File,
    peer: &str,
    address: Option<(Ipv4Addr, u8)>,
    gateway: Option<Ipv4Addr>,
) -> Result<String, String> {
    // SAFETY: setns(2) with a file descriptor we own, open on a network namespace; it
    // changes the namespace of this thread only, a thread made for this call that
    // ends with it.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot enter the container's namespace: {}",
            std::io::Error::last_os_error()
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let nl = |e: NetlinkError| e.to_string();
        // Opened after setns: this socket talks to the container's namespace.
        let netlink = Netlink::new().map_err(nl)?;
        let mut name = None;
        for i in 0..64 {
            let candidate = format!("eth{i}");
            if !netlink.exists(&candidate).await.map_err(nl)? {
                name = Some(candidate);
                break;
            }
        }
        let name = name.ok_or("the container has no free ethN name")?;
        netlink.rename(peer, &name).await.map_err(nl)?;
        match address {
            Some((ip, prefix)) => netlink.set_address_up(&name, ip, prefix).await,
            None => netlink.set_up(&name).await,
        }
        .map_err(nl)?;
        if let (Some(gw), Some(_)) = (gateway, address) {
            if netlink
                .default_route_interface()
                .await
                .map_err(nl)?
                .is_none()
            {
                netlink.add_default_route(gw).await.map_err(nl)?;
            }
        }
        Ok(name)
    })
}

/// Sends a gratuitous ARP for `ip` at `mac` out of interface `ifindex`, so neighbours
/// replace the MAC they hold for `ip`.
fn announce(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> Result<(), String> {
    let mut frame = [0u8; ArpRepr::FRAME_LEN];
    ArpRepr::gratuitous(mac, ip).emit([0xff; 6], &mut frame);
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(format!(
            "cannot open a packet socket for a gratuitous ARP: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    for _ in 0..2 {
        // SAFETY: frame and addr are live for the call, with their true lengths.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(format!(
                "cannot send a gratuitous ARP: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The names of `bridge`'s ports.
fn port_names(bridge: &crate::ovsdb::BridgeInfo) -> HashSet<String> {
    bridge.ports.iter().map(|p| p.name.clone()).collect()
}

/// Whether `bridge` carries the record of a dovesnap network that is not in
/// `networks` (a record this plugin did not trust, another plugin's).
fn foreign(bridge: &crate::ovsdb::BridgeInfo, networks: &HashMap<String, Network>) -> bool {
    (shared::recorded_networks(bridge).iter()).any(|id| !networks.contains_key(*id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ifindex_moves_only_after_it_was_seen() {
        let s = State::default();
        assert!(!s.moved("ovsbr-1", 7), "first sight is not a move");
        assert!(!s.moved("ovsbr-1", 7));
        assert!(s.moved("ovsbr-1", 9));
        assert!(!s.moved("ovsbr-1", 9));
        s.forget(&HashSet::new());
        assert!(!s.moved("ovsbr-1", 11), "forgotten names start over");
    }

    #[test]
    fn repairs_are_counted_by_kind() {
        let s = State::default();
        s.count("veth");
        s.count("bridge");
        s.count("veth");
        let r = s.repairs.lock().unwrap();
        assert_eq!(r.get("veth"), Some(&2));
        assert_eq!(r.get("bridge"), Some(&1));
    }
}
