//! `jobwatch watch`: start watching ids (`POST /v1/jobs`), in as many requests as the
//! daemon's per-request limit needs.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{code, parse_duration, CliError, Client, JobsArgs};
use crate::model::Kind;

#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub jobs: JobsArgs,

    /// Webhook URL that gets each watch's outcome (the daemon signs it with its
    /// webhooks.signing_secret).
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,

    /// The watches' deadline (30s, 10m, 7d...): a job still running then ends `timed_out`.
    /// Default: the daemon's poller.default_timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// A JSON object stored with each watch and sent back in its webhooks.
    #[arg(long, value_name = "JSON", value_parser = parse_metadata)]
    pub metadata: Option<Map<String, Value>>,

    /// Most ids per request. Halved and retried when the daemon says it is over its
    /// api.max_ids_per_request or body limit.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
}

fn parse_metadata(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("--metadata must be a JSON object, e.g. '{\"team\":\"geo\"}'".into()),
        Err(e) => Err(format!("--metadata is not valid JSON: {e}")),
    }
}

/// What a POST (or several) did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    pub new: u64,
    pub already_watching: u64,
    pub duplicates_ignored: u64,
}

/// The options of one `POST /v1/jobs`, apart from the ids.
#[derive(Debug, Default, Clone)]
pub struct PostOptions {
    pub webhook: Option<String>,
    pub timeout: Option<Duration>,
    pub metadata: Option<Map<String, Value>>,
    pub batch_size: usize,
}

/// Posts `ids` in batches of at most `batch_size` (halved while the daemon says a batch
/// is too large), and sums the answers.
pub async fn post_all(
    client: &Client,
    kind: Kind,
    ids: &[String],
    opts: &PostOptions,
) -> Result<Posted, CliError> {
    let mut total = Posted::default();
    let mut batch = opts.batch_size.max(1);
    let mut rest = ids;
    while !rest.is_empty() {
        let n = batch.min(rest.len());
        let mut body = json!({"kind": kind, "ids": &rest[..n]});
        if let Some(url) = &opts.webhook {
            body["webhook_url"] = json!(url);
        }
        if let Some(t) = opts.timeout {
            body["timeout_seconds"] = json!(t.as_secs_f64());
        }
        if let Some(m) = &opts.metadata {
            body["metadata"] = Value::Object(m.clone());
        }
        match client.post_jobs(&body).await? {
            Ok(answer) => {
                let count = |k: &str| answer[k].as_u64().unwrap_or(0);
                total.new += count("new");
                total.already_watching += count("already_watching");
                total.duplicates_ignored += count("duplicates_ignored");
                rest = &rest[n..];
            }
            Err(r)
                if n > 1
                    && (r.code == "too_many_ids"
                        || r.status == reqwest::StatusCode::PAYLOAD_TOO_LARGE) =>
            {
                batch = n / 2;
            }
            Err(r) => return Err(r.into_error("POST /v1/jobs")),
        }
    }
    Ok(total)
}

pub async fn watch(args: WatchArgs) -> Result<u8, CliError> {
    let (client, kind, ids) = args.jobs.open().await?;
    let posted = post_all(
        &client,
        kind,
        &ids,
        &PostOptions {
            webhook: args.webhook,
            timeout: args.timeout,
            metadata: args.metadata,
            batch_size: args.batch_size as usize,
        },
    )
    .await?;
    println!("{}", describe(kind, &posted));
    Ok(code::SUCCEEDED)
}

/// `copy: 3 new, 1 already watched`.
pub fn describe(kind: Kind, p: &Posted) -> String {
    let mut line = format!(
        "{kind}: {} new, {} already watched",
        p.new, p.already_watching
    );
    if p.duplicates_ignored > 0 {
        line.push_str(&format!(", {} duplicates ignored", p.duplicates_ignored));
    }
    line
}
