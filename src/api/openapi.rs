//! `GET /openapi.json`: the OpenAPI 3 document of the HTTP API, generated from the
//! handlers' `#[utoipa::path]` annotations and the schemas below (`utoipa`).
//!
//! Most answers are built with `json!` in the handlers (and `view`), so the
//! response schemas here spell out those shapes field by field; schemathesis in CI
//! checks every answer against this document, so a drift fails the build. What
//! depends on the settings (the id limit, the bearer token, `api.max_wait`) is filled
//! in per daemon by [`document`].

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{OpenApi, PartialSchema, ToSchema};

use super::SharedState;
use crate::config::Settings;
use crate::model::{Kind, Outcome};
use crate::poller::budget::{Credentials, UpstreamHealth};
use crate::store::{DeliveryStatus, Target};

/// The document's name for the bearer scheme that `api.token` turns on.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "jobwatch",
        description = "Watches asynchronous jobs on an upstream API and delivers their outcomes as signed webhooks (Standard Webhooks). Every error is `{\"error\":{\"code\",\"message\"}}` with a fitting 4xx/5xx status.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::jobs::create,
        super::jobs::list,
        super::jobs::show,
        super::jobs::cancel,
        super::status::status,
        super::status::list_deliveries,
        super::status::show_delivery,
        super::status::retry_delivery,
        super::events::events,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        super::page::page,
        openapi_json,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        CreateJobsRequest,
        JobsAccepted,
        Watch,
        UpstreamAttributes,
        WatchWithDeliveries,
        WatchPage,
        Delivery,
        DeliveryDetail,
        Attempt,
        DeliveryPage,
        StatusBody,
        CadenceStatus,
        crate::poller::history::KindHistory,
        UpstreamStatus,
        crate::poller::replicas::ReplicaStatus,
        WatchCounts,
        OldestRunning,
        WebhookCounts,
        EventCounts,
        StoreInfo,
        Health,
        Ready,
        JobId,
        Kind,
        Outcome,
        DeliveryStatus,
        Target,
        Credentials,
        UpstreamHealth,
    )),
    tags(
        (name = "jobs", description = "Watches: start, read (optionally waiting for the outcome), list, stop."),
        (name = "deliveries", description = "Webhook deliveries, their attempts, and redelivery of dead ones."),
        (name = "events", description = "Outcomes and state changes as Server-Sent Events, resumable with Last-Event-ID."),
        (name = "operations", description = "Status, health, readiness, metrics and this document."),
    ),
)]
pub struct ApiDoc;

