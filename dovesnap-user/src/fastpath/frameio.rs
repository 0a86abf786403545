//! What the data plane needs of its packet I/O and of the eBPF maps, as two small
//! traits: [`FrameIo`] (sockets that receive and send frames, [`Xsk`] in the daemon)
//! and [`SteeringMaps`] (the maps the data plane keeps current, [`DataplaneMaps`] in the
//! daemon). The data plane is generic over both, so that its logic runs in unit tests
//! on in-memory fakes, without root, without a loaded program and without AF_XDP.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use dovesnap_ebpf::{CtEntry, FlowAction, FlowKey, HostFwMatch, PortKey};

use crate::fastpath::afxdp::{AfXdpError, Frame, PortId, Rx, Xsk, XskStats};
use crate::fastpath::xdp::{DataplaneMaps, XdpError};

/// Frame I/O on a set of ports (one per interface queue): open and close them, receive
/// a batch of frames with the port each came in on, rewrite a frame in place, send it
/// out a port or give it back.
pub trait FrameIo {
    /// A frame the data plane holds between [`FrameIo::recv`] and
    /// [`FrameIo::send`] / [`FrameIo::drop_frame`].
    type Frame;

    /// Opens a port on `ifname`'s rx queue `queue`.
    fn open(&mut self, ifname: &str, queue: u32) -> Result<PortId, AfXdpError>;
    /// Closes a port; frames sent to it afterwards are dropped.
    fn close(&mut self, port: PortId);
    /// The port's socket (registered in the socket map, polled while idle); `None`
    /// for a port that is not open.
    fn fd(&self, port: PortId) -> Option<RawFd>;
    /// Appends the frames received on every port to `out`; how many.
    fn recv(&mut self, out: &mut Vec<Rx<Self::Frame>>) -> usize;
    /// The frame's packet bytes, writable.
    fn bytes_mut<'a>(&'a self, frame: &'a mut Self::Frame) -> &'a mut [u8];
    /// The frame's packet length.
    fn len(&self, frame: &Self::Frame) -> usize;
    /// Queues `frame` for transmission on `port` (sent by [`FrameIo::flush`]).
    fn send(&mut self, port: PortId, frame: Self::Frame);
    /// Gives a frame back unsent.
    fn drop_frame(&mut self, frame: Self::Frame);
    /// Submits every queued frame.
    fn flush(&mut self) -> Result<(), AfXdpError>;
    /// Counters, for status.
    fn stats(&self) -> XskStats;
    /// Sleeps until a port has frames, `wake` is readable or `timeout` passes.
    fn wait(&mut self, timeout: Duration, wake: BorrowedFd<'_>) -> Result<(), AfXdpError>;
}

impl FrameIo for Xsk {
    type Frame = Frame;

    fn open(&mut self, ifname: &str, queue: u32) -> Result<PortId, AfXdpError> {
        Xsk::open(self, ifname, queue)
    }
    fn close(&mut self, port: PortId) {
        Xsk::close(self, port)
    }
    fn fd(&self, port: PortId) -> Option<RawFd> {
        Xsk::fd(self, port)
    }
    fn recv(&mut self, out: &mut Vec<Rx>) -> usize {
        Xsk::recv(self, out)
    }
    fn bytes_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        self.frame_mut(frame)
    }
    fn len(&self, frame: &Frame) -> usize {
        frame.len()
    }
    fn send(&mut self, port: PortId, frame: Frame) {
        Xsk::send(self, port, frame)
    }
    fn drop_frame(&mut self, frame: Frame) {
        Xsk::drop_frame(self, frame)
    }
    fn flush(&mut self) -> Result<(), AfXdpError> {
        Xsk::flush(self)
    }
    fn stats(&self) -> XskStats {
        Xsk::stats(self)
    }
    fn wait(&mut self, timeout: Duration, wake: BorrowedFd<'_>) -> Result<(), AfXdpError> {
        self.poll_or_woken(timeout, wake).map(|_| ())
    }
}

