//! Docker's remote IPAM protocol (`IpamDriver.*`, moby `libnetwork/ipams/remote/api`),
//! so that `--ipam-driver ovs` hands out overlay addresses from the OVN northbound
//! database instead of each host's own allocator: the wire types, the [`IpamDriver`]
//! trait the server calls, and the checks of what Docker sends (pure, unit-tested).
//!
//! A pool id carries everything a later call needs (subnet, `--ip-range`, where the
//! northbound database is, and a token naming this `RequestPool`), so the plugin keeps
//! no IPAM state of its own: the claims live in the northbound database
//! ([`crate::ovn::ipam`]) and survive a restart of the plugin.

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::host::addr::{Ipv4Cidr, Ipv4Net};
use crate::ovsdb::Remote;
use crate::plugin::api::{ApiError, ApiResult};

/// The address space dovesnap's IPAM answers for, local and global alike; a network
/// whose IPv4 data names it was allocated by dovesnap (`--ipam-driver ovs`).
pub const ADDRESS_SPACE: &str = "dovesnap-ovn";
/// `RequestAddress` option naming what the address is for.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// ... the network's gateway (Docker asks for one on every host).
pub const GATEWAY_TYPE: &str = "com.docker.network.gateway";
/// `--ipam-opt ovs.ovn.nb=tcp:HOST:6641`: where the northbound database is.
pub const OPT_NB: &str = "ovs.ovn.nb";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    /// The claims are in the northbound database: Docker need not replay its requests
    /// after a restart of the plugin.
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSpacesResponse {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local: String,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    /// `--subnet`.
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// `--ip-range`.
    #[serde(rename = "SubPool", default)]
    pub sub_pool: String,
    /// `--ipam-opt`s.
    #[serde(rename = "Options", default)]
    pub options: Option<HashMap<String, String>>,
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: HashMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The preferred address (`--ip`, `--gateway`), or empty.
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "Options", default)]
    pub options: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RequestAddressResponse {
    /// `a.b.c.d/n`.
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: HashMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
}

/// What dovesnap does as Docker's IPAM driver. The defaults refuse, for a driver
/// without IPAM (the server's test driver).
pub trait IpamDriver: Send + Sync + 'static {
    fn ipam_capabilities(&self) -> IpamCapabilities {
        IpamCapabilities::default()
    }
    fn address_spaces(&self) -> AddressSpacesResponse {
        AddressSpacesResponse {
            local: ADDRESS_SPACE.into(),
            global: ADDRESS_SPACE.into(),
        }
    }
    fn request_pool(
        &self,
        _req: RequestPoolRequest,
    ) -> impl Future<Output = ApiResult<RequestPoolResponse>> + Send {
        async { Err(ApiError::new("this plugin has no IPAM")) }
    }
    fn release_pool(&self, _req: ReleasePoolRequest) -> impl Future<Output = ApiResult<()>> + Send {
        async { Err(ApiError::new("this plugin has no IPAM")) }
    }
    fn request_address(
        &self,
        _req: RequestAddressRequest,
    ) -> impl Future<Output = ApiResult<RequestAddressResponse>> + Send {
        async { Err(ApiError::new("this plugin has no IPAM")) }
    }
    fn release_address(
        &self,
        _req: ReleaseAddressRequest,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        async { Err(ApiError::new("this plugin has no IPAM")) }
    }
}

/// A pool handed to Docker; its text form is the `PoolID`:
/// `SUBNET|RANGE|NORTHBOUND|TOKEN` (RANGE empty without `--ip-range`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolId {
    pub subnet: Ipv4Net,
    /// `--ip-range`: where this host's addresses come from (inside `subnet`).
    pub range: Option<Ipv4Net>,
    pub northbound: Remote,
    /// Names this `RequestPool` among the pool's users (its `ReleasePool`).
    pub token: String,
}

impl std::fmt::Display for PoolId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let range = self.range.map(|r| r.to_string()).unwrap_or_default();
        write!(
            f,
            "{}|{range}|{}|{}",
            self.subnet, self.northbound, self.token
        )
    }
}

impl std::str::FromStr for PoolId {
    type Err = ApiError;

