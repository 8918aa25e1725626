//! The scenarios and the order they run in; each returns rows for the one table.
//!
//! - [`creates`]: durable creates against fjall with a sync per create.
//! - [`serving`]: population, validate and forward auth against the hyper baseline, restart.
//! - [`memory`]: the Redis side of the memory-per-session comparison.
//! - [`redis_mode`]: validate with sessiond on Redis (near cache on) against embedded.
//! - [`revocation`]: a logout on one node, refused on another node and in the agent cache.
//! - [`expiry`]: the expiry sweep's cost with 1M and with 10M sessions held.

mod creates;
mod expiry;
mod floor;
mod memory;
mod redis_mode;
mod revocation;
mod serving;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::load::{self, Outcome, Spec, Workload};
use crate::machine::Monitor;
use crate::report::{Row, Target};

/// `work` on the server at `addr` (process `pid`) as `spec` says, profiled under `--perf`
/// into a file named for `window` (its spaces and commas made dashes:
/// `validate, lookup alone-plain` is `validate-lookup-alone-plain.data`); `who` names the
/// phase and the errors.
pub(crate) async fn closed_loop(
    ctx: &mut Ctx,
    who: &str,
    window: &str,
    spec: &Spec,
    work: Arc<dyn Workload>,
    addr: SocketAddr,
    pid: u32,
) -> Result<Outcome> {
    ctx.phase(who);
    let file = window.replace(", ", "-").replace(' ', "-");
    let perf = ctx.perf(&file, pid, spec)?;
    let out = load::run(addr, spec, work, Some(pid)).await?;
    if let Some(perf) = perf {
        ctx.log(perf.finish()?);
    }
    out.ensure_clean(who)?;
    Ok(out)
}

/// How often sessiond writes touches with the default policy.
fn touch_flush_window() -> Duration {
    sessiond_core::Policy::default().touch_flush_window()
}

/// How a run from [`Ctx::touching_spec`] was measured, for its rows.
pub fn touching_note(spec: &Spec) -> String {
    format!(
        "sessiond measured over {:.0} s after {:.0} s of load, whole touch-flush windows (the \
         default policy's {:.0} s), so the batched touch writes are in its figures",
        spec.duration.as_secs_f64(),
        spec.warmup.as_secs_f64(),
        touch_flush_window().as_secs_f64()
    )
}

/// How big and how long.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Live sessions for the serving, restart and memory scenarios.
    pub sessions: u64,
    pub connections: usize,
    pub warmup: Duration,
    /// The measured window of every load run.
    pub duration: Duration,
    /// Scenario groups to run; empty means all.
    pub only: Vec<Group>,
    /// Where to write a `perf` profile of each measured sessiond window, if anywhere.
    pub perf: Option<PathBuf>,
    /// Tiny sizes everywhere: checks that everything runs, measures nothing.
    pub smoke: bool,
}

/// The scenario groups `--only` can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// Population, validate, forward auth, restart, sessiond's memory.
    Serving,
    /// Durable creates against a sync per create.
    Creates,
    /// Redis's memory for the same sessions.
    Memory,
    /// Validate with sessiond on Redis, near cache on, against embedded.
    Redis,
    /// A logout seen on another node and in the agent cache.
    Revocation,
    /// The expiry sweep with 1M and 10M held, in-process.
    Expiry,
}

impl Settings {
    fn runs(&self, g: Group) -> bool {
        self.only.is_empty() || self.only.contains(&g)
    }
}

/// What every scenario needs.
pub struct Ctx {
    /// The `sessiond` binary under test.
    pub bin: PathBuf,
    /// The sessiond-bench binary whose hidden `baseline-server` and `plain-server` are
    /// started: this one, or one built the way `bin` was (`pgo.rs`).
    pub servers: PathBuf,
    pub settings: Settings,
    /// Where data dirs go (under the target dir: the same filesystem for every engine).
    pub tmp: PathBuf,
    /// Lines for the report's "along the way".
    pub log: Vec<String>,
    pub monitor: Monitor,
}

impl Ctx {
    /// With `--perf`, starts recording sessiond (`pid`) through one load window of `spec`,
    /// into `<dir>/<name>.data`.
    pub fn perf(&self, name: &str, pid: u32, spec: &Spec) -> Result<Option<crate::procs::Perf>> {
        self.settings
            .perf
            .as_deref()
            .map(|dir| crate::procs::Perf::record(dir, name, pid, spec.warmup + spec.duration))
            .transpose()
    }

