//! The aggregate for `/v1/status` and `/metrics`: the numbers by state, outcome
//! and delivery status are the sums of the table `counters`, to which triggers
//! append the changes of every write (migration 0006); [`PgStore::fold_counters`]
//! folds them into a row per bucket at checkpoints, and when a read finds many.

use super::*;

/// The counters, summed per bucket, with the rows read.
const COUNTERS: &str = "SELECT bucket, sum(n)::bigint, count(*) FROM counters GROUP BY bucket";
/// Running watches due before `$1` and not claimed (claims move the next poll):
/// a range of the partial index `watches_due`.
const OVERDUE: &str = "SELECT count(*) FROM watches WHERE outcome IS NULL AND next_poll_at < $1";
/// The oldest running watch: the first entry of `watches_running_age`.
const OLDEST: &str = "SELECT kind, job_id, watched_at FROM watches WHERE outcome IS NULL
    ORDER BY watched_at, wid LIMIT 1";

/// The queries [`PgStore::counts`] runs (tests read their plans).
pub const COUNT_QUERIES: [&str; 3] = [COUNTERS, OVERDUE, OLDEST];

/// Rows of `counters` past which a read folds them first (a few milliseconds).
const FOLD_PAST: i64 = 2_000;

impl PgStore {
    pub(super) async fn counts(&self, now: Millis) -> Result<Counts> {
        let mut sums: Vec<(String, i64, i64)> =
            sqlx::query_as(COUNTERS).fetch_all(&self.pool).await?;
        if sums.iter().map(|(_, _, rows)| rows).sum::<i64>() > FOLD_PAST {
            // Only an economy: the sums are right either way.
            match self.fold_counters().await {
                Ok(_) => sums = sqlx::query_as(COUNTERS).fetch_all(&self.pool).await?,
                Err(e) => {
                    tracing::warn!(error = %e, "could not fold the counters; summing them as they are")
                }
            }
        }
        let overdue: i64 = sqlx::query_scalar(OVERDUE)
            .bind(now - OVERDUE_AFTER)
            .fetch_one(&self.pool)
            .await?;
        let oldest = sqlx::query_as(OLDEST).fetch_optional(&self.pool).await?;
        let buckets = sums.into_iter().map(|(bucket, n, _)| (bucket, n)).collect();
        rows::counts(buckets, std::iter::empty(), overdue, oldest)
    }

    /// Fold the rows of `counters` into one per bucket, in one statement: a
    /// reader sees the rows before or after, never a part. One replica at a time
    /// (the others skip it); the triggers of other writes only append, so they
    /// never wait for it. Returns the rows left.
    pub(super) async fn fold_counters(&self) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let ours: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.counters'))",
        )
        .fetch_one(&mut *tx)
        .await?;
        if !ours {
            return Ok(0);
        }
        let left = sqlx::query(
            "WITH gone AS (DELETE FROM counters RETURNING bucket, n)
             INSERT INTO counters (bucket, n)
             SELECT bucket, sum(n) FROM gone GROUP BY bucket HAVING sum(n) <> 0",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(left)
    }
}
