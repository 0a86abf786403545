//! The benchmark's counting sink, a second program in the same eBPF object
//! (`dovesnap_sink`). Only `cargo xtask bench` uses it (feature `bench`, enabled by
//! `bench`); the daemon is built without it and never loads the program.

use std::fmt;

use aya::maps::PerCpuArray;
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use dovesnap_ebpf::{
    IFACES_MAP, PORTS_MAP, SESSIONS_MAP, SINK_BYTES, SINK_FRAMES, SINK_MAP, SINK_PASSED,
    SINK_PROGRAM_NAME, XSKS_MAP,
};

use super::{
    attach_native_or_skb, chain, interface_exists, is_eperm, load_object, load_program, map_error,
    program_mut, validate_ifname, AttachMode, XdpError,
};

/// The benchmark's counting sink (`dovesnap_sink`) attached to one interface: it counts
/// and drops every IPv4 frame arriving there and passes everything else (ARP, IPv6)
/// uncounted, so the interface's address still resolves. [`XdpSink::counts`] reads the
/// totals since the attachment; dropping the value detaches the program.
///
/// Loads its own copy of the embedded object (only the sink program is loaded into the
/// kernel; the steering maps are created at minimal size and never used), so a sink
/// never shares state with an [`XdpProgram`](super::XdpProgram). The interface must be in the calling
/// thread's network namespace: run it through `ip netns exec NS ...` to sink inside a
/// namespace. An interface can hold one XDP program at a time.
pub struct XdpSink {
    ebpf: Ebpf,
    ifname: String,
    link: Option<aya::programs::xdp::XdpLinkId>,
    mode: AttachMode,
}

impl fmt::Debug for XdpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpSink")
            .field("ifname", &self.ifname)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl XdpSink {
    /// Loads the sink and attaches it to `ifname`, native mode first, generic (SKB)
    /// mode when native fails. Needs root (or CAP_BPF and CAP_NET_ADMIN).
    pub fn attach(ifname: &str) -> Result<Self, XdpError> {
        Self::attach_in(ifname, None)
    }

    /// Like [`XdpSink::attach`], but only in `mode` when it is given (no fallback).
    pub fn attach_in(ifname: &str, mode: Option<AttachMode>) -> Result<Self, XdpError> {
        validate_ifname(ifname)?;
        // The steering program's maps come with the object; the sink never uses them, so
        // they are created as small as the kernel allows rather than at full size.
        let mut ebpf = load_object(
            EbpfLoader::new()
                .map_max_entries(IFACES_MAP, 1)
                .map_max_entries(PORTS_MAP, 1)
                .map_max_entries(SESSIONS_MAP, 1)
                .map_max_entries(XSKS_MAP, 1),
            "creating the XDP sink's maps",
        )?;
        let program = load_program(
            &mut ebpf,
            SINK_PROGRAM_NAME,
            "loading the XDP sink",
            |cause| XdpError::SinkVerifier { cause },
        )?;
        let (link, mode) = match mode {
            None => attach_native_or_skb(program, ifname)?,
            Some(mode) => {
                let flags = match mode {
                    AttachMode::Driver => XdpMode::Driver,
                    AttachMode::Skb => XdpMode::Skb,
                };
                let link = program.attach(ifname, flags).map_err(|e| match e {
                    ProgramError::UnknownInterface { .. } => XdpError::InterfaceNotFound {
                        ifname: ifname.to_string(),
                    },
                    e if is_eperm(&e) => XdpError::PermissionDenied {
                        what: "attaching the XDP sink",
                        cause: chain(&e),
                    },
                    e => XdpError::Attach {
                        ifname: ifname.to_string(),
                        driver: match mode {
                            AttachMode::Driver => chain(&e),
                            AttachMode::Skb => "not tried".into(),
                        },
                        skb: match mode {
                            AttachMode::Driver => "not tried".into(),
                            AttachMode::Skb => chain(&e),
                        },
                    },
                })?;
                (link, mode)
            }
        };
        Ok(XdpSink {
            ebpf,
            ifname: ifname.to_string(),
            link: Some(link),
            mode,
        })
    }

    /// How the sink is attached.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// The interface the sink is attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// IPv4 frames and their bytes (Ethernet header to end of frame, no FCS) counted and
    /// dropped since the attachment, summed over all CPUs.
    pub fn counts(&self) -> Result<(u64, u64), XdpError> {
        Ok((self.read(SINK_FRAMES)?, self.read(SINK_BYTES)?))
    }

    /// Non-IPv4 frames passed to the kernel uncounted (ARP, IPv6) since the attachment.
    pub fn passed(&self) -> Result<u64, XdpError> {
        self.read(SINK_PASSED)
    }

    fn read(&self, index: u32) -> Result<u64, XdpError> {
        let mismatch = || XdpError::ObjectMismatch {
            kind: "map",
            name: SINK_MAP,
        };
        let map = self.ebpf.map(SINK_MAP).ok_or_else(mismatch)?;
        let counts = PerCpuArray::<_, u64>::try_from(map).map_err(|_| mismatch())?;
        let values = counts
            .get(&index, 0)
            .map_err(|e| map_error(SINK_MAP, format!("read slot {index}"), &e))?;
        Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
    }
}

fn sink_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    program_mut(ebpf, SINK_PROGRAM_NAME)
}

impl Drop for XdpSink {
    fn drop(&mut self) {
        let Some(link) = self.link.take() else {
            return;
        };
        let result = sink_mut(&mut self.ebpf)
            .map_err(|e| e.to_string())
            .and_then(|program| program.detach(link).map_err(|e| chain(&e)));
        if let Err(cause) = result {
            if interface_exists(&self.ifname) {
                tracing::warn!(ifname = %self.ifname, "cannot detach the XDP sink: {cause}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::object;
    use super::*;

    /// The sink loads (verifier included) and reports a missing interface by name; as
    /// non-root it explains the privileges instead. Attaches nothing.
    #[test]
    fn sink_loads_or_explains() {
        match XdpSink::attach("dsnosuch0") {
            Ok(sink) => panic!("attached to a missing interface: {sink:?}"),
            Err(XdpError::InterfaceNotFound { ifname }) => assert_eq!(ifname, "dsnosuch0"),
            Err(XdpError::NotBuilt) => assert!(object().is_empty()),
            Err(e @ XdpError::PermissionDenied { .. }) => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let euid = unsafe { libc::geteuid() };
                assert_ne!(euid, 0, "root was refused: {e}");
            }
            Err(e) => panic!("loading the XDP sink failed: {e}"),
        }
        assert!(matches!(
            XdpSink::attach("a/b"),
            Err(XdpError::InvalidInterfaceName { .. })
        ));
    }
}
