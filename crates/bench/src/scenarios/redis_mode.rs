//! Validate in Redis mode, near cache on, against the embedded store.
//!
//! A redis-server of the benchmark's own (loopback, no persistence) and one sessiond on it
//! (`[store] kind = "redis"`, the near cache sized for the whole population: entries = the
//! population, entries kept up to 10 minutes, as an operator sizes it when every session is
//! active; with the defaults, 100,000 entries for 30 s, a uniform draw over a million
//! sessions misses most of the time), populated through the API
//! like the serving scenario, then the same validate load (touch on, a token drawn at random
//! from the whole population). Server CPU is sessiond's plus redis-server's: in Redis mode
//! both do the work of a validate.
//!
//! The embedded side is an embedded sessiond populated with as many sessions, given the
//! same load just before and just after the Redis one; the two runs count as one. Runs
//! before 2026-11-23T06:42Z compared with the serving scenario's validate, measured about
//! twenty minutes earlier, and a shared machine's speed drifts over that long (the
//! twenty-first session's section of docs/benchmarks.md).

use std::sync::Arc;

use anyhow::{Result, ensure};
use sessiond_store::{RedisConfig, RedisTarget};

use super::serving::populate;
use super::{Ctx, closed_loop};
use crate::load::{self, Outcome};
use crate::procs::HugePages;
use crate::report::{Row, Target};
use crate::servers::{RedisServer, Sessiond, redis_store_config, token_secret};
use crate::workloads::{Agent, Validate};

/// The most sessions put in Redis: at sessiond's Redis layout (about 1.5 KB each with the
/// due index) 10M would take most of the machine's memory.
pub const MAX_SESSIONS: u64 = 1_000_000;

const LABEL: &str = "validate in Redis mode, near cache on";

