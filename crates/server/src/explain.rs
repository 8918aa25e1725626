//! "Why was this user logged out?": a session's timeline in words.

use sessiond_core::{EndReason, Session, Timestamp, Tombstone};
use sessiond_proto::v1::{Explanation, SessionState, TimelineEvent};

fn event(at: Timestamp, event: &str, reason: Option<EndReason>, detail: String) -> TimelineEvent {
    TimelineEvent {
        at: at.to_rfc3339(),
        event: event.to_owned(),
        reason,
        detail,
    }
}

/// A sentence for each way a session ends.
pub fn reason_sentence(reason: EndReason) -> &'static str {
    match reason {
        EndReason::LoggedOut => "the user logged out",
        EndReason::IdleTimeout => "no activity within the idle timeout",
        EndReason::MaxLifetime => "the session reached its maximum lifetime",
        EndReason::TerminatedByAdmin => "an administrator terminated it",
        EndReason::TerminatedByUser => "the user ended it from the self-service page",
        EndReason::Displaced => "a newer login pushed it out under the per-user session limit",
        EndReason::UserDisabled => "the user was disabled",
    }
}

/// The first steps of every timeline: created, and last seen active if ever after that.
fn beginning(created_at: Timestamp, last_access_at: Timestamp, policy: &str) -> Vec<TimelineEvent> {
    let mut timeline = vec![event(
        created_at,
        "created",
        None,
        format!("created under policy `{policy}`"),
    )];
    if last_access_at > created_at {
        timeline.push(event(
            last_access_at,
            "last_access",
            None,
            "last seen active".into(),
        ));
    }
    timeline
}

/// The timeline of a live session: what happened, and when and why it will end.
pub fn live(s: &Session, now: Timestamp) -> Explanation {
    let (end_at, end_reason) = s.deadline();
    let mut timeline = beginning(s.created_at, s.last_access_at, &s.policy);
    let in_words = sessiond_core::clock::format_duration(end_at.since(now));
    let detail = match end_reason {
        EndReason::IdleTimeout => format!(
            "ends in {in_words} unless used again (idle timeout {}); at the latest at {} (maximum lifetime)",
            sessiond_core::clock::format_duration(s.idle_timeout()),
            s.expires_at
        ),
        _ => format!("ends in {in_words}: the maximum lifetime, however active"),
    };
    timeline.push(event(end_at, "will_end", Some(end_reason), detail.clone()));
    Explanation {
        id: s.id.to_string(),
        user: s.user.to_string(),
        state: SessionState::Active,
        policy: Some(s.policy.to_string()),
        end_at: end_at.to_rfc3339(),
        end_reason,
        timeline,
        summary: format!("Active: {detail}."),
    }
}

/// The timeline of an ended session, from its tombstone.
pub fn ended(t: &Tombstone) -> Explanation {
    let mut timeline = beginning(t.created_at, t.last_access_at, &t.policy);
    let why = reason_sentence(t.reason);
    let detail = match t.reason {
        EndReason::IdleTimeout => format!(
            "{why}: last seen {} earlier",
            sessiond_core::clock::format_duration(t.ended_at.since(t.last_access_at))
        ),
        _ => why.to_owned(),
    };
    timeline.push(event(t.ended_at, "ended", Some(t.reason), detail.clone()));
    Explanation {
        id: t.id.to_string(),
        user: t.user.to_string(),
        state: SessionState::Ended,
        policy: Some(t.policy.to_string()),
        end_at: t.ended_at.to_rfc3339(),
        end_reason: t.reason,
        timeline,
        summary: format!("Ended at {} ({}): {detail}.", t.ended_at, t.reason),
    }
}
