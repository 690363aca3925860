//! The one budget every watch shares with the upstream: a steady rate with a burst
//! (`governor`), a bound on requests in flight, the global pause that a 429 (or a
//! 503 with Retry-After) imposes, and the credentials gate that a 401/403 closes.
//!
//! Every poll passes [`Budget::acquire`] right before it is sent and reports its
//! answer to [`Budget::observe`]; nothing else may talk to the upstream.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::upstream::{retry_after, PollAnswer};

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

/// While a probe is out, the others look again this often (a probe that gets no
/// answer at all is also noticed by its slot being dropped).
const PROBE_RECHECK: Duration = Duration::from_millis(250);

/// governor on tokio's clock: the rate, the pauses and the probes then run on one
/// clock, and tests can drive all of them with `tokio::time::pause`.
#[derive(Debug, Clone)]
struct TokioClock {
    base: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.base)
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    answers: u32,
    errors: u32,
    limited: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    limiter: Limiter,
    last_rate_change: Instant,
    /// When the rate was last lowered for a bare 429: the 429s of requests sent
    /// before it are echoes of the same overload and do not lower it again.
    last_backoff: Option<Instant>,
    bare_429_streak: u32,
    credentials: Credentials,
    credentials_status: Option<u16>,
    /// When the credentials were last found bad: only an answer to a request sent
    /// after it says they work again.
    rejected_at: Instant,
    probing: bool,
    next_probe_at: Instant,
    window: [Bucket; WINDOW_SECS],
    /// This replica's part of the upstream's budget (its rate, burst and requests
    /// in flight): 1 alone; 1/N of N live replicas on a shared store; 0 while it
    /// has not yet been seen by the others, or cannot reach the store.
    share: f64,
    in_flight_cap: usize,
    /// What other replicas must hear of, taken by the replica loop.
    news: News,
    total_answers: u64,
    total_limited: u64,
    total_errors: u64,
    paused_ms_total: u64,
}

pub struct Budget {
    settings: BudgetSettings,
    clock: TokioClock,
    slots: Semaphore,
    /// One waiter at a time asks for a token, in arrival order; the others queue
    /// here instead of all waking up for every token.
    turn: tokio::sync::Mutex<()>,
    inner: Mutex<Inner>,
    changed: Notify,
    started: Instant,
    /// Requests let go and not yet dropped (the semaphore also counts the waiters).
    sent: AtomicUsize,
    /// The share caps requests in flight below the semaphore's: a finished request
    /// then wakes the waiters (only then: it costs a wake-up per request).
    capped: AtomicBool,
    /// Rung when `observe` has news for the other replicas.
    news_ready: Notify,
    /// The allowed rate times the share, as f64 bits, kept beside `inner`'s: the
    /// poller asks for it after every finished poll, without taking the lock.
    effective: AtomicU64,
}

/// What this replica learned that the others must hear of (issue 18): a pause the
/// upstream asked for, credentials found bad or good again.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct News {
    pub paused_for: Option<Duration>,
    pub rejected: Option<u16>,
    pub credentials_ok: bool,
}

/// What the other replicas of a shared store say of one upstream, for [`Budget::apply_shared`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shared {
    /// This replica's part of the budget.
    pub share: f64,
    /// The rest of a pause some replica was asked for.
    pub paused_for: Option<Duration>,
    /// Some replica found the credentials bad after the last that found them good.
    pub rejected: Option<u16>,
    /// Some replica found them good after the last that found them bad.
    pub credentials_ok: bool,
    /// The lowest allowed-rate factor (after bare 429s) of the live replicas.
    pub rate_factor: f64,
}

/// Permission to send one request now. Dropping it frees the in-flight slot.
pub struct Slot<'a> {
    budget: &'a Budget,
    probe: bool,
    /// Whether the request was let go (and so counts as in flight).
    sent: bool,
    /// When the request was let go: tells a fresh answer from an echo of an older state.
    issued: Instant,
    _permit: SemaphorePermit<'a>,
}

impl Slot<'_> {
    /// Is this request the one probe that checks bad credentials?
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.sent {
            self.budget.sent.fetch_sub(1, Ordering::Relaxed);
            if self.budget.capped.load(Ordering::Relaxed) {
                self.budget.changed.notify_waiters();
            }
        }
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

