//! The durable journal of the embedded store: a fjall database (an LSM tree with a
//! write-ahead journal), written by one thread that group-commits. Why fjall and not redb:
//! `docs/storage-engine.md`.
//!
//! Callers [`Journal::append`] changes (in memory order, under the session's shard lock)
//! and await the returned [`Pending`]. The writer thread takes every batch waiting in its
//! channel, puts them all in one atomic write batch, commits it with
//! `PersistMode::SyncAll` (an fsync), and only then resolves their tickets. Many concurrent
//! creates therefore share one sync.
//!
//! On-disk format (see `docs/storage.md`): keyspace `sessions` maps a 16-byte id to a
//! record, `tombstones` a 16-byte id to a tombstone, and `touch_groups` an id's first two
//! bytes (its *group*) to the last accesses touches moved in that group: `(id, ms)` pairs
//! sorted by id. Each value is one format byte ([`FORMAT`]) followed by the postcard
//! encoding of the core type (for a group, 24 bytes per pair: the id, then the
//! milliseconds as i64 little-endian). Keyspace `touches` maps a 16-byte id to its last
//! access (8 bytes, i64 LE) for ids whose group is full ([`MAX_GROUP_PAIRS`]); earlier
//! versions wrote every touch there. A load takes the latest of a record and its touches.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use fjall::compaction::Leveled;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::Mutex;
use sessiond_core::{Session, SessionId, Text, Timestamp, Tombstone, Verifier};
use tokio::sync::oneshot;

use crate::StoreError;

pub(super) const SESSIONS: &str = "sessions";
const TOMBSTONES: &str = "tombstones";
/// Touches by group: see the module docs.
pub(super) const TOUCH_GROUPS: &str = "touch_groups";
/// One row per touched id: for ids whose group is full, and as earlier versions wrote
/// every touch.
pub(super) const TOUCHES: &str = "touches";
/// Bytes of one `(id, ms)` pair in a touch group.
pub(super) const PAIR: usize = 24;
/// Most pairs a group holds (24 KiB), so that a touch or an end rewrites at most that
/// much: random ids put ~15 sessions in a group at 1M and ~150 at 10M, but a user's
/// sessions all share one group (their id starts with the user's tag), and a user with
/// thousands of them gets rows of their own past this.
pub(super) const MAX_GROUP_PAIRS: usize = 1024;
/// The format byte in front of every stored value.
const FORMAT: u8 = 1;
/// fjall's block cache (its default is 32 MiB).
const CACHE_BYTES: u64 = 4 << 20;
/// Size at which a keyspace's memtable is written out as a table (fjall's default: 64 MiB).
const MEMTABLE_BYTES: u64 = 16 << 20;
/// Tables in level 0 that start a compaction into level 1 (fjall's default: 4). Session ids
/// are random, so every level-0 table overlaps all of level 1 and each compaction rewrites
/// it: with 4, a store holding 1M sessions rewrote its ~200 MB every 64 MB of new sessions.
/// 16 stays under the 20 at which fjall starts slowing writes (docs/storage-engine.md,
/// "Random keys and compaction").
const L0_TABLES_PER_COMPACTION: u8 = 16;
/// Most batches folded into one transaction.
const MAX_BATCHES_PER_COMMIT: usize = 8192;

/// One durable change.
#[derive(Debug)]
pub(super) enum Change {
    /// Insert or replace a live session (shared with memory: nothing is copied to queue it).
    Put(Arc<Session>),
    /// A touch: the session's new last access, merged into its group instead of rewriting
    /// the whole record.
    Touch(SessionId, Timestamp),
    /// Delete the session and write its tombstone, in one transaction.
    End(Tombstone),
    /// Delete a tombstone past retention.
    Purge(SessionId),
}

/// Resolves when the appended changes are durable.
#[must_use = "a change is acknowledged only once durable"]
pub(super) struct Pending(Option<oneshot::Receiver<Result<(), StoreError>>>);

