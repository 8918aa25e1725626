//! The Redis backend against the shared conformance suite, on a real `redis-server` (single
//! and a three-master cluster) started here, plus what only a shared store must do: one
//! node sees another's logout within a bound, an outage fails closed then heals, and the
//! change-event stream crosses nodes, survives restarts and resets consumers it lost.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiond_core::policy::{OnLimit, UserLimit};
use sessiond_core::{EndReason, SessionId, Timestamp};
use sessiond_store::conformance::{self, OPTIONS};
use sessiond_store::testkit::{
    RedisCluster, RedisSentinel, RedisServer, TestPki, info_stats, redis_available,
};
use sessiond_store::{
    ChangeEvent, ChangeKind, Checked, Created, Ended, FeedItem, Lookup, RedisConfig,
    RedisMasterAuth, RedisStore, RedisTarget, RedisTls, SessionStore, StoreError,
};

const T0: Timestamp = Timestamp(1_800_000_000_000);

fn fresh_prefix() -> String {
    format!("t{}:", &SessionId::random().unwrap().to_string()[..12])
}

async fn open(target: RedisTarget, prefix: &str) -> RedisStore {
    open_tls(target, RedisTls::default(), prefix).await
}

/// [`open`] with TLS settings.
async fn open_tls(target: RedisTarget, tls: RedisTls, prefix: &str) -> RedisStore {
    let mut config = RedisConfig::new(target);
    config.tls = tls;
    config.key_prefix = prefix.to_owned();
    RedisStore::connect(config, OPTIONS).await.unwrap()
}

/// A store on `server` under `prefix`.
async fn open_on(server: &RedisServer, prefix: &str) -> RedisStore {
    open(RedisTarget::Url(server.url()), prefix).await
}

/// A redis-server of the test's own in a fresh directory (kept while the test runs), or
/// `None` when there is none to start (see [`redis_available`]): the test then skips.
async fn redis_server() -> Option<(tempfile::TempDir, RedisServer)> {
    if !redis_available() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path()).await;
    Some((dir, server))
}

