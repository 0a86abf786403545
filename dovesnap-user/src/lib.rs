//! dovesnap: a Docker network plugin that puts containers on Open vSwitch bridges.
//!
//! Module map (see ARCHITECTURE.md):
//! - [`api`]: the libnetwork remote-driver protocol (request/response types, the
//!   [`api::NetworkDriver`] trait the HTTP server dispatches to).
//! - [`server`]: the HTTP/1.1 server on the plugin's unix socket.
//! - [`options`]: `-o` network options, parsed and validated.
//! - [`ovsdb`]: an RFC 7047 JSON-RPC client and the OVS operations built on it.
//! - [`ovn`]: overlay mode: the OVN northbound database client and chassis settings.
//! - [`netlink`]: veth pairs and link settings through rtnetlink.
//! - [`netdev`]: a device's XDP features (native XDP, redirect target) from the kernel.
//! - [`driver`]: the driver itself: networks, endpoints, recovery.
//! - [`xdp`]: loading and attaching the embedded eBPF program.
//! - [`afxdp`]: AF_XDP sockets over one shared UMEM, the translator's packet I/O.
//! - [`nat`]: the nat-fast packet translator (pure: frames in, verdicts out, no I/O).
//! - [`control`]: the daemon's control socket and the CLI client for it.
//! - [`fastpath`]: nat-fast's control side and its data-plane thread.
//! - [`metrics`]: Prometheus text exposition of the status (opt-in `--metrics`).
//! - [`nexthop`]: next hops for the translator, from the kernel's routes and neighbours.
//! - [`doctor`]: `dovesnap doctor`, the host checks (OVS, XDP, AF_XDP, Docker, netfilter).
//! - `fuzz` (feature `fuzzing`): the entry points of the fuzz targets (`dovesnap-user/fuzz`).
//!
//! Features, all off in the daemon, each enabled by the crate that needs it: `fuzzing`
//! (the `fuzz` module; `dovesnap-user/fuzz`), `testing` (what the integration tests read
//! of the XDP program, `xdp::testing`; `tests`), `bench` (`xdp::XdpSink`, the benchmark's
//! counting sink; `bench`).

pub mod afxdp;
pub mod api;
pub mod conntrack;
pub mod control;
pub mod doctor;
pub mod driver;
pub mod fastpath;
pub mod firewall;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod host;
pub mod http;
pub mod metrics;
pub mod netdev;
pub mod netlink;
pub mod nexthop;
pub mod nlmsg;
pub mod options;
pub mod ovn;
pub mod ovsdb;
pub mod server;
pub mod translator;
pub mod xdp;
