//! Following requests through the real site (`scaleup up`, real sockets): the
//! `Server-Timing` entries each hop adds, and `scaleup trace` finding one request in
//! the load balancer's, the web server's and the application server's logs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The default site on plain HTTP (no redirect to HTTPS: in the default `tcp` mode
/// the load balancer never sees HTTPS requests), with `edit` applied to its text,
/// started with `scaleup up --site`.
fn start_site(dir: &Path, edit: impl Fn(String) -> String) -> (u16, PathBuf, Proc) {
    let base = free_base(DEFAULT_SITE_PORTS);
    let path = write_plain_http_site(base, dir);
    let text = edit(std::fs::read_to_string(&path).unwrap());
    std::fs::write(&path, text).unwrap();
    let mut cmd = scaleup();
    cmd.arg("up").arg("--site").arg(&path);
    let up = Proc::spawn("up", cmd);
    up.wait_for_line("is up", Duration::from_secs(60));
    (base, path, up)
}

/// The entries of a `Server-Timing` value: (name, milliseconds, description).
fn entries(value: &str) -> Vec<(String, f64, Option<String>)> {
    value
        .split(", ")
        .map(|entry| {
            let mut params = entry.split(';');
            let name = params.next().unwrap().to_string();
            let (mut dur, mut desc) = (None, None);
            for p in params {
                if let Some(d) = p.strip_prefix("dur=") {
                    dur = Some(d.parse::<f64>().unwrap());
                } else if let Some(d) = p.strip_prefix("desc=") {
                    desc = Some(d.trim_matches('"').to_string());
                }
            }
            (
                name,
                dur.unwrap_or_else(|| panic!("no dur in {entry:?}")),
                desc,
            )
        })
        .collect()
}

