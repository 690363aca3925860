//! Issue 4: every poll shares one rate budget, obeys every 429 and survives a
//! misbehaving upstream. Each test drives the daemon against the real simulator
//! and judges the daemon by the simulator's request log (arrival times and the
//! statuses answered), not by the daemon's own account of itself.
//!
//! Run with `cargo test --test it upstream:: -- --nocapture` to see the figures.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, SystemTime};

use jobwatch::simulator::{LoggedRequest, RetryAfterForm, SimulateArgs, Simulator};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// The tests that measure time to the millisecond in the simulator's log run
/// alone (`exclusive`); the others of this module share (`shared`). Two busy
/// daemons on a small machine delay the simulator's stamps by more than the
/// slack those measurements allow.
static TIMING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    TIMING.write().await
}

async fn shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    TIMING.read().await
}

/// How many requests a window may hold beyond what the budget allows, at `rate`:
/// 25 ms worth of arrival jitter (the stamps of a window's first requests coming
/// late lets it reach that much further), not budget. A real leak, such as a
/// second burst, is many times this.
fn jitter_requests(rate: f64) -> usize {
    (rate * 0.025).ceil() as usize
}

/// The simulator on a thread and runtime of its own. It stamps each request when
/// its handler starts; sharing the test's runtime, that start waits behind the
/// daemon's tasks and the stamps drift by tens of milliseconds under load, which
/// is noise for measurements at this grain.
struct OwnSim {
    sim: Simulator,
    url: String,
    shutdown: CancellationToken,
}

impl OwnSim {
    fn start(args: SimulateArgs) -> OwnSim {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind simulator");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("simulator addr"));
        let sim = Simulator::new(SimulateArgs {
            keep_log: true,
            ..args
        });
        let shutdown = CancellationToken::new();
        let (serving, stop) = (sim.clone(), shutdown.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("simulator runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("simulator listener");
                serving
                    .serve(listener, stop)
                    .await
                    .expect("simulator serves");
            });
        });
        OwnSim { sim, url, shutdown }
    }
}

impl Drop for OwnSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Unix time in milliseconds, the clock of the simulator's log.
fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
        * 1000.0
}

/// An RFC 3339 time of the API as Unix milliseconds.
fn rfc3339_ms(v: &Value) -> f64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_millis() as f64
}

/// Polls `check` every 50 ms until it gives a value, or panics after `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {secs}s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Arrival times (sorted) of the status requests in `log`, from `since` on.
fn status_times(log: &[LoggedRequest], since: f64) -> Vec<f64> {
    let mut t: Vec<f64> = log
        .iter()
        .filter(|r| r.path.ends_with("/status") && r.t_ms >= since)
        .map(|r| r.t_ms)
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

/// The most entries of sorted `t` in any window `[s, s + len_ms)`, and where it starts.
fn busiest_window(t: &[f64], len_ms: f64) -> (usize, f64) {
    let (mut best, mut at, mut lo) = (0, 0.0, 0);
    for hi in 0..t.len() {
        while t[hi] - t[lo] >= len_ms {
            lo += 1;
        }
        if hi - lo + 1 > best {
            best = hi - lo + 1;
            at = t[lo];
        }
    }
    (best, at)
}

fn status_path(kind: &str, id: &str) -> String {
    format!("/products/{id}/search/{kind}/status")
}

/// Every watch of `kind`, page by page.
async fn all_watches(app: &App, kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .get(&format!("/v1/jobs?kind={kind}&limit=1000&cursor={cursor}"))
            .await;
        assert_eq!(status, 200, "{page}");
        out.extend(page["jobs"].as_array().expect("jobs").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return out,
        }
    }
}

async fn upstream_health(app: &App) -> Value {
    let (status, body) = app.get("/v1/status").await;
    assert_eq!(status, 200, "{body}");
    body["upstream"].clone()
}

async fn readyz(app: &App) -> u16 {
    app.get("/readyz").await.0
}

