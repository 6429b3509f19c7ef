//! `scaleup drain` and `scaleup ready` with the real binary: a site with two web
//! servers under `scaleup up`; drained, web2 gets no request through the floating
//! address (each web server's access log says who served what); made ready, it ramps
//! up over the slow start and gets its share again. Admin writes without the token,
//! or with a wrong one, are refused with 401 and counted. An application server
//! drains through the web servers that use it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// `scaleup VERB web2 --site FILE` with the admin token from the state directory
/// (or `token` in the variable); exit success, stdout and stderr.
fn admin_command(verb: &str, site: &Path, token: Option<&str>) -> (bool, String, String) {
    admin_command_with(verb, &[], site, token)
}

/// [`admin_command`] with more arguments.
fn admin_command_with(
    verb: &str,
    args: &[&str],
    site: &Path,
    token: Option<&str>,
) -> (bool, String, String) {
    let mut cmd = scaleup();
    cmd.arg(verb).arg("web2").args(args).arg("--site").arg(site);
    match token {
        Some(t) => cmd.env("SCALEUP_ADMIN_TOKEN", t),
        None => cmd.env_remove("SCALEUP_ADMIN_TOKEN"),
    };
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("[{verb}] {stdout}{stderr}");
    (out.status.success(), stdout, stderr)
}

/// web2 as load balancer `admin` sees it (`GET /servers/web2`, open to read).
async fn web2_on(admin: u16) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{admin}/servers/web2");
    reqwest::get(&url).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_takes_web2_out_ready_brings_it_back_and_writes_need_the_token() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    // web2 in the load balancers' pool from the start, with a 3 s slow start.
    let site = state.join("site.toml");
    let text = two_web_site(base, state, "[\"web1\", \"web2\"]", "3s");
    std::fs::write(&site, text).unwrap();
    let (lb1_admin, lb2_admin) = (base + 11, base + 12);

    let mut up = up_site(&site);

    // `up` made a token and left it where the command line looks, for its owner only.
    let token_file = state.join("admin.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(token.trim().len(), 64, "256 random bits as hex");

    // Both web servers take their share.
    let (web1, web2) = spread(base, state, "before", 20).await;
    assert!(web1 > 0 && web2 > 0, "before: web1 {web1}, web2 {web2}");

    // Writes without the token, or with a wrong one: 401, counted, nothing changes.
    let http = reqwest::Client::new();
    let drain_url = format!("http://127.0.0.1:{lb1_admin}/servers/web2/drain");
    let resp = http.post(&drain_url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains("Authorization: Bearer"));
    let resp = http
        .post(&drain_url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let (ok, _, stderr) = admin_command("drain", &site, Some("also-wrong"));
    assert!(!ok, "a wrong token must fail the command");
    assert!(stderr.contains("401"), "{stderr}");
    let metrics = metrics_of(lb1_admin).await;
    assert!(
        metrics.contains("scaleup_admin_unauthorized_total{node=\"lb1\",reason=\"missing\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("scaleup_admin_unauthorized_total{node=\"lb1\",reason=\"wrong\"} 2"),
        "{metrics}"
    );
    assert_eq!(
        web2_on(lb1_admin).await["state"],
        "up",
        "refused writes change nothing"
    );
    // Reading stays open, and a write asked with GET says to POST it.
    let resp = reqwest::get(&drain_url).await.unwrap();
    assert_eq!(resp.status(), 405);

    // An HTTPS connection relayed to web2 (tcp mode) is in flight while it is open:
    // a drain that times out says what is left, fails, and leaves web2 draining.
    // Two connections in a row go one to each web server (1:1 round robin).
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", base + 5)).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while web2_on(lb1_admin).await["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "no relayed connection to web2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, _, stderr) = admin_command_with("drain", &["--timeout", "1s"], &site, None);
    assert!(!ok, "a drain with a request in flight must time out");
    assert!(stderr.contains("not idle after 1s"), "{stderr}");
    assert!(stderr.contains("lb1: 1 in flight"), "{stderr}");
    assert_eq!(web2_on(lb1_admin).await["state"], "draining");
    drop(held);

    // Drain: the command returns once web2 is idle on both load balancers.
    let started = Instant::now();
    let (ok, stdout, _) = admin_command("drain", &site, None);
    assert!(ok, "drain failed");
    assert!(stdout.contains("idle on lb1, lb2"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(10));
    for admin in [lb1_admin, lb2_admin] {
        let web2 = web2_on(admin).await;
        assert_eq!(web2["state"], "drained", "{web2}");
        assert_eq!(web2["up"], true, "still health-checked, still healthy");
    }
    let (web1, web2) = spread(base, state, "drained", 20).await;
    assert_eq!((web1, web2), (20, 0), "drained: everything to web1");

    // Ready: back with a slow start (3 s here), then its share again.
    let (ok, stdout, _) = admin_command("ready", &site, None);
    assert!(ok, "ready failed");
    assert!(stdout.contains("ramps up over 3s"), "{stdout}");
    let ramping = web2_on(lb1_admin).await;
    assert_eq!(ramping["state"], "up");
    let now = ramping["effective_weight"].as_f64().unwrap();
    assert!(now < 1.0, "just ready, still ramping: {ramping}");
    let deadline = Instant::now() + Duration::from_secs(6);
    while web2_on(lb1_admin).await["effective_weight"].as_f64() != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "slow start did not end within 6 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (web1, web2) = spread(base, state, "ready", 20).await;
    assert!(web2 >= 8 && web1 >= 8, "ready: web1 {web1}, web2 {web2}");

    // An application server drains through the web servers that use it: with app1
    // drained, both web servers answer their own 502 page; ready, the site answers.
    let mut cmd = scaleup();
    cmd.args(["drain", "app1", "--site"])
        .arg(&site)
        .env_remove("SCALEUP_ADMIN_TOKEN");
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("idle on web1, web2"), "{stdout}");
    let home = format!("http://127.0.0.1:{base}/");
    assert_eq!(reqwest::get(&home).await.unwrap().status(), 502);
    let mut cmd = scaleup();
    cmd.args(["ready", "app1", "--site"])
        .arg(&site)
        .env_remove("SCALEUP_ADMIN_TOKEN");
    assert!(cmd.status().unwrap().success());
    assert_eq!(reqwest::get(&home).await.unwrap().status(), 200);

    // A clean stop takes the token file away with the site.
    up.signal(Signal::SIGINT);
    assert_eq!(up.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(!token_file.exists(), "the token outlived the site");
}
