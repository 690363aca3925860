//! The settings tree: embedded commented defaults (`config/default.toml`), then
//! `--config FILE`, then `JOBWATCH__SECTION__KEY` environment variables. Loaded and
//! validated once at start; a bad setting stops the start with a message naming it.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::upstream::kinds::{KindDef, KindSpec};
use crate::upstream::preset::preset;
use crate::webhook::sign::SigningSecret;

/// The embedded defaults, also the reference documentation of every setting.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: setting `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A string that must never be printed: `Debug` shows `[redacted]`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub api: ApiSettings,
    pub store: StoreSettings,
    pub upstream: UpstreamSettings,
    /// More upstreams, each with its own kinds and budget (`[[upstreams]]`).
    #[serde(default)]
    pub upstreams: Vec<UpstreamEntry>,
    pub poller: PollerSettings,
    pub webhooks: WebhookSettings,
    pub log: LogSettings,
    /// Every upstream, resolved and checked at load: `[upstream]` as the `vector`
    /// preset, then each `[[upstreams]]` entry.
    #[serde(skip)]
    pub resolved: Vec<UpstreamDef>,
}

/// One `[[upstreams]]` entry: a preset or kinds of its own, where to ask, with
/// which credentials, within which budget. Unset budget settings are those of
/// `[upstream]`; the token never is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    pub name: String,
    pub preset: Option<String>,
    pub base_url: Option<url::Url>,
    pub token: Option<Secret>,
    /// An environment variable that holds the token (instead of `token`).
    pub token_env: Option<String>,
    /// The header that carries the token as it is; unset: `Authorization: Bearer <token>`.
    pub auth_header: Option<String>,
    /// Request headers, over the preset's.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    pub max_requests_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub max_in_flight: Option<usize>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub request_timeout: Option<Duration>,
    pub user_agent: Option<String>,
    /// Kinds of its own; with a preset, they replace the preset's.
    pub kinds: Option<Vec<KindSpec>>,
    /// New names for the preset's kinds (kind names are global): `{ batch = "batch-eu" }`.
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
}

