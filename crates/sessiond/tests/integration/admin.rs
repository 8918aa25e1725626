//! The admin API and CLI: list with paging, show, terminate, terminate a user, explain, stats.

use std::collections::HashSet;

use sessiond_client::v1;

use crate::common::{Server, code, data_dir};

fn req(user: &str) -> v1::CreateSessionRequest {
    v1::CreateSessionRequest {
        user: user.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn list_pages_terminate_user_and_explain() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, None);
    let agent = server.agent();
    let admin = server.admin();
    let mut ids = HashSet::new();
    for i in 0..23 {
        let user = if i < 5 { "frank" } else { "grace" };
        ids.insert(agent.create_session(&req(user)).await.unwrap().session.id);
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let page = admin
            .list_sessions(None, Some(10), cursor.as_deref())
            .await
            .unwrap();
        assert!(page.sessions.len() <= 10);
        seen.extend(page.sessions.into_iter().map(|s| s.id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 23, "every session exactly once");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), ids);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "stable id order");

    let frank = admin
        .list_sessions(Some("frank"), None, None)
        .await
        .unwrap();
    assert_eq!(frank.sessions.len(), 5);
    assert!(frank.sessions.iter().all(|s| s.user == "frank"));

    let one = frank.sessions[0].id.clone();
    assert_eq!(admin.get_session(&one).await.unwrap().user, "frank");
    assert_eq!(admin.terminate_user("frank").await.unwrap(), 5);
    assert_eq!(admin.terminate_user("frank").await.unwrap(), 0);
    assert!(
        admin
            .list_sessions(Some("frank"), None, None)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );

    let why = admin.explain(&one).await.unwrap();
    assert_eq!(why.state, v1::SessionState::Ended);
    assert_eq!(
        why.end_reason,
        sessiond_client::EndReason::TerminatedByAdmin
    );
    assert!(why.timeline.iter().any(|e| e.event == "ended"));
    let err = admin.terminate(&one).await.unwrap_err();
    assert_eq!(code(&err), "session_ended");

    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.store, "embedded");
    assert_eq!(stats.active_sessions, 18);
    assert_eq!(stats.sessions_per_policy.get("default"), Some(&18));
    assert_eq!(stats.ended_by_reason.get("terminated_by_admin"), Some(&5));
    assert_eq!(stats.nodes, 1);
}

#[tokio::test]
async fn the_cli_finds_a_local_server_through_its_data_dir() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, None);
    let agent = server.agent();
    let a = agent.create_session(&req("heidi")).await.unwrap();
    agent.create_session(&req("heidi")).await.unwrap();

    let out = server.cli(&["sessions", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let text = listed.to_string();
    assert!(text.contains(&a.session.id));
    assert!(!text.contains(&a.token), "a listing never shows a token");

    let out = server.cli(&["sessions", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("heidi") && table.contains(&a.session.id),
        "{table}"
    );

    let out = server.cli(&["sessions", "terminate", &a.session.id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server.cli(&["sessions", "explain", &a.session.id]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("terminated_by_admin"));
    let out = server.cli(&["sessions", "terminate", "--user", "heidi"]);
    assert!(out.status.success());
    let out = server.cli(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(stats["active_sessions"], 0);

    let out = server.cli(&["sessions", "show", &"0".repeat(32)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
