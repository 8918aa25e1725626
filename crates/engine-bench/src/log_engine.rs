//! A third candidate: a log of sessiond's own, the smallest durable store that could stand
//! in for fjall on the create path. Not a store sessiond could ship as it is: it has no
//! compaction (every change stays on disk) and no index (a restart replays every segment
//! before anything can be read). It is here to measure what such a log costs per commit and
//! per record, and how fast a replay is, beside the two engines (docs/storage-engine.md).
//!
//! Segments are files of [`SEGMENT_BYTES`], written full of zeros and synced when made, so
//! that a commit overwrites blocks the file already owns: `fdatasync` then has no file
//! metadata to write (no new blocks, no new length), which on ext4 means no journal commit
//! (the flat-file probe in docs/storage-engine.md). A commit is one frame, written with one
//! `pwrite` and made durable with one `fdatasync`:
//!
//! ```text
//! frame  = len: u32 LE (of ops, > 0) | xxh3-64 of ops: u64 LE | ops
//! op     = kind: u8 | key: 16 bytes | value length: u32 LE | value
//! ```
//!
//! A frame is all or nothing: a zero length ends a segment's frames, and a frame whose
//! checksum fails (a torn write) ends the log. Frames never straddle segments.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use rustc_hash::FxHashMap;
use xxhash_rust::xxh3::xxh3_64;

use crate::engine::{Engine, Key, Op, ScanStats};

/// Size of one segment file.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Bytes in front of a frame's ops: length and checksum.
const FRAME_HEAD: usize = 12;
/// Bytes of an op before its value: kind, key, value length.
const OP_HEAD: usize = 1 + 16 + 4;

const PUT: u8 = 1;
const END: u8 = 2;
const DELETE: u8 = 3;

pub struct Log {
    dir: PathBuf,
    /// The segment being written, its number, and where its next frame goes.
    file: File,
    segment: u64,
    at: u64,
    /// The frame being built, reused from commit to commit.
    frame: Vec<u8>,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

/// The segments in `dir`, by number.
fn segments(dir: &Path) -> Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Makes segment `n`: its full length written as zeros and synced, then the directory
/// synced so that the file's name is durable too.
fn make_segment(dir: &Path, n: u64) -> Result<File> {
    let path = segment_path(dir, n);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..SEGMENT_BYTES / zeros.len() as u64 {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Calls `each` with every complete frame's ops in `bytes` (one segment) and where they
/// start in it, in order, and returns where the frames end: at a zero length, a frame that
/// runs past the segment, or one whose checksum fails.
fn frames(bytes: &[u8], mut each: impl FnMut(&[u8], usize) -> Result<()>) -> Result<usize> {
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + FRAME_HEAD) {
        let (len, sum) = head.split_at(4);
        let len = u32::from_le_bytes(len.try_into()?) as usize;
        let Some(ops) = bytes.get(at + FRAME_HEAD..at + FRAME_HEAD + len) else {
            break;
        };
        if len == 0 || xxh3_64(ops) != u64::from_le_bytes(sum.try_into()?) {
            break;
        }
        each(ops, at + FRAME_HEAD)?;
        at += FRAME_HEAD + len;
    }
    Ok(at)
}

/// Applies one replayed op to the maps of live and ended keys, `at` being where its value is.
fn apply<P>(
    kind: u8,
    key: Key,
    at: P,
    live: &mut FxHashMap<Key, P>,
    ended: &mut FxHashMap<Key, P>,
) -> Result<()> {
    match kind {
        PUT => {
            live.insert(key, at);
        }
        END => {
            live.remove(&key);
            ended.insert(key, at);
        }
        DELETE => {
            live.remove(&key);
        }
        other => bail!("unknown op kind {other}"),
    }
    Ok(())
}

/// One op read back: its kind, key and value.
fn next_op<'a>(ops: &mut &'a [u8]) -> Result<(u8, Key, &'a [u8])> {
    ensure!(ops.len() >= OP_HEAD, "an op is cut short");
    let (head, rest) = ops.split_at(OP_HEAD);
    let key: Key = head[1..17].try_into()?;
    let len = u32::from_le_bytes(head[17..].try_into()?) as usize;
    ensure!(rest.len() >= len, "an op's value is cut short");
    let (value, rest) = rest.split_at(len);
    *ops = rest;
    Ok((head[0], key, value))
}

/// Calls `each` with every op of the complete frames in `segment`: its kind, its key, and
/// where its value lies in `segment`. Returns where the frames end ([`frames`]).
fn ops_in(
    segment: &[u8],
    mut each: impl FnMut(u8, Key, Range<usize>) -> Result<()>,
) -> Result<usize> {
    frames(segment, |mut ops, start| {
        let end = start + ops.len();
        while !ops.is_empty() {
            let (kind, key, value) = next_op(&mut ops)?;
            let value_end = end - ops.len();
            each(kind, key, value_end - value.len()..value_end)?;
        }
        Ok(())
    })
}

/// Per key, the segment number and offset of its latest value.
pub type Places = FxHashMap<Key, (u64, u32)>;

impl Log {
    /// Reads every segment through one buffer and maps each live key to the segment and
    /// offset of its latest value, without keeping the values: what a restart must do with
    /// the log written since the last checkpoint before it can answer a point read
    /// (`checkpoint.rs`). Returns the live keys' places and the ended keys'.
    pub fn index(&self) -> Result<(Places, Places)> {
        let mut live = FxHashMap::default();
        let mut ended = FxHashMap::default();
        let mut buffer = vec![0u8; usize::try_from(SEGMENT_BYTES)?];
        for n in segments(&self.dir)? {
            File::open(segment_path(&self.dir, n))?.read_exact_at(&mut buffer, 0)?;
            ops_in(&buffer, |kind, key, value| {
                let at = (n, u32::try_from(value.start)?);
                apply(kind, key, at, &mut live, &mut ended)
            })?;
        }
        Ok((live, ended))
    }

