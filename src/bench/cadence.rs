//! `jobwatch bench --cadence-study`: the same jobs under three cadences, the seed
//! client's fixed 5 s, today's backoff and the learned one, each without a budget
//! and under one that binds; for each, polls per job and the detection delay (the
//! poll that saw the end minus the job's end) at p50, p90 and p99.
//!
//! Jobs with medians of minutes would take hours of wall clock per run, so the
//! study runs in simulated time: a discrete-event simulation of the poller's
//! schedule. Every poll's next time is decided by the daemon's own [`decide`]
//! (its cadence, its learned [`History`], its jitter), on jobs drawn by the
//! simulator's own job model (`--durations`, PENDING for the first fifth, then
//! RUNNING, then ended); due watches are taken earliest first, as the store's
//! schedule takes them, and a token bucket (the rate, the daemon's default burst)
//! stands for the upstream budget. What it leaves out: request latency, the
//! poller's 20 ms step, claims in batches (all well under a second). `--live`
//! (`live.rs`) runs the real daemon against the real simulator, time scaled down,
//! to confirm the order the simulation gives.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::config::Settings;
use crate::model::{Kind, Verdict};
use crate::poller::cadence::{Cadence, Policy};
use crate::poller::decide;
use crate::poller::history::{Curve, History};
use crate::simulator::jobs::{JobModel, Observation};
use crate::simulator::{Distribution, DurationsArg, SimulateArgs};
use crate::store::{Millis, UpstreamFields, WatchRecord};
use crate::upstream::{JobStatus, PollAnswer};

/// Simulated time starts here (Unix ms): upstream times read as real dates.
const EPOCH: Millis = 1_767_225_600_000;
/// The seed client's interval.
const FIXED: Duration = Duration::from_secs(5);

/// What one study is asked.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// Jobs measured per run.
    pub jobs: u32,
    /// Watches are posted evenly over this window (0: all at once).
    pub arrivals: Duration,
    /// Jobs that end under the backoff cadence before the learned runs: the
    /// history a daemon has when it switches.
    pub warmup: u32,
    /// The learned cadence's prices to run (`poller.poll_price` by default).
    pub prices: Vec<Duration>,
    /// The budget of the binding runs, as a share of what fixed 5 s needs in its
    /// busiest minute (the issue's: a half).
    pub budget_share: f64,
    /// Also run the learned cadence with polls sent by their chance of finding
    /// the end when the budget binds, instead of earliest due.
    pub chance_claims: bool,
    pub seed: u64,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// `fixed 5s`, `backoff`, `learned`.
    pub policy: String,
    /// The learned cadence's price, seconds.
    pub price_s: Option<f64>,
    /// Requests per second allowed; `None`: no budget.
    pub budget_per_second: Option<f64>,
    pub jobs: u64,
    pub polls_per_job: f64,
    pub delay_p50_s: f64,
    pub delay_p90_s: f64,
    pub delay_p99_s: f64,
    /// The longest time any job went without a poll.
    pub longest_gap_s: f64,
}

/// The study of one distribution.
#[derive(Debug, Clone, Serialize)]
pub struct Study {
    pub distribution: String,
    /// The binding runs' budget: `budget_share` of what fixed 5 s needs in its
    /// busiest minute, requests per second.
    pub budget_per_second: f64,
    pub runs: Vec<Figures>,
}

/// A run's raw observations.
struct Observed {
    polls: Vec<i64>,
    delays_ms: Vec<Millis>,
    longest_gap_ms: Millis,
    /// Polls per minute of simulated time.
    per_minute: BTreeMap<Millis, u64>,
}

/// The cadence of each policy, from the daemon's settings.
pub fn cadences(settings: &Settings) -> (Cadence, Cadence, Cadence) {
    let backoff = Cadence {
        policy: Policy::Backoff,
        ..Cadence::of(&settings.poller, &settings.upstream)
    };
    let fixed = Cadence {
        initial: FIXED,
        max: FIXED,
        growth: 1.0,
        jitter: 0.0,
        ..backoff
    };
    let learned = Cadence {
        policy: Policy::Learned,
        ..backoff
    };
    (fixed, backoff, learned)
}

