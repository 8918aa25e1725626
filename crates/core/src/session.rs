//! The session record, its deadlines, and what is left of it when it ends.
//!
//! A session ends at whichever comes first: `last_access_at + idle_timeout`, or
//! `expires_at` (`created_at + max_lifetime`). It counts as ended from that instant, whether
//! or not anything has swept it: [`Session::status`] is the one rule every reader applies.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sessiond_proto::EndReason;

use crate::{Policy, SessionId, Text, Timestamp, Verifier};

/// A session as the store keeps it (with the token's verifier, never the token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub verifier: Verifier,
    /// Inline when short, as the universal id: every validate's answer reads both
    /// ([`Text`]).
    pub user: Text,
    pub universal_id: Option<Text>,
    pub auth_level: i32,
    pub attributes: BTreeMap<String, String>,
    pub client_ip: Option<IpAddr>,
    /// Shared: a store keeps one copy of each distinct user agent (see the embedded
    /// store's interner); a browser fleet has few.
    pub user_agent: Option<Arc<str>>,
    /// Name of the policy it was created under.
    pub policy: Arc<str>,
    pub created_at: Timestamp,
    pub last_access_at: Timestamp,
    /// Copied from the policy at creation, so a config change never rewrites old sessions.
    pub idle_timeout_ms: u64,
    pub expires_at: Timestamp,
    /// 1 at creation, +1 on every change of attributes or state (touches excluded).
    pub version: u64,
}

/// What an agent asks for when it creates a session, already checked (see [`crate::input`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewSession {
    pub user: String,
    pub universal_id: Option<String>,
    pub auth_level: i32,
    pub attributes: BTreeMap<String, String>,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

/// Whether a session is live at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    Live,
    /// Its deadline passed at `at`.
    Expired {
        reason: EndReason,
        at: Timestamp,
    },
}

impl Session {
    /// A session created at `now` under `policy` (named `policy_name`).
    pub fn create(
        new: NewSession,
        id: SessionId,
        verifier: Verifier,
        policy_name: &str,
        policy: &Policy,
        now: Timestamp,
    ) -> Session {
        Session {
            id,
            verifier,
            user: Text::from(new.user),
            universal_id: new.universal_id.map(Text::from),
            auth_level: new.auth_level,
            attributes: new.attributes,
            client_ip: new.client_ip,
            user_agent: new.user_agent.map(Arc::from),
            policy: Arc::from(policy_name),
            created_at: now,
            last_access_at: now,
            idle_timeout_ms: u64::try_from(policy.idle_timeout.as_millis()).unwrap_or(u64::MAX),
            expires_at: now.plus(policy.max_lifetime),
            version: 1,
        }
    }

    /// Reads every part of the record an answer reads, each independently of the others, so
    /// that a caller about to answer with the whole record waits for its cache misses
    /// together rather than one after another. Returns a value only for `black_box`.
    pub fn warm(&self) -> u64 {
        let (u0, u1) = self.user.ends();
        let (i0, i1) = self.universal_id.as_ref().map_or((0, 0), |u| u.ends());
        u64::from(u0 ^ u1 ^ i0 ^ i1)
            ^ self.attributes.len() as u64
            ^ u64::from(self.client_ip.is_some())
            ^ self.user_agent.as_ref().map_or(1, |u| u.len() as u64)
            ^ self.policy.len() as u64
            ^ u64::from(self.auth_level.unsigned_abs())
            ^ self.version
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// When the idle timer runs out, never later than `expires_at`.
    pub fn idle_expires_at(&self) -> Timestamp {
        self.last_access_at
            .plus(self.idle_timeout())
            .min(self.expires_at)
    }

    /// The instant the session ends unless touched, and the reason it would end for.
    pub fn deadline(&self) -> (Timestamp, EndReason) {
        let idle = self.last_access_at.plus(self.idle_timeout());
        if idle < self.expires_at {
            (idle, EndReason::IdleTimeout)
        } else {
            (self.expires_at, EndReason::MaxLifetime)
        }
    }

    /// Live, or expired since its deadline. A session is ended *at* its deadline.
    pub fn status(&self, now: Timestamp) -> SessionStatus {
        let (at, reason) = self.deadline();
        if now >= at {
            SessionStatus::Expired { reason, at }
        } else {
            SessionStatus::Live
        }
    }

    /// Slides the idle timer to `now`. Returns whether anything moved. A touch never
    /// revives an expired session and never moves the clock backwards.
    pub fn touch(&mut self, now: Timestamp) -> bool {
        if !self.would_touch(now) {
            return false;
        }
        self.last_access_at = now;
        true
    }

    fn would_touch(&self, now: Timestamp) -> bool {
        self.status(now) == SessionStatus::Live && now > self.last_access_at
    }

    /// What is kept when the session ends for `reason` at `at`, until `retention` passes.
    pub fn end(&self, reason: EndReason, at: Timestamp, retention: Duration) -> Tombstone {
        Tombstone {
            id: self.id,
            verifier: self.verifier,
            user: self.user.clone(),
            policy: self.policy.clone(),
            reason,
            created_at: self.created_at,
            last_access_at: self.last_access_at,
            ended_at: at,
            purge_at: at.plus(retention),
        }
    }

    /// The tombstone for a session that is expired at `now`, or `None` if it is live.
    pub fn expired_tombstone(&self, now: Timestamp, retention: Duration) -> Option<Tombstone> {
        match self.status(now) {
            SessionStatus::Live => None,
            SessionStatus::Expired { reason, at } => Some(self.end(reason, at, retention)),
        }
    }
}

/// What remains of an ended session: enough to say why and when it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub id: SessionId,
    /// Kept so a token for the ended session is answered `session_ended` only if it really
    /// was that session's token.
    pub verifier: Verifier,
    pub user: Text,
    pub policy: Arc<str>,
    pub reason: EndReason,
    pub created_at: Timestamp,
    pub last_access_at: Timestamp,
    pub ended_at: Timestamp,
    /// `ended_at + ended_retention`: after this the tombstone is dropped.
    pub purge_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OnLimit;

