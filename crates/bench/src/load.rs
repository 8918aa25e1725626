//! The load generator: a fixed number of HTTP/1.1 keep-alive connections, one task each,
//! each sending its next request as soon as the previous answer has been read in full.
//! What is sent and what counts as a good answer is a [`Workload`].
//!
//! Like wrk, each task writes its request's bytes to its socket and reads the answer
//! straight back (its head parsed by `httparse`, its body by `Content-Length`): one write
//! and one read per request, no second task or channel in between. The generator shares
//! the machine's cores with the server it loads, so what it spends is taken from the
//! server; hyper's client connection, used before, cost 7.5-10 µs of CPU per request
//! (docs/benchmarks.md).
//!
//! A run has a warm-up (sent, not counted), then a measured window of fixed length. Only
//! answers that complete inside the window are counted, and the server's CPU time is read
//! from `/proc` at the window's two ends. Every run is bounded by its window and by a
//! request count, whichever ends first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::procs::{
    CpuTimes, Switches, busy_time, context_switches, cpu_time, cpu_times, stolen_time,
};

/// What the connections send, and how an answer is judged.
pub trait Workload: Send + Sync + 'static {
    /// Writes the next request, head and body, into `out` (empty); `false` when there is
    /// nothing left to send.
    fn request(&self, rng: &mut fastrand::Rng, out: &mut Vec<u8>) -> bool;
    /// Judges one answer; an `Err` counts as an error (the first one is kept).
    fn check(&self, status: StatusCode, body: &[u8]) -> Result<(), String>;
}

/// Most bytes an answer's head may take.
const MAX_HEAD: usize = 16 << 10;
/// Most bytes an answer's body may take.
const MAX_BODY: usize = 1 << 20;
/// Most header lines an answer may have.
const MAX_HEADERS: usize = 32;

/// The shape of one run.
#[derive(Clone, Debug)]
pub struct Spec {
    pub connections: usize,
    /// Sent but not counted, so connections are open and caches warm.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// At most this many requests in all (warm-up included).
    pub max_requests: u64,
    /// Requests per second over all connections, when paced: each connection then sends
    /// at most its share, evenly spaced, instead of as soon as its last answer is in.
    pub rate: Option<f64>,
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Good answers completed inside the window.
    pub requests: u64,
    /// Bad answers and connection failures, in the window or not.
    pub errors: u64,
    pub first_error: Option<String>,
    /// The window's length (shorter than asked when the workload ran out).
    pub window: Duration,
    /// Latency of every counted answer, sorted, in microseconds.
    pub latencies_us: Vec<u32>,
    /// The server's CPU time over the window, when a pid was given.
    pub server_cpu: Option<Duration>,
    /// The part of `server_cpu` spent in the kernel (its `stime`).
    pub server_system: Option<Duration>,
    /// The server's context switches over the window, when a pid was given.
    pub server_switches: Option<Switches>,
    /// The CPU time over the window of the other processes [`run_watching`] was given
    /// (e.g. the redis-server behind sessiond), in their order.
    pub others_cpu: Vec<Duration>,
    /// This process's (the load generator's) CPU time over the window.
    pub generator_cpu: Option<Duration>,
    /// CPU time the host gave to other machines over the window, summed over this one's
    /// CPUs ([`crate::procs::stolen_time`]).
    pub stolen: Option<Duration>,
    /// CPU time the machine's CPUs spent running anything over the window
    /// ([`crate::procs::busy_time`]).
    pub machine_busy: Option<Duration>,
}

impl Outcome {
    /// Counted answers per second.
    pub fn rate(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// The `q` quantile (0..=1) of the counted answers' latency, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        let n = self.latencies_us.len();
        if n == 0 {
            return None;
        }
        let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
        self.latencies_us.get(i).map(|&us| f64::from(us) / 1000.0)
    }

    /// `cpu` per counted answer, in microseconds (`None` when nothing was answered).
    pub fn us_per_request(&self, cpu: Duration) -> Option<f64> {
        (self.requests > 0).then(|| cpu.as_secs_f64() * 1e6 / self.requests as f64)
    }

    /// Server CPU time per counted answer, in microseconds.
    pub fn server_cpu_us_per_request(&self) -> Option<f64> {
        self.us_per_request(self.server_cpu?)
    }

