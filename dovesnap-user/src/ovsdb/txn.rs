//! Building `transact` requests and reading their results (RFC 7047 sections 4.1.3
//! and 5.2).
//!
//! A [`Txn`] is a list of operations against the `Open_vSwitch` database; each method
//! returns the index of the operation it added, which is also the index of that
//! operation's result in the reply.

use serde_json::{json, Value};

use super::datum::{self, Row};
use super::OvsdbError;

/// The database every operation here targets.
pub(crate) const DB: &str = "Open_vSwitch";

/// A `where` condition `column == value`.
pub(crate) fn eq(column: &str, value: impl Into<Value>) -> Value {
    json!([column, "==", value.into()])
}

/// A `where` condition matching one row by its uuid.
pub(crate) fn is_row(id: &str) -> Value {
    eq("_uuid", datum::uuid(id))
}

/// The operations of one transaction.
#[derive(Debug)]
pub(crate) struct Txn {
    db: &'static str,
    ops: Vec<Value>,
}

impl Default for Txn {
    /// A transaction on the `Open_vSwitch` database.
    fn default() -> Self {
        Txn::on(DB)
    }
}

impl Txn {
    /// A transaction on database `db` (`OVN_Northbound`, ...).
    pub(crate) fn on(db: &'static str) -> Self {
        Txn {
            db,
            ops: Vec::new(),
        }
    }

    fn push(&mut self, op: Value) -> usize {
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// Adds an operation written out in full (a `wait` on given columns, ...).
    pub(crate) fn push_raw(&mut self, op: Value) -> usize {
        self.push(op)
    }

    /// A note that ovsdb-server writes to its log with the transaction.
    pub(crate) fn comment(&mut self, text: &str) -> usize {
        self.push(json!({"op": "comment", "comment": text}))
    }

    /// Inserts `row` into `table`; later operations refer to it as
    /// `["named-uuid", uuid_name]`.
    pub(crate) fn insert(&mut self, table: &str, row: Value, uuid_name: &str) -> usize {
        self.push(json!({"op": "insert", "table": table, "row": row, "uuid-name": uuid_name}))
    }

    pub(crate) fn select(
        &mut self,
        table: &str,
        conditions: Vec<Value>,
        columns: &[&str],
    ) -> usize {
        self.push(json!({"op": "select", "table": table, "where": conditions, "columns": columns}))
    }

    pub(crate) fn mutate(
        &mut self,
        table: &str,
        conditions: Vec<Value>,
        mutations: Vec<Value>,
    ) -> usize {
        self.push(
            json!({"op": "mutate", "table": table, "where": conditions, "mutations": mutations}),
        )
    }

    /// Sets the columns of `row` in the rows of `table` matching `conditions`.
    pub(crate) fn update(&mut self, table: &str, conditions: Vec<Value>, row: Value) -> usize {
        self.push(json!({"op": "update", "table": table, "where": conditions, "row": row}))
    }

    pub(crate) fn delete(&mut self, table: &str, conditions: Vec<Value>) -> usize {
        self.push(json!({"op": "delete", "table": table, "where": conditions}))
    }

    /// Fails the whole transaction (this operation's result carries the error) unless
    /// some row of `table` matches `conditions` (`exists`), or unless none does
    /// (`!exists`). A `wait` with a zero timeout and no columns: the matching rows,
    /// projected on no columns, must equal `[{}]` or `[]`.
    pub(crate) fn require(&mut self, table: &str, conditions: Vec<Value>, exists: bool) -> usize {
        let rows = if exists { json!([{}]) } else { json!([]) };
        self.push(json!({
            "op": "wait", "table": table, "timeout": 0, "where": conditions,
            "columns": [], "until": "==", "rows": rows,
        }))
    }

    /// Asks ovs-vswitchd to reconfigure: increments `Open_vSwitch.next_cfg` and reads
    /// it back in the same transaction. Returns the index of the read, for
    /// [`next_cfg`].
    pub(crate) fn bump_next_cfg(&mut self) -> usize {
        self.mutate(DB, vec![], vec![json!(["next_cfg", "+=", 1])]);
        self.select(DB, vec![], &["next_cfg"])
    }

    /// The `params` of the `transact` request.
    pub(crate) fn params(&self) -> Value {
        let mut params = Vec::with_capacity(self.ops.len() + 1);
        params.push(json!(self.db));
        params.extend(self.ops.iter().cloned());
        Value::Array(params)
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }
}

/// Why ovsdb-server refused a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The failed operation, or `None` when every operation succeeded and the commit
    /// itself failed (constraint or referential-integrity violation).
    pub op: Option<usize>,
    pub error: String,
    pub details: Option<String>,
}

/// Reads a `transact` result for a transaction of `n_ops` operations.
///
/// The server answers one result per operation; when an operation fails its result is
/// `{"error": …, "details": …}` and the operations after it are not executed. When
/// they all succeed but the commit fails, one extra element carries the error.
pub(crate) fn check(
    result: Value,
    n_ops: usize,
) -> Result<Result<Vec<Value>, Refusal>, OvsdbError> {
    let Value::Array(results) = result else {
        return Err(OvsdbError::Protocol(format!(
            "transact result is not an array: {result}"
        )));
    };
    if results.len() < n_ops {
        // Only allowed when an operation failed: it must carry the error.
        if !results.iter().any(|r| r.get("error").is_some()) {
            return Err(OvsdbError::Protocol(format!(
                "transact returned {} results for {n_ops} operations",
                results.len()
            )));
        }
    }
    if let Some((i, failed)) = results
        .iter()
        .enumerate()
        .find(|(_, r)| r.get("error").is_some_and(|e| !e.is_null()))
    {
        let text = |key: &str| failed.get(key).and_then(Value::as_str).map(str::to_string);
        return Ok(Err(Refusal {
            op: (i < n_ops).then_some(i),
            error: text("error").unwrap_or_else(|| failed["error"].to_string()),
            details: text("details"),
        }));
    }
    Ok(Ok(results))
}

