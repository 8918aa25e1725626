//! Change events of the Redis store: one Redis Stream, `P{global}:events`, and the feeds
//! that follow it.
//!
//! Writing: every create, update and end records a `v` effect in its tag script, and the
//! scripts' `apply` turns it into `XADD P{global}:events MAXLEN ~ 100000 * kind .. id ..
//! user .. ver .. [reason ..] at ..`: inside the same script on a single Redis or through
//! Sentinel (the change and its event are one atomic, fsynced step), and in the `global`
//! follow-up step in a Cluster. The entry id Redis assigns (`<ms>-<seq>`) is the event id.
//!
//! Reading: [`RedisStore::feed`] fixes where a consumer starts before it returns, so a
//! change made after `events()` returned is always delivered. A task per feed then reads on
//! a connection of its own (`XREAD BLOCK` would stall the shared one):
//!
//! - It reads only through the `events_read` script, which first checks that the last id
//!   delivered is still in the stream. The stream is trimmed from its oldest end only, so
//!   while that id is there, nothing after it is lost. When it is gone (the consumer fell
//!   more than the cap behind, or Redis lost data) the feed sends [`FeedItem::Reset`] and
//!   goes on from the newest entry.
//! - Once caught up, it waits with `XREAD BLOCK` (at most [`BLOCK`], so a closed store or a
//!   dead connection is noticed) only as a wake-up, then reads through the script again.
//! - After any failure to reach Redis, it sends `Reset` once Redis answers again, and goes
//!   on from the newest entry: the consumer cannot tell silence from an outage, so it must
//!   drop what it cached.
//! - It ends when the consumer drops its receiver or the store closes.
//! - Before it relays an update or an end, it evicts that session from this node's near
//!   cache. The cache's own invalidations come by pub/sub, on another connection, and may
//!   arrive later; without this, an agent told of a logout could ask this node again and
//!   be answered "live" from its cache.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{Script, Value};
use sessiond_core::{EndReason, SessionId, Timestamp};
use tokio::sync::{mpsc, watch};

use super::cache::NearCache;
use super::conn::{self, Conn, Endpoint};
use super::scripts::Call;
use super::{RedisStore, codec};
use crate::StoreError;
use crate::events::{ChangeEvent, ChangeKind, Feed, FeedItem};

