//! The libnetwork remote network driver protocol.
//!
//! Docker talks to a remote driver with HTTP POSTs of JSON bodies on a unix socket
//! (`/run/docker/plugins/NAME.sock`). Field names follow libnetwork's
//! `drivers/remote/api` package exactly (Go's capitalised names), so these types are
//! the wire format. Every request type accepts unknown fields: newer Docker engines add
//! fields, and refusing them would break the plugin on an engine upgrade.
//!
//! The server ([`crate::server`]) decodes a request, calls the matching
//! [`NetworkDriver`] method and encodes the answer; a driver error becomes
//! `{"Err": "..."}`.

use std::collections::HashMap;
use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The option key under which Docker passes `docker network create -o k=v` pairs.
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";

/// The content type of plugin API answers.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// `Plugin.Activate` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<String>,
}

/// `NetworkDriver.GetCapabilities` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CapabilitiesResponse {
    #[serde(rename = "Scope")]
    pub scope: String,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: String,
}

/// One IPAM pool of a network, as Docker's IPAM allocated it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpamData {
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    /// The subnet in CIDR form, e.g. `10.0.0.0/24`.
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// The gateway with prefix length, e.g. `10.0.0.1/24`.
    #[serde(rename = "Gateway", default)]
    pub gateway: String,
    #[serde(rename = "AuxAddresses", default)]
    pub aux_addresses: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Docker's network options; `-o` pairs sit under [`GENERIC_OPTIONS`].
    #[serde(rename = "Options", default)]
    pub options: Option<HashMap<String, Value>>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Option<Vec<IpamData>>,
}

/// Requests that name only a network (`DeleteNetwork`, `FreeNetwork`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AllocateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", default)]
    pub options: Option<HashMap<String, String>>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllocateNetworkResponse {
    #[serde(rename = "Options", default)]
    pub options: HashMap<String, String>,
}

/// An endpoint's addresses. In a request Docker fills what IPAM gave; in the answer the
/// driver fills only what Docker left empty (Docker refuses a driver that overrides).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointInterface {
    /// IPv4 address with prefix length, e.g. `10.0.0.2/24`.
    #[serde(rename = "Address", default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(
        rename = "AddressIPv6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub address_ipv6: String,
    #[serde(
        rename = "MacAddress",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub mac_address: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
    #[serde(rename = "Options", default)]
    pub options: Option<HashMap<String, Value>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateEndpointResponse {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// Requests that name an endpoint (`DeleteEndpoint`, `EndpointOperInfo`, `Leave`,
/// `RevokeExternalConnectivity`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EndpointInfoResponse {
    #[serde(rename = "Value")]
    pub value: HashMap<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey", default)]
    pub sandbox_key: String,
    #[serde(rename = "Options", default)]
    pub options: Option<HashMap<String, Value>>,
}

/// Which interface Docker moves into the container, and what it calls it there.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StaticRoute {
    #[serde(rename = "Destination")]
    pub destination: String,
    /// 0: via next hop, 1: connected.
    #[serde(rename = "RouteType")]
    pub route_type: u8,
    #[serde(rename = "NextHop", default, skip_serializing_if = "String::is_empty")]
    pub next_hop: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    #[serde(rename = "Gateway", default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(
        rename = "GatewayIPv6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub gateway_ipv6: String,
    #[serde(
        rename = "StaticRoutes",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub static_routes: Vec<StaticRoute>,
    #[serde(rename = "DisableGatewayService", default)]
    pub disable_gateway_service: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProgramExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", default)]
    pub options: Option<HashMap<String, Value>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiscoveryNotification {
    #[serde(rename = "DiscoveryType", default)]
    pub discovery_type: i64,
    #[serde(rename = "DiscoveryData", default)]
    pub discovery_data: Value,
}

/// An error for Docker: the message is shown to the user by `docker network create`,
/// `docker run` and friends, so it says what was wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ApiError(pub String);

impl ApiError {
    pub fn new(msg: impl Into<String>) -> Self {
        ApiError(msg.into())
    }
}

