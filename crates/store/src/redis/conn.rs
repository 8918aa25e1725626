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
//!
//! TLS: a `rediss://` URL connects over TLS (rustls), and checks Redis's certificate and
//! name against the system's roots, or against the CAs of [`Tls::ca_pem`]. There is no way
//! to turn the check off: the URL fragment `#insecure` is refused.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{
    SentinelClient, SentinelClientBuilder, SentinelNodeConnectionInfo, SentinelServerType,
};
use redis::{
    Client, ClientTlsConfig, Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline,
    RedisConnectionInfo, RedisError, RedisFuture, ServerErrorKind, TlsCertificates, TlsMode, Value,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

impl Target {
    /// Every URL it names.
    fn urls(&self) -> &[String] {
        match self {
            Target::Url(url) => std::slice::from_ref(url),
            Target::Cluster(urls)
            | Target::Sentinel {
                sentinels: urls, ..
            } => urls,
        }
    }

    /// Whether its URLs ask for TLS (`rediss://`). [`check_target`] makes sure they agree.
    fn uses_tls(&self) -> bool {
        self.urls().iter().any(|u| is_tls(u))
    }
}

fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://")
}

/// A connection to the store, whatever its shape. Cheap to clone; clones share sockets.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>),
    /// A single Redis or a Sentinel's master over TLS, its scripts sent in batches; or a
    /// Cluster's connection for its `{global}` steps alone.
    Batched(Arc<Batches>),
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

/// Most scripts sent in one batch.
const MAX_BATCH: usize = 128;

/// Scripts from concurrent callers, sent to Redis as one pipeline at a time, each batch
/// taking what queued while the one before was out: a group commit.
///
/// Over TLS this is what keeps `appendfsync always` from costing one fsync per write.
/// Redis reads one TLS record per client per turn of its event loop and fsyncs the AOF
/// before the next, while a multiplexed connection sends each caller's command as soon as
/// it comes, often one record each. Plain TCP is spared: one read takes every command
/// queued on the socket. In a Cluster, only the `{global}` steps share a slot and so can
/// share a pipeline ([`Endpoint::batched_globals`]). `examples/redis_tls.rs` measures it
/// (docs/redis.md, TLS).
pub(super) struct Batches {
    inner: Conn,
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
}

/// One script of a batch and where its answer goes.
struct Job {
    cmd: Cmd,
    reply: tokio::sync::oneshot::Sender<redis::RedisResult<Value>>,
}

impl Batches {
    /// Wraps `inner` and starts the task that sends its batches; the task ends when the
    /// last clone of the returned connection is dropped.
    fn start(inner: Conn) -> Conn {
        let (jobs, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(send_batches(inner.clone(), queue));
        Conn::Batched(Arc::new(Batches { inner, jobs }))
    }

    /// Runs `cmd` in the next batch. The outer error: the batches are no longer sent.
    async fn run(&self, cmd: &Cmd) -> Result<redis::RedisResult<Value>, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            cmd: cmd.clone(),
            reply,
        };
        let gone = || StoreError::Unavailable("redis: the connection's batches stopped".into());
        self.jobs.send(job).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())
    }
}

/// Sends the queued scripts as pipelines, one in flight at a time, and hands each caller
/// its own answer (a script's error goes to its caller alone; a failed round trip to every
/// caller of the batch).
async fn send_batches(inner: Conn, mut queue: tokio::sync::mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A caller that gave up (its time ran out) has nothing to wait for.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in &mut jobs {
            pipe.add_command(std::mem::take(&mut job.cmd));
        }
        let mut c = inner.clone();
        let sent = tokio::time::timeout(
            OP_TIMEOUT,
            pipe.query_async::<Vec<redis::RedisResult<Value>>>(&mut c),
        )
        .await;
        let failed = |e: RedisError| -> Vec<redis::RedisResult<Value>> {
            std::iter::repeat_n(Err(e), jobs.len()).collect()
        };
        let answers = match sent {
            Ok(Ok(answers)) if answers.len() == jobs.len() => answers,
            Ok(Ok(_)) => failed(RedisError::from((
                ErrorKind::Client,
                "a batch got a different number of answers",
            ))),
            Ok(Err(e)) => failed(e),
            Err(_) => failed(RedisError::from((ErrorKind::Io, "no answer in time"))),
        };
        for (job, answer) in jobs.into_iter().zip(answers) {
            // A caller that stopped waiting no longer wants it.
            let _ = job.reply.send(answer);
        }
    }
}

