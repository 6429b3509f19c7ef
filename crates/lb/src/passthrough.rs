//! The `tcp`-mode HTTPS frontend: TLS is passed through untouched to a web server's
//! HTTPS listener (the keys stay on the web servers), preceded by a PROXY protocol v2
//! header so the web server still logs and limits by the real client address.
//!
//! Servers are picked from the same health-checked pool as the HTTP frontend (their
//! plain-HTTP health says whether the node is up); a server that refuses the
//! connection is taken out at once and the next one is tried.
//!
//! Requests on such a connection are invisible here: the load balancer never sees
//! their HTTP, so it can neither log them nor add its `Server-Timing` entry (`lb`);
//! their responses carry the web server's entries only, and `scaleup trace` finds
//! them from the web server's log inwards. End TLS at the load balancer
//! (`tls_mode = "http"`) to see the `lb` hop on HTTPS too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use net::failure::Failure;
use net::server::Acceptor;
use net::{Metrics, Shutdown};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

/// Where and how connections are relayed.
pub(crate) struct Relay {
    /// The pool, each member's HTTPS address (by pool index), the connect timeout
    /// and retries (other servers tried after a failed connect), as the last reload
    /// left them.
    pub live: Arc<arc_swap::ArcSwap<crate::Live>>,
    /// The node's connection budget, shared with its other frontends.
    pub budget: Arc<net::budget::Budget>,
    pub metrics: Arc<Metrics>,
}

/// Relays connections from `listener` until `shutdown`, then gives open ones
/// `drain` to finish; on every serving thread (`net::server::on_serving_threads`).
pub(crate) async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    shutdown: Shutdown,
    drain: Duration,
) -> std::io::Result<()> {
    net::server::on_serving_threads(listener, move |listener| {
        serve_here(listener, relay.clone(), shutdown.clone(), drain)
    })
    .await
}

/// One serving thread's share of [`serve`].
async fn serve_here(
    listener: TcpListener,
    relay: Arc<Relay>,
    shutdown: Shutdown,
    drain: Duration,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let mut acceptor = Acceptor::new(listener, relay.budget.clone(), shutdown);
    while let Some((client, peer, slot)) = acceptor.next().await {
        let relay = relay.clone();
        relay.metrics.connection_opened();
        tracker.spawn(async move {
            if let Err(e) = relay.one(client, peer).await {
                tracing::debug!(%peer, "relay ended: {e}");
            }
            relay.metrics.connection_closed();
            drop(slot);
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(drain, tracker.wait()).await;
    Ok(())
}

impl Relay {
    async fn one(&self, mut client: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
        let _ = client.set_nodelay(true);
        let local = client.local_addr()?;
        let live = self.live.load_full();
        let (pool, retries) = (&live.pool, live.policy_retries());
        let mut tried = Vec::new();
        while tried.len() <= retries as usize {
            let Some((index, _in_flight)) = pool.pick(peer.ip(), &tried) else {
                break;
            };
            tried.push(index);
            let Some(target) = live.targets.get(index).copied().flatten() else {
                continue;
            };
            let connected =
                tokio::time::timeout(pool.timeouts.connect, TcpStream::connect(target)).await;
            let failure = match connected {
                Ok(Ok(server)) => Ok(server),
                Ok(Err(e)) => Err((Failure::of_connect(&e), format!("HTTPS connect: {e}"))),
                Err(_) => Err((Failure::Timeout, "HTTPS connect timed out".to_string())),
            };
            let mut server = match failure {
                Ok(server) => server,
                // This node is out of descriptors: no server is to blame, and
                // another would fail the same way.
                Err((Failure::LocalShortage, reason)) => {
                    tracing::debug!(%peer, "cannot relay an HTTPS connection: {reason}");
                    return Ok(());
                }
                Err((failure, reason)) => {
                    let refused = failure == Failure::Connect { refused: true };
                    pool.report_failure(index, &reason, refused);
                    continue;
                }
            };
            let _ = server.set_nodelay(true);
            server
                .write_all(&net::proxy_protocol::header(peer, local)?)
                .await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
            return Ok(());
        }
        // No server: close; a TLS client sees a failed handshake, the most a
        // passthrough frontend can say.
        tracing::warn!(%peer, "no web server could take an HTTPS connection");
        Ok(())
    }
}
