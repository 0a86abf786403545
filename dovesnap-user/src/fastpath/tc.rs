//! The tc engine's attachments (`ovs.nat.engine=tc`, docs/design/nat-fast-tc.md §2.2,
//! §4): `dovesnap_tc_endpoint` on each split endpoint's container-side host end
//! (`ovst<id>`), `dovesnap_tc_uplink` on its uplink (and, if that is a bridge, on its
//! ports: see [`bridge_ports`]), all on tcx ingress through links
//! this process owns, so a `kill -9` leaves only the persistent legacy patch and every
//! frame takes the kernel path. The endpoint program makes the sessions of new TCP/UDP
//! flows in `CT` itself; both forward what `CT` holds and return `TCX_NEXT` for
//! everything else (the patch → OVS → nft masquerade and DNAT). `PUBLISHED` tells the
//! endpoint program which container ports the kernel's DNAT answers from.

use std::net::Ipv4Addr;
use std::path::Path;

use tracing::{debug, info, warn};

use super::xdp::{
    be_addr, IfaceConfig, PortKey, TcProgram, XdpError, IFACE_ENDPOINT, IFACE_UPLINK,
};
use super::{iface_entry, EndpointSpec, FastPath, FastPathError, Slots, UplinkSpec};
use crate::translator::Protocol;

/// A tc-engine endpoint: its container-side host end's ifindex, its uplink, its
/// address and the container ports the kernel's DNAT publishes for it (`PUBLISHED`).
pub(super) struct TcEndpoint {
    ifindex: u32,
    uplink: String,
    ip: Ipv4Addr,
    published: Vec<PortKey>,
}

/// An uplink carrying `dovesnap_tc_uplink`, and how many tc-engine endpoints use it.
pub(super) struct TcUplink {
    ifindex: u32,
    addr: Ipv4Addr,
    users: usize,
    /// A bridge's ports that carry the program too (name, ifindex): see
    /// [`bridge_ports`].
    ports: Vec<(String, u32)>,
}

/// Where the kernel lists network devices and their attributes.
const SYS_CLASS_NET: &str = "/sys/class/net";

/// The ports (name, ifindex) of `name` if it is a Linux bridge, sorted by name; empty
/// for any other device, or one that is gone.
///
/// A frame for the bridge's address arriving on a port passes the bridge's netfilter
/// hooks (br_netfilter, on wherever Docker runs: `bridge-nf-call-iptables`) before
/// the bridge device's tc ingress, so the uplink program there comes too late: a
/// session's reply looks like a new flow to conntrack and a DNAT rule for a published
/// port equal to the session's external port takes it (the tcx ingress of the port
/// runs before the bridge does, and before its hooks).
pub(super) fn bridge_ports(sys_class_net: &Path, name: &str) -> Vec<(String, u32)> {
    let Ok(dir) = std::fs::read_dir(sys_class_net.join(name).join("brif")) else {
        return Vec::new();
    };
    let mut ports: Vec<(String, u32)> = dir
        .flatten()
        .filter_map(|e| {
            let port = e.file_name().into_string().ok()?;
            let index = std::fs::read_to_string(sys_class_net.join(&port).join("ifindex"));
            Some((port, index.ok()?.trim().parse().ok()?))
        })
        .collect();
    ports.sort();
    ports
}

/// The `IFACES` entry of an uplink only the tc programs read: no socket slots.
fn tc_uplink_entry(addr: Ipv4Addr, ifindex: u32) -> IfaceConfig {
    iface_entry(IFACE_UPLINK, Slots { first: 0, count: 0 }, addr, ifindex)
}

