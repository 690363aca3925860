//! The PostgreSQL store: the same daemon on a real PostgreSQL (each test in its
//! own schema), and two replicas sharing one database without polling a job twice
//! at once.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::receiver::TestReceiver;

const BASE: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh schema; its URL points every connection at it.
pub async fn schema() -> (String, String) {
    let name = format!("jw_{}", ulid::Ulid::new().to_string().to_lowercase());
    let pool = sqlx::PgPool::connect(BASE)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (see README)");
    sqlx::query(&format!("CREATE SCHEMA {name}"))
        .execute(&pool)
        .await
        .expect("create schema");
    pool.close().await;
    (format!("{BASE}?options[search_path]={name}"), name)
}

pub async fn drop_schema(name: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(BASE).await {
        let _ = sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
            .execute(&pool)
            .await;
    }
}

#[tokio::test]
async fn the_daemon_runs_on_postgresql_end_to_end() {
    let (url, name) = schema().await;
    let sim = Sim::start(Sim::fast()).await;
    let receiver = TestReceiver::start(None).await;
    let (_dir, db) = temp_db();
    let secret = jobwatch::webhook::sign::SigningSecret::generate().to_whsec();
    let app = App::start(settings(
        &db,
        &sim.url,
        &[
            ("store.url", &url),
            ("webhooks.signing_secret", &secret),
            ("webhooks.allow_private_targets", "true"),
        ],
    ))
    .await;
    let ids = [
        "succeed-pg",
        "failed-pg",
        "doneerr-pg",
        "badrequest-pg",
        "notfound-pg",
        "myorg:pg.1",
    ];
    let (status, body) = app
        .post_jobs(json!({"kind": "delete", "ids": ids, "webhook_url": receiver.url, "metadata": {"team": "pg"}}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["new"], 6);
    let expected = [
        ("succeed-pg", "succeeded"),
        ("failed-pg", "failed"),
        ("doneerr-pg", "failed"),
        ("badrequest-pg", "rejected"),
        ("notfound-pg", "not_found"),
    ];
    for (id, outcome) in expected {
        let w = app.wait_outcome("delete", id, 15).await;
        assert_eq!(w["outcome"], outcome, "{w}");
        assert_eq!(w["metadata"]["team"], "pg");
    }
    app.wait_all_ended(15).await;
    let got = receiver.wait_for(6, Duration::from_secs(15)).await;
    let mut ids_seen: Vec<String> = got
        .iter()
        .map(|r| r.body["data"]["id"].as_str().unwrap_or("").to_string())
        .collect();
    ids_seen.sort();
    ids_seen.dedup();
    assert_eq!(ids_seen.len(), 6, "one event per watch: {ids_seen:?}");

    // A second POST of the same running-or-ended ids: ended ones start generation 2.
    let (_, again) = app
        .post_jobs(json!({"kind": "delete", "ids": ["succeed-pg"]}))
        .await;
    assert_eq!(again["new"], 1);
    let (_, w) = app.get("/v1/jobs/delete/succeed-pg").await;
    assert_eq!(w["generation"], 2);

    // Paging works the same on PostgreSQL.
    let (_, page) = app.get("/v1/jobs?kind=delete&limit=4").await;
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let (_, rest) = app
        .get(&format!("/v1/jobs?kind=delete&limit=4&cursor={cursor}"))
        .await;
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(4));
    assert_eq!(rest["jobs"].as_array().map(Vec::len), Some(2));
    app.stop().await;
    drop_schema(&name).await;
}

#[tokio::test]
async fn two_replicas_share_the_work_and_never_poll_a_job_at_the_same_time() {
    let (url, name) = schema().await;
    let sim = Sim::start(Sim::fast()).await;
    let (_d1, db1) = temp_db();
    let (_d2, db2) = temp_db();
    let overrides = [
        ("store.url", url.as_str()),
        ("upstream.max_in_flight", "16"),
    ];
    let a = App::start(settings(&db1, &sim.url, &overrides)).await;
    let b = App::start(settings(&db2, &sim.url, &overrides)).await;
    // Half the ids through each replica, as behind a load balancer. (All through
    // one, the other replica's poller may sleep its idle second while the first
    // ends every job: it learns of new watches from its own API or the clock.)
    let ids: Vec<String> = (0..400).map(|i| format!("job-{i}")).collect();
    let (first, second) = ids.split_at(200);
    for (app, ids) in [(&a, first), (&b, second)] {
        let (status, body) = app.post_jobs(json!({"kind": "copy", "ids": ids})).await;
        assert_eq!(status, 202, "{body}");
    }
    a.wait_all_ended(60).await;
    b.wait_all_ended(60).await;

    // Both replicas polled, and no job was asked about twice at once: two status
    // requests for one job never arrive closer than the cadence allows.
    let log = sim.sim.request_log();
    let mut by_path: HashMap<&str, Vec<f64>> = HashMap::new();
    for r in &log {
        by_path.entry(r.path.as_str()).or_default().push(r.t_ms);
    }
    let mut closest = f64::MAX;
    for times in by_path.values_mut() {
        times.sort_by(f64::total_cmp);
        for w in times.windows(2) {
            closest = closest.min(w[1] - w[0]);
        }
    }
    assert!(
        closest >= 40.0,
        "two polls of one job {closest} ms apart: a lease was not respected"
    );
    let (_, sa) = a.get("/v1/status").await;
    let (_, sb) = b.get("/v1/status").await;
    let (pa, pb) = (
        sa["upstream"]["total_answers"].as_u64().unwrap_or(0),
        sb["upstream"]["total_answers"].as_u64().unwrap_or(0),
    );
    assert!(pa > 0 && pb > 0, "both replicas polled: {pa} and {pb}");
    assert_eq!(
        sa["watches"]["ended_by_outcome"],
        sb["watches"]["ended_by_outcome"]
    );
    a.stop().await;
    b.stop().await;
    drop_schema(&name).await;
}

/// The learned cadence's summaries: stored, replaced by kind and group, read back.
#[tokio::test]
async fn duration_summaries_are_stored_and_read_back_on_postgresql() {
    use jobwatch::model::Kind;
    use jobwatch::store::{Store, StoredDurations};
    let (url, name) = schema().await;
    let store = jobwatch::store::postgres::PgStore::open(&url)
        .await
        .expect("the store opens");
    assert!(store.load_durations().await.unwrap().is_empty());
    let row = |group: &str, byte: u8| StoredDurations {
        kind: Kind::COPY,
        group: group.to_string(),
        summary: vec![byte; 585],
    };
    store
        .save_durations(&[row("", 1), row("large", 2)], 1_000)
        .await
        .unwrap();
    store.save_durations(&[row("", 3)], 2_000).await.unwrap();
    let loaded = store.load_durations().await.unwrap();
    assert_eq!(loaded, vec![row("", 3), row("large", 2)]);
    store.close().await;
    drop_schema(&name).await;
}
