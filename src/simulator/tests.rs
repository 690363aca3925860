//! The simulator over real HTTP, on a random loopback port.

use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;

struct Running {
    sim: Simulator,
    base: String,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    client: reqwest::Client,
}

/// Short jobs so that the tests are fast.
fn fast() -> SimulateArgs {
    SimulateArgs {
        min_running: Duration::from_millis(50),
        max_running: Duration::from_millis(150),
        not_yet_for: Duration::from_millis(150),
        keep_log: true,
        ..SimulateArgs::default()
    }
}

async fn start(args: SimulateArgs) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let sim = Simulator::new(args);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sim.clone().serve(listener, shutdown.clone()));
    Running {
        sim,
        base,
        shutdown,
        task,
        client: reqwest::Client::new(),
    }
}

impl Running {
    fn status_url(&self, kind: &str, encoded_id: &str) -> String {
        format!("{}/products/{encoded_id}/search/{kind}/status", self.base)
    }

    async fn status(&self, kind: &str, encoded_id: &str) -> reqwest::Response {
        self.client
            .get(self.status_url(kind, encoded_id))
            .send()
            .await
            .unwrap()
    }

    async fn doc(&self, kind: &str, encoded_id: &str) -> Value {
        let r = self.status(kind, encoded_id).await;
        assert_eq!(r.status(), 200, "status of {kind} {encoded_id}");
        r.json().await.unwrap()
    }

    /// Polls until the job has `ended`, and returns its last document.
    async fn until_ended(&self, kind: &str, encoded_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let doc = self.doc(kind, encoded_id).await;
            if !doc["data"]["attributes"]["ended"].is_null() {
                return doc;
            }
            assert!(Instant::now() < deadline, "{encoded_id} never ended: {doc}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }
}

fn attr<'a>(doc: &'a Value, name: &str) -> &'a Value {
    &doc["data"]["attributes"][name]
}

fn time_of(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap()
}

#[test]
fn the_defaults_are_the_command_lines() {
    let d = SimulateArgs::default();
    assert_eq!(d.listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(d.min_running, Duration::from_secs(2));
    assert_eq!(d.mix.entries().len(), 6);
    assert_eq!(d.retry_after_form, RetryAfterForm::Seconds);
    assert!(!d.keep_log && d.token.is_none() && d.rate_limit.is_none());
}

#[test]
fn the_command_line_parses_every_knob() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }
    let cli = <Cli as clap::Parser>::try_parse_from([
        "simulate",
        "--listen=0.0.0.0:1",
        "--seed=9",
        "--min-running=1s",
        "--max-running=2m",
        "--mix=SUCCESS=1,FAILED+errors=1",
        "--durations=copy=lognormal:2m,1",
        "--durations",
        "pareto:1s,2",
        "--not-found-ids=a,b",
        "--bad-request-ids=c",
        "--token=t",
        "--rate-limit=2.5",
        "--rate-burst=3",
        "--retry-after-form=http-date",
        "--error-ratio=0.1",
        "--malformed-ratio=0.1",
        "--drop-ratio=0.1",
        "--slow-ratio=0.1",
        "--slow-delay=250ms",
        "--request-log=/tmp/x.jsonl",
    ])
    .unwrap();
    assert_eq!(cli.args.not_found_ids, ["a", "b"]);
    assert_eq!(
        cli.args
            .durations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["copy=lognormal:2m,1", "pareto:1s,2"]
    );
    assert_eq!(cli.args.max_running, Duration::from_secs(120));
    assert_eq!(cli.args.retry_after_form, RetryAfterForm::HttpDate);
    for bad in [
        "--error-ratio=1.5",
        "--rate-limit=0",
        "--rate-burst=0",
        "--mix=SUCCESS",
        "--durations=lognormal:2m",
    ] {
        assert!(
            <Cli as clap::Parser>::try_parse_from(["simulate", bad]).is_err(),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_job_is_pending_then_running_then_final_with_its_timestamps() {
    let s = start(fast()).await;
    let r = s.status("copy", "succeed-a").await;
    assert_eq!(r.headers()["content-type"], "application/vnd.api+json");
    let first: Value = r.json().await.unwrap();
    assert_eq!(first["data"]["id"], "succeed-a");
    assert_eq!(first["data"]["type"], "copy_job");
    assert_eq!(attr(&first, "state"), "PENDING");
    assert!(attr(&first, "started").is_null() && attr(&first, "ended").is_null());
    let end = s
        .sim
        .job_end("copy", "succeed-a")
        .expect("a seen job has an end");
    assert!(end > SystemTime::now());

    let last = s.until_ended("copy", "succeed-a").await;
    assert_eq!(attr(&last, "state"), "SUCCESS");
    assert_eq!(attr(&last, "errors"), &serde_json::json!([]));
    let created = attr(&last, "created").as_str().unwrap();
    // The real service's form: microseconds and an explicit offset.
    assert_eq!(
        created.len(),
        "2019-01-03T20:07:51.720000+00:00".len(),
        "{created}"
    );
    assert!(created.ends_with("+00:00"));
    let (c, st, en) = (
        time_of(attr(&last, "created")),
        time_of(attr(&last, "started")),
        time_of(attr(&last, "ended")),
    );
    assert!(c <= st && st <= en);
    assert!(en - c >= chrono::Duration::milliseconds(50));
    assert!(SystemTime::now() >= end);
    assert!(s.sim.polls_of("copy", "succeed-a") >= 2);
    assert_eq!(s.sim.polls_of("delete", "succeed-a"), 0);
    s.stop().await;
}

#[tokio::test]
async fn the_same_seed_gives_the_same_final_states_and_running_times() {
    let ids: Vec<String> = (0..8).map(|i| format!("job{i}")).collect();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let s = start(SimulateArgs { seed: 42, ..fast() }).await;
        let mut outcomes = Vec::new();
        for id in &ids {
            s.status("delete", id).await;
        }
        for id in &ids {
            let doc = s.until_ended("delete", id).await;
            let running = time_of(attr(&doc, "ended")) - time_of(attr(&doc, "created"));
            outcomes.push((
                attr(&doc, "state").clone(),
                attr(&doc, "errors").clone(),
                running.num_microseconds().unwrap(),
            ));
        }
        runs.push(outcomes);
        s.stop().await;
    }
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        assert_eq!((&a.0, &a.1), (&b.0, &b.1));
        // Timestamps are printed to the microsecond, truncated.
        assert!((a.2 - b.2).abs() <= 1, "{a:?} vs {b:?}");
    }
}

