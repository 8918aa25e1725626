//! A real `redis-server` for the multi-node tests: the store crate's test harness
//! (`sessiond_store::testkit`: free loopback port, AOF fsynced on every write, killed when
//! dropped), behind the skip-or-fail rule of [`require`].

use std::path::Path;

use sessiond_store::testkit::{RedisServer, TestPki};

use super::require;

/// One `redis-server` on 127.0.0.1, keeping its AOF in a directory of its own.
pub struct Redis(RedisServer);

impl Redis {
    /// Starts a server keeping its data in `dir`. `None` (after saying why) when
    /// `redis-server` is not installed and we are not under CI.
    pub async fn start(dir: &Path) -> Option<Redis> {
        require("redis-server")?;
        Some(Redis(RedisServer::start(dir).await))
    }

    /// A server that speaks TLS with certificates of `pki`'s CA and asks clients for one
    /// of the same CA; [`Redis::url`] is then `rediss://`.
    pub async fn start_tls(dir: &Path, pki: &TestPki) -> Option<Redis> {
        require("redis-server")?;
        Some(Redis(RedisServer::start_tls(dir, pki, true).await))
    }

    /// The URL nodes connect to.
    pub fn url(&self) -> String {
        format!("{}0", self.0.url())
    }

    /// `kill -9`: nothing is flushed on the way out (the AOF is already fsynced).
    pub fn kill9(&mut self) {
        self.0.kill();
    }

    /// Starts it again on the same port, from the same AOF.
    pub async fn restart(&mut self) {
        self.0.restart().await;
    }
}
