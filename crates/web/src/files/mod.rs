//! Static files, served the way nginx serves them.
//!
//! The web tier answers every path it has a file for and hands the rest to the
//! application (nginx's `try_files $uri @app`), so [`StaticFiles::serve`] returns either
//! a finished response or [`Outcome::NotFound`]. Everything nginx does for a static file
//! is here: path normalisation that refuses to climb out of the root, index files and
//! the trailing-slash redirect, validators and conditional requests, byte ranges
//! (multipart included), precompressed siblings and on-the-fly gzip.
//!
//! All file-system work for one request runs in a single `spawn_blocking` call: one
//! hop to the blocking pool instead of one per `stat`/`open`/`read` keeps small files
//! cheap, and it is where on-the-fly compression belongs anyway. Only bodies larger
//! than `READ_NOW_MAX` (one chunk) leave that call as a stream, read in `CHUNK`-sized
//! pieces, so a large download never sits in memory whole.
//!
//! Hot files skip even that hop: like nginx's `open_file_cache`, a file of up to
//! `CACHE_FILE_MAX` bytes is kept in memory after it was served, with its validators,
//! header values and precompressed siblings, keyed by request path; a larger one that
//! is not compressible is kept as its open descriptor with its validators.
//! For `FILE_CACHE_TTL` after it was read, requests for that path are answered from
//! memory on the calling task, through the same decisions (preconditions, ranges,
//! content coding); after that the next request takes the file-system path again and
//! refreshes the entry, so an edit on disk is served within `FILE_CACHE_TTL`.
//!
//! The pieces live in submodules along the way a request goes through: `path` (the
//! request path normalised and resolved on disk without leaving the root), `cache` (the
//! open-file cache), `conditional` (validators and preconditions), `range` (the `Range`
//! header), `compress` (content coding, precompressed siblings, gzip on the fly) and
//! `body` (reading or streaming the bytes, response helpers). This module ties them
//! together: [`StaticFiles::serve`] and the decisions of one response.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use net::sendfile::Outbox;

use body::{file_body, respond, status_page, with_headers, Payload, Segment};
use cache::{FileCache, Siblings};
use compress::{Coding, GzipCache, COMPRESS_MIN_LEN};
use conditional::{if_range_holds, preconditions, Precondition};
use path::{Found, RelPath};
use range::{parse_range, satisfiable, MAX_RANGES};

mod body;
mod cache;
mod compress;
mod conditional;
mod path;
/// The `Range` parser, public only so that the property tests (`tests/prop_range.rs`)
/// can drive it directly with millions of headers; not part of the web server's API.
#[doc(hidden)]
pub mod range;

/// What the static-file handler decided about one request.
#[derive(Debug)]
pub enum Outcome {
    /// A finished response: the file, a 304/206/416, a redirect or an error page.
    Response(Response<net::Body>),
    /// There is no file for this request here; the caller should pass it on to the
    /// application (nginx `try_files $uri @app`). Also returned for methods other
    /// than GET and HEAD, which static files never answer.
    NotFound,
}

/// Knobs of the static-file handler; [`Options::default`] behaves like a stock nginx
/// `location /` with `root`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The file served for a request that ends in `/` (nginx `index`).
    pub index: String,
    /// Sent as `Cache-Control` on every file response, 304s included, so browsers and
    /// CDNs can keep assets; `None` sends no `Cache-Control`, like nginx without
    /// `expires`.
    pub cache_control: Option<HeaderValue>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            index: "index.html".to_owned(),
            cache_control: None,
        }
    }
}

/// Serves the files below one root directory.
///
/// Cheap to clone: clones share the root, the options and the gzip cache.
#[derive(Debug, Clone)]
pub struct StaticFiles {
    /// Shared with the blocking task that does the file-system work of each request.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The document root, canonicalised once so every resolved path can be checked to
    /// lie below it by a plain prefix test.
    root: PathBuf,
    /// What the operator configured.
    options: Options,
    /// Gzipped bodies of files compressed on the fly, so a popular stylesheet is
    /// compressed once rather than on every request.
    gzip_cache: Mutex<GzipCache>,
    /// Small files recently resolved and read, keyed by request path.
    file_cache: Mutex<FileCache>,
}

