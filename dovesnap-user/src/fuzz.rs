//! Fuzz entry points, one per target of `dovesnap-user/fuzz` (cargo-fuzz): [`api`] for
//! what a plugin call's body goes through, [`translate`] for the nat-fast translator.
//!
//! Built only with the `fuzzing` feature (which the fuzz crate enables) and for this
//! crate's unit tests, which replay the targets' seed corpora
//! (`dovesnap-user/fuzz/corpus/TARGET`); the daemon never carries it. Both entry points
//! go through the library's public API only.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::firewall::{parse_exposed_ports, parse_port_map, EXPOSED_PORTS_OPTION, PORT_MAP_OPTION};
use crate::plugin::api::{
    AllocateNetworkRequest, CreateEndpointRequest, CreateNetworkRequest, DiscoveryNotification,
    EndpointRequest, JoinRequest, NetworkRequest, ProgramExternalConnectivityRequest,
};
use crate::plugin::options::NetworkOptions;
use crate::translator::wire::{EthernetFrame, Ipv4Packet, ETHERTYPE_IPV4};
use crate::translator::{
    Config, EndpointInfo, PortEvent, Protocol, Stats, Timeouts, Translator, Verdict,
};

/// Target `api`: everything a plugin call's body goes through before the driver touches
/// the host: the JSON decoding of every request type, the `-o` network options, and the
/// port maps of endpoint options. Never panics; returns how many decoders accepted the
/// input (so a harness can tell it reached them).
pub fn api(data: &[u8]) -> usize {
    fn options(o: &Option<HashMap<String, Value>>) -> usize {
        let mut n = usize::from(NetworkOptions::from_docker_options(o.as_ref()).is_ok());
        if let Some(o) = o {
            if let Some(v) = o.get(PORT_MAP_OPTION) {
                n += usize::from(parse_port_map(v).is_ok());
            }
            if let Some(v) = o.get(EXPOSED_PORTS_OPTION) {
                n += usize::from(parse_exposed_ports(v).is_ok());
            }
        }
        n
    }
    let mut accepted = 0;
    if let Ok(r) = serde_json::from_slice::<CreateNetworkRequest>(data) {
        accepted += 1 + options(&r.options);
    }
    if let Ok(r) = serde_json::from_slice::<CreateEndpointRequest>(data) {
        accepted += 1 + options(&r.options);
    }
    if let Ok(r) = serde_json::from_slice::<ProgramExternalConnectivityRequest>(data) {
        accepted += 1 + options(&r.options);
    }
    if let Ok(r) = serde_json::from_slice::<JoinRequest>(data) {
        accepted += 1 + options(&r.options);
    }
    accepted += usize::from(serde_json::from_slice::<NetworkRequest>(data).is_ok());
    accepted += usize::from(serde_json::from_slice::<EndpointRequest>(data).is_ok());
    accepted += usize::from(serde_json::from_slice::<AllocateNetworkRequest>(data).is_ok());
    accepted += usize::from(serde_json::from_slice::<DiscoveryNotification>(data).is_ok());
    accepted + ipam(data)
}

/// The IPAM calls' bodies (`--ipam-driver ovs`) through their checks, up to where the
/// northbound database would be asked.
fn ipam(data: &[u8]) -> usize {
    use crate::plugin::ipam::{self, PoolId};
    let mut accepted = 0;
    if let Ok(r) = serde_json::from_slice::<ipam::RequestPoolRequest>(data) {
        accepted += 1 + usize::from(ipam::check_pool_request(&r).is_ok());
    }
    if let Ok(r) = serde_json::from_slice::<ipam::RequestAddressRequest>(data) {
        accepted += 1;
        if let Ok(pool) = r.pool_id.parse::<PoolId>() {
            let free = ipam::hosts(pool.subnet, pool.range);
            accepted += usize::from(free.start() <= free.end());
            accepted += usize::from(ipam::check_address_request(&pool, &r).is_ok());
        }
    }
    if let Ok(r) = serde_json::from_slice::<ipam::ReleaseAddressRequest>(data) {
        accepted += 1 + usize::from(ipam::released_address(&r.address).is_ok());
    }
    accepted
}

