//! The data plane driven without root: an in-memory [`FrameIo`] and [`SteeringMaps`],
//! frames built by `dovesnap_testbed::frame`, next hops answered by hand.

use std::net::SocketAddrV4;

use dovesnap_testbed::frame::{
    self, fold, icmp, set_l4_checksum, sum, tcp, udp, Csum, Ipv4Header, L4_AT, PROTO_ICMP,
    PROTO_TCP, PROTO_UDP,
};

use super::*;
use crate::fastpath::fakes::{FakeIo, FakeMaps};
use crate::fastpath::{FastPathConfig, FastPathError, KernelPorts, UplinkSpec};
use crate::translator::testkit::{ACK, C1, C1_MAC, C2, EXT, GW_MAC, R, ROUTER, SYN, UPLINK_MAC};

const UPLINK: &str = "upl0";
const UPLINK_IFINDEX: u32 = 2;
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const EP: &str = "vethc1";
const EP_IFINDEX: u32 = 11;

/// A data plane on fakes, the next-hop events it reads, the requests it makes.
struct Rig {
    dp: Dataplane<FakeIo, FakeMaps>,
    events: Sender<NextHopEvent>,
    requests: tokio::sync::mpsc::UnboundedReceiver<Ipv4Addr>,
    batch: Vec<Rx<Vec<u8>>>,
}

impl Rig {
    fn new() -> Rig {
        let (events, ev_rx) = crossbeam_channel::unbounded();
        let (resolver, requests) = Resolver::detached();
        let links = Links {
            resolver,
            events: ev_rx,
            waker: std::sync::Arc::new(Waker::new().expect("eventfd")),
            health: std::sync::Arc::new(Health::default()),
        };
        let dp = Dataplane::with_io(FakeIo::default(), FakeMaps::default(), links, None);
        Rig {
            dp,
            events,
            requests,
            batch: Vec::new(),
        }
    }

    /// Sends a command and returns the data plane's answer.
    fn ask<T>(&mut self, make: impl FnOnce(Sender<T>) -> Command) -> T {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.dp.command(make(tx));
        rx.try_recv().expect("the data plane answers at once")
    }

    fn add_uplink(&mut self) -> Result<(), DataplaneError> {
        let spec = UplinkSpec {
            name: UPLINK.into(),
            ifindex: UPLINK_IFINDEX,
            addr: EXT,
            mac: UPLINK_MAC,
            rx_queues: 1,
        };
        let config = FastPathConfig::new(40000..=40099, Some(KernelPorts::Off), None, 1000, None)
            .expect("valid settings")
            .translator(&spec);
        self.ask(|reply| Command::AddUplink {
            name: UPLINK.into(),
            ifindex: UPLINK_IFINDEX,
            config,
            slots: Slots { first: 0, count: 1 },
            reply,
        })
    }

    fn add_endpoint(&mut self, uplink: &str, queues: u32) -> Result<(), DataplaneError> {
        let endpoint = EndpointSpec {
            host_ifname: EP.into(),
            host_ifindex: EP_IFINDEX,
            ip: C1,
            mac: C1_MAC,
            gateway_mac: GW_MAC,
            bridge_ifindex: 10,
            subnet: "10.0.0.0/24".parse().expect("subnet"),
            offload: false,
            adopt: false,
        };
        self.ask(|reply| Command::AddEndpoint {
            endpoint,
            uplink: uplink.into(),
            slots: Slots {
                first: 8,
                count: queues,
            },
            reply,
        })
    }

    /// Publishes `external_port` of `uplink` to `C1:internal_port`.
    fn publish(
        &mut self,
        uplink: &str,
        protocol: Protocol,
        external_port: u16,
        internal_port: u16,
    ) -> Result<(), DataplaneError> {
        let port = Publication {
            protocol,
            external_port,
            ip: C1,
            internal_port,
        };
        self.ask(|reply| Command::Publish {
            uplink: uplink.into(),
            port,
            reply,
        })
    }

    /// An uplink and one endpoint on it, its next hop known.
    fn ready() -> Rig {
        let mut rig = Rig::new();
        rig.add_uplink().expect("uplink");
        rig.add_endpoint(UPLINK, 1).expect("endpoint");
        rig.learn_next_hop();
        rig
    }