/// Waits (bounded) until the store's invalidation subscription is up.
async fn until_subscribed(store: &RedisStore) {
    for _ in 0..250 {
        if store.near_cache_trusted() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the invalidation subscription did not come up");
}

/// The conformance suite on `target` with `tls`, then the revocation delay between two
/// stores there, printed under `label`.
async fn conforms(target: RedisTarget, tls: RedisTls, label: &str, user: &str) {
    conformance::run(|| {
        let (target, tls) = (target.clone(), tls.clone());
        async move { Arc::new(open_tls(target, tls, &fresh_prefix()).await) as Arc<dyn SessionStore> }
    })
    .await;
    let prefix = fresh_prefix();
    let a = open_tls(target.clone(), tls.clone(), &prefix).await;
    let b = open_tls(target, tls, &prefix).await;
    eprintln!("{label}: {}", revocation_delay(&a, &b, user).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let Some((_dir, server)) = redis_server().await else {
        return;
    };
    let url = server.url();
    conformance::run(|| {
        let url = url.clone();
        async move {
            Arc::new(open(RedisTarget::Url(url), &fresh_prefix()).await) as Arc<dyn SessionStore>
        }
    })
    .await;
}

/// Each restart case gets its own server in its directory; reopening SIGKILLs the server
/// and starts it again from its AOF, then connects a new store on the same prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms_across_restarts() {
    if !redis_available() {
        return;
    }
    let servers: Arc<tokio::sync::Mutex<HashMap<PathBuf, RedisServer>>> = Arc::default();
    conformance::run_durable(|dir| {
        let dir = dir.to_path_buf();
        let servers = servers.clone();
        async move {
            let mut servers = servers.lock().await;
            match servers.get_mut(&dir) {
                Some(server) => server.restart().await,
                None => {
                    let server = RedisServer::start(&dir.join("redis")).await;
                    servers.insert(dir.clone(), server);
                }
            }
            let url = servers[&dir].url();
            Arc::new(open(RedisTarget::Url(url), "durable:").await) as Arc<dyn SessionStore>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_conforms() {
    if !redis_available() {
        return;
    }
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    let target = RedisTarget::Cluster(cluster.urls());
    conforms(target, RedisTls::default(), "cluster", "yuri").await;
}

/// A Cluster over TLS: the store learns the nodes' TLS ports from the Cluster itself and
/// reaches every shard with the CA it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_conforms_over_tls() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path());
    let Some(cluster) = RedisCluster::start_tls(&pki).await else {
        return;
    };
    let urls = cluster.urls();
    assert!(urls.iter().all(|u| u.starts_with("rediss://")));
    let target = RedisTarget::Cluster(urls);
    conforms(target.clone(), pki.tls(false), "cluster over tls", "yvette").await;

    // Over TLS the `{global}` steps of concurrent creates share batches. A step that
    // fails is logged, not returned, so only the global counts and listing can show that
    // one was lost: they must be whole. (This checks what batching must keep, not that it
    // batches; `tls_batches_answer_each_caller_and_fail_closed_together` counts reads.)
    let store = Arc::new(open_tls(target, pki.tls(false), &fresh_prefix()).await);
    let creates: Vec<_> = (0..64)
        .map(|i| {
            let (store, s) = (store.clone(), conformance::session(&format!("g{i}"), T0));
            tokio::spawn(async move { store.create(s, UserLimit::UNLIMITED, T0).await })
        })
        .collect();
    for c in creates {
        assert!(matches!(c.await.unwrap(), Ok(Created::Created { .. })));
    }
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.live, stats.users), (64, 64), "{stats:?}");
    let listed = store
        .list(None, None, 100, T0)
        .await
        .unwrap()
        .sessions
        .len();
    assert_eq!(listed, 64, "the global listing holds every session");
}

/// Through Sentinel: the store asks the sentinel for the master, then behaves the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms_through_sentinel() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let master = RedisServer::start(&dir.path().join("master")).await;
    let sentinel = RedisSentinel::start(&dir.path().join("sentinel"), master.port).await;
    let target = RedisTarget::Sentinel {
        master: "mymaster".into(),
        sentinels: vec![sentinel.url()],
    };
    conforms(target, RedisTls::default(), "sentinel", "zoe").await;
}

/// Through Sentinel to a master that asks for a password: the store logs in with the
/// master's credentials, which the sentinels' URLs do not carry; without them, every call
/// fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel_the_master_gets_its_own_password() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let master = RedisServer::start_with_password(&dir.path().join("master"), "m-secret").await;
    let sentinel =
        RedisSentinel::start_authed(&dir.path().join("sentinel"), &master, "m-secret").await;
    let target = RedisTarget::Sentinel {
        master: "mymaster".into(),
        sentinels: vec![sentinel.url()],
    };
    let password = RedisMasterAuth {
        username: None,
        password: Some("m-secret".into()),
    };
    let anonymous = {
        let mut config = RedisConfig::new(target.clone());
        config.key_prefix = fresh_prefix();
        RedisStore::connect(config, OPTIONS).await.unwrap()
    };
    let made = anonymous
        .create(conformance::session("vic", T0), UserLimit::UNLIMITED, T0)
        .await;
    assert!(
        matches!(made, Err(StoreError::Unavailable(_))),
        "no password: {made:?}"
    );
    assert!(anonymous.ping().await.is_err(), "not ready without it");
    conformance::run(|| {
        let (target, password) = (target.clone(), password.clone());
        async move {
            let mut config = RedisConfig::new(target);
            config.key_prefix = fresh_prefix();
            config.master_auth = password;
            Arc::new(RedisStore::connect(config, OPTIONS).await.unwrap()) as Arc<dyn SessionStore>
        }
    })
    .await;

    // The same over TLS, where the sentinel client is built another way.
    let pki = TestPki::new(&dir.path().join("pki"));
    let master =
        RedisServer::start_tls_with_password(&dir.path().join("tls-master"), &pki, "t-secret")
            .await;
    let sentinel = RedisSentinel::start_tls(&dir.path().join("tls-sentinel"), &master, &pki).await;
    let mut config = RedisConfig::new(RedisTarget::Sentinel {
        master: "mymaster".into(),
        sentinels: vec![sentinel.url()],
    });
    config.tls = pki.tls(false);
    config.key_prefix = fresh_prefix();
    let without = RedisStore::connect(config.clone(), OPTIONS).await.unwrap();
    assert!(
        without.ping().await.is_err(),
        "over TLS, no password: not ready"
    );
    config.master_auth = RedisMasterAuth {
        username: None,
        password: Some("t-secret".into()),
    };
    let with = RedisStore::connect(config, OPTIONS).await.unwrap();
    creates_and_validates(&with, "walt").await;
}

/// A session of `user` created through `store` is created, and validates live.
async fn creates_and_validates(store: &RedisStore, user: &str) {
    let s = conformance::session(user, T0);
    let made = store.create(s.clone(), UserLimit::UNLIMITED, T0).await;
    assert!(matches!(made, Ok(Created::Created { .. })), "{made:?}");
    assert!(matches!(
        store.validate(s.id, &s.verifier, true, T0).await.unwrap(),
        Lookup::Live(_)
    ));
}

/// Over TLS (`rediss://`, a private CA given as the store's trust), the store behaves the
/// same, the invalidation subscription included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms_over_tls() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let server = RedisServer::start_tls(&dir.path().join("redis"), &pki, false).await;
    let target = RedisTarget::Url(server.url());
    assert!(server.url().starts_with("rediss://"));
    conforms(target, pki.tls(false), "tls", "ursula").await;
}

