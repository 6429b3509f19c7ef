//! The real Prometheus against a running site: `scaleup prometheus` prints the
//! configuration, Debian's `prometheus` scrapes every node with it (`up == 1` for each)
//! and counts the requests made through the floating address; and every query of
//! `examples/grafana-dashboard.json` names only metrics the nodes export and is
//! answered by that Prometheus. Needs `prometheus` (see [`prometheus_binary`]).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Prometheus's program, when installed (see `common::needs`).
fn prometheus_binary() -> Option<PathBuf> {
    let found = program("prometheus");
    needs(found.is_some(), "prometheus", "prometheus").then_some(found?)
}

/// PromQL's words that are not metric names: operators, modifiers and the
/// aggregations (`sum by (node) (...)` has no parenthesis right after `sum`).
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label
/// matchers, ranges and `by (...)`-like label lists that are not function calls or
/// keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // Blank out what is not a selector's name: strings, {...}, [...].
    let mut plain: Vec<char> = Vec::new();
    let mut skip_to: Option<char> = None;
    for c in expr.chars() {
        match (skip_to, c) {
            (Some(end), _) if c == end => skip_to = None,
            (Some(_), _) => {}
            (None, '"') => skip_to = Some('"'),
            (None, '{') => skip_to = Some('}'),
            (None, '[') => skip_to = Some(']'),
            (None, _) => {
                plain.push(c);
                continue;
            }
        }
        plain.push(' ');
    }
    let words = |plain: &[char]| -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < plain.len() {
            if is_word(plain[i]) {
                let start = i;
                while i < plain.len() && is_word(plain[i]) {
                    i += 1;
                }
                out.push((start, plain[start..i].iter().collect()));
            } else {
                i += 1;
            }
        }
        out
    };
    let next_char = |plain: &[char], from: usize| -> Option<(usize, char)> {
        (from..plain.len())
            .map(|i| (i, plain[i]))
            .find(|(_, c)| !c.is_whitespace())
    };
    // Blank out the label lists of `by (...)`, `without (...)`, `on (...)`...
    for (at, word) in words(&plain) {
        if !matches!(
            word.as_str(),
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        ) {
            continue;
        }
        if let Some((open, '(')) = next_char(&plain, at + word.len()) {
            let close = (open..plain.len())
                .find(|&i| plain[i] == ')')
                .unwrap_or(plain.len());
            plain[open..close].iter_mut().for_each(|c| *c = ' ');
        }
    }
    words(&plain)
        .into_iter()
        .filter(|(at, word)| {
            !word.starts_with(|c: char| c.is_ascii_digit())
                && !KEYWORDS.contains(&word.as_str())
                && next_char(&plain, at + word.len()).map(|(_, c)| c) != Some('(')
        })
        .map(|(_, word)| word)
        .collect()
}

/// Every `expr` of the dashboard, with its panel's title.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/grafana-dashboard.json"
    );
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(
        out.len() >= 10,
        "the dashboard has too few queries: {out:?}"
    );
    out
}

/// The metric names in Prometheus text (a histogram's as its `_bucket`, `_sum` and
/// `_count` series).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            } else {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// One instant query's result vector; panics with Prometheus's error when it refuses
/// the query.
async fn query(client: &reqwest::Client, prom: &str, q: &str) -> Vec<serde_json::Value> {
    let url = format!("{prom}/api/v1/query");
    let answer: serde_json::Value = client
        .get(&url)
        .query(&[("query", q)])
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "success", "{q}: {answer}");
    answer["data"]["result"].as_array().unwrap().clone()
}

