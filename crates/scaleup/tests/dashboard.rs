//! The dashboard in a real browser: `scaleup up` prints where it is, headless
//! Chromium (Debian's `chromium`, driven over the DevTools protocol) opens it on
//! both load balancers' admin listeners, and the test reads the page: every node
//! named and shown up, no console error, no failed request, no refused content
//! security policy. Then `scaleup drill kill lb1`: lb2's page shows lb2 holding the
//! floating address without a reload, and lb1's page says it lost contact and comes
//! back by itself once `up` has restarted lb1. A 5xx that web1 answers while app1
//! is dead is listed with its request id. A screenshot is kept in
//! `target/test-artifacts/dashboard.png`.
//!
//! Chromium only ever reaches loopback: every other name fails to resolve, and any
//! proxy use would hit a closed port.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::chromium::*;
use common::*;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::{json, Value};

/// The URL `up` printed as `dashboard: URL   (NODE)` for `node`.
fn dashboard_url(up: &Proc, node: &str) -> String {
    let line = up.wait_for_line(&format!("({node})"), Duration::from_secs(5));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.ends_with("/dashboard"))
        .unwrap_or_else(|| panic!("no dashboard URL in {line:?}"));
    url.to_string()
}

const NODES: [&str; 4] = ["lb1", "lb2", "web1", "app1"];

/// Every node's box shows it up, with its numbers in.
fn all_up() -> String {
    let each: Vec<String> = NODES
        .iter()
        .map(|n| format!("document.getElementById('n-{n}').classList.contains('up')"))
        .collect();
    format!(
        "document.getElementById('contact').textContent === 'live' && {}",
        each.join(" && ")
    )
}

#[test]
fn the_dashboard_shows_the_site_live_and_a_failover_without_a_reload() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let up = start_up(base, state.path());
    let lb1_url = dashboard_url(&up, "lb1");
    let lb2_url = dashboard_url(&up, "lb2");
    assert_eq!(lb1_url, format!("http://127.0.0.1:{}/dashboard", base + 11));

    let profile = tempfile::tempdir().unwrap();
    let _browser = launch(profile.path(), &["--window-size=1280,1500"]);
    let port = devtools_port(profile.path());

    // lb2's page (lb2 stands by, so it lives through the drill).
    let mut page = Page::new_tab(port);
    page.call("Page.navigate", json!({ "url": lb2_url }));
    page.wait_until(
        &all_up(),
        "every node up on lb2's page",
        Duration::from_secs(10),
    );
    let text = page.eval("document.body.innerText").to_string();
    for node in NODES {
        assert!(text.contains(node), "{node} is named on the page: {text}");
    }
    assert!(text.contains("dashboard served by lb2"), "{text}");
    assert!(
        page.holds("document.getElementById('holder').textContent === 'held by lb1'"),
        "lb1 holds the floating address at start: {text}"
    );
    assert!(
        page.holds("document.getElementById('n-db-sqlite').classList.contains('up')"),
        "the embedded database is shown up: {text}"
    );
    // Traffic shows: requests through the floating address appear as lb1's rate.
    let floating = std::net::SocketAddr::from(([127, 0, 0, 1], base));
    for _ in 0..20 {
        raw_exchange(
            floating,
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
    }
    page.wait_until(
        "/^[1-9]/.test(document.getElementById('l-lb1').textContent)",
        "lb1's request rate",
        Duration::from_secs(5),
    );

    // lb1's page, in a second tab, watched for losing contact.
    let mut lb1_page = Page::new_tab(port);
    lb1_page.call("Page.navigate", json!({ "url": lb1_url }));
    lb1_page.wait_until(
        &all_up(),
        "every node up on lb1's page",
        Duration::from_secs(10),
    );
    lb1_page.eval(
        "window.lost = false;
         const c = document.getElementById('contact');
         new MutationObserver(() => {
           if (c.textContent === 'lost contact with lb1, trying again') {
             window.lost = true;
             const peers = document.getElementById('peers');
             window.offered = peers.hidden ? null : peers.querySelector('a').href;
           }
         }).observe(c, {childList: true, characterData: true, subtree: true});
         true",
    );

    // The drill. The page must not be reloaded: a mark set now must survive.
    page.eval("window.mark = 'before the drill'; true");
    let mut drill = scaleup();
    drill
        .args(["drill", "kill", "lb1", "--duration", "1s", "--base-port"])
        .arg(base.to_string())
        .arg("--state-dir")
        .arg(state.path());
    let mut drill = Proc::spawn("drill", drill);
    let started = Instant::now();
    page.wait_until(
        "document.getElementById('holder').textContent === 'held by lb2'",
        "lb2 holding the floating address on lb2's page",
        Duration::from_secs(10),
    );
    eprintln!(
        "lb2's page showed lb2 active {:?} after the drill started",
        started.elapsed()
    );
    assert!(
        page.holds("window.mark === 'before the drill'"),
        "the page was reloaded"
    );
    lb1_page.wait_until(
        "window.lost === true",
        "lb1's page losing contact",
        Duration::from_secs(10),
    );
    assert_eq!(
        lb1_page.eval("window.offered"),
        Value::String(lb2_url.clone()),
        "lb1's page offers lb2's dashboard while lb1 is away"
    );
    assert_eq!(
        drill.wait_exit(Duration::from_secs(15)),
        Some(0),
        "the drill failed"
    );
    // `up` restarts lb1; its page finds it again by itself.
    lb1_page.wait_until(
        "document.getElementById('contact').textContent === 'live'",
        "lb1's page back in contact",
        Duration::from_secs(15),
    );
    let events = page
        .eval("document.getElementById('events').innerText")
        .to_string();
    assert!(
        events.contains("lb2: passive → active"),
        "the takeover is listed: {events}"
    );

    // A server error, with its request id: app1 dies, and web1 answers a request for
    // it with a 5xx (before `up` restarts app1), which the page lists.
    let app_admin = std::net::SocketAddr::from(([127, 0, 0, 1], base + 14));
    let status = raw_exchange(
        app_admin,
        b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let body = status.split_once("\r\n\r\n").unwrap().1;
    let pid = serde_json::from_str::<Value>(body).unwrap()["pid"]
        .as_i64()
        .unwrap();
    nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(app_admin).is_ok() {
        assert!(Instant::now() < deadline, "app1 did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    let web1 = std::net::SocketAddr::from(([127, 0, 0, 1], base + 3));
    let answer = raw_exchange(
        web1,
        b"GET /api/me HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(status_of(&answer) >= 500, "app1 is dead: {answer}");
    let rid = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no request id: {answer}"))
        .trim()
        .to_string();
    page.wait_until(
        &format!(
            "document.getElementById('errors').innerText.includes('web1 {} GET /api/me rid={rid}')",
            status_of(&answer)
        ),
        "the server error on the page",
        Duration::from_secs(5),
    );

    // The picture after it all: lb2 active, the takeover listed, the error.
    page.screenshot("dashboard.png");

    // Whatever the page reported until now has been read by this last call.
    page.eval("true");
    assert!(
        page.problems.is_empty(),
        "lb2's page had problems: {:#?}",
        page.problems
    );
}
