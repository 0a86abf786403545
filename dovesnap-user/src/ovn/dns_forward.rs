//! The DNS forwarder behind a switch's DNS localport ([`super::dns::DNS_ADDR`]).
//!
//! ovn-controller answers the names of the switch's DNS table and gives no reply at all
//! to any other query (OVN 23.03): other names, and the AAAA half of a lookup of an
//! overlay name. A query OVN did not answer goes on to the localport; bound on this
//! host, it reaches a socket on [`super::dns::DNS_ADDR`]:53 served here, which forwards
//! it to the host's resolvers and relays the reply, or answers SERVFAIL when none
//! answered, so that no client waits for its own timeout.
//!
//! Only the 12-byte header is read ([`Header`]); the rest of a message is carried
//! as is. [`InFlight`] is the bookkeeping (ids, deadlines, a bound), free of I/O;
//! [`serve`] the loop around it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::dns::{DNS_ADDR, DNS_MAC};
use crate::host::addr::Ipv4Net;
use crate::host::netlink::Netlink;
use crate::host::netns;

/// How long an upstream has to answer before the next one is asked (or SERVFAIL sent).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);
/// Queries in flight at most per forwarder; more are dropped (and counted).
pub const MAX_IN_FLIGHT: usize = 1024;
/// The largest message read (EDNS0 clients advertise up to 4096 bytes in practice).
pub const MAX_MESSAGE: usize = 4096;

mod field {
    use std::ops::Range;
    pub const ID: Range<usize> = 0..2;
    pub const FLAGS: Range<usize> = 2..4;
    pub const HEADER_LEN: usize = 12;
}

/// QR: the message is a response.
const FLAG_QR: u16 = 0x8000;
/// AA, TC: cleared in a SERVFAIL of ours.
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
/// RA: recursion available (we forward).
const FLAG_RA: u16 = 0x0080;
const OPCODE_MASK: u16 = 0x7800;
const RCODE_MASK: u16 = 0x000f;
/// RCODE SERVFAIL (RFC 1035).
pub const RCODE_SERVFAIL: u16 = 2;

/// A typed view over a DNS message's header; [`Header::new_checked`] checks the length
/// once so that no accessor can panic afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// `None` when the message is shorter than a header.
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= field::HEADER_LEN).then_some(Header { buffer })
    }
    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn id(&self) -> u16 {
        self.u16_at(field::ID)
    }
    pub fn flags(&self) -> u16 {
        self.u16_at(field::FLAGS)
    }
    pub fn is_response(&self) -> bool {
        self.flags() & FLAG_QR != 0
    }
    pub fn opcode(&self) -> u16 {
        (self.flags() & OPCODE_MASK) >> 11
    }
    pub fn rcode(&self) -> u16 {
        self.flags() & RCODE_MASK
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    pub fn set_id(&mut self, id: u16) {
        self.buffer.as_mut()[field::ID].copy_from_slice(&id.to_be_bytes());
    }
    pub fn set_flags(&mut self, flags: u16) {
        self.buffer.as_mut()[field::FLAGS].copy_from_slice(&flags.to_be_bytes());
    }
}

/// A query worth forwarding: a header, not a response. `None` for anything else
/// (dropped and counted as malformed).
pub fn check_query(msg: &[u8]) -> Option<Header<&[u8]>> {
    Header::new_checked(msg).filter(|h| !h.is_response())
}

/// The SERVFAIL answer to `query`: the query itself (id and question kept, so the client
/// matches it) turned into a response with RCODE 2, recursion available.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let mut out = query.to_vec();
    let mut h = Header::new_checked(&mut out[..])?;
    let flags = (h.flags() | FLAG_QR | FLAG_RA) & !(FLAG_AA | FLAG_TC | RCODE_MASK);
    h.set_flags(flags | RCODE_SERVFAIL);
    Some(out)
}

/// The resolvers of a resolv.conf text (`nameserver` lines, port 53), in order.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// One forwarded query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub client: SocketAddr,
    /// The client's query, with the client's id (for the SERVFAIL, and a retry).
    pub query: Vec<u8>,
    /// The upstream asked (index into the forwarder's list).
    pub upstream: usize,
    pub deadline: Instant,
}

impl Pending {
    pub fn client_id(&self) -> u16 {
        Header::new_checked(&self.query[..]).map_or(0, |h| h.id())
    }
}

/// What to do with a query that timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// Send `query` (already carrying upstream id) to upstream `upstream`.
    Retry { upstream: usize, query: Vec<u8> },
    /// No upstream left: send `reply` (a SERVFAIL) to `client`.
    Fail { client: SocketAddr, reply: Vec<u8> },
}

