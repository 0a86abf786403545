//! The tc engine's classifiers (`docs/design/nat-fast-tc.md` §2.2), built into the same
//! eBPF object as the XDP program and sharing its maps (`IFACES`, `STATE`, `HOSTFW`,
//! `SESSIONS`, `PORTS`, `STATS`, and their own `CT`): `dovesnap_tc_endpoint` for tcx
//! ingress on a tc-engine container's host end, `dovesnap_tc_uplink` for tcx ingress on
//! the uplink. [`XdpProgram::load_sized`] loads them (the verifier runs) but nothing
//! attaches them yet: the wiring to endpoints and the translator's `CT` writes come
//! with the slow-path port.

use aya::programs::SchedClassifier;
use aya::Ebpf;
use dovesnap_ebpf::{TC_ENDPOINT_PROGRAM_NAME, TC_UPLINK_PROGRAM_NAME};

use super::{chain, is_eperm, XdpError, XdpProgram};

/// One of the tc programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcProgram {
    /// `dovesnap_tc_endpoint`: container -> far, on the container's host end.
    Endpoint,
    /// `dovesnap_tc_uplink`: far -> container, on the uplink.
    Uplink,
}

impl TcProgram {
    /// Both programs.
    pub const ALL: [TcProgram; 2] = [TcProgram::Endpoint, TcProgram::Uplink];

    /// The program's name in the eBPF object.
    pub const fn name(self) -> &'static str {
        match self {
            TcProgram::Endpoint => TC_ENDPOINT_PROGRAM_NAME,
            TcProgram::Uplink => TC_UPLINK_PROGRAM_NAME,
        }
    }
}

/// The object's classifier `program`; a missing one is a build mismatch.
#[cfg(any(test, feature = "testing"))]
pub(super) fn classifier(ebpf: &Ebpf, program: TcProgram) -> Result<&SchedClassifier, XdpError> {
    let mismatch = XdpError::ObjectMismatch {
        kind: "program",
        name: program.name(),
    };
    match ebpf.program(program.name()) {
        Some(p) => p.try_into().map_err(|_| mismatch),
        None => Err(mismatch),
    }
}

/// Loads both classifiers into the kernel (the verifier runs here), attaching nothing.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<(), XdpError> {
    for program in TcProgram::ALL {
        let mismatch = XdpError::ObjectMismatch {
            kind: "program",
            name: program.name(),
        };
        let p: &mut SchedClassifier = ebpf
            .program_mut(program.name())
            .ok_or(mismatch)?
            .try_into()
            .map_err(|_| XdpError::ObjectMismatch {
                kind: "program",
                name: program.name(),
            })?;
        p.load().map_err(|e| {
            let cause = chain(&e);
            if is_eperm(&e) {
                XdpError::PermissionDenied {
                    what: "loading the tc programs",
                    cause,
                }
            } else {
                XdpError::TcVerifier {
                    program: program.name(),
                    cause,
                }
            }
        })?;
    }
    Ok(())
}

impl XdpProgram {
    /// Whether the tc programs loaded with the XDP program: `Ok` when both passed the
    /// verifier, else why not (the xdp engine works either way).
    pub fn tc_programs(&self) -> Result<(), XdpError> {
        match &self.tc_refused {
            None => Ok(()),
            Some(cause) => Err(XdpError::TcUnavailable {
                cause: cause.clone(),
            }),
        }
    }
}
