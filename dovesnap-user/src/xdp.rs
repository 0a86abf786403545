//! Loading and attaching the embedded XDP program (`dovesnap-ebpf`).
//!
//! The eBPF object is built by `build.rs` (aya-build) and embedded in the binary, so a
//! dovesnap binary always carries the program it was built with. [`XdpProgram`] owns
//! the loaded program and every attachment it made: [`XdpProgram::attach`] tries native
//! (driver) XDP first and falls back to generic (SKB) XDP, [`XdpProgram::counters`]
//! reads the program's per-CPU statistics, and dropping the value detaches everything.
//!
//! Nothing is pinned to bpffs: the program lives exactly as long as the `XdpProgram`.

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::fmt;
use std::io;

use aya::maps::PerCpuArray;
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::Ebpf;
pub use dovesnap_ebpf::Counter;
use dovesnap_ebpf::{PROGRAM_NAME, STATS_MAP};
use thiserror::Error;

/// The eBPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dovesnap-ebpf"))
}

/// Longest interface name the kernel accepts (`IFNAMSIZ` minus the NUL).
const IFNAME_MAX: usize = 15;

/// Everything that can go wrong loading, attaching or reading the XDP program.
#[derive(Debug, Error)]
pub enum XdpError {
    /// The binary was built with `AYA_BUILD_SKIP`, so it has no program to load.
    #[error(
        "this dovesnap was built without its XDP program (AYA_BUILD_SKIP was set); \
         rebuild it without AYA_BUILD_SKIP after `cargo xtask setup`"
    )]
    NotBuilt,

    /// The kernel refused for lack of privileges (EPERM).
    #[error(
        "{what} was refused by the kernel: loading and attaching XDP programs needs root \
         (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON); run dovesnap as root ({cause})"
    )]
    PermissionDenied {
        /// What was attempted.
        what: &'static str,
        /// The kernel's error, with its causes.
        cause: String,
    },

    /// The embedded object could not be loaded (parse, BTF, map creation).
    #[error("cannot load the embedded eBPF object: {cause}")]
    Load {
        /// The loader's error, with its causes.
        cause: String,
    },

    /// The embedded object lacks something the loader expects: a build mismatch.
    #[error(
        "the embedded eBPF object has no {kind} `{name}` of the expected type; \
         dovesnap-ebpf and dovesnap-user are out of step, rebuild both"
    )]
    ObjectMismatch {
        /// "program" or "map".
        kind: &'static str,
        /// The missing item's name.
        name: &'static str,
    },

    /// The kernel rejected the program (normally the verifier).
    #[error("the kernel rejected the XDP program `{PROGRAM_NAME}`: {cause}")]
    Verifier {
        /// The kernel's error and verifier log.
        cause: String,
    },

    /// The interface name cannot be a Linux interface name.
    #[error(
        "`{ifname}` is not a valid interface name: it must be 1 to {IFNAME_MAX} bytes \
         without '/', ':', whitespace or NUL"
    )]
    InvalidInterfaceName {
        /// The name as given.
        ifname: String,
    },

    /// No interface of that name in this network namespace.
    #[error(
        "interface `{ifname}` not found in dovesnap's network namespace; \
         check the name with `ip link show`"
    )]
    InterfaceNotFound {
        /// The name as given.
        ifname: String,
    },

    /// Neither native nor generic XDP could be attached.
    #[error(
        "cannot attach XDP to `{ifname}`: native mode failed ({driver}), generic mode \
         failed ({skb}); if another XDP program is attached (`ip link show {ifname}`), \
         remove it first"
    )]
    Attach {
        /// The interface.
        ifname: String,
        /// Why native (driver) mode failed.
        driver: String,
        /// Why generic (SKB) mode failed.
        skb: String,
    },

    /// [`XdpProgram::detach`] for an interface this program is not attached to.
    #[error("XDP is not attached to `{ifname}` by this dovesnap; nothing to detach")]
    NotAttached {
        /// The name as given.
        ifname: String,
    },

    /// Detaching failed on one or more interfaces (each is still attempted).
    #[error("cannot detach XDP from {}", format_failures(.failures))]
    Detach {
        /// Interface and error, for each failure.
        failures: Vec<(String, String)>,
    },

    /// The statistics map could not be read.
    #[error("cannot read the XDP counters from map `{STATS_MAP}`: {cause}")]
    Counters {
        /// The map error, with its causes.
        cause: String,
    },
}

