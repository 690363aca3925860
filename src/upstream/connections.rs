//! The connections status requests go out on. An HTTP/1 connection is driven by
//! the poll that uses it, in that poll's own task, and waits in a small idle list
//! between polls: no connection task, no hand-over of each request and its answer
//! between two tasks, no pool checkout. hyper's pooled client did all three for
//! every poll; at the load users run they were about a tenth of the daemon's CPU
//! (BENCHMARKS.md, session 13). An `https` upstream that offers HTTP/2 gets one
//! shared HTTP/2 connection instead, driven by a task of its own as hyper's
//! HTTP/2 connections must be.

use std::error::Error as StdError;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::{http1, http2};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_service::Service as _;

/// The connection the poller's requests go out on: TLS (rustls, the webpki roots)
/// for an `https` upstream, HTTP/2 where the upstream offers it.
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type H1 = Pin<Box<http1::Connection<Io, Empty<Bytes>>>>;

/// A status document is a few hundred bytes: an answer larger than this is not one.
pub const MAX_BODY: usize = 1024 * 1024;

/// An idle connection is not used after this long (hyper's pooled client's
/// default): a server has most likely closed it by then.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A connection idle this long is checked for a close before it is used: servers
/// close idle connections after seconds (Apache and Node.js after 5 s, nginx after
/// 75 s), and a daemon under load reuses its connections within milliseconds.
const CHECK_AFTER: Duration = Duration::from_secs(1);

/// A whole answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An HTTP/1 connection between two polls.
struct Idle {
    send: http1::SendRequest<Empty<Bytes>>,
    conn: H1,
    since: Instant,
}

pub struct Connections {
    connector: Connector,
    /// HTTP/1 connections to the base URL's origin, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    /// The shared HTTP/2 connection to the base URL's origin, once one was negotiated.
    h2: Mutex<Option<http2::SendRequest<Empty<Bytes>>>>,
}

/// How far a request on a kept connection got before it failed. A server may
/// close an idle connection at any time, and a request written just before the
/// close reached it fails with a reset: one that got no answer at all is sent
/// again on a new connection, as RFC 9110 (9.2.2) allows for a GET.
enum Failed {
    Unanswered(String),
    Answered(String),
}

impl Connections {
    /// `max_idle`: HTTP/1 connections kept between polls (`upstream.max_in_flight`).
    pub fn new(connector: Connector, max_idle: usize) -> Connections {
        Connections {
            connector,
            idle: Mutex::new(Vec::new()),
            max_idle,
            h2: Mutex::new(None),
        }
    }

