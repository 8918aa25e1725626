//! Several real `sessiond serve` processes on one real `redis-server`: any node serves any
//! session, a logout on one is refused on the others within a measured bound, the per-user
//! limit holds across nodes, `kill -9` of nodes (and of Redis, with its AOF) loses nothing
//! acknowledged, a Redis outage fails closed and heals without restarts, and change events
//! cross nodes; and the same over TLS with client certificates, failing closed while the
//! certificates do not match. Skipped loudly without `redis-server` (fails under
//! `CI=true`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sessiond_client::{Client, EndReason, v1};
use sessiond_store::testkit::TestPki;

use crate::common::redis::Redis;
use crate::common::{Server, code};

/// State shared by the crash test's writers; the lock is held only to record.
type Shared<T> = Arc<std::sync::Mutex<T>>;

/// 128 random bits from the OS, as hex.
fn random_hex() -> String {
    sessiond_core::SessionId::random()
        .expect("randomness")
        .to_string()
}

fn req(user: &str) -> v1::CreateSessionRequest {
    v1::CreateSessionRequest {
        user: user.into(),
        ..Default::default()
    }
}

/// A Redis and `n` nodes sharing it, each with a data dir of its own and one config.
struct Cluster {
    // Dropped last: nodes and Redis are killed before their directories go.
    nodes: Vec<Option<Server>>,
    redis: Redis,
    dirs: Vec<PathBuf>,
    config: String,
    agent_key: String,
    admin_token: String,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// `None` when `redis-server` is missing outside CI.
    async fn start(n: usize) -> Option<Cluster> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let redis = Redis::start(&tmp.path().join("redis")).await?;
        Some(Cluster::on(redis, "", n, tmp))
    }

    /// [`Cluster::start`] with Redis speaking TLS only to clients with a certificate of
    /// its CA; the nodes trust and show what `[store.redis.tls]` in `tls` names (`pki`
    /// holds the CA and the certificates of the test's own).
    async fn start_tls(n: usize, tls: impl Fn(&TestPki) -> String) -> Option<Cluster> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new(&tmp.path().join("pki"));
        let redis = Redis::start_tls(&tmp.path().join("redis"), &pki).await?;
        Some(Cluster::on(redis, &tls(&pki), n, tmp))
    }

    /// `n` nodes on `redis`, with `extra` added to their config.
    fn on(redis: Redis, extra: &str, n: usize, tmp: tempfile::TempDir) -> Cluster {
        let agent_key = random_hex();
        let admin_token = random_hex();
        // 256 bits of token key, shared by every node.
        let secret = format!("{}{}", random_hex(), random_hex());
        let config = format!(
            r#"
[session]
idle_timeout = "30m"
max_lifetime = "12h"

[policies.limited]
max_per_user = 3
on_limit = "deny"

[store]
kind = "redis"

[store.redis]
url = "{url}"
key_prefix = "t{prefix}:"

[[token.keys]]
id = "k1"
secret = "{secret}"

[[agents]]
name = "web"
key = "{agent_key}"

[admin]
token = "{admin_token}"
{extra}
"#,
            url = redis.url(),
            prefix = &random_hex()[..12],
        );
        let dirs: Vec<PathBuf> = (0..n)
            .map(|i| tmp.path().join(format!("node{i}")))
            .collect();
        let nodes = dirs
            .iter()
            .map(|d| Some(Server::start(d, Some(&config))))
            .collect();
        Cluster {
            nodes,
            redis,
            dirs,
            config,
            agent_key,
            admin_token,
            _tmp: tmp,
        }
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("node running")
    }

    fn agent(&self, i: usize) -> Client {
        Client::new(&self.node(i).url, &self.agent_key).expect("client")
    }

    fn admin(&self, i: usize) -> Client {
        Client::new(&self.node(i).url, &self.admin_token).expect("client")
    }

    fn kill9(&mut self, i: usize) {
        self.nodes[i].take().expect("node running").kill9();
    }

    /// Starts node `i` again, on its data dir and the shared config (a new port).
    fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "kill it first");
        self.nodes[i] = Some(Server::start(&self.dirs[i], Some(&self.config)));
    }
}

/// The end reason of a `session_ended` refusal; panics on anything else.
fn ended_reason(result: Result<v1::Session, sessiond_client::Error>) -> EndReason {
    match result {
        Err(sessiond_client::Error::Api { detail, .. })
            if detail.code.as_str() == "session_ended" =>
        {
            detail.reason.expect("session_ended carries its reason")
        }
        Ok(s) => panic!("session {} is live, expected it ended", s.id),
        Err(e) => panic!("expected session_ended, got {e}"),
    }
}

