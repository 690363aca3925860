//! Issue 2: the core, end to end on SQLite.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_successful_job_ends_succeeded() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();
    let app = App::start(settings(&db, &sim.url, &[])).await;
    let (status, body) = app
        .post_jobs(json!({"kind": "copy", "ids": ["succeed-1"]}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["new"], 1);
    let w = app.wait_outcome("copy", "succeed-1", 10).await;
    assert_eq!(w["outcome"], "succeeded");
    assert_eq!(w["state"], "SUCCESS");
    app.stop().await;
}
