//! Issue 20: `GET /v1/events`, outcomes as Server-Sent Events. They arrive in
//! order with durable positions; `Last-Event-ID` resumes across a restart of the
//! daemon without a gap or a repeat; a client that stops reading is cut off within
//! `api.write_stall_timeout`; bad filters get a 400; the token guards it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use jobwatch::cli::sse::{Parser, SseEvent};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::*;

/// An open `GET /v1/events` response, read event by event.
struct Stream {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: Parser,
    ready: std::collections::VecDeque<SseEvent>,
}

impl Stream {
    async fn open(app: &App, query: &str, last_event_id: Option<&str>) -> Stream {
        let mut req = app.client.get(format!("{}/v1/events{query}", app.url));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let r = req.send().await.expect("GET /v1/events");
        assert_eq!(r.status(), 200, "GET /v1/events{query}");
        assert_eq!(
            r.headers()["content-type"].to_str().expect("ascii"),
            "text/event-stream"
        );
        Stream {
            body: r.bytes_stream().boxed(),
            parser: Parser::default(),
            ready: Default::default(),
        }
    }

    /// The next event, or `None` when the stream ends; panics after `secs`.
    async fn next(&mut self, secs: u64) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("no event within {secs}s"));
            match chunk {
                Some(Ok(bytes)) => self.ready.extend(self.parser.push(&bytes)),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next `n` events.
    async fn take(&mut self, n: usize, secs: u64) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next(secs).await {
                Some(e) => out.push(e),
                None => panic!("the stream ended after {} of {n} events", out.len()),
            }
        }
        out
    }
}

fn body(e: &SseEvent) -> Value {
    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{err}: {}", e.data))
}

fn position(e: &SseEvent) -> i64 {
    e.id.as_deref()
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("an outcome without a numeric id: {e:?}"))
}

async fn post(app: &App, body: Value) {
    let (status, answer) = app.post_jobs(body).await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test]
async fn outcomes_arrive_in_order_with_the_webhook_body_and_a_durable_position() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, app) = start_app(&sim.url, &[]).await;
    let mut stream = Stream::open(&app, "", None).await;
    // No webhook target anywhere: every outcome is in the stream all the same.
    post(
        &app,
        json!({"kind": "copy", "ids": ["succeed-1", "failed-2", "badrequest-3", "done-4"]}),
    )
    .await;
    post(&app, json!({"kind": "delete", "ids": ["running-5"]})).await;
    let mut got = stream.take(4, 30).await;
    let (status, _) = app.delete("/v1/jobs/delete/running-5").await;
    assert_eq!(status, 200);
    got.extend(stream.take(1, 30).await);

    let positions: Vec<i64> = got.iter().map(position).collect();
    assert_eq!(
        positions,
        (1..=5).collect::<Vec<_>>(),
        "positions count up from the first event, in the order stored: {got:?}"
    );
    let mut seen = HashSet::new();
    for e in &got {
        let b = body(e);
        assert_eq!(b["type"], e.event, "the SSE event name is the body's type");
        let w = &b["data"];
        assert!(seen.insert(w["id"].as_str().unwrap_or("").to_string()));
        let expected = match w["id"].as_str().unwrap_or("") {
            "succeed-1" | "done-4" => "job.succeeded",
            "failed-2" => "job.failed",
            "badrequest-3" => "job.rejected",
            "running-5" => "job.cancelled",
            other => panic!("an event of {other}"),
        };
        assert_eq!(e.event, expected, "{b}");
        // The webhook body: the watch as GET shows it, at its outcome.
        let (_, mut shown) = app
            .get(&format!(
                "/v1/jobs/{}/{}",
                w["kind"].as_str().unwrap_or(""),
                w["id"].as_str().unwrap_or("")
            ))
            .await;
        shown.as_object_mut().expect("object").remove("deliveries");
        assert_eq!(w, &shown, "the event's data is the watch");
        assert_eq!(b["timestamp"], shown["ended_at"]);
    }
    let (_, s) = app.get("/v1/status").await;
    assert_eq!(s["events"]["newest_position"], 5, "{s}");
    assert_eq!(s["events"]["streams"], 1, "{s}");
    drop(stream);
    app.stop().await;
}

