//! What the privileged tests and the benchmark share, so that each is written once:
//! running commands in namespaces ([`cmd`]), crafted frames ([`frame`]) and a counting
//! global allocator ([`alloc`]).

pub mod alloc;
pub mod cmd;
pub mod frame;
