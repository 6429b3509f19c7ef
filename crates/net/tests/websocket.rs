//! WebSocket upgrades through `net::proxy::forward` and `net::server`, against a real
//! upstream on loopback that answers an upgrade with 101 and then echoes bytes: the
//! tunnel carries both ways and outlives the connection's HTTP clocks, any other
//! `Upgrade` is stripped, a refusal passes as a plain answer, and a tunnel with no
//! byte either way for `timeouts.tunnel` is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use net::proxy::{forward, Policy};
use net::server::{serve, Handler, Limits};
use net::upstream::Pool;
use net::upstream::{Algorithm, HealthCheck, Timeouts};
use net::{Body, Metrics};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Reads up to the end of an HTTP head; the head as text.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("head within 5 s")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed inside a head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The value of header `name` in `head`, if present.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An upstream that answers a WebSocket upgrade with 101 and echoes what follows;
/// `/refuse` with 403; anything else with 200 and the `Upgrade` header it saw. Every
/// request head it gets goes to the returned channel.
async fn echo_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                let _ = tx.send(head.clone());
                let upgrade = header(&head, "upgrade").unwrap_or("-").to_string();
                if head.starts_with("GET /refuse") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nno way\n")
                        .await;
                } else if upgrade.eq_ignore_ascii_case("websocket") {
                    stream
                        .write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                              Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                        )
                        .await
                        .unwrap();
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                } else {
                    let body = format!("upgrade={upgrade}");
                    let _ = stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                }
            });
        }
    });
    (addr, rx)
}

/// A proxy hop like the load balancer's, in front of `pool`.
struct Front {
    pool: Arc<Pool>,
}

impl Handler for Front {
    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        net::headers::forwarding(
            req.headers_mut(),
            peer,
            false,
            &net::headers::Trusted::default(),
        );
        let policy = Policy {
            retries: 1,
            unreachable: StatusCode::SERVICE_UNAVAILABLE,
            max_body_bytes: None,
        };
        forward(
            &self.pool,
            req,
            peer,
            policy,
            &HeaderValue::from_static("test"),
        )
        .await
    }
}

/// The hop in front of `upstream` with tunnels idling at most `tunnel`, and client
/// heads and keep-alive limited to `client`; its address and counters.
async fn front(
    upstream: SocketAddr,
    tunnel: Duration,
    client: Duration,
) -> (SocketAddr, Arc<Metrics>) {
    let pool = Arc::new(Pool::new(
        "app",
        vec![("echo".to_string(), upstream)],
        Algorithm::RoundRobin,
        HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(60),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
        },
        Timeouts {
            connect: Duration::from_secs(1),
            client,
            server: Duration::from_secs(5),
            keepalive: client,
            tunnel,
            drain: Duration::from_secs(10),
        },
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (trigger, shutdown) = net::shutdown::channel();
    std::mem::forget(trigger); // lives as long as the test process
    let limits = Limits {
        header_timeout: client,
        keepalive_timeout: client,
        ..Limits::default()
    };
    tokio::spawn(serve(
        listener,
        limits,
        Arc::new(Front { pool }),
        metrics.clone(),
        shutdown,
    ));
    (addr, metrics)
}

const WEBSOCKET_GET: &str = "GET /live HTTP/1.1\r\nHost: www.foobar.com\r\n\
     Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Opens a tunnel through the hop at `front`; the client's stream after the 101.
async fn open(front: SocketAddr) -> TcpStream {
    let mut client = TcpStream::connect(front).await.unwrap();
    client.write_all(WEBSOCKET_GET.as_bytes()).await.unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(header(&head, "upgrade"), Some("websocket"), "{head}");
    assert_eq!(header(&head, "connection"), Some("upgrade"), "{head}");
    assert!(header(&head, "sec-websocket-accept").is_some(), "{head}");
    client
}

async fn echo(client: &mut TcpStream, message: &[u8]) {
    client.write_all(message).await.unwrap();
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut back))
        .await
        .expect("echo within 5 s")
        .unwrap();
    assert_eq!(back, message);
}

/// Waits until `cond` holds, for at most 5 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_websocket_upgrade_passes_and_carries_both_ways() {
    let (upstream, mut heads) = echo_upstream().await;
    // Client heads and keep-alive of 200 ms: a tunnel quiet for longer must not be
    // taken for an idle HTTP connection (closed, or answered 408).
    let (front, metrics) = front(
        upstream,
        Duration::from_secs(60),
        Duration::from_millis(200),
    )
    .await;
    let mut client = open(front).await;
    let seen = heads.recv().await.unwrap();
    assert_eq!(header(&seen, "upgrade"), Some("websocket"), "{seen}");
    assert_eq!(header(&seen, "connection"), Some("upgrade"), "{seen}");
    assert_eq!(
        header(&seen, "sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert_eq!(header(&seen, "x-forwarded-for"), Some("127.0.0.1"));

    echo(&mut client, b"\x81\x05hello").await;
    eventually("the tunnel is counted", || metrics.tunnels_open() == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Far past the HTTP clocks, with bytes in both directions that are no HTTP head.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    echo(&mut client, &big).await;
    assert_eq!(
        metrics.connections_open(),
        1,
        "the tunnel keeps its connection counted"
    );

    drop(client);
    eventually("a closed tunnel is no longer counted", || {
        metrics.tunnels_open() == 0
    })
    .await;
    eventually("nor its connection", || metrics.connections_open() == 0).await;
}

#[tokio::test]
async fn other_upgrades_are_stripped_and_a_refusal_passes_as_an_answer() {
    let (upstream, _heads) = echo_upstream().await;
    let (front, metrics) = front(upstream, Duration::from_secs(60), Duration::from_secs(5)).await;
    let client = reqwest::Client::new();
    for (method, upgrade, connection) in [
        ("GET", "h2c", "Upgrade, HTTP2-Settings"),
        ("GET", "websocket", "keep-alive"),
        ("POST", "websocket", "Upgrade"),
        ("GET", "tls/1.2", "Upgrade"),
    ] {
        let resp = client
            .request(method.parse().unwrap(), format!("http://{front}/x"))
            .header("upgrade", upgrade)
            .header("connection", connection)
            .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method} {upgrade}");
        assert_eq!(
            resp.text().await.unwrap(),
            "upgrade=-",
            "{method} {upgrade} reached upstream"
        );
    }

    // A server that will not switch answers the client as usual.
    let mut raw = TcpStream::connect(front).await.unwrap();
    raw.write_all(WEBSOCKET_GET.replace("/live", "/refuse").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut raw).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(header(&head, "upgrade").is_none(), "{head}");
    assert_eq!(metrics.tunnels_open(), 0);
}

#[tokio::test]
async fn a_tunnel_with_no_byte_either_way_is_closed_after_its_timeout() {
    let (upstream, _heads) = echo_upstream().await;
    let idle = Duration::from_millis(400);
    let (front, metrics) = front(upstream, idle, Duration::from_secs(5)).await;
    let mut client = open(front).await;
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        echo(&mut client, b"tick").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...silence closes it.
    let quiet = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the tunnel was closed");
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
        "closed after {waited:?}, with a 400 ms timeout of which ~200 ms had passed"
    );
    eventually("the idle tunnel is uncounted", || {
        metrics.tunnels_open() == 0
    })
    .await;
    let mut text = String::new();
    metrics.render("t", &mut text);
    assert!(
        text.contains("scaleup_tunnels_idle_closed_total{node=\"t\"} 1"),
        "{text}"
    );
}
