//! Configuration: a TOML file, then `SESSIOND_*` environment variables, then flags.
//!
//! All three are merged into one TOML table (later sources win), which is then read into
//! [`FileConfig`] with unknown keys refused, and checked into [`Settings`], the resolved
//! configuration the server runs on. Every refusal names the key at fault.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod web;

use serde::Deserialize;
use sessiond_core::clock::parse_duration;
use sessiond_core::token::MIN_KEY_LEN;
use sessiond_core::{OnLimit, Policy};
use sessiond_store::{RedisMasterAuth, RedisTarget, RedisTls};

use crate::http::{EVENT_HEARTBEAT, Limits, Timeouts};

/// The environment variables `serve` reads, and the config key each one sets.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("SESSIOND_LISTEN", "listen"),
    ("SESSIOND_DATA_DIR", "data_dir"),
    ("SESSIOND_SESSION_IDLE_TIMEOUT", "session.idle_timeout"),
    ("SESSIOND_SESSION_MAX_LIFETIME", "session.max_lifetime"),
    ("SESSIOND_SESSION_MAX_PER_USER", "session.max_per_user"),
    ("SESSIOND_SESSION_ON_LIMIT", "session.on_limit"),
    (
        "SESSIOND_SESSION_ENDED_RETENTION",
        "session.ended_retention",
    ),
    ("SESSIOND_ADMIN_TOKEN", "admin.token"),
    ("SESSIOND_ADMIN_TOKEN_SHA256", "admin.token_sha256"),
    ("SESSIOND_STORE_KIND", "store.kind"),
    ("SESSIOND_STORE_REDIS_URL", "store.redis.url"),
    ("SESSIOND_STORE_REDIS_KEY_PREFIX", "store.redis.key_prefix"),
    (
        "SESSIOND_STORE_REDIS_TLS_CA_FILE",
        "store.redis.tls.ca_file",
    ),
    (
        "SESSIOND_STORE_REDIS_TLS_CERT_FILE",
        "store.redis.tls.cert_file",
    ),
    (
        "SESSIOND_STORE_REDIS_TLS_KEY_FILE",
        "store.redis.tls.key_file",
    ),
    ("SESSIOND_USERS_FILE", "users.file"),
    ("SESSIOND_HTTP_HEADER_TIMEOUT", "http.header_timeout"),
    ("SESSIOND_HTTP_BODY_TIMEOUT", "http.body_timeout"),
    ("SESSIOND_HTTP_KEEPALIVE_TIMEOUT", "http.keepalive_timeout"),
    ("SESSIOND_HTTP_MAX_CONNECTIONS", "http.max_connections"),
];

/// What the names of the environment variables sessiond reads start with.
const ENV_PREFIX: &str = "SESSIOND_";

/// `SESSIOND_*` variables that are not configuration keys (read by the CLI or logging).
const ENV_OTHER: &[&str] = &["SESSIOND_CONFIG", "SESSIOND_SERVER", "SESSIOND_LOG"];

pub use web::{CookieSettings, HeaderNames, SameSite, WebSettings};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";
pub const DEFAULT_DATA_DIR: &str = "sessiond-data";

/// A configuration that cannot be used, with the key at fault in the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// The `SESSIOND_*` variables of `vars` (the process's environment, as
/// `std::env::vars_os` gives it), for [`Settings::load`]. No other variable is read,
/// whatever bytes it holds: an init system or a shell may set one that is not UTF-8, and
/// the server must start anyway. A `SESSIOND_*` variable that is not UTF-8 is refused by
/// name.
pub fn environment(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut found = Vec::new();
    for (name, value) in vars {
        let shown = name.to_string_lossy();
        if !shown.starts_with(ENV_PREFIX) {
            continue;
        }
        match (name.to_str(), value.into_string()) {
            (Some(name), Ok(value)) => found.push((name.to_owned(), value)),
            _ => {
                return Err(invalid(format!(
                    "environment variable `{shown}` is not UTF-8"
                )));
            }
        }
    }
    Ok(found)
}

/// The config file's shape. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub session: SessionSection,
    #[serde(default)]
    pub policies: BTreeMap<String, PolicySection>,
    #[serde(default)]
    pub agents: Vec<AgentSection>,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub token: TokenSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub users: web::UsersSection,
    #[serde(default)]
    pub portal: web::PortalSection,
    #[serde(default)]
    pub cookie: web::CookieSection,
    #[serde(default)]
    pub regulation: web::RegulationSection,
    #[serde(default)]
    pub headers: web::HeadersSection,
    #[serde(default)]
    pub http: HttpSection,
}