#[tokio::test]
async fn each_prefix_ends_as_its_name_says() {
    let s = start(fast()).await;
    let cases = [
        ("succeed-1", "SUCCESS", false),
        ("done-1", "DONE", false),
        ("doneerr-1", "DONE", true),
        ("successerr-1", "SUCCESS", true),
        ("failed-1", "FAILED", false),
        ("failure-1", "FAILURE", false),
    ];
    for (id, _, _) in cases {
        s.status("copy", id).await;
    }
    for (id, state, errors) in cases {
        let doc = s.until_ended("copy", id).await;
        assert_eq!(attr(&doc, "state"), state, "{id}");
        let list = attr(&doc, "errors").as_array().unwrap();
        assert_eq!(!list.is_empty(), errors, "{id}: {doc}");
    }
    s.stop().await;
}

#[tokio::test]
async fn forever_prefixes_never_end() {
    let s = start(fast()).await;
    let cases = [
        ("pending-1", "PENDING"),
        ("running-1", "RUNNING"),
        ("unknown-1", "PAUSED"),
    ];
    for (id, _) in cases {
        s.status("delete", id).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    for (id, state) in cases {
        let doc = s.doc("delete", id).await;
        assert_eq!(attr(&doc, "state"), state, "{id}");
        assert!(attr(&doc, "ended").is_null());
        assert_eq!(s.sim.job_end("delete", id), None);
    }
    s.stop().await;
}

#[tokio::test]
async fn chosen_ids_answer_404_or_400_with_a_json_api_error() {
    let s = start(SimulateArgs {
        not_found_ids: vec!["gone".into()],
        bad_request_ids: vec!["bad".into()],
        ..fast()
    })
    .await;
    for (id, status) in [
        ("notfound-x", 404),
        ("gone", 404),
        ("badrequest-x", 400),
        ("bad", 400),
    ] {
        for _ in 0..2 {
            let r = s.status("copy", id).await;
            assert_eq!(r.status(), status, "{id}");
            assert_eq!(r.headers()["content-type"], "application/vnd.api+json");
            let doc: Value = r.json().await.unwrap();
            assert_eq!(doc["errors"][0]["status"], status.to_string());
            assert!(doc["errors"][0]["title"].is_string());
            assert!(doc["errors"][0]["detail"].as_str().unwrap().contains(id));
        }
        assert_eq!(s.sim.polls_of("copy", id), 2);
    }
    s.stop().await;
}

#[tokio::test]
async fn a_notyet_job_is_404_for_a_while_then_runs_as_the_rest_of_its_id_says() {
    let s = start(fast()).await;
    assert_eq!(s.status("copy", "notyet-failed-1").await.status(), 404);
    tokio::time::sleep(Duration::from_millis(160)).await;
    let doc = s.until_ended("copy", "notyet-failed-1").await;
    assert_eq!(attr(&doc, "state"), "FAILED");
    s.stop().await;
}

#[tokio::test]
async fn percent_encoded_ids_are_decoded() {
    let s = start(fast()).await;
    let doc = s.doc("delete", "done-myorg%3Amy-product").await;
    assert_eq!(doc["data"]["id"], "done-myorg:my-product");
    assert_eq!(doc["data"]["type"], "delete_job");
    assert_eq!(s.sim.polls_of("delete", "done-myorg:my-product"), 1);
    assert!(s.sim.job_end("delete", "done-myorg:my-product").is_some());
    // A path that decodes to invalid UTF-8 is refused, not a panic.
    assert_eq!(s.status("delete", "x%FF").await.status(), 400);
    s.stop().await;
}

#[tokio::test]
async fn a_token_is_required_and_can_change_at_runtime() {
    let s = start(SimulateArgs {
        token: Some("s3cret".into()),
        ..fast()
    })
    .await;
    let url = s.status_url("copy", "succeed-t");
    let r = s.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["errors"][0]["status"], "401");
    let wrong = s.client.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = s
        .client
        .get(&url)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);

    s.sim.set_token(Some("rotated".into()));
    let old = s
        .client
        .get(&url)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401);
    s.sim.set_token(None);
    assert_eq!(s.client.get(&url).send().await.unwrap().status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn over_the_rate_limit_answers_429_with_retry_after_in_seconds() {
    let s = start(SimulateArgs {
        rate_limit: Some(0.5),
        rate_burst: Some(1),
        ..fast()
    })
    .await;
    assert_eq!(s.status("copy", "succeed-r").await.status(), 200);
    let r = s.status("copy", "succeed-r").await;
    assert_eq!(r.status(), 429);
    let secs: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["errors"][0]["status"], "429");
    // A 429 is not a poll of the job, but it is a request received.
    assert_eq!(s.sim.polls_of("copy", "succeed-r"), 1);
    assert_eq!(s.sim.requests_received(), 2);
    let statuses: Vec<u16> = s.sim.request_log().iter().map(|l| l.status).collect();
    assert_eq!(statuses, [200, 429]);
    s.stop().await;
}

