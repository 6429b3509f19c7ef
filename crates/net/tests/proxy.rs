//! The proxy parts against real origin servers on loopback: balancing algorithms,
//! retries on another server, health checks with rise and fall, timeouts, and the
//! connection cap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use net::proxy::{forward, Policy};
use net::server::{serve, Handler, Limits};
use net::upstream::Pool;
use net::upstream::{Algorithm, HealthCheck, Timeouts};
use net::{Body, Metrics};
use tokio::net::TcpListener;

/// An origin that answers with its name, after `delay`, and 500 on /healthz when sick.
struct Origin {
    name: &'static str,
    delay: Duration,
    sick: Arc<AtomicBool>,
}

impl Handler for Origin {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        if req.uri().path() == "/healthz" && self.sick.load(Ordering::Relaxed) {
            let mut resp = Response::new(net::full("sick"));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return resp;
        }
        tokio::time::sleep(self.delay).await;
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        Response::new(net::full(format!("{} {forwarded}", self.name)))
    }
}

async fn origin(name: &'static str, delay: Duration) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sick = Arc::new(AtomicBool::new(false));
    let handler = Arc::new(Origin {
        name,
        delay,
        sick: sick.clone(),
    });
    let (_trigger, shutdown) = net::shutdown::channel();
    std::mem::forget(_trigger); // the origin lives as long as the test process
    tokio::spawn(serve(
        listener,
        Limits::default(),
        handler,
        Arc::new(Metrics::default()),
        shutdown,
    ));
    (addr, sick)
}

/// An address nobody listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn health(interval_ms: u64) -> HealthCheck {
    HealthCheck {
        path: "/healthz".into(),
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(200),
        rise: 2,
        fall: 2,
    }
}

fn timeouts(server_ms: u64) -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(500),
        client: Duration::from_secs(5),
        server: Duration::from_millis(server_ms),
        keepalive: Duration::from_secs(5),
        tunnel: Duration::from_secs(60),
        drain: Duration::from_secs(10),
    }
}

/// A proxy in front of `pool`, like the load balancer's; its address.
struct Front {
    pool: Arc<Pool>,
    policy: Policy,
}

impl Handler for Front {
    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        net::headers::forwarding(
            req.headers_mut(),
            peer,
            false,
            &net::headers::Trusted::default(),
        );
        forward(
            &self.pool,
            req,
            peer,
            self.policy,
            &HeaderValue::from_static("test"),
        )
        .await
    }
}

async fn front(pool: Arc<Pool>, limits: Limits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(Front {
        pool,
        policy: Policy {
            retries: 1,
            unreachable: StatusCode::SERVICE_UNAVAILABLE,
            max_body_bytes: Some(1024 * 1024),
        },
    });
    let (trigger, shutdown) = net::shutdown::channel();
    std::mem::forget(trigger);
    tokio::spawn(serve(
        listener,
        limits,
        handler,
        Arc::new(Metrics::default()),
        shutdown,
    ));
    addr
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let resp = client.get(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn round_robin_spreads_and_forwarded_for_is_set() {
    let (a, _) = origin("a", Duration::ZERO).await;
    let (b, _) = origin("b", Duration::ZERO).await;
    let pool = Arc::new(Pool::new(
        "web",
        vec![("a".into(), a), ("b".into(), b)],
        Algorithm::RoundRobin,
        health(1000),
        timeouts(2000),
    ));
    let url = format!("http://{}/", front(pool, Limits::default()).await);
    let client = reqwest::Client::new();
    let mut names = Vec::new();
    for _ in 0..4 {
        let (status, body) = get(&client, &url).await;
        assert_eq!(status, 200);
        assert!(body.ends_with(" 127.0.0.1"), "X-Forwarded-For: {body}");
        names.push(body.split(' ').next().unwrap().to_string());
    }
    names.sort();
    assert_eq!(names, ["a", "a", "b", "b"]);
}

#[tokio::test]
async fn source_hash_sticks_and_leastconn_avoids_the_busy_server() {
    let (a, _) = origin("a", Duration::ZERO).await;
    let (b, _) = origin("b", Duration::ZERO).await;
    let servers = vec![("a".into(), a), ("b".into(), b)];
    let pool = Pool::new(
        "web",
        servers.clone(),
        Algorithm::Source,
        health(1000),
        timeouts(2000),
    );
    let client: std::net::IpAddr = "10.1.2.3".parse().unwrap();
    let first = pool.pick(client, &[]).unwrap().0;
    for _ in 0..10 {
        assert_eq!(
            pool.pick(client, &[]).unwrap().0,
            first,
            "same client, same server"
        );
    }

    let pool = Pool::new(
        "web",
        servers,
        Algorithm::LeastConn,
        health(1000),
        timeouts(2000),
    );
    let (busy, _held) = pool.pick(client, &[]).unwrap();
    for _ in 0..5 {
        let (index, _guard) = pool.pick(client, &[]).unwrap();
        assert_ne!(index, busy, "leastconn picks the idle server");
    }
}

/// A round-robin pool whose first server refuses connections and whose second
/// answers, behind a front; the front's URL.
async fn dead_then_live() -> (Arc<Pool>, String) {
    let (live, _) = origin("live", Duration::ZERO).await;
    let pool = Arc::new(Pool::new(
        "web",
        vec![("dead".into(), dead_addr()), ("live".into(), live)],
        Algorithm::RoundRobin,
        health(60_000),
        timeouts(2000),
    ));
    let url = format!("http://{}/", front(pool.clone(), Limits::default()).await);
    (pool, url)
}

#[tokio::test]
async fn a_refused_server_is_retried_elsewhere_and_taken_out_at_once() {
    let (pool, url) = dead_then_live().await;
    let client = reqwest::Client::new();
    for _ in 0..4 {
        let (status, body) = get(&client, &url).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("live"));
    }
    assert!(!pool.servers()[0].is_up(), "refused: down at once");
    assert!(pool.servers()[1].is_up());

    // With every server down, a POST gets a 503 page.
    pool.servers()[1].check_failed(1, "test", true);
    let resp = client.post(&url).body("data").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("503 Service Unavailable"));
}

