//! The listener's limits against misbehaving clients, over real sockets: a slow
//! request head (slowloris) gets 408 at the timeout while other clients are served,
//! an idle keep-alive connection is closed, an announced oversize body gets 413, and
//! an HTTP/2 client cannot grow a header block forever with CONTINUATION frames.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use net::server::{Handler, Limits};
use net::{Body, Metrics};

struct Hello;

impl Handler for Hello {
    async fn handle(&self, _req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        Response::new(net::full("hello\n"))
    }
}

/// A server on a free loopback port with `limits`; it stops when the test's runtime ends.
async fn start(limits: Limits) -> SocketAddr {
    let listener = net::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = net::shutdown::channel();
    tokio::spawn(async move {
        let _keep = trigger;
        net::server::serve(
            listener,
            limits,
            Arc::new(Hello),
            Arc::new(Metrics::default()),
            shutdown,
        )
        .await
    });
    addr
}

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(800),
        keepalive_timeout: Duration::from_millis(800),
        max_body_bytes: Some(1000),
        ..Limits::default()
    }
}

/// Everything the server sends until it closes (bounded by a read timeout).
fn read_all(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_head_gets_408_at_the_timeout_while_others_are_served() {
    let addr = start(limits()).await;
    let slow = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        // One byte every 100 ms: 6.4 s for the head, far past the 0.8 s timeout.
        for byte in head {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        (
            read_all(&mut stream, Duration::from_secs(3)),
            started.elapsed(),
        )
    });
    // Meanwhile other clients are answered at once.
    for _ in 0..10 {
        let served = tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            read_all(&mut stream, Duration::from_secs(2))
        })
        .await
        .unwrap();
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (answer, took) = slow.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "got {answer:?}");
    assert!(
        took < Duration::from_secs(4),
        "the slow client was cut late: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_silently() {
    let addr = start(limits()).await;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        let answer = read_all(&mut stream, Duration::from_secs(3));
        (answer, started.elapsed())
    })
    .await
    .unwrap();
    let (answer, took) = answer;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "no 408 for an idle connection"
    );
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_oversize_body_gets_413() {
    let addr = start(limits()).await;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
            .unwrap();
        read_all(&mut stream, Duration::from_secs(2))
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"));
}

/// One HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_continuation_frames_end_the_connection() {
    let addr = start(limits()).await;
    let sent = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        stream.write_all(&frame(4, 0, 0, &[])).unwrap(); // SETTINGS
                                                         // HEADERS without END_HEADERS: `:method GET` (static index 2), then a literal
                                                         // header repeated in CONTINUATION frames, 16 MiB at most.
        let literal = {
            let mut l = vec![0x40, 5];
            l.extend_from_slice(b"x-pad");
            l.push(0x7f); // value length 127 + ...
            l.push(0x81); // ... 129 = 256 bytes
            l.push(0x01);
            l.extend_from_slice(&[b'a'; 256]);
            l
        };
        stream.write_all(&frame(1, 0, 1, &[0x82])).unwrap();
        let mut sent = 0usize;
        while sent < 16 << 20 {
            let mut block = Vec::new();
            for _ in 0..32 {
                block.extend_from_slice(&literal);
            }
            if stream.write_all(&frame(9, 0, 1, &block)).is_err() {
                return sent;
            }
            sent += block.len();
        }
        sent
    })
    .await
    .unwrap();
    assert!(
        sent < 4 << 20,
        "the server kept reading CONTINUATION frames ({sent} bytes)"
    );
    // And it still serves others.
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        read_all(&mut stream, Duration::from_secs(2))
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
