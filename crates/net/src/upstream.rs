//! Upstream pools: the servers a proxy hop sends to, which of them are healthy, and
//! which one gets the next request.
//!
//! Health follows HAProxy's model: active checks every `interval`, `rise` good ones in
//! a row to come up, `fall` bad ones to go down. A refused connection, from a check
//! or from live traffic, takes a server down at once: the kernel has told us nobody
//! listens, so waiting for more evidence only sends more clients into the wall.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::Request;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use site::{Algorithm, HealthCheck, Timeouts};

use crate::{Body, Shutdown};

/// One server of a pool and what we know about it.
#[derive(Debug)]
pub struct Upstream {
    /// The server's node name, for logs and the stats page.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://addr`, prebuilt so a request's URI costs one concatenation.
    base_uri: String,
    /// Whether it receives traffic.
    up: AtomicBool,
    /// Good checks in a row while down (toward `rise`).
    good_streak: AtomicU32,
    /// Bad checks in a row while up (toward `fall`).
    bad_streak: AtomicU32,
    /// Requests being forwarded to it now (for `leastconn`).
    in_flight: AtomicUsize,
    /// Requests sent to it since start.
    requests: AtomicU64,
    /// Requests that failed at it (connect errors, bad responses, timeouts).
    failures: AtomicU64,
    /// Why its state last changed, and when: shown on `/status`.
    last_change: Mutex<(SystemTime, String)>,
}

impl Upstream {
    fn new(name: String, addr: SocketAddr) -> Upstream {
        Upstream {
            base_uri: format!("http://{addr}"),
            name,
            addr,
            up: AtomicBool::new(true),
            good_streak: AtomicU32::new(0),
            bad_streak: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_change: Mutex::new((SystemTime::now(), "starting, assumed up".into())),
        }
    }

    /// Whether the server receives traffic.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Requests being forwarded to it now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// `http://addr` + `path_and_query`.
    pub fn uri_for(&self, path_and_query: &str) -> String {
        let mut uri = String::with_capacity(self.base_uri.len() + path_and_query.len());
        uri.push_str(&self.base_uri);
        uri.push_str(path_and_query);
        uri
    }

    fn set_state(&self, up: bool, reason: String) {
        if self.up.swap(up, Relaxed) != up {
            if up {
                tracing::info!(server = %self.name, addr = %self.addr, "server is UP: {reason}");
            } else {
                tracing::warn!(server = %self.name, addr = %self.addr, "server is DOWN: {reason}");
            }
            *self.last_change.lock().expect("poisoned") = (SystemTime::now(), reason);
        }
    }

    /// Records a good check.
    fn check_passed(&self, rise: u32) {
        self.bad_streak.store(0, Relaxed);
        if !self.is_up() {
            let streak = self.good_streak.fetch_add(1, Relaxed) + 1;
            if streak >= rise {
                self.good_streak.store(0, Relaxed);
                self.set_state(true, format!("{streak} good checks in a row"));
            }
        }
    }

    /// Records a bad check or failed request; `at_once` skips the `fall` count.
    pub fn check_failed(&self, fall: u32, reason: &str, at_once: bool) {
        self.good_streak.store(0, Relaxed);
        if self.is_up() {
            let streak = self.bad_streak.fetch_add(1, Relaxed) + 1;
            if at_once || streak >= fall {
                self.bad_streak.store(0, Relaxed);
                let why = if at_once {
                    reason.to_string()
                } else {
                    format!("{streak} bad checks in a row, last: {reason}")
                };
                self.set_state(false, why);
            }
        }
    }
}

/// Keeps `in_flight` right even when a request is dropped midway.
pub struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A pool of servers with one balancing algorithm and one keep-alive client.
pub struct Pool {
    /// The pool's name (`web`, `app`), for logs and metrics.
    pub name: String,
    servers: Vec<Arc<Upstream>>,
    algorithm: Algorithm,
    /// Round-robin position, shared by all requests.
    cursor: AtomicUsize,
    /// Keep-alive connections to every server of the pool.
    client: Client<HttpConnector, Body>,
    health: HealthCheck,
    /// Connect, client and server timeouts.
    pub timeouts: Timeouts,
}

