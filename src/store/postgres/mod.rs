//! The PostgreSQL store, for several replicas sharing one database.
//!
//! Every replica claims due watches and deliveries with `FOR UPDATE SKIP LOCKED`
//! and a lease (the claimed row's next time moves to the lease's end), so each
//! poll and each delivery attempt is made by one replica at a time; a replica that
//! dies simply lets its leases run out. Writes are ordinary transactions.

mod claims;
mod counts;
mod deliveries;
mod events;
mod results;
mod watches;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::queries;
use super::rows::{self, WatchRow, DELIVERY_COLS, WATCH_COLS};
use super::*;
pub use counts::COUNT_QUERIES;

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

    /// The queries both databases share (reads and writes alike on the pool).
    fn reads(&self) -> queries::Portable<'_, Postgres> {
        queries::Portable(&self.pool)
    }

    fn writes(&self) -> queries::Portable<'_, Postgres> {
        self.reads()
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

super::store_impl!(PgStore {
    /// PostgreSQL keeps no poll results in memory: its checkpoint folds the
    /// rows the count triggers appended (see `counts.rs`).
    async fn checkpoint(&self) -> Result<u64> {
        self.fold_counters().await?;
        Ok(0)
    }

    fn replicas(&self) -> Option<&dyn super::replicas::ReplicaStore> {
        Some(self)
    }
});

impl PgStore {
    pub(super) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }
}
