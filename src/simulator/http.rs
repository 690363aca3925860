//! Connections, routing and the JSON:API documents of the simulator.
//!
//! Connections are served with hyper directly (not axum) because a dropped request must close
//! its connection without any answer: the service returns an error and hyper closes it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::faults::{Fault, Faults, LoggedRequest, RateLimit, RequestLog, RetryAfter};
use super::jobs::{Fate, JobModel, JobTable, Kind, Observation, Snapshot, JOB_ERROR};
use super::SimulateArgs;

const JSON_API: &str = "application/vnd.api+json";
/// Bodies of the job-creating requests are small; anything larger is refused.
const MAX_BODY: usize = 1024 * 1024;
/// How long `serve` waits for in-flight answers after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The simulator's shared state.
pub(crate) struct Inner {
    pub(crate) args: SimulateArgs,
    model: JobModel,
    jobs: JobTable,
    /// Attributes of the products created by copies, for `GET /products/{id}`.
    products: Mutex<HashMap<String, Arc<Map<String, Value>>>>,
    token: RwLock<Option<String>>,
    rate: Option<RateLimit>,
    faults: Faults,
    pub(crate) log: RequestLog,
    requests: AtomicU64,
}

impl Inner {
    pub(crate) fn new(args: SimulateArgs) -> Self {
        Self {
            model: JobModel::new(&args),
            jobs: JobTable::new(),
            products: Mutex::new(HashMap::new()),
            token: RwLock::new(args.token.clone()),
            rate: RateLimit::new(&args),
            faults: Faults::new(&args),
            log: RequestLog::new(&args),
            requests: AtomicU64::new(0),
            args,
        }
    }

    pub(crate) fn requests_received(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn polls_of(&self, kind: &str, id: &str) -> u64 {
        Kind::parse(kind)
            .and_then(|k| self.jobs.get(k, id))
            .map_or(0, |e| e.polls)
    }

    pub(crate) fn job_end(&self, kind: &str, id: &str) -> Option<SystemTime> {
        let kind = Kind::parse(kind)?;
        let entry = self.jobs.get(kind, id)?;
        self.model.profile(kind, id).end(entry.seen)
    }

    pub(crate) fn set_token(&self, token: Option<String>) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let required = self.token.read().unwrap_or_else(|p| p.into_inner());
        let Some(required) = required.as_deref() else {
            return true;
        };
        let Some(value) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        match value.split_once(' ') {
            Some((scheme, token)) => {
                scheme.eq_ignore_ascii_case("bearer") && token.trim() == required
            }
            None => false,
        }
    }
}

/// Accepts connections until `shutdown`, then waits a short grace for in-flight answers.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Some(path) = &inner.args.request_log {
        inner.log.open(path)?;
    }
    tracing::info!(
        addr = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        seed = inner.args.seed,
        "simulator serving"
    );
    let tracker = TaskTracker::new();
    if inner.args.request_log.is_some() {
        let (inner, shutdown) = (inner.clone(), shutdown.clone());
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => inner.log.flush(),
                }
            }
        });
    }
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Usually out of file descriptors: wait for some to be released.
                    tracing::warn!(error = %e, "simulator cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        tracker.spawn(serve_connection(inner.clone(), stream, shutdown.clone()));
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::debug!("simulator connections still busy after the shutdown grace");
    }
    inner.log.flush();
    tracing::info!("simulator stopped");
    Ok(())
}

async fn serve_connection(inner: Arc<Inner>, stream: TcpStream, shutdown: CancellationToken) {
    // Answers are small: send them at once.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(inner.clone(), req));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Dropped requests end here on purpose, as do clients that hang up.
        tracing::trace!(error = %e, "simulator connection ended");
    }
}

