//! Durable creates: many concurrent clients doing `POST /v1/sessions` against a fresh
//! embedded store, against the chosen engine (fjall) committing each create on its own with
//! `PersistMode::SyncAll` (one fsync per create), in this process, on the same filesystem.
//!
//! Then the same load against the floor of a durable create (`baseline-server --journal`:
//! HTTP, a token from the OS, the body appended and group-committed with one `fdatasync`,
//! nothing else), reported next to it: how far the 10x target is from what this machine's
//! network stack, disk and load generator allow a server that commits this way. Both are
//! measured again with four times the clients (reported): larger groups per sync.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use sessiond_core::{Clock as _, Policy, SystemClock};

use super::{Ctx, closed_loop};
use crate::load::{Outcome, Spec};
use crate::report::{Row, Target};
use crate::servers::{Baseline, Sessiond};
use crate::workloads::{Agent, Create, SessionData};

/// Most creates the baseline commits, whatever its time.
const BASELINE_MAX: u64 = 1_000_000;

/// How many times `--connections` the second, reported pair of runs uses: larger groups
/// per sync, for the same target.
const MORE_CLIENTS: usize = 4;

pub async fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let clients = ctx.settings.connections;
    let ours = on_sessiond(ctx, clients).await?;
    let floor = on_floor(ctx, clients).await?;
    let more = clients * MORE_CLIENTS;
    let ours_more = on_sessiond(ctx, more).await?;
    let floor_more = on_floor(ctx, more).await?;

    ctx.phase("durable creates: fjall baseline");
    let base_dir = ctx.tempdir("fjall")?;
    let limit = ctx.spec().duration;
    let path = base_dir.path().to_owned();
    let (commits, took) = tokio::task::spawn_blocking(move || sync_per_create(&path, limit))
        .await
        .context("the fjall baseline panicked")??;
    let baseline = commits as f64 / took.as_secs_f64();
    ctx.log(format!(
        "fjall baseline: {commits} creates, each its own SyncAll commit, in {took:?}"
    ));
    let base = Some((baseline, "fjall, a sync per create"));
    // sessiond's rows note its latency; the floor's, sessiond's share of its rate.
    let latency = |o: &Outcome| {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms per create",
            o.latency_ms(0.5).unwrap_or(0.0),
            o.latency_ms(0.99).unwrap_or(0.0)
        )
    };
    let share = |ours: &Outcome, floor: &Outcome| {
        format!(
            "HTTP, a token and a group-committed append, nothing else; sessiond does {:.0}% of its rate",
            100.0 * ours.rate() / floor.rate()
        )
    };
    let row = |what: String, o: &Outcome, target, note| {
        Row::measured(&what, "creates/s", o.rate(), base, target).note(note)
    };
    let mut rows = vec![
        row(
            format!("durable creates ({clients} clients)"),
            &ours,
            Target::RatioAtLeast(10.0),
            latency(&ours),
        ),
        row(
            format!("durable creates: floor server ({clients} clients)"),
            &floor,
            Target::Report,
            share(&ours, &floor),
        ),
        row(
            format!("durable creates ({more} clients)"),
            &ours_more,
            Target::Report,
            latency(&ours_more),
        ),
        row(
            format!("durable creates: floor server ({more} clients)"),
            &floor_more,
            Target::Report,
            share(&ours_more, &floor_more),
        ),
    ];
    rows.extend(cpu_row(clients, &ours, &floor));
    rows.extend(cpu_row(more, &ours_more, &floor_more));
    Ok(rows)
}

/// sessiond's server CPU per create against the floor server's, from the same two runs: on
/// shared cores, what each create costs is what bounds the rate once the syncs are shared.
fn cpu_row(clients: usize, ours: &Outcome, floor: &Outcome) -> Option<Row> {
    let note = format!(
        "the load generator used {:.1} us per create against sessiond and {:.1} against the floor, on the same cores",
        ours.generator_cpu_us_per_request()?,
        floor.generator_cpu_us_per_request()?
    );
    let row = Row::measured(
        &format!("durable creates ({clients} clients): server CPU per create"),
        "us",
        ours.server_cpu_us_per_request()?,
        Some((floor.server_cpu_us_per_request()?, "floor")),
        Target::Report,
    );
    Some(row.note(note))
}