/// TLS fails closed: a store that does not trust Redis's CA, one that speaks plain Redis
/// to the TLS port, and one without the client certificate a Redis asks for, each get
/// `Unavailable` and change nothing; with the certificate, the same Redis serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_an_unknown_ca_plain_redis_and_a_missing_client_certificate() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let stranger = TestPki::new(&dir.path().join("other-pki"));
    let server = RedisServer::start_tls(&dir.path().join("redis"), &pki, true).await;
    let target = RedisTarget::Url(server.url());
    let prefix = fresh_prefix();
    let plain = RedisTarget::Url(server.url().replacen("rediss://", "redis://", 1));
    let refused = [
        (
            "another CA",
            open_tls(target.clone(), stranger.tls(true), &prefix).await,
        ),
        (
            "plain redis://",
            open_tls(plain, RedisTls::default(), &prefix).await,
        ),
        (
            "no client certificate",
            open_tls(target.clone(), pki.tls(false), &prefix).await,
        ),
    ];
    for (what, store) in &refused {
        let made = store.create(conformance::session("tess", T0), UserLimit::UNLIMITED, T0);
        assert!(
            matches!(made.await, Err(StoreError::Unavailable(_))),
            "{what}: a create must fail closed"
        );
        assert!(!store.near_cache_trusted(), "{what}: no subscription");
    }
    let store = open_tls(target, pki.tls(true), &prefix).await;
    until_subscribed(&store).await;
    assert_eq!(
        store
            .list(Some("tess"), None, 10, T0)
            .await
            .unwrap()
            .sessions
            .len(),
        0,
        "the refused creates left nothing"
    );
    let s = conformance::session("tess", T0);
    let Created::Created { .. } = store
        .create(s.clone(), UserLimit::UNLIMITED, T0)
        .await
        .unwrap()
    else {
        panic!("not created");
    };
    assert!(matches!(
        store.validate(s.id, &s.verifier, true, T0).await.unwrap(),
        Lookup::Live(_)
    ));
}

/// Through Sentinel over TLS: the sentinels and the master they name are both reached by
/// TLS, with the CA the store was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms_through_sentinel_over_tls() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let master = RedisServer::start_tls(&dir.path().join("master"), &pki, false).await;
    let sentinel = RedisSentinel::start_tls(&dir.path().join("sentinel"), &master, &pki).await;
    assert!(sentinel.url().starts_with("rediss://"));
    let target = RedisTarget::Sentinel {
        master: "mymaster".into(),
        sentinels: vec![sentinel.url()],
    };
    conforms(target, pki.tls(false), "sentinel over tls", "zelda").await;
}

/// Over TLS the store sends concurrent scripts in batches: each caller still gets its own
/// answer (the limit holds; a `NOSCRIPT` in a batch is each caller's to retry), an outage
/// fails every caller of a batch closed, and the batches resume when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_batches_answer_each_caller_and_fail_closed_together() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let mut server = RedisServer::start_tls(&dir.path().join("redis"), &pki, false).await;
    let target = RedisTarget::Url(server.url());
    let store = Arc::new(open_tls(target, pki.tls(false), &fresh_prefix()).await);
    let concurrently = |user: &'static str, limit: UserLimit| {
        let store = store.clone();
        async move {
            let calls: Vec<_> = (0..64)
                .map(|_| {
                    let (store, s) = (store.clone(), conformance::session(user, T0));
                    tokio::spawn(async move { store.create(s, limit, T0).await })
                })
                .collect();
            let mut results = Vec::new();
            for c in calls {
                results.push(c.await.unwrap());
            }
            results
        }
    };
    let limit = UserLimit {
        max: 3,
        on_limit: OnLimit::Deny,
    };
    let made = concurrently("wes", limit).await;
    let created = made
        .iter()
        .filter(|r| matches!(r, Ok(Created::Created { .. })))
        .count();
    assert_eq!(created, 3, "the limit holds across a batch: {made:?}");
    assert!(made.iter().all(Result::is_ok), "{made:?}");

    // They do go in batches: Redis reads a TLS record per client per turn, and 64 scripts
    // sent alone took 11-65 reads in five tries (2026-11-24), in batches 5-7. So a run
    // that sends them alone fails here most of the time. The scripts are loaded by now, so
    // no caller retries on its own.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port)).unwrap();
    let mut raw = plain.get_multiplexed_async_connection().await.unwrap();
    let reads = ["total_reads_processed"];
    let before = info_stats(&mut raw, &reads).await[0];
    let made = concurrently("vera", UserLimit::UNLIMITED).await;
    let reads = info_stats(&mut raw, &reads).await[0] - before;
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    assert!(
        reads <= 12,
        "64 concurrent creates took {reads} reads: not batched"
    );

    // Redis forgets the scripts: every call of the next batch gets NOSCRIPT, and each
    // caller loads the script and runs again.
    run::<()>(&mut raw, redis::cmd("SCRIPT").arg("FLUSH")).await;
    let made = concurrently("xavier", UserLimit::UNLIMITED).await;
    assert!(
        made.iter()
            .all(|r| matches!(r, Ok(Created::Created { .. }))),
        "{made:?}"
    );

    server.kill();
    let made = concurrently("yann", UserLimit::UNLIMITED).await;
    assert!(
        made.iter()
            .all(|r| matches!(r, Err(StoreError::Unavailable(_)))),
        "every caller fails closed: {made:?}"
    );
    server.restart().await;
    let back = Instant::now();
    loop {
        let s = conformance::session("zack", T0);
        if store.create(s, UserLimit::UNLIMITED, T0).await.is_ok() {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(15), "no recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let made = concurrently("zack", UserLimit::UNLIMITED).await;
    assert!(made.iter().all(Result::is_ok), "{made:?}");
    assert_eq!(
        store
            .list(Some("yann"), None, 100, T0)
            .await
            .unwrap()
            .sessions
            .len(),
        0,
        "the failed batch made nothing"
    );
}

/// The harness itself: a port taken between choosing it and starting Redis (by another
/// test's server, say) makes the server start on another; a TLS server's two ports are
/// chosen again together the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_redis_whose_port_is_taken_starts_on_another() {
    if !redis_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let server = RedisServer::start_on(&dir.path().join("redis"), port, false).await;
    assert_ne!(server.port, port);
    let store = open_on(&server, &fresh_prefix()).await;
    store.ping().await.unwrap();
}

