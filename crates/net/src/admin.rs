//! The admin listener every node has: `/healthz`, `/metrics` (Prometheus text) and
//! `/status` (JSON). It runs on its own port so that operators and monitoring reach
//! it even when the main listener is saturated, and so that it can stay on loopback.
//!
//! Reading is open; changing the running node is not. A write is a `POST` that
//! carries `Authorization: Bearer TOKEN`, the site's admin token (from the variable
//! `admin_token_env` names): a missing or wrong token is 401, a node started without a
//! token refuses every write with 403, and each refusal is counted on `/metrics`
//! (`scaleup_admin_unauthorized_total`). The writes so far act on the node's pool:
//!
//! - `GET /servers/NAME`: one server of the pool (open, like `/status`);
//! - `POST /servers/NAME/drain`: no new request goes to it, those in flight finish;
//! - `POST /servers/NAME/ready`: back in the pool, with the pool's slow start;
//! - `POST /reload`: re-read the node's site file and apply what can change in place
//!   ([`crate::reload`]); the answer is what changed, as JSON, or 422 and why nothing
//!   did;
//! - `POST /upgrade`: start the node's successor from the binary now on disk, which
//!   takes this process's sockets over ([`crate::handover`]); the answer (202) names
//!   both processes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use http::header::{ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::server::{Handler, Limits};
use crate::upstream::Pool;
use crate::{Body, Metrics, Shutdown};

/// What a node shows on its admin listener.
pub trait Report: Send + Sync + 'static {
    /// The node's metrics in Prometheus text format.
    fn metrics(&self) -> String;
    /// The node's state as JSON.
    fn status(&self) -> impl Future<Output = serde_json::Value> + Send;
    /// Whether the node can do its job (for `/healthz`).
    fn healthy(&self) -> impl Future<Output = bool> + Send {
        async { true }
    }
    /// Pages beyond the three standard ones (a dashboard, say); `None` is 404.
    fn extra(&self, _path: &str) -> Option<Response<Body>> {
        None
    }
    /// Who may change this node; `None`: it takes no admin writes at all.
    fn auth(&self) -> Option<&Auth> {
        None
    }
    /// The pool `/servers/NAME` shows and `drain`/`ready` act on, if the node has one
    /// (the one in use now: a reload may have replaced it).
    fn pool(&self) -> Option<Arc<Pool>> {
        None
    }
    /// Where `POST /reload` goes, if the node takes reloads.
    fn reload(&self) -> Option<&crate::reload::Trigger> {
        None
    }
}

/// Whether a node accepts admin writes: the token they must carry, or why it takes
/// none (which the 403 says, with what to do).
#[derive(Clone)]
pub enum Token {
    /// Writes carrying this token are accepted.
    Set(String),
    /// Every write is refused, for this reason.
    Off(String),
}

/// Never prints the token itself.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Set(_) => f.write_str("Token::Set(***)"),
            Token::Off(why) => f.debug_tuple("Token::Off").field(why).finish(),
        }
    }
}

impl From<Result<Option<String>, String>> for Token {
    /// From what reading `admin_token_env` gave (`site::Site::admin_token`).
    fn from(read: Result<Option<String>, String>) -> Token {
        match read {
            Ok(Some(token)) => Token::Set(token),
            Ok(None) => Token::Off(
                "the site file names no admin token: add `admin_token_env = \
                 \"SCALEUP_ADMIN_TOKEN\"` to [site] and start the node with that variable \
                 set (`scaleup up` makes one)"
                    .into(),
            ),
            Err(why) => Token::Off(why),
        }
    }
}

/// The admin token of a running node, and the writes it refused.
pub struct Auth {
    node: String,
    token: Token,
    missing: AtomicU64,
    wrong: AtomicU64,
    off: AtomicU64,
}

impl Auth {
    /// Node `node`'s admin writes, allowed with `token`.
    pub fn new(node: &str, token: Token) -> Auth {
        if let Token::Off(why) = &token {
            tracing::info!(node, "admin writes (drain, ready) are refused: {why}");
        }
        Auth {
            node: node.to_string(),
            token,
            missing: AtomicU64::new(0),
            wrong: AtomicU64::new(0),
            off: AtomicU64::new(0),
        }
    }

