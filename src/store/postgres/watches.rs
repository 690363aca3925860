//! What the API asks of watches: start them, read them, list them, cancel them;
//! and forgetting the ended ones past retention.

use super::results::{insert_event, lock_event_positions, set_event_positions};
use super::*;

impl PgStore {
    pub(super) async fn insert_watches(&self, new: &NewWatches) -> Result<Ingested> {
        let started: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO watches (kind, job_id, webhook_url, metadata, watched_at, deadline, next_poll_at, interval_ms)
             SELECT $1, id, $2, $3, $4, $5, $6 + floor(random() * $7)::bigint, $8 FROM unnest($9::text[]) AS id
             ON CONFLICT (kind, job_id) DO UPDATE SET
                generation = watches.generation + 1, webhook_url = excluded.webhook_url, metadata = excluded.metadata,
                watched_at = excluded.watched_at, deadline = excluded.deadline, state = NULL,
                upstream_created = NULL, upstream_started = NULL, upstream_ended = NULL, upstream_errors = NULL,
                outcome = NULL, outcome_at = NULL, last_poll_at = NULL, next_poll_at = excluded.next_poll_at,
                interval_ms = excluded.interval_ms, poll_count = 0, error_count = 0, consecutive_errors = 0,
                last_error = NULL, not_found_since = NULL, leased_until = NULL
             WHERE watches.outcome IS NOT NULL
             RETURNING wid",
        )
        .bind(new.kind.as_str())
        .bind(&new.webhook_url)
        .bind(rows::json_text(&new.metadata))
        .bind(new.now)
        .bind(new.deadline)
        .bind(new.now + new.first_poll_min)
        .bind(new.first_poll_spread.max(1) as f64)
        .bind(new.interval_ms)
        .bind(&new.ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(Ingested::of(new, started.len()))
    }

    pub(super) async fn get_watch(&self, kind: Kind, job_id: &str) -> Result<Option<WatchRecord>> {
        self.reads().get_watch(kind, job_id).await
    }

    pub(super) async fn list_watches(
        &self,
        filter: &ListFilter,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Vec<WatchRecord>> {
        self.reads()
            .list_watches(filter, limit, after, "(watched_at, wid) < ({at}, {wid})")
            .await
    }

    pub(super) async fn cancel_watch(
        &self,
        kind: Kind,
        job_id: &str,
        now: Millis,
    ) -> Result<Cancelled> {
        let mut tx = self.pool.begin().await?;
        // The counter before the watch's row, as every event-writing transaction.
        let last = lock_event_positions(&mut tx).await?;
        let row: Option<WatchRow> = sqlx::query_as(&format!(
            "UPDATE watches SET outcome = 'cancelled', outcome_at = $3, next_poll_at = NULL, leased_until = NULL
             WHERE kind = $1 AND job_id = $2 AND outcome IS NULL RETURNING {WATCH_COLS}"
        ))
        .bind(kind.as_str())
        .bind(job_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let result = match row {
            Some(row) => {
                let w: WatchRecord = row.try_into()?;
                insert_event(&mut tx, last + 1, &w, &cancelled_event(&w), now).await?;
                set_event_positions(&mut tx, Some(last + 1)).await?;
                Cancelled::Now(w)
            }
            None => {
                let row: Option<WatchRow> = sqlx::query_as(&format!(
                    "SELECT {WATCH_COLS} FROM watches WHERE kind = $1 AND job_id = $2"
                ))
                .bind(kind.as_str())
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
                match row {
                    Some(row) => Cancelled::AlreadyEnded(row.try_into()?),
                    None => Cancelled::Unknown,
                }
            }
        };
        tx.commit().await?;
        Ok(result)
    }

    pub(super) async fn prune(&self, before: Millis, limit: u32) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM watches WHERE wid IN (
                SELECT w.wid FROM watches w WHERE w.outcome IS NOT NULL AND w.outcome_at < $1
                AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.wid = w.wid AND d.status IN ('pending', 'retrying'))
                ORDER BY w.outcome_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .bind(before)
        .bind(limit as i64)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
