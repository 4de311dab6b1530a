//! The results table and its JSON form.

use std::time::Duration;

use serde::Serialize;

/// Items per second.
pub(crate) fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// One measured figure, with its ratio to a same-run baseline when it has one.
#[derive(Debug, Serialize)]
pub(crate) struct Row {
    section: String,
    name: String,
    value: f64,
    unit: String,
    baseline: Option<String>,
    ratio: Option<f64>,
    target: Option<f64>,
    meets_target: Option<bool>,
}

/// Every row of a run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// Records and prints a row. `vs` is (baseline name, ratio, target ratio).
    pub(crate) fn row(&mut self, section: &str, name: &str, value: f64, unit: &str, vs: Option<(&str, f64, f64)>) {
        let row = Row {
            section: section.into(),
            name: name.into(),
            value,
            unit: unit.into(),
            baseline: vs.map(|v| v.0.to_owned()),
            ratio: vs.map(|v| v.1),
            target: vs.map(|v| v.2),
            // Writer overhead is a cost ratio (lower is better); every other ratio is a speed-up.
            meets_target: vs.map(|(_, r, t)| if section == "writer" { r <= t } else { r >= t }),
        };
        println!("{}", format_row(&row));
        self.rows.push(row);
    }

    /// Records a latency row (µs percentiles), target `p50 ≤ a`, `p99 ≤ b` in µs when given.
    pub(crate) fn latency(&mut self, name: &str, h: &hdrhistogram::Histogram<u64>, targets: Option<(u64, u64)>) {
        let (p50, p99, p999, max) =
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999), h.max());
        let text = format!("p50 {} · p99 {} · p99.9 {} · max {} (n={})", ms(p50), ms(p99), ms(p999), ms(max), h.len());
        let meets = targets.map(|(a, b)| p50 <= a && p99 <= b);
        println!(
            "| latency | {name} | {text} | {} |",
            meets.map_or("", |m| if m { "meets target" } else { "misses target" })
        );
        self.rows.push(Row {
            section: "latency".into(),
            name: format!("{name}: {text}"),
            value: p50 as f64,
            unit: "µs p50".into(),
            baseline: None,
            ratio: Some(p99 as f64),
            target: targets.map(|t| t.1 as f64),
            meets_target: meets,
        });
    }

    pub(crate) fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn format_row(r: &Row) -> String {
    let vs = match (&r.baseline, r.ratio, r.target) {
        (Some(b), Some(x), Some(t)) => {
            let ok = if r.meets_target == Some(true) { "meets" } else { "misses" };
            format!("{x:.2}× {b} (target {t}×: {ok})")
        }
        _ => String::new(),
    };
    format!("| {} | {} | {:.0} {} | {vs} |", r.section, r.name, r.value, r.unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_rows_format() {
        assert_eq!(rate(1000, Duration::from_millis(500)), 2000.0);
        let mut r = Report::default();
        r.row("drain", "x", 60_000.0, "msg/s", Some(("raw", 0.75, 0.6)));
        assert!(r.json().contains("\"meets_target\": true"));
        assert!(format_row(&r.rows[0]).contains("0.75× raw (target 0.6×: meets)"));
    }
}
