//! The request-head clock of one connection: what turns a slow or idle client into a
//! freed connection.
//!
//! hyper's own head timeout closes the socket without a word. nginx answers a client
//! that started a request head and did not finish it in time with 408, and closes a
//! kept-alive connection that stays idle silently; [`Watched`] does the same. It sits
//! between the socket and hyper, knows (through [`Clock`], which the service updates)
//! whether a request is in progress, and while none is:
//!
//! - no byte within the keep-alive timeout (or, for a new connection, the head
//!   timeout): the connection reads as closed;
//! - a head started but not finished within the head timeout: `408 Request Timeout`
//!   is written and the connection ends.
//!
//! HTTP/2 connections (ALPN `h2`, or the cleartext preface) get only the idle rule:
//! a 408 in HTTP/1 bytes would mean nothing inside HTTP/2 framing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\nConnection: close\r\n\r\nrequest head too slow.\r\n";

/// What the service tells the socket side about requests in progress.
#[derive(Debug)]
pub struct Clock {
    state: Mutex<State>,
    head: Duration,
    idle: Duration,
}

#[derive(Debug)]
struct State {
    /// Requests whose response has not finished yet.
    in_flight: usize,
    /// When the wait for the next head ends (meaningful while `in_flight == 0`).
    deadline: Instant,
    /// Bytes of a new head arrived since the last response finished.
    head_started: bool,
    /// The connection speaks HTTP/2: never write a 408.
    h2: bool,
    /// The connection was upgraded (a WebSocket): its bytes are no longer HTTP, and
    /// the tunnel's own idle timeout applies instead of this clock.
    tunnel: bool,
}

impl Clock {
    /// A clock for a new connection: its first head must come within `head`; a
    /// kept-alive connection may then idle `idle` between requests.
    pub fn new(head: Duration, idle: Duration, h2: bool) -> Arc<Clock> {
        Arc::new(Clock {
            state: Mutex::new(State {
                in_flight: 0,
                deadline: Instant::now() + head,
                head_started: false,
                h2,
                tunnel: false,
            }),
            head,
            idle,
        })
    }

    /// A request head was parsed: the clock stops while it is answered.
    pub fn request_started(&self) {
        let mut s = self.state.lock().expect("clock lock");
        s.in_flight += 1;
    }

    /// Whether a request is being answered now.
    pub fn busy(&self) -> bool {
        self.state.lock().expect("clock lock").in_flight > 0
    }

    /// The connection switched protocols (101): the clock stops for good.
    pub fn tunnel(&self) {
        self.state.lock().expect("clock lock").tunnel = true;
    }

    /// A response's last byte left (or the response was dropped): if no other request
    /// is in progress, the idle clock starts.
    pub fn response_done(&self) {
        let mut s = self.state.lock().expect("clock lock");
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.head_started = false;
            s.deadline = Instant::now() + self.idle;
        }
    }
}

/// A connection's byte stream with the [`Clock`] applied to its reads.
pub struct Watched<T> {
    inner: T,
    clock: Arc<Clock>,
    sleep: Pin<Box<Sleep>>,
    /// How much of the 408 answer is written, once the head timed out.
    answering: Option<usize>,
    /// Whether the first bytes were looked at (for the HTTP/2 preface).
    sniffed: bool,
}

impl<T> Watched<T> {
    pub fn new(inner: T, clock: Arc<Clock>) -> Self {
        let deadline = clock.state.lock().expect("clock lock").deadline;
        Watched {
            inner,
            clock,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            answering: None,
            sniffed: false,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Watched<T> {
    /// Writes the rest of the 408 answer; `Ready` once it is out.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(done) = self.answering {
            if done == TIMEOUT_408.len() {
                std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                break;
            }
            let n =
                std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &TIMEOUT_408[done..]))?;
            if n == 0 {
                break;
            }
            self.answering = Some(done + n);
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request head not received in time (answered 408)",
        )))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.answering.is_some() {
            return this.poll_answer(cx);
        }
        let (waiting, deadline, head_started, h2) = {
            let s = this.clock.state.lock().expect("clock lock");
            if s.tunnel {
                drop(s);
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            (s.in_flight == 0, s.deadline, s.head_started, s.h2)
        };
        if waiting {
            if this.sleep.deadline() != deadline {
                this.sleep.as_mut().reset(deadline);
            }
            if this.sleep.as_mut().poll(cx).is_ready() {
                if head_started && !h2 {
                    this.answering = Some(0);
                    return this.poll_answer(cx);
                }
                // Idle past the timeout: read as closed, which hyper takes calmly.
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let got = &buf.filled()[before..];
        if !got.is_empty() {
            let mut s = this.clock.state.lock().expect("clock lock");
            if !this.sniffed {
                this.sniffed = true;
                s.h2 |= got.starts_with(b"PRI ");
            }
            if s.in_flight == 0 && !s.head_started {
                s.head_started = true;
                s.deadline = Instant::now() + this.clock.head;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
