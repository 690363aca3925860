//! The store's records: what goes in and what comes out of [`super::Store`].

use serde::Serialize;

use super::Millis;
use crate::model::{Kind, Outcome};

/// Attributes the upstream reported, stored as given (every one may be missing).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpstreamFields {
    pub created: Option<String>,
    pub started: Option<String>,
    pub ended: Option<String>,
    pub errors: Option<serde_json::Value>,
}

/// One watch, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchRecord {
    pub wid: i64,
    pub kind: Kind,
    pub job_id: String,
    pub generation: i64,
    pub webhook_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub watched_at: Millis,
    pub deadline: Option<Millis>,
    pub state: Option<String>,
    pub upstream: UpstreamFields,
    pub outcome: Option<Outcome>,
    pub outcome_at: Option<Millis>,
    pub last_poll_at: Option<Millis>,
    pub next_poll_at: Option<Millis>,
    pub interval_ms: i64,
    pub poll_count: i64,
    pub error_count: i64,
    pub consecutive_errors: i64,
    pub last_error: Option<String>,
    pub not_found_since: Option<Millis>,
}

impl WatchRecord {
    /// A running watch `wid` (`copy` of job `j{wid}`), never polled, due at 0:
    /// the base that unit tests change what they need of.
    #[cfg(test)]
    pub fn sample(wid: i64) -> WatchRecord {
        WatchRecord {
            wid,
            kind: Kind::COPY,
            job_id: format!("j{wid}"),
            generation: 1,
            webhook_url: None,
            metadata: None,
            watched_at: 0,
            deadline: None,
            state: None,
            upstream: UpstreamFields::default(),
            outcome: None,
            outcome_at: None,
            last_poll_at: None,
            next_poll_at: Some(0),
            interval_ms: 2000,
            poll_count: 0,
            error_count: 0,
            consecutive_errors: 0,
            last_error: None,
            not_found_since: None,
        }
    }
}

/// A POST's worth of new watches: the ids share everything else.
#[derive(Debug, Clone)]
pub struct NewWatches {
    pub kind: Kind,
    /// Distinct, validated ids.
    pub ids: Vec<String>,
    pub webhook_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub deadline: Option<Millis>,
    pub now: Millis,
    /// The first poll falls in `[now + first_poll_min, now + first_poll_min + first_poll_spread)`.
    pub first_poll_min: Millis,
    pub first_poll_spread: Millis,
    pub interval_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ingested {
    /// Watches started by this request (new ids, and new generations of ended ones).
    pub new: u64,
    /// Ids that were already being watched: unchanged.
    pub already_watching: u64,
}

impl Ingested {
    /// The answer to `new`, of whose ids `started` started a watch.
    pub fn of(new: &NewWatches, started: usize) -> Ingested {
        Ingested {
            new: started as u64,
            already_watching: (new.ids.len() - started) as u64,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub kind: Option<Kind>,
    pub state: Option<String>,
    pub outcome: Option<Outcome>,
    /// Only running (`Some(true)`) or only ended (`Some(false)`) watches.
    pub running: Option<bool>,
}

/// Keyset position in the newest-first listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub watched_at: Millis,
    pub wid: i64,
}

impl Cursor {
    pub fn encode(self) -> String {
        format!("{}.{}", self.watched_at, self.wid)
    }
    pub fn decode(s: &str) -> Option<Cursor> {
        let (a, b) = s.split_once('.')?;
        Some(Cursor {
            watched_at: a.parse().ok()?,
            wid: b.parse().ok()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    Now(WatchRecord),
    AlreadyEnded(WatchRecord),
    Unknown,
}

/// Where a delivery goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The watch's own `webhook_url`, signed with `webhooks.signing_secret`.
    Watch,
    /// A configured endpoint (`[[webhooks.endpoints]]`), signed with its own secret.
    Endpoint,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Watch => "watch",
            Target::Endpoint => "endpoint",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub target: Target,
    pub url: String,
}

/// The event of an outcome, written in the same transaction as the outcome.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: &'static str,
    pub body: String,
    pub deliveries: Vec<NewDelivery>,
}

/// A watch's next values after a poll (or a deadline, or a cancellation).
/// Applied only if the watch is still running in the same generation.
#[derive(Debug, Clone)]
pub struct WatchUpdate {
    pub record: WatchRecord,
    pub event: Option<NewEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Retrying,
    Delivered,
    Dead,
    /// The receiver answered 410: nothing more is sent to it for this event.
    Gone,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 5] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Retrying,
        DeliveryStatus::Delivered,
        DeliveryStatus::Dead,
        DeliveryStatus::Gone,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Gone => "gone",
        }
    }
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// Decoded from a row by sqlx (`rows::DELIVERY_COLS`), for both databases.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub did: i64,
    pub eid: i64,
    pub wid: i64,
    pub webhook_id: String,
    #[sqlx(try_from = "String")]
    pub target: Target,
    pub url: String,
    #[sqlx(try_from = "String")]
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: Option<Millis>,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub delivered_at: Option<Millis>,
}

/// A claimed delivery with what it sends.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub delivery: DeliveryRecord,
    pub event_type: String,
    pub body: String,
}

/// Decoded from a row by sqlx (`rows::ATTEMPT_COLS`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AttemptRecord {
    pub at: Millis,
    pub status_code: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub response: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Retried {
    Now(DeliveryRecord),
    /// Only dead and gone deliveries can be sent again; this one is not.
    NotRetryable(DeliveryRecord),
    Unknown,
}

/// What the dispatcher decided after an attempt.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub did: i64,
    pub attempt: AttemptRecord,
    pub next: DeliveryStatus,
    pub next_attempt_at: Option<Millis>,
}

/// One stored event as `GET /v1/events` sends it (decoded from a row by sqlx).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StreamedEvent {
    /// The event's eid: its place in the stream (the SSE `id`).
    pub position: i64,
    pub event_type: String,
    pub kind: String,
    /// The webhook body, exactly as the deliveries send it.
    pub body: String,
}

/// Where the stream of events stands (decoded from [`super::rows::EVENT_POSITIONS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct EventPositions {
    /// The position of the newest event ever written (0 before the first), pruned
    /// or not. Every event up to it is committed: positions are given in commit order.
    pub newest: i64,
    /// The oldest event still kept (`None` when none is).
    pub oldest: Option<i64>,
}

/// Which events a stream wants (`None`: all).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub types: Option<Vec<&'static str>>,
    pub kinds: Option<Vec<Kind>>,
}

/// What the learned cadence knows of one kind's durations (or of one group of a
/// kind: the values of the metadata key `poller.learn_by`), in the stored form
/// of `poller::history::Summary`. The store keeps the bytes; it does not read them.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDurations {
    pub kind: Kind,
    /// `""` for the kind's own summary.
    pub group: String,
    pub summary: Vec<u8>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// (state or null, number) of running watches.
    pub running_by_state: Vec<(Option<String>, i64)>,
    pub ended_by_outcome: Vec<(String, i64)>,
    pub running: i64,
    pub overdue: i64,
    pub oldest_running: Option<(Kind, String, Millis)>,
    pub deliveries_by_status: Vec<(String, i64)>,
}
