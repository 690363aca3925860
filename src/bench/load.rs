//! The two loads the bench generates itself: the ingest (ids POSTed in chunks, a few
//! at once, timed until the last 202) and the ceiling client, the least a poller can
//! be: `concurrency` loops of GET against the simulator's status endpoint, nothing
//! parsed, nothing stored. Its rate is what this machine can do, and the daemon's
//! poll rate is judged against it. The same loops can also send each request
//! through the daemon's own upstream client (its URL, headers and timeout, the
//! answer parsed into a status), which shows how much of the gap to the ceiling is
//! the request itself and how much the claiming, deciding and storing around it.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::Uri;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::daemon::proc_sample;
use crate::config::Settings;
use crate::model::Kind;
use crate::upstream::{PollAnswer, UpstreamClient};

#[derive(Debug, Clone, Serialize)]
pub struct Ingest {
    pub ids: u64,
    pub posts: u64,
    pub chunk: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub ids_per_second: f64,
    /// Watches the daemon reported as new (all of them on a fresh store).
    pub new: u64,
}

/// The ids `{prefix}{index:07}` for `0..n`.
pub fn id(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:07}")
}

/// POST `n` ids in chunks of `chunk`, `concurrency` requests at once; every one must
/// answer 202.
pub async fn ingest(
    daemon: &str,
    prefix: &str,
    n: usize,
    chunk: usize,
    concurrency: usize,
    webhook_url: Option<&str>,
) -> anyhow::Result<Ingest> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let url = format!("{daemon}/v1/jobs");
    let chunk = chunk.max(1);
    let starts: Vec<usize> = (0..n).step_by(chunk).collect();
    let posts = starts.len() as u64;
    let started = Instant::now();
    let new: u64 = futures::stream::iter(starts)
        .map(|from| {
            let (http, url) = (&http, &url);
            async move {
                let ids: Vec<String> = (from..(from + chunk).min(n))
                    .map(|i| id(prefix, i))
                    .collect();
                let mut body = json!({"kind": "copy", "ids": ids});
                if let Some(hook) = webhook_url {
                    body["webhook_url"] = hook.into();
                }
                let r = http
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .context("POST /v1/jobs")?;
                let status = r.status();
                let answer: Value = r.json().await.unwrap_or(Value::Null);
                if status.as_u16() != 202 {
                    bail!("POST /v1/jobs answered {status}: {answer}");
                }
                Ok::<u64, anyhow::Error>(answer["new"].as_u64().unwrap_or(0))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_fold(0u64, |sum, new| async move { Ok(sum + new) })
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Ingest {
        ids: n as u64,
        posts,
        chunk,
        concurrency,
        seconds,
        ids_per_second: n as f64 / seconds.max(1e-9),
        new,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ceiling {
    pub concurrency: usize,
    pub seconds: f64,
    pub requests: u64,
    pub per_second: f64,
    /// Every measurement's rate (before and after the main run); `per_second` is the best.
    pub measured: Vec<f64>,
    /// CPU (user + system) of the process the client ran in, per request, in
    /// microseconds: the client's own in a process of its own; the client's and
    /// the simulator's together in the bench's process.
    pub process_cpu_us_per_request: Option<f64>,
}

impl Ceiling {
    /// One measurement: `requests` answered in `seconds`.
    fn measured(concurrency: usize, requests: u64, seconds: f64, cpu: Option<f64>) -> Ceiling {
        let per_second = requests as f64 / seconds.max(1e-9);
        Ceiling {
            concurrency,
            seconds,
            requests,
            per_second,
            measured: vec![per_second],
            process_cpu_us_per_request: cpu,
        }
    }

    /// The better of two measurements, remembering both.
    pub fn better(a: Ceiling, b: Ceiling) -> Ceiling {
        let measured: Vec<f64> = a.measured.iter().chain(&b.measured).copied().collect();
        let best = if b.per_second > a.per_second { b } else { a };
        Ceiling { measured, ..best }
    }
}

/// One round of the ceiling's measurements.
pub struct Ceilings {
    /// The minimal client in a process of its own: what the poll rate is judged by.
    pub judged: Ceiling,
    /// The daemon's upstream client in the same place, for reference: its request
    /// path alone, nothing claimed, decided or stored.
    pub upstream_client: Ceiling,
    /// The minimal client in the bench's process, beside the simulator.
    pub in_process: Ceiling,
}

impl Ceilings {
    /// The better of two rounds, each measurement on its own.
    pub fn better(a: Ceilings, b: Ceilings) -> Ceilings {
        Ceilings {
            judged: Ceiling::better(a.judged, b.judged),
            upstream_client: Ceiling::better(a.upstream_client, b.upstream_client),
            in_process: Ceiling::better(a.in_process, b.in_process),
        }
    }
}

impl std::fmt::Display for Ceilings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} polls/s (through the daemon's upstream client: {:.0}; in the bench's own process: {:.0})",
            self.judged.per_second, self.upstream_client.per_second, self.in_process.per_second
        )
    }
}

