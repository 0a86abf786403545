//! An SVG bar chart of the data-path results: one group per workload, one bar per path,
//! each bar the path's median relative to a base path (the kernel nat path in the
//! namespace section, Docker's bridge in the container section; 1.0 = as fast as the
//! base; for latency and CPU per packet, lower is better and the axis says so).

use std::fmt::Write as _;

use dovesnap_bench::report::Record;

/// Workloads drawn, with whether higher is better.
const DRAWN: &[(&str, &str, bool)] = &[
    ("udp-64B-pps", "UDP 64B pps", true),
    ("udp-64B-cpu-per-packet", "CPU ns/packet", false),
    ("tcp-1-stream", "TCP 1 stream", true),
    ("tcp-1-stream-download", "TCP download", true),
    ("tcp-4-streams", "TCP 4 streams", true),
    ("tcp-rr-p50", "RR p50 latency", false),
    ("tcp-rr-p99", "RR p99 latency", false),
    ("tcp-crr", "new conns/s", true),
];

const COLORS: &[&str] = &[
    "#9e9e9e", "#616161", "#cfcfcf", "#1f77b4", "#0b3d66", "#8fbbe0", "#d62728", "#f2a0a1",
];

/// The chart for `records` over `paths` (in legend order), relative to `base`, of the
/// workloads named `{prefix}{workload}`.
pub fn svg(records: &[Record], paths: &[&str], base: &str, prefix: &str, title: &str) -> String {
    let group_w = 40.0 + 22.0 * paths.len() as f64;
    let (left, top, plot_h) = (50.0, 50.0, 260.0);
    let width = left + group_w * DRAWN.len() as f64 + 20.0;
    let height = top + plot_h + 120.0;
    // Ratios to the base path, capped for drawing.
    let max_ratio = 3.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="36">median of each path relative to {} (= 1.0); labels are the medians</text>"#,
        escape(base)
    );
    let y_of = |ratio: f64| top + plot_h - (ratio.min(max_ratio) / max_ratio) * plot_h;
    for tick in [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0] {
        let y = y_of(tick);
        let stroke = if tick == 1.0 { "#444" } else { "#e5e5e5" };
        let _ = writeln!(
            out,
            r#"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="{stroke}"/><text x="{}" y="{}" text-anchor="end">{tick:.1}x</text>"#,
            width - 20.0,
            left - 4.0,
            y + 4.0
        );
    }
    for (gi, (workload, label, higher_better)) in DRAWN.iter().enumerate() {
        let workload = format!("{prefix}{workload}");
        let gx = left + group_w * gi as f64 + 20.0;
        let base_value = records
            .iter()
            .find(|r| r.workload == workload && r.path == base)
            .map(|r| r.value);
        for (pi, path) in paths.iter().enumerate() {
            let Some(r) = records
                .iter()
                .find(|r| r.workload == workload && r.path == *path)
            else {
                continue;
            };
            let ratio = match base_value {
                Some(b) if b > 0.0 && r.value.is_finite() => r.value / b,
                _ => continue,
            };
            let x = gx + 22.0 * pi as f64;
            let y = y_of(ratio);
            let h = top + plot_h - y;
            let _ = writeln!(
                out,
                r#"<rect x="{x}" y="{y}" width="18" height="{h}" fill="{}"><title>{path}: {} {}</title></rect>"#,
                COLORS[pi % COLORS.len()],
                short(r.value),
                escape(&r.unit)
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" font-size="9" text-anchor="middle">{}</text>"#,
                x + 9.0,
                y - 3.0,
                short(r.value)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="{}" y="{}" text-anchor="middle" fill="gray">{}</text>"#,
            gx + 11.0 * paths.len() as f64,
            top + plot_h + 16.0,
            escape(label),
            gx + 11.0 * paths.len() as f64,
            top + plot_h + 30.0,
            if *higher_better {
                "higher is better"
            } else {
                "lower is better"
            }
        );
    }
    for (pi, path) in paths.iter().enumerate() {
        let x = left + 130.0 * pi as f64;
        let y = top + plot_h + 60.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            y - 10.0,
            COLORS[pi % COLORS.len()],
            x + 16.0,
            y,
            escape(path)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn short(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_bars_relative_to_the_kernel() {
        let recs = vec![
            Record::from_runs("udp-64B-pps", "kernel-nat", "packets/s", &[1e6]),
            Record::from_runs("udp-64B-pps", "nat-fast", "packets/s", &[1.5e6]),
        ];
        let s = svg(&recs, &["kernel-nat", "nat-fast"], "kernel-nat", "", "t");
        assert!(s.starts_with("<svg"));
        assert!(s.contains("1.50M") && s.contains("1.00M"));
        assert_eq!(
            s.matches("<rect x=").count(),
            2 + 2,
            "two bars, two legend boxes"
        );
        let recs = vec![
            Record::from_runs(
                "container-tcp-crr",
                "docker-bridge",
                "connections/s",
                &[10.0],
            ),
            Record::from_runs("container-tcp-crr", "ovs-nat-fast", "connections/s", &[5.0]),
            Record::from_runs("tcp-crr", "ovs-nat-fast", "connections/s", &[7.0]),
        ];
        let s = svg(
            &recs,
            &["docker-bridge", "ovs-nat-fast"],
            "docker-bridge",
            "container-",
            "t",
        );
        assert!(s.contains("relative to docker-bridge"));
        assert!(
            s.contains("ovs-nat-fast: 5.00") && !s.contains("7.00"),
            "{s}"
        );
    }
}
