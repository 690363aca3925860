//! Starting real parts for a test: the simulator, the daemon, a client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jobwatch::app::Daemon;
use jobwatch::config::Settings;
use jobwatch::simulator::{SimulateArgs, Simulator};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A simulator on a random port.
pub struct Sim {
    pub sim: Simulator,
    pub url: String,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Sim {
    /// Jobs run 100..400 ms unless `args` says otherwise; the request log is kept.
    pub async fn start(args: SimulateArgs) -> Sim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind simulator");
        let addr = listener.local_addr().expect("simulator addr");
        let sim = Simulator::new(SimulateArgs {
            keep_log: true,
            ..args
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(sim.clone().serve(listener, shutdown.clone()));
        Sim {
            sim,
            url: format!("http://{addr}"),
            addr,
            shutdown,
        }
    }

    pub fn fast() -> SimulateArgs {
        SimulateArgs {
            min_running: Duration::from_millis(100),
            max_running: Duration::from_millis(400),
            not_yet_for: Duration::from_millis(300),
            ..SimulateArgs::default()
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Settings for a test daemon: random port, the given store file, the simulator
/// as upstream, fast cadence. `extra` overrides win.
pub fn settings(db: &Path, upstream: &str, extra: &[(&str, &str)]) -> Settings {
    settings_with_file(db, upstream, None, extra)
}

/// As [`settings`], with a TOML file layered under the overrides (as `--config FILE`):
/// lists such as `webhooks.retry_schedule` and `[[webhooks.endpoints]]` need one.
pub fn settings_with_file(
    db: &Path,
    upstream: &str,
    file: Option<&Path>,
    extra: &[(&str, &str)],
) -> Settings {
    let store = format!("sqlite://{}", db.display());
    let mut overrides: Vec<(&str, &str)> = vec![
        ("api.listen", "127.0.0.1:0"),
        ("store.url", &store),
        ("upstream.base_url", upstream),
        ("upstream.max_requests_per_second", "2000"),
        ("upstream.burst", "200"),
        ("upstream.request_timeout", "5s"),
        ("upstream.error_backoff_base", "50ms"),
        ("upstream.error_backoff_max", "500ms"),
        ("upstream.min_retry_after", "100ms"),
        ("upstream.auth_probe_interval", "200ms"),
        ("poller.initial_interval", "100ms"),
        ("poller.max_interval", "400ms"),
        ("poller.not_found_grace", "500ms"),
        ("api.shutdown_grace", "3s"),
        ("log.level", "warn"),
    ];
    overrides.extend_from_slice(extra);
    Settings::load_with(file, &overrides).expect("test settings are valid")
}

/// A running daemon.
pub struct App {
    pub url: String,
    pub addr: SocketAddr,
    pub db: PathBuf,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl App {
    pub async fn start(settings: Settings) -> App {
        let db = PathBuf::from(settings.store.url.trim_start_matches("sqlite://"));
        let daemon = Daemon::build(settings).await.expect("daemon builds");
        let addr = daemon.local_addr().expect("daemon addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(daemon.run(shutdown.clone()));
        App {
            url: format!("http://{addr}"),
            addr,
            db,
            client: reqwest::Client::new(),
            shutdown,
            handle: Some(handle),
        }
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await
                .expect("daemon task")
                .expect("daemon stopped cleanly");
        }
    }

    pub async fn post_jobs(&self, body: Value) -> (u16, Value) {
        let request = self.client.post(format!("{}/v1/jobs", self.url));
        answer(request.json(&body), "POST /v1/jobs").await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let request = self.client.get(format!("{}{path}", self.url));
        answer(request, &format!("GET {path}")).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let request = self.client.delete(format!("{}{path}", self.url));
        answer(request, &format!("DELETE {path}")).await
    }

    /// The watch once it has an outcome (long-polls), or panics after `secs`.
    pub async fn wait_outcome(&self, kind: &str, id: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, w) = self.get(&format!("/v1/jobs/{kind}/{id}?wait=2")).await;
            assert_eq!(status, 200, "GET {kind}/{id}: {w}");
            if !w["outcome"].is_null() {
                return w;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{kind}/{id} has no outcome after {secs}s: {w}"
            );
        }
    }

    /// Waits until `GET /v1/status` shows no running watch, or panics after `secs`.
    pub async fn wait_all_ended(&self, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, s) = self.get("/v1/status").await;
            if s["watches"]["running"] == 0 {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "watches still running after {secs}s: {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A fresh temporary directory and a database path in it.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("jobwatch.db");
    (dir, db)
}

/// Sends `request`: the answer's status and JSON body (null when the body is not
/// JSON). Panics, naming `what`, when no answer comes.
pub async fn answer(request: reqwest::RequestBuilder, what: &str) -> (u16, Value) {
    let r = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls `f` every 50 ms until it returns `Ok`, or panics with `what` and the last
/// `Err` after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {secs}s; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A daemon with the [`settings`] for `upstream` and `extra`, on a fresh temporary
/// store; the store's directory lives as long as the returned guard.
pub async fn start_app(upstream: &str, extra: &[(&str, &str)]) -> (tempfile::TempDir, App) {
    let (dir, db) = temp_db();
    let app = App::start(settings(&db, upstream, extra)).await;
    (dir, app)
}

/// A POST's worth of `copy` watches of `ids` at `now`, as the store takes them:
/// first polled 100 ms later, every 100 ms.
pub fn new_watches(ids: Vec<String>, now: i64) -> jobwatch::store::NewWatches {
    jobwatch::store::NewWatches {
        kind: jobwatch::model::Kind::COPY,
        ids,
        webhook_url: None,
        metadata: None,
        deadline: None,
        now,
        first_poll_min: 100,
        first_poll_spread: 1,
        interval_ms: 100,
    }
}