impl Pending {
    pub(super) async fn durable(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("journal writer stopped".into()))),
        }
    }
}

/// Where changes go: nowhere (memory store) or to the fjall writer.
pub(super) enum Journal {
    None,
    Fjall(Writer),
}

pub(super) struct Writer {
    // Taken on close, which ends the writer thread once it has drained the channel.
    tx: Mutex<Option<mpsc::Sender<Batch>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    // Set by `close` before it takes `tx`: read by every validate, which must not contend
    // for `tx`'s lock to learn it.
    closed: AtomicBool,
    // Set by the writer when a commit fails: from then on the store refuses to serve,
    // because memory may hold changes the disk does not.
    failed: Arc<AtomicBool>,
    // Transactions committed so far: with `appended`, shows how much group commit shares.
    commits: Arc<AtomicU64>,
}

struct Batch {
    changes: Vec<Change>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// What was on disk at open: the sessions as folded into `parts` (see [`open`]), and the
/// tombstones.
pub(super) struct Loaded<P> {
    pub parts: Vec<P>,
    pub tombstones: Vec<Tombstone>,
}

impl Journal {
    pub(super) fn is_durable(&self) -> bool {
        matches!(self, Journal::Fjall(_))
    }

    /// Queues `changes`; they are durable when the returned ticket resolves `Ok`.
    pub(super) fn append(&self, changes: Vec<Change>) -> Pending {
        let Journal::Fjall(w) = self else {
            return Pending(None);
        };
        let (done, rx) = oneshot::channel();
        if let Some(tx) = w.tx.lock().as_ref() {
            // A send fails only if the writer is gone; the dropped `done` then reports it.
            let _ = tx.send(Batch { changes, done });
        }
        Pending(Some(rx))
    }

    /// Durable transactions committed since open (0 without a journal).
    pub(super) fn commits(&self) -> u64 {
        match self {
            Journal::None => 0,
            Journal::Fjall(w) => w.commits.load(Ordering::Relaxed),
        }
    }

    /// Fails when the store can no longer serve: closed, or a commit failed.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        match self {
            Journal::None => Ok(()),
            Journal::Fjall(w) if w.failed.load(Ordering::Acquire) => Err(StoreError::Unavailable(
                "a write to the data file failed; restart sessiond".into(),
            )),
            Journal::Fjall(w) if w.closed.load(Ordering::Acquire) => {
                Err(StoreError::Unavailable("the store is closed".into()))
            }
            Journal::Fjall(_) => Ok(()),
        }
    }

    /// Stops the writer after it has made everything queued durable.
    pub(super) async fn close(&self) -> Result<(), StoreError> {
        let Journal::Fjall(w) = self else {
            return Ok(());
        };
        w.closed.store(true, Ordering::Release);
        drop(w.tx.lock().take());
        let thread = w.thread.lock().take();
        if let Some(t) = thread {
            tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|e| StoreError::Unavailable(format!("joining the writer: {e}")))?
                .map_err(|_| StoreError::Unavailable("the journal writer panicked".into()))?;
        }
        if w.failed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "a write to the data file failed".into(),
            ));
        }
        Ok(())
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// What the writer thread holds: the open database and its keyspaces.
struct Tables {
    db: Database,
    keyspaces: Disk,
}

/// The four keyspaces: written by the writer thread, and read by the background load at
/// open and by the point reads that answer validates while it runs. Cheap to clone
/// (fjall's handles are shared).
#[derive(Clone)]
pub(super) struct Disk {
    sessions: Keyspace,
    tombstones: Keyspace,
    touch_groups: Keyspace,
    touches: Keyspace,
}

/// What the disk holds for one id.
#[derive(Debug)]
pub(super) enum OnDisk {
    /// A live record, its last access moved on to its touches'.
    Live(Session),
    /// A tombstone, retained or not yet purged.
    Ended(Tombstone),
    Absent,
}

