//! HTTP/1.1 to an upstream server on the socket itself, for the requests a proxy
//! forwards most: those without a body and without an upgrade.
//!
//! Why not hyper's client for these: hyper's HTTP/1 client runs each connection in a
//! task of its own and hands it requests over a channel, so every request costs two
//! task wake-ups across that channel, and every upstream connection keeps the
//! channel's block (16 KiB), a read buffer and a write buffer for as long as it
//! lives. Here the request's own task writes the head and reads the answer: no hop,
//! no channel, and a buffer only while an answer is being read.
//!
//! What it does not do is left to hyper's client (see `proxy::exchange`): request
//! bodies (an answer may come before the body is sent, which needs reading and
//! writing at once) and upgrades. An answer is read as RFC 9112 §6.3 says: no body
//! for `HEAD`, 1xx, 204 and 304; chunked when the last transfer coding is chunked;
//! else by `Content-Length`; else until the server closes. A connection is kept for
//! another request only when its answer was framed (not read until close), the
//! server did not say `Connection: close`, it spoke HTTP/1.1, and it sent nothing
//! past the answer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::keepalive::Connections;
use crate::{Body, BoxError};

/// Most response head bytes accepted (HAProxy's `tune.bufsize` default is 16 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// Most interim (1xx) answers skipped before the final one.
const MAX_INTERIM: usize = 8;

/// Most header fields in a response head.
const MAX_HEADERS: usize = 100;

/// The read buffer's first size for an answer, and the most a single read asks for
/// (a large body is read in pieces of up to this, handed on as they come). The first
/// holds most answers' heads with a small body, two to a page of memory: one buffer
/// lives for each request in flight. A read that comes back short of the room it
/// had also tells the runtime the socket is drained (see [`Wire::is_closed`]).
const READ_FIRST: usize = 2 * 1024;
const READ_MOST: usize = 64 * 1024;

/// A socket to an upstream server, between requests or carrying one.
#[derive(Debug)]
pub struct Wire {
    tcp: TcpStream,
}

