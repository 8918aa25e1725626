//! Real `redis-server` processes for tests (feature `conformance`): on loopback ports,
//! started by the tests themselves and killed when dropped, even on panic, plainly or over
//! TLS with a CA of the test's own ([`TestPki`]). Used by this crate's Redis tests and by
//! the binary's multi-node tests, so there is one harness. And
//! [`write_unreadable_record`], for the tests of a failed load, and [`SessionData`], the
//! synthetic population the benchmark and the examples share.

// A test harness: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sessiond_core::session::NewSession;
use sessiond_core::token::sha256;
use sessiond_core::{Policy, Session, SessionId, Timestamp, Verifier};
use sessiond_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::SessionStore;

/// How long a server may take to answer PING after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The user agents of [`SessionData`]: four real browsers, 100-140 bytes.
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
];

/// The attributes of synthetic session `i`, the contract's defaults: a user (two sessions
/// per user, the usual phone-plus-laptop), a 36-character universal id, a client IP from
/// the documentation ranges, and one of four real browser user agents. The benchmark sends
/// the same sessions to sessiond and to Redis; the examples hold them in-process.
#[derive(Clone, Debug)]
pub struct SessionData {
    pub user: String,
    pub universal_id: String,
    pub ip: String,
    pub user_agent: &'static str,
}

impl SessionData {
    pub fn nth(i: u64) -> SessionData {
        // A fixed odd multiplier spreads consecutive indexes over the id space.
        let mix = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        SessionData {
            user: format!("user{:08}", i / 2),
            universal_id: format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                mix >> 32,
                (mix >> 16) & 0xffff,
                mix & 0xfff,
                (mix >> 12) & 0xfff,
                mix & 0xffff_ffff_ffff
            ),
            ip: format!("198.51.100.{}", i % 256),
            user_agent: USER_AGENTS[(i % 4) as usize],
        }
    }

    /// The `POST /v1/sessions` request that creates this session: what the benchmark sends
    /// and `examples/hotpath` times.
    pub fn create_request(&self) -> v1::CreateSessionRequest {
        v1::CreateSessionRequest {
            user: self.user.clone(),
            universal_id: Some(self.universal_id.clone()),
            client: Some(v1::ClientInfo {
                ip: Some(self.ip.clone()),
                user_agent: Some(self.user_agent.to_owned()),
            }),
            ..v1::CreateSessionRequest::default()
        }
    }

    /// This session as the server makes it on a create at `now` under `policy` (named
    /// `policy_name`), for a store that does not choose part of the id: a fresh id tagged
    /// with its user, the attributes, the policy's deadlines. Its verifier is SHA-256 of
    /// its id, since nothing validates these by token. For a store that is to hold it, see
    /// [`SessionData::into_session_for`].
    pub fn into_session(self, policy_name: &str, policy: &Policy, now: Timestamp) -> Session {
        let id = SessionId::for_user(&self.user).expect("random ids");
        self.with_id(id, policy_name, policy, now)
    }

    /// [`SessionData::into_session`] with the id `store` issues, as the server's creates
    /// do ([`SessionStore::issue_slot`]): the embedded store then keeps the record at the
    /// slot its id names, where the server's validates find it, not in the spill map. Pass
    /// it to `store.create` with no await in between.
    pub fn into_session_for(
        self,
        store: &dyn SessionStore,
        policy_name: &str,
        policy: &Policy,
        now: Timestamp,
    ) -> Session {
        let mut id = SessionId::for_user(&self.user).expect("random ids");
        store.issue_slot(&mut id);
        self.with_id(id, policy_name, policy, now)
    }

    /// This session under `id`, with SHA-256 of that id as its verifier.
    fn with_id(self, id: SessionId, policy_name: &str, policy: &Policy, now: Timestamp) -> Session {
        let new = NewSession {
            user: self.user,
            universal_id: Some(self.universal_id),
            client_ip: self.ip.parse().ok(),
            user_agent: Some(self.user_agent.to_owned()),
            ..NewSession::default()
        };
        let verifier = Verifier(sha256(&id.0));
        Session::create(new, id, verifier, policy_name, policy, now)
    }
}

