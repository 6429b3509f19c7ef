//! `lb`: the load-balancer role.
//!
//! A load balancer accepts client connections, gives each request an id and the
//! forwarding headers, and sends it to a healthy web server of its pool (see
//! `net::upstream` for health checks and algorithms, `net::proxy` for retries and
//! error pages). Its admin listener adds a stats page to the usual `/healthz`,
//! `/metrics` and `/status`.
//!
//! In a cluster ([`floating`]), it also serves the site's floating address while
//! the `cluster` crate says it is the active node, tells the election whether its
//! backends are healthy, and on a clean stop hands the address over before it
//! stops accepting.
//!
//! A load balancer may also have an HTTPS frontend (`tls_listen`), in one of two
//! modes: `tcp` relays TLS untouched to the web servers with a PROXY protocol header
//! ([`passthrough`]), `http` ends TLS here and forwards plain HTTP with
//! `X-Forwarded-Proto: https`. The plain-HTTP frontend can answer 308 to HTTPS.
#![forbid(unsafe_code)]

mod dashboard;
mod floating;
mod passthrough;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::header::{HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use net::access_log::AccessLog;
use net::headers::{forwarding, refuse_malformed, RequestIds, Trusted, X_REQUEST_ID};
use net::proxy::Policy;
use net::server::{ConnInfo, Handler, Limits, Transport};
use net::upstream::{Pool, Server};
use net::{Body, Metrics, Shutdown};
use tokio::net::TcpListener;

pub use dashboard::{DbMember, Member, Topology};
pub use floating::Membership;

/// Everything a load balancer needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name, for logs and metrics.
    pub name: String,
    /// How this load balancer balances.
    pub balancer: Balancing,
    /// The web servers of the pool: name, address and weight.
    pub servers: Vec<Server>,
    /// The cluster this load balancer belongs to, if any.
    pub cluster: Option<floating::Membership>,
    /// Each pool member's HTTPS address, in pool order (for `tcp` mode).
    pub servers_tls: Vec<Option<SocketAddr>>,
    /// This node's HTTPS port, where the plain frontend redirects (if it does).
    pub tls_port: Option<u16>,
    /// The certificate, when this node ends TLS (`http` mode).
    pub tls: Option<net::tls::TlsFiles>,
    /// The token admin writes (drain, ready) must carry, or why there is none.
    pub admin_token: net::admin::Token,
    /// Where access-log lines go (`None`: standard output): one per HTTP request, as
    /// HAProxy logs, so `scaleup trace` finds a request here too.
    pub access_log: Option<std::path::PathBuf>,
    /// How access-log lines are written.
    pub log_format: net::access_log::LogFormat,
    /// The site's nodes, which the dashboard draws and asks for their state.
    pub topology: Topology,
}

/// How a load balancer balances (the site's `[balancer]`, in the pool's terms).
#[derive(Debug, Clone)]
pub struct Balancing {
    /// How a server is picked for a new request.
    pub algorithm: net::upstream::Algorithm,
    /// How servers are checked.
    pub health: net::upstream::HealthCheck,
    /// Client and upstream timeouts, and the drain's.
    pub timeouts: net::upstream::Timeouts,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most of those from one client address (an IPv6 /64 counts as one).
    pub max_connections_per_client: usize,
    /// How many other servers an idempotent request that failed to connect is tried on.
    pub retries: u32,
    /// Whether plain HTTP is answered with 308 to the HTTPS frontend.
    pub https_redirect: bool,
    /// Proxies in front whose forwarding headers are kept.
    pub trusted_proxies: Vec<net::headers::Block>,
    /// How long a server made ready or back up takes to get its whole share.
    pub slowstart: std::time::Duration,
}

/// The running load balancer: its live settings and its counters.
struct LoadBalancer {
    name: String,
    /// The member of the cluster, once started (an upgraded node's starts only when
    /// its previous process has left the election).
    cluster: std::sync::OnceLock<cluster::Cluster>,
    /// Run beside it by the binary, shown on its admin listener.
    beside: Option<Arc<dyn Beside>>,
    /// What a reload replaces, loaded once per request.
    live: Arc<ArcSwap<Live>>,
    ids: RequestIds,
    metrics: Arc<Metrics>,
    started: SystemTime,
    /// Who may drain and ready the web servers through the admin listener.
    auth: net::admin::Auth,
    /// The certificate of the HTTPS frontend when it ends TLS (`http` mode), which a
    /// reload replaces for new handshakes.
    cert: Option<Arc<net::tls::LiveCert>>,
    /// Where `POST /reload` goes.
    reload: Option<net::reload::Trigger>,
    /// Stops the health checks of the pools a reload makes.
    checks_stop: Shutdown,
    /// The live picture of the site on the admin listener (`/dashboard`).
    dashboard: Arc<dashboard::Dashboard>,
    /// The connections its listeners may hold, which a reload resizes.
    budget: Arc<net::budget::Budget>,
}

