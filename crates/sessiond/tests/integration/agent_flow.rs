//! The whole agent flow on a server started with no configuration at all.

use std::collections::BTreeMap;

use sessiond_client::v1;

use crate::common::{Server, code, data_dir};

#[tokio::test]
async fn create_validate_update_logout() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, None);
    assert!(
        server.banner.iter().any(|l| l.contains("admin token in")),
        "{:?}",
        server.banner
    );
    let admin_token = server.admin_token();
    assert!(
        server.banner.iter().all(|l| !l.contains(&admin_token)),
        "the banner names where the admin token is, never the token"
    );

    let agent = server.agent();
    let created = agent
        .create_session(&v1::CreateSessionRequest {
            user: "alice".into(),
            universal_id: Some("cust-1001".into()),
            auth_level: Some(2),
            attributes: Some(BTreeMap::from([("role".into(), "reader".into())])),
            client: Some(v1::ClientInfo {
                ip: Some("192.0.2.7".into()),
                user_agent: Some("flow-test/1".into()),
            }),
            policy: None,
        })
        .await
        .expect("create");
    let s = &created.session;
    assert_eq!((s.user.as_str(), s.auth_level, s.version), ("alice", 2, 1));
    assert_eq!(s.universal_id.as_deref(), Some("cust-1001"));
    assert_eq!(s.client.ip.as_deref(), Some("192.0.2.7"));
    assert_eq!(s.policy, "default");
    assert_ne!(created.token, s.id, "the id is not the token");
    assert!(
        !created.token.contains(&s.id),
        "the token does not show the id in clear"
    );

    let v = agent
        .validate(&created.token, true)
        .await
        .expect("validate");
    assert_eq!(v.id, s.id);
    let read = agent.validate(&created.token, false).await.expect("read");
    assert_eq!(
        read.last_access_at, v.last_access_at,
        "touch=false does not slide"
    );

    let updated = agent
        .update(&v1::UpdateRequest {
            token: created.token.clone(),
            set: BTreeMap::from([("cart".into(), "3".into())]),
            remove: vec!["role".into()],
            expected_version: Some(1),
        })
        .await
        .expect("update");
    assert_eq!(updated.version, 2);
    assert_eq!(
        updated.attributes,
        BTreeMap::from([("cart".into(), "3".into())])
    );

    let stale = agent
        .update(&v1::UpdateRequest {
            token: created.token.clone(),
            set: BTreeMap::from([("cart".into(), "4".into())]),
            expected_version: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&stale), "version_conflict");

    agent.logout(&created.token).await.expect("logout");
    let gone = agent.validate(&created.token, true).await.unwrap_err();
    assert_eq!(code(&gone), "session_ended");
    let sessiond_client::Error::Api { status, detail } = gone else {
        unreachable!()
    };
    assert_eq!(status, 410);
    assert_eq!(detail.reason, Some(sessiond_client::EndReason::LoggedOut));
    assert!(detail.ended_at.is_some());

    // Every login gets a fresh id and token.
    let again = agent
        .create_session(&v1::CreateSessionRequest {
            user: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("create again");
    assert_ne!(again.session.id, s.id);
    assert_ne!(again.token, created.token);
    server.client("").healthz().await.expect("healthz");
    server.client("").readyz().await.expect("readyz");
}

#[test]
fn a_log_read_through_a_pipe_has_no_terminal_colours() {
    let (_tmp, dir) = data_dir();
    let log = Server::log_of_a_run(&dir, &[("SESSIOND_LOG".into(), "info".into())]);
    assert!(log.contains("loaded the embedded store"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in a log that is not a terminal: {log:?}"
    );
}