/// The eBPF maps the data plane keeps current (see [`DataplaneMaps`], whose methods
/// these are): published ports, steered sessions, sockets, offloaded flows and the
/// devices they leave by, the host's forward rules, the bypass switch, and the tc
/// engine's sessions (`CT`).
pub trait SteeringMaps {
    fn set_port(&mut self, key: PortKey) -> Result<(), XdpError>;
    fn remove_port(&mut self, key: &PortKey) -> Result<(), XdpError>;
    /// Removes every published port and steered session of `addr` (network order).
    fn remove_address(&mut self, addr: u32);
    fn set_session(&mut self, key: &FlowKey) -> Result<(), XdpError>;
    fn remove_session(&mut self, key: &FlowKey) -> Result<(), XdpError>;
    fn set_xsk(&mut self, slot: u32, fd: RawFd) -> Result<(), XdpError>;
    fn clear_xsk(&mut self, slot: u32) -> Result<(), XdpError>;
    fn set_flow(&mut self, key: &FlowKey, action: &FlowAction) -> Result<(), XdpError>;
    fn flow(&self, key: &FlowKey) -> Result<Option<FlowAction>, XdpError>;
    fn remove_flow(&mut self, key: &FlowKey) -> Result<(), XdpError>;
    fn set_dev(&mut self, ifindex: u32) -> Result<(), XdpError>;
    fn remove_dev(&mut self, ifindex: u32) -> Result<(), XdpError>;
    fn set_host_filter(&mut self, entries: &[([u8; 4], u8, HostFwMatch)]) -> Result<(), XdpError>;
    /// Turns the whole fast path's off switch on or off.
    fn set_bypass(&mut self, on: bool) -> Result<(), XdpError>;
    /// Every `CT` entry (at most `limit`), as the kernel holds them now.
    fn ct_entries(&self, limit: usize) -> Result<Vec<(FlowKey, CtEntry)>, XdpError>;
    fn ct(&self, key: &FlowKey) -> Result<Option<CtEntry>, XdpError>;
    fn remove_ct(&mut self, key: &FlowKey) -> Result<(), XdpError>;
}

impl SteeringMaps for DataplaneMaps {
    fn set_port(&mut self, key: PortKey) -> Result<(), XdpError> {
        DataplaneMaps::set_port(self, key)
    }
    fn remove_port(&mut self, key: &PortKey) -> Result<(), XdpError> {
        DataplaneMaps::remove_port(self, key)
    }
    fn remove_address(&mut self, addr: u32) {
        DataplaneMaps::remove_address(self, addr)
    }
    fn set_session(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        DataplaneMaps::set_session(self, key)
    }
    fn remove_session(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        DataplaneMaps::remove_session(self, key)
    }
    fn set_xsk(&mut self, slot: u32, fd: RawFd) -> Result<(), XdpError> {
        DataplaneMaps::set_xsk(self, slot, fd)
    }
    fn clear_xsk(&mut self, slot: u32) -> Result<(), XdpError> {
        DataplaneMaps::clear_xsk(self, slot)
    }
    fn set_flow(&mut self, key: &FlowKey, action: &FlowAction) -> Result<(), XdpError> {
        DataplaneMaps::set_flow(self, key, action)
    }
    fn flow(&self, key: &FlowKey) -> Result<Option<FlowAction>, XdpError> {
        DataplaneMaps::flow(self, key)
    }
    fn remove_flow(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        DataplaneMaps::remove_flow(self, key)
    }
    fn set_dev(&mut self, ifindex: u32) -> Result<(), XdpError> {
        DataplaneMaps::set_dev(self, ifindex)
    }
    fn remove_dev(&mut self, ifindex: u32) -> Result<(), XdpError> {
        DataplaneMaps::remove_dev(self, ifindex)
    }
    fn set_host_filter(&mut self, entries: &[([u8; 4], u8, HostFwMatch)]) -> Result<(), XdpError> {
        DataplaneMaps::set_host_filter(self, entries)
    }
    fn set_bypass(&mut self, on: bool) -> Result<(), XdpError> {
        self.bypass.set(on)
    }
    fn ct_entries(&self, limit: usize) -> Result<Vec<(FlowKey, CtEntry)>, XdpError> {
        DataplaneMaps::ct_entries(self, limit)
    }
    fn ct(&self, key: &FlowKey) -> Result<Option<CtEntry>, XdpError> {
        DataplaneMaps::ct(self, key)
    }
    fn remove_ct(&mut self, key: &FlowKey) -> Result<(), XdpError> {
        DataplaneMaps::remove_ct(self, key)
    }
}
