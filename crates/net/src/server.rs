//! The accept loop every role uses: a connection cap, HTTP/1.1 and HTTP/2 (by ALPN
//! over TLS, by the preface in clear), optional TLS and PROXY protocol, limits on the
//! request head (size and time, with a real 408), on the body (413) and on HTTP/2
//! abuse, and graceful drain on shutdown.
//!
//! Malformed request lines and oversize heads are answered by hyper's parser itself
//! (400, 431, 414) before a handler ever runs, so no role can forget them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::budget::{Budget, LogEvery, Slot};
use crate::clock::{Clock, Watched};
use crate::linger::Lent;
use crate::proxy_protocol::Replay;
use crate::tunnel::Hold;
use crate::{Body, Metrics, Shutdown};

/// What a request carries about its connection, in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The connection is TLS ended here: the request came over HTTPS.
    pub secure: bool,
}

/// How connections of one listener are opened before HTTP starts.
#[derive(Clone, Default)]
pub struct Transport {
    /// End TLS with this acceptor; `None` is plain TCP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Peers allowed to open with a PROXY protocol v2 header naming the real
    /// client (the load balancers); a header from anyone else closes the connection.
    pub proxy_from: Vec<std::net::IpAddr>,
}

/// What a role does with one request. `peer` is the client's address as this node
/// sees it (the previous hop).
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Limits on what clients may do to a listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once, shared by every listener given a clone of these
    /// limits, and per client address; further ones wait in the kernel's backlog.
    pub budget: Arc<Budget>,
    /// Time a client has to send a request head, and to start the next one on a
    /// kept-alive connection.
    pub header_timeout: Duration,
    /// Largest request head, in bytes (at least 8 KiB); larger heads get 431.
    pub max_header_bytes: usize,
    /// How long open connections may finish their work after shutdown is asked.
    pub drain_timeout: Duration,
    /// How long a kept-alive connection may sit with no request before it is closed.
    pub keepalive_timeout: Duration,
    /// Largest request body a client may announce (`Content-Length`); more is 413.
    /// `None`: no limit here (a load balancer leaves it to the web servers).
    pub max_body_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            budget: Budget::new(10_000, crate::budget::DEFAULT_PER_CLIENT),
            header_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            drain_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            max_body_bytes: None,
        }
    }
}

/// Binds `addr` the way a server should: `SO_REUSEADDR` so a restart does not wait
/// for old sockets, and a deep backlog so bursts queue in the kernel, not fail.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e} (is another process using this port?)"),
        )
    })?;
    socket.listen(4096)
}

/// Binds a floating address: with `SO_REUSEPORT`, so that during a handover both
/// load balancers can listen at once and no client meets a closed port; and with
/// `IP_FREEBIND`, so that an IP the node does not hold yet (linux mode) can be
/// bound before it arrives.
pub fn bind_floating(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv4() {
        socket.set_freebind(true)?;
    } else {
        socket.set_freebind_ipv6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into()).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on the floating address {addr}: {e}"),
        )
    })?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Serves plain HTTP on `listener` with `handler` until `shutdown`, then drains.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    limits: Limits,
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    serve_with(
        listener,
        Transport::default(),
        limits,
        handler,
        metrics,
        shutdown,
    )
    .await
}

/// The HTTP settings of every connection. The HTTP/2 ones are what keeps a client
/// from exhausting the server with protocol tricks: a cap on concurrent streams, on
/// the header block (an endless CONTINUATION sequence ends at this size), and on
/// streams reset before they were served (the "rapid reset" attack).
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Our own clock answers a slow head with 408 (hyper would just close).
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(limits.max_header_bytes.max(8192) as u32)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Serves HTTP/1.1 and HTTP/2 on `listener`, opened as `transport` says, with
/// `handler` until `shutdown`, then drains.
pub async fn serve_with<H: Handler>(
    listener: TcpListener,
    transport: Transport,
    limits: Limits,
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let builder = Arc::new(http_builder(&limits));
    let transport = Arc::new(transport);
    let mut acceptor = Acceptor::new(listener, limits.budget.clone(), shutdown.clone());
    let limits = Arc::new(limits);
    while let Some((stream, peer, slot)) = acceptor.next().await {
        let conn = Conn {
            handler: handler.clone(),
            builder: builder.clone(),
            limits: limits.clone(),
            shutdown: shutdown.clone(),
        };
        conn.spawn(&tracker, stream, peer, &transport, &metrics, slot);
    }
    tracker.close();
    if tokio::time::timeout(limits.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} connections still open after the {:?} drain; closing them",
            tracker.len(),
            limits.drain_timeout
        );
    }
    Ok(())
}

