//! One accepted connection, from its first byte to its close: the PROXY header and
//! TLS, then HTTP through hyper, with the head clock, the drain and lingering close.
//!
//! A plain HTTP/1 connection is served in rounds. hyper holds a read and a write
//! buffer (8 KiB each) for as long as its connection lives, so a connection that
//! goes idle between requests is *parked*: once it has been quiet for
//! [`PARK_AFTER`] (see [`crate::clock`]), hyper's side is closed while the socket
//! stays open, and the task waits for the client's next bytes holding only the bare
//! socket and its idle deadline ([`Parked`]); those bytes start a new round, with a
//! new clock, service and hyper connection ([`PlainRound`]). Bytes hyper had read and
//! not used (a pipelined request, at most) start the next round at once, through
//! [`Watched::replay`], without parking. TLS connections are not
//! parked (rustls keeps its own buffers, and may hold a whole record already read),
//! nor HTTP/2 ones (their idle state is hyper's to keep).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::OptionFuture;
use http::header::CONNECTION;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use super::idle::Waiting;
use super::{too_large, Handler, Limits, Transport};
use crate::clock::{Clock, Watched};
use crate::linger::Lent;
use crate::proxy_protocol::Replay;
use crate::sendfile::{FileOut, Outbox};
use crate::tunnel::Hold;
use crate::{Body, Metrics, Shutdown};

/// hyper's settings for the connections of one listener.
pub(super) struct Protocols {
    /// HTTP/1.1 or HTTP/2, by the client's first bytes: TLS connections, and a
    /// plain one that opens with the HTTP/2 preface.
    pub auto: auto::Builder<TokioExecutor>,
    /// The rounds of a plain HTTP/1 connection.
    pub http1: http1::Builder,
}

/// How long an idle plain HTTP/1 connection keeps hyper's buffers before it is
/// parked. Long enough that a busy keep-alive client (its next request comes within
/// a round trip) never pays for a new round; short enough that idle clients cost a
/// socket, not 16 KiB each.
const PARK_AFTER: Duration = Duration::from_millis(20);

/// How long a connection between requests (or accepted just before shutdown) has,
/// once the node drains, to send its next request: it is served, with `Connection:
/// close`, not closed under a client that may be sending it (a busy client sends
/// within milliseconds; an idle one is closed after this).
pub(super) const REQUEST_GRACE: Duration = Duration::from_secs(1);

/// The wait for a first request (and between requests) on a connection accepted
/// while the node's budget was nearly spent: long enough for a real client on a slow
/// network, short enough that idle sockets cannot keep the last places.
const PRESSED_WAIT: Duration = Duration::from_secs(3);

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every connection of a listener's serving thread needs, shared.
pub(super) struct Conn<H> {
    pub handler: Arc<H>,
    pub protocols: Arc<Protocols>,
    pub limits: Arc<Limits>,
    /// This thread's copy of the node's shutdown signal (see `Shutdown::relay`).
    pub shutdown: Shutdown,
    /// The deadlines of this thread's connections waiting for a client's bytes.
    pub waiting: Waiting,
}

/// What a connection's requests tell its task.
#[derive(Default)]
struct Shared {
    /// An answer said `Connection: close` before the request body was read: the
    /// socket lingers when it closes (see `linger`).
    linger: AtomicBool,
    /// Requests started and answers finished: the drain closes a connection only
    /// once it has been quiet for a while (see [`REQUEST_GRACE`]).
    activity: AtomicU64,
    abandoned: Abandoned,
}

/// How a round of HTTP on a connection ended.
enum Round {
    /// The connection is done: closed by either side, upgraded, or failed.
    Over,
    /// hyper's side was closed on an idle connection; the socket can be taken back.
    Parked,
}

