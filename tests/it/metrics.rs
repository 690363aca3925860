//! Issue 6: `/metrics` counts what happened, exactly, and `/openapi.json`
//! documents every route, body and error of the API it is served by; the logs are
//! JSON lines when asked, and carry the request id a response echoes.
//!
//! The metrics recorder is process-wide and the other tests run their daemons in
//! this process at the same time, so the counting test runs the daemon as the real
//! binary in a child process (`crash::Proc`): its counters then move only with what
//! this test does, and every delta can be compared with what the simulator and the
//! receivers saw.

use std::collections::HashMap;
use std::time::Duration;

use jobwatch::simulator::SimulateArgs;
use jobwatch::webhook::sign::SigningSecret;
use serde_json::{json, Value};

use crate::crash::{ConfigFile, Proc};
use crate::helpers::*;
use crate::receiver::{Plan, TestReceiver};

/// One scrape: each series (`name` or `name{label="value"}`) with its value.
struct Scrape(HashMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut series = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
            series.insert(key.to_string(), value);
        }
        Scrape(series)
    }

    /// A series' value; a series not shown yet counts as 0.
    fn get(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        let key = match label {
            None => name.to_string(),
            Some((k, v)) => format!("{name}{{{k}=\"{v}\"}}"),
        };
        self.0.get(&key).copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.0
            .keys()
            .any(|k| k == name || k.starts_with(&format!("{name}{{")))
    }
}

async fn scrape(client: &reqwest::Client, base: &str) -> Scrape {
    let r = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status(), 200);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );
    Scrape::parse(&r.text().await.expect("metrics body"))
}

/// The change of one series between two scrapes.
fn delta(before: &Scrape, after: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    after.get(name, label) - before.get(name, label)
}

