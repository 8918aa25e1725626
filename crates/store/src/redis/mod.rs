//! The shared store: sessions in Redis or Valkey (single, Sentinel or Cluster), so any
//! number of sessiond nodes serve any session.
//!
//! - `keys.rs`: the key layout. One user's keys share a hash tag taken from the session id.
//! - `scripts.rs`: the Lua scripts; every multi-key step is one script on one tag.
//! - `codec.rs`: sessions and tombstones as Redis hashes.
//! - `conn.rs`: connections (single, Sentinel, Cluster), timeouts, `EVALSHA` with reload.
//! - `cache.rs`: the near cache for validate, its invalidation subscription, and the
//!   coalesced touches.
//! - `sweep.rs`: ending what is due and purging old tombstones.
//! - `nodes.rs`: node heartbeats, for the node count in stats.
//! - `events.rs`: change events, kept in a Redis Stream, and the feeds that follow it.
//!
//! Invariants:
//! - Time is an input: every script is given the caller's `now`; TTLs are relative to it
//!   (`PEXPIRE`), never absolute, and nothing reads Redis's clock.
//! - A session's state changes only inside a script on its tag, atomically. Cross-user
//!   bookkeeping (global listing order, sweep schedule, counters) is applied in the same
//!   script on a single Redis and right after it in a Cluster; it never decides whether a
//!   session is live: every read judges the session's own hash by `Session::status(now)`.
//! - Validate answers from the near cache only while the invalidation subscription is up;
//!   otherwise it reads Redis, and if Redis is unreachable it fails with `Unavailable`.
//! - A touch reaches Redis before the deadline Redis held when it was made: with the
//!   periodic flush (every flush window), or at the next sweep tick when that deadline is
//!   near (`cache::URGENT_WITHIN`). A script on a tag carries the tag's pending touches.
//! - Every change appends its change event to the stream in the same step as the global
//!   bookkeeping: atomically with the change on a single Redis, right after it in a Cluster.
//!
//! See `docs/redis.md` for the durability settings this relies on.

mod cache;
mod codec;
mod conn;
mod events;
mod keys;
mod nodes;
mod scripts;
mod sweep;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use redis::{Script, Value};
use sessiond_core::id::user_tag;
use sessiond_core::input::apply_attributes;
use sessiond_core::policy::{OnLimit, UserLimit};
use sessiond_core::{EndReason, Session, SessionId, SessionStatus, Timestamp, Verifier};

use self::cache::{Cached, NearCache, TagTouches};
use self::codec::Fields;
use self::conn::{Conn, Endpoint};
pub use self::conn::{MasterAuth, Target, Tls, check_target, check_url};
use self::keys::Keys;
use self::scripts::{Call, Header, Scripts};
use crate::intern::Interner;
use crate::{
    AttributeChange, Checked, Created, Ended, Lookup, Page, SessionStore, StoreError, StoreOptions,
    StoreStats, SweepReport, Updated,
};

/// Added to every key's TTL, so Redis never drops a key the store still needs to read
/// (a tombstone until its purge time, a touched session until its flush lands).
const TTL_SLACK: Duration = Duration::from_secs(300);
/// Due entries taken per round of a sweep, and the most rounds per sweep call.
const SWEEP_BATCH: isize = 512;
const SWEEP_ROUNDS: usize = 64;
/// Tries of an update that keeps losing races with other changes of the same session.
const UPDATE_TRIES: usize = 8;
/// Ids read per round of a listing, and the most rounds per page.
const LIST_ROUNDS: usize = 32;

/// Most touches one `touch_many` call carries on a single Redis: a script blocks Redis
/// while it runs (a few microseconds per touch).
const TOUCHES_PER_CALL: usize = 512;

/// Splits groups (a tag and its items) into runs that each hold at least one group and stop
/// taking groups once they hold `max` items; a group is never split.
fn chunk_groups<K, G: AsRef<[T]>, T>(groups: Vec<(K, G)>, max: usize) -> Vec<Vec<(K, G)>> {
    let mut chunks: Vec<Vec<(K, G)>> = Vec::new();
    let mut size = max;
    for group in groups {
        if size >= max {
            chunks.push(Vec::new());
            size = 0;
        }
        size += group.1.as_ref().len();
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(group);
        }
    }
    chunks
}

