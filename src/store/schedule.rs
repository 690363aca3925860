//! The poll schedule of a SQLite store's running watches, kept in memory.
//!
//! A SQLite file has one daemon, so which running watch is polled next, which are
//! claimed, and the bookkeeping of poll results that changed nothing else (next and
//! last poll time, interval, counters) live here; the file gets that bookkeeping at
//! checkpoints ([`super::Store::checkpoint`]) and when the daemon stops. Writing each
//! such result cost the daemon more CPU than the poll itself (BENCHMARKS.md). A
//! result that changes what a user sees of the job (its state, the upstream's
//! attributes, the error text) and every outcome are still written at once, and an
//! outcome with its event in one transaction.
//!
//! After `kill -9` the file holds the bookkeeping of the last checkpoint: a watch
//! may be polled earlier than planned after the restart and its poll count may read
//! lower. Nothing acknowledged (a watch, an outcome, an event) depends on it.

use std::collections::{BTreeSet, HashMap};

use super::{Millis, UpstreamFields, WatchRecord};

/// The part of a watch's row that only polling changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bookkeeping {
    pub generation: i64,
    pub last_poll_at: Option<Millis>,
    pub next_poll_at: Option<Millis>,
    pub interval_ms: i64,
    pub poll_count: i64,
    pub error_count: i64,
    pub consecutive_errors: i64,
}

impl Bookkeeping {
    pub fn of(w: &WatchRecord) -> Bookkeeping {
        Bookkeeping {
            generation: w.generation,
            last_poll_at: w.last_poll_at,
            next_poll_at: w.next_poll_at,
            interval_ms: w.interval_ms,
            poll_count: w.poll_count,
            error_count: w.error_count,
            consecutive_errors: w.consecutive_errors,
        }
    }

    /// `w` with this bookkeeping, if it is of `w`'s generation.
    pub fn overlay(&self, w: &mut WatchRecord) {
        if w.generation == self.generation {
            w.last_poll_at = self.last_poll_at;
            w.next_poll_at = self.next_poll_at;
            w.interval_ms = self.interval_ms;
            w.poll_count = self.poll_count;
            w.error_count = self.error_count;
            w.consecutive_errors = self.consecutive_errors;
        }
    }
}

/// What a user sees of a watch besides its bookkeeping: a result that changes any
/// of it is written at once.
#[derive(Debug, Clone)]
struct Seen {
    generation: i64,
    state: Option<String>,
    upstream: UpstreamFields,
    last_error: Option<String>,
    not_found_since: Option<Millis>,
}

impl Seen {
    fn of(w: &WatchRecord) -> Seen {
        Seen {
            generation: w.generation,
            state: w.state.clone(),
            upstream: w.upstream.clone(),
            last_error: w.last_error.clone(),
            not_found_since: w.not_found_since,
        }
    }

    /// Does `w` look as it did (compared in place: this runs for every poll result)?
    fn matches(&self, w: &WatchRecord) -> bool {
        self.generation == w.generation
            && self.state == w.state
            && self.upstream == w.upstream
            && self.last_error == w.last_error
            && self.not_found_since == w.not_found_since
    }
}

struct Lease {
    until: Millis,
    /// As the watch was when claimed.
    seen: Option<Seen>,
}

#[derive(Default)]
pub struct Schedule {
    /// Running watches not claimed, by next poll time.
    due: BTreeSet<(Millis, i64)>,
    /// wid -> its key in `due`.
    at: HashMap<i64, Millis>,
    /// Claimed watches, until their result is applied or the lease runs out.
    leased: HashMap<i64, Lease>,
    /// Bookkeeping applied here and not yet written to the file.
    unwritten: HashMap<i64, Bookkeeping>,
    /// Running watches with a deadline, by deadline (claimed or not): the poller
    /// asks the file for expired watches only when one is due here.
    deadlines: BTreeSet<(Millis, i64)>,
    deadline_of: HashMap<i64, Millis>,
}

