//! What can go wrong when calling sessiond, and how HTTP answers map onto it.
//!
//! A non-2xx answer with the contract's `{"error": {...}}` body becomes [`Error::Api`],
//! carrying the stable [`ErrorCode`]. Anything else the server should not have said is
//! [`Error::Protocol`]; failing to reach it is [`Error::Transport`]. No variant ever holds
//! the credential or a session token.

use std::fmt::Write as _;

use sessiond_proto::{ErrorBody, ErrorCode, ErrorDetail};

/// An error from a [`Client`](crate::Client) call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a contract error body.
    #[error("{}", describe_api(*status, detail))]
    Api { status: u16, detail: ErrorDetail },
    /// Could not reach the server / connection failed.
    #[error("{0}")]
    Transport(String),
    /// The answer was not what the contract says (bad JSON, unexpected status without an
    /// error body).
    #[error("unexpected answer from the server (HTTP {status}): {message}")]
    Protocol { status: u16, message: String },
    /// The base URL or an argument is unusable.
    #[error("{0}")]
    InvalidArgument(String),
}

impl Error {
    /// The contract's error code, when the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { detail, .. } => Some(detail.code),
            _ => None,
        }
    }

    /// The HTTP status of the answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Protocol { status, .. } => Some(*status),
            Error::Transport(_) | Error::InvalidArgument(_) => None,
        }
    }

    /// The error for a non-2xx answer: [`Error::Api`] if the body is the contract's error
    /// body, [`Error::Protocol`] otherwise. The body itself is never quoted.
    pub(crate) fn from_answer(status: u16, body: &[u8]) -> Error {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => Error::Api {
                status,
                detail: error,
            },
            Err(_) => {
                let reason = reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default();
                Error::Protocol {
                    status,
                    message: format!("HTTP {status}{reason} without an error body"),
                }
            }
        }
    }

    /// The error for a 2xx answer whose body is not the JSON the route promises.
    pub(crate) fn bad_json(status: u16, err: &serde_json::Error) -> Error {
        Error::Protocol {
            status,
            message: format!(
                "the body is not the expected JSON: {}",
                redact_quoted(&err.to_string())
            ),
        }
    }

    /// The error for a request that got no (complete) answer from `base`.
    pub(crate) fn transport(base: &str, err: reqwest::Error) -> Error {
        let err = err.without_url();
        let cause = root_cause(&err);
        let message = if err.is_timeout() {
            format!("{base} did not answer in time ({cause})")
        } else if err.is_connect() {
            format!("could not connect to {base}: {cause}")
        } else if err.is_body() || err.is_decode() {
            format!("reading the answer from {base} failed: {cause}")
        } else {
            format!("request to {base} failed: {cause}")
        };
        Error::Transport(message)
    }
}

/// `code: message`, then whichever details the code carries. The end reason and time are
/// left out when the message already says them, as the server's messages usually do.
fn describe_api(status: u16, detail: &ErrorDetail) -> String {
    let mut out = format!("{}: {}", detail.code, detail.message);
    let unsaid = |value: &String| !detail.message.contains(value.as_str());
    let details = [
        (
            "reason",
            detail.reason.map(|r| r.to_string()).filter(unsaid),
        ),
        ("ended at", detail.ended_at.clone().filter(unsaid)),
        (
            "current version",
            detail.current_version.map(|v| v.to_string()),
        ),
        ("limit", detail.limit.map(|n| n.to_string())),
        ("retry after", detail.retry_after.map(|s| format!("{s} s"))),
        ("field", detail.field.clone()),
    ];
    let extras: Vec<String> = details
        .into_iter()
        .filter_map(|(label, value)| value.map(|v| format!("{label} {v}")))
        .collect();
    if !extras.is_empty() {
        let _ = write!(out, " ({})", extras.join(", "));
    }
    if detail.code.status() != status {
        let _ = write!(out, " [HTTP {status}]");
    }
    out
}

/// The innermost error's text: reqwest's own layers only say "error sending request".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// Replaces every `"..."` string in a serde message by `"…"`: serde quotes offending values
/// (`invalid type: string "…"`), and such a value could be a token.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            out.push('…');
            let mut escaped = false;
            for inner in chars.by_ref() {
                match inner {
                    '"' if !escaped => break,
                    '\\' if !escaped => escaped = true,
                    _ => escaped = false,
                }
            }
            out.push('"');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use sessiond_proto::EndReason;

    use super::*;

    #[test]
    fn contract_error_bodies_become_api_errors() {
        let body = br#"{"error":{"code":"session_ended","message":"the session ended",
            "reason":"idle_timeout","ended_at":"2025-01-02T03:04:05Z"}}"#;
        let err = Error::from_answer(410, body);
        assert_eq!(err.code(), Some(ErrorCode::SessionEnded));
        assert_eq!(err.status(), Some(410));
        let Error::Api { detail, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(detail.reason, Some(EndReason::IdleTimeout));
        assert_eq!(
            err.to_string(),
            "session_ended: the session ended (reason idle_timeout, ended at 2025-01-02T03:04:05Z)"
        );
    }

    #[test]
    fn details_the_message_already_gives_are_not_repeated() {
        let body = br#"{"error":{"code":"session_ended","message":"ended at T1 (displaced)",
            "reason":"displaced","ended_at":"T1"}}"#;
        assert_eq!(
            Error::from_answer(410, body).to_string(),
            "session_ended: ended at T1 (displaced)"
        );
    }

    #[test]
    fn details_and_odd_statuses_are_shown() {
        let body =
            br#"{"error":{"code":"version_conflict","message":"stale","current_version":7}}"#;
        let err = Error::from_answer(409, body);
        assert_eq!(
            err.to_string(),
            "version_conflict: stale (current version 7)"
        );
        let body = br#"{"error":{"code":"internal","message":"oops"}}"#;
        assert_eq!(
            Error::from_answer(502, body).to_string(),
            "internal: oops [HTTP 502]"
        );
    }

    #[test]
    fn other_bodies_are_protocol_errors_that_do_not_quote_the_body() {
        for body in [
            &b"<html>Bad Gateway secret-ish</html>"[..],
            b"",
            br#"{"error":"nope secret-ish"}"#,
        ] {
            let err = Error::from_answer(502, body);
            assert!(
                matches!(err, Error::Protocol { status: 502, .. }),
                "{err:?}"
            );
            assert_eq!(err.code(), None);
            let text = err.to_string();
            assert!(text.contains("502 Bad Gateway"), "{text}");
            assert!(!text.contains("secret-ish"), "{text}");
        }
    }

    #[test]
    fn bad_json_messages_hide_quoted_values() {
        let err = serde_json::from_str::<sessiond_proto::v1::Terminated>(
            r#"{"terminated":"tok\"en-secret"}"#,
        )
        .unwrap_err();
        let text = Error::bad_json(200, &err).to_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("invalid type: string \"…\""), "{text}");
        assert_eq!(redact_quoted(r#"a "b\\" c "d" e"#), r#"a "…" c "…" e"#);
        assert_eq!(redact_quoted("missing field `x`"), "missing field `x`");
    }
}