/// Adds a session record in no format sessiond writes to the closed embedded store in
/// `path` (the server's `<data_dir>/store`), so that its next load fails.
pub fn write_unreadable_record(path: &Path) {
    crate::local::write_unreadable_record(path);
}

/// Whether `redis-server` is installed. Without it: fail under `CI=true`, else skip loudly.
pub fn redis_available() -> bool {
    if on_path("redis-server") {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("redis-server not found: CI must install it (APT_PACKAGES in .ci/run)");
    }
    loud("SKIPPED: redis-server not found (apt-get install redis-server redis-tools)");
    false
}

/// Writes to the real stderr, past the test harness's capture, so a skip is seen.
fn loud(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n*** {msg} ***\n");
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false)
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` different ports on 127.0.0.1 that were free a moment ago: all are held at once
/// while they are chosen, so none is chosen twice.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: [TcpListener; N] = std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}

/// A test CA in a directory, and what it signed for 127.0.0.1 and `localhost`: a server
/// certificate for Redis and a client certificate for sessiond, each with its key, all PEM.
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// Makes the CA and both certificates, and writes them into `dir`.
    pub fn new(dir: &Path) -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir).unwrap();
        // Each certificate gets a name of its own: OpenSSL (Redis's side) takes a leaf whose
        // subject is its issuer's for self-signed, and refuses it.
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "sessiond test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        for name in ["redis", "client"] {
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                    .unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("sessiond test {name}"));
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        TestPki {
            dir: dir.to_path_buf(),
        }
    }

    /// One of its files: `ca.pem`, `redis.pem`, `redis.key`, `client.pem`, `client.key`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// What the store needs to trust this CA, and to show the client certificate when
    /// `with_client` is set.
    pub fn tls(&self, with_client: bool) -> crate::redis::Tls {
        let read = |name: &str| std::fs::read(self.file(name)).unwrap();
        crate::redis::Tls {
            ca_pem: Some(read("ca.pem")),
            client_pem: with_client.then(|| (read("client.pem"), read("client.key"))),
        }
    }
}

/// How a test Redis speaks TLS: on a port of its own beside the plain one (which the
/// harness uses to see that it is up), with certificates from `pki`, and whether it asks
/// clients for a certificate of the same CA.
struct TlsPort {
    port: u16,
    pki_dir: PathBuf,
    client_certificates: bool,
}

impl TlsPort {
    fn new(pki: &TestPki, client_certificates: bool) -> TlsPort {
        TlsPort {
            // Chosen beside the plain port when the server starts (`choose_ports`).
            port: 0,
            pki_dir: pki.dir.clone(),
            client_certificates,
        }
    }
}

/// One `redis-server` on 127.0.0.1, with AOF fsynced on every write, in its own directory.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
    tls: Option<TlsPort>,
    /// Its `requirepass`, when it has one.
    password: Option<String>,
}

impl RedisServer {
    /// Starts a server keeping its data in `dir`, on a free port.
    pub async fn start(dir: &Path) -> RedisServer {
        Self::start_with(dir, None, false, None, None).await
    }

    /// Starts a server on `port`, or on another if that one turns out to be taken (a
    /// restart reuses the port it had).
    pub async fn start_on(dir: &Path, port: u16, cluster: bool) -> RedisServer {
        Self::start_with(dir, Some(port), cluster, None, None).await
    }

    /// Starts a server that asks every client for `password` (`requirepass`), on a free
    /// port; [`RedisServer::url`] does not carry it.
    pub async fn start_with_password(dir: &Path, password: &str) -> RedisServer {
        Self::start_with(dir, None, false, None, Some(password.to_owned())).await
    }

    /// Starts a server that also speaks TLS, with `pki`'s certificates, on a free port;
    /// [`RedisServer::url`] is then its `rediss://` URL. With `client_certificates`, it
    /// refuses a TLS client without a certificate from `pki`'s CA.
    pub async fn start_tls(dir: &Path, pki: &TestPki, client_certificates: bool) -> RedisServer {
        let tls = TlsPort::new(pki, client_certificates);
        Self::start_with(dir, None, false, Some(tls), None).await
    }

    /// [`RedisServer::start_tls`] (no client certificates asked for) with a `password`.
    pub async fn start_tls_with_password(dir: &Path, pki: &TestPki, password: &str) -> RedisServer {
        let tls = TlsPort::new(pki, false);
        Self::start_with(dir, None, false, Some(tls), Some(password.to_owned())).await
    }

    /// Starts a server on `port`, or on ports chosen here when `None` (a TLS server's two
    /// ports are chosen together, so it takes `None`).
    async fn start_with(
        dir: &Path,
        port: Option<u16>,
        cluster: bool,
        tls: Option<TlsPort>,
        password: Option<String>,
    ) -> RedisServer {
        debug_assert!(
            port.is_none() || tls.is_none(),
            "a TLS server's ports are chosen"
        );
        let mut server = RedisServer {
            child: None,
            port: port.unwrap_or(0),
            dir: dir.to_path_buf(),
            cluster,
            tls,
            password,
        };
        on_fresh_ports(async |first| {
            // The first try keeps a port the caller gave.
            if !first || port.is_none() {
                server.choose_ports();
            }
            server.launch().await
        })
        .await;
        server
    }

    /// Fresh ports: the plain one, and the TLS one beside it if it speaks TLS.
    fn choose_ports(&mut self) {
        match &mut self.tls {
            Some(tls) => [self.port, tls.port] = free_ports(),
            None => self.port = free_port(),
        }
    }

    /// Starts it again on its ports, or panics saying why not.
    async fn spawn(&mut self) {
        if let Err(e) = self.launch().await {
            panic!("{e}");
        }
    }

    /// Starts `redis-server` on this server's ports and waits (bounded) for its answer.
    async fn launch(&mut self) -> Result<(), Launch> {
        std::fs::create_dir_all(&self.dir).unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--protected-mode", "no", "--loglevel", "warning"]);
        if let Some(password) = &self.password {
            cmd.args(["--requirepass", password]);
        }
        if let Some(tls) = &self.tls {
            cmd.args(["--tls-port", &tls.port.to_string()])
                .arg("--tls-cert-file")
                .arg(tls.pki_dir.join("redis.pem"))
                .arg("--tls-key-file")
                .arg(tls.pki_dir.join("redis.key"))
                .arg("--tls-ca-cert-file")
                .arg(tls.pki_dir.join("ca.pem"))
                .args([
                    "--tls-auth-clients",
                    if tls.client_certificates { "yes" } else { "no" },
                ]);
        }
        if self.cluster {
            if self.tls.is_some() {
                // The cluster bus and replication speak TLS too; each node tells a client
                // the ports of the kind (TLS or plain) it connected with.
                cmd.args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            }
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "2000"]);
        }
        // Its log (warnings only) says why, when it does not start.
        let log = self.dir.join("redis.log");
        let child = cmd
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        until_answering(
            &mut self.child,
            "redis-server",
            self.port,
            self.password.as_deref(),
            Some(&log),
        )
        .await
    }

    /// Its URL: `rediss://` on its TLS port when it has one.
    pub fn url(&self) -> String {
        match &self.tls {
            Some(tls) => format!("rediss://127.0.0.1:{}/", tls.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Kills the server at once (SIGKILL: nothing is flushed on the way out).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why a `redis-server` did not start.
#[derive(Debug)]
enum Launch {
    /// It exited (a port taken, say), with its status and log, or its port answers for
    /// another process.
    Exited(String),
    /// It ran but did not answer in time.
    Silent(String),
}

impl Launch {
    /// `port` answers for process `pid`, not the one just started: another test's server
    /// took it first.
    fn taken(port: u16, pid: u32) -> Launch {
        Launch::Exited(format!("port {port} answers for another process ({pid})"))
    }
}

impl std::fmt::Display for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Launch::Exited(why) => write!(f, "did not start: {why}"),
            Launch::Silent(why) => f.write_str(why),
        }
    }
}

