//! The upstream client: builds status requests for one configured upstream (the
//! Vector API v2, or any HTTP job API described by [`kinds`]), and maps every answer
//! onto a typed [`PollAnswer`] per the error table of UPSTREAM.md. It knows nothing
//! of the store, the budget or the cadence: the poller decides what each answer
//! means for a watch and for the whole upstream.

mod connections;
pub mod kinds;
pub mod pointer;
pub mod preset;
pub mod retry_after;
mod wanted;

use std::time::{Duration, SystemTime};

use crate::config::{Secret, UpstreamDef};
use crate::model::{Kind, Verdict};
use bytes::Bytes;
use connections::{host_of, Connections};
use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use kinds::KindDef;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but unreserved characters is encoded in a path segment, so that
/// `myorg:my-product` becomes `myorg%3Amy-product`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a status answer says, read by its kind's rules: each part may be missing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobStatus {
    /// The state as the upstream wrote it (`true`/`false` and numbers as text).
    pub state: Option<String>,
    /// What the kind's state table makes of it.
    pub verdict: Verdict,
    pub created: Option<String>,
    pub started: Option<String>,
    pub ended: Option<String>,
    pub errors: Option<serde_json::Value>,
    /// A field that was there but could not be read (a time of the wrong type).
    pub note: Option<String>,
}

/// What one status request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum PollAnswer {
    /// 200 with a status document.
    Status(JobStatus),
    /// 404: not (yet) visible.
    NotFound,
    /// 400 or 422: the job could not begin execution.
    Rejected { status: u16, detail: String },
    /// 401 or 403: our credentials are wrong; nothing to do with this job.
    Unauthorized { status: u16 },
    /// 429, or 503 with Retry-After: the whole upstream asks us to wait.
    RateLimited {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Anything worth retrying for this job: other 5xx, 409, timeouts,
    /// connection errors, bodies that are not the contract.
    Transient { error: String },
}

/// Redirects followed per poll (a moved base URL); the token goes only to the
/// base URL's own origin.
const MAX_REDIRECTS: usize = 3;

/// Status requests to one upstream, on hyper's connections ([`connections`]).
/// reqwest, used before, cost the daemon twice the CPU per request of hyper's
/// pooled client (its URL, header, proxy and timeout layers on top of the same
/// pool; BENCHMARKS.md), and polls are most of the daemon.
pub struct UpstreamClient {
    /// The upstream's name (`vector`, or an `[[upstreams]]` entry's).
    name: String,
    kinds: Vec<KindDef>,
    metrics: crate::metrics::PollMetrics,
    connections: Connections,
    /// The headers of a request to the base URL's origin: the token, and the Host,
    /// made once rather than for every request.
    on_origin: HeaderMap,
    /// The same without the token and the Host, for a redirect to another origin.
    elsewhere: HeaderMap,
    /// `scheme://authority` of the base URL, and its path without the trailing `/`.
    origin: String,
    base_path: String,
    request_timeout: Duration,
}

