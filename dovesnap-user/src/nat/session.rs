//! The session table: sessions in a preallocated slab, indexed from both sides; external
//! port pools per protocol; endpoint-independent mappings; TCP state; expiry and eviction.
//!
//! Memory is bounded by `max_sessions` (slab, both indexes, mappings) and by the size of
//! the port range (pools). Lookups and refreshes allocate nothing; creating a session
//! inserts into hash maps sized up front.
//!
//! With a per-endpoint limit, each container address may hold at most that many
//! sessions it started (dynamic ones; those through its published ports are not
//! counted): at its limit it can only make room among its own sessions, so one
//! container cannot fill the table for the others.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::{DropReason, Offloaded, PortEvent, Protocol, SessionView, Stats, Timeouts};

/// An address and port (ICMP: echo identifier; 0 for the remote side of ICMP).
pub type Endpoint = (Ipv4Addr, u16);

/// Which way a packet goes through the translator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Container to uplink.
    Outbound,
    /// Uplink to container.
    Inbound,
}

/// Lookup key for outbound packets: the inside 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InsideKey {
    pub protocol: Protocol,
    pub inside: Endpoint,
    pub remote: Endpoint,
}

/// Lookup key for inbound packets: external port and remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutsideKey {
    pub protocol: Protocol,
    pub external_port: u16,
    pub remote: Endpoint,
}

/// How a session got its external port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From the port pool, shared by the inside endpoint's sessions (EIM).
    Dynamic,
    /// Through this published external port.
    Published(u16),
}

mod tcp_bits {
    pub const SYN_OUT: u8 = 0x01;
    pub const SYN_IN: u8 = 0x02;
    pub const FIN_OUT: u8 = 0x04;
    pub const FIN_IN: u8 = 0x08;
    pub const RST: u8 = 0x10;
}

/// TCP flags seen per direction, enough for RFC 5382's established/transitory split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpTrack(u8);

impl TcpTrack {
    /// Records a segment's flags (see [`super::wire::tcp_flags`]).
    pub fn on_segment(&mut self, dir: Direction, flags: u8) {
        use super::wire::tcp_flags;
        use tcp_bits::*;
        let (syn, fin) = match dir {
            Direction::Outbound => (SYN_OUT, FIN_OUT),
            Direction::Inbound => (SYN_IN, FIN_IN),
        };
        if flags & tcp_flags::SYN != 0 {
            // A SYN after a reset or a close both ways starts a new connection on the
            // same 4-tuple.
            if self.0 & RST != 0 || self.0 & (FIN_OUT | FIN_IN) == FIN_OUT | FIN_IN {
                self.0 = 0;
            }
            self.0 |= syn;
        }
        if flags & tcp_flags::FIN != 0 {
            self.0 |= fin;
        }
        if flags & tcp_flags::RST != 0 {
            self.0 |= RST;
        }
    }

    /// Both SYNs seen, not reset, not closed both ways.
    pub fn is_established(self) -> bool {
        use tcp_bits::*;
        self.0 & (SYN_OUT | SYN_IN) == SYN_OUT | SYN_IN
            && self.0 & RST == 0
            && self.0 & (FIN_OUT | FIN_IN) != FIN_OUT | FIN_IN
    }

    pub fn name(self) -> &'static str {
        use tcp_bits::*;
        let b = self.0;
        if b & RST != 0 {
            "RESET"
        } else if b & (FIN_OUT | FIN_IN) == FIN_OUT | FIN_IN {
            "CLOSING"
        } else if b & (SYN_OUT | SYN_IN) == SYN_OUT | SYN_IN {
            if b & (FIN_OUT | FIN_IN) != 0 {
                "FIN_WAIT"
            } else {
                "ESTABLISHED"
            }
        } else if b & SYN_OUT != 0 {
            "SYN_SENT"
        } else {
            "SYN_RECEIVED"
        }
    }
}

