//! The application server as a node: the router behind `net`'s accept loop (its
//! limits, drain and metrics), and the admin listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use net::server::{Handler, Limits};
use net::{Body, Metrics, Shutdown};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::{App, AppConfig};

struct AppNode {
    name: String,
    app: App,
    router: Router,
    metrics: Arc<Metrics>,
    started: SystemTime,
}

impl Handler for AppNode {
    async fn handle(
        &self,
        req: http::Request<Incoming>,
        _peer: SocketAddr,
    ) -> http::Response<Body> {
        let start = Instant::now();
        self.metrics.request_started();
        let resp = match self.router.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let status = resp.status().as_u16();
        let metrics = self.metrics.clone();
        resp.map(|body| {
            net::finish::on_finish(body.map_err(Into::into).boxed_unsync(), move |_| {
                metrics.request_finished(status, start.elapsed())
            })
        })
    }
}

impl net::admin::Report for AppNode {
    fn metrics(&self) -> String {
        let mut out = String::with_capacity(2048);
        self.metrics.render(&self.name, &mut out);
        out
    }

    async fn status(&self) -> serde_json::Value {
        let database = match self.app.db().counts(None).await {
            Ok(counts) => {
                serde_json::json!({ "healthy": true, "users": counts.users, "posts": counts.posts })
            }
            Err(e) => serde_json::json!({ "healthy": false, "error": e.to_string() }),
        };
        serde_json::json!({
            "node": self.name,
            "role": "app",
            "pid": std::process::id(),
            "started": httpdate::fmt_http_date(self.started),
            "requests": self.metrics.requests_total(),
            "responses_by_class": self.metrics.by_class(),
            "connections_open": self.metrics.connections_open(),
            "database": database,
        })
    }

    async fn healthy(&self) -> bool {
        self.app.db().ping().await.is_ok()
    }
}

/// Runs application server `name` on `listener` (web servers) and `admin`
/// (operators) until `shutdown`, then drains open connections.
pub async fn serve(
    name: &str,
    config: AppConfig,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let app = App::new(config).await?;
    let node = Arc::new(AppNode {
        name: name.to_string(),
        router: app.router(),
        app,
        metrics: Arc::new(Metrics::default()),
        started: SystemTime::now(),
    });
    tracing::info!(
        node = name,
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        "application server serving"
    );
    let admin_task = tokio::spawn(net::admin::serve_admin(
        admin,
        node.clone(),
        shutdown.clone(),
    ));
    net::server::serve(
        listener,
        Limits::default(),
        node.clone(),
        node.metrics.clone(),
        shutdown,
    )
    .await?;
    admin_task.await??;
    // Closing the pool lets SQLite checkpoint its write-ahead log into the file.
    node.app.db().close().await;
    Ok(())
}
