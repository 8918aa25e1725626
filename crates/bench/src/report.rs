//! The one results table: printed, written as JSON, and written into the results section
//! of `docs/benchmarks.md` (between the `results:begin`/`results:end` markers).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::machine::Machine;

/// How a figure is judged.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    /// sessiond / baseline must be at least this.
    RatioAtLeast(f64),
    /// sessiond / baseline must be at most this.
    RatioAtMost(f64),
    /// The sessiond figure itself must be at most this (no baseline).
    AtMost(f64),
    /// Reported, no target.
    Report,
}

/// Whether a row meets its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Yes,
    No,
    /// No target: the figure is for reading.
    Reported,
    NotMeasured,
    /// The scenario failed to run; the note says why.
    Failed,
}

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub unit: String,
    pub sessiond: Option<f64>,
    pub baseline: Option<f64>,
    /// What the baseline was.
    pub baseline_name: String,
    pub ratio: Option<f64>,
    pub target: Target,
    pub meets: Verdict,
    pub note: String,
}

impl Row {
    /// A measured row; the ratio and verdict follow from the figures and the target.
    pub fn measured(
        scenario: &str,
        unit: &str,
        sessiond: f64,
        baseline: Option<(f64, &str)>,
        target: Target,
    ) -> Row {
        let ratio = baseline.and_then(|(b, _)| (b > 0.0).then(|| sessiond / b));
        let meets = match (target, ratio) {
            (Target::RatioAtLeast(t), Some(r)) => verdict(r >= t),
            (Target::RatioAtMost(t), Some(r)) => verdict(r <= t),
            (Target::AtMost(t), _) => verdict(sessiond <= t),
            (Target::Report, _) => Verdict::Reported,
            (_, None) => Verdict::NotMeasured,
        };
        Row {
            scenario: scenario.to_owned(),
            unit: unit.to_owned(),
            sessiond: Some(sessiond),
            baseline: baseline.map(|(b, _)| b),
            baseline_name: baseline.map(|(_, n)| n.to_owned()).unwrap_or_default(),
            ratio,
            target,
            meets,
            note: String::new(),
        }
    }

    /// A row for something this version does not measure.
    pub fn not_measured(scenario: &str, target: Target, why: &str) -> Row {
        Row {
            scenario: scenario.to_owned(),
            unit: String::new(),
            sessiond: None,
            baseline: None,
            baseline_name: String::new(),
            ratio: None,
            target,
            meets: Verdict::NotMeasured,
            note: why.to_owned(),
        }
    }

    /// A row for a scenario that failed.
    pub fn failed(scenario: &str, error: &anyhow::Error) -> Row {
        let mut row = Row::not_measured(scenario, Target::Report, &format!("{error:#}"));
        row.meets = Verdict::Failed;
        row
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }
}

fn verdict(ok: bool) -> Verdict {
    if ok { Verdict::Yes } else { Verdict::No }
}

/// A number for people: thousands separated above 1,000, three significant digits below.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.abs() >= 1000.0 {
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn figure(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{} {unit}", num(v)).trim().to_owned())
        .unwrap_or_else(|| "-".into())
}

fn target_text(t: Target, unit: &str) -> String {
    match t {
        Target::RatioAtLeast(r) => format!(">= {r:.2}x"),
        Target::RatioAtMost(r) => format!("<= {r:.2}x"),
        Target::AtMost(v) => format!("<= {} {unit}", num(v)),
        Target::Report => "reported".into(),
    }
}

fn meets_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Yes => "yes",
        Verdict::No => "NO",
        Verdict::Reported => "-",
        Verdict::NotMeasured => "not measured yet",
        Verdict::Failed => "FAILED",
    }
}

/// The table's cells, one `Vec` per row, header first.
fn cells(rows: &[Row]) -> Vec<[String; 6]> {
    let mut out = vec![[
        "scenario".to_owned(),
        "sessiond".to_owned(),
        "baseline".to_owned(),
        "ratio".to_owned(),
        "target".to_owned(),
        "meets?".to_owned(),
    ]];
    for r in rows {
        let baseline = match (&r.baseline, r.baseline_name.as_str()) {
            (Some(_), name) if !name.is_empty() => {
                format!("{} ({name})", figure(r.baseline, &r.unit))
            }
            _ => figure(r.baseline, &r.unit),
        };
        out.push([
            r.scenario.clone(),
            figure(r.sessiond, &r.unit),
            baseline,
            r.ratio
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            target_text(r.target, &r.unit),
            meets_text(r.meets).to_owned(),
        ]);
    }
    out
}

/// The table as aligned plain text, with notes under it.
pub fn plain(rows: &[Row]) -> String {
    let cells = cells(rows);
    let mut widths = [0usize; 6];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        for (c, w) in row.iter().zip(widths) {
            let _ = write!(out, "{c:<w$}  ");
        }
        out = out.trim_end().to_owned();
        out.push('\n');
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * 5;
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        let _ = writeln!(out, "* {}: {}", r.scenario, r.note);
    }
    out
}