const ETH_LEN: usize = EthernetFrame::<&[u8]>::HEADER_LEN;

/// Target `translate`: a translator with one endpoint and published ports, fed a
/// sequence of records `[control, length, frame bytes...]`. Control bit 0 picks inbound,
/// bit 1 patches the Ethernet/IPv4 header into something the translator accepts (so the
/// fuzzer reaches the transport code), bits 2..5 advance the clock, bits 5..8 extend the
/// length. Panics if the translator panics or emits a frame whose IPv4 checksum is
/// wrong; returns the translator's counters.
pub fn translate(data: &[u8]) -> Stats {
    const EXT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const INSIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const MAX_SESSIONS: usize = 16;
    const SHARE: usize = 8;
    let mut t = Translator::new(Config {
        external_ip: EXT,
        uplink_mac: [2, 0, 0, 0, 0, 1],
        ports: 40000..=40007,
        max_sessions: MAX_SESSIONS,
        max_sessions_per_endpoint: Some(SHARE),
        max_ports_per_endpoint: Some(6),
        timeouts: Timeouts::default(),
    });
    // What the uplink would steer, from the events: always the live dynamic sessions.
    let mut steered = HashSet::new();
    t.add_endpoint(EndpointInfo {
        ip: INSIDE,
        mac: [2, 0, 0, 0, 0, 2],
        gateway_mac: [2, 0, 0, 0, 0, 3],
        port: 7,
        offload: true,
    });
    t.publish(Protocol::Tcp, 8080, INSIDE, 80)
        .expect("publish tcp");
    t.publish(Protocol::Udp, 40001, INSIDE, 53)
        .expect("publish udp");
    let mut now = Instant::now();
    let mut buf = [0u8; 2048];
    let mut rest = data;
    while let [ctl, len, tail @ ..] = rest {
        let n = (usize::from(*len) | usize::from(ctl >> 5) << 8).min(tail.len());
        let frame = &mut buf[..n];
        frame.copy_from_slice(&tail[..n]);
        rest = &tail[n..];
        let inbound = ctl & 1 != 0;
        if ctl & 2 != 0 {
            patch_headers(frame, inbound, INSIDE, EXT);
        }
        let verdict = if inbound {
            t.inbound(now, frame)
        } else {
            t.outbound(now, frame)
        };
        if !matches!(verdict, Verdict::Drop(_)) {
            let ip = Ipv4Packet::new_unchecked(&frame[ETH_LEN..]);
            assert!(
                ip.verify_checksum(),
                "translated frame with a bad IP checksum"
            );
        }
        now += Duration::from_secs(u64::from((ctl >> 2) & 7) * 45);
        if ctl & 0x1c == 0x1c {
            t.expire(now);
        }
        for ev in t.drain_port_events() {
            match ev {
                PortEvent::Opened {
                    protocol,
                    port,
                    remote,
                } => assert!(steered.insert((protocol, port, remote)), "opened twice"),
                PortEvent::Closed {
                    protocol,
                    port,
                    remote,
                } => assert!(steered.remove(&(protocol, port, remote)), "closed unopened"),
            }
        }
        let live: HashSet<_> = t
            .sessions()
            .filter(|s| s.published.is_none())
            .map(|s| (s.protocol, s.external_port, s.remote))
            .collect();
        assert_eq!(
            steered, live,
            "the steering map would differ from the sessions"
        );
        assert!(t.session_count() <= MAX_SESSIONS);
        assert!(
            t.sessions().filter(|s| s.published.is_none()).count() <= SHARE,
            "the endpoint holds more than its limit of sessions"
        );
    }
    let _ = t.sessions().count();
    t.stats().clone()
}