/// What TLS to Redis trusts and shows, beyond the `rediss://` scheme that turns it on.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM certificates of the CAs that sign Redis's certificates, trusted instead of the
    /// system's roots (a private CA). `None`: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A PEM certificate chain and its PEM private key, shown to a Redis that asks clients
    /// for one (`tls-auth-clients yes`).
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key; the certificates say nothing useful in a log either.
        f.debug_struct("Tls")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<given>"))
            .field("client_pem", &self.client_pem.as_ref().map(|_| "<given>"))
            .finish()
    }
}

impl Tls {
    /// The certificates in the redis crate's form, or `None` when nothing is given.
    fn certificates(&self) -> Option<TlsCertificates> {
        if *self == Tls::default() {
            return None;
        }
        Some(TlsCertificates {
            client_tls: self.client_pem.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca_pem.clone(),
        })
    }
}

/// The credentials of the master a Sentinel names (its `requirepass`, or an ACL user),
/// which the sentinels' own URLs do not carry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MasterAuth {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for MasterAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<given>"))
            .finish()
    }
}

impl MasterAuth {
    /// As the redis crate says it, with the master's database `db`, or `None` when there
    /// is nothing to say (no credentials, database 0).
    fn connection_info(&self, db: i64) -> Option<RedisConnectionInfo> {
        if *self == MasterAuth::default() && db == 0 {
            return None;
        }
        let mut info = RedisConnectionInfo::default().set_db(db);
        if let Some(user) = &self.username {
            info = info.set_username(user);
        }
        if let Some(password) = &self.password {
            info = info.set_password(password);
        }
        Some(info)
    }
}

/// Where the store connects, and how: what its connections are made from.
#[derive(Clone)]
pub(super) struct Endpoint {
    target: Target,
    certificates: Option<TlsCertificates>,
    master_auth: MasterAuth,
}

impl Endpoint {
    pub(super) fn new(target: Target, tls: &Tls, master_auth: &MasterAuth) -> Endpoint {
        Endpoint {
            target,
            certificates: tls.certificates(),
            master_auth: master_auth.clone(),
        }
    }

    /// `conn`, with its scripts sent in batches when it speaks TLS (see [`Batches`]).
    fn batched(&self, conn: Conn) -> Conn {
        if self.target.uses_tls() {
            Batches::start(conn)
        } else {
            conn
        }
    }

    /// Where a Cluster's `{global}` steps go: over TLS, `conn` with them sent in batches
    /// (they all share one slot, so one pipeline can carry them, which a Cluster's other
    /// scripts cannot); otherwise `conn` itself.
    pub(super) fn batched_globals(&self, conn: &Conn) -> Conn {
        if conn.is_cluster() && self.target.uses_tls() {
            Batches::start(conn.clone())
        } else {
            conn.clone()
        }
    }

    /// A client for one of its URLs.
    fn client(&self, url: &str) -> redis::RedisResult<Client> {
        match &self.certificates {
            Some(certs) => Client::build_with_tls(url, certs.clone()),
            None => Client::open(url),
        }
    }
}

/// Whether `url` is a Redis URL this build can connect to, or what is wrong with it, so
/// that the configuration refuses it at start under its key's name. The answer never
/// repeats the URL, which may hold a password.
pub fn check_url(url: &str) -> Result<(), &'static str> {
    if is_tls(url) && url.contains('#') {
        return Err(
            "a `rediss://` URL takes no fragment: Redis's certificate is always checked \
             (`#insecure` cannot turn that off); for a private CA, set store.redis.tls.ca_file",
        );
    }
    Client::open(url).map(|_| ()).map_err(|_| {
        "not a Redis URL: redis://[[user]:password@]host[:port][/db], \
         rediss://… for TLS, or redis+unix:///path/to/socket"
    })
}

