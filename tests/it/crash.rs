//! Issue 5: `kill -9` at random moments loses nothing acknowledged.
//!
//! The daemon runs as the real binary in a child process (so that SIGKILL is a
//! real SIGKILL), against the in-process simulator and receivers. [`Proc`] and
//! [`ConfigFile`] are also what `durability.rs` uses for signals and start-up checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jobwatch::simulator::SimulateArgs;
use jobwatch::webhook::sign::SigningSecret;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::helpers::{answer, Sim};
use crate::receiver::{Plan, Received, TestReceiver};

/// A TOML configuration for `jobwatch serve --config`: the store, the simulator
/// as upstream, a fast cadence, then whatever a test adds.
pub struct ConfigFile {
    sections: BTreeMap<&'static str, Vec<String>>,
    tail: String,
}

impl ConfigFile {
    pub fn new(db: &Path, upstream: &str) -> ConfigFile {
        let mut c = ConfigFile {
            sections: BTreeMap::new(),
            tail: String::new(),
        };
        c.set("store", "url", &format!("sqlite://{}", db.display()));
        c.set("upstream", "base_url", upstream);
        c.raw("upstream", "max_requests_per_second = 2000.0");
        c.raw("upstream", "burst = 200");
        c.set("upstream", "request_timeout", "5s");
        c.set("upstream", "error_backoff_base", "50ms");
        c.set("upstream", "error_backoff_max", "500ms");
        c.set("upstream", "min_retry_after", "100ms");
        c.set("poller", "initial_interval", "100ms");
        c.set("poller", "max_interval", "400ms");
        c.set("poller", "not_found_grace", "300ms");
        c.set("api", "shutdown_grace", "3s");
        c.set("log", "level", "warn");
        c
    }

    /// `key = "value"` in `[section]`.
    pub fn set(&mut self, section: &'static str, key: &str, value: &str) -> &mut Self {
        self.raw(section, &format!("{key} = {value:?}"))
    }

    /// A literal `key = value` TOML line in `[section]`, replacing the key's earlier line.
    pub fn raw(&mut self, section: &'static str, line: &str) -> &mut Self {
        let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
        let lines = self.sections.entry(section).or_default();
        lines.retain(|l| key(l) != key(line));
        lines.push(line.to_string());
        self
    }

    /// A configured endpoint (`[[webhooks.endpoints]]`).
    pub fn endpoint(&mut self, url: &str, secret: &SigningSecret, events: &[&str]) -> &mut Self {
        self.tail.push_str(&format!(
            "\n[[webhooks.endpoints]]\nurl = {url:?}\nsecret = {:?}\n",
            secret.to_whsec()
        ));
        if !events.is_empty() {
            self.tail.push_str(&format!(
                "events = {}\n",
                serde_json::to_string(events).unwrap()
            ));
        }
        self
    }

    pub fn write(&self, path: &Path) -> PathBuf {
        let mut text = String::new();
        for (section, lines) in &self.sections {
            text.push_str(&format!("[{section}]\n"));
            for l in lines {
                text.push_str(l);
                text.push('\n');
            }
            text.push('\n');
        }
        text.push_str(&self.tail);
        std::fs::write(path, text).expect("write the test configuration");
        path.to_path_buf()
    }
}

/// Last lines of a child's stderr kept for messages.
const LOG_LINES_KEPT: usize = 4000;

/// `jobwatch serve --config FILE` as a child process on a free port of 127.0.0.1.
/// Killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub struct Proc {
    child: Option<std::process::Child>,
    pub url: String,
    pub client: reqwest::Client,
    log: Arc<Mutex<Vec<String>>>,
    /// Where stderr goes instead of `log`, when it goes to a file.
    log_file: Option<PathBuf>,
}

/// How to start the child, beyond its configuration.
#[derive(Default, Clone, Copy)]
pub struct Options<'a> {
    /// A write past a file-size limit fails with EFBIG instead of killing the
    /// process (SIGXFSZ ignored), as when a disk is full (see `durability.rs`).
    pub ignore_sigxfsz: bool,
    /// Send stderr to this file (appending) rather than to a pipe.
    pub log_file: Option<&'a Path>,
}