    /// `None` when `headers` carry the token; else the 401 or 403 to answer, counted.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response<Body>> {
        let token = match &self.token {
            Token::Set(token) => token,
            Token::Off(why) => {
                self.off.fetch_add(1, Relaxed);
                return Some(text(
                    StatusCode::FORBIDDEN,
                    format!("admin writes are off on this node: {why}\n"),
                ));
            }
        };
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        let (counter, message) = match given {
            None => (
                &self.missing,
                "no admin token: send `Authorization: Bearer TOKEN` with the site's admin \
                 token (the value of the variable `admin_token_env` names; `scaleup up` \
                 keeps it in the state directory's admin.token)\n",
            ),
            Some(given) if same(given.as_bytes(), token.as_bytes()) => return None,
            Some(_) => (
                &self.wrong,
                "wrong admin token: send the one this node was started with (the value \
                 of the variable `admin_token_env` names)\n",
            ),
        };
        counter.fetch_add(1, Relaxed);
        let mut resp = text(StatusCode::UNAUTHORIZED, message.into());
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"scaleup admin\""),
        );
        Some(resp)
    }

    /// Appends the refused writes in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP scaleup_admin_unauthorized_total Admin writes refused: no token (missing), \
             a wrong one (wrong), or none configured on the node (off).\n\
             # TYPE scaleup_admin_unauthorized_total counter"
        );
        for (reason, n) in [
            ("missing", &self.missing),
            ("wrong", &self.wrong),
            ("off", &self.off),
        ] {
            let _ = writeln!(
                out,
                "scaleup_admin_unauthorized_total{{node=\"{}\",reason=\"{reason}\"}} {}",
                self.node,
                n.load(Relaxed)
            );
        }
    }
}

/// Compares in time that depends only on the lengths (a token's length is no secret:
/// `scaleup up` makes them all 64 characters), not on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

struct Admin<R>(Arc<R>);

impl<R: Report> Handler for Admin<R> {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
        if req.method() == Method::POST {
            return self.write(&req).await;
        }
        let path = req.uri().path();
        if let Some(rest) = path.strip_prefix("/servers/") {
            return self.server(rest);
        }
        match path {
            "/healthz" => {
                if self.0.healthy().await {
                    text(StatusCode::OK, "ok\n".into())
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n".into())
                }
            }
            "/metrics" => {
                let mut out = self.0.metrics();
                if let Some(auth) = self.0.auth() {
                    auth.render_metrics(&mut out);
                }
                typed(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    out,
                )
            }
            "/reload" | "/upgrade" => post_only(),
            "/status" => typed(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&self.0.status().await).unwrap_or_default(),
            ),
            other => self.0.extra(other).unwrap_or_else(|| {
                text(
                    StatusCode::NOT_FOUND,
                    "not found: try /healthz, /metrics or /status\n".into(),
                )
            }),
        }
    }
}

impl<R: Report> Admin<R> {
    /// `GET /servers/NAME`, or a write path asked for with the wrong method.
    fn server(&self, rest: &str) -> Response<Body> {
        if rest.ends_with("/drain") || rest.ends_with("/ready") {
            return post_only();
        }
        match self.find(rest) {
            Ok((pool, server)) => json(StatusCode::OK, &pool.server_status(&server)),
            Err(why) => text(StatusCode::NOT_FOUND, why),
        }
    }

    /// A `POST`: the token first (so nothing about the node is told to a caller
    /// without it), then the action.
    async fn write(&self, req: &Request<Incoming>) -> Response<Body> {
        let Some(auth) = self.0.auth() else {
            return text(
                StatusCode::FORBIDDEN,
                "this node takes no admin writes\n".into(),
            );
        };
        if let Some(refusal) = auth.refusal(req.headers()) {
            return refusal;
        }
        let path = req.uri().path();
        if path == "/upgrade" {
            return match crate::handover::start_successor() {
                Ok(started) => json(StatusCode::ACCEPTED, &started),
                Err(why) => text(StatusCode::CONFLICT, format!("{why}\n")),
            };
        }
        if path == "/reload" {
            return match self.0.reload() {
                None => text(
                    StatusCode::NOT_FOUND,
                    "this node takes no reloads: restart it to apply a new site file\n".into(),
                ),
                Some(trigger) => match trigger.reload().await {
                    Ok(changes) => json(StatusCode::OK, &changes),
                    Err(why) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n")),
                },
            };
        }
        let action = path.strip_prefix("/servers/").and_then(|rest| {
            rest.strip_suffix("/drain")
                .map(|name| (name, true))
                .or_else(|| rest.strip_suffix("/ready").map(|name| (name, false)))
        });
        let Some((name, drain)) = action else {
            return text(
                StatusCode::NOT_FOUND,
                "no such admin write: try POST /servers/NAME/drain, /servers/NAME/ready, \
                 /reload or /upgrade\n"
                    .into(),
            );
        };
        let (pool, server) = match self.find(name) {
            Ok(found) => found,
            Err(why) => return text(StatusCode::NOT_FOUND, why),
        };
        if drain {
            server.drain();
        } else {
            server.ready();
        }
        json(StatusCode::OK, &pool.server_status(&server))
    }

