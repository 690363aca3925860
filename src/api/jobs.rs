//! `/v1/jobs`: start watching, read a watch (optionally waiting for its outcome),
//! list watches, stop watching.

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::error::{ApiError, ApiResult};
use super::SharedState;
use crate::model::{check_id, Kind, Outcome};
use crate::store::{now_ms, Cancelled, Cursor, ListFilter, Millis, NewWatches, WatchRecord};
use crate::view;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/jobs", post(create).get(list))
        .route("/v1/jobs/{kind}/{id}", get(show).delete(cancel))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    kind: Option<String>,
    ids: Option<Vec<String>>,
    webhook_url: Option<String>,
    timeout_seconds: Option<f64>,
    metadata: Option<Value>,
}

/// Longest deadline a POST may ask for: ten years.
const MAX_TIMEOUT_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

/// Start watching jobs. Answers only after the watches are durably stored.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body(content = super::openapi::CreateJobsRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored: how many watches are new and how many were already running.", body = super::openapi::JobsAccepted),
        (status = 400, description = "The body is not JSON, not an object of the documented fields, or lacks `kind` or `ids` (codes malformed_json, invalid_body, missing_kind, missing_ids, unreadable_body).", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is larger than api.max_body_bytes (code body_too_large).", body = super::openapi::ErrorBody),
        (status = 422, description = "A value is not allowed (codes unknown_kind, empty_ids, too_many_ids, invalid_id, invalid_webhook_url, webhook_secret_missing, invalid_timeout, invalid_metadata).", body = super::openapi::ErrorBody),
    ),
)]
async fn create(
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let settings = &state.settings;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body is larger than {} bytes (api.max_body_bytes)",
                    settings.api.max_body_bytes
                ),
            )
        } else {
            ApiError::bad_request(
                "unreadable_body",
                format!("the request body could not be read: {e}"),
            )
        }
    })?;
    let parsed: CreateBody = serde_json::from_slice(&body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::bad_request(
                "malformed_json",
                format!("the request body is not valid JSON: {e}"),
            )
        } else {
            ApiError::bad_request(
                "invalid_body",
                format!("the request body does not have the expected shape: {e}"),
            )
        }
    })?;

    let kind: Kind = match parsed.kind.as_deref() {
        None => {
            return Err(ApiError::bad_request(
                "missing_kind",
                "`kind` is required: \"copy\" or \"delete\"",
            ))
        }
        Some(k) => state
            .kind(k)
            .map_err(|e| ApiError::unprocessable("unknown_kind", e))?,
    };
    let ids = parsed.ids.ok_or_else(|| {
        ApiError::bad_request("missing_ids", "`ids` is required: a list of job ids")
    })?;
    if ids.is_empty() {
        return Err(ApiError::unprocessable(
            "empty_ids",
            "`ids` is empty: give at least one job id",
        ));
    }
    let max = settings.api.max_ids_per_request;
    if ids.len() > max {
        return Err(ApiError::unprocessable(
            "too_many_ids",
            format!(
                "{} ids in one request; at most {max} are allowed (api.max_ids_per_request)",
                ids.len()
            ),
        ));
    }
    for id in &ids {
        check_id(id).map_err(|e| ApiError::unprocessable("invalid_id", e))?;
    }
    let received = ids.len();
    let mut seen = HashSet::with_capacity(ids.len());
    let ids: Vec<String> = ids
        .into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect();
    let duplicates = received - ids.len();

    let webhook_url = match parsed.webhook_url {
        None => None,
        Some(raw) => {
            let url = url::Url::parse(&raw).map_err(|e| {
                ApiError::unprocessable(
                    "invalid_webhook_url",
                    format!("webhook_url {raw:?} is not a URL: {e}"),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || raw.len() > 2048
            {
                return Err(ApiError::unprocessable(
                    "invalid_webhook_url",
                    format!("webhook_url {raw:?} must be an http or https URL with a host, at most 2048 characters"),
                ));
            }
            if settings.webhooks.signing_secret.is_none() {
                return Err(ApiError::unprocessable(
                    "webhook_secret_missing",
                    "webhook_url was given but this daemon has no webhooks.signing_secret to sign deliveries with; set it, or post without webhook_url",
                ));
            }
            Some(url.to_string())
        }
    };

    let timeout = match parsed.timeout_seconds {
        Some(t) if !(t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECONDS) => {
            return Err(ApiError::unprocessable(
                "invalid_timeout",
                format!("timeout_seconds {t} must be above 0 and at most {MAX_TIMEOUT_SECONDS}"),
            ))
        }
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => settings.poller.default_timeout,
    };
    let metadata = match parsed.metadata {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m),
        Some(_) => {
            return Err(ApiError::unprocessable(
                "invalid_metadata",
                "`metadata` must be a JSON object",
            ))
        }
    };

    let now = now_ms();
    let initial = settings.poller.initial_interval.as_millis() as Millis;
    let jitter = (initial as f64 * settings.poller.jitter) as Millis;
    let new = NewWatches {
        kind,
        ids,
        webhook_url,
        metadata,
        deadline: timeout.map(|t| now + t.as_millis() as Millis),
        now,
        first_poll_min: initial - jitter,
        first_poll_spread: 2 * jitter + 1,
        interval_ms: initial,
    };
    let started = std::time::Instant::now();
    let ingested = state.store.insert_watches(&new).await?;
    crate::metrics::store_write("insert_watches", started.elapsed());
    if ingested.new > 0 {
        state.signals.watches_changed();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "kind": kind,
            "received": received,
            "new": ingested.new,
            "already_watching": ingested.already_watching,
            "duplicates_ignored": duplicates,
        })),
    ))
}