pub async fn run(ctx: &mut Ctx) -> Result<Vec<Row>> {
    let Some(program) = RedisServer::program()? else {
        return Ok(vec![Row::not_measured(
            LABEL,
            Target::RatioAtLeast(0.80),
            "redis-server is not installed",
        )]);
    };
    let n = ctx.settings.sessions.min(MAX_SESSIONS);
    let embedded = Embedded::start(ctx, n).await?;
    let before = embedded.validate(ctx, "before").await?;

    ctx.phase("redis mode: population");
    let dir = ctx.tempdir("redis-mode")?;
    let mut redis = RedisServer::start(&program, &dir.path().join("redis")).await?;
    let extra = redis_store_config(&redis.url(), &token_secret()).replace(
        "[store.redis]\n",
        &format!("[store.redis]\nnear_cache_entries = {n}\nnear_cache_max_age = \"10m\"\n"),
    );
    ensure!(
        extra.contains("near_cache_entries"),
        "the Redis config has no [store.redis] table"
    );
    let server = Sessiond::start_with(&ctx.bin, &dir.path().join("node"), &extra)?;
    let tokens = Arc::new(populate(ctx, &server, n, "redis mode population").await?);
    let mut con = redis.connect().await?;
    let info: String = redis::cmd("INFO").query_async(&mut con).await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or("?")
            .trim()
            .to_owned()
    };
    let version = field("redis_version");
    ctx.log(format!(
        "redis mode: redis {version} holds {n} sessions in {} (used_memory_human); {}",
        field("used_memory_human"),
        HugePages::note("redis-server", redis.proc.pid)
    ));

    ctx.phase("redis mode: validate");
    let work = Arc::new(Validate {
        agent: Agent::new(server.addr, &server.agent_key)?,
        tokens,
    });
    let spec = ctx.touching_spec();
    let perf = ctx.perf("redis-mode-validate", server.proc.pid, &spec)?;
    let out = load::run_watching(
        server.addr,
        &spec,
        work,
        Some(server.proc.pid),
        &[redis.proc.pid],
    )
    .await?;
    if let Some(perf) = perf {
        ctx.log(perf.finish()?);
    }
    out.ensure_clean("validate in Redis mode")?;
    let redis_cpu = out.others_cpu.first().copied();
    let secs = |d: Option<std::time::Duration>| d.map_or(0.0, |d| d.as_secs_f64());
    ctx.log(format!(
        "redis mode validate: {} answers in {:?}; sessiond CPU {:.2} s, redis-server CPU {:.2} s, \
         load generator CPU {:.2} s; {}; {}",
        out.requests,
        out.window,
        secs(out.server_cpu),
        secs(redis_cpu),
        secs(out.generator_cpu),
        out.stolen_note(),
        HugePages::note("sessiond", server.proc.pid)
    ));
    ensure!(out.requests > 0, "no validate answered in Redis mode");
    let default_cache = RedisConfig::new(RedisTarget::Url(redis.url())).cache_capacity;
    // Stopped before the embedded side's second run, which should have the machine alone.
    drop(server);
    drop(redis);
    let after = embedded.validate(ctx, "after").await?;
    let embedded = before.merged(after);

    let capped = if n < ctx.settings.sessions {
        format!(
            " (--sessions capped at {}: Redis memory)",
            crate::report::num(n as f64)
        )
    } else {
        String::new()
    };
    let label = format!("{LABEL} ({} conns)", spec.connections);
    let mut rows = vec![
        Row::measured(
            &format!("{label}: throughput"),
            "req/s",
            out.rate(),
            Some((embedded.rate(), "embedded")),
            Target::RatioAtLeast(0.80),
        )
        .note(format!(
            "{} sessions{capped}; redis-server {version} on loopback without \
             persistence; near cache sized for all of them (near_cache_entries = {n}, \
             near_cache_max_age = 10m; the default {} entries would hold {:.0}%); embedded: \
             as many sessions in an embedded sessiond, the same load just before and just \
             after, counted as one; {}",
            crate::report::num(n as f64),
            crate::report::num(default_cache as f64),
            (100.0 * default_cache as f64 / n as f64).min(100.0),
            super::touching_note(&spec),
        )),
    ];
    let cpu = out.server_cpu.map(|s| s + redis_cpu.unwrap_or_default());
    if let (Some(cpu), Some(base)) = (cpu, embedded.server_cpu_us_per_request()) {
        // `out.requests > 0` was ensured above.
        let per = |d| out.us_per_request(d).unwrap_or_default();
        rows.push(
            Row::measured(
                &format!("{label}: server CPU per request"),
                "us",
                per(cpu),
                Some((base, "embedded")),
                Target::Report,
            )
            .note(format!(
                "sessiond {:.1} us + redis-server {:.1} us",
                out.server_cpu.map_or(0.0, per),
                redis_cpu.map_or(0.0, per)
            )),
        );
    }
    if let (Some(ours), Some(base)) = (out.latency_ms(0.99), embedded.latency_ms(0.99)) {
        rows.push(Row::measured(
            &format!("{label}: p99 latency"),
            "ms",
            ours,
            Some((base, "embedded")),
            Target::Report,
        ));
    }
    Ok(rows)
}

/// The embedded side: a sessiond on its own store holding `n` sessions.
struct Embedded {
    server: Sessiond,
    work: Arc<Validate>,
    // Removed when the scenario ends, with the server stopped first (fields drop in order).
    _dir: tempfile::TempDir,
}

impl Embedded {
    async fn start(ctx: &mut Ctx, n: u64) -> Result<Embedded> {
        ctx.phase("redis mode: embedded population");
        let dir = ctx.tempdir("redis-mode-embedded")?;
        let server = Sessiond::start(&ctx.bin, &dir.path().join("data"))?;
        let tokens = Arc::new(populate(ctx, &server, n, "redis mode: embedded population").await?);
        let work = Arc::new(Validate {
            agent: Agent::new(server.addr, &server.agent_key)?,
            tokens,
        });
        Ok(Embedded {
            server,
            work,
            _dir: dir,
        })
    }

    /// One of its two runs around the Redis one (`when`: before or after), logged.
    async fn validate(&self, ctx: &mut Ctx, when: &str) -> Result<Outcome> {
        let (addr, pid) = (self.server.addr, self.server.proc.pid);
        let spec = ctx.touching_spec();
        let who = format!("redis mode: embedded validate ({when})");
        let window = format!("redis mode embedded {when}");
        let out = closed_loop(ctx, &who, &window, &spec, self.work.clone(), addr, pid).await?;
        ctx.log(format!(
            "redis mode: embedded validate ({when}) {} answers in {:?}, server CPU {:.2} s; {}; {}",
            out.requests,
            out.window,
            out.server_cpu.map_or(0.0, |d| d.as_secs_f64()),
            out.stolen_note(),
            HugePages::note("sessiond", pid)
        ));
        Ok(out)
    }
}