/// Opens (or creates) the data directory and starts the writer. fjall replays its journal
/// here; the sessions are read back afterwards, through [`Disk::load`].
pub(super) fn open(path: &Path) -> Result<(Journal, Disk), StoreError> {
    let opened = std::time::Instant::now();
    // Every session lives in memory, so fjall is only written, and read once at start: its
    // block cache would hold copies nobody asks for, and a large memtable would be a second
    // copy of the newest sessions (docs/benchmarks.md has the memory figures).
    let db = Database::builder(path)
        .cache_size(CACHE_BYTES)
        .open()
        .map_err(|e| match e {
            // fjall's own words are "FjallError: Locked".
            fjall::Error::Locked => StoreError::Unavailable(format!(
                "{} is held by another process; one data dir serves one sessiond at a time",
                path.display()
            )),
            e => unavailable(e),
        })?;
    let options = || {
        KeyspaceCreateOptions::default()
            .max_memtable_size(MEMTABLE_BYTES)
            .compaction_strategy(Arc::new(
                Leveled::default().with_l0_threshold(L0_TABLES_PER_COMPACTION),
            ))
    };
    let disk = Disk {
        sessions: db.keyspace(SESSIONS, options).map_err(unavailable)?,
        tombstones: db.keyspace(TOMBSTONES, options).map_err(unavailable)?,
        touch_groups: db.keyspace(TOUCH_GROUPS, options).map_err(unavailable)?,
        touches: db.keyspace(TOUCHES, options).map_err(unavailable)?,
    };
    let db = Tables {
        db,
        keyspaces: disk.clone(),
    };
    tracing::debug!(
        open_ms = opened.elapsed().as_millis() as u64,
        "opened the data file"
    );
    let (tx, rx) = mpsc::channel();
    let failed = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let thread = std::thread::Builder::new()
        .name("sessiond-journal".into())
        .spawn({
            let (failed, commits) = (failed.clone(), commits.clone());
            move || write_loop(db, rx, failed, commits)
        })
        .map_err(unavailable)?;
    let writer = Writer {
        tx: Mutex::new(Some(tx)),
        thread: Mutex::new(Some(thread)),
        closed: AtomicBool::new(false),
        failed,
        commits,
    };
    Ok((Journal::Fjall(writer), disk))
}

