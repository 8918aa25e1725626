//! The stable error codes and the body every error is sent in.
//!
//! [`ErrorCode::ALL`] is the one table of codes: each has a snake_case name, which programs
//! match on, and an HTTP status. The server maps its typed errors onto these codes in one
//! place; clients map them back.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stable error code from the contract's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    PayloadTooLarge,
    Unauthorized,
    InvalidToken,
    SessionNotFound,
    SessionEnded,
    VersionConflict,
    SessionLimitReached,
    InvalidCredentials,
    TooManyAttempts,
    StoreUnavailable,
    Internal,
}

impl ErrorCode {
    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidRequest,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::InvalidToken,
        ErrorCode::SessionNotFound,
        ErrorCode::SessionEnded,
        ErrorCode::VersionConflict,
        ErrorCode::SessionLimitReached,
        ErrorCode::InvalidCredentials,
        ErrorCode::TooManyAttempts,
        ErrorCode::StoreUnavailable,
        ErrorCode::Internal,
    ];

    /// The HTTP status this code is always sent with.
    pub const fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unauthorized => 401,
            ErrorCode::InvalidToken => 401,
            ErrorCode::SessionNotFound => 404,
            ErrorCode::SessionEnded => 410,
            ErrorCode::VersionConflict => 409,
            ErrorCode::SessionLimitReached => 409,
            ErrorCode::InvalidCredentials => 401,
            ErrorCode::TooManyAttempts => 429,
            ErrorCode::StoreUnavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// The snake_case name programs match on.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::SessionNotFound => "session_not_found",
            ErrorCode::SessionEnded => "session_ended",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::SessionLimitReached => "session_limit_reached",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error": {...}}`: the body of every error response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The code, a message for humans, and code-specific details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// `session_ended`: why the session ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<crate::EndReason>,
    /// `session_ended`: when it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// `version_conflict`: the session's current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// `session_limit_reached`: the limit that was hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// `too_many_attempts`: seconds until a new attempt is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// `invalid_request`: the field or parameter at fault, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorDetail {
    /// A detail with only a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorDetail {
            code,
            message: message.into(),
            reason: None,
            ended_at: None,
            current_version: None,
            limit: None,
            retry_after: None,
            field: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_contract() {
        let table: Vec<(&str, u16)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str(), c.status()))
            .collect();
        assert_eq!(
            table,
            vec![
                ("invalid_request", 400),
                ("payload_too_large", 413),
                ("unauthorized", 401),
                ("invalid_token", 401),
                ("session_not_found", 404),
                ("session_ended", 410),
                ("version_conflict", 409),
                ("session_limit_reached", 409),
                ("invalid_credentials", 401),
                ("too_many_attempts", 429),
                ("store_unavailable", 503),
                ("internal", 500),
            ]
        );
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn body_omits_empty_details() {
        let body = ErrorBody {
            error: ErrorDetail::new(ErrorCode::InvalidToken, "bad token"),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"invalid_token","message":"bad token"}}"#
        );
    }
}
