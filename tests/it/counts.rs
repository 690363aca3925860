//! `Store::counts` (what `/v1/status` and `/metrics` show) on both databases: right
//! after a mix of every write that moves a count, and read without a scan of the
//! watches or the deliveries.

use std::time::{Duration, Instant};

use jobwatch::model::{Kind, Outcome};
use jobwatch::store::sqlite::SqliteStore;
use jobwatch::store::{
    AttemptRecord, AttemptResult, Counts, DeliveryStatus, NewDelivery, NewEvent, NewWatches, Store,
    Target, WatchUpdate,
};

use crate::helpers::temp_db;
use crate::postgres::{drop_schema, schema};

const T0: i64 = 1_000_000_000;
const LEASE: i64 = 60_000;

/// Watches first polled within a second, every 2 s.
fn new_watches(ids: Vec<String>, now: i64) -> NewWatches {
    NewWatches {
        first_poll_min: 0,
        first_poll_spread: 1_000,
        interval_ms: 2_000,
        ..crate::helpers::new_watches(ids, now)
    }
}

async fn ingest(store: &dyn Store, n: usize, now: i64) {
    let ids: Vec<String> = (0..n).map(|i| format!("job-{i:07}")).collect();
    for chunk in ids.chunks(10_000) {
        let got = store
            .insert_watches(&new_watches(chunk.to_vec(), now))
            .await
            .expect("ingest");
        assert_eq!(got.new as usize, chunk.len());
    }
}

/// Every write that moves a count, on `n` watches: first states, outcomes with
/// events and deliveries, cancels, re-watches of ended jobs, attempts, a prune.
async fn mix(store: &dyn Store, n: usize) {
    ingest(store, n, T0).await;
    let mut now = T0 + 2_000;
    for round in 0..3 {
        let claimed = store
            .claim_due_watches(now, 4_000, now + LEASE)
            .await
            .expect("claim");
        assert!(!claimed.is_empty(), "round {round} claimed watches");
        let updates: Vec<WatchUpdate> = claimed
            .into_iter()
            .enumerate()
            .map(|(i, mut w)| {
                w.poll_count += 1;
                w.last_poll_at = Some(now);
                w.next_poll_at = Some(now + 2_000);
                let mut event = None;
                match i % 10 {
                    0..=3 => w.state = Some("RUNNING".into()),
                    4 => w.state = Some("PENDING".into()),
                    5 => w.state = Some(format!("ODD-{round}")),
                    6 | 7 => {
                        let outcome = if i % 10 == 6 {
                            Outcome::Succeeded
                        } else {
                            Outcome::Failed
                        };
                        w.state = Some("DONE".into());
                        w.outcome = Some(outcome);
                        w.outcome_at = Some(now);
                        w.next_poll_at = None;
                        event = Some(NewEvent {
                            event_type: outcome.stream_type(),
                            body: "{}".into(),
                            deliveries: vec![NewDelivery {
                                target: Target::Endpoint,
                                url: format!("http://127.0.0.1:1/hook-{}", i % 3),
                            }],
                        });
                    }
                    _ => {} // nothing changed but the bookkeeping
                }
                WatchUpdate { record: w, event }
            })
            .collect();
        let applied = store.apply_watch_updates(&updates).await.expect("apply");
        assert!(applied.iter().all(|a| *a));
        now += 2_000;
    }
    // Cancels: of running watches, and of one already ended.
    for i in (0..n).step_by(n / 150) {
        store
            .cancel_watch(Kind::COPY, &format!("job-{i:07}"), now)
            .await
            .expect("cancel");
    }
    // Attempts: some delivered, some dead, some retrying.
    let due = store
        .claim_due_deliveries(now + 10_000, 2_000, now + LEASE)
        .await
        .expect("claim deliveries");
    assert!(!due.is_empty());
    let results: Vec<AttemptResult> = due
        .iter()
        .enumerate()
        .map(|(i, d)| AttemptResult {
            did: d.delivery.did,
            attempt: AttemptRecord {
                at: now,
                status_code: Some(200),
                error: None,
                duration_ms: 1,
                response: None,
            },
            next: [
                DeliveryStatus::Delivered,
                DeliveryStatus::Dead,
                DeliveryStatus::Retrying,
            ][i % 3],
            next_attempt_at: (i % 3 == 2).then_some(now + 5_000),
        })
        .collect();
    store.record_attempts(&results).await.expect("attempts");
    // Re-watches of every ended job among the first 20,000: new generations.
    let again: Vec<String> = (0..n.min(20_000)).map(|i| format!("job-{i:07}")).collect();
    let got = store
        .insert_watches(&new_watches(again, now))
        .await
        .expect("re-watch");
    assert!(got.new > 0, "some ended watches were watched again");
    // A prune of what ended (those with a delivery still to send stay).
    let pruned = store.prune(now + 1, 1_000).await.expect("prune");
    assert!(pruned > 0, "the prune deleted ended watches");
}

