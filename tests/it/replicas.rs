//! Issue 18: three replicas on one PostgreSQL schema share one budget and survive
//! the loss of any one. The replicas are the real binary in child processes (a
//! SIGKILL is a real one); the simulator and the webhook receiver run here. The
//! daemons are judged by the simulator's request log and what the receiver got.
//!
//! Run with `cargo test --test it replicas:: -- --nocapture` to see the figures;
//! `REPLICA_SEED=n` replays a run.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use jobwatch::simulator::SimulateArgs;
use jobwatch::webhook::sign::SigningSecret;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::crash::{ConfigFile, Proc, PREFIXES};
use crate::helpers::Sim;
use crate::postgres::{drop_schema, schema};
use crate::receiver::TestReceiver;

/// The daemons' budget for the upstream, together.
const RATE: f64 = 200.0;
const BURST: usize = 20;
/// The simulator grants a little less, so that the replicas meet its 429s.
const SIM_RATE: f64 = 195.0;
const WATCHES: usize = 2100;
const KILLS: usize = 4;
/// After a 429, the others hear of its pause at their next heartbeat (250 ms)
/// plus a round trip to the database; requests already out may still arrive.
const PAUSE_GRACE_MS: f64 = 400.0;
/// Arrival stamps of a second's first requests may come a little late.
const WINDOW_JITTER: usize = 5;

fn config(
    dir: &std::path::Path,
    store: &str,
    sim: &str,
    secret: &SigningSecret,
) -> std::path::PathBuf {
    let mut cfg = ConfigFile::new(&dir.join("unused.db"), sim);
    cfg.set("store", "url", store)
        .set("store", "lease", "5s")
        .raw("upstream", &format!("max_requests_per_second = {RATE:.1}"))
        .raw("upstream", &format!("burst = {BURST}"))
        .raw("upstream", "max_in_flight = 48")
        .set("upstream", "request_timeout", "2s")
        .set("poller", "initial_interval", "700ms")
        .set("poller", "max_interval", "2s")
        .set("webhooks", "signing_secret", &secret.to_whsec())
        .raw("webhooks", "allow_private_targets = true")
        .set("webhooks", "request_timeout", "2s")
        .raw(
            "webhooks",
            r#"retry_schedule = ["100ms", "200ms", "500ms", "1s", "1s", "1s", "1s", "1s"]"#,
        );
    cfg.write(&dir.join("jobwatch.toml"))
}