impl UpstreamClient {
    pub fn new(def: &UpstreamDef) -> anyhow::Result<UpstreamClient> {
        let settings = &def.settings;
        let mut headers = HeaderMap::new();
        for (name, value) in &def.headers {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_str(&settings.user_agent).map_err(|e| {
                anyhow::anyhow!(
                    "upstream {:?}: user_agent is not a header value: {e}",
                    def.name
                )
            })?,
        );
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let connections = Connections::new(connector, settings.max_in_flight);
        let base = &settings.base_url;
        let mut on_origin = headers.clone();
        if let Some(token) = &settings.token {
            match &def.auth_header {
                None => on_origin.insert(header::AUTHORIZATION, bearer(token)),
                Some(name) => on_origin.insert(name.clone(), secret_value(token.expose())),
            };
        }
        let origin: String = base[..url::Position::BeforePath].to_string();
        if let Some(host) = origin.parse::<Uri>().ok().as_ref().and_then(host_of) {
            on_origin.insert(header::HOST, host);
        }
        Ok(UpstreamClient {
            name: def.name.clone(),
            kinds: def.kinds.clone(),
            metrics: crate::metrics::PollMetrics::new(&def.name),
            connections,
            on_origin,
            elsewhere: headers,
            origin,
            base_path: base.path().trim_end_matches('/').to_string(),
            request_timeout: settings.request_timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counters this upstream's polls are counted with.
    pub fn metrics(&self) -> &crate::metrics::PollMetrics {
        &self.metrics
    }

    /// The kinds this upstream answers for.
    pub fn kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        self.kinds.iter().map(|k| k.kind)
    }

    fn kind(&self, kind: Kind) -> Option<&KindDef> {
        self.kinds.iter().find(|k| k.kind == kind)
    }

    /// The status URL of `(kind, id)`; `None` for a kind of another upstream.
    pub fn status_url(&self, kind: Kind, id: &str) -> Option<String> {
        Some(self.url_of(self.kind(kind)?, id))
    }

    /// The status URL of `id` of kind `def`, built in one allocation (a poll's
    /// copies were a good part of its cost).
    fn url_of(&self, def: &KindDef, id: &str) -> String {
        let mut url =
            String::with_capacity(self.origin.len() + self.base_path.len() + 3 * id.len() + 48);
        url.push_str(&self.origin);
        url.push_str(&self.base_path);
        def.write_path(&mut url, utf8_percent_encode(id, SEGMENT));
        url
    }

    #[tracing::instrument(level = "debug", skip_all, fields(kind = %kind, id = %id))]
    pub async fn poll(&self, kind: Kind, id: &str) -> PollAnswer {
        let Some(def) = self.kind(kind) else {
            // The poller claims only this upstream's kinds: a bug, said as an error.
            return PollAnswer::Transient {
                error: format!("kind {kind} is not a kind of upstream {:?}", self.name),
            };
        };
        let url = self.url_of(def, id);
        match tokio::time::timeout(self.request_timeout, self.get(url)).await {
            Ok(Ok((status, retry_after, body))) => def.classify(status, retry_after, &body),
            Ok(Err(error)) => PollAnswer::Transient { error },
            Err(_) => PollAnswer::Transient {
                error: format!(
                    "timed out: no whole answer within {} ms",
                    self.request_timeout.as_millis()
                ),
            },
        }
    }

    /// GET `url`, following up to [`MAX_REDIRECTS`] redirects: the status, the
    /// Retry-After, the body; or what failed, in words.
    async fn get(&self, url: String) -> Result<(StatusCode, Option<Duration>, Bytes), String> {
        let mut uri: Uri = url
            .parse()
            .map_err(|e| format!("request failed: the status URL {url:?} is not a URI: {e}"))?;
        let mut redirects = 0;
        // The token goes to the base URL's origin only (a redirect elsewhere gets none).
        let mut on_origin = true;
        loop {
            let answer = if on_origin {
                self.connections.get(&uri, &self.on_origin, true).await?
            } else {
                let mut headers = self.elsewhere.clone();
                if let Some(host) = host_of(&uri) {
                    headers.insert(header::HOST, host);
                }
                self.connections.get(&uri, &headers, false).await?
            };
            if answer.status.is_redirection() && redirects < MAX_REDIRECTS {
                if let Some(next) = redirect_target(&uri, &answer.headers) {
                    redirects += 1;
                    on_origin &= origin(&next).as_deref() == Some(self.origin.as_str());
                    uri = next;
                    continue;
                }
            }
            let retry_after = answer
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after::parse(v, SystemTime::now()));
            return Ok((answer.status, retry_after, answer.body));
        }
    }
}

/// Where a redirect answer points, resolved against the URI that got it.
fn redirect_target(from: &Uri, headers: &HeaderMap) -> Option<Uri> {
    let location = headers.get(header::LOCATION)?.to_str().ok()?;
    let base = url::Url::parse(&from.to_string()).ok()?;
    base.join(location).ok()?.as_str().parse().ok()
}

/// `scheme://authority` of `uri`, as the base URL's origin is kept.
fn origin(uri: &Uri) -> Option<String> {
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?))
}

fn bearer(token: &Secret) -> HeaderValue {
    secret_value(&format!("Bearer {}", token.expose()))
}

/// A credential as a header value, kept out of hyper's debug output.
fn secret_value(s: &str) -> HeaderValue {
    let mut v =
        HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid-token"));
    v.set_sensitive(true);
    v
}

