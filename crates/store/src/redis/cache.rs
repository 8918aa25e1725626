//! The node-local state of the Redis store: the near cache that answers validate without a
//! round trip, the invalidation subscription that keeps it honest, and the coalesced
//! touches waiting to be flushed.
//!
//! Trust rules of the near cache:
//! - An entry is used only while the invalidation subscription is up, only if it was filled
//!   during the current subscription (its `epoch`), and only while younger than `max_age`.
//!   When the subscription drops, the whole cache is emptied and validate reads Redis.
//! - A fill takes a [`Ticket`] before reading Redis and is dropped if any invalidation hit
//!   the entry's shard (its `generation` moved) or the subscription restarted meanwhile:
//!   a read racing a logout can never park a stale "live" answer.
//! - Every change a script makes is published on the channel (`PUBLISH` inside the script),
//!   and the node making it also evicts its own entry at once.
//! - A tombstone never changes, so a cached ended answer stays right until its purge time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHashSet};
use sessiond_core::{Session, SessionId, Timestamp, Tombstone};
use smallvec::SmallVec;

use super::conn::PubSubSource;

const SHARDS: usize = 64;
/// How often the subscription connection is pinged, and how long an answer may take.
const PING_EVERY: Duration = Duration::from_millis(500);
const PING_TIMEOUT: Duration = Duration::from_millis(1000);
/// Pause before subscribing again after the subscription failed.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// A cached answer.
#[derive(Clone, Debug)]
// A live record is most of what the cache holds, and it sits in the entry on purpose.
#[allow(clippy::large_enum_variant)]
pub(super) enum Cached {
    /// Kept in the entry itself, and lent to a validate's answer under the shard's lock:
    /// the hash map's slot is the record, so a validate waits on no load beyond the
    /// lookup's own. Behind an `Arc` it was one more cache miss per validate
    /// (docs/benchmarks.md, twenty-second session).
    Live(Session),
    /// Boxed: most entries are live, and the table's slots stay small.
    Ended(Box<Tombstone>),
}

struct Entry {
    value: Cached,
    /// The subscription epoch the entry was filled in.
    epoch: u64,
    filled: Instant,
    /// When a touch through this entry first slid its session since the touch was last
    /// taken for a write; the last touch is the session's `last_access_at`. Held here, next
    /// to the session the validate already reads, so touching again costs no other lookup.
    touched: Option<Timestamp>,
}

impl Entry {
    /// The touch held in the entry.
    fn held_touch(&self) -> Option<Touch> {
        match (&self.value, self.touched) {
            (Cached::Live(s), Some(first)) => Some(Touch::of(s, first, s.last_access_at)),
            _ => None,
        }
    }

    /// The touch held in the entry, taken out of it.
    fn take_touch(&mut self) -> Option<Touch> {
        let t = self.held_touch();
        self.touched = None;
        t
    }
}

#[derive(Default)]
struct Shard {
    entries: FxHashMap<SessionId, Entry>,
    /// Bumped by every invalidation of an id in this shard.
    generation: u64,
    /// Answers given from this shard. Counted under the shard's lock, which a hit holds
    /// anyway: one counter for the whole cache was a cache line both cores wrote on every
    /// validate.
    hits: u64,
}

/// Taken before a Redis read whose answer may be cached.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket {
    generation: u64,
    epoch: u64,
}

/// Validate answers known locally. See the module docs for when they are trusted.
pub(super) struct NearCache {
    shards: Box<[Mutex<Shard>]>,
    /// Whether the invalidation subscription is up right now.
    up: AtomicBool,
    /// Bumped each time the subscription comes up.
    epoch: AtomicU64,
    per_shard: usize,
    max_age: Duration,
    /// Touches not yet in Redis that are not held in an entry, and which tags hold any.
    pub(super) touches: Touches,
}