/// The hidden `jobwatch bench-ceiling`: the ceiling client in a process of its
/// own, started by the bench, which reads the [`Ceiling`] it prints as JSON.
#[derive(clap::Args, Debug, Clone)]
pub struct CeilingArgs {
    /// The simulator's base URL.
    #[arg(long)]
    pub url: String,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Requests sent before the count starts (connections opened, caches warm).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub warmup: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub measure: Duration,
    /// What each request is made with.
    #[arg(long, value_enum, default_value_t = Requests::Minimal)]
    pub requests: Requests,
    /// Send this many requests a second instead of as many as the loops can
    /// ([`paced`]: the floor of `bench --operating-point`).
    #[arg(long)]
    pub rate: Option<f64>,
    /// With `--rate`: send each step's requests together, steps this far apart (as
    /// the daemon's poller does; `bench --operating-point` passes its step gap).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub batch_every: Duration,
}

/// What each of the ceiling client's requests is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Requests {
    /// hyper's pooled client: GET, read the body, nothing parsed.
    Minimal,
    /// The daemon's [`UpstreamClient::poll`]: the contract's URL and headers, its
    /// timeout, the body parsed into a status; nothing decided or stored.
    UpstreamClient,
}

/// `jobwatch bench-ceiling`: measure, print the result as one JSON line.
pub async fn ceiling_client(args: CeilingArgs) -> anyhow::Result<u8> {
    let c = match args.rate {
        Some(rate) => {
            paced(
                &args.url,
                args.concurrency,
                rate,
                args.batch_every,
                args.warmup + args.measure,
            )
            .await?
        }
        None => {
            ceiling(
                &args.url,
                args.concurrency,
                args.warmup,
                args.measure,
                args.requests,
            )
            .await?
        }
    };
    println!("{}", serde_json::to_string(&c)?);
    Ok(0)
}

