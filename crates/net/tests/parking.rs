//! Idle HTTP/1 connections are parked between requests (hyper's side closed, the
//! socket kept): over real sockets, a client that pauses past the park delay is
//! served on the same connection, a request split across a park is whole, a body
//! after a park is read, a slow head after a park still gets 408, the idle timeout
//! still closes a parked connection, a drain closes parked connections, and the
//! client a PROXY header names is every request's, before a park and after.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use net::server::{Handler, Limits};
use net::{Body, Metrics};

/// Answers with the request's path, the client's port and the body's length: which
/// request was served, and on which connection.
struct Echo;

impl Handler for Echo {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
        let len = body.map_or_else(|e| format!("error {e}"), |n| n.to_string());
        Response::new(net::full(format!("{path} {} {len}\n", peer.port())))
    }
}

/// Past the server's park delay (20 ms), with room for a loaded machine.
const PAUSE: Duration = Duration::from_millis(250);

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(1500),
        keepalive_timeout: Duration::from_millis(1500),
        ..Limits::default()
    }
}

/// A server on a free loopback port, and the trigger that drains it.
async fn start(limits: Limits) -> (SocketAddr, net::shutdown::Trigger) {
    let listener = net::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = net::shutdown::channel();
    tokio::spawn(net::server::serve(
        listener,
        limits,
        Arc::new(Echo),
        Arc::new(Metrics::default()),
        shutdown,
    ));
    (addr, trigger)
}

/// One answer's body from `stream` (answers here are short, with a length).
fn answer(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no length in {head:?}"));
            if body.len() >= len {
                return text;
            }
        }
        let n = stream.read(&mut buf).expect("an answer");
        assert!(n > 0, "closed before the answer; got {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pausing_between_requests_is_served_on_the_same_connection() {
    let (addr, _trigger) = start(limits()).await;
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let port = stream.local_addr().unwrap().port();
        for i in 0..5 {
            stream.write_all(&get(&format!("/r{i}"))).unwrap();
            let text = answer(&mut stream);
            assert!(text.ends_with(&format!("/r{i} {port} 0\n")), "{text}");
            std::thread::sleep(PAUSE);
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_names_the_client_of_every_request_parked_or_not() {
    let listener = net::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (_trigger, shutdown) = net::shutdown::channel();
    let transport = net::server::Transport {
        tls: None,
        proxy_from: vec!["127.0.0.1".parse().unwrap()],
    };
    tokio::spawn(net::server::serve_with(
        listener,
        transport,
        limits(),
        Arc::new(Echo),
        Arc::new(Metrics::default()),
        shutdown,
    ));
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let client: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        let mut bytes = net::proxy_protocol::header(client, addr).unwrap();
        bytes.extend_from_slice(&get("/first"));
        stream.write_all(&bytes).unwrap();
        let text = answer(&mut stream);
        assert!(text.ends_with("/first 4567 0\n"), "{text}");
        std::thread::sleep(PAUSE);
        stream.write_all(&get("/after-a-park")).unwrap();
        let text = answer(&mut stream);
        assert!(text.ends_with("/after-a-park 4567 0\n"), "{text}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_split_across_a_park_is_served_whole() {
    let (addr, _trigger) = start(limits()).await;
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        // The first request and the start of the second in one write: hyper reads
        // both, answers the first, and holds the second's start when it is parked.
        let mut bytes = get("/first");
        bytes.extend_from_slice(b"GET /second HTTP/1.1\r\nHo");
        stream.write_all(&bytes).unwrap();
        assert!(answer(&mut stream).contains("/first "));
        std::thread::sleep(PAUSE);
        stream.write_all(b"st: x\r\n\r\n").unwrap();
        assert!(answer(&mut stream).contains("/second "));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_after_a_park_are_read() {
    let (addr, _trigger) = start(limits()).await;
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let port = stream.local_addr().unwrap().port();
        let requests: [&[u8]; 4] = [
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ];
        let expected = ["/a", "/b", "/c", "/d"];
        let lengths = [0, 5, 0, 3];
        for ((request, path), len) in requests.iter().zip(expected).zip(lengths) {
            stream.write_all(request).unwrap();
            let text = answer(&mut stream);
            assert!(text.ends_with(&format!("{path} {port} {len}\n")), "{text}");
            std::thread::sleep(PAUSE);
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_after_a_park_gets_408() {
    let (addr, _trigger) = start(limits()).await;
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(&get("/one")).unwrap();
        answer(&mut stream);
        std::thread::sleep(PAUSE);
        let started = Instant::now();
        stream.write_all(b"GET /two HTTP/1.1\r\nHo").unwrap();
        let mut rest = String::new();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.read_to_string(&mut rest);
        assert!(rest.starts_with("HTTP/1.1 408"), "{rest:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1400),
            "408 after {waited:?}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_at_the_idle_timeout() {
    let (addr, _trigger) = start(limits()).await;
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(&get("/")).unwrap();
        answer(&mut stream);
        let started = Instant::now();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        let waited = started.elapsed();
        assert!(rest.is_empty(), "nothing is said to an idle client");
        assert!(
            waited >= Duration::from_millis(1400) && waited < Duration::from_millis(4000),
            "closed after {waited:?}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_parked_connections_and_answers_one_sent_meanwhile() {
    let (addr, trigger) = start(limits()).await;
    let (idle, busy) = tokio::task::spawn_blocking(move || {
        let mut idle = TcpStream::connect(addr).unwrap();
        let mut busy = TcpStream::connect(addr).unwrap();
        for stream in [&mut idle, &mut busy] {
            stream.write_all(&get("/")).unwrap();
            answer(stream);
        }
        std::thread::sleep(PAUSE);
        (idle, busy)
    })
    .await
    .unwrap();
    trigger.fire();
    tokio::task::spawn_blocking(move || {
        let (mut idle, mut busy) = (idle, busy);
        // Sent within the drain's grace: answered, and told it is the last.
        busy.write_all(&get("/last")).unwrap();
        let text = answer(&mut busy);
        assert!(text.contains("/last "), "{text}");
        assert!(text.to_lowercase().contains("connection: close"), "{text}");
        let started = Instant::now();
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let _ = idle.read_to_end(&mut rest);
        assert!(rest.is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    })
    .await
    .unwrap();
}