/// One translation.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    pub protocol: Protocol,
    pub inside: Endpoint,
    pub remote: Endpoint,
    pub external_port: u16,
    pub origin: Origin,
    pub tcp: TcpTrack,
    pub last_seen: Instant,
    pub expires: Instant,
    /// Packets seen going out (bit [`Session::OUT`]) and coming in ([`Session::IN`]).
    pub directions: u8,
    /// Packets the translator carried for it (saturating).
    pub packets: u32,
    /// Handed to the XDP fast path: its packets may not reach the translator, so
    /// `last_seen` is refreshed from the kernel's flow entries before it expires.
    pub offloaded: bool,
}

impl Session {
    pub const OUT: u8 = 1;
    pub const IN: u8 = 2;

    /// Traffic went both ways.
    pub fn answered(&self) -> bool {
        self.directions == Session::OUT | Session::IN
    }

    /// Confirmed like conntrack's ASSURED: traffic both ways and more than one
    /// exchange (a completed TCP handshake, a UDP or ICMP conversation beyond one
    /// question and its answer).
    pub fn is_assured(&self) -> bool {
        self.answered() && self.packets >= 3
    }

    /// Whether an eviction may take it before its timeout when the table or a port
    /// pool is full: what conntrack's early drop takes, i.e. every session that is not
    /// assured (a scan, a flood of SYNs or datagrams to a published port, one-way
    /// traffic to a silent peer, a lone DNS question and its answer) and transitory
    /// TCP (RFC 5382). Sessions that carry a conversation stay until they time out.
    pub fn is_evictable(&self) -> bool {
        !self.is_assured() || (self.protocol == Protocol::Tcp && !self.tcp.is_established())
    }

    pub fn timeout(&self, t: &Timeouts) -> Duration {
        match self.protocol {
            Protocol::Tcp if self.tcp.is_established() => t.tcp_established,
            Protocol::Tcp => t.tcp_transitory,
            Protocol::Udp if self.remote.1 == 53 && !self.is_assured() => t.udp_dns,
            Protocol::Udp => t.udp,
            Protocol::Icmp => t.icmp,
        }
    }

    /// Refreshes the session for a packet seen at `now`.
    pub fn touch(&mut self, now: Instant, t: &Timeouts) {
        self.last_seen = now;
        self.expires = now + self.timeout(t);
    }

    /// Whether its packets can all be rewritten without the translator: TCP with both
    /// SYNs and no FIN or RST, UDP that has seen a reply. ICMP never.
    pub fn is_offloadable(&self) -> bool {
        match self.protocol {
            Protocol::Tcp => self.tcp.name() == "ESTABLISHED",
            Protocol::Udp => self.answered(),
            Protocol::Icmp => false,
        }
    }

    pub fn offloaded_view(&self) -> Offloaded {
        Offloaded {
            protocol: self.protocol,
            inside: SocketAddrV4::new(self.inside.0, self.inside.1),
            remote: SocketAddrV4::new(self.remote.0, self.remote.1),
            external_port: self.external_port,
        }
    }

    pub fn view(&self) -> SessionView {
        SessionView {
            protocol: self.protocol,
            inside: SocketAddrV4::new(self.inside.0, self.inside.1),
            external_port: self.external_port,
            remote: SocketAddrV4::new(self.remote.0, self.remote.1),
            state: match self.protocol {
                Protocol::Tcp => self.tcp.name(),
                Protocol::Udp | Protocol::Icmp => "ACTIVE",
            },
            published: match self.origin {
                Origin::Published(p) => Some(p),
                Origin::Dynamic => None,
            },
            last_seen: self.last_seen,
            expires: self.expires,
        }
    }
}

/// State of one external port of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortSlot {
    Free,
    /// Held by a published port.
    Reserved,
    /// Mapped to an inside endpoint, used by `refs` sessions.
    Mapped {
        inside: Ipv4Addr,
        inside_port: u16,
        refs: u32,
    },
}