/// A limiter of `rate` per second with `burst`; `full` says whether the burst is
/// available at once (at start) or must accrue (after a rate change, so that a
/// change never hands out an extra burst).
fn limiter(rate: f64, burst: u32, clock: &TokioClock, full: bool) -> Limiter {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    let l = RateLimiter::direct_with_clock(quota, clock.clone());
    if !full {
        // A fresh limiter has its whole burst: spend it.
        let _ = l.check_n(burst);
    }
    l
}

enum Gate {
    Open,
    /// Credentials are bad and this request may be the probe.
    Probe,
    Wait(Instant),
}

impl Budget {
    pub fn new(settings: BudgetSettings) -> Budget {
        let now = Instant::now();
        let clock = TokioClock { base: now };
        Budget {
            slots: Semaphore::new(settings.max_in_flight),
            turn: tokio::sync::Mutex::new(()),
            inner: Mutex::new(Inner {
                paused_until: None,
                rate: settings.max_requests_per_second,
                limiter: limiter(
                    settings.max_requests_per_second,
                    settings.burst,
                    &clock,
                    true,
                ),
                last_rate_change: now,
                last_backoff: None,
                bare_429_streak: 0,
                credentials: Credentials::Unknown,
                credentials_status: None,
                rejected_at: now,
                probing: false,
                next_probe_at: now,
                window: [Bucket::default(); WINDOW_SECS],
                share: 1.0,
                in_flight_cap: settings.max_in_flight,
                news: News::default(),
                total_answers: 0,
                total_limited: 0,
                total_errors: 0,
                paused_ms_total: 0,
            }),
            changed: Notify::new(),
            sent: AtomicUsize::new(0),
            capped: AtomicBool::new(false),
            news_ready: Notify::new(),
            effective: AtomicU64::new(settings.max_requests_per_second.to_bits()),
            clock,
            settings,
            started: now,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain counters behind: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gate(&self, inner: &Inner, now: Instant) -> Gate {
        if inner.share <= 0.0 || self.sent.load(Ordering::Relaxed) >= inner.in_flight_cap {
            // Not this replica's turn yet, or its part of the requests in flight is
            // out (a finished one wakes us; the recheck bounds a missed wake-up).
            return Gate::Wait(now + PROBE_RECHECK);
        }
        if let Some(until) = inner.paused_until {
            if until > now {
                return Gate::Wait(until);
            }
        }
        if inner.credentials == Credentials::Rejected {
            if inner.probing {
                return Gate::Wait(now + PROBE_RECHECK);
            }
            if now >= inner.next_probe_at {
                return Gate::Probe;
            }
            return Gate::Wait(inner.next_probe_at);
        }
        Gate::Open
    }

    /// Wait until a request may leave: an in-flight slot, no pause, credentials not
    /// known bad (or this request is the probe), and a token of the rate. The gate
    /// and the token are checked together under one lock, and the caller sends
    /// right away: a pause that began while we waited holds this request too.
    pub async fn acquire(&self) -> Slot<'_> {
        // The semaphore is never closed, so acquire cannot fail.
        let permit = match self.slots.acquire().await {
            Ok(p) => p,
            Err(_) => unreachable!("the in-flight semaphore is never closed"),
        };
        let mut slot = Slot {
            budget: self,
            probe: false,
            sent: false,
            issued: Instant::now(),
            _permit: permit,
        };
        let _turn = self.turn.lock().await;
        loop {
            // Registered before the state is read, so no change can slip between.
            let changed = self.changed.notified();
            let until = {
                let mut inner = self.lock();
                let now = Instant::now();
                match self.gate(&inner, now) {
                    Gate::Wait(until) => until,
                    gate => match inner.limiter.check() {
                        Ok(()) => {
                            if matches!(gate, Gate::Probe) {
                                inner.probing = true;
                                slot.probe = true;
                            }
                            slot.issued = now;
                            slot.sent = true;
                            self.sent.fetch_add(1, Ordering::Relaxed);
                            return slot;
                        }
                        Err(not_until) => now + not_until.wait_time_from(self.clock.now()),
                    },
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = changed => {}
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
                        Some(retry_after::clamp(*d, s.min_retry_after, s.max_retry_after))
                    }
                    // Sent before we last backed off: the same overload, already answered.
                    None if inner.last_backoff.is_some_and(|at| slot.issued < at) => None,
                    None => {
                        // No hint: back off globally and lower the rate.
                        inner.bare_429_streak += 1;
                        inner.last_backoff = Some(now);
                        let floor = s.max_requests_per_second / 20.0;
                        let rate = (inner.rate / 2.0).max(floor);
                        wake |= self.set_rate(&mut inner, rate, now);
                        let exp = inner.bare_429_streak.saturating_sub(1).min(16);
                        Some(
                            s.min_retry_after
                                .saturating_mul(1 << exp)
                                .min(s.max_retry_after),
                        )
                    }
                };
                if let Some(pause) = pause {
                    inner.news.paused_for =
                        Some(inner.news.paused_for.unwrap_or_default().max(pause));
                    self.news_ready.notify_one();
                    let until = now + pause;
                    if inner.paused_until.is_none_or(|p| p < until) {
                        let counted_from = inner.paused_until.filter(|p| *p > now).unwrap_or(now);
                        inner.paused_ms_total +=
                            until.duration_since(counted_from).as_millis() as u64;
                        inner.paused_until = Some(until);
                    }
                }
            }
            PollAnswer::Unauthorized { status } => {
                if inner.credentials != Credentials::Rejected {
                    inner.rejected_at = now;
                    inner.news.rejected = Some(*status);
                    inner.news.credentials_ok = false;
                    self.news_ready.notify_one();
                }
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
                // An answer to a request sent before the credentials went bad says
                // nothing about them now.
                let fresh = was_probe || slot.issued >= inner.rejected_at;
                if inner.credentials != Credentials::Ok
                    && (inner.credentials == Credentials::Unknown || fresh)
                {
                    wake = true;
                    if inner.credentials == Credentials::Rejected {
                        inner.news.credentials_ok = true;
                        inner.news.rejected = None;
                        self.news_ready.notify_one();
                    }
                    inner.credentials = Credentials::Ok;
                    inner.credentials_status = None;
                }
                inner.bare_429_streak = 0;
                if inner.rate < s.max_requests_per_second
                    && now.duration_since(inner.last_rate_change) >= s.rate_recovery_step
                {
                    let rate = (inner.rate * 1.25).min(s.max_requests_per_second);
                    wake |= self.set_rate(&mut inner, rate, now);
                }
            }
        }
        drop(inner);
        if wake {
            self.changed.notify_waiters();
        }
    }

