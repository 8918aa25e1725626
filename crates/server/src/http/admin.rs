//! The admin API: list, show, explain and terminate sessions; stats.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use sessiond_core::{EndReason, Session};
use sessiond_proto::v1;

use super::AppState;
use super::extract::{Admin, Params};
use crate::error::ApiError;
use crate::service::{DEFAULT_PAGE, MAX_PAGE, parse_id, view};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    user: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn path(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiError::invalid(e.body_text()))
}

pub(super) async fn list(
    _: Admin,
    State(state): State<AppState>,
    Params(q): Params<ListQuery>,
) -> Result<Json<v1::SessionPage>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            format!("must be 1 to {MAX_PAGE}"),
        ));
    }
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| parse_id("cursor", c))
        .transpose()?;
    let user = q.user.as_deref().filter(|u| !u.is_empty());
    Ok(Json(state.service.list(user, cursor, limit).await?))
}

pub(super) async fn show(
    _: Admin,
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<v1::SessionEnvelope>, ApiError> {
    let id = parse_id("id", &path(id)?)?;
    let session = state.service.get(id).await?;
    Ok(Json(v1::SessionEnvelope {
        session: view(Session::clone(&session)),
    }))
}

pub(super) async fn terminate(
    _: Admin,
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("id", &path(id)?)?;
    state
        .service
        .end(id, None, EndReason::TerminatedByAdmin)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn terminate_user(
    _: Admin,
    State(state): State<AppState>,
    user: Result<Path<String>, PathRejection>,
) -> Result<Json<v1::Terminated>, ApiError> {
    let user = path(user)?;
    let terminated = state
        .service
        .end_user(&user, EndReason::TerminatedByAdmin)
        .await?;
    Ok(Json(v1::Terminated { terminated }))
}

pub(super) async fn explain(
    _: Admin,
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<v1::Explanation>, ApiError> {
    let id = parse_id("id", &path(id)?)?;
    Ok(Json(state.service.explain(id).await?))
}

pub(super) async fn stats(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<v1::Stats>, ApiError> {
    Ok(Json(state.service.stats().await?))
}
