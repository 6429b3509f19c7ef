//! The dashboard on the load balancers' admin listener: the site's topology as a
//! picture, live.
//!
//! - `GET /dashboard`: one HTML page with the picture ([`svg`], drawn here from the
//!   site file, so the page needs no script to draw it);
//! - `GET /dashboard.js`, `/dashboard.css`, `/dashboard/icon.svg`: its script, style
//!   and icon, as separate responses, so the page passes a `default-src 'self'`
//!   content security policy (which every dashboard response carries);
//! - `GET /dashboard/events`: server-sent events, one JSON snapshot a second.
//!
//! The snapshot is gathered by asking every node's admin listener for `/status` and
//! `/metrics`, in parallel with a short timeout, once a second, and only while at
//! least one event stream is open: nobody watching costs nothing. A node that does
//! not answer is shown down, with why. Rates (requests/s, error rate, p50/p99
//! latency) are the difference between two snapshots' counters and histograms.
//!
//! Server errors: each load balancer and web server keeps its last 5xx answers with
//! their request ids (`net::metrics`, on `/status` as `recent_errors`); the page
//! lists the newest of all. The web servers see every request that reaches the
//! application, HTTPS relayed as TLS included, and pass its 5xx on.

mod svg;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use net::{Body, Shutdown};
use serde_json::{json, Value};
use tokio::sync::watch;

/// How long the dashboard waits for one node's admin listener: well under the
/// second between snapshots, so a dead node never delays the others' news.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// Time between snapshots.
const PERIOD: Duration = Duration::from_secs(1);
/// Server errors the page lists, newest first.
const SHOWN_ERRORS: usize = 10;
/// Cluster and node events the page lists, newest first.
const KEPT_EVENTS: usize = 12;
/// Every dashboard response's policy: nothing from anywhere but this listener, no
/// inline script or style.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");
const ICON: &str = include_str!("icon.svg");

/// What the dashboard draws and asks: the site's nodes, from the site file.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// The site's public name, the page's title.
    pub site: String,
    /// The floating address, when the load balancers form a cluster.
    pub floating: Option<String>,
    /// The load balancers; `to`: the web servers of their pool.
    pub lbs: Vec<Member>,
    /// The web servers; `to`: their application servers.
    pub webs: Vec<Member>,
    /// The application servers; `to` is empty (they all use the database).
    pub apps: Vec<Member>,
    /// The database servers: the primary (or the embedded SQLite file) first.
    pub database: Vec<DbMember>,
}

/// One node as the dashboard knows it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its name in the site file.
    pub name: String,
    /// Where the other nodes reach it (shown on the picture).
    pub listen: SocketAddr,
    /// Its admin listener, which the dashboard asks.
    pub admin: SocketAddr,
    /// The nodes it sends requests to.
    pub to: Vec<String>,
}

/// One database server (the app servers report on it; it has no admin listener).
#[derive(Debug, Clone)]
pub struct DbMember {
    /// `primary`, `replica1`, ... (as the app's `/status` names them), or `sqlite`.
    pub name: String,
    /// What it does: `primary`, `replica` or `embedded`.
    pub role: String,
    /// Its address, or the SQLite file.
    pub address: String,
}

impl Topology {
    /// Every node with an admin listener, with its role.
    fn members(&self) -> impl Iterator<Item = (&'static str, &Member)> {
        self.lbs
            .iter()
            .map(|m| ("lb", m))
            .chain(self.webs.iter().map(|m| ("web", m)))
            .chain(self.apps.iter().map(|m| ("app", m)))
    }
}

/// The dashboard of one load balancer.
pub(crate) struct Dashboard {
    /// The load balancer serving it (the page says whose it is).
    me: String,
    /// The nodes and the page drawn from them, made once per site file: a reload
    /// that changes the nodes swaps both.
    drawn: ArcSwap<Drawn>,
    /// The latest snapshot as JSON; each open event stream holds a receiver, which
    /// is how the gatherer knows whether anyone watches.
    feed: watch::Sender<Option<Arc<str>>>,
    /// Whether the gatherer runs; taken with the feed's receiver count so that a
    /// stream opening as the gatherer stops always finds one running.
    running: Mutex<bool>,
    /// Ends the event streams and the gatherer when the node stops.
    stop: Shutdown,
}

