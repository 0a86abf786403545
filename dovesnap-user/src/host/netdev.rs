//! The kernel's `netdev` generic-netlink family: what XDP a device supports.
//!
//! nat-fast relies on two capabilities that differ between uplinks users run:
//! - **native XDP** (`NETDEV_XDP_ACT_BASIC`): the program runs in the driver, before
//!   GRO, on frames no larger than the MTU. Without it (a Linux bridge, a macvlan, a NIC
//!   whose driver lacks XDP) the program would attach in generic mode and see GRO/GSO
//!   super-packets, which no AF_XDP frame holds;
//! - **redirect target** (`NETDEV_XDP_ACT_NDO_XMIT`): frames an XDP program redirects
//!   to the device are sent. A veth is one only while its peer has GRO on or an XDP
//!   program; a redirect into one that is not is dropped without any XDP counter
//!   seeing it.
//!
//! [`query`] asks the kernel for one device (in the caller's network namespace); the
//! request and the answer's parsing are pure and unit-tested.

use std::io;

use crate::host::nlmsg::{attributes, message, Socket, NLM_F_REQUEST};

/// `enum netdev_xdp_act` (include/uapi/linux/netdev.h).
const XDP_ACT_BASIC: u64 = 1;
const XDP_ACT_REDIRECT: u64 = 2;
const XDP_ACT_NDO_XMIT: u64 = 4;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;

/// A device's XDP capabilities as the kernel reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpFeatures(pub u64);

impl XdpFeatures {
    /// The driver runs XDP programs itself (native mode).
    pub fn native(self) -> bool {
        self.0 & XDP_ACT_BASIC != 0
    }

    /// Its programs may redirect.
    pub fn redirect(self) -> bool {
        self.0 & XDP_ACT_REDIRECT != 0
    }

    /// Frames redirected to it by XDP are transmitted (`ndo_xdp_xmit`).
    pub fn redirect_target(self) -> bool {
        self.0 & XDP_ACT_NDO_XMIT != 0
    }
}

impl std::fmt::Display for XdpFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = if self.native() {
            "native"
        } else {
            "generic only"
        };
        let target = if self.redirect_target() {
            "redirect target"
        } else {
            "not a redirect target"
        };
        write!(f, "{mode} XDP, {target}")
    }
}

/// The XDP features of `ifindex` in the calling thread's network namespace.
pub fn query(ifindex: u32) -> io::Result<XdpFeatures> {
    Querier::new()?.get(ifindex)
}

/// An open socket with the family resolved, for asking about many devices (the data
/// plane re-checks its devices every few seconds).
pub struct Querier {
    sock: Socket,
    family: u16,
}

impl Querier {
    /// Opens a socket in the calling thread's network namespace.
    pub fn new() -> io::Result<Querier> {
        let sock = Socket::open(rtnetlink::sys::protocols::NETLINK_GENERIC)?;
        let reply = sock.request(&family_request())?;
        let family = parse_family_id(&reply).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel has no netdev netlink family (older than 6.3)",
            )
        })?;
        Ok(Querier { sock, family })
    }

    /// The XDP features of `ifindex`.
    pub fn get(&self, ifindex: u32) -> io::Result<XdpFeatures> {
        let reply = self.sock.request(&dev_get_request(self.family, ifindex))?;
        parse_xdp_features(&reply).map(XdpFeatures)
    }
}

fn family_request() -> Vec<u8> {
    message(
        GENL_ID_CTRL,
        NLM_F_REQUEST,
        [CTRL_CMD_GETFAMILY, 1, 0, 0],
        &[(CTRL_ATTR_FAMILY_NAME, b"netdev\0")],
    )
}

fn dev_get_request(family: u16, ifindex: u32) -> Vec<u8> {
    message(
        family,
        NLM_F_REQUEST,
        [NETDEV_CMD_DEV_GET, 1, 0, 0],
        &[(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())],
    )
}

fn parse_family_id(reply: &[u8]) -> Option<u16> {
    attributes(reply)
        .ok()?
        .into_iter()
        .find(|(ty, v)| *ty == CTRL_ATTR_FAMILY_ID && v.len() == 2)
        .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]))
}

fn parse_xdp_features(reply: &[u8]) -> io::Result<u64> {
    attributes(reply)?
        .into_iter()
        .find(|(ty, v)| *ty == NETDEV_A_DEV_XDP_FEATURES && v.len() == 8)
        .map(|(_, v)| u64::from_ne_bytes(v.try_into().unwrap()))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "netdev reply without xdp-features",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::nlmsg::NLMSG_ERROR;

    /// A reply as the kernel sends it: header, generic header, attributes.
    fn reply(kind: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        message(kind, NLM_F_REQUEST, [1, 1, 0, 0], attrs)
    }

    #[test]
    fn requests_are_well_formed() {
        let m = dev_get_request(0x22, 7);
        assert_eq!(m.len(), 28);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 28);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x22);
        assert_eq!((m[16], m[17]), (NETDEV_CMD_DEV_GET, 1));
        assert_eq!(u16::from_ne_bytes([m[20], m[21]]), 8);
        assert_eq!(u32::from_ne_bytes(m[24..28].try_into().unwrap()), 7);
        // "netdev\0" is 7 bytes: the attribute is padded to 12.
        assert_eq!(family_request().len(), 32);
    }

    #[test]
    fn family_id_and_features_are_read() {
        let r = reply(
            GENL_ID_CTRL,
            &[
                (CTRL_ATTR_FAMILY_NAME, b"netdev\0"),
                (CTRL_ATTR_FAMILY_ID, &[0x21, 0]),
            ],
        );
        assert_eq!(parse_family_id(&r), Some(u16::from_ne_bytes([0x21, 0])));
        let f = 0x27u64.to_ne_bytes();
        let r = reply(
            0x21,
            &[
                (NETDEV_A_DEV_IFINDEX, &3u32.to_ne_bytes()),
                (NETDEV_A_DEV_XDP_FEATURES, &f),
            ],
        );
        let x = XdpFeatures(parse_xdp_features(&r).unwrap());
        assert!(x.native() && x.redirect() && x.redirect_target());
        assert_eq!(x.to_string(), "native XDP, redirect target");
        assert_eq!(
            XdpFeatures(0).to_string(),
            "generic only XDP, not a redirect target"
        );
    }

    #[test]
    fn errors_and_garbage_are_reported_not_misread() {
        // nlmsghdr, then struct nlmsgerr: the error and the request's header.
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        e.extend_from_slice(&[0; 16]);
        e[0..4].copy_from_slice(&36u32.to_ne_bytes());
        e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        let err = parse_xdp_features(&e).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
        assert!(parse_xdp_features(&[1, 2, 3]).is_err());
        // An attribute claiming more than the message holds ends the walk.
        let mut bad = reply(0x21, &[(NETDEV_A_DEV_XDP_FEATURES, &[0; 8])]);
        bad[20] = 200;
        assert!(parse_xdp_features(&bad).is_err());
        assert_eq!(parse_family_id(&[]), None);
    }

    #[test]
    fn loopback_is_asked_for_real() {
        // The family exists on every kernel this project supports (6.3+); loopback has
        // no native XDP.
        let f = query(1).expect("the kernel's netdev family answers");
        assert!(!f.native(), "{f}");
    }
}
