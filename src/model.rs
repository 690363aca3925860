//! The words of the brief as types: kinds, outcomes, the upstream state table.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A kind of job: which upstream a watch polls, and how (its status path and state
/// table, `crate::upstream::kinds`). Kinds are named in the settings, so this is a
/// name, interned once per distinct name: `Copy`, compared and hashed as the string.
/// Names are interned only from the settings and from rows the store already holds
/// (see [`Kind::intern`]); a name from a request is looked up with [`Kind::known`],
/// which never interns, so clients cannot grow the table.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind(&'static str);

static INTERNED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

impl Kind {
    /// Vector API v2 copy jobs (the `vector` preset).
    pub const COPY: Kind = Kind("copy");
    /// Vector API v2 delete jobs (the `vector` preset).
    pub const DELETE: Kind = Kind("delete");

    /// The kind named `name`, interned on first sight. For names from the
    /// settings and from the store: the table grows by one per distinct name.
    pub fn intern(name: &str) -> Kind {
        for k in [Kind::COPY, Kind::DELETE] {
            if k.0 == name {
                return k;
            }
        }
        let mut table = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = table.iter().find(|k| **k == name) {
            return Kind(k);
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        table.push(leaked);
        Kind(leaked)
    }

    /// The kind named `name` if it was ever interned (configured or stored).
    pub fn known(name: &str) -> Option<Kind> {
        if let Some(k) = [Kind::COPY, Kind::DELETE].into_iter().find(|k| k.0 == name) {
            return Some(k);
        }
        let table = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
        table.iter().find(|k| **k == name).map(|k| Kind(k))
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Parsing interns: it is for names the store or the settings hold. The API and the
/// command line check names against the configured kinds instead.
impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_kind_name(s)?;
        Ok(Kind::intern(s))
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Kind {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        // The kinds a daemon accepts are those configured: today the Vector API
        // v2's two, so the document names exactly those (schemathesis sends what
        // the document allows and expects it accepted).
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A configured kind: `copy` or `delete` (Vector API v2).",
            ))
            .enum_values(Some([Kind::COPY.as_str(), Kind::DELETE.as_str()]))
            .into()
    }
}

impl utoipa::ToSchema for Kind {}

/// What a kind's name may be: 1 to 64 of `a-z 0-9 _ -`, starting with a letter.
pub const KIND_PATTERN: &str = "^[a-z][a-z0-9_-]{0,63}$";

pub fn check_kind_name(s: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "kind {s:?} is not a kind name: 1 to 64 characters from a-z 0-9 _ -, starting with a letter"
        ))
    }
}

/// The stream's event type of a cancellation (never sent as a webhook).
pub const CANCELLED_EVENT: &str = "job.cancelled";

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

    /// The type of this outcome's event in the store and in `GET /v1/events`:
    /// the webhook type, or `job.cancelled`. A cancellation is kept as an event
    /// with no deliveries, so that the stream has every outcome (a client waiting
    /// for a watch must learn that it was cancelled) while webhooks stay as the
    /// brief lists them.
    pub fn stream_type(self) -> &'static str {
        self.event_type().unwrap_or(CANCELLED_EVENT)
    }

    /// The outcome of an event type of the stream.
    pub fn from_stream_type(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.stream_type() == s)
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

/// What a kind's state table makes of a reported state (`crate::upstream::kinds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    Running,
    Succeeded,
    Failed,
    /// A state the table does not name (or none): keep polling, record it, warn once.
    #[default]
    Unknown,
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
