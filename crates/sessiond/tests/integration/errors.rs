//! Every error code the binary can be made to answer, and bad input that changes nothing.

use sessiond_client::v1;

use crate::common::{Server, code, data_dir};

const CONFIG: &str = r#"
[session]
max_per_user = 3
on_limit = "deny"
"#;

fn req(user: &str) -> v1::CreateSessionRequest {
    v1::CreateSessionRequest {
        user: user.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn each_contract_error_has_its_code_and_status() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, Some(CONFIG));
    let agent = server.agent();
    let admin = server.admin();

    let err = server
        .client("not-a-key")
        .create_session(&req("a"))
        .await
        .unwrap_err();
    assert_eq!((code(&err), err_status(&err)), ("unauthorized", 401));
    let err = agent.stats().await.unwrap_err();
    assert_eq!(
        code(&err),
        "unauthorized",
        "an agent key does not reach admin routes"
    );

    let err = agent.create_session(&req("")).await.unwrap_err();
    assert_eq!((code(&err), err_status(&err)), ("invalid_request", 400));

    let err = agent
        .validate("k1.garbage.garbage", true)
        .await
        .unwrap_err();
    assert_eq!((code(&err), err_status(&err)), ("invalid_token", 401));

    let created = agent.create_session(&req("bob")).await.unwrap();
    admin.terminate(&created.session.id).await.unwrap();
    let err = agent.validate(&created.token, true).await.unwrap_err();
    assert_eq!((code(&err), err_status(&err)), ("session_ended", 410));

    let err = admin.get_session(&"0".repeat(32)).await.unwrap_err();
    assert_eq!((code(&err), err_status(&err)), ("session_not_found", 404));
    let err = admin.get_session("not-an-id").await.unwrap_err();
    assert_eq!(code(&err), "invalid_request");

    let live = agent.create_session(&req("carol")).await.unwrap();
    let err = agent
        .update(&v1::UpdateRequest {
            token: live.token.clone(),
            expected_version: Some(9),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((code(&err), err_status(&err)), ("version_conflict", 409));

    for _ in 0..2 {
        agent.create_session(&req("carol")).await.unwrap();
    }
    let err = agent.create_session(&req("carol")).await.unwrap_err();
    assert_eq!(
        (code(&err), err_status(&err)),
        ("session_limit_reached", 409)
    );

    let big = "x".repeat(70 * 1024);
    let err = agent.validate(&big, true).await.unwrap_err();
    assert_eq!((code(&err), err_status(&err)), ("payload_too_large", 413));
}

fn err_status(e: &sessiond_client::Error) -> u16 {
    match e {
        sessiond_client::Error::Api { status, .. } => *status,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn forged_and_garbled_tokens_are_refused_and_change_nothing() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, None);
    let agent = server.agent();
    let admin = server.admin();
    let created = agent.create_session(&req("dave")).await.unwrap();
    let before = admin.get_session(&created.session.id).await.unwrap();

    let token = created.token.as_bytes().to_vec();
    let mut refused = 0;
    for i in 0..token.len() {
        let mut t = token.clone();
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(t).unwrap();
        let err = agent.validate(&t, true).await.unwrap_err();
        assert_eq!(code(&err), "invalid_token", "byte {i}");
        let err = agent.logout(&t).await.unwrap_err();
        assert_eq!(code(&err), "invalid_token");
        refused += 1;
    }
    assert_eq!(refused, token.len());
    let after = admin.get_session(&created.session.id).await.unwrap();
    assert_eq!(
        before, after,
        "no garbled token touched or ended the session"
    );
    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.active_sessions, 1);
    assert!(stats.ended_by_reason.is_empty());
}

#[tokio::test]
async fn fifty_parallel_creates_never_exceed_the_limit() {
    let (_tmp, dir) = data_dir();
    let server = Server::start(&dir, Some(CONFIG));
    let agent = server.agent();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let agent = agent.clone();
            tokio::spawn(async move { agent.create_session(&req("erin")).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(code(&e), "session_limit_reached"),
        }
    }
    assert_eq!(ok, 3);
    let page = server
        .admin()
        .list_sessions(Some("erin"), None, None)
        .await
        .unwrap();
    assert_eq!(page.sessions.len(), 3);
}

/// An environment variable from bytes, which need not be UTF-8.
fn var(name: &[u8], value: &[u8]) -> (std::ffi::OsString, std::ffi::OsString) {
    use std::os::unix::ffi::OsStringExt as _;
    (
        std::ffi::OsString::from_vec(name.to_vec()),
        std::ffi::OsString::from_vec(value.to_vec()),
    )
}

#[tokio::test]
async fn a_variable_that_is_not_utf8_and_not_ours_does_not_stop_the_server() {
    let (_tmp, dir) = data_dir();
    // Latin-1 in a variable an init system or an old shell profile set.
    let server = Server::start_with_env(&dir, &[var(b"LEGACY_NAME", b"Jos\xe9")]);
    let agent = server.agent();
    let created = agent.create_session(&req("alice")).await.unwrap();
    agent.validate(&created.token, true).await.unwrap();
}

#[test]
fn a_sessiond_variable_that_is_not_utf8_is_refused_by_name() {
    let (_tmp, dir) = data_dir();
    let out = Server::refused_with_env(&dir, &[var(b"SESSIOND_USERS_FILE", b"/etc/caf\xe9")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("environment variable `SESSIOND_USERS_FILE` is not UTF-8"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dir.exists(), "a refused start writes nothing");
}

#[test]
fn a_config_file_that_cannot_be_read_is_named_with_its_cause_once() {
    let (_tmp, dir) = data_dir();
    let missing = dir.with_extension("missing.toml");
    let out = Server::refused_with_env(
        &dir,
        &[("SESSIOND_CONFIG".into(), missing.clone().into_os_string())],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cause = "No such file or directory";
    assert!(
        stderr.contains(&format!(
            "cannot read config file {}: {cause}",
            missing.display()
        )),
        "{stderr}"
    );
    assert_eq!(stderr.matches(cause).count(), 1, "{stderr}");
}