    /// Change the allowed rate; says whether it changed.
    fn set_rate(&self, inner: &mut Inner, rate: f64, now: Instant) -> bool {
        if (rate - inner.rate).abs() <= f64::EPSILON {
            return false;
        }
        inner.rate = rate;
        self.rebuild_limiter(inner);
        inner.last_rate_change = now;
        true
    }

    /// The limiter of this replica's share of the allowed rate and burst; the
    /// burst accrues (a change never hands out an extra one).
    fn rebuild_limiter(&self, inner: &mut Inner) {
        let burst = self.settings.burst.min(inner.rate.ceil().max(1.0) as u32);
        let rate = inner.rate * inner.share;
        let burst = ((f64::from(burst) * inner.share).floor() as u32).max(1);
        inner.limiter = limiter(rate, burst, &self.clock, false);
        self.effective.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Requests per second this replica may send now: the allowed rate times its
    /// share (0 while it has none).
    pub fn effective_rate(&self) -> f64 {
        f64::from_bits(self.effective.load(Ordering::Relaxed))
    }

    /// Wait until `observe` has news for the other replicas.
    pub async fn news_ready(&self) {
        self.news_ready.notified().await
    }

    /// The news since the last call, and this replica's allowed-rate factor.
    pub fn take_news(&self) -> (News, f64) {
        let mut inner = self.lock();
        let factor = inner.rate / self.settings.max_requests_per_second;
        (std::mem::take(&mut inner.news), factor)
    }

    /// Put back news a heartbeat could not deliver (newer news wins).
    pub fn restore_news(&self, paused_for_ms: Option<i64>, rejected: Option<u16>, ok: bool) {
        let mut inner = self.lock();
        let n = &mut inner.news;
        if let Some(ms) = paused_for_ms {
            let d = Duration::from_millis(ms.max(0) as u64);
            n.paused_for = Some(n.paused_for.unwrap_or_default().max(d));
        }
        if n.rejected.is_none() && !n.credentials_ok {
            n.rejected = rejected;
            n.credentials_ok = ok;
        }
    }

    /// Take in what the other replicas say: this replica's share, a pause, the
    /// credentials, a lower rate. A rate is only ever lowered here; each replica
    /// grows it back on its own recovery steps.
    pub fn apply_shared(&self, shared: &Shared) {
        let now = Instant::now();
        let s = &self.settings;
        let mut inner = self.lock();
        let mut wake = false;
        let share = shared.share.clamp(0.0, 1.0);
        if (share - inner.share).abs() > 1e-9 {
            inner.share = share;
            inner.in_flight_cap = if share > 0.0 {
                ((s.max_in_flight as f64 * share).floor() as usize).max(1)
            } else {
                0
            };
            self.capped.store(share < 1.0, Ordering::Relaxed);
            self.rebuild_limiter(&mut inner);
            wake = true;
        }
        if let Some(rest) = shared.paused_for {
            let until = now + rest;
            if inner.paused_until.is_none_or(|p| p < until) {
                inner.paused_until = Some(until);
            }
        }
        if let Some(status) = shared.rejected {
            if inner.credentials != Credentials::Rejected {
                inner.credentials = Credentials::Rejected;
                inner.credentials_status = Some(status);
                inner.rejected_at = now;
                inner.next_probe_at = now + s.auth_probe_interval;
            }
        } else if shared.credentials_ok && inner.credentials == Credentials::Rejected {
            inner.credentials = Credentials::Ok;
            inner.credentials_status = None;
            wake = true;
        }
        let target =
            (shared.rate_factor * s.max_requests_per_second).max(s.max_requests_per_second / 20.0);
        if target < inner.rate - 1e-9 {
            inner.last_backoff = Some(now);
            wake |= self.set_rate(&mut inner, target, now);
        }
        drop(inner);
        if wake {
            self.changed.notify_waiters();
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
            share: inner.share,
            in_flight: self.sent.load(Ordering::Relaxed),
            total_answers: inner.total_answers,
            total_rate_limited: inner.total_limited,
            total_errors: inner.total_errors,
            paused_seconds_total: inner.paused_ms_total as f64 / 1000.0,
        }
    }
}

/// Upstream health as `GET /v1/status` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// This replica's part of the budget: 1 alone, 1/N of N replicas on PostgreSQL.
    pub share: f64,
    /// Requests sent and not yet answered (not the polls waiting out a pause).
    pub in_flight: usize,
    pub total_answers: u64,
    pub total_rate_limited: u64,
    pub total_errors: u64,
    pub paused_seconds_total: f64,
}