/// The longest one `XREAD BLOCK` waits before the follower looks around.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries read per round.
const BATCH: usize = 256;
/// Items queued towards one consumer.
const FEED_BUFFER: usize = 1024;
/// Pauses between tries while Redis cannot be reached, doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A stream entry id, `<ms>-<seq>`: the event id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    /// Before every entry: where a consumer of an empty stream starts.
    const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// Only the exact form Redis hands out: two runs of decimal digits.
    pub(super) fn parse(text: &str) -> Option<StreamId> {
        let (ms, seq) = text.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One stream entry: its id, and its event unless the entry does not decode.
type Entry = (StreamId, Option<ChangeEvent>);

impl RedisStore {
    /// [`SessionStore::events`](crate::SessionStore::events) for Redis: see the module docs.
    pub(super) async fn feed(&self, after: Option<&str>) -> Result<Feed, StoreError> {
        let stream = self.keys.events();
        let resume = match after.and_then(StreamId::parse) {
            Some(id) if retains(&self.conn, &stream, id).await? => Some(id),
            _ => None,
        };
        let (start, reset) = match resume {
            Some(id) => (id, false),
            None => (newest(&self.conn, &stream).await?, after.is_some()),
        };
        let (tx, rx) = mpsc::channel(FEED_BUFFER);
        let follower = Follower {
            cache: self.cache.clone(),
            endpoint: self.endpoint.clone(),
            stream,
            read: self.scripts.events_read.clone(),
            last: start,
            guard: Guard {
                tx,
                closing: self.closing.subscribe(),
            },
        };
        tokio::spawn(follower.run(reset));
        Ok(rx)
    }
}

/// Whether `id` is still an entry of the stream (so everything after it is too).
async fn retains(conn: &Conn, stream: &str, id: StreamId) -> Result<bool, StoreError> {
    let id = id.to_string();
    let reply: Value = conn
        .query(redis::cmd("XRANGE").arg(stream).arg(&id).arg(&id))
        .await?;
    Ok(!codec::array(&reply)?.is_empty())
}

/// The newest entry's id, or [`StreamId::ZERO`] for an empty (or missing) stream.
async fn newest(conn: &Conn, stream: &str) -> Result<StreamId, StoreError> {
    let reply: Value = conn
        .query(
            redis::cmd("XREVRANGE")
                .arg(stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1),
        )
        .await?;
    Ok(entries(&reply)?
        .first()
        .map_or(StreamId::ZERO, |(id, _)| *id))
}

/// What one read through `events_read` found.
enum Read {
    /// The last delivered id is gone from the stream: something may have been missed.
    Lost,
    /// Entries after it, oldest first (none when caught up).
    Entries(Vec<Entry>),
}

/// One feed's task: follows the stream from `last` and sends what it finds.
struct Follower {
    /// This node's near cache: a change is evicted from it before the change is relayed,
    /// so nobody who saw the event can get the old answer from this node.
    cache: Arc<NearCache>,
    endpoint: Arc<Endpoint>,
    stream: String,
    read: Script,
    /// The newest id delivered (or the starting point).
    last: StreamId,
    guard: Guard,
}

/// The consumer's end, and the store's closing signal: either one stops the follower.
struct Guard {
    tx: mpsc::Sender<FeedItem>,
    /// Turns true when the store closes (an error once the store is dropped).
    closing: watch::Receiver<bool>,
}

/// Why the follower stops.
struct Stop;

impl Follower {
    async fn run(mut self, mut reset: bool) {
        let mut conn = None;
        let mut retry = RETRY_FIRST;
        loop {
            match self.step(&mut conn, &mut reset).await {
                Ok(Ok(())) => retry = RETRY_FIRST,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "redis: event feed interrupted; will reset");
                    reset = true;
                    if self
                        .guard
                        .until_stop(tokio::time::sleep(retry))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
                Err(Stop) => return,
            }
        }
    }

    /// One round: connect if needed, reset if owed, then deliver what follows `last` or
    /// wait (bounded) for something to. The outer error stops the feed; the inner one is a
    /// failure to reach Redis, after which the consumer is owed a reset.
    async fn step(
        &mut self,
        conn: &mut Option<Conn>,
        reset: &mut bool,
    ) -> Result<Result<(), StoreError>, Stop> {
        let c = match conn {
            Some(c) => c.clone(),
            None => match self
                .guard
                .until_stop(conn::connect_dedicated(&self.endpoint, BLOCK))
                .await?
            {
                Ok(c) => conn.insert(c).clone(),
                Err(e) => return Ok(Err(e)),
            },
        };
        if *reset {
            match self.guard.until_stop(newest(&c, &self.stream)).await? {
                Ok(id) => self.last = id,
                Err(e) => return Ok(Err(e)),
            }
            self.guard.send(FeedItem::Reset).await?;
            *reset = false;
        }
        let reading = read_after(&self.read, &self.stream, self.last, &c);
        let read = match self.guard.until_stop(reading).await? {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        match read {
            Read::Lost => *reset = true,
            Read::Entries(entries) if entries.is_empty() => {
                // Caught up: wait for the next entry, then read it through the script.
                let wait = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis().to_string())
                    .arg("STREAMS")
                    .arg(&self.stream)
                    .arg(self.last.to_string())
                    .clone();
                let woke = c.query_blocking::<Value>(&wait, BLOCK);
                if let Err(e) = self.guard.until_stop(woke).await? {
                    return Ok(Err(e));
                }
            }
            Read::Entries(entries) => {
                for (id, event) in entries {
                    match event {
                        Some(e) => {
                            // The invalidation also comes by pub/sub, on another
                            // connection and maybe later: an agent told of an end must not
                            // then be answered "live" from this node's cache.
                            if e.kind != ChangeKind::Created {
                                self.cache.invalidate(&e.session);
                            }
                            self.guard.send(FeedItem::Change(e)).await?
                        }
                        None => tracing::warn!(%id, "redis: skipping an undecodable change event"),
                    }
                    self.last = id;
                }
            }
        }
        Ok(Ok(()))
    }
}

/// Up to [`BATCH`] entries after `last`, or [`Read::Lost`].
async fn read_after(
    script: &Script,
    stream: &str,
    last: StreamId,
    c: &Conn,
) -> Result<Read, StoreError> {
    let mut call = Call::plain(script, &[stream.to_owned()]);
    call.arg(last.to_string()).arg(BATCH);
    let reply = c.eval(&call).await?;
    if matches!(&reply, Value::BulkString(b) if b.as_slice() == b"lost") {
        return Ok(Read::Lost);
    }
    Ok(Read::Entries(entries(&reply)?))
}

