//! Injected faults (rate limit, 5xx, malformed bodies, dropped connections, slow answers) and
//! the request log.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::SimulateArgs;

/// The form of the `Retry-After` header of a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RetryAfterForm {
    /// delay-seconds, e.g. `Retry-After: 2`
    Seconds,
    /// an IMF-fixdate, e.g. `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`
    HttpDate,
    /// no Retry-After at all (a client must back off on its own)
    None,
}

/// The global token bucket over all requests.
pub(crate) struct RateLimit {
    limiter: DefaultDirectRateLimiter,
    form: RetryAfterForm,
    rate: f64,
}

impl RateLimit {
    /// `None` when the options ask for no limit (or for one too fast to matter).
    pub(crate) fn new(args: &SimulateArgs) -> Option<Self> {
        let rate = args.rate_limit.filter(|r| r.is_finite() && *r > 0.0)?;
        let period = Duration::from_secs_f64((1.0 / rate).min(1e9));
        let burst = args
            .rate_burst
            .unwrap_or_else(|| rate.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
            .max(1);
        let quota = Quota::with_period(period)?.allow_burst(std::num::NonZeroU32::new(burst)?);
        Some(Self {
            limiter: RateLimiter::direct(quota),
            form: args.retry_after_form,
            rate,
        })
    }

    /// Takes a token, or says what `Retry-After` to answer.
    pub(crate) fn check(&self) -> Result<(), RetryAfter> {
        match self.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                // Rounded up and at least 1: a client that honours it exactly finds a token.
                let secs = (wait.as_secs_f64().ceil() as u64).max(1);
                let header = match self.form {
                    RetryAfterForm::Seconds => secs.to_string(),
                    RetryAfterForm::HttpDate => {
                        let at = SystemTime::now() + Duration::from_secs(secs);
                        httpdate::fmt_http_date(ceil_to_second(at))
                    }
                    RetryAfterForm::None => String::new(),
                };
                Err(RetryAfter {
                    secs,
                    header,
                    rate: self.rate,
                })
            }
        }
    }
}

/// A rate-limited answer.
pub(crate) struct RetryAfter {
    pub secs: u64,
    pub header: String,
    pub rate: f64,
}

/// An HTTP date has whole seconds: round up so the date is never earlier than the delay.
fn ceil_to_second(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if d.subsec_nanos() > 0 => {
            SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs() + 1)
        }
        _ => t,
    }
}

/// What the fault draw decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    Drop,
    /// Answer this 5xx status.
    Error(u16),
    /// Answer 200 with this malformed body variant.
    Malformed(usize),
}

/// The seeded draws of faults.
pub(crate) struct Faults {
    drop: f64,
    error: f64,
    malformed: f64,
    slow: f64,
    pub slow_delay: Duration,
    rng: Mutex<StdRng>,
}

pub(crate) const ERROR_STATUSES: [u16; 4] = [500, 502, 503, 504];

impl Faults {
    pub(crate) fn new(args: &SimulateArgs) -> Self {
        let ratio = |r: f64| {
            if r.is_finite() {
                r.clamp(0.0, 1.0)
            } else {
                0.0
            }
        };
        Self {
            drop: ratio(args.drop_ratio),
            error: ratio(args.error_ratio),
            malformed: ratio(args.malformed_ratio),
            slow: ratio(args.slow_ratio),
            slow_delay: args.slow_delay,
            // A different stream from the job hashes, replayable from the seed.
            rng: Mutex::new(StdRng::seed_from_u64(args.seed ^ 0x6661_756c_7473)),
        }
    }

    fn any(&self) -> bool {
        self.drop > 0.0 || self.error > 0.0 || self.malformed > 0.0 || self.slow > 0.0
    }

    /// Draws the fault of one request and whether its answer is slow. The faults exclude each
    /// other (drop, then error, then malformed, on one draw); slowness is drawn on its own.
    pub(crate) fn draw(&self, malformed_variants: usize) -> (Fault, bool) {
        if !self.any() {
            return (Fault::None, false);
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let u: f64 = rng.random();
        let pick: usize = rng.random_range(0..ERROR_STATUSES.len() * malformed_variants.max(1));
        let slow = self.slow > 0.0 && rng.random::<f64>() < self.slow;
        let fault = if u < self.drop {
            Fault::Drop
        } else if u < self.drop + self.error {
            Fault::Error(ERROR_STATUSES[pick % ERROR_STATUSES.len()])
        } else if u < self.drop + self.error + self.malformed {
            Fault::Malformed(pick % malformed_variants.max(1))
        } else {
            Fault::None
        };
        (fault, slow)
    }
}

/// One request as the log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// Arrival, in Unix milliseconds.
    pub t_ms: f64,
    pub method: String,
    /// The path as received (still percent-encoded).
    pub path: String,
    /// The status answered, 0 for a connection dropped without an answer.
    pub status: u16,
    /// The delay the answer's `Retry-After` named, from arrival, in milliseconds (for a date,
    /// the date minus the arrival), so a test can check that nothing arrived inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<f64>,
}

const MEMORY_CAP_WITH_FILE: usize = 200_000;

/// The request log: in memory for tests, and appended to a file as JSON lines.
pub(crate) struct RequestLog {
    keep: bool,
    /// How many entries memory keeps: all with `keep_log`; with only a file, the first
    /// `MEMORY_CAP_WITH_FILE`, so that a long benchmark with a log file does not grow without bound.
    memory_cap: usize,
    memory: Mutex<Vec<LoggedRequest>>,
    file: Mutex<Option<BufWriter<File>>>,
}

impl RequestLog {
    pub(crate) fn new(args: &SimulateArgs) -> Self {
        Self {
            keep: args.keep_log || args.request_log.is_some(),
            memory_cap: if args.keep_log {
                usize::MAX
            } else {
                MEMORY_CAP_WITH_FILE
            },
            memory: Mutex::new(Vec::new()),
            file: Mutex::new(None),
        }
    }

    /// Whether requests are recorded at all (so that nothing is allocated for the log when not).
    pub(crate) fn enabled(&self) -> bool {
        self.keep
    }

    /// Opens `path` for appending (once; a second `serve` of the same simulator reuses it).
    pub(crate) fn open(&self, path: &Path) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot open the request log {}: {e}", path.display()),
                    )
                })?;
            *file = Some(BufWriter::with_capacity(64 * 1024, f));
        }
        Ok(())
    }

    pub(crate) fn record(&self, entry: LoggedRequest) {
        if !self.keep {
            return;
        }
        {
            let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(w) = file.as_mut() {
                let written = serde_json::to_writer(&mut *w, &entry)
                    .map_err(std::io::Error::from)
                    .and_then(|()| w.write_all(b"\n"));
                if let Err(e) = written {
                    tracing::warn!(error = %e, "cannot write the request log");
                }
            }
        }
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if memory.len() < self.memory_cap {
            memory.push(entry);
        }
    }

    pub(crate) fn flush(&self) {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = file.as_mut() {
            if let Err(e) = w.flush() {
                tracing::warn!(error = %e, "cannot flush the request log");
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<LoggedRequest> {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
