//! One shared copy of each distinct user agent and policy name among the sessions a store
//! holds in memory: the embedded store's records, the Redis store's near cache.
//!
//! A fleet of browsers sends a few hundred distinct user agents, each 100-150 bytes, so
//! sharing them is most of what a session record would otherwise spend on strings. The
//! strings come from clients, so the set must not grow without bound: [`Interner::purge`]
//! drops every string no session holds any more, and runs (from the sweep) only once the
//! set has doubled since the last purge, so its cost is amortised over the inserts.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use sessiond_core::Session;

/// Below this many strings a purge is not worth a pass.
pub(crate) const MIN_PURGE: usize = 1024;

#[derive(Default)]
pub(crate) struct Interner {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    set: HashSet<Arc<str>>,
    /// Purge once the set holds this many.
    purge_at: usize,
}

impl Inner {
    /// The shared copy of `s`; when there is none, `make()` becomes it.
    fn get_or_insert(&mut self, s: &str, make: impl FnOnce() -> Arc<str>) -> Arc<str> {
        if let Some(shared) = self.set.get(s) {
            return shared.clone();
        }
        let new = make();
        self.set.insert(new.clone());
        new
    }
}

impl Interner {
    /// Makes `session`'s user agent and policy name the shared copies (its own become
    /// them when there were none).
    pub(crate) fn share(&self, session: &mut Session) {
        let mut inner = self.inner.lock();
        if let Some(ua) = &mut session.user_agent {
            *ua = inner.get_or_insert(ua, || ua.clone());
        }
        let policy = &mut session.policy;
        *policy = inner.get_or_insert(policy, || policy.clone());
    }

    /// The shared copy of `s`, made from it if there was none (a load, which reads
    /// strings in place, allocates only for strings it has not seen).
    pub(crate) fn shared(&self, s: &str) -> Arc<str> {
        self.inner.lock().get_or_insert(s, || Arc::from(s))
    }

    /// Adds every string of `other` this one lacks (after a parallel load).
    pub(crate) fn absorb(&self, other: Interner) {
        let other = other.inner.into_inner().set;
        let mut inner = self.inner.lock();
        inner.set.extend(other);
    }

    /// Drops the strings only this set still holds, if the set has doubled since the last
    /// purge; returns how many were dropped.
    pub(crate) fn purge(&self) -> usize {
        let mut inner = self.inner.lock();
        if inner.set.len() < inner.purge_at.max(MIN_PURGE) {
            return 0;
        }
        let before = inner.set.len();
        inner.set.retain(|s| Arc::strong_count(s) > 1);
        inner.purge_at = inner.set.len() * 2;
        before - inner.set.len()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let i = Interner::default();
        let a = i.shared("Mozilla/5.0");
        let b = i.shared(&String::from("Mozilla/5.0"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn sessions_share_their_user_agent_and_policy() {
        use sessiond_core::session::NewSession;
        use sessiond_core::{Policy, SessionId, Timestamp, Verifier};

        let session = |ua: Option<&str>| {
            let new = NewSession {
                user: "alice".into(),
                user_agent: ua.map(str::to_owned),
                ..NewSession::default()
            };
            let id = SessionId::for_user("alice").unwrap();
            Session::create(
                new,
                id,
                Verifier([0; 32]),
                "default",
                &Policy::default(),
                Timestamp(0),
            )
        };
        let i = Interner::default();
        let (mut a, mut b, mut none) =
            (session(Some("UA/1")), session(Some("UA/1")), session(None));
        for s in [&mut a, &mut b, &mut none] {
            i.share(s);
        }
        let (ua_a, ua_b) = (a.user_agent.unwrap(), b.user_agent.unwrap());
        assert!(Arc::ptr_eq(&ua_a, &ua_b));
        assert_eq!(&*ua_a, "UA/1");
        assert!(Arc::ptr_eq(&a.policy, &none.policy));
        assert_eq!(&*none.policy, "default");
        assert_eq!(none.user_agent, None);
        assert_eq!(i.len(), 2);
    }

    #[test]
    fn a_purge_drops_only_unheld_strings_and_only_after_doubling() {
        let i = Interner::default();
        let kept: Vec<Arc<str>> = (0..10).map(|n| i.shared(&format!("kept {n}"))).collect();
        for n in 0..MIN_PURGE {
            drop(i.shared(&format!("gone {n}")));
        }
        assert_eq!(i.purge(), MIN_PURGE);
        assert_eq!(i.len(), kept.len());
        // The next purge waits for the set to double (but at least MIN_PURGE strings).
        drop(i.shared("gone again"));
        assert_eq!(i.purge(), 0);
        assert!(Arc::ptr_eq(&kept[3], &i.shared("kept 3")));
    }
}
