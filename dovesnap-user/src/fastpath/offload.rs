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

use dovesnap_ebpf::{be_addr, CtEntry, FlowAction, FlowKey, PROTO_TCP, PROTO_UDP};
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

/// Something of each direction of an offloaded session: outbound (from the container,
/// arriving on its veth) and inbound (the replies, arriving on the uplink).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Both<T> {
    pub outbound: T,
    pub inbound: T,
}

impl<T> Both<T> {
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> Both<U> {
        Both {
            outbound: f(self.outbound),
            inbound: f(self.inbound),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        [&self.outbound, &self.inbound].into_iter()
    }
}

/// One direction's flow entry: the frames it matches and how they are rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    pub key: FlowKey,
    pub action: FlowAction,
}

/// Where a rewritten frame goes: the device, the Ethernet header, the largest packet.
struct Hop {
    ifindex: u32,
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    mtu: u16,
}

/// Rewrites a frame to the addresses and ports of `reply` reversed (a NAT's rewrite of
/// one direction is the other direction's key, turned around) and sends it to `hop`.
fn rewrite_to(reply: &FlowKey, hop: Hop) -> FlowAction {
    FlowAction {
        src: reply.dst,
        dst: reply.src,
        sport: reply.dport,
        dport: reply.sport,
        out_ifindex: hop.ifindex,
        eth_dst: hop.eth_dst,
        eth_src: hop.eth_src,
        max_len: hop.mtu,
        ..FlowAction::default()
    }
}

/// The two flow entries of an offloaded session, each keyed as its frames arrive (on
/// the endpoint, on the uplink) and rewritten exactly as the translator would:
/// outbound the source becomes `external_ip:external_port` and the MACs uplink -> next
/// hop; inbound the destination becomes the container's address and port and the MACs
/// gateway -> container.
pub fn flow_entries(
    o: &Offloaded,
    up: &UplinkPath,
    next_hop_mac: [u8; 6],
    ep: &EndpointPath,
) -> Both<FlowEntry> {
    let proto = match o.protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Icmp => unreachable!("ICMP sessions are never offloaded"),
    };
    let end = |a: std::net::SocketAddrV4| (be_addr(a.ip().octets()), a.port().to_be());
    let (inside, remote) = (end(o.inside), end(o.remote));
    let external = (be_addr(up.external_ip.octets()), o.external_port.to_be());
    let key = |ifindex, (src, sport): (u32, u16), (dst, dport): (u32, u16)| FlowKey {
        ifindex,
        src,
        dst,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    };
    let keys = Both {
        outbound: key(ep.ifindex, inside, remote),
        inbound: key(up.ifindex, remote, external),
    };
    let to_next_hop = Hop {
        ifindex: up.ifindex,
        eth_dst: next_hop_mac,
        eth_src: up.mac,
        mtu: up.mtu,
    };
    let to_container = Hop {
        ifindex: ep.ifindex,
        eth_dst: ep.mac,
        eth_src: ep.gateway_mac,
        mtu: ep.mtu,
    };
    Both {
        outbound: FlowEntry {
            key: keys.outbound,
            action: rewrite_to(&keys.inbound, to_next_hop),
        },
        inbound: FlowEntry {
            key: keys.inbound,
            action: rewrite_to(&keys.outbound, to_container),
        },
    }
}

/// One direction's `CT` entry of a tc-engine session: the frames it matches and how the
/// tc program rewrites them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtRecord {
    pub key: FlowKey,
    pub entry: CtEntry,
}

/// The two `CT` entries of a translator session for the tc engine (design §3.1): the
/// rewrite of [`flow_entries`], keyed outbound by the container's host end (`ep.ifindex`,
/// where `dovesnap_tc_endpoint` runs) and inbound with ifindex 0 (the `SESSIONS`
/// convention: the uplink program matches on the external address). Outbound frames
/// leave by `bpf_redirect_neigh(up.ifindex)`, which writes their Ethernet header, so
/// the outbound MACs stay zero; inbound ones get the container's and gateway's MACs and
/// go to `bpf_redirect_peer(ep.ifindex)`. `owner` is a `CT_OWNER_*`; `created` is
/// [`monotonic_ns`] at the session's creation. Both directions start with no flags.
pub fn ct_entries(
    o: &Offloaded,
    up: &UplinkPath,
    ep: &EndpointPath,
    owner: u8,
    created: u64,
) -> Both<CtRecord> {
    let flows = flow_entries(o, up, [0; 6], ep);
    let record = |flow: FlowEntry, ifindex: u32, act: FlowAction| CtRecord {
        key: FlowKey {
            ifindex,
            ..flow.key
        },
        entry: CtEntry {
            act,
            created,
            flags: 0,
            owner,
            _pad: [0; 3],
        },
    };
    let out_act = FlowAction {
        eth_src: [0; 6],
        ..flows.outbound.action
    };
    Both {
        outbound: record(flows.outbound, ep.ifindex, out_act),
        inbound: record(flows.inbound, 0, flows.inbound.action),
    }
}

