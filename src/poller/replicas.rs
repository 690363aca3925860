//! Replicas on one PostgreSQL database share each upstream's budget.
//!
//! Every [`HEARTBEAT`] (and at once when a budget has news) a replica writes its
//! heartbeat and what it heard of each upstream, and reads back the live replicas
//! and what the others heard, in one transaction (`crate::store::replicas`). Of N
//! live replicas each takes 1/N of every upstream's rate, burst and requests in
//! flight, so that together they stay within the budget:
//!
//! - a replica takes a share only once it has been registered for [`SETTLE`], by
//!   which time every replica still sending has seen it and lowered its own;
//! - a replica that has not heard from the store for [`STALE`] stops sending (it
//!   may hold a share the others have already divided without it);
//! - a replica not seen for [`TIMEOUT`] (a SIGKILL) is dead: the others take its
//!   share at their next heartbeat, and its leases run out (`store.lease`).
//!
//! A pause, a refused token and a lowered rate reach every replica within one
//! heartbeat plus a round trip. The cost: one transaction per heartbeat per
//! replica (1 + upstreams statements), none per poll.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::budget::{Budget, Shared};
use crate::store::replicas::{GateReport, ReplicaStore, ReplicaView};
use crate::store::{DynStore, Millis};

/// How often a replica heartbeats and reads the others' news.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// A replica not seen for this long is dead.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// A replica whose last heartbeat went through this long ago stops sending.
pub const STALE: Duration = Duration::from_secs(1);
/// A new replica waits this long after its first heartbeat before it sends:
/// longer than `STALE`, so every replica still sending has counted it.
pub const SETTLE: Duration = Duration::from_millis(1500);

/// One replica in `/v1/status`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ReplicaStatus {
    pub id: String,
    /// The store's clock at its last heartbeat (RFC 3339).
    pub last_heartbeat: String,
    /// Its part of every upstream's budget (0 until it has settled).
    pub share: f64,
    /// Whether this is the replica that answered.
    pub this: bool,
}

/// This replica's view of the others, and the loop that keeps it.
pub struct Replicas {
    pub id: String,
    store: DynStore,
    budgets: Vec<(String, Arc<Budget>)>,
    seen: Mutex<Vec<ReplicaStatus>>,
}

impl Replicas {
    /// The replica loop of `store`, if several replicas may share it (PostgreSQL).
    /// Its budgets send nothing until the first heartbeat says they may.
    pub fn new(store: DynStore, budgets: Vec<(String, Arc<Budget>)>) -> Option<Arc<Replicas>> {
        store.replicas()?;
        for (_, b) in &budgets {
            b.apply_shared(&idle());
        }
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into());
        let id = format!(
            "{host}-{}-{}",
            std::process::id(),
            &ulid::Ulid::new().to_string()[20..]
        );
        Some(Arc::new(Replicas {
            id,
            store,
            budgets,
            seen: Mutex::new(Vec::new()),
        }))
    }

    fn shared(&self) -> Option<&dyn ReplicaStore> {
        self.store.replicas()
    }

    /// The replicas seen at the last heartbeat.
    pub fn status(&self) -> Vec<ReplicaStatus> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One heartbeat: publish the news of every budget, read the others', set
    /// each budget's share. Returns this replica's share.
    pub async fn step(&self) -> crate::store::Result<f64> {
        let Some(shared) = self.shared() else {
            return Ok(1.0);
        };
        let reports: Vec<GateReport> = self
            .budgets
            .iter()
            .map(|(name, b)| {
                let (news, rate_factor) = b.take_news();
                GateReport {
                    upstream: name.clone(),
                    paused_for_ms: news.paused_for.map(|d| d.as_millis() as Millis),
                    rejected: news.rejected,
                    credentials_ok: news.credentials_ok,
                    rate_factor,
                }
            })
            .collect();
        let view = match shared
            .replica_sync(&self.id, &reports, TIMEOUT.as_millis() as Millis)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                // Not heard: the news goes out at the next heartbeat that is.
                for ((_, b), r) in self.budgets.iter().zip(&reports) {
                    b.restore_news(r.paused_for_ms, r.rejected, r.credentials_ok);
                }
                return Err(e);
            }
        };
        let share = share_of(&self.id, &view);
        for (name, b) in &self.budgets {
            b.apply_shared(&gate(name, share, &view));
        }
        let settled = |started: Millis| view.now - started >= SETTLE.as_millis() as Millis;
        let n = view.replicas.len().max(1) as f64;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = view
            .replicas
            .iter()
            .map(|r| ReplicaStatus {
                id: r.id.clone(),
                last_heartbeat: crate::view::rfc3339(r.last_seen),
                share: if settled(r.started_at) { 1.0 / n } else { 0.0 },
                this: r.id == self.id,
            })
            .collect();
        Ok(share)
    }

    /// Heartbeat until `shutdown`. A replica that cannot reach the store for
    /// [`STALE`] stops sending until it can again.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last_ok = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            // Measured from before the heartbeat: the others date it from its start.
            let began = tokio::time::Instant::now();
            match self.step().await {
                Ok(_) => {
                    last_ok = began;
                    if failing {
                        tracing::info!(replica = %self.id, "the store answers heartbeats again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(replica = %self.id, error = %e, "a heartbeat failed; this replica stops sending if the store stays away");
                        failing = true;
                    }
                    if last_ok.elapsed() >= STALE {
                        for (_, b) in &self.budgets {
                            b.apply_shared(&idle());
                        }
                    }
                }
            }
            let news = futures::future::select_all(
                self.budgets.iter().map(|(_, b)| Box::pin(b.news_ready())),
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = news, if !self.budgets.is_empty() => {}
            }
        }
    }

    /// This replica stops: its row goes, and the others take its share. Called
    /// once its requests in flight have finished, so they never overlap the
    /// others' larger shares.
    pub async fn leave(&self) {
        if let Some(shared) = self.shared() {
            if let Err(e) = shared.replica_leave(&self.id).await {
                tracing::warn!(replica = %self.id, error = %e, "could not sign off; the others take over after the heartbeat timeout");
            }
        }
    }
}

