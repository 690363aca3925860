//! Reading `GET /v1/events`: a parser of the `text/event-stream` format (the
//! subset of the WHATWG rules a client needs: `event`, `data`, `id`, comments,
//! LF or CRLF line ends) and a stream that resumes with `Last-Event-ID` after a
//! drop. `wait` and `demo` use it; so do the tests.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};

use super::client::Refusal;
use super::{CliError, Client};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// `event:`, or `message` when absent.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// `id:` of this event, if it had one.
    pub id: Option<String>,
}

/// Turns bytes into events as they arrive; bytes may split lines and characters.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    id: Option<String>,
    /// Comment lines seen (without the leading `:`), for those who want them.
    pub comments: Vec<String>,
}

impl Parser {
    /// Feed `bytes`; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(SseEvent {
                        event: self.event.take().unwrap_or_else(|| "message".into()),
                        data: self.data.join("\n"),
                        id: self.id.take(),
                    });
                }
                self.event = None;
                self.data.clear();
                self.id = None;
                continue;
            }
            if let Some(comment) = line.strip_prefix(':') {
                self.comments.push(comment.trim_start().to_string());
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => self.event = Some(value.to_string()),
                "data" => self.data.push(value.to_string()),
                "id" => self.id = Some(value.to_string()),
                _ => {}
            }
        }
        out
    }
}

/// `GET /v1/events` as a sequence of events that survives drops: after an error
/// or the end of a response it connects again with the last id it saw, so no
/// outcome is missed or repeated (within the daemon's retention).
pub struct EventStream {
    client: Client,
    query: Vec<(String, String)>,
    last_id: Option<String>,
    body: Option<futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    parser: Parser,
    ready: std::collections::VecDeque<SseEvent>,
}

/// Connections tried before a new stream gives up: a command line facing a daemon
/// that is not there should say so within seconds.
const FIRST_ATTEMPTS: u32 = 4;
/// Connections tried in a row after a drop before the daemon counts as gone: room
/// for a daemon's restart (about 20 s).
const RECONNECTS: u32 = 8;

impl EventStream {
    /// Connect: once this returns, every event stored from now on will come.
    pub async fn open(
        client: &Client,
        query: &[(&str, &str)],
    ) -> Result<Result<EventStream, Refusal>, CliError> {
        let mut s = EventStream {
            client: client.clone(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            last_id: None,
            body: None,
            parser: Parser::default(),
            ready: Default::default(),
        };
        match s.connect(FIRST_ATTEMPTS).await? {
            Ok(()) => Ok(Ok(s)),
            Err(r) => Ok(Err(r)),
        }
    }

    /// The id of the last event received: where a reconnection resumes.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    async fn connect(&mut self, attempts: u32) -> Result<Result<(), Refusal>, CliError> {
        let mut url = self.client.url(&["v1", "events"]);
        for (k, v) in &self.query {
            url.query_pairs_mut().append_pair(k, v);
        }
        let mut delay = Duration::from_millis(250);
        let mut last = String::new();
        for attempt in 1..=attempts {
            let mut req = self
                .client
                .http()
                .get(url.clone())
                .header(ACCEPT, "text/event-stream");
            if let Some(t) = self.client.token() {
                req = req.header(AUTHORIZATION, t.clone());
            }
            if let Some(id) = self
                .last_id
                .as_deref()
                .and_then(|i| HeaderValue::from_str(i).ok())
            {
                req = req.header("last-event-id", id);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    self.body = Some(r.bytes_stream().boxed());
                    self.parser = Parser::default();
                    return Ok(Ok(()));
                }
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    let body = r.bytes().await.unwrap_or_default();
                    return Ok(Err(super::client::refusal(status, &body)));
                }
                Ok(r) => last = format!("answered {}", r.status()),
                Err(e) if e.is_connect() => {
                    last = format!(
                        "cannot connect to {}: {}",
                        self.client.base(),
                        super::client::chain(&e)
                    )
                }
                Err(e) => last = super::client::chain(&e),
            }
            if attempt < attempts {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        Err(CliError::Unavailable(format!(
            "GET /v1/events: {last} (after {attempts} attempts)"
        )))
    }

    /// The next event, reconnecting as needed; `Err` when the daemon stays away
    /// or refuses the stream.
    pub async fn next(&mut self) -> Result<SseEvent, CliError> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                if e.id.is_some() {
                    self.last_id.clone_from(&e.id);
                }
                return Ok(e);
            }
            let chunk = match self.body.as_mut() {
                Some(body) => body.next().await,
                None => None,
            };
            match chunk {
                Some(Ok(bytes)) => {
                    let events = self.parser.push(&bytes);
                    self.ready.extend(events);
                }
                // The stream ended (the daemon closed it, or went away): resume.
                Some(Err(_)) | None => {
                    self.body = None;
                    if let Err(r) = self.connect(RECONNECTS).await? {
                        return Err(r.into_error("GET /v1/events"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_across_split_chunks_and_line_ends() {
        let mut p = Parser::default();
        let text = ": hello\nretry: 2000\n\nid: 7\nevent: job.failed\r\ndata: {\"a\":\ndata: 1}\n\nevent: job.state_changed\ndata: x\n\n";
        let mut got = Vec::new();
        for chunk in text.as_bytes().chunks(3) {
            got.extend(p.push(chunk));
        }
        assert_eq!(
            got,
            vec![
                SseEvent {
                    event: "job.failed".into(),
                    data: "{\"a\":\n1}".into(),
                    id: Some("7".into()),
                },
                SseEvent {
                    event: "job.state_changed".into(),
                    data: "x".into(),
                    id: None,
                },
            ]
        );
        assert_eq!(p.comments, ["hello"]);
    }
}