impl Disk {
    /// Reads every session and tombstone back.
    ///
    /// The sessions are read by `parts` threads at once (a power of two up to 64), each
    /// scanning one contiguous range of ids (by their first byte) and folding every session
    /// into its own `P` with `add`, in id order; part `i` covers ids whose first byte is in
    /// `[i * 256 / parts, (i + 1) * 256 / parts)`. `new_part(i, n)` makes part `i`, which
    /// can expect about `n` sessions. Each session reaches `add` as a [`StoredSession`]
    /// borrowing its strings from the row, so a part can share the strings it already holds
    /// instead of allocating a copy first. `finish` runs on each part in its loading thread
    /// once its range is read.
    pub(super) fn load<P: Send>(
        &self,
        parts: usize,
        new_part: impl Fn(usize, usize) -> P + Sync,
        add: impl Fn(&mut P, StoredSession<'_>) + Sync,
        finish: impl Fn(&mut P) + Sync,
    ) -> Result<Loaded<P>, StoreError> {
        assert!(
            parts.is_power_of_two() && parts <= 64,
            "parts must be a power of two up to 64"
        );
        let started = std::time::Instant::now();
        let step = 256 / parts;
        // Ids are uniform over the key space, so each range holds about its share.
        let expected = self.sessions.approximate_len() / parts;
        let scan = |i: usize| -> Result<P, StoreError> {
            let lower = Bound::Included(vec![(i * step) as u8]);
            let upper = match (i + 1) * step {
                256 => Bound::Unbounded,
                end => Bound::Excluded(vec![end as u8]),
            };
            // Records, touch groups and touch rows are all in id order: one pass over
            // each, side by side, moves a record's last access on to its touches'.
            let mut grouped = Touches::new(
                self.touch_groups.range((lower.clone(), upper.clone())),
                decode_group,
            );
            let mut rows = Touches::new(
                self.touches.range((lower.clone(), upper.clone())),
                decode_row,
            );
            let mut part = new_part(i, expected);
            for row in self.sessions.range((lower, upper)) {
                let (k, v) = row.into_inner().map_err(unavailable)?;
                let id = key_id(&k)?;
                let mut session: StoredSession<'_> = decode(&v)?;
                check_id(id, session.id)?;
                for touched in [grouped.at(id)?, rows.at(id)?].into_iter().flatten() {
                    session.last_access_at = session.last_access_at.max(touched);
                }
                add(&mut part, session);
            }
            finish(&mut part);
            Ok(part)
        };
        let scan = &scan;
        let parts = std::thread::scope(|scope| {
            let handles: Vec<_> = (1..parts).map(|i| scope.spawn(move || scan(i))).collect();
            let mut out = vec![scan(0)];
            for h in handles {
                out.push(
                    h.join()
                        .unwrap_or_else(|_| Err(unavailable("a loading thread panicked"))),
                );
            }
            out.into_iter().collect::<Result<Vec<P>, StoreError>>()
        })?;
        let mut tombs = Vec::new();
        for row in self.tombstones.iter() {
            let (_, v) = row.into_inner().map_err(unavailable)?;
            tombs.push(decode(&v)?);
        }
        tracing::debug!(
            scan_ms = started.elapsed().as_millis() as u64,
            "read the sessions back"
        );
        Ok(Loaded {
            parts,
            tombstones: tombs,
        })
    }

    /// What the disk holds for `id`: three point reads at most (the record and its touch
    /// group and row, or the tombstone).
    pub(super) fn read(&self, id: &SessionId) -> Result<OnDisk, StoreError> {
        let key = id.as_bytes().as_slice();
        if let Some(v) = self.sessions.get(key).map_err(unavailable)? {
            let mut session: Session = decode(&v)?;
            check_id(*id, session.id)?;
            let g = group(id);
            if let Some(pairs) = self.touch_groups.get(g).map_err(unavailable)?
                && let Some(at) = find_in_group(&decode_group(&g, &pairs)?, id)
            {
                session.last_access_at = session.last_access_at.max(at);
            }
            if let Some(t) = self.touches.get(key).map_err(unavailable)? {
                session.last_access_at = session.last_access_at.max(decode_touch(&t)?);
            }
            return Ok(OnDisk::Live(session));
        }
        match self.tombstones.get(key).map_err(unavailable)? {
            Some(v) => Ok(OnDisk::Ended(decode(&v)?)),
            None => Ok(OnDisk::Absent),
        }
    }
}

/// Adds a session record in no format sessiond writes to the closed store in `path`, so
/// that its next load fails: for the tests of what a failed load does.
#[cfg(any(test, feature = "conformance"))]
#[allow(clippy::unwrap_used)]
pub(crate) fn write_unreadable_record(path: &Path) {
    let db = Database::builder(path).open().unwrap();
    let sessions = db
        .keyspace(SESSIONS, KeyspaceCreateOptions::default)
        .unwrap();
    sessions.insert([0x55; 16], [0xff, 1, 2]).unwrap();
    db.persist(PersistMode::SyncAll).unwrap();
}

fn check_id(key: SessionId, stored: SessionId) -> Result<(), StoreError> {
    if key == stored {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "the record stored under {key} is session {stored}"
        )))
    }
}

/// Decodes one touch row or group (key, value) into its `(id, ms)` pairs, sorted by id.
type DecodeTouches = fn(&[u8], &[u8]) -> Result<Vec<(SessionId, Timestamp)>, StoreError>;

/// The touches of one keyspace (groups or rows), walked in id order alongside the
/// records.
struct Touches<I> {
    rows: I,
    decode: DecodeTouches,
    /// The current row's pairs not yet passed, reversed (the next one last).
    ahead: Vec<(SessionId, Timestamp)>,
}

