//! Forwarding one request to a pool: pick a server, send, retry an idempotent
//! request that could not connect on another server, and turn every failure into a
//! clean 502/503/504 page instead of a hang.

use std::error::Error as _;
use std::net::SocketAddr;

use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};

use crate::headers::strip_hop_by_hop;
use crate::pages::error_page;
use crate::upstream::Pool;
use crate::Body;

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
}

/// Sends `req` (its forwarding headers already set) to a server of `pool`.
pub async fn forward(
    pool: &Pool,
    req: Request<Incoming>,
    peer: SocketAddr,
    policy: Policy,
    request_id: &HeaderValue,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    // A request can be sent again only if nothing of it is lost by the first try.
    let replayable = is_idempotent(&parts.method) && body.is_end_stream();
    let mut body = Some(body);
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
        let upstream_body: Body = if replayable {
            crate::empty()
        } else {
            body.take()
                .expect("a non-replayable request is sent once")
                .map_err(Into::into)
                .boxed_unsync()
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
            Ok(Err(e)) if e.is_connect() => {
                let refused = is_refused(&e);
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

/// RFC 9110 §9.2.2: these methods may be repeated without changing the outcome.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn is_refused(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = err.source();
    }
    false
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}
