//! The poll schedule of a SQLite store's running watches, kept in memory.
//!
//! A SQLite file has one daemon, so which running watch is polled next, which are
//! claimed, and what poll results changed of a watch that keeps running (next and
//! last poll time, interval, counters, and its state, the upstream's attributes
//! and the error text when they change) live here; the file gets them at
//! checkpoints ([`super::Store::checkpoint`]), sorted by rowid so that neighbours
//! share the pages written, and when the daemon stops. Writing each such result at
//! once cost the daemon more CPU than the poll itself, and a state change written
//! alone about two pages of WAL (BENCHMARKS.md). Every outcome is written at once,
//! with its event, in one transaction; reads lay what is held here over the file.
//!
//! After `kill -9` the file holds what the last checkpoint wrote: a watch may be
//! polled earlier than planned after the restart, its poll count may read lower
//! and its state may be one it has since left, until its next poll. Nothing
//! acknowledged (a watch, an outcome, an event) depends on it.

use std::collections::{BTreeSet, HashMap};

use super::{Millis, UpstreamFields, WatchRecord};
use crate::model::Kind;

/// Which kinds a claim is for: one upstream's poller claims only its own kinds, so
/// that watches of a paused upstream never take the room of another's.
pub type Lane<'a> = Option<&'a [Kind]>;

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

/// What a user sees of a watch besides its bookkeeping.
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

impl Seen {
    fn overlay(&self, w: &mut WatchRecord) {
        if w.generation == self.generation {
            w.state.clone_from(&self.state);
            w.upstream.clone_from(&self.upstream);
            w.last_error.clone_from(&self.last_error);
            w.not_found_since = self.not_found_since;
        }
    }
}

/// A running watch's state (and the rest of what it shows) that changed since the
/// file last got it, with the state the file still holds (for counts by state).
#[derive(Debug, Clone)]
pub struct Held {
    seen: Seen,
    file_state: Option<String>,
}

impl Held {
    /// The state the file holds, and the one the watch is in.
    pub fn states(&self) -> (&Option<String>, &Option<String>) {
        (&self.file_state, &self.seen.state)
    }

    /// The values to write: (state, upstream attributes, last error, not found since).
    pub fn values(
        &self,
    ) -> (
        &Option<String>,
        &UpstreamFields,
        &Option<String>,
        Option<Millis>,
    ) {
        let s = &self.seen;
        (&s.state, &s.upstream, &s.last_error, s.not_found_since)
    }
}

/// What the file does not have yet of one running watch.
#[derive(Debug, Clone)]
pub struct Unwritten {
    pub book: Bookkeeping,
    /// Boxed: most results change only the bookkeeping.
    pub held: Option<Box<Held>>,
}

struct Lease {
    until: Millis,
    /// Its kind's place in `kinds`: an expired lease is due again in its lane.
    lane: u16,
    /// As the watch was when claimed.
    seen: Option<Seen>,
}

#[derive(Default)]
pub struct Schedule {
    /// The kinds seen, in order: a watch's lane is its kind's place here (two bytes
    /// a watch, where the kind itself would be sixteen).
    kinds: Vec<Kind>,
    /// Per lane: running watches not claimed, by next poll time.
    due: Vec<BTreeSet<(Millis, i64)>>,
    /// wid -> its lane and its key in `due`.
    at: HashMap<i64, (u16, Millis)>,
    /// Claimed watches, until their result is applied or the lease runs out.
    leased: HashMap<i64, Lease>,
    /// Results applied here and not yet written to the file.
    unwritten: HashMap<i64, Unwritten>,
    /// How many of them hold a changed state.
    held: usize,
    /// Running watches with a deadline, by deadline (claimed or not): the poller
    /// asks the file for expired watches only when one is due here.
    deadlines: BTreeSet<(Millis, i64)>,
    deadline_of: HashMap<i64, Millis>,
    /// The whole of watches as their last poll left them, for the claim of their
    /// next poll to take instead of reading the file (up to `KEPT_MAX`).
    kept: HashMap<i64, Box<WatchRecord>>,
}

/// Running watches up to which each is kept whole in memory after its poll,
/// about 600 bytes each (15 MB at most). Reading the claimed rows was an eighth
/// of the daemon's CPU at 400 polls/s (a 23-column JSON array a row, built on
/// SQLite's thread and parsed back); a watch polled every few seconds is claimed
/// again long before a checkpoint, and with its record kept here it costs no read
/// at all. Above this many running watches none is kept: at 100,000 the kept
/// records saved no CPU (the claims are large there) and cost 9 MiB of RSS
/// (BENCHMARKS.md, session 12).
pub const KEPT_MAX: usize = 25_000;

impl Schedule {
    /// A running watch (new, posted again, or read at start) is due at `next`
    /// and ends at `deadline`; whatever was known of it before is forgotten.
    pub fn add(&mut self, wid: i64, kind: Kind, next: Millis, deadline: Option<Millis>) {
        self.remove(wid);
        let lane = self.lane_of(kind);
        self.due[lane as usize].insert((next, wid));
        self.at.insert(wid, (lane, next));
        if let Some(d) = deadline {
            self.deadlines.insert((d, wid));
            self.deadline_of.insert(wid, d);
        }
    }

