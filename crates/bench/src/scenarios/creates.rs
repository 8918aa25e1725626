//! Durable creates: many concurrent clients doing `POST /v1/sessions` against a fresh
//! embedded store, against the chosen engine (fjall) committing each create on its own with
//! `PersistMode::SyncAll` (one fsync per create), in this process, on the same filesystem.
//!
//! Then the same load against the floor of a durable create (`baseline-server --journal`:
//! HTTP, a token from the OS, the body appended and group-committed with one `fdatasync`,
//! nothing else), reported next to it: how far the 10x target is from what this machine's
//! network stack, disk and load generator allow any server at all.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use sessiond_core::{Clock as _, Policy, SystemClock};

use super::Ctx;
use crate::load;
use crate::report::{Row, Target};
use crate::servers::{Baseline, Sessiond};
use crate::workloads::{Agent, Create, SessionData};

/// Most creates the baseline commits, whatever its time.
const BASELINE_MAX: u64 = 1_000_000;

pub async fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    ctx.phase("durable creates: sessiond");
    let dir = ctx.tempdir("creates")?;
    let server = Sessiond::start(&ctx.bin, &dir.path().join("data"))?;
    let agent = Agent::new(server.addr, &server.agent_key)?;
    let work = Arc::new(Create {
        agent,
        next: AtomicU64::new(0),
    });
    let spec = ctx.spec();
    let perf = ctx.perf("creates", server.proc.pid, &spec)?;
    let out = load::run(server.addr, &spec, work, Some(server.proc.pid)).await?;
    if let Some(perf) = perf {
        ctx.log(perf.finish()?);
    }
    out.ensure_clean("durable creates")?;
    let (status, _) = server.proc.terminate(Duration::from_secs(60))?;
    anyhow::ensure!(status.success(), "sessiond exited with {status}");
    let sessiond = out.rate();
    ctx.log(format!(
        "durable creates: {} over {:?} with {} connections, p50 {:.2} ms, p99 {:.2} ms",
        out.requests,
        out.window,
        spec.connections,
        out.latency_ms(0.5).unwrap_or(0.0),
        out.latency_ms(0.99).unwrap_or(0.0)
    ));
    // What a create costs both processes on the shared cores: with both busy, this is what
    // bounds the rate (the fsyncs are shared by the group commit).
    let per = |cpu: Option<Duration>| cpu.and_then(|c| out.us_per_request(c)).unwrap_or(f64::NAN);
    let (server_us, generator_us) = (per(out.server_cpu), per(out.generator_cpu));
    ctx.log(format!(
        "durable creates: CPU per create {server_us:.1} us in sessiond + {generator_us:.1} us in the load generator; {}",
        bound(server_us, generator_us)
    ));

    ctx.phase("durable creates: the floor (HTTP, a token, a group-committed append)");
    let floor_dir = ctx.tempdir("floor")?;
    let floor_server = Baseline::durable(&floor_dir.path().join("journal"))?;
    let agent = Agent::new(floor_server.addr, "floor")?;
    let work = Arc::new(Create {
        agent,
        next: AtomicU64::new(0),
    });
    let floor = load::run(floor_server.addr, &spec, work, Some(floor_server.proc.pid)).await?;
    floor.ensure_clean("durable creates, floor")?;
    drop(floor_server);
    let per = |cpu: Option<Duration>| {
        cpu.and_then(|c| floor.us_per_request(c))
            .unwrap_or(f64::NAN)
    };
    let (floor_server_us, floor_generator_us) = (per(floor.server_cpu), per(floor.generator_cpu));
    ctx.log(format!(
        "durable creates, floor: {} over {:?}, p50 {:.2} ms, p99 {:.2} ms; CPU per create {floor_server_us:.1} us in the server + {floor_generator_us:.1} us in the load generator; {}",
        floor.requests,
        floor.window,
        floor.latency_ms(0.5).unwrap_or(0.0),
        floor.latency_ms(0.99).unwrap_or(0.0),
        bound(floor_server_us, floor_generator_us)
    ));

    ctx.phase("durable creates: fjall baseline");
    let base_dir = ctx.tempdir("fjall")?;
    let limit = spec.duration;
    let path = base_dir.path().to_owned();
    let (commits, took) = tokio::task::spawn_blocking(move || sync_per_create(&path, limit))
        .await
        .context("the fjall baseline panicked")??;
    let baseline = commits as f64 / took.as_secs_f64();
    ctx.log(format!(
        "fjall baseline: {commits} creates, each its own SyncAll commit, in {took:?}"
    ));
    let clients = format!("({} clients)", spec.connections);
    Ok(vec![
        Row::measured(
            &format!("durable creates {clients}"),
            "creates/s",
            sessiond,
            Some((baseline, "fjall, a sync per create")),
            Target::RatioAtLeast(10.0),
        )
        .note(format!(
            "p50 {:.2} ms, p99 {:.2} ms per create",
            out.latency_ms(0.5).unwrap_or(0.0),
            out.latency_ms(0.99).unwrap_or(0.0)
        )),
        Row::measured(
            &format!("durable creates: floor server {clients}"),
            "creates/s",
            floor.rate(),
            Some((baseline, "fjall, a sync per create")),
            Target::Report,
        )
        .note(format!(
            "HTTP, a token and a group-committed append, nothing else; sessiond does {:.0}% of its rate",
            100.0 * sessiond / floor.rate()
        )),
    ])
}

/// What `server_us + generator_us` of CPU per create allows on this machine's cores.
fn bound(server_us: f64, generator_us: f64) -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!(
        "{cores} cores at that cost allow at most {:.0} creates/s",
        cores as f64 * 1e6 / (server_us + generator_us)
    )
}

/// Commits one real session record per fjall batch, each with `SyncAll`, the way the store
/// encodes it (format byte, then postcard), for `limit` or [`BASELINE_MAX`] creates.
fn sync_per_create(dir: &Path, limit: Duration) -> Result<(u64, Duration)> {
    let db = Database::builder(dir.join("fjall"))
        .open()
        .context("opening fjall")?;
    let sessions = db.keyspace("sessions", KeyspaceCreateOptions::default)?;
    let policy = Policy::default();
    let started = Instant::now();
    let mut n = 0;
    while n < BASELINE_MAX && started.elapsed() < limit {
        let record = record(n, &policy)?;
        let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&sessions, record.0.as_slice(), record.1);
        batch.commit().context("fjall commit")?;
        n += 1;
    }
    let took = started.elapsed();
    drop(sessions);
    drop(db);
    Ok((n, took))
}

/// Session `i` as the embedded store writes it: its id and its encoded record.
fn record(i: u64, policy: &Policy) -> Result<([u8; 16], Vec<u8>)> {
    let session = SessionData::nth(i).into_session("default", policy, SystemClock.now());
    let mut value = vec![1u8];
    value.extend(postcard::to_stdvec(&session).context("encoding a session")?);
    Ok((session.id.0, value))
}
