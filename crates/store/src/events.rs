//! Change events: what the store tells agents through `GET /v1/events`.
//!
//! Each backend publishes a [`ChangeEvent`] for every create, update and end, and
//! [`SessionStore::events`](crate::SessionStore::events) hands a consumer a [`Feed`]: the
//! retained history after the id it last saw (or a [`FeedItem::Reset`] when that history is
//! gone), then live events. A consumer that falls behind gets a `Reset` and continues live:
//! it must then drop whatever it cached.
//!
//! [`EventLog`] is the in-process log used by the local store: a bounded ring of recent
//! events plus a broadcast channel. Its event ids are `<epoch>-<seq>`, where the epoch is
//! random per process start, so ids from before a restart are recognised as unresumable.

use std::collections::VecDeque;

use parking_lot::Mutex;
use sessiond_core::{EndReason, SessionId, Text, Timestamp};
use tokio::sync::{broadcast, mpsc};

/// Events kept for resumption.
const RING: usize = 65_536;
/// Live events buffered per consumer before it counts as lagging.
const LIVE_BUFFER: usize = 4096;
/// Items queued towards one consumer.
const FEED_BUFFER: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
    Ended,
}

/// One change of one session. Never carries a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Opaque, increasing within a store; pass it back to resume after this event.
    pub event_id: String,
    pub kind: ChangeKind,
    pub session: SessionId,
    pub user: Text,
    pub version: u64,
    /// For `Ended`.
    pub reason: Option<EndReason>,
    pub at: Timestamp,
}

/// What a feed yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedItem {
    Change(ChangeEvent),
    /// History was lost (unknown or too old id, or the consumer lagged): drop caches.
    Reset,
}

/// A consumer's events, in order. Ends when the store closes.
pub type Feed = mpsc::Receiver<FeedItem>;

/// A change about to be published (the log assigns its id).
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: ChangeKind,
    pub session: SessionId,
    pub user: Text,
    pub version: u64,
    pub reason: Option<EndReason>,
    pub at: Timestamp,
}

#[derive(Debug)]
struct Inner {
    next_seq: u64,
    /// `(seq, change)`, oldest first. The id a consumer sees is made from the seq only when
    /// the change is sent to one: every create, update and end publishes, few are read.
    ring: VecDeque<(u64, Change)>,
}

/// The in-process event log.
#[derive(Debug)]
pub struct EventLog {
    epoch: u32,
    inner: Mutex<Inner>,
    live: broadcast::Sender<(u64, Change)>,
}

