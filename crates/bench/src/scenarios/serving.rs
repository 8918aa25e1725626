//! The scenarios on one populated server, in the order they run:
//!
//! 1. population: `POST /v1/sessions` through many connections, timed; the server's RSS
//!    before and after gives sessiond's bytes per session;
//! 2. validate and forward auth, each against the hyper baseline with the same requests:
//!    closed loop (the baseline before and after sessiond), then the plain session server
//!    ([`crate::plain`]: the work alone, as many sessions) closed loop, first each part
//!    alone (finding the session, the work without its answer, the answer without the
//!    work), then the whole work; then sessiond and the baseline paced to one rate;
//! 3. restart: SIGTERM, then the time from a new process's start to its listening line, to
//!    its first successful validate, and to its first create (which waits until every
//!    session is back in memory), with everything on disk;
//! 4. durable creates on the restarted server, the whole population held (reported): the
//!    creates group measures a fresh, empty store, where the engine's compactions have
//!    little to rewrite.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::{Ctx, closed_loop, creates};
use crate::load::{self, Outcome, Spec, Workload};
use crate::plain::{ANSWER_PATH, LOOKUP_PATH, WORK_PATH};
use crate::procs::HugePages;
use crate::report::{Row, Target};
use crate::servers::{Baseline, Plain, Sessiond};
use crate::workloads::{Agent, Elsewhere, ForwardAuth, Populate, Requests, Validate};

/// Populations are bounded in time as well as count.
const POPULATE_LIMIT: Duration = Duration::from_secs(3600);
/// Most a restarted server may take to answer its first validate.
const RESTART_LIMIT: Duration = Duration::from_secs(600);
/// The rate both servers are paced to for the same-rate CPU row, as a share of the lower
/// closed-loop throughput: below both, so each keeps the pace.
const PACED_SHARE: f64 = 0.9;

/// What the serving scenarios found, for the table.
pub struct Serving {
    pub validate: Vec<Row>,
    pub forward: Vec<Row>,
    pub restart: Vec<Row>,
    /// sessiond's resident bytes per live session.
    pub bytes_per_session: f64,
}