/// The connection budget `b` asks for: shared by the HTTP, HTTPS and floating
/// listeners; each client connection also holds a connection to a web server (2
/// descriptors). A proxy in front carries many clients' connections from one
/// address, so `trusted_proxies` are not capped per address.
fn budget(b: &Balancing) -> Arc<net::budget::Budget> {
    net::budget::Budget::for_process(
        b.max_connections,
        b.max_connections_per_client,
        2,
        Trusted::blocks(b.trusted_proxies.iter().copied()),
    )
}

/// [`budget`] applied by a reload to the budget in use.
fn resize(budget: &net::budget::Budget, b: &Balancing) {
    budget.resize(
        b.max_connections,
        b.max_connections_per_client,
        2,
        Trusted::blocks(b.trusted_proxies.iter().copied()),
    );
}

/// The settings a reload can change in place, swapped whole: a request sees the old
/// ones or the new ones, never half of each.
pub(crate) struct Live {
    /// The web servers; a reload's new pool keeps the state of the servers that stay.
    pub pool: Arc<Pool>,
    policy: Policy,
    /// Answer plain-HTTP requests with 308 to this HTTPS port.
    redirect_to: Option<u16>,
    /// Proxies in front whose forwarding headers are kept (`trusted_proxies`).
    trusted: Trusted,
    /// Each pool member's HTTPS address, by pool index (for `tcp` mode).
    pub targets: Vec<Option<SocketAddr>>,
    /// One line per HTTP request (TLS relayed in `tcp` mode is not seen here).
    log: AccessLog,
}

impl Live {
    /// Other servers tried after a failed connect.
    pub fn policy_retries(&self) -> u32 {
        self.policy.retries
    }

    /// The settings of `config` around `pool`, writing to `log` if it still goes
    /// where `config` says (else to the file it names, opened here).
    fn new(config: &Config, pool: Arc<Pool>, log: Option<&Live>) -> std::io::Result<Live> {
        let b = &config.balancer;
        let (path, format) = (config.access_log.as_deref(), config.log_format);
        let log = match log {
            Some(live) => live.log.reopened(path, format)?,
            None => AccessLog::open(path)?.with_format(format),
        };
        Ok(Live {
            pool,
            policy: Policy {
                retries: b.retries,
                unreachable: StatusCode::SERVICE_UNAVAILABLE,
                // The web servers enforce the site's body limit.
                max_body_bytes: None,
            },
            redirect_to: config.tls_port.filter(|_| b.https_redirect),
            trusted: Trusted::blocks(b.trusted_proxies.iter().copied()),
            targets: config.servers_tls.clone(),
            log,
        })
    }
}

impl LoadBalancer {
    /// Applies a reloaded configuration: the access log and the certificate first
    /// (the steps that can fail, leaving the settings as they were), then the new pool
    /// and settings in one swap.
    fn apply(&self, config: Config) -> Result<(), String> {
        let old = self.live.load_full();
        let b = &config.balancer;
        let pool = Arc::new(old.pool.reconfigured(
            config.servers.clone(),
            b.algorithm,
            b.health.clone(),
            b.timeouts.clone(),
            b.slowstart,
        ));
        let live = Live::new(&config, pool.clone(), Some(&old)).map_err(|e| e.to_string())?;
        if let (Some(cert), Some(files)) = (&self.cert, &config.tls) {
            cert.reload(files).map_err(|e| format!("{e:#}"))?;
        }
        pool.spawn_health_checks(self.checks_stop.clone());
        self.live.store(Arc::new(live));
        resize(&self.budget, b);
        old.pool.retire();
        self.dashboard.set_topology(config.topology.clone());
        // The peer (and `status`) now see this node run the new file.
        if let (Some(cluster), Some(membership)) = (self.cluster.get(), &config.cluster) {
            cluster.set_config_hash(membership.member.config_hash);
        }
        Ok(())
    }
}