/// The error a service returns to make hyper close the connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped on purpose (--drop-ratio)")]
pub(crate) struct Dropped;

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Response<Body>, Dropped> {
    let arrival = SystemTime::now();
    inner.requests.fetch_add(1, Ordering::Relaxed);
    let logged = inner
        .log
        .enabled()
        .then(|| (req.method().to_string(), req.uri().path().to_string()));
    let answer = answer(&inner, req, arrival).await;
    if let Some((method, path)) = logged {
        inner.log.record(LoggedRequest {
            t_ms: arrival
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0,
            method,
            path,
            status: answer.as_ref().map_or(0, |r| r.status().as_u16()),
            retry_after_ms: answer
                .as_ref()
                .ok()
                .and_then(|r| logged_retry_after_ms(r.headers(), arrival)),
        });
    }
    answer
}

/// The delay a `Retry-After` header names, from `arrival`, in milliseconds.
fn logged_retry_after_ms(headers: &HeaderMap, arrival: SystemTime) -> Option<f64> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs as f64 * 1000.0);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(match at.duration_since(arrival) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -(e.duration().as_secs_f64() * 1000.0),
    })
}

async fn answer(
    inner: &Inner,
    req: Request<Incoming>,
    arrival: SystemTime,
) -> Result<Response<Body>, Dropped> {
    if let Some(rate) = &inner.rate {
        if let Err(retry) = rate.check() {
            return Ok(too_many_requests(&retry));
        }
    }
    let (parts, body) = req.into_parts();
    let route = match Route::parse(&parts.method, parts.uri.path()) {
        Ok(route) => route,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    // A status request is a poll of its job whatever is answered next, and the job's clock
    // starts at its first sight.
    let first_seen = match &route {
        Route::Status(kind, id) => Some(inner.jobs.poll(*kind, id, arrival)),
        _ => None,
    };
    if !inner.authorized(&parts.headers) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "this simulator wants `Authorization: Bearer <its --token>`",
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"jobwatch-simulator\""),
        );
        return Ok(r);
    }
    let (fault, slow) = inner.faults.draw(MALFORMED.len());
    if slow {
        tokio::time::sleep(inner.faults.slow_delay).await;
    }
    match fault {
        Fault::None => {}
        Fault::Drop => return Err(Dropped),
        Fault::Error(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(error(status, "injected fault (--error-ratio)"));
        }
        Fault::Malformed(i) => {
            let (content_type, body) = MALFORMED[i % MALFORMED.len()];
            return Ok(respond(StatusCode::OK, content_type, body));
        }
    }
    let now = SystemTime::now();
    Ok(match route {
        Route::Status(kind, id) => job_status(inner, kind, &id, first_seen.unwrap_or(now), now),
        Route::Product(id) => get_product(inner, &id),
        Route::Copy(src) => match read_body(body).await {
            Ok(body) => copy(inner, &src, &body, now),
            Err(r) => r.into_response(),
        },
        Route::DeleteFeatures(id) => match read_body(body).await {
            Ok(_) => delete_features(inner, &id, now),
            Err(r) => r.into_response(),
        },
    })
}