/// Creates from `clients` connections against a fresh embedded sessiond.
async fn on_sessiond(ctx: &mut Ctx, clients: usize) -> Result<Outcome> {
    let dir = ctx.tempdir("creates")?;
    let server = Sessiond::start(&ctx.bin, &dir.path().join("data"))?;
    let to = CreatesTo {
        key: &server.agent_key,
        addr: server.addr,
        pid: server.proc.pid,
        first: 0,
    };
    let out = creates(ctx, "sessiond", clients, &to).await?;
    let (status, _) = server.proc.terminate(Duration::from_secs(60))?;
    anyhow::ensure!(status.success(), "sessiond exited with {status}");
    Ok(out)
}

/// The same load against the floor (`baseline-server --journal`).
async fn on_floor(ctx: &mut Ctx, clients: usize) -> Result<Outcome> {
    let dir = ctx.tempdir("floor")?;
    let server = Baseline::durable(&ctx.servers, &dir.path().join("journal"))?;
    let to = CreatesTo {
        key: "floor",
        addr: server.addr,
        pid: server.proc.pid,
        first: 0,
    };
    creates(ctx, "floor", clients, &to).await
}

/// New sessions from `clients` connections to `to`, the server named `server`, for as long
/// as the run lasts, its CPU time read; logged, and profiled with `--perf`
/// (`creates-<server>-<clients>.data`).
async fn creates(
    ctx: &mut Ctx,
    server: &str,
    clients: usize,
    to: &CreatesTo<'_>,
) -> Result<Outcome> {
    let who = format!("durable creates, {server}, {clients} clients");
    let window = format!("creates-{server}-{clients}");
    window_of_creates(ctx, &who, &window, clients, to).await
}

/// Where a window of creates goes: a server (`addr`, process `pid`) taking agent key `key`,
/// and the index of the first session it is sent ([`SessionData::nth`]).
pub(super) struct CreatesTo<'a> {
    pub key: &'a str,
    pub addr: SocketAddr,
    pub pid: u32,
    pub first: u64,
}

/// One window of creates from `clients` connections to `to`, named `who` in the log and
/// `window` for `--perf`; its figures logged with [`describe`].
pub(super) async fn window_of_creates(
    ctx: &mut Ctx,
    who: &str,
    window: &str,
    clients: usize,
    to: &CreatesTo<'_>,
) -> Result<Outcome> {
    let work = Arc::new(Create {
        agent: Agent::new(to.addr, to.key)?,
        next: AtomicU64::new(to.first),
    });
    let spec = Spec {
        connections: clients,
        ..ctx.spec()
    };
    let out = closed_loop(ctx, who, window, &spec, work, to.addr, to.pid).await?;
    ctx.log(format!("{who}: {}", describe(&out)));
    Ok(out)
}

/// A create run's figures, with what a create costs both processes on the shared cores:
/// with both busy, that bounds the rate (the syncs are shared by the group commit).
fn describe(o: &Outcome) -> String {
    let server_us = o.server_cpu_us_per_request().unwrap_or(f64::NAN);
    let generator_us = o.generator_cpu_us_per_request().unwrap_or(f64::NAN);
    format!(
        "{} over {:?}, p50 {:.2} ms, p99 {:.2} ms; CPU per create {server_us:.1} us in the server + {generator_us:.1} us in the load generator; {}; {}",
        o.requests,
        o.window,
        o.latency_ms(0.5).unwrap_or(0.0),
        o.latency_ms(0.99).unwrap_or(0.0),
        bound(server_us, generator_us),
        o.stolen_note()
    )
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
