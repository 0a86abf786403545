//! The plugin's eBPF maps as bpftool shows them: found through the loaded program that
//! uses them, read and written as raw bytes (the maps carry no BTF).

use serde_json::Value;

use crate::run;

fn json(args: &[&str]) -> Value {
    let out = run("bpftool", &[&["-j"], args].concat());
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The ids of the loaded programs named `name` (the kernel keeps 15 bytes of it;
/// bpftool shows the whole name where the program's BTF has it).
pub fn programs_named(name: &str) -> Vec<String> {
    let short = &name[..name.len().min(15)];
    (json(&["prog", "show"]).as_array().into_iter().flatten())
        .filter(|p| p["name"].as_str().is_some_and(|n| n == name || n == short))
        .filter_map(|p| p["id"].as_u64())
        .map(|id| id.to_string())
        .collect()
}

/// The ids of the maps named `name`.
pub fn maps_named(name: &str) -> Vec<String> {
    (json(&["map", "show"]).as_array().into_iter().flatten())
        .filter(|m| m["name"].as_str() == Some(name))
        .filter_map(|m| m["id"].as_u64())
        .map(|id| id.to_string())
        .collect()
}

/// The id of the map named `map` that program `prog` (an id) uses.
pub fn map_of(prog: &str, map: &str) -> Option<String> {
    (json(&["prog", "show", "id", prog])["map_ids"].as_array())
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|id| id.to_string())
        .find(|id| json(&["map", "show", "id", id])["name"].as_str() == Some(map))
}

/// Entries of map `id`.
pub fn entries(id: &str) -> usize {
    json(&["map", "dump", "id", id])
        .as_array()
        .map_or(0, Vec::len)
}

fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value under `key` in map `id`, `None` if absent.
pub fn lookup(id: &str, key: &[u8]) -> Option<Vec<u8>> {
    let key = hex(key);
    let mut args = vec!["map", "lookup", "id", id, "key", "hex"];
    args.extend(key.iter().map(String::as_str));
    let value = json(&args)["value"].as_array()?.clone();
    value
        .iter()
        .map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect()
}

/// Writes `value` under `key` in map `id`.
pub fn update(id: &str, key: &[u8], value: &[u8]) {
    let (key, value) = (hex(key), hex(value));
    let mut args = vec!["map", "update", "id", id, "key", "hex"];
    args.extend(key.iter().map(String::as_str));
    args.extend(["value", "hex"]);
    args.extend(value.iter().map(String::as_str));
    let out = run("bpftool", &args);
    assert!(
        out.status.success(),
        "bpftool map update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