/// Whether `target` and `tls` go together, or what is wrong, for the configuration to
/// refuse at start (each URL has passed [`check_url`]): the URLs must all ask for TLS or
/// none, TLS settings need `rediss://`, the PEM files must hold what they are for, and a
/// client certificate needs its key. The answer starts with the setting at fault, named as
/// under `store.redis` (`cluster: …`, `tls.ca_file: …`).
pub fn check_target(target: &Target, tls: &Tls) -> Result<(), String> {
    let urls = target.urls();
    if urls.iter().any(|u| is_tls(u)) && !urls.iter().all(|u| is_tls(u)) {
        // One URL cannot disagree with itself: this is a Cluster's or the sentinels'.
        let key = match target {
            Target::Cluster(_) => "cluster",
            _ => "sentinels",
        };
        return Err(format!(
            "{key}: the URLs must all use `rediss://` (TLS) or all `redis://`, not both"
        ));
    }
    if let Target::Sentinel { sentinels, .. } = target {
        check_sentinels(sentinels, target.uses_tls())?;
    }
    if *tls != Tls::default() && !target.uses_tls() {
        return Err(
            "tls: TLS settings are given, but the URLs do not use `rediss://`, which \
             connects over TLS"
                .into(),
        );
    }
    if let Some(ca) = &tls.ca_pem {
        let certs = CertificateDer::pem_slice_iter(ca)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tls.ca_file: not PEM certificates ({e})"))?;
        if certs.is_empty() {
            return Err("tls.ca_file: holds no PEM certificate".into());
        }
    }
    if let Some((cert, key)) = &tls.client_pem {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tls.cert_file: not PEM certificates ({e})"))?;
        if chain.is_empty() {
            return Err("tls.cert_file: holds no PEM certificate".into());
        }
        // The error's text could quote the key's bytes; say only what is wrong.
        PrivateKeyDer::from_pem_slice(key)
            .map_err(|_| "tls.key_file: holds no PEM private key".to_owned())?;
    }
    Ok(())
}

/// What the sentinels' URLs must agree on: the database (sentinels have none; it is the
/// master's, and there is one master) and, over TLS, the credentials (the redis crate logs
/// in to every sentinel with one set there). Never quotes a URL, which may hold a password.
fn check_sentinels(urls: &[String], tls: bool) -> Result<(), String> {
    let settings = urls
        .iter()
        .map(|u| {
            u.as_str()
                .into_connection_info()
                .map(|i| i.redis_settings().clone())
                .map_err(|_| "sentinels: not a Redis URL".to_owned())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = settings.first() else {
        return Ok(());
    };
    if let Some(other) = settings.iter().find(|s| s.db() != first.db()) {
        return Err(format!(
            "sentinels: the URLs name different databases (/{} and /{}); the database a \
             sentinel URL names is the master's, and they must agree",
            first.db(),
            other.db()
        ));
    }
    let same_credentials = |s: &RedisConnectionInfo| {
        s.username() == first.username() && s.password() == first.password()
    };
    if tls && !settings.iter().all(same_credentials) {
        return Err(
            "sentinels: over TLS, every sentinel is logged in to with one user name and \
             password; the URLs give different ones"
                .into(),
        );
    }
    Ok(())
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

/// Opens the connection to `endpoint` and says where to subscribe. A single Redis is
/// connected lazily, so a node starts (not ready) while Redis is down.
pub(super) async fn connect(endpoint: &Endpoint) -> Result<(Conn, PubSubSource), StoreError> {
    // rustls needs its crypto chosen once per process; with one provider built in, this
    // only makes sure, and a second call changes nothing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match &endpoint.target {
        Target::Url(url) => {
            let client = endpoint.client(url).map_err(unavailable)?;
            let manager =
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config(OP_TIMEOUT))
                    .map_err(unavailable)?;
            let conn = endpoint.batched(Conn::Single(manager));
            Ok((conn, PubSubSource::Nodes(vec![client])))
        }
        Target::Cluster(urls) => {
            let conn = connect_cluster(endpoint, urls, OP_TIMEOUT).await?;
            // Classic PUBLISH reaches every node of a cluster: any node will do.
            let nodes = urls
                .iter()
                .map(|u| endpoint.client(u).map_err(unavailable))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((Conn::Cluster(conn), PubSubSource::Nodes(nodes)))
        }
        Target::Sentinel { master, sentinels } => {
            let sentinel = sentinel(endpoint, master, sentinels, OP_TIMEOUT)?;
            let conn = endpoint.batched(Conn::Sentinel(sentinel.clone()));
            Ok((conn, PubSubSource::Sentinel(sentinel)))
        }
    }
}

/// The primary of `master` as the `sentinels` name it, answers allowed `timeout`, logged
/// in to with the endpoint's [`MasterAuth`], in the database the sentinels' URLs name
/// (sentinels have none of their own: asked to `SELECT` one, they refuse). Over TLS, the
/// sentinels and the master are both reached by TLS, with the same trust, and the
/// sentinels with the URLs' one set of credentials ([`check_target`]).
fn sentinel(
    endpoint: &Endpoint,
    master: &str,
    sentinels: &[String],
    timeout: Duration,
) -> Result<Arc<SentinelConn>, StoreError> {
    let infos = sentinels
        .iter()
        .map(|u| u.as_str().into_connection_info())
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)?;
    let db = infos.first().map_or(0, |i| i.redis_settings().db());
    let infos: Vec<ConnectionInfo> = infos
        .into_iter()
        .map(|i| {
            let settings = i.redis_settings().clone().set_db(0);
            i.set_redis_settings(settings)
        })
        .collect();
    let client = if endpoint.target.uses_tls() {
        let addrs = infos.iter().map(|i| i.addr().clone());
        let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
            .map_err(unavailable)?
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_redis_db(db);
        if let Some(first) = infos.first().map(|i| i.redis_settings()) {
            if let Some(user) = first.username() {
                builder = builder.set_client_to_sentinel_username(user);
            }
            if let Some(password) = first.password() {
                builder = builder.set_client_to_sentinel_password(password);
            }
        }
        if let Some(certs) = &endpoint.certificates {
            builder = builder
                .set_client_to_sentinel_certificates(certs.clone())
                .set_client_to_redis_certificates(certs.clone());
        }
        let auth = &endpoint.master_auth;
        if let Some(user) = &auth.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &auth.password {
            builder = builder.set_client_to_redis_password(password);
        }
        builder.build()
    } else {
        let master_info = endpoint
            .master_auth
            .connection_info(db)
            .map(|info| SentinelNodeConnectionInfo::default().set_redis_connection_info(info));
        SentinelClient::build(infos, master, master_info, SentinelServerType::Master)
    }
    .map_err(unavailable)?;
    Ok(Arc::new(SentinelConn::new(client, timeout)))
}

