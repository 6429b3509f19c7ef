//! Forwarding one request to a pool: pick a server, get a connection to it, send,
//! try a request that found no connection on another server, and turn every failure
//! into a clean 502/503/504 page instead of a hang.
//!
//! A request goes to another server only while nothing of it was sent (as HAProxy's
//! `retry-on conn-failure` with `redispatch`): then any method is safe to send
//! again, and nothing has to be kept aside for it. Once a server has seen a request,
//! its failure is answered, never replayed elsewhere. One exception, on the same
//! server: a kept socket closed just as a request went out, before any byte of an
//! answer, most often means the server closed it idle and saw nothing, so a request
//! whose method may be repeated goes again, once, on a fresh socket (as browsers
//! and nginx do; see `exchange_wire`).
//!
//! A failure is blamed where it happened: a client whose body breaks the limit or
//! the chunked framing gets 413 or 400 and no server is marked for it; a connect that
//! fails for want of a local descriptor gets 503 and no server is marked either (a
//! node short of descriptors must not fake a failover); only what the server did
//! counts against it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use std::time::Duration;

use http::header::{CONNECTION, HOST, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::failure::{root_cause, Failure};
use crate::headers::strip_hop_by_hop;
use crate::keepalive::{ConnectError, Connections, PooledBody, Sent};
use crate::tunnel;
use crate::upstream::{InFlight, Pool};
use crate::wire::{self, WireError};
use crate::{Body, BoxError};

/// How a hop forwards: the parts of proxy behaviour that differ between roles.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How many other servers a request that found no connection may be tried on.
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
/// [`crate::headers::forwarding`]), so that a client's `Connection` header cannot
/// name them.
///
/// A WebSocket request ([`tunnel::is_websocket_request`]) is sent with its upgrade;
/// when the server answers 101 the client gets that 101 and the two connections are
/// relayed to each other until both close or nothing moves for `timeouts.tunnel`.
/// Any other answer is passed on as usual. Any other upgrade is stripped.
pub async fn forward(
    pool: &Pool,
    req: Request<Incoming>,
    peer: SocketAddr,
    policy: Policy,
    request_id: &HeaderValue,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let mut websocket = None;
    if tunnel::is_websocket_request(&parts.method, parts.version, &parts.headers) {
        websocket = parts.extensions.remove::<OnUpgrade>();
    }
    if websocket.is_none() {
        // Whatever the caller left: no hop passes an upgrade it cannot relay.
        parts.headers.remove(CONNECTION);
        parts.headers.remove(UPGRADE);
    }
    // The request line goes upstream as the client sent it (origin form); an
    // HTTP/2 client's authority becomes the Host header an HTTP/1.1 server needs.
    if !parts.headers.contains_key(HOST) {
        if let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(HOST, host);
        }
    }
    let uri = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        std::mem::take(&mut parts.uri)
    } else {
        let target = parts.uri.path_and_query().cloned();
        Uri::from(target.unwrap_or_else(|| PathAndQuery::from_static("/")))
    };
    // Only a body that is sent on needs watching; a bodiless request costs nothing.
    let fault = (!body.is_end_stream()).then(|| Arc::new(OnceLock::new()));
    let upstream_body: Body = match &fault {
        Some(fault) => ClientBody {
            inner: body,
            left: policy.max_body_bytes,
            limit: policy.max_body_bytes.unwrap_or_default(),
            fault: fault.clone(),
        }
        .boxed_unsync(),
        None => crate::empty(),
    };
    let mut request = Request::new(upstream_body);
    *request.method_mut() = parts.method.clone();
    *request.version_mut() = Version::HTTP_11;
    *request.uri_mut() = uri;
    *request.headers_mut() = std::mem::take(&mut parts.headers);
    // Held until a server took it: a request that found no connection is whole,
    // whatever its method, and goes to the next server.
    let mut unsent = Some(request);
    // An HTTP/1 request with a body gets its error page with `Connection: close`: the
    // body may not have been read to its end (never sent, or cut off), and a client
    // that sends it whole before reading would otherwise meet a reset that destroys
    // the page; the connection lingers instead (see `linger`), as for a 413. (HTTP/2
    // ends the stream alone.)
    let http1 = parts.version < Version::HTTP_2;
    let refuse = |failure: Failure| {
        let mut page = failure.page(policy.unreachable, &pool.name, request_id);
        if http1 && fault.is_some() {
            page.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        page
    };
    let mut tried: Vec<usize> = Vec::new();

    loop {
        let Some((index, in_flight)) = pool.pick(peer.ip(), &tried) else {
            return refuse(Failure::NoServer {
                after_tries: !tried.is_empty(),
            });
        };
        let server = &pool.servers()[index];
        let Some(mut request) = unsent.take() else {
            unreachable!("a request is retried only while it is unsent")
        };
        if !request.headers().contains_key(HOST) {
            // An HTTP/1.0 client may send none; HTTP/1.1 needs one.
            request
                .headers_mut()
                .insert(HOST, server.host_header.clone());
        }
        let sent = tokio::time::timeout(
            pool.timeouts.server,
            exchange(&server.conns, pool.timeouts.connect, request),
        )
        .await;
        let (failure, reason) = match sent {
            Ok(Exchange::Answer(resp)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let (head, body) = resp.into_parts();
                let to_websocket = head
                    .headers
                    .get(UPGRADE)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
                match (websocket.take(), body.into_incoming()) {
                    (Some(client), Some(body)) if to_websocket => {
                        let hold = parts.extensions.remove::<tunnel::Hold>();
                        let resp = Response::from_parts(head, body);
                        return open_tunnel(resp, client, pool.timeouts.tunnel, in_flight, hold);
                    }
                    // A switch nobody asked for, or to another protocol.
                    _ => (
                        Failure::BadResponse,
                        "101 Switching Protocols to something other than the WebSocket asked for"
                            .to_string(),
                    ),
                }
            }
            Ok(Exchange::Answer(resp)) => {
                let (mut head, body) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                // The server counts the request in flight until its answer has been
                // sent to the end (or the client went away): `leastconn` weighs a long
                // download, and `drain` waits for it.
                let body = crate::finish::on_finish(body.boxed_unsync(), move |_| drop(in_flight));
                return Response::from_parts(head, body);
            }
            Ok(Exchange::NoConnection(e, request)) => {
                unsent = Some(request);
                (Failure::of_connect_error(&e), e.to_string())
            }
            Ok(Exchange::Failed(e)) => {
                let client_body = fault.as_ref().and_then(|f| f.get().copied());
                (Failure::of_exchange(&*e, client_body), root_cause(&*e))
            }
            Err(_) => (Failure::Timeout, "response timeout".to_string()),
        };
        if failure.blames_server() {
            tracing::warn!(server = %server.name, request_id = ?request_id, ?failure, "{reason}");
            let refused = failure == Failure::Connect { refused: true };
            pool.report_failure(index, &reason, refused);
        } else if failure == Failure::LocalShortage {
            if let Some(n) = LOCAL_SHORTAGE.hit() {
                tracing::warn!(
                    server = %server.name,
                    "{n} request(s) in the last second found this node short of \
                     resources: {reason}; no server is blamed"
                );
            }
        }
        tried.push(index);
        let may_retry = unsent.is_some() && tried.len() <= policy.retries as usize;
        if !(failure.retry_elsewhere() && may_retry) {
            return refuse(failure);
        }
    }
}