/// The `IFACES` entry of a tc-engine endpoint's host end: the checks of the XDP
/// program's endpoints, no socket slots.
fn tc_endpoint_entry(ep: &EndpointSpec, uplink: &UplinkSpec) -> IfaceConfig {
    IfaceConfig {
        subnet: u32::from_ne_bytes(ep.subnet.addr().octets()),
        netmask: u32::from_ne_bytes(ep.subnet.netmask().octets()),
        fib_ifindex: ep.bridge_ifindex,
        gateway_mac: ep.gateway_mac,
        ..iface_entry(
            IFACE_ENDPOINT,
            Slots { first: 0, count: 0 },
            ep.ip,
            uplink.ifindex,
        )
    }
}

impl FastPath {
    /// Puts a tc-engine endpoint's programs in place: `ep.host_ifname` is the
    /// container-side host end (`ovst<id>`, not the OVS port). Replaces an earlier
    /// attachment of the same name. On error nothing of it is left.
    pub fn add_tc_endpoint(
        &mut self,
        ep: &EndpointSpec,
        uplink: &UplinkSpec,
    ) -> Result<(), FastPathError> {
        self.xdp.tc_programs()?;
        self.xdp.tc_reap_retired();
        if self.tc_endpoints.contains_key(&ep.host_ifname) {
            self.remove_tc_endpoint(&ep.host_ifname);
        }
        self.acquire_tc_uplink(uplink)?;
        let r = (self.xdp)
            .set_tc_iface(ep.host_ifindex, &tc_endpoint_entry(ep, uplink))
            .and_then(|()| self.xdp.tc_attach(TcProgram::Endpoint, &ep.host_ifname));
        if let Err(e) = r {
            let _ = self.xdp.remove_iface(ep.host_ifindex);
            self.release_tc_uplink(&uplink.name);
            return Err(e.into());
        }
        self.tc_endpoints.insert(
            ep.host_ifname.clone(),
            TcEndpoint {
                ifindex: ep.host_ifindex,
                uplink: uplink.name.clone(),
                ip: ep.ip,
                published: Vec::new(),
            },
        );
        info!(port = %ep.host_ifname, ip = %ep.ip, uplink = %uplink.name, "endpoint on the tc engine");
        Ok(())
    }

    /// Takes a tc-engine endpoint off the fast path (Leave, DeleteEndpoint): its
    /// `IFACES` entry goes, so its program passes everything to the patch; the program
    /// itself is retired, not detached (`XdpProgram::tc_retire`), and goes with the
    /// interface's deletion. Idempotent. Returns whether it was one.
    pub fn remove_tc_endpoint(&mut self, host_ifname: &str) -> bool {
        self.xdp.tc_reap_retired();
        if let Err(e) = self.set_tc_published(host_ifname, &[]) {
            warn!(port = %host_ifname, "cannot withdraw its published ports: {e}");
        }
        let Some(ep) = self.tc_endpoints.remove(host_ifname) else {
            return false;
        };
        let _ = self.xdp.remove_iface(ep.ifindex);
        self.xdp.tc_retire(TcProgram::Endpoint, host_ifname);
        self.release_tc_uplink(&ep.uplink);
        true
    }

    /// Tells the endpoint program which of a tc-engine endpoint's container ports the
    /// kernel's DNAT publishes (`(protocol, container port)`), replacing what it was
    /// told before: what leaves them answers flows conntrack carries, so it takes the
    /// kernel's path. An endpoint not on the tc engine is ignored.
    pub fn set_tc_published(
        &mut self,
        host_ifname: &str,
        ports: &[(Protocol, u16)],
    ) -> Result<(), FastPathError> {
        let Some(ep) = self.tc_endpoints.get_mut(host_ifname) else {
            return Ok(());
        };
        let want: Vec<PortKey> = ports
            .iter()
            .map(|&(proto, port)| PortKey {
                addr: be_addr(ep.ip.octets()),
                port: port.to_be(),
                proto: proto.number(),
                _pad: 0,
            })
            .collect();
        for key in ep.published.iter().filter(|k| !want.contains(k)) {
            self.xdp.set_published(*key, false)?;
        }
        ep.published.retain(|k| want.contains(k));
        for key in want {
            if !ep.published.contains(&key) {
                self.xdp.set_published(key, true)?;
                ep.published.push(key);
            }
        }
        Ok(())
    }

