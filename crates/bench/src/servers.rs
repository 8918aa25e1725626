//! Starting the servers under test on loopback: `sessiond serve` with a data dir of its own,
//! and the baseline (this same binary's hidden `baseline-server` subcommand).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::procs::Proc;

/// How long a server may take to print its listening line (a 10M-session restart reads
/// every session first).
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// The configuration every sessiond in the benchmark runs with: forward auth reads the
/// session from a plain-HTTP cookie named `sid` (the default name needs HTTPS).
pub const CONFIG: &str = "[cookie]\nname = \"sid\"\nsecure = false\n";

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

    /// [`Sessiond::start`] with `bin` run by `wrapper` (e.g. `perf record -o F --`); the
    /// process watched is then the wrapper's.
    pub fn start_under(wrapper: &[String], bin: &Path, data_dir: &Path) -> Result<Sessiond> {
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, CONFIG).with_context(|| format!("writing {}", config.display()))?;
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
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SESSIOND_")) {
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
    /// Starts this executable's `baseline-server` on `127.0.0.1:0`.
    pub fn start() -> Result<Baseline> {
        let exe = std::env::current_exe().context("locating the benchmark binary")?;
        let mut cmd = Command::new(exe);
        cmd.args(["baseline-server", "--listen", "127.0.0.1:0"]);
        let mut proc = Proc::spawn("baseline", cmd)?;
        let (url, _) = proc.wait_for_line("baseline: listening on ", START_TIMEOUT)?;
        Ok(Baseline {
            proc,
            addr: parse_url(&url)?,
        })
    }
}

fn parse_url(url: &str) -> Result<SocketAddr> {
    url.strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("unexpected listening address `{url}`"))
}
