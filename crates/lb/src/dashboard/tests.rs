use super::*;

/// The default site's nodes, on ports from 20000, with a MariaDB tier.
fn topology() -> Topology {
    let member = |name: &str, port: u16, to: &[&str]| Member {
        name: name.into(),
        listen: ([127, 0, 0, 1], port).into(),
        admin: ([127, 0, 0, 1], port + 10).into(),
        to: to.iter().map(|t| t.to_string()).collect(),
    };
    let mut t = Topology {
        site: "www.foobar.com".into(),
        floating: Some("127.0.0.1:20000".into()),
        lbs: vec![
            member("lb1", 20001, &["web1"]),
            member("lb2", 20002, &["web1"]),
        ],
        webs: vec![member("web1", 20003, &["app1"])],
        apps: vec![member("app1", 20004, &[])],
        database: Vec::new(),
    };
    t.database = ["primary", "replica1"]
        .iter()
        .map(|n| DbMember {
            name: n.to_string(),
            role: if *n == "primary" {
                "primary"
            } else {
                "replica"
            }
            .into(),
            address: "127.0.0.1:3306".into(),
        })
        .collect();
    t
}

/// Checks that `svg` is well-formed as far as a picture needs: every tag opened is
/// closed in order, attributes are quoted, no stray `&` or `<`.
fn well_formed(svg: &str) {
    let mut open: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(at) = rest.find('<') {
        let text = &rest[..at];
        assert!(!text.contains('>'), "stray '>' in text: {text:?}");
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                    .iter()
                    .any(|e| entity.starts_with(e)),
                "bare & in {text:?}"
            );
        }
        let end = rest[at..].find('>').expect("unclosed tag") + at;
        let tag = &rest[at + 1..end];
        assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap().to_string();
            open.push(name);
        }
        rest = &rest[end + 1..];
    }
    assert!(open.is_empty(), "never closed: {open:?}");
}

#[test]
fn the_picture_has_every_node_and_is_well_formed() {
    let t = topology();
    let svg = svg::render(&t);
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    well_formed(&svg);
    let names: Vec<&str> = t.members().map(|(_, m)| m.name.as_str()).collect();
    assert_eq!(names, ["lb1", "lb2", "web1", "app1"]);
    for name in names {
        for id in ["n-", "s-", "l-", "t-"] {
            assert!(svg.contains(&format!("id=\"{id}{name}\"")), "{id}{name}");
        }
        assert!(svg.contains(&format!(">{name}</text>")), "{name} is named");
    }
    for db in ["primary", "replica1"] {
        assert!(svg.contains(&format!("id=\"n-db-{db}\"")), "{db}");
    }
    // The floating address and one arrow from it to each load balancer; the
    // heartbeat between them; replication from the primary.
    assert!(svg.contains("id=\"holder\""));
    assert!(svg.contains("id=\"f-lb1\"") && svg.contains("id=\"f-lb2\""));
    assert!(svg.contains("class=\"heartbeat\""));
    assert!(svg.contains("class=\"replication\""));
    // Nothing the policy `default-src 'self'` would refuse.
    assert!(!svg.contains("style="), "no inline style");
    assert!(!svg.contains("<script"), "no script");
    assert!(!svg.contains("href"), "nothing loaded from elsewhere");
}

#[test]
fn names_are_escaped_in_the_picture_and_the_page() {
    let mut t = topology();
    t.site = "a<b>&\"c\"".into();
    t.database[0].address = "/var/lib/<odd>&dir/foobar.db".into();
    let svg = svg::render(&t);
    well_formed(&svg);
    assert!(svg.contains("&lt;odd&gt;&amp;dir"));
    let html = page("lb1", &t);
    assert!(html.contains("<title>a&lt;b&gt;&amp;&quot;c&quot;: dashboard (lb1)</title>"));
    assert!(html.contains("<script src=\"/dashboard.js\" defer></script>"));
    assert!(!html.contains("<script>"), "no inline script");
    // lb1's page links to lb2's, for when lb1 stops.
    assert!(
        html.contains(&format!(
            "<a href=\"http://{}/dashboard\">lb2's dashboard</a>",
            t.lbs[1].admin
        )),
        "{html}"
    );
    assert!(!html.contains("lb1's dashboard</a>"));
    assert!(!html.contains("style="), "no inline style");
}