    /// The load generator's CPU time per counted answer, in microseconds.
    pub fn generator_cpu_us_per_request(&self) -> Option<f64> {
        self.us_per_request(self.generator_cpu?)
    }

    /// Fails with the first error if there was any.
    pub fn ensure_clean(&self, what: &str) -> Result<()> {
        if self.errors > 0 {
            anyhow::bail!(
                "{what}: {} bad answers or failed connections; first: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        Ok(())
    }

    /// The two runs as one: answers, windows and CPU times added, latencies pooled. CPU
    /// readings are kept only if both runs have them.
    pub fn merged(mut self, other: Outcome) -> Outcome {
        let add = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
        self.requests += other.requests;
        self.errors += other.errors;
        self.first_error = self.first_error.or(other.first_error);
        self.window += other.window;
        self.latencies_us.extend(other.latencies_us);
        self.latencies_us.sort_unstable();
        self.server_cpu = add(self.server_cpu, other.server_cpu);
        self.server_system = add(self.server_system, other.server_system);
        self.server_switches = self
            .server_switches
            .zip(other.server_switches)
            .map(|(a, b)| a.plus(b));
        self.generator_cpu = add(self.generator_cpu, other.generator_cpu);
        self.stolen = add(self.stolen, other.stolen);
        self.machine_busy = add(self.machine_busy, other.machine_busy);
        self.others_cpu = if self.others_cpu.len() == other.others_cpu.len() {
            self.others_cpu
                .iter()
                .zip(&other.others_cpu)
                .map(|(a, b)| *a + *b)
                .collect()
        } else {
            Vec::new()
        };
        self
    }

    /// The share of the machine's CPU time over the window that the host took.
    pub fn stolen_share(&self) -> Option<f64> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let total = self.window.as_secs_f64() * cpus as f64;
        self.stolen
            .filter(|_| total > 0.0)
            .map(|s| s.as_secs_f64() / total)
    }

    /// The share of the machine's CPU time over the window that went to anything but the
    /// server, the load generator and the other processes watched: other programs and
    /// kernel threads. A measurement that overlapped another program shows it here.
    pub fn outsiders_share(&self) -> Option<f64> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let total = self.window.as_secs_f64() * cpus as f64;
        let measured =
            self.server_cpu? + self.generator_cpu? + self.others_cpu.iter().sum::<Duration>();
        let busy = self.machine_busy?;
        (total > 0.0).then(|| busy.saturating_sub(measured).as_secs_f64() / total)
    }

    /// [`Outcome::stolen_share`] and [`Outcome::outsiders_share`] for a log line.
    pub fn stolen_note(&self) -> String {
        let share = self
            .stolen_share()
            .map_or_else(|| "?".into(), |s| format!("{:.1}%", 100.0 * s));
        let outsiders = self
            .outsiders_share()
            .map(|s| format!(", everything else on it {:.1}%", 100.0 * s))
            .unwrap_or_default();
        format!("the host took {share} of the machine's CPU time{outsiders}")
    }
}

