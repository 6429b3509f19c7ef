//! The whole site end to end: `scaleup up` on the built-in default site, a real
//! HTTPS client through a load balancer, then Ctrl-C; plain HTTP redirected to HTTPS;
//! the state directory and the site file (it holds the cluster secret) private.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_the_foobar_application_through_a_load_balancer_and_stops_cleanly() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let mut up = start_up(base, state.path());

    // The site's floating HTTPS address, held by the active load balancer, and lb2's
    // own HTTPS frontend: the session cookie is `Secure`, so logging in is HTTPS only.
    let lb1 = https_site(base);
    let lb2 = format!("https://localhost:{}", base + 7);
    let client = https_client(state.path())
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // The home page, through lb1, with the request id every hop shares.
    let home = client.get(format!("{lb1}/")).send().await.unwrap();
    assert_eq!(home.status(), 200);
    let request_id = home.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(home.text().await.unwrap().contains("/static/style.css"));

    // Sign up (the form's CSRF token comes from the form page).
    let form = page(&client, &format!("{lb1}/signup")).await;
    let csrf = csrf_of(&form);
    let resp = client
        .post(format!("{lb1}/signup"))
        .form(&[
            ("username", "alice"),
            ("password", TEST_PASSWORD),
            ("csrf", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303, "signup redirects");

    // A form post without the CSRF token is refused.
    let resp = client
        .post(format!("{lb1}/posts"))
        .form(&[("body", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // Write a post, then read it on the timeline (HTML and JSON) and on alice's page.
    let home_page = page(&client, &format!("{lb1}/")).await;
    let csrf = csrf_of(&home_page);
    let resp = client
        .post(format!("{lb1}/posts"))
        .form(&[("body", "Hello from the scale-up site"), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let timeline = page(&client, &format!("{lb1}/")).await;
    assert!(timeline.contains("Hello from the scale-up site"));
    let json = json_of(&client, &format!("{lb1}/api/timeline")).await;
    assert_eq!(json["posts"][0]["body"], "Hello from the scale-up site");
    assert_eq!(json["posts"][0]["author"], "alice");
    let user_page = client.get(format!("{lb2}/u/alice")).send().await.unwrap();
    assert_eq!(user_page.status(), 200, "lb2 serves the same site");
    assert!(user_page
        .text()
        .await
        .unwrap()
        .contains("Hello from the scale-up site"));

    // Log out: the compose form is gone; log in again: it is back.
    let csrf = csrf_of(&timeline);
    let resp = client
        .post(format!("{lb1}/logout"))
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let anonymous = page(&client, &format!("{lb1}/")).await;
    assert!(
        !anonymous.contains("name=\"body\""),
        "logged out: no compose form"
    );
    let form = page(&client, &format!("{lb1}/login")).await;
    let resp = client
        .post(format!("{lb1}/login"))
        .form(&[
            ("username", "alice"),
            ("password", TEST_PASSWORD),
            ("csrf", &csrf_of(&form)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let back = page(&client, &format!("{lb1}/")).await;
    assert!(
        back.contains("name=\"body\""),
        "logged in again: compose form"
    );

    // The JSON API with a bearer token.
    let api = https_client(state.path()).build().unwrap();
    let token = api_login(&api, &lb2, "alice").await;
    let resp = api
        .post(format!("{lb2}/api/posts"))
        .bearer_auth(token)
        .json(&serde_json::json!({"body": "via the API"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // A static file from the web server: ETag, then 304; a range, then 206.
    let css = client
        .get(format!("{lb1}/static/style.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    assert!(css.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    let etag = css.headers()["etag"].clone();
    let full = css.bytes().await.unwrap();
    let again = client
        .get(format!("{lb1}/static/style.css"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let part = client
        .get(format!("{lb1}/static/style.css"))
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 0-9/{}", full.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), full.slice(0..10));

    // The web server's access log has the first request, with the load balancer's id
    // and the client's address (from the PROXY header), over HTTP/2 as ALPN chose.
    let log_path = state.path().join("web1-access.log");
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains(&request_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = log
        .lines()
        .find(|l| l.contains(&format!("rid={request_id}")))
        .unwrap_or_else(|| panic!("no access-log line for {request_id} in:\n{log}"));
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("\"GET / HTTP/2.0\" 200 "), "{line}");

    // Every node's admin listener reports; `scaleup status` sees them all up.
    let metrics = page(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{}/metrics", base + 11),
    )
    .await;
    assert!(
        metrics.contains("scaleup_upstream_up{node=\"lb1\",pool=\"web\",server=\"web1\"} 1"),
        "{metrics}"
    );
    let status = scaleup()
        .arg("status")
        .arg("--base-port")
        .arg(base.to_string())
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "status: {text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for node in ["lb1", "lb2", "web1", "app1"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(node) && l.contains(" up ")),
            "{node} up in:\n{text}"
        );
    }

    // Ctrl-C: every node stops, the supervisor exits 0, nothing listens any more.
    up.signal(Signal::SIGINT);
    assert_eq!(up.wait_exit(Duration::from_secs(30)), Some(0));
    for port in [
        base,
        base + 1,
        base + 2,
        base + 3,
        base + 4,
        base + 5,
        base + 11,
        base + 14,
    ] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still open after stop"
        );
    }
}

#[test]
fn killing_the_supervisor_leaves_no_node_behind() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let up = start_up(base, state.path());
    up.signal(Signal::SIGKILL);
    // The nodes see their standard input close and stop on their own.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for port in [base + 1, base + 2, base + 3, base + 4, base + 14] {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "port {port} still served after the supervisor died"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The built-in default site has HTTPS, so plain HTTP answers 308 to it, on the
/// floating address and on each load balancer, except health checks and ACME
/// challenges. And `scaleup up` keeps what it writes to itself: the state directory
/// is 0700, the generated site file (it holds the cluster secret) 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_site_redirects_plain_http_to_https_and_keeps_its_files_private() {
    use std::os::unix::fs::PermissionsExt;
    let base = free_base(DEFAULT_SITE_PORTS);
    let parent = tempfile::tempdir().unwrap();
    let state = parent.path().join("state");
    let _up = start_up(base, &state);

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "state directory");
    assert_eq!(mode(&state.join("site.toml")), 0o600, "generated site file");

    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // The floating address and lb2's own listener, both to the site's HTTPS address.
    let tls_port = base + 5;
    for port in [base, base + 2] {
        let resp = plain
            .post(format!("http://127.0.0.1:{port}/login?next=%2F"))
            .form(&[("username", "alice"), ("password", "in clear")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 308, "port {port}");
        assert_eq!(
            resp.headers()["location"],
            format!("https://127.0.0.1:{tls_port}/login?next=%2F").as_str(),
            "the same path and query on HTTPS"
        );
        let health = plain
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "health checks stay on plain HTTP");
        let acme = plain
            .get(format!(
                "http://127.0.0.1:{port}/.well-known/acme-challenge/token"
            ))
            .send()
            .await
            .unwrap();
        assert_ne!(acme.status(), 308, "ACME challenges stay on plain HTTP");
    }

    // Following the redirect lands on the site, with HSTS.
    let follow = https_client(&state)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = follow
        .get(format!("http://127.0.0.1:{base}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.url().scheme(), "https");
    assert!(resp.headers().contains_key("strict-transport-security"));
}
