//! Issue 2: the core, end to end on SQLite: outcomes per the state table, `?wait`,
//! listing with filters and cursors, bad input, restart, generations, cancellation,
//! percent-encoded ids, authentication.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use jobwatch::simulator::SimulateArgs;
use jobwatch::webhook::sign::SigningSecret;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::TestReceiver;

/// Unix milliseconds of an RFC 3339 time the API gave out.
fn ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_millis()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test]
async fn a_successful_job_ends_succeeded() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, app) = start_app(&sim.url, &[]).await;
    let (status, body) = app
        .post_jobs(json!({"kind": "copy", "ids": ["succeed-1"]}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["new"], 1);
    let w = app.wait_outcome("copy", "succeed-1", 10).await;
    assert_eq!(w["outcome"], "succeeded");
    assert_eq!(w["state"], "SUCCESS");
    app.stop().await;
}

#[tokio::test]
async fn every_upstream_behaviour_ends_in_its_outcome() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, app) = start_app(&sim.url, &[]).await;
    // (id prefix, outcome, state, upstream errors non-empty)
    let table: [(&str, &str, Option<&str>, bool); 8] = [
        ("succeed", "succeeded", Some("SUCCESS"), false),
        ("done", "succeeded", Some("DONE"), false),
        ("failed", "failed", Some("FAILED"), false),
        ("failure", "failed", Some("FAILURE"), false),
        ("doneerr", "failed", Some("DONE"), true),
        ("successerr", "failed", Some("SUCCESS"), true),
        ("notfound", "not_found", None, false),
        ("badrequest", "rejected", None, false),
    ];
    for kind in ["copy", "delete"] {
        let mut ids: Vec<String> = table.iter().map(|t| format!("{}-b", t.0)).collect();
        ids.push("unknown-b".into());
        let (status, body) = app.post_jobs(json!({"kind": kind, "ids": ids})).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["new"], 9, "{body}");
    }
    for kind in ["copy", "delete"] {
        for (prefix, outcome, state, errors) in table {
            let id = format!("{prefix}-b");
            let w = app.wait_outcome(kind, &id, 15).await;
            assert_eq!(w["outcome"], outcome, "{kind}/{id}: {w}");
            assert_eq!(w["state"].as_str(), state, "{kind}/{id}: {w}");
            let errs = &w["upstream"]["errors"];
            assert_eq!(
                errs.as_array().is_some_and(|a| !a.is_empty()),
                errors,
                "{kind}/{id} errors: {w}"
            );
            assert!(w["next_poll_at"].is_null(), "{kind}/{id}: {w}");
            match prefix {
                "notfound" => {
                    // Several 404s over the grace (500 ms in tests), never the first one.
                    let lasted = ms(&w["ended_at"]) - ms(&w["watched_at"]);
                    assert!(lasted >= 500, "{kind}/{id} ended after {lasted} ms: {w}");
                    assert!(w["poll_count"].as_i64().unwrap() >= 2, "{w}");
                }
                "badrequest" => {
                    assert_eq!(w["poll_count"], 1, "rejected on the first 400: {w}");
                    let err = w["last_error"].as_str().unwrap_or_default();
                    assert!(err.contains("400"), "{w}");
                }
                _ => {}
            }
        }
        // An unknown state keeps the watch running, recorded, polled again and again.
        let w = eventually(10, "unknown-b polled three times", || async {
            let (_, w) = app.get(&format!("/v1/jobs/{kind}/unknown-b")).await;
            if w["poll_count"].as_i64().unwrap_or(0) >= 3 {
                Ok(w)
            } else {
                Err(w.to_string())
            }
        })
        .await;
        assert_eq!(w["state"], "PAUSED", "{w}");
        assert!(w["outcome"].is_null(), "{w}");
        assert!(!w["next_poll_at"].is_null(), "{w}");
    }
    let (_, s) = app.get("/v1/status").await;
    assert_eq!(s["watches"]["running"], 2, "{s}");
    assert_eq!(s["watches"]["running_by_state"]["PAUSED"], 2, "{s}");
    app.stop().await;
}

