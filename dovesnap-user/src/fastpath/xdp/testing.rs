//! What the integration tests read of the steering program, and nothing else does:
//! `BPF_PROG_TEST_RUN` (one frame in; the XDP action and the frame as the program left
//! it out), the configured interfaces, and the counters summed per direction. Feature
//! `testing`, enabled by `tests`; the daemon is built without it.

use aya::maps::HashMap;
use aya::programs::{TestRun, TestRunOptions, TestRunResult, Xdp};
use dovesnap_ebpf::{Counter, IfaceConfig, IFACES_MAP, PROGRAM_NAME};

use super::tc::{classifier, TcProgram};
use super::{chain, map_error, Counters, XdpError, XdpProgram};

impl XdpProgram {
    /// Every configured interface, sorted by ifindex.
    pub fn ifaces(&self) -> Result<Vec<(u32, IfaceConfig)>, XdpError> {
        let map = self.ebpf.map(IFACES_MAP).ok_or(XdpError::ObjectMismatch {
            kind: "map",
            name: IFACES_MAP,
        })?;
        let map = HashMap::<_, u32, IfaceConfig>::try_from(map).map_err(|_| {
            XdpError::ObjectMismatch {
                kind: "map",
                name: IFACES_MAP,
            }
        })?;
        let mut out = map
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_error(IFACES_MAP, "list the interfaces".into(), &e))?;
        out.sort_by_key(|(ifindex, _)| *ifindex);
        Ok(out)
    }

    /// Runs the program once on `frame` as if it had arrived on rx queue `queue` of
    /// `ingress_ifindex` (`BPF_PROG_TEST_RUN`; the interface must exist in the calling
    /// thread's network namespace and have more than `queue` rx queues) and returns the
    /// XDP action (`XDP_PASS` = 2, `XDP_REDIRECT` = 4, ...). The frame is counted like a
    /// real one but delivered nowhere.
    pub fn test_run(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        queue: u32,
    ) -> Result<u32, XdpError> {
        self.test_run_frame(frame, ingress_ifindex, queue)
            .map(|(action, _)| action)
    }

    /// [`XdpProgram::test_run`], also returning the frame as the program left it (its
    /// rewrites included).
    pub fn test_run_frame(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        queue: u32,
    ) -> Result<(u32, Vec<u8>), XdpError> {
        let program: &Xdp = match self.ebpf.program(PROGRAM_NAME) {
            Some(program) => program.try_into().map_err(|_| XdpError::ObjectMismatch {
                kind: "program",
                name: PROGRAM_NAME,
            })?,
            None => {
                return Err(XdpError::ObjectMismatch {
                    kind: "program",
                    name: PROGRAM_NAME,
                })
            }
        };
        let data_end = u32::try_from(frame.len()).map_err(|_| XdpError::TestRun {
            ifindex: ingress_ifindex,
            queue,
            cause: format!("frame of {} bytes is too long", frame.len()),
        })?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; the kernel wants data 0 and data_end == the frame's length.
        let ctx: Vec<u8> = [0, data_end, 0, ingress_ifindex, queue, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        run(program, frame, &ctx).map_err(|cause| XdpError::TestRun {
            ifindex: ingress_ifindex,
            queue,
            cause,
        })
    }
}

/// What a tc program returned for one test frame, and the frame as it left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcRun {
    /// `TCX_NEXT` (-1), `TCX_DROP` (2), `TCX_REDIRECT` (7), ...
    pub ret: i32,
    pub frame: Vec<u8>,
}

impl XdpProgram {
    /// Runs the tc `program` once on `frame` (`BPF_PROG_TEST_RUN`) as if it arrived on
    /// `ifindex` (which must exist in the calling thread's network namespace), as a GSO
    /// super-packet of `gso_segs` segments of `gso_size` bytes when those are non-zero.
    /// The skb is `CHECKSUM_NONE`; redirects are decided but not carried out.
    pub fn tc_test_run(
        &self,
        program: TcProgram,
        frame: &[u8],
        ifindex: u32,
        gso: (u32, u32),
    ) -> Result<TcRun, XdpError> {
        let prog = classifier(&self.ebpf, program)?;
        // struct __sk_buff (192 bytes): the kernel takes ifindex (offset 40), gso_segs
        // (164) and gso_size (176) from it; everything else must be zero.
        let mut ctx = vec![0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[164..168].copy_from_slice(&gso.0.to_ne_bytes());
        ctx[176..180].copy_from_slice(&gso.1.to_ne_bytes());
        let (ret, frame) = run(prog, frame, &ctx).map_err(|cause| XdpError::TestRun {
            ifindex,
            queue: 0,
            cause,
        })?;
        Ok(TcRun {
            ret: ret as i32,
            frame,
        })
    }
}

/// One `BPF_PROG_TEST_RUN` of `program` on `frame` with context `ctx`: the program's
/// return value and the frame as it left it, or the error's chain.
fn run<P>(program: &P, frame: &[u8], ctx: &[u8]) -> Result<(u32, Vec<u8>), String>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    // The programs never grow the frame; headroom for safety.
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(ctx),
        ..TestRunOptions::new()
    };
    let result = program.test_run(opts).map_err(|e| chain(&e))?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

impl Counters {
    /// Frames a tc program decided on (one decision counter each; GSO and session
    /// creation count on top).
    pub fn tc_frames(&self) -> u64 {
        self.prefixed("tc-")
            - self.tc_gso_frames
            - self.tc_gso_segments
            - self.tc_created
            - self.tc_icmp_error
    }

    /// Frames that arrived on an endpoint interface (one decision counter each).
    pub fn endpoint_frames(&self) -> u64 {
        self.offload_outbound + self.prefixed("endpoint-")
    }

    /// Frames that arrived on an uplink interface (one decision counter each).
    pub fn uplink_frames(&self) -> u64 {
        self.offload_inbound + self.prefixed("uplink-")
    }

    fn prefixed(&self, prefix: &str) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.name().starts_with(prefix))
            .map(|c| self.get(*c))
            .sum()
    }

    /// The counters that differ from `before`, as `name: +growth`, for test messages.
    pub fn diff(&self, before: &Counters) -> String {
        Counter::ALL
            .iter()
            .filter(|c| self.get(**c) != before.get(**c))
            .map(|c| {
                format!(
                    "{}: +{}",
                    c.name(),
                    self.get(*c).wrapping_sub(before.get(*c))
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
