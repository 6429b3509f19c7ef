//! The stats page: HAProxy's table, one row a server, readable at a glance.

use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response};
use net::upstream::Pool;
use net::{Body, Metrics};

/// The stats page of load balancer `name`; it refreshes itself every 2 seconds.
pub fn page(name: &str, metrics: &Metrics, pool: &Pool) -> Response<Body> {
    let status = pool.status();
    let mut rows = String::new();
    for s in status["servers"].as_array().into_iter().flatten() {
        // `up`, `down`, `draining` (drained, requests still in flight) or `drained`.
        let state = s["state"].as_str().unwrap_or("down");
        let class = match state {
            "up" => "up",
            "down" => "down",
            _ => "drain",
        };
        rows.push_str(&format!(
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td></tr>\n",
            s["name"].as_str().unwrap_or("?"),
            s["addr"].as_str().unwrap_or("?"),
            state.to_uppercase(),
            s["weight"],
            s["effective_weight"],
            s["in_flight"],
            s["requests"],
            s["failures"],
            s["last_change"].as_str().unwrap_or(""),
            s["last_change_reason"].as_str().unwrap_or(""),
        ));
    }
    let [c1, c2, c3, c4, c5] = metrics.by_class();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
<title>{name} stats</title><style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}\
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}tr.up{{background:#e7f7e7}}tr.down{{background:#fbe3e3}}tr.drain{{background:#e3ebfb}}</style></head>\
<body><h1>{name}: load balancer</h1>\
<p>Algorithm <b>{algo}</b>, slow start {slowstart} ms. Responses: 1xx {c1}, 2xx {c2}, 3xx {c3}, 4xx {c4}, 5xx {c5}. Open connections: {conns}.</p>\
<table><tr><th>server</th><th>address</th><th>state</th><th>weight</th><th>weight now</th><th>in flight</th><th>requests</th><th>failures</th><th>last change</th></tr>\n{rows}</table>\
<p><a href=\"/metrics\">/metrics</a> · <a href=\"/status\">/status</a></p></body></html>",
        algo = status["algorithm"].as_str().unwrap_or("?"),
        slowstart = status["slowstart_ms"],
        conns = metrics.connections_open(),
    );
    let mut resp = Response::new(net::full(html));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
