//! The listener's guard against clients that stop reading.
//!
//! A response is written only as fast as its client reads. A client that stops
//! reading (a frozen browser tab, a script paused in a debugger) fills the socket's
//! buffers, and from then on nothing above the socket runs for it: hyper polls
//! neither the body nor anything that could notice. An event stream would stay
//! open, and the daemon's graceful shutdown would wait on it, forever. So every
//! connection's writes are timed here: a write that cannot go out for
//! `api.write_stall_timeout` fails, and hyper closes the connection. Memory was
//! bounded all along (a page of events and the socket's buffers); this bounds how
//! long it is held.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// A TCP listener whose connections fail a write that is stalled for `limit`.
pub struct StallGuarded {
    listener: TcpListener,
    limit: Duration,
}

impl StallGuarded {
    pub fn new(listener: TcpListener, limit: Duration) -> StallGuarded {
        StallGuarded { listener, limit }
    }
}

impl axum::serve::Listener for StallGuarded {
    type Io = StallGuard;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (StallGuard, SocketAddr) {
        let (io, peer) = axum::serve::Listener::accept(&mut self.listener).await;
        // Small writes (an event, a keep-alive) go out at once, not after the
        // client's delayed ACK.
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        (
            StallGuard {
                io,
                peer,
                limit: self.limit,
                stalled: None,
            },
            peer,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// One connection: a TCP stream whose writes give up after `limit` without progress.
pub struct StallGuard {
    io: TcpStream,
    peer: SocketAddr,
    limit: Duration,
    /// Armed when a write found the socket full; disarmed by any write that goes out.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl StallGuard {
    /// After a write attempt: `Pending` arms the timer (and registers it with
    /// `cx`, so that the connection's task wakes when it fires and tries again);
    /// the timer firing turns the wait into an error.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                crate::metrics::stalled_connection();
                tracing::info!(peer = %self.peer, limit_ms = limit.as_millis() as u64, "closed a connection whose client read nothing for api.write_stall_timeout");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing for api.write_stall_timeout",
                )))
            }
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
