//! [`CachedValidator`] against the fake server: hits, invalidation by events, resets,
//! disconnects, `max_age` and touches. Ages run on a [`ManualClock`]; the stream runs on
//! real time, and the tests wait for its effects with [`eventually`].

use sha2::{Digest, Sha256};

use super::*;
use crate::ErrorCode;
use crate::fake::{FakeServer, eventually, sse};

/// A clock that moves only when told.
struct ManualClock {
    start: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        })
    }

    fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap()
    }
}

const TOKEN: &str = "k1.secret-token-body.mac";
const OTHER: &str = "k1.other-token-body.mac";
const ENDED: &str = r#"{"error":{"code":"session_ended","message":"the session ended",
    "reason":"logged_out","ended_at":"2026-11-21T10:00:00Z"}}"#;

struct Harness {
    server: FakeServer,
    clock: Arc<ManualClock>,
    cache: CachedValidator,
}

/// A validator on a fresh fake, with its stream connected.
async fn harness(config: CacheConfig) -> Harness {
    let server = FakeServer::start().await;
    let clock = ManualClock::new();
    let client = Client::new(&server.base, "agent-key").unwrap();
    let cache = CachedValidator::start_with_clock(client, config, clock.clone());
    let h = Harness {
        server,
        clock,
        cache,
    };
    h.wait("the stream to connect", |s| s.stream_connected)
        .await;
    h
}

impl Harness {
    async fn wait(&self, what: &str, cond: impl Fn(&CacheStats) -> bool) {
        eventually(what, || cond(&self.cache.stats())).await;
    }

    /// How many validations reached the server.
    fn server_calls(&self) -> usize {
        self.server.validations().len()
    }

    /// Sends `event` and waits until the cache has applied it.
    async fn event(&self, id: &str, kind: &str, session: &str) {
        let before = self.cache.stats();
        self.server.send(&sse(id, kind, session));
        self.wait(&format!("the {kind} event"), |s| {
            s.invalidations > before.invalidations || s.flushes > before.flushes
        })
        .await;
    }
}

#[tokio::test]
async fn hits_stay_local_and_errors_are_not_cached() {
    let h = harness(CacheConfig::default()).await;
    h.server.valid(TOKEN, "s1");
    assert_eq!(h.cache.validate(TOKEN, false).await.unwrap().id, "s1");
    assert_eq!(h.cache.validate(TOKEN, false).await.unwrap().id, "s1");
    assert_eq!(h.server_calls(), 1);

    let err = h.cache.validate(OTHER, false).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SessionNotFound));
    let err = h.cache.validate(OTHER, false).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SessionNotFound));
    assert_eq!(h.server_calls(), 3, "each refusal comes from the server");

    let stats = h.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 3, 1));
}

#[tokio::test]
async fn an_ended_event_drops_the_entry_at_once() {
    let h = harness(CacheConfig::default()).await;
    h.server.valid(TOKEN, "s1");
    h.server.valid(OTHER, "s2");
    h.cache.validate(TOKEN, false).await.unwrap();
    h.cache.validate(OTHER, false).await.unwrap();

    h.server.answer(TOKEN, "410 Gone", ENDED);
    h.event("e1", "ended", "s1").await;
    assert_eq!(h.cache.stats().entries, 1, "only s1's entry went");
    for _ in 0..2 {
        let err = h.cache.validate(TOKEN, false).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::SessionEnded));
    }
    assert_eq!(h.server_calls(), 4);
    // `updated` drops too, `created` does not.
    h.event("e2", "updated", "s2").await;
    assert_eq!(h.cache.stats().entries, 0);
    h.cache.validate(OTHER, false).await.unwrap();
    h.server.send(&sse("e3", "created", "s2"));
    h.event("e4", "updated", "s9").await;
    h.cache.validate(OTHER, false).await.unwrap();
    assert_eq!(h.server_calls(), 5, "created left the entry alone");
    assert_eq!(h.cache.stats().invalidations, 3);
}

#[tokio::test]
async fn a_reset_drops_everything() {
    let h = harness(CacheConfig::default()).await;
    h.server.valid(TOKEN, "s1");
    h.server.valid(OTHER, "s2");
    h.cache.validate(TOKEN, false).await.unwrap();
    h.cache.validate(OTHER, false).await.unwrap();
    assert_eq!(h.cache.stats().entries, 2);
    h.event("e1", "reset", "").await;
    assert_eq!(h.cache.stats().entries, 0);
    h.cache.validate(TOKEN, false).await.unwrap();
    assert_eq!(h.server_calls(), 3);
}

