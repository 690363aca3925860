//! Issue 7: the store's fast paths that the benchmark led to (poll results and
//! delivery attempts written a batch per statement, leases of a single-owner SQLite
//! store kept in memory), and `jobwatch bench` itself end to end on a small run.

use std::path::Path;
use std::time::Duration;

use jobwatch::model::{Kind, Outcome};
use jobwatch::store::sqlite::SqliteStore;
use jobwatch::store::{
    now_ms, AttemptRecord, AttemptResult, DeliveryStatus, NewDelivery, NewEvent, NewWatches, Store,
    Target, WatchRecord, WatchUpdate,
};
use serde_json::Value;

use crate::helpers::temp_db;

const LEASE_MS: i64 = 600_000;

async fn store(db: &Path) -> SqliteStore {
    SqliteStore::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("the store opens")
}

/// `ids` posted at `now`, all due at once.
async fn post(store: &SqliteStore, ids: &[&str], now: i64) {
    store
        .insert_watches(&NewWatches {
            kind: Kind::COPY,
            ids: ids.iter().map(|s| s.to_string()).collect(),
            webhook_url: Some("http://127.0.0.1:9/hook".into()),
            metadata: None,
            deadline: None,
            now,
            first_poll_min: 0,
            first_poll_spread: 1,
            interval_ms: 100,
        })
        .await
        .expect("insert");
}

fn running(w: &WatchRecord, polls: i64, next: i64) -> WatchUpdate {
    let mut r = w.clone();
    r.state = Some("RUNNING".into());
    r.poll_count = polls;
    r.last_poll_at = Some(next - 100);
    r.next_poll_at = Some(next);
    WatchUpdate {
        record: r,
        event: None,
    }
}

fn ended(w: &WatchRecord, polls: i64, at: i64, urls: &[&str]) -> WatchUpdate {
    let mut r = w.clone();
    r.state = Some("SUCCESS".into());
    r.upstream.ended = Some("2026-01-01T00:00:00.000000+00:00".into());
    r.upstream.errors = Some(serde_json::json!([]));
    r.outcome = Some(Outcome::Succeeded);
    r.outcome_at = Some(at);
    r.poll_count = polls;
    r.next_poll_at = None;
    WatchUpdate {
        event: Some(NewEvent {
            event_type: "job.succeeded",
            body: format!(
                r#"{{"type":"job.succeeded","data":{{"id":"{}"}}}}"#,
                r.job_id
            ),
            deliveries: urls
                .iter()
                .map(|u| NewDelivery {
                    target: Target::Watch,
                    url: u.to_string(),
                })
                .collect(),
        }),
        record: r,
    }
}

async fn watch(store: &SqliteStore, id: &str) -> WatchRecord {
    store
        .get_watch(Kind::COPY, id)
        .await
        .expect("get")
        .expect("the watch exists")
}

