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
#![forbid(unsafe_code)]

mod floating;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use net::headers::{add_forwarded, RequestIds, X_REQUEST_ID};
use net::proxy::Policy;
use net::server::{Handler, Limits};
use net::upstream::Pool;
use net::{Body, Metrics, Shutdown};
use tokio::net::TcpListener;

/// Everything a load balancer needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name, for logs and metrics.
    pub name: String,
    /// The site's balancing settings.
    pub balancer: site::Balancer,
    /// The web servers of the pool: name and address.
    pub servers: Vec<(String, SocketAddr)>,
    /// The cluster this load balancer belongs to, if any.
    pub cluster: Option<floating::Membership>,
}

impl Config {
    /// The configuration of load balancer `name` of `site`.
    pub fn from_site(site: &site::Site, name: &str) -> anyhow::Result<Config> {
        anyhow::ensure!(
            site.lb(name).is_some(),
            "`{name}` is not a load balancer of this site"
        );
        let servers = site
            .balancer
            .servers
            .iter()
            .filter_map(|s| site.web(s).map(|w| (w.node.name.clone(), w.node.listen)))
            .collect();
        Ok(Config {
            name: name.to_string(),
            balancer: site.balancer.clone(),
            servers,
            cluster: floating::Membership::from_site(site, name)?,
        })
    }
}

/// The running load balancer: its pool and its counters.
struct LoadBalancer {
    name: String,
    cluster: Option<cluster::Cluster>,
    pool: Arc<Pool>,
    ids: RequestIds,
    metrics: Arc<Metrics>,
    policy: Policy,
    started: SystemTime,
}

impl Handler for LoadBalancer {
    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let start = Instant::now();
        self.metrics.request_started();
        let request_id = self.ids.ensure(req.headers_mut());
        add_forwarded(req.headers_mut(), peer, "http", false);
        let mut resp = net::proxy::forward(&self.pool, req, peer, self.policy, &request_id).await;
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        let status = resp.status().as_u16();
        let metrics = self.metrics.clone();
        resp.map(|body| {
            net::finish::on_finish(body, move |_| {
                metrics.request_finished(status, start.elapsed())
            })
        })
    }
}

impl net::admin::Report for LoadBalancer {
    fn metrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.metrics.render(&self.name, &mut out);
        self.pool.render_metrics(&self.name, &mut out);
        if let Some(cluster) = &self.cluster {
            cluster.render_metrics(&self.name, &mut out);
        }
        out
    }

    async fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.name,
            "role": "lb",
            "pid": std::process::id(),
            "cluster": self.cluster.as_ref().map(cluster::Cluster::status),
            "started": httpdate::fmt_http_date(self.started),
            "requests": self.metrics.requests_total(),
            "responses_by_class": self.metrics.by_class(),
            "connections_open": self.metrics.connections_open(),
            "backend": self.pool.status(),
        })
    }

    async fn healthy(&self) -> bool {
        self.pool.any_up()
    }

    fn extra(&self, path: &str) -> Option<Response<Body>> {
        (path == "/stats" || path == "/")
            .then(|| stats::page(&self.name, &self.metrics, &self.pool))
    }
}

/// Runs load balancer `config` on `listener` (clients) and `admin` (operators)
/// until `shutdown`; then hands the floating address over (in a cluster) and drains
/// open connections.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let b = &config.balancer;
    let pool = Arc::new(Pool::new(
        "web",
        config.servers.clone(),
        b.algorithm,
        b.health.clone(),
        b.timeouts.clone(),
    ));
    // Listeners stop on `inner`, fired only after the cluster has handed over.
    let (inner_trigger, inner) = net::shutdown::channel();
    pool.spawn_health_checks(inner.clone());
    let member = config
        .cluster
        .as_ref()
        .map(|m| cluster::Cluster::start(m.member.clone()))
        .transpose()?;
    let lb = Arc::new(LoadBalancer {
        name: config.name.clone(),
        cluster: member,
        pool,
        ids: RequestIds::default(),
        metrics: Arc::new(Metrics::default()),
        policy: Policy {
            retries: b.retries,
            unreachable: StatusCode::SERVICE_UNAVAILABLE,
        },
        started: SystemTime::now(),
    });
    let limits = Limits {
        max_connections: b.max_connections,
        header_timeout: b.timeouts.client,
        ..Limits::default()
    };
    tracing::info!(
        node = %config.name,
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        algorithm = b.algorithm.as_str(),
        "load balancer serving"
    );
    let floating_task = match &config.cluster {
        Some(membership) => Some(floating::spawn(
            membership,
            lb.clone(),
            limits.clone(),
            inner.clone(),
        )?),
        None => None,
    };
    let admin_task = tokio::spawn(net::admin::serve_admin(admin, lb.clone(), inner.clone()));
    let main_task = tokio::spawn(net::server::serve(
        listener,
        limits,
        lb.clone(),
        lb.metrics.clone(),
        inner,
    ));

    shutdown.wait().await;
    if let Some(cluster) = &lb.cluster {
        tracing::info!("handing the floating address to the peer");
        cluster.leave(floating::HANDOVER_WAIT).await;
    }
    inner_trigger.fire();
    if let Some(task) = floating_task {
        task.await?;
    }
    main_task.await??;
    admin_task.await??;
    Ok(())
}
