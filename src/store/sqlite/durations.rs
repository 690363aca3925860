//! What the learned cadence knows of how long jobs take, kept between runs.

use super::queries::Portable;
use super::*;

impl SqliteStore {
    pub(super) async fn load_durations(&self) -> Result<Vec<StoredDurations>> {
        Portable(&self.reader).load_durations().await
    }

    pub(super) async fn save_durations(&self, rows: &[StoredDurations], now: Millis) -> Result<()> {
        Portable(&self.writer).save_durations(rows, now).await
    }
}