/// The table as Markdown, with notes under it.
pub fn markdown(rows: &[Row]) -> String {
    let cells = cells(rows);
    let mut out = String::new();
    for (i, row) in cells.iter().enumerate() {
        let _ = writeln!(out, "| {} |", row.join(" | "));
        if i == 0 {
            out.push_str("|---|---|---|---|---|---|\n");
        }
    }
    out.push('\n');
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        let _ = writeln!(out, "- {}: {}", r.scenario, r.note);
    }
    out
}

/// Everything a run reports, as written to JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub command: String,
    /// How sessiond and the baseline servers were built ([`crate::pgo::Build`]).
    pub build: String,
    pub smoke: bool,
    /// How each population step went, and anything else worth a line.
    pub log: Vec<String>,
    /// Phases during which another `rustc`/`cargo` was running.
    pub build_overlaps: Vec<String>,
    /// Allocator and runtime variables the servers inherited
    /// ([`crate::machine::tuning_environment`]): figures made with them are not the
    /// defaults'.
    pub environment: Vec<String>,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// The results section of `docs/benchmarks.md`.
    fn section(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "Run on {} with:\n", m.date);
        let _ = writeln!(s, "```sh\n{}\n```\n", self.command);
        let _ = writeln!(
            s,
            "Machine: `nproc` = {}, {:.1} GiB memory, Linux {}, {}.\n",
            m.nproc, m.memory_gib, m.kernel, m.cpu
        );
        let _ = writeln!(s, "Build: {}.\n", self.build);
        if self.build_overlaps.is_empty() {
            s.push_str("No other `rustc` or `cargo` ran during the measurements.\n\n");
        } else {
            let _ = writeln!(
                s,
                "Another engineer's `rustc`/`cargo` was running during: {}. Those figures \
                 shared the 2 cores with a build.\n",
                self.build_overlaps.join(", ")
            );
        }
        if !self.environment.is_empty() {
            let _ = writeln!(
                s,
                "The benchmark ran with {} in its environment, which every server it starts \
                 inherits: these figures are not those of the defaults.\n",
                self.environment
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        s.push_str(&markdown(&self.rows));
        if !self.log.is_empty() {
            s.push_str("\nAlong the way:\n\n");
            for line in &self.log {
                let _ = writeln!(s, "- {line}");
            }
        }
        s
    }

    /// Replaces the text between the results markers of `path` (appends a section if the
    /// markers are missing).
    pub fn write_docs(&self, path: &Path) -> Result<()> {
        const BEGIN: &str = "<!-- results:begin (written by sessiond-bench) -->";
        const END: &str = "<!-- results:end -->";
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let section = format!("{BEGIN}\n{}{END}", self.section());
        let new = match (old.find(BEGIN), old.find(END)) {
            (Some(b), Some(e)) if b < e => {
                format!("{}{section}{}", &old[..b], &old[e + END.len()..])
            }
            _ => format!("{old}\n## Results\n\n{section}\n"),
        };
        std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(1234567.8), "1,234,568");
        assert_eq!(num(999.4), "999");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(0.01234), "0.012");
    }

    #[test]
    fn verdicts_follow_the_target() {
        let r = Row::measured(
            "v",
            "req/s",
            90.0,
            Some((100.0, "b")),
            Target::RatioAtLeast(0.9),
        );
        assert_eq!(r.meets, Verdict::Yes);
        let r = Row::measured(
            "c",
            "us",
            130.0,
            Some((100.0, "b")),
            Target::RatioAtMost(1.25),
        );
        assert_eq!(r.meets, Verdict::No);
        let r = Row::measured("r", "s/M", 0.8, None, Target::AtMost(1.0));
        assert_eq!(r.meets, Verdict::Yes);
    }

    fn report(environment: &[(&str, &str)]) -> Report {
        Report {
            machine: Machine {
                date: "2026-11-23T00:00:00.000Z".into(),
                nproc: 2,
                memory_gib: 24.0,
                kernel: "6.1".into(),
                cpu: "test".into(),
            },
            command: "sessiond-bench all".into(),
            build: "release".into(),
            smoke: false,
            log: Vec::new(),
            build_overlaps: Vec::new(),
            environment: crate::machine::tuning_environment(
                environment.iter().map(|&(k, v)| (k.into(), v.into())),
            ),
            rows: Vec::new(),
        }
    }

    #[test]
    fn a_run_with_allocator_variables_says_so_and_one_without_says_nothing() {
        let tuned = report(&[
            ("PATH", "/usr/bin"),
            ("MIMALLOC_PURGE_DELAY", "-1"),
            ("HOME", "/root"),
            ("LD_PRELOAD", "libfoo.so"),
            ("SESSIOND_LOG", "debug"),
        ]);
        assert_eq!(
            tuned.environment,
            ["LD_PRELOAD=libfoo.so", "MIMALLOC_PURGE_DELAY=-1"]
        );
        assert!(tuned.section().contains(
            "The benchmark ran with `LD_PRELOAD=libfoo.so`, `MIMALLOC_PURGE_DELAY=-1` in \
             its environment, which every server it starts inherits: these figures are not \
             those of the defaults."
        ));
        let plain = report(&[("PATH", "/usr/bin"), ("CARGO_HOME", "/root/.cargo")]);
        assert!(plain.environment.is_empty());
        assert!(!plain.section().contains("environment"));
    }
}
