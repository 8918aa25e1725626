//! `sessiond-engine-bench`: measures the two candidate embedded durable engines for sessiond's
//! store, [redb](https://docs.rs/redb) 4 and [fjall](https://docs.rs/fjall) 3, on this machine,
//! and beside them a log of sessiond's own (`log_engine.rs`), the smallest durable store that
//! could take fjall's place on the create path, not one sessiond could ship as it is.
//!
//! sessiond keeps every live session in memory and uses the engine only as a durable table to
//! rebuild memory on restart: 16-byte session ids map to ~200-byte postcard values in a
//! `sessions` table, and ended sessions move to a `tombstones` table. Every commit here is
//! durable (fsync before it returns: redb `Durability::Immediate`, fjall
//! `PersistMode::SyncAll`, the log an `fdatasync`). Every engine runs the same scenario code
//! and byte-identical data, and each commit loop reports the process's CPU time per record
//! (every thread, background flushes included):
//!
//! * **A** one record per durable commit (commits/s, latency percentiles);
//! * **B** group commit of 64 and of 512 records per durable commit (records/s);
//! * **C** mixed batches of 64 ops: 32 creates + 32 ends (delete from `sessions` and insert
//!   into `tombstones` in the same transaction);
//! * **D** bulk-load N records, close, then reopen and scan every key and value of both tables
//!   (the restart path), group commits of 64 on top of the N loaded records, and deleting all N;
//!   with on-disk size (allocated bytes, as `du`) and write amplification (bytes the engine
//!   handed to `write`/`pwrite`, from `wchar` in `/proc/self/io`, over logical key + value
//!   bytes).
//!
//! With the log, also **E**: the checkpoint a store built on the log would write, measured on
//! its own (`checkpoint.rs`): writing N live records sorted by id, opening it for point reads,
//! one point read, and reading it all back.
//!
//! Every loop is bounded by `--seconds` and `--max-commits`. Each scenario uses a fresh
//! directory under the data dir, removed afterwards.

mod checkpoint;
mod engine;
mod fjall_engine;
mod log_engine;
mod redb_engine;
mod report;
mod scenarios;
mod sys;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::engine::Engine;
use crate::scenarios::{KeyOrder, Limits, LoadScan, Rng};

const DEFAULT_DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target-engine/tmp");

#[derive(Debug, Parser)]
#[command(about = "Measure redb, fjall and a plain log as sessiond's durable session table")]
struct Args {
    /// Records to bulk-load and scan in scenario D.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Time bound of each timed commit loop, in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Count bound of each timed commit loop.
    #[arg(long, default_value_t = 2000)]
    max_commits: u64,
    /// Tiny sizes (2,000 records, 0.3 s, 200 commits) to check that everything works.
    #[arg(long)]
    smoke: bool,
    /// Which engines to run.
    #[arg(long, value_enum, default_value_t = Which::All)]
    engine: Which,
    /// Parent of the per-run temporary directories (must be a real disk, not tmpfs).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Also measure restart after dropping the OS page cache (Linux, root; affects the whole
    /// machine's cache).
    #[arg(long)]
    drop_caches: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// How keys are made: random (as sessiond's ids are) or starting with a clock.
    #[arg(long, value_enum, default_value_t = KeyOrder::Random)]
    key_order: KeyOrder,
    /// fjall's memtable size in MiB (fjall's default: 64; sessiond's store: 16).
    #[arg(long)]
    fjall_memtable_mib: Option<u64>,
    /// Tables in fjall's level 0 that start a compaction (fjall's default: 4).
    #[arg(long, value_parser = clap::value_parser!(u8).range(2..20))]
    fjall_l0_threshold: Option<u8>,
    /// Keep values of at least this many bytes in fjall's blob files (key-value separation).
    #[arg(long)]
    fjall_kv_separation: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    All,
    Redb,
    Fjall,
    Log,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub records: usize,
    pub key_order: KeyOrder,
    pub fjall: fjall_engine::Tuning,
    pub limits: Limits,
    pub cpus: usize,
    pub data_dir: String,
    pub filesystem: Option<String>,
    pub drop_caches: bool,
    pub engines: Vec<EngineReport>,
    /// Scenario E, run with the log.
    pub checkpoint: Option<checkpoint::CheckpointRun>,
}

#[derive(Debug, Serialize)]
pub struct EngineReport {
    pub engine: &'static str,
    pub single: scenarios::CommitRun,
    pub group64: scenarios::CommitRun,
    pub group512: scenarios::CommitRun,
    pub mixed64: scenarios::CommitRun,
    pub load_scan: LoadScan,
}

fn run_engine<E: Engine>(args: &Args, base: &Path, limits: Limits) -> Result<EngineReport> {
    let records = args.records;
    let name = E::NAME;
    // Same seed for every engine: identical keys and values.
    let mut rng = Rng::with_order(0x5e55_10d0, args.key_order);
    eprintln!("[{name}] A: one record per durable commit");
    let single = scenarios::single::<E>(base, limits, &mut rng)?;
    eprintln!("[{name}] B: group commit of 64");
    let group64 = scenarios::group::<E>(base, limits, &mut rng, 64)?;
    eprintln!("[{name}] B: group commit of 512");
    let group512 = scenarios::group::<E>(base, limits, &mut rng, 512)?;
    eprintln!("[{name}] C: mixed 32 creates + 32 ends per commit");
    let mixed64 = scenarios::mixed::<E>(base, limits, &mut rng)?;
    eprintln!("[{name}] D: load {records}, reopen + scan, group commit on loaded, delete all");
    let load_scan = scenarios::load_scan::<E>(base, records, limits, &mut rng, args.drop_caches)?;
    Ok(EngineReport {
        engine: name,
        single,
        group64,
        group512,
        mixed64,
        load_scan,
    })
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.records = 2_000;
        args.seconds = 0.3;
        args.max_commits = 200;
    }
    let limits = Limits {
        seconds: args.seconds,
        max_commits: args.max_commits,
    };
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let filesystem = sys::filesystem_of(&data_dir);
    if filesystem
        .as_deref()
        .is_some_and(|f| f.starts_with("tmpfs"))
    {
        eprintln!(
            "warning: {} is tmpfs; fsync numbers are meaningless",
            data_dir.display()
        );
    }
    let fjall = fjall_engine::Tuning {
        memtable_mib: args.fjall_memtable_mib,
        l0_threshold: args.fjall_l0_threshold,
        kv_separation: args.fjall_kv_separation,
    };
    fjall_engine::tune(fjall);
    let mut engines = Vec::new();
    let runs = |which| [Which::All, which].contains(&args.engine);
    if runs(Which::Redb) {
        engines.push(run_engine::<redb_engine::Redb>(&args, &data_dir, limits)?);
    }
    if runs(Which::Fjall) {
        engines.push(run_engine::<fjall_engine::Fjall>(&args, &data_dir, limits)?);
    }
    let mut checkpoint = None;
    if runs(Which::Log) {
        engines.push(run_engine::<log_engine::Log>(&args, &data_dir, limits)?);
        eprintln!("[log] E: checkpoint of {} live records", args.records);
        let mut rng = Rng::new(0xc4ec_4901);
        checkpoint = Some(checkpoint::run(&data_dir, args.records, &mut rng)?);
    }
    let report = Report {
        records: args.records,
        key_order: args.key_order,
        fjall,
        limits,
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        data_dir: data_dir.display().to_string(),
        filesystem,
        drop_caches: args.drop_caches,
        engines,
        checkpoint,
    };
    print!("{}", report::table(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
