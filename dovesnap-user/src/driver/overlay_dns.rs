//! overlay mode, names across hosts (`ovn::dns`): the DNS localport of each switch, the
//! route to it given at Join, each endpoint's names published after Join and removed
//! with the endpoint (and by the reconciler and the reaping of dead hosts), and the
//! localport bound on this host to a forwarder (`ovn::dns_forward`) for the queries
//! OVN leaves unanswered.

use super::*;
use crate::ovn::dns::{self, DnsRow, Names};
use crate::ovn::dns_forward::{Binding, Forwarders};

/// The connected route to the switch's DNS address that Join gives overlay endpoints:
/// Docker's embedded resolver (or the container's own) reaches OVN's DNS responder
/// through the overlay interface.
pub(super) fn dns_route() -> api::StaticRoute {
    api::StaticRoute {
        destination: format!("{}/32", dns::DNS_ADDR),
        route_type: 1,
        next_hop: String::new(),
    }
}

impl<S: Switch, L: Links, F: NatFastPath> Driver<S, L, F> {
    /// Where endpoint names come from (the daemon: Docker's Engine API). Without one,
    /// no names are published.
    pub fn with_names_source(
        mut self,
        source: std::sync::Arc<dyn ovn::docker_names::NamesSource>,
    ) -> Self {
        self.names = Some(source);
        self
    }

