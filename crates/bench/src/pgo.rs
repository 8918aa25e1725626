//! Profile-guided builds (PGO) of what is measured: sessiond, and this benchmark's own
//! servers (the baseline, the floor and the plain session server), each trained on the requests
//! the benchmark sends. Both sides of every ratio are built the same way, so a ratio
//! compares code with code, not one compiler setting with another.
//!
//! [`build`] does, under `target/pgo/`:
//! 1. `cargo build --release -p sessiond -p sessiond-bench` with `-Cprofile-generate`, into
//!    `gen/`;
//! 2. training: that sessiond-bench runs every scenario as a smoke pass (`all --smoke`,
//!    [`TRAIN_SESSIONS`] sessions, [`TRAIN_SECONDS`] per window) against that sessiond:
//!    creates, validate and forward auth with random tokens, the touch flush, an orderly
//!    stop and a restart, durable creates and the floor, Redis mode and revocation. Code
//!    a profile never saw running is laid out and optimised as cold, so each side of each
//!    ratio has to be trained. Every process writes its profile when it exits (the
//!    process guards stop it with SIGTERM first, `procs.rs`);
//! 3. `llvm-profdata merge`, with the `llvm-profdata` of rustc's own LLVM version;
//! 4. `cargo build --release` of both with `-Cprofile-use`, into `use/`.
//!
//! Steps 2 and 3 are skipped while the instrumented binaries are older than the profile
//! made from them. The profile's file name changes with each training, so step 4 rebuilds
//! every crate against a new profile and none against an old one.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};
use sessiond_core::clock::{Clock, SystemClock};

use crate::procs::{cargo_build, find_program, target_dir};

/// Sessions the training run creates, validates and restarts with.
pub const TRAIN_SESSIONS: u64 = 100_000;
/// Seconds of load per training window.
pub const TRAIN_SECONDS: u64 = 3;
/// Training runs tried before the build fails: a second, after a first that failed, keeps
/// one flaky scenario from failing the build, and says why the first failed.
const TRAIN_ATTEMPTS: u32 = 2;

/// What is measured, and how it was built.
#[derive(Debug)]
pub struct Build {
    /// The sessiond binary.
    pub sessiond: PathBuf,
    /// The sessiond-bench binary whose `baseline-server` and `plain-server` are started.
    pub servers: PathBuf,
    /// One line for the report, e.g. "release, profile-guided (...)".
    pub description: String,
}

/// Builds sessiond and the benchmark's servers with PGO (see the module docs).
pub fn build() -> Result<Build> {
    let started = Instant::now();
    let toolchain = Toolchain::find()?;
    let dir = target_dir().join("pgo");
    let raw = dir.join("raw");
    let gen_dir = dir.join("gen");
    println!("PGO: building sessiond and sessiond-bench instrumented ...");
    let gen_bin = toolchain.build(&gen_dir, &format!("-Cprofile-generate={}", raw.display()))?;
    let gen_sessiond = gen_bin.join("sessiond");
    let gen_bench = gen_bin.join("sessiond-bench");
    let (profile, failed_once) = match current_profile(&dir, &[&gen_sessiond, &gen_bench])? {
        Some(profile) => {
            println!(
                "PGO: the binaries are unchanged; reusing {}",
                profile.display()
            );
            (profile, None)
        }
        None => train(&dir, &raw, &gen_sessiond, &gen_bench, &toolchain.profdata)?,
    };
    println!("PGO: building sessiond and sessiond-bench with the profile ...");
    let use_bin = toolchain.build(
        &dir.join("use"),
        &format!("-Cprofile-use={}", profile.display()),
    )?;
    println!("PGO: done in {:.0} s", started.elapsed().as_secs_f64());
    if let Some(why) = failed_once {
        // Last, where CI's shortened output still shows it: a flaky scenario is a bug to find.
        println!("PGO: built from the second training; the first: {why}");
    }
    Ok(Build {
        sessiond: use_bin.join("sessiond"),
        servers: use_bin.join("sessiond-bench"),
        description: format!(
            "release, profile-guided: sessiond and the benchmark's baseline, floor and plain \
             servers alike, trained on `sessiond-bench all --smoke --sessions {TRAIN_SESSIONS} \
             --duration {TRAIN_SECONDS}` (crates/bench/src/pgo.rs)"
        ),
    })
}

/// The host rustc builds for, and the `llvm-profdata` that reads its profiles.
struct Toolchain {
    host: String,
    profdata: PathBuf,
}

