//! The accept loop: HTTP/1.1 over hyper, one task per connection, graceful shutdown.
//!
//! In place of `axum::serve` so the connection setup is ours: HTTP/1.1 only (the contract
//! serves nothing else, and axum's loop sniffs every connection for HTTP/2), `TCP_NODELAY`
//! so an answer never waits for the peer's ACK, a bounded read buffer, the peer's
//! address handed to [`App`] with the [`Connection`] without a layer per request, slow or
//! idle connections closed ([`super::timeouts`]), and a bound on the connections held.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

use super::timeouts::{self, Connections, HasProgress, Progress, Timeouts, Watched, WatchedBody};
use super::{App, Connection, MAX_BODY_BYTES, MAX_HEADER_BYTES};

/// Largest read buffer of a connection. A request head must fit in it (hyper answers 431
/// otherwise), so headers are bounded before they are parsed, not only after.
const MAX_READ_BUFFER: usize = 4 * MAX_HEADER_BYTES + MAX_BODY_BYTES;

/// Connections served at once unless configured (`[http] max_connections`): Tomcat's
/// default.
const DEFAULT_MAX_CONNECTIONS: usize = 8192;

/// How often, at most, the log says that the connection limit was reached.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// What the server allows its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long each stage of a request may take.
    pub timeouts: Timeouts,
    /// Connections served at once. With this many open, a new connection is served once
    /// the keep-alive connection idle the longest has been closed for it, or, with none
    /// idle, once any connection ends; the listen backlog holds the ones after it.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeouts: Timeouts::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets each
/// connection finish the request it is on, and returns once all have closed. A connection
/// that overstays its timeouts, before or after `shutdown`, is closed.
pub async fn serve(
    listener: TcpListener,
    app: App,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let conns = Arc::new(Connections::new());
    let reaper = tokio::spawn(timeouts::reaper(conns.clone(), limits.timeouts));
    // At most u32::MAX, so that shutdown can wait for every permit at once.
    let max_connections = limits.max_connections.clamp(1, u32::MAX as usize);
    let room = Arc::new(Semaphore::new(max_connections));
    let mut warned_full: Option<Instant> = None;
    let mut stops = Stops::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let room_for_one = match room.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if warned_full.is_none_or(|at| at.elapsed() >= FULL_WARNING_EVERY) {
                    warned_full = Some(Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "holding as many connections as allowed: new ones wait for an idle \
                         one to be closed or for one to end"
                    );
                }
                tokio::select! {
                    permit = conns.make_room(&room, limits.timeouts.tick()) => permit,
                    () = &mut shutdown => break,
                }
            }
        };
        // Only fails on a socket that is already gone; the connection then fails on its own.
        let _ = stream.set_nodelay(true);
        let served = Arc::new(Served {
            app: app.clone(),
            conn: Connection::new(peer),
            progress: Progress::default(),
        });
        let io = TokioIo::new(Watched::new(stream, served.clone()));
        let service = {
            let served = served.clone();
            service_fn(move |req| answer(served.clone(), req))
        };
        let conn = http1::Builder::new()
            .max_buf_size(MAX_READ_BUFFER)
            .serve_connection(io, service);
        let stop = stops.add();
        let task = tokio::spawn(async move {
            let _room = room_for_one;
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                biased;
                ended = conn.as_mut() => ended,
                // Sent, or its sender gone with the accept loop: finish the request in
                // hand, then close.
                _ = stop => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::trace!(%peer, error = %e, "connection ended with an error");
            }
        });
        conns.track(served, task.abort_handle());
    }
    drop(listener);
    stops.send();
    // Every connection holds one permit until its task ends: all of them back means all
    // have closed. The semaphore is never closed, so this only waits.
    let _ = room.acquire_many(max_connections as u32).await;
    reaper.abort();
}

/// Each open connection's way to be told to close gracefully: a `oneshot` of its own.
///
/// In place of `hyper_util`'s `GracefulShutdown`, whose connections all poll one `watch`
/// channel on every wake, and so lock its one `Notify` mutex twice a request, from both
/// cores: about 350 instructions a request and a cache line passed between the cores
/// (callgrind, twenty-ninth session). A `oneshot` receiver polled is its own task's
/// atomic load.
#[derive(Default)]
struct Stops {
    senders: Vec<oneshot::Sender<()>>,
}

impl Stops {
    /// A new connection's receiver. Senders of closed connections are dropped whenever the
    /// list is full, so it holds at most about twice the connections open at once.
    fn add(&mut self) -> oneshot::Receiver<()> {
        if self.senders.len() == self.senders.capacity() {
            self.senders.retain(|s| !s.is_closed());
        }
        let (tx, rx) = oneshot::channel();
        self.senders.push(tx);
        rx
    }

    /// Tells every open connection to close once its request is answered.
    fn send(self) {
        for tx in self.senders {
            // A closed connection has dropped its receiver: nothing to tell it.
            let _ = tx.send(());
        }
    }
}

/// What the requests of one connection share. Each request takes a reference to it, a
/// count only this connection's requests write, rather than a clone of the [`App`] (two
/// counts that every request on every core writes). On this project's 2-vCPU machine the
/// difference is a few nanoseconds a request; on cores that share no cache, each such
/// write moves a cache line between them. Its `progress` is what the timeout reaper reads:
/// the socket, the body and [`answer`] write it, all on this connection's task.
struct Served {
    app: App,
    conn: Connection,
    progress: Progress,
}

impl HasProgress for Served {
    fn progress(&self) -> &Progress {
        &self.progress
    }

    fn peer(&self) -> Option<std::net::SocketAddr> {
        self.conn.peer
    }
}

async fn answer(
    served: Arc<Served>,
    req: hyper::Request<Incoming>,
) -> Result<axum::response::Response, Infallible> {
    let req = req.map(|body| WatchedBody::begin(body, served.clone()));
    let response = served.app.handle_on(&served.conn, req).await;
    served.progress.end();
    Ok(response)
}

/// An accept that failed for the listener, not for one connection (out of descriptors,
/// say): wait a moment instead of spinning, as hyper's and axum's loops do.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