    /// The kernel's answer: `R` is reached through `ROUTER` on the uplink.
    fn learn_next_hop(&mut self) {
        for ev in [
            NextHopEvent::Route {
                dst: R,
                next_hop: ROUTER,
                oif: UPLINK_IFINDEX,
            },
            NextHopEvent::Neighbour {
                ifindex: UPLINK_IFINDEX,
                ip: ROUTER,
                mac: Some(ROUTER_MAC),
            },
        ] {
            self.events.send(ev).expect("events");
        }
    }

    /// One batch at `now`: what the data plane sent.
    fn turn_at(&mut self, now: Instant) -> Vec<Rx<Vec<u8>>> {
        self.dp.process(&mut self.batch, now);
        self.dp.io.take_sent()
    }

    fn turn(&mut self) -> Vec<Rx<Vec<u8>>> {
        self.turn_at(Instant::now())
    }

    /// `frame` arrives on `ifname`; the one frame sent for it.
    fn pass(&mut self, ifname: &str, frame: Vec<u8>) -> Rx<Vec<u8>> {
        self.dp.io.arrive(ifname, frame);
        let mut sent = self.turn();
        assert_eq!(sent.len(), 1, "one frame out");
        sent.pop().expect("one")
    }

    /// `frame` arrives on `ifname` and is given back: nothing is sent.
    fn declined(&mut self, ifname: &str, frame: Vec<u8>) {
        let before = self.dp.io.dropped;
        self.dp.io.arrive(ifname, frame);
        assert!(self.turn().is_empty(), "nothing sent");
        assert_eq!(self.dp.io.dropped, before + 1, "the frame went back");
    }

    fn counter(&self, name: &str) -> u64 {
        self.dp
            .status()
            .counters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no counter {name}"))
    }
}

/// A frame from the container `C1` (through its gateway) to `dst`.
fn from_c1(dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = Ipv4Header::new(GW_MAC, C1, dst, proto);
    h.eth_src = C1_MAC;
    checksummed(h.frame(l4))
}

/// A frame from `src` on the uplink to the external address.
fn from_remote(src: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = Ipv4Header::new(UPLINK_MAC, src, EXT, proto);
    h.eth_src = ROUTER_MAC;
    checksummed(h.frame(l4))
}

fn checksummed(mut f: Vec<u8>) -> Vec<u8> {
    match f[frame::ETH_LEN + 9] {
        PROTO_ICMP => {
            let c = !fold(sum(&f[L4_AT..], 0));
            f[L4_AT + 2..L4_AT + 4].copy_from_slice(&c.to_be_bytes());
        }
        _ => set_l4_checksum(&mut f, Csum::Full),
    }
    f
}

/// What a sent frame says: both ends (ICMP: the identifier as the port) and the MACs.
#[derive(Debug)]
struct Seen {
    from: SocketAddrV4,
    to: SocketAddrV4,
    eth: Eth,
}

/// A frame's Ethernet addresses.
#[derive(Debug, PartialEq, Eq)]
struct Eth {
    dst: [u8; 6],
    src: [u8; 6],
}

/// Out the uplink, to the next hop.
const TO_ROUTER: Eth = Eth {
    dst: ROUTER_MAC,
    src: UPLINK_MAC,
};
/// To the container, from its gateway.
const TO_C1: Eth = Eth {
    dst: C1_MAC,
    src: GW_MAC,
};

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Checks the frame's checksums from scratch (`frame::verify`; ICMP, which has no
/// pseudo-header, here).
fn seen(f: &[u8]) -> Seen {
    let ip = &f[frame::ETH_LEN..];
    let icmp = ip[9] == PROTO_ICMP;
    if icmp {
        assert_eq!(fold(sum(&f[L4_AT..], 0)), 0xffff, "bad ICMP checksum");
    } else {
        frame::verify(f).unwrap_or_else(|e| panic!("bad frame out: {e}"));
    }
    let word = |at: usize| u16::from_be_bytes([f[L4_AT + at], f[L4_AT + at + 1]]);
    Seen {
        eth: Eth {
            dst: f[0..6].try_into().expect("6"),
            src: f[6..12].try_into().expect("6"),
        },
        from: at(
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            if icmp { word(4) } else { word(0) },
        ),
        to: at(
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            if icmp { word(4) } else { word(2) },
        ),
    }
}

