//! The SQLite store: one file, WAL, `synchronous = FULL`.
//!
//! Writes go through a pool of exactly one connection, so they are serialised in
//! the process and never meet "database is locked"; reads use their own pool and,
//! thanks to WAL, never wait for writes. A commit is on disk when it returns, so an
//! acknowledged watch, a stored outcome and a queued delivery survive `kill -9` and
//! a power cut alike (see docs/durability.md).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, FromRow, QueryBuilder, Row, Sqlite, SqlitePool};

use super::rows::{
    json_text, new_webhook_id, stored_durations, AttemptRow, DeliveryRow, WatchRow, DELIVERY_COLS,
    WATCHES_AS_JSON, WATCH_COLS,
};
use super::schedule::{Lane, Schedule, Unwritten};
use super::*;

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

/// id -> the lease's end (a poll or attempt that never reports frees it then).
#[derive(Default)]
struct Leases(std::sync::Mutex<std::collections::HashMap<i64, Millis>>);

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, Millis>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wids leased at `now`, as a JSON array for `NOT IN (SELECT value FROM json_each(?))`.
    /// Taken before the read that uses it starts: a lease given up after this
    /// still excludes its watch (whose write that read may not see), and one
    /// given up before it was given up after its write committed.
    fn held(&self, now: Millis) -> String {
        let mut leases = self.lock();
        leases.retain(|_, until| *until > now);
        let mut held = String::with_capacity(2 + leases.len() * 8);
        held.push('[');
        for (i, wid) in leases.keys().enumerate() {
            if i > 0 {
                held.push(',');
            }
            held.push_str(&wid.to_string());
        }
        held.push(']');
        held
    }
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
/// Watches per checkpoint transaction.
const BOOKKEEPING_CHUNK: usize = 2_000;
/// Running watches whose changed state may be held in memory: a quarter of them,
/// at least HELD_MIN and at most HELD_MAX (about 450 bytes each; see
/// `apply_watch_updates`).
const HELD_MIN: usize = 5_000;
const HELD_MAX: usize = 50_000;

/// How many held state changes `running` watches may have before they are written.
fn held_bound(running: usize) -> usize {
    (running / 4).clamp(HELD_MIN, HELD_MAX)
}

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

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read every running watch's next poll from the file.
    async fn load_schedule(&self) -> Result<()> {
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

    /// Write one chunk of results kept in memory, in one transaction (other
    /// writes wait for the one connection no longer than a chunk). A watch that
    /// ended, changed generation, or has newer bookkeeping in the file (a result
    /// written since this was taken) keeps what the file has.
    async fn write_unwritten_chunk(&self, taken: &[(i64, Unwritten)]) -> Result<u64> {
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
    async fn write_unwritten(&self, held_only: bool) -> Result<u64> {
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

    /// `w` with the poll results that are not in the file yet.
    fn current(&self, mut w: WatchRecord) -> WatchRecord {
        self.schedule().overlay(&mut w);
        w
    }

    fn current_rows(&self, rows: &[SqliteRow]) -> Result<Vec<WatchRecord>> {
        rows.iter()
            .map(|r| Ok(self.current(watch_from_row(r)?)))
            .collect()
    }
}

fn unusable(url: &str, e: sqlx::Error) -> StoreError {
    let not_a_database =
        matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("26"));
    if not_a_database {
        StoreError::Unusable(format!(
            "{url} is not a SQLite database ({e}); point store.url at a new file or at a jobwatch database"
        ))
    } else {
        StoreError::Unusable(format!("cannot open {url}: {e}"))
    }
}

/// Notices when the database file is removed, renamed away or replaced while the
/// daemon runs. In WAL mode SQLite goes on writing into an unlinked file without
/// complaint, and the next start would begin from an empty database: every
/// acknowledgement in between would be a lie. So each connection is checked
/// before each use: no file at the path means the store is unavailable (every
/// request answers 503) until it is back; a different file at the path means
/// the connections opened before it are closed and new ones open the new file.
struct FileGuard {
    path: std::path::PathBuf,
    state: std::sync::Mutex<FileSeen>,
}

struct FileSeen {
    /// Identity of the file at the path when last looked, `None` while it is missing.
    id: Option<(u64, u64)>,
    /// When `id` last changed: connections older than this may have another file open.
    since: std::time::Instant,
}

fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Some((0, 0))
    }
}

impl FileGuard {
    fn new(path: std::path::PathBuf) -> FileGuard {
        FileGuard {
            state: std::sync::Mutex::new(FileSeen {
                id: file_id(&path),
                since: std::time::Instant::now(),
            }),
            path,
        }
    }