#[tokio::test]
async fn over_the_rate_limit_answers_429_with_retry_after_as_an_http_date() {
    let s = start(SimulateArgs {
        rate_limit: Some(0.5),
        rate_burst: Some(1),
        retry_after_form: RetryAfterForm::HttpDate,
        ..fast()
    })
    .await;
    assert_eq!(s.status("copy", "succeed-r").await.status(), 200);
    let r = s.status("copy", "succeed-r").await;
    assert_eq!(r.status(), 429);
    let header = r.headers()["retry-after"].to_str().unwrap().to_string();
    let at = httpdate::parse_http_date(&header).unwrap();
    let now = SystemTime::now();
    assert!(at > now, "{header} is not in the future");
    assert!(at <= now + Duration::from_secs(3), "{header} is too far");
    s.stop().await;
}

#[tokio::test]
async fn the_request_log_file_gets_one_json_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.jsonl");
    let s = start(SimulateArgs {
        request_log: Some(path.clone()),
        keep_log: false,
        ..fast()
    })
    .await;
    let before = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0;
    s.status("copy", "succeed-l%3A1").await;
    s.client
        .get(format!("{}/nowhere", s.base))
        .send()
        .await
        .unwrap();
    let in_memory = s.sim.request_log();
    s.stop().await;

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<LoggedRequest> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // serde_json parses floats to within an ulp or so, not always exactly.
    assert_eq!(lines.len(), in_memory.len());
    for (file, memory) in lines.iter().zip(&in_memory) {
        assert_eq!(
            (&file.method, &file.path, file.status),
            (&memory.method, &memory.path, memory.status)
        );
        assert!(
            (file.t_ms - memory.t_ms).abs() < 0.01,
            "{file:?} vs {memory:?}"
        );
    }
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].method, "GET");
    assert_eq!(lines[0].path, "/products/succeed-l%3A1/search/copy/status");
    assert_eq!(lines[0].status, 200);
    assert!(lines[0].t_ms >= before - 1.0 && lines[0].t_ms <= lines[1].t_ms);
    assert_eq!((lines[1].path.as_str(), lines[1].status), ("/nowhere", 404));
    let raw: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(raw["t_ms"].is_f64());
}

