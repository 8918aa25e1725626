//! fjall 3: an LSM tree. A write batch is appended to the shared journal (write-ahead log) and,
//! with `PersistMode::SyncAll`, fsync'ed before `commit` returns; memtables are flushed to
//! sorted tables and compacted by background threads.

use std::path::Path;

use anyhow::{Context, Result};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::engine::{Engine, Op, ScanStats};

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
        let sessions = db.keyspace("sessions", KeyspaceCreateOptions::default)?;
        let tombstones = db.keyspace("tombstones", KeyspaceCreateOptions::default)?;
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
