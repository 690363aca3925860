//! Which running watch is polled next: the schedule in memory, read from the file
//! at start, claims, deadlines, and the spread of overdue polls after a restart.

use super::*;

impl SqliteStore {
    /// Read every running watch's next poll from the file.
    pub(super) async fn load_schedule(&self) -> Result<()> {
        let rows: Vec<(i64, String, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT wid, kind, next_poll_at, deadline FROM watches WHERE outcome IS NULL",
        )
        .fetch_all(&self.reader)
        .await?;
        let mut fresh = Schedule::default();
        let mut kind: Option<Kind> = None;
        for (wid, name, next, deadline) in rows {
            // Rows come in rowid order: neighbours mostly share a kind.
            let k = match kind {
                Some(k) if k.as_str() == name => k,
                _ => name.parse::<Kind>().map_err(StoreError::Corrupt)?,
            };
            kind = Some(k);
            fresh.add(wid, k, next.unwrap_or(0), deadline);
        }
        *self.schedule() = fresh;
        Ok(())
    }

    /// The running watches of `wids`, as the file has them (one JSON value, not
    /// a row each, from SQLite's thread).
    async fn read_running(&self, wids: &[i64]) -> Result<Vec<WatchRecord>> {
        let json: String = sqlx::query_scalar(&format!(
            "SELECT {WATCHES_AS_JSON} FROM watches
             WHERE wid IN (SELECT value FROM json_each(?1)) AND outcome IS NULL"
        ))
        .bind(serde_json::to_string(wids).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .fetch_one(&self.reader)
        .await?;
        rows::watches_from_json(&json)
    }

    pub(super) async fn claim_due_watches_in(
        &self,
        lane: Lane<'_>,
        due_by: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<WatchRecord>> {
        // The watches kept whole since their last poll need no read. In the
        // claim's order, earliest due first: a map keyed by wid, grown and rehashed
        // a record at a time, was 5% of the daemon's CPU at 400 polls/s.
        let (wids, mut found) = {
            let mut schedule = self.schedule();
            let wids = schedule.claim(lane, due_by, limit as usize, lease_until);
            let kept: Vec<Option<WatchRecord>> =
                wids.iter().map(|wid| schedule.take_kept(*wid)).collect();
            (wids, kept)
        };
        let unread: Vec<i64> = wids
            .iter()
            .zip(&found)
            .filter(|(_, w)| w.is_none())
            .map(|(wid, _)| *wid)
            .collect();
        if !unread.is_empty() {
            match self.read_running(&unread).await {
                Ok(read) => {
                    let schedule = self.schedule();
                    let mut read: std::collections::HashMap<i64, WatchRecord> = read
                        .into_iter()
                        .map(|mut w| {
                            schedule.overlay(&mut w);
                            (w.wid, w)
                        })
                        .collect();
                    for (wid, slot) in wids.iter().zip(found.iter_mut()) {
                        if slot.is_none() {
                            *slot = read.remove(wid);
                        }
                    }
                }
                Err(e) => {
                    // Not polled: due again by the time asked for, not when the lease runs out.
                    let mut schedule = self.schedule();
                    for wid in wids {
                        schedule.unclaim(wid, due_by);
                    }
                    return Err(e);
                }
            }
        }
        let mut schedule = self.schedule();
        let mut claimed = Vec::with_capacity(found.len());
        for (wid, w) in wids.into_iter().zip(found) {
            match w {
                Some(mut w) => {
                    schedule.claimed(wid, Some(&w));
                    // As a written lease reads: the poller checks the lease's end before it sends.
                    w.next_poll_at = Some(lease_until);
                    claimed.push(w);
                }
                // Claimed but not running in the file any more (ended meanwhile).
                None => schedule.claimed(wid, None),
            }
        }
        Ok(claimed)
    }

    pub(super) async fn expired_watches(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<WatchRecord>> {
        // The schedule knows every running watch's deadline: ask the file only
        // when one has passed (the poller asks before every claim).
        if self.schedule().first_deadline().is_none_or(|d| d > now) {
            return Ok(Vec::new());
        }
        let found = self.reads().expired_watches(now, limit).await?;
        Ok(self.current(found))
    }

    pub(super) async fn next_wakeup_in(&self, lane: Lane<'_>) -> Result<Option<Millis>> {
        // Claimed watches are being polled: their next poll is not due yet.
        let schedule = self.schedule();
        Ok(match (schedule.next_due(lane), schedule.first_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    pub(super) async fn recover(&self, now: Millis, spread: Millis) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        let moved: Vec<(i64, Millis)> = sqlx::query_as(
            "UPDATE watches SET next_poll_at = ?1 + (abs(random()) % ?2), leased_until = NULL
             WHERE outcome IS NULL AND (next_poll_at <= ?1 OR leased_until IS NOT NULL)
             RETURNING wid, next_poll_at",
        )
        .bind(now)
        .bind(spread.max(1))
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE deliveries SET next_attempt_at = ?1, leased_until = NULL
             WHERE leased_until IS NOT NULL AND status IN ('pending', 'retrying')",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // The schedule was read at `open`: move only what moved in the file.
        let mut schedule = self.schedule();
        for (wid, next) in &moved {
            schedule.due_at(*wid, *next);
        }
        Ok(moved.len() as u64)
    }

    pub(super) async fn count_due(&self, now: Millis) -> Result<u64> {
        // As `recover` sees them: the leases of a stopped daemon are due again too.
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM watches WHERE outcome IS NULL AND (next_poll_at <= ?1 OR leased_until IS NOT NULL)",
        )
        .bind(now)
        .fetch_one(&self.reader)
        .await?;
        Ok(n as u64)
    }
}
