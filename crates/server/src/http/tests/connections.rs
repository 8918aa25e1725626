//! Slow and idle connections, and the bound on how many are held, through the real accept
//! loop on a loopback socket. These tests wait for real (a few hundred milliseconds each):
//! the timeouts are the server's.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{AGENT_KEY, Harness};
use crate::http::{Limits, Timeouts, app, serve};

/// Each different, so that a test can tell which one closed the connection.
const SHORT: Timeouts = Timeouts {
    header: Duration::from_millis(300),
    body: Duration::from_millis(600),
    keep_alive: Duration::from_millis(1200),
};

const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";

/// A server on a free loopback port, stopped when the test's runtime ends.
async fn server() -> std::net::SocketAddr {
    server_holding(64).await
}

/// [`server`], serving at most `max_connections` at once.
async fn server_holding(max_connections: usize) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Harness::new().state;
    let limits = Limits {
        timeouts: SHORT,
        max_connections,
    };
    tokio::spawn(serve(
        listener,
        app(state),
        limits,
        std::future::pending::<()>(),
    ));
    addr
}

/// [`server`], stopped by a send on the sender; its task ends when `serve` returns.
async fn stoppable_server() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = Limits {
        timeouts: SHORT,
        max_connections: 64,
    };
    let server = tokio::spawn(serve(
        listener,
        app(Harness::new().state),
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    (addr, stop, server)
}

/// Reads one whole answer (head, then a `Content-Length` body); its status line.
async fn answer(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole answer");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed inside an answer");
        buf.extend_from_slice(&chunk[..n]);
    }
    head.lines().next().unwrap().to_owned()
}

/// How long after `from` the server closed `stream`, reading (and dropping) whatever it
/// sends meanwhile; gives up after 5 s.
async fn closed_after(stream: &mut (impl AsyncRead + Unpin), from: Instant) -> Duration {
    let mut chunk = [0u8; 1024];
    let wait = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    wait.await.expect("the server kept the connection open");
    from.elapsed()
}

/// Writes `bytes` one at a time, `every` apart, while the server reads them; whether all
/// of them went through before the server closed the connection.
async fn trickle(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8], every: Duration) -> bool {
    for b in bytes {
        if stream.write_all(&[*b]).await.is_err() {
            return false;
        }
        tokio::time::sleep(every).await;
    }
    true
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let addr = server().await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let after = closed_after(&mut stream, started).await;
    assert!(after >= SHORT.header, "closed after {after:?}");
    assert!(after < SHORT.header * 3, "closed after {after:?}");
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_cut_off_at_the_header_timeout() {
    let addr = server().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    // 40 header bytes, 50 ms apart: 2 s for the whole head if it were let through.
    let head = b"GET /healthz HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaa";
    let (mut read, mut write) = stream.split();
    let (after, all_sent) = tokio::join!(
        closed_after(&mut read, started),
        trickle(&mut write, head, Duration::from_millis(50)),
    );
    assert!(!all_sent, "the whole slow head went through");
    assert!(after >= SHORT.header, "closed after {after:?}");
    assert!(after < SHORT.header * 3, "closed after {after:?}");
}

#[tokio::test]
async fn a_body_that_never_ends_is_cut_off_at_the_body_timeout() {
    let addr = server().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/sessions/validate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {AGENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // Ten bytes in 500 ms, within the body's 600: taken, then the body stops.
    assert!(trickle(&mut stream, b"{\"token\":\"", Duration::from_millis(50)).await);
    let after = closed_after(&mut stream, started).await;
    assert!(after >= SHORT.body, "closed after {after:?}");
    assert!(after < SHORT.body * 2, "closed after {after:?}");
}

#[tokio::test]
async fn a_keep_alive_connection_outlives_the_header_timeout_between_requests_and_closes_when_idle()
{
    let addr = server().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut stream).await, "HTTP/1.1 200 OK");
    // Idle for longer than a head may take, shorter than the keep-alive time.
    tokio::time::sleep(SHORT.header * 2).await;
    stream.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut stream).await, "HTTP/1.1 200 OK");
    let idle_from = Instant::now();
    let after = closed_after(&mut stream, idle_from).await;
    assert!(after >= SHORT.keep_alive, "closed after {after:?}");
    assert!(after < SHORT.keep_alive * 2, "closed after {after:?}");
}

