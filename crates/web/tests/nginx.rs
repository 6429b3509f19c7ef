//! The web server against real nginx (Debian's `nginx-light`): the same document
//! root, the same requests, compared on status, the headers that matter and, for a
//! file sent as it is, every byte of the body. Where we differ on purpose, the row
//! says why. Files over 256 KiB go out by `sendfile` on both sides (ours through
//! stand-in frames, see `net::sendfile`): a stand-in's zeros or a range sent from the
//! wrong offset shows here.
//!
//! nginx runs on a free loopback port with its own prefix, pid, log and temp paths;
//! files it does not have go to an `@app` location whose upstream is a closed port
//! (502), as ours go to an app pool with no server (502).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nginx as a child process, killed when the test ends.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use testkit::free_port;

fn nginx_binary() -> &'static str {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx must be installed (scripts/install-test-deps installs nginx-light)")
}

fn start_nginx(root: &Path, prefix: &Path, port: u16, dead: u16) -> Nginx {
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    gzip on;
    gzip_vary on;
    gzip_static on;
    gzip_min_length 256;
    gzip_types text/css text/plain text/javascript application/javascript application/json image/svg+xml;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        index index.html;
        error_page 404 = @app;
        location @app {{ proxy_pass http://127.0.0.1:{dead}; }}
    }}
}}
"#,
        p = prefix.display(),
        root = root.display(),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start nginx");
    let nginx = Nginx(child);
    wait_listening(port);
    nginx
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The document root both servers share.
fn make_root(root: &Path) {
    let write = |rel: &str, bytes: &[u8]| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    let text: String = (0..400)
        .map(|i| format!("line {i} of a text file\n"))
        .collect();
    write(
        "index.html",
        b"<!doctype html><title>hello</title><p>hello, world</p>\n",
    );
    write("style.css", "body { color: #333; }\n".repeat(40).as_bytes());
    write("big.txt", text.as_bytes());
    write("small.txt", b"tiny\n");
    write("empty.txt", b"");
    write(
        "data.json",
        format!("{{\"items\": [{}]}}", "1,".repeat(200) + "1").as_bytes(),
    );
    write(
        "image.png",
        &[0x89, b'P', b'N', b'G', 13, 10, 26, 10, 0, 0, 0, 0],
    );
    write("large.bin", &large());
    write("dir/index.html", b"<p>a directory index</p>\n");
    write("dir/page.html", b"<p>a page</p>\n");
    write(".hidden", b"secret\n");
    write(".well-known/acme-challenge/tok3n", b"tok3n.thumbprint\n");
    let app = "console.log('precompressed');\n".repeat(50);
    write("app.js", app.as_bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(app.as_bytes()).unwrap();
    write("app.js.gz", &gz.finish().unwrap());
    write(
        "app.js.br",
        b"not really brotli, but only we would serve it",
    );
    // Both servers must see the same modification times.
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for entry in walk(root) {
        let f = std::fs::File::options().write(true).open(&entry).unwrap();
        f.set_modified(old).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// One answer, parsed from the raw bytes.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    /// Everything after the head, as sent (the connection closes after it).
    body: Vec<u8>,
}

impl Answer {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with `extra` header lines; the answer's status and headers.
fn ask(addr: SocketAddr, method: &str, path: &str, extra: &[String]) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let body = end.map(|at| raw[at + 4..].to_vec()).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw[..end.unwrap_or(raw.len())]);
    let head = text.as_ref();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{addr} answered {method} {path} with {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body,
    }
}

/// How a row is compared.
enum Expect {
    /// Status and the headers that matter are the same.
    Same,
    /// We differ on purpose: our status, nginx's status, and why.
    Differ(u16, u16, &'static str),
}

struct Row {
    method: &'static str,
    path: &'static str,
    /// Header lines; `{etag}` is replaced by the file's ETag on each server.
    headers: &'static [&'static str],
    expect: Expect,
}

const fn row(method: &'static str, path: &'static str, headers: &'static [&'static str]) -> Row {
    Row {
        method,
        path,
        headers,
        expect: Expect::Same,
    }
}

