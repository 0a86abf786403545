//! The benchmark's results: one [`Record`] per workload and path, medians over runs,
//! written as `target/bench/report.json` and shown as a table and a chart.

use serde::{Deserialize, Serialize};

/// One figure: a workload measured through one path, several runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// e.g. `udp-64B-pps`, `tcp-1-stream`, `tcp-rr-p50`, `translator-ns-per-packet`.
    pub workload: String,
    /// e.g. `nat-fast`, `kernel-nat`, `kernel-nat+xdp`, `routing`, `translator`.
    pub path: String,
    /// The median of the runs.
    pub value: f64,
    pub unit: String,
    pub runs: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// `value` divided by the kernel nat path's value for the same workload (same
    /// XDP attachment state where that matters), when there is one (1.0 on
    /// `kernel-nat` itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_kernel: Option<f64>,
    /// Container section: `value` divided by Docker's own bridge driver's value
    /// (`docker-bridge`, the reference row) for the same workload, same run (1.0 on
    /// the reference row itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_to_bridge: Option<f64>,
    /// Anything a reader needs to interpret the figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Record {
    /// A record from the raw per-run values (at least one); `value` is the median.
    pub fn from_runs(workload: &str, path: &str, unit: &str, runs: &[f64]) -> Record {
        let mut v: Vec<f64> = runs.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        let median = median_sorted(&v);
        Record {
            workload: workload.into(),
            path: path.into(),
            value: median,
            unit: unit.into(),
            runs: v.len(),
            min: v.first().copied().unwrap_or(f64::NAN),
            median,
            max: v.last().copied().unwrap_or(f64::NAN),
            ratio_to_kernel: None,
            ratio_to_bridge: None,
            note: None,
        }
    }

    /// The same record with a note.
    pub fn with_note(mut self, note: impl Into<String>) -> Record {
        self.note = Some(note.into());
        self
    }

    /// Appends `more` to the note (`; `-separated).
    pub fn add_note(&mut self, more: &str) {
        self.note = Some(match self.note.take() {
            Some(n) => format!("{n}; {more}"),
            None => more.to_string(),
        });
    }
}

/// For each record, its value divided by the value of the `base` path's record for the
/// same workload (so 1.0 for the base path's own records, which makes the reference row
/// readable as one): `None` for workloads the base path lacks, and where either value
/// is not finite or the base is 0.
pub fn ratios_to(records: &[Record], base: &str) -> Vec<Option<f64>> {
    records
        .iter()
        .map(|r| {
            if !r.value.is_finite() {
                return None;
            }
            records
                .iter()
                .find(|b| b.path == base && b.workload == r.workload)
                .filter(|b| b.value != 0.0 && b.value.is_finite())
                .map(|b| r.value / b.value)
        })
        .collect()
}

fn median_sorted(v: &[f64]) -> f64 {
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median of `runs` (NaN when empty).
pub fn median(runs: &[f64]) -> f64 {
    let mut v = runs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    median_sorted(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let r = Record::from_runs("w", "p", "u", &[3.0, 1.0, 2.0]);
        assert_eq!((r.min, r.median, r.max, r.runs), (1.0, 2.0, 3.0, 3));
        assert_eq!(r.value, 2.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 10.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn ratios_to_the_base_path_of_the_same_workload() {
        let rec = |w: &str, p: &str, v: f64| Record::from_runs(w, p, "u", &[v]);
        let records = [
            rec("tcp", "docker-bridge", 10.0),
            rec("tcp", "ovs-nat-fast", 5.0),
            rec("rr", "ovs-nat-fast", 3.0),
            rec("rr", "docker-bridge", 0.0),
            rec("crr", "docker-bridge", 4.0),
            rec("crr", "ovs-nat", f64::NAN),
            rec("udp", "ovs-nat", 7.0),
        ];
        assert_eq!(
            ratios_to(&records, "docker-bridge"),
            [Some(1.0), Some(0.5), None, None, Some(1.0), None, None],
            "the base itself is 1.0; a zero base, a NaN value and a missing base give none"
        );
        assert_eq!(ratios_to(&records, "absent"), [None; 7]);
    }

    #[test]
    fn ratio_to_bridge_in_json_only_when_set() {
        let mut r = Record::from_runs("w", "p", "u", &[1.0]);
        assert!(!serde_json::to_string(&r)
            .unwrap()
            .contains("ratio_to_bridge"));
        r.ratio_to_bridge = Some(0.5);
        r.add_note("a");
        r.add_note("b");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""ratio_to_bridge":0.5"#), "{json}");
        assert_eq!(r.note.as_deref(), Some("a; b"));
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back.ratio_to_bridge, Some(0.5));
    }
}
