//! `--cadence-study --live`: the study's three cadences on the real daemon (this
//! binary's `serve`, a process each) against the real simulator, with time scaled
//! down by `--live-scale` so that a run with two-minute medians takes a minute or
//! two: running times, the cadence's intervals and the price are divided by the
//! scale, the budget multiplied by it, and the figures scaled back. It confirms the
//! order the simulated study gives; its own figures carry what the simulation
//! leaves out (the poller's 20 ms step, timers, requests), which weighs more the
//! more time is scaled down.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::cadence::Figures;
use super::daemon::DaemonProcess;
use crate::config::Settings;
use crate::simulator::{Distribution, DurationsArg, LoggedRequest, SimulateArgs};

/// What the live runs are asked.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub distribution: Distribution,
    /// Time runs this many times faster than in the study.
    pub scale: f64,
    pub jobs: u32,
    /// Ends the learned daemon sees first (under backoff) before the measured jobs.
    pub warmup: u32,
    /// The study's arrival window (scaled down here).
    pub arrivals: Duration,
    pub budget_share: f64,
    pub seed: u64,
    /// A run gives up after this long (real time).
    pub max_time: Duration,
}

/// The figures of the live runs (scaled back to the study's time), and the
/// budget of the binding ones (requests per second, scaled back).
pub struct Live {
    pub budget_per_second: f64,
    pub runs: Vec<Figures>,
}

/// `d` divided by `scale`, written as the daemon's settings read it.
fn setting(d: Duration, scale: f64) -> String {
    format!(
        "{}us",
        (d.as_secs_f64() / scale * 1e6).round().max(1.0) as u64
    )
}

/// The three cadences as daemon settings, time scaled down.
fn policies(settings: &Settings, scale: f64) -> Vec<(&'static str, Vec<(String, String)>)> {
    let p = &settings.poller;
    let kv = |k: &str, v: String| (k.to_string(), v);
    let fixed = setting(Duration::from_secs(5), scale);
    let cadence = |policy: &str, initial: String, max: String, more: Vec<(String, String)>| {
        let mut kvs = vec![
            kv("poller.cadence", policy.into()),
            kv("poller.initial_interval", initial),
            kv("poller.max_interval", max),
        ];
        kvs.extend(more);
        kvs
    };
    let initial = setting(p.initial_interval, scale);
    let max = setting(p.max_interval, scale);
    vec![
        (
            "fixed 5s",
            cadence(
                "backoff",
                fixed.clone(),
                fixed,
                vec![
                    kv("poller.growth", "1.0".into()),
                    kv("poller.jitter", "0.0".into()),
                ],
            ),
        ),
        (
            "backoff",
            cadence("backoff", initial.clone(), max.clone(), vec![]),
        ),
        (
            "learned",
            cadence(
                "learned",
                initial,
                max,
                vec![kv("poller.poll_price", setting(p.poll_price, scale))],
            ),
        ),
    ]
}

/// A distribution with every duration divided by `scale`.
fn scaled(d: Distribution, scale: f64) -> Distribution {
    let s = |d: Duration| Duration::from_secs_f64((d.as_secs_f64() / scale).max(1e-3));
    match d {
        Distribution::Uniform(b) => Distribution::Uniform(b.map(|(lo, hi)| (s(lo), s(hi)))),
        Distribution::Lognormal { median, sigma } => Distribution::Lognormal {
            median: s(median),
            sigma,
        },
        Distribution::Bimodal {
            first,
            second,
            share,
            sigma,
        } => Distribution::Bimodal {
            first: s(first),
            second: s(second),
            share,
            sigma,
        },
        Distribution::Pareto { scale: x, alpha } => Distribution::Pareto { scale: s(x), alpha },
    }
}

/// One daemon's run: its measured watches' polls and delays, and the simulator's log.
struct RunResult {
    policy: &'static str,
    polls: Vec<i64>,
    delays_ms: Vec<i64>,
    log: Vec<LoggedRequest>,
}

