//! The small interface both candidate engines implement, so every scenario runs the same code.

use std::path::Path;

use anyhow::Result;

/// Session ids are 16 random bytes.
pub type Key = [u8; 16];

/// One write inside a durable commit.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// Insert or overwrite a session record in the `sessions` table.
    Put { key: &'a Key, value: &'a [u8] },
    /// Session ended: remove it from `sessions` and insert a tombstone into `tombstones`.
    End { key: &'a Key, tombstone: &'a [u8] },
    /// Remove a session record without leaving a tombstone (used to measure space reclamation).
    Delete { key: &'a Key },
}

impl Op<'_> {
    /// Logical bytes this op asks the engine to store or remove (keys + values).
    pub fn logical_bytes(&self) -> u64 {
        let len = match self {
            Op::Put { key, value } => key.len() + value.len(),
            Op::End { key, tombstone } => 2 * key.len() + tombstone.len(),
            Op::Delete { key } => key.len(),
        };
        len as u64
    }
}

/// What a full scan of both tables saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScanStats {
    pub sessions: u64,
    pub tombstones: u64,
    /// Sum of key and value lengths read.
    pub bytes: u64,
    /// Folds every byte read, so the scan cannot be optimised away.
    pub checksum: u64,
}

impl ScanStats {
    pub fn absorb(&mut self, key: &[u8], value: &[u8]) {
        self.bytes += (key.len() + value.len()) as u64;
        let mut h = self.checksum;
        for &b in key.iter().chain(value) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.checksum = h;
    }
}

/// A durable two-table key-value engine as sessiond would use it.
pub trait Engine: Sized {
    /// Short name used in the report.
    const NAME: &'static str;

    /// Creates or opens the engine's data in `dir` (an existing, possibly empty, directory)
    /// with both tables present.
    fn open(dir: &Path) -> Result<Self>;

    /// Applies `ops` atomically in one transaction and returns only once the commit is
    /// durable (fsync'ed).
    fn commit(&mut self, ops: &[Op<'_>]) -> Result<()>;

    /// Reads every key and value of both tables.
    fn scan(&self) -> Result<ScanStats>;

    /// Closes the engine cleanly, releasing its files.
    fn close(self) -> Result<()>;
}
