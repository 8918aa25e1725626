//! The in-process store: every session in memory, optionally journaled to disk.
//!
//! Memory layout:
//! - `shards`: 64 of them, each owning a contiguous range of the id space (by the top
//!   six bits of the id), so a listing of all sessions pages through them in id order
//!   (sorting one shard's ids per page). Each shard holds live sessions, in a slab whose
//!   slot a new session's id names ([`live`]), and tombstones, in a hash map.
//!   The record is inside its slot: a validate lends it to the caller's answer under the
//!   shard lock ([`SessionStore::validate_with`]) and copies nothing.
//! - `members`: per-user sorted id lists plus the counters behind stats. Every change of
//!   membership (create, end) happens under this one lock, which makes the per-user limit
//!   check and the insert one atomic step.
//! - `expiry` and `purges`: deadlines and tombstone purge times in ordered sets, so a sweep
//!   touches only what is due.
//! - each shard's `dirty`: its ids touched since the last flush, each listed once, kept
//!   under the shard lock a touch holds anyway, so marking one writes nothing the other
//!   cores share.
//!
//! Lock order: the warming touches (see below), then `members`, then one shard, then the
//! leaf locks (`expiry`, `purges`). Every journal append for a session happens
//! while its shard lock is held, so the journal sees changes to one session in the order
//! memory saw them.
//!
//! Warming: [`LocalStore::open_embedded`] answers as soon as fjall has opened its files and
//! reads the sessions back into memory in the background. Until they are all in place,
//! validate and get read the one id they need from the disk (nothing on disk changes
//! meanwhile), and remember the touches they make in `warming.touches`, which the load
//! applies when it installs its sessions; every other call waits for the load. Nothing is
//! written while warming, so the load reads the same state the point reads do.

mod journal;
mod live;

#[cfg(feature = "conformance")]
pub(crate) use journal::write_unreadable_record;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use sessiond_core::input::apply_attributes;
use sessiond_core::policy::UserLimit;
use sessiond_core::{
    EndReason, Session, SessionId, SessionStatus, Text, Timestamp, Tombstone, Verifier,
};
use smallvec::SmallVec;
use tokio::sync::watch;

use self::journal::{Change, Disk, Journal, Loaded, OnDisk, Pending, StoredSession};
use self::live::Live;
use crate::events::{self, ChangeKind, EventLog, Feed};
use crate::intern::Interner;
use crate::{
    AttributeChange, Checked, Created, Ended, Lookup, Page, SessionStore, StoreError, StoreOptions,
    StoreStats, SweepReport, Updated,
};

const SHARDS: usize = 64;
/// Due entries taken from an ordered index per lock acquisition during a sweep.
const SWEEP_BATCH: usize = 1024;
/// Touched ids a flush writes out per shard lock acquisition.
const FLUSH_CHUNK: usize = 512;

/// Sessions in memory, with an optional durable journal. See the module docs.
pub struct LocalStore {
    shards: Box<[RwLock<Shard>]>,
    members: Mutex<Members>,
    /// `(deadline, id)` of every live session, as last scheduled.
    expiry: Mutex<BTreeSet<(Timestamp, SessionId)>>,
    /// `(purge_at, id)` of every tombstone.
    purges: Mutex<BTreeSet<(Timestamp, SessionId)>>,
    journal: Journal,
    /// Every create, update and end, for `/v1/events`.
    events: EventLog,
    /// The one copy of each user agent and policy name the records share.
    strings: Interner,
    /// The background load at open (always loaded for the memory store).
    warming: Warming,
    options: StoreOptions,
}

/// [`Warming::state`]: sessions are still being read back; validate reads the disk.
const LOADING: u8 = 0;
/// Every session on disk is in memory.
const LOADED: u8 = 1;
/// The load failed: the store refuses to serve (it cannot tell what it holds).
const FAILED: u8 = 2;

/// The background load of an embedded store; see the module docs.
struct Warming {
    /// [`LOADING`], [`LOADED`] or [`FAILED`]: the one thing a validate checks.
    state: AtomicU8,
    /// Becomes `Some` when the load ends, with how it ended: what waiting calls watch.
    done: watch::Sender<Option<Result<(), StoreError>>>,
    /// What validates read while loading; let go once the load ends, so that nothing
    /// holds the files open after [`SessionStore::close`].
    disk: RwLock<Option<Disk>>,
    /// Touches made while loading (the latest per id), applied when the load installs its
    /// sessions; `None` from then on, so a validate that finds `None` asks memory instead.
    touches: Mutex<Option<FxHashMap<SessionId, Timestamp>>>,
}

impl Warming {
    fn loaded() -> Warming {
        Warming {
            state: AtomicU8::new(LOADED),
            done: watch::Sender::new(Some(Ok(()))),
            disk: RwLock::new(None),
            touches: Mutex::new(None),
        }
    }

    fn loading(disk: Disk) -> Warming {
        Warming {
            state: AtomicU8::new(LOADING),
            done: watch::Sender::new(None),
            disk: RwLock::new(Some(disk)),
            touches: Mutex::new(Some(FxHashMap::default())),
        }
    }

    /// Fails once the load has failed, with why.
    fn check(&self) -> Result<(), StoreError> {
        if self.state.load(Ordering::Acquire) != FAILED {
            return Ok(());
        }
        match &*self.done.borrow() {
            Some(Err(e)) => Err(e.clone()),
            // Between the state and its reason (set in that order).
            _ => Err(StoreError::Unavailable(
                "the store could not be loaded".into(),
            )),
        }
    }
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

// A slab the ids point into and hash maps, not ordered trees: a lookup is a cache miss or
// two instead of one per tree level (profiled at 1M sessions: B-tree node reads were the
// largest part of validate's own time). Fx hashing is safe here: ids come from the
// server's CSPRNG, and a token's id is looked up only after its MAC checked, so nobody can
// choose colliding keys.
#[derive(Default)]
struct Shard {
    live: Live,
    ended: FxHashMap<SessionId, Tombstone>,
    /// This shard's ids touched since the last flush (only kept when there is a journal).
    dirty: Vec<SessionId>,
}

struct Entry {
    session: Session,
    /// The deadline under which this session sits in `expiry`.
    scheduled: Timestamp,
    /// Touched since the last flush, and listed in its shard's `dirty`.
    dirty: bool,
}

impl Entry {
    /// A live session, scheduled at its deadline and not dirty.
    fn new(session: Session) -> Entry {
        let (scheduled, _) = session.deadline();
        Entry {
            session,
            scheduled,
            dirty: false,
        }
    }
}

/// What one loading thread builds from its range of ids (see `open_embedded`).
struct LoadPart {
    /// All [`SHARDS`]; only those in this part's range are filled.
    shards: Vec<Shard>,
    /// The highest slot a loaded id may name and be put at (see [`Live::load`]): twice
    /// the sessions a shard is expected to hold, and some.
    slot_limit: usize,
    /// Sessions whose id names no slot this load could give them: inserted once the slabs
    /// know their holes ([`Live::finish_load`]).
    rest: Vec<Entry>,
    deadlines: Vec<(Timestamp, SessionId)>,
    /// Users and counters of this part's sessions (no tombstones).
    members: Members,
    strings: Interner,
}

impl LoadPart {
    /// One of `parts`, sized for about `expected` sessions (so loading does not grow and
    /// rehash its maps as it goes; the slabs grow by whole chunks anyway).
    fn new(parts: usize, expected: usize) -> LoadPart {
        let per_shard = expected / (SHARDS / parts);
        LoadPart {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            slot_limit: 2 * per_shard + 1024,
            rest: Vec::new(),
            deadlines: Vec::with_capacity(expected),
            members: Members {
                by_user: FxHashMap::with_capacity_and_hasher(expected / 2, Default::default()),
                ..Members::default()
            },
            strings: Interner::default(),
        }
    }

