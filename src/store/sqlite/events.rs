//! The event stream (`GET /v1/events`): positions and pages of stored events.

use super::*;

impl SqliteStore {
    pub(super) async fn event_positions(&self) -> Result<EventPositions> {
        // One statement: one snapshot of the file.
        let (newest, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT last FROM event_positions WHERE id = 1), (SELECT min(eid) FROM events)",
        )
        .fetch_one(&self.reader)
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
        let types = filter.types.as_ref().map(|t| json_list(t.iter().copied()));
        let kinds = filter
            .kinds
            .as_ref()
            .map(|k| json_list(k.iter().map(|k| k.as_str())));
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT e.eid, e.type, w.kind, e.body FROM events e JOIN watches w ON w.wid = e.wid
             WHERE e.eid > ?1 AND e.eid <= ?2
               AND (?3 IS NULL OR e.type IN (SELECT value FROM json_each(?3)))
               AND (?4 IS NULL OR w.kind IN (SELECT value FROM json_each(?4)))
             ORDER BY e.eid LIMIT ?5",
        )
        .bind(after)
        .bind(upto)
        .bind(types)
        .bind(kinds)
        .bind(limit as i64)
        .fetch_all(&self.reader)
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
