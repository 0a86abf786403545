//! Facts of the host every part reads the same way: kernel settings ([`sysctl`]),
//! typed addresses ([`addr`]), interface ioctls ([`ethtool`]), interface names ([`ifname`]), links through rtnetlink
//! ([`netlink`]), named network namespaces ([`netns`]), tc patches between links ([`tc`]), a device's XDP features ([`netdev`]) and the raw netlink messages
//! both read ([`nlmsg`]).
//!
//! One reader per fact, so that the driver, the fast path, the firewall and the doctor
//! never disagree on how a value is parsed.

pub mod addr;
pub mod ethtool;
pub mod ifname;
pub mod netdev;
pub mod netlink;
pub mod netns;
pub mod nlmsg;
pub mod sysctl;
pub mod tc;
