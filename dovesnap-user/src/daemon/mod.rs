//! The daemon's own faces: the HTTP-over-unix-socket helpers both sockets share
//! ([`http`]), the control socket and the CLI client for it ([`control`]), the status
//! model and its table ([`status`]), and its Prometheus exposition ([`metrics`]).

pub mod control;
pub mod http;
pub mod metrics;
pub mod status;
