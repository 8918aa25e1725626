//! The SSE parser on its own, then [`Client::events`] against the fake server.

use super::*;
use crate::fake::{FakeServer, eventually, sse};
use sessiond_proto::EndReason;

/// Feeds `chunks` one after the other and collects the blocks.
fn blocks(chunks: &[&[u8]]) -> Result<Vec<Block>, Error> {
    let mut parser = Parser::default();
    let mut out = VecDeque::new();
    for chunk in chunks {
        parser.feed(chunk, &mut out)?;
    }
    Ok(out.into())
}

fn block(id: Option<&str>, kind: &str, data: Option<&str>) -> Block {
    Block {
        last_id: id.map(str::to_owned),
        kind: kind.to_owned(),
        data: data.map(str::to_owned),
    }
}

#[test]
fn every_line_ending_and_any_chunking_read_the_same() {
    let lf = b"id: 1\nevent: ended\ndata: x\n\n".to_vec();
    let crlf = b"id: 1\r\nevent: ended\r\ndata: x\r\n\r\n".to_vec();
    let cr = b"id: 1\revent: ended\rdata: x\r\r".to_vec();
    let expected = vec![block(Some("1"), "ended", Some("x"))];
    for text in [lf, crlf, cr] {
        assert_eq!(blocks(&[&text]).unwrap(), expected);
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(blocks(&bytes).unwrap(), expected, "byte by byte");
    }
    // A CR at the end of one chunk and its LF at the start of the next are one ending.
    assert_eq!(
        blocks(&[b"id: 1\r", b"\nevent: ended\r", b"\ndata: x\r\n\r", b"\n"]).unwrap(),
        expected
    );
}

#[test]
fn data_lines_join_and_only_one_space_is_stripped() {
    let got = blocks(&[b"data: a\ndata:  b\ndata\ndata:c\n\n"]).unwrap();
    assert_eq!(got, vec![block(None, "", Some("a\n b\n\nc"))]);
    let got = blocks(&[b"data\n\n"]).unwrap();
    assert_eq!(got, vec![block(None, "", Some(""))]);
}

#[test]
fn comments_unknown_fields_and_a_bom_are_skipped() {
    let text = b"\xEF\xBB\xBF: keep-alive\nretry: 10\nfoo: bar\n:\n\nevent: reset\ndata: {}\n\n";
    assert_eq!(
        blocks(&[text]).unwrap(),
        vec![block(None, "reset", Some("{}"))]
    );
    // The mark is split across chunks, and counts only at the very start.
    let got = blocks(&[b"\xEF\xBB", b"\xBFid: 7\n\n\xEF\xBB\xBFid: 8\n\n"]).unwrap();
    assert_eq!(got, vec![block(Some("7"), "", None)]);
}

#[test]
fn ids_carry_over_and_can_come_without_data() {
    let text = b"id: 1\n\nevent: created\ndata: x\n\nid\n\nid: a\0b\nevent: x\n\n";
    assert_eq!(
        blocks(&[text]).unwrap(),
        vec![
            block(Some("1"), "", None),
            block(Some("1"), "created", Some("x")),
            block(None, "", None),
            // The id holding NUL is ignored; the block still counts for its event line.
            block(None, "x", None),
        ]
    );
    // Blank lines alone dispatch nothing.
    assert!(blocks(&[b"\n\r\n\r\n"]).unwrap().is_empty());
    // An unfinished block is not dispatched.
    assert!(blocks(&[b"id: 1\ndata: x\n"]).unwrap().is_empty());
}

#[test]
fn lines_and_events_are_bounded() {
    let long = vec![b'a'; MAX_LINE];
    let mut parser = Parser::default();
    let mut out = VecDeque::new();
    parser.feed(b"data:", &mut out).unwrap();
    let err = parser.feed(&long, &mut out).unwrap_err();
    assert!(err.to_string().contains("longer than 65536"), "{err}");

    let line = format!("data: {}\n", "b".repeat(MAX_LINE - 10));
    let err = blocks(&[line.as_bytes(), line.as_bytes()]).unwrap_err();
    assert!(err.to_string().contains("more than 65536 bytes"), "{err}");
    // Exactly at the limit is fine.
    let line = format!("{}\n", "c".repeat(MAX_LINE));
    assert!(blocks(&[line.as_bytes()]).is_ok());
}