/// Post `ids` evenly over `window` (at once for 0).
async fn post(
    http: &reqwest::Client,
    daemon: &str,
    ids: &[String],
    window: Duration,
) -> anyhow::Result<()> {
    let step = Duration::from_millis(50);
    let chunks = ((window.as_secs_f64() / step.as_secs_f64()).ceil() as usize).max(1);
    // At most the API's default ids per request, whatever the window.
    let per = ids.len().div_ceil(chunks).clamp(1, 10_000);
    let started = tokio::time::Instant::now();
    for (k, chunk) in ids.chunks(per).enumerate() {
        tokio::time::sleep_until(started + step * k as u32).await;
        let r = http
            .post(format!("{daemon}/v1/jobs"))
            .json(&serde_json::json!({"kind": "copy", "ids": chunk}))
            .send()
            .await
            .context("POST /v1/jobs")?;
        if !r.status().is_success() {
            bail!("POST /v1/jobs answered {}", r.status());
        }
    }
    Ok(())
}

/// Until the daemon has no running watch.
async fn drained(
    http: &reqwest::Client,
    daemon: &mut DaemonProcess,
    until: Instant,
) -> anyhow::Result<()> {
    loop {
        daemon.check_alive()?;
        let status: Value = http
            .get(format!("{}/v1/status", daemon.url))
            .send()
            .await?
            .json()
            .await?;
        if status["watches"]["running"].as_i64() == Some(0) {
            return Ok(());
        }
        if Instant::now() > until {
            bail!(
                "watches still running after --max-time: {}",
                status["watches"]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn millis(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Every ended watch whose id starts with `prefix`: (polls, detection delay ms).
async fn measured(
    http: &reqwest::Client,
    daemon: &str,
    prefix: &str,
) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    let (mut polls, mut delays) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{daemon}/v1/jobs?kind=copy&running=false&limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http.get(url).send().await?.json().await?;
        for w in page["jobs"].as_array().into_iter().flatten() {
            if !w["id"].as_str().is_some_and(|id| id.starts_with(prefix)) {
                continue;
            }
            if let (Some(seen), Some(ended)) =
                (millis(&w["last_poll_at"]), millis(&w["upstream"]["ended"]))
            {
                polls.push(w["poll_count"].as_i64().unwrap_or(0));
                delays.push(seen - ended);
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    Ok((polls, delays))
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    exe: &Path,
    dir: &Path,
    base: &BTreeMap<String, String>,
    policy: &'static str,
    own: Vec<(String, String)>,
    budget: Option<f64>,
    opts: &LiveOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<RunResult> {
    let (sim, sim_url) = super::start_simulator(
        SimulateArgs {
            seed: opts.seed,
            durations: vec![DurationsArg {
                kind: None,
                distribution: scaled(opts.distribution, opts.scale),
            }],
            mix: "SUCCESS=1"
                .parse()
                .unwrap_or_else(|_| SimulateArgs::default().mix),
            keep_log: true,
            ..SimulateArgs::default()
        },
        shutdown,
    )
    .await?;
    let mut settings = base.clone();
    let name = format!(
        "live-{}-{}",
        policy.replace(' ', "-"),
        if budget.is_some() { "bound" } else { "free" }
    );
    settings.insert(
        "store.url".into(),
        format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
    );
    settings.insert("upstream.base_url".into(), sim_url);
    if let Some(r) = budget {
        settings.insert("upstream.max_requests_per_second".into(), format!("{r}"));
        settings.insert(
            "upstream.burst".into(),
            format!("{}", r.clamp(1.0, 50.0) as u32),
        );
    }
    settings.extend(own);
    let mut daemon = DaemonProcess::start(exe, &settings, dir, &name).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let until = Instant::now() + opts.max_time;
    if policy == "learned" && opts.warmup > 0 {
        let warm: Vec<String> = (0..opts.warmup).map(|i| format!("warm-{i}")).collect();
        post(&http, &daemon.url, &warm, Duration::ZERO).await?;
        drained(&http, &mut daemon, until).await?;
    }
    let ids: Vec<String> = (0..opts.jobs).map(|i| format!("w-{i}")).collect();
    let window = Duration::from_secs_f64(opts.arrivals.as_secs_f64() / opts.scale);
    post(&http, &daemon.url, &ids, window).await?;
    drained(&http, &mut daemon, until).await?;
    let (polls, delays_ms) = measured(&http, &daemon.url, "w-").await?;
    daemon.stop().await;
    if polls.len() != ids.len() {
        bail!(
            "{policy}: {} of {} watches ended with a poll that saw the end",
            polls.len(),
            ids.len()
        );
    }
    Ok(RunResult {
        policy,
        polls,
        delays_ms,
        log: sim.request_log(),
    })
}

/// The longest time a measured job (`w-` ids) went without a status request.
fn longest_gap(log: &[LoggedRequest]) -> f64 {
    let mut last: HashMap<&str, f64> = HashMap::new();
    let mut longest = 0.0f64;
    for r in log {
        let Some(id) = r
            .path
            .strip_prefix("/products/")
            .and_then(|p| p.split('/').next())
            .filter(|id| id.starts_with("w-"))
        else {
            continue;
        };
        if let Some(prev) = last.insert(id, r.t_ms) {
            longest = longest.max(r.t_ms - prev);
        }
    }
    longest
}

/// Requests per second in the busiest `window` of `log`.
fn busiest(log: &[LoggedRequest], window: Duration) -> f64 {
    let w = window.as_secs_f64() * 1000.0;
    let mut per: HashMap<i64, u64> = HashMap::new();
    for r in log {
        *per.entry((r.t_ms / w) as i64).or_default() += 1;
    }
    per.values().copied().max().unwrap_or(0) as f64 / window.as_secs_f64()
}

fn figures(r: &RunResult, budget: Option<f64>, scale: f64) -> Figures {
    let mut d = r.delays_ms.clone();
    d.sort_unstable();
    let pct = |p: f64| {
        if d.is_empty() {
            return 0.0;
        }
        let rank = ((p * d.len() as f64).ceil() as usize).clamp(1, d.len());
        d[rank - 1].max(0) as f64 / 1000.0 * scale
    };
    Figures {
        policy: r.policy.to_string(),
        price_s: None,
        budget_per_second: budget.map(|b| b / scale),
        jobs: r.polls.len() as u64,
        polls_per_job: r.polls.iter().sum::<i64>() as f64 / r.polls.len().max(1) as f64,
        delay_p50_s: pct(0.50),
        delay_p90_s: pct(0.90),
        delay_p99_s: pct(0.99),
        longest_gap_s: longest_gap(&r.log) / 1000.0 * scale,
    }
}

/// The three cadences without a budget, then (all three at once each time) under
/// `budget_share` of what fixed 5 s asked for in its busiest (scaled) minute.
pub async fn live(
    exe: &Path,
    dir: &Path,
    base: &BTreeMap<String, String>,
    settings: &Settings,
    opts: &LiveOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<Live> {
    let mut runs = Vec::new();
    let mut budget = None;
    for bound in [false, true] {
        let limit = if bound { budget } else { None };
        let results = futures::future::try_join_all(
            policies(settings, opts.scale)
                .into_iter()
                .map(|(policy, own)| run_one(exe, dir, base, policy, own, limit, opts, shutdown)),
        )
        .await?;
        if !bound {
            let fixed = results
                .iter()
                .find(|r| r.policy == "fixed 5s")
                .context("the fixed run")?;
            let minute = Duration::from_secs_f64(60.0 / opts.scale);
            budget = Some((busiest(&fixed.log, minute) * opts.budget_share).max(1.0));
        }
        runs.extend(results.iter().map(|r| figures(r, limit, opts.scale)));
    }
    Ok(Live {
        budget_per_second: budget.unwrap_or(0.0) / opts.scale,
        runs,
    })
}
