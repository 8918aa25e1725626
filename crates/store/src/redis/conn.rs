//! Connections to Redis: a single instance, one found through Sentinel, or a Cluster, behind
//! one cloneable [`Conn`], plus where the invalidation subscription connects
//! ([`PubSubSource`]).
//!
//! Every call is bounded by [`OP_TIMEOUT`] and every failure becomes
//! [`StoreError::Unavailable`]. Reconnecting is the connections' own business: a
//! `ConnectionManager` (single, Sentinel) or the Cluster connection reconnects on the next
//! call after a failure, so the store recovers without a restart. Through Sentinel, a
//! failure that hints at a failover (I/O error, `READONLY`) makes the next call ask the
//! sentinels for the master again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};

use super::scripts::Call;
use crate::StoreError;

/// The longest any one Redis call may take before the store answers `Unavailable`.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Where the Redis store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One Redis or Valkey, e.g. `redis://127.0.0.1:6379/0`.
    Url(String),
    /// A Redis Cluster: some of its nodes' URLs.
    Cluster(Vec<String>),
    /// A Sentinel-managed master: its name and the sentinels' URLs.
    Sentinel {
        master: String,
        sentinels: Vec<String>,
    },
}

/// A connection to the store, whatever its shape. Cheap to clone; clones share sockets.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>),
}

/// The Sentinel-found master, looked up again after a failure that hints at a failover.
pub(super) struct SentinelConn {
    /// Serializes lookups: one caller asks the sentinels, the others wait for its answer.
    client: tokio::sync::Mutex<SentinelClient>,
    /// The current master's connection; `None` after a failover hint.
    current: parking_lot::RwLock<Option<ConnectionManager>>,
    /// How long one answer may take on the master's connection.
    response_timeout: Duration,
}

/// Whether `url` is a Redis URL this build can connect to, or what is wrong with it, so
/// that the configuration refuses it at start under its key's name. The answer never
/// repeats the URL, which may hold a password.
pub fn check_url(url: &str) -> Result<(), &'static str> {
    if url.starts_with("rediss://") {
        return Err(
            "TLS (`rediss://`) is not supported by this build; use `redis://` \
                    on a trusted network, or a TLS tunnel",
        );
    }
    Client::open(url).map(|_| ()).map_err(|_| {
        "not a Redis URL: redis://[[user]:password@]host[:port][/db], or \
         redis+unix:///path/to/socket"
    })
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

/// Opens the connection for `target` and says where to subscribe. A single Redis is
/// connected lazily, so a node starts (not ready) while Redis is down.
pub(super) async fn connect(target: &Target) -> Result<(Conn, PubSubSource), StoreError> {
    match target {
        Target::Url(url) => {
            let client = Client::open(url.as_str()).map_err(unavailable)?;
            let manager =
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config(OP_TIMEOUT))
                    .map_err(unavailable)?;
            Ok((Conn::Single(manager), PubSubSource::Nodes(vec![client])))
        }
        Target::Cluster(urls) => {
            let conn = connect_cluster(urls, OP_TIMEOUT).await?;
            // Classic PUBLISH reaches every node of a cluster: any node will do.
            let nodes = urls
                .iter()
                .map(|u| Client::open(u.as_str()).map_err(unavailable))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((Conn::Cluster(conn), PubSubSource::Nodes(nodes)))
        }
        Target::Sentinel { master, sentinels } => {
            let sentinel = sentinel(master, sentinels, OP_TIMEOUT)?;
            Ok((
                Conn::Sentinel(sentinel.clone()),
                PubSubSource::Sentinel(sentinel),
            ))
        }
    }
}

/// The primary of `master` as the `sentinels` name it, answers allowed `timeout`.
fn sentinel(
    master: &str,
    sentinels: &[String],
    timeout: Duration,
) -> Result<Arc<SentinelConn>, StoreError> {
    let client = SentinelClient::build(
        sentinels.iter().map(String::as_str).collect(),
        master.to_owned(),
        None,
        SentinelServerType::Master,
    )
    .map_err(unavailable)?;
    Ok(Arc::new(SentinelConn::new(client, timeout)))
}

/// Opens a connection of its own, for blocking reads (`XREAD BLOCK`) that would stall the
/// shared, multiplexed one: its answers may take `wait` longer than [`OP_TIMEOUT`]. Lazy
/// for a single Redis and through Sentinel; a Cluster is asked for its slots at once.
pub(super) async fn connect_dedicated(target: &Target, wait: Duration) -> Result<Conn, StoreError> {
    let response_timeout = OP_TIMEOUT + wait;
    match target {
        Target::Url(url) => {
            let client = Client::open(url.as_str()).map_err(unavailable)?;
            let manager =
                ConnectionManager::new_lazy_with_config(client, manager_config(response_timeout))
                    .map_err(unavailable)?;
            Ok(Conn::Single(manager))
        }
        Target::Cluster(urls) => Ok(Conn::Cluster(
            connect_cluster(urls, response_timeout).await?,
        )),
        Target::Sentinel { master, sentinels } => Ok(Conn::Sentinel(sentinel(
            master,
            sentinels,
            response_timeout,
        )?)),
    }
}

