//! The one budget every watch shares with the upstream: a steady rate with a burst
//! (`governor`), a bound on requests in flight, the global pause that a 429 (or a
//! 503 with Retry-After) imposes, and the credentials gate that a 401/403 closes.
//!
//! Every poll passes [`Budget::acquire`] right before it is sent and reports its
//! answer to [`Budget::observe`]; nothing else may talk to the upstream.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::upstream::PollAnswer;

#[derive(Debug, Clone)]
pub struct BudgetSettings {
    pub max_requests_per_second: f64,
    pub burst: u32,
    pub max_in_flight: usize,
    pub min_retry_after: Duration,
    pub max_retry_after: Duration,
    /// While credentials are bad, one probe request is let through this often.
    pub auth_probe_interval: Duration,
    /// After a 429 without Retry-After the rate is halved; it then grows back
    /// by a quarter every `rate_recovery_step` without another one.
    pub rate_recovery_step: Duration,
}

/// Seconds of history kept for the rates and ratios in status.
const WINDOW_SECS: usize = 60;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    answers: u32,
    errors: u32,
    limited: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    /// No answer yet.
    Unknown,
    Ok,
    /// The upstream answered 401 or 403; polling is paused and probed.
    Rejected,
}

struct Inner {
    paused_until: Option<Instant>,
    rate: f64,
    limiter: Arc<DefaultDirectRateLimiter>,
    last_rate_change: Instant,
    bare_429_streak: u32,
    credentials: Credentials,
    credentials_status: Option<u16>,
    probing: bool,
    next_probe_at: Instant,
    window: [Bucket; WINDOW_SECS],
    total_answers: u64,
    total_limited: u64,
    total_errors: u64,
    paused_ms_total: u64,
}

pub struct Budget {
    settings: BudgetSettings,
    slots: Semaphore,
    inner: Mutex<Inner>,
    changed: Notify,
    started: Instant,
}

/// Permission to send one request now. Dropping it frees the in-flight slot.
pub struct Slot<'a> {
    budget: &'a Budget,
    probe: bool,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.probe {
            // A probe that never reported (cancelled) must not block the next one.
            let mut inner = self.budget.lock();
            if inner.probing {
                inner.probing = false;
                drop(inner);
                self.budget.changed.notify_waiters();
            }
        }
    }
}

fn limiter(rate: f64, burst: u32) -> Arc<DefaultDirectRateLimiter> {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    Arc::new(RateLimiter::direct(quota))
}

enum Gate {
    Open,
    Probe,
    Wait(Instant),
}

impl Budget {
    pub fn new(settings: BudgetSettings) -> Budget {
        let now = Instant::now();
        Budget {
            slots: Semaphore::new(settings.max_in_flight),
            inner: Mutex::new(Inner {
                paused_until: None,
                rate: settings.max_requests_per_second,
                limiter: limiter(settings.max_requests_per_second, settings.burst),
                last_rate_change: now,
                bare_429_streak: 0,
                credentials: Credentials::Unknown,
                credentials_status: None,
                probing: false,
                next_probe_at: now,
                window: [Bucket::default(); WINDOW_SECS],
                total_answers: 0,
                total_limited: 0,
                total_errors: 0,
                paused_ms_total: 0,
            }),
            changed: Notify::new(),
            settings,
            started: now,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain counters behind: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gate(&self, inner: &mut Inner, now: Instant, probe_held: bool) -> Gate {
        if let Some(until) = inner.paused_until {
            if until > now {
                return Gate::Wait(until);
            }
        }
        if inner.credentials == Credentials::Rejected {
            if probe_held {
                return Gate::Probe;
            }
            if !inner.probing && now >= inner.next_probe_at {
                inner.probing = true;
                return Gate::Probe;
            }
            return Gate::Wait(inner.next_probe_at.max(now + Duration::from_millis(250)));
        }
        Gate::Open
    }

    /// Wait until a request may leave: an in-flight slot, no pause, credentials not
    /// known bad (or this request is the probe), and a token of the rate.
    pub async fn acquire(&self) -> Slot<'_> {
        // The semaphore is never closed, so acquire cannot fail.
        let permit = match self.slots.acquire().await {
            Ok(p) => p,
            Err(_) => unreachable!("the in-flight semaphore is never closed"),
        };
        let mut slot = Slot {
            budget: self,
            probe: false,
            _permit: permit,
        };
        loop {
            let waited = {
                let mut inner = self.lock();
                match self.gate(&mut inner, Instant::now(), slot.probe) {
                    Gate::Open => None,
                    Gate::Probe => {
                        slot.probe = true;
                        None
                    }
                    Gate::Wait(until) => Some(until),
                }
            };
            if let Some(until) = waited {
                let notified = self.changed.notified();
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = notified => {}
                }
                continue;
            }
            let limiter = self.lock().limiter.clone();
            limiter.until_ready().await;
            // A pause may have begun while we waited for the token: look again,
            // with no await between this check and the send.
            let mut inner = self.lock();
            match self.gate(&mut inner, Instant::now(), slot.probe) {
                Gate::Open => return slot,
                Gate::Probe => {
                    slot.probe = true;
                    return slot;
                }
                Gate::Wait(_) => continue,
            }
        }
    }

