//! What jobwatch has learned of how long jobs take, and the learned cadence that
//! follows from it.
//!
//! Per kind (and per value of the metadata key `poller.learn_by`, when one is
//! named) a [`Summary`] holds two small tables of how jobs ended by age: on
//! jobwatch's clock (from the watch's start to the outcome it decided) and on the
//! upstream's (from its `created`, else `started`, to its `ended`) where the kind
//! reports those. Each table has [`BINS`] log-spaced age bins, and for each the
//! ends seen at that age and the time jobs were watched running at that age (the
//! exposure): the hazard of a bin is ends / exposure, the piecewise-exponential
//! estimate. Counting the exposure of jobs still running, not only the durations
//! of those that ended, matters: a batch posted at once ends shortest first, and
//! from its ends alone the jobs still running would look about to end (a
//! survivor bias that cost a batch 40% more polls in the cadence study).
//!
//! Every poll adds its stretch of exposure and every end its end, weighed by age
//! ([`HALF_LIFE`]), so a summary is about a kilobyte whatever the number of jobs
//! and follows an upstream that changed. The summaries live in memory and reach
//! the store at checkpoints and at shutdown: a statistic, so what `kill -9`
//! loses since the last checkpoint costs nothing that was acknowledged.
//!
//! From a table comes the next poll of a running job ([`Curve::interval`]): polls
//! spaced by Keller's optimal checking density `n(t) = sqrt(h(t) / 2c)`, where `c`
//! is the price of a poll in seconds of detection delay (`poller.poll_price`).
//! docs/cadence.md has the derivation.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use crate::model::{Kind, Outcome};
use crate::store::{Millis, StoredDurations, WatchRecord};

/// Age bins per table: the first from 0 to 0.126 s, then ten per decade up to a
/// million seconds (11.6 days); the last takes every older age.
pub const BINS: usize = 70;
const PER_DECADE: f64 = 10.0;
const FLOOR_SECS: f64 = 0.1;
/// What an observation weighs halves every day: a summary follows an upstream
/// that changed within a day or two. By time, not by number of ends: a batch
/// posted at once ends shortest first, and a decay by count would weigh its
/// last (longest) jobs more than its first.
pub const HALF_LIFE: Duration = Duration::from_secs(86_400);
/// Values of the `poller.learn_by` key with a summary of their own, per kind;
/// further values count for the kind only. Keeps memory and the table bounded
/// whatever clients put in their metadata.
pub const MAX_GROUPS: usize = 64;
/// A group value longer than this is cut (it is a name, not a payload).
const GROUP_VALUE_MAX: usize = 64;
/// Version byte of the stored form.
const FORMAT: u8 = 1;
/// Bytes of one table stored: its end count, its time, ends and exposure per bin.
const TABLE_LEN: usize = 4 + 8 + 2 * 4 * BINS;
/// Bytes of the stored form (1,145).
pub const STORED_LEN: usize = 1 + 2 * TABLE_LEN;
/// Weights are rescaled to the latest observation once it is this much later
/// than the last rescale (ms).
const RESCALE_AFTER: Millis = 3_600_000;
/// Exposure-only updates between two recomputations of a curve (an end always
/// recomputes): a curve a few dozen polls stale is as good, and recomputing at
/// every poll would cost every poll a few hundred nanoseconds.
const RECOMPUTE_EVERY: u32 = 64;

/// The bin edges, computed once: every poll looks a few up.
static EDGES: std::sync::LazyLock<[f64; BINS + 1]> = std::sync::LazyLock::new(|| {
    let mut e = [0.0; BINS + 1];
    for (j, v) in e.iter_mut().enumerate().skip(1) {
        *v = FLOOR_SECS * 10f64.powf(j as f64 / PER_DECADE);
    }
    e
});

/// Seconds at the lower edge of bin `j` (`j = BINS` is the upper edge of the last;
/// bin 0 starts at 0).
fn edge(j: usize) -> f64 {
    EDGES[j.min(BINS)]
}