/// The queries in flight, by the id used towards the upstreams (each query gets a fresh
/// one: two clients' ids may collide). Pure bookkeeping; the caller does the I/O.
#[derive(Debug)]
pub struct InFlight {
    by_id: HashMap<u16, Pending>,
    next_id: u16,
    cap: usize,
    timeout: Duration,
    upstreams: usize,
}

impl InFlight {
    pub fn new(upstreams: usize, cap: usize, timeout: Duration) -> Self {
        InFlight {
            by_id: HashMap::new(),
            next_id: 1,
            cap,
            timeout,
            upstreams,
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Takes a client's query: the message to send to upstream 0 (its id replaced by a
    /// free one), or `None` when the map is full, there is no upstream or the query is
    /// malformed.
    pub fn start(&mut self, client: SocketAddr, query: &[u8], now: Instant) -> Option<Vec<u8>> {
        check_query(query)?;
        if self.by_id.len() >= self.cap || self.upstreams == 0 {
            return None;
        }
        let id = self.free_id()?;
        self.by_id.insert(
            id,
            Pending {
                client,
                query: query.to_vec(),
                upstream: 0,
                deadline: now + self.timeout,
            },
        );
        Some(with_id(query, id))
    }

    fn free_id(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.by_id.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// An upstream's reply from upstream `from`: the client to relay it to and the reply
    /// with the client's id back, or `None` (not a response, not in flight, or from an
    /// upstream other than the one asked: dropped).
    pub fn finish(&mut self, reply: &[u8], from: usize) -> Option<(SocketAddr, Vec<u8>)> {
        let h = Header::new_checked(reply).filter(|h| h.is_response())?;
        if self.by_id.get(&h.id())?.upstream != from {
            return None;
        }
        let p = self.by_id.remove(&h.id())?;
        Some((p.client, with_id(reply, p.client_id())))
    }

    /// The earliest deadline, for the caller's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_id.values().map(|p| p.deadline).min()
    }

    /// The queries past their deadline: each asks the next upstream, or fails when none
    /// is left.
    pub fn expire(&mut self, now: Instant) -> Vec<Expired> {
        let due: Vec<u16> = self
            .by_id
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for id in due {
            let Some(p) = self.by_id.get_mut(&id) else {
                continue;
            };
            if p.upstream + 1 < self.upstreams {
                p.upstream += 1;
                p.deadline = now + self.timeout;
                out.push(Expired::Retry {
                    upstream: p.upstream,
                    query: with_id(&p.query, id),
                });
            } else if let Some(p) = self.by_id.remove(&id) {
                if let Some(reply) = servfail(&p.query) {
                    out.push(Expired::Fail {
                        client: p.client,
                        reply,
                    });
                }
            }
        }
        out
    }
}

fn with_id(msg: &[u8], id: u16) -> Vec<u8> {
    let mut out = msg.to_vec();
    if let Some(mut h) = Header::new_checked(&mut out[..]) {
        h.set_id(id);
    }
    out
}

/// A forwarder's counters (`dovesnap status`, logs).
#[derive(Debug, Default)]
pub struct Stats {
    pub forwarded: AtomicU64,
    pub answered: AtomicU64,
    pub servfail: AtomicU64,
    pub malformed: AtomicU64,
    pub dropped: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Serves `listen` (the socket on the DNS address, in the switch's namespace): queries
/// go to `upstreams` in order through `upstream` (a socket of the host's namespace),
/// `timeout` each; replies come back to the client with its id, SERVFAIL when none
/// answered. Runs until a socket fails.
pub async fn serve(
    listen: UdpSocket,
    upstream: UdpSocket,
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    stats: Arc<Stats>,
) -> io::Result<()> {
    let mut flight = InFlight::new(upstreams.len(), MAX_IN_FLIGHT, timeout);
    let mut qbuf = vec![0u8; MAX_MESSAGE];
    let mut rbuf = vec![0u8; MAX_MESSAGE];
    loop {
        let wake = flight
            .next_deadline()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = listen.recv_from(&mut qbuf) => {
                let (n, client) = r?;
                let query = &qbuf[..n];
                if check_query(query).is_none() {
                    Stats::bump(&stats.malformed);
                    continue;
                }
                match flight.start(client, query, Instant::now()) {
                    Some(msg) => {
                        Stats::bump(&stats.forwarded);
                        let _ = upstream.send_to(&msg, upstreams[0]).await;
                    }
                    None => Stats::bump(&stats.dropped),
                }
            }
            r = upstream.recv_from(&mut rbuf) => {
                let (n, from) = r?;
                let Some(idx) = upstreams.iter().position(|u| *u == from) else {
                    continue;
                };
                match flight.finish(&rbuf[..n], idx) {
                    Some((client, reply)) => {
                        Stats::bump(&stats.answered);
                        let _ = listen.send_to(&reply, client).await;
                    }
                    None => Stats::bump(&stats.malformed),
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                for e in flight.expire(Instant::now()) {
                    match e {
                        Expired::Retry { upstream: i, query } => {
                            let _ = upstream.send_to(&query, upstreams[i]).await;
                        }
                        Expired::Fail { client, reply } => {
                            Stats::bump(&stats.servfail);
                            let _ = listen.send_to(&reply, client).await;
                        }
                    }
                }
            }
        }
    }
}

/// Why a switch's forwarder could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DnsForwardError {
    #[error(
        "DNS forwarder of switch {switch}: `{subnet}` is not the switch's IPv4 subnet (a.b.c.d/n)"
    )]
    Subnet { switch: String, subnet: String },
    #[error("DNS forwarder of switch {switch}: {source}")]
    Netns {
        switch: String,
        source: crate::host::netns::NetnsError,
    },
    #[error("DNS forwarder of switch {switch}, namespace {netns}: {source}")]
    Netlink {
        switch: String,
        netns: String,
        source: crate::host::netlink::NetlinkError,
    },
    #[error(
        "DNS forwarder of switch {switch}: cannot listen on {addr} in namespace {netns}: {source}"
    )]
    Listen {
        switch: String,
        netns: String,
        addr: SocketAddr,
        source: io::Error,
    },
}

