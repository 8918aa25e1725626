//! How soon a logout on one node is refused elsewhere: on another sessiond node sharing the
//! same Redis (its near cache held the session), and in the agent library's
//! [`CachedValidator`] following that other node's event stream.
//!
//! A redis-server of the benchmark's own and two sessiond nodes A and B on it, with shared
//! token keys. Each sample: create a session on A; validate it on B twice (the first fills
//! B's near cache, or the agent cache, the second is answered from it); log it out on A;
//! then poll B (or the cache) with `touch: false`, never pausing longer than a yield, until
//! it refuses with `session_ended` or `session_not_found`. The sample is the time from A's
//! logout answer to that refusal. A bounded number of samples, each bounded in time; a few
//! unmeasured rounds first, so the nodes' subscriptions and connections are up.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sessiond_client::cache::{CacheConfig, CachedValidator};
use sessiond_client::{Client, ErrorCode, v1};

use super::Ctx;
use crate::report::{Row, Target};
use crate::servers::{RedisServer, Sessiond, redis_store_config, token_secret};

/// Measured samples per row (smoke: [`SMOKE_SAMPLES`]), after [`WARMUP`] unmeasured ones.
const SAMPLES: usize = 200;
const SMOKE_SAMPLES: usize = 20;
const WARMUP: usize = 10;
/// Longest one sample may wait for the refusal; a sample that reaches it counts as this.
const SAMPLE_LIMIT: Duration = Duration::from_secs(2);
/// How long past [`SAMPLE_LIMIT`] a late refusal is still waited for, only to say how late.
const LATE_LIMIT: Duration = Duration::from_secs(10);
/// The agent cache's maximum age: far longer than any sample, so only the event stream can
/// make it refuse in time.
const CACHE_MAX_AGE: Duration = Duration::from_secs(60);
/// The target, in milliseconds, for the p99 of both rows.
const TARGET_MS: f64 = 25.0;

const NODE_LABEL: &str = "revocation seen on another node: p99";
const CACHE_LABEL: &str = "revocation seen in the agent cache (other node): p99";

/// One logout, timed.
#[derive(Clone, Debug)]
struct Sample {
    /// From A's logout answer to the first refusal.
    from_answer: Duration,
    /// From sending A's logout to the first refusal.
    from_sent: Duration,
    timed_out: bool,
    /// What was seen when the refusal did not come in time, for the log.
    late: Option<String>,
}

pub async fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let Some(program) = RedisServer::program()? else {
        return Ok([NODE_LABEL, CACHE_LABEL]
            .into_iter()
            .map(|l| {
                ms_row(Row::not_measured(
                    l,
                    target(),
                    "redis-server is not installed",
                ))
            })
            .collect());
    };
    let samples = if ctx.settings.smoke {
        SMOKE_SAMPLES
    } else {
        SAMPLES
    };
    ctx.phase("revocation: starting two nodes");
    let dir = ctx.tempdir("revocation")?;
    let redis = RedisServer::start(&program, &dir.path().join("redis")).await?;
    let extra = redis_store_config(&redis.url(), &token_secret());
    let node_a = Sessiond::start_with(&ctx.bin, &dir.path().join("a"), &extra)?;
    let node_b = Sessiond::start_with(&ctx.bin, &dir.path().join("b"), &extra)?;
    let a = client(&node_a)?;
    let b = client(&node_b)?;

    ctx.phase("revocation: node B");
    let node = measure(samples, |i| {
        let (a, b) = (a.clone(), b.clone());
        async move { node_sample(&a, &b, &format!("revoke-node-{i}")).await }
    })
    .await?;
    let node_row = summarise(ctx, "node B", NODE_LABEL, &node);

    ctx.phase("revocation: agent cache on node B");
    let cache = CachedValidator::start(b.clone(), CacheConfig::with_max_age(CACHE_MAX_AGE));
    wait_connected(&cache).await?;
    let cached = measure(samples, |i| {
        let (a, b, cache) = (a.clone(), b.clone(), cache.clone());
        async move { cache_sample(&a, &b, &cache, &format!("revoke-cache-{i}")).await }
    })
    .await?;
    let mut cache_row = summarise(ctx, "agent cache", CACHE_LABEL, &cached);
    // The first connection flushes once; more mean the stream dropped, and samples taken
    // meanwhile were answered by the server, not refused by an event.
    let flushes = cache.stats().flushes;
    if flushes > 1 {
        cache_row.note += &format!("; the cache was flushed {flushes} times (stream drops)");
    }
    Ok(vec![node_row, cache_row])
}

