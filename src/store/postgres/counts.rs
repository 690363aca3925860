//! The aggregate for `/v1/status` and `/metrics`.

use super::*;

impl PgStore {
    pub(super) async fn counts(&self, now: Millis) -> Result<Counts> {
        let running_by_state: Vec<(Option<String>, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM watches WHERE outcome IS NULL GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        let ended_by_outcome: Vec<(String, i64)> = sqlx::query_as(
            "SELECT outcome, count(*) FROM watches WHERE outcome IS NOT NULL GROUP BY outcome ORDER BY outcome",
        )
        .fetch_all(&self.pool)
        .await?;
        let overdue: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM watches WHERE outcome IS NULL AND next_poll_at < $1",
        )
        .bind(now - 5_000)
        .fetch_one(&self.pool)
        .await?;
        let oldest: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT kind, job_id, watched_at FROM watches WHERE outcome IS NULL ORDER BY watched_at, wid LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let deliveries_by_status: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(Counts {
            running: running_by_state.iter().map(|(_, n)| n).sum(),
            running_by_state,
            ended_by_outcome,
            overdue,
            oldest_running: oldest
                .map(|(k, id, at)| {
                    Ok::<_, StoreError>((k.parse().map_err(StoreError::Corrupt)?, id, at))
                })
                .transpose()?,
            deliveries_by_status,
        })
    }
}
