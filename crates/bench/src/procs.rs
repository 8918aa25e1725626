//! Child processes the benchmark starts (sessiond, the baseline server, redis-server), each
//! owned by a guard that stops it when dropped, also when a scenario fails or panics; and
//! what `/proc` says about them (CPU time, resident memory).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// A running child process, stopped (SIGTERM, SIGKILL after [`DROP_GRACE`]) and reaped
/// when dropped.
pub struct Proc {
    // `None` once `terminate` has taken and reaped it.
    child: Option<Child>,
    pub pid: u32,
    /// For messages: "sessiond", "baseline", "redis-server".
    name: String,
    // Lines the child printed on stdout, with when each arrived; a thread drains the pipe
    // for the whole life of the child so it never blocks on a full pipe.
    lines: Option<Receiver<(Instant, String)>>,
}

impl Proc {
    /// Starts `cmd` with stdout piped (stderr inherited, stdin closed).
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // Once nobody listens, keep draining so the child never blocks.
                    let _ = tx.send((Instant::now(), line));
                }
            });
        }
        Ok(Proc {
            pid: child.id(),
            child: Some(child),
            name: name.to_owned(),
            lines: Some(rx),
        })
    }

    /// Waits (at most `timeout`) for a stdout line starting with `prefix`; returns the rest
    /// of that line and when it arrived.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> Result<(String, Instant)> {
        let deadline = Instant::now() + timeout;
        let rx = self
            .lines
            .as_ref()
            .ok_or_else(|| anyhow!("{} has no stdout", self.name))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((at, line)) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok((rest.trim().to_owned(), at));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} printed no `{prefix}` line within {timeout:?}",
                        self.name
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("{} closed its stdout before printing `{prefix}`", self.name)
                }
            }
        }
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The last `n` stdout lines of a child that has exited, that nothing has read yet.
    pub fn last_printed(&self, n: usize) -> Vec<String> {
        let Some(rx) = self.lines.as_ref() else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        // The pipe closed with the exit: the reader thread is passing on what was left.
        while let Ok((_, line)) = rx.recv_timeout(Duration::from_secs(1)) {
            lines.push(line);
        }
        lines.split_off(lines.len().saturating_sub(n))
    }

    /// SIGTERM, then waits for the exit (at most `timeout`, then SIGKILL); returns the
    /// status and how long the orderly stop took.
    pub fn terminate(mut self, timeout: Duration) -> Result<(ExitStatus, Duration)> {
        let child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("{} already stopped", self.name))?;
        let started = Instant::now();
        signal(self.pid, "TERM")?;
        match wait_or_kill(self.pid, child, timeout) {
            Some(status) => Ok((status?, started.elapsed())),
            None => bail!("{} did not stop within {timeout:?} of SIGTERM", self.name),
        }
    }

    /// [`Proc::terminate`] for a wrapper such as `perf record -- sessiond`: SIGTERM goes to
    /// the wrapper's children first (perf does not always pass it on), then to the wrapper.
    pub fn terminate_wrapped(self, timeout: Duration) -> Result<(ExitStatus, Duration)> {
        let path = format!("/proc/{0}/task/{0}/children", self.pid);
        let children = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            signal(pid, "TERM")?;
        }
        self.terminate(timeout)
    }

    /// Resident set size in bytes (`VmRSS`).
    pub fn rss(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS in {path}"))?;
        Ok(kib * 1024)
    }
}

/// How long a dropped [`Proc`] has to stop after SIGTERM before it is killed.
const DROP_GRACE: Duration = Duration::from_secs(5);

impl Drop for Proc {
    /// SIGTERM, then SIGKILL if it has not exited within [`DROP_GRACE`]: an orderly stop
    /// where one is quick, so that builds instrumented for profile-guided optimisation
    /// write their profiles (`pgo.rs`), and never an unbounded wait.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) && signal(self.pid, "TERM").is_ok() {
            wait_or_kill(self.pid, child, DROP_GRACE);
        } else {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reaps `child` (process `pid`) if it exits within `timeout`; else SIGKILLs it, reaps it
/// and returns `None`.
fn wait_or_kill(
    pid: u32,
    mut child: Child,
    timeout: Duration,
) -> Option<std::io::Result<ExitStatus>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(status) => Some(status),
        Err(_) => {
            let _ = signal(pid, "KILL");
            let _ = rx.recv();
            None
        }
    }
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed: {status}");
    }
    Ok(())
}

/// How much of process `pid`'s resident memory is on transparent huge pages, from
/// `/proc/<pid>/smaps_rollup`: a lookup among a million sessions costs a TLB miss on
/// every request where their memory is not, so a window's cost can turn on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HugePages {
    /// Resident bytes (`Rss`).
    pub resident: u64,
    /// Of them, anonymous memory on huge pages (`AnonHugePages`).
    pub huge: u64,
}

