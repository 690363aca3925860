//! Checkpoints: writing the poll results the schedule keeps in memory, a chunk
//! at a time in rowid order.

use super::schedule::Unwritten;
use super::*;

/// Watches per checkpoint transaction.
const BOOKKEEPING_CHUNK: usize = 2_000;

impl SqliteStore {
    /// Write one chunk of results kept in memory, in one transaction (other
    /// writes wait for the one connection no longer than a chunk). A watch that
    /// ended, changed generation, or has newer bookkeeping in the file (a result
    /// written since this was taken) keeps what the file has.
    pub(super) async fn write_unwritten_chunk(&self, taken: &[(i64, Unwritten)]) -> Result<u64> {
        let (mut book, mut held) = (Vec::new(), Vec::new());
        for (wid, u) in taken {
            let b = &u.book;
            let mut row = vec![
                serde_json::json!(wid),
                b.generation.into(),
                b.last_poll_at.into(),
                b.next_poll_at.into(),
                b.interval_ms.into(),
                b.poll_count.into(),
                b.error_count.into(),
                b.consecutive_errors.into(),
            ];
            match &u.held {
                None => book.push(serde_json::Value::Array(row)),
                Some(h) => {
                    let (state, upstream, last_error, not_found_since) = h.values();
                    row.extend([
                        state.clone().into(),
                        upstream.created.clone().into(),
                        upstream.started.clone().into(),
                        upstream.ended.clone().into(),
                        json_text(&upstream.errors).into(),
                        last_error.clone().into(),
                        not_found_since.into(),
                    ]);
                    held.push(serde_json::Value::Array(row));
                }
            }
        }
        const SET: &str = "last_poll_at = u.v ->> 2, next_poll_at = u.v ->> 3,
                interval_ms = u.v ->> 4, poll_count = u.v ->> 5,
                error_count = u.v ->> 6, consecutive_errors = u.v ->> 7";
        const WHERE: &str = "FROM u
             WHERE watches.wid = u.v ->> 0 AND watches.generation = u.v ->> 1
               AND watches.outcome IS NULL AND watches.poll_count <= u.v ->> 5";
        const SEEN: &str = ", state = u.v ->> 8, upstream_created = u.v ->> 9,
                upstream_started = u.v ->> 10, upstream_ended = u.v ->> 11,
                upstream_errors = u.v ->> 12, last_error = u.v ->> 13,
                not_found_since = u.v ->> 14";
        let mut written = 0;
        let mut tx = self.writer.begin().await?;
        for (rows, also) in [(book, ""), (held, SEEN)] {
            if rows.is_empty() {
                continue;
            }
            written += sqlx::query(&format!(
                "{}UPDATE watches SET {SET}{also} {WHERE}",
                rows_as!("u")
            ))
            .bind(json_param(&rows)?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Write the results kept in memory (`held_only`: only those that hold a
    /// changed state), a chunk at a time in rowid order. Returns how many watches
    /// it wrote.
    pub(super) async fn write_unwritten(&self, held_only: bool) -> Result<u64> {
        let mut written = 0;
        let wids = self.schedule().unwritten_wids(held_only);
        for chunk in wids.chunks(BOOKKEEPING_CHUNK) {
            let taken = self.schedule().take_unwritten(chunk);
            if taken.is_empty() {
                continue;
            }
            match self.write_unwritten_chunk(&taken).await {
                Ok(n) => written += n,
                Err(e) => {
                    self.schedule().restore_unwritten(taken);
                    return Err(e);
                }
            }
        }
        Ok(written)
    }
}