fn format_failures(failures: &[(String, String)]) -> String {
    failures
        .iter()
        .map(|(ifname, cause)| format!("`{ifname}` ({cause})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error and all its sources as one line: aya's own messages are terse ("`bpf_link_create`
/// failed") and keep the useful part (the errno) in the source chain.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Whether an io error somewhere in the chain is EPERM, the kernel's answer to a caller
/// without CAP_BPF/CAP_NET_ADMIN. (EACCES is not counted: the verifier uses it for
/// rejected programs.)
fn is_eperm(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Checks `ifname` the way the kernel would, before it reaches a `CString` or netlink.
fn validate_ifname(ifname: &str) -> Result<(), XdpError> {
    let ok = !ifname.is_empty()
        && ifname.len() <= IFNAME_MAX
        && ifname != "."
        && ifname != ".."
        && !ifname
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(XdpError::InvalidInterfaceName {
            ifname: ifname.to_string(),
        })
    }
}

/// Whether an interface of that name exists in this network namespace.
fn interface_exists(ifname: &str) -> bool {
    let Ok(c_name) = std::ffi::CString::new(ifname) else {
        return false;
    };
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) != 0 }
}

/// How the program ended up attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// Native XDP, run by the driver (veth supports it).
    Driver,
    /// Generic XDP, run by the kernel stack after the skb is built (slower, works on
    /// every device).
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Driver => "native",
            AttachMode::Skb => "generic",
        })
    }
}

/// The program's counters, summed over all CPUs. See [`Counter`] for their meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub ipv4: u64,
    pub arp: u64,
    pub ipv6: u64,
    pub other: u64,
    pub malformed: u64,
    /// Frames passed on to the kernel stack.
    pub pass: u64,
}

impl Counters {
    /// The value of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        match counter {
            Counter::Ipv4 => self.ipv4,
            Counter::Arp => self.arp,
            Counter::Ipv6 => self.ipv6,
            Counter::Other => self.other,
            Counter::Malformed => self.malformed,
            Counter::Pass => self.pass,
        }
    }

    fn slot(&mut self, counter: Counter) -> &mut u64 {
        match counter {
            Counter::Ipv4 => &mut self.ipv4,
            Counter::Arp => &mut self.arp,
            Counter::Ipv6 => &mut self.ipv6,
            Counter::Other => &mut self.other,
            Counter::Malformed => &mut self.malformed,
            Counter::Pass => &mut self.pass,
        }
    }

    /// Every frame the program saw (each is classified exactly once).
    pub fn frames(&self) -> u64 {
        self.ipv4 + self.arp + self.ipv6 + self.other + self.malformed
    }

    /// Builds the totals from per-CPU values, as `read(counter)` returns them.
    fn from_per_cpu<E>(mut read: impl FnMut(Counter) -> Result<Vec<u64>, E>) -> Result<Self, E> {
        let mut counters = Counters::default();
        for counter in Counter::ALL {
            let total = read(counter)?
                .iter()
                .fold(0u64, |sum, v| sum.wrapping_add(*v));
            *counters.slot(counter) = total;
        }
        Ok(counters)
    }
}

/// One attachment made by this program.
#[derive(Debug)]
struct Attachment {
    link: aya::programs::xdp::XdpLinkId,
    mode: AttachMode,
}

/// The loaded XDP program and the interfaces it is attached to.
///
/// Dropping it detaches every attachment (errors are logged) and unloads the program.
pub struct XdpProgram {
    ebpf: Ebpf,
    attachments: BTreeMap<String, Attachment>,
}

impl fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpProgram")
            .field("attachments", &self.attachments)
            .finish_non_exhaustive()
    }
}