#[tokio::test]
async fn metrics_count_every_poll_outcome_and_delivery_of_a_run() {
    // An upstream that rate-limits (429 with Retry-After past 20 requests/s) and fails
    // one request in ten with a 5xx, so every kind of answer shows up.
    let sim = Sim::start(SimulateArgs {
        rate_limit: Some(20.0),
        rate_burst: Some(3),
        error_ratio: 0.1,
        ..Sim::fast()
    })
    .await;
    let secret = SigningSecret::generate();
    let ok = TestReceiver::start(Some(secret.clone())).await;
    let gone = TestReceiver::start(Some(secret.clone())).await;
    gone.respond_with(Plan::Gone);
    let failing = TestReceiver::start(Some(secret.clone())).await;
    failing.respond_with(Plan::Status(500));

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ConfigFile::new(&dir.path().join("jobwatch.db"), &sim.url);
    config
        .set("webhooks", "signing_secret", &secret.to_whsec())
        .raw("webhooks", "allow_private_targets = true")
        .raw("webhooks", r#"retry_schedule = ["50ms", "50ms"]"#)
        .raw("webhooks", "jitter = 0.0")
        .endpoint(&ok.url, &secret, &[])
        .endpoint(&gone.url, &secret, &["job.rejected"])
        .endpoint(&failing.url, &secret, &["job.not_found"]);
    let config = config.write(&dir.path().join("jobwatch.toml"));
    let daemon = Proc::start(&config).await;
    let before = scrape(&daemon.client, &daemon.url).await;

    let ids = [
        "succeed-m1",
        "succeed-m2",
        "succeed-m3",
        "succeed-m4",
        "failed-m1",
        "failed-m2",
        "failed-m3",
        "badrequest-m1",
        "notfound-m1",
    ];
    let (status, body) = daemon
        .post_jobs(&json!({"kind": "copy", "ids": ids}))
        .await
        .expect("POST /v1/jobs");
    assert_eq!(status, 202, "{body}");
    daemon.wait_settled(Duration::from_secs(30)).await;
    let after = scrape(&daemon.client, &daemon.url).await;

    // Polls: each answer the simulator gave, counted once under its result.
    let log = sim.sim.request_log();
    let answered = |f: &dyn Fn(u16) -> bool| log.iter().filter(|r| f(r.status)).count() as f64;
    let polls = |result| {
        delta(
            &before,
            &after,
            "jobwatch_polls_total",
            Some(("result", result)),
        )
    };
    let rate_limited = answered(&|s| s == 429);
    assert!(
        rate_limited > 0.0,
        "the burst of first polls should have met the simulator's rate limit"
    );
    assert_eq!(polls("status"), answered(&|s| s == 200), "200s");
    assert_eq!(polls("not_found"), answered(&|s| s == 404), "404s");
    assert_eq!(polls("rejected"), answered(&|s| s == 400), "400s");
    assert_eq!(polls("rate_limited"), rate_limited, "429s");
    assert_eq!(
        polls("transient"),
        answered(&|s| (500..=504).contains(&s) || s == 0),
        "5xx"
    );
    assert_eq!(polls("unauthorized"), 0.0);
    assert_eq!(
        delta(
            &before,
            &after,
            "jobwatch_upstream_request_duration_seconds_count",
            None
        ),
        log.len() as f64,
        "one latency observation per request"
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "jobwatch_upstream_rate_limited_total",
            Some(("status", "429"))
        ),
        rate_limited
    );
    assert!(
        delta(
            &before,
            &after,
            "jobwatch_upstream_paused_seconds_total",
            None
        ) >= 1.0,
        "each 429 named Retry-After: 1 at least"
    );

    // Outcomes, from polls: one per watch.
    for (outcome, n) in [
        ("succeeded", 4.0),
        ("failed", 3.0),
        ("rejected", 1.0),
        ("not_found", 1.0),
        ("timed_out", 0.0),
    ] {
        assert_eq!(
            delta(
                &before,
                &after,
                "jobwatch_outcomes_total",
                Some(("outcome", outcome))
            ),
            n,
            "{outcome}"
        );
    }

    // Deliveries: every event to `ok`; the rejection to `gone` (410); the not_found to
    // `failing`, which gets the first attempt and two retries, then is dead.
    assert_eq!(ok.received().iter().filter(|r| r.ok).count(), ids.len());
    assert_eq!(failing.received().len(), 3);
    let deliveries = |result| {
        delta(
            &before,
            &after,
            "jobwatch_deliveries_total",
            Some(("result", result)),
        )
    };
    assert_eq!(deliveries("delivered"), ids.len() as f64);
    assert_eq!(deliveries("gone"), 1.0);
    assert_eq!(deliveries("retrying"), 2.0);
    assert_eq!(deliveries("dead"), 1.0);
    assert_eq!(
        delta(
            &before,
            &after,
            "jobwatch_delivery_duration_seconds_count",
            None
        ),
        ids.len() as f64 + 1.0 + 3.0,
        "one latency observation per attempt"
    );

    // Store writes: the one POST, and the writer's commits.
    assert_eq!(
        delta(
            &before,
            &after,
            "jobwatch_store_write_duration_seconds_count",
            Some(("op", "insert_watches"))
        ),
        1.0
    );
    assert!(
        delta(
            &before,
            &after,
            "jobwatch_store_write_duration_seconds_count",
            Some(("op", "poll_results"))
        ) >= 1.0
    );
    assert!(
        delta(
            &before,
            &after,
            "jobwatch_store_write_duration_seconds_count",
            Some(("op", "delivery_attempts"))
        ) >= 1.0
    );

    // Levels, read from this daemon's store and budget at scrape time.
    assert_eq!(after.get("jobwatch_store_up", None), 1.0);
    for (outcome, n) in [
        ("succeeded", 4.0),
        ("failed", 3.0),
        ("rejected", 1.0),
        ("not_found", 1.0),
        ("timed_out", 0.0),
        ("cancelled", 0.0),
    ] {
        assert_eq!(
            after.get("jobwatch_watches_ended", Some(("outcome", outcome))),
            n,
            "{outcome}"
        );
    }
    for state in ["none", "PENDING", "RUNNING", "other"] {
        assert_eq!(
            after.get("jobwatch_watches_running", Some(("state", state))),
            0.0
        );
    }
    assert_eq!(after.get("jobwatch_delivery_backlog", None), 0.0);
    assert_eq!(
        after.get("jobwatch_deliveries", Some(("status", "delivered"))),
        ids.len() as f64
    );
    assert_eq!(
        after.get("jobwatch_deliveries", Some(("status", "gone"))),
        1.0
    );
    assert_eq!(
        after.get("jobwatch_deliveries", Some(("status", "dead"))),
        1.0
    );
    assert_eq!(after.get("jobwatch_upstream_configured_rate", None), 2000.0);
    assert!(after.get("jobwatch_upstream_allowed_rate", None) > 0.0);
    assert_eq!(
        after.get("jobwatch_upstream_credentials_rejected", None),
        0.0
    );
}

