//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the
//! tests that read the site as a browser renders it (`browser.rs`, `dashboard.rs`).
//!
//! Chromium only ever reaches loopback: every other name fails to resolve, and any
//! proxy use would hit a closed port.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Chromium in its own process group, killed whole (renderers and all) at the end.
pub struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

pub fn chromium_binary() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("chromium must be installed (scripts/install-test-deps installs it)")
}

/// Chromium on a fresh `profile` (its `--user-data-dir`), showing `about:blank`, with
/// DevTools on a port it picks (see [`devtools_port`]). `extra` holds what differs
/// between tests (window size, a certificate pin); the flags that keep it quiet and on
/// loopback are always there.
pub fn launch(profile: &Path, extra: &[&str]) -> Browser {
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
    ])
    .args(extra)
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg("about:blank")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .process_group(0);
    Browser(cmd.spawn().expect("cannot start chromium"))
}

/// The DevTools endpoint Chromium wrote into its profile once it listens.
pub fn devtools_port(profile: &Path) -> u16 {
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
pub fn devtools_http(port: u16, method: &str, path: &str) -> Value {
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

/// One DevTools session with a page, keeping every problem the page reports (once its
/// `Runtime`, `Log` and `Network` events are on, as [`Page::new_tab`] does).
pub struct Page {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// Console errors, exceptions, failed requests and error statuses, as text.
    pub problems: Vec<String>,
}

impl Page {
    /// The tab Chromium opened at start (`about:blank`), with no events turned on.
    pub fn first_tab(port: u16) -> Page {
        let targets = devtools_http(port, "GET", "/json/list");
        let url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        Page::connect(port, &url)
    }

    /// A new tab, with console, log and network events on.
    pub fn new_tab(port: u16) -> Page {
        let target = devtools_http(port, "PUT", "/json/new?about:blank");
        let url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("a page target")
            .to_string();
        let mut page = Page::connect(port, &url);
        for domain in ["Page", "Runtime", "Log", "Network"] {
            page.call(&format!("{domain}.enable"), json!({}));
        }
        page
    }

    fn connect(port: u16, url: &str) -> Page {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (ws, _) = tungstenite::client(url, stream).expect("DevTools websocket");
        Page {
            ws,
            next_id: 1,
            problems: Vec::new(),
        }
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
    pub fn call(&mut self, method: &str, params: Value) -> Value {
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
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        result["result"]["value"].clone()
    }

    /// Whether `condition` holds now.
    pub fn holds(&mut self, condition: &str) -> bool {
        self.eval(condition) == Value::Bool(true)
    }

    /// Polls `condition` until it is true, within `within`.
    pub fn wait_until(&mut self, condition: &str, what: &str, within: Duration) {
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

    /// A PNG of the page, kept as `name` in [`artifacts_dir`]; its path.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let path = artifacts_dir().join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }
}

/// `target/test-artifacts/`: what a test keeps for a person to look at.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
