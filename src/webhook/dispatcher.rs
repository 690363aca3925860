//! Delivers queued events: claims due deliveries from the store, sends each with
//! its own fresh signature, records every attempt, and schedules the next one.
//!
//! Bounded twice: `webhooks.max_in_flight` attempts at once overall, and at most a
//! quarter of those to any one URL, so a slow or dead receiver holds a few slots and
//! never the others. Redirects are not followed; only 2xx counts as delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use rand::Rng;
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sign::SigningSecret;
use super::ssrf;
use crate::config::WebhookSettings;
use crate::store::writer::{Signals, Write, Writer};
use crate::store::{
    now_ms, AttemptRecord, AttemptResult, DeliveryStatus, DueDelivery, DynStore, Millis, Target,
};
use crate::upstream::retry_after;

/// How much of a receiver's answer is kept with the attempt.
const RESPONSE_KEPT: usize = 4096;

pub struct Dispatcher {
    store: DynStore,
    writer: Writer,
    signals: Arc<Signals>,
    schedule: Vec<Duration>,
    jitter: f64,
    max_retry_after: Duration,
    /// For configured endpoints (trusted) and, when allowed, private per-watch URLs.
    trusted: reqwest::Client,
    /// For per-watch URLs: resolves only to public addresses.
    public: reqwest::Client,
    allow_private: bool,
    watch_secret: Option<SigningSecret>,
    endpoint_secrets: HashMap<String, SigningSecret>,
    slots: Arc<Semaphore>,
    /// Claimed deliveries not yet finished (sending or waiting for a slot): the
    /// claim never runs further ahead of the senders than a few rounds.
    outstanding: Arc<std::sync::atomic::AtomicUsize>,
    max_outstanding: usize,
    per_url_cap: usize,
    per_url: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// A claimed delivery is ours for this long (`store.lease`, longer than an
    /// attempt's timeout); an attempt is only sent if it can end within it.
    lease: Duration,
    request_timeout: Duration,
}

impl Dispatcher {
    pub fn new(
        settings: &WebhookSettings,
        lease: Duration,
        store: DynStore,
        writer: Writer,
        signals: Arc<Signals>,
    ) -> reqwest::Result<Dispatcher> {
        let base = || {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(settings.request_timeout)
                .user_agent(concat!("jobwatch/", env!("CARGO_PKG_VERSION")))
        };
        Ok(Dispatcher {
            store,
            writer,
            signals,
            schedule: settings.retry_schedule.clone(),
            jitter: settings.jitter,
            max_retry_after: settings.max_retry_after,
            trusted: base().build()?,
            public: base()
                .no_proxy()
                .dns_resolver(Arc::new(ssrf::PublicOnlyResolver))
                .build()?,
            allow_private: settings.allow_private_targets,
            watch_secret: settings.signing_secret.clone(),
            endpoint_secrets: settings
                .endpoints
                .iter()
                .map(|e| (e.url.to_string(), e.secret.clone()))
                .collect(),
            slots: Arc::new(Semaphore::new(settings.max_in_flight)),
            outstanding: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_outstanding: settings.max_in_flight * 4,
            per_url_cap: (settings.max_in_flight / 4).max(1),
            per_url: Mutex::new(HashMap::new()),
            lease,
            request_timeout: settings.request_timeout,
        })
    }