/// The host objects that bind a switch's DNS localport: a namespace holding the DNS
/// address on one end of a veth pair, whose other end is an OVS port of the integration
/// bridge with `iface-id` the localport. Named from a hash of the chassis and switch
/// names (one per switch, as subnets may overlap; and per chassis, as the namespace
/// names of hosts run on one machine, the tests' namespace hosts, share /run/netns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub netns: String,
    /// The veth end on the integration bridge.
    pub host_ifname: String,
    /// The veth end in the namespace (holds [`super::dns::DNS_ADDR`]).
    pub peer_ifname: String,
}

impl Binding {
    pub fn of(chassis: &str, switch: &str) -> Self {
        // FNV-1a: stable across versions and restarts (std's hasher is not).
        let key = format!("{chassis}/{switch}");
        let h = key.bytes().fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        Binding {
            netns: format!("dsdns-{h:08x}"),
            host_ifname: format!("dsdns{h:08x}h"),
            peer_ifname: format!("dsdns{h:08x}n"),
        }
    }
}

/// A running forwarder.
struct Running {
    binding: Binding,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<Stats>,
}

/// This host's forwarders, one per overlay switch, all forwarding to `upstreams`.
pub struct Forwarders {
    upstreams: Vec<SocketAddr>,
    running: std::sync::Mutex<HashMap<String, Running>>,
}

