//! The scenarios, generic over [`Engine`] so both candidates run identical code and data.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde::Serialize;

use crate::engine::{Engine, Key, Op};
use crate::sys;

/// Size of a session value (a postcard-serialized session is about this big).
pub const VALUE_LEN: usize = 200;
/// Size of a tombstone value (end time + reason).
pub const TOMBSTONE_LEN: usize = 24;
/// Records per durable commit while bulk-loading scenario D.
const LOAD_BATCH: usize = 10_000;
/// Live sessions present before the mixed scenario starts.
const MIXED_PRELOAD: usize = 10_000;

/// Bounds for every timed commit loop: stop at whichever comes first.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    pub seconds: f64,
    pub max_commits: u64,
}

/// How the keys of a run are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum KeyOrder {
    /// 16 random bytes, as sessiond's ids are today (a 4-byte user tag, then 96 random bits).
    Random,
    /// A 6-byte big-endian clock first, then 10 random bytes: the clock moves on once every
    /// [`KEYS_PER_TICK`] keys, as a millisecond clock would at 40,000 creates per second.
    Time,
}

/// Keys per tick of the clock in [`KeyOrder::Time`].
pub const KEYS_PER_TICK: u64 = 40;

/// Deterministic xorshift generator: every engine gets byte-identical workloads.
pub struct Rng {
    state: u64,
    order: KeyOrder,
    /// Keys made so far (the clock of [`KeyOrder::Time`]).
    keys: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self::with_order(seed, KeyOrder::Random)
    }

    pub fn with_order(seed: u64, order: KeyOrder) -> Self {
        Self {
            state: seed | 1,
            order,
            keys: 0,
        }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    pub fn key(&mut self) -> Key {
        let mut k = [0u8; 16];
        self.fill(&mut k);
        if self.order == KeyOrder::Time {
            let tick = (self.keys / KEYS_PER_TICK).to_be_bytes();
            k[..6].copy_from_slice(&tick[2..]);
        }
        self.keys += 1;
        k
    }

    /// A session-like value: 48 random bytes (ids, token hash) then semi-structured text,
    /// so compression gets roughly what it would get on real postcard output.
    pub fn value(&mut self) -> Vec<u8> {
        let mut v = vec![0u8; 48];
        self.fill(&mut v);
        let n = self.next();
        // Writing into a Vec cannot fail.
        let _ = write!(
            v,
            "u{:08}|10.{}.{}.{}|Mozilla/5.0 (X11; Linux x86_64) sessiond-client/0.1|\
             read write|t{:010}|e{:010}|",
            n % 100_000_000,
            (n >> 8) & 0xff,
            (n >> 16) & 0xff,
            (n >> 24) & 0xff,
            1_790_000_000 + (n >> 32) % 1_000_000,
            1_790_086_400 + (n >> 32) % 1_000_000,
        );
        v.resize(VALUE_LEN, b'.');
        v
    }

    pub fn tombstone(&mut self) -> Vec<u8> {
        let mut t = vec![0u8; TOMBSTONE_LEN];
        self.fill(&mut t);
        t
    }
}

/// An op that owns its bytes; batches are built from these, then borrowed as [`Op`]s.
pub enum OwnedOp {
    Put(Key, Vec<u8>),
    End(Key, Vec<u8>),
    Delete(Key),
}

impl OwnedOp {
    fn as_op(&self) -> Op<'_> {
        match self {
            OwnedOp::Put(key, value) => Op::Put { key, value },
            OwnedOp::End(key, tombstone) => Op::End { key, tombstone },
            OwnedOp::Delete(key) => Op::Delete { key },
        }
    }
}

/// Result of one bounded loop of durable commits.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CommitRun {
    pub commits: u64,
    pub ops: u64,
    /// Time spent inside `commit` calls (batch generation excluded).
    pub commit_secs: f64,
    pub ops_per_sec: f64,
    pub commits_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Key + value bytes the ops asked for.
    pub logical_bytes: u64,
    /// Bytes the engine wrote (`write`/`pwrite`, all threads) from open to close.
    pub written_bytes: Option<u64>,
    /// `written_bytes / logical_bytes`.
    pub write_amp: Option<f64>,
    /// Allocated size of the data directory after close.
    pub disk_bytes: u64,
    /// The process's CPU time over the loop (every thread: the engine's background work
    /// too, and making the records, the same for every engine) per op, in microseconds.
    pub cpu_us_per_op: Option<f64>,
}