/// The simulator's job model for one distribution: every job succeeds (how it
/// ends does not change when it ends).
pub(crate) fn model(distribution: Distribution, seed: u64) -> JobModel {
    JobModel::new(&SimulateArgs {
        seed,
        durations: vec![DurationsArg {
            kind: None,
            distribution,
        }],
        mix: "SUCCESS=1"
            .parse()
            .unwrap_or_else(|_| SimulateArgs::default().mix),
        ..SimulateArgs::default()
    })
}

fn system_time(ms: Millis) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// What the upstream answers for job `id` first seen at `seen`, asked at `now`.
fn answer(model: &JobModel, id: &str, seen: Millis, now: Millis) -> PollAnswer {
    match model
        .profile(crate::simulator::jobs::Kind::Copy, id)
        .at(system_time(seen), system_time(now))
    {
        Observation::Job(s) => PollAnswer::Status(JobStatus {
            state: Some(s.state.to_string()),
            verdict: if s.ended.is_some() {
                Verdict::Succeeded
            } else {
                Verdict::Running
            },
            created: Some(rfc3339(s.created)),
            started: s.started.map(rfc3339),
            ended: s.ended.map(rfc3339),
            errors: Some(serde_json::json!([])),
            note: None,
        }),
        // Plain ids are always visible: no other answer happens here.
        _ => PollAnswer::Transient {
            error: "not a plain job".into(),
        },
    }
}

/// Which due watch a poll goes to when several are due.
#[derive(Debug, Clone, Copy)]
enum Claims<'a> {
    /// The earliest due, as the store's schedule claims.
    EarliestDue,
    /// The one whose job most likely ended since its last poll, by this curve of
    /// the kind's durations (jobwatch's clock); one due more than `starve_after`
    /// ago first. Not the daemon's: the study measures what it would give.
    Chance {
        curve: &'a Curve,
        starve_after: Millis,
    },
}

