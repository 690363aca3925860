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
    assert_eq!(cli.args.max_running, Duration::from_secs(120));
    assert_eq!(cli.args.retry_after_form, RetryAfterForm::HttpDate);
    for bad in [
        "--error-ratio=1.5",
        "--rate-limit=0",
        "--rate-burst=0",
        "--mix=SUCCESS",
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
