//! Keep-alive connections to one upstream server: bare sockets for the requests
//! [`crate::wire`] sends itself (no body, no upgrade: most of them), and hyper's
//! connection API for the rest.
//!
//! Why not hyper-util's pooled client: a proxy needs the connection *before* it
//! gives up the request. Getting a connection is where a server that is down shows
//! itself (refused, timed out), and with the connection first, the request can go
//! to another server untouched: no clone of its headers kept on the side for a retry
//! that rarely comes. The request line is sent as the client gave it (origin form),
//! so no URI is built and parsed per request; the pool is a short list per server
//! behind a lock held for a push or a pop, with no task spawned per request to put a
//! connection back (the response body puts it back when it ends).
//!
//! A kept-alive connection the server has just closed is found out when the request
//! is offered to it: [`SendRequest::try_send_request`] hands back a request that was
//! not written, and the caller tries a fresh connection to the same server, which is
//! safe for any method since the server saw nothing.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::per_thread::PerThread;
use crate::wire::{Wire, WireBody};
use crate::{Body, BoxError};

/// Most idle connections kept per server: enough for a burst of 64+ clients each
/// holding one while a request is in flight, bounded so a spike does not keep
/// descriptors for ever.
const MAX_IDLE: usize = 256;

/// How often a thread's idle sockets are looked at for ones the server closed (each
/// put back checks whether it is time). Nothing reads an idle [`Wire`], so a socket
/// the server closed would otherwise keep its descriptor, in `CLOSE_WAIT`, until a
/// request finds it or it expires; hyper's connection task closes its own at once.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How long an idle connection is kept. Below the keep-alive timeout of our own
/// servers (the default `timeouts.keepalive` is longer), so the pool rarely offers
/// a connection the server is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The kept-alive connections to one server.
#[derive(Debug)]
pub struct Connections {
    addr: SocketAddr,
    /// One pair of lists per serving thread (see `server::serve_with`): a thread
    /// takes and gives back only its own connections, whose sockets (and hyper's
    /// tasks) are on its runtime, so a request and its upstream exchange stay on one
    /// thread. Most recently used last: a warm connection is taken first, and the
    /// oldest age out at the front.
    idle: PerThread<Mutex<Lists>>,
}

#[derive(Debug, Default)]
struct Lists {
    hyper: Vec<Idle<SendRequest<Body>>>,
    wire: Vec<Idle<Wire>>,
    /// When the idle sockets were last looked at ([`SWEEP_EVERY`]).
    swept: Option<Instant>,
}

#[derive(Debug)]
struct Idle<C> {
    conn: C,
    since: Instant,
}

/// Drops the connections idle for longer than [`IDLE_TIMEOUT`] at `now`: the
/// oldest, at the front, in one go.
fn drop_expired<C>(list: &mut Vec<Idle<C>>, now: Instant) {
    let expired = list
        .iter()
        .take_while(|i| now.duration_since(i.since) > IDLE_TIMEOUT)
        .count();
    list.drain(..expired);
}

/// The most recently used connection of `list` that `open` finds open; drops the
/// expired ones (at the front, the oldest) and the closed ones on the way.
fn take_open<C>(list: &mut Vec<Idle<C>>, open: impl Fn(&C) -> bool) -> Option<C> {
    drop_expired(list, Instant::now());
    while let Some(Idle { conn, .. }) = list.pop() {
        if open(&conn) {
            return Some(conn);
        }
    }
    None
}

/// Puts `conn` at the back of `list` as idle since `now`, making room by dropping
/// the oldest, and drops the expired ones (so a server's closed sockets wait at most
/// [`IDLE_TIMEOUT`] for a take to find them).
fn keep<C>(list: &mut Vec<Idle<C>>, conn: C, now: Instant) {
    drop_expired(list, now);
    if list.len() >= MAX_IDLE {
        // The oldest goes: it is the least likely to be wanted soon.
        list.remove(0);
    }
    list.push(Idle { conn, since: now });
}

