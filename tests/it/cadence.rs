//! Issue 19: the learned cadence. What the daemon learns of how long jobs take
//! survives a restart, and under a budget that binds no running watch goes longer
//! without a poll than the starvation bound (docs/cadence.md).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Connection;

use crate::helpers::{settings, temp_db, App, Sim};

/// The learned cadence on, learning from 20 ends, checkpoints every 200 ms.
const LEARNED: [(&str, &str); 3] = [
    ("poller.cadence", "learned"),
    ("poller.learn_after", "20"),
    ("store.checkpoint_interval", "200ms"),
];

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// What `/v1/status` says the history holds for `copy`.
async fn copy_history(app: &App) -> Value {
    let (status, s) = app.get("/v1/status").await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["cadence"]["policy"], "learned", "{s}");
    s["cadence"]["kinds"]
        .as_array()
        .and_then(|kinds| kinds.iter().find(|k| k["kind"] == "copy").cloned())
        .unwrap_or(Value::Null)
}

/// The rows of the durations table, read from the file itself.
async fn stored_rows(db: &Path) -> Vec<(String, String, Vec<u8>)> {
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .expect("open the store file");
    let rows = sqlx::query_as("SELECT kind, grp, summary FROM durations ORDER BY kind, grp")
        .fetch_all(&mut conn)
        .await
        .expect("read the durations");
    let _ = conn.close().await;
    rows
}

#[tokio::test]
async fn the_learned_history_survives_a_restart() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();
    let app = App::start(settings(&db, &sim.url, &LEARNED)).await;
    let (status, body) = app
        .post_jobs(json!({"kind": "copy", "ids": ids("succeed-", 30)}))
        .await;
    assert_eq!(status, 202, "{body}");
    app.wait_all_ended(30).await;
    let learned = copy_history(&app).await;
    assert_eq!(learned["ended"], 30, "{learned}");
    assert_eq!(
        learned["ended_upstream"], 30,
        "the simulator says when jobs began and ended"
    );
    assert_eq!(learned["learned"], true, "{learned}");

    // A checkpoint writes the summary: one small row, whatever the number of ends.
    let mut rows = Vec::new();
    for _ in 0..50 {
        rows = stored_rows(&db).await;
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), 1, "one row for copy");
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("copy", ""));
    assert!(rows[0].2.len() < 1_200, "{} bytes", rows[0].2.len());

    // A restart reads it back before any poll: the learned cadence goes on at once.
    app.stop().await;
    let app = App::start(settings(&db, &sim.url, &LEARNED)).await;
    let again = copy_history(&app).await;
    assert_eq!(again, learned, "the same history after the restart");

    // And it keeps learning.
    let (status, _) = app
        .post_jobs(json!({"kind": "copy", "ids": ids("done-", 5)}))
        .await;
    assert_eq!(status, 202);
    app.wait_all_ended(30).await;
    assert_eq!(copy_history(&app).await["ended"], 35);
    app.stop().await;
}

/// Status requests of each `running-` job, in arrival order (ms).
fn polls_by_job(sim: &Sim) -> HashMap<String, Vec<f64>> {
    let mut by_job: HashMap<String, Vec<f64>> = HashMap::new();
    for r in sim.sim.request_log() {
        let id = r
            .path
            .strip_prefix("/products/")
            .and_then(|p| p.split('/').next())
            .filter(|id| id.starts_with("running-"));
        if let (Some(id), 200) = (id, r.status) {
            by_job.entry(id.to_string()).or_default().push(r.t_ms);
        }
    }
    by_job
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// 200 jobs that never end, at a cadence of at most 400 ms, want 500 polls/s; the
/// budget allows 40. Claims take the earliest due watch first, and every interval
/// is at most `poller.max_interval`, so a watch due at some moment waits at most
/// for the watches due before it (at most all the others): no gap between two
/// polls of a job exceeds max_interval x (1 + jitter) + running / rate (+ a second
/// of slack for the test machine).
#[tokio::test]
async fn under_a_binding_budget_no_running_watch_waits_longer_than_the_starvation_bound() {
    const N: usize = 200;
    const RATE: f64 = 40.0;
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();

    // First a history, on an open budget: jobs of 100..400 ms.
    let app = App::start(settings(&db, &sim.url, &LEARNED)).await;
    app.post_jobs(json!({"kind": "copy", "ids": ids("succeed-", 40)}))
        .await;
    app.wait_all_ended(30).await;
    assert_eq!(copy_history(&app).await["learned"], true);
    app.stop().await;

    // Then the learned cadence under a budget far below what it asks for.
    let mut bound: Vec<(&str, &str)> = LEARNED.to_vec();
    bound.extend([
        ("upstream.max_requests_per_second", "40"),
        ("upstream.burst", "5"),
    ]);
    let app = App::start(settings(&db, &sim.url, &bound)).await;
    let posted = unix_ms();
    let (status, _) = app
        .post_jobs(json!({"kind": "copy", "ids": ids("running-", N)}))
        .await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_secs(9)).await;
    let stopped = unix_ms();
    app.stop().await;

    let (max_interval, jitter) = (400.0, 0.2);
    let bound_ms = max_interval * (1.0 + jitter) + N as f64 / RATE * 1000.0 + 1000.0;
    let polls = polls_by_job(&sim);
    assert_eq!(polls.len(), N, "every job was polled");
    let mut longest = (0.0f64, String::new());
    let mut total = 0;
    for (id, times) in &polls {
        total += times.len();
        // From the POST to the first poll, between polls, and from the last poll
        // to the end of the observation: no stretch without a poll is longer.
        let mut at = posted;
        for t in times.iter().chain([&stopped]) {
            if t - at > longest.0 {
                longest = (t - at, id.clone());
            }
            at = *t;
        }
    }
    let rate = total as f64 / ((stopped - posted) / 1000.0);
    println!(
        "{N} running watches, budget {RATE}/s: {rate:.1} polls/s; longest stretch without a poll {:.0} ms ({}), bound {bound_ms:.0} ms",
        longest.0, longest.1
    );
    assert!(
        longest.0 <= bound_ms,
        "{} went {:.0} ms without a poll; the bound is {bound_ms:.0} ms",
        longest.1,
        longest.0
    );
    // The budget did bind: about RATE polls a second, far below the 500 asked for.
    assert!(rate <= RATE * 1.3, "{rate:.1} polls/s");
    assert!(rate >= RATE * 0.7, "the budget is used: {rate:.1} polls/s");
}