/// A listener's connections, one at a time, within a [`Budget`] (shared with the
/// node's other listeners) and its cap per client address.
///
/// A connection from an address over its cap is closed as soon as it is accepted.
/// After `shutdown` it still hands out the connections the kernel has already
/// completed but nobody accepted (closing the listener would reset them), then closes
/// the listener and ends. Every frontend (HTTP, HTTPS, the TLS relay) accepts
/// through it.
pub struct Acceptor {
    /// `None` once closed.
    listener: Option<TcpListener>,
    budget: Arc<Budget>,
    shutdown: Shutdown,
    draining: bool,
}

/// `accept` failures (out of descriptors, say): one line a second at most.
static ACCEPT_FAILED: LogEvery = LogEvery::new();
/// Connections closed for their address's cap: one line a second at most.
static OVER_CAP: LogEvery = LogEvery::new();

impl Acceptor {
    /// Accepts from `listener` within `budget`.
    pub fn new(listener: TcpListener, budget: Arc<Budget>, shutdown: Shutdown) -> Acceptor {
        Acceptor {
            listener: Some(listener),
            budget,
            shutdown,
            draining: false,
        }
    }

    /// The next connection and its place in the budget; `None` when the listener is
    /// closed.
    pub async fn next(&mut self) -> Option<(TcpStream, SocketAddr, Slot)> {
        let listener = self.listener.as_ref()?;
        let mut room = None;
        while !self.draining {
            let permit = match room.take() {
                Some(permit) => permit,
                None => tokio::select! {
                    permit = self.budget.room() => permit,
                    _ = self.shutdown.wait() => {
                        self.draining = true;
                        break;
                    }
                },
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => match self.budget.admit(permit, peer.ip()) {
                        Ok(slot) => return Some((stream, peer, slot)),
                        Err(permit) => {
                            room = Some(permit);
                            refuse(stream, peer, &self.budget);
                        }
                    },
                    Err(e) => {
                        room = Some(permit);
                        // Out of descriptors or similar: back off instead of spinning,
                        // and say so once a second, not once a try.
                        if let Some(n) = ACCEPT_FAILED.hit() {
                            tracing::warn!("accept failed {n} time(s) in the last second: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = self.shutdown.wait() => self.draining = true,
            }
        }
        while let Some(Ok((stream, peer))) =
            futures_util::FutureExt::now_or_never(listener.accept())
        {
            let permit = self.budget.room().await;
            match self.budget.admit(permit, peer.ip()) {
                Ok(slot) => return Some((stream, peer, slot)),
                Err(_) => refuse(stream, peer, &self.budget),
            }
        }
        self.listener = None;
        None
    }
}

/// Closes a connection whose address already holds its share of the budget.
fn refuse(stream: TcpStream, peer: SocketAddr, budget: &Budget) {
    drop(stream);
    if let Some(n) = OVER_CAP.hit() {
        tracing::warn!(
            client = %peer.ip(),
            "closed {n} connection(s) in the last second from addresses over the \
             per-client cap ({} refused in all)",
            budget.refused()
        );
    }
}

/// What one connection's task needs.
struct Conn<H> {
    handler: Arc<H>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    shutdown: Shutdown,
}

/// How long a connection between requests (or accepted just before shutdown) has,
/// once the node drains, to send its next request: it is served, with `Connection:
/// close`, not closed under a client that may be sending it (a busy client sends
/// within milliseconds; an idle one is closed after this).
const REQUEST_GRACE: Duration = Duration::from_secs(1);

/// The wait for a first request (and between requests) on a connection accepted
/// while the node's budget was nearly spent: long enough for a real client on a slow
/// network, short enough that idle sockets cannot keep the last places.
const PRESSED_WAIT: Duration = Duration::from_secs(3);

impl<H: Handler> Conn<H> {
    /// Serves the connection on a task of `tracker`.
    fn spawn(
        self,
        tracker: &TaskTracker,
        stream: TcpStream,
        peer: SocketAddr,
        transport: &Arc<Transport>,
        metrics: &Arc<Metrics>,
        slot: Slot,
    ) {
        let _ = stream.set_nodelay(true);
        let transport = transport.clone();
        let metrics = metrics.clone();
        metrics.connection_opened();
        tracker.spawn(async move {
            let pressed = slot.pressed();
            // A WebSocket tunnel outlives the connection's HTTP: it holds the
            // connection (its budget place, the drain's wait) until it ends.
            let (hold, held) = crate::tunnel::Hold::new(metrics.clone());
            self.open(stream, peer, &transport, pressed, hold).await;
            held.released().await;
            metrics.connection_closed();
            drop(slot);
        });
    }

    /// The PROXY header and the TLS handshake (both within the head timeout), then
    /// HTTP. `pressed`: the node's budget is nearly spent, so the client gets
    /// [`PRESSED_WAIT`] at most for its first request.
    async fn open(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        transport: &Transport,
        pressed: bool,
        hold: Hold,
    ) {
        let head = if pressed {
            self.limits.header_timeout.min(PRESSED_WAIT)
        } else {
            self.limits.header_timeout
        };
        let (peer, stream) = if transport.proxy_from.is_empty() {
            (peer, Replay::new(Vec::new(), stream))
        } else {
            let accepted = tokio::time::timeout(
                head,
                crate::proxy_protocol::accept(stream, peer, &transport.proxy_from),
            )
            .await;
            match accepted {
                Ok(Ok(opened)) => opened,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "connection refused: {e}");
                    return;
                }
                Err(_) => return,
            }
        };
        // Each kind of connection's HTTP future is boxed on its own: inline, the task
        // of every connection, plain or not and idle or not, was as large as the
        // largest (TLS) one. Measured on the load balancer, 5,000 idle kept-alive
        // clients: 30.2 KiB each before, 24.6 KiB after.
        let Some(tls) = &transport.tls else {
            return Box::pin(self.http(stream, peer, false, false, head, hold)).await;
        };
        match tokio::time::timeout(head, tls.accept(stream)).await {
            Ok(Ok(stream)) => {
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                Box::pin(self.http(stream, peer, true, h2, head, hold)).await
            }
            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
            Err(_) => tracing::debug!(%peer, "TLS handshake not finished within {head:?}"),
        }
    }

    /// Serves HTTP on `io`; `hold` goes into every request, for a tunnel to keep.
    async fn http<IO>(
        self,
        io: IO,
        peer: SocketAddr,
        secure: bool,
        h2: bool,
        head: Duration,
        hold: Hold,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let idle = if head < self.limits.header_timeout {
            self.limits.keepalive_timeout.min(head)
        } else {
            self.limits.keepalive_timeout
        };
        let clock = Clock::new(head, idle, h2);
        // Lent to hyper, so that a connection closed with a request body still coming
        // can linger (see `linger`).
        let (io, returned) = Lent::new(io);
        let io = TokioIo::new(Watched::new(io, clock.clone()));
        let linger = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let linger_tx = linger.clone();
        let info = ConnInfo { secure };
        let handler = self.handler.clone();
        let max_body = self.limits.max_body_bytes;
        // Requests started and answers finished: the drain below closes a connection
        // only once it has been quiet for a while (see `REQUEST_GRACE`).
        let activity = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let activity_tx = activity.clone();
        let drain_clock = clock.clone();
        let draining = self.shutdown.clone();
        let abandoned = Arc::new(Abandoned::default());
        let abandoned_tx = abandoned.clone();
        let service = service_fn(move |mut req: Request<Incoming>| {
            let handler = handler.clone();
            let clock = clock.clone();
            let abandoned = abandoned_tx.clone();
            let linger = linger_tx.clone();
            let hold = hold.clone();
            let activity = activity_tx.clone();
            activity.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let draining = draining.clone();
            async move {
                clock.request_started();
                let mut pending = Pending {
                    clock: clock.clone(),
                    abandoned,
                    answered: false,
                };
                req.extensions_mut().insert(info);
                req.extensions_mut().insert(hold);
                let http1 = req.version() < Version::HTTP_2;
                let mut resp = match too_large(&req, max_body) {
                    Some(refusal) => refusal,
                    None => handler.handle(req, peer).await,
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
                    linger.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                // Once the 101 is out the bytes are the tunnel's, not HTTP heads.
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    clock.tunnel();
                }
                pending.answered = true;
                drop(pending);
                let done = move |_| {
                    clock.response_done();
                    activity.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                };
                Ok::<_, Infallible>(resp.map(|body| crate::finish::on_finish(body, done)))
            }
        });
        {
            // With upgrades: hyper hands the socket to a WebSocket after its 101.
            let conn = self.builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = abandoned.too_many.notified() => {
                    tracing::warn!(
                        %peer,
                        "closing a connection whose client cancelled most of its requests \
                         before they were answered (an HTTP/2 rapid-reset attack?)"
                    );
                }
                _ = self.shutdown.wait() => {
                    // HTTP/1: the next answer says `Connection: close` (above) and
                    // hyper closes after it; closing between requests instead could
                    // meet a request already on the wire. A connection quiet for
                    // `REQUEST_GRACE` is closed. HTTP/2 has GOAWAY, which tells the
                    // client which streams were not taken, so it retries those.
                    if !h2 {
                        loop {
                            let before = activity.load(std::sync::atomic::Ordering::Relaxed);
                            tokio::select! {
                                _ = conn.as_mut() => return,
                                _ = tokio::time::sleep(REQUEST_GRACE) => {}
                            }
                            let quiet = activity.load(std::sync::atomic::Ordering::Relaxed) == before;
                            if quiet && !drain_clock.busy() {
                                break;
                            }
                        }
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
        // hyper has dropped the socket and with it given it back.
        if linger.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(Ok(io)) = tokio::time::timeout(Duration::from_millis(100), returned).await {
                crate::linger::close(io).await;
            }
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
    answered: std::sync::atomic::AtomicU64,
    cancelled: std::sync::atomic::AtomicU64,
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
    abandoned: Arc<Abandoned>,
    answered: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.answered {
            self.abandoned.answered.fetch_add(1, Relaxed);
            return;
        }
        // The response will never be sent, so the clock must not wait for it.
        self.clock.response_done();
        let cancelled = self.abandoned.cancelled.fetch_add(1, Relaxed) + 1;
        if cancelled > CANCELLED_ALLOWANCE && cancelled > self.abandoned.answered.load(Relaxed) {
            self.abandoned.too_many.notify_one();
        }
    }
}

/// 413 for a request that announces a body over the limit, before anything reads it
/// (with `Connection: close` on HTTP/1, which makes the connection linger). Public for
/// a handler whose limit a reload can change: it checks with the limit of the moment.
pub fn too_large(req: &Request<Incoming>, max: Option<u64>) -> Option<Response<Body>> {
    let max = max?;
    let announced: u64 = req
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if announced <= max {
        return None;
    }
    let mut resp = Response::new(crate::full(format!(
        "request body too large: {announced} bytes, at most {max} accepted\n"
    )));
    *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if req.version() < Version::HTTP_2 {
        // The body is not read, so the connection cannot carry another request.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Some(resp)
}