/// The external ports of one protocol. `free` holds exactly the `Free` ports, in the
/// order they became free (FIFO: a released port is reused as late as possible).
#[derive(Debug)]
struct PortPool {
    first: u16,
    slots: Vec<PortSlot>,
    free: VecDeque<u16>,
}

impl PortPool {
    fn new(range: &RangeInclusive<u16>) -> Self {
        let n = if range.is_empty() {
            0
        } else {
            usize::from(*range.end() - *range.start()) + 1
        };
        PortPool {
            first: *range.start(),
            slots: vec![PortSlot::Free; n],
            free: range.clone().collect(),
        }
    }

    fn slot(&self, port: u16) -> Option<&PortSlot> {
        let i = port.checked_sub(self.first)?;
        self.slots.get(usize::from(i))
    }

    fn slot_mut(&mut self, port: u16) -> Option<&mut PortSlot> {
        let i = port.checked_sub(self.first)?;
        self.slots.get_mut(usize::from(i))
    }

    fn contains(&self, port: u16) -> bool {
        self.slot(port).is_some()
    }
}

/// Kinds of room a new session may need; each has its own "nothing to evict" memo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    Slot,
    Port(Protocol),
}

impl Room {
    fn index(self) -> usize {
        match self {
            Room::Slot => 0,
            Room::Port(p) => 1 + p.index(),
        }
    }
}

/// Why a session left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Expired,
    Evicted,
    Removed,
}

/// What a scan for something to evict found last time: nothing until `until` (the
/// soonest expiry among the candidates), unless `stale` says a candidate may have
/// become evictable since. Makes a full table under a flood cost one scan per change,
/// not one per packet.
#[derive(Debug, Clone, Copy)]
struct VictimMemo {
    stale: bool,
    until: Option<Instant>,
}

impl Default for VictimMemo {
    fn default() -> Self {
        VictimMemo {
            stale: true,
            until: None,
        }
    }
}

impl VictimMemo {
    /// Whether a scan now is known to find nothing.
    fn nothing_to_find(&self, now: Instant) -> bool {
        !self.stale && self.until.is_some_and(|t| now < t)
    }

    /// A scan found nothing; `soonest` is the earliest expiry among the candidates.
    fn found_nothing(&mut self, soonest: Option<Instant>) {
        self.stale = false;
        self.until = soonest;
    }
}

/// Among `candidates` (none expired), the least recently seen evictable one and the
/// soonest expiry of them all.
fn least_recent_evictable<'a>(
    candidates: impl Iterator<Item = (u32, &'a Session)>,
) -> (Option<u32>, Option<Instant>) {
    let mut best: Option<(Instant, u32)> = None;
    let mut soonest: Option<Instant> = None;
    for (id, s) in candidates {
        soonest = Some(soonest.map_or(s.expires, |t| t.min(s.expires)));
        if s.is_evictable() && best.is_none_or(|(t, _)| s.last_seen < t) {
            best = Some((s.last_seen, id));
        }
    }
    (best.map(|(_, id)| id), soonest)
}

/// The dynamic sessions of one container address, for the per-endpoint limit.
#[derive(Debug, Default)]
struct EndpointSessions {
    ids: HashSet<u32>,
    victims: VictimMemo,
}

/// Sessions, their indexes and the port pools.
#[derive(Debug)]
pub struct SessionTable {
    max_sessions: usize,
    /// At most this many dynamic sessions per inside address (`None`: no limit).
    per_endpoint: Option<usize>,
    /// Dynamic sessions by inside address; kept only with a per-endpoint limit.
    by_endpoint: HashMap<Ipv4Addr, EndpointSessions>,
    slots: Vec<Option<Session>>,
    free_slots: Vec<u32>,
    len: usize,
    by_inside: HashMap<InsideKey, u32>,
    by_outside: HashMap<OutsideKey, u32>,
    /// Endpoint-independent mappings: (protocol, inside endpoint) -> external port.
    mappings: HashMap<(Protocol, Endpoint), u16>,
    pools: [PortPool; 3],
    events: VecDeque<PortEvent>,
    /// Offloaded sessions removed or taken back, for the data plane to clear.
    unoffloaded: VecDeque<Offloaded>,
    /// Per [`Room`]: what the last scan for something to evict found.
    victims: [VictimMemo; 4],
}

