//! `GET /v1/events`: outcomes (and, when asked, state changes) as Server-Sent Events.
//!
//! An outcome's event is the row the outcome's transaction wrote (the webhook's
//! body; cancellations too, as `job.cancelled`), and its SSE `id` is the row's
//! position, given in commit order (migrations `0003_event_positions`). So a
//! client that reconnects with `Last-Event-ID` gets every event after it that is
//! still kept, each once, across restarts of the daemon. The stream reads the
//! store at the client's pace, a page at a time: a slow client costs a page of
//! memory, never a queue. State changes are live only (storing each would be a
//! write per poll); they carry no `id`, so they never move the resume position,
//! and a stream that falls [`STATE_CHANGES_KEPT`] of them behind is closed with
//! a `stream.closed` event that says so. A client that stops reading altogether
//! is cut off by the listener's write-stall guard (`super::stall`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::error::{ApiError, ApiResult};
use super::SharedState;
use crate::model::{Kind, Outcome};
use crate::store::writer::{StateChange, STATE_CHANGED_EVENT, STATE_CHANGES_KEPT};
use crate::store::{EventFilter, StreamedEvent};

pub fn routes() -> Router<SharedState> {
    Router::new().route("/v1/events", get(events))
}

/// Events read from the store at once: a stream holds at most this many.
const PAGE: u32 = 100;
/// A following stream reads the store at most this often: a burst of commits is
/// one read, not one per commit and stream.
const MIN_READ_GAP: Duration = Duration::from_millis(100);
/// A following stream reads the store this often even when nothing was
/// committed here: other replicas (PostgreSQL) commit events too.
const IDLE_READ: Duration = Duration::from_secs(1);
/// What an `EventSource` waits before it reconnects.
const RETRY: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    types: Option<String>,
    kind: Option<String>,
    follow: Option<bool>,
}

/// Every type a stream may ask for, outcomes first.
fn known_types() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = Outcome::ALL.iter().map(|o| o.stream_type()).collect();
    all.push(STATE_CHANGED_EVENT);
    all
}

