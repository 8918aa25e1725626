//! `sessiond-bench`: measures sessiond side by side with a baseline in the same run and
//! prints the ratios (issue 5). `all` builds sessiond, starts every server on loopback, runs
//! each scenario for a bounded time, stops everything, prints one table, writes it as JSON
//! and into `docs/benchmarks.md`.
//!
//! Modules:
//! - [`scenarios`]: what is measured, in order, and the rows it yields;
//! - [`load`]: the HTTP/1.1 keep-alive load generator; [`workloads`]: what it sends;
//! - [`servers`]: sessiond and the baselines as child processes; [`baseline`]: the baseline
//!   server itself (the hidden `baseline-server` subcommand); [`plain`]: the plain session
//!   server (`plain-server`), the work alone;
//! - [`procs`]: process guards and `/proc` readings; [`machine`]: the machine and the
//!   "is anyone compiling?" monitor; [`report`]: the table, JSON and docs;
//! - [`pgo`]: the profile-guided build of sessiond and of the baseline servers that a full
//!   run measures.

mod baseline;
mod load;
mod machine;
mod pgo;
mod plain;
mod procs;
mod report;
mod scenarios;
mod servers;
mod workloads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::machine::{Machine, Monitor};
use crate::report::{Report, Verdict};
use crate::scenarios::{Ctx, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "sessiond-bench",
    about = "Benchmarks sessiond against baselines in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every implemented scenario and print the table.
    All(AllArgs),
    /// Build sessiond with profile-guided optimisation, the build `all` measures, and
    /// print where it is (`target/pgo/use/<host>/release/sessiond`).
    Pgo,
    /// The baseline HTTP server (started by `all`; not for people).
    #[command(hide = true)]
    BaselineServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Answer `POST`s as durable creates, group-committed to this file.
        #[arg(long)]
        journal: Option<PathBuf>,
    },
    /// The plain session server (started by `all`; not for people).
    #[command(hide = true)]
    PlainServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Sessions made at start (their tokens are derived from their index).
        #[arg(long)]
        sessions: u64,
        /// The agent key validate requests must present.
        #[arg(long)]
        agent_key: String,
    },
}