impl Handler for LoadBalancer {
    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let start = Instant::now();
        self.metrics.request_started();
        let secure = req.extensions().get::<ConnInfo>().is_some_and(|c| c.secure);
        // The first hop: what the client claimed about itself goes, this hop's own
        // forwarding headers come in (after the client's `Connection` list is
        // applied, so it cannot name them), and then the request id.
        let live = self.live.load_full();
        let client = forwarding(req.headers_mut(), peer, secure, &live.trusted);
        net::trace::check(req.headers_mut());
        let request_id = self.ids.ensure(req.headers_mut());
        // For the dashboard's last server errors (cheap clones: shared bytes).
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let entry = live.log.begin(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            SocketAddr::new(client, peer.port()),
        );
        let answered_here = refuse_malformed(&req, &request_id).or_else(|| {
            let port = live.redirect_to.filter(|_| !secure)?;
            redirect(&req, port)
        });
        let mut resp = match answered_here {
            Some(resp) => resp,
            None => net::proxy::forward(&live.pool, req, peer, live.policy, &request_id).await,
        };
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        // The whole time at this hop, to the response head: what the web server
        // said it took, plus the network and this node's own work.
        net::timing::prepend(
            resp.headers_mut(),
            &[net::timing::Metric::new("lb", start.elapsed())],
        );
        let status = resp.status().as_u16();
        if status >= 500 {
            let id = request_id.to_str().unwrap_or("");
            self.metrics
                .server_error(status, method.as_str(), uri.path(), id);
        }
        let metrics = self.metrics.clone();
        resp.map(|body| {
            net::finish::on_finish(body, move |bytes| {
                metrics.request_finished(status, start.elapsed());
                entry.finish(status, bytes, Some(&request_id));
            })
        })
    }
}

