//! Batches the poller's and the dispatcher's writes into few transactions.
//!
//! Producers send decided updates into a channel; one task takes whatever has
//! piled up while the previous commit ran (no timer: batches grow with load and
//! a lone update commits at once) and applies it in one transaction. A failed
//! commit is retried until the store answers again; nothing is dropped. After
//! each commit, `Signals` tell waiters which watches ended and the dispatcher
//! that deliveries are queued.

use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch, Notify};

use super::{AttemptResult, DynStore, Millis, WatchUpdate};

/// Most writes per transaction.
const MAX_BATCH: usize = 2048;

/// What other parts of the daemon learn from commits.
pub struct Signals {
    /// Watch ids whose outcome was just stored (`?wait` listens).
    pub finished: broadcast::Sender<i64>,
    /// Deliveries were queued: the dispatcher should look.
    pub deliveries: Notify,
    /// Watches were posted or rescheduled: every poller (one per upstream) should
    /// look. A counter, so that each poller sees a change it slept through.
    pub watches: watch::Sender<u64>,
    /// Events were committed (outcomes, cancellations): event streams read the
    /// store again. A counter, so that a stream sees a commit it slept through.
    pub events: watch::Sender<u64>,
    /// State changes as polls find them, for event streams that asked for them.
    /// Live only (never stored as events: that would be a write per change): a
    /// stream that falls this channel's length behind is closed, saying so.
    pub states: broadcast::Sender<Arc<StateChange>>,
    /// The last batched write failed and none has succeeded since: `/readyz` says
    /// so. Set and cleared only by the writer.
    pub write_failing: std::sync::atomic::AtomicBool,
    /// The last checkpoint of poll bookkeeping failed: `/readyz` says so. Set and
    /// cleared only by the checkpoint loop (a batched write that succeeds says
    /// nothing about checkpoints, and the other way round).
    pub checkpoint_failing: std::sync::atomic::AtomicBool,
    /// When each poller next wakes by itself (Unix ms; `Millis::MAX` while it is
    /// awake): a watch rescheduled before that wakes the pollers, a later one does
    /// not. At a poll a second per watch, waking them for every result cost a
    /// wake-up per poll for nothing.
    wakes: std::sync::Mutex<Vec<Arc<AtomicI64>>>,
}

impl Signals {
    pub fn new() -> Arc<Signals> {
        Arc::new(Signals {
            finished: broadcast::channel(8192).0,
            deliveries: Notify::new(),
            watches: watch::channel(0).0,
            events: watch::channel(0).0,
            states: broadcast::channel(STATE_CHANGES_KEPT).0,
            write_failing: std::sync::atomic::AtomicBool::new(false),
            checkpoint_failing: std::sync::atomic::AtomicBool::new(false),
            wakes: Default::default(),
        })
    }

