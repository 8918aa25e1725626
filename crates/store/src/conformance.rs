//! The conformance suite: what every [`SessionStore`] backend must do, written once
//! against the trait.
//!
//! A backend's tests call [`run`] with a function that opens a fresh, empty store, and,
//! if the backend is durable, [`run_durable`] with a function that opens the store kept
//! in a given directory. Every case drives time explicitly; nothing sleeps.
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn memory_conforms() {
//!     conformance::run(|| async { Arc::new(LocalStore::memory(OPTIONS)) as Arc<dyn SessionStore> }).await;
//! }
//! ```

// A test suite: a failed unwrap is a failed case, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sessiond_core::policy::{OnLimit, UserLimit};
use sessiond_core::session::NewSession;
use sessiond_core::{EndReason, Policy, Session, SessionId, Timestamp, Verifier};

use crate::{
    AttributeChange, Checked, Created, Ended, Lookup, SessionStore, StoreOptions, Updated,
};

/// The options every case assumes the store was opened with.
pub const OPTIONS: StoreOptions = StoreOptions {
    ended_retention: Duration::from_secs(24 * 3600),
};

const T0: Timestamp = Timestamp(1_800_000_000_000);
const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

/// Runs every case, each on a fresh store from `open`.
pub async fn run<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn SessionStore>>,
{
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {$(
            eprintln!("conformance: {}", stringify!($case));
            $case(open().await).await;
        )*};
    }
    cases!(
        create_then_validate,
        validate_refuses_a_wrong_verifier,
        validate_with_lends_what_validate_answers,
        touch_slides_the_idle_timer_and_touch_false_does_not,
        a_session_is_ended_at_its_idle_deadline_without_a_sweep,
        max_lifetime_caps_an_active_session,
        update_sets_removes_and_bumps_the_version,
        update_refuses_a_stale_version_and_bad_input_without_change,
        logout_ends_once_and_leaves_a_tombstone,
        a_new_session_never_answers_for_an_ended_one,
        admin_end_needs_no_verifier,
        limit_deny_refuses_at_the_limit,
        limit_displace_oldest_ends_the_oldest,
        concurrent_creates_never_exceed_the_limit,
        end_user_ends_every_session_of_that_user_only,
        listing_pages_in_stable_id_order,
        listing_skips_expired_sessions,
        sweep_ends_what_is_due_and_reschedules_touched_sessions,
        tombstones_are_dropped_after_retention,
        stats_count_per_policy_and_reason,
        events_follow_creates_updates_and_ends,
        events_resume_after_the_last_seen_id,
        events_reset_for_an_unknown_id,
    );
}

/// Runs the restart cases: `open(dir)` must open the store kept in `dir`.
pub async fn run_durable<F, Fut>(open: F)
where
    F: Fn(&Path) -> Fut,
    Fut: Future<Output = Arc<dyn SessionStore>>,
{
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {$(
            eprintln!("conformance (durable): {}", stringify!($case));
            let dir = tempfile::tempdir().expect("a temp dir");
            $case(dir.path(), &open).await;
        )*};
    }
    cases!(
        acknowledged_changes_survive_a_restart,
        ended_sessions_never_come_back,
        flushed_touches_survive_a_restart,
        a_reopened_store_knows_what_it_knew,
    );
}

fn policy(idle: Duration, max: Duration) -> Policy {
    Policy {
        idle_timeout: idle,
        max_lifetime: max,
        ..Policy::default()
    }
}

/// A session for `user` created at `now` under 30m idle / 12h max.
pub fn session(user: &str, now: Timestamp) -> Session {
    session_with(user, "default", &policy(30 * MIN, 720 * MIN), now)
}

fn session_with(user: &str, policy_name: &str, p: &Policy, now: Timestamp) -> Session {
    let id = SessionId::for_user(user).expect("random id");
    let mut v = [0u8; 32];
    v[..16].copy_from_slice(SessionId::random().expect("random").as_bytes());
    let new = NewSession {
        user: user.into(),
        universal_id: Some(format!("uid-{user}")),
        attributes: BTreeMap::from([("role".to_string(), "reader".to_string())]),
        client_ip: "127.0.0.1".parse().ok(),
        user_agent: Some("conformance/1".into()),
        ..NewSession::default()
    };
    Session::create(new, id, Verifier(v), policy_name, p, now)
}

/// `s` created as the server creates it: the store may choose part of its id first (the
/// cases that call `create` directly keep a random id, which a store must serve too).
async fn created(store: &dyn SessionStore, mut s: Session, now: Timestamp) -> Session {
    store.issue_slot(&mut s.id);
    match store.create(s, UserLimit::UNLIMITED, now).await {
        Ok(Created::Created { session, .. }) => Session::clone(&session),
        other => panic!("create failed: {other:?}"),
    }
}

