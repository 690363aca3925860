//! The command-line client of a running daemon (`watch`, `wait`, `status`, `healthcheck`) and the
//! one-command tour (`demo`). Each command returns the process's exit code; the codes and
//! the order in which several non-successes are ranked live here, so `--help`, the README
//! and the code say the same thing.

mod client;
pub mod demo;
pub mod sse;
mod status;
mod wait;
mod watch;

use std::io::Read as _;
use std::time::Duration;

use crate::model::{check_id, Kind, Outcome};

pub use client::{Client, ServerArgs};
pub use demo::DemoArgs;
pub use status::{healthcheck, status, HealthcheckArgs, StatusArgs};
pub use wait::{wait, WaitArgs};
pub use watch::{watch, WatchArgs};

/// Exit codes of the client commands (`watch`, `wait`, `status`).
pub mod code {
    /// Every id succeeded (or, for `watch`/`status`, the request did what was asked).
    pub const SUCCEEDED: u8 = 0;
    /// At least one job failed (the upstream said FAILED/FAILURE, or DONE/SUCCESS with errors).
    pub const FAILED: u8 = 1;
    /// The client's own `--timeout` passed first, or the watch ended `timed_out`.
    pub const TIMED_OUT: u8 = 2;
    /// The upstream kept answering 404 past the daemon's grace (`not_found`).
    pub const NOT_FOUND: u8 = 3;
    /// The upstream refused the id with 400/422 (`rejected`).
    pub const REJECTED: u8 = 4;
    /// A client stopped the watch (`cancelled`).
    pub const CANCELLED: u8 = 5;
    /// Bad usage: unknown flag, bad value, an id the API refuses, an id not being watched.
    pub const USAGE: u8 = 64;
    /// The daemon could not be reached, or kept answering 5xx.
    pub const UNAVAILABLE: u8 = 69;
    /// The daemon refused the token (401/403).
    pub const NO_PERMISSION: u8 = 77;
}

/// The exit codes as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   every id succeeded
  1   at least one job failed
  2   timed out (the client's --timeout passed, or the watch ended timed_out)
  3   not found (the upstream answered 404 past the daemon's grace)
  4   rejected (the upstream refused the id with 400/422)
  5   cancelled (a client stopped the watch)
  64  usage error (bad flags or values, ids the API refuses, ids not being watched)
  69  the daemon is unreachable or keeps answering 5xx
  77  the daemon refused the token (401/403)
When ids end in different ways, the most severe wins, in this order:
  69 > 77 > 64 > failed (1) > rejected (4) > not_found (3) > timed_out (2) > cancelled (5) > 0
(an error of the client or the daemon ranks above every outcome: the answer is incomplete).";

/// The exit codes of `watch` and `status`, as `--help` shows them.
pub const REQUEST_EXIT_CODES_HELP: &str = "\
Exit codes:
  0   done
  64  usage error (bad flags or values, a request the API refuses)
  69  the daemon is unreachable or keeps answering 5xx
  77  the daemon refused the token (401/403)";

/// Rank of an exit code in the order of [`EXIT_CODES_HELP`]: higher is more severe.
pub fn severity(exit: u8) -> u8 {
    match exit {
        code::UNAVAILABLE => 9,
        code::NO_PERMISSION => 8,
        code::USAGE => 7,
        code::FAILED => 6,
        code::REJECTED => 5,
        code::NOT_FOUND => 4,
        code::TIMED_OUT => 3,
        code::CANCELLED => 2,
        code::SUCCEEDED => 0,
        _ => 1,
    }
}

/// The most severe of several exit codes (0 when there are none).
pub fn most_severe(codes: impl IntoIterator<Item = u8>) -> u8 {
    codes
        .into_iter()
        .max_by_key(|c| severity(*c))
        .unwrap_or(code::SUCCEEDED)
}

/// The exit code of one watch's outcome.
pub fn outcome_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Succeeded => code::SUCCEEDED,
        Outcome::Failed => code::FAILED,
        Outcome::TimedOut => code::TIMED_OUT,
        Outcome::NotFound => code::NOT_FOUND,
        Outcome::Rejected => code::REJECTED,
        Outcome::Cancelled => code::CANCELLED,
    }
}

/// Why a client command stopped before it could give its own answer.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NoPermission(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => code::USAGE,
            CliError::Unavailable(_) => code::UNAVAILABLE,
            CliError::NoPermission(_) => code::NO_PERMISSION,
        }
    }
}

/// `--kind` on the command line: a kind's name, checked by [`resolve_kind`].
pub type KindArg = String;

/// The daemon, the kind and the ids a command about some jobs (`watch`, `wait`) names.
#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Job ids; `-` reads whitespace-separated ids from standard input.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,

    /// The jobs' kind: copy or delete (Vector), or a kind of `[[upstreams]]`.
    #[arg(long, value_parser = parse_kind)]
    pub kind: KindArg,
}

