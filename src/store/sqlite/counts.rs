//! The aggregate for `/v1/status` and `/metrics`: the numbers by state, outcome
//! and delivery status are the table `counters`, kept by triggers in the
//! transaction of every write (migration 0005), corrected with the state changes
//! the schedule holds in memory; what is overdue is the schedule's. Nothing here
//! reads the watches or the deliveries row by row.

use super::*;

/// The counters, a row per bucket.
const COUNTERS: &str = "SELECT bucket, n FROM counters";
/// The oldest running watch: the first entry of `watches_running_age`.
const OLDEST: &str = "SELECT kind, job_id, watched_at FROM watches WHERE outcome IS NULL
    ORDER BY watched_at, wid LIMIT 1";

/// The queries [`SqliteStore::counts`] runs (tests read their plans).
pub const COUNT_QUERIES: [&str; 2] = [COUNTERS, OLDEST];

impl SqliteStore {
    pub(super) async fn counts(&self, now: Millis) -> Result<Counts> {
        let buckets: Vec<(String, i64)> = sqlx::query_as(COUNTERS).fetch_all(&self.reader).await?;
        let oldest = sqlx::query_as(OLDEST).fetch_optional(&self.reader).await?;
        // With the state changes held in memory (a quarter of the watches at most).
        let schedule = self.schedule();
        rows::counts(
            buckets,
            schedule.held_states(),
            schedule.overdue(now - OVERDUE_AFTER) as i64,
            oldest,
        )
    }
}
