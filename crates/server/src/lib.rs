//! The sessiond server: configuration, the HTTP API, background tasks and shutdown.
//!
//! - [`config`]: file, environment and flags merged into [`config::Settings`].
//! - [`bootstrap`]: the data dir and the secrets generated into it on first start.
//! - [`service`]: what each operation does, between HTTP and the store.
//! - [`directory`], [`regulation`], [`login`]: users, brute-force bans, and logging in.
//! - [`explain`]: a session's timeline in words.
//! - [`error`]: the one mapping from errors to contract codes and HTTP statuses.
//! - [`http`]: routes, extractors and limits; [`http::app`] builds the router.
//! - [`tasks`]: the expiry sweep and the touch flush.
//!
//! Architecture invariant: only `http` and `error` know HTTP; the store is chosen once, in
//! [`open_store`].

pub mod bootstrap;
pub mod config;
pub mod directory;
pub mod error;
pub mod explain;
pub mod http;
pub mod json;
pub mod login;
pub mod regulation;
mod scan;
pub mod service;
pub mod tasks;

use std::future::Future;
use std::sync::Arc;

use sessiond_core::Clock;
use sessiond_store::{LocalStore, RedisConfig, RedisStore, SessionStore, StoreError, StoreOptions};
use tokio::net::TcpListener;

use crate::bootstrap::Secrets;
use crate::config::{RedisSettings, Settings, StoreKind};
use crate::directory::{Directory, FileDirectory};
use crate::http::{AppState, Shared, WebState};
use crate::login::Login;
use crate::regulation::Regulator;
use crate::service::Service;

/// Opens the configured store. This is the only place that looks at the store kind.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn SessionStore>, StoreError> {
    let options = StoreOptions {
        ended_retention: settings.ended_retention,
    };
    match &settings.store {
        StoreKind::Embedded => {
            let path = settings.data_dir.join(bootstrap::STORE_FILE);
            let store =
                tokio::task::spawn_blocking(move || LocalStore::open_embedded(&path, options))
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            Ok(store)
        }
        StoreKind::Redis(r) => Ok(Arc::new(
            RedisStore::connect(redis_config(r)?, options).await?,
        )),
    }
}

/// The Redis store's configuration from the `[store.redis]` settings.
fn redis_config(r: &RedisSettings) -> Result<RedisConfig, StoreError> {
    let target = r
        .target()
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let mut config = RedisConfig::new(target);
    config.tls = r.tls.clone();
    config.master_auth = r.master_auth.clone();
    config.key_prefix = r.key_prefix.clone();
    if let Some(n) = r.near_cache_entries {
        config.cache_capacity = n;
    }
    if let Some(age) = r.near_cache_max_age {
        config.cache_max_age = age;
    }
    Ok(config)
}

/// Loads the users file, if one is configured.
pub fn open_directory(
    settings: &Settings,
) -> Result<Option<Arc<FileDirectory>>, directory::DirectoryError> {
    settings
        .web
        .users_file
        .as_deref()
        .map(|path| FileDirectory::load(path).map(Arc::new))
        .transpose()
}

/// The state handlers share.
pub fn state(
    settings: &Settings,
    secrets: Secrets,
    store: Arc<dyn SessionStore>,
    directory: Option<Arc<dyn Directory>>,
    clock: Arc<dyn Clock>,
) -> AppState {
    let service = Service {
        store,
        keys: secrets.token_keys,
        default_policy: settings.default_policy,
        policies: settings.policies.clone(),
        ended_retention: settings.ended_retention,
        clock,
    };
    let web = WebState {
        settings: settings.web.clone(),
        login: Login {
            directory,
            regulator: Regulator::new(settings.web.regulation),
        },
    };
    AppState::new(Shared {
        service: Arc::new(service),
        agents: secrets.agents.into(),
        admin_sha256: secrets.admin_sha256,
        web: Arc::new(web),
        closing: Arc::new(tokio::sync::watch::channel(false).0),
    })
}

/// Serves until `shutdown` resolves, then finishes in-flight requests, stops the
/// background tasks, and makes everything acknowledged durable.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    users: Option<Arc<FileDirectory>>,
    limits: http::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let service = state.service.clone();
    let closing = state.closing.clone();
    let shutdown = async move {
        shutdown.await;
        let _ = closing.send(true);
    };
    let flush_every = sessiond_store::local::flush_window(service.shortest_idle_timeout());
    let tasks = tasks::Tasks::start(service.clone(), flush_every, users);
    http::serve(listener, http::app(state), limits, shutdown).await;
    tasks.shutdown().await;
    service.store.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sessiond_store::{RedisMasterAuth, RedisTarget, RedisTls};

    use super::*;

    #[test]
    fn redis_settings_reach_the_store_config() {
        let mut r = RedisSettings {
            url: Some("redis://127.0.0.1:6379/0".into()),
            cluster: Vec::new(),
            sentinel_master: None,
            sentinels: Vec::new(),
            key_prefix: "app:".into(),
            near_cache_entries: None,
            near_cache_max_age: None,
            tls: RedisTls::default(),
            master_auth: RedisMasterAuth::default(),
        };
        let defaults = RedisConfig::new(RedisTarget::Url("redis://127.0.0.1:6379/0".into()));
        let c = redis_config(&r).unwrap();
        assert_eq!(c.target, defaults.target);
        assert_eq!(c.key_prefix, "app:");
        assert_eq!(
            (c.cache_capacity, c.cache_max_age),
            (defaults.cache_capacity, defaults.cache_max_age)
        );
        r.near_cache_entries = Some(2_000_000);
        r.near_cache_max_age = Some(Duration::from_secs(600));
        let c = redis_config(&r).unwrap();
        assert_eq!(
            (c.cache_capacity, c.cache_max_age),
            (2_000_000, Duration::from_secs(600))
        );
        r.url = None;
        r.sentinels = vec!["redis://127.0.0.1:26379".into()];
        assert!(redis_config(&r).is_err(), "sentinels without a master name");
        r.sentinel_master = Some("mymaster".into());
        r.master_auth = RedisMasterAuth {
            username: Some("sessiond".into()),
            password: Some("pw".into()),
        };
        let c = redis_config(&r).unwrap();
        assert_eq!(c.master_auth, r.master_auth);
        assert!(matches!(c.target, RedisTarget::Sentinel { .. }));
    }
}
