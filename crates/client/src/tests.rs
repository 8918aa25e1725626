//! Client tests against a one-shot fake HTTP server: what goes on the wire, and how answers
//! map onto results and errors. The real server is exercised by the project's integration
//! tests.

use std::collections::BTreeMap;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;
use crate::fake::{read_request, session_json};

const SECRET: &str = "admin-secret-123";

/// Serves one request with `status` and `body`, and hands back the raw request it got.
async fn one_shot(status: &str, body: &str) -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let (head, body) = read_request(&mut socket)
            .await
            .expect("client closed early");
        socket.write_all(response.as_bytes()).await.unwrap();
        socket.shutdown().await.unwrap();
        format!("{head}\r\n\r\n{}", String::from_utf8(body).unwrap())
    });
    (base, task)
}

fn request_line(raw: &str) -> &str {
    raw.lines().next().unwrap()
}

#[test]
fn debug_output_redacts_the_credential() {
    let client = Client::new("http://127.0.0.1:7480/", SECRET).unwrap();
    let debug = format!("{client:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(debug.contains("http://127.0.0.1:7480"), "{debug}");
    assert_eq!(client.base_url(), "http://127.0.0.1:7480");
}

#[test]
fn unusable_credentials_are_refused_without_echoing_them() {
    let err = Client::new("http://h", "line\nbreak-secret").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));
    assert!(!err.to_string().contains("secret"));
    assert!(!format!("{err:?}").contains("secret"));
}

#[tokio::test]
async fn list_sends_the_bearer_and_encodes_the_query() {
    let page = format!(
        r#"{{"sessions":[{}],"next_cursor":"c2"}}"#,
        session_json("s1", "a b")
    );
    let (base, server) = one_shot("200 OK", &page).await;
    let client = Client::new(&base, SECRET).unwrap();
    let page = client
        .list_sessions(Some("a b&c"), Some(5), None)
        .await
        .unwrap();
    assert_eq!(page.sessions[0].id, "s1");
    assert_eq!(page.next_cursor.as_deref(), Some("c2"));
    let raw = server.await.unwrap();
    assert_eq!(
        request_line(&raw),
        "GET /v1/admin/sessions?user=a+b%26c&limit=5 HTTP/1.1"
    );
    assert!(
        raw.contains(&format!("authorization: Bearer {SECRET}\r\n")),
        "{raw}"
    );
}

#[tokio::test]
async fn list_without_arguments_has_no_query() {
    let (base, server) = one_shot("200 OK", r#"{"sessions":[],"next_cursor":null}"#).await;
    let client = Client::new(&base, SECRET).unwrap();
    let page = client.list_sessions(None, None, Some("c/2")).await.unwrap();
    assert!(page.sessions.is_empty());
    let raw = server.await.unwrap();
    assert_eq!(
        request_line(&raw),
        "GET /v1/admin/sessions?cursor=c%2F2 HTTP/1.1"
    );
}

#[tokio::test]
async fn terminate_user_encodes_the_user_segment() {
    let (base, server) = one_shot("200 OK", r#"{"terminated":3}"#).await;
    let client = Client::new(&base, SECRET).unwrap();
    assert_eq!(client.terminate_user("al/ice x").await.unwrap(), 3);
    let raw = server.await.unwrap();
    assert_eq!(
        request_line(&raw),
        "DELETE /v1/admin/users/al%2Fice%20x/sessions HTTP/1.1"
    );
}

#[tokio::test]
async fn tokens_travel_in_the_body_and_errors_map_to_codes() {
    let body = r#"{"error":{"code":"session_ended","message":"ended","reason":"logged_out",
        "ended_at":"2025-01-01T00:00:00Z"}}"#;
    let (base, server) = one_shot("410 Gone", body).await;
    let client = Client::new(&base, "agent-key").unwrap();
    let err = client.validate("tok-secret", false).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SessionEnded));
    assert_eq!(err.status(), Some(410));
    assert!(!err.to_string().contains("tok-secret"));
    let raw = server.await.unwrap();
    assert_eq!(request_line(&raw), "POST /v1/sessions/validate HTTP/1.1");
    assert!(
        raw.ends_with(r#"{"token":"tok-secret","touch":false}"#),
        "{raw}"
    );
}

#[tokio::test]
async fn create_and_update_decode_their_answers() {
    let created = format!(r#"{{"token":"t","session":{}}}"#, session_json("s9", "bob"));
    let (base, server) = one_shot("201 Created", &created).await;
    let client = Client::new(&base, "agent-key").unwrap();
    let req = v1::CreateSessionRequest {
        user: "bob".to_owned(),
        ..Default::default()
    };
    let created = client.create_session(&req).await.unwrap();
    assert_eq!(
        (created.token.as_str(), created.session.id.as_str()),
        ("t", "s9")
    );
    let raw = server.await.unwrap();
    assert_eq!(request_line(&raw), "POST /v1/sessions HTTP/1.1");
    assert!(raw.ends_with(r#"{"user":"bob"}"#), "{raw}");

    let envelope = format!(r#"{{"session":{}}}"#, session_json("s9", "bob"));
    let (base, server) = one_shot("200 OK", &envelope).await;
    let client = Client::new(&base, "agent-key").unwrap();
    let req = v1::UpdateRequest {
        token: "t".to_owned(),
        set: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
        expected_version: Some(1),
        ..Default::default()
    };
    assert_eq!(client.update(&req).await.unwrap().id, "s9");
    let raw = server.await.unwrap();
    assert_eq!(request_line(&raw), "POST /v1/sessions/update HTTP/1.1");
}

#[tokio::test]
async fn no_content_answers_and_probes() {
    let (base, server) = one_shot("204 No Content", "").await;
    let client = Client::new(&base, SECRET).unwrap();
    client.terminate("s1").await.unwrap();
    let raw = server.await.unwrap();
    assert_eq!(request_line(&raw), "DELETE /v1/admin/sessions/s1 HTTP/1.1");

    let (base, server) = one_shot("200 OK", "ok").await;
    let client = Client::new(&base, SECRET).unwrap();
    client.healthz().await.unwrap();
    let raw = server.await.unwrap();
    assert_eq!(request_line(&raw), "GET /healthz HTTP/1.1");
    assert!(!raw.to_ascii_lowercase().contains("authorization"), "{raw}");
}

#[tokio::test]
async fn non_contract_answers_are_protocol_errors() {
    let (base, server) = one_shot("502 Bad Gateway", "<html>upstream down</html>").await;
    let client = Client::new(&base, SECRET).unwrap();
    let err = client.stats().await.unwrap_err();
    assert!(
        matches!(err, Error::Protocol { status: 502, .. }),
        "{err:?}"
    );
    server.await.unwrap();

    let (base, server) = one_shot("200 OK", r#"{"not":"stats"}"#).await;
    let client = Client::new(&base, SECRET).unwrap();
    let err = client.stats().await.unwrap_err();
    assert!(
        matches!(err, Error::Protocol { status: 200, .. }),
        "{err:?}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn unreachable_servers_are_transport_errors_without_the_credential() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = Client::new(&base, SECRET).unwrap();
    let err = client.get_session("s1").await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("could not connect to {base}")),
        "{text}"
    );
    assert!(!text.contains(SECRET) && !format!("{err:?}").contains(SECRET));
}
