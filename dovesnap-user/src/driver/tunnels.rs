//! Tunnel ports of flat networks (`ovs.bridge.tunnels`): their OVSDB specs, with
//! names derived from the network, and their repair by the reconciler.
//!
//! A tunnel port is made in the bridge's own transaction and goes with the bridge
//! (OVSDB garbage-collects its port and interface). Its name is a pure function of
//! the network id, the tunnel's kind and its place in the option, so the reconciler
//! (and a restarted daemon, which reads the options back from the bridge's record)
//! finds a deleted one by name and makes it again.

use std::collections::HashSet;

use tracing::{info, warn};

use super::{Driver, Links, NatFastPath, Network, Switch};
use crate::ovsdb::TunnelSpec;
use crate::plugin::options::TunnelKind;

/// The port name of tunnel `index` of network `network_id`: a kind prefix, the
/// network id's first 8 digits (as the default bridge name has them) and the index,
/// e.g. `vxl3f2a9c1d0`; at most 3 + 8 + 2 = 13 characters (`MAX_TUNNELS` is 64).
pub(super) fn port_name(network_id: &str, index: usize, kind: TunnelKind) -> String {
    let prefix = match kind {
        TunnelKind::Vxlan => "vxl",
        TunnelKind::Gre => "gre",
        TunnelKind::Geneve => "gnv",
    };
    format!("{prefix}{}{index}", &network_id[..8])
}

/// The tunnel ports of `net`'s bridge.
pub(super) fn tunnel_specs(net: &Network) -> Vec<TunnelSpec> {
    net.options
        .tunnels
        .iter()
        .enumerate()
        .map(|(i, t)| TunnelSpec {
            name: port_name(&net.id, i, t.kind),
            kind: t.kind.as_str().to_string(),
            remote_ip: t.remote,
            key: t.key,
        })
        .collect()
}

/// `dovesnap status`'s line for each tunnel: `NAME: KIND:REMOTE[:KEY]`.
pub(super) fn tunnel_status(net: &Network) -> Vec<String> {
    tunnel_specs(net)
        .iter()
        .zip(&net.options.tunnels)
        .map(|(spec, t)| format!("{}: {t}", spec.name))
        .collect()
}

impl<S: Switch, L: Links, F: NatFastPath> Driver<S, L, F> {
    /// Makes again each of `net`'s tunnel ports missing from `ports` (its bridge's).
    pub(super) async fn reconcile_tunnels(&self, net: &Network, ports: &HashSet<String>) {
        for spec in tunnel_specs(net) {
            if ports.contains(&spec.name) {
                continue;
            }
            if let Err(e) = self.ovs.add_tunnel(&net.bridge, &spec).await {
                warn!(network = %net.id, port = %spec.name,
                      "reconcile: cannot make the tunnel port again: {e}");
                continue;
            }
            self.reconciler.count("tunnel");
            info!(network = %net.id, bridge = %net.bridge, port = %spec.name,
                  remote = %spec.remote_ip,
                  "repaired: the tunnel port was missing from the bridge; made it again");
        }
    }
}
