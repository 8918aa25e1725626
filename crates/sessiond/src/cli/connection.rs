//! Finding the server and the admin token.
//!
//! `--server`/`--token` come first, then `SESSIOND_SERVER`/`SESSIOND_ADMIN_TOKEN`, then the
//! `server.url` and `admin.token` files a local server writes into its data dir. [`resolve`]
//! takes the environment as a parameter, read once by [`Environment::from_process`], so
//! tests never touch the process environment.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use sessiond_server::bootstrap::{ADMIN_TOKEN_FILE, SERVER_URL_FILE};

use super::{CliError, Connection};

/// The data dir looked in when neither `--data-dir` nor `SESSIOND_DATA_DIR` is set.
const DEFAULT_DATA_DIR: &str = "sessiond-data";

/// The `SESSIOND_*` environment variables the CLI reads, read once in [`run`].
#[derive(Debug, Default)]
pub(super) struct Environment {
    server: Option<String>,
    token: Option<String>,
    data_dir: Option<PathBuf>,
}

impl Environment {
    pub(super) fn from_process() -> Environment {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Environment {
            server: var("SESSIOND_SERVER"),
            token: var("SESSIOND_ADMIN_TOKEN"),
            data_dir: std::env::var_os("SESSIOND_DATA_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// The server to call and the admin token, with where each came from (for error hints).
pub(super) struct Target {
    pub(super) server: String,
    pub(super) server_from: String,
    pub(super) token: String,
    pub(super) token_from: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("server", &self.server)
            .field("server_from", &self.server_from)
            .field("token_from", &self.token_from)
            .finish_non_exhaustive()
    }
}

/// Finds the server URL and the admin token: `--server`/`--token`, then `SESSIOND_SERVER`/
/// `SESSIOND_ADMIN_TOKEN`, then `server.url`/`admin.token` in the data dir (`--data-dir`,
/// then `SESSIOND_DATA_DIR`, then `sessiond-data`). Each is resolved on its own.
pub(super) fn resolve(conn: &Connection, env: &Environment) -> Result<Target, CliError> {
    let data_dir = conn
        .data_dir
        .clone()
        .or_else(|| env.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let (server, server_from) = pick(
        [
            (conn.server.as_deref(), "--server"),
            (env.server.as_deref(), "SESSIOND_SERVER"),
        ],
        &data_dir.join(SERVER_URL_FILE),
        "no server to talk to: pass --server URL, set SESSIOND_SERVER, \
         or pass --data-dir DIR of a local server",
    )?;
    let (token, token_from) = pick(
        [
            (conn.token.as_deref(), "--token"),
            (env.token.as_deref(), "SESSIOND_ADMIN_TOKEN"),
        ],
        &data_dir.join(ADMIN_TOKEN_FILE),
        "no admin token: set SESSIOND_ADMIN_TOKEN, pass --token TOKEN, \
         or pass --data-dir DIR of a local server",
    )?;
    Ok(Target {
        server,
        server_from,
        token,
        token_from,
    })
}

/// The first non-blank value among `given`, else the first line of `file`.
fn pick(
    given: [(Option<&str>, &str); 2],
    file: &Path,
    missing: &str,
) -> Result<(String, String), CliError> {
    for (value, from) in given {
        if let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) {
            return Ok((value.to_owned(), from.to_owned()));
        }
    }
    match std::fs::read_to_string(file) {
        Ok(text) => match text.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => Ok((line.to_owned(), file.display().to_string())),
            None => Err(CliError::usage(format!(
                "{missing} ({} is empty)",
                file.display()
            ))),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CliError::usage(format!(
            "{missing} (found no {})",
            file.display()
        ))),
        Err(e) => Err(CliError::failed(format!(
            "cannot read {}: {e}; run as the server's user or pass the value explicitly",
            file.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::EXIT_USAGE;
    use super::*;

    fn conn(server: Option<&str>, token: Option<&str>, data_dir: Option<&Path>) -> Connection {
        Connection {
            server: server.map(str::to_owned),
            token: token.map(str::to_owned),
            data_dir: data_dir.map(Path::to_path_buf),
            json: false,
        }
    }

    fn data_dir(server: &str, token: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.url"), server).unwrap();
        std::fs::write(dir.path().join("admin.token"), token).unwrap();
        dir
    }

    fn env(server: Option<&str>, token: Option<&str>) -> Environment {
        Environment {
            server: server.map(str::to_owned),
            token: token.map(str::to_owned),
            data_dir: None,
        }
    }

    #[test]
    fn flags_beat_environment_beat_data_dir_files() {
        let dir = data_dir("  http://file:1\n", "\n file-token \n");
        let dir = Some(dir.path());
        let env_set = env(Some("http://env:2"), Some("env-token"));

        let t = resolve(
            &conn(Some("http://flag:3"), Some("flag-token"), dir),
            &env_set,
        )
        .unwrap();
        assert_eq!(
            (t.server.as_str(), t.token.as_str()),
            ("http://flag:3", "flag-token")
        );
        assert_eq!(
            (t.server_from.as_str(), t.token_from.as_str()),
            ("--server", "--token")
        );

        let t = resolve(&conn(None, None, dir), &env_set).unwrap();
        assert_eq!(
            (t.server.as_str(), t.token.as_str()),
            ("http://env:2", "env-token")
        );
        assert_eq!(t.token_from, "SESSIOND_ADMIN_TOKEN");

        let t = resolve(&conn(None, None, dir), &Environment::default()).unwrap();
        assert_eq!(
            (t.server.as_str(), t.token.as_str()),
            ("http://file:1", "file-token")
        );
        assert!(t.server_from.ends_with("server.url"), "{}", t.server_from);

        // Each value is resolved on its own; blank values count as absent.
        let t = resolve(&conn(Some(" "), Some("flag-token"), dir), &env(None, None)).unwrap();
        assert_eq!(
            (t.server.as_str(), t.token.as_str()),
            ("http://file:1", "flag-token")
        );
        assert!(!format!("{t:?}").contains("flag-token"));
    }

    #[test]
    fn the_data_dir_comes_from_the_flag_then_the_environment() {
        let from_flag = data_dir("http://flag-dir:1", "a");
        let from_env = data_dir("http://env-dir:2", "b");
        let env = Environment {
            data_dir: Some(from_env.path().to_path_buf()),
            ..Environment::default()
        };
        let t = resolve(&conn(None, None, Some(from_flag.path())), &env).unwrap();
        assert_eq!(t.server, "http://flag-dir:1");
        let t = resolve(&conn(None, None, None), &env).unwrap();
        assert_eq!(t.server, "http://env-dir:2");
    }

    #[test]
    fn missing_values_say_what_to_pass() {
        let empty = tempfile::tempdir().unwrap();
        let err = resolve(&conn(None, None, Some(empty.path())), &env(None, None)).unwrap_err();
        assert_eq!(err.exit_code, EXIT_USAGE);
        for needle in [
            "--server URL",
            "SESSIOND_SERVER",
            "--data-dir",
            "server.url",
        ] {
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
        let err = resolve(
            &conn(Some("http://x"), None, Some(empty.path())),
            &env(None, None),
        )
        .unwrap_err();
        for needle in ["--token", "SESSIOND_ADMIN_TOKEN", "admin.token"] {
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
        let blank = data_dir("http://x", " \n");
        let err = resolve(&conn(None, None, Some(blank.path())), &env(None, None)).unwrap_err();
        assert!(err.message.contains("is empty"), "{}", err.message);
    }
}
