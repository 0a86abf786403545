//! Handing the translator's sessions to the kernel's conntrack (ctnetlink), so that
//! connections survive when the nat-fast data plane goes down: each live TCP or UDP
//! session becomes a conntrack entry with the translator's own mapping (the same
//! external port), and the kernel's nat path carries the flow on from there.
//!
//! [`Entry::from_session`] and [`new_request`] are pure and unit-tested; [`Conntrack`]
//! sends them (in the calling thread's network namespace).

use std::io;

use crate::fastpath::xdp::{addr_octets, FlowAction, FlowKey};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::host::nlmsg::{
    attributes, message, nest, nested, Socket, NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REQUEST,
};
use crate::translator::{Protocol, SessionView};

/// `NFNL_SUBSYS_CTNETLINK << 8`, plus the message type.
const IPCTNL_MSG_CT_NEW: u16 = 1 << 8;
const IPCTNL_MSG_CT_GET: u16 = (1 << 8) | 1;
const IPCTNL_MSG_CT_DELETE: u16 = (1 << 8) | 2;
const AF_INET: u8 = 2;

// enum ctattr_type, ctattr_tuple, ctattr_ip, ctattr_l4proto, ctattr_nat,
// ctattr_protonat, ctattr_protoinfo(_tcp) (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_NAT_SRC: u16 = 6;
const CTA_TIMEOUT: u16 = 7;
const CTA_NAT_DST: u16 = 13;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
/// `IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED`: answered, not early-droppable; the
/// kernel confirms an entry it creates before it reads the status, and refuses (EBUSY)
/// a status that would clear that bit.
const STATUS_SEEN_REPLY_ASSURED: u32 = (1 << 1) | (1 << 2) | (1 << 3);
const TCP_CONNTRACK_ESTABLISHED: u8 = 3;
/// `IP_CT_TCP_FLAG_BE_LIBERAL`: the entry starts mid-stream with no window data, so
/// conntrack must not judge segments out of window.
const TCP_FLAG_BE_LIBERAL: u8 = 0x08;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// How long a handed-over entry lives without traffic (traffic through the kernel path
/// renews it with the kernel's own timeouts).
const TCP_TIMEOUT: Duration = Duration::from_secs(300);
const UDP_MIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The rewrite conntrack applies to the original direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// The container started it: its source becomes this (external address, port).
    Source(SocketAddrV4),
    /// It came in through a published port: its destination becomes the container.
    Destination(SocketAddrV4),
}

/// One conntrack entry to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// TCP or UDP.
    pub protocol: u8,
    /// The original direction as the first packet went, before any rewrite.
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub nat: Nat,
    pub timeout: Duration,
}

impl Entry {
    /// The entry that carries a translator session on `external_ip`, if conntrack can
    /// take it over: TCP once established (or closing), UDP always; not ICMP (an echo
    /// is simply asked again).
    pub fn from_session(s: &SessionView, external_ip: Ipv4Addr, now: Instant) -> Option<Entry> {
        let open = s.protocol != Protocol::Tcp || matches!(s.state, "ESTABLISHED" | "FIN_WAIT");
        Entry::of_session(s, external_ip, now).filter(|_| open)
    }

    /// The entry a TCP or UDP session has or would have, whatever its state.
    pub fn of_session(s: &SessionView, external_ip: Ipv4Addr, now: Instant) -> Option<Entry> {
        let (protocol, timeout) = match s.protocol {
            Protocol::Tcp => (IPPROTO_TCP, TCP_TIMEOUT),
            Protocol::Udp => (
                IPPROTO_UDP,
                s.expires
                    .saturating_duration_since(now)
                    .max(UDP_MIN_TIMEOUT),
            ),
            _ => return None,
        };
        let external = SocketAddrV4::new(external_ip, s.external_port);
        let (src, dst, nat) = match s.published {
            None => (s.inside, s.remote, Nat::Source(external)),
            Some(port) => (
                s.remote,
                SocketAddrV4::new(external_ip, port),
                Nat::Destination(s.inside),
            ),
        };
        Some(Entry {
            protocol,
            src,
            dst,
            nat,
            timeout,
        })
    }
}

