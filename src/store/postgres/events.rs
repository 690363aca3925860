//! The event stream (`GET /v1/events`): positions and pages of stored events.

use super::*;

impl PgStore {
    pub(super) async fn event_positions(&self) -> Result<EventPositions> {
        // One statement: one snapshot. The counter's committed value is safe to
        // read without its lock: every eid up to it is committed (migration 0003).
        let (newest, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT last FROM event_positions WHERE id = 1), (SELECT min(eid) FROM events)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(EventPositions { newest, oldest })
    }

    pub(super) async fn events_between(
        &self,
        after: i64,
        upto: i64,
        filter: &EventFilter,
        limit: u32,
    ) -> Result<Vec<StreamedEvent>> {
        let types: Option<Vec<&str>> = filter.types.clone();
        let kinds: Option<Vec<&str>> = filter
            .kinds
            .as_ref()
            .map(|k| k.iter().map(|k| k.as_str()).collect());
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT e.eid, e.type, w.kind, e.body FROM events e JOIN watches w ON w.wid = e.wid
             WHERE e.eid > $1 AND e.eid <= $2
               AND ($3::text[] IS NULL OR e.type = ANY($3))
               AND ($4::text[] IS NULL OR w.kind = ANY($4))
             ORDER BY e.eid LIMIT $5",
        )
        .bind(after)
        .bind(upto)
        .bind(types)
        .bind(kinds)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(position, event_type, kind, body)| StreamedEvent {
                position,
                event_type,
                kind,
                body,
            })
            .collect())
    }
}