#[test]
fn outbound_udp_is_snated_out_the_uplink_and_its_reply_dnated_back() {
    let mut rig = Rig::ready();
    let out = rig.pass(EP, from_c1(R, PROTO_UDP, &udp(5353, 53, b"query")));
    assert_eq!(out.port, rig.dp.io.port(UPLINK, 0));
    let s = seen(&out.frame);
    assert_eq!(s.eth, TO_ROUTER);
    assert_eq!((*s.from.ip(), s.to), (EXT, at(R, 53)));
    assert!((40000..=40099).contains(&s.from.port()), "{s:?}");
    // The reply is steered by its exact tuple before the frame left.
    let key = session_key(EXT, Protocol::Udp, s.from.port(), at(R, 53));
    assert!(rig.dp.maps.sessions.contains(&key));

    let back = rig.pass(
        UPLINK,
        from_remote(R, PROTO_UDP, &udp(53, s.from.port(), b"answer")),
    );
    assert_eq!(back.port, rig.dp.io.port(EP, 0));
    let b = seen(&back.frame);
    assert_eq!(b.eth, TO_C1);
    assert_eq!((b.from, b.to), (at(R, 53), at(C1, 5353)));
    assert_eq!(rig.counter("to_uplink"), 1);
    assert_eq!(rig.counter("to_endpoint"), 1);
}

#[test]
fn outbound_tcp_and_icmp_keep_their_mapping_both_ways() {
    let mut rig = Rig::ready();
    let syn = rig.pass(EP, from_c1(R, PROTO_TCP, &tcp(43512, 80, SYN, b"")));
    let s = seen(&syn.frame);
    assert_eq!((*s.from.ip(), s.to), (EXT, at(R, 80)));
    let synack = rig.pass(
        UPLINK,
        from_remote(R, PROTO_TCP, &tcp(80, s.from.port(), SYN | ACK, b"")),
    );
    let b = seen(&synack.frame);
    assert_eq!(b.to, at(C1, 43512));

    let ping = rig.pass(EP, from_c1(R, PROTO_ICMP, &icmp(8, 77, b"ping")));
    let p = seen(&ping.frame);
    assert_eq!((*p.from.ip(), *p.to.ip()), (EXT, R));
    let pong = rig.pass(
        UPLINK,
        from_remote(R, PROTO_ICMP, &icmp(0, p.from.port(), b"ping")),
    );
    let q = seen(&pong.frame);
    assert_eq!(q.to, at(C1, 77));
}

#[test]
fn a_frame_waits_for_its_next_hop_and_leaves_when_it_is_known() {
    let mut rig = Rig::new();
    rig.add_uplink().expect("uplink");
    rig.add_endpoint(UPLINK, 1).expect("endpoint");
    rig.dp
        .io
        .arrive(EP, from_c1(R, PROTO_UDP, &udp(5353, 53, b"query")));
    assert!(rig.turn().is_empty(), "held until the next hop is known");
    assert_eq!(
        rig.requests.try_recv().ok(),
        Some(R),
        "the resolver is asked"
    );
    assert_eq!(rig.counter("nexthop_wait"), 1);
    rig.learn_next_hop();
    let sent = rig.turn();
    assert_eq!(sent.len(), 1);
    assert_eq!(seen(&sent[0].frame).eth.dst, ROUTER_MAC);
    assert_eq!(rig.counter("nexthop_wait_sent"), 1);
}

#[test]
fn a_held_frame_is_dropped_after_the_timeout_and_an_unreachable_one_at_once() {
    let mut rig = Rig::new();
    rig.add_uplink().expect("uplink");
    rig.add_endpoint(UPLINK, 1).expect("endpoint");
    let now = Instant::now();
    rig.dp
        .io
        .arrive(EP, from_c1(R, PROTO_UDP, &udp(5353, 53, b"query")));
    assert!(rig.turn_at(now).is_empty());
    assert!(rig.turn_at(now + PENDING_TIMEOUT).is_empty());
    assert_eq!(rig.counter("nexthop_wait_timeout"), 1);
    assert_eq!(rig.dp.io.dropped, 1, "the frame went back");

    rig.events
        .send(NextHopEvent::Unreachable { dst: R })
        .expect("events");
    rig.declined(EP, from_c1(R, PROTO_UDP, &udp(5353, 53, b"again")));
    assert_eq!(rig.counter("nexthop_unreachable"), 1);
}

