//! Claims of due watches (`FOR UPDATE SKIP LOCKED` and a lease), deadlines, and
//! the spread of overdue polls after a restart.

use super::*;

impl PgStore {
    pub(super) async fn claim_due_watches_in(
        &self,
        lane: Lane<'_>,
        due_by: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<WatchRecord>> {
        // NULL kinds: every kind.
        rows::watches(
            sqlx::query_as(&format!(
                "UPDATE watches SET leased_until = $2, next_poll_at = $2
                 WHERE wid IN (SELECT wid FROM watches WHERE outcome IS NULL AND next_poll_at <= $1
                               AND ($4::text[] IS NULL OR kind = ANY($4))
                               ORDER BY next_poll_at LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING {WATCH_COLS}"
            ))
            .bind(due_by)
            .bind(lease_until)
            .bind(limit as i64)
            .bind(lane_names(lane))
            .fetch_all(&self.pool)
            .await?,
        )
    }

    pub(super) async fn expired_watches(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<WatchRecord>> {
        self.reads().expired_watches(now, limit).await
    }

    pub(super) async fn next_wakeup_in(&self, lane: Lane<'_>) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT LEAST((SELECT min(next_poll_at) FROM watches WHERE outcome IS NULL
                           AND ($1::text[] IS NULL OR kind = ANY($1))),
                          (SELECT min(deadline) FROM watches WHERE outcome IS NULL AND deadline IS NOT NULL))",
        )
        .bind(lane_names(lane))
        .fetch_one(&self.pool)
        .await?)
    }

    pub(super) async fn recover(&self, now: Millis, spread: Millis) -> Result<u64> {
        // Other replicas may hold leases: only spread what is overdue (which
        // includes the leases of a replica that died and ran out).
        Ok(sqlx::query(
            "UPDATE watches SET next_poll_at = $1 + floor(random() * $2)::bigint, leased_until = NULL
             WHERE outcome IS NULL AND next_poll_at <= $1",
        )
        .bind(now)
        .bind(spread.max(1) as f64)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub(super) async fn count_due(&self, now: Millis) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM watches WHERE outcome IS NULL AND next_poll_at <= $1",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }
}

/// The kinds of a lane as a text array parameter (`None`: every kind).
fn lane_names(lane: Lane<'_>) -> Option<Vec<&'static str>> {
    lane.map(|kinds| kinds.iter().map(|k| k.as_str()).collect())
}