/// Polls `node` with `token` until it answers `session_ended`, never pausing between tries
/// (each is one HTTP round trip), for at most 2 s. Returns the time since `started`.
async fn refused_on(node: &Client, token: &str, started: Instant) -> Duration {
    for _ in 0..1_000_000 {
        match node.validate(token, false).await {
            Ok(_) => {}
            Err(e) if code(&e) == "session_ended" => return started.elapsed(),
            Err(e) => panic!("unexpected answer while waiting for the logout: {e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the other node still accepts the token 2 s after the logout"
        );
        tokio::task::yield_now().await;
    }
    panic!("the other node never refused the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_serves_on_every_node_and_a_logout_is_refused_elsewhere_within_1s() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let (a, b) = (cluster.agent(0), cluster.agent(1));
    let mut worst = Duration::ZERO;
    for round in 0..5 {
        let made = a
            .create_session(&req(&format!("alice{round}")))
            .await
            .unwrap();
        // The first validate on B reads Redis; the next ones come from B's near cache.
        for _ in 0..3 {
            assert_eq!(
                b.validate(&made.token, true).await.unwrap().id,
                made.session.id
            );
        }
        let started = Instant::now();
        a.logout(&made.token).await.unwrap();
        let acknowledged = started.elapsed();
        let d = refused_on(&b, &made.token, started).await;
        eprintln!(
            "revocation seen on B after {d:?} (logout acknowledged on A after {acknowledged:?})"
        );
        assert_eq!(
            ended_reason(b.validate(&made.token, true).await),
            EndReason::LoggedOut
        );
        worst = worst.max(d);
    }
    assert!(worst <= Duration::from_secs(1), "worst delay {worst:?}");
}

/// `[store.redis.tls]` naming `pki`'s CA and, with `client`, its client certificate.
fn tls_section(pki: &TestPki, client: bool) -> String {
    let mut section = format!(
        "[store.redis.tls]\nca_file = \"{}\"\n",
        pki.file("ca.pem").display()
    );
    if client {
        section += &format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.file("client.pem").display(),
            pki.file("client.key").display()
        );
    }
    section
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_client_certificates_nodes_share_sessions_and_logouts() {
    let Some(cluster) = Cluster::start_tls(2, |pki| tls_section(pki, true)).await else {
        return;
    };
    assert!(cluster.redis.url().starts_with("rediss://"));
    let (a, b) = (cluster.agent(0), cluster.agent(1));
    cluster
        .node(0)
        .client("")
        .readyz()
        .await
        .expect("ready over TLS");
    let made = a.create_session(&req("tilda")).await.unwrap();
    assert_eq!(
        b.validate(&made.token, true).await.unwrap().id,
        made.session.id
    );
    let started = Instant::now();
    b.logout(&made.token).await.unwrap();
    let d = refused_on(&a, &made.token, started).await;
    eprintln!("over TLS, revocation seen on A after {d:?}");
    assert_eq!(
        ended_reason(a.validate(&made.token, true).await),
        EndReason::LoggedOut
    );
}

/// A node that does not trust Redis's CA, or has no client certificate for a Redis that
/// asks for one, starts but is not ready, and every call fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_node_without_the_right_certificates_fails_closed() {
    let other = tempfile::tempdir().expect("tempdir");
    let stranger = TestPki::new(other.path());
    for (what, other_ca) in [("another CA", true), ("no client certificate", false)] {
        let tls = |pki: &TestPki| match other_ca {
            true => tls_section(&stranger, true),
            false => tls_section(pki, false),
        };
        let Some(cluster) = Cluster::start_tls(1, tls).await else {
            return;
        };
        let node = cluster.node(0);
        let err = node.client("").readyz().await.unwrap_err();
        assert_eq!(err.status(), Some(503), "{what}: /readyz: {err}");
        let err = cluster
            .agent(0)
            .create_session(&req("ulla"))
            .await
            .unwrap_err();
        assert_eq!(code(&err), "store_unavailable", "{what}: create: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_name_the_redis_store_and_count_every_node() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    cluster.agent(1).create_session(&req("bob")).await.unwrap();
    cluster.agent(2).create_session(&req("carl")).await.unwrap();
    let admin = cluster.admin(0);
    let started = Instant::now();
    let stats = loop {
        let stats = admin.stats().await.unwrap();
        if stats.nodes >= 3 {
            break stats;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {} nodes counted after 20 s",
            stats.nodes
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("3 nodes counted after {:?}", started.elapsed());
    assert_eq!(stats.store, "redis");
    assert_eq!(stats.nodes, 3);
    assert_eq!(
        stats.active_sessions, 2,
        "one count for the sessions every node made"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_race_across_nodes_never_exceeds_the_limit() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let nodes = [cluster.agent(0), cluster.agent(1)];
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let node = nodes[i % 2].clone();
            tokio::spawn(async move {
                let r = v1::CreateSessionRequest {
                    policy: Some("limited".into()),
                    ..req("dora")
                };
                node.create_session(&r).await
            })
        })
        .collect();
    let mut made = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => made += 1,
            Err(e) => assert_eq!(code(&e), "session_limit_reached", "{e}"),
        }
    }
    assert_eq!(made, 3, "creates that succeeded across two nodes");
    let page = cluster
        .admin(1)
        .list_sessions(Some("dora"), Some(100), None)
        .await
        .unwrap();
    assert_eq!(page.sessions.len(), 3, "live sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_kill_9_loses_nothing() {
    let Some(mut cluster) = Cluster::start(2).await else {
        return;
    };
    let a = cluster.agent(0);
    let mut made = Vec::new();
    for i in 0..60 {
        made.push(
            a.create_session(&req(&format!("erin{}", i % 6)))
                .await
                .unwrap(),
        );
    }
    for s in made.iter().step_by(3) {
        a.logout(&s.token).await.unwrap();
    }
    cluster.kill9(0);

    let check = |node: Client| {
        let made = made.clone();
        async move {
            for (i, s) in made.iter().enumerate() {
                let got = node.validate(&s.token, false).await;
                if i % 3 == 0 {
                    assert_eq!(ended_reason(got), EndReason::LoggedOut, "session {i}");
                } else {
                    assert_eq!(got.expect("acknowledged create").id, s.session.id);
                }
            }
        }
    };
    check(cluster.agent(1)).await;
    cluster.restart(0);
    check(cluster.agent(0)).await;
}

/// Validates `token` on `node` until it fails with `store_unavailable` (503), at most 5 s
/// after `killed`. Until then the node may still answer from its near cache, never anything
/// else. Returns the time since `killed`.
async fn fails_closed(node: &Client, token: &str, killed: Instant) -> Duration {
    for _ in 0..1000 {
        match node.validate(token, false).await {
            Ok(_) => {}
            Err(e) if code(&e) == "store_unavailable" => {
                assert_eq!(e.status(), Some(503));
                return killed.elapsed();
            }
            Err(e) => panic!("during the outage: {e}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "validate kept answering 5 s into the outage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("validate never failed closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_closed_and_service_returns_without_restarts() {
    let Some(mut cluster) = Cluster::start(2).await else {
        return;
    };
    let nodes = [cluster.agent(0), cluster.agent(1)];
    let made = nodes[0].create_session(&req("fred")).await.unwrap();
    for n in &nodes {
        n.validate(&made.token, true).await.unwrap();
        n.readyz().await.unwrap();
    }

    cluster.redis.kill9();
    let killed = Instant::now();
    for (name, n) in ["A", "B"].iter().zip(&nodes) {
        let d = fails_closed(n, &made.token, killed).await;
        eprintln!("node {name} failed closed {d:?} after Redis was killed");
        let err = n.readyz().await.unwrap_err();
        assert_eq!(err.status(), Some(503), "/readyz during the outage: {err}");
        let err = n.create_session(&req("fred")).await.unwrap_err();
        assert_eq!(code(&err), "store_unavailable");
    }

    cluster.redis.restart().await;
    let back = Instant::now();
    for (name, n) in ["A", "B"].iter().zip(&nodes) {
        for _ in 0..1000 {
            let ready = n.readyz().await.is_ok();
            if ready && n.validate(&made.token, false).await.is_ok() {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "node {name} did not recover within 10 s of Redis coming back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "node {name} served again {:?} after Redis came back",
            back.elapsed()
        );
    }
    let again = nodes[1].create_session(&req("fred")).await.unwrap();
    assert_eq!(
        nodes[0].validate(&again.token, false).await.unwrap().id,
        again.session.id
    );
}

/// What the crash test's writers were told.
#[derive(Default)]
struct Acknowledged {
    created: Vec<v1::CreatedSession>,
    /// Logouts sent, acknowledged or not (an unacknowledged one may have happened).
    logout_sent: HashSet<String>,
    logged_out: HashSet<String>,
}

/// One writer: on alternating nodes, two creates then a logout of the oldest session it
/// made, recording what was acknowledged, until `stop` (at most `MAX_OPS` tries).
async fn writer(w: usize, nodes: [Client; 2], stop: Arc<AtomicBool>, log: Shared<Acknowledged>) {
    const MAX_OPS: usize = 5000;
    let mut mine: Vec<v1::CreatedSession> = Vec::new();
    for i in 0..MAX_OPS {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let node = &nodes[(w + i) % 2];
        if i % 3 == 2 && !mine.is_empty() {
            let s = mine.swap_remove(0);
            log.lock().unwrap().logout_sent.insert(s.session.id.clone());
            if node.logout(&s.token).await.is_ok() {
                log.lock().unwrap().logged_out.insert(s.session.id.clone());
            }
        } else if let Ok(s) = node.create_session(&req(&format!("w{w}u{}", i % 7))).await {
            log.lock().unwrap().created.push(s.clone());
            mine.push(s);
        } else {
            // A node is gone: pace the retries until told to stop.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_nodes_and_redis_during_acknowledged_writes_loses_nothing() {
    let Some(mut cluster) = Cluster::start(2).await else {
        return;
    };
    let nodes = [cluster.agent(0), cluster.agent(1)];
    let stop = Arc::new(AtomicBool::new(false));
    let log: Shared<Acknowledged> = Shared::default();
    let writers: Vec<_> = (0..6)
        .map(|w| tokio::spawn(writer(w, nodes.clone(), stop.clone(), log.clone())))
        .collect();
    let started = Instant::now();
    loop {
        let (c, l) = {
            let log = log.lock().unwrap();
            (log.created.len(), log.logged_out.len())
        };
        if c >= 200 && l >= 60 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the burst made only {c} creates and {l} logouts in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Mid-burst: the writers are still sending when the nodes die.
    cluster.kill9(0);
    cluster.kill9(1);
    stop.store(true, Ordering::Release);
    for w in writers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("writers stop")
            .unwrap();
    }
    cluster.redis.kill9();
    cluster.redis.restart().await;
    cluster.restart(0);

    let log = std::mem::take(&mut *log.lock().unwrap());
    let node = cluster.agent(0);
    let (mut live, mut ended) = (0, 0);
    for s in &log.created {
        let id = &s.session.id;
        let got = node.validate(&s.token, false).await;
        if log.logged_out.contains(id) {
            assert_eq!(ended_reason(got), EndReason::LoggedOut, "{id} came back");
            ended += 1;
        } else if log.logout_sent.contains(id) {
            // Sent as the node died: either outcome, but nothing else.
            match got {
                Ok(back) => assert_eq!(&back.id, id),
                Err(e) => assert_eq!(ended_reason(Err(e)), EndReason::LoggedOut),
            }
        } else {
            assert_eq!(&got.expect("an acknowledged create survives").id, id);
            live += 1;
        }
    }
    eprintln!(
        "after kill -9 of both nodes and of Redis: {} acknowledged creates checked, \
         {live} live, {ended} acknowledged logouts still ended",
        log.created.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_one_node_hears_of_a_logout_on_another() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let (a, b) = (cluster.agent(0), cluster.agent(1));
    let mut stream = b.events(None).await.unwrap();
    let made = a.create_session(&req("gina")).await.unwrap();
    let started = Instant::now();
    a.logout(&made.token).await.unwrap();
    let mut seen = Vec::new();
    let ended = loop {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("the stream stays open");
        let session = event.session.clone().expect("a session event");
        seen.push((event.kind, session.id.clone()));
        if session.id == made.session.id && event.kind == v1::EventKind::Ended {
            break session;
        }
        assert!(seen.len() < 10, "no ended event among {seen:?}");
    };
    eprintln!(
        "the ended event reached B's stream {:?} after the logout began on A",
        started.elapsed()
    );
    assert_eq!(
        seen,
        vec![
            (v1::EventKind::Created, made.session.id.clone()),
            (v1::EventKind::Ended, made.session.id.clone())
        ]
    );
    assert_eq!(ended.reason, Some(EndReason::LoggedOut));
    assert_eq!(ended.version, made.session.version + 1);

    // Event ids are the one stream's: B's last id resumes on A.
    let last = stream.last_event_id().expect("an event id").to_owned();
    let next = b.create_session(&req("gina")).await.unwrap();
    let mut resumed = a.events(Some(&last)).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), resumed.next())
        .await
        .expect("an event within 5 s")
        .unwrap()
        .expect("the stream stays open");
    assert_eq!(event.kind, v1::EventKind::Created, "resumed, not reset");
    assert_eq!(event.session.unwrap().id, next.session.id);
}
