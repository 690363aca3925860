//! Issue 3: outcomes reach receivers as signed webhooks, at least once: retries under
//! one `webhook-id`, a receiver that comes back, `Retry-After`, 410, redirects, the
//! SSRF guard, dead deliveries and redelivery, configured endpoints and the body.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jobwatch::webhook::sign::SigningSecret;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::{Plan, TestReceiver};

/// A configured endpoint of the test's TOML file.
pub struct Endpoint<'a> {
    pub url: &'a str,
    pub secret: &'a SigningSecret,
    pub events: Option<&'a [&'a str]>,
}

/// The daemon's webhook settings: a `--config` file with `schedule` (no jitter, so
/// gaps can be measured) and `endpoints`, the per-watch secret, private targets allowed
/// or not.
pub struct Hooks {
    _dir: tempfile::TempDir,
    db: PathBuf,
    config: PathBuf,
    whsec: String,
    allow_private: bool,
}

impl Hooks {
    pub fn new(
        secret: &SigningSecret,
        schedule: &[&str],
        endpoints: &[Endpoint<'_>],
        allow_private: bool,
    ) -> Hooks {
        let (dir, db) = temp_db();
        let mut toml = String::from("[webhooks]\njitter = 0.0\nrequest_timeout = \"2s\"\n");
        let quoted: Vec<String> = schedule.iter().map(|s| format!("{s:?}")).collect();
        toml.push_str(&format!("retry_schedule = [{}]\n", quoted.join(", ")));
        for e in endpoints {
            toml.push_str(&format!(
                "\n[[webhooks.endpoints]]\nurl = {:?}\nsecret = {:?}\n",
                e.url,
                e.secret.to_whsec()
            ));
            if let Some(events) = e.events {
                let quoted: Vec<String> = events.iter().map(|s| format!("{s:?}")).collect();
                toml.push_str(&format!("events = [{}]\n", quoted.join(", ")));
            }
        }
        let config = dir.path().join("jobwatch.toml");
        std::fs::write(&config, toml).expect("write the test config");
        Hooks {
            _dir: dir,
            db,
            config,
            whsec: secret.to_whsec(),
            allow_private,
        }
    }

    pub async fn start(&self, sim: &Sim) -> App {
        self.start_with(sim, &[]).await
    }

    /// As `start`, with more overrides.
    pub async fn start_with(&self, sim: &Sim, extra: &[(&str, &str)]) -> App {
        let allow = if self.allow_private { "true" } else { "false" };
        let mut overrides = vec![
            ("webhooks.signing_secret", self.whsec.as_str()),
            ("webhooks.allow_private_targets", allow),
        ];
        overrides.extend_from_slice(extra);
        App::start(settings_with_file(
            &self.db,
            &sim.url,
            Some(&self.config),
            &overrides,
        ))
        .await
    }
}

/// The deliveries `GET /v1/jobs/{kind}/{id}` lists, once `ready` holds for them.
async fn deliveries_when(
    app: &App,
    kind: &str,
    id: &str,
    what: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    eventually(15, what, || async {
        let (status, w) = app.get(&format!("/v1/jobs/{kind}/{id}")).await;
        let ds = w["deliveries"].as_array().cloned().unwrap_or_default();
        if status == 200 && ready(&ds) {
            Ok(ds)
        } else {
            Err(w.to_string())
        }
    })
    .await
}

/// `GET /v1/deliveries/{id}`, with its attempts.
async fn delivery(app: &App, id: &Value) -> Value {
    let (status, d) = app.get(&format!("/v1/deliveries/{id}")).await;
    assert_eq!(status, 200, "{d}");
    d
}

fn status_is(ds: &[Value], n: usize, status: &str) -> bool {
    ds.len() == n && ds.iter().all(|d| d["status"] == status)
}

async fn post(app: &App, kind: &str, ids: &[&str], webhook_url: Option<&str>) {
    let mut body = json!({"kind": kind, "ids": ids});
    if let Some(url) = webhook_url {
        body["webhook_url"] = json!(url);
    }
    let (status, answer) = app.post_jobs(body).await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test]
async fn a_receiver_that_fails_then_succeeds_gets_the_event_under_one_webhook_id() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    let rx = TestReceiver::start(Some(secret.clone())).await;
    rx.respond_with(Plan::FailTimes(3, 500));
    let hooks = Hooks::new(
        &secret,
        &["100ms", "100ms", "100ms", "100ms", "100ms"],
        &[],
        true,
    );
    let app = hooks.start(&sim).await;
    post(&app, "copy", &["succeed-f"], Some(&rx.url)).await;