impl Toolchain {
    /// The `llvm-profdata` of rustc's LLVM major version: rustup's `llvm-tools` component in
    /// rustc's sysroot, else `llvm-profdata-<major>` or `llvm-profdata` on `PATH`. A
    /// profile from another major version is one rustc cannot read.
    fn find() -> Result<Toolchain> {
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let version = output(Command::new(&rustc).arg("-vV"))?;
        let major =
            llvm_major(&version, "LLVM version: ").context("rustc -vV names no LLVM version")?;
        let host = version
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .context("rustc -vV names no host")?
            .trim()
            .to_owned();
        let sysroot = output(Command::new(&rustc).args(["--print", "sysroot"]))?;
        let mut candidates = vec![
            PathBuf::from(sysroot.trim())
                .join("lib/rustlib")
                .join(&host)
                .join("bin/llvm-profdata"),
        ];
        candidates.extend(find_program(&format!("llvm-profdata-{major}")));
        candidates.extend(find_program("llvm-profdata"));
        for candidate in candidates.into_iter().filter(|c| c.is_file()) {
            let Ok(text) = output(Command::new(&candidate).arg("--version")) else {
                continue;
            };
            if llvm_major(&text, "LLVM version ") == Some(major) {
                return Ok(Toolchain {
                    host,
                    profdata: candidate,
                });
            }
        }
        bail!(
            "no llvm-profdata of LLVM {major}, rustc's: `rustup component add llvm-tools` \
             (or install llvm-{major}'s)"
        )
    }

    /// `cargo build --release --locked -p sessiond -p sessiond-bench` into `target`, with
    /// `rustflags` added to the caller's; returns the directory of the binaries. The build
    /// names the host as its target, so the flags reach what is measured and not the build
    /// scripts and procedural macros.
    fn build(&self, target: &Path, rustflags: &str) -> Result<PathBuf> {
        let flags = match std::env::var("RUSTFLAGS") {
            Ok(given) if !given.trim().is_empty() => format!("{given} {rustflags}"),
            _ => rustflags.to_owned(),
        };
        cargo_build(|cmd| {
            cmd.args(["--release", "--target", &self.host])
                .args(["-p", "sessiond", "-p", "sessiond-bench"])
                .env("CARGO_TARGET_DIR", target)
                .env("RUSTFLAGS", flags);
        })?;
        Ok(target.join(&self.host).join("release"))
    }
}

/// The profile made from `binaries` as they are now, if there is one: the newest
/// `sessiond-*.profdata` in `dir`, when it is newer than each of them.
fn current_profile(dir: &Path, binaries: &[&Path]) -> Result<Option<PathBuf>> {
    let Some((made, profile)) = profiles(dir)?.into_iter().max() else {
        return Ok(None);
    };
    for binary in binaries {
        if modified(binary)? > made {
            return Ok(None);
        }
    }
    Ok(Some(profile))
}

/// Every `sessiond-*.profdata` in `dir`, with when it was written.
fn profiles(dir: &Path) -> Result<Vec<(SystemTime, PathBuf)>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(found);
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("sessiond-") && name.ends_with(".profdata") {
            found.push((modified(&path)?, path));
        }
    }
    Ok(found)
}

fn modified(path: &Path) -> Result<SystemTime> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading when {} was written", path.display()))
}

/// Step 2 and 3: runs the instrumented binaries, then merges what they wrote into a new
/// profile (the old ones are removed) and returns its path, with why the first training
/// failed if it took a second ([`TRAIN_ATTEMPTS`]).
fn train(
    dir: &Path,
    raw: &Path,
    sessiond: &Path,
    bench: &Path,
    profdata: &Path,
) -> Result<(PathBuf, Option<String>)> {
    let log = dir.join("train.log");
    println!(
        "PGO: training on every scenario's smoke pass, {TRAIN_SESSIONS} sessions (log: {}) ...",
        log.display()
    );
    let mut failed = None;
    for attempt in 1..=TRAIN_ATTEMPTS {
        if raw.exists() {
            std::fs::remove_dir_all(raw).with_context(|| format!("clearing {}", raw.display()))?;
        }
        let status = run_training(dir, &log, sessiond, bench)?;
        if status.success() {
            break;
        }
        // CI keeps only the end of what it printed: the training's own last lines say why.
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let why = format!(
            "the training run failed ({status}); the end of its log:\n{}",
            last_lines(&text, FAILED_TRAINING_LINES)
        );
        if attempt == TRAIN_ATTEMPTS {
            bail!("{why}\nPGO: see {}", log.display());
        }
        println!("PGO: {why}\nPGO: training once more ...");
        failed = Some(why);
    }
    let raws: Vec<PathBuf> = std::fs::read_dir(raw)
        .with_context(|| format!("reading {}", raw.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "profraw"))
        .collect();
    if raws.is_empty() {
        bail!("the training run wrote no profile into {}", raw.display());
    }
    for (_, old) in profiles(dir)? {
        std::fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    let stamp = SystemClock.now().as_millis() / 1000;
    let profile = dir.join(format!("sessiond-{stamp}.profdata"));
    let status = Command::new(profdata)
        .arg("merge")
        .arg("-o")
        .arg(&profile)
        .args(&raws)
        .status()
        .with_context(|| format!("running {}", profdata.display()))?;
    if !status.success() {
        bail!("{} merge failed: {status}", profdata.display());
    }
    println!(
        "PGO: merged {} profiles into {}",
        raws.len(),
        profile.display()
    );
    Ok((profile, failed))
}

/// One training run of `bench` against `sessiond`, its output into `log`.
fn run_training(dir: &Path, log: &Path, sessiond: &Path, bench: &Path) -> Result<ExitStatus> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Command::new(bench)
        .args(["all", "--smoke"])
        .arg("--sessions")
        .arg(TRAIN_SESSIONS.to_string())
        .arg("--duration")
        .arg(TRAIN_SECONDS.to_string())
        .arg("--sessiond")
        .arg(sessiond)
        .arg("--json")
        .arg(dir.join("train.json"))
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("running the training")
}