const OLD: &str = "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT";
const FUTURE: &str = "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT";

/// A file larger than one `sendfile` stand-in (1 MiB), no two of its 4 KiB pages alike.
fn large() -> Vec<u8> {
    let mut x: u32 = 2_463_534_242;
    (0..(1 << 20) + 300_001)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn table() -> Vec<Row> {
    vec![
        row("GET", "/index.html", &[]),
        row("GET", "/", &[]),
        row("HEAD", "/index.html", &[]),
        row("HEAD", "/", &[]),
        row("GET", "/index.html?x=1", &[]),
        row("GET", "/%69ndex.html", &[]),
        row("GET", "/dir", &[]),
        row("GET", "/dir/", &[]),
        row("GET", "/dir/page.html", &[]),
        row("GET", "/dir/../index.html", &[]),
        row("GET", "/small.txt", &[]),
        row("GET", "/empty.txt", &[]),
        row("GET", "/image.png", &[]),
        row("GET", "/data.json", &[]),
        row("GET", "/missing.txt", &[]),
        row("GET", "/dir/missing/", &[]),
        row("GET", "/big.txt", &["Range: bytes=0-99"]),
        row("GET", "/big.txt", &["Range: bytes=-100"]),
        row("GET", "/big.txt", &["Range: bytes=100-"]),
        row("GET", "/big.txt", &["Range: bytes=99999999-"]),
        row("GET", "/big.txt", &["Range: bytes=0-1,5-6"]),
        row(
            "GET",
            "/big.txt",
            &["Range: bytes=0-99", "If-Range: {etag}"],
        ),
        row(
            "GET",
            "/big.txt",
            &["Range: bytes=0-99", "If-Range: \"other\""],
        ),
        row("GET", "/big.txt", &["If-None-Match: {etag}"]),
        row("GET", "/big.txt", &["If-None-Match: \"nomatch\""]),
        row("GET", "/big.txt", &[FUTURE]),
        row("GET", "/big.txt", &[OLD]),
        row("GET", "/big.txt", &["If-Match: \"nomatch\""]),
        row(
            "GET",
            "/big.txt",
            &["If-Unmodified-Since: Sat, 01 Jan 2000 00:00:00 GMT"],
        ),
        row("GET", "/style.css", &["Accept-Encoding: gzip"]),
        row("GET", "/style.css", &["Accept-Encoding: identity"]),
        row("GET", "/small.txt", &["Accept-Encoding: gzip"]),
        row("GET", "/app.js", &["Accept-Encoding: gzip"]),
        row("GET", "/app.js", &[]),
        row("HEAD", "/app.js", &["Accept-Encoding: gzip"]),
        row("GET", "/image.png", &["Accept-Encoding: gzip"]),
        row("GET", "/large.bin", &[]),
        row("HEAD", "/large.bin", &[]),
        row("GET", "/large.bin", &["Accept-Encoding: gzip"]),
        row("GET", "/large.bin", &["Range: bytes=1000-700000"]),
        row("GET", "/large.bin", &["Range: bytes=-1100000"]),
        row("GET", "/large.bin", &["Range: bytes=0-99,500000-900000"]),
        row("GET", "/../etc/passwd", &[]),
        row("GET", "/%2e%2e/etc/passwd", &[]),
        row("GET", "/dir/../../etc/passwd", &[]),
        row("GET", "/.well-known/acme-challenge/tok3n", &[]),
        Row {
            expect: Expect::Differ(
                404,
                200,
                "dotfiles (.env, .git) may hold secrets: we hide them, stock nginx serves them",
            ),
            ..row("GET", "/.hidden", &[])
        },
        row("GET", "/a%00b", &[]),
        row(
            "GET",
            "/big.txt",
            &["If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT"],
        ),
        Row {
            expect: Expect::Differ(
                502,
                405,
                "methods other than GET/HEAD go to the application (it takes POSTs); nginx \
                 refuses them on a static file",
            ),
            ..row("POST", "/index.html", &["Content-Length: 0"])
        },
        Row {
            expect: Expect::Differ(
                200,
                200,
                "we serve a precompressed .br sibling to clients that accept br; nginx-light \
                 has no brotli module (status equal, encodings differ)",
            ),
            ..row("GET", "/app.js", &["Accept-Encoding: br"])
        },
    ]
}

/// The media type without parameters, as compared. Two differences on purpose:
/// we add `; charset=utf-8` to text (browsers then never guess the encoding), and
/// we call JavaScript `text/javascript` (RFC 9239) where Debian's nginx
/// `mime.types` still says `application/javascript`.
fn essence(value: Option<&str>) -> Option<String> {
    value.map(|v| {
        let essence = v.split(';').next().unwrap().trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/javascript" => "text/javascript".into(),
            _ => essence,
        }
    })
}

