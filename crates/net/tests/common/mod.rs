//! What the front-door tests share: a proxy hop in front of a pool, a pool of one
//! server, and serving a handler on a free loopback port.
#![allow(dead_code)] // each test file uses its own subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use net::headers::{forwarding, RequestIds, Trusted};
use net::proxy::{forward, Policy};
use net::server::{Handler, Limits, Transport};
use net::upstream::Pool;
use net::upstream::{Algorithm, HealthCheck, Timeouts};
use net::{Body, Metrics};

/// A proxy hop in front of `pool` (a first hop: it trusts no forwarding header).
pub struct Hop {
    pub pool: Arc<Pool>,
    pub policy: Policy,
    pub ids: RequestIds,
}

impl Handler for Hop {
    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        forwarding(req.headers_mut(), peer, false, &Trusted::default());
        let id = self.ids.ensure(req.headers_mut());
        forward(&self.pool, req, peer, self.policy, &id).await
    }
}

/// A pool of the one server at `addr`, checked every `interval`.
pub fn pool_of(addr: SocketAddr, interval: Duration) -> Arc<Pool> {
    Arc::new(Pool::new(
        "app",
        vec![("app1".into(), addr)],
        Algorithm::RoundRobin,
        HealthCheck {
            path: "/healthz".into(),
            interval,
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
        },
        Timeouts {
            connect: Duration::from_secs(1),
            client: Duration::from_secs(5),
            server: Duration::from_secs(5),
            keepalive: Duration::from_secs(5),
            tunnel: Duration::from_secs(60),
            drain: Duration::from_secs(10),
        },
    ))
}

/// Serves `handler` on a free loopback port for the rest of the test process.
pub fn start<H: Handler>(handler: H, limits: Limits, transport: Transport) -> SocketAddr {
    let listener = net::server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = net::shutdown::channel();
    std::mem::forget(trigger);
    tokio::spawn(net::server::serve_with(
        listener,
        transport,
        limits,
        Arc::new(handler),
        Arc::new(Metrics::default()),
        shutdown,
    ));
    addr
}

/// A server's `up` and `failures` as the pool reports them.
pub fn blamed(pool: &Pool) -> (bool, u64) {
    let status = pool.status();
    let server = &status["servers"][0];
    (
        server["up"].as_bool().unwrap(),
        server["failures"].as_u64().unwrap(),
    )
}
