//! Webhook deliveries: claims, attempts, retries, listings.

use super::*;

impl PgStore {
    pub(super) async fn claim_due_deliveries(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<DueDelivery>> {
        let mut tx = self.pool.begin().await?;
        let claimed: Vec<DeliveryRecord> = sqlx::query_as(&format!(
                "UPDATE deliveries SET next_attempt_at = $2, leased_until = $2
                 WHERE did IN (SELECT did FROM deliveries WHERE status IN ('pending', 'retrying') AND next_attempt_at <= $1
                               ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING {DELIVERY_COLS}"
            ))
            .bind(now)
            .bind(lease_until)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?;
        let eids: Vec<i64> = claimed.iter().map(|d| d.eid).collect();
        let events = sqlx::query_as("SELECT eid, type, body FROM events WHERE eid = ANY($1)")
            .bind(&eids)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows::due_deliveries(claimed, events)
    }

    pub(super) async fn record_attempts(&self, results: &[AttemptResult]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for r in results {
            let a = &r.attempt;
            sqlx::query(
                "INSERT INTO attempts (did, at, status_code, error, duration_ms, response) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(r.did)
            .bind(a.at)
            .bind(a.status_code)
            .bind(&a.error)
            .bind(a.duration_ms)
            .bind(&a.response)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE deliveries SET status = $2, attempts = attempts + 1, next_attempt_at = $3, leased_until = NULL,
                    last_status = $4, last_error = $5,
                    delivered_at = CASE WHEN $2 = 'delivered' THEN $6 ELSE delivered_at END
                 WHERE did = $1",
            )
            .bind(r.did)
            .bind(r.next.as_str())
            .bind(r.next_attempt_at)
            .bind(a.status_code)
            .bind(&a.error)
            .bind(a.at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn stop_deliveries_to(&self, url: &str) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE deliveries SET status = 'gone', next_attempt_at = NULL
             WHERE url = $1 AND status IN ('pending', 'retrying') AND leased_until IS NULL",
        )
        .bind(url)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub(super) async fn next_delivery_at(&self) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM deliveries WHERE status IN ('pending', 'retrying')",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}