impl Schedule {
    /// A running watch (new, posted again, or read at start) is due at `next`
    /// and ends at `deadline`; whatever was known of it before is forgotten.
    pub fn add(&mut self, wid: i64, next: Millis, deadline: Option<Millis>) {
        self.remove(wid);
        self.due.insert((next, wid));
        self.at.insert(wid, next);
        if let Some(d) = deadline {
            self.deadlines.insert((d, wid));
            self.deadline_of.insert(wid, d);
        }
    }

    /// The watch ended: it is no longer scheduled, and a result still in flight for
    /// it will not apply.
    pub fn remove(&mut self, wid: i64) {
        if let Some(next) = self.at.remove(&wid) {
            self.due.remove(&(next, wid));
        }
        self.leased.remove(&wid);
        self.unwritten.remove(&wid);
        if let Some(d) = self.deadline_of.remove(&wid) {
            self.deadlines.remove(&(d, wid));
        }
    }

    /// Lease up to `limit` watches due at `now`, earliest first. Leases that ran
    /// out (a poll abandoned while it waited for the budget) make their watches
    /// due again first.
    pub fn claim(&mut self, now: Millis, limit: usize, until: Millis) -> Vec<i64> {
        let expired: Vec<i64> = self
            .leased
            .iter()
            .filter(|(_, l)| l.until <= now)
            .map(|(wid, _)| *wid)
            .collect();
        for wid in expired {
            self.leased.remove(&wid);
            self.due.insert((now, wid));
            self.at.insert(wid, now);
        }
        let mut claimed = Vec::new();
        while claimed.len() < limit {
            match self.due.first() {
                Some(&(next, wid)) if next <= now => {
                    self.due.pop_first();
                    self.at.remove(&wid);
                    self.leased.insert(wid, Lease { until, seen: None });
                    claimed.push(wid);
                }
                _ => break,
            }
        }
        claimed
    }

    /// A claim that could not be used (its rows could not be read): due again at `at`.
    pub fn unclaim(&mut self, wid: i64, at: Millis) {
        if self.leased.remove(&wid).is_some() {
            self.reschedule(wid, Some(at));
        }
    }

    /// Remember how a claimed watch looked, to tell later whether its result
    /// changed more than the bookkeeping. Forgets the claim of a watch that is not
    /// running any more (`w` is `None`).
    pub fn claimed(&mut self, wid: i64, w: Option<&WatchRecord>) {
        match w {
            Some(w) => {
                if let Some(lease) = self.leased.get_mut(&wid) {
                    lease.seen = Some(Seen::of(w));
                }
            }
            None => self.remove(wid),
        }
    }

    /// Is `w` (a claimed watch's next values, still running) a result that only
    /// changes its bookkeeping?
    pub fn only_bookkeeping(&self, w: &WatchRecord) -> bool {
        w.outcome.is_none()
            && self
                .leased
                .get(&w.wid)
                .and_then(|l| l.seen.as_ref())
                .is_some_and(|seen| seen.matches(w))
    }

    /// Apply such a result here (see [`Schedule::only_bookkeeping`]). False if the
    /// watch is no longer claimed (it ended, or was posted again, meanwhile).
    pub fn note(&mut self, w: &WatchRecord) -> bool {
        if self.leased.remove(&w.wid).is_none() {
            return false;
        }
        self.unwritten.insert(w.wid, Bookkeeping::of(w));
        self.reschedule(w.wid, w.next_poll_at);
        true
    }

    /// A result of a claimed watch was written: due again at `next` (`None`:
    /// it ended). The file now holds its bookkeeping.
    pub fn written(&mut self, wid: i64, next: Option<Millis>) {
        self.unwritten.remove(&wid);
        if self.leased.remove(&wid).is_some() || self.at.contains_key(&wid) {
            self.reschedule(wid, next);
        }
    }

    /// The watch's next poll moved in the file (a restart spread the overdue
    /// ones): due at `next`, unless it is claimed.
    pub fn due_at(&mut self, wid: i64, next: Millis) {
        if self.at.contains_key(&wid) {
            self.reschedule(wid, Some(next));
        }
    }

    fn reschedule(&mut self, wid: i64, next: Option<Millis>) {
        if let Some(old) = self.at.remove(&wid) {
            self.due.remove(&(old, wid));
        }
        if let Some(next) = next {
            self.due.insert((next, wid));
            self.at.insert(wid, next);
        }
    }