impl JobsArgs {
    /// A client of the daemon, the kind resolved, the ids read (from standard input
    /// for `-`, each once).
    pub async fn open(&self) -> Result<(Client, Kind, Vec<String>), CliError> {
        let ids = collect_ids(&self.ids)?;
        let client = Client::new(&self.server)?;
        let kind = resolve_kind(&client, &self.kind).await?;
        Ok((client, kind, ids))
    }
}

/// A kind's name as the settings allow it (the daemon says which are configured).
pub fn parse_kind(s: &str) -> Result<String, String> {
    crate::model::check_kind_name(s)?;
    Ok(s.to_string())
}

/// The kind `name`: a preset's kind is taken as it is (`copy`, `batch`, ...); any
/// other must be one the daemon configured, asked at `GET /v1/status`. When the
/// daemon cannot say, such a kind is a usage error: nothing here knows it.
pub async fn resolve_kind(client: &Client, name: &str) -> Result<Kind, CliError> {
    let presets = crate::upstream::preset::preset_kind_names();
    if presets.iter().any(|k| k == name) {
        return Ok(Kind::intern(name));
    }
    let unknown = |why: String| {
        CliError::Usage(format!(
            "unknown kind {name:?}: no preset has it ({}), and {why}",
            presets.join(", ")
        ))
    };
    let text = match client.status_text().await {
        Ok(Ok(text)) => text,
        Ok(Err(refusal)) => return Err(refusal.into_error("GET /v1/status")),
        Err(e) => return Err(unknown(format!("the daemon could not be asked: {e}"))),
    };
    let status: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Unavailable(format!("GET /v1/status: not JSON: {e}")))?;
    let configured: Vec<&str> = status["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|u| u["kinds"].as_array().into_iter().flatten())
        .filter_map(|k| k.as_str())
        .collect();
    if configured.contains(&name) {
        Ok(Kind::intern(name))
    } else {
        Err(unknown(format!(
            "the daemon's kinds are {}",
            configured.join(", ")
        )))
    }
}

/// `--timeout` values: `30s`, `10m`, `1h30m` (humantime), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return if secs.is_finite() && secs > 0.0 {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(format!("`{s}` is not a positive number of seconds"))
        };
    }
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("`{s}` is zero; give a positive duration")),
        Err(e) => Err(format!(
            "`{s}` is not a duration such as 30s, 10m, 1h30m: {e}"
        )),
    }
}

/// The ids of the command line, with each `-` replaced by the whitespace-separated ids of
/// standard input, duplicates dropped (first kept), each checked against the API's form so
/// a typo is a usage error rather than a refused request.
pub fn collect_ids(args: &[String]) -> Result<Vec<String>, CliError> {
    let mut out = Vec::with_capacity(args.len());
    let mut seen = std::collections::HashSet::new();
    let mut stdin_used = false;
    for arg in args {
        let from_stdin;
        let ids: Vec<&str> = if arg == "-" {
            if stdin_used {
                continue;
            }
            stdin_used = true;
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| {
                CliError::Usage(format!("cannot read ids from standard input: {e}"))
            })?;
            from_stdin = text;
            from_stdin.split_whitespace().collect()
        } else {
            vec![arg.as_str()]
        };
        for id in ids {
            check_id(id).map_err(CliError::Usage)?;
            if seen.insert(id.to_owned()) {
                out.push(id.to_owned());
            }
        }
    }
    if out.is_empty() {
        return Err(CliError::Usage(
            "no ids given (standard input was empty)".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_severe_code_follows_the_documented_order() {
        assert_eq!(most_severe([]), code::SUCCEEDED);
        assert_eq!(most_severe([0, 0]), code::SUCCEEDED);
        assert_eq!(most_severe([code::NOT_FOUND, code::FAILED]), code::FAILED);
        assert_eq!(
            most_severe([code::TIMED_OUT, code::REJECTED, code::CANCELLED]),
            code::REJECTED
        );
        assert_eq!(
            most_severe([code::CANCELLED, code::TIMED_OUT]),
            code::TIMED_OUT
        );
        assert_eq!(
            most_severe([code::FAILED, code::UNAVAILABLE, code::USAGE]),
            code::UNAVAILABLE
        );
    }

    #[test]
    fn durations_take_units_or_bare_seconds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn ids_are_checked_and_deduplicated() {
        let ids = collect_ids(&["a".into(), "b".into(), "a".into()]).expect("valid ids");
        assert_eq!(ids, ["a", "b"]);
        assert!(matches!(
            collect_ids(&["a/b".into()]),
            Err(CliError::Usage(_))
        ));
    }
}