pub async fn run(ctx: &mut Ctx) -> Result<Serving> {
    let n = ctx.settings.sessions;
    let dir = ctx.tempdir("serving")?;
    let data = dir.path().join("data");
    let server = Sessiond::start(&ctx.bin, &data)?;
    let rss_empty = server.proc.rss()?;

    ctx.phase("population");
    let tokens = Arc::new(populate(ctx, &server, n, "population").await?);
    // Let the last commits and the journal writer settle before reading memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_full = server.proc.rss()?;
    let bytes_per_session = rss_full.saturating_sub(rss_empty) as f64 / n as f64;
    ctx.log(format!(
        "sessiond RSS: {:.1} MiB empty, {:.1} MiB with {n} sessions",
        mib(rss_empty),
        mib(rss_full)
    ));

    let baseline = Baseline::start(&ctx.servers)?;
    ctx.phase("plain session server");
    let plain = Plain::start(&ctx.servers, n)?;
    let plain_tokens =
        Arc::new(tokio::task::spawn_blocking(move || crate::plain::tokens(n)).await?);
    let agent = Agent::new(server.addr, &server.agent_key)?;
    let validate = Arc::new(Validate {
        agent,
        tokens: tokens.clone(),
    });
    let floor = tokio::task::spawn_blocking(super::floor::measure).await??;
    ctx.log(format!(
        "fixed work per request (in-process): validate {:.2} us (token MAC + hash, JSON in and out), forward auth {:.2} us (token MAC + hash)",
        floor.validate_us, floor.forward_us
    ));
    let plain_validate = Requests::Validate(Validate {
        agent: Agent::new(plain.addr, &plain.agent_key)?,
        tokens: plain_tokens.clone(),
    });
    let plain_runs = PlainRuns::of(&plain, plain_validate, n, "one session's JSON");
    let validate_rows = compare(
        ctx,
        "validate",
        validate,
        &server,
        &baseline,
        plain_runs,
        floor.validate_us,
    )
    .await?;
    let forward = Arc::new(ForwardAuth {
        addr: server.addr,
        tokens: tokens.clone(),
    });
    let plain_forward = Requests::Forward(ForwardAuth {
        addr: plain.addr,
        tokens: plain_tokens.clone(),
    });
    let plain_runs = PlainRuns::of(&plain, plain_forward, n, "one session's identity headers");
    let forward_rows = compare(
        ctx,
        "forward auth",
        forward,
        &server,
        &baseline,
        plain_runs,
        floor.forward_us,
    )
    .await?;
    drop(baseline);
    drop(plain);

    ctx.phase("restart");
    let restart = restart(ctx, server, &tokens).await?;
    Ok(Serving {
        validate: validate_rows,
        forward: forward_rows,
        restart,
        bytes_per_session,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Creates `n` sessions through `server`'s API, timed (logged as `what`); their tokens.
pub(super) async fn populate(
    ctx: &mut Ctx,
    server: &Sessiond,
    n: u64,
    what: &str,
) -> Result<Vec<String>> {
    let agent = Agent::new(server.addr, &server.agent_key)?;
    let work = Arc::new(Populate::new(agent, n));
    let spec = Spec {
        connections: ctx.settings.connections,
        warmup: Duration::ZERO,
        duration: POPULATE_LIMIT,
        max_requests: n + u64::try_from(ctx.settings.connections).unwrap_or(0),
        rate: None,
    };
    let started = Instant::now();
    let out = load::run(server.addr, &spec, work.clone(), None).await?;
    let took = started.elapsed();
    out.ensure_clean(what)?;
    let tokens = work.take_tokens();
    ensure!(
        tokens.len() as u64 == n,
        "{what} made {} of {n} sessions within {POPULATE_LIMIT:?}",
        tokens.len()
    );
    ctx.log(format!(
        "{what}: {n} sessions in {:.1} s ({} creates/s, {} connections); {}",
        took.as_secs_f64(),
        crate::report::num(n as f64 / took.as_secs_f64()),
        spec.connections,
        HugePages::note("sessiond", server.proc.pid)
    ));
    Ok(tokens)
}

/// What the plain session server runs in a comparison: `whole`, the requests sessiond is
/// sent (with the plain server's tokens), then each of `parts`.
struct PlainRuns<'a> {
    server: &'a Plain,
    whole: Arc<dyn Workload>,
    parts: Vec<Part>,
}

/// One part of the work, measured alone on the plain server.
struct Part {
    /// Its name in the log, after the scenario's.
    log: &'static str,
    /// Its row's name, after the scenario's.
    row: &'static str,
    /// What it does, for the row's note.
    note: String,
    work: Arc<dyn Workload>,
}

impl PlainRuns<'_> {
    /// The runs of `requests` on `server`, which holds `sessions`, and answers with what
    /// `answer_is` where the contract's answer is sent alone.
    fn of<'a>(
        server: &'a Plain,
        requests: Requests,
        sessions: u64,
        answer_is: &str,
    ) -> PlainRuns<'a> {
        let at = |path| -> Arc<dyn Workload> {
            Arc::new(Elsewhere {
                path,
                requests: requests.clone(),
            })
        };
        let parts = vec![
            Part {
                log: "lookup alone",
                row: "plain server, finding the session alone",
                note: format!(
                    "the plain server given the same requests at {LOOKUP_PATH}: it reads the session id from the token (no MAC, no hash), finds and touches the session among {sessions}, and answers the baseline's body"
                ),
                work: at(LOOKUP_PATH),
            },
            Part {
                log: "work alone",
                row: "plain server, the work without its answer",
                note: format!(
                    "the plain server given the same requests at {WORK_PATH}: every check the whole work makes, the session found among {sessions} and touched, and the baseline's body instead of the answer"
                ),
                work: at(WORK_PATH),
            },
            Part {
                log: "answer alone",
                row: "plain server, the answer alone",
                note: format!(
                    "the plain server given the same requests at {ANSWER_PATH}: no work, and the answer the contract asks for ({answer_is}), made once"
                ),
                work: at(ANSWER_PATH),
            },
        ];
        let whole: Arc<dyn Workload> = match requests {
            Requests::Validate(v) => Arc::new(v),
            Requests::Forward(f) => Arc::new(f),
        };
        PlainRuns {
            server,
            whole,
            parts,
        }
    }
}

