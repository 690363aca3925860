//! The event stream (`GET /v1/events`): positions and pages of stored events.

use super::rows::STREAMED_EVENT_COLS;
use super::*;

impl SqliteStore {
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
        Ok(sqlx::query_as(&format!(
            "SELECT {STREAMED_EVENT_COLS} FROM events e JOIN watches w ON w.wid = e.wid
             WHERE e.eid > ?1 AND e.eid <= ?2
               AND (?3 IS NULL OR e.type IN (SELECT value FROM json_each(?3)))
               AND (?4 IS NULL OR w.kind IN (SELECT value FROM json_each(?4)))
             ORDER BY e.eid LIMIT ?5"
        ))
        .bind(after)
        .bind(upto)
        .bind(types)
        .bind(kinds)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?)
    }
}
