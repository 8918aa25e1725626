//! The agent API: create, validate, update and log out sessions.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sessiond_proto::v1;

use super::AppState;
use super::extract::{Agent, Body};
use crate::error::ApiError;
use crate::json;
use crate::service::view;

pub(super) async fn create(
    _: Agent,
    State(state): State<AppState>,
    Body(req): Body<v1::CreateSessionRequest>,
) -> Result<(StatusCode, Json<v1::CreatedSession>), ApiError> {
    let created = state.service.create(req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn validate(
    _: Agent,
    State(state): State<AppState>,
    Body(req): Body<v1::ValidateRequest>,
) -> Result<Response, ApiError> {
    let session = state.service.validate(&req.token, req.touch).await?;
    // Written from the store's shared record: the hot path copies no session strings.
    Ok((
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        json::session_envelope(&session),
    )
        .into_response())
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