    /// The pool's server called `name`, or why not (listing the ones there are).
    fn find(&self, name: &str) -> Result<(Arc<Pool>, Arc<crate::upstream::Upstream>), String> {
        let Some(pool) = self.0.pool() else {
            return Err("this node balances to no servers\n".into());
        };
        let found = pool.server(name).cloned();
        found.map(|s| (pool.clone(), s)).ok_or_else(|| {
            let names: Vec<&str> = pool.servers().iter().map(|s| s.name.as_str()).collect();
            format!(
                "`{name}` is not in this node's {} pool; its servers are: {}\n",
                pool.name,
                names.join(", ")
            )
        })
    }
}

/// A write path asked for with another method than `POST`.
fn post_only() -> Response<Body> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "this changes the node: POST it, with `Authorization: Bearer TOKEN`\n".into(),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("POST"));
    resp
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    typed(status, "text/plain; charset=utf-8", body)
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    typed(
        status,
        "application/json",
        serde_json::to_string_pretty(value).unwrap_or_default(),
    )
}

fn typed(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(crate::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Connections the admin listener serves at once.
const ADMIN_CONNECTIONS: usize = 128;
/// ... and from one address: monitoring, `scaleup status` and a dashboard or two
/// need a handful each.
const ADMIN_PER_CLIENT: usize = 64;

/// Serves the admin listener on `listener` until `shutdown`.
pub async fn serve_admin<R: Report>(
    listener: TcpListener,
    report: Arc<R>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    // Its own small budget, inside the descriptors every node keeps in reserve, so
    // operators get in however full the main listeners are.
    let limits = Limits {
        budget: crate::budget::Budget::new(ADMIN_CONNECTIONS, ADMIN_PER_CLIENT),
        ..Limits::default()
    };
    // On the node's own runtime: a runtime and a thread per core of its own, for an
    // operator's few requests, cost memory and gain nothing.
    crate::server::serve_here(
        listener,
        crate::server::Transport::default(),
        limits,
        Arc::new(Admin(report)),
        Arc::new(Metrics::default()),
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = auth {
            h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_right_bearer_token_passes_and_refusals_are_counted() {
        let auth = Auth::new("lb1", Token::Set("s3cret-token".into()));
        assert!(auth
            .refusal(&headers(Some("Bearer s3cret-token")))
            .is_none());
        assert!(auth
            .refusal(&headers(Some("bearer  s3cret-token ")))
            .is_none());
        let refused = |h| auth.refusal(&h).unwrap().status();
        assert_eq!(refused(headers(None)), StatusCode::UNAUTHORIZED);
        assert_eq!(
            refused(headers(Some("Bearer s3cret-tokeN"))),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            refused(headers(Some("Bearer s3cret"))),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            refused(headers(Some("Basic s3cret-token"))),
            StatusCode::UNAUTHORIZED
        );
        let mut out = String::new();
        auth.render_metrics(&mut out);
        assert!(
            out.contains("scaleup_admin_unauthorized_total{node=\"lb1\",reason=\"missing\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("scaleup_admin_unauthorized_total{node=\"lb1\",reason=\"wrong\"} 2"),
            "{out}"
        );
        assert!(out.contains("reason=\"off\"} 0"), "{out}");
    }

    #[test]
    fn a_node_without_a_token_refuses_every_write() {
        let auth = Auth::new("web1", Token::from(Ok(None)));
        let resp = auth.refusal(&headers(Some("Bearer anything"))).unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let mut out = String::new();
        auth.render_metrics(&mut out);
        assert!(out.contains("reason=\"off\"} 1"), "{out}");
        assert_eq!(format!("{:?}", Token::Set("x".into())), "Token::Set(***)");
    }
}
