//! Decides what to poll when. Watches live in the store, not in tasks: each step
//! claims the watches that are due (an index on the next poll time), polls them
//! through the shared [`budget::Budget`], and turns each answer into the watch's
//! next values per the kind's state table (an outcome comes with its event).
//! There is one poller per upstream: it claims only that upstream's kinds and
//! spends only its budget, so a pause or a bad token on one never slows another.

pub mod budget;
pub mod cadence;
pub mod history;
pub mod replicas;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Settings, UpstreamDef};
use crate::model::{Kind, Outcome, Verdict};
use crate::store::writer::{Signals, Write, Writer};
use crate::store::{now_ms, DynStore, Hold, Millis, WatchRecord, WatchUpdate};
use crate::upstream::{PollAnswer, UpstreamClient};
use crate::webhook::Routes;
use budget::Budget;
use cadence::{Cadence, Policy};
use history::History;

/// Steps that claimed less than they could are at least this far apart: at 10,000
/// watches one falls due every few hundred microseconds, and a step for each (a
/// claim read, a task) cost more than the polls (BENCHMARKS.md). At 20 ms, a
/// claim of a few watches every step cost the daemon about 40% of its CPU at 400
/// polls/s (BENCHMARKS.md, session 11); under load a step that filled its slots
/// does not wait for it.
const MIN_STEP_GAP: Duration = Duration::from_millis(100);

/// The longest gap between steps: at 5 s or more between a watch's polls, steps
/// are 500 ms apart and claim what is due within 250 ms.
///
/// Polls due close together go out together: a step claims the watches due within
/// a twentieth of the shortest interval (`poller.initial_interval`) after it, and
/// steps that claimed less than they could are a tenth of it apart (at least
/// [`MIN_STEP_GAP`]). Below the machine's ceiling a poll's cost is mostly the
/// wake-ups of its exchange, and answers that come in together share them: at
/// 400 polls/s, steps 500 ms apart instead of 100 ms cost a third less CPU per
/// poll, for the daemon and for hyper's bare client alike (BENCHMARKS.md, session
/// 15). A poll goes out at most 5% of its interval early and 5% late (at least the
/// gap less the head start), well inside the default jitter of 20%; early and late
/// polls balance, so the rate of polls and the mean interval stay as the cadence
/// says.
const MAX_STEP_GAP: Duration = Duration::from_millis(500);

/// How far apart steps that claimed less than they could are ([`MAX_STEP_GAP`]).
pub fn step_gap(initial_interval: Duration) -> Duration {
    (initial_interval / 10).clamp(MIN_STEP_GAP, MAX_STEP_GAP)
}

/// How long before its time a watch may be claimed ([`MAX_STEP_GAP`]).
fn head_start(initial_interval: Duration) -> Millis {
    (initial_interval / 20).min(MAX_STEP_GAP / 2).as_millis() as Millis
}

pub struct Poller {
    store: DynStore,
    client: Arc<UpstreamClient>,
    budget: Arc<Budget>,
    /// The kinds this poller claims: its upstream's.
    lane: Vec<Kind>,
    /// Whether this poller ends the watches whose deadline passed (one does, for
    /// every kind: a deadline holds also while an upstream is paused).
    deadlines: bool,
    cadence: Cadence,
    /// How long jobs of each kind took: the learned cadence reads it, every end
    /// decided here adds to it.
    history: Arc<History>,
    not_found_grace: Duration,
    routes: Routes,
    writer: Writer,
    signals: Arc<Signals>,
    /// Watches claimed and not yet written back: never claimed twice.
    in_flight: Mutex<HashSet<i64>>,
    /// Claimed watches no poll loop has taken yet, earliest due first.
    queue: Mutex<VecDeque<WatchRecord>>,
    /// One permit per watch queued: a poll loop waits here for the next.
    queued: tokio::sync::Notify,
    /// How many claimed watches may be in the poller at once (4 x
    /// `upstream.max_in_flight`: up to three times as many wait for the budget as
    /// are being sent).
    high_water: usize,
    /// Claim only when at least this many (`upstream.max_in_flight`) are free: a
    /// claim is a store read (SQLite) or write (PostgreSQL), and claiming one or
    /// two at a time, after each poll, cost more than the polls; twice as large as
    /// before cost 6% less CPU per poll under load (BENCHMARKS.md).
    min_claim: usize,
    done: tokio::sync::Notify,
    shutdown: CancellationToken,
    /// A poll is only sent if it can finish within its watch's lease.
    request_timeout_ms: Millis,
    /// How far apart steps that claimed less than they could are, and how long
    /// before its time a watch may be claimed ([`MAX_STEP_GAP`]).
    step_gap: Duration,
    head_start: Millis,
    /// A claimed watch is ours for this long (`store.lease`); a daemon that dies
    /// holding it has its leases released at the next start (SQLite) or taken
    /// over when they run out (PostgreSQL).
    lease: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    pub timed_out: usize,
    pub claimed: usize,
    /// The claim took as many as there was room for, or there was no room: more
    /// may be due, and the next step should not wait for the step gap.
    pub filled: bool,
}