impl<H: Handler> Conn<H> {
    /// Serves the connection on a task of `tracker`.
    ///
    /// The task's future is what an idle connection costs, so it is kept to what a
    /// parked connection needs ([`Parked`]): the opening (the PROXY header, TLS, the
    /// first bytes) and the rounds of HTTP between two parkings are boxed futures of
    /// their own, gone when done, and the values the task keeps are captured once, by
    /// an async block (an async fn keeps its arguments twice, as arguments and as
    /// locals).
    pub fn spawn(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        stream: TcpStream,
        peer: SocketAddr,
        transport: &Arc<Transport>,
        metrics: &Arc<Metrics>,
        place: super::Place,
    ) {
        let _ = stream.set_nodelay(true);
        let transport = transport.clone();
        metrics.connection_opened();
        // A WebSocket tunnel outlives the connection's HTTP: it holds the connection
        // (its budget place, the drain's wait) until it ends.
        let (hold, held) = Hold::new(metrics.clone());
        let head = self.head(place.pressed());
        let opened = Box::pin(self.clone().open(stream, peer, transport, head, hold));
        let this = self.clone();
        tracker.spawn(async move {
            // No binding holds the opened round across the awaits below: `if let
            // Some(round) = opened.await { ... }` would keep it (and hyper's parts of
            // it) in this future for as long as the connection lives.
            let first = opened
                .await
                .map(|round| Box::pin(this.rounds(round, held.hold())));
            // The parked connection is waited on where it lies, not moved out of
            // `parked` first (a moved-from binding keeps its room in the future);
            // and in a block, so that none of it is kept while the last wait runs.
            {
                let mut parked = OptionFuture::from(first).await.flatten();
                while let Some(Parked { tcp, deadline, .. }) = &parked {
                    if !next_bytes(&this.waiting, tcp, *deadline).await {
                        break;
                    }
                    let Some(Parked { tcp, peer, .. }) = parked.take() else {
                        break;
                    };
                    let round = this.round(tcp, this.head(place.pressed()), peer);
                    parked = Box::pin(this.rounds(round, held.hold())).await;
                }
            }
            held.released().await.connection_closed();
            drop(place);
        });
    }

