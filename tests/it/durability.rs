//! Issue 5: graceful shutdown on SIGTERM/SIGINT, retention, concurrent writes,
//! a failing store, and files that are not ours. `crash.rs` has the kill -9 test
//! and the child-process helpers used here.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobwatch::model::{Kind, Outcome};
use jobwatch::simulator::SimulateArgs;
use jobwatch::store::pruner::Pruner;
use jobwatch::store::sqlite::SqliteStore;
use jobwatch::store::{now_ms, DeliveryStatus, Hold, Store, WatchUpdate};
use jobwatch::webhook::sign::SigningSecret;
use serde_json::{json, Value};
use sqlx::{Connection, SqliteConnection};

use crate::crash::{serve_until_exit, ConfigFile, Options, Proc};
use crate::helpers::*;
use crate::receiver::{Plan, TestReceiver};

const DAY_MS: i64 = 86_400_000;

fn sqlite_url(db: &Path) -> String {
    format!("sqlite://{}", db.display())
}

async fn open_store(db: &Path) -> SqliteStore {
    SqliteStore::open(&sqlite_url(db))
        .await
        .expect("the store opens")
}

/// A raw connection to the file, for what the API does not show.
async fn raw(db: &Path) -> SqliteConnection {
    SqliteConnection::connect(&sqlite_url(db))
        .await
        .expect("raw connection")
}

async fn count(conn: &mut SqliteConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `check` holds, polling; panics with `what` after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

// ---------------------------------------------------------------------------
// Retention.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_forgets_ended_watches_past_retention_and_keeps_the_rest() {
    let sim = Sim::start(Sim::fast()).await;
    let (dir, db) = temp_db();
    let secret = SigningSecret::generate();
    let whsec = secret.to_whsec();
    let good = TestReceiver::start(Some(secret.clone())).await;
    let down = TestReceiver::start(Some(secret.clone())).await;
    down.respond_with(Plan::Status(500));
    let file = dir.path().join("retry.toml");
    std::fs::write(&file, "[webhooks]\nretry_schedule = [\"1h\"]\n").unwrap();
    let app = App::start(settings_with_file(
        &db,
        &sim.url,
        Some(&file),
        &[
            ("webhooks.signing_secret", &whsec),
            ("webhooks.allow_private_targets", "true"),
        ],
    ))
    .await;

    // 300 watches that end and are delivered, one that ends but whose delivery is
    // still retrying, one still running, one cancelled (no event).
    let ended = ids("succeed-p", 300);
    let (s, b) = app
        .post_jobs(json!({"kind": "copy", "ids": ended, "webhook_url": good.url}))
        .await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = app
        .post_jobs(json!({"kind": "copy", "ids": ["failed-keep"], "webhook_url": down.url}))
        .await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = app
        .post_jobs(json!({"kind": "delete", "ids": ["running-keep", "running-cancel"]}))
        .await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = app.delete("/v1/jobs/delete/running-cancel").await;
    assert_eq!(s, 200, "{b}");
    good.wait_for(300, Duration::from_secs(30)).await;
    let kept = app.wait_outcome("copy", "failed-keep", 10).await;
    eventually(
        Duration::from_secs(10),
        "failed-keep's delivery is retrying",
        || async {
            let (_, w) = app.get("/v1/jobs/copy/failed-keep").await;
            w["deliveries"][0]["status"] == "retrying"
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "all 300 recorded as delivered",
        || async {
            let (_, s) = app.get("/v1/status").await;
            s["webhooks"]["deliveries"]["delivered"] == 300
        },
    )
    .await;
    let (_, one) = app.get("/v1/jobs/copy/succeed-p0").await;
    let pruned_delivery = one["deliveries"][0]["id"].as_i64().expect("a delivery id");
    let (s, _) = app.get(&format!("/v1/deliveries/{pruned_delivery}")).await;
    assert_eq!(s, 200);

    // The daemon's own pruner runs too (retention 7 d); this one gets a clock.
    let store: Arc<dyn Store> = Arc::new(open_store(&db).await);
    let pruner = Pruner::new(store.clone(), Duration::from_secs(7 * 86_400))
        .with_batches(64, Duration::from_millis(5));
    assert_eq!(
        pruner.prune_once(now_ms()).await.unwrap(),
        0,
        "nothing is a week old yet"
    );
    assert_eq!(
        pruner.prune_once(now_ms() + 6 * DAY_MS).await.unwrap(),
        0,
        "six days later: still within retention"
    );
    let pruned = pruner.prune_once(now_ms() + 8 * DAY_MS).await.unwrap();
    assert_eq!(
        pruned, 301,
        "the 300 delivered watches and the cancelled one"
    );
    assert_eq!(pruner.prune_once(now_ms() + 8 * DAY_MS).await.unwrap(), 0);

    // Through the API: the pruned are gone, the rest untouched.
    for id in ["succeed-p0", "succeed-p299"] {
        let (s, b) = app.get(&format!("/v1/jobs/copy/{id}")).await;
        assert_eq!(s, 404, "{id}: {b}");
    }
    let (s, _) = app.get("/v1/jobs/delete/running-cancel").await;
    assert_eq!(s, 404);
    let (s, b) = app.get(&format!("/v1/deliveries/{pruned_delivery}")).await;
    assert_eq!(s, 404, "{b}");
    let (s, w) = app.get("/v1/jobs/copy/failed-keep").await;
    assert_eq!(s, 200);
    assert_eq!(w["outcome"], kept["outcome"]);
    assert_eq!(w["deliveries"][0]["status"], "retrying", "{w}");
    let (s, w) = app.get("/v1/jobs/delete/running-keep").await;
    assert_eq!(s, 200);
    assert!(w["outcome"].is_null(), "{w}");
    let (_, status) = app.get("/v1/status").await;
    assert_eq!(status["webhooks"]["deliveries"]["delivered"], 0, "{status}");
    assert_eq!(status["webhooks"]["deliveries"]["retrying"], 1, "{status}");
    let (_, page) = app.get("/v1/jobs?limit=1000").await;
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(2), "{page}");

    // In the file: no event, delivery or attempt outlived its watch.
    let mut conn = raw(&db).await;
    for (what, sql, want) in [
        ("events", "SELECT count(*) FROM events", 1),
        ("deliveries", "SELECT count(*) FROM deliveries", 1),
        (
            "orphan events",
            "SELECT count(*) FROM events WHERE wid NOT IN (SELECT wid FROM watches)",
            0,
        ),
        (
            "orphan deliveries",
            "SELECT count(*) FROM deliveries WHERE eid NOT IN (SELECT eid FROM events)",
            0,
        ),
        (
            "orphan attempts",
            "SELECT count(*) FROM attempts WHERE did NOT IN (SELECT did FROM deliveries)",
            0,
        ),
    ] {
        assert_eq!(count(&mut conn, sql).await, want, "{what}");
    }
    assert!(count(&mut conn, "SELECT count(*) FROM attempts").await >= 1);
    conn.close().await.ok();
    store.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_goes_in_small_batches_that_let_other_writes_through() {
    const ENDED: usize = 6000;
    const BATCH: u32 = 250;
    let (_dir, db) = temp_db();
    let store = Arc::new(open_store(&db).await);
    // Ended watches, written through the store as the poller would.
    let t0 = now_ms();
    let claimed = post_and_claim(&store, "badrequest-", ENDED, t0).await;
    let updates: Vec<WatchUpdate> = claimed
        .into_iter()
        .map(|mut w| {
            w.outcome = Some(Outcome::Rejected);
            w.outcome_at = Some(t0);
            w.next_poll_at = None;
            WatchUpdate {
                record: w,
                event: None,
            }
        })
        .collect();
    assert!(store
        .apply_watch_updates(&updates)
        .await
        .unwrap()
        .iter()
        .all(|a| *a));

    // Other writes go on while a month later prunes everything.
    let dyn_store: Arc<dyn Store> = store.clone();
    let pruner = Pruner::new(dyn_store, Duration::from_secs(7 * 86_400))
        .with_batches(BATCH, Duration::from_millis(20));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let started = Instant::now();
                store
                    .insert_watches(&new_watches(ids(&format!("running-w{n}-"), 10), now_ms()))
                    .await
                    .expect("a write during pruning");
                latencies.push(started.elapsed());
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            latencies
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let pruned = pruner.prune_once(now_ms() + 30 * DAY_MS).await.unwrap();
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let latencies = writes.await.unwrap();

    assert_eq!(pruned, ENDED);
    let batches = ENDED.div_ceil(BATCH as usize);
    let max = latencies.iter().max().copied().unwrap_or_default();
    println!(
        "pruned {pruned} watches in {batches} batches in {took:?}; {} writes meanwhile, slowest {max:?}",
        latencies.len()
    );
    // Between two batches the writer is free: writes keep coming through the
    // whole pass instead of queueing behind one long delete.
    assert!(
        latencies.len() >= batches / 2,
        "only {} writes got through {batches} batches",
        latencies.len()
    );
    assert!(max < took / 2, "a write waited {max:?} of a {took:?} prune");
    let running = store.count_due(now_ms() + 60_000).await.unwrap();
    assert_eq!(
        running as usize,
        latencies.len() * 10,
        "running watches untouched"
    );
    store.close().await;
}

/// `n` new watches `{prefix}0..`, all claimed at `t0 + 1000`.
async fn post_and_claim(
    store: &SqliteStore,
    prefix: &str,
    n: usize,
    t0: i64,
) -> Vec<jobwatch::store::WatchRecord> {
    store
        .insert_watches(&new_watches(ids(prefix, n), t0))
        .await
        .unwrap();
    let claimed = store
        .claim_due_watches(t0 + 1000, n as u32, t0 + 60_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), n);
    claimed
}

