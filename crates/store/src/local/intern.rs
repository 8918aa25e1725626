//! One shared copy of each distinct user agent and policy name among the live sessions.
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
pub(super) const MIN_PURGE: usize = 1024;

#[derive(Default)]
pub(super) struct Interner {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    set: HashSet<Arc<str>>,
    /// Purge once the set holds this many.
    purge_at: usize,
}

impl Inner {
    /// Points `slot` at the shared copy of its string, which it becomes if there was none.
    fn share(&mut self, slot: &mut Arc<str>) {
        match self.set.get(&**slot) {
            Some(shared) => *slot = shared.clone(),
            None => {
                self.set.insert(slot.clone());
            }
        }
    }
}

impl Interner {
    /// The shared copy of `s` (which becomes the shared copy if there was none).
    #[cfg(test)]
    fn intern(&self, mut s: Arc<str>) -> Arc<str> {
        self.inner.lock().share(&mut s);
        s
    }

    /// Makes `session`'s user agent and policy name the shared copies.
    pub(super) fn share(&self, session: &mut Session) {
        let mut inner = self.inner.lock();
        if let Some(ua) = &mut session.user_agent {
            inner.share(ua);
        }
        inner.share(&mut session.policy);
    }

    /// The shared copy of `s`, made from it if there was none (a load, which reads
    /// strings in place, allocates only for strings it has not seen).
    pub(super) fn shared(&self, s: &str) -> Arc<str> {
        let mut inner = self.inner.lock();
        match inner.set.get(s) {
            Some(shared) => shared.clone(),
            None => {
                let new: Arc<str> = Arc::from(s);
                inner.set.insert(new.clone());
                new
            }
        }
    }

    /// Adds every string of `other` this one lacks (after a parallel load).
    pub(super) fn absorb(&self, other: Interner) {
        let other = other.inner.into_inner().set;
        let mut inner = self.inner.lock();
        inner.set.extend(other);
    }

    /// Drops the strings only this set still holds, if the set has doubled since the last
    /// purge; returns how many were dropped.
    pub(super) fn purge(&self) -> usize {
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
    pub(super) fn len(&self) -> usize {
        self.inner.lock().set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let i = Interner::default();
        let a = i.intern(Arc::from("Mozilla/5.0"));
        let b = i.intern(Arc::from(String::from("Mozilla/5.0")));
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
        let kept: Vec<Arc<str>> = (0..10)
            .map(|n| i.intern(Arc::from(format!("kept {n}"))))
            .collect();
        for n in 0..MIN_PURGE {
            drop(i.intern(Arc::from(format!("gone {n}"))));
        }
        assert_eq!(i.purge(), MIN_PURGE);
        assert_eq!(i.len(), kept.len());
        // The next purge waits for the set to double (but at least MIN_PURGE strings).
        drop(i.intern(Arc::from("gone again")));
        assert_eq!(i.purge(), 0);
        assert!(Arc::ptr_eq(&kept[3], &i.intern(Arc::from("kept 3"))));
    }
}
