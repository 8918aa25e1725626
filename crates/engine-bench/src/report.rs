//! Plain-text rendering of a [`Report`].

use std::fmt::Write as _;

use crate::scenarios::CommitRun;
use crate::{EngineReport, Report};

type Row = (&'static str, fn(&EngineReport) -> String);

fn rate(x: f64) -> String {
    format!("{x:.0}")
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// Microseconds to two places, or "n/a" where they could not be read.
fn us(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".to_owned(), |us| format!("{us:.2}"))
}

fn cpu(run: &CommitRun) -> String {
    us(run.cpu_us_per_op)
}

fn amp(run: &CommitRun) -> String {
    run.write_amp
        .map_or_else(|| "n/a".to_owned(), |w| format!("{w:.1}x"))
}

const ROWS: &[Row] = &[
    ("A  1/commit: commits/s", |e| rate(e.single.commits_per_sec)),
    ("A  1/commit: p50 ms", |e| ms(e.single.p50_us)),
    ("A  1/commit: p99 ms", |e| ms(e.single.p99_us)),
    ("A  1/commit: write amp", |e| amp(&e.single)),
    ("A  1/commit: CPU us per record", |e| cpu(&e.single)),
    ("B  64/commit: records/s", |e| rate(e.group64.ops_per_sec)),
    ("B  64/commit: p50 ms", |e| ms(e.group64.p50_us)),
    ("B  64/commit: write amp", |e| amp(&e.group64)),
    ("B  64/commit: CPU us per record", |e| cpu(&e.group64)),
    ("B  512/commit: records/s", |e| rate(e.group512.ops_per_sec)),
    ("B  512/commit: p50 ms", |e| ms(e.group512.p50_us)),
    ("B  512/commit: write amp", |e| amp(&e.group512)),
    ("B  512/commit: CPU us per record", |e| cpu(&e.group512)),
    ("C  mixed 64: ops/s", |e| rate(e.mixed64.ops_per_sec)),
    ("C  mixed 64: p50 ms", |e| ms(e.mixed64.p50_us)),
    ("C  mixed 64: write amp", |e| amp(&e.mixed64)),
    ("C  mixed 64: CPU us per op", |e| cpu(&e.mixed64)),
    ("D  load (10k/commit): records/s", |e| {
        rate(e.load_scan.load.ops_per_sec)
    }),
    ("D  load: write amp", |e| amp(&e.load_scan.load)),
    ("D  load: CPU us per record", |e| cpu(&e.load_scan.load)),
    ("D  disk after load: MiB", |e| {
        mib(e.load_scan.load.disk_bytes)
    }),
    ("D  disk / logical bytes", |e| {
        format!("{:.2}x", e.load_scan.space_amp)
    }),
    ("D  reopen: s", |e| {
        format!("{:.3}", e.load_scan.reopen_secs)
    }),
    ("D  scan: s per million", |e| {
        format!("{:.3}", e.load_scan.scan_secs_per_million)
    }),
    ("D  reopen+scan: s per million", |e| {
        format!("{:.3}", e.load_scan.restart_secs_per_million)
    }),
    ("D  cold reopen+scan: s per million", |e| {
        e.load_scan
            .cold_restart_secs_per_million
            .map_or_else(|| "n/a".to_owned(), |s| format!("{s:.3}"))
    }),
    ("D  cold, read files first: s/million", |e| {
        e.load_scan
            .cold_prewarmed_restart_secs_per_million
            .map_or_else(|| "n/a".to_owned(), |s| format!("{s:.3}"))
    }),
    ("D  64/commit on loaded: records/s", |e| {
        rate(e.load_scan.group64_loaded.ops_per_sec)
    }),
    ("D  64/commit on loaded: p50 ms", |e| {
        ms(e.load_scan.group64_loaded.p50_us)
    }),
    ("D  64/commit on loaded: write amp", |e| {
        amp(&e.load_scan.group64_loaded)
    }),
    ("D  64/commit on loaded: CPU us/rec", |e| {
        cpu(&e.load_scan.group64_loaded)
    }),
    ("D  delete all (10k/commit): rec/s", |e| {
        rate(e.load_scan.delete_all.ops_per_sec)
    }),
    ("D  disk after delete all: MiB", |e| {
        mib(e.load_scan.delete_all.disk_bytes)
    }),
];

pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "records={} key_order={:?} fjall={:?} seconds={} max_commits={} cpus={} data_dir={} fs={}",
        report.records,
        report.key_order,
        report.fjall,
        report.limits.seconds,
        report.limits.max_commits,
        report.cpus,
        report.data_dir,
        report.filesystem.as_deref().unwrap_or("unknown"),
    );
    let _ = write!(out, "{:<36}", "scenario / metric");
    for e in &report.engines {
        let _ = write!(out, " {:>12}", e.engine);
    }
    out.push('\n');
    for (label, cell) in ROWS {
        let _ = write!(out, "{label:<36}");
        for e in &report.engines {
            let _ = write!(out, " {:>12}", cell(e));
        }
        out.push('\n');
    }
    if let Some(c) = &report.checkpoint {
        let _ = writeln!(
            out,
            "E  checkpoint of {} live records ({} MiB): write {:.3} s per million ({} us CPU per record), \
             open {:.4} s, point read mean {:.1} us / p99 {:.1} us, load {:.3} s per million; \
             indexing a log of as many records: {:.3} s per million",
            c.records,
            mib(c.bytes),
            c.write_secs_per_million,
            us(c.write_cpu_us_per_record),
            c.open_secs,
            c.point_read_mean_us,
            c.point_read_p99_us,
            c.load_secs_per_million,
            c.log_index_secs_per_million,
        );
    }
    out
}