/// One installed session, either direction left out where its output device does not
/// accept XDP redirects (those frames stay on AF_XDP).
#[derive(Clone, Copy, Debug)]
struct Installed {
    keys: Both<Option<FlowKey>>,
    /// The devices the entries redirect to.
    out_ifindex: Both<u32>,
    next_hop_mac: [u8; 6],
}

impl Installed {
    /// Both entries as the kernel holds them now (zeroes for one that is gone or was
    /// never installed).
    fn read(&self, maps: &impl SteeringMaps) -> Both<FlowAction> {
        self.keys.map(|k| {
            k.and_then(|k| maps.flow(&k).ok().flatten())
                .unwrap_or_default()
        })
    }
}

/// An endpoint of an uplink (by the data plane's uplink index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointOf {
    pub uplink: usize,
    pub ip: Ipv4Addr,
}

/// An offloaded session of an uplink (by the data plane's uplink index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionOf {
    pub uplink: usize,
    pub session: Offloaded,
}

impl SessionOf {
    /// The endpoint whose session it is.
    pub fn endpoint(&self) -> EndpointOf {
        EndpointOf {
            uplink: self.uplink,
            ip: *self.session.inside.ip(),
        }
    }
}

/// A device offloads redirect to, and whether it accepts XDP redirects (as last
/// recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectTarget {
    pub ifindex: u32,
    pub accepts: bool,
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
    fn add(&mut self, seen: &Both<FlowAction>) {
        self.out_frames += seen.outbound.packets;
        self.out_bytes += seen.outbound.bytes;
        self.in_frames += seen.inbound.packets;
        self.in_bytes += seen.inbound.bytes;
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
    installed: HashMap<SessionOf, Installed>,
    endpoints: HashMap<EndpointOf, EndpointPath>,
    uplinks: HashMap<usize, UplinkPath>,
    /// Traffic of flows already removed, per endpoint.
    retired: HashMap<EndpointOf, OffloadTraffic>,
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
        self.remove_where(maps, |s, _| s.uplink == idx);
        if let Some(up) = self.uplinks.remove(&idx) {
            let _ = maps.remove_dev(up.ifindex);
        }
        self.retired.retain(|e, _| e.uplink != idx);
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
        self.endpoints.insert(EndpointOf { uplink: idx, ip }, ep);
        Ok(())
    }

    /// Removes the endpoint's flows (normally gone already with its sessions) and its
    /// device.
    pub fn remove_endpoint(&mut self, maps: &mut impl SteeringMaps, idx: usize, ip: Ipv4Addr) {
        self.remove_where(maps, |s, _| s.uplink == idx && *s.session.inside.ip() == ip);
        let of = EndpointOf { uplink: idx, ip };
        if let Some(ep) = self.endpoints.remove(&of) {
            let _ = maps.remove_dev(ep.ifindex);
        }
        self.retired.remove(&of);
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
            .get(&EndpointOf {
                uplink: idx,
                ip: *o.inside.ip(),
            })
            .ok_or(NotOffloaded::Unregistered("endpoint does not offload"))?;
        // A redirect to a device that does not accept it is dropped without a trace:
        // only directions whose output takes redirects go to XDP.
        let wanted = Both {
            outbound: up.redirect_target,
            inbound: ep.redirect_target,
        };
        if !wanted.outbound && !wanted.inbound {
            self.declined += 1;
            return Err(NotOffloaded::NoRedirectTarget);
        }
        let entries = flow_entries(o, up, next_hop_mac, ep);
        let chosen = Both {
            outbound: wanted.outbound.then_some(entries.outbound),
            inbound: wanted.inbound.then_some(entries.inbound),
        };
        for (done, entry) in chosen.iter().flatten().enumerate() {
            if let Err(e) = maps.set_flow(&entry.key, &entry.action) {
                for written in chosen.iter().flatten().take(done) {
                    let _ = maps.remove_flow(&written.key);
                }
                self.failures += 1;
                return Err(NotOffloaded::Map(e));
            }
        }
        self.installs += 1;
        if !(wanted.outbound && wanted.inbound) {
            self.one_way += 1;
        }
        self.installed.insert(
            SessionOf {
                uplink: idx,
                session: *o,
            },
            Installed {
                keys: chosen.map(|e| e.map(|e| e.key)),
                out_ifindex: entries.map(|e| e.action.out_ifindex),
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
    ) -> Vec<SessionOf> {
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
        let stale = self.remove_where(maps, |_, inst| {
            inst.keys
                .iter()
                .zip(inst.out_ifindex.iter())
                .any(|(k, out)| k.is_some() && *out == ifindex)
        });
        self.target_invalidations += stale.len() as u64;
        stale
    }

    /// The devices offloads may redirect to, with what was last recorded of them.
    pub fn redirect_targets(&self) -> Vec<RedirectTarget> {
        let uplinks = self
            .uplinks
            .values()
            .map(|u| (u.ifindex, u.redirect_target));
        let endpoints = self
            .endpoints
            .values()
            .map(|e| (e.ifindex, e.redirect_target));
        uplinks
            .chain(endpoints)
            .map(|(ifindex, accepts)| RedirectTarget { ifindex, accepts })
            .collect()
    }

    /// Whether a session of endpoint `ip` on uplink `idx` can be offloaded at all (one
    /// of its two devices accepts XDP redirects); `None` if the endpoint does not
    /// offload.
    pub fn can_offload(&self, idx: usize, ip: Ipv4Addr) -> Option<bool> {
        let ep = self.endpoints.get(&EndpointOf { uplink: idx, ip })?;
        Some(ep.redirect_target || self.uplink_redirect_target(idx))
    }

    /// Whether uplink `idx` accepts XDP redirects (as last recorded).
    pub fn uplink_redirect_target(&self, idx: usize) -> bool {
        self.uplinks.get(&idx).is_some_and(|u| u.redirect_target)
    }

    /// Removes a session's entries (the translator took it back). Absent is fine.
    pub fn remove(&mut self, maps: &mut impl SteeringMaps, idx: usize, o: &Offloaded) {
        let of = SessionOf {
            uplink: idx,
            session: *o,
        };
        if let Some(inst) = self.installed.remove(&of) {
            self.retire(maps, &of, &inst);
        }
    }

    fn retire(&mut self, maps: &mut impl SteeringMaps, of: &SessionOf, inst: &Installed) {
        self.retired
            .entry(of.endpoint())
            .or_default()
            .add(&inst.read(maps));
        for k in inst.keys.iter().flatten() {
            let _ = maps.remove_flow(k);
        }
        self.removals += 1;
    }

    /// Removes every session `pred(session, entries)` selects; returns them, so the
    /// caller can hand them back to their translators.
    fn remove_where(
        &mut self,
        maps: &mut impl SteeringMaps,
        mut pred: impl FnMut(&SessionOf, &Installed) -> bool,
    ) -> Vec<SessionOf> {
        let chosen: Vec<SessionOf> = self
            .installed
            .iter()
            .filter(|(s, inst)| pred(s, inst))
            .map(|(s, _)| *s)
            .collect();
        for s in &chosen {
            self.remove(maps, s.uplink, &s.session);
        }
        chosen
    }

    /// Sessions whose next hop is no longer `mac` as `current(remote)` reports it
    /// (`None`: unknown or unreachable now).
    pub fn stale_next_hops(
        &self,
        remotes: &[Ipv4Addr],
        mut current: impl FnMut(Ipv4Addr) -> Option<[u8; 6]>,
    ) -> Vec<SessionOf> {
        self.installed
            .iter()
            .filter(|(s, inst)| {
                let remote = *s.session.remote.ip();
                remotes.contains(&remote) && current(remote) != Some(inst.next_hop_mac)
            })
            .map(|(s, _)| *s)
            .collect()
    }

    /// The remote addresses of the installed sessions (each once).
    pub fn remotes(&self) -> Vec<Ipv4Addr> {
        let mut r: Vec<Ipv4Addr> = self
            .installed
            .keys()
            .map(|s| *s.session.remote.ip())
            .collect();
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
        let inst = self.installed.get(&SessionOf {
            uplink: idx,
            session: *o,
        })?;
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

    /// Offloaded traffic per endpoint: removed flows plus the live ones read now.
    pub fn traffic(&self, maps: &impl SteeringMaps) -> HashMap<EndpointOf, OffloadTraffic> {
        let mut t = self.retired.clone();
        for (s, inst) in &self.installed {
            t.entry(s.endpoint()).or_default().add(&inst.read(maps));
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

    use crate::fastpath::fakes::FakeMaps;

    const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const NH: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

    fn session() -> Offloaded {
        Offloaded {
            protocol: Protocol::Tcp,
            inside: SocketAddrV4::new(INSIDE, 43512),
            remote: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 80),
            external_port: 61003,
        }
    }

    fn uplink(redirect_target: bool) -> UplinkPath {
        UplinkPath {
            ifindex: 2,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            external_ip: Ipv4Addr::new(192, 0, 2, 1),
            redirect_target,
        }
    }

    fn endpoint(redirect_target: bool) -> EndpointPath {
        EndpointPath {
            ifindex: 9,
            mac: [2, 0, 0, 0, 1, 2],
            gateway_mac: [2, 0, 0, 0, 1, 1],
            mtu: 1400,
            redirect_target,
        }
    }

    /// Uplink 0 and the endpoint `INSIDE` on it, each accepting redirects or not.
    fn registered(up: bool, ep: bool) -> (Offloads, FakeMaps) {
        let (mut offloads, mut maps) = (Offloads::default(), FakeMaps::default());
        offloads
            .add_uplink(&mut maps, 0, uplink(up))
            .expect("uplink");
        offloads
            .add_endpoint(&mut maps, 0, INSIDE, endpoint(ep))
            .expect("endpoint");
        (offloads, maps)
    }

    #[test]
    fn install_writes_both_entries_and_remove_takes_them_back() {
        let (mut offloads, mut maps) = registered(true, true);
        assert_eq!(maps.devs.iter().copied().collect::<Vec<_>>(), [2, 9]);
        let o = session();
        offloads.install(&mut maps, 0, &o, NH).expect("installed");
        let want = flow_entries(&o, &uplink(true), NH, &endpoint(true));
        for e in want.iter() {
            assert_eq!(maps.flows.get(&e.key), Some(&e.action));
        }
        assert_eq!(
            (offloads.len(), offloads.installs, offloads.one_way),
            (1, 1, 0)
        );
        assert_eq!(offloads.remotes(), [*o.remote.ip()]);
        assert_eq!(offloads.can_offload(0, INSIDE), Some(true));

        // The program counted frames; they stay in the endpoint's traffic after removal.
        for e in want.iter() {
            maps.flows.get_mut(&e.key).expect("entry").packets = 3;
        }
        offloads.remove(&mut maps, 0, &o);
        assert!(maps.flows.is_empty());
        assert_eq!((offloads.len(), offloads.removals), (0, 1));
        let of = EndpointOf {
            uplink: 0,
            ip: INSIDE,
        };
        let t = offloads.traffic(&maps)[&of];
        assert_eq!((t.out_frames, t.in_frames), (3, 3));

        offloads.remove_endpoint(&mut maps, 0, INSIDE);
        offloads.remove_uplink(&mut maps, 0);
        assert!(maps.devs.is_empty());
        assert!(offloads.traffic(&maps).is_empty());
    }

    #[test]
    fn only_directions_whose_device_takes_redirects_go_to_xdp() {
        let (mut offloads, mut maps) = registered(false, true);
        let o = session();
        offloads.install(&mut maps, 0, &o, NH).expect("installed");
        let want = flow_entries(&o, &uplink(false), NH, &endpoint(true));
        assert_eq!(maps.flows.keys().collect::<Vec<_>>(), [&want.inbound.key]);
        assert_eq!(offloads.one_way, 1);

        let (mut offloads, mut maps) = registered(false, false);
        assert_eq!(offloads.can_offload(0, INSIDE), Some(false));
        let e = offloads.install(&mut maps, 0, &o, NH).unwrap_err();
        assert!(matches!(e, NotOffloaded::NoRedirectTarget), "{e:?}");
        assert!(!e.is_failure());
        assert!(maps.flows.is_empty());
        assert_eq!((offloads.len(), offloads.declined), (0, 1));
    }

    #[test]
    fn a_refused_write_leaves_nothing_installed() {
        let (mut offloads, mut maps) = registered(true, true);
        maps.flow_writes_left = Some(1);
        let e = offloads.install(&mut maps, 0, &session(), NH).unwrap_err();
        assert!(matches!(e, NotOffloaded::Map(_)) && e.is_failure(), "{e:?}");
        assert!(maps.flows.is_empty(), "the outbound entry was taken back");
        assert_eq!((offloads.len(), offloads.failures), (0, 1));
        let e = Offloads::default()
            .install(&mut maps, 0, &session(), NH)
            .unwrap_err();
        assert_eq!(e.to_string(), "uplink not registered");
    }

    #[test]
    fn sessions_leave_xdp_when_their_next_hop_or_device_changes() {
        let (mut offloads, mut maps) = registered(true, true);
        let o = session();
        offloads.install(&mut maps, 0, &o, NH).expect("installed");
        let remote = *o.remote.ip();
        assert!(offloads.stale_next_hops(&[remote], |_| Some(NH)).is_empty());
        let moved = offloads.stale_next_hops(&[remote], |_| Some([2, 0, 0, 0, 0, 0xfd]));
        let this = SessionOf {
            uplink: 0,
            session: o,
        };
        assert_eq!(moved, [this]);
        assert_eq!(offloads.stale_next_hops(&[remote], |_| None), [this]);

        let targets = offloads.redirect_targets();
        assert!(targets.contains(&RedirectTarget {
            ifindex: 9,
            accepts: true
        }));
        assert!(offloads.set_redirect_target(&mut maps, 9, true).is_empty());
        assert_eq!(offloads.set_redirect_target(&mut maps, 9, false), [this]);
        assert!(maps.flows.is_empty());
        assert_eq!(offloads.target_invalidations, 1);
        assert_eq!(
            offloads.can_offload(0, INSIDE),
            Some(true),
            "the uplink still does"
        );
    }

    #[test]
    fn entries_mirror_the_translators_rewrite() {
        let o = session();
        let (up, ep) = (uplink(true), endpoint(true));
        let nh = NH;
        let Both {
            outbound: FlowEntry {
                key: ok,
                action: oa,
            },
            inbound: FlowEntry {
                key: ik,
                action: ia,
            },
        } = flow_entries(&o, &up, nh, &ep);
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

    #[test]
    fn ct_entries_key_the_reply_by_the_external_address() {
        use dovesnap_ebpf::CT_OWNER_TRANSLATOR;
        let o = Offloaded {
            protocol: Protocol::Udp,
            ..session()
        };
        let (up, ep) = (uplink(false), endpoint(false));
        let ct = ct_entries(&o, &up, &ep, CT_OWNER_TRANSLATOR, 77);
        let flows = flow_entries(&o, &up, NH, &ep);
        // Outbound: keyed on the container's host end; out of the uplink, whose neighbour
        // the kernel resolves (no MACs); the rewrite is the translator's.
        let (ok, oe) = (ct.outbound.key, ct.outbound.entry);
        assert_eq!(ok, flows.outbound.key);
        assert_eq!((ok.ifindex, ok.proto), (9, PROTO_UDP));
        assert_eq!(
            (oe.act.src, oe.act.sport),
            (flows.outbound.action.src, flows.outbound.action.sport)
        );
        assert_eq!(
            (oe.act.dst, oe.act.dport),
            (flows.outbound.action.dst, flows.outbound.action.dport)
        );
        assert_eq!((oe.act.out_ifindex, oe.act.max_len), (2, 1500));
        assert_eq!((oe.act.eth_dst, oe.act.eth_src), ([0; 6], [0; 6]));
        // Inbound: remote -> external as it arrives, with no interface (SESSIONS style);
        // into the container through its host end, with the container's MACs.
        let (ik, ie) = (ct.inbound.key, ct.inbound.entry);
        assert_eq!(
            ik,
            FlowKey {
                ifindex: 0,
                ..flows.inbound.key
            }
        );
        assert_eq!(ik.dst.to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!(ik.dport.to_ne_bytes(), 61003u16.to_be_bytes());
        assert_eq!(ie.act, flows.inbound.action);
        assert_eq!(
            (ie.act.out_ifindex, ie.act.eth_dst, ie.act.eth_src),
            (9, ep.mac, ep.gateway_mac)
        );
        for e in [oe, ie] {
            assert_eq!(
                (e.created, e.flags, e.owner, e._pad),
                (77, 0, CT_OWNER_TRANSLATOR, [0; 3])
            );
            assert_eq!((e.act.last_seen, e.act.packets, e.act.bytes), (0, 0, 0));
        }
    }
}