fn command(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobwatch"));
    cmd.arg("serve").arg("--config").arg(config);
    // Only the file speaks: no setting leaks in from the environment of the test run.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("JOBWATCH") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

/// Reads a child's stderr into `log` until it closes (a full pipe would stall the child).
fn drain(stderr: std::process::ChildStderr, log: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() >= LOG_LINES_KEPT {
                log.remove(0);
            }
            log.push(line);
        }
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Proc {
    /// Starts the daemon and waits until `/healthz` answers.
    pub async fn start(config: &Path) -> Proc {
        Proc::start_with(config, Options::default()).await
    }

    /// As `start`, with `options`.
    pub async fn start_with(config: &Path, options: Options<'_>) -> Proc {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        // The port is free when looked at; if someone takes it before the child binds
        // it, the child says so (`api.listen`) and another one is tried.
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = command(config);
            cmd.env("JOBWATCH__API__LISTEN", format!("127.0.0.1:{port}"));
            if options.ignore_sigxfsz {
                use std::os::unix::process::CommandExt;
                // SAFETY: between fork and exec only `signal`, which is async-signal-safe;
                // an ignored disposition survives exec.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                        Ok(())
                    });
                }
            }
            match options.log_file {
                Some(path) => {
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("open the log file");
                    cmd.stderr(file);
                }
                None => {
                    cmd.stderr(Stdio::piped());
                }
            }
            let mut child = cmd.spawn().expect("spawn jobwatch serve");
            let log = Arc::new(Mutex::new(Vec::new()));
            if let Some(stderr) = child.stderr.take() {
                drain(stderr, log.clone());
            }
            let mut proc = Proc {
                child: Some(child),
                url: format!("http://127.0.0.1:{port}"),
                client: client.clone(),
                log,
                log_file: options.log_file.map(Path::to_path_buf),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = proc.try_exit() {
                    let log = proc.log();
                    if log.contains("api.listen") {
                        break; // the port was taken: try another
                    }
                    panic!("jobwatch serve exited at start ({status}):\n{log}");
                }
                if let Ok(r) = proc
                    .client
                    .get(format!("{}/healthz", proc.url))
                    .send()
                    .await
                {
                    if r.status() == 200 {
                        return proc;
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "jobwatch serve did not answer /healthz within 30 s:\n{}",
                    proc.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("jobwatch serve found no free port in 5 tries");
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends `sig` (SIGTERM, SIGINT, ...) to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL on unix
            let _ = c.wait();
        }
    }

    /// The exit status if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the child to exit by itself; panics (with its log) after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_exit() {
                self.child = None;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "jobwatch did not exit within {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What it wrote to stderr so far (the last lines).
    pub fn log(&self) -> String {
        if let Some(path) = &self.log_file {
            return std::fs::read_to_string(path).unwrap_or_default();
        }
        // Give the reader thread a moment to catch up with a child that just wrote.
        std::thread::sleep(Duration::from_millis(20));
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    pub async fn post_jobs(&self, body: &Value) -> reqwest::Result<(u16, Value)> {
        let r = self
            .client
            .post(format!("{}/v1/jobs", self.url))
            .json(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let request = self.client.get(format!("{}{path}", self.url));
        answer(request, &format!("GET {path}")).await
    }

    /// Every watch, through the paginated listing.
    pub async fn all_watches(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = self
                .get(&format!("/v1/jobs?limit=1000&cursor={cursor}"))
                .await;
            assert_eq!(status, 200, "GET /v1/jobs: {page}");
            all.extend(page["jobs"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_string(),
                None => return all,
            }
        }
    }

    /// Waits until no watch runs and no delivery is pending or retrying.
    pub async fn wait_settled(&self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, s) = self.get("/v1/status").await;
            if s["watches"]["running"] == 0 && s["webhooks"]["backlog"] == 0 {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "not settled after {within:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `jobwatch serve` on `config` until it exits by itself (a refused start);
/// panics if it is still running after `within`.
pub async fn serve_until_exit(config: &Path, within: Duration) -> (ExitStatus, String) {
    let mut cmd = command(config);
    cmd.env("JOBWATCH__API__LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn jobwatch serve");
    let log = Arc::new(Mutex::new(Vec::new()));
    drain(child.stderr.take().expect("stderr is piped"), log.clone());
    let mut proc = Proc {
        child: Some(child),
        url: String::new(),
        client: reqwest::Client::new(),
        log,
        log_file: None,
    };
    let status = proc.wait_exit(within).await;
    (status, proc.log())
}

// ---------------------------------------------------------------------------
// The crash test.

/// Prefixes whose outcome the simulator fixes, with the outcome and event type.
pub const PREFIXES: [(&str, &str, &str); 7] = [
    ("succeed-", "succeeded", "job.succeeded"),
    ("done-", "succeeded", "job.succeeded"),
    ("failed-", "failed", "job.failed"),
    ("failure-", "failed", "job.failed"),
    ("doneerr-", "failed", "job.failed"),
    ("badrequest-", "rejected", "job.rejected"),
    ("notfound-", "not_found", "job.not_found"),
];
/// The configured endpoint hears of these only; the watch URL hears of everything.
const OPS_EVENTS: [&str; 2] = ["job.failed", "job.not_found"];
const MIN_WATCHES: usize = 2000;
const MIN_KILLS: usize = 12;
const MAX_KILLS: usize = 40;

fn expected(id: &str) -> (&'static str, &'static str) {
    PREFIXES
        .iter()
        .find(|(p, _, _)| id.starts_with(p))
        .map(|(_, o, t)| (*o, *t))
        .unwrap_or_else(|| panic!("{id} has no known prefix"))
}

struct Batch {
    kind: &'static str,
    ids: Vec<String>,
}

#[derive(Default)]
struct PostStats {
    attempts: AtomicU64,
    /// Sent (connected) but no answer arrived: a kill cut it.
    unanswered: AtomicU64,
    refused: AtomicU64,
    acked: AtomicU64,
    new: AtomicU64,
    already: AtomicU64,
}

/// Posts every batch until it is answered 202, through whichever daemon is up.
async fn post_all(
    batches: Vec<Batch>,
    hook_url: String,
    url: Arc<RwLock<String>>,
    in_flight: Arc<AtomicBool>,
    stats: Arc<PostStats>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    for batch in batches {
        let body = json!({"kind": batch.kind, "ids": batch.ids, "webhook_url": hook_url});
        loop {
            let base = url.read().unwrap_or_else(|e| e.into_inner()).clone();
            stats.attempts.fetch_add(1, Ordering::Relaxed);
            in_flight.store(true, Ordering::SeqCst);
            let answer = async {
                let r = client
                    .post(format!("{base}/v1/jobs"))
                    .json(&body)
                    .send()
                    .await?;
                let status = r.status().as_u16();
                Ok::<_, reqwest::Error>((status, r.json::<Value>().await?))
            }
            .await;
            in_flight.store(false, Ordering::SeqCst);
            match answer {
                Ok((202, b)) => {
                    stats
                        .acked
                        .fetch_add(batch.ids.len() as u64, Ordering::Relaxed);
                    stats
                        .new
                        .fetch_add(b["new"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    stats.already.fetch_add(
                        b["already_watching"].as_u64().unwrap_or(0),
                        Ordering::Relaxed,
                    );
                    break;
                }
                Ok((status, b)) => panic!("POST /v1/jobs answered {status}: {b}"),
                Err(e) if e.is_connect() => {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    stats.unanswered.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..450))).await;
    }
}

/// One event as a receiver got it.
struct Heard<'a> {
    r: &'a Received,
    kind: String,
    id: String,
    generation: i64,
}

fn heard(rs: &[Received]) -> Vec<Heard<'_>> {
    rs.iter()
        .map(|r| Heard {
            r,
            kind: r.body["data"]["kind"].as_str().unwrap_or("").to_string(),
            id: r.body["data"]["id"].as_str().unwrap_or("").to_string(),
            generation: r.body["data"]["generation"].as_i64().unwrap_or(0),
        })
        .collect()
}

fn millis(rfc3339: &Value) -> i64 {
    let s = rfc3339
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {rfc3339}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_millis()
}

/// `(kind, id)` of a status request path `/products/{id}/search/{kind}/status`.
fn polled(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/products/")?;
    let (id, tail) = rest.split_once("/search/")?;
    let kind = tail.strip_suffix("/status")?;
    Some((kind.to_string(), id.to_string()))
}

#[derive(Clone, Copy)]
enum Mode {
    Timer,
    MidPost,
    MidDelivery,
}

/// Kills by the moment they hit (a POST or a delivery seen in flight just before).
#[derive(Default, Debug)]
struct Kills {
    timer: usize,
    mid_post: usize,
    mid_delivery: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    let started = Instant::now();
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test seed {seed}: replay with CRASH_SEED={seed} cargo test --test it crash::");
    let mut rng = StdRng::seed_from_u64(seed);

    let sim = Sim::start(SimulateArgs {
        seed,
        min_running: Duration::from_millis(100),
        max_running: Duration::from_millis(700),
        ..Sim::fast()
    })
    .await;
    let watch_secret = SigningSecret::generate();
    let ops_secret = SigningSecret::generate();
    let hooks = TestReceiver::start(Some(watch_secret.clone())).await;
    let ops = TestReceiver::start(Some(ops_secret.clone())).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("jobwatch.db");
    let mut cfg = ConfigFile::new(&db, &sim.url);
    cfg.set("webhooks", "signing_secret", &watch_secret.to_whsec())
        .raw("webhooks", "allow_private_targets = true")
        .raw("webhooks", "max_in_flight = 64")
        .set("webhooks", "request_timeout", "5s")
        // Longer than any run of receiver failures below: nothing may go dead.
        .raw(
            "webhooks",
            r#"retry_schedule = ["50ms", "100ms", "200ms", "300ms", "500ms", "1s", "1s", "1s", "1s", "1s", "1s", "1s"]"#,
        )
        .endpoint(&ops.url, &ops_secret, &OPS_EVENTS);
    let config = cfg.write(&dir.path().join("jobwatch.toml"));

    // The watches, in batches of one kind each.
    let mut batches = Vec::new();
    let mut total = 0;
    while total < MIN_WATCHES {
        let kind = if rng.random_bool(0.5) {
            "copy"
        } else {
            "delete"
        };
        let n = rng.random_range(80..=220);
        let ids = (total..total + n)
            .map(|i| format!("{}{i:05}", PREFIXES[rng.random_range(0..PREFIXES.len())].0))
            .collect();
        batches.push(Batch { kind, ids });
        total += n;
    }
    // The first two batches again at the end: what ended by then starts a new
    // generation, with its own events.
    for again in 0..2 {
        batches.push(Batch {
            kind: batches[again].kind,
            ids: batches[again].ids.clone(),
        });
    }
    let sent: usize = batches.iter().map(|b| b.ids.len()).sum();
    let posted: HashSet<(String, String)> = batches
        .iter()
        .flat_map(|b| b.ids.iter().map(|id| (b.kind.to_string(), id.clone())))
        .collect();
    let n_batches = batches.len();

    let mut proc = Proc::start(&config).await;
    let url = Arc::new(RwLock::new(proc.url.clone()));
    let in_flight = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(PostStats::default());
    let poster = tokio::spawn(post_all(
        batches,
        hooks.url.clone(),
        url.clone(),
        in_flight.clone(),
        stats.clone(),
        seed,
    ));

    let mut kills = Kills::default();
    let mut n_kills = 0;
    while n_kills < MIN_KILLS || !poster.is_finished() {
        assert!(
            n_kills < MAX_KILLS,
            "the posts did not finish within {MAX_KILLS} kills"
        );
        let round = Instant::now();
        // Each third round aims at a POST, each third at a delivery (until a few of
        // each were hit); the rest kill at a random moment.
        let mode = match n_kills % 3 {
            1 if kills.mid_post < 4 && !poster.is_finished() => Mode::MidPost,
            2 if kills.mid_delivery < 4 => Mode::MidDelivery,
            _ => Mode::Timer,
        };
        // How receivers answer this round: at once, slowly (deliveries stay in
        // flight long enough to be cut), or a short run of failures (retries).
        let plan = match (mode, rng.random_range(0..3)) {
            (Mode::MidDelivery, _) | (_, 1) => {
                Plan::Slow(Duration::from_millis(rng.random_range(20..80)))
            }
            (_, 0) => Plan::Ok,
            _ => Plan::FailTimes(rng.random_range(1..6), 503),
        };
        hooks.respond_with(plan.clone());
        ops.respond_with(plan);
        match mode {
            Mode::MidPost => {
                // Right after a POST was sent, before its answer.
                let deadline = Instant::now() + Duration::from_secs(3);
                while !in_flight.load(Ordering::SeqCst) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                std::thread::sleep(Duration::from_micros(rng.random_range(0..4000)));
                if in_flight.load(Ordering::SeqCst) {
                    kills.mid_post += 1;
                } else {
                    kills.timer += 1;
                }
            }
            Mode::MidDelivery => {
                // While a receiver holds a request open.
                let deadline = Instant::now() + Duration::from_secs(3);
                let open = |rx: &TestReceiver| {
                    rx.received().iter().any(|r| r.at >= round && r.status == 0)
                };
                let mut found = false;
                while !found && Instant::now() < deadline {
                    found = open(&hooks) || open(&ops);
                    if !found {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                if found {
                    kills.mid_delivery += 1;
                } else {
                    kills.timer += 1;
                }
            }
            Mode::Timer => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(150..1200))).await;
                kills.timer += 1;
            }
        }
        proc.kill();
        n_kills += 1;
        proc = Proc::start(&config).await;
        *url.write().unwrap_or_else(|e| e.into_inner()) = proc.url.clone();
    }
    poster.await.expect("the poster finished");
    let chaos = started.elapsed();

    // Settle on the last daemon, receivers answering at once.
    hooks.respond_with(Plan::Ok);
    ops.respond_with(Plan::Ok);
    let status = proc.wait_settled(Duration::from_secs(60)).await;
    let settled = started.elapsed();

    // 1. Every acknowledged watch exists with its right outcome; nothing else exists.
    let watches = proc.all_watches().await;
    let mut latest: HashMap<(String, String), &Value> = HashMap::new();
    for w in &watches {
        let key = (
            w["kind"].as_str().unwrap().to_string(),
            w["id"].as_str().unwrap().to_string(),
        );
        assert!(posted.contains(&key), "a watch nobody posted: {w}");
        let (outcome, _) = expected(&key.1);
        assert_eq!(w["outcome"], outcome, "{w}");
        latest.insert(key, w);
    }
    let acked = stats.acked.load(Ordering::Relaxed) as usize;
    assert_eq!(acked, sent, "every batch was answered 202 in the end");
    let missing: Vec<_> = posted.iter().filter(|k| !latest.contains_key(*k)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    // The status counts (counters kept by the store's triggers) survived the kills too.
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    for w in &watches {
        *by_outcome
            .entry(w["outcome"].as_str().unwrap_or("none").to_string())
            .or_default() += 1;
    }
    let counted: BTreeMap<String, u64> = status["watches"]["ended_by_outcome"]
        .as_object()
        .expect("ended_by_outcome")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(u64::MAX)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        counted, by_outcome,
        "status counts against the watches: {status}"
    );

    // 2. Every generation's event reached every matching endpoint, under one webhook-id.
    let hooks_got = hooks.received();
    let ops_got = ops.received();
    let mut generations: HashMap<(String, String), BTreeMap<i64, &Value>> = HashMap::new();
    for (name, got) in [("watch url", &hooks_got), ("endpoint", &ops_got)] {
        let mut ids_of: HashMap<(String, String, i64), HashSet<&str>> = HashMap::new();
        for h in heard(got) {
            assert!(
                h.r.verify_error.is_none(),
                "{name}: a request that does not verify: {:?}",
                h.r.verify_error
            );
            let key = (h.kind.clone(), h.id.clone());
            let w = latest
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: an event of an unknown watch: {}", h.r.body));
            assert!(
                h.generation >= 1 && h.generation <= w["generation"].as_i64().unwrap(),
                "{name}: an event of generation {} of {w}",
                h.generation
            );
            let (outcome, event_type) = expected(&h.id);
            assert_eq!(h.r.body["type"], event_type, "{name}: {}", h.r.body);
            assert_eq!(h.r.body["data"]["outcome"], outcome, "{name}: {}", h.r.body);
            if name == "endpoint" {
                assert!(
                    OPS_EVENTS.contains(&event_type),
                    "the endpoint got {event_type}"
                );
            }
            ids_of
                .entry((h.kind.clone(), h.id.clone(), h.generation))
                .or_default()
                .insert(h.r.webhook_id.as_str());
            if name == "watch url" {
                generations
                    .entry(key)
                    .or_default()
                    .insert(h.generation, &h.r.body["data"]);
            }
        }
        for (key, ids) in &ids_of {
            assert_eq!(
                ids.len(),
                1,
                "{name}: {key:?} came under several webhook-ids: {ids:?}"
            );
        }
        let delivered: HashSet<(String, String, i64)> = heard(got)
            .into_iter()
            .filter(|h| h.r.ok)
            .map(|h| (h.kind, h.id, h.generation))
            .collect();
        for (key, w) in &latest {
            let (_, event_type) = expected(&key.1);
            if name == "endpoint" && !OPS_EVENTS.contains(&event_type) {
                continue;
            }
            for g in 1..=w["generation"].as_i64().unwrap() {
                assert!(
                    delivered.contains(&(key.0.clone(), key.1.clone(), g)),
                    "{name}: generation {g} of {w} was never delivered"
                );
            }
        }
    }

    // 3. The daemon's counts agree with what the receivers got.
    let ok_ids: HashSet<&str> = hooks_got
        .iter()
        .chain(&ops_got)
        .filter(|r| r.ok)
        .map(|r| r.webhook_id.as_str())
        .collect();
    let d = &status["webhooks"]["deliveries"];
    assert_eq!(
        d["delivered"],
        ok_ids.len(),
        "delivered per the daemon vs distinct webhook-ids received: {status}"
    );
    for s in ["pending", "retrying", "dead", "gone"] {
        assert_eq!(d[s], 0, "{s}: {status}");
    }
    let events: usize = latest
        .iter()
        .map(|(key, w)| {
            let per_event = 1 + usize::from(OPS_EVENTS.contains(&expected(&key.1).1));
            per_event * w["generation"].as_u64().unwrap() as usize
        })
        .sum();
    assert_eq!(ok_ids.len(), events, "one delivery per event and endpoint");

    // 4. No watch was polled after its outcome was stored. Each generation is polled
    // only between its watched_at and its ended_at (both from its event body). A poll
    // arrives at the simulator before its answer decides the outcome (ended_at is
    // taken after the answer), so a poll after ended_at can only come from a daemon
    // that polled an ended watch. The slack covers ended_at's truncation to whole ms.
    const SLACK_MS: f64 = 2.0;
    let mut polls: HashMap<(String, String), Vec<f64>> = HashMap::new();
    for r in sim.sim.request_log() {
        if let Some(key) = polled(&r.path) {
            if r.status != 429 {
                polls.entry(key).or_default().push(r.t_ms);
            }
        }
    }
    let mut total_polls = 0usize;
    let mut stored_polls = 0i64;
    for (key, times) in &polls {
        let gens = generations
            .get(key)
            .unwrap_or_else(|| panic!("{key:?} was polled but has no event"));
        total_polls += times.len();
        stored_polls += gens
            .values()
            .map(|d| d["poll_count"].as_i64().unwrap())
            .sum::<i64>();
        for t in times {
            let inside = gens.values().any(|d| {
                millis(&d["watched_at"]) as f64 - SLACK_MS <= *t
                    && *t <= millis(&d["ended_at"]) as f64 + SLACK_MS
            });
            assert!(
                inside,
                "{key:?} was polled at {t} outside its generations: {gens:?}"
            );
        }
    }
    assert!(
        total_polls as i64 >= stored_polls,
        "the store counts more polls ({stored_polls}) than the simulator saw ({total_polls})"
    );

    // 5. The kills did hit the moments they aimed at.
    let cut = hooks_got
        .iter()
        .chain(&ops_got)
        .filter(|r| r.status == 0)
        .count();
    assert!(
        stats.unanswered.load(Ordering::Relaxed) > 0,
        "no POST was cut by a kill: {kills:?}"
    );
    assert!(cut > 0, "no delivery was cut by a kill: {kills:?}");

    // 6. And a clean stop still exits 0.
    proc.signal(libc::SIGTERM);
    let exit = proc.wait_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "exit after SIGTERM: {exit}\n{}", proc.log());

    let requests = hooks_got.len() + ops_got.len();
    let ok_requests = hooks_got.iter().chain(&ops_got).filter(|r| r.ok).count();
    let regenerated = latest
        .values()
        .filter(|w| w["generation"].as_i64() > Some(1))
        .count();
    println!(
        "crash test seed {seed}: {n_kills} kills ({kills:?}); {total} watches in {n_batches} batches, \
         {} POST attempts ({} cut by a kill, {} refused while down; {} new, {} already watching, \
         {regenerated} watches re-posted after they ended); {requests} webhook requests, \
         {ok_requests} answered 2xx for {} deliveries ({} duplicates), {cut} cut by a kill; \
         {total_polls} polls, {} of them redone after a kill; chaos {:.1} s, settled at {:.1} s, total {:.1} s",
        stats.attempts.load(Ordering::Relaxed),
        stats.unanswered.load(Ordering::Relaxed),
        stats.refused.load(Ordering::Relaxed),
        stats.new.load(Ordering::Relaxed),
        stats.already.load(Ordering::Relaxed),
        ok_ids.len(),
        ok_requests - ok_ids.len(),
        total_polls as i64 - stored_polls,
        chaos.as_secs_f64(),
        settled.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
}
