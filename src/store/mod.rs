//! The persistence port: everything jobwatch keeps goes through [`Store`].
//!
//! One implementation per database (`sqlite` now; PostgreSQL behind the same trait
//! for replicated deployments). The store knows nothing of HTTP or of the upstream:
//! it takes decided values (a watch's new state, an event with its deliveries) and
//! makes them durable, atomically. Times are Unix milliseconds, passed in, so that
//! callers (and tests) own the clock.

pub mod postgres;
pub mod pruner;
mod queries;
mod records;
pub mod replicas;
mod rows;
pub mod schedule;
pub mod sqlite;
pub mod writer;

use std::sync::Arc;

use crate::model::{Kind, Outcome};
pub use records::*;
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

/// A running watch this late for its poll is overdue ([`Counts::overdue`]).
pub const OVERDUE_AFTER: Millis = 5_000;

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

    /// Lease up to `limit` running watches due at or before `due_by` until
    /// `lease_until`, earliest due first (the poller asks a little ahead of now:
    /// see `poller::MAX_STEP_GAP`).
    async fn claim_due_watches(
        &self,
        due_by: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<WatchRecord>> {
        self.claim_due_watches_in(None, due_by, limit, lease_until)
            .await
    }
    /// As [`Store::claim_due_watches`], only of the kinds of `lane` (one
    /// upstream's poller claims its own kinds).
    async fn claim_due_watches_in(
        &self,
        lane: Lane<'_>,
        due_by: Millis,
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
    /// (A store may do other deferred upkeep here: PostgreSQL folds the rows of
    /// its counters.)
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

    /// What `/v1/status` and `/metrics` show, from counters the database keeps
    /// in the transaction of each write: no read of every watch or delivery.
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

/// `impl Store for $store`, each method the store's own method of the same name,
/// written in the file of what it owns (`sqlite/claims.rs`, `postgres/deliveries.rs`,
/// ...), or the query both databases share (`queries.rs`, through the store's
/// `reads()` or `writes()`): one table for every database, so a new method is
/// added to the trait, here, and to each database (or to `queries.rs`). Items
/// after the name (in braces) are the store's overrides of provided methods.
macro_rules! store_impl {
    ($store:ty { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn insert_watches(&self, new: &NewWatches) -> Result<Ingested> { <$store>::insert_watches(self, new).await }
            async fn get_watch(&self, kind: Kind, job_id: &str) -> Result<Option<WatchRecord>> { <$store>::get_watch(self, kind, job_id).await }
            async fn list_watches(&self, filter: &ListFilter, limit: u32, after: Option<Cursor>) -> Result<Vec<WatchRecord>> { <$store>::list_watches(self, filter, limit, after).await }
            async fn cancel_watch(&self, kind: Kind, job_id: &str, now: Millis) -> Result<Cancelled> { <$store>::cancel_watch(self, kind, job_id, now).await }
            async fn claim_due_watches_in(&self, lane: Lane<'_>, due_by: Millis, limit: u32, lease_until: Millis) -> Result<Vec<WatchRecord>> { <$store>::claim_due_watches_in(self, lane, due_by, limit, lease_until).await }
            async fn expired_watches(&self, now: Millis, limit: u32) -> Result<Vec<WatchRecord>> { <$store>::expired_watches(self, now, limit).await }
            async fn next_wakeup_in(&self, lane: Lane<'_>) -> Result<Option<Millis>> { <$store>::next_wakeup_in(self, lane).await }
            async fn recover(&self, now: Millis, spread: Millis) -> Result<u64> { <$store>::recover(self, now, spread).await }
            async fn count_due(&self, now: Millis) -> Result<u64> { <$store>::count_due(self, now).await }
            async fn apply_watch_updates(&self, updates: &[WatchUpdate]) -> Result<Vec<bool>> { <$store>::apply_watch_updates(self, updates).await }
            async fn claim_due_deliveries(&self, now: Millis, limit: u32, lease_until: Millis) -> Result<Vec<DueDelivery>> { <$store>::claim_due_deliveries(self, now, limit, lease_until).await }
            async fn record_attempts(&self, results: &[AttemptResult]) -> Result<()> { <$store>::record_attempts(self, results).await }
            async fn stop_deliveries_to(&self, url: &str) -> Result<u64> { <$store>::stop_deliveries_to(self, url).await }
            async fn deliveries_of_watch(&self, wid: i64, generation: i64) -> Result<Vec<DeliveryRecord>> { <$store>::reads(self).deliveries_of_watch(wid, generation).await }
            async fn list_deliveries(&self, status: Option<DeliveryStatus>, limit: u32, after: Option<i64>) -> Result<Vec<DeliveryRecord>> { <$store>::reads(self).list_deliveries(status, limit, after).await }
            async fn attempts_of(&self, did: i64) -> Result<Vec<AttemptRecord>> { <$store>::reads(self).attempts_of(did).await }
            async fn retry_delivery(&self, did: i64, now: Millis) -> Result<Retried> { <$store>::writes(self).retry_delivery(did, now).await }
            async fn next_delivery_at(&self) -> Result<Option<Millis>> { <$store>::next_delivery_at(self).await }
            async fn event_positions(&self) -> Result<EventPositions> { <$store>::reads(self).event_positions().await }
            async fn events_between(&self, after: i64, upto: i64, filter: &EventFilter, limit: u32) -> Result<Vec<StreamedEvent>> { <$store>::events_between(self, after, upto, filter, limit).await }
            async fn counts(&self, now: Millis) -> Result<Counts> { <$store>::counts(self, now).await }
            async fn load_durations(&self) -> Result<Vec<StoredDurations>> { <$store>::reads(self).load_durations().await }
            async fn save_durations(&self, rows: &[StoredDurations], now: Millis) -> Result<()> { <$store>::writes(self).save_durations(rows, now).await }
            async fn prune(&self, before: Millis, limit: u32) -> Result<u64> { <$store>::prune(self, before, limit).await }
            async fn ping(&self) -> Result<()> { <$store>::ping(self).await }
            async fn close(&self) { <$store>::close(self).await }
            $($own)*
        }
    };
}
use store_impl;

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