/// Run the jobs `ids` (posted evenly over `arrivals`) under `cadence`, polls
/// limited by `budget` (requests per second, burst) and sent in the order of
/// `claims`, `history` read by the learned cadence and fed every end, as in
/// the daemon.
#[allow(clippy::too_many_arguments)]
fn simulate(
    model: &JobModel,
    ids: &[String],
    arrivals: Duration,
    cadence: &Cadence,
    history: &History,
    budget: Option<(f64, f64)>,
    claims: Claims<'_>,
    seed: u64,
) -> Observed {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = ids.len().max(1) as i64;
    let window = arrivals.as_millis() as Millis;
    let initial = cadence.initial.as_millis() as Millis;
    let jitter = (initial as f64 * cadence.jitter) as Millis;
    let mut records: Vec<Option<WatchRecord>> = Vec::with_capacity(ids.len());
    let mut watched: Vec<Millis> = Vec::with_capacity(ids.len());
    let mut seen: Vec<Option<Millis>> = vec![None; ids.len()];
    let mut last: Vec<Option<Millis>> = vec![None; ids.len()];
    let mut due = BinaryHeap::new();
    for (i, id) in ids.iter().enumerate() {
        let watched_at = EPOCH + window * i as i64 / n;
        // The first poll as the API schedules it: initial, +- jitter.
        let first = watched_at + initial - jitter + rng.random_range(0..=2 * jitter);
        watched.push(watched_at);
        records.push(Some(WatchRecord {
            wid: i as i64 + 1,
            kind: Kind::COPY,
            job_id: id.clone(),
            generation: 1,
            webhook_url: None,
            metadata: None,
            watched_at,
            deadline: None,
            state: None,
            upstream: UpstreamFields::default(),
            outcome: None,
            outcome_at: None,
            last_poll_at: None,
            next_poll_at: Some(first),
            interval_ms: initial,
            poll_count: 0,
            error_count: 0,
            consecutive_errors: 0,
            last_error: None,
            not_found_since: None,
        }));
        due.push(Reverse((first, i)));
    }
    let mut out = Observed {
        polls: Vec::with_capacity(ids.len()),
        delays_ms: Vec::with_capacity(ids.len()),
        longest_gap_ms: 0,
        per_minute: BTreeMap::new(),
    };
    let (mut clock, mut tokens, mut filled_at) = (EPOCH, budget.map_or(0.0, |b| b.1), EPOCH);
    let grace = Duration::from_secs(300);
    // Due and waiting for the budget (claims by chance only).
    let mut ready: Vec<(Millis, usize)> = Vec::new();
    loop {
        // The next poll leaves when a watch is due and the budget has a token.
        let earliest = match (ready.iter().map(|r| r.0).min(), due.peek()) {
            (Some(r), Some(Reverse((d, _)))) => r.min(*d),
            (Some(r), None) => r,
            (None, Some(Reverse((d, _)))) => *d,
            (None, None) => break,
        };
        let mut t = earliest.max(clock);
        if let Some((rate, burst)) = budget {
            tokens = (tokens + (t - filled_at) as f64 / 1000.0 * rate).min(burst);
            filled_at = t;
            if tokens < 1.0 {
                let wait = ((1.0 - tokens) / rate * 1000.0).ceil() as Millis;
                t += wait;
                tokens = (tokens + wait as f64 / 1000.0 * rate).min(burst);
                filled_at = t;
            }
            tokens -= 1.0;
        }
        let i = match claims {
            Claims::EarliestDue => match due.pop() {
                Some(Reverse((_, i))) => i,
                None => break,
            },
            Claims::Chance {
                curve,
                starve_after,
            } => {
                while due.peek().is_some_and(|Reverse((d, _))| *d <= t) {
                    if let Some(Reverse(entry)) = due.pop() {
                        ready.push(entry);
                    }
                }
                let age = |at: Millis, i: usize| (at - watched[i]) as f64 / 1000.0;
                let chance = |&(_, i): &(Millis, usize)| {
                    let since = last[i].unwrap_or(watched[i]);
                    let before = curve.survival(age(since, i)).max(1e-12);
                    1.0 - curve.survival(age(t, i)) / before
                };
                let starving = ready
                    .iter()
                    .enumerate()
                    .filter(|(_, (d, _))| t - *d > starve_after)
                    .min_by_key(|(_, (d, _))| *d)
                    .map(|(k, _)| k);
                let pick = starving.or_else(|| {
                    ready
                        .iter()
                        .enumerate()
                        .max_by(|a, b| chance(a.1).total_cmp(&chance(b.1)))
                        .map(|(k, _)| k)
                });
                match pick {
                    Some(k) => ready.swap_remove(k).1,
                    None => break,
                }
            }
        };
        clock = t;
        *out.per_minute.entry((t - EPOCH) / 60_000).or_default() += 1;
        if let Some(l) = last[i] {
            out.longest_gap_ms = out.longest_gap_ms.max(t - l);
        }
        last[i] = Some(t);
        let first_seen = *seen[i].get_or_insert(t);
        let Some(w) = records[i].take() else { continue };
        let a = answer(model, &ids[i], first_seen, t);
        let previous = w.last_poll_at;
        let next = decide(w, a, t, cadence, Some(history), grace, &mut rng);
        history.observe(&next, previous);
        if next.outcome.is_some() {
            let end = model
                .profile(crate::simulator::jobs::Kind::Copy, &ids[i])
                .end(system_time(first_seen));
            let end = end
                .and_then(|e| e.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(t, |e| e.as_millis() as Millis);
            out.polls.push(next.poll_count);
            out.delays_ms.push(t - end);
        } else if let Some(n) = next.next_poll_at {
            due.push(Reverse((n, i)));
            records[i] = Some(next);
        }
    }
    out
}

/// Nearest rank, seconds.
fn percentile(sorted_ms: &[Millis], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted_ms.len() as f64).ceil() as usize).clamp(1, sorted_ms.len());
    sorted_ms[rank - 1] as f64 / 1000.0
}