impl StaticFiles {
    /// Serves the files below `root` with default [`Options`].
    ///
    /// Fails when `root` does not exist or is not a directory; the error names the path.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        Self::with_options(root, Options::default())
    }

    /// Serves the files below `root` with the given options.
    pub fn with_options(root: impl Into<PathBuf>, options: Options) -> io::Result<Self> {
        let given = root.into();
        let root = fs::canonicalize(&given).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "static root {} cannot be used: {e}; create the directory or point the \
                     site file's static root at an existing one",
                    given.display()
                ),
            )
        })?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "static root {} is not a directory; point the site file's static root at \
                     the directory holding the site's files",
                    given.display()
                ),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                options,
                gzip_cache: Mutex::new(GzipCache::default()),
                file_cache: Mutex::new(FileCache::default()),
            }),
        })
    }

    /// What to do with this request: a finished response, or [`Outcome::NotFound`] so
    /// the caller can proxy it to the application. `outbox`: the connection's, when
    /// it can send a large file by `sendfile` (plain HTTP/1, see [`net::sendfile`]).
    pub async fn serve(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        outbox: Option<&Outbox>,
    ) -> Outcome {
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Outcome::NotFound,
        };
        let path = match RelPath::parse(uri.path()) {
            Ok(path) => path,
            Err(status) => return Outcome::Response(status_page(status, head)),
        };
        let request = Request {
            head,
            path,
            query: uri.query().map(str::to_owned),
            if_match: list_header(headers, &header::IF_MATCH),
            if_none_match: list_header(headers, &header::IF_NONE_MATCH),
            if_modified_since: date_header(headers, &header::IF_MODIFIED_SINCE),
            if_unmodified_since: date_header(headers, &header::IF_UNMODIFIED_SINCE),
            range: single_header(headers, &header::RANGE),
            if_range: single_header(headers, &header::IF_RANGE),
            accept_encoding: list_header(headers, &header::ACCEPT_ENCODING),
            outbox: outbox.cloned(),
        };
        // A file resolved less than FILE_CACHE_TTL ago is answered from the cache:
        // the same decisions, without the file-system work. Only on-the-fly
        // compression that is not cached yet sends it the slow way.
        if let Some(resource) = self.inner.cached(&request.path) {
            if let Ok(outcome) = self.inner.represent(&request, resource, false) {
                return outcome;
            }
        }
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || inner.respond(&request)).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(path = uri.path(), error = %e, "static file task failed");
                Outcome::Response(status_page(StatusCode::INTERNAL_SERVER_ERROR, head))
            }
        }
    }
}

/// The parts of a request the file-system side needs, owned so they can move into the
/// blocking task.
struct Request {
    /// HEAD: same headers as GET, no body.
    head: bool,
    /// The decoded, normalised path below the root.
    path: RelPath,
    /// Kept for the trailing-slash redirect.
    query: Option<String>,
    /// Preconditions (RFC 9110 §13): `If-Match`/`If-Unmodified-Since` guard against
    /// acting on a changed file (412), `If-None-Match`/`If-Modified-Since` let caches
    /// revalidate (304). Lists are joined across repeated header lines; an unparsable
    /// date is `None`, which the RFC says to treat as absent.
    if_match: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<SystemTime>,
    if_unmodified_since: Option<SystemTime>,
    /// `Range` and its guard `If-Range`, for resumed downloads and media seeking.
    range: Option<String>,
    if_range: Option<String>,
    /// Which content codings the client can decode.
    accept_encoding: Option<String>,
    /// Where a streamed body's file ranges go by `sendfile`, if they can.
    outbox: Option<Outbox>,
}

