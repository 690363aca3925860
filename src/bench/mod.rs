//! `jobwatch bench`: how close jobwatch gets to this machine's limits.
//!
//! One command runs the simulator and a webhook receiver in this process and the
//! daemon as a separate process (this binary's `serve`, on a temporary SQLite file,
//! loopback only), then reports: the ingest rate, the sustained poll rate against
//! the ceiling a minimal client reaches on the same simulator with the same
//! concurrency, the detection-to-delivery latency, the daemon's peak RSS and CPU per
//! 1,000 polls, and a second run under a rate-limited upstream. It is bounded in
//! time, stops by itself, and kills the daemon on every way out. BENCHMARKS.md has
//! the figures and the commands that gave them.

pub mod cadence;
mod daemon;
mod live;
pub mod load;
mod operating;
mod receiver;
mod report;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use tokio_util::sync::CancellationToken;

use crate::app::cancel_on_signals;
use crate::config::{LogFormat, LogSettings, Settings};
use crate::simulator::{SimulateArgs, Simulator};
use crate::webhook::sign::SigningSecret;
use daemon::Daemons;
use load::Ceilings;
pub use report::Report;
use report::{Latency, Memory, PollRate, RateLimited, Sample};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Watches of the main run (all posted, polled, ended and delivered).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=5_000_000))]
    pub watches: u32,

    /// Print the report as JSON (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Ids per POST /v1/jobs.
    #[arg(long, default_value_t = 10_000)]
    pub chunk: usize,

    /// POSTs in flight at once during the ingest.
    #[arg(long, default_value_t = 4)]
    pub ingest_concurrency: usize,

    /// Shortest running time of a simulated job (from its first poll).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub min_running: Duration,

    /// Longest running time of a simulated job.
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    pub max_running: Duration,

    /// How long the minimal client measures the machine's poll-rate ceiling.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub ceiling_duration: Duration,

    /// The main run gives up after this long (from the end of the ingest); the
    /// report then says how many watches were delivered.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_time: Duration,

    /// Watches of the rate-limited run (`running-` ids, which never end); 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    pub limited_watches: u32,

    /// The rate limit of that run: the simulator's and the daemon's, requests/s.
    #[arg(long, default_value_t = 500.0)]
    pub limited_rate: f64,

    /// How long the rate-limited run polls.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub limited_duration: Duration,

    /// The start of the rate-limited run that is not judged (from its first request).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub limited_settle: Duration,

    /// A daemon setting for both runs, as KEY=VALUE with the dotted key
    /// (e.g. `--set upstream.max_in_flight=128`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// Seed of the simulator's draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Exit 1 unless every watch of the main run ended and its webhook arrived, and
    /// the rate-limited run polled (a check that the bench works, not of speed).
    #[arg(long)]
    pub check: bool,

    /// Keep the work directory (the SQLite files, the daemon's logs) and print its path.
    #[arg(long)]
    pub keep: bool,

    /// The daemons' store: `sqlite` (a file in the work directory), or a
    /// PostgreSQL URL, where each run gets a schema of its own, dropped at the end.
    #[arg(long, default_value = "sqlite")]
    pub store: String,

    /// Replicas of the daemon sharing the store and its budget (PostgreSQL only);
    /// CPU and memory are their sums, requests go to the first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replicas: u32,
    /// Instead of the throughput bench: the same jobs under fixed 5 s, backoff and
    /// the learned cadence, without and with a binding budget, in simulated time
    /// (BENCHMARKS.md, "Cadence"). `--set` settings apply.
    #[arg(long)]
    pub cadence_study: bool,

    /// The study's jobs per run.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub study_jobs: u32,

    /// A distribution of the study's running times, as the simulator's `--durations`
    /// (without a kind); repeatable. Default: lognormal:2m,1, bimodal:30s,10m,0.7, pareto:30s,1.5.
    #[arg(long = "study-durations", value_name = "SPEC")]
    pub study_durations: Vec<crate::simulator::DurationsArg>,

    /// The study's watches are posted evenly over this window (0s: all at once).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub study_arrivals: Duration,

    /// Jobs that end under backoff first, from which the learned cadence learns.
    #[arg(long, default_value_t = 1_000)]
    pub study_warmup: u32,

    /// The learned cadence's price to run at (repeatable); default `poller.poll_price`.
    #[arg(long = "study-price", value_parser = humantime::parse_duration)]
    pub study_prices: Vec<Duration>,

    /// The binding runs' budget, as a share of the requests/s fixed 5 s needs in its
    /// busiest minute.
    #[arg(long, default_value_t = 0.5)]
    pub study_budget_share: f64,

    /// Also run the learned cadence, under the budget, with polls sent by their
    /// chance of finding the end instead of earliest due (a comparison; the daemon
    /// claims earliest due).
    #[arg(long)]
    pub study_chance_claims: bool,

    /// With --cadence-study: also run the three cadences on the real daemon and
    /// simulator for the first distribution, time scaled down by --live-scale.
    #[arg(long)]
    pub live: bool,

    /// How many times faster than the study's the live runs' time goes (running
    /// times, intervals and the price divided by it, the budget multiplied).
    #[arg(long, default_value_t = 60.0)]
    pub live_scale: f64,

    /// Jobs measured per live run.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub live_jobs: u32,

    /// Ends the learned daemon sees before the live run's measured jobs.
    #[arg(long, default_value_t = 500)]
    pub live_warmup: u32,

    /// Instead of the main run: the cost at these operating points (watches,
    /// comma-separated), never-ending watches on a fixed 5 s cadence, jobwatch
    /// and then the asyncio peer against one simulator (SQLite only).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub operating_point: Vec<u32>,

    /// Operating points: the window each poller is measured over.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Operating points: how long each poller runs before its window (and the
    /// idle daemon after its ingest).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Operating points: the Python that runs the peer (`none` skips it).
    #[arg(long, default_value = "python3")]
    pub peer: String,

    /// Operating points: the peer's script (relative paths are tried from here,
    /// then from the source tree the binary was built from).
    #[arg(long, default_value = "bench/peers/asyncio_poller.py")]
    pub peer_script: String,

    /// Operating points: watches of the idle measurement (first poll an hour
    /// away); 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    pub idle_watches: u32,

    /// Operating points: the idle measurement's window.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub idle_duration: Duration,
}

