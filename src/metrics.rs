//! Prometheus metrics: the process-wide recorder (`metrics` facade +
//! `metrics-exporter-prometheus`), the names and labels of every metric, one-line
//! helpers that the poller, budget, dispatcher and writer call, and the text that
//! `GET /metrics` answers.
//!
//! Two kinds of metric live here. Events (polls, deliveries, store writes, 429s) are
//! counters and histograms in the process-wide recorder: they accumulate from the
//! moment the recorder is installed. Levels (watches by state and outcome, the
//! delivery backlog, the allowed rate, and the budget's paused seconds) belong to one
//! daemon's store and budget: they are read at scrape time and rendered straight into
//! the answer, so that they are exact for the daemon asked even when one process runs
//! several (as tests do).

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_histogram, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::model::Outcome;
use crate::poller::budget::{Credentials, UpstreamHealth};
use crate::store::{Counts, DeliveryStatus};
use crate::upstream::PollAnswer;

/// Status requests sent upstream, by what they came to.
pub const POLLS: &str = "jobwatch_polls_total";
/// Seconds from sending a status request to its answer (or failure).
pub const UPSTREAM_LATENCY: &str = "jobwatch_upstream_request_duration_seconds";
/// Status requests by upstream and result (the same results as [`POLLS`]).
pub const UPSTREAM_POLLS: &str = "jobwatch_upstream_polls_total";
/// Answers that paused every poll: 429, or 503 with Retry-After.
pub const RATE_LIMITED: &str = "jobwatch_upstream_rate_limited_total";
/// Outcomes stored by polls and deadlines (cancellations by clients are not events).
pub const OUTCOMES: &str = "jobwatch_outcomes_total";
/// Webhook delivery attempts, by the delivery's status after the attempt.
pub const DELIVERIES: &str = "jobwatch_deliveries_total";
/// Seconds one delivery attempt took.
pub const DELIVERY_LATENCY: &str = "jobwatch_delivery_duration_seconds";
/// Event streams (`GET /v1/events`) the daemon closed, by reason.
pub const EVENT_STREAMS_CLOSED: &str = "jobwatch_event_streams_closed_total";
/// Connections cut because their peer read nothing for `api.write_stall_timeout`.
pub const STALLED_CONNECTIONS: &str = "jobwatch_http_stalled_connections_total";
/// Seconds one store write took, by what was written.
pub const STORE_WRITE_LATENCY: &str = "jobwatch_store_write_duration_seconds";

/// The `result` label of [`POLLS`], one per kind of [`PollAnswer`].
pub const POLL_RESULTS: [&str; 6] = [
    "status",
    "not_found",
    "rejected",
    "unauthorized",
    "rate_limited",
    "transient",
];

/// The `result` label of [`DELIVERIES`]: what a delivery became after an attempt.
pub const DELIVERY_RESULTS: [&str; 4] = ["delivered", "retrying", "dead", "gone"];

/// Upper bounds of the latency histograms, in seconds: loopback to slow upstream.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the recorder's histograms are folded, so that memory stays flat when
/// nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide recorder, once; later calls return the same handle.
/// `None` when another recorder was installed first (an embedding program's): then
/// events go there and `/metrics` shows only the scrape-time levels.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    &LATENCY_BUCKETS,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let handle = match builder.install_recorder() {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics shows only the store and budget levels");
                    return None;
                }
            };
            describe();
            let upkeep = handle.clone();
            // A plain thread: tests build and drop many runtimes in one process, and
            // this must outlive all of them.
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread; histograms are folded at scrape time only");
            }
            Some(handle)
        })
        .as_ref()
}