impl<I: Iterator<Item = fjall::Guard>> Touches<I> {
    fn new(rows: I, decode: DecodeTouches) -> Touches<I> {
        Touches {
            rows,
            decode,
            ahead: Vec::new(),
        }
    }

    /// The last access a touch gave `id`, if any. Ids must come in increasing order.
    fn at(&mut self, id: SessionId) -> Result<Option<Timestamp>, StoreError> {
        loop {
            while let Some(&(t, at)) = self.ahead.last() {
                if t > id {
                    return Ok(None);
                }
                self.ahead.pop();
                if t == id {
                    return Ok(Some(at));
                }
            }
            let Some(row) = self.rows.next() else {
                return Ok(None);
            };
            let (k, v) = row.into_inner().map_err(unavailable)?;
            self.ahead = (self.decode)(&k, &v)?;
            self.ahead.reverse();
        }
    }
}

/// A touch row: one id and its last access.
fn decode_row(key: &[u8], value: &[u8]) -> Result<Vec<(SessionId, Timestamp)>, StoreError> {
    Ok(vec![(key_id(key)?, decode_touch(value)?)])
}

/// The group key of `id`: its first two bytes.
fn group(id: &SessionId) -> [u8; 2] {
    [id.0[0], id.0[1]]
}

/// A touch group's pairs, sorted by id (`key` is unused: each pair names its id).
fn decode_group(_key: &[u8], value: &[u8]) -> Result<Vec<(SessionId, Timestamp)>, StoreError> {
    let bytes = payload(value)?;
    if bytes.len() % PAIR != 0 {
        return Err(StoreError::Corrupt(
            "a touch group is not a whole number of pairs".into(),
        ));
    }
    let pairs: Vec<(SessionId, Timestamp)> = bytes
        .chunks_exact(PAIR)
        .map(|p| {
            let (id, at) = p.split_at(16);
            let id = id.try_into().expect("a pair starts with 16 bytes of id");
            let at = at.try_into().expect("a pair ends with 8 bytes of time");
            (SessionId(id), Timestamp(i64::from_le_bytes(at)))
        })
        .collect();
    if !pairs.is_sorted_by(|a, b| a.0 < b.0) {
        return Err(StoreError::Corrupt("a touch group is not sorted".into()));
    }
    Ok(pairs)
}

fn encode_group(pairs: &[(SessionId, Timestamp)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + pairs.len() * PAIR);
    out.push(FORMAT);
    for (id, at) in pairs {
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&at.0.to_le_bytes());
    }
    out
}

fn find_in_group(pairs: &[(SessionId, Timestamp)], id: &SessionId) -> Option<Timestamp> {
    pairs
        .binary_search_by(|(t, _)| t.cmp(id))
        .ok()
        .map(|i| pairs[i].1)
}

fn key_id(key: &[u8]) -> Result<SessionId, StoreError> {
    <[u8; 16]>::try_from(key)
        .map(SessionId)
        .map_err(|_| StoreError::Corrupt("a key is not a 16-byte session id".into()))
}

fn encode_touch(at: Timestamp) -> [u8; 9] {
    let mut out = [FORMAT; 9];
    out[1..].copy_from_slice(&at.0.to_le_bytes());
    out
}

fn decode_touch(bytes: &[u8]) -> Result<Timestamp, StoreError> {
    <[u8; 8]>::try_from(payload(bytes)?)
        .map(|b| Timestamp(i64::from_le_bytes(b)))
        .map_err(|_| StoreError::Corrupt("a touch record is not 8 bytes".into()))
}

/// A stored value past its format byte.
fn payload(bytes: &[u8]) -> Result<&[u8], StoreError> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => Ok(rest),
        _ => Err(StoreError::Corrupt("unknown record format".into())),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT];
    postcard::to_io(value, &mut out).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(out)
}

