//! The job model: what a job `(kind, id)` answers at a given time.
//!
//! A job's profile (when it becomes visible, how long it runs, how it ends) is a pure function
//! of `(seed, kind, id)` and the options, so a run can be replayed; only the moment the
//! simulator first saw the job is state, kept in a sharded table.
//!
//! A job's life is told in Vector's words (PENDING, RUNNING, PAUSED for a value the API does
//! not document); how it ends is told in the served shape's own values (`Shape::translate`
//! turns the Vector end an id prefix or `--mix` names into the shape's, `end-<value>-` names
//! the shape's value directly). Every shape but vector has one kind of job, hashed as `copy`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::durations::{per_kind, Distribution};
use super::shapes::Shape;
use super::SimulateArgs;

/// The two kinds of Vector jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Copy,
    Delete,
}

impl Kind {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "copy" => Some(Self::Copy),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }

    /// The JSON:API `type` of this kind's status document.
    pub(crate) fn job_type(self) -> &'static str {
        match self {
            Self::Copy => "copy_job",
            Self::Delete => "delete_job",
        }
    }

    /// The kind as `polls_of` and `job_end` name it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::Delete => "delete",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Copy => 0,
            Self::Delete => 1,
        }
    }
}

/// One entry of `--mix`: a final state, whether its `errors` list is non-empty, its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixEntry {
    pub state: String,
    pub errors: bool,
    pub weight: u32,
}

/// The distribution of final states of ids without a behaviour prefix, written
/// `STATE[+errors]=weight,...` (e.g. `SUCCESS=70,DONE+errors=4,FAILED=6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeMix {
    entries: Vec<MixEntry>,
    total: u64,
}

impl OutcomeMix {
    pub fn entries(&self) -> &[MixEntry] {
        &self.entries
    }

    /// The entry a uniform 64-bit draw lands on.
    fn pick(&self, draw: u64) -> Option<&MixEntry> {
        if self.total == 0 {
            return None;
        }
        let mut x = draw % self.total;
        for e in &self.entries {
            let w = u64::from(e.weight);
            if x < w {
                return Some(e);
            }
            x -= w;
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid outcome mix `{input}`: {reason} (expected `STATE[+errors]=weight,...`)")]
pub struct ParseMixError {
    input: String,
    reason: String,
}

impl FromStr for OutcomeMix {
    type Err = ParseMixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| ParseMixError {
            input: s.to_string(),
            reason,
        };
        let mut entries = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| fail(format!("`{part}` has no `=weight`")))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|e| fail(format!("weight of `{part}`: {e}")))?;
            let name = name.trim();
            let (state, errors) = match name.split_once('+') {
                Some((state, "errors")) => (state, true),
                Some(_) => {
                    return Err(fail(format!("`{name}`: only `+errors` may follow a state")))
                }
                None => (name, false),
            };
            if state.is_empty()
                || !state
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(fail(format!("`{state}` is not a state name")));
            }
            entries.push(MixEntry {
                state: state.to_string(),
                errors,
                weight,
            });
        }
        let total = entries.iter().map(|e| u64::from(e.weight)).sum();
        if total == 0 {
            return Err(fail("the weights add up to 0".to_string()));
        }
        Ok(Self { entries, total })
    }
}

impl fmt::Display for OutcomeMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let errors = if e.errors { "+errors" } else { "" };
            write!(f, "{}{errors}={}", e.state, e.weight)?;
        }
        Ok(())
    }
}

/// How a job behaves over its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate<'a> {
    /// PENDING, RUNNING, then `state` for ever after its running time: the served shape's own
    /// final value (for vector, the state and whether `errors` is non-empty; the other shapes
    /// never set `errors`).
    Finish {
        state: &'a str,
        errors: bool,
    },
    /// This state from the start, for ever: [`PENDING`], [`RUNNING`] or [`UNKNOWN`].
    Forever(&'static str),
    NotFound,
    BadRequest,
}

/// Everything about a job that does not depend on when it was first seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Profile<'a> {
    /// 404 for this long after first sight (`notyet-`); the job's own clock starts after it.
    pub visible_after: Duration,
    pub running: Duration,
    pub fate: Fate<'a>,
}