/// The bin of age `t` seconds.
fn bin(t: f64) -> usize {
    if t < edge(1) {
        return 0;
    }
    let j = ((t / FLOOR_SECS).log10() * PER_DECADE).floor().max(0.0) as usize;
    // The float may land a hair either side of an edge.
    let j = j.clamp(1, BINS - 1);
    if t < edge(j) {
        j - 1
    } else if j + 1 < BINS && t >= edge(j + 1) {
        j + 1
    } else {
        j
    }
}

/// What an observation of `age_ms` ago weighs now.
fn decayed(age_ms: Millis) -> f64 {
    (0.5f64).powf(age_ms as f64 / HALF_LIFE.as_millis() as f64)
}

/// Ends and exposure by age, decaying with time.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Ends seen at an age in each bin (decayed).
    ends: [f64; BINS],
    /// Seconds jobs were watched running at an age in each bin (decayed).
    exposure: [f64; BINS],
    /// Ends counted, undecayed (for status; saturating).
    count: u32,
    /// The time the weights are decayed to (at most an hour before the latest
    /// observation).
    as_of: Millis,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            ends: [0.0; BINS],
            exposure: [0.0; BINS],
            count: 0,
            as_of: 0,
        }
    }
}

impl Table {
    /// The weight of an observation made at `at`, relative to `as_of`. The
    /// weights are rescaled to a later `as_of` only once an hour has passed: a
    /// poll adds to a bin or two, and rescaling all of them at every poll would
    /// cost each poll a hundred and forty multiplications. So a weight can be a
    /// few percent above one: only ratios of weights (hazards) and the threshold
    /// `learn_after` read them.
    fn weigh(&mut self, at: Millis) -> f64 {
        if at - self.as_of > RESCALE_AFTER {
            let k = decayed(at - self.as_of);
            for w in self.ends.iter_mut().chain(self.exposure.iter_mut()) {
                *w *= k;
            }
            self.as_of = at;
        }
        // Newer than `as_of` weighs more, older less.
        (2f64).powf((at - self.as_of) as f64 / HALF_LIFE.as_millis() as f64)
    }

    /// A job was watched running from age `from` to age `to` (seconds), observed at `at`.
    pub fn running(&mut self, from: f64, to: f64, at: Millis) {
        let (from, to) = (from.max(0.0), to.max(0.0));
        if to <= from {
            return;
        }
        let w = self.weigh(at);
        let (first, last) = (bin(from), bin(to));
        for j in first..=last {
            let lo = edge(j).max(from);
            let hi = if j + 1 < BINS {
                edge(j + 1).min(to)
            } else {
                to
            };
            if hi > lo {
                self.exposure[j] += w * (hi - lo);
            }
        }
    }

    /// A job watched from age `from` ended at age `end` (seconds), observed at `at`.
    pub fn ended(&mut self, from: f64, end: f64, at: Millis) {
        self.running(from, end, at);
        let w = self.weigh(at);
        self.ends[bin(end.max(0.0))] += w;
        self.count = self.count.saturating_add(1);
    }

    /// The decayed number of ends it holds (as of within an hour of its latest
    /// observation).
    pub fn weight(&self) -> f64 {
        self.ends.iter().sum()
    }

    pub fn ends(&self) -> u32 {
        self.count
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.as_of.to_le_bytes());
        for w in self.ends.iter().chain(self.exposure.iter()) {
            // Four bytes a number: a statistic needs no more than f32's seven digits.
            out.extend_from_slice(&(*w as f32).to_le_bytes());
        }
    }

    fn read(bytes: &[u8]) -> Option<(Table, &[u8])> {
        let (count, rest) = bytes.split_first_chunk::<4>()?;
        let (as_of, mut rest) = rest.split_first_chunk::<8>()?;
        let mut t = Table {
            count: u32::from_le_bytes(*count),
            as_of: i64::from_le_bytes(*as_of),
            ..Table::default()
        };
        for w in t.ends.iter_mut().chain(t.exposure.iter_mut()) {
            let (b, r) = rest.split_first_chunk::<4>()?;
            let v = f32::from_le_bytes(*b);
            // Stored by us, but a file is outside data all the same.
            if !(v.is_finite() && v >= 0.0) {
                return None;
            }
            *w = f64::from(v);
            rest = r;
        }
        Some((t, rest))
    }

    /// The hazard and the cadence's cumulative density of this table.
    pub fn curve(&self) -> Curve {
        Curve::of(self)
    }
}

