//! Wire types of sessiond's HTTP API and its stable error codes.
//!
//! This crate is what servers and clients agree on, and nothing else: request and response
//! bodies ([`v1`]), the end reasons of a session ([`EndReason`]), and the table of error
//! codes with their HTTP statuses ([`ErrorCode`]). It does no I/O and knows no HTTP library.
//! Times travel as RFC 3339 UTC strings.

mod error;
mod reason;
pub mod v1;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use reason::{EndReason, ParseEndReasonError};
