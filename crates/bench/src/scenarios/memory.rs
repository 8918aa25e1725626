//! The memory baseline: a redis-server of our own (loopback, no persistence) holding the
//! same sessions as hashes plus one set of session ids per user, populated with pipelines;
//! `INFO memory` `used_memory` after minus before, divided by the sessions.
//!
//! Each hash holds what the brief names and nothing more: user, universal id, client IP,
//! user agent, and created / last access / expiry times as decimal milliseconds. It holds no
//! token verifier, policy or version, which sessiond keeps, so the baseline is if anything
//! smaller than a real Redis session store would be.

use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use redis::aio::MultiplexedConnection;

use super::Ctx;
use crate::servers::RedisServer;
use crate::workloads::SessionData;

/// Sessions per pipeline, and pipelines in flight at once.
const PIPELINE: u64 = 1000;
const IN_FLIGHT: u64 = 8;

/// What Redis used per session, and its version.
pub struct RedisMemory {
    pub bytes_per_session: f64,
    pub version: String,
}

/// `None` when redis-server is not installed outside CI (the row then says so); under
/// `CI=true` that is an error.
pub async fn run(ctx: &mut Ctx) -> Result<Option<RedisMemory>> {
    let Some(program) = RedisServer::program()? else {
        return Ok(None);
    };
    ctx.phase("memory: redis baseline");
    let n = ctx.settings.sessions;
    let dir = ctx.tempdir("redis")?;
    let mut redis = RedisServer::start(&program, dir.path()).await?;
    let mut con = redis.connect().await?;
    let before = info(&mut con).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..IN_FLIGHT {
        let con = con.clone();
        tasks.push(tokio::spawn(fill(con, k, n)));
    }
    for t in tasks {
        t.await.context("a Redis loader panicked")??;
    }
    let took = started.elapsed();
    let after = info(&mut con).await?;
    let field = |text: &str, name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("INFO has no {name}"))
    };
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut con).await?;
    let used = field(&after, "used_memory")?.saturating_sub(field(&before, "used_memory")?);
    let rss = field(&after, "used_memory_rss")?.saturating_sub(field(&before, "used_memory_rss")?);
    let version = after
        .lines()
        .chain(info_server(&mut con).await?.lines())
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    ctx.log(format!(
        "redis {version}: {n} sessions ({keys} keys) loaded in {:.1} s; used_memory +{:.1} MiB, \
         RSS +{:.1} MiB",
        took.as_secs_f64(),
        used as f64 / 1048576.0,
        rss as f64 / 1048576.0
    ));
    Ok(Some(RedisMemory {
        bytes_per_session: used as f64 / n as f64,
        version,
    }))
}

async fn info(con: &mut MultiplexedConnection) -> Result<String> {
    Ok(redis::cmd("INFO").arg("memory").query_async(con).await?)
}

async fn info_server(con: &mut MultiplexedConnection) -> Result<String> {
    Ok(redis::cmd("INFO").arg("server").query_async(con).await?)
}

/// Writes the sessions whose pipeline number is `k` modulo [`IN_FLIGHT`].
async fn fill(mut con: MultiplexedConnection, k: u64, n: u64) -> Result<()> {
    let mut first = k * PIPELINE;
    while first < n {
        let mut pipe = redis::pipe();
        for i in first..(first + PIPELINE).min(n) {
            let s = SessionData::nth(i);
            let id = session_id(i);
            // Fixed times near now; their width is what matters (13 digits).
            let created = 1_790_000_000_000 + i;
            pipe.hset_multiple(
                format!("s:{id}"),
                &[
                    ("user", s.user.as_str()),
                    ("uid", s.universal_id.as_str()),
                    ("ip", s.ip.as_str()),
                    ("ua", s.user_agent),
                    ("cr", &created.to_string()),
                    ("la", &created.to_string()),
                    ("exp", &(created + 43_200_000).to_string()),
                ],
            )
            .ignore();
            pipe.sadd(format!("u:{}", s.user), &id).ignore();
        }
        let () = pipe.query_async(&mut con).await?;
        first += IN_FLIGHT * PIPELINE;
    }
    Ok(())
}

/// A 32-hex-digit id, like sessiond's, distinct for every `i`.
fn session_id(i: u64) -> String {
    let hi = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let lo = (i ^ 0x5555_5555).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    format!("{hi:016x}{lo:016x}")
}