/// The document as this daemon serves it: the static one, with the limits and the
/// authentication of `settings`.
pub fn document(settings: &Settings) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();

    let components = doc.components.get_or_insert_with(Default::default);
    // A kind is one of those configured: what the API accepts (schemathesis sends
    // what the document allows and expects it accepted).
    let kinds: Vec<&str> = settings
        .resolved
        .iter()
        .flat_map(|u| u.kinds.iter().map(|k| k.kind.as_str()))
        .collect();
    components.schemas.insert(
        "Kind".to_string(),
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A configured kind (`GET /v1/status` lists them per upstream).",
            ))
            .enum_values(Some(kinds))
            .into(),
    );
    if let Some(RefOr::T(Schema::Object(body))) = components.schemas.get_mut("CreateJobsRequest") {
        if let Some(RefOr::T(Schema::Array(ids))) = body.properties.get_mut("ids") {
            ids.max_items = Some(settings.api.max_ids_per_request);
            ids.description = Some(format!(
                "Job ids to watch: 1 to {} (api.max_ids_per_request). Repeated ids count once.",
                settings.api.max_ids_per_request
            ));
        }
    }

    let token = settings.api.token.is_some();
    if token {
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <api.token>`"))
                    .build(),
            ),
        );
    }
    // What every /v1 operation may answer besides its own: 503 when the store fails
    // (unless the operation words it itself), and with a token the bearer scheme and
    // the 401 of the guard in front of /v1 (without one nothing answers 401).
    let wanted = vec![SecurityRequirement::new(BEARER, Vec::<String>::new())];
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.delete,
            &mut item.put,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut op.responses.responses;
            responses.entry("503".to_string()).or_insert_with(|| {
                error_response("The store could not complete the request; nothing was changed by it (code store_unavailable).")
            });
            if token {
                op.security = Some(wanted.clone());
                responses.insert(
                    "401".to_string(),
                    error_response("api.token is set and the request lacks `Authorization: Bearer <api.token>` (code unauthorized)."),
                );
            }
        }
    }

    let max_wait = settings.api.max_wait.as_secs_f64();
    if let Some(item) = doc.paths.paths.get_mut("/v1/jobs/{kind}/{id}") {
        if let Some(p) = item
            .get
            .as_mut()
            .and_then(|op| op.parameters.as_mut())
            .and_then(|ps| ps.iter_mut().find(|p| p.name == "wait"))
        {
            p.description = Some(format!(
                "Hold the request until the watch has an outcome or this many seconds passed; at most {max_wait} s are waited (api.max_wait), longer asks are cut to that."
            ));
        }
    }
    doc
}

/// An answer with the error body ([`ErrorBody`]).
fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .into()
}

pub fn routes() -> Router<SharedState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document of this API, as this daemon's settings shape it.", content_type = "application/json", body = Object)),
)]
async fn openapi_json(State(state): State<SharedState>) -> impl IntoResponse {
    let body = document(&state.settings).to_json().unwrap_or_else(|e| {
        // The document is built from literals: this cannot fail on outside data.
        tracing::error!(error = %e, "the OpenAPI document does not serialize");
        "{}".to_string()
    });
    ([(header::CONTENT_TYPE, "application/json")], body)
}

// ---- Schemas. Field names and shapes follow what the handlers send. ----

/// Every error: a machine-readable code and a message for people.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: e.g. `malformed_json`, `invalid_id`, `watch_not_found`,
    /// `store_unavailable`, `unauthorized`, `body_too_large`.
    #[schema(example = "invalid_id")]
    pub code: String,
    /// What was wrong, naming the field or setting.
    pub message: String,
}

/// A job id: 1 to 256 characters from `A-Z a-z 0-9 : . _ -`.
pub struct JobId;

impl PartialSchema for JobId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(256))
            .pattern(Some("^[A-Za-z0-9:._-]+$"))
            .description(Some(
                "A job id: 1 to 256 characters from A-Z a-z 0-9 : . _ -",
            ))
            .examples([serde_json::json!("d1349cc2d8854d998aa6da92dc2bd24")])
            .into()
    }
}

impl ToSchema for JobId {}

/// An http(s) URL with a host, at most 2048 characters.
pub struct WebhookUrl;

impl PartialSchema for WebhookUrl {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .max_length(Some(2048))
            // Narrower than what is accepted (any http(s) URL with a host): a value
            // that matches must be one the handler takes. The last label starts with
            // a letter, as one of digits would make the host an IPv4 address.
            .pattern(Some(
                "^https?://([a-z0-9]+\\.)*[a-z][a-z0-9]*(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~-]*)*$",
            ))
            .description(Some("Where this watch's event is delivered (signed with webhooks.signing_secret; without one the POST is refused with 422). An http or https URL with a host, at most 2048 characters."))
            .examples([serde_json::json!("https://hooks.example.com/jobwatch")])
            .into()
    }
}

/// `POST /v1/jobs`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // the handler parses the body itself, for its error messages
pub struct CreateJobsRequest {
    pub kind: Kind,
    #[schema(min_items = 1, value_type = Vec<JobId>)]
    pub ids: Vec<String>,
    /// Null or absent: no per-watch delivery.
    #[schema(schema_with = webhook_url)]
    pub webhook_url: Option<String>,
    /// The watch's deadline, in seconds from now (null or absent: poller.default_timeout).
    #[schema(exclusive_minimum = 0.0, maximum = 315360000.0)]
    pub timeout_seconds: Option<f64>,
    /// Kept with the watch and sent back in its events.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

fn webhook_url() -> RefOr<Schema> {
    WebhookUrl::schema()
}

/// `202` to `POST /v1/jobs`: the watches are durably stored.
#[derive(Serialize, ToSchema)]
pub struct JobsAccepted {
    pub kind: Kind,
    /// Ids in the request.
    pub received: u64,
    /// Watches started by this request (new ids, and new generations of ended ones).
    pub new: u64,
    /// Ids already being watched: unchanged.
    pub already_watching: u64,
    /// Repeated ids within the request.
    pub duplicates_ignored: u64,
}

/// What the upstream reported, as given (each may be missing).
#[derive(Serialize, ToSchema)]
pub struct UpstreamAttributes {
    #[schema(required = true)]
    pub created: Option<String>,
    #[schema(required = true)]
    pub started: Option<String>,
    #[schema(required = true)]
    pub ended: Option<String>,
    /// The upstream's `errors` attribute, as given.
    #[schema(required = true, value_type = Option<Value>)]
    pub errors: Option<serde_json::Value>,
}

/// A watch: what `GET /v1/jobs/{kind}/{id}` shows and an event's `data` carries.
#[derive(Serialize, ToSchema)]
pub struct Watch {
    pub kind: Kind,
    pub id: String,
    /// 1 for the first watch of `(kind, id)`; a POST after it ended starts the next.
    pub generation: i64,
    /// The last state the upstream reported; null before its first answer.
    #[schema(required = true)]
    pub state: Option<String>,
    /// Null while the watch runs.
    #[schema(required = true)]
    pub outcome: Option<Outcome>,
    #[schema(required = true, format = DateTime)]
    pub ended_at: Option<String>,
    pub upstream: UpstreamAttributes,
    #[schema(format = DateTime)]
    pub watched_at: String,
    #[schema(required = true, format = DateTime)]
    pub deadline: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub last_poll_at: Option<String>,
    /// Null once the watch ended.
    #[schema(required = true, format = DateTime)]
    pub next_poll_at: Option<String>,
    pub poll_count: i64,
    pub error_count: i64,
    #[schema(required = true)]
    pub last_error: Option<String>,
    #[schema(required = true)]
    pub webhook_url: Option<String>,
    #[schema(required = true, value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// `GET /v1/jobs/{kind}/{id}`: the watch and its webhook deliveries.
#[derive(Serialize, ToSchema)]
pub struct WatchWithDeliveries {
    #[serde(flatten)]
    pub watch: Watch,
    pub deliveries: Vec<Delivery>,
}

/// `GET /v1/jobs`: newest first.
#[derive(Serialize, ToSchema)]
pub struct WatchPage {
    pub jobs: Vec<Watch>,
    /// Pass as `cursor` for the next page; null on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One event to one endpoint.
#[derive(Serialize, ToSchema)]
pub struct Delivery {
    pub id: i64,
    /// The `webhook-id` header: the same across retries and restarts.
    pub webhook_id: String,
    pub target: Target,
    pub url: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: i64,
    #[schema(required = true, format = DateTime)]
    pub next_attempt_at: Option<String>,
    /// HTTP status of the last attempt, null if it got no answer.
    #[schema(required = true)]
    pub last_status: Option<i64>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(required = true, format = DateTime)]
    pub delivered_at: Option<String>,
}

/// One attempt of a delivery.
#[derive(Serialize, ToSchema)]
pub struct Attempt {
    #[schema(format = DateTime)]
    pub at: String,
    /// The receiver's status, null if it gave none (timeout, refused...).
    #[schema(required = true)]
    pub status_code: Option<i64>,
    #[schema(required = true)]
    pub error: Option<String>,
    pub duration_ms: i64,
    /// The first KiB of the receiver's answer.
    #[schema(required = true)]
    pub response: Option<String>,
}

/// `GET /v1/deliveries/{id}`: the delivery as the list shows it, plus
/// `attempt_log`, every attempt in order.
#[derive(Serialize, ToSchema)]
pub struct DeliveryDetail {
    pub id: i64,
    pub webhook_id: String,
    pub target: Target,
    pub url: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub attempt_log: Vec<Attempt>,
    #[schema(required = true, format = DateTime)]
    pub next_attempt_at: Option<String>,
    #[schema(required = true)]
    pub last_status: Option<i64>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(required = true, format = DateTime)]
    pub delivered_at: Option<String>,
}

/// `GET /v1/deliveries`: newest first.
#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    /// Pass as `cursor` for the next page; null on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<i64>,
}

/// `GET /v1/status`.
#[derive(Serialize, ToSchema)]
pub struct StatusBody {
    pub watches: WatchCounts,
    /// Every upstream as one: rates and counts added up, the latest pause, the
    /// credentials rejected if any upstream rejects them.
    pub upstream: UpstreamHealth,
    /// Each configured upstream on its own.
    pub upstreams: Vec<UpstreamStatus>,
    /// The replicas sharing a PostgreSQL store and its budgets, as of the last
    /// heartbeat; null on SQLite (one daemon keeps every budget whole).
    #[schema(required = true)]
    pub replicas: Option<Vec<crate::poller::replicas::ReplicaStatus>>,
    pub webhooks: WebhookCounts,
    pub events: EventCounts,
    pub cadence: CadenceStatus,
    pub store: StoreInfo,
    pub uptime_seconds: u64,
    pub version: String,
}

/// The cadence in `GET /v1/status`: the policy, and per kind what the history
/// of ended jobs holds.
#[derive(Serialize, ToSchema)]
pub struct CadenceStatus {
    /// `poller.cadence`: `backoff` or `learned`.
    pub policy: String,
    /// Kinds with ended jobs in the history, by name.
    pub kinds: Vec<crate::poller::history::KindHistory>,
}

/// One upstream in `GET /v1/status`.
#[derive(Serialize, ToSchema)]
pub struct UpstreamStatus {
    /// `vector` for `[upstream]`, else the `[[upstreams]]` entry's name.
    pub name: String,
    pub base_url: String,
    /// The kinds it answers for.
    pub kinds: Vec<Kind>,
    pub health: UpstreamHealth,
}

#[derive(Serialize, ToSchema)]
pub struct WatchCounts {
    pub running: i64,
    /// Running watches by the upstream's last state (`unknown_yet` before its first answer).
    pub running_by_state: BTreeMap<String, i64>,
    /// Ended watches still kept, by outcome.
    pub ended_by_outcome: BTreeMap<String, i64>,
    /// Running watches whose next poll is past due.
    pub overdue: i64,
    #[schema(required = true)]
    pub oldest_running: Option<OldestRunning>,
}

#[derive(Serialize, ToSchema)]
pub struct OldestRunning {
    pub kind: Kind,
    pub id: String,
    #[schema(format = DateTime)]
    pub watched_at: String,
    pub age_seconds: f64,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookCounts {
    /// Deliveries still to send: pending + retrying.
    pub backlog: i64,
    /// Deliveries kept, by status (every status is present).
    pub deliveries: BTreeMap<String, i64>,
}

/// `GET /v1/events`: where the stream stands.
#[derive(Serialize, ToSchema)]
pub struct EventCounts {
    /// The position (SSE `id`) of the newest event ever stored; 0 before the first.
    pub newest_position: i64,
    /// Event streams open on this daemon.
    pub streams: u64,
}

#[derive(Serialize, ToSchema)]
pub struct StoreInfo {
    /// store.url without its password.
    pub url: String,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(pattern = "^ok$")]
    pub status: String,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ready` or `not_ready`.
    #[schema(pattern = "^(ready|not_ready)$")]
    pub status: String,
    /// What is wrong, when not ready.
    #[schema(nullable = false)]
    pub problems: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(extra: &[(&str, &str)]) -> serde_json::Value {
        let settings = Settings::load_with(None, extra).expect("settings");
        serde_json::to_value(document(&settings)).expect("json")
    }

    #[test]
    fn the_token_adds_the_bearer_scheme_and_401s_only_when_set() {
        let open = doc(&[]);
        assert!(open["components"]["securitySchemes"].is_null());
        assert!(open["paths"]["/v1/status"]["get"]["responses"]["401"].is_null());
        let closed = doc(&[("api.token", "s3cret-token")]);
        assert_eq!(
            closed["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
        assert_eq!(
            closed["paths"]["/v1/status"]["get"]["security"][0][BEARER],
            serde_json::json!([])
        );
        assert!(closed["paths"]["/v1/status"]["get"]["responses"]["401"].is_object());
        assert!(closed["paths"]["/healthz"]["get"]["security"].is_null());
    }

    #[test]
    fn the_id_limit_comes_from_the_settings() {
        let d = doc(&[("api.max_ids_per_request", "7")]);
        assert_eq!(
            d["components"]["schemas"]["CreateJobsRequest"]["properties"]["ids"]["maxItems"],
            7
        );
    }
}