impl SessionTable {
    pub fn new(
        max_sessions: usize,
        per_endpoint: Option<usize>,
        ports: &RangeInclusive<u16>,
    ) -> Self {
        let pool = PortPool::new(ports);
        let range_len = pool.slots.len();
        SessionTable {
            max_sessions,
            per_endpoint,
            by_endpoint: HashMap::new(),
            slots: Vec::with_capacity(max_sessions),
            free_slots: Vec::with_capacity(max_sessions),
            len: 0,
            by_inside: HashMap::with_capacity(max_sessions),
            by_outside: HashMap::with_capacity(max_sessions),
            mappings: HashMap::with_capacity(max_sessions.min(3 * range_len)),
            pools: [PortPool::new(ports), PortPool::new(ports), pool],
            events: VecDeque::with_capacity(range_len.min(4096)),
            unoffloaded: VecDeque::new(),
            victims: [VictimMemo::default(); 4],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, id: u32) -> &Session {
        self.slots[id as usize].as_ref().expect("live session id")
    }

    pub fn get_mut(&mut self, id: u32) -> &mut Session {
        self.slots[id as usize].as_mut().expect("live session id")
    }

    pub fn iter(&self) -> impl Iterator<Item = &Session> + '_ {
        self.slots.iter().flatten()
    }