/// An upstream ready to build: its settings (the budget, timeouts and credentials
/// of `[upstream]`, with the entry's own), its headers and its kinds.
#[derive(Debug, Clone)]
pub struct UpstreamDef {
    pub name: String,
    pub settings: UpstreamSettings,
    /// The header that carries the token as it is; `None`: `Authorization: Bearer`.
    pub auth_header: Option<http::HeaderName>,
    /// Sent with every request, in this order, before the User-Agent.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub kinds: Vec<KindDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    pub allow_unauthenticated_public: bool,
    pub max_ids_per_request: usize,
    pub max_body_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub max_wait: Duration,
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// How often an idle event stream sends a keep-alive comment.
    #[serde(deserialize_with = "duration")]
    pub events_keep_alive: Duration,
    /// A connection whose client reads nothing for this long while the daemon has
    /// more to send is closed (`api::stall`).
    #[serde(deserialize_with = "duration")]
    pub write_stall_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub url: String,
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    #[serde(deserialize_with = "duration")]
    pub checkpoint_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub lease: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub base_url: url::Url,
    pub token: Option<Secret>,
    pub max_requests_per_second: f64,
    pub burst: u32,
    pub max_in_flight: usize,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub min_retry_after: Duration,
    #[serde(deserialize_with = "duration")]
    pub max_retry_after: Duration,
    #[serde(deserialize_with = "duration")]
    pub auth_probe_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub rate_recovery_step: Duration,
    #[serde(deserialize_with = "duration")]
    pub error_backoff_base: Duration,
    #[serde(deserialize_with = "duration")]
    pub error_backoff_max: Duration,
    pub user_agent: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollerSettings {
    #[serde(deserialize_with = "duration")]
    pub initial_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub max_interval: Duration,
    pub growth: f64,
    pub jitter: f64,
    #[serde(deserialize_with = "duration")]
    pub not_found_grace: Duration,
    #[serde(default, deserialize_with = "opt_duration")]
    pub default_timeout: Option<Duration>,
    /// `backoff` or `learned` (docs/cadence.md).
    pub cadence: crate::poller::cadence::Policy,
    /// The learned cadence's price of a poll: the expected detection delay a poll
    /// must save to be sent.
    #[serde(deserialize_with = "duration")]
    pub poll_price: Duration,
    /// Ended jobs of a kind (decayed) before the learned cadence uses its history.
    pub learn_after: u32,
    /// A metadata key whose values get a history of their own (`model`, `region`).
    #[serde(default, deserialize_with = "opt_text")]
    pub learn_by: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    #[serde(default, deserialize_with = "opt_signing_secret")]
    pub signing_secret: Option<SigningSecret>,
    pub allow_private_targets: bool,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    pub jitter: f64,
    pub max_in_flight: usize,
    #[serde(deserialize_with = "duration")]
    pub max_retry_after: Duration,
    #[serde(default)]
    pub endpoints: Vec<EndpointSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSettings {
    pub url: url::Url,
    #[serde(deserialize_with = "signing_secret")]
    pub secret: SigningSecret,
    /// Event types this endpoint gets; `None` means all of them.
    pub events: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Defaults, then `file`, then the environment; validated.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with(file, &[])
    }

    /// As `load`, with explicit overrides applied last (`("poller.initial_interval", "50ms")`);
    /// tests and the demo use this instead of mutating the process environment.
    pub fn load_with(
        file: Option<&Path>,
        overrides: &[(&str, &str)],
    ) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("JOBWATCH")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("webhooks.retry_schedule"),
        );
        for (key, value) in overrides {
            builder = builder.set_override(*key, *value)?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        settings.resolved = settings.resolve_upstreams()?;
        settings.check_lease()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let api = &self.api;
        if api.token.is_none()
            && !api.listen.ip().is_loopback()
            && !api.allow_unauthenticated_public
        {
            return Err(invalid(
                "api.listen",
                format!(
                    "{} is not a loopback address and api.token is unset; set api.token, or api.allow_unauthenticated_public = true",
                    api.listen
                ),
            ));
        }
        if api.token.as_ref().is_some_and(|t| t.expose().is_empty()) {
            return Err(invalid("api.token", "must not be empty"));
        }
        if api.max_ids_per_request == 0 {
            return Err(invalid("api.max_ids_per_request", "must be at least 1"));
        }
        if api.max_body_bytes < 1024 {
            return Err(invalid("api.max_body_bytes", "must be at least 1024"));
        }
        if api.events_keep_alive < Duration::from_millis(100) {
            return Err(invalid("api.events_keep_alive", "must be at least 100ms"));
        }
        if api.write_stall_timeout < Duration::from_millis(100) {
            return Err(invalid("api.write_stall_timeout", "must be at least 100ms"));
        }
        if !(self.store.url.starts_with("sqlite:")
            || self.store.url.starts_with("postgres://")
            || self.store.url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "store.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        check_upstream("upstream", &self.upstream)?;
        if self.store.checkpoint_interval.is_zero() {
            return Err(invalid("store.checkpoint_interval", "must be above 0"));
        }
        let p = &self.poller;
        if p.initial_interval.is_zero() || p.initial_interval > p.max_interval {
            return Err(invalid(
                "poller.initial_interval",
                "must be above 0 and at most poller.max_interval",
            ));
        }
        if !(p.growth >= 1.0 && p.growth <= 10.0) {
            return Err(invalid("poller.growth", "must be between 1.0 and 10.0"));
        }
        if !(0.0..=0.5).contains(&p.jitter) {
            return Err(invalid("poller.jitter", "must be between 0.0 and 0.5"));
        }
        if p.poll_price.is_zero() {
            return Err(invalid("poller.poll_price", "must be above 0"));
        }
        if p.learn_after == 0 {
            return Err(invalid("poller.learn_after", "must be at least 1"));
        }
        let w = &self.webhooks;
        if w.request_timeout.is_zero() {
            return Err(invalid("webhooks.request_timeout", "must be above 0"));
        }
        if !(0.0..=0.5).contains(&w.jitter) {
            return Err(invalid("webhooks.jitter", "must be between 0.0 and 0.5"));
        }
        if w.max_in_flight == 0 {
            return Err(invalid("webhooks.max_in_flight", "must be at least 1"));
        }
        let mut urls = std::collections::HashSet::new();
        for e in &w.endpoints {
            if !urls.insert(e.url.as_str()) {
                return Err(invalid(
                    "webhooks.endpoints.url",
                    format!(
                        "{} is configured twice; give each endpoint its own URL",
                        e.url
                    ),
                ));
            }
            if !matches!(e.url.scheme(), "http" | "https") {
                return Err(invalid(
                    "webhooks.endpoints.url",
                    format!("{} is not an http or https URL", e.url),
                ));
            }
            for t in e.events.iter().flatten() {
                if crate::model::Outcome::from_event_type(t).is_none() {
                    return Err(invalid(
                        "webhooks.endpoints.events",
                        format!("unknown event type {t:?}; known: job.succeeded, job.failed, job.timed_out, job.not_found, job.rejected"),
                    ));
                }
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("{:?} is not a tracing filter", self.log.level),
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// A claim must outlast the longest request made under it.
    fn check_lease(&self) -> Result<(), ConfigError> {
        let longest = self
            .resolved
            .iter()
            .map(|d| d.settings.request_timeout)
            .chain([self.webhooks.request_timeout])
            .max()
            .unwrap_or_default();
        if self.store.lease < longest + Duration::from_secs(1) {
            return Err(invalid(
                "store.lease",
                format!(
                    "{} is not longer than the longest request timeout ({}) by a second at least",
                    humantime::format_duration(self.store.lease),
                    humantime::format_duration(longest)
                ),
            ));
        }
        Ok(())
    }

    /// `[upstream]` as the `vector` upstream (unless an entry takes its place), then
    /// each `[[upstreams]]` entry; names and kind names must be unique.
    fn resolve_upstreams(&self) -> Result<Vec<UpstreamDef>, ConfigError> {
        let replaced = self
            .upstreams
            .iter()
            .any(|e| e.name == "vector" || e.preset.as_deref() == Some("vector"));
        let mut defs = Vec::new();
        if !replaced {
            let vector = preset("vector").map_err(|e| invalid("upstream", e))?;
            defs.push(UpstreamDef {
                name: "vector".into(),
                settings: self.upstream.clone(),
                auth_header: None,
                headers: headers("upstream", &vector.headers)?,
                kinds: kinds("upstream", &vector.kinds)?,
            });
        }
        for (i, e) in self.upstreams.iter().enumerate() {
            defs.push(self.resolve_entry(i, e)?);
        }
        let mut names = std::collections::HashMap::new();
        let mut kind_owner = std::collections::HashMap::new();
        for d in &defs {
            if names.insert(d.name.as_str(), ()).is_some() {
                return Err(invalid(
                    "upstreams.name",
                    format!("{:?} names two upstreams; give each its own name", d.name),
                ));
            }
            for k in &d.kinds {
                if let Some(other) = kind_owner.insert(k.kind, d.name.as_str()) {
                    return Err(invalid(
                        "upstreams.kinds.name",
                        format!(
                            "kind {:?} is configured by upstreams {other:?} and {:?}; kind names are global (rename one with `rename = {{ {} = \"...\" }}`)",
                            k.kind.as_str(),
                            d.name,
                            k.kind.as_str()
                        ),
                    ));
                }
            }
        }
        Ok(defs)
    }

    fn resolve_entry(&self, i: usize, e: &UpstreamEntry) -> Result<UpstreamDef, ConfigError> {
        let key = |field: &str| format!("upstreams[{i}].{field}");
        crate::model::check_kind_name(&e.name)
            .map_err(|m| invalid(key("name"), m.replace("kind", "upstream")))?;
        let preset = match &e.preset {
            Some(p) => Some(preset(p).map_err(|m| invalid(key("preset"), m))?),
            None => None,
        };
        let mut settings = self.upstream.clone();
        settings.base_url = match (
            e.base_url.clone(),
            preset.as_ref().and_then(|p| p.base_url.clone()),
        ) {
            (Some(u), _) | (None, Some(u)) => u,
            (None, None) => {
                return Err(invalid(
                    key("base_url"),
                    format!(
                        "upstream {:?} needs a base_url (its preset has none)",
                        e.name
                    ),
                ))
            }
        };
        settings.token = match (&e.token, &e.token_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("token_env"),
                    "give token or token_env, not both",
                ))
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(var)) => Some(Secret::new(std::env::var(var).map_err(|_| {
                invalid(
                    key("token_env"),
                    format!("the environment variable {var:?} is not set (or not UTF-8)"),
                )
            })?)),
            (None, None) => None,
        };
        if let Some(v) = e.max_requests_per_second {
            settings.max_requests_per_second = v;
        }
        if let Some(v) = e.burst {
            settings.burst = v;
        }
        if let Some(v) = e.max_in_flight {
            settings.max_in_flight = v;
        }
        if let Some(v) = e.request_timeout {
            settings.request_timeout = v;
        }
        if let Some(v) = &e.user_agent {
            settings.user_agent = v.clone();
        }
        check_upstream(&format!("upstreams[{i}]"), &settings)?;
        let mut header_table = preset
            .as_ref()
            .map(|p| p.headers.clone())
            .unwrap_or_default();
        header_table.extend(e.headers.clone());
        let mut specs = match (&e.kinds, &preset) {
            (Some(k), _) => k.clone(),
            (None, Some(p)) => p.kinds.clone(),
            (None, None) => {
                return Err(invalid(
                    key("kinds"),
                    format!("upstream {:?} has neither a preset nor kinds", e.name),
                ))
            }
        };
        for (from, to) in &e.rename {
            let spec = specs.iter_mut().find(|k| &k.name == from).ok_or_else(|| {
                invalid(
                    key("rename"),
                    format!("upstream {:?} has no kind {from:?}", e.name),
                )
            })?;
            spec.name = to.clone();
        }
        let auth_header =
            match &e.auth_header {
                Some(h) => Some(http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    invalid(key("auth_header"), format!("{h:?} is not a header name"))
                })?),
                None => None,
            };
        Ok(UpstreamDef {
            name: e.name.clone(),
            settings,
            auth_header,
            headers: headers(&key("headers"), &header_table)?,
            kinds: kinds(&key("kinds"), &specs)?,
        })
    }
}