/// Why an exchange on a [`Wire`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The server closed the connection (or reset it) before sending a byte of any
    /// answer. On a kept socket that is most often a server that closed it while idle
    /// just as the request went out, and saw nothing; but it may also be one that
    /// took the request and died on it, so only a request that may be repeated is
    /// sent again (on a fresh socket to the same server, once: see `proxy`).
    #[error("connection closed by the server before any answer")]
    ClosedEarly(#[source] Option<io::Error>),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server's bytes are not an HTTP/1 answer, or break its framing.
    #[error("invalid answer: {0}")]
    Malformed(&'static str),
}

impl Wire {
    /// A connected socket, ready for its first request.
    pub fn new(tcp: TcpStream) -> Wire {
        Wire { tcp }
    }

    /// Whether the server closed this idle connection or sent bytes nobody asked for
    /// (which would be taken for the next answer: such a socket is never used), as
    /// far as the runtime knows: no system call unless it finds the socket readable.
    ///
    /// tokio clears a socket's readiness when a read comes back short of the room it
    /// had (the socket drained), as an answer's last read does. A socket still not
    /// readable has had neither bytes nor a close since, up to the runtime's last
    /// look at its events, and only one found readable is asked by a peek. nginx and
    /// HAProxy check their idle upstream connections by their event loop too; a peek
    /// on every reuse was a fifth of a proxied request's system calls. What this
    /// misses is what came after that look (the runtime looks again at most 61 tasks
    /// later): a close then shows in the answer's read as an early close, and the
    /// request goes again if it may; bytes then (a body a server sends late after an
    /// answer to `HEAD`) would be read as the next answer. A request that may not be
    /// repeated asks [`Wire::is_closed_now`] instead.
    pub fn is_closed(&self) -> bool {
        // `try_io` calls the peek only on a readable socket, and clears the
        // readiness when the peek finds nothing, so the next look is free again.
        closed_if(
            self.tcp
                .try_io(tokio::io::Interest::READABLE, || self.peek()),
        )
    }

    /// [`Wire::is_closed`] asked of the socket itself, by a peek: one system call,
    /// and nothing missed but what comes while the request is on its way.
    pub fn is_closed_now(&self) -> bool {
        closed_if(self.peek())
    }

    /// A look at the socket's next byte, left there.
    fn peek(&self) -> io::Result<usize> {
        let mut probe = [std::mem::MaybeUninit::uninit(); 1];
        socket2::SockRef::from(&self.tcp).peek(&mut probe)
    }

    /// The socket, for what outlives HTTP on it.
    pub fn into_tcp(self) -> TcpStream {
        self.tcp
    }
}

/// What a peek at an idle socket says: anything but "nothing to read yet" (a byte,
/// the end, an error) means the socket is not to be used.
fn closed_if(peeked: io::Result<usize>) -> bool {
    !matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Whether `req` can go out on a [`Wire`]: no body, no upgrade, and a target in
/// origin form (or `*`).
pub fn fits(req: &Request<Body>) -> bool {
    use http_body::Body as _;
    req.body().is_end_stream()
        && !req.headers().contains_key(http::header::UPGRADE)
        && req.uri().scheme().is_none()
        && req.uri().path_and_query().is_some()
}

/// The request head as HTTP/1.1 writes it: request line, fields, blank line.
pub fn encode(req: &Request<Body>) -> Vec<u8> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let mut head = Vec::with_capacity(req.method().as_str().len() + target.len() + fields + 14);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Sends `head` (from [`encode`]) on `wire` and reads the answer's head. The body
/// streams from the socket as the response's body is polled; when it ends on a
/// connection that can carry another request, the connection goes back to `home`.
pub async fn send(
    mut wire: Wire,
    head: &[u8],
    method: &Method,
    home: &Arc<Connections>,
) -> Result<Response<WireBody>, WireError> {
    if let Err(e) = wire.tcp.write_all(head).await {
        return Err(match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                WireError::ClosedEarly(Some(e))
            }
            _ => WireError::Io(e),
        });
    }
    let mut buf = BytesMut::with_capacity(READ_FIRST);
    let mut interim = 0;
    loop {
        if let Some(head) = parse_head(&mut buf)? {
            // An interim answer (103 Early Hints, a stray 100): the real one follows.
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(WireError::Malformed("too many interim (1xx) answers"));
                }
                continue;
            }
            return answer(wire, buf, head, method, home);
        }
        if buf.len() >= MAX_HEAD {
            return Err(WireError::Malformed("response head larger than 64 KiB"));
        }
        if buf.capacity() - buf.len() < READ_FIRST / 4 {
            buf.reserve(READ_FIRST);
        }
        let got = match tokio::io::AsyncReadExt::read_buf(&mut wire.tcp, &mut buf).await {
            Ok(got) => got,
            Err(e)
                if interim == 0 && buf.is_empty() && e.kind() == io::ErrorKind::ConnectionReset =>
            {
                return Err(WireError::ClosedEarly(Some(e)))
            }
            Err(e) => return Err(WireError::Io(e)),
        };
        if got == 0 {
            return Err(if interim == 0 && buf.is_empty() {
                WireError::ClosedEarly(None)
            } else {
                WireError::Malformed("connection closed in the middle of the response head")
            });
        }
    }
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// The head at the start of `buf`, taken out of it, or `None` while it is
/// incomplete. The field values are slices of the head's bytes, not copies.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, WireError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let used = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WireError::Malformed("more than 100 header fields"))
        }
        Err(_) => return Err(WireError::Malformed("not an HTTP/1 response head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(WireError::Malformed("bad status code"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Each name, and where its value is in the head.
    let at = buf.as_ptr() as usize;
    let mut named = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| WireError::Malformed("bad header name"))?;
        // (An empty value's slice may point anywhere: it is empty wherever it is.)
        let start = match field.value.is_empty() {
            true => 0,
            false => field.value.as_ptr() as usize - at,
        };
        named.push((name, start..start + field.value.len()));
    }
    let head = buf.split_to(used).freeze();
    let mut headers = HeaderMap::with_capacity(named.len());
    for (name, value) in named {
        let value = HeaderValue::from_maybe_shared(head.slice(value))
            .map_err(|_| WireError::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// The response for `head`, its body framed as RFC 9112 §6.3 says.
fn answer(
    wire: Wire,
    buf: BytesMut,
    head: Head,
    method: &Method,
    home: &Arc<Connections>,
) -> Result<Response<WireBody>, WireError> {
    let Head {
        status,
        version,
        mut headers,
    } = head;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(WireError::Malformed(
            "101 Switching Protocols to a request that asked for no upgrade",
        ));
    }
    let mut reusable =
        version == Version::HTTP_11 && !crate::headers::connection_has(&headers, "close");
    let framing = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if let Some(chunked) = last_field(&headers, &TRANSFER_ENCODING).map(ends_chunked) {
        if headers.remove(CONTENT_LENGTH).is_some() {
            // Both: the transfer coding wins, the length is not passed on, and the
            // connection cannot be trusted with another request (RFC 9112 §6.3,
            // item 3).
            reusable = false;
        }
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            reusable = false;
            Framing::Close
        }
    } else if headers.contains_key(CONTENT_LENGTH) {
        Framing::Length(content_length(&headers)?)
    } else {
        reusable = false;
        Framing::Close
    };
    let mut body = WireBody {
        wire: Some(wire),
        buf,
        framing,
        home: reusable.then(|| home.clone()),
    };
    body.end_if_done();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// The one `Content-Length` (several equal ones count as one); differing ones are an
/// answer no proxy may guess at (RFC 9112 §6.3, item 5).
fn content_length(headers: &HeaderMap) -> Result<u64, WireError> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                return Err(WireError::Malformed("bad Content-Length"));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(WireError::Malformed("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::Malformed("differing Content-Length values"));
            }
            length = Some(n);
        }
    }
    length.ok_or(WireError::Malformed("bad Content-Length"))
}