impl Dashboard {
    /// The dashboard of load balancer `me`, until `stop`.
    pub(crate) fn new(me: &str, topology: Topology, stop: Shutdown) -> Dashboard {
        Dashboard {
            me: me.to_string(),
            drawn: ArcSwap::from_pointee(Drawn::new(me, topology)),
            feed: watch::Sender::new(None),
            running: Mutex::new(false),
            stop,
        }
    }

    /// The response for an admin path that is the dashboard's, else `None`.
    pub(crate) fn route(self: &Arc<Self>, path: &str) -> Option<Response<Body>> {
        Some(match path {
            "/dashboard" | "/dashboard/" => {
                typed("text/html; charset=utf-8", self.drawn.load().page.clone())
            }
            "/dashboard.js" => typed("text/javascript; charset=utf-8", SCRIPT.into()),
            "/dashboard.css" => typed("text/css; charset=utf-8", STYLE.into()),
            "/dashboard/icon.svg" => typed("image/svg+xml", ICON.into()),
            "/dashboard/events" => self.events(),
            _ => return None,
        })
    }

    /// Takes the nodes of a reloaded site file: the next snapshot asks them, and a
    /// page loaded from now on draws them (an open page says it should be reloaded).
    pub(crate) fn set_topology(&self, topology: Topology) {
        if format!("{topology:?}") != format!("{:?}", self.drawn.load().topology) {
            self.drawn.store(Arc::new(Drawn::new(&self.me, topology)));
        }
    }

    /// The event stream: `retry` (EventSource reconnects after a second), the last
    /// snapshot at once if there is one, then each new one, until the client goes or
    /// the node stops.
    fn events(self: &Arc<Self>) -> Response<Body> {
        let rx = {
            let mut running = self.running.lock().expect("poisoned");
            let rx = self.feed.subscribe();
            if !*running {
                *running = true;
                tokio::spawn(self.clone().gather_while_watched());
            }
            rx
        };
        let stream = futures_util::stream::unfold(
            (rx, self.stop.clone(), true),
            |(mut rx, stop, first)| async move {
                let mut chunk = String::new();
                if first {
                    chunk.push_str("retry: 1000\n\n");
                    if let Some(event) = rx.borrow_and_update().clone() {
                        chunk.push_str(&format!("data: {event}\n\n"));
                    }
                } else {
                    loop {
                        tokio::select! {
                            changed = rx.changed() => changed.ok()?,
                            _ = stop.wait() => return None,
                        }
                        if let Some(event) = rx.borrow_and_update().clone() {
                            chunk = format!("data: {event}\n\n");
                            break;
                        }
                    }
                }
                let frame = hyper::body::Frame::data(Bytes::from(chunk));
                Some((Ok::<_, net::BoxError>(frame), (rx, stop, false)))
            },
        );
        let mut resp = Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
        headers(&mut resp, "text/event-stream");
        resp
    }

    /// Gathers a snapshot a second while an event stream is open.
    async fn gather_while_watched(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut memory = Memory::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.wait() => break,
            }
            {
                let mut running = self.running.lock().expect("poisoned");
                if self.feed.receiver_count() == 0 {
                    // The next watcher must not be shown this old news first.
                    self.feed.send_replace(None);
                    *running = false;
                    return;
                }
            }
            let drawn = self.drawn.load_full();
            let probes = probe_all(&drawn.topology).await;
            let snapshot = memory.snapshot(&drawn.topology, &self.me, &probes, Instant::now());
            self.feed
                .send_replace(Some(Arc::from(snapshot.to_string().as_str())));
        }
        let mut running = self.running.lock().expect("poisoned");
        self.feed.send_replace(None);
        *running = false;
    }
}

/// The nodes, and the page that draws them.
struct Drawn {
    topology: Topology,
    page: String,
}

impl Drawn {
    fn new(me: &str, topology: Topology) -> Drawn {
        Drawn {
            page: page(me, &topology),
            topology,
        }
    }
}

/// What one node's admin listener said.
#[derive(Debug, Clone, Default)]
pub(crate) struct Probe {
    /// Its `/status`, or `None` when it did not answer.
    status: Option<Value>,
    /// Its `/metrics` text, if it answered.
    metrics: Option<String>,
    /// Why it is shown down.
    error: Option<String>,
}

