//! Times validate's in-memory work with N sessions held, in this process: the store's
//! lookup and touch, then the same with the JSON answer written; the service's validate
//! (token check and store) with the answer, and the token check alone; then whole requests
//! through the server's `App` (limits, agent key, body, token check, store, answer) for
//! validate and forward auth, on one keep-alive `Connection`, everything but the network;
//! last, creates of new sessions through the same `App` (the memory store: no journal).
//! The sessions are the benchmark's (`testkit::SessionData`), drawn at random from the
//! whole population as its load generator draws them. With the server's allocator
//! (mimalloc). For profiling and for trying changes to the hot path (`perf record -g --
//! ...`), not a test; the end-to-end figures are `sessiond-bench`'s.
//!
//! ```sh
//! cargo run --release -p sessiond --example hotpath -- 1000000
//! cargo run --release -p sessiond --example hotpath -- 1000 creates   # the creates alone
//! ```
//! Prints nanoseconds per validate for each step: what grows from 1,000 sessions to a
//! million is the memory a validate reads (cache and TLB misses over a large heap); what
//! the `App` rows add to the service's row is the HTTP framework's share.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use mimalloc::MiMalloc;
use sessiond_core::clock::ManualClock;
use sessiond_core::token::{TokenKey, TokenKeys, sha256};
use sessiond_core::{Policy, SessionId, Timestamp, Verifier};
use sessiond_server::config::{AgentCredential, Settings};
use sessiond_server::http::{self, App, AppState, Connection, Shared, WebState};
use sessiond_server::login::Login;
use sessiond_server::regulation::Regulator;
use sessiond_server::service::Service;
use sessiond_store::testkit::SessionData;
use sessiond_store::{Created, LocalStore, Lookup, SessionStore, StoreOptions};