    /// A load run's shape from the settings.
    pub fn spec(&self) -> Spec {
        Spec {
            connections: self.settings.connections,
            warmup: self.settings.warmup,
            duration: self.settings.duration,
            // A bound on count as well as time: far above what 2 cores can answer.
            max_requests: 500_000_000,
            rate: None,
        }
    }

    /// A load run on sessiond that touches sessions (validate, forward auth). Touches
    /// reach the store in one batch every flush window (60 s with the default policy), so
    /// the run warms up for at least a window and measures whole windows: the measured
    /// window then holds that write at its steady size, never none of it. The smoke pass
    /// keeps its short spec.
    pub fn touching_spec(&self) -> Spec {
        let mut spec = self.spec();
        if !self.settings.smoke {
            let window = touch_flush_window();
            let windows = (spec.duration.as_secs_f64() / window.as_secs_f64())
                .ceil()
                .max(1.0);
            spec.warmup = spec.warmup.max(window);
            spec.duration = window.mul_f64(windows);
        }
        spec
    }

    pub fn phase(&mut self, name: &str) {
        println!("-- {name}");
        self.monitor.phase(name);
    }

    pub fn log(&mut self, line: String) {
        println!("   {line}");
        self.log.push(line);
    }

    /// A fresh directory under [`Ctx::tmp`], removed when dropped.
    pub fn tempdir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        std::fs::create_dir_all(&self.tmp)
            .with_context(|| format!("creating {}", self.tmp.display()))?;
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.tmp)
            .with_context(|| format!("a temp dir in {}", self.tmp.display()))
    }
}

/// Runs every implemented scenario; a scenario that fails becomes a `FAILED` row and the
/// others still run.
pub async fn run_all(ctx: &mut Ctx) -> Vec<Row> {
    let mut rows = Vec::new();
    let n = crate::report::num(ctx.settings.sessions as f64);
    let serving = if ctx.settings.runs(Group::Serving) {
        Some(serving::run(ctx).await)
    } else {
        None
    };
    let creates = if ctx.settings.runs(Group::Creates) {
        Some(creates::run(ctx).await)
    } else {
        None
    };
    let redis = if ctx.settings.runs(Group::Memory) {
        memory::run(ctx).await
    } else {
        Ok(None)
    };
    let redis_mode = if ctx.settings.runs(Group::Redis) {
        Some(redis_mode::run(ctx).await)
    } else {
        None
    };
    let revocation = if ctx.settings.runs(Group::Revocation) {
        Some(revocation::run(ctx).await)
    } else {
        None
    };
    // Last: it leaves gigabytes being freed on a thread of its own.
    let expiry = if ctx.settings.runs(Group::Expiry) {
        Some(expiry::run(ctx).await)
    } else {
        None
    };
    ctx.phase("done");
    let mut memory_row = None;
    match serving {
        None => {}
        Some(Ok(s)) => {
            rows.extend(s.validate);
            rows.extend(s.forward);
            rows.extend(s.restart);
            memory_row = Some(s.bytes_per_session);
        }
        Some(Err(e)) => rows.push(Row::failed("validate, forward auth, restart", &e)),
    }
    match creates {
        None => {}
        Some(Ok(r)) => rows.extend(r),
        Some(Err(e)) => rows.push(Row::failed("durable creates", &e)),
    }
    let label = format!("memory per live session, {n} sessions");
    match (memory_row, redis) {
        (Some(ours), Ok(Some(r))) => rows.push(
            Row::measured(
                &label,
                "bytes",
                ours,
                Some((r.bytes_per_session, &format!("redis {}", r.version))),
                Target::RatioAtMost(0.75),
            )
            .note("sessiond: VmRSS after population minus before; Redis: used_memory delta"),
        ),
        (_, Ok(None)) if ctx.settings.runs(Group::Memory) => rows.push(Row::not_measured(
            &label,
            Target::RatioAtMost(0.75),
            "redis-server is not installed",
        )),
        (_, Err(e)) => rows.push(Row::failed(&label, &e)),
        (None, Ok(Some(_))) | (_, Ok(None)) => {}
    }
    for (what, outcome) in [
        ("validate in Redis mode", redis_mode),
        (
            "revocation on another node / in the agent cache",
            revocation,
        ),
        ("expiry sweep", expiry),
    ] {
        match outcome {
            None => {}
            Some(Ok(r)) => rows.extend(r),
            Some(Err(e)) => rows.push(Row::failed(what, &e)),
        }
    }
    rows
}