impl EventLog {
    pub fn new() -> EventLog {
        let mut epoch = [0u8; 4];
        // Only uniqueness across restarts matters; a failed draw falls back to the seq base.
        let _ = getrandom::fill(&mut epoch);
        EventLog {
            epoch: u32::from_le_bytes(epoch),
            inner: Mutex::new(Inner {
                next_seq: 1,
                ring: VecDeque::new(),
            }),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// Records `change` and sends it to live consumers.
    pub fn publish(&self, change: Change) {
        let mut inner = self.inner.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if inner.ring.len() == RING {
            inner.ring.pop_front();
        }
        inner.ring.push_back((seq, change.clone()));
        // No receivers is fine: nobody is listening.
        let _ = self.live.send((seq, change));
    }

    fn parse(&self, id: &str) -> Option<u64> {
        let (epoch, seq) = id.split_once('-')?;
        (u32::from_str_radix(epoch, 16).ok()? == self.epoch).then_some(())?;
        seq.parse().ok()
    }

    /// A feed of what follows `after` (or of what happens from now on).
    pub fn subscribe(&self, after: Option<&str>) -> Feed {
        let (tx, rx) = mpsc::channel(FEED_BUFFER);
        let (mut live, backlog, reset, mut last) = {
            let inner = self.inner.lock();
            let live = self.live.subscribe();
            let newest = inner.next_seq - 1;
            match after {
                None => (live, Vec::new(), false, newest),
                Some(id) => {
                    let oldest_kept = inner.ring.front().map_or(inner.next_seq, |(s, _)| *s);
                    match self.parse(id) {
                        Some(seq) if seq <= newest && seq + 1 >= oldest_kept => {
                            let backlog: Vec<_> = inner
                                .ring
                                .iter()
                                .filter(|(s, _)| *s > seq)
                                .cloned()
                                .collect();
                            (live, backlog, false, seq)
                        }
                        _ => (live, Vec::new(), true, newest),
                    }
                }
            }
        };
        let epoch = self.epoch;
        tokio::spawn(async move {
            if reset && tx.send(FeedItem::Reset).await.is_err() {
                return;
            }
            for (seq, change) in backlog {
                if tx
                    .send(FeedItem::Change(event(epoch, seq, change)))
                    .await
                    .is_err()
                {
                    return;
                }
                last = seq;
            }
            loop {
                let item = match live.recv().await {
                    Ok((seq, _)) if seq <= last => continue,
                    Ok((seq, change)) => {
                        last = seq;
                        FeedItem::Change(event(epoch, seq, change))
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => FeedItem::Reset,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

/// Change `seq` of the log started at `epoch`, as consumers see it.
fn event(epoch: u32, seq: u64, change: Change) -> ChangeEvent {
    ChangeEvent {
        event_id: format!("{epoch:08x}-{seq}"),
        kind: change.kind,
        session: change.session,
        user: change.user,
        version: change.version,
        reason: change.reason,
        at: change.at,
    }
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u8) -> Change {
        Change {
            kind: ChangeKind::Updated,
            session: SessionId([n; 16]),
            user: "u".into(),
            version: u64::from(n),
            reason: None,
            at: Timestamp(0),
        }
    }

    async fn next(feed: &mut Feed) -> FeedItem {
        tokio::time::timeout(std::time::Duration::from_secs(5), feed.recv())
            .await
            .expect("an item within 5 s")
            .expect("feed open")
    }

    #[tokio::test]
    async fn live_consumers_see_new_events_in_order() {
        let log = EventLog::new();
        let mut feed = log.subscribe(None);
        log.publish(change(1));
        log.publish(change(2));
        for v in [1, 2] {
            let FeedItem::Change(e) = next(&mut feed).await else {
                panic!("reset")
            };
            assert_eq!(e.version, v);
        }
    }

    #[tokio::test]
    async fn resuming_replays_what_followed_the_last_seen_id() {
        let log = EventLog::new();
        let mut first = log.subscribe(None);
        log.publish(change(1));
        let FeedItem::Change(seen) = next(&mut first).await else {
            panic!()
        };
        log.publish(change(2));
        log.publish(change(3));
        let mut resumed = log.subscribe(Some(&seen.event_id));
        for v in [2, 3] {
            let FeedItem::Change(e) = next(&mut resumed).await else {
                panic!("reset")
            };
            assert_eq!(e.version, v);
        }
        log.publish(change(4));
        let FeedItem::Change(e) = next(&mut resumed).await else {
            panic!()
        };
        assert_eq!(e.version, 4, "then live, without duplicates");
    }

    #[tokio::test]
    async fn an_unknown_or_foreign_id_resets() {
        let log = EventLog::new();
        log.publish(change(1));
        for id in ["garbage", "00000000-1", "ffffffff-999999"] {
            let mut feed = log.subscribe(Some(id));
            assert_eq!(next(&mut feed).await, FeedItem::Reset, "{id}");
        }
        let other = EventLog::new();
        other.publish(change(1));
        let mut o = other.subscribe(None);
        other.publish(change(2));
        let FeedItem::Change(e) = next(&mut o).await else {
            panic!()
        };
        let mut feed = log.subscribe(Some(&e.event_id));
        assert_eq!(
            next(&mut feed).await,
            FeedItem::Reset,
            "an id from another process start"
        );
    }
}
