//! Established-flow offload: the translator's sessions as XDP flow entries.
//!
//! The translator owns every session. Once one is established both ways
//! ([`Translator::take_offload`](crate::translator::Translator::take_offload)), the data plane
//! installs two `FLOWS` entries (one per direction, keyed as frames arrive) carrying the
//! exact rewrite the translator does, and the XDP program forwards the session's frames
//! itself through `DEVS`. The entries go when the translator takes the session back
//! (removed, expired, a SYN/FIN/RST seen, endpoint gone), when the next hop behind them
//! changes, or when their uplink goes. The kernel's per-entry `last_seen` keeps an
//! offloaded session from expiring while it is busy.
//!
//! [`flow_entries`] is pure; [`Offloads`] keeps what is installed and talks to the maps.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dovesnap_ebpf::{be_addr, FlowAction, FlowKey, PROTO_TCP, PROTO_UDP};
use serde::{Deserialize, Serialize};

use crate::fastpath::frameio::SteeringMaps;
use crate::fastpath::xdp::XdpError;
use crate::translator::{Offloaded, Protocol};

/// Where an uplink's offloaded frames leave from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkPath {
    pub ifindex: u32,
    /// Source MAC of frames sent out.
    pub mac: [u8; 6],
    /// Largest IPv4 packet sent out (the uplink's MTU).
    pub mtu: u16,
    /// The translated-to address.
    pub external_ip: Ipv4Addr,
    /// Frames redirected to it by XDP are sent ([`crate::host::netdev::XdpFeatures`]).
    pub redirect_target: bool,
}

/// Where an endpoint's offloaded frames are delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointPath {
    /// The veth host end (frames redirected there reach the container).
    pub ifindex: u32,
    /// The container's MAC.
    pub mac: [u8; 6],
    /// The gateway's MAC: source of frames delivered to the container.
    pub gateway_mac: [u8; 6],
    /// Largest IPv4 packet delivered (the veth's MTU).
    pub mtu: u16,
    /// Frames redirected to the veth by XDP reach the container (its peer has GRO on).
    pub redirect_target: bool,
}

/// The two flow entries of an offloaded session: `[outbound, inbound]`, each keyed as
/// its frames arrive (on the endpoint, on the uplink) and rewritten exactly as the
/// translator would: outbound the source becomes `external_ip:external_port` and the
/// MACs uplink -> next hop; inbound the destination becomes the container's address and
/// port and the MACs gateway -> container.
pub fn flow_entries(
    o: &Offloaded,
    up: &UplinkPath,
    next_hop_mac: [u8; 6],
    ep: &EndpointPath,
) -> [(FlowKey, FlowAction); 2] {
    let proto = match o.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Icmp => unreachable!("ICMP sessions are never offloaded"),
    };
    let inside = be_addr(o.inside.ip().octets());
    let remote = be_addr(o.remote.ip().octets());
    let external = be_addr(up.external_ip.octets());
    let (in_port, remote_port, ext_port) = (
        o.inside.port().to_be(),
        o.remote.port().to_be(),
        o.external_port.to_be(),
    );
    let key = |ifindex, src, dst, sport, dport| FlowKey {
        ifindex,
        src,
        dst,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    };
    let out = (
        key(ep.ifindex, inside, remote, in_port, remote_port),
        FlowAction {
            src: external,
            dst: remote,
            sport: ext_port,
            dport: remote_port,
            out_ifindex: up.ifindex,
            eth_dst: next_hop_mac,
            eth_src: up.mac,
            max_len: up.mtu,
            ..FlowAction::default()
        },
    );
    let inb = (
        key(up.ifindex, remote, external, remote_port, ext_port),
        FlowAction {
            src: remote,
            dst: inside,
            sport: remote_port,
            dport: in_port,
            out_ifindex: ep.ifindex,
            eth_dst: ep.mac,
            eth_src: ep.gateway_mac,
            max_len: ep.mtu,
            ..FlowAction::default()
        },
    );
    [out, inb]
}

