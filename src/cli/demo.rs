//! `jobwatch demo`: the one-command tour. In one process it starts the simulator (the
//! upstream), the daemon on a fresh local SQLite file, and a webhook receiver that verifies
//! every signature; it watches a few hundred sample jobs of mixed outcomes, shows progress
//! until every outcome is delivered and verified (outcomes counted from the daemon's event
//! stream), prints a summary, and keeps the API and the status page up for the user to
//! try until Ctrl-C.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::sse::EventStream;
use super::watch::{post_all, PostOptions};
use super::{parse_duration, Client, ServerArgs};
use crate::app::{cancel_on_signals, Daemon};
use crate::config::Settings;
use crate::model::Kind;
use crate::simulator::{SimulateArgs, Simulator};
use crate::telemetry;
use crate::webhook::sign::SigningSecret;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Stop after the closing summary instead of keeping the API up until Ctrl-C (for
    /// scripts and CI). Exit 0 when every outcome was delivered and verified.
    #[arg(long, visible_alias = "no-wait")]
    pub exit_when_done: bool,

    /// How many sample jobs to watch.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(20..=20_000))]
    pub jobs: u32,

    /// Give up on the tour if the outcomes are not all delivered within this long.
    #[arg(long, default_value = "3m", value_name = "DURATION", value_parser = parse_duration)]
    pub deadline: Duration,
}

/// What `jobwatch demo --help` adds after the options.
pub const DEMO_HELP: &str = "\
Everything runs in this one process, on loopback:
  the daemon API     api.listen (127.0.0.1:8080), or the next free port when it is taken
  the simulator      127.0.0.1:9090, or a random port when it is taken
  webhook receiver   127.0.0.1 on a random port; it verifies every signature
  the store          jobwatch-demo.db in the current directory, deleted at start
Exit 0 when every outcome was delivered and verified (or on Ctrl-C), 1 otherwise.
RUST_LOG=info shows the daemon's logs.";

/// The demo's store, in the current directory; deleted at start so each tour is fresh.
const DB_FILE: &str = "jobwatch-demo.db";
/// The simulator's usual port; a random one when it is taken.
const SIM_PORT: u16 = 9090;
/// Ports tried after api.listen's when it is taken.
const PORT_TRIES: u16 = 20;
/// `running-` ids never end upstream: their watches get this deadline and end `timed_out`.
const RUNNING_DEADLINE: Duration = Duration::from_secs(10);

/// What the sample is made of: id prefixes the simulator gives a fixed behaviour (see
/// `jobwatch simulate --help`), and plain ids whose outcome it draws from its mix.
const SAMPLE: &[(&str, u32)] = &[
    ("", 40), // plain ids
    ("succeed-", 14),
    ("done-", 5),
    ("failed-", 8),
    ("failure-", 5),
    ("doneerr-", 4),
    ("successerr-", 4),
    ("notyet-succeed-", 6),
    ("notfound-", 6),
    ("badrequest-", 4),
    ("running-", 4),
];

/// One sample job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleJob {
    pub kind: Kind,
    pub id: String,
    pub deadline: Option<Duration>,
}

/// `n` jobs in the proportions of [`SAMPLE`], a quarter of them `delete` jobs.
pub fn sample_jobs(n: u32) -> Vec<SampleJob> {
    let total: u32 = SAMPLE.iter().map(|(_, w)| w).sum();
    let mut jobs = Vec::with_capacity(n as usize);
    let mut j = 0u32;
    for (i, (prefix, weight)) in SAMPLE.iter().enumerate() {
        // Plain ids (the first entry) take what rounding leaves.
        let count = if i == 0 {
            n - SAMPLE[1..].iter().map(|(_, w)| n * w / total).sum::<u32>()
        } else {
            n * weight / total
        };
        for _ in 0..count {
            j += 1;
            let id = if prefix.is_empty() {
                // Looks like a real upstream id; unique per run.
                ulid::Ulid::new().to_string().to_lowercase()
            } else {
                format!("{prefix}{j:04}")
            };
            jobs.push(SampleJob {
                kind: if j % 4 == 0 { Kind::DELETE } else { Kind::COPY },
                deadline: (*prefix == "running-").then_some(RUNNING_DEADLINE),
                id,
            });
        }
    }
    jobs
}