    fn add(&mut self, stored: StoredSession<'_>) {
        // Strings this part already holds are shared, not copied: user agents and policy
        // names come from the interner.
        let session = stored.into_session(|s| self.strings.shared(s));
        self.members.join(&session);
        let entry = Entry::new(session);
        let id = entry.session.id;
        self.deadlines.push((entry.scheduled, id));
        if let Some(entry) = self.shards[LocalStore::shard_index(&id)]
            .live
            .load(entry, self.slot_limit)
        {
            self.rest.push(entry);
        }
    }

    /// Called by the loading thread once the part is complete: finishes its shards' slabs
    /// and sorts its deadlines there, in parallel with the other parts, rather than in
    /// `install`.
    fn finish(&mut self) {
        for shard in &mut self.shards {
            shard.live.finish_load();
        }
        for entry in std::mem::take(&mut self.rest) {
            self.shards[LocalStore::shard_index(&entry.session.id)]
                .live
                .insert(entry);
        }
        self.deadlines.sort_unstable();
    }
}

/// One user's live ids, sorted. Most users have one or two sessions (a phone and a laptop),
/// which then sit in the index itself with no allocation of their own.
type UserIds = SmallVec<[SessionId; 2]>;

#[derive(Default)]
struct Members {
    /// Keyed by user name (inline when short, as in the records). Fx hashing: user names
    /// come from authenticated agents or from the users directory, not from anonymous
    /// clients (the user-agent interner, whose keys do, keeps std's keyed hashing).
    by_user: FxHashMap<Text, UserIds>,
    per_policy: FxHashMap<Arc<str>, u64>,
    live: u64,
    ended_by_reason: BTreeMap<EndReason, u64>,
}

impl Members {
    /// Counts a live session and lists it under its user (kept sorted; a load, which
    /// reads ids in order, appends).
    fn join(&mut self, s: &Session) {
        // Look up before inserting: a key is copied only when new.
        match self.by_user.get_mut(&*s.user) {
            Some(ids) => {
                if let Err(at) = ids.binary_search(&s.id) {
                    ids.insert(at, s.id);
                }
            }
            None => {
                self.by_user
                    .insert(s.user.clone(), SmallVec::from_slice(&[s.id]));
            }
        }
        match self.per_policy.get_mut(&*s.policy) {
            Some(n) => *n += 1,
            None => {
                self.per_policy.insert(s.policy.clone(), 1);
            }
        }
        self.live += 1;
    }

    /// Undoes [`Members::join`].
    fn leave(&mut self, s: &Session) {
        if let Some(ids) = self.by_user.get_mut(&*s.user) {
            if let Ok(at) = ids.binary_search(&s.id) {
                ids.remove(at);
            }
            if ids.is_empty() {
                self.by_user.remove(&*s.user);
            }
        }
        if let Some(n) = self.per_policy.get_mut(&*s.policy) {
            *n -= 1;
            if *n == 0 {
                self.per_policy.remove(&*s.policy);
            }
        }
        self.live -= 1;
    }

    /// Adds the users and counters of another set of live sessions (a loading thread's).
    fn absorb(&mut self, other: Members) {
        self.live += other.live;
        for (policy, n) in other.per_policy {
            *self.per_policy.entry(policy).or_default() += n;
        }
        // Ids made by `SessionId::for_user` put a user in one loading thread only; anything
        // else (ids from an older format, say) is merged rather than trusted to be disjoint.
        if self.by_user.is_empty() {
            self.by_user = other.by_user;
        } else {
            self.by_user.reserve(other.by_user.len());
            for (user, ids) in other.by_user {
                let all = self.by_user.entry(user).or_default();
                all.extend(ids);
                all.sort_unstable();
            }
        }
    }
}

impl LocalStore {
    /// A store that lives and dies with the process.
    pub fn memory(options: StoreOptions) -> LocalStore {
        LocalStore::with_journal(Journal::None, Warming::loaded(), options)
    }

    /// The embedded durable store in directory `path` (a fjall database). Runs blocking I/O
    /// (fjall replays its journal here): call it from a blocking context.
    ///
    /// It answers once the files are open; the sessions are then read back into memory by
    /// a background thread (the module docs say what is served meanwhile), and
    /// [`SessionStore::loaded`] resolves when they are all in place.
    ///
    /// Loading is parallel: each thread scans one range of ids, which is a whole number of
    /// shards, and builds those shards and its share of the indexes on its own (a user's
    /// sessions share their id's first bytes, so each user's list is built by one thread).
    /// The shares are then moved into place and the deadline index is built in one pass.
    pub fn open_embedded(
        path: &Path,
        options: StoreOptions,
    ) -> Result<Arc<LocalStore>, StoreError> {
        LocalStore::open_embedded_gated(path, options, None)
    }

    /// [`LocalStore::open_embedded`], whose load first waits for `gate` to send (or close)
    /// when one is given: tests hold the store in its warming state with it.
    fn open_embedded_gated(
        path: &Path,
        options: StoreOptions,
        gate: Option<std::sync::mpsc::Receiver<()>>,
    ) -> Result<Arc<LocalStore>, StoreError> {
        let (journal, disk) = journal::open(path)?;
        let store = Arc::new(LocalStore::with_journal(
            journal,
            Warming::loading(disk.clone()),
            options,
        ));
        let loader = store.clone();
        std::thread::Builder::new()
            .name("sessiond-load".into())
            .spawn(move || {
                if let Some(gate) = gate {
                    let _ = gate.recv();
                }
                loader.load(disk);
            })
            .map_err(|e| StoreError::Unavailable(format!("starting the load: {e}")))?;
        Ok(store)
    }