/// One installed session: `[outbound, inbound]`, either left out where its output
/// device does not accept XDP redirects (those frames stay on AF_XDP).
#[derive(Clone, Copy, Debug)]
struct Installed {
    keys: [Option<FlowKey>; 2],
    /// The devices the entries redirect to.
    out_ifindex: [u32; 2],
    next_hop_mac: [u8; 6],
}

impl Installed {
    /// Both entries as the kernel holds them now (zeroes for one that is gone or was
    /// never installed).
    fn read(&self, maps: &impl SteeringMaps) -> [FlowAction; 2] {
        self.keys.map(|k| {
            k.and_then(|k| maps.flow(&k).ok().flatten())
                .unwrap_or_default()
        })
    }
}

/// Frames and bytes the XDP program forwarded for one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OffloadTraffic {
    pub out_frames: u64,
    pub out_bytes: u64,
    pub in_frames: u64,
    pub in_bytes: u64,
}

impl OffloadTraffic {
    fn add(&mut self, out: &FlowAction, inb: &FlowAction) {
        self.out_frames += out.packets;
        self.out_bytes += out.bytes;
        self.in_frames += inb.packets;
        self.in_bytes += inb.bytes;
    }
}

/// Why a session offered for offload stays on AF_XDP.
#[derive(Debug, thiserror::Error)]
pub enum NotOffloaded {
    /// Its next hop is not resolved yet: the next packet offers it again.
    #[error("its next hop is not resolved yet")]
    NextHopPending,
    /// Neither its uplink nor its veth accepts XDP redirects.
    #[error("neither device accepts XDP redirects")]
    NoRedirectTarget,
    #[error("{0}")]
    Unregistered(&'static str),
    #[error(transparent)]
    Map(#[from] crate::fastpath::xdp::XdpError),
}

impl NotOffloaded {
    /// Worth a warning: something failed, rather than the session not being ready.
    pub fn is_failure(&self) -> bool {
        matches!(self, NotOffloaded::Unregistered(_) | NotOffloaded::Map(_))
    }
}

/// The offloaded sessions of every uplink (by the data plane's uplink index), the
/// endpoints that allow offload, and the devices registered in `DEVS`.
#[derive(Default)]
pub struct Offloads {
    installed: HashMap<(usize, Offloaded), Installed>,
    endpoints: HashMap<(usize, Ipv4Addr), EndpointPath>,
    uplinks: HashMap<usize, UplinkPath>,
    /// Traffic of flows already removed, per (uplink, container address).
    retired: HashMap<(usize, Ipv4Addr), OffloadTraffic>,
    pub installs: u64,
    pub removals: u64,
    pub failures: u64,
    /// Sessions taken off XDP because their next hop changed.
    pub nexthop_invalidations: u64,
    /// Sessions offloaded in one direction only: the other one's output device does not
    /// accept XDP redirects.
    pub one_way: u64,
    /// Offers declined because neither device accepts XDP redirects: the session stays
    /// whole on AF_XDP and is offered again with its next packet, so this counts
    /// offers, not sessions.
    pub declined: u64,
    /// Sessions taken off XDP because a device stopped accepting redirects.
    pub target_invalidations: u64,
}

impl Offloads {
    /// Registers an uplink as a redirect target.
    pub fn add_uplink(
        &mut self,
        maps: &mut impl SteeringMaps,
        idx: usize,
        up: UplinkPath,
    ) -> Result<(), XdpError> {
        maps.set_dev(up.ifindex)?;
        self.uplinks.insert(idx, up);
        Ok(())
    }

    /// Removes an uplink's flows, then the uplink from the redirect targets.
    pub fn remove_uplink(&mut self, maps: &mut impl SteeringMaps, idx: usize) {
        self.remove_where(maps, |u, _, _| u == idx);
        if let Some(up) = self.uplinks.remove(&idx) {
            let _ = maps.remove_dev(up.ifindex);
        }
        self.retired.retain(|(u, _), _| *u != idx);
    }

    /// Lets `ip`'s sessions on uplink `idx` be offloaded to `ep`.
    pub fn add_endpoint(
        &mut self,
        maps: &mut impl SteeringMaps,
        idx: usize,
        ip: Ipv4Addr,
        ep: EndpointPath,
    ) -> Result<(), XdpError> {
        maps.set_dev(ep.ifindex)?;
        self.endpoints.insert((idx, ip), ep);
        Ok(())
    }

    /// Removes the endpoint's flows (normally gone already with its sessions) and its
    /// device.
    pub fn remove_endpoint(&mut self, maps: &mut impl SteeringMaps, idx: usize, ip: Ipv4Addr) {
        self.remove_where(maps, |u, o, _| u == idx && *o.inside.ip() == ip);
        if let Some(ep) = self.endpoints.remove(&(idx, ip)) {
            let _ = maps.remove_dev(ep.ifindex);
        }
        self.retired.remove(&(idx, ip));
    }

    /// Installs a session's two entries. On error nothing stays installed, and the
    /// caller gives the session back to the translator.
    pub fn install(
        &mut self,
        maps: &mut impl SteeringMaps,
        idx: usize,
        o: &Offloaded,
        next_hop_mac: [u8; 6],
    ) -> Result<(), NotOffloaded> {
        let up = self
            .uplinks
            .get(&idx)
            .ok_or(NotOffloaded::Unregistered("uplink not registered"))?;
        let ep = self
            .endpoints
            .get(&(idx, *o.inside.ip()))
            .ok_or(NotOffloaded::Unregistered("endpoint does not offload"))?;
        // A redirect to a device that does not accept it is dropped without a trace:
        // only directions whose output takes redirects go to XDP.
        let wanted = [up.redirect_target, ep.redirect_target];
        if wanted == [false, false] {
            self.declined += 1;
            return Err(NotOffloaded::NoRedirectTarget);
        }
        let entries = flow_entries(o, up, next_hop_mac, ep);
        let mut keys = [None; 2];
        for (i, (k, a)) in entries.iter().enumerate() {
            if !wanted[i] {
                continue;
            }
            if let Err(e) = maps.set_flow(k, a) {
                for k in keys.iter().flatten() {
                    let _ = maps.remove_flow(k);
                }
                self.failures += 1;
                return Err(NotOffloaded::Map(e));
            }
            keys[i] = Some(*k);
        }
        self.installs += 1;
        if wanted != [true, true] {
            self.one_way += 1;
        }
        self.installed.insert(
            (idx, *o),
            Installed {
                keys,
                out_ifindex: [entries[0].1.out_ifindex, entries[1].1.out_ifindex],
                next_hop_mac,
            },
        );
        Ok(())
    }

    /// Records whether `ifindex` (an uplink or an endpoint's veth) accepts XDP
    /// redirects now. When it stopped, the sessions redirected to it leave XDP and are
    /// returned, for the caller to hand back to their translators (the next packet
    /// offloads them again in the direction that still works).
    pub fn set_redirect_target(
        &mut self,
        maps: &mut impl SteeringMaps,
        ifindex: u32,
        target: bool,
    ) -> Vec<(usize, Offloaded)> {
        let paths = self
            .uplinks
            .values_mut()
            .filter(|u| u.ifindex == ifindex)
            .map(|u| &mut u.redirect_target)
            .chain(
                self.endpoints
                    .values_mut()
                    .filter(|e| e.ifindex == ifindex)
                    .map(|e| &mut e.redirect_target),
            );
        for t in paths {
            *t = target;
        }
        if target {
            return Vec::new();
        }
        let stale = self.remove_where(maps, |_, _, inst| {
            inst.keys
                .iter()
                .zip(inst.out_ifindex)
                .any(|(k, out)| k.is_some() && out == ifindex)
        });
        self.target_invalidations += stale.len() as u64;
        stale
    }

    /// The devices offloads may redirect to, with what was last recorded of them.
    pub fn redirect_targets(&self) -> Vec<(u32, bool)> {
        self.uplinks
            .values()
            .map(|u| (u.ifindex, u.redirect_target))
            .chain(
                self.endpoints
                    .values()
                    .map(|e| (e.ifindex, e.redirect_target)),
            )
            .collect()
    }

    /// Whether a session of endpoint `ip` on uplink `idx` can be offloaded at all (one
    /// of its two devices accepts XDP redirects); `None` if the endpoint does not
    /// offload.
    pub fn can_offload(&self, idx: usize, ip: Ipv4Addr) -> Option<bool> {
        let ep = self.endpoints.get(&(idx, ip))?;
        Some(ep.redirect_target || self.uplink_redirect_target(idx))
    }

    /// Whether uplink `idx` accepts XDP redirects (as last recorded).
    pub fn uplink_redirect_target(&self, idx: usize) -> bool {
        self.uplinks.get(&idx).is_some_and(|u| u.redirect_target)
    }

    /// Removes a session's entries (the translator took it back). Absent is fine.
    pub fn remove(&mut self, maps: &mut impl SteeringMaps, idx: usize, o: &Offloaded) {
        if let Some(inst) = self.installed.remove(&(idx, *o)) {
            self.retire(maps, idx, o, &inst);
        }
    }

    fn retire(
        &mut self,
        maps: &mut impl SteeringMaps,
        idx: usize,
        o: &Offloaded,
        inst: &Installed,
    ) {
        let [out, inb] = inst.read(maps);
        self.retired
            .entry((idx, *o.inside.ip()))
            .or_default()
            .add(&out, &inb);
        for k in inst.keys.iter().flatten() {
            let _ = maps.remove_flow(k);
        }
        self.removals += 1;
    }

    /// Removes every session `pred(uplink, session, entries)` selects; returns them,
    /// so the caller can hand them back to their translators.
    fn remove_where(
        &mut self,
        maps: &mut impl SteeringMaps,
        mut pred: impl FnMut(usize, &Offloaded, &Installed) -> bool,
    ) -> Vec<(usize, Offloaded)> {
        let chosen: Vec<(usize, Offloaded)> = self
            .installed
            .iter()
            .filter(|((u, o), inst)| pred(*u, o, inst))
            .map(|(k, _)| *k)
            .collect();
        for (u, o) in &chosen {
            self.remove(maps, *u, o);
        }
        chosen
    }

    /// Sessions whose next hop is no longer `mac` as `current(remote)` reports it
    /// (`None`: unknown or unreachable now).
    pub fn stale_next_hops(
        &self,
        remotes: &[Ipv4Addr],
        mut current: impl FnMut(Ipv4Addr) -> Option<[u8; 6]>,
    ) -> Vec<(usize, Offloaded)> {
        self.installed
            .iter()
            .filter(|((_, o), inst)| {
                remotes.contains(o.remote.ip())
                    && current(*o.remote.ip()) != Some(inst.next_hop_mac)
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// The remote addresses of the installed sessions (each once).
    pub fn remotes(&self) -> Vec<Ipv4Addr> {
        let mut r: Vec<Ipv4Addr> = self.installed.keys().map(|(_, o)| *o.remote.ip()).collect();
        r.sort_unstable();
        r.dedup();
        r
    }

    /// When the XDP program last forwarded a frame of the session, on the `Instant`
    /// clock (`now` and the kernel's monotonic clock read together).
    pub fn last_seen(
        &self,
        maps: &impl SteeringMaps,
        idx: usize,
        o: &Offloaded,
        now: Instant,
        now_mono_ns: u64,
    ) -> Option<Instant> {
        let inst = self.installed.get(&(idx, *o))?;
        let newest = inst
            .keys
            .iter()
            .flatten()
            .filter_map(|k| maps.flow(k).ok().flatten())
            .map(|a| a.last_seen)
            .max()
            .filter(|t| *t != 0)?;
        let ago = Duration::from_nanos(now_mono_ns.saturating_sub(newest));
        now.checked_sub(ago)
    }

    /// Offloaded traffic per (uplink, container address): removed flows plus the live
    /// ones read now.
    pub fn traffic(&self, maps: &impl SteeringMaps) -> HashMap<(usize, Ipv4Addr), OffloadTraffic> {
        let mut t = self.retired.clone();
        for ((idx, o), inst) in &self.installed {
            let [out, inb] = inst.read(maps);
            t.entry((*idx, *o.inside.ip())).or_default().add(&out, &inb);
        }
        t
    }

    /// Installed sessions.
    pub fn len(&self) -> usize {
        self.installed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.installed.is_empty()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// An interface's MTU (in the calling thread's network namespace), or 1500 if it
/// cannot be read.
pub fn mtu_of(ifname: &str) -> u16 {
    crate::host::ethtool::mtu(ifname)
        .and_then(|m| u16::try_from(m).ok())
        .unwrap_or(1500)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    #[test]
    fn entries_mirror_the_translators_rewrite() {
        let o = Offloaded {
            protocol: Protocol::Tcp,
            inside: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 43512),
            remote: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 80),
            external_port: 61003,
        };
        let up = UplinkPath {
            ifindex: 2,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            external_ip: Ipv4Addr::new(192, 0, 2, 1),
            redirect_target: true,
        };
        let ep = EndpointPath {
            ifindex: 9,
            mac: [2, 0, 0, 0, 1, 2],
            gateway_mac: [2, 0, 0, 0, 1, 1],
            mtu: 1400,
            redirect_target: true,
        };
        let nh = [2, 0, 0, 0, 0, 0xfe];
        let [(ok, oa), (ik, ia)] = flow_entries(&o, &up, nh, &ep);
        // Keys hold wire bytes.
        assert_eq!(ok.ifindex, 9);
        assert_eq!(ok.src.to_ne_bytes(), [10, 0, 0, 2]);
        assert_eq!(ok.dst.to_ne_bytes(), [198, 51, 100, 7]);
        assert_eq!(ok.sport.to_ne_bytes(), 43512u16.to_be_bytes());
        assert_eq!(ok.dport.to_ne_bytes(), 80u16.to_be_bytes());
        assert_eq!(ok.proto, PROTO_TCP);
        assert_eq!(oa.src.to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!(oa.sport.to_ne_bytes(), 61003u16.to_be_bytes());
        assert_eq!(
            (oa.out_ifindex, oa.eth_dst, oa.eth_src, oa.max_len),
            (2, nh, up.mac, 1500)
        );
        // The reply as it arrives on the uplink, and where it goes.
        assert_eq!(ik.ifindex, 2);
        assert_eq!(ik.src.to_ne_bytes(), [198, 51, 100, 7]);
        assert_eq!(ik.dst.to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!(ik.sport.to_ne_bytes(), 80u16.to_be_bytes());
        assert_eq!(ik.dport.to_ne_bytes(), 61003u16.to_be_bytes());
        assert_eq!(ia.dst.to_ne_bytes(), [10, 0, 0, 2]);
        assert_eq!(ia.dport.to_ne_bytes(), 43512u16.to_be_bytes());
        assert_eq!(
            (ia.out_ifindex, ia.eth_dst, ia.eth_src, ia.max_len),
            (9, ep.mac, ep.gateway_mac, 1400)
        );
        assert_eq!((oa.last_seen, oa.packets, ia.bytes), (0, 0, 0));
    }
}
