//! `cargo xtask bench`: nat-fast against the kernel path on the same machine.
//!
//! - [`report`]: records (medians over runs), the JSON report.
//! - [`micro`]: the translator alone, in process: ns and allocations per packet,
//!   session-table scale, and worker threads each with its own share of the ports
//!   (sessions/s and packets/s per worker and in total, scaling over one worker).
//! - [`traffic`]: load generators and sinks (UDP sendmmsg generator, TCP stream,
//!   request/response and connect/request/response loops), run inside namespaces as
//!   subcommands of the `dovesnap-bench` binary.

pub mod micro;
pub mod report;
pub mod traffic;
