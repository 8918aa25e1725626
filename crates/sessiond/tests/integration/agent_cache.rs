//! The agent library's cache against the real server: a revoked session is refused from
//! the cache as soon as the `ended` event arrives, long before the cache's maximum age.

use std::time::{Duration, Instant};

use sessiond_client::cache::{CacheConfig, CachedValidator};
use sessiond_client::v1;

use crate::common::{Server, code, data_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_is_refused_from_the_cache_at_once() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, None);
    let agent = server.agent();
    // A long maximum age: only the event stream can make the cache refuse in time.
    let cache = CachedValidator::start(
        server.agent(),
        CacheConfig::with_max_age(Duration::from_secs(60)),
    );
    for _ in 0..100 {
        if cache.stats().stream_connected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cache.stats().stream_connected,
        "the event stream did not connect within 2 s"
    );

    let mut delays = Vec::new();
    for i in 0..20 {
        let created = agent
            .create_session(&v1::CreateSessionRequest {
                user: format!("cached{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
        cache
            .validate(&created.token, false)
            .await
            .expect("first answer, from the server");
        let hits = cache.stats().hits;
        cache
            .validate(&created.token, false)
            .await
            .expect("cached answer");
        assert_eq!(
            cache.stats().hits,
            hits + 1,
            "the second validate is a cache hit"
        );

        let start = Instant::now();
        agent.logout(&created.token).await.unwrap();
        let refused = loop {
            match cache.validate(&created.token, false).await {
                Err(e) => break e,
                Ok(_) if start.elapsed() > Duration::from_secs(2) => {
                    panic!("still valid from the cache 2 s after logout")
                }
                Ok(_) => tokio::task::yield_now().await,
            }
        };
        assert_eq!(code(&refused), "session_ended");
        delays.push(start.elapsed());
    }
    delays.sort();
    let p50 = delays[delays.len() / 2];
    let max = delays[delays.len() - 1];
    eprintln!(
        "revocation seen by the agent cache: p50 {p50:?}, max {max:?} (20 logouts, loopback, debug build)"
    );
    assert!(
        max < Duration::from_secs(1),
        "a revocation took {max:?} to reach the cache"
    );
}