/// What each connection task brings back.
#[derive(Default)]
struct Tally {
    counted: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// When the window opens and closes, and the shared request budget.
struct Window {
    start: Instant,
    end: Instant,
    sent: AtomicU64,
    max_requests: u64,
}

/// Runs `work` against `addr` as `spec` says; reads `server_pid`'s CPU time at the window's
/// ends if given.
pub async fn run(
    addr: SocketAddr,
    spec: &Spec,
    work: Arc<dyn Workload>,
    server_pid: Option<u32>,
) -> Result<Outcome> {
    run_watching(addr, spec, work, server_pid, &[]).await
}

/// [`run`], also reading the CPU time of `others` (processes the server relies on) at the
/// window's ends, into [`Outcome::others_cpu`].
pub async fn run_watching(
    addr: SocketAddr,
    spec: &Spec,
    work: Arc<dyn Workload>,
    server_pid: Option<u32>,
    others: &[u32],
) -> Result<Outcome> {
    let start = Instant::now() + spec.warmup;
    let window = Arc::new(Window {
        start,
        end: start + spec.duration,
        sent: AtomicU64::new(0),
        max_requests: spec.max_requests,
    });
    // A paced connection sends every `interval`, the connections' first sends spread over
    // one interval.
    let interval = spec
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(spec.connections as f64 / r));
    let mut tasks = Vec::with_capacity(spec.connections);
    for i in 0..spec.connections {
        let (work, window) = (work.clone(), window.clone());
        let pace = interval.map(|every| Pace {
            next: Instant::now() + every.mul_f64(i as f64 / spec.connections as f64),
            every,
        });
        tasks.push(tokio::spawn(connection(addr, work, window, pace)));
    }
    // Sample CPU at the window's ends, while the connections run.
    let sampler = tokio::spawn(sample_cpu(window.clone(), server_pid, others.to_vec()));
    let mut outcome = Outcome::default();
    let mut last_done = window.start;
    for task in tasks {
        let (tally, done) = task.await.context("a load task panicked")?;
        last_done = last_done.max(done);
        outcome.requests += tally.counted;
        outcome.errors += tally.errors;
        if outcome.first_error.is_none() {
            outcome.first_error = tally.first_error;
        }
        outcome.latencies_us.extend(tally.latencies_us);
    }
    let ran_out = last_done < window.end;
    if ran_out {
        // The workload ended early: the window is what actually ran.
        sampler.abort();
        outcome.window = last_done.saturating_duration_since(window.start);
    } else {
        let samples = sampler.await.context("the CPU sampler panicked")??;
        outcome.server_cpu = samples.server.map(|t| t.user + t.system);
        outcome.server_system = samples.server.map(|t| t.system);
        outcome.server_switches = samples.switches;
        outcome.generator_cpu = samples.generator;
        outcome.others_cpu = samples.others;
        outcome.stolen = samples.stolen;
        outcome.machine_busy = samples.busy;
        outcome.window = spec.duration;
    }
    outcome.latencies_us.sort_unstable();
    Ok(outcome)
}

/// What was read at the window's two ends, as differences.
struct Samples {
    /// The server's CPU time.
    server: Option<CpuTimes>,
    /// The server's context switches.
    switches: Option<Switches>,
    /// This process's (the load generator's) CPU time.
    generator: Option<Duration>,
    /// The others' CPU time, in their order.
    others: Vec<Duration>,
    /// What the host took ([`crate::procs::stolen_time`]).
    stolen: Option<Duration>,
    /// What the machine's CPUs ran ([`crate::procs::busy_time`]).
    busy: Option<Duration>,
}

async fn sample_cpu(window: Arc<Window>, pid: Option<u32>, others: Vec<u32>) -> Result<Samples> {
    let read = |pid: Option<u32>| pid.map(cpu_time).transpose();
    let read_server = || pid.map(cpu_times).transpose();
    let read_others = || {
        others
            .iter()
            .map(|&p| cpu_time(p))
            .collect::<Result<Vec<_>>>()
    };
    let switches = || pid.map(context_switches).transpose();
    // Not every kernel or machine reports it: the figure is left out then.
    let stolen = || stolen_time().ok();
    let busy = || busy_time().ok();
    let own = Some(std::process::id());
    tokio::time::sleep_until(window.start).await;
    let (server0, switches0) = (read_server()?, switches()?);
    let (own0, others0, stolen0, busy0) = (read(own)?, read_others()?, stolen(), busy());
    tokio::time::sleep_until(window.end).await;
    let (server1, switches1) = (read_server()?, switches()?);
    let (own1, others1, stolen1, busy1) = (read(own)?, read_others()?, stolen(), busy());
    let diff = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
    Ok(Samples {
        server: server0.zip(server1).map(|(a, b)| CpuTimes {
            user: b.user.saturating_sub(a.user),
            system: b.system.saturating_sub(a.system),
        }),
        switches: switches0.zip(switches1).map(|(a, b)| a.until(b)),
        generator: diff(own0, own1),
        others: others1
            .iter()
            .zip(&others0)
            .map(|(b, a)| b.saturating_sub(*a))
            .collect(),
        stolen: diff(stolen0, stolen1),
        busy: diff(busy0, busy1),
    })
}

/// When a paced connection sends next, and how often.
struct Pace {
    next: Instant,
    every: Duration,
}