/// Why a connection could not be had.
#[derive(Debug)]
pub enum ConnectError {
    /// The operating system refused or failed the connect (refused, unreachable,
    /// out of descriptors...).
    Io(std::io::Error),
    /// No answer within the connect timeout.
    Timeout,
    /// The HTTP/1 handshake over a fresh socket failed.
    Handshake(hyper::Error),
    /// A fresh connection was closed before the request could go out.
    Closed,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connect: {e}"),
            ConnectError::Timeout => f.write_str("connect: timed out"),
            ConnectError::Handshake(e) => write!(f, "connect: {e}"),
            ConnectError::Closed => f.write_str("connection closed by the server at once"),
        }
    }
}

/// A connection lent to one request; [`Connections::send`] uses it.
pub struct Conn {
    sender: SendRequest<Body>,
    /// Whether it came from the idle list (a reused connection may have been closed
    /// by the server meanwhile; a fresh one may not).
    pub reused: bool,
}

/// What became of a request offered to a connection.
pub enum Sent {
    /// The server answered; its body gives the connection back when it ends.
    Answer(Response<PooledBody>),
    /// The connection was closed before the request went out: the request is
    /// returned untouched, to be sent on another connection.
    NotSent(Request<Body>),
    /// The exchange failed after the request (or part of it) was written.
    Failed(hyper::Error),
}

impl Connections {
    /// No connections yet to `addr`.
    pub fn new(addr: SocketAddr) -> Connections {
        Connections {
            addr,
            idle: PerThread::new(Mutex::default),
        }
    }

    /// An open connection: the most recently used idle one still open, or a new one
    /// (given `connect_timeout`).
    pub async fn get(&self, connect_timeout: Duration) -> Result<Conn, ConnectError> {
        if let Some(sender) = self.take_idle() {
            return Ok(Conn {
                sender,
                reused: true,
            });
        }
        self.connect(connect_timeout).await
    }

    /// A new connection, never one from the idle list.
    pub async fn connect(&self, connect_timeout: Duration) -> Result<Conn, ConnectError> {
        let stream = self.connect_tcp(connect_timeout).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            // Upgrades, for WebSockets; the error (a server that hung up) is the
            // request's to report, where the exchange failed.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(Conn {
            sender,
            reused: false,
        })
    }

    /// A socket to the server, connected within `connect_timeout`.
    async fn connect_tcp(&self, connect_timeout: Duration) -> Result<TcpStream, ConnectError> {
        let stream =
            match tokio::time::timeout(connect_timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(ConnectError::Io(e)),
                Err(_) => return Err(ConnectError::Timeout),
            };
        // Requests and answers are small writes: no waiting for an ACK to batch them.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// The most recently used idle socket for [`crate::wire`] that is open and has
    /// no bytes nobody asked for, as far as the runtime knows ([`Wire::is_closed`]),
    /// or asked of each socket by a peek (`certain`, for a request that may not be
    /// repeated: [`Wire::is_closed_now`]). A server may still close it just as the
    /// request goes out ([`crate::wire::WireError::ClosedEarly`]).
    pub fn take_wire(&self, certain: bool) -> Option<Wire> {
        let closed = if certain {
            Wire::is_closed_now
        } else {
            Wire::is_closed
        };
        take_open(&mut self.mine().wire, |w| !closed(w))
    }

    /// A new socket for [`crate::wire`].
    pub async fn connect_wire(&self, connect_timeout: Duration) -> Result<Wire, ConnectError> {
        Ok(Wire::new(self.connect_tcp(connect_timeout).await?))
    }

    /// Takes a socket back after its answer ended (see [`crate::wire::WireBody`]).
    pub(crate) fn put_back_wire(&self, wire: Wire) {
        let mut lists = self.mine();
        let now = Instant::now();
        if lists
            .swept
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
        {
            // A look at each idle socket, once a second at most: drops the closed ones.
            lists.wire.retain(|idle| !idle.conn.is_closed());
            lists.swept = Some(now);
        }
        keep(&mut lists.wire, wire, now);
    }

    /// Idle sockets this thread keeps for [`crate::wire`].
    #[cfg(test)]
    pub(crate) fn idle_wires(&self) -> usize {
        self.mine().wire.len()
    }

    /// Sends `req` on `conn`. The response's body puts the connection back in this
    /// list when it ends (for a `101`, the connection belongs to the upgrade and is
    /// not put back).
    pub async fn send(self: &Arc<Self>, mut conn: Conn, req: Request<Body>) -> Sent {
        // An HTTP/1 connection takes one request at a time; a kept-alive one is ready
        // at once, or closed.
        if conn.sender.ready().await.is_err() {
            return Sent::NotSent(req);
        }
        match conn.sender.try_send_request(req).await {
            Ok(resp) => {
                let (head, body) = resp.into_parts();
                let home = (head.status != http::StatusCode::SWITCHING_PROTOCOLS)
                    .then(|| (conn.sender, Arc::clone(self)));
                let mut body = HyperBody { inner: body, home };
                if body.inner.is_end_stream() {
                    body.give_back();
                }
                Sent::Answer(Response::from_parts(head, PooledBody::Hyper(body)))
            }
            Err(mut e) => match e.take_message() {
                Some(req) => Sent::NotSent(req),
                None => Sent::Failed(e.into_error()),
            },
        }
    }

    /// The most recently used idle connection that is still open; drops the closed
    /// and the expired ones on the way.
    fn take_idle(&self) -> Option<SendRequest<Body>> {
        take_open(&mut self.mine().hyper, |sender| !sender.is_closed())
    }

    /// This thread's idle lists, locked.
    fn mine(&self) -> std::sync::MutexGuard<'_, Lists> {
        let mine = self.idle.mine();
        // Every holder leaves the lists whole, even one that panics.
        mine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection back after its answer ended.
    fn put_back(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        keep(&mut self.mine().hyper, sender, Instant::now());
    }
}