    pub fn drain_events(&mut self) -> std::collections::vec_deque::Drain<'_, PortEvent> {
        self.events.drain(..)
    }

    /// The live session for an outbound packet. An expired session still in the table is
    /// removed and not returned.
    pub fn lookup_inside(
        &mut self,
        now: Instant,
        key: &InsideKey,
        stats: &mut Stats,
    ) -> Option<u32> {
        let id = *self.by_inside.get(key)?;
        self.live(now, id, stats)
    }

    /// The live session for an inbound packet (see [`SessionTable::lookup_inside`]).
    pub fn lookup_outside(
        &mut self,
        now: Instant,
        key: &OutsideKey,
        stats: &mut Stats,
    ) -> Option<u32> {
        let id = *self.by_outside.get(key)?;
        self.live(now, id, stats)
    }

    fn live(&mut self, now: Instant, id: u32, stats: &mut Stats) -> Option<u32> {
        if self.get(id).expires <= now {
            self.remove(id, Removal::Expired, stats);
            None
        } else {
            Some(id)
        }
    }

    /// Whether `port` of `protocol` is mapped to some inside endpoint (to tell filtering
    /// from a plain miss).
    pub fn is_mapped(&self, protocol: Protocol, port: u16) -> bool {
        matches!(
            self.pools[protocol.index()].slot(port),
            Some(PortSlot::Mapped { .. })
        )
    }

    /// Whether `port` is inside the translator's range.
    pub fn in_range(&self, port: u16) -> bool {
        self.pools[0].contains(port)
    }

    /// Takes a port of the range out of the pool for a published port. Ports outside the
    /// range need no reservation. Errors: the port is mapped (`Err(true)`) or already
    /// reserved (`Err(false)`).
    pub fn reserve(&mut self, protocol: Protocol, port: u16) -> Result<(), bool> {
        let pool = &mut self.pools[protocol.index()];
        match pool.slot_mut(port) {
            None => Ok(()),
            Some(s @ PortSlot::Free) => {
                *s = PortSlot::Reserved;
                pool.free.retain(|p| *p != port);
                Ok(())
            }
            Some(PortSlot::Mapped { .. }) => Err(true),
            Some(PortSlot::Reserved) => Err(false),
        }
    }

    /// Gives a reserved port back to the pool.
    pub fn unreserve(&mut self, protocol: Protocol, port: u16) {
        let pool = &mut self.pools[protocol.index()];
        if let Some(s @ PortSlot::Reserved) = pool.slot_mut(port) {
            *s = PortSlot::Free;
            pool.free.push_back(port);
        }
    }

    /// Makes a session. `published` is the published external port it comes through;
    /// otherwise it uses the inside endpoint's mapping, making one if needed. Evicts an
    /// expired or evictable session if there is no room. Does not check that the keys
    /// are free: the caller looked them up first.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &mut self,
        now: Instant,
        timeouts: &Timeouts,
        stats: &mut Stats,
        protocol: Protocol,
        inside: Endpoint,
        remote: Endpoint,
        published: Option<u16>,
        tcp: TcpTrack,
    ) -> Result<u32, DropReason> {
        if published.is_none() && !self.endpoint_room(now, inside.0, stats) {
            return Err(DropReason::EndpointSessionLimit);
        }
        if self.len >= self.max_sessions && !self.make_room(now, Room::Slot, stats) {
            return Err(DropReason::PortsExhausted);
        }
        let (external_port, origin) = match published {
            Some(p) => (p, Origin::Published(p)),
            None => (self.map(now, protocol, inside, stats)?, Origin::Dynamic),
        };
        if self.len >= self.max_sessions {
            // Making room for the port evicted nothing we could use for the slot, or
            // max_sessions is 0.
            if origin == Origin::Dynamic {
                self.unref(protocol, external_port);
            }
            return Err(DropReason::PortsExhausted);
        }
        let mut s = Session {
            protocol,
            inside,
            remote,
            external_port,
            origin,
            tcp,
            last_seen: now,
            expires: now,
            directions: 0,
            packets: 0,
            offloaded: false,
        };
        s.touch(now, timeouts);
        let evictable = s.is_evictable();
        if evictable {
            self.victims_may_have_changed();
        }
        let id = match self.free_slots.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(s);
                id
            }
            None => {
                self.slots.push(Some(s));
                (self.slots.len() - 1) as u32
            }
        };
        self.len += 1;
        if origin == Origin::Dynamic && self.per_endpoint.is_some() {
            let e = self.by_endpoint.entry(inside.0).or_default();
            e.ids.insert(id);
            e.victims.stale |= evictable;
        }
        self.by_inside.insert(
            InsideKey {
                protocol,
                inside,
                remote,
            },
            id,
        );
        self.by_outside.insert(
            OutsideKey {
                protocol,
                external_port,
                remote,
            },
            id,
        );
        stats.sessions_created += 1;
        Ok(id)
    }

    /// The inside endpoint's external port, taking a reference on it; allocates one
    /// (evicting if the pool is empty) when it has none.
    fn map(
        &mut self,
        now: Instant,
        protocol: Protocol,
        inside: Endpoint,
        stats: &mut Stats,
    ) -> Result<u16, DropReason> {
        let pi = protocol.index();
        if let Some(&port) = self.mappings.get(&(protocol, inside)) {
            if let Some(PortSlot::Mapped { refs, .. }) = self.pools[pi].slot_mut(port) {
                *refs += 1;
                return Ok(port);
            }
            unreachable!("a mapping always owns its port");
        }
        if self.pools[pi].free.is_empty() && !self.make_room(now, Room::Port(protocol), stats) {
            return Err(DropReason::PortsExhausted);
        }
        let pool = &mut self.pools[pi];
        let port = pool.free.pop_front().ok_or(DropReason::PortsExhausted)?;
        if let Some(s) = pool.slot_mut(port) {
            *s = PortSlot::Mapped {
                inside: inside.0,
                inside_port: inside.1,
                refs: 1,
            };
        }
        self.mappings.insert((protocol, inside), port);
        self.events.push_back(PortEvent::Opened { protocol, port });
        Ok(port)
    }

    /// Drops one reference on a dynamic port; the last one frees it.
    fn unref(&mut self, protocol: Protocol, port: u16) {
        let pool = &mut self.pools[protocol.index()];
        let Some(slot) = pool.slot_mut(port) else {
            return;
        };
        if let PortSlot::Mapped {
            inside,
            inside_port,
            refs,
        } = slot
        {
            *refs -= 1;
            if *refs == 0 {
                let key = (protocol, (*inside, *inside_port));
                *slot = PortSlot::Free;
                pool.free.push_back(port);
                self.mappings.remove(&key);
                self.events.push_back(PortEvent::Closed { protocol, port });
            }
        }
    }

    pub fn remove(&mut self, id: u32, why: Removal, stats: &mut Stats) {
        let Some(s) = self.slots[id as usize].take() else {
            return;
        };
        self.free_slots.push(id);
        self.len -= 1;
        self.by_inside.remove(&InsideKey {
            protocol: s.protocol,
            inside: s.inside,
            remote: s.remote,
        });
        self.by_outside.remove(&OutsideKey {
            protocol: s.protocol,
            external_port: s.external_port,
            remote: s.remote,
        });
        if s.origin == Origin::Dynamic {
            self.unref(s.protocol, s.external_port);
            if let Some(e) = self.by_endpoint.get_mut(&s.inside.0) {
                e.ids.remove(&id);
                e.victims.stale = true;
                if e.ids.is_empty() {
                    self.by_endpoint.remove(&s.inside.0);
                }
            }
        }
        if s.offloaded {
            self.unoffloaded.push_back(s.offloaded_view());
        }
        self.victims_may_have_changed();
        match why {
            Removal::Expired => stats.sessions_expired += 1,
            Removal::Evicted => stats.sessions_evicted += 1,
            Removal::Removed => stats.sessions_removed += 1,
        }
    }

    /// Removes every session `pred` selects; returns how many.
    pub fn remove_where(
        &mut self,
        why: Removal,
        stats: &mut Stats,
        mut pred: impl FnMut(&Session) -> bool,
    ) -> usize {
        let mut n = 0;
        for id in 0..self.slots.len() {
            if self.slots[id].as_ref().is_some_and(&mut pred) {
                self.remove(id as u32, why, stats);
                n += 1;
            }
        }
        n
    }

    /// Removes every session expired at `now`, except offloaded ones: only
    /// [`SessionTable::expire_offloaded`] knows whether those are idle.
    pub fn expire(&mut self, now: Instant, stats: &mut Stats) -> usize {
        self.remove_where(Removal::Expired, stats, |s| {
            s.expires <= now && !s.offloaded
        })
    }

    /// Removes every session expired at `now`. An offloaded one is first asked about:
    /// `last_seen(session)` returns when the kernel last forwarded one of its packets,
    /// and a session seen since its timeout started is refreshed instead.
    pub fn expire_offloaded(
        &mut self,
        now: Instant,
        timeouts: &Timeouts,
        stats: &mut Stats,
        mut last_seen: impl FnMut(&Session) -> Option<Instant>,
    ) -> usize {
        let mut n = 0;
        for id in 0..self.slots.len() {
            let Some(s) = self.slots[id].as_mut() else {
                continue;
            };
            if s.expires > now {
                continue;
            }
            if s.offloaded {
                if let Some(t) = last_seen(s).filter(|t| *t > s.last_seen) {
                    s.touch(t, timeouts);
                    if s.expires > now {
                        continue;
                    }
                }
            }
            self.remove(id as u32, Removal::Expired, stats);
            n += 1;
        }
        n
    }

    /// Takes a session off the fast path (its flow entries must go): queues it for
    /// [`SessionTable::drain_unoffloaded`].
    pub fn unoffload(&mut self, id: u32) {
        let s = self.get_mut(id);
        if s.offloaded {
            s.offloaded = false;
            let view = s.offloaded_view();
            self.unoffloaded.push_back(view);
        }
    }

    /// Sessions taken off the fast path (removed, or changed state) since the last call.
    pub fn drain_unoffloaded(&mut self) -> std::collections::vec_deque::Drain<'_, Offloaded> {
        self.unoffloaded.drain(..)
    }

    /// The session with this inside key, if any.
    pub fn find_inside(&self, key: &InsideKey) -> Option<u32> {
        self.by_inside.get(key).copied()
    }

    /// Frees a slot or a port of a protocol: first every expired session goes, then, if
    /// that was not enough, the least recently seen evictable session that frees what is
    /// needed. Remembers when nothing can be evicted, so a full table under a flood costs
    /// one scan per change, not one per packet.
    fn make_room(&mut self, now: Instant, room: Room, stats: &mut Stats) -> bool {
        let ri = room.index();
        if self.victims[ri].nothing_to_find(now) {
            return false;
        }
        self.expire(now, stats);
        if self.has_room(room) {
            return true;
        }
        let pools = &self.pools;
        let candidates = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(id, s)| Some((id as u32, s.as_ref()?)))
            .filter(|(_, s)| match room {
                Room::Slot => true,
                Room::Port(p) => {
                    s.protocol == p
                        && s.origin == Origin::Dynamic
                        && matches!(
                            pools[p.index()].slot(s.external_port),
                            Some(PortSlot::Mapped { refs: 1, .. })
                        )
                }
            });
        let (victim, soonest) = least_recent_evictable(candidates);
        if let Some(id) = victim {
            self.remove(id, Removal::Evicted, stats);
            return true;
        }
        self.victims[ri].found_nothing(soonest);
        false
    }

    /// Whether `ip` may start one more session under the per-endpoint limit; at its
    /// limit, first its expired sessions go, then its least recently seen evictable one.
    /// Remembers, per address, when none of its sessions can go (as
    /// [`SessionTable::make_room`] does for the whole table).
    fn endpoint_room(&mut self, now: Instant, ip: Ipv4Addr, stats: &mut Stats) -> bool {
        let Some(max) = self.per_endpoint else {
            return true;
        };
        let Some(e) = self.by_endpoint.get_mut(&ip) else {
            return max > 0;
        };
        if e.ids.len() < max {
            return true;
        }
        if e.victims.nothing_to_find(now) {
            return false;
        }
        let slots = &self.slots;
        let session = |id: u32| slots[id as usize].as_ref().expect("live session id");
        // Expired sessions go first (offloaded ones are only expired by the kernel's
        // clock, see `expire_offloaded`).
        let expired: Vec<u32> = e
            .ids
            .iter()
            .copied()
            .filter(|&id| session(id).expires <= now && !session(id).offloaded)
            .collect();
        if !expired.is_empty() {
            for id in expired {
                self.remove(id, Removal::Expired, stats);
            }
            return true;
        }
        let (victim, soonest) = least_recent_evictable(e.ids.iter().map(|&id| (id, session(id))));
        if let Some(id) = victim {
            self.remove(id, Removal::Evicted, stats);
            return true;
        }
        e.victims.found_nothing(soonest);
        false
    }

    fn has_room(&self, room: Room) -> bool {
        match room {
            Room::Slot => self.len < self.max_sessions,
            Room::Port(p) => !self.pools[p.index()].free.is_empty(),
        }
    }

    /// Session `id` may have become evictable (a TCP session turned transitory).
    pub fn note_evictable(&mut self, id: u32) {
        self.victims_may_have_changed();
        let ip = self.get(id).inside.0;
        if let Some(e) = self.by_endpoint.get_mut(&ip) {
            e.victims.stale = true;
        }
    }

    /// A session came, went or became evictable: every table-wide memo is stale.
    fn victims_may_have_changed(&mut self) {
        for m in &mut self.victims {
            m.stale = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, port: u16) -> Endpoint {
        (Ipv4Addr::new(10, 0, 0, last), port)
    }

    #[test]
    fn tcp_track_states() {
        use super::super::wire::tcp_flags::*;
        let mut t = TcpTrack::default();
        t.on_segment(Direction::Outbound, SYN);
        assert_eq!(t.name(), "SYN_SENT");
        assert!(!t.is_established());
        t.on_segment(Direction::Inbound, SYN | ACK);
        assert_eq!(t.name(), "ESTABLISHED");
        assert!(t.is_established());
        t.on_segment(Direction::Outbound, FIN | ACK);
        assert_eq!(t.name(), "FIN_WAIT");
        assert!(t.is_established());
        t.on_segment(Direction::Inbound, FIN | ACK);
        assert_eq!(t.name(), "CLOSING");
        assert!(!t.is_established());
        // A new SYN on the same tuple starts over.
        t.on_segment(Direction::Outbound, SYN);
        assert_eq!(t.name(), "SYN_SENT");
        t.on_segment(Direction::Inbound, SYN | ACK);
        t.on_segment(Direction::Inbound, RST);
        assert_eq!(t.name(), "RESET");
        assert!(!t.is_established());

        let mut r = TcpTrack::default();
        r.on_segment(Direction::Inbound, SYN);
        assert_eq!(r.name(), "SYN_RECEIVED");
    }

    #[test]
    fn mapping_is_shared_and_released_with_last_session() {
        let now = Instant::now();
        let t = Timeouts::default();
        let mut st = Stats::default();
        let mut tab = SessionTable::new(10, None, &(1000..=1001));
        let a = tab
            .create(
                now,
                &t,
                &mut st,
                Protocol::Udp,
                ep(2, 5),
                ep(9, 53),
                None,
                TcpTrack::default(),
            )
            .unwrap();
        let b = tab
            .create(
                now,
                &t,
                &mut st,
                Protocol::Udp,
                ep(2, 5),
                ep(8, 53),
                None,
                TcpTrack::default(),
            )
            .unwrap();
        assert_eq!(tab.get(a).external_port, tab.get(b).external_port);
        let p = tab.get(a).external_port;
        assert!(tab.is_mapped(Protocol::Udp, p));
        assert!(!tab.is_mapped(Protocol::Tcp, p));
        tab.remove(a, Removal::Removed, &mut st);
        assert!(tab.is_mapped(Protocol::Udp, p));
        tab.remove(b, Removal::Removed, &mut st);
        assert!(!tab.is_mapped(Protocol::Udp, p));
        assert_eq!(st.sessions_removed, 2);
        // FIFO reuse: the other port comes first.
        let c = tab
            .create(
                now,
                &t,
                &mut st,
                Protocol::Udp,
                ep(3, 5),
                ep(9, 53),
                None,
                TcpTrack::default(),
            )
            .unwrap();
        assert_ne!(tab.get(c).external_port, p);
    }

    #[test]
    fn reserve_and_unreserve() {
        let mut tab = SessionTable::new(10, None, &(1000..=1001));
        assert_eq!(tab.reserve(Protocol::Tcp, 1000), Ok(()));
        assert_eq!(tab.reserve(Protocol::Tcp, 1000), Err(false));
        assert_eq!(tab.reserve(Protocol::Tcp, 80), Ok(()));
        assert_eq!(tab.pools[0].free.len(), 1);
        tab.unreserve(Protocol::Tcp, 1000);
        assert_eq!(tab.pools[0].free.len(), 2);
        assert!(tab.in_range(1001));
        assert!(!tab.in_range(999));
        assert!(!tab.in_range(1002));
    }
}