/// The last field of `name`, if there is any: where a list's last element is.
fn last_field<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .next_back()
        .map(|v| v.as_bytes())
}

/// Whether a `Transfer-Encoding` value's last coding is `chunked`.
fn ends_chunked(codings: &[u8]) -> bool {
    codings
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// How the rest of the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, at this point of a chunk.
    Chunked(Chunk),
    /// Until the server closes.
    Close,
    /// Read to its end.
    Done,
}

/// Where a chunked body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields (dropped: no hop here passes trailers
    /// on an HTTP/1 answer) up to the blank line.
    Trailers,
}

/// Longest chunk-size line accepted, with its extensions.
const MAX_CHUNK_LINE: usize = 4096;

/// An answer's body, read from the socket as it is polled.
pub struct WireBody {
    /// `None` once the body has ended (or failed).
    wire: Option<Wire>,
    /// Bytes read and not yet handed on.
    buf: BytesMut,
    framing: Framing,
    /// Where the connection goes when the body ends, if it may carry another request.
    home: Option<Arc<Connections>>,
}

impl WireBody {
    /// Ends the body when nothing is left: the connection goes home if it may.
    fn end_if_done(&mut self) {
        if self.framing == Framing::Length(0) {
            self.framing = Framing::Done;
        }
        if self.framing != Framing::Done {
            return;
        }
        let wire = self.wire.take();
        // Bytes past the answer are a server out of step: never reuse that.
        if let (Some(wire), Some(home), true) = (wire, self.home.take(), self.buf.is_empty()) {
            home.put_back_wire(wire);
        }
        self.buf = BytesMut::new();
    }

