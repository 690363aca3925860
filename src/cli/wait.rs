//! `jobwatch wait`: block until the watches of some ids end, like `wait_for_completion`,
//! and exit with a code that says how they ended. It subscribes to the daemon's event
//! stream (`GET /v1/events`) first, then reads each watch once: a watch that ended before
//! the subscription shows its outcome in that read, one that ends after comes through
//! the stream, which resumes with `Last-Event-ID` if the connection drops.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal as _;
use std::time::Duration;

use futures::stream::{self, StreamExt as _};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sse::EventStream;
use super::watch::{describe, post_all, PostOptions};
use super::{code, most_severe, outcome_code, parse_duration, CliError, JobsArgs};
use crate::model::{Kind, Outcome};

#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    pub jobs: JobsArgs,

    /// Stop waiting after this long (30s, 10m...); ids without an outcome then count as
    /// timed out (exit 2). Their watches go on in the daemon. Default: wait until they end.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Start watching the ids first (as `jobwatch watch` does: an id whose watch already
    /// ended is watched anew), then wait for them.
    #[arg(long)]
    pub watch: bool,

    /// With --watch: the webhook URL of the new watches.
    #[arg(long, value_name = "URL", requires = "watch")]
    pub webhook: Option<String>,

    /// Watches read at once when the wait starts (each id's watch is read once; later
    /// outcomes come through the daemon's event stream).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
}

/// How one id's wait ended.
#[derive(Debug)]
enum Ended {
    Outcome(Outcome),
    /// The client's --timeout passed before the watch ended.
    StillRunning,
    /// The daemon has no watch of this id.
    NotWatched,
    Error(CliError),
}

impl Ended {
    fn code(&self) -> u8 {
        match self {
            Ended::Outcome(o) => outcome_code(*o),
            Ended::StillRunning => code::TIMED_OUT,
            Ended::NotWatched => code::USAGE,
            Ended::Error(e) => e.exit_code(),
        }
    }

    fn word(&self) -> &'static str {
        match self {
            Ended::Outcome(o) => o.as_str(),
            Ended::StillRunning => "timed_out",
            Ended::NotWatched => "not_watched",
            Ended::Error(_) => "error",
        }
    }
}

pub async fn wait(args: WaitArgs) -> Result<u8, CliError> {
    let (client, kind, ids) = args.jobs.open().await?;
    let deadline = args.timeout.map(|t| Instant::now() + t);
    if args.watch {
        let posted = post_all(
            &client,
            kind,
            &ids,
            &PostOptions {
                webhook: args.webhook.clone(),
                batch_size: 10_000,
                ..PostOptions::default()
            },
        )
        .await?;
        eprintln!("{}", describe(kind, &posted));
    }
    // Subscribe before reading the watches: an outcome stored after this point comes
    // through the stream, one stored before shows in the read.
    let mut events = EventStream::open(&client, &[("kind", kind.as_str())])
        .await?
        .map_err(|r| r.into_error("GET /v1/events"))?;

    let mut report = Report::new(kind, ids.len());
    // The first error that makes every other read pointless (daemon gone, token refused)
    // stops the rest instead of letting each id find out on its own.
    let abort = CancellationToken::new();
    // id -> the generation being waited for.
    let mut running: HashMap<&str, i64> = HashMap::new();
    let mut reads = stream::iter(ids.iter())
        .map(|id| {
            let (client, abort) = (&client, &abort);
            async move {
                let read = tokio::select! {
                    r = client.get_watch(kind, id, Duration::ZERO) => r,
                    _ = abort.cancelled() => Err(CliError::Unavailable("stopped after an earlier error".into())),
                };
                if matches!(read, Err(CliError::Unavailable(_) | CliError::NoPermission(_))) {
                    abort.cancel();
                }
                (id.as_str(), read)
            }
        })
        .buffer_unordered(args.concurrency as usize);
    while let Some((id, read)) = reads.next().await {
        match read {
            Ok(Ok(Some(w))) => match outcome_of(&w) {
                Ok(Some(o)) => report.ended(id, Ended::Outcome(o)),
                Ok(None) => {
                    running.insert(id, w["generation"].as_i64().unwrap_or(0));
                }
                Err(e) => report.ended(id, Ended::Error(e)),
            },
            Ok(Ok(None)) => report.ended(id, Ended::NotWatched),
            Ok(Err(refusal)) => report.ended(
                id,
                Ended::Error(refusal.into_error(&format!("GET {kind}/{id}"))),
            ),
            Err(e) => report.ended(id, Ended::Error(e)),
        }
    }
    drop(reads);

    while !running.is_empty() {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, events.next()).await,
            None => Ok(events.next().await),
        };
        let event = match next {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                // The daemon went away for good, or refused the stream: every id
                // still running ends the same way.
                let text = e.to_string();
                for (id, _) in running.drain() {
                    report.ended(id, Ended::Error(same_kind_of_error(&e, text.clone())));
                }
                break;
            }
            Err(_) => {
                for (id, _) in running.drain() {
                    report.ended(id, Ended::StillRunning);
                }
                break;
            }
        };
        let Ok(body) = serde_json::from_str::<Value>(&event.data) else {
            continue;
        };
        let w = &body["data"];
        let Some(id) = w["id"].as_str() else { continue };
        let waited = running
            .get_key_value(id)
            .filter(|(_, generation)| w["generation"].as_i64().unwrap_or(0) >= **generation)
            .map(|(id, _)| *id);
        if let (Some(id), Some(kind_seen)) = (waited, w["kind"].as_str()) {
            if kind_seen != kind.as_str() {
                continue;
            }
            match outcome_of(w) {
                Ok(Some(o)) => {
                    running.remove(id);
                    report.ended(id, Ended::Outcome(o));
                }
                Ok(None) => {}
                Err(e) => {
                    running.remove(id);
                    report.ended(id, Ended::Error(e));
                }
            }
        }
    }
    Ok(report.finish())
}

