//! The JSON shape of a watch: what `GET /v1/jobs/{kind}/{id}` answers and what an
//! event's `data` carries. One function, so the two can never drift apart.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::store::{DeliveryRecord, Millis, WatchRecord};

pub fn rfc3339(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn opt_time(ms: Option<Millis>) -> Value {
    ms.map(|m| Value::String(rfc3339(m))).unwrap_or(Value::Null)
}

pub fn watch(w: &WatchRecord) -> Value {
    json!({
        "kind": w.kind,
        "id": w.job_id,
        "generation": w.generation,
        "state": w.state,
        "outcome": w.outcome,
        "ended_at": opt_time(w.outcome_at),
        "upstream": {
            "created": w.upstream.created,
            "started": w.upstream.started,
            "ended": w.upstream.ended,
            "errors": w.upstream.errors,
        },
        "watched_at": rfc3339(w.watched_at),
        "deadline": opt_time(w.deadline),
        "last_poll_at": opt_time(w.last_poll_at),
        "next_poll_at": if w.outcome.is_some() { Value::Null } else { opt_time(w.next_poll_at) },
        "poll_count": w.poll_count,
        "error_count": w.error_count,
        "last_error": w.last_error,
        "webhook_url": w.webhook_url,
        "metadata": w.metadata,
    })
}

pub fn delivery(d: &DeliveryRecord) -> Value {
    json!({
        "id": d.did,
        "webhook_id": d.webhook_id,
        "target": d.target,
        "url": d.url,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": opt_time(d.next_attempt_at),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created_at": rfc3339(d.created_at),
        "delivered_at": opt_time(d.delivered_at),
    })
}

/// The body of an event: `{"type", "timestamp" (the outcome's time), "data" (the watch)}`.
pub fn event_body(event_type: &str, w: &WatchRecord) -> String {
    json!({
        "type": event_type,
        "timestamp": opt_time(w.outcome_at),
        "data": watch(w),
    })
    .to_string()
}
