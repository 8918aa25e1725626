//! The cache table: entries by token hash, their indexes, and the tickets that keep a
//! validation answer from refilling an entry the event stream has just invalidated.
//!
//! Everything here is synchronous and takes `now` as an argument, so the trust rule is
//! tested without a network or a real clock. [`CachedValidator`](super::CachedValidator)
//! holds a [`State`] behind one mutex and never awaits while holding it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiond_proto::v1;
use sha2::{Digest, Sha256};

/// A cache key: SHA-256 of the token. The token itself is never kept.
pub(super) type Key = [u8; 32];

/// How many recent per-session invalidations are remembered for pending tickets. A ticket
/// older than the oldest one forgotten is refused, which is safe, merely a lost fill.
const RECENT_INVALIDATIONS: usize = 16 * 1024;

/// The key for `token`.
pub(super) fn key_of(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

/// Taken before asking the server; a fill presents it to show that nothing about the
/// session was invalidated while the answer was on its way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ticket(u64);

/// What the table says about a token.
#[derive(Debug)]
pub(super) enum Lookup {
    /// A trusted entry: the answer, without asking the server. Shared, so that the copy
    /// handed to the caller is made after the lock is released.
    Hit(Arc<v1::Session>),
    /// A trusted entry, but the caller wants a touch and the server has not been touched
    /// for `touch_every`: ask the server.
    TouchDue,
    /// No trusted entry: ask the server.
    Miss,
}

/// One cached validation answer.
#[derive(Debug)]
struct Entry {
    /// The session as the server last answered for this token.
    session: Arc<v1::Session>,
    /// When the request that got this answer was sent: the age is counted from there, so
    /// it never understates how old the server's view is.
    fetched_at: Instant,
    /// When the server last slid the idle timer for this token through this cache; `None`
    /// when it was fetched with `touch = false`.
    touched_at: Option<Instant>,
    /// Fill order, the key of `State::by_age`.
    fill: u64,
}

/// The table. See the module docs of [`cache`](super) for the rule it implements.
#[derive(Debug, Default)]
pub(super) struct State {
    /// The entries. Keys are token hashes, never tokens.
    entries: HashMap<Key, Entry>,
    /// Session id → the keys caching it: events name sessions, not tokens.
    by_session: HashMap<String, Vec<Key>>,
    /// Fill order → key, so that the oldest entry is evicted first.
    by_age: BTreeMap<u64, Key>,
    /// The next fill number.
    next_fill: u64,
    /// Counts invalidations (per session, or of everything); tickets are read from it.
    seq: u64,
    /// The `seq` of the last whole-cache flush: older tickets are refused.
    barrier: u64,
    /// Session id → `seq` of its last invalidation, for the tickets still pending, and
    /// whether that invalidation said the session ended.
    recent: HashMap<String, (u64, bool)>,
    /// `recent` in invalidation order, to forget the oldest first.
    recent_order: VecDeque<(u64, String)>,
    /// The highest `seq` dropped from `recent`: older tickets cannot be checked, so they
    /// are refused.
    forgotten: u64,
    /// The event stream is connected. Only reported: while it is down the table holds only
    /// entries fetched since it went down, which `flush` ensured.
    connected: bool,
}

impl State {
    /// Looks `key` up at `now`. An entry at or past `max_age` is dropped and misses.
    pub(super) fn lookup(
        &mut self,
        key: &Key,
        touch: bool,
        now: Instant,
        max_age: Duration,
        touch_every: Duration,
    ) -> Lookup {
        let Some(entry) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        if now.saturating_duration_since(entry.fetched_at) >= max_age {
            self.remove(key);
            return Lookup::Miss;
        }
        let touch_due = touch
            && entry
                .touched_at
                .is_none_or(|at| now.saturating_duration_since(at) >= touch_every);
        if touch_due {
            Lookup::TouchDue
        } else {
            Lookup::Hit(Arc::clone(&entry.session))
        }
    }

    /// A ticket for a server call about to be made.
    pub(super) fn ticket(&self) -> Ticket {
        Ticket(self.seq)
    }

    /// Stores the server's answer for `key`, unless `ticket` predates a flush or an
    /// invalidation of this session. Returns whether it was stored.
    pub(super) fn fill(
        &mut self,
        key: Key,
        session: v1::Session,
        ticket: Ticket,
        fetched_at: Instant,
        touched_at: Option<Instant>,
        capacity: usize,
    ) -> bool {
        let Ticket(taken) = ticket;
        // An ended session never comes back, so a "live" answer for one is stale whenever
        // it was fetched: a node can answer from its own cache a moment after its event
        // stream said the session ended.
        let invalidated = self
            .recent
            .get(&session.id)
            .is_some_and(|&(at, ended)| ended || at > taken);
        if capacity == 0 || taken < self.barrier || taken < self.forgotten || invalidated {
            return false;
        }
        self.remove(&key);
        while self.entries.len() >= capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.remove(&oldest);
        }
        let fill = self.next_fill;
        self.next_fill += 1;
        self.by_age.insert(fill, key);
        self.by_session
            .entry(session.id.clone())
            .or_default()
            .push(key);
        self.entries.insert(
            key,
            Entry {
                session: Arc::new(session),
                fetched_at,
                touched_at,
                fill,
            },
        );
        true
    }

    /// Drops the entry for `key`, if any.
    pub(super) fn remove(&mut self, key: &Key) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        self.by_age.remove(&entry.fill);
        if let Some(keys) = self.by_session.get_mut(&entry.session.id) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_session.remove(&entry.session.id);
            }
        }
    }

    /// The session `id` changed (or `ended`): drops its entries and voids pending tickets
    /// for it; once it ended, no answer for it is stored again (while it is among the
    /// remembered invalidations). Returns how many entries were dropped.
    pub(super) fn invalidate(&mut self, id: &str, ended: bool) -> usize {
        self.seq += 1;
        self.recent.insert(id.to_owned(), (self.seq, ended));
        self.recent_order.push_back((self.seq, id.to_owned()));
        while self.recent_order.len() > RECENT_INVALIDATIONS {
            let Some((seq, old)) = self.recent_order.pop_front() else {
                break;
            };
            if self.recent.get(&old).is_some_and(|&(at, _)| at == seq) {
                self.recent.remove(&old);
            }
            self.forgotten = seq;
        }
        let keys = self.by_session.remove(id).unwrap_or_default();
        for key in &keys {
            if let Some(entry) = self.entries.remove(key) {
                self.by_age.remove(&entry.fill);
            }
        }
        keys.len()
    }

    /// Drops every entry and voids every pending ticket: on `reset`, when the stream goes
    /// down, and when it comes up with no resume point.
    pub(super) fn flush(&mut self) {
        self.seq += 1;
        self.barrier = self.seq;
        self.entries.clear();
        self.by_session.clear();
        self.by_age.clear();
        self.recent.clear();
        self.recent_order.clear();
    }

    pub(super) fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
    }

    pub(super) fn connected(&self) -> bool {
        self.connected
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The keys held, for tests to check that no token is.
    #[cfg(test)]
    pub(super) fn keys(&self) -> Vec<Key> {
        self.entries.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::session;

    const AGE: Duration = Duration::from_secs(5);

    fn fill(state: &mut State, token: &str, id: &str, ticket: Ticket, at: Instant) -> bool {
        state.fill(
            key_of(token),
            session(id, "alice"),
            ticket,
            at,
            Some(at),
            100,
        )
    }

    /// Fills with a ticket taken just now.
    fn fresh(state: &mut State, token: &str, id: &str, at: Instant) -> bool {
        let ticket = state.ticket();
        fill(state, token, id, ticket, at)
    }

    fn hit(state: &mut State, token: &str, now: Instant) -> bool {
        matches!(
            state.lookup(&key_of(token), false, now, AGE, AGE),
            Lookup::Hit(_)
        )
    }

    #[test]
    fn entries_are_trusted_until_max_age_only() {
        let t0 = Instant::now();
        let mut state = State::default();
        assert!(fresh(&mut state, "tok", "s1", t0));
        assert!(hit(&mut state, "tok", t0 + AGE - Duration::from_millis(1)));
        assert!(!hit(&mut state, "tok", t0 + AGE));
        assert_eq!(state.len(), 0, "an expired entry is dropped");
    }

    #[test]
    fn keys_are_hashes_of_the_token() {
        let mut state = State::default();
        let token = "k1.secret-body.mac";
        assert!(fresh(&mut state, token, "s1", Instant::now()));
        let expected: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        assert_eq!(state.keys(), vec![expected]);
        assert!(!format!("{state:?}").contains("secret-body"));
    }

    #[test]
    fn invalidation_drops_every_entry_of_the_session_only() {
        let now = Instant::now();
        let mut state = State::default();
        for (token, id) in [("a", "s1"), ("b", "s1"), ("c", "s2")] {
            assert!(fresh(&mut state, token, id, now));
        }
        assert_eq!(state.invalidate("s1", false), 2);
        assert!(!hit(&mut state, "a", now) && !hit(&mut state, "b", now));
        assert!(hit(&mut state, "c", now));
        assert_eq!(state.invalidate("s9", true), 0);
    }

    #[test]
    fn a_fill_racing_an_invalidation_of_its_session_is_dropped() {
        let now = Instant::now();
        let mut state = State::default();
        let ticket = state.ticket();
        state.invalidate("s1", false);
        assert!(!fill(&mut state, "a", "s1", ticket, now));
        assert!(
            fill(&mut state, "b", "s2", ticket, now),
            "other sessions fill"
        );
        assert!(fresh(&mut state, "a", "s1", now), "a new ticket fills");
    }

    #[test]
    fn an_ended_session_is_never_filled_again_even_with_a_new_ticket() {
        let now = Instant::now();
        let mut state = State::default();
        assert!(fresh(&mut state, "a", "s1", now));
        assert!(fresh(&mut state, "b", "s2", now));
        assert_eq!(state.invalidate("s1", true), 1);
        assert_eq!(state.invalidate("s2", false), 1);
        // A node that has not yet seen the end answers "live" for a request sent after it.
        assert!(!fresh(&mut state, "a", "s1", now), "ended: refused");
        assert!(!hit(&mut state, "a", now));
        assert!(
            fresh(&mut state, "b", "s2", now),
            "updated: a new answer fills"
        );
    }

    #[test]
    fn a_fill_racing_a_flush_is_dropped() {
        let now = Instant::now();
        let mut state = State::default();
        assert!(fresh(&mut state, "a", "s1", now));
        let ticket = state.ticket();
        state.flush();
        assert_eq!(state.len(), 0);
        assert!(!fill(&mut state, "b", "s2", ticket, now));
        assert!(fresh(&mut state, "b", "s2", now));
    }

    #[test]
    fn tickets_older_than_the_remembered_invalidations_are_refused() {
        let now = Instant::now();
        let mut state = State::default();
        let ticket = state.ticket();
        for n in 0..=RECENT_INVALIDATIONS {
            state.invalidate(&format!("other-{n}"), n % 2 == 0);
        }
        assert!(state.recent.len() <= RECENT_INVALIDATIONS);
        assert!(!fill(&mut state, "a", "s1", ticket, now));
    }

    #[test]
    fn the_oldest_entry_is_evicted_at_capacity() {
        let now = Instant::now();
        let mut state = State::default();
        for (token, id) in [("a", "s1"), ("b", "s2"), ("c", "s3")] {
            assert!(state.fill(
                key_of(token),
                session(id, "u"),
                state.ticket(),
                now,
                None,
                2
            ));
        }
        assert_eq!(state.len(), 2);
        assert!(!hit(&mut state, "a", now));
        assert!(hit(&mut state, "b", now) && hit(&mut state, "c", now));
        // Refilling a key replaces it rather than evicting another.
        assert!(state.fill(
            key_of("c"),
            session("s3", "u"),
            state.ticket(),
            now,
            None,
            2
        ));
        assert!(hit(&mut state, "b", now));
        assert_eq!(state.by_session.len(), 2);
        assert!(!state.fill(
            key_of("d"),
            session("s4", "u"),
            state.ticket(),
            now,
            None,
            0
        ));
    }

    #[test]
    fn touches_are_due_after_touch_every_or_when_never_touched() {
        let t0 = Instant::now();
        let every = Duration::from_secs(2);
        let mut state = State::default();
        let ticket = state.ticket();
        state.fill(key_of("a"), session("s1", "u"), ticket, t0, Some(t0), 10);
        state.fill(key_of("b"), session("s2", "u"), ticket, t0, None, 10);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let look = |state: &mut State, token: &str, touch: bool, now: Instant| {
            state.lookup(&key_of(token), touch, now, AGE, every)
        };
        assert!(matches!(look(&mut state, "a", true, at(1)), Lookup::Hit(_)));
        assert!(matches!(
            look(&mut state, "a", true, at(2)),
            Lookup::TouchDue
        ));
        assert!(matches!(
            look(&mut state, "a", false, at(2)),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            look(&mut state, "b", true, at(0)),
            Lookup::TouchDue
        ));
        assert!(matches!(
            look(&mut state, "b", false, at(0)),
            Lookup::Hit(_)
        ));
    }
}