#[tokio::test]
async fn last_event_id_resumes_across_a_restart_without_a_gap_or_a_repeat() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();
    let first = App::start(settings(&db, &sim.url, &[])).await;
    let mut stream = Stream::open(&first, "", None).await;
    let batch = |from: usize, n: usize| -> Vec<String> {
        (from..from + n)
            .map(|i| format!("succeed-{i:03}"))
            .collect()
    };
    post(&first, json!({"kind": "copy", "ids": batch(0, 10)})).await;
    let before = stream.take(4, 30).await;
    let last = before.last().and_then(|e| e.id.clone()).expect("an id");
    drop(stream);
    // Outcomes stored while nobody listens, then the daemon stops.
    post(&first, json!({"kind": "copy", "ids": batch(10, 10)})).await;
    first.wait_all_ended(30).await;
    first.stop().await;

    let second = App::start(settings(&db, &sim.url, &[])).await;
    let mut resumed = Stream::open(&second, "", Some(&last)).await;
    post(&second, json!({"kind": "copy", "ids": batch(20, 5)})).await;
    let after = resumed.take(21, 30).await;

    let last: i64 = last.parse().expect("numeric id");
    let positions: Vec<i64> = after.iter().map(position).collect();
    assert_eq!(
        positions,
        (last + 1..=last + 21).collect::<Vec<_>>(),
        "every position after Last-Event-ID, once, in order"
    );
    let ids: HashSet<String> = before
        .iter()
        .chain(&after)
        .map(|e| body(e)["data"]["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ids.len(), 25, "each of the 25 outcomes exactly once");
    // Nothing more: the 25 were all.
    let (_, s) = second.get("/v1/status").await;
    assert_eq!(s["events"]["newest_position"], 25, "{s}");
    drop(resumed);
    second.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_within_the_write_stall_timeout() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, db) = temp_db();
    let stall = Duration::from_secs(1);
    let app = App::start(settings(
        &db,
        &sim.url,
        &[("api.write_stall_timeout", "1s")],
    ))
    .await;
    // A client with a small receive window that reads the answer's head, then nothing.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut conn = socket.connect(app.addr).await.expect("connect");
    conn.write_all(
        b"GET /v1/events HTTP/1.1\r\nHost: jobwatch\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await
    .expect("request");
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8; 256];
        let n = conn.read(&mut byte).await.expect("read the head");
        assert!(n > 0, "closed before the head");
        head.extend_from_slice(&byte[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let stopped_reading = Instant::now();

    // About 13 MB of events (each carries the watch's metadata): more than the
    // socket buffers on both sides and hyper's can hold.
    let padding = "x".repeat(64 * 1024);
    let ids: Vec<String> = (0..200).map(|i| format!("succeed-big-{i:03}")).collect();
    post(
        &app,
        json!({"kind": "copy", "ids": ids, "metadata": {"padding": padding}}),
    )
    .await;
    app.wait_all_ended(60).await;
    let all_stored = Instant::now();
    let cut = loop {
        let (_, s) = app.get("/v1/status").await;
        if s["events"]["streams"] == 0 {
            break all_stored.elapsed();
        }
        assert!(
            all_stored.elapsed() < stall + Duration::from_secs(10),
            "the stream is still open {:?} after every event was stored: {s}",
            all_stored.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "a client that stopped reading was cut off {cut:?} after the last event was stored, {:?} after it stopped reading (api.write_stall_timeout = {stall:?})",
        stopped_reading.elapsed()
    );
    assert!(
        cut <= stall + Duration::from_secs(3),
        "cut off only after {cut:?}"
    );

    // Reading again, the client gets what was in the buffers, then the end.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut rest)).await;
    let ended = matches!(read, Ok(Ok(_)) | Ok(Err(_)));
    assert!(ended, "the connection is closed");
    assert!(
        rest.len() < 200 * padding.len(),
        "the client got {} bytes: not every event",
        rest.len()
    );
    app.stop().await;
}

#[tokio::test]
async fn state_changes_come_when_asked_without_an_id_and_filters_by_kind_work() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, app) = start_app(&sim.url, &[]).await;
    let mut states = Stream::open(&app, "?types=job.state_changed&kind=delete", None).await;
    let mut deletes = Stream::open(&app, "?kind=delete&types=job.succeeded,job.failed", None).await;
    post(
        &app,
        json!({"kind": "copy", "ids": ["succeed-c", "failed-c"]}),
    )
    .await;
    post(
        &app,
        json!({"kind": "delete", "ids": ["succeed-d", "badrequest-d", "failed-d"]}),
    )
    .await;

    let got = deletes.take(2, 30).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|e| body(e)["data"]["id"].as_str().unwrap_or("").to_string())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["failed-d", "succeed-d"],
        "only delete jobs, only the types asked"
    );

    let change = states.next(30).await.expect("a state change");
    assert_eq!(change.event, "job.state_changed");
    assert_eq!(
        change.id, None,
        "state changes do not move the resume position"
    );
    let b = body(&change);
    assert_eq!(b["data"]["kind"], "delete", "{b}");
    assert!(b["data"]["state"].is_string(), "{b}");
    assert!(b["data"]["outcome"].is_null(), "{b}");

    // follow=false: what is stored after Last-Event-ID, then the end.
    let mut stored = Stream::open(&app, "?follow=false", Some("0")).await;
    let mut n = 0;
    while let Some(e) = stored.next(10).await {
        assert!(e.id.is_some());
        n += 1;
    }
    let (_, s) = app.get("/v1/status").await;
    assert_eq!(
        n,
        s["events"]["newest_position"].as_i64().unwrap_or(-1),
        "{s}"
    );
    drop((states, deletes));
    app.stop().await;
}

