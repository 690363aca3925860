//! Issue 17: any HTTP job API by configuration. Each preset is driven against the
//! simulator in that API's shape (`--shape`): every terminal value ends in its
//! right outcome, the second-field rules decide (Google `done` then `error`,
//! GitHub `completed` then `conclusion`), and two upstreams in one daemon keep
//! their own pause and budget, judged from the simulators' request logs.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use jobwatch::simulator::{Shape, SimulateArgs};
use serde_json::{json, Value};

use crate::helpers::*;

/// One `[[upstreams]]` entry in TOML.
fn entry(name: &str, preset: &str, base_url: &str, extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"{name}\"\npreset = \"{preset}\"\nbase_url = \"{base_url}\"\n\
         max_requests_per_second = 2000\nburst = 200\n{extra}\n"
    )
}

/// A daemon with `[upstream]` on `vector_url` and the given entries.
async fn daemon(dir: &Path, db: &Path, vector_url: &str, entries: &[String]) -> App {
    let file = dir.join("upstreams.toml");
    let mut f = std::fs::File::create(&file).expect("config file");
    f.write_all(entries.concat().as_bytes())
        .expect("write config");
    App::start(settings_with_file(db, vector_url, Some(&file), &[])).await
}

struct Case {
    preset: &'static str,
    shape: Shape,
    /// What follows the simulator's origin in the base URL.
    base_path: &'static str,
    kind: &'static str,
    /// Each terminal value of the API and the outcome it must end in.
    ends: &'static [(&'static str, &'static str)],
}

const CASES: [Case; 5] = [
    Case {
        preset: "google-lro",
        shape: Shape::GoogleLro,
        base_path: "/v1",
        kind: "operation",
        ends: &[("response", "succeeded"), ("error", "failed")],
    },
    Case {
        preset: "openai-batch",
        shape: Shape::OpenaiBatch,
        base_path: "/v1",
        kind: "batch",
        ends: &[
            ("completed", "succeeded"),
            ("failed", "failed"),
            ("expired", "failed"),
            ("cancelled", "failed"),
        ],
    },
    Case {
        preset: "replicate",
        shape: Shape::Replicate,
        base_path: "/v1",
        kind: "prediction",
        ends: &[
            ("succeeded", "succeeded"),
            ("failed", "failed"),
            ("canceled", "failed"),
            ("aborted", "failed"),
        ],
    },
    Case {
        preset: "github-actions",
        shape: Shape::GithubActions,
        base_path: "/repos/octo/repo",
        kind: "workflow-run",
        ends: &[
            ("success", "succeeded"),
            ("neutral", "succeeded"),
            ("skipped", "succeeded"),
            ("failure", "failed"),
            ("cancelled", "failed"),
            ("timed_out", "failed"),
            ("action_required", "failed"),
            ("stale", "failed"),
            ("startup_failure", "failed"),
        ],
    },
    Case {
        preset: "vector",
        shape: Shape::Vector,
        base_path: "",
        kind: "copy",
        ends: &[
            ("SUCCESS", "succeeded"),
            ("DONE", "succeeded"),
            ("FAILED", "failed"),
            ("FAILURE", "failed"),
        ],
    },
];