    /// The container-side host ends of the tc-engine endpoints.
    pub fn tc_endpoint_names(&self) -> Vec<String> {
        self.tc_endpoints.keys().cloned().collect()
    }

    fn acquire_tc_uplink(&mut self, spec: &UplinkSpec) -> Result<(), FastPathError> {
        match self.tc_uplinks.get_mut(&spec.name) {
            // An idle uplink re-made or re-addressed meanwhile gets a fresh attachment.
            Some(u) if u.users == 0 && (u.ifindex, u.addr) != (spec.ifindex, spec.addr) => {
                self.detach_tc_uplink(&spec.name)
            }
            Some(u) => {
                u.users += 1;
                self.refresh_tc_bridge_ports(spec);
                return Ok(());
            }
            None => {}
        }
        // An uplink the xdp engine uses already has its entry (with its sockets).
        let ours = !self.uplinks.contains_key(&spec.name);
        let r = if ours {
            (self.xdp).set_tc_iface(spec.ifindex, &tc_uplink_entry(spec.addr, spec.ifindex))
        } else {
            Ok(())
        }
        .and_then(|()| self.xdp.tc_attach(TcProgram::Uplink, &spec.name));
        if let Err(e) = r {
            if ours {
                let _ = self.xdp.remove_iface(spec.ifindex);
            }
            return Err(e.into());
        }
        let ports = bridge_ports(Path::new(SYS_CLASS_NET), &spec.name);
        let ports = self.attach_tc_bridge_ports(spec, ports);
        self.tc_uplinks.insert(
            spec.name.clone(),
            TcUplink {
                ifindex: spec.ifindex,
                addr: spec.addr,
                users: 1,
                ports,
            },
        );
        Ok(())
    }

    /// A bridge uplink in use: its ports as they are now (a port added since the last
    /// endpoint joined, or re-made). Each endpoint's Join does this, so a port added
    /// to the bridge gets the program before the next container starts; until then
    /// replies arriving on it pass br_netfilter's hooks first, as on any bridge
    /// without the program on its ports.
    fn refresh_tc_bridge_ports(&mut self, spec: &UplinkSpec) {
        let Some(known) = self.tc_uplinks.get(&spec.name).map(|u| u.ports.clone()) else {
            return;
        };
        let now = bridge_ports(Path::new(SYS_CLASS_NET), &spec.name);
        if now == known {
            return;
        }
        let mut kept = Vec::new();
        for (port, ifindex) in known {
            if now.contains(&(port.clone(), ifindex)) {
                kept.push((port, ifindex));
                continue;
            }
            // Gone or re-made: its link goes (a deleted device took the attachment).
            if let Err(e) = self.xdp.tc_detach(TcProgram::Uplink, &port) {
                debug!(uplink = %spec.name, %port, "bridge port left: {e}");
            }
            let _ = self.xdp.remove_iface(ifindex);
        }
        let new: Vec<_> = now.into_iter().filter(|p| !kept.contains(p)).collect();
        kept.extend(self.attach_tc_bridge_ports(spec, new));
        kept.sort();
        if let Some(u) = self.tc_uplinks.get_mut(&spec.name) {
            u.ports = kept;
        }
    }