impl Poller {
    /// The poller of `upstream` (its client and budget); `deadlines`: whether it
    /// also ends the watches of every kind whose deadline passed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: &Settings,
        upstream: &UpstreamDef,
        store: DynStore,
        client: Arc<UpstreamClient>,
        budget: Arc<Budget>,
        writer: Writer,
        signals: Arc<Signals>,
        shutdown: CancellationToken,
        deadlines: bool,
        history: Arc<History>,
    ) -> Poller {
        let p = &settings.poller;
        let u = &upstream.settings;
        Poller {
            lane: client.kinds().collect(),
            deadlines,
            store,
            client,
            budget,
            cadence: Cadence::of(p, u),
            step_gap: step_gap(p.initial_interval),
            head_start: head_start(p.initial_interval),
            history,
            not_found_grace: p.not_found_grace,
            routes: Routes::new(&settings.webhooks),
            writer,
            signals,
            in_flight: Mutex::new(HashSet::new()),
            queue: Mutex::new(VecDeque::new()),
            queued: tokio::sync::Notify::new(),
            high_water: (u.max_in_flight * 4).max(16),
            min_claim: u.max_in_flight.max(1),
            done: tokio::sync::Notify::new(),
            shutdown,
            request_timeout_ms: u.request_timeout.as_millis() as Millis,
            lease: settings.store.lease,
        }
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slots for claimed watches not taken: never more than the budget can send
    /// well within a lease (a claim that waits past it is dropped and waits out
    /// the lease), and none while this replica has no share of the budget.
    fn free(&self) -> usize {
        let rate = self.budget.effective_rate();
        if rate <= 0.0 {
            return 0;
        }
        let margin = self
            .lease
            .saturating_sub(Duration::from_millis(self.request_timeout_ms as u64));
        let sendable = (rate * margin.as_secs_f64() / 2.0) as usize;
        let cap = sendable.max(self.min_claim).min(self.high_water);
        cap.saturating_sub(self.in_flight().len())
    }

    /// Until enough polls finished to claim again (a finished poll's notification
    /// is kept when nobody waits, so none is missed between the check and the wait).
    async fn room(&self) {
        while self.free() < self.min_claim {
            self.done.notified().await;
        }
    }

    /// Called once before the loop: release what a stopped daemon held and spread
    /// the overdue first polls over the time the budget needs for them anyway.
    pub async fn recover(&self, now: Millis, rate: f64) -> crate::store::Result<u64> {
        let due = self.store.count_due(now).await?;
        let spread = (due as f64 / rate.max(0.001) * 1000.0) as Millis;
        let spread = spread.max(self.cadence.initial.as_millis() as Millis);
        let moved = self.store.recover(now, spread).await?;
        if moved > 0 {
            tracing::info!(
                moved,
                spread_ms = spread,
                "spread the polls of overdue watches after a restart"
            );
        }
        Ok(moved)
    }

    /// One step: end the watches whose deadline passed, then claim the watches due
    /// within the head start, up to the free capacity, and queue them for the poll
    /// loops.
    pub async fn step(&self, now: Millis) -> crate::store::Result<StepReport> {
        let mut report = StepReport::default();
        let expired = if self.deadlines {
            self.store.expired_watches(now, 512).await?
        } else {
            Vec::new()
        };
        if !expired.is_empty() {
            let updates: Vec<WatchUpdate> = expired
                .into_iter()
                .map(|mut w| {
                    w.outcome = Some(Outcome::TimedOut);
                    w.outcome_at = Some(now);
                    w.next_poll_at = None;
                    let event = self.routes.event_for(&w);
                    WatchUpdate { record: w, event }
                })
                .collect();
            let started = std::time::Instant::now();
            let applied = self.store.apply_watch_updates(&updates).await?;
            crate::metrics::store_write("deadlines", started.elapsed());
            self.signals.watches_committed(&updates, &applied);
            report.timed_out = applied.iter().filter(|a| **a).count();
        }

        let free = self.free();
        if free < self.min_claim {
            report.filled = true;
            return Ok(report);
        }
        let lease_until = now + self.lease.as_millis() as Millis;
        let due_by = now + self.head_start;
        let claimed = self
            .store
            .claim_due_watches_in(Some(&self.lane), due_by, free as u32, lease_until)
            .await?;
        report.filled = claimed.len() >= free;
        {
            let (mut in_flight, mut queue) = (self.in_flight(), self.queue());
            for w in claimed {
                if in_flight.insert(w.wid) {
                    queue.push_back(w);
                    report.claimed += 1;
                }
            }
        }
        for _ in 0..report.claimed {
            self.queued.notify_one();
        }
        Ok(report)
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<WatchRecord>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One of the `high_water` poll loops: take the next claimed watch and poll it,
    /// until shutdown. Loops that live as long as the poller, rather than a task per
    /// poll, spare each poll a task's allocation, its setup and the move of its
    /// future (a few kilobytes, the HTTP request's state inside): about 4% of the
    /// daemon's CPU under load (BENCHMARKS.md).
    async fn poll_loop(self: Arc<Self>) {
        loop {
            let next = self.queue().pop_front();
            let Some(w) = next else {
                tokio::select! {
                    _ = self.queued.notified() => continue,
                    _ = self.shutdown.cancelled() => return,
                }
            };
            let wid = w.wid;
            // As a task per poll was: a poll that panics costs that poll, not the
            // loop (its watch is claimed again when the lease runs out).
            let polled = std::panic::AssertUnwindSafe(self.poll_one(w))
                .catch_unwind()
                .await;
            if polled.is_err() {
                tracing::error!(
                    wid,
                    "a poll panicked; the watch is polled again when its lease runs out"
                );
            }
            self.in_flight().remove(&wid);
            self.done.notify_one();
            if self.shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Poll one watch until it gets an answer that means something for it (a 429
    /// or a 401 is about the upstream: wait for the budget and ask again), then
    /// queue its next values.
    async fn poll_one(&self, w: WatchRecord) {
        let answer = loop {
            // Until a request is sent, shutdown abandons the poll (the lease is
            // released at the next start); once sent, it finishes.
            let mut slot = tokio::select! {
                slot = self.budget.acquire() => slot,
                _ = self.shutdown.cancelled() => return,
            };
            if w.deadline.is_some_and(|d| d <= now_ms()) {
                // Past its deadline: the deadline step ends it; do not poll it.
                return;
            }
            // The claim set next_poll_at to the lease's end. A lease that ran out while
            // this poll waited (a long pause, a 401 phase) may be another replica's now:
            // let the watch be claimed again rather than poll it twice at once.
            if w.next_poll_at
                .is_some_and(|lease_end| now_ms() + self.request_timeout_ms > lease_end)
            {
                return;
            }
            let sent = std::time::Instant::now();
            let answer = self.client.poll(w.kind, &w.job_id).await;
            self.client.metrics().answered(&answer, sent.elapsed());
            self.budget.observe(&mut slot, &answer);
            match answer {
                PollAnswer::RateLimited { .. } | PollAnswer::Unauthorized { .. } => continue,
                other => break other,
            }
        };
        if let PollAnswer::Status(status) = &answer {
            if status.state.is_some()
                && status.state != w.state
                && status.verdict == Verdict::Unknown
            {
                tracing::warn!(upstream = self.client.name(), kind = %w.kind, id = %w.job_id, state = ?status.state, "upstream reports a state its kind's table does not name; still watching");
            }
        }
        // Only when a stream listens: the copy is one allocation per poll.
        let before = self.signals.wants_states().then(|| w.state.clone());
        let previous = w.last_poll_at;
        let record = decide(
            w,
            answer,
            now_ms(),
            &self.cadence,
            Some(&self.history),
            self.not_found_grace,
            &mut rand::rng(),
        );
        if let Some(before) = before {
            // A watch that ends says so with its outcome's event.
            if record.outcome.is_none() && record.state.is_some() && record.state != before {
                self.signals.state_changed(before.as_deref(), &record);
            }
        }
        // Every poll counts, whatever the policy: the history is ready when the
        // learned cadence is switched on.
        self.history.observe(&record, previous);
        let update = WatchUpdate {
            event: self.routes.event_for(&record),
            record,
        };
        let next = update.record.next_poll_at;
        match self.store.hold(update) {
            Hold::Applied(applied) => {
                if let (true, Some(next)) = (applied, next) {
                    self.signals.rescheduled(next);
                }
            }
            Hold::Declined(update) => self.writer.send(Write::Watch(update)).await,
        }
    }

    /// Run steps until `shutdown`; polls already sent finish on `tasks`, where the
    /// poll loops run.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, tasks: TaskTracker) {
        for _ in 0..self.high_water {
            tasks.spawn(Arc::clone(&self).poll_loop());
        }
        let mut watches = self.signals.watches.subscribe();
        let plan = self.signals.wake_plan();
        let mut filled = false;
        let started = tokio::time::Instant::now();
        let mut last_step = started.checked_sub(self.step_gap).unwrap_or(started);
        loop {
            if !filled {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(last_step + self.step_gap) => {}
                }
            }
            last_step = tokio::time::Instant::now();
            // Awake: any rescheduled watch may be due before the next plan.
            plan.store(Millis::MAX, std::sync::atomic::Ordering::SeqCst);
            // What this step sees: a change after here wakes the wait below.
            watches.borrow_and_update();
            let now = now_ms();
            let report = match self.step(now).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "poller step failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // Only a step that took everything due waits out the gap: one that was
            // stopped by the slots steps again as soon as they free up (the gap there
            // capped the poll rate at `high_water` per 20 ms).
            filled = report.filled;
            let full = self.free() < self.min_claim;
            // Sleep until the next watch is due, new watches arrive, or capacity frees
            // up; at most a second, so deadlines fire on time.
            let wait = if full {
                Duration::from_secs(1)
            } else if filled {
                Duration::ZERO
            } else {
                // The step claims what is due within the head start.
                match self.store.next_wakeup_in(Some(&self.lane)).await {
                    Ok(Some(at)) => Duration::from_millis(
                        (at - self.head_start - now_ms()).clamp(0, 1000) as u64,
                    ),
                    Ok(None) => Duration::from_secs(1),
                    Err(_) => Duration::from_secs(1),
                }
            };
            // Full: nothing rescheduled can be claimed before room frees up, which
            // wakes the wait by itself.
            let planned = if full {
                Millis::MIN
            } else {
                now_ms() + wait.as_millis() as Millis
            };
            plan.store(planned, std::sync::atomic::Ordering::SeqCst);
            if wait.is_zero() {
                tokio::task::yield_now().await;
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = watches.changed() => {}
                _ = self.room(), if full => {}
            }
        }
    }
}

/// A watch's next values after `answer`, per the state and error tables of UPSTREAM.md.
/// 429 and 401/403 never reach here: they are about the upstream, not the watch.
/// Both are taken by value: what the answer says moves into the watch, and
/// nothing of either is copied (a poll's copies were a good part of its
/// allocations). With the learned cadence, a watch that keeps running is next
/// polled when `history` says (the backoff cadence while it knows too little).
pub fn decide(
    mut n: WatchRecord,
    answer: PollAnswer,
    now: Millis,
    cadence: &Cadence,
    history: Option<&History>,
    not_found_grace: Duration,
    rng: &mut impl rand::Rng,
) -> WatchRecord {
    let first = n.poll_count == 0;
    n.poll_count += 1;
    n.last_poll_at = Some(now);
    let previous = Duration::from_millis(n.interval_ms.max(0) as u64);
    let end = |n: &mut WatchRecord, outcome: Outcome| {
        n.outcome = Some(outcome);
        n.outcome_at = Some(now);
        n.next_poll_at = None;
    };
    let schedule = |n: &mut WatchRecord, interval: Duration, rng: &mut dyn rand::RngCore| {
        n.interval_ms = interval.as_millis() as i64;
        n.next_poll_at = Some(now + cadence.jittered(interval, rng).as_millis() as Millis);
    };
    match answer {
        PollAnswer::Status(s) => {
            n.consecutive_errors = 0;
            n.not_found_since = None;
            let changed = s.state != n.state || first;
            let said = s.verdict;
            n.state = s.state;
            if s.note.is_some() {
                // A field of the wrong type: the watch goes on, and says why a time is missing.
                n.last_error = s.note;
            }
            // A missing attribute says nothing: keep what we knew.
            let u = &mut n.upstream;
            if s.created.is_some() {
                u.created = s.created;
            }
            if s.started.is_some() {
                u.started = s.started;
            }
            if s.ended.is_some() {
                u.ended = s.ended;
            }
            if s.errors.is_some() {
                u.errors = s.errors;
            }
            match said {
                Verdict::Succeeded => end(&mut n, Outcome::Succeeded),
                Verdict::Failed => end(&mut n, Outcome::Failed),
                Verdict::Running | Verdict::Unknown => {
                    let learned = match (cadence.policy, history) {
                        (Policy::Learned, Some(h)) => {
                            h.interval(&n, now, cadence.price, cadence.initial, cadence.max)
                        }
                        _ => None,
                    };
                    let interval =
                        learned.unwrap_or_else(|| cadence.next_interval(previous, changed));
                    schedule(&mut n, interval, rng)
                }
            }
        }
        PollAnswer::NotFound => {
            let since = n.not_found_since.unwrap_or(now);
            n.not_found_since = Some(since);
            n.last_error = Some("HTTP 404: the job is not (yet) visible upstream".into());
            let waited = Duration::from_millis((now - since).max(0) as u64);
            if waited >= not_found_grace {
                end(&mut n, Outcome::NotFound);
            } else {
                // Look again within the grace, so that several 404s decide it.
                let left = not_found_grace - waited;
                let interval = cadence
                    .next_interval(previous, false)
                    .min(left.max(Duration::from_millis(100)));
                schedule(&mut n, interval, rng);
            }
        }
        PollAnswer::Rejected { status, detail } => {
            n.last_error = Some(format!("HTTP {status}: {detail}"));
            end(&mut n, Outcome::Rejected);
        }
        PollAnswer::Transient { error } => {
            n.error_count += 1;
            n.consecutive_errors += 1;
            n.last_error = Some(error);
            let backoff = cadence.error_backoff(n.consecutive_errors.clamp(1, 64) as u32, rng);
            n.next_poll_at = Some(now + backoff.as_millis() as Millis);
        }
        PollAnswer::RateLimited { .. } | PollAnswer::Unauthorized { .. } => {
            // Not the watch's doing: same cadence, no error counted.
            n.poll_count -= 1;
            n.next_poll_at = Some(now);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn cadence() -> Cadence {
        Cadence {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(60),
            growth: 2.0,
            jitter: 0.0,
            error_base: Duration::from_secs(1),
            error_max: Duration::from_secs(60),
            policy: Policy::Backoff,
            price: Duration::from_secs(1),
        }
    }

    fn watch() -> WatchRecord {
        WatchRecord::sample(1)
    }

    /// A Vector status answer, read by the `vector` preset's state table.
    fn status(state: &str, errors: serde_json::Value) -> PollAnswer {
        let body = serde_json::json!({"data": {"attributes": {"state": state, "errors": errors}}});
        let settings = crate::config::Settings::load_with(None, &[]).unwrap();
        PollAnswer::Status(
            settings.resolved[0].kinds[0]
                .read(body.to_string().as_bytes())
                .unwrap(),
        )
    }

    fn run(w: &WatchRecord, a: &PollAnswer, now: Millis) -> WatchRecord {
        decide(
            w.clone(),
            a.clone(),
            now,
            &cadence(),
            None,
            Duration::from_secs(10),
            &mut StdRng::seed_from_u64(0),
        )
    }

    #[test]
    fn steps_and_head_starts_follow_the_shortest_interval() {
        let ms = Duration::from_millis;
        for (initial, gap, head) in [
            (ms(100), ms(100), 5),
            (ms(2_000), ms(200), 100),
            (ms(5_000), ms(500), 250),
            (ms(60_000), ms(500), 250),
        ] {
            assert_eq!(step_gap(initial), gap, "{initial:?}");
            assert_eq!(head_start(initial), head, "{initial:?}");
        }
    }

    #[test]
    fn outcomes_follow_the_state_table() {
        let none = serde_json::json!([]);
        let some = serde_json::json!(["boom"]);
        let cases = [
            ("SUCCESS", &none, Some(Outcome::Succeeded)),
            ("DONE", &none, Some(Outcome::Succeeded)),
            ("SUCCESS", &some, Some(Outcome::Failed)),
            ("DONE", &some, Some(Outcome::Failed)),
            ("FAILED", &none, Some(Outcome::Failed)),
            ("FAILURE", &none, Some(Outcome::Failed)),
            ("PENDING", &none, None),
            ("RUNNING", &none, None),
            ("PAUSED", &none, None),
        ];
        for (state, errors, outcome) in cases {
            let n = run(&watch(), &status(state, errors.clone()), 1000);
            assert_eq!(n.outcome, outcome, "{state} {errors}");
            assert_eq!(n.state.as_deref(), Some(state));
            assert_eq!(n.next_poll_at.is_none(), outcome.is_some());
        }
    }

    #[test]
    fn the_cadence_grows_while_the_state_holds_and_resets_on_change() {
        let mut w = run(&watch(), &status("RUNNING", serde_json::json!([])), 0);
        assert_eq!(w.next_poll_at, Some(2000));
        let mut nexts = vec![];
        for t in [2000, 6000, 14000] {
            w = run(&w, &status("RUNNING", serde_json::json!([])), t);
            nexts.push(w.next_poll_at.unwrap() - t);
        }
        assert_eq!(nexts, vec![4000, 8000, 16000]);
        w = run(&w, &status("PENDING", serde_json::json!([])), 30000);
        assert_eq!(w.next_poll_at, Some(32000));
    }

    #[test]
    fn the_learned_cadence_follows_the_history_and_falls_back_to_backoff() {
        let learned = Cadence {
            policy: Policy::Learned,
            ..cadence()
        };
        let history = History::new(None, 50);
        let poll = |w: &WatchRecord, now: Millis, cadence: &Cadence| {
            let n = decide(
                w.clone(),
                status("RUNNING", serde_json::json!([])),
                now,
                cadence,
                Some(&history),
                Duration::from_secs(10),
                &mut StdRng::seed_from_u64(0),
            );
            n.next_poll_at.map(|at| at - now)
        };
        // Nothing learned yet: the backoff cadence.
        assert_eq!(poll(&watch(), 0, &learned), Some(2_000));
        // Jobs of this kind take about ten minutes.
        for i in 0..100 {
            history.observe(
                &WatchRecord {
                    outcome: Some(Outcome::Succeeded),
                    outcome_at: Some(600_000 + i * 300),
                    next_poll_at: None,
                    ..watch()
                },
                None,
            );
        }
        // A fresh job will not end for minutes: the longest interval.
        assert_eq!(poll(&watch(), 1_000, &learned), Some(60_000));
        // Near ten minutes of age ends are likely: polled more often.
        let near = poll(&watch(), 590_000, &learned).expect("running");
        assert!((2_000..30_000).contains(&near), "{near}");
        // The backoff policy ignores the history.
        assert_eq!(poll(&watch(), 590_000, &cadence()), Some(2_000));
    }

    #[test]
    fn not_found_ends_only_after_the_grace() {
        let w = run(&watch(), &PollAnswer::NotFound, 0);
        assert_eq!(w.outcome, None);
        assert_eq!(w.not_found_since, Some(0));
        let w = run(&w, &PollAnswer::NotFound, 9_999);
        assert_eq!(w.outcome, None);
        let w2 = run(&w, &status("RUNNING", serde_json::json!([])), 10_500);
        assert_eq!(w2.not_found_since, None, "a real answer resets the grace");
        let w = run(&w, &PollAnswer::NotFound, 10_000);
        assert_eq!(w.outcome, Some(Outcome::NotFound));
    }

    #[test]
    fn transient_errors_back_off_and_never_end_a_watch() {
        let mut w = watch();
        for i in 1..=20 {
            w = run(
                &w,
                &PollAnswer::Transient {
                    error: "HTTP 502".into(),
                },
                i * 1000,
            );
            assert_eq!(w.outcome, None);
        }
        assert_eq!(w.error_count, 20);
        assert_eq!(w.consecutive_errors, 20);
        assert_eq!(w.last_error.as_deref(), Some("HTTP 502"));
        let w = run(&w, &status("RUNNING", serde_json::json!([])), 99_000);
        assert_eq!(w.consecutive_errors, 0);
        assert_eq!(w.error_count, 20);
    }

    #[test]
    fn rejection_ends_the_watch_with_the_detail() {
        let w = run(
            &watch(),
            &PollAnswer::Rejected {
                status: 400,
                detail: "bad".into(),
            },
            5,
        );
        assert_eq!(w.outcome, Some(Outcome::Rejected));
        assert_eq!(w.last_error.as_deref(), Some("HTTP 400: bad"));
    }
}