#[test]
fn blocks_become_typed_events() {
    let ended = br#"id: e9
event: ended
data: {"id":"s1","user":"alice","version":3,"reason":"logged_out","at":"2026-11-21T10:00:00.000Z"}

"#;
    let mut got = blocks(&[ended]).unwrap();
    let event = got.remove(0).into_event().unwrap().unwrap();
    assert_eq!(event.kind, EventKind::Ended);
    assert_eq!(event.event_id.as_deref(), Some("e9"));
    let session = event.session.unwrap();
    assert_eq!((session.id.as_str(), session.version), ("s1", 3));
    assert_eq!(session.reason, Some(EndReason::LoggedOut));

    let reset = block(
        Some("e1"),
        "reset",
        Some(r#"{"reason":"history_unavailable"}"#),
    );
    let event = reset.into_event().unwrap().unwrap();
    assert_eq!(event.kind, EventKind::Reset);
    assert_eq!(event.reset.unwrap().reason, "history_unavailable");
    let bare_reset = block(None, "reset", None).into_event().unwrap().unwrap();
    assert_eq!(
        (bare_reset.kind, bare_reset.reset),
        (EventKind::Reset, None)
    );

    for skipped in [
        block(Some("1"), "", Some("x")),
        block(Some("1"), "message", Some("x")),
        block(Some("1"), "renamed", Some("x")),
        block(Some("1"), "ended", None),
    ] {
        assert_eq!(skipped.into_event().unwrap(), None);
    }
    let err = block(None, "ended", Some(r#"{"id":"tok-secret"}"#))
        .into_event()
        .unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

async fn open(server: &FakeServer, last: Option<&str>) -> EventStream {
    let client = Client::new(&server.base, "agent-key").unwrap();
    let stream = client.events(last).await.unwrap();
    eventually("the stream to open", || server.open_streams() == 1).await;
    stream
}

#[tokio::test]
async fn events_are_read_as_they_come_and_the_request_is_right() {
    let server = FakeServer::start().await;
    let mut stream = open(&server, Some("e0")).await;
    let head = server.event_requests().remove(0);
    assert!(head.starts_with("GET /v1/events HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains("authorization: Bearer agent-key\r\n"),
        "{head}"
    );
    assert!(head.contains("accept: text/event-stream\r\n"), "{head}");
    assert!(head.contains("last-event-id: e0\r\n"), "{head}");
    assert_eq!(stream.last_event_id(), Some("e0"));

    server.send(": keep-alive\n\n");
    server.send(&sse("e1", "created", "s1"));
    let event = stream.next().await.unwrap().unwrap();
    assert_eq!(event.kind, EventKind::Created);
    assert_eq!(stream.last_event_id(), Some("e1"));

    // Split mid-line, with an id-only block and an unknown event in between.
    let ended = sse("e4", "ended", "s2");
    let (a, b) = ended.split_at(20);
    server.send(&format!(
        "id: e2\n\nevent: future\nid: e3\ndata: {{}}\n\n{a}"
    ));
    server.send(b);
    let event = stream.next().await.unwrap().unwrap();
    assert_eq!(event.kind, EventKind::Ended);
    assert_eq!(event.event_id.as_deref(), Some("e4"));
    assert_eq!(event.session.unwrap().id, "s2");

    server.send(&sse("e5", "reset", ""));
    assert_eq!(stream.next().await.unwrap().unwrap().kind, EventKind::Reset);
    server.close_streams();
    assert_eq!(stream.next().await.unwrap(), None);
    assert_eq!(stream.next().await.unwrap(), None);
    assert_eq!(stream.last_event_id(), Some("e5"));
}

#[tokio::test]
async fn blocks_without_an_id_keep_the_id_the_stream_was_opened_with() {
    let server = FakeServer::start().await;
    let mut stream = open(&server, Some("e0")).await;
    // The real server sends its reset without an id.
    server.send("event: reset\ndata: {\"reason\":\"history_unavailable\"}\n\n");
    let event = stream.next().await.unwrap().unwrap();
    assert_eq!(event.kind, EventKind::Reset);
    assert_eq!(event.event_id.as_deref(), Some("e0"));
    assert_eq!(stream.last_event_id(), Some("e0"));
}

#[tokio::test]
async fn a_fresh_stream_sends_no_last_event_id() {
    let server = FakeServer::start().await;
    let stream = open(&server, None).await;
    assert_eq!(stream.last_event_id(), None);
    let head = server.event_requests().remove(0);
    assert!(!head.contains("last-event-id"), "{head}");
}

#[tokio::test]
async fn a_silent_stream_counts_as_lost() {
    let server = FakeServer::start().await;
    let client = Client::new(&server.base, "agent-key").unwrap();
    let idle = Duration::from_millis(200);
    let mut stream = client.events_with_idle_timeout(None, idle).await.unwrap();
    server.send(": keep-alive\n");
    let err = stream.next().await.unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(err.to_string().contains("silent"), "{err}");
    assert_eq!(stream.next().await.unwrap(), None, "the stream is over");
}

#[tokio::test]
async fn refusals_and_other_content_are_errors() {
    let server = FakeServer::start().await;
    let body = r#"{"error":{"code":"unauthorized","message":"bad agent key"}}"#;
    server.script(|s| {
        s.events_head = Some(format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ))
    });
    let client = Client::new(&server.base, "agent-key").unwrap();
    let err = client.events(None).await.unwrap_err();
    assert_eq!(err.code(), Some(sessiond_proto::ErrorCode::Unauthorized));

    server.script(|s| {
        s.events_head =
            Some("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}".to_owned())
    });
    let err = client.events(None).await.unwrap_err();
    assert!(
        matches!(err, Error::Protocol { status: 200, .. }),
        "{err:?}"
    );
    let err = client.events(Some("bad\nid")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

#[tokio::test]
async fn a_malformed_event_ends_the_stream() {
    let server = FakeServer::start().await;
    let mut stream = open(&server, None).await;
    server.send("id: e1\nevent: ended\ndata: {not json\n\n");
    let err = stream.next().await.unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    assert_eq!(stream.next().await.unwrap(), None);
}