/// A file about to be served, with everything its headers need.
struct Resource {
    /// Canonical path: where siblings are looked for, the gzip cache key, log context.
    path: Arc<Path>,
    /// Where the body is read from.
    content: Content,
    /// Length in bytes, as announced in `Content-Length` and `Content-Range`.
    len: u64,
    /// Modification time as the file system reports it, for comparing with siblings.
    modified_exact: SystemTime,
    /// Modification time truncated to whole seconds, as HTTP dates carry it.
    modified: SystemTime,
    /// The opaque part of the ETag, nginx style: `<mtime-hex>-<len-hex>`.
    tag: Arc<str>,
    /// The `ETag` header for the identity body, and for a compressed one (weak).
    etag: HeaderValue,
    weak_etag: HeaderValue,
    /// The `Last-Modified` header.
    last_modified: HeaderValue,
    /// The `Content-Type` value.
    mime: &'static str,
    /// Text-like content that shrinks under gzip (images and fonts do not).
    compressible: bool,
    /// The precompressed siblings, when already read (cached files); `None` means
    /// look for them on disk.
    siblings: Option<Arc<Siblings>>,
}

/// Where a body comes from: an open file, or the bytes of a cached one.
///
/// The file is shared (a large file's descriptor is kept by the open-file cache and
/// used by every download of it at once), so it is only ever read at an offset,
/// never through its own position.
enum Content {
    File(Arc<File>),
    Memory(Bytes),
}

/// An IO error and the file it happened on, so the log line says which file.
struct Failure {
    /// The file the error happened on.
    path: PathBuf,
    /// Decides the status: not found, forbidden, or internal error.
    error: io::Error,
}

trait At<T> {
    fn at(self, path: &Path) -> Result<T, Failure>;
}

impl<T> At<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, Failure> {
        self.map_err(|error| Failure {
            path: path.to_owned(),
            error,
        })
    }
}

