//! Poll results: those of watches that keep running wait in the schedule for a
//! checkpoint; outcomes are written at once, with their events and deliveries.

use super::*;

/// Running watches whose changed state may be held in memory: a quarter of them,
/// at least HELD_MIN and at most HELD_MAX (about 450 bytes each; see
/// `apply_watch_updates`).
const HELD_MIN: usize = 5_000;
const HELD_MAX: usize = 50_000;

/// How many held state changes `running` watches may have before they are written.
fn held_bound(running: usize) -> usize {
    (running / 4).clamp(HELD_MIN, HELD_MAX)
}

/// Note `u` in the schedule if it may wait there for a checkpoint (a watch that
/// keeps running in the generation claimed, no event): whether it applied.
/// `None`: it is to be written now.
fn note_held(schedule: &mut Schedule, u: &WatchUpdate) -> Option<bool> {
    (u.event.is_none() && schedule.holds(&u.record)).then(|| schedule.note(&u.record))
}

impl SqliteStore {
    /// See [`Store::hold`]: a result the schedule can hold is noted there, and the
    /// watch kept whole for its next claim.
    pub(super) fn hold(&self, update: WatchUpdate) -> Hold {
        let mut schedule = self.schedule();
        // Past the bound of held state changes the writer's path writes them.
        if schedule.held() >= held_bound(schedule.len()) {
            return Hold::Declined(update);
        }
        let Some(applied) = note_held(&mut schedule, &update) else {
            return Hold::Declined(update);
        };
        if applied {
            schedule.keep(update.record);
        }
        if schedule.unwritten_len() > self.unwritten_bound {
            self.checkpoint_wanted.notify_one();
        }
        Hold::Applied(applied)
    }

    pub(super) async fn apply_watch_updates(&self, updates: &[WatchUpdate]) -> Result<Vec<bool>> {
        let mut applied = vec![false; updates.len()];
        // Results of watches that keep running stay in the schedule (the next
        // checkpoint writes them); outcomes are written now, in order.
        let mut write: Vec<&WatchUpdate> = Vec::new();
        let mut written = Vec::new();
        let (too_many, waiting_too_many) = {
            let mut schedule = self.schedule();
            let mut queued = std::collections::HashSet::new();
            for (i, u) in updates.iter().enumerate() {
                // Once a watch has a result to write, its later ones in this batch
                // are written too, after it.
                let held = (!queued.contains(&u.record.wid))
                    .then(|| note_held(&mut schedule, u))
                    .flatten();
                match held {
                    Some(ok) => applied[i] = ok,
                    None => {
                        queued.insert(u.record.wid);
                        write.push(u);
                        written.push(i);
                    }
                }
            }
            // Held state changes are bounded (HELD_MIN, HELD_MAX). Past that they are
            // written now, in rowid order. The rest waits for the checkpoint loop,
            // which is asked to come early past `unwritten_bound` (it writes in chunks
            // between other writes; writing here would stop every poll result behind it).
            (
                schedule.held() > held_bound(schedule.len()),
                schedule.unwritten_len() > self.unwritten_bound,
            )
        };
        if waiting_too_many {
            self.checkpoint_wanted.notify_one();
        }
        // A failure keeps them held (and is this batch's only if its own write fails).
        if too_many {
            if let Err(e) = self.write_unwritten(true).await {
                tracing::warn!(error = %e, "could not write the state changes held in memory; keeping them");
            }
        }
        if write.is_empty() {
            return Ok(applied);
        }
        let mut done = vec![false; write.len()];
        let mut tx = self.writer.begin().await?;
        for (from, to) in distinct_runs(write.iter().map(|u| u.record.wid)) {
            apply_watch_group(&mut tx, &write[from..to], &mut done[from..to]).await?;
        }
        tx.commit().await?;
        // Only now: a claim must not see the watch free before its new values.
        let mut schedule = self.schedule();
        for ((u, ok), i) in write.iter().zip(done).zip(written) {
            applied[i] = ok;
            if !ok {
                continue;
            }
            match u.record.outcome {
                Some(_) => schedule.remove(u.record.wid),
                None => schedule.written(u.record.wid, u.record.next_poll_at),
            }
        }
        Ok(applied)
    }
}

