//! Docker's IPAM calls (`--ipam-driver ovs`): the pool and its claims live in the OVN
//! northbound database ([`crate::ovn::ipam`]); this host only supplies its chassis
//! name and where the database is. No lock is taken: the database is the state, and
//! its transactions settle the races between hosts and between calls.

use super::*;
use crate::ovn::ipam::Want;
use crate::plugin::ipam::{self as wire, IpamDriver, PoolId};

impl<S: Switch, L: Links, F: NatFastPath> Driver<S, L, F> {
    /// This host's chassis name and the northbound database: `explicit`
    /// (`--ipam-opt ovs.ovn.nb`), else the daemon's `--ovn-nb`, else the chassis
    /// settings (as overlay networks find it).
    async fn ipam_chassis(&self, explicit: Option<Remote>) -> DriverResult<(String, Remote)> {
        let chassis = Chassis::from_external_ids(&self.ovs.switch_external_ids().await?);
        let name = chassis.name()?.to_string();
        let nb = explicit
            .or_else(|| self.ovn_nb.clone())
            .or_else(|| chassis.northbound())
            .ok_or(DriverError::NoNorthbound)?;
        Ok((name, nb))
    }

    async fn request_pool_inner(
        &self,
        req: wire::RequestPoolRequest,
    ) -> DriverResult<wire::RequestPoolResponse> {
        let (subnet, range, nb) = wire::check_pool_request(&req).map_err(DriverError::Ipam)?;
        let (chassis, northbound) = self.ipam_chassis(nb).await?;
        let id = PoolId {
            subnet,
            range,
            northbound,
            token: ovn::ipam::token(),
        };
        self.northbound(&id.northbound)
            .request_pool(subnet, &chassis, &id.token)
            .await?;
        info!(pool = %id, "address pool taken");
        Ok(wire::RequestPoolResponse {
            pool_id: id.to_string(),
            pool: subnet.to_string(),
            data: HashMap::new(),
        })
    }

    async fn request_address_inner(
        &self,
        req: wire::RequestAddressRequest,
    ) -> DriverResult<wire::RequestAddressResponse> {
        let pool: PoolId = req.pool_id.parse().map_err(DriverError::Ipam)?;
        let (gateway, preferred) =
            wire::check_address_request(&pool, &req).map_err(DriverError::Ipam)?;
        let want = match (gateway, preferred) {
            (true, p) => Want::Gateway(p),
            (false, Some(ip)) => Want::Exactly(ip),
            (false, None) => Want::Any,
        };
        let (chassis, _) = self.ipam_chassis(Some(pool.northbound.clone())).await?;
        let ip = self
            .northbound(&pool.northbound)
            .claim_address(
                pool.subnet,
                wire::hosts(pool.subnet, pool.range),
                want,
                &chassis,
            )
            .await?;
        debug!(%ip, pool = %pool, gateway, "address claimed");
        Ok(wire::RequestAddressResponse {
            address: wire::with_prefix(ip, pool.subnet),
            data: HashMap::new(),
        })
    }
}

impl<S: Switch, L: Links, F: NatFastPath> IpamDriver for Driver<S, L, F> {
    async fn request_pool(
        &self,
        req: wire::RequestPoolRequest,
    ) -> ApiResult<wire::RequestPoolResponse> {
        Ok(self.request_pool_inner(req).await?)
    }

    async fn release_pool(&self, req: wire::ReleasePoolRequest) -> ApiResult<()> {
        let pool: PoolId = req.pool_id.parse()?;
        self.northbound(&pool.northbound)
            .release_pool(pool.subnet, &pool.token)
            .await
            .map_err(|e| DriverError::from(e).into())
    }

    async fn request_address(
        &self,
        req: wire::RequestAddressRequest,
    ) -> ApiResult<wire::RequestAddressResponse> {
        Ok(self.request_address_inner(req).await?)
    }

    async fn release_address(&self, req: wire::ReleaseAddressRequest) -> ApiResult<()> {
        let pool: PoolId = req.pool_id.parse()?;
        let ip = wire::released_address(&req.address)?;
        let (chassis, _) = self
            .ipam_chassis(Some(pool.northbound.clone()))
            .await
            .map_err(api::ApiError::from)?;
        self.northbound(&pool.northbound)
            .release_address(pool.subnet, ip, &chassis)
            .await
            .map_err(|e| DriverError::from(e).into())
    }
}

/// Refuses a network that is not overlay but whose addresses came from dovesnap's IPAM
/// (`--ipam-driver ovs`): its pool is shared through OVN, which only overlay networks
/// use.
/// An overlay network on Docker's own IPAM is allowed (each host its own `--ip-range`),
/// with a warning: without the ranges two hosts hand out the same address.
pub(super) fn check_ipam_mode(mode: Mode, pools: &[api::IpamData]) -> DriverResult<()> {
    let ours = pools.iter().any(|p| p.address_space == wire::ADDRESS_SPACE);
    if mode != Mode::Overlay && ours {
        return Err(DriverError::IpamNotOverlay(mode));
    }
    if mode == Mode::Overlay && !ours && !pools.is_empty() {
        warn!(
            "overlay network on Docker's own IPAM: each host allocates alone, so give each \
             host its own --ip-range, or create the network with --ipam-driver ovs"
        );
    }
    Ok(())
}
