//! `jobwatch bench --operating-point 2000,20000`: what a poll costs at the load
//! jobwatch is run at, not at saturation, beside the poller a team would write by
//! hand (`bench/peers/asyncio_poller.py`: asyncio and aiohttp, a task per job, one
//! session, 64 in flight).
//!
//! For each point one simulator (in this process, as for the main run) serves both:
//! first the daemon as a child process with N never-ending watches on a fixed 5 s
//! cadence, then the peer with the same N ids, one after the other, so that neither
//! shares the machine with the other. Each is measured over the same window after
//! the same warm-up: its CPU (utime + stime of its process tree, from `/proc`) and
//! the requests the simulator received meanwhile. Between the two, the floor:
//! hyper's client alone sending the same requests per second (`load::paced`), what
//! any poller on this machine pays for the requests themselves; a figure per poll
//! says as much about the machine as about the poller (BENCHMARKS.md, session 13).
//! Then the daemon alone with 100,000 watches whose first poll is an hour away:
//! what it costs to wait.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use super::daemon::{tree_cpu_seconds, Daemons};
use super::load::{self, Requests};
use super::{progress, start_simulator, BenchArgs, Simulator};
use crate::simulator::SimulateArgs;

/// Ids of this mode: RUNNING forever, so the load stays what the point says.
const PREFIX: &str = "running-op-";
/// The token both pollers send (the simulator requires it, as a real upstream would).
const TOKEN: &str = "bench-operating-point";
/// The fixed cadence of both pollers.
const CADENCE: Duration = Duration::from_secs(5);
/// The target of issue 21, printed beside the figures.
const TARGET_CPU_MS_PER_1000: f64 = 30.0;

#[derive(Debug, Clone, Serialize)]
pub struct OperatingReport {
    pub cadence_seconds: f64,
    pub warmup_seconds: f64,
    pub window_seconds: f64,
    pub cores: usize,
    pub target_cpu_ms_per_1000_polls: f64,
    pub points: Vec<Point>,
    pub idle: Option<Idle>,
    pub wall_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub watches: u32,
    /// What the cadence asks for: watches / 5 s.
    pub demand_polls_per_second: f64,
    pub jobwatch: Side,
    /// The least a poller pays here: hyper's pooled client alone, paced as the
    /// daemon polls, nothing parsed or stored ([`load::paced`]).
    pub floor: Side,
    pub peer: Option<Side>,
    /// The peer's CPU per poll over jobwatch's.
    pub peer_over_jobwatch: Option<f64>,
}

/// One poller over the window.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub polls: u64,
    pub polls_per_second: f64,
    pub cpu_seconds: f64,
    pub cpu_ms_per_1000_polls: f64,
    /// Its share of one core over the window.
    pub core_share: f64,
    pub rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub watches: u32,
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// The daemon's CPU as a share of one core.
    pub core_share: f64,
    /// Requests the simulator received meanwhile (none is due: 0 expected).
    pub polls: u64,
    pub rss_mib: f64,
}

impl OperatingReport {
    pub fn print(&self) {
        println!(
            "jobwatch bench --operating-point: never-ending watches on a fixed {:.0} s cadence, {} cores; warm-up {:.0} s, window {:.0} s (target: jobwatch <= {:.0} CPU-ms per 1,000 polls)",
            self.cadence_seconds, self.cores, self.warmup_seconds, self.window_seconds, self.target_cpu_ms_per_1000_polls
        );
        println!(
            "  {:>8}  {:>9}  {:>24}  {:>22}  {:>24}  {:>6}",
            "watches",
            "demand/s",
            "jobwatch polls/s, ms/1k",
            "floor polls/s, ms/1k",
            "asyncio polls/s, ms/1k",
            "ratio"
        );
        for p in &self.points {
            let j = &p.jobwatch;
            let (peer, ratio) = match (&p.peer, p.peer_over_jobwatch) {
                (Some(s), Some(r)) => (
                    format!("{:.0}, {:.1}", s.polls_per_second, s.cpu_ms_per_1000_polls),
                    format!("{r:.1}x"),
                ),
                _ => ("-".into(), "-".into()),
            };
            let f = &p.floor;
            println!(
                "  {:>8}  {:>9.0}  {:>24}  {:>22}  {:>24}  {:>6}",
                p.watches,
                p.demand_polls_per_second,
                format!("{:.0}, {:.1}", j.polls_per_second, j.cpu_ms_per_1000_polls),
                format!("{:.0}, {:.1}", f.polls_per_second, f.cpu_ms_per_1000_polls),
                peer,
                ratio
            );
        }
        if let Some(i) = &self.idle {
            println!(
                "  idle: {} watches far from due, {:.0} s: the daemon used {:.2}% of a core ({:.3} CPU s; {} polls; RSS {:.1} MiB)",
                i.watches,
                i.seconds,
                i.core_share * 100.0,
                i.cpu_seconds,
                i.polls,
                i.rss_mib
            );
        }
    }
}