/// `[http]`: how long a connection may take over each stage of a request
/// ([`crate::http::Timeouts`]), and how many connections are served at once.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub max_connections: Option<u32>,
}

/// `[session]`: the default policy, plus the global `ended_retention`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    #[serde(flatten)]
    pub policy: PolicySection,
    pub ended_retention: Option<String>,
}

/// The policy keys, each optional (named policies inherit from `[session]`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    pub idle_timeout: Option<String>,
    pub max_lifetime: Option<String>,
    pub max_per_user: Option<u32>,
    pub on_limit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    pub name: String,
    pub key: Option<String>,
    pub key_sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub token: Option<String>,
    pub token_sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    #[serde(default)]
    pub keys: Vec<KeySection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    pub id: String,
    pub secret: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub kind: Option<String>,
    pub redis: Option<RedisSection>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub sentinel_master: Option<String>,
    pub sentinels: Option<Vec<String>>,
    /// The Sentinel-named master's ACL user and password (the sentinels' URLs carry theirs).
    pub master_username: Option<String>,
    pub master_password: Option<String>,
    pub key_prefix: Option<String>,
    /// Most validate answers a node keeps in its near cache.
    pub near_cache_entries: Option<u64>,
    /// Longest a near-cache answer is used, even while invalidations flow.
    pub near_cache_max_age: Option<String>,
    /// Trust and identity for `rediss://` URLs.
    pub tls: Option<RedisTlsSection>,
}

/// `[store.redis.tls]`: PEM files. TLS itself is turned on by `rediss://` URLs.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsSection {
    /// The CAs that sign Redis's certificate, trusted instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (chain), for a Redis with `tls-auth-clients yes`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    pub key_file: Option<PathBuf>,
}

/// Flags given to `sessiond serve`; they win over everything.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

/// A credential as the server keeps it: the SHA-256 of the secret, never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCredential {
    pub name: String,
    pub sha256: [u8; 32],
}

/// Which store backs the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    Redis(Box<RedisSettings>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: Option<String>,
    pub cluster: Vec<String>,
    pub sentinel_master: Option<String>,
    pub sentinels: Vec<String>,
    pub key_prefix: String,
    /// `None`: the store's defaults (`RedisConfig::new`).
    pub near_cache_entries: Option<usize>,
    pub near_cache_max_age: Option<Duration>,
    /// The PEM files of `[store.redis.tls]`, read at start.
    pub tls: RedisTls,
    /// Through Sentinel: the master's credentials.
    pub master_auth: RedisMasterAuth,
}

impl RedisSettings {
    /// Where the store is, from whichever of `url`, `cluster` and `sentinels` is given.
    pub fn target(&self) -> Result<RedisTarget, ConfigError> {
        if let Some(url) = &self.url {
            Ok(RedisTarget::Url(url.clone()))
        } else if !self.cluster.is_empty() {
            Ok(RedisTarget::Cluster(self.cluster.clone()))
        } else {
            let master = self.sentinel_master.clone().ok_or_else(|| {
                invalid("store.redis.sentinel_master: name the master the sentinels watch")
            })?;
            Ok(RedisTarget::Sentinel {
                master,
                sentinels: self.sentinels.clone(),
            })
        }
    }
}

/// Reads the PEM files of `[store.redis.tls]` (relative paths from `base`); a file that
/// cannot be read is refused under its key.
fn redis_tls(base: &Path, section: Option<&RedisTlsSection>) -> Result<RedisTls, ConfigError> {
    let Some(section) = section else {
        return Ok(RedisTls::default());
    };
    let read = |key: &str, path: &Option<PathBuf>| -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = path else {
            return Ok(None);
        };
        let path = base.join(path);
        std::fs::read(&path).map(Some).map_err(|e| {
            invalid(format!(
                "store.redis.tls.{key}: cannot read {}: {e}",
                path.display()
            ))
        })
    };
    let ca_pem = read("ca_file", &section.ca_file)?;
    let client_pem = match (
        read("cert_file", &section.cert_file)?,
        read("key_file", &section.key_file)?,
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "store.redis.tls: `cert_file` and `key_file` go together; give both or neither",
            ));
        }
    };
    Ok(RedisTls { ca_pem, client_pem })
}