/// What became of one request at one server.
enum Exchange {
    /// The server answered.
    Answer(Response<PooledBody>),
    /// No connection could be had: the request, unsent, comes back.
    NoConnection(ConnectError, Request<Body>),
    /// The exchange broke after the request (or part of it) went out.
    Failed(BoxError),
}

/// Sends `request` on a kept-alive connection to the server, or on a fresh one when
/// the kept-alive one turns out closed (the server saw nothing, so any method may
/// go again). A request without a body or upgrade goes out by [`wire`]; the others
/// by hyper's client.
async fn exchange(conns: &Arc<Connections>, connect: Duration, request: Request<Body>) -> Exchange {
    if wire::fits(&request) {
        return exchange_wire(conns, connect, request).await;
    }
    let conn = match conns.get(connect).await {
        Ok(conn) => conn,
        Err(e) => return Exchange::NoConnection(e, request),
    };
    let request = match conns.send(conn, request).await {
        Sent::Answer(resp) => return Exchange::Answer(resp),
        Sent::Failed(e) => return Exchange::Failed(e.into()),
        Sent::NotSent(request) => request,
    };
    let conn = match conns.connect(connect).await {
        Ok(conn) => conn,
        Err(e) => return Exchange::NoConnection(e, request),
    };
    match conns.send(conn, request).await {
        Sent::Answer(resp) => Exchange::Answer(resp),
        Sent::Failed(e) => Exchange::Failed(e.into()),
        Sent::NotSent(request) => Exchange::NoConnection(ConnectError::Closed, request),
    }
}

