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
//! container cannot fill the table for the others. Likewise with a port share, each
//! container address maps at most that many external ports per protocol: at its share
//! it can only free one of its own, so one container cannot drain the pool.
//!
//! Every dynamic session's start and end is queued as a [`PortEvent`] (its protocol,
//! external port and remote), which the data plane mirrors into the uplink's exact
//! steering map.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::wire::tcp_flags;
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

/// A key of one of the session table's two indexes: [`InsideKey`] for outbound packets,
/// [`OutsideKey`] for inbound ones.
pub trait SessionKey: Eq + std::hash::Hash + Sized {
    fn index(table: &SessionTable) -> &HashMap<Self, u32>;
}

impl SessionKey for InsideKey {
    fn index(table: &SessionTable) -> &HashMap<Self, u32> {
        &table.by_inside
    }
}

impl SessionKey for OutsideKey {
    fn index(table: &SessionTable) -> &HashMap<Self, u32> {
        &table.by_outside
    }
}

/// How a session got its external port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From the port pool, shared by the inside endpoint's sessions (EIM).
    Dynamic,
    /// Through this published external port.
    Published(u16),
    /// Taken over from the kernel's conntrack with a port outside the pool (the
    /// kernel masquerade's): the session's own, released with it.
    Adopted,
}

/// A flow the kernel's conntrack carried, to take over with its mapping (see
/// [`SessionTable::adopt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adoptee {
    pub protocol: Protocol,
    pub inside: Endpoint,
    pub remote: Endpoint,
    /// The external port the far side knows (for a published flow, the published port).
    pub external_port: u16,
    pub published: bool,
}

/// TCP flags seen per direction, enough for RFC 5382's established/transitory split: the
/// SYN, FIN and RST bits ([`super::wire::tcp_flags`]) of the segments seen each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpTrack {
    outbound: u8,
    inbound: u8,
}

impl TcpTrack {
    const TRACKED: u8 = tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST;

    /// Records a segment's flags (see [`super::wire::tcp_flags`]).
    pub fn on_segment(&mut self, dir: Direction, flags: u8) {
        // A SYN after a reset or a close both ways starts a new connection on the same
        // 4-tuple.
        if flags & tcp_flags::SYN != 0 && (self.either(tcp_flags::RST) || self.both(tcp_flags::FIN))
        {
            *self = TcpTrack::default();
        }
        let seen = match dir {
            Direction::Outbound => &mut self.outbound,
            Direction::Inbound => &mut self.inbound,
        };
        *seen |= flags & Self::TRACKED;
    }

    /// `flag` seen both ways.
    fn both(self, flag: u8) -> bool {
        self.outbound & self.inbound & flag != 0
    }

    /// `flag` seen either way.
    fn either(self, flag: u8) -> bool {
        (self.outbound | self.inbound) & flag != 0
    }

    /// Both SYNs seen, not reset, not closed both ways.
    pub fn is_established(self) -> bool {
        use tcp_flags::*;
        self.both(SYN) && !self.either(RST) && !self.both(FIN)
    }

