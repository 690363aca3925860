//! The job-status APIs the simulator can speak (`--shape`): each shape's routes, what a job
//! snapshot looks like in it, its error body and its vocabulary of final values.
//!
//! The job model (`jobs`) describes a job's life in Vector's words (PENDING, RUNNING, PAUSED
//! for "a value the API does not document") and its end in the shape's own words: the model
//! asks [`Shape::translate`] for the shape's value of a Vector end and [`Shape::terminal_value`]
//! for the value an `end-<value>-` id names. Everything else about a shape is here.

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderValue, Method, Response, StatusCode};
use chrono::SecondsFormat;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde::Serialize;
use serde_json::json;

use super::http::{json_response, JSON_API};
use super::jobs::{Kind, Phase, Snapshot, JOB_ERROR};

const JSON: &str = "application/json";

/// The job-status API the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Shape {
    /// Vector API v2: JSON:API status documents and the job-creating routes
    #[default]
    #[value(name = "vector")]
    Vector,
    /// a google.longrunning.Operation (AIP-151): GET /v1/operations/{id}
    #[value(name = "google-lro")]
    GoogleLro,
    /// an OpenAI Batch: GET /v1/batches/{id}
    #[value(name = "openai-batch")]
    OpenaiBatch,
    /// a Replicate prediction: GET /v1/predictions/{id}
    #[value(name = "replicate")]
    Replicate,
    /// a GitHub Actions workflow run: GET /repos/{owner}/{repo}/actions/runs/{id}
    #[value(name = "github-actions")]
    GithubActions,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vector => "vector",
            Self::GoogleLro => "google-lro",
            Self::OpenaiBatch => "openai-batch",
            Self::Replicate => "replicate",
            Self::GithubActions => "github-actions",
        })
    }
}

/// A shape's final values.
struct Values {
    /// The end of a job that succeeded (Vector's SUCCESS or DONE without errors).
    success: &'static str,
    /// The end of a job that failed (FAILED, FAILURE, or SUCCESS/DONE with errors).
    failure: &'static str,
    /// Every documented terminal value, the ones `end-<value>-` may name.
    terminal: &'static [&'static str],
}

const VECTOR: Values = Values {
    success: "SUCCESS",
    failure: "FAILED",
    terminal: &["SUCCESS", "DONE", "FAILED", "FAILURE"],
};
/// The google-lro "values" name the result an ended operation carries.
const GOOGLE_LRO: Values = Values {
    success: "response",
    failure: "error",
    terminal: &["response", "error"],
};
const OPENAI_BATCH: Values = Values {
    success: "completed",
    failure: "failed",
    terminal: &["completed", "failed", "expired", "cancelled"],
};
const REPLICATE: Values = Values {
    success: "succeeded",
    failure: "failed",
    terminal: &["succeeded", "failed", "canceled", "aborted"],
};
/// GitHub's terminal values are the run's `conclusion` (its `status` is then `completed`).
const GITHUB_ACTIONS: Values = Values {
    success: "success",
    failure: "failure",
    terminal: &[
        "success",
        "failure",
        "neutral",
        "cancelled",
        "skipped",
        "timed_out",
        "action_required",
        "stale",
        "startup_failure",
    ],
};

