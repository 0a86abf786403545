//! overlay mode: the network is an OVN logical switch shared by hosts, recorded on
//! this host in `Open_vSwitch.external_ids`; endpoints are logical switch ports.

use super::*;

/// The integration bridge of an overlay network.
pub(super) fn integration_bridge(options: &NetworkOptions) -> String {
    options
        .ovn_bridge
        .clone()
        .unwrap_or_else(|| ovn::DEFAULT_BRIDGE.to_string())
}

/// The logical switch port of an endpoint of this host.
pub(super) fn logical_port(ov: &Overlay, ep: &Endpoint) -> ovn::northbound::PortSpec {
    ovn::northbound::PortSpec {
        name: ovn::port_name(&ep.id),
        mac: ep.mac.to_string(),
        ip: ep.address.map(|c| c.addr),
        chassis: ov.chassis.clone(),
        endpoint_id: ep.id.clone(),
    }
}

impl<S: Switch, L: Links, F: NatFastPath> Driver<S, L, F> {
    /// How long a chassis must have been missing from the southbound database before
    /// its logical ports and references are reaped (the daemon's `--ovn-reap-after`).
    pub fn with_ovn_reap_after(self, grace: std::time::Duration) -> Self {
        *self
            .missing_chassis
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = ovn::reap::MissingChassis::new(grace);
        self
    }

    pub(super) fn northbound(&self, remote: &Remote) -> std::sync::Arc<Northbound> {
        let mut all = self.northbound.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(remote.clone())
            .or_insert_with(|| std::sync::Arc::new(Northbound::new(remote.clone())))
            .clone()
    }

    /// Overlay networks recorded in `Open_vSwitch.external_ids`, with their endpoints
    /// from the integration bridge's ports. Each is then reconciled with OVN (a failure
    /// there is logged: the northbound database may be down for now).
    pub(super) async fn recover_overlays(
        &self,
        bridges: &[ovsdb::BridgeInfo],
        bad: &mut Vec<crate::daemon::status::BadRecord>,
    ) -> Result<Vec<Network>, ovsdb::OvsdbError> {
        let ids = self.ovs.switch_external_ids().await?;
        let mut found = Vec::new();
        for (key, json) in &ids {
            let records::OverlayRead {
                id,
                record,
                options,
                switch,
                northbound,
            } = match records::overlay_of(key, json) {
                None => continue,
                Some(Ok(read)) => read,
                Some(Err(b)) => {
                    bad.push(b);
                    continue;
                }
            };
            let id = id.as_str();
            let bridge = integration_bridge(&options);
            let br = bridges.iter().find(|b| b.name == bridge);
            let mut untrusted_ids = Vec::new();
            let net = Network {
                id: id.to_string(),
                datapath: Datapath::of(br.map_or("", |b| &b.datapath_type)),
                endpoints: match br {
                    Some(b) => {
                        let (good, untrusted) =
                            records::endpoints_of(b, records::PortsOf::Network(id));
                        untrusted_ids.extend(untrusted.iter().map(|b| b.id.clone()));
                        bad.extend(untrusted);
                        good
                    }
                    None => HashMap::new(),
                },
                bridge,
                options,
                ipam: record.ipam,
                internal: false,
                chassis: record.chassis,
            };
            if br.is_none() {
                // Without the bridge this host's endpoints are unknown: reconciling
                // would take every port of this chassis for stale.
                warn!(network = %id, bridge = %net.bridge,
                      "integration bridge missing: not reconciling with OVN");
                found.push(net);
                continue;
            }
            match self.reconcile_overlay(&net, &untrusted_ids).await {
                Ok(removed) => {
                    info!(network = %id, switch = %switch, northbound = %northbound,
                          endpoints = net.endpoints.len(), stale_ports_removed = removed,
                          "recovered overlay network")
                }
                Err(e) => warn!(network = %id, "could not reconcile with OVN: {e}"),
            }
            found.push(net);
        }
        Ok(found)
    }

