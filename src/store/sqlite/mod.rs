//! The SQLite store: one file, WAL, `synchronous = FULL`.
//!
//! Writes go through a pool of exactly one connection, so they are serialised in
//! the process and never meet "database is locked"; reads use their own pool and,
//! thanks to WAL, never wait for writes. A commit is on disk when it returns, so an
//! acknowledged watch, a stored outcome and a queued delivery survive `kill -9` and
//! a power cut alike (see docs/durability.md).

/// The rows bound as `?1` (a JSON array of arrays) as the table `$t`, each row
/// one JSONB value `$t.v` parsed once. `json_each`'s `value` is the row as text,
/// made again and parsed again for every `value ->> k` read of it: with a dozen
/// columns that was most of the cost of a batched write (BENCHMARKS.md, session 7).
macro_rules! rows_as {
    ($t:literal) => {
        concat!(
            "WITH ",
            $t,
            " AS MATERIALIZED (SELECT jsonb(value) AS v FROM json_each(?1)) "
        )
    };
}

mod checkpoints;
mod claims;
mod counts;
mod deliveries;
mod events;
mod file;
mod results;
mod watches;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Sqlite, SqlitePool};

use super::queries;
use super::rows::{
    self, json_text, new_webhook_id, WatchRow, DELIVERY_COLS, WATCHES_AS_JSON, WATCH_COLS,
};
use super::schedule::{Lane, Schedule};
use super::*;
pub use counts::COUNT_QUERIES;
use deliveries::Leases;
use file::{check_is_ours, unusable, FileGuard};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Which running watch is polled next, which are claimed, and the poll
    /// bookkeeping not yet written (see `schedule`): a SQLite file has one daemon,
    /// so a claim writes nothing and neither does a result that changed only that
    /// bookkeeping (BENCHMARKS.md). A restart reads the schedule from the file.
    schedule: std::sync::Mutex<Schedule>,
    /// Leases of claimed deliveries, until their attempt is written (a claim
    /// writes nothing here either).
    delivery_leases: Leases,
    claiming_deliveries: tokio::sync::Mutex<()>,
    /// Watches with poll results in memory past which a checkpoint is wanted
    /// before its time ([`UNWRITTEN_MAX`]), and the signal that asks for it.
    unwritten_bound: usize,
    checkpoint_wanted: tokio::sync::Notify,
}

/// How long a statement waits for a lock another process holds (a backup tool,
/// a `sqlite3` shell): jobwatch's own writes never wait on each other.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write waits for the one writer connection before the request
/// answers 503 `store_unavailable`.
const WRITER_WAIT: Duration = Duration::from_secs(10);

/// SQLite copies the WAL into the file every this many pages (1,000 by default).
/// A page written again before the copy is copied once: at 1,000 pages the copy
/// was about a tenth of the daemon's CPU under load (BENCHMARKS.md).
const WAL_AUTOCHECKPOINT: &str = "10000";

/// Watches whose poll results (bookkeeping, at least) may wait in memory for the
/// timed checkpoint; past this one is wanted at once. Each costs about 80 bytes
/// of hash table, and a table that doubles holds both sizes for a moment: at
/// 1,000,000 running watches polled fast enough that all of them waited, the
/// daemon's peak RSS was 432 MiB (BENCHMARKS.md, session 6). 250,000 keep the
/// table at 2^19 slots (about 42 MB), with room for the results that come in
/// while the early checkpoint runs; below 250,000 running watches the timed
/// checkpoint is the only one.
pub const UNWRITTEN_MAX: usize = 250_000;

/// The WAL is truncated back to this after a checkpoint when a burst grew it.
const JOURNAL_SIZE_LIMIT: &str = "67108864";

