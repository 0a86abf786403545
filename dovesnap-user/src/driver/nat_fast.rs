//! nat-fast mode: putting joined endpoints (and their published ports) on the XDP +
//! AF_XDP fast path and taking them off, the uplink's checks, the fast path's
//! lifetime (started with the first nat-fast endpoint), and the split endpoints of
//! `ovs.nat.engine=tc` networks.

use super::*;
use crate::host::netlink::NetlinkError;
use crate::plugin::options::NatEngine;

/// Prefix of a split endpoint's container-side host end, the one tc programs will sit
/// on (`ovs.nat.engine=tc`; never an OVS port).
pub const TC_VETH_PREFIX: &str = "ovst";

/// Prefix of the peer of a split endpoint's OVS port, the end the patch uses.
pub const PATCH_VETH_PREFIX: &str = "ovsq";

/// Whether the network's endpoints are split (`mode=nat-fast`, `ovs.nat.engine=tc`):
///
/// ```text
/// container eth0 (ovsc<id>: TX csum, TSO on) <-> ovst<id>   (host; tc ingress: redirect to ovsq)
/// ovsq<id> (TX csum off: GSO segmented here) <-> ovsv<id>   (the OVS port)
///                                      ovsq<id> tc ingress: redirect to ovst
/// ```
///
/// OVS's userspace datapath reads its ports through packet sockets, which see frames
/// before tc does and cannot take TSO frames: the split keeps both away from the
/// container's veth (docs/design/nat-fast-tc.md §2.1). The OVS port keeps the name
/// every other endpoint's has, so records and ports are the same for both engines.
pub(super) fn is_split(net: &Network) -> bool {
    net.options.mode == Mode::NatFast && net.options.engine() == NatEngine::Tc
}

/// The names of a split endpoint's extra links: (the container's host end, the OVS
/// port's peer).
pub(super) fn split_names(ep: &Endpoint) -> (String, String) {
    let id = &ep.id[..10];
    (
        format!("{TC_VETH_PREFIX}{id}"),
        format!("{PATCH_VETH_PREFIX}{id}"),
    )
}

pub(super) fn fast_proto(p: Proto) -> crate::translator::Protocol {
    match p {
        Proto::Tcp => crate::translator::Protocol::Tcp,
        Proto::Udp => crate::translator::Protocol::Udp,
    }
}

/// The publications the translator serves: those on every address or on the uplink's
/// own (others, e.g. bound to a second address, stay with the kernel's DNAT), as
/// (protocol, external port, container port).
pub(super) fn fast_ports(
    published: &[PublishedPort],
    uplink_addr: Ipv4Addr,
) -> Vec<backend::FastPort> {
    published
        .iter()
        .filter(|p| p.host_ip.is_none_or(|ip| ip == uplink_addr))
        .map(|p| (fast_proto(p.proto), p.host_port, p.container_port))
        .collect()
}

/// Every publication as (protocol, external port, container port): what a tc-engine
/// endpoint's program must leave to the kernel's DNAT, whatever host address it is on.
pub(super) fn every_port(published: &[PublishedPort]) -> Vec<backend::FastPort> {
    published
        .iter()
        .map(|p| (fast_proto(p.proto), p.host_port, p.container_port))
        .collect()
}

/// The nat-fast data path, started with the first nat-fast endpoint; part of the
/// driver's state, so only reached with the driver's lock held. Its calls block (they
/// wait for the data-plane thread): each runs in `block_in_place`.
pub(super) struct FastSlot<F>(Option<F>);

impl<F> Default for FastSlot<F> {
    fn default() -> Self {
        FastSlot(None)
    }
}

impl<F: NatFastPath> FastSlot<F> {
    /// Runs `f` on the fast path, starting it with `config` first if needed.
    pub(super) fn with<T>(
        &mut self,
        config: &FastPathConfig,
        f: impl FnOnce(&mut F) -> Result<T, FastPathError>,
    ) -> Result<T, FastPathError> {
        tokio::task::block_in_place(|| {
            let fp = match &mut self.0 {
                Some(fp) => fp,
                empty => empty.insert(F::start(config.clone())?),
            };
            f(fp)
        })
    }