impl Shape {
    fn values(self) -> &'static Values {
        match self {
            Self::Vector => &VECTOR,
            Self::GoogleLro => &GOOGLE_LRO,
            Self::OpenaiBatch => &OPENAI_BATCH,
            Self::Replicate => &REPLICATE,
            Self::GithubActions => &GITHUB_ACTIONS,
        }
    }

    /// The shape's end for a Vector end (an id prefix or a `--mix` entry): SUCCESS or DONE
    /// without errors is the shape's success value; FAILED, FAILURE, or SUCCESS/DONE with
    /// errors its failure value; any other name (a `--mix` entry such as `expired=1`) is taken
    /// as the shape's own value. Vector ends are kept as they are, errors included; the other
    /// shapes have no separate errors flag (their failure value carries the error).
    pub(crate) fn translate(self, state: &str, errors: bool) -> (&str, bool) {
        if self == Self::Vector {
            return (state, errors);
        }
        let values = self.values();
        match (state, errors) {
            ("SUCCESS" | "DONE", false) => (values.success, false),
            ("SUCCESS" | "DONE", true) | ("FAILED" | "FAILURE", _) => (values.failure, false),
            (other, _) => (other, false),
        }
    }

    /// The documented terminal value `value` of this shape (what `end-<value>-` ends with), or
    /// `None` when the shape has no such terminal value.
    pub(crate) fn terminal_value(self, value: &str) -> Option<&'static str> {
        self.values().terminal.iter().copied().find(|v| *v == value)
    }

    /// What the shape calls a job, in error messages.
    fn noun(self) -> &'static str {
        match self {
            Self::Vector => "job",
            Self::GoogleLro => "operation",
            Self::OpenaiBatch => "batch",
            Self::Replicate => "prediction",
            Self::GithubActions => "workflow run",
        }
    }

    /// The shape's error body for `status`.
    pub(crate) fn error(self, status: StatusCode, detail: &str) -> Response<Body> {
        let reason = status.canonical_reason().unwrap_or("Error");
        match self {
            // A JSON:API error document.
            Self::Vector => json_response(
                status,
                JSON_API,
                &json!({"errors": [{
                    "status": status.as_str(),
                    "title": reason,
                    "detail": detail,
                }]}),
            ),
            // A google.rpc.Status as Google's JSON APIs wrap it.
            Self::GoogleLro => json_response(
                status,
                JSON,
                &GoogleError {
                    error: GoogleStatus {
                        code: status.as_u16(),
                        message: detail,
                        status: google_status(status),
                    },
                },
            ),
            Self::OpenaiBatch => {
                let (kind, code) = openai_error_type(status);
                json_response(
                    status,
                    JSON,
                    &OpenaiError {
                        error: OpenaiErrorBody {
                            message: detail,
                            kind,
                            param: (),
                            code,
                        },
                    },
                )
            }
            // Problem-details style, as Replicate answers.
            Self::Replicate => json_response(
                status,
                JSON,
                &ReplicateError {
                    title: reason,
                    detail,
                    status: status.as_u16(),
                },
            ),
            // GitHub's message names the status, not the request.
            Self::GithubActions => json_response(
                status,
                JSON,
                &GithubError {
                    message: github_message(status),
                    documentation_url: "https://docs.github.com/rest",
                    status: status.as_str(),
                },
            ),
        }
    }

    /// The 404 of a job that does not exist (yet).
    pub(crate) fn job_not_found(self, kind: Kind, id: &str) -> Response<Body> {
        let detail = match self {
            Self::Vector => format!("no {} job for product `{id}`", kind.name()),
            Self::OpenaiBatch => format!("No batch found with id '{id}'."),
            Self::GoogleLro => format!("operation `operations/{id}` not found"),
            other => format!("no {} `{id}`", other.noun()),
        };
        self.error(StatusCode::NOT_FOUND, &detail)
    }

    /// The 400 of a job that could not begin execution.
    pub(crate) fn job_bad_request(self, kind: Kind, id: &str) -> Response<Body> {
        let detail = match self {
            Self::Vector => format!(
                "the {} job of product `{id}` could not begin execution",
                kind.name()
            ),
            other => format!("the {} `{id}` could not begin execution", other.noun()),
        };
        self.error(StatusCode::BAD_REQUEST, &detail)
    }

    /// The shape's document of a job as `snapshot` shows it. `path` is the request's path
    /// (still percent-encoded), which Replicate's `urls` repeat.
    pub(crate) fn job_document(
        self,
        kind: Kind,
        id: &str,
        path: &str,
        snapshot: &Snapshot<'_>,
    ) -> Response<Body> {
        match self {
            Self::Vector => vector_document(kind, id, snapshot),
            Self::GoogleLro => json_response(StatusCode::OK, JSON, &operation(id, snapshot)),
            Self::OpenaiBatch => json_response(StatusCode::OK, JSON, &batch(id, snapshot)),
            Self::Replicate => json_response(StatusCode::OK, JSON, &prediction(id, path, snapshot)),
            Self::GithubActions => json_response(StatusCode::OK, JSON, &workflow_run(id, snapshot)),
        }
    }
}

// The error bodies, fields in the order each API documents them.

#[derive(Serialize)]
struct GoogleError<'a> {
    error: GoogleStatus<'a>,
}

#[derive(Serialize)]
struct GoogleStatus<'a> {
    code: u16,
    message: &'a str,
    status: &'static str,
}

#[derive(Serialize)]
struct OpenaiError<'a> {
    error: OpenaiErrorBody<'a>,
}

/// `param` is always null here.
#[derive(Serialize)]
struct OpenaiErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: (),
    code: Option<&'static str>,
}

#[derive(Serialize)]
struct ReplicateError<'a> {
    title: &'static str,
    detail: &'a str,
    status: u16,
}

#[derive(Serialize)]
struct GithubError<'a> {
    message: &'static str,
    documentation_url: &'static str,
    status: &'a str,
}

