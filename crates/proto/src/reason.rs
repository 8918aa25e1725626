//! Why a session ended.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The ways a session ends, as the contract names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The user logged out.
    LoggedOut,
    /// The idle timeout passed.
    IdleTimeout,
    /// The maximum lifetime passed.
    MaxLifetime,
    /// An administrator ended it.
    TerminatedByAdmin,
    /// The user ended it from self-service.
    TerminatedByUser,
    /// The concurrent-session limit pushed it out.
    Displaced,
    /// The user was disabled.
    UserDisabled,
}

impl EndReason {
    /// Every reason, in a stable order (for stats tables).
    pub const ALL: [EndReason; 7] = [
        EndReason::LoggedOut,
        EndReason::IdleTimeout,
        EndReason::MaxLifetime,
        EndReason::TerminatedByAdmin,
        EndReason::TerminatedByUser,
        EndReason::Displaced,
        EndReason::UserDisabled,
    ];

    /// The snake_case name used on the wire and in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            EndReason::LoggedOut => "logged_out",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::MaxLifetime => "max_lifetime",
            EndReason::TerminatedByAdmin => "terminated_by_admin",
            EndReason::TerminatedByUser => "terminated_by_user",
            EndReason::Displaced => "displaced",
            EndReason::UserDisabled => "user_disabled",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no end reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseEndReasonError(pub String);

impl fmt::Display for ParseEndReasonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown end reason `{}`", self.0)
    }
}

impl std::error::Error for ParseEndReasonError {}

impl FromStr for EndReason {
    type Err = ParseEndReasonError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EndReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ParseEndReasonError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_from_str() {
        for reason in EndReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(reason.as_str().parse::<EndReason>().unwrap(), reason);
        }
        assert!("expired".parse::<EndReason>().is_err());
    }
}