    /// Reads every session back from `disk`, installs them, and ends the warming.
    fn load(&self, disk: Disk) {
        let started = std::time::Instant::now();
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(SHARDS);
        // A power of two, so every range is a whole number of shards.
        let parts = 1 << threads.ilog2();
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            disk.load(
                parts,
                |_, expected| LoadPart::new(parts, expected),
                LoadPart::add,
                LoadPart::finish,
            )
        }))
        .unwrap_or_else(|_| Err(StoreError::Unavailable("the load panicked".into())));
        let result = read.map(|loaded| {
            let read = started.elapsed();
            let (sessions, tombstones) = self.install(loaded);
            tracing::info!(
                sessions,
                tombstones,
                // Sessions whose id names no slot (made before ids carried one): each
                // validate of those pays a hash lookup more.
                spilled = self.spilled(),
                threads = parts,
                read_ms = read.as_millis() as u64,
                indexed_ms = (started.elapsed() - read).as_millis() as u64,
                "loaded the embedded store"
            );
        });
        if let Err(e) = &result {
            tracing::error!(error = %e, "loading the embedded store failed; refusing to serve");
            self.warming.state.store(FAILED, Ordering::Release);
        }
        // Let go of the files before anyone waiting hears of the end (and may close).
        drop(disk);
        *self.warming.disk.write() = None;
        self.warming.done.send_replace(Some(result));
    }

    /// Moves what the load read into the empty store, applies the touches validates made
    /// meanwhile, and ends the warming. Returns how many sessions and tombstones it held.
    fn install(&self, loaded: Loaded<LoadPart>) -> (u64, usize) {
        let sessions = self.install_parts(loaded.parts);
        let tombstones = loaded.tombstones.len();
        for tomb in loaded.tombstones {
            self.insert_tombstone(tomb);
        }
        // Until the state says loaded, validates read the disk and record their touches in
        // the map. Taken and applied under its lock, and the state flipped before letting
        // go: a validate that then finds `None` finds memory complete.
        let mut early = self.warming.touches.lock();
        // Set, not replayed through `Session::touch`: each was a live touch when made, but
        // only the latest is kept, and it may lie past the deadline the earlier ones moved.
        for (id, at) in early.take().unwrap_or_default() {
            let mut guard = self.shard(&id).write();
            let shard = &mut *guard;
            if let Some(entry) = shard.live.get_mut(&id)
                && at > entry.session.last_access_at
            {
                entry.session.last_access_at = at;
                self.mark_dirty(entry, &mut shard.dirty);
            }
        }
        self.warming.state.store(LOADED, Ordering::Release);
        (sessions, tombstones)
    }

    /// Moves loaded parts into the empty store; returns how many sessions they held.
    fn install_parts(&self, parts: Vec<LoadPart>) -> u64 {
        let mut m = self.members.lock();
        let mut deadlines = Vec::new();
        for part in parts {
            for (i, shard) in part.shards.into_iter().enumerate() {
                if shard.live.has_slots() {
                    self.shards[i].write().live = shard.live;
                }
            }
            m.absorb(part.members);
            deadlines.extend(part.deadlines);
            self.strings.absorb(part.strings);
        }
        // Each part sorted its own deadlines in its loading thread; collecting into the set
        // sorts stably, which finds those runs and only merges them.
        *self.expiry.lock() = deadlines.into_iter().collect();
        m.live
    }

    /// Live sessions kept through a shard's spill map (see [`live`]).
    fn spilled(&self) -> usize {
        self.shards.iter().map(|s| s.read().live.spilled()).sum()
    }

    /// Durable transactions committed since open (0 for the memory store). Many concurrent
    /// writes share one commit; the conformance tests read this to see how many.
    pub fn durable_commits(&self) -> u64 {
        self.journal.commits()
    }

    fn with_journal(journal: Journal, warming: Warming, options: StoreOptions) -> LocalStore {
        LocalStore {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            members: Mutex::new(Members::default()),
            expiry: Mutex::new(BTreeSet::new()),
            purges: Mutex::new(BTreeSet::new()),
            journal,
            events: EventLog::new(),
            strings: Interner::default(),
            warming,
            options,
        }
    }

    fn shard_index(id: &SessionId) -> usize {
        usize::from(id.0[0] >> 2)
    }

    fn shard(&self, id: &SessionId) -> &RwLock<Shard> {
        &self.shards[Self::shard_index(id)]
    }

    /// Gives back the slot [`SessionStore::issue_slot`] held for `id`, whose create did not
    /// happen (a no-op for an id it did not issue).
    fn release_slot(&self, id: &SessionId) {
        self.shard(id).write().live.release(id);
    }

    fn insert_live(&self, m: &mut Members, shard: &mut Shard, session: Session) {
        m.join(&session);
        let entry = Entry::new(session);
        self.expiry
            .lock()
            .insert((entry.scheduled, entry.session.id));
        shard.live.insert(entry);
    }

    fn insert_tombstone(&self, tomb: Tombstone) {
        let mut m = self.members.lock();
        *m.ended_by_reason.entry(tomb.reason).or_default() += 1;
        self.purges.lock().insert((tomb.purge_at, tomb.id));
        self.shard(&tomb.id).write().ended.insert(tomb.id, tomb);
    }

    /// Ends the live session `id` in memory and journals it; `reason` applies unless the
    /// session had already passed its deadline, whose own reason and instant then stand.
    /// Returns the tombstone, whether it was live until now, and the durability ticket.
    fn end_locked(
        &self,
        m: &mut Members,
        shard: &mut Shard,
        id: SessionId,
        reason: EndReason,
        now: Timestamp,
    ) -> Option<(Tombstone, bool, Pending)> {
        let entry = shard.live.remove(&id)?;
        let session = entry.session;
        let (tomb, was_live) = match session.status(now) {
            SessionStatus::Live => (session.end(reason, now, self.options.ended_retention), true),
            SessionStatus::Expired { reason, at } => {
                (session.end(reason, at, self.options.ended_retention), false)
            }
        };
        m.leave(&session);
        *m.ended_by_reason.entry(tomb.reason).or_default() += 1;
        self.expiry.lock().remove(&(entry.scheduled, id));
        self.purges.lock().insert((tomb.purge_at, id));
        shard.ended.insert(id, tomb.clone());
        let pending = self.journal.append(vec![Change::End(tomb.clone())]);
        self.events.publish(events::Change {
            kind: ChangeKind::Ended,
            session: id,
            user: tomb.user.clone(),
            version: session.version + 1,
            reason: Some(tomb.reason),
            at: tomb.ended_at,
        });
        Some((tomb, was_live, pending))
    }

    /// A retained tombstone for `id`, if `verifier` (when given) matches it.
    fn tombstone(
        shard: &Shard,
        id: &SessionId,
        verifier: Option<&Verifier>,
        now: Timestamp,
    ) -> Lookup {
        match shard.ended.get(id) {
            Some(t) => Self::retained(t, verifier, now),
            None => Lookup::NotFound,
        }
    }

    /// `t`, if it is still retained at `now` and `verifier` (when given) matches it.
    fn retained(t: &Tombstone, verifier: Option<&Verifier>, now: Timestamp) -> Lookup {
        if now < t.purge_at && verifier.is_none_or(|v| t.verifier.matches(v)) {
            Lookup::Ended(t.clone())
        } else {
            Lookup::NotFound
        }
    }

    /// What a read of the live `session` answers when it is not the caller's live session:
    /// `NotFound` for a verifier that does not match, its tombstone once past its deadline.
    fn refusal(
        &self,
        session: &Session,
        verifier: Option<&Verifier>,
        now: Timestamp,
    ) -> Option<Lookup> {
        // The caller answers with the whole record: fetch its cache lines now, together
        // with the ones read below, not one by one as the answer reaches them.
        std::hint::black_box(session.warm());
        if verifier.is_some_and(|v| !session.verifier.matches(v)) {
            return Some(Lookup::NotFound);
        }
        session
            .expired_tombstone(now, self.options.ended_retention)
            .map(Lookup::Ended)
    }

    /// Ready for a call that needs every session in memory: waits for the load.
    async fn usable(&self) -> Result<(), StoreError> {
        self.wait_loaded().await?;
        self.journal.check()
    }

    /// Waits until every session on disk is in memory; fails if the load failed.
    async fn wait_loaded(&self) -> Result<(), StoreError> {
        if self.warming.state.load(Ordering::Acquire) == LOADED {
            return Ok(());
        }
        self.load_ended().await
    }

    /// Waits until the load has ended and let go of the files (a little after the state
    /// says loaded); how it ended.
    async fn load_ended(&self) -> Result<(), StoreError> {
        let mut done = self.warming.done.subscribe();
        let ended = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StoreError::Unavailable("the load stopped".into()))?;
        match &*ended {
            Some(Err(e)) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// The answer to a validate (`verifier` given) or get while the store is still
    /// loading, read from the disk: the same answer memory will give once loaded. `None`
    /// once the load has installed its sessions (ask memory then).
    #[cold]
    fn read_warming(
        &self,
        id: SessionId,
        verifier: Option<&Verifier>,
        touch: bool,
        now: Timestamp,
    ) -> Result<Option<Lookup>, StoreError> {
        self.warming.check()?;
        let Some(disk) = self.warming.disk.read().clone() else {
            return Ok(None);
        };
        let stored = disk.read(&id)?;
        let mut early = self.warming.touches.lock();
        let Some(early) = early.as_mut() else {
            return Ok(None);
        };
        Ok(Some(match stored {
            OnDisk::Absent => Lookup::NotFound,
            OnDisk::Ended(t) => Self::retained(&t, verifier, now),
            OnDisk::Live(mut session) => {
                if let Some(&at) = early.get(&id) {
                    session.last_access_at = session.last_access_at.max(at);
                }
                if let Some(refused) = self.refusal(&session, verifier, now) {
                    return Ok(Some(refused));
                }
                if touch && session.touch(now) {
                    early.insert(id, now);
                }
                Lookup::Live(Arc::new(session))
            }
        }))
    }

    /// What validate and validate_with do: the live session lent to `answer` under its
    /// shard lock, touched first when `touch` is set, or why not.
    fn check(
        &self,
        id: SessionId,
        verifier: &Verifier,
        touch: bool,
        now: Timestamp,
        answer: &mut dyn FnMut(&Session),
    ) -> Result<Checked, StoreError> {
        self.journal.check()?;
        if self.warming.state.load(Ordering::Acquire) != LOADED
            && let Some(found) = self.read_warming(id, Some(verifier), touch, now)?
        {
            return Ok(Checked::lend(found, answer));
        }
        if !touch {
            let shard = self.shard(&id).read();
            return Ok(self.read_live(&shard, &id, Some(verifier), now, answer));
        }
        let mut guard = self.shard(&id).write();
        let shard = &mut *guard;
        let Some(entry) = shard.live.get_mut(&id) else {
            return Ok(Checked::lend(
                Self::tombstone(shard, &id, Some(verifier), now),
                answer,
            ));
        };
        if let Some(refused) = self.refusal(&entry.session, Some(verifier), now) {
            return Ok(Checked::lend(refused, answer));
        }
        if entry.session.touch(now) {
            self.mark_dirty(entry, &mut shard.dirty);
        }
        answer(&entry.session);
        Ok(Checked::Live)
    }

    /// A read of `id` that touches nothing: the live record lent to `answer`, or why not.
    fn read_live(
        &self,
        shard: &Shard,
        id: &SessionId,
        verifier: Option<&Verifier>,
        now: Timestamp,
        answer: &mut dyn FnMut(&Session),
    ) -> Checked {
        let Some(entry) = shard.live.get(id) else {
            return Checked::lend(Self::tombstone(shard, id, verifier, now), answer);
        };
        if let Some(refused) = self.refusal(&entry.session, verifier, now) {
            return Checked::lend(refused, answer);
        }
        answer(&entry.session);
        Checked::Live
    }

    /// What `lend` answers, the live record copied out for a caller that keeps it (the
    /// hot paths take the lent record instead: [`SessionStore::validate_with`]).
    fn copied(
        lend: impl FnOnce(&mut dyn FnMut(&Session)) -> Result<Checked, StoreError>,
    ) -> Result<Lookup, StoreError> {
        let mut copy = None;
        let checked = lend(&mut |s| copy = Some(Arc::new(s.clone())))?;
        Ok(Lookup::copied(checked, copy))
    }

    /// Lists a touched entry in its shard's `dirty`, once per flush.
    fn mark_dirty(&self, entry: &mut Entry, dirty: &mut Vec<SessionId>) {
        if self.journal.is_durable() && !entry.dirty {
            entry.dirty = true;
            dirty.push(entry.session.id);
        }
    }

    /// Takes up to [`SWEEP_BATCH`] entries due at `now` from an ordered index.
    fn take_due(
        index: &Mutex<BTreeSet<(Timestamp, SessionId)>>,
        now: Timestamp,
    ) -> Vec<(Timestamp, SessionId)> {
        let mut set = index.lock();
        let mut due = Vec::new();
        while due.len() < SWEEP_BATCH {
            match set.first() {
                Some(&(t, id)) if t <= now => {
                    set.pop_first();
                    due.push((t, id));
                }
                _ => break,
            }
        }
        due
    }

    fn sweep_expired(&self, now: Timestamp, report: &mut SweepReport) -> Vec<Pending> {
        let mut pendings = Vec::new();
        loop {
            let due = Self::take_due(&self.expiry, now);
            if due.is_empty() {
                break;
            }
            let mut m = self.members.lock();
            for (scheduled, id) in due {
                let mut shard = self.shard(&id).write();
                let Some(entry) = shard.live.get_mut(&id) else {
                    continue;
                };
                if entry.scheduled != scheduled {
                    continue; // rescheduled meanwhile; its newer entry is in the index
                }
                match entry.session.status(now) {
                    SessionStatus::Live => {
                        let (deadline, _) = entry.session.deadline();
                        entry.scheduled = deadline;
                        self.expiry.lock().insert((deadline, id));
                        report.rescheduled += 1;
                    }
                    SessionStatus::Expired { reason, .. } => {
                        // The entry was already taken out of `expiry`; end_locked's removal
                        // of it is then a no-op.
                        if let Some((_, _, p)) =
                            self.end_locked(&mut m, &mut shard, id, reason, now)
                        {
                            pendings.push(p);
                            report.expired += 1;
                        }
                    }
                }
            }
        }
        pendings
    }

    fn sweep_tombstones(&self, now: Timestamp, report: &mut SweepReport) -> Vec<Pending> {
        let mut pendings = Vec::new();
        loop {
            let due = Self::take_due(&self.purges, now);
            if due.is_empty() {
                break;
            }
            let mut m = self.members.lock();
            for (purge_at, id) in due {
                let mut shard = self.shard(&id).write();
                if shard.ended.get(&id).map(|t| t.purge_at) != Some(purge_at) {
                    continue;
                }
                if let Some(t) = shard.ended.remove(&id) {
                    if let Some(n) = m.ended_by_reason.get_mut(&t.reason) {
                        *n = n.saturating_sub(1);
                    }
                    pendings.push(self.journal.append(vec![Change::Purge(id)]));
                    report.purged += 1;
                }
            }
        }
        pendings
    }

    fn list_user(
        &self,
        user: &str,
        cursor: Option<SessionId>,
        limit: usize,
        now: Timestamp,
    ) -> Page {
        let m = self.members.lock();
        let Some(ids) = m.by_user.get(user) else {
            return Page::default();
        };
        let start = cursor.map_or(0, |c| ids.partition_point(|id| *id <= c));
        let mut page = Page::default();
        for id in &ids[start..] {
            let shard = self.shard(id).read();
            if let Some(e) = shard
                .live
                .get(id)
                .filter(|e| e.session.status(now) == SessionStatus::Live)
            {
                if page.sessions.len() == limit {
                    page.next_cursor = page.sessions.last().map(|s| s.id);
                    break;
                }
                page.sessions.push(Session::clone(&e.session));
            }
        }
        page
    }

    /// Pages through the shards in id order. A shard is a slab, so each page collects
    /// the shard's live ids after the cursor and keeps the smallest: linear in the shard's
    /// size, which is an admin listing's cost, not validate's.
    fn list_all(&self, cursor: Option<SessionId>, limit: usize, now: Timestamp) -> Page {
        let first = cursor.as_ref().map_or(0, Self::shard_index);
        let mut page = Page::default();
        for shard in &self.shards[first..] {
            let shard = shard.read();
            let mut ids: Vec<SessionId> = shard
                .live
                .iter()
                .filter(|e| {
                    cursor.is_none_or(|c| e.session.id > c)
                        && e.session.status(now) == SessionStatus::Live
                })
                .map(|e| e.session.id)
                .collect();
            // One more than the page still needs tells whether a next page exists.
            let want = limit - page.sessions.len() + 1;
            if ids.len() > want {
                ids.select_nth_unstable(want - 1);
                ids.truncate(want);
            }
            ids.sort_unstable();
            for id in ids {
                if page.sessions.len() == limit {
                    page.next_cursor = page.sessions.last().map(|s| s.id);
                    return page;
                }
                if let Some(e) = shard.live.get(&id) {
                    page.sessions.push(Session::clone(&e.session));
                }
            }
        }
        page
    }
}

