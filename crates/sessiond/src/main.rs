//! The `sessiond` binary: `serve` runs the server; `sessions` and `stats` are the admin
//! CLI. It only parses arguments and calls into the library crates.

mod cli;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sessiond_core::SystemClock;
use sessiond_server::bootstrap::{self, SERVER_URL_FILE};
use sessiond_server::config::{self, Overrides, Settings};

#[derive(Debug, Parser)]
#[command(name = "sessiond", version, about = "Session management server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (no configuration needed: embedded store in the data dir).
    Serve(ServeArgs),
    #[command(flatten)]
    Admin(cli::AdminCommand),
    /// Read a password from standard input and print its argon2id hash for the users file.
    HashPassword,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "SESSIOND_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:7480 (port 0 picks a free one).
    #[arg(long)]
    listen: Option<String>,
    /// Where the embedded store and generated secrets live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// mimalloc rather than glibc's malloc: after a million sessions glibc's free lists are
/// scattered over the heap and every small allocation on the request path misses the cache
/// (profiled: `_int_malloc` was 14% of forward auth's CPU). The figures of both are in
/// docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off while the store loads, and back as they were once it has.
///
/// A load writes the whole population into fresh memory at once. With huge pages (which
/// mimalloc asks for) each first touch makes the kernel find and zero 2 MiB, and on a VM
/// the host must back all of it. Measured on the benchmark machine with 1M sessions:
/// restarts took a median 2.57 s with huge pages and 1.92 s without (six each, by
/// `MIMALLOC_ALLOW_THP`), and 1.50-1.62 s with this guard (docs/benchmarks.md). What is
/// allocated while serving still gets them.
struct HugePagesOff {
    /// Whether this guard turned them off, so turns them back on. Not when they were off
    /// already (whoever started us chose that) or the kernel has no such switch.
    #[cfg(target_os = "linux")]
    turned_off: bool,
}

impl HugePagesOff {
    fn during_load() -> HugePagesOff {
        #[cfg(target_os = "linux")]
        {
            use rustix::thread::{
                disable_transparent_huge_pages, transparent_huge_pages_are_disabled,
            };
            // Best effort: a kernel without the prctl loads the same, only slower.
            let turned_off = transparent_huge_pages_are_disabled() == Ok(false)
                && disable_transparent_huge_pages(true).is_ok();
            HugePagesOff { turned_off }
        }
        #[cfg(not(target_os = "linux"))]
        HugePagesOff {}
    }
}

impl Drop for HugePagesOff {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.turned_off {
            let _ = rustix::thread::disable_transparent_huge_pages(false);
        }
    }
}

/// Descriptors kept for everything but client connections: the store's files, the
/// listener, Redis connections, the log.
const FILES_BESIDES_CONNECTIONS: u64 = 256;

/// Raises this process's open-file limit to its hard limit, as Go's runtime and nginx's
/// `worker_rlimit_nofile` do, and returns how many of `max_connections` it then allows. A
/// connection past the limit would fail its accept (`EMFILE`) instead of waiting its turn
/// behind `[http] max_connections`.
fn connections_the_open_file_limit_allows(max_connections: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    connections_within(max_connections, limit.current)
}

