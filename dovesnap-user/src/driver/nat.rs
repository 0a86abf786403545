//! nat mode (and nat-fast's kernel path) and routed mode: the nftables rules of a
//! network and of its endpoints' published ports.

use super::nat_fast::{every_port, is_split, split_names};
use super::*;

impl<S: Switch, L: Links, F: NatFastPath> Driver<S, L, F> {
    /// nat and routed modes: the gateway on the bridge's internal port (IPv6's too on
    /// `--ipv6` networks), IPv4 forwarding, and the network's netfilter rules (which
    /// also turn on IPv6 forwarding for `--ipv6` networks).
    pub(super) async fn program_nat(&self, net: &Network) -> DriverResult<()> {
        let Some(nat) = net.nat(&self.fastpath_config) else {
            return Ok(());
        };
        self.netlink
            .set_address_up(&net.bridge, nat.gateway, nat.subnet.prefix())
            .await?;
        if let Some(v6) = nat.ipv6 {
            self.netlink
                .set_address6_up(&net.bridge, v6.gateway, v6.subnet.prefix)
                .await?;
        }
        fw(|| self.netlink.enable_ip_forward())?;
        fw(|| self.firewall.add_network(&nat))
    }

    /// nat and routed modes: publishes the container's `-p` ports (Docker sends the port map here
    /// and with CreateEndpoint; only this call is made once per container and network).
    pub(super) async fn program_external_inner(
        &self,
        req: api::ProgramExternalConnectivityRequest,
    ) -> DriverResult<()> {
        let (nid, eid) = endpoint_ids(&req.network_id, &req.endpoint_id)?;
        let mut state = self.state.lock().await;
        let DriverState { networks, fastpath } = &mut *state;
        let net = networks.get_mut(nid).ok_or_else(|| unknown_network(nid))?;
        let map = req
            .options
            .as_ref()
            .and_then(|o| o.get(PORT_MAP_OPTION))
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        if let Some(ov) = net.overlay() {
            return self.publish_on_gateway(net, &ov, eid, &map).await;
        }
        if !net.options.mode.has_gateway() {
            return Ok(());
        }
        let split = is_split(net);
        let ep = net
            .endpoints
            .get_mut(eid)
            .ok_or_else(|| unknown_endpoint(nid, eid))?;
        let mappings = parse_port_map(&map)?;
        if mappings.is_empty() || net.internal {
            return Ok(());
        }
        let ip = (ep.address)
            .ok_or_else(|| DriverError::NoAddressToPublish(eid.to_string()))?
            .addr;
        let ip6 = ep.address6.map(|a| a.addr);
        let published = fw(|| self.firewall.add_ports(nid, eid, ip, ip6, &mappings))?;
        let mut stored = ep.clone();
        stored.published = published.clone();
        let json = serde_json::to_string(&stored).expect("Endpoint serializes");
        if let Err(e) = self
            .ovs
            .set_port_external_id(&ep.host_ifname, EXT_ENDPOINT, &json)
            .await
        {
            if fw(|| self.firewall.remove_ports(nid, eid)).is_err() {
                // Still there: remembered, so that RevokeExternalConnectivity or
                // DeleteEndpoint withdraws them.
                ep.published = published;
            }
            return Err(e.into());
        }
        info!(network = %nid, endpoint = %eid, ports = ?published, "published ports");
        ep.published = published;
        if split {
            let (tc_end, _) = split_names(ep);
            let ports = every_port(&ep.published);
            fastpath.if_running(|fp| {
                if let Err(e) = fp.set_tc_published(&tc_end, &ports) {
                    warn!(endpoint = %eid, "the tc program may answer from a published port: {e}");
                }
            });
        } else if net.options.mode == Mode::NatFast {
            let uplink = net.options.nat_uplink.clone().unwrap_or_default();
            let host_ifname = ep.host_ifname.clone();
            let ports = ep.published.clone();
            fastpath.if_running(|fp| {
                if !fp.has_endpoint(&host_ifname) {
                    return;
                }
                let Some(addr) = fp.uplink_addr(&uplink) else {
                    return;
                };
                for p in fast_ports(&ports, addr) {
                    if let Err(e) = fp.publish(&uplink, p, ip) {
                        warn!(endpoint = %eid, "port {} stays on the kernel path: {e}", p.1);
                    }
                }
            });
        }
        Ok(())
    }

    /// RevokeExternalConnectivity: withdraws the endpoint's published ports.
    pub(super) async fn unpublish_ports(&self, req: api::EndpointRequest) -> DriverResult<()> {
        let (nid, eid) = endpoint_ids(&req.network_id, &req.endpoint_id)?;
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        let Some(net) = state.networks.get_mut(nid) else {
            return Ok(());
        };
        if let Some(ov) = net.overlay() {
            return Ok(self.unpublish_on_gateway(net, &ov, eid).await?);
        }
        let split = is_split(net);
        let Some(ep) = net.endpoints.get_mut(eid) else {
            return Ok(());
        };
        if ep.published.is_empty() {
            return Ok(());
        }
        fast_unpublish(&mut state.fastpath, &net.options, &ep.published);
        if split {
            let (tc_end, _) = split_names(ep);
            state.fastpath.if_running(|fp| {
                let _ = fp.set_tc_published(&tc_end, &[]);
            });
        }
        fw(|| self.firewall.remove_ports(nid, eid))?;
        ep.published.clear();
        let json = serde_json::to_string(&*ep).expect("Endpoint serializes");
        match self
            .ovs
            .set_port_external_id(&ep.host_ifname, EXT_ENDPOINT, &json)
            .await
        {
            // A port deleted by hand keeps no record to update.
            Err(e) if !e.is_not_found() => Err(e.into()),
            _ => Ok(()),
        }
    }
}