/// Ids of the main run: plain ids, so the simulator draws each outcome from its mix.
const MAIN_PREFIX: &str = "w-";
/// Ids of the rate-limited run: RUNNING forever, so demand never runs out.
const LIMITED_PREFIX: &str = "running-rl-";

/// Run the bench; the exit code is 0 unless `--check` found a watch undelivered.
pub async fn run(args: BenchArgs) -> anyhow::Result<u8> {
    crate::telemetry::init(&LogSettings {
        format: LogFormat::Text,
        level: "warn".into(),
    });
    if args.min_running > args.max_running {
        bail!("--min-running must not exceed --max-running");
    }
    if !(args.limited_rate.is_finite() && args.limited_rate > 0.0) {
        bail!("--limited-rate must be a positive number of requests per second");
    }
    let postgres = args.store.starts_with("postgres://") || args.store.starts_with("postgresql://");
    if !postgres && args.store != "sqlite" {
        bail!("--store must be `sqlite` or a postgres:// URL");
    }
    if args.replicas > 1 && !postgres {
        bail!("--replicas above 1 needs a shared store: --store postgres://...");
    }
    if args.cadence_study {
        return cadence_study(&args).await;
    }
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let work = WorkDir::create(args.keep)?;
    if !args.operating_point.is_empty() {
        if postgres {
            bail!("--operating-point runs on SQLite only");
        }
        let secret = SigningSecret::generate();
        let (base, _) = daemon_settings(&args, &secret)?;
        let report = until_interrupted(
            operating::run(&args, &base, &work.path, &shutdown),
            &shutdown,
        )
        .await?;
        emit(&args, &work, &report, operating::OperatingReport::print)?;
        return Ok(0);
    }
    let report = until_interrupted(bench(&args, &work.path, shutdown.clone()), &shutdown).await?;
    emit(&args, &work, &report, Report::print)?;
    Ok(if args.check && !report.complete() {
        1
    } else {
        0
    })
}