fn google_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 | 501 => "UNIMPLEMENTED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// OpenAI's error `type` and `code` for a status.
fn openai_error_type(status: StatusCode) -> (&'static str, Option<&'static str>) {
    match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        429 => ("requests", Some("rate_limit_exceeded")),
        s if s >= 500 => ("server_error", None),
        _ => ("invalid_request_error", None),
    }
}

fn github_message(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "Bad credentials",
        429 => "API rate limit exceeded",
        500 => "Server Error",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

fn rfc3339(t: SystemTime, precision: SecondsFormat) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(precision, true)
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// ---- vector --------------------------------------------------------------------------------

#[derive(Serialize)]
struct StatusDocument<'a> {
    data: StatusData<'a>,
}

#[derive(Serialize)]
struct StatusData<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    attributes: StatusAttributes<'a>,
}

#[derive(Serialize)]
struct StatusAttributes<'a> {
    state: &'a str,
    created: String,
    started: Option<String>,
    ended: Option<String>,
    errors: &'a [&'a str],
}

fn vector_document(kind: Kind, id: &str, s: &Snapshot<'_>) -> Response<Body> {
    let errors: &[&str] = if s.errors { &[JOB_ERROR] } else { &[] };
    let doc = StatusDocument {
        data: StatusData {
            id,
            kind: kind.job_type(),
            attributes: StatusAttributes {
                state: s.state,
                created: vector_timestamp(s.created),
                started: s.started.map(vector_timestamp),
                ended: s.ended.map(vector_timestamp),
                errors,
            },
        },
    };
    json_response(StatusCode::OK, JSON_API, &doc)
}

/// RFC 3339 with microseconds and an explicit offset, as the real service writes them.
fn vector_timestamp(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

// ---- google-lro ----------------------------------------------------------------------------

/// A google.longrunning.Operation in proto3 JSON: `done` is omitted while false, and an ended
/// operation has exactly one of `error` and `response` (neither for an end value that is not
/// `response` or `error`: "some services might not provide the result").
#[derive(Serialize)]
struct Operation<'a> {
    name: String,
    metadata: OperationMetadata,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RpcStatus<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<AnyType>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OperationMetadata {
    #[serde(rename = "@type")]
    type_url: &'static str,
    create_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_time: Option<String>,
}

#[derive(Serialize)]
struct RpcStatus<'a> {
    code: u16,
    message: &'a str,
    details: [(); 0],
}

/// A `google.protobuf.Any` with no fields beyond its type.
#[derive(Serialize)]
struct AnyType {
    #[serde(rename = "@type")]
    type_url: &'static str,
}

/// google.rpc.Code INTERNAL.
const RPC_INTERNAL: u16 = 13;

fn operation<'a>(id: &str, s: &Snapshot<'a>) -> Operation<'a> {
    let time = |t| rfc3339(t, SecondsFormat::AutoSi);
    let ended = match s.phase() {
        Phase::Ended(value) => Some(value),
        // The shape has no state string: queued, running and unknown all look running.
        Phase::Pending | Phase::Running | Phase::Unknown => None,
    };
    Operation {
        name: format!("operations/{id}"),
        metadata: OperationMetadata {
            type_url: "type.googleapis.com/google.cloud.common.OperationMetadata",
            create_time: time(s.created),
            end_time: s.ended.map(time),
        },
        done: ended.is_some(),
        error: (ended == Some("error")).then_some(RpcStatus {
            code: RPC_INTERNAL,
            message: JOB_ERROR,
            details: [],
        }),
        response: (ended == Some("response")).then_some(AnyType {
            type_url: "type.googleapis.com/google.protobuf.Empty",
        }),
    }
}

// ---- openai-batch --------------------------------------------------------------------------

/// An OpenAI Batch object. Fields typed `()` are always null here.
#[derive(Serialize)]
struct Batch<'a> {
    id: &'a str,
    object: &'static str,
    endpoint: &'static str,
    errors: Option<BatchErrors>,
    input_file_id: &'static str,
    completion_window: &'static str,
    status: &'a str,
    output_file_id: (),
    error_file_id: (),
    created_at: u64,
    in_progress_at: Option<u64>,
    expires_at: u64,
    finalizing_at: (),
    completed_at: Option<u64>,
    failed_at: Option<u64>,
    expired_at: Option<u64>,
    cancelling_at: (),
    cancelled_at: Option<u64>,
    request_counts: RequestCounts,
    metadata: (),
}

#[derive(Serialize)]
struct BatchErrors {
    object: &'static str,
    data: [BatchError; 1],
}

#[derive(Serialize)]
struct BatchError {
    code: &'static str,
    message: &'static str,
    param: (),
    line: (),
}