#[tokio::test]
async fn a_batch_of_poll_results_writes_each_with_its_event_and_deliveries_and_skips_stale_ones() {
    let (_dir, db) = temp_db();
    let s = store(&db).await;
    let t0 = now_ms() - 1_000;
    post(&s, &["a", "b", "c"], t0).await;
    let claimed = s
        .claim_due_watches(t0 + 10, 10, t0 + LEASE_MS)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let by_id = |id: &str| claimed.iter().find(|w| w.job_id == id).unwrap().clone();
    let mut stale = running(&by_id("c"), 1, t0 + 5_000);
    stale.record.generation += 1;
    let updates = vec![
        running(&by_id("a"), 1, t0 + 5_000),
        ended(&by_id("b"), 1, t0 + 20, &["http://h1/x", "http://h2/y"]),
        stale,
    ];

    let applied = s.apply_watch_updates(&updates).await.unwrap();

    assert_eq!(applied, vec![true, true, false]);
    let a = watch(&s, "a").await;
    assert_eq!(
        (a.state.as_deref(), a.poll_count, a.next_poll_at),
        (Some("RUNNING"), 1, Some(t0 + 5_000))
    );
    let b = watch(&s, "b").await;
    assert_eq!(b.outcome, Some(Outcome::Succeeded));
    assert_eq!(b.upstream.errors, Some(serde_json::json!([])));
    assert_eq!(b.outcome_at, Some(t0 + 20));
    let c = watch(&s, "c").await;
    assert_eq!(
        (c.state, c.poll_count),
        (None, 0),
        "a stale result changes nothing"
    );
    let ds = s.deliveries_of_watch(b.wid, b.generation).await.unwrap();
    assert_eq!(ds.len(), 2);
    assert!(ds
        .iter()
        .all(|d| d.status == DeliveryStatus::Pending && d.eid == ds[0].eid));
    assert_ne!(ds[0].webhook_id, ds[1].webhook_id);
    let due = s
        .claim_due_deliveries(now_ms(), 10, now_ms() + LEASE_MS)
        .await
        .unwrap();
    assert_eq!(due.len(), 2);
    assert!(due
        .iter()
        .all(|d| d.event_type == "job.succeeded" && d.body.contains(r#""id":"b""#)));
}

#[tokio::test]
async fn one_watch_twice_in_a_batch_is_written_in_order() {
    let (_dir, db) = temp_db();
    let s = store(&db).await;
    let t0 = now_ms() - 1_000;
    post(&s, &["twice", "end-first"], t0).await;
    let claimed = s
        .claim_due_watches(t0 + 10, 10, t0 + LEASE_MS)
        .await
        .unwrap();
    let by_id = |id: &str| claimed.iter().find(|w| w.job_id == id).unwrap().clone();
    let (twice, end_first) = (by_id("twice"), by_id("end-first"));
    let updates = vec![
        running(&twice, 1, t0 + 100),
        ended(&end_first, 1, t0 + 30, &[]),
        ended(&twice, 2, t0 + 40, &["http://h/1"]),
        running(&end_first, 2, t0 + 200),
    ];

    let applied = s.apply_watch_updates(&updates).await.unwrap();

    assert_eq!(applied, vec![true, true, true, false]);
    let w = watch(&s, "twice").await;
    assert_eq!((w.outcome, w.poll_count), (Some(Outcome::Succeeded), 2));
    let w = watch(&s, "end-first").await;
    assert_eq!(
        (w.outcome, w.poll_count),
        (Some(Outcome::Succeeded), 1),
        "nothing is applied after the outcome"
    );
}

#[tokio::test]
async fn a_claimed_watch_is_not_claimed_again_until_its_result_is_written() {
    let (_dir, db) = temp_db();
    let s = store(&db).await;
    let t0 = now_ms() - 1_000;
    post(&s, &["w1", "w2", "w3", "w4", "w5"], t0).await;
    let now = t0 + 10;

    let first = s.claim_due_watches(now, 3, now + LEASE_MS).await.unwrap();
    let second = s.claim_due_watches(now, 3, now + LEASE_MS).await.unwrap();
    let third = s.claim_due_watches(now, 3, now + LEASE_MS).await.unwrap();

    assert_eq!((first.len(), second.len(), third.len()), (3, 2, 0));
    let mut all: Vec<i64> = first.iter().chain(&second).map(|w| w.wid).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 5, "no watch was claimed twice");
    assert!(
        first.iter().all(|w| w.next_poll_at == Some(now + LEASE_MS)),
        "a claimed watch reads as leased until the lease's end"
    );
    assert_eq!(
        s.next_wakeup().await.unwrap(),
        None,
        "leased watches are not due: the poller must not spin on them"
    );

    // Written back, due again at once: claimable again.
    let again = first[0].clone();
    s.apply_watch_updates(&[running(&again, 1, now)])
        .await
        .unwrap();
    assert_eq!(s.next_wakeup().await.unwrap(), Some(now));
    let reclaimed = s
        .claim_due_watches(now + 1, 10, now + LEASE_MS)
        .await
        .unwrap();
    assert_eq!(
        reclaimed.iter().map(|w| w.wid).collect::<Vec<_>>(),
        vec![again.wid]
    );

    // A lease that ran out (its poll never reported) frees the watch.
    let late = now + LEASE_MS + 1;
    let expired = s
        .claim_due_watches(late, 10, late + LEASE_MS)
        .await
        .unwrap();
    assert_eq!(expired.len(), 5);
}

fn attempt(did: i64, next: DeliveryStatus, next_attempt_at: Option<i64>) -> AttemptResult {
    AttemptResult {
        did,
        attempt: AttemptRecord {
            at: now_ms(),
            status_code: Some(if next == DeliveryStatus::Delivered {
                204
            } else {
                500
            }),
            error: None,
            duration_ms: 3,
            response: Some("ok".into()),
        },
        next,
        next_attempt_at,
    }
}

#[tokio::test]
async fn a_claimed_delivery_is_not_claimed_again_until_its_attempt_is_written() {
    let (_dir, db) = temp_db();
    let s = store(&db).await;
    let t0 = now_ms() - 1_000;
    post(&s, &["d"], t0).await;
    let w = s
        .claim_due_watches(t0 + 10, 1, t0 + LEASE_MS)
        .await
        .unwrap();
    s.apply_watch_updates(&[ended(&w[0], 1, t0 + 20, &["http://h/a", "http://h/gone"])])
        .await
        .unwrap();
    let now = now_ms();

    let due = s
        .claim_due_deliveries(now, 10, now + LEASE_MS)
        .await
        .unwrap();
    assert_eq!(due.len(), 2);
    assert!(s
        .claim_due_deliveries(now, 10, now + LEASE_MS)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.next_delivery_at().await.unwrap(), None, "leased: not due");
    // A 410 from one URL stops its other deliveries, not the one being sent.
    let gone = due
        .iter()
        .find(|d| d.delivery.url == "http://h/gone")
        .unwrap();
    assert_eq!(s.stop_deliveries_to("http://h/gone").await.unwrap(), 0);

    let a = due.iter().find(|d| d.delivery.url == "http://h/a").unwrap();
    s.record_attempts(&[
        attempt(a.delivery.did, DeliveryStatus::Retrying, Some(now)),
        attempt(gone.delivery.did, DeliveryStatus::Gone, None),
    ])
    .await
    .unwrap();
    let again = s
        .claim_due_deliveries(now + 1, 10, now + LEASE_MS)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].delivery.did, again[0].delivery.attempts),
        (a.delivery.did, 1)
    );
    s.record_attempts(&[attempt(a.delivery.did, DeliveryStatus::Delivered, None)])
        .await
        .unwrap();
    let ds = s
        .deliveries_of_watch(w[0].wid, w[0].generation)
        .await
        .unwrap();
    let status = |url: &str| {
        let d = ds.iter().find(|d| d.url == url).unwrap();
        (d.status, d.attempts, d.delivered_at.is_some())
    };
    assert_eq!(status("http://h/a"), (DeliveryStatus::Delivered, 2, true));
    assert_eq!(status("http://h/gone"), (DeliveryStatus::Gone, 1, false));
    assert_eq!(
        s.attempts_of(a.delivery.did).await.unwrap().len(),
        2,
        "every attempt is recorded"
    );
}

