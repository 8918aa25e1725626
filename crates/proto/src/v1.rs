//! Bodies of the `/v1` routes.
//!
//! Request types refuse unknown fields, so a typo in an agent's request is an
//! `invalid_request` rather than a silently ignored option. Response types accept unknown
//! fields, so old clients keep working when the server adds one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::EndReason;

/// Where the user is: both parts are optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl ClientInfo {
    pub fn is_empty(&self) -> bool {
        self.ip.is_none() && self.user_agent.is_none()
    }
}

/// A session as agents and administrators see it. It never carries the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Public handle: safe to log and show; grants nothing.
    pub id: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub universal_id: Option<String>,
    pub auth_level: i32,
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub client: ClientInfo,
    pub policy: String,
    pub created_at: String,
    pub last_access_at: String,
    pub idle_expires_at: String,
    pub expires_at: String,
    pub version: u64,
}

/// `POST /v1/sessions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub universal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_level: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// `POST /v1/login`: sessiond checks the password against its users directory.
/// Its `Debug` never shows the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("client", &self.client)
            .field("policy", &self.policy)
            .finish()
    }
}

/// `201` answer to a create or a login: the token, shown this once, and the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedSession {
    pub token: String,
    pub session: Session,
}

/// `POST /v1/sessions/validate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    pub token: String,
    /// Slide the idle timer (default true); false reads without counting as activity.
    #[serde(default = "yes")]
    pub touch: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/sessions/update`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    pub token: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

/// `POST /v1/sessions/logout`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    pub token: String,
}

/// `{session}`: the answer of validate, update and admin show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnvelope {
    pub session: Session,
}

/// `GET /v1/admin/sessions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPage {
    pub sessions: Vec<Session>,
    /// Pass back as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// `DELETE /v1/admin/users/{user}/sessions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminated {
    pub terminated: u64,
}

/// Whether an explained session is still live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Active,
    Ended,
}

/// One step in a session's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvent {
    pub at: String,
    /// `created`, `last_access`, `ended`, or `will_end`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
    /// A sentence for the operator.
    pub detail: String,
}

/// `GET /v1/admin/sessions/{id}/explain`: the answer to "why was this user logged out?".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub id: String,
    pub user: String,
    pub state: SessionState,
    pub policy: Option<String>,
    /// When it ends or ended, and why.
    pub end_at: String,
    pub end_reason: EndReason,
    pub timeline: Vec<TimelineEvent>,
    /// The whole story in one sentence.
    pub summary: String,
}

/// `GET /v1/admin/stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// `embedded`, `memory` or `redis`.
    pub store: String,
    pub active_sessions: u64,
    pub sessions_per_policy: BTreeMap<String, u64>,
    /// Sessions ended within `ended_retention`, by reason.
    pub ended_by_reason: BTreeMap<String, u64>,
    pub users_with_sessions: u64,
    /// sessiond nodes sharing the store (1 in embedded mode).
    pub nodes: u64,
}

/// What happened to a session, in `GET /v1/events`.
///
/// The stream is Server-Sent Events: each event has an `id:` line (the event id, to resume
/// with `Last-Event-ID`), an `event:` line (`created`, `updated`, `ended` or `reset`) and one
/// `data:` line with a JSON [`SessionEvent`] (for `reset`, a JSON [`ResetEvent`]).
/// Comment lines (`: keep-alive`) are sent every 15 s while nothing happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Updated,
    Ended,
    /// The history asked for with `Last-Event-ID` is gone: drop every cached session.
    Reset,
}

impl EventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Ended => "ended",
            EventKind::Reset => "reset",
        }
    }
}

/// The `data` of a `created`, `updated` or `ended` event. Never carries a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEvent {
    /// The session id.
    pub id: String,
    pub user: String,
    /// The session's version after the change.
    pub version: u64,
    /// `ended` only: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
    /// When it happened (for `ended`, the session's `ended_at`).
    pub at: String,
}

/// The `data` of a `reset` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetEvent {
    /// Why the stream could not resume (e.g. `history_unavailable`).
    pub reason: String,
}
