//! The accept loop every role uses: a connection cap, HTTP/1.1 and HTTP/2 (by ALPN
//! over TLS, by the preface in clear), optional TLS and PROXY protocol, limits on the
//! request head (size and time, with a real 408), on the body (413) and on HTTP/2
//! abuse, and graceful drain on shutdown.
//!
//! Malformed request lines and oversize heads are answered by hyper's parser itself
//! (400, 431, 414) before a handler ever runs, so no role can forget them.
//!
//! Every listener is served by one thread per core ([`on_serving_threads`]), each
//! with its own runtime and its fair share of the connections (the admin listener
//! alone is served by the node's own runtime); one connection's life (and the
//! parking of an idle one between requests) is in `server/connection.rs`, the
//! deadlines of its waits in `server/idle.rs`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

mod connection;
mod idle;

use connection::{Conn, Protocols, REQUEST_GRACE};
use idle::Waiting;

use crate::budget::{Budget, LogEvery, Slot};
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

    /// Whether this handler's answers send files by `sendfile` (see
    /// [`crate::sendfile`]): then each request on a plain HTTP/1 connection carries
    /// the connection's [`crate::sendfile::Outbox`] in its extensions. A role that
    /// sends no files keeps its connections without one.
    fn sends_files(&self) -> bool {
        false
    }
}

/// Limits on what clients may do to a listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once, shared by every listener given a clone of these
    /// limits, and per client address; further ones wait in the kernel's backlog.
    pub budget: Arc<Budget>,
    /// Time a client has to send a request head, and to start the next one on a
    /// kept-alive connection; also how long a write may wait for the client to take
    /// a byte of an answer (nginx's `send_timeout`).
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
fn protocols(limits: &Limits) -> Protocols {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // Our own clock answers a slow head with 408 (hyper would just close).
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        // Queued writes: a body's frames reach the socket uncopied, which files
        // sent by `sendfile` depend on (see `crate::sendfile`).
        .writev(true)
        .keep_alive(true);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    // The same HTTP/1 settings, for TLS connections.
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    auto.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(limits.max_header_bytes.max(8192) as u32)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    Protocols { auto, http1 }
}

/// Serves HTTP/1.1 and HTTP/2 on `listener`, opened as `transport` says, with
/// `handler` until `shutdown`, then drains; on every serving thread (see
/// [`on_serving_threads`]).
pub async fn serve_with<H: Handler>(
    listener: TcpListener,
    transport: Transport,
    limits: Limits,
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    on_serving_threads(listener, move |listener| {
        serve_here(
            listener,
            transport.clone(),
            limits.clone(),
            handler.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
    })
    .await
}

/// Runs `serve` on a clone of `listener` on each of [`serving_threads`] threads,
/// each with a runtime of its own, and returns once every one has.
///
/// Each thread accepts from the shared socket and serves the connections it
/// accepted from start to end, as nginx's workers and HAProxy's threads do: a
/// connection's reads, its handler and its writes run on one thread, with no task
/// moved or woken across threads on the way (with the kept-alive upstream
/// connections kept per thread too, `keepalive`, a load balancer's request and its
/// upstream exchange stay on one thread).
pub async fn on_serving_threads<F, Fut>(listener: TcpListener, serve: F) -> std::io::Result<()>
where
    F: Fn(TcpListener) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = std::io::Result<()>>,
{
    let threads = serving_threads();
    if threads <= 1 {
        return serve(listener).await;
    }
    let listener = listener.into_std()?;
    let balance = Balance::new(threads);
    let mut ends = Vec::with_capacity(threads);
    for i in 0..threads {
        let listener = listener.try_clone()?;
        let serve = serve.clone();
        let balance = balance.clone();
        let (done, end) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("serve-{i}"))
            .spawn(move || {
                THREAD_INDEX.set(i);
                BALANCE.set(Some(balance));
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        runtime
                            .block_on(async move { serve(TcpListener::from_std(listener)?).await })
                    });
                let _ = done.send(served);
            })?;
        ends.push(end);
    }
    drop(listener);
    let mut result = Ok(());
    for end in ends {
        match end.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(std::io::Error::other("a serving thread panicked")),
        }
    }
    result
}

/// How many threads serve each listener: one per core.
pub fn serving_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

thread_local! {
    /// Which of a listener's serving threads this is (0 on any other thread).
    static THREAD_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The connection counts of this thread's listener's serving threads.
    static BALANCE: std::cell::RefCell<Option<Arc<Balance>>> = const { std::cell::RefCell::new(None) };
}

/// Which serving thread this is: per-thread state (such as kept-alive upstream
/// connections) is indexed by it.
pub fn thread_index() -> usize {
    THREAD_INDEX.get()
}

