//! Response bodies: whole files and ranges read into memory when small, streamed in
//! chunks when large, multipart pieces, and the small response helpers.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use net::sendfile::{self, Outbox};

use super::{Content, Request};

/// Bodies up to this size (one [`CHUNK`]) are read into memory before the response is
/// returned, so a read error still becomes a clean 500. Anything larger is streamed a
/// chunk at a time: a download then holds one chunk, not a heap copy of the file (a
/// 1 MiB limit here made 64 downloads of a 1 MiB file cost over 100 MB).
pub(super) const READ_NOW_MAX: u64 = CHUNK as u64;

/// How much of a streamed file is read at once: what one download holds while it is
/// written out. 1 MiB files, 64 clients (3 alternating rounds): 256 KiB served 5-18%
/// more than 128 KiB for 1 MB more peak RSS; 512 KiB was not clearly better, and a
/// slow client holds a whole chunk, so the bound stays at 256 KiB.
pub(super) const CHUNK: usize = 256 * 1024;

/// One piece of a response body: literal bytes (multipart headers) or a slice of the file.
#[derive(Debug)]
pub(super) enum Segment {
    Bytes(Bytes),
    File { start: u64, len: u64 },
}

/// A body made of `segments`, and its length.
///
/// Small bodies are read now (a failed read can still become a 500); large ones are
/// streamed from the open file: sent by `sendfile` when the request came with its
/// connection's [`Outbox`], else in [`CHUNK`]-sized reads.
pub(super) fn file_body(
    content: Content,
    segments: Vec<Segment>,
    req: &Request,
) -> io::Result<Payload> {
    let total = segments.iter().map(segment_len).sum();
    if req.head {
        return Ok(Payload::empty(total));
    }
    let file = match content {
        Content::File(file) => file,
        Content::Memory(bytes) => {
            return Ok(Payload::new(memory_segments(&bytes, &segments)?, false))
        }
    };
    if total <= READ_NOW_MAX {
        return Ok(Payload::new(read_segments(&file, &segments)?, false));
    }
    let state = Streamer {
        file,
        segments: segments.into(),
        outbox: req.outbox.clone(),
        standing: 0,
    };
    let stream = futures_util::stream::try_unfold(state, Streamer::next)
        .map_ok(Frame::data)
        .map_err(|e| Box::new(e) as net::BoxError);
    Ok(Payload {
        body: StreamBody::new(stream).boxed_unsync(),
        len: total,
    })
}

fn segment_len(segment: &Segment) -> u64 {
    match segment {
        Segment::Bytes(bytes) => bytes.len() as u64,
        Segment::File { len, .. } => *len,
    }
}

/// Reads `segments` of `file` into one buffer. Errors if the file turned out shorter
/// than its metadata said (it changed while being served): a short body under a longer
/// `Content-Length` would hang or corrupt the client.
pub(super) fn read_segments(file: &File, segments: &[Segment]) -> io::Result<Bytes> {
    let total: u64 = segments.iter().map(segment_len).sum();
    let mut buf = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for segment in segments {
        match segment {
            Segment::Bytes(bytes) => buf.extend_from_slice(bytes),
            Segment::File { start, len } => buf.extend_from_slice(&read_at(file, *start, *len)?),
        }
    }
    Ok(buf.into())
}

/// [`read_segments`] for a body already in memory; a whole-body segment is shared,
/// not copied.
pub(super) fn memory_segments(bytes: &Bytes, segments: &[Segment]) -> io::Result<Bytes> {
    let slice = |start: u64, len: u64| {
        let start = usize::try_from(start).map_err(|_| shrank())?;
        let end = start
            .checked_add(usize::try_from(len).map_err(|_| shrank())?)
            .filter(|end| *end <= bytes.len())
            .ok_or_else(shrank)?;
        Ok::<_, io::Error>(bytes.slice(start..end))
    };
    if let [Segment::File { start, len }] = segments {
        return slice(*start, *len);
    }
    let mut buf = Vec::with_capacity(segments.iter().map(segment_len).sum::<u64>() as usize);
    for segment in segments {
        match segment {
            Segment::Bytes(part) => buf.extend_from_slice(part),
            Segment::File { start, len } => buf.extend_from_slice(&slice(*start, *len)?),
        }
    }
    Ok(buf.into())
}

/// The first `len` bytes of `file`; an error if the file is shorter now.
pub(super) fn read_whole(file: &File, len: u64) -> io::Result<Bytes> {
    read_at(file, 0, len).map(Bytes::from)
}

