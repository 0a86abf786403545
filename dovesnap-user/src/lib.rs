//! dovesnap: a Docker network plugin that puts containers on Open vSwitch bridges.
//!
//! Module map (see ARCHITECTURE.md):
//! - [`api`]: the libnetwork remote-driver protocol (request/response types, the
//!   [`api::NetworkDriver`] trait the HTTP server dispatches to).
//! - [`server`]: the HTTP/1.1 server on the plugin's unix socket.
//! - [`options`]: `-o` network options, parsed and validated.
//! - [`ovsdb`]: an RFC 7047 JSON-RPC client and the OVS operations built on it.
//! - [`netlink`]: veth pairs and link settings through rtnetlink.
//! - [`driver`]: the driver itself: networks, endpoints, recovery.
//! - [`xdp`]: loading and attaching the embedded eBPF program.
//! - [`control`]: the daemon's control socket and the CLI client for it.

pub mod api;
pub mod control;
pub mod driver;
pub mod firewall;
pub mod netlink;
pub mod options;
pub mod ovsdb;
pub mod server;
pub mod xdp;
