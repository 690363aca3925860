//! Forgets what is past `store.retention`: ended watches, with their events,
//! deliveries and attempts (the store cascades them), once no delivery of theirs
//! is still pending or retrying.
//!
//! Deletes go in small batches, each its own short transaction on the one writer
//! connection, with a pause between them: the poller's and the API's writes queue
//! for that connection too, and must never wait behind a long delete.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{now_ms, DynStore, Millis};

/// Watches per transaction: a few milliseconds of work, whatever the backlog.
pub const BATCH: u32 = 500;
/// Between two batches: room for the writes queued behind one.
pub const PAUSE: Duration = Duration::from_millis(20);
/// The first pass after a start; later passes follow `interval`.
const FIRST_PASS: Duration = Duration::from_secs(10);

pub struct Pruner {
    store: DynStore,
    retention: Duration,
    batch: u32,
    pause: Duration,
}

impl Pruner {
    pub fn new(store: DynStore, retention: Duration) -> Pruner {
        Pruner {
            store,
            retention,
            batch: BATCH,
            pause: PAUSE,
        }
    }

    /// Smaller batches or another pause (tests show that batches interleave).
    pub fn with_batches(mut self, batch: u32, pause: Duration) -> Pruner {
        self.batch = batch.max(1);
        self.pause = pause;
        self
    }

    /// How often the loop looks: a fraction of the retention, between a second
    /// and ten minutes, so that nothing outlives its retention by much.
    pub fn interval(&self) -> Duration {
        (self.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600))
    }

    /// One pass at `now`: delete, batch by batch, every prunable watch that ended
    /// before `now - retention`. Returns how many watches went.
    pub async fn prune_once(&self, now: Millis) -> super::Result<usize> {
        let before = now.saturating_sub(self.retention.as_millis() as Millis);
        let mut total = 0usize;
        loop {
            let n = self.store.prune(before, self.batch).await?;
            total += n as usize;
            if n < self.batch as u64 {
                return Ok(total);
            }
            tokio::time::sleep(self.pause).await;
        }
    }

    /// Prune every `interval()` until `shutdown`. A failed pass is logged and
    /// tried again at the next one: pruning can always wait.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut wait = FIRST_PASS.min(self.interval());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = self.interval();
            // Cancelling mid-pass is safe: each batch is one atomic statement.
            let pass = tokio::select! {
                _ = shutdown.cancelled() => return,
                pass = self.prune_once(now_ms()) => pass,
            };
            match pass {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(
                    pruned,
                    retention_s = self.retention.as_secs(),
                    "pruned ended watches past their retention"
                ),
                Err(e) => tracing::warn!(error = %e, "pruning failed; trying again later"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pruner(retention: Duration) -> (tempfile::TempDir, Pruner) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let store: DynStore =
            Arc::new(super::super::sqlite::SqliteStore::open(&url).await.unwrap());
        (dir, Pruner::new(store, retention))
    }

    #[tokio::test]
    async fn looks_ten_times_per_retention_within_bounds() {
        for (retention, every) in [
            (Duration::from_secs(7 * 86_400), Duration::from_secs(600)),
            (Duration::from_secs(600), Duration::from_secs(60)),
            (Duration::from_secs(2), Duration::from_secs(1)),
        ] {
            let (_dir, p) = pruner(retention).await;
            assert_eq!(p.interval(), every, "{retention:?}");
        }
    }
}
