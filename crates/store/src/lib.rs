//! Storage for sessiond: one [`SessionStore`] trait and its backends.
//!
//! - [`SessionStore`]: every operation the server needs, each given `now`. A backend is
//!   chosen once at start-up and used through `Arc<dyn SessionStore>`.
//! - [`local`]: the in-process backends. [`LocalStore::memory`] keeps everything in memory
//!   (tests, throwaway nodes); [`LocalStore::open_embedded`] adds a durable journal in a
//!   fjall database, group-committed, and loads it back on restart.
//! - [`redis`]: the shared backend, [`RedisStore`], for many nodes on one Redis or Valkey
//!   (single, Sentinel or Cluster), with a near cache for validate.
//! - [`conformance`] (feature `conformance`): the one suite every backend must pass.
//!
//! Architecture invariants:
//! - Validate is answered from memory when the answer is known locally and fresh (the
//!   local backends: always, once loaded, and from a point read of the disk in the seconds
//!   after a restart while they load; Redis: from its near cache while invalidations
//!   flow). It never waits on a disk write; touches are only marked dirty, then flushed in
//!   batches by [`SessionStore::flush_touches`].
//! - A mutation is acknowledged (its future resolves `Ok`) only once it is durable.
//! - Expiry work is proportional to what expires: deadlines sit in an ordered index.
//! - An ended session never comes back: its row is deleted and its tombstone written in the
//!   same transaction (Redis: in the same script).

pub mod events;
mod intern;
pub mod local;
mod outcome;
pub mod redis;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "conformance")]
pub mod testkit;

use std::time::Duration;

use async_trait::async_trait;
use sessiond_core::policy::UserLimit;
use sessiond_core::{EndReason, Session, SessionId, Timestamp, Verifier};

pub use self::redis::{
    MasterAuth as RedisMasterAuth, RedisConfig, RedisStore, Target as RedisTarget, Tls as RedisTls,
};
pub use events::{ChangeEvent, ChangeKind, Feed, FeedItem};
pub use local::LocalStore;
pub use outcome::{Checked, Created, Ended, Lookup, Page, StoreStats, SweepReport, Updated};

/// Failures of the store itself (not of the request): all are `store_unavailable` to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backing store cannot be reached or written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Settings every backend shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// How long a tombstone answers "why did it end".
    pub ended_retention: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            ended_retention: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// Attribute changes of an update, applied together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttributeChange {
    pub set: std::collections::BTreeMap<String, String>,
    pub remove: Vec<String>,
}