fn expected(id: &str) -> &'static str {
    PREFIXES
        .iter()
        .find(|(p, _, _)| id.starts_with(p))
        .map(|(_, outcome, _)| *outcome)
        .unwrap_or_else(|| panic!("{id} has no known prefix"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_budget_and_lose_nothing_to_kill_9() {
    let seed: u64 = std::env::var("REPLICA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!(
        "replica test seed {seed}: replay with REPLICA_SEED={seed} cargo test --test it replicas::"
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let (store, schema_name) = schema().await;
    let sim = Sim::start(SimulateArgs {
        seed,
        min_running: Duration::from_millis(500),
        max_running: Duration::from_millis(2500),
        rate_limit: Some(SIM_RATE),
        rate_burst: Some(20),
        ..Sim::fast()
    })
    .await;
    let secret = SigningSecret::generate();
    let hooks = TestReceiver::start(Some(secret.clone())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &store, &sim.url, &secret);
    let started = Instant::now();

    let mut replicas = vec![
        Proc::start(&config).await,
        Proc::start(&config).await,
        Proc::start(&config).await,
    ];

    // The watches, through the two replicas that are never killed, as behind a
    // load balancer; every one is acknowledged before the kills end.
    let ids: Vec<String> = (0..WATCHES)
        .map(|i| format!("{}{i:05}", PREFIXES[rng.random_range(0..PREFIXES.len())].0))
        .collect();
    for (n, chunk) in ids.chunks(300).enumerate() {
        let r = &replicas[n % 2];
        let (status, body) = r
            .post_jobs(&json!({"kind": "copy", "ids": chunk, "webhook_url": hooks.url}))
            .await
            .expect("POST /v1/jobs");
        assert_eq!(status, 202, "{body}");
    }

    // Replica 2 is killed with SIGKILL at random moments and started again.
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..4000))).await;
        replicas[2].kill();
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        replicas[2] = Proc::start(&config).await;
    }
    // Every replica shows the three, each with a third once settled.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shares = loop {
        let (_, s) = replicas[0].get("/v1/status").await;
        let list = s["replicas"].as_array().cloned().unwrap_or_default();
        let shares: Vec<f64> = list.iter().filter_map(|r| r["share"].as_f64()).collect();
        if shares.len() == 3 && shares.iter().all(|x| (x - 1.0 / 3.0).abs() < 1e-6) {
            break s;
        }
        assert!(Instant::now() < deadline, "three settled replicas: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status = replicas[0].wait_settled(Duration::from_secs(120)).await;
    let took = started.elapsed();

    // 1. Every acknowledged watch has its right outcome.
    let watches = replicas[0].all_watches().await;
    assert_eq!(watches.len(), WATCHES, "{status}");
    for w in &watches {
        let id = w["id"].as_str().unwrap_or_default();
        assert_eq!(w["outcome"], expected(id), "{w}");
    }

    // 2. Every event reached the receiver, under one webhook-id.
    let received = hooks.wait_for(WATCHES, Duration::from_secs(30)).await;
    let mut ids_by_event: HashMap<String, HashSet<String>> = HashMap::new();
    let mut bad_signatures = 0;
    for r in received.iter().filter(|r| r.ok) {
        bad_signatures += usize::from(!r.verified);
        let key = format!(
            "{}/{}",
            r.body["data"]["id"].as_str().unwrap_or_default(),
            r.body["data"]["generation"]
        );
        ids_by_event
            .entry(key)
            .or_default()
            .insert(r.webhook_id.clone());
    }
    assert_eq!(bad_signatures, 0);
    assert_eq!(ids_by_event.len(), WATCHES, "an event for every watch");
    let split: Vec<_> = ids_by_event.iter().filter(|(_, w)| w.len() != 1).collect();
    assert!(
        split.is_empty(),
        "events under several webhook-ids: {split:?}"
    );
    let delivered = received.iter().filter(|r| r.ok).count();

    // 3. Together the replicas never went past the budget in any second.
    let log = sim.sim.request_log();
    let times: Vec<f64> = {
        let mut t: Vec<f64> = log.iter().map(|r| r.t_ms).collect();
        t.sort_by(f64::total_cmp);
        t
    };
    let mut busiest = 0;
    let mut end = 0;
    for (start, t0) in times.iter().enumerate() {
        while end < times.len() && times[end] < t0 + 1000.0 {
            end += 1;
        }
        busiest = busiest.max(end - start);
    }
    let allowed = RATE as usize + BURST + WINDOW_JITTER;
    assert!(
        busiest <= allowed,
        "{busiest} requests in one second; the budget allows {RATE} + {BURST}"
    );

    // 4. After a 429 with Retry-After no replica's request arrived inside the pause.
    let pauses: Vec<(f64, f64)> = log
        .iter()
        .filter(|r| r.status == 429)
        .filter_map(|r| r.retry_after_ms.map(|ra| (r.t_ms, ra)))
        .collect();
    let mut inside = Vec::new();
    for &(t, ra) in &pauses {
        inside.extend(
            times
                .iter()
                .filter(|x| **x > t + PAUSE_GRACE_MS && **x < t + ra - 50.0)
                .map(|x| x - t),
        );
    }
    assert!(!pauses.is_empty(), "the simulator answered some 429s");
    assert!(
        inside.is_empty(),
        "requests inside a Retry-After pause, ms after its 429: {:?}",
        &inside[..inside.len().min(20)]
    );

    // 5. No job was asked about by two replicas at once.
    let mut by_path: HashMap<&str, Vec<f64>> = HashMap::new();
    for r in &log {
        by_path.entry(r.path.as_str()).or_default().push(r.t_ms);
    }
    let mut closest = f64::MAX;
    for t in by_path.values_mut() {
        t.sort_by(f64::total_cmp);
        for w in t.windows(2) {
            closest = closest.min(w[1] - w[0]);
        }
    }
    assert!(closest >= 40.0, "two polls of one job {closest} ms apart");

    println!(
        "{WATCHES} watches, {KILLS} kills, settled in {:.1} s: {} requests, busiest second {busiest} \
         (budget {RATE} + burst {BURST}), {} 429s, requests inside a pause {}, closest polls of \
         one job {closest:.0} ms apart, {delivered} deliveries for {} events ({} duplicates after \
         kills), shares {}",
        took.as_secs_f64(),
        log.len(),
        pauses.len(),
        inside.len(),
        ids_by_event.len(),
        delivered - ids_by_event.len(),
        shares["replicas"]
    );
    let first = times.first().copied().unwrap_or_default();
    let mut per_5s =
        vec![0usize; ((times.last().copied().unwrap_or(first) - first) / 5000.0) as usize + 1];
    for t in &times {
        per_5s[((t - first) / 5000.0) as usize] += 1;
    }
    println!("requests per 5 s: {per_5s:?}");
    drop(replicas);
    drop_schema(&schema_name).await;
}

/// The shared gates, seen from the outside: a 401 one replica gets closes every
/// replica's gate (readiness names it), and a probe that passes opens them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_token_heard_by_one_replica_pauses_them_all() {
    let (store, schema_name) = schema().await;
    let sim = Sim::start(SimulateArgs {
        token: Some("right".into()),
        ..Sim::fast()
    })
    .await;
    let secret = SigningSecret::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ConfigFile::new(&dir.path().join("unused.db"), &sim.url);
    cfg.set("store", "url", &store)
        .set("upstream", "token", "wrong")
        .set("upstream", "auth_probe_interval", "300ms")
        .set("webhooks", "signing_secret", &secret.to_whsec());
    let config = cfg.write(&dir.path().join("jobwatch.toml"));
    let a = Proc::start(&config).await;
    let b = Proc::start(&config).await;
    // Only A has a watch: B hears of the refusal through the database alone.
    let (status, body) = a
        .post_jobs(&json!({"kind": "copy", "ids": ["succeed-1"]}))
        .await
        .expect("POST");
    assert_eq!(status, 202, "{body}");
    let ready = |p: &Proc| {
        let url = format!("{}/readyz", p.url);
        let client = p.client.clone();
        async move {
            let r = client.get(url).send().await.expect("GET /readyz");
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or_default(),
            )
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = ready(&b).await;
        if code == 503 && body.to_string().contains("rejects our credentials") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never heard of the 401: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.sim.set_token(Some("wrong".into()));
    let w = loop {
        let (_, w) = a.get("/v1/jobs/copy/succeed-1").await;
        if !w["outcome"].is_null() {
            break w;
        }
        assert!(Instant::now() < deadline + Duration::from_secs(10), "{w}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(w["outcome"], "succeeded");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = ready(&b).await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "B still not ready: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((a, b));
    drop_schema(&schema_name).await;
}