/// Opens a connection of its own, for blocking reads (`XREAD BLOCK`) that would stall the
/// shared, multiplexed one: its answers may take `wait` longer than [`OP_TIMEOUT`]. Lazy
/// for a single Redis and through Sentinel; a Cluster is asked for its slots at once.
pub(super) async fn connect_dedicated(
    endpoint: &Endpoint,
    wait: Duration,
) -> Result<Conn, StoreError> {
    let response_timeout = OP_TIMEOUT + wait;
    match &endpoint.target {
        Target::Url(url) => {
            let client = endpoint.client(url).map_err(unavailable)?;
            let manager =
                ConnectionManager::new_lazy_with_config(client, manager_config(response_timeout))
                    .map_err(unavailable)?;
            Ok(Conn::Single(manager))
        }
        Target::Cluster(urls) => Ok(Conn::Cluster(
            connect_cluster(endpoint, urls, response_timeout).await?,
        )),
        Target::Sentinel { master, sentinels } => Ok(Conn::Sentinel(sentinel(
            endpoint,
            master,
            sentinels,
            response_timeout,
        )?)),
    }
}

async fn connect_cluster(
    endpoint: &Endpoint,
    urls: &[String],
    response_timeout: Duration,
) -> Result<ClusterConnection, StoreError> {
    let mut builder = ClusterClient::builder(urls.iter().map(String::as_str))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response_timeout)
        .retries(2);
    if let Some(certs) = &endpoint.certificates {
        builder = builder.certs(certs.clone());
    }
    let cluster = builder.build().map_err(unavailable)?;
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
            Conn::Batched(b) => Box::pin(async move {
                let mut c = b.inner.clone();
                c.req_packed_command(cmd).await
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
            Conn::Batched(b) => Box::pin(async move {
                let mut c = b.inner.clone();
                c.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
            Conn::Batched(b) => b.inner.get_db(),
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
        let run = async {
            let first = match self {
                Conn::Batched(b) => b.run(cmd).await?,
                _ => cmd.query_async::<Value>(&mut c).await,
            };
            match first {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    let load = call.script.prepare_invoke().load_async(&mut c).await;
                    load.map_err(unavailable)?;
                    cmd.query_async(&mut c).await.map_err(unavailable)
                }
                other => other.map_err(unavailable),
            }
        };
        match tokio::time::timeout(OP_TIMEOUT, run).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable("redis: no answer in time".into())),
        }
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
