//! The machine the numbers come from, and whether anyone else was compiling on it: the
//! benchmark waits for no `rustc`/`cargo` to be running before a real run, and a monitor
//! notes every phase that overlapped one anyway.

use std::collections::BTreeSet;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use sessiond_core::Clock as _;

/// What the results were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// UTC, when the run started.
    pub date: String,
    pub nproc: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub cpu: String,
}

impl Machine {
    pub fn read() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            // The one clock read here goes through the project's clock module.
            date: sessiond_core::SystemClock.now().to_rfc3339(),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu,
        }
    }
}

/// Variables that change how a server allocates or runs without any flag of its own, and
/// that every server the benchmark starts inherits from its environment.
const TUNING_PREFIXES: [&str; 5] = [
    "MIMALLOC_",
    "MALLOC_",
    "GLIBC_TUNABLES",
    "LD_PRELOAD",
    "TOKIO_",
];

/// `NAME=value` of each variable in `vars` (`std::env::vars_os`, since `vars` panics on one
/// that is not UTF-8) that would change the servers' figures (see [`TUNING_PREFIXES`]),
/// sorted, so that a run made with one says so.
pub fn tuning_environment(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<String> {
    let mut found: Vec<String> = vars
        .into_iter()
        .map(|(name, value)| (name.to_string_lossy().into_owned(), value))
        .filter(|(name, _)| TUNING_PREFIXES.iter().any(|p| name.starts_with(p)))
        .map(|(name, value)| format!("{name}={}", value.to_string_lossy()))
        .collect();
    found.sort();
    found
}

/// `pid comm` of every running `rustc` or `cargo` that is not one of this process's
/// ancestors (the `cargo run` that started the benchmark does not count).
pub fn builds_running() -> Vec<String> {
    let ancestors = ancestors();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if ancestors.contains(&pid) {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if comm == "rustc" || comm == "cargo" {
            found.push(format!("{pid} {comm}"));
        }
    }
    found
}

fn ancestors() -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let mut pid = std::process::id();
    // Bounded: a process tree is never this deep.
    for _ in 0..64 {
        out.insert(pid);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        match parent {
            Some(p) if p > 1 => pid = p,
            _ => break,
        }
    }
    out
}

/// Waits until no build has been seen for `quiet_for`, at most `max_wait`; returns whether
/// the machine became quiet.
pub async fn wait_for_quiet(quiet_for: Duration, max_wait: Duration) -> bool {
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    let mut said = false;
    loop {
        let builds = builds_running();
        if !builds.is_empty() {
            quiet_since = Instant::now();
            if !said {
                println!(
                    "waiting for other builds to finish (at most {max_wait:?}): {}",
                    builds.join(", ")
                );
                said = true;
            }
        } else if quiet_since.elapsed() >= quiet_for {
            return true;
        }
        if started.elapsed() >= max_wait {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Notes, once a second, which phase of the run overlapped a build. Stops when dropped.
pub struct Monitor {
    phase: Arc<Mutex<String>>,
    overlaps: Arc<Mutex<Vec<String>>>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    pub fn start() -> Monitor {
        let phase = Arc::new(Mutex::new(String::from("start")));
        let overlaps = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn({
            let (phase, overlaps) = (phase.clone(), overlaps.clone());
            move || {
                // Waiting on the stop channel doubles as the one-second tick.
                while let Err(RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_secs(1))
                {
                    let builds = builds_running();
                    if builds.is_empty() {
                        continue;
                    }
                    let now = phase.lock().map(|p| p.clone()).unwrap_or_default();
                    if let Ok(mut seen) = overlaps.lock()
                        && !seen.contains(&now)
                    {
                        seen.push(now);
                    }
                }
            }
        });
        Monitor {
            phase,
            overlaps,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Names what the run is doing now.
    pub fn phase(&self, name: &str) {
        if let Ok(mut p) = self.phase.lock() {
            name.clone_into(&mut p);
        }
    }

    /// The phases during which a `rustc` or `cargo` was seen running.
    pub fn overlaps(&self) -> Vec<String> {
        self.overlaps.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
