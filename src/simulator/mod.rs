//! A stand-in for the Vector API v2 upstream (`jobwatch simulate`), and for other public
//! job-status APIs (`--shape`).
//!
//! By default it serves the wire contract of `UPSTREAM.md` (status endpoints and the
//! job-creating ones) so that jobwatch can be tried, tested and benchmarked with no account;
//! `--shape` makes it serve the status route of a google.longrunning.Operation, an OpenAI
//! Batch, a Replicate prediction or a GitHub Actions workflow run instead. Jobs are
//! deterministic from `(kind, id, seed)`; chosen behaviours are picked by id prefix; faults
//! (rate limiting, 5xx, malformed bodies, dropped connections, slow answers, a bearer token)
//! are injected on request, the same for every shape. `docs/simulator.md` is the user's guide.
//!
//! Layout: `jobs` owns the job model (what a job answers at a given time), `faults` the
//! rate limit, fault draws and the request log, `shapes` each shape's routes, documents and
//! error bodies, `http` the connections, the order of the checks and the Vector job-creating
//! routes.

pub mod durations;
mod faults;
mod http;
pub(crate) mod jobs;
mod shapes;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use tokio_util::sync::CancellationToken;

pub use durations::{Distribution, DurationsArg};
pub use faults::{LoggedRequest, RetryAfterForm};
pub use jobs::{MixEntry, OutcomeMix, ParseMixError};
pub use shapes::Shape;

/// Options of `jobwatch simulate`.
///
/// Job behaviour is chosen by the id's prefix (the rest of the id is free):
/// `succeed-` SUCCESS, `done-` DONE, `doneerr-` DONE with errors, `successerr-` SUCCESS with
/// errors, `failed-` FAILED, `failure-` FAILURE (each after its drawn running time);
/// `unknown-` the state PAUSED forever, `pending-` PENDING forever, `running-` RUNNING forever;
/// `notfound-` 404 always, `badrequest-` 400 always; `notyet-<rest>` 404 for `--not-yet-for`
/// after first sight, then behaves as `<rest>` would; `end-<value>-<rest>` ends with the
/// shape's own terminal value `<value>` (e.g. `end-DONE-x`, `end-expired-x`) after its drawn
/// running time. Any other id draws its final state from `--mix`. A job's clock starts the first time the
/// simulator sees it (a status request or the request that creates it); it is PENDING for the
/// first 20% of its running time, then RUNNING. With another `--shape` than vector, the same
/// prefixes are translated into the shape's values (docs/simulator.md has the tables).
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,

    /// The job-status API to serve: its routes, documents, values and error bodies.
    #[arg(long, value_enum, default_value_t = Shape::Vector)]
    pub shape: Shape,

    /// Seed of every draw: the same seed gives every id the same running time and final state,
    /// and the same distribution of injected faults.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Shortest running time of a job (drawn uniformly in [min-running, max-running] unless
    /// `--durations` names another distribution).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub min_running: Duration,

    /// Longest running time of a job.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_running: Duration,

    /// How running times are drawn, per kind: `[KIND=]SPEC`, repeatable. SPEC is
    /// `uniform` (in [min-running, max-running], the default) or `uniform:MIN,MAX`,
    /// `lognormal:MEDIAN,SIGMA`, `bimodal:FIRST,SECOND,SHARE[,SIGMA]` or
    /// `pareto:SCALE,ALPHA`; without `KIND=` it is every kind's that has none of its own.
    #[arg(long = "durations", value_name = "[KIND=]SPEC")]
    pub durations: Vec<DurationsArg>,

    /// Final states of ids without a behaviour prefix, as `STATE[+errors]=weight,...`.
    #[arg(
        long,
        default_value = "SUCCESS=70,DONE=10,DONE+errors=4,SUCCESS+errors=4,FAILED=6,FAILURE=6"
    )]
    pub mix: OutcomeMix,

    /// How long a `notyet-` id answers 404 after the simulator first sees it.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub not_yet_for: Duration,

    /// Ids (exact, decoded) whose every request answers 404.
    #[arg(long, value_delimiter = ',')]
    pub not_found_ids: Vec<String>,

    /// Ids (exact, decoded) whose every request answers 400.
    #[arg(long, value_delimiter = ',')]
    pub bad_request_ids: Vec<String>,

    /// Require `Authorization: Bearer TOKEN` on every request; others answer 401.
    #[arg(long)]
    pub token: Option<String>,

    /// Rate limit over all requests, in requests per second; requests beyond it answer 429
    /// with Retry-After.
    #[arg(long, value_parser = parse_rate)]
    pub rate_limit: Option<f64>,

    /// Burst of the rate limit (default: the rate rounded up, at least 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: Option<u32>,

    /// Form of the Retry-After header of a 429: delay-seconds, an IMF-fixdate, or none (a bare 429).
    #[arg(long, value_enum, default_value_t = RetryAfterForm::Seconds)]
    pub retry_after_form: RetryAfterForm,

    /// Share of requests answered 500, 502, 503 or 504 (without Retry-After), 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub error_ratio: f64,

    /// Share of requests answered 200 with a body that is not the JSON contract, 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub malformed_ratio: f64,

    /// Share of requests whose connection is closed without any answer, 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub drop_ratio: f64,

    /// Share of requests answered only after `--slow-delay`, 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_ratio)]
    pub slow_ratio: f64,

    /// Delay of a slow answer.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub slow_delay: Duration,

    /// Append one JSON line per request received (`t_ms`, `method`, `path`, `status`; status 0
    /// for a dropped connection).
    #[arg(long)]
    pub request_log: Option<PathBuf>,

    /// Keep the request log in memory for `Simulator::request_log` even without a file.
    #[arg(skip)]
    pub keep_log: bool,
}

