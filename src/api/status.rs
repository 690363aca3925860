//! `/v1/status` (the aggregate an operator looks at first) and `/v1/deliveries`
//! (webhook deliveries, their attempts, and redelivery of dead ones).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::SharedState;
use crate::poller::budget::UpstreamHealth;
use crate::store::{now_ms, redact_url, DeliveryStatus, Retried};
use crate::view;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/deliveries/{id}", get(show_delivery))
        .route("/v1/deliveries/{id}/retry", post(retry_delivery))
}

/// The aggregate: watches by state and outcome, upstream health, webhook backlog.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "operations",
    responses(
        (status = 200, description = "The aggregate status.", body = super::openapi::StatusBody),
    ),
)]
async fn status(State(state): State<SharedState>) -> ApiResult<Json<Value>> {
    let now = now_ms();
    let counts = state.store.counts(now).await?;
    let positions = state.store.event_positions().await?;
    let health = state.upstream_health();
    let by_state: BTreeMap<String, i64> = counts
        .running_by_state
        .iter()
        .map(|(s, n)| (s.clone().unwrap_or_else(|| "unknown_yet".into()), *n))
        .collect();
    let by_outcome: BTreeMap<&str, i64> = counts
        .ended_by_outcome
        .iter()
        .map(|(o, n)| (o.as_str(), *n))
        .collect();
    let mut deliveries: BTreeMap<&str, i64> = DeliveryStatus::ALL
        .iter()
        .map(|s| (s.as_str(), 0))
        .collect();
    for (s, n) in &counts.deliveries_by_status {
        deliveries.insert(s.as_str(), *n);
    }
    let oldest = counts.oldest_running.as_ref().map(|(kind, id, at)| {
        json!({"kind": kind, "id": id, "watched_at": view::rfc3339(*at), "age_seconds": (now - at) as f64 / 1000.0})
    });
    Ok(Json(json!({
        "watches": {
            "running": counts.running,
            "running_by_state": by_state,
            "ended_by_outcome": by_outcome,
            "overdue": counts.overdue,
            "oldest_running": oldest,
        },
        "upstream": UpstreamHealth::combined(health.iter().map(|(_, h)| h)),
        "upstreams": state.upstreams.iter().zip(&health).map(|(u, (_, h))| json!({
            "name": u.name,
            "base_url": u.base_url,
            "kinds": u.kinds,
            "health": h,
        })).collect::<Vec<_>>(),
        "replicas": state.replicas.as_ref().map(|r| r.status()),
        "webhooks": {
            "backlog": deliveries.get("pending").copied().unwrap_or(0) + deliveries.get("retrying").copied().unwrap_or(0),
            "deliveries": deliveries,
        },
        "events": {
            "newest_position": positions.newest,
            "streams": state.streams.load(std::sync::atomic::Ordering::Relaxed),
        },
        "cadence": {
            "policy": state.settings.poller.cadence.as_str(),
            "kinds": state.history.kinds(),
        },
        "store": {"url": redact_url(&state.settings.store.url)},
        "uptime_seconds": state.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<i64>,
}

/// Webhook deliveries, newest first.
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "deliveries",
    params(
        ("status" = Option<String>, Query, pattern = "^(pending|retrying|delivered|dead|gone)?$", description = "Only deliveries in this status (empty: all)."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 100 by default."),
        ("cursor" = Option<i64>, Query, description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "One page; `next_cursor` is null on the last.", body = super::openapi::DeliveryPage),
        (status = 400, description = "A filter is not allowed (codes invalid_query, unknown_status, invalid_limit).", body = super::openapi::ErrorBody),
    ),
)]
async fn list_deliveries(
    State(state): State<SharedState>,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "unknown_status",
                format!("status {s:?} is not one of pending, retrying, delivered, dead, gone"),
            )
        })?),
    };
    let limit = super::page_limit(q.limit)?;
    let rows = state
        .store
        .list_deliveries(status, limit + 1, q.cursor)
        .await?;
    let (page, next) = super::one_page(rows, limit, |d| d.did);
    Ok(Json(json!({
        "deliveries": page.iter().map(view::delivery).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

fn parse_delivery_id(raw: &str) -> ApiResult<i64> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_delivery_id",
            format!("delivery id {raw:?} is not a number"),
        )
    })
}

/// One delivery with every attempt made.
#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}",
    tag = "deliveries",
    params(("id" = i64, Path, description = "The delivery's id.")),
    responses(
        (status = 200, description = "The delivery and its attempts.", body = super::openapi::DeliveryDetail),
        (status = 400, description = "The id is not a number (code invalid_delivery_id).", body = super::openapi::ErrorBody),
        (status = 404, description = "No such delivery (code delivery_not_found).", body = super::openapi::ErrorBody),
    ),
)]
async fn show_delivery(
    State(state): State<SharedState>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let did = parse_delivery_id(&raw)?;
    let found = state
        .store
        .list_deliveries(None, 1, Some(did.saturating_add(1)))
        .await?;
    let d = found
        .into_iter()
        .find(|d| d.did == did)
        .ok_or_else(|| ApiError::not_found("delivery_not_found", format!("no delivery {did}")))?;
    let attempts = state.store.attempts_of(did).await?;
    let mut body = view::delivery(&d);
    body["attempt_log"] = attempts
        .iter()
        .map(|a| {
            json!({
                "at": view::rfc3339(a.at),
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": a.duration_ms,
                "response": a.response,
            })
        })
        .collect();
    Ok(Json(body))
}

/// Send a dead (or gone) delivery again: one more attempt, right away.
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/retry",
    tag = "deliveries",
    params(("id" = i64, Path, description = "The delivery's id.")),
    responses(
        (status = 202, description = "Queued again.", body = super::openapi::Delivery),
        (status = 400, description = "The id is not a number (code invalid_delivery_id).", body = super::openapi::ErrorBody),
        (status = 404, description = "No such delivery (code delivery_not_found).", body = super::openapi::ErrorBody),
        (status = 409, description = "Only dead or gone deliveries can be sent again (code not_retryable).", body = super::openapi::ErrorBody),
    ),
)]
async fn retry_delivery(
    State(state): State<SharedState>,
    Path(raw): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let did = parse_delivery_id(&raw)?;
    match state.store.retry_delivery(did, now_ms()).await? {
        Retried::Now(d) => {
            state.signals.deliveries.notify_one();
            Ok((StatusCode::ACCEPTED, Json(view::delivery(&d))))
        }
        Retried::NotRetryable(d) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_retryable",
            format!(
                "delivery {did} is {}; only dead or gone deliveries can be sent again",
                d.status.as_str()
            ),
        )),
        Retried::Unknown => Err(ApiError::not_found(
            "delivery_not_found",
            format!("no delivery {did}"),
        )),
    }
}