/// `w`'s result after a poll that found it `RUNNING`: its `n`th poll, the next at `next`.
/// Applies the `n`th poll of each of `claimed`, answered RUNNING with the next poll
/// at `next`; each must be applied.
async fn apply_running(
    store: &SqliteStore,
    claimed: &[jobwatch::store::WatchRecord],
    n: i64,
    next: i64,
) {
    let updates: Vec<WatchUpdate> = claimed.iter().map(|w| running_result(w, n, next)).collect();
    assert_eq!(
        store.apply_watch_updates(&updates).await.unwrap(),
        vec![true; claimed.len()]
    );
}

/// The copy watch `id` as the store shows it.
async fn watch_of(store: &SqliteStore, id: &str) -> jobwatch::store::WatchRecord {
    store
        .get_watch(Kind::COPY, id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no watch {id}"))
}

fn running_result(w: &jobwatch::store::WatchRecord, n: i64, next: i64) -> WatchUpdate {
    let mut r = w.clone();
    r.state = Some("RUNNING".into());
    r.poll_count = n;
    r.last_poll_at = Some(next - 1000);
    r.next_poll_at = Some(next);
    WatchUpdate {
        record: r,
        event: None,
    }
}

/// A running watch's result taken by `hold` (on the poll loop, without the
/// writer) is shown at once, and its next claim gets the watch as that result
/// left it; a watch cancelled, or ended and posted again, meanwhile is claimed
/// as the file has it, never as the result kept of its old life.
#[tokio::test]
async fn held_results_are_what_the_next_claim_gets_until_the_watch_changes() {
    let (_dir, db) = temp_db();
    let store = open_store(&db).await;
    let t0 = 1_000_000;
    let claimed = post_and_claim(&store, "held-", 3, t0).await;
    for w in &claimed {
        let mut u = running_result(w, 1, t0 + 2_000);
        u.record.upstream.started = Some("2026-12-05T08:00:00Z".into());
        assert!(
            matches!(store.hold(u), Hold::Applied(true)),
            "a running watch's result is held"
        );
    }
    let shown = watch_of(&store, "held-0").await;
    assert_eq!(shown.state.as_deref(), Some("RUNNING"));
    assert_eq!(shown.poll_count, 1);
    let mut conn = raw(&db).await;
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM watches WHERE state IS NOT NULL"
        )
        .await,
        0,
        "held in memory, not written"
    );
    let second = running_result(&claimed[0], 2, t0 + 2_000);
    assert!(
        matches!(store.hold(second), Hold::Declined(_)),
        "a result without a claim is not held: the writer judges it"
    );

    store
        .cancel_watch(Kind::COPY, "held-1", t0 + 2_500)
        .await
        .unwrap();
    store
        .cancel_watch(Kind::COPY, "held-2", t0 + 2_500)
        .await
        .unwrap();
    store
        .insert_watches(&new_watches(vec!["held-2".into()], t0 + 2_500))
        .await
        .unwrap();

    let mut next = store
        .claim_due_watches(t0 + 5_000, 10, t0 + 60_000)
        .await
        .unwrap();
    next.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    let got: Vec<(&str, i64, i64, Option<&str>)> = next
        .iter()
        .map(|w| {
            (
                w.job_id.as_str(),
                w.generation,
                w.poll_count,
                w.state.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("held-0", 1, 1, Some("RUNNING")), ("held-2", 2, 0, None)]
    );
    assert_eq!(
        next[0].upstream.started.as_deref(),
        Some("2026-12-05T08:00:00Z")
    );
    assert_eq!(next[1].upstream.started, None, "not the old generation's");
    assert_eq!(next[0].next_poll_at, Some(t0 + 60_000), "leased");
}