impl Pool {
    /// A pool of `servers` (name, address), all assumed up until checked.
    pub fn new(
        name: impl Into<String>,
        servers: Vec<(String, SocketAddr)>,
        algorithm: Algorithm,
        health: HealthCheck,
        timeouts: Timeouts,
    ) -> Pool {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Pool {
            name: name.into(),
            servers: servers
                .into_iter()
                .map(|(n, a)| Arc::new(Upstream::new(n, a)))
                .collect(),
            algorithm,
            cursor: AtomicUsize::new(0),
            client,
            health,
            timeouts,
        }
    }

    /// The servers, in configuration order.
    pub fn servers(&self) -> &[Arc<Upstream>] {
        &self.servers
    }

    /// The keep-alive client that talks to the servers.
    pub fn client(&self) -> &Client<HttpConnector, Body> {
        &self.client
    }

    /// How many consecutive bad checks take a server out.
    pub fn fall(&self) -> u32 {
        self.health.fall
    }

    /// Picks a healthy server for a request from `client`, skipping the indexes in
    /// `tried` (servers that already failed this request). `None` when no healthy
    /// server is left.
    pub fn pick(&self, client: IpAddr, tried: &[usize]) -> Option<(usize, InFlight)> {
        let n = self.servers.len();
        let usable = |i: usize| self.servers[i].is_up() && !tried.contains(&i);
        let index = match self.algorithm {
            Algorithm::RoundRobin => {
                let start = self.cursor.fetch_add(1, Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
            Algorithm::LeastConn => {
                // Rotate the starting point so ties spread instead of piling on server 0.
                let start = self.cursor.fetch_add(1, Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| usable(i))
                    .min_by_key(|&i| self.servers[i].in_flight())
            }
            Algorithm::Source => {
                // Hash over the whole list, then walk forward: a server going down
                // moves only its own clients.
                let start = (hash_ip(client) % n as u64) as usize;
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
        }?;
        let server = self.servers[index].clone();
        server.in_flight.fetch_add(1, Relaxed);
        server.requests.fetch_add(1, Relaxed);
        Some((index, InFlight(server)))
    }

    /// Records that a request failed at server `index`; a refused connection takes
    /// it down at once.
    pub fn report_failure(&self, index: usize, reason: &str, refused: bool) {
        let server = &self.servers[index];
        server.failures.fetch_add(1, Relaxed);
        if refused {
            server.check_failed(self.health.fall, reason, true);
        }
    }

    /// Whether any server is up.
    pub fn any_up(&self) -> bool {
        self.servers.iter().any(|s| s.is_up())
    }

    /// Runs the active health checks until `shutdown`.
    pub fn spawn_health_checks(self: &Arc<Self>, shutdown: Shutdown) {
        for server in &self.servers {
            let server = server.clone();
            let health = self.health.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(health.interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = shutdown.wait() => return,
                    }
                    match check(server.addr, &health).await {
                        Ok(()) => server.check_passed(health.rise),
                        // This node is short of descriptors or memory: that says
                        // nothing about the server, so it neither passes nor fails.
                        Err(CheckError {
                            reason,
                            local: true,
                            ..
                        }) => {
                            if let Some(n) = LOCAL_SHORTAGE.hit() {
                                tracing::warn!(
                                    server = %server.name,
                                    "{n} health check(s) in the last second could not \
                                     run: {reason}; the server's state is kept"
                                );
                            }
                        }
                        Err(CheckError {
                            reason, refused, ..
                        }) => server.check_failed(health.fall, &reason, refused),
                    }
                }
            });
        }
    }

