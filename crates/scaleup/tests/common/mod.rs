//! What the integration tests share: free ports, the real `scaleup` binary as child
//! processes that are always cleaned up, and raw-socket helpers.
#![allow(dead_code)] // each test file uses its own subset

pub mod chromium;
pub mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How many ports the built-in default site uses from its base port: +0 the
/// floating address, +1/+2 lb1/lb2, +3 web1, +4 app1, +5 the floating HTTPS address,
/// +6..+8 the HTTPS listeners of lb1, lb2 and web1, +11..+14 their admin listeners,
/// +21/+22 the heartbeats.
pub const DEFAULT_SITE_PORTS: u16 = 23;

/// A base port with `count` free ports after it on 127.0.0.1, at random (tests run in
/// parallel) and below the kernel's ephemeral range (see `testkit`).
pub fn free_base(count: u16) -> u16 {
    testkit::free_ports(count)
}

/// The `scaleup` binary under test.
pub fn scaleup() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scaleup"))
}

/// A child process that is killed (and reaped) when the test ends, pass or fail.
pub struct Proc {
    pub child: Child,
    pub name: String,
    /// Lines the process printed on stdout and stderr.
    pub lines: mpsc::Receiver<String>,
    /// Stopped with SIGINT (then SIGKILL after 60 s) when dropped, not killed at once:
    /// `scaleup up` with managed MariaDB servers stops them only when it stops cleanly.
    graceful: bool,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[{name}] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        Proc {
            child,
            name: name.to_string(),
            lines: rx,
            graceful: false,
        }
    }

    /// [`Proc::spawn`], stopped cleanly when dropped (a `scaleup up` that runs
    /// managed MariaDB servers, which a SIGKILL would leave behind).
    pub fn spawn_graceful(name: &str, cmd: Command) -> Proc {
        let mut proc = Proc::spawn(name, cmd);
        proc.graceful = true;
        proc
    }

    /// Waits for a printed line containing `needle`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("{} did not print {needle:?} within {timeout:?}", self.name),
            }
        }
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not exit within {timeout:?}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.graceful {
                self.signal(Signal::SIGINT);
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Writes the built-in default site on `base` into `dir`; the site file's path.
pub fn write_default_site(base: u16, dir: &Path) -> PathBuf {
    let text = site::default_site(base, &dir.to_string_lossy(), "test-secret");
    let path = dir.join("site.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Like [`write_default_site`], with `https_redirect = false`: for tests about what
/// happens on the plain-HTTP path itself (failure pages, malformed requests), which
/// the default site otherwise answers with 308 to HTTPS.
pub fn write_plain_http_site(base: u16, dir: &Path) -> PathBuf {
    let text = site::default_site(base, &dir.to_string_lossy(), "test-secret").replacen(
        "[balancer]\n",
        "[balancer]\nhttps_redirect = false\n",
        1,
    );
    let path = dir.join("site.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The default site on `base` with a managed MariaDB primary (`base+23`) and replica
/// (`base+24`) instead of SQLite; the password comes from the environment.
pub fn write_mariadb_site(base: u16, dir: &std::path::Path) -> std::path::PathBuf {
    let text = site::default_site(base, &dir.to_string_lossy(), "test-secret");
    let head = &text[..text
        .find("[database]")
        .expect("default site has [database]")];
    let text = format!(
        "{head}[database]\n\
         kind = \"mysql\"\n\
         primary = \"mysql://foobar@127.0.0.1:{p}/foobar\"\n\
         replicas = [\"mysql://foobar@127.0.0.1:{r}/foobar\"]\n\
         password_env = \"SCALEUP_TEST_DB_PASSWORD\"\n\
         managed = true\n",
        p = base + 23,
        r = base + 24
    );
    let path = dir.join("site.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The default site's floating HTTPS address on `base` (lb1 holds it at start), by the
/// name its self-signed certificate carries.
pub fn https_site(base: u16) -> String {
    format!("https://localhost:{}", base + 5)
}

/// A client that trusts the site's self-signed certificate in `state` (made by `scaleup
/// up` before the nodes start) and no other authority, as a browser told to trust it.
pub fn https_client(state: &Path) -> reqwest::ClientBuilder {
    let cert = state.join("tls/www.foobar.com.crt");
    let pem = std::fs::read(&cert).unwrap_or_else(|e| panic!("{}: {e}", cert.display()));
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
}

/// Runs one node of a site file, as `scaleup run` on its own server.
pub fn run_node(name: &str, site: &Path) -> Proc {
    let mut cmd = scaleup();
    cmd.arg("run").arg(name).arg("--site").arg(site);
    Proc::spawn(name, cmd)
}

/// Polls `GET url` until it answers `want`, within `timeout`; the elapsed time.
pub async fn wait_status(url: &str, want: u16, timeout: Duration) -> Duration {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match client.get(url).send().await {
            Ok(resp) if resp.status().as_u16() == want => return start.elapsed(),
            Ok(resp) => last = format!("status {}", resp.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not answer {want} within {timeout:?} (last: {last})");
}

/// Sends `bytes` on a fresh connection and reads the answer until the server closes
/// or goes quiet.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        // A complete answer without Content-Length issues would hang; stop once the
        // head and a Content-Length body are in.
        if let Some(done) = complete_len(&out) {
            if out.len() >= done {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn complete_len(bytes: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(bytes);
    let head_end = text.find("\r\n\r\n")? + 4;
    let len = text[..head_end]
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    Some(head_end + len)
}

/// The status code of a raw HTTP answer.
pub fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// The value of hidden field `csrf` in a page.
pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in page: {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// `GET url` with `client`: the page's text.
pub async fn page(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// `GET url` on a connection of its own: the answer's text.
pub async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// `/metrics` of the node whose admin listener is on 127.0.0.1:`admin`.
pub async fn metrics_of(admin: u16) -> String {
    get_text(&format!("http://127.0.0.1:{admin}/metrics")).await
}

/// The `cluster` part of `/status` of the load balancer whose admin listener is on
/// 127.0.0.1:`admin`: its role, its peer, what its heartbeats carry and rejected.
pub async fn cluster_of(admin: u16) -> serde_json::Value {
    let status = get_text(&format!("http://127.0.0.1:{admin}/status")).await;
    serde_json::from_str::<serde_json::Value>(&status).unwrap()["cluster"].clone()
}

/// `GET url` with `client`: the answer as JSON (a node's `/status`, an API answer).
pub async fn json_of(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Starts `scaleup up` on the built-in default site and waits until it is up.
pub fn start_up(base: u16, state: &Path) -> Proc {
    let mut cmd = scaleup();
    cmd.arg("up")
        .arg("--base-port")
        .arg(base.to_string())
        .arg("--state-dir")
        .arg(state);
    let up = Proc::spawn("up", cmd);
    up.wait_for_line("is up", Duration::from_secs(120));
    up
}

/// Where `name` is installed: Debian puts server programs in /usr/sbin, which a
/// non-root `PATH` often lacks, so those folders are looked in first.
pub fn program(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .or_else(|| {
            Command::new(name)
                .arg("--version")
                .output()
                .ok()
                .map(|_| PathBuf::from(name))
        })
}

/// What a test needs beyond Rust: `true` when `found`. Under `CI=true` a missing one
/// fails the test (CI must run it; `scripts/install-test-deps` installs it); elsewhere
/// the test is skipped, loudly.
pub fn needs(found: bool, what: &str, package: &str) -> bool {
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} is not installed, and CI must run this test: run scripts/install-test-deps"
        );
        eprintln!("\n*** SKIPPING: {what} is not installed (apt-get install {package}) ***\n");
    }
    found
}

/// `true` when MariaDB's server is installed (see [`needs`]).
pub fn mariadb_available() -> bool {
    needs(program("mariadbd").is_some(), "mariadbd", "mariadb-server")
}

/// The password the tests give the accounts they make: long enough for the app's rule.
pub const TEST_PASSWORD: &str = "correct horse battery";

/// Logs `username` (password [`TEST_PASSWORD`]) in through the JSON API at `site_url`;
/// the bearer token.
pub async fn api_login(client: &reqwest::Client, site_url: &str, username: &str) -> String {
    let resp = client
        .post(format!("{site_url}/api/login"))
        .json(&serde_json::json!({"username": username, "password": TEST_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "logging {username} in");
    let login: serde_json::Value = resp.json().await.unwrap();
    login["token"]
        .as_str()
        .unwrap_or_else(|| panic!("login gives a token: {login}"))
        .to_string()
}

/// Signs `username` up through the JSON API at `site_url` (which must answer 201), then
/// logs in; the bearer token.
pub async fn api_token(client: &reqwest::Client, site_url: &str, username: &str) -> String {
    let resp = client
        .post(format!("{site_url}/api/signup"))
        .json(&serde_json::json!({"username": username, "password": TEST_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "signing {username} up");
    api_login(client, site_url, username).await
}

/// Posts `body` through `site_url` with the API token `token`; the answer (201 when
/// the post was made).
pub async fn api_post(
    client: &reqwest::Client,
    site_url: &str,
    token: &str,
    body: &str,
) -> reqwest::Response {
    client
        .post(format!("{site_url}/api/posts"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "body": body }))
        .send()
        .await
        .unwrap()
}

/// The default site on `base` in `dir` with a second web server, web2 (+9, admin +10,
/// HTTPS +15, all unused by the default site), and the load balancers' pool set to
/// `pool` (a TOML array: `["web1"]` leaves web2 running in no pool); plain HTTP kept
/// (no 308) and a slow start of `slowstart` (a TOML duration such as `"3s"`).
pub fn two_web_site(base: u16, dir: &Path, pool: &str, slowstart: &str) -> String {
    site::default_site(base, &dir.to_string_lossy(), "test-secret")
        .replacen("servers = [\"web1\"]", &format!("servers = {pool}"), 1)
        .replacen(
            "slowstart = \"10s\"",
            &format!("slowstart = \"{slowstart}\""),
            1,
        )
        .replacen("[balancer]\n", "[balancer]\nhttps_redirect = false\n", 1)
        .replacen(
            "# The application server",
            &format!(
                "[[web]]\nname = \"web2\"\nlisten = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n\
                 tls_listen = \"127.0.0.1:{}\"\napps = [\"app1\"]\n\n# The application server",
                base + 9,
                base + 10,
                base + 15
            ),
            1,
        )
}

/// Starts `scaleup up` on the site file `site` and waits until it is up. The admin token
/// is taken out of the environment, so `up` makes one and leaves it in the state
/// directory, where the admin commands look.
pub fn up_site(site: &Path) -> Proc {
    let mut cmd = scaleup();
    cmd.arg("up")
        .arg("--site")
        .arg(site)
        .env_remove("SCALEUP_ADMIN_TOKEN");
    let up = Proc::spawn("up", cmd);
    up.wait_for_line("is up", Duration::from_secs(120));
    up
}

/// Lines of `web`'s access log in `state` that carry `mark`.
pub fn served(state: &Path, web: &str, mark: &str) -> usize {
    std::fs::read_to_string(state.join(format!("{web}-access.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(mark))
        .count()
}

/// Sends `count` requests marked `mark` through the floating address on `base`, all
/// 200, then waits (bounded) until the access logs of web1 and web2 hold them all; how
/// many each served.
pub async fn spread(base: u16, state: &Path, mark: &str, count: usize) -> (usize, usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for i in 0..count {
        let url = format!("http://127.0.0.1:{base}/static/style.css?{mark}-{i}");
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
    }
    // Lines reach the logs through a writer thread, in batches: wait until all are written.
    let tag = format!("?{mark}-");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (web1, web2) = (served(state, "web1", &tag), served(state, "web2", &tag));
        if web1 + web2 >= count {
            return (web1, web2);
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {count} `{mark}` requests reached the access logs",
            web1 + web2
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket on the foobar app's `GET /live` (each new post pushed as JSON), read on
/// a thread of its own for 15 s at the most, or until [`LiveSocket::close`].
pub struct LiveSocket {
    /// The handshake's status: 101 when the proxies let the upgrade through.
    pub status: u16,
    /// Each text message, with when it arrived.
    pub got: mpsc::Receiver<(Instant, String)>,
    close: mpsc::Sender<()>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LiveSocket {
    /// Opens `ws://ADDR/live` (`addr` as `127.0.0.1:PORT`); waits for the handshake.
    pub fn open(addr: &str) -> LiveSocket {
        let (status_tx, status) = mpsc::channel();
        let (got_tx, got) = mpsc::channel();
        let (close, close_rx) = mpsc::channel::<()>();
        let addr = addr.to_string();
        let reader = std::thread::spawn(move || {
            let stream = TcpStream::connect(addr.as_str()).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let (mut ws, resp) = tungstenite::client(format!("ws://{addr}/live"), stream)
                .expect("WebSocket handshake through lb1 and web1");
            status_tx.send(resp.status().as_u16()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && close_rx.try_recv().is_err() {
                match ws.read() {
                    Ok(tungstenite::Message::Text(text)) => {
                        let _ = got_tx.send((Instant::now(), text.to_string()));
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("WebSocket failed: {e}"),
                }
            }
            let _ = ws.close(None);
            let _ = ws.flush();
        });
        let status = status
            .recv_timeout(Duration::from_secs(10))
            .expect("the WebSocket handshake did not complete within 10 s");
        LiveSocket {
            status,
            got,
            close,
            reader: Some(reader),
        }
    }

    /// Closes the WebSocket from the client's side; fails if reading it failed.
    pub fn close(mut self) {
        let _ = self.close.send(());
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the WebSocket reader failed");
        }
    }
}

impl Drop for LiveSocket {
    fn drop(&mut self) {
        let _ = self.close.send(());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// wrk, the HTTP load generator, run against one URL for a bounded time in the
/// background (2 threads, a 5 s timeout per request). Installed by
/// `scripts/install-test-deps`; a test that needs it fails without it.
pub struct Wrk {
    child: Child,
    url: String,
}

/// What wrk counted.
#[derive(Debug)]
pub struct WrkReport {
    /// Requests answered.
    pub requests: u64,
    /// Answers that were not 2xx or 3xx, and socket errors (connect, read, write,
    /// timeout): requests a client saw fail.
    pub failed: u64,
    /// wrk's own words.
    pub text: String,
}

impl Wrk {
    pub fn start(url: &str, connections: u32, length: Duration) -> Wrk {
        let child = Command::new("wrk")
            .args(["-t2", "--timeout", "5s", "--latency"])
            .arg(format!("-c{connections}"))
            .arg(format!("-d{}s", length.as_secs().max(1)))
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start wrk ({e}): run scripts/install-test-deps (Debian: apt-get install wrk)")
            });
        Wrk {
            child,
            url: url.to_string(),
        }
    }

    /// Waits for wrk to end; what it counted.
    pub fn finish(self) -> WrkReport {
        let out = self.child.wait_with_output().unwrap();
        let text = format!(
            "wrk {}:\n{}{}",
            self.url,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{text}");
        assert!(out.status.success(), "wrk failed: {text}");
        let number_after = |label: &str| -> u64 {
            text.split(label)
                .nth(1)
                .and_then(|rest| {
                    rest.trim_start()
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .and_then(|n| n.parse().ok())
                })
                .unwrap_or(0)
        };
        let requests = text
            .lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let failed = number_after("Non-2xx or 3xx responses:")
            + number_after("Socket errors: connect")
            + number_after(", read")
            + number_after(", write")
            + number_after(", timeout");
        WrkReport {
            requests,
            failed,
            text,
        }
    }
}

/// `scaleup ARGS --site FILE` (an admin command: `reload`, `upgrade`, `roll`...) with
/// the token `up` left in the state directory; whether it succeeded, and what it
/// printed.
pub fn admin_command(site: &Path, args: &[&str]) -> (bool, String) {
    let out = scaleup()
        .args(args)
        .arg("--site")
        .arg(site)
        .env_remove("SCALEUP_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("[{}] {text}", args.join(" "));
    (out.status.success(), text)
}