impl Entry {
    /// The entry that carries a session the tc programs created, given its outbound
    /// `CT` key (the container's tuple) and rewrite (the external address and port):
    /// `protocol` TCP or UDP.
    pub fn of_tc_session(key: &FlowKey, act: &FlowAction) -> Option<Entry> {
        let port = |p: u16| u16::from_be(p);
        let (protocol, timeout) = match key.proto {
            IPPROTO_TCP => (IPPROTO_TCP, TCP_TIMEOUT),
            IPPROTO_UDP => (IPPROTO_UDP, UDP_MIN_TIMEOUT),
            _ => return None,
        };
        Some(Entry {
            protocol,
            src: SocketAddrV4::new(addr_octets(key.src).into(), port(key.sport)),
            dst: SocketAddrV4::new(addr_octets(key.dst).into(), port(key.dport)),
            nat: Nat::Source(SocketAddrV4::new(
                addr_octets(act.src).into(),
                port(act.sport),
            )),
            timeout,
        })
    }
}

fn tuple(protocol: u8, src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let ip = nest(&[
        (CTA_IP_V4_SRC, &src.ip().octets()),
        (CTA_IP_V4_DST, &dst.ip().octets()),
    ]);
    let proto = nest(&[
        (CTA_PROTO_NUM, &[protocol]),
        (CTA_PROTO_SRC_PORT, &src.port().to_be_bytes()),
        (CTA_PROTO_DST_PORT, &dst.port().to_be_bytes()),
    ]);
    nest(&[
        (CTA_TUPLE_IP | NLA_F_NESTED, &ip),
        (CTA_TUPLE_PROTO | NLA_F_NESTED, &proto),
    ])
}

/// `IPCTNL_MSG_CT_NEW` creating `e` (failing with EEXIST if its tuple is taken).
pub fn new_request(e: &Entry) -> Vec<u8> {
    let orig = tuple(e.protocol, e.src, e.dst);
    // Un-rewritten: the kernel's nat setup computes the real reply tuple from `nat`.
    let reply = tuple(e.protocol, e.dst, e.src);
    let (nat_attr, to) = match e.nat {
        Nat::Source(to) => (CTA_NAT_SRC, to),
        Nat::Destination(to) => (CTA_NAT_DST, to),
    };
    let ports = nest(&[
        (CTA_PROTONAT_PORT_MIN, &to.port().to_be_bytes()),
        (CTA_PROTONAT_PORT_MAX, &to.port().to_be_bytes()),
    ]);
    let nat = nest(&[
        (CTA_NAT_V4_MINIP, &to.ip().octets()),
        (CTA_NAT_V4_MAXIP, &to.ip().octets()),
        (CTA_NAT_PROTO | NLA_F_NESTED, &ports),
    ]);
    let status = STATUS_SEEN_REPLY_ASSURED.to_be_bytes();
    let timeout = (e.timeout.as_secs().clamp(1, u32::MAX as u64) as u32).to_be_bytes();
    let liberal = [TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL];
    let tcp = nest(&[
        (CTA_PROTOINFO_TCP_STATE, &[TCP_CONNTRACK_ESTABLISHED]),
        (CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &liberal),
        (CTA_PROTOINFO_TCP_FLAGS_REPLY, &liberal),
    ]);
    let protoinfo = nest(&[(CTA_PROTOINFO_TCP | NLA_F_NESTED, &tcp)]);
    let mut attrs: Vec<(u16, &[u8])> = vec![
        (CTA_TUPLE_ORIG | NLA_F_NESTED, &orig),
        (CTA_TUPLE_REPLY | NLA_F_NESTED, &reply),
        (CTA_STATUS, &status),
        (CTA_TIMEOUT, &timeout),
        (nat_attr | NLA_F_NESTED, &nat),
    ];
    if e.protocol == IPPROTO_TCP {
        attrs.push((CTA_PROTOINFO | NLA_F_NESTED, &protoinfo));
    }
    message(
        IPCTNL_MSG_CT_NEW,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        [AF_INET, 0, 0, 0],
        &attrs,
    )
}

/// `IPCTNL_MSG_CT_DELETE` of the entry that holds one of `e`'s two tuples: its original
/// one (`reply` false) or its reply once rewritten (`reply` true), either of which makes
/// a create fail with EEXIST.
pub fn delete_request(e: &Entry, reply: bool) -> Vec<u8> {
    let (attr, t) = match (reply, e.nat) {
        (false, _) => (CTA_TUPLE_ORIG, tuple(e.protocol, e.src, e.dst)),
        (true, Nat::Source(to)) => (CTA_TUPLE_REPLY, tuple(e.protocol, e.dst, to)),
        (true, Nat::Destination(to)) => (CTA_TUPLE_REPLY, tuple(e.protocol, to, e.src)),
    };
    message(
        IPCTNL_MSG_CT_DELETE,
        NLM_F_REQUEST | NLM_F_ACK,
        [AF_INET, 0, 0, 0],
        &[(attr | NLA_F_NESTED, &t)],
    )
}

