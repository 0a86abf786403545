//! Readers of `dovesnap status --json` (the `Daemon::status` value) shared by the
//! nat-fast tests.

use serde_json::Value;

/// A named counter from a `[[name, value], ...]` list of the status JSON (0 if absent).
pub fn counter_in(list: &Value, name: &str) -> u64 {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|p| p[0].as_str() == Some(name))
        .and_then(|p| p[1].as_u64())
        .unwrap_or(0)
}

/// An XDP decision counter (all CPUs).
pub fn xdp_counter(status: &Value, name: &str) -> u64 {
    counter_in(&status["fast_path"]["xdp_counters"], name)
}

/// A data-plane counter (AF_XDP, offload, next hops).
pub fn dataplane_counter(status: &Value, name: &str) -> u64 {
    counter_in(&status["fast_path"]["dataplane"]["counters"], name)
}

/// A translator counter summed over every uplink.
pub fn translator_counter(status: &Value, name: &str) -> u64 {
    status["fast_path"]["dataplane"]["uplinks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| counter_in(&u["counters"], name))
        .sum()
}

/// The element of array `list` whose string field `field` is `value` (`Null` if none).
pub fn find_in(list: &Value, field: &str, value: &str) -> Value {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|e| e[field].as_str() == Some(value))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The endpoints (`networks[].endpoints[]`) of the network with id `network`, or of every
/// network if `None`.
pub fn endpoints(status: &Value, network: Option<&str>) -> Vec<Value> {
    status["networks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| network.is_none_or(|id| n["id"].as_str() == Some(id)))
        .flat_map(|n| n["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The endpoint (see [`endpoints`]) whose address is `ip` (`Null` if none).
pub fn endpoint_at(status: &Value, network: Option<&str>, ip: &str) -> Value {
    let prefix = format!("{ip}/");
    endpoints(status, network)
        .into_iter()
        .find(|e| {
            e["address"]
                .as_str()
                .is_some_and(|a| a.starts_with(&prefix))
        })
        .unwrap_or(Value::Null)
}
