//! Row shapes shared by every database: plain column types that both SQLite and
//! PostgreSQL decode (`sqlx::FromRow` is generic over the row type), converted
//! into the store's records in one place.

use super::*;

/// The columns of a watch, in [`WatchRow`]'s order (which the JSON form keeps).
macro_rules! watch_cols {
    () => {
        "wid, kind, job_id, generation, webhook_url, metadata, watched_at, deadline, state, \
        upstream_created, upstream_started, upstream_ended, upstream_errors, outcome, outcome_at, \
        last_poll_at, next_poll_at, interval_ms, poll_count, error_count, consecutive_errors, \
        last_error, not_found_since"
    };
}

pub const WATCH_COLS: &str = watch_cols!();

/// The rows of a query as one JSON array of arrays (`SELECT {WATCHES_AS_JSON} FROM
/// watches WHERE ...`): one value to hand over from sqlx's SQLite thread instead
/// of a row (and a copy of each column) per watch. The claim reads this way.
pub const WATCHES_AS_JSON: &str = concat!("json_group_array(json_array(", watch_cols!(), "))");

/// The columns of a [`DeliveryRecord`] (which decodes itself: `sqlx::FromRow`).
pub const DELIVERY_COLS: &str =
    "did, eid, wid, webhook_id, target, url, status, attempts, next_attempt_at, \
    last_status, last_error, created_at, delivered_at";

/// Where the stream of events stands, in one statement (one snapshot). On
/// PostgreSQL the counter's committed value is safe to read without its lock:
/// every eid up to it is committed (migration 0003).
pub const EVENT_POSITIONS: &str =
    "SELECT (SELECT last FROM event_positions WHERE id = 1) AS newest,
    (SELECT min(eid) FROM events) AS oldest";

/// The columns of a [`StreamedEvent`], from `events e JOIN watches w`.
pub const STREAMED_EVENT_COLS: &str = "e.eid AS position, e.type AS event_type, w.kind, e.body";

/// The stored duration summaries, and the statement that stores one.
pub const LOAD_DURATIONS: &str = "SELECT kind, grp, summary FROM durations ORDER BY kind, grp";
pub const SAVE_DURATION: &str = "INSERT INTO durations (kind, grp, summary, updated_at)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (kind, grp) DO UPDATE SET summary = excluded.summary, updated_at = excluded.updated_at";

/// The columns of an [`AttemptRecord`].
pub const ATTEMPT_COLS: &str = "at, status_code, error, duration_ms, response";

/// Also read from a JSON array in `WATCH_COLS` order (serde takes a struct from a
/// sequence, field by field): see [`WATCHES_AS_JSON`].
#[derive(sqlx::FromRow, serde::Deserialize)]
pub struct WatchRow {
    wid: i64,
    kind: String,
    job_id: String,
    generation: i64,
    webhook_url: Option<String>,
    metadata: Option<String>,
    watched_at: i64,
    deadline: Option<i64>,
    state: Option<String>,
    upstream_created: Option<String>,
    upstream_started: Option<String>,
    upstream_ended: Option<String>,
    upstream_errors: Option<String>,
    outcome: Option<String>,
    outcome_at: Option<i64>,
    last_poll_at: Option<i64>,
    next_poll_at: Option<i64>,
    interval_ms: i64,
    poll_count: i64,
    error_count: i64,
    consecutive_errors: i64,
    last_error: Option<String>,
    not_found_since: Option<i64>,
}

impl TryFrom<WatchRow> for WatchRecord {
    type Error = StoreError;
    fn try_from(r: WatchRow) -> Result<WatchRecord> {
        Ok(WatchRecord {
            wid: r.wid,
            kind: r.kind.parse().map_err(StoreError::Corrupt)?,
            job_id: r.job_id,
            generation: r.generation,
            webhook_url: r.webhook_url,
            metadata: parse_json(r.metadata)?,
            watched_at: r.watched_at,
            deadline: r.deadline,
            state: r.state,
            upstream: UpstreamFields {
                created: r.upstream_created,
                started: r.upstream_started,
                ended: r.upstream_ended,
                errors: parse_json(r.upstream_errors)?,
            },
            outcome: r
                .outcome
                .map(|o| o.parse())
                .transpose()
                .map_err(StoreError::Corrupt)?,
            outcome_at: r.outcome_at,
            last_poll_at: r.last_poll_at,
            next_poll_at: r.next_poll_at,
            interval_ms: r.interval_ms,
            poll_count: r.poll_count,
            error_count: r.error_count,
            consecutive_errors: r.consecutive_errors,
            last_error: r.last_error,
            not_found_since: r.not_found_since,
        })
    }
}

impl TryFrom<String> for Target {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Target> {
        match s.as_str() {
            "watch" => Ok(Target::Watch),
            "endpoint" => Ok(Target::Endpoint),
            other => Err(StoreError::Corrupt(format!("delivery target {other:?}"))),
        }
    }
}