/// What is compared of one answer.
///
/// - Status, `Content-Range`, `Content-Encoding`: equal.
/// - `Content-Type`: equal for files; error pages are each server's own (nginx
///   HTML, ours plain text), and so are their lengths.
/// - `Content-Length`: equal for files sent as they are; a multipart body has each
///   server's own boundary.
/// - `ETag`: each server hashes its own way, so only "is there one" is compared.
///   On purpose we mark the ETag of any compressed representation weak, so a cache
///   never combines its ranges with the identity one's; nginx keeps gzip_static's
///   strong.
/// - `Vary: Accept-Encoding`: we must send it wherever nginx does. On purpose we also
///   send it for small compressible files and on 304/412: the answer still depends
///   on `Accept-Encoding` for a cache (nginx decides by body size).
fn compared(a: &Answer) -> Vec<(&'static str, String)> {
    let file = matches!(a.status, 200 | 206 | 304);
    let mut out = vec![
        ("status", a.status.to_string()),
        ("content-range", format!("{:?}", a.get("content-range"))),
        (
            "content-encoding",
            format!("{:?}", a.get("content-encoding")),
        ),
    ];
    if file {
        out.push((
            "content-type",
            format!("{:?}", essence(a.get("content-type"))),
        ));
        out.push(("etag", a.get("etag").is_some().to_string()));
    }
    let multipart = a
        .get("content-type")
        .is_some_and(|t| t.starts_with("multipart/"));
    let as_is = a.get("transfer-encoding").is_none() && a.get("content-encoding").is_none();
    if file && as_is && !multipart {
        out.push(("content-length", format!("{:?}", a.get("content-length"))));
        out.push(("body", digest(&a.body)));
    }
    out
}

/// A body as compared: its length and an FNV-1a hash.
fn digest(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{} bytes, fnv {hash:016x}", body.len())
}

/// Sends `requests` in one write on one kept-alive connection (pipelined) and reads
/// their answers: status and body of each, framed by `Content-Length`.
fn pipelined(addr: SocketAddr, requests: &[&str]) -> Vec<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let all: String = requests
        .iter()
        .map(|r| format!("{r}\r\nHost: localhost\r\n\r\n"))
        .collect();
    stream.write_all(all.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut answers = Vec::new();
    let mut buf = vec![0; 1 << 16];
    while answers.len() < requests.len() {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "{addr} closed after {} answers", answers.len());
        raw.extend_from_slice(&buf[..n]);
        // Take every complete answer at the front.
        while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let status = head[9..12].parse().unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if raw.len() < end + 4 + len {
                break;
            }
            answers.push((status, raw[end + 4..end + 4 + len].to_vec()));
            raw.drain(..end + 4 + len);
        }
    }
    answers
}