fn parse_key(state: &SharedState, kind: &str, id: &str) -> ApiResult<Kind> {
    let kind = state
        .kind(kind)
        .map_err(|e| ApiError::bad_request("unknown_kind", e))?;
    check_id(id).map_err(|e| ApiError::bad_request("invalid_id", e))?;
    Ok(kind)
}

#[derive(Deserialize)]
struct ShowQuery {
    wait: Option<f64>,
}

/// A watch and its webhook deliveries; with `?wait=SECONDS`, once it has an outcome
/// or the time is up (the HTTP form of `wait_for_completion(timeout)`).
#[utoipa::path(
    get,
    path = "/v1/jobs/{kind}/{id}",
    tag = "jobs",
    params(
        ("kind" = crate::model::Kind, Path, description = "The upstream job's kind."),
        ("id" = super::openapi::JobId, Path, description = "The upstream job's id."),
        ("wait" = Option<f64>, Query, minimum = 0.0, description = "Hold the request until the watch has an outcome or this many seconds passed (cut to api.max_wait)."),
    ),
    responses(
        (status = 200, description = "The watch (with an outcome, unless it still runs when the wait ends).", body = super::openapi::WatchWithDeliveries),
        (status = 400, description = "Unknown kind, an id outside the allowed form, or a bad `wait` (codes unknown_kind, invalid_id, invalid_wait, invalid_query).", body = super::openapi::ErrorBody),
        (status = 404, description = "No watch of this job (code watch_not_found).", body = super::openapi::ErrorBody),
    ),
)]
async fn show(
    State(state): State<SharedState>,
    Path((kind, id)): Path<(String, String)>,
    query: Result<Query<ShowQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let kind = parse_key(&state, &kind, &id)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let wait = match query.wait {
        None => Duration::ZERO,
        Some(w) if w.is_finite() && w >= 0.0 => {
            // Cut before converting: a huge wait would overflow a Duration.
            Duration::from_secs_f64(w.min(state.settings.api.max_wait.as_secs_f64()))
        }
        Some(w) => {
            return Err(ApiError::bad_request(
                "invalid_wait",
                format!("wait={w} must be a number of seconds >= 0"),
            ))
        }
    };
    // Subscribe before reading, so an outcome stored in between is not missed.
    let mut finished = state.signals.finished.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let mut watch = find(&state, kind, &id).await?;
    while watch.outcome.is_none() && !wait.is_zero() {
        let next = tokio::select! {
            r = tokio::time::timeout_at(deadline, finished.recv()) => r,
            _ = state.shutdown.cancelled() => break,
        };
        match next {
            Err(_) => break,
            Ok(Ok(wid)) if wid != watch.wid => continue,
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => watch = find(&state, kind, &id).await?,
            Ok(Err(RecvError::Closed)) => break,
        }
    }
    let deliveries = state
        .store
        .deliveries_of_watch(watch.wid, watch.generation)
        .await?;
    let mut body = view::watch(&watch);
    body["deliveries"] = deliveries.iter().map(view::delivery).collect();
    Ok(Json(body))
}