    /// Runs `f` on the fast path if it is running.
    pub(super) fn if_running(&mut self, f: impl FnOnce(&mut F)) {
        if let Some(fp) = &mut self.0 {
            tokio::task::block_in_place(|| f(fp));
        }
    }

    pub(super) fn get(&self) -> Option<&F> {
        self.0.as_ref()
    }

    pub(super) fn take(&mut self) -> Option<F> {
        self.0.take()
    }
}

/// Takes an endpoint and its published ports off the fast path (idempotent).
pub(super) fn fast_leave<F: NatFastPath>(fastpath: &mut FastSlot<F>, net: &Network, ep: &Endpoint) {
    if net.options.mode != Mode::NatFast {
        return;
    }
    fast_unpublish(fastpath, &net.options, &ep.published);
    if is_split(net) {
        let (tc_end, _) = split_names(ep);
        fastpath.if_running(|fp| fp.remove_tc_endpoint(&tc_end));
    } else {
        fastpath.if_running(|fp| fp.remove_endpoint(&ep.host_ifname));
    }
}

/// Withdraws `published` from a nat-fast network's uplink on the fast path.
pub(super) fn fast_unpublish<F: NatFastPath>(
    fastpath: &mut FastSlot<F>,
    options: &NetworkOptions,
    published: &[PublishedPort],
) {
    if options.mode != Mode::NatFast {
        return;
    }
    let uplink = options.nat_uplink.clone().unwrap_or_default();
    fastpath.if_running(|fp| {
        for p in published {
            fp.unpublish(&uplink, fast_proto(p.proto), p.host_port);
        }
    });
}

impl<S: Switch, L: Links, F: NatFastPath> Driver<S, L, F> {
    /// The uplink of a nat-fast network as it is now (address, MAC, queues).
    pub(super) async fn uplink_spec(&self, net: &Network) -> DriverResult<fastpath::UplinkSpec> {
        let name = (net.options.nat_uplink.clone())
            .ok_or_else(|| DriverError::NoUplink(net.id.clone()))?;
        let Some(link) = self.netlink.link(&name).await? else {
            return Err(DriverError::UplinkGone {
                uplink: name,
                network: net.id.clone(),
            });
        };
        let ifindex = link.index;
        let addresses = self.netlink.ipv4_addresses(ifindex).await?;
        let Some(&addr) = addresses.first() else {
            return Err(DriverError::UplinkWithoutAddress(name));
        };
        let Some(mac) = link.mac else {
            return Err(DriverError::UplinkWithoutMac(name));
        };
        Ok(fastpath::UplinkSpec {
            rx_queues: fastpath::rx_queues(&name),
            name,
            ifindex,
            addr,
            mac,
        })
    }

    /// What the fast path needs of an endpoint; `None` when it has no address.
    pub(super) async fn endpoint_spec(
        &self,
        net: &Network,
        ep: &Endpoint,
    ) -> DriverResult<Option<EndpointSpec>> {
        let Some(Ipv4Cidr { addr: ip, .. }) = ep.address else {
            return Ok(None);
        };
        let nat = (net.nat(&self.fastpath_config))
            .ok_or_else(|| DriverError::NoSubnet(net.id.clone()))?;
        let gone = |what| DriverError::EndpointPartGone {
            what,
            endpoint: ep.id.clone(),
        };
        let host_ifindex =
            (self.netlink.index(&ep.host_ifname).await?).ok_or_else(|| gone("the host end"))?;
        let bridge = (self.netlink.link(&net.bridge).await?).ok_or_else(|| gone("the bridge"))?;
        let bridge_ifindex = bridge.index;
        let gateway_mac = bridge.mac.ok_or_else(|| gone("the bridge MAC"))?;
        Ok(Some(EndpointSpec {
            host_ifname: ep.host_ifname.clone(),
            host_ifindex,
            ip,
            mac: ep.mac.0,
            gateway_mac,
            bridge_ifindex,
            subnet: nat.subnet,
            offload: net.options.offload(),
            adopt: false,
        }))
    }

