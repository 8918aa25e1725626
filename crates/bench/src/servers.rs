//! Starting the servers under test on loopback: `sessiond serve` with a data dir of its own,
//! the baseline (this same binary's hidden `baseline-server` subcommand), and a
//! redis-server of the benchmark's own.

use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use redis::aio::MultiplexedConnection;

use crate::procs::{Proc, find_program, free_port};

/// How long a server may take to print its listening line (a 10M-session restart reads
/// every session first).
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// The configuration every sessiond in the benchmark runs with: forward auth reads the
/// session from a plain-HTTP cookie named `sid` (the default name needs HTTPS).
pub const CONFIG: &str = "[cookie]\nname = \"sid\"\nsecure = false\n";

/// Config sections (for [`Sessiond::start_with`]) putting a sessiond on the Redis store at
/// `url`. Nodes sharing a store must share their token keys: give them the same `secret`
/// (at least 32 bytes), e.g. from [`token_secret`].
pub fn redis_store_config(url: &str, secret: &str) -> String {
    format!(
        "[store]\nkind = \"redis\"\n[store.redis]\nurl = \"{url}\"\n\
         [[token.keys]]\nid = \"k1\"\nsecret = \"{secret}\"\n"
    )
}

/// 64 hex digits for a token key shared by the nodes of one run (a benchmark's keys guard
/// nothing, so a non-cryptographic generator will do).
pub fn token_secret() -> String {
    (0..4)
        .map(|_| format!("{:016x}", fastrand::u64(..)))
        .collect()
}

/// The name of the session cookie in [`CONFIG`].
pub const COOKIE_NAME: &str = "sid";

/// A running `sessiond serve`.
pub struct Sessiond {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// The generated agent key, for `Authorization: Bearer`.
    pub agent_key: String,
    /// From spawning the process to its "listening on" line.
    pub to_listening: Duration,
    /// When the process was spawned.
    pub spawned_at: Instant,
}

impl Sessiond {
    /// Starts `bin serve` on `127.0.0.1:0` with `data_dir` and [`CONFIG`].
    pub fn start(bin: &Path, data_dir: &Path) -> Result<Sessiond> {
        Sessiond::start_under(&[], bin, data_dir)
    }

    /// [`Sessiond::start`] with `extra` (whole TOML sections, e.g. `[store]`) after
    /// [`CONFIG`].
    pub fn start_with(bin: &Path, data_dir: &Path, extra: &str) -> Result<Sessiond> {
        Sessiond::launch(&[], bin, data_dir, extra)
    }

    /// [`Sessiond::start`] with `bin` run by `wrapper` (e.g. `perf record -o F --`); the
    /// process watched is then the wrapper's.
    pub fn start_under(wrapper: &[String], bin: &Path, data_dir: &Path) -> Result<Sessiond> {
        Sessiond::launch(wrapper, bin, data_dir, "")
    }

    fn launch(wrapper: &[String], bin: &Path, data_dir: &Path, extra: &str) -> Result<Sessiond> {
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, format!("{CONFIG}{extra}"))
            .with_context(|| format!("writing {}", config.display()))?;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin);
                cmd
            }
            None => Command::new(bin),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--config")
            .arg(&config);
        for (k, _) in std::env::vars_os().filter(|(k, _)| k.as_bytes().starts_with(b"SESSIOND_")) {
            cmd.env_remove(k);
        }
        cmd.env("SESSIOND_LOG", "warn");
        let spawned_at = Instant::now();
        let mut proc = Proc::spawn("sessiond", cmd)?;
        let (url, at) = proc.wait_for_line("sessiond: listening on ", START_TIMEOUT)?;
        let addr = parse_url(&url)?;
        let key_path = data_dir.join("agent.key");
        let agent_key = std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?
            .trim()
            .to_owned();
        Ok(Sessiond {
            proc,
            addr,
            data_dir: data_dir.to_owned(),
            agent_key,
            to_listening: at.duration_since(spawned_at),
            spawned_at,
        })
    }
}

/// A running baseline server.
pub struct Baseline {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Baseline {
    /// Starts the `baseline-server` of `exe` (a sessiond-bench binary) on `127.0.0.1:0`.
    pub fn start(exe: &Path) -> Result<Baseline> {
        Baseline::start_with(exe, None)
    }

    /// The same, answering `POST`s as durable creates group-committed to `journal`.
    pub fn durable(exe: &Path, journal: &Path) -> Result<Baseline> {
        Baseline::start_with(exe, Some(journal))
    }