/// Waits for every ticket; the first failure wins.
async fn all_durable(pendings: Vec<Pending>) -> Result<(), StoreError> {
    let mut result = Ok(());
    for p in pendings {
        if let Err(e) = p.durable().await {
            result = result.and(Err(e));
        }
    }
    result
}

#[async_trait]
impl SessionStore for LocalStore {
    fn kind(&self) -> &'static str {
        if self.journal.is_durable() {
            "embedded"
        } else {
            "memory"
        }
    }

    fn issue_slot(&self, id: &mut SessionId) {
        // While loading, the slab is being built elsewhere: the id keeps its random bytes
        // and the session is found through the spill map.
        if self.warming.state.load(Ordering::Acquire) == LOADED {
            self.shard(id).write().live.issue(id);
        }
    }

    async fn create(
        &self,
        mut session: Session,
        limit: UserLimit,
        now: Timestamp,
    ) -> Result<Created, StoreError> {
        if let Err(e) = self.usable().await {
            self.release_slot(&session.id);
            return Err(e);
        }
        self.strings.share(&mut session);
        let mut pendings = Vec::new();
        let mut displaced = Vec::new();
        // The stored record, or `None` when the user's limit denied the create.
        let created = 'locked: {
            let mut m = self.members.lock();
            // The user's live sessions, oldest first; any past their deadline end here.
            let mut live: Vec<(Timestamp, SessionId)> = Vec::new();
            let ids: UserIds = m.by_user.get(&*session.user).cloned().unwrap_or_default();
            for id in ids {
                let mut shard = self.shard(&id).write();
                let Some(e) = shard.live.get(&id) else {
                    continue;
                };
                match e.session.status(now) {
                    SessionStatus::Live => live.push((e.session.created_at, id)),
                    SessionStatus::Expired { reason, .. } => {
                        if let Some((_, _, p)) =
                            self.end_locked(&mut m, &mut shard, id, reason, now)
                        {
                            pendings.push(p);
                        }
                    }
                }
            }
            let Some(n) = limit.to_displace(live.len()) else {
                self.release_slot(&session.id);
                break 'locked None;
            };
            live.sort_unstable();
            for &(_, id) in live.iter().take(n) {
                let mut shard = self.shard(&id).write();
                if let Some((_, _, p)) =
                    self.end_locked(&mut m, &mut shard, id, EndReason::Displaced, now)
                {
                    pendings.push(p);
                    displaced.push(id);
                }
            }
            let mut shard = self.shard(&session.id).write();
            if shard.live.contains(&session.id) || shard.ended.contains_key(&session.id) {
                shard.live.release(&session.id);
                return Err(StoreError::Corrupt("session id collision".into()));
            }
            let shared = Arc::new(session);
            pendings.push(self.journal.append(vec![Change::Put(shared.clone())]));
            self.insert_live(&mut m, &mut shard, Session::clone(&shared));
            self.events.publish(events::Change {
                kind: ChangeKind::Created,
                session: shared.id,
                user: shared.user.clone(),
                version: shared.version,
                reason: None,
                at: shared.created_at,
            });
            Some(shared)
        };
        all_durable(pendings).await?;
        Ok(match created {
            Some(session) => Created::Created { session, displaced },
            None => Created::LimitReached { limit: limit.max },
        })
    }

    async fn validate(
        &self,
        id: SessionId,
        verifier: &Verifier,
        touch: bool,
        now: Timestamp,
    ) -> Result<Lookup, StoreError> {
        Self::copied(|answer| self.check(id, verifier, touch, now, answer))
    }

    /// Always answers: a validate reads memory, or while loading one record from the
    /// disk, without waiting on anything. (`validate_with` is the trait's, which takes
    /// this answer.)
    fn validate_ready(
        &self,
        id: SessionId,
        verifier: &Verifier,
        touch: bool,
        now: Timestamp,
        answer: &mut (dyn for<'s> FnMut(&'s Session) + Send),
    ) -> Option<Result<Checked, StoreError>> {
        Some(self.check(id, verifier, touch, now, answer))
    }

    async fn get(&self, id: SessionId, now: Timestamp) -> Result<Lookup, StoreError> {
        self.journal.check()?;
        if self.warming.state.load(Ordering::Acquire) != LOADED
            && let Some(answer) = self.read_warming(id, None, false, now)?
        {
            return Ok(answer);
        }
        let shard = self.shard(&id).read();
        Self::copied(|answer| Ok(self.read_live(&shard, &id, None, now, answer)))
    }

    async fn update(
        &self,
        id: SessionId,
        verifier: &Verifier,
        change: &AttributeChange,
        expected_version: Option<u64>,
        now: Timestamp,
    ) -> Result<Updated, StoreError> {
        self.usable().await?;
        let (session, pending) = {
            let mut shard = self.shard(&id).write();
            let Some(entry) = shard.live.get_mut(&id) else {
                return Ok(match Self::tombstone(&shard, &id, Some(verifier), now) {
                    Lookup::Ended(t) => Updated::Ended(t),
                    _ => Updated::NotFound,
                });
            };
            if !entry.session.verifier.matches(verifier) {
                return Ok(Updated::NotFound);
            }
            if let Some(t) = entry
                .session
                .expired_tombstone(now, self.options.ended_retention)
            {
                return Ok(Updated::Ended(t));
            }
            if let Some(v) = expected_version.filter(|v| *v != entry.session.version) {
                let _ = v;
                return Ok(Updated::VersionConflict {
                    current: entry.session.version,
                });
            }
            let attributes =
                match apply_attributes(&entry.session.attributes, &change.set, &change.remove) {
                    Ok(a) => a,
                    Err(e) => return Ok(Updated::Invalid(e)),
                };
            let mut next = Session::clone(&entry.session);
            next.attributes = attributes;
            next.touch(now);
            next.version += 1;
            let shared = Arc::new(next.clone());
            let pending = self.journal.append(vec![Change::Put(shared.clone())]);
            self.events.publish(events::Change {
                kind: ChangeKind::Updated,
                session: id,
                user: next.user.clone(),
                version: next.version,
                reason: None,
                at: now,
            });
            entry.session = Session::clone(&shared);
            (next, pending)
        };
        pending.durable().await?;
        Ok(Updated::Updated(session))
    }

    async fn end(
        &self,
        id: SessionId,
        verifier: Option<&Verifier>,
        reason: EndReason,
        now: Timestamp,
    ) -> Result<Ended, StoreError> {
        self.usable().await?;
        let (tomb, was_live, pending) = {
            let mut m = self.members.lock();
            let mut shard = self.shard(&id).write();
            match shard.live.get(&id) {
                Some(e) if verifier.is_none_or(|v| e.session.verifier.matches(v)) => {}
                Some(_) => return Ok(Ended::NotFound),
                None => {
                    return Ok(match Self::tombstone(&shard, &id, verifier, now) {
                        Lookup::Ended(t) => Ended::AlreadyEnded(t),
                        _ => Ended::NotFound,
                    });
                }
            }
            match self.end_locked(&mut m, &mut shard, id, reason, now) {
                Some(ended) => ended,
                None => return Ok(Ended::NotFound),
            }
        };
        pending.durable().await?;
        Ok(if was_live {
            Ended::Ended(tomb)
        } else {
            Ended::AlreadyEnded(tomb)
        })
    }

    async fn end_user(
        &self,
        user: &str,
        reason: EndReason,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.usable().await?;
        let mut pendings = Vec::new();
        let mut count = 0;
        {
            let mut m = self.members.lock();
            let ids: UserIds = m.by_user.get(user).cloned().unwrap_or_default();
            for id in ids {
                let mut shard = self.shard(&id).write();
                if let Some((_, was_live, p)) = self.end_locked(&mut m, &mut shard, id, reason, now)
                {
                    pendings.push(p);
                    count += u64::from(was_live);
                }
            }
        }
        all_durable(pendings).await?;
        Ok(count)
    }

    async fn list(
        &self,
        user: Option<&str>,
        cursor: Option<SessionId>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Page, StoreError> {
        self.usable().await?;
        let limit = limit.max(1);
        Ok(match user {
            Some(u) => self.list_user(u, cursor, limit, now),
            None => self.list_all(cursor, limit, now),
        })
    }

    async fn sweep(&self, now: Timestamp) -> Result<SweepReport, StoreError> {
        self.usable().await?;
        self.strings.purge();
        let mut report = SweepReport::default();
        let mut pendings = self.sweep_expired(now, &mut report);
        pendings.extend(self.sweep_tombstones(now, &mut report));
        all_durable(pendings).await?;
        Ok(report)
    }

    async fn flush_touches(&self) -> Result<u64, StoreError> {
        self.usable().await?;
        let mut pendings = Vec::new();
        let mut n = 0;
        for lock in &self.shards {
            let mut ids = std::mem::take(&mut lock.write().dirty);
            // In id order, which puts whole touch groups (ids sharing their first two
            // bytes, one row on disk; a shard holds whole groups) in each chunk, so a
            // group is rewritten about once per flush. Taken FLUSH_CHUNK ids per write lock
            // and per turn of the async worker: a flush after a busy window carries up to
            // a million ids, and neither that shard's validates nor the other connections
            // served by this worker should wait for all of them.
            ids.sort_unstable();
            for chunk in ids.chunks(FLUSH_CHUNK) {
                {
                    let mut shard = lock.write();
                    let puts: Vec<Change> = chunk
                        .iter()
                        .filter_map(|id| {
                            let entry = shard.live.get_mut(id).filter(|e| e.dirty)?;
                            entry.dirty = false;
                            Some(Change::Touch(*id, entry.session.last_access_at))
                        })
                        .collect();
                    // Appended under the shard lock, so an end of one of these sessions
                    // reaches the journal after its touch row, and deletes it.
                    if !puts.is_empty() {
                        n += puts.len() as u64;
                        pendings.push(self.journal.append(puts));
                    }
                }
                tokio::task::yield_now().await;
            }
        }
        all_durable(pendings).await?;
        Ok(n)
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.usable().await?;
        let m = self.members.lock();
        Ok(StoreStats {
            live: m.live,
            per_policy: m
                .per_policy
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            ended_by_reason: m
                .ended_by_reason
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, v)| (*k, *v))
                .collect(),
            users: m.by_user.len() as u64,
            nodes: 1,
        })
    }

    async fn events(&self, after: Option<&str>) -> Result<Feed, StoreError> {
        self.journal.check()?;
        Ok(self.events.subscribe(after))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.warming.check()?;
        self.journal.check()
    }

    async fn loaded(&self) -> Result<(), StoreError> {
        self.load_ended().await
    }

    async fn close(&self) -> Result<(), StoreError> {
        // A store closed while loading waits for the load, which holds the files open.
        let loaded = self.load_ended().await;
        if loaded.is_ok() && self.journal.check().is_ok() {
            self.flush_touches().await?;
        }
        self.journal.close().await
    }
}