    /// May a connection opened `age` ago be used? A `stat` per use: microseconds.
    fn usable(&self, age: Duration) -> bool {
        let id = file_id(&self.path);
        let mut seen = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if id != seen.id {
            let path = self.path.display();
            match (seen.id, id) {
                (_, None) => {
                    tracing::error!(%path, "the database file is gone (removed or renamed); refusing every read and write until it is back")
                }
                (None, Some(_)) => {
                    tracing::warn!(%path, "the database file is back; using it again")
                }
                (Some(_), Some(_)) => {
                    tracing::warn!(%path, "the database file was replaced; reopening it")
                }
            }
            seen.id = id;
            seen.since = std::time::Instant::now();
        }
        seen.id.is_some() && age < seen.since.elapsed()
    }

    fn hook(
        self: Arc<Self>,
    ) -> impl for<'c> Fn(
        &'c mut sqlx::SqliteConnection,
        sqlx::pool::PoolConnectionMetadata,
    ) -> futures::future::BoxFuture<'c, Result<bool, sqlx::Error>>
           + Send
           + Sync
           + 'static {
        move |_, meta| {
            let ok = self.usable(meta.age);
            Box::pin(async move { Ok(ok) })
        }
    }
}

/// Refuse a file that some other program made, or that a newer jobwatch migrated:
/// running on either would corrupt it or misread it.
async fn check_is_ours(conn: &mut sqlx::SqliteConnection, url: &str) -> Result<()> {
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| unusable(url, e))?;
    if tables.is_empty() {
        return Ok(());
    }
    if !tables.iter().any(|t| t == "_sqlx_migrations") {
        return Err(StoreError::Unusable(format!(
            "{url} is not a jobwatch database (it has tables {tables:?} but no jobwatch schema); point store.url at a new file or at a jobwatch database"
        )));
    }
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut *conn)
        .await?;
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(v) = newest.filter(|v| *v > known) {
        return Err(StoreError::Unusable(format!(
            "{url} has schema version {v} from a newer jobwatch; this one knows up to {known}. Run the newer jobwatch, or restore a backup"
        )));
    }
    Ok(())
}

// Rows are mapped by the shapes PostgreSQL uses too (`rows.rs`).
fn watch_from_row(row: &SqliteRow) -> Result<WatchRecord> {
    WatchRecord::try_from(WatchRow::from_row(row)?)
}

fn delivery_from_row(row: &SqliteRow) -> Result<DeliveryRecord> {
    DeliveryRecord::try_from(DeliveryRow::from_row(row)?)
}

