//! Scenario E, beside the log: what the checkpoint a store built on that log would need
//! costs. The log (`log_engine.rs`) keeps every change and replays all of it on restart;
//! a store built on it would, once the log outgrows the live set, write what memory holds
//! as one sorted file and drop the segments before it, so that a restart reads the
//! checkpoint and only the log written since (docs/storage-engine.md).
//!
//! This measures that file on its own: writing N live records from an in-memory hash map
//! (the ids sorted, as a restart's point reads need them), opening it (footer and index:
//! from then on any id can be read), one point read, and reading everything back into a
//! hash map (the background load). Then the same records go into the log, 64 per commit,
//! and the time to index that log (each id mapped to its value's place) is measured: the
//! part of a restart that must end before serving starts.
//!
//! ```text
//! file   = block* | index | footer
//! block  = record* (about BLOCK_BYTES), records in id order
//! record = id: 16 bytes | value length: u32 LE | value
//! index  = per block: first id: 16 bytes | offset: u64 LE | length: u32 LE | xxh3-64: u64 LE
//! footer = index offset: u64 LE | blocks: u64 LE | records: u64 LE | xxh3-64 of index: u64 LE
//!          | MAGIC
//! ```
//!
//! The file is written to a temporary name, synced, renamed and its directory synced, so a
//! crash leaves the old checkpoint or the new one, never half of one. Every block and the
//! index carry a checksum, checked on every read.

use std::fs::{self, File};
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rustc_hash::FxHashMap;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

use crate::engine::{Engine as _, Key, Op};
use crate::log_engine::Log;
use crate::scenarios::{Rng, percentile_us};
use crate::sys;

/// Target size of a block: a point read reads one.
const BLOCK_BYTES: usize = 16 << 10;
const INDEX_ENTRY: usize = 16 + 8 + 4 + 8;
const MAGIC: &[u8; 8] = b"sdckpt01";
const FOOTER: usize = 8 + 8 + 8 + 8 + MAGIC.len();
/// Point reads timed after the open.
const POINT_READS: usize = 10_000;

/// A checkpoint opened for point reads: its index in memory, its blocks on disk.
pub struct Checkpoint {
    file: File,
    /// Per block: first id, offset, length, checksum.
    index: Vec<(Key, u64, u32, u64)>,
    records: u64,
}

/// Writes `live` to `path` as a checkpoint (see the module docs); returns its size.
pub fn write(path: &Path, live: &FxHashMap<Key, Vec<u8>>) -> Result<u64> {
    let mut ids: Vec<&Key> = live.keys().collect();
    ids.sort_unstable();
    let tmp = path.with_extension("tmp");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let mut index = Vec::with_capacity((ids.len() * 220 / BLOCK_BYTES + 1) * INDEX_ENTRY);
    let mut block = Vec::with_capacity(BLOCK_BYTES + 4096);
    let mut at = 0u64;
    // Writes a full (or the last) block and indexes it under its first record's id.
    let mut flush = |block: &mut Vec<u8>| -> Result<()> {
        if block.is_empty() {
            return Ok(());
        }
        out.write_all(block)?;
        index.extend_from_slice(&block[..16]);
        index.extend_from_slice(&at.to_le_bytes());
        index.extend_from_slice(&u32::try_from(block.len())?.to_le_bytes());
        index.extend_from_slice(&xxh3_64(block).to_le_bytes());
        at += block.len() as u64;
        block.clear();
        Ok(())
    };
    for id in ids {
        let value = &live[id];
        block.extend_from_slice(id);
        block.extend_from_slice(&u32::try_from(value.len())?.to_le_bytes());
        block.extend_from_slice(value);
        if block.len() >= BLOCK_BYTES {
            flush(&mut block)?;
        }
    }
    flush(&mut block)?;
    let blocks = (index.len() / INDEX_ENTRY) as u64;
    out.write_all(&index)?;
    out.write_all(&at.to_le_bytes())?;
    out.write_all(&blocks.to_le_bytes())?;
    out.write_all(&(live.len() as u64).to_le_bytes())?;
    out.write_all(&xxh3_64(&index).to_le_bytes())?;
    out.write_all(MAGIC)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    drop(file);
    fs::rename(&tmp, path)?;
    File::open(path.parent().context("a checkpoint's directory")?)?.sync_all()?;
    Ok(at + index.len() as u64 + FOOTER as u64)
}