    /// The pool as JSON for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let servers: Vec<serde_json::Value> = self
            .servers
            .iter()
            .map(|s| {
                let (when, why) = s.last_change.lock().expect("poisoned").clone();
                serde_json::json!({
                    "name": s.name,
                    "addr": s.addr.to_string(),
                    "up": s.is_up(),
                    "in_flight": s.in_flight(),
                    "requests": s.requests.load(Relaxed),
                    "failures": s.failures.load(Relaxed),
                    "last_change": httpdate::fmt_http_date(when),
                    "last_change_reason": why,
                })
            })
            .collect();
        serde_json::json!({
            "pool": self.name,
            "algorithm": self.algorithm.as_str(),
            "servers": servers,
        })
    }

    /// Appends the pool's health and counters in Prometheus text format.
    pub fn render_metrics(&self, node: &str, out: &mut String) {
        let pool = &self.name;
        let _ = writeln!(out, "# HELP scaleup_upstream_up Whether an upstream server receives traffic (1) or not (0).\n# TYPE scaleup_upstream_up gauge");
        for s in &self.servers {
            let _ = writeln!(
                out,
                "scaleup_upstream_up{{node=\"{node}\",pool=\"{pool}\",server=\"{}\"}} {}",
                s.name,
                u8::from(s.is_up())
            );
        }
        let _ = writeln!(out, "# HELP scaleup_upstream_requests_total Requests sent to an upstream server.\n# TYPE scaleup_upstream_requests_total counter");
        for s in &self.servers {
            let _ = writeln!(
                out,
                "scaleup_upstream_requests_total{{node=\"{node}\",pool=\"{pool}\",server=\"{}\"}} {}",
                s.name,
                s.requests.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP scaleup_upstream_failures_total Requests that failed at an upstream server.\n# TYPE scaleup_upstream_failures_total counter");
        for s in &self.servers {
            let _ = writeln!(
                out,
                "scaleup_upstream_failures_total{{node=\"{node}\",pool=\"{pool}\",server=\"{}\"}} {}",
                s.name,
                s.failures.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP scaleup_upstream_in_flight Requests being forwarded to an upstream server now.\n# TYPE scaleup_upstream_in_flight gauge");
        for s in &self.servers {
            let _ = writeln!(
                out,
                "scaleup_upstream_in_flight{{node=\"{node}\",pool=\"{pool}\",server=\"{}\"}} {}",
                s.name,
                s.in_flight()
            );
        }
    }
}

/// FNV-1a over the address bytes: cheap, stable across runs and processes, so both
/// load balancers send one client to the same server.
fn hash_ip(ip: IpAddr) -> u64 {
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

struct CheckError {
    reason: String,
    refused: bool,
    /// The check failed for want of a local resource, not because of the server.
    local: bool,
}

/// Checks that could not run for want of a local resource: one line a second.
static LOCAL_SHORTAGE: crate::budget::LogEvery = crate::budget::LogEvery::new();

/// One active check: a fresh connection (so a half-dead pooled one cannot fake
/// health), `GET path`, any 2xx or 3xx within the timeout is good.
async fn check(addr: SocketAddr, health: &HealthCheck) -> Result<(), CheckError> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| CheckError {
                refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
                local: crate::budget::is_local_exhaustion(&e),
                reason: format!("connect: {e}"),
            })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CheckError {
                refused: false,
                local: false,
                reason: format!("handshake: {e}"),
            })?;
        tokio::spawn(conn);
        let req = Request::get(health.path.as_str())
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONNECTION, "close")
            .header(http::header::USER_AGENT, "scaleup-health-check")
            .body(crate::empty())
            // `site` refuses such a path; should one get here, the check fails
            // visibly on `/status` instead of killing the checker.
            .map_err(|e| CheckError {
                refused: false,
                local: false,
                reason: format!(
                    "health path {:?} is not a valid request target: {e}",
                    health.path
                ),
            })?;
        let resp = sender.send_request(req).await.map_err(|e| CheckError {
            refused: false,
            local: false,
            reason: format!("request: {e}"),
        })?;
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(CheckError {
                refused: false,
                local: false,
                reason: format!("status {}", status.as_u16()),
            })
        }
    };
    match tokio::time::timeout(health.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(CheckError {
            refused: false,
            local: false,
            reason: format!("no answer within {:?}", health.timeout),
        }),
    }
}
