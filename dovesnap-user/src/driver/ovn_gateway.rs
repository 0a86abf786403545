//! overlay mode with an OVN gateway (`ovs.ovn.gateway`): what the driver asks of
//! `ovn::gateway` at CreateNetwork (check the chassis, make the router),
//! ProgramExternalConnectivity / RevokeExternalConnectivity / DeleteEndpoint (the
//! endpoint's load balancers) and DeleteNetwork (the last host removes the router).

use super::*;
use ovn::gateway::{self, GatewaySpec};

/// The gateway of an overlay network with `ovs.ovn.gateway` on switch `switch`; `None`
/// without the option.
pub(super) fn gateway_spec(
    options: &NetworkOptions,
    ipam: &Ipam,
    switch: &str,
) -> Result<Option<GatewaySpec>, OvnError> {
    let (Some(chassis), Some(external)) = (&options.ovn_gateway, options.ovn_gateway_address)
    else {
        return Ok(None);
    };
    let (Some(subnet), Some(gw)) = (ipam.subnet, ipam.gateway) else {
        return Err(OvnError::Gateway(
            "ovs.ovn.gateway needs the network's IPv4 subnet and gateway address (Docker's \
             IPAM gives them; give the same --gateway on every host)"
                .into(),
        ));
    };
    Ok(Some(GatewaySpec {
        switch: switch.to_string(),
        subnet: subnet.to_string(),
        gateway: gw,
        prefix: subnet.prefix(),
        chassis: chassis.clone(),
        external,
        network: (options.ovn_gateway_network.clone())
            .unwrap_or_else(|| gateway::DEFAULT_NETWORK.to_string()),
    }))
}

impl<S: Switch, L: Links, F: NatFastPath> Driver<S, L, F> {
    /// CreateNetwork, before anything is made: the gateway chassis is registered in the
    /// southbound database and maps the external network. Skipped (with a warning)
    /// when this host's southbound database is not a remote dovesnap can read.
    pub(super) async fn check_gateway_chassis(
        &self,
        this_host: &Chassis,
        spec: &GatewaySpec,
    ) -> Result<(), OvnError> {
        let Some(sb) = this_host.southbound() else {
            warn!(chassis = %spec.chassis,
                  "cannot read the southbound database: not checking the gateway chassis");
            return Ok(());
        };
        self.northbound(&sb)
            .check_gateway_chassis(&spec.chassis, &spec.network)
            .await
    }

    /// Publishes Docker's port map for endpoint `eid` as load balancers on the gateway
    /// (ProgramExternalConnectivity on an overlay network with `ovs.ovn.gateway`).
    pub(super) async fn publish_on_gateway(
        &self,
        net: &Network,
        ov: &Overlay,
        eid: &str,
        map: &serde_json::Value,
    ) -> DriverResult<()> {
        let Some(external) = net.options.ovn_gateway_address else {
            return Ok(());
        };
        let mappings = parse_port_map(map)?;
        if mappings.is_empty() {
            return Ok(());
        }
        let ep = net
            .endpoints
            .get(eid)
            .ok_or_else(|| unknown_endpoint(&net.id, eid))?;
        let ip = (ep.address)
            .ok_or_else(|| DriverError::NoAddressToPublish(eid.to_string()))?
            .addr;
        let vips = gateway::vips(&mappings, ip, external.addr)?;
        self.northbound(&ov.northbound)
            .publish(&ov.switch, eid, external.addr, &vips)
            .await?;
        info!(network = %net.id, endpoint = %eid, ports = ?vips, "published ports on the OVN gateway");
        Ok(())
    }

    /// Withdraws endpoint `eid`'s load balancers (Revoke, DeleteEndpoint); nothing
    /// without `ovs.ovn.gateway`.
    pub(super) async fn unpublish_on_gateway(
        &self,
        net: &Network,
        ov: &Overlay,
        eid: &str,
    ) -> Result<(), OvnError> {
        if net.options.ovn_gateway.is_none() {
            return Ok(());
        }
        self.northbound(&ov.northbound)
            .unpublish(&ov.switch, eid)
            .await
    }

