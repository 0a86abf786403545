//! What the privileged tests and the benchmark share, so that each is written once:
//! running commands in namespaces ([`cmd`]), crafted frames ([`frame`]), a counting
//! global allocator ([`alloc`]) and a deterministic generator ([`rand`]).

pub mod alloc;
pub mod cmd;
pub mod frame;
pub mod rand;
