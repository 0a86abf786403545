//! Fragmented datagrams in flight: which address the first fragment of each was
//! translated to, so that its later fragments (which carry no transport header, hence
//! no port to look a session up by) get the same rewrite. Per fragment, no reassembly.
//!
//! Bounded: at most `capacity` datagrams, the oldest forgotten first when a new one
//! comes; an entry also lapses `lifetime` after its first fragment. Both maps are sized
//! up front, so recording and looking up allocate nothing.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::session::Direction;

/// Datagrams remembered per translator by default.
pub const FRAG_DATAGRAMS: usize = 2048;
/// How long later fragments follow their first one by default: the kernel's reassembly
/// timeout (`net.ipv4.ipfrag_time`, 30 s), so that nat-fast keeps what the kernel's
/// reassembly would have kept.
pub const FRAG_LIFETIME: Duration = Duration::from_secs(30);

/// One datagram as it arrives (RFC 791: source, destination, protocol and
/// identification name it), and the way it goes through the translator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ident: u16,
    pub dir: Direction,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The new source (outbound) or destination (inbound) address.
    addr: Ipv4Addr,
    since: Instant,
}

/// The table; see the module documentation.
#[derive(Debug)]
pub struct FragTable {
    map: HashMap<FragKey, Entry>,
    /// Keys in the order they came: `order` and `map` hold the same keys.
    order: VecDeque<FragKey>,
    capacity: usize,
    lifetime: Duration,
    evicted: u64,
}

impl FragTable {
    /// A table of at most `capacity` (at least 1) datagrams kept `lifetime` each.
    pub fn new(capacity: usize, lifetime: Duration) -> Self {
        let capacity = capacity.max(1);
        FragTable {
            // Twice the bound: removals leave tombstones, and the spare room lets the
            // map clean them up in place instead of growing.
            map: HashMap::with_capacity(2 * capacity),
            order: VecDeque::with_capacity(capacity),
            capacity,
            lifetime,
            evicted: 0,
        }
    }

    /// Records the translation of a datagram's first fragment. A key already present
    /// (the identification reused) takes the new address and keeps its age.
    pub fn insert(&mut self, now: Instant, key: FragKey, addr: Ipv4Addr) {
        self.expire(now);
        if let Some(e) = self.map.get_mut(&key) {
            e.addr = addr;
            return;
        }
        if self.map.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
                self.evicted += 1;
            }
        }
        self.map.insert(key, Entry { addr, since: now });
        self.order.push_back(key);
    }

    /// The address a later fragment of `key`'s datagram is rewritten to, if its first
    /// fragment was translated less than the lifetime ago.
    pub fn get(&self, now: Instant, key: &FragKey) -> Option<Ipv4Addr> {
        self.map
            .get(key)
            .filter(|e| now.saturating_duration_since(e.since) < self.lifetime)
            .map(|e| e.addr)
    }

    /// Forgets the datagrams older than the lifetime.
    pub fn expire(&mut self, now: Instant) {
        while let Some(key) = self.order.front() {
            let live = self
                .map
                .get(key)
                .is_some_and(|e| now.saturating_duration_since(e.since) < self.lifetime);
            if live {
                break;
            }
            self.map.remove(key);
            self.order.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Datagrams forgotten before their lifetime to make room.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ident: u16, dir: Direction) -> FragKey {
        FragKey {
            protocol: 17,
            src: Ipv4Addr::new(198, 51, 100, 7),
            dst: Ipv4Addr::new(192, 0, 2, 1),
            ident,
            dir,
        }
    }

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

    #[test]
    fn remembers_lapses_and_keeps_directions_apart() {
        let t0 = Instant::now();
        let mut t = FragTable::new(8, Duration::from_secs(30));
        t.insert(t0, key(1, Direction::Inbound), A);
        assert_eq!(t.get(t0, &key(1, Direction::Inbound)), Some(A));
        assert_eq!(t.get(t0, &key(1, Direction::Outbound)), None);
        assert_eq!(t.get(t0, &key(2, Direction::Inbound)), None);
        // The identification reused: the new translation, the old age.
        t.insert(t0 + Duration::from_secs(10), key(1, Direction::Inbound), B);
        assert_eq!(t.len(), 1);
        let late = t0 + Duration::from_secs(29);
        assert_eq!(t.get(late, &key(1, Direction::Inbound)), Some(B));
        let lapsed = t0 + Duration::from_secs(30);
        assert_eq!(t.get(lapsed, &key(1, Direction::Inbound)), None);
        t.expire(lapsed);
        assert!(t.is_empty());
        assert_eq!(t.evicted(), 0);
    }

    #[test]
    fn stays_bounded_oldest_first() {
        let t0 = Instant::now();
        let mut t = FragTable::new(4, Duration::from_secs(30));
        for i in 0..1000u16 {
            t.insert(t0, key(i, Direction::Outbound), A);
            assert!(t.len() <= 4);
            assert_eq!(t.order.len(), t.len());
        }
        assert_eq!(t.evicted(), 996);
        assert_eq!(t.get(t0, &key(999, Direction::Outbound)), Some(A));
        assert_eq!(t.get(t0, &key(995, Direction::Outbound)), None);
        // Expiry on insert frees the room first: nothing more is evicted.
        let later = t0 + Duration::from_secs(31);
        for i in 0..4u16 {
            t.insert(later, key(i, Direction::Inbound), B);
        }
        assert_eq!(t.evicted(), 996);
        assert_eq!(t.len(), 4);
    }
}
