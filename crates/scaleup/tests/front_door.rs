//! Hostile clients against the real site: idle sockets from one address on a node
//! with a small open-file limit, forged forwarding headers, and connections that
//! open like a PROXY header. The site must keep serving everyone else, keep its
//! servers up and its floating address where it is, and log the truth.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A TCP connection from `from` (an address of 127/8) to `to`.
fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// Sends `request` from `from` and reads the answer until the server closes.
fn exchange_from(from: IpAddr, to: SocketAddr, request: &str) -> String {
    let mut stream = connect_from(from, to).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs one node with both open-file limits set to `nofile`, as under a service
/// manager that never raised them.
fn run_node_limited(name: &str, site: &Path, nofile: u32) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -n {nofile} && exec \"$0\" run {name} --site \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_scaleup"))
        .arg(site);
    Proc::spawn(name, cmd)
}

/// `GET http://addr/status` as JSON.
async fn status(addr: SocketAddr) -> serde_json::Value {
    reqwest::get(format!("http://{addr}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The access-log line of `log` that contains `needle`, waiting for it a little.
fn log_line(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needle:?} in {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The default site with app1, web1 and lb1 running, answering through lb1: its base
/// port, its state directory, and the nodes (stopped when dropped).
async fn app_web_lb() -> (u16, tempfile::TempDir, Vec<Proc>) {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let site = write_default_site(base, state.path());
    let nodes = ["app1", "web1", "lb1"]
        .map(|name| run_node(name, &site))
        .into();
    let lb: SocketAddr = ([127, 0, 0, 1], base + 1).into();
    wait_status(
        &format!("http://{lb}/healthz"),
        200,
        Duration::from_secs(60),
    )
    .await;
    // The home page is the app's, through web1 (+3): its app pool is up too (a web
    // server started before app1 listened counts it down until its checks rise).
    let web: SocketAddr = ([127, 0, 0, 1], base + 3).into();
    wait_status(&format!("http://{web}/"), 200, Duration::from_secs(60)).await;
    (base, state, nodes)
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_address_move_nothing() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let site = write_default_site(base, state.path());
    let _app = run_node("app1", &site);
    let _web = run_node("web1", &site);
    // The web server first: a load balancer that starts before any backend answers
    // rightly hands the address to its peer, which is not what this test is about.
    let web_admin: SocketAddr = ([127, 0, 0, 1], base + 13).into();
    wait_status(
        &format!("http://{web_admin}/healthz"),
        200,
        Duration::from_secs(60),
    )
    .await;
    let lb1 = run_node_limited("lb1", &site, 1024);
    let _lb2 = run_node("lb2", &site);
    let floating: SocketAddr = ([127, 0, 0, 1], base).into();
    let lb1_admin: SocketAddr = ([127, 0, 0, 1], base + 11).into();
    wait_status(
        &format!("http://{floating}/healthz"),
        200,
        Duration::from_secs(60),
    )
    .await;
    lb1.wait_for_line("open-file limit", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(lb1_admin).await["cluster"]["role"] != "active" {
        assert!(Instant::now() < deadline, "lb1 never became active");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let someone: IpAddr = "127.0.0.3".parse().unwrap();
    let pid = lb1.child.id();
    let (served, failed, peak_fds) = tokio::task::spawn_blocking(move || {
        // Three times the budget lb1 can afford at 1,024 descriptors, all idle.
        let idle: Vec<TcpStream> = (0..3000)
            .filter_map(|_| connect_from(attacker, floating).ok())
            .collect();
        assert!(idle.len() > 2900, "only {} connected", idle.len());
        // Through more than `fall` health-check intervals, someone else is served.
        let (mut served, mut failed, mut peak) = (0, Vec::new(), 0);
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let answer = exchange_from(
                someone,
                floating,
                "GET /healthz HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n",
            );
            if answer.starts_with("HTTP/1.1 200") {
                served += 1;
            } else {
                failed.push(answer);
            }
            peak = peak.max(descriptors(pid));
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(idle);
        (served, failed, peak)
    })
    .await
    .unwrap();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(served >= 10, "served {served}");
    assert!(peak_fds < 1024, "lb1 reached {peak_fds} descriptors");

    let lb1_status = status(lb1_admin).await;
    let servers = lb1_status["backend"]["servers"].as_array().unwrap();
    assert!(
        servers.iter().all(|s| s["up"] == true),
        "a web server was marked down: {servers:?}"
    );
    assert_eq!(
        lb1_status["cluster"]["role"], "active",
        "lb1 gave up the floating address: {}",
        lb1_status["cluster"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_headers_are_replaced_and_the_log_tells_the_truth() {
    let (base, state, _nodes) = app_web_lb().await;
    let lb: SocketAddr = ([127, 0, 0, 1], base + 1).into();
    let client: IpAddr = "127.0.0.3".parse().unwrap();

    // A client claiming to be someone else: the web server's log names the client.
    let answer = tokio::task::spawn_blocking(move || {
        exchange_from(
            client,
            lb,
            "GET /healthz HTTP/1.1\r\nHost: www.foobar.com\r\nX-Request-Id: forged-1.a_b\r\n\
             X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.7\r\nForwarded: for=6.6.6.8\r\n\
             Connection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(status_of(&answer), 200, "{answer}");
    let log = state.path().join("web1-access.log");
    let line = log_line(&log, "rid=forged-1.a_b");
    assert!(line.starts_with("127.0.0.3 - - ["), "{line}");
    assert!(!line.contains("6.6.6."), "{line}");

    // A `Connection` header naming the proxy's own headers deletes none of them.
    let answer = tokio::task::spawn_blocking(move || {
        exchange_from(
            client,
            lb,
            "GET /healthz HTTP/1.1\r\nHost: www.foobar.com\r\nX-Request-Id: forged-2\r\n\
             Connection: close, X-Forwarded-For, X-Real-IP, Host\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(status_of(&answer), 200, "{answer}");
    let line = log_line(&log, "rid=forged-2");
    assert!(line.starts_with("127.0.0.3 - - ["), "{line}");

    // A request id that could forge a log field is replaced.
    let answer = tokio::task::spawn_blocking(move || {
        exchange_from(
            client,
            lb,
            "GET /healthz HTTP/1.1\r\nHost: www.foobar.com\r\nX-Request-Id: x rt=9 rid=y\r\n\
             Connection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("x-request-id: x rt=9"),
        "{answer}"
    );

    // What no hop passes on.
    for (request, want) in [
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        (
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "CONNECT www.foobar.com:443 HTTP/1.1\r\nHost: www.foobar.com:443\r\n\r\n",
            405,
        ),
    ] {
        let answer = tokio::task::spawn_blocking(move || exchange_from(client, lb, request))
            .await
            .unwrap();
        assert_eq!(status_of(&answer), want, "{request:?}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_open_like_a_proxy_header_are_closed_at_once() {
    let base = free_base(DEFAULT_SITE_PORTS);
    let state = tempfile::tempdir().unwrap();
    let site = write_default_site(base, state.path());
    let _app = run_node("app1", &site);
    let web = run_node("web1", &site);
    let web_admin: SocketAddr = ([127, 0, 0, 1], base + 13).into();
    let web_tls: SocketAddr = ([127, 0, 0, 1], base + 8).into();
    wait_status(
        &format!("http://{web_admin}/healthz"),
        200,
        Duration::from_secs(60),
    )
    .await;
    let stranger: IpAddr = "127.0.0.2".parse().unwrap();
    let took = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut streams: Vec<TcpStream> = (0..1000)
            .map(|_| {
                let mut s = connect_from(stranger, web_tls).unwrap();
                s.write_all(b"\r").unwrap();
                s
            })
            .collect();
        for s in &mut streams {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 16];
            assert!(
                matches!(s.read(&mut buf), Ok(0) | Err(_)),
                "a connection was answered instead of closed"
            );
        }
        started.elapsed()
    })
    .await
    .unwrap();
    // The head timeout is 30 s: "at once" is long before it.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The warnings were a few lines, not one per connection.
    let warnings = web
        .lines
        .try_iter()
        .filter(|l| l.contains("PROXY protocol header"))
        .count();
    assert!(
        warnings <= 12,
        "{warnings} warning lines for 1,000 connections"
    );
}

/// A TLS connection to `addr` that trusts only the site's own certificate.
async fn tls_to(
    addr: SocketAddr,
    state: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let cert =
        rustls_pki_types::CertificateDer::from_pem_file(state.join("tls/www.foobar.com.crt"))
            .unwrap();
    roots.add(cert).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("www.foobar.com".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_upload_over_https_gets_its_413_even_from_a_client_that_reads_last() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (base, state, _nodes) = app_web_lb().await;
    let lb_tls: SocketAddr = ([127, 0, 0, 1], base + 6).into();

    // Through the load balancer's TLS relay to the web server, a body over the limit
    // sent in full before anything is read, as a simple client or a form post does.
    for (what, head, body) in [
        (
            "announced",
            format!(
                "POST /api/login HTTP/1.1\r\nHost: www.foobar.com\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                3 * 1024 * 1024
            ),
            vec![b'p'; 3 * 1024 * 1024],
        ),
        (
            "chunked",
            "POST /posts HTTP/1.1\r\nHost: www.foobar.com\r\nTransfer-Encoding: chunked\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\r\n"
                .to_string(),
            {
                let mut body = Vec::new();
                for _ in 0..48 {
                    body.extend_from_slice(b"10000\r\n");
                    body.extend(std::iter::repeat_n(b'x', 0x10000));
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(b"0\r\n\r\n");
                body
            },
        ),
    ] {
        let mut tls = tls_to(lb_tls, state.path()).await;
        let sent = async {
            tls.write_all(head.as_bytes()).await?;
            tls.write_all(&body).await?;
            tls.flush().await
        }
        .await;
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "{what}: sent {sent:?}, read {read:?}: {answer:.300}"
        );
    }
}
