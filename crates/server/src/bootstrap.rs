//! First start: the data directory and the secrets generated into it.
//!
//! When the configuration names no token keys, no admin token or no agents, sessiond
//! generates them once into the data directory (mode 0600, directory 0700) and reuses them
//! on every later start. It tells where they are, never what they are.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sessiond_core::token::{random_secret, sha256};
use sessiond_core::{TokenKey, TokenKeys};

use crate::config::{AgentCredential, Settings};

/// File names inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const AGENT_KEY_FILE: &str = "agent.key";
pub const TOKEN_KEY_FILE: &str = "token.key";
pub const SERVER_URL_FILE: &str = "server.url";
pub const STORE_FILE: &str = "store";

/// The name of the generated agent credential.
pub const GENERATED_AGENT: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("data dir {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BootstrapError + '_ {
    move |source| BootstrapError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Credentials and keys, resolved from config or the data dir.
#[derive(Debug)]
pub struct Secrets {
    pub token_keys: TokenKeys,
    pub admin_sha256: [u8; 32],
    pub agents: Vec<AgentCredential>,
    /// Files generated or read, for the start-up message: `(what, path)`.
    pub generated: Vec<(&'static str, PathBuf)>,
}

/// Creates the data dir if needed and resolves every secret.
pub fn prepare(settings: &Settings) -> Result<Secrets, BootstrapError> {
    let dir = &settings.data_dir;
    fs::create_dir_all(dir).map_err(io(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    let mut generated = Vec::new();

    let keys = if settings.token_keys.is_empty() {
        let path = dir.join(TOKEN_KEY_FILE);
        let line = read_or_create(&path, || {
            Ok(format!("k1 {}", random_secret(32).map_err(bad(&path))?))
        })?;
        let (id, secret) = line.split_once(' ').ok_or_else(|| BootstrapError::Bad {
            path: path.clone(),
            message: "expected `<id> <secret>`".into(),
        })?;
        generated.push(("token key", path.clone()));
        vec![TokenKey::new(id, secret.as_bytes()).map_err(bad(&path))?]
    } else {
        settings
            .token_keys
            .iter()
            .map(|(id, secret)| TokenKey::new(id, secret))
            .collect::<Result<_, _>>()
            .map_err(bad(Path::new("[[token.keys]]")))?
    };
    let token_keys = TokenKeys::new(keys).map_err(bad(Path::new("[[token.keys]]")))?;

    let admin_sha256 = match settings.admin_sha256 {
        Some(h) => h,
        None => {
            let path = dir.join(ADMIN_TOKEN_FILE);
            let token = read_or_create(&path, || random_secret(32).map_err(bad(&path)))?;
            generated.push(("admin token", path));
            sha256(token.as_bytes())
        }
    };

    let agents = if settings.agents.is_empty() {
        let path = dir.join(AGENT_KEY_FILE);
        let key = read_or_create(&path, || random_secret(32).map_err(bad(&path)))?;
        generated.push(("agent key", path));
        vec![AgentCredential {
            name: GENERATED_AGENT.into(),
            sha256: sha256(key.as_bytes()),
        }]
    } else {
        settings.agents.clone()
    };

    Ok(Secrets {
        token_keys,
        admin_sha256,
        agents,
        generated,
    })
}

fn bad<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> BootstrapError + '_ {
    move |e| BootstrapError::Bad {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The trimmed first line of `path`, creating the file (0600) from `make` if absent.
fn read_or_create(
    path: &Path,
    make: impl FnOnce() -> Result<String, BootstrapError>,
) -> Result<String, BootstrapError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let line = text.lines().next().unwrap_or("").trim().to_owned();
            if line.is_empty() {
                return Err(BootstrapError::Bad {
                    path: path.to_owned(),
                    message: "empty; delete it to generate a new one".into(),
                });
            }
            Ok(line)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make()?;
            write_private(path, &format!("{value}\n"))?;
            Ok(value)
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// Writes `text` to `path` with mode 0600, atomically (temp file, fsync, rename).
pub fn write_private(path: &Path, text: &str) -> Result<(), BootstrapError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::config::Overrides;

    fn settings(dir: &Path) -> Settings {
        let flags = Overrides {
            data_dir: Some(dir.to_owned()),
            ..Overrides::default()
        };
        Settings::load(None, &[], &flags).unwrap()
    }

    #[test]
    fn first_start_generates_private_secrets_and_later_starts_reuse_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let first = prepare(&settings(&dir)).unwrap();
        for f in [ADMIN_TOKEN_FILE, AGENT_KEY_FILE, TOKEN_KEY_FILE] {
            let mode = fs::metadata(dir.join(f)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let admin = fs::read_to_string(dir.join(ADMIN_TOKEN_FILE)).unwrap();
        assert_eq!(first.admin_sha256, sha256(admin.trim().as_bytes()));
        let second = prepare(&settings(&dir)).unwrap();
        assert_eq!(first.admin_sha256, second.admin_sha256);
        assert_eq!(first.agents, second.agents);
        let token = first
            .token_keys
            .mint(sessiond_core::SessionId([1; 16]))
            .unwrap()
            .token;
        assert!(
            second.token_keys.verify(&token).is_ok(),
            "the same key after a restart"
        );
    }
}