/// The counts `counts()` gives must be these, from plain counts of the rows.
struct Truth {
    by_state: Vec<(Option<String>, i64)>,
    by_outcome: Vec<(String, i64)>,
    by_status: Vec<(String, i64)>,
}

fn assert_counts(got: &Counts, truth: &Truth, what: &str) {
    assert_eq!(
        got.running_by_state, truth.by_state,
        "{what}: running by state"
    );
    assert_eq!(
        got.ended_by_outcome, truth.by_outcome,
        "{what}: ended by outcome"
    );
    assert_eq!(
        got.deliveries_by_status, truth.by_status,
        "{what}: deliveries by status"
    );
    assert_eq!(
        got.running,
        truth.by_state.iter().map(|(_, n)| n).sum::<i64>(),
        "{what}: running"
    );
}

const TRUTH_BY_STATE: &str =
    "SELECT state, count(*) FROM watches WHERE outcome IS NULL GROUP BY state ORDER BY state";
const TRUTH_BY_OUTCOME: &str =
    "SELECT outcome, count(*) FROM watches WHERE outcome IS NOT NULL GROUP BY outcome ORDER BY outcome";
const TRUTH_BY_STATUS: &str =
    "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status";

#[tokio::test]
async fn sqlite_counts_are_right_and_read_no_watch_rows() {
    let (_dir, db) = temp_db();
    let url = format!("sqlite://{}", db.display());
    let store = SqliteStore::open(&url).await.expect("the store opens");
    mix(&store, 100_000).await;
    // State changes wait in memory for the checkpoint: counted already.
    let before = store.counts(T0).await.expect("counts");
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("raw connection");
    let mut in_file: Vec<(Option<String>, i64)> = sqlx::query_as(TRUTH_BY_STATE)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    in_file.sort();
    store.checkpoint().await.expect("checkpoint");
    let mut by_state: Vec<(Option<String>, i64)> = sqlx::query_as(TRUTH_BY_STATE)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    // Sorted as counts() sorts: no state first.
    by_state.sort();
    let truth = Truth {
        by_state,
        by_outcome: sqlx::query_as(TRUTH_BY_OUTCOME)
            .fetch_all(&mut conn)
            .await
            .unwrap(),
        by_status: sqlx::query_as(TRUTH_BY_STATUS)
            .fetch_all(&mut conn)
            .await
            .unwrap(),
    };
    assert!(truth.by_state.len() >= 4 && truth.by_outcome.len() >= 3);
    assert_ne!(
        in_file, truth.by_state,
        "some state changes were held in memory"
    );
    assert_counts(&before, &truth, "before the checkpoint");
    assert_counts(&store.counts(T0).await.unwrap(), &truth, "after it");
    // No query of counts() reads the watches or the deliveries row by row.
    for sql in jobwatch::store::sqlite::COUNT_QUERIES {
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .fetch_all(&mut conn)
                .await
                .unwrap();
        for (_, _, _, step) in &plan {
            let scan = step.starts_with("SCAN watches") || step.starts_with("SCAN deliveries");
            // The oldest running watch: the first entry of an index, no more.
            let first_of_index =
                step.contains("USING INDEX watches_running_age") && sql.contains("LIMIT 1");
            assert!(!scan || first_of_index, "{sql}: {step}");
        }
    }
    store.close().await;
}

#[tokio::test]
async fn postgres_counts_are_right_and_read_no_watch_rows() {
    let (url, name) = schema().await;
    let store = jobwatch::store::postgres::PgStore::open(&url)
        .await
        .expect("the store opens");
    mix(&store, 100_000).await;
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let truth = Truth {
        by_state: sqlx::query_as(&format!("{TRUTH_BY_STATE} NULLS FIRST"))
            .fetch_all(&pool)
            .await
            .unwrap(),
        by_outcome: sqlx::query_as(TRUTH_BY_OUTCOME)
            .fetch_all(&pool)
            .await
            .unwrap(),
        by_status: sqlx::query_as(TRUTH_BY_STATUS)
            .fetch_all(&pool)
            .await
            .unwrap(),
    };
    assert!(truth.by_state.len() >= 4 && truth.by_outcome.len() >= 3);
    assert_counts(&store.counts(T0).await.unwrap(), &truth, "deltas");
    // Folded into a row per bucket, the same.
    store.checkpoint().await.expect("checkpoint");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM counters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(rows <= 20, "folded: {rows} rows");
    assert_counts(&store.counts(T0).await.unwrap(), &truth, "folded");
    // Planned with the statistics a running database has.
    sqlx::query("ANALYZE").execute(&pool).await.unwrap();
    for sql in jobwatch::store::postgres::COUNT_QUERIES {
        let sql = sql.replace("$1", &T0.to_string());
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
            .fetch_all(&pool)
            .await
            .unwrap();
        for step in &plan {
            assert!(
                !step.contains("Seq Scan on watches") && !step.contains("Seq Scan on deliveries"),
                "{sql}: {}",
                plan.join("\n")
            );
        }
    }
    pool.close().await;
    store.close().await;
    drop_schema(&name).await;
}