/// An entry of the kernel's table, as far as adopting it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// TCP (6) or UDP (17); other protocols are not listed.
    pub protocol: u8,
    /// The original direction (source, destination) and the reply direction as the
    /// kernel expects it after its rewrites.
    pub orig: (SocketAddrV4, SocketAddrV4),
    pub reply: (SocketAddrV4, SocketAddrV4),
    /// TCP only: `enum tcp_conntrack`.
    pub tcp_state: Option<u8>,
}

impl Tracked {
    /// Carrying traffic: UDP, or TCP from established to closing (a handshake or a
    /// TIME_WAIT is left alone).
    pub fn is_open(&self) -> bool {
        match self.tcp_state {
            None => self.protocol == IPPROTO_UDP,
            Some(state) => (3..=6).contains(&state),
        }
    }

    /// A container's flow masqueraded to `external_ip`: (inside, remote, external port).
    pub fn masqueraded(&self, external_ip: Ipv4Addr) -> Option<(SocketAddrV4, SocketAddrV4, u16)> {
        let ((src, dst), (rsrc, rdst)) = (self.orig, self.reply);
        (*rdst.ip() == external_ip && *src.ip() != external_ip && rsrc == dst).then_some((
            src,
            dst,
            rdst.port(),
        ))
    }

    /// A flow through a published port of `external_ip`: (remote, published port,
    /// inside).
    pub fn published(&self, external_ip: Ipv4Addr) -> Option<(SocketAddrV4, u16, SocketAddrV4)> {
        let ((src, dst), (rsrc, rdst)) = (self.orig, self.reply);
        (*dst.ip() == external_ip && rsrc != dst && rdst == src).then_some((src, dst.port(), rsrc))
    }
}

