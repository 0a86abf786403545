//! The libnetwork remote network driver protocol.
//!
//! Docker talks to a remote driver with HTTP POSTs of JSON bodies on a unix socket
//! (`/run/docker/plugins/NAME.sock`). Field names follow libnetwork's
//! `drivers/remote/api` package exactly (Go's capitalised names), so these types are
//! the wire format. Every request type accepts unknown fields: newer Docker engines add
//! fields, and refusing them would break the plugin on an engine upgrade.
//!
//! The server ([`crate::plugin::server`]) decodes a request, calls the matching
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

pub use crate::daemon::http::ErrorResponse;

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