#[tokio::test]
async fn a_slow_client_does_not_hold_up_others() {
    let addr = server().await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let mut fast = TcpStream::connect(addr).await.unwrap();
    for _ in 0..3 {
        fast.write_all(GET).await.unwrap();
        assert_eq!(answer(&mut fast).await, "HTTP/1.1 200 OK");
    }
    let after = closed_after(&mut slow, Instant::now()).await;
    assert!(after < SHORT.header * 3, "closed after {after:?}");
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_stuck_in_its_head() {
    let (addr, stop, server) = stoppable_server().await;
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    stuck.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    // Let the server take the connection and read the bytes, then stop it.
    tokio::time::sleep(SHORT.header / 3).await;
    let started = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("shutdown waited on the stuck client")
        .unwrap();
    assert!(started.elapsed() < SHORT.header * 3);
    drop(stuck);
}

#[tokio::test]
async fn shutdown_answers_the_request_in_hand_closes_idle_connections_and_then_returns() {
    let (addr, stop, server) = stoppable_server().await;
    // One keep-alive connection idle after its answer, one inside a request's body.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut idle).await, "HTTP/1.1 200 OK");
    let body = br#"{"token":"k1.not-a-token"}"#;
    let head = format!(
        "POST /v1/sessions/validate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {AGENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(head.as_bytes()).await.unwrap();
    busy.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(SHORT.header / 3).await;

    let started = Instant::now();
    stop.send(()).unwrap();
    let after = closed_after(&mut idle, started).await;
    assert!(
        after < SHORT.header,
        "the idle connection closed after {after:?}"
    );
    tokio::time::sleep(SHORT.header / 3).await;
    assert!(
        !server.is_finished(),
        "shutdown did not wait for the request in hand"
    );
    busy.write_all(&body[10..]).await.unwrap();
    assert_eq!(answer(&mut busy).await, "HTTP/1.1 401 Unauthorized");
    closed_after(&mut busy, started).await;
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("shutdown outlived its last connection")
        .unwrap();
}

#[tokio::test]
async fn at_the_connection_limit_the_keep_alive_connection_idle_the_longest_makes_room() {
    let addr = server_holding(2).await;
    let mut older = TcpStream::connect(addr).await.unwrap();
    older.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut older).await, "HTTP/1.1 200 OK");
    // Two reaper ticks apart, so that the reaper sees which went idle first.
    tokio::time::sleep(SHORT.tick() * 3).await;
    let mut newer = TcpStream::connect(addr).await.unwrap();
    newer.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut newer).await, "HTTP/1.1 200 OK");
    tokio::time::sleep(SHORT.tick() * 3).await;
    // Both idle, far from the keep-alive time; a third client comes.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let asked = Instant::now();
    third.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut third).await, "HTTP/1.1 200 OK");
    assert!(
        asked.elapsed() < SHORT.keep_alive / 2,
        "{:?}",
        asked.elapsed()
    );
    let after = closed_after(&mut older, asked).await;
    assert!(after < SHORT.keep_alive / 2, "closed after {after:?}");
    // The newer one was left alone.
    newer.write_all(GET).await.unwrap();
    assert_eq!(answer(&mut newer).await, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn at_the_connection_limit_with_none_idle_a_new_connection_waits_for_one_to_end() {
    let addr = server_holding(1).await;
    // Connected, its first request not sent yet: not idle, so never closed to make room.
    let first = TcpStream::connect(addr).await.unwrap();
    let mut next = TcpStream::connect(addr).await.unwrap();
    next.write_all(GET).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(SHORT.header / 2, next.peek(&mut byte)).await;
    assert!(early.is_err(), "answered while the only place was taken");
    let freed = Instant::now();
    drop(first);
    assert_eq!(answer(&mut next).await, "HTTP/1.1 200 OK");
    assert!(freed.elapsed() < SHORT.header / 2, "{:?}", freed.elapsed());
}