    /// If the uplink is a bridge: the uplink program on each of its `ports` as well
    /// (see [`bridge_ports`]), with the uplink's `IFACES` entry. A port that cannot take
    /// it (or is an xdp-engine uplink itself) is left out, logged: the bridge's own
    /// program still carries what arrives there. Returns the ports that took it.
    fn attach_tc_bridge_ports(
        &mut self,
        spec: &UplinkSpec,
        ports: Vec<(String, u32)>,
    ) -> Vec<(String, u32)> {
        let mut done = Vec::new();
        for (port, ifindex) in ports {
            if self.uplinks.contains_key(&port) {
                continue;
            }
            let r = (self.xdp)
                .set_tc_iface(ifindex, &tc_uplink_entry(spec.addr, spec.ifindex))
                .and_then(|()| self.xdp.tc_attach(TcProgram::Uplink, &port));
            match r {
                Ok(()) => done.push((port, ifindex)),
                Err(e) => {
                    let _ = self.xdp.remove_iface(ifindex);
                    warn!(uplink = %spec.name, %port, "tc program not on this bridge port: {e}");
                }
            }
        }
        if !done.is_empty() {
            let names: Vec<&str> = done.iter().map(|(p, _)| p.as_str()).collect();
            info!(uplink = %spec.name, ports = ?names, "tc uplink program on the bridge's ports");
        }
        done
    }

    /// One endpoint fewer on `name`. The uplink's program stays attached with no user
    /// (attaching and detaching a tcx program costs an RCU grace period each, about
    /// 10 ms here, which every `docker run --rm` of a lone container would pay twice)
    /// until [`FastPath::release_idle_tc_uplinks`] (network deletion) or the daemon's
    /// stop. It only forwards frames of `CT` sessions, and a departed endpoint's are
    /// collected.
    fn release_tc_uplink(&mut self, name: &str) {
        if let Some(u) = self.tc_uplinks.get_mut(name) {
            u.users = u.users.saturating_sub(1);
        }
    }

    /// Takes the tc program off every uplink no tc-engine endpoint uses any more
    /// (a tc network was deleted).
    pub fn release_idle_tc_uplinks(&mut self) {
        self.xdp.tc_reap_retired();
        let idle: Vec<String> = (self.tc_uplinks.iter())
            .filter(|(_, u)| u.users == 0)
            .map(|(n, _)| n.clone())
            .collect();
        for name in idle {
            self.detach_tc_uplink(&name);
        }
    }

    fn detach_tc_uplink(&mut self, name: &str) {
        let Some(u) = self.tc_uplinks.remove(name) else {
            return;
        };
        for (port, ifindex) in &u.ports {
            if let Err(e) = self.xdp.tc_detach(TcProgram::Uplink, port) {
                warn!(uplink = %name, %port, "cannot detach the tc program: {e}");
            }
            let _ = self.xdp.remove_iface(*ifindex);
        }
        if let Err(e) = self.xdp.tc_detach(TcProgram::Uplink, name) {
            warn!(uplink = %name, "cannot detach the tc program: {e}");
        }
        if !self.uplinks.contains_key(name) {
            let _ = self.xdp.remove_iface(u.ifindex);
        }
        info!(uplink = %name, "tc engine uplink released");
    }

    /// After the xdp engine released `name`: the tc programs still on it keep an entry.
    pub(super) fn keep_tc_uplink_entry(&mut self, name: &str) -> Result<(), XdpError> {
        match self.tc_uplinks.get(name) {
            Some(u) => (self.xdp).set_tc_iface(u.ifindex, &tc_uplink_entry(u.addr, u.ifindex)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_ports_are_read_from_sysfs() {
        let root = std::env::temp_dir().join(format!("dovesnap-brif-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (dir, file, text) in [
            ("br0/brif/vethb", None, ""),
            ("br0/brif/etha", None, ""),
            ("br0/brif/gone", None, ""),
            ("vethb", Some("ifindex"), "9\n"),
            ("etha", Some("ifindex"), "7\n"),
            ("eth0", Some("ifindex"), "2\n"),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            if let Some(f) = file {
                std::fs::write(root.join(dir).join(f), text).unwrap();
            }
        }
        let ports = bridge_ports(&root, "br0");
        let others = (bridge_ports(&root, "eth0"), bridge_ports(&root, "nothing"));
        std::fs::remove_dir_all(&root).unwrap();
        // A port whose device went away meanwhile is left out.
        assert_eq!(ports, [("etha".to_string(), 7), ("vethb".to_string(), 9)]);
        assert_eq!(others, (vec![], vec![]));
    }
}