impl Forwarders {
    /// IPv4 upstreams only (the forwarding socket is an IPv4 one); the others are
    /// ignored with a warning.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        let (v4, other): (Vec<_>, Vec<_>) = upstreams.into_iter().partition(|u| u.is_ipv4());
        if !other.is_empty() {
            tracing::warn!(?other, "DNS forwarder: IPv6 upstreams are not used");
        }
        if v4.is_empty() {
            tracing::warn!("DNS forwarder: no IPv4 upstream; unanswered queries get SERVFAIL");
        }
        Forwarders {
            upstreams: v4,
            running: std::sync::Mutex::default(),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether switch `switch`'s forwarder runs and its namespace and veth are there.
    pub fn is_intact(&self, chassis: &str, switch: &str) -> bool {
        let b = Binding::of(chassis, switch);
        self.lock()
            .get(switch)
            .is_some_and(|r| !r.task.is_finished())
            && netns::exists(&b.netns)
            && std::path::Path::new(&format!("/sys/class/net/{}", b.host_ifname)).exists()
    }

    /// Makes switch `switch`'s namespace, veth pair and forwarder (what is left of an
    /// earlier one goes first), `subnet` the switch's subnet (the replies' on-link
    /// route). Returns false when all of it was already there.
    pub async fn ensure(
        &self,
        chassis: &str,
        switch: &str,
        subnet: &str,
    ) -> Result<bool, DnsForwardError> {
        if self.is_intact(chassis, switch) {
            return Ok(false);
        }
        self.remove(chassis, switch).await;
        let b = Binding::of(chassis, switch);
        let sock = match make_namespace(switch, &b, subnet).await {
            Ok(s) => s,
            Err(e) => {
                self.remove(chassis, switch).await;
                return Err(e);
            }
        };
        let listen_err = |source: io::Error| DnsForwardError::Listen {
            switch: switch.to_string(),
            netns: b.netns.clone(),
            addr: SocketAddr::new(DNS_ADDR.into(), 53),
            source,
        };
        let listen = UdpSocket::from_std(sock).map_err(listen_err)?;
        let upstream = UdpSocket::bind("0.0.0.0:0").await.map_err(listen_err)?;
        let stats = Arc::new(Stats::default());
        let (s, ups, name) = (stats.clone(), self.upstreams.clone(), switch.to_string());
        let task = tokio::spawn(async move {
            if let Err(e) = serve(listen, upstream, ups, UPSTREAM_TIMEOUT, s).await {
                tracing::warn!(switch = %name, "DNS forwarder stopped: {e}");
            }
        });
        self.lock().insert(
            switch.to_string(),
            Running {
                binding: b.clone(),
                task,
                stats,
            },
        );
        tracing::info!(switch, netns = %b.netns, port = %b.host_ifname, "DNS forwarder serving");
        Ok(true)
    }

    /// Stops switch `switch`'s forwarder and deletes its namespace and veth pair (the
    /// OVS port is the caller's). Whatever is missing is skipped.
    pub async fn remove(&self, chassis: &str, switch: &str) {
        if let Some(r) = self.lock().remove(switch) {
            r.task.abort();
        }
        delete_namespace(Binding::of(chassis, switch)).await;
    }

    /// At daemon shutdown: stops every forwarder and deletes its namespace and veth
    /// (nothing would serve them; start makes them again). The OVS ports stay, as the
    /// endpoints' do.
    pub async fn shutdown(&self) {
        let running: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        for r in running {
            r.task.abort();
            delete_namespace(r.binding).await;
        }
    }

    /// `dovesnap status`: the namespace and counters of switch `switch`'s forwarder.
    pub fn status(&self, chassis: &str, switch: &str) -> Option<String> {
        let running = self.lock();
        let r = running.get(switch)?;
        let s = &r.stats;
        Some(format!(
            "{} {}, forwarded {}, answered {}, servfail {}, malformed {}, dropped {}",
            Binding::of(chassis, switch).netns,
            if r.task.is_finished() {
                "stopped"
            } else {
                "serving"
            },
            Stats::get(&s.forwarded),
            Stats::get(&s.answered),
            Stats::get(&s.servfail),
            Stats::get(&s.malformed),
            Stats::get(&s.dropped),
        ))
    }
}

/// Deletes a forwarder's veth pair and namespace; what is missing is skipped, and a
/// failure is logged and does not stop the rest.
async fn delete_namespace(b: Binding) {
    match Netlink::new() {
        Ok(nl) => {
            if let Err(e) = nl.delete(&b.host_ifname).await {
                tracing::warn!(port = %b.host_ifname, "DNS forwarder: {e}");
            }
        }
        Err(e) => tracing::warn!(port = %b.host_ifname, "DNS forwarder: {e}"),
    }
    if let Err(e) = netns::delete(&b.netns).await {
        tracing::warn!(netns = %b.netns, "DNS forwarder: {e}");
    }
}

/// The namespace, the veth pair (the peer with the localport's MAC and the DNS address,
/// TX checksums computed, an on-link route to the subnet) and the listening socket,
/// made in the namespace. What it made stays on failure (the caller removes it).
async fn make_namespace(
    switch: &str,
    b: &Binding,
    subnet: &str,
) -> Result<std::net::UdpSocket, DnsForwardError> {
    let subnet: Ipv4Net = subnet.parse().map_err(|_| DnsForwardError::Subnet {
        switch: switch.to_string(),
        subnet: subnet.to_string(),
    })?;
    let ns_err = |source| DnsForwardError::Netns {
        switch: switch.to_string(),
        source,
    };
    let nl_err = |source| DnsForwardError::Netlink {
        switch: switch.to_string(),
        netns: b.netns.clone(),
        source,
    };
    netns::add(&b.netns).await.map_err(ns_err)?;
    let host = Netlink::new().map_err(nl_err)?;
    // The host end comes up as an OVS port only (no ARP, as the endpoints' host ends).
    host.create_veth(&b.host_ifname, &b.peer_ifname, Some(DNS_MAC.0), None)
        .await
        .map_err(nl_err)?;
    // Frames leave the namespace for OVS's userspace datapath, which does not complete
    // partial checksums: the kernel computes them here.
    if let Err(e) = crate::host::ethtool::disable_tx_checksum(&b.peer_ifname) {
        tracing::warn!(port = %b.peer_ifname, "cannot turn TX checksum offload off: {e}");
    }
    let ns = netns::open(&b.netns).map_err(ns_err)?;
    host.move_to_netns(&b.peer_ifname, ns.as_raw_fd())
        .await
        .map_err(nl_err)?;
    let inside = netns::run_in(&b.netns, Netlink::new)
        .await
        .map_err(ns_err)?
        .map_err(nl_err)?;
    inside.set_up("lo").await.map_err(nl_err)?;
    inside
        .set_address_up(&b.peer_ifname, DNS_ADDR, 32)
        .await
        .map_err(nl_err)?;
    inside
        .add_link_route(subnet, &b.peer_ifname)
        .await
        .map_err(nl_err)?;
    let at = SocketAddr::new(DNS_ADDR.into(), 53);
    let bound = netns::run_in(&b.netns, move || {
        let sock = std::net::UdpSocket::bind(at)?;
        sock.set_nonblocking(true)?;
        Ok(sock)
    })
    .await
    .map_err(ns_err)?;
    bound.map_err(|source| DnsForwardError::Listen {
        switch: switch.to_string(),
        netns: b.netns.clone(),
        addr: at,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for "a." type A, id `id`, RD set.
    fn query(id: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(&[1, b'a', 0, 0, 1, 0, 1]);
        q
    }

    fn reply_to(q: &[u8]) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] |= 0x80;
        r
    }

    fn client() -> SocketAddr {
        "10.0.0.2:40000".parse().unwrap()
    }

    #[test]
    fn header_fields() {
        let q = query(0xbeef);
        let h = Header::new_checked(&q[..]).unwrap();
        assert_eq!(h.id(), 0xbeef);
        assert!(!h.is_response());
        assert_eq!(h.opcode(), 0);
        assert_eq!(h.rcode(), 0);
        assert!(Header::new_checked(&q[..11]).is_none());
        assert!(check_query(&reply_to(&q)).is_none());
        assert!(check_query(&[]).is_none());
    }

    #[test]
    fn servfail_keeps_id_and_question() {
        let q = query(7);
        let r = servfail(&q).unwrap();
        let h = Header::new_checked(&r[..]).unwrap();
        assert_eq!(h.id(), 7);
        assert!(h.is_response());
        assert_eq!(h.rcode(), RCODE_SERVFAIL);
        assert_eq!(h.flags() & 0x0100, 0x0100, "RD kept");
        assert_eq!(&r[4..], &q[4..]);
        assert!(servfail(&[1, 2, 3]).is_none());
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# c\nsearch x\nnameserver 127.0.0.53\nnameserver  ::1\nnameserver bad\noptions ndots:1\n";
        assert_eq!(
            nameservers(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn replies_go_back_with_the_clients_id() {
        let now = Instant::now();
        let mut f = InFlight::new(1, 8, Duration::from_secs(1));
        // Two clients with the same id get distinct upstream ids.
        let a = f.start(client(), &query(5), now).unwrap();
        let other: SocketAddr = "10.0.0.3:1".parse().unwrap();
        let b = f.start(other, &query(5), now).unwrap();
        let (ia, ib) = (
            Header::new_checked(&a[..]).unwrap().id(),
            Header::new_checked(&b[..]).unwrap().id(),
        );
        assert_ne!(ia, ib);
        assert_eq!(f.len(), 2);
        let (to, reply) = f.finish(&reply_to(&b), 0).unwrap();
        assert_eq!(to, other);
        assert_eq!(Header::new_checked(&reply[..]).unwrap().id(), 5);
        // A second reply, a query echoed back, or one from the wrong upstream: dropped.
        assert!(f.finish(&reply_to(&b), 0).is_none());
        assert!(f.finish(&a, 0).is_none());
        assert!(f.finish(&reply_to(&a), 1).is_none());
        assert!(f.finish(&reply_to(&a), 0).is_some());
        assert!(f.is_empty());
    }

    #[test]
    fn timeouts_try_the_next_upstream_then_fail() {
        let now = Instant::now();
        let t = Duration::from_secs(1);
        let mut f = InFlight::new(2, 8, t);
        let sent = f.start(client(), &query(9), now).unwrap();
        assert_eq!(f.next_deadline(), Some(now + t));
        assert!(f.expire(now).is_empty());
        match f.expire(now + t).as_slice() {
            [Expired::Retry { upstream: 1, query }] => assert_eq!(query, &sent),
            other => panic!("{other:?}"),
        }
        // The first upstream's late answer no longer counts.
        assert!(f.finish(&reply_to(&sent), 0).is_none());
        match f.expire(now + 2 * t).as_slice() {
            [Expired::Fail { client: c, reply }] => {
                assert_eq!(*c, client());
                let h = Header::new_checked(&reply[..]).unwrap();
                assert_eq!((h.id(), h.rcode()), (9, RCODE_SERVFAIL));
            }
            other => panic!("{other:?}"),
        }
        assert!(f.is_empty());
        assert_eq!(f.next_deadline(), None);
    }

    #[test]
    fn bounded_and_malformed() {
        let now = Instant::now();
        let mut f = InFlight::new(1, 2, Duration::from_secs(1));
        assert!(f.start(client(), &query(1), now).is_some());
        assert!(f.start(client(), &query(2), now).is_some());
        assert!(f.start(client(), &query(3), now).is_none(), "full");
        assert!(f.start(client(), &[0; 5], now).is_none());
        assert!(f.finish(&[0xff; 3], 0).is_none());
        let mut none = InFlight::new(0, 2, Duration::from_secs(1));
        assert!(none.start(client(), &query(1), now).is_none());
    }

    #[test]
    fn binding_names_fit_and_differ() {
        let a = Binding::of("host1", "dovesnap-10.30.0.0-24");
        assert_ne!(a, Binding::of("host1", "dovesnap-10.30.0.0-25"));
        assert_ne!(a, Binding::of("host2", "dovesnap-10.30.0.0-24"));
        assert_eq!(a, Binding::of("host1", "dovesnap-10.30.0.0-24"));
        for n in [&a.host_ifname, &a.peer_ifname] {
            assert!(crate::host::ifname::check(n).is_ok(), "{n}");
        }
        assert!(a.netns.starts_with("dsdns-"));
    }

    #[tokio::test]
    async fn forwards_over_loopback() {
        let listen = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let listen_addr = listen.local_addr().unwrap();
        let up_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // A tiny upstream answering every query (echo as a response).
        let answerer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let answerer_addr = answerer.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = [0u8; 512];
            while let Ok((n, from)) = answerer.recv_from(&mut b).await {
                let _ = answerer.send_to(&reply_to(&b[..n]), from).await;
            }
        });
        let stats = Arc::new(Stats::default());
        tokio::spawn(serve(
            listen,
            up_sock,
            vec![answerer_addr],
            UPSTREAM_TIMEOUT,
            stats.clone(),
        ));
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&query(0x1234), listen_addr).await.unwrap();
        let mut b = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b[..n], &reply_to(&query(0x1234))[..]);
        assert_eq!(Stats::get(&stats.answered), 1);
    }

