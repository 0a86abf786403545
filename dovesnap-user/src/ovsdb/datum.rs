//! OVSDB's JSON notation for values (RFC 7047 section 5.1).
//!
//! An atom is a plain JSON string, number or boolean, or a tagged pair
//! `["uuid", "…"]` / `["named-uuid", "…"]`. A set is `["set", [atom, …]]`, where a
//! set of exactly one element may also come as the bare atom. A map is
//! `["map", [[key, value], …]]`. The encoders here always write the tagged forms;
//! the decoders accept both forms of a set.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::OvsdbError;

/// A reference to an existing row.
pub(crate) fn uuid(id: &str) -> Value {
    json!(["uuid", id])
}

/// A reference to a row inserted earlier in the same transaction under `uuid-name`.
pub(crate) fn named_uuid(name: &str) -> Value {
    json!(["named-uuid", name])
}

/// A set of atoms.
pub(crate) fn set(items: impl IntoIterator<Item = Value>) -> Value {
    json!(["set", items.into_iter().collect::<Vec<_>>()])
}

/// A string-to-string map.
pub(crate) fn string_map<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> Value {
    let pairs: Vec<Value> = pairs.into_iter().map(|(k, v)| json!([k, v])).collect();
    json!(["map", pairs])
}

/// The elements of a set, accepting the bare-atom form of a one-element set.
pub(crate) fn set_elements(value: &Value) -> Vec<&Value> {
    match value.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(items)]) if tag == "set" => items.iter().collect(),
        _ => vec![value],
    }
}

/// The strings of a set of strings (either form).
pub(crate) fn set_strings(value: &Value) -> Result<Vec<String>, OvsdbError> {
    set_elements(value)
        .into_iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| OvsdbError::Protocol(format!("expected a set of strings: {value}")))
        })
        .collect()
}

/// The id of a `["uuid", id]` atom.
pub(crate) fn as_uuid(value: &Value) -> Option<&str> {
    match value.as_array().map(Vec::as_slice) {
        Some([tag, Value::String(id)]) if tag == "uuid" => Some(id),
        _ => None,
    }
}

/// One row of a `select` result, with typed column accessors that name the table and
/// column when the server sent something unexpected.
pub(crate) struct Row<'a> {
    table: &'static str,
    columns: &'a Map<String, Value>,
}

impl<'a> Row<'a> {
    pub(crate) fn new(table: &'static str, value: &'a Value) -> Result<Self, OvsdbError> {
        value
            .as_object()
            .map(|columns| Row { table, columns })
            .ok_or_else(|| OvsdbError::Protocol(format!("{table} row is not an object: {value}")))
    }

    fn bad(&self, column: &str, expected: &str) -> OvsdbError {
        let got = self.columns.get(column).unwrap_or(&Value::Null);
        OvsdbError::Protocol(format!(
            "{}.{column}: expected {expected}, got {got}",
            self.table
        ))
    }