#[tokio::test]
async fn bad_filters_and_last_event_ids_get_a_clear_400() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, app) = start_app(&sim.url, &[]).await;
    for (query, last_event_id, code) in [
        ("?types=job.exploded", None, "unknown_type"),
        ("?types=job.succeeded,,bogus", None, "unknown_type"),
        ("?kind=bogus", None, "unknown_kind"),
        ("?follow=perhaps", None, "invalid_query"),
        ("?since=3", None, "invalid_query"),
        ("", Some("abc"), "invalid_last_event_id"),
        ("", Some("-1"), "invalid_last_event_id"),
        ("", Some("99999"), "unknown_last_event_id"),
    ] {
        let mut req = app.client.get(format!("{}/v1/events{query}", app.url));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let r = req.send().await.expect("GET");
        assert_eq!(r.status(), 400, "{query} {last_event_id:?}");
        let b: Value = r.json().await.expect("a JSON error");
        assert_eq!(b["error"]["code"], code, "{query} {last_event_id:?}: {b}");
        assert!(b["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    app.stop().await;
}

#[tokio::test]
async fn the_stream_wants_the_api_token_when_one_is_set() {
    let sim = Sim::start(Sim::fast()).await;
    let (_dir, app) = start_app(&sim.url, &[("api.token", "s3cret-token")]).await;
    let url = format!("{}/v1/events", app.url);
    for auth in [None, Some("Bearer wrong"), Some("s3cret-token")] {
        let mut req = app.client.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.expect("GET");
        assert_eq!(r.status(), 401, "{auth:?}");
        let b: Value = r.json().await.expect("a JSON error");
        assert_eq!(b["error"]["code"], "unauthorized");
    }
    let r = app
        .client
        .get(&url)
        .header("authorization", "Bearer s3cret-token")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    // The page itself is public: it holds no data, and asks for the token.
    let page = app
        .client
        .get(format!("{}/", app.url))
        .send()
        .await
        .expect("GET /");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap_or_default().contains("api.token"));
    app.stop().await;
}
