//! The persistence port: everything jobwatch keeps goes through [`Store`].
//!
//! One implementation per database (`sqlite` now; PostgreSQL behind the same trait
//! for replicated deployments). The store knows nothing of HTTP or of the upstream:
//! it takes decided values (a watch's new state, an event with its deliveries) and
//! makes them durable, atomically. Times are Unix milliseconds, passed in, so that
//! callers (and tests) own the clock.

pub mod postgres;
pub mod pruner;
pub mod replicas;
mod rows;
pub mod schedule;
pub mod sqlite;
pub mod writer;

use std::sync::Arc;

use serde::Serialize;

use crate::model::{Kind, Outcome};
pub use schedule::Lane;

pub type Millis = i64;

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store: {0}")]
    Unusable(String),
    #[error("store: corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    pub did: i64,
    pub eid: i64,
    pub wid: i64,
    pub webhook_id: String,
    pub target: Target,
    pub url: String,
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

#[derive(Debug, Clone, Serialize)]
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

/// One stored event as `GET /v1/events` sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedEvent {
    /// The event's eid: its place in the stream (the SSE `id`).
    pub position: i64,
    pub event_type: String,
    pub kind: String,
    /// The webhook body, exactly as the deliveries send it.
    pub body: String,
}

/// Where the stream of events stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

/// What [`Store::hold`] did with a poll result.
// Declined carries the result back (no allocation on either path).
#[allow(clippy::large_enum_variant)]
pub enum Hold {
    /// Taken; false if the watch ended or changed generation meanwhile.
    Applied(bool),
    /// For [`Store::apply_watch_updates`], through the writer.
    Declined(WatchUpdate),
}