    /// Makes OVN match this host's view of an overlay network: the host's reference on
    /// the switch (re-creating the switch if it went), no logical port of this chassis
    /// without a local endpoint (a container that went while the plugin was down), and
    /// a logical port for each local endpoint. The ports of `untrusted` endpoints (whose
    /// records cannot be trusted) are left as they are. Returns how many stale ports it
    /// removed.
    pub(super) async fn reconcile_overlay(
        &self,
        net: &Network,
        untrusted: &[String],
    ) -> Result<usize, OvnError> {
        let Some(ov) = net.overlay() else {
            return Ok(0);
        };
        let nb = self.northbound(&ov.northbound);
        let subnet = net.subnet_text();
        nb.join_switch(&ov.switch, &subnet, &ov.chassis, &net.id)
            .await?;
        if let Some(gw) = ovn_gateway::gateway_spec(&net.options, &net.ipam, &ov.switch)? {
            nb.ensure_gateway(&gw).await?;
        }
        self.reap_dead_chassis(&ov).await?;
        let state = nb
            .switch(&ov.switch)
            .await?
            .ok_or_else(|| OvnError::NoSwitch(ov.switch.clone()))?;
        let live: Vec<String> = net
            .endpoints
            .keys()
            .chain(untrusted)
            .map(|e| ovn::port_name(e))
            .collect();
        let stale: Vec<&str> = state
            .ports
            .iter()
            .filter(|p| {
                p.external_ids.get(ovn::northbound::EXT_CHASSIS) == Some(&ov.chassis)
                    && !live.contains(&p.name)
            })
            .map(|p| p.name.as_str())
            .collect();
        nb.remove_ports(&ov.switch, &stale).await?;
        let live_ids: Vec<&str> = net
            .endpoints
            .keys()
            .chain(untrusted)
            .map(String::as_str)
            .collect();
        self.reconcile_names(net, &ov, &live_ids).await?;
        if let Err(e) = self.bind_dns_port(net, &ov).await {
            warn!(network = %net.id, "cannot bind the DNS localport here: {e}");
        }
        for ep in net.endpoints.values() {
            if !state.ports.iter().any(|p| p.name == ovn::port_name(&ep.id)) {
                nb.add_port(&ov.switch, &logical_port(&ov, ep)).await?;
            }
        }
        Ok(stale.len())
    }

    /// Removes from the overlay's switch the ports and references of hosts that are no
    /// longer OVN chassis (removed from the southbound database after they died), once
    /// they have been missing for the grace period (`ovn::reap`: every look, here at
    /// start, CreateNetwork and each reconciler pass, counts). Skipped while this host
    /// itself is not registered (its view is not to be trusted then) or when the
    /// southbound database is not a TCP/unix remote we can reach.
    pub(super) async fn reap_dead_chassis(&self, ov: &Overlay) -> Result<usize, OvnError> {
        let ids = self.ovs.switch_external_ids().await?;
        let Some(sb) = Chassis::from_external_ids(&ids).southbound() else {
            return Ok(0);
        };
        let live = self.northbound(&sb).chassis_names().await?;
        if !live.contains(&ov.chassis) {
            return Ok(0);
        }
        let nb = self.northbound(&ov.northbound);
        let Some(state) = nb.switch(&ov.switch).await? else {
            return Ok(0);
        };
        let named = state.chassis();
        let (dead, grace) = {
            let mut missing = self
                .missing_chassis
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let dead = missing.expired(std::time::Instant::now(), &live, &named);
            (dead, missing.grace())
        };
        for c in named.iter().filter(|c| !live.contains(c)) {
            if !dead.contains(c) {
                debug!(switch = %ov.switch, chassis = %c, grace_secs = grace.as_secs(),
                       "chassis missing from the southbound database: its ports are reaped \
                        if it stays missing for the grace period");
            }
        }
        if dead.is_empty() {
            return Ok(0);
        }
        self.reap_names(ov, &dead).await?;
        let ports = nb.reap_dead_chassis(&ov.switch, &dead).await?;
        // Their addresses in dovesnap's IPAM pools (`--ipam-driver ovs`) go too.
        let freed = nb.reap_pools(&dead).await?;
        if freed > 0 {
            info!(switch = %ov.switch, ?dead, freed, "freed dead chassis' pool addresses");
        }
        Ok(ports)
    }