/// `len` bytes of `file` from `start`, read at that offset (the file's own position
/// is shared, see [`Content`]); an error if the file is shorter now.
fn read_at(file: &File, start: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; usize::try_from(len).map_err(|_| shrank())?];
    file.read_exact_at(&mut buf, start).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            shrank()
        } else {
            e
        }
    })?;
    Ok(buf)
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "file became shorter while it was being served",
    )
}

/// State of a streamed body: the file and what is left to send.
struct Streamer {
    /// The open file (shared with the outbox while it sends from it, and with other
    /// downloads when the open-file cache keeps it).
    file: Arc<File>,
    /// What is left to send, in order; a partly sent slice is put back shortened.
    segments: VecDeque<Segment>,
    /// The connection's, when file slices go out by `sendfile` as stand-ins.
    outbox: Option<Outbox>,
    /// Stand-in bytes still to give for the slice last announced to the outbox.
    standing: u64,
}

impl Streamer {
    /// The next chunk of the body, or `None` at the end.
    ///
    /// The read is a plain `read` on this worker thread, as nginx reads (its default
    /// `aio off`): a served file is nearly always in the page cache, where a 256 KiB
    /// read is a memcpy of some microseconds. tokio's `File` instead hands each read to
    /// the blocking pool and copies it twice (into its own buffer, then into ours);
    /// with this change 1 MiB downloads went from 0.45 to 0.66 of nginx's rate.
    ///
    /// With an outbox, a file slice is announced to it and given as stand-ins (see
    /// [`net::sendfile`]): the socket sends it from the page cache, and nothing is
    /// read here.
    async fn next(mut self) -> io::Result<Option<(Bytes, Self)>> {
        while self.standing == 0 {
            let Some(segment) = self.segments.pop_front() else {
                return Ok(None);
            };
            let (start, len) = match segment {
                Segment::Bytes(bytes) => return Ok(Some((bytes, self))),
                Segment::File { start, len } => (start, len),
            };
            let Some(outbox) = &self.outbox else {
                return self.read(start, len).map(|chunk| Some((chunk, self)));
            };
            outbox.announce(&self.file, start, len);
            self.standing = len;
        }
        let n = self.standing.min(sendfile::STAND_IN_MAX as u64);
        self.standing -= n;
        Ok(Some((sendfile::stand_in(n as usize), self)))
    }

    /// Reads the next chunk of the file slice `start..start + len`; what is left of
    /// it goes back to the front of the segments.
    fn read(&mut self, start: u64, len: u64) -> io::Result<Bytes> {
        let read = len.min(CHUNK as u64);
        let buf = read_at(&self.file, start, read)?;
        if read < len {
            self.segments.push_front(Segment::File {
                start: start + read,
                len: len - read,
            });
        }
        Ok(buf.into())
    }
}

/// A body and the length its `Content-Length` must announce (for HEAD, the length GET
/// would send).
pub(super) struct Payload {
    /// What is sent (empty for HEAD).
    body: net::Body,
    /// The `Content-Length` to announce.
    len: u64,
}

impl Payload {
    pub(super) fn new(bytes: Bytes, head: bool) -> Self {
        if head {
            Self::empty(bytes.len() as u64)
        } else {
            Self {
                len: bytes.len() as u64,
                body: net::full(bytes),
            }
        }
    }

    fn empty(len: u64) -> Self {
        Self {
            body: net::empty(),
            len,
        }
    }

    pub(super) fn respond(self, status: StatusCode, headers: HeaderMap) -> Response<net::Body> {
        respond(status, headers, self.body, Some(self.len))
    }
}

/// A response with `headers`; `len` becomes `Content-Length` (`None` for a 304, which
/// announces no body).
pub(super) fn respond(
    status: StatusCode,
    headers: HeaderMap,
    body: net::Body,
    len: Option<u64>,
) -> Response<net::Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    if let Some(len) = len {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    response
}

/// Adds `headers` to a finished response (validators on a 412 or 416).
pub(super) fn with_headers(
    mut response: Response<net::Body>,
    headers: HeaderMap,
) -> Response<net::Body> {
    response.headers_mut().extend(headers);
    response
}

/// A short plain-text page for an error or other bodiless status.
pub(super) fn status_page(status: StatusCode, head: bool) -> Response<net::Body> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Payload::new(Bytes::from(text), head).respond(status, headers)
}