    #[tokio::test]
    async fn servfail_when_no_upstream_answers_and_malformed_are_counted() {
        let listen = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let listen_addr = listen.local_addr().unwrap();
        let up_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Two upstreams that never answer (bound, silent).
        let silent = [
            UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        ];
        let ups = silent.iter().map(|s| s.local_addr().unwrap()).collect();
        let stats = Arc::new(Stats::default());
        let t = Duration::from_millis(100);
        tokio::spawn(serve(listen, up_sock, ups, t, stats.clone()));
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&[1, 2, 3], listen_addr).await.unwrap();
        c.send_to(&query(0x4242), listen_addr).await.unwrap();
        let start = Instant::now();
        let mut b = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut b))
            .await
            .unwrap()
            .unwrap();
        // Both upstreams were given their time, then SERVFAIL with the client's id.
        assert!(start.elapsed() >= 2 * t, "{:?}", start.elapsed());
        assert_eq!(&b[..n], &servfail(&query(0x4242)).unwrap()[..]);
        for s in &silent {
            let mut q = [0u8; 512];
            assert!(s.try_recv(&mut q).is_ok(), "each upstream was asked");
        }
        assert_eq!(Stats::get(&stats.malformed), 1);
        assert_eq!(Stats::get(&stats.forwarded), 1);
        assert_eq!(Stats::get(&stats.servfail), 1);
    }
}
