//! A real browser through the whole site over HTTPS: headless Chromium (Debian's
//! `chromium`) driven over the DevTools protocol opens the site through a load
//! balancer (TLS passed through to the web server), signs up, writes a post, and
//! the test reads the rendered page. The connection must be HTTP/2; a screenshot is
//! kept in `target/test-artifacts/`.
//!
//! Chromium only ever reaches loopback: every other name fails to resolve, and any
//! proxy use would hit a closed port.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
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

/// base64(SHA-256(SubjectPublicKeyInfo)) of the certificate: what
/// `--ignore-certificate-errors-spki-list` trusts, so only this certificate passes.
fn spki_hash(cert: &Path) -> String {
    use sha2::Digest;
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(cert)
        .output()
        .expect("openssl must be installed (scripts/install-test-deps installs it)");
    assert!(out.status.success(), "openssl x509 failed");
    let pem = String::from_utf8(out.stdout).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(der))
}

fn launch(profile: &Path, spki: &str) -> Browser {
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
        "--window-size=1100,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
    .arg("about:blank")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .process_group(0);
    use std::os::unix::process::CommandExt;
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

/// A plain GET on the DevTools HTTP endpoint.
fn devtools_get(port: u16, path: &str) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
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

/// One DevTools session with a page.
struct Page {
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Page {
    fn open(port: u16) -> Page {
        let targets = devtools_get(port, "/json/list");
        let url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools websocket");
        Page { ws, next_id: 1 }
    }

    /// Sends a command and returns its result (events in between are skipped).
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

    /// Polls `condition` until it is true.
    fn wait_until(&mut self, condition: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.eval(condition) == Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not true within 30 s; the page shows: {}",
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

#[test]
fn chromium_signs_up_and_posts_over_https_and_http2() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let _up = start_up(base, state.path());
    let origin = format!("https://localhost:{}", base + 5);

    let spki = spki_hash(&state.path().join("tls/www.foobar.com.crt"));
    let profile = tempfile::tempdir().unwrap();
    let _browser = launch(profile.path(), &spki);
    let mut page = Page::open(devtools_port(profile.path()));
    page.call("Page.enable", json!({}));

    page.call("Page.navigate", json!({"url": format!("{origin}/signup")}));
    page.wait_until(
        "document.readyState === 'complete' && !!document.querySelector('form.account')",
        "the signup form",
    );
    assert_eq!(
        page.eval("performance.getEntriesByType('navigation')[0].nextHopProtocol"),
        "h2",
        "the browser must speak HTTP/2 to the site"
    );
    page.eval(
        "document.querySelector('#username').value = 'carol';
         document.querySelector('#password').value = 'a long enough password';
         document.querySelector('form.account button[type=submit]').click(); true",
    );
    page.wait_until(
        "location.pathname === '/' && document.readyState === 'complete' \
         && !!document.querySelector('form.compose')",
        "the timeline after signing up",
    );

    page.eval(
        "document.querySelector('#body').value = 'Hello over HTTP/2 from headless Chromium';
         document.querySelector('form.compose button[type=submit]').click(); true",
    );
    page.wait_until(
        "document.readyState === 'complete' && document.body.innerText.includes('Hello over HTTP/2 from headless Chromium')",
        "the new post on the timeline",
    );
    let text = page.eval("document.body.innerText").to_string();
    assert!(text.contains("carol"), "the page names the author: {text}");

    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let path = artifacts_dir().join("chromium-signup-post.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // The web server saw the browser's requests as HTTP/2, from the browser itself.
    let log = std::fs::read_to_string(state.path().join("web1-access.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"POST /posts HTTP/2.0\"") && l.contains("Chrome")),
        "no HTTP/2 POST from Chromium in the access log:\n{log}"
    );
}
