//! Replicas that share one store also share each upstream's budget (PostgreSQL).
//!
//! Each replica heartbeats a row; the live ones divide the rate, burst and
//! requests in flight among them, and publish what holds for all (a pause the
//! upstream asked for, credentials found bad or good, a lowered rate) in a row per
//! upstream that every replica reads at its next heartbeat. One round trip per
//! heartbeat and none per poll (see `crate::poller::replicas` for the loop).

use std::collections::HashMap;

use super::postgres::PgStore;
use super::{Millis, Result};

/// What one replica tells the others of one upstream at a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct GateReport {
    pub upstream: String,
    /// A pause the upstream asked of this replica since its last heartbeat.
    pub paused_for_ms: Option<Millis>,
    /// The credentials were found bad (with this status) since the last heartbeat.
    pub rejected: Option<u16>,
    /// The credentials were found good again since the last heartbeat.
    pub credentials_ok: bool,
    /// This replica's allowed-rate factor now (1: the configured rate).
    pub rate_factor: f64,
}

/// A live replica as the store sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaRow {
    pub id: String,
    pub started_at: Millis,
    pub last_seen: Millis,
    pub rate_factors: HashMap<String, f64>,
}

/// What holds for every replica of one upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRow {
    pub upstream: String,
    pub paused_until: Millis,
    pub rejected_at: Millis,
    pub rejected_status: Option<u16>,
    pub ok_at: Millis,
}

/// One heartbeat's answer: the store's clock, the live replicas, the gates.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaView {
    pub now: Millis,
    pub replicas: Vec<ReplicaRow>,
    pub gates: Vec<GateRow>,
}

/// A store that several replicas share.
#[async_trait::async_trait]
pub trait ReplicaStore: Send + Sync {
    /// Heartbeat `me`, publish `reports`, and read the replicas seen within
    /// `timeout_ms` and every gate: in one transaction.
    async fn replica_sync(
        &self,
        me: &str,
        reports: &[GateReport],
        timeout_ms: Millis,
    ) -> Result<ReplicaView>;
    /// `me` stops: the others take its share at their next heartbeat.
    async fn replica_leave(&self, me: &str) -> Result<()>;
}

/// The server's clock in Unix milliseconds.
const SERVER_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

#[async_trait::async_trait]
impl ReplicaStore for PgStore {
    async fn replica_sync(
        &self,
        me: &str,
        reports: &[GateReport],
        timeout_ms: Millis,
    ) -> Result<ReplicaView> {
        let factors: HashMap<&str, f64> = reports
            .iter()
            .map(|r| (r.upstream.as_str(), r.rate_factor))
            .collect();
        let factors = serde_json::to_string(&factors).unwrap_or_else(|_| "{}".into());
        let mut tx = self.pool().begin().await?;
        let now: Millis = sqlx::query_scalar(&format!(
            "INSERT INTO replicas (id, started_at, last_seen, rate_factors)
             VALUES ($1, {SERVER_NOW}, {SERVER_NOW}, $2)
             ON CONFLICT (id) DO UPDATE SET last_seen = EXCLUDED.last_seen, rate_factors = EXCLUDED.rate_factors
             RETURNING last_seen"
        ))
        .bind(me)
        .bind(&factors)
        .fetch_one(&mut *tx)
        .await?;
        for r in reports {
            sqlx::query(
                "INSERT INTO upstream_gates (upstream, paused_until, rejected_at, rejected_status, ok_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (upstream) DO UPDATE SET
                   paused_until = GREATEST(upstream_gates.paused_until, EXCLUDED.paused_until),
                   rejected_at = GREATEST(upstream_gates.rejected_at, EXCLUDED.rejected_at),
                   rejected_status = CASE WHEN EXCLUDED.rejected_at > upstream_gates.rejected_at
                                          THEN EXCLUDED.rejected_status ELSE upstream_gates.rejected_status END,
                   ok_at = GREATEST(upstream_gates.ok_at, EXCLUDED.ok_at)",
            )
            .bind(&r.upstream)
            .bind(r.paused_for_ms.map_or(0, |p| now + p))
            .bind(if r.rejected.is_some() { now } else { 0 })
            .bind(r.rejected.map(i32::from))
            .bind(if r.credentials_ok { now } else { 0 })
            .execute(&mut *tx)
            .await?;
        }
        let replicas: Vec<(String, Millis, Millis, String)> = sqlx::query_as(
            "SELECT id, started_at, last_seen, rate_factors FROM replicas
             WHERE last_seen > $1 ORDER BY started_at, id",
        )
        .bind(now - timeout_ms)
        .fetch_all(&mut *tx)
        .await?;
        let gates: Vec<(String, Millis, Millis, Option<i32>, Millis)> = sqlx::query_as(
            "SELECT upstream, paused_until, rejected_at, rejected_status, ok_at FROM upstream_gates",
        )
        .fetch_all(&mut *tx)
        .await?;
        // Rows of replicas long gone are kept a while for status, then forgotten.
        sqlx::query("DELETE FROM replicas WHERE last_seen < $1")
            .bind(now - 100 * timeout_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ReplicaView {
            now,
            replicas: replicas
                .into_iter()
                .map(|(id, started_at, last_seen, factors)| ReplicaRow {
                    id,
                    started_at,
                    last_seen,
                    // Written by replicas as JSON; a row that is not is read as no cut.
                    rate_factors: serde_json::from_str(&factors).unwrap_or_default(),
                })
                .collect(),
            gates: gates
                .into_iter()
                .map(
                    |(upstream, paused_until, rejected_at, status, ok_at)| GateRow {
                        upstream,
                        paused_until,
                        rejected_at,
                        rejected_status: status.and_then(|s| u16::try_from(s).ok()),
                        ok_at,
                    },
                )
                .collect(),
        })
    }

    async fn replica_leave(&self, me: &str) -> Result<()> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(me)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