/// More entries than this is a typo, not a cache (each holds a session record).
const MAX_NEAR_CACHE_ENTRIES: u64 = 100_000_000;

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub default_policy: Policy,
    /// Named policies (`default` is the `[session]` one and is not listed here).
    pub policies: BTreeMap<String, Policy>,
    pub ended_retention: Duration,
    /// Empty: a key is generated into the data dir on first start.
    pub agents: Vec<AgentCredential>,
    /// `None`: an admin token is generated into the data dir on first start.
    pub admin_sha256: Option<[u8; 32]>,
    /// `(id, secret)`; empty: a key is generated into the data dir on first start.
    pub token_keys: Vec<(String, Vec<u8>)>,
    pub store: StoreKind,
    /// Users file, portal, cookie, regulation, identity headers.
    pub web: WebSettings,
    /// Slow and idle connections, and how many are served at once.
    pub http: Limits,
}

impl Settings {
    /// Reads the file (if any), the environment `env`, and the flags, in that order.
    pub fn load(
        file: Option<&Path>,
        env: &[(String, String)],
        flags: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env.iter().filter(|(n, _)| n.starts_with(ENV_PREFIX)) {
            if ENV_OTHER.contains(&name.as_str()) {
                continue;
            }
            let Some((_, key)) = ENV_KEYS.iter().find(|(n, _)| n == name) else {
                let known: Vec<&str> = ENV_KEYS.iter().map(|(n, _)| *n).collect();
                return Err(invalid(format!(
                    "unknown environment variable `{name}` (known: {})",
                    known.join(", ")
                )));
            };
            set_path(&mut table, key, env_value(key, value));
        }
        if let Some(listen) = &flags.listen {
            set_path(&mut table, "listen", toml::Value::String(listen.clone()));
        }
        if let Some(dir) = &flags.data_dir {
            let dir = dir.to_string_lossy().into_owned();
            set_path(&mut table, "data_dir", toml::Value::String(dir));
        }
        let base = file
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        Settings::from_table(table, &base)
    }

    /// Checks a merged table; relative paths in it are taken from `base`.
    pub fn from_table(table: toml::Table, base: &Path) -> Result<Settings, ConfigError> {
        let file: FileConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.message().to_owned()))?;
        file.resolve(base)
    }
}

/// Numbers from the environment go in as integers where the key takes one.
fn env_value(key: &str, value: &str) -> toml::Value {
    match value.parse::<i64>() {
        Ok(n) if key.ends_with("max_per_user") || key.ends_with("max_connections") => {
            toml::Value::Integer(n)
        }
        _ => toml::Value::String(value.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, dotted: &str, value: toml::Value) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        t = next;
    }
    t.insert(last.to_owned(), value);
}

fn duration(key: &str, value: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(s) => {
            let d = parse_duration(s).map_err(|e| invalid(format!("{key}: {e}")))?;
            if d.is_zero() {
                return Err(invalid(format!("{key}: must be longer than zero")));
            }
            Ok(d)
        }
    }
}

fn policy(key: &str, section: &PolicySection, base: &Policy) -> Result<Policy, ConfigError> {
    let on_limit = match section.on_limit.as_deref() {
        None => base.on_limit,
        Some("deny") => OnLimit::Deny,
        Some("displace_oldest") => OnLimit::DisplaceOldest,
        Some(other) => {
            return Err(invalid(format!(
                "{key}.on_limit: `{other}` is not one of `deny`, `displace_oldest`"
            )));
        }
    };
    Ok(Policy {
        idle_timeout: duration(
            &format!("{key}.idle_timeout"),
            &section.idle_timeout,
            base.idle_timeout,
        )?,
        max_lifetime: duration(
            &format!("{key}.max_lifetime"),
            &section.max_lifetime,
            base.max_lifetime,
        )?,
        max_per_user: section.max_per_user.unwrap_or(base.max_per_user),
        on_limit,
    })
}

fn sha256_hex(key: &str, hex: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = hex.as_bytes();
    let digit = |c: u8| char::from(c).to_digit(16);
    if bytes.len() != 64 {
        return Err(invalid(format!("{key}: expected 64 hex digits")));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let (Some(hi), Some(lo)) = (digit(pair[0]), digit(pair[1])) else {
            return Err(invalid(format!("{key}: expected 64 hex digits")));
        };
        out[i] = u8::try_from(hi * 16 + lo).unwrap_or(0);
    }
    Ok(out)
}

/// One credential from either a plaintext secret or its SHA-256.
fn credential(
    key: &str,
    secret: &Option<String>,
    hash: &Option<String>,
) -> Result<Option<[u8; 32]>, ConfigError> {
    match (secret, hash) {
        (Some(_), Some(_)) => Err(invalid(format!(
            "{key}: give the secret or its sha256, not both"
        ))),
        (Some(s), None) if s.len() < 16 => {
            Err(invalid(format!("{key}: shorter than 16 characters")))
        }
        (Some(s), None) => Ok(Some(sessiond_core::token::sha256(s.as_bytes()))),
        (None, Some(h)) => sha256_hex(&format!("{key}_sha256"), h).map(Some),
        (None, None) => Ok(None),
    }
}

