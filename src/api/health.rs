//! `/healthz` (the process answers) and `/readyz` (the store answers and the
//! upstream credentials are not known bad).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::SharedState;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive.", body = super::openapi::Health)),
)]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The store answers and the upstream credentials are not known bad.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = super::openapi::Ready),
        (status = 503, description = "Not ready: `problems` says why.", body = super::openapi::Ready),
    ),
)]
async fn readyz(State(state): State<SharedState>) -> (StatusCode, Json<Value>) {
    let mut problems = Vec::new();
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: store does not answer");
        problems.push("the store does not answer".to_string());
    } else {
        use std::sync::atomic::Ordering::Relaxed;
        if state.signals.write_failing.load(Relaxed) {
            problems.push(
                "the store does not take writes (poll results are waiting to be committed)"
                    .to_string(),
            );
        }
        if state.signals.checkpoint_failing.load(Relaxed) {
            problems.push(
                "the store does not take the poll bookkeeping (the last checkpoint failed; it is kept in memory and tried again)"
                    .to_string(),
            );
        }
    }
    for u in &state.upstreams {
        if u.budget.credentials_rejected() {
            problems.push(format!(
                "upstream {:?} rejects our credentials (401/403); its polling is paused",
                u.name
            ));
        }
    }
    if problems.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "problems": problems})),
        )
    }
}

/// Prometheus metrics (text format 0.0.4): polls by result, upstream latency, 429s
/// and pauses, outcomes, deliveries by result and their latency, store write latency;
/// then this daemon's watches by state and outcome, delivery backlog and allowed rate.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "The metrics; `jobwatch_store_up` is 0 when the store did not answer.", content_type = "text/plain", body = String)),
)]
async fn metrics(State(state): State<SharedState>) -> impl axum::response::IntoResponse {
    // Events come from the process-wide recorder, levels from this daemon's store
    // and budget, read now (see `crate::metrics`).
    let counts = match state.store.counts(crate::store::now_ms()).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the store does not answer");
            None
        }
    };
    let body = crate::metrics::render(
        crate::metrics::install(),
        counts.as_ref(),
        &state.upstream_health(),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
