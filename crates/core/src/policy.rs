//! Session policies: how long a session may idle and live, and how many a user may hold.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happens when a user at `max_per_user` logs in again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Refuse the new session (`session_limit_reached`).
    #[default]
    Deny,
    /// End the user's oldest session with reason `displaced`, then create.
    DisplaceOldest,
}

/// The timeouts and limit a session is created under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// A session ends this long after its last access.
    pub idle_timeout: Duration,
    /// A session ends this long after its creation, however active.
    pub max_lifetime: Duration,
    /// Live sessions one user may hold; 0 means unlimited.
    pub max_per_user: u32,
    pub on_limit: OnLimit,
}

impl Default for Policy {
    /// The contract's defaults: 30 minutes idle, 12 hours at most, no limit.
    fn default() -> Self {
        Policy {
            idle_timeout: Duration::from_secs(30 * 60),
            max_lifetime: Duration::from_secs(12 * 60 * 60),
            max_per_user: 0,
            on_limit: OnLimit::Deny,
        }
    }
}

impl Policy {
    /// The limit a create under this policy must respect.
    pub fn limit(&self) -> UserLimit {
        UserLimit {
            max: self.max_per_user,
            on_limit: self.on_limit,
        }
    }

    /// How long touches may stay only in memory: min([`MAX_TOUCH_FLUSH_WINDOW`],
    /// idle_timeout / 10), at least 100 ms. After a crash a session can end earlier by at
    /// most this, never later.
    pub fn touch_flush_window(&self) -> Duration {
        (self.idle_timeout / 10)
            .min(MAX_TOUCH_FLUSH_WINDOW)
            .max(Duration::from_millis(100))
    }
}

/// The longest a touch stays only in memory, whatever the idle timeout.
pub const MAX_TOUCH_FLUSH_WINDOW: Duration = Duration::from_secs(60);

/// The concurrent-session limit applied atomically by the store when it inserts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UserLimit {
    /// 0 means unlimited.
    pub max: u32,
    pub on_limit: OnLimit,
}

impl UserLimit {
    pub const UNLIMITED: UserLimit = UserLimit {
        max: 0,
        on_limit: OnLimit::Deny,
    };

    /// Given a user's live session count, how many of the oldest must go before one more
    /// may be added, or `None` when the create must be refused.
    pub fn to_displace(&self, live: usize) -> Option<usize> {
        let max = self.max as usize;
        if max == 0 || live < max {
            return Some(0);
        }
        match self.on_limit {
            OnLimit::Deny => None,
            OnLimit::DisplaceOldest => Some(live + 1 - max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_displaces_or_denies() {
        assert_eq!(UserLimit::UNLIMITED.to_displace(1_000_000), Some(0));
    }

    #[test]
    fn deny_refuses_at_the_limit_only() {
        let l = UserLimit {
            max: 2,
            on_limit: OnLimit::Deny,
        };
        assert_eq!(l.to_displace(0), Some(0));
        assert_eq!(l.to_displace(1), Some(0));
        assert_eq!(l.to_displace(2), None);
        assert_eq!(l.to_displace(3), None);
    }

    #[test]
    fn displace_makes_room_for_exactly_one() {
        let l = UserLimit {
            max: 2,
            on_limit: OnLimit::DisplaceOldest,
        };
        assert_eq!(l.to_displace(1), Some(0));
        assert_eq!(l.to_displace(2), Some(1));
        // Over the limit (the limit was lowered): back down to max - 1 before adding.
        assert_eq!(l.to_displace(5), Some(4));
    }

    #[test]
    fn flush_window_is_bounded() {
        let mut p = Policy::default();
        assert_eq!(p.touch_flush_window(), Duration::from_secs(60));
        p.idle_timeout = Duration::from_secs(5 * 60);
        assert_eq!(p.touch_flush_window(), Duration::from_secs(30));
        p.idle_timeout = Duration::from_millis(500);
        assert_eq!(p.touch_flush_window(), Duration::from_millis(100));
    }
}