/// How to reach Redis and how to behave there.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    pub target: Target,
    /// What TLS trusts and shows, for `rediss://` URLs (see [`check_target`]).
    pub tls: Tls,
    /// Through Sentinel: how to log in to the master it names.
    pub master_auth: MasterAuth,
    /// Prepended to every key and channel, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Most validate answers kept in memory.
    pub cache_capacity: usize,
    /// Longest a cached answer is used even while invalidations flow.
    pub cache_max_age: Duration,
}

impl RedisConfig {
    /// Defaults for `target`: prefix `sessiond:`, 100 000 cached answers, 30 s at most.
    pub fn new(target: Target) -> RedisConfig {
        RedisConfig {
            target,
            tls: Tls::default(),
            master_auth: MasterAuth::default(),
            key_prefix: "sessiond:".into(),
            cache_capacity: 100_000,
            cache_max_age: Duration::from_secs(30),
        }
    }
}

/// Background tasks of one store; aborted when it closes or drops.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Sessions in Redis, shared by every node on it. See the module docs.
pub struct RedisStore {
    conn: Conn,
    /// Where a Cluster's second steps (the `{global}` keys) go: `conn`, or over TLS the
    /// same connection with those steps sent in batches (they share one slot).
    globals_conn: Conn,
    /// Where Redis is, and how to reach it: event feeds open connections of their own.
    endpoint: Arc<Endpoint>,
    keys: Keys,
    scripts: Scripts,
    /// Validate answers known locally, and the touches not yet in Redis (laid over every
    /// read, so this node sees its own touches).
    cache: Arc<NearCache>,
    /// One copy of each user agent and policy name among the near cache's records, as in
    /// the embedded store: less memory, and an answer reads a string other answers keep
    /// in the CPU's cache rather than a copy of its own.
    strings: Interner,
    options: StoreOptions,
    /// The global keys, passed into tag scripts when they can be (not in a Cluster).
    inline_globals: Option<[String; keys::GLOBAL_KEY_COUNT]>,
    channel: String,
    /// This node's id in the heartbeat set.
    node: String,
    /// Set by `close`; every later call fails.
    closed: AtomicBool,
    /// Turns true on `close`: event feeds end.
    closing: tokio::sync::watch::Sender<bool>,
    /// The subscription and heartbeat; dropped (aborted) on close.
    tasks: parking_lot::Mutex<Option<Tasks>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys)
            .field("cluster", &self.conn.is_cluster())
            .finish_non_exhaustive()
    }
}

fn bad_reply(what: &str) -> StoreError {
    StoreError::Corrupt(format!("redis: unexpected script reply ({what})"))
}

