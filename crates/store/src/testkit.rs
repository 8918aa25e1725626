//! Real `redis-server` processes for tests (feature `conformance`): on loopback ports,
//! started by the tests themselves and killed when dropped, even on panic. Used by this
//! crate's Redis tests and by the binary's multi-node tests, so there is one harness. And
//! [`write_unreadable_record`], for the tests of a failed load.

// A test harness: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a server may take to answer PING after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(10);

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
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `redis-server` on 127.0.0.1, with AOF fsynced on every write, in its own directory.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
}

impl RedisServer {
    /// Starts a server keeping its data in `dir`, on a free port.
    pub async fn start(dir: &Path) -> RedisServer {
        Self::start_on(dir, free_port(), false).await
    }

    /// Starts a server on `port` (a restart reuses the port it had).
    pub async fn start_on(dir: &Path, port: u16, cluster: bool) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port,
            dir: dir.to_path_buf(),
            cluster,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
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
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "2000"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_pong(self.port).await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
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

/// Waits until the server on `port` answers PING with PONG (not LOADING), bounded.
async fn wait_for_pong(port: u16) {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    for _ in 0..1000 {
        if pong(port).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "redis-server on port {port} did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis-server on port {port} did not start");
}

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
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
    )
}

/// Three masters, no replicas, formed with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// `None` (after saying why) when `redis-cli` is missing and we are not under CI.
    pub async fn start() -> Option<RedisCluster> {
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
            nodes.push(
                RedisServer::start_on(&dir.path().join(format!("n{i}")), free_port(), true).await,
            );
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
}

impl RedisSentinel {
    pub async fn start(dir: &Path, master_port: u16) -> RedisSentinel {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {port}\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sentinel = RedisSentinel {
            child: Some(child),
            port,
        };
        wait_for_pong(port).await;
        sentinel
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
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