    fn push_op(&mut self, kind: u8, key: &Key, value: &[u8]) -> Result<()> {
        self.frame.push(kind);
        self.frame.extend_from_slice(key);
        self.frame
            .extend_from_slice(&u32::try_from(value.len())?.to_le_bytes());
        self.frame.extend_from_slice(value);
        Ok(())
    }
}

impl Engine for Log {
    const NAME: &'static str = "log";

    fn open(dir: &Path) -> Result<Self> {
        let dir = dir.join("log");
        fs::create_dir_all(&dir)?;
        let (file, segment, at) = match segments(&dir)?.last() {
            None => (make_segment(&dir, 0)?, 0, 0),
            Some(&n) => {
                let path = segment_path(&dir, n);
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                let end = frames(&fs::read(&path)?, |_, _| Ok(()))?;
                (file, n, end as u64)
            }
        };
        Ok(Log {
            dir,
            file,
            segment,
            at,
            frame: Vec::new(),
        })
    }

    fn commit(&mut self, ops: &[Op<'_>]) -> Result<()> {
        self.frame.clear();
        self.frame.resize(FRAME_HEAD, 0);
        for op in ops {
            match *op {
                Op::Put { key, value } => self.push_op(PUT, key, value)?,
                Op::End { key, tombstone } => self.push_op(END, key, tombstone)?,
                Op::Delete { key } => self.push_op(DELETE, key, &[])?,
            }
        }
        let len = self.frame.len() - FRAME_HEAD;
        ensure!(len > 0, "an empty commit");
        let sum = xxh3_64(&self.frame[FRAME_HEAD..]);
        self.frame[..4].copy_from_slice(&u32::try_from(len)?.to_le_bytes());
        self.frame[4..FRAME_HEAD].copy_from_slice(&sum.to_le_bytes());
        let size = self.frame.len() as u64;
        if size > SEGMENT_BYTES {
            bail!("a commit of {size} bytes does not fit in a segment");
        }
        if self.at + size > SEGMENT_BYTES {
            self.segment += 1;
            self.file = make_segment(&self.dir, self.segment)?;
            self.at = 0;
        }
        self.file.write_all_at(&self.frame, self.at)?;
        self.file.sync_data()?;
        self.at += size;
        Ok(())
    }

    /// Replays every segment: the restart such a log would do, with the latest value of
    /// each key kept (as offsets into the segments read), then every kept key and value read.
    fn scan(&self) -> Result<ScanStats> {
        let mut read: Vec<Vec<u8>> = Vec::new();
        // Per key: the segment and where its latest value lies in it.
        let mut sessions = FxHashMap::default();
        let mut tombstones = FxHashMap::default();
        for n in segments(&self.dir)? {
            let bytes = fs::read(segment_path(&self.dir, n))?;
            let seg = read.len();
            ops_in(&bytes, |kind, key, value| {
                apply(kind, key, (seg, value), &mut sessions, &mut tombstones)
            })?;
            read.push(bytes);
        }
        let mut stats = ScanStats {
            sessions: sessions.len() as u64,
            tombstones: tombstones.len() as u64,
            ..ScanStats::default()
        };
        for (key, (seg, value)) in sessions.iter().chain(&tombstones) {
            stats.absorb(key, &read[*seg][value.clone()]);
        }
        Ok(stats)
    }

    fn close(self) -> Result<()> {
        // Every commit was synced before it returned.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_log_reads_back_what_was_committed_and_ignores_a_torn_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        let mut log = Log::open(dir.path()).unwrap();
        log.commit(&[
            Op::Put {
                key: &a,
                value: b"alpha",
            },
            Op::Put {
                key: &b,
                value: b"beta",
            },
        ])
        .unwrap();
        log.commit(&[
            Op::End {
                key: &a,
                tombstone: b"gone",
            },
            Op::Delete { key: &b },
        ])
        .unwrap();
        log.commit(&[Op::Put {
            key: &c,
            value: b"gamma",
        }])
        .unwrap();
        let end = log.at;
        log.close().unwrap();

        // A torn last frame: its checksum no longer matches, so it was never committed.
        let path = segment_path(&dir.path().join("log"), 0);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", end - 1).unwrap();

        let mut log = Log::open(dir.path()).unwrap();
        let scanned = log.scan().unwrap();
        assert_eq!((scanned.sessions, scanned.tombstones), (0, 1));
        let (live, ended) = log.index().unwrap();
        assert_eq!((live.len(), ended.len()), (0, 1));
        assert!(ended.contains_key(&a));
        let mut expected = ScanStats::default();
        expected.absorb(&a, b"gone");
        assert_eq!(scanned.checksum, expected.checksum);

        // The next commit goes where the torn frame was, and reads back.
        log.commit(&[Op::Put {
            key: &c,
            value: b"gamma",
        }])
        .unwrap();
        let log = Log::open(dir.path()).unwrap();
        let scanned = log.scan().unwrap();
        assert_eq!((scanned.sessions, scanned.tombstones), (1, 1));
        let (live, _) = log.index().unwrap();
        assert_eq!(live.keys().collect::<Vec<_>>(), vec![&c]);
        // The place the index keeps is where the value is.
        let (segment, at) = live[&c];
        let bytes = fs::read(segment_path(&dir.path().join("log"), segment)).unwrap();
        assert_eq!(&bytes[at as usize..at as usize + 5], b"gamma");
    }
}