fn server_timing(resp: &reqwest::Response) -> Vec<(String, f64, Option<String>)> {
    let values: Vec<_> = resp.headers().get_all("server-timing").iter().collect();
    assert_eq!(values.len(), 1, "one Server-Timing line: {values:?}");
    entries(values[0].to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_adds_its_server_timing_and_each_covers_those_below() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _, _up) = start_site(dir.path(), |t| t);
    let site = format!("http://127.0.0.1:{base}");
    wait_status(&format!("{site}/"), 200, Duration::from_secs(20)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    // A page: made by the app from the database, through web and lb.
    for _ in 0..3 {
        let resp = client.get(format!("{site}/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let timing = server_timing(&resp);
        let names: Vec<&str> = timing.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["lb", "web", "app", "db"], "{timing:?}");
        // Each hop's whole time includes the hops below it.
        for pair in timing.windows(2) {
            assert!(
                pair[0].1 >= pair[1].1,
                "{} ({} ms) took less than {} ({} ms) below it: {timing:?}",
                pair[0].0,
                pair[0].1,
                pair[1].0,
                pair[1].1
            );
        }
        assert!(timing[0].1 > 0.0, "{timing:?}");
        let queries = timing[3].2.as_deref().unwrap();
        let count: u64 = queries
            .strip_suffix(" queries")
            .unwrap_or_else(|| panic!("db desc {queries:?}"))
            .parse()
            .unwrap();
        assert!(
            count >= 1,
            "the timeline is read from the database: {queries}"
        );
    }

    // A static file: the web server answers it, the app never sees it.
    let resp = client
        .get(format!("{site}/static/style.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let timing = server_timing(&resp);
    let names: Vec<&str> = timing.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["lb", "web"], "{timing:?}");
    assert!(timing[0].1 >= timing[1].1, "{timing:?}");
}

/// Runs `scaleup trace ID --site FILE` until its output names every node in `want`
/// (access-log lines are written by a background thread), within 10 s.
fn trace_until(site: &Path, id: &str, want: &[&str]) -> String {
    trace_when(site, id, |text| {
        want.iter()
            .all(|node| text.lines().any(|l| l.trim_start().starts_with(node)))
    })
}

/// Runs `scaleup trace ID --site FILE` until it succeeds with an output `done` likes,
/// within 10 s.
fn trace_when(site: &Path, id: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = scaleup()
            .arg("trace")
            .arg(id)
            .arg("--site")
            .arg(site)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "trace {id} did not find what was expected within 10 s:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_finds_one_request_in_the_lb_web_and_app_logs() {
    let dir = tempfile::tempdir().unwrap();
    // JSON access logs, so the shippers' format is the one followed end to end.
    let (base, site_file, _up) = start_site(dir.path(), |t| {
        t.replacen("log_format = \"combined\"", "log_format = \"json\"", 1)
    });
    let site = format!("http://127.0.0.1:{base}");
    wait_status(&format!("{site}/"), 200, Duration::from_secs(20)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = client
        .get(format!("{site}/u/nobody"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    // Another request, with a traceparent that is not one: dropped at the first hop.
    let other = client
        .get(format!("{site}/"))
        .header("traceparent", "00-not-a-trace-01")
        .send()
        .await
        .unwrap();
    let other_id = other.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    let text = trace_until(&site_file, &id, &["lb1", "web1", "app1"]);
    eprintln!("scaleup trace {id}:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with(&format!("request {id}:")), "{text}");
    let position = |node: &str| {
        lines
            .iter()
            .position(|l| l.trim_start().starts_with(node))
            .unwrap()
    };
    assert!(
        position("lb1") < position("web1") && position("web1") < position("app1"),
        "from the client inwards:\n{text}"
    );
    for node in ["lb1", "web1", "app1"] {
        let line = lines[position(node)];
        let json = &line[line.find('{').unwrap_or_else(|| panic!("{line}"))..];
        let doc: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(doc["request_id"], id.as_str(), "{line}");
        assert_eq!(doc["uri"], "/u/nobody", "{line}");
        assert_eq!(doc["status"], 404, "{line}");
        assert_eq!(doc["trace_id"], trace_id, "{node} logs the trace: {line}");
        assert!(line.contains(" ms "), "the hop's time: {line}");
    }
    assert!(!text.contains(&other_id), "only the one request:\n{text}");
    let hops = lines.last().unwrap();
    assert!(hops.starts_with("hops: lb1 "), "{text}");

    // The trace id finds the request too; the invalid traceparent reached no log.
    let by_trace = trace_until(&site_file, trace_id, &["lb1", "web1", "app1"]);
    assert!(by_trace.contains(&id), "{by_trace}");
    let other_text = trace_until(&site_file, &other_id, &["lb1", "web1", "app1"]);
    assert!(
        other_text.matches("\"trace_id\":null").count() >= 3,
        "{other_text}"
    );
    assert!(!other_text.contains("not-a-trace"), "{other_text}");

    // What the app logs while it answers names the request too: guesses at one
    // account until the throttle answers 429, which the app logs.
    let mut throttled = None;
    for _ in 0..20 {
        let resp = client
            .post(format!("{site}/api/login"))
            .json(&serde_json::json!({"username": "nobody", "password": "wrong guess"}))
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            throttled = Some(resp.headers()["x-request-id"].to_str().unwrap().to_string());
            break;
        }
        assert_eq!(resp.status(), 401);
    }
    let throttled = throttled.expect("the 11th guess is throttled");
    // The access logs are written in batches, apart from the nodes' own logs: wait for
    // the app's own line and every hop's access line.
    let text = trace_when(&site_file, &throttled, |text| {
        text.lines()
            .any(|l| l.trim_start().starts_with("app1   app node") && l.contains("login throttled"))
            && ["lb1", "web1", "app1"]
                .iter()
                .all(|node| text.lines().any(|l| l.trim_start().starts_with(node)))
    });
    eprintln!("scaleup trace {throttled}:\n{text}");
    for node in ["lb1", "web1", "app1"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(node)),
            "{node}:\n{text}"
        );
    }

    // An id nobody logged: a clear failure.
    let out = scaleup()
        .args(["trace", "nosuchrequest0000", "--site"])
        .arg(&site_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no log line names nosuchrequest0000") && err.contains("lb1-access.log"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_page_carries_the_entry_of_the_hop_that_made_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base(DEFAULT_SITE_PORTS);
    let site = write_plain_http_site(base, dir.path());
    // lb1 alone: no web server answers, the load balancer's own 503.
    let _lb1 = run_node("lb1", &site);
    let lb1 = format!("http://127.0.0.1:{}/", base + 1);
    wait_status(&lb1, 503, Duration::from_secs(20)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = client.get(&lb1).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let names: Vec<String> = server_timing(&resp).into_iter().map(|e| e.0).collect();
    assert_eq!(names, ["lb"]);

    // web1 up, no application server: the web server's 502, under the lb's entry.
    let _web1 = run_node("web1", &site);
    wait_status(&lb1, 502, Duration::from_secs(20)).await;
    let resp = client.get(&lb1).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let timing = server_timing(&resp);
    let names: Vec<&str> = timing.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["lb", "web"], "{timing:?}");
    assert!(timing[0].1 >= timing[1].1, "{timing:?}");
}
