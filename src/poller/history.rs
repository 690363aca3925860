//! What jobwatch has learned of how long jobs take, and the learned cadence that
//! follows from it.
//!
//! Per kind (and per value of the metadata key `poller.learn_by`, when one is
//! named) a [`Summary`] holds two small histograms of the durations of jobs that
//! ended (succeeded or failed): from the watch's start to its outcome as jobwatch
//! saw it, and from the upstream's own `created` (else `started`) to its `ended`
//! where the kind reports them. Each is [`BINS`] log-spaced bins of decaying
//! weight: about 280 bytes, whatever the number of jobs, and it follows a change
//! of the upstream within a few hundred ends ([`HALF_LIFE`]). The summaries live
//! in memory, are updated when an outcome is decided, and reach the store at
//! checkpoints and at shutdown (a statistic: an end lost to `kill -9` costs
//! nothing that was acknowledged).
//!
//! From a histogram comes a survival curve S(t) and a hazard h(t), piecewise
//! constant per bin, and from those the next poll of a running job
//! ([`Curve::interval`]): polls spaced by Keller's optimal checking density
//! `n(t) = sqrt(h(t) / 2c)`, where `c` is the price of a poll in seconds of
//! detection delay (`poller.poll_price`). docs/cadence.md has the derivation.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use crate::model::{Kind, Outcome};
use crate::store::{Millis, StoredDurations, WatchRecord};

/// Bins per histogram: ten per decade from [`FLOOR_SECS`] to a million seconds
/// (11.6 days); shorter durations count in the first bin, longer in the last.
pub const BINS: usize = 70;
const PER_DECADE: f64 = 10.0;
const FLOOR_SECS: f64 = 0.1;
/// An end's weight halves every day: a summary follows an upstream that changed
/// within a day or two, and a batch of jobs posted at once weighs alike whether
/// it ended first (the short ones) or last (decay by count of ends would make
/// the last ends of a batch, its longest jobs, outweigh the first).
pub const HALF_LIFE: Duration = Duration::from_secs(86_400);
/// A pseudo-end beyond the last bin: the last bin with ends in it has a finite
/// hazard (no ends seen later is not "certain to end by then"), and past every
/// end seen the hazard is 0, so the cadence there is the longest one.
const TAIL_PRIOR: f64 = 1.0;
/// Values of the `poller.learn_by` key with a summary of their own, per kind;
/// ends of further values count for the kind only. Keeps memory and the table
/// bounded whatever clients put in their metadata.
pub const MAX_GROUPS: usize = 64;
/// A group value longer than this is cut (it is a name, not a payload).
const GROUP_VALUE_MAX: usize = 64;
/// Version byte of the stored form.
const FORMAT: u8 = 1;
/// Bytes of the stored form.
pub const STORED_LEN: usize = 1 + 2 * (4 + 8 + 4 * BINS);

/// Seconds at the lower edge of bin `j` (`j = BINS` is the upper edge of the last).
fn edge(j: usize) -> f64 {
    FLOOR_SECS * 10f64.powf(j as f64 / PER_DECADE)
}

/// What an end of `age_ms` ago weighs now.
fn decayed(age_ms: Millis) -> f64 {
    (0.5f64).powf(age_ms.max(0) as f64 / HALF_LIFE.as_millis() as f64)
}

/// A decaying, log-spaced histogram of durations.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    weights: [f64; BINS],
    /// Ends counted, undecayed (for status; saturating).
    ends: u32,
    /// The time the weights are decayed to: the latest end's.
    as_of: Millis,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            weights: [0.0; BINS],
            ends: 0,
            as_of: 0,
        }
    }
}

impl Histogram {
    /// Count one duration, of a job that ended at `at`. What was counted before
    /// decays to `at`; the new one is split between the two bins whose centres
    /// it falls between (linear binning: a duration near a bin edge makes no step
    /// in the curve).
    pub fn add(&mut self, d: Duration, at: Millis) {
        let weight = if at > self.as_of {
            let k = decayed(at - self.as_of);
            for w in &mut self.weights {
                *w *= k;
            }
            self.as_of = at;
            1.0
        } else {
            // An end decided out of order (or a clock that went back): weighed by its age.
            decayed(self.as_of - at)
        };
        let secs = d.as_secs_f64().max(FLOOR_SECS);
        // Position in bins, centres at i + 0.5.
        let x = ((secs / FLOOR_SECS).log10() * PER_DECADE - 0.5).clamp(0.0, (BINS - 1) as f64);
        let lo = x.floor() as usize;
        let frac = x - lo as f64;
        self.weights[lo] += weight * (1.0 - frac);
        if lo + 1 < BINS {
            self.weights[lo + 1] += weight * frac;
        } else {
            self.weights[lo] += weight * frac;
        }
        self.ends = self.ends.saturating_add(1);
    }