/// The routes of `UPSTREAM.md`, with the product id decoded.
enum Route<'a> {
    Status(Kind, Cow<'a, str>),
    Product(Cow<'a, str>),
    Copy(Cow<'a, str>),
    DeleteFeatures(Cow<'a, str>),
}

impl<'a> Route<'a> {
    fn parse(method: &Method, path: &'a str) -> Result<Self, Rejection> {
        // The real service lives under /vector/v2; accept it so either base URL works.
        let path = match path.strip_prefix("/vector/v2") {
            Some(rest) if rest.starts_with('/') => rest,
            _ => path,
        };
        let not_found = || Rejection::new(StatusCode::NOT_FOUND, "no such route");
        let rest = path.strip_prefix("/products/").ok_or_else(not_found)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (raw_id, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if raw_id.is_empty() {
            return Err(not_found());
        }
        let (want, make): (Method, fn(Cow<'a, str>) -> Route<'a>) = match tail {
            "search/copy/status" => (Method::GET, |id| Route::Status(Kind::Copy, id)),
            "search/delete/status" => (Method::GET, |id| Route::Status(Kind::Delete, id)),
            "" => (Method::GET, Route::Product),
            "search/copy" => (Method::POST, Route::Copy),
            "search" => (Method::DELETE, Route::DeleteFeatures),
            _ => return Err(not_found()),
        };
        if *method != want {
            return Err(Rejection {
                status: StatusCode::METHOD_NOT_ALLOWED,
                detail: format!("this route answers {want} only").into(),
                allow: Some(want),
            });
        }
        let id = percent_encoding::percent_decode_str(raw_id)
            .decode_utf8()
            .map_err(|_| {
                Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "the product id is not UTF-8 once percent-decoded",
                )
            })?;
        Ok(make(id))
    }
}

fn job_status(
    inner: &Inner,
    kind: Kind,
    id: &str,
    seen: SystemTime,
    now: SystemTime,
) -> Response<Body> {
    let what = match kind {
        Kind::Copy => "copy",
        Kind::Delete => "delete",
    };
    match inner.model.profile(kind, id).at(seen, now) {
        Observation::NotFound | Observation::NotYetVisible => error(
            StatusCode::NOT_FOUND,
            &format!("no {what} job for product `{id}`"),
        ),
        Observation::BadRequest => error(
            StatusCode::BAD_REQUEST,
            &format!("the {what} job of product `{id}` could not begin execution"),
        ),
        Observation::Job(snapshot) => status_document(kind, id, &snapshot),
    }
}

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

fn status_document(kind: Kind, id: &str, s: &Snapshot<'_>) -> Response<Body> {
    let errors: &[&str] = if s.errors { &[JOB_ERROR] } else { &[] };
    let doc = StatusDocument {
        data: StatusData {
            id,
            kind: kind.job_type(),
            attributes: StatusAttributes {
                state: s.state,
                created: timestamp(s.created),
                started: s.started.map(timestamp),
                ended: s.ended.map(timestamp),
                errors,
            },
        },
    };
    json_response(StatusCode::OK, &doc)
}

/// RFC 3339 with microseconds and an explicit offset, as the real service writes them.
fn timestamp(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
        .to_string()
}

fn fate_of_product<'m>(inner: &'m Inner, id: &str) -> Fate<'m> {
    // Not found / bad request do not depend on the kind.
    inner.model.profile(Kind::Copy, id).fate
}

fn get_product(inner: &Inner, id: &str) -> Response<Body> {
    if fate_of_product(inner, id) == Fate::NotFound {
        return error(StatusCode::NOT_FOUND, &format!("no product `{id}`"));
    }
    product_document(inner, id)
}

fn copy(inner: &Inner, src: &str, body: &Bytes, now: SystemTime) -> Response<Body> {
    if fate_of_product(inner, src) == Fate::NotFound {
        return error(StatusCode::NOT_FOUND, &format!("no product `{src}`"));
    }
    let doc: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body is not JSON: {e}"),
                )
            }
        }
    };
    // Accept `{"product": {...}}` as the client sends it, and a JSON:API `data` resource too.
    let product = doc
        .get("product")
        .or_else(|| doc.get("data").and_then(|d| d.get("attributes")))
        .and_then(Value::as_object);
    let dst = [
        product.and_then(|p| p.get("id")),
        product.and_then(|p| p.get("name")),
        doc.get("data").and_then(|d| d.get("id")),
        doc.get("id"),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_str)
    .filter(|s| !s.is_empty());
    let Some(dst) = dst else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body names no new product id (expected `{\"product\": {\"id\": ...}}`)",
        );
    };
    if fate_of_product(inner, dst) == Fate::BadRequest {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("the copy to product `{dst}` could not begin execution"),
        );
    }
    let mut attributes = product.cloned().unwrap_or_default();
    attributes.remove("id");
    inner
        .products
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(dst.to_string(), Arc::new(attributes));
    inner.jobs.start(Kind::Copy, dst, now);
    product_document(inner, dst)
}

