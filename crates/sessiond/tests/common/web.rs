//! A website protected by sessiond, for the end-to-end tests of the web-agent role: a users
//! file with alice, sessiond with its portal, a real nginx running
//! `examples/nginx/sessiond.conf` (ports rewritten) and an upstream that echoes the request
//! headers it receives, all on loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Reaper, Server, data_dir, echo_upstream, free_port, wait_for_port};

const EXAMPLE: &str = include_str!("../../../../examples/nginx/sessiond.conf");

/// alice's password in the users file.
pub const ALICE_PASSWORD: &str = "alice-pw";

/// A running site. Fields drop in order: nginx, then sessiond, then their directory.
pub struct Site {
    // Stops nginx when the site is dropped.
    _nginx: Reaper,
    pub server: Server,
    /// Holds the users file, sessiond's data dir and nginx's prefix.
    pub tmp: tempfile::TempDir,
    /// nginx's port on 127.0.0.1: the front door.
    pub port: u16,
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub base: String,
}

impl Site {
    /// Starts sessiond (cookie `sessiond_session`, not `Secure`: the test speaks plain HTTP; idle timeout
    /// `idle_timeout`), the echo upstream and nginx, and waits until nginx accepts
    /// connections. The upstream lives as long as the test's runtime.
    pub async fn start(nginx: &Path, idle_timeout: &str) -> Site {
        let (tmp, dir) = data_dir();
        let users_file = users(tmp.path(), false);
        let config = format!(
            "[session]\nidle_timeout = \"{idle_timeout}\"\n[users]\nfile = \"{}\"\n[portal]\nallowed_redirect_hosts = [\"127.0.0.1\"]\n\
trusted_proxies = [\"127.0.0.1/32\"]\n[cookie]\nsecure = false\n",
            users_file.display()
        );
        let server = Server::start(&dir, Some(&config));
        let upstream = echo_upstream().await;
        let port = free_port();
        let nginx_dir = tmp.path().join("nginx");
        std::fs::create_dir_all(&nginx_dir).expect("nginx dir");
        let sessiond_addr = server.url.trim_start_matches("http://").to_owned();
        let nginx = start_nginx(nginx, &nginx_dir, port, &sessiond_addr, upstream);
        wait_for_port(port).await;
        Site {
            _nginx: nginx,
            server,
            tmp,
            port,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// Writes the users file (alice, group staff) into `dir`; sessiond notices a change.
pub fn users(dir: &Path, alice_disabled: bool) -> PathBuf {
    let path = dir.join("users.toml");
    let hash = sessiond_server::directory::hash_password(ALICE_PASSWORD).expect("hash");
    let text = format!(
        "[users.alice]\npassword = \"{hash}\"\ngroups = [\"staff\"]\ndisabled = {alice_disabled}\n"
    );
    // Written whole, then renamed: the server never reads half a file.
    let tmp = dir.join("users.toml.tmp");
    std::fs::write(&tmp, text).expect("write users");
    std::fs::rename(&tmp, &path).expect("rename users");
    path
}

/// nginx with the example config, its ports rewritten; stopped on drop.
fn start_nginx(nginx: &Path, dir: &Path, port: u16, sessiond: &str, upstream: u16) -> Reaper {
    let site = EXAMPLE
        .replace("127.0.0.1:7480", sessiond)
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{upstream}"))
        .replace("listen 127.0.0.1:8080", &format!("listen 127.0.0.1:{port}"));
    assert_ne!(site, EXAMPLE);
    std::fs::write(dir.join("sessiond.conf"), site).expect("site");
    for d in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join(d)).expect("temp dir");
    }
    let d = dir.display();
    let main = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nuser root root;\n\
events {{ worker_connections 256; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
 fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n include {d}/sessiond.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), main).expect("nginx.conf");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .spawn()
        .expect("start nginx");
    Reaper(child)
}