    /// The PROXY header and the TLS handshake (both within the head timeout), then
    /// HTTP: a TLS connection (or a cleartext HTTP/2 one) is served here to its end;
    /// a plain HTTP/1 connection's first round is returned, to be served in
    /// [`Conn::rounds`]. `head`: how long the client has for its first request
    /// ([`PRESSED_WAIT`] at most when the node's budget is nearly spent).
    async fn open(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        transport: Arc<Transport>,
        head: Duration,
        hold: Hold,
    ) -> Option<PlainRound> {
        let (peer, stream) = if transport.proxy_from.is_empty() {
            (peer, Replay::new(Vec::new(), stream))
        } else {
            let accepted = Box::pin(tokio::time::timeout(
                head,
                crate::proxy_protocol::accept(stream, peer, &transport.proxy_from),
            ))
            .await;
            match accepted {
                Ok(Ok(opened)) => opened,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "connection refused: {e}");
                    return None;
                }
                Err(_) => return None,
            }
        };
        match &transport.tls {
            None => self.plain(stream, peer, head, hold).await,
            Some(tls) => {
                // Boxed: TLS's state is large, and plain connections do not need it.
                Box::pin(self.tls(tls, stream, peer, head, hold)).await;
                None
            }
        }
    }

    /// The TLS handshake (within the head timeout), then HTTP/1.1 or HTTP/2 by ALPN.
    async fn tls(
        self: Arc<Self>,
        tls: &tokio_rustls::TlsAcceptor,
        stream: Replay<TcpStream>,
        peer: SocketAddr,
        head: Duration,
        hold: Hold,
    ) {
        let handshake = Box::pin(tokio::time::timeout(head, tls.accept(stream)));
        match handshake.await {
            Ok(Ok(stream)) => {
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let clock = self.clock(head, h2, None);
                let (io, returned) = Lent::new(stream);
                let io = Watched::new(io, clock.clone());
                let shared = Arc::new(Shared::default());
                let service = self.service(&clock, &shared, hold, peer, true, None);
                Box::pin(self.auto(io, service, &clock, &shared, peer, h2)).await;
                linger(&shared, returned).await;
            }
            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
            Err(_) => tracing::debug!(%peer, "TLS handshake not finished within {head:?}"),
        }
    }

    /// Serves HTTP/1.1 or HTTP/2 (by ALPN or the preface) on `io`, not parked.
    async fn auto<IO, S>(
        &self,
        io: IO,
        service: S,
        clock: &Clock,
        shared: &Shared,
        peer: SocketAddr,
        h2: bool,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: ConnService,
    {
        let conn = self
            .protocols
            .auto
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        // Boxed: HTTP/2's state is large, and only this kind of connection needs it.
        let mut conn = Box::pin(conn);
        let graceful = |c: Pin<&mut _>| auto::UpgradeableConnection::graceful_shutdown(c);
        self.run(conn.as_mut(), graceful, clock, shared, peer, h2)
            .await;
    }

    /// How long a client has for a request once its connection is open or its
    /// bytes came: [`PRESSED_WAIT`] at most when the node's budget was nearly spent
    /// as the connection came.
    fn head(&self, pressed: bool) -> Duration {
        if pressed {
            self.limits.header_timeout.min(PRESSED_WAIT)
        } else {
            self.limits.header_timeout
        }
    }

    /// The connection's clock, from the listener's limits: `head` for its first
    /// request, the keep-alive timeout (shortened like `head` when the node's budget
    /// is nearly spent), and the full client timeout for a write to wait.
    fn clock(&self, head: Duration, h2: bool, park_after: Option<Duration>) -> Arc<Clock> {
        let idle = if head < self.limits.header_timeout {
            self.limits.keepalive_timeout.min(head)
        } else {
            self.limits.keepalive_timeout
        };
        Clock::new(head, idle, self.limits.header_timeout, h2, park_after)
    }

    /// Opens a plain connection: serves it as HTTP/2 if it opens with the preface;
    /// else it is HTTP/1, and its first round is returned.
    async fn plain(
        self: Arc<Self>,
        stream: Replay<TcpStream>,
        peer: SocketAddr,
        head: Duration,
        hold: Hold,
    ) -> Option<PlainRound> {
        let deadline = tokio::time::Instant::now() + head;
        if !next_bytes(&self.waiting, &stream, deadline).await {
            return None;
        }
        let outbox = self.handler.sends_files().then(Outbox::default);
        let stream = stream.map(|tcp| FileOut::new(tcp, outbox.clone()));
        let mut round = self.round_on(stream, head, outbox, peer);
        let first = first_bytes(&mut round.io).await?;
        let h2 = first.starts_with(H2_PREFACE);
        round.io.replay(first);
        if !h2 {
            return Some(round);
        }
        // Files go out by `sendfile` on HTTP/1 only: HTTP/2 frames them itself.
        let PlainRound {
            io,
            returned,
            clock,
            shared,
            outbox: _,
            peer,
        } = round;
        let service = self.service(&clock, &shared, hold, peer, false, None);
        let served = Box::pin(self.auto(io, service, &clock, &shared, peer, true));
        served.await;
        linger(&shared, returned).await;
        None
    }

    /// A new round on a parked connection's socket, whose client has sent bytes.
    fn round(&self, tcp: TcpStream, head: Duration, peer: SocketAddr) -> PlainRound {
        let outbox = self.handler.sends_files().then(Outbox::default);
        let stream = Replay::new(Vec::new(), FileOut::new(tcp, outbox.clone()));
        let mut round = self.round_on(stream, head, outbox, peer);
        // Only a connection's first bytes can be the HTTP/2 preface.
        round.io.skip_sniff();
        round
    }

    /// What hyper reads and writes for one round on `stream`, and what the round's
    /// requests share: a new clock (`head` for the request to come), the socket lent,
    /// the client (`peer`: the PROXY header's, if one came).
    fn round_on(
        &self,
        stream: Replay<FileOut>,
        head: Duration,
        outbox: Option<Outbox>,
        peer: SocketAddr,
    ) -> PlainRound {
        let clock = self.clock(head, false, Some(PARK_AFTER));
        let (io, returned) = Lent::new(stream);
        PlainRound {
            io: Watched::new(io, clock.clone()),
            returned,
            clock,
            shared: Arc::new(Shared::default()),
            outbox,
            peer,
        }
    }

    /// Serves rounds of HTTP/1 on a plain connection until it is over (`None`) or
    /// parked: then hyper's side, the clock and the service are gone, and what is
    /// left to wait for the client's next bytes is returned.
    async fn rounds(&self, round: PlainRound, hold: Hold) -> Option<Parked> {
        let PlainRound {
            mut io,
            returned,
            clock,
            shared,
            outbox,
            peer,
        } = round;
        let mut service = self.service(&clock, &shared, hold, peer, false, outbox);
        loop {
            let conn = self
                .protocols
                .http1
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            let mut conn = Box::pin(conn);
            let graceful = |c: Pin<&mut _>| http1::UpgradeableConnection::graceful_shutdown(c);
            let round = Box::pin(self.run(conn.as_mut(), graceful, &clock, &shared, peer, false));
            if let Round::Parked = round.await {
                if let Some(parts) = take_back(conn) {
                    (io, service) = parts;
                    clock.unparked();
                    if io.has_replay() {
                        // A pipelined request hyper had read: its round starts now.
                        continue;
                    }
                    drop((io, service));
                    // The socket, back from hyper's side through the lent channel.
                    // The clock parks only after a read found the socket empty, so
                    // what the PROXY header's read left over was all read by then.
                    let stream = returned.await.ok()?;
                    let tcp = stream.into_inner().ok()?.into_tcp();
                    return Some(Parked {
                        tcp,
                        deadline: clock.deadline(),
                        peer,
                    });
                }
            }
            break;
        }
        linger(&shared, returned).await;
        None
    }

    /// The service hyper calls for each request of the connection; `outbox`: the
    /// socket's, for a handler that sends files (see [`crate::sendfile`]).
    fn service(
        &self,
        clock: &Arc<Clock>,
        shared: &Arc<Shared>,
        hold: Hold,
        peer: SocketAddr,
        secure: bool,
        outbox: Option<Outbox>,
    ) -> impl ConnService {
        let handler = self.handler.clone();
        let clock = clock.clone();
        let shared = shared.clone();
        let draining = self.shutdown.clone();
        let max_body = self.limits.max_body_bytes;
        let info = crate::server::ConnInfo { secure };
        service_fn(move |mut req: Request<Incoming>| {
            let handler = handler.clone();
            let clock = clock.clone();
            let shared = shared.clone();
            let hold = hold.clone();
            let draining = draining.clone();
            if let Some(outbox) = &outbox {
                req.extensions_mut().insert(outbox.clone());
            }
            shared.activity.fetch_add(1, Relaxed);
            async move {
                clock.request_started(!req.body().is_end_stream());
                let mut pending = Pending {
                    clock: clock.clone(),
                    shared: shared.clone(),
                    answered: false,
                };
                req.extensions_mut().insert(info);
                req.extensions_mut().insert(hold);
                let http1 = req.version() < Version::HTTP_2;
                let mut resp = match too_large(&req, max_body) {
                    Some(refusal) => refusal,
                    // Boxed: hyper moves the service's future after creating it,
                    // and a handler's future (the load balancer's: 3.7 KiB) inline
                    // made each a 7.9 KiB copy.
                    None => Box::pin(handler.handle(req, peer)).await,
                };
                // Draining: this answer is the connection's last, and says so (an
                // HTTP/1 client can only learn it from the answer; a connection
                // closed under it might take its next request with it).
                if http1
                    && resp.status() != StatusCode::SWITCHING_PROTOCOLS
                    && draining.is_triggered()
                {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                // A hop that answers before reading the body (413, a broken body)
                // says `Connection: close`: the client may still be sending.
                if http1 && resp.headers().get(CONNECTION).is_some_and(|v| v == "close") {
                    shared.linger.store(true, Relaxed);
                }
                // Once the 101 is out the bytes are the tunnel's, not HTTP heads.
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    clock.tunnel();
                }
                pending.answered = true;
                drop(pending);
                let done = move |_| {
                    clock.response_done();
                    shared.activity.fetch_add(1, Relaxed);
                };
                Ok::<_, Infallible>(resp.map(|body| crate::finish::on_finish(body, done)))
            }
        })
    }

    /// Runs one round of HTTP (`conn`, which `graceful_shutdown` asks to finish) until
    /// hyper ends it, the clock asks to park an idle
    /// HTTP/1 connection, a client cancels too much, or the node drains.
    async fn run<C, E>(
        &self,
        mut conn: Pin<&mut C>,
        graceful_shutdown: impl Fn(Pin<&mut C>),
        clock: &Clock,
        shared: &Shared,
        peer: SocketAddr,
        h2: bool,
    ) -> Round
    where
        C: std::future::Future<Output = Result<(), E>>,
    {
        let park = std::future::poll_fn(|_| {
            if clock.park_wanted() {
                std::task::Poll::Ready(())
            } else {
                // The clock wakes the task when it asks (see `Watched`).
                std::task::Poll::Pending
            }
        });
        tokio::select! {
            _ = conn.as_mut() => Round::Over,
            () = park => {
                // hyper is idle: this closes its side at once, the socket untouched.
                graceful_shutdown(conn.as_mut());
                match conn.await {
                    Ok(()) => Round::Parked,
                    Err(_) => Round::Over,
                }
            }
            _ = shared.abandoned.too_many.notified() => {
                tracing::warn!(
                    %peer,
                    "closing a connection whose client cancelled most of its requests \
                     before they were answered (an HTTP/2 rapid-reset attack?)"
                );
                Round::Over
            }
            _ = self.shutdown.wait() => {
                // The connection closes once quiet: it is not parked any more (a
                // parking clock would keep a request on the wire from hyper).
                clock.stop_parking();
                // HTTP/1: the next answer says `Connection: close` (above) and
                // hyper closes after it; closing between requests instead could
                // meet a request already on the wire. A connection quiet for
                // `REQUEST_GRACE` is closed. HTTP/2 has GOAWAY, which tells the
                // client which streams were not taken, so it retries those.
                if !h2 {
                    loop {
                        let before = shared.activity.load(Relaxed);
                        tokio::select! {
                            _ = conn.as_mut() => return Round::Over,
                            _ = tokio::time::sleep(REQUEST_GRACE) => {}
                        }
                        let quiet = shared.activity.load(Relaxed) == before;
                        if quiet && !clock.busy() {
                            break;
                        }
                    }
                }
                graceful_shutdown(conn.as_mut());
                let _ = conn.await;
                Round::Over
            }
        }
    }
}