fn live(l: Lookup) -> Session {
    match l {
        Lookup::Live(s) => std::sync::Arc::unwrap_or_clone(s),
        other => panic!("expected a live session, got {other:?}"),
    }
}

fn ended(l: Lookup) -> sessiond_core::Tombstone {
    match l {
        Lookup::Ended(t) => t,
        other => panic!("expected an ended session, got {other:?}"),
    }
}

async fn create_then_validate(store: Arc<dyn SessionStore>) {
    let s = created(&*store, session("alice", T0), T0).await;
    let got = live(
        store
            .validate(s.id, &s.verifier, true, T0.plus(SEC))
            .await
            .unwrap(),
    );
    assert_eq!(&*got.user, "alice");
    assert_eq!(got.universal_id.as_deref(), Some("uid-alice"));
    assert_eq!(got.version, 1, "a touch is not a change");
    assert_eq!(got.last_access_at, T0.plus(SEC));
    assert_eq!(live(store.get(s.id, T0.plus(SEC)).await.unwrap()).id, s.id);
    let unknown = SessionId::random().unwrap();
    assert_eq!(
        store
            .validate(unknown, &s.verifier, true, T0)
            .await
            .unwrap(),
        Lookup::NotFound
    );
    assert_eq!(store.get(unknown, T0).await.unwrap(), Lookup::NotFound);
}

/// `validate_with` answers what `validate` answers, lending a live session to its callback
/// exactly once and never calling it otherwise; `validate_ready`, when it answers, answers
/// the same (asked first, as the server does, then `validate_with` at the same instant,
/// which a touch already made leaves as it is).
async fn validate_with_lends_what_validate_answers(store: Arc<dyn SessionStore>) {
    let s = created(&*store, session("alice", T0), T0).await;
    let check = |id, verifier, touch, at| {
        let store = store.clone();
        async move {
            let mut lent_ready = Vec::new();
            let ready = store.validate_ready(id, &verifier, touch, at, &mut |s| {
                lent_ready.push(s.clone())
            });
            let mut lent = Vec::new();
            let checked = store
                .validate_with(id, &verifier, touch, at, &mut |s| lent.push(s.clone()))
                .await
                .unwrap();
            match ready {
                Some(ready) => assert_eq!((ready.unwrap(), &lent_ready), (checked.clone(), &lent)),
                None => assert!(lent_ready.is_empty(), "lent without answering"),
            }
            (checked, lent)
        }
    };
    let (checked, lent) = check(s.id, s.verifier, true, T0.plus(MIN)).await;
    assert_eq!(checked, Checked::Live);
    assert_eq!(lent.len(), 1);
    assert_eq!((lent[0].id, lent[0].last_access_at), (s.id, T0.plus(MIN)));
    assert_eq!(&*lent[0].user, "alice");
    // touch: false reads without sliding the timer.
    let (checked, lent) = check(s.id, s.verifier, false, T0.plus(2 * MIN)).await;
    assert_eq!(checked, Checked::Live);
    assert_eq!(lent[0].last_access_at, T0.plus(MIN));
    let mut wrong = s.verifier;
    wrong.0[0] ^= 1;
    for touch in [true, false] {
        assert_eq!(
            check(s.id, wrong, touch, T0.plus(2 * MIN)).await,
            (Checked::NotFound, vec![])
        );
        assert_eq!(
            check(SessionId::random().unwrap(), s.verifier, touch, T0).await,
            (Checked::NotFound, vec![])
        );
    }
    // Past its idle deadline (30 minutes after the touch), and once logged out.
    let (checked, lent) = check(s.id, s.verifier, true, T0.plus(32 * MIN)).await;
    assert!(matches!(checked, Checked::Ended(t) if t.reason == EndReason::IdleTimeout));
    assert!(lent.is_empty());
    let t = created(&*store, session("bob", T0), T0).await;
    store
        .end(t.id, Some(&t.verifier), EndReason::LoggedOut, T0)
        .await
        .unwrap();
    let (checked, lent) = check(t.id, t.verifier, true, T0.plus(SEC)).await;
    assert!(matches!(checked, Checked::Ended(e) if e.reason == EndReason::LoggedOut));
    assert!(lent.is_empty());
}

async fn validate_refuses_a_wrong_verifier(store: Arc<dyn SessionStore>) {
    let s = created(&*store, session("alice", T0), T0).await;
    let mut wrong = s.verifier;
    wrong.0[31] ^= 1;
    assert_eq!(
        store.validate(s.id, &wrong, true, T0).await.unwrap(),
        Lookup::NotFound
    );
    assert_eq!(
        store.validate(s.id, &wrong, false, T0).await.unwrap(),
        Lookup::NotFound
    );
    // The failed attempt did not touch the session.
    assert_eq!(
        live(store.get(s.id, T0.plus(SEC)).await.unwrap()).last_access_at,
        T0
    );
}