/// One thread's share of a listener: its accept loop and its connections, until
/// `shutdown`, then the drain. On its own, a listener served by the caller's runtime
/// alone: the admin listener's few connections need no threads of their own.
pub(crate) async fn serve_here<H: Handler>(
    listener: TcpListener,
    transport: Transport,
    limits: Limits,
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let protocols = Arc::new(protocols(&limits));
    let transport = Arc::new(transport);
    // The accept loop and the connections wait on this thread's own copy of the
    // signal (see `Shutdown::relay`).
    let (here, relay) = shutdown.relay();
    let mut acceptor = Acceptor::new(listener, limits.budget.clone(), here.clone());
    let limits = Arc::new(limits);
    let conn = Arc::new(Conn {
        handler: handler.clone(),
        protocols: protocols.clone(),
        limits: limits.clone(),
        shutdown: here.clone(),
        waiting: Waiting::new(here, REQUEST_GRACE),
    });
    // The signal's relay and the waits' sweeper last as long as the connections: on
    // the caller's runtime (the admin listener's) they may outlive this function
    // after a drain timeout.
    let closing = Closing(tracker.clone());
    tokio::spawn({
        let (conn, tracker) = (conn.clone(), tracker.clone());
        async move {
            let beside = async {
                tokio::join!(relay, conn.waiting.sweep());
            };
            tokio::select! {
                () = beside => {}
                () = tracker.wait() => {}
            }
        }
    });
    while let Some((stream, peer, place)) = acceptor.next().await {
        Conn::spawn(&conn, &tracker, stream, peer, &transport, &metrics, place);
    }
    drop(closing);
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

/// Closes a listener's task tracker when dropped: once closed and empty, its
/// connections' sweeper ends too, even if the accept loop was dropped midway.
struct Closing(TaskTracker);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.close();
    }
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
    /// This serving thread's share of the listener, if several serve it.
    share: Option<(Arc<Balance>, usize)>,
}

/// How many connections each serving thread of a listener holds. The threads all
/// wait on the one socket and the first awake takes what is there, so a burst of
/// connections (a browser's, a benchmark's) could all land on one thread and stay
/// there while the other idles; a thread holding more than its share lets the others
/// take the next connection first (see [`Acceptor::next`]).
pub struct Balance {
    held: Box<[std::sync::atomic::AtomicUsize]>,
}

/// Connections a thread may hold over the least loaded thread before it lets the
/// others accept first.
const BALANCE_SLACK: usize = 1;

/// The longest a thread over its share waits for another to take a connection
/// before it takes it itself (the others may all be busy).
const BALANCE_WAIT: Duration = Duration::from_millis(5);

impl Balance {
    fn new(threads: usize) -> Arc<Balance> {
        Arc::new(Balance {
            held: (0..threads).map(|_| Default::default()).collect(),
        })
    }

    /// Whether thread `me` holds no more than its share.
    fn fair(&self, me: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let least = self.held.iter().map(|h| h.load(Relaxed)).min().unwrap_or(0);
        self.held[me].load(Relaxed) <= least + BALANCE_SLACK
    }
}

/// One connection in its serving thread's count, for as long as it lives.
pub struct Share(Arc<Balance>, usize);

impl Share {
    fn new(balance: &Arc<Balance>, me: usize) -> Share {
        balance.held[me].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Share(balance.clone(), me)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.0.held[self.1].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// An accepted connection's places: in the node's budget, and in its serving
/// thread's count. Dropping it frees both.
pub struct Place {
    slot: Slot,
    _share: Option<Share>,
}

impl Place {
    /// Whether the budget was nearly spent when this connection came.
    pub fn pressed(&self) -> bool {
        self.slot.pressed()
    }
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
            share: BALANCE
                .with_borrow(|b| b.clone())
                .map(|b| (b, thread_index())),
        }
    }

    /// This connection's places, with `slot` its place in the budget.
    fn place(&self, slot: Slot) -> Place {
        Place {
            slot,
            _share: self.share.as_ref().map(|(b, me)| Share::new(b, *me)),
        }
    }

    /// Waits (at most [`BALANCE_WAIT`]) while this thread holds more connections
    /// than its share, so that another serving thread takes the next one.
    async fn take_turn(&self) {
        let Some((balance, me)) = &self.share else {
            return;
        };
        let until = tokio::time::Instant::now() + BALANCE_WAIT;
        while !balance.fair(*me) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The next connection and its places; `None` when the listener is closed.
    pub async fn next(&mut self) -> Option<(TcpStream, SocketAddr, Place)> {
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
            self.take_turn().await;
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => match self.budget.admit(permit, peer.ip()) {
                        Ok(slot) => return Some((stream, peer, self.place(slot))),
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
                Ok(slot) => return Some((stream, peer, self.place(slot))),
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
