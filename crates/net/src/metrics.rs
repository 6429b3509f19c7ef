//! Request metrics in Prometheus text format, kept in atomics so recording a request
//! costs a few relaxed increments and no lock; and the last server errors, kept (under
//! a lock taken only for a 5xx) for `/status` and the dashboard.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Server errors a node remembers: enough for a person to pick one and trace it.
pub const KEPT_ERRORS: usize = 20;

/// One 5xx answer a node gave, for `/status` (`recent_errors`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerError {
    /// When, as an HTTP date.
    pub at: String,
    pub status: u16,
    pub method: String,
    /// The path only: a query may carry what should not be shown around.
    pub path: String,
    /// What `scaleup trace` follows.
    pub request_id: String,
}

/// Upper bounds of the latency histogram, in seconds: fine below 10 ms where a healthy
/// proxy hop lives, coarse above where only timeouts do.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One node's request counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class: 1xx..5xx at index 0..4.
    by_class: [AtomicU64; 5],
    /// Latency histogram counts; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of latencies in microseconds (Prometheus wants a sum next to the count).
    latency_sum_us: AtomicU64,
    /// Requests being answered now.
    in_flight: AtomicI64,
    /// Client connections open now.
    connections: AtomicI64,
    /// Client connections accepted since start.
    connections_total: AtomicU64,
    /// WebSocket tunnels open now.
    tunnels: AtomicI64,
    /// WebSocket tunnels opened since start.
    tunnels_total: AtomicU64,
    /// Tunnels closed because nothing moved for `timeouts.tunnel`.
    tunnels_idle_closed: AtomicU64,
    /// The last [`KEPT_ERRORS`] 5xx answers, oldest first.
    recent_errors: Mutex<VecDeque<ServerError>>,
}

impl Metrics {
    /// A request started.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// A request finished with `status` after `elapsed`.
    pub fn request_finished(&self, status: u16, elapsed: Duration) {
        self.in_flight.fetch_sub(1, Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Remembers a 5xx answer (the caller decides what counts: this takes a lock).
    pub fn server_error(&self, status: u16, method: &str, path: &str, request_id: &str) {
        let error = ServerError {
            at: httpdate::fmt_http_date(SystemTime::now()),
            status,
            method: method.to_string(),
            path: path.to_string(),
            request_id: request_id.to_string(),
        };
        let mut errors = self.recent_errors.lock().expect("poisoned");
        if errors.len() == KEPT_ERRORS {
            errors.pop_front();
        }
        errors.push_back(error);
    }

    /// The remembered 5xx answers, oldest first.
    pub fn recent_errors(&self) -> Vec<ServerError> {
        self.recent_errors
            .lock()
            .expect("poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// A client connection was accepted.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    /// A client connection closed.
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    /// A WebSocket tunnel opened.
    pub fn tunnel_opened(&self) {
        self.tunnels.fetch_add(1, Relaxed);
        self.tunnels_total.fetch_add(1, Relaxed);
    }

    /// A WebSocket tunnel closed; `idle`: for its idle timeout.
    pub fn tunnel_closed(&self, idle: bool) {
        self.tunnels.fetch_sub(1, Relaxed);
        if idle {
            self.tunnels_idle_closed.fetch_add(1, Relaxed);
        }
    }

    /// WebSocket tunnels open now.
    pub fn tunnels_open(&self) -> i64 {
        self.tunnels.load(Relaxed)
    }

    /// Requests answered so far, all classes.
    pub fn requests_total(&self) -> u64 {
        self.by_class.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Responses per class, `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub fn by_class(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.by_class[i].load(Relaxed))
    }

    /// Client connections open now.
    pub fn connections_open(&self) -> i64 {
        self.connections.load(Relaxed)
    }

    /// Appends this node's metrics in Prometheus text format, labelled with `node`.
    pub fn render(&self, node: &str, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP scaleup_requests_total Responses sent, by status class.\n# TYPE scaleup_requests_total counter"
        );
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let _ = writeln!(
                out,
                "scaleup_requests_total{{node=\"{node}\",class=\"{class}\"}} {}",
                self.by_class[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP scaleup_request_duration_seconds Time from request head to last response byte.\n# TYPE scaleup_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "scaleup_request_duration_seconds_bucket{{node=\"{node}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(
            out,
            "scaleup_request_duration_seconds_bucket{{node=\"{node}\",le=\"+Inf\"}} {cumulative}\n\
             scaleup_request_duration_seconds_sum{{node=\"{node}\"}} {}\n\
             scaleup_request_duration_seconds_count{{node=\"{node}\"}} {cumulative}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP scaleup_requests_in_flight Requests being answered now.\n# TYPE scaleup_requests_in_flight gauge\n\
             scaleup_requests_in_flight{{node=\"{node}\"}} {}\n\
             # HELP scaleup_connections_open Client connections open now.\n# TYPE scaleup_connections_open gauge\n\
             scaleup_connections_open{{node=\"{node}\"}} {}\n\
             # HELP scaleup_connections_total Client connections accepted.\n# TYPE scaleup_connections_total counter\n\
             scaleup_connections_total{{node=\"{node}\"}} {}",
            self.in_flight.load(Relaxed),
            self.connections.load(Relaxed),
            self.connections_total.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP scaleup_tunnels_open WebSocket tunnels open now.\n# TYPE scaleup_tunnels_open gauge\n\
             scaleup_tunnels_open{{node=\"{node}\"}} {}\n\
             # HELP scaleup_tunnels_total WebSocket tunnels opened.\n# TYPE scaleup_tunnels_total counter\n\
             scaleup_tunnels_total{{node=\"{node}\"}} {}\n\
             # HELP scaleup_tunnels_idle_closed_total WebSocket tunnels closed after timeouts.tunnel with no byte either way.\n# TYPE scaleup_tunnels_idle_closed_total counter\n\
             scaleup_tunnels_idle_closed_total{{node=\"{node}\"}} {}",
            self.tunnels.load(Relaxed),
            self.tunnels_total.load(Relaxed),
            self.tunnels_idle_closed.load(Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_classes_count() {
        let m = Metrics::default();
        for (status, ms) in [(200, 0), (200, 3), (404, 30), (503, 20_000)] {
            m.request_started();
            m.request_finished(status, Duration::from_millis(ms));
        }
        assert_eq!(m.by_class(), [0, 2, 0, 1, 1]);
        let mut out = String::new();
        m.render("t", &mut out);
        assert!(out.contains("scaleup_requests_total{node=\"t\",class=\"2xx\"} 2"));
        assert!(out.contains("le=\"0.005\"} 2"));
        assert!(out.contains("le=\"0.05\"} 3"));
        assert!(out.contains("le=\"10\"} 3"));
        assert!(out.contains("le=\"+Inf\"} 4"));
        assert!(out.contains("scaleup_requests_in_flight{node=\"t\"} 0"));
    }

    #[test]
    fn only_the_last_server_errors_are_kept() {
        let m = Metrics::default();
        for i in 0..KEPT_ERRORS + 3 {
            m.server_error(502, "GET", &format!("/p{i}"), &format!("rid-{i}"));
        }
        let kept = m.recent_errors();
        assert_eq!(kept.len(), KEPT_ERRORS);
        assert_eq!(kept[0].request_id, "rid-3");
        assert_eq!(kept[KEPT_ERRORS - 1].path, format!("/p{}", KEPT_ERRORS + 2));
        let json = serde_json::to_value(&kept[0]).unwrap();
        assert_eq!(json["status"], 502);
        assert!(json["at"].as_str().unwrap().ends_with("GMT"));
    }
}
