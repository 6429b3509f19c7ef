//! Hostile clients against the shared front door, over real sockets: a chunked body
//! over the limit gets 413 and a malformed one 400 without blaming the server behind;
//! one address cannot take every connection; a connection that opens like a PROXY
//! header from a peer that is not a load balancer is closed at once.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use net::budget::Budget;
use net::headers::RequestIds;
use net::proxy::Policy;
use net::server::{Handler, Limits, Transport};
use net::upstream::Pool;
use net::Body;

mod common;
use common::{blamed, pool_of, start, Hop};

/// An origin that reads the whole body and says how long it was.
struct Counting;

impl Handler for Counting {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        match req.into_body().collect().await {
            Ok(body) => Response::new(net::full(format!("got {}", body.to_bytes().len()))),
            Err(_) => Response::new(net::full("broken")),
        }
    }
}

/// A hop in front of one counting origin, with a 1 MiB body limit; the hop's
/// address and its pool.
fn hop() -> (SocketAddr, Arc<Pool>) {
    let origin = start(Counting, Limits::default(), Transport::default());
    let pool = pool_of(origin, Duration::from_secs(60));
    let hop = Hop {
        pool: pool.clone(),
        policy: Policy {
            retries: 1,
            unreachable: StatusCode::BAD_GATEWAY,
            max_body_bytes: Some(1024 * 1024),
        },
        ids: RequestIds::default(),
    };
    (start(hop, Limits::default(), Transport::default()), pool)
}

/// Sends `head` then `body` (from another thread, so a server that answers early is
/// heard) and returns what came back before the server closed.
fn exchange(addr: SocketAddr, head: &str, body: Vec<u8>) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for chunk in body.chunks(16 * 1024) {
            if writer.write_all(chunk).is_err() {
                break;
            }
        }
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&out).contains("</html>") {
            break;
        }
    }
    drop(stream);
    let _ = sender.join();
    String::from_utf8_lossy(&out).into_owned()
}

/// `len` bytes of `x` as chunks of `size`, ended properly.
fn chunked(len: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + len / size * 8 + 8);
    let mut left = len;
    while left > 0 {
        let n = left.min(size);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'x', n));
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_gets_413_and_is_not_echoed() {
    let (front, pool) = hop();
    let head = "POST /posts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let answer = tokio::task::spawn_blocking(move || {
        exchange(front, head, chunked(3 * 1024 * 1024, 64 * 1024))
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.300}");
    assert!(!answer.contains("xxxxxxxx"), "the body was echoed back");
    assert_eq!(blamed(&pool), (true, 0), "the app server was blamed");

    // Under the limit, the same way, the whole body arrives.
    let answer = tokio::task::spawn_blocking(move || {
        exchange(
            front,
            "POST /posts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            chunked(512 * 1024, 64 * 1024),
        )
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.300}");
    assert!(
        answer.ends_with(&format!("got {}", 512 * 1024)),
        "{answer:.300}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_the_clients_fault() {
    let (front, pool) = hop();
    let head = "POST /posts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let answer = tokio::task::spawn_blocking(move || {
        exchange(
            front,
            head,
            b"5\r\nhello\r\nZZZ-not-a-size\r\n\r\n".to_vec(),
        )
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.300}");
    assert_eq!(blamed(&pool), (true, 0), "the app server was blamed");
}

/// A TCP connection from `from` (any 127/8 address) to `to`.
fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

/// Whether the server closed `stream` (read EOF or reset) within `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let limits = Limits {
        budget: Budget::new(40, 8),
        ..Limits::default()
    };
    let addr = start(Counting, limits, Transport::default());
    let hog: IpAddr = "127.0.0.2".parse().unwrap();
    let other: IpAddr = "127.0.0.3".parse().unwrap();
    let outcome = tokio::task::spawn_blocking(move || {
        // Sixty idle sockets from one address: eight are kept, the rest closed.
        let mut idle: Vec<TcpStream> = (0..60).map(|_| connect_from(hog, addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        let closed = idle
            .iter_mut()
            .filter_map(|s| closed_within(s, Duration::from_millis(50)).then_some(()))
            .count();
        // Someone else is still served at once.
        let mut stream = connect_from(other, addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        (closed, answer)
    })
    .await
    .unwrap();
    let (closed, answer) = outcome;
    assert_eq!(closed, 52, "all but the per-client cap closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_from_a_stranger_is_closed_at_once_not_polled() {
    // Only 10.9.9.9 may send PROXY headers; every test client is a stranger.
    let transport = Transport {
        tls: None,
        proxy_from: vec!["10.9.9.9".parse().unwrap()],
    };
    let limits = Limits {
        header_timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    let addr = start(Counting, limits, transport);
    let took = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut streams: Vec<TcpStream> = (0..200)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"\r").unwrap();
                s
            })
            .collect();
        for s in &mut streams {
            assert!(closed_within(s, Duration::from_secs(5)), "left open");
        }
        started.elapsed()
    })
    .await
    .unwrap();
    // The head timeout is 20 s; closing "at once" means long before it.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Plain requests still work on the same listener.
    let answer = tokio::task::spawn_blocking(move || {
        exchange(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Vec::new(),
        )
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_listener_waits_less_for_a_first_request() {
    let limits = Limits {
        budget: Budget::new(20, 100),
        header_timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let addr = start(Counting, limits, Transport::default());
    let (early_open, late_closed_in) = tokio::task::spawn_blocking(move || {
        // Eighteen idle connections: the budget is not yet pressed.
        let mut early: Vec<TcpStream> =
            (0..18).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        // The nineteenth finds under a tenth of the places left.
        let mut late = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let closed = closed_within(&mut late, Duration::from_secs(10));
        let late_closed_in = closed.then(|| started.elapsed());
        let early_open = early
            .iter_mut()
            .all(|s| !closed_within(s, Duration::from_millis(20)));
        (early_open, late_closed_in)
    })
    .await
    .unwrap();
    let took = late_closed_in.expect("the late connection was kept for the full head timeout");
    assert!(took < Duration::from_secs(6), "closed after {took:?}");
    assert!(
        early_open,
        "connections made before the pressure were cut short"
    );
}

/// Sends `head` and all of `body`, and only then reads: what a simple client (or a
/// browser's form post) does.
fn send_then_read(addr: SocketAddr, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body));
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_413_reaches_a_client_that_sends_everything_first() {
    // Streamed: the hop stops at the limit, answers, and lingers.
    let (front, _pool) = hop();
    let answer = tokio::task::spawn_blocking(move || {
        send_then_read(
            front,
            "POST /posts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            &chunked(3 * 1024 * 1024, 64 * 1024),
        )
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.300}");

    // Announced: refused before a byte of the body is read.
    let limits = Limits {
        max_body_bytes: Some(1024 * 1024),
        ..Limits::default()
    };
    let addr = start(Counting, limits, Transport::default());
    let body = vec![b'p'; 1536 * 1024];
    let answer = tokio::task::spawn_blocking(move || {
        send_then_read(
            addr,
            &format!(
                "POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ),
            &body,
        )
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.300}");
}