/// The first free port of `addr`'s host from its port on (or `addr` itself for port 0).
fn free_addr(addr: SocketAddr) -> Option<SocketAddr> {
    if addr.port() == 0 {
        return Some(addr);
    }
    (0..PORT_TRIES)
        .filter_map(|i| addr.port().checked_add(i))
        .map(|p| SocketAddr::new(addr.ip(), p))
        .find(|a| StdListener::bind(a).is_ok())
}

pub async fn demo(args: DemoArgs) -> anyhow::Result<u8> {
    let stop = CancellationToken::new();
    cancel_on_signals(stop.clone());
    let started = Instant::now();

    // The upstream.
    let sim_listener = match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, SIM_PORT)).await {
        Ok(l) => l,
        Err(_) => tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the simulator")?,
    };
    let sim_addr = sim_listener.local_addr()?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sim = Simulator::new(SimulateArgs {
        listen: sim_addr,
        seed,
        min_running: Duration::from_secs(1),
        max_running: Duration::from_secs(8),
        not_yet_for: Duration::from_secs(2),
        ..SimulateArgs::default()
    });
    let sim_stop = CancellationToken::new();
    let sim_task = tokio::spawn(sim.clone().serve(sim_listener, sim_stop.clone()));

    // The receiver.
    let secret = SigningSecret::generate();
    let receiver = Arc::new(Receiver::new(secret.clone(), sim.clone()));
    let recv_listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("binding the webhook receiver")?;
    let hook_url = format!("http://{}/hooks", recv_listener.local_addr()?);
    let recv_stop = CancellationToken::new();
    let router = Router::new().fallback(receive).with_state(receiver.clone());
    let recv_shutdown = recv_stop.clone().cancelled_owned();
    let recv_task = tokio::spawn(async move {
        axum::serve(recv_listener, router)
            .with_graceful_shutdown(recv_shutdown)
            .await
    });

    // The daemon, on a fresh file.
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let path = format!("{DB_FILE}{suffix}");
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing the old {path}")),
        }
    }
    let sim_url = format!("http://{sim_addr}");
    let whsec = secret.to_whsec();
    let store_url = format!("sqlite://{DB_FILE}");
    let mut overrides: Vec<(&str, &str)> = vec![
        ("store.url", &store_url),
        ("upstream.base_url", &sim_url),
        ("upstream.max_requests_per_second", "500"),
        ("upstream.burst", "100"),
        ("upstream.min_retry_after", "200ms"),
        ("poller.initial_interval", "500ms"),
        ("poller.max_interval", "2s"),
        ("poller.not_found_grace", "4s"),
        ("webhooks.signing_secret", &whsec),
        ("webhooks.allow_private_targets", "true"),
        ("api.shutdown_grace", "3s"),
        ("log.level", "warn"),
    ];
    let wanted = Settings::load_with(None, &overrides)?.api.listen;
    let listen = free_addr(wanted)
        .with_context(|| {
            format!("api.listen: no free port in {wanted} and the {PORT_TRIES} after it")
        })?
        .to_string();
    overrides.push(("api.listen", &listen));
    let settings = Settings::load_with(None, &overrides)?;
    telemetry::init(&settings.log);
    let daemon = Daemon::build(settings).await?;
    let api_addr = daemon.local_addr()?;
    let api = format!("http://{api_addr}");
    let daemon_stop = CancellationToken::new();
    let daemon_task = tokio::spawn(daemon.run(daemon_stop.clone()));

    println!("jobwatch demo");
    println!(
        "  upstream simulator  http://{sim_addr}{}  (seed {seed}, jobs run 1s..8s)",
        if sim_addr.port() == SIM_PORT {
            ""
        } else {
            " (9090 was taken)"
        }
    );
    println!(
        "  daemon API          {api}{}  (store sqlite://{DB_FILE}, fresh)",
        if api_addr == wanted {
            String::new()
        } else {
            format!(" ({wanted} was taken)")
        }
    );
    println!(
        "  webhook receiver    {hook_url}  (verifies every signature with a new whsec_ secret)"
    );

    println!("  status page         {api}/  (open it in a browser)");

    let client = Client::new(&ServerArgs {
        server: Url::parse(&api).context("the daemon's URL")?,
        token: None,
    })?;
    // Subscribed before the jobs are posted: every outcome of the tour comes through.
    let events = EventStream::open(&client, &[])
        .await
        .map_err(|e| anyhow::anyhow!("opening the event stream: {e}"))?
        .map_err(|r| anyhow::anyhow!("opening the event stream: {}", r.message))?;
    let jobs = sample_jobs(args.jobs);
    let total = jobs.len() as u64;
    let mut groups: HashMap<(Kind, Option<Duration>), Vec<String>> = HashMap::new();
    for j in &jobs {
        groups
            .entry((j.kind, j.deadline))
            .or_default()
            .push(j.id.clone());
    }
    let mut metadata = Map::new();
    metadata.insert("source".into(), json!("jobwatch demo"));
    for ((kind, deadline), ids) in &groups {
        post_all(
            &client,
            *kind,
            ids,
            &PostOptions {
                webhook: Some(hook_url.clone()),
                timeout: *deadline,
                metadata: Some(metadata.clone()),
                batch_size: 10_000,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("posting the sample jobs: {e}"))?;
    }
    println!(
        "Watching {total} sample jobs (plain ids and the prefixes succeed-, done-, failed-, failure-, doneerr-, successerr-, notyet-, notfound-, badrequest-, running-), each with a webhook to the receiver."
    );

    let progress = follow(events, &client, &receiver, total, &stop, args.deadline).await;
    let status = client
        .status_text()
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .unwrap_or(Value::Null);
    let tally = receiver.snapshot();
    print_summary(&progress, &status, &tally, total, started.elapsed());

    let complete = progress == Progress::Complete && tally.failed == 0;
    if progress != Progress::Interrupted && !args.exit_when_done {
        let example = jobs
            .iter()
            .find(|j| j.id.starts_with("failed-"))
            .unwrap_or(&jobs[0]);
        print_try_it(&api, &hook_url, &sim_addr, &whsec, example);
        receiver.set_live(true);
        stop.cancelled().await;
        println!();
        println!("Ctrl-C: stopping.");
    }

    daemon_stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), daemon_task).await;
    sim_stop.cancel();
    recv_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), sim_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), recv_task).await;
    match stopped {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.context("the daemon stopped with an error")),
        Ok(Err(e)) => return Err(anyhow::anyhow!("the daemon task failed: {e}")),
        Err(_) => return Err(anyhow::anyhow!("the daemon did not stop within 10s")),
    }
    Ok(if complete || progress == Progress::Interrupted {
        0
    } else {
        1
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Complete,
    Interrupted,
    OutOfTime,
}

/// Shows watches ended and deliveries verified until every outcome is delivered, Ctrl-C, or
/// the deadline. Bars on a terminal; a plain line every few seconds otherwise. Outcomes
/// are counted from the daemon's event stream as they are stored (from its status if the
/// stream fails); deliveries from the receiver.
async fn follow(
    mut events: EventStream,
    client: &Client,
    receiver: &Receiver,
    total: u64,
    stop: &CancellationToken,
    deadline: Duration,
) -> Progress {
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style =
        ProgressStyle::with_template("{prefix:>17} {bar:30.cyan/blue} {pos:>5}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let ended_bar = multi.add(ProgressBar::new(total).with_style(style.clone()));
    ended_bar.set_prefix("watches ended");
    let hooks_bar = multi.add(ProgressBar::new(total).with_style(style));
    hooks_bar.set_prefix("webhooks verified");

    let until = tokio::time::Instant::now() + deadline;
    let mut last_line = Instant::now();
    let mut streamed: BTreeMap<String, u64> = BTreeMap::new();
    let mut stream_ok = true;
    let outcome = loop {
        let verified = receiver.verified();
        let (ended, by_outcome) = if stream_ok {
            let mut by: Vec<(String, u64)> =
                streamed.iter().map(|(o, n)| (o.clone(), *n)).collect();
            by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            (by.iter().map(|(_, n)| n).sum(), outcome_text(&by))
        } else {
            ended_counts(client).await
        };
        ended_bar.set_position(ended.min(total));
        ended_bar.set_message(by_outcome.clone());
        hooks_bar.set_position(verified.min(total));
        let failed = receiver.snapshot().failed;
        hooks_bar.set_message(if failed > 0 {
            format!("{failed} FAILED verification")
        } else {
            String::new()
        });
        if !tty && last_line.elapsed() >= Duration::from_secs(2) {
            println!("  {ended}/{total} watches ended ({by_outcome}), {verified}/{total} webhooks verified");
            last_line = Instant::now();
        }
        if verified >= total {
            break Progress::Complete;
        }
        // Redraw at least every 250 ms (the receiver's count moves on its own), and
        // at once for each outcome.
        let tick = tokio::time::sleep(Duration::from_millis(250));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(until) => break,
                _ = &mut tick => break,
                e = events.next(), if stream_ok => match e {
                    Ok(e) => {
                        let body: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
                        if let Some(o) = body["data"]["outcome"].as_str() {
                            *streamed.entry(o.to_string()).or_default() += 1;
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("jobwatch demo: the event stream failed ({e}); counting from /v1/status");
                        stream_ok = false;
                    }
                },
            }
        }
        if stop.is_cancelled() {
            break Progress::Interrupted;
        }
        if tokio::time::Instant::now() >= until {
            break Progress::OutOfTime;
        }
    };
    ended_bar.finish();
    hooks_bar.finish();
    let _ = multi.clear();
    outcome
}

/// Watches ended so far and `210 succeeded · 12 failed`, from the daemon's status.
async fn ended_counts(client: &Client) -> (u64, String) {
    let Some(status) = client
        .status_text()
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    else {
        return (0, String::new());
    };
    let by = outcome_counts(&status);
    (by.iter().map(|(_, n)| n).sum(), outcome_text(&by))
}

/// `210 succeeded · 12 failed`.
fn outcome_text(by: &[(String, u64)]) -> String {
    by.iter()
        .map(|(o, n)| format!("{n} {o}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// `ended_by_outcome` of a status, largest first, without zeros.
fn outcome_counts(status: &Value) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = status["watches"]["ended_by_outcome"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                .filter(|(_, n)| *n > 0)
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn print_summary(progress: &Progress, status: &Value, t: &Tally, total: u64, took: Duration) {
    println!();
    match progress {
        Progress::Complete => println!(
            "Tour complete in {}: all {total} outcomes delivered and verified.",
            human(took)
        ),
        Progress::Interrupted => println!("Interrupted after {}; so far:", human(took)),
        Progress::OutOfTime => println!(
            "Out of time after {}: {} of {total} outcomes delivered; so far:",
            human(took),
            t.seen.len()
        ),
    }
    let row = |label: &str, n: u64| println!("  {label:<30}{n:>6}");
    println!("Outcomes (from GET /v1/status):");
    let by = outcome_counts(status);
    if by.is_empty() {
        println!("  (none yet)");
    }
    for (o, n) in by {
        row(&o, n);
    }
    println!("Webhooks at the receiver:");
    row("verified", t.seen.len() as u64);
    for (ty, n) in &t.by_type {
        row(&format!("  {ty}"), *n);
    }
    row("failed verification", t.failed);
    if let Some(reason) = &t.first_failure {
        println!("    first: {reason}");
    }
    if t.duplicates > 0 {
        row("redelivered (same webhook-id)", t.duplicates);
    }
    if let Some((p50, p99)) = percentiles(&t.from_job_end) {
        println!(
            "  job end -> webhook arrival: p50 {}, p99 {}  (over {} jobs that ended upstream; includes the polling cadence)",
            human(p50),
            human(p99),
            t.from_job_end.len()
        );
    }
    if let Some((p50, p99)) = percentiles(&t.from_outcome) {
        println!(
            "  outcome stored -> webhook arrival: p50 {}, p99 {}",
            human(p50),
            human(p99)
        );
    }
}

fn print_try_it(api: &str, hook_url: &str, sim: &SocketAddr, whsec: &str, example: &SampleJob) {
    println!();
    println!("The API stays up on {api} until Ctrl-C. Try:");
    println!("  open {api}/ in a browser: the status page, live");
    println!("  curl -s {api}/v1/status");
    println!("  curl -sN {api}/v1/events            # outcomes as Server-Sent Events, as they are stored");
    println!("  curl -s '{api}/v1/jobs?outcome=failed&limit=3'");
    println!("  curl -s {api}/v1/jobs/{}/{}", example.kind, example.id);
    println!(
        "  curl -s -X POST {api}/v1/jobs -H 'content-type: application/json' \\\n       -d '{{\"kind\":\"copy\",\"ids\":[\"succeed-mine-1\"],\"webhook_url\":\"{hook_url}\"}}'"
    );
    println!("  curl -s '{api}/v1/jobs/copy/succeed-mine-1?wait=30'");
    // As invoked (`target/release/jobwatch` under cargo run), so the line works when pasted.
    let me = std::env::args().next().unwrap_or_else(|| "jobwatch".into());
    println!("  {me} wait --server {api} --kind copy --watch --webhook {hook_url} succeed-mine-2 failed-mine-3; echo \"exit $?\"");
    println!("  {me} status --server {api}");
    println!("The upstream simulator answers on http://{sim}; webhooks to {hook_url} are verified with {whsec}.");
    println!("New deliveries to the receiver are printed below.");
}

/// Nearest-rank p50 and p99.
fn percentiles(v: &[Duration]) -> Option<(Duration, Duration)> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort();
    let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some((at(0.50), at(0.99)))
}

fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// The reference libraries refuse timestamps further than this from their clock.
const TOLERANCE_SECS: i64 = 5 * 60;

/// What the receiver has seen.
#[derive(Debug, Default, Clone)]
struct Tally {
    /// webhook-ids of verified deliveries.
    seen: HashSet<String>,
    by_type: BTreeMap<String, u64>,
    duplicates: u64,
    failed: u64,
    first_failure: Option<String>,
    /// From the job's end at the simulator to the webhook's arrival.
    from_job_end: Vec<Duration>,
    /// From the outcome's timestamp (when the daemon stored it) to the webhook's arrival.
    from_outcome: Vec<Duration>,
}

struct Receiver {
    secret: SigningSecret,
    sim: Simulator,
    tally: Mutex<Tally>,
    /// After the tour: print each new delivery.
    live: std::sync::atomic::AtomicBool,
}

impl Receiver {
    fn new(secret: SigningSecret, sim: Simulator) -> Receiver {
        Receiver {
            secret,
            sim,
            tally: Mutex::new(Tally::default()),
            live: false.into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn verified(&self) -> u64 {
        self.lock().seen.len() as u64
    }

    fn snapshot(&self) -> Tally {
        self.lock().clone()
    }

    fn set_live(&self, on: bool) {
        self.live.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Verifies a delivery as a Standard Webhooks receiver does: 400 when it does not verify.
async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let arrived = SystemTime::now();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let id = header("webhook-id");
    let signature = header("webhook-signature");
    let now = arrived
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let problem = match header("webhook-timestamp").parse::<i64>() {
        _ if id.is_empty() => Some("no webhook-id header".to_owned()),
        Err(_) => Some("no readable webhook-timestamp header".to_owned()),
        Ok(ts) if (now - ts).abs() > TOLERANCE_SECS => {
            Some(format!("webhook-timestamp {ts} is more than 5 minutes off"))
        }
        Ok(ts) if !r.secret.verify(&id, ts, &body, &signature) => {
            Some(format!("the signature of {id} does not verify"))
        }
        Ok(_) => None,
    };
    let mut t = r.lock();
    if let Some(p) = problem {
        t.failed += 1;
        t.first_failure.get_or_insert(p);
        return StatusCode::BAD_REQUEST;
    }
    if !t.seen.insert(id.clone()) {
        t.duplicates += 1;
        return StatusCode::NO_CONTENT;
    }
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let ty = event["type"].as_str().unwrap_or("(no type)").to_owned();
    *t.by_type.entry(ty.clone()).or_default() += 1;
    let (kind, job) = (
        event["data"]["kind"].as_str().unwrap_or(""),
        event["data"]["id"].as_str().unwrap_or(""),
    );
    if let Some(end) = r.sim.job_end(kind, job) {
        if let Ok(d) = arrived.duration_since(end) {
            t.from_job_end.push(d);
        }
    }
    if let Some(at) = event["timestamp"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        if let Ok(d) = arrived.duration_since(SystemTime::from(at)) {
            t.from_outcome.push(d);
        }
    }
    drop(t);
    if r.live.load(std::sync::atomic::Ordering::Relaxed) {
        println!("webhook verified: {ty} {kind}/{job} (webhook-id {id})");
    }
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_has_the_asked_size_and_every_behaviour() {
        for n in [20, 300, 1001] {
            let jobs = sample_jobs(n);
            assert_eq!(jobs.len(), n as usize);
            let keys: HashSet<(Kind, &str)> =
                jobs.iter().map(|j| (j.kind, j.id.as_str())).collect();
            assert_eq!(keys.len(), jobs.len(), "ids are unique per kind");
        }
        let jobs = sample_jobs(300);
        for (prefix, _) in &SAMPLE[1..] {
            assert!(
                jobs.iter().any(|j| j.id.starts_with(prefix)),
                "no {prefix} id"
            );
        }
        assert!(jobs.iter().any(|j| j.kind == Kind::DELETE));
        assert!(jobs
            .iter()
            .filter(|j| j.id.starts_with("running-"))
            .all(|j| j.deadline.is_some()));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(
            percentiles(&v),
            Some((Duration::from_millis(50), Duration::from_millis(99)))
        );
        assert_eq!(percentiles(&[]), None);
    }
}
