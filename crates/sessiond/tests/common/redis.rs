//! A real `redis-server` for the multi-node tests: on a free loopback port, with its AOF
//! fsynced on every write in a directory of its own, killed when dropped (even on panic).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{free_port, require};

/// How long a server may take to answer PING after it starts (AOF replay included).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One `redis-server` on 127.0.0.1.
pub struct Redis {
    binary: PathBuf,
    /// `None` while stopped.
    child: Option<Child>,
    pub port: u16,
    /// Where its AOF lives; a restart replays it.
    dir: PathBuf,
}

impl Redis {
    /// Starts a server keeping its data in `dir`. `None` (after saying why) when
    /// `redis-server` is not installed and we are not under CI.
    pub async fn start(dir: &Path) -> Option<Redis> {
        let binary = require("redis-server")?;
        let mut redis = Redis {
            binary,
            child: None,
            port: free_port(),
            dir: dir.to_path_buf(),
        };
        redis.spawn().await;
        Some(redis)
    }

    async fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("redis dir");
        let child = Command::new(&self.binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        self.wait_for_pong().await;
    }

    /// The URL nodes connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `kill -9`: nothing is flushed on the way out (the AOF is already fsynced).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, from the same AOF.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Waits (bounded) until the server answers PING with PONG, not LOADING.
    async fn wait_for_pong(&mut self) {
        let started = tokio::time::Instant::now();
        for _ in 0..1000 {
            if pong(self.port).await {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "redis-server on port {} did not start",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server on port {} did not start", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
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