/// `run` unless SIGINT/SIGTERM comes first; then `shutdown` stops the simulators
/// and the receiver (the daemons die with their handles).
async fn until_interrupted<T>(
    run: impl std::future::Future<Output = anyhow::Result<T>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<T> {
    let result = tokio::select! {
        r = run => r,
        () = shutdown.cancelled() => Err(anyhow!("interrupted; the daemon was stopped")),
    };
    shutdown.cancel();
    result
}

/// A report as JSON (`--json`) or for people, and where the work directory was kept.
fn emit<R: serde::Serialize>(
    args: &BenchArgs,
    work: &WorkDir,
    report: &R,
    print: fn(&R),
) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print(report);
    }
    if args.keep {
        eprintln!("work directory kept: {}", work.path.display());
    }
    Ok(())
}

/// `--cadence-study`: every distribution asked for, in simulated time; with
/// `--live`, the first one again on the real daemon, time scaled down.
async fn cadence_study(args: &BenchArgs) -> anyhow::Result<u8> {
    let secret = SigningSecret::generate();
    let (base, settings) = daemon_settings(args, &secret)?;
    let mut distributions = Vec::new();
    for d in &args.study_durations {
        if d.kind.is_some() {
            bail!("--study-durations {d}: the study's jobs are of one kind; leave out `KIND=`");
        }
        distributions.push(d.distribution);
    }
    if distributions.is_empty() {
        for spec in ["lognormal:2m,1", "bimodal:30s,10m,0.7", "pareto:30s,1.5"] {
            distributions.push(
                spec.parse::<crate::simulator::DurationsArg>()
                    .map_err(|e| anyhow!("{e}"))?
                    .distribution,
            );
        }
    }
    let opts = cadence::StudyOptions {
        jobs: args.study_jobs,
        arrivals: args.study_arrivals,
        warmup: args.study_warmup,
        prices: if args.study_prices.is_empty() {
            vec![settings.poller.poll_price]
        } else {
            args.study_prices.clone()
        },
        budget_share: args.study_budget_share,
        chance_claims: args.study_chance_claims,
        seed: args.seed,
    };
    if !(opts.budget_share > 0.0 && opts.budget_share <= 1.0) {
        bail!("--study-budget-share must be above 0 and at most 1");
    }
    if opts.prices.iter().any(|p| p.is_zero()) {
        bail!("--study-price must be above 0");
    }
    if !(args.live_scale.is_finite() && args.live_scale >= 1.0) {
        bail!("--live-scale must be a number of at least 1");
    }
    let mut studies = Vec::new();
    for d in &distributions {
        progress(format_args!("cadence study: {d}"));
        studies.push(cadence::study(*d, &settings, &opts));
    }
    let live = if args.live {
        let shutdown = CancellationToken::new();
        cancel_on_signals(shutdown.clone());
        let work = WorkDir::create(args.keep)?;
        let exe = std::env::current_exe().context("finding this program to run its `serve`")?;
        let live_opts = live::LiveOptions {
            distribution: distributions[0],
            scale: args.live_scale,
            jobs: args.live_jobs,
            warmup: args.live_warmup,
            arrivals: args.study_arrivals,
            budget_share: args.study_budget_share,
            seed: args.seed,
            max_time: args.max_time,
        };
        progress(format_args!(
            "live: {} on the real daemon and simulator, time {}x faster; three daemons at once, without a budget, then with one",
            distributions[0], args.live_scale
        ));
        let result = tokio::select! {
            r = live::live(&exe, &work.path, &base, &settings, &live_opts, &shutdown) => r,
            () = shutdown.cancelled() => Err(anyhow!("interrupted; the daemons were stopped")),
        };
        shutdown.cancel();
        if args.keep {
            eprintln!("work directory kept: {}", work.path.display());
        }
        Some((distributions[0], result?))
    } else {
        None
    };
    if args.json {
        let live = live.as_ref().map(|(d, l)| {
            serde_json::json!({
                "distribution": d.to_string(),
                "scale": args.live_scale,
                "budget_per_second": l.budget_per_second,
                "runs": l.runs,
            })
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"studies": studies, "live": live}))?
        );
    } else {
        cadence::print(&studies, &opts);
        if let Some((d, l)) = &live {
            println!();
            println!(
                "live, on the daemon and simulator with time {}x faster ({} jobs per run, figures scaled back):",
                args.live_scale, args.live_jobs
            );
            println!();
            cadence::print_runs(&d.to_string(), &l.runs, false);
        }
    }
    Ok(0)
}

