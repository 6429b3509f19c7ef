//! Upstream pools: the servers a proxy hop sends to, which of them are healthy, and
//! which one gets the next request.
//!
//! Health follows HAProxy's model: active checks every `interval`, `rise` good ones in
//! a row to come up, `fall` bad ones to go down. A refused connection, from a check
//! or from live traffic, takes a server down at once: the kernel has told us nobody
//! listens, so waiting for more evidence only sends more clients into the wall.
//!
//! Each server has a weight (its share of traffic). An operator can drain a server
//! (no new request goes to it, those in flight finish; it is still health-checked)
//! and make it ready again. A server made ready, or coming back up, starts with a
//! slow start: its effective weight grows linearly from almost nothing to its weight
//! over the pool's `slowstart`, as HAProxy's `slowstart` does, so a cold server (empty
//! caches, a JIT still warming) is not handed its whole share at once.
//!
//! Picking is one small [`Select`] implementation per algorithm, in Pingora's style:
//! the pool works out which servers may take the request and their effective
//! weights; the algorithm only chooses among them.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::Request;
use hyper_util::rt::TokioIo;

use crate::keepalive::Connections;
use crate::Shutdown;

/// How a pool member is picked (one [`Select`] impl each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Each server in turn, by weight (nginx's smooth weighted round robin).
    RoundRobin,
    /// The fewest requests in flight per weight: best when requests vary in cost.
    LeastConn,
    /// A hash of the client address: the same client lands on the same server.
    Source,
}

impl Algorithm {
    /// Its name, as the site file and the stats page write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "roundrobin",
            Algorithm::LeastConn => "leastconn",
            Algorithm::Source => "source",
        }
    }
}

/// Active health checks, as HAProxy does them: `rise` good checks in a row bring a
/// server in, `fall` bad ones take it out. A refused connection takes it out at once.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The path requested with `GET`; any 2xx or 3xx is good.
    pub path: String,
    /// Time between checks of one server.
    pub interval: Duration,
    /// How long one check may take before it counts as bad.
    pub timeout: Duration,
    /// Good checks in a row before a down server is used again.
    pub rise: u32,
    /// Bad checks in a row before an up server is taken out.
    pub fall: u32,
}

/// A proxying node's timeouts, named as HAProxy names them: the upstream ones are the
/// pool's, the client ones its listeners'.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Connecting to an upstream server.
    pub connect: Duration,
    /// A client sending its request head, and one not reading an answer (a write
    /// with no byte taken for this long ends the connection).
    pub client: Duration,
    /// An upstream server sending its response head.
    pub server: Duration,
    /// A kept-alive client connection with no request started, before it is closed.
    pub keepalive: Duration,
    /// An upgraded connection (a WebSocket) with no byte either way, before both sides
    /// are closed.
    pub tunnel: Duration,
    /// How long a stopping process lets its open connections finish.
    pub drain: Duration,
}

/// A server to put in a pool: what the configuration says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// The node's name, for logs, the stats page and `drain`/`ready`.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its share of traffic relative to the pool's other servers (1..=256).
    pub weight: u32,
}

impl From<(String, SocketAddr)> for Server {
    /// A server of weight 1, as every server is when the site file gives no weight.
    fn from((name, addr): (String, SocketAddr)) -> Server {
        Server {
            name,
            addr,
            weight: 1,
        }
    }
}

/// Effective weights are counted in 1/`WEIGHT_UNIT` of a configured weight, so that a
/// server of weight 1 can ramp up through a slow start in small steps.
const WEIGHT_UNIT: u64 = 1024;

/// One server of a pool and what we know about it.
#[derive(Debug)]
pub struct Upstream {
    /// The server's node name, for logs and the stats page.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Kept-alive connections to it.
    pub conns: Arc<Connections>,
    /// `addr` as a `Host` header, for a request that came without one.
    pub host_header: http::HeaderValue,
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
    /// Its configured weight (1..=256); a reload may change it.
    weight: AtomicU32,
    /// Taken out by an operator: no new request, health checks go on.
    drained: AtomicBool,
    /// When its slow start began, as nanoseconds since [`epoch`] plus one; 0 when it
    /// has its whole weight.
    ramp_start: AtomicU64,
    /// A hash of its name, for source hashing (stable across nodes and restarts).
    name_hash: u64,
}

/// The instant slow starts are measured from (atomics cannot hold an `Instant`).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`], plus one so that 0 can mean "none".
fn now_stamp() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