    fn from_str(s: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::new(format!("{s:?} is not a pool id of dovesnap's IPAM"));
        let mut parts = s.split('|');
        let (Some(subnet), Some(range), Some(nb), Some(token), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let subnet: Ipv4Net = subnet.parse().map_err(|_| bad())?;
        let range = match range {
            "" => None,
            r => Some(r.parse().map_err(|_| bad())?),
        };
        // What `check_pool_request` let through, and nothing else: a forged id must
        // not reach the address arithmetic.
        check_subnet(subnet).map_err(|_| bad())?;
        if let Some(r) = range {
            check_range(subnet, r).map_err(|_| bad())?;
        }
        Ok(PoolId {
            subnet,
            range,
            northbound: nb.parse().map_err(|_| bad())?,
            token: token.to_string(),
        })
    }
}

/// The addresses a pool hands out: the subnet's host addresses (neither the network
/// nor the broadcast address), within the range if there is one.
pub fn hosts(subnet: Ipv4Net, range: Option<Ipv4Net>) -> std::ops::RangeInclusive<u32> {
    let span = |n: Ipv4Net| {
        let first = u32::from(n.addr());
        let last = first | !u32::from(n.netmask());
        (first, last)
    };
    let (net, bcast) = span(subnet);
    let (first, last) = range.map_or((net, bcast), span);
    first.max(net + 1)..=last.min(bcast - 1)
}

/// What a `RequestPool` asks for, checked: the subnet and range, and the northbound
/// database named by `--ipam-opt ovs.ovn.nb` (else the caller finds it).
pub fn check_pool_request(
    req: &RequestPoolRequest,
) -> ApiResult<(Ipv4Net, Option<Ipv4Net>, Option<Remote>)> {
    if req.v6 {
        return Err(ApiError::new(
            "dovesnap's IPAM (--ipam-driver ovs) allocates IPv4 only: overlay networks \
             have no IPv6; leave out --ipv6",
        ));
    }
    if req.pool.is_empty() {
        return Err(ApiError::new(
            "dovesnap's IPAM (--ipam-driver ovs) needs --subnet, the same on every host: \
             the hosts share the subnet's addresses through the OVN northbound database",
        ));
    }
    let subnet: Ipv4Net = req.pool.parse().map_err(|_| {
        ApiError::new(format!(
            "--subnet {:?} is not an IPv4 subnet (a.b.c.d/n)",
            req.pool
        ))
    })?;
    if subnet.to_string() != req.pool {
        return Err(ApiError::new(format!(
            "--subnet {} has host bits set: give the network address, {subnet}",
            req.pool
        )));
    }
    check_subnet(subnet)?;
    let range = match req.sub_pool.as_str() {
        "" => None,
        r => {
            let range: Ipv4Net = r.parse().map_err(|_| {
                ApiError::new(format!(
                    "--ip-range {r:?} is not an IPv4 subnet (a.b.c.d/n)"
                ))
            })?;
            check_range(subnet, range)?;
            Some(range)
        }
    };
    let nb = match req.options.as_ref().and_then(|o| o.get(OPT_NB)) {
        None => None,
        Some(nb) => Some(nb.parse().map_err(|e| {
            ApiError::new(format!(
                "--ipam-opt {OPT_NB}={nb}: {e} (expected tcp:HOST:PORT or unix:PATH)"
            ))
        })?),
    };
    if let Some(other) = req
        .options
        .iter()
        .flat_map(|o| o.keys())
        .find(|k| k.as_str() != OPT_NB)
    {
        return Err(ApiError::new(format!(
            "unknown --ipam-opt {other}; dovesnap's IPAM knows only {OPT_NB}"
        )));
    }
    Ok((subnet, range, nb))
}

fn check_subnet(subnet: Ipv4Net) -> ApiResult<()> {
    if subnet.prefix() > 30 {
        return Err(ApiError::new(format!(
            "--subnet {subnet} is too small for dovesnap's IPAM: a /30 or larger leaves \
             addresses for a gateway and containers"
        )));
    }
    Ok(())
}

fn check_range(subnet: Ipv4Net, range: Ipv4Net) -> ApiResult<()> {
    if !subnet.contains(range.addr()) || range.prefix() < subnet.prefix() {
        return Err(ApiError::new(format!(
            "--ip-range {range} is not inside --subnet {subnet}"
        )));
    }
    Ok(())
}

/// What a `RequestAddress` asks for: whether it is the gateway, and the preferred
/// address (inside the pool's subnet), if any.
pub fn check_address_request(
    pool: &PoolId,
    req: &RequestAddressRequest,
) -> ApiResult<(bool, Option<Ipv4Addr>)> {
    let gateway = req
        .options
        .as_ref()
        .and_then(|o| o.get(REQUEST_ADDRESS_TYPE))
        .is_some_and(|t| t == GATEWAY_TYPE);
    let preferred = match req.address.as_str() {
        "" => None,
        a => {
            let ip: Ipv4Addr = (a.parse::<Ipv4Cidr>().map(|c| c.addr).ok())
                .or_else(|| a.parse().ok())
                .ok_or_else(|| ApiError::new(format!("{a:?} is not an IPv4 address")))?;
            if !hosts(pool.subnet, None).contains(&u32::from(ip)) {
                return Err(ApiError::new(format!(
                    "address {ip} is not a host address of the network's subnet {}",
                    pool.subnet
                )));
            }
            Some(ip)
        }
    };
    Ok((gateway, preferred))
}

/// An address as Docker wants it back: with the subnet's prefix length.
pub fn with_prefix(ip: Ipv4Addr, subnet: Ipv4Net) -> String {
    format!("{ip}/{}", subnet.prefix())
}

/// The address Docker gets back in a `ReleaseAddress`, without its prefix length.
pub fn released_address(address: &str) -> ApiResult<Ipv4Addr> {
    (address.parse::<Ipv4Cidr>().map(|c| c.addr).ok())
        .or_else(|| address.parse().ok())
        .ok_or_else(|| ApiError::new(format!("{address:?} is not an IPv4 address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_req(pool: &str, sub: &str, opts: &[(&str, &str)]) -> RequestPoolRequest {
        RequestPoolRequest {
            address_space: ADDRESS_SPACE.into(),
            pool: pool.into(),
            sub_pool: sub.into(),
            options: Some(
                opts.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            v6: false,
        }
    }

    #[test]
    fn decodes_docker_requests() {
        let r: RequestPoolRequest = serde_json::from_str(
            r#"{"AddressSpace":"dovesnap-ovn","Pool":"10.32.0.0/24","SubPool":"",
                "Options":{"ovs.ovn.nb":"tcp:192.0.2.1:6641"},"V6":false}"#,
        )
        .unwrap();
        assert_eq!(r.pool, "10.32.0.0/24");
        let r: RequestAddressRequest = serde_json::from_str(
            r#"{"PoolID":"p","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .unwrap();
        assert_eq!(r.options.unwrap()[REQUEST_ADDRESS_TYPE], GATEWAY_TYPE);
        let caps = serde_json::to_string(&IpamCapabilities::default()).unwrap();
        assert_eq!(
            caps,
            r#"{"RequiresMACAddress":false,"RequiresRequestReplay":false}"#
        );
    }

    #[test]
    fn pool_ids_round_trip() {
        let id = PoolId {
            subnet: "10.32.0.0/24".parse().unwrap(),
            range: Some("10.32.0.128/25".parse().unwrap()),
            northbound: "tcp:192.0.2.1:6641".parse().unwrap(),
            token: "abc".into(),
        };
        let text = id.to_string();
        assert_eq!(text, "10.32.0.0/24|10.32.0.128/25|tcp:192.0.2.1:6641|abc");
        assert_eq!(text.parse::<PoolId>().unwrap(), id);
        let no_range = "10.32.0.0/24||unix:/run/nb.sock|t"
            .parse::<PoolId>()
            .unwrap();
        assert_eq!(no_range.range, None);
        for bad in [
            "",
            "10.32.0.0/24",
            "x||tcp:1.2.3.4:1|t",
            "10.32.0.0/24||tcp:1.2.3.4:1|t|x",
            // Nothing RequestPool hands out: no host addresses, a range outside.
            "0.0.0.0/32||tcp:1.2.3.4:1|t",
            "255.255.255.255/32||tcp:1.2.3.4:1|t",
            "10.32.0.0/24|10.33.0.0/25|tcp:1.2.3.4:1|t",
        ] {
            let e = bad.parse::<PoolId>().unwrap_err().0;
            assert!(e.contains("not a pool id"), "{e}");
        }
    }

    #[test]
    fn pools_are_checked() {
        let (s, r, nb) = check_pool_request(&pool_req("10.32.0.0/24", "", &[])).unwrap();
        assert_eq!((s.to_string(), r, nb), ("10.32.0.0/24".into(), None, None));
        let (_, r, nb) = check_pool_request(&pool_req(
            "10.32.0.0/24",
            "10.32.0.64/26",
            &[(OPT_NB, "tcp:192.0.2.1:6641")],
        ))
        .unwrap();
        assert_eq!(r.unwrap().to_string(), "10.32.0.64/26");
        assert_eq!(nb, Some(Remote::Tcp("192.0.2.1:6641".into())));
        let refused = |req: RequestPoolRequest, want: &str| {
            let e = check_pool_request(&req).unwrap_err().0;
            assert!(e.contains(want), "{e}");
        };
        refused(pool_req("", "", &[]), "needs --subnet");
        refused(pool_req("10.32.0.0", "", &[]), "not an IPv4 subnet");
        refused(pool_req("fd00::/64", "", &[]), "not an IPv4 subnet");
        refused(pool_req("10.32.0.5/24", "", &[]), "host bits set");
        refused(pool_req("10.32.0.0/31", "", &[]), "too small");
        refused(pool_req("10.32.0.0/24", "10.33.0.0/26", &[]), "not inside");
        refused(pool_req("10.32.0.0/24", "10.32.0.0/16", &[]), "not inside");
        refused(pool_req("10.32.0.0/24", "", &[(OPT_NB, "x")]), "--ipam-opt");
        refused(
            pool_req("10.32.0.0/24", "", &[("foo", "1")]),
            "unknown --ipam-opt foo",
        );
        let mut v6 = pool_req("fd00::/64", "", &[]);
        v6.v6 = true;
        refused(v6, "IPv4 only");
    }

    #[test]
    fn host_addresses_leave_out_network_and_broadcast() {
        let s: Ipv4Net = "10.32.0.0/24".parse().unwrap();
        let all = hosts(s, None);
        assert_eq!(Ipv4Addr::from(*all.start()), Ipv4Addr::new(10, 32, 0, 1));
        assert_eq!(Ipv4Addr::from(*all.end()), Ipv4Addr::new(10, 32, 0, 254));
        let upper = hosts(s, Some("10.32.0.128/25".parse().unwrap()));
        assert_eq!(
            Ipv4Addr::from(*upper.start()),
            Ipv4Addr::new(10, 32, 0, 128)
        );
        assert_eq!(Ipv4Addr::from(*upper.end()), Ipv4Addr::new(10, 32, 0, 254));
        assert_eq!(hosts("10.32.0.0/30".parse().unwrap(), None).count(), 2);
    }

    #[test]
    fn addresses_are_checked() {
        let pool: PoolId = "10.32.0.0/24||tcp:192.0.2.1:6641|t".parse().unwrap();
        let req = |a: &str, gw: bool| RequestAddressRequest {
            pool_id: pool.to_string(),
            address: a.into(),
            options: gw
                .then(|| [(REQUEST_ADDRESS_TYPE.to_string(), GATEWAY_TYPE.to_string())].into()),
        };
        assert_eq!(
            check_address_request(&pool, &req("", true)).unwrap(),
            (true, None)
        );
        assert_eq!(
            check_address_request(&pool, &req("10.32.0.9", false)).unwrap(),
            (false, Some(Ipv4Addr::new(10, 32, 0, 9)))
        );
        assert_eq!(
            check_address_request(&pool, &req("10.32.0.9/24", false))
                .unwrap()
                .1,
            Some(Ipv4Addr::new(10, 32, 0, 9))
        );
        for (bad, want) in [
            ("10.33.0.9", "not a host address"),
            ("10.32.0.255", "not a host address"),
            ("nine", "not an IPv4 address"),
        ] {
            let e = check_address_request(&pool, &req(bad, false))
                .unwrap_err()
                .0;
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(
            with_prefix(Ipv4Addr::new(10, 32, 0, 9), pool.subnet),
            "10.32.0.9/24"
        );
        assert_eq!(
            released_address("10.32.0.9/24").unwrap(),
            Ipv4Addr::new(10, 32, 0, 9)
        );
    }
}