async fn find(state: &SharedState, kind: Kind, id: &str) -> ApiResult<WatchRecord> {
    state.store.get_watch(kind, id).await?.ok_or_else(|| {
        ApiError::not_found("watch_not_found", format!("no watch of {kind} job {id:?}"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    kind: Option<String>,
    state: Option<String>,
    outcome: Option<String>,
    running: Option<bool>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A page of watches, newest first.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(
        ("kind" = Option<crate::model::Kind>, Query, description = "Only watches of this kind."),
        ("state" = Option<String>, Query, description = "Only watches whose last reported state is this (e.g. RUNNING)."),
        ("outcome" = Option<crate::model::Outcome>, Query, description = "Only watches that ended so."),
        ("running" = Option<bool>, Query, description = "Only running (true) or only ended (false) watches."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 100 by default."),
        ("cursor" = Option<String>, Query, pattern = "^([0-9]{1,15}\\.[0-9]{1,15})?$", description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "One page; `next_cursor` is null on the last.", body = super::openapi::WatchPage),
        (status = 400, description = "A filter is not allowed (codes invalid_query, unknown_kind, unknown_outcome, invalid_limit, invalid_cursor).", body = super::openapi::ErrorBody),
    ),
)]
async fn list(
    State(state): State<SharedState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let filter = ListFilter {
        kind: q
            .kind
            .map(|k| state.kind(&k))
            .transpose()
            .map_err(|e| ApiError::bad_request("unknown_kind", e))?,
        state: q.state.filter(|s| !s.is_empty()),
        outcome: q
            .outcome
            .map(|o| o.parse::<Outcome>())
            .transpose()
            .map_err(|e| ApiError::bad_request("unknown_outcome", e))?,
        running: q.running,
    };
    let limit = super::page_limit(q.limit)?;
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(Cursor::decode(c).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                format!("cursor {c:?} is not one this API gave out"),
            )
        })?),
    };
    let rows = state.store.list_watches(&filter, limit + 1, after).await?;
    let (page, next) = super::one_page(rows, limit, |w| {
        Cursor {
            watched_at: w.watched_at,
            wid: w.wid,
        }
        .encode()
    });
    Ok(Json(json!({
        "jobs": page.iter().map(view::watch).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

/// Stop watching: the watch ends `cancelled` (no webhook is sent for it; the
/// event stream has it as `job.cancelled`).
#[utoipa::path(
    delete,
    path = "/v1/jobs/{kind}/{id}",
    tag = "jobs",
    params(
        ("kind" = crate::model::Kind, Path, description = "The upstream job's kind."),
        ("id" = super::openapi::JobId, Path, description = "The upstream job's id."),
    ),
    responses(
        (status = 200, description = "The watch, now cancelled.", body = super::openapi::Watch),
        (status = 400, description = "Unknown kind or an id outside the allowed form (codes unknown_kind, invalid_id).", body = super::openapi::ErrorBody),
        (status = 404, description = "No watch of this job (code watch_not_found).", body = super::openapi::ErrorBody),
        (status = 409, description = "The watch already ended (code already_ended).", body = super::openapi::ErrorBody),
    ),
)]
async fn cancel(
    State(state): State<SharedState>,
    Path((kind, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let kind = parse_key(&state, &kind, &id)?;
    match state.store.cancel_watch(kind, &id, now_ms()).await? {
        Cancelled::Now(w) => {
            let _ = state.signals.finished.send(w.wid);
            // The cancellation was stored as an event of the stream.
            state.signals.events_committed();
            Ok(Json(view::watch(&w)))
        }
        Cancelled::AlreadyEnded(w) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_ended",
            format!(
                "the watch of {kind} job {id:?} already ended ({})",
                w.outcome.map(|o| o.as_str()).unwrap_or("unknown")
            ),
        )),
        Cancelled::Unknown => Err(ApiError::not_found(
            "watch_not_found",
            format!("no watch of {kind} job {id:?}"),
        )),
    }
}