impl XdpProgram {
    /// Loads the embedded object: creates its maps and loads the program into the
    /// kernel (the verifier runs here). Attaches nothing. Needs root or CAP_BPF.
    pub fn load() -> Result<Self, XdpError> {
        let bytes = object();
        if bytes.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        let mut ebpf = Ebpf::load(bytes).map_err(|e| {
            if is_eperm(&e) {
                XdpError::PermissionDenied {
                    what: "creating the XDP program's maps",
                    cause: chain(&e),
                }
            } else {
                XdpError::Load { cause: chain(&e) }
            }
        })?;
        let program = xdp_mut(&mut ebpf)?;
        program.load().map_err(|e| {
            if is_eperm(&e) {
                XdpError::PermissionDenied {
                    what: "loading the XDP program",
                    cause: chain(&e),
                }
            } else {
                XdpError::Verifier { cause: chain(&e) }
            }
        })?;
        Ok(XdpProgram {
            ebpf,
            attachments: BTreeMap::new(),
        })
    }

    /// Attaches the program to `ifname`: native (driver) mode if the device supports
    /// it, generic (SKB) mode otherwise. Attaching to an interface this program is
    /// already attached to does nothing and returns the existing mode.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode, XdpError> {
        validate_ifname(ifname)?;
        if let Some(existing) = self.attachments.get(ifname) {
            return Ok(existing.mode);
        }
        let program = xdp_mut(&mut self.ebpf)?;
        let (link, mode) = match program.attach(ifname, XdpMode::Driver) {
            Ok(link) => (link, AttachMode::Driver),
            Err(ProgramError::UnknownInterface { .. }) => {
                return Err(XdpError::InterfaceNotFound {
                    ifname: ifname.to_string(),
                })
            }
            Err(driver) => match program.attach(ifname, XdpMode::Skb) {
                Ok(link) => (link, AttachMode::Skb),
                Err(skb) if is_eperm(&driver) && is_eperm(&skb) => {
                    return Err(XdpError::PermissionDenied {
                        what: "attaching the XDP program",
                        cause: chain(&skb),
                    })
                }
                Err(skb) => {
                    return Err(XdpError::Attach {
                        ifname: ifname.to_string(),
                        driver: chain(&driver),
                        skb: chain(&skb),
                    })
                }
            },
        };
        tracing::info!(ifname, %mode, "attached XDP program");
        self.attachments
            .insert(ifname.to_string(), Attachment { link, mode });
        Ok(mode)
    }

    /// Detaches the program from `ifname`. An interface that has disappeared since
    /// counts as detached (the kernel dropped the program with it).
    pub fn detach(&mut self, ifname: &str) -> Result<(), XdpError> {
        let attachment = self
            .attachments
            .remove(ifname)
            .ok_or_else(|| XdpError::NotAttached {
                ifname: ifname.to_string(),
            })?;
        self.detach_one(ifname, attachment)
            .map_err(|cause| XdpError::Detach {
                failures: vec![(ifname.to_string(), cause)],
            })
    }

    /// Detaches the program from every interface, trying all of them even when some
    /// fail, and reports every failure.
    pub fn detach_all(&mut self) -> Result<(), XdpError> {
        let attachments = std::mem::take(&mut self.attachments);
        let failures: Vec<(String, String)> = attachments
            .into_iter()
            .filter_map(|(ifname, attachment)| {
                self.detach_one(&ifname, attachment)
                    .err()
                    .map(|cause| (ifname, cause))
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(XdpError::Detach { failures })
        }
    }

    fn detach_one(&mut self, ifname: &str, attachment: Attachment) -> Result<(), String> {
        let program = xdp_mut(&mut self.ebpf).map_err(|e| e.to_string())?;
        match program.detach(attachment.link) {
            Ok(()) => {
                tracing::info!(ifname, "detached XDP program");
                Ok(())
            }
            Err(_) if !interface_exists(ifname) => {
                tracing::info!(ifname, "interface gone; XDP program went with it");
                Ok(())
            }
            Err(e) => Err(chain(&e)),
        }
    }

    /// The interfaces the program is attached to, sorted.
    pub fn attached(&self) -> Vec<String> {
        self.attachments.keys().cloned().collect()
    }

    /// How the program is attached to `ifname`, if it is.
    pub fn mode(&self, ifname: &str) -> Option<AttachMode> {
        self.attachments.get(ifname).map(|a| a.mode)
    }

    /// The program's counters, summed over all CPUs, since it was loaded.
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let map = self.ebpf.map(STATS_MAP).ok_or(XdpError::ObjectMismatch {
            kind: "map",
            name: STATS_MAP,
        })?;
        let stats = PerCpuArray::<_, u64>::try_from(map).map_err(|_| XdpError::ObjectMismatch {
            kind: "map",
            name: STATS_MAP,
        })?;
        Counters::from_per_cpu(|counter| {
            stats
                .get(&counter.index(), 0)
                .map(|values| values.to_vec())
                .map_err(|e| XdpError::Counters { cause: chain(&e) })
        })
    }
}