async fn every_terminal_value_ends_right(case: &Case) {
    let sim = Sim::start(SimulateArgs {
        shape: case.shape,
        ..Sim::fast()
    })
    .await;
    let (dir, db) = temp_db();
    let base = format!("{}{}", sim.url, case.base_path);
    // The vector case is `[upstream]` itself, as every existing config has it.
    let entries = if case.preset == "vector" {
        vec![]
    } else {
        vec![entry("up", case.preset, &base, "")]
    };
    let app = daemon(dir.path(), &db, &sim.url, &entries).await;

    let mut want: Vec<(String, &str)> = case
        .ends
        .iter()
        .map(|(value, outcome)| (format!("end-{value}-1"), *outcome))
        .collect();
    want.push(("succeed-1".into(), "succeeded"));
    want.push(("failed-1".into(), "failed"));
    want.push(("notfound-1".into(), "not_found"));
    want.push(("badrequest-1".into(), "rejected"));
    let ids: Vec<&str> = want.iter().map(|(id, _)| id.as_str()).collect();
    let (status, body) = app.post_jobs(json!({"kind": case.kind, "ids": ids})).await;
    assert_eq!(status, 202, "{}: {body}", case.preset);

    for (id, outcome) in &want {
        let w = app.wait_outcome(case.kind, id, 20).await;
        assert_eq!(w["outcome"], *outcome, "{} {id}: {w}", case.preset);
        if outcome == &"succeeded" || outcome == &"failed" {
            // The upstream's own time, read by the preset's pointer (Unix
            // seconds for OpenAI, RFC 3339 for the others) and shown as RFC 3339.
            let created = w["upstream"]["created"].as_str().unwrap_or_default();
            assert!(
                chrono::DateTime::parse_from_rfc3339(created).is_ok(),
                "{} {id}: created {created:?}",
                case.preset
            );
            assert!(w["state"].is_string(), "{} {id}: {w}", case.preset);
        }
    }
    let (_, status) = app.get("/v1/status").await;
    let names: Vec<&str> = status["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["name"].as_str())
        .collect();
    let expected: &[&str] = if case.preset == "vector" {
        &["vector"]
    } else {
        &["vector", "up"]
    };
    assert_eq!(names, expected, "{status}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_terminal_value_of_google_operations_ends_in_its_outcome() {
    every_terminal_value_ends_right(&CASES[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_terminal_value_of_openai_batches_ends_in_its_outcome() {
    every_terminal_value_ends_right(&CASES[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_terminal_value_of_replicate_predictions_ends_in_its_outcome() {
    every_terminal_value_ends_right(&CASES[2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conclusion_of_github_runs_ends_in_its_outcome() {
    every_terminal_value_ends_right(&CASES[3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_terminal_state_of_vector_jobs_ends_in_its_outcome() {
    every_terminal_value_ends_right(&CASES[4]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kind_is_refused_naming_the_configured_ones() {
    let sim = Sim::start(Sim::fast()).await;
    let (dir, db) = temp_db();
    let base = format!("{}/v1", sim.url);
    let app = daemon(
        dir.path(),
        &db,
        &sim.url,
        &[entry(
            "openai",
            "openai-batch",
            &base,
            "rename = { batch = \"openai-batch\" }",
        )],
    )
    .await;
    let (status, body) = app.post_jobs(json!({"kind": "batch", "ids": ["b1"]})).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for kind in ["copy", "delete", "openai-batch"] {
        assert!(message.contains(kind), "{message}");
    }
    let (status, body) = app
        .post_jobs(json!({"kind": "openai-batch", "ids": ["b1"]}))
        .await;
    assert_eq!(status, 202, "{body}");
    // The document names the configured kinds, so clients built from it send them.
    let (_, doc) = app.get("/openapi.json").await;
    let kinds = &doc["components"]["schemas"]["Kind"]["enum"];
    assert_eq!(*kinds, json!(["copy", "delete", "openai-batch"]), "{kinds}");
    app.stop().await;
}

/// The times (ms since the epoch) of the status requests of `log`.
fn arrivals(sim: &Sim) -> Vec<(f64, u16, String)> {
    sim.sim
        .request_log()
        .into_iter()
        .map(|r| (r.t_ms, r.status, r.path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pause_on_one_upstream_never_slows_polls_to_another() {
    // OpenAI-shaped upstream: one request in 5 s; the second is answered 429 with
    // Retry-After: 5. Replicate-shaped upstream: no limit.
    let limited = Sim::start(SimulateArgs {
        shape: Shape::OpenaiBatch,
        rate_limit: Some(0.2),
        rate_burst: Some(1),
        ..Sim::fast()
    })
    .await;
    let free = Sim::start(SimulateArgs {
        shape: Shape::Replicate,
        ..Sim::fast()
    })
    .await;
    let (dir, db) = temp_db();
    let app = daemon(
        dir.path(),
        &db,
        &limited.url,
        &[
            entry("openai", "openai-batch", &format!("{}/v1", limited.url), ""),
            entry("replicate", "replicate", &format!("{}/v1", free.url), ""),
        ],
    )
    .await;
    let (s, b) = app
        .post_jobs(json!({"kind": "batch", "ids": ["running-b1", "running-b2", "running-b3"]}))
        .await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = app
        .post_jobs(json!({"kind": "prediction", "ids": ["running-p1", "running-p2"]}))
        .await;
    assert_eq!(s, 202, "{b}");

    // Until the limited upstream has answered a 429, and its pause is seen in
    // status while the other upstream is not paused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let paused = loop {
        let (_, s) = app.get("/v1/status").await;
        let ups = s["upstreams"].as_array().cloned().unwrap_or_default();
        let by_name = |n: &str| -> Value {
            ups.iter()
                .find(|u| u["name"] == n)
                .cloned()
                .unwrap_or(Value::Null)
        };
        if !by_name("openai")["health"]["paused_until"].is_null() {
            assert!(
                by_name("replicate")["health"]["paused_until"].is_null(),
                "{s}"
            );
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "no pause: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!paused["upstream"]["paused_until"].is_null(), "{paused}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    app.stop().await;

    let limited_log = limited.sim.request_log();
    let first_429 = limited_log
        .iter()
        .find(|r| r.status == 429)
        .expect("the limited upstream answered 429");
    let (t0, ra) = (
        first_429.t_ms,
        first_429.retry_after_ms.expect("with Retry-After"),
    );
    assert!(ra >= 4000.0, "Retry-After {ra} ms");
    // Requests sent before the 429 came back may still arrive just after it.
    const GRACE_MS: f64 = 250.0;
    let inside: Vec<f64> = limited_log
        .iter()
        .map(|r| r.t_ms - t0)
        .filter(|dt| *dt > GRACE_MS && *dt < ra - 50.0)
        .collect();
    assert!(
        inside.is_empty(),
        "requests to the paused upstream inside its pause (ms after the 429): {inside:?}"
    );

    // Meanwhile the other upstream was polled on its cadence (100 ms growing to
    // 400 ms): every watch, with no gap over a second.
    let free_log = arrivals(&free);
    for id in ["running-p1", "running-p2"] {
        let mut times: Vec<f64> = free_log
            .iter()
            .filter(|(t, status, path)| {
                path.ends_with(id) && *status == 200 && *t >= t0 && *t <= t0 + ra
            })
            .map(|(t, _, _)| *t)
            .collect();
        times.sort_by(f64::total_cmp);
        assert!(
            times.len() >= 8,
            "{id} polled {} times during the other upstream's {ra} ms pause",
            times.len()
        );
        let gaps = times.windows(2).map(|w| w[1] - w[0]);
        let longest = gaps.fold(0.0f64, f64::max);
        assert!(longest < 1000.0, "{id}: a gap of {longest} ms");
    }
    println!(
        "429 at +0 with Retry-After {ra} ms: {} requests to the paused upstream inside it; \
         the other upstream answered {} polls meanwhile",
        inside.len(),
        free_log
            .iter()
            .filter(|(t, _, _)| *t >= t0 && *t <= t0 + ra)
            .count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_on_one_upstream_pauses_only_that_one() {
    let guarded = Sim::start(SimulateArgs {
        shape: Shape::GoogleLro,
        token: Some("right".into()),
        ..Sim::fast()
    })
    .await;
    let open = Sim::start(SimulateArgs {
        shape: Shape::GithubActions,
        ..Sim::fast()
    })
    .await;
    let (dir, db) = temp_db();
    let app = daemon(
        dir.path(),
        &db,
        &open.url,
        &[
            entry(
                "google",
                "google-lro",
                &format!("{}/v1", guarded.url),
                "token = \"wrong\"",
            ),
            entry(
                "github",
                "github-actions",
                &format!("{}/repos/o/r", open.url),
                "",
            ),
        ],
    )
    .await;
    let (s, b) = app
        .post_jobs(json!({"kind": "operation", "ids": ["succeed-g1"]}))
        .await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = app
        .post_jobs(json!({"kind": "workflow-run", "ids": ["succeed-r1", "failed-r2"]}))
        .await;
    assert_eq!(s, 202, "{b}");
    // The other upstream's watches end while this one's credentials are refused.
    assert_eq!(
        app.wait_outcome("workflow-run", "succeed-r1", 20).await["outcome"],
        "succeeded"
    );
    assert_eq!(
        app.wait_outcome("workflow-run", "failed-r2", 20).await["outcome"],
        "failed"
    );
    let (code, ready) = app.get("/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready.to_string().contains("upstream \\\"google\\\""),
        "{ready}"
    );
    let (_, w) = app.get("/v1/jobs/operation/succeed-g1").await;
    assert!(w["outcome"].is_null(), "{w}");
    // The right token: it goes on by itself.
    guarded.sim.set_token(Some("wrong".into()));
    assert_eq!(
        app.wait_outcome("operation", "succeed-g1", 20).await["outcome"],
        "succeeded"
    );
    app.stop().await;
}
