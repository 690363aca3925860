//! The integration tests' webhook receiver: an axum server on 127.0.0.1 that records every
//! request (verifying its Standard Webhooks signature when given the secret), answers as
//! its current [`Plan`] says, and can go down and come back on the same port.
//!
//! Each request is recorded on arrival; `ok` says whether it was answered 2xx, which is
//! what a sender counts as a delivery. A request whose signature does not verify (when a
//! secret was given) is answered 400, as a real receiver would, whatever the plan says.

#![allow(dead_code)] // not every test uses every helper

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use jobwatch::webhook::sign::SigningSecret;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The reference libraries refuse timestamps further than this from their clock.
const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Headers as sent; empty string / 0 when missing or unreadable.
    pub webhook_id: String,
    pub timestamp: i64,
    pub signature: String,
    /// The body parsed as JSON, `Null` if it is not JSON (see `raw`).
    pub body: serde_json::Value,
    pub raw: Vec<u8>,
    pub headers: HeaderMap,
    pub path: String,
    /// When the request arrived.
    pub at: Instant,
    /// The signature verified (and the timestamp was within tolerance). Always false when
    /// the receiver has no secret.
    pub verified: bool,
    /// Why verification failed, when a secret was given and it did.
    pub verify_error: Option<String>,
    /// Status answered; 0 while a `Slow` answer is still pending (or was abandoned).
    pub status: u16,
    /// Answered 2xx: a successful delivery.
    pub ok: bool,
}

/// How the receiver answers. Set with [`TestReceiver::respond_with`].
#[derive(Debug, Clone)]
pub enum Plan {
    /// 200.
    Ok,
    /// The next N requests get this status, later ones 200.
    FailTimes(u32, u16),
    /// Always this status.
    Status(u16),
    /// Always this status with a `Retry-After: value` header.
    RetryAfter { status: u16, value: String },
    /// Always 410.
    Gone,
    /// Always 307 to this location.
    RedirectTo(String),
    /// Wait this long, then 200.
    Slow(Duration),
}

struct PlanState {
    plan: Plan,
    /// How many failures `FailTimes` has handed out since the plan was set.
    failed: u32,
}