/// Sets `run.cpu_us_per_op` from the process's CPU time at the loop's start.
fn set_cpu(run: &mut CommitRun, before: f64) {
    if run.ops > 0 {
        run.cpu_us_per_op = Some((sys::cpu_seconds() - before) * 1e6 / run.ops as f64);
    }
}

/// Runs durable commits of batches from `make_batch` until a limit is hit.
fn commit_loop<E: Engine>(
    engine: &mut E,
    limits: Limits,
    mut make_batch: impl FnMut(&mut Vec<OwnedOp>),
) -> Result<CommitRun> {
    let budget = Duration::from_secs_f64(limits.seconds);
    let cpu_before = sys::cpu_seconds();
    let start = Instant::now();
    let mut run = CommitRun::default();
    let mut latencies = Vec::new();
    let mut batch = Vec::new();
    while run.commits < limits.max_commits && start.elapsed() < budget {
        batch.clear();
        make_batch(&mut batch);
        let ops: Vec<Op<'_>> = batch.iter().map(OwnedOp::as_op).collect();
        run.logical_bytes += ops.iter().map(Op::logical_bytes).sum::<u64>();
        let t = Instant::now();
        engine.commit(&ops)?;
        latencies.push(t.elapsed());
        run.commits += 1;
        run.ops += ops.len() as u64;
    }
    set_cpu(&mut run, cpu_before);
    finish_latencies(&mut run, latencies);
    Ok(run)
}

fn finish_latencies(run: &mut CommitRun, mut latencies: Vec<Duration>) {
    latencies.sort_unstable();
    let total: Duration = latencies.iter().sum();
    run.commit_secs = total.as_secs_f64();
    if run.commit_secs > 0.0 {
        run.ops_per_sec = run.ops as f64 / run.commit_secs;
        run.commits_per_sec = run.commits as f64 / run.commit_secs;
    }
    run.p50_us = percentile_us(&latencies, 0.50);
    run.p99_us = percentile_us(&latencies, 0.99);
    run.max_us = percentile_us(&latencies, 1.0);
}

/// The `p` quantile of `sorted` (ascending), in microseconds; 0 when empty.
pub fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Opens `E` in a fresh directory, runs `body`, closes, and fills in I/O and disk numbers.
fn in_fresh_engine<E: Engine>(
    base: &Path,
    body: impl FnOnce(&mut E) -> Result<CommitRun>,
) -> Result<CommitRun> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-", E::NAME))
        .tempdir_in(base)?;
    let io_before = sys::written_bytes();
    let mut engine = E::open(dir.path())?;
    let mut run = body(&mut engine)?;
    engine.close()?;
    set_written_bytes(&mut run, io_before);
    run.disk_bytes = sys::du(dir.path())?;
    dir.close()?;
    Ok(run)
}

fn set_written_bytes(run: &mut CommitRun, before: Option<u64>) {
    if let (Some(b), Some(a)) = (before, sys::written_bytes()) {
        let bytes = a.saturating_sub(b);
        run.written_bytes = Some(bytes);
        if run.logical_bytes > 0 {
            run.write_amp = Some(bytes as f64 / run.logical_bytes as f64);
        }
    }
}

/// A: one record per durable commit.
pub fn single<E: Engine>(base: &Path, limits: Limits, rng: &mut Rng) -> Result<CommitRun> {
    in_fresh_engine::<E>(base, |e| {
        commit_loop(e, limits, |b| b.push(OwnedOp::Put(rng.key(), rng.value())))
    })
}

