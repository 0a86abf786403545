//! Next hops for the nat-fast translator, from the kernel's own routing and neighbour
//! tables.
//!
//! The translator rewrites a container's packet and must then address the Ethernet
//! frame to the next hop on the uplink: the route's gateway, or the destination itself
//! when it is on-link. Two halves:
//! - [`NextHops`], owned by the data-plane thread: a cache of route results and
//!   neighbour link-layer addresses. Pure, no I/O.
//! - [`spawn_resolver`], a task on the daemon's tokio runtime: asks the kernel
//!   (`RTM_GETROUTE` for one destination, the neighbour table for its next hop),
//!   triggers neighbour resolution when the kernel has no address yet (`NTF_USE`, the
//!   kernel sends the ARP request itself), and listens to route and neighbour changes
//!   so the cache stays current. Results come back as [`NextHopEvent`]s on a channel
//!   the data plane drains between batches.
//!
//! A miss never silently drops a flow: the data plane holds the frames of a
//! destination it is resolving (a bounded queue) and sends them once the event
//! arrives.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{MulticastGroup, RouteMessageBuilder};
use tracing::debug;

/// What the resolver learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextHopEvent {
    /// The kernel routes `dst` out of `oif` towards `next_hop` (`dst` itself when the
    /// destination is on-link).
    Route {
        dst: Ipv4Addr,
        next_hop: Ipv4Addr,
        oif: u32,
    },
    /// The kernel has no route to `dst`.
    Unreachable { dst: Ipv4Addr },
    /// A neighbour's link-layer address on `ifindex`; `None` when the entry went away
    /// or resolution failed.
    Neighbour {
        ifindex: u32,
        ip: Ipv4Addr,
        mac: Option<[u8; 6]>,
    },
    /// A route was added or removed: every cached route result may be stale.
    RoutesChanged,
}

/// The answer of [`NextHops::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Send to this MAC, out of this interface.
    Ready { mac: [u8; 6], oif: u32 },
    /// Not known yet: hold the frame and ask the resolver.
    Unknown,
    /// The kernel has no route (or the next hop failed to resolve).
    Unreachable,
}

#[derive(Clone, Copy, Debug)]
enum RouteState {
    Via { next_hop: Ipv4Addr, oif: u32 },
    Unreachable,
}

/// The data plane's cache of route results and neighbours.
#[derive(Debug)]
pub struct NextHops {
    routes: HashMap<Ipv4Addr, RouteState>,
    neighbours: HashMap<(u32, Ipv4Addr), Option<[u8; 6]>>,
    asked: HashMap<Ipv4Addr, Instant>,
    max_routes: usize,
}

/// How long to wait before asking the resolver again about the same destination.
pub const ASK_INTERVAL: Duration = Duration::from_millis(500);

impl NextHops {
    /// A cache holding at most `max_routes` destinations (cleared when full: entries
    /// are cheap to learn again).
    pub fn new(max_routes: usize) -> Self {
        NextHops {
            routes: HashMap::new(),
            neighbours: HashMap::new(),
            asked: HashMap::new(),
            max_routes: max_routes.max(1),
        }
    }

    /// Where a frame for `dst` goes.
    pub fn lookup(&self, dst: Ipv4Addr) -> Lookup {
        match self.routes.get(&dst) {
            None => Lookup::Unknown,
            Some(RouteState::Unreachable) => Lookup::Unreachable,
            Some(RouteState::Via { next_hop, oif }) => {
                match self.neighbours.get(&(*oif, *next_hop)) {
                    Some(Some(mac)) => Lookup::Ready {
                        mac: *mac,
                        oif: *oif,
                    },
                    Some(None) => Lookup::Unreachable,
                    None => Lookup::Unknown,
                }
            }
        }
    }