impl TryFrom<String> for DeliveryStatus {
    type Error = StoreError;
    fn try_from(s: String) -> Result<DeliveryStatus> {
        DeliveryStatus::parse(&s)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status {s:?}")))
    }
}

/// The watches of a [`WATCHES_AS_JSON`] value.
pub fn watches_from_json(json: &str) -> Result<Vec<WatchRecord>> {
    let rows: Vec<WatchRow> = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("watch rows as JSON: {e}")))?;
    watches(rows)
}

pub fn watches(rows: impl IntoIterator<Item = WatchRow>) -> Result<Vec<WatchRecord>> {
    rows.into_iter().map(WatchRecord::try_from).collect()
}

/// Claimed deliveries with what they send: `events` are (eid, type, body).
pub fn due_deliveries(
    claimed: Vec<DeliveryRecord>,
    events: Vec<(i64, String, String)>,
) -> Result<Vec<DueDelivery>> {
    let events: std::collections::HashMap<i64, (String, String)> = events
        .into_iter()
        .map(|(eid, event_type, body)| (eid, (event_type, body)))
        .collect();
    claimed
        .into_iter()
        .map(|d| {
            let (event_type, body) = events.get(&d.eid).cloned().ok_or_else(|| {
                StoreError::Corrupt(format!("delivery {} has no event {}", d.did, d.eid))
            })?;
            Ok(DueDelivery {
                delivery: d,
                event_type,
                body,
            })
        })
        .collect()
}

pub fn parse_json(s: Option<String>) -> Result<Option<serde_json::Value>> {
    s.map(|s| {
        serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("stored JSON: {e}")))
    })
    .transpose()
}

pub fn json_text(v: &Option<serde_json::Value>) -> Option<String> {
    v.as_ref().map(|v| v.to_string())
}

/// Stored duration summaries as read, without those of a kind whose name no
/// longer reads (a summary is a statistic: it is learned again, not an error).
pub fn stored_durations(rows: Vec<(String, String, Vec<u8>)>) -> Vec<StoredDurations> {
    rows.into_iter()
        .filter_map(|(kind, group, summary)| match kind.parse::<Kind>() {
            Ok(kind) => Some(StoredDurations {
                kind,
                group,
                summary,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "skipping a stored duration summary");
                None
            }
        })
        .collect()
}

pub fn new_webhook_id() -> String {
    format!("msg_{}", ulid::Ulid::new())
}

/// The counters' rows, `(bucket, n)` (see the migration `counters`), as
/// [`Counts`]: `held` are a store's state changes not in its counters yet
/// (the state counted, the state now); `overdue` and `oldest` are as the store
/// found them.
pub fn counts<'a>(
    buckets: Vec<(String, i64)>,
    held: impl Iterator<Item = (&'a Option<String>, &'a Option<String>)>,
    overdue: i64,
    oldest: Option<(String, String, Millis)>,
) -> Result<Counts> {
    use std::collections::BTreeMap;
    let mut by_state: BTreeMap<Option<String>, i64> = BTreeMap::new();
    let mut by_outcome: BTreeMap<String, i64> = BTreeMap::new();
    let mut by_status: BTreeMap<String, i64> = BTreeMap::new();
    for (bucket, n) in buckets {
        if let Some(state) = bucket.strip_prefix("running") {
            let state = match state.strip_prefix(':') {
                Some(s) => Some(s.to_string()),
                None if state.is_empty() => None,
                None => return Err(StoreError::Corrupt(format!("counter {bucket:?}"))),
            };
            *by_state.entry(state).or_default() += n;
        } else if let Some(outcome) = bucket.strip_prefix("ended:") {
            *by_outcome.entry(outcome.to_string()).or_default() += n;
        } else if let Some(status) = bucket.strip_prefix("delivery:") {
            *by_status.entry(status.to_string()).or_default() += n;
        } else {
            return Err(StoreError::Corrupt(format!("counter {bucket:?}")));
        }
    }
    for (counted, now) in held {
        if counted != now {
            *by_state.entry(counted.clone()).or_default() -= 1;
            *by_state.entry(now.clone()).or_default() += 1;
        }
    }
    let running_by_state: Vec<(Option<String>, i64)> =
        by_state.into_iter().filter(|(_, n)| *n > 0).collect();
    Ok(Counts {
        running: running_by_state.iter().map(|(_, n)| n).sum(),
        running_by_state,
        ended_by_outcome: by_outcome.into_iter().filter(|(_, n)| *n > 0).collect(),
        overdue,
        oldest_running: oldest
            .map(|(kind, id, at)| {
                Ok::<_, StoreError>((kind.parse().map_err(StoreError::Corrupt)?, id, at))
            })
            .transpose()?,
        deliveries_by_status: by_status.into_iter().filter(|(_, n)| *n > 0).collect(),
    })
}