/// What hyper's connections call for each request.
trait ConnService:
    Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> ConnService for S where
    S: Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A plain connection's socket as hyper reads it: the clock's watch, lent (hyper
/// gives it back when its side closes), with any bytes already read put back, and
/// files sent by `sendfile`.
type PlainIo = Watched<Lent<Replay<FileOut>>>;

/// One round of a plain HTTP/1 connection: the socket as hyper reads it, with its
/// clock, what the round's requests share, and the channel that gives the socket back
/// when hyper drops it. Built anew after each parking.
struct PlainRound {
    io: PlainIo,
    returned: tokio::sync::oneshot::Receiver<Replay<FileOut>>,
    clock: Arc<Clock>,
    shared: Arc<Shared>,
    /// The socket's, for a handler that sends files (see [`crate::sendfile`]).
    outbox: Option<Outbox>,
    /// The client: the PROXY header's, if one came.
    peer: SocketAddr,
}

/// A parked connection: all its task keeps between rounds besides the connection's
/// own (the budget place, the hold): the socket, when it is closed if the client
/// sends nothing, and the client (the PROXY header's, if one came).
struct Parked {
    tcp: TcpStream,
    deadline: tokio::time::Instant,
    peer: SocketAddr,
}

/// Waits, holding no buffer, for the client's first bytes or a parked connection's
/// next ones. `false`: `deadline` (the first head's or the idle timeout) passed first,
/// or the node drains and none came within [`REQUEST_GRACE`]. The deadline is an
/// entry in the thread's [`Waiting`] list, not a timer of its own: every idle
/// connection keeps this future, so it is a bare `poll_fn` (an async fn would keep
/// its arguments, the deadline among them, for as long as it waits).
fn next_bytes<'a, T: crate::clock::ReadReady>(
    waiting: &'a Waiting,
    io: &'a T,
    deadline: tokio::time::Instant,
) -> impl Future<Output = bool> + 'a {
    let wait = waiting.enter(deadline);
    std::future::poll_fn(move |cx| {
        if let std::task::Poll::Ready(ready) = io.poll_read_ready(cx) {
            return std::task::Poll::Ready(ready.is_ok());
        }
        wait.poll_expired(cx).map(|()| false)
    })
}