/// B: `size` records per durable commit (group commit).
pub fn group<E: Engine>(
    base: &Path,
    limits: Limits,
    rng: &mut Rng,
    size: usize,
) -> Result<CommitRun> {
    in_fresh_engine::<E>(base, |e| {
        commit_loop(e, limits, |b| {
            b.extend((0..size).map(|_| OwnedOp::Put(rng.key(), rng.value())));
        })
    })
}

/// C: 64 ops per commit, half new sessions, half ended sessions (delete + tombstone).
pub fn mixed<E: Engine>(base: &Path, limits: Limits, rng: &mut Rng) -> Result<CommitRun> {
    in_fresh_engine::<E>(base, |e| {
        let mut live: VecDeque<Key> = (0..MIXED_PRELOAD).map(|_| rng.key()).collect();
        let preload: Vec<OwnedOp> = live.iter().map(|k| OwnedOp::Put(*k, rng.value())).collect();
        let ops: Vec<Op<'_>> = preload.iter().map(OwnedOp::as_op).collect();
        e.commit(&ops)?;
        let mut run = commit_loop(e, limits, |b| {
            for _ in 0..32 {
                let key = rng.key();
                live.push_back(key);
                b.push(OwnedOp::Put(key, rng.value()));
            }
            for old in live.drain(..32) {
                b.push(OwnedOp::End(old, rng.tombstone()));
            }
        })?;
        // The preload's bytes are written too; count them so write_amp stays honest.
        run.logical_bytes += ops.iter().map(Op::logical_bytes).sum::<u64>();
        Ok(run)
    })
}

/// D: bulk load, restart (reopen + full scan), steady-state group commit, then delete all.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadScan {
    pub records: u64,
    pub load: CommitRun,
    /// Allocated bytes / logical bytes after the load.
    pub space_amp: f64,
    pub reopen_secs: f64,
    pub scan_secs: f64,
    pub scan_secs_per_million: f64,
    /// Reopen + scan, scaled to one million records.
    pub restart_secs_per_million: f64,
    /// Reopen + scan per million after dropping the OS page cache (`--drop-caches` only).
    pub cold_restart_secs_per_million: Option<f64>,
    /// Same, but the files are first read sequentially (the read is included in the time).
    pub cold_prewarmed_restart_secs_per_million: Option<f64>,
    /// Group commits of 64 on top of the loaded table.
    pub group64_loaded: CommitRun,
    /// Deleting every loaded record (batches of 10,000).
    pub delete_all: CommitRun,
}

