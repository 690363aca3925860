//! The bench's webhook receiver: verifies each delivery's signature, marks its watch
//! delivered, and keeps two latencies per first delivery: from the simulated job's
//! end (`data.upstream.ended`) to the arrival, and from the poll that decided the
//! outcome (`data.last_poll_at`) to the arrival, which is the part beyond the cadence.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::webhook::sign::SigningSecret;

pub struct Receiver {
    secret: SigningSecret,
    /// Ids are `{prefix}{index}`: the index says which watch.
    prefix: String,
    tally: Mutex<Tally>,
}

#[derive(Debug, Default, Clone)]
pub struct Tally {
    seen: Vec<bool>,
    pub distinct: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub first_problem: Option<String>,
    pub by_type: BTreeMap<String, u64>,
    /// Milliseconds from the job's end upstream to the webhook's arrival.
    pub from_job_end_ms: Vec<f64>,
    /// Milliseconds from the deciding poll to the webhook's arrival.
    pub beyond_cadence_ms: Vec<f64>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    event_type: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    id: String,
    last_poll_at: Option<String>,
    upstream: Upstream,
}

#[derive(Deserialize)]
struct Upstream {
    ended: Option<String>,
}

impl Receiver {
    /// Serve on a loopback port until `shutdown`; returns the receiver and its URL.
    pub async fn start(
        secret: SigningSecret,
        prefix: &str,
        expected: usize,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Arc<Receiver>, String)> {
        let receiver = Arc::new(Receiver {
            secret,
            prefix: prefix.to_string(),
            tally: Mutex::new(Tally {
                seen: vec![false; expected],
                ..Tally::default()
            }),
        });
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the bench's webhook receiver stopped");
            }
        });
        Ok((receiver, url))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches delivered at least once so far.
    pub fn delivered(&self) -> u64 {
        self.lock().distinct
    }

    pub fn snapshot(&self) -> Tally {
        self.lock().clone()
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        id.strip_prefix(&self.prefix)?.parse().ok()
    }
}

fn rfc3339(s: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(SystemTime::from)
}

fn millis_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -(e.duration().as_secs_f64() * 1000.0),
    }
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let arrived = SystemTime::now();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified = match (
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
        header("webhook-signature"),
    ) {
        (Some(id), Some(ts), Some(sig)) => r.secret.verify(id, ts, &body, sig),
        _ => false,
    };
    let event: Option<Event> = serde_json::from_slice(&body).ok();
    let mut t = r.lock();
    let (event, index) = match (verified, event) {
        (true, Some(e)) => match r.index_of(&e.data.id).filter(|i| *i < t.seen.len()) {
            Some(i) => (e, i),
            None => {
                t.rejected += 1;
                t.first_problem
                    .get_or_insert_with(|| format!("a webhook for an unknown id {:?}", e.data.id));
                return StatusCode::BAD_REQUEST;
            }
        },
        (false, _) => {
            t.rejected += 1;
            t.first_problem
                .get_or_insert_with(|| "a webhook whose signature does not verify".into());
            return StatusCode::BAD_REQUEST;
        }
        (true, None) => {
            t.rejected += 1;
            t.first_problem
                .get_or_insert_with(|| "a webhook whose body is not an event".into());
            return StatusCode::BAD_REQUEST;
        }
    };
    if std::mem::replace(&mut t.seen[index], true) {
        // At least once: a redelivery is fine, but only the first one is timed.
        t.duplicates += 1;
        return StatusCode::NO_CONTENT;
    }
    t.distinct += 1;
    *t.by_type.entry(event.event_type).or_default() += 1;
    if let Some(end) = event.data.upstream.ended.as_deref().and_then(rfc3339) {
        t.from_job_end_ms.push(millis_between(end, arrived));
    }
    if let Some(polled) = event.data.last_poll_at.as_deref().and_then(rfc3339) {
        t.beyond_cadence_ms.push(millis_between(polled, arrived));
    }
    StatusCode::NO_CONTENT
}

/// Unix milliseconds of `t`.
pub fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}