/// Asks every node at once; each answer by node name.
async fn probe_all(topology: &Topology) -> BTreeMap<String, Probe> {
    let mut set = tokio::task::JoinSet::new();
    for (_, m) in topology.members() {
        let (name, admin) = (m.name.clone(), m.admin);
        set.spawn(async move {
            let (status, metrics) = tokio::join!(get(admin, "/status"), get(admin, "/metrics"));
            let probe = match status {
                Ok(body) => Probe {
                    status: Some(serde_json::from_str(&body).unwrap_or(Value::Null)),
                    metrics: metrics.ok(),
                    error: None,
                },
                Err(why) => Probe {
                    error: Some(why),
                    ..Probe::default()
                },
            };
            (name, probe)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(done) = set.join_next().await {
        if let Ok((name, probe)) = done {
            out.insert(name, probe);
        }
    }
    out
}

/// `GET path` on a node's admin listener, within [`PROBE_TIMEOUT`]; the body of a 200.
/// The connection is driven inside this future (not spawned), so a node that hangs
/// leaves nothing behind when the timeout drops it.
async fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| format!("admin {addr}: {e}");
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| fail(&e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| fail(&e))?;
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::CONNECTION, "close")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| fail(&e))?;
        let exchange = async {
            let resp = sender.send_request(req).await.map_err(|e| fail(&e))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| fail(&e))?;
            if status != StatusCode::OK {
                return Err(format!("admin {addr}{path} answered {status}"));
            }
            Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
        };
        tokio::pin!(conn);
        tokio::pin!(exchange);
        tokio::select! {
            result = &mut exchange => result,
            // The connection ended first: the exchange has its answer or never will.
            ended = &mut conn => match ended {
                Ok(()) => exchange.await,
                Err(e) => Err(fail(&e)),
            },
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no answer from admin {addr} within {PROBE_TIMEOUT:?}"))?
}

/// One node's counters at one moment, to compute rates against the next.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    requests: u64,
    server_errors: u64,
    /// The latency histogram's cumulative buckets: (upper bound in seconds, count).
    buckets: Vec<(f64, u64)>,
}

/// What the gatherer remembers between snapshots.
#[derive(Debug, Default)]
struct Memory {
    samples: BTreeMap<String, Sample>,
    /// Whether each node answered last time, to note when one stops or comes back.
    answered: BTreeMap<String, bool>,
    /// Events seen so far (the cluster's transitions, nodes going down and up),
    /// keyed by (time, node, text) so each is listed once however often it is seen.
    events: BTreeMap<(i64, String, String), Value>,
}

