//! The Vector API v2 client: builds status requests, and maps every answer onto a
//! typed [`PollAnswer`] per the error table of UPSTREAM.md. It knows nothing of the
//! store, the budget or the cadence: the poller decides what each answer means for
//! a watch and for the whole upstream.

pub mod retry_after;

use std::time::{Duration, SystemTime};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::config::{Secret, UpstreamSettings};
use crate::model::Kind;

/// Everything but unreserved characters is encoded in a path segment, so that
/// `myorg:my-product` becomes `myorg%3Amy-product`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The attributes of a job status document; each may be missing or null.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct JobStatus {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub started: Option<String>,
    #[serde(default)]
    pub ended: Option<String>,
    #[serde(default)]
    pub errors: Option<serde_json::Value>,
}

impl JobStatus {
    /// A non-empty `errors` list (or any other non-empty value) means the job failed.
    pub fn has_errors(&self) -> bool {
        match &self.errors {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Array(a)) => !a.is_empty(),
            Some(serde_json::Value::String(s)) => !s.is_empty(),
            Some(serde_json::Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        }
    }
}

#[derive(Deserialize)]
struct Document {
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    #[serde(default)]
    attributes: Option<JobStatus>,
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

pub struct UpstreamClient {
    http: reqwest::Client,
    /// Parsed once: a status URL is this with its path set (a full parse of each
    /// URL, host and all, was a twentieth of the daemon's CPU per poll).
    base: url::Url,
    base_path: String,
}

impl UpstreamClient {
    pub fn new(settings: &UpstreamSettings) -> Result<UpstreamClient, reqwest::Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.api+json"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.api+json"),
        );
        if let Some(token) = &settings.token {
            headers.insert(header::AUTHORIZATION, bearer(token));
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(settings.user_agent.clone())
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_max_idle_per_host(settings.max_in_flight)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        Ok(UpstreamClient {
            http,
            base: settings.base_url.clone(),
            base_path: settings.base_url.path().trim_end_matches('/').to_string(),
        })
    }

    pub fn status_url(&self, kind: Kind, id: &str) -> url::Url {
        let mut url = self.base.clone();
        url.set_path(&format!(
            "{}/products/{}/search/{}/status",
            self.base_path,
            utf8_percent_encode(id, SEGMENT),
            kind.as_str()
        ));
        url
    }

    #[tracing::instrument(level = "debug", skip_all, fields(kind = %kind, id = %id))]
    pub async fn poll(&self, kind: Kind, id: &str) -> PollAnswer {
        let response = match self.http.get(self.status_url(kind, id)).send().await {
            Ok(r) => r,
            Err(e) => {
                return PollAnswer::Transient {
                    error: describe(&e),
                }
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after::parse(v, SystemTime::now()));
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return PollAnswer::Transient {
                    error: describe(&e),
                }
            }
        };
        classify(status, retry_after, &body)
    }
}

fn bearer(token: &Secret) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-token"));
    v.set_sensitive(true);
    v
}

/// The error table of UPSTREAM.md.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> PollAnswer {
    match status.as_u16() {
        200..=299 => match serde_json::from_slice::<Document>(body) {
            Ok(doc) => PollAnswer::Status(doc.data.attributes.unwrap_or_default()),
            Err(e) => PollAnswer::Transient {
                error: format!("HTTP {status}: body is not a job status document: {e}"),
            },
        },
        404 => PollAnswer::NotFound,
        s @ (400 | 422) => PollAnswer::Rejected {
            status: s,
            detail: error_detail(body),
        },
        s @ (401 | 403) => PollAnswer::Unauthorized { status: s },
        429 => PollAnswer::RateLimited {
            status: 429,
            retry_after,
        },
        503 if retry_after.is_some() => PollAnswer::RateLimited {
            status: 503,
            retry_after,
        },
        _ => PollAnswer::Transient {
            error: format!("HTTP {status}{}", short_detail(body)),
        },
    }
}

/// The `detail` (or `title`) of a JSON:API error document, else a bit of the body.
fn error_detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorObject>,
    }
    #[derive(Deserialize)]
    struct ErrorObject {
        detail: Option<String>,
        title: Option<String>,
    }
    if let Ok(doc) = serde_json::from_slice::<Errors>(body) {
        if let Some(e) = doc.errors.into_iter().next() {
            if let Some(text) = e.detail.or(e.title) {
                return text;
            }
        }
    }
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

fn short_detail(body: &[u8]) -> String {
    let d = error_detail(body);
    if d.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", d.trim())
    }
}

/// A failed request in words: what failed (timed out, connection, reading the
/// answer) and the chain of causes (refused, reset, DNS), without any header or
/// token. Used for upstream polls and webhook attempts alike.
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    let mut msg = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_in_the_path() {
        let settings = crate::config::Settings::load_with(
            None,
            &[("upstream.base_url", "http://h/vector/v2/")],
        )
        .unwrap();
        let c = UpstreamClient::new(&settings.upstream).unwrap();
        assert_eq!(
            c.status_url(Kind::Copy, "myorg:my-product").as_str(),
            "http://h/vector/v2/products/myorg%3Amy-product/search/copy/status"
        );
        assert_eq!(
            c.status_url(Kind::Delete, "a.b_c").as_str(),
            "http://h/vector/v2/products/a.b_c/search/delete/status"
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
        assert!(s.has_errors());
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