/// Makes a fuzz input's headers plausible: IPv4 ethertype, version 4, total length from
/// the buffer, the endpoint (outbound) or external (inbound) address, TTL > 1, a valid
/// header checksum. Leaves the fragment field and everything else as they are.
fn patch_headers(frame: &mut [u8], inbound: bool, inside: Ipv4Addr, ext: Ipv4Addr) {
    if frame.len() < ETH_LEN + 20 {
        return;
    }
    frame[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut frame[ETH_LEN..];
    let mut ihl = usize::from(ip[0] & 0x0f).max(5);
    if ihl * 4 > ip.len() {
        ihl = 5;
    }
    ip[0] = 0x40 | ihl as u8;
    let total = ip.len().min(usize::from(u16::MAX)) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = ip[8].max(2);
    if inbound {
        ip[16..20].copy_from_slice(&ext.octets());
    } else {
        ip[12..16].copy_from_slice(&inside.octets());
    }
    let mut p = Ipv4Packet::new_unchecked(&mut ip[..]);
    p.fill_checksum();
}

/// The targets' seed corpora replayed. The translator's harness also runs over
/// pseudo-random inputs in `translator::translate::tests::fuzz_harness_on_pseudo_random_inputs`.
#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{api, translate};

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .expect("fuzz corpus directory")
            .map(|e| std::fs::read(e.expect("entry").path()).expect("corpus file"))
            .collect();
        seeds.sort();
        seeds
    }

    /// Every file of the `api` corpus, and for each a few thousand deterministic
    /// mutations: truncations, byte flips, and splices of JSON fragments. Nothing may
    /// panic, and the seeds themselves must decode.
    #[test]
    fn api_corpus_and_mutations_never_panic() {
        let seeds = seeds("api");
        assert!(seeds.len() >= 8, "corpus too small: {}", seeds.len());
        for s in &seeds {
            assert!(
                api(s) > 0,
                "seed does not decode: {}",
                String::from_utf8_lossy(s)
            );
        }
        let fragments: [&[u8]; 8] = [
            b"null",
            b"[]",
            b"{}",
            b"\"x\"",
            b"-1",
            b"1e999",
            b"\"\\u0000\"",
            b"{\"a\":",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut runs = 0;
        for s in &seeds {
            for len in 0..=s.len() {
                api(&s[..len]);
                runs += 1;
            }
            for _ in 0..300 {
                let mut m = s.clone();
                match next() % 3 {
                    0 => {
                        let i = (next() as usize) % m.len().max(1);
                        if let Some(b) = m.get_mut(i) {
                            *b ^= 1 << (next() % 8);
                        }
                    }
                    1 => {
                        let i = (next() as usize) % (m.len() + 1);
                        let f = fragments[(next() as usize) % fragments.len()];
                        m.splice(i..i, f.iter().copied());
                    }
                    _ => {
                        // Replace a JSON value (after a ':') with a fragment.
                        if let Some(i) = m.iter().position(|b| *b == b':') {
                            let f = fragments[(next() as usize) % fragments.len()];
                            let end = m[i + 1..]
                                .iter()
                                .position(|b| *b == b',' || *b == b'}')
                                .map_or(m.len(), |p| i + 1 + p);
                            m.splice(i + 1..end, f.iter().copied());
                        }
                    }
                }
                api(&m);
                runs += 1;
            }
        }
        assert!(runs > 1000);
    }

    /// Each seed of the `translate` corpus goes through the harness, and the
    /// well-formed ones translate.
    #[test]
    fn translate_corpus_replays() {
        let seeds = seeds("translate");
        assert!(seeds.len() >= 5, "corpus too small: {}", seeds.len());
        let translated: u64 = seeds
            .iter()
            .map(|s| {
                let st = translate(s);
                st.translated_outbound + st.translated_inbound
            })
            .sum();
        assert!(
            translated >= 8,
            "the seeds translate too little: {translated}"
        );
    }
}