    /// The watch ended: it is no longer scheduled, and a result still in flight for
    /// it will not apply.
    pub fn remove(&mut self, wid: i64) {
        if let Some((lane, next)) = self.at.remove(&wid) {
            self.due[lane as usize].remove(&(next, wid));
        }
        self.leased.remove(&wid);
        self.forget_unwritten(wid);
        self.kept.remove(&wid);
        if let Some(d) = self.deadline_of.remove(&wid) {
            self.deadlines.remove(&(d, wid));
        }
    }

    /// The lane of `kind`, made on first sight.
    fn lane_of(&mut self, kind: Kind) -> u16 {
        match self.kinds.iter().position(|k| *k == kind) {
            Some(i) => i as u16,
            None => {
                self.kinds.push(kind);
                self.due.push(BTreeSet::new());
                (self.kinds.len() - 1) as u16
            }
        }
    }

    /// The lanes of `only` (every lane for `None`).
    fn lanes(&self, only: Lane) -> Vec<usize> {
        (0..self.kinds.len())
            .filter(|i| only.is_none_or(|kinds| kinds.contains(&self.kinds[*i])))
            .collect()
    }

    /// Lease up to `limit` watches of the lane `only` due at `now`, earliest first.
    /// Leases that ran out (a poll abandoned while it waited for the budget) make
    /// their watches due again first.
    pub fn claim(&mut self, only: Lane, now: Millis, limit: usize, until: Millis) -> Vec<i64> {
        let expired: Vec<(i64, u16)> = self
            .leased
            .iter()
            .filter(|(_, l)| l.until <= now)
            .map(|(wid, l)| (*wid, l.lane))
            .collect();
        for (wid, lane) in expired {
            self.leased.remove(&wid);
            self.due[lane as usize].insert((now, wid));
            self.at.insert(wid, (lane, now));
        }
        let lanes = self.lanes(only);
        let mut claimed = Vec::new();
        while claimed.len() < limit {
            // The earliest due of the lanes asked for (an upstream has a few kinds).
            let first = lanes
                .iter()
                .filter_map(|l| self.due[*l].first().map(|k| (*k, *l)))
                .min();
            match first {
                Some(((next, wid), lane)) if next <= now => {
                    self.due[lane].pop_first();
                    self.at.remove(&wid);
                    let lease = Lease {
                        until,
                        lane: lane as u16,
                        seen: None,
                    };
                    self.leased.insert(wid, lease);
                    claimed.push(wid);
                }
                _ => break,
            }
        }
        claimed
    }

