//! What bounding a request's wait costs, per request, on this machine's tokio runtime:
//! why `http/timeouts.rs` notes progress instead of arming a timer.
//!
//! 64 tasks on the server's runtime shape (multi-threaded, one worker per core) each go
//! through N rounds, one round standing for one request of a keep-alive connection:
//! - `nothing`: a yield, the baseline;
//! - `timer`: what hyper's `header_read_timeout` does for every request it waits for, a
//!   tokio sleep created with its deadline, polled once (which registers it with the timer
//!   wheel) and dropped (which takes it out);
//! - `progress`: what sessiond's connections do instead, a connection's `Arc` cloned and
//!   dropped (the body's reference) and five load-and-store pairs on its counters (the
//!   stage three times, one read, one write).
//!
//! ```sh
//! cargo run --release -p sessiond --example timer_cost -- 20000
//! ```
//! Prints nanoseconds of CPU per round with both cores busy (wall time x 2 / rounds),
//! three times each, and what each adds to `nothing`. The runtime has the server's tokio
//! features, an I/O driver among them: without one (a runtime built without tokio's `net`
//! feature) the same timer rounds cost a third as much on this project's machine, so the
//! figure belongs to a server's runtime, not to timers in general.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Progress {
    reads: AtomicU32,
    writes: AtomicU32,
    stage: AtomicU32,
}

fn bump(c: &AtomicU32) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

#[derive(Clone, Copy, PartialEq)]
enum Round {
    Nothing,
    Timer,
    Progress,
}

async fn run(rounds: u64, kind: Round) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        tasks.push(tokio::spawn(async move {
            let conn = Arc::new(Progress::default());
            for _ in 0..rounds {
                match kind {
                    Round::Nothing => {}
                    Round::Timer => {
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                        let mut sleep: Pin<Box<dyn Future<Output = ()> + Send>> =
                            Box::pin(tokio::time::sleep_until(deadline));
                        std::future::poll_fn(|cx| {
                            let _ = sleep.as_mut().poll(cx);
                            Poll::Ready(())
                        })
                        .await;
                    }
                    Round::Progress => {
                        let body = std::hint::black_box(conn.clone());
                        bump(&conn.stage);
                        bump(&conn.reads);
                        bump(&body.stage);
                        bump(&conn.stage);
                        bump(&conn.writes);
                        drop(body);
                    }
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(started.elapsed())
}

fn main() -> anyhow::Result<()> {
    let rounds: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 20_000,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let per_round = |d: Duration| d.as_secs_f64() * 2.0 * 1e9 / (64.0 * rounds as f64);
    runtime.block_on(async {
        for _ in 0..3 {
            let nothing = per_round(run(rounds, Round::Nothing).await?);
            let timer = per_round(run(rounds, Round::Timer).await?);
            let progress = per_round(run(rounds, Round::Progress).await?);
            println!(
                "ns per round: nothing {nothing:.0}, timer {timer:.0} (+{:.0}), progress {progress:.0} (+{:.0})",
                timer - nothing,
                progress - nothing
            );
        }
        Ok(())
    })
}