impl FileConfig {
    fn resolve(self, base: &Path) -> Result<Settings, ConfigError> {
        let web = web::resolve(
            &self.users,
            &self.portal,
            &self.cookie,
            &self.regulation,
            &self.headers,
            base,
        )?;
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse().map_err(|_| {
            invalid(format!(
                "listen: `{listen_text}` is not an address like 127.0.0.1:7480"
            ))
        })?;
        let default_policy = policy("session", &self.session.policy, &Policy::default())?;
        let mut policies = BTreeMap::new();
        for (name, section) in &self.policies {
            if name == "default" {
                return Err(invalid(
                    "policies.default: the default policy is `[session]`",
                ));
            }
            policies.insert(
                name.clone(),
                policy(&format!("policies.{name}"), section, &default_policy)?,
            );
        }
        if let Some(p) = web
            .policy
            .as_deref()
            .filter(|p| *p != "default" && !policies.contains_key(*p))
        {
            return Err(invalid(format!("portal.policy: no policy named `{p}`")));
        }
        let ended_retention = duration(
            "session.ended_retention",
            &self.session.ended_retention,
            Duration::from_secs(24 * 3600),
        )?;
        let mut agents = Vec::new();
        for (i, a) in self.agents.iter().enumerate() {
            let key = format!("agents[{i}] ({})", a.name);
            if a.name.is_empty() || agents.iter().any(|x: &AgentCredential| x.name == a.name) {
                return Err(invalid(format!("{key}.name: must be present and unique")));
            }
            let sha256 = credential(&format!("{key}.key"), &a.key, &a.key_sha256)?
                .ok_or_else(|| invalid(format!("{key}: needs `key` or `key_sha256`")))?;
            agents.push(AgentCredential {
                name: a.name.clone(),
                sha256,
            });
        }
        let admin_sha256 = credential("admin.token", &self.admin.token, &self.admin.token_sha256)?;
        let mut token_keys = Vec::new();
        for (i, k) in self.token.keys.iter().enumerate() {
            sessiond_core::TokenKey::new(&k.id, k.secret.as_bytes()).map_err(|e| {
                invalid(format!(
                    "token.keys[{i}]: {e} (at least {MIN_KEY_LEN} bytes)"
                ))
            })?;
            token_keys.push((k.id.clone(), k.secret.clone().into_bytes()));
        }
        let store = match self.store.kind.as_deref() {
            None | Some("embedded") => StoreKind::Embedded,
            Some("redis") => {
                let r = self.store.redis.clone().unwrap_or_default();
                let targets = [r.url.is_some(), r.cluster.is_some(), r.sentinels.is_some()];
                if targets.iter().filter(|t| **t).count() != 1 {
                    return Err(invalid(
                        "store.redis: give exactly one of `url`, `cluster`, `sentinels`",
                    ));
                }
                let check = |key: &str, url: &str| {
                    sessiond_store::redis::check_url(url)
                        .map_err(|why| invalid(format!("store.redis.{key}: {why}")))
                };
                if let Some(url) = &r.url {
                    check("url", url)?;
                }
                for (key, list) in [("cluster", &r.cluster), ("sentinels", &r.sentinels)] {
                    for (i, url) in list.iter().flatten().enumerate() {
                        check(&format!("{key}[{i}]"), url)?;
                    }
                }
                if token_keys.is_empty() {
                    return Err(invalid(
                        "token.keys: nodes that share a Redis store must share their token keys; list them in [[token.keys]]",
                    ));
                }
                let near_cache_entries = match r.near_cache_entries {
                    None => None,
                    Some(n) if n <= MAX_NEAR_CACHE_ENTRIES => Some(n as usize),
                    Some(n) => {
                        return Err(invalid(format!(
                            "store.redis.near_cache_entries: {n} is more than {MAX_NEAR_CACHE_ENTRIES}"
                        )));
                    }
                };
                let tls = redis_tls(base, r.tls.as_ref())?;
                let master_auth = RedisMasterAuth {
                    username: r.master_username.clone(),
                    password: r.master_password.clone(),
                };
                if master_auth != RedisMasterAuth::default() && r.sentinels.is_none() {
                    return Err(invalid(
                        "store.redis.master_username, master_password: only for a master \
                         found through `sentinels`; with `url` or `cluster`, the URL carries \
                         the credentials",
                    ));
                }
                let settings = RedisSettings {
                    url: r.url,
                    cluster: r.cluster.unwrap_or_default(),
                    sentinel_master: r.sentinel_master,
                    sentinels: r.sentinels.unwrap_or_default(),
                    key_prefix: r.key_prefix.unwrap_or_else(|| "sessiond:".into()),
                    near_cache_entries,
                    near_cache_max_age: match &r.near_cache_max_age {
                        None => None,
                        given => Some(duration(
                            "store.redis.near_cache_max_age",
                            given,
                            Duration::ZERO,
                        )?),
                    },
                    tls,
                    master_auth,
                };
                let target = settings.target()?;
                sessiond_store::redis::check_target(&target, &settings.tls)
                    .map_err(|why| invalid(format!("store.redis.{why}")))?;
                StoreKind::Redis(Box::new(settings))
            }
            Some(other) => {
                return Err(invalid(format!(
                    "store.kind: `{other}` is not one of `embedded`, `redis`"
                )));
            }
        };
        let http = http_limits(&self.http)?;
        Ok(Settings {
            listen,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            default_policy,
            policies,
            ended_retention,
            agents,
            admin_sha256,
            token_keys,
            store,
            web,
            http,
        })
    }
}