#[test]
fn a_published_port_dnats_inbound_and_snats_the_answer() {
    let mut rig = Rig::ready();
    let r = rig.publish(UPLINK, Protocol::Tcp, 8080, 80);
    assert!(r.is_ok(), "{r:?}");
    assert!(rig
        .dp
        .maps
        .ports
        .contains(&port_key(EXT, Protocol::Tcp, 8080)));

    let syn = rig.pass(
        UPLINK,
        from_remote(R, PROTO_TCP, &tcp(5555, 8080, SYN, b"")),
    );
    assert_eq!(syn.port, rig.dp.io.port(EP, 0));
    let s = seen(&syn.frame);
    assert_eq!((s.from, s.to), (at(R, 5555), at(C1, 80)));
    let synack = rig.pass(EP, from_c1(R, PROTO_TCP, &tcp(80, 5555, SYN | ACK, b"")));
    let a = seen(&synack.frame);
    assert_eq!((a.from, a.to), (at(EXT, 8080), at(R, 5555)));

    rig.ask(|reply| Command::Unpublish {
        uplink: UPLINK.into(),
        protocol: Protocol::Tcp,
        external_port: 8080,
        reply,
    });
    assert!(rig.dp.maps.ports.is_empty());
}

#[test]
fn traffic_nobody_asked_for_is_declined() {
    let mut rig = Rig::ready();
    // No session, no publication: given back, nothing sent.
    rig.declined(
        UPLINK,
        from_remote(R, PROTO_UDP, &udp(53, 40001, b"unasked")),
    );
    assert_eq!(rig.counter("dropped"), 1);
    // From an address the endpoint does not own.
    let mut h = Ipv4Header::new(GW_MAC, C2, R, PROTO_UDP);
    h.eth_src = C1_MAC;
    rig.declined(EP, checksummed(h.frame(&udp(1, 2, b"x"))));
    assert_eq!(rig.counter("dropped"), 2);
    // On a port the data plane does not know.
    rig.dp.io.incoming.push(Rx {
        port: PortId(999),
        frame: vec![0; 60],
    });
    assert!(rig.turn().is_empty());
    assert_eq!(rig.counter("stray_frames"), 1);
    assert_eq!(rig.dp.io.dropped, 3);
}

#[test]
fn removing_the_endpoint_stops_translation() {
    let mut rig = Rig::ready();
    let out = rig.pass(EP, from_c1(R, PROTO_UDP, &udp(5353, 53, b"query")));
    let ext_port = seen(&out.frame).from.port();
    assert_eq!(rig.dp.maps.sessions.len(), 1);
    assert!(rig.dp.maps.xsks.contains_key(&8));

    rig.ask(|reply| Command::RemoveEndpoint {
        host_ifname: EP.into(),
        reply,
    });
    assert!(
        rig.dp.io.open.values().all(|q| q.ifname != EP),
        "socket closed"
    );
    assert!(!rig.dp.maps.xsks.contains_key(&8), "slot emptied");
    assert!(
        rig.dp.maps.sessions.is_empty(),
        "its sessions are not steered"
    );
    rig.declined(
        UPLINK,
        from_remote(R, PROTO_UDP, &udp(53, ext_port, b"late")),
    );
    assert_eq!(rig.counter("dropped"), 1);
    assert!(rig.dp.status().endpoints.is_empty());
}

#[test]
fn removing_the_uplink_takes_its_endpoints_ports_and_sessions() {
    let mut rig = Rig::ready();
    rig.pass(EP, from_c1(R, PROTO_UDP, &udp(5353, 53, b"query")));
    let r = rig.publish(UPLINK, Protocol::Udp, 5000, 5000);
    assert!(r.is_ok(), "{r:?}");
    rig.ask(|reply| Command::RemoveUplink {
        name: UPLINK.into(),
        reply,
    });
    assert!(rig.dp.io.open.is_empty());
    assert!(rig.dp.maps.xsks.is_empty());
    assert!(rig.dp.maps.ports.is_empty());
    assert!(rig.dp.maps.sessions.is_empty());
    assert!(rig.dp.status().uplinks.is_empty());
}