/// What a job looks like at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Observation<'a> {
    NotFound,
    NotYetVisible,
    BadRequest,
    Job(Snapshot<'a>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Snapshot<'a> {
    pub state: &'a str,
    pub created: SystemTime,
    pub started: Option<SystemTime>,
    pub ended: Option<SystemTime>,
    pub errors: bool,
}

/// The text of the one error a job that ends "with errors" reports.
pub(crate) const JOB_ERROR: &str = "simulated error: some features could not be processed";

/// The state of a job that has not started yet.
pub(crate) const PENDING: &str = "PENDING";
/// The state of a job that has started and not ended.
pub(crate) const RUNNING: &str = "RUNNING";
/// The state of an `unknown-` job: a value the contract does not document.
pub(crate) const UNKNOWN: &str = "PAUSED";

/// Where a job is in its life, for the shapes to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase<'a> {
    Pending,
    Running,
    /// In a state the API does not document (`unknown-`), for ever.
    Unknown,
    /// Ended with this final value of the served shape.
    Ended(&'a str),
}

impl<'a> Snapshot<'a> {
    pub(crate) fn phase(&self) -> Phase<'a> {
        if self.ended.is_some() {
            return Phase::Ended(self.state);
        }
        match self.state {
            PENDING => Phase::Pending,
            RUNNING => Phase::Running,
            _ => Phase::Unknown,
        }
    }
}

impl<'a> Profile<'a> {
    /// The job as seen at `now`, when first seen at `seen`.
    pub(crate) fn at(&self, seen: SystemTime, now: SystemTime) -> Observation<'a> {
        let since_seen = now.duration_since(seen).unwrap_or_default();
        match self.fate {
            Fate::NotFound => return Observation::NotFound,
            Fate::BadRequest => return Observation::BadRequest,
            _ if since_seen < self.visible_after => return Observation::NotYetVisible,
            _ => {}
        }
        let created = seen + self.visible_after;
        let elapsed = since_seen - self.visible_after;
        let snapshot = |state, started, ended, errors| {
            Observation::Job(Snapshot {
                state,
                created,
                started,
                ended,
                errors,
            })
        };
        match self.fate {
            Fate::Forever(state @ PENDING) => snapshot(state, None, None, false),
            Fate::Forever(state) => snapshot(state, Some(created), None, false),
            Fate::Finish { state, errors } => {
                // Real jobs queue for a while before they start.
                let pending_for = self.running / 5;
                let started = created + pending_for;
                if elapsed < pending_for {
                    snapshot(PENDING, None, None, false)
                } else if elapsed < self.running {
                    snapshot(RUNNING, Some(started), None, false)
                } else {
                    let ended = created + self.running;
                    snapshot(state, Some(started), Some(ended), errors)
                }
            }
            Fate::NotFound | Fate::BadRequest => unreachable!("handled above"),
        }
    }

    /// When the job ends, if it ends, given when it was first seen.
    pub(crate) fn end(&self, seen: SystemTime) -> Option<SystemTime> {
        match self.fate {
            Fate::Finish { .. } => Some(seen + self.visible_after + self.running),
            _ => None,
        }
    }
}

/// Turns `(kind, id)` into a profile, from the options.
#[derive(Debug)]
pub(crate) struct JobModel {
    shape: Shape,
    seed: u64,
    min_running: Duration,
    max_running: Duration,
    /// The running-time distribution of copy and delete jobs (`--durations`).
    durations: [Distribution; 2],
    not_yet_for: Duration,
    mix: OutcomeMix,
    not_found: HashSet<String>,
    bad_request: HashSet<String>,
}

impl JobModel {
    pub(crate) fn new(args: &SimulateArgs) -> Self {
        let (min_running, max_running) = if args.min_running <= args.max_running {
            (args.min_running, args.max_running)
        } else {
            (args.max_running, args.min_running)
        };
        Self {
            shape: args.shape,
            seed: args.seed,
            min_running,
            max_running,
            durations: per_kind(&args.durations),
            not_yet_for: args.not_yet_for,
            mix: args.mix.clone(),
            not_found: args.not_found_ids.iter().cloned().collect(),
            bad_request: args.bad_request_ids.iter().cloned().collect(),
        }
    }