/// HELP texts, and a zero for every labelled series so that each one exists from
/// the start (a missing series reads as "no data", not as zero).
fn describe() {
    describe_counter!(POLLS, "Status requests sent upstream, by result: status (200 with a document), not_found (404), rejected (400/422), unauthorized (401/403), rate_limited (429, or 503 with Retry-After), transient (other 5xx, timeouts, connection errors, unparsable bodies).");
    describe_counter!(
        UPSTREAM_POLLS,
        "Status requests sent, by upstream and by result (as jobwatch_polls_total)."
    );
    describe_histogram!(
        UPSTREAM_LATENCY,
        ::metrics::Unit::Seconds,
        "Seconds from sending a status request to its answer or failure."
    );
    describe_counter!(
        RATE_LIMITED,
        "Upstream answers that paused every poll (429, or 503 with Retry-After), by status."
    );
    describe_counter!(
        OUTCOMES,
        "Watch outcomes stored by polls and deadlines, by outcome."
    );
    describe_counter!(DELIVERIES, "Webhook delivery attempts, by the delivery's status after the attempt: delivered (2xx), retrying, dead (schedule exhausted), gone (410).");
    describe_histogram!(
        DELIVERY_LATENCY,
        ::metrics::Unit::Seconds,
        "Seconds one webhook delivery attempt took."
    );
    describe_histogram!(
        STORE_WRITE_LATENCY,
        ::metrics::Unit::Seconds,
        "Seconds one store write took (including retries of a failed commit), by op."
    );
    describe_counter!(EVENT_STREAMS_CLOSED, "Event streams (GET /v1/events) the daemon closed, by reason: lagged (fell behind the live state changes), shutdown, store_unavailable.");
    describe_counter!(STALLED_CONNECTIONS, "HTTP connections cut because the client read nothing for api.write_stall_timeout while the daemon had more to send.");
    for reason in ["lagged", "shutdown", "store_unavailable"] {
        counter!(EVENT_STREAMS_CLOSED, "reason" => reason).increment(0);
    }
    counter!(STALLED_CONNECTIONS).increment(0);
    for result in POLL_RESULTS {
        counter!(POLLS, "result" => result).increment(0);
    }
    for status in ["429", "503"] {
        counter!(RATE_LIMITED, "status" => status).increment(0);
    }
    for outcome in Outcome::ALL {
        if outcome.event_type().is_some() {
            counter!(OUTCOMES, "outcome" => outcome.as_str()).increment(0);
        }
    }
    for result in DELIVERY_RESULTS {
        counter!(DELIVERIES, "result" => result).increment(0);
    }
}

/// Where the `result` label of one upstream answer is in [`POLL_RESULTS`].
fn poll_result_index(answer: &PollAnswer) -> usize {
    match answer {
        PollAnswer::Status(_) => 0,
        PollAnswer::NotFound => 1,
        PollAnswer::Rejected { .. } => 2,
        PollAnswer::Unauthorized { .. } => 3,
        PollAnswer::RateLimited { .. } => 4,
        PollAnswer::Transient { .. } => 5,
    }
}

/// The handles one upstream's polls count with, looked up once (a lookup by name
/// and label hashes both, and it ran for every poll). Made with the upstream's
/// client, after the daemon installed the recorder.
pub struct PollMetrics {
    polls: [Counter; POLL_RESULTS.len()],
    by_upstream: [Counter; POLL_RESULTS.len()],
    latency: Histogram,
}

impl PollMetrics {
    pub fn new(upstream: &str) -> PollMetrics {
        let name = upstream.to_string();
        PollMetrics {
            polls: POLL_RESULTS.map(|result| counter!(POLLS, "result" => result)),
            by_upstream: POLL_RESULTS.map(|result| {
                let c = counter!(UPSTREAM_POLLS, "upstream" => name.clone(), "result" => result);
                c.increment(0);
                c
            }),
            latency: histogram!(UPSTREAM_LATENCY),
        }
    }

    /// One status request came back (`took`: from send to answer).
    pub fn answered(&self, answer: &PollAnswer, took: Duration) {
        let i = poll_result_index(answer);
        self.polls[i].increment(1);
        self.by_upstream[i].increment(1);
        self.latency.record(took.as_secs_f64());
        if let PollAnswer::RateLimited { status, .. } = answer {
            let status = if *status == 503 { "503" } else { "429" };
            counter!(RATE_LIMITED, "status" => status).increment(1);
        }
    }
}

/// A watch's outcome was stored.
pub fn outcome_stored(outcome: Outcome) {
    counter!(OUTCOMES, "outcome" => outcome.as_str()).increment(1);
}

/// One delivery attempt ended; `next` is the delivery's status after it.
pub fn delivery_attempted(next: DeliveryStatus, took: Duration) {
    let result = match next {
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Dead => "dead",
        DeliveryStatus::Gone => "gone",
        DeliveryStatus::Pending | DeliveryStatus::Retrying => "retrying",
    };
    counter!(DELIVERIES, "result" => result).increment(1);
    histogram!(DELIVERY_LATENCY).record(took.as_secs_f64());
}

/// The daemon closed an event stream, for `reason`.
pub fn event_stream_closed(reason: &str) {
    let reason = match reason {
        "lagged" => "lagged",
        "shutdown" => "shutdown",
        _ => "store_unavailable",
    };
    counter!(EVENT_STREAMS_CLOSED, "reason" => reason).increment(1);
}

/// The listener cut a connection whose client stopped reading.
pub fn stalled_connection() {
    counter!(STALLED_CONNECTIONS).increment(1);
}

/// One store write committed: `op` is `poll_results`, `delivery_attempts`,
/// `deadlines` or `insert_watches`.
pub fn store_write(op: &'static str, took: Duration) {
    histogram!(STORE_WRITE_LATENCY, "op" => op).record(took.as_secs_f64());
}