/// The schema before the counters (`migrations/{db}` below `version`), for the
/// migration that adds them to start from rows that are already there.
async fn migrator_before(db: &str, version: i64) -> sqlx::migrate::Migrator {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(db);
    let mut m = sqlx::migrate::Migrator::new(dir).await.expect("migrations");
    let older: Vec<_> = m
        .migrations
        .iter()
        .filter(|m| m.version < version)
        .cloned()
        .collect();
    m.migrations = older.into();
    m
}

/// Rows written before the counters existed, in SQL both databases take.
const EXISTING_ROWS: [&str; 3] = [
    "INSERT INTO watches (kind, job_id, watched_at, interval_ms, state, outcome, outcome_at) VALUES
        ('copy', 'a', 1, 2000, NULL, NULL, NULL), ('copy', 'b', 1, 2000, 'RUNNING', NULL, NULL),
        ('copy', 'c', 1, 2000, 'RUNNING', NULL, NULL), ('copy', 'd', 1, 2000, 'DONE', 'succeeded', 5),
        ('copy', 'e', 1, 2000, 'FAILED', 'failed', 5)",
    "INSERT INTO events (eid, wid, generation, type, body, created_at)
        SELECT 1, wid, 1, 'job.succeeded', '{}', 5 FROM watches WHERE job_id = 'd'",
    "INSERT INTO deliveries (eid, wid, webhook_id, target, url, status, created_at)
        SELECT 1, wid, 'msg_' || u, 'endpoint', 'http://127.0.0.1:1/' || u, s, 5
        FROM watches, (SELECT 'x' AS u, 'delivered' AS s UNION ALL SELECT 'y', 'dead') AS d
        WHERE job_id = 'd'",
];

fn assert_existing_rows_counted(c: &Counts) {
    assert_eq!(
        c.running_by_state,
        vec![(None, 1), (Some("RUNNING".to_string()), 2)]
    );
    assert_eq!(
        c.ended_by_outcome,
        vec![("failed".to_string(), 1), ("succeeded".to_string(), 1)]
    );
    assert_eq!(
        c.deliveries_by_status,
        vec![("dead".to_string(), 1), ("delivered".to_string(), 1)]
    );
}

#[tokio::test]
async fn the_counters_start_from_the_rows_a_sqlite_file_has() {
    let (_dir, db) = temp_db();
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("raw connection");
    migrator_before("sqlite", 5)
        .await
        .run(&mut conn)
        .await
        .expect("the older schema");
    for sql in EXISTING_ROWS {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
    sqlx::Connection::close(conn).await.unwrap();
    let store = SqliteStore::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("the store opens and migrates");
    assert_existing_rows_counted(&store.counts(T0).await.unwrap());
    store.close().await;
}

#[tokio::test]
async fn the_counters_start_from_the_rows_a_postgresql_schema_has() {
    let (url, name) = schema().await;
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    migrator_before("postgres", 6)
        .await
        .run(&pool)
        .await
        .expect("the older schema");
    for sql in EXISTING_ROWS {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    pool.close().await;
    let store = jobwatch::store::postgres::PgStore::open(&url)
        .await
        .expect("the store opens and migrates");
    assert_existing_rows_counted(&store.counts(T0).await.unwrap());
    store.close().await;
    drop_schema(&name).await;
}

/// How long counts() takes at 1,000,000 watches (a measure, not a check):
/// `cargo test --release --test it counts::counts_at_a_million -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn counts_at_a_million() {
    let (_dir, db) = temp_db();
    let sqlite = SqliteStore::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("the store opens");
    time_counts("sqlite", &sqlite).await;
    sqlite.close().await;
    let (url, name) = schema().await;
    let pg = jobwatch::store::postgres::PgStore::open(&url)
        .await
        .expect("the store opens");
    time_counts("postgres", &pg).await;
    pg.close().await;
    drop_schema(&name).await;
}

async fn time_counts(what: &str, store: &dyn Store) {
    let started = Instant::now();
    ingest(store, 1_000_000, T0).await;
    let ingest = started.elapsed();
    let mut took: Vec<Duration> = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let c = store.counts(T0).await.expect("counts");
        took.push(t.elapsed());
        assert_eq!(c.running, 1_000_000);
    }
    took.sort();
    eprintln!(
        "{what}: 1,000,000 watches ingested in {ingest:.1?} through the store; counts() min {:.2?}, median {:.2?}, max {:.2?}",
        took[0], took[3], took[6]
    );
}