/// With no server to take it, an upload sent whole before the client reads (a simple
/// client, a form post) still gets its 503 page, not a reset: its body was never
/// read, so the connection says `Connection: close` and lingers (as for a 413).
#[tokio::test]
async fn an_unread_upload_gets_its_error_page_not_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pool = Arc::new(Pool::new(
        "app",
        vec![("dead".into(), dead_addr())],
        Algorithm::RoundRobin,
        health(60_000),
        timeouts(2000),
    ));
    pool.servers()[0].check_failed(1, "test", true);
    let addr = front(pool, Limits::default()).await;
    let body = vec![b'p'; 900 * 1024];
    let mut chunked = Vec::new();
    for piece in body.chunks(0x10000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for (what, framing, body) in [
        (
            "announced",
            format!("Content-Length: {}", body.len()),
            &body,
        ),
        (
            "chunked",
            "Transfer-Encoding: chunked".to_string(),
            &chunked,
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n");
        let sent = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await
        }
        .await;
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 503"),
            "{what}: sent {sent:?}, read {read:?}: {answer:.300}"
        );
        assert!(
            answer.contains("connection: close"),
            "{what}: {answer:.300}"
        );
    }
}

/// A request that found no connection was never seen by a server, so it goes to the
/// next one whatever its method, body included: as HAProxy's `redispatch`.
#[tokio::test]
async fn a_post_that_found_no_connection_goes_whole_to_the_next_server() {
    let (pool, url) = dead_then_live().await;
    let client = reqwest::Client::new();
    let resp = client.post(&url).body("data").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().starts_with("live"));
    assert!(!pool.servers()[0].is_up(), "refused: down at once");
}

/// An origin whose answer comes in three pieces, 150 ms apart.
struct Slow;

impl Handler for Slow {
    async fn handle(&self, _req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        use http_body_util::BodyExt;
        let pieces = futures_util::stream::unfold(0, |n| async move {
            if n == 3 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
            let frame = http_body::Frame::data(bytes::Bytes::from_static(b"piece "));
            Some((Ok::<_, std::convert::Infallible>(frame), n + 1))
        });
        Response::new(
            http_body_util::StreamBody::new(pieces)
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
    }
}

/// A server is busy until its answer has gone out to the end, not when its head
/// arrives: `drain` waits for a download, and `leastconn` weighs it.
#[tokio::test]
async fn a_server_counts_a_request_in_flight_until_its_answer_ends() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = listener.local_addr().unwrap();
    let (_trigger, shutdown) = net::shutdown::channel();
    tokio::spawn(serve(
        listener,
        Limits::default(),
        Arc::new(Slow),
        Arc::new(Metrics::default()),
        shutdown,
    ));
    let pool = Arc::new(Pool::new(
        "web",
        vec![("slow".into(), slow)],
        Algorithm::RoundRobin,
        health(60_000),
        timeouts(2000),
    ));
    let url = format!("http://{}/", front(pool.clone(), Limits::default()).await);
    let mut resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"piece ");
    assert_eq!(
        pool.servers()[0].in_flight(),
        1,
        "the answer is still coming"
    );
    while resp.chunk().await.unwrap().is_some() {}
    // The front's end of the body may lag the client's by a poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while pool.servers()[0].in_flight() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still counted in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn health_checks_follow_fall_and_rise() {
    let (a, sick) = origin("a", Duration::ZERO).await;
    let pool = Arc::new(Pool::new(
        "web",
        vec![("a".into(), a)],
        Algorithm::RoundRobin,
        health(50),
        timeouts(2000),
    ));
    let (trigger, shutdown) = net::shutdown::channel();
    pool.spawn_health_checks(shutdown);
    let server = pool.servers()[0].clone();
    sick.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while server.is_up() {
        assert!(tokio::time::Instant::now() < deadline, "never went down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sick.store(false, Ordering::Relaxed);
    while !server.is_up() {
        assert!(tokio::time::Instant::now() < deadline, "never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = pool.status();
    assert!(status["servers"][0]["last_change_reason"]
        .as_str()
        .unwrap()
        .contains("good checks"));
    trigger.fire();
}

#[tokio::test]
async fn a_slow_server_gets_a_504_page() {
    let (slow, _) = origin("slow", Duration::from_secs(5)).await;
    let pool = Arc::new(Pool::new(
        "web",
        vec![("slow".into(), slow)],
        Algorithm::RoundRobin,
        health(60_000),
        timeouts(200),
    ));
    let url = format!("http://{}/", front(pool, Limits::default()).await);
    let started = std::time::Instant::now();
    let (status, body) = get(&reqwest::Client::new(), &url).await;
    assert_eq!(status, 504);
    assert!(body.contains("did not answer in time"));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn the_connection_cap_holds_extra_clients_until_a_slot_frees() {
    let (a, _) = origin("a", Duration::ZERO).await;
    let pool = Arc::new(Pool::new(
        "web",
        vec![("a".into(), a)],
        Algorithm::RoundRobin,
        health(60_000),
        timeouts(2000),
    ));
    let limits = Limits {
        budget: net::budget::Budget::new(1, 1),
        ..Limits::default()
    };
    let addr = front(pool, limits).await;
    // The first client holds the only slot with an idle keep-alive connection.
    let hog = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(
        client.get(format!("http://{addr}/")).send().await.is_err(),
        "over the cap: waits"
    );
    drop(hog);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = client.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await;
}