#[tokio::test]
async fn wait_returns_as_soon_as_the_outcome_is_set() {
    let sim = Sim::start(SimulateArgs {
        min_running: Duration::from_millis(600),
        max_running: Duration::from_millis(900),
        ..Sim::fast()
    })
    .await;
    let (_dir, app) = start_app(&sim.url, &[]).await;
    let (status, _) = app
        .post_jobs(json!({"kind": "copy", "ids": ["succeed-w", "running-w"]}))
        .await;
    assert_eq!(status, 202);

    let started = Instant::now();
    let (status, w) = app.get("/v1/jobs/copy/succeed-w?wait=10").await;
    let returned = now_ms();
    let took = started.elapsed();
    assert_eq!(status, 200, "{w}");
    assert_eq!(w["outcome"], "succeeded", "{w}");
    let late = returned - ms(&w["ended_at"]);
    assert!(
        (0..500).contains(&late),
        "the wait returned {late} ms after the outcome was set: {w}"
    );
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} of a 10 s wait"
    );
    eprintln!("wait=10 returned {late} ms after ended_at, {took:?} after the request");

    // Without an outcome the wait lasts as long as asked, not longer.
    let started = Instant::now();
    let (status, w) = app.get("/v1/jobs/copy/running-w?wait=1").await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{w}");
    assert!(w["outcome"].is_null(), "{w}");
    assert!(
        took >= Duration::from_millis(990) && took < Duration::from_secs(3),
        "wait=1 took {took:?}"
    );

    // A bad wait is refused.
    let (status, body) = app.get("/v1/jobs/copy/running-w?wait=-1").await;
    assert_eq!(status, 400, "{body}");
    app.stop().await;
}

/// Every watch of `query`, following cursors `limit` at a time; asserts no page
/// repeats a watch and the order is newest first.
async fn page_all(app: &App, query: &str, limit: u32) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let sep = if query.is_empty() { "" } else { "&" };
        let c = cursor
            .as_deref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let (status, page) = app
            .get(&format!("/v1/jobs?{query}{sep}limit={limit}{c}"))
            .await;
        assert_eq!(status, 200, "{query}: {page}");
        let jobs = page["jobs"].as_array().expect("jobs array").clone();
        assert!(jobs.len() <= limit as usize, "{query}: page too long");
        for j in jobs {
            let key = (j["kind"].to_string(), j["id"].to_string());
            assert!(seen.insert(key), "{query}: repeated {j}");
            if let Some(prev) = all.last() {
                assert!(
                    ms(&prev["watched_at"]) >= ms(&j["watched_at"]),
                    "{query}: not newest first"
                );
            }
            all.push(j);
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return all,
        }
    }
    panic!("{query}: the cursor never ended");
}

fn ids_of(jobs: &[Value]) -> BTreeSet<String> {
    jobs.iter()
        .map(|j| {
            format!(
                "{}/{}",
                j["kind"].as_str().unwrap(),
                j["id"].as_str().unwrap()
            )
        })
        .collect()
}

