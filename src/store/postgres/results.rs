//! Poll results, with the events and deliveries of outcomes, and the counter
//! that gives events their positions.

use super::*;

impl PgStore {
    pub(super) async fn apply_watch_updates(&self, updates: &[WatchUpdate]) -> Result<Vec<bool>> {
        let mut applied = Vec::with_capacity(updates.len());
        let mut tx = self.pool.begin().await?;
        // Before any watch row: every transaction that writes events locks the
        // counter first, so two of them never hold each other's rows (see the
        // migration 0003 for why eids come from it).
        let mut last = if updates.iter().any(|u| u.event.is_some()) {
            Some(lock_event_positions(&mut tx).await?)
        } else {
            None
        };
        let first = last;
        for u in updates {
            let r = &u.record;
            let done = sqlx::query(
                "UPDATE watches SET state = $3, upstream_created = $4, upstream_started = $5, upstream_ended = $6,
                    upstream_errors = $7, outcome = $8, outcome_at = $9, last_poll_at = $10, next_poll_at = $11,
                    interval_ms = $12, poll_count = $13, error_count = $14, consecutive_errors = $15,
                    last_error = $16, not_found_since = $17, leased_until = NULL
                 WHERE wid = $1 AND generation = $2 AND outcome IS NULL",
            )
            .bind(r.wid)
            .bind(r.generation)
            .bind(&r.state)
            .bind(&r.upstream.created)
            .bind(&r.upstream.started)
            .bind(&r.upstream.ended)
            .bind(rows::json_text(&r.upstream.errors))
            .bind(r.outcome.map(|o| o.as_str()))
            .bind(r.outcome_at)
            .bind(r.last_poll_at)
            .bind(r.next_poll_at)
            .bind(r.interval_ms)
            .bind(r.poll_count)
            .bind(r.error_count)
            .bind(r.consecutive_errors)
            .bind(&r.last_error)
            .bind(r.not_found_since)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if done {
                if let (Some(event), Some(last)) = (&u.event, last.as_mut()) {
                    let created_at = r.outcome_at.unwrap_or_else(now_ms);
                    *last += 1;
                    let eid = *last;
                    insert_event(&mut tx, eid, r, event, created_at).await?;
                    for d in &event.deliveries {
                        sqlx::query(
                            "INSERT INTO deliveries (eid, wid, webhook_id, target, url, status, next_attempt_at, created_at)
                             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6)",
                        )
                        .bind(eid)
                        .bind(r.wid)
                        .bind(rows::new_webhook_id())
                        .bind(d.target.as_str())
                        .bind(&d.url)
                        .bind(created_at)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
            applied.push(done);
        }
        if last != first {
            set_event_positions(&mut tx, last).await?;
        }
        tx.commit().await?;
        Ok(applied)
    }
}

/// The newest event's position, locked until the transaction ends: the next
/// events of this transaction take the positions after it.
pub(super) async fn lock_event_positions(tx: &mut sqlx::PgConnection) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT last FROM event_positions WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?,
    )
}

pub(super) async fn set_event_positions(
    tx: &mut sqlx::PgConnection,
    last: Option<i64>,
) -> Result<()> {
    if let Some(last) = last {
        sqlx::query("UPDATE event_positions SET last = $1 WHERE id = 1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

pub(super) async fn insert_event(
    tx: &mut sqlx::PgConnection,
    eid: i64,
    w: &WatchRecord,
    event: &NewEvent,
    created_at: Millis,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (eid, wid, generation, type, body, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(eid)
    .bind(w.wid)
    .bind(w.generation)
    .bind(event.event_type)
    .bind(&event.body)
    .bind(created_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
