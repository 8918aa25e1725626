//! fjall 3: an LSM tree. A write batch is appended to the shared journal (write-ahead log) and,
//! with `PersistMode::SyncAll`, fsync'ed before `commit` returns; memtables are flushed to
//! sorted tables and compacted by background threads.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use fjall::compaction::Leveled;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};
use serde::Serialize;

use crate::engine::{Engine, Op, ScanStats};

/// fjall's options for a run, where they differ from its defaults (a 64 MiB memtable,
/// leveled compaction starting at 4 tables in level 0). sessiond's store uses a 16 MiB
/// memtable (`crates/store/src/local/journal.rs`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Tuning {
    pub memtable_mib: Option<u64>,
    pub l0_threshold: Option<u8>,
    /// Values at least this long go to blob files, and compactions move only the keys and
    /// a pointer (fjall: off unless asked for).
    pub kv_separation: Option<u32>,
}

static TUNING: OnceLock<Tuning> = OnceLock::new();

/// Sets the options every keyspace this process opens gets; once, before the first open.
pub fn tune(tuning: Tuning) {
    let _ = TUNING.set(tuning);
}

fn options() -> KeyspaceCreateOptions {
    let tuning = TUNING.get().copied().unwrap_or_default();
    let mut options = KeyspaceCreateOptions::default();
    if let Some(mib) = tuning.memtable_mib {
        options = options.max_memtable_size(mib << 20);
    }
    if let Some(n) = tuning.l0_threshold {
        options = options.compaction_strategy(Arc::new(Leveled::default().with_l0_threshold(n)));
    }
    if let Some(bytes) = tuning.kv_separation {
        options = options.with_kv_separation(Some(
            KvSeparationOptions::default().separation_threshold(bytes),
        ));
    }
    options
}

pub struct Fjall {
    db: Database,
    sessions: Keyspace,
    tombstones: Keyspace,
}

impl Engine for Fjall {
    const NAME: &'static str = "fjall";

    fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("fjall");
        let db = Database::builder(&path)
            .open()
            .with_context(|| format!("opening fjall at {}", path.display()))?;
        let sessions = db.keyspace("sessions", options)?;
        let tombstones = db.keyspace("tombstones", options)?;
        Ok(Self {
            db,
            sessions,
            tombstones,
        })
    }

    fn commit(&mut self, ops: &[Op<'_>]) -> Result<()> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        for op in ops {
            match *op {
                Op::Put { key, value } => batch.insert(&self.sessions, key.as_slice(), value),
                Op::End { key, tombstone } => {
                    batch.remove(&self.sessions, key.as_slice());
                    batch.insert(&self.tombstones, key.as_slice(), tombstone);
                }
                Op::Delete { key } => batch.remove(&self.sessions, key.as_slice()),
            }
        }
        batch.commit()?;
        Ok(())
    }

    fn scan(&self) -> Result<ScanStats> {
        let mut stats = ScanStats::default();
        for guard in self.sessions.iter() {
            let (k, v) = guard.into_inner()?;
            stats.absorb(&k, &v);
            stats.sessions += 1;
        }
        for guard in self.tombstones.iter() {
            let (k, v) = guard.into_inner()?;
            stats.absorb(&k, &v);
            stats.tombstones += 1;
        }
        Ok(stats)
    }

    fn close(self) -> Result<()> {
        // Dropping the last handle persists the journal and joins the background workers.
        drop(self.sessions);
        drop(self.tombstones);
        drop(self.db);
        Ok(())
    }
}