    /// The decayed number of ends it holds, as of its latest end.
    pub fn weight(&self) -> f64 {
        self.weights.iter().sum()
    }

    pub fn ends(&self) -> u32 {
        self.ends
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ends.to_le_bytes());
        out.extend_from_slice(&self.as_of.to_le_bytes());
        for w in &self.weights {
            // Four bytes a bin: a statistic needs no more than f32's seven digits.
            out.extend_from_slice(&(*w as f32).to_le_bytes());
        }
    }

    fn read(bytes: &[u8]) -> Option<(Histogram, &[u8])> {
        let (ends, rest) = bytes.split_first_chunk::<4>()?;
        let (as_of, mut rest) = rest.split_first_chunk::<8>()?;
        let mut h = Histogram {
            ends: u32::from_le_bytes(*ends),
            as_of: i64::from_le_bytes(*as_of),
            ..Histogram::default()
        };
        for w in &mut h.weights {
            let (b, r) = rest.split_first_chunk::<4>()?;
            let v = f32::from_le_bytes(*b);
            // Stored by us, but a file is outside data all the same.
            if !(v.is_finite() && v >= 0.0) {
                return None;
            }
            *w = f64::from(v);
            rest = r;
        }
        Some((h, rest))
    }

    /// The survival curve and the cadence's cumulative density of this histogram.
    pub fn curve(&self) -> Curve {
        Curve::of(self)
    }
}

/// S(t) and Λ(t) = ∫ sqrt(h) at the bin edges of a histogram, smoothed: the
/// weights go through a [1, 2, 1] / 4 kernel first, so that a few hundred ends
/// give a usable hazard (an empty bin between two full ones would otherwise read
/// as "nothing ends here" and skip polls over it).
#[derive(Debug, Clone)]
pub struct Curve {
    /// S at each edge; `survival[0] = 1`.
    survival: [f64; BINS + 1],
    /// sqrt of the hazard within each bin (per second, square-rooted).
    root_hazard: [f64; BINS],
    /// Λ at each edge.
    lambda: [f64; BINS + 1],
}

impl Curve {
    fn of(h: &Histogram) -> Curve {
        let w = &h.weights;
        // Reflecting ends: the kernel keeps the total weight.
        let at = |i: isize| w[i.clamp(0, BINS as isize - 1) as usize];
        let smooth: Vec<f64> = (0..BINS as isize)
            .map(|i| (at(i - 1) + 2.0 * at(i) + at(i + 1)) / 4.0)
            .collect();
        let total = smooth.iter().sum::<f64>() + TAIL_PRIOR;
        let mut survival = [0.0; BINS + 1];
        let mut above = TAIL_PRIOR;
        survival[BINS] = above / total;
        for j in (0..BINS).rev() {
            above += smooth[j];
            survival[j] = above / total;
        }
        let mut root_hazard = [0.0; BINS];
        let mut lambda = [0.0; BINS + 1];
        for j in 0..BINS {
            let width = edge(j + 1) - edge(j);
            // Constant hazard within a bin: S falls by exp(-h * width) across it.
            let h = (survival[j] / survival[j + 1]).ln().max(0.0) / width;
            root_hazard[j] = h.sqrt();
            lambda[j + 1] = lambda[j] + root_hazard[j] * width;
        }
        Curve {
            survival,
            root_hazard,
            lambda,
        }
    }

    /// The bin of `t` seconds (`None` past the last edge), and the lower edge.
    fn bin(t: f64) -> Option<(usize, f64)> {
        if t < FLOOR_SECS {
            return Some((0, FLOOR_SECS));
        }
        let j = ((t / FLOOR_SECS).log10() * PER_DECADE).floor() as usize;
        // The float may land a hair either side of an edge.
        let j = match j {
            j if j >= BINS => return None,
            j if t < edge(j) => j.saturating_sub(1),
            j if j + 1 < BINS && t >= edge(j + 1) => j + 1,
            j => j,
        };
        Some((j, edge(j)))
    }