    pub fn unwritten(&self, wid: i64) -> Option<&Bookkeeping> {
        self.unwritten.get(&wid)
    }

    /// `w` (read from the file) with the bookkeeping not written there yet.
    pub fn overlay(&self, w: &mut WatchRecord) {
        if let Some(b) = self.unwritten.get(&w.wid) {
            b.overlay(w);
        }
    }

    /// The watches with bookkeeping not yet written, in rowid order: neighbours
    /// share pages, so a checkpoint's chunk of 2,000 dirties a few hundred pages,
    /// not 2,000 (in hash order, a checkpoint of 300,000 watches held the one
    /// writer for 25 s).
    pub fn unwritten_wids(&self) -> Vec<i64> {
        let mut wids: Vec<i64> = self.unwritten.keys().copied().collect();
        wids.sort_unstable();
        wids
    }

    /// The bookkeeping of `wids` not yet written, to write now (taken a chunk at a
    /// time, so that a checkpoint holds one chunk's copy, not all of them).
    pub fn take_unwritten(&mut self, wids: &[i64]) -> Vec<(i64, Bookkeeping)> {
        wids.iter()
            .filter_map(|wid| self.unwritten.remove(wid).map(|b| (*wid, b)))
            .collect()
    }

    /// Writing `taken` failed: keep what was not replaced meanwhile for the next try.
    pub fn restore_unwritten(&mut self, taken: Vec<(i64, Bookkeeping)>) {
        for (wid, b) in taken {
            if self.at.contains_key(&wid) || self.leased.contains_key(&wid) {
                self.unwritten.entry(wid).or_insert(b);
            }
        }
    }

    /// The earliest next poll of a watch not claimed.
    pub fn next_due(&self) -> Option<Millis> {
        self.due.first().map(|(at, _)| *at)
    }

    /// The earliest deadline of a running watch.
    pub fn first_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Watches not claimed whose poll was due before `before`.
    pub fn overdue(&self, before: Millis) -> u64 {
        self.due.range(..(before, i64::MIN)).count() as u64
    }