impl Memory {
    /// The snapshot the page shows, from `probes` taken at `now` by `me`.
    fn snapshot(
        &mut self,
        topology: &Topology,
        me: &str,
        probes: &BTreeMap<String, Probe>,
        now: Instant,
    ) -> Value {
        let empty = Probe::default();
        let probe = |name: &str| probes.get(name).unwrap_or(&empty);
        let wall = SystemTime::now();

        // Node events the dashboard itself sees: a node stops or starts answering.
        for (_, m) in topology.members() {
            let up = probe(&m.name).status.is_some();
            if let Some(was) = self.answered.insert(m.name.clone(), up) {
                if was != up {
                    let text = if up {
                        "answers again".to_string()
                    } else {
                        format!(
                            "stopped answering ({})",
                            probe(&m.name).error.as_deref().unwrap_or("?")
                        )
                    };
                    self.remember(wall, &m.name, text);
                }
            }
        }
        // The cluster's transitions, from every load balancer that answers.
        for lb in &topology.lbs {
            let Some(status) = &probe(&lb.name).status else {
                continue;
            };
            for t in status["cluster"]["transitions"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let at = t["at"]
                    .as_str()
                    .and_then(|s| httpdate::parse_http_date(s).ok())
                    .unwrap_or(wall);
                let text = format!(
                    "{} → {}: {}",
                    t["from"].as_str().unwrap_or("?"),
                    t["to"].as_str().unwrap_or("?"),
                    t["reason"].as_str().unwrap_or("")
                );
                self.remember(at, &lb.name, text);
            }
        }
        while self.events.len() > KEPT_EVENTS {
            self.events.pop_first();
        }

        let mut nodes = Vec::new();
        for (role, m) in topology.members() {
            let p = probe(&m.name);
            let rates = match (&p.status, &p.metrics) {
                (Some(status), metrics) => {
                    let sample = Sample::read(status, metrics.as_deref(), now);
                    let rates = self
                        .samples
                        .get(&m.name)
                        .map(|prev| Rates::between(prev, &sample));
                    self.samples.insert(m.name.clone(), sample);
                    rates
                }
                (None, _) => {
                    self.samples.remove(&m.name);
                    None
                }
            };
            nodes.push(node_view(topology, role, m, p, probes, rates));
        }

        let lbs: Vec<Value> = topology
            .lbs
            .iter()
            .map(|lb| {
                let status = probe(&lb.name).status.as_ref();
                json!({
                    "name": lb.name,
                    "role": status
                        .map(|s| s["cluster"]["role"].as_str().unwrap_or("alone"))
                        .unwrap_or("down"),
                    "peer": status.map(|s| s["cluster"]["peer"].clone()),
                })
            })
            .collect();
        let active: Vec<&str> = lbs
            .iter()
            .filter(|l| l["role"] == "active")
            .filter_map(|l| l["name"].as_str())
            .collect();
        let errors: Vec<Value> = {
            let mut all: Vec<Value> = topology
                .lbs
                .iter()
                .chain(&topology.webs)
                .filter_map(|m| Some((m, probe(&m.name).status.as_ref()?)))
                .flat_map(|(m, s)| {
                    let errors = s["recent_errors"].as_array().cloned().unwrap_or_default();
                    errors.into_iter().map(|mut e| {
                        e["node"] = json!(m.name);
                        e
                    })
                })
                .collect();
            all.sort_by_key(|e| {
                e["at"]
                    .as_str()
                    .and_then(|s| httpdate::parse_http_date(s).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            });
            all.into_iter().rev().take(SHOWN_ERRORS).collect()
        };
        json!({
            "at": httpdate::fmt_http_date(wall),
            "served_by": me,
            "cluster": {
                "floating": topology.floating,
                "active": active,
                "lbs": lbs,
                "events": self.events.values().rev().cloned().collect::<Vec<Value>>(),
            },
            "nodes": nodes,
            "database": database_view(topology, probes),
            "errors": errors,
        })
    }

    fn remember(&mut self, at: SystemTime, node: &str, text: String) {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.events
            .entry((secs, node.to_string(), text.clone()))
            .or_insert_with(
                || json!({ "at": httpdate::fmt_http_date(at), "node": node, "text": text }),
            );
    }
}

impl Sample {
    /// The counters in a node's `/status` and the latency histogram in its `/metrics`.
    fn read(status: &Value, metrics: Option<&str>, at: Instant) -> Sample {
        Sample {
            at,
            requests: status["requests"].as_u64().unwrap_or(0),
            server_errors: status["responses_by_class"][4].as_u64().unwrap_or(0),
            buckets: metrics.map(histogram).unwrap_or_default(),
        }
    }
}

/// The cumulative buckets of `scaleup_request_duration_seconds` in Prometheus text.
fn histogram(text: &str) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("scaleup_request_duration_seconds_bucket{")?;
            let (labels, value) = rest.split_once('}')?;
            let le = labels.split(',').find_map(|l| l.strip_prefix("le=\""))?;
            let le = le.trim_end_matches('"');
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, value.trim().parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// A node's traffic between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rates {
    per_second: f64,
    /// 5xx answers over all answers (0 when there were none).
    error_rate: f64,
    /// Latency quantiles in milliseconds, when there were requests to measure.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Rates {
    /// From `prev` to `now`; a counter that went back (the node restarted) counts
    /// from zero.
    fn between(prev: &Sample, now: &Sample) -> Rates {
        let restarted = now.requests < prev.requests;
        let base = |p: u64, n: u64| if restarted { n } else { n.saturating_sub(p) };
        let secs = now.at.duration_since(prev.at).as_secs_f64().max(1e-3);
        let requests = base(prev.requests, now.requests);
        let errors = base(prev.server_errors, now.server_errors);
        let delta: Vec<(f64, u64)> = now
            .buckets
            .iter()
            .map(|&(bound, n)| {
                let p = prev
                    .buckets
                    .iter()
                    .find(|(b, _)| *b == bound)
                    .map_or(0, |(_, c)| *c);
                (bound, base(p, n))
            })
            .collect();
        Rates {
            per_second: requests as f64 / secs,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            p50_ms: quantile(&delta, 0.5).map(|s| s * 1e3),
            p99_ms: quantile(&delta, 0.99).map(|s| s * 1e3),
        }
    }
}

