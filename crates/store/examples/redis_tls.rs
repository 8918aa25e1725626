//! What TLS costs the Redis store: creates and uncached validates against one
//! `redis-server` of its own, through its plain port and through its TLS port, in
//! alternating rounds (plain, TLS, plain, TLS, ...) so that drift in the machine's speed
//! falls on both alike. Every round opens fresh stores on fresh keys. Prints each round's
//! rates and the TLS/plain ratio of each pair. Needs `redis-server`; not a test.
//!
//! ```sh
//! cargo run --release -p sessiond-store --example redis_tls -- 20000 3 [cluster]
//! ```
//! Arguments: sessions per round (default 20,000), pairs of rounds (default 3), and
//! `cluster` for a three-master Cluster (`tls-cluster yes`) instead of one Redis. Each
//! round makes its sessions with 64 concurrent callers, then validates each once from a
//! second store whose near cache never answers, so every validate is a Redis round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sessiond_core::policy::UserLimit;
use sessiond_core::{Session, SessionId, Timestamp};
use sessiond_store::conformance::{self, OPTIONS};
use sessiond_store::testkit::{RedisCluster, RedisServer, TestPki, info_stats, redis_available};
use sessiond_store::{Lookup, RedisConfig, RedisStore, RedisTarget, RedisTls, SessionStore};

const NOW: Timestamp = Timestamp(1_800_000_000_000);
const CALLERS: usize = 64;

async fn open(target: &RedisTarget, tls: &RedisTls, prefix: &str, cached: bool) -> Arc<RedisStore> {
    let mut config = RedisConfig::new(target.clone());
    config.tls = tls.clone();
    config.key_prefix = prefix.to_owned();
    if !cached {
        // Every cached answer is too old at once: each validate reads Redis.
        config.cache_max_age = Duration::ZERO;
    }
    Arc::new(RedisStore::connect(config, OPTIONS).await.expect("connect"))
}

/// Runs `op` on every item, `CALLERS` at a time; returns items per second.
async fn rate<T, F, Fut>(items: Vec<T>, op: F) -> f64
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let n = items.len();
    let queue = Arc::new(std::sync::Mutex::new(items));
    let op = Arc::new(op);
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (queue, op) = (queue.clone(), op.clone());
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().expect("queue").pop();
                    let Some(item) = next else { break };
                    op(item).await;
                }
            })
        })
        .collect();
    for c in callers {
        c.await.expect("caller");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Redis's counters of commands processed (the calls inside scripts included) and of
/// reads from clients, read through `plain_url`.
async fn counters(plain_url: &str) -> (u64, u64) {
    let client = redis::Client::open(plain_url).expect("url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let names = ["total_commands_processed", "total_reads_processed"];
    let got = info_stats(&mut con, &names).await;
    (got[0], got[1])
}

/// One round on `target`: creates per second, then uncached validates per second. With
/// `plain_url` (a single Redis), prints how many commands Redis took per read from a
/// client while the creates ran: the batching that lets one AOF fsync serve many writes.
async fn round(
    target: &RedisTarget,
    tls: &RedisTls,
    n: usize,
    plain_url: Option<&str>,
) -> (f64, f64) {
    let prefix = format!(
        "bench{}:",
        &SessionId::random().expect("random").to_string()[..8]
    );
    let writer = open(target, tls, &prefix, true).await;
    let reader = open(target, tls, &prefix, false).await;
    let sessions: Vec<Session> = (0..n)
        .map(|i| conformance::session(&format!("user{i}"), NOW))
        .collect();
    let keys: Vec<_> = sessions.iter().map(|s| (s.id, s.verifier)).collect();
    let w = writer.clone();
    let before = match plain_url {
        Some(url) => Some(counters(url).await),
        None => None,
    };
    let creates = rate(sessions, move |s| {
        let w = w.clone();
        async move {
            w.create(s, UserLimit::UNLIMITED, NOW)
                .await
                .expect("create");
        }
    })
    .await;
    if let (Some(url), Some(before)) = (plain_url, before) {
        let after = counters(url).await;
        println!(
            "  {}: {:.0} commands per read from a client while creating",
            if tls.ca_pem.is_some() { "TLS" } else { "plain" },
            (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64
        );
    }
    let r = reader.clone();
    let validates = rate(keys, move |(id, verifier)| {
        let r = r.clone();
        async move {
            let found = r
                .validate(id, &verifier, false, NOW)
                .await
                .expect("validate");
            assert!(matches!(found, Lookup::Live(_)), "a session it made");
        }
    })
    .await;
    writer.close().await.expect("close");
    reader.close().await.expect("close");
    (creates, validates)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let pairs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    if !redis_available() {
        return;
    }
    let cluster = args.next().as_deref() == Some("cluster");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(&dir.path().join("pki"));
    let plain_url = |port: u16| format!("redis://127.0.0.1:{port}/");
    // Kept alive to the end of the run.
    let (_server, _cluster, plain, tls_target, counted) = if cluster {
        let Some(c) = RedisCluster::start_tls(&pki).await else {
            return;
        };
        let plain = RedisTarget::Cluster(c.nodes.iter().map(|s| plain_url(s.port)).collect());
        let tls_target = RedisTarget::Cluster(c.urls());
        (None, Some(c), plain, tls_target, None)
    } else {
        let server = RedisServer::start_tls(&dir.path().join("redis"), &pki, false).await;
        let plain = RedisTarget::Url(plain_url(server.port));
        let tls_target = RedisTarget::Url(server.url());
        let counted = Some(plain_url(server.port));
        (Some(server), None, plain, tls_target, counted)
    };
    let tls = pki.tls(false);
    let shape = if cluster {
        "a 3-master Cluster"
    } else {
        "one Redis"
    };
    println!("{n} sessions per round on {shape}, {CALLERS} callers, {pairs} pairs of rounds");
    let mut ratios = (Vec::new(), Vec::new());
    for pair in 1..=pairs {
        let (pc, pv) = round(&plain, &RedisTls::default(), n, counted.as_deref()).await;
        let (tc, tv) = round(&tls_target, &tls, n, counted.as_deref()).await;
        println!(
            "pair {pair}: creates/s plain {pc:.0}, TLS {tc:.0} ({:.2}x); \
             uncached validates/s plain {pv:.0}, TLS {tv:.0} ({:.2}x)",
            tc / pc,
            tv / pv
        );
        ratios.0.push(tc / pc);
        ratios.1.push(tv / pv);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median TLS/plain: creates {:.2}x, uncached validates {:.2}x",
        median(&mut ratios.0),
        median(&mut ratios.1)
    );
}
