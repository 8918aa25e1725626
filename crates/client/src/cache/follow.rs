//! The background task of a [`CachedValidator`](super::CachedValidator): keeps
//! `GET /v1/events` open and applies each event to the cache.
//!
//! It reconnects after every loss with a bounded exponential backoff
//! ([`RECONNECT_MIN`] doubling up to [`RECONNECT_MAX`]) and resumes with `Last-Event-ID`.
//! The backoff starts over once a connection has lasted [`RECONNECT_MAX`], so a server
//! that accepts and drops at once is not hammered. The task runs until its
//! [`TaskGuard`](super::TaskGuard) aborts it.

use std::sync::Arc;
use std::time::Duration;

use sessiond_proto::v1::EventKind;
use tokio::time::Instant;

use super::Shared;
use crate::{Client, Error, Event};

/// The first wait before reconnecting.
pub(super) const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// The longest wait before reconnecting.
pub(super) const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Follows the stream forever.
pub(super) async fn follow(client: Client, shared: Arc<Shared>) {
    let mut resume: Option<String> = None;
    let mut backoff = RECONNECT_MIN;
    loop {
        let opened = client
            .events_with_idle_timeout(resume.as_deref(), shared.config.idle_timeout)
            .await;
        match opened {
            Ok(mut stream) => {
                let since = Instant::now();
                shared.connected(resume.is_some());
                // Any error ends the stream; the cache treats every end alike.
                while let Ok(Some(event)) = stream.next().await {
                    apply(&shared, &event);
                }
                if let Some(id) = stream.last_event_id() {
                    resume = Some(id.to_owned());
                }
                shared.disconnected();
                if since.elapsed() >= RECONNECT_MAX {
                    backoff = RECONNECT_MIN;
                }
            }
            Err(Error::InvalidArgument(_)) if resume.is_some() => {
                // The server gave an id we cannot send back: start afresh.
                resume = None;
                continue;
            }
            Err(_) => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Applies one event to the cache.
fn apply(shared: &Shared, event: &Event) {
    match event.kind {
        EventKind::Created => {}
        EventKind::Updated | EventKind::Ended => {
            if let Some(session) = &event.session {
                shared.invalidate(&session.id, event.kind == EventKind::Ended);
            }
        }
        EventKind::Reset => shared.reset(),
    }
}