    fn start_with(exe: &Path, journal: Option<&Path>) -> Result<Baseline> {
        let (proc, addr) = own_server(exe, "baseline", |cmd| {
            if let Some(path) = journal {
                cmd.arg("--journal").arg(path);
            }
        })?;
        Ok(Baseline { proc, addr })
    }
}

/// Starts the hidden `{name}-server` subcommand of `exe` (a sessiond-bench binary:
/// [`crate::scenarios::Ctx::servers`]) on `127.0.0.1:0`, with the arguments and
/// environment `more` adds, and waits for its `{name}: listening on` line.
fn own_server(
    exe: &Path,
    name: &str,
    more: impl FnOnce(&mut Command),
) -> Result<(Proc, SocketAddr)> {
    let mut cmd = Command::new(exe);
    cmd.arg(format!("{name}-server"))
        .args(["--listen", "127.0.0.1:0"]);
    more(&mut cmd);
    let mut proc = Proc::spawn(name, cmd)?;
    let (url, _) = proc.wait_for_line(&format!("{name}: listening on "), START_TIMEOUT)?;
    let addr = parse_url(&url)?;
    Ok((proc, addr))
}

/// A running plain session server ([`crate::plain`]).
pub struct Plain {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// The agent key its validate requests must present.
    pub agent_key: String,
}

impl Plain {
    /// Starts the `plain-server` of `exe` (a sessiond-bench binary) on `127.0.0.1:0` with
    /// `sessions` sessions (their tokens: [`crate::plain::tokens`]), and waits until they
    /// are made.
    pub fn start(exe: &Path, sessions: u64) -> Result<Plain> {
        let agent_key = token_secret();
        let (proc, addr) = own_server(exe, "plain", |cmd| {
            cmd.arg("--sessions")
                .arg(sessions.to_string())
                .arg("--agent-key")
                .arg(&agent_key)
                // Its map on huge pages, as sessiond's allocator (mimalloc) puts sessiond's:
                // glibc's malloc asks for them only when told to.
                .env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1");
        })?;
        Ok(Plain {
            proc,
            addr,
            agent_key,
        })
    }
}

/// A redis-server of the benchmark's own on `127.0.0.1`, without persistence
/// (`--save "" --appendonly no`), its files in a directory of the caller's.
pub struct RedisServer {
    pub proc: Proc,
    pub port: u16,
}

impl RedisServer {
    /// Where redis-server is installed. `None` when it is not (the caller's row then says
    /// so), except under `CI=true`, where CI must install it and its absence is an error.
    pub fn program() -> Result<Option<PathBuf>> {
        match find_program("redis-server") {
            Some(p) => Ok(Some(p)),
            None if std::env::var("CI").as_deref() == Ok("true") => {
                bail!("redis-server is not installed, and CI=true: .ci/run must install it")
            }
            None => Ok(None),
        }
    }

    /// Starts `program` on a free port with its files in `dir` (created if need be), and
    /// waits for its `PONG`. The port is free when chosen, but an outgoing connection may take
    /// it before redis-server binds it (both come from the ephemeral range); redis-server then
    /// exits, and is started again on a fresh port, [`REDIS_START_TRIES`] times in all.
    pub async fn start(program: &Path, dir: &Path) -> Result<RedisServer> {
        Self::start_on(program, dir, free_port).await
    }

    /// [`RedisServer::start`] on the ports `choose` gives, one a try.
    async fn start_on(
        program: &Path,
        dir: &Path,
        mut choose: impl FnMut() -> Result<u16>,
    ) -> Result<RedisServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut tries = 0;
        loop {
            tries += 1;
            let port = choose()?;
            let mut cmd = Command::new(program);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "yes",
                ])
                .arg("--dir")
                .arg(dir);
            let mut server = RedisServer {
                proc: Proc::spawn("redis-server", cmd)?,
                port,
            };
            match server.connect().await {
                Ok(_) => return Ok(server),
                Err(e) if tries < REDIS_START_TRIES => {
                    println!("   redis-server did not start ({e:#}); trying another port");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A connection that has answered `PING` (tries for [`REDIS_ANSWER_LIMIT`]); an error
    /// says why when redis-server exits first.
    pub async fn connect(&mut self) -> Result<MultiplexedConnection> {
        let deadline = Instant::now() + REDIS_ANSWER_LIMIT;
        loop {
            if let Some(con) = self.answering().await {
                return Ok(con);
            }
            if let Some(status) = self.proc.exited() {
                bail!(
                    "redis-server on port {} exited ({status}): {}",
                    self.port,
                    self.proc.last_printed(3).join(" / ")
                );
            }
            if Instant::now() >= deadline {
                bail!("redis-server did not answer PING within {REDIS_ANSWER_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection, if one connects and answers `PING` now.
    async fn answering(&self) -> Option<MultiplexedConnection> {
        let client = redis::Client::open(self.url()).ok()?;
        // The default 500 ms answer timeout is too short for a 1,000-session pipeline on a
        // busy 2-core machine; a minute still bounds a stuck server.
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .ok()?;
        let pong = redis::cmd("PING").query_async::<String>(&mut con).await;
        pong.is_ok().then_some(con)
    }
}

/// How many times [`RedisServer::start`] starts redis-server, each on a fresh port.
const REDIS_START_TRIES: u32 = 3;
/// How long a redis-server has to answer `PING`.
const REDIS_ANSWER_LIMIT: Duration = Duration::from_secs(10);

fn parse_url(url: &str) -> Result<SocketAddr> {
    url.strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("unexpected listening address `{url}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// redis-server, or `None` with a loud skip (under `CI=true`, its absence fails).
    fn redis_program() -> Option<PathBuf> {
        let program = RedisServer::program().unwrap();
        if program.is_none() {
            eprintln!("\n*** SKIPPED: redis-server not found (apt-get install redis-server) ***\n");
        }
        program
    }

    #[tokio::test]
    async fn a_redis_whose_port_is_taken_starts_on_another_and_says_why() {
        let Some(program) = redis_program() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut ports = vec![free_port().unwrap(), taken_port];
        let mut server = RedisServer::start_on(&program, dir.path(), || Ok(ports.pop().unwrap()))
            .await
            .unwrap();
        assert_ne!(server.port, taken_port);
        assert!(ports.is_empty(), "the second port was used");
        let mut con = server.connect().await.unwrap();
        let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
        assert_eq!(pong, "PONG");

        let err = RedisServer::start_on(&program, dir.path(), || Ok(taken_port))
            .await
            .err()
            .expect("every try on a taken port fails");
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("port {taken_port} exited")),
            "{text}"
        );
        assert!(
            text.to_lowercase().contains("address already in use"),
            "{text}"
        );
    }
}