/// A fresh directory for the SQLite files and logs, removed at the end.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(keep: bool) -> anyhow::Result<WorkDir> {
        let path = std::env::temp_dir().join(format!(
            "jobwatch-bench-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the work directory {}", path.display()))?;
        Ok(WorkDir { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A simulator in this process, on a loopback port.
async fn start_simulator(
    args: SimulateArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Simulator, String)> {
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let sim = Simulator::new(args);
    let serving = sim.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = serving.serve(listener, stop).await {
            tracing::error!(error = %e, "the bench's simulator stopped");
        }
    });
    Ok((sim, url))
}

/// The ceiling as it is judged (the minimal client in a process of its own, as
/// the daemon is), and for reference the daemon's upstream client in the same
/// place and the minimal client in this process.
async fn ceilings(
    exe: &Path,
    sim_url: &str,
    in_flight: usize,
    measure: Duration,
) -> anyhow::Result<Ceilings> {
    let warmup = Duration::from_secs(1);
    let process =
        |requests| load::ceiling_process(exe, sim_url, in_flight, warmup, measure, requests);
    Ok(Ceilings {
        judged: process(load::Requests::Minimal).await?,
        upstream_client: process(load::Requests::UpstreamClient).await?,
        in_process: load::ceiling(sim_url, in_flight, warmup, measure, load::Requests::Minimal)
            .await?,
    })
}

/// The daemon's settings: the bench's, then `--set`, validated as the daemon will.
fn daemon_settings(
    args: &BenchArgs,
    secret: &SigningSecret,
) -> anyhow::Result<(BTreeMap<String, String>, Settings)> {
    let mut s = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        s.insert(k.to_string(), v);
    };
    put("log.level", "warn".into());
    put("webhooks.signing_secret", secret.to_whsec());
    put("webhooks.allow_private_targets", "true".into());
    // The machine, not the budget, is the limit of the main run.
    put("upstream.max_requests_per_second", "1000000".into());
    put("upstream.burst", "10000".into());
    for kv in &args.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--set {kv:?}: expected KEY=VALUE"))?;
        put(k.trim(), v.trim().to_string());
    }
    let pairs: Vec<(&str, &str)> = s.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings = Settings::load_with(None, &pairs).context("the daemon's settings")?;
    Ok((s, settings))
}

