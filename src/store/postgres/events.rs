//! The event stream (`GET /v1/events`): positions and pages of stored events.

use super::rows::STREAMED_EVENT_COLS;
use super::*;

impl PgStore {
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
        Ok(sqlx::query_as(&format!(
            "SELECT {STREAMED_EVENT_COLS} FROM events e JOIN watches w ON w.wid = e.wid
             WHERE e.eid > $1 AND e.eid <= $2
               AND ($3::text[] IS NULL OR e.type = ANY($3))
               AND ($4::text[] IS NULL OR w.kind = ANY($4))
             ORDER BY e.eid LIMIT $5"
        ))
        .bind(after)
        .bind(upto)
        .bind(types)
        .bind(kinds)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?)
    }
}