/// Lines of a failed training's log printed with the failure.
const FAILED_TRAINING_LINES: usize = 30;

/// The last `n` lines of `text` (`n` at least 1), or all of it when it has fewer.
fn last_lines(text: &str, n: usize) -> &str {
    let text = text.trim_end();
    match text.rmatch_indices('\n').nth(n.saturating_sub(1)) {
        Some((at, _)) => &text[at + 1..],
        None => text,
    }
}

/// The major version after `prefix` in `text` ("LLVM version: 22.1.2" gives 22).
fn llvm_major(text: &str, prefix: &str) -> Option<u32> {
    let at = text.find(prefix)? + prefix.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd.get_program(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_llvm_major_version_is_read_from_rustc_and_from_llvm_profdata() {
        let rustc = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\nLLVM version: 22.1.2\n";
        assert_eq!(llvm_major(rustc, "LLVM version: "), Some(22));
        let rustup = "LLVM (http://llvm.org/):\n  LLVM version 22.1.2-rust-1.95.0-stable\n  Optimized build.\n";
        assert_eq!(llvm_major(rustup, "LLVM version "), Some(22));
        let debian = "Debian LLVM version 14.0.6\n\n  Optimized build.\n";
        assert_eq!(llvm_major(debian, "LLVM version "), Some(14));
        assert_eq!(llvm_major("rustc 1.95.0\n", "LLVM version: "), None);
        assert_eq!(llvm_major("LLVM version: x", "LLVM version: "), None);
    }

    #[test]
    fn a_failed_training_shows_the_end_of_its_log() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb\nc", 3), "a\nb\nc");
        assert_eq!(last_lines("a\nb\nc\n", 30), "a\nb\nc");
        assert_eq!(last_lines("", 30), "");
    }

    #[test]
    fn a_profile_counts_only_while_it_is_newer_than_the_binaries() {
        let dir = std::env::temp_dir().join(format!("sessiond-pgo-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let binary = dir.join("sessiond");
        std::fs::write(&binary, b"old").unwrap();
        assert_eq!(
            current_profile(&dir, &[&binary]).unwrap(),
            None,
            "no profile yet"
        );
        let profile = dir.join("sessiond-1.profdata");
        std::fs::write(&profile, b"profile").unwrap();
        let set = |path: &Path, secs: u64| {
            let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        };
        set(&binary, 1_000);
        set(&profile, 2_000);
        assert_eq!(
            current_profile(&dir, &[&binary]).unwrap(),
            Some(profile.clone())
        );
        let other = dir.join("sessiond-bench");
        std::fs::write(&other, b"old").unwrap();
        set(&other, 1_500);
        assert_eq!(
            current_profile(&dir, &[&binary, &other]).unwrap(),
            Some(profile.clone())
        );
        set(&other, 3_000);
        assert_eq!(
            current_profile(&dir, &[&binary, &other]).unwrap(),
            None,
            "the second binary rebuilt since"
        );
        set(&binary, 3_000);
        assert_eq!(
            current_profile(&dir, &[&binary]).unwrap(),
            None,
            "rebuilt since"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A stand-in for the instrumented sessiond-bench: a shell script running `body`.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_training_that_fails_once_is_run_again_and_its_first_failure_told() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        let tried = dir.path().join("tried");
        // Fails the first time, saying why; the second time writes a profile.
        let bench = script(
            dir.path(),
            "bench",
            &format!(
                "if [ ! -e {tried} ]; then touch {tried}; echo 'scenario X: the server said 500'; \
                 exit 1; fi; mkdir -p {raw}; echo profile > {raw}/1.profraw",
                tried = tried.display(),
                raw = raw.display()
            ),
        );
        let profdata = script(dir.path(), "profdata", "exit 0");
        let (profile, failed) =
            train(dir.path(), &raw, Path::new("sessiond"), &bench, &profdata).unwrap();
        assert!(profile.starts_with(dir.path()));
        let failed = failed.expect("the first failure is told");
        assert!(
            failed.contains("scenario X: the server said 500"),
            "{failed}"
        );

        // Failing every time fails the build, with the log's end in the error.
        let bench = script(dir.path(), "bench", "echo 'scenario Y: refused'; exit 1");
        let err = train(dir.path(), &raw, Path::new("sessiond"), &bench, &profdata)
            .expect_err("two failures fail");
        assert!(
            format!("{err:#}").contains("scenario Y: refused"),
            "{err:#}"
        );
    }
}
