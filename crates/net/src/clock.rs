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
//!
//! Writes have a clock too (nginx's `send_timeout`, HAProxy's `timeout client` on
//! the way out): a write that waits for the client to read, with not one byte taken
//! for the head timeout, ends the connection. A client that asks for a large file
//! and stops reading would otherwise hold its connection, its place in the budget
//! and its file for ever (the kernel keeps probing a zero window).
//!
//! The clock also says when a plain HTTP/1 connection may be *parked*: hyper keeps
//! 16 KiB of buffers per connection for as long as the connection lives, idle or
//! not, so 10,000 idle clients would cost 160 MB. Once a connection has been idle
//! for a moment (its last answer out, no byte of a new head), [`Watched`] stops
//! handing bytes to hyper and raises [`Clock::park_wanted`]; the connection's task
//! then closes hyper's side (the socket stays open) and waits for the client's next
//! bytes with nothing but the socket, as HAProxy and nginx do (see `server`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 24\r\nConnection: close\r\n\r\nrequest head too slow.\r\n";

/// What the service tells the socket side about requests in progress.
#[derive(Debug)]
pub struct Clock {
    state: Mutex<State>,
    head: Duration,
    idle: Duration,
    /// How long a write may wait for the client to take a byte.
    send: Duration,
    /// How long an idle HTTP/1 connection keeps hyper's buffers before it is parked;
    /// `None`: never parked (TLS, HTTP/2).
    park_after: Option<Duration>,
    /// An answer finished since the timer was last set: the next flush sets it (an
    /// atomic, so that the flushes between answers take no lock).
    rearm: std::sync::atomic::AtomicBool,
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
    /// A request in progress carries a body: hyper may still hold some of it
    /// unread, so the connection is not parked after its answer.
    bodied: bool,
    /// When the idle connection may be parked (meaningful while `in_flight == 0`).
    park_at: Option<Instant>,
    /// Parking was asked: reads give hyper nothing until the connection's task has
    /// taken the socket back.
    parking: bool,
    /// Parking was switched off for good.
    no_park: bool,
}

impl State {
    /// When an idle connection's timer is due: the moment to park it (once asked
    /// for, and while no new head has started), or else its deadline.
    fn wake_at(&self) -> Instant {
        match self.park_at {
            Some(at) if !self.head_started => at.min(self.deadline),
            _ => self.deadline,
        }
    }
}

impl Clock {
    /// A clock for a new connection: its first head must come within `head`; a
    /// kept-alive connection may then idle `idle` between requests, and is parked
    /// after `park_after` of it (`None`: never); a write may wait `send` for the
    /// client to read.
    pub fn new(
        head: Duration,
        idle: Duration,
        send: Duration,
        h2: bool,
        park_after: Option<Duration>,
    ) -> Arc<Clock> {
        Arc::new(Clock {
            state: Mutex::new(State {
                in_flight: 0,
                deadline: Instant::now() + head,
                head_started: false,
                h2,
                tunnel: false,
                bodied: false,
                park_at: None,
                parking: false,
                no_park: false,
            }),
            head,
            idle,
            send,
            park_after,
            rearm: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A request head was parsed (`bodied`: a body follows it): the clock stops
    /// while it is answered.
    pub fn request_started(&self, bodied: bool) {
        let mut s = self.state.lock().expect("clock lock");
        s.in_flight += 1;
        s.bodied |= bodied;
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
            let now = Instant::now();
            s.head_started = false;
            s.deadline = now + self.idle;
            s.park_at = match self.park_after {
                Some(after) if !s.bodied && !s.h2 && !s.no_park => Some(now + after),
                _ => None,
            };
            s.bodied = false;
            self.rearm.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether the connection's HTTP side should be closed now to park the socket:
    /// [`Watched`] asked for it, and no request has started since.
    pub fn park_wanted(&self) -> bool {
        let s = self.state.lock().expect("clock lock");
        s.parking && s.in_flight == 0 && !s.head_started
    }

    /// The connection's task took the socket back: reads go to hyper again, and the
    /// next answer may park it again.
    pub fn unparked(&self) {
        let mut s = self.state.lock().expect("clock lock");
        s.parking = false;
        s.park_at = None;
    }

    /// When the wait for the next head ends: for a parked connection, when it closes
    /// if the client sends nothing.
    pub fn deadline(&self) -> Instant {
        self.state.lock().expect("clock lock").deadline
    }

    /// The connection is not to be parked any more (it is closing once quiet): reads
    /// go to hyper, now and after every answer.
    pub fn stop_parking(&self) {
        let mut s = self.state.lock().expect("clock lock");
        s.parking = false;
        s.park_at = None;
        s.no_park = true;
    }
}

/// A byte stream that can say when bytes are waiting, without reading them: what a
/// parked connection waits on, holding no buffer.
pub trait ReadReady {
    /// `Ready` when a read would not block (bytes, the end of the stream, an error).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
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
    /// Bytes read from the socket that are to be read again first: what hyper had
    /// read but not used when its side of a parked connection closed, or the first
    /// bytes looked at for the HTTP/2 preface.
    replay: Bytes,
    /// Set while a write waits for the client to read: when it fires, the
    /// connection ends (see the module's note). A timer only while stalled.
    stall: Option<Pin<Box<Sleep>>>,
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
            replay: Bytes::new(),
            stall: None,
        }
    }

    /// The connection's first bytes were looked at already (in an earlier round): a
    /// later request starting with `PRI ` is no HTTP/2 preface.
    pub fn skip_sniff(&mut self) {
        self.sniffed = true;
    }

    /// Whether bytes put back wait to be read again (a pipelined request).
    pub fn has_replay(&self) -> bool {
        !self.replay.is_empty()
    }

    /// Puts `bytes` back in front of what is still to be read.
    pub fn replay(&mut self, bytes: Bytes) {
        self.replay = if self.replay.is_empty() {
            bytes
        } else {
            [bytes, std::mem::take(&mut self.replay)].concat().into()
        };
    }
}

impl<T: ReadReady> Watched<T> {
    /// Waits, holding no buffer, until the client's next bytes (`Ok(true)`), or until
    /// the idle (or first head) timeout passes with none (`Ok(false)`).
    pub async fn next_bytes(&mut self) -> io::Result<bool> {
        std::future::poll_fn(|cx| {
            if !self.replay.is_empty() {
                return Poll::Ready(Ok(true));
            }
            let deadline = self.clock.state.lock().expect("clock lock").deadline;
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(false));
            }
            self.inner.poll_read_ready(cx).map_ok(|()| true)
        })
        .await
    }
}