/// Outcomes (every type but `job.state_changed` unless asked) as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(
        ("types" = Option<String>, Query, description = "Comma-separated event types to send: job.succeeded, job.failed, job.timed_out, job.not_found, job.rejected, job.cancelled, job.state_changed. Default (absent or empty): every outcome, no state changes."),
        ("kind" = Option<String>, Query, description = "Comma-separated kinds: only events of watches of these kinds. Default: every kind."),
        ("follow" = Option<bool>, Query, description = "false: send what is stored after Last-Event-ID and end (state changes are live only: none). Default true: then keep the stream open and send new events as they are stored."),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this position (the `id` of the last event received). Absent: from now on."),
    ),
    responses(
        (status = 200, description = "A `text/event-stream`. Each outcome is an event whose `event:` is its type, whose `data:` is the webhook body `{\"type\",\"timestamp\",\"data\":{the watch}}`, and whose `id:` is its durable position. `job.state_changed` events (`{\"type\",\"timestamp\",\"previous_state\",\"data\"}`) carry no id. Comments (`:`) keep the connection alive. A `stream.closed` event (`{\"reason\",\"message\"}`; reasons lagged, shutdown, store_unavailable) comes last when the daemon ends the stream; reconnect with Last-Event-ID.", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad filter or Last-Event-ID (codes invalid_query, unknown_type, unknown_kind, invalid_last_event_id, unknown_last_event_id).", body = super::openapi::ErrorBody),
        (status = 503, description = "The store could not complete the request (code store_unavailable).", body = super::openapi::ErrorBody),
    ),
)]
async fn events(
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let known = known_types();
    let mut wants_states = false;
    let mut types: Vec<&'static str> = Vec::new();
    for name in list(q.types.as_deref()) {
        let t = known.iter().find(|k| **k == name).copied().ok_or_else(|| {
            ApiError::bad_request(
                "unknown_type",
                format!(
                    "unknown event type {name:?}: types is a comma-separated list of {}",
                    known.join(", ")
                ),
            )
        })?;
        if t == STATE_CHANGED_EVENT {
            wants_states = true;
        } else if !types.contains(&t) {
            types.push(t);
        }
    }
    let outcome_types = match (types.is_empty(), wants_states) {
        // Nothing named: every outcome.
        (true, false) => None,
        // Only state changes.
        (true, true) => Some(Vec::new()),
        (false, _) => Some(types),
    };
    let kinds = list(q.kind.as_deref())
        .map(|k| state.kind(k))
        .collect::<Result<Vec<Kind>, String>>()
        .map_err(|e| ApiError::bad_request("unknown_kind", e))?;
    let kinds = (!kinds.is_empty()).then_some(kinds);
    let follow = q.follow.unwrap_or(true);

    // Subscribe before reading where the stream starts: a commit in between wakes it.
    let commits = state.signals.events.subscribe();
    let states = (wants_states && follow).then(|| state.signals.states.subscribe());
    let positions = state.store.event_positions().await?;
    let after = match last_event_id(&headers)? {
        None => positions.newest,
        Some(id) if id > positions.newest => {
            return Err(ApiError::bad_request(
                "unknown_last_event_id",
                format!(
                    "Last-Event-ID {id} is after the newest event ({}): it comes from another store; reconnect without it",
                    positions.newest
                ),
            ))
        }
        Some(id) => id,
    };

    let mut first = VecDeque::new();
    first.push_back(
        Event::default()
            .retry(RETRY)
            .comment(format!("jobwatch events after position {after}")),
    );
    // Events pruned past store.retention: say what is missing rather than skip it silently.
    let kept_from = positions.oldest.unwrap_or(positions.newest + 1);
    if after + 1 < kept_from && after < positions.newest {
        first.push_back(Event::default().comment(format!(
            "events {} to {} are no longer kept (store.retention); resuming at {kept_from}",
            after + 1,
            kept_from - 1
        )));
    }
    state.streams.fetch_add(1, Relaxed);
    let tail = Tail {
        filter: EventFilter {
            types: outcome_types,
            kinds: kinds.clone(),
        },
        kinds,
        cursor: after,
        more: true,
        follow,
        done: false,
        pending: first,
        commits,
        states,
        last_read: None,
        open: Open(state),
    };
    let keep_alive = tail.open.0.settings.api.events_keep_alive;
    Ok(Sse::new(futures::stream::unfold(tail, Tail::next))
        .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive")))
}

/// The items of a comma-separated list, trimmed, without empties.
fn list(raw: Option<&str>) -> impl Iterator<Item = &str> {
    raw.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The `Last-Event-ID` header: a position this API gave out (a number >= 0), or none.
fn last_event_id(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(raw) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = raw.to_str().unwrap_or("\u{fffd}").trim();
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<i64>() {
        Ok(id) if id >= 0 => Ok(Some(id)),
        _ => Err(ApiError::bad_request(
            "invalid_last_event_id",
            format!(
                "Last-Event-ID {:?} is not a position this API gave out (the id of an event: a number >= 0)",
                text.chars().take(40).collect::<String>()
            ),
        )),
    }
}

/// Counts the stream among those open (`/v1/status`) until the response drops it,
/// however it ends: the client went away, the daemon closed it, or the listener
/// cut a client that stopped reading.
struct Open(SharedState);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Relaxed);
    }
}

/// One client's stream: where it is, and what it has read but not yet sent.
struct Tail {
    filter: EventFilter,
    kinds: Option<Vec<Kind>>,
    /// Every event up to this position was read (and sent, if it matched).
    cursor: i64,
    /// The store may have events after `cursor`.
    more: bool,
    follow: bool,
    /// Send what is pending, then end.
    done: bool,
    /// At most a page of events (and a few comments).
    pending: VecDeque<Event>,
    commits: watch::Receiver<u64>,
    states: Option<broadcast::Receiver<Arc<StateChange>>>,
    last_read: Option<Instant>,
    open: Open,
}

