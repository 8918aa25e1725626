//! Small probes of the machine: allocated disk usage, process I/O counters, filesystem type.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

/// Allocated bytes under `path`, as `du` counts them (blocks, not apparent length).
pub fn du(path: &Path) -> Result<u64> {
    let meta = fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let mut total = allocated(&meta);
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            total += du(&entry?.path())?;
        }
    }
    Ok(total)
}

#[cfg(unix)]
fn allocated(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

#[cfg(not(unix))]
fn allocated(meta: &fs::Metadata) -> u64 {
    meta.len()
}

/// Bytes this process (all its threads) has passed to `write`-family syscalls (`wchar` in
/// `/proc/self/io`); `None` where the kernel does not expose it.
///
/// This is the engine-level write volume. `write_bytes` (bytes sent to the block layer) is not
/// used: it is charged per page-cache folio dirtied, and after the page cache is dropped a 4 KiB
/// `pwrite` into a large folio was seen to be charged as many times its size.
pub fn written_bytes() -> Option<u64> {
    let text = fs::read_to_string("/proc/self/io").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU time this process (all its threads: an engine's background flushes and compactions
/// too) has used, user and system, in seconds: the kernel's process CPU clock
/// (`CLOCK_PROCESS_CPUTIME_ID`), to the nanosecond.
pub fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Filesystem type and source of the mount holding `path`, from `/proc/mounts`.
pub fn filesystem_of(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (source, target, fstype) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(target)
                .then(|| (target.len(), format!("{fstype} ({source} on {target})")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, desc)| desc)
}

/// Drops the kernel's clean page cache (Linux, root only) so the next reads come from disk.
pub fn drop_page_cache() -> Result<()> {
    fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("writing /proc/sys/vm/drop_caches (needs root on Linux)")
}

/// Reads every file under `path` front to back (what a server could do before its scan to turn
/// the engine's random page reads into one sequential read); returns the bytes read.
pub fn read_all(path: &Path) -> Result<u64> {
    use std::io::Read as _;
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mut total = 0;
        for entry in fs::read_dir(path)? {
            total += read_all(&entry?.path())?;
        }
        return Ok(total);
    }
    if !meta.is_file() {
        return Ok(0);
    }
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}
