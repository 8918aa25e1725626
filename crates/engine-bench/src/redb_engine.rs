//! redb 4: a copy-on-write B-tree in a single file. A commit with `Durability::Immediate`
//! writes the new pages, then the commit slot (with a checksum of the new root), and fsyncs.

use std::path::Path;

use anyhow::{Context, Result};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::engine::{Engine, Key, Op, ScanStats};

const SESSIONS: TableDefinition<'static, Key, &'static [u8]> = TableDefinition::new("sessions");
const TOMBSTONES: TableDefinition<'static, Key, &'static [u8]> = TableDefinition::new("tombstones");

pub struct Redb {
    db: Database,
}

impl Engine for Redb {
    const NAME: &'static str = "redb";

    fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("sessions.redb");
        let db = Database::create(&path)
            .with_context(|| format!("opening redb at {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(SESSIONS)?;
        txn.open_table(TOMBSTONES)?;
        txn.commit()?;
        Ok(Self { db })
    }

    fn commit(&mut self, ops: &[Op<'_>]) -> Result<()> {
        let mut txn = self.db.begin_write()?;
        // Immediate is the default; set it explicitly so the measurement cannot drift.
        txn.set_durability(Durability::Immediate)?;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut tombstones = txn.open_table(TOMBSTONES)?;
            for op in ops {
                match *op {
                    Op::Put { key, value } => {
                        sessions.insert(key, value)?;
                    }
                    Op::End { key, tombstone } => {
                        sessions.remove(key)?;
                        tombstones.insert(key, tombstone)?;
                    }
                    Op::Delete { key } => {
                        sessions.remove(key)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn scan(&self) -> Result<ScanStats> {
        let txn = self.db.begin_read()?;
        let mut stats = ScanStats::default();
        for item in txn.open_table(SESSIONS)?.iter()? {
            let (k, v) = item?;
            stats.absorb(&k.value(), v.value());
            stats.sessions += 1;
        }
        for item in txn.open_table(TOMBSTONES)?.iter()? {
            let (k, v) = item?;
            stats.absorb(&k.value(), v.value());
            stats.tombstones += 1;
        }
        Ok(stats)
    }

    fn close(self) -> Result<()> {
        self.db.close()?;
        Ok(())
    }
}