impl Tail {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Tail)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            if self.more {
                self.read().await;
                continue;
            }
            if !self.follow {
                return None;
            }
            self.wait().await;
        }
    }

    /// Read the next page of the store into `pending`.
    async fn read(&mut self) {
        let state = &self.open.0;
        if let Some(at) = self.last_read {
            tokio::time::sleep_until(at + MIN_READ_GAP).await;
        }
        self.last_read = Some(Instant::now());
        // What this read sees: a commit after here wakes the next wait.
        self.commits.borrow_and_update();
        let read = async {
            let newest = state.store.event_positions().await?.newest;
            let page = state
                .store
                .events_between(self.cursor, newest, &self.filter, PAGE)
                .await?;
            Ok::<_, crate::store::StoreError>((newest, page))
        };
        match read.await {
            Ok((newest, page)) => {
                let full = page.len() >= PAGE as usize;
                if let Some(last) = page.last() {
                    self.cursor = last.position;
                }
                if !full {
                    // Every position up to `newest` is committed and was read.
                    self.cursor = self.cursor.max(newest);
                }
                self.more = full;
                self.pending.extend(page.iter().map(outcome_event));
            }
            Err(e) => {
                tracing::warn!(error = %e, "an event stream could not read the store; closing it");
                self.close(
                    "store_unavailable",
                    "the store does not answer; reconnect with Last-Event-ID shortly",
                );
            }
        }
    }

    /// Until something may be new: a commit, a state change, a while, or shutdown.
    async fn wait(&mut self) {
        let shutdown = self.open.0.shutdown.clone();
        let (states, commits) = (&mut self.states, &mut self.commits);
        let state = async {
            match states {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let woke = tokio::select! {
            _ = shutdown.cancelled() => Woke::Shutdown,
            changed = commits.changed() => if changed.is_ok() { Woke::Commit } else { Woke::Shutdown },
            _ = tokio::time::sleep(IDLE_READ) => Woke::Commit,
            s = state => Woke::State(s),
        };
        match woke {
            Woke::Commit => self.more = true,
            Woke::Shutdown => self.close(
                "shutdown",
                "the daemon is shutting down; reconnect with Last-Event-ID",
            ),
            Woke::State(Ok(change)) => {
                if self.kinds.as_ref().is_none_or(|k| k.contains(&change.kind)) {
                    self.pending.push_back(
                        Event::default()
                            .event(STATE_CHANGED_EVENT)
                            .data(change.body.as_str()),
                    );
                }
            }
            Woke::State(Err(RecvError::Lagged(missed))) => {
                tracing::info!(
                    missed,
                    "closed an event stream that fell behind the state changes"
                );
                self.close(
                    "lagged",
                    &format!("this stream fell more than {STATE_CHANGES_KEPT} state changes behind and missed {missed}; reconnect with Last-Event-ID (outcomes are kept; state changes are live only)"),
                );
            }
            Woke::State(Err(RecvError::Closed)) => self.close(
                "shutdown",
                "the daemon is shutting down; reconnect with Last-Event-ID",
            ),
        }
    }

    /// End the stream with a last event that says why.
    fn close(&mut self, reason: &str, message: &str) {
        crate::metrics::event_stream_closed(reason);
        self.pending.push_back(
            Event::default()
                .event("stream.closed")
                .data(json!({"reason": reason, "message": message}).to_string()),
        );
        self.done = true;
    }
}

enum Woke {
    Commit,
    Shutdown,
    State(Result<Arc<StateChange>, RecvError>),
}

fn outcome_event(e: &StreamedEvent) -> Event {
    Event::default()
        .id(e.position.to_string())
        .event(e.event_type.as_str())
        .data(e.body.as_str())
}
