//! Faults, with each node in its own process as on its own server: a dead web server
//! (the load balancer answers 503 quickly, then recovers), a dead application server
//! (the web server answers a clean 502 page).

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_web_server_gives_503_then_recovers_and_dead_app_gives_502() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    // The failure pages are the plain-HTTP frontend's: in `tcp` mode the HTTPS one
    // relays TLS and has no page to show.
    let site = write_plain_http_site(base, state.path());
    let lb = format!("http://127.0.0.1:{}", base + 1);
    let web = format!("http://127.0.0.1:{}", base + 3);

    let _app = run_node("app1", &site);
    wait_status(
        &format!("http://127.0.0.1:{}/healthz", base + 14),
        200,
        Duration::from_secs(60),
    )
    .await;
    let web_node = run_node("web1", &site);
    let _lb = run_node("lb1", &site);
    wait_status(&format!("{lb}/"), 200, Duration::from_secs(60)).await;

    // Kill the web server: the load balancer answers 503 with a page, not a hang.
    web_node.signal(Signal::SIGKILL);
    let took = wait_status(&format!("{lb}/"), 503, Duration::from_secs(5)).await;
    eprintln!("503 after {took:?}");
    let resp = reqwest::get(format!("{lb}/")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(resp.headers().contains_key("x-request-id"));
    let page = resp.text().await.unwrap();
    assert!(page.contains("503 Service Unavailable"), "{page}");
    drop(web_node);

    // Bring it back: after `rise` good checks (interval 1s, rise 2) the site works again.
    let _web_again = run_node("web1", &site);
    let took = wait_status(&format!("{lb}/"), 200, Duration::from_secs(15)).await;
    eprintln!("200 again after {took:?}");

    // Kill the application server: the web server answers a clean 502 page.
    drop(_app);
    let resp = reqwest::get(format!("{web}/")).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("502 Bad Gateway"));
    // Static files do not need the app.
    let resp = reqwest::get(format!("{web}/static/style.css"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Through the load balancer the web server's 502 is what the client sees.
    let resp = reqwest::get(format!("{lb}/")).await.unwrap();
    assert_eq!(resp.status(), 502);
}
