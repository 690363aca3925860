//! What the API asks of watches: start them, read them, list them, cancel them;
//! and forgetting the ended ones past retention.

use super::results::apply_watch_group;
use super::*;

impl SqliteStore {
    pub(super) async fn insert_watches(&self, new: &NewWatches) -> Result<Ingested> {
        // One statement for the whole request: the ids travel as one JSON array.
        let ids =
            serde_json::to_string(&new.ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.writer.begin().await?;
        let started: Vec<(i64, Millis)> = sqlx::query_as(
            "INSERT INTO watches (kind, job_id, webhook_url, metadata, watched_at, deadline, next_poll_at, interval_ms)
             SELECT ?1, j.value, ?2, ?3, ?4, ?5, ?6 + (abs(random()) % ?7), ?8 FROM json_each(?9) AS j WHERE true
             ON CONFLICT (kind, job_id) DO UPDATE SET
                generation = generation + 1, webhook_url = excluded.webhook_url, metadata = excluded.metadata,
                watched_at = excluded.watched_at, deadline = excluded.deadline, state = NULL,
                upstream_created = NULL, upstream_started = NULL, upstream_ended = NULL, upstream_errors = NULL,
                outcome = NULL, outcome_at = NULL, last_poll_at = NULL, next_poll_at = excluded.next_poll_at,
                interval_ms = excluded.interval_ms, poll_count = 0, error_count = 0, consecutive_errors = 0,
                last_error = NULL, not_found_since = NULL, leased_until = NULL
             WHERE watches.outcome IS NOT NULL
             RETURNING wid, next_poll_at",
        )
        .bind(new.kind.as_str())
        .bind(&new.webhook_url)
        .bind(json_text(&new.metadata))
        .bind(new.now)
        .bind(new.deadline)
        .bind(new.now + new.first_poll_min)
        .bind(new.first_poll_spread.max(1))
        .bind(new.interval_ms)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut schedule = self.schedule();
        for (wid, next) in &started {
            schedule.add(*wid, new.kind, *next, new.deadline);
        }
        Ok(Ingested::of(new, started.len()))
    }

    pub(super) async fn get_watch(&self, kind: Kind, job_id: &str) -> Result<Option<WatchRecord>> {
        let found = self.reads().get_watch(kind, job_id).await?;
        Ok(self.current(found.into_iter().collect()).pop())
    }

    pub(super) async fn list_watches(
        &self,
        filter: &ListFilter,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Vec<WatchRecord>> {
        // The file must know every state to select by it.
        if filter.state.is_some() && self.schedule().held() > 0 {
            self.write_unwritten(true).await?;
        }
        let found = self
            .reads()
            .list_watches(
                filter,
                limit,
                after,
                "(watched_at < {at} OR (watched_at = {at} AND wid < {wid}))",
            )
            .await?;
        Ok(self.current(found))
    }

    pub(super) async fn cancel_watch(
        &self,
        kind: Kind,
        job_id: &str,
        now: Millis,
    ) -> Result<Cancelled> {
        let mut tx = self.writer.begin().await?;
        let row: Option<WatchRow> = sqlx::query_as(&format!(
            "SELECT {WATCH_COLS} FROM watches WHERE kind = ?1 AND job_id = ?2"
        ))
        .bind(kind.as_str())
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        // Written as any ending is, with what polls found that the file does not
        // have yet (its state, its counters).
        let result = match self.current(rows::watches(row)?).pop() {
            None => Cancelled::Unknown,
            Some(w) if w.outcome.is_some() => Cancelled::AlreadyEnded(w),
            Some(mut w) => {
                w.outcome = Some(Outcome::Cancelled);
                w.outcome_at = Some(now);
                w.next_poll_at = None;
                let event = cancelled_event(&w);
                let update = WatchUpdate {
                    record: w,
                    event: Some(event),
                };
                apply_watch_group(&mut tx, &[&update], &mut [false]).await?;
                Cancelled::Now(update.record)
            }
        };
        tx.commit().await?;
        if let Cancelled::Now(w) = &result {
            self.schedule().remove(w.wid);
        }
        Ok(result)
    }

    pub(super) async fn prune(&self, before: Millis, limit: u32) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM watches WHERE wid IN (
                SELECT w.wid FROM watches w WHERE w.outcome IS NOT NULL AND w.outcome_at < ?1
                AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.wid = w.wid AND d.status IN ('pending', 'retrying'))
                ORDER BY w.outcome_at LIMIT ?2)",
        )
        .bind(before)
        .bind(limit as i64)
        .execute(&self.writer)
        .await?
        .rows_affected())
    }
}