/// States the contract names get their own series; any other string the upstream
/// sends is counted as `other`, so a misbehaving upstream cannot grow the label set.
const KNOWN_STATES: [&str; 6] = ["PENDING", "RUNNING", "DONE", "SUCCESS", "FAILED", "FAILURE"];

/// The answer of `GET /metrics`: the recorder's events, then this daemon's levels.
/// `counts` is `None` when the store did not answer (then `jobwatch_store_up` is 0).
pub fn render(
    handle: Option<&PrometheusHandle>,
    counts: Option<&Counts>,
    upstreams: &[(&str, UpstreamHealth)],
) -> String {
    let health = &UpstreamHealth::combined(upstreams.iter().map(|(_, h)| h));
    let mut out = handle.map(|h| h.render()).unwrap_or_default();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let mut g = Levels(&mut out);
    g.one(
        "jobwatch_store_up",
        "1 when the store answered this scrape, 0 when it did not.",
        if counts.is_some() { 1.0 } else { 0.0 },
    );
    g.one(
        "jobwatch_upstream_allowed_rate",
        "Requests per second the budget allows now (lowered after 429s without Retry-After, then recovering).",
        health.allowed_rate,
    );
    g.one(
        "jobwatch_upstream_configured_rate",
        "upstream.max_requests_per_second.",
        health.configured_rate,
    );
    g.one(
        "jobwatch_upstream_paused",
        "1 while a 429/503 pause is in force: no request leaves before it ends.",
        if health.paused_until.is_some() {
            1.0
        } else {
            0.0
        },
    );
    // The budget keeps this total in fractions of a second, which the facade's
    // integer counters cannot: it is rendered from there, as a counter of this daemon.
    g.counter(
        "jobwatch_upstream_paused_seconds_total",
        "Seconds of global pause imposed by the upstream's rate-limit answers (429, or 503 with Retry-After).",
        health.paused_seconds_total,
    );
    g.one(
        "jobwatch_upstream_in_flight",
        "Status requests in flight now.",
        health.in_flight as f64,
    );
    g.one(
        "jobwatch_upstream_credentials_rejected",
        "1 while the upstream rejects our credentials (401/403) and polling is paused.",
        if health.credentials == Credentials::Rejected {
            1.0
        } else {
            0.0
        },
    );
    per_upstream(&mut g, upstreams);
    let Some(c) = counts else {
        return out;
    };

    let mut by_state: Vec<(&str, f64)> = KNOWN_STATES.iter().map(|s| (*s, 0.0)).collect();
    by_state.push(("none", 0.0));
    by_state.push(("other", 0.0));
    for (state, n) in &c.running_by_state {
        let label = match state.as_deref() {
            None => "none",
            Some(s) => KNOWN_STATES
                .iter()
                .find(|k| **k == s)
                .copied()
                .unwrap_or("other"),
        };
        if let Some(slot) = by_state.iter_mut().find(|(l, _)| *l == label) {
            slot.1 += *n as f64;
        }
    }
    g.labelled(
        "jobwatch_watches_running",
        "Running watches by the last state the upstream reported (none: no answer yet; other: a state the contract does not name).",
        "state",
        &by_state,
    );
    let by_outcome: Vec<(&str, f64)> = Outcome::ALL
        .iter()
        .map(|o| {
            let n = c
                .ended_by_outcome
                .iter()
                .filter(|(s, _)| s == o.as_str())
                .map(|(_, n)| *n)
                .sum::<i64>();
            (o.as_str(), n as f64)
        })
        .collect();
    g.labelled(
        "jobwatch_watches_ended",
        "Ended watches still kept (see store.retention), by outcome.",
        "outcome",
        &by_outcome,
    );
    g.one(
        "jobwatch_watches_overdue",
        "Running watches whose next poll is past due.",
        c.overdue as f64,
    );
    let delivery = |status: DeliveryStatus| {
        c.deliveries_by_status
            .iter()
            .filter(|(s, _)| s == status.as_str())
            .map(|(_, n)| *n)
            .sum::<i64>() as f64
    };
    let by_status: Vec<(&str, f64)> = DeliveryStatus::ALL
        .iter()
        .map(|s| (s.as_str(), delivery(*s)))
        .collect();
    g.labelled(
        "jobwatch_deliveries",
        "Webhook deliveries kept, by status.",
        "status",
        &by_status,
    );
    g.one(
        "jobwatch_delivery_backlog",
        "Webhook deliveries still to send (pending + retrying).",
        delivery(DeliveryStatus::Pending) + delivery(DeliveryStatus::Retrying),
    );
    out
}

