//! Facts of the host every part reads the same way: kernel settings ([`sysctl`]),
//! typed addresses ([`addr`]) and interface ioctls ([`ethtool`]).
//!
//! One reader per fact, so that the driver, the fast path, the firewall and the doctor
//! never disagree on how a value is parsed.

pub mod addr;
pub mod ethtool;
pub mod sysctl;
