//! A node out of file descriptors must not blame its servers: health checks that
//! cannot open a socket keep the server's state, and a request that cannot connect
//! gets 503 without marking the server down. (This file holds one test: it lowers
//! the whole test process's open-file limit while it runs. The origin runs in a
//! process of its own, as it would in life: one in this process could not accept
//! either, and a check that got through would rightly time out.)

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

/// Where the origin process writes its address.
const ORIGIN_ENV: &str = "SCALEUP_TEST_ORIGIN_ADDR_FILE";

/// The origin, when this test binary is started again by the test below; a no-op
/// in a normal `--ignored` run. It serves until its stdin closes.
#[test]
#[ignore = "started by running_out_of_descriptors_blames_no_server in a process of its own"]
fn origin_process() {
    let Ok(file) = std::env::var(ORIGIN_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let addr = start(Ok200, Limits::default(), Transport::default());
        std::fs::write(&file, addr.to_string()).unwrap();
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await
            .unwrap()
            .unwrap();
    });
}

/// Starts `origin_process` and waits for its address.
fn spawn_origin() -> (std::process::Child, SocketAddr) {
    let file = std::env::temp_dir().join(format!("fd-exhaustion-origin-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "origin_process", "--ignored", "--quiet"])
        .env(ORIGIN_ENV, &file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if let Ok(addr) = std::fs::read_to_string(&file) {
            if let Ok(addr) = addr.parse() {
                let _ = std::fs::remove_file(&file);
                return (child, addr);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the origin process did not start in 5 s");
}

/// Takes every free descriptor, and keeps taking them until none has come free
/// for three rounds: a health check in flight when the first grab ran frees its
/// socket later, and that descriptor must not be left for the next check.
fn hoard_every_descriptor() -> Vec<std::fs::File> {
    let mut hoard = Vec::new();
    let mut quiet_rounds = 0;
    while quiet_rounds < 3 {
        let before = hoard.len();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => hoard.push(f),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                    break;
                }
            }
        }
        quiet_rounds = if hoard.len() == before {
            quiet_rounds + 1
        } else {
            0
        };
        std::thread::sleep(Duration::from_millis(20));
    }
    hoard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_blames_no_server() {
    let (mut origin_process, origin) = spawn_origin();
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
        let hoard = hoard_every_descriptor();
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
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("overloaded"), "{answer}");
    assert_eq!(state, (true, 0), "the server was blamed for our shortage");
    drop(trigger);
    drop(origin_process.stdin.take());
    let _ = origin_process.wait();
}