    pub(crate) fn profile(&self, kind: Kind, id: &str) -> Profile<'_> {
        let h = stable_hash(self.seed, kind, id);
        let running = self.running_time(kind, splitmix64(h ^ 0x5255_4e4e_494e_4700));
        let mut visible_after = Duration::ZERO;
        let fate = if self.not_found.contains(id) {
            Fate::NotFound
        } else if self.bad_request.contains(id) {
            Fate::BadRequest
        } else {
            let mut rest = id;
            if let Some(r) = rest.strip_prefix("notyet-") {
                visible_after = self.not_yet_for;
                rest = r;
            }
            let (prefix, after) = rest.split_once('-').unwrap_or(("", rest));
            match prefix {
                "succeed" => self.ends("SUCCESS", false),
                "done" => self.ends("DONE", false),
                "doneerr" => self.ends("DONE", true),
                "successerr" => self.ends("SUCCESS", true),
                "failed" => self.ends("FAILED", false),
                "failure" => self.ends("FAILURE", false),
                "unknown" => Fate::Forever(UNKNOWN),
                "pending" => Fate::Forever(PENDING),
                "running" => Fate::Forever(RUNNING),
                "notfound" => Fate::NotFound,
                "badrequest" => Fate::BadRequest,
                // `end-<value>-<rest>`: the shape's own terminal value, as written. A value
                // the shape does not have makes no prefix, like any other unknown prefix.
                "end" => match after
                    .split_once('-')
                    .and_then(|(value, _)| self.shape.terminal_value(value))
                {
                    Some(value) => finish(value, false),
                    None => self.drawn(h),
                },
                _ => self.drawn(h),
            }
        };
        Profile {
            visible_after,
            running,
            fate,
        }
    }

    /// A Vector end, as the served shape ends.
    fn ends<'a>(&'a self, state: &'a str, errors: bool) -> Fate<'a> {
        let (state, errors) = self.shape.translate(state, errors);
        Fate::Finish { state, errors }
    }

    /// The end `--mix` draws for an id without a behaviour prefix.
    fn drawn(&self, h: u64) -> Fate<'_> {
        match self.mix.pick(splitmix64(h ^ 0x4f55_5443_4f4d_4500)) {
            Some(e) => self.ends(&e.state, e.errors),
            None => self.ends("SUCCESS", false),
        }
    }

    /// From the kind's `--durations` (uniform in `[min_running, max_running]` by default).
    fn running_time(&self, kind: Kind, draw: u64) -> Duration {
        self.durations[kind.index()].draw(draw, (self.min_running, self.max_running))
    }
}