/// The socket and the service back from a round's hyper connection closed idle, with
/// the bytes hyper had read and not used put back in front. A function of its own:
/// hyper's parts (its read buffer's view among them) stay out of the parked state.
fn take_back<S>(
    conn: Pin<Box<http1::UpgradeableConnection<TokioIo<PlainIo>, S>>>,
) -> Option<(PlainIo, S)>
where
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
{
    let parts = Pin::into_inner(conn).into_parts()?;
    let mut io = parts.io.into_inner();
    if !parts.read_buf.is_empty() {
        // A copy: hyper's bytes are a view of its whole read buffer.
        io.replay(Bytes::copy_from_slice(&parts.read_buf));
    }
    Some((io, parts.service))
}

/// The client's first bytes on a plain connection: enough to tell the HTTP/2 preface
/// from an HTTP/1 request. `None`: the connection closed, or sent nothing in time.
async fn first_bytes<T>(io: &mut Watched<T>) -> Option<Bytes>
where
    T: AsyncRead + AsyncWrite + crate::clock::ReadReady + Unpin,
{
    if !matches!(io.next_bytes().await, Ok(true)) {
        return None;
    }
    let mut first = BytesMut::with_capacity(1024);
    loop {
        match io.read_buf(&mut first).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        if first.len() >= H2_PREFACE.len() || !H2_PREFACE.starts_with(&first) {
            return Some(first.freeze());
        }
    }
}