fn target() -> Target {
    Target::AtMost(TARGET_MS)
}

/// `row` in milliseconds.
fn ms_row(row: Row) -> Row {
    Row {
        unit: "ms".into(),
        ..row
    }
}

fn client(node: &Sessiond) -> Result<Client> {
    Client::new(&format!("http://{}", node.addr), &node.agent_key)
        .with_context(|| format!("a client for {}", node.addr))
}

fn req(user: &str) -> v1::CreateSessionRequest {
    v1::CreateSessionRequest {
        user: user.to_owned(),
        ..Default::default()
    }
}

/// Runs [`WARMUP`] unmeasured samples, then `n` measured ones, one after the other.
async fn measure<F, Fut>(n: usize, mut one: F) -> Result<Vec<Sample>>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<Sample>>,
{
    for i in 0..WARMUP {
        one(n + i).await?;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(one(i).await?);
    }
    Ok(out)
}

/// Whether `e` is the refusal a logged-out session gets.
fn refused(e: &sessiond_client::Error) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::SessionEnded | ErrorCode::SessionNotFound)
    )
}

/// Polls `validate` until it is refused, or `limit` after `answered`; the sample, measured
/// from `sent` and `answered`.
async fn until_refused<F, Fut>(
    sent: Instant,
    answered: Instant,
    limit: Duration,
    mut validate: F,
) -> Result<Sample>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<v1::Session, sessiond_client::Error>>,
{
    loop {
        let result = validate().await;
        let now = Instant::now();
        let sample = Sample {
            from_answer: now.duration_since(answered),
            from_sent: now.duration_since(sent),
            timed_out: false,
            late: None,
        };
        match result {
            Err(e) if refused(&e) => return Ok(sample),
            Err(e) => bail!("unexpected answer while waiting for the logout to show: {e}"),
            Ok(_) if sample.from_answer >= limit => {
                return Ok(Sample {
                    timed_out: true,
                    ..sample
                });
            }
            // A cache hit never waits: let the event follower run.
            Ok(_) => tokio::task::yield_now().await,
        }
    }
}

async fn node_sample(a: &Client, b: &Client, user: &str) -> Result<Sample> {
    let created = a.create_session(&req(user)).await?;
    // The first fills B's near cache, the second is answered from it.
    for _ in 0..2 {
        b.validate(&created.token, false)
            .await
            .context("validate on node B")?;
    }
    let sent = Instant::now();
    a.logout(&created.token).await.context("logout on node A")?;
    let answered = Instant::now();
    let token = &created.token;
    let mut sample =
        until_refused(sent, answered, SAMPLE_LIMIT, || b.validate(token, false)).await?;
    if sample.timed_out {
        let late = until_refused(sent, answered, LATE_LIMIT, || b.validate(token, false)).await?;
        sample.late = Some(describe_late(&late));
    }
    Ok(sample)
}