/// The session store. Every method takes `now` from the caller; none reads a clock.
///
/// Lookups by token take the session id and the token's [`Verifier`] (already MAC-checked
/// by the caller) and compare the verifier in constant time; a mismatch is `NotFound`.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug + 'static {
    /// `memory`, `embedded` or `redis`: for stats and logs.
    fn kind(&self) -> &'static str;

    /// Lets the store choose bytes 4..8 of a new session's id, which the caller drew at
    /// random, before the caller mints the token that carries it: the embedded store writes
    /// the number of the slot it will keep the session in, so that a validate finds it
    /// without a hash lookup. The id must then reach [`SessionStore::create`] with no await
    /// in between (a create that fails gives the slot back). Other stores leave it as is.
    fn issue_slot(&self, _id: &mut SessionId) {}

    /// Inserts `session`, first applying `limit` to the user's live sessions, atomically:
    /// concurrent creates for one user never leave more than the limit.
    async fn create(
        &self,
        session: Session,
        limit: UserLimit,
        now: Timestamp,
    ) -> Result<Created, StoreError>;

    /// The session a token names, sliding its idle timer when `touch` is set. Served from
    /// memory; the touch is persisted lazily by [`SessionStore::flush_touches`].
    async fn validate(
        &self,
        id: SessionId,
        verifier: &Verifier,
        touch: bool,
        now: Timestamp,
    ) -> Result<Lookup, StoreError>;

    /// [`SessionStore::validate`], lending a live session to `answer` instead of handing
    /// out a shared copy: the embedded store keeps each record inside its slab, and the
    /// Redis store inside its near cache's entries, and either would otherwise copy it for
    /// every validate. `answer` is called once, for a live session only, possibly under a
    /// lock of the store: it may only read the session and write an answer from it.
    ///
    /// By default, [`SessionStore::validate_ready`]'s answer if it has one, else
    /// [`SessionStore::validate`]'s answer lent.
    async fn validate_with(
        &self,
        id: SessionId,
        verifier: &Verifier,
        touch: bool,
        now: Timestamp,
        answer: &mut (dyn for<'s> FnMut(&'s Session) + Send),
    ) -> Result<Checked, StoreError> {
        if let Some(ready) = self.validate_ready(id, verifier, touch, now, answer) {
            return ready;
        }
        Ok(Checked::lend(
            self.validate(id, verifier, touch, now).await?,
            answer,
        ))
    }

    /// [`SessionStore::validate_with`] answered at once, when the store needs no I/O for
    /// it: `Some` with what `validate_with` would answer, or `None`, without calling
    /// `answer`, when the caller must await `validate_with` instead. The route of every
    /// page view asks this first: a call through the trait's async methods boxes its
    /// future, an allocation per request, for the embedded store that never waits. The
    /// default answers nothing.
    fn validate_ready(
        &self,
        _id: SessionId,
        _verifier: &Verifier,
        _touch: bool,
        _now: Timestamp,
        _answer: &mut (dyn for<'s> FnMut(&'s Session) + Send),
    ) -> Option<Result<Checked, StoreError>> {
        None
    }

    /// The session or tombstone with this id (admin view; no token needed).
    async fn get(&self, id: SessionId, now: Timestamp) -> Result<Lookup, StoreError>;

    /// Sets and removes attributes, optionally only at `expected_version`. Counts as activity.
    async fn update(
        &self,
        id: SessionId,
        verifier: &Verifier,
        change: &AttributeChange,
        expected_version: Option<u64>,
        now: Timestamp,
    ) -> Result<Updated, StoreError>;

    /// Ends one session for `reason`. With a verifier (logout), the token must match.
    async fn end(
        &self,
        id: SessionId,
        verifier: Option<&Verifier>,
        reason: EndReason,
        now: Timestamp,
    ) -> Result<Ended, StoreError>;

    /// Ends every live session of `user` for `reason`; returns how many were live.
    async fn end_user(
        &self,
        user: &str,
        reason: EndReason,
        now: Timestamp,
    ) -> Result<u64, StoreError>;

    /// Live sessions ordered by id, after `cursor`, at most `limit`, optionally of one user.
    /// A user's listing reads only that user's sessions.
    async fn list(
        &self,
        user: Option<&str>,
        cursor: Option<SessionId>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Page, StoreError>;

    /// Ends sessions whose deadline has passed (tombstones carry the deadline as `ended_at`)
    /// and drops tombstones past retention. Its cost follows what is due, not the total.
    async fn sweep(&self, now: Timestamp) -> Result<SweepReport, StoreError>;

    /// Makes the touches seen so far durable, in one batch.
    async fn flush_touches(&self) -> Result<u64, StoreError>;

    /// Counters for `/v1/admin/stats`. Call [`SessionStore::sweep`] first for exact counts.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Change events after `after` (an event id this store handed out), or from now on:
    /// see [`events`]. An id it cannot resume from yields [`FeedItem::Reset`] first.
    async fn events(&self, after: Option<&str>) -> Result<Feed, StoreError>;

    /// Whether the store can serve (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Resolves once everything the store had on disk at open is in memory, or fails if it
    /// could not be read back. The embedded store loads in the background after
    /// [`LocalStore::open_embedded`]: meanwhile validate and get read the disk and every
    /// other call waits. Other backends are loaded from the start.
    async fn loaded(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Flushes touches, makes everything acknowledged durable and stops background writers.
    /// Later calls fail with [`StoreError::Unavailable`].
    async fn close(&self) -> Result<(), StoreError>;
}