/// The `q` quantile of cumulative buckets, interpolated within its bucket as
/// Prometheus's `histogram_quantile` does; `None` with no observation. In the
/// `+Inf` bucket it is the largest finite bound (all one can say).
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let inside = (count - below) as f64;
            let frac = if inside == 0.0 {
                1.0
            } else {
                (rank - below as f64) / inside
            };
            return Some(lower + (bound - lower) * frac);
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
}

/// One node as the page shows it.
fn node_view(
    topology: &Topology,
    role: &str,
    m: &Member,
    p: &Probe,
    probes: &BTreeMap<String, Probe>,
    rates: Option<Rates>,
) -> Value {
    // What the nodes balancing to this one think of it: the load balancers' web
    // pool, the web servers' app pool.
    let (balancers, key): (&[Member], &str) = match role {
        "web" => (&topology.lbs, "backend"),
        "app" => (&topology.webs, "upstream"),
        _ => (&[], ""),
    };
    let checks: Vec<Value> = balancers
        .iter()
        .filter_map(|b| {
            let status = probes.get(&b.name)?.status.as_ref()?;
            let server = status[key]["servers"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == m.name.as_str())?;
            Some(json!({
                "by": b.name,
                "state": server["state"],
                "reason": server["last_change_reason"],
                "in_flight": server["in_flight"],
            }))
        })
        .collect();
    let state = match &p.status {
        None => "down",
        Some(_)
            if checks
                .iter()
                .any(|c| c["state"] == "draining" || c["state"] == "drained") =>
        {
            "draining"
        }
        Some(_) if !checks.is_empty() && checks.iter().all(|c| c["state"] == "down") => "failing",
        Some(_) => "up",
    };
    let status = p.status.as_ref();
    json!({
        "name": m.name,
        "role": role,
        "state": state,
        "error": p.error,
        "cluster_role": status.and_then(|s| s["cluster"]["role"].as_str()),
        "requests_per_second": rates.map(|r| round2(r.per_second)),
        "error_rate": rates.map(|r| round2(r.error_rate * 100.0) / 100.0),
        "p50_ms": rates.and_then(|r| r.p50_ms).map(round2),
        "p99_ms": rates.and_then(|r| r.p99_ms).map(round2),
        "connections_open": status.and_then(|s| s["connections_open"].as_i64()),
        "checks": checks,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The database as the first application server that answers reports it.
/// The automatic database failover as the deciding load balancer tells it (its
/// `database_failover` in `/status`), or `null` when no load balancer decides.
fn failover_view(topology: &Topology, probes: &BTreeMap<String, Probe>) -> Value {
    topology
        .lbs
        .iter()
        .find_map(|lb| {
            let status = probes.get(&lb.name)?.status.as_ref()?;
            let failover = &status["database_failover"];
            (failover["deciding"] == true).then(|| {
                let mut view = failover.clone();
                view["decided_by"] = json!(lb.name);
                view
            })
        })
        .unwrap_or(Value::Null)
}

fn database_view(topology: &Topology, probes: &BTreeMap<String, Probe>) -> Value {
    let reporter = topology.apps.iter().find_map(|a| {
        let status = probes.get(&a.name)?.status.as_ref()?;
        Some((a.name.as_str(), &status["database"]))
    });
    let Some((by, db)) = reporter else {
        return json!({
            "reported_by": null,
            "healthy": null,
            "servers": topology.database.iter().map(|d| json!({
                "name": d.name, "role": d.role, "state": "unknown",
            })).collect::<Vec<Value>>(),
        });
    };
    let reported = db["servers"].as_array().cloned().unwrap_or_default();
    let servers: Vec<Value> = topology
        .database
        .iter()
        .map(|d| {
            let found = reported.iter().find(|s| s["name"] == d.name.as_str());
            match found {
                // The embedded file: healthy when the app reads it.
                None if d.role == "embedded" => json!({
                    "name": d.name,
                    "role": d.role,
                    "state": if db["healthy"] == true { "up" } else { "down" },
                }),
                None => json!({ "name": d.name, "role": d.role, "state": "unknown" }),
                Some(s) => json!({
                    "name": d.name,
                    // As the application sees it now: a failover moves the roles.
                    "role": s["role"].as_str().unwrap_or(&d.role),
                    "state": match (s["healthy"].as_bool(), s["usable"].as_bool()) {
                        (Some(true), Some(false)) => "lagging",
                        (Some(true), _) => "up",
                        _ => "down",
                    },
                    "lag_seconds": s["lag_seconds"],
                    "reads": s["reads"],
                    "writes": s["writes"],
                    "read_your_writes_fallbacks": s["read_your_writes_fallbacks"],
                    "problem": s["problem"],
                }),
            }
        })
        .collect();
    json!({
        "reported_by": by,
        "failover": failover_view(topology, probes),
        "healthy": db["healthy"],
        "users": db["users"],
        "posts": db["posts"],
        "error": db["error"],
        "servers": servers,
    })
}

/// The page: the picture, and empty panels the script fills from the events.
fn page(me: &str, topology: &Topology) -> String {
    let me = svg::escape(me);
    let site = svg::escape(&topology.site);
    let picture = svg::render(topology);
    // Where to go when this node stops: the other load balancers' dashboards (a
    // link: the event stream itself cannot follow to another origin).
    let peers: Vec<String> = topology
        .lbs
        .iter()
        .filter(|l| svg::escape(&l.name) != me && !l.admin.ip().is_unspecified())
        .map(|l| {
            let name = svg::escape(&l.name);
            format!(
                r#"<a href="http://{}/dashboard">{name}'s dashboard</a>"#,
                l.admin
            )
        })
        .collect();
    let peers = if peers.is_empty() {
        String::new()
    } else {
        format!(
            r#"<p id="peers" hidden>Meanwhile: {}</p>"#,
            peers.join(", ")
        )
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{site}: dashboard ({me})</title>
<link rel="icon" href="/dashboard/icon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/dashboard.css">
<script src="/dashboard.js" defer></script>
</head>
<body data-node="{me}">
<header>
<h1>{site}</h1>
<p id="stale" class="lost" hidden>The site's nodes changed (a reload): reload this page for the new picture.</p>
<p>dashboard served by <b>{me}</b> · <span id="contact" class="waiting">connecting to {me}…</span> · <span id="at"></span></p>
{peers}
</header>
<main>
<section class="picture">{picture}</section>
<section class="panels">
<div class="panel"><h2>Load balancers</h2><p id="active">floating address: waiting for news</p><table id="lbs"><thead><tr><th>node</th><th>role</th><th>its peer</th></tr></thead><tbody></tbody></table><h3>Recent events</h3><ul id="events"><li>none seen yet</li></ul></div>
<div class="panel"><h2>Nodes</h2><table id="nodes"><thead><tr><th>node</th><th>state</th><th>req/s</th><th>5xx</th><th>p50</th><th>p99</th><th>conns</th><th>health checks</th></tr></thead><tbody></tbody></table></div>
<div class="panel"><h2>Database</h2><p id="db-summary">waiting for news</p><p id="db-failover"></p><table id="db"><thead><tr><th>server</th><th>role</th><th>state</th><th>lag</th><th>reads</th><th>writes</th><th>read-your-writes fallbacks</th></tr></thead><tbody></tbody></table></div>
<div class="panel"><h2>Last server errors</h2><p class="note">The newest 5xx answers of the load balancers and web servers, with their request ids (<code>scaleup trace ID</code> follows one).</p><ul id="errors"><li>none</li></ul></div>
</section>
</main>
</body>
</html>
"#
    )
}

fn typed(content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(net::full(body));
    headers(&mut resp, content_type);
    resp
}

fn headers(resp: &mut Response<Body>, content_type: &'static str) {
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

#[cfg(test)]
mod tests;
