//! What store operations answer, besides failing.

use std::collections::BTreeMap;
use std::sync::Arc;

use sessiond_core::input::InputError;
use sessiond_core::{EndReason, Session, SessionId, Tombstone};

/// A session looked up by token or id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A copy of the record for the caller to keep; the hot paths have it lent through
    /// [`crate::SessionStore::validate_with`] instead.
    Live(Arc<Session>),
    /// Ended (or past its deadline), and its tombstone is still retained.
    Ended(Tombstone),
    NotFound,
}

/// What [`crate::SessionStore::validate_with`] found. A live session is not in it: it was
/// lent to the caller's callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Live: the callback was called with it, once.
    Live,
    /// Ended (or past its deadline), and its tombstone is still retained.
    Ended(Tombstone),
    NotFound,
}

impl Lookup {
    /// What a lending check found, with the live record it lent copied out (`copy`) for a
    /// caller that keeps it.
    pub(crate) fn copied(checked: Checked, copy: Option<Arc<Session>>) -> Lookup {
        match checked {
            Checked::Live => copy.map_or(Lookup::NotFound, Lookup::Live),
            Checked::Ended(t) => Lookup::Ended(t),
            Checked::NotFound => Lookup::NotFound,
        }
    }
}

impl Checked {
    /// `lookup`, its live session lent to `answer`.
    pub fn lend(lookup: Lookup, answer: &mut dyn FnMut(&Session)) -> Checked {
        match lookup {
            Lookup::Live(s) => {
                answer(&s);
                Checked::Live
            }
            Lookup::Ended(t) => Checked::Ended(t),
            Lookup::NotFound => Checked::NotFound,
        }
    }
}

/// The answer to a create.
// Built once per create and moved straight out; boxing the session would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// Inserted; `displaced` lists sessions ended with reason `displaced` to make room.
    Created {
        /// The record as stored, shared with the journal's write of it.
        session: Arc<Session>,
        displaced: Vec<SessionId>,
    },
    /// The user is at the policy's `max_per_user` and the policy says `deny`.
    LimitReached { limit: u32 },
}

/// The answer to an update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Updated {
    Updated(Session),
    NotFound,
    Ended(Tombstone),
    VersionConflict { current: u64 },
    Invalid(InputError),
}

/// The answer to an end (logout, terminate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// This call ended it.
    Ended(Tombstone),
    /// It had already ended, for the tombstone's reason.
    AlreadyEnded(Tombstone),
    NotFound,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Page {
    pub sessions: Vec<Session>,
    /// The cursor for the next page; `None` on the last.
    pub next_cursor: Option<SessionId>,
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SweepReport {
    /// Sessions ended by their deadline.
    pub expired: u64,
    /// Sessions looked at whose deadline had moved (touched), scheduled again.
    pub rescheduled: u64,
    /// Tombstones dropped after retention.
    pub purged: u64,
}

/// Counters for the admin stats.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StoreStats {
    pub live: u64,
    pub per_policy: BTreeMap<String, u64>,
    /// Tombstones held, by reason.
    pub ended_by_reason: BTreeMap<EndReason, u64>,
    pub users: u64,
    /// Nodes sharing this store.
    pub nodes: u64,
}