// ---------------------------------------------------------------------------
// Concurrent writes.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posts_hammered_while_thousands_of_watches_are_polled_never_get_a_5xx() {
    const TASKS: usize = 8;
    const POSTS: usize = 50;
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();
    let app = Arc::new(App::start(settings(&db, &sim.url, &[])).await);
    for chunk in ids("running-h", 4000).chunks(1000) {
        let (s, b) = app.post_jobs(json!({"kind": "copy", "ids": chunk})).await;
        assert_eq!(s, 202, "{b}");
    }
    eventually(
        Duration::from_secs(20),
        "every watch polled once",
        || async { sim.sim.requests_received() >= 4000 },
    )
    .await;

    let polls_before = sim.sim.requests_received();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for p in 0..POSTS {
                let kind = if p % 2 == 0 { "copy" } else { "delete" };
                let body = json!({
                    "kind": kind,
                    "ids": [format!("succeed-t{t}-{p}"), format!("running-t{t}-{p}"), format!("failed-t{t}-{p}")],
                });
                let sent = Instant::now();
                let r = app
                    .client
                    .post(format!("{}/v1/jobs", app.url))
                    .json(&body)
                    .send()
                    .await
                    .expect("POST answered");
                answers.push((r.status().as_u16(), sent.elapsed()));
                if p % 5 == 0 {
                    let (s, b) = app.get("/v1/status").await;
                    assert_eq!(s, 200, "{b}");
                }
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.expect("task"));
    }
    let took = started.elapsed();
    let polls_during = sim.sim.requests_received() - polls_before;

    let not_202: Vec<_> = answers.iter().filter(|(s, _)| *s != 202).collect();
    assert!(not_202.is_empty(), "answers other than 202: {not_202:?}");
    assert_eq!(answers.len(), TASKS * POSTS);
    assert!(
        polls_during >= 1000,
        "polling stalled: {polls_during} polls in {took:?}"
    );
    let mut lat: Vec<Duration> = answers.iter().map(|(_, l)| *l).collect();
    lat.sort();
    println!(
        "{} POSTs by {TASKS} tasks in {took:?} while {polls_during} polls ran: no 5xx; latency p50 {:?}, p99 {:?}, max {:?}",
        answers.len(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
        lat[lat.len() - 1],
    );
    let (_, w) = app.get("/v1/jobs/copy/running-t0-0").await;
    assert!(w["poll_count"].as_i64().is_some(), "{w}");
    match Arc::try_unwrap(app) {
        Ok(app) => app.stop().await,
        Err(_) => panic!("the app is still shared"),
    }
}

// ---------------------------------------------------------------------------
// SIGTERM and SIGINT.

/// A port that refuses connections: the listener is closed.
async fn refuses(url: &str) -> bool {
    let addr = url.trim_start_matches("http://");
    tokio::net::TcpStream::connect(addr).await.is_err()
}

