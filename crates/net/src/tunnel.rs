//! WebSockets through a proxy hop: which requests may open a tunnel, the relay of
//! bytes both ways with its own idle timeout, and what keeps a tunnel counted.
//!
//! Only `GET` over HTTP/1.1 with `Upgrade: websocket` and `upgrade` in `Connection`
//! passes an upgrade on (RFC 6455 §4.1); any other `Upgrade` (`h2c`, a protocol
//! nobody here speaks) is stripped as the hop-by-hop header it is, so a client cannot
//! turn a hop into a raw pipe to a server behind it. HTTP/2's extended CONNECT is not
//! served: browsers open WebSockets over HTTP/1.1 unless the server offers it.
//!
//! A tunnel outlives the HTTP exchange that opened it, so the accept loop puts a
//! [`Hold`] in every request: whoever carries a tunnel keeps it, and the connection
//! then keeps its place in the node's budget and in the drain until the tunnel ends
//! (an upgrade or a shutdown waits `drain_timeout` for open WebSockets).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::Metrics;

/// Whether `headers` ask to switch to the WebSocket protocol: one `Upgrade` line
/// naming `websocket` alone (any case), and `upgrade` among the `Connection` options
/// (browsers send `keep-alive, Upgrade`).
pub fn asks_websocket(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(UPGRADE).iter();
    let (Some(upgrade), None) = (upgrades.next(), upgrades.next()) else {
        return false;
    };
    let websocket = upgrade
        .to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    websocket && crate::headers::connection_has(headers, "upgrade")
}

/// Whether a request may open a WebSocket tunnel through this hop: `GET` over
/// HTTP/1.1 asking for it as [`asks_websocket`] says.
pub fn is_websocket_request(method: &Method, version: Version, headers: &HeaderMap) -> bool {
    method == Method::GET && version == Version::HTTP_11 && asks_websocket(headers)
}

/// Sets the two headers an upgrade needs on a hop, after the hop-by-hop headers were
/// stripped: exactly `Connection: upgrade` and `Upgrade: websocket`, nothing the
/// client added to either.
pub fn set_upgrade_headers(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// Put by the accept loop in every request's extensions. Kept by a tunnel for as
/// long as it lives: the connection's task then waits for it before it gives the
/// connection's place in the budget back, and a drain waits for it too.
///
/// A count and a `Notify` behind one `Arc`: every connection has one, so it is kept
/// small (a channel, which did the same job, cost half a KiB per connection).
#[derive(Debug)]
pub struct Hold(Arc<Holds>);

#[derive(Debug)]
struct Holds {
    /// The node's counters: open tunnels are a gauge there.
    metrics: Arc<Metrics>,
    /// [`Hold`]s alive.
    count: AtomicUsize,
    /// Told when the last [`Hold`] goes.
    released: Notify,
}

/// The accept loop's side of its connection's [`Hold`]s.
pub struct Held(Arc<Holds>);

impl Hold {
    /// A hold for one connection of a node counted in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> (Hold, Held) {
        let holds = Arc::new(Holds {
            metrics,
            count: AtomicUsize::new(1),
            released: Notify::new(),
        });
        (Hold(holds.clone()), Held(holds))
    }

    /// The node's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }
}

impl Holds {
    fn hold(self: &Arc<Self>) -> Hold {
        self.count.fetch_add(1, Ordering::Relaxed);
        Hold(self.clone())
    }
}

impl Clone for Hold {
    fn clone(&self) -> Hold {
        self.0.hold()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Stored as a permit if nobody waits yet.
            self.0.released.notify_one();
        }
    }
}

impl Held {
    /// One more hold on the connection, for its next round of HTTP.
    pub fn hold(&self) -> Hold {
        self.0.hold()
    }

    /// Returns once every [`Hold`] of the connection is dropped: at once for a
    /// connection that opened no tunnel, when the tunnel ends otherwise. With the
    /// node's counters, which the connection's task would otherwise keep aside for
    /// the whole wait.
    pub async fn released(self) -> Arc<Metrics> {
        while self.0.count.load(Ordering::Acquire) > 0 {
            self.0.released.notified().await;
        }
        self.0.metrics.clone()
    }
}

/// When a tunnel ended, and how many bytes it carried to the client: in the 101
/// response's extensions, for a role that logs a WebSocket when it closes (as nginx
/// does) rather than when it opens. (Extensions must be `Clone`; only the first
/// taker gets the end.)
#[derive(Debug, Clone)]
pub struct TunnelEnd(Arc<Mutex<Option<oneshot::Receiver<u64>>>>);

