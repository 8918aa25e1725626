//! The users directory: who may log in, with what password, in which groups.
//!
//! [`Directory`] is the seam: today a TOML file ([`FileDirectory`]), later LDAP. Passwords
//! are argon2id hashes (PHC strings, from `sessiond hash-password`). A failed login costs
//! the same whether the user exists or not: unknown users are checked against a dummy hash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use parking_lot::RwLock;
use serde::Deserialize;

/// A user as the directory knows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub universal_id: Option<String>,
    pub groups: Vec<String>,
    pub disabled: bool,
}

/// Why a directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("users file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Where users come from.
pub trait Directory: Send + Sync + std::fmt::Debug + 'static {
    /// The user, if `password` is theirs and they are not disabled. Takes as long for an
    /// unknown user as for a wrong password.
    fn authenticate(&self, username: &str, password: &str) -> Option<User>;
    /// The user by name, disabled or not.
    fn user(&self, username: &str) -> Option<User>;
}

/// The users file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    password: String,
    universal_id: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    disabled: bool,
}

#[derive(Debug)]
struct Record {
    user: User,
    /// A PHC string, checked to parse at load.
    hash: String,
}

/// Users from a TOML file, reloadable in place.
#[derive(Debug)]
pub struct FileDirectory {
    path: PathBuf,
    // Swapped whole on reload; readers take a cheap clone of the Arc.
    users: RwLock<Arc<BTreeMap<String, Record>>>,
    /// Checked for unknown users so they cost what a wrong password costs.
    dummy_hash: String,
}

impl FileDirectory {
    /// Loads `path`.
    pub fn load(path: &Path) -> Result<FileDirectory, DirectoryError> {
        let users = read(path)?;
        let dummy_hash =
            hash_password("sessiond-dummy-password").map_err(|m| DirectoryError::Invalid {
                path: path.to_owned(),
                message: m,
            })?;
        Ok(FileDirectory {
            path: path.to_owned(),
            users: RwLock::new(Arc::new(users)),
            dummy_hash,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again. On error the old users stay in force. Returns the users who
    /// could log in before and cannot now (removed or disabled).
    pub fn reload(&self) -> Result<Vec<String>, DirectoryError> {
        let fresh = Arc::new(read(&self.path)?);
        let old = std::mem::replace(&mut *self.users.write(), fresh.clone());
        Ok(old
            .iter()
            .filter(|(_, r)| !r.user.disabled)
            .filter(|(name, _)| fresh.get(*name).is_none_or(|r| r.user.disabled))
            .map(|(name, _)| name.clone())
            .collect())
    }

    /// Users marked disabled now (their sessions must not live on).
    pub fn disabled_users(&self) -> Vec<String> {
        self.users
            .read()
            .values()
            .filter(|r| r.user.disabled)
            .map(|r| r.user.name.clone())
            .collect()
    }
}

fn read(path: &Path) -> Result<BTreeMap<String, Record>, DirectoryError> {
    let bad = |message: String| DirectoryError::Invalid {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: UsersFile = toml::from_str(&text).map_err(|e| bad(e.message().to_owned()))?;
    let mut out = BTreeMap::new();
    for (name, entry) in file.users {
        sessiond_core::input::check_name("user", &name)
            .map_err(|e| bad(format!("users.{name}: {e}")))?;
        PasswordHash::new(&entry.password)
            .map_err(|e| bad(format!("users.{name}.password: not a PHC hash ({e}); make one with `sessiond hash-password`")))?;
        out.insert(
            name.clone(),
            Record {
                user: User {
                    name,
                    universal_id: entry.universal_id,
                    groups: entry.groups,
                    disabled: entry.disabled,
                },
                hash: entry.password,
            },
        );
    }
    Ok(out)
}

fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl Directory for FileDirectory {
    fn authenticate(&self, username: &str, password: &str) -> Option<User> {
        let users = self.users.read().clone();
        match users.get(username) {
            Some(r) => (verify(&r.hash, password) && !r.user.disabled).then(|| r.user.clone()),
            None => {
                let _ = verify(&self.dummy_hash, password);
                None
            }
        }
    }

    fn user(&self, username: &str) -> Option<User> {
        self.users.read().get(username).map(|r| r.user.clone())
    }
}

/// An argon2id PHC string for `password` (m=19456 KiB, t=2, p=1: OWASP's recommendation).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    let params = Params::new(19456, 2, 1, None).map_err(|e| e.to_string())?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("users.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    fn users(alice_disabled: bool, with_bob: bool) -> String {
        let hash = hash_password("alice-pw").unwrap();
        let mut s = format!(
            "[users.alice]\npassword = \"{hash}\"\nuniversal_id = \"cust-1001\"\ngroups = [\"staff\"]\ndisabled = {alice_disabled}\n"
        );
        if with_bob {
            s.push_str(&format!(
                "[users.bob]\npassword = \"{}\"\n",
                hash_password("bob-pw").unwrap()
            ));
        }
        s
    }

    #[test]
    fn authenticates_only_the_right_password_of_an_enabled_user() {
        let dir = tempfile::tempdir().unwrap();
        let d = FileDirectory::load(&write(dir.path(), &users(false, true))).unwrap();
        let alice = d.authenticate("alice", "alice-pw").unwrap();
        assert_eq!(alice.universal_id.as_deref(), Some("cust-1001"));
        assert_eq!(alice.groups, ["staff"]);
        assert!(d.authenticate("alice", "bob-pw").is_none());
        assert!(d.authenticate("nobody", "alice-pw").is_none());
        assert!(d.authenticate("bob", "bob-pw").is_some());
    }

    #[test]
    fn reload_reports_who_lost_access() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &users(false, true));
        let d = FileDirectory::load(&path).unwrap();
        write(dir.path(), &users(true, false));
        let mut lost = d.reload().unwrap();
        lost.sort();
        assert_eq!(lost, ["alice", "bob"]);
        assert!(d.authenticate("alice", "alice-pw").is_none(), "disabled");
        assert_eq!(d.disabled_users(), ["alice"]);
    }

    #[test]
    fn a_bad_file_is_refused_and_a_bad_reload_keeps_the_old_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "[users.alice]\npassword = \"plaintext\"\n");
        let err = FileDirectory::load(&path).unwrap_err().to_string();
        assert!(err.contains("users.alice.password"), "{err}");
        write(dir.path(), &users(false, false));
        let d = FileDirectory::load(&path).unwrap();
        write(dir.path(), "[users.alice]\npasword = \"x\"\n");
        assert!(d.reload().is_err());
        assert!(d.authenticate("alice", "alice-pw").is_some());
    }
}
