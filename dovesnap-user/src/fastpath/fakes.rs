//! In-memory stand-ins for the data plane's frame I/O and maps, for unit tests: no
//! root, no loaded program, no AF_XDP.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use dovesnap_ebpf::{CtEntry, FlowAction, FlowKey, HostFwMatch, PortKey};

use crate::fastpath::afxdp::{AfXdpError, PortId, Rx, XskStats};
use crate::fastpath::frameio::{FrameIo, SteeringMaps};
use crate::fastpath::xdp::XdpError;

/// One open port of [`FakeIo`].
pub struct Queue {
    pub ifname: String,
    pub queue: u32,
}

/// Frames in and out of memory: tests put frames on a port, the data plane's sends
/// land in `sent` at its flush.
#[derive(Default)]
pub struct FakeIo {
    pub open: HashMap<PortId, Queue>,
    pub next_id: u32,
    pub incoming: Vec<Rx<Vec<u8>>>,
    pub queued: Vec<Rx<Vec<u8>>>,
    pub sent: Vec<Rx<Vec<u8>>>,
    pub dropped: usize,
    /// An interface and queue whose port does not open.
    pub refuse: Option<(String, u32)>,
}

impl FakeIo {
    pub fn port(&self, ifname: &str, queue: u32) -> PortId {
        *self
            .open
            .iter()
            .find(|(_, q)| q.ifname == ifname && q.queue == queue)
            .map(|(p, _)| p)
            .unwrap_or_else(|| panic!("no open port on {ifname} queue {queue}"))
    }

    /// A frame arrives on `ifname`'s queue 0.
    pub fn arrive(&mut self, ifname: &str, frame: Vec<u8>) {
        let port = self.port(ifname, 0);
        self.incoming.push(Rx { port, frame });
    }

    /// The frames sent since the last call.
    pub fn take_sent(&mut self) -> Vec<Rx<Vec<u8>>> {
        std::mem::take(&mut self.sent)
    }
}

impl FrameIo for FakeIo {
    type Frame = Vec<u8>;

    fn open(&mut self, ifname: &str, queue: u32) -> Result<PortId, AfXdpError> {
        if self.refuse == Some((ifname.to_string(), queue)) {
            return Err(AfXdpError::Bind {
                ifname: ifname.to_string(),
                queue,
                cause: "refused by the test".into(),
            });
        }
        self.next_id += 1;
        let port = PortId(self.next_id);
        let ifname = ifname.to_string();
        self.open.insert(port, Queue { ifname, queue });
        Ok(port)
    }
    fn close(&mut self, port: PortId) {
        self.open.remove(&port);
    }
    fn fd(&self, port: PortId) -> Option<RawFd> {
        self.open
            .contains_key(&port)
            .then_some(100 + port.0 as RawFd)
    }
    fn recv(&mut self, out: &mut Vec<Rx<Vec<u8>>>) -> usize {
        let n = self.incoming.len();
        out.append(&mut self.incoming);
        n
    }
    fn bytes_mut<'a>(&'a self, frame: &'a mut Vec<u8>) -> &'a mut [u8] {
        frame
    }
    fn len(&self, frame: &Vec<u8>) -> usize {
        frame.len()
    }
    fn send(&mut self, port: PortId, frame: Vec<u8>) {
        if self.open.contains_key(&port) {
            self.queued.push(Rx { port, frame });
        } else {
            self.dropped += 1;
        }
    }
    fn drop_frame(&mut self, _frame: Vec<u8>) {
        self.dropped += 1;
    }
    fn flush(&mut self) -> Result<(), AfXdpError> {
        self.sent.append(&mut self.queued);
        Ok(())
    }
    fn stats(&self) -> XskStats {
        XskStats::default()
    }
    fn wait(&mut self, _: Duration, _: BorrowedFd<'_>) -> Result<(), AfXdpError> {
        Ok(())
    }
}