/// A stored value; types with `&str` fields (a [`StoredSession`]) borrow from `bytes`.
fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(payload(bytes)?).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A stored session record read in place: the fields of [`Session`] in its order (postcard
/// writes fields in order and names none), its strings borrowed from the row. A test
/// checks it reads every record `Session` writes.
#[derive(Debug, serde::Deserialize)]
pub(super) struct StoredSession<'a> {
    pub id: SessionId,
    pub verifier: Verifier,
    pub user: &'a str,
    #[serde(borrow)]
    pub universal_id: Option<&'a str>,
    pub auth_level: i32,
    #[serde(borrow)]
    pub attributes: BTreeMap<&'a str, &'a str>,
    pub client_ip: Option<IpAddr>,
    #[serde(borrow)]
    pub user_agent: Option<&'a str>,
    pub policy: &'a str,
    pub created_at: Timestamp,
    pub last_access_at: Timestamp,
    pub idle_timeout_ms: u64,
    pub expires_at: Timestamp,
    pub version: u64,
}

impl StoredSession<'_> {
    /// The session, with `shared` giving the one copy of its user agent and policy name.
    pub fn into_session(self, mut shared: impl FnMut(&str) -> Arc<str>) -> Session {
        Session {
            id: self.id,
            verifier: self.verifier,
            user: Text::new(self.user),
            universal_id: self.universal_id.map(Text::new),
            auth_level: self.auth_level,
            attributes: self
                .attributes
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            client_ip: self.client_ip,
            user_agent: self.user_agent.map(&mut shared),
            policy: shared(self.policy),
            created_at: self.created_at,
            last_access_at: self.last_access_at,
            idle_timeout_ms: self.idle_timeout_ms,
            expires_at: self.expires_at,
            version: self.version,
        }
    }
}

fn write_loop(
    db: Tables,
    rx: mpsc::Receiver<Batch>,
    failed: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while batches.len() < MAX_BATCHES_PER_COMMIT {
            match rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        let result = if failed.load(Ordering::Acquire) {
            Err(StoreError::Unavailable("an earlier write failed".into()))
        } else {
            commit(&db, &batches)
        };
        commits.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, "journal commit failed; refusing further writes");
            failed.store(true, Ordering::Release);
        }
        for b in batches {
            let _ = b.done.send(result.clone());
        }
    }
    // Closing: write the memtables out as tables, so the next start reads sorted tables
    // instead of replaying every journaled change since the last flush.
    if !failed.load(Ordering::Acquire) {
        let k = &db.keyspaces;
        for keyspace in [&k.sessions, &k.tombstones, &k.touch_groups, &k.touches] {
            if let Err(e) = keyspace.rotate_memtable_and_wait() {
                tracing::warn!(error = %e, "flushing the memtable at close failed; the next start replays the journal");
            }
        }
    }
}

