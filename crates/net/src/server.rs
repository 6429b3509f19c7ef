//! The accept loop every role uses: a connection cap, HTTP/1.1 with keep-alive, a
//! limit on the request head (size and time), and graceful drain on shutdown.
//!
//! Malformed request lines and oversize heads are answered by hyper's parser itself
//! (400, 431, 414) before a handler ever runs, so no role can forget them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::{Body, Metrics, Shutdown};

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
    /// Connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send a request head, and to start the next one on a
    /// kept-alive connection.
    pub header_timeout: Duration,
    /// Largest request head, in bytes (at least 8 KiB); larger heads get 431.
    pub max_header_bytes: usize,
    /// How long open connections may finish their work after shutdown is asked.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            drain_timeout: Duration::from_secs(10),
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

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown`, then drains.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    limits: Limits,
    handler: Arc<H>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let builder = Arc::new(builder);

    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            _ = shutdown.wait() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        spawn_connection(
            &tracker, &builder, stream, peer, &handler, &metrics, &shutdown, permit,
        );
    }
    // Connections the kernel completed but nobody accepted yet would be reset when
    // the listener closes: accept them now and answer their first request. (With
    // SO_REUSEPORT and net.ipv4.tcp_migrate_req=1 the kernel hands the rest to the
    // peer listener.)
    while let Some(Ok((stream, peer))) = futures_util::FutureExt::now_or_never(listener.accept()) {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        spawn_connection(
            &tracker, &builder, stream, peer, &handler, &metrics, &shutdown, permit,
        );
    }
    drop(listener);
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

/// How long a connection accepted just before shutdown may take to send its first
/// request: it is served, not closed under the client.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

#[allow(clippy::too_many_arguments)]
fn spawn_connection<H: Handler>(
    tracker: &TaskTracker,
    builder: &Arc<hyper::server::conn::http1::Builder>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    handler: &Arc<H>,
    metrics: &Arc<Metrics>,
    shutdown: &Shutdown,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let handler = handler.clone();
    let metrics = metrics.clone();
    let builder = builder.clone();
    let shutdown = shutdown.clone();
    metrics.connection_opened();
    tracker.spawn(async move {
        // Set on the first request: a graceful shutdown closes an idle connection at
        // once, which for a connection whose request is still on the wire means a
        // failed request.
        let first = Arc::new(tokio::sync::Notify::new());
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let service = {
            let (first, started) = (first.clone(), started.clone());
            service_fn(move |req| {
                if !started.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    first.notify_one();
                }
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(req, peer).await) }
            })
        };
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = shutdown.wait() => {
                if !started.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::select! {
                        _ = conn.as_mut() => {
                            metrics.connection_closed();
                            return;
                        }
                        _ = first.notified() => {}
                        _ = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
                    }
                }
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
        metrics.connection_closed();
        drop(permit);
    });
}
