//! The tc engine's classifiers (`docs/design/nat-fast-tc.md` §2.2), built into the same
//! eBPF object as the XDP program and sharing its maps (`IFACES`, `STATE`, `HOSTFW`,
//! `SESSIONS`, `PORTS`, `STATS`, and their own `CT`): `dovesnap_tc_endpoint` for tcx
//! ingress on a tc-engine container's host end, `dovesnap_tc_uplink` for tcx ingress on
//! the uplink. [`XdpProgram::load_sized`] loads them (the verifier runs);
//! [`XdpProgram::tc_attach`] puts one on an interface's tcx ingress, first in the chain,
//! through an fd-owned link: never pinned, never a netlink `cls_bpf` filter, so it dies
//! with the daemon (§4, fail-open after `kill -9`).

use aya::maps::HashMap;
use aya::programs::links::LinkOrder;
use aya::programs::tc::{SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::Ebpf;
use dovesnap_ebpf::{PortKey, PUBLISHED_MAP, TC_ENDPOINT_PROGRAM_NAME, TC_UPLINK_PROGRAM_NAME};

use super::{
    chain, describe_key, ifindex_of, interface_exists, is_eperm, map_error, unless_absent,
    validate_ifname, DetachFailure, XdpError, XdpProgram,
};

/// One of the tc programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// A missing or mistyped classifier: the object and this binary disagree.
fn mismatch(program: TcProgram) -> XdpError {
    XdpError::ObjectMismatch {
        kind: "program",
        name: program.name(),
    }
}

/// The object's classifier `program`; a missing one is a build mismatch.
#[cfg(any(test, feature = "testing"))]
pub(super) fn classifier(ebpf: &Ebpf, program: TcProgram) -> Result<&SchedClassifier, XdpError> {
    let p = ebpf.program(program.name()).ok_or(mismatch(program))?;
    p.try_into().map_err(|_| mismatch(program))
}

/// [`classifier`], to load or attach it.
fn classifier_mut(ebpf: &mut Ebpf, program: TcProgram) -> Result<&mut SchedClassifier, XdpError> {
    let p = ebpf.program_mut(program.name()).ok_or(mismatch(program))?;
    p.try_into().map_err(|_| mismatch(program))
}

/// Loads both classifiers into the kernel (the verifier runs here), attaching nothing.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<(), XdpError> {
    for program in TcProgram::ALL {
        classifier_mut(ebpf, program)?.load().map_err(|e| {
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
    /// Marks a container port as published by the kernel's DNAT (`present`) or not any
    /// more: `dovesnap_tc_endpoint` makes no session for what leaves it. Removing an
    /// absent key is not an error.
    pub fn set_published(&mut self, key: PortKey, present: bool) -> Result<(), XdpError> {
        let key = PortKey { _pad: 0, ..key };
        let mismatch = || XdpError::ObjectMismatch {
            kind: "map",
            name: PUBLISHED_MAP,
        };
        let map = self.ebpf.map_mut(PUBLISHED_MAP).ok_or_else(mismatch)?;
        let mut map: HashMap<_, PortKey, u32> = HashMap::try_from(map).map_err(|_| mismatch())?;
        let what = || {
            format!(
                "{} {}",
                if present { "add" } else { "remove" },
                describe_key(&key)
            )
        };
        if present {
            map.insert(key, 0, 0)
                .map_err(|e| map_error(PUBLISHED_MAP, what(), &e))
        } else {
            unless_absent(map.remove(&key), PUBLISHED_MAP, what).map(|_| ())
        }
    }

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

/// The names of the programs on `ifname`'s tcx ingress (in the calling thread's network
/// namespace), in the order they run, whoever attached them. The kernel keeps the first
/// 15 bytes of a program's name. For tests and diagnosis: that a dead daemon left none.
pub fn tcx_ingress_programs(ifname: &str) -> Result<Vec<String>, XdpError> {
    validate_ifname(ifname)?;
    let (_, programs) = SchedClassifier::query_tcx(ifname, TcAttachType::Ingress).map_err(|e| {
        XdpError::TcQuery {
            ifname: ifname.to_string(),
            cause: chain(&e),
        }
    })?;
    Ok(programs
        .iter()
        .map(|p| p.name_as_str().unwrap_or("?").to_string())
        .collect())
}

/// One tcx link made by [`XdpProgram::tc_attach`], keyed by interface and program.
pub(super) type TcLinks = std::collections::BTreeMap<(String, TcProgram), SchedClassifierLinkId>;

/// A tcx link taken out of service by [`XdpProgram::tc_retire`]: kept until its
/// interface is gone, then closed. Detaching from a live interface waits for an RCU
/// grace period under the RTNL (about 8 ms here), on the path of `docker run`/`stop`;
/// an interface's deletion takes its tcx programs with it in the grace period it waits
/// for anyway, and closing a link whose interface is gone costs nothing.
pub(super) struct RetiredTcLink {
    ifname: String,
    program: TcProgram,
    /// The interface's index when retired: a new interface of the same name is another.
    ifindex: u32,
    link: SchedClassifierLinkId,
}

impl XdpProgram {
    /// Attaches the tc `program` to `ifname`'s tcx ingress, first in its chain
    /// (`LinkOrder::first()`: a program that someone else puts there later runs after
    /// dovesnap's, which returns `TCX_NEXT` for what it declines), in the calling
    /// thread's network namespace, until [`XdpProgram::tc_detach`] or the program is
    /// dropped. tcx only: on a kernel without it this fails instead of falling back to a
    /// netlink filter, which would outlive the daemon. Attaching a program that is
    /// already attached there does nothing.
    pub fn tc_attach(&mut self, program: TcProgram, ifname: &str) -> Result<(), XdpError> {
        validate_ifname(ifname)?;
        self.tc_programs()?;
        let key = (ifname.to_string(), program);
        if self.tc_links.contains_key(&key) {
            return Ok(());
        }
        if let Some(i) =
            (self.tc_retired.iter()).position(|r| r.ifname == ifname && r.program == program)
        {
            let r = self.tc_retired.swap_remove(i);
            if ifindex_of(ifname) == Some(r.ifindex) {
                // Still attached to this very interface: back in service.
                self.tc_links.insert(key, r.link);
                return Ok(());
            }
            let _ = self.tc_detach_one(program, ifname, r.link);
        }
        let link = classifier_mut(&mut self.ebpf, program)?
            .attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(|e| XdpError::TcAttach {
                program: program.name(),
                ifname: ifname.to_string(),
                cause: chain(&e),
            })?;
        tracing::info!(ifname, program = program.name(), "attached tc program");
        self.tc_links.insert(key, link);
        Ok(())
    }

    /// Detaches the tc `program` from `ifname`. An interface that has disappeared since
    /// counts as detached (the kernel dropped the link's attachment with it).
    pub fn tc_detach(&mut self, program: TcProgram, ifname: &str) -> Result<(), XdpError> {
        let link = self
            .tc_links
            .remove(&(ifname.to_string(), program))
            .ok_or_else(|| XdpError::NotAttached {
                ifname: ifname.to_string(),
            })?;
        self.tc_detach_one(program, ifname, link)
            .map_err(|failure| XdpError::Detach {
                failures: vec![failure],
            })
    }

    /// Takes the tc `program` on `ifname` out of service without detaching it (see
    /// [`RetiredTcLink`]): the caller has removed what the program needs to act (its
    /// `IFACES` entry), so it passes everything on (`TCX_NEXT`) until the interface is
    /// deleted or [`XdpProgram::tc_reap_retired`] finds it gone. Idempotent.
    pub fn tc_retire(&mut self, program: TcProgram, ifname: &str) {
        let Some(link) = self.tc_links.remove(&(ifname.to_string(), program)) else {
            return;
        };
        match ifindex_of(ifname) {
            Some(ifindex) => self.tc_retired.push(RetiredTcLink {
                ifname: ifname.to_string(),
                program,
                ifindex,
                link,
            }),
            None => {
                let _ = self.tc_detach_one(program, ifname, link);
            }
        }
    }

    /// Closes the retired links whose interface is gone; returns how many stay retired.
    pub fn tc_reap_retired(&mut self) -> usize {
        for r in std::mem::take(&mut self.tc_retired) {
            if ifindex_of(&r.ifname) == Some(r.ifindex) {
                self.tc_retired.push(r);
            } else if let Err(f) = self.tc_detach_one(r.program, &r.ifname, r.link) {
                tracing::warn!(ifname = %f.ifname, "cannot close a retired tc link: {}", f.cause);
            }
        }
        self.tc_retired.len()
    }

    /// The (interface, program) pairs attached through [`XdpProgram::tc_attach`], sorted.
    pub fn tc_attached(&self) -> Vec<(String, TcProgram)> {
        self.tc_links.keys().cloned().collect()
    }

    /// Detaches every tc link, reporting each failure (part of `detach_all`).
    pub(super) fn tc_detach_all(&mut self) -> Vec<DetachFailure> {
        let retired = std::mem::take(&mut self.tc_retired)
            .into_iter()
            .map(|r| ((r.ifname, r.program), r.link));
        std::mem::take(&mut self.tc_links)
            .into_iter()
            .chain(retired)
            .filter_map(|((ifname, program), link)| {
                self.tc_detach_one(program, &ifname, link).err()
            })
            .collect()
    }

    fn tc_detach_one(
        &mut self,
        program: TcProgram,
        ifname: &str,
        link: SchedClassifierLinkId,
    ) -> Result<(), DetachFailure> {
        let failure = |cause| DetachFailure {
            ifname: ifname.to_string(),
            cause,
        };
        let p = classifier_mut(&mut self.ebpf, program).map_err(|e| failure(e.to_string()))?;
        match p.detach(link) {
            Ok(()) => {
                tracing::info!(ifname, program = program.name(), "detached tc program");
                Ok(())
            }
            Err(_) if !interface_exists(ifname) => Ok(()),
            Err(e) => Err(failure(chain(&e))),
        }
    }
}