impl<T> Watched<T> {
    /// Sets the timer to the moment the idle connection is to be parked or closed,
    /// or its head to be answered with 408, so that the task wakes then even if
    /// nothing else happens on the connection.
    fn arm(&mut self, cx: &mut Context<'_>) {
        let wake_at = {
            let s = self.clock.state.lock().expect("clock lock");
            if s.in_flight > 0 || s.tunnel || s.parking {
                return;
            }
            s.wake_at()
        };
        if self.sleep.deadline() != wake_at {
            self.sleep.as_mut().reset(wake_at);
            if self.sleep.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
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
        let (waiting, deadline, head_started, h2, park_at, wake_at) = {
            let s = this.clock.state.lock().expect("clock lock");
            if s.tunnel {
                drop(s);
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if s.parking {
                // hyper gets nothing more: it is about to be closed, idle.
                return Poll::Pending;
            }
            let park_at = s.park_at.filter(|_| !s.head_started);
            let wake_at = s.wake_at();
            (
                s.in_flight == 0,
                s.deadline,
                s.head_started,
                s.h2,
                park_at,
                wake_at,
            )
        };
        if waiting {
            if this.sleep.deadline() != wake_at {
                this.sleep.as_mut().reset(wake_at);
            }
            if this.sleep.as_mut().poll(cx).is_ready() && Instant::now() >= deadline {
                if head_started && !h2 {
                    this.answering = Some(0);
                    return this.poll_answer(cx);
                }
                // Idle past the timeout: read as closed, which hyper takes calmly.
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            if this.replay.is_empty() {
                // An empty view still holds the whole buffer it was cut from.
                this.replay = Bytes::new();
            }
        } else if Pin::new(&mut this.inner).poll_read(cx, buf)?.is_pending() {
            if waiting && park_at.is_some_and(|at| Instant::now() >= at) {
                // Idle long enough, and nothing more came: hand the socket back.
                this.clock.state.lock().expect("clock lock").parking = true;
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
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

impl<T> Watched<T> {
    /// A write's outcome, through the send clock: a write that cannot go on starts
    /// it (or finds it run out: the connection ends); one that wrote stops it.
    fn sent(
        &mut self,
        written: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if written.is_ready() {
            self.stall = None;
            return written;
        }
        let send = self.clock.send;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
        if stall.as_mut().poll(cx).is_ready() {
            self.stall = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {send:?}: connection closed"),
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.sent(written, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes after an answer's last bytes, and may not read again before
        // the client's next bytes: this is where the idle clock's timer is set.
        if self
            .clock
            .rearm
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.arm(cx);
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.clock.state.lock().expect("clock lock").parking {
            // hyper closing its side of a parked connection: the socket stays open.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.sent(written, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
