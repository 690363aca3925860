//! The aggregate for `/v1/status` and `/metrics`.

use super::*;

impl SqliteStore {
    pub(super) async fn counts(&self, now: Millis) -> Result<Counts> {
        let in_file: Vec<(Option<String>, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM watches WHERE outcome IS NULL GROUP BY state ORDER BY state")
                .fetch_all(&self.reader)
                .await?;
        // With the state changes held in memory (a quarter of the watches at most).
        let mut by_state: std::collections::BTreeMap<Option<String>, i64> =
            in_file.into_iter().collect();
        for (file, now) in self.schedule().held_states() {
            if file != now {
                *by_state.entry(file.clone()).or_default() -= 1;
                *by_state.entry(now.clone()).or_default() += 1;
            }
        }
        let running_by_state: Vec<(Option<String>, i64)> =
            by_state.into_iter().filter(|(_, n)| *n > 0).collect();
        let ended_by_outcome: Vec<(String, i64)> =
            sqlx::query_as("SELECT outcome, count(*) FROM watches WHERE outcome IS NOT NULL GROUP BY outcome ORDER BY outcome")
                .fetch_all(&self.reader)
                .await?;
        let overdue = self.schedule().overdue(now - 5_000) as i64;
        let oldest: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT kind, job_id, watched_at FROM watches WHERE outcome IS NULL ORDER BY watched_at, wid LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        let deliveries_by_status: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.reader)
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
