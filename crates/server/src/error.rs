//! The one place where errors become HTTP: every [`ApiError`] has a contract code, and
//! the code fixes the status ([`ErrorCode::status`]).
//!
//! Internal errors are logged here and answered with a generic message: nothing about
//! files, keys or the store's internals reaches a client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sessiond_core::Tombstone;
use sessiond_core::input::InputError;
use sessiond_proto::{ErrorBody, ErrorCode, ErrorDetail};
use sessiond_store::StoreError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("missing or wrong credential")]
    Unauthorized,
    #[error("malformed token or failed MAC")]
    InvalidToken,
    #[error("no such session")]
    SessionNotFound,
    #[error("the session has ended")]
    SessionEnded(Box<Tombstone>),
    #[error("version conflict")]
    VersionConflict { current: u64 },
    #[error("session limit reached")]
    SessionLimitReached { limit: u32 },
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("too many attempts")]
    TooManyAttempts { retry_after: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest {
            message: message.into(),
            field: None,
        }
    }

    pub fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest {
            message: format!("{field}: {}", message.into()),
            field: Some(field.to_owned()),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            ApiError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::InvalidToken => ErrorCode::InvalidToken,
            ApiError::SessionNotFound => ErrorCode::SessionNotFound,
            ApiError::SessionEnded(_) => ErrorCode::SessionEnded,
            ApiError::VersionConflict { .. } => ErrorCode::VersionConflict,
            ApiError::SessionLimitReached { .. } => ErrorCode::SessionLimitReached,
            ApiError::InvalidCredentials => ErrorCode::InvalidCredentials,
            ApiError::TooManyAttempts { .. } => ErrorCode::TooManyAttempts,
            ApiError::Store(_) => ErrorCode::StoreUnavailable,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The body sent to the client.
    pub fn detail(&self) -> ErrorDetail {
        let code = self.code();
        match self {
            ApiError::InvalidRequest { message, field } => ErrorDetail {
                field: field.clone(),
                ..ErrorDetail::new(code, message.clone())
            },
            ApiError::PayloadTooLarge(m) => ErrorDetail::new(code, m.clone()),
            ApiError::Unauthorized => ErrorDetail::new(
                code,
                "missing or wrong credential: send `Authorization: Bearer <key>`",
            ),
            ApiError::InvalidToken => {
                ErrorDetail::new(code, "the token is malformed or its MAC does not verify")
            }
            ApiError::SessionNotFound => ErrorDetail::new(
                code,
                "no session, and no record of one ending within the retention period",
            ),
            ApiError::SessionEnded(t) => ErrorDetail {
                reason: Some(t.reason),
                ended_at: Some(t.ended_at.to_rfc3339()),
                ..ErrorDetail::new(
                    code,
                    format!("the session ended at {} ({})", t.ended_at, t.reason),
                )
            },
            ApiError::VersionConflict { current } => ErrorDetail {
                current_version: Some(*current),
                ..ErrorDetail::new(code, format!("the session is at version {current}"))
            },
            ApiError::SessionLimitReached { limit } => ErrorDetail {
                limit: Some(*limit),
                ..ErrorDetail::new(
                    code,
                    format!("the user already has {limit} sessions, the policy's limit"),
                )
            },
            ApiError::InvalidCredentials => {
                ErrorDetail::new(code, "unknown user or wrong password")
            }
            ApiError::TooManyAttempts { retry_after } => ErrorDetail {
                retry_after: Some(*retry_after),
                ..ErrorDetail::new(
                    code,
                    format!("too many failed logins; try again in {retry_after} s"),
                )
            },
            ApiError::Store(_) => ErrorDetail::new(
                code,
                "the session store cannot be reached; the request was not carried out",
            ),
            ApiError::Internal(_) => ErrorDetail::new(code, "internal error"),
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError::InvalidRequest {
            message: e.to_string(),
            field: Some(e.field),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Store(e) => tracing::warn!(error = %e, "store error"),
            ApiError::Internal(e) => tracing::error!(error = %e, "internal error"),
            _ => {}
        }
        let status =
            StatusCode::from_u16(self.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = match &self {
            ApiError::TooManyAttempts { retry_after } => Some(*retry_after),
            _ => None,
        };
        let body = ErrorBody {
            error: self.detail(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internals_never_reach_the_body() {
        let e = ApiError::Store(StoreError::Unavailable("/var/lib/secret/path: EIO".into()));
        let body = serde_json::to_string(&e.detail()).unwrap();
        assert!(!body.contains("/var/lib"), "{body}");
        assert_eq!(e.code(), ErrorCode::StoreUnavailable);
        let e = ApiError::Internal("key material xyz".into());
        assert!(!serde_json::to_string(&e.detail()).unwrap().contains("xyz"));
    }
}