/// Member `key` of the result at `index`.
fn field<'a>(results: &'a [Value], index: usize, key: &str) -> Option<&'a Value> {
    results.get(index).and_then(|r| r.get(key))
}

/// The rows of the `select` at `index`.
pub(crate) fn rows(results: &[Value], index: usize) -> Result<&[Value], OvsdbError> {
    field(results, index, "rows")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| OvsdbError::Protocol(format!("result {index} has no rows")))
}

/// The uuid of the row the `insert` at `index` created.
pub(crate) fn inserted(results: &[Value], index: usize) -> Result<String, OvsdbError> {
    field(results, index, "uuid")
        .and_then(datum::as_uuid)
        .map(str::to_string)
        .ok_or_else(|| OvsdbError::Protocol(format!("result {index} has no inserted uuid")))
}

/// The `next_cfg` read by the select that [`Txn::bump_next_cfg`] added.
pub(crate) fn next_cfg(results: &[Value], index: usize) -> Result<i64, OvsdbError> {
    match rows(results, index)? {
        [row] => Row::new(DB, row)?
            .opt_int("next_cfg")?
            .ok_or_else(|| OvsdbError::Protocol("Open_vSwitch.next_cfg is empty".into())),
        rows => Err(OvsdbError::Protocol(format!(
            "expected one Open_vSwitch row, found {}; run `ovs-vsctl --no-wait init`",
            rows.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_transact_params() {
        let mut txn = Txn::default();
        assert_eq!(txn.comment("hello"), 0);
        assert_eq!(txn.insert("Interface", json!({"name": "p"}), "i"), 1);
        assert_eq!(txn.bump_next_cfg(), 3);
        assert_eq!(txn.len(), 4);
        assert_eq!(
            txn.params(),
            json!([
                "Open_vSwitch",
                {"op": "comment", "comment": "hello"},
                {"op": "insert", "table": "Interface", "row": {"name": "p"}, "uuid-name": "i"},
                {"op": "mutate", "table": "Open_vSwitch", "where": [],
                 "mutations": [["next_cfg", "+=", 1]]},
                {"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]},
            ])
        );
    }

    #[test]
    fn wait_guards() {
        let mut txn = Txn::default();
        txn.require("Bridge", vec![eq("name", "br0")], true);
        txn.require("Port", vec![eq("name", "p0")], false);
        let p = txn.params();
        assert_eq!(
            p[1],
            json!({"op": "wait", "table": "Bridge", "timeout": 0,
                   "where": [["name", "==", "br0"]], "columns": [],
                   "until": "==", "rows": [{}]})
        );
        assert_eq!(p[2]["rows"], json!([]));
        let mut nb = Txn::on("OVN_Northbound");
        nb.delete("Logical_Switch", vec![eq("name", "s")]);
        assert_eq!(nb.params()[0], json!("OVN_Northbound"));
        assert_eq!(is_row("u1"), json!(["_uuid", "==", ["uuid", "u1"]]));
    }

    #[test]
    fn reads_successful_results() {
        let reply = json!([
            {},
            {"uuid": ["uuid", "1111"]},
            {"count": 1},
            {"rows": [{"next_cfg": 42}]},
        ]);
        let results = check(reply, 4).unwrap().unwrap();
        assert_eq!(inserted(&results, 1).unwrap(), "1111");
        assert_eq!(next_cfg(&results, 3).unwrap(), 42);
        assert!(inserted(&results, 2).is_err());
        assert!(rows(&results, 9).is_err());
    }

    #[test]
    fn reports_the_failed_operation() {
        let reply = json!([
            {},
            {"error": "timed out", "details": "\"wait\" timed out"},
            null,
        ]);
        let refusal = check(reply, 3).unwrap().unwrap_err();
        assert_eq!(refusal.op, Some(1));
        assert_eq!(refusal.error, "timed out");
        assert_eq!(refusal.details.as_deref(), Some("\"wait\" timed out"));
    }

    #[test]
    fn reports_commit_failures() {
        let reply = json!([
            {"uuid": ["uuid", "1"]},
            {"error": "constraint violation",
             "details": "Transaction causes multiple rows in \"Bridge\" table to have identical values"},
        ]);
        let refusal = check(reply, 1).unwrap().unwrap_err();
        assert_eq!(refusal.op, None);
        assert_eq!(refusal.error, "constraint violation");
    }

    #[test]
    fn rejects_malformed_results() {
        assert!(check(json!({"rows": []}), 1).is_err());
        assert!(check(json!([{}]), 2).is_err());
        let many = json!([{"rows": [{"next_cfg": 1}, {"next_cfg": 2}]}]);
        let results = check(many, 1).unwrap().unwrap();
        assert!(next_cfg(&results, 0).is_err());
    }
}