/// How long touches may wait in memory before [`SessionStore::flush_touches`] must run,
/// given the shortest idle timeout among the policies in use.
pub fn flush_window(shortest_idle: Duration) -> Duration {
    sessiond_core::Policy {
        idle_timeout: shortest_idle,
        ..sessiond_core::Policy::default()
    }
    .touch_flush_window()
}

#[cfg(test)]
mod tests {
    use sessiond_core::session::NewSession;
    use sessiond_core::{Policy, Verifier};

    use super::*;

    /// Client-chosen user agents must not outlive their sessions in the interner: the
    /// sweep drops them once the set has grown enough to be worth a pass.
    #[tokio::test]
    async fn the_sweep_forgets_user_agents_no_session_holds() {
        let store = LocalStore::memory(StoreOptions::default());
        let policy = Policy::default();
        let now = Timestamp(1_800_000_000_000);
        let mut ids = Vec::new();
        for n in 0..crate::intern::MIN_PURGE + 10 {
            let new = NewSession {
                user: format!("u{n}"),
                user_agent: Some(format!("agent {n}")),
                ..NewSession::default()
            };
            let id = SessionId::for_user(&new.user).unwrap();
            let s = Session::create(new, id, Verifier([1; 32]), "default", &policy, now);
            let Created::Created { session, .. } =
                store.create(s, UserLimit::UNLIMITED, now).await.unwrap()
            else {
                panic!("not created")
            };
            ids.push(session.id);
        }
        // Every agent plus the policy name.
        assert_eq!(store.strings.len(), crate::intern::MIN_PURGE + 11);
        for id in &ids[10..] {
            store
                .end(*id, None, EndReason::LoggedOut, now)
                .await
                .unwrap();
        }
        store.sweep(now).await.unwrap();
        assert_eq!(
            store.strings.len(),
            11,
            "ten live agents and the policy are left"
        );
    }