fn delete_features(inner: &Inner, id: &str, now: SystemTime) -> Response<Body> {
    match fate_of_product(inner, id) {
        Fate::NotFound => error(StatusCode::NOT_FOUND, &format!("no product `{id}`")),
        Fate::BadRequest => error(
            StatusCode::BAD_REQUEST,
            &format!("the delete in product `{id}` could not begin execution"),
        ),
        _ => {
            inner.jobs.start(Kind::Delete, id, now);
            product_document(inner, id)
        }
    }
}

fn product_document(inner: &Inner, id: &str) -> Response<Body> {
    let stored = inner
        .products
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(id)
        .cloned();
    let mut attributes = Map::new();
    attributes.insert("name".into(), id.into());
    attributes.insert("title".into(), id.into());
    attributes.insert("description".into(), "a simulated product".into());
    for key in ["owners", "readers", "writers"] {
        attributes.insert(key.into(), Value::Array(Vec::new()));
    }
    if let Some(stored) = stored {
        for (k, v) in stored.iter().filter(|(_, v)| !v.is_null()) {
            attributes.insert(k.clone(), v.clone());
        }
    }
    json_response(
        StatusCode::OK,
        &json!({"data": {"id": id, "type": "product", "attributes": attributes}}),
    )
}

async fn read_body(body: Incoming) -> Result<Bytes, Rejection> {
    axum::body::to_bytes(Body::new(body), MAX_BODY)
        .await
        .map_err(|e| Rejection {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            detail: format!("cannot read a body of at most {MAX_BODY} bytes: {e}").into(),
            allow: None,
        })
}

/// A request refused before it reaches a job.
struct Rejection {
    status: StatusCode,
    detail: Cow<'static, str>,
    allow: Option<Method>,
}

impl Rejection {
    fn new(status: StatusCode, detail: &'static str) -> Self {
        Self {
            status,
            detail: detail.into(),
            allow: None,
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut r = error(self.status, &self.detail);
        if let Some(allow) = self
            .allow
            .and_then(|m| HeaderValue::from_str(m.as_str()).ok())
        {
            r.headers_mut().insert(axum::http::header::ALLOW, allow);
        }
        r
    }
}

fn too_many_requests(retry: &RetryAfter) -> Response<Body> {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        &format!(
            "over the rate limit of {} requests/s; retry after {} s",
            retry.rate, retry.secs
        ),
    );
    // An empty header is `--retry-after-form none`: a bare 429.
    if let Some(v) = (!retry.header.is_empty())
        .then(|| HeaderValue::from_str(&retry.header).ok())
        .flatten()
    {
        r.headers_mut().insert(RETRY_AFTER, v);
    }
    r
}

/// A JSON:API error document.
fn error(status: StatusCode, detail: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"errors": [{
            "status": status.as_str(),
            "title": status.canonical_reason().unwrap_or("Error"),
            "detail": detail,
        }]}),
    )
}

fn json_response<T: Serialize>(status: StatusCode, doc: &T) -> Response<Body> {
    match serde_json::to_vec(doc) {
        Ok(bytes) => respond(status, JSON_API, bytes),
        // Only maps with non-string keys fail to serialize; none are built here.
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot serialize the answer: {e}"),
        ),
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Bodies answered with a 200 by `--malformed-ratio`: none is a status document.
pub(crate) const MALFORMED: [(&str, &str); 5] = [
    (
        JSON_API,
        r#"{"data": {"id": "x", "type": "copy_job", "attributes": {"state": "RUNN"#,
    ),
    (
        "text/html",
        "<html><head><title>502 Bad Gateway</title></head>\
         <body><center><h1>502 Bad Gateway</h1></center></body></html>",
    ),
    (JSON_API, ""),
    (
        "text/plain",
        "upstream connect error or disconnect/reset before headers",
    ),
    (JSON_API, "[1, 2, 3]"),
];