/// 308 to the same URL on HTTPS, except for health checks and ACME challenges
/// (a certificate authority validates a new certificate over plain HTTP).
fn redirect(req: &Request<Incoming>, port: u16) -> Option<Response<Body>> {
    let path = req.uri().path();
    if path == "/healthz" || path.starts_with("/.well-known/acme-challenge/") {
        return None;
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("localhost");
    // Drop a port (keeping a bracketed IPv6 address whole).
    let host = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = HeaderValue::from_str(&format!("https://{host}{port}{target}")).ok()?;
    let mut resp = Response::new(net::empty());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(LOCATION, location);
    Some(resp)
}

impl net::admin::Report for LoadBalancer {
    fn metrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.metrics.render(&self.name, &mut out);
        self.live.load().pool.render_metrics(&self.name, &mut out);
        if let Some(cluster) = self.cluster.get() {
            cluster.render_metrics(&self.name, &mut out);
        }
        if let Some(beside) = &self.beside {
            beside.render_metrics(&self.name, &mut out);
        }
        out
    }

    async fn status(&self) -> serde_json::Value {
        let mut status = serde_json::json!({
            "node": self.name,
            "role": "lb",
            "pid": std::process::id(),
            "cluster": self.cluster.get().map(cluster::Cluster::status),
            "started": httpdate::fmt_http_date(self.started),
            "requests": self.metrics.requests_total(),
            "responses_by_class": self.metrics.by_class(),
            "connections_open": self.metrics.connections_open(),
            "backend": self.live.load().pool.status(),
            "recent_errors": self.metrics.recent_errors(),
        });
        if let Some(beside) = &self.beside {
            status[beside.name()] = beside.status();
        }
        status
    }

    async fn healthy(&self) -> bool {
        self.live.load().pool.any_up()
    }

    fn extra(&self, path: &str) -> Option<Response<Body>> {
        self.dashboard.route(path).or_else(|| {
            (path == "/stats" || path == "/")
                .then(|| stats::page(&self.name, &self.metrics, &self.live.load().pool))
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

/// Runs load balancer `config` on `listener` (clients), `tls_listener` (the HTTPS
/// frontend, if any) and `admin` (operators) until `shutdown`; then hands the
/// floating address over (in a cluster) and drains open connections.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    tls_listener: Option<TcpListener>,
    admin: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    serve_reloadable(
        config,
        listener,
        tls_listener,
        admin,
        shutdown,
        None,
        Hooks::default(),
    )
    .await
}

/// What the binary hooks into a load balancer beside its configuration: how this
/// process shares the node's place in the cluster with another process of the node
/// during `scaleup upgrade` (`net::handover`: the heartbeat sockets and the election are
/// one process's at a time), who watches whether it holds the floating address, and
/// what else it shows on its admin listener (the database failover decider).
#[derive(Default)]
pub struct Hooks {
    /// Resolves once the node's previous process has left the election and closed
    /// its heartbeat sockets; this process joins the cluster after it. `None`: at once.
    pub predecessor_released:
        Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    /// Told when this process, stopping, has left the election and closed its
    /// heartbeat sockets (at once when the node is in no cluster).
    pub released: Option<tokio::sync::oneshot::Sender<()>>,
    /// Set while this node holds the floating address (active), cleared when it
    /// stops holding it or starts leaving.
    pub active: Option<tokio::sync::watch::Sender<bool>>,
    /// Run beside the load balancer, shown in its `/status` and `/metrics`.
    pub beside: Option<Arc<dyn Beside>>,
}

/// Something the binary runs beside a load balancer (the database failover decider),
/// which knows nothing of it but shows it on its admin listener.
pub trait Beside: Send + Sync + 'static {
    /// Its key in `/status`.
    fn name(&self) -> &'static str;
    /// Its state, for `/status`.
    fn status(&self) -> serde_json::Value;
    /// Its metrics, in Prometheus text, for `/metrics`.
    fn render_metrics(&self, node: &str, out: &mut String);
}

/// [`serve`], taking `reloads` (`POST /reload` and whatever else fires their
/// trigger): the pool (servers, weights, algorithm, health checks, upstream
/// timeouts, slow start), retries, the redirect, `trusted_proxies`, each server's
/// HTTPS address, the access log and the certificate change in place. The rest of a
/// new [`Config`] is not looked at: the caller says what needs a restart.
pub async fn serve_reloadable(
    config: Config,
    listener: TcpListener,
    tls_listener: Option<TcpListener>,
    admin: TcpListener,
    shutdown: Shutdown,
    reloads: Option<net::reload::Reloads<Config>>,
    hooks: Hooks,
) -> anyhow::Result<()> {
    let b = &config.balancer;
    let pool = Arc::new(
        Pool::new(
            "web",
            config.servers.clone(),
            b.algorithm,
            b.health.clone(),
            b.timeouts.clone(),
        )
        .with_slow_start(b.slowstart),
    );
    // Listeners stop on `inner`, fired only after the cluster has handed over.
    let (inner_trigger, inner) = net::shutdown::channel();
    pool.spawn_health_checks(inner.clone());
    let has_https = tls_listener.is_some()
        || config
            .cluster
            .as_ref()
            .is_some_and(|c| c.tls_floating.is_some());
    let (tls, cert) = match (&config.tls, has_https) {
        (Some(files), true) => {
            let (tls, cert) = net::tls::live_server_config(files)?;
            (Some(tls), Some(cert))
        }
        _ => (None, None),
    };
    let lb = Arc::new(LoadBalancer {
        budget: budget(b),
        name: config.name.clone(),
        cluster: std::sync::OnceLock::new(),
        beside: hooks.beside.clone(),
        live: Arc::new(ArcSwap::from_pointee(Live::new(&config, pool, None)?)),
        ids: RequestIds::default(),
        metrics: Arc::new(Metrics::default()),
        started: SystemTime::now(),
        auth: net::admin::Auth::new(&config.name, config.admin_token.clone()),
        cert,
        reload: reloads.as_ref().map(|r| r.trigger.clone()),
        checks_stop: inner.clone(),
        dashboard: Arc::new(dashboard::Dashboard::new(
            &config.name,
            config.topology.clone(),
            inner.clone(),
        )),
    });
    let limits = Limits {
        budget: lb.budget.clone(),
        header_timeout: b.timeouts.client,
        keepalive_timeout: b.timeouts.keepalive,
        drain_timeout: b.timeouts.drain,
        ..Limits::default()
    };
    tracing::info!(
        node = %config.name,
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        dashboard = %format!("http://{}/dashboard", admin.local_addr()?),
        algorithm = b.algorithm.as_str(),
        "load balancer serving"
    );
    let https = match (tls, has_https) {
        (_, false) => None,
        (Some(tls), true) => Some(Https::Terminate(Transport {
            tls: Some(tls.into()),
            proxy_from: Vec::new(),
        })),
        (None, true) => Some(Https::Relay(Arc::new(passthrough::Relay {
            live: lb.live.clone(),
            budget: limits.budget.clone(),
            metrics: lb.metrics.clone(),
        }))),
    };
    let frontends = Arc::new(Frontends {
        lb: lb.clone(),
        https,
        limits: limits.clone(),
    });
    let tls_task = match tls_listener {
        None => None,
        Some(tls_listener) => {
            tracing::info!(
                node = %config.name,
                tls_listen = %tls_listener.local_addr()?,
                // `http`: TLS ends here; `tcp`: relayed to a web server.
                mode = if config.tls.is_some() { "http" } else { "tcp" },
                "load balancer serving HTTPS"
            );
            frontends.spawn_https(tls_listener, inner.clone())
        }
    };
    // The node's own listeners, admin and reloads; the HTTPS one may relay TLS, which
    // is not HTTP, so it is served above.
    let applier = lb.clone();
    let node_task = tokio::spawn(
        net::node::Node::new(
            lb.clone(),
            lb.metrics.clone(),
            limits.clone(),
            inner.clone(),
        )
        .reloads(reloads, move |config| applier.apply(config))
        .serve(net::node::Listeners {
            http: listener,
            https: None,
            admin,
        }),
    );

    // The cluster last: an upgraded node's new process serves its own listeners at
    // once, and joins the election when the old one has left it.
    let mut floating_task = None;
    if let Some(membership) = &config.cluster {
        if let Some(released) = hooks.predecessor_released {
            tokio::select! {
                _ = released => {}
                _ = shutdown.wait() => {}
            }
        }
        if !shutdown.is_triggered() {
            let member = cluster::Cluster::start(membership.member.clone())?;
            let _ = lb.cluster.set(member);
            floating_task = Some(floating::spawn(
                membership,
                frontends.clone(),
                inner,
                hooks.active.clone(),
            )?);
        }
    }

    shutdown.wait().await;
    if let Some(cluster) = lb.cluster.get() {
        tracing::info!("handing the floating address to the peer");
        cluster.leave(floating::HANDOVER_WAIT).await;
        // Out of the election now, not after the drain (relayed TLS connections can
        // take long): a new process of this node may join at once.
        cluster.stop().await;
    }
    if let Some(released) = hooks.released {
        let _ = released.send(());
    }
    inner_trigger.fire();
    if let Some(task) = floating_task {
        task.await?;
    }
    node_task.await??;
    if let Some(task) = tls_task {
        task.await??;
    }
    Ok(())
}

/// How the HTTPS frontend treats a connection.
enum Https {
    /// End TLS here (`http` mode).
    Terminate(Transport),
    /// Relay TLS to a web server (`tcp` mode).
    Relay(Arc<passthrough::Relay>),
}

/// Everything needed to start a frontend on a listener: the node's own listeners
/// at start, the floating address's whenever this node becomes active.
struct Frontends {
    lb: Arc<LoadBalancer>,
    https: Option<Https>,
    limits: Limits,
}

type Task = tokio::task::JoinHandle<std::io::Result<()>>;

impl Frontends {
    /// Serves plain HTTP on `listener` until `stop`.
    fn spawn_http(&self, listener: TcpListener, stop: Shutdown) -> Task {
        tokio::spawn(net::server::serve(
            listener,
            self.limits.clone(),
            self.lb.clone(),
            self.lb.metrics.clone(),
            stop,
        ))
    }

    /// Serves HTTPS on `listener` until `stop`, if this node has an HTTPS frontend.
    fn spawn_https(&self, listener: TcpListener, stop: Shutdown) -> Option<Task> {
        Some(match self.https.as_ref()? {
            Https::Terminate(transport) => tokio::spawn(net::server::serve_with(
                listener,
                transport.clone(),
                self.limits.clone(),
                self.lb.clone(),
                self.lb.metrics.clone(),
                stop,
            )),
            Https::Relay(relay) => tokio::spawn(passthrough::serve(
                listener,
                relay.clone(),
                stop,
                self.limits.drain_timeout,
            )),
        })
    }
}
