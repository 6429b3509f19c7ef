//! The application server as a node: the router behind `net`'s accept loop (its
//! limits, drain and metrics), and the admin listener.
//!
//! Each request is logged in the access log with the request id the tiers in front
//! gave it, and its response says in `Server-Timing` how long the app took to the
//! response head (`app`) and how many database calls that included, and their time
//! (`db`, counted by [`db::spent`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use net::access_log::AccessLog;
use net::headers::{client_of, RequestIds, Trusted, X_REQUEST_ID};
use net::server::{Handler, Limits};
use net::timing::Metric;
use net::{Body, Metrics, Shutdown};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::Instrument;

use crate::{App, AppConfig};

struct AppNode {
    name: String,
    app: App,
    router: Router,
    metrics: Arc<Metrics>,
    started: SystemTime,
    /// Keeps the web tier's request id (makes one for a request that came without).
    ids: RequestIds,
    /// One line per request, joined to the other hops' by the request id.
    log: AccessLog,
    /// The site's proxies: the client named in their forwarding headers is logged.
    trusted: Trusted,
    /// Who may upgrade the node.
    auth: net::admin::Auth,
}

impl Handler for AppNode {
    async fn handle(
        &self,
        mut req: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> http::Response<Body> {
        let start = Instant::now();
        self.metrics.request_started();
        net::trace::check(req.headers_mut());
        let request_id = self.ids.ensure(req.headers_mut());
        let entry = self.log.begin(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            SocketAddr::new(client_of(req.headers(), peer, &self.trusted), peer.port()),
        );
        // Forwarding headers are believed only from the site's proxies: the app needs to
        // know who sent them.
        req.extensions_mut().insert(crate::client::Peer(peer));
        // What the application logs while it answers (a database error, a throttled
        // login) names the request, so `scaleup trace` finds it with the access lines.
        let span = tracing::info_span!("request", request_id = %RequestIdField(&request_id));
        let (resp, spent) = db::spent::measure(self.router.clone().oneshot(req))
            .instrument(span)
            .await;
        let mut resp = match resp {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
        let headers = resp.headers_mut();
        headers.insert(X_REQUEST_ID.clone(), request_id.clone());
        net::timing::prepend(
            headers,
            &[
                Metric::new("app", start.elapsed()),
                Metric {
                    name: "db",
                    dur: spent.time,
                    count: Some((spent.queries, "queries")),
                },
            ],
        );
        let status = resp.status().as_u16();
        let metrics = self.metrics.clone();
        resp.map(|body| {
            net::finish::on_finish(body.map_err(Into::into).boxed_unsync(), move |bytes| {
                metrics.request_finished(status, start.elapsed());
                entry.finish(status, bytes, Some(&request_id));
            })
        })
    }
}

/// A request id as a log field: the id itself (it is 1-128 of `[A-Za-z0-9._-]`).
struct RequestIdField<'a>(&'a http::HeaderValue);

impl std::fmt::Display for RequestIdField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.to_str().unwrap_or("-"))
    }
}

impl net::admin::Report for AppNode {
    fn auth(&self) -> Option<&net::admin::Auth> {
        Some(&self.auth)
    }

    fn metrics(&self) -> String {
        let mut out = String::with_capacity(2048);
        self.metrics.render(&self.name, &mut out);
        render_login_metrics(&self.name, &self.app, &mut out);
        render_db_metrics(&self.name, &self.app.db().stats(), &mut out);
        out
    }

    async fn status(&self) -> serde_json::Value {
        let database = match self.app.db().counts(None).await {
            Ok(counts) => {
                serde_json::json!({ "healthy": true, "users": counts.users, "posts": counts.posts })
            }
            Err(e) => serde_json::json!({ "healthy": false, "error": e.to_string() }),
        };
        let servers: Vec<serde_json::Value> = self
            .app
            .db()
            .stats()
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "address": s.address,
                    "role": s.role,
                    "healthy": s.healthy,
                    "usable": s.usable,
                    "lag_seconds": s.lag.map(|l| l.as_secs_f64()),
                    "reads": s.reads,
                    "writes": s.writes,
                    "read_your_writes_fallbacks": s.fallbacks,
                    "problem": s.problem,
                })
            })
            .collect();
        let mut database = database;
        database["servers"] = servers.into();
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