/// The ceiling as the daemon's run is laid out: the minimal client in a process of
/// its own (`exe bench-ceiling`), the simulator in this one, so that both pay the
/// same for the hand-over between processes and the client's own CPU per request
/// can be read off `/proc` (the daemon's is compared with it; BENCHMARKS.md).
pub async fn ceiling_process(
    exe: &Path,
    sim: &str,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    requests: Requests,
) -> anyhow::Result<Ceiling> {
    let child = ceiling_command(exe, sim, requests, warmup, measure)
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} bench-ceiling", exe.display()))?;
    let limit = warmup + measure + Duration::from_secs(30);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("the ceiling client did not finish within {limit:?}"))?
        .context("waiting for the ceiling client")?;
    if !out.status.success() {
        bail!(
            "the ceiling client exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the ceiling client's report is not JSON: {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `exe bench-ceiling` against `sim`, warming up then measuring for the times
/// given; the caller adds how it paces (`--concurrency` or `--rate`) and where
/// its report goes.
pub fn ceiling_command(
    exe: &Path,
    sim: &str,
    requests: Requests,
    warmup: Duration,
    measure: Duration,
) -> tokio::process::Command {
    let requests = match requests {
        Requests::Minimal => "minimal",
        Requests::UpstreamClient => "upstream-client",
    };
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["bench-ceiling", "--requests", requests, "--url", sim])
        .arg("--warmup")
        .arg(humantime::format_duration(warmup).to_string())
        .arg("--measure")
        .arg(humantime::format_duration(measure).to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .env_remove("RUST_LOG");
    command
}

/// How many distinct ids the ceiling client cycles through, and their prefix.
const CEILING_IDS: usize = 10_000;
const CEILING_PREFIX: &str = "ceil-";

/// One request of the ceiling client, made ready once for all its loops (one value
/// behind an `Arc`: its variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
enum Requester {
    Minimal {
        http: Client<HttpConnector, Empty<Bytes>>,
        /// `{sim}/products/`: see [`minimal_uri`].
        head: String,
    },
    UpstreamClient(UpstreamClient),
}

impl Requester {
    fn new(sim: &str, concurrency: usize, requests: Requests) -> anyhow::Result<Requester> {
        Ok(match requests {
            Requests::Minimal => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                let head = format!("{sim}/products/");
                // Only the id changes from one request to the next: if one URI
                // parses, all do.
                minimal_uri(&head, 0).with_context(|| format!("the simulator's URL {sim:?}"))?;
                Requester::Minimal {
                    http: Client::builder(TokioExecutor::new())
                        .pool_max_idle_per_host(concurrency)
                        .build(connector),
                    head,
                }
            }
            Requests::UpstreamClient => {
                let in_flight = concurrency.to_string();
                let settings = Settings::load_with(
                    None,
                    &[
                        ("upstream.base_url", sim),
                        ("upstream.max_in_flight", in_flight.as_str()),
                    ],
                )
                .context("the upstream client's settings")?;
                Requester::UpstreamClient(UpstreamClient::new(&settings.resolved[0])?)
            }
        })
    }

    /// Ask for the status of the `k`th ceiling id: did a whole, good answer come?
    async fn status(&self, k: usize) -> bool {
        match self {
            Requester::Minimal { http, head } => {
                let Ok(uri) = minimal_uri(head, k) else {
                    return false;
                };
                match http.get(uri).await {
                    Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
            Requester::UpstreamClient(client) => matches!(
                client.poll(Kind::COPY, &id(CEILING_PREFIX, k)).await,
                PollAnswer::Status(_)
            ),
        }
    }
}

/// The `k`th ceiling id's status URI: its id as [`id`] makes it, in the one
/// allocation the minimal client makes per request.
fn minimal_uri(head: &str, k: usize) -> Result<Uri, http::uri::InvalidUri> {
    format!("{head}{CEILING_PREFIX}{k:07}/search/copy/status").parse()
}

/// Hammer the simulator's status endpoint from `concurrency` loops for `warmup` (not
/// counted) and then `measure`, on the HTTP stack the daemon polls with (hyper's
/// pooled client, as many idle connections as loops).
pub async fn ceiling(
    sim: &str,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    requests: Requests,
) -> anyhow::Result<Ceiling> {
    let requester = Arc::new(Requester::new(sim, concurrency, requests)?);
    let counted = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let (requester, counted, counting, stop) = (
            requester.clone(),
            counted.clone(),
            counting.clone(),
            stop.clone(),
        );
        loops.push(tokio::spawn(async move {
            let mut k = worker * 7919;
            while !stop.load(Ordering::Relaxed) {
                k = (k + 1) % CEILING_IDS;
                let ok = requester.status(k).await;
                if ok && counting.load(Ordering::Relaxed) {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(warmup).await;
    let me = std::process::id();
    let cpu_before = proc_sample(me);
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(measure).await;
    let requests = counted.load(Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let cpu = match (cpu_before, proc_sample(me)) {
        (Some(a), Some(b)) if requests > 0 => {
            Some((b.cpu_seconds - a.cpu_seconds) * 1e6 / requests as f64)
        }
        _ => None,
    };
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    Ok(Ceiling::measured(concurrency, requests, seconds, cpu))
}

/// The least a poller can pay at a load below the machine's ceiling: `rate`
/// requests a second for `run`, sent as the daemon's poller sends them (a batch
/// every `batch_every`, the gap between its steps; at most `concurrency` at once)
/// on hyper's pooled client, nothing parsed or stored. What it costs is read off
/// `/proc` by the bench, over the same window as the daemon's.
pub async fn paced(
    sim: &str,
    concurrency: usize,
    rate: f64,
    batch_every: Duration,
    run: Duration,
) -> anyhow::Result<Ceiling> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--rate must be a positive number of requests per second");
    }
    if batch_every.is_zero() {
        bail!("--batch-every must be longer than zero");
    }
    let requester = Arc::new(Requester::new(sim, concurrency, Requests::Minimal)?);
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let answered = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut steps = tokio::time::interval(batch_every);
    let (mut due, mut sent) = (0.0, 0usize);
    while started.elapsed() < run {
        steps.tick().await;
        due += rate * batch_every.as_secs_f64();
        while (sent as f64) < due.floor() {
            sent += 1;
            let (requester, slots, answered) = (requester.clone(), slots.clone(), answered.clone());
            tokio::spawn(async move {
                let Ok(_slot) = slots.acquire().await else {
                    return;
                };
                if requester.status(sent % CEILING_IDS).await {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    let requests = answered.load(Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    Ok(Ceiling::measured(concurrency, requests, seconds, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimal_client_asks_for_the_urls_the_upstream_client_does() {
        let sim = "http://127.0.0.1:9";
        let Ok(Requester::UpstreamClient(client)) =
            Requester::new(sim, 4, Requests::UpstreamClient)
        else {
            panic!("the upstream client is made");
        };
        for k in [0, 42, CEILING_IDS - 1] {
            let minimal = minimal_uri(&format!("{sim}/products/"), k).expect("a URI");
            assert_eq!(
                minimal.to_string(),
                client
                    .status_url(Kind::COPY, &id(CEILING_PREFIX, k))
                    .unwrap()
            );
        }
    }

    #[tokio::test]
    async fn the_floor_client_sends_the_rate_asked_not_as_many_as_it_can() {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (sim, url) = super::super::start_simulator(Default::default(), &shutdown)
            .await
            .unwrap();
        let c = paced(
            &url,
            8,
            50.0,
            Duration::from_millis(100),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        // Ten steps of five; the last may not have been answered yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let received = sim.requests_received();
        assert!((40..=60).contains(&received), "{received} requests");
        assert!(c.requests <= received, "{} answered", c.requests);
        shutdown.cancel();
    }

    #[test]
    fn a_simulator_url_that_makes_no_uri_is_refused_up_front() {
        let e = Requester::new("http://bad host", 4, Requests::Minimal)
            .err()
            .expect("refused");
        assert!(
            format!("{e:#}").contains("the simulator's URL \"http://bad host\""),
            "{e:#}"
        );
    }
}