    pub fn name(self) -> &'static str {
        use tcp_flags::*;
        if self.either(RST) {
            "RESET"
        } else if self.both(FIN) {
            "CLOSING"
        } else if self.both(SYN) {
            if self.either(FIN) {
                "FIN_WAIT"
            } else {
                "ESTABLISHED"
            }
        } else if self.outbound & SYN != 0 {
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
                Origin::Dynamic | Origin::Adopted => None,
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

    #[cfg(test)]
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

/// One scan for something to evict takes up to `1/EVICT_BATCH_DIVISOR` of what it makes
/// room in (the table's slots, a pool's ports, a container's share), at least one: a
/// full table under a flood of new flows then costs one scan per batch, not one per
/// flow. Small tables evict one at a time.
const EVICT_BATCH_DIVISOR: usize = 256;

fn evict_batch(capacity: usize) -> usize {
    (capacity / EVICT_BATCH_DIVISOR).max(1)
}

/// Among `candidates` (none expired), the `batch` least recently seen evictable ones
/// (oldest first) and the soonest expiry of them all.
fn least_recent_evictable<'a>(
    candidates: impl Iterator<Item = (u32, &'a Session)>,
    batch: usize,
) -> (Vec<u32>, Option<Instant>) {
    // A max-heap of the `batch` oldest seen so far: its top is the newest of them.
    let mut best: std::collections::BinaryHeap<(Instant, std::cmp::Reverse<u32>)> =
        std::collections::BinaryHeap::with_capacity(batch + 1);
    let mut soonest: Option<Instant> = None;
    for (id, s) in candidates {
        soonest = Some(soonest.map_or(s.expires, |t| t.min(s.expires)));
        if !s.is_evictable() {
            continue;
        }
        if best.len() < batch {
            best.push((s.last_seen, std::cmp::Reverse(id)));
        } else if best.peek().is_some_and(|(t, _)| s.last_seen < *t) {
            best.pop();
            best.push((s.last_seen, std::cmp::Reverse(id)));
        }
    }
    let victims = best
        .into_sorted_vec()
        .into_iter()
        .map(|(_, std::cmp::Reverse(id))| id)
        .collect();
    (victims, soonest)
}

/// The sessions among `ids` (of `protocol`, if given) expired at `now`; offloaded ones
/// are only expired by the kernel's clock (see `SessionTable::expire_offloaded`).
fn expired_among(
    slots: &[Option<Session>],
    ids: &HashSet<u32>,
    now: Instant,
    protocol: Option<Protocol>,
) -> Vec<u32> {
    ids.iter()
        .copied()
        .filter(|&id| {
            slots[id as usize].as_ref().is_some_and(|s| {
                s.expires <= now && !s.offloaded && protocol.is_none_or(|p| s.protocol == p)
            })
        })
        .collect()
}

/// The dynamic sessions of one container address and the ports they map, for the
/// per-endpoint limit and the port share.
#[derive(Debug, Default)]
struct EndpointSessions {
    ids: HashSet<u32>,
    victims: VictimMemo,
    /// External ports mapped to this address, per protocol.
    ports: [usize; 3],
    /// Per protocol: what the last scan for one of its ports to free found.
    port_victims: [VictimMemo; 3],
}

impl EndpointSessions {
    /// One of its sessions came, went or may have become evictable.
    fn changed(&mut self) {
        self.victims.stale = true;
        for m in &mut self.port_victims {
            m.stale = true;
        }
    }
}

/// Sessions, their indexes and the port pools.
#[derive(Debug)]
pub struct SessionTable {
    max_sessions: usize,
    /// At most this many dynamic sessions per inside address (`None`: no limit).
    per_endpoint: Option<usize>,
    /// At most this many mapped external ports per inside address and protocol
    /// (`None`: the whole pool).
    port_share: Option<usize>,
    /// Dynamic sessions and mapped ports by inside address.
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
        port_share: Option<usize>,
        ports: &RangeInclusive<u16>,
    ) -> Self {
        let pool = PortPool::new(ports);
        let range_len = pool.slots.len();
        SessionTable {
            max_sessions,
            per_endpoint,
            port_share,
            by_endpoint: HashMap::new(),
            slots: Vec::with_capacity(max_sessions),
            free_slots: Vec::with_capacity(max_sessions),
            len: 0,
            by_inside: HashMap::with_capacity(max_sessions),
            by_outside: HashMap::with_capacity(max_sessions),
            mappings: HashMap::with_capacity(max_sessions.min(3 * range_len)),
            pools: [PortPool::new(ports), PortPool::new(ports), pool],
            events: VecDeque::with_capacity(max_sessions.min(4096)),
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

    /// The live session for a packet, by its inside key (outbound) or outside key
    /// (inbound). An expired session still in the table is removed and not returned.
    pub fn lookup<K: SessionKey>(
        &mut self,
        now: Instant,
        key: &K,
        stats: &mut Stats,
    ) -> Option<u32> {
        let id = *K::index(self).get(key)?;
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
    #[cfg(test)]
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
                self.forget_if_idle(inside.0);
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
        let id = self.insert(s);
        stats.sessions_created += 1;
        Ok(id)
    }

    /// Files a new session: its slot, both indexes, its container's sessions, and the
    /// uplink's steering (dynamic and adopted sessions) through a port event.
    fn insert(&mut self, s: Session) -> u32 {
        let evictable = s.is_evictable();
        if evictable {
            self.victims_may_have_changed();
        }
        let (protocol, inside, remote, external_port, origin) =
            (s.protocol, s.inside, s.remote, s.external_port, s.origin);
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
        if origin == Origin::Dynamic {
            let e = self.by_endpoint.entry(inside.0).or_default();
            e.ids.insert(id);
            if evictable {
                e.changed();
            }
        }
        if matches!(origin, Origin::Dynamic | Origin::Adopted) {
            self.events.push_back(PortEvent::Opened {
                protocol,
                port: external_port,
                remote: SocketAddrV4::new(remote.0, remote.1),
            });
        }
        let inside_key = InsideKey {
            protocol,
            inside,
            remote,
        };
        self.by_inside.insert(inside_key, id);
        let outside_key = OutsideKey {
            protocol,
            external_port,
            remote,
        };
        self.by_outside.insert(outside_key, id);
        id
    }

    /// Takes over a flow the kernel's conntrack carried (handed over at a failure or a
    /// shutdown, or started while the fast path was down) with the kernel's mapping, so
    /// the far side sees nothing change. A pool port becomes the inside endpoint's
    /// mapping (shared as usual); a port outside the pool stays this session's own
    /// ([`Origin::Adopted`]). The session is assured (it carried a conversation), TCP
    /// established. An existing session for the same flow is kept as it is; a flow
    /// whose external side another session holds is refused. Call
    /// [`SessionTable::adoption_done`] after a batch.
    pub fn adopt(
        &mut self,
        now: Instant,
        timeouts: &Timeouts,
        stats: &mut Stats,
        a: Adoptee,
    ) -> Result<u32, DropReason> {
        let (protocol, inside, remote) = (a.protocol, a.inside, a.remote);
        let inside_key = InsideKey {
            protocol,
            inside,
            remote,
        };
        if let Some(&id) = self.by_inside.get(&inside_key) {
            return Ok(id);
        }
        let outside_key = OutsideKey {
            protocol,
            external_port: a.external_port,
            remote,
        };
        if self.by_outside.contains_key(&outside_key) {
            return Err(DropReason::PortsExhausted);
        }
        if self.len >= self.max_sessions && !self.make_room(now, Room::Slot, stats) {
            return Err(DropReason::PortsExhausted);
        }
        let pi = protocol.index();
        let origin = if a.published {
            Origin::Published(a.external_port)
        } else {
            let mapped = self.mappings.get(&(protocol, inside)).copied();
            match self.pools[pi].slot_mut(a.external_port) {
                None => Origin::Adopted,
                Some(PortSlot::Free) if mapped.is_none() => {
                    *self.pools[pi]
                        .slot_mut(a.external_port)
                        .expect("in the pool") = PortSlot::Mapped {
                        inside: inside.0,
                        inside_port: inside.1,
                        refs: 1,
                    };
                    self.mappings.insert((protocol, inside), a.external_port);
                    self.by_endpoint.entry(inside.0).or_default().ports[pi] += 1;
                    Origin::Dynamic
                }
                Some(PortSlot::Mapped {
                    inside: ip,
                    inside_port,
                    refs,
                }) if (*ip, *inside_port) == inside && mapped == Some(a.external_port) => {
                    *refs += 1;
                    Origin::Dynamic
                }
                // Held by another endpoint or a publication, or this endpoint already
                // maps elsewhere: the far side knows this port for this flow only.
                Some(_) => return Err(DropReason::PortsExhausted),
            }
        };
        let mut tcp = TcpTrack::default();
        if protocol == Protocol::Tcp {
            tcp.on_segment(Direction::Outbound, super::wire::tcp_flags::SYN);
            tcp.on_segment(Direction::Inbound, super::wire::tcp_flags::SYN);
        }
        let mut s = Session {
            protocol,
            inside,
            remote,
            external_port: a.external_port,
            origin,
            tcp,
            last_seen: now,
            expires: now,
            directions: Session::OUT | Session::IN,
            packets: 3,
            offloaded: false,
        };
        s.touch(now, timeouts);
        let id = self.insert(s);
        if let Some(e) = self.by_endpoint.get_mut(&inside.0) {
            // Its mapped ports changed.
            e.changed();
        }
        stats.sessions_adopted += 1;
        Ok(id)
    }

    /// After a batch of [`SessionTable::adopt`]: the ports it claimed leave the free
    /// lists.
    pub fn adoption_done(&mut self) {
        for pool in &mut self.pools {
            let slots = &pool.slots;
            let first = pool.first;
            pool.free
                .retain(|p| matches!(slots.get(usize::from(*p - first)), Some(PortSlot::Free)));
        }
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
        if !self.endpoint_port_room(now, inside.0, protocol, stats) {
            return Err(DropReason::EndpointPortShare);
        }
        if self.pools[pi].free.is_empty() && !self.make_room(now, Room::Port(protocol), stats) {
            return Err(DropReason::PortsExhausted);
        }
        let pool = &mut self.pools[pi];
        // Adoption claims ports without taking them out of the free list.
        let port = loop {
            let p = pool.free.pop_front().ok_or(DropReason::PortsExhausted)?;
            if matches!(pool.slot(p), Some(PortSlot::Free)) {
                break p;
            }
        };
        if let Some(s) = pool.slot_mut(port) {
            *s = PortSlot::Mapped {
                inside: inside.0,
                inside_port: inside.1,
                refs: 1,
            };
        }
        self.mappings.insert((protocol, inside), port);
        self.by_endpoint.entry(inside.0).or_default().ports[pi] += 1;
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
                let ip = *inside;
                *slot = PortSlot::Free;
                pool.free.push_back(port);
                self.mappings.remove(&key);
                if let Some(e) = self.by_endpoint.get_mut(&ip) {
                    e.ports[protocol.index()] -= 1;
                    e.changed();
                }
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
        if s.origin == Origin::Adopted {
            self.events.push_back(PortEvent::Closed {
                protocol: s.protocol,
                port: s.external_port,
                remote: SocketAddrV4::new(s.remote.0, s.remote.1),
            });
        }
        if s.origin == Origin::Dynamic {
            self.events.push_back(PortEvent::Closed {
                protocol: s.protocol,
                port: s.external_port,
                remote: SocketAddrV4::new(s.remote.0, s.remote.1),
            });
            self.unref(s.protocol, s.external_port);
            if let Some(e) = self.by_endpoint.get_mut(&s.inside.0) {
                e.ids.remove(&id);
                e.changed();
            }
            self.forget_if_idle(s.inside.0);
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
    /// that was not enough, the least recently seen evictable sessions that free what is
    /// needed (a batch of them in a large table, see [`EVICT_BATCH_DIVISOR`]). Remembers
    /// when nothing can be evicted, so a full table under a flood costs one scan per
    /// change, not one per packet.
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
        let batch = evict_batch(match room {
            Room::Slot => self.max_sessions,
            Room::Port(p) => self.pools[p.index()].slots.len(),
        });
        let (victims, soonest) = least_recent_evictable(candidates, batch);
        if !victims.is_empty() {
            return self.remove_all(victims, Removal::Evicted, stats);
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
        // Expired sessions go first.
        let expired = expired_among(slots, &e.ids, now, None);
        if !expired.is_empty() {
            return self.remove_all(expired, Removal::Expired, stats);
        }
        let (victims, soonest) =
            least_recent_evictable(e.ids.iter().map(|&id| (id, session(id))), evict_batch(max));
        if !victims.is_empty() {
            return self.remove_all(victims, Removal::Evicted, stats);
        }
        e.victims.found_nothing(soonest);
        false
    }

    /// Removes `ids`; whether there were any.
    fn remove_all(&mut self, ids: Vec<u32>, why: Removal, stats: &mut Stats) -> bool {
        let any = !ids.is_empty();
        for id in ids {
            self.remove(id, why, stats);
        }
        any
    }

    /// Forgets an address that has no dynamic session (and so no mapped port) left.
    fn forget_if_idle(&mut self, ip: Ipv4Addr) {
        if self
            .by_endpoint
            .get(&ip)
            .is_some_and(|e| e.ids.is_empty() && e.ports.iter().all(|n| *n == 0))
        {
            self.by_endpoint.remove(&ip);
        }
    }

    /// Whether `ip` may map one more external port of `protocol` under the port share;
    /// at its share, first its expired sessions go, then its least recently seen
    /// evictable session that alone holds one of its ports. Remembers, per address and
    /// protocol, when none can go (as [`SessionTable::make_room`] does).
    fn endpoint_port_room(
        &mut self,
        now: Instant,
        ip: Ipv4Addr,
        protocol: Protocol,
        stats: &mut Stats,
    ) -> bool {
        let Some(share) = self.port_share else {
            return true;
        };
        let pi = protocol.index();
        let Some(e) = self.by_endpoint.get_mut(&ip) else {
            return share > 0;
        };
        if e.ports[pi] < share {
            return true;
        }
        if e.port_victims[pi].nothing_to_find(now) {
            return false;
        }
        let expired = expired_among(&self.slots, &e.ids, now, Some(protocol));
        self.remove_all(expired, Removal::Expired, stats);
        let Some(e) = self.by_endpoint.get_mut(&ip) else {
            return true;
        };
        if e.ports[pi] < share {
            return true;
        }
        let slots = &self.slots;
        let pool = &self.pools[pi];
        let candidates = e
            .ids
            .iter()
            .map(|&id| (id, slots[id as usize].as_ref().expect("live session id")))
            .filter(|(_, s)| {
                s.protocol == protocol
                    && matches!(
                        pool.slot(s.external_port),
                        Some(PortSlot::Mapped { refs: 1, .. })
                    )
            });
        let (victims, soonest) = least_recent_evictable(candidates, evict_batch(share));
        if !victims.is_empty() {
            return self.remove_all(victims, Removal::Evicted, stats);
        }
        e.port_victims[pi].found_nothing(soonest);
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
            e.changed();
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
        let mut st = Stats::default();
        let mut tab = SessionTable::new(10, None, None, &(1000..=1001));
        let a = udp(&mut tab, &mut st, now, ep(2, 5), ep(9, 53)).unwrap();
        let b = udp(&mut tab, &mut st, now, ep(2, 5), ep(8, 53)).unwrap();
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
        let c = udp(&mut tab, &mut st, now, ep(3, 5), ep(9, 53)).unwrap();
        assert_ne!(tab.get(c).external_port, p);
    }

    #[test]
    fn reserve_and_unreserve() {
        let mut tab = SessionTable::new(10, None, None, &(1000..=1001));
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

    /// Creates a dynamic UDP session of `inside` to `remote`, seen at `now`.
    fn udp(
        tab: &mut SessionTable,
        st: &mut Stats,
        now: Instant,
        inside: Endpoint,
        remote: Endpoint,
    ) -> Result<u32, DropReason> {
        let t = Timeouts::default();
        tab.create(
            now,
            &t,
            st,
            Protocol::Udp,
            inside,
            remote,
            None,
            TcpTrack::default(),
        )
    }

    #[test]
    fn a_large_full_table_evicts_its_oldest_in_batches() {
        let now = Instant::now();
        let mut st = Stats::default();
        // 512 slots: batches of 2 (1/256 of the table).
        let mut tab = SessionTable::new(512, None, None, &(10000..=19999));
        for i in 0..512u16 {
            let at = now + Duration::from_millis(u64::from(i));
            udp(&mut tab, &mut st, at, ep(2, 1000 + i), ep(9, 7)).unwrap();
        }
        let later = now + Duration::from_secs(1);
        udp(&mut tab, &mut st, later, ep(2, 5000), ep(9, 7)).unwrap();
        assert_eq!(st.sessions_evicted, 2);
        // The two oldest went, and their steering entries with them.
        let inside: HashSet<u16> = tab.iter().map(|s| s.inside.1).collect();
        assert!(!inside.contains(&1000) && !inside.contains(&1001));
        assert!(inside.contains(&1002));
        // The batch left room for the next one without another scan.
        udp(&mut tab, &mut st, later, ep(2, 5001), ep(9, 7)).unwrap();
        assert_eq!(st.sessions_evicted, 2);
        let closed = tab
            .drain_events()
            .filter(|e| matches!(e, PortEvent::Closed { .. }))
            .count();
        assert_eq!(closed, 2);
    }

    #[test]
    fn the_port_share_counts_ports_not_sessions() {
        let now = Instant::now();
        let mut st = Stats::default();
        let mut tab = SessionTable::new(100, None, Some(2), &(1000..=1009));
        // Two ports, each to many remotes: still within the share.
        for port in [1, 2] {
            for r in 10..15 {
                udp(&mut tab, &mut st, now, ep(2, port), ep(r, 7)).unwrap();
            }
        }
        assert_eq!(tab.len(), 10);
        // Unanswered sessions are evictable: the third port frees the oldest of its
        // own ports (all five sessions of one port must go for that, so none qualifies:
        // each port has five references) and is refused.
        assert_eq!(
            udp(&mut tab, &mut st, now, ep(2, 3), ep(10, 7)),
            Err(DropReason::EndpointPortShare)
        );
        // Another address has its own share; TCP has its own too.
        udp(&mut tab, &mut st, now, ep(3, 3), ep(10, 7)).unwrap();
        let t = Timeouts::default();
        tab.create(
            now,
            &t,
            &mut st,
            Protocol::Tcp,
            ep(2, 3),
            ep(10, 7),
            None,
            TcpTrack::default(),
        )
        .unwrap();
        // One of its ports down to a single session: that session can go for the new
        // port.
        let ids: Vec<u32> = (0..tab.slots.len() as u32)
            .filter(|&id| {
                tab.slots[id as usize]
                    .as_ref()
                    .is_some_and(|s| s.inside == ep(2, 1) && s.remote != ep(10, 7))
            })
            .collect();
        for id in ids {
            tab.remove(id, Removal::Removed, &mut st);
        }
        let later = now + Duration::from_secs(1);
        udp(&mut tab, &mut st, later, ep(2, 3), ep(10, 7)).unwrap();
        assert_eq!(st.sessions_evicted, 1);
        assert!(tab.iter().all(|s| s.inside != ep(2, 1)));
        assert_eq!(
            st.drops(DropReason::EndpointPortShare),
            0,
            "counted by the caller"
        );
    }
}
