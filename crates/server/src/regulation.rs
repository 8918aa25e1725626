//! Brute-force protection for logins (Authelia's "regulation").
//!
//! After `max_retries` failures within `find_time`, for one user name or one client IP,
//! further attempts for that name or IP are refused for `ban_time`, even with the right
//! password. Time is an input. State is per node and in memory: a ban is as strong as the
//! node that holds it (documented; a shared store for bans would be a later step).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use sessiond_core::Timestamp;

/// Most keys (user names plus IPs) remembered; the oldest are forgotten beyond it.
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegulationSettings {
    pub max_retries: u32,
    pub find_time: Duration,
    pub ban_time: Duration,
}

impl Default for RegulationSettings {
    /// Authelia's defaults: 3 failures within 2 minutes ban for 5 minutes.
    fn default() -> Self {
        RegulationSettings {
            max_retries: 3,
            find_time: Duration::from_secs(120),
            ban_time: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default)]
struct Record {
    failures: VecDeque<Timestamp>,
    banned_until: Option<Timestamp>,
}

/// Failure counts and bans, keyed by `user:<name>` and `ip:<addr>`.
#[derive(Debug)]
pub struct Regulator {
    settings: RegulationSettings,
    records: Mutex<HashMap<String, Record>>,
}

impl Regulator {
    pub fn new(settings: RegulationSettings) -> Regulator {
        Regulator {
            settings,
            records: Mutex::new(HashMap::new()),
        }
    }

    fn keys(user: &str, ip: Option<std::net::IpAddr>) -> Vec<String> {
        let mut keys = vec![format!("user:{user}")];
        if let Some(ip) = ip {
            keys.push(format!("ip:{ip}"));
        }
        keys
    }

    /// `Some(seconds to wait)` while the user or the IP is banned.
    pub fn banned(&self, user: &str, ip: Option<std::net::IpAddr>, now: Timestamp) -> Option<u64> {
        if self.settings.max_retries == 0 {
            return None;
        }
        let records = self.records.lock();
        Self::keys(user, ip)
            .iter()
            .filter_map(|k| records.get(k)?.banned_until)
            .filter(|until| *until > now)
            .map(|until| until.since(now).as_secs_f64().ceil() as u64)
            .max()
    }

    /// Records a failed attempt; bans when it is the `max_retries`-th within `find_time`.
    pub fn failed(&self, user: &str, ip: Option<std::net::IpAddr>, now: Timestamp) {
        if self.settings.max_retries == 0 {
            return;
        }
        let mut records = self.records.lock();
        if records.len() >= MAX_KEYS {
            Self::forget_quiet(&mut records, now, self.settings);
        }
        for key in Self::keys(user, ip) {
            let r = records.entry(key.clone()).or_default();
            let window_start = now.minus(self.settings.find_time);
            while r.failures.front().is_some_and(|t| *t <= window_start) {
                r.failures.pop_front();
            }
            r.failures.push_back(now);
            if r.failures.len() >= self.settings.max_retries as usize {
                r.banned_until = Some(now.plus(self.settings.ban_time));
                r.failures.clear();
                tracing::warn!(key = %key, "too many failed logins: banned");
            }
        }
    }

    /// A successful login clears the user's failures (not the IP's).
    pub fn succeeded(&self, user: &str) {
        self.records.lock().remove(&format!("user:{user}"));
    }

    fn forget_quiet(records: &mut HashMap<String, Record>, now: Timestamp, s: RegulationSettings) {
        records.retain(|_, r| {
            r.banned_until.is_some_and(|u| u > now)
                || r.failures
                    .back()
                    .is_some_and(|t| *t > now.minus(s.find_time))
        });
        if records.len() >= MAX_KEYS {
            records.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp(1_800_000_000_000);
    const S: Duration = Duration::from_secs(1);

    fn ip(s: &str) -> Option<std::net::IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn three_failures_within_two_minutes_ban_for_five() {
        let r = Regulator::new(RegulationSettings::default());
        r.failed("alice", ip("192.0.2.1"), T0);
        r.failed("alice", ip("192.0.2.1"), T0.plus(30 * S));
        assert_eq!(r.banned("alice", ip("192.0.2.1"), T0.plus(31 * S)), None);
        r.failed("alice", ip("192.0.2.1"), T0.plus(60 * S));
        assert_eq!(r.banned("alice", None, T0.plus(60 * S)), Some(300));
        assert_eq!(
            r.banned("bob", ip("192.0.2.1"), T0.plus(61 * S)),
            Some(299),
            "the IP too"
        );
        assert_eq!(
            r.banned("alice", None, T0.plus(360 * S)),
            None,
            "the ban ends"
        );
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let r = Regulator::new(RegulationSettings::default());
        r.failed("alice", None, T0);
        r.failed("alice", None, T0.plus(60 * S));
        r.failed("alice", None, T0.plus(121 * S));
        assert_eq!(r.banned("alice", None, T0.plus(121 * S)), None);
    }

    #[test]
    fn success_clears_the_users_count() {
        let r = Regulator::new(RegulationSettings::default());
        r.failed("alice", None, T0);
        r.failed("alice", None, T0);
        r.succeeded("alice");
        r.failed("alice", None, T0);
        assert_eq!(r.banned("alice", None, T0), None);
    }
}