/// `node` label → value, from a result vector.
fn by_node(result: &[serde_json::Value]) -> BTreeMap<String, f64> {
    result
        .iter()
        .map(|s| {
            (
                s["metric"]["node"].as_str().unwrap_or("").to_string(),
                s["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn metric_names_are_the_selectors_not_the_functions_labels_or_ranges() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (node, le) (rate(a_bucket{node=~\"$node\"}[$__rate_interval]))) / on(node) b + up",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_bucket", "b", "up"]
    );
}

/// The built-in site on `base` in `dir`; with `mariadb`, a managed MariaDB primary
/// (`base+23`) and replica (`base+24`) instead of SQLite (as in `mariadb_e2e.rs`), the
/// password from `SCALEUP_TEST_DB_PASSWORD`.
fn write_site(base: u16, dir: &std::path::Path, mariadb: bool) -> PathBuf {
    if !mariadb {
        return write_default_site(base, dir);
    }
    write_mariadb_site(base, dir)
}

/// A running site (`scaleup up`), stopped when dropped.
struct Site {
    up: Proc,
    state: tempfile::TempDir,
    file: PathBuf,
    site: site::Site,
    base: u16,
}

impl Drop for Site {
    /// Ctrl-C, as a user stops it: `scaleup up` stops the nodes, then the MariaDB
    /// servers it started (a SIGKILL, `Proc`'s own drop, would leave those running).
    /// Bounded: after 30 s `Proc`'s drop kills what is left of `up`.
    fn drop(&mut self) {
        self.up.signal(nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.up.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn start_site(mariadb: bool) -> Site {
    let base = free_base(DEFAULT_SITE_PORTS + 2);
    let state = tempfile::tempdir().unwrap();
    let file = write_site(base, state.path(), mariadb);
    let mut cmd = scaleup();
    cmd.arg("up")
        .arg("--site")
        .arg(&file)
        .env("SCALEUP_TEST_DB_PASSWORD", "test-pw");
    let up = Proc::spawn("up", cmd);
    up.wait_for_line("is up", Duration::from_secs(if mariadb { 120 } else { 60 }));
    let site = site::load(&file).unwrap();
    Site {
        up,
        state,
        file,
        site,
        base,
    }
}

/// A real Prometheus scraping `site` with what `scaleup prometheus` printed for it,
/// killed when dropped (pass or fail: `Proc`'s `Drop`), its data in a temporary
/// directory.
struct Prometheus {
    _proc: Proc,
    _dir: tempfile::TempDir,
    url: String,
}

async fn start_prometheus(binary: &std::path::Path, site: &Site) -> Prometheus {
    // The configuration, as a user would write it to a file.
    let out = scaleup()
        .arg("prometheus")
        .arg("--site")
        .arg(&site.file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, &out.stdout).unwrap();
    let port = free_base(1);
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let proc = Proc::spawn("prometheus", cmd);
    let url = format!("http://127.0.0.1:{port}");
    wait_status(&format!("{url}/-/ready"), 200, Duration::from_secs(20)).await;
    Prometheus {
        _proc: proc,
        _dir: dir,
        url,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Waits (at most 20 s) until Prometheus has `up == 1` for every node of the site, and
/// checks there is one target a node.
async fn wait_every_node_up(prom: &Prometheus, site: &Site) {
    let client = client();
    let nodes: BTreeSet<String> = site.site.nodes().map(|(_, n)| n.name.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ups = loop {
        let ups = by_node(&query(&client, &prom.url, "up").await);
        if nodes.iter().all(|n| ups.get(n) == Some(&1.0)) || Instant::now() > deadline {
            break ups;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for node in &nodes {
        assert_eq!(ups.get(node), Some(&1.0), "up of {node}: {ups:?}");
    }
    assert_eq!(ups.len(), nodes.len(), "one target a node: {ups:?}");
}

/// The metric names every node of the running site exports on its admin `/metrics`,
/// and `up`, which Prometheus makes for each target.
async fn exported_by(site: &Site) -> BTreeSet<String> {
    let client = client();
    let mut exported = BTreeSet::from(["up".to_string()]);
    for (_, node) in site.site.nodes() {
        let text = client
            .get(format!("http://{}/metrics", node.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        exported.extend(exported_names(&text));
    }
    exported
}

/// Every query of the dashboard names only metrics in `exported` and gets data from
/// `prom` (within 20 s: a rate needs two scrapes in its window); with `db` false, the
/// database panels (a SQLite site has no database servers) need only be valid PromQL.
async fn check_dashboard(prom: &Prometheus, exported: &BTreeSet<String>, db: bool) {
    let queries = dashboard_queries();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in names {
            assert!(
                exported.contains(&name) || (!db && name.starts_with("scaleup_db_")),
                "panel {title:?} queries {name}, which no node exports ({expr}); exported: {exported:?}"
            );
        }
    }
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$node", ".*");
            // `query` fails the test on a query Prometheus refuses.
            if query(&client, &prom.url, &q).await.is_empty() && (db || !q.contains("scaleup_db_"))
            {
                empty.push(format!("{title}: {q}"));
            }
        }
        if empty.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard queries with no data from a running site: {empty:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_every_node_and_counts_requests_and_answers_the_dashboard() {
    let Some(prometheus) = prometheus_binary() else {
        return;
    };
    let site = start_site(false);
    let prom = start_prometheus(&prometheus, &site).await;
    let base = site.base;

    // Requests through the floating address: plain HTTP (the load balancer answers
    // with its redirect) and HTTPS, which crosses web1 and app1 too.
    let plain = client();
    let https = https_client(site.state.path())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..10 {
        plain
            .get(format!("http://127.0.0.1:{base}/"))
            .send()
            .await
            .unwrap();
        let resp = https
            .get(format!("{}/", https_site(base)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    wait_every_node_up(&prom, &site).await;

    // The requests counted, on the load balancer, the web server and the app server
    // (a scrape after the requests: wait for it, boundedly).
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    let counted = loop {
        let counted =
            by_node(&query(&client, &prom.url, "sum by (node) (scaleup_requests_total)").await);
        if ["lb1", "web1", "app1"]
            .iter()
            .all(|n| counted.get(*n).is_some_and(|v| *v >= 10.0))
            || Instant::now() > deadline
        {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for node in ["lb1", "web1", "app1"] {
        assert!(
            counted.get(node).is_some_and(|v| *v >= 10.0),
            "{node} counted fewer than the 10 requests sent: {counted:?}"
        );
    }
    let total = query(&client, &prom.url, "sum(scaleup_requests_total)").await;
    let total: f64 = total[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(total >= 30.0, "sum(scaleup_requests_total) = {total}");

    check_dashboard(&prom, &exported_by(&site).await, false).await;
}

/// The database panels against a site with a MariaDB primary and replica: the app
/// server exports their `scaleup_db_*` series, and Prometheus answers every panel's
/// query, replica lag included. Needs MariaDB too (`common::mariadb_available`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_answers_every_dashboard_panel_of_a_mariadb_site() {
    let Some(prometheus) = prometheus_binary() else {
        return;
    };
    if !mariadb_available() {
        return;
    }
    let site = start_site(true);
    let prom = start_prometheus(&prometheus, &site).await;
    wait_every_node_up(&prom, &site).await;
    check_dashboard(&prom, &exported_by(&site).await, true).await;
}
