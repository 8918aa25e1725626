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
            let store =
                LocalStore::open_embedded(&dir.path().join("sessions.redb"), OPTIONS).unwrap();
            dirs.lock().push(dir);
            Arc::new(store) as Arc<dyn SessionStore>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conforms_across_restarts() {
    conformance::run_durable(|dir| {
        let path = dir.join("sessions.redb");
        async move {
            Arc::new(LocalStore::open_embedded(&path, OPTIONS).unwrap()) as Arc<dyn SessionStore>
        }
    })
    .await;
}