    const MIN: Duration = Duration::from_secs(60);
    const T0: Timestamp = Timestamp(1_800_000_000_000);

    fn policy(idle: Duration, max: Duration) -> Policy {
        Policy {
            idle_timeout: idle,
            max_lifetime: max,
            max_per_user: 0,
            on_limit: OnLimit::Deny,
        }
    }

    fn session(p: &Policy) -> Session {
        let new = NewSession {
            user: "alice".into(),
            ..NewSession::default()
        };
        Session::create(new, SessionId([7; 16]), Verifier([1; 32]), "default", p, T0)
    }

    #[test]
    fn a_new_session_has_version_one_and_both_deadlines() {
        let s = session(&policy(30 * MIN, 720 * MIN));
        assert_eq!(s.version, 1);
        assert_eq!(s.created_at, T0);
        assert_eq!(s.last_access_at, T0);
        assert_eq!(s.idle_expires_at(), T0.plus(30 * MIN));
        assert_eq!(s.expires_at, T0.plus(720 * MIN));
    }

    #[test]
    fn idle_timeout_ends_the_session_at_its_instant() {
        let s = session(&policy(30 * MIN, 720 * MIN));
        let end = T0.plus(30 * MIN);
        assert_eq!(
            s.status(end.minus(Duration::from_millis(1))),
            SessionStatus::Live
        );
        assert_eq!(
            s.status(end),
            SessionStatus::Expired {
                reason: EndReason::IdleTimeout,
                at: end
            }
        );
    }

    #[test]
    fn touch_slides_the_idle_timer() {
        let mut s = session(&policy(30 * MIN, 720 * MIN));
        let t = T0.plus(20 * MIN);
        assert!(s.touch(t));
        assert_eq!(s.idle_expires_at(), t.plus(30 * MIN));
        assert_eq!(s.status(T0.plus(45 * MIN)), SessionStatus::Live);
        assert!(matches!(
            s.status(T0.plus(50 * MIN)),
            SessionStatus::Expired { .. }
        ));
    }

    #[test]
    fn touching_never_moves_past_max_lifetime() {
        let mut s = session(&policy(30 * MIN, 60 * MIN));
        for minutes in [20u32, 40, 55] {
            assert!(s.touch(T0.plus(minutes * MIN)));
        }
        assert_eq!(s.idle_expires_at(), T0.plus(60 * MIN));
        assert_eq!(
            s.status(T0.plus(60 * MIN)),
            SessionStatus::Expired {
                reason: EndReason::MaxLifetime,
                at: T0.plus(60 * MIN)
            }
        );
    }

    #[test]
    fn an_expired_session_cannot_be_touched_back_to_life() {
        let mut s = session(&policy(30 * MIN, 720 * MIN));
        let late = T0.plus(31 * MIN);
        assert!(!s.touch(late));
        assert_eq!(s.last_access_at, T0);
        assert!(matches!(s.status(late), SessionStatus::Expired { .. }));
    }

    #[test]
    fn touch_never_moves_time_backwards() {
        let mut s = session(&policy(30 * MIN, 720 * MIN));
        assert!(s.touch(T0.plus(10 * MIN)));
        assert!(!s.touch(T0.plus(5 * MIN)));
        assert_eq!(s.last_access_at, T0.plus(10 * MIN));
    }

    #[test]
    fn max_lifetime_wins_when_it_comes_first() {
        let s = session(&policy(30 * MIN, 10 * MIN));
        assert_eq!(s.deadline(), (T0.plus(10 * MIN), EndReason::MaxLifetime));
    }

    #[test]
    fn equal_deadlines_are_reported_as_max_lifetime() {
        let s = session(&policy(10 * MIN, 10 * MIN));
        assert_eq!(s.deadline(), (T0.plus(10 * MIN), EndReason::MaxLifetime));
    }

    #[test]
    fn an_expired_session_tombstone_carries_its_deadline_not_the_sweep_time() {
        let s = session(&policy(30 * MIN, 720 * MIN));
        let sweep_time = T0.plus(40 * MIN);
        let t = s.expired_tombstone(sweep_time, 24 * 60 * MIN).unwrap();
        assert_eq!(t.reason, EndReason::IdleTimeout);
        assert_eq!(t.ended_at, T0.plus(30 * MIN));
        assert_eq!(t.purge_at, T0.plus(30 * MIN).plus(24 * 60 * MIN));
        assert!(s.expired_tombstone(T0.plus(MIN), MIN).is_none());
    }
}