impl UpstreamHealth {
    /// Several upstreams as one: rates, counts and seconds add up; a pause is the
    /// latest; credentials are rejected if any upstream rejects them.
    pub fn combined<'a>(all: impl Iterator<Item = &'a UpstreamHealth>) -> UpstreamHealth {
        let mut c = UpstreamHealth {
            paused_until: None,
            credentials: Credentials::Unknown,
            credentials_status: None,
            rate_limited_last_minute: 0,
            error_ratio_last_minute: 0.0,
            polls_per_second: 0.0,
            allowed_rate: 0.0,
            configured_rate: 0.0,
            share: 0.0,
            in_flight: 0,
            total_answers: 0,
            total_rate_limited: 0,
            total_errors: 0,
            paused_seconds_total: 0.0,
        };
        let mut errors_per_second = 0.0;
        for h in all {
            // RFC 3339 in one form and zone: the later time sorts later.
            if h.paused_until > c.paused_until {
                c.paused_until = h.paused_until.clone();
            }
            match (c.credentials, h.credentials) {
                (Credentials::Rejected, _) => {}
                (_, Credentials::Rejected) => {
                    c.credentials = Credentials::Rejected;
                    c.credentials_status = h.credentials_status;
                }
                (_, Credentials::Ok) => c.credentials = Credentials::Ok,
                _ => {}
            }
            c.rate_limited_last_minute += h.rate_limited_last_minute;
            errors_per_second += h.error_ratio_last_minute * h.polls_per_second;
            c.polls_per_second += h.polls_per_second;
            c.allowed_rate += h.allowed_rate;
            c.configured_rate += h.configured_rate;
            c.share = c.share.max(h.share);
            c.in_flight += h.in_flight;
            c.total_answers += h.total_answers;
            c.total_rate_limited += h.total_rate_limited;
            c.total_errors += h.total_errors;
            c.paused_seconds_total += h.paused_seconds_total;
        }
        if c.polls_per_second > 0.0 {
            c.error_ratio_last_minute = errors_per_second / c.polls_per_second;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    //! On tokio's paused clock: the budget (governor included) runs on it, so every
    //! wait below is exact and takes no real time.
    use super::*;
    use crate::upstream::JobStatus;

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

    fn limited(retry_after: Option<Duration>) -> PollAnswer {
        PollAnswer::RateLimited {
            status: 429,
            retry_after,
        }
    }

    fn ok() -> PollAnswer {
        PollAnswer::Status(JobStatus::default())
    }

    /// The times (from `t0`) at which `n` acquisitions in a row get through.
    async fn acquisitions(b: &Budget, n: usize, t0: Instant) -> Vec<Duration> {
        let mut at = Vec::with_capacity(n);
        for _ in 0..n {
            let mut slot = b.acquire().await;
            at.push(t0.elapsed());
            b.observe(&mut slot, &ok());
        }
        at
    }

    /// The most entries of `at` (sorted) in any window `[t, t + len)`.
    fn busiest_window(at: &[Duration], len: Duration) -> usize {
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..at.len() {
            while at[hi] - at[lo] >= len {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_allows_the_burst_then_the_steady_rate_and_no_more() {
        let b = Budget::new(BudgetSettings {
            max_requests_per_second: 50.0,
            burst: 5,
            ..settings()
        });
        let t0 = Instant::now();
        let at = acquisitions(&b, 155, t0).await;
        assert!(at[..5].iter().all(|d| d.is_zero()), "the burst: {at:?}");
        assert_eq!(at[5], Duration::from_millis(20), "then one per 20 ms");
        assert_eq!(at[154], Duration::from_millis(3000));
        assert!(busiest_window(&at, Duration::from_secs(1)) <= 55);
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_max_in_flight_requests_at_once() {
        let b = Budget::new(settings());
        let slots = vec![
            b.acquire().await,
            b.acquire().await,
            b.acquire().await,
            b.acquire().await,
        ];
        assert_eq!(b.health().in_flight, 4);
        let fifth = tokio::time::timeout(Duration::from_secs(60), b.acquire()).await;
        assert!(fifth.is_err(), "a fifth request waits for a slot");
        drop(slots);
        let _fifth = b.acquire().await;
        assert_eq!(b.health().in_flight, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_with_retry_after_closes_the_gate_until_then() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        b.observe(&mut slot, &limited(Some(Duration::from_millis(300))));
        drop(slot);
        assert!(b.is_paused());
        assert!(b.health().paused_until.is_some());
        let t = Instant::now();
        let early = tokio::time::timeout(Duration::from_millis(299), b.acquire()).await;
        assert!(early.is_err(), "nothing leaves during the pause");
        let _slot = b.acquire().await;
        assert_eq!(t.elapsed(), Duration::from_millis(300));
        assert!(!b.is_paused());
        let h = b.health();
        assert_eq!(h.paused_until, None);
        assert_eq!(h.rate_limited_last_minute, 1);
        assert_eq!(h.total_rate_limited, 1);
        assert_eq!(
            h.allowed_rate, 1000.0,
            "a 429 with Retry-After keeps the rate"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_counts_requests_sent_not_polls_waiting_out_a_pause() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        let other = b.acquire().await;
        b.observe(&mut slot, &limited(Some(Duration::from_secs(1))));
        drop(slot);
        let waiting = tokio::time::timeout(Duration::from_millis(500), b.acquire()).await;
        assert!(waiting.is_err());
        let (_, h) = tokio::join!(
            tokio::time::timeout(Duration::from_millis(500), b.acquire()),
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                b.health()
            }
        );
        assert_eq!(h.in_flight, 1, "the waiting poll is not in flight: {h:?}");
        drop(other);
        assert_eq!(b.health().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_also_holds_requests_that_were_already_waiting_for_a_token() {
        let b = Budget::new(BudgetSettings {
            max_requests_per_second: 10.0,
            burst: 1,
            ..settings()
        });
        let t0 = Instant::now();
        let mut first = b.acquire().await;
        let (second, ()) = tokio::join!(
            async {
                // Waits for the next token, due at 100 ms.
                b.acquire().await;
                t0.elapsed()
            },
            async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                b.observe(&mut first, &limited(Some(Duration::from_secs(1))));
                drop(first);
            }
        );
        assert_eq!(second, Duration::from_millis(1050));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_clamped_to_its_bounds() {
        let b = Budget::new(settings());
        let t = Instant::now();
        let mut slot = b.acquire().await;
        b.observe(&mut slot, &limited(Some(Duration::from_secs(3600))));
        assert_eq!(b.lock().paused_until, Some(t + Duration::from_secs(5)));
        drop(slot);
        let _ = b.acquire().await;
        assert_eq!(t.elapsed(), Duration::from_secs(5));

        let b = Budget::new(settings());
        let t = Instant::now();
        let mut slot = b.acquire().await;
        b.observe(&mut slot, &limited(Some(Duration::ZERO)));
        assert_eq!(b.lock().paused_until, Some(t + Duration::from_millis(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_503_with_retry_after_pauses_like_a_429() {
        let b = Budget::new(settings());
        let t = Instant::now();
        let mut slot = b.acquire().await;
        b.observe(
            &mut slot,
            &PollAnswer::RateLimited {
                status: 503,
                retry_after: Some(Duration::from_secs(2)),
            },
        );
        drop(slot);
        let _ = b.acquire().await;
        assert_eq!(t.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bare_429_halves_the_rate_which_then_recovers_step_by_step() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        b.observe(&mut slot, &limited(None));
        drop(slot);
        assert_eq!(b.health().allowed_rate, 500.0);
        let t = Instant::now();
        let mut slot = b.acquire().await;
        assert_eq!(
            t.elapsed(),
            Duration::from_millis(100),
            "a short global pause"
        );
        b.observe(&mut slot, &ok());
        drop(slot);
        assert_eq!(b.health().allowed_rate, 625.0, "one step after 100 ms");
        let mut rates = vec![];
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            let mut slot = b.acquire().await;
            b.observe(&mut slot, &ok());
            rates.push(b.health().allowed_rate);
        }
        assert_eq!(rates, [781.25, 976.5625, 1000.0, 1000.0, 1000.0, 1000.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_recovers_no_faster_than_one_step_per_interval() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        b.observe(&mut slot, &limited(None));
        drop(slot);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Many answers within one step raise the rate once.
        for _ in 0..20 {
            let mut slot = b.acquire().await;
            b.observe(&mut slot, &ok());
        }
        assert_eq!(b.health().allowed_rate, 625.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_429s_of_requests_sent_before_a_backoff_do_not_lower_the_rate_again() {
        let b = Budget::new(settings());
        let mut slots = vec![b.acquire().await, b.acquire().await, b.acquire().await];
        tokio::time::sleep(Duration::from_millis(10)).await;
        let t = Instant::now();
        for slot in &mut slots {
            b.observe(slot, &limited(None));
        }
        drop(slots);
        assert_eq!(b.health().allowed_rate, 500.0, "halved once, not thrice");
        assert_eq!(b.lock().paused_until, Some(t + Duration::from_millis(100)));
        assert_eq!(b.health().total_rate_limited, 3);
        // A bare 429 to a request sent after the backoff is news: halve again, pause longer.
        let mut slot = b.acquire().await;
        let t = Instant::now();
        b.observe(&mut slot, &limited(None));
        assert_eq!(b.health().allowed_rate, 250.0);
        assert_eq!(b.lock().paused_until, Some(t + Duration::from_millis(200)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_never_falls_below_a_twentieth_and_pauses_stay_bounded() {
        let b = Budget::new(settings());
        for _ in 0..30 {
            let mut slot = b.acquire().await;
            b.observe(&mut slot, &limited(None));
        }
        assert_eq!(b.health().allowed_rate, 50.0);
        let until = b.lock().paused_until.unwrap();
        assert!(until <= Instant::now() + Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn lowering_the_rate_hands_out_no_fresh_burst() {
        let b = Budget::new(BudgetSettings {
            max_requests_per_second: 100.0,
            burst: 10,
            ..settings()
        });
        let mut slot = b.acquire().await;
        b.observe(&mut slot, &limited(None));
        drop(slot);
        // Now 50/s after a 100 ms pause: the next ones are spaced, not a burst of 10.
        let t0 = Instant::now();
        let mut at = vec![];
        for _ in 0..7 {
            let _slot = b.acquire().await;
            at.push(t0.elapsed().as_millis());
        }
        // What accrued during the pause (5 tokens), not the whole burst of 10.
        assert_eq!(at, [100, 100, 100, 100, 100, 120, 140]);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_credentials_let_one_probe_through_at_a_time() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        b.observe(&mut slot, &PollAnswer::Unauthorized { status: 401 });
        drop(slot);
        assert!(b.credentials_rejected());
        assert_eq!(b.health().credentials, Credentials::Rejected);
        assert_eq!(b.health().credentials_status, Some(401));
        let t = Instant::now();
        let mut probe = b.acquire().await;
        assert_eq!(t.elapsed(), Duration::from_millis(200));
        assert!(probe.is_probe());
        // While the probe is out, nobody else gets through.
        let blocked = tokio::time::timeout(Duration::from_secs(10), b.acquire()).await;
        assert!(blocked.is_err());
        // Still bad: the next probe one interval after this answer.
        b.observe(&mut probe, &PollAnswer::Unauthorized { status: 401 });
        drop(probe);
        let t = Instant::now();
        let mut probe = b.acquire().await;
        assert_eq!(t.elapsed(), Duration::from_millis(200));
        b.observe(&mut probe, &ok());
        drop(probe);
        assert!(!b.credentials_rejected());
        assert_eq!(b.health().credentials, Credentials::Ok);
        let t = Instant::now();
        let slots = [b.acquire().await, b.acquire().await, b.acquire().await];
        assert!(t.elapsed().is_zero(), "open again for everyone");
        assert!(slots.iter().all(|s| !s.is_probe()));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_resume_as_soon_as_the_probe_succeeds() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        b.observe(&mut slot, &PollAnswer::Unauthorized { status: 403 });
        drop(slot);
        let mut probe = b.acquire().await;
        let t = Instant::now();
        let (waited, ()) = tokio::join!(
            async {
                let _ = b.acquire().await;
                t.elapsed()
            },
            async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                b.observe(&mut probe, &ok());
            }
        );
        assert_eq!(waited, Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_to_a_request_sent_before_the_401_does_not_clear_it() {
        let b = Budget::new(settings());
        let mut old = b.acquire().await;
        let mut slot = b.acquire().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        b.observe(&mut slot, &PollAnswer::Unauthorized { status: 401 });
        b.observe(&mut old, &ok());
        assert!(b.credentials_rejected(), "an old 200 says nothing of now");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_without_an_answer_frees_the_way_for_the_next() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        b.observe(&mut slot, &PollAnswer::Unauthorized { status: 401 });
        drop(slot);
        let probe = b.acquire().await;
        assert!(probe.is_probe());
        drop(probe);
        let t = Instant::now();
        let next = b.acquire().await;
        assert!(next.is_probe());
        assert!(t.elapsed().is_zero());
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_probe_answer_probes_again_later() {
        let b = Budget::new(settings());
        let mut slot = b.acquire().await;
        b.observe(&mut slot, &PollAnswer::Unauthorized { status: 401 });
        drop(slot);
        let mut probe = b.acquire().await;
        b.observe(
            &mut probe,
            &PollAnswer::Transient {
                error: "HTTP 502".into(),
            },
        );
        drop(probe);
        assert!(b.credentials_rejected());
        let t = Instant::now();
        let probe = b.acquire().await;
        assert!(probe.is_probe());
        assert_eq!(t.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn health_counts_errors_and_rate_limits_of_the_last_minute() {
        let b = Budget::new(settings());
        for answer in [
            ok(),
            ok(),
            PollAnswer::Transient {
                error: "timeout".into(),
            },
            limited(Some(Duration::from_millis(100))),
        ] {
            let mut slot = b.acquire().await;
            b.observe(&mut slot, &answer);
        }
        let h = b.health();
        assert_eq!(h.error_ratio_last_minute, 0.25);
        assert_eq!(h.rate_limited_last_minute, 1);
        assert_eq!(h.total_answers, 4);
        tokio::time::sleep(Duration::from_secs(61)).await;
        let h = b.health();
        assert_eq!(h.error_ratio_last_minute, 0.0);
        assert_eq!(h.rate_limited_last_minute, 0);
        assert_eq!(h.total_errors, 1, "totals stay");
    }
}
