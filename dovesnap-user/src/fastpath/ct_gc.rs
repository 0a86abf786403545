//! Garbage collection of the tc engine's `CT` sessions that the tc programs created
//! themselves ([`CT_OWNER_KERNEL`]): nothing in userspace created them, so nothing else
//! would ever delete them, and their inbound key holds an external port of
//! `--nat-kernel-ports` for as long as it exists.
//!
//! Once a second (less often when the map is huge, [`interval_after`]) the data-plane
//! thread reads `CT` ([`SteeringMaps::ct_entries`]), pairs
//! each kernel-owned outbound entry (ifindex != 0) with its inbound one, judges the
//! session by both directions' TCP flags and its newest activity ([`CtState`], a pure
//! function), and deletes both keys, inbound first, once it has been idle longer than
//! its state allows. The timers are conntrack's in spirit but bounded: the external
//! ports are the scarce resource, and what the hosts do after a close (TIME_WAIT, a late
//! ACK) needs no mapping. Entries of other owners (the translator's, adopted ones) are
//! left alone: their owner removes them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dovesnap_ebpf::{
    CtEntry, FlowKey, CT_FIN, CT_OWNER_ADOPTED, CT_OWNER_KERNEL, CT_OWNER_TRANSLATOR, CT_RST,
    CT_SYN_ACK, PROTO_TCP,
};
use serde::{Deserialize, Serialize};

use crate::fastpath::frameio::SteeringMaps;
use crate::fastpath::xdp::XdpError;

/// How often the data-plane thread sweeps `CT` (at most; see [`interval_after`]).
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A sweep may take at most this share of the data-plane thread's time: one that took
/// longer puts the next one off (see [`interval_after`]).
const DUTY_DIVISOR: u32 = 20;
/// A TCP session with a RST seen either way.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(1);
/// A TCP session with a FIN seen both ways.
pub const CLOSED_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP session with a FIN seen one way only (the other side may still send).
pub const HALF_CLOSED_TIMEOUT: Duration = Duration::from_secs(120);
/// A TCP session whose SYN got no SYN-ACK yet.
pub const OPENING_TIMEOUT: Duration = Duration::from_secs(20);
/// An established TCP session (a SYN-ACK was seen), idle.
pub const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// A UDP (or other datagram) session, idle.
pub const DATAGRAM_TIMEOUT: Duration = Duration::from_secs(60);
/// How old an entry whose other direction is missing must be before it goes: the tc
/// program inserts the inbound entry a moment before the outbound one, and a sweep may
/// read between the two.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(1);
/// The most entries one sweep reads (a bound on a walk that concurrent deletions keep
/// restarting); far above `CT`'s default capacity.
const MAX_READ: usize = 1 << 22;

/// A session's state, from the union of both directions' flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtState {
    /// TCP, a SYN without a SYN-ACK yet.
    Opening,
    /// TCP, a SYN-ACK seen.
    Established,
    /// TCP, a FIN seen one way.
    HalfClosed,
    /// TCP, a FIN seen both ways.
    Closed,
    /// TCP, a RST seen either way.
    Reset,
    /// UDP, or any protocol without TCP's states.
    Datagram,
}

impl CtState {
    /// The state of a session of `proto` whose outbound and inbound entries carry these
    /// `flags` (`CT_*` bits).
    pub fn of(proto: u8, outbound: u32, inbound: u32) -> CtState {
        if proto != PROTO_TCP {
            return CtState::Datagram;
        }
        let both = outbound | inbound;
        if both & CT_RST != 0 {
            CtState::Reset
        } else if outbound & inbound & CT_FIN != 0 {
            CtState::Closed
        } else if both & CT_FIN != 0 {
            CtState::HalfClosed
        } else if both & CT_SYN_ACK != 0 {
            CtState::Established
        } else {
            CtState::Opening
        }
    }

