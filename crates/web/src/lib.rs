//! `web`: the web-server role.
//!
//! nginx's job in the scale-up design: end TLS (HTTP/2 or HTTP/1.1 by ALPN, the
//! client's address from the load balancers' PROXY protocol header), answer static
//! files itself ([`files`], `Cache-Control` by path pattern), send everything else to
//! the application servers over keep-alive connections (through `net::proxy`, with
//! health checks on the app pool), add the security headers and HSTS a response
//! lacks, and write one access-log line per request carrying the request id the load
//! balancer gave it.
#![forbid(unsafe_code)]

pub mod files;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, STRICT_TRANSPORT_SECURITY};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use net::access_log::AccessLog;
use net::headers::{client_of, forwarding, refuse_malformed, RequestIds, Trusted, X_REQUEST_ID};
use net::proxy::Policy;
use net::server::{ConnInfo, Handler, Limits, Transport};
use net::upstream::{Pool, Server};
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
    /// The application servers: name, address and weight.
    pub apps: Vec<Server>,
    /// How long an application server made ready or back up takes to get its whole
    /// share of traffic.
    pub slowstart: std::time::Duration,
    /// The token admin writes (drain, ready) must carry, or why there is none.
    pub admin_token: net::admin::Token,
    /// Where access-log lines go (`None`: standard output).
    pub access_log: Option<PathBuf>,
    /// How access-log lines are written.
    pub log_format: net::access_log::LogFormat,
    /// How the application servers are checked.
    pub health: net::upstream::HealthCheck,
    /// Client and upstream timeouts.
    pub timeouts: net::upstream::Timeouts,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most client connections from one address (the load balancers excepted).
    pub max_connections_per_client: usize,
    /// The certificate for the HTTPS listener (needed when one is given to [`serve`]).
    pub tls: Option<net::tls::TlsFiles>,
    /// `Strict-Transport-Security` for HTTPS responses.
    pub hsts: Option<String>,
    /// Who may send a PROXY protocol header on the HTTPS listener: the load balancers.
    pub proxy_from: Vec<IpAddr>,
    /// Headers added to responses that lack them.
    pub headers: Vec<(String, String)>,
    /// `Cache-Control` for static files by path pattern.
    pub cache: Vec<site::CacheRule>,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
}

struct WebServer {
    name: String,
    /// What a reload replaces, loaded once per request.
    live: ArcSwap<Live>,
    ids: RequestIds,
    metrics: Arc<Metrics>,
    started: SystemTime,
    /// Who may drain and ready the application servers through the admin listener.
    auth: net::admin::Auth,
    /// The HTTPS listener's certificate, which a reload replaces for new handshakes.
    cert: Option<Arc<net::tls::LiveCert>>,
    /// Where `POST /reload` goes.
    reload: Option<net::reload::Trigger>,
    /// Stops the health checks of the pools a reload makes.
    checks_stop: Shutdown,
    /// The connections its listeners may hold (HTTP and HTTPS together), which a
    /// reload resizes.
    budget: Arc<net::budget::Budget>,
}

/// Descriptors a client connection costs: a proxied request also holds a connection
/// to an app server.
const BUDGET_FDS: u64 = 2;

/// Who the per-address cap spares: the load balancers carry every client's requests
/// from one address each.
fn budget_exempt(config: &Config) -> Trusted {
    Trusted::addresses(config.proxy_from.iter().copied())
}

/// The settings a reload can change in place, swapped whole: a request sees the old
/// ones or the new ones, never half of each.
struct Live {
    files: StaticFiles,
    /// The document root `files` serves, as configured.
    root: PathBuf,
    /// The application servers; a reload's new pool keeps the state of those that stay.
    pool: Arc<Pool>,
    log: AccessLog,
    /// Added to every response that lacks them.
    headers: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
    cache: Vec<(site::CacheRule, HeaderValue)>,
    /// nginx's behaviour: one more app server for a request that could not
    /// connect, 502 when none answers, and the site's body limit on the stream.
    policy: Policy,
    /// The load balancers: the only peers whose forwarding headers are believed.
    trusted: Trusted,
}

