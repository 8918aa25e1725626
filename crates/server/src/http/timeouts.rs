//! Slow and idle connections: how long a connection may take over each stage of a request
//! before it is closed.
//!
//! Without this a client could hold a connection forever by sending a request head a byte
//! at a time, or a body that never ends (slowloris), and idle keep-alive connections would
//! never be given back. hyper's own `header_read_timeout` arms a timer for every request
//! a keep-alive connection waits for: measured on this project's machine on the server's
//! runtime (`examples/timer_cost.rs`), arming, polling and dropping a tokio timer is about
//! 1.2 µs of CPU, a tenth of a whole validate. So the connections here only note their
//! progress (a few plain stores per request, on a line only their own task writes), and
//! one [`reaper`] task looks at all of them every [`Timeouts::tick`] and aborts the tasks
//! of those that overstayed.
//!
//! The same registry makes room when the server holds as many connections as it may
//! ([`Connections::make_room`]): room that came free is taken first, and otherwise the
//! keep-alive connection idle the longest goes ([`Connections::close_idlest`]), as nginx
//! does when its `worker_connections` run out.
//!
//! A connection is in one of three stages:
//! - **waiting** for a request head. Until its first request, and from the first byte of
//!   any later head, it has [`Timeouts::header`]. Between requests, with no byte of a new
//!   one yet, it is idle and has [`Timeouts::keep_alive`], counted from the last byte it
//!   read or wrote (a long answer being streamed is not idle).
//! - **reading a body**: [`Timeouts::body`] from the moment the request was handed over.
//! - **working**: the body is read (or there was none) and a handler runs. Never
//!   interrupted: cutting a handler short would leave its caller guessing whether its
//!   change was made.
//!
//! The reaper sees a stage begin at its first tick after, and closes a connection at its
//! first tick after the time is up: up to two ticks late, never early.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use hyper::body::{Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// How long a connection may spend at each stage (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// To send a whole request head: from the connection's start for its first request,
    /// from the head's first byte for the later ones.
    pub header: Duration,
    /// To send a whole request body, from the end of its head.
    pub body: Duration,
    /// Idle between two requests of a keep-alive connection. Keep it above the idle
    /// timeout of the clients' connection pools (reqwest's and the client library's: 90 s),
    /// or a client may send a request on a connection the server is closing.
    pub keep_alive: Duration,
}

impl Default for Timeouts {
    /// Apache's `mod_reqtimeout` gives a head 20 s and a body 20 s; the keep-alive time
    /// stays above the 90 s of common client pools.
    fn default() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(20),
            body: Duration::from_secs(20),
            keep_alive: Duration::from_secs(120),
        }
    }
}