/// Every route the daemon serves, with its methods, as the document must list them.
const ROUTES: [(&str, &[&str]); 12] = [
    ("/v1/jobs", &["post", "get"]),
    ("/v1/jobs/{kind}/{id}", &["get", "delete"]),
    ("/v1/status", &["get"]),
    ("/v1/deliveries", &["get"]),
    ("/v1/deliveries/{id}", &["get"]),
    ("/v1/deliveries/{id}/retry", &["post"]),
    ("/v1/events", &["get"]),
    ("/", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
];

/// Follows a local `$ref` of the document.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => schema,
    }
}

/// The names a schema (with its `allOf` parts) requires.
fn required(doc: &Value, schema: &Value) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut names: Vec<String> = schema["required"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        names.extend(required(doc, part));
    }
    names
}

/// The schema of an operation's answer with `status`.
fn response_schema<'a>(doc: &'a Value, path: &str, method: &str, status: &str) -> &'a Value {
    let r = &doc["paths"][path][method]["responses"][status];
    assert!(r.is_object(), "{method} {path} documents no {status}");
    &r["content"]["application/json"]["schema"]
}

fn assert_has_required(doc: &Value, schema: &Value, answer: &Value, what: &str) {
    let names = required(doc, schema);
    assert!(!names.is_empty(), "{what}: the schema requires nothing");
    for name in names {
        assert!(
            answer.get(&name).is_some(),
            "{what}: the answer lacks `{name}` that the document requires: {answer}"
        );
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_body_and_error_and_matches_the_answers() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();
    let token = "metrics-test-token";
    let app = App::start(settings(&db, &sim.url, &[("api.token", token)])).await;

    // Outside /v1: no token wanted.
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "not OpenAPI 3: {}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "jobwatch");

    let paths = doc["paths"].as_object().expect("paths");
    let listed: usize = paths
        .values()
        .map(|p| p.as_object().map_or(0, |o| o.len()))
        .sum();
    let expected: usize = ROUTES.iter().map(|(_, m)| m.len()).sum();
    assert_eq!(listed, expected, "operations: {:?}", paths.keys());
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    for (path, methods) in ROUTES {
        for method in methods {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} is not documented");
            let responses = op["responses"].as_object().expect("responses");
            let v1 = path.starts_with("/v1/");
            assert_eq!(
                op["security"][0]["bearer"].is_array(),
                v1,
                "{method} {path}: security"
            );
            assert_eq!(responses.contains_key("401"), v1, "{method} {path}: 401");
            assert_eq!(responses.contains_key("503"), v1 || path == "/readyz");
            for (code, r) in responses {
                if code.starts_with('4') || (code.starts_with('5') && v1) {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }
    assert!(doc["paths"]["/v1/jobs"]["post"]["responses"]["413"].is_object());
    let request = resolve(
        &doc,
        &doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"],
    );
    assert_eq!(request["properties"]["ids"]["maxItems"], 10000);
    assert_eq!(required(&doc, request), ["kind", "ids"]);

    // The answers carry what the document requires.
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = client
            .request(method, format!("{}{path}", app.url))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        answer(r, "request")
    };
    // In order: the job is posted before it is read. Each answer has the status
    // the case names, documented for the route (`template`) with the fields it requires.
    let mut answers = Vec::new();
    for (method, path, body, template, status) in [
        (
            reqwest::Method::POST,
            "/v1/jobs",
            Some(json!({"kind": "copy", "ids": ["succeed-doc1"]})),
            "/v1/jobs",
            202,
        ),
        (
            reqwest::Method::GET,
            "/v1/jobs/copy/succeed-doc1?wait=10",
            None,
            "/v1/jobs/{kind}/{id}",
            200,
        ),
        (reqwest::Method::GET, "/v1/jobs", None, "/v1/jobs", 200),
        (reqwest::Method::GET, "/v1/status", None, "/v1/status", 200),
        (
            reqwest::Method::GET,
            "/v1/jobs/copy/no-such-job",
            None,
            "/v1/jobs/{kind}/{id}",
            404,
        ),
    ] {
        let what = format!("{method} {path}");
        let (got, answer) = call(method.clone(), path, body).await;
        assert_eq!(got, status, "{what}: {answer}");
        let schema = response_schema(
            &doc,
            template,
            &method.as_str().to_ascii_lowercase(),
            &status.to_string(),
        );
        assert_has_required(&doc, schema, &answer, &what);
        answers.push(answer);
    }
    assert_eq!(answers[1]["outcome"], "succeeded", "{}", answers[1]);
    assert_eq!(answers[4]["error"]["code"], "watch_not_found");

    // The token guards /v1 only; errors axum answers itself get the error body too.
    let (status, err) = app.get("/v1/status").await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["code"], "unauthorized");
    let (status, err) = app.get("/v1/jobs/copy/%FF").await;
    assert_eq!(status, 401, "the token is checked first: {err}");
    let (status, err) = call(reqwest::Method::GET, "/v1/jobs/copy/%FF", None).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "bad_request", "{err}");
    let (status, err) = app.get("/no/such/route").await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_found", "{err}");
    let metrics = scrape(&app.client, &app.url).await;
    assert_eq!(metrics.get("jobwatch_store_up", None), 1.0);
    assert!(metrics.has("jobwatch_polls_total"));
    assert!(metrics.has("jobwatch_upstream_request_duration_seconds_bucket"));
    app.stop().await;
}

