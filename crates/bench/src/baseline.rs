//! The baseline HTTP server: plain hyper (HTTP/1.1, keep-alive) on the same kind of tokio
//! runtime as sessiond, answering every request `200` with a small JSON body after reading
//! the request body. It does no work a session server must do (no auth, no JSON parsing,
//! no lookup), so it is the floor the HTTP stack and the kernel set on this machine.
//!
//! Runs as its own process (`sessiond-bench baseline-server`) so its CPU time can be read
//! from `/proc` exactly as sessiond's is.
//!
//! With `--journal FILE` it is also the floor of a durable create: each `POST` is answered
//! `201` with a fresh 256-bit token only once its body is on disk. One writer thread takes
//! every body waiting, appends them to FILE in one `write` and makes them durable with one
//! `fdatasync`, as sessiond's journal writer group-commits (see `scenarios/creates.rs`). No
//! JSON, no session, no index, no LSM: the least a server that commits this way does per
//! durable create, on this machine's network stack and disk.

use std::convert::Infallible;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sessiond_core::token::SECRET_LEN;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// The answer body: about as long as a short JSON reply.
pub const BODY: &[u8] = br#"{"ok":true}"#;

/// A body to make durable, and who waits for it.
type Append = (Bytes, oneshot::Sender<bool>);

/// Serves until SIGTERM; prints `baseline: listening on http://ADDR` once bound. With
/// `journal`, `POST`s are durable creates (see the module docs).
pub fn run(listen: SocketAddr, journal: Option<&Path>) -> Result<()> {
    let journal = match journal {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("baseline-journal".into())
                .spawn(move || write_loop(file, rx))
                .context("starting the journal writer")?;
            Some(tx)
        }
        None => None,
    };
    serve(listen, "baseline", move |req| answer(req, journal.clone()))
}

/// What a server of the benchmark's own answers with.
pub type Answer = Response<Full<Bytes>>;

/// Serves every connection on `listen` with `answer` (HTTP/1.1, keep-alive) until SIGTERM,
/// on the runtime sessiond's main builds (multi-threaded, one worker per core); prints
/// `{name}: listening on http://ADDR` once bound.
pub fn serve<F, A>(listen: SocketAddr, name: &str, answer: F) -> Result<()>
where
    F: Fn(Request<Incoming>) -> A + Clone + Send + 'static,
    A: Future<Output = Result<Answer, Infallible>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("{name}: listening on http://{}", listener.local_addr()?);
        // SIGTERM ends the process by returning from `main`, so that a build instrumented
        // for profile-guided optimisation writes its profile (see `pgo.rs`).
        let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = term.recv() => return Ok(()),
            };
            let (stream, _) = match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors and the like: keep serving the connections we have.
                Err(_) => continue,
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                // A connection error only ends that connection.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    })
}

/// A JSON answer: `body` with `status`.
pub fn json(status: StatusCode, body: Bytes) -> Answer {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Group commit: everything queued goes out in one write and one `fdatasync`, then each
/// waiter learns whether it is durable. Ends when the server does.
fn write_loop(mut file: File, rx: mpsc::Receiver<Append>) {
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        buf.clear();
        for (body, _) in &group {
            // Length-prefixed, so the file could be read back.
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(body);
        }
        let ok = file.write_all(&buf).and_then(|()| file.sync_data()).is_ok();
        for (_, done) in group {
            let _ = done.send(ok);
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    journal: Option<mpsc::Sender<Append>>,
) -> Result<Answer, Infallible> {
    let durable = journal.filter(|_| req.method() == hyper::Method::POST);
    // Read the whole request body, as any handler that parses one must.
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let (status, answer) = match (body, durable) {
        (Ok(_), None) => (StatusCode::OK, Bytes::from_static(BODY)),
        (Ok(body), Some(journal)) => create(body, &journal).await,
        (Err(_), _) => (StatusCode::BAD_REQUEST, Bytes::from_static(BODY)),
    };
    Ok(json(status, answer))
}

/// A durable create's least work: a token's secret from the OS (as long as sessiond's),
/// and the body on disk.
async fn create(body: Bytes, journal: &mpsc::Sender<Append>) -> (StatusCode, Bytes) {
    let failed = (StatusCode::INTERNAL_SERVER_ERROR, Bytes::from_static(BODY));
    let mut secret = [0u8; SECRET_LEN];
    if getrandom::fill(&mut secret).is_err() {
        return failed;
    }
    let (done, durable) = oneshot::channel();
    if journal.send((body, done)).is_err() || durable.await != Ok(true) {
        return failed;
    }
    let token = URL_SAFE_NO_PAD.encode(secret);
    (
        StatusCode::CREATED,
        Bytes::from(format!(r#"{{"token":"{token}"}}"#)),
    )
}
