//! dovesnap: a Docker network plugin that puts containers on Open vSwitch bridges.
//!
//! Module map (see ARCHITECTURE.md):
//! - [`plugin`]: what Docker sends and how it is checked (the remote-driver API, the
//!   HTTP server on the plugin socket, `-o` options).
//! - [`driver`]: networks and endpoints, one file per mode, records and recovery.
//! - [`host`]: typed facts of the host (addresses, sysctls, links, ethtool, XDP
//!   features) read one way for every part.
//! - [`ovsdb`], [`ovn`], [`firewall`]: the backends the driver programs (OVS through
//!   OVSDB, OVN's northbound database, iptables/nftables).
//! - [`fastpath`]: a nat-fast packet's whole path: the XDP program's loader and maps,
//!   AF_XDP sockets, the data-plane thread, next hops, offload and conntrack hand-off.
//! - [`translator`]: the nat-fast packet translator (pure: frames in, verdicts out).
//! - [`daemon`]: the control socket, the status model, metrics.
//! - [`doctor`]: `dovesnap doctor`, the host checks (OVS, XDP, AF_XDP, Docker, netfilter).
//! - `fuzz` (feature `fuzzing`): the entry points of the fuzz targets (`dovesnap-user/fuzz`).
//!
//! Features, all off in the daemon, each enabled by the crate that needs it: `fuzzing`
//! (the `fuzz` module; `dovesnap-user/fuzz`), `testing` (what the integration tests read
//! of the XDP program, `fastpath::xdp::testing`; `tests`), `bench` (`fastpath::xdp::XdpSink`,
//! the benchmark's counting sink; `bench`).

pub mod daemon;
pub mod doctor;
pub mod driver;
pub mod fastpath;
pub mod firewall;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod host;
pub mod ovn;
pub mod ovsdb;
pub mod plugin;
pub mod translator;