/// The message of an error document in the forms job APIs use: JSON:API
/// `errors[0].detail|title` (Vector), `error.message` (Google, OpenAI), `detail|title`
/// (problem+json: Replicate), `message` (GitHub); else a bit of the body.
pub(crate) fn error_detail(body: &[u8]) -> String {
    use serde_json::Value;
    let doc: Option<Value> = serde_json::from_slice(body).ok();
    let found = doc.as_ref().and_then(|d| {
        [
            "/errors/0/detail",
            "/errors/0/title",
            "/error/message",
            "/detail",
            "/title",
            "/message",
            "/error",
        ]
        .iter()
        .find_map(|p| d.pointer(p).and_then(Value::as_str))
    });
    match found {
        Some(text) => text.to_string(),
        None => {
            // Cut on a character boundary: a body may hold any UTF-8.
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            text.trim_end_matches('\u{fffd}').to_string()
        }
    }
}

pub(crate) fn short_detail(body: &[u8]) -> String {
    let d = error_detail(body);
    if d.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", d.trim())
    }
}

/// A failed request in words, the one description of it that `last_error` shows
/// for upstream polls and webhook attempts alike: `what` failed (timed out,
/// connection failed, reading the answer failed, request failed), then the chain
/// of causes (refused, reset, DNS), without any header or token. `e`'s own text
/// is said only when it names no cause (a client's own text may carry the URL).
pub fn describe_failure(what: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = what.to_string();
    let mut cause = e.source();
    if cause.is_none() {
        msg.push_str(": ");
        msg.push_str(&e.to_string());
    }
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}