/// A daemon process (its config in `config`, its store in `db`, both in `_dir`,
/// which a test must keep bound) whose one delivery is in flight to `rx`.
struct InFlight {
    proc: Proc,
    rx: TestReceiver,
    config: std::path::PathBuf,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts a daemon process on `sim` (`configure` adds to its config) and posts copy
/// job `id` with a webhook to a receiver that answers after `answer_after`; returns
/// once that delivery is in flight.
async fn delivery_in_flight(
    sim: &Sim,
    id: &str,
    answer_after: Duration,
    configure: impl FnOnce(&mut ConfigFile),
) -> InFlight {
    let secret = SigningSecret::generate();
    let rx = TestReceiver::start(Some(secret.clone())).await;
    rx.respond_with(Plan::Slow(answer_after));
    let (dir, db) = temp_db();
    let mut cfg = ConfigFile::new(&db, &sim.url);
    cfg.set("webhooks", "signing_secret", &secret.to_whsec())
        .raw("webhooks", "allow_private_targets = true");
    configure(&mut cfg);
    let config = cfg.write(&dir.path().join("jobwatch.toml"));
    let proc = Proc::start(&config).await;

    let (s, b) = proc
        .post_jobs(&json!({"kind": "copy", "ids": [id], "webhook_url": rx.url}))
        .await
        .unwrap();
    assert_eq!(s, 202, "{b}");
    eventually(Duration::from_secs(10), "a delivery in flight", || async {
        rx.received().iter().any(|r| r.status == 0)
    })
    .await;
    InFlight {
        proc,
        rx,
        config,
        db,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_polls_and_deliveries_finish_commits_them_and_exits_0() {
    // Every poll takes 1.5 s to answer; the receiver takes 2.5 s.
    let sim = Sim::start(SimulateArgs {
        slow_ratio: 1.0,
        slow_delay: Duration::from_millis(1500),
        ..Sim::fast()
    })
    .await;
    let InFlight {
        mut proc,
        rx,
        db,
        _dir,
        ..
    } = delivery_in_flight(&sim, "succeed-term", Duration::from_millis(2500), |cfg| {
        cfg.set("api", "shutdown_grace", "8s");
    })
    .await;
    let (s, b) = proc
        .post_jobs(&json!({"kind": "delete", "ids": ["running-term"]}))
        .await
        .unwrap();
    assert_eq!(s, 202, "{b}");
    eventually(Duration::from_secs(5), "a poll in flight", || async {
        sim.sim.polls_of("delete", "running-term") == 1
    })
    .await;

    let signalled = Instant::now();
    proc.signal(libc::SIGTERM);
    // The listener stops while the work still runs.
    eventually(Duration::from_secs(2), "the listener closes", || async {
        refuses(&proc.url).await
    })
    .await;
    assert!(
        proc.try_exit().is_none(),
        "exited before the in-flight work finished"
    );
    let exit = proc.wait_exit(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    assert_eq!(exit.code(), Some(0), "{}", proc.log());
    assert!(
        took >= Duration::from_millis(500),
        "exited after {took:?}: it did not wait"
    );
    assert!(!proc.log().contains("within the grace"), "{}", proc.log());

    // What was in flight finished, and its result was committed before the exit.
    let delivered: Vec<_> = rx.received().into_iter().filter(|r| r.ok).collect();
    assert_eq!(delivered.len(), 1, "the slow delivery completed");
    let store = open_store(&db).await;
    let w = store
        .get_watch(Kind::DELETE, "running-term")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(w.poll_count, 1, "the in-flight poll's answer was stored");
    assert_eq!(w.state.as_deref(), Some("RUNNING"));
    assert_eq!(sim.sim.polls_of("delete", "running-term"), 1);
    let s = store
        .get_watch(Kind::COPY, "succeed-term")
        .await
        .unwrap()
        .expect("stored");
    let d = store
        .deliveries_of_watch(s.wid, s.generation)
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].status, DeliveryStatus::Delivered, "{d:?}");
    assert_eq!(d[0].attempts, 1);
    assert_eq!(d[0].webhook_id, delivered[0].webhook_id);
    store.close().await;
    println!("SIGTERM to exit 0 in {took:?} with a poll and a delivery in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_past_the_grace_exits_0_and_the_cut_delivery_is_sent_after_restart() {
    let sim = Sim::start(Sim::fast()).await;
    let InFlight {
        mut proc,
        rx,
        db,
        config,
        _dir,
    } = delivery_in_flight(&sim, "succeed-int", Duration::from_secs(20), |cfg| {
        cfg.set("api", "shutdown_grace", "500ms")
            .set("webhooks", "request_timeout", "30s");
    })
    .await;
    let signalled = Instant::now();
    proc.signal(libc::SIGINT);
    let exit = proc.wait_exit(Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    assert_eq!(exit.code(), Some(0), "{}", proc.log());
    assert!(
        took < Duration::from_secs(5),
        "the grace bounds the exit: {took:?}"
    );

    // Not delivered, and not lost: still pending in the file, never attempted.
    let store = open_store(&db).await;
    let w = store
        .get_watch(Kind::COPY, "succeed-int")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(w.outcome, Some(Outcome::Succeeded));
    let d = store
        .deliveries_of_watch(w.wid, w.generation)
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].status, DeliveryStatus::Pending, "{d:?}");
    store.close().await;

    // After a restart it is sent again, under the same webhook-id.
    rx.respond_with(Plan::Ok);
    let mut proc = Proc::start(&config).await;
    let got = rx.wait_for(1, Duration::from_secs(15)).await;
    let all = rx.received();
    assert_eq!(
        all.len(),
        2,
        "the cut attempt and the one after the restart"
    );
    assert!(!all[0].ok, "the cut attempt never completed");
    assert_eq!(got[0].webhook_id, all[0].webhook_id);
    eventually(Duration::from_secs(10), "recorded as delivered", || async {
        let (_, w) = proc.get("/v1/jobs/copy/succeed-int").await;
        w["deliveries"][0]["status"] == "delivered"
    })
    .await;
    proc.signal(libc::SIGTERM);
    assert_eq!(
        proc.wait_exit(Duration::from_secs(10)).await.code(),
        Some(0)
    );
    println!("SIGINT past a 500 ms grace: exit 0 in {took:?}; the cut delivery was sent after the restart");
}

// ---------------------------------------------------------------------------
// A failing store.

/// `POST /v1/jobs` of `ids`, without a webhook.
async fn post_ids(app: &App, kind: &str, ids: &[String]) -> (u16, Value) {
    app.post_jobs(json!({"kind": kind, "ids": ids})).await
}

fn assert_unavailable(what: &str, status: u16, body: &Value) {
    assert_eq!(status, 503, "{what}: {body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_database_file_gives_503_until_it_is_back() {
    let sim = Sim::start(Sim::fast()).await;
    let (dir, db) = temp_db();
    let app = App::start(settings(&db, &sim.url, &[])).await;
    let (s, b) = post_ids(&app, "copy", &ids("succeed-before-", 20)).await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = post_ids(&app, "copy", &["running-1".to_string()]).await;
    assert_eq!(s, 202, "{b}");
    app.wait_outcome("copy", "succeed-before-19", 10).await;

    // Someone moves the file away. SQLite alone would go on writing into the
    // unlinked file, and the next start would begin from nothing.
    let aside = dir.path().join("aside.db");
    std::fs::rename(&db, &aside).unwrap();
    let during = ids("succeed-during-", 5);
    for _ in 0..3 {
        let (s, b) = post_ids(&app, "copy", &during).await;
        assert_unavailable("POST while the file is gone", s, &b);
    }
    let (s, b) = app.get("/v1/jobs/copy/running-1").await;
    assert_unavailable("GET while the file is gone", s, &b);
    let (s, _) = app.get("/healthz").await;
    assert_eq!(s, 200, "the process keeps running");
    let (s, _) = app.get("/readyz").await;
    assert_eq!(s, 503, "not ready without its store");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // It comes back: the daemon takes it up again, polling resumes.
    std::fs::rename(&aside, &db).unwrap();
    let after = ids("succeed-after-", 5);
    let (s, b) = post_ids(&app, "copy", &after).await;
    assert_eq!(s, 202, "{b}");
    let (_, w) = app.get("/v1/jobs/copy/running-1").await;
    let polls = w["poll_count"].as_i64().unwrap();
    eventually(
        Duration::from_secs(10),
        "running-1 is polled again",
        || async {
            let (_, w) = app.get("/v1/jobs/copy/running-1").await;
            w["poll_count"].as_i64().unwrap() > polls
        },
    )
    .await;
    app.wait_outcome("copy", "succeed-after-4", 10).await;
    let (s, _) = app.get("/v1/jobs/copy/succeed-during-0").await;
    assert_eq!(s, 404, "answered 503, so never stored");

    // Replaced by a copy (a restore from backup): new connections open the new file.
    std::fs::rename(&db, &aside).unwrap();
    let (s, b) = post_ids(&app, "copy", &ids("succeed-gone-", 2)).await;
    assert_unavailable("POST while the file is gone again", s, &b);
    std::fs::copy(&aside, &db).unwrap();
    let restored = ids("succeed-restored-", 5);
    let (s, b) = post_ids(&app, "copy", &restored).await;
    assert_eq!(s, 202, "{b}");
    app.wait_outcome("copy", "succeed-restored-4", 10).await;
    app.stop().await;

    // What was acknowledged is in the file at the path, not in the one moved away.
    let store = open_store(&db).await;
    for id in ["succeed-before-0", "succeed-after-0", "succeed-restored-4"] {
        let w = store.get_watch(Kind::COPY, id).await.unwrap();
        assert_eq!(w.and_then(|w| w.outcome), Some(Outcome::Succeeded), "{id}");
    }
    for id in ["succeed-during-0", "succeed-gone-0"] {
        assert!(
            store.get_watch(Kind::COPY, id).await.unwrap().is_none(),
            "{id}"
        );
    }
    store.close().await;
}

/// Sets the child's file-size limit (soft; the hard limit stays unlimited). With
/// 0, every write to a regular file fails with EFBIG, as on a full disk; the
/// daemon's stderr is a pipe, so its logs still get out.
fn limit_file_size(pid: i32, bytes: Option<u64>) {
    let limit = libc::rlimit {
        rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit on our own child with a valid struct and no old-limit out-pointer.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_answer_503_acknowledge_nothing_and_recover() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    let rx = TestReceiver::start(Some(secret.clone())).await;
    let (dir, db) = temp_db();
    let mut cfg = ConfigFile::new(&db, &sim.url);
    // Checkpoints often: the running watches' poll bookkeeping is a write too.
    cfg.set("api", "shutdown_grace", "1s")
        .set("store", "checkpoint_interval", "200ms")
        .set("webhooks", "signing_secret", &secret.to_whsec())
        .raw("webhooks", "allow_private_targets = true");
    let config = cfg.write(&dir.path().join("jobwatch.toml"));
    let mut proc = Proc::start_with(
        &config,
        Options {
            ignore_sigxfsz: true,
            log_file: None,
        },
    )
    .await;
    let post = |proc: &Proc, ids: Vec<String>| {
        let body = json!({"kind": "copy", "ids": ids, "webhook_url": rx.url});
        let proc_url = proc.url.clone();
        let client = proc.client.clone();
        async move {
            let r = client
                .post(format!("{proc_url}/v1/jobs"))
                .json(&body)
                .send()
                .await
                .expect("answered");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let before = ids("succeed-a", 50);
    let (s, b) = post(&proc, before.clone()).await;
    assert_eq!(s, 202, "{b}");

    // The disk is full: every write fails.
    limit_file_size(proc.pid(), Some(0));
    let refused = ids("succeed-c", 20);
    for _ in 0..5 {
        let (s, b) = post(&proc, refused.clone()).await;
        assert_unavailable("POST with a full disk", s, &b);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        proc.try_exit().is_none(),
        "it keeps running:\n{}",
        proc.log()
    );
    let (s, _) = proc.get("/healthz").await;
    assert_eq!(s, 200);
    let (s, w) = proc.get("/v1/jobs/copy/succeed-a0").await;
    assert_eq!(s, 200, "reads still work: {w}");

    // Space again: writes go through, the poll results the writer held are committed.
    limit_file_size(proc.pid(), None);
    let after = ids("succeed-b", 50);
    let (s, b) = post(&proc, after.clone()).await;
    assert_eq!(s, 202, "{b}");
    let status = proc.wait_settled(Duration::from_secs(20)).await;
    assert_eq!(
        status["webhooks"]["deliveries"]["delivered"], 100,
        "{status}"
    );
    let (s, r) = proc.get("/readyz").await;
    assert_eq!(s, 200, "ready again once writes go through: {r}");
    assert!(
        proc.log().contains("store"),
        "the failure was logged:\n{}",
        proc.log()
    );

    // Full again, with writes queued, and then SIGTERM: the exit is bounded by the
    // grace even though nothing can be committed.
    let running = ids("running-z", 20);
    let (s, b) = post(&proc, running.clone()).await;
    assert_eq!(s, 202, "{b}");
    eventually(
        Duration::from_secs(5),
        "the running watches are polled",
        || async { sim.sim.polls_of("copy", "running-z19") >= 1 },
    )
    .await;
    limit_file_size(proc.pid(), Some(0));
    eventually(
        Duration::from_secs(5),
        "/readyz reports that poll results cannot be committed",
        || async { proc.get("/readyz").await.0 == 503 },
    )
    .await;
    let signalled = Instant::now();
    proc.signal(libc::SIGTERM);
    let exit = proc.wait_exit(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(6), "exit took {took:?}");

    // Nothing acknowledged was lost; nothing refused was stored.
    let proc = Proc::start(&config).await;
    for id in before.iter().chain(&after) {
        let (s, w) = proc.get(&format!("/v1/jobs/copy/{id}")).await;
        assert_eq!(s, 200, "{id}");
        assert_eq!(w["outcome"], "succeeded", "{w}");
    }
    for id in &running {
        let (s, _) = proc.get(&format!("/v1/jobs/copy/{id}")).await;
        assert_eq!(s, 200, "{id}");
    }
    for id in &refused {
        let (s, _) = proc.get(&format!("/v1/jobs/copy/{id}")).await;
        assert_eq!(s, 404, "{id} was answered 503, so never stored");
    }
    println!(
        "full disk: 503 store_unavailable, recovered; SIGTERM with a failing store exited ({exit}) in {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_log_file_too_still_answers_503_and_stops_on_sigterm() {
    let sim = Sim::start(Sim::fast()).await;
    let (dir, db) = temp_db();
    let mut cfg = ConfigFile::new(&db, &sim.url);
    cfg.set("api", "shutdown_grace", "1s")
        .set("log", "level", "info");
    let config = cfg.write(&dir.path().join("jobwatch.toml"));
    let log = dir.path().join("jobwatch.log");
    let mut proc = Proc::start_with(
        &config,
        Options {
            ignore_sigxfsz: true,
            log_file: Some(&log),
        },
    )
    .await;
    let (s, b) = proc
        .post_jobs(&json!({"kind": "copy", "ids": ["running-log"]}))
        .await
        .unwrap();
    assert_eq!(s, 202, "{b}");

    // Neither the store nor the log can be written: a failed log line must not take
    // the request (or the signal handler) down with it.
    limit_file_size(proc.pid(), Some(0));
    for _ in 0..3 {
        let (s, b) = proc
            .post_jobs(&json!({"kind": "copy", "ids": ["succeed-log"]}))
            .await
            .expect("an answer, not a dropped connection");
        assert_unavailable("POST with the store and the log on a full disk", s, &b);
    }
    let (s, _) = proc.get("/healthz").await;
    assert_eq!(s, 200);
    proc.signal(libc::SIGTERM);
    let exit = proc.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0), "{}", proc.log());
}

// ---------------------------------------------------------------------------
// Files that are not ours.

#[tokio::test]
async fn a_database_from_a_newer_jobwatch_stops_the_start() {
    let (dir, db) = temp_db();
    let store = open_store(&db).await;
    store.close().await;
    let mut conn = raw(&db).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990101000000, 'from the future', true, x'00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let config =
        ConfigFile::new(&db, "http://127.0.0.1:9").write(&dir.path().join("jobwatch.toml"));
    let (exit, stderr) = serve_until_exit(&config, Duration::from_secs(20)).await;
    assert!(exit.code().is_some_and(|c| c != 0), "{exit}: {stderr}");
    assert!(
        stderr.contains("newer jobwatch") && stderr.contains("99990101000000"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_jobwatch_database_stops_the_start_and_is_left_untouched() {
    let (dir, db) = temp_db();
    // Another program's SQLite database.
    let mut conn = SqliteConnection::connect(&format!("{}?mode=rwc", sqlite_url(&db)))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO customers (name) VALUES ('ada')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "these are my notes, not a database\n".repeat(100)).unwrap();

    for (file, says) in [
        (&db, "is not a jobwatch database"),
        (&text, "is not a SQLite database"),
    ] {
        let bytes = std::fs::read(file).unwrap();
        let config =
            ConfigFile::new(file, "http://127.0.0.1:9").write(&dir.path().join("jobwatch.toml"));
        let (exit, stderr) = serve_until_exit(&config, Duration::from_secs(20)).await;
        assert!(
            exit.code().is_some_and(|c| c != 0),
            "{}: {exit}: {stderr}",
            file.display()
        );
        assert!(stderr.contains(says), "{}: {stderr}", file.display());
        assert_eq!(
            std::fs::read(file).unwrap(),
            bytes,
            "{} was changed",
            file.display()
        );
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with("-wal") || n.ends_with("-shm")),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_next_to_its_write_ahead_log_stops_the_start() {
    let sim = Sim::start(Sim::fast()).await;
    let (dir, db) = temp_db();
    let config = ConfigFile::new(&db, &sim.url).write(&dir.path().join("jobwatch.toml"));
    let mut proc = Proc::start(&config).await;
    let (s, b) = proc
        .post_jobs(&json!({"kind": "copy", "ids": ["running-wal"]}))
        .await
        .unwrap();
    assert_eq!(s, 202, "{b}");
    // Killed, its log is left beside the file; then the file is deleted.
    proc.kill();
    let wal = dir.path().join("jobwatch.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    std::fs::remove_file(&db).unwrap();

    let (exit, stderr) = serve_until_exit(&config, Duration::from_secs(20)).await;
    assert!(exit.code().is_some_and(|c| c != 0), "{exit}: {stderr}");
    assert!(
        stderr.contains("missing") && stderr.contains("jobwatch.db-wal"),
        "{stderr}"
    );
    assert!(!db.exists(), "no empty database was created in its place");
}

// ---------------------------------------------------------------------------
// Poll bookkeeping kept in memory (src/store/schedule.rs).

/// A poll result that changes only a watch's bookkeeping is shown at once and
/// written at the checkpoint; a state change is written at once; an outcome
/// removes the watch from the schedule; a restart reads the schedule back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_results_are_shown_at_once_and_written_at_the_checkpoint() {
    let (_dir, db) = temp_db();
    let store = open_store(&db).await;
    let t0 = now_ms();
    store
        .insert_watches(&new_watches(ids("book-", 2), t0))
        .await
        .unwrap();
    let mut conn = raw(&db).await;
    let file_polls =
        |id: &'static str| format!("SELECT poll_count FROM watches WHERE job_id = '{id}'");

    // First poll: the state appears.
    let claimed = store
        .claim_due_watches(t0 + 1000, 10, t0 + 60_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(
        store
            .claim_due_watches(t0 + 1000, 10, t0 + 60_000)
            .await
            .unwrap()
            .is_empty(),
        "claimed watches are not claimed twice"
    );
    apply_running(&store, &claimed, 1, t0 + 2000).await;
    // Shown at once and counted by state, but held in memory like bookkeeping...
    let shown = watch_of(&store, "book-0").await;
    assert_eq!(
        (shown.state.as_deref(), shown.poll_count),
        (Some("RUNNING"), 1)
    );
    assert_eq!(
        count(&mut conn, &file_polls("book-0")).await,
        0,
        "a state change waits for the checkpoint too"
    );
    let counts = store.counts(t0 + 1000).await.unwrap();
    assert_eq!(counts.running_by_state, vec![(Some("RUNNING".into()), 2)]);
    assert_eq!(counts.running, 2);
    // ...until a list selects by state: it writes the held states first.
    let running = jobwatch::store::ListFilter {
        state: Some("RUNNING".into()),
        ..Default::default()
    };
    assert_eq!(
        store.list_watches(&running, 10, None).await.unwrap().len(),
        2
    );
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM watches WHERE state = 'RUNNING' AND poll_count = 1"
        )
        .await,
        2,
        "a list by state writes the states it selects by"
    );

    // Second poll: only the bookkeeping changes. Shown at once, not yet in the file.
    let claimed = store
        .claim_due_watches(t0 + 2000, 10, t0 + 60_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].poll_count, 1);
    apply_running(&store, &claimed, 2, t0 + 5000).await;
    let shown = watch_of(&store, "book-0").await;
    assert_eq!((shown.poll_count, shown.next_poll_at), (2, Some(t0 + 5000)));
    assert_eq!(
        count(&mut conn, &file_polls("book-0")).await,
        1,
        "bookkeeping waits for the checkpoint"
    );
    assert_eq!(store.next_wakeup().await.unwrap(), Some(t0 + 5000));
    assert!(store
        .claim_due_watches(t0 + 4999, 10, t0 + 60_000)
        .await
        .unwrap()
        .is_empty());

    // The checkpoint writes it.
    assert_eq!(store.checkpoint().await.unwrap(), 2);
    assert_eq!(count(&mut conn, &file_polls("book-0")).await, 2);
    assert_eq!(
        store.checkpoint().await.unwrap(),
        0,
        "nothing left to write"
    );

    // A third poll's bookkeeping, then the watch ends: the outcome is written with
    // its counters and the watch leaves the schedule.
    let claimed = store
        .claim_due_watches(t0 + 5000, 10, t0 + 60_000)
        .await
        .unwrap();
    let third: Vec<WatchUpdate> = claimed
        .iter()
        .map(|w| running_result(w, 3, t0 + 9000))
        .collect();
    store.apply_watch_updates(&third).await.unwrap();
    let claimed = store
        .claim_due_watches(t0 + 9000, 1, t0 + 60_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let mut ended = claimed[0].clone();
    ended.state = Some("SUCCESS".into());
    ended.poll_count = 4;
    ended.outcome = Some(Outcome::Succeeded);
    ended.outcome_at = Some(t0 + 9000);
    ended.next_poll_at = None;
    let ended_id = ended.job_id.clone();
    assert_eq!(
        store
            .apply_watch_updates(&[WatchUpdate {
                record: ended,
                event: None
            }])
            .await
            .unwrap(),
        vec![true]
    );
    let polls: i64 = sqlx::query_scalar("SELECT poll_count FROM watches WHERE job_id = ?1")
        .bind(&ended_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(polls, 4, "the outcome is written with its counters");

    // A restart (without a checkpoint: the other watch's third poll is lost, as
    // after kill -9) reads the schedule back from the file: one running watch.
    drop(store);
    let store = open_store(&db).await;
    let running = store
        .claim_due_watches(t0 + 60_000, 10, t0 + 120_000)
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    assert_ne!(running[0].job_id, ended_id);
    assert_eq!(
        running[0].poll_count, 2,
        "the bookkeeping of the last checkpoint"
    );
    assert_eq!(running[0].state.as_deref(), Some("RUNNING"));
    conn.close().await.ok();
    store.close().await;
}

/// `/readyz` names a failing checkpoint on its own: the file refuses the
/// bookkeeping-only updates a checkpoint makes while state changes and outcomes
/// still commit, so the write flag stays clear and a job still ends. The next
/// checkpoint that goes through makes the daemon ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_failing_checkpoint_until_one_goes_through() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();
    let app = App::start(settings(
        &db,
        &sim.url,
        &[("store.checkpoint_interval", "100ms")],
    ))
    .await;
    let (s, b) = post_ids(&app, "copy", &ids("running-ck-", 3)).await;
    assert_eq!(s, 202, "{b}");

    let mut conn = raw(&db).await;
    sqlx::query(
        "CREATE TRIGGER refuse_bookkeeping BEFORE UPDATE ON watches
         WHEN NEW.state IS OLD.state AND NEW.outcome IS OLD.outcome AND NEW.last_error IS OLD.last_error
         BEGIN SELECT RAISE(ABORT, 'bookkeeping refused by the test'); END",
    )
    .execute(&mut conn)
    .await
    .expect("create the trigger");
    let readyz = || async { app.get("/readyz").await };
    eventually(
        Duration::from_secs(10),
        "/readyz names the failing checkpoint",
        || async {
            let (s, b) = readyz().await;
            s == 503 && b["problems"].to_string().contains("checkpoint")
        },
    )
    .await;
    let (_, b) = readyz().await;
    assert!(
        !b["problems"].to_string().contains("does not take writes"),
        "poll results still commit: {b}"
    );
    let (s, b) = post_ids(&app, "copy", &ids("succeed-ck-", 1)).await;
    assert_eq!(s, 202, "{b}");
    eventually(
        Duration::from_secs(10),
        "an outcome still commits while checkpoints fail",
        || async { app.get("/v1/jobs/copy/succeed-ck-0").await.1["outcome"] == "succeeded" },
    )
    .await;

    sqlx::query("DROP TRIGGER refuse_bookkeeping")
        .execute(&mut conn)
        .await
        .expect("drop the trigger");
    eventually(
        Duration::from_secs(10),
        "ready again after a checkpoint goes through",
        || async { readyz().await.0 == 200 },
    )
    .await;
    app.stop().await;
}

/// A watch cancelled while its last state is held in memory keeps that state in
/// the file (and its poll counters), not the one of the last checkpoint.
#[tokio::test]
async fn a_cancelled_watch_keeps_the_state_it_was_last_seen_in() {
    let (_dir, db) = temp_db();
    let store = open_store(&db).await;
    let t0 = now_ms();
    let claimed = post_and_claim(&store, "gone-", 1, t0).await;
    let update = running_result(&claimed[0], 1, t0 + 3000);
    assert_eq!(
        store.apply_watch_updates(&[update]).await.unwrap(),
        vec![true]
    );
    let mut conn = raw(&db).await;
    let in_file = "SELECT count(*) FROM watches WHERE state = 'RUNNING' AND poll_count = 1";
    assert_eq!(count(&mut conn, in_file).await, 0, "held in memory");
    let cancelled = store
        .cancel_watch(Kind::COPY, "gone-0", t0 + 2000)
        .await
        .unwrap();
    let jobwatch::store::Cancelled::Now(w) = cancelled else {
        panic!("not cancelled: {cancelled:?}")
    };
    assert_eq!(w.state.as_deref(), Some("RUNNING"));
    assert_eq!(
        count(&mut conn, &format!("{in_file} AND outcome = 'cancelled'")).await,
        1,
        "the cancelled watch's row has its last state"
    );
}

/// State changes held in memory are bounded: past a quarter of the running
/// watches (at least 5,000) they are written at once, in the batch that passed
/// the bound, so memory does not grow with every running watch.
#[tokio::test]
async fn held_state_changes_past_their_bound_are_written_at_once() {
    let (_dir, db) = temp_db();
    let store = open_store(&db).await;
    let t0 = now_ms();
    let n = 6_000;
    let claimed = post_and_claim(&store, "many-", n, t0).await;
    let running = |w| running_result(w, 1, t0 + 5000);
    let mut conn = raw(&db).await;
    let in_file = "SELECT count(*) FROM watches WHERE state = 'RUNNING'";
    // Up to the bound, held.
    let first: Vec<WatchUpdate> = claimed[..5_000].iter().map(running).collect();
    store.apply_watch_updates(&first).await.unwrap();
    assert_eq!(count(&mut conn, in_file).await, 0, "5,000 are held");
    // One more passes it: every held change is written.
    let rest: Vec<WatchUpdate> = claimed[5_000..].iter().map(running).collect();
    store.apply_watch_updates(&rest).await.unwrap();
    assert_eq!(count(&mut conn, in_file).await, n as i64);
    let counts = store.counts(t0 + 1000).await.unwrap();
    assert_eq!(
        counts.running_by_state,
        vec![(Some("RUNNING".into()), n as i64)],
        "counted once, from the file"
    );
}

/// Poll results waiting in memory for the checkpoint are bounded: past the bound
/// the store asks for a checkpoint at once instead of at its time, and that
/// checkpoint writes them (at 1,000,000 watches, waiting for the timed one took
/// the daemon's peak RSS to 432 MiB).
#[tokio::test]
async fn results_waiting_past_their_bound_ask_for_a_checkpoint_at_once() {
    let (_dir, db) = temp_db();
    let store = open_store(&db).await.with_unwritten_bound(100);
    let t0 = now_ms();
    let n = 101;
    let claimed = post_and_claim(&store, "bound-", n, t0).await;
    async fn asked(store: &SqliteStore) -> bool {
        tokio::time::timeout(Duration::from_millis(100), store.checkpoint_wanted())
            .await
            .is_ok()
    }
    let mut conn = raw(&db).await;
    let in_file = "SELECT count(*) FROM watches WHERE poll_count = 1";
    let first: Vec<WatchUpdate> = claimed[..100]
        .iter()
        .map(|w| running_result(w, 1, t0 + 5000))
        .collect();
    store.apply_watch_updates(&first).await.unwrap();
    assert!(
        !asked(&store).await,
        "100 may wait for the timed checkpoint"
    );
    assert_eq!(count(&mut conn, in_file).await, 0, "they wait in memory");
    store
        .apply_watch_updates(&[running_result(&claimed[100], 1, t0 + 5000)])
        .await
        .unwrap();
    assert!(asked(&store).await, "the 101st asks for a checkpoint now");
    assert_eq!(store.checkpoint().await.unwrap(), n as u64);
    assert_eq!(count(&mut conn, in_file).await, n as i64);
}
