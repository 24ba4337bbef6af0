//! A migration's event stream (`GET /v1/migrations/{id}/events`, server-sent events) from the
//! caller's side: [`EventStream`] yields [`MigrationEvent`]s.
//!
//! The stream's format is small (an `event:`, `id:` and `data:` line per event, a blank line
//! after it, `:` comments that keep the connection alive), so it is parsed here over reqwest's
//! body chunks: the crates that parse it bring their own HTTP stack or an async-stream layer
//! for twenty lines of work.

use std::collections::VecDeque;
use std::time::Duration;

use mose_protocol::messages::PhaseEvent;

use crate::client::ClientError;
use crate::tasks::TaskRecord;

/// How long the stream may stay silent: the server sends a keep-alive comment every 15 s, so
/// a longer silence is a dead connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One event of a migration's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum MigrationEvent {
    /// `event: phase`: the task's `events[index]`. A stream starts with every event so far.
    Phase {
        /// Its position in the task's `events`.
        index: usize,
        /// The event.
        event: PhaseEvent,
    },
    /// `event: end`: the task has finished; the stream ends after it.
    End(Box<TaskRecord>),
    /// `event: lagged`: this reader fell behind and missed changes; the stream ends, and the
    /// task's record (`GET /v1/migrations/{id}`) has them all.
    Lagged(String),
}

/// An open event stream.
pub struct EventStream {
    url: String,
    response: reqwest::Response,
    parser: SseParser,
    ready: VecDeque<MigrationEvent>,
}

impl EventStream {
    pub(crate) fn new(url: String, response: reqwest::Response) -> Self {
        EventStream {
            url,
            response,
            parser: SseParser::default(),
            ready: VecDeque::new(),
        }
    }

    /// The next event; `None` once the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<MigrationEvent>, ClientError> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let chunk = tokio::time::timeout(IDLE_TIMEOUT, self.response.chunk())
                .await
                .map_err(|_| ClientError::Unreachable {
                    url: self.url.clone(),
                    reason: format!("no event or keep-alive for {} s", IDLE_TIMEOUT.as_secs()),
                })?
                .map_err(|e| ClientError::Unreachable {
                    url: self.url.clone(),
                    reason: e.to_string(),
                })?;
            let Some(bytes) = chunk else {
                return Ok(None);
            };
            for message in self.parser.feed(&bytes) {
                self.ready.push_back(decode(&self.url, message)?);
            }
        }
    }
}

/// One server-sent event as the wire has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SseMessage {
    event: String,
    id: Option<String>,
    data: String,
}

/// The line parser of the server-sent event format (the HTML standard's, without `retry`).
#[derive(Debug, Default)]
struct SseParser {
    line: Vec<u8>,
    pending: SseMessage,
}

impl SseParser {
    /// Feeds bytes as they arrive; returns the events they completed.
    fn feed(&mut self, bytes: &[u8]) -> Vec<SseMessage> {
        let mut done = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                let text = String::from_utf8_lossy(&line);
                self.line(text.strip_suffix('\r').unwrap_or(&text), &mut done);
            } else {
                self.line.push(b);
            }
        }
        done
    }

    fn line(&mut self, line: &str, done: &mut Vec<SseMessage>) {
        if line.is_empty() {
            let message = std::mem::take(&mut self.pending);
            if !message.event.is_empty() || !message.data.is_empty() {
                done.push(message);
            }
            return;
        }
        if line.starts_with(':') {
            return; // a comment: the keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        let m = &mut self.pending;
        match field {
            "event" => m.event = value.to_string(),
            "id" => m.id = Some(value.to_string()),
            "data" => {
                if !m.data.is_empty() {
                    m.data.push('\n');
                }
                m.data.push_str(value);
            }
            _ => {} // unknown fields are ignored, as the format says
        }
    }
}

fn decode(url: &str, m: SseMessage) -> Result<MigrationEvent, ClientError> {
    let bad = |reason: String| ClientError::Decode {
        url: url.to_string(),
        reason,
    };
    match m.event.as_str() {
        "phase" => {
            let index =
                m.id.as_deref()
                    .and_then(|id| id.parse().ok())
                    .ok_or_else(|| bad(format!("phase event without a numeric id: {m:?}")))?;
            let event = serde_json::from_str(&m.data)
                .map_err(|e| bad(format!("phase event {index}: {e}")))?;
            Ok(MigrationEvent::Phase { index, event })
        }
        "end" => serde_json::from_str(&m.data)
            .map(|r| MigrationEvent::End(Box::new(r)))
            .map_err(|e| bad(format!("end event: {e}"))),
        "lagged" => Ok(MigrationEvent::Lagged(m.data)),
        other => Err(bad(format!("unknown event `{other}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_comments_and_crlf_parse() {
        let mut p = SseParser::default();
        assert!(p.feed(b": keep-alive\n\nevent: pha").is_empty());
        let done = p.feed(b"se\r\nid: 3\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nevent: end\n");
        assert_eq!(
            done,
            [SseMessage {
                event: "phase".into(),
                id: Some("3".into()),
                data: "{\"a\":\n1}".into(),
            }]
        );
        let done = p.feed(b"data:x\n\n");
        assert_eq!(done[0].event, "end");
        assert_eq!(done[0].data, "x", "no space after the colon is fine");
    }

    #[test]
    fn messages_decode_to_events_or_clear_errors() {
        let phase = SseMessage {
            event: "phase".into(),
            id: Some("0".into()),
            data:
                r#"{"task":"m1","agent":"edge1","phase":"checkpoint","status":"started","at_us":5}"#
                    .into(),
        };
        match decode("u", phase.clone()).unwrap() {
            MigrationEvent::Phase { index, event } => {
                assert_eq!((index, event.agent.as_str()), (0, "edge1"));
            }
            other => panic!("{other:?}"),
        }
        let no_id = SseMessage { id: None, ..phase };
        assert!(decode("u", no_id)
            .unwrap_err()
            .to_string()
            .contains("numeric id"));
        let odd = SseMessage {
            event: "odd".into(),
            ..SseMessage::default()
        };
        assert!(decode("u", odd)
            .unwrap_err()
            .to_string()
            .contains("unknown event"));
        let lagged = SseMessage {
            event: "lagged".into(),
            data: "3 missed".into(),
            ..SseMessage::default()
        };
        assert_eq!(
            decode("u", lagged).unwrap(),
            MigrationEvent::Lagged("3 missed".into())
        );
    }
}
