//! The HTTP client of the client commands: the daemon's URL and token, a few quick retries
//! of transient failures (connection errors, 5xx, 429), and the mapping of the daemon's
//! error bodies to [`CliError`]s with their exit codes.

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;
use url::Url;

use super::CliError;
use crate::model::Kind;

/// How to reach the daemon: shared by `watch`, `wait` and `status`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of the daemon.
    #[arg(
        long,
        env = "JOBWATCH_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_parser = parse_server
    )]
    pub server: Url,

    /// Bearer token for the daemon's /v1 routes (its `api.token`), when it wants one.
    #[arg(long, env = "JOBWATCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

fn parse_server(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!("`{s}` is not an http(s) URL with a host"));
    }
    Ok(url)
}

/// Attempts of one request before the daemon counts as unavailable. Quick on purpose: a
/// command line waiting on a dead daemon should say so within seconds, not retry for hours.
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// A request answered by the daemon with a 4xx: the error body's code and message.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl Refusal {
    /// The error the command stops with: 401/403 are about the token, every other 4xx is
    /// something the user asked for that the API will not do.
    pub fn into_error(self, what: &str) -> CliError {
        let text = format!(
            "{what}: the daemon answered {}: {}",
            self.status, self.message
        );
        match self.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                CliError::NoPermission(format!("{text} (give --token or set JOBWATCH_TOKEN)"))
            }
            _ => CliError::Usage(text),
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<HeaderValue>,
}

impl Client {
    pub fn new(args: &ServerArgs) -> Result<Client, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("jobwatch-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Unavailable(format!("cannot build an HTTP client: {e}")))?;
        let token = args
            .token
            .as_deref()
            .map(|t| {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    CliError::Usage("--token contains characters a header cannot carry".into())
                })?;
                v.set_sensitive(true);
                Ok::<_, CliError>(v)
            })
            .transpose()?;
        Ok(Client {
            http,
            base: args.server.clone(),
            token,
        })
    }

    /// The daemon's base URL, as given.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The HTTP client, for requests this type has no method for (the event stream).
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The `Authorization` value, when a token was given.
    pub(crate) fn token(&self) -> Option<&HeaderValue> {
        self.token.as_ref()
    }

    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `POST /v1/jobs`: the 202 body, or the refusal.
    pub async fn post_jobs(&self, body: &Value) -> Result<Result<Value, Refusal>, CliError> {
        let url = self.url(&["v1", "jobs"]);
        self.send_json(
            "POST /v1/jobs",
            || self.http.post(url.clone()).json(body),
            Duration::from_secs(60),
        )
        .await
    }

    /// `GET /v1/jobs/{kind}/{id}?wait=SECONDS`: the watch, `None` when the daemon does not
    /// know it (404), or the refusal.
    pub async fn get_watch(
        &self,
        kind: Kind,
        id: &str,
        wait: Duration,
    ) -> Result<Result<Option<Value>, Refusal>, CliError> {
        let mut url = self.url(&["v1", "jobs", kind.as_str(), id]);
        if !wait.is_zero() {
            url.query_pairs_mut()
                .append_pair("wait", &format!("{:.3}", wait.as_secs_f64()));
        }
        let answer = self
            .send_json(
                "GET /v1/jobs/{kind}/{id}",
                || self.http.get(url.clone()),
                // The daemon holds the request for `wait`; leave room for its answer.
                wait + Duration::from_secs(30),
            )
            .await?;
        Ok(match answer {
            Ok(v) => Ok(Some(v)),
            Err(r) if r.status == StatusCode::NOT_FOUND => Ok(None),
            Err(r) => Err(r),
        })
    }

    /// `GET /v1/status`, the body as the daemon sent it.
    pub async fn status_text(&self) -> Result<Result<String, Refusal>, CliError> {
        let url = self.url(&["v1", "status"]);
        let (status, body) = self
            .send(
                "GET /v1/status",
                || self.http.get(url.clone()),
                Duration::from_secs(30),
            )
            .await?;
        if status.is_success() {
            String::from_utf8(body)
                .map(Ok)
                .map_err(|_| CliError::Unavailable("GET /v1/status: the body is not UTF-8".into()))
        } else {
            Ok(Err(refusal(status, &body)))
        }
    }

    /// `GET /{path}` once, within 3 s: `Ok` on a 2xx, else why not.
    pub async fn probe(&self, path: &str) -> Result<(), String> {
        let mut req = self
            .http
            .get(self.url(&[path]))
            .timeout(Duration::from_secs(3));
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, t.clone());
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let status = r.status();
                let body = r.bytes().await.unwrap_or_default();
                Err(format!(
                    "answered {status}: {}",
                    refusal(status, &body).message
                ))
            }
            Err(e) => Err(chain(&e)),
        }
    }

    async fn send_json(
        &self,
        what: &str,
        build: impl Fn() -> RequestBuilder,
        timeout: Duration,
    ) -> Result<Result<Value, Refusal>, CliError> {
        let (status, body) = self.send(what, build, timeout).await?;
        if status.is_success() {
            serde_json::from_slice(&body).map(Ok).map_err(|e| {
                CliError::Unavailable(format!("{what}: the daemon's answer is not JSON: {e}"))
            })
        } else {
            Ok(Err(refusal(status, &body)))
        }
    }

    /// Sends with retries of transient failures; answers with any status below 500 but 429.
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> RequestBuilder,
        timeout: Duration,
    ) -> Result<(StatusCode, Vec<u8>), CliError> {
        let mut delay = FIRST_RETRY;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let mut req = build().timeout(timeout);
            if let Some(t) = &self.token {
                req = req.header(AUTHORIZATION, t.clone());
            }
            let mut pause = delay;
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match resp.bytes().await {
                        Ok(body)
                            if status.is_server_error()
                                || status == StatusCode::TOO_MANY_REQUESTS =>
                        {
                            last = format!("answered {status}: {}", refusal(status, &body).message);
                            if let Some(ra) = retry_after {
                                pause = ra.min(MAX_RETRY);
                            }
                        }
                        Ok(body) => return Ok((status, body.to_vec())),
                        Err(e) => last = format!("the answer broke off: {}", chain(&e)),
                    }
                }
                Err(e) if e.is_connect() => {
                    last = format!("cannot connect to {}: {}", self.base, chain(&e))
                }
                Err(e) if e.is_timeout() => last = format!("no answer within {timeout:?}"),
                Err(e) => last = chain(&e),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(pause).await;
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
        Err(CliError::Unavailable(format!(
            "{what}: {last} (after {ATTEMPTS} attempts)"
        )))
    }
}

/// The daemon's `{"error":{"code","message"}}`, or the raw body when it is not that.
pub(crate) fn refusal(status: StatusCode, body: &[u8]) -> Refusal {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v["error"][k].as_str())
            .map(str::to_owned)
    };
    Refusal {
        status,
        code: field("code").unwrap_or_default(),
        message: field("message").unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(no body)".to_owned()
            } else {
                text.chars().take(300).collect()
            }
        }),
    }
}

/// An error and its causes on one line: reqwest's own message rarely says *why*.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