async fn bench(
    args: &BenchArgs,
    dir: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("finding this program to run its `serve`")?;
    let secret = SigningSecret::generate();
    let (base, settings) = daemon_settings(args, &secret)?;
    let n = args.watches as usize;
    let in_flight = settings.upstream.max_in_flight;
    let wall = Instant::now();

    // The main run.
    let (sim, sim_url) = start_simulator(
        SimulateArgs {
            min_running: args.min_running,
            max_running: args.max_running,
            seed: args.seed,
            ..SimulateArgs::default()
        },
        &shutdown,
    )
    .await?;
    let (receiver, hook_url) =
        receiver::Receiver::start(secret, MAIN_PREFIX, n, shutdown.clone()).await?;

    // The ceiling first, while nothing else runs.
    progress(format_args!(
        "measuring the poll-rate ceiling: a minimal client, {in_flight} in flight, {:?}",
        args.ceiling_duration
    ));
    let first = ceilings(&exe, &sim_url, in_flight, args.ceiling_duration).await?;
    progress(format_args!("ceiling: {first}"));

    let mut main_settings = base.clone();
    let main_store = RunStore::create(args, dir, "main").await?;
    main_settings.insert("store.url".into(), main_store.url.clone());
    main_settings.insert("upstream.base_url".into(), sim_url.clone());
    let replicas = args.replicas as usize;
    let mut daemon = Daemons::start(&exe, &main_settings, dir, "main", replicas).await?;
    progress(format_args!(
        "daemon pid {} on {} (a profiler can attach: perf record -p PID)",
        daemon.pids(),
        daemon.url,
    ));
    let polls_before = sim.requests_received();
    let before = daemon.sample().unwrap_or_default();
    let postgres_before = daemon::postgres_cpu_seconds();

    progress(format_args!(
        "ingest: {n} ids in POSTs of {}, {} at once",
        args.chunk, args.ingest_concurrency
    ));
    let ingest = load::ingest(
        &daemon.url,
        MAIN_PREFIX,
        n,
        args.chunk,
        args.ingest_concurrency,
        Some(&hook_url),
    )
    .await?;
    let after_ingest = daemon.sample().unwrap_or_default();
    let polls_at_ingest_end = sim.requests_received() - polls_before;
    progress(format_args!(
        "ingest: {:.0} ids/s; following polls and deliveries",
        ingest.ids_per_second
    ));

    let probe = Backlog::new(&daemon.url)?;
    let followed = Instant::now();
    let mut timeline: Vec<Sample> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut seconds = 0u64;
    loop {
        tick.tick().await;
        seconds += 1;
        daemon.check_alive()?;
        let proc = daemon.sample().unwrap_or_default();
        let delivered = receiver.delivered();
        let backlog = probe.count().await;
        let sample = Sample {
            t: followed.elapsed().as_secs_f64(),
            polls: sim.requests_received() - polls_before,
            cpu_seconds: proc.cpu_seconds - before.cpu_seconds,
            rss_mib: mib(proc.rss_kib),
            delivered,
            backlog,
        };
        if seconds % 5 == 0 {
            let rate = timeline
                .iter()
                .rev()
                .nth(4)
                .or(timeline.first())
                .map(|s| (sample.polls - s.polls) as f64 / (sample.t - s.t).max(1e-9))
                .unwrap_or(0.0);
            progress(format_args!(
                "{:>4.0}s  {:>7.0} polls/s  delivered {delivered}/{n}  rss {:.1} MiB  backlog {}",
                sample.t,
                rate,
                sample.rss_mib,
                backlog.map_or("?".into(), |o| o.to_string()),
            ));
        }
        timeline.push(sample);
        if delivered >= n as u64 || followed.elapsed() >= args.max_time {
            break;
        }
    }
    let end = daemon.sample().unwrap_or_default();
    let postgres_cpu = daemon::postgres_cpu_seconds() - postgres_before;
    daemon.stop().await;
    main_store.drop_schema().await;
    let tally = receiver.snapshot();
    // Again with the daemon gone: others' load on a shared machine comes and goes,
    // and the better of the two is what the machine can do.
    let again = ceilings(&exe, &sim_url, in_flight, args.ceiling_duration).await?;
    progress(format_args!("ceiling again, after the run: {again}"));
    let ceilings = Ceilings::better(first, again);
    let ceiling = &ceilings.judged;

    let mut poll = PollRate::from_timeline(
        &timeline,
        polls_at_ingest_end,
        after_ingest.cpu_seconds - before.cpu_seconds,
        ceiling,
    );
    let polled = poll.polls.saturating_sub(polls_at_ingest_end);
    poll.bytes_written_per_poll = match (end.write_bytes, after_ingest.write_bytes) {
        (Some(end), Some(start)) if polled > 0 => {
            Some(end.saturating_sub(start) as f64 / polled as f64)
        }
        _ => None,
    };
    let memory = Memory {
        peak_rss_mib: mib(end.peak_rss_kib),
        rss_at_end_mib: mib(end.rss_kib),
        ingest_cpu_seconds: after_ingest.cpu_seconds - before.cpu_seconds,
    };
    if main_store.postgres {
        poll.store_cpu_seconds_per_1000_polls =
            Some(postgres_cpu / (poll.polls.max(1) as f64 / 1000.0));
    }
    let latency = Latency::from_tally(&tally, n as u64, followed.elapsed().as_secs_f64());
    drop(sim);

    let limited = if args.limited_watches > 0 {
        Some(limited_run(args, &exe, &base, dir, &shutdown).await?)
    } else {
        None
    };

    Ok(Report::new(
        args,
        settings,
        ingest,
        ceilings,
        poll,
        memory,
        latency,
        limited,
        timeline,
        wall.elapsed().as_secs_f64(),
    ))
}

