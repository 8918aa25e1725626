//! What the server asks of the machine it runs on.

use crate::common::{Server, data_dir, require};

/// The soft and hard "Max open files" of a running process, from `/proc`.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().unwrap().to_owned();
    let hard = fields.next().unwrap().to_owned();
    (soft, hard)
}

#[tokio::test]
async fn serve_raises_its_open_file_limit_to_the_hard_limit() {
    let Some(prlimit) = require("prlimit") else {
        return;
    };
    let prlimit = prlimit.to_string_lossy().into_owned();
    let (_tmp, dir) = data_dir();
    // Started with a soft limit far below the hard one, as systemd and shells often do.
    let server = Server::start_under(&[&prlimit, "--nofile=300:4096", "--"], &dir, None);
    assert_eq!(
        open_file_limits(server.pid()),
        ("4096".to_owned(), "4096".to_owned())
    );
    // And it serves.
    server.agent().healthz().await.unwrap();
}