/// The hazard per bin and Λ(t) = ∫ sqrt(h) at the bin edges. Ends and exposure
/// go through a [1, 2, 1] / 4 kernel first, so that a few dozen ends give a
/// usable hazard (an empty bin between two full ones would otherwise read as
/// "nothing ends here" and skip polls over it).
#[derive(Debug, Clone)]
pub struct Curve {
    /// sqrt of the hazard within each bin (per second, square-rooted).
    root_hazard: [f64; BINS],
    /// Λ at each edge.
    lambda: [f64; BINS + 1],
}

impl Curve {
    fn of(t: &Table) -> Curve {
        // Reflecting ends: the kernel keeps the totals.
        let smooth = |v: &[f64; BINS], i: usize| {
            let at = |k: isize| v[k.clamp(0, BINS as isize - 1) as usize];
            let i = i as isize;
            (at(i - 1) + 2.0 * at(i) + at(i + 1)) / 4.0
        };
        let mut root_hazard = [0.0; BINS];
        let mut lambda = [0.0; BINS + 1];
        for j in 0..BINS {
            let (ends, exposure) = (smooth(&t.ends, j), smooth(&t.exposure, j));
            let h = if exposure > 0.0 { ends / exposure } else { 0.0 };
            root_hazard[j] = h.sqrt();
            lambda[j + 1] = lambda[j] + root_hazard[j] * (edge(j + 1) - edge(j));
        }
        Curve {
            root_hazard,
            lambda,
        }
    }

    /// ∫_0^t sqrt(h), the last bin's hazard going on past the last edge.
    fn lambda(&self, t: f64) -> f64 {
        let j = bin(t.max(0.0));
        self.lambda[j] + self.root_hazard[j] * (t - edge(j)).max(0.0)
    }

    /// The chance per second that a job running at age `t` seconds ends now.
    pub fn hazard(&self, t: f64) -> f64 {
        self.root_hazard[bin(t.max(0.0))].powi(2)
    }

    /// The share of jobs still running at age `t` seconds: exp(-∫_0^t h).
    pub fn survival(&self, t: f64) -> f64 {
        let t = t.max(0.0);
        let j = bin(t);
        let mut cumulative = 0.0;
        for k in 0..j {
            cumulative += self.root_hazard[k].powi(2) * (edge(k + 1) - edge(k));
        }
        cumulative += self.root_hazard[j].powi(2) * (t - edge(j));
        (-cumulative).exp()
    }

    /// Seconds from age `age` to the next poll, polls spaced by Keller's density
    /// `sqrt(h / 2c)` with `price` = c seconds: the next poll is where
    /// `Λ(t) - Λ(age)` reaches `sqrt(2c)`. `None` when no end is expected from
    /// here on (nothing ended at these ages, or nobody was watched this old: the
    /// longest interval is right).
    pub fn interval(&self, age: f64, price: f64) -> Option<f64> {
        let age = age.max(0.0);
        let target = self.lambda(age) + (2.0 * price.max(0.0)).sqrt();
        for j in bin(age)..BINS {
            let reach = if j + 1 < BINS {
                self.lambda[j + 1]
            } else {
                f64::INFINITY
            };
            if reach >= target && self.root_hazard[j] > 0.0 {
                let from = edge(j).max(age);
                let t = from + (target - self.lambda(from)).max(0.0) / self.root_hazard[j];
                return Some((t - age).max(0.0));
            }
        }
        None
    }
}