impl Default for SimulateArgs {
    /// The same values as the command line's defaults.
    fn default() -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            args: SimulateArgs,
        }
        // The defaults are literals of this file, checked by a unit test: this cannot fail on
        // outside data.
        Defaults::try_parse_from(["simulate"])
            .map(|d| d.args)
            .expect("the simulator's default arguments parse")
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` is not a ratio between 0 and 1"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!(
            "`{s}` is not a positive rate in requests per second"
        ))
    }
}

/// The simulator: shared state behind an `Arc`, so clones are cheap and see the same jobs,
/// counters and log.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<http::Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("listen", &self.inner.args.listen)
            .field("requests_received", &self.requests_received())
            .finish_non_exhaustive()
    }
}

impl Simulator {
    pub fn new(args: SimulateArgs) -> Self {
        Self {
            inner: Arc::new(http::Inner::new(args)),
        }
    }

    /// The arguments the simulator was built from.
    pub fn args(&self) -> &SimulateArgs {
        &self.inner.args
    }

    /// The job-status API it serves.
    pub fn shape(&self) -> Shape {
        self.inner.args.shape
    }

    /// Serves on `listener` until `shutdown` is cancelled, then lets in-flight answers finish
    /// (for a short grace) and flushes the request log.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        http::serve(self.inner, listener, shutdown).await
    }

    /// Binds `--listen` and serves until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.inner.args.listen)
            .await
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {}: {e}", self.inner.args.listen),
                )
            })?;
        self.serve(listener, shutdown).await
    }

    /// Number of requests received so far (every one, answered or not).
    pub fn requests_received(&self) -> u64 {
        self.inner.requests_received()
    }

    /// Number of status requests received for the job `(kind, id)` (`kind` is `copy` or
    /// `delete`, `id` decoded; every shape but vector has the one kind `copy`). Requests
    /// answered 429 are not counted: they never reached the job.
    pub fn polls_of(&self, kind: &str, id: &str) -> u64 {
        self.inner.polls_of(kind, id)
    }

    /// When the job `(kind, id)` ended or will end, if the simulator has seen it and it ends
    /// at all (`None` for unseen jobs, and for `pending-`, `running-`, `unknown-`, `notfound-`,
    /// `badrequest-` ids). Every shape but vector has the one kind `copy`.
    pub fn job_end(&self, kind: &str, id: &str) -> Option<SystemTime> {
        self.inner.job_end(kind, id)
    }

    /// Changes the token every request must bear (`None`: no authentication), e.g. to simulate
    /// a credentials outage and its recovery.
    pub fn set_token(&self, token: Option<String>) {
        self.inner.set_token(token);
    }

    /// The requests received so far, in the order their answers were decided. Empty unless
    /// `request_log` or `keep_log` is set.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.inner.log.snapshot()
    }
}