    /// After Join: publishes the endpoint's names in the background (Docker lists the
    /// endpoint only once Join returned).
    pub(super) fn publish_names_later(&self, net: &Network, ov: &Overlay, ep: &Endpoint) {
        let (Some(source), Some(ip)) = (self.names.clone(), ep.address) else {
            return;
        };
        let names = Names {
            switch: ov.switch.clone(),
            port: ovn::port_name(&ep.id),
            chassis: ov.chassis.clone(),
            endpoint_id: ep.id.clone(),
            ip: ip.addr,
            names: Vec::new(),
        };
        let in_flight = self.names_in_flight.clone();
        if !in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ep.id.clone())
        {
            return;
        }
        let lookup = ovn::docker_names::publish_when_known(
            source,
            self.northbound(&ov.northbound),
            net.id.clone(),
            names,
        );
        let id = ep.id.clone();
        tokio::spawn(async move {
            lookup.await;
            in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    /// Removes the names of endpoints `endpoint_ids` of this host.
    pub(super) async fn remove_endpoint_names(
        &self,
        ov: &Overlay,
        endpoint_ids: &[&str],
    ) -> Result<usize, OvnError> {
        self.northbound(&ov.northbound)
            .remove_names(&ov.switch, |r: &DnsRow| {
                r.chassis() == Some(ov.chassis.as_str())
                    && r.endpoint_id().is_some_and(|e| endpoint_ids.contains(&e))
            })
            .await
    }

    /// The reconciler's part: the switch's DNS localport, no names of this host's
    /// endpoints that are gone (`live`: the endpoint ids to keep), and the names of
    /// joined endpoints that have none asked for again (a row deleted behind dovesnap's
    /// back, or a lookup that failed). Notes how many names the switch holds, for
    /// `dovesnap status`. Returns how many rows went.
    pub(super) async fn reconcile_names(
        &self,
        net: &Network,
        ov: &Overlay,
        live: &[&str],
    ) -> Result<usize, OvnError> {
        let nb = self.northbound(&ov.northbound);
        nb.ensure_dns_port(&ov.switch).await?;
        let stale = |r: &DnsRow| {
            r.chassis() == Some(ov.chassis.as_str())
                && !r.endpoint_id().is_some_and(|e| live.contains(&e))
        };
        let rows = nb.dns_rows(&ov.switch).await?;
        let (gone, kept): (Vec<DnsRow>, Vec<DnsRow>) = rows.into_iter().partition(stale);
        self.name_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(net.id.clone(), dns::name_count(&kept));
        let uuids: Vec<&str> = gone.iter().map(|r| r.uuid.as_str()).collect();
        nb.delete_names(&ov.switch, &uuids).await?;
        for ep in net.endpoints.values().filter(|e| e.sandbox.is_some()) {
            if !kept.iter().any(|r| r.endpoint_id() == Some(ep.id.as_str())) {
                self.publish_names_later(net, ov, ep);
            }
        }
        Ok(gone.len())
    }

    pub(super) fn forget_name_count(&self, id: &str) {
        let mut counts = self.name_counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.remove(id);
    }

    /// The names count of network `id` (`dovesnap status`), if an overlay network's was
    /// read.
    pub(super) fn name_count(&self, id: &str) -> Option<usize> {
        let counts = self.name_counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(id).copied()
    }

    /// Removes the names of dead chassis (with their ports, `reap_dead_chassis`).
    pub(super) async fn reap_names(
        &self,
        ov: &Overlay,
        dead: &[String],
    ) -> Result<usize, OvnError> {
        self.northbound(&ov.northbound)
            .remove_names(&ov.switch, |r: &DnsRow| {
                r.chassis().is_some_and(|c| dead.iter().any(|d| d == c))
            })
            .await
    }

    /// Binds the switches' DNS localports on this host to forwarders (`ovn::dns_forward`).
    pub fn with_dns_forwarders(mut self, forwarders: std::sync::Arc<Forwarders>) -> Self {
        self.dns_forwarders = Some(forwarders);
        self
    }

    /// Binds the switch's DNS localport on this host: the forwarder's namespace and veth
    /// (`Forwarders::ensure`) and the veth's port on the integration bridge with
    /// `iface-id` the localport. `Ok(true)` when something had to be made (at
    /// CreateNetwork, at start, or a repair).
    pub(super) async fn bind_dns_port(&self, net: &Network, ov: &Overlay) -> Result<bool, String> {
        let Some(fwd) = &self.dns_forwarders else {
            return Ok(false);
        };
        let made = fwd
            .ensure(&ov.chassis, &ov.switch, &net.subnet_text())
            .await
            .map_err(|e| e.to_string())?;
        let b = Binding::of(&ov.chassis, &ov.switch);
        let has_port = (self.ovs.bridge(&net.bridge).await)
            .map_err(|e| e.to_string())?
            .is_some_and(|br| br.ports.iter().any(|p| p.name == b.host_ifname));
        if has_port && !made {
            return Ok(false);
        }
        if has_port {
            // A new veth under an old port's name: the port is made again with it.
            let _ = self.ovs.delete_port(&net.bridge, &b.host_ifname).await;
        }
        let mut spec = ovsdb::PortSpec::new(&b.host_ifname);
        spec.interface_external_ids
            .insert("iface-id".to_string(), dns::dns_port_name(&ov.switch));
        if let Err(e) = self.ovs.add_port(&net.bridge, &spec).await {
            fwd.remove(&ov.chassis, &ov.switch).await;
            return Err(e.to_string());
        }
        Ok(true)
    }

    /// Undoes [`Self::bind_dns_port`] (DeleteNetwork); returns the errors.
    pub(super) async fn unbind_dns_port(&self, net: &Network, ov: &Overlay) -> Vec<String> {
        let Some(fwd) = &self.dns_forwarders else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        let b = Binding::of(&ov.chassis, &ov.switch);
        if let Ok(Some(br)) = self.ovs.bridge(&net.bridge).await {
            if br.ports.iter().any(|p| p.name == b.host_ifname) {
                if let Err(e) = self.ovs.delete_port(&net.bridge, &b.host_ifname).await {
                    errors.push(e.to_string());
                }
            }
        }
        fwd.remove(&ov.chassis, &ov.switch).await;
        errors
    }

    /// `dovesnap status`: the switch's forwarder on this host.
    pub(super) fn dns_forwarder_status(&self, ov: &Overlay) -> Option<String> {
        self.dns_forwarders
            .as_ref()?
            .status(&ov.chassis, &ov.switch)
    }
}