#[derive(Serialize)]
struct RequestCounts {
    total: u64,
    completed: u64,
    failed: u64,
}

fn batch<'a>(id: &'a str, s: &Snapshot<'a>) -> Batch<'a> {
    let created_at = unix_seconds(s.created);
    let (status, end) = match s.phase() {
        Phase::Pending => ("validating", None),
        Phase::Running => ("in_progress", None),
        Phase::Unknown => ("paused", None),
        Phase::Ended(value) => (value, s.ended.map(unix_seconds)),
    };
    let end_if = |value: &str| end.filter(|_| status == value);
    Batch {
        id,
        object: "batch",
        endpoint: "/v1/chat/completions",
        errors: (status == "failed").then_some(BatchErrors {
            object: "list",
            data: [BatchError {
                code: "invalid_request",
                message: JOB_ERROR,
                param: (),
                line: (),
            }],
        }),
        input_file_id: "file-sim",
        completion_window: "24h",
        status,
        output_file_id: (),
        error_file_id: (),
        created_at,
        in_progress_at: s.started.map(unix_seconds),
        expires_at: created_at + 86_400,
        finalizing_at: (),
        completed_at: end_if("completed"),
        failed_at: end_if("failed"),
        expired_at: end_if("expired"),
        cancelling_at: (),
        cancelled_at: end_if("cancelled"),
        request_counts: RequestCounts {
            total: 0,
            completed: 0,
            failed: 0,
        },
        metadata: (),
    }
}

// ---- replicate -----------------------------------------------------------------------------

#[derive(Serialize)]
struct Prediction<'a> {
    id: &'a str,
    model: &'static str,
    version: &'static str,
    input: Empty,
    logs: &'static str,
    output: Option<[&'static str; 1]>,
    data_removed: bool,
    error: Option<&'static str>,
    status: &'a str,
    created_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    urls: PredictionUrls<'a>,
    metrics: PredictionMetrics,
}

/// `{}`
#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct PredictionUrls<'a> {
    get: &'a str,
    cancel: String,
}

#[derive(Serialize)]
struct PredictionMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    predict_time: Option<f64>,
}

fn prediction<'a>(id: &'a str, path: &'a str, s: &Snapshot<'a>) -> Prediction<'a> {
    let time = |t| rfc3339(t, SecondsFormat::Micros);
    let status = match s.phase() {
        Phase::Pending => "starting",
        Phase::Running => "processing",
        Phase::Unknown => "paused",
        Phase::Ended(value) => value,
    };
    let predict_time = s
        .ended
        .zip(s.started)
        .map(|(end, start)| end.duration_since(start).unwrap_or_default().as_secs_f64());
    Prediction {
        id,
        model: "sim/model",
        version: "sim",
        input: Empty {},
        logs: "",
        output: (status == "succeeded").then_some(["https://replicate.delivery/sim/out.png"]),
        data_removed: false,
        error: (status == "failed").then_some(JOB_ERROR),
        status,
        created_at: time(s.created),
        started_at: s.started.map(time),
        completed_at: s.ended.map(time),
        urls: PredictionUrls {
            get: path,
            cancel: format!("{}/cancel", path.trim_end_matches('/')),
        },
        metrics: PredictionMetrics { predict_time },
    }
}

// ---- github-actions ------------------------------------------------------------------------

#[derive(Serialize)]
struct WorkflowRun<'a> {
    id: RunId<'a>,
    name: &'static str,
    display_title: &'static str,
    status: &'static str,
    conclusion: Option<&'a str>,
    created_at: String,
    updated_at: String,
    run_started_at: Option<String>,
    html_url: String,
}

/// A run id is a number on GitHub; an id that is not one is answered as a string.
#[derive(Serialize)]
#[serde(untagged)]
enum RunId<'a> {
    Number(u64),
    Text(&'a str),
}

/// The characters escaped in the id of `html_url` (a path segment).
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

fn workflow_run<'a>(id: &'a str, s: &Snapshot<'a>) -> WorkflowRun<'a> {
    let time = |t| rfc3339(t, SecondsFormat::Secs);
    let (status, conclusion) = match s.phase() {
        Phase::Pending => ("queued", None),
        Phase::Running => ("in_progress", None),
        Phase::Unknown => ("paused", None),
        Phase::Ended(value) => ("completed", Some(value)),
    };
    let numeric = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
    let last_change = s.ended.or(s.started).unwrap_or(s.created);
    WorkflowRun {
        id: match id.parse() {
            Ok(n) if numeric => RunId::Number(n),
            _ => RunId::Text(id),
        },
        name: "sim",
        display_title: "sim",
        status,
        conclusion,
        created_at: time(s.created),
        updated_at: time(last_change),
        run_started_at: s.started.map(time),
        html_url: format!(
            "https://github.com/sim/sim/actions/runs/{}",
            utf8_percent_encode(id, SEGMENT)
        ),
    }
}