/// [`describe_failure`] of a reqwest request (a webhook attempt), with what failed
/// read from the error. Pass it without its URL ([`reqwest::Error::without_url`]):
/// a webhook URL may carry a token.
pub fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    describe_failure(what, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error table of UPSTREAM.md, as the `vector` preset's copy kind applies it.
    fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> PollAnswer {
        let settings = crate::config::Settings::load_with(None, &[]).unwrap();
        settings.resolved[0].kinds[0].classify(status, retry_after, body)
    }

    #[test]
    fn ids_are_percent_encoded_in_the_path() {
        let settings = crate::config::Settings::load_with(
            None,
            &[("upstream.base_url", "http://h/vector/v2/")],
        )
        .unwrap();
        let c = UpstreamClient::new(&settings.resolved[0]).unwrap();
        assert_eq!(
            c.status_url(Kind::COPY, "myorg:my-product").unwrap(),
            "http://h/vector/v2/products/myorg%3Amy-product/search/copy/status"
        );
        assert_eq!(
            c.status_url(Kind::DELETE, "a.b_c").unwrap(),
            "http://h/vector/v2/products/a.b_c/search/delete/status"
        );
    }

    /// A local HTTP server answering every request with `answer(path, headers, other)`.
    async fn server(
        answer: impl Fn(&str, &HeaderMap, &str) -> axum::response::Response
            + Clone
            + Send
            + Sync
            + 'static,
        other: &'static str,
    ) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let answer = answer.clone();
            async move { answer(req.uri().path(), req.headers(), other) }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn client(base: &str) -> UpstreamClient {
        let settings = crate::config::Settings::load_with(
            None,
            &[("upstream.base_url", base), ("upstream.token", "t0ken")],
        )
        .unwrap();
        UpstreamClient::new(&settings.resolved[0]).unwrap()
    }

    fn state_doc(state: &str) -> axum::response::Response {
        use axum::response::IntoResponse;
        format!(r#"{{"data":{{"attributes":{{"state":"{state}"}}}}}}"#).into_response()
    }

    /// The state of a status answer (a test fails on any other answer).
    fn state(a: PollAnswer) -> String {
        match a {
            PollAnswer::Status(s) => s.state.unwrap_or_default(),
            other => panic!("not a status: {other:?}"),
        }
    }

    /// Two origins answering with `doc` of each request's headers; the first
    /// redirects paths with `/away/` to the second. (first, second)
    async fn origin_and_elsewhere(
        doc: fn(&HeaderMap) -> axum::response::Response,
    ) -> (String, String) {
        let elsewhere = server(move |_, h, _| doc(h), "").await;
        let other: &'static str = Box::leak(elsewhere.clone().into_boxed_str());
        let base = server(
            move |path, h, other| match path {
                p if p.contains("/away/") => redirect(format!("{other}/x")),
                _ => doc(h),
            },
            other,
        )
        .await;
        (base, elsewhere)
    }

    fn redirect(to: String) -> axum::response::Response {
        axum::response::Response::builder()
            .status(307)
            .header(header::LOCATION, to)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn redirects_are_followed_and_the_token_stays_on_its_origin() {
        // The other origin says whether it got the token.
        let elsewhere = server(
            |_, h, _| state_doc(if has_token(h) { "LEAKED" } else { "NO_TOKEN" }),
            "",
        )
        .await;
        let other: &'static str = Box::leak(elsewhere.into_boxed_str());
        let base = server(
            |path, h, other| match path {
                p if p.starts_with("/moved/") => {
                    state_doc(if has_token(h) { "TOKEN" } else { "NO_TOKEN" })
                }
                p if p.contains("/away/") => redirect(format!("{other}/x")),
                p => redirect(format!("/moved{p}")),
            },
            other,
        )
        .await;
        let c = client(&base);
        assert_eq!(state(c.poll(Kind::COPY, "j1").await), "TOKEN");
        assert_eq!(state(c.poll(Kind::COPY, "away").await), "NO_TOKEN");
    }

    fn has_token(headers: &HeaderMap) -> bool {
        headers.contains_key(header::AUTHORIZATION)
    }

    /// A status document whose state is the Host header the request came with.
    fn host_doc(headers: &HeaderMap) -> axum::response::Response {
        state_doc(
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("NONE"),
        )
    }

    /// A status document whose state lists the contract's request headers as they
    /// came: Accept, Content-Type, User-Agent, and whether a token came.
    fn contract_headers_doc(headers: &HeaderMap) -> axum::response::Response {
        let get = |name| {
            headers
                .get(name)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("NONE")
        };
        state_doc(&format!(
            "{} {} {} {}",
            get(header::ACCEPT),
            get(header::CONTENT_TYPE),
            get(header::USER_AGENT),
            get(header::AUTHORIZATION),
        ))
    }

    #[tokio::test]
    async fn every_request_has_the_contract_s_headers_and_only_the_origin_gets_the_token() {
        let (base, _) = origin_and_elsewhere(contract_headers_doc).await;
        let settings = crate::config::Settings::load_with(
            None,
            &[
                ("upstream.base_url", base.as_str()),
                ("upstream.token", "t0ken"),
                ("upstream.user_agent", "jobwatch-test/1"),
            ],
        )
        .unwrap();
        let c = UpstreamClient::new(&settings.resolved[0]).unwrap();
        let json_api = "application/vnd.api+json";
        assert_eq!(
            state(c.poll(Kind::COPY, "j1").await),
            format!("{json_api} {json_api} jobwatch-test/1 Bearer t0ken")
        );
        assert_eq!(
            state(c.poll(Kind::COPY, "away").await),
            format!("{json_api} {json_api} jobwatch-test/1 NONE")
        );
    }

    #[tokio::test]
    async fn the_host_header_names_the_origin_asked_also_after_a_redirect() {
        let (base, elsewhere) = origin_and_elsewhere(host_doc).await;
        let c = client(&format!("{base}/vector/v2"));
        assert_eq!(
            state(c.poll(Kind::COPY, "j1").await),
            base.trim_start_matches("http://")
        );
        assert_eq!(
            state(c.poll(Kind::COPY, "away").await),
            elsewhere.trim_start_matches("http://")
        );
    }

    #[test]
    fn the_host_header_has_the_port_only_when_it_is_not_the_default() {
        let host =
            |u: &str| host_of(&u.parse::<Uri>().unwrap()).map(|h| h.to_str().unwrap().to_string());
        assert_eq!(
            host("http://127.0.0.1:8080/v2").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            host("http://example.com:80/").as_deref(),
            Some("example.com")
        );
        assert_eq!(host("http://[::1]:9000/").as_deref(), Some("[::1]:9000"));
        assert_eq!(host("https://example.com/").as_deref(), Some("example.com"));
        assert_eq!(
            host("https://example.com:8443/").as_deref(),
            Some("example.com:8443")
        );
    }

    #[tokio::test]
    async fn an_answer_too_large_for_a_status_document_is_an_error() {
        let base = server(
            |_, _, _| {
                use axum::response::IntoResponse;
                vec![b' '; connections::MAX_BODY + 1].into_response()
            },
            "",
        )
        .await;
        match client(&base).poll(Kind::COPY, "big").await {
            PollAnswer::Transient { error } => {
                assert!(error.starts_with("reading the answer failed"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_https_upstream_gets_a_tls_client() {
        let c = client("https://upstream.example/vector/v2");
        assert_eq!(
            c.status_url(Kind::COPY, "x").unwrap(),
            "https://upstream.example/vector/v2/products/x/search/copy/status"
        );
    }

    #[test]
    fn every_attribute_is_optional() {
        let ok = |body: &str| classify(StatusCode::OK, None, body.as_bytes());
        assert_eq!(
            ok(r#"{"data":{"id":"x","type":"copy_job"}}"#),
            PollAnswer::Status(JobStatus::default())
        );
        assert_eq!(
            ok(r#"{"data":{"attributes":{"state":null,"errors":null}}}"#),
            PollAnswer::Status(JobStatus::default())
        );
        let PollAnswer::Status(s) = ok(
            r#"{"data":{"id":"x","type":"copy_query","attributes":{"state":"DONE","errors":["boom"],"extra":1}}}"#,
        ) else {
            panic!("not a status")
        };
        assert_eq!(s.state.as_deref(), Some("DONE"));
        assert_eq!(s.verdict, Verdict::Failed, "DONE with errors");
    }

    #[test]
    fn the_state_table_of_upstream_md() {
        let verdict = |state: &str, errors: &str| {
            let body =
                format!(r#"{{"data":{{"attributes":{{"state":{state},"errors":{errors}}}}}}}"#);
            match classify(StatusCode::OK, None, body.as_bytes()) {
                PollAnswer::Status(s) => s.verdict,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(verdict(r#""PENDING""#, "[]"), Verdict::Running);
        assert_eq!(verdict(r#""RUNNING""#, "null"), Verdict::Running);
        assert_eq!(verdict(r#""SUCCESS""#, "[]"), Verdict::Succeeded);
        assert_eq!(verdict(r#""DONE""#, "null"), Verdict::Succeeded);
        assert_eq!(verdict(r#""SUCCESS""#, r#"["boom"]"#), Verdict::Failed);
        assert_eq!(verdict(r#""DONE""#, r#"["boom"]"#), Verdict::Failed);
        assert_eq!(verdict(r#""FAILED""#, "[]"), Verdict::Failed);
        assert_eq!(verdict(r#""FAILURE""#, "[]"), Verdict::Failed);
        assert_eq!(verdict(r#""PAUSED""#, "[]"), Verdict::Unknown);
        assert_eq!(verdict("null", "[]"), Verdict::Unknown);
    }

    #[test]
    fn the_error_table_of_upstream_md() {
        let c = |code: u16, ra: Option<u64>, body: &str| {
            classify(
                StatusCode::from_u16(code).unwrap(),
                ra.map(Duration::from_secs),
                body.as_bytes(),
            )
        };
        assert_eq!(c(404, None, ""), PollAnswer::NotFound);
        assert!(
            matches!(c(400, None, r#"{"errors":[{"detail":"bad query"}]}"#), PollAnswer::Rejected { status: 400, detail } if detail == "bad query")
        );
        assert!(matches!(
            c(422, None, ""),
            PollAnswer::Rejected { status: 422, .. }
        ));
        assert_eq!(c(401, None, ""), PollAnswer::Unauthorized { status: 401 });
        assert_eq!(c(403, None, ""), PollAnswer::Unauthorized { status: 403 });
        assert_eq!(
            c(429, None, ""),
            PollAnswer::RateLimited {
                status: 429,
                retry_after: None
            }
        );
        assert_eq!(
            c(503, Some(3), ""),
            PollAnswer::RateLimited {
                status: 503,
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(c(503, None, ""), PollAnswer::Transient { .. }));
        assert!(matches!(c(409, None, ""), PollAnswer::Transient { .. }));
        assert!(matches!(c(500, None, "oops"), PollAnswer::Transient { .. }));
        assert!(matches!(
            c(200, None, "<html>"),
            PollAnswer::Transient { .. }
        ));
        assert!(matches!(
            c(200, None, r#"{"data":"#),
            PollAnswer::Transient { .. }
        ));
    }
}
