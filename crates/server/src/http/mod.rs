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

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::config::{AgentCredential, WebSettings};
use crate::error::ApiError;
use crate::login::Login;
use crate::service::Service;

/// Largest request body accepted, in bytes (`payload_too_large` above it).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest total of header names and values accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

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

/// The whole router. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`
/// so the portal and forward auth know the peer's address.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/sessions", post(agent::create))
        .route("/v1/sessions/validate", post(agent::validate))
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
        .route("/auth/nginx", get(forward::nginx))
        .route("/auth/forward", get(forward::forward))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(limit_headers))
        .with_state(state)
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

/// Refuses requests whose headers add up to more than [`MAX_HEADER_BYTES`].
async fn limit_headers(req: Request, next: Next) -> Response {
    let total: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if total > MAX_HEADER_BYTES {
        return ApiError::PayloadTooLarge(format!(
            "the request headers add up to more than {MAX_HEADER_BYTES} bytes"
        ))
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests;