/// Runs `work` against the baseline, then against sessiond, then against the baseline
/// again, then `plain`'s runs; the rows.
///
/// sessiond's window is long (whole touch-flush windows, two minutes with the warm-up),
/// and a shared machine's speed drifts over minutes. The baseline's two runs bracket it,
/// each half as long as sessiond's window, and count as one (answers, windows and CPU
/// added), so a drift that is steady over the scenario moves both sides alike; each half
/// is logged.
async fn compare(
    ctx: &mut Ctx,
    name: &str,
    work: Arc<dyn Workload>,
    server: &Sessiond,
    baseline: &Baseline,
    plain: PlainRuns<'_>,
    fixed_us: f64,
) -> Result<Vec<Row>> {
    let before = run_baseline(ctx, name, "before", work.clone(), baseline).await?;
    let spec = ctx.touching_spec();
    let who = format!("{name}: sessiond");
    let (addr, pid) = (server.addr, server.proc.pid);
    let ours = closed_loop(ctx, &who, name, &spec, work.clone(), addr, pid).await?;
    let after = run_baseline(ctx, name, "after", work.clone(), baseline).await?;
    ctx.log(format!("{name}: sessiond {}", describe(&ours)));
    ctx.log(format!("{name}: baseline before {}", describe(&before)));
    ctx.log(format!("{name}: baseline after {}", describe(&after)));
    let base = before.merged(after);
    let mut parts = Vec::new();
    for part in plain.parts {
        let who = format!("{name}, {}", part.log);
        let out = run_plain(ctx, &who, part.work.clone(), plain.server).await?;
        parts.push((part, out));
    }
    let plain = run_plain(ctx, name, plain.whole, plain.server).await?;
    // Requests/s as a share of the baseline's, for the notes of the plain server's rows.
    let share = |o: &Outcome| o.rate() / base.rate();

    // Both again at one rate, below what either reached: a server driven faster answers
    // more requests per wake-up and spends less on each, so this compares the work alone.
    let rate = PACED_SHARE * ours.rate().min(base.rate());
    let paced = Spec {
        rate: Some(rate),
        ..half_window(ctx)
    };
    // sessiond over whole touch-flush windows again; the runs above warmed it up.
    let paced_ours = Spec {
        rate: Some(rate),
        warmup: paced.warmup,
        ..ctx.touching_spec()
    };
    let (pid, addr) = (server.proc.pid, server.addr);
    let paced_ours = run_paced(ctx, name, "sessiond", work.clone(), addr, pid, &paced_ours).await?;
    let (pid, addr) = (baseline.proc.pid, baseline.addr);
    let paced_base = run_paced(ctx, name, "baseline", work, addr, pid, &paced).await?;

    let label = format!("{name} ({} conns)", spec.connections);
    let mut rows = vec![
        Row::measured(
            &format!("{label}: throughput"),
            "req/s",
            ours.rate(),
            Some((base.rate(), "hyper")),
            Target::RatioAtLeast(0.90),
        )
        .note(super::touching_note(&spec)),
    ];
    if let (Some(a), Some(b)) = (
        ours.server_cpu_us_per_request(),
        base.server_cpu_us_per_request(),
    ) {
        rows.push(Row::measured(
            &format!("{label}: server CPU per request"),
            "us",
            a,
            Some((b, "hyper")),
            Target::RatioAtMost(1.25),
        ));
        if let (Some(a), Some(b)) = (
            paced_ours.server_cpu_us_per_request(),
            paced_base.server_cpu_us_per_request(),
        ) {
            rows.push(
                Row::measured(
                    &format!("{label}: server CPU per request at one rate"),
                    "us",
                    a,
                    Some((b, "hyper")),
                    Target::Report,
                )
                .note(format!(
                    "both paced to {rate:.0} req/s ({:.0}% of the lower throughput above); they answered {:.0} and {:.0} req/s",
                    PACED_SHARE * 100.0,
                    paced_ours.rate(),
                    paced_base.rate()
                )),
            );
        }
        if let Some(p) = plain.server_cpu_us_per_request() {
            rows.push(
                Row::measured(
                    &format!("{label}: plain session server's CPU per request"),
                    "us",
                    p,
                    Some((b, "hyper")),
                    Target::Report,
                )
                .note(format!(
                    "the same requests to the work alone, done plainly on the baseline's stack (crates/bench/src/plain.rs), {} sessions held; it answered {:.0} req/s, {:.2}x the baseline's",
                    ctx.settings.sessions,
                    plain.rate(),
                    share(&plain)
                )),
            );
            for (part, out) in &parts {
                if let Some(x) = out.server_cpu_us_per_request() {
                    rows.push(
                        Row::measured(
                            &format!("{label}: {}", part.row),
                            "us",
                            x,
                            Some((b, "hyper")),
                            Target::Report,
                        )
                        .note(format!(
                            "{}; it answered {:.0} req/s, {:.2}x the baseline's",
                            part.note,
                            out.rate(),
                            share(out)
                        )),
                    );
                }
            }
            rows.push(Row::measured(
                &format!("{label}: server CPU per request, against the plain server"),
                "us",
                a,
                Some((p, "plain")),
                Target::Report,
            ));
        }
        rows.push(
            Row::measured(
                &format!("{label}: baseline plus the checks timed in-process"),
                "us",
                b + fixed_us,
                Some((b, "hyper")),
                Target::Report,
            )
            .note(format!(
                "the baseline's CPU per request plus {fixed_us:.2} us of checks every request needs, timed in-process"
            )),
        );
    }
    for (q, what) in [(0.5, "p50"), (0.99, "p99")] {
        if let (Some(a), Some(b)) = (ours.latency_ms(q), base.latency_ms(q)) {
            rows.push(Row::measured(
                &format!("{label}: {what} latency"),
                "ms",
                a,
                Some((b, "hyper")),
                Target::Report,
            ));
        }
    }
    Ok(rows)
}