#[tokio::test]
async fn the_job_creating_endpoints_start_jobs_and_answer_products() {
    let s = start(fast()).await;
    let c = &s.client;
    let product = c
        .get(format!("{}/products/myorg%3Asrc", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(product.status(), 200);
    let doc: Value = product.json().await.unwrap();
    assert_eq!(
        (&doc["data"]["id"], &doc["data"]["type"]),
        (&"myorg:src".into(), &"product".into())
    );

    let body = serde_json::json!({
        "product": {"id": "failed-copy", "title": "A copy", "description": "d",
                    "owners": ["user:me"], "readers": [], "writers": []},
        "query": {"limit": 10}
    });
    let created = c
        .post(format!("{}/products/myorg%3Asrc/search/copy", s.base))
        .header("content-type", "application/vnd.api+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let doc: Value = created.json().await.unwrap();
    assert_eq!(doc["data"]["id"], "failed-copy");
    assert_eq!(attr(&doc, "title"), "A copy");
    assert!(s.sim.job_end("copy", "failed-copy").is_some());
    assert_eq!(s.sim.polls_of("copy", "failed-copy"), 0);
    let doc = s.until_ended("copy", "failed-copy").await;
    assert_eq!(attr(&doc, "state"), "FAILED");
    let again: Value = c
        .get(format!("{}/products/failed-copy", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(attr(&again, "owners"), &serde_json::json!(["user:me"]));

    // A new delete of the same product is a new job: its clock restarts.
    let deleted = c
        .delete(format!("{}/products/done-d/search", s.base))
        .json(&serde_json::json!({"query_expr": null, "geometry": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let first_end = s.sim.job_end("delete", "done-d").unwrap();
    s.until_ended("delete", "done-d").await;
    c.delete(format!("{}/products/done-d/search", s.base))
        .send()
        .await
        .unwrap();
    assert!(s.sim.job_end("delete", "done-d").unwrap() > first_end);
    let doc = s.doc("delete", "done-d").await;
    assert!(attr(&doc, "ended").is_null());

    let statuses = [
        c.get(format!("{}/products/notfound-p", s.base)).send(),
        c.post(format!("{}/products/notfound-p/search/copy", s.base))
            .body(body.to_string())
            .send(),
        c.post(format!("{}/products/src/search/copy", s.base))
            .body("{\"query\": {}}")
            .send(),
        c.post(format!("{}/products/src/search/copy", s.base))
            .body("not json")
            .send(),
        c.delete(format!("{}/products/badrequest-p/search", s.base))
            .send(),
        c.put(format!("{}/products/src/search/copy", s.base)).send(),
    ];
    let mut got = Vec::new();
    for r in statuses {
        got.push(r.await.unwrap().status().as_u16());
    }
    assert_eq!(got, [404, 404, 400, 400, 400, 405]);
    s.stop().await;
}

#[tokio::test]
async fn injected_errors_are_5xx_without_retry_after() {
    let s = start(SimulateArgs {
        error_ratio: 1.0,
        ..fast()
    })
    .await;
    for _ in 0..10 {
        let r = s.status("copy", "succeed-e").await;
        assert!([500, 502, 503, 504].contains(&r.status().as_u16()));
        assert!(!r.headers().contains_key("retry-after"));
    }
    s.stop().await;
}

#[tokio::test]
async fn malformed_bodies_are_200_but_not_the_contract() {
    let s = start(SimulateArgs {
        malformed_ratio: 1.0,
        ..fast()
    })
    .await;
    for _ in 0..10 {
        let r = s.status("copy", "succeed-m").await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        assert!(
            parsed.is_none_or(|v| !v["data"]["attributes"].is_object()),
            "{text}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn dropped_requests_close_the_connection_without_an_answer() {
    let s = start(SimulateArgs {
        drop_ratio: 1.0,
        ..fast()
    })
    .await;
    let err = s
        .client
        .get(s.status_url("copy", "succeed-d"))
        .send()
        .await
        .expect_err("no answer");
    assert!(!err.is_status(), "{err}");
    assert_eq!(s.sim.request_log()[0].status, 0);
    assert_eq!(s.sim.polls_of("copy", "succeed-d"), 1);
    s.stop().await;
}

#[tokio::test]
async fn slow_answers_wait_the_slow_delay() {
    let s = start(SimulateArgs {
        slow_ratio: 1.0,
        slow_delay: Duration::from_millis(150),
        ..fast()
    })
    .await;
    let t = Instant::now();
    assert_eq!(s.status("copy", "succeed-s").await.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    s.stop().await;
}

// ---- shapes ----------------------------------------------------------------------------------

use super::jobs::JOB_ERROR;

/// Every shape but vector.
const OTHER_SHAPES: [Shape; 4] = [
    Shape::GoogleLro,
    Shape::OpenaiBatch,
    Shape::Replicate,
    Shape::GithubActions,
];

fn shaped(shape: Shape) -> SimulateArgs {
    SimulateArgs { shape, ..fast() }
}

/// The status path of `encoded_id` in `shape`.
fn path_of(shape: Shape, encoded_id: &str) -> String {
    match shape {
        Shape::Vector => format!("/products/{encoded_id}/search/copy/status"),
        Shape::GoogleLro => format!("/v1/operations/{encoded_id}"),
        Shape::OpenaiBatch => format!("/v1/batches/{encoded_id}"),
        Shape::Replicate => format!("/v1/predictions/{encoded_id}"),
        Shape::GithubActions => format!("/repos/o/r/actions/runs/{encoded_id}"),
    }
}

/// The final value a document shows, in the shape's words (`null` while not ended).
fn end_value(shape: Shape, doc: &Value) -> Value {
    match shape {
        Shape::Vector => attr(doc, "state").clone(),
        Shape::GoogleLro if doc["done"] != true => Value::Null,
        Shape::GoogleLro if doc["error"].is_object() => "error".into(),
        Shape::GoogleLro if doc["response"].is_object() => "response".into(),
        Shape::GoogleLro => "neither".into(),
        Shape::OpenaiBatch | Shape::Replicate => doc["status"].clone(),
        Shape::GithubActions => doc["conclusion"].clone(),
    }
}

fn keys(doc: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn is_utc_rfc3339(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.ends_with('Z')) && time_of(v).offset().local_minus_utc() == 0
}

impl Running {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    /// A 200 JSON document of a non-vector shape.
    async fn json_at(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json", "{path}");
        r.json().await.unwrap()
    }

    /// Sees every job of `ids` (decoded, used as they are in paths), waits until they have all
    /// ended, and returns their documents.
    async fn ended_docs(&self, shape: Shape, ids: &[&str]) -> Vec<Value> {
        for id in ids {
            self.get(&path_of(shape, id)).await;
        }
        for id in ids {
            let end = self.sim.job_end("copy", id).expect("a seen job ends");
            let wait = end.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait + Duration::from_millis(10)).await;
        }
        let mut docs = Vec::new();
        for id in ids {
            docs.push(self.json_at(&path_of(shape, id)).await);
        }
        docs
    }
}

/// Checks that `doc` is `shape`'s error body for `status`.
fn assert_error_form(shape: Shape, status: u16, doc: &Value) {
    match shape {
        Shape::Vector => assert_eq!(doc["errors"][0]["status"], status.to_string(), "{doc}"),
        Shape::GoogleLro => {
            assert_eq!(keys(doc), ["error"], "{doc}");
            assert_eq!(keys(&doc["error"]), ["code", "message", "status"], "{doc}");
            assert_eq!(doc["error"]["code"], status, "{doc}");
            assert!(doc["error"]["message"].is_string(), "{doc}");
            let want = match status {
                400 => "INVALID_ARGUMENT",
                401 => "UNAUTHENTICATED",
                404 => "NOT_FOUND",
                405 => "UNIMPLEMENTED",
                429 => "RESOURCE_EXHAUSTED",
                500 => "INTERNAL",
                502 | 503 => "UNAVAILABLE",
                504 => "DEADLINE_EXCEEDED",
                other => panic!("no google status for {other}"),
            };
            assert_eq!(doc["error"]["status"], want, "{doc}");
        }
        Shape::OpenaiBatch => {
            assert_eq!(keys(doc), ["error"], "{doc}");
            assert_eq!(
                keys(&doc["error"]),
                ["code", "message", "param", "type"],
                "{doc}"
            );
            assert!(doc["error"]["message"].is_string(), "{doc}");
            assert!(doc["error"]["param"].is_null(), "{doc}");
            let want = match status {
                429 => "requests",
                s if s >= 500 => "server_error",
                _ => "invalid_request_error",
            };
            assert_eq!(doc["error"]["type"], want, "{doc}");
        }
        Shape::Replicate => {
            assert_eq!(keys(doc), ["detail", "status", "title"], "{doc}");
            assert_eq!(doc["status"], status, "{doc}");
            assert!(
                doc["title"].is_string() && doc["detail"].is_string(),
                "{doc}"
            );
        }
        Shape::GithubActions => {
            assert_eq!(
                keys(doc),
                ["documentation_url", "message", "status"],
                "{doc}"
            );
            assert_eq!(doc["status"], status.to_string(), "{doc}");
            assert_eq!(doc["documentation_url"], "https://docs.github.com/rest");
            let want = match status {
                400 => "Bad Request",
                401 => "Bad credentials",
                404 => "Not Found",
                405 => "Method Not Allowed",
                429 => "API rate limit exceeded",
                _ => return assert!(doc["message"].is_string(), "{doc}"),
            };
            assert_eq!(doc["message"], want, "{doc}");
        }
    }
}

#[test]
fn the_shape_flag_defaults_to_vector_and_names_every_shape() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }
    let parse = |args: &[&str]| <Cli as clap::Parser>::try_parse_from(args).map(|c| c.args.shape);
    assert_eq!(parse(&["simulate"]).unwrap(), Shape::Vector);
    assert_eq!(SimulateArgs::default().shape, Shape::Vector);
    assert_eq!(Simulator::new(fast()).shape(), Shape::Vector);
    for (name, shape) in [
        ("vector", Shape::Vector),
        ("google-lro", Shape::GoogleLro),
        ("openai-batch", Shape::OpenaiBatch),
        ("replicate", Shape::Replicate),
        ("github-actions", Shape::GithubActions),
    ] {
        assert_eq!(parse(&["simulate", "--shape", name]).unwrap(), shape);
        assert_eq!(shape.to_string(), name);
        assert_eq!(Simulator::new(shaped(shape)).shape(), shape);
    }
    assert!(parse(&["simulate", "--shape=aws"]).is_err());
}

#[tokio::test]
async fn a_google_lro_operation_is_running_until_done_with_a_response_or_an_error() {
    let s = start(shaped(Shape::GoogleLro)).await;
    let running = s.json_at("/v1/operations/succeed-g").await;
    assert_eq!(keys(&running), ["metadata", "name"], "{running}");
    assert_eq!(running["name"], "operations/succeed-g");
    assert_eq!(
        running["metadata"]["@type"],
        "type.googleapis.com/google.cloud.common.OperationMetadata"
    );
    assert!(
        is_utc_rfc3339(&running["metadata"]["createTime"]),
        "{running}"
    );
    assert!(running["metadata"].get("endTime").is_none(), "{running}");
    // The alias without /v1 is the same operation.
    let alias = s.json_at("/operations/succeed-g").await;
    assert_eq!(alias["name"], "operations/succeed-g");
    assert_eq!(s.sim.polls_of("copy", "succeed-g"), 2);

    let ids = ["succeed-g", "failed-g", "end-response-g", "end-error-g"];
    let docs = s.ended_docs(Shape::GoogleLro, &ids).await;
    for (id, doc) in ids.iter().zip(&docs) {
        assert_eq!(doc["name"], format!("operations/{id}"));
        assert_eq!(doc["done"], true, "{doc}");
        let (created, ended) = (
            time_of(&doc["metadata"]["createTime"]),
            time_of(&doc["metadata"]["endTime"]),
        );
        assert!(is_utc_rfc3339(&doc["metadata"]["endTime"]) && created <= ended);
        if id.contains("succeed") || id.contains("response") {
            assert_eq!(keys(doc), ["done", "metadata", "name", "response"], "{doc}");
            assert_eq!(
                doc["response"],
                serde_json::json!({"@type": "type.googleapis.com/google.protobuf.Empty"})
            );
        } else {
            assert_eq!(keys(doc), ["done", "error", "metadata", "name"], "{doc}");
            assert_eq!(
                doc["error"],
                serde_json::json!({"code": 13, "message": JOB_ERROR, "details": []})
            );
        }
    }
    // No state string: unknown and pending operations look running, for ever.
    for id in ["unknown-g", "pending-g", "running-g"] {
        s.get(&path_of(Shape::GoogleLro, id)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in ["unknown-g", "pending-g", "running-g"] {
        let doc = s.json_at(&path_of(Shape::GoogleLro, id)).await;
        assert_eq!(keys(&doc), ["metadata", "name"], "{doc}");
        assert_eq!(s.sim.job_end("copy", id), None);
    }
    s.stop().await;
}

const BATCH_KEYS: [&str; 20] = [
    "cancelled_at",
    "cancelling_at",
    "completed_at",
    "completion_window",
    "created_at",
    "endpoint",
    "error_file_id",
    "errors",
    "expired_at",
    "expires_at",
    "failed_at",
    "finalizing_at",
    "id",
    "in_progress_at",
    "input_file_id",
    "metadata",
    "object",
    "output_file_id",
    "request_counts",
    "status",
];

#[tokio::test]
async fn an_openai_batch_is_validating_then_in_progress_then_ends_with_its_timestamp() {
    let s = start(shaped(Shape::OpenaiBatch)).await;
    let first = s.json_at("/v1/batches/succeed-o").await;
    assert_eq!(keys(&first), BATCH_KEYS, "{first}");
    assert_eq!(first["id"], "succeed-o");
    assert_eq!(first["object"], "batch");
    assert_eq!(first["endpoint"], "/v1/chat/completions");
    assert_eq!(first["input_file_id"], "file-sim");
    assert_eq!(first["completion_window"], "24h");
    assert_eq!(first["status"], "validating");
    let created = first["created_at"]
        .as_u64()
        .expect("created_at is an integer");
    assert_eq!(first["expires_at"], created + 86_400);
    for null in [
        "errors",
        "output_file_id",
        "error_file_id",
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "metadata",
    ] {
        assert!(first[null].is_null(), "{null}: {first}");
    }
    assert_eq!(
        first["request_counts"],
        serde_json::json!({"total": 0, "completed": 0, "failed": 0})
    );
    assert_eq!(s.json_at("/batches/succeed-o").await["id"], "succeed-o");

    let running = s.json_at("/v1/batches/running-o").await;
    assert_eq!(running["status"], "in_progress");
    assert!(running["in_progress_at"].as_u64().unwrap() >= created);
    assert_eq!(s.json_at("/v1/batches/unknown-o").await["status"], "paused");

    let cases = [
        ("succeed-o", "completed", "completed_at"),
        ("doneerr-o", "failed", "failed_at"),
        ("end-failed-o", "failed", "failed_at"),
        ("end-expired-o", "expired", "expired_at"),
        ("end-cancelled-o", "cancelled", "cancelled_at"),
    ];
    let ids: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let docs = s.ended_docs(Shape::OpenaiBatch, &ids).await;
    for ((id, status, at), doc) in cases.iter().zip(&docs) {
        assert_eq!(keys(doc), BATCH_KEYS, "{doc}");
        assert_eq!(doc["status"], *status, "{id}");
        let ended = doc[at].as_u64().unwrap_or_else(|| panic!("{at}: {doc}"));
        assert!(ended >= doc["in_progress_at"].as_u64().unwrap());
        for other in ["completed_at", "failed_at", "expired_at", "cancelled_at"] {
            assert_eq!(doc[other].is_null(), other != *at, "{other}: {doc}");
        }
        if *status == "failed" {
            assert_eq!(
                doc["errors"],
                serde_json::json!({"object": "list", "data": [{
                    "code": "invalid_request", "message": JOB_ERROR,
                    "param": null, "line": null}]})
            );
        } else {
            assert!(doc["errors"].is_null(), "{doc}");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn a_replicate_prediction_starts_then_processes_then_ends() {
    let s = start(shaped(Shape::Replicate)).await;
    let first = s.json_at("/v1/predictions/succeed-r").await;
    assert_eq!(
        keys(&first),
        [
            "completed_at",
            "created_at",
            "data_removed",
            "error",
            "id",
            "input",
            "logs",
            "metrics",
            "model",
            "output",
            "started_at",
            "status",
            "urls",
            "version"
        ],
        "{first}"
    );
    assert_eq!(first["id"], "succeed-r");
    assert_eq!(first["status"], "starting");
    assert_eq!(
        (&first["model"], &first["version"]),
        (&"sim/model".into(), &"sim".into())
    );
    assert_eq!(first["input"], serde_json::json!({}));
    assert_eq!(first["metrics"], serde_json::json!({}));
    assert_eq!(first["data_removed"], false);
    assert!(first["output"].is_null() && first["error"].is_null());
    assert!(is_utc_rfc3339(&first["created_at"]));
    assert!(first["started_at"].is_null() && first["completed_at"].is_null());
    assert_eq!(
        first["urls"],
        serde_json::json!({"get": "/v1/predictions/succeed-r",
                           "cancel": "/v1/predictions/succeed-r/cancel"})
    );
    let alias = s.json_at("/predictions/succeed-r").await;
    assert_eq!(alias["urls"]["get"], "/predictions/succeed-r");

    let running = s.json_at("/v1/predictions/running-r").await;
    assert_eq!(running["status"], "processing");
    assert!(is_utc_rfc3339(&running["started_at"]));
    assert_eq!(
        s.json_at("/v1/predictions/unknown-r").await["status"],
        "paused"
    );

    let ids = [
        "succeed-r",
        "failure-r",
        "end-succeeded-r",
        "end-canceled-r",
        "end-aborted-r",
    ];
    let docs = s.ended_docs(Shape::Replicate, &ids).await;
    let statuses: Vec<&Value> = docs.iter().map(|d| &d["status"]).collect();
    assert_eq!(
        statuses,
        ["succeeded", "failed", "succeeded", "canceled", "aborted"]
    );
    for doc in &docs {
        let (started, completed) = (time_of(&doc["started_at"]), time_of(&doc["completed_at"]));
        assert!(is_utc_rfc3339(&doc["completed_at"]) && started <= completed);
        assert!(
            doc["metrics"]["predict_time"].as_f64().unwrap() > 0.0,
            "{doc}"
        );
        if doc["status"] == "succeeded" {
            assert_eq!(
                doc["output"],
                serde_json::json!(["https://replicate.delivery/sim/out.png"])
            );
            assert!(doc["error"].is_null());
        } else if doc["status"] == "failed" {
            assert_eq!(doc["error"], JOB_ERROR);
            assert!(doc["output"].is_null());
        } else {
            assert!(doc["output"].is_null() && doc["error"].is_null(), "{doc}");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn a_github_workflow_run_is_queued_then_in_progress_then_completed() {
    let s = start(shaped(Shape::GithubActions)).await;
    let first = s.json_at("/repos/o/r/actions/runs/succeed-1").await;
    assert_eq!(
        keys(&first),
        [
            "conclusion",
            "created_at",
            "display_title",
            "html_url",
            "id",
            "name",
            "run_started_at",
            "status",
            "updated_at"
        ],
        "{first}"
    );
    assert_eq!(first["id"], "succeed-1");
    assert_eq!(
        (&first["status"], &first["conclusion"]),
        (&"queued".into(), &Value::Null)
    );
    assert!(first["run_started_at"].is_null());
    assert_eq!(first["created_at"], first["updated_at"]);
    assert!(is_utc_rfc3339(&first["created_at"]));
    assert_eq!(
        first["html_url"],
        "https://github.com/sim/sim/actions/runs/succeed-1"
    );
    // A numeric id is a number, as on GitHub; one beyond u64 stays a string.
    let numeric = s.json_at("/repos/o/r/actions/runs/123").await;
    assert_eq!(numeric["id"], 123);
    assert!(numeric["id"].is_u64());
    let huge = s.json_at("/actions/runs/99999999999999999999").await;
    assert_eq!(huge["id"], "99999999999999999999");
    // Any base before /actions/runs/{id} (e.g. GitHub Enterprise's /api/v3).
    let ghes = s.json_at("/api/v3/repos/o/r/actions/runs/succeed-1").await;
    assert_eq!(ghes["id"], "succeed-1");

    let running = s.json_at("/repos/o/r/actions/runs/running-1").await;
    assert_eq!(
        (&running["status"], &running["conclusion"]),
        (&"in_progress".into(), &Value::Null)
    );
    assert!(is_utc_rfc3339(&running["run_started_at"]));
    let unknown = s.json_at("/repos/o/r/actions/runs/unknown-1").await;
    assert_eq!(
        (&unknown["status"], &unknown["conclusion"]),
        (&"paused".into(), &Value::Null)
    );

    let cases = [
        ("succeed-1", "success"),
        ("successerr-1", "failure"),
        ("end-neutral-1", "neutral"),
        ("end-cancelled-1", "cancelled"),
        ("end-timed_out-1", "timed_out"),
        ("end-action_required-1", "action_required"),
        ("end-startup_failure-1", "startup_failure"),
    ];
    let ids: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let docs = s.ended_docs(Shape::GithubActions, &ids).await;
    for ((id, conclusion), doc) in cases.iter().zip(&docs) {
        assert_eq!(doc["status"], "completed", "{id}");
        assert_eq!(doc["conclusion"], *conclusion, "{id}");
        let (created, started, updated) = (
            time_of(&doc["created_at"]),
            time_of(&doc["run_started_at"]),
            time_of(&doc["updated_at"]),
        );
        assert!(created <= started && started <= updated, "{doc}");
    }
    s.stop().await;
}

#[tokio::test]
async fn each_prefix_and_the_mix_translate_into_each_shapes_success_or_failure() {
    for shape in OTHER_SHAPES {
        let s = start(SimulateArgs {
            mix: "DONE+errors=1".parse().unwrap(),
            ..shaped(shape)
        })
        .await;
        let (success, failure) = match shape {
            Shape::GoogleLro => ("response", "error"),
            Shape::OpenaiBatch => ("completed", "failed"),
            Shape::Replicate => ("succeeded", "failed"),
            Shape::GithubActions => ("success", "failure"),
            Shape::Vector => unreachable!(),
        };
        let cases = [
            ("succeed-t", success),
            ("done-t", success),
            ("doneerr-t", failure),
            ("successerr-t", failure),
            ("failed-t", failure),
            ("failure-t", failure),
            // drawn from the mix: DONE with errors
            ("no-prefix-t", failure),
            // not a value of the shape: no prefix, so the mix decides
            ("end-bogus-t", failure),
        ];
        let ids: Vec<&str> = cases.iter().map(|c| c.0).collect();
        let docs = s.ended_docs(shape, &ids).await;
        for ((id, want), doc) in cases.iter().zip(&docs) {
            assert_eq!(end_value(shape, doc), *want, "{shape} {id}: {doc}");
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn the_end_prefix_ends_a_vector_job_with_that_state_and_no_errors() {
    let s = start(fast()).await;
    for id in ["end-DONE-v", "end-FAILURE-v", "notyet-end-SUCCESS-v"] {
        s.status("copy", id).await;
    }
    for (id, state) in [("end-DONE-v", "DONE"), ("end-FAILURE-v", "FAILURE")] {
        let doc = s.until_ended("copy", id).await;
        assert_eq!(attr(&doc, "state"), state, "{id}");
        assert_eq!(attr(&doc, "errors"), &serde_json::json!([]), "{id}");
    }
    tokio::time::sleep(Duration::from_millis(160)).await;
    let doc = s.until_ended("copy", "notyet-end-SUCCESS-v").await;
    assert_eq!(attr(&doc, "state"), "SUCCESS");
    s.stop().await;
}

#[tokio::test]
async fn every_shape_answers_404_400_and_405_in_its_own_error_form() {
    for shape in OTHER_SHAPES {
        let s = start(SimulateArgs {
            not_found_ids: vec!["gone".into()],
            bad_request_ids: vec!["bad".into()],
            ..shaped(shape)
        })
        .await;
        let mut cases = vec![
            (path_of(shape, "notfound-x"), 404),
            (path_of(shape, "gone"), 404),
            (path_of(shape, "badrequest-x"), 400),
            (path_of(shape, "bad"), 400),
            (path_of(shape, "x%FF"), 400),
            ("/nowhere".to_string(), 404),
            (path_of(Shape::Vector, "succeed-x"), 404),
        ];
        if shape != Shape::GoogleLro {
            cases.push((path_of(Shape::GoogleLro, "succeed-x"), 404));
        }
        for (path, status) in &cases {
            let r = s.get(path).await;
            assert_eq!(r.status(), *status, "{shape} {path}");
            assert_eq!(r.headers()["content-type"], "application/json");
            let doc: Value = r.json().await.unwrap();
            assert_error_form(shape, *status, &doc);
        }
        assert_eq!(s.sim.polls_of("copy", "notfound-x"), 1);
        // The job-creating routes are the vector shape's only.
        let r = s
            .client
            .post(format!("{}/products/src/search/copy", s.base))
            .body("{\"product\": {\"id\": \"dst\"}}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{shape}");
        assert_error_form(shape, 404, &r.json().await.unwrap());
        let r = s
            .client
            .delete(format!("{}{}", s.base, path_of(shape, "succeed-x")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{shape}");
        assert_eq!(r.headers()["allow"], "GET");
        assert_error_form(shape, 405, &r.json().await.unwrap());
        s.stop().await;
    }
}

#[tokio::test]
async fn a_notyet_job_is_404_in_the_shapes_form_then_runs() {
    let s = start(shaped(Shape::Replicate)).await;
    let r = s
        .get(&path_of(Shape::Replicate, "notyet-end-aborted-n"))
        .await;
    assert_eq!(r.status(), 404);
    assert_error_form(Shape::Replicate, 404, &r.json().await.unwrap());
    tokio::time::sleep(Duration::from_millis(160)).await;
    let docs = s
        .ended_docs(Shape::Replicate, &["notyet-end-aborted-n"])
        .await;
    assert_eq!(docs[0]["status"], "aborted");
    s.stop().await;
}

#[tokio::test]
async fn every_shape_answers_429_with_retry_after_in_its_own_error_form() {
    for shape in OTHER_SHAPES {
        let s = start(SimulateArgs {
            rate_limit: Some(0.5),
            rate_burst: Some(1),
            ..shaped(shape)
        })
        .await;
        let path = path_of(shape, "succeed-r");
        assert_eq!(s.get(&path).await.status(), 200, "{shape}");
        let r = s.get(&path).await;
        assert_eq!(r.status(), 429, "{shape}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let secs: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&secs), "{secs}");
        assert_error_form(shape, 429, &r.json().await.unwrap());
        assert_eq!(s.sim.polls_of("copy", "succeed-r"), 1);
        let statuses: Vec<u16> = s.sim.request_log().iter().map(|l| l.status).collect();
        assert_eq!(statuses, [200, 429], "{shape}");
        s.stop().await;
    }
}

#[tokio::test]
async fn the_token_and_the_injected_faults_apply_to_every_shape() {
    for shape in OTHER_SHAPES {
        let path = path_of(shape, "succeed-f");
        let s = start(SimulateArgs {
            token: Some("s3cret".into()),
            ..shaped(shape)
        })
        .await;
        let r = s.get(&path).await;
        assert_eq!(r.status(), 401, "{shape}");
        assert!(r.headers().contains_key("www-authenticate"));
        assert_error_form(shape, 401, &r.json().await.unwrap());
        let url = format!("{}{path}", s.base);
        let ok = s
            .client
            .get(&url)
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{shape}");
        s.stop().await;

        let s = start(SimulateArgs {
            error_ratio: 1.0,
            ..shaped(shape)
        })
        .await;
        for _ in 0..4 {
            let r = s.get(&path).await;
            let status = r.status().as_u16();
            assert!([500, 502, 503, 504].contains(&status), "{shape} {status}");
            assert!(!r.headers().contains_key("retry-after"));
            assert_error_form(shape, status, &r.json().await.unwrap());
        }
        s.stop().await;

        let s = start(SimulateArgs {
            malformed_ratio: 1.0,
            ..shaped(shape)
        })
        .await;
        for _ in 0..6 {
            let r = s.get(&path).await;
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            let parsed: Option<Value> = serde_json::from_str(&text).ok();
            assert!(parsed.is_none_or(|v| !v.is_object()), "{shape}: {text}");
        }
        s.stop().await;
    }
}
