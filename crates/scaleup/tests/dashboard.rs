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

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Chromium in its own process group, killed whole (renderers and all) at the end.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn chromium_binary() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromium must be installed (scripts/install-test-deps installs it)")
}

/// Chromium with the same flags as `browser.rs`, on `profile`.
fn launch(profile: &Path) -> Browser {
    let mut cmd = Command::new(chromium_binary());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--proxy-server=127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.*",
        "--remote-debugging-port=0",
        "--window-size=1280,1500",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg("about:blank")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .process_group(0);
    Browser(cmd.spawn().expect("cannot start chromium"))
}

/// The DevTools endpoint Chromium wrote into its profile once it listens.
fn devtools_port(profile: &Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some(port) = text.lines().next().and_then(|l| l.parse().ok()) {
                return port;
            }
        }
        assert!(Instant::now() < deadline, "chromium did not open DevTools");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP request on the DevTools endpoint; its JSON answer.
fn devtools_http(port: u16, method: &str, path: &str) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Chromium keeps the connection open: read the head, then Content-Length bytes.
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "DevTools closed the connection early");
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("DevTools sends Content-Length");
        if body.len() >= len {
            return serde_json::from_str(&body[..len]).unwrap();
        }
    }
}

/// One DevTools session with a page, keeping every problem the page reports.
struct Page {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// Console errors, exceptions, failed requests and error statuses, as text.
    problems: Vec<String>,
}

impl Page {
    /// A new tab, with console, log and network events on.
    fn open(port: u16) -> Page {
        let target = devtools_http(port, "PUT", "/json/new?about:blank");
        let url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("a page target")
            .to_string();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools websocket");
        let mut page = Page {
            ws,
            next_id: 1,
            problems: Vec::new(),
        };
        for domain in ["Page", "Runtime", "Log", "Network"] {
            page.call(&format!("{domain}.enable"), json!({}));
        }
        page
    }

    /// Notes `event` if it is a problem.
    fn observe(&mut self, event: &Value) {
        let params = &event["params"];
        let problem = match event["method"].as_str().unwrap_or("") {
            "Runtime.consoleAPICalled"
                if matches!(params["type"].as_str(), Some("error" | "assert")) =>
            {
                Some(format!("console.error: {}", params["args"]))
            }
            "Runtime.exceptionThrown" => Some(format!(
                "exception: {}",
                params["exceptionDetails"]["exception"]["description"]
            )),
            // Chromium reports refused CSP directives and failed loads here.
            "Log.entryAdded" if params["entry"]["level"] == "error" => Some(format!(
                "log: {} ({})",
                params["entry"]["text"], params["entry"]["url"]
            )),
            "Network.loadingFailed" => Some(format!(
                "request failed: {} {}",
                params["errorText"], params["requestId"]
            )),
            "Network.responseReceived" if params["response"]["status"].as_u64() >= Some(400) => {
                Some(format!(
                    "{} {}",
                    params["response"]["status"], params["response"]["url"]
                ))
            }
            _ => None,
        };
        if let Some(problem) = problem {
            eprintln!("page problem: {problem}");
            self.problems.push(problem);
        }
    }

    /// Sends a command and returns its result, observing the events in between.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).unwrap();
        loop {
            let msg = self.ws.read().expect("DevTools answer");
            let Message::Text(text) = msg else { continue };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
            self.observe(&value);
        }
    }

    /// Evaluates `expression` in the page; its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        result["result"]["value"].clone()
    }

    /// Whether `condition` holds now.
    fn holds(&mut self, condition: &str) -> bool {
        self.eval(condition) == Value::Bool(true)
    }

    /// Polls `condition` until it is true, within `within`.
    fn wait_until(&mut self, condition: &str, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.holds(condition) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not true within {within:?}; the page shows: {}",
                self.eval("document.body ? document.body.innerText : ''")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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
    let _browser = launch(profile.path());
    let port = devtools_port(profile.path());

    // lb2's page (lb2 stands by, so it lives through the drill).
    let mut page = Page::open(port);
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
    let mut lb1_page = Page::open(port);
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
    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let path = artifacts_dir().join("dashboard.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // Whatever the page reported until now has been read by this last call.
    page.eval("true");
    assert!(
        page.problems.is_empty(),
        "lb2's page had problems: {:#?}",
        page.problems
    );
}