/// A response body from a pooled connection: when it ends, the connection goes back
/// to its server's idle list; dropped before its end, the connection is closed (it
/// still carries the rest of this answer).
pub enum PooledBody {
    /// Read by hyper's client.
    Hyper(HyperBody),
    /// Read from the socket itself ([`crate::wire`]).
    Wire(WireBody),
}

impl PooledBody {
    /// The response as hyper gave it, for [`hyper::upgrade::on`] (a `101`'s body is
    /// empty, and its connection is never put back). `None` for a [`crate::wire`]
    /// answer, which never carries an upgrade.
    pub fn into_incoming(self) -> Option<Incoming> {
        match self {
            PooledBody::Hyper(body) => Some(body.inner),
            PooledBody::Wire(_) => None,
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            PooledBody::Hyper(body) => body.poll_frame(cx).map_err(Into::into),
            PooledBody::Wire(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PooledBody::Hyper(body) => body.inner.is_end_stream(),
            PooledBody::Wire(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            PooledBody::Hyper(body) => body.inner.size_hint(),
            PooledBody::Wire(body) => body.size_hint(),
        }
    }
}

/// An answer's body read by hyper, and the connection to give back at its end.
pub struct HyperBody {
    inner: Incoming,
    home: Option<(SendRequest<Body>, Arc<Connections>)>,
}

impl HyperBody {
    fn give_back(&mut self) {
        if let Some((sender, home)) = self.home.take() {
            home.put_back(sender);
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.home = None,
            _ => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_reused_after_its_answer_and_a_closed_one_is_not() {
        use http_body_util::BodyExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // A server that answers two requests per connection, then closes it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    for _ in 0..2 {
                        let mut buf = vec![0; 1024];
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = s.read(&mut buf).await.unwrap();
                            if n == 0 {
                                return;
                            }
                            got.extend_from_slice(&buf[..n]);
                        }
                        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .unwrap();
                    }
                });
            }
        });
        let conns = Arc::new(Connections::new(addr));
        let mut reused = Vec::new();
        let mut not_sent = 0;
        for _ in 0..4 {
            let mut req = Request::new(crate::empty());
            req.headers_mut()
                .insert(http::header::HOST, http::HeaderValue::from_static("x"));
            let conn = conns.get(Duration::from_secs(1)).await.unwrap();
            let was_reused = conn.reused;
            let resp = match conns.send(conn, req).await {
                Sent::Answer(resp) => resp,
                Sent::NotSent(req) => {
                    not_sent += 1;
                    let conn = conns.connect(Duration::from_secs(1)).await.unwrap();
                    match conns.send(conn, req).await {
                        Sent::Answer(resp) => resp,
                        _ => panic!("a fresh connection failed"),
                    }
                }
                Sent::Failed(e) => panic!("{e}"),
            };
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            reused.push(was_reused);
            // Let the server's close, after its second answer, reach us.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(reused, [false, true, false, true], "not_sent {not_sent}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
