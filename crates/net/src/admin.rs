//! The admin listener every node has: `/healthz`, `/metrics` (Prometheus text) and
//! `/status` (JSON). It runs on its own port so that operators and monitoring reach
//! it even when the main listener is saturated, and so that it can stay on loopback.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::server::{serve, Handler, Limits};
use crate::{Body, Metrics, Shutdown};

/// What a node shows on its admin listener.
pub trait Report: Send + Sync + 'static {
    /// The node's metrics in Prometheus text format.
    fn metrics(&self) -> String;
    /// The node's state as JSON.
    fn status(&self) -> impl Future<Output = serde_json::Value> + Send;
    /// Whether the node can do its job (for `/healthz`).
    fn healthy(&self) -> impl Future<Output = bool> + Send {
        async { true }
    }
    /// Pages beyond the three standard ones (a dashboard, say); `None` is 404.
    fn extra(&self, _path: &str) -> Option<Response<Body>> {
        None
    }
}

struct Admin<R>(Arc<R>);

impl<R: Report> Handler for Admin<R> {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path();
        match path {
            "/healthz" => {
                if self.0.healthy().await {
                    text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain; charset=utf-8",
                        "unhealthy\n".into(),
                    )
                }
            }
            "/metrics" => text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.0.metrics(),
            ),
            "/status" => text(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&self.0.status().await).unwrap_or_default(),
            ),
            other => self.0.extra(other).unwrap_or_else(|| {
                text(
                    StatusCode::NOT_FOUND,
                    "text/plain; charset=utf-8",
                    "not found: try /healthz, /metrics or /status\n".into(),
                )
            }),
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(crate::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Connections the admin listener serves at once.
const ADMIN_CONNECTIONS: usize = 128;
/// ... and from one address: monitoring, `scaleup status` and a dashboard or two
/// need a handful each.
const ADMIN_PER_CLIENT: usize = 64;

/// Serves the admin listener on `listener` until `shutdown`.
pub async fn serve_admin<R: Report>(
    listener: TcpListener,
    report: Arc<R>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    // Its own small budget, inside the descriptors every node keeps in reserve, so
    // operators get in however full the main listeners are.
    let limits = Limits {
        budget: crate::budget::Budget::new(ADMIN_CONNECTIONS, ADMIN_PER_CLIENT),
        ..Limits::default()
    };
    serve(
        listener,
        limits,
        Arc::new(Admin(report)),
        Arc::new(Metrics::default()),
        shutdown,
    )
    .await
}