/// Appends the password-hashing and login-throttling counters (Prometheus text).
fn render_login_metrics(node: &str, app: &App, out: &mut String) {
    use std::fmt::Write;
    let series = [
        ("scaleup_app_password_hashes_total", "Argon2 hashes and verifications computed.", app.password_hashes()),
        ("scaleup_app_logins_throttled_total", "Login attempts answered 429 by the failed-login throttle.", app.logins_throttled()),
        ("scaleup_app_hashes_refused_total", "Password checks refused because the hash queue (or the client's share of it) was full.", app.hashes_refused()),
    ];
    for (name, help, value) in series {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{node=\"{node}\"}} {value}"
        );
    }
}

/// Appends the database servers' `scaleup_db_*` lines (Prometheus text) to `out`: one
/// series per server, labelled with its name and role. Nothing for SQLite, which has no
/// servers.
fn render_db_metrics(node: &str, stats: &[db::ServerStats], out: &mut String) {
    use std::fmt::Write;
    if stats.is_empty() {
        return;
    }
    type Value = fn(&db::ServerStats) -> String;
    let series: [(&str, &str, &str, Value); 6] = [
        ("scaleup_db_up", "gauge", "1 when the server answers (and a replica is replicating).", |s| u8::from(s.healthy).to_string()),
        ("scaleup_db_usable", "gauge", "1 when reads may be sent to the server now.", |s| u8::from(s.usable).to_string()),
        ("scaleup_db_replica_lag_seconds", "gauge", "How far a replica is behind the primary (NaN when unknown).", |s| s.lag.map_or("NaN".into(), |l| l.as_secs_f64().to_string())),
        ("scaleup_db_reads_total", "counter", "Reads the server answered.", |s| s.reads.to_string()),
        ("scaleup_db_writes_total", "counter", "Writes the server took.", |s| s.writes.to_string()),
        ("scaleup_db_read_your_writes_fallbacks_total", "counter", "Reads sent to the primary because this replica had not applied the reader's own write in time.", |s| s.fallbacks.to_string()),
    ];
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in stats {
            if name == "scaleup_db_replica_lag_seconds" && s.role == "primary" {
                continue;
            }
            let _ = writeln!(
                out,
                "{name}{{node=\"{node}\",server=\"{}\",role=\"{}\"}} {}",
                s.name,
                s.role,
                value(s)
            );
        }
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
    // Its clients are the web servers, each carrying many visitors' requests from one
    // address: they are not capped per address; anyone else is.
    let limits = Limits {
        budget: net::budget::Budget::for_process(
            10_000,
            net::budget::DEFAULT_PER_CLIENT,
            1,
            net::headers::Trusted::addresses(config.trusted_proxies.iter().copied()),
        ),
        drain_timeout: config.drain_timeout,
        ..Limits::default()
    };
    let log = AccessLog::open(config.access_log.as_deref())?.with_format(config.log_format);
    let trusted = Trusted::addresses(config.trusted_proxies.iter().copied());
    let auth = net::admin::Auth::new(name, config.admin_token.clone());
    let app = App::new(config).await?;
    let node = Arc::new(AppNode {
        name: name.to_string(),
        router: app.router(),
        app,
        metrics: Arc::new(Metrics::default()),
        started: SystemTime::now(),
        ids: RequestIds::default(),
        log,
        trusted,
        auth,
    });
    tracing::info!(
        node = name,
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        "application server serving"
    );
    net::node::Node::new(node.clone(), node.metrics.clone(), limits, shutdown)
        .serve(net::node::Listeners {
            http: listener,
            https: None,
            admin,
        })
        .await?;
    // Closing the pool lets SQLite checkpoint its write-ahead log into the file.
    node.app.db().close().await;
    Ok(())
}