/// Starts a server with `attempt` (told whether it is the first try), on fresh ports each
/// later try: ports chosen a moment ago may be taken by another test's server by now, and
/// a server that exits at start over one is given fresh ones, twice at most. Panics saying
/// why when it does not start.
async fn on_fresh_ports<T>(mut attempt: impl AsyncFnMut(bool) -> Result<T, Launch>) -> T {
    for tries_left in (0..3).rev() {
        match attempt(tries_left == 2).await {
            Ok(started) => return started,
            Err(Launch::Exited(why)) if tries_left > 0 => {
                eprintln!("did not start ({why}); trying other ports");
            }
            Err(e) => panic!("{e}"),
        }
    }
    unreachable!("the last try panics")
}

/// Waits (bounded) until the server `child` (a `what`, started a moment ago) answers on
/// `port` as itself, logged in with `password` when given; or says why it does not: it
/// exited (`child` is then emptied), its port answers for another process (taken, as one
/// it exited over), or nothing answered in time. `log`, when given, is quoted in the error.
async fn until_answering(
    child: &mut Option<Child>,
    what: &str,
    port: u16,
    password: Option<&str>,
    log: Option<&Path>,
) -> Result<(), Launch> {
    let said = || {
        log.and_then(|l| std::fs::read_to_string(l).ok())
            .map(|s| format!(": {}", s.trim()))
            .unwrap_or_default()
    };
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let Some(started) = child.as_mut() else {
            unreachable!("a server waited for was started");
        };
        if pong(port).await {
            match answering_pid(port, password).await {
                Some(pid) if pid == started.id() => return Ok(()),
                Some(pid) => return Err(Launch::taken(port, pid)),
                None => {}
            }
        }
        if let Ok(Some(status)) = started.try_wait() {
            *child = None;
            return Err(Launch::Exited(format!("{what} {status}{}", said())));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Launch::Silent(format!(
                "{what} on port {port} did not answer in {START_TIMEOUT:?}{}",
                said()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the server on `port` answers PING with PONG (not LOADING), or asks for its
/// password (`NOAUTH`), each step bounded.
async fn pong(port: u16) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH")
    )
}

/// The process id the server on `port` gives in `INFO server` (logged in with `password`
/// when given), or `None` while nothing answers: so a harness knows the server answering
/// is the one it started.
async fn answering_pid(port: u16, password: Option<&str>) -> Option<u32> {
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    let client = redis::Client::open(format!("redis://{auth}127.0.0.1:{port}/")).ok()?;
    let info = tokio::time::timeout(Duration::from_millis(500), async {
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("INFO")
            .arg("server")
            .query_async::<String>(&mut con)
            .await
            .ok()
    })
    .await
    .ok()??;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()
}

/// The counters `INFO stats` gives for `names`, in order (`total_reads_processed`, say),
/// read on `con`; a counter it does not give fails the caller.
pub async fn info_stats(con: &mut redis::aio::MultiplexedConnection, names: &[&str]) -> Vec<u64> {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(con)
        .await
        .unwrap();
    names
        .iter()
        .map(|name| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("INFO stats has no {name}"))
        })
        .collect()
}