impl Live {
    /// The settings of `config` around `pool`. The static-file handler (and its cache)
    /// and the access log of `old` are kept when their root, file and format are the
    /// same.
    fn new(config: &Config, pool: Arc<Pool>, old: Option<&Live>) -> anyhow::Result<Live> {
        let header = |name: &str, value: &str| -> anyhow::Result<(HeaderName, HeaderValue)> {
            Ok((
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| anyhow::anyhow!("header name `{name}`: {e}"))?,
                HeaderValue::from_str(value)
                    .map_err(|e| anyhow::anyhow!("value of header `{name}`: {e}"))?,
            ))
        };
        let headers = config
            .headers
            .iter()
            .map(|(k, v)| header(k, v))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let hsts = config
            .hsts
            .as_deref()
            .map(|v| header("strict-transport-security", v).map(|(_, v)| v))
            .transpose()?;
        let cache = config
            .cache
            .iter()
            .map(|rule| {
                Ok((
                    rule.clone(),
                    header("cache-control", &rule.cache_control)?.1,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let files = match old {
            Some(old) if old.root == config.root => old.files.clone(),
            _ => StaticFiles::new(&config.root)
                .map_err(|e| anyhow::anyhow!("document root {}: {e}", config.root.display()))?,
        };
        let (path, format) = (config.access_log.as_deref(), config.log_format);
        let log = match old {
            Some(old) => old.log.reopened(path, format)?,
            None => AccessLog::open(path)?.with_format(format),
        };
        Ok(Live {
            files,
            root: config.root.clone(),
            pool,
            log,
            headers,
            hsts,
            cache,
            policy: Policy {
                retries: 1,
                unreachable: StatusCode::BAD_GATEWAY,
                max_body_bytes: Some(config.max_body_bytes),
            },
            trusted: Trusted::addresses(config.proxy_from.iter().copied()),
        })
    }
}

impl WebServer {
    /// Applies a reloaded configuration: everything that can fail first (the
    /// certificate, the header values, the document root, the access log), so a
    /// failure leaves the server as it was; then the new pool and settings in one swap.
    fn apply(&self, config: Config) -> Result<(), String> {
        let old = self.live.load_full();
        let pool = Arc::new(old.pool.reconfigured(
            config.apps.clone(),
            net::upstream::Algorithm::RoundRobin,
            config.health.clone(),
            config.timeouts.clone(),
            config.slowstart,
        ));
        let live = Live::new(&config, pool.clone(), Some(&old)).map_err(|e| format!("{e:#}"))?;
        if let (Some(cert), Some(files)) = (&self.cert, &config.tls) {
            cert.reload(files).map_err(|e| format!("{e:#}"))?;
        }
        pool.spawn_health_checks(self.checks_stop.clone());
        self.live.store(Arc::new(live));
        self.budget.resize(
            config.max_connections,
            config.max_connections_per_client,
            BUDGET_FDS,
            budget_exempt(&config),
        );
        old.pool.retire();
        Ok(())
    }
}

impl Handler for WebServer {
    /// Large static files go out by `sendfile` on plain HTTP/1 connections.
    fn sends_files(&self) -> bool {
        true
    }

    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let start = Instant::now();
        let live = self.live.load_full();
        self.metrics.request_started();
        let tls_here = req.extensions().get::<ConnInfo>().is_some_and(|c| c.secure);
        // The client is the load balancer's client when a load balancer sent this
        // (its X-Forwarded-For, or the PROXY header on HTTPS), else the peer. The
        // forwarding headers themselves are rewritten only for a request that is
        // forwarded: a static file needs none of that work.
        let client = client_of(req.headers(), peer, &live.trusted);
        net::trace::check(req.headers_mut());
        let request_id = self.ids.ensure(req.headers_mut());
        let entry = live.log.begin(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            SocketAddr::new(client, peer.port()),
        );

        // HTTPS: TLS ended here, or at a load balancer in `http` mode (which says so,
        // and only a load balancer's word is kept).
        let secure = tls_here
            || (live.trusted.contains(peer.ip())
                && req
                    .headers()
                    .get(&net::headers::X_FORWARDED_PROTO)
                    .is_some_and(|v| v == "https"));
        let path = req.uri().path().to_owned();
        let method = req.method().clone();

        let mut resp = if let Some(refusal) = refuse_malformed(&req, &request_id)
            .or_else(|| net::server::too_large(&req, live.policy.max_body_bytes))
        {
            refusal
        } else if path == "/healthz" {
            health_response(req.method())
        } else {
            match live
                .files
                .serve(
                    req.method(),
                    req.uri(),
                    req.headers(),
                    req.extensions().get(),
                )
                .await
            {
                Outcome::Response(mut resp) => {
                    live.cache_control(&path, &mut resp);
                    resp
                }
                Outcome::NotFound => {
                    forwarding(req.headers_mut(), peer, tls_here, &live.trusted);
                    // The id this line is logged with, whatever `Connection` named.
                    req.headers_mut()
                        .insert(X_REQUEST_ID.clone(), request_id.clone());
                    net::proxy::forward(&live.pool, req, peer, live.policy, &request_id).await
                }
            }
        };
        let headers = resp.headers_mut();
        for (name, value) in &live.headers {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        if let (true, Some(hsts)) = (secure, &live.hsts) {
            headers.insert(STRICT_TRANSPORT_SECURITY, hsts.clone());
        }

        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        // This hop's whole time to the response head, before the app's entries (a
        // static file or an error page made here carries this entry alone).
        net::timing::prepend(
            resp.headers_mut(),
            &[net::timing::Metric::new("web", start.elapsed())],
        );
        let status = resp.status().as_u16();
        if status >= 500 {
            let id = request_id.to_str().unwrap_or("");
            self.metrics
                .server_error(status, method.as_str(), &path, id);
        }
        let metrics = self.metrics.clone();
        // A WebSocket is logged when it closes, with what it carried, as nginx does;
        // its request is counted as answered once the 101 is out.
        let tunnel = net::tunnel::TunnelEnd::of(&mut resp);
        resp.map(|body| {
            net::finish::on_finish(body, move |bytes| {
                metrics.request_finished(status, start.elapsed());
                match tunnel {
                    Some(end) => {
                        end.then(move |sent| entry.finish(status, sent, Some(&request_id)))
                    }
                    None => entry.finish(status, bytes, Some(&request_id)),
                }
            })
        })
    }
}

impl Live {
    /// The first matching rule's `Cache-Control` on a file (or its 304/206), unless
    /// the file handler set one.
    fn cache_control(&self, path: &str, resp: &mut Response<Body>) {
        let cacheable = matches!(resp.status().as_u16(), 200 | 206 | 304);
        if !cacheable || resp.headers().contains_key(CACHE_CONTROL) {
            return;
        }
        if let Some((_, value)) = self.cache.iter().find(|(rule, _)| rule.matches(path)) {
            resp.headers_mut().insert(CACHE_CONTROL, value.clone());
        }
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
        let live = self.live.load();
        live.pool.render_metrics(&self.name, &mut out);
        let _ = writeln!(
            out,
            "# HELP scaleup_access_log_dropped_total Access-log lines dropped because the disk could not keep up.\n\
             # TYPE scaleup_access_log_dropped_total counter\n\
             scaleup_access_log_dropped_total{{node=\"{}\"}} {}",
            self.name,
            live.log.dropped()
        );
        out
    }

    async fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.name,
            "role": "web",
            "pid": std::process::id(),
            "started": httpdate::fmt_http_date(self.started),
            "requests": self.metrics.requests_total(),
            "responses_by_class": self.metrics.by_class(),
            "connections_open": self.metrics.connections_open(),
            "upstream": self.live.load().pool.status(),
            "recent_errors": self.metrics.recent_errors(),
        })
    }

