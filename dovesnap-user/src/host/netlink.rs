//! Links through rtnetlink: veth pairs for endpoints, link state, MTU. (The legacy
//! ethtool ioctls are in [`crate::host::ethtool`].)
//!
//! Only the operations the driver needs, each one netlink request; names are validated
//! by the caller (`plugin::options` for user input, the driver for generated names).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;

use crate::host::addr::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0} (dovesnap needs root or CAP_NET_ADMIN)")]
    Connect(std::io::Error),
    #[error("cannot create veth pair {host}/{peer}: {source}")]
    CreateVeth {
        host: String,
        peer: String,
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Ethtool(#[from] crate::host::ethtool::EthtoolError),
    #[error("cannot {action} link {name}: {source}")]
    Link {
        action: &'static str,
        name: String,
        source: rtnetlink::Error,
    },
}

impl NetlinkError {
    /// [`NetlinkError::Link`]: `action` on link `name` failed with `source`.
    fn link(action: &'static str, name: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetlinkError::Link {
            action,
            name: name.into(),
            source,
        }
    }
}

/// `ENODEV`/`ENOENT` from the kernel: the link is not there.
fn is_missing(err: &rtnetlink::Error) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(m)
        if m.code.map(|c| c.get()) == Some(-libc::ENODEV) || m.code.map(|c| c.get()) == Some(-libc::ENOENT))
}

/// A handle on the host namespace's rtnetlink socket. Cheap to clone.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket and spawns its connection task on the current tokio runtime.
    pub fn new() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The rtnetlink handle, for the other host modules that speak rtnetlink
    /// ([`crate::host::tc`]).
    pub(super) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Creates a veth pair: `host` stays in the host namespace and is set up; `peer`
    /// (the container end, handed to Docker) gets `peer_mac` when given. Both get `mtu`.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_mac: Option<[u8; 6]>,
        mtu: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string());
        if let Some(mac) = peer_mac {
            peer_msg = peer_msg.address(mac.to_vec());
        }
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
        }
        // The host end is only an OVS port. NOARP keeps the host's IP stack from
        // answering ARP through it (ARP flux: containers would learn the veth's MAC for
        // the gateway and their routed traffic would enter the kernel on the wrong
        // interface).
        let mut msg = LinkVeth::new(host, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .arp(false)
            .up();
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        self.handle
            .link()
            .add(msg.build())
            .execute()
            .await
            .map_err(|source| NetlinkError::CreateVeth {
                host: host.into(),
                peer: peer.into(),
                source,
            })
    }

    /// The link called `name`, if there is one.
    pub async fn get(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let res = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await;
        match res {
            Ok(link) => Ok(link),
            Err(e) if is_missing(&e) => Ok(None),
            Err(source) => Err(NetlinkError::link("look up", name, source)),
        }
    }

    /// The interface index of `name`, if it exists.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.get(name).await?.map(|l| l.header.index))
    }

    /// Whether a link called `name` exists.
    pub async fn exists(&self, name: &str) -> Result<bool, NetlinkError> {
        Ok(self.get(name).await?.is_some())
    }

    /// The IPv4 addresses of the interface with index `ifindex`, primary first.
    pub async fn ipv4_addresses(&self, ifindex: u32) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        let mut dump = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute();
        let mut out = Vec::new();
        loop {
            match dump.try_next().await {
                Ok(Some(m)) => {
                    if m.header.index != ifindex {
                        continue;
                    }
                    for a in &m.attributes {
                        if let AddressAttribute::Local(IpAddr::V4(v4)) = a {
                            out.push(*v4);
                        }
                    }
                }
                Ok(None) => break,
                Err(source) => {
                    return Err(NetlinkError::link(
                        "read the addresses of",
                        format!("#{ifindex}"),
                        source,
                    ))
                }
            }
        }
        Ok(out)
    }

    /// The main table's IPv4 default route with the lowest metric, if the host has
    /// one: the one reading of it that the driver (nat-fast's default uplink) and the
    /// doctor share.
    pub async fn default_route(&self) -> Result<Option<DefaultRoute>, NetlinkError> {
        let mut dump = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut best: Option<DefaultRoute> = None;
        loop {
            match dump.try_next().await {
                Ok(Some(r)) => {
                    if r.header.destination_prefix_length != 0 || r.header.table != 254 {
                        continue;
                    }
                    let mut route = DefaultRoute {
                        ifindex: 0,
                        gateway: None,
                        metric: 0,
                    };
                    for a in &r.attributes {
                        match a {
                            RouteAttribute::Oif(i) => route.ifindex = *i,
                            RouteAttribute::Priority(p) => route.metric = *p,
                            RouteAttribute::Gateway(RouteAddress::Inet(gw)) => {
                                route.gateway = Some(*gw)
                            }
                            _ => {}
                        }
                    }
                    if route.ifindex != 0 && best.as_ref().is_none_or(|b| route.metric < b.metric) {
                        best = Some(route);
                    }
                }
                Ok(None) => break,
                Err(source) => {
                    return Err(NetlinkError::link("read the routes of", "the host", source))
                }
            }
        }
        Ok(best)
    }

    /// The interface of [`Netlink::default_route`], if the host has one.
    pub async fn default_route_interface(&self) -> Result<Option<u32>, NetlinkError> {
        Ok(self.default_route().await?.map(|r| r.ifindex))
    }

    /// The name of the interface with index `ifindex`.
    pub async fn name_of(&self, ifindex: u32) -> Result<Option<String>, NetlinkError> {
        let res = self
            .handle
            .link()
            .get()
            .match_index(ifindex)
            .execute()
            .try_next()
            .await;
        match res {
            Ok(link) => Ok(link.and_then(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
            })),
            Err(e) if is_missing(&e) => Ok(None),
            Err(source) => Err(NetlinkError::link("look up", format!("#{ifindex}"), source)),
        }
    }

    /// The names of this namespace's interfaces that have no peer in another network
    /// namespace (a veth whose other end is here too, or no veth at all).
    pub async fn names_without_remote_peer(&self) -> Result<Vec<String>, NetlinkError> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        loop {
            let link = match links.try_next().await {
                Ok(Some(link)) => link,
                Ok(None) => return Ok(names),
                Err(source) => return Err(NetlinkError::link("list", "links", source)),
            };
            let mut name = None;
            let mut remote_peer = false;
            for a in &link.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::LinkNetNsId(_) => remote_peer = true,
                    _ => {}
                }
            }
            names.extend(name.filter(|_| !remote_peer));
        }
    }

    /// The MAC address of `name`, if it exists and has one.
    pub async fn mac(&self, name: &str) -> Result<Option<[u8; 6]>, NetlinkError> {
        Ok(self.get(name).await?.as_ref().and_then(link_mac))
    }

    /// Deletes `name` (for a veth, both ends). Returns whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(index) = self.index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(source) => Err(NetlinkError::link("delete", name, source)),
        }
    }

    /// Puts `addr/prefix_len` on `name` (replacing an identical address, so it is
    /// idempotent) and sets the link up. An IPv6 address skips duplicate address
    /// detection (`IFA_F_NODAD`): a gateway must answer at once, not after a second of
    /// "tentative", and nothing else owns an address of a network's own subnet.
    pub async fn set_address_up(
        &self,
        name: &str,
        addr: impl Into<IpAddr>,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let addr = addr.into();
        let index = self
            .index(name)
            .await?
            .ok_or_else(|| NetlinkError::link("address", name, rtnetlink::Error::RequestFailed))?;
        let mut req = self.handle.address().add(index, addr, prefix_len).replace();
        if addr.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|source| NetlinkError::link("address", name, source))?;
        self.set_up(name).await
    }

    /// Sets `name` up.
    pub async fn set_up(&self, name: &str) -> Result<(), NetlinkError> {
        self.set_state(name, true).await
    }

    /// Sets `name` down.
    pub async fn set_down(&self, name: &str) -> Result<(), NetlinkError> {
        self.set_state(name, false).await
    }

    async fn set_state(&self, name: &str, up: bool) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_name(name);
        let msg = if up { msg.up() } else { msg.down() }.build();
        let action = if up { "set up" } else { "set down" };
        self.set_link(msg, action, name).await
    }

    /// Applies one RTM_SETLINK message to link `name`; `action` names it in the error.
    async fn set_link(
        &self,
        msg: LinkMessage,
        action: &'static str,
        name: &str,
    ) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| NetlinkError::Link {
                action,
                name: name.into(),
                source,
            })
    }
}