    /// The share of jobs still running at age `t` seconds.
    pub fn survival(&self, t: f64) -> f64 {
        match Curve::bin(t) {
            None => self.survival[BINS],
            Some((j, lo)) => {
                let h = self.root_hazard[j].powi(2);
                self.survival[j] * (-h * (t - lo).max(0.0)).exp()
            }
        }
    }

    /// The chance per second that a job running at age `t` seconds ends now.
    pub fn hazard(&self, t: f64) -> f64 {
        match Curve::bin(t) {
            None => 0.0,
            Some((j, _)) => self.root_hazard[j].powi(2),
        }
    }

    fn lambda(&self, t: f64) -> f64 {
        match Curve::bin(t) {
            None => self.lambda[BINS],
            Some((j, lo)) => self.lambda[j] + self.root_hazard[j] * (t - lo).max(0.0),
        }
    }

    /// Seconds from age `age` to the next poll, polls spaced by Keller's density
    /// `sqrt(h / 2c)` with `price` = c seconds: the next poll is where
    /// `Λ(t) - Λ(age)` reaches `sqrt(2c)`. `None` when no end is expected before
    /// the last edge (past everything seen: the longest interval is right).
    pub fn interval(&self, age: f64, price: f64) -> Option<f64> {
        let age = age.max(0.0);
        let (start, _) = Curve::bin(age)?;
        let target = self.lambda(age) + (2.0 * price.max(0.0)).sqrt();
        for j in start..BINS {
            if self.lambda[j + 1] >= target && self.root_hazard[j] > 0.0 {
                let from = edge(j).max(age);
                let base = self.lambda(from);
                let t = from + (target - base).max(0.0) / self.root_hazard[j];
                return Some((t - age).max(0.0));
            }
        }
        None
    }
}

/// The two histograms of one kind (or one group of a kind).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// From the watch's start (`watched_at`) to its outcome, on jobwatch's clock.
    pub observed: Histogram,
    /// From the upstream's `created` (else `started`) to its `ended`.
    pub upstream: Histogram,
}

impl Summary {
    /// The stored form: a version byte, then each histogram's end count, time
    /// and weights, little-endian (585 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STORED_LEN);
        out.push(FORMAT);
        self.observed.write(&mut out);
        self.upstream.write(&mut out);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Summary> {
        let (version, rest) = bytes.split_first()?;
        if *version != FORMAT {
            return None;
        }
        let (observed, rest) = Histogram::read(rest)?;
        let (upstream, rest) = Histogram::read(rest)?;
        rest.is_empty().then_some(Summary { observed, upstream })
    }
}

/// A summary with its curves, kept in step with it.
#[derive(Debug, Clone)]
struct Entry {
    summary: Summary,
    observed: Curve,
    upstream: Curve,
    /// Changed since it was last handed to the store.
    dirty: bool,
}

impl Entry {
    fn new(summary: Summary) -> Entry {
        Entry {
            observed: summary.observed.curve(),
            upstream: summary.upstream.curve(),
            summary,
            dirty: false,
        }
    }
}

/// How a duration is measured and an age read: which clock, from which start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// jobwatch's own: from the watch's start.
    Observed,
    /// The upstream's: from its `created` (else `started`).
    Upstream,
}

/// What the history holds for one kind, for `/v1/status`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct KindHistory {
    pub kind: String,
    /// Ends counted (from first seen to outcome), ever.
    pub ended: u64,
    /// Their decayed weight: what the learned cadence weighs against `poller.learn_after`.
    pub weight: f64,
    /// Ends with the upstream's own start and end times, ever.
    pub ended_upstream: u64,
    /// Whether the learned cadence has enough history for this kind.
    pub learned: bool,
    /// Groups (values of `poller.learn_by`) with a summary of their own.
    pub groups: usize,
}

/// Every summary, shared by the pollers (they read it for each learned poll and
/// write it at each end) and the checkpoint loop (which stores what changed).
#[derive(Debug)]
pub struct History {
    /// (kind, group): the group is `""` for the kind itself.
    entries: RwLock<HashMap<(Kind, String), Entry>>,
    /// The metadata key whose values have summaries of their own.
    learn_by: Option<String>,
    /// Decayed ends a summary needs before the learned cadence uses it.
    learn_after: f64,
}