impl Checkpoint {
    /// Reads the footer and the index, checking both.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        ensure!(len >= FOOTER as u64, "a checkpoint shorter than its footer");
        let mut footer = [0u8; FOOTER];
        file.read_exact_at(&mut footer, len - FOOTER as u64)?;
        let word = |i: usize| -> Result<u64> {
            Ok(u64::from_le_bytes(footer[i * 8..i * 8 + 8].try_into()?))
        };
        ensure!(&footer[32..] == MAGIC, "not a checkpoint");
        let (index_at, blocks, records, sum) = (word(0)?, word(1)?, word(2)?, word(3)?);
        let index_len = usize::try_from(blocks)? * INDEX_ENTRY;
        ensure!(
            index_at + index_len as u64 + FOOTER as u64 == len,
            "a checkpoint's index does not end at its footer"
        );
        let mut raw = vec![0u8; index_len];
        file.read_exact_at(&mut raw, index_at)?;
        ensure!(
            xxh3_64(&raw) == sum,
            "a checkpoint's index fails its checksum"
        );
        let index = raw
            .chunks_exact(INDEX_ENTRY)
            .map(|e| -> Result<_> {
                Ok((
                    e[..16].try_into()?,
                    u64::from_le_bytes(e[16..24].try_into()?),
                    u32::from_le_bytes(e[24..28].try_into()?),
                    u64::from_le_bytes(e[28..36].try_into()?),
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Checkpoint {
            file,
            index,
            records,
        })
    }

    fn block(&self, i: usize) -> Result<Vec<u8>> {
        let (_, at, len, sum) = self.index[i];
        let mut block = vec![0u8; len as usize];
        self.file.read_exact_at(&mut block, at)?;
        ensure!(
            xxh3_64(&block) == sum,
            "checkpoint block {i} fails its checksum"
        );
        Ok(block)
    }

    /// `id`'s value, read from the one block that can hold it.
    pub fn get(&self, id: &Key) -> Result<Option<Vec<u8>>> {
        let i = self.index.partition_point(|(first, ..)| first <= id);
        let Some(i) = i.checked_sub(1) else {
            return Ok(None);
        };
        let block = self.block(i)?;
        let mut found = None;
        records(&block, |key, value| {
            if key == id {
                found = Some(value.to_vec());
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Every record, into a map (what the background load does).
    pub fn load(&self) -> Result<FxHashMap<Key, Vec<u8>>> {
        let mut live = FxHashMap::default();
        live.reserve(usize::try_from(self.records)?);
        for i in 0..self.index.len() {
            records(&self.block(i)?, |key, value| {
                live.insert(*key, value.to_vec());
                Ok(())
            })?;
        }
        ensure!(
            live.len() as u64 == self.records,
            "a checkpoint held {} records, its footer says {}",
            live.len(),
            self.records
        );
        Ok(live)
    }
}

/// Calls `each` with every record of `block`, in order.
fn records(mut block: &[u8], mut each: impl FnMut(&Key, &[u8]) -> Result<()>) -> Result<()> {
    while !block.is_empty() {
        ensure!(block.len() >= 20, "a checkpoint record is cut short");
        let (head, rest) = block.split_at(20);
        let key: &Key = head[..16].try_into()?;
        let len = u32::from_le_bytes(head[16..].try_into()?) as usize;
        ensure!(rest.len() >= len, "a checkpoint value is cut short");
        let (value, rest) = rest.split_at(len);
        each(key, value)?;
        block = rest;
    }
    Ok(())
}

/// Scenario E's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointRun {
    pub records: u64,
    pub bytes: u64,
    /// Sorting the ids, writing the file and syncing it, per million records.
    pub write_secs_per_million: f64,
    /// The process's CPU time over the write, per record.
    pub write_cpu_us_per_record: Option<f64>,
    /// Footer and index read and checked: from then on any id can be read.
    pub open_secs: f64,
    /// One point read (the block read from the page cache, checked and searched).
    pub point_read_mean_us: f64,
    pub point_read_p99_us: f64,
    /// Every record read, checked and put in a hash map, per million.
    pub load_secs_per_million: f64,
    /// The same records committed to the log 64 at a time, then the log read and each id
    /// mapped to its latest value's place (values not read): what a restart must do with the
    /// log written since the checkpoint before serving, per million records in that log.
    pub log_index_secs_per_million: f64,
}

/// Writes a checkpoint of `records` live records, opens it, reads from it, and loads it.
pub fn run(base: &Path, records: usize, rng: &mut Rng) -> Result<CheckpointRun> {
    let dir = tempfile::Builder::new()
        .prefix("checkpoint-")
        .tempdir_in(base)?;
    let path = dir.path().join("live.ckpt");
    let mut live: FxHashMap<Key, Vec<u8>> = FxHashMap::default();
    live.reserve(records);
    while live.len() < records {
        live.insert(rng.key(), rng.value());
    }
    let millions = records as f64 / 1e6;

    let cpu = sys::cpu_seconds();
    let t = Instant::now();
    let bytes = write(&path, &live)?;
    let write_secs = t.elapsed().as_secs_f64();
    let write_cpu = sys::cpu_seconds() - cpu;

    let t = Instant::now();
    let ckpt = Checkpoint::open(&path)?;
    let open_secs = t.elapsed().as_secs_f64();

    let ids: Vec<&Key> = live.keys().take(POINT_READS).collect();
    let mut latencies = Vec::with_capacity(ids.len());
    for id in &ids {
        let t = Instant::now();
        let value = ckpt.get(id)?;
        latencies.push(t.elapsed());
        ensure!(
            value.as_ref() == live.get(*id),
            "a point read got the wrong value"
        );
    }
    latencies.sort_unstable();
    let total: Duration = latencies.iter().sum();
    let mean = total.as_secs_f64() * 1e6 / latencies.len().max(1) as f64;
    let p99 = percentile_us(&latencies, 0.99);

    let t = Instant::now();
    let loaded = ckpt.load()?;
    let load_secs = t.elapsed().as_secs_f64();
    ensure!(
        loaded == live,
        "the loaded checkpoint differs from what was written"
    );
    drop(ckpt);

    let mut log = Log::open(dir.path())?;
    let batch: Vec<(&Key, &Vec<u8>)> = live.iter().collect();
    for chunk in batch.chunks(64) {
        let ops: Vec<Op<'_>> = chunk
            .iter()
            .map(|(key, value)| Op::Put { key, value })
            .collect();
        log.commit(&ops)?;
    }
    let t = Instant::now();
    let (indexed, _) = log.index()?;
    let log_index_secs = t.elapsed().as_secs_f64();
    ensure!(
        indexed.len() == records,
        "the log's index holds {} ids, not {records}",
        indexed.len()
    );
    drop(indexed);
    log.close()?;
    dir.close()?;
    Ok(CheckpointRun {
        records: records as u64,
        bytes,
        write_secs_per_million: write_secs / millions,
        write_cpu_us_per_record: (records > 0).then(|| write_cpu * 1e6 / records as f64),
        open_secs,
        point_read_mean_us: mean,
        point_read_p99_us: p99,
        load_secs_per_million: load_secs / millions,
        log_index_secs_per_million: log_index_secs / millions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_every_record_and_refuses_a_damaged_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.ckpt");
        let mut rng = Rng::new(7);
        let live: FxHashMap<Key, Vec<u8>> = (0..500).map(|_| (rng.key(), rng.value())).collect();
        write(&path, &live).unwrap();

        let ckpt = Checkpoint::open(&path).unwrap();
        assert!(ckpt.index.len() > 1, "the test needs more than one block");
        for (id, value) in &live {
            assert_eq!(ckpt.get(id).unwrap().as_ref(), Some(value));
        }
        assert_eq!(ckpt.get(&[0xff; 16]).unwrap(), None);
        assert_eq!(ckpt.get(&[0; 16]).unwrap(), None);
        assert_eq!(ckpt.load().unwrap(), live);

        // One byte changed in the first block: reading it fails rather than answering.
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", 30).unwrap();
        let ckpt = Checkpoint::open(&path).unwrap();
        assert!(ckpt.load().is_err());
    }
}
