//! Times how long the embedded store takes to open with N sessions on disk: the part of a
//! restart that grows with the population. For profiling (`perf record -g -- ...`), not a
//! test; the end-to-end restart figure is `sessiond-bench`'s.
//!
//! ```sh
//! cargo run --release -p sessiond-store --example reopen -- 1000000 /tmp/reopen
//! ```
//! The first run fills the directory (durable creates, 64 at a time, each session then
//! touched once) and closes it; every run
//! then opens it once more and prints how long that took, to open and to load. With a third
//! argument `touch`, it then touches every session once and flushes, so that the next run
//! opens with a journal like the one the benchmark's restart finds.

use std::path::PathBuf;
use std::time::Instant;

use sessiond_core::{Policy, Timestamp};
use sessiond_store::testkit::SessionData;
use sessiond_store::{LocalStore, SessionStore, StoreOptions};

/// `VmRSS` of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter("sessiond_store=debug")
        .init();
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: reopen N DIR");
    let dir = PathBuf::from(args.next().expect("usage: reopen N DIR"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let policy = Policy {
        idle_timeout: std::time::Duration::from_secs(24 * 3600),
        ..Policy::default()
    };
    let now = Timestamp(1_795_000_000_000);
    if !dir.exists() {
        let store = LocalStore::open_embedded(&dir, StoreOptions::default()).expect("open");
        let started = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = (0..64)
                .map(|t| {
                    let (store, policy) = (store.clone(), policy);
                    tokio::spawn(async move {
                        for i in (t..n).step_by(64) {
                            let s = SessionData::nth(i)
                                .into_session_for(&*store, "default", &policy, now);
                            let (id, verifier) = (s.id, s.verifier);
                            store.create(s, policy.limit(), now).await.expect("create");
                            // Touched once, as the benchmark's validate windows touch them.
                            let later = Timestamp(now.0 + 60_000);
                            store
                                .validate(id, &verifier, true, later)
                                .await
                                .expect("validate");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
            store.flush_touches().await.expect("flush touches");
            store.close().await.expect("close");
        });
        println!(
            "filled {n} sessions in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
    let rss_before = rss_kib();
    let started = Instant::now();
    let store = LocalStore::open_embedded(&dir, StoreOptions::default()).expect("reopen");
    let opened = started.elapsed().as_secs_f64();
    rt.block_on(store.loaded()).expect("load");
    let took = started.elapsed().as_secs_f64();
    let rss = rss_kib().saturating_sub(rss_before) as f64 * 1024.0 / n as f64;
    println!(
        "opened in {opened:.2} s, loaded {n} sessions in {took:.2} s; resident memory +{rss:.0} bytes per session"
    );
    if args.next().as_deref() == Some("touch") {
        // Every session touched once more and flushed, as one of the benchmark's validate
        // windows leaves the journal: the next run's open replays it.
        let later = Timestamp(now.0 + 120_000);
        rt.block_on(async {
            let mut cursor = None;
            loop {
                let page = store.list(None, cursor, 10_000, later).await.expect("list");
                for s in &page.sessions {
                    store
                        .validate(s.id, &s.verifier, true, later)
                        .await
                        .expect("validate");
                }
                cursor = page.next_cursor;
                if cursor.is_none() {
                    break;
                }
            }
            let n = store.flush_touches().await.expect("flush touches");
            println!("touched and flushed {n} sessions");
        });
    }
    rt.block_on(store.close()).expect("close");
}