impl Inner {
    /// Answers one request; runs on the blocking pool.
    fn respond(&self, req: &Request) -> Outcome {
        match self.try_respond(req) {
            Ok(outcome) => outcome,
            Err(Failure { path, error }) => match error.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Outcome::NotFound,
                io::ErrorKind::PermissionDenied => {
                    tracing::warn!(path = %path.display(), "static file not readable: permission denied");
                    Outcome::Response(status_page(StatusCode::FORBIDDEN, req.head))
                }
                _ => {
                    tracing::error!(path = %path.display(), %error, "static file could not be read");
                    Outcome::Response(status_page(StatusCode::INTERNAL_SERVER_ERROR, req.head))
                }
            },
        }
    }

    fn try_respond(&self, req: &Request) -> Result<Outcome, Failure> {
        if req.path.impossible() {
            return Ok(Outcome::NotFound);
        }
        let mut path = self.root.clone();
        path.extend(&req.path.parts);
        let (path, file, meta) = match self.find(&path)? {
            Found::Refused => {
                return Ok(Outcome::Response(status_page(
                    StatusCode::NOT_FOUND,
                    req.head,
                )))
            }
            Found::File { .. } if req.path.dir => return Ok(Outcome::NotFound),
            Found::File { path, file, meta } => (path, file, meta),
            Found::Dir(_) if !req.path.dir => return Ok(redirect(req)),
            Found::Dir(dir) => match self.find(&dir.join(&self.options.index))? {
                Found::File { path, file, meta } => (path, file, meta),
                Found::Dir(_) => return Ok(Outcome::NotFound),
                Found::Refused => {
                    return Ok(Outcome::Response(status_page(
                        StatusCode::NOT_FOUND,
                        req.head,
                    )))
                }
            },
        };
        let modified_exact = meta.modified().unwrap_or(UNIX_EPOCH);
        let seconds = modified_exact
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let (mime, compressible) = mime_for(&path);
        let tag = format!("{seconds:x}-{:x}", meta.len());
        let modified = UNIX_EPOCH + Duration::from_secs(seconds);
        let resource = Resource {
            etag: ascii(format!("\"{tag}\"")),
            weak_etag: ascii(format!("W/\"{tag}\"")),
            last_modified: ascii(httpdate::fmt_http_date(modified)),
            tag: tag.into(),
            len: meta.len(),
            modified,
            modified_exact,
            mime,
            compressible,
            path: path.into(),
            content: Content::File(Arc::new(file)),
            siblings: None,
        };
        let resource = self.remember(req, resource);
        self.represent(req, resource, true)
    }

    /// Builds the response for a file that exists: validators, preconditions, ranges,
    /// content coding.
    ///
    /// `blocking` says whether this runs on the blocking pool; when it does not, a
    /// body that would have to be compressed now is an error (`WouldBlock`) and the
    /// caller retries there.
    fn represent(
        &self,
        req: &Request,
        mut res: Resource,
        blocking: bool,
    ) -> Result<Outcome, Failure> {
        // Range is defined for GET only (RFC 9110 §14.2); a failed If-Range means
        // "send me the whole new file".
        let ranges = req
            .range
            .as_deref()
            .filter(|_| !req.head)
            .and_then(parse_range)
            .filter(|_| {
                req.if_range
                    .as_deref()
                    .is_none_or(|v| if_range_holds(v, &res))
            });

        let coding = if ranges.is_some() || !res.compressible || res.len < COMPRESS_MIN_LEN {
            Coding::Identity
        } else {
            self.negotiate(req, &res)
        };
        let weak = !matches!(coding, Coding::Identity);

        let mut headers = HeaderMap::new();
        let etag = if weak { &res.weak_etag } else { &res.etag };
        headers.insert(header::ETAG, etag.clone());
        headers.insert(header::LAST_MODIFIED, res.last_modified.clone());
        if let Some(cache_control) = &self.options.cache_control {
            headers.insert(header::CACHE_CONTROL, cache_control.clone());
        }
        if res.compressible {
            headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }

        match preconditions(req, &res, weak) {
            Precondition::Proceed => {}
            Precondition::NotModified => {
                return Ok(Outcome::Response(respond(
                    StatusCode::NOT_MODIFIED,
                    headers,
                    net::empty(),
                    None,
                )));
            }
            Precondition::Failed => {
                return Ok(Outcome::Response(with_headers(
                    status_page(StatusCode::PRECONDITION_FAILED, req.head),
                    headers,
                )));
            }
        }

        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

        if let Some(specs) = ranges {
            let ranges = satisfiable(&specs, res.len);
            if ranges.is_empty() {
                headers.insert(header::CONTENT_RANGE, ascii(format!("bytes */{}", res.len)));
                return Ok(Outcome::Response(with_headers(
                    status_page(StatusCode::RANGE_NOT_SATISFIABLE, req.head),
                    headers,
                )));
            }
            if ranges.len() == 1 {
                let (start, end) = ranges[0];
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(res.mime));
                headers.insert(
                    header::CONTENT_RANGE,
                    ascii(format!("bytes {start}-{end}/{}", res.len)),
                );
                let segments = vec![Segment::File {
                    start,
                    len: end - start + 1,
                }];
                let body = file_body(res.content, segments, req).at(&res.path)?;
                return Ok(Outcome::Response(
                    body.respond(StatusCode::PARTIAL_CONTENT, headers),
                ));
            }
            // Beyond MAX_RANGES parts, fall through and send the whole file.
            if ranges.len() <= MAX_RANGES {
                let boundary = format!("{:016x}", rand::random::<u64>());
                let mut segments = Vec::with_capacity(ranges.len() * 2 + 1);
                for (start, end) in ranges {
                    let part = format!(
                        "\r\n--{boundary}\r\nContent-Type: {}\r\nContent-Range: bytes {start}-{end}/{}\r\n\r\n",
                        res.mime, res.len
                    );
                    segments.push(Segment::Bytes(part.into()));
                    segments.push(Segment::File {
                        start,
                        len: end - start + 1,
                    });
                }
                segments.push(Segment::Bytes(format!("\r\n--{boundary}--\r\n").into()));
                headers.insert(
                    header::CONTENT_TYPE,
                    ascii(format!("multipart/byteranges; boundary={boundary}")),
                );
                let body = file_body(res.content, segments, req).at(&res.path)?;
                return Ok(Outcome::Response(
                    body.respond(StatusCode::PARTIAL_CONTENT, headers),
                ));
            }
        }

        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(res.mime));
        let body = match coding {
            Coding::Identity => file_body(
                res.content,
                vec![Segment::File {
                    start: 0,
                    len: res.len,
                }],
                req,
            )
            .at(&res.path)?,
            Coding::Precompressed {
                encoding,
                content,
                len,
            } => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
                file_body(content, vec![Segment::File { start: 0, len }], req).at(&res.path)?
            }
            Coding::Gzip => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                let gzipped = self.gzip(&mut res, blocking).at(&res.path)?;
                Payload::new(gzipped, req.head)
            }
        };
        Ok(Outcome::Response(body.respond(StatusCode::OK, headers)))
    }
}

