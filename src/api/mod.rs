//! The HTTP surface: one file per resource, each with its routes. Handlers parse
//! and check input, call the store, and shape answers; they decide nothing about
//! polling or delivery.

pub mod error;
mod events;
mod health;
mod jobs;
pub mod openapi;
mod page;
pub mod stall;
mod status;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use subtle::ConstantTimeEq;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::config::Settings;
use crate::poller::budget::Budget;
use crate::store::writer::Signals;
use crate::store::DynStore;
use error::ApiError;

/// The largest page a listing (`GET /v1/jobs`, `GET /v1/deliveries`) gives.
const MAX_PAGE: u32 = 1000;

/// The page size a listing's `limit` asks for: 100 by default, 1 to [`MAX_PAGE`].
fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    Ok(limit)
}

/// One page of a listing that read `limit + 1` rows: the first `limit`, and the
/// `cursor` of the last of them when there is more (`None` on the last page).
fn one_page<T, C>(
    mut rows: Vec<T>,
    limit: u32,
    cursor: impl FnOnce(&T) -> C,
) -> (Vec<T>, Option<C>) {
    if rows.len() <= limit as usize {
        return (rows, None);
    }
    rows.truncate(limit as usize);
    let next = rows.last().map(cursor);
    (rows, next)
}

/// What every handler may use.
pub struct AppState {
    pub store: DynStore,
    pub settings: Arc<Settings>,
    pub signals: Arc<Signals>,
    /// Every configured upstream, in the order of the settings.
    pub upstreams: Vec<UpstreamState>,
    /// The replicas sharing the store's budgets (PostgreSQL); `None` alone.
    pub replicas: Option<Arc<crate::poller::replicas::Replicas>>,
    /// The kinds a request may name: those of the configured upstreams.
    pub kinds: Vec<crate::model::Kind>,
    pub started: Instant,
    /// Cancelled at shutdown: long-polls return early, event streams end.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Event streams (`GET /v1/events`) open now.
    pub streams: std::sync::atomic::AtomicUsize,
    /// What the learned cadence knows (for `/v1/status`).
    pub history: Arc<crate::poller::history::History>,
}

/// One upstream as the API reports it: its name, where it is, its kinds, its budget.
pub struct UpstreamState {
    pub name: String,
    /// The base URL without credentials or query.
    pub base_url: String,
    pub kinds: Vec<crate::model::Kind>,
    pub budget: Arc<Budget>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// Each upstream's name and health, read now.
    pub fn upstream_health(&self) -> Vec<(&str, crate::poller::budget::UpstreamHealth)> {
        self.upstreams
            .iter()
            .map(|u| (u.name.as_str(), u.budget.health()))
            .collect()
    }

    /// The configured kind named `name`; never interns a client's string.
    pub fn kind(&self, name: &str) -> Result<crate::model::Kind, String> {
        self.kinds
            .iter()
            .find(|k| k.as_str() == name)
            .copied()
            .ok_or_else(|| {
                let known: Vec<String> = self.kinds.iter().map(|k| format!("{k:?}")).collect();
                format!(
                    "unknown kind {name:?}: the configured kinds are {}",
                    known.join(", ")
                )
            })
    }
}

pub fn router(state: SharedState) -> Router {
    let v1 = Router::new()
        .merge(jobs::routes())
        .merge(status::routes())
        .merge(events::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(v1)
        .merge(health::routes())
        .merge(openapi::routes())
        .merge(page::routes())
        .layer(middleware::map_response(error::json_errors))
        .layer(DefaultBodyLimit::max(state.settings.api.max_body_bytes))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|m| m.as_str())
                .unwrap_or("unmatched");
            let id = req
                .extensions()
                .get::<RequestId>()
                .and_then(|id| id.header_value().to_str().ok())
                .unwrap_or("");
            tracing::info_span!("request", method = %req.method(), route, request_id = id)
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(Ulids))
        .with_state(state)
}

#[derive(Clone, Copy)]
struct Ulids;

impl MakeRequestId for Ulids {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&ulid::Ulid::new().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// `api.token`, when set, guards every `/v1` route (compared in constant time).
async fn require_token(
    State(state): State<SharedState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.settings.api.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this API wants `Authorization: Bearer <api.token>`",
            ));
        }
    }
    Ok(next.run(req).await)
}