fn figures(policy: &str, price: Option<Duration>, budget: Option<f64>, mut o: Observed) -> Figures {
    o.delays_ms.sort_unstable();
    let jobs = o.polls.len() as u64;
    Figures {
        policy: policy.to_string(),
        price_s: price.map(|p| p.as_secs_f64()),
        budget_per_second: budget,
        jobs,
        polls_per_job: o.polls.iter().sum::<i64>() as f64 / jobs.max(1) as f64,
        delay_p50_s: percentile(&o.delays_ms, 0.50),
        delay_p90_s: percentile(&o.delays_ms, 0.90),
        delay_p99_s: percentile(&o.delays_ms, 0.99),
        longest_gap_s: o.longest_gap_ms as f64 / 1000.0,
    }
}

/// The study of one distribution: the three cadences without a budget, then
/// under half of what fixed 5 s needs in its busiest minute.
pub fn study(distribution: Distribution, settings: &Settings, opts: &StudyOptions) -> Study {
    let model = model(distribution, opts.seed);
    let (fixed, backoff, learned) = cadences(settings);
    let ids: Vec<String> = (0..opts.jobs).map(|i| format!("w-{i}")).collect();
    // The history a daemon has when it switches: the warm-up's ends, under backoff.
    let trained = History::new(
        settings.poller.learn_by.clone(),
        settings.poller.learn_after,
    );
    let warm: Vec<String> = (0..opts.warmup).map(|i| format!("warm-{i}")).collect();
    simulate(
        &model,
        &warm,
        opts.arrivals,
        &backoff,
        &trained,
        None,
        Claims::EarliestDue,
        opts.seed ^ 0x5741_524d,
    );
    let fresh = || History::new(None, settings.poller.learn_after);
    let run = |cadence: &Cadence, history: &History, budget: Option<f64>| {
        simulate(
            &model,
            &ids,
            opts.arrivals,
            cadence,
            history,
            budget.map(|r| (r, r.clamp(1.0, 50.0))),
            Claims::EarliestDue,
            opts.seed,
        )
    };
    let mut runs = Vec::new();
    let unbound_fixed = run(&fixed, &fresh(), None);
    let busiest = unbound_fixed
        .per_minute
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    let budget = (busiest as f64 / 60.0 * opts.budget_share).max(0.1);
    for limit in [None, Some(budget)] {
        let o = match limit {
            None => Observed {
                polls: unbound_fixed.polls.clone(),
                delays_ms: unbound_fixed.delays_ms.clone(),
                longest_gap_ms: unbound_fixed.longest_gap_ms,
                per_minute: BTreeMap::new(),
            },
            Some(_) => run(&fixed, &fresh(), limit),
        };
        runs.push(figures("fixed 5s", None, limit, o));
        runs.push(figures(
            "backoff",
            None,
            limit,
            run(&backoff, &fresh(), limit),
        ));
        for price in &opts.prices {
            let cadence = Cadence {
                price: *price,
                ..learned
            };
            let history = trained.snapshot();
            runs.push(figures(
                "learned",
                Some(*price),
                limit,
                run(&cadence, &history, limit),
            ));
            // The same, polls sent by their chance of finding the end rather
            // than earliest due: what a priority within the due set would add.
            let curve = trained.summary(Kind::COPY, "").map(|s| s.observed.curve());
            if let (true, Some(budget), Some(curve)) = (opts.chance_claims, limit, curve) {
                let o = simulate(
                    &model,
                    &ids,
                    opts.arrivals,
                    &cadence,
                    &trained.snapshot(),
                    Some((budget, budget.clamp(1.0, 50.0))),
                    Claims::Chance {
                        curve: &curve,
                        starve_after: cadence.max.as_millis() as Millis,
                    },
                    opts.seed,
                );
                runs.push(figures("learned, claims by chance", Some(*price), limit, o));
            }
        }
    }
    Study {
        distribution: distribution.to_string(),
        budget_per_second: budget,
        runs,
    }
}