    /// Reconciler: makes the network's OVN gateway again when it went (an operator's
    /// `ovn-nbctl lr-del`), with the network's load balancers; counted as an
    /// `ovn-gateway` repair.
    pub(super) async fn repair_gateway(&self, net: &Network, ov: &Overlay, nb: &Northbound) {
        let spec = match gateway_spec(&net.options, &net.ipam, &ov.switch) {
            Ok(Some(spec)) => spec,
            Ok(None) => return,
            Err(e) => {
                warn!(network = %net.id, "reconcile: {e}");
                return;
            }
        };
        match nb.ensure_gateway(&spec).await {
            Ok(false) => {}
            Ok(true) => {
                self.reconciler.count("ovn-gateway");
                info!(network = %net.id, switch = %ov.switch,
                      "repaired: the network's OVN gateway was gone; made it again");
            }
            Err(e) => warn!(network = %net.id, switch = %ov.switch,
                            "reconcile: cannot make the OVN gateway again: {e}"),
        }
    }

    /// Leaves switch `switch`; the last host also removes the gateway (router,
    /// external switch, load balancers; nothing when the network had none). Returns
    /// whether the switch was deleted.
    pub(super) async fn leave_switch_and_gateway(
        &self,
        nb: &Northbound,
        switch: &str,
        chassis: &str,
    ) -> Result<bool, OvnError> {
        let deleted = nb.leave_switch(switch, chassis).await?;
        if deleted {
            nb.remove_gateway(switch).await?;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(pairs: &[(&str, &str)]) -> NetworkOptions {
        let map: BTreeMap<String, String> = [("mode", "overlay")]
            .iter()
            .chain(pairs)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        NetworkOptions::from_string_map(&map).unwrap()
    }

    fn ipam(gateway: Option<Ipv4Addr>) -> Ipam {
        Ipam {
            subnet: Some("10.31.0.0/24".parse().unwrap()),
            gateway,
            ..Default::default()
        }
    }

    #[test]
    fn the_gateway_spec_comes_from_the_options_and_docker_s_ipam() {
        let addr = Ipv4Addr::new(10, 31, 0, 1);
        let gw = Some(addr);
        assert_eq!(gateway_spec(&overlay(&[]), &ipam(gw), "sw").unwrap(), None);
        let options = overlay(&[
            ("ovs.ovn.gateway", "host1"),
            ("ovs.ovn.gateway_address", "198.51.100.10/24@198.51.100.1"),
        ]);
        let spec = gateway_spec(&options, &ipam(gw), "sw").unwrap().unwrap();
        assert_eq!(spec.subnet, "10.31.0.0/24");
        assert_eq!((spec.gateway, spec.prefix), (addr, 24));
        assert_eq!(spec.network, gateway::DEFAULT_NETWORK);
        assert_eq!(spec.chassis, "host1");
        let e = gateway_spec(&options, &ipam(None), "sw").unwrap_err();
        assert!(e.to_string().contains("subnet and gateway address"), "{e}");
    }

    #[test]
    fn join_gives_an_overlay_network_s_gateway_only_with_an_ovn_gateway() {
        let gw = Some(Ipv4Addr::new(10, 31, 0, 1));
        let mut net = Network {
            id: "n".into(),
            bridge: "br-int".into(),
            datapath: Datapath::Netdev,
            options: overlay(&[]),
            ipam: ipam(gw),
            internal: false,
            endpoints: HashMap::new(),
            chassis: "host1".into(),
        };
        assert_eq!(net.container_gateway(), None);
        net.options = overlay(&[
            ("ovs.ovn.gateway", "host1"),
            ("ovs.ovn.gateway_address", "198.51.100.10/24@198.51.100.1"),
            ("ovs.ovn.gateway_network", "physnet"),
        ]);
        assert_eq!(net.container_gateway(), gw);
        let spec = gateway_spec(&net.options, &net.ipam, "sw")
            .unwrap()
            .unwrap();
        assert_eq!(spec.network, "physnet");
    }
}