    let ok = rx.wait_for(1, Duration::from_secs(10)).await;
    let all = rx.received();
    assert_eq!(all.len(), 4, "three failures, then the delivery: {all:?}");
    assert!(all.iter().all(|r| r.verified), "{all:?}");
    assert!(all.iter().all(|r| r.webhook_id == ok[0].webhook_id));
    assert!(
        all.iter().all(|r| r.raw == ok[0].raw),
        "same body every time"
    );
    assert_eq!(
        all.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    for pair in all.windows(2) {
        let gap = pair[1].at - pair[0].at;
        // On the schedule: not before it, and not much after it either.
        assert!(
            gap >= Duration::from_millis(100) && gap < Duration::from_millis(600),
            "retried after {gap:?} on a 100 ms schedule"
        );
    }

    let ds = deliveries_when(&app, "copy", "succeed-f", "delivered", |ds| {
        status_is(ds, 1, "delivered")
    })
    .await;
    let d = &ds[0];
    assert_eq!(d["webhook_id"], ok[0].webhook_id.as_str());
    assert_eq!(d["target"], "watch");
    assert_eq!(d["url"], rx.url.as_str());
    assert_eq!(d["attempts"], 4);
    assert!(!d["delivered_at"].is_null(), "{d}");
    let d = delivery(&app, &d["id"]).await;
    let attempts = d["attempt_log"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 4, "every attempt is recorded: {d}");
    for a in &attempts[..3] {
        assert_eq!(a["status_code"], 500, "{a}");
        assert_eq!(a["error"], "HTTP 500", "{a}");
        assert_eq!(a["response"], "test receiver answered 500", "{a}");
        assert!(a["duration_ms"].as_i64().is_some(), "{a}");
        assert!(a["at"].is_string(), "{a}");
    }
    assert_eq!(attempts[3]["status_code"], 200);
    assert!(attempts[3]["error"].is_null(), "{d}");
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_everything_after_it_comes_back() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    let rx = TestReceiver::start(Some(secret.clone())).await;
    rx.stop().await;
    let schedule = ["200ms", "300ms", "500ms", "500ms", "1s", "1s", "1s", "1s"];
    let hooks = Hooks::new(&secret, &schedule, &[], true);
    let app = hooks.start(&sim).await;
    let ids = [
        "succeed-d1",
        "succeed-d2",
        "failed-d3",
        "done-d4",
        "notfound-d5",
    ];
    post(&app, "copy", &ids, Some(&rx.url)).await;

    // Everything ends and fails to arrive at least once while the receiver is down.
    eventually(15, "5 deliveries retrying", || async {
        let (_, page) = app.get("/v1/deliveries?status=retrying").await;
        match page["deliveries"].as_array() {
            Some(ds) if ds.len() == 5 => Ok(()),
            _ => Err(page.to_string()),
        }
    })
    .await;
    let (_, page) = app.get("/v1/deliveries?status=retrying").await;
    let first = &page["deliveries"][0];
    let d = delivery(&app, &first["id"]).await;
    let err = d["attempt_log"][0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("connection"), "{d}");
    assert!(d["attempt_log"][0]["status_code"].is_null(), "{d}");

    rx.restart().await;
    let got = rx.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5, "{got:?}");
    let ids_got: HashSet<&str> = got
        .iter()
        .map(|r| r.body["data"]["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids_got, ids.into_iter().collect());
    let webhook_ids: HashSet<&str> = got.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(webhook_ids.len(), 5);
    assert!(got.iter().all(|r| r.verified));
    eventually(5, "5 delivered in status", || async {
        let (_, s) = app.get("/v1/status").await;
        if s["webhooks"]["deliveries"]["delivered"] == 5 && s["webhooks"]["backlog"] == 0 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_pending_delivery_survives_a_restart_under_the_same_webhook_id() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    let rx = TestReceiver::start(Some(secret.clone())).await;
    rx.respond_with(Plan::Status(503));
    let hooks = Hooks::new(&secret, &["300ms"; 8], &[], true);
    let app = hooks.start(&sim).await;
    post(&app, "copy", &["succeed-s"], Some(&rx.url)).await;
    eventually(10, "a failed attempt", || async {
        match rx.received().len() {
            0 => Err("none".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    app.stop().await;
    let failed_id = rx.received()[0].webhook_id.clone();

    rx.respond_with(Plan::Ok);
    let app = hooks.start(&sim).await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].webhook_id, failed_id);
    assert!(rx.received().iter().all(|r| r.webhook_id == failed_id));
    app.stop().await;
}

#[tokio::test]
async fn retry_after_on_429_and_503_is_honoured_within_bounds() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    // (status, Retry-After, the least gap, the most gap)
    let cases = [
        (429, "1", 1000, 2500),
        (503, "1", 1000, 2500),
        // Past webhooks.max_retry_after (1500ms): cut to it.
        (503, "3600", 1500, 3000),
    ];
    let mut receivers = Vec::new();
    for (status, value, _, _) in cases {
        let rx = TestReceiver::start(Some(secret.clone())).await;
        rx.respond_with(Plan::RetryAfter {
            status,
            value: value.into(),
        });
        receivers.push(rx);
    }
    let hooks = Hooks::new(&secret, &["100ms", "100ms", "100ms"], &[], true);
    let app = hooks
        .start_with(&sim, &[("webhooks.max_retry_after", "1500ms")])
        .await;
    for (i, rx) in receivers.iter().enumerate() {
        post(&app, "copy", &[&format!("succeed-ra{i}")], Some(&rx.url)).await;
    }
    // After the first answer the receivers are fine; the retry must still wait.
    eventually(10, "every receiver asked once", || async {
        for rx in &receivers {
            if rx.received().len() == 1 {
                rx.respond_with(Plan::Ok);
            }
        }
        if receivers.iter().all(|rx| !rx.received().is_empty()) {
            Ok(())
        } else {
            Err("waiting".to_string())
        }
    })
    .await;
    for (rx, (status, value, least, most)) in receivers.iter().zip(cases) {
        rx.wait_for(1, Duration::from_secs(10)).await;
        let all = rx.received();
        assert_eq!(all.len(), 2, "{status} {value}: {all:?}");
        assert_eq!(all[0].status, status);
        let gap = (all[1].at - all[0].at).as_millis();
        eprintln!("{status} Retry-After {value}: retried after {gap} ms");
        assert!(
            (least..most).contains(&gap),
            "{status} Retry-After {value}: retried after {gap} ms"
        );
        // Each attempt is signed anew with its own timestamp (a second or more apart here).
        assert_eq!(all[0].webhook_id, all[1].webhook_id);
        assert_eq!(all[0].raw, all[1].raw);
        assert!(all[1].timestamp > all[0].timestamp, "{all:?}");
        assert_ne!(all[0].signature, all[1].signature);
        assert!(all.iter().all(|r| r.verified));
    }
    app.stop().await;
}

#[tokio::test]
async fn a_410_stops_delivery() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    let rx = TestReceiver::start(Some(secret.clone())).await;
    rx.respond_with(Plan::Gone);
    let hooks = Hooks::new(&secret, &["100ms", "100ms", "100ms"], &[], true);
    let app = hooks.start(&sim).await;
    post(&app, "copy", &["succeed-410"], Some(&rx.url)).await;
    let ds = deliveries_when(&app, "copy", "succeed-410", "gone", |ds| {
        status_is(ds, 1, "gone")
    })
    .await;
    assert_eq!(ds[0]["attempts"], 1, "{ds:?}");
    assert_eq!(ds[0]["last_status"], 410, "{ds:?}");
    assert!(ds[0]["next_attempt_at"].is_null(), "{ds:?}");
    // Three schedule steps later, still nothing more was sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 1, "{:?}", rx.received());
    let (_, s) = app.get("/v1/status").await;
    assert_eq!(s["webhooks"]["deliveries"]["gone"], 1, "{s}");
    assert_eq!(s["webhooks"]["backlog"], 0, "{s}");
    app.stop().await;
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    let target = TestReceiver::start(Some(secret.clone())).await;
    let rx = TestReceiver::start(Some(secret.clone())).await;
    rx.respond_with(Plan::RedirectTo(target.url.clone()));
    let hooks = Hooks::new(&secret, &["100ms", "100ms"], &[], true);
    let app = hooks.start(&sim).await;
    post(&app, "copy", &["succeed-307"], Some(&rx.url)).await;
    let ds = deliveries_when(&app, "copy", "succeed-307", "dead after 3 attempts", |ds| {
        status_is(ds, 1, "dead")
    })
    .await;
    let d = delivery(&app, &ds[0]["id"]).await;
    let attempts = d["attempt_log"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 3, "{d}");
    for a in attempts {
        assert_eq!(a["status_code"], 307, "{a}");
        let err = a["error"].as_str().unwrap_or_default();
        assert!(err.contains("redirect"), "{a}");
    }
    assert_eq!(rx.received().len(), 3);
    assert!(
        target.received().is_empty(),
        "the redirect was followed: {:?}",
        target.received()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_private_per_watch_url_is_refused_unless_allowed() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    let rx = TestReceiver::start(Some(secret.clone())).await;
    let by_name = format!("http://localhost:{}/hook", rx.port);
    let by_ip = rx.url.clone();
    let hooks = Hooks::new(&secret, &["100ms"], &[], false);
    let app = hooks.start(&sim).await;
    post(&app, "copy", &["succeed-name"], Some(&by_name)).await;
    post(&app, "copy", &["succeed-ip"], Some(&by_ip)).await;
    for (id, why) in [
        ("succeed-name", "resolves only to non-public addresses"),
        ("succeed-ip", "non-public address"),
    ] {
        let ds = deliveries_when(&app, "copy", id, "dead after 2 refusals", |ds| {
            status_is(ds, 1, "dead")
        })
        .await;
        let d = delivery(&app, &ds[0]["id"]).await;
        let attempts = d["attempt_log"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 2, "{d}");
        for a in attempts {
            assert!(a["status_code"].is_null(), "{a}");
            let err = a["error"].as_str().unwrap_or_default();
            assert!(err.contains(why), "{id}: {a}");
        }
    }
    assert!(rx.received().is_empty(), "{:?}", rx.received());
    app.stop().await;

    // The same URLs, allowed.
    let allowed = Hooks::new(&secret, &["100ms"], &[], true);
    let app = allowed.start(&sim).await;
    post(&app, "copy", &["succeed-name"], Some(&by_name)).await;
    post(&app, "copy", &["succeed-ip"], Some(&by_ip)).await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert!(got.iter().all(|r| r.verified));
    app.stop().await;
}

#[tokio::test]
async fn an_exhausted_schedule_ends_dead_and_redelivery_works() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    let rx = TestReceiver::start(Some(secret.clone())).await;
    rx.respond_with(Plan::Status(500));
    let hooks = Hooks::new(&secret, &["100ms", "100ms"], &[], true);
    let app = hooks.start(&sim).await;
    post(&app, "copy", &["failed-dead"], Some(&rx.url)).await;
    let s = eventually(10, "one dead delivery in status", || async {
        let (_, s) = app.get("/v1/status").await;
        if s["webhooks"]["deliveries"]["dead"] == 1 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await;
    assert_eq!(s["webhooks"]["backlog"], 0, "{s}");
    let (status, page) = app.get("/v1/deliveries?status=dead").await;
    assert_eq!(status, 200, "{page}");
    let dead = page["deliveries"].as_array().expect("deliveries").clone();
    assert_eq!(dead.len(), 1, "{page}");
    assert_eq!(dead[0]["attempts"], 3, "the first attempt and two retries");
    assert_eq!(dead[0]["last_status"], 500);
    let (_, page) = app.get("/v1/deliveries?status=delivered").await;
    assert_eq!(page["deliveries"], json!([]), "{page}");
    let (status, _) = app.get("/v1/deliveries?status=lost").await;
    assert_eq!(status, 400);
    assert_eq!(rx.received().len(), 3);

    // Not retryable while not dead; unknown ids are 404.
    let id = dead[0]["id"].clone();
    let (status, _) = retry(&app, "999999").await;
    assert_eq!(status, 404);

    rx.respond_with(Plan::Ok);
    let (status, d) = retry(&app, &id.to_string()).await;
    assert_eq!(status, 202, "{d}");
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].webhook_id, dead[0]["webhook_id"].as_str().unwrap());
    assert!(got[0].verified);
    let ds = deliveries_when(&app, "copy", "failed-dead", "redelivered", |ds| {
        status_is(ds, 1, "delivered")
    })
    .await;
    assert_eq!(ds[0]["attempts"], 4);
    let (status, body) = retry(&app, &id.to_string()).await;
    assert_eq!(status, 409, "a delivered one is not sent again: {body}");
    let (_, s) = app.get("/v1/status").await;
    assert_eq!(s["webhooks"]["deliveries"]["dead"], 0, "{s}");
    assert_eq!(s["webhooks"]["deliveries"]["delivered"], 1, "{s}");
    app.stop().await;
}

async fn retry(app: &App, id: &str) -> (u16, Value) {
    let request = app
        .client
        .post(format!("{}/v1/deliveries/{id}/retry", app.url));
    answer(request, "POST retry").await
}

#[tokio::test]
async fn each_event_reaches_the_watch_url_and_matching_endpoints_under_distinct_ids() {
    let sim = Sim::start(Sim::fast()).await;
    let watch_secret = SigningSecret::generate();
    let failures_secret = SigningSecret::generate();
    let all_secret = SigningSecret::generate();
    let rx_watch = TestReceiver::start(Some(watch_secret.clone())).await;
    let rx_failures = TestReceiver::start(Some(failures_secret.clone())).await;
    let rx_all = TestReceiver::start(Some(all_secret.clone())).await;
    let failures_url = format!("{}/failures", rx_failures.url);
    let all_url = format!("{}/all", rx_all.url);
    let hooks = Hooks::new(
        &watch_secret,
        &["100ms", "100ms"],
        &[
            Endpoint {
                url: &failures_url,
                secret: &failures_secret,
                events: Some(&["job.failed", "job.timed_out"]),
            },
            Endpoint {
                url: &all_url,
                secret: &all_secret,
                events: None,
            },
        ],
        true,
    );
    let app = hooks.start(&sim).await;
    let metadata = json!({"team": "geo", "note": "café ✓"});
    let (status, body) = app
        .post_jobs(json!({"kind": "delete", "ids": ["succeed-e", "failed-e"],
            "webhook_url": rx_watch.url, "metadata": metadata}))
        .await;
    assert_eq!(status, 202, "{body}");
    // Without a webhook_url: only the endpoints hear of it.
    post(&app, "copy", &["succeed-e"], None).await;

    let watch = rx_watch.wait_for(2, Duration::from_secs(10)).await;
    let failures = rx_failures.wait_for(1, Duration::from_secs(10)).await;
    let all = rx_all.wait_for(3, Duration::from_secs(10)).await;
    let types = |got: &[crate::receiver::Received]| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = got
            .iter()
            .map(|r| {
                (
                    r.body["type"].as_str().unwrap_or_default().to_string(),
                    r.body["data"]["kind"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    r.body["data"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let t = |ty: &str, kind: &str, id: &str| (ty.to_string(), kind.to_string(), id.to_string());
    assert_eq!(
        types(&watch),
        [
            t("job.failed", "delete", "failed-e"),
            t("job.succeeded", "delete", "succeed-e")
        ]
    );
    assert_eq!(types(&failures), [t("job.failed", "delete", "failed-e")]);
    assert_eq!(
        types(&all),
        [
            t("job.failed", "delete", "failed-e"),
            t("job.succeeded", "copy", "succeed-e"),
            t("job.succeeded", "delete", "succeed-e"),
        ]
    );
    for (name, got) in [("watch", &watch), ("failures", &failures), ("all", &all)] {
        for r in got.iter() {
            assert!(r.verified, "{name}: {r:?}");
            assert_eq!(r.headers["content-type"], "application/json", "{name}");
        }
    }
    let ids: HashSet<&str> = watch
        .iter()
        .chain(&failures)
        .chain(&all)
        .map(|r| r.webhook_id.as_str())
        .collect();
    assert_eq!(ids.len(), 6, "one webhook-id per event and endpoint");
    assert_eq!(rx_failures.received()[0].path, "/hook/failures");

    // The body: type, the outcome's time, and the watch as GET shows it.
    for r in watch.iter().chain(&all) {
        let body = r.body.as_object().expect("object body");
        let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["data", "timestamp", "type"]);
        let data = &r.body["data"];
        assert_eq!(r.body["timestamp"], data["ended_at"]);
        let (_, mut shown) = app
            .get(&format!(
                "/v1/jobs/{}/{}",
                data["kind"].as_str().unwrap(),
                data["id"].as_str().unwrap()
            ))
            .await;
        shown.as_object_mut().expect("watch").remove("deliveries");
        assert_eq!(data, &shown, "event data is the watch as GET shows it");
    }
    assert_eq!(watch[0].body["data"]["metadata"], metadata);

    // GET lists the watch's deliveries, one per endpoint.
    let ds = deliveries_when(&app, "delete", "failed-e", "3 delivered", |ds| {
        status_is(ds, 3, "delivered")
    })
    .await;
    let mut seen: Vec<(String, String)> = ds
        .iter()
        .map(|d| {
            (
                d["target"].as_str().unwrap().into(),
                d["url"].as_str().unwrap().into(),
            )
        })
        .collect();
    seen.sort();
    let mut want = vec![
        ("endpoint".to_string(), all_url.clone()),
        ("endpoint".to_string(), failures_url.clone()),
        ("watch".to_string(), rx_watch.url.clone()),
    ];
    want.sort();
    assert_eq!(seen, want);
    let ds = deliveries_when(&app, "copy", "succeed-e", "1 delivered", |ds| {
        status_is(ds, 1, "delivered")
    })
    .await;
    assert_eq!(ds[0]["target"], "endpoint");
    app.stop().await;
}

#[tokio::test]
async fn a_timed_out_watch_is_an_event_and_a_cancelled_one_is_not() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    let rx = TestReceiver::start(Some(secret.clone())).await;
    let hooks = Hooks::new(&secret, &["100ms"], &[], true);
    let app = hooks.start(&sim).await;
    let (status, body) = app
        .post_jobs(
            json!({"kind": "copy", "ids": ["running-to"], "webhook_url": rx.url,
            "timeout_seconds": 0.5}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    post(&app, "copy", &["running-cx"], Some(&rx.url)).await;
    let (status, _) = app.delete("/v1/jobs/copy/running-cx").await;
    assert_eq!(status, 200);
    let w = app.wait_outcome("copy", "running-to", 10).await;
    assert_eq!(w["outcome"], "timed_out");
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].body["type"], "job.timed_out");
    assert_eq!(got[0].body["data"]["id"], "running-to");
    let (_, w) = app.get("/v1/jobs/copy/running-cx").await;
    assert_eq!(w["deliveries"], json!([]), "{w}");
    app.stop().await;
    assert_eq!(rx.received().len(), 1, "{:?}", rx.received());
}

#[tokio::test]
async fn a_slow_receiver_does_not_delay_the_others() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    let slow = TestReceiver::start(Some(secret.clone())).await;
    slow.respond_with(Plan::Slow(Duration::from_secs(2)));
    let fast = TestReceiver::start(Some(secret.clone())).await;
    let hooks = Hooks::new(&secret, &["100ms"], &[], true);
    // Stopping abandons the slow answers still in flight: no need to wait for them.
    let app = hooks
        .start_with(&sim, &[("api.shutdown_grace", "500ms")])
        .await;
    let slow_ids: Vec<String> = (0..40).map(|i| format!("succeed-slow{i}")).collect();
    let slow_refs: Vec<&str> = slow_ids.iter().map(String::as_str).collect();
    post(&app, "copy", &slow_refs, Some(&slow.url)).await;
    // The slow receiver's deliveries are queued first and take every slot they may.
    eventually(10, "the slow receiver is busy", || async {
        match slow.received().len() {
            n if n >= 8 => Ok(()),
            n => Err(n.to_string()),
        }
    })
    .await;
    let fast_ids: Vec<String> = (0..5).map(|i| format!("succeed-fast{i}")).collect();
    let fast_refs: Vec<&str> = fast_ids.iter().map(String::as_str).collect();
    let posted = Instant::now();
    post(&app, "copy", &fast_refs, Some(&fast.url)).await;
    fast.wait_for(5, Duration::from_secs(10)).await;
    let took = posted.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "the fast receiver waited {took:?} behind the slow one"
    );
    assert!(
        slow.received().iter().filter(|r| r.ok).count() < 40,
        "the slow receiver was not still busy"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_attempt_that_takes_too_long_times_out_and_is_retried() {
    let sim = Sim::start(Sim::fast()).await;
    let secret = SigningSecret::generate();
    let rx = TestReceiver::start(Some(secret.clone())).await;
    rx.respond_with(Plan::Slow(Duration::from_secs(3)));
    let hooks = Hooks::new(&secret, &["100ms", "100ms"], &[], true);
    let app = hooks
        .start_with(&sim, &[("webhooks.request_timeout", "300ms")])
        .await;
    post(&app, "copy", &["succeed-slow"], Some(&rx.url)).await;
    eventually(10, "the first attempt arrives", || async {
        match rx.received().len() {
            0 => Err("none".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    rx.respond_with(Plan::Ok);
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let ds = deliveries_when(&app, "copy", "succeed-slow", "delivered", |ds| {
        status_is(ds, 1, "delivered")
    })
    .await;
    assert_eq!(got[0].webhook_id, ds[0]["webhook_id"].as_str().unwrap());
    let d = delivery(&app, &ds[0]["id"]).await;
    let first = &d["attempt_log"][0];
    assert!(first["status_code"].is_null(), "{d}");
    let err = first["error"].as_str().unwrap_or_default();
    assert!(err.contains("timed out"), "{d}");
    let took = first["duration_ms"].as_i64().unwrap_or(-1);
    assert!(
        (300..1500).contains(&took),
        "the attempt took {took} ms: {d}"
    );
    assert_eq!(d["attempt_log"].as_array().map(Vec::len), Some(2), "{d}");
    assert!(
        !rx.received()[0].ok,
        "the abandoned answer is not a delivery"
    );
    app.stop().await;
}