fn attempt_from_row(row: &SqliteRow) -> Result<AttemptRecord> {
    Ok(AttemptRow::from_row(row)?.into())
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

/// Poll results as a few statements whatever their number (the updates of
/// watches that keep running, those of watches that end, their events, the
/// events' deliveries), the rows travelling as one JSON array: a statement per row
/// cost a round trip to sqlx's SQLite thread each, and that capped the poll rate
/// (BENCHMARKS.md). `updates` has each wid at most once.
async fn apply_watch_group(
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

/// Delivery attempts as two statements whatever their number (see
/// `apply_watch_group`). `results` has each did at most once.
async fn record_attempt_group(
    tx: &mut sqlx::SqliteConnection,
    results: &[AttemptResult],
) -> Result<()> {
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let a = &r.attempt;
            serde_json::json!([
                r.did,
                r.next.as_str(),
                r.next_attempt_at,
                a.status_code,
                a.error,
                a.at,
                a.duration_ms,
                a.response
            ])
        })
        .collect();
    let rows = json_param(&rows)?;
    sqlx::query(concat!(
        rows_as!("a"),
        "INSERT INTO attempts (did, at, status_code, error, duration_ms, response)
         SELECT a.v ->> 0, a.v ->> 5, a.v ->> 3, a.v ->> 4, a.v ->> 6, a.v ->> 7
         FROM a",
    ))
    .bind(&rows)
    .execute(&mut *tx)
    .await?;
    sqlx::query(concat!(
        rows_as!("a"),
        "UPDATE deliveries SET status = a.v ->> 1, attempts = attempts + 1,
            next_attempt_at = a.v ->> 2, leased_until = NULL,
            last_status = a.v ->> 3, last_error = a.v ->> 4,
            delivered_at = CASE WHEN a.v ->> 1 = 'delivered' THEN a.v ->> 5 ELSE delivered_at END
         FROM a
         WHERE deliveries.did = a.v ->> 0",
    ))
    .bind(&rows)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert_watches(&self, new: &NewWatches) -> Result<Ingested> {
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
        let started = started.len() as u64;
        Ok(Ingested {
            new: started,
            already_watching: new.ids.len() as u64 - started,
        })
    }

    async fn get_watch(&self, kind: Kind, job_id: &str) -> Result<Option<WatchRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {WATCH_COLS} FROM watches WHERE kind = ?1 AND job_id = ?2"
        ))
        .bind(kind.as_str())
        .bind(job_id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref()
            .map(|r| Ok(self.current(watch_from_row(r)?)))
            .transpose()
    }

    async fn list_watches(
        &self,
        filter: &ListFilter,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Vec<WatchRecord>> {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {WATCH_COLS} FROM watches WHERE true"));
        if let Some(kind) = filter.kind {
            q.push(" AND kind = ").push_bind(kind.as_str());
        }
        if let Some(state) = &filter.state {
            // The file must know every state to select by it.
            if self.schedule().held() > 0 {
                self.write_unwritten(true).await?;
            }
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
            q.push(" AND (watched_at < ")
                .push_bind(c.watched_at)
                .push(" OR (watched_at = ")
                .push_bind(c.watched_at)
                .push(" AND wid < ")
                .push_bind(c.wid)
                .push("))");
        }
        q.push(" ORDER BY watched_at DESC, wid DESC LIMIT ")
            .push_bind(limit as i64);
        let rows = q.build().fetch_all(&self.reader).await?;
        self.current_rows(&rows)
    }

    async fn cancel_watch(&self, kind: Kind, job_id: &str, now: Millis) -> Result<Cancelled> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {WATCH_COLS} FROM watches WHERE kind = ?1 AND job_id = ?2"
        ))
        .bind(kind.as_str())
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        let result = match row.as_ref().map(watch_from_row).transpose()? {
            None => Cancelled::Unknown,
            Some(w) if w.outcome.is_some() => Cancelled::AlreadyEnded(w),
            Some(w) => {
                // Written as any ending is, with what polls found that the file
                // does not have yet (its state, its counters).
                let mut w = self.current(w);
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

    async fn claim_due_watches_in(
        &self,
        lane: Lane<'_>,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<WatchRecord>> {
        // The watches kept whole since their last poll need no read.
        let (wids, mut found) = {
            let mut schedule = self.schedule();
            let wids = schedule.claim(lane, now, limit as usize, lease_until);
            let kept: std::collections::HashMap<i64, WatchRecord> = wids
                .iter()
                .filter_map(|wid| schedule.take_kept(*wid).map(|w| (*wid, w)))
                .collect();
            (wids, kept)
        };
        if found.len() < wids.len() {
            let unread: Vec<i64> = wids
                .iter()
                .filter(|wid| !found.contains_key(wid))
                .copied()
                .collect();
            match self.read_running(&unread).await {
                Ok(read) => {
                    let schedule = self.schedule();
                    for mut w in read {
                        schedule.overlay(&mut w);
                        found.insert(w.wid, w);
                    }
                }
                Err(e) => {
                    // Not polled: due again at once rather than when the lease runs out.
                    let mut schedule = self.schedule();
                    for wid in wids {
                        schedule.unclaim(wid, now);
                    }
                    return Err(e);
                }
            }
        }
        // Earliest due first, as the schedule gave them.
        let mut schedule = self.schedule();
        let mut claimed = Vec::with_capacity(found.len());
        for wid in wids {
            match found.remove(&wid) {
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

    async fn expired_watches(&self, now: Millis, limit: u32) -> Result<Vec<WatchRecord>> {
        // The schedule knows every running watch's deadline: ask the file only
        // when one has passed (the poller asks before every claim).
        if self.schedule().first_deadline().is_none_or(|d| d > now) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {WATCH_COLS} FROM watches WHERE outcome IS NULL AND deadline IS NOT NULL AND deadline <= ?1
             ORDER BY deadline LIMIT ?2"
        ))
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        self.current_rows(&rows)
    }

    async fn next_wakeup_in(&self, lane: Lane<'_>) -> Result<Option<Millis>> {
        // Claimed watches are being polled: their next poll is not due yet.
        let schedule = self.schedule();
        Ok(match (schedule.next_due(lane), schedule.first_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn recover(&self, now: Millis, spread: Millis) -> Result<u64> {
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

    async fn count_due(&self, now: Millis) -> Result<u64> {
        // As `recover` sees them: the leases of a stopped daemon are due again too.
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM watches WHERE outcome IS NULL AND (next_poll_at <= ?1 OR leased_until IS NOT NULL)",
        )
        .bind(now)
        .fetch_one(&self.reader)
        .await?;
        Ok(n as u64)
    }

    async fn apply_watch_updates(&self, updates: &[WatchUpdate]) -> Result<Vec<bool>> {
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
                if u.event.is_none() && !queued.contains(&u.record.wid) && schedule.holds(&u.record)
                {
                    applied[i] = schedule.note(&u.record);
                } else {
                    queued.insert(u.record.wid);
                    write.push(u);
                    written.push(i);
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

    fn hold(&self, update: WatchUpdate) -> Hold {
        let mut schedule = self.schedule();
        // Past the bound of held state changes the writer's path writes them.
        if update.event.is_some()
            || !schedule.holds(&update.record)
            || schedule.held() >= held_bound(schedule.len())
        {
            return Hold::Declined(update);
        }
        let applied = schedule.note(&update.record);
        if applied {
            schedule.keep(update.record);
        }
        if schedule.unwritten_len() > self.unwritten_bound {
            self.checkpoint_wanted.notify_one();
        }
        Hold::Applied(applied)
    }

    async fn checkpoint(&self) -> Result<u64> {
        self.write_unwritten(false).await
    }

    async fn checkpoint_wanted(&self) {
        self.checkpoint_wanted.notified().await
    }

    async fn claim_due_deliveries(
        &self,
        now: Millis,
        limit: u32,
        lease_until: Millis,
    ) -> Result<Vec<DueDelivery>> {
        // Leased in memory like watches (see `SqliteStore::leases`): a claim is a
        // read, so the dispatcher does not queue behind the poll results' writes.
        // INDEXED BY: left to itself the planner took the status index and sorted
        // every pending delivery on each claim.
        let _one = self.claiming_deliveries.lock().await;
        let mut conn = self.reader.acquire().await?;
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM deliveries INDEXED BY deliveries_due
             WHERE status IN ('pending', 'retrying') AND next_attempt_at <= ?1
               AND did NOT IN (SELECT value FROM json_each(?2))
             ORDER BY next_attempt_at LIMIT ?3"
        ))
        .bind(now)
        .bind(self.delivery_leases.held(now))
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?;
        let deliveries = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>>>()?;
        let eids: Vec<i64> = deliveries.iter().map(|d| d.eid).collect();
        let events: std::collections::HashMap<i64, (String, String)> = sqlx::query(
            "SELECT eid, type, body FROM events WHERE eid IN (SELECT value FROM json_each(?1))",
        )
        .bind(serde_json::to_string(&eids).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("eid")?, (r.try_get("type")?, r.try_get("body")?))))
        .collect::<Result<_>>()?;
        drop(conn);
        let due = deliveries
            .into_iter()
            .map(|mut d| {
                let (event_type, body) = events.get(&d.eid).cloned().ok_or_else(|| {
                    StoreError::Corrupt(format!("delivery {} has no event {}", d.did, d.eid))
                })?;
                // As a written lease reads.
                d.next_attempt_at = Some(lease_until);
                Ok(DueDelivery {
                    delivery: d,
                    event_type,
                    body,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut leases = self.delivery_leases.lock();
        for d in &due {
            leases.insert(d.delivery.did, lease_until);
        }
        Ok(due)
    }

    async fn record_attempts(&self, results: &[AttemptResult]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for (from, to) in distinct_runs(results.iter().map(|r| r.did)) {
            record_attempt_group(&mut tx, &results[from..to]).await?;
        }
        tx.commit().await?;
        let mut leases = self.delivery_leases.lock();
        for r in results {
            leases.remove(&r.did);
        }
        Ok(())
    }

    async fn stop_deliveries_to(&self, url: &str) -> Result<u64> {
        // Those in flight (leased) record their own attempt.
        Ok(sqlx::query(
            "UPDATE deliveries SET status = 'gone', next_attempt_at = NULL
             WHERE url = ?1 AND status IN ('pending', 'retrying') AND leased_until IS NULL
               AND did NOT IN (SELECT value FROM json_each(?2))",
        )
        .bind(url)
        .bind(self.delivery_leases.held(now_ms()))
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    async fn deliveries_of_watch(&self, wid: i64, generation: i64) -> Result<Vec<DeliveryRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM deliveries WHERE wid = ?1
             AND eid IN (SELECT eid FROM events WHERE wid = ?1 AND generation = ?2) ORDER BY did"
        ))
        .bind(wid)
        .bind(generation)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn list_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: u32,
        after: Option<i64>,
    ) -> Result<Vec<DeliveryRecord>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {DELIVERY_COLS} FROM deliveries WHERE true"
        ));
        if let Some(s) = status {
            q.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(after) = after {
            q.push(" AND did < ").push_bind(after);
        }
        q.push(" ORDER BY did DESC LIMIT ").push_bind(limit as i64);
        let rows = q.build().fetch_all(&self.reader).await?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn attempts_of(&self, did: i64) -> Result<Vec<AttemptRecord>> {
        let rows = sqlx::query("SELECT at, status_code, error, duration_ms, response FROM attempts WHERE did = ?1 ORDER BY aid")
            .bind(did)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn retry_delivery(&self, did: i64, now: Millis) -> Result<Retried> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?2, leased_until = NULL
             WHERE did = ?1 AND status IN ('dead', 'gone') RETURNING {DELIVERY_COLS}"
        ))
        .bind(did)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let result = match row {
            Some(row) => Retried::Now(delivery_from_row(&row)?),
            None => match sqlx::query(&format!(
                "SELECT {DELIVERY_COLS} FROM deliveries WHERE did = ?1"
            ))
            .bind(did)
            .fetch_optional(&mut *tx)
            .await?
            {
                Some(row) => Retried::NotRetryable(delivery_from_row(&row)?),
                None => Retried::Unknown,
            },
        };
        tx.commit().await?;
        Ok(result)
    }

    async fn next_delivery_at(&self) -> Result<Option<Millis>> {
        // Leased deliveries are being sent: not due.
        Ok(sqlx::query_scalar(
            "SELECT next_attempt_at FROM deliveries INDEXED BY deliveries_due
             WHERE status IN ('pending', 'retrying') AND next_attempt_at IS NOT NULL
               AND did NOT IN (SELECT value FROM json_each(?1))
             ORDER BY next_attempt_at LIMIT 1",
        )
        .bind(self.delivery_leases.held(now_ms()))
        .fetch_optional(&self.reader)
        .await?)
    }

    async fn event_positions(&self) -> Result<EventPositions> {
        // One statement: one snapshot of the file.
        let (newest, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT last FROM event_positions WHERE id = 1), (SELECT min(eid) FROM events)",
        )
        .fetch_one(&self.reader)
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
        let types = filter.types.as_ref().map(|t| json_list(t.iter().copied()));
        let kinds = filter
            .kinds
            .as_ref()
            .map(|k| json_list(k.iter().map(|k| k.as_str())));
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT e.eid, e.type, w.kind, e.body FROM events e JOIN watches w ON w.wid = e.wid
             WHERE e.eid > ?1 AND e.eid <= ?2
               AND (?3 IS NULL OR e.type IN (SELECT value FROM json_each(?3)))
               AND (?4 IS NULL OR w.kind IN (SELECT value FROM json_each(?4)))
             ORDER BY e.eid LIMIT ?5",
        )
        .bind(after)
        .bind(upto)
        .bind(types)
        .bind(kinds)
        .bind(limit as i64)
        .fetch_all(&self.reader)
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
        let in_file: Vec<(Option<String>, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM watches WHERE outcome IS NULL GROUP BY state ORDER BY state")
                .fetch_all(&self.reader)
                .await?;
        // With the state changes held in memory (a quarter of the watches at most).
        let mut by_state: std::collections::BTreeMap<Option<String>, i64> =
            in_file.into_iter().collect();
        for (file, now) in self.schedule().held_states() {
            if file != now {
                *by_state.entry(file.clone()).or_default() -= 1;
                *by_state.entry(now.clone()).or_default() += 1;
            }
        }
        let running_by_state: Vec<(Option<String>, i64)> =
            by_state.into_iter().filter(|(_, n)| *n > 0).collect();
        let ended_by_outcome: Vec<(String, i64)> =
            sqlx::query_as("SELECT outcome, count(*) FROM watches WHERE outcome IS NOT NULL GROUP BY outcome ORDER BY outcome")
                .fetch_all(&self.reader)
                .await?;
        let overdue = self.schedule().overdue(now - 5_000) as i64;
        let oldest: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT kind, job_id, watched_at FROM watches WHERE outcome IS NULL ORDER BY watched_at, wid LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        let deliveries_by_status: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.reader)
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
                .fetch_all(&self.reader)
                .await?;
        Ok(stored_durations(rows))
    }

    async fn save_durations(&self, rows: &[StoredDurations], now: Millis) -> Result<()> {
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

    async fn prune(&self, before: Millis, limit: u32) -> Result<u64> {
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

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn close(&self) {
        if let Err(e) = self.checkpoint().await {
            tracing::warn!(error = %e, "could not write the poll results kept in memory at close; the file keeps those of the last checkpoint");
        }
        self.writer.close().await;
        self.reader.close().await;
    }
}