    /// While a reopened store loads, validate and get answer from the disk exactly what
    /// memory answers once loaded, the idle timer slides on the touches made meanwhile, and
    /// every other call waits for the load.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_loading_store_answers_from_the_disk_what_memory_answers_after() {
        const MIN: i64 = 60_000;
        let dir = tempfile::tempdir().unwrap();
        let t0 = Timestamp(1_800_000_000_000);
        let (a, b, c) = (
            crate::conformance::session("alice", t0),
            crate::conformance::session("bob", t0),
            crate::conformance::session("carol", t0),
        );
        {
            let store = LocalStore::open_embedded(dir.path(), StoreOptions::default()).unwrap();
            for s in [&a, &b, &c] {
                store
                    .create(s.clone(), UserLimit::UNLIMITED, t0)
                    .await
                    .unwrap();
            }
            // alice's last access moves to t0 + 1m (a touch row); bob logs out.
            let touched = Timestamp(t0.0 + MIN);
            store
                .validate(a.id, &a.verifier, true, touched)
                .await
                .unwrap();
            store.flush_touches().await.unwrap();
            store
                .end(b.id, Some(&b.verifier), EndReason::LoggedOut, touched)
                .await
                .unwrap();
            store.close().await.unwrap();
        }
        let (release, gate) = std::sync::mpsc::channel();
        let store =
            LocalStore::open_embedded_gated(dir.path(), StoreOptions::default(), Some(gate))
                .unwrap();
        let wrong = Verifier([0xee; 32]);
        let unknown = SessionId([0x42; 16]);
        // Reads that touch nothing, asked again once loaded. carol (idle 30m from t0) has
        // expired at t0 + 31m.
        let at = move |m: i64| Timestamp(t0.0 + m * MIN);
        let reads = [
            (a.id, a.verifier, at(5)),
            (a.id, wrong, at(5)),
            (b.id, b.verifier, at(5)),
            (b.id, wrong, at(5)),
            (c.id, c.verifier, at(31)),
            (unknown, a.verifier, at(5)),
        ];
        let mut warming = Vec::new();
        for (id, v, now) in reads {
            warming.push(store.validate(id, &v, false, now).await.unwrap());
        }
        assert!(matches!(&warming[0], Lookup::Live(s) if s.last_access_at == at(1)));
        assert_eq!(warming[1], Lookup::NotFound);
        assert!(matches!(&warming[2], Lookup::Ended(t) if t.reason == EndReason::LoggedOut));
        assert_eq!(warming[3], Lookup::NotFound);
        assert!(matches!(&warming[4], Lookup::Ended(t) if t.reason == EndReason::IdleTimeout));
        assert_eq!(warming[5], Lookup::NotFound);
        // Loading or loaded, the embedded store answers a validate at once.
        let ready = |now| {
            let mut lent = None;
            let ready = store.validate_ready(a.id, &a.verifier, false, now, &mut |s| {
                lent = Some(s.last_access_at)
            });
            (ready.map(Result::unwrap), lent)
        };
        assert_eq!(ready(at(5)), (Some(Checked::Live), Some(at(1))));
        assert!(matches!(
            store.get(b.id, at(5)).await.unwrap(),
            Lookup::Ended(_)
        ));
        // alice is touched at t0 + 10m, then again at t0 + 39m: live only because the first
        // touch counted (the disk's last access, t0 + 1m, ends her at t0 + 31m).
        for m in [10, 39] {
            let Lookup::Live(s) = store
                .validate(a.id, &a.verifier, true, at(m))
                .await
                .unwrap()
            else {
                panic!("alice is not live at t0 + {m}m while loading")
            };
            assert_eq!(s.last_access_at, at(m));
        }
        // Everything else waits for the load.
        let create = tokio::spawn({
            let store = store.clone();
            let d = crate::conformance::session("dave", t0);
            async move { store.create(d, UserLimit::UNLIMITED, at(39)).await }
        });
        let waited = tokio::time::timeout(Duration::from_millis(200), store.stats()).await;
        assert!(waited.is_err(), "stats answered before the load");
        assert!(!create.is_finished(), "a create was served before the load");
        release.send(()).unwrap();
        store.loaded().await.unwrap();
        assert!(matches!(
            create.await.unwrap().unwrap(),
            Created::Created { .. }
        ));
        assert_eq!(store.stats().await.unwrap().live, 3, "alice, carol, dave");
        let mut after = Vec::new();
        for (id, v, now) in reads {
            after.push(store.validate(id, &v, false, now).await.unwrap());
        }
        // alice's answer differs only by the touches made while loading.
        let Lookup::Live(alice) = &after[0] else {
            panic!("alice is not live after the load")
        };
        assert_eq!(alice.last_access_at, at(39));
        assert_eq!(ready(at(39)), (Some(Checked::Live), Some(at(39))));
        assert_eq!(warming[1..], after[1..]);
        assert_eq!(store.flush_touches().await.unwrap(), 1, "alice's touch");
        store.close().await.unwrap();
        let store = LocalStore::open_embedded(dir.path(), StoreOptions::default()).unwrap();
        store.loaded().await.unwrap();
        let Lookup::Live(alice) = store.get(a.id, at(39)).await.unwrap() else {
            panic!("alice is not live after a second restart")
        };
        assert_eq!(alice.last_access_at, at(39));
        store.close().await.unwrap();
    }

    /// A record that cannot be read back fails the load: from then on the store refuses
    /// every call instead of answering from a part of what it held.
    #[tokio::test]
    async fn a_store_whose_load_fails_refuses_to_serve() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Timestamp(1_800_000_000_000);
        let a = crate::conformance::session("alice", t0);
        {
            let store = LocalStore::open_embedded(dir.path(), StoreOptions::default()).unwrap();
            store
                .create(a.clone(), UserLimit::UNLIMITED, t0)
                .await
                .unwrap();
            store.close().await.unwrap();
        }
        journal::write_unreadable_record(dir.path());
        let store = LocalStore::open_embedded(dir.path(), StoreOptions::default()).unwrap();
        assert!(matches!(store.loaded().await, Err(StoreError::Corrupt(_))));
        assert!(store.ping().await.is_err());
        assert!(store.validate(a.id, &a.verifier, true, t0).await.is_err());
        assert!(store.get(a.id, t0).await.is_err());
        assert!(store.stats().await.is_err());
        let b = crate::conformance::session("bob", t0);
        assert!(store.create(b, UserLimit::UNLIMITED, t0).await.is_err());
        store.close().await.unwrap();
    }

    /// How many touch groups and touch rows the closed store in `dir` holds, and the pairs
    /// in its largest group.
    fn touches_on_disk(dir: &Path) -> (usize, usize, usize) {
        let db = fjall::Database::builder(dir).open().unwrap();
        let groups = db
            .keyspace(journal::TOUCH_GROUPS, fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let rows = db
            .keyspace(journal::TOUCHES, fjall::KeyspaceCreateOptions::default)
            .unwrap();
        let largest = groups
            .iter()
            .map(|g| g.value().unwrap().len() / journal::PAIR)
            .max()
            .unwrap_or(0);
        (groups.iter().count(), rows.iter().count(), largest)
    }

    /// Each shard keeps its own touched ids: a flush writes those of every shard, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_writes_the_touches_of_every_shard() {
        let dir = tempfile::tempdir().unwrap();
        let created = Timestamp(1_800_000_000_000);
        let store = LocalStore::open_embedded(dir.path(), StoreOptions::default()).unwrap();
        // Users until every shard holds a session (a user's sessions share one).
        let mut sessions = Vec::new();
        let mut shards = std::collections::HashSet::new();
        for u in 0.. {
            if shards.len() == SHARDS {
                break;
            }
            assert!(u < 100 * SHARDS, "the ids reach every shard");
            let s = crate::conformance::session(&format!("user{u}"), created);
            shards.insert(LocalStore::shard_index(&s.id));
            sessions.push((s.id, s.verifier));
            store
                .create(s, UserLimit::UNLIMITED, created)
                .await
                .unwrap();
        }
        let at = Timestamp(created.0 + 1000);
        for (id, verifier) in &sessions {
            store.validate(*id, verifier, true, at).await.unwrap();
        }
        assert_eq!(
            store.flush_touches().await.unwrap(),
            sessions.len() as u64,
            "every shard's touches"
        );
        assert_eq!(store.flush_touches().await.unwrap(), 0, "each once");
        store.close().await.unwrap();
    }

    /// A flush takes a shard's touched ids a chunk at a time: with several chunks' worth in
    /// one shard (one user's sessions share a shard, and one touch group), every touch
    /// still reaches the disk: the group holds its most, the rest get rows of their own,
    /// both are read back (from the disk while loading, and by the load), and an end
    /// forgets both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_of_many_chunks_in_one_shard_persists_every_touch() {
        let dir = tempfile::tempdir().unwrap();
        let created = Timestamp(1_800_000_000_000);
        let n = FLUSH_CHUNK * 2 + 7;
        assert!(n > journal::MAX_GROUP_PAIRS);
        let mut ids = Vec::new();
        {
            let store = LocalStore::open_embedded(dir.path(), StoreOptions::default()).unwrap();
            for _ in 0..n {
                let s = crate::conformance::session("alice", created);
                ids.push((s.id, s.verifier));
                store
                    .create(s, UserLimit::UNLIMITED, created)
                    .await
                    .unwrap();
            }
            let shard = LocalStore::shard_index(&ids[0].0);
            assert!(
                ids.iter()
                    .all(|(id, _)| LocalStore::shard_index(id) == shard)
            );
            for (i, (id, verifier)) in ids.iter().enumerate() {
                let at = Timestamp(created.0 + 1000 + i as i64);
                store.validate(*id, verifier, true, at).await.unwrap();
            }
            assert_eq!(store.flush_touches().await.unwrap(), n as u64);
            assert_eq!(
                store.flush_touches().await.unwrap(),
                0,
                "nothing is left dirty"
            );
            store.close().await.unwrap();
        }
        assert_eq!(
            touches_on_disk(dir.path()),
            (1, n - journal::MAX_GROUP_PAIRS, journal::MAX_GROUP_PAIRS),
            "one full group, and rows for the rest"
        );
        let (release, gate) = std::sync::mpsc::channel();
        let store =
            LocalStore::open_embedded_gated(dir.path(), StoreOptions::default(), Some(gate))
                .unwrap();
        for loaded in [false, true] {
            if loaded {
                release.send(()).unwrap();
                store.loaded().await.unwrap();
            }
            for (i, (id, _)) in ids.iter().enumerate() {
                let Lookup::Live(s) = store.get(*id, created).await.unwrap() else {
                    panic!("session {i} is not live after the restart (loaded: {loaded})")
                };
                assert_eq!(
                    s.last_access_at,
                    Timestamp(created.0 + 1000 + i as i64),
                    "session {i}, loaded: {loaded}"
                );
            }
        }
        let ended = store
            .end_user("alice", EndReason::TerminatedByAdmin, created)
            .await
            .unwrap();
        assert_eq!(ended, n as u64);
        store.close().await.unwrap();
        assert_eq!(
            touches_on_disk(dir.path()),
            (0, 0, 0),
            "ends forget touches"
        );
    }
}

