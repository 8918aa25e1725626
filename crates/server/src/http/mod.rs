//! The HTTP surface: routes, limits, and the state handlers share.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests can call it without a
//! socket. Only this module (and [`crate::error`]) knows HTTP.

mod admin;
mod agent;
mod cookie;
mod events;
mod extract;
mod forward;
mod pages;
mod portal;
mod proxy;
pub mod redirect;
mod serve;
mod timeouts;

pub use events::KEEP_ALIVE as EVENT_HEARTBEAT;
pub use serve::{Limits, serve};
pub use timeouts::Timeouts;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{BoxError, Router};
use http_body_util::Limited;
use tower::ServiceExt;

use crate::config::{AgentCredential, WebSettings};
use crate::error::ApiError;
use crate::login::Login;
use crate::service::Service;

/// Largest request body accepted, in bytes (`payload_too_large` above it).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest total of header names and values accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// `Cache-Control` of every answer no cache may keep: those that carry a token or set the
/// session cookie (RFC 6749 asks it of answers carrying tokens, OWASP ASVS of sensitive
/// data), the portal's pages and forward auth's verdicts.
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// What every handler can reach: one `Arc`, so the clone axum makes for every request is
/// one reference count (profiled: cloning and dropping four `Arc`s per request was 2-3% of
/// validate's CPU).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
#[derive(Clone, Debug)]
pub struct Shared {
    pub service: Arc<Service>,
    /// SHA-256 of each agent key.
    pub agents: Arc<[AgentCredential]>,
    /// SHA-256 of the admin token.
    pub admin_sha256: [u8; 32],
    /// The web-agent role: portal, cookie and forward-auth settings, logins.
    pub web: Arc<WebState>,
    /// Set to true when shutdown starts, so long-lived streams end.
    pub closing: Arc<tokio::sync::watch::Sender<bool>>,
}

/// What the portal and forward auth share.
#[derive(Debug)]
pub struct WebState {
    pub settings: WebSettings,
    pub login: Login,
}

/// The whole HTTP surface: every request passes the header and body limits; the three
/// routes hit on every page view (validate and the two forward-auth checks) and create
/// (every login) then go straight to their handlers, everything else through the router.
///
/// The hot routes skip the router's layers because a profile of validate showed them at
/// about 9% of its CPU (matching, a boxed clone of the route, middleware futures), and
/// they read the request themselves rather than through axum's extractors, whose boxed
/// handler future and copies of the request cost another 150 ns a request
/// (`examples/hotpath`). They run the extractors' own checks (`extract::Agent::check`,
/// `extract::json_bytes` and `parse_json`, `proxy::Origin::of`; validate reads its usual
/// body in place, `json::validate_request`); the router routes the same paths to
/// the same functions, for the methods it answers otherwise (`HEAD`, `405`). Tests drive
/// this type through `tower::ServiceExt::oneshot`, so they cover the path the server takes.
#[derive(Clone, Debug)]
pub struct App {
    router: Router,
    state: AppState,
}

/// The whole HTTP surface, for [`serve`] or, in tests, `oneshot`. A request that carries
/// `ConnectInfo<SocketAddr>` in its extensions gets its peer address seen by the portal
/// and forward auth; [`serve`] hands it over with the [`Connection`].
pub fn app(state: AppState) -> App {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/v1/sessions",
            post(|State(s): State<AppState>, req: Request| async move {
                agent::create(&s, &Connection::of(&req), req).await
            }),
        )
        .route(
            "/v1/sessions/validate",
            post(|State(s): State<AppState>, req: Request| async move {
                agent::validate(&s, &Connection::of(&req), req).await
            }),
        )
        .route("/v1/sessions/update", post(agent::update))
        .route("/v1/sessions/logout", post(agent::logout))
        .route("/v1/login", post(agent::login))
        .route("/v1/events", get(events::events))
        .route("/v1/admin/sessions", get(admin::list))
        .route(
            "/v1/admin/sessions/{id}",
            get(admin::show).delete(admin::terminate),
        )
        .route("/v1/admin/sessions/{id}/explain", get(admin::explain))
        .route(
            "/v1/admin/users/{user}/sessions",
            delete(admin::terminate_user),
        )
        .route("/v1/admin/stats", get(admin::stats))
        .route("/login", get(portal::login_page).post(portal::login_submit))
        .route("/logout", post(portal::logout))
        .route("/sessions", get(portal::sessions_page))
        .route("/sessions/end", post(portal::end_one))
        .route("/sessions/end-others", post(portal::end_others))
        .route(
            "/auth/nginx",
            get(|State(s): State<AppState>, req: Request| async move {
                forward::nginx(&s, &Connection::of(&req), req.headers()).await
            }),
        )
        .route(
            "/auth/forward",
            get(|State(s): State<AppState>, req: Request| async move {
                forward::forward(&s, &Connection::of(&req), req.headers()).await
            }),
        )
        .fallback(not_found)
        .with_state(state.clone());
    App { router, state }
}