// Two workers: 1,000 watches keep the simulator and the daemon busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_cursors_page_through_1000_watches() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();
    // The cadence grows fast, so the 300 watches that never end soon poll rarely.
    let app = App::start(settings(
        &db,
        &sim.url,
        &[("poller.max_interval", "10s"), ("poller.growth", "4")],
    ))
    .await;
    let t0 = Instant::now();
    let batches: [(&str, &str, usize); 3] = [
        ("copy", "succeed", 400),
        ("copy", "running", 300),
        ("delete", "failed", 300),
    ];
    let mut posted = BTreeSet::new();
    for (kind, prefix, n) in batches {
        let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        posted.extend(ids.iter().map(|id| format!("{kind}/{id}")));
        let (status, body) = app.post_jobs(json!({"kind": kind, "ids": ids})).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["new"], n, "{body}");
    }
    eventually(30, "700 ended, 300 RUNNING", || async {
        let (_, s) = app.get("/v1/status").await;
        let w = &s["watches"];
        if w["running_by_state"]["RUNNING"] == 300
            && w["ended_by_outcome"]["succeeded"] == 400
            && w["ended_by_outcome"]["failed"] == 300
        {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;

    eprintln!("1,000 watches: 700 ended after {:?}", t0.elapsed());
    // Every watch once, whatever the page size.
    for limit in [1000, 77, 10] {
        let all = page_all(&app, "", limit).await;
        assert_eq!(ids_of(&all), posted, "limit={limit}");
    }

    let want = |kind: &str, prefix: &str| -> BTreeSet<String> {
        posted
            .iter()
            .filter(|k| k.starts_with(&format!("{kind}/{prefix}-")))
            .cloned()
            .collect()
    };
    let union = |a: BTreeSet<String>, b: BTreeSet<String>| a.union(&b).cloned().collect();
    let cases: Vec<(&str, BTreeSet<String>)> = vec![
        ("kind=delete", want("delete", "failed")),
        (
            "kind=copy",
            union(want("copy", "succeed"), want("copy", "running")),
        ),
        ("outcome=succeeded", want("copy", "succeed")),
        ("outcome=failed&kind=delete", want("delete", "failed")),
        ("outcome=failed&kind=copy", BTreeSet::new()),
        ("running=true", want("copy", "running")),
        (
            "running=false",
            union(want("copy", "succeed"), want("delete", "failed")),
        ),
        ("state=RUNNING", want("copy", "running")),
        ("state=FAILED&running=false", want("delete", "failed")),
        (
            "kind=copy&state=SUCCESS&outcome=succeeded",
            want("copy", "succeed"),
        ),
    ];
    for (query, expected) in cases {
        let got = page_all(&app, query, 64).await;
        assert_eq!(ids_of(&got), expected, "{query}");
    }

    for bad in [
        "kind=upload",
        "outcome=maybe",
        "limit=0",
        "limit=1001",
        "cursor=xyz",
    ] {
        let (status, body) = app.get(&format!("/v1/jobs?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"]["code"].is_string(), "{bad}: {body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_its_status_and_code_and_stores_nothing() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, app) = start_app(
        &sim.url,
        &[
            ("api.max_ids_per_request", "5"),
            ("api.max_body_bytes", "4096"),
        ],
    )
    .await;
    let long = "a".repeat(257);
    let pad = "x".repeat(5000);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "malformed JSON",
            r#"{"kind": "copy", "ids": ["#.into(),
            400,
            "malformed_json",
        ),
        ("not JSON at all", "kind=copy".into(), 400, "malformed_json"),
        (
            "missing kind",
            r#"{"ids": ["good-1"]}"#.into(),
            400,
            "missing_kind",
        ),
        (
            "missing ids",
            r#"{"kind": "copy"}"#.into(),
            400,
            "missing_ids",
        ),
        (
            "unknown kind",
            r#"{"kind": "upload", "ids": ["good-1"]}"#.into(),
            422,
            "unknown_kind",
        ),
        (
            "empty id",
            r#"{"kind": "copy", "ids": [""]}"#.into(),
            422,
            "invalid_id",
        ),
        (
            "bad char",
            r#"{"kind": "copy", "ids": ["a/b"]}"#.into(),
            422,
            "invalid_id",
        ),
        (
            "space",
            r#"{"kind": "copy", "ids": ["a b"]}"#.into(),
            422,
            "invalid_id",
        ),
        (
            "257 chars",
            json!({"kind": "copy", "ids": [long]}).to_string(),
            422,
            "invalid_id",
        ),
        (
            "too many ids",
            json!({"kind": "copy", "ids": ["g1", "g2", "g3", "g4", "g5", "g6"]}).to_string(),
            422,
            "too_many_ids",
        ),
        (
            "body too large",
            json!({"kind": "copy", "ids": ["good-1"], "metadata": {"pad": pad}}).to_string(),
            413,
            "body_too_large",
        ),
        (
            "webhook_url not http(s)",
            json!({"kind": "copy", "ids": ["good-1"], "webhook_url": "ftp://example.com/h"})
                .to_string(),
            422,
            "invalid_webhook_url",
        ),
        (
            "webhook_url not a URL",
            json!({"kind": "copy", "ids": ["good-1"], "webhook_url": "hooks here"}).to_string(),
            422,
            "invalid_webhook_url",
        ),
        (
            "webhook_url without a signing secret",
            json!({"kind": "copy", "ids": ["good-1"], "webhook_url": "https://example.com/h"})
                .to_string(),
            422,
            "webhook_secret_missing",
        ),
        (
            "valid and invalid ids mixed",
            json!({"kind": "copy", "ids": ["good-1", "bad id", "good-2"]}).to_string(),
            422,
            "invalid_id",
        ),
        (
            "valid ids and one too long",
            json!({"kind": "copy", "ids": ["good-1", "good-2", "a".repeat(257)]}).to_string(),
            422,
            "invalid_id",
        ),
    ];
    for (what, body, want_status, want_code) in cases {
        let r = app
            .client
            .post(format!("{}/v1/jobs", app.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want_status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], want_code, "{what}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: {answer}");
        if want_code == "webhook_secret_missing" {
            assert!(message.contains("signing_secret"), "{what}: {answer}");
        }

        let (_, s) = app.get("/v1/status").await;
        assert_eq!(s["watches"]["running"], 0, "{what} stored a watch: {s}");
        assert_eq!(s["watches"]["ended_by_outcome"], json!({}), "{what}: {s}");
        let (_, list) = app.get("/v1/jobs").await;
        assert_eq!(list["jobs"], json!([]), "{what} stored a watch: {list}");
        let (status, _) = app.get("/v1/jobs/copy/good-1").await;
        assert_eq!(status, 404, "{what}");
    }
    assert_eq!(sim.sim.requests_received(), 0, "nothing was polled");

    // The limits are limits, not off by one: exactly max ids in a body under the size is fine.
    let (status, body) = app
        .post_jobs(json!({"kind": "copy", "ids": ["g1", "g2", "g3", "g4", "g5"]}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["new"], 5);
    app.stop().await;
}

#[tokio::test]
async fn a_restarted_daemon_resumes_every_running_watch() {
    // Long enough that nothing ends before the stop.
    let sim = Sim::start(SimulateArgs {
        min_running: Duration::from_millis(1500),
        max_running: Duration::from_millis(2500),
        ..Sim::fast()
    })
    .await;
    let (_dir, db) = temp_db();
    let app = App::start(settings(&db, &sim.url, &[])).await;
    let succeed: Vec<String> = (0..150).map(|i| format!("succeed-r{i}")).collect();
    let running: Vec<String> = (0..50).map(|i| format!("running-r{i}")).collect();
    for ids in [&succeed, &running] {
        let (status, body) = app.post_jobs(json!({"kind": "copy", "ids": ids})).await;
        assert_eq!(status, 202, "{body}");
    }
    // Let the first polls happen, then stop as on SIGTERM.
    eventually(10, "every watch polled once", || async {
        let (_, s) = app.get("/v1/status").await;
        match s["watches"]["running_by_state"].get("unknown_yet") {
            None if s["watches"]["running"] == 200 => Ok(()),
            _ => Err(s.to_string()),
        }
    })
    .await;
    app.stop().await;
    let polls_at_stop: Vec<u64> = running
        .iter()
        .map(|id| sim.sim.polls_of("copy", id))
        .collect();
    assert!(polls_at_stop.iter().all(|n| *n >= 1));

    let app = App::start(settings(&db, &sim.url, &[])).await;
    let (_, s) = app.get("/v1/status").await;
    assert_eq!(
        s["watches"]["running"], 200,
        "every watch survived the stop: {s}"
    );
    eventually(15, "150 succeeded, 50 still running", || async {
        let (_, s) = app.get("/v1/status").await;
        let w = &s["watches"];
        if w["ended_by_outcome"]["succeeded"] == 150 && w["running"] == 50 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    eventually(
        10,
        "every running watch polled after the restart",
        || async {
            let behind: Vec<&String> = running
                .iter()
                .zip(&polls_at_stop)
                .filter(|(id, n)| sim.sim.polls_of("copy", id) <= **n)
                .map(|(id, _)| id)
                .collect();
            if behind.is_empty() {
                Ok(())
            } else {
                Err(format!("{behind:?}"))
            }
        },
    )
    .await;
    let all = page_all(&app, "", 1000).await;
    assert_eq!(all.len(), 200);
    app.stop().await;
}

#[tokio::test]
async fn reposting_an_ended_watch_starts_a_new_generation_with_its_own_event() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();
    let secret = SigningSecret::generate();
    let rx = TestReceiver::start(Some(secret.clone())).await;
    let whsec = secret.to_whsec();
    let app = App::start(settings(
        &db,
        &sim.url,
        &[
            ("webhooks.signing_secret", whsec.as_str()),
            ("webhooks.allow_private_targets", "true"),
        ],
    ))
    .await;
    let post = json!({"kind": "copy", "ids": ["succeed-g", "running-g"], "webhook_url": rx.url});
    let (status, body) = app.post_jobs(post.clone()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["new"], 2);
    let w1 = app.wait_outcome("copy", "succeed-g", 10).await;
    assert_eq!(w1["generation"], 1);
    let first = rx.wait_for(1, Duration::from_secs(10)).await;

    let (status, body) = app.post_jobs(post).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["new"], 1, "the ended one starts again: {body}");
    assert_eq!(
        body["already_watching"], 1,
        "the running one is unchanged: {body}"
    );
    let (_, running) = app.get("/v1/jobs/copy/running-g").await;
    assert_eq!(running["generation"], 1, "{running}");

    let w2 = app.wait_outcome("copy", "succeed-g", 10).await;
    assert_eq!(w2["generation"], 2, "{w2}");
    assert_eq!(w2["outcome"], "succeeded");
    assert!(ms(&w2["watched_at"]) > ms(&w1["watched_at"]), "{w1} {w2}");
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "one event per generation");
    assert_eq!(got[0].webhook_id, first[0].webhook_id);
    assert_ne!(got[0].webhook_id, got[1].webhook_id);
    assert_eq!(got[0].body["data"]["generation"], 1);
    assert_eq!(got[1].body["data"]["generation"], 2);
    assert!(got.iter().all(|r| r.verified));
    app.stop().await;
}

#[tokio::test]
async fn delete_cancels_a_running_watch_and_only_that() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, app) = start_app(&sim.url, &[]).await;
    let (status, _) = app
        .post_jobs(json!({"kind": "delete", "ids": ["running-c", "succeed-c"]}))
        .await;
    assert_eq!(status, 202);
    eventually(5, "running-c polled", || async {
        let n = sim.sim.polls_of("delete", "running-c");
        if n >= 1 {
            Ok(())
        } else {
            Err(n.to_string())
        }
    })
    .await;

    let (status, w) = app.delete("/v1/jobs/delete/running-c").await;
    assert_eq!(status, 200, "{w}");
    assert_eq!(w["outcome"], "cancelled", "{w}");
    assert!(!w["ended_at"].is_null(), "{w}");
    let polls = sim.sim.polls_of("delete", "running-c");

    let ended = app.wait_outcome("delete", "succeed-c", 10).await;
    assert_eq!(ended["outcome"], "succeeded");
    let (status, body) = app.delete("/v1/jobs/delete/succeed-c").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_ended");
    let (status, body) = app.delete("/v1/jobs/delete/running-c").await;
    assert_eq!(status, 409, "cancelling twice: {body}");
    let (status, body) = app.delete("/v1/jobs/delete/never-posted").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "watch_not_found");
    let (status, _) = app.delete("/v1/jobs/copy/running-c").await;
    assert_eq!(status, 404, "the other kind is another watch");

    // Cancelled stays cancelled and is no longer polled (one poll may have been in flight).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, w) = app.get("/v1/jobs/delete/running-c").await;
    assert_eq!(w["outcome"], "cancelled", "{w}");
    assert!(sim.sim.polls_of("delete", "running-c") <= polls + 1);
    app.stop().await;
}

