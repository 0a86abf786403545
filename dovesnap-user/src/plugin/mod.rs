//! What Docker sends and how it is checked: the libnetwork remote-driver protocol
//! ([`api`]), the remote IPAM protocol ([`ipam`]), the HTTP/1.1 server on the plugin's unix socket ([`server`]) and the `-o`
//! network and endpoint options, parsed and validated ([`options`]).

pub mod api;
pub mod ipam;
pub mod options;
pub mod server;
