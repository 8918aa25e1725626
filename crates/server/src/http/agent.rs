//! The agent API: create, validate, update and log out sessions.

use axum::body::{Bytes, HttpBody};
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json};
use serde::de::DeserializeOwned;
use sessiond_proto::v1;

use super::extract::{Agent, Body, json_bytes, parse_json};
use super::{AppState, Connection, NO_STORE};
use crate::error::ApiError;
use crate::json;
use crate::service::view;

/// The JSON body of an agent's request on `conn`, read from the request as hyper hands it
/// over, for the routes [`App`](super::App) answers past the router: the checks and
/// answers of the extractors `Agent` and `Body` ([`Agent::check`] with the connection's
/// remembered key, [`json_body`](super::extract::json_body)), without their boxing and
/// copying, which cost more than a validate (`examples/hotpath`).
async fn agent_body<T, B>(
    state: &AppState,
    conn: &Connection,
    req: Request<B>,
) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    parse_json(&agent_bytes(state, conn, req).await?)
}

/// [`agent_body`]'s checks and read, the body left as bytes (validate reads it itself).
async fn agent_bytes<B>(
    state: &AppState,
    conn: &Connection,
    req: Request<B>,
) -> Result<Bytes, ApiError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    Agent::check(&parts.headers, state, Some(&conn.agent_key))?;
    json_bytes(&parts.headers, body).await
}

/// `POST /v1/sessions`: every login comes this way. Answered with `json::created` rather
/// than serde.
pub(super) async fn create<B>(state: &AppState, conn: &Connection, req: Request<B>) -> Response
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let answer = async {
        let req: v1::CreateSessionRequest = agent_body(state, conn, req).await?;
        state.service.create_session(req).await
    };
    match answer.await {
        Ok((token, session)) => {
            let mut r = json_response(StatusCode::CREATED, json::created(&token, &session));
            r.headers_mut().insert(CACHE_CONTROL, NO_STORE);
            r
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/sessions/validate`: the route of every page view.
pub(super) async fn validate<B>(state: &AppState, conn: &Connection, req: Request<B>) -> Response
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // Written from the store's own record, which it lends for this: none is copied.
    let mut body = None;
    let answer = async {
        let bytes = agent_bytes(state, conn, req).await?;
        // The body as agents write it is read in place; any other is serde's to read.
        let owned: v1::ValidateRequest;
        let (token, touch) = match json::validate_request(&bytes) {
            Some(read) => read,
            None => {
                owned = parse_json(&bytes)?;
                (owned.token.as_bytes(), owned.touch)
            }
        };
        state
            .service
            .validate_with(token, touch, &mut |s| {
                body = Some(json::session_envelope(s));
            })
            .await
    };
    match answer.await.map(|()| body) {
        Ok(Some(body)) => json_response(StatusCode::OK, body),
        // A store that said live without lending the session: fail closed.
        Ok(None) => ApiError::Internal("the store lent no session".into()).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `status` with `body`, a JSON document.
fn json_response(status: StatusCode, mut body: Vec<u8>) -> Response {
    // A `Vec` with room to spare becomes `Bytes` through an allocation of its own; shrunk,
    // it is handed over as it is, and the allocator shrinks it in place.
    body.shrink_to_fit();
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
) -> Result<Response, ApiError> {
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
    let mut r = (StatusCode::CREATED, Json(logged_in.created)).into_response();
    r.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    Ok(r)
}