#[test]
fn quantiles_interpolate_within_their_bucket() {
    let b = [(0.001, 0), (0.01, 50), (0.1, 100), (f64::INFINITY, 100)];
    let p50 = quantile(&b, 0.5).unwrap();
    assert!((p50 - 0.01).abs() < 1e-12, "{p50}");
    let p99 = quantile(&b, 0.99).unwrap();
    assert!((p99 - 0.0982).abs() < 1e-9, "{p99}");
    assert_eq!(quantile(&[(0.1, 0), (f64::INFINITY, 0)], 0.5), None);
    // Beyond the last finite bound, that bound is all one can say.
    assert_eq!(quantile(&[(0.1, 0), (f64::INFINITY, 4)], 0.5), Some(0.1));
}

#[test]
fn the_histogram_is_read_from_prometheus_text() {
    let metrics = net::Metrics::default();
    for ms in [1, 2, 3, 40] {
        metrics.request_started();
        metrics.request_finished(200, Duration::from_millis(ms));
    }
    let mut text = String::new();
    metrics.render("web1", &mut text);
    let h = histogram(&text);
    assert_eq!(h.last(), Some(&(f64::INFINITY, 4)));
    assert_eq!(h.iter().find(|(b, _)| *b == 0.005).map(|x| x.1), Some(3));
}

fn status(requests: u64, errors: u64) -> Value {
    json!({
        "requests": requests,
        "responses_by_class": [0, requests - errors, 0, 0, errors],
        "connections_open": 3,
    })
}

/// What every node of [`topology`] would say, with `down` not answering.
fn probes(requests: u64, down: &[&str], lb1_role: &str) -> BTreeMap<String, Probe> {
    let t = topology();
    let mut out = BTreeMap::new();
    for (role, m) in t.members() {
        if down.contains(&m.name.as_str()) {
            out.insert(
                m.name.clone(),
                Probe {
                    error: Some(format!("admin {}: Connection refused", m.admin)),
                    ..Probe::default()
                },
            );
            continue;
        }
        let mut s = status(requests, requests / 10);
        match role {
            "lb" => {
                let (me, peer) = if m.name == "lb1" {
                    (lb1_role, "passive")
                } else {
                    ("passive", lb1_role)
                };
                s["cluster"] = json!({
                    "role": if m.name == "lb1" { me } else if down.contains(&"lb1") { "active" } else { "passive" },
                    "peer": {"name": if m.name == "lb1" {"lb2"} else {"lb1"}, "state": peer},
                    "transitions": [{"at": "Fri, 27 Nov 2026 18:00:00 GMT", "from": "passive", "to": "active", "reason": "no peer heard within 1s of starting"}],
                });
                s["backend"] = json!({"servers": [{"name": "web1", "state": "draining", "last_change_reason": "drained by an operator", "in_flight": 1}]});
                s["recent_errors"] = json!([{"at": "Fri, 27 Nov 2026 18:00:01 GMT", "status": 503, "method": "GET", "path": "/", "request_id": format!("rid-{}", m.name)}]);
            }
            "web" => {
                s["recent_errors"] = json!([{"at": "Fri, 27 Nov 2026 18:00:02 GMT", "status": 502, "method": "POST", "path": "/posts", "request_id": "rid-web1"}]);
                s["upstream"] = json!({"servers": [{"name": "app1", "state": "up", "last_change_reason": "health check passed", "in_flight": 0}]});
            }
            _ => {
                s["database"] = json!({"healthy": true, "users": 2, "posts": 5, "servers": [
                    {"name": "primary", "role": "primary", "healthy": true, "usable": true, "lag_seconds": null, "reads": 1, "writes": 5, "read_your_writes_fallbacks": 0},
                    {"name": "replica1", "role": "replica", "healthy": true, "usable": false, "lag_seconds": 7.5, "reads": 9, "writes": 0, "read_your_writes_fallbacks": 2},
                ]});
            }
        }
        let metrics = net::Metrics::default();
        for _ in 0..requests {
            metrics.request_started();
            metrics.request_finished(200, Duration::from_millis(2));
        }
        let mut text = String::new();
        metrics.render(&m.name, &mut text);
        out.insert(
            m.name.clone(),
            Probe {
                status: Some(s),
                metrics: Some(text),
                error: None,
            },
        );
    }
    out
}

fn node<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    snapshot["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {snapshot}"))
}

