//! Restart and crash: what was acknowledged survives, and ended sessions stay ended.

use sessiond_client::{Client, v1};

use crate::common::{Server, code, data_dir};

fn req(user: &str) -> v1::CreateSessionRequest {
    v1::CreateSessionRequest {
        user: user.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn sigterm_exits_zero_and_a_restart_loads_everything_back() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, None);
    let agent = server.agent();
    let kept = agent.create_session(&req("ivan")).await.unwrap();
    let ended = agent.create_session(&req("ivan")).await.unwrap();
    agent.logout(&ended.token).await.unwrap();
    let status = server.terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");

    let server = Server::start(&dir, None);
    let agent = server.agent();
    assert_eq!(
        agent.validate(&kept.token, true).await.unwrap().id,
        kept.session.id
    );
    let err = agent.validate(&ended.token, true).await.unwrap_err();
    assert_eq!(code(&err), "session_ended");
}

/// A restart serves while its sessions load; a data file whose records cannot be read back
/// stops the server with an error instead of serving part of what it held.
#[tokio::test]
async fn a_data_file_that_cannot_be_loaded_stops_the_server() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, None);
    server.agent().create_session(&req("judy")).await.unwrap();
    assert!(server.terminate().success());
    sessiond_store::testkit::write_unreadable_record(&dir.join("store"));
    // It listens at once (the load runs in the background), then stops when the load fails.
    let server = Server::start(&dir, None);
    let status = server.exited();
    assert!(
        !status.success(),
        "a failed load exits non-zero: {status:?}"
    );
}

/// Creates, logs out and terminates many sessions concurrently, sends `kill -9` the moment
/// the last one is acknowledged, restarts, and checks every acknowledged change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_acknowledged_writes_loses_nothing() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, None);
    let agent = server.agent();
    let admin = server.admin();

    let creates: Vec<_> = (0..200)
        .map(|i| {
            let agent = agent.clone();
            tokio::spawn(
                async move { agent.create_session(&req(&format!("user{}", i % 20))).await },
            )
        })
        .collect();
    let mut sessions = Vec::new();
    for t in creates {
        sessions.push(t.await.unwrap().expect("create acknowledged"));
    }
    // A third logged out, a third terminated by the admin, concurrently; the rest stay.
    let ends: Vec<_> = sessions
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 2)
        .map(|(i, s)| {
            let (agent, admin, s) = (agent.clone(), admin.clone(), s.clone());
            tokio::spawn(async move {
                if i % 3 == 0 {
                    agent.logout(&s.token).await
                } else {
                    admin.terminate(&s.session.id).await
                }
            })
        })
        .collect();
    for t in ends {
        t.await.unwrap().expect("end acknowledged");
    }
    server.kill9();

    let server = Server::start(&dir, None);
    let agent: Client = server.agent();
    for (i, s) in sessions.iter().enumerate() {
        let got = agent.validate(&s.token, false).await;
        match i % 3 {
            2 => assert_eq!(got.expect("acknowledged create survives").id, s.session.id),
            r => {
                let err = got.expect_err("an ended session never comes back");
                let sessiond_client::Error::Api { detail, .. } = &err else {
                    panic!("{err}")
                };
                let want = if r == 0 {
                    "logged_out"
                } else {
                    "terminated_by_admin"
                };
                assert_eq!(detail.reason.map(|r| r.as_str()), Some(want), "session {i}");
            }
        }
    }
    let stats = server.admin().stats().await.unwrap();
    assert_eq!(
        stats.active_sessions,
        sessions
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 2)
            .count() as u64
    );
}