fn varies(a: &Answer) -> bool {
    a.get("vary")
        .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_server_answers_like_nginx() {
    let root = tempfile::tempdir().unwrap();
    make_root(root.path());
    let prefix = tempfile::tempdir().unwrap();
    let dead = free_port(); // nothing listens here: the app tier is down for both
    let nginx_port = free_port();
    let _nginx = start_nginx(root.path(), prefix.path(), nginx_port, dead);

    let listener = net::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let ours: SocketAddr = listener.local_addr().unwrap();
    let admin = net::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = web::Config {
        name: "web1".into(),
        root: root.path().to_path_buf(),
        apps: vec![("app1".to_string(), SocketAddr::from(([127, 0, 0, 1], dead))).into()],
        slowstart: Duration::from_secs(10),
        admin_token: net::admin::Token::Off("not needed by this test".into()),
        access_log: Some(prefix.path().join("ours-access.log")),
        log_format: net::access_log::LogFormat::Combined,
        // The app server is dead: it is checked, found down, and every request that
        // reaches the proxy gets the 502 page nginx's `proxy_pass` also gives.
        health: net::upstream::HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
        },
        timeouts: net::upstream::Timeouts {
            connect: Duration::from_secs(2),
            client: Duration::from_secs(30),
            server: Duration::from_secs(60),
            keepalive: Duration::from_secs(75),
            tunnel: Duration::from_secs(3600),
            drain: Duration::from_secs(10),
        },
        max_connections: 100,
        max_connections_per_client: 100,
        tls: None,
        hsts: None,
        proxy_from: Vec::new(),
        headers: Vec::new(),
        cache: Vec::new(),
        max_body_bytes: 1 << 20,
    };
    let (trigger, shutdown) = net::shutdown::channel();
    let server = tokio::spawn(web::serve(config, listener, None, admin, shutdown));
    let nginx: SocketAddr = ([127, 0, 0, 1], nginx_port).into();

    let report = tokio::task::spawn_blocking(move || {
        let etag_of = |addr| {
            ask(addr, "GET", "/big.txt", &[])
                .get("etag")
                .unwrap()
                .to_string()
        };
        let (our_etag, their_etag) = (etag_of(ours), etag_of(nginx));
        // Pipelined on one connection: a large file, a range of it, and a small file
        // right behind them, as the client sent them.
        let large = large();
        let requests = [
            "GET /large.bin HTTP/1.1",
            "GET /large.bin HTTP/1.1\r\nRange: bytes=5-1048580",
            "GET /small.txt HTTP/1.1",
        ];
        let want = [
            large.clone(),
            large[5..1_048_581].to_vec(),
            b"tiny\n".to_vec(),
        ];
        for (server, addr) in [("ours", ours), ("nginx", nginx)] {
            let answers = pipelined(addr, &requests);
            for ((status, body), want) in answers.iter().zip(&want) {
                assert!([200, 206].contains(status), "{server}: {status}");
                assert!(
                    body == want,
                    "{server}: {} bytes, not the file's {}",
                    body.len(),
                    want.len()
                );
            }
        }
        let rows = table();
        assert!(rows.len() >= 30);
        let mut failures = Vec::new();
        for row in &rows {
            let lines = |etag: &str| -> Vec<String> {
                row.headers
                    .iter()
                    .map(|h| h.replace("{etag}", etag))
                    .collect()
            };
            let a = ask(ours, row.method, row.path, &lines(&our_etag));
            let b = ask(nginx, row.method, row.path, &lines(&their_etag));
            let what = format!("{} {} {:?}", row.method, row.path, row.headers);
            match row.expect {
                Expect::Same => {
                    let (ca, cb) = (compared(&a), compared(&b));
                    if ca != cb {
                        failures.push(format!("{what}\n  ours:  {ca:?}\n  nginx: {cb:?}"));
                    }
                    if varies(&b) && !varies(&a) {
                        failures.push(format!(
                            "{what}: nginx sends Vary: Accept-Encoding, we do not"
                        ));
                    }
                }
                Expect::Differ(our_status, their_status, why) => {
                    if (a.status, b.status) != (our_status, their_status) {
                        failures.push(format!(
                            "{what} (differs on purpose: {why}): expected {our_status} vs \
                             {their_status}, got {} vs {}",
                            a.status, b.status
                        ));
                    }
                }
            }
        }
        failures
    })
    .await
    .unwrap();
    trigger.fire();
    let _ = server.await;
    assert!(
        report.is_empty(),
        "{} rows differ:\n{}",
        report.len(),
        report.join("\n")
    );
}