async fn touch_slides_the_idle_timer_and_touch_false_does_not(store: Arc<dyn SessionStore>) {
    let s = created(&*store, session("alice", T0), T0).await;
    let read = live(
        store
            .validate(s.id, &s.verifier, false, T0.plus(10 * MIN))
            .await
            .unwrap(),
    );
    assert_eq!(read.last_access_at, T0);
    let touched = live(
        store
            .validate(s.id, &s.verifier, true, T0.plus(20 * MIN))
            .await
            .unwrap(),
    );
    assert_eq!(touched.idle_expires_at(), T0.plus(50 * MIN));
    // Past the original idle deadline, still live thanks to the touch.
    live(
        store
            .validate(s.id, &s.verifier, false, T0.plus(45 * MIN))
            .await
            .unwrap(),
    );
}

async fn a_session_is_ended_at_its_idle_deadline_without_a_sweep(store: Arc<dyn SessionStore>) {
    let s = created(&*store, session("alice", T0), T0).await;
    let deadline = T0.plus(30 * MIN);
    live(
        store
            .validate(
                s.id,
                &s.verifier,
                false,
                deadline.minus(Duration::from_millis(1)),
            )
            .await
            .unwrap(),
    );
    for touch in [true, false] {
        let t = ended(
            store
                .validate(s.id, &s.verifier, touch, deadline)
                .await
                .unwrap(),
        );
        assert_eq!((t.reason, t.ended_at), (EndReason::IdleTimeout, deadline));
    }
    let t = ended(store.get(s.id, deadline.plus(MIN)).await.unwrap());
    assert_eq!(
        t.ended_at, deadline,
        "ended at the deadline, not when looked at"
    );
    assert!(
        store
            .list(None, None, 10, deadline)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
}

async fn max_lifetime_caps_an_active_session(store: Arc<dyn SessionStore>) {
    let p = policy(10 * MIN, 30 * MIN);
    let s = created(&*store, session_with("bob", "short", &p, T0), T0).await;
    for m in [8u32, 16, 24] {
        live(
            store
                .validate(s.id, &s.verifier, true, T0.plus(m * MIN))
                .await
                .unwrap(),
        );
    }
    let t = ended(
        store
            .validate(s.id, &s.verifier, true, T0.plus(30 * MIN))
            .await
            .unwrap(),
    );
    assert_eq!(
        (t.reason, t.ended_at),
        (EndReason::MaxLifetime, T0.plus(30 * MIN))
    );
}

async fn update_sets_removes_and_bumps_the_version(store: Arc<dyn SessionStore>) {
    let s = created(&*store, session("alice", T0), T0).await;
    let change = AttributeChange {
        set: BTreeMap::from([("cart".into(), "3".into())]),
        remove: vec!["role".into()],
    };
    let Updated::Updated(u) = store
        .update(s.id, &s.verifier, &change, Some(1), T0.plus(MIN))
        .await
        .unwrap()
    else {
        panic!("update refused")
    };
    assert_eq!(u.version, 2);
    assert_eq!(u.attributes, BTreeMap::from([("cart".into(), "3".into())]));
    assert_eq!(u.last_access_at, T0.plus(MIN), "an update is activity");
    let again = live(
        store
            .validate(s.id, &s.verifier, false, T0.plus(MIN))
            .await
            .unwrap(),
    );
    assert_eq!(again, u);
}

async fn update_refuses_a_stale_version_and_bad_input_without_change(store: Arc<dyn SessionStore>) {
    let s = created(&*store, session("alice", T0), T0).await;
    let set = |k: &str, v: &str| AttributeChange {
        set: BTreeMap::from([(k.to_string(), v.to_string())]),
        remove: vec![],
    };
    assert_eq!(
        store
            .update(s.id, &s.verifier, &set("a", "1"), Some(7), T0)
            .await
            .unwrap(),
        Updated::VersionConflict { current: 1 }
    );
    assert!(matches!(
        store
            .update(s.id, &s.verifier, &set("", "1"), None, T0)
            .await
            .unwrap(),
        Updated::Invalid(_)
    ));
    let mut wrong = s.verifier;
    wrong.0[0] ^= 1;
    assert_eq!(
        store
            .update(s.id, &wrong, &set("a", "1"), None, T0)
            .await
            .unwrap(),
        Updated::NotFound
    );
    let unchanged = live(store.get(s.id, T0).await.unwrap());
    assert_eq!(unchanged, s);
    let late = T0.plus(31 * MIN);
    assert!(matches!(
        store.update(s.id, &s.verifier, &set("a", "1"), None, late).await.unwrap(),
        Updated::Ended(t) if t.reason == EndReason::IdleTimeout
    ));
}

async fn logout_ends_once_and_leaves_a_tombstone(store: Arc<dyn SessionStore>) {
    let s = created(&*store, session("alice", T0), T0).await;
    let mut wrong = s.verifier;
    wrong.0[5] ^= 1;
    assert_eq!(
        store
            .end(s.id, Some(&wrong), EndReason::LoggedOut, T0)
            .await
            .unwrap(),
        Ended::NotFound
    );
    let at = T0.plus(MIN);
    let Ended::Ended(t) = store
        .end(s.id, Some(&s.verifier), EndReason::LoggedOut, at)
        .await
        .unwrap()
    else {
        panic!("logout refused")
    };
    assert_eq!(
        (t.reason, t.ended_at, &*t.user),
        (EndReason::LoggedOut, at, "alice")
    );
    assert_eq!(t.last_access_at, T0);
    let seen = ended(
        store
            .validate(s.id, &s.verifier, true, at.plus(SEC))
            .await
            .unwrap(),
    );
    assert_eq!(seen.reason, EndReason::LoggedOut);
    assert_eq!(
        store.validate(s.id, &wrong, true, at).await.unwrap(),
        Lookup::NotFound
    );
    assert!(matches!(
        store.end(s.id, Some(&s.verifier), EndReason::LoggedOut, at.plus(SEC)).await.unwrap(),
        Ended::AlreadyEnded(t) if t.reason == EndReason::LoggedOut
    ));
}

/// A store may reuse where it kept an ended session (the embedded store's slots): the
/// ended session's token must still find its tombstone, never the newcomer.
async fn a_new_session_never_answers_for_an_ended_one(store: Arc<dyn SessionStore>) {
    let old = created(&*store, session("alice", T0), T0).await;
    store
        .end(old.id, Some(&old.verifier), EndReason::LoggedOut, T0)
        .await
        .unwrap();
    let mut new = Vec::new();
    for _ in 0..3 {
        new.push(created(&*store, session("alice", T0), T0).await);
    }
    let at = T0.plus(SEC);
    assert_eq!(
        ended(
            store
                .validate(old.id, &old.verifier, true, at)
                .await
                .unwrap()
        )
        .reason,
        EndReason::LoggedOut
    );
    assert_eq!(ended(store.get(old.id, at).await.unwrap()).id, old.id);
    for s in &new {
        assert_ne!(s.id, old.id);
        assert_eq!(
            store.validate(old.id, &s.verifier, true, at).await.unwrap(),
            Lookup::NotFound,
            "the old id with a newcomer's verifier"
        );
        assert_eq!(
            store.validate(s.id, &old.verifier, true, at).await.unwrap(),
            Lookup::NotFound,
            "a newcomer's id with the old verifier"
        );
        assert_eq!(
            live(store.validate(s.id, &s.verifier, true, at).await.unwrap()).id,
            s.id
        );
    }
    assert!(matches!(
        store.end(old.id, None, EndReason::TerminatedByAdmin, at).await.unwrap(),
        Ended::AlreadyEnded(t) if t.reason == EndReason::LoggedOut
    ));
    assert_eq!(store.stats().await.unwrap().live, 3);
}

async fn admin_end_needs_no_verifier(store: Arc<dyn SessionStore>) {
    let s = created(&*store, session("alice", T0), T0).await;
    assert!(matches!(
        store.end(s.id, None, EndReason::TerminatedByAdmin, T0).await.unwrap(),
        Ended::Ended(t) if t.reason == EndReason::TerminatedByAdmin
    ));
    assert_eq!(
        ended(store.get(s.id, T0).await.unwrap()).reason,
        EndReason::TerminatedByAdmin
    );
    assert_eq!(
        store
            .end(
                SessionId::random().unwrap(),
                None,
                EndReason::TerminatedByAdmin,
                T0
            )
            .await
            .unwrap(),
        Ended::NotFound
    );
}

fn limit(max: u32, on_limit: OnLimit) -> UserLimit {
    UserLimit { max, on_limit }
}

async fn limit_deny_refuses_at_the_limit(store: Arc<dyn SessionStore>) {
    let l = limit(2, OnLimit::Deny);
    let a = session("carol", T0);
    for s in [a.clone(), session("carol", T0)] {
        assert!(matches!(
            store.create(s, l, T0).await.unwrap(),
            Created::Created { .. }
        ));
    }
    let third = session("carol", T0);
    assert_eq!(
        store.create(third.clone(), l, T0).await.unwrap(),
        Created::LimitReached { limit: 2 }
    );
    assert_eq!(
        store.get(third.id, T0).await.unwrap(),
        Lookup::NotFound,
        "nothing was inserted"
    );
    // Other users are not affected, and ending one makes room.
    assert!(matches!(
        store.create(session("dave", T0), l, T0).await.unwrap(),
        Created::Created { .. }
    ));
    store
        .end(a.id, None, EndReason::LoggedOut, T0)
        .await
        .unwrap();
    assert!(matches!(
        store.create(third, l, T0).await.unwrap(),
        Created::Created { .. }
    ));
    // An expired session does not count against the limit.
    let later = T0.plus(31 * MIN);
    assert!(matches!(
        store
            .create(session("carol", later), l, later)
            .await
            .unwrap(),
        Created::Created { .. }
    ));
}

async fn limit_displace_oldest_ends_the_oldest(store: Arc<dyn SessionStore>) {
    let l = limit(2, OnLimit::DisplaceOldest);
    let oldest = session("erin", T0);
    let middle = session("erin", T0.plus(SEC));
    store.create(oldest.clone(), l, T0).await.unwrap();
    store.create(middle.clone(), l, T0.plus(SEC)).await.unwrap();
    let newest = session("erin", T0.plus(2 * SEC));
    let Created::Created { displaced, .. } = store
        .create(newest.clone(), l, T0.plus(2 * SEC))
        .await
        .unwrap()
    else {
        panic!("displace must not deny")
    };
    assert_eq!(displaced, vec![oldest.id]);
    let t = ended(store.get(oldest.id, T0.plus(3 * SEC)).await.unwrap());
    assert_eq!(t.reason, EndReason::Displaced);
    live(store.get(middle.id, T0.plus(3 * SEC)).await.unwrap());
    live(store.get(newest.id, T0.plus(3 * SEC)).await.unwrap());
}

async fn concurrent_creates_never_exceed_the_limit(store: Arc<dyn SessionStore>) {
    for (on_limit, user) in [(OnLimit::Deny, "frank"), (OnLimit::DisplaceOldest, "grace")] {
        let l = limit(3, on_limit);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let store = store.clone();
                let s = session(user, T0);
                tokio::spawn(async move { store.create(s, l, T0).await })
            })
            .collect();
        let mut made = 0;
        for t in tasks {
            if let Created::Created { .. } = t.await.expect("task").expect("create") {
                made += 1;
            }
        }
        let page = store.list(Some(user), None, 100, T0).await.unwrap();
        assert_eq!(
            page.sessions.len(),
            3,
            "{on_limit:?}: live sessions after 50 parallel creates"
        );
        let expected = if on_limit == OnLimit::Deny { 3 } else { 50 };
        assert_eq!(made, expected, "{on_limit:?}: creates that succeeded");
    }
}