    /// Overlay: the network's logical switch, joined (or created) in OVN, and the
    /// network recorded on this host.
    pub(super) async fn create_overlay_network(
        &self,
        id: &str,
        mut options: NetworkOptions,
        ipam: Ipam,
    ) -> DriverResult<Network> {
        let subnet = (ipam.subnet)
            .ok_or(DriverError::OverlayWithoutSubnet)?
            .to_string();
        let chassis = Chassis::from_external_ids(&self.ovs.switch_external_ids().await?);
        let host = chassis.name()?.to_string();
        let bridge = integration_bridge(&options);
        let Some(br) = self.ovs.bridge(&bridge).await? else {
            return Err(DriverError::NoIntegrationBridge(bridge));
        };
        let northbound = (options.ovn_nb.clone())
            .or_else(|| self.ovn_nb.clone())
            .or_else(|| chassis.northbound())
            .ok_or(DriverError::NoNorthbound)?;
        // Tunnelled frames must still fit the hosts' links: geneve adds 58 bytes.
        options.mtu.get_or_insert(ovn::DEFAULT_MTU);
        let switch = ovn::switch_name(options.ovn_switch.as_deref(), &subnet);
        options.ovn_nb = Some(northbound.clone());
        options.ovn_switch = Some(switch.clone());
        let nb = self.northbound(&northbound);
        let gateway = ovn_gateway::gateway_spec(&options, &ipam, &switch)?;
        if let Some(gw) = &gateway {
            self.check_gateway_chassis(&chassis, gw).await?;
        }
        nb.join_switch(&switch, &subnet, &host, id).await?;
        if let Some(gw) = &gateway {
            if let Err(e) = nb.ensure_gateway(gw).await {
                let _ = self.leave_switch_and_gateway(&nb, &switch, &host).await;
                return Err(e.into());
            }
        }
        if let Err(e) = nb.ensure_dns_port(&switch).await {
            let _ = self.leave_switch_and_gateway(&nb, &switch, &host).await;
            return Err(e.into());
        }
        let record = OverlayRecord {
            options: options.to_string_map(),
            ipam: ipam.clone(),
            chassis: host.clone(),
        };
        let json = serde_json::to_string(&record).expect("OverlayRecord serializes");
        let key = format!("{EXT_OVERLAY_PREFIX}{id}");
        if let Err(e) = self.ovs.set_switch_external_id(&key, Some(&json)).await {
            let _ = self.leave_switch_and_gateway(&nb, &switch, &host).await;
            return Err(e.into());
        }
        let overlay = Overlay {
            switch,
            northbound,
            chassis: host,
        };
        if let Err(e) = self.reap_dead_chassis(&overlay).await {
            warn!(network = %id, "could not remove the ports of dead hosts: {e}");
        }
        let net = Network {
            id: id.to_string(),
            bridge,
            datapath: Datapath::of(&br.datapath_type),
            options,
            ipam,
            internal: false,
            endpoints: HashMap::new(),
            chassis: overlay.chassis.clone(),
        };
        // Without it, names OVN does not know cost a client's timeout: worth a warning,
        // not a failed network.
        if let Err(e) = self.bind_dns_port(&net, &overlay).await {
            warn!(network = %id, "cannot bind the DNS localport here: {e}");
        }
        Ok(net)
    }

    /// Overlay: the endpoints' OVS ports and logical ports, this host's reference on
    /// the switch (the last host deletes it) and the host's record. Returns the errors.
    pub(super) async fn delete_overlay_network(&self, net: &Network, ov: &Overlay) -> Vec<String> {
        let mut errors = Vec::new();
        let nb = self.northbound(&ov.northbound);
        let ports: Vec<String> = net.endpoints.keys().map(|e| ovn::port_name(e)).collect();
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        if let Err(e) = nb.remove_ports(&ov.switch, &ports).await {
            errors.push(e.to_string());
        }
        for eid in net.endpoints.keys() {
            if let Err(e) = self.unpublish_on_gateway(net, ov, eid).await {
                errors.push(e.to_string());
            }
        }
        let ids: Vec<&str> = net.endpoints.keys().map(String::as_str).collect();
        if let Err(e) = self.remove_endpoint_names(ov, &ids).await {
            errors.push(e.to_string());
        }
        self.forget_name_count(&net.id);
        errors.extend(self.unbind_dns_port(net, ov).await);
        match self
            .leave_switch_and_gateway(&nb, &ov.switch, &ov.chassis)
            .await
        {
            Ok(deleted) => {
                info!(network = %net.id, switch = %ov.switch, deleted, "left logical switch")
            }
            Err(e) => errors.push(e.to_string()),
        }
        let key = format!("{EXT_OVERLAY_PREFIX}{}", net.id);
        if let Err(e) = self.ovs.set_switch_external_id(&key, None).await {
            errors.push(e.to_string());
        }
        errors
    }
}