/// 301 to the directory's URL with a trailing slash, so relative links in its index
/// resolve inside it. Built from the normalised path, so `//evil.example` cannot turn
/// into a protocol-relative redirect.
fn redirect(req: &Request) -> Outcome {
    let location = req.path.directory_location(req.query.as_deref());
    let Ok(location) = HeaderValue::try_from(location) else {
        return Outcome::Response(status_page(StatusCode::BAD_REQUEST, req.head));
    };
    let mut response = status_page(StatusCode::MOVED_PERMANENTLY, req.head);
    response.headers_mut().insert(header::LOCATION, location);
    Outcome::Response(response)
}

/// A header value we built from ASCII (hex digits, dates, numbers).
fn ascii(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("values built from ASCII digits and dates are valid headers")
}

/// All values of a list-valued header, joined as one list; values that are not
/// visible ASCII are skipped (they cannot hold a valid list element).
fn list_header(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut joined: Option<String> = None;
    for value in headers.get_all(name) {
        let Ok(value) = value.to_str() else { continue };
        match &mut joined {
            Some(list) => {
                list.push_str(", ");
                list.push_str(value);
            }
            None => joined = Some(value.to_owned()),
        }
    }
    joined
}

/// The value of a header that may appear only once; repeated or non-ASCII values are
/// invalid, and an invalid header is ignored.
fn single_header(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok().map(str::to_owned)
}

/// An HTTP-date header; an unparsable date is ignored (RFC 9110 §13.1.3).
fn date_header(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(&single_header(headers, name)?).ok()
}

/// The `Content-Type` for a file and whether it is worth compressing. Text types say
/// their charset so browsers don't guess; images, fonts and media are already compressed.
fn mime_for(path: &Path) -> (&'static str, bool) {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref().unwrap_or("") {
        "html" | "htm" => ("text/html; charset=utf-8", true),
        "css" => ("text/css; charset=utf-8", true),
        "js" | "mjs" => ("text/javascript; charset=utf-8", true),
        "txt" => ("text/plain; charset=utf-8", true),
        "json" | "map" => ("application/json", true),
        "xml" => ("application/xml", true),
        "svg" => ("image/svg+xml", true),
        "png" => ("image/png", false),
        "jpg" | "jpeg" => ("image/jpeg", false),
        "gif" => ("image/gif", false),
        "webp" => ("image/webp", false),
        "avif" => ("image/avif", false),
        "ico" => ("image/x-icon", false),
        "woff" => ("font/woff", false),
        "woff2" => ("font/woff2", false),
        "wasm" => ("application/wasm", false),
        "pdf" => ("application/pdf", false),
        "mp4" => ("video/mp4", false),
        "webm" => ("video/webm", false),
        _ => ("application/octet-stream", false),
    }
}

#[cfg(test)]
mod tests;