async fn end_user_ends_every_session_of_that_user_only(store: Arc<dyn SessionStore>) {
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(created(&*store, session("heidi", T0), T0).await);
    }
    let other = created(&*store, session("ivan", T0), T0).await;
    assert_eq!(
        store
            .end_user("heidi", EndReason::TerminatedByAdmin, T0)
            .await
            .unwrap(),
        3
    );
    for s in &mine {
        assert_eq!(
            ended(store.get(s.id, T0).await.unwrap()).reason,
            EndReason::TerminatedByAdmin
        );
    }
    live(store.get(other.id, T0).await.unwrap());
    assert_eq!(
        store
            .end_user("heidi", EndReason::TerminatedByAdmin, T0)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .end_user("nobody", EndReason::UserDisabled, T0)
            .await
            .unwrap(),
        0
    );
}

async fn listing_pages_in_stable_id_order(store: Arc<dyn SessionStore>) {
    let mut ids = Vec::new();
    for i in 0..25 {
        let user = if i % 5 == 0 { "judy" } else { "kim" };
        ids.push(created(&*store, session(user, T0), T0).await.id);
    }
    ids.sort();
    // A user's ids share their first bytes, so kim's 20 sit together: pages of 3 and 10
    // end both inside and between groups.
    for size in [10, 3] {
        let mut seen = Vec::new();
        let mut cursor = None;
        for _ in 0..20 {
            let page = store.list(None, cursor, size, T0).await.unwrap();
            assert!(page.sessions.len() <= size);
            seen.extend(page.sessions.iter().map(|s| s.id));
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(
            seen, ids,
            "every session once, in id order (pages of {size})"
        );
    }
    let judy = store.list(Some("judy"), None, 2, T0).await.unwrap();
    assert_eq!(judy.sessions.len(), 2);
    assert!(judy.sessions.iter().all(|s| &*s.user == "judy"));
    let rest = store
        .list(Some("judy"), judy.next_cursor, 10, T0)
        .await
        .unwrap();
    assert_eq!(rest.sessions.len(), 3);
    assert_eq!(rest.next_cursor, None);
    assert!(
        store
            .list(Some("nobody"), None, 10, T0)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
}

async fn listing_skips_expired_sessions(store: Arc<dyn SessionStore>) {
    let short = policy(MIN, 720 * MIN);
    created(&*store, session_with("leo", "short", &short, T0), T0).await;
    let long = created(&*store, session("leo", T0), T0).await;
    let later = T0.plus(2 * MIN);
    let page = store.list(Some("leo"), None, 10, later).await.unwrap();
    assert_eq!(
        page.sessions.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![long.id]
    );
    assert_eq!(
        store
            .list(None, None, 10, later)
            .await
            .unwrap()
            .sessions
            .len(),
        1
    );
}

async fn sweep_ends_what_is_due_and_reschedules_touched_sessions(store: Arc<dyn SessionStore>) {
    let idle = created(&*store, session("mia", T0), T0).await;
    let active = created(&*store, session("mia", T0), T0).await;
    let fresh = created(
        &*store,
        session("mia", T0.plus(20 * MIN)),
        T0.plus(20 * MIN),
    )
    .await;
    live(
        store
            .validate(active.id, &active.verifier, true, T0.plus(25 * MIN))
            .await
            .unwrap(),
    );
    let report = store.sweep(T0.plus(31 * MIN)).await.unwrap();
    assert_eq!(report.expired, 1);
    assert!(
        report.rescheduled <= 1,
        "only the touched session is looked at again"
    );
    let t = ended(store.get(idle.id, T0.plus(31 * MIN)).await.unwrap());
    assert_eq!(
        (t.reason, t.ended_at),
        (EndReason::IdleTimeout, T0.plus(30 * MIN))
    );
    live(store.get(active.id, T0.plus(31 * MIN)).await.unwrap());
    live(store.get(fresh.id, T0.plus(31 * MIN)).await.unwrap());
    assert_eq!(store.stats().await.unwrap().live, 2);
    let again = store.sweep(T0.plus(31 * MIN)).await.unwrap();
    assert_eq!(again.expired, 0, "nothing is due twice");
    // The touched session was scheduled again at its new deadline (25m + 30m): a sweep
    // then ends it, and the untouched `fresh` one (20m + 30m) before it.
    let report = store.sweep(T0.plus(56 * MIN)).await.unwrap();
    assert_eq!(
        report.expired, 2,
        "the rescheduled session is swept at its new deadline"
    );
    let t = ended(store.get(active.id, T0.plus(56 * MIN)).await.unwrap());
    assert_eq!(
        (t.reason, t.ended_at),
        (EndReason::IdleTimeout, T0.plus(55 * MIN))
    );
    assert_eq!(store.stats().await.unwrap().live, 0);
}

async fn tombstones_are_dropped_after_retention(store: Arc<dyn SessionStore>) {
    let s = created(&*store, session("nina", T0), T0).await;
    store
        .end(s.id, Some(&s.verifier), EndReason::LoggedOut, T0)
        .await
        .unwrap();
    let retained = T0.plus(OPTIONS.ended_retention).minus(SEC);
    ended(
        store
            .validate(s.id, &s.verifier, true, retained)
            .await
            .unwrap(),
    );
    let gone = T0.plus(OPTIONS.ended_retention);
    assert_eq!(
        store.validate(s.id, &s.verifier, true, gone).await.unwrap(),
        Lookup::NotFound
    );
    assert_eq!(store.sweep(gone).await.unwrap().purged, 1);
    assert_eq!(store.get(s.id, gone).await.unwrap(), Lookup::NotFound);
    assert!(store.stats().await.unwrap().ended_by_reason.is_empty());
}

async fn stats_count_per_policy_and_reason(store: Arc<dyn SessionStore>) {
    let p = policy(5 * MIN, 60 * MIN);
    let a = created(&*store, session("olga", T0), T0).await;
    created(&*store, session("olga", T0), T0).await;
    created(&*store, session_with("pat", "admin-console", &p, T0), T0).await;
    store
        .end(a.id, None, EndReason::TerminatedByAdmin, T0)
        .await
        .unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.live, 2);
    assert_eq!(stats.users, 2);
    assert_eq!(
        stats.per_policy,
        BTreeMap::from([("admin-console".to_string(), 1), ("default".to_string(), 1)])
    );
    assert_eq!(
        stats.ended_by_reason,
        BTreeMap::from([(EndReason::TerminatedByAdmin, 1)])
    );
    store.sweep(T0.plus(6 * MIN)).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.live, 1);
    assert_eq!(stats.ended_by_reason.get(&EndReason::IdleTimeout), Some(&1));
}