/// Three masters, no replicas, formed with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// `None` (after saying why) when `redis-cli` is missing and we are not under CI.
    pub async fn start() -> Option<RedisCluster> {
        Self::start_with(None).await
    }

    /// [`RedisCluster::start`] with every node speaking TLS with `pki`'s certificates on
    /// its bus and to clients (which need no certificate); [`RedisCluster::urls`] are then
    /// `rediss://`.
    pub async fn start_tls(pki: &TestPki) -> Option<RedisCluster> {
        Self::start_with(Some(pki)).await
    }

    async fn start_with(pki: Option<&TestPki>) -> Option<RedisCluster> {
        if !on_path("redis-cli") {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("redis-cli not found: CI must install redis-tools");
            }
            loud("SKIPPED: redis-cli not found (apt-get install redis-tools)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let tls = pki.map(|pki| TlsPort::new(pki, false));
            let node_dir = dir.path().join(format!("n{i}"));
            nodes.push(RedisServer::start_with(&node_dir, None, true, tls, None).await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_until_ok().await;
        Some(cluster)
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Waits (bounded) until every node says `cluster_state:ok`.
    async fn wait_until_ok(&self) {
        for _ in 0..200 {
            let all_ok = self.nodes.iter().all(|n| {
                Command::new("redis-cli")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &n.port.to_string(),
                        "cluster",
                        "info",
                    ])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                    .unwrap_or(false)
            });
            if all_ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the redis cluster did not reach cluster_state:ok");
    }
}

/// One Redis Sentinel on 127.0.0.1 watching the master on `master_port` as `mymaster`.
pub struct RedisSentinel {
    child: Option<Child>,
    pub port: u16,
    /// The port it speaks TLS on, when it does.
    tls_port: Option<u16>,
}

impl RedisSentinel {
    pub async fn start(dir: &Path, master_port: u16) -> RedisSentinel {
        Self::start_with(dir, master_port, None, None).await
    }

    /// A sentinel watching `master`, which asks for `password` (`sentinel auth-pass`).
    pub async fn start_authed(dir: &Path, master: &RedisServer, password: &str) -> RedisSentinel {
        Self::start_with(dir, master.port, None, Some(password)).await
    }

    /// A sentinel that speaks TLS with `pki`'s certificates, to clients (which need no
    /// certificate) and to the master, watching `master`'s TLS port with its password if
    /// it has one;
    /// [`RedisSentinel::url`] is then `rediss://`.
    pub async fn start_tls(dir: &Path, master: &RedisServer, pki: &TestPki) -> RedisSentinel {
        let master_port = master.tls.as_ref().expect("a master that speaks TLS").port;
        Self::start_with(dir, master_port, Some(pki), master.password.as_deref()).await
    }

    async fn start_with(
        dir: &Path,
        master_port: u16,
        pki: Option<&TestPki>,
        master_password: Option<&str>,
    ) -> RedisSentinel {
        std::fs::create_dir_all(dir).unwrap();
        on_fresh_ports(async |_| {
            let mut sentinel = Self::launch(dir, master_port, pki, master_password);
            sentinel.until_up().await.map(|()| sentinel)
        })
        .await
    }

    /// Writes its configuration with fresh ports and starts it.
    fn launch(
        dir: &Path,
        master_port: u16,
        pki: Option<&TestPki>,
        master_password: Option<&str>,
    ) -> RedisSentinel {
        // Both ports at once, so the TLS one is never the plain one.
        let [port, tls_port] = free_ports();
        let conf = dir.join("sentinel.conf");
        let mut text = format!(
            "bind 127.0.0.1\nport {port}\ndir {}\n\
             sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds mymaster 1000\n",
            dir.display()
        );
        if let Some(password) = master_password {
            text += &format!("sentinel auth-pass mymaster {password}\n");
        }
        let tls_port = pki.map(|pki| {
            let file = |name: &str| pki.file(name).display().to_string();
            text += &format!(
                "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                file("redis.pem"),
                file("redis.key"),
                file("ca.pem")
            );
            tls_port
        });
        std::fs::write(&conf, text).unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        RedisSentinel {
            child: Some(child),
            port,
            tls_port,
        }
    }

    /// Waits (bounded) until this sentinel answers on its port, or says why it does not: a
    /// port that answers for another process was taken, as one the sentinel exited over.
    async fn until_up(&mut self) -> Result<(), Launch> {
        until_answering(&mut self.child, "redis sentinel", self.port, None, None).await
    }

    /// Its URL: `rediss://` on its TLS port when it has one.
    pub fn url(&self) -> String {
        match self.tls_port {
            Some(port) => format!("rediss://127.0.0.1:{port}/"),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_another_server_answers_on_is_not_taken_for_the_one_started() {
        if !redis_available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start(dir.path()).await;
        // Started, but another process (the Redis above) answers on its port.
        let mut posing = RedisSentinel {
            child: Some(Command::new("sleep").arg("30").spawn().unwrap()),
            port: redis.port,
            tls_port: None,
        };
        let why = posing.until_up().await.unwrap_err();
        assert!(
            matches!(&why, Launch::Exited(w) if w.contains("answers for another process")),
            "{why}"
        );
        // The Redis itself is its own.
        let own = redis.child.as_ref().unwrap().id();
        assert_eq!(answering_pid(redis.port, None).await, Some(own));
    }
}