/// A limit lowered below what a user holds: displace_oldest brings the user back to
/// `max - 1` before adding, as `UserLimit::to_displace` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn displacing_after_the_limit_was_lowered_keeps_the_newest() {
    let Some((_dir, server)) = redis_server().await else {
        return;
    };
    let store = open_on(&server, &fresh_prefix()).await;
    let mut ids = Vec::new();
    for i in 0..5u32 {
        let at = T0.plus(Duration::from_secs(i.into()));
        let s = conformance::session("uma", at);
        ids.push(s.id);
        store.create(s, UserLimit::UNLIMITED, at).await.unwrap();
    }
    let limit = UserLimit {
        max: 2,
        on_limit: OnLimit::DisplaceOldest,
    };
    let at = T0.plus(Duration::from_secs(10));
    let Created::Created { displaced, .. } = store
        .create(conformance::session("uma", at), limit, at)
        .await
        .unwrap()
    else {
        panic!("displace must not deny")
    };
    assert_eq!(
        displaced,
        ids[..4].to_vec(),
        "the four oldest, oldest first"
    );
    let page = store.list(Some("uma"), None, 10, at).await.unwrap();
    assert_eq!(page.sessions.len(), 2);
}

/// The near cache keeps one copy of a user agent, as the embedded store does: sessions
/// created on a node, and sessions another node read from Redis, share it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_sessions_share_their_user_agent() {
    let Some((_dir, server)) = redis_server().await else {
        return;
    };
    let prefix = fresh_prefix();
    let (a, b) = (
        open_on(&server, &prefix).await,
        open_on(&server, &prefix).await,
    );
    let mut made = Vec::new();
    for user in ["ulla", "ugo"] {
        // Each record comes with a user agent of its own.
        let s = conformance::session(user, T0);
        let Created::Created { session, .. } = a.create(s, UserLimit::UNLIMITED, T0).await.unwrap()
        else {
            panic!("create")
        };
        made.push(session);
    }
    let ua = |s: &sessiond_core::Session| s.user_agent.clone().unwrap();
    assert!(Arc::ptr_eq(&ua(&made[0]), &ua(&made[1])), "created on A");
    let mut read = Vec::new();
    for s in &made {
        let Lookup::Live(s) = b.validate(s.id, &s.verifier, false, T0).await.unwrap() else {
            panic!("live on B")
        };
        read.push(s);
    }
    assert!(Arc::ptr_eq(&ua(&read[0]), &ua(&read[1])), "read by B");
    assert_eq!(&*ua(&read[0]), "conformance/1");
}

/// Two nodes on one Redis: a session made on A validates on B, a logout on A is refused by
/// B within the bound, a limit race across both never exceeds the limit, and both count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_truth() {
    let Some((_dir, server)) = redis_server().await else {
        return;
    };
    let prefix = fresh_prefix();
    let a = Arc::new(open_on(&server, &prefix).await);
    let b = Arc::new(open_on(&server, &prefix).await);

    let delay = revocation_delay(&a, &b, "vera").await;
    eprintln!("single redis: {delay}");

    // A limit race across both nodes.
    let limit = UserLimit {
        max: 3,
        on_limit: OnLimit::Deny,
    };
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            let s = conformance::session("wes", T0);
            tokio::spawn(async move { node.create(s, limit, T0).await })
        })
        .collect();
    let mut made = 0;
    for t in tasks {
        if let Created::Created { .. } = t.await.unwrap().unwrap() {
            made += 1;
        }
    }
    assert_eq!(made, 3, "creates that succeeded across two nodes");
    assert_eq!(
        a.list(Some("wes"), None, 10, T0)
            .await
            .unwrap()
            .sessions
            .len(),
        3
    );

    assert_eq!(a.stats().await.unwrap().nodes, 2);
    b.close().await.unwrap();
    assert_eq!(
        a.stats().await.unwrap().nodes,
        1,
        "a closed node leaves the count"
    );
}