/// The `{"Err": "..."}` body of a failed call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// What a network driver does for Docker. The server decodes each call into one of
/// these; implementations must be safe to call concurrently.
pub trait NetworkDriver: Send + Sync + 'static {
    fn capabilities(&self) -> CapabilitiesResponse {
        CapabilitiesResponse {
            scope: "local".into(),
            connectivity_scope: "local".into(),
        }
    }
    fn create_network(
        &self,
        req: CreateNetworkRequest,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    fn delete_network(&self, req: NetworkRequest) -> impl Future<Output = ApiResult<()>> + Send;
    fn allocate_network(
        &self,
        _req: AllocateNetworkRequest,
    ) -> impl Future<Output = ApiResult<AllocateNetworkResponse>> + Send {
        async { Ok(AllocateNetworkResponse::default()) }
    }
    fn free_network(&self, _req: NetworkRequest) -> impl Future<Output = ApiResult<()>> + Send {
        async { Ok(()) }
    }
    fn create_endpoint(
        &self,
        req: CreateEndpointRequest,
    ) -> impl Future<Output = ApiResult<CreateEndpointResponse>> + Send;
    fn endpoint_info(
        &self,
        req: EndpointRequest,
    ) -> impl Future<Output = ApiResult<EndpointInfoResponse>> + Send;
    fn delete_endpoint(&self, req: EndpointRequest) -> impl Future<Output = ApiResult<()>> + Send;
    fn join(&self, req: JoinRequest) -> impl Future<Output = ApiResult<JoinResponse>> + Send;
    fn leave(&self, req: EndpointRequest) -> impl Future<Output = ApiResult<()>> + Send;
    fn program_external_connectivity(
        &self,
        _req: ProgramExternalConnectivityRequest,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        async { Ok(()) }
    }
    fn revoke_external_connectivity(
        &self,
        _req: EndpointRequest,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        async { Ok(()) }
    }
    fn discover_new(
        &self,
        _req: DiscoveryNotification,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        async { Ok(()) }
    }
    fn discover_delete(
        &self,
        _req: DiscoveryNotification,
    ) -> impl Future<Output = ApiResult<()>> + Send {
        async { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_network_decodes_docker_body() {
        let body = r#"{"NetworkID":"abc","Options":{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{"mode":"flat","ovs.bridge.vlan":"100"}},
            "IPv4Data":[{"AddressSpace":"LocalDefault","Gateway":"10.0.0.1/24","Pool":"10.0.0.0/24"}],
            "IPv6Data":[],"SomethingNew":1}"#;
        let req: CreateNetworkRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.network_id, "abc");
        let v4 = req.ipv4_data.unwrap();
        assert_eq!(v4[0].gateway, "10.0.0.1/24");
        assert_eq!(v4[0].pool, "10.0.0.0/24");
        let generic = &req.options.unwrap()[GENERIC_OPTIONS];
        assert_eq!(generic["ovs.bridge.vlan"], "100");
    }

    #[test]
    fn join_response_encodes_go_names_and_omits_empty() {
        let r = JoinResponse {
            interface_name: InterfaceName {
                src_name: "veth1".into(),
                dst_prefix: "eth".into(),
            },
            gateway: "10.0.0.1".into(),
            ..Default::default()
        };
        let v: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"InterfaceName":{"SrcName":"veth1","DstPrefix":"eth"},
                "Gateway":"10.0.0.1","DisableGatewayService":false})
        );
    }

    #[test]
    fn create_endpoint_response_only_carries_what_docker_lacked() {
        let empty = CreateEndpointResponse::default();
        assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
        let mac = CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: "02:42:0a:00:00:02".into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            r#"{"Interface":{"MacAddress":"02:42:0a:00:00:02"}}"#
        );
    }
}