/// The maps as sets.
#[derive(Default)]
pub struct FakeMaps {
    pub ports: BTreeSet<PortKey>,
    pub sessions: BTreeSet<FlowKey>,
    pub xsks: BTreeMap<u32, RawFd>,
    pub flows: HashMap<FlowKey, FlowAction>,
    pub devs: BTreeSet<u32>,
    pub host_filter: Vec<([u8; 4], u8, HostFwMatch)>,
    pub bypass: bool,
    /// Flow writes that succeed before the next one fails (`None`: all succeed).
    pub flow_writes_left: Option<usize>,
    pub ct: BTreeMap<FlowKey, CtEntry>,
    /// `CT` keys in the map that a walk of it misses (entries inserted behind the walk).
    pub ct_hidden: BTreeSet<FlowKey>,
    /// An entry a lookup finds changed since the walk (the program wrote it meanwhile).
    pub ct_revived: Option<(FlowKey, CtEntry)>,
    /// `CT` keys removed, in order.
    pub ct_removed: Vec<FlowKey>,
    /// `CT` removals fail.
    pub ct_refuse_removal: bool,
}

impl SteeringMaps for FakeMaps {
    fn set_port(&mut self, key: PortKey) -> Result<(), XdpError> {
        self.ports.insert(key);
        Ok(())
    }
    fn remove_port(&mut self, key: &PortKey) -> Result<(), XdpError> {
        self.ports.remove(key);
        Ok(())
    }
    fn remove_address(&mut self, addr: u32) {
        self.ports.retain(|k| k.addr != addr);
        self.sessions.retain(|k| k.dst != addr);
    }
    fn set_session(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        self.sessions.insert(*key);
        Ok(())
    }
    fn remove_session(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        self.sessions.remove(key);
        Ok(())
    }
    fn set_xsk(&mut self, slot: u32, fd: RawFd) -> Result<(), XdpError> {
        self.xsks.insert(slot, fd);
        Ok(())
    }
    fn clear_xsk(&mut self, slot: u32) -> Result<(), XdpError> {
        self.xsks.remove(&slot);
        Ok(())
    }
    fn set_flow(&mut self, key: &FlowKey, action: &FlowAction) -> Result<(), XdpError> {
        match &mut self.flow_writes_left {
            Some(0) => {
                return Err(XdpError::Map {
                    map: "FLOWS",
                    what: format!("add flow {key:?}"),
                    cause: "refused by the test".into(),
                })
            }
            Some(n) => *n -= 1,
            None => {}
        }
        self.flows.insert(*key, *action);
        Ok(())
    }
    fn flow(&self, key: &FlowKey) -> Result<Option<FlowAction>, XdpError> {
        Ok(self.flows.get(key).copied())
    }
    fn remove_flow(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        self.flows.remove(key);
        Ok(())
    }
    fn set_dev(&mut self, ifindex: u32) -> Result<(), XdpError> {
        self.devs.insert(ifindex);
        Ok(())
    }
    fn remove_dev(&mut self, ifindex: u32) -> Result<(), XdpError> {
        self.devs.remove(&ifindex);
        Ok(())
    }
    fn set_host_filter(&mut self, entries: &[([u8; 4], u8, HostFwMatch)]) -> Result<(), XdpError> {
        self.host_filter = entries.to_vec();
        Ok(())
    }
    fn set_bypass(&mut self, on: bool) -> Result<(), XdpError> {
        self.bypass = on;
        Ok(())
    }
    fn ct_entries(&self, limit: usize) -> Result<Vec<(FlowKey, CtEntry)>, XdpError> {
        Ok((self.ct.iter())
            .filter(|(k, _)| !self.ct_hidden.contains(k))
            .map(|(k, e)| (*k, *e))
            .take(limit)
            .collect())
    }
    fn ct(&self, key: &FlowKey) -> Result<Option<CtEntry>, XdpError> {
        match self.ct_revived {
            Some((k, e)) if k == *key => Ok(Some(e)),
            _ => Ok(self.ct.get(key).copied()),
        }
    }
    fn remove_ct(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        if self.ct_refuse_removal {
            return Err(XdpError::Map {
                map: "CT",
                what: format!("remove session {key:?}"),
                cause: "refused by the test".into(),
            });
        }
        self.ct.remove(key);
        self.ct_removed.push(*key);
        Ok(())
    }
}
