//! The words of the brief as types: kinds, outcomes, the upstream state table.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which status endpoint a watch polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Copy,
    Delete,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Copy, Kind::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Copy => "copy",
            Kind::Delete => "delete",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "copy" => Ok(Kind::Copy),
            "delete" => Ok(Kind::Delete),
            other => Err(format!(
                "unknown kind {other:?}: expected \"copy\" or \"delete\""
            )),
        }
    }
}

/// How a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    NotFound,
    Rejected,
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::NotFound,
        Outcome::Rejected,
        Outcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::NotFound => "not_found",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The webhook event type of this outcome. A cancellation was asked for by a
    /// client, who already knows: it is not an event (the brief lists no such type).
    pub fn event_type(self) -> Option<&'static str> {
        match self {
            Outcome::Succeeded => Some("job.succeeded"),
            Outcome::Failed => Some("job.failed"),
            Outcome::TimedOut => Some("job.timed_out"),
            Outcome::NotFound => Some("job.not_found"),
            Outcome::Rejected => Some("job.rejected"),
            Outcome::Cancelled => None,
        }
    }

    pub fn from_event_type(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.event_type() == Some(s))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown outcome {s:?}: expected one of succeeded, failed, timed_out, not_found, rejected, cancelled"))
    }
}

/// What the state table of UPSTREAM.md makes of a reported state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Running,
    Succeeded,
    Failed,
    /// A state the contract does not name: keep polling, record it, warn once.
    Unknown,
}

pub fn verdict(state: Option<&str>, has_errors: bool) -> Verdict {
    match state {
        Some("PENDING") | Some("RUNNING") => Verdict::Running,
        Some("SUCCESS") | Some("DONE") if has_errors => Verdict::Failed,
        Some("SUCCESS") | Some("DONE") => Verdict::Succeeded,
        Some("FAILED") | Some("FAILURE") => Verdict::Failed,
        // A missing state says nothing new: keep polling like any unknown one.
        _ => Verdict::Unknown,
    }
}

/// Ids are opaque strings of 1..=256 chars from `[A-Za-z0-9:._-]`.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("an id is empty".into());
    }
    if id.len() > 256 {
        // Cut on a character boundary: ids from clients may hold any UTF-8.
        let head: String = id.chars().take(32).collect();
        return Err(format!("id {head:?}... is longer than 256 characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-')))
    {
        return Err(format!(
            "id {id:?} contains {c:?}; ids are 1 to 256 characters from A-Z a-z 0-9 : . _ -"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_table_of_upstream_md() {
        assert_eq!(verdict(Some("PENDING"), false), Verdict::Running);
        assert_eq!(verdict(Some("RUNNING"), false), Verdict::Running);
        assert_eq!(verdict(Some("SUCCESS"), false), Verdict::Succeeded);
        assert_eq!(verdict(Some("DONE"), false), Verdict::Succeeded);
        assert_eq!(verdict(Some("SUCCESS"), true), Verdict::Failed);
        assert_eq!(verdict(Some("DONE"), true), Verdict::Failed);
        assert_eq!(verdict(Some("FAILED"), false), Verdict::Failed);
        assert_eq!(verdict(Some("FAILURE"), false), Verdict::Failed);
        assert_eq!(verdict(Some("PAUSED"), false), Verdict::Unknown);
        assert_eq!(verdict(None, false), Verdict::Unknown);
    }

    #[test]
    fn ids_follow_the_allowed_form() {
        assert!(check_id("d1349cc2d8854d998aa6da92dc2bd24").is_ok());
        assert!(check_id("myorg:my-product.v_2").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id("é").is_err());
        assert!(check_id(&"a".repeat(256)).is_ok());
        assert!(check_id(&"a".repeat(257)).is_err());
    }
}