/// The outcome of a watch as the API shows it (in a GET, or an event's `data`).
fn outcome_of(w: &Value) -> Result<Option<Outcome>, CliError> {
    match w["outcome"].as_str() {
        None => Ok(None),
        Some(o) => o
            .parse::<Outcome>()
            .map(Some)
            .map_err(|e| CliError::Unavailable(format!("{}/{}: {e}", w["kind"], w["id"]))),
    }
}

/// `e` again, for another id (an error is reported once per id).
fn same_kind_of_error(e: &CliError, text: String) -> CliError {
    match e {
        CliError::Usage(_) => CliError::Usage(text),
        CliError::Unavailable(_) => CliError::Unavailable(text),
        CliError::NoPermission(_) => CliError::NoPermission(text),
    }
}

/// What has ended so far: the exit codes, the counts, a line per id, the bar.
struct Report {
    kind: Kind,
    total: usize,
    stdout_tty: bool,
    bar: Option<ProgressBar>,
    counts: BTreeMap<&'static str, u64>,
    errors: Vec<String>,
    codes: Vec<u8>,
}

impl Report {
    fn new(kind: Kind, total: usize) -> Report {
        let bar = (total > 1 && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} ended {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Report {
            kind,
            total,
            stdout_tty: std::io::stdout().is_terminal(),
            bar,
            counts: BTreeMap::new(),
            errors: Vec::new(),
            codes: Vec::with_capacity(total),
        }
    }

    fn ended(&mut self, id: &str, ended: Ended) {
        *self.counts.entry(ended.word()).or_default() += 1;
        self.codes.push(ended.code());
        if let Ended::Error(e) = &ended {
            let text = e.to_string();
            if !self.errors.contains(&text) {
                self.errors.push(text);
            }
        }
        let line = format!("{}/{id} {}", self.kind, ended.word());
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(summary(&self.counts));
                // On a terminal the bar says how many succeeded; only the others get a line.
                if !self.stdout_tty {
                    bar.suspend(|| println!("{line}"));
                } else if !matches!(ended, Ended::Outcome(Outcome::Succeeded)) {
                    bar.println(line);
                }
            }
            None => println!("{line}"),
        }
    }

    fn finish(self) -> u8 {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        for e in &self.errors {
            eprintln!("jobwatch: {e}");
        }
        if self.counts.contains_key("not_watched") {
            eprintln!("jobwatch: some ids are not being watched: start them with `jobwatch watch` or `jobwatch wait --watch`");
        }
        if self.total > 1 {
            eprintln!("{} ids: {}", self.total, summary(&self.counts));
        }
        most_severe(self.codes)
    }
}

/// `12 succeeded, 2 failed`.
fn summary(counts: &BTreeMap<&'static str, u64>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}