/// `max_connections`, lowered to fit `open_files` descriptors (`None`: no limit).
fn connections_within(max_connections: usize, open_files: Option<u64>) -> usize {
    let Some(open_files) = open_files else {
        return max_connections;
    };
    let room = open_files.saturating_sub(FILES_BESIDES_CONNECTIONS).max(1);
    max_connections.min(usize::try_from(room).unwrap_or(usize::MAX))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessiond: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => match runtime.block_on(serve(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sessiond: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::HashPassword => match hash_password() {
            Ok(hash) => {
                println!("{hash}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sessiond: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Admin(cmd) => {
            let code = runtime.block_on(cli::run(cmd));
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SESSIOND_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn")
            }),
        )
        .with_writer(std::io::stderr);
    // Colours only for a person at a terminal (who can still turn them off with NO_COLOR):
    // under systemd, in a container or in a file, escape codes are noise in every line.
    if !std::io::stderr().is_terminal() {
        log = log.with_ansi(false);
    }
    log.init();
    let env = config::environment(std::env::vars_os())?;
    let flags = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
    };
    let settings = Settings::load(args.config.as_deref(), &env, &flags)?;
    let mut limits = settings.http;
    let allowed = connections_the_open_file_limit_allows(limits.max_connections);
    if allowed < limits.max_connections {
        tracing::warn!(
            max_connections = limits.max_connections,
            allowed,
            "the open-file limit leaves room for fewer connections than \
             http.max_connections; serving at most `allowed` at once; raise the limit \
             (systemd LimitNOFILE=, ulimit -n)"
        );
        limits.max_connections = allowed;
    }
    let secrets = bootstrap::prepare(&settings)?;
    for (what, path) in &secrets.generated {
        println!("sessiond: {what} in {}", path.display());
    }
    let users = sessiond_server::open_directory(&settings)?;
    let huge_pages_off = HugePagesOff::during_load();
    let store = sessiond_server::open_store(&settings)
        .await
        .context("opening the session store")?;
    // The embedded store reads its sessions back while serving starts: huge pages come back
    // once it is done, and a failed load stops the server (it cannot tell what it holds).
    tokio::spawn({
        let store = store.clone();
        async move {
            let _ = store.loaded().await;
            drop(huge_pages_off);
        }
    });
    let shutdown = {
        let store = store.clone();
        async move {
            tokio::select! {
                () = shutdown_signal() => {}
                Err(e) = store.loaded() => {
                    tracing::error!(error = %e, "the session store could not be loaded; stopping");
                }
            }
        }
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    bootstrap::write_private(
        &settings.data_dir.join(SERVER_URL_FILE),
        &format!("{url}\n"),
    )?;
    let directory = users
        .clone()
        .map(|d| d as std::sync::Arc<dyn sessiond_server::directory::Directory>);
    let state = sessiond_server::state(
        &settings,
        secrets,
        store.clone(),
        directory,
        std::sync::Arc::new(SystemClock),
    );
    println!(
        "sessiond: store {} in {}",
        state.service.store.kind(),
        settings.data_dir.display()
    );
    println!("sessiond: listening on {url}");
    if let Some(users) = &users {
        println!("sessiond: users from {}", users.path().display());
    }
    sessiond_server::serve(listener, state, users, limits, shutdown).await?;
    store.loaded().await.context("loading the session store")?;
    println!("sessiond: stopped");
    Ok(())
}

/// One line from stdin (the trailing newline removed), hashed with argon2id.
fn hash_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    anyhow::ensure!(
        !password.is_empty(),
        "no password on stdin (try: echo -n 'secret' | sessiond hash-password)"
    );
    sessiond_server::directory::hash_password(password).map_err(anyhow::Error::msg)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::{FILES_BESIDES_CONNECTIONS, connections_within};

    #[test]
    fn connections_fit_within_the_open_file_limit() {
        assert_eq!(connections_within(8192, None), 8192);
        assert_eq!(connections_within(8192, Some(1 << 20)), 8192);
        assert_eq!(
            connections_within(8192, Some(1024)),
            usize::try_from(1024 - FILES_BESIDES_CONNECTIONS).unwrap()
        );
        assert_eq!(connections_within(8192, Some(10)), 1);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod linux_tests {
    use rustix::thread::transparent_huge_pages_are_disabled as huge_pages_off;

    use super::HugePagesOff;

    #[test]
    fn huge_pages_are_off_during_the_load_and_as_before_after_it() {
        let Ok(before) = huge_pages_off() else {
            eprintln!("SKIPPED: this kernel has no PR_GET_THP_DISABLE");
            return;
        };
        let loading = HugePagesOff::during_load();
        assert_eq!(huge_pages_off().ok(), Some(true), "off while loading");
        drop(loading);
        assert_eq!(huge_pages_off().ok(), Some(before), "as they were after");
    }
}