#[cfg(test)]
mod slot_tests {
    use sessiond_core::policy::{OnLimit, UserLimit};
    use sessiond_core::{EndReason, Timestamp};

    use super::LocalStore;
    use crate::{Created, Lookup, SessionStore, StoreOptions};

    const T0: Timestamp = Timestamp(1_800_000_000_000);

    /// Sessions created as the server creates them (an issued slot) come back at their
    /// slots after a restart; sessions with ids that name no slot (as every id did before)
    /// come back through the spill map; both validate, and the ended stay ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_puts_sessions_back_at_their_slots_and_serves_older_ids_too() {
        let dir = tempfile::tempdir().unwrap();
        let (mut issued, mut legacy) = (Vec::new(), Vec::new());
        {
            let store = LocalStore::open_embedded(dir.path(), StoreOptions::default()).unwrap();
            store.loaded().await.unwrap();
            for i in 0..200 {
                let mut s = crate::conformance::session(&format!("u{i}"), T0);
                if i % 4 == 0 {
                    legacy.push(s.clone());
                } else {
                    store.issue_slot(&mut s.id);
                    issued.push(s.clone());
                }
                store.create(s, UserLimit::UNLIMITED, T0).await.unwrap();
            }
            assert_eq!(store.spilled(), legacy.len());
            // Holes: every fifth issued session ends.
            for s in issued.iter().step_by(5) {
                store
                    .end(s.id, None, EndReason::LoggedOut, T0)
                    .await
                    .unwrap();
            }
            store.close().await.unwrap();
        }
        let store = LocalStore::open_embedded(dir.path(), StoreOptions::default()).unwrap();
        store.loaded().await.unwrap();
        assert_eq!(
            store.spilled(),
            legacy.len(),
            "only the ids that name no slot"
        );
        let at = T0.plus(std::time::Duration::from_secs(1));
        for (i, s) in issued.iter().enumerate() {
            let got = store.validate(s.id, &s.verifier, true, at).await.unwrap();
            if i % 5 == 0 {
                assert!(matches!(got, Lookup::Ended(_)), "issued {i}: {got:?}");
            } else {
                assert!(matches!(got, Lookup::Live(l) if l.id == s.id), "issued {i}");
            }
        }
        for s in &legacy {
            let got = store.validate(s.id, &s.verifier, true, at).await.unwrap();
            assert!(matches!(got, Lookup::Live(l) if l.id == s.id));
        }
        // New sessions for the same users (so the same shards) take vacant slots: no slab
        // grows, except where the load had nothing to put.
        let slabs = || -> Vec<usize> {
            store
                .shards
                .iter()
                .map(|s| s.read().live.capacity())
                .collect()
        };
        let before = slabs();
        for old in issued.iter().step_by(5) {
            let mut s = crate::conformance::session(&old.user, at);
            store.issue_slot(&mut s.id);
            assert_eq!(
                LocalStore::shard_index(&s.id),
                LocalStore::shard_index(&old.id)
            );
            let (id, verifier) = (s.id, s.verifier);
            store.create(s, UserLimit::UNLIMITED, at).await.unwrap();
            let got = store.validate(id, &verifier, false, at).await.unwrap();
            assert!(matches!(got, Lookup::Live(l) if l.id == id));
        }
        for (i, (before, after)) in before.iter().zip(slabs()).enumerate() {
            assert!(
                *before == 0 || *before == after,
                "shard {i}: {before} -> {after} slots"
            );
        }
        assert_eq!(store.spilled(), legacy.len());
        for s in issued.iter().step_by(5) {
            assert!(matches!(
                store.get(s.id, at).await.unwrap(),
                Lookup::Ended(t) if t.reason == EndReason::LoggedOut
            ));
        }
        store.close().await.unwrap();
    }

    /// The benchmark's and the examples' sessions (`testkit::SessionData`) sit where the
    /// server's would: at their slots, none in the spill map.
    #[tokio::test]
    async fn the_testkit_sessions_for_a_store_take_their_slots() {
        use crate::testkit::SessionData;
        let store = LocalStore::memory(StoreOptions::default());
        let policy = sessiond_core::Policy::default();
        for i in 0..100 {
            let s = SessionData::nth(i).into_session_for(&store, "default", &policy, T0);
            let issued = sessiond_core::token::sha256(&s.id.0);
            assert_eq!(s.verifier.0, issued, "the verifier is of the issued id");
            store.create(s, UserLimit::UNLIMITED, T0).await.unwrap();
        }
        assert_eq!(store.spilled(), 0);
        let s = SessionData::nth(100).into_session("default", &policy, T0);
        store.create(s, UserLimit::UNLIMITED, T0).await.unwrap();
        assert_eq!(store.spilled(), 1, "an id the store did not issue");
    }

    /// A create the user's limit refuses gives its issued slot back.
    #[tokio::test]
    async fn a_refused_create_gives_its_slot_back() {
        let store = LocalStore::memory(StoreOptions::default());
        let deny = UserLimit {
            max: 1,
            on_limit: OnLimit::Deny,
        };
        let mut first = crate::conformance::session("alice", T0);
        store.issue_slot(&mut first.id);
        assert!(matches!(
            store.create(first, deny, T0).await.unwrap(),
            Created::Created { .. }
        ));
        let mut refused = crate::conformance::session("alice", T0);
        store.issue_slot(&mut refused.id);
        let refused_id = refused.id;
        assert!(matches!(
            store.create(refused, deny, T0).await.unwrap(),
            Created::LimitReached { .. }
        ));
        let mut next = crate::conformance::session("alice", T0);
        store.issue_slot(&mut next.id);
        assert_eq!(
            next.id.0[4..8],
            refused_id.0[4..8],
            "the refused create's slot is issued again"
        );
    }
}