#[test]
fn the_snapshot_tells_rates_states_the_cluster_and_the_database() {
    let t = topology();
    let mut memory = Memory::default();
    let start = Instant::now();
    let first = memory.snapshot(&t, "lb2", &probes(100, &[], "active"), start);
    // No rates before a second sample.
    assert_eq!(node(&first, "web1")["requests_per_second"], Value::Null);
    assert_eq!(first["served_by"], "lb2");
    assert_eq!(first["cluster"]["active"], json!(["lb1"]));

    let later = start + Duration::from_secs(2);
    let second = memory.snapshot(&t, "lb2", &probes(300, &[], "active"), later);
    let web1 = node(&second, "web1");
    assert_eq!(web1["requests_per_second"], 100.0);
    assert_eq!(web1["error_rate"], 0.1);
    assert_eq!(web1["state"], "draining", "the load balancers drain it");
    assert_eq!(web1["checks"][0]["by"], "lb1");
    assert_eq!(web1["connections_open"], 3);
    let p50 = web1["p50_ms"].as_f64().unwrap();
    assert!((1.0..=2.5).contains(&p50), "{p50}");
    assert_eq!(node(&second, "app1")["state"], "up");
    assert_eq!(node(&second, "lb1")["cluster_role"], "active");

    let db = &second["database"];
    assert_eq!(db["reported_by"], "app1");
    assert_eq!(db["failover"], Value::Null, "no load balancer decides");
    assert_eq!(db["servers"][0]["state"], "up");
    assert_eq!(db["servers"][1]["state"], "lagging");
    assert_eq!(db["servers"][1]["lag_seconds"], 7.5);
    assert_eq!(db["servers"][1]["read_your_writes_fallbacks"], 2);

    let errors = second["errors"].as_array().unwrap();
    assert_eq!(
        errors.len(),
        3,
        "from each load balancer and web1: {errors:?}"
    );
    assert_eq!(errors[0]["request_id"], "rid-web1", "newest first");
    assert_eq!(errors[0]["node"], "web1");
    assert!(errors
        .iter()
        .any(|e| e["request_id"] == "rid-lb1" && e["node"] == "lb1"));

    // lb1 dies: shown down with why, lb2 holds the address, and the dashboard notes it.
    let third = memory.snapshot(
        &t,
        "lb2",
        &probes(400, &["lb1"], "active"),
        later + Duration::from_secs(1),
    );
    let lb1 = node(&third, "lb1");
    assert_eq!(lb1["state"], "down");
    assert!(lb1["error"].as_str().unwrap().contains("refused"), "{lb1}");
    assert_eq!(lb1["requests_per_second"], Value::Null);
    assert_eq!(third["cluster"]["active"], json!(["lb2"]));
    let events: Vec<String> = third["cluster"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["node"].as_str().unwrap(),
                e["text"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("lb1 stopped answering")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.contains("passive → active")),
        "{events:?}"
    );
    // Each transition once, though both load balancers reported it.
    assert_eq!(
        events
            .iter()
            .filter(|e| e.contains("passive → active"))
            .count(),
        2,
        "one per node that made it: {events:?}"
    );
    // The snapshot survives a round trip as the JSON the page reads.
    let text = third.to_string();
    let back: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, third);
}

#[test]
fn a_restarted_node_counts_from_zero() {
    let at = Instant::now();
    let prev = Sample {
        at,
        requests: 1000,
        server_errors: 10,
        buckets: vec![(0.01, 1000), (f64::INFINITY, 1000)],
    };
    let now = Sample {
        at: at + Duration::from_secs(1),
        requests: 5,
        server_errors: 0,
        buckets: vec![(0.01, 5), (f64::INFINITY, 5)],
    };
    let r = Rates::between(&prev, &now);
    assert_eq!(r.per_second, 5.0);
    assert_eq!(r.error_rate, 0.0);
}