/// `work` on `who` (at `addr`, process `pid`) as the paced `spec` says; logged.
async fn run_paced(
    ctx: &mut Ctx,
    name: &str,
    who: &str,
    work: Arc<dyn Workload>,
    addr: SocketAddr,
    pid: u32,
    spec: &Spec,
) -> Result<Outcome> {
    let rate = spec.rate.unwrap_or(0.0);
    ctx.phase(&format!("{name}: {who}, paced to {rate:.0} req/s"));
    let out = load::run(addr, spec, work, Some(pid)).await?;
    out.ensure_clean(&format!("{name} ({who}, paced)"))?;
    ctx.log(format!(
        "{name}: {who} paced to {rate:.0} req/s: {}",
        describe(&out)
    ));
    Ok(out)
}

/// The plain session server's closed-loop run, as the baseline's are measured.
async fn run_plain(
    ctx: &mut Ctx,
    name: &str,
    work: Arc<dyn Workload>,
    plain: &Plain,
) -> Result<Outcome> {
    let who = format!("{name}: plain session server");
    let window = format!("{name}-plain");
    let (spec, addr, pid) = (half_window(ctx), plain.addr, plain.proc.pid);
    let out = closed_loop(ctx, &who, &window, &spec, work, addr, pid).await?;
    ctx.log(format!("{who} {}", describe(&out)));
    Ok(out)
}

/// One of the baseline's two runs around sessiond's (`when`: before or after).
async fn run_baseline(
    ctx: &mut Ctx,
    name: &str,
    when: &str,
    work: Arc<dyn Workload>,
    baseline: &Baseline,
) -> Result<Outcome> {
    let who = format!("{name}: baseline ({when})");
    let window = format!("{name}-baseline-{when}");
    let (spec, addr, pid) = (half_window(ctx), baseline.addr, baseline.proc.pid);
    closed_loop(ctx, &who, &window, &spec, work, addr, pid).await
}

/// The window of a server compared with sessiond that writes nothing later (the baseline,
/// the plain server): no window of its own needs to hold a touch flush, but each is half
/// as long as sessiond's, so that the baseline's two halves together are measured as long
/// as sessiond, and a moment's drift weighs on every row alike. 10 s windows swung too far
/// to read: the baseline's halves read 8.80 and 7.95 us a request in one run, and the
/// plain server's work without its answer 1.42x the baseline's CPU in one run where three
/// with 30 s windows read 1.20-1.23x. `--smoke` keeps the short window.
fn half_window(ctx: &Ctx) -> Spec {
    let mut spec = ctx.spec();
    spec.duration = spec.duration.max(ctx.touching_spec().duration / 2);
    spec
}