/// The two tables of one kind (or one group of a kind).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Ages from the watch's start (`watched_at`), on jobwatch's clock.
    pub observed: Table,
    /// Ages from the upstream's `created` (else `started`), on its clock.
    pub upstream: Table,
}

impl Summary {
    /// The stored form: a version byte, then each table's end count, time, ends
    /// and exposure, little-endian ([`STORED_LEN`] bytes).
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
        let (observed, rest) = Table::read(rest)?;
        let (upstream, rest) = Table::read(rest)?;
        rest.is_empty().then_some(Summary { observed, upstream })
    }
}

/// A summary with its curves, kept nearly in step with it.
#[derive(Debug, Clone)]
struct Entry {
    summary: Summary,
    observed: Curve,
    upstream: Curve,
    /// Exposure-only updates since the curves were computed.
    stale: u32,
    /// Changed since it was last handed to the store.
    dirty: bool,
}

impl Entry {
    fn new(summary: Summary) -> Entry {
        Entry {
            observed: summary.observed.curve(),
            upstream: summary.upstream.curve(),
            summary,
            stale: 0,
            dirty: false,
        }
    }

    fn recompute(&mut self) {
        self.observed = self.summary.observed.curve();
        self.upstream = self.summary.upstream.curve();
        self.stale = 0;
    }
}

/// Which clock ages are read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// jobwatch's own: from the watch's start.
    Observed,
    /// The upstream's: from its `created` (else `started`).
    Upstream,
}

/// What the history holds for one kind, for `/v1/status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct KindHistory {
    pub kind: String,
    /// Ends counted (from the watch's start to its outcome), ever.
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

/// One poll's observation of a job, on both clocks.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// (from, to) ages in seconds, and whether the job ended at `to`.
    observed: Option<(f64, f64, bool)>,
    upstream: Option<(f64, f64, bool)>,
    at: Millis,
}