/// [`exchange`] for a request [`wire`] can send. A kept socket the server closed
/// just as the request went out shows as [`WireError::ClosedEarly`]: a request whose
/// method may be repeated (RFC 9110 §9.2.2) then goes again on a fresh socket to the
/// same server, once, as browsers and nginx do; any other request gets the failure
/// (a 502 blamed on the server: it closed a socket just found open). On a
/// fresh socket the same early close is a failure too, never a reason to try another
/// server: the server may have taken the request and died on it.
async fn exchange_wire(
    conns: &Arc<Connections>,
    connect: Duration,
    request: Request<Body>,
) -> Exchange {
    let head = wire::encode(&request);
    let method = request.method();
    if let Some(kept) = conns.take_wire(!method.is_idempotent()) {
        match wire::send(kept, &head, method, conns).await {
            Ok(resp) => return Exchange::Answer(resp.map(PooledBody::Wire)),
            Err(WireError::ClosedEarly(_)) if method.is_idempotent() => {}
            Err(e) => return Exchange::Failed(e.into()),
        }
    }
    let fresh = match conns.connect_wire(connect).await {
        Ok(fresh) => fresh,
        Err(e) => return Exchange::NoConnection(e, request),
    };
    match wire::send(fresh, &head, method, conns).await {
        Ok(resp) => Exchange::Answer(resp.map(PooledBody::Wire)),
        Err(e) => Exchange::Failed(e.into()),
    }
}

/// The 101 for the client, and the task that relays the two upgraded connections:
/// the client's (`client`, once hyper has sent this 101) and the server's. The task
/// keeps the server counted in flight (for `leastconn`) and the client connection's
/// [`tunnel::Hold`] until the tunnel ends, and reports the end through the
/// [`tunnel::TunnelEnd`] in the response's extensions.
fn open_tunnel(
    mut resp: Response<Incoming>,
    client: OnUpgrade,
    idle: Duration,
    in_flight: InFlight,
    hold: Option<tunnel::Hold>,
) -> Response<Body> {
    let server = hyper::upgrade::on(&mut resp);
    let (mut head, _) = resp.into_parts();
    strip_hop_by_hop(&mut head.headers);
    tunnel::set_upgrade_headers(&mut head.headers);
    let (ended_tx, ended) = tunnel::TunnelEnd::new();
    head.extensions.insert(ended);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let (client, server) = match tokio::join!(client, server) {
            (Ok(client), Ok(server)) => (client, server),
            (client, server) => {
                let e = client.err().or(server.err()).map(|e| e.to_string());
                tracing::debug!("WebSocket upgrade not completed: {e:?}");
                return;
            }
        };
        let metrics = hold.as_ref().map(|h| h.metrics().clone());
        if let Some(metrics) = &metrics {
            metrics.tunnel_opened();
        }
        let relayed = tunnel::relay(TokioIo::new(client), TokioIo::new(server), idle).await;
        if let Some(metrics) = &metrics {
            metrics.tunnel_closed(relayed.ended == tunnel::Ended::Idle);
        }
        if relayed.ended == tunnel::Ended::Idle {
            tracing::debug!("WebSocket closed after {idle:?} with no byte either way");
        }
        let _ = ended_tx.send(relayed.b_to_a);
        drop(hold);
    });
    Response::from_parts(head, crate::empty())
}

