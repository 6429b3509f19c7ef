//! Forwarding one request to a pool: pick a server, send, retry an idempotent
//! request that could not connect on another server, and turn every failure into a
//! clean 502/503/504 page instead of a hang.
//!
//! A failure is blamed where it happened: a client whose body breaks the limit or
//! the chunked framing gets 413 or 400 and no server is marked for it; a connect that
//! fails for want of a local descriptor gets 503 and no server is marked either (a
//! node short of descriptors must not fake a failover); only what the server did
//! counts against it.

use std::error::Error as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONNECTION;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};

use crate::headers::strip_hop_by_hop;
use crate::pages::error_page;
use crate::upstream::Pool;
use crate::{Body, BoxError};

/// How a hop forwards: the parts of proxy behaviour that differ between roles.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How many other servers an idempotent, bodiless request that failed to
    /// connect may be tried on.
    pub retries: u32,
    /// The status when no server can be reached: a load balancer says 503 (the
    /// service is missing, as HAProxy does), a web server 502 (its upstream is
    /// broken, as nginx does).
    pub unreachable: StatusCode,
    /// Largest request body passed on, counted as it streams (a chunked body
    /// announces no length); more is 413. `None`: no limit at this hop.
    pub max_body_bytes: Option<u64>,
}

/// Sends `req` to a server of `pool`. Its headers must already be this hop's: the
/// hop-by-hop ones stripped *before* the forwarding headers were added (see
/// [`crate::headers::Forwarding`]), so that a client's `Connection` header cannot
/// name them.
pub async fn forward(
    pool: &Pool,
    req: Request<Incoming>,
    peer: SocketAddr,
    policy: Policy,
    request_id: &HeaderValue,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    // A request can be sent again only if nothing of it is lost by the first try.
    let replayable = is_idempotent(&parts.method) && body.is_end_stream();
    let fault = Arc::new(AtomicU8::new(CLIENT_OK));
    let mut body = Some(ClientBody {
        inner: body,
        left: policy.max_body_bytes,
        fault: fault.clone(),
    });
    let mut tried: Vec<usize> = Vec::new();

    loop {
        let Some((index, _in_flight)) = pool.pick(peer.ip(), &tried) else {
            let detail = if tried.is_empty() {
                format!(
                    "No {} server is available right now. Please try again in a moment.",
                    pool.name
                )
            } else {
                format!(
                    "Could not reach any {} server. Please try again in a moment.",
                    pool.name
                )
            };
            return error_page(policy.unreachable, &detail, Some(request_id));
        };
        let server = &pool.servers()[index];
        let upstream_body: Body = match (replayable, body.take()) {
            (false, Some(body)) => body.boxed_unsync(),
            _ => crate::empty(),
        };
        let mut upstream = Request::new(upstream_body);
        *upstream.method_mut() = parts.method.clone();
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.uri_mut() = match server.uri_for(&path).parse() {
            Ok(uri) => uri,
            Err(_) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "The request target is not valid.",
                    Some(request_id),
                )
            }
        };
        *upstream.headers_mut() = if replayable {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };

        let sent =
            tokio::time::timeout(pool.timeouts.server, pool.client().request(upstream)).await;
        match sent {
            Ok(Ok(resp)) => {
                let (mut head, body) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                return Response::from_parts(head, body.map_err(Into::into).boxed_unsync());
            }
            Ok(Err(_)) if fault.load(Relaxed) != CLIENT_OK => {
                return client_fault(fault.load(Relaxed), policy, request_id);
            }
            Ok(Err(e)) if io_cause(&e).is_some_and(crate::budget::is_local_exhaustion) => {
                if let Some(n) = LOCAL_SHORTAGE.hit() {
                    tracing::warn!(
                        server = %server.name,
                        "{n} request(s) in the last second found this node short of \
                         resources: {}; no server is blamed",
                        root_cause(&e)
                    );
                }
                return error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "This server is overloaded right now. Please try again in a moment.",
                    Some(request_id),
                );
            }
            Ok(Err(e)) if e.is_connect() => {
                let refused = io_cause(&e)
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
                let reason = format!("connect: {}", root_cause(&e));
                tracing::warn!(server = %server.name, request_id = ?request_id, "cannot connect: {reason}");
                pool.report_failure(index, &reason, refused);
                tried.push(index);
                if !replayable || tried.len() > policy.retries as usize {
                    return error_page(
                        policy.unreachable,
                        &format!(
                            "Could not connect to a {} server. Please try again in a moment.",
                            pool.name
                        ),
                        Some(request_id),
                    );
                }
            }
            Ok(Err(e)) => {
                let reason = root_cause(&e);
                tracing::warn!(server = %server.name, request_id = ?request_id, "bad answer: {reason}");
                pool.report_failure(index, &reason, false);
                return error_page(
                    StatusCode::BAD_GATEWAY,
                    &format!("The {} server did not give a valid answer.", pool.name),
                    Some(request_id),
                );
            }
            Err(_) => {
                pool.report_failure(index, "response timeout", false);
                return error_page(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("The {} server did not answer in time.", pool.name),
                    Some(request_id),
                );
            }
        }
    }
}

/// Requests that found this node short of resources: one line a second.
static LOCAL_SHORTAGE: crate::budget::LogEvery = crate::budget::LogEvery::new();

/// [`ClientBody::fault`] values.
const CLIENT_OK: u8 = 0;
const CLIENT_TOO_LARGE: u8 = 1;
const CLIENT_BROKEN: u8 = 2;

/// The client's request body on its way upstream: counted against the hop's limit,
/// and remembering whether it was the client that broke the exchange.
struct ClientBody {
    inner: Incoming,
    /// Bytes still allowed; `None`: no limit.
    left: Option<u64>,
    fault: Arc<AtomicU8>,
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(left), Some(data)) = (self.left, frame.data_ref()) {
                    let len = data.len() as u64;
                    if len > left {
                        self.fault.store(CLIENT_TOO_LARGE, Relaxed);
                        return Poll::Ready(Some(Err("request body over the limit".into())));
                    }
                    self.left = Some(left - len);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.fault.store(CLIENT_BROKEN, Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The answer when the client's own body ended the exchange: nothing is echoed,
/// no server is blamed, and an HTTP/1.1 connection with unread body bytes closes.
fn client_fault(fault: u8, policy: Policy, request_id: &HeaderValue) -> Response<Body> {
    let mut resp = if fault == CLIENT_TOO_LARGE {
        error_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "The request body is larger than the {} bytes this site accepts.",
                policy.max_body_bytes.unwrap_or_default()
            ),
            Some(request_id),
        )
    } else {
        error_page(
            StatusCode::BAD_REQUEST,
            "The request body was malformed or cut short.",
            Some(request_id),
        )
    };
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// RFC 9110 §9.2.2: these methods may be repeated without changing the outcome.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The operating system's error under a client error, if there is one.
fn io_cause(e: &hyper_util::client::legacy::Error) -> Option<&std::io::Error> {
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = err.source();
    }
    None
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}
