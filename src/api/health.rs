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
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<SharedState>) -> (StatusCode, Json<Value>) {
    let mut problems = Vec::new();
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: store does not answer");
        problems.push("the store does not answer".to_string());
    }
    if state.budget.credentials_rejected() {
        problems
            .push("the upstream rejects our credentials (401/403); polling is paused".to_string());
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