impl History {
    pub fn new(learn_by: Option<String>, learn_after: u32) -> History {
        History {
            entries: RwLock::new(HashMap::new()),
            learn_by,
            // Counted to the nearest end: N ends minutes apart have decayed a hair.
            learn_after: f64::from(learn_after.max(1)) - 0.5,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<(Kind, String), Entry>> {
        // A panic while holding the lock leaves whole histograms behind: keep going.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<(Kind, String), Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the summaries the store holds (at start). A row that does not read
    /// is skipped with a warning: the history is rebuilt from the next ends.
    pub fn load(&self, rows: Vec<StoredDurations>) {
        let mut entries = self.write();
        for row in rows {
            match Summary::from_bytes(&row.summary) {
                Some(s) => {
                    entries.insert((row.kind, row.group), Entry::new(s));
                }
                None => {
                    tracing::warn!(kind = %row.kind, group = %row.group, "a stored duration summary does not read; learning that one afresh")
                }
            }
        }
    }

    /// The group of `w` under `poller.learn_by`, if it has one.
    fn group_of(&self, w: &WatchRecord) -> Option<String> {
        let key = self.learn_by.as_deref()?;
        let value = w.metadata.as_ref()?.get(key)?;
        let mut text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => value.to_string(),
            _ => return None,
        };
        if text.is_empty() {
            return None;
        }
        if text.len() > GROUP_VALUE_MAX {
            let mut cut = GROUP_VALUE_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Some(text)
    }

    /// Count the end of `w` (an outcome just decided): only jobs that ended
    /// upstream (succeeded or failed) say how long jobs take.
    pub fn record(&self, w: &WatchRecord) {
        if !matches!(w.outcome, Some(Outcome::Succeeded | Outcome::Failed)) {
            return;
        }
        let Some(at) = w.outcome_at else { return };
        let observed = Duration::from_millis((at - w.watched_at).max(0) as u64);
        let upstream = upstream_duration(w);
        let group = self.group_of(w);
        let mut entries = self.write();
        let groups = entries
            .keys()
            .filter(|(k, g)| *k == w.kind && !g.is_empty())
            .count();
        for g in [Some(String::new()), group].into_iter().flatten() {
            let key = (w.kind, g);
            if !key.1.is_empty() && !entries.contains_key(&key) && groups >= MAX_GROUPS {
                continue;
            }
            let e = entries
                .entry(key)
                .or_insert_with(|| Entry::new(Summary::default()));
            e.summary.observed.add(observed, at);
            e.observed = e.summary.observed.curve();
            if let Some(d) = upstream {
                e.summary.upstream.add(d, at);
                e.upstream = e.summary.upstream.curve();
            }
            e.dirty = true;
        }
    }

    /// The learned cadence's next interval for `w`, found running at `now`, at
    /// `price`, clamped to `[min, max]`; `None` while the kind (and its group)
    /// has fewer than `learn_after` ends: then the backoff cadence applies.
    /// The group's summary is used when it has enough ends, else the kind's;
    /// within one, the upstream's clock when the watch has a start time from
    /// it, else jobwatch's.
    pub fn interval(
        &self,
        w: &WatchRecord,
        now: Millis,
        price: Duration,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let entries = self.read();
        let group = self.group_of(w);
        let kind = entries.get(&(w.kind, String::new()));
        let grouped = group.and_then(|g| entries.get(&(w.kind, g)));
        let upstream_age = upstream_start(w).map(|start| (now - start).max(0));
        for e in [grouped, kind].into_iter().flatten() {
            let (curve, age) = match upstream_age {
                Some(age) if e.summary.upstream.weight() >= self.learn_after => (&e.upstream, age),
                _ if e.summary.observed.weight() >= self.learn_after => {
                    (&e.observed, (now - w.watched_at).max(0))
                }
                _ => continue,
            };
            let age = age as f64 / 1000.0;
            let secs = curve
                .interval(age, price.as_secs_f64())
                .unwrap_or(f64::INFINITY);
            return Some(clamp(secs, min, max));
        }
        None
    }

    /// Is there enough history for `kind` (its own summary) on `basis`?
    pub fn learned(&self, kind: Kind, basis: Basis) -> bool {
        self.read()
            .get(&(kind, String::new()))
            .is_some_and(|e| match basis {
                Basis::Observed => e.summary.observed.weight() >= self.learn_after,
                Basis::Upstream => e.summary.upstream.weight() >= self.learn_after,
            })
    }

    /// The summaries changed since the last call, to store; they count as
    /// stored from here (a failed write gives them back: [`History::unsaved`]).
    pub fn take_changed(&self) -> Vec<StoredDurations> {
        let mut entries = self.write();
        entries
            .iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|((kind, group), e)| {
                e.dirty = false;
                StoredDurations {
                    kind: *kind,
                    group: group.clone(),
                    summary: e.summary.to_bytes(),
                }
            })
            .collect()
    }

    /// Writing `rows` failed: they are changed again (for the next checkpoint).
    pub fn unsaved(&self, rows: &[StoredDurations]) {
        let mut entries = self.write();
        for r in rows {
            if let Some(e) = entries.get_mut(&(r.kind, r.group.clone())) {
                e.dirty = true;
            }
        }
    }

    /// Per kind, what the history holds (for `/v1/status`), by kind name.
    pub fn kinds(&self) -> Vec<KindHistory> {
        let entries = self.read();
        let mut out: Vec<KindHistory> = entries
            .iter()
            .filter(|((_, g), _)| g.is_empty())
            .map(|((kind, _), e)| KindHistory {
                kind: kind.as_str().to_string(),
                ended: u64::from(e.summary.observed.ends()),
                weight: (e.summary.observed.weight() * 10.0).round() / 10.0,
                ended_upstream: u64::from(e.summary.upstream.ends()),
                learned: e.summary.observed.weight() >= self.learn_after
                    || e.summary.upstream.weight() >= self.learn_after,
                groups: entries
                    .keys()
                    .filter(|(k, g)| k == kind && !g.is_empty())
                    .count(),
            })
            .collect();
        out.sort_by(|a, b| a.kind.cmp(&b.kind));
        out
    }

    /// An independent copy (the cadence study runs several cadences from one
    /// learned history).
    pub fn snapshot(&self) -> History {
        History {
            entries: RwLock::new(self.read().clone()),
            learn_by: self.learn_by.clone(),
            learn_after: self.learn_after,
        }
    }

    /// A copy of the summary of `kind` (`group` `""` for the kind's own).
    pub fn summary(&self, kind: Kind, group: &str) -> Option<Summary> {
        self.read()
            .get(&(kind, group.to_string()))
            .map(|e| e.summary.clone())
    }
}

fn clamp(secs: f64, min: Duration, max: Duration) -> Duration {
    // Infinite (past every end) or NaN: the longest.
    if secs.is_nan() || secs >= max.as_secs_f64() {
        return max;
    }
    Duration::from_secs_f64(secs.max(0.0)).clamp(min, max)
}

/// Unix milliseconds of an RFC 3339 time an upstream reported.
fn parse_time(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// When the job began by the upstream's clock: `created`, else `started`.
fn upstream_start(w: &WatchRecord) -> Option<Millis> {
    let u = &w.upstream;
    u.created
        .as_deref()
        .or(u.started.as_deref())
        .and_then(parse_time)
}

/// How long the job took by the upstream's clock, where it says.
fn upstream_duration(w: &WatchRecord) -> Option<Duration> {
    let end = parse_time(w.upstream.ended.as_deref()?)?;
    let start = upstream_start(w)?;
    (end >= start).then(|| Duration::from_millis((end - start) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UpstreamFields;

    /// `n` durations with the quantiles of `quantile`, in a scrambled order (the
    /// decay weighs later ends more: sorted input would skew the curve).
    fn quantiles(n: usize, quantile: impl Fn(f64) -> f64) -> Vec<Duration> {
        (0..n)
            .map(|i| (i * 7919) % n)
            .map(|i| Duration::from_secs_f64(quantile((i as f64 + 0.5) / n as f64)))
            .collect()
    }

    fn exponential(mean: f64) -> impl Fn(f64) -> f64 {
        move |u| -mean * (1.0 - u).ln()
    }

    /// Lognormal quantiles by the inverse error function's bisection (tests only).
    fn lognormal(median: f64, sigma: f64) -> impl Fn(f64) -> f64 {
        move |u| {
            let phi = |z: f64| 0.5 * erfc(-z / std::f64::consts::SQRT_2);
            let (mut lo, mut hi) = (-10.0, 10.0);
            for _ in 0..100 {
                let mid = (lo + hi) / 2.0;
                if phi(mid) < u {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            median * (sigma * lo).exp()
        }
    }

    /// Abramowitz and Stegun 7.1.26: enough for test quantiles.
    fn erfc(x: f64) -> f64 {
        let z = x.abs();
        let t = 1.0 / (1.0 + 0.5 * z);
        let r = t
            * (-z * z - 1.26551223
                + t * (1.00002368
                    + t * (0.37409196
                        + t * (0.09678418
                            + t * (-0.18628806
                                + t * (0.27886807
                                    + t * (-1.13520398
                                        + t * (1.48851587
                                            + t * (-0.82215223 + t * 0.17087277)))))))))
                .exp();
        if x >= 0.0 {
            r
        } else {
            2.0 - r
        }
    }

    fn histogram(durations: &[Duration]) -> Histogram {
        let mut h = Histogram::default();
        for d in durations {
            h.add(*d, 0);
        }
        h
    }

    #[test]
    fn a_summary_is_a_few_hundred_bytes_whatever_it_counted_and_reads_back() {
        let mut s = Summary::default();
        for (i, d) in quantiles(5_000, exponential(60.0)).into_iter().enumerate() {
            s.observed.add(d, i as Millis);
            s.upstream.add(d / 2, i as Millis);
        }
        let bytes = s.to_bytes();
        assert_eq!(bytes.len(), STORED_LEN);
        assert!(bytes.len() < 600);
        // Weights are stored in four bytes: what reads back is the same to f32's precision.
        let back = Summary::from_bytes(&bytes).expect("reads back");
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.observed.ends(), 5_000);
        assert!((back.observed.weight() - s.observed.weight()).abs() < 0.01);
        // A day later one end weighs one, and the 5,000 before it half as much.
        let day = HALF_LIFE.as_millis() as Millis;
        s.observed.add(Duration::from_secs(60), 4_999 + day);
        let w = s.observed.weight();
        assert!((2_500.0..2_502.0).contains(&w), "{w}");
        // An end older than the latest weighs by its age.
        s.observed.add(Duration::from_secs(60), 4_999);
        assert!((s.observed.weight() - w - 0.5).abs() < 1e-6);
        // Outside data: a wrong version, a short row, a negative or NaN weight.
        assert_eq!(Summary::from_bytes(&[]), None);
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(Summary::from_bytes(&v2), None);
        assert_eq!(Summary::from_bytes(&bytes[..bytes.len() - 1]), None);
        let mut nan = bytes.clone();
        nan[13..17].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(Summary::from_bytes(&nan), None);
        let mut long = bytes;
        long.push(0);
        assert_eq!(Summary::from_bytes(&long), None);
    }

    #[test]
    fn the_curve_follows_the_durations_it_was_given() {
        let c = histogram(&quantiles(700, lognormal(120.0, 1.0))).curve();
        let median = c.survival(120.0);
        assert!((0.44..0.56).contains(&median), "S(median) = {median}");
        let p90 = c.survival(120.0 * (1.2816f64).exp());
        assert!((0.06..0.14).contains(&p90), "S(p90) = {p90}");
        assert!(c.survival(0.05) > 0.999);
        assert!(
            c.survival(1e7) < 0.003,
            "past every end: the tail prior only"
        );
        assert_eq!(c.hazard(1e7), 0.0);
    }

    #[test]
    fn an_exponential_history_gives_kellers_constant_interval() {
        // Constant hazard h = 1/60: Keller's spacing is sqrt(2c / h) = sqrt(120 c).
        let c = histogram(&quantiles(700, exponential(60.0))).curve();
        for age in [20.0, 60.0, 120.0] {
            let h = c.hazard(age);
            assert!((1.0 / 75.0..1.0 / 48.0).contains(&h), "h({age}) = {h}");
            let i = c.interval(age, 1.0).expect("ends are expected");
            assert!((9.0..13.0).contains(&i), "interval at {age}: {i}");
            // Four times the price, twice the interval.
            let i4 = c.interval(age, 4.0).expect("ends are expected");
            assert!((1.8..2.2).contains(&(i4 / i)), "{i4} / {i}");
        }
    }

    #[test]
    fn polls_gather_where_ends_are_likely_and_thin_out_in_the_long_tail() {
        let c = histogram(&quantiles(700, lognormal(120.0, 1.0))).curve();
        let at = |age: f64| c.interval(age, 1.0).unwrap_or(f64::INFINITY);
        let (start, peak, tail) = (at(2.0), at(120.0), at(2_000.0));
        assert!(peak < start, "fresh jobs rarely end: {peak} < {start}");
        assert!(peak < tail, "the long tail is polled less: {peak} < {tail}");
        assert!((10.0..25.0).contains(&peak), "{peak}");
        assert_eq!(c.interval(2e6, 1.0), None, "past every end seen");
    }

    #[test]
    fn the_history_follows_a_change_within_days() {
        let mut h = histogram(&quantiles(1_000, |_| 10.0));
        assert!(h.curve().survival(50.0) < 0.01);
        // Three days later jobs take ten times as long; 500 of them end.
        let later = 3 * HALF_LIFE.as_millis() as Millis;
        for d in quantiles(500, |_| 100.0) {
            h.add(d, later);
        }
        let s = h.curve().survival(50.0);
        assert!(s > 0.75, "S(50 s) after the change: {s}");
    }

    fn ended(kind: Kind, watched_at: Millis, took_ms: Millis) -> WatchRecord {
        WatchRecord {
            kind,
            watched_at,
            outcome: Some(Outcome::Succeeded),
            outcome_at: Some(watched_at + took_ms),
            next_poll_at: None,
            ..WatchRecord::sample(1)
        }
    }

    fn running(kind: Kind, watched_at: Millis) -> WatchRecord {
        WatchRecord {
            kind,
            watched_at,
            state: Some("RUNNING".into()),
            ..WatchRecord::sample(2)
        }
    }

    const MIN: Duration = Duration::from_secs(2);
    const MAX: Duration = Duration::from_secs(60);
    const PRICE: Duration = Duration::from_secs(1);

    #[test]
    fn with_too_little_history_there_is_no_learned_interval() {
        let h = History::new(None, 50);
        let kind = Kind::intern("history-few");
        for i in 0..49 {
            h.record(&ended(kind, 0, 60_000 + i * 1000));
        }
        let w = running(kind, 0);
        assert_eq!(h.interval(&w, 30_000, PRICE, MIN, MAX), None);
        // Outcomes that are not the job's end say nothing of durations.
        for outcome in [Outcome::TimedOut, Outcome::Cancelled, Outcome::NotFound] {
            let mut e = ended(kind, 0, 1);
            e.outcome = Some(outcome);
            h.record(&e);
        }
        assert_eq!(h.interval(&w, 30_000, PRICE, MIN, MAX), None);
        h.record(&ended(kind, 0, 60_000));
        let i = h.interval(&w, 30_000, PRICE, MIN, MAX).expect("50 ends");
        assert!(i >= MIN && i <= MAX, "{i:?}");
        assert!(h.learned(kind, Basis::Observed));
        assert!(!h.learned(kind, Basis::Upstream));
    }

    #[test]
    fn the_interval_is_a_function_of_the_time_given_and_clamped() {
        let h = History::new(None, 50);
        let kind = Kind::intern("history-clock");
        for d in quantiles(700, lognormal(120.0, 1.0)) {
            h.record(&ended(kind, 1_000_000, d.as_millis() as Millis));
        }
        let w = running(kind, 1_000_000);
        let at = |age_s: i64| h.interval(&w, 1_000_000 + age_s * 1000, PRICE, MIN, MAX);
        assert_eq!(at(120), at(120), "the same time, the same interval");
        let peak = at(120).expect("learned");
        assert!(peak > MIN && peak < Duration::from_secs(25), "{peak:?}");
        assert_eq!(at(3_000_000), Some(MAX), "past every end: the longest");
        let cheap = h.interval(&w, 1_120_000, Duration::from_millis(1), MIN, MAX);
        assert_eq!(cheap, Some(MIN), "a nearly free poll: the shortest");
        // A clock that went back: age 0, not a panic.
        assert!(h.interval(&w, 0, PRICE, MIN, MAX).is_some());
    }

    #[test]
    fn the_upstream_clock_is_used_when_the_job_says_when_it_began() {
        let h = History::new(None, 50);
        let kind = Kind::intern("history-upstream");
        let t0 = 1_700_000_000_000;
        let time = |ms: Millis| crate::view::rfc3339(ms);
        for i in 0..100 {
            // Watched an hour after the job was created; each ran 60 s.
            let mut e = ended(kind, t0 + 3_600_000, 60_000 + i);
            e.upstream = UpstreamFields {
                created: Some(time(t0)),
                started: None,
                ended: Some(time(t0 + 60_000)),
                errors: None,
            };
            h.record(&e);
        }
        assert!(h.learned(kind, Basis::Upstream));
        let mut w = running(kind, t0 + 3_600_000);
        // By jobwatch's clock a job of age 0 has a minute to go; by the upstream's,
        // posted 50 s after creation, it is about to end.
        w.upstream.created = Some(time(t0 + 3_600_000 - 55_000));
        let now = t0 + 3_600_000;
        let upstream = h.interval(&w, now, PRICE, MIN, MAX).expect("learned");
        w.upstream.created = None;
        let observed = h.interval(&w, now, PRICE, MIN, MAX).expect("learned");
        assert!(upstream < observed, "{upstream:?} < {observed:?}");
        // An unreadable time is as good as none.
        w.upstream.created = Some("yesterday".into());
        assert_eq!(h.interval(&w, now, PRICE, MIN, MAX), Some(observed));
    }

    #[test]
    fn a_metadata_key_splits_the_history_up_to_a_bound() {
        let h = History::new(Some("model".into()), 50);
        let kind = Kind::intern("history-groups");
        let with = |mut w: WatchRecord, model: serde_json::Value| {
            w.metadata = Some(serde_json::json!({ "model": model }));
            w
        };
        for i in 0..100 {
            h.record(&with(ended(kind, 0, 10_000 + i), "small".into()));
            h.record(&with(ended(kind, 0, 600_000 + i), "large".into()));
        }
        let small = with(running(kind, 0), "small".into());
        let large = with(running(kind, 0), "large".into());
        let plain = running(kind, 0);
        let at = |w: &WatchRecord| h.interval(w, 9_000, PRICE, MIN, MAX).expect("learned");
        assert!(
            at(&small) < at(&large),
            "{:?} < {:?}",
            at(&small),
            at(&large)
        );
        // The kind's own summary has every end, and serves watches without the key.
        assert_eq!(h.summary(kind, "").map(|s| s.observed.ends()), Some(200));
        let _ = at(&plain);
        // A value with too few ends of its own uses the kind's.
        let new = with(running(kind, 0), "new".into());
        h.record(&with(ended(kind, 0, 10_000), "new".into()));
        assert_eq!(at(&new), at(&plain));
        // Clients cannot grow the table without bound.
        for i in 0..(MAX_GROUPS * 2) {
            h.record(&with(ended(kind, 0, 1_000), serde_json::json!(i)));
        }
        assert_eq!(h.kinds()[0].groups, MAX_GROUPS);
        // Objects are no group; long values are cut.
        assert_eq!(
            h.group_of(&with(running(kind, 0), serde_json::json!({}))),
            None
        );
        let long = h.group_of(&with(running(kind, 0), "é".repeat(100).into()));
        assert!(long.is_some_and(|g| g.len() <= GROUP_VALUE_MAX));
    }

    #[test]
    fn changed_summaries_are_handed_over_once_and_again_after_a_failed_write() {
        let h = History::new(None, 50);
        let kind = Kind::intern("history-dirty");
        h.record(&ended(kind, 0, 5_000));
        let rows = h.take_changed();
        assert_eq!(rows.len(), 1);
        assert!(h.take_changed().is_empty());
        h.unsaved(&rows);
        assert_eq!(h.take_changed(), rows);
        // What is loaded reads as what was saved.
        let loaded = History::new(None, 50);
        loaded.load(rows.clone());
        let bytes = |h: &History| h.summary(kind, "").map(|s| s.to_bytes());
        assert_eq!(bytes(&loaded), bytes(&h));
        assert!(loaded.take_changed().is_empty(), "loaded is not changed");
        // A row that does not read is skipped.
        let broken = History::new(None, 50);
        broken.load(vec![StoredDurations {
            summary: vec![9, 9],
            ..rows[0].clone()
        }]);
        assert_eq!(broken.summary(kind, ""), None);
    }
}