/// Sends nothing and changes nothing else.
fn idle() -> Shared {
    Shared {
        share: 0.0,
        paused_for: None,
        rejected: None,
        credentials_ok: false,
        rate_factor: 1.0,
    }
}

/// `me`'s part of every budget: 1/N of the N live replicas once it has been
/// registered for `SETTLE`, else nothing.
pub fn share_of(me: &str, view: &ReplicaView) -> f64 {
    let Some(mine) = view.replicas.iter().find(|r| r.id == me) else {
        return 0.0;
    };
    if view.now - mine.started_at < SETTLE.as_millis() as Millis {
        return 0.0;
    }
    1.0 / view.replicas.len() as f64
}

/// What the view says of upstream `name`.
fn gate(name: &str, share: f64, view: &ReplicaView) -> Shared {
    let g = view.gates.iter().find(|g| g.upstream == name);
    let rate_factor = view
        .replicas
        .iter()
        .filter_map(|r| r.rate_factors.get(name))
        .copied()
        .filter(|f| f.is_finite() && *f > 0.0)
        .fold(1.0f64, f64::min);
    Shared {
        share,
        paused_for: g
            .map(|g| g.paused_until - view.now)
            .filter(|rest| *rest > 0)
            .map(|rest| Duration::from_millis(rest as u64)),
        rejected: g
            .filter(|g| g.rejected_at > g.ok_at)
            .map(|g| g.rejected_status.unwrap_or(401)),
        credentials_ok: g.is_some_and(|g| g.ok_at > g.rejected_at),
        rate_factor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::replicas::{GateRow, ReplicaRow};

    fn replica(id: &str, started_at: Millis, factor: Option<f64>) -> ReplicaRow {
        ReplicaRow {
            id: id.into(),
            started_at,
            last_seen: 10_000,
            rate_factors: factor
                .map(|f| [("up".to_string(), f)].into_iter().collect())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn a_replica_takes_its_share_only_once_every_other_has_counted_it() {
        let view = ReplicaView {
            now: 10_000,
            replicas: vec![
                replica("a", 0, None),
                replica("b", 0, None),
                replica("c", 9_000, None),
            ],
            gates: vec![],
        };
        assert_eq!(share_of("a", &view), 1.0 / 3.0, "c counts already");
        assert_eq!(share_of("c", &view), 0.0, "c has not settled");
        assert_eq!(share_of("gone", &view), 0.0);
        let later = ReplicaView {
            now: 10_500,
            ..view
        };
        assert_eq!(share_of("c", &later), 1.0 / 3.0);
        // Whatever each replica sees, the settled shares never add up past 1.
        let total: f64 = ["a", "b", "c"].iter().map(|r| share_of(r, &later)).sum();
        assert!(total <= 1.0 + 1e-9);
    }

    #[test]
    fn pauses_credentials_and_the_lowest_rate_hold_for_every_replica() {
        let view = ReplicaView {
            now: 10_000,
            replicas: vec![
                replica("a", 0, Some(0.5)),
                replica("b", 0, Some(0.25)),
                replica("c", 0, None),
            ],
            gates: vec![GateRow {
                upstream: "up".into(),
                paused_until: 14_000,
                rejected_at: 9_000,
                rejected_status: Some(403),
                ok_at: 8_000,
            }],
        };
        let g = gate("up", 0.5, &view);
        assert_eq!(g.paused_for, Some(Duration::from_secs(4)));
        assert_eq!(g.rejected, Some(403));
        assert!(!g.credentials_ok);
        assert_eq!(g.rate_factor, 0.25);
        let other = gate("other", 0.5, &view);
        assert_eq!(
            (other.paused_for, other.rejected, other.rate_factor),
            (None, None, 1.0)
        );
        let mut healed = view.clone();
        healed.gates[0].ok_at = 9_500;
        healed.gates[0].paused_until = 9_000;
        let g = gate("up", 0.5, &healed);
        assert_eq!(
            (g.paused_for, g.rejected, g.credentials_ok),
            (None, None, true)
        );
    }
}