#[tokio::test]
async fn percent_encoded_ids_work_end_to_end() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, app) = start_app(&sim.url, &[]).await;
    let ids = ["myorg:my-product", "succeed-myorg:prod.v_2"];
    let (status, body) = app.post_jobs(json!({"kind": "copy", "ids": ids})).await;
    assert_eq!(status, 202, "{body}");
    let w = app.wait_outcome("copy", "myorg%3Amy-product", 10).await;
    assert_eq!(w["id"], "myorg:my-product");
    assert!(!w["outcome"].is_null());
    let w = app.wait_outcome("copy", "succeed-myorg:prod.v_2", 10).await;
    assert_eq!(w["id"], "succeed-myorg:prod.v_2");
    assert_eq!(w["outcome"], "succeeded");
    let (status, w) = app.get("/v1/jobs/copy/succeed-myorg%3Aprod.v_2").await;
    assert_eq!(status, 200, "{w}");
    assert_eq!(w["id"], "succeed-myorg:prod.v_2");

    // The upstream saw the same ids, sent percent-encoded.
    assert!(sim.sim.polls_of("copy", "myorg:my-product") >= 1);
    let paths: Vec<String> = sim.sim.request_log().into_iter().map(|r| r.path).collect();
    assert!(
        paths
            .iter()
            .any(|p| p == "/products/myorg%3Amy-product/search/copy/status"),
        "{paths:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_kind_in_the_path_is_400() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, app) = start_app(&sim.url, &[]).await;
    let (status, body) = app.get("/v1/jobs/upload/x").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_kind");
    let (status, body) = app.delete("/v1/jobs/upload/x").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_kind");
    let (status, body) = app.get("/v1/jobs/copy/never-posted").await;
    assert_eq!(status, 404, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn api_token_guards_every_v1_route() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, app) = start_app(&sim.url, &[("api.token", "s3cret-token")]).await;
    let post = |auth: Option<&str>| {
        let mut r = app
            .client
            .post(format!("{}/v1/jobs", app.url))
            .json(&json!({"kind": "copy", "ids": ["succeed-t"]}));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret-token"),
        Some("Basic s3cret-token"),
    ] {
        let r = post(auth).await.expect("POST");
        assert_eq!(r.status(), 401, "{auth:?}");
        let body: Value = r.json().await.expect("error body");
        assert_eq!(body["error"]["code"], "unauthorized", "{auth:?}");
    }
    let (status, _) = app.get("/v1/status").await;
    assert_eq!(status, 401);
    let (status, _) = app.get("/v1/jobs").await;
    assert_eq!(status, 401);
    let (status, body) = app.get("/v1/jobs/copy/succeed-t").await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200, "health is not behind the token");

    let r = post(Some("Bearer s3cret-token")).await.expect("POST");
    assert_eq!(r.status(), 202);
    let r = app
        .client
        .get(format!("{}/v1/status", app.url))
        .bearer_auth("s3cret-token")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("status body");
    assert_eq!(body["watches"]["running"], 1, "{body}");
    app.stop().await;
}