impl Guard {
    /// Runs `fut` unless the consumer goes away or the store closes first.
    async fn until_stop<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::select! {
            biased;
            _ = self.tx.closed() => Err(Stop),
            _ = self.closing.wait_for(|c| *c) => Err(Stop),
            v = fut => Ok(v),
        }
    }

    async fn send(&mut self, item: FeedItem) -> Result<(), Stop> {
        let tx = self.tx.clone();
        match self.until_stop(tx.send(item)).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Stop),
        }
    }
}

/// The entries of an `XRANGE`/`XREVRANGE` reply.
fn entries(reply: &Value) -> Result<Vec<Entry>, StoreError> {
    codec::array(reply)?.iter().map(entry).collect()
}

fn bad(what: &str) -> StoreError {
    StoreError::Corrupt(format!("redis: unexpected stream reply ({what})"))
}

/// `[id, [field, value, ...]]` (RESP2) or `[id, {field: value}]` (RESP3).
fn entry(value: &Value) -> Result<Entry, StoreError> {
    let [id, fields] = codec::array(value)? else {
        return Err(bad("entry"));
    };
    let id = StreamId::parse(&codec::string(id)?).ok_or_else(|| bad("entry id"))?;
    let pairs: Vec<(String, String)> = match fields {
        Value::Map(map) => map
            .iter()
            .map(|(k, v)| Ok((codec::string(k)?, codec::string(v)?)))
            .collect::<Result<_, StoreError>>()?,
        other => codec::array(other)?
            .chunks(2)
            .filter_map(|p| match p {
                [k, v] => Some((k, v)),
                _ => None,
            })
            .map(|(k, v)| Ok((codec::string(k)?, codec::string(v)?)))
            .collect::<Result<_, StoreError>>()?,
    };
    Ok((id, decode(id, &pairs)))
}

/// The event an entry holds; `None` when a field is missing or malformed.
fn decode(id: StreamId, pairs: &[(String, String)]) -> Option<ChangeEvent> {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let kind = match get("kind")? {
        "created" => ChangeKind::Created,
        "updated" => ChangeKind::Updated,
        "ended" => ChangeKind::Ended,
        _ => return None,
    };
    let reason = match get("reason") {
        Some(r) => Some(r.parse::<EndReason>().ok()?),
        None => None,
    };
    Some(ChangeEvent {
        event_id: id.to_string(),
        kind,
        session: get("id")?.parse::<SessionId>().ok()?,
        user: get("user")?.into(),
        version: get("ver")?.parse().ok()?,
        reason,
        at: Timestamp(get("at")?.parse().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_redis_shaped_ids_parse() {
        let id = StreamId::parse("1700000000000-3").unwrap();
        assert_eq!(id.to_string(), "1700000000000-3");
        assert!(StreamId::parse("0-0").unwrap() < id);
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "+1-2",
            "1-+2",
            "a-1",
            "1-2-3",
            "0a1b2c3d-5",
            "1 -2",
        ] {
            assert_eq!(StreamId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(StreamId::parse("99999999999999999999-1"), None, "overflow");
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn an_entry_decodes_in_either_protocol_and_a_bad_one_is_skipped() {
        let sid = SessionId::for_user("alice").unwrap();
        let flat = vec![
            bulk("kind"),
            bulk("ended"),
            bulk("id"),
            bulk(&sid.to_string()),
            bulk("user"),
            bulk("alice"),
            bulk("ver"),
            bulk("3"),
            bulk("reason"),
            bulk("logged_out"),
            bulk("at"),
            bulk("1700000000000"),
        ];
        let resp2 = Value::Array(vec![bulk("5-1"), Value::Array(flat.clone())]);
        let (id, event) = entry(&resp2).unwrap();
        let event = event.unwrap();
        assert_eq!(id.to_string(), "5-1");
        assert_eq!(event.event_id, "5-1");
        assert_eq!(
            (event.kind, event.session, event.version, event.reason),
            (ChangeKind::Ended, sid, 3, Some(EndReason::LoggedOut))
        );
        let map = flat
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        let resp3 = Value::Array(vec![bulk("5-1"), Value::Map(map)]);
        assert_eq!(entry(&resp3).unwrap().1.unwrap(), event);
        let garbled = Value::Array(vec![
            bulk("6-0"),
            Value::Array(vec![bulk("kind"), bulk("exploded")]),
        ]);
        let (id, event) = entry(&garbled).unwrap();
        assert_eq!((id.to_string(), event), ("6-0".to_string(), None));
    }
}