impl Timeouts {
    /// How often the reaper looks: a quarter of the shortest timeout, between 10 ms and
    /// 1 s.
    pub fn tick(&self) -> Duration {
        (self.header.min(self.body).min(self.keep_alive) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

const WAITING: u32 = 0;
const BODY: u32 = 1;
const WORKING: u32 = 2;
const STAGE_BITS: u32 = 2;
const STAGE_MASK: u32 = (1 << STAGE_BITS) - 1;

/// What one connection has done, written only by its own task and read by the reaper.
/// Each field changes with plain load-and-store pairs, not read-modify-write: the one
/// task that writes them needs no lock prefix, and the reaper only compares.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Reads that returned bytes.
    reads: AtomicU32,
    /// Writes that took bytes.
    writes: AtomicU32,
    /// `(requests begun << STAGE_BITS) | stage`. The count runs from 1 to
    /// [`MAX_REQUESTS`] and then starts again at 1: 0 means the first request is not
    /// yet here, which has the header time, not the keep-alive time.
    stage: AtomicU32,
}

/// The most requests [`Progress::stage`] counts before it starts again at 1.
const MAX_REQUESTS: u32 = u32::MAX >> STAGE_BITS;

/// The count of requests after `requests`, never 0 (see [`Progress::stage`]).
fn next_request(requests: u32) -> u32 {
    if requests >= MAX_REQUESTS {
        1
    } else {
        requests + 1
    }
}

fn bump(counter: &AtomicU32) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

impl Progress {
    /// A request was handed over; `has_body`: its body is still to be read.
    pub(super) fn begin(&self, has_body: bool) {
        let requests = next_request(self.stage.load(Ordering::Relaxed) >> STAGE_BITS);
        let stage = if has_body { BODY } else { WORKING };
        self.stage
            .store((requests << STAGE_BITS) | stage, Ordering::Relaxed);
    }

    /// The request's body has been read to its end.
    fn body_read(&self) {
        let now = self.stage.load(Ordering::Relaxed);
        if now & STAGE_MASK == BODY {
            self.stage.store(now - BODY + WORKING, Ordering::Relaxed);
        }
    }

    /// The handler answered; the connection waits for the next request.
    pub(super) fn end(&self) {
        let now = self.stage.load(Ordering::Relaxed);
        self.stage.store(now & !STAGE_MASK, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            stage: self.stage.load(Ordering::Relaxed),
        }
    }
}

/// Anything that can lend a connection's [`Progress`].
pub(super) trait HasProgress: Send + Sync + 'static {
    fn progress(&self) -> &Progress;

    /// The peer, for the log line that says a connection was closed.
    fn peer(&self) -> Option<std::net::SocketAddr> {
        None
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Snapshot {
    reads: u32,
    writes: u32,
    stage: u32,
}

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overstayed {
    Header,
    Body,
    KeepAlive,
}

/// The reaper's view of one connection.
struct Tracked<P> {
    conn: Arc<P>,
    task: AbortHandle,
    seen: Snapshot,
    /// When `seen.stage` was first seen (the connection's start for the first).
    stage_since: Instant,
    /// Waiting: when bytes of a new head were first seen.
    head_since: Option<Instant>,
    /// Waiting: when the connection last read or wrote anything.
    active_at: Instant,
}

impl<P: HasProgress> Tracked<P> {
    fn new(conn: Arc<P>, task: AbortHandle, now: Instant) -> Tracked<P> {
        Tracked {
            conn,
            task,
            seen: Snapshot::default(),
            stage_since: now,
            head_since: None,
            active_at: now,
        }
    }

    /// Looks at the connection at `now`: `Some` if it has overstayed.
    fn check(&mut self, now: Instant, t: &Timeouts) -> Option<Overstayed> {
        let snap = self.conn.progress().snapshot();
        let seen = std::mem::replace(&mut self.seen, snap);
        if snap.stage != seen.stage {
            self.stage_since = now;
            self.head_since = None;
            self.active_at = now;
        } else if snap.reads != seen.reads || snap.writes != seen.writes {
            self.active_at = now;
        }
        let within = |since: Instant, limit: Duration| now.saturating_duration_since(since) < limit;
        match snap.stage & STAGE_MASK {
            BODY => (!within(self.stage_since, t.body)).then_some(Overstayed::Body),
            WAITING if snap.stage == 0 => {
                (!within(self.stage_since, t.header)).then_some(Overstayed::Header)
            }
            WAITING => {
                if snap.reads != seen.reads && snap.stage == seen.stage {
                    self.head_since.get_or_insert(now);
                }
                match self.head_since {
                    Some(head) => (!within(head, t.header)).then_some(Overstayed::Header),
                    None => {
                        (!within(self.active_at, t.keep_alive)).then_some(Overstayed::KeepAlive)
                    }
                }
            }
            _ => None,
        }
    }

    /// Waiting between two requests, with nothing read or written since the reaper last
    /// looked: a keep-alive connection that can be closed without cutting anything short.
    fn is_idle(&self) -> bool {
        let now = self.conn.progress().snapshot();
        now == self.seen
            && now.stage != 0
            && now.stage & STAGE_MASK == WAITING
            && self.head_since.is_none()
    }
}

/// The connections [`reaper`] watches.
pub(super) struct Connections<P> {
    tracked: Mutex<Vec<Tracked<P>>>,
}

impl<P: HasProgress> Connections<P> {
    pub(super) fn new() -> Connections<P> {
        Connections {
            tracked: Mutex::new(Vec::new()),
        }
    }

    /// Watches `conn`, served by `task`, from now.
    pub(super) fn track(&self, conn: Arc<P>, task: AbortHandle) {
        self.tracked
            .lock()
            .push(Tracked::new(conn, task, Instant::now()));
    }

    /// Forgets finished connections and aborts those that overstayed; returns how many.
    fn sweep(&self, now: Instant, t: &Timeouts) -> usize {
        let mut closed = 0;
        self.tracked.lock().retain_mut(|c| {
            if c.task.is_finished() {
                return false;
            }
            match c.check(now, t) {
                None => true,
                Some(why) => {
                    let peer = c.conn.peer();
                    tracing::debug!(?peer, ?why, "closing a connection that overstayed");
                    c.task.abort();
                    closed += 1;
                    false
                }
            }
        });
        closed
    }

    /// Closes the connection that has been idle between two requests the longest, to make
    /// room for a new one; `false` if none is. A connection on its first request, inside a
    /// request, with a head begun, or active since the reaper last looked is never chosen.
    pub(super) fn close_idlest(&self) -> bool {
        let mut tracked = self.tracked.lock();
        let idlest = tracked
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.task.is_finished() && c.is_idle())
            .min_by_key(|(_, c)| c.active_at)
            .map(|(i, _)| i);
        let Some(i) = idlest else { return false };
        let c = tracked.swap_remove(i);
        tracing::debug!(peer = ?c.conn.peer(), "closing an idle connection to make room");
        c.task.abort();
        true
    }

    /// Waits for room for one more connection in `room`, closing the connection idle the
    /// longest each `tick` while there is none. Room that came free since the caller
    /// looked (a connection that ended meanwhile) is taken before anything is closed.
    pub(super) async fn make_room(
        &self,
        room: &Arc<Semaphore>,
        tick: Duration,
    ) -> OwnedSemaphorePermit {
        loop {
            if let Ok(permit) = room.clone().try_acquire_owned() {
                return permit;
            }
            self.close_idlest();
            // The semaphore is never closed: `acquire_owned` only returns a permit.
            if let Ok(Ok(permit)) = tokio::time::timeout(tick, room.clone().acquire_owned()).await {
                return permit;
            }
        }
    }
}

/// Closes the connections of `conns` that overstay `t`, every [`Timeouts::tick`], until
/// dropped.
pub(super) async fn reaper<P: HasProgress>(conns: Arc<Connections<P>>, t: Timeouts) {
    let mut tick = tokio::time::interval(t.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        conns.sweep(Instant::now(), &t);
    }
}

/// A socket that notes in its connection's [`Progress`] each read that brought bytes and
/// each write that took some.
pub(super) struct Watched<T, P> {
    io: T,
    conn: Arc<P>,
}

impl<T, P> Watched<T, P> {
    pub(super) fn new(io: T, conn: Arc<P>) -> Watched<T, P> {
        Watched { io, conn }
    }
}

impl<T: AsyncRead + Unpin, P: HasProgress> AsyncRead for Watched<T, P> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            bump(&self.conn.progress().reads);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin, P: HasProgress> AsyncWrite for Watched<T, P> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        wrote(&polled, self.conn.progress());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        wrote(&polled, self.conn.progress());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn wrote(polled: &Poll<io::Result<usize>>, progress: &Progress) {
    if let Poll::Ready(Ok(n)) = polled
        && *n > 0
    {
        bump(&progress.writes);
    }
}

/// A request body that notes in its connection's [`Progress`] when it has been read to
/// its end.
pub(super) struct WatchedBody<B, P> {
    body: B,
    conn: Arc<P>,
}

impl<B: HttpBody, P: HasProgress> WatchedBody<B, P> {
    /// Wraps `body`, and tells `conn` a request began.
    pub(super) fn begin(body: B, conn: Arc<P>) -> WatchedBody<B, P> {
        conn.progress().begin(!body.is_end_stream());
        WatchedBody { body, conn }
    }
}

impl<B, P> HttpBody for WatchedBody<B, P>
where
    B: HttpBody<Data = Bytes> + Unpin,
    P: HasProgress,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.conn.progress().body_read(),
            Poll::Ready(Some(_)) if self.body.is_end_stream() => {
                self.conn.progress().body_read();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Conn(Progress);

    impl HasProgress for Conn {
        fn progress(&self) -> &Progress {
            &self.0
        }
    }

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(20),
        body: Duration::from_secs(10),
        keep_alive: Duration::from_secs(120),
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A tracked connection and the instant it started; the task is a real one that never
    /// ends.
    async fn tracked() -> (
        Tracked<Conn>,
        Arc<Conn>,
        Instant,
        tokio::task::JoinHandle<()>,
    ) {
        let conn = Arc::new(Conn::default());
        let task = tokio::spawn(std::future::pending::<()>());
        let t0 = Instant::now();
        (
            Tracked::new(conn.clone(), task.abort_handle(), t0),
            conn,
            t0,
            task,
        )
    }

    #[tokio::test]
    async fn a_connection_that_never_sends_a_whole_first_head_is_closed_after_the_header_timeout() {
        let (mut c, conn, t0, _task) = tracked().await;
        assert_eq!(c.check(t0 + secs(5), &T), None);
        // Trickling bytes does not buy time.
        bump(&conn.0.reads);
        assert_eq!(c.check(t0 + secs(15), &T), None);
        bump(&conn.0.reads);
        assert_eq!(c.check(t0 + secs(20), &T), Some(Overstayed::Header));
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_gets_the_keep_alive_time_and_a_new_head_the_header_time()
    {
        let (mut c, conn, t0, _task) = tracked().await;
        conn.0.begin(false);
        assert_eq!(c.check(t0 + secs(1), &T), None);
        conn.0.end();
        bump(&conn.0.writes);
        assert_eq!(c.check(t0 + secs(2), &T), None);
        // Idle since 2 s: well past the header timeout, within the keep-alive one.
        assert_eq!(c.check(t0 + secs(100), &T), None);
        assert_eq!(c.check(t0 + secs(121), &T), None);
        assert_eq!(c.check(t0 + secs(122), &T), Some(Overstayed::KeepAlive));

        let (mut c, conn, t0, _task) = tracked().await;
        conn.0.begin(false);
        conn.0.end();
        assert_eq!(c.check(t0 + secs(1), &T), None);
        // The first byte of the next head, at 50 s: it has 20 s from then.
        bump(&conn.0.reads);
        assert_eq!(c.check(t0 + secs(50), &T), None);
        bump(&conn.0.reads);
        assert_eq!(c.check(t0 + secs(69), &T), None);
        assert_eq!(c.check(t0 + secs(70), &T), Some(Overstayed::Header));
    }

    #[tokio::test]
    async fn an_answer_still_being_written_is_not_idle() {
        let (mut c, conn, t0, _task) = tracked().await;
        conn.0.begin(false);
        conn.0.end();
        assert_eq!(c.check(t0 + secs(1), &T), None);
        for minute in 1..10 {
            bump(&conn.0.writes);
            assert_eq!(c.check(t0 + secs(1) + secs(60 * minute), &T), None);
        }
        assert_eq!(
            c.check(t0 + secs(1) + secs(60 * 9) + secs(120), &T),
            Some(Overstayed::KeepAlive)
        );
    }

    #[tokio::test]
    async fn a_body_has_the_body_time_from_its_head_and_a_handler_has_no_limit() {
        let (mut c, conn, t0, _task) = tracked().await;
        conn.0.begin(true);
        assert_eq!(c.check(t0 + secs(1), &T), None);
        bump(&conn.0.reads);
        assert_eq!(c.check(t0 + secs(10), &T), None);
        assert_eq!(c.check(t0 + secs(11), &T), Some(Overstayed::Body));

        let (mut c, conn, t0, _task) = tracked().await;
        conn.0.begin(true);
        assert_eq!(c.check(t0 + secs(1), &T), None);
        conn.0.body_read();
        assert_eq!(c.check(t0 + secs(2), &T), None);
        assert_eq!(c.check(t0 + secs(3600), &T), None);
        // Once answered, the keep-alive time runs from there.
        conn.0.end();
        assert_eq!(c.check(t0 + secs(3601), &T), None);
        assert_eq!(
            c.check(t0 + secs(3601 + 120), &T),
            Some(Overstayed::KeepAlive)
        );
    }

    #[tokio::test]
    async fn every_request_is_a_new_stage_even_with_the_same_stage_bits() {
        let (mut c, conn, t0, _task) = tracked().await;
        for i in 0..5 {
            conn.0.begin(true);
            assert_eq!(c.check(t0 + secs(9 * i), &T), None, "request {i}");
        }
    }

    #[tokio::test]
    async fn the_request_count_starts_again_at_one_never_at_the_first_requests_zero() {
        let (mut c, conn, t0, _task) = tracked().await;
        conn.0
            .stage
            .store((MAX_REQUESTS - 1) << STAGE_BITS, Ordering::Relaxed);
        for _ in 0..2 {
            conn.0.begin(false);
            conn.0.end();
        }
        assert_eq!(conn.0.stage.load(Ordering::Relaxed), 1 << STAGE_BITS);
        // Idle between requests: the keep-alive time, not the first head's.
        assert_eq!(c.check(t0, &T), None);
        assert_eq!(c.check(t0 + secs(60), &T), None);
        assert_eq!(c.check(t0 + secs(121), &T), Some(Overstayed::KeepAlive));
    }

    #[tokio::test]
    async fn the_sweep_aborts_what_overstayed_and_forgets_what_ended() {
        let conns = Connections::<Conn>::new();
        let stuck = tokio::spawn(std::future::pending::<()>());
        conns.track(Arc::new(Conn::default()), stuck.abort_handle());
        let done = tokio::spawn(async {});
        conns.track(Arc::new(Conn::default()), done.abort_handle());
        done.await.unwrap();
        assert_eq!(conns.sweep(Instant::now() + secs(21), &T), 1);
        assert!(stuck.await.unwrap_err().is_cancelled());
        assert!(conns.tracked.lock().is_empty());
    }

    #[tokio::test]
    async fn room_is_made_by_closing_the_connection_idle_the_longest_and_only_an_idle_one() {
        let conns = Connections::<Conn>::new();
        let track = || {
            let conn = Arc::new(Conn::default());
            let task = tokio::spawn(std::future::pending::<()>());
            conns.track(conn.clone(), task.abort_handle());
            (conn, task)
        };
        let t0 = Instant::now();
        let (_first, first_task) = track(); // its first request not yet sent
        let (idle_long, idle_long_task) = track();
        let (idle_short, idle_short_task) = track();
        let (working, working_task) = track();
        let (head_begun, head_begun_task) = track();
        for c in [&idle_long, &working, &head_begun] {
            c.0.begin(false);
            c.0.end();
        }
        conns.sweep(t0 + secs(1), &T);
        idle_short.0.begin(false);
        idle_short.0.end();
        working.0.begin(true);
        bump(&head_begun.0.reads);
        conns.sweep(t0 + secs(2), &T);
        // Done since the last look: not idle yet to the reaper.
        let (late, late_task) = track();
        late.0.begin(false);
        late.0.end();

        assert!(conns.close_idlest());
        assert!(idle_long_task.await.unwrap_err().is_cancelled());
        assert!(conns.close_idlest());
        assert!(idle_short_task.await.unwrap_err().is_cancelled());
        assert!(!conns.close_idlest());
        for task in [first_task, working_task, head_begun_task, late_task] {
            assert!(!task.is_finished());
        }
    }

    #[tokio::test]
    async fn room_that_came_free_meanwhile_is_taken_and_no_connection_closed() {
        let conns = Connections::<Conn>::new();
        let conn = Arc::new(Conn::default());
        let mut task = tokio::spawn(std::future::pending::<()>());
        conns.track(conn.clone(), task.abort_handle());
        conn.0.begin(false);
        conn.0.end();
        conns.sweep(Instant::now() + secs(1), &T);
        // The accept loop found no room; a connection ended before it made some.
        let room = Arc::new(Semaphore::new(1));
        let _permit = conns.make_room(&room, secs(1)).await;
        let closed = tokio::time::timeout(Duration::from_millis(100), &mut task).await;
        assert!(
            closed.is_err(),
            "the idle connection was closed for nothing"
        );
        // With no room, the idle one goes.
        let full = Arc::new(Semaphore::new(0));
        let made =
            tokio::time::timeout(Duration::from_millis(100), conns.make_room(&full, secs(1)));
        assert!(made.await.is_err(), "no permit comes back in this test");
        assert!(task.await.unwrap_err().is_cancelled());
    }

    #[test]
    fn the_tick_is_a_quarter_of_the_shortest_timeout_within_bounds() {
        assert_eq!(T.tick(), secs(1));
        let short = Timeouts {
            header: Duration::from_millis(200),
            body: Duration::from_millis(400),
            keep_alive: secs(1),
        };
        assert_eq!(short.tick(), Duration::from_millis(50));
        let tiny = Timeouts {
            header: Duration::from_millis(1),
            ..short
        };
        assert_eq!(tiny.tick(), Duration::from_millis(10));
    }
}