/// Poll results as a few statements whatever their number (the updates of
/// watches that keep running, those of watches that end, their events, the
/// events' deliveries), the rows travelling as one JSON array: a statement per row
/// cost a round trip to sqlx's SQLite thread each, and that capped the poll rate
/// (BENCHMARKS.md). `updates` has each wid at most once.
pub(super) async fn apply_watch_group(
    tx: &mut sqlx::SqliteConnection,
    updates: &[&WatchUpdate],
    applied: &mut [bool],
) -> Result<()> {
    let row = |r: &WatchRecord| {
        serde_json::json!([
            r.wid,
            r.generation,
            r.state,
            r.upstream.created,
            r.upstream.started,
            r.upstream.ended,
            json_text(&r.upstream.errors),
            r.last_poll_at,
            r.next_poll_at,
            r.interval_ms,
            r.poll_count,
            r.error_count,
            r.consecutive_errors,
            r.last_error,
            r.not_found_since,
            r.outcome.map(|o| o.as_str()),
            r.outcome_at,
        ])
    };
    let (mut ending, mut running) = (Vec::new(), Vec::new());
    for u in updates {
        match u.record.outcome {
            Some(_) => ending.push(row(&u.record)),
            None => running.push(row(&u.record)),
        }
    }
    // SQLite rewrites every index whose columns, or whose WHERE, name a column the
    // UPDATE sets: setting `outcome` rewrites five of the watches' indexes, setting
    // `state` alone one. A watch that keeps running is updated without the outcome
    // columns: a third of the pages written per state change (BENCHMARKS.md).
    const SET: &str = "state = u.v ->> 2, upstream_created = u.v ->> 3,
            upstream_started = u.v ->> 4, upstream_ended = u.v ->> 5,
            upstream_errors = u.v ->> 6, last_poll_at = u.v ->> 7,
            next_poll_at = u.v ->> 8, interval_ms = u.v ->> 9,
            poll_count = u.v ->> 10, error_count = u.v ->> 11,
            consecutive_errors = u.v ->> 12, last_error = u.v ->> 13,
            not_found_since = u.v ->> 14, leased_until = NULL";
    const WHERE: &str = "FROM u
         WHERE watches.wid = u.v ->> 0 AND watches.generation = u.v ->> 1
           AND watches.outcome IS NULL
         RETURNING watches.wid";
    const ENDS: &str = ", outcome = u.v ->> 15, outcome_at = u.v ->> 16";
    let mut done = std::collections::HashSet::new();
    for (rows, also) in [(running, ""), (ending, ENDS)] {
        if rows.is_empty() {
            continue;
        }
        let wids: Vec<i64> = sqlx::query_scalar(&format!(
            "{}UPDATE watches SET {SET}{also} {WHERE}",
            rows_as!("u")
        ))
        .bind(json_param(&rows)?)
        .fetch_all(&mut *tx)
        .await?;
        done.extend(wids);
    }
    for (u, a) in updates.iter().zip(applied.iter_mut()) {
        *a = done.contains(&u.record.wid);
    }
    let events: Vec<(&WatchRecord, &NewEvent)> = updates
        .iter()
        .zip(applied.iter())
        .filter(|(_, a)| **a)
        .filter_map(|(u, _)| u.event.as_ref().map(|e| (&u.record, e)))
        .collect();
    if events.is_empty() {
        return Ok(());
    }
    let created = |r: &WatchRecord| r.outcome_at.unwrap_or_else(now_ms);
    // Eids are stream positions: from the counter, in this batch's order (the one
    // writer connection makes the read and the update below one step).
    let last: i64 = sqlx::query_scalar("SELECT last FROM event_positions WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    let rows: Vec<serde_json::Value> = events
        .iter()
        .enumerate()
        .map(|(i, (r, e))| {
            serde_json::json!([
                last + 1 + i as i64,
                r.wid,
                r.generation,
                e.event_type,
                e.body,
                created(r)
            ])
        })
        .collect();
    let eids: std::collections::HashMap<i64, i64> = sqlx::query_as(concat!(
        rows_as!("e"),
        "INSERT INTO events (eid, wid, generation, type, body, created_at)
         SELECT e.v ->> 0, e.v ->> 1, e.v ->> 2, e.v ->> 3, e.v ->> 4, e.v ->> 5
         FROM e
         RETURNING wid, eid",
    ))
    .bind(json_param(&rows)?)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    sqlx::query("UPDATE event_positions SET last = ?1 WHERE id = 1")
        .bind(last + events.len() as i64)
        .execute(&mut *tx)
        .await?;
    let mut rows = Vec::new();
    for (r, e) in &events {
        let eid = eids.get(&r.wid).ok_or_else(|| {
            StoreError::Corrupt(format!("no event was stored for watch {}", r.wid))
        })?;
        for d in &e.deliveries {
            rows.push(serde_json::json!([
                eid,
                r.wid,
                new_webhook_id(),
                d.target.as_str(),
                d.url,
                created(r)
            ]));
        }
    }
    if !rows.is_empty() {
        sqlx::query(concat!(
            rows_as!("d"),
            "INSERT INTO deliveries (eid, wid, webhook_id, target, url, status, next_attempt_at, created_at)
             SELECT d.v ->> 0, d.v ->> 1, d.v ->> 2, d.v ->> 3, d.v ->> 4,
                    'pending', d.v ->> 5, d.v ->> 5
             FROM d",
        ))
        .bind(json_param(&rows)?)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