/// Every summary, shared by the pollers (they read it for each learned poll and
/// add to it at each poll) and the checkpoint loop (which stores what changed).
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
        // A panic while holding the lock leaves whole tables behind: keep going.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<(Kind, String), Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the summaries the store holds (at start). A row that does not read
    /// is skipped with a warning: the history is rebuilt from the next polls.
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

    /// What a poll of `w` (its values after the poll was decided) says, when the
    /// poll before it was at `previous` (`None`: the first).
    fn seen(w: &WatchRecord, previous: Option<Millis>) -> Option<Seen> {
        let ended_upstream = matches!(w.outcome, Some(Outcome::Succeeded | Outcome::Failed));
        let now = match w.outcome {
            Some(_) => w.outcome_at?,
            None => w.last_poll_at?,
        };
        let secs = |ms: Millis| ms as f64 / 1000.0;
        // jobwatch's clock: running from the watch's start until the outcome is
        // decided; an outcome that is no end (404, 400) only ends the watching.
        let since = previous.unwrap_or(w.watched_at);
        let observed = Some((
            secs(since - w.watched_at),
            secs(now - w.watched_at),
            ended_upstream,
        ));
        // The upstream's clock: from when it says the job began. Watching began at
        // the watch's start (an earlier end would not have been seen as one), and
        // an end is where the upstream puts it.
        let upstream = upstream_start(w).and_then(|start| {
            let from = secs(since.max(w.watched_at) - start).max(0.0);
            let end = ended_upstream
                .then(|| w.upstream.ended.as_deref().and_then(parse_time))
                .flatten();
            match (w.outcome, end) {
                (None, _) => Some((from, secs(now - start), false)),
                (Some(_), Some(end)) if secs(end - start) >= from => {
                    Some((from, secs(end - start), true))
                }
                // Seen running at the poll before by our clock, ended a little
                // before it by the upstream's: the two clocks (and the answer's
                // time in flight) disagree by that much. The end was seen in this
                // stretch: count it at its start.
                (Some(_), Some(_)) if previous.is_some() => Some((from, from, true)),
                // Ended before it was watched, or no end time: nothing to count.
                _ => None,
            }
        });
        Some(Seen {
            observed,
            upstream,
            at: now,
        })
    }

    /// Count what one poll of `w` saw: the stretch it was watched running since
    /// the poll before (`previous`), and its end if it ended upstream (succeeded
    /// or failed). Called for every poll whatever the cadence, so the history is
    /// ready when the learned one is switched on.
    pub fn observe(&self, w: &WatchRecord, previous: Option<Millis>) {
        let Some(seen) = History::seen(w, previous) else {
            return;
        };
        let ended = seen.observed.is_some_and(|o| o.2);
        let group = self.group_of(w);
        let mut entries = self.write();
        let groups = || {
            entries
                .keys()
                .filter(|(k, g)| *k == w.kind && !g.is_empty())
                .count()
        };
        let room = group.is_some() && groups() < MAX_GROUPS;
        for g in [Some(String::new()), group].into_iter().flatten() {
            let key = (w.kind, g);
            if !key.1.is_empty() && !room && !entries.contains_key(&key) {
                continue;
            }
            // Exposure counts from the first poll on, ends or not: the jobs still
            // running when the first ones end are what makes their hazard right.
            let e = entries
                .entry(key)
                .or_insert_with(|| Entry::new(Summary::default()));
            for (table, part) in [
                (&mut e.summary.observed, seen.observed),
                (&mut e.summary.upstream, seen.upstream),
            ] {
                match part {
                    Some((from, to, true)) => table.ended(from, to, seen.at),
                    Some((from, to, false)) => table.running(from, to, seen.at),
                    None => {}
                }
            }
            e.dirty = true;
            e.stale += 1;
            if ended || e.stale >= RECOMPUTE_EVERY {
                e.recompute();
            }
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
            let secs = curve
                .interval(age as f64 / 1000.0, price.as_secs_f64())
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
    // Infinite (no end expected) or NaN: the longest.
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

    /// A table of jobs watched from age 0 until they ended, all at time 0.
    fn table(durations: &[Duration]) -> Table {
        let mut t = Table::default();
        for d in durations {
            t.ended(0.0, d.as_secs_f64(), 0);
        }
        t
    }

    #[test]
    fn a_summary_is_about_a_kilobyte_whatever_it_counted_and_reads_back() {
        let mut s = Summary::default();
        for (i, d) in quantiles(5_000, exponential(60.0)).into_iter().enumerate() {
            s.observed.ended(0.0, d.as_secs_f64(), i as Millis);
            s.upstream.ended(1.0, d.as_secs_f64() / 2.0, i as Millis);
        }
        let bytes = s.to_bytes();
        assert_eq!(bytes.len(), STORED_LEN);
        assert!(bytes.len() < 1_200);
        // Weights are stored in four bytes: what reads back is the same to f32's precision.
        let back = Summary::from_bytes(&bytes).expect("reads back");
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.observed.ends(), 5_000);
        assert!((back.observed.weight() - s.observed.weight()).abs() < 0.01);
        // A day later one end weighs one, and the 5,000 before it half as much.
        let day = HALF_LIFE.as_millis() as Millis;
        s.observed.ended(0.0, 60.0, 4_999 + day);
        let w = s.observed.weight();
        assert!((2_500.0..2_502.0).contains(&w), "{w}");
        // An end older than the latest weighs by its age.
        s.observed.ended(0.0, 60.0, 4_999);
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
        let c = table(&quantiles(700, lognormal(120.0, 1.0))).curve();
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
        let c = table(&quantiles(700, exponential(60.0))).curve();
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
        let c = table(&quantiles(700, lognormal(120.0, 1.0))).curve();
        let at = |age: f64| c.interval(age, 1.0).unwrap_or(f64::INFINITY);
        let (start, peak, tail) = (at(2.0), at(120.0), at(2_000.0));
        assert!(peak < start, "fresh jobs rarely end: {peak} < {start}");
        assert!(peak < tail, "the long tail is polled less: {peak} < {tail}");
        assert!((10.0..25.0).contains(&peak), "{peak}");
        assert_eq!(c.interval(2e6, 1.0), None, "past every end seen");
    }

    #[test]
    fn the_history_follows_a_change_within_days() {
        let mut h = table(&quantiles(1_000, lognormal(10.0, 0.3)));
        let before = h.curve().survival(30.0);
        assert!(before < 0.03, "S(30 s) before: {before}");
        // Three days later jobs take ten times as long; 500 of them end.
        let later = 3 * HALF_LIFE.as_millis() as Millis;
        for d in quantiles(500, lognormal(100.0, 0.3)) {
            h.ended(0.0, d.as_secs_f64(), later);
        }
        let after = h.curve().survival(30.0);
        assert!(after > 0.7, "S(30 s) after the change: {after}");
    }

    /// Jobs posted together end shortest first: counting the exposure of those
    /// still running keeps the hazard at their age what it is, where the ends
    /// alone would make them look about to end.
    #[test]
    fn jobs_still_running_count_so_a_batch_does_not_skew_the_hazard() {
        let durations = quantiles(2_000, lognormal(120.0, 1.0));
        let full = table(&durations).curve();
        // Half-way through a batch of the same jobs: those that ended, and the
        // exposure of those still running, all at age 120 s.
        let mut half = Table::default();
        for d in &durations {
            let d = d.as_secs_f64();
            if d <= 120.0 {
                half.ended(0.0, d, 0);
            } else {
                half.running(0.0, 120.0, 0);
            }
        }
        let (a, b) = (full.hazard(100.0), half.curve().hazard(100.0));
        assert!((b / a - 1.0).abs() < 0.15, "h(100 s): {b} against {a}");
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
            h.observe(&ended(kind, 0, 60_000 + i * 1000), None);
        }
        let w = running(kind, 0);
        assert_eq!(h.interval(&w, 30_000, PRICE, MIN, MAX), None);
        // Outcomes that are not the job's end say nothing of durations.
        for outcome in [Outcome::TimedOut, Outcome::Cancelled, Outcome::NotFound] {
            let mut e = ended(kind, 0, 1);
            e.outcome = Some(outcome);
            h.observe(&e, None);
        }
        assert_eq!(h.interval(&w, 30_000, PRICE, MIN, MAX), None);
        h.observe(&ended(kind, 0, 60_000), None);
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
            h.observe(&ended(kind, 1_000_000, d.as_millis() as Millis), None);
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
            // Watched 10 s after the job was created; each ran 60 s.
            let mut e = ended(kind, t0 + 10_000, 50_000 + i);
            e.upstream = UpstreamFields {
                created: Some(time(t0)),
                started: None,
                ended: Some(time(t0 + 60_000)),
                errors: None,
            };
            h.observe(&e, None);
        }
        assert!(h.learned(kind, Basis::Upstream));
        let mut w = running(kind, t0 + 3_600_000);
        // By jobwatch's clock a job of age 0 has 50 s to go; by the upstream's,
        // posted 55 s after creation, it is about to end.
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
            h.observe(&with(ended(kind, 0, 10_000 + i), "small".into()), None);
            h.observe(&with(ended(kind, 0, 600_000 + i), "large".into()), None);
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
        h.observe(&with(ended(kind, 0, 10_000), "new".into()), None);
        assert_eq!(at(&new), at(&plain));
        // Clients cannot grow the table without bound.
        for i in 0..(MAX_GROUPS * 2) {
            h.observe(&with(ended(kind, 0, 1_000), serde_json::json!(i)), None);
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
        h.observe(&ended(kind, 0, 5_000), None);
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
