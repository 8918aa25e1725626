//! The expiry sweep: its cost must follow what expires, not what is held.
//!
//! In this process, against `LocalStore::memory` through the public `SessionStore` API
//! only, with time given explicitly. The same number of expiring sessions (1% of 1M =
//! 10,000) is held once among 1M live sessions and once among 10M (smoke: 100 among 10k
//! and 100k), in two stores alive at the same time. The sessions are made as the server
//! makes them on a create; the long-lived ones under a 30-day policy, each expiring batch
//! with a one-minute lifetime. Each of [`ROUNDS`] rounds, an hour of store time after the
//! previous one, gives each store a fresh batch, sweeps a millisecond before the batch's
//! deadline (it must end nothing), then times the sweep at the deadline, which must end
//! exactly the batch. The two stores take turns going first, so a busy moment on the
//! machine hits both alike. The figure is the median of each store's timed sweeps.
//!
//! `--sessions` does not change the sizes. Populating 10M in memory takes several GiB and
//! a few minutes, and so does freeing them: the population time is logged, and the stores
//! are freed on a thread of their own, so this scenario runs last.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use sessiond_core::policy::UserLimit;
use sessiond_core::{Policy, Session, Timestamp};
use sessiond_store::{Created, LocalStore, SessionStore, StoreOptions};

use super::Ctx;
use crate::report::{Row, Target, num};
use crate::workloads::SessionData;

/// Timed sweeps per population; the median is reported.
const ROUNDS: u64 = 5;
const SMOKE_ROUNDS: u64 = 3;
/// Where the benchmark's store time starts (any instant will do: time is an input).
const T0: Timestamp = Timestamp(1_790_000_000_000);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// The expiring batches' lifetime.
const SHORT_LIFETIME: Duration = Duration::from_secs(60);

/// How big: the two populations held and the sessions expiring in each timed sweep.
struct Sizes {
    small: u64,
    big: u64,
    expiring: u64,
    rounds: u64,
}

/// One store holding `held` live sessions, and its timed sweeps.
struct Held {
    store: LocalStore,
    held: u64,
    /// `10M`, `1M`.
    label: String,
    /// The next [`SessionData`] index, so every session has its own user pair.
    next: u64,
    /// Timed sweeps, in milliseconds.
    times: Vec<f64>,
}

pub async fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let sizes = if ctx.settings.smoke {
        Sizes {
            small: 10_000,
            big: 100_000,
            expiring: 100,
            rounds: SMOKE_ROUNDS,
        }
    } else {
        Sizes {
            small: 1_000_000,
            big: 10_000_000,
            expiring: 10_000,
            rounds: ROUNDS,
        }
    };
    let mut small = populate(ctx, sizes.small, sizes.expiring).await?;
    let mut big = populate(ctx, sizes.big, sizes.expiring).await?;
    ctx.phase(&format!(
        "expiry: sweeping among {} and {}",
        small.label, big.label
    ));
    for round in 0..sizes.rounds {
        let (first, second) = if round % 2 == 0 {
            (&mut small, &mut big)
        } else {
            (&mut big, &mut small)
        };
        sweep_round(first, round, sizes.expiring).await?;
        sweep_round(second, round, sizes.expiring).await?;
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|ms| format!("{ms:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for h in [&small, &big] {
        ctx.log(format!(
            "expiry: sweeps ending {} among {} held took {} ms",
            sizes.expiring,
            h.label,
            list(&h.times)
        ));
    }
    let row = Row::measured(
        &format!(
            "expiry sweep, {} expiring: {} vs {} held",
            num(sizes.expiring as f64),
            big.label,
            small.label
        ),
        "ms",
        median(&big.times),
        Some((median(&small.times), &format!("{} held", small.label))),
        Target::RatioAtMost(1.5),
    )
    .note(format!(
        "median of {} sweeps, each ending {} sessions (1% of {}) at their deadline, \
         in-process LocalStore::memory; {}: {} ms; {}: {} ms",
        sizes.rounds,
        num(sizes.expiring as f64),
        small.label,
        small.label,
        list(&small.times),
        big.label,
        list(&big.times)
    ));
    // Freeing 10M sessions one allocation at a time takes minutes and measures nothing.
    std::thread::spawn(move || drop((small, big)));
    Ok(vec![row])
}

/// A store holding `held - expiring` long-lived sessions (each round adds `expiring`).
async fn populate(ctx: &mut Ctx, held: u64, expiring: u64) -> Result<Held> {
    let label = short(held);
    ctx.phase(&format!("expiry: populating {label}"));
    let long = Policy {
        idle_timeout: 30 * DAY,
        max_lifetime: 30 * DAY,
        ..Policy::default()
    };
    let store = LocalStore::memory(StoreOptions::default());
    let started = Instant::now();
    let lasting = held.saturating_sub(expiring);
    for i in 0..lasting {
        create(
            &store,
            SessionData::nth(i).into_session_for(&store, "long", &long, T0),
            T0,
        )
        .await?;
    }
    ctx.log(format!(
        "expiry: {lasting} long-lived sessions created in-process in {:.1} s (held: {label})",
        started.elapsed().as_secs_f64()
    ));
    Ok(Held {
        store,
        held,
        label,
        next: lasting,
        times: Vec::new(),
    })
}

/// Adds a batch of `expiring` sessions that all end one minute into round `round`, then
/// times the sweep that ends them.
async fn sweep_round(h: &mut Held, round: u64, expiring: u64) -> Result<()> {
    let created_at = T0.plus(Duration::from_secs(3600 * (round + 1)));
    let short_lived = Policy {
        max_lifetime: SHORT_LIFETIME,
        ..Policy::default()
    };
    for i in h.next..h.next + expiring {
        let session =
            SessionData::nth(i).into_session_for(&h.store, "short", &short_lived, created_at);
        create(&h.store, session, created_at).await?;
    }
    h.next += expiring;
    let due = created_at.plus(SHORT_LIFETIME);
    let before = h.store.sweep(due.minus(Duration::from_millis(1))).await?;
    ensure!(
        before.expired == 0,
        "a sweep before the deadline ended {} of {} sessions",
        before.expired,
        h.held
    );
    let timer = Instant::now();
    let report = h.store.sweep(due).await?;
    let took = timer.elapsed();
    ensure!(
        report.expired == expiring,
        "the sweep at the deadline ended {} of {} sessions, not {expiring}",
        report.expired,
        h.held
    );
    h.times.push(took.as_secs_f64() * 1e3);
    Ok(())
}

async fn create(store: &LocalStore, session: Session, now: Timestamp) -> Result<()> {
    match store.create(session, UserLimit::UNLIMITED, now).await? {
        Created::Created { .. } => Ok(()),
        Created::LimitReached { limit } => bail!("an unlimited create hit a limit of {limit}"),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `10M`, `100k`: a population size for labels.
fn short(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        num(n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_short_and_the_median_is_the_middle() {
        assert_eq!(short(10_000_000), "10M");
        assert_eq!(short(100_000), "100k");
        assert_eq!(short(1_500), "1,500");
        assert_eq!(median(&[5.0, 1.0, 3.0, 2.0, 4.0]), 3.0);
    }
}