async fn acknowledged_changes_survive_a_restart<F, Fut>(dir: &Path, open: &F)
where
    F: Fn(&Path) -> Fut,
    Fut: Future<Output = Arc<dyn SessionStore>>,
{
    let store = open(dir).await;
    let kept = created(&*store, session("quinn", T0), T0).await;
    let change = AttributeChange {
        set: BTreeMap::from([("step".into(), "2".into())]),
        remove: vec![],
    };
    let Updated::Updated(updated) = store
        .update(kept.id, &kept.verifier, &change, None, T0.plus(SEC))
        .await
        .unwrap()
    else {
        panic!("update refused")
    };
    store.close().await.unwrap();
    assert!(
        store.get(kept.id, T0).await.is_err(),
        "a closed store refuses to serve"
    );
    drop(store);
    let store = open(dir).await;
    assert_eq!(
        live(store.get(kept.id, T0.plus(2 * SEC)).await.unwrap()),
        updated
    );
    live(
        store
            .validate(kept.id, &kept.verifier, true, T0.plus(2 * SEC))
            .await
            .unwrap(),
    );
    assert_eq!(store.stats().await.unwrap().live, 1);
    store.close().await.unwrap();
}

/// Everything a store derives from its records (listings, per-user lists, counters, the
/// deadline schedule) is the same after a reopen; sessions spread over the whole id space,
/// so a loader that splits the work by id range sees every range.
async fn a_reopened_store_knows_what_it_knew<F, Fut>(dir: &Path, open: &F)
where
    F: Fn(&Path) -> Fut,
    Fut: Future<Output = Arc<dyn SessionStore>>,
{
    let store = open(dir).await;
    let short = policy(30 * MIN, 10 * MIN);
    for i in 0..60 {
        let user = format!("user{}", i % 25);
        let s = if i % 3 == 0 {
            session_with(&user, "short", &short, T0)
        } else {
            session(&user, T0)
        };
        created(&*store, s, T0).await;
    }
    let everything = |store: Arc<dyn SessionStore>| async move {
        let all = store.list(None, None, 1000, T0).await.unwrap();
        let mine = store.list(Some("user7"), None, 1000, T0).await.unwrap();
        let mut stats = store.stats().await.unwrap();
        stats.nodes = 0;
        (all, mine, stats)
    };
    let before = everything(store.clone()).await;
    assert_eq!(before.0.sessions.len(), 60);
    assert_eq!(before.1.sessions.len(), 3);
    store.close().await.unwrap();
    drop(store);
    let store = open(dir).await;
    assert_eq!(everything(store.clone()).await, before);
    // The short policy's 20 end at its 10-minute lifetime, the others at their idle timeout.
    assert_eq!(store.sweep(T0.plus(10 * MIN)).await.unwrap().expired, 20);
    assert_eq!(store.sweep(T0.plus(29 * MIN)).await.unwrap().expired, 0);
    assert_eq!(store.sweep(T0.plus(30 * MIN)).await.unwrap().expired, 40);
    assert_eq!(store.stats().await.unwrap().live, 0);
    store.close().await.unwrap();
}

