//! A listener is served by one thread per core, and connections are shared out
//! evenly between them even when they all arrive at once (over real sockets).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use net::server::{Handler, Limits};
use net::{Body, Metrics};

/// Answers with the name of the thread that serves the request.
struct WhichThread;

impl Handler for WhichThread {
    async fn handle(&self, _req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        Response::new(net::full(name))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_is_shared_out_between_the_serving_threads() {
    let threads = net::server::serving_threads();
    let listener = net::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (_trigger, shutdown) = net::shutdown::channel();
    tokio::spawn(net::server::serve(
        listener,
        Limits::default(),
        Arc::new(WhichThread),
        Arc::new(Metrics::default()),
        shutdown,
    ));
    let served = tokio::task::spawn_blocking(move || {
        // All opened before any is used, and all kept open: each stays on the thread
        // that accepted it.
        let mut streams: Vec<TcpStream> =
            (0..16).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut served: HashMap<String, usize> = HashMap::new();
        for stream in &mut streams {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let (_, thread) = text.split_once("\r\n\r\n").expect("a whole answer");
            *served.entry(thread.to_owned()).or_default() += 1;
        }
        served
    })
    .await
    .unwrap();
    assert_eq!(served.len(), threads, "{served:?}");
    if threads > 1 {
        assert!(
            served.keys().all(|name| name.starts_with("serve-")),
            "{served:?}"
        );
        let (least, most) = (served.values().min(), served.values().max());
        assert!(
            most.unwrap() - least.unwrap() <= 4,
            "connections not shared out: {served:?}"
        );
    }
}