/// The bench, run as a user would, on a run small enough for a test: it must end by
/// itself, deliver every watch and report the rate-limited run.
#[tokio::test]
async fn the_bench_runs_end_to_end_and_reports_every_figure() {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jobwatch"))
            .args([
                "bench",
                "--watches",
                "300",
                "--min-running",
                "200ms",
                "--max-running",
                "600ms",
                "--ceiling-duration",
                "1s",
                "--limited-watches",
                "300",
                "--limited-rate",
                "100",
                "--limited-duration",
                "4s",
                "--limited-settle",
                "2s",
                "--set",
                "poller.initial_interval=200ms",
                "--check",
                "--json",
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the bench ends by itself")
    .expect("the bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["watches"], 300);
    assert_eq!(report["ingest"]["ids"], 300);
    assert_eq!(report["ingest"]["new"], 300);
    assert_eq!(report["latency"]["delivered"], 300);
    assert_eq!(report["latency"]["rejected"], 0);
    assert!(
        report["latency"]["beyond_cadence_ms"]["p99"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert!(
        report["latency"]["from_job_end_ms"]["p50"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(report["poll"]["polls"].as_u64().unwrap() >= 300);
    assert!(report["ceiling"]["per_second"].as_f64().unwrap() > 0.0);
    // The judged ceiling ran in a process of its own and measured its own CPU.
    assert!(
        report["ceiling"]["process_cpu_us_per_request"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{}",
        report["ceiling"]
    );
    assert_eq!(report["ceiling"]["measured"].as_array().unwrap().len(), 2);
    assert!(report["ceiling_in_process"]["per_second"].as_f64().unwrap() > 0.0);
    // So did the daemon's upstream client, before and after the run; it counts
    // only answers it could read as a status, so a rate above 0 means it parsed.
    let via = &report["ceiling_upstream_client"];
    assert!(via["per_second"].as_f64().unwrap() > 0.0, "{via}");
    assert!(
        via["process_cpu_us_per_request"].as_f64().unwrap() > 0.0,
        "{via}"
    );
    assert_eq!(via["measured"].as_array().unwrap().len(), 2, "{via}");
    assert!(report["memory"]["peak_rss_mib"].as_f64().unwrap() > 1.0);
    let rl = &report["rate_limited"];
    assert!(rl["requests"].as_u64().unwrap() > 0, "{rl}");
    // A limit of 100/s over 2 judged seconds: well used, never exceeded by much.
    let fraction = rl["fraction_of_limit"].as_f64().unwrap();
    assert!((0.5..=1.2).contains(&fraction), "{rl}");
    assert!(report["targets"].as_array().unwrap().len() >= 4);
}