impl Netlink {
    /// Moves link `name` into the network namespace open as `netns_fd`.
    pub async fn move_to_netns(
        &self,
        name: &str,
        netns_fd: std::os::fd::RawFd,
    ) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_name(name)
            .setns_by_fd(netns_fd)
            .build();
        self.set_link(msg, "move to a network namespace", name)
            .await
    }

    /// Renames link `name` to `new_name` (the link must be down).
    pub async fn rename(&self, name: &str, new_name: &str) -> Result<(), NetlinkError> {
        let index = self
            .index(name)
            .await?
            .ok_or_else(|| NetlinkError::link("rename", name, rtnetlink::Error::RequestFailed))?;
        let msg = LinkUnspec::new_with_index(index).name(new_name).build();
        self.set_link(msg, "rename", name).await
    }

    /// Adds an on-link route to `dest` out of link `name` (`ip route add DEST dev NAME`).
    pub async fn add_link_route(&self, dest: Ipv4Net, name: &str) -> Result<(), NetlinkError> {
        let index = self.index(name).await?.ok_or_else(|| {
            NetlinkError::link("add a route through", name, rtnetlink::Error::RequestFailed)
        })?;
        self.handle
            .route()
            .add(link_route(dest, index))
            .execute()
            .await
            .map_err(|source| NetlinkError::link("add a route through", name, source))
    }

    /// Adds an IPv4 default route through `gateway`.
    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|source| {
                NetlinkError::link("add a default route through", gateway.to_string(), source)
            })
    }
}

/// The route [`Netlink::add_link_route`] adds: `dest` straight out of interface `oif`
/// (scope link, main table, protocol `boot` as `ip route` gives).
fn link_route(dest: Ipv4Net, oif: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dest.addr(), dest.prefix())
        .output_interface(oif)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Boot)
        .build()
}

/// The host's IPv4 default route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultRoute {
    /// The outgoing interface.
    pub ifindex: u32,
    /// The next hop; `None` for a route straight out of the interface.
    pub gateway: Option<Ipv4Addr>,
    /// The route's metric (lowest wins).
    pub metric: u32,
}

/// The MAC address of a link already looked up with [`Netlink::get`], if it has one.
pub fn link_mac(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(a) if a.len() == 6 => {
            let mut mac = [0; 6];
            mac.copy_from_slice(a);
            Some(mac)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_on_link_route_is_what_ip_route_adds() {
        let net: Ipv4Net = "10.30.0.0/24".parse().unwrap();
        let r = link_route(net, 7);
        assert_eq!(r.header.destination_prefix_length, 24);
        assert_eq!(r.header.scope, RouteScope::Link);
        assert_eq!(r.header.protocol, RouteProtocol::Boot);
        assert_eq!(r.header.table, 254, "main");
        assert!(r
            .attributes
            .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                Ipv4Addr::new(10, 30, 0, 0)
            ))));
        assert!(r.attributes.contains(&RouteAttribute::Oif(7)));
        assert!(!r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_))));
    }
}