    /// A claim that could not be used (its rows could not be read): due again at `at`.
    pub fn unclaim(&mut self, wid: i64, at: Millis) {
        if let Some(lease) = self.leased.remove(&wid) {
            self.reschedule_in(wid, Some(lease.lane), Some(at));
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

    /// Can `w` (a claimed watch's next values) be held here until a checkpoint?
    /// Yes if the watch keeps running in the generation that was claimed.
    pub fn holds(&self, w: &WatchRecord) -> bool {
        w.outcome.is_none()
            && self
                .leased
                .get(&w.wid)
                .and_then(|l| l.seen.as_ref())
                .is_some_and(|seen| seen.generation == w.generation)
    }

    /// Apply such a result here (see [`Schedule::holds`]). False if the watch is
    /// no longer claimed (it ended, or was posted again, meanwhile).
    pub fn note(&mut self, w: &WatchRecord) -> bool {
        let Some(lease) = self.leased.remove(&w.wid) else {
            return false;
        };
        let lane = lease.lane;
        let before = self.forget_unwritten(w.wid).and_then(|u| u.held);
        // The claim saw the watch with what was held laid over the file.
        let held = match lease.seen {
            Some(seen) if !seen.matches(w) => Some(Box::new(Held {
                file_state: before.map_or(seen.state, |b| b.file_state),
                seen: Seen::of(w),
            })),
            _ => before,
        };
        self.keep_unwritten(
            w.wid,
            Unwritten {
                book: Bookkeeping::of(w),
                held,
            },
        );
        self.reschedule_in(w.wid, Some(lane), w.next_poll_at);
        true
    }

    /// Keep `w`, a result just noted, whole for its next claim (while every
    /// running watch may be kept: see [`KEPT_MAX`]).
    pub fn keep(&mut self, w: WatchRecord) {
        if self.len() <= KEPT_MAX && self.at.contains_key(&w.wid) {
            self.kept.insert(w.wid, Box::new(w));
        }
    }

    /// The watch as its last poll left it, if it was kept: the claim that just
    /// took it needs no read.
    pub fn take_kept(&mut self, wid: i64) -> Option<WatchRecord> {
        self.kept.remove(&wid).map(|w| *w)
    }

    fn keep_unwritten(&mut self, wid: i64, u: Unwritten) {
        self.held += usize::from(u.held.is_some());
        if let Some(old) = self.unwritten.insert(wid, u) {
            self.held -= usize::from(old.held.is_some());
        }
    }

    fn forget_unwritten(&mut self, wid: i64) -> Option<Unwritten> {
        let old = self.unwritten.remove(&wid);
        if let Some(u) = &old {
            self.held -= usize::from(u.held.is_some());
        }
        old
    }

    /// A result of a claimed watch was written: due again at `next` (`None`:
    /// it ended). The file now holds its bookkeeping.
    pub fn written(&mut self, wid: i64, next: Option<Millis>) {
        self.forget_unwritten(wid);
        self.kept.remove(&wid);
        if let Some(lease) = self.leased.remove(&wid) {
            self.reschedule_in(wid, Some(lease.lane), next);
        } else if self.at.contains_key(&wid) {
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

    /// Due again at `next` (`None`: not scheduled) in its lane, which it keeps
    /// while claimed (the lease knows it) or scheduled.
    fn reschedule(&mut self, wid: i64, next: Option<Millis>) {
        self.reschedule_in(wid, None, next);
    }

    fn reschedule_in(&mut self, wid: i64, lease_lane: Option<u16>, next: Option<Millis>) {
        let mut lane = lease_lane;
        if let Some((l, old)) = self.at.remove(&wid) {
            self.due[l as usize].remove(&(old, wid));
            lane = Some(l);
        }
        if let (Some(next), Some(lane)) = (next, lane) {
            self.due[lane as usize].insert((next, wid));
            self.at.insert(wid, (lane, next));
        }
    }

    pub fn unwritten(&self, wid: i64) -> Option<&Unwritten> {
        self.unwritten.get(&wid)
    }

    /// `w` (read from the file) with what is not written there yet.
    pub fn overlay(&self, w: &mut WatchRecord) {
        if let Some(u) = self.unwritten.get(&w.wid) {
            u.book.overlay(w);
            if let Some(h) = &u.held {
                h.seen.overlay(w);
            }
        }
    }

    /// How many running watches have poll results the file does not have yet.
    pub fn unwritten_len(&self) -> usize {
        self.unwritten.len()
    }

    /// How many running watches hold a state the file does not have yet.
    pub fn held(&self) -> usize {
        self.held
    }

    /// For each watch holding a changed state: the file's state and its own.
    pub fn held_states(&self) -> impl Iterator<Item = (&Option<String>, &Option<String>)> {
        self.unwritten
            .values()
            .filter_map(|u| u.held.as_ref().map(|h| h.states()))
    }

    /// The watches with results not yet written (`held_only`: only those holding a
    /// changed state), in rowid order: neighbours share pages, so a checkpoint's
    /// chunk of 2,000 dirties a few hundred pages, not 2,000 (in hash order, a
    /// checkpoint of 300,000 watches held the one writer for 25 s).
    pub fn unwritten_wids(&self, held_only: bool) -> Vec<i64> {
        let mut wids: Vec<i64> = self
            .unwritten
            .iter()
            .filter(|(_, u)| !held_only || u.held.is_some())
            .map(|(wid, _)| *wid)
            .collect();
        wids.sort_unstable();
        wids
    }

    /// What is not written of `wids`, to write now (taken a chunk at a time, so
    /// that a checkpoint holds one chunk's copy, not all of them).
    pub fn take_unwritten(&mut self, wids: &[i64]) -> Vec<(i64, Unwritten)> {
        wids.iter()
            .filter_map(|wid| self.forget_unwritten(*wid).map(|u| (*wid, u)))
            .collect()
    }

    /// Writing `taken` failed: keep it for the next try, under what was noted
    /// meanwhile (whose bookkeeping is newer; a state it did not change is still
    /// the one taken).
    pub fn restore_unwritten(&mut self, taken: Vec<(i64, Unwritten)>) {
        for (wid, u) in taken {
            if !(self.at.contains_key(&wid) || self.leased.contains_key(&wid)) {
                continue;
            }
            match self.forget_unwritten(wid) {
                None => self.keep_unwritten(wid, u),
                Some(mut newer) => {
                    if newer.held.is_none() && newer.book.generation == u.book.generation {
                        newer.held = u.held;
                    }
                    self.keep_unwritten(wid, newer);
                }
            }
        }
    }

    /// The earliest next poll of a watch of the lane `only` not claimed.
    pub fn next_due(&self, only: Lane) -> Option<Millis> {
        self.lanes(only)
            .into_iter()
            .filter_map(|l| self.due[l].first().map(|(at, _)| *at))
            .min()
    }

    /// The earliest deadline of a running watch.
    pub fn first_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Watches not claimed whose poll was due before `before`.
    pub fn overdue(&self, before: Millis) -> u64 {
        self.due
            .iter()
            .map(|d| d.range(..(before, i64::MIN)).count() as u64)
            .sum()
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
mod tests;
