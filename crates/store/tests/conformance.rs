//! The local backends against the shared conformance suite.

use std::sync::Arc;

use sessiond_store::conformance::{self, OPTIONS};
use sessiond_store::{LocalStore, SessionStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    conformance::run(|| async { Arc::new(LocalStore::memory(OPTIONS)) as Arc<dyn SessionStore> })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms() {
    let dirs = Arc::new(parking_lot::Mutex::new(Vec::new()));
    conformance::run(|| {
        let dirs = dirs.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let store = LocalStore::open_embedded(&dir.path().join("store"), OPTIONS).unwrap();
            dirs.lock().push(dir);
            store as Arc<dyn SessionStore>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms_across_restarts() {
    conformance::run_durable(|dir| {
        let path = dir.join("store");
        async move { LocalStore::open_embedded(&path, OPTIONS).unwrap() as Arc<dyn SessionStore> }
    })
    .await;
}

/// Group commit: concurrent creates share fsyncs instead of taking one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open_embedded(&dir.path().join("store"), OPTIONS).unwrap();
    let before = store.durable_commits();
    let t0 = sessiond_core::Timestamp(1_800_000_000_000);
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let store = store.clone();
            let s = conformance::session(&format!("u{i}"), t0);
            tokio::spawn(async move {
                store
                    .create(s, sessiond_core::policy::UserLimit::UNLIMITED, t0)
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let commits = store.durable_commits() - before;
    eprintln!("400 concurrent creates took {commits} durable commits");
    assert!(commits >= 1);
    assert!(
        commits < 200,
        "400 creates took {commits} commits: group commit is not grouping"
    );
    store.close().await.unwrap();
}
