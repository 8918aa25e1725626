//! A local validation cache for agents, kept fresh by the change-event stream.
//!
//! [`CachedValidator`] answers [`CachedValidator::validate`] from memory when it holds a
//! trusted answer for the token, and asks the server (through [`Client::validate`])
//! otherwise. A background task follows `GET /v1/events` and drops entries as soon as the
//! server says their session changed or ended. This is OpenAM's "maximum caching time"
//! with session notifications.
//!
//! # The trust rule
//!
//! An entry is the server's successful answer for one token. It is used only while all of
//! these hold:
//!
//! 1. **It is younger than `max_age`**, counted from when the request that fetched it was
//!    *sent*. This holds whatever the stream does: a connected stream never extends an
//!    entry's life, it only shortens it.
//! 2. **No event has named its session since it was fetched.** An `updated` or `ended`
//!    event drops every entry of that session at once; a `reset` drops everything;
//!    `created` changes nothing.
//! 3. **It was fetched while the stream was in the state it is in now.** When the stream
//!    goes down (the connection ends or fails, or it is silent for
//!    [`CacheConfig::idle_timeout`]), every entry is dropped. While it is down, new entries
//!    are still cached, capped by `max_age` (rule 1). When it comes back with a resume point
//!    (`Last-Event-ID`), the server replays what happened meanwhile and rule 2 applies to
//!    it; when it comes back without one (the first connection, or an id that cannot be
//!    sent), every entry is dropped again, since what happened before "now" is unknown.
//!
//! A fill that races an invalidation is refused: before asking the server, the validator
//! takes a ticket; the answer is stored only if neither its session was invalidated nor
//! the whole cache flushed since the ticket was taken. And once an `ended` event named a
//! session, no answer for it is stored again, whenever it was asked for: an ended session
//! never comes back, and a server node can still answer "live" from its own near cache
//! for a moment after its event stream said the session ended (the two reach a node by
//! different paths). The caller gets that answer; the next call asks again.
//!
//! Only successes are cached. Every error (`session_ended`, `invalid_token`, a transport
//! failure, ...) is returned as is and drops the token's entry, so a refusal always comes
//! from the server.
//!
//! Bounds that follow: a revoked session is refused from the cache as soon as its event
//! arrives, and never later than `max_age` after it was fetched, even if events are lost. A
//! session that reaches its deadline is refused once the server's sweep publishes its
//! `ended` event, and in any case within `max_age`. A silently dead network is noticed
//! after `idle_timeout`; until then rule 1 still holds.
//!
//! # Touches
//!
//! A hit does not reach the server, so it does not slide the session's idle timer. Keep
//! `max_age` much shorter than the idle timeout of every policy in use (seconds against
//! minutes). With `touch = true`, a hit whose entry has not touched the server for
//! [`CacheConfig::touch_every`] (or never has) goes to the server with `touch = true`
//! anyway, and refreshes the entry. A hit returns the session as it was fetched, so its
//! `last_access_at` and `idle_expires_at` can be up to `max_age` old.
//!
//! # Keys
//!
//! Entries are keyed by SHA-256 of the token; the token itself is never stored. Several
//! concurrent misses for one token each ask the server.
//!
//! Code map: `cache.rs` holds the public API, `cache/state.rs` the table and its tickets
//! (pure, synchronous), `cache/follow.rs` the background task that reads the stream.

mod follow;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::events::IDLE_TIMEOUT;
use crate::{Client, Error, v1};
use state::{Lookup, State, key_of};

/// The default maximum caching time.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5);
/// The default number of entries.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Where the cache reads the time. Entries' ages are measured with it, so tests can move
/// time forward instead of sleeping.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The real monotonic clock, [`Instant::now`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// How a [`CachedValidator`] caches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// The maximum caching time: no entry older than this is ever used. Keep it much
    /// shorter than the sessions' idle timeout.
    pub max_age: Duration,
    /// The most entries kept; the oldest is evicted first. 0 disables caching.
    pub capacity: usize,
    /// With `touch = true`, a hit whose entry has not touched the server for this long is
    /// sent to the server anyway, to slide the session's idle timer.
    pub touch_every: Duration,
    /// How long the event stream may be silent before it counts as down.
    pub idle_timeout: Duration,
}

impl CacheConfig {
    /// A configuration with the given maximum caching time, `touch_every` equal to it, and
    /// defaults elsewhere.
    pub fn with_max_age(max_age: Duration) -> CacheConfig {
        CacheConfig {
            max_age,
            capacity: DEFAULT_CAPACITY,
            touch_every: max_age,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig::with_max_age(DEFAULT_MAX_AGE)
    }
}

/// Counters, for tests and operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Validations answered from the cache.
    pub hits: u64,
    /// Validations sent to the server because no trusted entry was held.
    pub misses: u64,
    /// Validations sent to the server, although an entry was held, to touch the session.
    pub touches: u64,
    /// `updated` and `ended` events applied (whether or not their session was cached).
    pub invalidations: u64,
    /// Whole-cache drops: `reset` events, the stream going down, a fresh stream start.
    pub flushes: u64,
    /// Event-stream connections established so far.
    pub connections: u64,
    /// Whether the event stream is connected now.
    pub stream_connected: bool,
    /// Entries held now.
    pub entries: usize,
}

