//! The file itself: refusing one that is not ours, and noticing when the one in
//! use is removed or replaced under the running daemon.

use std::time::Duration;

use super::*;

pub(super) fn unusable(url: &str, e: sqlx::Error) -> StoreError {
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
pub(super) struct FileGuard {
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
    pub(super) fn new(path: std::path::PathBuf) -> FileGuard {
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

    pub(super) fn hook(
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
pub(super) async fn check_is_ours(conn: &mut sqlx::SqliteConnection, url: &str) -> Result<()> {
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