async fn cache_sample(
    a: &Client,
    b: &Client,
    cache: &CachedValidator,
    user: &str,
) -> Result<Sample> {
    let created = a.create_session(&req(user)).await?;
    cache
        .validate(&created.token, false)
        .await
        .context("validate through the agent cache")?;
    let hits = cache.stats().hits;
    cache.validate(&created.token, false).await?;
    ensure!(
        cache.stats().hits == hits + 1,
        "the agent cache did not answer the second validate itself"
    );
    let before = cache.stats();
    let sent = Instant::now();
    a.logout(&created.token).await.context("logout on node A")?;
    let answered = Instant::now();
    let token = &created.token;
    let mut sample = until_refused(sent, answered, SAMPLE_LIMIT, || {
        cache.validate(token, false)
    })
    .await?;
    if sample.timed_out {
        // Does node B itself refuse, and does the event come at all?
        let node = match b.validate(token, false).await {
            Ok(_) => "accepts".to_owned(),
            Err(e) => format!("refuses ({e})"),
        };
        let late =
            until_refused(sent, answered, LATE_LIMIT, || cache.validate(token, false)).await?;
        let after = cache.stats();
        sample.late = Some(format!(
            "{}; node B {node} after {SAMPLE_LIMIT:?}; cache invalidations {} -> {}, flushes \
             {} -> {}, stream connected {} -> {}",
            describe_late(&late),
            before.invalidations,
            after.invalidations,
            before.flushes,
            after.flushes,
            before.stream_connected,
            after.stream_connected
        ));
    }
    Ok(sample)
}

/// How late a refusal that missed [`SAMPLE_LIMIT`] came.
fn describe_late(late: &Sample) -> String {
    if late.timed_out {
        format!("still not refused {LATE_LIMIT:?} after the logout")
    } else {
        format!(
            "refused {:.3} s after the logout's answer",
            late.from_answer.as_secs_f64()
        )
    }
}

/// Waits (at most 5 s) for the cache's event stream to connect.
async fn wait_connected(cache: &CachedValidator) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cache.stats().stream_connected {
        ensure!(
            Instant::now() < deadline,
            "the agent cache's event stream did not connect within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The `q` quantile (0..=1) of sorted `v`, in milliseconds.
fn quantile_ms(v: &[Duration], q: f64) -> f64 {
    let n = v.len();
    let i = ((n as f64 * q).ceil() as usize).clamp(1, n.max(1)) - 1;
    v.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The row for `samples`, with p50 and max in its note, and a line for the log.
fn summarise(ctx: &mut Ctx, what: &str, label: &str, samples: &[Sample]) -> Row {
    let mut answer: Vec<Duration> = samples.iter().map(|s| s.from_answer).collect();
    let mut sent: Vec<Duration> = samples.iter().map(|s| s.from_sent).collect();
    answer.sort_unstable();
    sent.sort_unstable();
    let timed_out = samples.iter().filter(|s| s.timed_out).count();
    for late in samples.iter().filter_map(|s| s.late.as_deref()) {
        ctx.log(format!("revocation, {what}: a late refusal: {late}"));
    }
    let (p50, p99, max) = (
        quantile_ms(&answer, 0.5),
        quantile_ms(&answer, 0.99),
        quantile_ms(&answer, 1.0),
    );
    ctx.log(format!(
        "revocation, {what}: {} logouts; from the logout's answer p50 {p50:.2} ms, p99 {p99:.2} ms, \
         max {max:.2} ms; from sending the logout p50 {:.2} ms, p99 {:.2} ms",
        samples.len(),
        quantile_ms(&sent, 0.5),
        quantile_ms(&sent, 0.99),
    ));
    let mut note = format!(
        "p50 {p50:.2} ms, max {max:.2} ms over {} logouts, from the logout's answer on node A",
        samples.len()
    );
    if timed_out > 0 {
        note.push_str(&format!(
            "; {timed_out} not refused within {SAMPLE_LIMIT:?}, counted as that"
        ));
    }
    Row::measured(label, "ms", p99, None, target()).note(note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_sorted_samples() {
        let v: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&v, 0.5), 100.0);
        assert_eq!(quantile_ms(&v, 0.99), 198.0);
        assert_eq!(quantile_ms(&v, 1.0), 200.0);
        assert_eq!(quantile_ms(&[], 0.99), 0.0);
    }
}
