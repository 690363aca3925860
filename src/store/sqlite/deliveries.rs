//! Webhook deliveries: claims (leased in memory), attempts, retries, listings.

use super::*;

/// id -> the lease's end (a poll or attempt that never reports frees it then).
#[derive(Default)]
pub(super) struct Leases(std::sync::Mutex<std::collections::HashMap<i64, Millis>>);

impl Leases {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, Millis>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wids leased at `now`, as a JSON array for `NOT IN (SELECT value FROM json_each(?))`.
    /// Taken before the read that uses it starts: a lease given up after this
    /// still excludes its watch (whose write that read may not see), and one
    /// given up before it was given up after its write committed.
    pub(super) fn held(&self, now: Millis) -> String {
        let mut leases = self.lock();
        leases.retain(|_, until| *until > now);
        let mut held = String::with_capacity(2 + leases.len() * 8);
        held.push('[');
        for (i, wid) in leases.keys().enumerate() {
            if i > 0 {
                held.push(',');
            }
            held.push_str(&wid.to_string());
        }
        held.push(']');
        held
    }
}

impl SqliteStore {
    pub(super) async fn claim_due_deliveries(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<DueDelivery>> {
        // Leased in memory like watches (see `SqliteStore::leases`): a claim is a
        // read, so the dispatcher does not queue behind the poll results' writes.
        // INDEXED BY: left to itself the planner took the status index and sorted
        // every pending delivery on each claim.
        let _one = self.claiming_deliveries.lock().await;
        let mut conn = self.reader.acquire().await?;
        let mut claimed: Vec<DeliveryRecord> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLS} FROM deliveries INDEXED BY deliveries_due
             WHERE status IN ('pending', 'retrying') AND next_attempt_at <= ?1
               AND did NOT IN (SELECT value FROM json_each(?2))
             ORDER BY next_attempt_at LIMIT ?3"
        ))
        .bind(now)
        .bind(self.delivery_leases.held(now))
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?;
        for d in &mut claimed {
            // As a written lease reads.
            d.next_attempt_at = Some(lease_until);
        }
        let eids: Vec<i64> = claimed.iter().map(|d| d.eid).collect();
        let events = sqlx::query_as(
            "SELECT eid, type, body FROM events WHERE eid IN (SELECT value FROM json_each(?1))",
        )
        .bind(serde_json::to_string(&eids).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .fetch_all(&mut *conn)
        .await?;
        drop(conn);
        let due = rows::due_deliveries(claimed, events)?;
        let mut leases = self.delivery_leases.lock();
        for d in &due {
            leases.insert(d.delivery.did, lease_until);
        }
        Ok(due)
    }

    pub(super) async fn record_attempts(&self, results: &[AttemptResult]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for (from, to) in distinct_runs(results.iter().map(|r| r.did)) {
            record_attempt_group(&mut tx, &results[from..to]).await?;
        }
        tx.commit().await?;
        let mut leases = self.delivery_leases.lock();
        for r in results {
            leases.remove(&r.did);
        }
        Ok(())
    }

    pub(super) async fn stop_deliveries_to(&self, url: &str) -> Result<u64> {
        // Those in flight (leased) record their own attempt.
        Ok(sqlx::query(
            "UPDATE deliveries SET status = 'gone', next_attempt_at = NULL
             WHERE url = ?1 AND status IN ('pending', 'retrying') AND leased_until IS NULL
               AND did NOT IN (SELECT value FROM json_each(?2))",
        )
        .bind(url)
        .bind(self.delivery_leases.held(now_ms()))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    pub(super) async fn next_delivery_at(&self) -> Result<Option<Millis>> {
        // Leased deliveries are being sent: not due.
        Ok(sqlx::query_scalar(
            "SELECT next_attempt_at FROM deliveries INDEXED BY deliveries_due
             WHERE status IN ('pending', 'retrying') AND next_attempt_at IS NOT NULL
               AND did NOT IN (SELECT value FROM json_each(?1))
             ORDER BY next_attempt_at LIMIT 1",
        )
        .bind(self.delivery_leases.held(now_ms()))
        .fetch_optional(&self.reader)
        .await?)
    }
}

/// Delivery attempts as two statements whatever their number (see
/// `apply_watch_group`). `results` has each did at most once.
async fn record_attempt_group(
    tx: &mut sqlx::SqliteConnection,
    results: &[AttemptResult],
) -> Result<()> {
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let a = &r.attempt;
            serde_json::json!([
                r.did,
                r.next.as_str(),
                r.next_attempt_at,
                a.status_code,
                a.error,
                a.at,
                a.duration_ms,
                a.response
            ])
        })
        .collect();
    let rows = json_param(&rows)?;
    sqlx::query(concat!(
        rows_as!("a"),
        "INSERT INTO attempts (did, at, status_code, error, duration_ms, response)
         SELECT a.v ->> 0, a.v ->> 5, a.v ->> 3, a.v ->> 4, a.v ->> 6, a.v ->> 7
         FROM a",
    ))
    .bind(&rows)
    .execute(&mut *tx)
    .await?;
    sqlx::query(concat!(
        rows_as!("a"),
        "UPDATE deliveries SET status = a.v ->> 1, attempts = attempts + 1,
            next_attempt_at = a.v ->> 2, leased_until = NULL,
            last_status = a.v ->> 3, last_error = a.v ->> 4,
            delivered_at = CASE WHEN a.v ->> 1 = 'delivered' THEN a.v ->> 5 ELSE delivered_at END
         FROM a
         WHERE deliveries.did = a.v ->> 0",
    ))
    .bind(&rows)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