impl Upstream {
    fn new(server: Server) -> Upstream {
        let Server { name, addr, weight } = server;
        Upstream {
            conns: Arc::new(Connections::new(addr)),
            host_header: http::HeaderValue::from_str(&addr.to_string())
                .expect("a socket address is a valid header value"),
            name_hash: fnv1a(name.as_bytes()),
            weight: AtomicU32::new(weight.max(1)),
            drained: AtomicBool::new(false),
            ramp_start: AtomicU64::new(0),
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

    /// Its configured weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    /// Whether an operator has drained it.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Relaxed)
    }

    /// Takes it out of the pool: no new request goes to it, those in flight finish,
    /// health checks go on. Whether it was in the pool before.
    pub fn drain(&self) -> bool {
        let changed = !self.drained.swap(true, Relaxed);
        if changed {
            tracing::info!(server = %self.name, addr = %self.addr, "server is DRAINING: taken out by an operator");
            *self.last_change.lock().expect("poisoned") =
                (SystemTime::now(), "drained by an operator".into());
        }
        changed
    }

    /// Puts a drained server back, with a slow start. Whether it was drained.
    pub fn ready(&self) -> bool {
        let changed = self.drained.swap(false, Relaxed);
        if changed {
            self.ramp_start.store(now_stamp(), Relaxed);
            tracing::info!(server = %self.name, addr = %self.addr, "server is READY: back in the pool, slow start");
            *self.last_change.lock().expect("poisoned") =
                (SystemTime::now(), "made ready by an operator".into());
        }
        changed
    }

    /// Its weight now, in 1/[`WEIGHT_UNIT`]s: during a slow start of `slowstart`
    /// it grows linearly from 1 unit to the whole weight.
    fn effective_weight(&self, slowstart: Duration, now: u64) -> u64 {
        let full = u64::from(self.weight()) * WEIGHT_UNIT;
        let start = self.ramp_start.load(Relaxed);
        if start == 0 || slowstart.is_zero() {
            return full;
        }
        let elapsed = u128::from(now.saturating_sub(start));
        let total = slowstart.as_nanos();
        if elapsed >= total {
            // Over: later picks skip the arithmetic (unless a new ramp began since).
            let _ = self.ramp_start.compare_exchange(start, 0, Relaxed, Relaxed);
            return full;
        }
        u64::try_from(u128::from(full) * elapsed / total)
            .unwrap_or(full)
            .max(1)
    }

    fn set_state(&self, up: bool, reason: String) {
        if self.up.swap(up, Relaxed) != up {
            if up {
                // Back from down: it may have restarted cold, so it ramps up too.
                self.ramp_start.store(now_stamp(), Relaxed);
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

/// How one balancing algorithm chooses, given for each server of the pool (in
/// configuration order) its effective weight now, 0 for a server that may not take
/// this request (down, drained, or already tried by it).
trait Select: Send + Sync {
    fn select(&self, weights: &[u64], servers: &[Arc<Upstream>], client: IpAddr) -> Option<usize>;
}

/// nginx's smooth weighted round robin: each pick adds every server's weight to its
/// running score, takes the highest and subtracts the total from it. Weights 3:1 give
/// `a a b a`, not `a a a b`: no server gets a burst.
///
/// One set of scores for the node, behind a lock held for a few additions: the
/// sequence is the node's, not each thread's (two connections in a row go one to
/// each of two servers, whichever threads serve them). Scores per thread, as nginx
/// keeps them per worker, were tried: no measurable gain, and the node's picks were
/// no longer one smooth sequence.
struct SmoothRoundRobin {
    scores: Mutex<Vec<i64>>,
}

impl Select for SmoothRoundRobin {
    fn select(&self, weights: &[u64], _: &[Arc<Upstream>], _: IpAddr) -> Option<usize> {
        let mut scores = self.scores.lock().expect("poisoned");
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            let w = i64::try_from(w).unwrap_or(i64::MAX / 1024);
            scores[i] += w;
            total += w;
            if best.is_none_or(|b| scores[i] > scores[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        scores[best] -= total;
        Some(best)
    }
}

/// HAProxy's `leastconn`: the fewest requests in flight for its weight (compared as
/// (in flight + 1) / weight, so an idle heavy server beats an idle light one), ties
/// spread by a rotating start instead of piling on the first server.
struct LeastConn {
    cursor: AtomicUsize,
}

impl Select for LeastConn {
    fn select(&self, weights: &[u64], servers: &[Arc<Upstream>], _: IpAddr) -> Option<usize> {
        let n = weights.len();
        let start = self.cursor.fetch_add(1, Relaxed);
        let load = |i: usize| (servers[i].in_flight() as u128 + 1, u128::from(weights[i]));
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| weights[i] > 0)
            .reduce(|best, i| {
                let ((a, wa), (b, wb)) = (load(i), load(best));
                // a / wa < b / wb without division.
                if a * wb < b * wa {
                    i
                } else {
                    best
                }
            })
    }
}

/// Source hashing by weighted rendezvous (highest random weight): every server draws
/// a score from a hash of (client, server name), scaled by its weight; the highest
/// wins. A client keeps its server while that server is usable, a server leaving
/// moves only its own clients, weights are respected, and during a slow start clients
/// move to the ramping server a few at a time. Both load balancers compute the same.
struct SourceHash;

impl Select for SourceHash {
    fn select(&self, weights: &[u64], servers: &[Arc<Upstream>], client: IpAddr) -> Option<usize> {
        let client = hash_ip(client);
        let score = |i: usize| {
            let h = mix(client ^ servers[i].name_hash);
            // A uniform draw in (0, 1), never 0 so its logarithm is finite.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            weights[i] as f64 / -u.ln()
        };
        (0..weights.len())
            .filter(|&i| weights[i] > 0)
            .map(|i| (i, score(i)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }
}

/// A pool of servers with one balancing algorithm; each server keeps its own
/// kept-alive connections ([`Connections`]).
pub struct Pool {
    /// The pool's name (`web`, `app`), for logs and metrics.
    pub name: String,
    servers: Vec<Arc<Upstream>>,
    algorithm: Algorithm,
    selector: Box<dyn Select>,
    /// How long a server made ready or back up takes to reach its whole weight.
    slowstart: Duration,
    health: HealthCheck,
    /// Connect, client and server timeouts.
    pub timeouts: Timeouts,
    /// Fired when a reload replaced this pool: its health checks stop (the new pool
    /// checks the servers that stay).
    retired: tokio_util::sync::CancellationToken,
}

impl Pool {
    /// A pool of `servers` (a [`Server`], or a name and address for weight 1), all
    /// assumed up until checked, with no slow start (see [`Pool::with_slow_start`]).
    pub fn new<S: Into<Server>>(
        name: impl Into<String>,
        servers: Vec<S>,
        algorithm: Algorithm,
        health: HealthCheck,
        timeouts: Timeouts,
    ) -> Pool {
        let servers: Vec<Arc<Upstream>> = servers
            .into_iter()
            .map(|s| Arc::new(Upstream::new(s.into())))
            .collect();
        let selector: Box<dyn Select> = match algorithm {
            Algorithm::RoundRobin => Box::new(SmoothRoundRobin {
                scores: Mutex::new(vec![0; servers.len()]),
            }),
            Algorithm::LeastConn => Box::new(LeastConn {
                cursor: AtomicUsize::new(0),
            }),
            Algorithm::Source => Box::new(SourceHash),
        };
        Pool {
            name: name.into(),
            servers,
            algorithm,
            selector,
            slowstart: Duration::ZERO,
            health,
            timeouts,
            retired: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// The pool a reload makes of this one: `servers` with the other settings given.
    /// A server that stays (same name and address) is the same [`Upstream`], so it
    /// keeps its health, drain, slow start, requests in flight and kept-alive
    /// connections, and takes its new weight; a new server starts as in
    /// [`Pool::new`]; a removed one gets no new request from the new pool, while
    /// the requests it has finish (they hold the old pool). Start the new pool's
    /// health checks, swap it in, then [`Pool::retire`] this one.
    pub fn reconfigured(
        &self,
        servers: Vec<Server>,
        algorithm: Algorithm,
        health: HealthCheck,
        timeouts: Timeouts,
        slowstart: Duration,
    ) -> Pool {
        let mut pool = Pool::new(self.name.clone(), servers, algorithm, health, timeouts)
            .with_slow_start(slowstart);
        for server in &mut pool.servers {
            if let Some(old) = self
                .servers
                .iter()
                .find(|o| o.name == server.name && o.addr == server.addr)
            {
                old.weight.store(server.weight(), Relaxed);
                *server = old.clone();
            }
        }
        pool
    }

    /// Stops this pool's health checks: a reload replaced it.
    pub fn retire(&self) {
        self.retired.cancel();
    }

    /// The same pool, where a server made ready or back up ramps up to its weight
    /// over `slowstart` (zero: at once).
    pub fn with_slow_start(mut self, slowstart: Duration) -> Pool {
        self.slowstart = slowstart;
        self
    }

    /// The servers, in configuration order.
    pub fn servers(&self) -> &[Arc<Upstream>] {
        &self.servers
    }

    /// The server called `name`.
    pub fn server(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// How many consecutive bad checks take a server out.
    pub fn fall(&self) -> u32 {
        self.health.fall
    }

    /// Picks a healthy server for a request from `client`, skipping the indexes in
    /// `tried` (servers that already failed this request). `None` when no healthy
    /// server is left.
    pub fn pick(&self, client: IpAddr, tried: &[usize]) -> Option<(usize, InFlight)> {
        let now = now_stamp();
        let weights: Vec<u64> = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let usable = s.is_up() && !s.is_drained() && !tried.contains(&i);
                if usable {
                    s.effective_weight(self.slowstart, now)
                } else {
                    0
                }
            })
            .collect();
        let index = self.selector.select(&weights, &self.servers, client)?;
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

    /// Whether any server is up. Drained servers count: draining is an operator's
    /// choice, not a health verdict, and must not make a load balancer unhealthy and
    /// hand the floating address to a peer that may not have the drain.
    pub fn any_up(&self) -> bool {
        self.servers.iter().any(|s| s.is_up())
    }

    /// Runs the active health checks until `shutdown`.
    pub fn spawn_health_checks(self: &Arc<Self>, shutdown: Shutdown) {
        for server in &self.servers {
            let server = server.clone();
            let health = self.health.clone();
            let shutdown = shutdown.clone();
            let retired = self.retired.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(health.interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = shutdown.wait() => return,
                        _ = retired.cancelled() => return,
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

    /// One server as JSON for `/status` and `/servers/NAME`: health, whether it is
    /// drained, its weight and the share of it it has now (below the weight during a
    /// slow start), and its counters.
    pub fn server_status(&self, s: &Upstream) -> serde_json::Value {
        let (when, why) = s.last_change.lock().expect("poisoned").clone();
        let effective = s.effective_weight(self.slowstart, now_stamp());
        serde_json::json!({
            "name": s.name,
            "addr": s.addr.to_string(),
            "up": s.is_up(),
            "drained": s.is_drained(),
            "state": match (s.is_drained(), s.in_flight(), s.is_up()) {
                (true, 0, _) => "drained",
                (true, _, _) => "draining",
                (false, _, true) => "up",
                (false, _, false) => "down",
            },
            "weight": s.weight(),
            "effective_weight": (effective as f64 / WEIGHT_UNIT as f64 * 100.0).round() / 100.0,
            "in_flight": s.in_flight(),
            "requests": s.requests.load(Relaxed),
            "failures": s.failures.load(Relaxed),
            "last_change": httpdate::fmt_http_date(when),
            "last_change_reason": why,
        })
    }

    /// The pool as JSON for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let servers: Vec<serde_json::Value> =
            self.servers.iter().map(|s| self.server_status(s)).collect();
        serde_json::json!({
            "pool": self.name,
            "algorithm": self.algorithm.as_str(),
            "slowstart_ms": u64::try_from(self.slowstart.as_millis()).unwrap_or(u64::MAX),
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
        let _ = writeln!(out, "# HELP scaleup_upstream_drained Whether an operator has drained an upstream server (1) or not (0).\n# TYPE scaleup_upstream_drained gauge");
        for s in &self.servers {
            let _ = writeln!(
                out,
                "scaleup_upstream_drained{{node=\"{node}\",pool=\"{pool}\",server=\"{}\"}} {}",
                s.name,
                u8::from(s.is_drained())
            );
        }
        let now = now_stamp();
        let _ = writeln!(out, "# HELP scaleup_upstream_effective_weight An upstream server's weight now (below its configured weight during a slow start).\n# TYPE scaleup_upstream_effective_weight gauge");
        for s in &self.servers {
            let _ = writeln!(
                out,
                "scaleup_upstream_effective_weight{{node=\"{node}\",pool=\"{pool}\",server=\"{}\"}} {}",
                s.name,
                s.effective_weight(self.slowstart, now) as f64 / WEIGHT_UNIT as f64
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
    match ip.to_canonical() {
        IpAddr::V4(v4) => fnv1a(&v4.octets()),
        IpAddr::V6(v6) => fnv1a(&v6.octets()),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// SplitMix64's finaliser: FNV's low bits are poor, and rendezvous needs every bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(algorithm: Algorithm, weights: &[u32], slowstart: Duration) -> Pool {
        let servers: Vec<Server> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Server {
                name: format!("s{i}"),
                addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                weight,
            })
            .collect();
        let health = HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
        };
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            client: Duration::from_secs(1),
            server: Duration::from_secs(1),
            keepalive: Duration::from_secs(1),
            tunnel: Duration::from_secs(1),
            drain: Duration::from_secs(10),
        };
        Pool::new("test", servers, algorithm, health, timeouts).with_slow_start(slowstart)
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn a_reconfigured_pool_keeps_the_state_of_the_servers_that_stay() {
        let old = pool(Algorithm::RoundRobin, &[1, 1, 1], Duration::ZERO);
        // s0 drained, s1 down, s2 with a request in flight.
        old.servers()[0].drain();
        old.servers()[1].check_failed(1, "refused", true);
        let (index, in_flight) = old.pick(CLIENT, &[0, 1]).unwrap();
        assert_eq!(index, 2);
        let mut servers: Vec<Server> = old
            .servers()
            .iter()
            .map(|s| Server {
                name: s.name.clone(),
                addr: s.addr,
                weight: s.weight(),
            })
            .collect();
        servers.remove(1); // s1 leaves
        servers[1].weight = 5; // s2 reweighted
        servers.push(Server {
            name: "s9".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 9009)),
            weight: 2,
        });
        let new = old.reconfigured(
            servers,
            Algorithm::LeastConn,
            old.health.clone(),
            old.timeouts.clone(),
            Duration::ZERO,
        );
        let names: Vec<&str> = new.servers().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s0", "s2", "s9"]);
        assert!(Arc::ptr_eq(&new.servers()[0], &old.servers()[0]));
        assert!(new.servers()[0].is_drained(), "a drain survives a reload");
        assert_eq!(new.servers()[1].in_flight(), 1, "so do requests in flight");
        assert_eq!(new.servers()[1].weight(), 5);
        assert!(new.servers()[2].is_up() && !new.servers()[2].is_drained());
        assert_eq!(new.status()["algorithm"], "leastconn");
        // The request in flight to s2 ends through either pool.
        drop(in_flight);
        assert_eq!(new.servers()[1].in_flight(), 0);
        // The new pool never picks the drained s0 nor the removed s1.
        for _ in 0..10 {
            let (i, _) = new.pick(CLIENT, &[]).unwrap();
            assert_ne!(new.servers()[i].name, "s0");
        }
    }

    /// `count` picks (each released at once); the index picked each time.
    fn picks(pool: &Pool, count: usize) -> Vec<usize> {
        (0..count)
            .map(|_| pool.pick(CLIENT, &[]).expect("a server").0)
            .collect()
    }

    #[test]
    fn weighted_round_robin_spreads_3_to_1_smoothly() {
        let pool = pool(Algorithm::RoundRobin, &[3, 1], Duration::ZERO);
        let seq = picks(&pool, 400);
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 300);
        assert_eq!(seq.iter().filter(|&&i| i == 1).count(), 100);
        // Smooth: every run of 4 holds exactly one pick of the light server, so the
        // heavy one never gets more than 3 in a row.
        for window in seq.chunks(4) {
            assert_eq!(window.iter().filter(|&&i| i == 1).count(), 1, "{seq:?}");
        }
        assert_eq!(&seq[..4], &[0, 0, 1, 0], "nginx's order for 3:1");
        // Equal weights alternate, as plain round robin did.
        let pool = pool_equal();
        assert_eq!(picks(&pool, 6), vec![0, 1, 2, 0, 1, 2]);
    }

    fn pool_equal() -> Pool {
        pool(Algorithm::RoundRobin, &[1, 1, 1], Duration::ZERO)
    }

    #[test]
    fn a_drained_server_gets_no_new_request_and_its_in_flight_ones_finish() {
        let pool = pool(Algorithm::RoundRobin, &[1, 1], Duration::ZERO);
        let (first, held) = pool.pick(CLIENT, &[]).unwrap();
        assert_eq!(first, 0);
        let s0 = pool.server("s0").unwrap().clone();
        assert!(s0.drain(), "it was in the pool");
        assert!(!s0.drain(), "draining twice changes nothing");
        assert_eq!(pool.server_status(&s0)["state"], "draining");
        assert!(picks(&pool, 50).iter().all(|&i| i == 1), "no new request");
        assert_eq!(s0.in_flight(), 1, "the one in flight goes on");
        drop(held);
        assert_eq!(s0.in_flight(), 0);
        assert_eq!(pool.server_status(&s0)["state"], "drained");
        assert!(s0.is_up(), "draining is not a health verdict");
        // Both drained: nothing to pick, and the node says so.
        pool.server("s1").unwrap().drain();
        assert!(pool.pick(CLIENT, &[]).is_none());
        assert!(
            pool.any_up(),
            "drained is not down: no failover over a drain"
        );
        assert!(s0.ready() && !s0.ready());
        assert_eq!(picks(&pool, 3), vec![0, 0, 0]);
    }

    #[test]
    fn slow_start_ramps_the_weight_linearly() {
        let slowstart = Duration::from_secs(10);
        let pool = pool(Algorithm::RoundRobin, &[4, 4], slowstart);
        let s1 = pool.server("s1").unwrap().clone();
        s1.drain();
        s1.ready();
        let start = s1.ramp_start.load(Relaxed);
        let at = |secs: f64| s1.effective_weight(slowstart, start + (secs * 1e9) as u64);
        let full = 4 * WEIGHT_UNIT;
        assert_eq!(at(0.0), 1, "from almost nothing");
        assert_eq!(at(2.5), full / 4);
        assert_eq!(at(5.0), full / 2);
        assert_eq!(at(9.99), full * 999 / 1000);
        assert_eq!(at(10.0), full);
        assert_eq!(s1.ramp_start.load(Relaxed), 0, "the ramp is over");
        assert_eq!(at(1.0), full, "and stays over");
        // Without slow start the whole weight comes back at once.
        let none = pool_equal();
        let s = none.server("s1").unwrap();
        s.drain();
        s.ready();
        assert_eq!(s.effective_weight(Duration::ZERO, now_stamp()), WEIGHT_UNIT);
    }

    #[test]
    fn a_server_in_slow_start_gets_a_small_share_that_grows() {
        let pool = pool(Algorithm::RoundRobin, &[1, 1], Duration::from_millis(400));
        let s1 = pool.server("s1").unwrap().clone();
        s1.drain();
        s1.ready();
        let early = picks(&pool, 200).iter().filter(|&&i| i == 1).count();
        assert!(
            early < 40,
            "just ready: {early} of 200 (a fair share is 100)"
        );
        std::thread::sleep(Duration::from_millis(450));
        let late = picks(&pool, 200).iter().filter(|&&i| i == 1).count();
        assert!((95..=105).contains(&late), "ramped up: {late} of 200");
        assert_eq!(pool.server_status(&s1)["effective_weight"], 1.0);
    }

    #[test]
    fn leastconn_weighs_requests_in_flight() {
        let pool = pool(Algorithm::LeastConn, &[2, 1], Duration::ZERO);
        // Hold every request: the heavy server should carry twice the light one's.
        let held: Vec<(usize, InFlight)> =
            (0..9).map(|_| pool.pick(CLIENT, &[]).unwrap()).collect();
        let heavy = held.iter().filter(|(i, _)| *i == 0).count();
        assert_eq!(heavy, 6, "in flight: 6 on weight 2, 3 on weight 1");
        assert_eq!(pool.servers()[1].in_flight(), 3);
    }

    #[test]
    fn source_hashing_respects_weights_and_moves_only_a_drained_servers_clients() {
        let pool = pool(Algorithm::Source, &[3, 1], Duration::ZERO);
        let clients: Vec<IpAddr> = (0..4000u32)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i * 7)))
            .collect();
        let before: Vec<usize> = clients
            .iter()
            .map(|&c| pool.pick(c, &[]).unwrap().0)
            .collect();
        let heavy = before.iter().filter(|&&i| i == 0).count();
        assert!(
            (2800..=3200).contains(&heavy),
            "weight 3 of 4: {heavy} of 4000"
        );
        let again: Vec<usize> = clients
            .iter()
            .map(|&c| pool.pick(c, &[]).unwrap().0)
            .collect();
        assert_eq!(before, again, "a client keeps its server");
        pool.server("s1").unwrap().drain();
        for (c, was) in clients.iter().zip(&before) {
            assert_eq!(pool.pick(*c, &[]).unwrap().0, 0, "{c} was on {was}");
        }
    }
}