/// The budget's levels of each upstream, labelled by its name (the unlabelled
/// series above are their sums, or any of them for the 0/1 ones).
fn per_upstream(g: &mut Levels<'_>, upstreams: &[(&str, UpstreamHealth)]) {
    type Level = fn(&UpstreamHealth) -> f64;
    let families: [(&str, &str, Level); 5] = [
        (
            "jobwatch_upstreams_allowed_rate",
            "Requests per second each upstream's budget allows now.",
            |h| h.allowed_rate,
        ),
        (
            "jobwatch_upstreams_configured_rate",
            "Each upstream's max_requests_per_second.",
            |h| h.configured_rate,
        ),
        (
            "jobwatch_upstreams_paused",
            "1 while an upstream's 429/503 pause is in force.",
            |h| f64::from(u8::from(h.paused_until.is_some())),
        ),
        (
            "jobwatch_upstreams_in_flight",
            "Status requests in flight now, per upstream.",
            |h| h.in_flight as f64,
        ),
        (
            "jobwatch_upstreams_credentials_rejected",
            "1 while an upstream rejects our credentials (401/403) and its polling is paused.",
            |h| f64::from(u8::from(h.credentials == Credentials::Rejected)),
        ),
    ];
    for (name, help, level) in families {
        let values: Vec<(&str, f64)> = upstreams.iter().map(|(n, h)| (*n, level(h))).collect();
        g.labelled(name, help, "upstream", &values);
    }
}

/// Writes scrape-time values in the text exposition format.
struct Levels<'a>(&'a mut String);

impl Levels<'_> {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        // Writing into a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.0, "{name} {value}\n");
    }

    fn counter(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.0, "{name} {value}\n");
    }

    fn labelled(&mut self, name: &str, help: &str, label: &str, values: &[(&str, f64)]) {
        self.header(name, help, "gauge");
        for (v, n) in values {
            let _ = writeln!(self.0, "{name}{{{label}=\"{}\"}} {n}", escape(v));
        }
        self.0.push('\n');
    }
}

/// A label value as the exposition format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> UpstreamHealth {
        UpstreamHealth {
            paused_until: None,
            credentials: Credentials::Ok,
            credentials_status: None,
            rate_limited_last_minute: 0,
            error_ratio_last_minute: 0.0,
            polls_per_second: 0.0,
            allowed_rate: 25.0,
            configured_rate: 50.0,
            share: 1.0,
            in_flight: 3,
            total_answers: 0,
            total_rate_limited: 0,
            total_errors: 0,
            paused_seconds_total: 2.5,
        }
    }

    #[test]
    fn levels_come_from_the_counts_with_every_label_present() {
        let counts = Counts {
            running_by_state: vec![
                (None, 2),
                (Some("RUNNING".into()), 5),
                (Some("PAUSED".into()), 1),
                (Some("WEIRD".into()), 1),
            ],
            ended_by_outcome: vec![("succeeded".into(), 7), ("failed".into(), 1)],
            running: 9,
            overdue: 4,
            oldest_running: None,
            deliveries_by_status: vec![
                ("pending".into(), 2),
                ("retrying".into(), 3),
                ("dead".into(), 1),
            ],
        };
        let text = render(
            None,
            Some(&counts),
            &[("vector", health()), ("openai", health())],
        );
        for line in [
            "jobwatch_store_up 1",
            "jobwatch_upstream_allowed_rate 50",
            "jobwatch_upstream_in_flight 6",
            "jobwatch_upstream_paused_seconds_total 5",
            "jobwatch_upstreams_allowed_rate{upstream=\"vector\"} 25",
            "jobwatch_upstreams_in_flight{upstream=\"openai\"} 3",
            "# TYPE jobwatch_upstream_paused_seconds_total counter",
            "jobwatch_watches_running{state=\"none\"} 2",
            "jobwatch_watches_running{state=\"RUNNING\"} 5",
            "jobwatch_watches_running{state=\"other\"} 2",
            "jobwatch_watches_running{state=\"PENDING\"} 0",
            "jobwatch_watches_ended{outcome=\"succeeded\"} 7",
            "jobwatch_watches_ended{outcome=\"cancelled\"} 0",
            "jobwatch_watches_overdue 4",
            "jobwatch_deliveries{status=\"dead\"} 1",
            "jobwatch_deliveries{status=\"gone\"} 0",
            "jobwatch_delivery_backlog 5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn a_store_that_does_not_answer_shows_as_down_without_levels() {
        let text = render(None, None, &[("vector", health())]);
        assert!(text.lines().any(|l| l == "jobwatch_store_up 0"), "{text}");
        assert!(!text.contains("jobwatch_watches_running"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