async fn post(app: &App, kind: &str, ids: &[String], extra: Value) {
    let mut body = json!({"kind": kind, "ids": ids});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let (status, answer) = app.post_jobs(body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["new"], ids.len(), "{answer}");
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// A 429 (or 401) is about the upstream, not the watch: it is neither a poll nor an
/// error of it. So each watch's `poll_count` is exactly the number of its requests
/// the simulator answered with anything else, and no error is counted.
fn assert_only_real_answers_count(watches: &[Value], log: &[LoggedRequest], kind: &str) {
    let mut answered: HashMap<&str, i64> = HashMap::new();
    for r in log {
        if !matches!(r.status, 429 | 401 | 403) {
            *answered.entry(r.path.as_str()).or_default() += 1;
        }
    }
    for w in watches {
        let id = w["id"].as_str().expect("id");
        let path = status_path(kind, id);
        assert_eq!(
            w["poll_count"].as_i64(),
            Some(answered.get(path.as_str()).copied().unwrap_or(0)),
            "poll_count of {id} is its answered requests: {w}"
        );
        assert_eq!(w["error_count"], 0, "{w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_of_2000_watches_stay_within_the_rate_and_burst_in_every_second() {
    let _turn = exclusive().await;
    const RATE: f64 = 200.0;
    const BURST: usize = 20;
    let sim = OwnSim::start(Sim::fast());
    let (_dir, app) = start_app(
        &sim.url,
        &[
            ("upstream.max_requests_per_second", "200"),
            ("upstream.burst", "20"),
        ],
    )
    .await;
    // `running-` jobs never end: 2,000 of them at a 100..400 ms cadence want far
    // more than the budget, so the daemon runs at its limit the whole time.
    post(&app, "copy", &ids("running-", 2000), json!({})).await;
    let first = eventually(5, "a first poll", || async {
        sim.sim.request_log().first().map(|r| r.t_ms)
    })
    .await;
    eventually(10, "4 s of polling", || async {
        (unix_ms() - first >= 4000.0).then_some(())
    })
    .await;
    let health = upstream_health(&app).await;
    app.stop().await;

    let t = status_times(&sim.sim.request_log(), first);
    let (busiest, at) = busiest_window(&t, 1000.0);
    let steady = t
        .iter()
        .filter(|x| **x >= first + 1000.0 && **x < first + 4000.0)
        .count() as f64
        / 3.0;
    println!(
        "budget {RATE}/s + burst {BURST}: {} requests in 4 s; busiest 1 s window {busiest} \
         (at +{:.0} ms); steady rate {steady:.1}/s = {:.1}% of the limit; daemon says {:.1} polls/s",
        t.iter().filter(|x| **x < first + 4000.0).count(),
        at - first,
        100.0 * steady / RATE,
        health["polls_per_second"].as_f64().unwrap_or(0.0),
    );
    assert!(
        busiest <= RATE as usize + BURST + jitter_requests(RATE),
        "{busiest} requests in the 1 s window starting at +{:.0} ms",
        at - first
    );
    assert!(
        steady >= 0.9 * RATE,
        "the budget is used: {steady:.1}/s of {RATE}/s"
    );
    assert_eq!(health["allowed_rate"], RATE);
    assert_eq!(health["configured_rate"], RATE);
    assert_eq!(health["credentials"], "ok");
}

/// The daemon polls faster than the simulator allows, so the simulator answers
/// 429s; not one request may arrive while the Retry-After it named is running.
async fn no_request_arrives_inside_a_retry_after_pause(form: RetryAfterForm) {
    let _turn = exclusive().await;
    const SLACK_MS: f64 = 50.0;
    // The simulator stamps a request when its handler starts, which lags the
    // socket when a burst queues up; a small daemon burst keeps the stamps honest.
    let sim = OwnSim::start(SimulateArgs {
        rate_limit: Some(50.0),
        rate_burst: Some(20),
        retry_after_form: form,
        ..Sim::fast()
    });
    let (_dir, app) = start_app(
        &sim.url,
        &[
            ("upstream.max_requests_per_second", "150"),
            ("upstream.burst", "5"),
        ],
    )
    .await;
    let succeed = ids("succeed-", 40);
    let failed = ids("failed-", 20);
    post(&app, "copy", &succeed, json!({})).await;
    post(&app, "copy", &failed, json!({})).await;

    // While it runs, status shows the pause and the 429s.
    let mut saw_pause = false;
    let mut saw_recent_429s = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (_, s) = app.get("/v1/status").await;
        saw_pause |= !s["upstream"]["paused_until"].is_null();
        saw_recent_429s |= s["upstream"]["rate_limited_last_minute"].as_u64() > Some(0);
        if s["watches"]["running"] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still running: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = upstream_health(&app).await;
    let watches = all_watches(&app, "copy").await;
    app.stop().await;
    let log = sim.sim.request_log();

    let pauses: Vec<(f64, f64)> = log
        .iter()
        .filter(|r| r.status == 429)
        .map(|r| {
            let ra = r
                .retry_after_ms
                .unwrap_or_else(|| panic!("a 429 without Retry-After: {r:?}"));
            (r.t_ms, ra)
        })
        .collect();
    assert!(pauses.len() >= 3, "the simulator rate-limited: {pauses:?}");
    let mut inside = vec![];
    let mut closest_after_end = f64::MAX;
    for &(t, ra) in &pauses {
        for r in &log {
            if r.t_ms > t + SLACK_MS && r.t_ms < t + ra - SLACK_MS {
                inside.push((t, ra, r.t_ms - t, r.path.clone(), r.status));
            }
        }
        if let Some(next) = log
            .iter()
            .map(|r| r.t_ms)
            .filter(|x| *x > t + SLACK_MS)
            .min_by(f64::total_cmp)
        {
            closest_after_end = closest_after_end.min(next - (t + ra));
        }
    }
    let ra_range = pauses
        .iter()
        .map(|p| p.1)
        .fold((f64::MAX, 0.0f64), |a, r| (a.0.min(r), a.1.max(r)));
    println!(
        "{form:?}: {} requests, {} answered 429 (Retry-After {:.0}..{:.0} ms); requests inside \
         a pause: {}; the earliest request after a pause came {closest_after_end:.0} ms after \
         its end; daemon counted {} 429s, paused {} s in all",
        log.len(),
        pauses.len(),
        ra_range.0,
        ra_range.1,
        inside.len(),
        health["total_rate_limited"],
        health["paused_seconds_total"],
    );
    assert!(
        inside.is_empty(),
        "requests inside a Retry-After pause (429 at, Retry-After ms, arrived after ms): {:?}",
        &inside[..inside.len().min(10)]
    );
    assert_eq!(health["total_rate_limited"], pauses.len(), "{health}");
    assert!(saw_pause, "status showed paused_until during a pause");
    assert!(saw_recent_429s, "status showed recent 429s");

    // Every watch still finished right, and the 429s counted neither as polls nor errors.
    assert_eq!(watches.len(), 60);
    for w in &watches {
        let id = w["id"].as_str().unwrap_or_default();
        let want = if id.starts_with("succeed-") {
            "succeeded"
        } else {
            "failed"
        };
        assert_eq!(w["outcome"], want, "{w}");
    }
    assert_only_real_answers_count(&watches, &log, "copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_arrives_inside_a_retry_after_pause_given_in_seconds() {
    no_request_arrives_inside_a_retry_after_pause(RetryAfterForm::Seconds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_arrives_inside_a_retry_after_pause_given_as_an_http_date() {
    no_request_arrives_inside_a_retry_after_pause(RetryAfterForm::HttpDate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watch_ends_right_through_5xx_malformed_dropped_and_slow_answers() {
    let _turn = shared().await;
    let sim = OwnSim::start(SimulateArgs {
        error_ratio: 0.20,
        malformed_ratio: 0.05,
        drop_ratio: 0.05,
        slow_ratio: 0.05,
        slow_delay: Duration::from_millis(1000),
        ..Sim::fast()
    });
    let (_dir, app) = start_app(&sim.url, &[("upstream.request_timeout", "300ms")]).await;
    let expected = [
        ("succeed-", "succeeded"),
        ("done-", "succeeded"),
        ("failed-", "failed"),
        ("failure-", "failed"),
        ("doneerr-", "failed"),
        ("successerr-", "failed"),
        ("notfound-", "not_found"),
        ("badrequest-", "rejected"),
    ];
    let mut all = vec![];
    for (prefix, _) in expected {
        all.extend(ids(prefix, 300 / expected.len() + 1));
    }
    all.truncate(300);
    post(&app, "copy", &all, json!({})).await;
    app.wait_all_ended(60).await;
    let health = upstream_health(&app).await;
    let watches = all_watches(&app, "copy").await;
    app.stop().await;

    assert_eq!(watches.len(), 300);
    let mut errors_by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut with_errors = 0;
    for w in &watches {
        let id = w["id"].as_str().expect("id");
        let (_, want) = expected
            .iter()
            .find(|(p, _)| id.starts_with(p))
            .expect("a known prefix");
        assert_eq!(w["outcome"], *want, "{w}");
        if w["error_count"].as_i64() > Some(0) {
            with_errors += 1;
            let last = w["last_error"].as_str().unwrap_or_else(|| panic!("{w}"));
            let kind = if last.starts_with("timed out") {
                "timeout"
            } else if last.contains("not a job status document") {
                "malformed"
            } else if last.starts_with("HTTP 5") {
                "5xx"
            } else if last.starts_with("HTTP 404") {
                "404 after an error"
            } else {
                "connection"
            };
            *errors_by_kind.entry(kind).or_default() += 1;
        }
    }
    let log = sim.sim.request_log();
    let mut answered: BTreeMap<u16, usize> = BTreeMap::new();
    for r in &log {
        *answered.entry(r.status).or_default() += 1;
    }
    println!(
        "faults: {} requests, answered {answered:?} (0 = dropped); {with_errors}/300 watches saw \
         errors, last errors by kind {errors_by_kind:?}; daemon's error ratio {:.3}",
        log.len(),
        health["error_ratio_last_minute"].as_f64().unwrap_or(0.0),
    );
    assert!(with_errors >= 100, "{with_errors} watches saw an error");
    for kind in ["timeout", "5xx", "malformed", "connection"] {
        assert!(
            errors_by_kind.contains_key(kind),
            "{kind} errors are recorded: {errors_by_kind:?}"
        );
    }
    assert!(health["error_ratio_last_minute"].as_f64() > Some(0.15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_phase_pauses_polling_and_recovers_by_itself() {
    let _turn = shared().await;
    const PROBE_MS: f64 = 300.0;
    let sim = OwnSim::start(SimulateArgs {
        token: Some("good-token".into()),
        min_running: Duration::from_millis(1000),
        max_running: Duration::from_millis(1500),
        ..Sim::fast()
    });
    let (_dir, app) = start_app(
        &sim.url,
        &[
            ("upstream.token", "good-token"),
            ("upstream.auth_probe_interval", "300ms"),
        ],
    )
    .await;
    let all = ids("succeed-", 100);
    post(&app, "copy", &all, json!({})).await;
    eventually(10, "every watch polled once", || async {
        let log = sim.sim.request_log();
        let seen: HashSet<&str> = log
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.path.as_str())
            .collect();
        (seen.len() == 100).then_some(())
    })
    .await;
    assert_eq!(readyz(&app).await, 200);

    // The upstream stops taking our token.
    sim.sim.set_token(Some("rotated".into()));
    let h = eventually(5, "credentials rejected", || async {
        let h = upstream_health(&app).await;
        (h["credentials"] == "rejected").then_some(h)
    })
    .await;
    assert_eq!(h["credentials_status"], 401);
    assert_eq!(readyz(&app).await, 503);
    // Hold the outage for 2 s; meanwhile nothing ends and the daemon stays not ready.
    let phase_end = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < phase_end {
        let (_, s) = app.get("/v1/status").await;
        assert_eq!(s["watches"]["running"], 100, "no watch ends: {s}");
        assert_eq!(s["upstream"]["credentials"], "rejected");
        assert_eq!(readyz(&app).await, 503);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let back = unix_ms();
    sim.sim.set_token(Some("good-token".into()));

    // Polling resumes by itself: nobody tells the daemon.
    let h = eventually(5, "credentials work again", || async {
        let h = upstream_health(&app).await;
        (h["credentials"] == "ok").then_some(h)
    })
    .await;
    assert_eq!(h["credentials_status"], Value::Null);
    assert_eq!(readyz(&app).await, 200);
    app.wait_all_ended(20).await;
    let watches = all_watches(&app, "copy").await;
    app.stop().await;

    assert!(watches.iter().all(|w| w["outcome"] == "succeeded"));
    let log = sim.sim.request_log();
    let first_401 = log
        .iter()
        .filter(|r| r.status == 401)
        .map(|r| r.t_ms)
        .min_by(f64::total_cmp)
        .expect("a 401");
    // First the requests that were already out when the first 401 came back
    // (they arrive together), then only probes, one per interval.
    let phase: Vec<f64> = status_times(&log, first_401)
        .into_iter()
        .filter(|t| *t < back)
        .collect();
    let storm = 1 + phase
        .windows(2)
        .position(|w| w[1] - w[0] >= PROBE_MS / 2.0)
        .unwrap_or(phase.len() - 1);
    let probes = &phase[storm..];
    let gaps: Vec<f64> = probes.windows(2).map(|w| w[1] - w[0]).collect();
    let min_gap = gaps.iter().copied().fold(f64::MAX, f64::min);
    let resumed = log
        .iter()
        .filter(|r| r.status == 200 && r.t_ms >= back)
        .map(|r| r.t_ms - back)
        .fold(f64::MAX, f64::min);
    println!(
        "401 phase of {:.0} ms: {storm} 401s to requests in flight at the switch (within {:.0} ms), \
         then {} probes (smallest gap {min_gap:.0} ms for a {PROBE_MS} ms interval); first 200 \
         {resumed:.0} ms after the token came back",
        back - first_401,
        phase[storm - 1] - first_401,
        probes.len(),
    );
    assert!(storm <= 64, "at most max_in_flight were out: {storm}");
    assert!(
        probes.len() as f64 <= (back - first_401) / PROBE_MS + 1.0,
        "{probes:?}"
    );
    assert!(probes.len() >= 3, "probing goes on: {probes:?}");
    assert!(min_gap >= 0.9 * PROBE_MS, "probes are spaced: {gaps:?}");
    assert!(
        resumed <= PROBE_MS + 200.0,
        "the next probe finds the credentials work: {resumed} ms"
    );
    assert_only_real_answers_count(&watches, &log, "copy");
}

/// Posts 20 watches with a 1 s deadline to `app`, whose upstream is not answering
/// usefully, and checks that each ends `timed_out` within 1.5 s of its deadline.
async fn deadlines_fire_on_time(app: &App, label: &str) -> Vec<Value> {
    let all = ids("succeed-", 20);
    post(app, "copy", &all, json!({"timeout_seconds": 1})).await;
    let mut late = vec![];
    let mut watches = vec![];
    for id in &all {
        let w = app.wait_outcome("copy", id, 10).await;
        assert_eq!(w["outcome"], "timed_out", "{w}");
        let lateness = rfc3339_ms(&w["ended_at"]) - rfc3339_ms(&w["deadline"]);
        assert!(
            (0.0..=1500.0).contains(&lateness),
            "{id} ended {lateness} ms after its deadline"
        );
        late.push(lateness);
        watches.push(w);
    }
    late.sort_by(f64::total_cmp);
    println!(
        "{label}: 20 deadlines fired {:.0}..{:.0} ms late (median {:.0} ms)",
        late[0], late[19], late[10]
    );
    watches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_fire_on_time_while_the_upstream_is_unreachable() {
    let _turn = shared().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (_dir, app) = start_app(&format!("http://{closed}"), &[]).await;
    let watches = deadlines_fire_on_time(&app, "upstream unreachable").await;
    app.stop().await;
    assert!(
        watches.iter().any(|w| w["error_count"].as_i64() > Some(0)
            && w["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("connect"))),
        "the connection errors are recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_fire_on_time_during_a_long_retry_after_pause() {
    let _turn = shared().await;
    // One request per 20 s: after the first, the simulator asks for a 20 s pause.
    let sim = OwnSim::start(SimulateArgs {
        rate_limit: Some(0.05),
        rate_burst: Some(1),
        ..Sim::fast()
    });
    let (_dir, app) = start_app(&sim.url, &[]).await;
    deadlines_fire_on_time(&app, "paused by Retry-After").await;
    let health = upstream_health(&app).await;
    app.stop().await;
    assert!(!health["paused_until"].is_null(), "{health}");
    // The first request of each watch went out before the pause; none after it.
    let log = sim.sim.request_log();
    assert!(log.iter().any(|r| r.status == 429));
    let paths: HashSet<&str> = log.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths.len(),
        log.len(),
        "a request during the pause: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_fire_on_time_while_the_credentials_are_rejected() {
    let _turn = shared().await;
    let sim = OwnSim::start(SimulateArgs {
        token: Some("right".into()),
        ..Sim::fast()
    });
    let (_dir, app) = start_app(
        &sim.url,
        &[
            ("upstream.token", "wrong"),
            ("upstream.auth_probe_interval", "5s"),
        ],
    )
    .await;
    deadlines_fire_on_time(&app, "credentials rejected").await;
    assert_eq!(readyz(&app).await, 503);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_first_polls_are_spread_within_the_budget() {
    let _turn = exclusive().await;
    const RATE: f64 = 300.0;
    const BURST: usize = 20;
    const N: usize = 1000;
    let sim = OwnSim::start(Sim::fast());
    let (_dir, db) = temp_db();
    // Before the restart, whatever the machine manages (the test's default budget).
    let before = App::start(settings(&db, &sim.url, &[])).await;
    let all = ids("running-", N);
    post(&before, "copy", &all, json!({})).await;
    eventually(15, "every watch polled", || async {
        let log = sim.sim.request_log();
        let seen: HashSet<&str> = log.iter().map(|r| r.path.as_str()).collect();
        (seen.len() == N).then_some(())
    })
    .await;
    before.stop().await;
    // Let every watch fall due (the cadence is at most 400 ms): a restart finds
    // 1,000 overdue watches.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let restart = unix_ms();
    let mut after_settings = vec![
        ("upstream.max_requests_per_second", "300"),
        ("upstream.burst", "20"),
    ];
    // A longer cadence after the restart keeps most second polls out of the way
    // (the spread is never shorter than the first interval: 2 s < 3.3 s here).
    after_settings.extend([
        ("poller.initial_interval", "2s"),
        ("poller.max_interval", "8s"),
    ]);
    let after = App::start(settings(&db, &sim.url, &after_settings)).await;
    // Right after the start, the watches not yet claimed show where the restart
    // put their first poll: spread over the time the budget needs for all of them.
    let scheduled: Vec<f64> = all_watches(&after, "copy")
        .await
        .iter()
        .map(|w| rfc3339_ms(&w["next_poll_at"]))
        .filter(|t| *t < restart + 60_000.0)
        .collect();
    eventually(15, "every watch polled again", || async {
        let log = sim.sim.request_log();
        let seen: HashSet<&str> = log
            .iter()
            .filter(|r| r.t_ms >= restart)
            .map(|r| r.path.as_str())
            .collect();
        (seen.len() == N).then_some(())
    })
    .await;
    after.stop().await;

    let log = sim.sim.request_log();
    let mut first_polls: HashMap<&str, f64> = HashMap::new();
    for r in log.iter().filter(|r| r.t_ms >= restart) {
        first_polls.entry(r.path.as_str()).or_insert(r.t_ms);
    }
    let mut firsts: Vec<f64> = first_polls.into_values().collect();
    firsts.sort_by(f64::total_cmp);
    let all_after = status_times(&log, restart);
    let (busiest, _) = busiest_window(&all_after, 1000.0);
    let span = firsts[N - 1] - firsts[0];
    let expected_span = N as f64 / RATE * 1000.0;
    let (lo, hi) = scheduled
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    let tenth = |k: f64| {
        scheduled
            .iter()
            .filter(|t| **t >= restart + k * expected_span / 10.0)
            .filter(|t| **t < restart + (k + 1.0) * expected_span / 10.0)
            .count()
    };
    let fullest_tenth = (0..10).map(|k| tenth(k as f64)).max().unwrap_or(0);
    println!(
        "after the restart {} watches waited for their first poll, scheduled from +{:.0} ms to \
         +{:.0} ms; the fullest tenth of that span held {fullest_tenth}",
        scheduled.len(),
        lo - restart,
        hi - restart,
    );
    assert!(scheduled.len() >= N / 2, "{} scheduled", scheduled.len());
    assert!(
        hi - lo >= 0.8 * expected_span && hi - restart <= expected_span + 500.0,
        "first polls scheduled over {:.0} ms",
        hi - lo
    );
    assert!(
        fullest_tenth <= scheduled.len() / 5,
        "spread evenly: {fullest_tenth} of {} in one tenth",
        scheduled.len()
    );
    println!(
        "restart with {N} overdue watches: first polls from +{:.0} ms to +{:.0} ms after the \
         restart (span {span:.0} ms, budget needs {expected_span:.0} ms); busiest 1 s window {busiest} \
         (budget {RATE}/s + {BURST})",
        firsts[0] - restart,
        firsts[N - 1] - restart,
    );
    assert!(
        busiest <= RATE as usize + BURST + jitter_requests(RATE),
        "{busiest} in one second"
    );
    assert!(
        span >= 0.8 * expected_span,
        "first polls spread over {span:.0} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_without_retry_after_lowers_the_rate_which_recovers_step_by_step() {
    let _turn = shared().await;
    let sim = OwnSim::start(SimulateArgs {
        rate_limit: Some(30.0),
        rate_burst: Some(10),
        retry_after_form: RetryAfterForm::None,
        ..Sim::fast()
    });
    let (_dir, app) = start_app(
        &sim.url,
        &[
            ("upstream.max_requests_per_second", "200"),
            ("upstream.burst", "20"),
            ("upstream.rate_recovery_step", "200ms"),
            ("upstream.max_retry_after", "2s"),
        ],
    )
    .await;
    // A flood that overruns the simulator, then a light load (3 watches polled at
    // most every 400 ms, below any rate the daemon falls to) that keeps answers coming.
    let flood = ids("succeed-", 30);
    post(&app, "copy", &flood, json!({})).await;
    post(&app, "copy", &ids("running-", 3), json!({})).await;

    let started = tokio::time::Instant::now();
    let mut samples: Vec<(u128, f64)> = vec![];
    let mut recent_429s = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, s) = app.get("/v1/status").await;
        let rate = s["upstream"]["allowed_rate"]
            .as_f64()
            .expect("allowed_rate");
        recent_429s = recent_429s.max(
            s["upstream"]["rate_limited_last_minute"]
                .as_u64()
                .unwrap_or(0),
        );
        if samples.last().is_none_or(|l| l.1 != rate) {
            samples.push((started.elapsed().as_millis(), rate));
        }
        let dipped = samples.iter().any(|(_, r)| *r < 200.0);
        let flood_done = s["watches"]["running"] == 3;
        if dipped && flood_done && rate == 200.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery: {samples:?} {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flood_watches: Vec<Value> = all_watches(&app, "copy")
        .await
        .into_iter()
        .filter(|w| w["id"].as_str().is_some_and(|i| i.starts_with("succeed-")))
        .collect();
    app.stop().await;
    println!("allowed rate over time (ms, requests/s): {samples:?}");

    let log = sim.sim.request_log();
    let bare = log.iter().filter(|r| r.status == 429).count();
    assert!(bare > 0, "the simulator answered 429s");
    assert!(log
        .iter()
        .filter(|r| r.status == 429)
        .all(|r| r.retry_after_ms.is_none()));
    assert!(recent_429s > 0, "status showed the recent 429s");
    let lowest = samples.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    assert!(lowest <= 100.0, "the rate was lowered: {samples:?}");
    // From the last decrease on, the rate grows back in steps of at most a quarter.
    let last_drop = samples
        .windows(2)
        .rposition(|w| w[1].1 < w[0].1)
        .map_or(0, |i| i + 1);
    let recovery: Vec<f64> = samples[last_drop..].iter().map(|s| s.1).collect();
    assert!(
        recovery
            .windows(2)
            .all(|w| w[1] > w[0] && w[1] <= w[0] * 1.25 + 1e-9),
        "step by step: {recovery:?}"
    );
    assert!(recovery.len() >= 4, "several steps: {recovery:?}");
    assert_eq!(recovery.last(), Some(&200.0));
    println!(
        "{bare} bare 429s; lowest allowed rate {lowest}/s; recovered in {} steps",
        recovery.len() - 1
    );
    assert_eq!(flood_watches.len(), 30);
    assert!(flood_watches.iter().all(|w| w["outcome"] == "succeeded"));
    assert_only_real_answers_count(&flood_watches, &log, "copy");
}
