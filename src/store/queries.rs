//! What both databases ask alike, written once: SQL both take (`$N` parameters,
//! which SQLite reads as well as PostgreSQL), run generically over sqlx's
//! `Database`. Each store passes its pool (SQLite: the writer for writes, the
//! reader for reads). A query whose SQL differs by database stays in the store.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::rows::{
    self, stored_durations, WatchRow, ATTEMPT_COLS, DELIVERY_COLS, EVENT_POSITIONS, LOAD_DURATIONS,
    SAVE_DURATION, WATCH_COLS,
};
use super::*;

/// The queries over one pool (SQLite: the writer for writes, the reader for
/// reads; PostgreSQL: its pool).
pub struct Portable<'a, DB: Database>(pub &'a Pool<DB>);

// The bounds say: the database's connections execute, it takes the parameter
// types these queries bind, and it decodes the rows they read.
impl<DB> Portable<'_, DB>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: Executor<'e, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> WatchRow: FromRow<'r, DB::Row>,
    for<'r> DeliveryRecord: FromRow<'r, DB::Row>,
    for<'r> AttemptRecord: FromRow<'r, DB::Row>,
    for<'r> (String, String, Vec<u8>): FromRow<'r, DB::Row>,
    for<'r> EventPositions: FromRow<'r, DB::Row>,
{
    /// The watch, as stored.
    pub async fn get_watch(&self, kind: Kind, job_id: &str) -> Result<Option<WatchRecord>> {
        let found: Option<WatchRow> = sqlx::query_as(&format!(
            "SELECT {WATCH_COLS} FROM watches WHERE kind = $1 AND job_id = $2"
        ))
        .bind(kind.as_str())
        .bind(job_id)
        .fetch_optional(self.0)
        .await?;
        Ok(rows::watches(found)?.pop())
    }

    /// Up to `limit` watches of `filter` after the keyset position `after`, newest
    /// first. `before` is the store's SQL for "before the position", in which
    /// `{at}` and `{wid}` stand for the position's values.
    pub async fn list_watches(
        &self,
        filter: &ListFilter,
        limit: u32,
        after: Option<Cursor>,
        before: &str,
    ) -> Result<Vec<WatchRecord>> {
        let mut args = Args::default();
        let mut sql = format!("SELECT {WATCH_COLS} FROM watches WHERE true");
        if let Some(kind) = filter.kind {
            sql += &format!(" AND kind = {}", args.text(kind.as_str()));
        }
        if let Some(state) = &filter.state {
            sql += &format!(" AND state = {}", args.text(state));
        }
        if let Some(outcome) = filter.outcome {
            sql += &format!(" AND outcome = {}", args.text(outcome.as_str()));
        }
        match filter.running {
            Some(true) => sql += " AND outcome IS NULL",
            Some(false) => sql += " AND outcome IS NOT NULL",
            None => {}
        }
        if let Some(c) = after {
            let (at, wid) = (args.int(c.watched_at), args.int(c.wid));
            sql += &format!(
                " AND {}",
                before.replace("{at}", &at).replace("{wid}", &wid)
            );
        }
        sql += &format!(
            " ORDER BY watched_at DESC, wid DESC LIMIT {}",
            args.int(limit as i64)
        );
        let found: Vec<WatchRow> = args.bind(sqlx::query_as(&sql)).fetch_all(self.0).await?;
        rows::watches(found)
    }

    pub async fn event_positions(&self) -> Result<EventPositions> {
        Ok(sqlx::query_as(EVENT_POSITIONS).fetch_one(self.0).await?)
    }

    /// Running watches whose deadline is at or before `now`, earliest first.
    pub async fn expired_watches(&self, now: Millis, limit: u32) -> Result<Vec<WatchRecord>> {
        let found: Vec<WatchRow> = sqlx::query_as(&format!(
            "SELECT {WATCH_COLS} FROM watches WHERE outcome IS NULL AND deadline IS NOT NULL AND deadline <= $1
             ORDER BY deadline LIMIT $2"
        ))
        .bind(now)
        .bind(limit as i64)
        .fetch_all(self.0)
        .await?;
        rows::watches(found)
    }

    pub async fn load_durations(&self) -> Result<Vec<StoredDurations>> {
        Ok(stored_durations(
            sqlx::query_as(LOAD_DURATIONS).fetch_all(self.0).await?,
        ))
    }

    /// A handful of rows (a kind and its groups): one statement each, one commit.
    pub async fn save_durations(&self, rows: &[StoredDurations], now: Millis) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.0.begin().await?;
        for r in rows {
            sqlx::query(SAVE_DURATION)
                .bind(r.kind.as_str())
                .bind(r.group.as_str())
                .bind(r.summary.as_slice())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn deliveries_of_watch(
        &self,
        wid: i64,
        generation: i64,
    ) -> Result<Vec<DeliveryRecord>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLS} FROM deliveries WHERE wid = $1
         AND eid IN (SELECT eid FROM events WHERE wid = $1 AND generation = $2) ORDER BY did"
        ))
        .bind(wid)
        .bind(generation)
        .fetch_all(self.0)
        .await?)
    }

    pub async fn list_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: u32,
        after: Option<i64>,
    ) -> Result<Vec<DeliveryRecord>> {
        let mut args = Args::default();
        let mut sql = format!("SELECT {DELIVERY_COLS} FROM deliveries WHERE true");
        if let Some(s) = status {
            sql += &format!(" AND status = {}", args.text(s.as_str()));
        }
        if let Some(after) = after {
            sql += &format!(" AND did < {}", args.int(after));
        }
        sql += &format!(" ORDER BY did DESC LIMIT {}", args.int(limit as i64));
        Ok(args.bind(sqlx::query_as(&sql)).fetch_all(self.0).await?)
    }

    pub async fn attempts_of(&self, did: i64) -> Result<Vec<AttemptRecord>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ATTEMPT_COLS} FROM attempts WHERE did = $1 ORDER BY aid"
        ))
        .bind(did)
        .fetch_all(self.0)
        .await?)
    }

    /// Send a dead (or gone) delivery again.
    pub async fn retry_delivery(&self, did: i64, now: Millis) -> Result<Retried> {
        let mut tx = self.0.begin().await?;
        let retried: Option<DeliveryRecord> = sqlx::query_as(&format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $2, leased_until = NULL
         WHERE did = $1 AND status IN ('dead', 'gone') RETURNING {DELIVERY_COLS}"
        ))
        .bind(did)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let result = match retried {
            Some(d) => Retried::Now(d),
            None => {
                let found: Option<DeliveryRecord> = sqlx::query_as(&format!(
                    "SELECT {DELIVERY_COLS} FROM deliveries WHERE did = $1"
                ))
                .bind(did)
                .fetch_optional(&mut *tx)
                .await?;
                match found {
                    Some(d) => Retried::NotRetryable(d),
                    None => Retried::Unknown,
                }
            }
        };
        tx.commit().await?;
        Ok(result)
    }
}

/// The parameters of a query built piece by piece, numbered as they are added
/// (`$1`, `$2`, ...), bound in that order.
#[derive(Default)]
struct Args<'a>(Vec<Arg<'a>>);

enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

impl<'a> Args<'a> {
    /// Adds a parameter; returns its placeholder.
    fn text(&mut self, v: &'a str) -> String {
        self.0.push(Arg::Text(v));
        format!("${}", self.0.len())
    }

    fn int(&mut self, v: i64) -> String {
        self.0.push(Arg::Int(v));
        format!("${}", self.0.len())
    }

    fn bind<'q, DB, O>(
        self,
        mut q: sqlx::query::QueryAs<'q, DB, O, DB::Arguments<'q>>,
    ) -> sqlx::query::QueryAs<'q, DB, O, DB::Arguments<'q>>
    where
        'a: 'q,
        DB: Database,
        for<'b> &'b str: Encode<'b, DB> + Type<DB>,
        for<'b> i64: Encode<'b, DB> + Type<DB>,
    {
        for a in self.0 {
            q = match a {
                Arg::Text(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
            };
        }
        q
    }
}
