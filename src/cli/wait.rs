//! `jobwatch wait`: block until the watches of some ids end, like `wait_for_completion`,
//! by long-polling `GET /v1/jobs/{kind}/{id}?wait=N` for all ids at once (bounded), and
//! exit with a code that says how they ended.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use futures::stream::{self, StreamExt as _};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::watch::{describe, post_all, PostOptions};
use super::{
    code, collect_ids, most_severe, outcome_code, parse_duration, CliError, Client, KindArg,
    ServerArgs,
};
use crate::model::{Kind, Outcome};

#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Job ids; `-` reads whitespace-separated ids from standard input.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,

    /// The jobs' kind: copy or delete (Vector), or a kind of `[[upstreams]]`.
    #[arg(long, value_parser = super::parse_kind)]
    pub kind: KindArg,

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

    /// Ids long-polled at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
}

/// Longest single long-poll; the daemon may cap it lower (api.max_wait), which only means
/// more rounds.
const LONG_POLL: Duration = Duration::from_secs(60);

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
    let ids = collect_ids(&args.ids)?;
    let client = Client::new(&args.server)?;
    let kind: Kind = super::resolve_kind(&client, &args.kind).await?;
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

    let stdout_tty = std::io::stdout().is_terminal();
    let bar = (ids.len() > 1 && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(ids.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} ended {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    // The first error that makes every other wait pointless (daemon gone, token refused)
    // stops the rest instead of letting each id find out on its own.
    let abort = CancellationToken::new();

    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut errors: Vec<String> = Vec::new();
    let mut codes = Vec::with_capacity(ids.len());
    let mut results = stream::iter(ids.iter())
        .map(|id| {
            let client = &client;
            let abort = &abort;
            async move {
                let ended = tokio::select! {
                    e = wait_one(client, kind, id, deadline) => e,
                    _ = abort.cancelled() => Ended::Error(CliError::Unavailable("stopped after an earlier error".into())),
                };
                if matches!(ended, Ended::Error(CliError::Unavailable(_) | CliError::NoPermission(_))) {
                    abort.cancel();
                }
                (id, ended)
            }
        })
        .buffer_unordered(args.concurrency as usize);

    while let Some((id, ended)) = results.next().await {
        *counts.entry(ended.word()).or_default() += 1;
        codes.push(ended.code());
        if let Ended::Error(e) = &ended {
            let text = e.to_string();
            if !errors.contains(&text) {
                errors.push(text);
            }
        }
        let line = format!("{kind}/{id} {}", ended.word());
        match &bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(summary(&counts));
                // On a terminal the bar says how many succeeded; only the others get a line.
                if !stdout_tty {
                    bar.suspend(|| println!("{line}"));
                } else if !matches!(ended, Ended::Outcome(Outcome::Succeeded)) {
                    bar.println(line);
                }
            }
            None => println!("{line}"),
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    for e in &errors {
        eprintln!("jobwatch: {e}");
    }
    if counts.contains_key("not_watched") {
        eprintln!("jobwatch: some ids are not being watched: start them with `jobwatch watch` or `jobwatch wait --watch`");
    }
    if ids.len() > 1 {
        eprintln!("{} ids: {}", ids.len(), summary(&counts));
    }
    Ok(most_severe(codes))
}

/// `12 succeeded, 2 failed`.
fn summary(counts: &BTreeMap<&'static str, u64>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn wait_one(client: &Client, kind: Kind, id: &str, deadline: Option<Instant>) -> Ended {
    loop {
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(LONG_POLL),
            None => LONG_POLL,
        };
        let asked = Instant::now();
        let watch = match client.get_watch(kind, id, wait).await {
            Ok(Ok(Some(w))) => w,
            Ok(Ok(None)) => return Ended::NotWatched,
            Ok(Err(refusal)) => {
                return Ended::Error(refusal.into_error(&format!("GET {kind}/{id}")))
            }
            Err(e) => return Ended::Error(e),
        };
        match watch["outcome"].as_str() {
            Some(o) => {
                return match o.parse::<Outcome>() {
                    Ok(o) => Ended::Outcome(o),
                    Err(e) => Ended::Error(CliError::Unavailable(format!("{kind}/{id}: {e}"))),
                }
            }
            None if deadline.is_some_and(|d| Instant::now() >= d) => return Ended::StillRunning,
            None => {
                // A daemon that is shutting down answers long-polls at once: do not spin.
                if asked.elapsed() < wait / 2 {
                    tokio::time::sleep(Duration::from_millis(500).min(wait)).await;
                }
            }
        }
    }
}
