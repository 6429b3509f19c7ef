//! A node out of file descriptors must not blame its servers: health checks that
//! cannot open a socket keep the server's state, and a request that cannot connect
//! gets 503 without marking the server down. (This file holds one test: it lowers
//! the whole test process's open-file limit while it runs.)

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use net::headers::RequestIds;
use net::proxy::Policy;
use net::server::{Handler, Limits, Transport};
use net::Body;

mod common;
use common::{blamed, pool_of, start, Hop};

struct Ok200;

impl Handler for Ok200 {
    async fn handle(&self, _req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        Response::new(net::full("ok\n"))
    }
}

fn rlimit() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit
}

fn set_soft(soft: u64) {
    let mut limit = rlimit();
    limit.rlim_cur = soft as libc::rlim_t;
    // SAFETY: a valid, initialised rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_blames_no_server() {
    let origin = start(Ok200, Limits::default(), Transport::default());
    let pool = pool_of(origin, Duration::from_millis(50));
    let (trigger, shutdown) = net::shutdown::channel();
    pool.spawn_health_checks(shutdown);
    let hop = Hop {
        pool: pool.clone(),
        policy: Policy {
            retries: 1,
            unreachable: StatusCode::SERVICE_UNAVAILABLE,
            max_body_bytes: None,
        },
        ids: RequestIds::default(),
    };
    let hop = start(hop, Limits::default(), Transport::default());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(blamed(&pool), (true, 0));

    let (answer, state) = tokio::task::spawn_blocking(move || {
        // A client connected before the shortage: its request comes during it.
        let mut client = std::net::TcpStream::connect(hop).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let before = rlimit().rlim_cur;
        let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        set_soft(open + 32);
        let mut hoard = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => hoard.push(f),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                    break;
                }
            }
        }
        // Twenty check intervals with no descriptor to check with.
        std::thread::sleep(Duration::from_secs(1));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = String::new();
        let _ = client.read_to_string(&mut answer);
        let state = blamed(&pool);
        drop(hoard);
        set_soft(before);
        (answer, state)
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:.200}");
    assert!(answer.contains("overloaded"), "{answer:.400}");
    assert_eq!(state, (true, 0), "the server was blamed for our shortage");
    drop(trigger);
}