/// Polls due close together go out together: at a 2 s interval, steps 200 ms
/// apart (100 ms before, whatever the interval), each claiming what is due within
/// 100 ms; and no poll goes out more than that head start before its time.
#[tokio::test]
async fn polls_due_close_together_go_out_together_and_never_early_by_more_than_the_head_start() {
    const N: usize = 40;
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();
    let fixed = [
        ("poller.initial_interval", "2s"),
        ("poller.max_interval", "2s"),
        ("poller.jitter", "0"),
    ];
    let app = App::start(settings(&db, &sim.url, &fixed)).await;
    // Posted one at a time over an interval: each is due at its own moment, 50 ms
    // after the one before.
    for i in 0..N {
        let (status, _) = app
            .post_jobs(json!({"kind": "copy", "ids": [format!("running-batch-{i}")]}))
            .await;
        assert_eq!(status, 202);
        tokio::time::sleep(Duration::from_millis(2000 / N as u64)).await;
    }
    let path = |i: usize| format!("/products/running-batch-{i}/search/copy/status");
    eventually(20, "three polls of every watch", || async {
        let log = sim.sim.request_log();
        let least = (0..N)
            .map(|i| log.iter().filter(|r| r.path == path(i)).count())
            .min()
            .unwrap_or(0);
        (least >= 3).then_some(()).ok_or(least.to_string())
    })
    .await;
    app.stop().await;
    let log = sim.sim.request_log();
    let mut times: Vec<f64> = Vec::new();
    for i in 0..N {
        let polls: Vec<f64> = log
            .iter()
            .filter(|r| r.path == path(i))
            .map(|r| r.t_ms)
            .collect();
        for gap in polls.windows(2).map(|w| w[1] - w[0]) {
            // 2 s less the 100 ms head start, and a few ms for the requests.
            assert!(
                gap >= 1895.0,
                "watch {i}: polls {gap:.0} ms apart (interval 2 s)"
            );
        }
        times.extend(polls);
    }
    // Polls more than 40 ms apart went out in different steps. Steps 100 ms apart
    // would send these watches, due every 50 ms, in ten a second.
    times.sort_by(f64::total_cmp);
    let steps = 1 + times.windows(2).filter(|w| w[1] - w[0] > 40.0).count();
    let seconds = (times[times.len() - 1] - times[0]) / 1000.0;
    eprintln!("{} polls in {steps} steps over {seconds:.1} s", times.len());
    assert!(
        (steps as f64) < 6.5 * seconds.max(1.0),
        "{} polls went out in {steps} steps over {seconds:.1} s: not together",
        times.len()
    );
}