fn headers(
    key: &str,
    table: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
    // The content type second, as the Vector client sends it: a preset's table is
    // sorted by name, and these two come first in that order anyway.
    table
        .iter()
        .map(|(name, value)| {
            let n = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(key, format!("{name:?} is not a header name")))?;
            let v = http::HeaderValue::from_str(value).map_err(|_| {
                invalid(key, format!("the value of {name:?} is not a header value"))
            })?;
            Ok((n, v))
        })
        .collect()
}

fn kinds(key: &str, specs: &[KindSpec]) -> Result<Vec<KindDef>, ConfigError> {
    if specs.is_empty() {
        return Err(invalid(key, "an upstream needs at least one kind"));
    }
    specs
        .iter()
        .map(|k| KindDef::new(k).map_err(|m| invalid(key, m)))
        .collect()
}

/// The checks of an upstream's settings, `[upstream]` or an entry's resolved ones.
fn check_upstream(key: &str, up: &UpstreamSettings) -> Result<(), ConfigError> {
    let k = |field: &str| format!("{key}.{field}");
    if !matches!(up.base_url.scheme(), "http" | "https") {
        return Err(invalid(k("base_url"), "must be an http or https URL"));
    }
    if !(up.max_requests_per_second.is_finite() && up.max_requests_per_second > 0.0) {
        return Err(invalid(
            k("max_requests_per_second"),
            "must be a number above 0",
        ));
    }
    if up.burst == 0 {
        return Err(invalid(k("burst"), "must be at least 1"));
    }
    if up.max_in_flight == 0 {
        return Err(invalid(k("max_in_flight"), "must be at least 1"));
    }
    if up.request_timeout.is_zero() {
        return Err(invalid(k("request_timeout"), "must be above 0"));
    }
    if up.min_retry_after > up.max_retry_after {
        return Err(invalid(
            k("min_retry_after"),
            format!("must not exceed {key}.max_retry_after"),
        ));
    }
    if up.error_backoff_base.is_zero() || up.error_backoff_base > up.error_backoff_max {
        return Err(invalid(
            k("error_backoff_base"),
            format!("must be above 0 and at most {key}.error_backoff_max"),
        ));
    }
    if http::HeaderValue::from_str(&up.user_agent).is_err() {
        return Err(invalid(k("user_agent"), "is not a header value"));
    }
    Ok(())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration like \"500ms\", \"5s\", \"10m\", \"7d\": {e}")
    })
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// An optional text setting: unset or empty is `None`.
fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.trim().is_empty()))
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .map(|s| parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

fn signing_secret<'de, D: Deserializer<'de>>(d: D) -> Result<SigningSecret, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn opt_signing_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SigningSecret>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_load_and_validate() {
        let s = Settings::load_with(None, &[]).expect("defaults are valid");
        assert_eq!(s.api.max_ids_per_request, 10_000);
        assert_eq!(s.webhooks.retry_schedule.len(), 7);
        assert!(s.upstream.token.is_none());
    }

    #[test]
    fn a_bad_duration_names_the_setting() {
        let err = Settings::load_with(None, &[("poller.initial_interval", "soon")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("poller.initial_interval"), "{err}");
    }

    #[test]
    fn a_public_listen_address_needs_a_token() {
        let err = Settings::load_with(None, &[("api.listen", "0.0.0.0:8080")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.listen"), "{err}");
        Settings::load_with(None, &[("api.listen", "0.0.0.0:8080"), ("api.token", "t")])
            .expect("token makes it fine");
    }

    #[test]
    fn the_cadence_settings_are_checked_and_name_themselves() {
        let s = Settings::load_with(None, &[]).unwrap();
        assert_eq!(s.poller.cadence, crate::poller::cadence::Policy::Backoff);
        assert_eq!(s.poller.poll_price, Duration::from_secs(1));
        assert_eq!(s.poller.learn_after, 50);
        assert_eq!(s.poller.learn_by, None);
        let s = Settings::load_with(
            None,
            &[("poller.cadence", "learned"), ("poller.learn_by", "model")],
        )
        .unwrap();
        assert_eq!(s.poller.cadence, crate::poller::cadence::Policy::Learned);
        assert_eq!(s.poller.learn_by.as_deref(), Some("model"));
        assert_eq!(
            Settings::load_with(None, &[("poller.learn_by", " ")])
                .unwrap()
                .poller
                .learn_by,
            None,
            "an empty key is none"
        );
        for (key, value) in [
            ("poller.cadence", "lerned"),
            ("poller.poll_price", "0s"),
            ("poller.learn_after", "0"),
        ] {
            let err = Settings::load_with(None, &[(key, value)])
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key} = {value}: {err}");
        }
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let err = Settings::load_with(None, &[("poller.initial_intervl", "1s")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("initial_intervl"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Settings::load_with(None, &[("upstream.token", "sekrit-value")]).unwrap();
        assert!(!format!("{s:?}").contains("sekrit-value"));
    }

    /// Settings from a TOML text layered on the defaults.
    fn with_file(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobwatch.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load_with(Some(&path), &[])
    }

    #[test]
    fn upstream_alone_is_the_vector_preset() {
        let s = Settings::load_with(None, &[]).unwrap();
        assert_eq!(s.resolved.len(), 1);
        let v = &s.resolved[0];
        assert_eq!(v.name, "vector");
        let kinds: Vec<&str> = v.kinds.iter().map(|k| k.kind.as_str()).collect();
        assert_eq!(kinds, ["copy", "delete"]);
        let headers: Vec<&str> = v.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(headers, ["accept", "content-type"]);
    }

    #[test]
    fn an_entry_takes_its_preset_and_the_budget_of_upstream_where_unset() {
        let s = with_file(
            r#"
            [upstream]
            max_in_flight = 7
            token = "vector-token"
            [[upstreams]]
            name = "openai"
            preset = "openai-batch"
            token = "sk-test"
            max_requests_per_second = 3
            rename = { batch = "openai-batch" }
            "#,
        )
        .unwrap();
        let o = &s.resolved[1];
        assert_eq!(o.name, "openai");
        assert_eq!(o.settings.base_url.as_str(), "https://api.openai.com/v1");
        assert_eq!(o.settings.max_requests_per_second, 3.0);
        assert_eq!(o.settings.max_in_flight, 7, "from [upstream]");
        assert_eq!(
            o.settings.token.as_ref().map(|t| t.expose()),
            Some("sk-test")
        );
        assert_eq!(o.kinds[0].kind.as_str(), "openai-batch");
        assert!(
            !format!("{s:?}").contains("sk-test"),
            "the token is redacted"
        );
    }

    #[test]
    fn bad_entries_name_the_setting_and_the_reason() {
        let err = |t: &str| with_file(t).unwrap_err().to_string();
        let e = err("[[upstreams]]\nname = \"x\"\npreset = \"nope\"\nbase_url = \"http://h\"");
        assert!(
            e.contains("upstreams[0].preset") && e.contains("google-lro"),
            "{e}"
        );
        let e = err("[[upstreams]]\nname = \"g\"\npreset = \"google-lro\"");
        assert!(
            e.contains("upstreams[0].base_url") && e.contains("needs a base_url"),
            "{e}"
        );
        let e = err(
            "[[upstreams]]\nname = \"a\"\npreset = \"replicate\"\n[[upstreams]]\nname = \"b\"\npreset = \"replicate\"",
        );
        assert!(
            e.contains("kind \"prediction\" is configured by upstreams \"a\" and \"b\""),
            "{e}"
        );
        let e = err("[[upstreams]]\nname = \"a\"\npreset = \"replicate\"\ntoken_env = \"JOBWATCH_TEST_SURELY_UNSET\"");
        assert!(
            e.contains("upstreams[0].token_env") && e.contains("not set"),
            "{e}"
        );
        let e = err("[[upstreams]]\nname = \"a\"\npreset = \"replicate\"\nburst = 0");
        assert!(e.contains("upstreams[0].burst"), "{e}");
        let e = err("[[upstreams]]\nname = \"a\"\nbase_url = \"http://h\"");
        assert!(e.contains("neither a preset nor kinds"), "{e}");
        let e = err(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"http://h\"\n[[upstreams.kinds]]\nname = \"k\"\npath = \"/k\"\nstate = { pointer = \"/s\" }",
        );
        assert!(
            e.contains("upstreams[0].kinds") && e.contains("has no {id}"),
            "{e}"
        );
    }

    #[test]
    fn a_kind_of_its_own_needs_no_preset() {
        let s = with_file(
            r#"
            [[upstreams]]
            name = "azure"
            base_url = "https://management.azure.com"
            auth_header = "x-api-key"
            token = "k"
            [[upstreams.kinds]]
            name = "azure-op"
            path = "/operations/{id}"
            state = { pointer = "/status", running = ["InProgress"], succeeded = ["Succeeded"], failed = ["Failed", "Canceled"] }
            ended = "/endTime"
            errors = "/error"
            "#,
        )
        .unwrap();
        let a = &s.resolved[1];
        assert_eq!(a.kinds[0].kind.as_str(), "azure-op");
        assert_eq!(
            a.auth_header.as_ref().map(|h| h.as_str()),
            Some("x-api-key")
        );
    }
}
