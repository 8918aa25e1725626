//! The shared harness: starts the real `sessiond` binary on a free loopback port, with a
//! data dir of its own, and hands out clients built on the project's client library.

#![allow(dead_code)] // each test module uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sessiond_client::Client;

/// The binary under test, built by cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_sessiond");

/// A running `sessiond serve`.
pub struct Server {
    // Taken by `kill9` and `terminate`, which consume the server.
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    /// Everything the server printed on stdout up to "listening on".
    pub banner: Vec<String>,
}

impl Server {
    /// Starts a server on `127.0.0.1:0` with `data_dir` and, if given, a config file
    /// holding `config`.
    pub fn start(data_dir: &Path, config: Option<&str>) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir);
        if let Some(text) = config {
            let path = data_dir.with_extension("toml");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(path);
        }
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SESSIOND_")) {
            cmd.env_remove(k);
        }
        cmd.env("SESSIOND_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn sessiond");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // The test stopped listening: keep draining so the child never blocks.
                    continue;
                }
            }
        });
        let mut banner = Vec::new();
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sessiond did not start within 30 s; it printed {banner:?}");
            };
            if let Some(url) = line.strip_prefix("sessiond: listening on ") {
                let url = url.to_owned();
                banner.push(line);
                return Server {
                    child: Some(child),
                    url,
                    data_dir: data_dir.to_owned(),
                    banner,
                };
            }
            banner.push(line);
        }
    }

    fn secret(&self, file: &str) -> String {
        std::fs::read_to_string(self.data_dir.join(file))
            .expect("generated secret")
            .trim()
            .to_owned()
    }

    pub fn agent_key(&self) -> String {
        self.secret("agent.key")
    }

    pub fn admin_token(&self) -> String {
        self.secret("admin.token")
    }

    /// A client with the generated agent key.
    pub fn agent(&self) -> Client {
        Client::new(&self.url, &self.agent_key()).expect("client")
    }

    /// A client with the generated admin token.
    pub fn admin(&self) -> Client {
        Client::new(&self.url, &self.admin_token()).expect("client")
    }

    /// A client with any credential.
    pub fn client(&self, credential: &str) -> Client {
        Client::new(&self.url, credential).expect("client")
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// SIGTERM, then the exit status (waits at most 30 s, then kills).
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("sessiond did not stop within 30 s of SIGTERM");
            }
        }
    }

    /// Runs the admin CLI of the same binary against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env_remove("SESSIOND_SERVER")
            .env_remove("SESSIOND_ADMIN_TOKEN")
            .env("SESSIOND_DATA_DIR", &self.data_dir)
            .output()
            .expect("run the CLI")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fresh temp dir and a data dir path inside it.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    (tmp, dir)
}

/// The contract error code of a client error.
pub fn code(e: &sessiond_client::Error) -> &'static str {
    e.code().map(|c| c.as_str()).unwrap_or("<not an API error>")
}