/// The studies as a Markdown table (what BENCHMARKS.md holds).
pub fn print(studies: &[Study], opts: &StudyOptions) {
    println!(
        "jobwatch bench --cadence-study: {} jobs per run, posted over {}, {} warm-up ends for the learned history, budget {} of fixed 5 s's busiest minute, seed {}",
        opts.jobs,
        humantime::format_duration(opts.arrivals),
        opts.warmup,
        opts.budget_share,
        opts.seed
    );
    println!();
    print_header();
    for s in studies {
        print_rows(&s.distribution, &s.runs, opts.prices.len() > 1);
    }
}

fn print_header() {
    println!("| durations | budget | cadence | polls/job | delay p50 | p90 | p99 | longest gap |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
}

fn print_rows(distribution: &str, runs: &[Figures], prices: bool) {
    for r in runs {
        let budget = r
            .budget_per_second
            .map_or("none".to_string(), |b| format!("{b:.1}/s"));
        let policy = match r.price_s {
            Some(p) if prices => format!("{} (price {p}s)", r.policy),
            _ => r.policy.clone(),
        };
        println!(
            "| {distribution} | {budget} | {policy} | {:.1} | {:.1} s | {:.1} s | {:.1} s | {:.0} s |",
            r.polls_per_job, r.delay_p50_s, r.delay_p90_s, r.delay_p99_s, r.longest_gap_s
        );
    }
}

/// One table of runs.
pub fn print_runs(distribution: &str, runs: &[Figures], prices: bool) {
    print_header();
    print_rows(distribution, runs, prices);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::load_with(None, &[]).unwrap()
    }

    fn opts(jobs: u32) -> StudyOptions {
        StudyOptions {
            jobs,
            arrivals: Duration::from_secs(600),
            warmup: 300,
            prices: vec![Duration::from_secs(1)],
            budget_share: 0.5,
            chance_claims: false,
            seed: 7,
        }
    }

    fn lognormal() -> Distribution {
        "lognormal:2m,1"
            .parse::<DurationsArg>()
            .unwrap()
            .distribution
    }

    #[test]
    fn the_study_is_deterministic_from_its_seed() {
        let s = settings();
        let a = study(lognormal(), &s, &opts(200));
        let b = study(lognormal(), &s, &opts(200));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(a.runs.len(), 6);
        assert!(a.runs.iter().all(|r| r.jobs == 200));
    }

    #[test]
    fn fixed_polls_every_five_seconds_and_finds_each_end_within_them() {
        let s = settings();
        let st = study(lognormal(), &s, &opts(300));
        let fixed = &st.runs[0];
        assert!(fixed.delay_p99_s <= 5.0, "{fixed:?}");
        assert_eq!(fixed.longest_gap_s, 5.0);
    }

    /// Under a budget that binds, no running job goes longer without a poll than
    /// the cadence's longest interval (with its jitter) plus the time the budget
    /// needs to poll every running job once: claims take the earliest due first,
    /// so a due watch waits at most for those that were due before it.
    #[test]
    fn under_a_binding_budget_no_job_waits_longer_than_the_starvation_bound() {
        let s = settings();
        let o = StudyOptions {
            arrivals: Duration::ZERO,
            ..opts(1_000)
        };
        let st = study(lognormal(), &s, &o);
        let (_, backoff, learned) = cadences(&s);
        for r in st.runs.iter().filter(|r| r.budget_per_second.is_some()) {
            let budget = st.budget_per_second;
            let cadence = if r.policy == "learned" {
                learned
            } else {
                backoff
            };
            let max = if r.policy == "fixed 5s" {
                FIXED.as_secs_f64()
            } else {
                cadence.max.as_secs_f64() * (1.0 + cadence.jitter)
            };
            let bound = max + o.jobs as f64 / budget + 1.0;
            assert!(
                r.longest_gap_s <= bound,
                "{}: longest gap {} s > bound {bound} s",
                r.policy,
                r.longest_gap_s
            );
        }
        // And the budget did bind: fixed 5 s found its ends later than 5 s.
        let bound_fixed = st.runs.iter().find(|r| r.budget_per_second.is_some());
        assert!(bound_fixed.is_some_and(|r| r.delay_p99_s > 5.0));
    }
}