impl NearCache {
    pub(super) fn new(capacity: usize, max_age: Duration) -> NearCache {
        NearCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            up: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            per_shard: (capacity / SHARDS).max(1),
            max_age,
            touches: Touches::default(),
        }
    }

    fn shard(&self, id: &SessionId) -> &Mutex<Shard> {
        // The first 4 bytes are the user tag; spread by the random part.
        &self.shards[usize::from(id.0[15]) % SHARDS]
    }

    /// Whether cached answers may be used at all.
    pub(super) fn trusted(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Runs `f` on the entry for `id` if there is one and it can be trusted. `f` gets the
    /// answer and the entry's [`Held`] touch.
    pub(super) fn with<R>(
        &self,
        id: &SessionId,
        f: impl FnOnce(&mut Cached, Held<'_>) -> R,
    ) -> Option<R> {
        if !self.trusted() {
            return None;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut guard = self.shard(id).lock();
        let shard = &mut *guard;
        let entry = shard.entries.get_mut(id)?;
        if entry.epoch != epoch || entry.filled.elapsed() >= self.max_age {
            if let Some(entry) = shard.entries.remove(id) {
                self.unload(*id, entry);
            }
            return None;
        }
        shard.hits += 1;
        let held = Held {
            touched: &mut entry.touched,
            touches: &self.touches,
        };
        Some(f(&mut entry.value, held))
    }

    /// An entry leaves the cache: a touch it held goes to the pending touches.
    fn unload(&self, id: SessionId, mut entry: Entry) {
        if let Some(t) = entry.take_touch() {
            self.touches.pending.lock().merge(id, t, false);
        }
    }

    /// The touch held in `id`'s entry, taken out for a write.
    fn take_held(&self, id: &SessionId) -> Option<Touch> {
        self.shard(id).lock().entries.get_mut(id)?.take_touch()
    }

    /// This node's touch of `id` not yet in Redis, to lay over what Redis says.
    pub(super) fn pending_touch(&self, id: &SessionId) -> Option<Touch> {
        let held = self
            .shard(id)
            .lock()
            .entries
            .get(id)
            .and_then(Entry::held_touch);
        let pending = self.touches.get(id);
        match (pending, held) {
            (Some(a), Some(b)) => Some(a.merged(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the touches of one tag, to send with a script on that tag.
    pub(super) fn take_touches(&self, tag: [u8; 4]) -> Vec<(SessionId, Touch)> {
        let mut touches = {
            let mut pending = self.touches.pending.lock();
            pending.urgent.remove(&tag);
            pending.by_tag.remove(&tag).unwrap_or_default()
        };
        let marked = self.touches.marks.take(tag);
        self.add_held(&mut touches, &marked);
        touches.into_vec()
    }

    /// Takes every pending touch, by tag.
    pub(super) fn take_all_touches(&self) -> Vec<([u8; 4], TagTouches)> {
        let by_tag = {
            let mut pending = self.touches.pending.lock();
            pending.urgent.clear();
            std::mem::take(&mut pending.by_tag)
        };
        self.with_held(by_tag, self.touches.marks.take_all())
    }

    /// Takes the tags holding an urgent touch, with all their touches.
    pub(super) fn take_urgent_touches(&self) -> Vec<([u8; 4], TagTouches)> {
        let (urgent, by_tag) = {
            let mut pending = self.touches.pending.lock();
            let urgent = std::mem::take(&mut pending.urgent);
            let by_tag = urgent
                .iter()
                .filter_map(|tag| Some((*tag, pending.by_tag.remove(tag)?)))
                .collect();
            (urgent, by_tag)
        };
        self.with_held(by_tag, self.touches.marks.take_tags(&urgent))
    }

    /// `by_tag` with the touches held in the entries of `marked` added, one group per tag.
    /// Built as a list straight away: a flush can hold a touch for most of a million tags,
    /// and putting each in `by_tag` first would cost a map insert apiece.
    fn with_held(
        &self,
        mut by_tag: FxHashMap<[u8; 4], TagTouches>,
        mut marked: Vec<SessionId>,
    ) -> Vec<([u8; 4], TagTouches)> {
        marked.sort_unstable_by_key(SessionId::tag);
        let mut all = Vec::with_capacity(marked.len() + by_tag.len());
        for ids in marked.chunk_by(|a, b| a.tag() == b.tag()) {
            let Some(tag) = ids.first().map(SessionId::tag) else {
                continue;
            };
            let mut touches = by_tag.remove(&tag).unwrap_or_default();
            self.add_held(&mut touches, ids);
            all.push((tag, touches));
        }
        all.extend(by_tag);
        all.retain(|(_, t)| !t.is_empty());
        all
    }

    /// Takes the touches held in the entries of `ids` (one tag's) into `touches`.
    fn add_held(&self, touches: &mut TagTouches, ids: &[SessionId]) {
        for id in ids {
            if let Some(t) = self.take_held(id) {
                merge_into(touches, *id, t);
            }
        }
    }

    /// Answers given from the cache so far, summed over the shards.
    pub(super) fn hits(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().hits).sum()
    }

    /// Call before reading what [`NearCache::fill`] may store; `None` when nothing may be.
    pub(super) fn ticket(&self, id: &SessionId) -> Option<Ticket> {
        if !self.trusted() {
            return None;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let generation = self.shard(id).lock().generation;
        Some(Ticket { generation, epoch })
    }

    /// Stores an answer read under `ticket`, unless anything may have made it stale.
    pub(super) fn fill(&self, ticket: Option<Ticket>, id: SessionId, value: Cached) {
        let Some(ticket) = ticket else { return };
        let mut shard = self.shard(&id).lock();
        let current = self.epoch.load(Ordering::Acquire);
        if !self.trusted() || ticket.epoch != current || ticket.generation != shard.generation {
            return;
        }
        let full = shard.entries.len() >= self.per_shard && !shard.entries.contains_key(&id);
        let victim = shard.entries.keys().next().copied().filter(|_| full);
        if let Some((victim, entry)) = victim.and_then(|v| shard.entries.remove_entry(&v)) {
            self.unload(victim, entry);
        }
        let replaced = shard.entries.insert(
            id,
            Entry {
                value,
                epoch: current,
                filled: Instant::now(),
                touched: None,
            },
        );
        if let Some(entry) = replaced {
            self.unload(id, entry);
        }
    }

    /// Forgets `id` (it changed or ended somewhere).
    pub(super) fn invalidate(&self, id: &SessionId) {
        let mut shard = self.shard(id).lock();
        shard.generation += 1;
        if let Some(entry) = shard.entries.remove(id) {
            self.unload(*id, entry);
        }
    }

    fn set_up(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.up.store(true, Ordering::Release);
    }

    fn set_down(&self) {
        self.up.store(false, Ordering::Release);
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.generation += 1;
            for (id, entry) in shard.entries.drain() {
                self.unload(id, entry);
            }
        }
    }
}

/// Keeps the cache subscribed to `channel` until the task is aborted: evicts every id
/// published there, pings the connection, and on any failure distrusts the cache and
/// subscribes again.
pub(super) async fn subscribe(source: PubSubSource, channel: String, cache: Arc<NearCache>) {
    loop {
        if let Ok(pubsub) = source.open().await {
            let (mut sink, mut stream) = pubsub.split();
            let subscribed = tokio::time::timeout(PING_TIMEOUT, sink.subscribe(&channel)).await;
            if matches!(subscribed, Ok(Ok(()))) {
                cache.set_up();
                let mut tick = tokio::time::interval(PING_EVERY);
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                if let Some(id) = std::str::from_utf8(msg.get_payload_bytes())
                                    .ok()
                                    .and_then(|s| s.parse::<SessionId>().ok())
                                {
                                    cache.invalidate(&id);
                                }
                            }
                            None => break,
                        },
                        _ = tick.tick() => {
                            let pong = tokio::time::timeout(
                                PING_TIMEOUT,
                                sink.ping::<redis::Value>(),
                            )
                            .await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                cache.set_down();
                tracing::warn!("redis invalidation subscription lost; validating against redis");
            }
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

/// A node's unflushed touches of one session: the first and the last since the last flush.
/// Each was accepted on a live session, so the chain from `first` to `last` has no gap
/// longer than the idle timeout.
///
/// It carries the session's idle timeout and max lifetime, which never change, so the
/// flush reads only `la` from Redis to judge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Touch {
    pub(super) first: Timestamp,
    pub(super) last: Timestamp,
    pub(super) idle_ms: u64,
    pub(super) expires_at: Timestamp,
}

impl Touch {
    /// A touch of `session` from `first` to `last`.
    pub(super) fn of(session: &Session, first: Timestamp, last: Timestamp) -> Touch {
        Touch {
            first,
            last,
            idle_ms: session.idle_timeout_ms,
            expires_at: session.expires_at,
        }
    }

    /// Two touch chains of one session as one.
    fn merged(self, other: Touch) -> Touch {
        Touch {
            first: self.first.min(other.first),
            last: self.last.max(other.last),
            ..self
        }
    }

    /// Lays the touch over `session` as read from Redis: if the first touch found it live,
    /// its idle timer slides to the last. The same rule as the scripts' `touch`.
    pub(super) fn apply(&self, session: &mut Session) -> bool {
        let slides = self.first < session.deadline().0
            && self.last > session.last_access_at
            && self.last < session.expires_at;
        if slides {
            session.last_access_at = self.last;
        }
        slides
    }
}

/// The touches of one user tag, most often a single session's (a uniform load touches one
/// session per tag), so the first is kept inline.
pub(super) type TagTouches = SmallVec<[(SessionId, Touch); 1]>;

/// How close to the deadline Redis holds for a session a touch must be flushed at the
/// next sweep tick rather than with the periodic flush: the longest flush window, plus
/// room for the one-second tick and the write. A touch further from that deadline reaches
/// Redis with the periodic flush, before the deadline passes there.
pub(super) const URGENT_WITHIN: Duration =
    sessiond_core::policy::MAX_TOUCH_FLUSH_WINDOW.saturating_add(Duration::from_secs(5));

/// How many lists [`Marks`] keeps.
const MARK_LISTS: usize = 4096;

/// The ids whose touch a cache entry holds, so a flush knows which entries to take touches
/// from: in [`MARK_LISTS`] lists by tag, each behind a lock of its own. Marking one is on
/// the validate path (the first touch of an entry since its touch was last taken), so it
/// is an append to a short list, not an insert into a map as large as the number of
/// sessions touched in a flush window, which missed the caches and grew on every window
/// (1.3% of sessiond's samples in Redis mode at 1M sessions). Taking one tag's ids, for a
/// script on that tag, scans its list: a few hundred ids when a million sessions are
/// touched per window.
struct Marks {
    lists: Box<[Mutex<Vec<SessionId>>]>,
}

impl Default for Marks {
    fn default() -> Marks {
        Marks {
            lists: (0..MARK_LISTS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Marks {
    fn index(tag: [u8; 4]) -> usize {
        // A tag is a hash of the user's name: its low bits spread the users evenly.
        u32::from_le_bytes(tag) as usize % MARK_LISTS
    }

    fn list(&self, tag: [u8; 4]) -> &Mutex<Vec<SessionId>> {
        &self.lists[Marks::index(tag)]
    }

    fn mark(&self, id: SessionId) {
        self.list(id.tag()).lock().push(id);
    }

    /// Takes the ids of `tag` out of its list.
    fn take(&self, tag: [u8; 4]) -> Vec<SessionId> {
        let mut taken = Vec::new();
        take_from(&mut self.list(tag).lock(), |t| t == tag, &mut taken);
        taken
    }

    /// Takes the ids of all of `tags`, going once through each list that holds any.
    fn take_tags(&self, tags: &FxHashSet<[u8; 4]>) -> Vec<SessionId> {
        let mut lists: Vec<usize> = tags.iter().map(|t| Marks::index(*t)).collect();
        lists.sort_unstable();
        lists.dedup();
        let mut taken = Vec::new();
        for i in lists {
            if let Some(list) = self.lists.get(i) {
                take_from(&mut list.lock(), |t| tags.contains(&t), &mut taken);
            }
        }
        taken
    }

    /// Takes every id.
    fn take_all(&self) -> Vec<SessionId> {
        let mut taken = Vec::new();
        for list in self.lists.iter() {
            taken.append(&mut list.lock());
        }
        taken
    }
}

/// Moves the ids of `list` whose tag `wanted` accepts to `taken`, keeping the others.
fn take_from(
    list: &mut Vec<SessionId>,
    wanted: impl Fn([u8; 4]) -> bool,
    taken: &mut Vec<SessionId>,
) {
    list.retain(|id| {
        let mine = wanted(id.tag());
        if mine {
            taken.push(*id);
        }
        !mine
    });
}

/// Adds the touch `t` of `id` to a tag's touches.
fn merge_into(touches: &mut TagTouches, id: SessionId, t: Touch) {
    match touches.iter_mut().find(|(i, _)| *i == id) {
        Some((_, slot)) => *slot = slot.merged(t),
        None => touches.push((id, t)),
    }
}

/// Touches (idle-timer slides) not yet written to Redis, by user tag
/// ([`SessionId::tag`]).
///
/// A touch through the near cache is held in its entry ([`Held`]): the first since the
/// last write marks the id here, later ones only slide the cached session. Other touches
/// (a validate that read Redis, an entry that left the cache, a write that failed) are kept
/// here whole. Both are on the validate path: marking is an append to a short list, and
/// keeping a touch whole allocates nothing unless a tag holds more than one touched
/// session.
///
/// Most touches wait for the periodic flush (the flush window). A touch made within
/// [`URGENT_WITHIN`] of the deadline Redis still holds is *urgent*: until it lands, another
/// node would see that deadline pass and end a session this node kept alive, so the sweep
/// tick writes it within a second.
#[derive(Default)]
pub(super) struct Touches {
    pending: Mutex<Pending>,
    marks: Marks,
}

#[derive(Default)]
struct Pending {
    by_tag: FxHashMap<[u8; 4], TagTouches>,
    /// Tags holding an urgent touch, kept here or held in an entry.
    urgent: FxHashSet<[u8; 4]>,
}

impl Pending {
    fn merge(&mut self, id: SessionId, t: Touch, urgent: bool) {
        let tag = id.tag();
        merge_into(self.by_tag.entry(tag).or_default(), id, t);
        if urgent {
            self.urgent.insert(tag);
        }
    }
}

/// Whether a touch at `at` of a session whose deadline was `due` is urgent.
fn urgent(at: Timestamp, due: Timestamp) -> bool {
    due < at.plus(URGENT_WITHIN)
}

impl Touches {
    /// Records a touch of `session` at `at`; `due` is the deadline the session had before
    /// it (what Redis may still hold, unless another node moved it further).
    pub(super) fn record(&self, session: &Session, at: Timestamp, due: Timestamp) {
        let t = Touch::of(session, at, at);
        self.pending.lock().merge(session.id, t, urgent(at, due));
    }

    /// The pending touch of `id` kept here (not one an entry holds).
    fn get(&self, id: &SessionId) -> Option<Touch> {
        let pending = self.pending.lock();
        pending
            .by_tag
            .get(&id.tag())?
            .iter()
            .find_map(|(i, t)| (i == id).then_some(*t))
    }

    /// Puts back touches whose write failed (merged with any recorded meanwhile). They are
    /// marked urgent, so the next sweep tick tries again.
    pub(super) fn restore(&self, touches: impl IntoIterator<Item = (SessionId, Touch)>) {
        let mut pending = self.pending.lock();
        for (id, t) in touches {
            pending.merge(id, t, true);
        }
    }
}

/// A cache entry's touch slot, handed to [`NearCache::with`].
pub(super) struct Held<'a> {
    touched: &'a mut Option<Timestamp>,
    touches: &'a Touches,
}

impl Held<'_> {
    /// Notes that `session` (this entry's) was touched at `at`; `due` is its deadline before
    /// the touch. Only the first touch since the last write marks the id (and only an
    /// urgent one takes the pending lock).
    pub(super) fn touched(self, session: &Session, at: Timestamp, due: Timestamp) {
        if self.touched.is_some() {
            return;
        }
        *self.touched = Some(at);
        self.touches.marks.mark(session.id);
        if urgent(at, due) {
            self.touches.pending.lock().urgent.insert(session.id.tag());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_id() -> SessionId {
        SessionId::for_user("alice").unwrap()
    }

    /// A session of alice's created at 0 under `policy`.
    fn session(policy: &sessiond_core::Policy) -> Session {
        let new = sessiond_core::session::NewSession {
            user: "alice".into(),
            ..Default::default()
        };
        let v = sessiond_core::Verifier([0; 32]);
        Session::create(new, session_id(), v, "default", policy, Timestamp(0))
    }

    fn tomb(id: SessionId) -> Cached {
        Cached::Ended(Box::new(Tombstone {
            id,
            verifier: sessiond_core::Verifier([0; 32]),
            user: "alice".into(),
            policy: "default".into(),
            reason: sessiond_core::EndReason::LoggedOut,
            created_at: Timestamp(0),
            last_access_at: Timestamp(0),
            ended_at: Timestamp(0),
            purge_at: Timestamp(1),
        }))
    }

    #[test]
    fn nothing_is_trusted_while_the_subscription_is_down() {
        let cache = NearCache::new(100, Duration::from_secs(60));
        let id = session_id();
        assert!(cache.ticket(&id).is_none());
        cache.fill(None, id, tomb(id));
        assert!(cache.with(&id, |_, _| ()).is_none());
        cache.set_up();
        let t = cache.ticket(&id);
        cache.fill(t, id, tomb(id));
        assert!(cache.with(&id, |_, _| ()).is_some());
        cache.set_down();
        cache.set_up();
        assert!(
            cache.with(&id, |_, _| ()).is_none(),
            "dropped with the subscription"
        );
    }

    #[test]
    fn a_fill_racing_an_invalidation_is_dropped() {
        let cache = NearCache::new(100, Duration::from_secs(60));
        cache.set_up();
        let id = session_id();
        let t = cache.ticket(&id);
        cache.invalidate(&id);
        cache.fill(t, id, tomb(id));
        assert!(cache.with(&id, |_, _| ()).is_none());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = NearCache::new(SHARDS, Duration::from_secs(60));
        cache.set_up();
        for _ in 0..1000 {
            let id = session_id();
            cache.fill(cache.ticket(&id), id, tomb(id));
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().entries.len()).sum();
        assert!(held <= SHARDS, "{held}");
    }

    #[test]
    fn a_chain_of_touches_slides_the_timer_only_if_its_first_found_the_session_live() {
        let mut s = session(&sessiond_core::Policy {
            idle_timeout: Duration::from_millis(10),
            max_lifetime: Duration::from_millis(100),
            ..Default::default()
        });
        let chain = |first, last| Touch {
            first: Timestamp(first),
            last: Timestamp(last),
            idle_ms: s.idle_timeout_ms,
            expires_at: s.expires_at,
        };
        // Touched at 8 and 16: more than one idle timeout after creation, yet unbroken.
        assert!(chain(8, 16).apply(&mut s.clone()));
        // The first touch came after the deadline: the session had already ended.
        assert!(!chain(10, 16).apply(&mut s.clone()));
        // Never past the maximum lifetime.
        assert!(!chain(8, 100).apply(&mut s.clone()));
        assert!(chain(8, 16).apply(&mut s));
        assert_eq!(s.last_access_at, Timestamp(16));
    }

    /// A trusted cache with `s` filled in.
    fn cache_with(s: &Session) -> NearCache {
        let cache = NearCache::new(100, Duration::from_secs(60));
        cache.set_up();
        cache.fill(cache.ticket(&s.id), s.id, Cached::Live(s.clone()));
        cache
    }

    /// Validates `id` through the cache at `at`, touching it, as the store does.
    fn touch_cached(cache: &NearCache, id: &SessionId, at: Timestamp) {
        cache
            .with(id, |cached, held| {
                let Cached::Live(s) = cached else {
                    panic!("not live")
                };
                let due = s.deadline().0;
                if s.touch(at) {
                    held.touched(s, at, due);
                }
            })
            .expect("cached");
    }

    #[test]
    fn touches_keep_the_latest_per_id_and_come_back_after_a_failure() {
        let s = session(&sessiond_core::Policy::default());
        let cache = NearCache::new(100, Duration::from_secs(60));
        let id = s.id;
        let t = |first, last| Touch::of(&s, Timestamp(first), Timestamp(last));
        let due = s.deadline().0;
        cache.touches.record(&s, Timestamp(5), due);
        cache.touches.record(&s, Timestamp(3), due);
        assert_eq!(cache.pending_touch(&id), Some(t(3, 5)));
        let taken = cache.take_touches(id.tag());
        assert_eq!(taken, vec![(id, t(3, 5))]);
        assert_eq!(cache.pending_touch(&id), None);
        cache.touches.record(&s, Timestamp(7), due);
        cache.touches.restore(taken);
        assert_eq!(cache.pending_touch(&id), Some(t(3, 7)));
        assert_eq!(
            cache.take_urgent_touches().len(),
            1,
            "a failed write is retried at the next tick"
        );
    }

    #[test]
    fn a_touch_held_in_an_entry_is_taken_with_its_latest_access_and_survives_eviction() {
        let s = session(&sessiond_core::Policy::default());
        let t = |first, last| Touch::of(&s, Timestamp(first), Timestamp(last));
        let cache = cache_with(&s);
        for at in [10, 20, 30] {
            touch_cached(&cache, &s.id, Timestamp(at));
        }
        assert_eq!(cache.pending_touch(&s.id), Some(t(10, 30)));
        assert_eq!(
            cache.take_all_touches(),
            vec![(s.id.tag(), [(s.id, t(10, 30))].into())]
        );
        assert!(cache.take_all_touches().is_empty(), "taken once");

        // Touched again, then the entry goes: the touch stays pending, and merges with one
        // recorded meanwhile on a Redis read.
        touch_cached(&cache, &s.id, Timestamp(40));
        cache.invalidate(&s.id);
        assert!(cache.with(&s.id, |_, _| ()).is_none());
        cache.touches.record(&s, Timestamp(50), s.deadline().0);
        assert_eq!(cache.take_touches(s.id.tag()), vec![(s.id, t(40, 50))]);

        // Losing the subscription empties the cache, not the touches.
        let cache = cache_with(&s);
        touch_cached(&cache, &s.id, Timestamp(60));
        cache.set_down();
        assert_eq!(cache.take_touches(s.id.tag()), vec![(s.id, t(60, 60))]);
    }

    #[test]
    fn a_flush_takes_held_and_pending_touches_of_every_tag_once() {
        let policy = sessiond_core::Policy::default();
        let held = session(&policy);
        let mut pending = session(&policy);
        pending.user = "bob".into();
        pending.id = SessionId::for_user("bob").unwrap();
        let t = |s: &Session, first, last| Touch::of(s, Timestamp(first), Timestamp(last));
        let cache = cache_with(&held);
        touch_cached(&cache, &held.id, Timestamp(10));
        cache.touches.record(&held, Timestamp(5), held.deadline().0);
        cache
            .touches
            .record(&pending, Timestamp(7), pending.deadline().0);
        let mut all = cache.take_all_touches();
        all.sort_by_key(|(tag, _)| *tag);
        let mut want = vec![
            (held.id.tag(), [(held.id, t(&held, 5, 10))].into()),
            (pending.id.tag(), [(pending.id, t(&pending, 7, 7))].into()),
        ];
        want.sort_by_key(|(tag, _)| *tag);
        assert_eq!(
            all, want,
            "one group per tag, a held and a pending touch merged"
        );
        assert!(cache.take_all_touches().is_empty(), "taken once");
    }

    #[test]
    fn marks_are_taken_by_tag_even_when_tags_share_a_list() {
        let id = |tag: [u8; 4], n: u8| {
            let mut bytes = [n; 16];
            bytes[..4].copy_from_slice(&tag);
            SessionId(bytes)
        };
        // 0 and 4096 (little-endian) land in the same list; 1 in the next.
        let (a, b, c) = ([0, 0, 0, 0], [0, 16, 0, 0], [1, 0, 0, 0]);
        assert_eq!(Marks::index(a), Marks::index(b));
        let marks = Marks::default();
        for m in [id(a, 1), id(b, 2), id(a, 3), id(c, 4)] {
            marks.mark(m);
        }
        assert_eq!(marks.take(a), vec![id(a, 1), id(a, 3)]);
        assert!(marks.take(a).is_empty(), "taken once");
        let wanted: FxHashSet<[u8; 4]> = [c].into_iter().collect();
        assert_eq!(marks.take_tags(&wanted), vec![id(c, 4)]);
        marks.mark(id(c, 5));
        let mut rest = marks.take_all();
        rest.sort();
        assert_eq!(
            rest,
            vec![id(b, 2), id(c, 5)],
            "the others stay until taken"
        );
        assert!(marks.take_all().is_empty());
    }

    #[test]
    fn only_touches_near_the_deadline_redis_holds_are_urgent() {
        let s = session(&sessiond_core::Policy::default());
        let other = Session {
            id: session_id(),
            ..s.clone()
        };
        let due = s.deadline().0;
        let cache = cache_with(&other);
        // Half an hour of idle timeout left: the periodic flush lands well before.
        cache.touches.record(&s, Timestamp(1_000), due);
        assert!(cache.take_urgent_touches().is_empty());
        // Within a flush window (and the tick) of the deadline: it goes at the next tick,
        // and takes the tag's other touches along.
        let late = due.minus(URGENT_WITHIN).plus(Duration::from_millis(1));
        touch_cached(&cache, &other.id, late);
        let urgent = cache.take_urgent_touches();
        assert_eq!(urgent.len(), 1);
        assert_eq!(urgent[0].1.len(), 2, "the whole tag is written");
        assert!(cache.take_all_touches().is_empty());
        // A tag taken by a script is no longer urgent.
        cache.touches.record(&other, late, due);
        cache.take_touches(other.id.tag());
        assert!(cache.take_urgent_touches().is_empty());
    }
}