/// Everything jobwatch keeps. Implementations make each method atomic.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Start watching `ids`; durable when this returns.
    async fn insert_watches(&self, new: &NewWatches) -> Result<Ingested>;
    async fn get_watch(&self, kind: Kind, job_id: &str) -> Result<Option<WatchRecord>>;
    async fn list_watches(
        &self,
        filter: &ListFilter,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Vec<WatchRecord>>;
    async fn cancel_watch(&self, kind: Kind, job_id: &str, now: Millis) -> Result<Cancelled>;

    /// Lease up to `limit` running watches due at `now` until `lease_until`.
    async fn claim_due_watches(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<WatchRecord>> {
        self.claim_due_watches_in(None, now, limit, lease_until)
            .await
    }
    /// As [`Store::claim_due_watches`], only of the kinds of `lane` (one
    /// upstream's poller claims its own kinds).
    async fn claim_due_watches_in(
        &self,
        lane: Lane<'_>,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<WatchRecord>>;
    /// Running watches whose deadline is at or before `now` (not leased, read only).
    async fn expired_watches(&self, now: Millis, limit: u32) -> Result<Vec<WatchRecord>>;
    /// The earliest next poll or deadline of a running watch.
    async fn next_wakeup(&self) -> Result<Option<Millis>> {
        self.next_wakeup_in(None).await
    }
    /// The earliest next poll of a running watch of the kinds of `lane`, or
    /// deadline of any running watch.
    async fn next_wakeup_in(&self, lane: Lane<'_>) -> Result<Option<Millis>>;
    /// Called once at start. A single-owner store (SQLite) first releases every
    /// lease that a stopped daemon held (its watches and deliveries are due again);
    /// then the polls of overdue watches are spread over `[now, now + spread)` so a
    /// restart does not poll them in one burst. Returns how many watches moved.
    async fn recover(&self, now: Millis, spread: Millis) -> Result<u64>;
    /// How many running watches are due at `now`.
    async fn count_due(&self, now: Millis) -> Result<u64>;

    /// Apply poll results (and their events) in one transaction. Returns, per
    /// update, whether it applied (false: the watch ended or changed generation meanwhile).
    /// A store may keep the results of watches that keep running (bookkeeping,
    /// state, upstream attributes) in memory until [`Store::checkpoint`], and
    /// show them meanwhile (SQLite does: see `schedule`); outcomes are written
    /// before this returns.
    async fn apply_watch_updates(&self, updates: &[WatchUpdate]) -> Result<Vec<bool>>;
    /// Take one poll result at once, on the caller's thread, if this store keeps
    /// it in memory anyway (a watch that keeps running, no event: see
    /// [`Store::apply_watch_updates`]). At a few hundred polls a second each
    /// result was a batch of its own, and the hop to the writer's task and back
    /// cost more than keeping it (BENCHMARKS.md, session 12).
    fn hold(&self, update: WatchUpdate) -> Hold {
        Hold::Declined(update)
    }
    /// Write the poll results kept in memory; returns how many watches it wrote.
    async fn checkpoint(&self) -> Result<u64> {
        Ok(0)
    }
    /// Resolves when the store holds so many poll results in memory that it
    /// wants a checkpoint before the timed one (never, for a store that holds none).
    async fn checkpoint_wanted(&self) {
        std::future::pending::<()>().await
    }

    async fn claim_due_deliveries(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<DueDelivery>>;
    async fn record_attempts(&self, results: &[AttemptResult]) -> Result<()>;
    /// Make every pending delivery to `url` `gone` (the receiver answered 410).
    async fn stop_deliveries_to(&self, url: &str) -> Result<u64>;
    /// The deliveries of the events of `wid`'s generation `generation`.
    async fn deliveries_of_watch(&self, wid: i64, generation: i64) -> Result<Vec<DeliveryRecord>>;
    async fn list_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: u32,
        after: Option<i64>,
    ) -> Result<Vec<DeliveryRecord>>;
    async fn attempts_of(&self, did: i64) -> Result<Vec<AttemptRecord>>;
    /// Send a dead (or gone) delivery again.
    async fn retry_delivery(&self, did: i64, now: Millis) -> Result<Retried>;
    async fn next_delivery_at(&self) -> Result<Option<Millis>>;

    /// The newest position and the oldest kept (see [`EventPositions`]).
    async fn event_positions(&self) -> Result<EventPositions>;
    /// Up to `limit` events of `filter` with a position in `(after, upto]`,
    /// in position order.
    async fn events_between(
        &self,
        after: i64,
        upto: i64,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<StreamedEvent>>;

    async fn counts(&self, now: Millis) -> Result<Counts>;
    /// Every stored duration summary (read once, at start).
    async fn load_durations(&self) -> Result<Vec<StoredDurations>>;
    /// Store these summaries, each replacing the one of its kind and group.
    async fn save_durations(&self, rows: &[StoredDurations], now: Millis) -> Result<()>;
    /// Delete up to `limit` watches that ended before `before`, with their events,
    /// deliveries and attempts, unless a delivery of theirs is still pending.
    async fn prune(&self, before: Millis, limit: u32) -> Result<u64>;
    /// Does the store answer?
    async fn ping(&self) -> Result<()>;
    /// The replicas sharing this store, when several may (PostgreSQL); `None`
    /// for a store with one owner (SQLite), which keeps each budget whole.
    fn replicas(&self) -> Option<&dyn replicas::ReplicaStore> {
        None
    }
    async fn close(&self);
}

pub type DynStore = Arc<dyn Store>;

/// The event a cancellation is kept as: in the stream, never delivered.
pub fn cancelled_event(w: &WatchRecord) -> NewEvent {
    let event_type = Outcome::Cancelled.stream_type();
    NewEvent {
        event_type,
        body: crate::view::event_body(event_type, w),
        deliveries: Vec::new(),
    }
}

/// Open the store named by `store.url`, creating and migrating it as needed.
pub async fn open(url: &str) -> Result<DynStore> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::open(url).await?))
    } else {
        Err(StoreError::Unusable(format!(
            "store.url {:?} must start with sqlite:// or postgres://",
            redact_url(url)
        )))
    }
}

/// A URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
