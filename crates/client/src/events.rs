//! `GET /v1/events`: the change-event stream, read as Server-Sent Events.
//!
//! [`Client::events`] opens the stream and hands back an [`EventStream`]; each
//! [`EventStream::next`] yields one [`Event`]. The stream is read chunk by chunk from the
//! response body and cut into lines by `Parser`, which follows the WHATWG
//! `text/event-stream` rules:
//!
//! - lines end with CRLF, LF or a lone CR, even when the CR and LF arrive in two chunks;
//! - a leading byte-order mark is skipped; `:` lines are comments (the server's
//!   `: keep-alive`) and unknown fields (`retry`, ...) are ignored;
//! - several `data:` lines join with `\n`; a blank line ends an event;
//! - `id:` sets the resume point even in a block without data, which is then not
//!   delivered; an `id` holding NUL is ignored, an empty `id:` clears the resume point;
//!   blocks without `id:` keep the previous one, starting from the id the stream was
//!   opened with;
//! - event types other than `created`, `updated`, `ended` and `reset` are skipped. One
//!   deviation: a `reset` block without data is still delivered, since dropping a cache is
//!   always safe.
//!
//! Limits: a line over [`MAX_LINE`] bytes or an event whose data exceeds [`MAX_DATA`] ends
//! the stream with an error, so a broken server cannot make the client buffer without end.
//! The stream has no overall timeout (it is meant to stay open), but the server sends a
//! keep-alive every 15 s, so [`IDLE_TIMEOUT`] without a single byte means it is gone.

use std::collections::VecDeque;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use sessiond_proto::v1::{EventKind, ResetEvent, SessionEvent};

use crate::{Client, Error};

/// The longest line accepted from the stream, in bytes (its line ending excluded).
pub const MAX_LINE: usize = 64 * 1024;
/// The most `data` one event may carry, in bytes.
pub const MAX_DATA: usize = 64 * 1024;
/// How long the stream may stay silent (not even a keep-alive) before it counts as lost.
/// The server sends a keep-alive every 15 s; this allows two to go missing.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// One event from `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The stream's resume point after this event (its `id:`, or the last one before it):
    /// pass it as `last_event_id` to resume after this event.
    pub event_id: Option<String>,
    pub kind: EventKind,
    /// The session concerned; set for `created`, `updated` and `ended`.
    pub session: Option<SessionEvent>,
    /// Why the history was lost; set for `reset` when the server said so.
    pub reset: Option<ResetEvent>,
}

/// An open `GET /v1/events` stream. Read it with [`EventStream::next`].
pub struct EventStream {
    /// The response whose body is the stream.
    response: reqwest::Response,
    /// Cuts the body into event blocks.
    parser: Parser,
    /// Blocks parsed from the last chunk and not yet handed out.
    ready: VecDeque<Block>,
    /// The resume point of the blocks handed out so far (not of those still in `ready`,
    /// so that resuming never skips an event the caller has not seen).
    last_event_id: Option<String>,
    /// How long a read may wait for the next chunk.
    idle_timeout: Duration,
    /// The server's base URL, for error messages.
    base: String,
    /// Set once the body ended or failed: nothing more will come.
    finished: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("base_url", &self.base)
            .field("last_event_id", &self.last_event_id)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `GET /v1/events`: opens the change-event stream (agent credential). With
    /// `last_event_id`, the server replays what it still has after that event, or sends a
    /// `reset` first when it cannot; without, the stream starts now.
    ///
    /// The connection has a connect timeout but no overall timeout; a stream silent for
    /// [`IDLE_TIMEOUT`] fails with [`Error::Transport`].
    pub async fn events(&self, last_event_id: Option<&str>) -> Result<EventStream, Error> {
        self.events_with_idle_timeout(last_event_id, IDLE_TIMEOUT)
            .await
    }

