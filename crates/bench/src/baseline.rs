//! The baseline HTTP server: plain hyper (HTTP/1.1, keep-alive) on the same kind of tokio
//! runtime as sessiond, answering every request `200` with a small JSON body after reading
//! the request body. It does no work a session server must do (no auth, no JSON parsing,
//! no lookup), so it is the floor the HTTP stack and the kernel set on this machine.
//!
//! Runs as its own process (`sessiond-bench baseline-server`) so its CPU time can be read
//! from `/proc` exactly as sessiond's is.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The answer body: about as long as a short JSON reply.
const BODY: &[u8] = br#"{"ok":true}"#;

/// Serves until killed; prints `baseline: listening on http://ADDR` once bound.
pub fn run(listen: SocketAddr) -> Result<()> {
    // The same runtime sessiond's main builds: multi-threaded, one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(listen))
}

async fn serve(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("baseline: listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors and the like: keep serving the connections we have.
            Err(_) => continue,
        };
        tokio::spawn(async move {
            // A connection error only ends that connection.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole request body, as any handler that parses one must.
    let status = match req.into_body().collect().await {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::BAD_REQUEST,
    };
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