fn parse_tuple(v: &[u8]) -> Option<(u8, SocketAddrV4, SocketAddrV4)> {
    let mut addrs = (None, None);
    let mut ports = (None, None, None);
    for (ty, value) in nested(v) {
        match ty {
            CTA_TUPLE_IP => {
                for (t, a) in nested(value) {
                    let ip = <[u8; 4]>::try_from(a).ok().map(Ipv4Addr::from);
                    match t {
                        CTA_IP_V4_SRC => addrs.0 = ip,
                        CTA_IP_V4_DST => addrs.1 = ip,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (t, a) in nested(value) {
                    let port = <[u8; 2]>::try_from(a).ok().map(u16::from_be_bytes);
                    match t {
                        CTA_PROTO_NUM => ports.0 = a.first().copied(),
                        CTA_PROTO_SRC_PORT => ports.1 = port,
                        CTA_PROTO_DST_PORT => ports.2 = port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        ports.0?,
        SocketAddrV4::new(addrs.0?, ports.1?),
        SocketAddrV4::new(addrs.1?, ports.2?),
    ))
}

/// One message of a conntrack dump; `None` for other protocols or a malformed one.
pub fn parse_entry(msg: &[u8]) -> Option<Tracked> {
    let attrs = attributes(msg).ok()?;
    let find = |ty| attrs.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v);
    let (protocol, osrc, odst) = parse_tuple(find(CTA_TUPLE_ORIG)?)?;
    let (_, rsrc, rdst) = parse_tuple(find(CTA_TUPLE_REPLY)?)?;
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return None;
    }
    let tcp_state = find(CTA_PROTOINFO).and_then(|p| {
        nested(p)
            .into_iter()
            .find(|(t, _)| *t == CTA_PROTOINFO_TCP)
            .and_then(|(_, tcp)| {
                nested(tcp)
                    .into_iter()
                    .find(|(t, _)| *t == CTA_PROTOINFO_TCP_STATE)
                    .and_then(|(_, v)| v.first().copied())
            })
    });
    Some(Tracked {
        protocol,
        orig: (osrc, odst),
        reply: (rsrc, rdst),
        tcp_state: if protocol == IPPROTO_TCP {
            Some(tcp_state.unwrap_or(0))
        } else {
            None
        },
    })
}

/// What a hand-over did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Handed {
    /// Entries created (a stale entry for the same tuple was replaced).
    pub created: u64,
    /// Entries the kernel refused, and its first reason.
    pub failed: u64,
    pub first_error: Option<String>,
}

/// A ctnetlink socket.
pub struct Conntrack(Socket);

impl Conntrack {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Conntrack> {
        Socket::open(rtnetlink::sys::protocols::NETLINK_NETFILTER).map(Conntrack)
    }

    fn ask(&self, msg: &[u8]) -> io::Result<()> {
        attributes(&self.0.request(msg)?).map(|_| ())
    }

    /// Creates `e`; an entry already holding its tuple (left from an earlier hand-over,
    /// or started by the kernel meanwhile) is replaced, since the translator's mapping is
    /// the one the far side knows.
    pub fn create(&self, e: &Entry) -> io::Result<()> {
        match self.ask(&new_request(e)) {
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                for reply in [false, true] {
                    match self.ask(&delete_request(e, reply)) {
                        Err(err) if err.raw_os_error() != Some(libc::ENOENT) => return Err(err),
                        _ => {}
                    }
                }
                self.ask(&new_request(e))
            }
            r => r,
        }
    }

    /// The kernel's IPv4 TCP and UDP entries.
    pub fn list(&self) -> io::Result<Vec<Tracked>> {
        let req = message(
            IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            [AF_INET, 0, 0, 0],
            &[],
        );
        let mut out = Vec::new();
        self.0.dump(&req, |m| out.extend(parse_entry(m)))?;
        Ok(out)
    }

    /// Deletes the entry holding `e`'s original tuple, if any: once the translator
    /// carries a flow again, the kernel's entry would only linger (an established one
    /// for days) and be taken over again, long dead, at the next start.
    pub fn forget(&self, e: &Entry) -> io::Result<()> {
        match self.ask(&delete_request(e, false)) {
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// Creates every entry, counting what worked and what did not.
    pub fn hand_over(&self, entries: impl IntoIterator<Item = Entry>) -> Handed {
        let mut h = Handed::default();
        for e in entries {
            match self.create(&e) {
                Ok(()) => h.created += 1,
                Err(err) => {
                    h.failed += 1;
                    h.first_error.get_or_insert_with(|| {
                        format!("{:?} {} -> {}: {err}", e.protocol, e.src, e.dst)
                    });
                }
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::nlmsg::attributes;

    fn view(protocol: Protocol, state: &'static str, published: Option<u16>) -> SessionView {
        let now = Instant::now();
        SessionView {
            protocol,
            inside: "10.1.0.2:40000".parse().unwrap(),
            external_port: 61001,
            remote: "198.51.100.7:443".parse().unwrap(),
            state,
            published,
            last_seen: now,
            expires: now + Duration::from_secs(100),
        }
    }

    const EXT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    #[test]
    fn sessions_become_entries_with_the_translators_mapping() {
        let now = Instant::now();
        let e = Entry::from_session(&view(Protocol::Tcp, "ESTABLISHED", None), EXT, now).unwrap();
        assert_eq!(e.src, "10.1.0.2:40000".parse().unwrap());
        assert_eq!(e.dst, "198.51.100.7:443".parse().unwrap());
        assert_eq!(e.nat, Nat::Source("192.0.2.1:61001".parse().unwrap()));
        assert_eq!(e.timeout, TCP_TIMEOUT);
        // Through a published port: the far side started it, toward the external port.
        let p =
            Entry::from_session(&view(Protocol::Tcp, "FIN_WAIT", Some(8080)), EXT, now).unwrap();
        assert_eq!(p.src, "198.51.100.7:443".parse().unwrap());
        assert_eq!(p.dst, "192.0.2.1:8080".parse().unwrap());
        assert_eq!(p.nat, Nat::Destination("10.1.0.2:40000".parse().unwrap()));
        let u = Entry::from_session(&view(Protocol::Udp, "ACTIVE", None), EXT, now).unwrap();
        assert!(u.timeout >= Duration::from_secs(99), "{:?}", u.timeout);
        // Half-open TCP and echo sessions are not handed over.
        assert!(Entry::from_session(&view(Protocol::Tcp, "SYN_SENT", None), EXT, now).is_none());
        assert!(Entry::from_session(&view(Protocol::Icmp, "ACTIVE", None), EXT, now).is_none());
    }

    /// Finds attribute `ty` among `attrs`.
    fn attr<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> &'a [u8] {
        attrs
            .iter()
            .find(|(t, _)| *t == ty)
            .unwrap_or_else(|| panic!("no attribute {ty}"))
            .1
    }

    /// Parses nested attributes (prefixed with a fake header so `attributes` reads them).
    fn children(v: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut m = message(0x100, 0, [0; 4], &[]);
        m.extend_from_slice(v);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        attributes(&m)
            .unwrap()
            .into_iter()
            .map(|(t, v)| (t, v.to_vec()))
            .collect()
    }

    /// A dump message as the kernel sends one for `e` after its nat setup.
    fn dumped(e: &Entry, tcp_state: u8) -> Vec<u8> {
        let Nat::Source(to) = e.nat else {
            unreachable!()
        };
        let orig = tuple(e.protocol, e.src, e.dst);
        let reply = tuple(e.protocol, e.dst, to);
        let tcp = nest(&[(CTA_PROTOINFO_TCP_STATE, &[tcp_state])]);
        let info = nest(&[(CTA_PROTOINFO_TCP | NLA_F_NESTED, &tcp)]);
        message(
            IPCTNL_MSG_CT_NEW,
            0,
            [AF_INET, 0, 0, 0],
            &[
                (CTA_TUPLE_ORIG | NLA_F_NESTED, &orig),
                (CTA_TUPLE_REPLY | NLA_F_NESTED, &reply),
                (CTA_PROTOINFO | NLA_F_NESTED, &info),
            ],
        )
    }

    /// The entry of an established TCP session of the container.
    fn established() -> Entry {
        Entry::from_session(
            &view(Protocol::Tcp, "ESTABLISHED", None),
            EXT,
            Instant::now(),
        )
        .unwrap()
    }

    #[test]
    fn dumped_entries_are_read_and_classified() {
        let e = established();
        let t = parse_entry(&dumped(&e, 3)).unwrap();
        assert_eq!(t.tcp_state, Some(3));
        assert!(t.is_open());
        assert_eq!(
            t.masqueraded(EXT),
            Some((e.src, e.dst, 61001)),
            "the container's flow, masqueraded to port 61001"
        );
        assert_eq!(t.published(EXT), None);
        assert_eq!(t.masqueraded(Ipv4Addr::new(192, 0, 2, 9)), None);
        // TIME_WAIT is not adopted; a truncated message is no entry.
        assert!(!parse_entry(&dumped(&e, 7)).unwrap().is_open());
        let m = dumped(&e, 3);
        assert_eq!(parse_entry(&m[..30]), None);
        // Through a published port: the far side's flow to the external address,
        // rewritten to the container.
        let p = Tracked {
            protocol: IPPROTO_TCP,
            orig: (e.dst, SocketAddrV4::new(EXT, 8080)),
            reply: (e.src, e.dst),
            tcp_state: Some(3),
        };
        assert_eq!(p.published(EXT), Some((e.dst, 8080, e.src)));
        assert_eq!(p.masqueraded(EXT), None);
    }

    #[test]
    fn the_request_is_a_ctnetlink_create_with_source_nat() {
        let e = established();
        let m = new_request(&e);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x100);
        let flags = u16::from_ne_bytes([m[6], m[7]]);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        assert_eq!(m[16], AF_INET);
        let top = attributes(&m).unwrap();
        assert_eq!(attr(&top, CTA_STATUS), &14u32.to_be_bytes());
        assert_eq!(attr(&top, CTA_TIMEOUT), &300u32.to_be_bytes());
        let orig = children(attr(&top, CTA_TUPLE_ORIG));
        let ip = children(&orig.iter().find(|(t, _)| *t == CTA_TUPLE_IP).unwrap().1);
        assert_eq!(ip[0], (CTA_IP_V4_SRC, vec![10, 1, 0, 2]));
        assert_eq!(ip[1], (CTA_IP_V4_DST, vec![198, 51, 100, 7]));
        let proto = children(&orig.iter().find(|(t, _)| *t == CTA_TUPLE_PROTO).unwrap().1);
        assert_eq!(proto[0], (CTA_PROTO_NUM, vec![6]));
        assert_eq!(
            proto[1],
            (CTA_PROTO_SRC_PORT, 40000u16.to_be_bytes().to_vec())
        );
        assert_eq!(
            proto[2],
            (CTA_PROTO_DST_PORT, 443u16.to_be_bytes().to_vec())
        );
        let nat = children(attr(&top, CTA_NAT_SRC));
        assert_eq!(nat[0], (CTA_NAT_V4_MINIP, vec![192, 0, 2, 1]));
        let ports = children(&nat[2].1);
        assert_eq!(
            ports,
            vec![
                (CTA_PROTONAT_PORT_MIN, 61001u16.to_be_bytes().to_vec()),
                (CTA_PROTONAT_PORT_MAX, 61001u16.to_be_bytes().to_vec())
            ]
        );
        let tcp = children(&children(attr(&top, CTA_PROTOINFO))[0].1);
        assert_eq!(tcp[0], (CTA_PROTOINFO_TCP_STATE, vec![3]));
        // UDP carries no TCP state.
        let u = new_request(&Entry {
            protocol: IPPROTO_UDP,
            ..e
        });
        assert!(!attributes(&u)
            .unwrap()
            .iter()
            .any(|(t, _)| *t == CTA_PROTOINFO));
    }
}
