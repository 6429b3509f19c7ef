//! `scaleup reload` with the real binary, under `scaleup up`: a broken site file is
//! refused with its line and column and changes nothing; `POST /reload` without the
//! admin token is 401; a reload that adds web2 to the load balancers' pool, made
//! under a bounded stream of requests, fails none of them and web2 then gets traffic
//! (each web server's access log says who served what), and lb1's heartbeats carry the
//! new file's hash; SIGHUP reloads too; a new
//! certificate is served to a new TLS handshake while an open connection goes on (the
//! built-in site, reloaded without --site from the file `up` wrote); a
//! WebSocket through lb1 and web1 survives a reload.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// `scaleup reload ARGS --site FILE`: whether it succeeded, and what it printed.
fn reload_command(site: &Path, args: &[&str]) -> (bool, String) {
    admin_command(site, &[&["reload"], args].concat())
}

/// Requests through the floating address for `length` (2000 at most, one at a time on
/// kept-alive connections); how many were sent and which failed.
async fn load(base: u16, length: Duration) -> (usize, Vec<String>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let start = Instant::now();
    let (mut sent, mut failed) = (0, Vec::new());
    while start.elapsed() < length && sent < 2000 {
        let url = format!("http://127.0.0.1:{base}/static/style.css?load-{sent}");
        sent += 1;
        match client.get(&url).send().await {
            Ok(resp) if resp.status() == 200 => {
                let _ = resp.bytes().await;
            }
            Ok(resp) => failed.push(format!("{url}: {}", resp.status())),
            Err(e) => failed.push(format!("{url}: {e}")),
        }
    }
    (sent, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_changes_nothing_and_a_reload_under_load_adds_web2() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let site: PathBuf = state.join("site.toml");
    // web2 runs in no pool yet; no slow start, so the test sees web2's share at once.
    let good = two_web_site(base, state, "[\"web1\"]", "0s");
    std::fs::write(&site, &good).unwrap();
    let _up = up_site(&site);
    let token = std::fs::read_to_string(state.join("admin.token")).unwrap();
    let token = token.trim();
    let lb1_admin = base + 11;
    let http = reqwest::Client::new();

    // Only web1 serves: web2 runs but is in no pool.
    let (web1, web2) = spread(base, state, "before", 10).await;
    assert_eq!((web1, web2), (10, 0));

    // Without the token, or with a wrong one: 401, counted; nothing reloads.
    let reload_url = format!("http://127.0.0.1:{lb1_admin}/reload");
    let resp = http.post(&reload_url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http
        .post(&reload_url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let metrics = metrics_of(lb1_admin).await;
    assert!(
        metrics.contains("scaleup_admin_unauthorized_total{node=\"lb1\",reason=\"missing\"} 1")
            && metrics
                .contains("scaleup_admin_unauthorized_total{node=\"lb1\",reason=\"wrong\"} 1"),
        "{metrics}"
    );

    // A broken file (web2 added, and a bad value): the command refuses it with its
    // line and column and asks no node; a node asked directly refuses it too.
    let broken = two_web_site(base, state, "[\"web1\", \"web2\"]", "0s").replacen(
        "max_connections = 10000",
        "max_connections = \"lots\"",
        1,
    );
    let line = broken.lines().position(|l| l.contains("\"lots\"")).unwrap() + 1;
    std::fs::write(&site, &broken).unwrap();
    let (ok, out) = reload_command(&site, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(":{line}:")) && out.contains("nothing was reloaded"),
        "the refusal names line {line}: {out}"
    );
    let resp = http
        .post(&reload_url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let why = resp.text().await.unwrap();
    assert!(why.contains(&format!(":{line}:")), "{why}");
    let (web1, web2) = spread(base, state, "broken", 10).await;
    assert_eq!((web1, web2), (10, 0), "the broken file changed nothing");

    // The fixed file, reloaded while requests flow: none fails, web2 gets traffic.
    std::fs::write(
        &site,
        two_web_site(base, state, "[\"web1\", \"web2\"]", "0s"),
    )
    .unwrap();
    let traffic = tokio::spawn(load(base, Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let command_site = site.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || reload_command(&command_site, &[]))
        .await
        .unwrap();
    assert!(ok, "{out}");
    assert!(
        out.contains("lb1: reloaded") && out.contains("lb2: reloaded"),
        "{out}"
    );
    assert!(out.contains("web pool: web2 added"), "{out}");
    assert!(
        out.contains("web1: reloaded") && out.contains("nothing changed"),
        "{out}"
    );
    let (sent, failed) = traffic.await.unwrap();
    assert!(sent > 50, "only {sent} requests in 2 s");
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    let (web1, web2) = spread(base, state, "after", 20).await;
    assert!(web1 > 0 && web2 > 0, "after: web1 {web1}, web2 {web2}");

    // lb1 now runs the new file: its heartbeats carry the new file's hash to lb2.
    let hash = out
        .split("lb1: reloaded (config ")
        .nth(1)
        .and_then(|rest| rest.get(..16))
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (lb1, lb2) = (cluster_of(lb1_admin).await, cluster_of(base + 12).await);
        if lb1["config_hash"] == hash.as_str() && lb2["peer"]["config_hash"] == hash.as_str() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new hash {hash} did not reach the heartbeats: lb1 {lb1}, lb2 {lb2}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A reload the same file again changes nothing; one that needs a restart says so
    // and still applies the rest (web1's weight, by SIGHUP to lb1).
    let status = json_of(&http, &format!("http://127.0.0.1:{lb1_admin}/status")).await;
    let lb1_pid = status["pid"].as_i64().unwrap() as i32;
    let reweighted = two_web_site(base, state, "[\"web1\", \"web2\"]", "0s")
        .replacen("weight = 1\n", "weight = 3\n", 1)
        .replacen("max_connections = 10000", "max_connections = 9000", 1)
        .replacen(
            "[balancer.timeouts]\n",
            "[balancer.timeouts]\nkeepalive = \"7s\"\n",
            1,
        );
    std::fs::write(&site, reweighted).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lb1_pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let web1_url = format!("http://127.0.0.1:{lb1_admin}/servers/web1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let web1 = json_of(&http, &web1_url).await;
        if web1["weight"] == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload lb1: {web1}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, out) = reload_command(&site, &["lb2"]);
    assert!(ok, "{out}");
    assert!(out.contains("web pool: web1 weight 1 -> 3"), "{out}");
    assert!(
        out.contains("applied: balancer.max_connections: 10000 -> 9000"),
        "{out}"
    );
    assert!(
        out.contains("needs `upgrade`") && out.contains("balancer.timeouts.keepalive"),
        "{out}"
    );
    assert!(!out.contains("lb1:") && !out.contains("web1:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_seen_by_a_new_handshake_while_an_open_connection_goes_on() {
    // The built-in site under `scaleup up`: `scaleup reload` without --site reloads
    // the file `up` wrote into the state directory.
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let _up = start_up(base, state);

    // The certificate `up` made, and another one for the same names.
    let old_pem = std::fs::read(state.join("tls/www.foobar.com.crt")).unwrap();
    let other = tempfile::tempdir().unwrap();
    let new_files = net::tls::ensure_self_signed(other.path(), "www.foobar.com").unwrap();
    let new_pem = std::fs::read(&new_files.cert).unwrap();
    assert_ne!(old_pem, new_pem);
    let trusting = |pem: &[u8]| {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(pem).unwrap())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let url = format!("{}/healthz", https_site(base));

    // A client that trusts only the old certificate keeps its connection open.
    let old_client = trusting(&old_pem);
    assert_eq!(old_client.get(&url).send().await.unwrap().status(), 200);

    // The new certificate goes in place of the old one; the reload says so.
    std::fs::copy(&new_files.key, state.join("tls/www.foobar.com.key")).unwrap();
    std::fs::copy(&new_files.cert, state.join("tls/www.foobar.com.crt")).unwrap();
    let out = scaleup()
        .args(["reload", "web1", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    let (ok, out) = (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    eprintln!("[reload] {out}");
    assert!(ok, "{out}");
    assert!(
        out.contains("certificate") && out.contains("new handshakes"),
        "{out}"
    );

    // The open connection goes on (a new one would fail: this client does not trust
    // the new certificate)...
    for _ in 0..3 {
        assert_eq!(old_client.get(&url).send().await.unwrap().status(), 200);
    }
    // ...a new handshake gets the new certificate...
    let new_client = trusting(&new_pem);
    assert_eq!(new_client.get(&url).send().await.unwrap().status(), 200);
    // ...and no longer the old one.
    let err = trusting(&old_pem).get(&url).send().await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_through_lb_and_web_survives_a_reload() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let site = write_plain_http_site(base, state);
    let _up = up_site(&site);
    let floating = format!("127.0.0.1:{base}");
    let site_url = format!("http://{floating}");

    let api = reqwest::Client::new();
    let token = api_token(&api, &site_url, "rita").await;

    // The WebSocket, read on a thread of its own.
    let live = LiveSocket::open(&floating);
    assert_eq!(live.status, 101);

    // A reload that changes something on every proxy the WebSocket goes through.
    let text = std::fs::read_to_string(&site).unwrap();
    let changed = text.replacen("retries = 1", "retries = 2", 1).replacen(
        "public, max-age=3600",
        "public, max-age=600",
        1,
    );
    assert_ne!(text, changed);
    std::fs::write(&site, changed).unwrap();
    let command_site = site.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || reload_command(&command_site, &[]))
        .await
        .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("applied: balancer.retries: 1 -> 2"), "{out}");
    assert!(out.contains("applied: cache: "), "{out}");

    // The open WebSocket still receives a new post within a second.
    let sent = Instant::now();
    let resp = api_post(&api, &site_url, &token, "after the reload").await;
    assert_eq!(resp.status(), 201);
    let (_, message) = live
        .got
        .recv_timeout(Duration::from_secs(3))
        .expect("the new post on the WebSocket opened before the reload");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    let pushed: serde_json::Value = serde_json::from_str(&message).unwrap();
    assert_eq!(pushed["body"], "after the reload");
    live.close();
}