    /// Learn from one answer: pauses, rate, credentials, statistics.
    pub fn observe(&self, slot: &mut Slot<'_>, answer: &PollAnswer) {
        let now = Instant::now();
        let s = &self.settings;
        let mut inner = self.lock();
        let second = now.duration_since(self.started).as_secs();
        let bucket = &mut inner.window[(second as usize) % WINDOW_SECS];
        if bucket.second != second {
            *bucket = Bucket {
                second,
                ..Bucket::default()
            };
        }
        bucket.answers += 1;
        inner.total_answers += 1;
        let was_probe = std::mem::take(&mut slot.probe);
        if was_probe {
            inner.probing = false;
        }
        let mut wake = was_probe;
        match answer {
            PollAnswer::RateLimited { retry_after, .. } => {
                inner.window[(second as usize) % WINDOW_SECS].limited += 1;
                inner.total_limited += 1;
                let pause = match retry_after {
                    Some(d) => {
                        inner.bare_429_streak = 0;
                        (*d).clamp(s.min_retry_after, s.max_retry_after)
                    }
                    None => {
                        // No hint: back off globally and lower the rate.
                        inner.bare_429_streak += 1;
                        let floor = s.max_requests_per_second / 20.0;
                        let rate = (inner.rate / 2.0).max(floor);
                        self.set_rate(&mut inner, rate, now);
                        let exp = inner.bare_429_streak.saturating_sub(1).min(16);
                        s.min_retry_after
                            .saturating_mul(1 << exp)
                            .min(s.max_retry_after)
                    }
                };
                let until = now + pause;
                if inner.paused_until.is_none_or(|p| p < until) {
                    let counted_from = inner.paused_until.filter(|p| *p > now).unwrap_or(now);
                    inner.paused_ms_total += until.duration_since(counted_from).as_millis() as u64;
                    inner.paused_until = Some(until);
                }
            }
            PollAnswer::Unauthorized { status } => {
                inner.credentials = Credentials::Rejected;
                inner.credentials_status = Some(*status);
                inner.next_probe_at = now + s.auth_probe_interval;
            }
            PollAnswer::Transient { .. } => {
                inner.window[(second as usize) % WINDOW_SECS].errors += 1;
                inner.total_errors += 1;
                if was_probe {
                    // Says nothing about the credentials: probe again later.
                    inner.next_probe_at = now + s.auth_probe_interval;
                }
            }
            PollAnswer::Status(_) | PollAnswer::NotFound | PollAnswer::Rejected { .. } => {
                if inner.credentials != Credentials::Ok {
                    wake = true;
                    inner.credentials = Credentials::Ok;
                    inner.credentials_status = None;
                }
                inner.bare_429_streak = 0;
                if inner.rate < s.max_requests_per_second
                    && now.duration_since(inner.last_rate_change) >= s.rate_recovery_step
                {
                    let rate = (inner.rate * 1.25).min(s.max_requests_per_second);
                    self.set_rate(&mut inner, rate, now);
                }
            }
        }
        drop(inner);
        if wake {
            self.changed.notify_waiters();
        }
    }

    fn set_rate(&self, inner: &mut Inner, rate: f64, now: Instant) {
        if (rate - inner.rate).abs() > f64::EPSILON {
            inner.rate = rate;
            inner.limiter = limiter(rate, self.settings.burst.min(rate.ceil().max(1.0) as u32));
            inner.last_rate_change = now;
        }
    }

    /// Are the upstream credentials known bad?
    pub fn credentials_rejected(&self) -> bool {
        self.lock().credentials == Credentials::Rejected
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused_until.is_some_and(|p| p > Instant::now())
    }