#[tokio::test]
async fn a_disconnect_drops_old_entries_and_the_stream_resumes() {
    let h = harness(CacheConfig::default()).await;
    assert_eq!(h.cache.stats().flushes, 1, "a fresh start flushes");
    h.event("e7", "updated", "s9").await;
    h.server.valid(TOKEN, "s1");
    h.cache.validate(TOKEN, false).await.unwrap();

    h.server.close_streams();
    h.wait("the reconnection", |s| s.connections == 2).await;
    let stats = h.cache.stats();
    assert_eq!((stats.flushes, stats.entries), (2, 0), "{stats:?}");
    h.cache.validate(TOKEN, false).await.unwrap();
    assert_eq!(h.server_calls(), 2, "the old entry was not used");

    let requests = h.server.event_requests();
    assert!(!requests[0].contains("last-event-id"), "{}", requests[0]);
    assert!(
        requests[1].contains("last-event-id: e7\r\n"),
        "{}",
        requests[1]
    );
    // A resumed stream keeps what was fetched while it was down.
    assert_eq!(h.cache.stats().entries, 1);
}

#[tokio::test]
async fn while_down_new_entries_are_cached_for_max_age_only() {
    let h = harness(CacheConfig::default()).await;
    h.server.valid(TOKEN, "s1");
    // No stream from now on: every reconnection is refused.
    h.server.script(|s| {
        s.events_head = Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .into(),
        )
    });
    h.server.close_streams();
    h.wait("the stream to go down", |s| !s.stream_connected)
        .await;
    h.cache.validate(TOKEN, false).await.unwrap();
    h.clock.advance(DEFAULT_MAX_AGE - Duration::from_millis(1));
    h.cache.validate(TOKEN, false).await.unwrap();
    assert_eq!(h.server_calls(), 1);
    h.clock.advance(Duration::from_millis(1));
    h.cache.validate(TOKEN, false).await.unwrap();
    assert_eq!(h.server_calls(), 2);
}

#[tokio::test]
async fn a_silent_stream_counts_as_down_and_keep_alives_keep_it_up() {
    let config = CacheConfig {
        idle_timeout: Duration::from_millis(500),
        ..CacheConfig::default()
    };
    let h = harness(config).await;
    for _ in 0..6 {
        h.server.send(": keep-alive\n");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.cache.stats().connections, 1, "keep-alives hold it up");
    h.server.valid(TOKEN, "s1");
    h.cache.validate(TOKEN, false).await.unwrap();
    h.wait("the silent stream to be dropped", |s| s.connections == 2)
        .await;
    assert_eq!(h.cache.stats().entries, 0);
}

#[tokio::test]
async fn a_fill_racing_an_invalidation_is_not_kept() {
    let h = harness(CacheConfig::default()).await;
    h.server.valid(TOKEN, "s1");
    let hold = Arc::new(tokio::sync::Notify::new());
    h.server.script(|s| s.hold_validations = Some(hold.clone()));
    let pending = tokio::spawn({
        let cache = h.cache.clone();
        async move { cache.validate(TOKEN, false).await }
    });
    eventually("the server to get the call", || h.server_calls() == 1).await;
    h.event("e1", "updated", "s1").await;
    hold.notify_one();
    assert_eq!(pending.await.unwrap().unwrap().id, "s1");
    assert_eq!(h.cache.stats().entries, 0, "the answer predates the event");

    h.server.script(|s| s.hold_validations = None);
    h.cache.validate(TOKEN, false).await.unwrap();
    assert_eq!(h.cache.stats().entries, 1, "a later answer fills");
}

#[tokio::test]
async fn a_live_answer_after_the_ended_event_is_never_kept() {
    // A node whose near cache has not yet dropped the session answers "live" after its
    // event stream said the session ended (the two reach it by different paths).
    let h = harness(CacheConfig::default()).await;
    h.server.valid(TOKEN, "s1");
    h.cache.validate(TOKEN, false).await.unwrap();
    assert_eq!(h.cache.stats().entries, 1);
    h.event("e1", "ended", "s1").await;
    for calls in 2..5 {
        let stale = h.cache.validate(TOKEN, false).await.unwrap();
        assert_eq!(stale.id, "s1", "the caller gets the server's answer");
        assert_eq!(h.cache.stats().entries, 0, "but it is not kept");
        assert_eq!(h.server_calls(), calls, "so every call asks the server");
    }
}