/// The peer's program and script.
struct Peer {
    python: String,
    script: PathBuf,
}

impl Peer {
    fn find(args: &BenchArgs) -> anyhow::Result<Option<Peer>> {
        if args.peer == "none" {
            return Ok(None);
        }
        // As given (relative to where the bench runs), else in the source tree
        // this binary was built from.
        let given = PathBuf::from(&args.peer_script);
        let script = if given.is_file() {
            given
        } else {
            let built = Path::new(env!("CARGO_MANIFEST_DIR")).join(&args.peer_script);
            if !built.is_file() {
                bail!(
                    "--peer-script {}: not found (run from the repository, or pass its path; --peer none skips the peer)",
                    args.peer_script
                );
            }
            built
        };
        Ok(Some(Peer {
            python: args.peer.clone(),
            script,
        }))
    }
}

pub async fn run(
    args: &BenchArgs,
    base: &BTreeMap<String, String>,
    dir: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<OperatingReport> {
    let exe = std::env::current_exe().context("finding this program to run its `serve`")?;
    let peer = Peer::find(args)?;
    let wall = Instant::now();
    let mut points = Vec::new();
    for &n in &args.operating_point {
        let (sim, url) = start_simulator(
            SimulateArgs {
                token: Some(TOKEN.into()),
                seed: args.seed,
                ..SimulateArgs::default()
            },
            shutdown,
        )
        .await?;
        let mut settings = base.clone();
        for (k, v) in [
            ("poller.initial_interval", "5s"),
            ("poller.max_interval", "5s"),
            ("poller.jitter", "0.02"),
            ("upstream.token", TOKEN),
        ] {
            settings.entry(k.into()).or_insert_with(|| v.into());
        }
        settings.insert("upstream.base_url".into(), url.clone());
        let name = format!("op-{n}");
        settings.insert(
            "store.url".into(),
            format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
        );
        let jobwatch = jobwatch_side(args, &exe, &settings, dir, &name, &sim, n).await?;
        progress(format_args!(
            "{n} watches: jobwatch {:.0} polls/s, {:.1} CPU-ms per 1,000 polls",
            jobwatch.polls_per_second, jobwatch.cpu_ms_per_1000_polls
        ));
        let floor = floor_side(args, &exe, &url, &sim, n).await?;
        progress(format_args!(
            "{n} watches: floor (hyper's client alone) {:.0} polls/s, {:.1} CPU-ms per 1,000 polls",
            floor.polls_per_second, floor.cpu_ms_per_1000_polls
        ));
        let peer_side = match &peer {
            Some(p) => {
                let s = peer_side(args, p, &url, &sim, n).await?;
                progress(format_args!(
                    "{n} watches: asyncio peer {:.0} polls/s, {:.1} CPU-ms per 1,000 polls",
                    s.polls_per_second, s.cpu_ms_per_1000_polls
                ));
                Some(s)
            }
            None => None,
        };
        let ratio = peer_side.as_ref().map(|p| {
            p.cpu_ms_per_1000_polls / jobwatch.cpu_ms_per_1000_polls.max(f64::MIN_POSITIVE)
        });
        points.push(Point {
            watches: n,
            demand_polls_per_second: f64::from(n) / CADENCE.as_secs_f64(),
            jobwatch,
            floor,
            peer: peer_side,
            peer_over_jobwatch: ratio,
        });
    }
    let idle = if args.idle_watches > 0 {
        Some(idle(args, &exe, base, dir, shutdown).await?)
    } else {
        None
    };
    Ok(OperatingReport {
        cadence_seconds: CADENCE.as_secs_f64(),
        warmup_seconds: args.warmup.as_secs_f64(),
        window_seconds: args.duration.as_secs_f64(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        target_cpu_ms_per_1000_polls: TARGET_CPU_MS_PER_1000,
        points,
        idle,
        wall_seconds: wall.elapsed().as_secs_f64(),
    })
}

/// POST the ids over one cadence, in ten chunks, so that the first polls (and so
/// every later one) are spread as the peer spreads its tasks' first polls.
async fn paced_ingest(url: &str, n: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let parts = 10;
    let chunk = n.div_ceil(parts).max(1);
    let started = tokio::time::Instant::now();
    for (i, from) in (0..n).step_by(chunk).enumerate() {
        tokio::time::sleep_until(started + CADENCE.mul_f64(i as f64 / parts as f64)).await;
        let ids: Vec<String> = (from..(from + chunk).min(n))
            .map(|i| load::id(PREFIX, i))
            .collect();
        let r = http
            .post(format!("{url}/v1/jobs"))
            .json(&serde_json::json!({"kind": "copy", "ids": ids}))
            .send()
            .await
            .context("POST /v1/jobs")?;
        if r.status().as_u16() != 202 {
            bail!("POST /v1/jobs answered {}", r.status());
        }
    }
    Ok(())
}

async fn jobwatch_side(
    args: &BenchArgs,
    exe: &Path,
    settings: &BTreeMap<String, String>,
    dir: &Path,
    name: &str,
    sim: &Simulator,
    n: u32,
) -> anyhow::Result<Side> {
    let mut daemon = Daemons::start(exe, settings, dir, name, 1).await?;
    progress(format_args!(
        "{n} watches: jobwatch (pid {}), ingest over {CADENCE:?}, warm-up {:?}, window {:?}",
        daemon.pids(),
        args.warmup,
        args.duration
    ));
    paced_ingest(&daemon.url, n as usize).await?;
    tokio::time::sleep(args.warmup).await;
    daemon.check_alive()?;
    let pid = daemon.first_pid();
    let window = measure(pid, sim, args.duration).await;
    daemon.check_alive()?;
    let rss = daemon.sample().map_or(0.0, |s| super::mib(s.rss_kib));
    daemon.stop().await;
    Ok(side(window.polls, window.cpu_seconds, window.seconds, rss))
}

/// The floor: `exe bench-ceiling --rate` at the point's demand, measured as the
/// daemon is.
async fn floor_side(
    args: &BenchArgs,
    exe: &Path,
    url: &str,
    sim: &Simulator,
    n: u32,
) -> anyhow::Result<Side> {
    let rate = f64::from(n) / CADENCE.as_secs_f64();
    let runs = args.duration + Duration::from_secs(1);
    let batch_every = crate::poller::step_gap(CADENCE);
    let child = load::ceiling_command(exe, url, Requests::Minimal, args.warmup, runs)
        .arg("--rate")
        .arg(rate.to_string())
        .arg("--batch-every")
        .arg(humantime::format_duration(batch_every).to_string())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} bench-ceiling --rate", exe.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("the floor client exited at once"))?;
    tokio::time::sleep(args.warmup).await;
    let window = measure(pid, sim, args.duration).await;
    let rss = super::daemon::proc_sample(pid).map_or(0.0, |s| super::mib(s.rss_kib));
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("the floor client did not stop")??;
    if !out.status.success() {
        bail!(
            "the floor client exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(side(window.polls, window.cpu_seconds, window.seconds, rss))
}

async fn peer_side(
    args: &BenchArgs,
    peer: &Peer,
    url: &str,
    sim: &Simulator,
    n: u32,
) -> anyhow::Result<Side> {
    // It runs the warm-up and the window, and a little more so that the window
    // ends before it stops its tasks.
    let runs = args.warmup + args.duration + Duration::from_secs(3);
    let mut child = tokio::process::Command::new(&peer.python)
        .arg(&peer.script)
        .args(["--base", url, "--token", TOKEN, "--duration"])
        .arg(runs.as_secs_f64().to_string())
        .arg("--cadence")
        .arg(CADENCE.as_secs_f64().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting the peer: {} {}",
                peer.python,
                peer.script.display()
            )
        })?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("the peer exited at once"))?;
    progress(format_args!(
        "{n} watches: asyncio peer (pid {pid}), warm-up {:?}, window {:?}",
        args.warmup, args.duration
    ));
    {
        let mut ids = Vec::with_capacity(n as usize * 20);
        for i in 0..n as usize {
            writeln!(ids, "{}", load::id(PREFIX, i))?;
        }
        let mut stdin = child.stdin.take().context("the peer's stdin")?;
        tokio::io::AsyncWriteExt::write_all(&mut stdin, &ids).await?;
        // Dropped: end of input, the peer starts its tasks.
    }
    let stdout = child.stdout.take().context("the peer's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let started = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
    if !matches!(started, Ok(Ok(Some(_)))) {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        bail!("the peer did not start (is aiohttp installed? `pip install -r .ci/requirements.txt`): {err}");
    }
    tokio::time::sleep(args.warmup).await;
    let window = measure(pid, sim, args.duration).await;
    let rss = super::daemon::proc_sample(pid).map_or(0.0, |s| super::mib(s.rss_kib));
    let summary = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    match summary {
        Ok(Ok(Some(line))) => progress(format_args!("the peer says: {line}")),
        _ => progress(format_args!("the peer printed no summary")),
    }
    Ok(side(window.polls, window.cpu_seconds, window.seconds, rss))
}

/// What one poller spent and did over a window.
struct Window {
    polls: u64,
    cpu_seconds: f64,
    seconds: f64,
}

/// The CPU of `pid`'s process tree and the requests the simulator received, over
/// `window` from now.
async fn measure(pid: u32, sim: &Simulator, window: Duration) -> Window {
    let (cpu0, polls0, t0) = (
        tree_cpu_seconds(pid),
        sim.requests_received(),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    Window {
        polls: sim.requests_received() - polls0,
        cpu_seconds: tree_cpu_seconds(pid) - cpu0,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

fn side(polls: u64, cpu_seconds: f64, seconds: f64, rss_mib: f64) -> Side {
    Side {
        polls,
        polls_per_second: polls as f64 / seconds.max(1e-9),
        cpu_seconds,
        cpu_ms_per_1000_polls: cpu_seconds * 1000.0 / (polls.max(1) as f64 / 1000.0),
        core_share: cpu_seconds / seconds.max(1e-9),
        rss_mib,
    }
}

/// The daemon with `--idle-watches` whose first poll is an hour away.
async fn idle(
    args: &BenchArgs,
    exe: &Path,
    base: &BTreeMap<String, String>,
    dir: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<Idle> {
    let n = args.idle_watches;
    let (sim, url) = start_simulator(
        SimulateArgs {
            token: Some(TOKEN.into()),
            ..SimulateArgs::default()
        },
        shutdown,
    )
    .await?;
    let mut settings = base.clone();
    settings.insert("poller.initial_interval".into(), "1h".into());
    settings.insert("poller.max_interval".into(), "1h".into());
    settings.insert("upstream.token".into(), TOKEN.into());
    settings.insert("upstream.base_url".into(), url);
    settings.insert(
        "store.url".into(),
        format!("sqlite://{}", dir.join("idle.db").display()),
    );
    let mut daemon = Daemons::start(exe, &settings, dir, "idle", 1).await?;
    progress(format_args!(
        "idle: {n} watches due in an hour (pid {}), settle {:?}, window {:?}",
        daemon.pids(),
        args.warmup,
        args.idle_duration
    ));
    load::ingest(&daemon.url, PREFIX, n as usize, args.chunk, 1, None).await?;
    tokio::time::sleep(args.warmup).await;
    let pid = daemon.first_pid();
    let window = measure(pid, &sim, args.idle_duration).await;
    daemon.check_alive()?;
    let rss = daemon.sample().map_or(0.0, |s| super::mib(s.rss_kib));
    daemon.stop().await;
    let (cpu, secs) = (window.cpu_seconds, window.seconds);
    progress(format_args!(
        "idle: {:.2}% of a core",
        cpu / secs.max(1e-9) * 100.0
    ));
    Ok(Idle {
        watches: n,
        seconds: secs,
        cpu_seconds: cpu,
        core_share: cpu / secs.max(1e-9),
        polls: window.polls,
        rss_mib: rss,
    })
}