/// The rate-limited run: the simulator answers 429 past `--limited-rate`, the daemon
/// is configured to that rate, and the simulator's request log says how well it kept to it.
async fn limited_run(
    args: &BenchArgs,
    exe: &Path,
    base: &BTreeMap<String, String>,
    dir: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<RateLimited> {
    let limit = args.limited_rate;
    let n = args.limited_watches as usize;
    let (sim, sim_url) = start_simulator(
        SimulateArgs {
            rate_limit: Some(limit),
            keep_log: true,
            seed: args.seed,
            ..SimulateArgs::default()
        },
        shutdown,
    )
    .await?;
    let mut settings = base.clone();
    let store = RunStore::create(args, dir, "limited").await?;
    settings.insert("store.url".into(), store.url.clone());
    settings.insert("upstream.base_url".into(), sim_url);
    settings.insert("upstream.max_requests_per_second".into(), limit.to_string());
    if !args
        .set
        .iter()
        .any(|s| s.trim().starts_with("upstream.burst"))
    {
        // The daemon's default burst, not the main run's open one.
        settings.remove("upstream.burst");
    }
    let mut daemon = Daemons::start(exe, &settings, dir, "limited", args.replicas as usize).await?;
    progress(format_args!(
        "rate-limited run: {n} watches, limit {limit}/s at the simulator and the daemon, {:?}",
        args.limited_duration
    ));
    load::ingest(&daemon.url, LIMITED_PREFIX, n, args.chunk, 1, None).await?;
    let started = Instant::now();
    while started.elapsed() < args.limited_duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        daemon.check_alive()?;
    }
    let stopped = receiver::unix_ms(SystemTime::now());
    daemon.stop().await;
    store.drop_schema().await;
    let log = sim.request_log();
    Ok(RateLimited::from_log(
        &log,
        n as u64,
        limit,
        stopped,
        args.limited_settle,
    ))
}

/// Where one run's daemons keep their watches: a SQLite file in the work
/// directory, or a fresh schema of the PostgreSQL database of `--store`.
struct RunStore {
    url: String,
    postgres: bool,
    schema: Option<(String, String)>,
}

impl RunStore {
    async fn create(args: &BenchArgs, dir: &Path, name: &str) -> anyhow::Result<RunStore> {
        if args.store == "sqlite" {
            return Ok(RunStore {
                url: format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
                postgres: false,
                schema: None,
            });
        }
        let schema = format!(
            "jobwatch_bench_{name}_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let pool = sqlx::PgPool::connect(&args.store).await.with_context(|| {
            format!(
                "--store: connecting to {}",
                crate::store::redact_url(&args.store)
            )
        })?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&pool)
            .await
            .context("--store: creating the run's schema")?;
        pool.close().await;
        let sep = if args.store.contains('?') { '&' } else { '?' };
        Ok(RunStore {
            url: format!("{}{sep}options[search_path]={schema}", args.store),
            postgres: true,
            schema: Some((args.store.clone(), schema)),
        })
    }

    async fn drop_schema(&self) {
        if let Some((base, schema)) = &self.schema {
            if let Ok(pool) = sqlx::PgPool::connect(base).await {
                if let Err(e) = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                    .execute(&pool)
                    .await
                {
                    progress(format_args!("could not drop the schema {schema}: {e}"));
                }
                pool.close().await;
            }
        }
    }
}

/// How far behind the poller is, as the daemon's `/v1/status` says: running
/// watches whose poll was due more than 5 s ago and that the poller has not
/// claimed (read from its in-memory schedule; the counts beside it are index
/// scans). More than zero means it cannot keep up.
struct Backlog {
    http: reqwest::Client,
    url: String,
}

impl Backlog {
    fn new(daemon: &str) -> anyhow::Result<Backlog> {
        Ok(Backlog {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            url: format!("{daemon}/v1/status"),
        })
    }

    async fn count(&self) -> Option<i64> {
        let status: serde_json::Value = self
            .http
            .get(&self.url)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        status["watches"]["overdue"].as_i64()
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn progress(args: std::fmt::Arguments<'_>) {
    eprintln!("bench: {args}");
}