/// `log.format = "json"`: every line on stderr is a JSON object, and a request's
/// lines carry its id, which the response echoes in `x-request-id` (the caller's,
/// or a new ULID when it sent none). DESIGN.md and docs/operations.md promise both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_that_the_response_echoes() {
    let sim = Sim::start(Sim::fast()).await;
    let (dir, db) = temp_db();
    let mut cfg = ConfigFile::new(&db, &sim.url);
    // Debug: the per-request lines are at debug level.
    cfg.set("log", "format", "json")
        .set("log", "level", "debug");
    let proc = Proc::start(&cfg.write(&dir.path().join("jobwatch.toml"))).await;

    let r = proc
        .client
        .get(format!("{}/v1/status", proc.url))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("GET /v1/status");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-me-42"),
        "the caller's id is echoed"
    );
    let r = proc
        .client
        .get(format!("{}/healthz", proc.url))
        .send()
        .await
        .expect("GET /healthz");
    let made = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        made.parse::<ulid::Ulid>().is_ok(),
        "a request without an id gets a ULID: {made:?}"
    );

    let mut log = String::new();
    for _ in 0..250 {
        log = proc.log();
        if log.contains("trace-me-42") && log.contains(&made) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"))
        })
        .collect();
    assert!(!lines.is_empty(), "the daemon logged nothing");
    for line in &lines {
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "every line has a time and a level: {line}"
        );
    }
    let of_request = |id: &str, route: &str| {
        lines
            .iter()
            .any(|l| l["span"]["request_id"] == id && l["span"]["route"] == route)
    };
    assert!(of_request("trace-me-42", "/v1/status"), "{log}");
    assert!(of_request(&made, "/healthz"), "{log}");
}
