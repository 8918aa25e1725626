//! The key layout of the Redis store: which key holds what, and which hash slot it lands in.
//!
//! Every key starts with the configured prefix `P` (default `sessiond:`). Keys of one user
//! share the hash tag `{T}`, where `T` is the user's 8-hex-digit tag
//! ([`sessiond_core::id::user_tag_hex`]), which every session id of that user starts with.
//! So a token's session id alone names its keys, and a script touching one user's keys
//! touches one Redis Cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{T}:s:<id>` | hash | a live session (see `codec.rs`) |
//! | `P{T}:t:<id>` | hash | a tombstone |
//! | `P{T}:u:<user>` | zset, all scores 0 | the user's session ids, in id order |
//!
//! The cross-user keys share the hash tag `{global}`, so one script updates them together:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{global}:ids` | zset, all scores 0 | every session id, for paging in id order |
//! | `P{global}:due` | zset | session id → deadline as last scheduled (ms), for the sweep |
//! | `P{global}:purge` | zset | `<id>:<reason>` → tombstone purge time (ms) |
//! | `P{global}:stats` | hash | `live`, `users`, `pol:<policy>`, `r:<reason>` counters |
//! | `P{global}:events` | stream, capped near 100 000 entries | change events (see `events.rs`) |
//! | `P{global}:nodes` | set | ids of nodes that sent a heartbeat |
//! | `P{global}:node:<node>` | string with a TTL | one node's heartbeat |
//!
//! Invalidations go out on the pub/sub channel `Pinvalidate` (the prefix, then `invalidate`),
//! one message per session id.

use sessiond_core::SessionId;
use sessiond_core::id::{tag_hex, user_tag};

use crate::StoreError;

/// Builds key names under one prefix.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    prefix: String,
}

/// The global keys, in the order scripts take them (`KEYS[n..n+4]`).
pub(super) const GLOBAL_KEY_COUNT: usize = 5;

impl Keys {
    /// Refuses a prefix with braces: it would change which part of a key is the hash tag.
    pub(super) fn new(prefix: &str) -> Result<Keys, StoreError> {
        if prefix.contains(['{', '}']) {
            return Err(StoreError::Unavailable(format!(
                "store.redis.key_prefix `{prefix}` must not contain `{{` or `}}`: they would change the hash tag"
            )));
        }
        Ok(Keys {
            prefix: prefix.to_owned(),
        })
    }

    /// `P{T}:`, the start of every key of the users with tag `tag` (written in hex).
    pub(super) fn base(&self, tag: [u8; 4]) -> String {
        format!("{}{{{}}}:", self.prefix, tag_hex(tag))
    }

    /// The base of the keys of the session `id`.
    pub(super) fn base_of(&self, id: &SessionId) -> String {
        self.base(id.tag())
    }

    pub(super) fn session(&self, id: &SessionId) -> String {
        format!("{}s:{id}", self.base_of(id))
    }

    pub(super) fn tombstone(&self, id: &SessionId) -> String {
        format!("{}t:{id}", self.base_of(id))
    }

    pub(super) fn user(&self, user: &str) -> String {
        format!("{}u:{user}", self.base(user_tag(user)))
    }

    fn global(&self, name: &str) -> String {
        format!("{}{{global}}:{name}", self.prefix)
    }

    /// `ids`, `due`, `purge`, `stats`, `events`: the order the scripts expect.
    pub(super) fn globals(&self) -> [String; GLOBAL_KEY_COUNT] {
        [
            self.global("ids"),
            self.global("due"),
            self.global("purge"),
            self.global("stats"),
            self.events(),
        ]
    }

    pub(super) fn ids(&self) -> String {
        self.global("ids")
    }

    pub(super) fn due(&self) -> String {
        self.global("due")
    }

    pub(super) fn purge(&self) -> String {
        self.global("purge")
    }

    pub(super) fn stats(&self) -> String {
        self.global("stats")
    }

    /// The stream of change events.
    pub(super) fn events(&self) -> String {
        self.global("events")
    }

    pub(super) fn nodes(&self) -> String {
        self.global("nodes")
    }

    /// The prefix of a node's heartbeat key (the node id follows).
    pub(super) fn node_prefix(&self) -> String {
        self.global("node:")
    }

    /// The pub/sub channel that carries ids of changed or ended sessions.
    pub(super) fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_keys_share_the_tag_of_its_session_ids() {
        let keys = Keys::new("sd:").unwrap();
        let id = SessionId::for_user("alice").unwrap();
        let tag = sessiond_core::id::user_tag_hex("alice");
        assert_eq!(keys.session(&id), format!("sd:{{{tag}}}:s:{id}"));
        assert_eq!(keys.tombstone(&id), format!("sd:{{{tag}}}:t:{id}"));
        assert_eq!(keys.user("alice"), format!("sd:{{{tag}}}:u:alice"));
        assert!(keys.globals().iter().all(|k| k.starts_with("sd:{global}:")));
    }

    #[test]
    fn braces_in_the_prefix_are_refused() {
        assert!(Keys::new("a{b}:").is_err());
        assert!(Keys::new("sessiond:").is_ok());
    }
}