    /// Whether to send the resolver a request for `dst` now (at most one per
    /// [`ASK_INTERVAL`] per destination).
    pub fn should_ask(&mut self, dst: Ipv4Addr, now: Instant) -> bool {
        match self.asked.get(&dst) {
            Some(t) if now.duration_since(*t) < ASK_INTERVAL => false,
            _ => {
                if self.asked.len() >= self.max_routes {
                    self.asked
                        .retain(|_, t| now.duration_since(*t) < ASK_INTERVAL);
                }
                self.asked.insert(dst, now);
                true
            }
        }
    }

    /// Takes in what the resolver learned. Returns the destinations whose lookup may
    /// have changed (to retry frames held for them).
    pub fn apply(&mut self, event: NextHopEvent) -> Vec<Ipv4Addr> {
        match event {
            NextHopEvent::Route { dst, next_hop, oif } => {
                if self.routes.len() >= self.max_routes {
                    self.routes.clear();
                }
                self.routes.insert(dst, RouteState::Via { next_hop, oif });
                self.asked.remove(&dst);
                vec![dst]
            }
            NextHopEvent::Unreachable { dst } => {
                self.routes.insert(dst, RouteState::Unreachable);
                self.asked.remove(&dst);
                vec![dst]
            }
            NextHopEvent::Neighbour { ifindex, ip, mac } => {
                if self.neighbours.len() >= self.max_routes
                    && !self.neighbours.contains_key(&(ifindex, ip))
                {
                    // Bounded: keep the next hops of cached routes only (the kernel
                    // reports every neighbour of the host, not just ours); if they alone
                    // fill it, start over as the route cache does.
                    let in_use: std::collections::HashSet<(u32, Ipv4Addr)> = self
                        .routes
                        .values()
                        .filter_map(|r| match r {
                            RouteState::Via { next_hop, oif } => Some((*oif, *next_hop)),
                            RouteState::Unreachable => None,
                        })
                        .collect();
                    self.neighbours.retain(|k, _| in_use.contains(k));
                    if self.neighbours.len() >= self.max_routes {
                        self.neighbours.clear();
                        self.routes.clear();
                    }
                }
                self.neighbours.insert((ifindex, ip), mac);
                self.routes
                    .iter()
                    .filter(|(_, r)| {
                        matches!(r, RouteState::Via { next_hop, oif } if *next_hop == ip && *oif == ifindex)
                    })
                    .map(|(d, _)| *d)
                    .collect()
            }
            NextHopEvent::RoutesChanged => {
                self.routes.clear();
                self.asked.clear();
                Vec::new()
            }
        }
    }

    /// Number of cached destinations.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Sends destinations to the resolver task. Cheap to clone; never blocks.
#[derive(Clone, Debug)]
pub struct Resolver {
    requests: tokio::sync::mpsc::UnboundedSender<Ipv4Addr>,
}

impl Resolver {
    /// Asks for the next hop of `dst`; the answer arrives as events. Returns false when
    /// the resolver task has stopped.
    pub fn request(&self, dst: Ipv4Addr) -> bool {
        self.requests.send(dst).is_ok()
    }

    /// A resolver with no task behind it: the requests arrive on the receiver (for
    /// tests, which answer them with [`NextHopEvent`]s themselves).
    #[cfg(test)]
    pub(crate) fn detached() -> (Resolver, tokio::sync::mpsc::UnboundedReceiver<Ipv4Addr>) {
        let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
        (Resolver { requests }, rx)
    }
}

/// Starts the resolver on the current tokio runtime. It runs until every [`Resolver`]
/// is dropped. Events go to `events` (the data plane's channel).
pub fn spawn_resolver(
    events: crossbeam_channel::Sender<NextHopEvent>,
) -> std::io::Result<(Resolver, tokio::task::JoinHandle<()>)> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    let (mconn, _mhandle, mut monitor) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Neigh, MulticastGroup::Ipv4Route])?;
    tokio::spawn(mconn);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Ipv4Addr>();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                req = rx.recv() => {
                    let Some(dst) = req else { break };
                    for ev in resolve(&handle, dst).await {
                        if events.send(ev).is_err() {
                            return;
                        }
                    }
                }
                msg = monitor.next() => {
                    let Some((msg, _)) = msg else { break };
                    if let NetlinkPayload::InnerMessage(m) = msg.payload {
                        if let Some(ev) = event_from(&m) {
                            if events.send(ev).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    });
    Ok((Resolver { requests: tx }, task))
}

