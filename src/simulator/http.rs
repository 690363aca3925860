//! Connections, the order in which a request meets the rate limit, the token and the faults,
//! and the Vector shape's job-creating routes and product documents. What a status answer or an
//! error looks like is the served shape's (`shapes`).
//!
//! Connections are served with hyper directly (not axum) because a dropped request must close
//! its connection without any answer: the service returns an error and hyper closes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
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
use super::jobs::{Fate, JobModel, JobTable, Kind, Observation};
use super::shapes::{Rejection, Route, Shape};
use super::SimulateArgs;

pub(crate) const JSON_API: &str = "application/vnd.api+json";
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
        shape = %inner.args.shape,
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
    let shape = inner.args.shape;
    if let Some(rate) = &inner.rate {
        if let Err(retry) = rate.check() {
            return Ok(too_many_requests(shape, &retry));
        }
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let route = match Route::parse(shape, &parts.method, path) {
        Ok(route) => route,
        Err(rejection) => return Ok(rejection.into_response(shape)),
    };
    // A status request is a poll of its job whatever is answered next, and the job's clock
    // starts at its first sight.
    let first_seen = match &route {
        Route::Status(kind, id) => Some(inner.jobs.poll(*kind, id, arrival)),
        _ => None,
    };
    if !inner.authorized(&parts.headers) {
        let mut r = shape.error(
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
            return Ok(shape.error(status, "injected fault (--error-ratio)"));
        }
        Fault::Malformed(i) => {
            let (content_type, body) = MALFORMED[i % MALFORMED.len()];
            return Ok(respond(StatusCode::OK, content_type, body));
        }
    }
    let now = SystemTime::now();
    Ok(match route {
        Route::Status(kind, id) => {
            job_status(inner, kind, &id, path, first_seen.unwrap_or(now), now)
        }
        Route::Product(id) => get_product(inner, &id),
        Route::Copy(src) => match read_body(body).await {
            Ok(body) => copy(inner, &src, &body, now),
            Err(r) => r.into_response(shape),
        },
        Route::DeleteFeatures(id) => match read_body(body).await {
            Ok(_) => delete_features(inner, &id, now),
            Err(r) => r.into_response(shape),
        },
    })
}

/// The status answer of a job, in the served shape. `path` is the request's, as received.
fn job_status(
    inner: &Inner,
    kind: Kind,
    id: &str,
    path: &str,
    seen: SystemTime,
    now: SystemTime,
) -> Response<Body> {
    let shape = inner.args.shape;
    match inner.model.profile(kind, id).at(seen, now) {
        Observation::NotFound | Observation::NotYetVisible => shape.job_not_found(kind, id),
        Observation::BadRequest => shape.job_bad_request(kind, id),
        Observation::Job(snapshot) => shape.job_document(kind, id, path, &snapshot),
    }
}

fn fate_of_product<'m>(inner: &'m Inner, id: &str) -> Fate<'m> {
    // Not found / bad request do not depend on the kind.
    inner.model.profile(Kind::Copy, id).fate
}

fn get_product(inner: &Inner, id: &str) -> Response<Body> {
    if fate_of_product(inner, id) == Fate::NotFound {
        return vector_error(StatusCode::NOT_FOUND, &format!("no product `{id}`"));
    }
    product_document(inner, id)
}

fn copy(inner: &Inner, src: &str, body: &Bytes, now: SystemTime) -> Response<Body> {
    if fate_of_product(inner, src) == Fate::NotFound {
        return vector_error(StatusCode::NOT_FOUND, &format!("no product `{src}`"));
    }
    let doc: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return vector_error(
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
        return vector_error(
            StatusCode::BAD_REQUEST,
            "the body names no new product id (expected `{\"product\": {\"id\": ...}}`)",
        );
    };
    if fate_of_product(inner, dst) == Fate::BadRequest {
        return vector_error(
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
        Fate::NotFound => vector_error(StatusCode::NOT_FOUND, &format!("no product `{id}`")),
        Fate::BadRequest => vector_error(
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
        JSON_API,
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

fn too_many_requests(shape: Shape, retry: &RetryAfter) -> Response<Body> {
    let mut r = shape.error(
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

/// An error of the Vector shape's own routes (products and the job-creating ones).
fn vector_error(status: StatusCode, detail: &str) -> Response<Body> {
    Shape::Vector.error(status, detail)
}

pub(crate) fn json_response<T: Serialize>(
    status: StatusCode,
    content_type: &'static str,
    doc: &T,
) -> Response<Body> {
    match serde_json::to_vec(doc) {
        Ok(bytes) => respond(status, content_type, bytes),
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

/// Bodies answered with a 200 by `--malformed-ratio`, whatever the shape: none is a status
/// document of any shape.
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
