//! `net`: what every HTTP role of scaleup shares.
//!
//! - [`server`]: the accept loop, a thread per core (HTTP/1.1 and HTTP/2, TLS,
//!   PROXY protocol, head size and time limits with [`clock`], idle connections
//!   parked without hyper's buffers, body limit, drain);
//! - [`per_thread`]: state kept once per serving thread (kept-alive connections,
//!   the access log's buffers), so its threads do not take turns at one lock;
//! - [`budget`]: the connections a process may hold, sized from its open-file
//!   limit, with a cap per client address;
//! - [`tls`]: the site's certificate (or a self-signed one) and rustls settings;
//! - [`proxy_protocol`]: PROXY protocol v2, written by a TLS-passthrough load
//!   balancer and read (from trusted peers only) by the web server;
//! - [`upstream`]: pools of servers with health checks and balancing algorithms;
//! - [`keepalive`]: each server's kept-alive connections, on hyper's connection API;
//! - [`proxy`]: forwarding a request to a pool, with retries and clean error pages;
//! - [`tunnel`]: WebSocket upgrades through a hop, relayed with an idle timeout;
//! - [`failure`]: why a forward failed, whose fault it is, whether to retry;
//! - [`headers`]: forwarding headers, request ids, hop-by-hop headers;
//! - [`access_log`], [`metrics`], [`finish`]: what is recorded of each request;
//! - [`timing`]: the `Server-Timing` entry each hop adds to a response;
//! - [`trace`]: W3C `traceparent`, checked and passed on;
//! - [`admin`]: the `/healthz`, `/metrics`, `/status` listener of every node;
//! - [`reload`]: how a running node is asked to re-read its site file.
//! - [`sendfile`]: large files sent from the page cache by `sendfile(2)`, through hyper;
//! - [`node`]: what every role's process runs: listeners, admin, reloads, drain;
//! - [`handover`]: a node's listening sockets passed to its successor (`upgrade`).
//!
//! Nothing here knows a role's policy: the load balancer and the web server are
//! both built from these parts.
// Unsafe code only where the OS offers no safe call (`reuseport`).
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod budget;
pub mod clock;
pub mod failure;
pub mod finish;
pub mod handover;
pub mod headers;
pub mod keepalive;
pub mod linger;
pub mod metrics;
pub mod node;
pub mod pages;
pub mod per_thread;
pub mod proxy;
pub mod proxy_protocol;
pub mod reload;
pub mod reuseport;
pub mod sendfile;
pub mod server;
pub mod shutdown;
pub mod timing;
pub mod tls;
pub mod trace;
pub mod tunnel;
pub mod upstream;
pub mod wire;

pub use body::{empty, full, Body, BoxError};
pub use metrics::Metrics;
pub use shutdown::Shutdown;