/// How many sends a paced connection may be behind its schedule and still catch up.
/// tokio's timer wakes on whole milliseconds, later than asked, so a connection must catch
/// up to keep its rate; one further behind has a server slower than the pace, and starts
/// its schedule again rather than send a burst.
const PACE_SLACK: u32 = 8;

impl Pace {
    /// Waits for the next send's time.
    async fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        } else if now.duration_since(self.next) > self.every * PACE_SLACK {
            self.next = now;
        }
        self.next += self.every;
    }
}

/// One keep-alive connection, sending until the window closes, the budget is spent or the
/// workload runs out (at its `pace`, if given); returns its tally and when it stopped.
async fn connection(
    addr: SocketAddr,
    work: Arc<dyn Workload>,
    window: Arc<Window>,
    pace: Option<Pace>,
) -> (Tally, Instant) {
    let mut tally = Tally::default();
    if let Err(e) = drive(addr, &*work, &window, pace, &mut tally).await {
        tally.error(format!("{e:#}"));
    }
    (tally, Instant::now())
}

async fn drive(
    addr: SocketAddr,
    work: &dyn Workload,
    window: &Window,
    mut pace: Option<Pace>,
    tally: &mut Tally,
) -> Result<()> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let mut rng = fastrand::Rng::new();
    let (mut request, mut answer) = (Vec::with_capacity(1024), Answer::default());
    loop {
        if let Some(pace) = &mut pace {
            pace.wait().await;
        }
        if Instant::now() >= window.end
            || window.sent.fetch_add(1, Ordering::Relaxed) >= window.max_requests
        {
            return Ok(());
        }
        request.clear();
        if !work.request(&mut rng, &mut request) {
            return Ok(());
        }
        let sent = Instant::now();
        stream
            .write_all(&request)
            .await
            .context("sending a request")?;
        let status = answer.read(&mut stream).await?;
        let done = Instant::now();
        match work.check(status, answer.body()) {
            Err(e) => tally.error(e),
            Ok(()) if done >= window.start && done < window.end => {
                tally.counted += 1;
                let us = done.duration_since(sent).as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(()) => {}
        }
    }
}

/// The last answer read on one connection: its bytes, and where its body is in them.
#[derive(Default)]
struct Answer {
    buf: Vec<u8>,
    body: std::ops::Range<usize>,
}

impl Answer {
    fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }

    /// Reads one whole answer from `stream` (nothing else may follow it, as only one
    /// request is ever in flight); its status.
    async fn read(&mut self, stream: &mut TcpStream) -> Result<StatusCode> {
        self.buf.clear();
        let (status, head, len) = loop {
            self.fill(stream).await?;
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
            ensure!(
                self.buf.len() <= MAX_HEAD,
                "an answer's head is over {MAX_HEAD} bytes"
            );
        };
        let end = head + len;
        while self.buf.len() < end {
            self.fill(stream).await?;
        }
        ensure!(
            self.buf.len() == end,
            "{} bytes came after an answer",
            self.buf.len() - end
        );
        self.body = head..end;
        Ok(status)
    }

    /// Appends what the socket has (at least one byte).
    async fn fill(&mut self, stream: &mut TcpStream) -> Result<()> {
        self.buf.reserve(4096);
        let n = stream
            .read_buf(&mut self.buf)
            .await
            .context("reading an answer")?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        Ok(())
    }
}