/// One destination: the route, then the next hop's neighbour entry (resolution
/// triggered when it has no address yet).
async fn resolve(handle: &rtnetlink::Handle, dst: Ipv4Addr) -> Vec<NextHopEvent> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 32)
        .build();
    let route = handle.route().get(msg).execute().try_next().await;
    let (next_hop, oif) = match route {
        Ok(Some(r)) => match route_next_hop(&r, dst) {
            Some(v) => v,
            None => return vec![NextHopEvent::Unreachable { dst }],
        },
        Ok(None) | Err(_) => return vec![NextHopEvent::Unreachable { dst }],
    };
    let mut out = vec![NextHopEvent::Route { dst, next_hop, oif }];
    match find_neighbour(handle, oif, next_hop).await {
        Some(mac) => out.push(NextHopEvent::Neighbour {
            ifindex: oif,
            ip: next_hop,
            mac: Some(mac),
        }),
        None => {
            // NTF_USE: the kernel creates the entry if needed and sends the ARP request;
            // the answer arrives through the neighbour monitor.
            let mut req = handle
                .neighbours()
                .add(oif, IpAddr::V4(next_hop))
                .flags(NeighbourFlags::Use)
                .state(NeighbourState::None);
            req.message_mut()
                .attributes
                .retain(|a| !matches!(a, NeighbourAttribute::LinkLayerAddress(_)));
            if let Err(e) = req.execute().await {
                debug!(%next_hop, oif, "neighbour resolution request failed: {e}");
            }
        }
    }
    out
}

fn route_next_hop(r: &RouteMessage, dst: Ipv4Addr) -> Option<(Ipv4Addr, u32)> {
    let mut gateway = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Some((gateway.unwrap_or(dst), oif?))
}

async fn find_neighbour(handle: &rtnetlink::Handle, ifindex: u32, ip: Ipv4Addr) -> Option<[u8; 6]> {
    let mut dump = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute();
    while let Ok(Some(m)) = dump.try_next().await {
        if m.header.ifindex != ifindex {
            continue;
        }
        if let Some((nip, mac)) = neighbour_entry(&m) {
            if nip == ip {
                return mac;
            }
        }
    }
    None
}

/// The address of a neighbour message and its usable link-layer address (None when
/// the entry is incomplete or failed).
fn neighbour_entry(m: &NeighbourMessage) -> Option<(Ipv4Addr, Option<[u8; 6]>)> {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => ip = Some(*v),
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut b = [0u8; 6];
                b.copy_from_slice(l);
                mac = Some(b);
            }
            _ => {}
        }
    }
    let usable = matches!(
        m.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    Some((ip?, if usable { mac } else { None }))
}