    /// A poller's wake-up plan: it stores there when it next wakes by itself.
    pub fn wake_plan(&self) -> Arc<AtomicI64> {
        let plan = Arc::new(AtomicI64::new(Millis::MAX));
        self.wakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&plan));
        plan
    }

    /// A running watch is next due at `at`: wake the pollers if one would sleep past it.
    pub fn rescheduled(&self, at: Millis) {
        let late = self
            .wakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|plan| plan.load(SeqCst) > at);
        if late {
            self.watches_changed();
        }
    }

    /// Announce what a committed batch of watch updates did.
    pub fn watches_committed(&self, updates: &[WatchUpdate], applied: &[bool]) {
        let mut queued = false;
        let mut earliest: Option<Millis> = None;
        for (u, ok) in updates.iter().zip(applied) {
            if let (true, Some(outcome)) = (*ok, u.record.outcome) {
                crate::metrics::outcome_stored(outcome);
                let _ = self.finished.send(u.record.wid);
                queued |= u.event.as_ref().is_some_and(|e| !e.deliveries.is_empty());
            } else if *ok {
                let at = u.record.next_poll_at.unwrap_or(Millis::MIN);
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        }
        if queued {
            self.deliveries.notify_one();
        }
        if updates
            .iter()
            .zip(applied)
            .any(|(u, ok)| *ok && u.event.is_some())
        {
            self.events_committed();
        }
        // A still-running watch got its next poll time (maybe in 100 ms): a poller
        // asleep on the leased row's far-off time must look again or it oversleeps
        // by up to a second.
        if let Some(at) = earliest {
            self.rescheduled(at);
        }
    }

    /// Wake every poller: watches were posted or rescheduled.
    pub fn watches_changed(&self) {
        self.watches.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wake every event stream: events were committed.
    pub fn events_committed(&self) {
        self.events.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Does any event stream want state changes? Polls build them only then.
    pub fn wants_states(&self) -> bool {
        self.states.receiver_count() > 0
    }

    /// Tell the streams that want them that `w`'s state changed from `previous`.
    pub fn state_changed(&self, previous: Option<&str>, w: &super::WatchRecord) {
        let body = serde_json::json!({
            "type": STATE_CHANGED_EVENT,
            "timestamp": w.last_poll_at.map(crate::view::rfc3339),
            "previous_state": previous,
            "data": crate::view::watch(w),
        })
        .to_string();
        // No receiver left since the check: nobody to tell.
        let _ = self
            .states
            .send(Arc::new(StateChange { kind: w.kind, body }));
    }
}

/// The stream's event type of a state change (live only, never a webhook).
pub const STATE_CHANGED_EVENT: &str = "job.state_changed";

/// State changes the channel keeps for the slowest stream: past this many behind,
/// a stream is closed (about 1 KiB each, shared by every stream).
pub const STATE_CHANGES_KEPT: usize = 4096;

/// One state change, as every stream that wants it sends it.
#[derive(Debug)]
pub struct StateChange {
    pub kind: crate::model::Kind,
    /// `{"type":"job.state_changed","timestamp","previous_state","data":{the watch}}`.
    pub body: String,
}

// Most writes are watch updates: boxing them would cost an allocation per poll to
// shrink the rarer attempt results.
#[allow(clippy::large_enum_variant)]
pub enum Write {
    Watch(WatchUpdate),
    Attempt(AttemptResult),
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Write>,
}

impl Writer {
    /// Queue a write; waits when the queue is full (backpressure on pollers).
    pub async fn send(&self, w: Write) {
        if self.tx.send(w).await.is_err() {
            tracing::error!("the store writer has stopped; a write was not queued");
        }
    }
}

/// Start the writer task. It ends when every `Writer` is dropped and the queue is drained.
pub fn spawn(store: DynStore, signals: Arc<Signals>) -> (Writer, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(MAX_BATCH * 2);
    let handle = tokio::spawn(run(store, signals, rx));
    (Writer { tx }, handle)
}

async fn run(store: DynStore, signals: Arc<Signals>, mut rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Most of a batch is one kind: room for all of it, not growth one by one.
        let mut watches = Vec::with_capacity(batch.len());
        let mut attempts = Vec::new();
        for w in batch.drain(..) {
            match w {
                Write::Watch(u) => watches.push(u),
                Write::Attempt(a) => attempts.push(a),
            }
        }
        if !watches.is_empty() {
            let started = std::time::Instant::now();
            let applied = retry("poll results", &signals, || {
                store.apply_watch_updates(&watches)
            })
            .await;
            crate::metrics::store_write("poll_results", started.elapsed());
            signals.watches_committed(&watches, &applied);
        }
        if !attempts.is_empty() {
            let started = std::time::Instant::now();
            retry("delivery attempts", &signals, || {
                store.record_attempts(&attempts)
            })
            .await;
            crate::metrics::store_write("delivery_attempts", started.elapsed());
            // A retry is now due (maybe in a few ms): the dispatcher, asleep on the
            // leased row's far-off time, must look again or it oversleeps by up to a second.
            if attempts.iter().any(|a| a.next_attempt_at.is_some()) {
                signals.deliveries.notify_one();
            }
        }
    }
}

/// Retry a write until the store takes it: a poll result or an attempt that was
/// decided must not be lost to a passing disk or lock problem.
async fn retry<T, F, Fut>(what: &str, signals: &Signals, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = super::Result<T>>,
{
    use std::sync::atomic::Ordering::Relaxed;
    let mut delay = Duration::from_millis(50);
    loop {
        match f().await {
            Ok(v) => {
                signals.write_failing.store(false, Relaxed);
                return v;
            }
            Err(e) => {
                signals.write_failing.store(true, Relaxed);
                tracing::error!(error = %e, what, retry_in_ms = delay.as_millis() as u64, "store write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rescheduled_watch_wakes_the_pollers_only_before_they_would_wake() {
        let signals = Signals::new();
        let mut woken = signals.watches.subscribe();
        let plan = signals.wake_plan();
        plan.store(5_000, SeqCst);
        signals.rescheduled(6_000);
        assert!(!woken.has_changed().unwrap(), "due after the planned wake");
        signals.rescheduled(4_000);
        assert!(woken.has_changed().unwrap(), "due before it");
        woken.borrow_and_update();
        // A full poller waits for room, not for due watches.
        plan.store(Millis::MIN, SeqCst);
        signals.rescheduled(0);
        assert!(!woken.has_changed().unwrap());
        // An awake one sees every change.
        plan.store(Millis::MAX, SeqCst);
        signals.rescheduled(i64::MAX - 1);
        assert!(woken.has_changed().unwrap());
    }
}