    pub fn health(&self) -> UpstreamHealth {
        let now = Instant::now();
        let inner = self.lock();
        let second = now.duration_since(self.started).as_secs();
        let recent: Vec<&Bucket> = inner
            .window
            .iter()
            .filter(|b| b.answers > 0 && second.saturating_sub(b.second) < WINDOW_SECS as u64)
            .collect();
        let answers: u64 = recent.iter().map(|b| b.answers as u64).sum();
        let errors: u64 = recent.iter().map(|b| b.errors as u64).sum();
        let limited: u64 = recent.iter().map(|b| b.limited as u64).sum();
        let span = (second + 1).min(WINDOW_SECS as u64) as f64;
        let paused_until = inner.paused_until.filter(|p| *p > now).map(|p| {
            let wall = SystemTime::now() + p.duration_since(now);
            chrono::DateTime::<chrono::Utc>::from(wall)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        });
        UpstreamHealth {
            paused_until,
            credentials: inner.credentials,
            credentials_status: inner.credentials_status,
            rate_limited_last_minute: limited,
            error_ratio_last_minute: if answers == 0 {
                0.0
            } else {
                errors as f64 / answers as f64
            },
            polls_per_second: answers as f64 / span,
            allowed_rate: inner.rate,
            configured_rate: self.settings.max_requests_per_second,
            in_flight: self.settings.max_in_flight - self.slots.available_permits(),
            total_answers: inner.total_answers,
            total_rate_limited: inner.total_limited,
            total_errors: inner.total_errors,
            paused_seconds_total: inner.paused_ms_total as f64 / 1000.0,
        }
    }
}

/// Upstream health as `GET /v1/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamHealth {
    /// Set while a 429/503 pause is in force: no request leaves before it.
    pub paused_until: Option<String>,
    pub credentials: Credentials,
    pub credentials_status: Option<u16>,
    pub rate_limited_last_minute: u64,
    pub error_ratio_last_minute: f64,
    pub polls_per_second: f64,
    pub allowed_rate: f64,
    pub configured_rate: f64,
    pub in_flight: usize,
    pub total_answers: u64,
    pub total_rate_limited: u64,
    pub total_errors: u64,
    pub paused_seconds_total: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BudgetSettings {
        BudgetSettings {
            max_requests_per_second: 1000.0,
            burst: 10,
            max_in_flight: 4,
            min_retry_after: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(5),
            auth_probe_interval: Duration::from_millis(200),
            rate_recovery_step: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn a_429_with_retry_after_closes_the_gate_until_then() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        b.observe(
            &mut slot,
            &PollAnswer::RateLimited {
                status: 429,
                retry_after: Some(Duration::from_millis(300)),
            },
        );
        drop(slot);
        assert!(b.is_paused());
        let t = Instant::now();
        let _slot = b.acquire().await;
        assert!(
            t.elapsed() >= Duration::from_millis(290),
            "waited {:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn retry_after_is_clamped() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        b.observe(
            &mut slot,
            &PollAnswer::RateLimited {
                status: 429,
                retry_after: Some(Duration::from_secs(3600)),
            },
        );
        let until = b.lock().paused_until.unwrap();
        assert!(until <= Instant::now() + Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_bare_429_halves_the_rate_which_then_recovers() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        b.observe(
            &mut slot,
            &PollAnswer::RateLimited {
                status: 429,
                retry_after: None,
            },
        );
        assert_eq!(b.health().allowed_rate, 500.0);
        drop(slot);
        let mut rates = vec![];
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            let mut slot = b.acquire().await;
            b.observe(&mut slot, &PollAnswer::NotFound);
            rates.push(b.health().allowed_rate);
        }
        assert!(rates.windows(2).all(|w| w[1] >= w[0]), "{rates:?}");
        assert_eq!(*rates.last().unwrap(), 1000.0, "{rates:?}");
    }

    #[tokio::test]
    async fn bad_credentials_let_one_probe_through_at_a_time() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        b.observe(&mut slot, &PollAnswer::Unauthorized { status: 401 });
        drop(slot);
        assert!(b.credentials_rejected());
        let t = Instant::now();
        let mut probe = b.acquire().await;
        assert!(t.elapsed() >= Duration::from_millis(190));
        assert!(probe.probe);
        // While the probe is out, nobody else gets through.
        let blocked = tokio::time::timeout(Duration::from_millis(300), b.acquire()).await;
        assert!(blocked.is_err());
        b.observe(&mut probe, &PollAnswer::Status(Default::default()));
        drop(probe);
        assert!(!b.credentials_rejected());
        let _ = tokio::time::timeout(Duration::from_millis(50), b.acquire())
            .await
            .expect("open again");
    }
}