fn event_from(m: &RouteNetlinkMessage) -> Option<NextHopEvent> {
    match m {
        RouteNetlinkMessage::NewNeighbour(n) => {
            let (ip, mac) = neighbour_entry(n)?;
            // Incomplete entries are on their way: only a failure is news.
            if mac.is_none() && n.header.state != NeighbourState::Failed {
                return None;
            }
            Some(NextHopEvent::Neighbour {
                ifindex: n.header.ifindex,
                ip,
                mac,
            })
        }
        RouteNetlinkMessage::DelNeighbour(n) => {
            let (ip, _) = neighbour_entry(n)?;
            Some(NextHopEvent::Neighbour {
                ifindex: n.header.ifindex,
                ip,
                mac: None,
            })
        }
        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
            Some(NextHopEvent::RoutesChanged)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn unknown_until_route_and_neighbour_are_known() {
        let mut nh = NextHops::new(16);
        assert_eq!(nh.lookup(DST), Lookup::Unknown);
        let changed = nh.apply(NextHopEvent::Route {
            dst: DST,
            next_hop: GW,
            oif: 7,
        });
        assert_eq!(changed, vec![DST]);
        assert_eq!(nh.lookup(DST), Lookup::Unknown);
        let changed = nh.apply(NextHopEvent::Neighbour {
            ifindex: 7,
            ip: GW,
            mac: Some(MAC),
        });
        assert_eq!(changed, vec![DST]);
        assert_eq!(nh.lookup(DST), Lookup::Ready { mac: MAC, oif: 7 });
    }

    #[test]
    fn neighbour_on_another_interface_does_not_count() {
        let mut nh = NextHops::new(16);
        nh.apply(NextHopEvent::Route {
            dst: DST,
            next_hop: GW,
            oif: 7,
        });
        let changed = nh.apply(NextHopEvent::Neighbour {
            ifindex: 8,
            ip: GW,
            mac: Some(MAC),
        });
        assert!(changed.is_empty());
        assert_eq!(nh.lookup(DST), Lookup::Unknown);
    }

    #[test]
    fn failures_and_route_changes() {
        let mut nh = NextHops::new(16);
        nh.apply(NextHopEvent::Unreachable { dst: DST });
        assert_eq!(nh.lookup(DST), Lookup::Unreachable);
        nh.apply(NextHopEvent::Route {
            dst: DST,
            next_hop: GW,
            oif: 7,
        });
        nh.apply(NextHopEvent::Neighbour {
            ifindex: 7,
            ip: GW,
            mac: None,
        });
        assert_eq!(nh.lookup(DST), Lookup::Unreachable);
        nh.apply(NextHopEvent::Neighbour {
            ifindex: 7,
            ip: GW,
            mac: Some(MAC),
        });
        assert!(matches!(nh.lookup(DST), Lookup::Ready { .. }));
        nh.apply(NextHopEvent::RoutesChanged);
        assert_eq!(nh.lookup(DST), Lookup::Unknown);
        assert!(nh.is_empty());
    }

    #[test]
    fn asks_at_most_once_per_interval() {
        let mut nh = NextHops::new(16);
        let t0 = Instant::now();
        assert!(nh.should_ask(DST, t0));
        assert!(!nh.should_ask(DST, t0 + Duration::from_millis(10)));
        assert!(nh.should_ask(DST, t0 + ASK_INTERVAL));
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut nh = NextHops::new(2);
        for i in 0..5u8 {
            nh.apply(NextHopEvent::Route {
                dst: Ipv4Addr::new(192, 0, 2, i),
                next_hop: GW,
                oif: 1,
            });
            assert!(nh.len() <= 2);
        }
    }

    #[test]
    fn neighbours_stay_bounded_by_the_routes_in_use() {
        let mut nh = NextHops::new(4);
        let gw = Ipv4Addr::new(192, 0, 2, 1);
        nh.apply(NextHopEvent::Route {
            dst: Ipv4Addr::new(198, 51, 100, 7),
            next_hop: gw,
            oif: 2,
        });
        nh.apply(NextHopEvent::Neighbour {
            ifindex: 2,
            ip: gw,
            mac: Some([2, 0, 0, 0, 0, 1]),
        });
        // The host's other neighbours come and go by the thousand.
        for i in 0..1000u32 {
            nh.apply(NextHopEvent::Neighbour {
                ifindex: 3,
                ip: Ipv4Addr::from(0x0a00_0000 + i),
                mac: Some([2, 0, 0, 0, 1, 1]),
            });
            assert!(nh.neighbours.len() <= 5);
        }
        assert_eq!(
            nh.lookup(Ipv4Addr::new(198, 51, 100, 7)),
            Lookup::Ready {
                mac: [2, 0, 0, 0, 0, 1],
                oif: 2
            }
        );
    }
}