    fn url_slot(&self, url: &str) -> Arc<Semaphore> {
        let mut map = self.per_url.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            // Forget idle URLs now and then so the map stays small.
            map.retain(|_, s| s.available_permits() < self.per_url_cap);
        }
        map.entry(url.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_url_cap)))
            .clone()
    }

    /// One step: claim what is due, up to the free slots, and start sending it.
    /// Returns how many deliveries were claimed.
    pub async fn step(
        self: &Arc<Self>,
        now: Millis,
        tasks: &TaskTracker,
    ) -> crate::store::Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        let free = self
            .max_outstanding
            .saturating_sub(self.outstanding.load(Relaxed));
        if free == 0 {
            return Ok(0);
        }
        let lease_until = now + self.lease.as_millis() as Millis;
        let due = self
            .store
            .claim_due_deliveries(now, free as u32, lease_until)
            .await?;
        let n = due.len();
        for d in due {
            let this = Arc::clone(self);
            self.outstanding.fetch_add(1, Relaxed);
            tasks.spawn(async move {
                let _outstanding = Outstanding(this.outstanding.clone());
                let url_slot = this.url_slot(&d.delivery.url);
                let (Ok(_u), Ok(_g)) = (url_slot.acquire_owned().await, this.slots.clone().acquire_owned().await) else {
                    return;
                };
                // A claim that ran out while it waited for a slot may be another
                // replica's now: leave it to be claimed again rather than send
                // one webhook-id twice at once.
                if now_ms() + this.request_timeout.as_millis() as Millis > lease_until {
                    return;
                }
                let result = this.attempt(&d).await;
                if result.next == DeliveryStatus::Gone {
                    if let Err(e) = this.store.stop_deliveries_to(&d.delivery.url).await {
                        tracing::warn!(error = %e, "could not stop the other deliveries to a gone endpoint");
                    }
                }
                this.writer.send(Write::Attempt(result)).await;
            });
        }
        Ok(n)
    }

    /// Send one attempt and decide what follows it.
    #[tracing::instrument(level = "debug", skip_all, fields(delivery = d.delivery.did, webhook_id = %d.delivery.webhook_id))]
    pub async fn attempt(&self, d: &DueDelivery) -> AttemptResult {
        let started = Instant::now();
        let at = now_ms();
        let outcome = self.send(d).await;
        let duration_ms = started.elapsed().as_millis() as i64;
        let attempt_no = d.delivery.attempts as usize + 1;
        let (status_code, error, response, retry_after) = match outcome {
            Sent::Answered {
                status,
                body,
                retry_after,
            } => (Some(status as i64), None, Some(body), retry_after),
            Sent::Failed(e) => (None, Some(e), None, None),
        };
        let next = match status_code {
            Some(200..=299) => DeliveryStatus::Delivered,
            Some(410) => DeliveryStatus::Gone,
            _ if attempt_no > self.schedule.len() => DeliveryStatus::Dead,
            _ => DeliveryStatus::Retrying,
        };
        crate::metrics::delivery_attempted(next, started.elapsed());
        let next_attempt_at = (next == DeliveryStatus::Retrying).then(|| {
            let delay = match (status_code, retry_after) {
                (Some(429 | 503), Some(ra)) => ra.min(self.max_retry_after),
                _ => jittered(self.schedule[attempt_no - 1], self.jitter),
            };
            now_ms() + delay.as_millis() as Millis
        });
        let error = error.or_else(|| match status_code {
            Some(s @ 300..=399) => Some(format!("HTTP {s}: redirects are not followed")),
            Some(s) if !(200..=299).contains(&s) => Some(format!("HTTP {s}")),
            _ => None,
        });
        if next == DeliveryStatus::Dead {
            tracing::warn!(url = %d.delivery.url, attempts = attempt_no, "delivery is dead: its retry schedule ran out");
        }
        AttemptResult {
            did: d.delivery.did,
            attempt: AttemptRecord {
                at,
                status_code,
                error,
                duration_ms,
                response,
            },
            next,
            next_attempt_at,
        }
    }

    async fn send(&self, d: &DueDelivery) -> Sent {
        let url = &d.delivery.url;
        let (secret, client) = match d.delivery.target {
            Target::Watch => {
                let Some(secret) = &self.watch_secret else {
                    return Sent::Failed(
                        "webhooks.signing_secret is not set; per-watch deliveries cannot be signed"
                            .into(),
                    );
                };
                if self.allow_private {
                    (secret, &self.trusted)
                } else {
                    match url::Url::parse(url)
                        .map_err(|e| e.to_string())
                        .and_then(|u| ssrf::check_url(&u).map_err(|e| e.to_string()))
                    {
                        Ok(()) => (secret, &self.public),
                        Err(e) => return Sent::Failed(format!("refused: {e}")),
                    }
                }
            }
            Target::Endpoint => match self.endpoint_secrets.get(url) {
                Some(secret) => (secret, &self.trusted),
                None => {
                    return Sent::Failed("this endpoint is no longer in webhooks.endpoints".into())
                }
            },
        };
        // Each attempt is signed anew with its own timestamp.
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let signature = secret.sign(&d.delivery.webhook_id, timestamp, d.body.as_bytes());
        let request = client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", &d.delivery.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(d.body.clone());
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after::parse(v, SystemTime::now()));
                let body = read_prefix(response).await;
                Sent::Answered {
                    status,
                    body,
                    retry_after,
                }
            }
            Err(e) => Sent::Failed(crate::upstream::describe(&e.without_url())),
        }
    }

    /// Run steps until `shutdown`. Attempts already sent finish on `tasks`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, tasks: TaskTracker) {
        loop {
            let claimed = match self.step(now_ms(), &tasks).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "dispatcher step failed; retrying");
                    0
                }
            };
            let room =
                self.outstanding.load(std::sync::atomic::Ordering::Relaxed) < self.max_outstanding;
            if claimed > 0 && room {
                tokio::task::yield_now().await;
                continue;
            }
            let wait = match self.store.next_delivery_at().await {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).clamp(10, 1000) as u64),
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.signals.deliveries.notified() => {}
            }
        }
    }
}

/// Counts a claimed delivery as outstanding until its task ends, however it ends.
struct Outstanding(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

enum Sent {
    Answered {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    Failed(String),
}

/// The first few KiB of an answer; the rest is not read.
async fn read_prefix(response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = RESPONSE_KEPT - kept.len();
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if kept.len() >= RESPONSE_KEPT {
            break;
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn jittered(d: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 || d.is_zero() {
        return d;
    }
    d.mul_f64(1.0 + rand::rng().random_range(-jitter..=jitter))
}
