//! The results: printed as table rows while the run goes, then written as JSON and Markdown.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::Usage;
use crate::machine::Machine;

/// Items per second.
pub(crate) fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Median, 10th and 90th percentile of per-round ratios: the median shrugs off the bursts of
/// load other people put on the machine, which a ratio of totals does not.
pub(crate) fn spread(ratios: &[f64]) -> (f64, f64, f64) {
    let mut r = ratios.to_vec();
    r.sort_by(f64::total_cmp);
    (r[r.len() / 2], r[r.len() / 10], r[r.len() - 1 - r.len() / 10])
}

/// `1234567.8` → `1,234,568`; values below 10 keep two decimals.
pub(crate) fn num(x: f64) -> String {
    if x.abs() < 10.0 {
        return format!("{x:.2}");
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

/// Microseconds as milliseconds, `1234` → `1.23 ms`.
fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// What a figure should reach.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Goal {
    /// The value (or ratio) must be at least this.
    AtLeast(f64),
    /// The value (or ratio) must be at most this.
    AtMost(f64),
}

impl Goal {
    fn met_by(self, x: f64) -> bool {
        match self {
            Self::AtLeast(t) => x >= t,
            Self::AtMost(t) => x <= t,
        }
    }

    fn text(self, unit: &str) -> String {
        match self {
            Self::AtLeast(t) => format!("≥ {}{unit}", num(t)),
            Self::AtMost(t) => format!("≤ {}{unit}", num(t)),
        }
    }
}

/// A comparison with a same-run baseline (`ratio`) or with an absolute target.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Check {
    against: String,
    ratio: Option<f64>,
    goal: Option<Goal>,
    meets: Option<bool>,
    #[serde(skip)]
    unit: String,
}

impl Check {
    /// `ratio` × the baseline `against`, optionally with a target ratio.
    pub(crate) fn ratio(against: impl Into<String>, ratio: f64, goal: Option<Goal>) -> Self {
        Self {
            against: against.into(),
            ratio: Some(ratio),
            goal,
            meets: goal.map(|g| g.met_by(ratio)),
            unit: "×".into(),
        }
    }

    /// The row's own value against an absolute target in `unit`.
    pub(crate) fn absolute(value: f64, goal: Goal, unit: &str) -> Self {
        Self {
            against: "target".into(),
            ratio: None,
            goal: Some(goal),
            meets: Some(goal.met_by(value)),
            unit: format!(" {unit}"),
        }
    }

    fn text(&self) -> String {
        let verdict = match self.meets {
            Some(true) => ": meets",
            Some(false) => ": **misses**",
            None => "",
        };
        let goal = self.goal.map(|g| g.text(&self.unit));
        match (self.ratio, goal) {
            (Some(r), Some(g)) => format!("{r:.2}× {} (target {g}{verdict})", self.against),
            (Some(r), None) => format!("{r:.2}× {}", self.against),
            (None, Some(g)) => format!("target {g}{verdict}"),
            (None, None) => String::new(),
        }
    }
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    section: &'static str,
    name: String,
    /// Items the figure was measured over.
    n: Option<usize>,
    value: f64,
    unit: &'static str,
    checks: Vec<Check>,
    note: Option<String>,
    cpu: Option<Usage>,
}

impl Row {
    /// A figure of `section`.
    pub(crate) fn new(section: &'static str, name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self { section, name: name.into(), n: None, value, unit, checks: Vec::new(), note: None, cpu: None }
    }

    /// Sets the number of items measured.
    pub(crate) fn n(mut self, n: usize) -> Self {
        self.n = Some(n);
        self
    }

    /// Adds a comparison.
    pub(crate) fn check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// Adds a free-text note.
    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Attaches the CPU used while measuring.
    pub(crate) fn cpu(mut self, usage: Usage) -> Self {
        self.cpu = Some(usage);
        self
    }

    fn cells(&self) -> [String; 4] {
        let mut notes: Vec<String> = self.checks.iter().map(Check::text).collect();
        notes.extend(self.note.clone());
        if let (Some(cpu), Some(n)) = (&self.cpu, self.n) {
            notes.push(cpu.per_thousand(n));
        }
        [
            self.name.clone(),
            self.n.map(|n| num(n as f64)).unwrap_or_default(),
            format!("{} {}", num(self.value), self.unit),
            notes.join("; "),
        ]
    }
}

/// Percentiles of one latency histogram.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Latency {
    name: String,
    n: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// `(p50, p99)` targets in µs.
    target_us: Option<(u64, u64)>,
    meets: Option<bool>,
    /// Messages committed but never observed (should be 0).
    missing: usize,
    /// Baseline ratio, machine load and the like.
    note: Option<String>,
}

impl Latency {
    fn cells(&self) -> [String; 7] {
        let target = match (self.target_us, self.meets) {
            (Some((a, b)), Some(m)) => {
                format!("p50 ≤ {}, p99 ≤ {}: {}", ms(a), ms(b), if m { "meets" } else { "**misses**" })
            }
            _ => String::new(),
        };
        let missing = if self.missing > 0 { format!(" ({} not seen)", self.missing) } else { String::new() };
        let notes: Vec<String> =
            [target, self.note.clone().unwrap_or_default()].into_iter().filter(|s| !s.is_empty()).collect();
        [
            self.name.clone(),
            format!("{}{missing}", num(self.n as f64)),
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            notes.join("; "),
        ]
    }
}

/// Every figure of a run.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    machine: Option<Machine>,
    command: String,
    elapsed_s: f64,
    rows: Vec<Row>,
    latency: Vec<Latency>,
}