fn commit(tables: &Tables, batches: &[Batch]) -> Result<(), StoreError> {
    let mut batch = tables.db.batch().durability(Some(PersistMode::SyncAll));
    let db = &tables.keyspaces;
    // Each group a commit touches is read, changed and written once (this thread is the
    // only writer, so what it reads is what the disk holds). Per id, the latest access, or
    // `None` once the session ended (nothing touches an ended session again).
    let mut groups: BTreeMap<[u8; 2], BTreeMap<SessionId, Option<Timestamp>>> = BTreeMap::new();
    for change in batches.iter().flat_map(|b| &b.changes) {
        match change {
            Change::Put(s) => {
                batch.insert(&db.sessions, s.id.as_bytes().as_slice(), encode(&**s)?);
            }
            Change::Touch(id, at) => {
                let latest = groups
                    .entry(group(id))
                    .or_default()
                    .entry(*id)
                    .or_insert(Some(*at));
                *latest = latest.map(|t| t.max(*at));
            }
            Change::End(t) => {
                batch.remove(&db.sessions, t.id.as_bytes().as_slice());
                groups.entry(group(&t.id)).or_default().insert(t.id, None);
                batch.insert(&db.tombstones, t.id.as_bytes().as_slice(), encode(t)?);
            }
            Change::Purge(id) => batch.remove(&db.tombstones, id.as_bytes().as_slice()),
        }
    }
    for (key, changes) in groups {
        let mut pairs = match db.touch_groups.get(key).map_err(unavailable)? {
            Some(v) => decode_group(&key, &v)?,
            None => Vec::new(),
        };
        let mut changed = false;
        for (id, at) in changes {
            let row = id.as_bytes().as_slice();
            match (pairs.binary_search_by(|(t, _)| t.cmp(&id)), at) {
                (Ok(i), Some(at)) if at > pairs[i].1 => pairs[i].1 = at,
                (Ok(_), Some(_)) => continue,
                (Err(_), Some(at)) if pairs.len() >= MAX_GROUP_PAIRS => {
                    batch.insert(&db.touches, row, encode_touch(at));
                    continue;
                }
                (Err(i), Some(at)) => pairs.insert(i, (id, at)),
                (found, None) => {
                    batch.remove(&db.touches, row);
                    let Ok(i) = found else { continue };
                    pairs.remove(i);
                }
            }
            changed = true;
        }
        if !changed {
            continue;
        }
        if pairs.is_empty() {
            batch.remove(&db.touch_groups, key);
        } else {
            batch.insert(&db.touch_groups, key, encode_group(&pairs));
        }
    }
    batch.commit().map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use sessiond_core::session::NewSession;
    use sessiond_core::{Policy, Verifier};

    use super::*;

    #[test]
    fn a_data_dir_held_by_another_store_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _disk) = open(dir.path()).unwrap();
        let Err(StoreError::Unavailable(message)) = open(dir.path()) else {
            panic!("a second store opened the same data dir");
        };
        assert!(message.contains("is held by another process"), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        drop(first);
    }

    #[test]
    fn a_stored_session_reads_back_as_the_session_written() {
        let full = NewSession {
            user: "alice@example.com".into(),
            universal_id: Some("0c9e5a7e-2b1d-4b8a-9a53-6a3b1f0e7d21".into()),
            auth_level: -7,
            attributes: BTreeMap::from([
                ("dept".into(), "eng".into()),
                ("emoji".into(), "🦀 \"q\" \\".into()),
                (String::new(), String::new()),
            ]),
            client_ip: Some("2001:db8::1".parse().unwrap()),
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
        };
        let bare = NewSession {
            user: "bob".into(),
            ..NewSession::default()
        };
        for new in [full, bare] {
            let id = SessionId::for_user(&new.user).unwrap();
            let mut s = Session::create(
                new,
                id,
                Verifier([9; 32]),
                "strict",
                &Policy::default(),
                Timestamp(1_795_000_000_123),
            );
            s.version = u64::MAX;
            s.last_access_at = Timestamp(1_795_000_060_000);
            let bytes = encode(&s).unwrap();
            let stored: StoredSession<'_> = decode(&bytes).unwrap();
            assert_eq!(stored.into_session(|v| Arc::from(v)), s);
            assert_eq!(decode::<Session>(&bytes).unwrap(), s);
        }
    }

    #[test]
    fn a_truncated_or_unknown_record_is_corrupt_not_a_panic() {
        let s = Session::create(
            NewSession {
                user: "carol".into(),
                ..NewSession::default()
            },
            SessionId([1; 16]),
            Verifier([2; 32]),
            "default",
            &Policy::default(),
            Timestamp(0),
        );
        let bytes = encode(&s).unwrap();
        for cut in [0, 1, 10, bytes.len() - 1] {
            let r = decode::<StoredSession<'_>>(&bytes[..cut]);
            assert!(matches!(r, Err(StoreError::Corrupt(_))), "cut at {cut}");
        }
        let mut other = bytes.clone();
        other[0] = FORMAT + 1;
        assert!(matches!(
            decode::<StoredSession<'_>>(&other),
            Err(StoreError::Corrupt(_))
        ));
    }
}