fn http_limits(section: &HttpSection) -> Result<Limits, ConfigError> {
    let default = Limits::default();
    let t = Timeouts {
        header: duration(
            "http.header_timeout",
            &section.header_timeout,
            default.timeouts.header,
        )?,
        body: duration(
            "http.body_timeout",
            &section.body_timeout,
            default.timeouts.body,
        )?,
        keep_alive: duration(
            "http.keepalive_timeout",
            &section.keepalive_timeout,
            default.timeouts.keep_alive,
        )?,
    };
    if t.keep_alive <= EVENT_HEARTBEAT {
        return Err(invalid(format!(
            "http.keepalive_timeout: must be longer than the event stream's {} s heartbeat",
            EVENT_HEARTBEAT.as_secs()
        )));
    }
    let max_connections = match section.max_connections {
        None => default.max_connections,
        Some(0) => return Err(invalid("http.max_connections: must be at least 1")),
        Some(n) => n as usize,
    };
    Ok(Limits {
        timeouts: t,
        max_connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)], flags: Overrides) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessiond.toml");
        std::fs::write(&path, text).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(Some(&path), &env, &flags)
    }

    fn err(r: Result<Settings, ConfigError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn no_config_at_all_gives_the_defaults() {
        let s = Settings::load(None, &[], &Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(s.default_policy, Policy::default());
        assert_eq!(s.ended_retention, Duration::from_secs(86400));
        assert_eq!(s.store, StoreKind::Embedded);
        assert!(s.agents.is_empty() && s.admin_sha256.is_none() && s.token_keys.is_empty());
    }

    #[test]
    fn the_contracts_example_file_loads() {
        let text = r#"
listen = "127.0.0.1:7480"
data_dir = "sessiond-data"
[session]
idle_timeout = "30m"
max_lifetime = "12h"
max_per_user = 0
on_limit = "deny"
ended_retention = "24h"
[policies.admin-console]
idle_timeout = "5m"
[[agents]]
name = "web1"
key = "a-long-random-secret"
[admin]
token = "another-long-secret"
[[token.keys]]
id = "k2"
secret = "at-least-32-bytes-of-secret-material"
[[token.keys]]
id = "k1"
secret = "the-previous-key-kept-while-old-tokens-live"
[store]
kind = "embedded"
"#;
        let s = load(text, &[], Overrides::default()).unwrap();
        let admin = &s.policies["admin-console"];
        assert_eq!(admin.idle_timeout, Duration::from_secs(300));
        assert_eq!(
            admin.max_lifetime,
            Duration::from_secs(12 * 3600),
            "inherited from [session]"
        );
        assert_eq!(s.agents[0].name, "web1");
        assert_eq!(s.token_keys.len(), 2);
        assert_eq!(s.token_keys[0].0, "k2");
    }

    #[test]
    fn unknown_keys_are_named() {
        assert!(err(load("lisen = \"x\"", &[], Overrides::default())).contains("lisen"));
        assert!(err(load("[session]\nidle = \"5m\"", &[], Overrides::default())).contains("idle"));
        assert!(
            err(load(
                "[policies.x]\nended_retention = \"5m\"",
                &[],
                Overrides::default()
            ))
            .contains("ended_retention")
        );
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            err(load(
                "[session]\nidle_timeout = \"soon\"",
                &[],
                Overrides::default()
            ))
            .contains("session.idle_timeout")
        );
        assert!(
            err(load(
                "[session]\non_limit = \"kick\"",
                &[],
                Overrides::default()
            ))
            .contains("session.on_limit")
        );
        assert!(err(load("listen = \"nowhere\"", &[], Overrides::default())).contains("listen"));
        assert!(
            err(load(
                "[[token.keys]]\nid = \"k\"\nsecret = \"short\"",
                &[],
                Overrides::default()
            ))
            .contains("token.keys[0]")
        );
        assert!(
            err(load(
                "[store]\nkind = \"redis\"\n[store.redis]\nurl = \"redis://127.0.0.1\"",
                &[],
                Overrides::default()
            ))
            .contains("token.keys")
        );
        assert!(
            err(load("[[agents]]\nname = \"a\"", &[], Overrides::default())).contains("agents[0]")
        );
    }

    #[test]
    fn identity_header_names_are_checked_and_parsed_at_load() {
        let s = load(
            "[headers]\nuser = \"X-Auth_User\"\n",
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.web.headers.user.as_str(), "x-auth_user");
        assert_eq!(s.web.headers.groups.as_str(), "remote-groups");
        for bad in ["", "X User", "X:User", "Üser"] {
            let e = err(load(
                &format!("[headers]\nauth_level = \"{bad}\"\n"),
                &[],
                Overrides::default(),
            ));
            assert!(e.contains("headers.auth_level"), "{bad}: {e}");
        }
    }

    #[test]
    fn connection_limits_have_defaults_and_are_checked() {
        let none = Overrides::default;
        assert_eq!(load("", &[], none()).unwrap().http, Limits::default());
        let s = load(
            "[http]\nheader_timeout = \"5s\"\nbody_timeout = \"10s\"\nkeepalive_timeout = \"10m\"\nmax_connections = 100\n",
            &[],
            none(),
        )
        .unwrap();
        assert_eq!(
            s.http,
            Limits {
                timeouts: Timeouts {
                    header: Duration::from_secs(5),
                    body: Duration::from_secs(10),
                    keep_alive: Duration::from_secs(600),
                },
                max_connections: 100,
            }
        );
        assert!(
            err(load("[http]\nheader_timeout = \"0s\"", &[], none()))
                .contains("http.header_timeout")
        );
        assert!(
            err(load("[http]\nbody_timeout = \"x\"", &[], none())).contains("http.body_timeout")
        );
        // An event stream is quiet for up to its heartbeat: the keep-alive must outlast it.
        assert!(
            err(load("[http]\nkeepalive_timeout = \"15s\"", &[], none())).contains("heartbeat")
        );
        assert!(err(load("[http]\nidle_timeout = \"1m\"", &[], none())).contains("idle_timeout"));
        assert!(
            err(load("[http]\nmax_connections = 0", &[], none())).contains("http.max_connections")
        );
        assert!(err(load("[http]\nmax_connections = -1", &[], none())).contains("-1"));
        // The environment sets them too, over the file.
        let env = [
            ("SESSIOND_HTTP_HEADER_TIMEOUT", "7s"),
            ("SESSIOND_HTTP_BODY_TIMEOUT", "8s"),
            ("SESSIOND_HTTP_KEEPALIVE_TIMEOUT", "9m"),
            ("SESSIOND_HTTP_MAX_CONNECTIONS", "20000"),
        ];
        let s = load("[http]\nheader_timeout = \"5s\"", &env, none()).unwrap();
        assert_eq!(
            s.http,
            Limits {
                timeouts: Timeouts {
                    header: Duration::from_secs(7),
                    body: Duration::from_secs(8),
                    keep_alive: Duration::from_secs(540),
                },
                max_connections: 20_000,
            }
        );
    }

    #[test]
    fn the_near_cache_is_sized_by_config_within_bounds() {
        let redis = "[[token.keys]]\nid = \"k\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n[store]\nkind = \"redis\"\n[store.redis]\nurl = \"redis://127.0.0.1\"\n";
        let cache = |s: Settings| match s.store {
            StoreKind::Redis(r) => (r.near_cache_entries, r.near_cache_max_age),
            StoreKind::Embedded => panic!("not redis"),
        };
        let defaults = load(redis, &[], Overrides::default()).unwrap();
        assert_eq!(cache(defaults), (None, None));
        let sized = load(
            &format!("{redis}near_cache_entries = 2000000\nnear_cache_max_age = \"10m\"\n"),
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            cache(sized),
            (Some(2_000_000), Some(Duration::from_secs(600)))
        );
        for (bad, key) in [
            ("near_cache_entries = 1000000000", "near_cache_entries"),
            ("near_cache_max_age = \"0s\"", "near_cache_max_age"),
            ("near_cache_max_age = \"soon\"", "near_cache_max_age"),
        ] {
            let e = err(load(&format!("{redis}{bad}\n"), &[], Overrides::default()));
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn a_redis_url_this_build_cannot_use_is_refused_by_key_without_echoing_it() {
        let keys = "[[token.keys]]\nid = \"k\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n[store]\nkind = \"redis\"\n[store.redis]\n";
        let with = |redis: &str| load(&format!("{keys}{redis}\n"), &[], Overrides::default());
        for good in [
            "url = \"redis://127.0.0.1\"",
            "url = \"redis://:pw@127.0.0.1:6380/2\"",
            "url = \"redis+unix:///run/redis.sock\"",
            "cluster = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]",
            "sentinel_master = \"m\"\nsentinels = [\"redis://127.0.0.1:26379\"]",
            "url = \"rediss://:pw@cache.example:6380/0\"",
            "cluster = [\"rediss://127.0.0.1:7000\", \"rediss://127.0.0.1:7001\"]",
            "sentinel_master = \"m\"\nsentinels = [\"rediss://127.0.0.1:26379\"]",
            "sentinel_master = \"m\"\nsentinels = [\"redis://127.0.0.1:26379\"]\nmaster_password = \"pw\"",
            // The master's database, named alike by every sentinel URL.
            "sentinel_master = \"m\"\nsentinels = [\"redis://127.0.0.1:26379/3\", \"redis://127.0.0.1:26380/3\"]",
            // Without TLS, each sentinel is logged in to with its own URL's credentials.
            "sentinel_master = \"m\"\nsentinels = [\"redis://:a@127.0.0.1:26379\", \"redis://:b@127.0.0.1:26380\"]",
        ] {
            assert!(with(good).is_ok(), "{good}: {}", err(with(good)));
        }
        for (bad, key, why) in [
            (
                "url = \"secret-host:6379\"",
                "store.redis.url:",
                "not a Redis URL",
            ),
            (
                "url = \"rediss://:secret@cache.example/#insecure\"",
                "store.redis.url:",
                "always checked",
            ),
            (
                "cluster = [\"rediss://:secret@127.0.0.1:7000\", \"redis://:secret@127.0.0.1:7001\"]",
                "store.redis.cluster:",
                "all use `rediss://`",
            ),
            (
                "sentinels = [\"redis://127.0.0.1:26379\"]",
                "store.redis.sentinel_master:",
                "name the master",
            ),
            (
                "url = \"redis://127.0.0.1\"\nmaster_password = \"secret\"",
                "store.redis.master_username, master_password:",
                "only for a master",
            ),
            (
                "cluster = [\"redis://127.0.0.1:7000\", \"http://secret\"]",
                "store.redis.cluster[1]:",
                "not a Redis URL",
            ),
            (
                "sentinel_master = \"m\"\nsentinels = [\"secret\"]",
                "store.redis.sentinels[0]:",
                "not a Redis URL",
            ),
            (
                "sentinel_master = \"m\"\nsentinels = [\"redis://:secret@127.0.0.1:26379/3\", \"redis://:secret@127.0.0.1:26380\"]",
                "store.redis.sentinels:",
                "different databases (/3 and /0)",
            ),
            (
                "sentinel_master = \"m\"\nsentinels = [\"rediss://:secret@127.0.0.1:26379\", \"rediss://:secret2@127.0.0.1:26380\"]",
                "store.redis.sentinels:",
                "one user name and password",
            ),
        ] {
            let e = err(with(bad));
            assert!(e.contains(key) && e.contains(why), "{bad}: {e}");
            assert!(!e.contains("secret"), "the URL is not repeated: {e}");
        }
    }

    #[test]
    fn redis_tls_files_are_read_from_beside_the_config_and_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let pki = sessiond_store::testkit::TestPki::new(&dir.path().join("pki"));
        std::fs::write(dir.path().join("not.pem"), "secret-bytes-not-pem").unwrap();
        let head = "[[token.keys]]\nid = \"k\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n[store]\nkind = \"redis\"\n[store.redis]\n";
        let with = |url: &str, tls: &str| {
            let path = dir.path().join("sessiond.toml");
            std::fs::write(&path, format!("{head}url = \"{url}\"\n{tls}")).unwrap();
            Settings::load(Some(&path), &[], &Overrides::default())
        };
        let tls = |r: Settings| match r.store {
            StoreKind::Redis(r) => r.tls,
            StoreKind::Embedded => panic!("not redis"),
        };
        let tls_url = "rediss://127.0.0.1:6380";
        let s = with(tls_url, "").unwrap();
        assert_eq!(
            tls(s),
            RedisTls::default(),
            "rediss:// alone: the system's roots"
        );
        let full = "[store.redis.tls]\nca_file = \"pki/ca.pem\"\ncert_file = \"pki/client.pem\"\nkey_file = \"pki/client.key\"\n";
        let s = with(tls_url, full).unwrap();
        assert_eq!(
            tls(s),
            pki.tls(true),
            "paths are taken from the config's directory"
        );
        let env = [(
            "SESSIOND_STORE_REDIS_TLS_CA_FILE".to_owned(),
            pki.file("ca.pem").display().to_string(),
        )];
        let path = dir.path().join("env.toml");
        std::fs::write(&path, format!("{head}url = \"{tls_url}\"\n")).unwrap();
        let s = Settings::load(Some(&path), &env, &Overrides::default()).unwrap();
        assert_eq!(tls(s), pki.tls(false), "the CA file from the environment");

        for (url, section, key, why) in [
            (
                "redis://127.0.0.1",
                "[store.redis.tls]\nca_file = \"pki/ca.pem\"\n",
                "store.redis.tls:",
                "do not use `rediss://`",
            ),
            (
                tls_url,
                "[store.redis.tls]\ncert_file = \"pki/client.pem\"\n",
                "store.redis.tls:",
                "give both or neither",
            ),
            (
                tls_url,
                "[store.redis.tls]\nca_file = \"pki/missing.pem\"\n",
                "store.redis.tls.ca_file:",
                "missing.pem",
            ),
            (
                tls_url,
                "[store.redis.tls]\nca_file = \"not.pem\"\n",
                "store.redis.tls.ca_file:",
                "no PEM certificate",
            ),
            (
                tls_url,
                "[store.redis.tls]\ncert_file = \"pki/client.pem\"\nkey_file = \"not.pem\"\n",
                "store.redis.tls.key_file:",
                "no PEM private key",
            ),
            (
                tls_url,
                "[store.redis.tls]\ncert_file = \"pki/client.key\"\nkey_file = \"pki/client.key\"\n",
                "store.redis.tls.cert_file:",
                "no PEM certificate",
            ),
            (
                tls_url,
                "[store.redis.tls]\nca = \"pki/ca.pem\"\n",
                "ca",
                "unknown field",
            ),
        ] {
            let e = err(with(url, section));
            assert!(e.contains(key) && e.contains(why), "{section}: {e}");
            assert!(
                !e.contains("secret-bytes"),
                "a file's content is not repeated: {e}"
            );
        }
    }

    #[test]
    fn env_beats_file_and_flags_beat_env() {
        let text = "listen = \"127.0.0.1:1000\"\n[session]\nidle_timeout = \"5m\"";
        let env = [
            ("SESSIOND_LISTEN", "127.0.0.1:2000"),
            ("SESSIOND_SESSION_MAX_PER_USER", "3"),
        ];
        let s = load(text, &env, Overrides::default()).unwrap();
        assert_eq!(s.listen.port(), 2000);
        assert_eq!(s.default_policy.max_per_user, 3);
        assert_eq!(s.default_policy.idle_timeout, Duration::from_secs(300));
        let flags = Overrides {
            listen: Some("127.0.0.1:3000".into()),
            data_dir: Some("/tmp/x".into()),
        };
        let s = load(text, &env, flags).unwrap();
        assert_eq!(s.listen.port(), 3000);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
    }

    #[cfg(unix)]
    #[test]
    fn only_sessiond_variables_are_read_and_those_must_be_utf8() {
        use std::os::unix::ffi::OsStringExt as _;
        let var = |k: &[u8], v: &[u8]| {
            (
                OsString::from_vec(k.to_vec()),
                OsString::from_vec(v.to_vec()),
            )
        };
        let env = environment([
            var(b"PATH", b"/bin"),
            var(b"LEGACY", b"caf\xe9"),
            var(b"\xffNAME", b"x"),
            var(b"SESSIOND_LISTEN", b"127.0.0.1:9000"),
        ])
        .unwrap();
        assert_eq!(
            env,
            [("SESSIOND_LISTEN".to_owned(), "127.0.0.1:9000".to_owned())]
        );
        let refused = environment([var(b"SESSIOND_DATA_DIR", b"/srv/caf\xe9")]).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "config: environment variable `SESSIOND_DATA_DIR` is not UTF-8"
        );
    }

    #[test]
    fn unknown_environment_variables_are_named() {
        assert!(
            err(load("", &[("SESSIOND_LISTN", "x")], Overrides::default()))
                .contains("SESSIOND_LISTN")
        );
        assert!(
            load(
                "",
                &[("SESSIOND_SERVER", "x"), ("PATH", "/bin")],
                Overrides::default()
            )
            .is_ok()
        );
    }
}