// ---- routes --------------------------------------------------------------------------------

/// The routes of a shape, with the id decoded. Only the vector shape has more than `Status`.
pub(crate) enum Route<'a> {
    Status(Kind, Cow<'a, str>),
    Product(Cow<'a, str>),
    Copy(Cow<'a, str>),
    DeleteFeatures(Cow<'a, str>),
}

impl<'a> Route<'a> {
    pub(crate) fn parse(shape: Shape, method: &Method, path: &'a str) -> Result<Self, Rejection> {
        match shape {
            Shape::Vector => Self::parse_vector(method, path),
            other => Self::parse_status(other, method, path),
        }
    }

    /// The routes of `UPSTREAM.md`.
    fn parse_vector(method: &Method, path: &'a str) -> Result<Self, Rejection> {
        // The real service lives under /vector/v2; accept it so either base URL works.
        let path = match path.strip_prefix("/vector/v2") {
            Some(rest) if rest.starts_with('/') => rest,
            _ => path,
        };
        let rest = path.strip_prefix("/products/").ok_or_else(no_route)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (raw_id, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if raw_id.is_empty() {
            return Err(no_route());
        }
        let (want, make): (Method, fn(Cow<'a, str>) -> Route<'a>) = match tail {
            "search/copy/status" => (Method::GET, |id| Route::Status(Kind::Copy, id)),
            "search/delete/status" => (Method::GET, |id| Route::Status(Kind::Delete, id)),
            "" => (Method::GET, Route::Product),
            "search/copy" => (Method::POST, Route::Copy),
            "search" => (Method::DELETE, Route::DeleteFeatures),
            _ => return Err(no_route()),
        };
        only(method, want)?;
        let id = decode(raw_id, "the product id is not UTF-8 once percent-decoded")?;
        Ok(make(id))
    }

    /// The one status route of the other shapes. Their jobs are of the one kind `copy`.
    fn parse_status(shape: Shape, method: &Method, path: &'a str) -> Result<Self, Rejection> {
        let path = path.strip_suffix('/').unwrap_or(path);
        let raw_id = match shape {
            Shape::GoogleLro => under(path, "/operations/"),
            Shape::OpenaiBatch => under(path, "/batches/"),
            Shape::Replicate => under(path, "/predictions/"),
            // `/repos/{owner}/{repo}/actions/runs/{id}`, or any other base before it.
            Shape::GithubActions => path
                .rsplit_once('/')
                .filter(|(head, _)| head.ends_with("/actions/runs"))
                .map(|(_, id)| id),
            Shape::Vector => None,
        };
        let raw_id = raw_id
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(no_route)?;
        only(method, Method::GET)?;
        let id = decode(raw_id, "the id is not UTF-8 once percent-decoded")?;
        Ok(Route::Status(Kind::Copy, id))
    }
}

/// The rest of `path` after `base` or `/v1` + `base`.
fn under<'a>(path: &'a str, base: &str) -> Option<&'a str> {
    let path = match path.strip_prefix("/v1") {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    };
    path.strip_prefix(base)
}

fn no_route() -> Rejection {
    Rejection::new(StatusCode::NOT_FOUND, "no such route")
}

fn only(method: &Method, want: Method) -> Result<(), Rejection> {
    if *method == want {
        return Ok(());
    }
    Err(Rejection {
        status: StatusCode::METHOD_NOT_ALLOWED,
        detail: format!("this route answers {want} only").into(),
        allow: Some(want),
    })
}

fn decode<'a>(raw: &'a str, complaint: &'static str) -> Result<Cow<'a, str>, Rejection> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Rejection::new(StatusCode::BAD_REQUEST, complaint))
}

/// A request refused before it reaches a job.
pub(crate) struct Rejection {
    pub(crate) status: StatusCode,
    pub(crate) detail: Cow<'static, str>,
    pub(crate) allow: Option<Method>,
}

impl Rejection {
    pub(crate) fn new(status: StatusCode, detail: &'static str) -> Self {
        Self {
            status,
            detail: detail.into(),
            allow: None,
        }
    }

    pub(crate) fn into_response(self, shape: Shape) -> Response<Body> {
        let mut r = shape.error(self.status, &self.detail);
        if let Some(allow) = self
            .allow
            .and_then(|m| HeaderValue::from_str(m.as_str()).ok())
        {
            r.headers_mut().insert(axum::http::header::ALLOW, allow);
        }
        r
    }
}
