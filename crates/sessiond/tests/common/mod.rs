//! The shared harness: starts the real `sessiond` binary on a free loopback port, with a
//! data dir of its own, and hands out clients built on the project's client library.

#![allow(dead_code)] // each test module uses a different part

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sessiond_client::Client;

pub mod redis;
pub mod web;

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
        Server::start_under(&[], data_dir, config)
    }

    /// [`Server::start`], run by `wrapper` (a program and its arguments, which then runs
    /// the server in its place, as `prlimit` does); empty for none.
    pub fn start_under(wrapper: &[&str], data_dir: &Path, config: Option<&str>) -> Server {
        Server::launch(Server::command(wrapper, data_dir, config), data_dir)
    }

    /// [`Server::start`] with `env` added to the server's environment; names and values
    /// are bytes, which need not be UTF-8.
    pub fn start_with_env(data_dir: &Path, env: &[(OsString, OsString)]) -> Server {
        Server::launch(Server::command_with_env(data_dir, env), data_dir)
    }

    /// What `sessiond serve` with `env` added printed and how it ended, for a start that
    /// is expected to fail (waits at most 30 s, then kills).
    pub fn refused_with_env(data_dir: &Path, env: &[(OsString, OsString)]) -> Output {
        let mut cmd = Server::command_with_env(data_dir, env);
        let child = cmd.stderr(Stdio::piped()).spawn().expect("spawn sessiond");
        let pid = child.id();
        within_30s(
            pid,
            move || child.wait_with_output(),
            "when it should refuse to start",
        )
    }

    /// What `sessiond serve` with `env` added logged (its stderr, a pipe as under systemd)
    /// from its start until it stopped on SIGTERM once listening.
    pub fn log_of_a_run(data_dir: &Path, env: &[(OsString, OsString)]) -> String {
        let mut cmd = Server::command_with_env(data_dir, env);
        cmd.stderr(Stdio::piped());
        let mut server = Server::launch(cmd, data_dir);
        let mut stderr = server
            .child
            .as_mut()
            .and_then(|c| c.stderr.take())
            .expect("stderr");
        // Read on a thread of its own, so that a full pipe never holds the server up.
        let log = std::thread::spawn(move || {
            let mut log = String::new();
            let _ = stderr.read_to_string(&mut log);
            log
        });
        assert!(server.terminate().success(), "a clean stop");
        log.join().expect("the log")
    }

    /// [`Server::command`] for `data_dir` alone, with `env` added to its environment.
    fn command_with_env(data_dir: &Path, env: &[(OsString, OsString)]) -> Command {
        let mut cmd = Server::command(&[], data_dir, None);
        cmd.envs(env.iter().cloned());
        cmd
    }

    /// `sessiond serve` on `127.0.0.1:0` with `data_dir`, `config` and no `SESSIOND_*`
    /// variable of the test's own environment, run by `wrapper` if one is given.
    fn command(wrapper: &[&str], data_dir: &Path, config: Option<&str>) -> Command {
        let mut cmd = match wrapper.split_first() {
            None => Command::new(BIN),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(BIN);
                cmd
            }
        };
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
        for (k, _) in std::env::vars_os().filter(|(k, _)| k.as_bytes().starts_with(b"SESSIOND_")) {
            cmd.env_remove(k);
        }
        cmd.env("SESSIOND_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd
    }

    /// Spawns `cmd`, a [`Server::command`] for `data_dir`, and waits for its "listening
    /// on" line.
    fn launch(mut cmd: Command, data_dir: &Path) -> Server {
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

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
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
    pub fn terminate(self) -> ExitStatus {
        let pid = self.child.as_ref().expect("running").id();
        let sent = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        self.exit_status("of SIGTERM")
    }

    /// The exit status of a server that stops on its own (waits at most 30 s, then kills).
    pub fn exited(self) -> ExitStatus {
        self.exit_status("of starting")
    }

    fn exit_status(mut self, after: &str) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id();
        within_30s(pid, move || child.wait(), after)
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

/// What `wait` (a wait for the child `pid`, run on a thread of its own) gave; if it takes
/// more than 30 s, the child is killed and the test fails, naming `after`.
fn within_30s<T: Send + 'static>(
    pid: u32,
    wait: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    after: &str,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(wait());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(waited) => waited.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("sessiond did not stop within 30 s {after}");
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

/// The path of an external program a test needs. Outside CI a missing one skips the test
/// with a loud message (`None`); under `CI=true` it fails the test.
pub fn require(program: &str) -> Option<PathBuf> {
    // Daemons live in sbin, which a non-root PATH may lack.
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from));
    let found = dirs
        .into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{program} is not installed, and CI=true: .ci/run must install it");
        }
        eprintln!(
            "\n**** SKIPPED: {program} not found on PATH; install it to run this test ****\n"
        );
    }
    found
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process stopped when dropped: SIGTERM first (so a master process such as
/// nginx's takes its workers down with it), SIGKILL if it is still there after 5 s.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            // Polling a child process's exit, not timing a rule under test.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts TCP connections on `port` (at most 10 s).
pub async fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port} after 10 s");
}

/// An upstream application that answers every request with the request's head (request
/// line and headers) as its body. Keep-alive aware. Runs until the test's runtime ends.
pub async fn echo_upstream() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                            head.len()
                        );
                        if sock.write_all(reply.as_bytes()).await.is_err()
                            || sock.write_all(&head).await.is_err()
                        {
                            return;
                        }
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) if buf.len() + n > 64 * 1024 => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    port
}