    /// Reads more bytes; `Ok(0)` at the server's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(wire) = self.wire.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if self.buf.capacity() - self.buf.len() < READ_FIRST / 4 {
            // A body handed on in whole reads: ask for more each time it filled up.
            let want = match self.framing {
                Framing::Length(left) => (left as usize).clamp(READ_FIRST, READ_MOST),
                _ => READ_MOST / 4,
            };
            self.buf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut wire.tcp), cx, &mut self.buf)
    }

    /// The next data frame, or `None` at the end, from what is in `buf` and what the
    /// socket gives.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, WireError>>> {
        loop {
            match self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !self.buf.is_empty() {
                        let take = self.buf.len().min(left.try_into().unwrap_or(usize::MAX));
                        let data = self.buf.split_to(take).freeze();
                        self.framing = Framing::Length(left - take as u64);
                        self.end_if_done();
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                Framing::Close => {
                    if !self.buf.is_empty() {
                        return Poll::Ready(Some(Ok(self.buf.split().freeze())));
                    }
                }
                Framing::Chunked(chunk) => {
                    if let Some(data) = self.step_chunk(chunk)? {
                        return Poll::Ready(Some(Ok(data)));
                    }
                    if self.framing == Framing::Done {
                        self.end_if_done();
                        return Poll::Ready(None);
                    }
                    if self.framing != Framing::Chunked(chunk) {
                        // A step was taken on what is buffered: try the next one.
                        continue;
                    }
                }
            }
            let got = ready!(self.poll_fill(cx))?;
            if got == 0 {
                if self.framing == Framing::Close {
                    self.framing = Framing::Done;
                    self.home = None;
                    self.end_if_done();
                    return Poll::Ready(None);
                }
                self.wire = None;
                return Poll::Ready(Some(Err(WireError::Malformed(
                    "connection closed in the middle of the body",
                ))));
            }
        }
    }

    /// One step of chunked decoding on what is buffered: a piece of data, or a move
    /// to the next state (`Ok(None)`, with `framing` changed), or nothing to do until
    /// more bytes come (`Ok(None)`, `framing` unchanged).
    fn step_chunk(&mut self, chunk: Chunk) -> Result<Option<Bytes>, WireError> {
        match chunk {
            Chunk::Size => {
                let Some(line) = self.line()? else {
                    return Ok(None);
                };
                // Hex digits, then optional whitespace and extensions (RFC 9112 §7.1).
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let rest = line[digits..].trim_ascii_start();
                if digits == 0 || digits > 15 || !(rest.is_empty() || rest[0] == b';') {
                    return Err(WireError::Malformed("bad chunk size"));
                }
                let size = line[..digits].iter().fold(0u64, |n, &b| {
                    n * 16 + u64::from((b as char).to_digit(16).unwrap_or_default())
                });
                self.framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(None)
            }
            Chunk::Data(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let take = self.buf.len().min(left.try_into().unwrap_or(usize::MAX));
                let data = self.buf.split_to(take).freeze();
                let left = left - take as u64;
                self.framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Ok(Some(data))
            }
            Chunk::DataEnd => {
                if self.buf.len() < 2 {
                    return Ok(None);
                }
                if &self.buf[..2] != b"\r\n" {
                    return Err(WireError::Malformed("chunk data not followed by CRLF"));
                }
                self.buf.advance(2);
                self.framing = Framing::Chunked(Chunk::Size);
                Ok(None)
            }
            Chunk::Trailers => {
                while let Some(line) = self.line()? {
                    if line.is_empty() {
                        self.framing = Framing::Done;
                        break;
                    }
                }
                Ok(None)
            }
        }
    }

    /// The next CRLF-ended line of `buf`, without its CRLF, taken out of `buf`.
    fn line(&mut self) -> Result<Option<Bytes>, WireError> {
        match self.buf.windows(2).position(|w| w == b"\r\n") {
            Some(end) => {
                let line = self.buf.split_to(end).freeze();
                self.buf.advance(2);
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_CHUNK_LINE => {
                Err(WireError::Malformed("chunk line too long"))
            }
            None => Ok(None),
        }
    }
}

