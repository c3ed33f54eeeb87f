//! The result table: one row per workload, printed as Markdown so it can be
//! pasted into the README as is.

use std::fmt::Write as _;
use std::time::Duration;

use crate::measure::Percentiles;

/// A target from issue 7 and whether this run met it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// How the target reads, e.g. `≥ 0.50`.
    pub goal: String,
    pub met: bool,
}

impl Target {
    /// `value` must be at least `bound`.
    pub fn at_least(value: f64, bound: f64) -> Self {
        Self {
            goal: format!("≥ {bound:.2}"),
            met: value >= bound,
        }
    }

    /// `value` must be at most `bound`; `unit` follows the bound.
    pub fn at_most(value: f64, bound: f64, unit: &str) -> Self {
        Self {
            goal: format!("≤ {bound}{unit}"),
            met: value <= bound,
        }
    }
}

/// One line of the table. Empty cells print as `—`.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub workload: String,
    /// Throughput or size, already formatted (`12,345 ev/s`, `14.2 MiB`).
    pub rate: String,
    pub latency: Option<Percentiles>,
    /// What the row is compared with, already formatted.
    pub baseline: String,
    /// The service's figure over the baseline's (see the row's note).
    pub ratio: Option<f64>,
    pub target: Option<Target>,
}

/// A titled table of rows.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub title: String,
    pub rows: Vec<Row>,
    /// Lines printed under the table.
    pub notes: Vec<String>,
}

impl Table {
    /// A table with no rows yet.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    /// Adds a row and returns it for the caller to print progress.
    pub fn push(&mut self, row: Row) -> &Row {
        eprintln!("  {}", one_line(&row));
        self.rows.push(row);
        self.rows.last().unwrap_or_else(|| unreachable!("just pushed"))
    }

    /// Targets of this table that were missed.
    pub fn missed(&self) -> impl Iterator<Item = &Row> {
        self.rows
            .iter()
            .filter(|r| r.target.as_ref().is_some_and(|t| !t.met))
    }

    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "#### {}\n", self.title);
        out.push_str(
            "| workload | events/s or ops/s | p50 ms | p95 ms | p99 ms | baseline | ratio | target |\n",
        );
        out.push_str("| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |\n");
        for row in &self.rows {
            let (p50, p95, p99) = match row.latency {
                Some(p) => (millis(p.p50), millis(p.p95), millis(p.p99)),
                None => (dash(), dash(), dash()),
            };
            let target = match &row.target {
                Some(t) if t.met => format!("{} met", t.goal),
                Some(t) => format!("{} **missed**", t.goal),
                None => dash(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {p50} | {p95} | {p99} | {} | {} | {target} |",
                row.workload,
                or_dash(&row.rate),
                or_dash(&row.baseline),
                row.ratio.map_or_else(dash, |r| format!("{r:.2}×")),
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n{note}");
        }
        out
    }
}

fn one_line(row: &Row) -> String {
    let latency = row.latency.map_or_else(String::new, |p| {
        format!(
            " p50 {} p95 {} p99 {} ms",
            millis(p.p50),
            millis(p.p95),
            millis(p.p99)
        )
    });
    let ratio = row.ratio.map_or_else(String::new, |r| format!(" ratio {r:.2}"));
    format!("{}: {}{latency}{ratio}", row.workload, row.rate)
}

fn dash() -> String {
    "—".to_owned()
}

fn or_dash(text: &str) -> String {
    if text.is_empty() { dash() } else { text.to_owned() }
}

/// A latency in milliseconds, with two decimals below 10 ms and one above.
pub fn millis(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.1}")
    }
}

/// A rate with thousands separators and a unit: `12,345 ev/s`.
pub fn rate(value: f64, unit: &str) -> String {
    // A rate is finite and non-negative; the saturating float-to-int
    // conversion keeps any other value printable.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "rounded, saturating"
    )]
    let whole = value.round() as u64;
    format!("{} {unit}", grouped(whole))
}

/// `1234567` as `1,234,567`.
pub fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(rate(12_344.6, "ev/s"), "12,345 ev/s");
    }

    #[test]
    fn latencies_print_in_milliseconds() {
        assert_eq!(millis(Duration::from_micros(420)), "0.42");
        assert_eq!(millis(Duration::from_micros(12_340)), "12.3");
    }

    #[test]
    fn targets_say_whether_they_were_met() {
        assert!(Target::at_least(0.6, 0.5).met);
        assert!(!Target::at_least(0.4, 0.5).met);
        assert!(Target::at_most(50.0, 50.0, " ms").met);
        assert_eq!(Target::at_most(1.0, 1.5, "×").goal, "≤ 1.5×");
    }

    #[test]
    fn table_renders_markdown_with_dashes_for_empty_cells() {
        let mut table = Table::new("SQLite");
        table.rows.push(Row {
            workload: "Append 100 × 8".into(),
            rate: rate(5000.0, "ev/s"),
            latency: Some(Percentiles {
                p50: Duration::from_millis(2),
                p95: Duration::from_millis(3),
                p99: Duration::from_millis(4),
            }),
            baseline: "INSERT 10,000 ev/s".into(),
            ratio: Some(0.5),
            target: Some(Target::at_least(0.5, 0.5)),
        });
        table.rows.push(Row {
            workload: "RSS idle".into(),
            rate: mib(20 * 1024),
            ..Row::default()
        });
        let text = table.markdown();
        assert!(text.contains(
            "| Append 100 × 8 | 5,000 ev/s | 2.00 | 3.00 | 4.00 | INSERT 10,000 ev/s | 0.50× | ≥ 0.50 met |"
        ));
        assert!(text.contains("| RSS idle | 20.0 MiB | — | — | — | — | — | — |"));
        assert_eq!(table.missed().count(), 0);
    }
}