#[test]
fn commands_on_a_missing_or_busy_uplink_get_typed_errors() {
    let mut rig = Rig::new();
    let e = rig.add_endpoint("nope", 1).unwrap_err();
    assert!(
        matches!(&e, DataplaneError::NoUplink(n) if n == "nope"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "no nat-fast uplink nope");
    assert_eq!(
        FastPathError::from(e).to_string(),
        "nat-fast: no nat-fast uplink nope"
    );
    let e = rig.publish("nope", Protocol::Tcp, 8080, 80).unwrap_err();
    assert!(matches!(e, DataplaneError::NoUplink(_)), "{e:?}");

    rig.add_uplink().expect("uplink");
    let e = rig.add_uplink().unwrap_err();
    assert!(
        matches!(&e, DataplaneError::UplinkInUse(n) if n == UPLINK),
        "{e:?}"
    );
    // The translator refuses a publication it cannot take.
    let e = rig.publish(UPLINK, Protocol::Tcp, 0, 80).unwrap_err();
    assert!(matches!(e, DataplaneError::Nat(_)), "{e:?}");
}

#[test]
fn a_queue_that_cannot_open_leaves_nothing_behind() {
    let mut rig = Rig::new();
    rig.add_uplink().expect("uplink");
    rig.dp.io.refuse = Some((EP.into(), 1));
    let e = rig.add_endpoint(UPLINK, 2).unwrap_err();
    assert!(
        matches!(&e, DataplaneError::Socket { ifname, queue: 1, .. } if ifname == EP),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("cannot open an AF_XDP socket on vethc1 queue 1: "),
        "{e}"
    );
    assert!(
        rig.dp.io.open.values().all(|q| q.ifname != EP),
        "queue 0 closed"
    );
    assert_eq!(
        rig.dp.maps.xsks.keys().collect::<Vec<_>>(),
        [&0],
        "uplink only"
    );
    assert!(rig.dp.status().endpoints.is_empty());
}

#[test]
fn status_counts_what_each_endpoint_sent_and_received() {
    let mut rig = Rig::ready();
    let out = rig.pass(EP, from_c1(R, PROTO_UDP, &udp(5353, 53, b"query")));
    let ext_port = seen(&out.frame).from.port();
    rig.pass(
        UPLINK,
        from_remote(R, PROTO_UDP, &udp(53, ext_port, b"answer")),
    );
    let status = rig.ask(|reply| Command::Status { reply });
    let [ep] = &status.endpoints[..] else {
        panic!("one endpoint: {:?}", status.endpoints)
    };
    assert_eq!((ep.port.as_str(), ep.ip.as_str()), (EP, "10.0.0.2"));
    assert_eq!((ep.out_frames, ep.in_frames), (1, 1));
    let [up] = &status.uplinks[..] else {
        panic!("one uplink: {:?}", status.uplinks)
    };
    assert_eq!(
        (up.name.as_str(), up.external_ip.as_str()),
        (UPLINK, "192.0.2.1")
    );
    assert_eq!((up.endpoints, up.sessions), (1, 1));
    assert_eq!(up.ports, "40000-40099");
}

#[test]
fn the_ct_sweep_counts_sessions_by_owner_and_what_it_removed() {
    use dovesnap_ebpf::{CtEntry, CT_OWNER_KERNEL, CT_OWNER_TRANSLATOR};
    let mut rig = Rig::ready();
    let outbound = |sport: u16, owner| {
        let key = FlowKey {
            ifindex: EP_IFINDEX,
            sport: sport.to_be(),
            proto: PROTO_TCP,
            ..FlowKey::default()
        };
        let entry = CtEntry {
            created: 1_000_000_000,
            owner,
            ..CtEntry::default()
        };
        (key, entry)
    };
    // A kernel session whose inbound half is gone, long ago; a translator's.
    rig.dp.maps.ct.extend([
        outbound(40000, CT_OWNER_KERNEL),
        outbound(40001, CT_OWNER_TRANSLATOR),
    ]);
    rig.dp.sweep_ct(60_000_000_000);
    assert_eq!(rig.counter("ct_sessions_kernel"), 1);
    assert_eq!(rig.counter("ct_sessions_translator"), 1);
    assert_eq!(rig.counter("ct_gc_removed"), 1);
    assert_eq!(rig.dp.maps.ct.len(), 1, "the translator's entry stays");
    rig.dp.sweep_ct(61_000_000_000);
    assert_eq!(rig.counter("ct_sessions_kernel"), 0);
    assert_eq!(rig.counter("ct_gc_removed"), 1);
}