    /// How long a session in this state may stay idle.
    pub fn timeout(self) -> Duration {
        match self {
            CtState::Opening => OPENING_TIMEOUT,
            CtState::Established => ESTABLISHED_TIMEOUT,
            CtState::HalfClosed => HALF_CLOSED_TIMEOUT,
            CtState::Closed => CLOSED_TIMEOUT,
            CtState::Reset => RESET_TIMEOUT,
            CtState::Datagram => DATAGRAM_TIMEOUT,
        }
    }
}

/// When the next sweep is due after one that took `took`: [`INTERVAL`], or later when
/// the map is so full that sweeping every second would take more than 1/20 of the
/// thread's time from the frames (the timers are seconds to hours: a late sweep only
/// frees ports a little later).
pub fn interval_after(took: Duration) -> Duration {
    INTERVAL.max(took.saturating_mul(DUTY_DIVISOR))
}

/// The entry's newest activity: its last forwarded frame, or its creation
/// (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
fn newest(e: &CtEntry) -> u64 {
    e.created.max(e.act.last_seen)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether the session of `key`'s protocol with these two entries has been idle longer
/// than its state allows at `now_ns` (CLOCK_MONOTONIC, the programs' clock).
pub fn expired(proto: u8, outbound: &CtEntry, inbound: &CtEntry, now_ns: u64) -> bool {
    let state = CtState::of(proto, outbound.flags, inbound.flags);
    let last = newest(outbound).max(newest(inbound));
    now_ns.saturating_sub(last) >= nanos(state.timeout())
}

/// The inbound key of the session whose outbound entry is (`key`, `entry`): the reply
/// from the remote to the external address and port the outbound rewrite gives.
pub fn inbound_key(key: &FlowKey, entry: &CtEntry) -> FlowKey {
    FlowKey {
        ifindex: 0,
        src: key.dst,
        dst: entry.act.src,
        sport: key.dport,
        dport: entry.act.sport,
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// The outbound key of the session whose inbound entry is (`key`, `entry`): from the
/// container (the inbound rewrite's destination) on its host end (where the inbound
/// frames are redirected to) to the remote.
pub fn outbound_key(key: &FlowKey, entry: &CtEntry) -> FlowKey {
    FlowKey {
        ifindex: entry.act.out_ifindex,
        src: entry.act.dst,
        dst: key.src,
        sport: entry.act.dport,
        dport: key.sport,
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// `CT` as the last sweep found it, and what the sweeps did: for `dovesnap status`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct CtTally {
    /// Sessions (outbound entries) the tc programs created.
    pub kernel: u64,
    /// Sessions the translator wrote.
    pub translator: u64,
    /// Sessions adopted from conntrack.
    pub adopted: u64,
    /// Kernel sessions the sweeps deleted since start (expired or half gone).
    pub removed: u64,
    /// Deletions or reads that failed (the entries stay for the next sweep).
    pub failed: u64,
}

impl CtTally {
    /// The numbers as status counters.
    pub fn list(&self) -> [(&'static str, u64); 5] {
        [
            ("ct_sessions_kernel", self.kernel),
            ("ct_sessions_translator", self.translator),
            ("ct_sessions_adopted", self.adopted),
            ("ct_gc_removed", self.removed),
            ("ct_gc_failed", self.failed),
        ]
    }
}

/// The conntrack entries that carry on the tc programs' sessions when the fast path
/// goes down (a panic, a stall, a clean stop): TCP once answered and not reset or
/// closed both ways, UDP always. Their mappings stay, so the far side sees no change
/// while the kernel's path carries them. An unreadable map gives none.
pub fn handover(maps: &impl SteeringMaps) -> Vec<crate::fastpath::conntrack::Entry> {
    let Ok(entries) = maps.ct_entries(MAX_READ) else {
        return Vec::new();
    };
    let entries: HashMap<FlowKey, CtEntry> = entries.into_iter().collect();
    entries
        .iter()
        .filter(|(k, e)| k.ifindex != 0 && e.owner == CT_OWNER_KERNEL)
        .filter_map(|(key, out)| {
            let inb = entries.get(&inbound_key(key, out))?;
            let carried = matches!(
                CtState::of(key.proto, out.flags, inb.flags),
                CtState::Established | CtState::HalfClosed | CtState::Datagram
            );
            carried
                .then(|| crate::fastpath::conntrack::Entry::of_tc_session(key, &out.act))
                .flatten()
        })
        .collect()
}

/// One sweep of `CT` at `now_ns`: counts the sessions by owner into `tally` and deletes
/// the kernel's expired sessions and half-gone entries. An error reading the map ends
/// the sweep (the next one tries again); a failed deletion is counted and skipped.
pub fn sweep(maps: &mut impl SteeringMaps, now_ns: u64, tally: &mut CtTally) {
    let entries: HashMap<FlowKey, CtEntry> = match maps.ct_entries(MAX_READ) {
        Ok(e) => e.into_iter().collect(),
        Err(_) => {
            tally.failed += 1;
            return;
        }
    };
    let (mut kernel, mut translator, mut adopted) = (0, 0, 0);
    let mut paired: HashSet<FlowKey> = HashSet::new();
    let mut doomed: Vec<(Option<FlowKey>, Option<FlowKey>)> = Vec::new();
    let grace = nanos(ORPHAN_GRACE);
    for (key, entry) in entries.iter().filter(|(k, _)| k.ifindex != 0) {
        match entry.owner {
            CT_OWNER_KERNEL => kernel += 1,
            CT_OWNER_TRANSLATOR => translator += 1,
            CT_OWNER_ADOPTED => adopted += 1,
            _ => {}
        }
        if entry.owner != CT_OWNER_KERNEL {
            continue;
        }
        let ik = inbound_key(key, entry);
        match entries.get(&ik) {
            Some(ie) if ie.owner == CT_OWNER_KERNEL => {
                paired.insert(ik);
                if expired(key.proto, entry, ie, now_ns) {
                    doomed.push((Some(ik), Some(*key)));
                }
            }
            Some(_) => {
                paired.insert(ik);
            }
            None if now_ns.saturating_sub(newest(entry)) >= grace => {
                doomed.push((None, Some(*key)))
            }
            None => {}
        }
    }
    for (key, entry) in entries.iter().filter(|(k, _)| k.ifindex == 0) {
        if entry.owner == CT_OWNER_KERNEL
            && !paired.contains(key)
            && now_ns.saturating_sub(newest(entry)) >= grace
        {
            doomed.push((Some(*key), None));
        }
    }
    *tally = CtTally {
        kernel,
        translator,
        adopted,
        ..*tally
    };
    for (inbound, outbound) in doomed {
        match remove(maps, inbound, outbound, now_ns) {
            Ok(true) => tally.removed += 1,
            Ok(false) => {}
            Err(_) => tally.failed += 1,
        }
    }
}

/// Deletes a doomed session (or the half of one that is left) after reading it again:
/// a frame may have brought it back to life (a reopening SYN, late traffic), or the
/// missing half may have appeared since the map was read. Inbound first, so its
/// external port is free before the outbound rewrite that used it goes. Whether it went.
fn remove(
    maps: &mut impl SteeringMaps,
    inbound: Option<FlowKey>,
    outbound: Option<FlowKey>,
    now_ns: u64,
) -> Result<bool, XdpError> {
    let (i, o) = (read(maps, inbound)?, read(maps, outbound)?);
    let still = match (inbound, outbound, i, o) {
        (Some(ik), Some(_), Some(ie), Some(oe)) => expired(ik.proto, &oe, &ie, now_ns),
        // An orphan: still alone?
        (Some(ik), None, Some(ie), None) => maps.ct(&outbound_key(&ik, &ie))?.is_none(),
        (None, Some(ok), None, Some(oe)) => maps.ct(&inbound_key(&ok, &oe))?.is_none(),
        // Gone meanwhile (or half of it: the next sweep finds the rest).
        _ => false,
    };
    if !still {
        return Ok(false);
    }
    if let Some(k) = inbound {
        maps.remove_ct(&k)?;
    }
    if let Some(k) = outbound {
        maps.remove_ct(&k)?;
    }
    Ok(true)
}

fn read(maps: &impl SteeringMaps, key: Option<FlowKey>) -> Result<Option<CtEntry>, XdpError> {
    key.map_or(Ok(None), |k| maps.ct(&k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fastpath::fakes::FakeMaps;
    use dovesnap_ebpf::{FlowAction, CT_SEEN, CT_SYN, PROTO_UDP};

    const S: u64 = 1_000_000_000;
    const EP_IFINDEX: u32 = 11;

    fn entry(owner: u8, flags: u32, created: u64, last_seen: u64) -> CtEntry {
        CtEntry {
            act: FlowAction {
                last_seen,
                ..FlowAction::default()
            },
            created,
            flags,
            owner,
            _pad: [0; 3],
        }
    }

    /// A session's pair as the tc program writes it: container 10.0.0.2:`sport` to
    /// 192.0.2.9:80, mapped to 198.51.100.1:`ext`.
    fn pair(
        sport: u16,
        ext: u16,
        owner: u8,
        out: CtEntry,
        inb: CtEntry,
    ) -> [(FlowKey, CtEntry); 2] {
        let addr = |a: [u8; 4]| u32::from_ne_bytes(a);
        let (inside, remote, external) = (
            addr([10, 0, 0, 2]),
            addr([192, 0, 2, 9]),
            addr([198, 51, 100, 1]),
        );
        let ok = FlowKey {
            ifindex: EP_IFINDEX,
            src: inside,
            dst: remote,
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let oe = CtEntry {
            act: FlowAction {
                src: external,
                sport: ext.to_be(),
                ..out.act
            },
            owner,
            ..out
        };
        let ik = inbound_key(&ok, &oe);
        let ie = CtEntry {
            act: FlowAction {
                dst: inside,
                dport: sport.to_be(),
                out_ifindex: EP_IFINDEX,
                ..inb.act
            },
            owner,
            ..inb
        };
        assert_eq!(outbound_key(&ik, &ie), ok, "the keys pair both ways");
        [(ok, oe), (ik, ie)]
    }

    fn maps_with(pairs: &[[(FlowKey, CtEntry); 2]]) -> FakeMaps {
        let mut maps = FakeMaps::default();
        maps.ct.extend(pairs.iter().flatten().copied());
        maps
    }

    #[test]
    fn the_state_comes_from_both_directions_flags() {
        use CtState::*;
        let tcp = |o, i| CtState::of(PROTO_TCP, o, i);
        assert_eq!(tcp(CT_SEEN | CT_SYN, 0), Opening);
        assert_eq!(tcp(CT_SEEN | CT_SYN, CT_SEEN | CT_SYN_ACK), Established);
        assert_eq!(tcp(CT_SEEN | CT_SYN | CT_FIN, CT_SYN_ACK), HalfClosed);
        assert_eq!(tcp(CT_SYN, CT_SYN_ACK | CT_FIN), HalfClosed);
        assert_eq!(tcp(CT_FIN, CT_SYN_ACK | CT_FIN), Closed);
        assert_eq!(tcp(CT_FIN | CT_RST, CT_FIN), Reset);
        assert_eq!(tcp(CT_SYN, CT_RST), Reset);
        assert_eq!(CtState::of(PROTO_UDP, CT_SEEN, 0), Datagram);
        assert_eq!(Reset.timeout(), Duration::from_secs(1));
        assert_eq!(Closed.timeout(), Duration::from_secs(2));
        assert_eq!(Opening.timeout(), Duration::from_secs(20));
        assert_eq!(Established.timeout(), Duration::from_secs(7200));
        assert_eq!(Datagram.timeout(), Duration::from_secs(60));
    }

    #[test]
    fn answered_and_open_kernel_sessions_are_handed_to_conntrack_with_their_mapping() {
        use crate::fastpath::conntrack::Nat;
        let e = |owner, flags| entry(owner, flags, S, S);
        let k = CT_OWNER_KERNEL;
        let established = pair(40000, 20000, k, e(k, CT_SYN), e(k, CT_SYN_ACK));
        let opening = pair(40001, 20001, k, e(k, CT_SYN), e(k, 0));
        let closed = pair(40002, 20002, k, e(k, CT_FIN), e(k, CT_SYN_ACK | CT_FIN));
        let reset = pair(40003, 20003, k, e(k, CT_SYN), e(k, CT_RST));
        let theirs = pair(
            40004,
            20004,
            CT_OWNER_TRANSLATOR,
            e(CT_OWNER_TRANSLATOR, CT_SYN),
            e(CT_OWNER_TRANSLATOR, CT_SYN_ACK),
        );
        let mut udp = pair(40005, 20005, k, e(k, CT_SEEN), e(k, 0));
        for (key, _) in udp.iter_mut() {
            key.proto = PROTO_UDP;
        }
        let half = [pair(40006, 20006, k, e(k, CT_SYN), e(k, CT_SYN_ACK))[0]];
        let mut maps = maps_with(&[established, opening, closed, reset, theirs, udp]);
        maps.ct.extend(half);
        let mut got = handover(&maps);
        got.sort_by_key(|e| e.src.port());
        let ports: Vec<_> = got.iter().map(|e| (e.protocol, e.src.port())).collect();
        assert_eq!(ports, [(PROTO_TCP, 40000), (PROTO_UDP, 40005)]);
        assert_eq!(got[0].src, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(got[0].dst, "192.0.2.9:80".parse().unwrap());
        assert_eq!(
            got[0].nat,
            Nat::Source("198.51.100.1:20000".parse().unwrap())
        );
    }

    #[test]
    fn a_long_sweep_puts_the_next_one_off() {
        assert_eq!(interval_after(Duration::from_millis(2)), INTERVAL);
        assert_eq!(interval_after(Duration::from_millis(50)), INTERVAL);
        assert_eq!(
            interval_after(Duration::from_millis(200)),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn sessions_expire_by_state_from_their_newest_activity() {
        let at = 1000 * S;
        let est_out = entry(CT_OWNER_KERNEL, CT_SEEN | CT_SYN, at, at + 5 * S);
        let est_in = entry(CT_OWNER_KERNEL, CT_SEEN | CT_SYN_ACK, at, at + 7 * S);
        // Idle from the newer direction's last frame.
        assert!(!expired(
            PROTO_TCP,
            &est_out,
            &est_in,
            at + 7 * S + 7199 * S
        ));
        assert!(expired(PROTO_TCP, &est_out, &est_in, at + 7 * S + 7200 * S));
        // A SYN nobody answers: 20 s after it.
        let syn = entry(CT_OWNER_KERNEL, CT_SEEN | CT_SYN, at, at);
        let none = entry(CT_OWNER_KERNEL, 0, at, 0);
        assert!(!expired(PROTO_TCP, &syn, &none, at + 19 * S));
        assert!(expired(PROTO_TCP, &syn, &none, at + 20 * S));
        // Closed both ways: 2 s; reset: 1 s.
        let fin = |f| entry(CT_OWNER_KERNEL, f, at, at);
        assert!(!expired(PROTO_TCP, &fin(CT_FIN), &fin(CT_FIN), at + S));
        assert!(expired(PROTO_TCP, &fin(CT_FIN), &fin(CT_FIN), at + 2 * S));
        assert!(!expired(
            PROTO_TCP,
            &fin(CT_FIN),
            &fin(CT_SYN_ACK),
            at + 2 * S
        ));
        assert!(expired(PROTO_TCP, &fin(CT_RST), &fin(0), at + S));
        // UDP: a minute idle.
        assert!(!expired(PROTO_UDP, &fin(CT_SEEN), &fin(0), at + 59 * S));
        assert!(expired(PROTO_UDP, &fin(CT_SEEN), &fin(0), at + 60 * S));
        // A clock read before the entry's last frame is not an expiry.
        assert!(!expired(PROTO_TCP, &fin(CT_RST), &fin(0), at - S));
    }

    #[test]
    fn a_sweep_removes_expired_kernel_sessions_inbound_first_and_counts() {
        let at = 1000 * S;
        let closed = |f| entry(0, f, at, at);
        let live = pair(
            40000,
            20000,
            CT_OWNER_KERNEL,
            closed(CT_SYN),
            closed(CT_SYN_ACK),
        );
        let done = pair(
            40001,
            20001,
            CT_OWNER_KERNEL,
            closed(CT_FIN),
            closed(CT_FIN | CT_SYN_ACK),
        );
        // The translator's and adopted sessions are theirs to remove, however old.
        let theirs = pair(40002, 2000, CT_OWNER_TRANSLATOR, closed(CT_RST), closed(0));
        let adopted = pair(40003, 2001, CT_OWNER_ADOPTED, closed(CT_RST), closed(0));
        let mut maps = maps_with(&[live, done, theirs, adopted]);
        let mut tally = CtTally::default();
        sweep(&mut maps, at + 3 * S, &mut tally);
        assert_eq!(
            tally,
            CtTally {
                kernel: 2,
                translator: 1,
                adopted: 1,
                removed: 1,
                failed: 0,
            }
        );
        assert_eq!(maps.ct_removed, vec![done[1].0, done[0].0], "inbound first");
        assert_eq!(maps.ct.len(), 6);
        // The next sweep counts what is left; the removals add up.
        sweep(&mut maps, at + 4 * S, &mut tally);
        assert_eq!((tally.kernel, tally.removed), (1, 1));
        // An empty map: zero sessions, nothing to do.
        let mut empty = FakeMaps::default();
        let mut t = CtTally::default();
        sweep(&mut empty, at, &mut t);
        assert_eq!(t, CtTally::default());
    }

    #[test]
    fn a_half_gone_session_goes_after_a_grace_and_a_second_look() {
        let at = 1000 * S;
        let e = |f| entry(0, f, at, at);
        let [out_only, _] = pair(40000, 20000, CT_OWNER_KERNEL, e(CT_SYN), e(0));
        let [_, in_only] = pair(40001, 20001, CT_OWNER_KERNEL, e(CT_SYN), e(0));
        let mut maps = FakeMaps::default();
        maps.ct.extend([out_only, in_only]);
        let mut tally = CtTally::default();
        // Within the grace, the program may be between its two inserts.
        sweep(
            &mut maps,
            at + ORPHAN_GRACE.as_nanos() as u64 - 1,
            &mut tally,
        );
        assert_eq!(maps.ct.len(), 2);
        assert_eq!(tally.kernel, 1);
        sweep(&mut maps, at + 2 * S, &mut tally);
        assert!(maps.ct.is_empty());
        assert_eq!(tally.removed, 2);
        // The half the map walk missed but a lookup finds keeps the session.
        let whole = pair(40002, 20002, CT_OWNER_KERNEL, e(CT_SYN), e(CT_SYN_ACK));
        let mut maps = maps_with(&[whole]);
        maps.ct_hidden.insert(whole[1].0);
        sweep(&mut maps, at + 2 * S, &mut tally);
        assert_eq!(maps.ct.len(), 2, "a session the walk half missed stays");
    }

    #[test]
    fn a_session_revived_since_the_read_stays() {
        let at = 1000 * S;
        let e = |f, seen| entry(0, f, at, seen);
        let reset = pair(40000, 20000, CT_OWNER_KERNEL, e(CT_RST, at), e(0, at));
        let mut maps = maps_with(&[reset]);
        // The program reopens the pair between the walk and the deletion.
        let mut revived = reset[0].1;
        revived.flags = CT_SEEN | CT_SYN;
        revived.created = at + 5 * S;
        maps.ct_revived = Some((reset[0].0, revived));
        let mut tally = CtTally::default();
        sweep(&mut maps, at + 5 * S, &mut tally);
        assert_eq!(maps.ct.len(), 2);
        assert_eq!(tally.removed, 0);
        // A failed deletion is counted, and the entries wait for the next sweep.
        let mut maps = maps_with(&[reset]);
        maps.ct_refuse_removal = true;
        sweep(&mut maps, at + 5 * S, &mut tally);
        assert_eq!((tally.removed, tally.failed), (0, 1));
    }
}
