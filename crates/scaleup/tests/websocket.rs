//! A WebSocket through the whole house: a client opens `/live` on the floating
//! address (lb1 → web1 → app1, each its own process under `scaleup up`), a post is
//! made through the JSON API, and the WebSocket receives it within a second. The
//! tunnel is counted on the load balancer and the web server, and the web server logs
//! it when it closes.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_through_lb_and_web_receives_a_new_post_within_a_second() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    // Plain HTTP on the floating address, without the redirect to HTTPS.
    let site = write_plain_http_site(base, state.path());
    let up = up_site(&site);
    let floating = format!("127.0.0.1:{base}");
    let site_url = format!("http://{floating}");

    // The timeline page links the live script, which the web server serves.
    let home = get_text(&format!("{site_url}/")).await;
    assert!(home.contains("src=\"/static/live.js\""), "{home}");
    assert!(home.contains("data-live"), "{home}");
    let script = get_text(&format!("{site_url}/static/live.js")).await;
    assert!(script.contains("/live"), "{script}");

    let api = reqwest::Client::new();
    let token = api_token(&api, &site_url, "wendy").await;

    // The WebSocket, on a thread of its own: what it receives, and when.
    let live = LiveSocket::open(&floating);
    assert_eq!(live.status, 101, "switched protocols");

    // Both proxies carry the tunnel.
    for (node, admin) in [("lb1", base + 11), ("web1", base + 13)] {
        let metrics = metrics_of(admin).await;
        assert!(
            metrics.contains(&format!("scaleup_tunnels_open{{node=\"{node}\"}} 1")),
            "{node}: {metrics}"
        );
    }

    let body = "live through the house <b>not markup</b>";
    let sent = Instant::now();
    let resp = api_post(&api, &site_url, &token, body).await;
    assert_eq!(resp.status(), 201);
    let created: serde_json::Value = resp.json().await.unwrap();
    let (at, message) = live
        .got
        .recv_timeout(Duration::from_secs(3))
        .expect("the new post on the WebSocket");
    let took = at.duration_since(sent);
    eprintln!("post pushed through the WebSocket {took:?} after it was sent");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let pushed: serde_json::Value = serde_json::from_str(&message).unwrap();
    assert_eq!(pushed, created["post"], "the API's fields");
    assert_eq!(pushed["body"], body);
    assert_eq!(pushed["author"], "wendy");

    // Closed by the client: the web server logs the WebSocket once it ends.
    live.close();
    let log = state.path().join("web1-access.log");
    let start = Instant::now();
    loop {
        let metrics = metrics_of(base + 11).await;
        let lines = std::fs::read_to_string(&log).unwrap_or_default();
        let logged = lines
            .lines()
            .find(|l| l.contains("\"GET /live HTTP/1.1\" 101"));
        if metrics.contains("scaleup_tunnels_open{node=\"lb1\"} 0") {
            if let Some(line) = logged {
                // The bytes the WebSocket carried to the client: at least the post.
                let bytes: u64 = line
                    .split("\" 101 ")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(bytes >= message.len() as u64, "{line}");
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "tunnel still open or not logged; {}: {lines}\n{metrics}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(up);
}
