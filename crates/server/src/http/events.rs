//! `GET /v1/events`: the store's change events as Server-Sent Events, resumable with
//! `Last-Event-ID`. Streams end when the server shuts down, so shutdown never waits on them.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use sessiond_proto::v1;
use sessiond_store::{ChangeKind, FeedItem};

use super::AppState;
use super::extract::Agent;
use crate::error::ApiError;

/// Comment lines sent while nothing happens, so proxies and clients see a live stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The `Last-Event-ID` request header, if sane (at most 128 visible ASCII characters).
#[derive(Debug)]
pub struct LastEventId(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.headers.get("last-event-id") {
            None => Ok(LastEventId(None)),
            Some(v) => {
                let text = v
                    .to_str()
                    .ok()
                    .filter(|t| t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or_else(|| {
                        ApiError::invalid_field(
                            "Last-Event-ID",
                            "at most 128 visible ASCII characters",
                        )
                    })?;
                Ok(LastEventId((!text.is_empty()).then(|| text.to_owned())))
            }
        }
    }
}

fn to_sse(item: FeedItem) -> Event {
    match item {
        FeedItem::Reset => {
            let data = v1::ResetEvent {
                reason: "history_unavailable".into(),
            };
            Event::default()
                .event(v1::EventKind::Reset.as_str())
                .json_data(data)
                .unwrap_or_default()
        }
        FeedItem::Change(c) => {
            let kind = match c.kind {
                ChangeKind::Created => v1::EventKind::Created,
                ChangeKind::Updated => v1::EventKind::Updated,
                ChangeKind::Ended => v1::EventKind::Ended,
            };
            let data = v1::SessionEvent {
                id: c.session.to_string(),
                user: c.user.to_string(),
                version: c.version,
                reason: c.reason,
                at: c.at.to_rfc3339(),
            };
            Event::default()
                .id(c.event_id)
                .event(kind.as_str())
                .json_data(data)
                .unwrap_or_default()
        }
    }
}

pub(super) async fn events(
    _: Agent,
    State(state): State<AppState>,
    LastEventId(after): LastEventId,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let feed = state.service.store.events(after.as_deref()).await?;
    let closing = state.closing.subscribe();
    let stream =
        futures_util::stream::unfold((feed, closing), |(mut feed, mut closing)| async move {
            let item = tokio::select! {
                item = feed.recv() => item,
                _ = closing.wait_for(|c| *c) => None,
            };
            item.map(|i| (Ok(to_sse(i)), (feed, closing)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}