async fn connect_cluster(
    urls: &[String],
    response_timeout: Duration,
) -> Result<ClusterConnection, StoreError> {
    let cluster = ClusterClient::builder(urls.iter().map(String::as_str))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response_timeout)
        .retries(2)
        .build()
        .map_err(unavailable)?;
    tokio::time::timeout(OP_TIMEOUT, cluster.get_async_connection())
        .await
        .map_err(|_| StoreError::Unavailable("redis cluster: connect timed out".into()))?
        .map_err(unavailable)
}

impl SentinelConn {
    fn new(client: SentinelClient, response_timeout: Duration) -> SentinelConn {
        SentinelConn {
            client: tokio::sync::Mutex::new(client),
            current: parking_lot::RwLock::new(None),
            response_timeout,
        }
    }

    async fn master_client(&self) -> redis::RedisResult<Client> {
        self.client.lock().await.async_get_client().await
    }

    async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(c) = self.current.read().clone() {
            return Ok(c);
        }
        let mut sentinels = self.client.lock().await;
        if let Some(c) = self.current.read().clone() {
            return Ok(c);
        }
        let client = sentinels.async_get_client().await?;
        let manager =
            ConnectionManager::new_lazy_with_config(client, manager_config(self.response_timeout))?;
        *self.current.write() = Some(manager.clone());
        Ok(manager)
    }

    fn saw(&self, e: &RedisError) {
        let failover_hint = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly);
        if failover_hint {
            *self.current.write() = None;
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut c = s.conn().await?;
                let r = c.req_packed_command(cmd).await;
                if let Err(e) = &r {
                    s.saw(e);
                }
                r
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(s) => Box::pin(async move {
                let mut c = s.conn().await?;
                let r = c.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &r {
                    s.saw(e);
                }
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}

async fn bounded<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    bounded_by(OP_TIMEOUT, fut).await
}

async fn bounded_by<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(StoreError::Unavailable("redis: no answer in time".into())),
    }
}

impl Conn {
    /// Whether this is a Cluster, where keys of different slots cannot meet in a script.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Runs one command.
    pub(super) async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut c = self.clone();
        bounded(cmd.query_async(&mut c)).await
    }

    /// Runs one command that may block Redis-side for up to `wait` (on a dedicated
    /// connection: see [`connect_dedicated`]).
    pub(super) async fn query_blocking<T: redis::FromRedisValue>(
        &self,
        cmd: &Cmd,
        wait: Duration,
    ) -> Result<T, StoreError> {
        let mut c = self.clone();
        bounded_by(OP_TIMEOUT + wait, cmd.query_async(&mut c)).await
    }

    /// Runs one pipeline; in a Cluster all its keys must share a slot.
    pub(super) async fn pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &Pipeline,
    ) -> Result<T, StoreError> {
        let mut c = self.clone();
        bounded(pipe.query_async(&mut c)).await
    }

    /// Runs a script by SHA, loading it first if Redis does not know it (`NOSCRIPT`).
    pub(super) async fn eval(&self, call: &Call<'_>) -> Result<Value, StoreError> {
        let cmd = call.cmd();
        let mut c = self.clone();
        bounded(async {
            match cmd.query_async::<Value>(&mut c).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    call.script.prepare_invoke().load_async(&mut c).await?;
                    cmd.query_async(&mut c).await
                }
                other => other,
            }
        })
        .await
    }
}

/// What the Redis settings put at risk, as warnings for the log (see `docs/redis.md`):
/// AOF must be on with `appendfsync always` for an acknowledged change to survive a crash,
/// and nothing may be evicted. Empty when all is well or `CONFIG` is not allowed.
pub(super) async fn durability_warnings(conn: &Conn) -> Vec<String> {
    let wanted = [
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("maxmemory-policy", "noeviction"),
    ];
    let mut warnings = Vec::new();
    for (name, value) in wanted {
        let got: Result<Vec<String>, _> =
            conn.query(redis::cmd("CONFIG").arg("GET").arg(name)).await;
        if let Ok(pair) = got {
            match pair.get(1) {
                Some(v) if v == value => {}
                Some(v) => warnings.push(format!(
                    "redis has {name} = {v}; sessiond needs {value} (see docs/redis.md)"
                )),
                None => {}
            }
        }
    }
    warnings
}

/// Where the invalidation subscription connects.
pub(super) enum PubSubSource {
    /// Any of these nodes (one Redis, or the nodes of a Cluster, tried in turn).
    Nodes(Vec<Client>),
    /// The master the sentinels name.
    Sentinel(Arc<SentinelConn>),
}

impl PubSubSource {
    /// A fresh RESP2 pub/sub connection.
    pub(super) fn open(&self) -> BoxFuture<'_, Result<PubSub, StoreError>> {
        Box::pin(async move {
            match self {
                PubSubSource::Nodes(clients) => {
                    let mut last = StoreError::Unavailable("redis: no node to subscribe to".into());
                    for client in clients {
                        match bounded(client.get_async_pubsub()).await {
                            Ok(p) => return Ok(p),
                            Err(e) => last = e,
                        }
                    }
                    Err(last)
                }
                PubSubSource::Sentinel(s) => {
                    let client = bounded(s.master_client()).await?;
                    bounded(client.get_async_pubsub()).await
                }
            }
        })
    }
}
