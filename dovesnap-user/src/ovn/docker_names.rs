//! Where an overlay endpoint's names come from. Docker does not tell a remote driver
//! the container's name or aliases (CreateEndpoint and Join carry the endpoint and
//! sandbox only), so after Join dovesnap asks the Docker Engine API: `GET
//! /networks/{id}` (which container holds the endpoint, and its name) and `GET
//! /containers/{id}/json` (the aliases on that network). Asked in the background with
//! retries: Docker lists the endpoint only once Join has returned.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::{debug, info, warn};

use super::dns::{normalize, Names};
use super::Northbound;

/// What a names source knows about an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The endpoint's names (not yet normalized).
    Names(Vec<String>),
    /// Not (yet) listed: ask again.
    NotYet,
    /// The network is not this source's (an API-only host, a network Docker dropped):
    /// asking again will not help.
    Unknown,
}

pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = Result<Lookup, String>> + Send + 'a>>;

/// Gives the names of an endpoint (Docker's Engine API; tests feed their own).
pub trait NamesSource: Send + Sync {
    fn lookup<'a>(&'a self, network_id: &'a str, endpoint_id: &'a str) -> LookupFuture<'a>;
}

/// The Docker Engine API on its unix socket.
#[derive(Debug, Clone)]
pub struct DockerNames {
    pub socket: PathBuf,
}

impl DockerNames {
    async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        use crate::daemon::http::{get, GetError};
        match get(&self.socket, path).await {
            Ok(answer) => Ok((
                answer.status,
                serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
            )),
            Err(GetError::Connect(e)) => {
                Err(format!("cannot connect to {}: {e}", self.socket.display()))
            }
            Err(GetError::Http(e)) => Err(e),
        }
    }
}

impl NamesSource for DockerNames {
    fn lookup<'a>(&'a self, network_id: &'a str, endpoint_id: &'a str) -> LookupFuture<'a> {
        Box::pin(async move {
            let (status, net) = self.get(&format!("/networks/{network_id}")).await?;
            match status {
                200 => {}
                404 => return Ok(Lookup::Unknown),
                s => return Err(format!("GET /networks/{network_id}: HTTP {s}")),
            }
            let Some((container, name)) = endpoint_container(&net, endpoint_id) else {
                return Ok(Lookup::NotYet);
            };
            let (status, ctr) = self.get(&format!("/containers/{container}/json")).await?;
            if status != 200 {
                return Ok(Lookup::NotYet);
            }
            let network = net["Name"].as_str().unwrap_or_default();
            let mut names = vec![name];
            names.extend(network_aliases(&ctr, network));
            Ok(Lookup::Names(names))
        })
    }
}

/// The container holding `endpoint_id` in a `GET /networks/{id}` answer, and its name.
pub fn endpoint_container(network: &Value, endpoint_id: &str) -> Option<(String, String)> {
    network["Containers"]
        .as_object()?
        .iter()
        .find(|(_, c)| c["EndpointID"] == endpoint_id)
        .map(|(id, c)| {
            (
                id.clone(),
                c["Name"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// The container's aliases and DNS names on `network`, from `GET /containers/{id}/json`
/// (`Aliases` on every API version; `DNSNames` from API 1.44).
pub fn network_aliases(container: &Value, network: &str) -> Vec<String> {
    let net = &container["NetworkSettings"]["Networks"][network];
    ["Aliases", "DNSNames"]
        .iter()
        .filter_map(|k| net[*k].as_array())
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// How often and how long the names are asked for after Join.
pub const LOOKUP_INTERVAL: Duration = Duration::from_millis(500);
pub const LOOKUP_ATTEMPTS: usize = 60;

/// Asks `source` until it knows the endpoint, then publishes its names on the switch
/// (`names` filled in). Runs in the background after Join; gives up quietly for a
/// network the source does not know.
pub async fn publish_when_known(
    source: Arc<dyn NamesSource>,
    nb: Arc<Northbound>,
    network_id: String,
    mut names: Names,
) {
    for _ in 0..LOOKUP_ATTEMPTS {
        match source.lookup(&network_id, &names.endpoint_id).await {
            Ok(Lookup::Names(found)) => {
                names.names = normalize(found.iter().map(String::as_str));
                if names.names.is_empty() {
                    return;
                }
                match nb.publish_names(&names).await {
                    Ok(true) => {
                        info!(endpoint = %names.endpoint_id, switch = %names.switch,
                              names = ?names.names, "published names in OVN");
                    }
                    Ok(false) => debug!(endpoint = %names.endpoint_id,
                                        "endpoint gone before its names were published"),
                    Err(e) => warn!(endpoint = %names.endpoint_id,
                                    "could not publish names in OVN: {e}"),
                }
                return;
            }
            Ok(Lookup::Unknown) => {
                debug!(network = %network_id, "network unknown to the names source");
                return;
            }
            Ok(Lookup::NotYet) => {}
            Err(e) => debug!(endpoint = %names.endpoint_id, "names lookup: {e}"),
        }
        tokio::time::sleep(LOOKUP_INTERVAL).await;
    }
    warn!(endpoint = %names.endpoint_id, "Docker never listed the endpoint: no names in OVN");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_container_and_its_aliases() {
        let net = json!({"Name": "web-net", "Containers": {
            "c1": {"Name": "db", "EndpointID": "e1"},
            "c2": {"Name": "web", "EndpointID": "e2"}}});
        assert_eq!(
            endpoint_container(&net, "e2"),
            Some(("c2".into(), "web".into()))
        );
        assert_eq!(endpoint_container(&net, "e3"), None);
        assert_eq!(endpoint_container(&json!({"Containers": null}), "e1"), None);
        let ctr = json!({"NetworkSettings": {"Networks": {"web-net": {
            "Aliases": ["www", "c2abc"], "DNSNames": ["web", "www"]}}}});
        assert_eq!(
            network_aliases(&ctr, "web-net"),
            ["www", "c2abc", "web", "www"]
        );
        assert!(network_aliases(&ctr, "other").is_empty());
    }
}