async fn ended_sessions_never_come_back<F, Fut>(dir: &Path, open: &F)
where
    F: Fn(&Path) -> Fut,
    Fut: Future<Output = Arc<dyn SessionStore>>,
{
    let store = open(dir).await;
    let out = created(&*store, session("rob", T0), T0).await;
    let admin = created(&*store, session("rob", T0), T0).await;
    let idle = created(&*store, session("sam", T0), T0).await;
    store
        .end(out.id, Some(&out.verifier), EndReason::LoggedOut, T0)
        .await
        .unwrap();
    store
        .end(admin.id, None, EndReason::TerminatedByAdmin, T0)
        .await
        .unwrap();
    // A touch, made durable, then the logout: the touch must not bring it back.
    live(
        store
            .validate(idle.id, &idle.verifier, true, T0.plus(SEC))
            .await
            .unwrap(),
    );
    store.flush_touches().await.unwrap();
    store
        .end(
            idle.id,
            Some(&idle.verifier),
            EndReason::LoggedOut,
            T0.plus(2 * SEC),
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = open(dir).await;
    for (s, reason) in [
        (&out, EndReason::LoggedOut),
        (&admin, EndReason::TerminatedByAdmin),
        (&idle, EndReason::LoggedOut),
    ] {
        let t = ended(
            store
                .validate(s.id, &s.verifier, true, T0.plus(3 * SEC))
                .await
                .unwrap(),
        );
        assert_eq!(t.reason, reason);
    }
    assert_eq!(store.stats().await.unwrap().live, 0);
    // New sessions may be kept where the ended ones were; the ended stay ended.
    let fresh = [
        created(&*store, session("rob", T0), T0.plus(3 * SEC)).await,
        created(&*store, session("sam", T0), T0.plus(3 * SEC)).await,
    ];
    for s in [&out, &admin, &idle] {
        ended(store.get(s.id, T0.plus(4 * SEC)).await.unwrap());
    }
    for s in &fresh {
        live(
            store
                .validate(s.id, &s.verifier, true, T0.plus(4 * SEC))
                .await
                .unwrap(),
        );
    }
    assert_eq!(store.stats().await.unwrap().live, 2);
    store.close().await.unwrap();
}

async fn flushed_touches_survive_a_restart<F, Fut>(dir: &Path, open: &F)
where
    F: Fn(&Path) -> Fut,
    Fut: Future<Output = Arc<dyn SessionStore>>,
{
    let store = open(dir).await;
    let s = created(&*store, session("tess", T0), T0).await;
    live(
        store
            .validate(s.id, &s.verifier, true, T0.plus(20 * MIN))
            .await
            .unwrap(),
    );
    assert_eq!(store.flush_touches().await.unwrap(), 1);
    assert_eq!(
        store.flush_touches().await.unwrap(),
        0,
        "each touch is flushed once"
    );
    // Many sessions across the id space, every other one touched (each at its own time),
    // and one touched and then ended: a load must pair each touch with its own session.
    let mut others = Vec::new();
    for n in 0..40u32 {
        let o = created(&*store, session(&format!("tess{n}"), T0), T0).await;
        let at = (n % 2 == 0).then(|| T0.plus(MIN + n * SEC));
        if let Some(at) = at {
            live(store.validate(o.id, &o.verifier, true, at).await.unwrap());
        }
        others.push((o, at));
    }
    assert_eq!(store.flush_touches().await.unwrap(), 20);
    let (gone, _) = others.remove(0);
    store
        .end(
            gone.id,
            Some(&gone.verifier),
            EndReason::LoggedOut,
            T0.plus(2 * MIN),
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = open(dir).await;
    let back = live(store.get(s.id, T0.plus(45 * MIN)).await.unwrap());
    assert_eq!(back.last_access_at, T0.plus(20 * MIN));
    assert_eq!(back.version, 1);
    for (o, at) in &others {
        let back = live(store.get(o.id, T0.plus(3 * MIN)).await.unwrap());
        assert_eq!(back.last_access_at, at.unwrap_or(T0), "{}", o.user);
    }
    ended(store.get(gone.id, T0.plus(3 * MIN)).await.unwrap());
    assert_eq!(store.stats().await.unwrap().live, 40);
    store.close().await.unwrap();
}

async fn next_event(feed: &mut crate::Feed) -> crate::FeedItem {
    tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .expect("an event within 5 s")
        .expect("the feed stays open")
}

async fn next_change(feed: &mut crate::Feed) -> crate::ChangeEvent {
    match next_event(feed).await {
        crate::FeedItem::Change(e) => e,
        crate::FeedItem::Reset => panic!("unexpected reset"),
    }
}

async fn events_follow_creates_updates_and_ends(store: Arc<dyn SessionStore>) {
    let mut feed = store.events(None).await.unwrap();
    let s = created(&*store, session("uma", T0), T0).await;
    let change = AttributeChange {
        set: BTreeMap::from([("k".into(), "v".into())]),
        remove: vec![],
    };
    store
        .update(s.id, &s.verifier, &change, None, T0.plus(SEC))
        .await
        .unwrap();
    store
        .end(
            s.id,
            Some(&s.verifier),
            EndReason::LoggedOut,
            T0.plus(2 * SEC),
        )
        .await
        .unwrap();
    let c = next_change(&mut feed).await;
    assert_eq!(
        (c.kind, c.session, c.version, &*c.user),
        (crate::ChangeKind::Created, s.id, 1, "uma")
    );
    let u = next_change(&mut feed).await;
    assert_eq!((u.kind, u.version), (crate::ChangeKind::Updated, 2));
    let e = next_change(&mut feed).await;
    assert_eq!(
        (e.kind, e.reason, e.at),
        (
            crate::ChangeKind::Ended,
            Some(EndReason::LoggedOut),
            T0.plus(2 * SEC)
        )
    );
    assert!(e.version > u.version);
}

async fn events_resume_after_the_last_seen_id(store: Arc<dyn SessionStore>) {
    let mut feed = store.events(None).await.unwrap();
    let a = created(&*store, session("vic", T0), T0).await;
    let seen = next_change(&mut feed).await;
    assert_eq!(seen.session, a.id);
    let b = created(&*store, session("vic", T0), T0).await;
    store
        .end(a.id, None, EndReason::TerminatedByAdmin, T0)
        .await
        .unwrap();
    let mut resumed = store.events(Some(&seen.event_id)).await.unwrap();
    let first = next_change(&mut resumed).await;
    assert_eq!(
        (first.kind, first.session),
        (crate::ChangeKind::Created, b.id)
    );
    let second = next_change(&mut resumed).await;
    assert_eq!(
        (second.kind, second.session),
        (crate::ChangeKind::Ended, a.id)
    );
    let c = created(&*store, session("vic", T0), T0).await;
    let live = next_change(&mut resumed).await;
    assert_eq!(live.session, c.id, "then live, with nothing twice");
}

async fn events_reset_for_an_unknown_id(store: Arc<dyn SessionStore>) {
    created(&*store, session("walt", T0), T0).await;
    let mut feed = store.events(Some("not-an-event-id")).await.unwrap();
    assert_eq!(next_event(&mut feed).await, crate::FeedItem::Reset);
    let s = created(&*store, session("walt", T0), T0).await;
    assert_eq!(
        next_change(&mut feed).await.session,
        s.id,
        "live after the reset"
    );
}