impl App {
    /// Answers one request; its peer is the `ConnectInfo<SocketAddr>` in its extensions,
    /// if any.
    pub async fn handle<B>(&self, req: Request<B>) -> Response
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let conn = Connection::of(&req);
        self.handle_on(&conn, req).await
    }

    /// Answers one request that came on `conn`. Takes the app by reference: the hot
    /// routes clone nothing of it, so a request writes none of the app's reference
    /// counts, which every request on every core would share (`serve` keeps one app per
    /// connection).
    pub async fn handle_on<B>(&self, conn: &Connection, mut req: Request<B>) -> Response
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if let Some(refused) = oversized_headers(&req) {
            return refused;
        }
        match (req.method(), req.uri().path()) {
            (&Method::POST, "/v1/sessions/validate") => {
                agent::validate(&self.state, conn, req).await
            }
            (&Method::POST, "/v1/sessions") => agent::create(&self.state, conn, req).await,
            (&Method::GET, "/auth/nginx") => forward::nginx(&self.state, conn, req.headers()).await,
            (&Method::GET, "/auth/forward") => {
                forward::forward(&self.state, conn, req.headers()).await
            }
            _ => {
                // The router's extractors find the peer in the extensions.
                if let Some(peer) = conn.peer
                    && req.extensions().get::<ConnectInfo<SocketAddr>>().is_none()
                {
                    req.extensions_mut().insert(ConnectInfo(peer));
                }
                // Handlers read bodies through axum's extractors, which turn the limit's
                // error into 413 (`payload_too_large`).
                let req = req.map(|b| Body::new(Limited::new(b, MAX_BODY_BYTES)));
                match self.router.clone().oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            }
        }
    }
}

/// What the server knows of the connection a request came on, kept for its lifetime.
#[derive(Debug, Default)]
pub struct Connection {
    /// The peer's address; `None` for a request built by hand (tests).
    pub peer: Option<SocketAddr>,
    /// The agent key that first passed [`extract::Agent::check`] on this connection. A
    /// later request presenting the same bytes is let through on a constant-time
    /// comparison rather than one more SHA-256: an agent sends the same key on every
    /// request of a keep-alive connection (70 ns of a validate's 1.2 µs in-process). It
    /// lives as long as the connection, as the key does in hyper's read buffer; agent keys
    /// do not change while the server runs.
    agent_key: OnceLock<Box<[u8]>>,
}

impl Connection {
    pub fn new(peer: SocketAddr) -> Connection {
        Connection {
            peer: Some(peer),
            ..Connection::default()
        }
    }

    /// A connection of its own for `req`, with the peer its extensions name.
    fn of<B>(req: &Request<B>) -> Connection {
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>();
        Connection {
            peer: peer.map(|c| c.0),
            ..Connection::default()
        }
    }
}

impl<B> tower::Service<Request<B>> for App
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let app = self.clone();
        Box::pin(async move { Ok(app.handle(req).await) })
    }
}

async fn healthz() -> StatusCode {
    StatusCode::OK
}

async fn readyz(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    state.service.store.ping().await?;
    Ok(StatusCode::OK)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::invalid(format!("no route {} {}", req.method(), req.uri().path()))
}

/// The refusal of a request whose headers add up to more than [`MAX_HEADER_BYTES`].
fn oversized_headers<B>(req: &Request<B>) -> Option<Response> {
    let total: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    (total > MAX_HEADER_BYTES).then(|| {
        ApiError::PayloadTooLarge(format!(
            "the request headers add up to more than {MAX_HEADER_BYTES} bytes"
        ))
        .into_response()
    })
}

#[cfg(test)]
mod tests;