/// Requests that found this node short of resources: one line a second.
static LOCAL_SHORTAGE: crate::budget::LogEvery = crate::budget::LogEvery::new();

/// The client's request body on its way upstream: counted against the hop's limit,
/// and remembering whether it was the client that broke the exchange.
struct ClientBody {
    inner: Incoming,
    /// Bytes still allowed; `None`: no limit.
    left: Option<u64>,
    /// The limit, for the 413 page.
    limit: u64,
    /// Set when the client broke the exchange: read by `forward` once the upstream
    /// request has failed.
    fault: Arc<OnceLock<Failure>>,
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
                        let _ = self.fault.set(Failure::BodyTooLarge { limit: self.limit });
                        return Poll::Ready(Some(Err("request body over the limit".into())));
                    }
                    self.left = Some(left - len);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let _ = self.fault.set(Failure::ClientBody);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers the first request on each connection with `ok`, then
    /// closes the connection: at once (as a server whose keep-alive timeout has just
    /// passed does), or, `on_the_next`, when the next request comes, without
    /// answering it (the race where a server closes a kept socket just as a request
    /// goes out on it). Counts its connections.
    async fn one_answer_per_connection(on_the_next: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    if !read_heads(&mut s, &mut got, 1).await {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    let _ = s.write_all(answer).await;
                    if on_the_next {
                        read_heads(&mut s, &mut got, 2).await;
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// Reads from `s` into `got` until it holds `heads` request heads; false when
    /// the client went first.
    async fn read_heads(s: &mut tokio::net::TcpStream, got: &mut Vec<u8>, heads: usize) -> bool {
        while got.windows(4).filter(|w| *w == b"\r\n\r\n").count() < heads {
            let mut buf = [0; 1024];
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    fn request(method: http::Method) -> Request<Body> {
        let mut req = Request::new(crate::empty());
        *req.method_mut() = method;
        *req.uri_mut() = Uri::from_static("/");
        req.headers_mut()
            .insert(HOST, HeaderValue::from_static("x"));
        req
    }

    /// What became of `method` sent through `exchange`: the answer's body, or why not.
    async fn outcome(conns: &Arc<Connections>, method: http::Method) -> String {
        match exchange(conns, Duration::from_secs(1), request(method)).await {
            Exchange::Answer(resp) => {
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8(body.to_vec()).unwrap()
            }
            Exchange::NoConnection(e, _) => format!("no connection: {e}"),
            Exchange::Failed(e) => format!("failed: {e}"),
        }
    }

    #[tokio::test]
    async fn a_kept_socket_the_server_closed_costs_no_request() {
        let (addr, accepted) = one_answer_per_connection(false).await;
        let conns = Arc::new(Connections::new(addr));
        for (i, method) in [http::Method::GET, http::Method::GET, http::Method::POST]
            .into_iter()
            .enumerate()
        {
            // The socket of the previous answer is kept (its answer did not say
            // `close`), and closed by the server by now.
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(outcome(&conns, method.clone()).await, "ok", "{method}");
        }
        // Each request found the kept socket closed and took a fresh one.
        assert_eq!(accepted.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn a_kept_socket_closed_under_a_request_repeats_only_a_repeatable_one() {
        let (addr, accepted) = one_answer_per_connection(true).await;
        let conns = Arc::new(Connections::new(addr));
        let mut outcomes = Vec::new();
        for method in [http::Method::GET, http::Method::GET, http::Method::POST] {
            outcomes.push(outcome(&conns, method).await);
        }
        // The second GET met the close on the kept socket and went again on a fresh
        // one; the POST met it too, and was not sent twice.
        assert_eq!(outcomes[..2], ["ok", "ok"]);
        assert!(outcomes[2].contains("closed by the server"), "{outcomes:?}");
        assert_eq!(accepted.load(SeqCst), 2);
    }
}