impl HugePages {
    pub fn of(pid: u32) -> Result<HugePages> {
        let path = format!("/proc/{pid}/smaps_rollup");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        HugePages::parse(&text).ok_or_else(|| anyhow!("no Rss or AnonHugePages in {path}"))
    }

    fn parse(rollup: &str) -> Option<HugePages> {
        let kib = |name: &str| -> Option<u64> {
            let value = rollup
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
            value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        };
        Some(HugePages {
            resident: kib("Rss")? * 1024,
            huge: kib("AnonHugePages")? * 1024,
        })
    }

    /// `"<name>: 812 MiB resident, 94% on huge pages"`, or why it is not known.
    pub fn note(name: &str, pid: u32) -> String {
        match HugePages::of(pid) {
            Ok(h) => format!(
                "{name}: {:.0} MiB resident, {:.0}% on huge pages",
                h.resident as f64 / (1024.0 * 1024.0),
                100.0 * h.huge as f64 / h.resident.max(1) as f64
            ),
            Err(e) => format!("{name}: huge pages unknown ({e})"),
        }
    }
}

/// CPU time (utime + stime, all threads) of process `pid`, from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    cpu_times(pid).map(|t| t.user + t.system)
}

/// CPU time of a process, all threads, split into user space and the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: Duration,
    pub system: Duration,
}

/// [`CpuTimes`] of process `pid`, from `/proc/<pid>/stat` (utime and stime).
pub fn cpu_times(pid: u32) -> Result<CpuTimes> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces: the
    // first is field 3 (state), so utime (14) and stime (15) are the 12th and 13th.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let time = |i: usize| -> Result<Duration> {
        let ticks: u64 = fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("unexpected {path}"))?;
        Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
    };
    Ok(CpuTimes {
        user: time(11)?,
        system: time(12)?,
    })
}

/// CPU time the host gave to other machines while this one's CPUs had work (`steal` in
/// `/proc/stat`), summed over the CPUs, since boot. On a shared VM it is time a closed
/// loop could not run, whatever the server does.
pub fn stolen_time() -> Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = steal_ticks(&text).ok_or_else(|| anyhow!("no steal time in /proc/stat"))?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// CPU time this machine's CPUs spent running anything (`user + nice + system` in
/// `/proc/stat`), summed over the CPUs, since boot. Less what the measured processes took
/// over a window, it is what everything else on the machine took: another program that
/// ran during a measurement shows there.
pub fn busy_time() -> Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = busy_ticks(&text).ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// `user + nice + system`, the first three numbers of `/proc/stat`'s `cpu` line.
fn busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let mut n = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>().ok());
    n.next()??.checked_add(n.next()??)?.checked_add(n.next()??)
}

/// The `steal` column (the eighth number) of `/proc/stat`'s `cpu` line.
fn steal_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

/// Context switches of a process, summed over its threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Switches {
    /// The thread gave up its CPU to wait (for a lock, a wake-up, I/O).
    pub voluntary: u64,
    /// The thread was preempted.
    pub involuntary: u64,
}

impl Switches {
    /// The switches from `self` to `later`.
    pub fn until(self, later: Switches) -> Switches {
        Switches {
            voluntary: later.voluntary.saturating_sub(self.voluntary),
            involuntary: later.involuntary.saturating_sub(self.involuntary),
        }
    }

    pub fn plus(self, other: Switches) -> Switches {
        Switches {
            voluntary: self.voluntary + other.voluntary,
            involuntary: self.involuntary + other.involuntary,
        }
    }
}

/// The context switches of process `pid`'s threads alive now, from
/// `/proc/<pid>/task/*/status` (a thread that ended takes its count with it).
pub fn context_switches(pid: u32) -> Result<Switches> {
    let dir = format!("/proc/{pid}/task");
    let mut total = Switches::default();
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("status");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            let count = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                total.voluntary += count(v);
            } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                total.involuntary += count(v);
            }
        }
    }
    Ok(total)
}

/// `CLK_TCK`, the unit of `/proc/<pid>/stat` times (100 on Linux unless `getconf` differs).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// A `perf record` of one process while a load window runs.
pub struct Perf {
    proc: Proc,
    out: PathBuf,
}

