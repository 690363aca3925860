//! What the learned cadence knows of how long jobs take, kept between runs.

use super::*;

impl SqliteStore {
    pub(super) async fn load_durations(&self) -> Result<Vec<StoredDurations>> {
        let rows: Vec<(String, String, Vec<u8>)> =
            sqlx::query_as("SELECT kind, grp, summary FROM durations ORDER BY kind, grp")
                .fetch_all(&self.reader)
                .await?;
        Ok(stored_durations(rows))
    }

    pub(super) async fn save_durations(&self, rows: &[StoredDurations], now: Millis) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // A handful of rows (a kind and its groups): one statement each, one commit.
        let mut tx = self.writer.begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO durations (kind, grp, summary, updated_at) VALUES (?1, ?2, ?3, ?4)
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
}