pub fn load_scan<E: Engine>(
    base: &Path,
    records: usize,
    limits: Limits,
    rng: &mut Rng,
    drop_caches: bool,
) -> Result<LoadScan> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-load-", E::NAME))
        .tempdir_in(base)?;
    let mut out = LoadScan {
        records: records as u64,
        ..LoadScan::default()
    };
    let mut keys = Vec::with_capacity(records);

    let io_before = sys::written_bytes();
    let cpu_before = sys::cpu_seconds();
    let mut engine = E::open(dir.path())?;
    let mut latencies = Vec::new();
    let mut loaded = 0;
    while loaded < records {
        let n = LOAD_BATCH.min(records - loaded);
        let batch: Vec<OwnedOp> = (0..n)
            .map(|_| {
                let key = rng.key();
                keys.push(key);
                OwnedOp::Put(key, rng.value())
            })
            .collect();
        let ops: Vec<Op<'_>> = batch.iter().map(OwnedOp::as_op).collect();
        out.load.logical_bytes += ops.iter().map(Op::logical_bytes).sum::<u64>();
        let t = Instant::now();
        engine.commit(&ops)?;
        latencies.push(t.elapsed());
        out.load.commits += 1;
        out.load.ops += n as u64;
        loaded += n;
    }
    set_cpu(&mut out.load, cpu_before);
    finish_latencies(&mut out.load, latencies);
    engine.close()?;
    set_written_bytes(&mut out.load, io_before);
    out.load.disk_bytes = sys::du(dir.path())?;
    out.space_amp = out.load.disk_bytes as f64 / out.load.logical_bytes.max(1) as f64;

    let millions = records as f64 / 1e6;
    let (mut engine, reopen_secs, scan_secs) = reopen_and_scan::<E>(dir.path(), records)?;
    out.reopen_secs = reopen_secs;
    out.scan_secs = scan_secs;
    out.scan_secs_per_million = scan_secs / millions;
    out.restart_secs_per_million = (reopen_secs + scan_secs) / millions;
    if drop_caches {
        engine.close()?;
        sys::drop_page_cache()?;
        let (cold, reopen_secs, scan_secs) = reopen_and_scan::<E>(dir.path(), records)?;
        out.cold_restart_secs_per_million = Some((reopen_secs + scan_secs) / millions);
        cold.close()?;
        sys::drop_page_cache()?;
        let t = Instant::now();
        sys::read_all(dir.path())?;
        let prewarm_secs = t.elapsed().as_secs_f64();
        let (warmed, reopen_secs, scan_secs) = reopen_and_scan::<E>(dir.path(), records)?;
        engine = warmed;
        out.cold_prewarmed_restart_secs_per_million =
            Some((prewarm_secs + reopen_secs + scan_secs) / millions);
    }

    let io_before = sys::written_bytes();
    out.group64_loaded = commit_loop(&mut engine, limits, |b| {
        b.extend((0..64).map(|_| OwnedOp::Put(rng.key(), rng.value())));
    })?;
    set_written_bytes(&mut out.group64_loaded, io_before);

    let io_before = sys::written_bytes();
    let mut latencies = Vec::new();
    for chunk in keys.chunks(LOAD_BATCH) {
        let batch: Vec<OwnedOp> = chunk.iter().map(|k| OwnedOp::Delete(*k)).collect();
        let ops: Vec<Op<'_>> = batch.iter().map(OwnedOp::as_op).collect();
        out.delete_all.logical_bytes += ops.iter().map(Op::logical_bytes).sum::<u64>();
        let t = Instant::now();
        engine.commit(&ops)?;
        latencies.push(t.elapsed());
        out.delete_all.commits += 1;
        out.delete_all.ops += ops.len() as u64;
    }
    finish_latencies(&mut out.delete_all, latencies);
    engine.close()?;
    set_written_bytes(&mut out.delete_all, io_before);
    out.delete_all.disk_bytes = sys::du(dir.path())?;
    dir.close()?;
    Ok(out)
}

/// Opens `E` on loaded data and scans it, checking the count; returns (engine, open s, scan s).
fn reopen_and_scan<E: Engine>(dir: &Path, records: usize) -> Result<(E, f64, f64)> {
    let t = Instant::now();
    let engine = E::open(dir)?;
    let reopen_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let stats = engine.scan()?;
    let scan_secs = t.elapsed().as_secs_f64();
    ensure!(
        stats.sessions == records as u64 && stats.tombstones == 0,
        "{} scan saw {} sessions / {} tombstones, expected {records} / 0",
        E::NAME,
        stats.sessions,
        stats.tombstones
    );
    Ok((engine, reopen_secs, scan_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_ordered_keys_start_with_a_clock_that_ticks_every_few_keys() {
        let mut rng = Rng::with_order(3, KeyOrder::Time);
        let keys: Vec<Key> = (0..3 * KEYS_PER_TICK).map(|_| rng.key()).collect();
        let tick = |k: &Key| k[..6].to_vec();
        assert!(keys.windows(2).all(|w| tick(&w[0]) <= tick(&w[1])));
        let per_tick = KEYS_PER_TICK as usize;
        assert_eq!(tick(&keys[0]), [0, 0, 0, 0, 0, 0]);
        assert_eq!(tick(&keys[per_tick - 1]), [0, 0, 0, 0, 0, 0]);
        assert_eq!(tick(&keys[per_tick]), [0, 0, 0, 0, 0, 1]);
        assert_eq!(tick(&keys[2 * per_tick]), [0, 0, 0, 0, 0, 2]);
        // Within a tick the rest is random.
        assert_ne!(keys[0][6..], keys[1][6..]);

        let mut random = Rng::new(3);
        let a = random.key();
        assert_ne!(a[..6], random.key()[..6]);
    }
}