impl TunnelEnd {
    /// A pair: the sender goes to the tunnel, this to the response.
    pub fn new() -> (oneshot::Sender<u64>, TunnelEnd) {
        let (tx, rx) = oneshot::channel();
        (tx, TunnelEnd(Arc::new(Mutex::new(Some(rx)))))
    }

    /// The end of the tunnel `resp` opens, if it opens one.
    pub fn of<B>(resp: &mut http::Response<B>) -> Option<TunnelEnd> {
        resp.extensions_mut().remove::<TunnelEnd>()
    }

    /// Runs `done(bytes sent to the client)` when the tunnel has ended (0 if it never
    /// opened). Needs a tokio runtime.
    pub fn then<F: FnOnce(u64) + Send + 'static>(self, done: F) {
        let rx = self.0.lock().ok().and_then(|mut rx| rx.take());
        tokio::spawn(async move {
            let sent = match rx {
                Some(rx) => rx.await.unwrap_or(0),
                None => 0,
            };
            done(sent);
        });
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed (or one failed).
    Closed,
    /// No byte either way for the idle timeout: both sides were closed.
    Idle,
}

/// What a relay carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes from `a` (the client) to `b` (the server).
    pub a_to_b: u64,
    /// Bytes from `b` to `a`.
    pub b_to_a: u64,
    pub ended: Ended,
}

/// Copies bytes both ways between `a` and `b` until both are closed, one fails, or
/// nothing moved either way for `idle`; then drops (closes) both.
pub async fn relay<A, B>(a: A, b: B, idle: Duration) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Active::new(a, start, last.clone());
    let mut b = Active::new(b, start, last.clone());
    let ended = {
        let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
        tokio::pin!(copy);
        loop {
            let deadline = start + Duration::from_millis(last.load(Relaxed)) + idle;
            tokio::select! {
                copied = &mut copy => {
                    if let Err(e) = copied {
                        tracing::debug!("tunnel ended: {e}");
                    }
                    break Ended::Closed;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let since = start + Duration::from_millis(last.load(Relaxed));
                    if since + idle <= Instant::now() {
                        break Ended::Idle;
                    }
                }
            }
        }
    };
    Relayed {
        a_to_b: a.read,
        b_to_a: b.read,
        ended,
    }
}

/// One side of a relay: counts what is read from it and notes when bytes last moved.
struct Active<T> {
    inner: T,
    start: Instant,
    /// Milliseconds after `start` when a byte last moved, either way.
    last: Arc<AtomicU64>,
    read: u64,
}

impl<T> Active<T> {
    fn new(inner: T, start: Instant, last: Arc<AtomicU64>) -> Active<T> {
        Active {
            inner,
            start,
            last,
            read: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let got = (buf.filled().len() - before) as u64;
        if got > 0 {
            self.read += got;
            let now = self.start.elapsed().as_millis() as u64;
            self.last.fetch_max(now, Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn only_a_websocket_upgrade_on_get_over_http11_is_one() {
        let ws = headers(&[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ]);
        assert!(is_websocket_request(&Method::GET, Version::HTTP_11, &ws));
        assert!(!is_websocket_request(&Method::POST, Version::HTTP_11, &ws));
        assert!(!is_websocket_request(&Method::GET, Version::HTTP_10, &ws));
        assert!(!is_websocket_request(&Method::GET, Version::HTTP_2, &ws));
        for not in [
            headers(&[("upgrade", "h2c"), ("connection", "upgrade")]),
            headers(&[("upgrade", "websocket, h2c"), ("connection", "upgrade")]),
            headers(&[("upgrade", "websocket")]),
            headers(&[("upgrade", "websocket"), ("connection", "keep-alive")]),
            headers(&[
                ("upgrade", "websocket"),
                ("upgrade", "h2c"),
                ("connection", "upgrade"),
            ]),
            headers(&[("connection", "upgrade")]),
        ] {
            assert!(!asks_websocket(&not), "{not:?}");
        }
    }

    #[tokio::test]
    async fn a_relay_counts_both_ways_and_closes_when_idle() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, a) = tokio::io::duplex(1024);
        let (b, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(a, b, Duration::from_millis(300)));
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong!").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        let quiet = std::time::Instant::now();
        let relayed = relay.await.unwrap();
        assert!(
            quiet.elapsed() >= Duration::from_millis(250),
            "closed early"
        );
        assert_eq!(
            relayed,
            Relayed {
                a_to_b: 4,
                b_to_a: 5,
                ended: Ended::Idle
            }
        );
        // Both ends read as closed.
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    }
}
