//! `scaleup upgrade` and `scaleup roll` with the real binary under `scaleup up`, while
//! wrk sends requests through the floating address: every role gets a new process
//! (which takes the old one's listening sockets) and no request fails; a download in
//! progress completes; a WebSocket opened before an upgrade of the app server still
//! receives new posts; upgrades need the admin token.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// The pid that answers `/status` on admin port `port`.
async fn pid_on(port: u16) -> u64 {
    let status: serde_json::Value =
        serde_json::from_str(&get_text(&format!("http://127.0.0.1:{port}/status")).await).unwrap();
    status["pid"].as_u64().expect("a pid in /status")
}

/// The two-web-server site (both in the pool) in `dir`, started; its file.
fn start_site(dir: &Path, base: u16) -> (std::path::PathBuf, Proc) {
    let path = dir.join("site.toml");
    std::fs::write(&path, two_web_site(base, dir, r#"["web1", "web2"]"#, "1s")).unwrap();
    let up = up_site(&path);
    (path, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_is_upgraded_under_load_and_no_request_fails() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let (site, up) = start_site(dir.path(), base);
    let (lb1, lb2, web1, app1) = (base + 11, base + 12, base + 13, base + 14);
    let floating = format!("127.0.0.1:{base}");
    let site_url = format!("http://{floating}");

    // Without the token: 401, and nothing starts.
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("http://127.0.0.1:{web1}/upgrade"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let before = [
        pid_on(lb1).await,
        pid_on(lb2).await,
        pid_on(web1).await,
        pid_on(app1).await,
    ];
    // A file large enough to be still downloading while web1 is replaced.
    let big = vec![7u8; 24 << 20];
    std::fs::create_dir_all(dir.path().join("public")).unwrap();
    std::fs::write(dir.path().join("public/big.bin"), &big).unwrap();

    // Static files (web tier) and the timeline page (app tier), through the floating
    // address, for the whole sequence.
    let statics = Wrk::start(
        &format!("{site_url}/static/style.css"),
        12,
        Duration::from_secs(18),
    );
    let pages = Wrk::start(&format!("{site_url}/"), 4, Duration::from_secs(18));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // web1, with a download from it in progress (8 MB/s: about 3 s).
    let target = dir.path().join("big.downloaded");
    let mut download = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--limit-rate", "8M", "-o"])
        .arg(&target)
        .arg(format!("http://127.0.0.1:{}/big.bin", base + 3))
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, out) = admin_command(&site, &["upgrade", "web1"]);
    assert!(ok && out.contains("web1: upgraded: pid"), "{out}");
    assert!(download.wait().unwrap().success(), "the download failed");
    assert_eq!(
        std::fs::read(&target).unwrap().len(),
        big.len(),
        "the download in progress was cut"
    );

    // app1, with a WebSocket on /live open through lb1 and a web server.
    let token = api_token(&http, &site_url, "ursula").await;
    let live = LiveSocket::open(&floating);
    assert_eq!(live.status, 101);
    let upgrading = {
        let site = site.clone();
        std::thread::spawn(move || admin_command(&site, &["upgrade", "app1"]))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid_on(app1).await == before[3] {
        assert!(Instant::now() < deadline, "app1's new process never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = api_post(&http, &site_url, &token, "made after the upgrade").await;
    assert_eq!(resp.status(), 201);
    let (_, pushed) = live
        .got
        .recv_timeout(Duration::from_secs(3))
        .expect("the WebSocket opened before the upgrade got the new post");
    assert!(pushed.contains("made after the upgrade"), "{pushed}");
    // The old app1 holds the WebSocket until it closes (or `timeouts.drain`).
    live.close();
    let (ok, out) = upgrading.join().unwrap();
    assert!(ok && out.contains("app1: upgraded: pid"), "{out}");

    // The active load balancer, then the other.
    for lb in ["lb1", "lb2"] {
        let (ok, out) = admin_command(&site, &["upgrade", lb]);
        assert!(ok && out.contains(&format!("{lb}: upgraded: pid")), "{out}");
    }

    let after = [
        pid_on(lb1).await,
        pid_on(lb2).await,
        pid_on(web1).await,
        pid_on(app1).await,
    ];
    for (i, name) in ["lb1", "lb2", "web1", "app1"].iter().enumerate() {
        assert_ne!(before[i], after[i], "{name} still runs its old process");
    }
    // One load balancer holds the floating address, and the new processes serve.
    let mut roles = Vec::new();
    for port in [lb1, lb2] {
        roles.push(cluster_of(port).await["role"].as_str().unwrap().to_string());
    }
    assert_eq!(
        roles.iter().filter(|r| *r == "active").count(),
        1,
        "{roles:?}"
    );

    for report in [statics.finish(), pages.finish()] {
        assert!(report.requests > 100, "{}", report.text);
        assert_eq!(report.failed, 0, "requests failed: {}", report.text);
    }
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_web_upgrades_one_web_server_at_a_time_and_no_request_fails() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let (site, up) = start_site(dir.path(), base);
    let (web1, web2) = (base + 13, base + 10);
    let before = (pid_on(web1).await, pid_on(web2).await);

    let load = Wrk::start(
        &format!("http://127.0.0.1:{base}/static/style.css"),
        12,
        Duration::from_secs(10),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, out) = admin_command(&site, &["roll", "web"]);
    assert!(ok, "{out}");
    for web in ["web1", "web2"] {
        assert!(out.contains(&format!("{web}: drained")), "{out}");
        assert!(out.contains(&format!("{web}: upgraded: pid")), "{out}");
        assert!(out.contains(&format!("{web}: ready")), "{out}");
    }
    // One at a time: web1 is back before web2 is drained.
    let at = |needle: &str| out.find(needle).unwrap();
    assert!(at("web1: ready") < at("web2: drained"), "{out}");
    let after = (pid_on(web1).await, pid_on(web2).await);
    assert!(
        after.0 != before.0 && after.1 != before.1,
        "{before:?} -> {after:?}"
    );

    let report = load.finish();
    assert!(report.requests > 100, "{}", report.text);
    assert_eq!(report.failed, 0, "requests failed: {}", report.text);
    drop(up);
}
