//! What the server asks of the machine it runs on.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Sends `GET /healthz` on `stream` and reads the answer's head; its status line.
async fn healthz(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before an answer");
        head.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    head.lines().next().unwrap().to_owned()
}

#[tokio::test]
async fn at_max_connections_an_idle_keep_alive_connection_makes_room() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, Some("[http]\nmax_connections = 4\n"));
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(healthz(&mut stream).await, "HTTP/1.1 200 OK");
        held.push(stream);
    }
    // Idle for two of the reaper's ticks (1 s with the default timeouts).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut fifth = TcpStream::connect(&addr).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), healthz(&mut fifth));
    assert_eq!(answered.await.unwrap(), "HTTP/1.1 200 OK");
    // One of the four was closed for it; the others still serve.
    let mut closed = 0;
    for stream in &mut held {
        let mut byte = [0u8; 1];
        let peeked = tokio::time::timeout(Duration::from_millis(200), stream.peek(&mut byte));
        match peeked.await {
            Ok(Ok(0) | Err(_)) => closed += 1,
            Ok(Ok(_)) => panic!("an answer nobody asked for"),
            Err(_) => assert_eq!(healthz(stream).await, "HTTP/1.1 200 OK"),
        }
    }
    assert_eq!(closed, 1);
}