struct Shared {
    secret: Option<SigningSecret>,
    plan: Mutex<PlanState>,
    received: Mutex<Vec<Received>>,
    /// Woken on every recorded answer, for `wait_for`.
    changed: Notify,
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

pub struct TestReceiver {
    /// `http://127.0.0.1:PORT/hook`
    pub url: String,
    pub port: u16,
    shared: Arc<Shared>,
    server: Mutex<Option<Running>>,
}

/// A panic in one handler must not turn every later lock into a second panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TestReceiver {
    /// Listens on a free port of 127.0.0.1, answering `Plan::Ok`. With a secret, every
    /// request's signature is verified.
    pub async fn start(secret: Option<SigningSecret>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("test receiver: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            secret,
            plan: Mutex::new(PlanState {
                plan: Plan::Ok,
                failed: 0,
            }),
            received: Mutex::new(Vec::new()),
            changed: Notify::new(),
        });
        let receiver = Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            port,
            shared,
            server: Mutex::new(None),
        };
        receiver.serve(listener);
        receiver
    }

    /// Changes how later requests are answered (and restarts `FailTimes` counting).
    pub fn respond_with(&self, plan: Plan) {
        *lock(&self.shared.plan) = PlanState { plan, failed: 0 };
    }

    /// Every request so far, in arrival order, failed ones included (see `ok`).
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// Waits until at least `n` requests were answered 2xx and returns those; panics after
    /// `timeout` with what did arrive.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so an answer in between is not missed.
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let ok: Vec<Received> = self.received().into_iter().filter(|r| r.ok).collect();
            if ok.len() >= n {
                return ok;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let all = self.received();
                let ok = all.iter().filter(|r| r.ok).count();
                if ok >= n {
                    continue;
                }
                let summary: Vec<String> = all
                    .iter()
                    .map(|r| {
                        format!(
                            "{} id={} status={} verified={} {}",
                            r.path,
                            r.webhook_id,
                            r.status,
                            r.verified,
                            r.verify_error.as_deref().unwrap_or("")
                        )
                    })
                    .collect();
                panic!(
                    "test receiver: {ok} of {n} expected successful deliveries within \
                     {timeout:?}; {} requests: {summary:#?}",
                    all.len()
                );
            }
        }
    }

    /// Goes down: the listener is closed, so new connections are refused, and open
    /// keep-alive connections are closed once idle (an in-flight `Slow` answer may finish;
    /// after 5 s the server is dropped regardless). Returns once the listener is gone.
    pub async fn stop(&self) {
        let Some(Running { cancel, mut task }) = lock(&self.server).take() else {
            return;
        };
        cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }

    /// Comes back up on the same port (and same URL), after [`stop`](Self::stop).
    pub async fn restart(&self) {
        self.stop().await;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        // The port was ours a moment ago; retry briefly in case the OS is slow to free it.
        let mut last_err = None;
        for _ in 0..50 {
            let socket = tokio::net::TcpSocket::new_v4().expect("test receiver: socket");
            // Lets us rebind while old connections sit in TIME_WAIT.
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            match socket.bind(addr).and_then(|()| socket.listen(1024)) {
                Ok(listener) => return self.serve(listener),
                Err(e) => last_err = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("test receiver: could not listen again on {addr}: {last_err:?}");
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            // Every path and method is recorded, so a followed redirect would show up.
            .fallback(handle)
            .with_state(self.shared.clone());
        let cancel = CancellationToken::new();
        let shutdown = cancel.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            // Only errors from accept, which axum already retries; nothing to report.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        *lock(&self.server) = Some(Running { cancel, task });
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        if let Some(running) = self.server.get_mut().ok().and_then(Option::take) {
            running.cancel.cancel();
            running.task.abort();
        }
    }
}

fn text_header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The checks a receiver built on the reference library makes: headers present, timestamp
/// within tolerance, some `v1` signature matches.
fn verify(secret: &SigningSecret, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let id = text_header(headers, "webhook-id");
    let ts = text_header(headers, "webhook-timestamp");
    let sig = text_header(headers, "webhook-signature");
    if id.is_empty() || ts.is_empty() || sig.is_empty() {
        return Err("missing webhook-id, webhook-timestamp or webhook-signature".into());
    }
    let ts: i64 = ts
        .parse()
        .map_err(|_| format!("webhook-timestamp {ts:?} is not an integer"))?;
    let skew = ts.saturating_sub(chrono::Utc::now().timestamp());
    if skew.unsigned_abs() > TIMESTAMP_TOLERANCE_SECS.unsigned_abs() {
        return Err(format!(
            "webhook-timestamp {ts} is {skew} s from now (tolerance {TIMESTAMP_TOLERANCE_SECS} s)"
        ));
    }
    if !secret.verify(&id, ts, body, &sig) {
        return Err("no matching signature".into());
    }
    Ok(())
}

/// What the plan says to answer to one request.
struct Answer {
    status: u16,
    header: Option<(header::HeaderName, String)>,
    delay: Option<Duration>,
}

impl Answer {
    fn status(status: u16) -> Self {
        Self {
            status,
            header: None,
            delay: None,
        }
    }
}

/// Takes the next answer from the plan (counting a `FailTimes` failure).
fn plan_answer(shared: &Shared) -> Answer {
    let mut st = lock(&shared.plan);
    match st.plan.clone() {
        Plan::FailTimes(n, status) if st.failed < n => {
            st.failed += 1;
            Answer::status(status)
        }
        Plan::Ok | Plan::FailTimes(..) => Answer::status(200),
        Plan::Status(status) => Answer::status(status),
        Plan::RetryAfter { status, value } => Answer {
            header: Some((header::RETRY_AFTER, value)),
            ..Answer::status(status)
        },
        Plan::Gone => Answer::status(410),
        Plan::RedirectTo(to) => Answer {
            header: Some((header::LOCATION, to)),
            ..Answer::status(307)
        },
        Plan::Slow(d) => Answer {
            delay: Some(d),
            ..Answer::status(200)
        },
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let at = Instant::now();
    let (verified, verify_error) = match &shared.secret {
        None => (false, None),
        Some(secret) => match verify(secret, &headers, &raw) {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e)),
        },
    };

    // A failed verification overrides the plan, as with a real receiver.
    let answer = if verify_error.is_some() {
        Answer::status(400)
    } else {
        plan_answer(&shared)
    };
    let Answer {
        status,
        header: extra,
        delay,
    } = answer;

    let record = Received {
        webhook_id: text_header(&headers, "webhook-id"),
        timestamp: text_header(&headers, "webhook-timestamp")
            .parse()
            .unwrap_or(0),
        signature: text_header(&headers, "webhook-signature"),
        body: serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null),
        raw: raw.to_vec(),
        headers,
        path: uri.path().to_owned(),
        at,
        verified,
        verify_error: verify_error.clone(),
        status: if delay.is_some() { 0 } else { status },
        ok: delay.is_none() && (200..300).contains(&status),
    };
    let index = {
        let mut received = lock(&shared.received);
        received.push(record);
        received.len() - 1
    };
    shared.changed.notify_waiters();

    if let Some(d) = delay {
        // If the sender gives up first, hyper drops this future and the record keeps
        // status 0 / ok false.
        tokio::time::sleep(d).await;
        if let Some(r) = lock(&shared.received).get_mut(index) {
            r.status = status;
            r.ok = true;
        }
        shared.changed.notify_waiters();
    }

    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match &verify_error {
        Some(e) => format!("signature verification failed: {e}"),
        None => format!("test receiver answered {status}"),
    };
    let mut response = (code, body).into_response();
    if let Some((name, value)) = extra {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// The receiver's own behaviour, so a failing integration test can trust it.
mod self_tests {
    use super::*;

    fn signed(
        client: &reqwest::Client,
        url: &str,
        secret: &SigningSecret,
        id: &str,
    ) -> reqwest::RequestBuilder {
        let body = serde_json::json!({"type": "job.succeeded", "data": {"id": id}}).to_string();
        let ts = chrono::Utc::now().timestamp();
        client
            .post(url)
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", secret.sign(id, ts, body.as_bytes()))
            .header("content-type", "application/json")
            .body(body)
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("client")
    }

    #[tokio::test]
    async fn verifies_and_records() {
        let secret = SigningSecret::generate();
        let rx = TestReceiver::start(Some(secret.clone())).await;
        let c = client();
        let res = signed(&c, &rx.url, &secret, "msg_1").send().await.unwrap();
        assert_eq!(res.status(), 200);
        let other = SigningSecret::generate();
        let res = signed(&c, &rx.url, &other, "msg_2").send().await.unwrap();
        assert_eq!(res.status(), 400);

        let got = rx.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].webhook_id, "msg_1");
        assert!(got[0].verified);
        assert_eq!(got[0].body["data"]["id"], "msg_1");
        assert_eq!(got[0].headers["content-type"], "application/json");
        let all = rx.received();
        assert_eq!(all.len(), 2);
        assert!(!all[1].verified && !all[1].ok && all[1].status == 400);
        assert_eq!(
            all[1].verify_error.as_deref(),
            Some("no matching signature")
        );
    }

    #[tokio::test]
    async fn plans() {
        let rx = TestReceiver::start(None).await;
        let c = client();
        let status = |r: reqwest::Response| r.status().as_u16();

        rx.respond_with(Plan::FailTimes(2, 503));
        for want in [503, 503, 200, 200] {
            assert_eq!(status(c.post(&rx.url).send().await.unwrap()), want);
        }
        rx.respond_with(Plan::RetryAfter {
            status: 429,
            value: "7".into(),
        });
        let r = c.post(&rx.url).send().await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
        rx.respond_with(Plan::Gone);
        assert_eq!(status(c.post(&rx.url).send().await.unwrap()), 410);
        rx.respond_with(Plan::RedirectTo(format!("{}/elsewhere", rx.url)));
        let r = c.post(&rx.url).send().await.unwrap();
        assert_eq!(r.status(), 307);
        assert!(r.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("/elsewhere"));
        rx.respond_with(Plan::Status(500));
        assert_eq!(status(c.post(&rx.url).send().await.unwrap()), 500);

        let oks: Vec<bool> = rx.received().iter().map(|r| r.ok).collect();
        assert_eq!(oks, [false, false, true, true, false, false, false, false]);
        assert!(!rx.received()[0].verified, "no secret: nothing verified");
    }

    #[tokio::test]
    async fn slow_answer_abandoned_by_the_sender_is_not_ok() {
        let rx = TestReceiver::start(None).await;
        rx.respond_with(Plan::Slow(Duration::from_millis(800)));
        let c = client();
        let err = c
            .post(&rx.url)
            .timeout(Duration::from_millis(100))
            .send()
            .await
            .expect_err("times out");
        assert!(err.is_timeout(), "{err}");
        // Give the receiver time to have (not) completed the abandoned answer.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let all = rx.received();
        assert_eq!(all.len(), 1);
        assert!(
            !all[0].ok,
            "abandoned slow answer counted as delivered: {all:?}"
        );

        // A patient sender gets its 200 after the delay.
        let started = Instant::now();
        let r = c.post(&rx.url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(800));
        assert_eq!(rx.wait_for(1, Duration::from_secs(1)).await.len(), 1);
    }

    #[tokio::test]
    async fn stop_refuses_even_pooled_connections_and_restart_reuses_the_port() {
        let rx = TestReceiver::start(None).await;
        let c = client(); // keeps a pooled keep-alive connection after the first request
        assert_eq!(c.post(&rx.url).send().await.unwrap().status(), 200);

        rx.stop().await;
        for _ in 0..2 {
            let err = c.post(&rx.url).send().await.expect_err("receiver is down");
            assert!(err.is_connect() || err.is_request(), "{err:?}");
        }
        assert_eq!(rx.received().len(), 1);

        rx.restart().await;
        assert_eq!(c.post(&rx.url).send().await.unwrap().status(), 200);
        assert_eq!(rx.wait_for(2, Duration::from_secs(1)).await.len(), 2);
    }

    #[tokio::test]
    #[should_panic(expected = "0 of 1 expected successful deliveries")]
    async fn wait_for_panics_with_what_arrived() {
        let rx = TestReceiver::start(Some(SigningSecret::generate())).await;
        let _ = client().post(&rx.url).body("{}").send().await;
        rx.wait_for(1, Duration::from_millis(200)).await;
    }
}