impl SqliteStore {
    /// Open (creating if missing) and migrate the database `url` names. The
    /// choices, and what they promise, are in docs/durability.md: WAL,
    /// `synchronous = FULL`, one writer connection, and a guard that notices
    /// when the file is removed or replaced under the running daemon.
    pub async fn open(url: &str) -> Result<SqliteStore> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unusable(format!("store.url {url:?}: {e}")))?
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let path = base.get_filename().to_path_buf();
        // A write-ahead log without its database: the database was deleted after a
        // crash, and starting afresh would silently drop everything it held.
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let wal_len = tokio::fs::metadata(&wal)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if wal_len > 0 && !tokio::fs::try_exists(&path).await.unwrap_or(true) {
            return Err(StoreError::Unusable(format!(
                "{url}: the database file is missing but its write-ahead log {} is there; restore the database file, or remove the -wal file to start with an empty store",
                std::path::Path::new(&wal).display()
            )));
        }
        // Look before touching: an existing file must be a jobwatch database. The
        // look is read-only, so someone else's file is left exactly as it was.
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            let mut probe = base
                .clone()
                .read_only(true)
                .connect()
                .await
                .map_err(|e| unusable(url, e))?;
            let checked = check_is_ours(&mut probe, url).await;
            let _ = probe.close().await;
            checked?;
        }
        let options = base
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT)
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT)
            .pragma("temp_store", "memory");
        // Create and migrate on one connection; the pools never create the file, so
        // a file removed later is an error, not a silent fresh start.
        let mut setup = options
            .clone()
            .create_if_missing(true)
            .connect()
            .await
            .map_err(|e| unusable(url, e))?;
        let migrated = MIGRATOR.run(&mut setup).await;
        let _ = setup.close().await;
        migrated?;

        let guard = Arc::new(FileGuard::new(path));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // No ping before each use: a local file's connection does not die like
            // a socket's, and the ping after each use (below) already catches a
            // failed transaction. Each ping is a round trip to sqlx's SQLite thread.
            .test_before_acquire(false)
            .acquire_timeout(WRITER_WAIT)
            .before_acquire(guard.clone().hook())
            // A COMMIT that fails (a full disk) leaves sqlx's transaction depth out of
            // step with SQLite: the next `begin` would issue a SAVEPOINT inside a
            // transaction that never commits, and writes would be acknowledged that
            // were never written. A connection still in a transaction when it comes
            // back is closed, never reused. The ping first lets a queued ROLLBACK run.
            .after_release(|conn, _| {
                Box::pin(async move {
                    conn.ping().await?;
                    let clean = !conn.is_in_transaction();
                    if !clean {
                        tracing::warn!(
                            "closing a store connection left inside a failed transaction"
                        );
                    }
                    Ok(clean)
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(|e| unusable(url, e))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            // No ping before each use (a round trip to sqlx's SQLite thread per
            // claim): a local file's connection does not die like a socket's, and
            // the file guard checks the file itself.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .before_acquire(guard.hook())
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| unusable(url, e))?;
        let store = SqliteStore {
            writer,
            reader,
            schedule: Default::default(),
            delivery_leases: Leases::default(),
            claiming_deliveries: tokio::sync::Mutex::new(()),
            unwritten_bound: UNWRITTEN_MAX,
            checkpoint_wanted: tokio::sync::Notify::new(),
        };
        store.load_schedule().await?;
        Ok(store)
    }

    /// The same store with another bound than [`UNWRITTEN_MAX`] on the watches
    /// whose poll results wait in memory (tests use a small one).
    pub fn with_unwritten_bound(mut self, bound: usize) -> SqliteStore {
        self.unwritten_bound = bound.max(1);
        self
    }

    /// The queries both databases share, on the pool for reads.
    fn reads(&self) -> queries::Portable<'_, Sqlite> {
        queries::Portable(&self.reader)
    }

    /// The same, on the one writer connection.
    fn writes(&self) -> queries::Portable<'_, Sqlite> {
        queries::Portable(&self.writer)
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches as read from the file, with the poll results not in it yet.
    fn current(&self, mut watches: Vec<WatchRecord>) -> Vec<WatchRecord> {
        let schedule = self.schedule();
        for w in &mut watches {
            schedule.overlay(w);
        }
        watches
    }
}

/// Consecutive runs `[from, to)` of `keys` in which no key repeats. A batch is
/// written with one statement per run (`UPDATE ... FROM json_each`), and such an
/// UPDATE applies only one of several rows that match the same target.
fn distinct_runs(keys: impl Iterator<Item = i64>) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut from = 0;
    let mut n = 0;
    for (i, k) in keys.enumerate() {
        if !seen.insert(k) {
            runs.push((from, i));
            seen.clear();
            seen.insert(k);
            from = i;
        }
        n = i + 1;
    }
    if n > from {
        runs.push((from, n));
    }
    runs
}

/// Names as a JSON array of strings, for `IN (SELECT value FROM json_each(?))`.
fn json_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    serde_json::Value::from(names.collect::<Vec<_>>()).to_string()
}

fn json_param(rows: &[serde_json::Value]) -> Result<String> {
    serde_json::to_string(rows).map_err(|e| StoreError::Corrupt(e.to_string()))
}

super::store_impl!(SqliteStore {
    fn hold(&self, update: WatchUpdate) -> Hold {
        SqliteStore::hold(self, update)
    }

    async fn checkpoint(&self) -> Result<u64> {
        self.write_unwritten(false).await
    }

    async fn checkpoint_wanted(&self) {
        self.checkpoint_wanted.notified().await
    }
});

impl SqliteStore {
    pub(super) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        if let Err(e) = self.checkpoint().await {
            tracing::warn!(error = %e, "could not write the poll results kept in memory at close; the file keeps those of the last checkpoint");
        }
        self.writer.close().await;
        self.reader.close().await;
    }
}