    /// [`Client::events`] with another idle timeout: how long the server may stay silent,
    /// both before it answers and between two chunks of the stream.
    pub async fn events_with_idle_timeout(
        &self,
        last_event_id: Option<&str>,
        idle_timeout: Duration,
    ) -> Result<EventStream, Error> {
        let url = self.base.route(&["v1", "events"], &[])?;
        let mut request = self
            .stream_http
            .get(url)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        if let Some(id) = last_event_id {
            let value = HeaderValue::from_str(id).map_err(|_| {
                Error::InvalidArgument(
                    "the last event id holds characters that cannot be sent in a header".to_owned(),
                )
            })?;
            request = request.header("last-event-id", value);
        }
        let base = self.base.as_str();
        let response = tokio::time::timeout(idle_timeout, request.send())
            .await
            .map_err(|_| silent(base, idle_timeout))?
            .map_err(|e| Error::transport(base, e))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = tokio::time::timeout(idle_timeout, response.bytes())
                .await
                .map_err(|_| silent(base, idle_timeout))?
                .map_err(|e| Error::transport(base, e))?;
            return Err(Error::from_answer(status, &body));
        }
        let is_sse = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
            });
        if !is_sse {
            return Err(Error::Protocol {
                status,
                message: "the event stream is not text/event-stream".to_owned(),
            });
        }
        Ok(EventStream {
            response,
            parser: Parser::resuming(last_event_id),
            ready: VecDeque::new(),
            last_event_id: last_event_id.map(str::to_owned),
            idle_timeout,
            base: base.to_owned(),
            finished: false,
        })
    }
}

impl EventStream {
    /// The next event; `Ok(None)` once the server closed the stream. An error (a lost
    /// connection, a silent server, a malformed event) also ends the stream: every later
    /// call answers `Ok(None)`. Reconnect with [`EventStream::last_event_id`].
    ///
    /// Cancel-safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        loop {
            while let Some(block) = self.ready.pop_front() {
                self.last_event_id = block.last_id.clone();
                match block.into_event() {
                    Ok(Some(event)) => return Ok(Some(event)),
                    Ok(None) => {}
                    Err(e) => return Err(self.fail(e)),
                }
            }
            if self.finished {
                return Ok(None);
            }
            let chunk = match tokio::time::timeout(self.idle_timeout, self.response.chunk()).await {
                Err(_) => return Err(self.fail(silent(&self.base, self.idle_timeout))),
                Ok(Err(e)) => {
                    let e = Error::transport(&self.base, e);
                    return Err(self.fail(e));
                }
                Ok(Ok(None)) => {
                    self.finished = true;
                    return Ok(None);
                }
                Ok(Ok(Some(chunk))) => chunk,
            };
            if let Err(e) = self.parser.feed(&chunk, &mut self.ready) {
                return Err(self.fail(e));
            }
        }
    }

    /// The resume point: the id of the last event handed out (or of an id-only block seen
    /// before it), else the id the stream was opened with.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Ends the stream after `err`: nothing after a failure can be trusted to follow on.
    fn fail(&mut self, err: Error) -> Error {
        self.finished = true;
        self.ready.clear();
        err
    }
}

/// The error for a server that sent nothing for `idle`.
fn silent(base: &str, idle: Duration) -> Error {
    Error::Transport(format!(
        "the event stream from {base} was silent for {} s (not even a keep-alive); \
         it counts as lost",
        idle.as_secs_f64()
    ))
}

fn stream_error(message: String) -> Error {
    Error::Protocol {
        status: 200,
        message,
    }
}

/// One event block, as ended by a blank line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Block {
    /// The stream's last event id once this block is dispatched.
    pub(crate) last_id: Option<String>,
    /// The `event:` field; empty when absent.
    pub(crate) kind: String,
    /// The joined `data:` lines, or `None` when the block had none.
    pub(crate) data: Option<String>,
}