fn item(items: &[Value], i: usize) -> Result<&Value, StoreError> {
    items.get(i).ok_or_else(|| bad_reply("too short"))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisStore {
    /// Connects (lazily, for a single Redis) and starts the invalidation subscription and
    /// the node heartbeat. Must run inside a Tokio runtime.
    pub async fn connect(
        config: RedisConfig,
        options: StoreOptions,
    ) -> Result<RedisStore, StoreError> {
        let keys = Keys::new(&config.key_prefix)?;
        let endpoint = Arc::new(Endpoint::new(
            config.target,
            &config.tls,
            &config.master_auth,
        ));
        let (conn, source) = conn::connect(&endpoint).await?;
        let cache = Arc::new(NearCache::new(config.cache_capacity, config.cache_max_age));
        let channel = keys.channel();
        let node = SessionId::random()
            .map_err(|e| StoreError::Unavailable(format!("no randomness for a node id: {e}")))?
            .to_string();
        let subscription = tokio::spawn(cache::subscribe(source, channel.clone(), cache.clone()));
        let heartbeat = tokio::spawn(nodes::heartbeat(conn.clone(), keys.clone(), node.clone()));
        let inline_globals = (!conn.is_cluster()).then(|| keys.globals());
        let globals_conn = endpoint.batched_globals(&conn);
        let mut tasks = vec![subscription, heartbeat];
        if !conn.is_cluster() {
            // A Cluster answers CONFIG per node; there, check each node's settings by hand.
            let c = conn.clone();
            tasks.push(tokio::spawn(async move {
                for w in conn::durability_warnings(&c).await {
                    tracing::warn!("{w}");
                }
            }));
        }
        Ok(RedisStore {
            conn,
            globals_conn,
            endpoint,
            keys,
            scripts: Scripts::new(),
            cache,
            strings: Interner::default(),
            options,
            inline_globals,
            channel,
            node,
            closed: AtomicBool::new(false),
            closing: tokio::sync::watch::Sender::new(false),
            tasks: parking_lot::Mutex::new(Some(Tasks(tasks))),
        })
    }

    /// Whether validate can be answered from memory right now (the subscription is up).
    pub fn near_cache_trusted(&self) -> bool {
        self.cache.trusted()
    }

    /// How many validate answers came from the near cache (no round trip) so far.
    pub fn near_cache_hits(&self) -> u64 {
        self.cache.hits()
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the redis store is closed".into()));
        }
        Ok(())
    }

    /// What every tag script is told first: the tag's key base `base`, `now`, and this
    /// store's retention, TTL slack and invalidation channel.
    fn header<'a>(&'a self, base: &'a str, now: Timestamp) -> Header<'a> {
        Header {
            base,
            now,
            retention_ms: ms(self.options.ended_retention),
            slack_ms: ms(TTL_SLACK),
            channel: &self.channel,
        }
    }

    /// Runs a tag script: sends the tag's pending touches along, applies the returned
    /// effects to the global keys (in a Cluster), and returns the reply without them.
    async fn run_tag(
        &self,
        script: &Script,
        tag: [u8; 4],
        route: String,
        now: Timestamp,
        args: impl FnOnce(&mut Call<'_>),
    ) -> Result<Vec<Value>, StoreError> {
        let base = self.keys.base(tag);
        let header = self.header(&base, now);
        let touches = self.cache.take_touches(tag);
        let globals = self.inline_globals.as_ref().map(|g| &g[..]);
        let mut call = Call::tag(script, &route, globals, header, &touches);
        args(&mut call);
        let reply = match self.conn.eval(&call).await {
            Ok(v) => v,
            Err(e) => {
                self.cache.touches.restore(touches);
                return Err(e);
            }
        };
        let mut items = codec::array(&reply)?.to_vec();
        let effects = match items.pop() {
            Some(v) => codec::strings(&v)?,
            None => return Err(bad_reply("empty")),
        };
        if !effects.is_empty() {
            self.apply_global(effects).await;
        }
        Ok(items)
    }

    /// The Cluster's second step: the effects on the `{global}` keys, in one script. A
    /// failure leaves listings, the sweep schedule or counters behind, never a session's
    /// state, so it is logged rather than failing a change that already happened.
    async fn apply_global(&self, effects: Vec<String>) {
        let mut call = Call::plain(&self.scripts.global, &self.keys.globals());
        for e in effects {
            call.arg(e);
        }
        if let Err(e) = self.globals_conn.eval(&call).await {
            tracing::warn!(error = %e, "redis: global index update failed; counters may lag");
        }
    }

    /// The session and the tombstone stored under `id`, one round trip, with this node's
    /// unflushed touch laid over the session.
    async fn read(
        &self,
        id: &SessionId,
    ) -> Result<(Option<Session>, Option<sessiond_core::Tombstone>), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(self.keys.session(id))
            .cmd("HGETALL")
            .arg(self.keys.tombstone(id));
        let (s, t): (Fields, Fields) = self.conn.pipe(&pipe).await?;
        let mut session = codec::decode_session(&s)?.filter(|s| s.id == *id);
        if let (Some(s), Some(t)) = (session.as_mut(), self.cache.pending_touch(id)) {
            t.apply(s);
        }
        Ok((session, codec::decode_tombstone(*id, &t)?))
    }

    /// Many sessions by id (missing ones left out), in the given order.
    async fn read_many(&self, ids: &[SessionId]) -> Result<Vec<Session>, StoreError> {
        let mut by_tag: BTreeMap<[u8; 4], Vec<SessionId>> = BTreeMap::new();
        for id in ids {
            by_tag.entry(id.tag()).or_default().push(*id);
        }
        let reads = by_tag.values().map(|group| async move {
            let mut pipe = redis::pipe();
            for id in group {
                pipe.cmd("HGETALL").arg(self.keys.session(id));
            }
            let hashes: Vec<Fields> = self.conn.pipe(&pipe).await?;
            Ok::<_, StoreError>(group.iter().copied().zip(hashes).collect::<Vec<_>>())
        });
        let mut found = std::collections::HashMap::new();
        for group in futures_util::future::try_join_all(reads).await? {
            for (id, fields) in group {
                if let Some(mut s) = codec::decode_session(&fields)? {
                    if let Some(t) = self.cache.pending_touch(&id) {
                        t.apply(&mut s);
                    }
                    found.insert(id, s);
                }
            }
        }
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    fn retained(
        &self,
        t: Option<sessiond_core::Tombstone>,
        verifier: Option<&Verifier>,
        now: Timestamp,
    ) -> Option<sessiond_core::Tombstone> {
        t.filter(|t| now < t.purge_at && verifier.is_none_or(|v| t.verifier.matches(v)))
    }

    /// Writes taken touches with `touch_many`. On one Redis a call carries whole tags up to
    /// [`TOUCHES_PER_CALL`] touches (a uniform validate load touches one session per tag,
    /// and a call per tag would be a script call per touch); in a Cluster a script may
    /// touch one slot only, so each call carries one tag. Only a few calls are in flight at
    /// once, so a flush of a whole window's touches does not queue a logout behind it.
    /// Touches whose call fails are put back, urgent, for the next sweep tick.
    async fn write_touches(&self, pending: Vec<([u8; 4], TagTouches)>) -> Result<u64, StoreError> {
        let (per_call, in_flight) = if self.inline_globals.is_some() {
            (TOUCHES_PER_CALL, 2)
        } else {
            (1, 16)
        };
        let chunks = chunk_groups(pending, per_call);
        let calls = chunks.into_iter().map(|chunk| async move {
            let Some((route_tag, Some((route_id, _)))) =
                chunk.first().map(|(tag, touches)| (tag, touches.first()))
            else {
                return Ok(0);
            };
            let base = self.keys.base(*route_tag);
            let mut call = Call::tag(
                &self.scripts.touch_many,
                &self.keys.session(route_id),
                None,
                self.header(&base, Timestamp(0)),
                &[],
            );
            call.arg(chunk.len());
            for (tag, touches) in &chunk {
                call.arg(self.keys.base(*tag)).arg(touches.len());
                for (id, t) in touches {
                    call.touch(id, t);
                }
            }
            match self.conn.eval(&call).await {
                Ok(reply) => {
                    let items = codec::array(&reply)?;
                    Ok(u64::try_from(codec::int(item(items, 0)?)?).unwrap_or(0))
                }
                Err(e) => {
                    for (_, touches) in chunk {
                        self.cache.touches.restore(touches);
                    }
                    Err(e)
                }
            }
        });
        let mut moved = 0;
        let mut failure = None;
        let mut results = futures_util::stream::iter(calls).buffer_unordered(in_flight);
        while let Some(r) = results.next().await {
            match r {
                Ok(n) => moved += n,
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(moved),
        }
    }

    /// What validate answers from the near cache, if it can; a live record is lent to
    /// `answer` under the cache shard's lock.
    fn validate_cached(
        &self,
        id: SessionId,
        verifier: &Verifier,
        touch: bool,
        now: Timestamp,
        answer: &mut dyn FnMut(&Session),
    ) -> Option<Checked> {
        self.cache
            .with(&id, |cached, held| match cached {
                Cached::Live(s) => {
                    // Fetch the record's lines together (see the embedded store's
                    // `refusal`): the answer reads them all.
                    std::hint::black_box(s.warm());
                    if !s.verifier.matches(verifier) {
                        return Some(Checked::NotFound);
                    }
                    // Its deadline before this touch: past it, it is not live here.
                    let due = s.deadline().0;
                    if now >= due {
                        // Another node may have touched it: ask Redis before saying ended.
                        return None;
                    }
                    if touch && s.touch(now) {
                        held.touched(s, now, due);
                    }
                    answer(s);
                    Some(Checked::Live)
                }
                Cached::Ended(t) if now < t.purge_at => Some(if t.verifier.matches(verifier) {
                    Checked::Ended(sessiond_core::Tombstone::clone(t))
                } else {
                    Checked::NotFound
                }),
                Cached::Ended(_) => None,
            })
            .flatten()
    }

    /// One page of ids from a lexicographic zset (`ids` or a user's set), checked live.
    async fn list_from(
        &self,
        zset: String,
        cursor: Option<SessionId>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Page, StoreError> {
        let mut page = Page::default();
        let mut after = cursor;
        let want = limit + 1;
        for _ in 0..LIST_ROUNDS {
            let min = after.map_or_else(|| "-".to_string(), |c| format!("({c}"));
            let batch = isize::try_from(want - page.sessions.len()).unwrap_or(isize::MAX);
            let raw: Vec<String> = self
                .conn
                .query(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(&zset)
                        .arg(min)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(batch),
                )
                .await?;
            let ids: Vec<SessionId> = raw.iter().filter_map(|s| s.parse().ok()).collect();
            let exhausted = raw.len() < usize::try_from(batch).unwrap_or(usize::MAX);
            after = raw.last().and_then(|s| s.parse().ok()).or(after);
            let live = self.read_many(&ids).await?;
            page.sessions.extend(
                live.into_iter()
                    .filter(|s| s.status(now) == SessionStatus::Live),
            );
            if page.sessions.len() >= want {
                page.sessions.truncate(limit);
                page.next_cursor = page.sessions.last().map(|s| s.id);
                return Ok(page);
            }
            if exhausted {
                return Ok(page);
            }
        }
        // Many ended sessions in a row: hand back what there is and where to go on.
        page.next_cursor = after;
        Ok(page)
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn create(
        &self,
        mut session: Session,
        limit: UserLimit,
        now: Timestamp,
    ) -> Result<Created, StoreError> {
        self.check_open()?;
        let tag = session.id.tag();
        if tag != user_tag(&session.user) {
            return Err(StoreError::Corrupt(
                "a session id must start with its user's tag (SessionId::for_user)".into(),
            ));
        }
        let blob = codec::encode_session(&session)?;
        let ticket = self.cache.ticket(&session.id);
        let s = &session;
        let items = self
            .run_tag(
                &self.scripts.create,
                tag,
                self.keys.session(&s.id),
                now,
                |c| {
                    c.arg(s.id.to_string())
                        .arg(&*s.user)
                        .arg(limit.max)
                        .arg(if limit.on_limit == OnLimit::DisplaceOldest {
                            "1"
                        } else {
                            "0"
                        })
                        .arg(&s.verifier.0[..])
                        .arg(&*s.policy)
                        .arg(s.created_at.as_millis())
                        .arg(s.last_access_at.as_millis())
                        .arg(s.idle_timeout_ms)
                        .arg(s.expires_at.as_millis())
                        .arg(s.version)
                        .arg(blob);
                },
            )
            .await?;
        match codec::string(item(&items, 0)?)?.as_str() {
            "created" => {
                let displaced = codec::ids(item(&items, 1)?)?;
                for id in &displaced {
                    self.cache.invalidate(id);
                }
                self.strings.share(&mut session);
                let shared = Arc::new(session.clone());
                self.cache.fill(ticket, session.id, Cached::Live(session));
                Ok(Created::Created {
                    session: shared,
                    displaced,
                })
            }
            "limit" => Ok(Created::LimitReached { limit: limit.max }),
            "collision" => Err(StoreError::Corrupt("session id collision".into())),
            _ => Err(bad_reply("create")),
        }
    }

    async fn validate(
        &self,
        id: SessionId,
        verifier: &Verifier,
        touch: bool,
        now: Timestamp,
    ) -> Result<Lookup, StoreError> {
        let mut copy = None;
        let checked = self
            .validate_with(id, verifier, touch, now, &mut |s| {
                copy = Some(Arc::new(s.clone()));
            })
            .await?;
        Ok(Lookup::copied(checked, copy))
    }

    async fn validate_with(
        &self,
        id: SessionId,
        verifier: &Verifier,
        touch: bool,
        now: Timestamp,
        answer: &mut (dyn for<'s> FnMut(&'s Session) + Send),
    ) -> Result<Checked, StoreError> {
        // On the server's path `validate_ready` has just missed, so a miss is probed twice:
        // one hash lookup in memory, beside the round trip to Redis that follows.
        if let Some(ready) = self.validate_ready(id, verifier, touch, now, answer) {
            return ready;
        }
        let ticket = self.cache.ticket(&id);
        let (session, tomb) = self.read(&id).await?;
        if let Some(mut s) = session {
            if !s.verifier.matches(verifier) {
                return Ok(Checked::NotFound);
            }
            if let Some(t) = s.expired_tombstone(now, self.options.ended_retention) {
                return Ok(Checked::Ended(t));
            }
            let due = s.deadline().0;
            if touch && s.touch(now) {
                self.cache.touches.record(&s, now, due);
            }
            // Its user agent and policy name become the copies every cached record shares.
            self.strings.share(&mut s);
            answer(&s);
            self.cache.fill(ticket, id, Cached::Live(s));
            return Ok(Checked::Live);
        }
        Ok(match self.retained(tomb, Some(verifier), now) {
            Some(t) => {
                self.cache
                    .fill(ticket, id, Cached::Ended(Box::new(t.clone())));
                Checked::Ended(t)
            }
            None => Checked::NotFound,
        })
    }

    /// Answers from the near cache; a miss is `validate_with`'s to read from Redis.
    fn validate_ready(
        &self,
        id: SessionId,
        verifier: &Verifier,
        touch: bool,
        now: Timestamp,
        answer: &mut (dyn for<'s> FnMut(&'s Session) + Send),
    ) -> Option<Result<Checked, StoreError>> {
        if let Err(e) = self.check_open() {
            return Some(Err(e));
        }
        self.validate_cached(id, verifier, touch, now, answer)
            .map(Ok)
    }

    async fn get(&self, id: SessionId, now: Timestamp) -> Result<Lookup, StoreError> {
        self.check_open()?;
        let (session, tomb) = self.read(&id).await?;
        if let Some(s) = session {
            return Ok(
                match s.expired_tombstone(now, self.options.ended_retention) {
                    Some(t) => Lookup::Ended(t),
                    None => Lookup::Live(Arc::new(s)),
                },
            );
        }
        Ok(self
            .retained(tomb, None, now)
            .map_or(Lookup::NotFound, Lookup::Ended))
    }

    async fn update(
        &self,
        id: SessionId,
        verifier: &Verifier,
        change: &AttributeChange,
        expected_version: Option<u64>,
        now: Timestamp,
    ) -> Result<Updated, StoreError> {
        self.check_open()?;
        for _ in 0..UPDATE_TRIES {
            let (session, tomb) = self.read(&id).await?;
            let Some(s) = session else {
                return Ok(match self.retained(tomb, Some(verifier), now) {
                    Some(t) => Updated::Ended(t),
                    None => Updated::NotFound,
                });
            };
            if !s.verifier.matches(verifier) {
                return Ok(Updated::NotFound);
            }
            if let Some(t) = s.expired_tombstone(now, self.options.ended_retention) {
                return Ok(Updated::Ended(t));
            }
            if expected_version.is_some_and(|v| v != s.version) {
                return Ok(Updated::VersionConflict { current: s.version });
            }
            let attributes = match apply_attributes(&s.attributes, &change.set, &change.remove) {
                Ok(a) => a,
                Err(e) => return Ok(Updated::Invalid(e)),
            };
            let mut next = s.clone();
            next.attributes = attributes;
            next.touch(now);
            next.version += 1;
            let blob = codec::encode_session(&next)?;
            let items = self
                .run_tag(
                    &self.scripts.update,
                    id.tag(),
                    self.keys.session(&id),
                    now,
                    |c| {
                        c.arg(id.to_string()).arg(s.version).arg(blob);
                    },
                )
                .await?;
            self.cache.invalidate(&id);
            match codec::string(item(&items, 0)?)?.as_str() {
                "updated" => {
                    next.version = u64::try_from(codec::int(item(&items, 1)?)?)
                        .map_err(|_| bad_reply("version"))?;
                    next.last_access_at = Timestamp(codec::int(item(&items, 2)?)?);
                    return Ok(Updated::Updated(next));
                }
                "changed" if expected_version.is_some() => {
                    let current = u64::try_from(codec::int(item(&items, 1)?)?)
                        .map_err(|_| bad_reply("version"))?;
                    return Ok(Updated::VersionConflict { current });
                }
                // Changed or ended since read: read again and judge afresh.
                "changed" | "gone" => continue,
                _ => return Err(bad_reply("update")),
            }
        }
        Err(StoreError::Unavailable(
            "redis: the session kept changing during the update; try again".into(),
        ))
    }

    async fn end(
        &self,
        id: SessionId,
        verifier: Option<&Verifier>,
        reason: EndReason,
        now: Timestamp,
    ) -> Result<Ended, StoreError> {
        self.check_open()?;
        let (session, tomb) = self.read(&id).await?;
        match session {
            Some(s) if verifier.is_none_or(|v| s.verifier.matches(v)) => {}
            Some(_) => return Ok(Ended::NotFound),
            None => {
                return Ok(self
                    .retained(tomb, verifier, now)
                    .map_or(Ended::NotFound, Ended::AlreadyEnded));
            }
        }
        let items = self
            .run_tag(
                &self.scripts.end,
                id.tag(),
                self.keys.session(&id),
                now,
                |c| {
                    c.arg(id.to_string()).arg(reason.as_str());
                },
            )
            .await?;
        self.cache.invalidate(&id);
        match codec::string(item(&items, 0)?)?.as_str() {
            "ended" => {
                let was_live = codec::int(item(&items, 1)?)? == 1;
                let fields = codec::fields_of(item(&items, 2)?)?;
                let t = codec::decode_tombstone(id, &fields)?.ok_or_else(|| bad_reply("end"))?;
                Ok(if was_live {
                    Ended::Ended(t)
                } else {
                    Ended::AlreadyEnded(t)
                })
            }
            "none" => {
                let fields = codec::fields_of(item(&items, 1)?)?;
                let t = codec::decode_tombstone(id, &fields)?;
                Ok(self
                    .retained(t, verifier, now)
                    .map_or(Ended::NotFound, Ended::AlreadyEnded))
            }
            _ => Err(bad_reply("end")),
        }
    }

    async fn end_user(
        &self,
        user: &str,
        reason: EndReason,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        self.check_open()?;
        let items = self
            .run_tag(
                &self.scripts.end_user,
                user_tag(user),
                self.keys.user(user),
                now,
                |c| {
                    c.arg(user).arg(reason.as_str());
                },
            )
            .await?;
        for id in codec::ids(item(&items, 1)?)? {
            self.cache.invalidate(&id);
        }
        Ok(u64::try_from(codec::int(item(&items, 0)?)?).unwrap_or(0))
    }

    async fn list(
        &self,
        user: Option<&str>,
        cursor: Option<SessionId>,
        limit: usize,
        now: Timestamp,
    ) -> Result<Page, StoreError> {
        self.check_open()?;
        let zset = match user {
            Some(u) => self.keys.user(u),
            None => self.keys.ids(),
        };
        self.list_from(zset, cursor, limit.max(1), now).await
    }

    async fn sweep(&self, now: Timestamp) -> Result<SweepReport, StoreError> {
        self.check_open()?;
        // A script on a tag carries this node's touches of it, so the sweep never ends a
        // session this node kept alive. Touches near the deadline Redis holds go now, so
        // no other node's sweep or read ends one either.
        self.write_touches(self.cache.take_urgent_touches()).await?;
        let mut report = SweepReport::default();
        self.sweep_sessions(now, &mut report).await?;
        self.sweep_tombstones(now, &mut report).await?;
        // Strings no cached record holds any more (evicted, invalidated or ended).
        self.strings.purge();
        Ok(report)
    }

    async fn flush_touches(&self) -> Result<u64, StoreError> {
        self.check_open()?;
        self.write_touches(self.cache.take_all_touches()).await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.check_open()?;
        let counters: BTreeMap<String, i64> = self
            .conn
            .query(redis::cmd("HGETALL").arg(self.keys.stats()))
            .await?;
        let mut stats = StoreStats::default();
        for (field, n) in counters {
            let Ok(n) = u64::try_from(n) else { continue };
            if n == 0 {
                continue;
            }
            if field == "live" {
                stats.live = n;
            } else if field == "users" {
                stats.users = n;
            } else if let Some(p) = field.strip_prefix("pol:") {
                stats.per_policy.insert(p.to_owned(), n);
            } else if let Some(r) = field.strip_prefix("r:").and_then(|r| r.parse().ok()) {
                stats.ended_by_reason.insert(r, n);
            }
        }
        stats.nodes = nodes::nodes(&self.conn, &self.scripts.nodes, &self.keys, &self.node).await?;
        Ok(stats)
    }

    async fn events(&self, after: Option<&str>) -> Result<crate::Feed, StoreError> {
        self.check_open()?;
        self.feed(after).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check_open()?;
        self.conn
            .query::<String>(&redis::cmd("PING"))
            .await
            .map(|_| ())
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.check_open()?;
        let flushed = self.flush_touches().await;
        self.closed.store(true, Ordering::Release);
        self.closing.send_replace(true);
        drop(self.tasks.lock().take());
        let mut leave = redis::pipe();
        leave
            .cmd("SREM")
            .arg(self.keys.nodes())
            .arg(&self.node)
            .cmd("DEL")
            .arg(format!("{}{}", self.keys.node_prefix(), self.node));
        if let Err(e) = self.conn.pipe::<()>(&leave).await {
            tracing::debug!(error = %e, "redis: could not remove this node's heartbeat");
        }
        // Every acknowledged change is already durable (appendfsync always): see docs/redis.md.
        flushed.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touch_batches_hold_whole_tags_up_to_the_cap() {
        let group = |tag: &str, n: usize| (tag.to_owned(), vec![0u8; n]);
        let sizes = |chunks: Vec<Vec<(String, Vec<u8>)>>| -> Vec<Vec<usize>> {
            chunks
                .into_iter()
                .map(|c| c.into_iter().map(|(_, v)| v.len()).collect())
                .collect()
        };
        assert!(chunk_groups(Vec::<(String, Vec<u8>)>::new(), 4).is_empty());
        let chunks = chunk_groups(
            vec![
                group("a", 1),
                group("b", 2),
                group("c", 1),
                group("d", 9),
                group("e", 1),
            ],
            4,
        );
        assert_eq!(sizes(chunks), vec![vec![1, 2, 1], vec![9], vec![1]]);
        // A Cluster's cap: one tag per call, however many touches it has.
        let chunks = chunk_groups(vec![group("a", 3), group("b", 1), group("c", 2)], 1);
        assert_eq!(sizes(chunks), vec![vec![3], vec![1], vec![2]]);
    }
}