/// An answer's status, the length of its head and of its body, once `buf` holds the whole
/// head; `None` before. Every answer must say its `Content-Length`: the servers measured
/// answer with whole bodies.
fn parse_head(buf: &[u8]) -> Result<Option<(StatusCode, usize, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = response.parse(buf).context("parsing an answer")? else {
        return Ok(None);
    };
    let status = StatusCode::from_u16(response.code.unwrap_or(0)).context("answer status")?;
    let mut len = None;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("a chunked answer: the generator reads only Content-Length bodies");
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .context("a bad Content-Length")?;
            len = Some(n);
        }
    }
    let len = len.context("an answer without Content-Length")?;
    ensure!(len <= MAX_BODY, "an answer's body is over {MAX_BODY} bytes");
    Ok(Some((status, head, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_paced_connection_keeps_its_rate_and_does_not_burst_after_a_stall() {
        let every = Duration::from_micros(500);
        let mut pace = Pace {
            next: Instant::now(),
            every,
        };
        // Sends until `for_` has passed, each answered 300 us later; how many.
        async fn sends(pace: &mut Pace, for_: Duration) -> u32 {
            let end = Instant::now() + for_;
            let mut n = 0;
            while Instant::now() < end {
                pace.wait().await;
                tokio::time::advance(Duration::from_micros(300)).await;
                n += 1;
            }
            n
        }
        // The timer wakes on whole milliseconds: the connection catches up in between.
        let n = sends(&mut pace, Duration::from_millis(100)).await;
        assert!(
            (199..=202).contains(&n),
            "{n} sends in 100 ms at one per 500 us"
        );
        // A server that stalled for a second: the schedule starts again, with no burst of
        // the 2,000 sends missed.
        tokio::time::advance(Duration::from_secs(1)).await;
        let n = sends(&mut pace, Duration::from_millis(10)).await;
        assert!(
            (19..=22).contains(&n),
            "{n} sends in the 10 ms after a stall"
        );
    }

    #[test]
    fn an_answer_head_gives_status_and_lengths_once_complete() {
        let answer = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        let head = answer.len() - 11;
        let (status, at, len) = parse_head(answer).unwrap().unwrap();
        assert_eq!((status, at, len), (StatusCode::CREATED, head, 11));
        assert!(
            parse_head(&answer[..head - 1]).unwrap().is_none(),
            "partial"
        );
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(parse_head(chunked).is_err());
        let no_length = b"HTTP/1.1 200 OK\r\nx: y\r\n\r\n";
        assert!(parse_head(no_length).is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn merged_runs_add_their_answers_windows_and_cpu() {
        let run = |requests, secs, cpu_ms, latencies: &[u32]| Outcome {
            requests,
            window: Duration::from_secs(secs),
            latencies_us: latencies.to_vec(),
            server_cpu: Some(Duration::from_millis(cpu_ms)),
            server_system: Some(Duration::from_millis(cpu_ms / 2)),
            server_switches: Some(Switches {
                voluntary: requests,
                involuntary: 1,
            }),
            generator_cpu: Some(Duration::from_millis(2 * cpu_ms)),
            stolen: Some(Duration::from_millis(cpu_ms / 100)),
            machine_busy: Some(Duration::from_millis(4 * cpu_ms)),
            ..Outcome::default()
        };
        let both = run(100, 10, 700, &[5, 9]).merged(run(300, 10, 900, &[1, 7]));
        assert_eq!(both.requests, 400);
        assert_eq!(both.window, Duration::from_secs(20));
        assert_eq!(both.rate(), 20.0);
        assert_eq!(both.server_cpu, Some(Duration::from_millis(1600)));
        assert_eq!(both.server_cpu_us_per_request(), Some(4000.0));
        assert_eq!(both.server_system, Some(Duration::from_millis(800)));
        assert_eq!(both.generator_cpu, Some(Duration::from_millis(3200)));
        assert_eq!(both.stolen, Some(Duration::from_millis(16)));
        assert_eq!(both.machine_busy, Some(Duration::from_millis(6400)));
        // 6.4 s busy, of which the server 1.6 and the generator 3.2: 1.6 s elsewhere.
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let outsiders = both.outsiders_share().unwrap();
        assert!(
            (outsiders - 1.6 / (20.0 * cpus)).abs() < 1e-9,
            "{outsiders}"
        );
        let switches = Switches {
            voluntary: 400,
            involuntary: 2,
        };
        assert_eq!(both.server_switches, Some(switches));
        assert_eq!(both.latencies_us, [1, 5, 7, 9]);
        let unread = Outcome {
            server_cpu: None,
            server_switches: None,
            stolen: None,
            ..run(1, 1, 1, &[])
        };
        let both = both.merged(unread);
        assert_eq!(both.server_cpu, None, "one side unread");
        assert_eq!(both.server_switches, None, "one side unread");
        assert_eq!(both.stolen, None, "one side unread");
        assert_eq!(both.stolen_share(), None);
        assert_eq!(both.outsiders_share(), None);
    }
}