impl Block {
    /// The event this block carries, or `None` when there is none to deliver (no data, or
    /// an event type this client does not know).
    fn into_event(self) -> Result<Option<Event>, Error> {
        let kind = match self.kind.as_str() {
            "created" => EventKind::Created,
            "updated" => EventKind::Updated,
            "ended" => EventKind::Ended,
            "reset" => EventKind::Reset,
            _ => return Ok(None),
        };
        let mut event = Event {
            event_id: self.last_id,
            kind,
            session: None,
            reset: None,
        };
        if kind == EventKind::Reset {
            // Lenient: whatever its data, a reset means "drop everything".
            event.reset = self.data.and_then(|d| serde_json::from_str(&d).ok());
            return Ok(Some(event));
        }
        let Some(data) = self.data else {
            return Ok(None);
        };
        let session = serde_json::from_str(&data).map_err(|e| Error::bad_json(200, &e))?;
        event.session = Some(session);
        Ok(Some(event))
    }
}

/// The `text/event-stream` line parser: bytes in, [`Block`]s out. Pure, so that every
/// edge case is tested without a network.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    /// The bytes of the line being read.
    line: Vec<u8>,
    /// The last line ended with CR: an LF right after it belongs to the same line ending.
    after_cr: bool,
    /// At least one line was read, so a byte-order mark can no longer appear.
    seen_line: bool,
    /// The current block has at least one known field, so a blank line dispatches it.
    in_block: bool,
    /// The current block's `event:` value.
    kind: String,
    /// The current block's `data:` lines, each followed by `\n`.
    data: String,
    /// The current block has had a `data:` line.
    has_data: bool,
    /// The last event id buffer; it carries over from block to block.
    last_id: Option<String>,
}

impl Parser {
    /// A parser for a stream opened with `last_event_id`: blocks without an `id:` carry
    /// it, as the id buffer carries over reconnections.
    pub(crate) fn resuming(last_event_id: Option<&str>) -> Parser {
        Parser {
            last_id: last_event_id.map(str::to_owned),
            ..Parser::default()
        }
    }

    /// Reads `bytes`, appending each completed block to `out`.
    pub(crate) fn feed(
        &mut self,
        mut bytes: &[u8],
        out: &mut VecDeque<Block>,
    ) -> Result<(), Error> {
        while !bytes.is_empty() {
            if std::mem::take(&mut self.after_cr) && bytes.first() == Some(&b'\n') {
                bytes = &bytes[1..];
                continue;
            }
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(end) => {
                    self.extend_line(&bytes[..end])?;
                    self.after_cr = bytes.get(end) == Some(&b'\r');
                    bytes = &bytes[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.process(&line, out)?;
                    self.line = line;
                    self.line.clear();
                }
                None => {
                    self.extend_line(bytes)?;
                    bytes = &[];
                }
            }
        }
        Ok(())
    }

    fn extend_line(&mut self, part: &[u8]) -> Result<(), Error> {
        if self.line.len() + part.len() > MAX_LINE {
            return Err(stream_error(format!(
                "the event stream sent a line longer than {MAX_LINE} bytes"
            )));
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    /// Handles one complete line.
    fn process(&mut self, mut line: &[u8], out: &mut VecDeque<Block>) -> Result<(), Error> {
        if !std::mem::replace(&mut self.seen_line, true) {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line.first() == Some(&b':') {
            return Ok(());
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => {
                self.kind = value.to_owned();
                self.in_block = true;
            }
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_DATA {
                    return Err(stream_error(format!(
                        "the event stream sent an event with more than {MAX_DATA} bytes of data"
                    )));
                }
                self.data.push_str(value);
                self.data.push('\n');
                self.has_data = true;
                self.in_block = true;
            }
            "id" if !value.contains('\0') => {
                self.last_id = (!value.is_empty()).then(|| value.to_owned());
                self.in_block = true;
            }
            _ => {}
        }
        Ok(())
    }

    /// A blank line: hands out the current block, if it had any field.
    fn dispatch(&mut self, out: &mut VecDeque<Block>) {
        if !std::mem::take(&mut self.in_block) {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        let data = std::mem::take(&mut self.has_data).then(|| {
            data.pop();
            data
        });
        out.push_back(Block {
            last_id: self.last_id.clone(),
            kind: std::mem::take(&mut self.kind),
            data,
        });
    }
}

#[cfg(test)]
mod tests;