impl Perf {
    /// Starts sampling `pid` for `length`, into `<dir>/<name>.data`, with call graphs
    /// unwound from the debug info: the release profile keeps no frame pointers, so `-g`
    /// stacks stop at the first Rust frame.
    pub fn record(dir: &Path, name: &str, pid: u32, length: Duration) -> Result<Perf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let out = dir.join(format!("{name}.data"));
        let perf = find_program("perf").ok_or_else(|| anyhow!("--perf needs `perf` on PATH"))?;
        let mut cmd = Command::new(perf);
        cmd.args(["record", "-q", "-F", "499", "--call-graph", "dwarf", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(&out)
            .arg("--")
            .arg("sleep")
            .arg(format!("{:.1}", length.as_secs_f64()));
        Ok(Perf {
            proc: Proc::spawn("perf", cmd)?,
            out,
        })
    }

    /// Waits for the recording to end; a line saying where it is.
    pub fn finish(mut self) -> Result<String> {
        let mut child = self
            .proc
            .child
            .take()
            .ok_or_else(|| anyhow!("perf already stopped"))?;
        let status = child.wait().context("waiting for perf")?;
        if !status.success() {
            bail!("perf record failed: {status}");
        }
        Ok(format!("profile: perf report -i {}", self.out.display()))
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released), for servers that cannot bind
/// port 0 and report it (redis-server).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Finds `program` on `PATH` or in the sbin directories a non-root `PATH` may lack.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Runs `cargo build -q --locked` in the workspace, with the arguments and environment
/// `configure` adds (the `cargo` that runs this benchmark, if it does).
pub fn cargo_build(configure: impl FnOnce(&mut Command)) -> Result<()> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args(["build", "-q", "--locked"]);
    configure(&mut cmd);
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Builds `sessiond` with the same profile as this benchmark (release for real runs, the
/// dev profile for a smoke pass under `cargo run` without `--release`) and returns its
/// path. `cargo build` is a no-op when the binary is up to date. `--locked`: whatever
/// cargo built this benchmark with is what sessiond gets.
pub fn build_sessiond() -> Result<PathBuf> {
    let release = !cfg!(debug_assertions);
    cargo_build(|cmd| {
        cmd.args(["-p", "sessiond"]);
        if release {
            cmd.arg("--release");
        }
    })?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("sessiond");
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that prints `ready`, runs `on_term` on SIGTERM, and otherwise waits.
    fn shell(on_term: &str) -> Proc {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "trap '{on_term}' TERM; echo ready; while :; do sleep 0.05; done"
        ));
        let mut proc = Proc::spawn("sh", cmd).unwrap();
        proc.wait_for_line("ready", Duration::from_secs(10))
            .unwrap();
        proc
    }

    fn alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn a_dropped_guard_lets_its_process_stop_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("stopped");
        let proc = shell(&format!("echo stopped > {}; exit 0", mark.display()));
        let pid = proc.pid;
        drop(proc);
        assert!(!alive(pid), "reaped");
        assert_eq!(
            std::fs::read_to_string(&mark).unwrap(),
            "stopped\n",
            "its SIGTERM handler ran, as an instrumented build's exit writes its profile"
        );
    }

    #[test]
    fn a_dropped_guard_kills_a_process_that_ignores_sigterm() {
        let proc = shell("");
        let pid = proc.pid;
        drop(proc);
        assert!(!alive(pid), "killed after the grace and reaped");
    }

    #[test]
    fn steal_is_the_eighth_number_of_the_cpu_line() {
        let stat = "cpu  4171792 2760 1775447 3175950 138662 0 751384 7129 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(steal_ticks(stat), Some(7129));
        assert_eq!(steal_ticks("cpu0 1 2 3"), None);
        assert_eq!(steal_ticks("cpu  1 2 3"), None, "an older kernel's line");
        assert_eq!(busy_ticks(stat), Some(4171792 + 2760 + 1775447));
        assert_eq!(busy_ticks("cpu  1 2"), None);
        assert_eq!(busy_ticks("cpu0 1 2 3"), None);
    }

    #[test]
    fn huge_pages_are_read_from_the_rollup() {
        let rollup = "55d0c0a00000-7ffd5e1f4000 ---p 00000000 00:00 0 [rollup]\nRss: 1024 kB\nPss: 1000 kB\nAnonymous: 900 kB\nAnonHugePages: 512 kB\n";
        assert_eq!(
            HugePages::parse(rollup),
            Some(HugePages {
                resident: 1024 * 1024,
                huge: 512 * 1024
            })
        );
        assert_eq!(HugePages::parse("Rss: 1024 kB\n"), None, "no AnonHugePages");
        let me = HugePages::of(std::process::id()).unwrap();
        assert!(me.resident > 0 && me.huge <= me.resident, "{me:?}");
        assert!(HugePages::note("me", u32::MAX).contains("unknown"));
    }

    #[test]
    fn a_thread_that_waits_adds_a_voluntary_switch() {
        let me = std::process::id();
        let before = context_switches(me).unwrap();
        // Waiting on a channel nobody sends on gives up the CPU.
        let (_tx, rx) = mpsc::channel::<()>();
        let _ = rx.recv_timeout(Duration::from_millis(5));
        let after = context_switches(me).unwrap();
        assert!(
            before.until(after).voluntary >= 1,
            "{before:?} then {after:?}"
        );
        assert!(context_switches(u32::MAX).is_err(), "no such process");
    }
}
