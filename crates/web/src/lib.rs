//! `web`: the web-server role.
//!
//! nginx's job in the scale-up design: answer static files itself ([`files`]), send
//! everything else to the application servers over keep-alive connections (through
//! `net::proxy`, with health checks on the app pool), and write one access-log line
//! per request carrying the request id the load balancer gave it.
#![forbid(unsafe_code)]

pub mod files;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use net::access_log::AccessLog;
use net::headers::{add_forwarded, RequestIds, X_REQUEST_ID};
use net::proxy::Policy;
use net::server::{Handler, Limits};
use net::upstream::Pool;
use net::{Body, Metrics, Shutdown};
use tokio::net::TcpListener;

use files::{Outcome, StaticFiles};

/// Everything a web server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name, for logs and metrics.
    pub name: String,
    /// The document root.
    pub root: PathBuf,
    /// The application servers: name and address.
    pub apps: Vec<(String, SocketAddr)>,
    /// Where access-log lines go (`None`: standard output).
    pub access_log: Option<PathBuf>,
    /// How the application servers are checked.
    pub health: site::HealthCheck,
    /// Client and upstream timeouts.
    pub timeouts: site::Timeouts,
    /// Most client connections at once.
    pub max_connections: usize,
}

impl Config {
    /// The configuration of web server `name` of `site`, serving `root`.
    pub fn from_site(site: &site::Site, name: &str, root: PathBuf) -> anyhow::Result<Config> {
        let web = site
            .web(name)
            .ok_or_else(|| anyhow::anyhow!("`{name}` is not a web server of this site"))?;
        Ok(Config {
            name: name.to_string(),
            root,
            apps: web
                .apps
                .iter()
                .filter_map(|a| site.app(a).map(|n| (n.node.name.clone(), n.node.listen)))
                .collect(),
            access_log: web.access_log.clone(),
            health: web.health.clone(),
            timeouts: web.timeouts.clone(),
            max_connections: web.max_connections,
        })
    }
}

/// nginx's behaviour: one more app server for a request that could not connect,
/// and 502 when none answers.
const POLICY: Policy = Policy {
    retries: 1,
    unreachable: StatusCode::BAD_GATEWAY,
};

struct WebServer {
    name: String,
    files: StaticFiles,
    pool: Arc<Pool>,
    ids: RequestIds,
    log: AccessLog,
    metrics: Arc<Metrics>,
    started: SystemTime,
}

impl Handler for WebServer {
    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let start = Instant::now();
        self.metrics.request_started();
        let request_id = self.ids.ensure(req.headers_mut());
        let entry = self
            .log
            .begin(req.method(), req.uri(), req.version(), req.headers(), peer);

        let mut resp = if req.uri().path() == "/healthz" {
            health_response(req.method())
        } else {
            match self
                .files
                .serve(req.method(), req.uri(), req.headers())
                .await
            {
                Outcome::Response(resp) => resp,
                Outcome::NotFound => {
                    // The load balancer in front set X-Forwarded-Proto; keep it.
                    add_forwarded(req.headers_mut(), peer, "http", true);
                    net::proxy::forward(&self.pool, req, peer, POLICY, &request_id).await
                }
            }
        };

        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        let status = resp.status().as_u16();
        let metrics = self.metrics.clone();
        resp.map(|body| {
            net::finish::on_finish(body, move |bytes| {
                metrics.request_finished(status, start.elapsed());
                entry.finish(status, bytes, Some(&request_id));
            })
        })
    }
}

/// The web server answers its own health check: it is up if it can answer at all,
/// whatever the app tier is doing (the load balancer must not take the only web
/// server out because the app is down; the web server's 502 page is better than
/// the load balancer's 503).
fn health_response(method: &Method) -> Response<Body> {
    let body = if method == Method::HEAD {
        net::empty()
    } else {
        net::full("ok\n")
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl net::admin::Report for WebServer {
    fn metrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.metrics.render(&self.name, &mut out);
        self.pool.render_metrics(&self.name, &mut out);
        out
    }

    async fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.name,
            "role": "web",
            "started": httpdate::fmt_http_date(self.started),
            "requests": self.metrics.requests_total(),
            "responses_by_class": self.metrics.by_class(),
            "connections_open": self.metrics.connections_open(),
            "upstream": self.pool.status(),
        })
    }
}

/// Runs web server `config` on `listener` (clients) and `admin` (operators) until
/// `shutdown`, then drains open connections.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let files = StaticFiles::new(&config.root)
        .map_err(|e| anyhow::anyhow!("document root {}: {e}", config.root.display()))?;
    let pool = Arc::new(Pool::new(
        "app",
        config.apps.clone(),
        site::Algorithm::RoundRobin,
        config.health.clone(),
        config.timeouts.clone(),
    ));
    pool.spawn_health_checks(shutdown.clone());
    let web = Arc::new(WebServer {
        name: config.name.clone(),
        files,
        pool,
        ids: RequestIds::default(),
        log: AccessLog::open(config.access_log.as_deref())?,
        metrics: Arc::new(Metrics::default()),
        started: SystemTime::now(),
    });
    let limits = Limits {
        max_connections: config.max_connections,
        header_timeout: config.timeouts.client,
        ..Limits::default()
    };
    tracing::info!(
        node = %config.name,
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        root = %config.root.display(),
        "web server serving"
    );
    let admin_task = tokio::spawn(net::admin::serve_admin(
        admin,
        web.clone(),
        shutdown.clone(),
    ));
    net::server::serve(listener, limits, web.clone(), web.metrics.clone(), shutdown).await?;
    admin_task.await??;
    Ok(())
}