impl http_body::Body for WireBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(self.poll_data(cx)) {
            Some(Ok(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Some(Err(e)) => {
                // A body that broke leaves the connection out of step: it is closed.
                self.wire = None;
                self.home = None;
                self.framing = Framing::Done;
                Poll::Ready(Some(Err(e.into())))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for WireBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireBody")
            .field("framing", &self.framing)
            .field("buffered", &self.buf.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;
    use std::net::SocketAddr;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A server that answers each request head it reads with the next of `answers`,
    /// each written in pieces of `piece` bytes (to cut heads, chunk lines and data in
    /// odd places), and closes after the last. Returns its address.
    async fn server(answers: Vec<&'static [u8]>, piece: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            'conns: while let Ok((mut s, _)) = listener.accept().await {
                let mut got = Vec::new();
                loop {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut buf = [0; 1024];
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            continue 'conns;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    got.drain(..end);
                    let Some(answer) = answers.next() else {
                        return;
                    };
                    for part in answer.chunks(piece) {
                        s.write_all(part).await.unwrap();
                        s.flush().await.unwrap();
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    if answers.len() == 0 {
                        // The last answer (one read until the close, maybe): close.
                        return;
                    }
                }
            }
        });
        addr
    }

    fn get(method: Method) -> Request<Body> {
        let mut req = Request::new(crate::empty());
        *req.method_mut() = method;
        *req.uri_mut() = "/a?b=c".parse().unwrap();
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("x"));
        req
    }

    /// A GET on a new socket to `home`'s server: its answer, body unread.
    async fn fresh_get(home: &Arc<Connections>) -> Response<WireBody> {
        let req = get(Method::GET);
        let wire = home
            .connect_wire(std::time::Duration::from_secs(1))
            .await
            .unwrap();
        send(wire, &encode(&req), req.method(), home).await.unwrap()
    }

    /// Sends one request on a kept socket (or a new one), returns status, body, and
    /// whether the socket went back to the idle list.
    async fn ask(
        home: &Arc<Connections>,
        method: Method,
    ) -> Result<(StatusCode, Bytes, bool), BoxError> {
        let req = get(method);
        let wire = match home.take_wire(false) {
            Some(wire) => wire,
            None => home
                .connect_wire(std::time::Duration::from_secs(1))
                .await
                .unwrap(),
        };
        let resp = send(wire, &encode(&req), req.method(), home).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let kept = match home.take_wire(false) {
            Some(wire) => {
                home.put_back_wire(wire);
                true
            }
            None => false,
        };
        Ok((status, body, kept))
    }

    #[test]
    fn the_request_head_is_written_in_origin_form() {
        let head = encode(&get(Method::GET));
        assert_eq!(head, b"GET /a?b=c HTTP/1.1\r\nhost: x\r\n\r\n");
    }

    #[tokio::test]
    async fn answers_are_framed_as_rfc_9112_says_in_any_pieces() {
        for piece in [1, 3, 1000] {
            let addr = server(
                vec![
                    b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 5\r\n\r\nhello",
                    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n",
                    b"HTTP/1.1 204 No Content\r\n\r\n",
                    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
                ],
                piece,
            )
            .await;
            let home = Arc::new(Connections::new(addr));
            let (status, body, kept) = ask(&home, Method::GET).await.unwrap();
            assert_eq!(
                (status.as_u16(), &body[..], kept),
                (200, &b"hello"[..], true)
            );
            let (status, body, kept) = ask(&home, Method::GET).await.unwrap();
            assert_eq!(
                (status.as_u16(), &body[..], kept),
                (200, &b"abc0123456789abcdef"[..], true),
                "piece {piece}"
            );
            let (status, body, kept) = ask(&home, Method::GET).await.unwrap();
            assert_eq!((status.as_u16(), &body[..], kept), (204, &b""[..], true));
            let (status, body, kept) = ask(&home, Method::GET).await.unwrap();
            assert_eq!((status.as_u16(), &body[..], kept), (304, &b""[..], true));
            let (status, body, kept) = ask(&home, Method::HEAD).await.unwrap();
            assert_eq!((status.as_u16(), &body[..], kept), (200, &b""[..], true));
            // No length: read until the close, and the socket is not kept.
            let (status, body, kept) = ask(&home, Method::GET).await.unwrap();
            assert_eq!(
                (status.as_u16(), &body[..], kept),
                (200, &b"until the close"[..], false)
            );
        }
    }

    #[tokio::test]
    async fn header_fields_come_through_as_sent() {
        let addr = server(
            vec![b"HTTP/1.1 201 Created\r\nX-Empty:\r\nX-A: one\r\nx-a: two, three\r\nServer: s\r\nContent-Length: 0\r\n\r\n"],
            7,
        )
        .await;
        let home = Arc::new(Connections::new(addr));
        let resp = fresh_get(&home).await;
        assert_eq!(resp.status(), 201);
        let h = resp.headers();
        assert_eq!(h["x-empty"], "");
        let a: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(a, ["one", "two, three"]);
        assert_eq!(h["server"], "s");
        assert!(resp.body().is_end_stream());
    }

    #[tokio::test]
    async fn a_length_beside_a_transfer_coding_is_not_passed_on() {
        let addr = server(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
            1000,
        )
        .await;
        let home = Arc::new(Connections::new(addr));
        let resp = fresh_get(&home).await;
        assert!(!resp.headers().contains_key(CONTENT_LENGTH));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn a_socket_is_kept_only_when_the_answer_allows_it() {
        let addr = server(
            vec![
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            ],
            1000,
        )
        .await;
        let home = Arc::new(Connections::new(addr));
        for _ in 0..4 {
            let (status, body, kept) = ask(&home, Method::GET).await.unwrap();
            assert_eq!((status.as_u16(), &body[..], kept), (200, &b"ok"[..], false));
        }
    }

    #[tokio::test]
    async fn broken_answers_are_errors_not_guesses() {
        let cases: [(&'static [u8], &str); 9] = [
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1 response head"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
                "differing Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                "middle of the body",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX",
                "not followed by CRLF",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                "asked for no upgrade",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n",
                "too many interim",
            ),
        ];
        for (answer, expected) in cases {
            let addr = server(vec![answer], 1000).await;
            let home = Arc::new(Connections::new(addr));
            let err = ask(&home, Method::GET).await.unwrap_err();
            assert!(err.to_string().contains(expected), "{err} for {answer:?}");
        }
        // A head that never ends is cut off at 64 KiB.
        let huge: &'static [u8] = Box::leak(
            [&b"HTTP/1.1 200 OK\r\nX: "[..], &b"y".repeat(100_000)]
                .concat()
                .into_boxed_slice(),
        );
        let addr = server(vec![huge], 64 * 1024).await;
        let home = Arc::new(Connections::new(addr));
        let err = ask(&home, Method::GET).await.unwrap_err();
        assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
    }

    #[tokio::test]
    async fn bytes_after_an_answer_end_the_socket_they_came_on() {
        // The first answer, then (a write later, once the socket is back in the idle
        // list) a second one nobody asked for: the next request must not take it.
        let first: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let stray: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil";
        let addr = server(vec![[first, stray].concat().leak()], first.len()).await;
        let home = Arc::new(Connections::new(addr));
        let resp = fresh_get(&home).await;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(
            home.take_wire(false).is_none(),
            "the stray answer's socket was kept"
        );
    }

    #[tokio::test]
    async fn a_request_that_may_not_be_repeated_asks_the_socket_itself() {
        // A server on a thread of its own: the first answer, then (when told) bytes
        // nobody asked for. Waited for without an `.await`, they reach the socket
        // while the runtime takes no look at its events, so its readiness cannot
        // know of them: only a peek finds them.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stray, send_stray) = std::sync::mpsc::channel::<()>();
        let (sent, stray_sent) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            send_stray.recv().unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
                .unwrap();
            sent.send(()).unwrap();
            let _ = s.read(&mut buf);
        });
        let home = Arc::new(Connections::new(addr));
        fresh_get(&home).await.into_body().collect().await.unwrap();
        stray.send(()).unwrap();
        stray_sent.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            home.take_wire(true).is_none(),
            "a socket with bytes nobody asked for was taken for a POST"
        );
    }

    #[tokio::test]
    async fn idle_sockets_the_server_closed_are_let_go_within_a_second_or_so() {
        // Each connection gets one answer and stays open until `close`.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closing) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut closing = closing.clone();
                tokio::spawn(async move {
                    let mut buf = [0; 1024];
                    let _ = s.read(&mut buf).await;
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    s.write_all(answer).await.unwrap();
                    let _ = closing.wait_for(|c| *c).await;
                });
            }
        });
        // Three answers on three sockets at once: three kept.
        let home = Arc::new(Connections::new(addr));
        let answers = futures_util::future::join_all((0..3).map(|_| fresh_get(&home))).await;
        for resp in answers {
            resp.into_body().collect().await.unwrap();
        }
        assert_eq!(home.idle_wires(), 3);
        // The server closes them while idle; a second on, the next socket put back
        // has the three closed ones dropped (no request took them).
        close.send(true).unwrap();
        tokio::time::sleep(crate::keepalive::SWEEP_EVERY).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        fresh_get(&home).await.into_body().collect().await.unwrap();
        assert_eq!(home.idle_wires(), 1);
    }

    #[tokio::test]
    async fn a_socket_closed_before_any_answer_says_so() {
        // The server takes the request and hangs up: the caller may send a repeatable
        // request again, and knows nothing was answered.
        let addr = server(vec![], 1000).await;
        let home = Arc::new(Connections::new(addr));
        let err = ask(&home, Method::GET).await.unwrap_err();
        let err = err.downcast::<WireError>().unwrap();
        assert!(matches!(*err, WireError::ClosedEarly(_)), "{err}");
    }
}