const ROW_HEADER: &str = "| scenario | N | value | vs baseline / target |\n|---|---|---|---|";
const LATENCY_HEADER: &str = "| path | n | p50 | p99 | p99.9 | max | target / notes |\n|---|---|---|---|---|---|---|";

impl Report {
    /// A report for the run started by `command`.
    pub(crate) fn new(command: String) -> Self {
        Self { command, ..Self::default() }
    }

    /// Records the machine description.
    pub(crate) fn machine(&mut self, machine: Machine) {
        self.machine = Some(machine);
    }

    /// Records the run's duration.
    pub(crate) fn elapsed(&mut self, elapsed: Duration) {
        self.elapsed_s = elapsed.as_secs_f64();
    }

    /// Prints and records a row.
    pub(crate) fn add(&mut self, row: Row) {
        println!("| {} | {} |", row.section, row.cells().join(" | "));
        self.rows.push(row);
    }

    /// Prints and records the percentiles of `h` (µs); targets `(p50, p99)` in µs.
    pub(crate) fn latency(
        &mut self,
        name: &str,
        h: &Histogram<u64>,
        missing: usize,
        target_us: Option<(u64, u64)>,
        note: Option<String>,
    ) {
        let (p50, p99) = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
        let row = Latency {
            name: name.to_owned(),
            n: h.len(),
            p50_us: p50,
            p99_us: p99,
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            target_us,
            meets: target_us.map(|(a, b)| p50 <= a && p99 <= b),
            missing,
            note,
        };
        println!("| latency | {} |", row.cells().join(" | "));
        self.latency.push(row);
    }

    /// The report as pretty JSON.
    pub(crate) fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The generated part of `docs/benchmarks.md`: machine, command and one table per section.
    pub(crate) fn markdown(&self) -> String {
        let mut md = String::new();
        if let Some(m) = &self.machine {
            let _ = writeln!(md, "## Machine and command\n\n{}", m.markdown());
        }
        let _ = writeln!(md, "```sh\n{}\n```\n\nRun time: {:.0} s.\n", self.command, self.elapsed_s);
        let sections = [
            ("store", "Store claim+complete against raw SQL"),
            ("drain", "Backlog drain and its baselines"),
            ("keys", "Backlog drain with per-key order"),
            ("latency", "Latency"),
            ("writer", "Writer overhead"),
            ("idle", "Idle cost"),
        ];
        for (section, title) in sections {
            if section == "latency" {
                if !self.latency.is_empty() {
                    let _ = writeln!(md, "### {title}\n\n{LATENCY_HEADER}");
                    for l in &self.latency {
                        let _ = writeln!(md, "| {} |", l.cells().join(" | "));
                    }
                    md.push('\n');
                }
                continue;
            }
            let rows: Vec<&Row> = self.rows.iter().filter(|r| r.section == section).collect();
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(md, "### {title}\n\n{ROW_HEADER}");
            for r in rows {
                let _ = writeln!(md, "| {} |", r.cells().join(" | "));
            }
            md.push('\n');
        }
        md
    }
}

/// Prints the header of the live table.
pub(crate) fn print_header() {
    println!("| section | scenario | N | value | vs baseline / target |\n|---|---|---|---|---|");
}

/// Replaces the text between `<!-- bench:begin -->` and `<!-- bench:end -->` in `doc` with
/// `generated`, keeping the hand-written text around it; appends the block when missing.
pub(crate) fn splice(doc: &str, generated: &str) -> String {
    const BEGIN: &str = "<!-- bench:begin (generated by outbox-bench; edits here are overwritten) -->";
    const END: &str = "<!-- bench:end -->";
    let block = format!("{BEGIN}\n{}\n{END}", generated.trim_end());
    match (doc.find("<!-- bench:begin"), doc.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &doc[..b], &doc[e + END.len()..]),
        _ => format!("{}\n\n{block}\n", doc.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_rates() {
        assert_eq!(rate(1000, Duration::from_millis(500)), 2000.0);
        assert_eq!(num(1_234_567.8), "1,234,568");
        assert_eq!(num(999.0), "999");
        assert_eq!(num(1000.0), "1,000");
        assert_eq!(num(-52_000.0), "-52,000");
        assert_eq!(num(0.256), "0.26");
    }

    #[test]
    fn checks_read_as_ratios_and_targets() {
        let c = Check::ratio("raw SQL", 0.75, Some(Goal::AtLeast(0.6)));
        assert_eq!(c.text(), "0.75× raw SQL (target ≥ 0.60×: meets)");
        let c = Check::ratio("hand-written", 1.2, Some(Goal::AtMost(1.15)));
        assert_eq!(c.text(), "1.20× hand-written (target ≤ 1.15×: **misses**)");
        let c = Check::absolute(61_000.0, Goal::AtLeast(60_000.0), "msg/s");
        assert_eq!(c.text(), "target ≥ 60,000 msg/s: meets");
        let row = Row::new("drain", "x", 52_000.0, "msg/s").n(1000).check(c);
        assert_eq!(row.cells()[2], "52,000 msg/s");
    }

    #[test]
    fn splicing_keeps_hand_written_text() {
        let doc = "# B\n\nintro\n\n<!-- bench:begin (old) -->\nold\n<!-- bench:end -->\n\n## Analysis\nkept\n";
        let out = splice(doc, "new table\n");
        assert!(out.contains("intro") && out.contains("new table") && out.contains("## Analysis\nkept"));
        assert!(!out.contains("old\n"));
        let appended = splice("# B\n", "t");
        assert!(appended.starts_with("# B\n\n<!-- bench:begin") && appended.ends_with("<!-- bench:end -->\n"));
    }
}