/// A validation cache in front of a [`Client`] holding an agent key. See the [module
/// docs](self) for when it answers locally.
///
/// Cheap to clone; clones share the cache. The background task that follows the event
/// stream stops when the last clone is dropped.
#[derive(Clone)]
pub struct CachedValidator {
    /// Asks the server on misses.
    client: Client,
    /// What the background task shares with the validators.
    shared: Arc<Shared>,
    /// Stops the background task when the last clone goes.
    _task: Arc<TaskGuard>,
}

/// The state the validators and the background task share.
struct Shared {
    config: CacheConfig,
    clock: Arc<dyn Clock>,
    /// The table. A plain mutex: it is held for map operations only, never across an await.
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
    touches: AtomicU64,
    invalidations: AtomicU64,
    flushes: AtomicU64,
    connections: AtomicU64,
}

/// Aborts the background task on drop.
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl fmt::Debug for CachedValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedValidator")
            .field("client", &self.client)
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl CachedValidator {
    /// Starts the cache and its event-stream follower for `client`, which must hold an
    /// agent key.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, like [`tokio::spawn`].
    pub fn start(client: Client, config: CacheConfig) -> CachedValidator {
        CachedValidator::start_with_clock(client, config, Arc::new(MonotonicClock))
    }

    /// [`CachedValidator::start`] with the clock entries' ages are measured on.
    pub fn start_with_clock(
        client: Client,
        config: CacheConfig,
        clock: Arc<dyn Clock>,
    ) -> CachedValidator {
        let shared = Arc::new(Shared {
            config,
            clock,
            state: Mutex::new(State::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            touches: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let task = tokio::spawn(follow::follow(client.clone(), Arc::clone(&shared)));
        CachedValidator {
            client,
            shared,
            _task: Arc::new(TaskGuard(task)),
        }
    }

    /// The session behind `token`: from the cache when it holds a trusted answer, else from
    /// the server (`POST /v1/sessions/validate`), whose success is then cached. Errors are
    /// the server's, never cached. See the module docs for `touch`.
    pub async fn validate(&self, token: &str, touch: bool) -> Result<v1::Session, Error> {
        let shared = &*self.shared;
        let config = &shared.config;
        let key = key_of(token);
        let sent_at = shared.clock.now();
        // The ticket is taken under the same lock as the lookup: any invalidation after
        // the lookup voids the fill below.
        let (lookup, ticket) = {
            let mut state = shared.lock();
            let lookup = state.lookup(&key, touch, sent_at, config.max_age, config.touch_every);
            (lookup, state.ticket())
        };
        match lookup {
            Lookup::Hit(cached) => {
                shared.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(v1::Session::clone(&cached));
            }
            Lookup::TouchDue => shared.touches.fetch_add(1, Ordering::Relaxed),
            Lookup::Miss => shared.misses.fetch_add(1, Ordering::Relaxed),
        };
        let answer = self.client.validate(token, touch).await;
        let mut state = shared.lock();
        match answer {
            Ok(session) => {
                let touched_at = touch.then_some(sent_at);
                state.fill(
                    key,
                    session.clone(),
                    ticket,
                    sent_at,
                    touched_at,
                    config.capacity,
                );
                Ok(session)
            }
            Err(err) => {
                state.remove(&key);
                Err(err)
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        let shared = &*self.shared;
        let (entries, stream_connected) = {
            let state = shared.lock();
            (state.len(), state.connected())
        };
        CacheStats {
            hits: shared.hits.load(Ordering::Relaxed),
            misses: shared.misses.load(Ordering::Relaxed),
            touches: shared.touches.load(Ordering::Relaxed),
            invalidations: shared.invalidations.load(Ordering::Relaxed),
            flushes: shared.flushes.load(Ordering::Relaxed),
            connections: shared.connections.load(Ordering::Relaxed),
            stream_connected,
            entries,
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &CacheConfig {
        &self.shared.config
    }

    /// The keys held, for tests to check that no raw token is.
    #[cfg(test)]
    fn keys(&self) -> Vec<[u8; 32]> {
        self.shared.lock().keys()
    }
}

impl Shared {
    /// The table. Should a panic ever poison the lock, the table may be half-updated, so it
    /// is flushed before use: an empty cache is always safe.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| {
            self.state.clear_poison();
            let mut state = poisoned.into_inner();
            state.flush();
            state
        })
    }

    /// The stream is up. Without a resume point, what happened before is unknown.
    fn connected(&self, resumed: bool) {
        let mut state = self.lock();
        if !resumed {
            state.flush();
            self.flushes.fetch_add(1, Ordering::Relaxed);
        }
        state.set_connected(true);
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// The stream is down: entries fetched until now lose the stream's protection.
    fn disconnected(&self) {
        let mut state = self.lock();
        state.flush();
        state.set_connected(false);
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// A session changed, or ended.
    fn invalidate(&self, id: &str, ended: bool) {
        self.lock().invalidate(id, ended);
        self.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// The server cannot replay what we missed.
    fn reset(&self) {
        self.lock().flush();
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }
}