/// The fuzz entry point for everything a plugin call's body goes through before the
/// driver touches the host: the JSON decoding of every request type, the `-o` network
/// options, and the port maps of endpoint options. Never panics; returns how many
/// decoders accepted the input (so a harness can tell it reached them). Used by
/// `dovesnap-user/fuzz` (target `api`) and by the corpus replay in the unit tests.
pub fn fuzz_decode(data: &[u8]) -> usize {
    use crate::firewall::{parse_exposed_ports, parse_port_map, EXPOSED_PORTS_OPTION};
    use crate::options::NetworkOptions;

    fn options(o: &Option<HashMap<String, Value>>) -> usize {
        let mut n = usize::from(NetworkOptions::from_docker_options(o.as_ref()).is_ok());
        if let Some(o) = o {
            if let Some(v) = o.get(crate::firewall::PORT_MAP_OPTION) {
                n += usize::from(parse_port_map(v).is_ok());
            }
            if let Some(v) = o.get(EXPOSED_PORTS_OPTION) {
                n += usize::from(parse_exposed_ports(v).is_ok());
            }
        }
        n
    }
    let mut accepted = 0;
    if let Ok(r) = serde_json::from_slice::<CreateNetworkRequest>(data) {
        accepted += 1 + options(&r.options);
    }
    if let Ok(r) = serde_json::from_slice::<CreateEndpointRequest>(data) {
        accepted += 1 + options(&r.options);
    }
    if let Ok(r) = serde_json::from_slice::<ProgramExternalConnectivityRequest>(data) {
        accepted += 1 + options(&r.options);
    }
    if let Ok(r) = serde_json::from_slice::<JoinRequest>(data) {
        accepted += 1 + options(&r.options);
    }
    accepted += usize::from(serde_json::from_slice::<NetworkRequest>(data).is_ok());
    accepted += usize::from(serde_json::from_slice::<EndpointRequest>(data).is_ok());
    accepted += usize::from(serde_json::from_slice::<AllocateNetworkRequest>(data).is_ok());
    accepted += usize::from(serde_json::from_slice::<DiscoveryNotification>(data).is_ok());
    accepted
}

#[cfg(test)]
mod fuzz_corpus_tests {
    use super::fuzz_decode;

    /// Every file of the fuzz corpus (`dovesnap-user/fuzz/corpus/api`), and for each a
    /// few thousand deterministic mutations: truncations, byte flips, and splices of
    /// JSON fragments. Nothing may panic, and the seeds themselves must decode.
    #[test]
    fn api_corpus_and_mutations_never_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/api");
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .expect("fuzz corpus directory")
            .map(|e| std::fs::read(e.expect("entry").path()).expect("corpus file"))
            .collect();
        seeds.sort();
        assert!(seeds.len() >= 8, "corpus too small: {}", seeds.len());
        for s in &seeds {
            assert!(
                fuzz_decode(s) > 0,
                "seed does not decode: {}",
                String::from_utf8_lossy(s)
            );
        }
        let fragments: [&[u8]; 8] = [
            b"null",
            b"[]",
            b"{}",
            b"\"x\"",
            b"-1",
            b"1e999",
            b"\"\\u0000\"",
            b"{\"a\":",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut runs = 0;
        for s in &seeds {
            for len in 0..=s.len() {
                fuzz_decode(&s[..len]);
                runs += 1;
            }
            for _ in 0..300 {
                let mut m = s.clone();
                match next() % 3 {
                    0 => {
                        let i = (next() as usize) % m.len().max(1);
                        if let Some(b) = m.get_mut(i) {
                            *b ^= 1 << (next() % 8);
                        }
                    }
                    1 => {
                        let i = (next() as usize) % (m.len() + 1);
                        let f = fragments[(next() as usize) % fragments.len()];
                        m.splice(i..i, f.iter().copied());
                    }
                    _ => {
                        // Replace a JSON value (after a ':') with a fragment.
                        if let Some(i) = m.iter().position(|b| *b == b':') {
                            let f = fragments[(next() as usize) % fragments.len()];
                            let end = m[i + 1..]
                                .iter()
                                .position(|b| *b == b',' || *b == b'}')
                                .map_or(m.len(), |p| i + 1 + p);
                            m.splice(i + 1..end, f.iter().copied());
                        }
                    }
                }
                fuzz_decode(&m);
                runs += 1;
            }
        }
        assert!(runs > 1000);
    }
}
