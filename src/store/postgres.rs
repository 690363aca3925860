//! The PostgreSQL store, for several replicas sharing one database.
//!
//! Every replica claims due watches and deliveries with `FOR UPDATE SKIP LOCKED`
//! and a lease (the claimed row's next time moves to the lease's end), so each
//! poll and each delivery attempt is made by one replica at a time; a replica that
//! dies simply lets its leases run out. Writes are ordinary transactions.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::rows::{self, AttemptRow, DeliveryRow, WatchRow, DELIVERY_COLS, WATCH_COLS};
use super::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn open(url: &str) -> Result<PgStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unusable(format!("store.url {:?}: {e}", redact_url(url))))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::Unusable(format!("cannot connect to {}: {e}", redact_url(url)))
            })?;
        check_is_ours(&pool, url).await?;
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { pool })
    }

    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn check_is_ours(pool: &PgPool, url: &str) -> Result<()> {
    let has_migrations: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await?;
    if !has_migrations {
        let watches: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'watches')",
        )
        .fetch_one(pool)
        .await?;
        if watches {
            return Err(StoreError::Unusable(format!(
                "{}: the schema has a `watches` table that jobwatch did not make; use another schema",
                redact_url(url)
            )));
        }
        return Ok(());
    }
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(pool)
        .await?;
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(v) = newest.filter(|v| *v > known) {
        return Err(StoreError::Unusable(format!(
            "{} has schema version {v} from a newer jobwatch; this one knows up to {known}",
            redact_url(url)
        )));
    }
    Ok(())
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn insert_watches(&self, new: &NewWatches) -> Result<Ingested> {
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
        let started = started.len() as u64;
        Ok(Ingested {
            new: started,
            already_watching: new.ids.len() as u64 - started,
        })
    }

    async fn get_watch(&self, kind: Kind, job_id: &str) -> Result<Option<WatchRecord>> {
        let row: Option<WatchRow> = sqlx::query_as(&format!(
            "SELECT {WATCH_COLS} FROM watches WHERE kind = $1 AND job_id = $2"
        ))
        .bind(kind.as_str())
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(WatchRecord::try_from).transpose()
    }

    async fn list_watches(
        &self,
        filter: &ListFilter,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Vec<WatchRecord>> {
        let mut q =
            QueryBuilder::<Postgres>::new(format!("SELECT {WATCH_COLS} FROM watches WHERE true"));
        if let Some(kind) = filter.kind {
            q.push(" AND kind = ").push_bind(kind.as_str());
        }
        if let Some(state) = &filter.state {
            q.push(" AND state = ").push_bind(state.clone());
        }
        if let Some(outcome) = filter.outcome {
            q.push(" AND outcome = ").push_bind(outcome.as_str());
        }
        match filter.running {
            Some(true) => {
                q.push(" AND outcome IS NULL");
            }
            Some(false) => {
                q.push(" AND outcome IS NOT NULL");
            }
            None => {}
        }
        if let Some(c) = after {
            q.push(" AND (watched_at, wid) < (")
                .push_bind(c.watched_at)
                .push(", ")
                .push_bind(c.wid)
                .push(")");
        }
        q.push(" ORDER BY watched_at DESC, wid DESC LIMIT ")
            .push_bind(limit as i64);
        rows::watches(q.build_query_as().fetch_all(&self.pool).await?)
    }

    async fn cancel_watch(&self, kind: Kind, job_id: &str, now: Millis) -> Result<Cancelled> {
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

    async fn claim_due_watches_in(
        &self,
        lane: Lane<'_>,
        now: Millis,
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
            .bind(now)
            .bind(lease_until)
            .bind(limit as i64)
            .bind(lane_names(lane))
            .fetch_all(&self.pool)
            .await?,
        )
    }

    async fn expired_watches(&self, now: Millis, limit: u32) -> Result<Vec<WatchRecord>> {
        rows::watches(
            sqlx::query_as(&format!(
                "SELECT {WATCH_COLS} FROM watches WHERE outcome IS NULL AND deadline IS NOT NULL AND deadline <= $1
                 ORDER BY deadline LIMIT $2"
            ))
            .bind(now)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?,
        )
    }

    async fn next_wakeup_in(&self, lane: Lane<'_>) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT LEAST((SELECT min(next_poll_at) FROM watches WHERE outcome IS NULL
                           AND ($1::text[] IS NULL OR kind = ANY($1))),
                          (SELECT min(deadline) FROM watches WHERE outcome IS NULL AND deadline IS NOT NULL))",
        )
        .bind(lane_names(lane))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn recover(&self, now: Millis, spread: Millis) -> Result<u64> {
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

    async fn count_due(&self, now: Millis) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM watches WHERE outcome IS NULL AND next_poll_at <= $1",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    async fn apply_watch_updates(&self, updates: &[WatchUpdate]) -> Result<Vec<bool>> {
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

    async fn claim_due_deliveries(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<DueDelivery>> {
        let mut tx = self.pool.begin().await?;
        let claimed = rows::deliveries(
            sqlx::query_as(&format!(
                "UPDATE deliveries SET next_attempt_at = $2, leased_until = $2
                 WHERE did IN (SELECT did FROM deliveries WHERE status IN ('pending', 'retrying') AND next_attempt_at <= $1
                               ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING {DELIVERY_COLS}"
            ))
            .bind(now)
            .bind(lease_until)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?,
        )?;
        let eids: Vec<i64> = claimed.iter().map(|d| d.eid).collect();
        let events: std::collections::HashMap<i64, (String, String)> =
            sqlx::query_as::<_, (i64, String, String)>(
                "SELECT eid, type, body FROM events WHERE eid = ANY($1)",
            )
            .bind(&eids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(eid, t, b)| (eid, (t, b)))
            .collect();
        tx.commit().await?;
        claimed
            .into_iter()
            .map(|d| {
                let (event_type, body) = events.get(&d.eid).cloned().ok_or_else(|| {
                    StoreError::Corrupt(format!("delivery {} has no event {}", d.did, d.eid))
                })?;
                Ok(DueDelivery {
                    delivery: d,
                    event_type,
                    body,
                })
            })
            .collect()
    }

    async fn record_attempts(&self, results: &[AttemptResult]) -> Result<()> {
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

    async fn stop_deliveries_to(&self, url: &str) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE deliveries SET status = 'gone', next_attempt_at = NULL
             WHERE url = $1 AND status IN ('pending', 'retrying') AND leased_until IS NULL",
        )
        .bind(url)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn deliveries_of_watch(&self, wid: i64, generation: i64) -> Result<Vec<DeliveryRecord>> {
        rows::deliveries(
            sqlx::query_as(&format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE wid = $1
                 AND eid IN (SELECT eid FROM events WHERE wid = $1 AND generation = $2) ORDER BY did"))
                .bind(wid)
                .bind(generation)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn list_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: u32,
        after: Option<i64>,
    ) -> Result<Vec<DeliveryRecord>> {
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {DELIVERY_COLS} FROM deliveries WHERE true"
        ));
        if let Some(s) = status {
            q.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(after) = after {
            q.push(" AND did < ").push_bind(after);
        }
        q.push(" ORDER BY did DESC LIMIT ").push_bind(limit as i64);
        rows::deliveries(
            q.build_query_as::<DeliveryRow>()
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn attempts_of(&self, did: i64) -> Result<Vec<AttemptRecord>> {
        let found: Vec<AttemptRow> = sqlx::query_as(
            "SELECT at, status_code, error, duration_ms, response FROM attempts WHERE did = $1 ORDER BY aid",
        )
        .bind(did)
        .fetch_all(&self.pool)
        .await?;
        Ok(found.into_iter().map(AttemptRecord::from).collect())
    }

    async fn retry_delivery(&self, did: i64, now: Millis) -> Result<Retried> {
        let mut tx = self.pool.begin().await?;
        let row: Option<DeliveryRow> = sqlx::query_as(&format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $2, leased_until = NULL
             WHERE did = $1 AND status IN ('dead', 'gone') RETURNING {DELIVERY_COLS}"
        ))
        .bind(did)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let result = match row {
            Some(row) => Retried::Now(row.try_into()?),
            None => {
                let row: Option<DeliveryRow> = sqlx::query_as(&format!(
                    "SELECT {DELIVERY_COLS} FROM deliveries WHERE did = $1"
                ))
                .bind(did)
                .fetch_optional(&mut *tx)
                .await?;
                match row {
                    Some(row) => Retried::NotRetryable(row.try_into()?),
                    None => Retried::Unknown,
                }
            }
        };
        tx.commit().await?;
        Ok(result)
    }

    async fn next_delivery_at(&self) -> Result<Option<Millis>> {
        Ok(sqlx::query_scalar(
            "SELECT min(next_attempt_at) FROM deliveries WHERE status IN ('pending', 'retrying')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn event_positions(&self) -> Result<EventPositions> {
        // One statement: one snapshot. The counter's committed value is safe to
        // read without its lock: every eid up to it is committed (migration 0003).
        let (newest, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT last FROM event_positions WHERE id = 1), (SELECT min(eid) FROM events)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(EventPositions { newest, oldest })
    }

    async fn events_between(
        &self,
        after: i64,
        upto: i64,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<StreamedEvent>> {
        let types: Option<Vec<&str>> = filter.types.clone();
        let kinds: Option<Vec<&str>> = filter
            .kinds
            .as_ref()
            .map(|k| k.iter().map(|k| k.as_str()).collect());
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT e.eid, e.type, w.kind, e.body FROM events e JOIN watches w ON w.wid = e.wid
             WHERE e.eid > $1 AND e.eid <= $2
               AND ($3::text[] IS NULL OR e.type = ANY($3))
               AND ($4::text[] IS NULL OR w.kind = ANY($4))
             ORDER BY e.eid LIMIT $5",
        )
        .bind(after)
        .bind(upto)
        .bind(types)
        .bind(kinds)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(position, event_type, kind, body)| StreamedEvent {
                position,
                event_type,
                kind,
                body,
            })
            .collect())
    }

    async fn counts(&self, now: Millis) -> Result<Counts> {
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

    async fn load_durations(&self) -> Result<Vec<StoredDurations>> {
        let rows: Vec<(String, String, Vec<u8>)> =
            sqlx::query_as("SELECT kind, grp, summary FROM durations ORDER BY kind, grp")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows::stored_durations(rows))
    }

    async fn save_durations(&self, rows: &[StoredDurations], now: Millis) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO durations (kind, grp, summary, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, grp) DO UPDATE SET summary = excluded.summary, updated_at = excluded.updated_at",
            )
            .bind(r.kind.as_str())
            .bind(&r.group)
            .bind(&r.summary)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn prune(&self, before: Millis, limit: u32) -> Result<u64> {
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

    fn replicas(&self) -> Option<&dyn super::replicas::ReplicaStore> {
        Some(self)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// The newest event's position, locked until the transaction ends: the next
/// events of this transaction take the positions after it.
async fn lock_event_positions(tx: &mut sqlx::PgConnection) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT last FROM event_positions WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?,
    )
}

async fn set_event_positions(tx: &mut sqlx::PgConnection, last: Option<i64>) -> Result<()> {
    if let Some(last) = last {
        sqlx::query("UPDATE event_positions SET last = $1 WHERE id = 1")
            .bind(last)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

async fn insert_event(
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

/// The kinds of a lane as a text array parameter (`None`: every kind).
fn lane_names(lane: Lane<'_>) -> Option<Vec<&'static str>> {
    lane.map(|kinds| kinds.iter().map(|k| k.as_str()).collect())
}