fn xdp_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    let mismatch = XdpError::ObjectMismatch {
        kind: "program",
        name: PROGRAM_NAME,
    };
    match ebpf.program_mut(PROGRAM_NAME) {
        Some(program) => program.try_into().map_err(|_| mismatch),
        None => Err(mismatch),
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for ok in ["eth0", "veth1234567890a", "br-ovs.1", "a"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "veth1234567890ab",
            "a/b",
            "a b",
            "a:b",
            ".",
            "..",
            "a\0b",
        ] {
            let err = validate_ifname(bad).unwrap_err();
            assert!(
                matches!(err, XdpError::InvalidInterfaceName { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn counters_sum_cpus() {
        let counters = Counters::from_per_cpu(|c| Ok::<_, ()>(vec![c.index() as u64, 10, 100]))
            .expect("no error");
        for c in Counter::ALL {
            assert_eq!(counters.get(c), c.index() as u64 + 110, "{c:?}");
        }
        assert_eq!(counters.frames(), (0..5).map(|i| i + 110).sum::<u64>());
    }

    #[test]
    fn counters_report_read_errors() {
        let err = Counters::from_per_cpu(|c| {
            if c == Counter::Ipv6 {
                Err("boom")
            } else {
                Ok(vec![1])
            }
        });
        assert_eq!(err, Err("boom"));
    }

    /// The embedded object is a BPF ELF with the names the loader looks up.
    #[test]
    fn embedded_object_is_bpf() {
        let obj = object();
        if obj.is_empty() {
            // Built with AYA_BUILD_SKIP: the loader must say so rather than fail oddly.
            assert!(matches!(XdpProgram::load(), Err(XdpError::NotBuilt)));
            return;
        }
        assert_eq!(&obj[..4], b"\x7fELF", "not an ELF file");
        const EM_BPF: u16 = 247;
        assert_eq!(
            u16::from_le_bytes([obj[18], obj[19]]),
            EM_BPF,
            "not a BPF object"
        );
        for name in [PROGRAM_NAME, STATS_MAP] {
            assert!(
                obj.windows(name.len()).any(|w| w == name.as_bytes()),
                "object lacks `{name}`"
            );
        }
    }

    #[test]
    fn permission_errors_are_recognised() {
        let eperm = aya::sys::SyscallError {
            call: "bpf_map_create",
            io_error: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(is_eperm(&eperm));
        assert!(chain(&eperm).contains("not permitted"), "{}", chain(&eperm));
        let eacces = aya::sys::SyscallError {
            call: "bpf_prog_load",
            io_error: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(!is_eperm(&eacces));
    }

    /// Loading works with privileges and fails with an explanation without them; both
    /// outcomes are checked, nothing is skipped. Loading attaches nothing, so this is
    /// harmless as root.
    #[test]
    fn load_or_explain() {
        match XdpProgram::load() {
            Ok(program) => {
                assert!(program.attached().is_empty());
                assert_eq!(program.counters().expect("counters"), Counters::default());
            }
            Err(XdpError::NotBuilt) => assert!(object().is_empty()),
            Err(e @ XdpError::PermissionDenied { .. }) => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let euid = unsafe { libc::geteuid() };
                assert_ne!(euid, 0, "root was refused: {e}");
                assert!(e.to_string().contains("needs root"), "{e}");
            }
            Err(e) => panic!("loading the XDP program failed: {e}"),
        }
    }

    /// The driver keeps the program behind a lock shared by async tasks.
    #[test]
    fn program_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<XdpProgram>();
        send_sync::<XdpError>();
    }

    #[test]
    fn detach_unknown_interface() {
        let err = XdpError::NotAttached {
            ifname: "nosuch0".into(),
        };
        assert!(err.to_string().contains("nosuch0"));
        let err = XdpError::Detach {
            failures: vec![("a0".into(), "x".into()), ("b0".into(), "y".into())],
        };
        assert_eq!(err.to_string(), "cannot detach XDP from `a0` (x), `b0` (y)");
    }
}
