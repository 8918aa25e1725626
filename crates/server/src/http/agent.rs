//! The agent API: create, validate, update and log out sessions.

use axum::body::{Bytes, HttpBody};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json};
use sessiond_proto::v1;

use super::extract::{Agent, Body, json_body};
use super::{AppState, Connection};
use crate::error::ApiError;
use crate::json;
use crate::service::view;

/// `POST /v1/sessions`, read from the request itself as [`validate`] is: every login
/// comes this way. Answered with `json::created` rather than serde.
pub(super) async fn create<B>(state: &AppState, conn: &Connection, req: Request<B>) -> Response
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let answer = async {
        Agent::check(&parts.headers, state, Some(&conn.agent_key))?;
        let req: v1::CreateSessionRequest = json_body(&parts.headers, body).await?;
        state.service.create_session(req).await
    };
    match answer.await {
        Ok((token, session)) => json_response(StatusCode::CREATED, json::created(&token, &session)),
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/sessions/validate`, answered from the request as hyper hands it over: the
/// route of every page view reads the request itself rather than through axum's
/// extractors, whose boxing and copying cost more than the validate (`examples/hotpath`).
/// The checks and answers are the extractors' ([`Agent::check`], [`json_body`]).
pub(super) async fn validate<B>(state: &AppState, conn: &Connection, req: Request<B>) -> Response
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let answer = async {
        Agent::check(&parts.headers, state, Some(&conn.agent_key))?;
        let req: v1::ValidateRequest = json_body(&parts.headers, body).await?;
        state.service.validate(&req.token, req.touch).await
    };
    match answer.await {
        // Written from the store's shared record: the hot path copies no session strings.
        Ok(session) => json_response(StatusCode::OK, json::session_envelope(&session)),
        Err(e) => e.into_response(),
    }
}

/// `status` with `body`, a JSON document.
fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(axum::body::Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(super) async fn update(
    _: Agent,
    State(state): State<AppState>,
    Body(req): Body<v1::UpdateRequest>,
) -> Result<Json<v1::SessionEnvelope>, ApiError> {
    let session = state.service.update(req).await?;
    Ok(Json(v1::SessionEnvelope {
        session: view(session),
    }))
}

pub(super) async fn logout(
    _: Agent,
    State(state): State<AppState>,
    Body(req): Body<v1::LogoutRequest>,
) -> Result<StatusCode, ApiError> {
    state.service.logout(&req.token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/login`: SiteMinder's `Sm_AgentApi_Login`, against sessiond's users directory.
pub(super) async fn login(
    _: Agent,
    State(state): State<AppState>,
    Body(req): Body<v1::LoginRequest>,
) -> Result<(StatusCode, Json<v1::CreatedSession>), ApiError> {
    let logged_in = state
        .web
        .login
        .login(
            &state.service,
            &req.username,
            &req.password,
            req.client,
            req.policy,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(logged_in.created)))
}