fn finish(state: &'static str, errors: bool) -> Fate<'static> {
    Fate::Finish { state, errors }
}

/// FNV-1a over the seed, the kind and the id, finished with a SplitMix64 round so that ids
/// that differ in one character still land far apart. Stable across runs and platforms, unlike
/// std's `RandomState`.
pub(crate) fn stable_hash(seed: u64, kind: Kind, id: &str) -> u64 {
    let mut h = fnv1a(0xcbf2_9ce4_8422_2325, &seed.to_le_bytes());
    h = fnv1a(h, &[kind.index() as u8, 0xff]);
    h = fnv1a(h, id.as_bytes());
    splitmix64(h)
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A job's mutable state: when the simulator first saw it (or last created it), and how many
/// status requests it got.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub seen: SystemTime,
    pub polls: u64,
}

#[derive(Default)]
struct Shard {
    by_kind: [HashMap<String, Entry>; 2],
}

/// Jobs seen so far, sharded so that concurrent requests rarely wait on the same lock; each
/// lock is held for one map operation, never across an await.
pub(crate) struct JobTable {
    shards: Box<[Mutex<Shard>]>,
}

const SHARDS: usize = 32;

impl JobTable {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, id: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = (fnv1a(0xcbf2_9ce4_8422_2325, id.as_bytes()) as usize) % SHARDS;
        // A panic while holding a shard cannot leave an entry half-written: recover the data.
        self.shards[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a status request of the job and returns when it was first seen (now, if never).
    pub(crate) fn poll(&self, kind: Kind, id: &str, now: SystemTime) -> SystemTime {
        let mut shard = self.shard(id);
        let map = &mut shard.by_kind[kind.index()];
        if let Some(e) = map.get_mut(id) {
            e.polls += 1;
            e.seen
        } else {
            map.insert(
                id.to_string(),
                Entry {
                    seen: now,
                    polls: 1,
                },
            );
            now
        }
    }

    /// (Re)starts the job's clock at `now`: a new copy or delete of a product is a new job.
    pub(crate) fn start(&self, kind: Kind, id: &str, now: SystemTime) {
        let mut shard = self.shard(id);
        let map = &mut shard.by_kind[kind.index()];
        match map.get_mut(id) {
            Some(e) => e.seen = now,
            None => {
                map.insert(
                    id.to_string(),
                    Entry {
                        seen: now,
                        polls: 0,
                    },
                );
            }
        }
    }

    pub(crate) fn get(&self, kind: Kind, id: &str) -> Option<Entry> {
        self.shard(id).by_kind[kind.index()].get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(seed: u64) -> JobModel {
        JobModel::new(&SimulateArgs {
            seed,
            min_running: Duration::from_millis(100),
            max_running: Duration::from_millis(300),
            ..SimulateArgs::default()
        })
    }

    #[test]
    fn the_same_seed_gives_the_same_profile_and_another_seed_another() {
        let (a, b, c) = (model(7), model(7), model(8));
        let mut differ = 0;
        for i in 0..200 {
            let id = format!("job-{i}");
            assert_eq!(a.profile(Kind::Copy, &id), b.profile(Kind::Copy, &id));
            if a.profile(Kind::Copy, &id) != c.profile(Kind::Copy, &id) {
                differ += 1;
            }
        }
        assert!(
            differ > 150,
            "only {differ} of 200 profiles changed with the seed"
        );
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // Pinned so that a change of the hash (which would change every seeded run) is noticed.
        assert_eq!(
            stable_hash(0, Kind::Copy, "abc"),
            stable_hash(0, Kind::Copy, "abc")
        );
        assert_ne!(
            stable_hash(0, Kind::Copy, "abc"),
            stable_hash(0, Kind::Delete, "abc")
        );
        assert_eq!(fnv1a(0xcbf2_9ce4_8422_2325, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn running_times_are_within_bounds_and_spread() {
        let m = model(1);
        let times: Vec<Duration> = (0..500)
            .map(|i| m.profile(Kind::Delete, &format!("x{i}")).running)
            .collect();
        assert!(times
            .iter()
            .all(|t| *t >= Duration::from_millis(100) && *t <= Duration::from_millis(300)));
        let low = times
            .iter()
            .filter(|t| **t < Duration::from_millis(200))
            .count();
        assert!((175..325).contains(&low), "{low} of 500 below the median");
    }

    #[test]
    fn the_default_mix_is_roughly_followed() {
        let m = model(3);
        let n = 10_000;
        let mut success = 0;
        let mut failed = 0;
        for i in 0..n {
            match m.profile(Kind::Copy, &format!("{i:x}")).fate {
                Fate::Finish {
                    state: "SUCCESS",
                    errors: false,
                } => success += 1,
                Fate::Finish {
                    state: "FAILED", ..
                } => failed += 1,
                _ => {}
            }
        }
        assert!((6700..7300).contains(&success), "{success}");
        assert!((450..750).contains(&failed), "{failed}");
    }

    #[test]
    fn prefixes_choose_the_fate() {
        let m = model(0);
        let fate = |id: &str| m.profile(Kind::Copy, id).fate;
        assert_eq!(fate("succeed-1"), finish("SUCCESS", false));
        assert_eq!(fate("doneerr-1"), finish("DONE", true));
        assert_eq!(fate("successerr-1"), finish("SUCCESS", true));
        assert_eq!(fate("failure-1"), finish("FAILURE", false));
        assert_eq!(fate("unknown-1"), Fate::Forever("PAUSED"));
        assert_eq!(fate("notfound-1"), Fate::NotFound);
        assert_eq!(fate("badrequest-x"), Fate::BadRequest);
        let p = m.profile(Kind::Copy, "notyet-failed-1");
        assert_eq!(p.fate, finish("FAILED", false));
        assert_eq!(p.visible_after, SimulateArgs::default().not_yet_for);
    }

    #[test]
    fn a_job_is_pending_then_running_then_final() {
        let m = model(0);
        let p = m.profile(Kind::Copy, "failed-a");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let state = |after: Duration| match p.at(t0, t0 + after) {
            Observation::Job(s) => s.state,
            other => panic!("{other:?}"),
        };
        assert_eq!(state(Duration::ZERO), "PENDING");
        assert_eq!(state(p.running / 2), "RUNNING");
        assert_eq!(state(p.running), "FAILED");
        assert_eq!(p.end(t0), Some(t0 + p.running));
    }

    fn shaped(shape: Shape, mix: &str) -> JobModel {
        JobModel::new(&SimulateArgs {
            shape,
            mix: mix.parse().unwrap(),
            ..SimulateArgs::default()
        })
    }

    #[test]
    fn other_shapes_translate_prefixes_and_mix_entries_into_their_values() {
        let m = shaped(Shape::OpenaiBatch, "SUCCESS=1");
        let fate = |id: &str| m.profile(Kind::Copy, id).fate;
        assert_eq!(fate("succeed-1"), finish("completed", false));
        assert_eq!(fate("done-1"), finish("completed", false));
        for id in ["doneerr-1", "successerr-1", "failed-1", "failure-1"] {
            assert_eq!(fate(id), finish("failed", false), "{id}");
        }
        // The life states stay the model's; the shape renders them.
        assert_eq!(fate("unknown-1"), Fate::Forever(UNKNOWN));
        assert_eq!(fate("pending-1"), Fate::Forever(PENDING));
        assert_eq!(fate("any-id"), finish("completed", false));
        for (shape, mix, end) in [
            (Shape::GithubActions, "DONE+errors=1", "failure"),
            (Shape::Replicate, "FAILURE=1", "failed"),
            (Shape::GoogleLro, "DONE=1", "response"),
            // A name that is no Vector end is the shape's own value.
            (Shape::OpenaiBatch, "expired=1", "expired"),
            (Shape::Vector, "DONE+errors=1", "DONE"),
        ] {
            let m = shaped(shape, mix);
            let errors = shape == Shape::Vector;
            assert_eq!(
                m.profile(Kind::Copy, "x").fate,
                finish(end, errors),
                "{shape} {mix}"
            );
        }
    }

    #[test]
    fn end_names_the_shapes_own_terminal_value() {
        for (shape, value) in [
            (Shape::Vector, "DONE"),
            (Shape::Vector, "FAILURE"),
            (Shape::GoogleLro, "error"),
            (Shape::OpenaiBatch, "cancelled"),
            (Shape::Replicate, "aborted"),
            (Shape::GithubActions, "timed_out"),
            (Shape::GithubActions, "startup_failure"),
        ] {
            let m = shaped(shape, "SUCCESS=1");
            let p = m.profile(Kind::Copy, &format!("end-{value}-x"));
            assert_eq!(p.fate, finish(value, false), "{shape} {value}");
            let p = m.profile(Kind::Copy, &format!("notyet-end-{value}-x"));
            assert_eq!(p.fate, finish(value, false), "{shape} notyet {value}");
            assert!(p.visible_after > Duration::ZERO);
        }
        // A value the shape does not have (or no value) makes no prefix: the mix decides.
        let m = shaped(Shape::OpenaiBatch, "FAILED=1");
        for id in ["end-SUCCESS-x", "end-bogus-x", "end-completed", "end--x"] {
            assert_eq!(
                m.profile(Kind::Copy, id).fate,
                finish("failed", false),
                "{id}"
            );
        }
        let m = shaped(Shape::Vector, "FAILED=1");
        assert_eq!(
            m.profile(Kind::Copy, "end-completed-x").fate,
            finish("FAILED", false)
        );
    }

    #[test]
    fn a_snapshot_tells_its_phase() {
        let m = shaped(Shape::Replicate, "SUCCESS=1");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let phase = |id: &str, after: Duration| match m.profile(Kind::Copy, id).at(t0, t0 + after) {
            Observation::Job(s) => s.phase(),
            other => panic!("{other:?}"),
        };
        let p = m.profile(Kind::Copy, "end-canceled-a");
        assert_eq!(phase("end-canceled-a", Duration::ZERO), Phase::Pending);
        assert_eq!(phase("end-canceled-a", p.running / 2), Phase::Running);
        assert_eq!(phase("end-canceled-a", p.running), Phase::Ended("canceled"));
        assert_eq!(phase("unknown-a", Duration::from_secs(99)), Phase::Unknown);
        assert_eq!(phase("running-a", Duration::from_secs(99)), Phase::Running);
        assert_eq!(phase("pending-a", Duration::from_secs(99)), Phase::Pending);
    }

    #[test]
    fn mixes_parse_and_print() {
        let mix: OutcomeMix = "SUCCESS=1, DONE+errors=2".parse().unwrap();
        assert_eq!(mix.to_string(), "SUCCESS=1,DONE+errors=2");
        assert!("SUCCESS".parse::<OutcomeMix>().is_err());
        assert!("SUCCESS=0".parse::<OutcomeMix>().is_err());
        assert!("SUCCESS+warnings=1".parse::<OutcomeMix>().is_err());
        assert!("a b=1".parse::<OutcomeMix>().is_err());
    }
}