    /// Running watches known here (claimed or not).
    pub fn len(&self) -> usize {
        self.at.len() + self.leased.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watch polled once, RUNNING.
    fn watch(wid: i64) -> WatchRecord {
        WatchRecord {
            state: Some("RUNNING".into()),
            poll_count: 1,
            ..WatchRecord::sample(wid)
        }
    }

    #[test]
    fn claims_take_the_earliest_due_watches_once() {
        let mut s = Schedule::default();
        for (wid, next) in [(1, 300), (2, 100), (3, 200), (4, 5_000)] {
            s.add(wid, next, None);
        }
        assert_eq!(s.claim(1_000, 2, 9_000), vec![2, 3]);
        assert_eq!(s.claim(1_000, 10, 9_000), vec![1]);
        assert_eq!(s.claim(1_000, 10, 9_000), Vec::<i64>::new());
        assert_eq!(s.next_due(), Some(5_000));
        assert_eq!(s.len(), 4);
        assert_eq!(s.overdue(1_000), 0, "claimed watches are not overdue");
    }

    #[test]
    fn a_result_that_changes_only_bookkeeping_stays_here_and_reschedules() {
        let mut s = Schedule::default();
        s.add(1, 0, None);
        let w = watch(1);
        assert_eq!(s.claim(10, 1, 1_000), vec![1]);
        s.claimed(1, Some(&w));
        let mut next = w.clone();
        next.poll_count = 2;
        next.last_poll_at = Some(10);
        next.next_poll_at = Some(2_010);
        assert!(s.only_bookkeeping(&next));
        assert!(s.note(&next));
        assert_eq!(s.unwritten(1).map(|b| b.poll_count), Some(2));
        assert_eq!(s.next_due(), Some(2_010));
        assert!(
            !s.note(&next),
            "a second result without a claim does not apply"
        );

        let mut changed = next.clone();
        assert_eq!(s.claim(3_000, 1, 9_000), vec![1]);
        s.claimed(1, Some(&next));
        changed.state = Some("SUCCESS".into());
        assert!(!s.only_bookkeeping(&changed), "a state change is written");
        changed.state = next.state.clone();
        changed.last_error = Some("HTTP 502".into());
        assert!(!s.only_bookkeeping(&changed), "a new error text is written");
        changed.last_error = None;
        changed.outcome = Some(crate::model::Outcome::Succeeded);
        assert!(!s.only_bookkeeping(&changed), "an outcome is written");
        s.written(1, None);
        assert_eq!(s.unwritten(1), None);
        assert_eq!(s.len(), 0);
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn an_ended_or_reposted_watch_ignores_a_late_result() {
        let mut s = Schedule::default();
        s.add(1, 0, None);
        let w = watch(1);
        s.claim(10, 1, 1_000);
        s.claimed(1, Some(&w));
        s.remove(1); // cancelled while its poll was in flight
        assert!(!s.note(&w));
        assert_eq!(s.len(), 0);

        s.add(2, 0, None);
        s.claim(10, 1, 1_000);
        s.claimed(2, Some(&watch(2)));
        s.add(2, 500, None); // posted again: a new generation
        assert!(!s.note(&watch(2)));
        assert_eq!(s.next_due(), Some(500));
    }

    #[test]
    fn a_lease_that_runs_out_makes_the_watch_due_again() {
        let mut s = Schedule::default();
        s.add(1, 0, None);
        assert_eq!(s.claim(10, 1, 100), vec![1]);
        assert_eq!(s.claim(50, 1, 200), Vec::<i64>::new());
        assert_eq!(s.claim(100, 1, 200), vec![1]);
    }

    #[test]
    fn unwritten_bookkeeping_survives_a_failed_write_unless_replaced() {
        let mut s = Schedule::default();
        for wid in [1, 2] {
            s.add(wid, 0, None);
        }
        s.claim(10, 2, 1_000);
        for wid in [1, 2] {
            s.claimed(wid, Some(&watch(wid)));
            let mut w = watch(wid);
            w.poll_count = 5;
            assert!(s.note(&w));
        }
        let wids = s.unwritten_wids();
        assert_eq!(wids, vec![1, 2]);
        let taken = s.take_unwritten(&wids);
        assert_eq!(taken.len(), 2);
        assert_eq!(s.unwritten(1), None);
        // Meanwhile watch 1 was polled again, and watch 2 ended.
        s.claim(10, 1, 1_000);
        s.claimed(1, Some(&watch(1)));
        let mut w1 = watch(1);
        w1.poll_count = 6;
        s.note(&w1);
        s.remove(2);
        s.restore_unwritten(taken);
        assert_eq!(s.unwritten(1).map(|b| b.poll_count), Some(6));
        assert_eq!(s.unwritten(2), None);
    }

    #[test]
    fn deadlines_are_known_until_the_watch_ends() {
        let mut s = Schedule::default();
        s.add(1, 0, Some(9_000));
        s.add(2, 0, None);
        s.add(3, 0, Some(5_000));
        assert_eq!(s.first_deadline(), Some(5_000));
        s.claim(10, 3, 1_000);
        assert_eq!(
            s.first_deadline(),
            Some(5_000),
            "a claimed watch keeps its deadline"
        );
        s.remove(3);
        assert_eq!(s.first_deadline(), Some(9_000));
        s.add(1, 0, None); // posted again without a deadline
        assert_eq!(s.first_deadline(), None);
    }

    #[test]
    fn a_moved_poll_moves_unless_claimed() {
        let mut s = Schedule::default();
        s.add(1, 0, None);
        s.add(2, 0, None);
        assert_eq!(s.claim(10, 1, 1_000), vec![1]);
        s.due_at(1, 500); // claimed: its result decides
        s.due_at(2, 700);
        s.due_at(3, 100); // not running: nothing to move
        assert_eq!(s.next_due(), Some(700));
        assert_eq!(s.len(), 2);
        assert_eq!(s.claim(700, 10, 9_000), vec![2]);
    }

    #[test]
    fn overdue_counts_unclaimed_watches_due_before_a_time() {
        let mut s = Schedule::default();
        for wid in 0..10 {
            s.add(wid, wid * 100, None);
        }
        assert_eq!(s.overdue(450), 5);
        assert_eq!(s.overdue(0), 0);
    }
}