    /// GET `uri` with `headers` (their Host, [`host_of`] `uri`, only on HTTP/1): the whole answer,
    /// or what failed, in words. `pooled`: `uri` is on the base URL's origin, whose
    /// connections are kept; any other origin (a redirect) gets a connection for
    /// this request only.
    pub async fn get(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        pooled: bool,
    ) -> Result<Answer, String> {
        if pooled {
            if let Some(send) = self.shared_h2() {
                return h2_exchange(send, uri, headers).await;
            }
            if let Some(idle) = self.take_idle() {
                match self.h1_exchange(idle, uri, headers).await {
                    Err(Failed::Unanswered(_)) => {} // opened anew below
                    Ok(answer) => return Ok(answer),
                    Err(Failed::Answered(e)) => return Err(e),
                }
            }
        }
        let io = self.connect(uri).await?;
        if io.connected().is_negotiated_h2() {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| super::describe_failure("connection failed", &e))?;
            tokio::spawn(conn);
            if pooled {
                *lock(&self.h2) = Some(send.clone());
            }
            return h2_exchange(send, uri, headers).await;
        }
        let (send, conn) = http1::handshake(io)
            .await
            .map_err(|e| super::describe_failure("connection failed", &e))?;
        let fresh = Idle {
            send,
            conn: Box::pin(conn),
            since: Instant::now(),
        };
        let answer = if pooled {
            self.h1_exchange(fresh, uri, headers).await
        } else {
            exchange(fresh, uri, headers).await.map(|(a, _)| a)
        };
        answer.map_err(|(Failed::Unanswered(e) | Failed::Answered(e))| e)
    }

    async fn connect(&self, uri: &Uri) -> Result<Io, String> {
        // The connector is a clone of a few `Arc`s; `call` needs it mutable.
        self.connector
            .clone()
            .call(uri.clone())
            .await
            .map_err(|e| super::describe_failure("connection failed", &Connect(e)))
    }

    fn shared_h2(&self) -> Option<http2::SendRequest<Empty<Bytes>>> {
        let mut h2 = lock(&self.h2);
        match &*h2 {
            Some(send) if !send.is_closed() => Some(send.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(&self) -> Option<Idle> {
        loop {
            let mut idle = lock(&self.idle).pop()?;
            let idle_for = idle.since.elapsed();
            if idle_for >= IDLE_TIMEOUT {
                continue;
            }
            // One poll of an idle connection sees a close the server sent meanwhile.
            // It runs hyper's whole dispatcher (4% of the daemon's CPU at 400
            // polls/s), so only after a pause long enough for a server's idle
            // timeout; a close sooner than that is met by the one retry.
            if idle_for < CHECK_AFTER || idle.conn.as_mut().now_or_never().is_none() {
                return Some(idle);
            }
        }
    }

    /// An exchange on a connection that is kept afterwards if it is still good.
    async fn h1_exchange(&self, c: Idle, uri: &Uri, headers: &HeaderMap) -> Result<Answer, Failed> {
        let (answer, kept) = exchange(c, uri, headers).await?;
        if let Some(kept) = kept {
            let mut idle = lock(&self.idle);
            if idle.len() < self.max_idle {
                idle.push(kept);
            }
        }
        Ok(answer)
    }
}

/// One request on an HTTP/1 connection, driving it until the whole answer is
/// read; the connection back if it can carry another request.
async fn exchange(
    c: Idle,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(Answer, Option<Idle>), Failed> {
    let mut request = Request::get(origin_form(uri))
        .body(Empty::new())
        .map_err(|e| Failed::Answered(super::describe_failure("request failed", &e)))?;
    *request.headers_mut() = headers.clone();
    let Idle { mut send, conn, .. } = c;
    let mut conn = Some(conn);
    let answer = {
        let send = &mut send;
        let work = async move {
            let unanswered =
                |e: &hyper::Error| Failed::Unanswered(super::describe_failure("request failed", e));
            send.ready().await.map_err(|e| unanswered(&e))?;
            let response = send
                .try_send_request(request)
                .await
                .map_err(|e| unanswered(e.error()))?;
            read(response).await.map_err(Failed::Answered)
        };
        let mut work = std::pin::pin!(work);
        // The connection is driven beside the request: it writes the request and
        // reads the answer into the body. If it ends first (closed), it is dropped,
        // which ends the request too, with its answer or the reason.
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = work.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if let Some(open) = conn.as_mut() {
                if open.as_mut().poll(cx).is_ready() {
                    conn = None;
                    return work.as_mut().poll(cx);
                }
            }
            Poll::Pending
        })
        .await?
    };
    let kept = conn.map(|conn| Idle {
        send,
        conn,
        since: Instant::now(),
    });
    Ok((answer, kept))
}

async fn h2_exchange(
    mut send: http2::SendRequest<Empty<Bytes>>,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Answer, String> {
    let mut request = Request::get(uri.clone())
        .body(Empty::new())
        .map_err(|e| super::describe_failure("request failed", &e))?;
    *request.headers_mut() = headers.clone();
    // HTTP/2 names the origin in `:authority`, from the URI.
    request.headers_mut().remove(header::HOST);
    let response = send
        .send_request(request)
        .await
        .map_err(|e| super::describe_failure("request failed", &e))?;
    read(response).await
}

async fn read(response: http::Response<hyper::body::Incoming>) -> Result<Answer, String> {
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| super::describe_failure("reading the answer failed", &*e))?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `uri`'s path and query, as an HTTP/1 request line names them.
fn origin_form(uri: &Uri) -> Uri {
    // The path shares the parsed URI's bytes: no second parse, no copy.
    let path = uri.path_and_query().cloned();
    Uri::from(path.unwrap_or_else(|| PathAndQuery::from_static("/")))
}

/// The Host header of a request to `uri`: its host, and its port only when it is
/// not the scheme's default.
pub(super) fn host_of(uri: &Uri) -> Option<HeaderValue> {
    let authority = uri.authority()?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    match authority.port_u16() {
        Some(port) if port != default => {
            HeaderValue::from_str(&format!("{}:{port}", authority.host())).ok()
        }
        _ => HeaderValue::from_str(authority.host()).ok(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connector's error, described as hyper's client described it: the
/// connector's own words (`tcp connect error`), then their causes.
#[derive(Debug)]
struct Connect(Box<dyn StdError + Send + Sync>);

impl std::fmt::Display for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connect")
    }
}

impl StdError for Connect {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_request_line_names_the_path_and_query_only() {
        let form = |s: &str| origin_form(&s.parse().unwrap()).to_string();
        assert_eq!(
            form("http://h:8080/v2/jobs/a%2Fb?x=1&y"),
            "/v2/jobs/a%2Fb?x=1&y"
        );
        assert_eq!(form("https://h/"), "/");
        assert_eq!(form("http://h"), "/");
    }

    /// A server that answers `answers` requests on each connection (keep-alive,
    /// as far as the client can tell) and then closes it, counting connections.
    async fn closing_server(
        answers: usize,
        wait_before_close: Duration,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..answers {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(wait_before_close).await;
                });
            }
        });
        (url, accepted)
    }

    fn connections() -> Connections {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(HttpConnector::new());
        Connections::new(connector, 4)
    }

    async fn get(c: &Connections, url: &str) -> Result<Answer, String> {
        let uri: Uri = format!("{url}/status").parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host_of(&uri).unwrap());
        c.get(&uri, &headers, true).await
    }

    #[tokio::test]
    async fn a_kept_connection_carries_the_next_request() {
        let (url, accepted) = closing_server(3, Duration::from_secs(5)).await;
        let c = connections();
        for _ in 0..3 {
            let a = get(&c, &url).await.expect("an answer");
            assert_eq!((a.status, &a.body[..]), (StatusCode::OK, &b"ok"[..]));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn after_a_pause_a_closed_connection_is_dropped_and_an_open_one_taken() {
        // Both servers keep the connection open for a while after the answer.
        let (closing, _) = closing_server(1, Duration::from_millis(300)).await;
        let (open, _) = closing_server(2, Duration::from_secs(10)).await;
        let (a, b) = (connections(), connections());
        get(&a, &closing).await.expect("an answer");
        get(&b, &open).await.expect("an answer");
        assert_eq!(
            (lock(&a.idle).len(), lock(&b.idle).len()),
            (1, 1),
            "both kept"
        );
        tokio::time::sleep(CHECK_AFTER + Duration::from_millis(300)).await;
        assert!(
            a.take_idle().is_none(),
            "the closed connection is seen closed"
        );
        assert!(b.take_idle().is_some(), "the open one is taken");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_a_failed_poll() {
        // Closed at once after one answer: seen closed when next taken, or the
        // request is refused unsent and goes out on a new connection.
        let (url, accepted) = closing_server(1, Duration::ZERO).await;
        let c = connections();
        for round in 0..5 {
            let a = get(&c, &url).await;
            assert!(a.is_ok(), "round {round}: {:?}", a.err());
            if round % 2 == 0 {
                // Sometimes the close has arrived before the next request, sometimes not.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_refused_connection_says_so() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let e = get(&connections(), &url).await.err().expect("refused");
        assert!(
            e.starts_with("connection failed: tcp connect error: "),
            "{e}"
        );
    }
}