/// Once the connection is over (the socket given back by whoever held it last,
/// hyper or this task): if an answer was sent before its request's body was read,
/// the socket lingers (see `linger`).
async fn linger<IO>(shared: &Shared, returned: tokio::sync::oneshot::Receiver<IO>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if shared.linger.load(Relaxed) {
        if let Ok(Ok(io)) = tokio::time::timeout(Duration::from_millis(100), returned).await {
            crate::linger::close(io).await;
        }
    }
}

/// Requests of one connection whose handler was dropped before it answered: an
/// HTTP/2 client can reset streams as fast as it opens them, and each reset stream
/// still costs the start of a handler while no longer counting against the
/// concurrent-stream limit (CVE-2023-44487, in its slow form that hyper's own
/// reset-before-accept limit does not see).
#[derive(Default)]
struct Abandoned {
    answered: AtomicU64,
    cancelled: AtomicU64,
    /// Woken when the connection should be closed.
    too_many: tokio::sync::Notify,
}

/// Cancelled requests a connection may have before its ratio counts: browsers cancel
/// a few streams when a user navigates away, never hundreds.
const CANCELLED_ALLOWANCE: u64 = 100;

/// Accounts for one request until its handler answers; dropped unanswered, it keeps
/// the connection's clock right and counts the cancellation.
struct Pending {
    clock: Arc<Clock>,
    shared: Arc<Shared>,
    answered: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let abandoned = &self.shared.abandoned;
        if self.answered {
            abandoned.answered.fetch_add(1, Relaxed);
            return;
        }
        // The response will never be sent, so the clock must not wait for it.
        self.clock.response_done();
        let cancelled = abandoned.cancelled.fetch_add(1, Relaxed) + 1;
        if cancelled > CANCELLED_ALLOWANCE && cancelled > abandoned.answered.load(Relaxed) {
            abandoned.too_many.notify_one();
        }
    }
}