/// Creates a session on `a`, lets `b` cache it, logs out on `a` and times how long `b`
/// keeps saying live. Asserts the bound; returns a line to print.
async fn revocation_delay(a: &RedisStore, b: &RedisStore, user: &str) -> String {
    until_subscribed(a).await;
    until_subscribed(b).await;
    let s = conformance::session(user, T0);
    a.create(s.clone(), UserLimit::UNLIMITED, T0).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(
            b.validate(s.id, &s.verifier, true, T0).await.unwrap(),
            Lookup::Live(_)
        ));
    }
    // B now answers from its near cache: time a cached validate.
    let hits = b.near_cache_hits();
    let started = Instant::now();
    for _ in 0..1000 {
        b.validate(s.id, &s.verifier, false, T0).await.unwrap();
    }
    assert_eq!(
        b.near_cache_hits() - hits,
        1000,
        "answered with no round trip"
    );
    eprintln!(
        "1000 cached validates on node B took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let ended = a
        .end(s.id, Some(&s.verifier), EndReason::LoggedOut, T0)
        .await
        .unwrap();
    assert!(matches!(ended, Ended::Ended(_)));
    let acknowledged = started.elapsed();
    let mut refused_after = None;
    for _ in 0..2000 {
        match b.validate(s.id, &s.verifier, false, T0).await.unwrap() {
            Lookup::Ended(t) => {
                assert_eq!(t.reason, EndReason::LoggedOut);
                refused_after = Some(started.elapsed());
                break;
            }
            Lookup::Live(_) => tokio::time::sleep(Duration::from_micros(200)).await,
            Lookup::NotFound => panic!("the session vanished instead of ending"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "node B never saw the logout"
        );
    }
    let refused_after = refused_after.expect("node B never saw the logout");
    assert!(refused_after < Duration::from_secs(1), "{refused_after:?}");
    format!(
        "cross-node revocation: logout acknowledged on A after {acknowledged:?}, refused on B after {refused_after:?}"
    )
}

/// Redis goes away: validate fails closed (never Live from an untrusted cache), ping fails;
/// Redis comes back on the same port: the same store serves again, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_closed_and_heals() {
    let Some((_dir, mut server)) = redis_server().await else {
        return;
    };
    let store = open_on(&server, &fresh_prefix()).await;
    until_subscribed(&store).await;
    let s = conformance::session("xena", T0);
    store
        .create(s.clone(), UserLimit::UNLIMITED, T0)
        .await
        .unwrap();
    assert!(matches!(
        store.validate(s.id, &s.verifier, true, T0).await.unwrap(),
        Lookup::Live(_)
    ));

    server.kill();
    let killed = Instant::now();
    let mut failed_after = None;
    for _ in 0..500 {
        match store.validate(s.id, &s.verifier, false, T0).await {
            Err(sessiond_store::StoreError::Unavailable(_)) => {
                failed_after = Some(killed.elapsed());
                break;
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(Lookup::Live(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Ok(other) => panic!("unexpected answer during the outage: {other:?}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "validate kept answering"
        );
    }
    let failed_after = failed_after.expect("validate never failed closed");
    eprintln!("validate failed closed {failed_after:?} after redis was killed");
    assert!(failed_after < Duration::from_secs(2), "{failed_after:?}");
    assert!(store.ping().await.is_err());
    assert!(store.get(s.id, T0).await.is_err());

    server.restart().await;
    let back = Instant::now();
    let mut healed = false;
    for _ in 0..200 {
        if let Ok(Lookup::Live(_)) = store.validate(s.id, &s.verifier, false, T0).await {
            healed = true;
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "the store did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healed, "the store did not recover");
    eprintln!("served again {:?} after redis came back", back.elapsed());
    store.ping().await.unwrap();
    until_subscribed(&store).await;
}

async fn next_item(feed: &mut sessiond_store::Feed, within: Duration) -> FeedItem {
    tokio::time::timeout(within, feed.recv())
        .await
        .expect("a feed item in time")
        .expect("the feed stays open")
}

async fn next_change(feed: &mut sessiond_store::Feed) -> ChangeEvent {
    match next_item(feed, Duration::from_secs(5)).await {
        FeedItem::Change(e) => e,
        FeedItem::Reset => panic!("unexpected reset"),
    }
}

/// Retries `op` (bounded) while Redis is still coming back.
async fn soon<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sessiond_store::StoreError>>,
{
    let started = Instant::now();
    for _ in 0..300 {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "{what}: still failing after 15 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    panic!("{what}: still failing");
}

/// A feed on node B sees what node A does; the stream lives in the AOF, so after `kill -9`
/// of Redis a consumer resumes from its last id with nothing lost, while a feed that was
/// live during the outage gets a reset and then follows again. Closing the store ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_cross_nodes_survive_restarts_and_reset_after_an_outage() {
    let Some((_dir, mut server)) = redis_server().await else {
        return;
    };
    let prefix = fresh_prefix();
    let a = open_on(&server, &prefix).await;
    let b = open_on(&server, &prefix).await;
    let mut feed = b.events(None).await.unwrap();
    let s = conformance::session("yara", T0);
    a.create(s.clone(), UserLimit::UNLIMITED, T0).await.unwrap();
    let created = next_change(&mut feed).await;
    assert_eq!((created.kind, created.session), (ChangeKind::Created, s.id));
    let at = T0.plus(Duration::from_secs(1));
    a.end(s.id, Some(&s.verifier), EndReason::LoggedOut, at)
        .await
        .unwrap();
    let ended = next_change(&mut feed).await;
    assert_eq!(
        (
            ended.kind,
            ended.session,
            ended.version,
            ended.reason,
            ended.at
        ),
        (ChangeKind::Ended, s.id, 2, Some(EndReason::LoggedOut), at)
    );

    server.restart().await;
    let outage = Instant::now();
    assert_eq!(
        next_item(&mut feed, Duration::from_secs(15)).await,
        FeedItem::Reset,
        "a feed that lived through an outage must reset"
    );
    eprintln!(
        "the live feed reset {:?} after redis restarted",
        outage.elapsed()
    );
    let s2 = conformance::session("yara", T0);
    soon("create after the restart", || {
        a.create(s2.clone(), UserLimit::UNLIMITED, T0)
    })
    .await;
    assert_eq!(next_change(&mut feed).await.session, s2.id, "live again");

    let mut resumed = soon("resume", || b.events(Some(&created.event_id))).await;
    let first = next_change(&mut resumed).await;
    assert_eq!(first, ended, "resumed from the AOF's stream, nothing lost");
    assert_eq!(next_change(&mut resumed).await.session, s2.id);

    let unknown = soon("unknown id", || b.events(Some("1-0"))).await;
    let mut unknown = unknown;
    assert_eq!(
        next_item(&mut unknown, Duration::from_secs(5)).await,
        FeedItem::Reset
    );

    b.close().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .expect("closing the store ends its feeds");
    assert_eq!(end, None);
}

/// The stream keeps about `100 000` events. A consumer further behind than that (here: one
/// that stops reading while the stream is flooded) gets a reset, then follows live; an id
/// trimmed away cannot be resumed from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_behind_the_stream_cap_gets_a_reset() {
    let Some((_dir, server)) = redis_server().await else {
        return;
    };
    let prefix = fresh_prefix();
    let store = open_on(&server, &prefix).await;
    let mut feed = store.events(None).await.unwrap();
    let s = conformance::session("zack", T0);
    store
        .create(s.clone(), UserLimit::UNLIMITED, T0)
        .await
        .unwrap();
    let seen = next_change(&mut feed).await;

    // Well-formed events, straight into the stream, in one script (one fsync).
    let client = redis::Client::open(server.url()).unwrap();
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    let mut raw = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let flood = |n: u32| {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(
            "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], 'MAXLEN', '~', \
             100000, '*', 'kind', 'updated', 'id', ARGV[2], 'user', 'zack', 'ver', '2', \
             'at', '0') end return 1",
        )
        .arg(1)
        .arg(format!("{prefix}{{global}}:events"))
        .arg(n)
        .arg(s.id.to_string());
        cmd
    };
    // The feed fills its buffer and waits on this consumer; then the stream moves on.
    flood(50_000).query_async::<()>(&mut raw).await.unwrap();
    flood(80_000).query_async::<()>(&mut raw).await.unwrap();

    let mut resumed = store.events(Some(&seen.event_id)).await.unwrap();
    assert_eq!(
        next_item(&mut resumed, Duration::from_secs(5)).await,
        FeedItem::Reset,
        "the id was trimmed away"
    );

    let mut changes = 0;
    let mut reset = false;
    for _ in 0..200_000 {
        match next_item(&mut feed, Duration::from_secs(5)).await {
            FeedItem::Change(_) => changes += 1,
            FeedItem::Reset => {
                reset = true;
                break;
            }
        }
    }
    assert!(reset, "a consumer behind the cap must get a reset");
    eprintln!("the lagging consumer read {changes} buffered events, then a reset");
    assert!(changes < 130_000, "{changes}");
    let s2 = conformance::session("zack", T0);
    store
        .create(s2.clone(), UserLimit::UNLIMITED, T0)
        .await
        .unwrap();
    assert_eq!(next_change(&mut feed).await.session, s2.id, "live again");
}

/// A node relays an end on its event feed only after evicting the session from its own
/// near cache. The near cache's invalidations come by pub/sub, on another connection; here
/// the end reaches the stream with no `PUBLISH` at all, so only the feed can evict it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_evicts_what_its_event_feed_relays() {
    let Some((_dir, server)) = redis_server().await else {
        return;
    };
    let prefix = fresh_prefix();
    let b = open_on(&server, &prefix).await;
    until_subscribed(&b).await;
    let mut feed = b.events(None).await.unwrap();
    let s = conformance::session("zora", T0);
    b.create(s.clone(), UserLimit::UNLIMITED, T0).await.unwrap();
    assert_eq!(next_change(&mut feed).await.kind, ChangeKind::Created);
    for _ in 0..2 {
        b.validate(s.id, &s.verifier, false, T0).await.unwrap();
    }
    let hits = b.near_cache_hits();
    b.validate(s.id, &s.verifier, false, T0).await.unwrap();
    assert_eq!(
        b.near_cache_hits(),
        hits + 1,
        "B answers from its near cache"
    );
    // Cached, it is answered at once: the server's path needs no await for it.
    let ready = b.validate_ready(s.id, &s.verifier, false, T0, &mut |_| {});
    assert_eq!(ready.map(Result::unwrap), Some(Checked::Live));

    // An `ended` entry, as the end script writes it, but with no PUBLISH.
    let mut raw = connect_raw(&server).await;
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}{{global}}:events"))
        .arg("*")
        .arg(&[
            ("kind", "ended".to_owned()),
            ("id", s.id.to_string()),
            ("user", s.user.to_string()),
            ("ver", "2".to_owned()),
            ("reason", "logged_out".to_owned()),
            ("at", T0.0.to_string()),
        ])
        .query_async(&mut raw)
        .await
        .unwrap();
    let ended = next_change(&mut feed).await;
    assert_eq!((ended.kind, ended.session), (ChangeKind::Ended, s.id));
    let mut lent = false;
    let ready = b.validate_ready(s.id, &s.verifier, false, T0, &mut |_| lent = true);
    assert!(
        ready.is_none() && !lent,
        "evicted: a miss is validate_with's to read"
    );
    let hits = b.near_cache_hits();
    b.validate(s.id, &s.verifier, false, T0).await.unwrap();
    assert_eq!(
        b.near_cache_hits(),
        hits,
        "after relaying the end, B asks Redis instead of its cache"
    );
}

/// A session hash's TTL runs to its max lifetime (plus retention and slack) from its create,
/// so a touch writes `la` only. A hash written while TTLs followed the idle deadline has no
/// `ttl` field: its first touch moves its TTL out to the max lifetime and marks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hash_lives_to_its_max_lifetime_and_a_touch_brings_older_ones_there() {
    let Some((_dir, server)) = redis_server().await else {
        return;
    };
    let prefix = fresh_prefix();
    let store = open_on(&server, &prefix).await;
    let mut raw = connect_raw(&server).await;
    let s = conformance::session("yara", T0);
    store
        .create(s.clone(), UserLimit::UNLIMITED, T0)
        .await
        .unwrap();
    let key = format!("{prefix}{{{}}}:s:{}", s.id.tag_hex(), s.id);
    let slack = Duration::from_secs(300);
    // PEXPIRE is relative to the `now` passed in, so the TTL is measured from T0 or the touch.
    let lifetime_ttl = |from: Timestamp| {
        i64::try_from(
            (s.expires_at.0 - from.0) as u128 + (OPTIONS.ended_retention + slack).as_millis(),
        )
        .unwrap()
    };
    let near = |got: i64, want: i64| (want - 10_000..=want).contains(&got);

    let ttl: i64 = run(&mut raw, redis::cmd("PTTL").arg(&key)).await;
    assert!(
        near(ttl, lifetime_ttl(T0)),
        "created: {ttl} ms, want ~{}",
        lifetime_ttl(T0)
    );

    // As an older sessiond left it: no marker, a TTL that ends well before the max lifetime.
    let short: i64 = 3_600_000;
    run::<()>(&mut raw, redis::cmd("HDEL").arg(&key).arg("ttl")).await;
    run::<()>(&mut raw, redis::cmd("PEXPIRE").arg(&key).arg(short)).await;
    let at = T0.plus(Duration::from_secs(60));
    store.validate(s.id, &s.verifier, true, at).await.unwrap();
    assert_eq!(store.flush_touches().await.unwrap(), 1);
    let ttl: i64 = run(&mut raw, redis::cmd("PTTL").arg(&key)).await;
    assert!(
        near(ttl, lifetime_ttl(at)),
        "touched: {ttl} ms, want ~{}",
        lifetime_ttl(at)
    );
    let (la, mark): (i64, Option<String>) =
        run(&mut raw, redis::cmd("HMGET").arg(&key).arg("la").arg("ttl")).await;
    assert_eq!((la, mark.as_deref()), (at.0, Some("1")));

    // A touch of a marked hash leaves its TTL alone.
    run::<()>(&mut raw, redis::cmd("PEXPIRE").arg(&key).arg(short)).await;
    let later = at.plus(Duration::from_secs(60));
    store
        .validate(s.id, &s.verifier, true, later)
        .await
        .unwrap();
    assert_eq!(store.flush_touches().await.unwrap(), 1);
    let ttl: i64 = run(&mut raw, redis::cmd("PTTL").arg(&key)).await;
    assert!(
        near(ttl, short),
        "a marked hash keeps its TTL: {ttl} ms, set {short}"
    );
    let la: i64 = run(&mut raw, redis::cmd("HGET").arg(&key).arg("la")).await;
    assert_eq!(la, later.0);
}

/// Touches wait in memory for the periodic flush (coalesced over the flush window), except
/// one made near the deadline Redis holds: the sweep tick writes that one at once, so
/// another node's sweep does not end a session this node kept alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touches_wait_for_the_flush_unless_near_the_deadline_redis_holds() {
    let Some((_dir, server)) = redis_server().await else {
        return;
    };
    let prefix = fresh_prefix();
    let a = open_on(&server, &prefix).await;
    let b = open_on(&server, &prefix).await;
    let mut raw = connect_raw(&server).await;
    let min = Duration::from_secs(60);
    let early = conformance::session("zoe", T0);
    let late = conformance::session("zack", T0);
    for s in [&early, &late] {
        a.create(s.clone(), UserLimit::UNLIMITED, T0).await.unwrap();
    }
    let la = |s: &sessiond_core::Session| {
        redis::cmd("HGET")
            .arg(format!("{prefix}{{{}}}:s:{}", s.id.tag_hex(), s.id))
            .arg("la")
            .clone()
    };

    // 20 of 30 idle minutes left: the touch waits for the flush, even past a sweep tick.
    let at = T0.plus(10 * min);
    a.validate(early.id, &early.verifier, true, at)
        .await
        .unwrap();
    // 30 s left: the next tick writes it.
    let near = T0.plus(30 * min).minus(Duration::from_secs(30));
    a.validate(late.id, &late.verifier, true, near)
        .await
        .unwrap();
    a.sweep(near.plus(Duration::from_secs(1))).await.unwrap();
    assert_eq!(run::<i64>(&mut raw, &la(&early)).await, T0.0, "coalesced");
    assert_eq!(run::<i64>(&mut raw, &la(&late)).await, near.0, "urgent");

    // The periodic flush (every flush window, long before 20 minutes pass) writes the
    // rest; the urgent one already went.
    assert_eq!(a.flush_touches().await.unwrap(), 1);
    assert_eq!(run::<i64>(&mut raw, &la(&early)).await, at.0);

    // Node B sweeps past the old deadline: both sessions were kept alive on A.
    let past = T0.plus(30 * min).plus(Duration::from_secs(1));
    assert_eq!(b.sweep(past).await.unwrap().expired, 0);
    for s in [&early, &late] {
        assert!(matches!(
            b.validate(s.id, &s.verifier, false, past).await.unwrap(),
            Lookup::Live(_)
        ));
    }
}

/// A plain connection to `server`, for what a test reads or writes behind the store's back.
async fn connect_raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Runs `cmd` on `con`; any error fails the test.
async fn run<T: redis::FromRedisValue>(
    con: &mut redis::aio::MultiplexedConnection,
    cmd: &redis::Cmd,
) -> T {
    cmd.query_async(con).await.unwrap()
}

/// Through Sentinel, the database the sentinels' URLs name (`/3`) is the master's: the
/// sessions go there, as with a single Redis's `url`, and the sentinels, which have no
/// databases and refuse `SELECT`, are asked without it. Over TLS too, where the sentinel
/// client is built another way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel_the_urls_database_is_the_masters() {
    if !redis_available() {
        return;
    }
    /// Keys in databases 0 and 3 of the Redis on `port` (its plain port).
    async fn keys_in_0_and_3(port: u16) -> [u64; 2] {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let mut sizes = [0; 2];
        for (size, db) in sizes.iter_mut().zip([0, 3]) {
            let () = redis::cmd("SELECT")
                .arg(db)
                .query_async(&mut con)
                .await
                .unwrap();
            *size = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
        }
        sizes
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"));
    let plain_master = RedisServer::start(&dir.path().join("master")).await;
    let plain = RedisSentinel::start(&dir.path().join("sentinel"), plain_master.port).await;
    let tls_master = RedisServer::start_tls(&dir.path().join("tls-master"), &pki, false).await;
    let tls = RedisSentinel::start_tls(&dir.path().join("tls-sentinel"), &tls_master, &pki).await;
    for (master, sentinel, trust) in [
        (&plain_master, &plain, RedisTls::default()),
        (&tls_master, &tls, pki.tls(false)),
    ] {
        let target = RedisTarget::Sentinel {
            master: "mymaster".into(),
            sentinels: vec![format!("{}3", sentinel.url())],
        };
        sessiond_store::redis::check_target(&target, &trust).unwrap();
        let store = open_tls(target, trust, &fresh_prefix()).await;
        creates_and_validates(&store, "xena").await;
        let [in_0, in_3] = keys_in_0_and_3(master.port).await;
        assert_eq!(in_0, 0, "nothing in database 0 ({})", sentinel.url());
        assert!(
            in_3 > 0,
            "the session is in database 3 ({})",
            sentinel.url()
        );
    }
}