#[derive(Debug, clap::Args)]
struct AllArgs {
    /// Tiny populations and ~1 s of load: checks that everything runs, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Live sessions for validate, forward auth, restart and memory (e.g. 10000000).
    #[arg(long)]
    sessions: Option<u64>,
    /// Concurrent keep-alive connections of every load run.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds measured per load run.
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of unmeasured load before each window.
    #[arg(long)]
    warmup: Option<f64>,
    /// Where to write the table as JSON (default: target/bench/results.json, or
    /// target/bench/smoke.json with --smoke).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Do not rewrite the results section of docs/benchmarks.md (implied by --smoke).
    #[arg(long)]
    no_docs: bool,
    /// Longest wait, in seconds, for other rustc/cargo processes to finish before measuring.
    #[arg(long, default_value_t = 300)]
    max_wait: u64,
    /// Run only these scenario groups (comma-separated); implies --no-docs.
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<scenarios::Group>,
    /// Record a `perf` profile of sessiond during each measured load window into this
    /// directory (`perf report -i DIR/<window>.data`), and of the baseline server during
    /// its window (`DIR/<window>-baseline.data`); needs `perf` on PATH.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Measure the plain release build. Without it, a release run that is not `--smoke`
    /// measures sessiond and the baseline servers built with profile-guided optimisation
    /// (crates/bench/src/pgo.rs), the way a release of sessiond is built.
    #[arg(long)]
    no_pgo: bool,
    /// Measure this sessiond binary instead of building one (the baseline servers are this
    /// benchmark's own).
    #[arg(long, conflicts_with = "no_pgo")]
    sessiond: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::BaselineServer { listen, journal } => {
            baseline::run(listen, journal.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        Command::PlainServer {
            listen,
            sessions,
            agent_key,
        } => plain::run(listen, sessions, &agent_key).map(|()| ExitCode::SUCCESS),
        Command::All(args) => all(args),
        Command::Pgo => pgo::build().map(|build| {
            println!("{}", build.sessiond.display());
            ExitCode::SUCCESS
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sessiond-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn all(args: AllArgs) -> Result<ExitCode> {
    let settings = Settings {
        sessions: args
            .sessions
            .unwrap_or(if args.smoke { 2_000 } else { 1_000_000 })
            .max(1),
        connections: args.connections.max(1),
        warmup: secs(args.warmup, if args.smoke { 0.25 } else { 2.0 }),
        duration: secs(args.duration, if args.smoke { 1.0 } else { 10.0 }),
        only: args.only.clone(),
        perf: args.perf.clone(),
        smoke: args.smoke,
    };
    let root = procs::workspace_root();
    let out_dir = procs::target_dir().join("bench");
    let json = args.json.clone().unwrap_or_else(|| {
        out_dir.join(if args.smoke {
            "smoke.json"
        } else {
            "results.json"
        })
    });
    let build = build(&args)?;
    println!("sessiond under test: {}", build.sessiond.display());
    println!("baseline servers: {}", build.servers.display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let machine = Machine::read();
    if !args.smoke {
        let quiet = runtime.block_on(machine::wait_for_quiet(
            Duration::from_secs(15),
            Duration::from_secs(args.max_wait),
        ));
        if !quiet {
            println!("other builds are still running; measuring anyway (noted in the report)");
        }
    }
    let mut ctx = Ctx {
        bin: build.sessiond,
        servers: build.servers,
        settings,
        tmp: out_dir.join("tmp"),
        log: Vec::new(),
        monitor: Monitor::start(),
    };
    let started = std::time::Instant::now();
    // Stopped from outside, the run's future is dropped here, and with it the guard of
    // every server it started, which kills it: without this, SIGTERM or Ctrl-C would end
    // the process before any guard ran and leave the servers running.
    let rows = runtime.block_on(async {
        tokio::select! {
            rows = scenarios::run_all(&mut ctx) => Ok(rows),
            signal = interrupted() => Err(anyhow::anyhow!("stopped by {signal}; the servers it started are stopped")),
        }
    })?;
    let took = started.elapsed();
    let report = Report {
        machine,
        command: command_line(),
        build: build.description,
        smoke: args.smoke,
        build_overlaps: ctx.monitor.overlaps(),
        environment: machine::tuning_environment(std::env::vars_os()),
        log: ctx.log,
        rows,
    };
    println!("\nscenarios took {:.1} s in all", took.as_secs_f64());
    println!("build: {}", report.build);
    print!("{}", report::plain(&report.rows));
    if !report.build_overlaps.is_empty() {
        println!(
            "note: other rustc/cargo ran during: {}",
            report.build_overlaps.join(", ")
        );
    }
    if !report.environment.is_empty() {
        println!(
            "note: ran with {} in the environment, which every server inherits; these \
             figures are not those of the defaults",
            report.environment.join(" ")
        );
    }
    report.write_json(&json)?;
    println!("wrote {}", json.display());
    if !args.smoke && !args.no_docs && args.only.is_empty() && args.perf.is_none() {
        let docs = root.join("docs").join("benchmarks.md");
        report.write_docs(&docs)?;
        println!("wrote {}", docs.display());
    }
    let failed = report.rows.iter().any(|r| r.meets == Verdict::Failed);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What to measure: the binary given, a profile-guided build (release runs that are not
/// smoke passes, unless `--no-pgo`; the plain build, loudly, when PGO cannot be done here),
/// or the plain build of this benchmark's own profile.
fn build(args: &AllArgs) -> Result<pgo::Build> {
    let this = std::env::current_exe().context("locating the benchmark binary")?;
    if let Some(sessiond) = &args.sessiond {
        return Ok(pgo::Build {
            sessiond: sessiond.clone(),
            servers: this,
            description: format!("given: {}", sessiond.display()),
        });
    }
    let release = !cfg!(debug_assertions);
    let mut description = String::from(if release { "release" } else { "dev profile" });
    if release && !args.smoke && !args.no_pgo {
        match pgo::build() {
            Ok(build) => return Ok(build),
            Err(e) => {
                println!(
                    "\n*** PGO is not possible here: {e:#}\n*** measuring the plain release \
                     build, not what a release of sessiond is built as\n"
                );
                description = format!("release, not profile-guided (PGO failed: {e:#})");
            }
        }
    }
    println!("building sessiond ...");
    Ok(pgo::Build {
        sessiond: procs::build_sessiond()?,
        servers: this,
        description,
    })
}

/// Resolves with the signal's name on SIGINT or SIGTERM (never, if they cannot be caught).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn secs(given: Option<f64>, default: f64) -> Duration {
    Duration::from_secs_f64(
        given
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(default),
    )
}

/// The command that reproduces this run.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let release = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    format!("cargo run{release} -p sessiond-bench -- {}", args.join(" "))
}
