//! Row shapes shared by every database: plain column types that both SQLite and
//! PostgreSQL decode (`sqlx::FromRow` is generic over the row type), converted
//! into the store's records in one place.

use super::*;

pub const WATCH_COLS: &str = "wid, kind, job_id, generation, webhook_url, metadata, watched_at, deadline, state, \
    upstream_created, upstream_started, upstream_ended, upstream_errors, outcome, outcome_at, last_poll_at, \
    next_poll_at, interval_ms, poll_count, error_count, consecutive_errors, last_error, not_found_since";

/// The rows of a query as one JSON array of arrays (`SELECT {WATCHES_AS_JSON} FROM
/// watches WHERE ...`): one value to hand over from sqlx's SQLite thread instead
/// of a row (and a copy of each column) per watch. The claim reads this way.
pub const WATCHES_AS_JSON: &str =
    "json_group_array(json_array(wid, kind, job_id, generation, webhook_url, \
    metadata, watched_at, deadline, state, upstream_created, upstream_started, upstream_ended, \
    upstream_errors, outcome, outcome_at, last_poll_at, next_poll_at, interval_ms, poll_count, \
    error_count, consecutive_errors, last_error, not_found_since))";

pub const DELIVERY_COLS: &str =
    "did, eid, wid, webhook_id, target, url, status, attempts, next_attempt_at, \
    last_status, last_error, created_at, delivered_at";

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

#[derive(sqlx::FromRow)]
pub struct DeliveryRow {
    did: i64,
    eid: i64,
    wid: i64,
    webhook_id: String,
    target: String,
    url: String,
    status: String,
    attempts: i64,
    next_attempt_at: Option<i64>,
    last_status: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    delivered_at: Option<i64>,
}

impl TryFrom<DeliveryRow> for DeliveryRecord {
    type Error = StoreError;
    fn try_from(r: DeliveryRow) -> Result<DeliveryRecord> {
        Ok(DeliveryRecord {
            did: r.did,
            eid: r.eid,
            wid: r.wid,
            webhook_id: r.webhook_id,
            target: match r.target.as_str() {
                "watch" => Target::Watch,
                "endpoint" => Target::Endpoint,
                other => return Err(StoreError::Corrupt(format!("delivery target {other:?}"))),
            },
            url: r.url,
            status: DeliveryStatus::parse(&r.status)
                .ok_or_else(|| StoreError::Corrupt(format!("delivery status {:?}", r.status)))?,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_status: r.last_status,
            last_error: r.last_error,
            created_at: r.created_at,
            delivered_at: r.delivered_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct AttemptRow {
    at: i64,
    status_code: Option<i64>,
    error: Option<String>,
    duration_ms: i64,
    response: Option<String>,
}

impl From<AttemptRow> for AttemptRecord {
    fn from(r: AttemptRow) -> AttemptRecord {
        AttemptRecord {
            at: r.at,
            status_code: r.status_code,
            error: r.error,
            duration_ms: r.duration_ms,
            response: r.response,
        }
    }
}

/// The watches of a [`WATCHES_AS_JSON`] value.
pub fn watches_from_json(json: &str) -> Result<Vec<WatchRecord>> {
    let rows: Vec<WatchRow> = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("watch rows as JSON: {e}")))?;
    watches(rows)
}

pub fn watches(rows: Vec<WatchRow>) -> Result<Vec<WatchRecord>> {
    rows.into_iter().map(WatchRecord::try_from).collect()
}

pub fn deliveries(rows: Vec<DeliveryRow>) -> Result<Vec<DeliveryRecord>> {
    rows.into_iter().map(DeliveryRecord::try_from).collect()
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
