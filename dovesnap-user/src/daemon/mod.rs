//! The daemon's own faces: the HTTP-over-unix-socket helpers both sockets share
//! ([`http`]), the control socket with the status model and the CLI client for it
//! ([`control`]), and the Prometheus exposition of that status ([`metrics`]).

pub mod control;
pub mod http;
pub mod metrics;