#[tokio::test]
async fn a_watch_polls_on_its_own_growing_cadence() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();
    // initial 100 ms, growth 1.5, jitter 0.2: 100, 150, 225, 338, 400 (the max)...
    let app = App::start(settings(&db, &sim.url, &[])).await;
    let posted = now_ms() as f64;
    let (status, _) = app
        .post_jobs(json!({"kind": "copy", "ids": ["running-cad"]}))
        .await;
    assert_eq!(status, 202);
    eventually(10, "six polls", || async {
        match sim.sim.polls_of("copy", "running-cad") {
            n if n >= 6 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    let times: Vec<f64> = sim
        .sim
        .request_log()
        .into_iter()
        .filter(|r| r.path == "/products/running-cad/search/copy/status")
        .map(|r| r.t_ms)
        .take(6)
        .collect();
    let mut gaps = vec![times[0] - posted];
    gaps.extend(times.windows(2).map(|w| w[1] - w[0]));
    eprintln!("poll gaps (ms): {gaps:?}");
    let expected = [100.0, 100.0, 150.0, 225.0, 337.5, 400.0];
    for (gap, want) in gaps.iter().zip(expected) {
        // +-20% jitter, plus a little for the request itself.
        assert!(
            *gap >= want * 0.8 - 5.0 && *gap <= want * 1.2 + 250.0,
            "poll gaps {gaps:?} do not follow {expected:?}"
        );
    }
    app.stop().await;
}