fn describe(o: &Outcome) -> String {
    let cpu =
        |d: Option<Duration>| d.map_or_else(|| "?".into(), |d| format!("{:.2} s", d.as_secs_f64()));
    let per = |n: u64| n as f64 / o.requests.max(1) as f64;
    let switches = o.server_switches.map_or_else(
        || "?".into(),
        |s| {
            format!(
                "{:.3} voluntary + {:.3} involuntary",
                per(s.voluntary),
                per(s.involuntary)
            )
        },
    );
    let kernel = match (o.server_cpu, o.server_system) {
        (Some(all), Some(system)) if !all.is_zero() => format!(
            " ({:.0}% in the kernel)",
            100.0 * system.as_secs_f64() / all.as_secs_f64()
        ),
        _ => String::new(),
    };
    format!(
        "{} answers in {:?}; server CPU {}{kernel}, load generator CPU {}; server context switches per answer {switches}; {}",
        o.requests,
        o.window,
        cpu(o.server_cpu),
        cpu(o.generator_cpu),
        o.stolen_note()
    )
}

/// Stops `server` (SIGTERM: it flushes touches and closes the store), starts a new one on
/// the same data dir, and times it.
async fn restart(ctx: &mut Ctx, server: Sessiond, tokens: &Arc<Vec<String>>) -> Result<Vec<Row>> {
    let n = ctx.settings.sessions;
    let data = server.data_dir.clone();
    let (status, stop) = server.proc.terminate(Duration::from_secs(1200))?;
    ensure!(status.success(), "sessiond exited with {status}");
    ctx.log(format!(
        "orderly stop with {n} sessions: {:.2} s",
        stop.as_secs_f64()
    ));
    let again = Sessiond::start(&ctx.bin, &data)?;
    let first = tokens.first().context("no tokens")?.clone();
    let work = Arc::new(Validate {
        agent: Agent::new(again.addr, &again.agent_key)?,
        tokens: Arc::new(vec![first]),
    });
    let one = Spec {
        connections: 1,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(10),
        max_requests: 1,
        rate: None,
    };
    let deadline = Instant::now() + RESTART_LIMIT;
    let answered = loop {
        let out = load::run(again.addr, &one, work.clone(), None).await?;
        if out.requests == 1 {
            break Instant::now();
        }
        ensure!(
            Instant::now() < deadline,
            "no successful validate within {RESTART_LIMIT:?} of the restart: {}",
            out.first_error.as_deref().unwrap_or("?")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // A create waits for the background load: its answer marks every session in memory.
    let create = Arc::new(Populate::new(Agent::new(again.addr, &again.agent_key)?, 1));
    let one_create = Spec {
        duration: RESTART_LIMIT,
        ..one
    };
    let out = load::run(again.addr, &one_create, create, None).await?;
    out.ensure_clean("the first create after the restart")?;
    ensure!(
        out.requests == 1,
        "no create answered within {RESTART_LIMIT:?} of the restart"
    );
    let loaded = Instant::now();
    let millions = n as f64 / 1e6;
    let to_validate = answered.duration_since(again.spawned_at).as_secs_f64();
    let to_loaded = loaded.duration_since(again.spawned_at).as_secs_f64();
    let to_listen = again.to_listening.as_secs_f64();
    ctx.log(format!(
        "restart with {n} sessions: listening after {to_listen:.2} s, first validate after \
         {to_validate:.2} s, first create (all loaded) after {to_loaded:.2} s"
    ));
    let rss = again.proc.rss()?;
    let fresh = tokio::task::spawn_blocking(move || fresh_memory(rss)).await?;
    ctx.log(format!(
        "fresh memory: {:.1} MiB (the restarted sessiond's RSS) took {} to obtain and write \
         once; the first is memory the machine had not used lately, the others memory this \
         process had just freed",
        rss as f64 / (1 << 20) as f64,
        fresh
            .iter()
            .map(|t| format!("{t:.2} s"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    let fresh = fresh.first().copied().unwrap_or_default();
    let held = creates_held(ctx, &again, n).await?;
    if let Some(dir) = ctx.settings.perf.clone() {
        // Once more under `perf record`, for the profile only (perf slows the start).
        let (status, _) = again.proc.terminate(Duration::from_secs(1200))?;
        ensure!(status.success(), "sessiond exited with {status}");
        std::fs::create_dir_all(&dir)?;
        let out = dir.join("restart.data");
        let wrapper = [
            "perf".to_owned(),
            "record".to_owned(),
            "-q".to_owned(),
            "-F".to_owned(),
            "999".to_owned(),
            "-g".to_owned(),
            "-o".to_owned(),
            out.display().to_string(),
            "--".to_owned(),
        ];
        let profiled = Sessiond::start_under(&wrapper, &ctx.bin, &data)?;
        ctx.log(format!(
            "restart under perf: listening after {:.2} s; profile: perf report -i {}",
            profiled.to_listening.as_secs_f64(),
            out.display()
        ));
        // sessiond stops first; perf then ends its recording.
        profiled.proc.terminate_wrapped(Duration::from_secs(1200))?;
    }
    let label = format!("restart, {} sessions", crate::report::num(n as f64));
    Ok(vec![
        Row::measured(
            &format!("{label}: to listening"),
            "s per million",
            to_listen / millions,
            None,
            Target::AtMost(1.0),
        ),
        Row::measured(
            &format!("{label}: to first validate"),
            "s per million",
            to_validate / millions,
            None,
            Target::AtMost(1.0),
        ),
        Row::measured(
            &format!("{label}: to everything in memory"),
            "s per million",
            to_loaded / millions,
            None,
            Target::Report,
        )
        .note(
            "the first create's answer: serving starts once the data file is open, and \
             the sessions are read back into memory in the background; until then validates \
             read the one record they need from the disk, and creates, logouts and admin \
             calls wait",
        ),
        Row::measured(
            &format!("{label}: fresh memory for its RSS"),
            "s per million",
            fresh / millions,
            None,
            Target::Report,
        )
        .note(
            "the part of a restart no loader avoids: the time this machine takes to give a \
             process as much memory as the restarted sessiond holds, memory it had not used \
             lately (on a VM whose host takes freed memory back, each page is then \
             provided anew), written once",
        ),
        held,
    ])
}

/// New sessions from `--connections` clients to `server` once it holds all `held` sessions
/// again, for one window: what a durable create costs when the store is not empty.
async fn creates_held(ctx: &mut Ctx, server: &Sessiond, held: u64) -> Result<Row> {
    let clients = ctx.settings.connections;
    let who = format!("durable creates, sessiond, {clients} clients, {held} held");
    // The population made sessions `0..held`, two per user: these are for other users.
    let to = creates::CreatesTo {
        key: &server.agent_key,
        addr: server.addr,
        pid: server.proc.pid,
        first: held.next_multiple_of(2),
    };
    let out = creates::window_of_creates(ctx, &who, "creates-held", clients, &to).await?;
    let server_us = out.server_cpu_us_per_request().unwrap_or(f64::NAN);
    Ok(Row::measured(
        &format!(
            "durable creates ({clients} clients), {} held",
            crate::report::num(held as f64)
        ),
        "creates/s",
        out.rate(),
        None,
        Target::Report,
    )
    .note(format!(
        "on the restarted server, every session back in memory; {server_us:.1} us of server \
         CPU per create; the durable-creates rows start from an empty store"
    )))
}

/// How long (s) obtaining and first writing `bytes` of new memory takes, three times: the
/// kernel (and a VM's host) must provide and zero every page. The first takes memory the
/// machine has not used lately; the next two get back what the one before freed.
fn fresh_memory(bytes: u64) -> Vec<f64> {
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    (0..3)
        .map(|_| {
            let started = Instant::now();
            let memory = std::hint::black_box(vec![1u8; bytes]);
            let took = started.elapsed();
            drop(memory);
            took.as_secs_f64()
        })
        .collect()
}