#[tokio::test]
async fn the_event_stream_is_served_and_gathers_only_while_watched() {
    let (trigger, stop) = net::shutdown::channel();
    let t = topology();
    let dash = Arc::new(Dashboard::new("lb1", t, stop));
    for path in [
        "/dashboard",
        "/dashboard.js",
        "/dashboard.css",
        "/dashboard/icon.svg",
    ] {
        let resp = dash.route(path).unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[http::header::CONTENT_SECURITY_POLICY], CSP);
    }
    assert!(dash.route("/dashboard/nothing").is_none());
    let resp = dash.route("/dashboard/events").unwrap();
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/event-stream");
    assert!(
        *dash.running.lock().unwrap(),
        "a watcher starts the gatherer"
    );
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"retry: 1000\n\n"));
    // Nobody answers on these ports: every node is shown down, within the timeout.
    let event = tokio::time::timeout(Duration::from_secs(3), body.frame())
        .await
        .expect("an event within a second or so")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    let text = std::str::from_utf8(&event).unwrap();
    let json: Value = serde_json::from_str(
        text.strip_prefix("data: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(node(&json, "web1")["state"], "down");
    assert_eq!(json["served_by"], "lb1");
    // The watcher goes: the gatherer stops within a period.
    drop(body);
    tokio::time::sleep(PERIOD * 2 + PROBE_TIMEOUT).await;
    assert!(
        !*dash.running.lock().unwrap(),
        "nobody watches: no gathering"
    );
    assert!(
        dash.feed.borrow().is_none(),
        "no old news for the next watcher"
    );
    // A stream ends when the node stops.
    let mut body = dash.route("/dashboard/events").unwrap().into_body();
    let _ = body.frame().await;
    trigger.fire();
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ends on shutdown");
}

#[tokio::test]
async fn a_node_that_hangs_is_given_up_after_the_probe_timeout() {
    // Accepts and never answers (the connection stays in the backlog, unread).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let start = Instant::now();
    let why = get(addr, "/status").await.unwrap_err();
    assert!(why.contains("no answer"), "{why}");
    assert!(start.elapsed() < PROBE_TIMEOUT + Duration::from_millis(300));
    drop(listener);
    // A real admin answer is read whole.
    let (trigger, stop) = net::shutdown::channel();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = admin.local_addr().unwrap();
    let dash = Arc::new(Dashboard::new("lb1", topology(), stop.clone()));
    let served = tokio::spawn(net::admin::serve_admin(admin, Arc::new(Fake(dash)), stop));
    let body = get(addr, "/status").await.unwrap();
    assert_eq!(body.trim(), "{\n  \"node\": \"fake\"\n}");
    let why = get(addr, "/nothing").await.unwrap_err();
    assert!(why.contains("404"), "{why}");
    trigger.fire();
    served.await.unwrap().unwrap();
}

/// An admin listener's report with only the dashboard on it.
struct Fake(Arc<Dashboard>);

impl net::admin::Report for Fake {
    fn metrics(&self) -> String {
        String::new()
    }
    async fn status(&self) -> Value {
        json!({"node": "fake"})
    }
    fn extra(&self, path: &str) -> Option<Response<Body>> {
        self.0.route(path)
    }
}

#[test]
fn a_reload_that_adds_a_node_redraws_the_page() {
    let (_trigger, stop) = net::shutdown::channel();
    let dash = Dashboard::new("lb1", topology(), stop);
    let before = dash.drawn.load_full();
    assert!(!before.page.contains("id=\"n-web2\""));
    // The same nodes: nothing is redrawn.
    dash.set_topology(topology());
    assert!(Arc::ptr_eq(&before, &dash.drawn.load_full()));
    let mut grown = topology();
    let mut web2 = grown.webs[0].clone();
    web2.name = "web2".into();
    grown.webs.push(web2);
    grown.lbs[0].to.push("web2".into());
    dash.set_topology(grown);
    let after = dash.drawn.load_full();
    assert!(after.page.contains("id=\"n-web2\""));
    assert_eq!(after.topology.webs.len(), 2);
    let mut memory = Memory::default();
    let snapshot = memory.snapshot(&after.topology, "lb1", &BTreeMap::new(), Instant::now());
    assert_eq!(
        node(&snapshot, "web2")["state"],
        "down",
        "asked, and not answering"
    );
}

/// After a failover the picture shows the roles the application sees, and who decided.
#[test]
fn the_database_panel_shows_the_roles_now_and_the_failover() {
    let t = topology();
    let mut probes = probes(100, &[], "active");
    let app = probes.get_mut("app1").unwrap().status.as_mut().unwrap();
    app["database"]["servers"][0]["role"] = json!("replica");
    app["database"]["servers"][1]["role"] = json!("primary");
    let lb1 = probes.get_mut("lb1").unwrap().status.as_mut().unwrap();
    lb1["database_failover"] = json!({
        "deciding": true, "primary": "replica1", "failovers": 1, "waiting": null,
        "rejoined": ["primary"],
        "last": {"at": "Fri, 27 Nov 2026 18:00:03 GMT", "from": "primary", "to": "replica1", "took_ms": 5, "left_out": []},
    });
    let lb2 = probes.get_mut("lb2").unwrap().status.as_mut().unwrap();
    lb2["database_failover"] = json!({"deciding": false, "primary": "primary", "failovers": 0});
    let snapshot = Memory::default().snapshot(&t, "lb2", &probes, Instant::now());
    let db = &snapshot["database"];
    assert_eq!(db["servers"][0]["role"], "replica");
    assert_eq!(db["servers"][1]["role"], "primary");
    assert_eq!(db["failover"]["decided_by"], "lb1");
    assert_eq!(db["failover"]["last"]["to"], "replica1");
}