#[tokio::test]
async fn entries_expire_at_max_age_even_with_the_stream_up() {
    let max_age = Duration::from_secs(2);
    let h = harness(CacheConfig::with_max_age(max_age)).await;
    h.server.valid(TOKEN, "s1");
    h.cache.validate(TOKEN, false).await.unwrap();
    h.clock.advance(max_age - Duration::from_millis(1));
    h.cache.validate(TOKEN, false).await.unwrap();
    assert_eq!(h.server_calls(), 1);
    h.clock.advance(Duration::from_millis(1));
    h.cache.validate(TOKEN, false).await.unwrap();
    assert_eq!(h.server_calls(), 2);
    assert_eq!(h.cache.stats().misses, 2);
}

#[tokio::test]
async fn touches_reach_the_server_every_touch_every() {
    let config = CacheConfig {
        touch_every: Duration::from_secs(2),
        ..CacheConfig::with_max_age(Duration::from_secs(10))
    };
    let h = harness(config).await;
    h.server.valid(TOKEN, "s1");
    h.cache.validate(TOKEN, true).await.unwrap();
    h.clock.advance(Duration::from_secs(1));
    h.cache.validate(TOKEN, true).await.unwrap();
    h.clock.advance(Duration::from_secs(1));
    h.cache.validate(TOKEN, false).await.unwrap();
    assert_eq!(h.server_calls(), 1);
    h.cache.validate(TOKEN, true).await.unwrap();
    // Fetched without touch: the first touch goes through.
    h.server.valid(OTHER, "s2");
    h.cache.validate(OTHER, false).await.unwrap();
    h.cache.validate(OTHER, true).await.unwrap();
    h.cache.validate(OTHER, true).await.unwrap();
    let calls = h.server.validations();
    let touches: Vec<bool> = calls.iter().map(|(_, touch)| *touch).collect();
    assert_eq!(touches, [true, true, false, true]);
    let stats = h.cache.stats();
    assert_eq!((stats.hits, stats.touches), (3, 2), "{stats:?}");
}

#[tokio::test]
async fn a_failed_touch_drops_the_entry() {
    let config = CacheConfig {
        touch_every: Duration::from_secs(1),
        ..CacheConfig::default()
    };
    let h = harness(config).await;
    h.server.valid(TOKEN, "s1");
    h.cache.validate(TOKEN, true).await.unwrap();
    h.server.answer(TOKEN, "410 Gone", ENDED);
    h.clock.advance(Duration::from_secs(1));
    let err = h.cache.validate(TOKEN, true).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SessionEnded));
    assert!(h.cache.validate(TOKEN, false).await.is_err());
    assert_eq!(h.server_calls(), 3);
}

#[tokio::test]
async fn only_hashes_of_tokens_are_kept() {
    let h = harness(CacheConfig::default()).await;
    h.server.valid(TOKEN, "s1");
    h.cache.validate(TOKEN, false).await.unwrap();
    let expected: [u8; 32] = Sha256::digest(TOKEN.as_bytes()).into();
    assert_eq!(h.cache.keys(), vec![expected]);
    let debug = format!("{:?}", h.cache);
    assert!(!debug.contains("secret-token"), "{debug}");
    assert!(!format!("{:?}", h.cache.shared.lock()).contains("secret-token"));
}

#[tokio::test]
async fn a_zero_capacity_caches_nothing() {
    let config = CacheConfig {
        capacity: 0,
        ..CacheConfig::default()
    };
    let h = harness(config).await;
    h.server.valid(TOKEN, "s1");
    h.cache.validate(TOKEN, false).await.unwrap();
    h.cache.validate(TOKEN, false).await.unwrap();
    assert_eq!(h.server_calls(), 2);
}

#[tokio::test]
async fn dropping_the_last_clone_stops_the_follower() {
    let h = harness(CacheConfig::default()).await;
    eventually("the stream to open", || h.server.open_streams() == 1).await;
    let clone = h.cache.clone();
    drop(h.cache);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.server.open_streams(), 1, "a clone keeps it running");
    drop(clone);
    eventually("the stream to close", || h.server.open_streams() == 0).await;
}