    /// Puts a joined nat-fast endpoint (and its published ports) on the fast path;
    /// `adopt` takes over the flows the kernel's conntrack carries for it (recovery: the
    /// container lived on while the daemon was away). Fail-open: on error the endpoint
    /// stays on the kernel nat path, which is logged and visible in `dovesnap status`.
    pub(super) async fn fast_join(
        &self,
        fastpath: &mut FastSlot<F>,
        net: &Network,
        ep: &Endpoint,
        adopt: bool,
    ) {
        if net.options.mode != Mode::NatFast || net.internal {
            return;
        }
        if is_split(net) {
            return self.tc_join(fastpath, net, ep).await;
        }
        let specs = async {
            let Some(spec) = self.endpoint_spec(net, ep).await? else {
                return Ok(None);
            };
            Ok::<_, DriverError>(Some((spec, self.uplink_spec(net).await?)))
        };
        let (spec, uplink) = match specs.await {
            Ok(Some((spec, uplink))) => (EndpointSpec { adopt, ..spec }, uplink),
            Ok(None) => return,
            Err(e) => {
                warn!(endpoint = %ep.id, "staying on the kernel nat path: {e}");
                return;
            }
        };
        let subnet = net.nat(&self.fastpath_config).map(|n| n.subnet);
        let r = fastpath.with(&self.fastpath_config, |fp| {
            // The host's forward rules first: the container's first frame must not
            // pass them by.
            let mut subnets = fp.host_subnets();
            subnets.extend(subnet.filter(|s| !subnets.contains(s)));
            fp.follow_host_rules(subnets)?;
            fp.add_endpoint(&spec, &uplink)?;
            for p in fast_ports(&ep.published, uplink.addr) {
                fp.publish(&uplink.name, p, spec.ip)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            warn!(endpoint = %ep.id, "staying on the kernel nat path: {e}");
            fastpath.if_running(|fp| {
                fp.remove_endpoint(&ep.host_ifname);
                fp.set_kernel_path(&ep.host_ifname, e.to_string());
            });
        }
    }

    /// Puts the tc engine's programs on a joined split endpoint's container-side host
    /// end and on the uplink. Fail-open: on error the endpoint's traffic takes the
    /// patch and the kernel's nat path, which is logged and shown by `dovesnap status`.
    async fn tc_join(&self, fastpath: &mut FastSlot<F>, net: &Network, ep: &Endpoint) {
        let (tc_end, _) = split_names(ep);
        let specs = async {
            let Some(spec) = self.endpoint_spec(net, ep).await? else {
                return Ok(None);
            };
            let host_ifindex = (self.netlink.index(&tc_end).await?).ok_or_else(|| {
                DriverError::EndpointPartGone {
                    what: "the container's host end",
                    endpoint: ep.id.clone(),
                }
            })?;
            let spec = EndpointSpec {
                host_ifname: tc_end.clone(),
                host_ifindex,
                ..spec
            };
            Ok::<_, DriverError>(Some((spec, self.uplink_spec(net).await?)))
        };
        let r = match specs.await {
            Ok(Some((spec, uplink))) => fastpath
                .with(&self.fastpath_config, |fp| {
                    fp.add_tc_endpoint(&spec, &uplink)?;
                    fp.set_tc_published(&spec.host_ifname, &every_port(&ep.published))
                })
                .map_err(|e| e.to_string()),
            Ok(None) => return,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = r {
            warn!(endpoint = %ep.id, "tc programs not attached, the kernel nat path carries it: {e}");
            fastpath.if_running(|fp| {
                fp.remove_tc_endpoint(&tc_end);
                fp.set_kernel_path(&tc_end, e);
            });
        }
    }

    /// A split endpoint's links (see [`is_split`]): the container's pair, the OVS port's
    /// pair and the patch between them, then the OVS port. On failure nothing is left
    /// behind.
    pub(super) async fn plumb_split(
        &self,
        net: &Network,
        ep: &Endpoint,
        mac: Mac,
    ) -> DriverResult<()> {
        let (tc_end, _) = split_names(ep);
        // Leftovers from a crash half way are ours to replace.
        self.delete_endpoint_links(net, ep).await?;
        let made = async {
            (self.netlink)
                .create_veth(&tc_end, &ep.container_ifname, Some(mac.0), net.options.mtu)
                .await?;
            self.make_ovs_pair(net, ep).await
        };
        if let Err(e) = made.await {
            let _ = self.delete_endpoint_links(net, ep).await;
            return Err(e.into());
        }
        if let Err(e) = self.ovs.add_port(&net.bridge, &port_spec(net, ep)).await {
            let _ = self.delete_endpoint_links(net, ep).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// The OVS port's veth pair of a split endpoint whose container pair exists, and
    /// the patch both ways. The OVS port's peer gets TX checksum offload off, so the
    /// kernel segments and checksums what the container sent before OVS reads it.
    pub(super) async fn make_ovs_pair(
        &self,
        net: &Network,
        ep: &Endpoint,
    ) -> Result<(), NetlinkError> {
        let (tc_end, patch_end) = split_names(ep);
        self.netlink.delete(&ep.host_ifname).await?;
        (self.netlink)
            .create_veth(&ep.host_ifname, &patch_end, None, net.options.mtu)
            .await?;
        self.netlink.disable_tx_checksum(&patch_end)?;
        self.netlink.set_up(&patch_end).await?;
        // A filter left on the container's end would redirect to the old pair too.
        self.netlink.delete_patch(&tc_end).await?;
        self.netlink.patch(&tc_end, &patch_end).await?;
        self.netlink.patch(&patch_end, &tc_end).await
    }

    /// Whether the patch of a split endpoint is whole: each end redirects to the other
    /// and nowhere else. `None` when a link is missing.
    pub(super) async fn patch_is_whole(&self, ep: &Endpoint) -> Result<Option<bool>, NetlinkError> {
        let (tc_end, patch_end) = split_names(ep);
        let (Some(tc_index), Some(patch_index)) = (
            self.netlink.index(&tc_end).await?,
            self.netlink.index(&patch_end).await?,
        ) else {
            return Ok(None);
        };
        let out = self.netlink.patch_targets(&tc_end).await?;
        let back = self.netlink.patch_targets(&patch_end).await?;
        Ok(Some(
            out == Some(vec![patch_index]) && back == Some(vec![tc_index]),
        ))
    }

    /// nat-fast: the uplink named by `ovs.nat.uplink`, or the interface of the default
    /// route; it must exist, have an IPv4 address and not be one of the bridge's ports.
    pub(super) async fn check_uplink(&self, options: &NetworkOptions) -> DriverResult<String> {
        let name = match &options.nat_uplink {
            Some(n) => n.clone(),
            None => {
                let ifindex = (self.netlink.default_route_interface().await?)
                    .ok_or(DriverError::NoDefaultRoute)?;
                (self.netlink.name_of(ifindex).await?).ok_or(DriverError::DefaultRouteVanished)?
            }
        };
        if options.add_ports.iter().any(|u| u.name == name) {
            return Err(DriverError::UplinkIsBridgePort(name));
        }
        let Some(ifindex) = self.netlink.index(&name).await? else {
            return Err(DriverError::NoSuchUplink(name));
        };
        if self.netlink.ipv4_addresses(ifindex).await?.is_empty() {
            return Err(DriverError::UplinkWithoutAddress(name));
        }
        Ok(name)
    }

    /// Test hook (`dovesnap daemon --test-hooks`): makes the nat-fast data plane fail
    /// (once the Docker call or reconciler pass under way is done). False when no
    /// nat-fast data plane runs.
    pub fn inject_fault(&self, fault: crate::fastpath::Fault) -> bool {
        tokio::task::block_in_place(|| {
            let state = self.state.blocking_lock();
            state.fastpath.get().map(|fp| fp.inject(fault)).is_some()
        })
    }
}