/// The agent key the `App` rows present.
const AGENT_KEY: &str = "hotpath-agent-key-0123456789abcdef";

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Validates timed per step (each step over the same random order).
const LOOKUPS: usize = 2_000_000;
/// Creates timed, after the validates.
const CREATES: u64 = 200_000;
/// SHA-256 rounds run between two validates (see `apart` in `main`).
const SEPARATION: usize = 4;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N: a number of sessions"))
        .unwrap_or(1_000_000);
    // `creates`: only the last step, so that a profile of the run is a profile of it.
    let all_steps = match std::env::args().nth(2).as_deref() {
        None => true,
        Some("creates") => false,
        Some(other) => {
            panic!("unknown step {other:?}: the second argument is `creates` or nothing")
        }
    };
    // A day's idle timeout: the runs below move store time on by about half an hour, and
    // no session may expire meanwhile, however many there are.
    let policy = Policy {
        idle_timeout: std::time::Duration::from_secs(24 * 3600),
        max_lifetime: std::time::Duration::from_secs(7 * 24 * 3600),
        ..Policy::default()
    };
    let t0 = Timestamp(1_795_000_000_000);
    let token_keys =
        TokenKeys::new(vec![TokenKey::new("k1", &[7; 32]).expect("a key")]).expect("a key set");
    let store = Arc::new(LocalStore::memory(StoreOptions::default()));
    let mut keys = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut s = SessionData::nth(i).into_session_for(&*store, "default", &policy, t0);
        let minted = token_keys.mint(s.id).expect("a token");
        s.verifier = minted.verifier;
        keys.push((s.id, s.verifier, minted.token));
        match store.create(s, policy.limit(), t0).now_or_never() {
            Some(Ok(Created::Created { .. })) => {}
            other => panic!("create {i}: {other:?}"),
        }
    }
    // A random draw from the whole population, as the load generator makes.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let drawn: Vec<usize> = (0..LOOKUPS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n) as usize
        })
        .collect();
    let order: Vec<(SessionId, Verifier)> = drawn.iter().map(|&i| (keys[i].0, keys[i].1)).collect();

    // Store time moves a millisecond every 8 validates, so a touch moves most records.
    let mut k: u64 = 0;
    // Between two validates the server runs thousands of instructions of HTTP and
    // kernel work, so one validate's misses never overlap the next one's. Here the same
    // separation is a few hashes, timed alone and subtracted.
    let mut buf = [7u8; 64];
    let mut apart = || {
        for _ in 0..SEPARATION {
            let h = sha256(&buf);
            buf[..32].copy_from_slice(&h);
        }
        black_box(&buf);
    };
    let started = Instant::now();
    for _ in 0..LOOKUPS {
        apart();
    }
    let apart_ns = started.elapsed().as_nanos() as f64 / LOOKUPS as f64;
    let mut step = |name: &str, answer: bool| {
        let started = Instant::now();
        for (id, verifier) in &order {
            apart();
            k += 1;
            let at = Timestamp(t0.0 + (k / 8) as i64);
            // In memory, one poll answers.
            let found = store.validate(*id, verifier, true, at).now_or_never();
            let Some(Ok(Lookup::Live(s))) = found else {
                panic!("validate: {found:?}")
            };
            if answer {
                black_box(sessiond_server::json::session_envelope(&s));
            } else {
                black_box(Arc::as_ptr(&s));
            }
        }
        let ns = started.elapsed().as_nanos() as f64 / LOOKUPS as f64 - apart_ns;
        println!("{n} sessions: {name}: {ns:.0} ns per validate");
    };
    if all_steps {
        step("lookup and touch", false);
        step("lookup, touch and answer", true);
        step("lookup and touch", false);
        step("lookup, touch and answer", true);
    }

    // Whole requests through the server's `App`, as `http::serve` hands them over.
    let clock = ManualClock::new(Timestamp(t0.0 + (k / 8) as i64));
    let (app, service) = app(&store, token_keys, clock.clone());
    let cookie = Settings::load(None, &[], &Default::default())
        .expect("default settings")
        .web
        .cookie
        .name;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    // The service's validate (token check, store) and the answer, without HTTP; then the
    // token check alone (its MAC and the verifier's hash), to split what the `App` rows
    // add.
    if all_steps {
        let started = Instant::now();
        runtime.block_on(async {
            for &i in &drawn {
                apart();
                clock.advance(std::time::Duration::from_micros(125));
                let s = service.validate(&keys[i].2, true).await.expect("live");
                black_box(sessiond_server::json::session_envelope(&s));
            }
        });
        let ns = started.elapsed().as_nanos() as f64 / LOOKUPS as f64 - apart_ns;
        println!("{n} sessions: Service::validate and answer: {ns:.0} ns per request");
        let started = Instant::now();
        for &i in &drawn {
            apart();
            black_box(service.keys.verify(&keys[i].2)).expect("ok");
        }
        let ns = started.elapsed().as_nanos() as f64 / LOOKUPS as f64 - apart_ns;
        println!("{n} sessions: token check: {ns:.0} ns per request");
    }
    // One keep-alive connection, as a load generator's: its agent key is hashed once.
    let conn = Connection::new(([127, 0, 0, 1], 40000).into());
    // Each request is built in the loop, as hyper builds it from a hot buffer, and the
    // time to build and drop one without handling it is subtracted. `inputs` are the
    // requests' tokens or bodies, in order.
    let mut request =
        |name: &str, status: u16, inputs: &[&str], make: &dyn Fn(&str) -> Request<Body>| {
            let started = Instant::now();
            for input in inputs {
                apart();
                black_box(make(input));
            }
            let making = started.elapsed();
            let started = Instant::now();
            runtime.block_on(async {
                for input in inputs {
                    apart();
                    clock.advance(std::time::Duration::from_micros(125));
                    let answer = app.handle_on(&conn, make(input)).await;
                    assert_eq!(answer.status(), status, "{name}");
                    black_box(
                        answer
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len()),
                    )
                    .expect("a body");
                }
            });
            let ns =
                started.elapsed().saturating_sub(making).as_nanos() as f64 / inputs.len() as f64;
            println!("{n} sessions: {name} through App::handle: {ns:.0} ns per request");
        };
    if all_steps {
        let tokens: Vec<&str> = drawn.iter().map(|&i| keys[i].2.as_str()).collect();
        for _ in 0..2 {
            request("validate", 200, &tokens, &|token| {
                Request::post("/v1/sessions/validate")
                    .header(AUTHORIZATION, format!("Bearer {AGENT_KEY}"))
                    .header(CONTENT_TYPE, "application/json")
                    .body(Body::from(format!(r#"{{"token":"{token}"}}"#)))
                    .expect("a request")
            });
            request("forward auth", 200, &tokens, &|token| {
                Request::get("/auth/nginx")
                    .header(COOKIE, format!("{cookie}={token}"))
                    .body(Body::empty())
                    .expect("a request")
            });
        }
    }

    // Creates of new sessions (the benchmark's next ones), with the memory store: what a
    // create costs the worker that answers it, without the journal's thread and fsync.
    let bodies: Vec<String> = (n..n + CREATES)
        .map(|i| serde_json::to_string(&SessionData::nth(i).create_request()).expect("JSON"))
        .collect();
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    request("create (memory store)", 201, &bodies, &|body| {
        Request::post("/v1/sessions")
            .header(AUTHORIZATION, format!("Bearer {AGENT_KEY}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .expect("a request")
    });
}

/// The server's request handling on `store`, with one agent key ([`AGENT_KEY`]), and the
/// service under it.
fn app(store: &Arc<LocalStore>, keys: TokenKeys, clock: ManualClock) -> (App, Arc<Service>) {
    let settings = Settings::load(None, &[], &Default::default()).expect("default settings");
    let store: Arc<dyn SessionStore> = store.clone();
    let service = Arc::new(Service {
        store,
        keys,
        default_policy: settings.default_policy,
        policies: settings.policies.clone(),
        ended_retention: settings.ended_retention,
        clock: Arc::new(clock),
    });
    let app = http::app(AppState::new(Shared {
        service: service.clone(),
        agents: vec![AgentCredential {
            name: "hotpath".into(),
            sha256: sha256(AGENT_KEY.as_bytes()),
        }]
        .into(),
        admin_sha256: sha256(b"unused"),
        web: Arc::new(WebState {
            login: Login {
                directory: None,
                regulator: Regulator::new(settings.web.regulation),
            },
            settings: settings.web,
        }),
        closing: Arc::new(tokio::sync::watch::channel(false).0),
    }));
    (app, service)
}