    pub(crate) fn string(&self, column: &str) -> Result<&'a str, OvsdbError> {
        self.columns
            .get(column)
            .and_then(Value::as_str)
            .ok_or_else(|| self.bad(column, "a string"))
    }

    pub(crate) fn uuid(&self, column: &str) -> Result<&'a str, OvsdbError> {
        self.columns
            .get(column)
            .and_then(as_uuid)
            .ok_or_else(|| self.bad(column, "a uuid"))
    }

    pub(crate) fn uuid_set(&self, column: &str) -> Result<Vec<&'a str>, OvsdbError> {
        let value = self
            .columns
            .get(column)
            .ok_or_else(|| self.bad(column, "a set of uuids"))?;
        set_elements(value)
            .into_iter()
            .map(|v| as_uuid(v).ok_or_else(|| self.bad(column, "a set of uuids")))
            .collect()
    }

    /// A set of integers column.
    pub(crate) fn int_set(&self, column: &str) -> Result<Vec<i64>, OvsdbError> {
        let value =
            (self.columns.get(column)).ok_or_else(|| self.bad(column, "a set of integers"))?;
        set_elements(value)
            .into_iter()
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| self.bad(column, "a set of integers"))
            })
            .collect()
    }

    /// An integer column, or an optional integer column (`None` when empty).
    pub(crate) fn opt_int(&self, column: &str) -> Result<Option<i64>, OvsdbError> {
        self.optional(column, ("an integer", "at most one integer"), Value::as_i64)
    }

    /// An optional string column (`None` when empty).
    pub(crate) fn opt_string(&self, column: &str) -> Result<Option<&'a str>, OvsdbError> {
        self.optional(column, ("a string", "at most one string"), Value::as_str)
    }

    /// An optional column of one atom read by `read` (`None` when the set is empty);
    /// `expected` names the atom and the "at most one" case for the error.
    fn optional<T>(
        &self,
        column: &str,
        expected: (&str, &str),
        read: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, OvsdbError> {
        let value = self
            .columns
            .get(column)
            .ok_or_else(|| self.bad(column, expected.0))?;
        match set_elements(value).as_slice() {
            [] => Ok(None),
            [v] => read(v)
                .map(Some)
                .ok_or_else(|| self.bad(column, expected.0)),
            _ => Err(self.bad(column, expected.1)),
        }
    }

    pub(crate) fn string_map(&self, column: &str) -> Result<BTreeMap<String, String>, OvsdbError> {
        let bad = || self.bad(column, "a string map");
        let value = self.columns.get(column).ok_or_else(bad)?;
        let pairs = match value.as_array().map(Vec::as_slice) {
            Some([tag, Value::Array(pairs)]) if tag == "map" => pairs,
            _ => return Err(bad()),
        };
        pairs
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::String(v)]) => Ok((k.clone(), v.clone())),
                _ => Err(bad()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_tagged_forms() {
        assert_eq!(uuid("a-b").to_string(), r#"["uuid","a-b"]"#);
        assert_eq!(named_uuid("br").to_string(), r#"["named-uuid","br"]"#);
        assert_eq!(set([]).to_string(), r#"["set",[]]"#);
        assert_eq!(
            set([named_uuid("p1"), uuid("u2")]).to_string(),
            r#"["set",[["named-uuid","p1"],["uuid","u2"]]]"#
        );
        let m: BTreeMap<String, String> =
            [("b".into(), "2".into()), ("a".into(), "1".into())].into();
        assert_eq!(
            string_map(&m).to_string(),
            r#"["map",[["a","1"],["b","2"]]]"#
        );
        assert_eq!(string_map(&BTreeMap::new()).to_string(), r#"["map",[]]"#);
    }

    #[test]
    fn decodes_sets_in_both_forms() {
        let one = json!(["uuid", "x"]);
        assert_eq!(set_elements(&one), vec![&one]);
        let many = json!(["set", [["uuid", "x"], ["uuid", "y"]]]);
        assert_eq!(set_elements(&many).len(), 2);
        assert!(set_elements(&json!(["set", []])).is_empty());
        assert_eq!(as_uuid(&one), Some("x"));
        assert_eq!(as_uuid(&json!(["named-uuid", "x"])), None);
        assert_eq!(as_uuid(&json!("x")), None);
    }

    #[test]
    fn row_accessors() {
        let v = json!({
            "_uuid": ["uuid", "u0"],
            "name": "br0",
            "ports": ["set", [["uuid", "p1"], ["uuid", "p2"]]],
            "one_port": ["uuid", "p1"],
            "tag": ["set", []],
            "ofport": 3,
            "error": ["set", []],
            "error2": "no such device",
            "external_ids": ["map", [["k", "v"]]],
        });
        let row = Row::new("Bridge", &v).unwrap();
        assert_eq!(row.uuid("_uuid").unwrap(), "u0");
        assert_eq!(row.string("name").unwrap(), "br0");
        assert_eq!(row.uuid_set("ports").unwrap(), vec!["p1", "p2"]);
        assert_eq!(row.uuid_set("one_port").unwrap(), vec!["p1"]);
        assert_eq!(row.opt_int("tag").unwrap(), None);
        assert_eq!(row.opt_int("ofport").unwrap(), Some(3));
        assert_eq!(row.opt_string("error").unwrap(), None);
        assert_eq!(row.opt_string("error2").unwrap(), Some("no such device"));
        assert_eq!(row.string_map("external_ids").unwrap()["k"], "v");

        let err = row.string("ofport").unwrap_err().to_string();
        assert!(err.contains("Bridge.ofport"), "{err}");
        assert!(row.string("missing").is_err());
        assert!(row.string_map("name").is_err());
        assert!(Row::new("Bridge", &json!([1])).is_err());
    }
}