    fn auth(&self) -> Option<&net::admin::Auth> {
        Some(&self.auth)
    }

    fn pool(&self) -> Option<Arc<Pool>> {
        Some(self.live.load().pool.clone())
    }

    fn reload(&self) -> Option<&net::reload::Trigger> {
        self.reload.as_ref()
    }
}

/// Runs web server `config` on `listener` (clients) and `admin` (operators) until
/// `shutdown`, then drains open connections.
///
/// `tls_listener`, when given, serves HTTPS with the configured certificate and
/// accepts PROXY protocol v2 from the load balancers.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    tls_listener: Option<TcpListener>,
    admin: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    serve_reloadable(config, listener, tls_listener, admin, shutdown, None).await
}

/// [`serve`], taking `reloads` (`POST /reload` and whatever else fires their
/// trigger): the app pool (servers, weights, health checks, upstream timeouts, slow
/// start), the document root, the access log, response headers, HSTS, cache rules,
/// the body limit and the certificate change in place. The rest of a new [`Config`]
/// is not looked at: the caller says what needs a restart.
pub async fn serve_reloadable(
    config: Config,
    listener: TcpListener,
    tls_listener: Option<TcpListener>,
    admin: TcpListener,
    shutdown: Shutdown,
    reloads: Option<net::reload::Reloads<Config>>,
) -> anyhow::Result<()> {
    let (tls, cert) = match (&tls_listener, &config.tls) {
        (None, _) => (None, None),
        (Some(_), Some(files)) => {
            let (tls, cert) = net::tls::live_server_config(files)?;
            (Some(tokio_rustls::TlsAcceptor::from(tls)), Some(cert))
        }
        (Some(_), None) => anyhow::bail!(
            "web server {} has an HTTPS listener but no certificate in its configuration",
            config.name
        ),
    };
    let pool = Arc::new(
        Pool::new(
            "app",
            config.apps.clone(),
            net::upstream::Algorithm::RoundRobin,
            config.health.clone(),
            config.timeouts.clone(),
        )
        .with_slow_start(config.slowstart),
    );
    pool.spawn_health_checks(shutdown.clone());
    let web = Arc::new(WebServer {
        budget: net::budget::Budget::for_process(
            config.max_connections,
            config.max_connections_per_client,
            BUDGET_FDS,
            budget_exempt(&config),
        ),
        name: config.name.clone(),
        live: ArcSwap::from_pointee(Live::new(&config, pool, None)?),
        ids: RequestIds::default(),
        metrics: Arc::new(Metrics::default()),
        started: SystemTime::now(),
        auth: net::admin::Auth::new(&config.name, config.admin_token.clone()),
        cert,
        reload: reloads.as_ref().map(|r| r.trigger.clone()),
        checks_stop: shutdown.clone(),
    });
    let limits = Limits {
        budget: web.budget.clone(),
        header_timeout: config.timeouts.client,
        keepalive_timeout: config.timeouts.keepalive,
        drain_timeout: config.timeouts.drain,
        // The handler refuses a body announced over the limit, with the limit of the
        // moment (a reload may change it).
        max_body_bytes: None,
        ..Limits::default()
    };
    tracing::info!(
        node = %config.name,
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        root = %config.root.display(),
        "web server serving"
    );
    let https = match (tls_listener, tls) {
        (Some(tls_listener), Some(acceptor)) => {
            tracing::info!(node = %config.name, tls_listen = %tls_listener.local_addr()?, "web server serving HTTPS");
            let transport = Transport {
                tls: Some(acceptor),
                proxy_from: config.proxy_from.clone(),
            };
            Some((tls_listener, transport))
        }
        _ => None,
    };
    let applier = web.clone();
    net::node::Node::new(web.clone(), web.metrics.clone(), limits, shutdown)
        .reloads(reloads, move |config| applier.apply(config))
        .serve(net::node::Listeners {
            http: listener,
            https,
            admin,
        })
        .await
}
