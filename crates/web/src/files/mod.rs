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
//! than `IN_MEMORY_MAX` leave that call as a stream, read in `CHUNK`-sized pieces,
//! so a large download never sits in memory whole.
//!
//! Small files skip even that hop while they are hot: like nginx's `open_file_cache`,
//! a file of up to `CACHE_FILE_MAX` bytes is kept in memory after it was served, with
//! its validators, header values and precompressed siblings, keyed by request path.
//! For `FILE_CACHE_TTL` after it was read, requests for that path are answered from
//! memory on the calling task, through the same decisions (preconditions, ranges,
//! content coding); after that the next request takes the file-system path again and
//! refreshes the entry, so an edit on disk is served within `FILE_CACHE_TTL`.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use flate2::{write::GzEncoder, Compression};
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Files smaller than this are never compressed: the gzip header and the
/// `Content-Encoding` line eat most of what could be saved (nginx's `gzip_min_length`
/// is in the same spirit).
const COMPRESS_MIN_LEN: u64 = 256;

/// Bodies up to this size are read into memory before the response is returned (so a
/// read error still becomes a clean 500), and files up to this size may be gzipped on
/// the fly. Anything larger is streamed.
const IN_MEMORY_MAX: u64 = 1 << 20;

/// How much of a streamed file is read at once: bounds the memory one download holds
/// while keeping the number of trips to the blocking pool low.
const CHUNK: usize = 128 * 1024;

/// More disjoint ranges than this (after coalescing) and the Range header is ignored
/// and the whole file is sent: thousands of tiny parts would cost more in part headers
/// than the file itself, a known amplification trick (RFC 9110 §14.2 allows ignoring).
const MAX_RANGES: usize = 64;

/// Upper bound on the bytes kept by the cache of gzipped files, so a site with many
/// compressible files cannot grow the process without limit.
const GZIP_CACHE_BUDGET: usize = 32 << 20;

/// Files up to this size are kept in memory by the open-file cache (nginx's
/// `open_file_cache`), together with their validators and precompressed siblings, so a
/// hot small file is served without a trip to the blocking pool.
const CACHE_FILE_MAX: u64 = 64 * 1024;

/// Upper bound on the bytes kept by the open-file cache.
const FILE_CACHE_BUDGET: usize = 32 << 20;

/// What one cache entry is charged beyond its bodies, so many empty files cannot
/// grow the cache without limit either.
const FILE_CACHE_ENTRY_OVERHEAD: usize = 256;

/// How long a cached file is served without looking at the file system again: a
/// file changed on disk is served stale for at most this long.
const FILE_CACHE_TTL: Duration = Duration::from_secs(1);

/// The longest file name Linux file systems accept; a longer path component cannot
/// name a file, so it is answered as "not here" without asking the kernel.
const NAME_MAX: usize = 255;

/// The one hidden directory served: site metadata such as ACME challenges.
const WELL_KNOWN: &str = ".well-known";

/// Characters re-escaped when a normalised path is put back into a `Location` header.
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

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
    /// the caller can proxy it to the application.
    pub async fn serve(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Outcome {
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
        };
        // A small file resolved less than FILE_CACHE_TTL ago is answered from memory:
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
}

/// A request path after percent-decoding and removing `.`/`..`: guaranteed not to
/// climb above the root and not to name a hidden file.
#[derive(Debug, PartialEq)]
struct RelPath {
    /// The path components below the root, decoded; none is empty, `.`, `..` or hidden.
    parts: Vec<String>,
    /// The request asked for a directory (trailing `/`), so the index file is served.
    dir: bool,
}

impl RelPath {
    /// Decodes and normalises a raw request path.
    ///
    /// 400 for a path nginx would also refuse (NUL, invalid UTF-8, a backslash, `..`
    /// above the root), 404 for a hidden component (dotfiles may hold secrets such as
    /// `.env` or `.git`).
    fn parse(raw: &str) -> Result<Self, StatusCode> {
        let bytes: Vec<u8> = percent_decode_str(raw).collect();
        if bytes.contains(&0) {
            return Err(StatusCode::BAD_REQUEST);
        }
        let decoded = String::from_utf8(bytes).map_err(|_| StatusCode::BAD_REQUEST)?;
        // A backslash is a separator to Windows tools and to some proxies in front of
        // us; refusing it outright closes every `..\` trick.
        if decoded.contains('\\') || !decoded.starts_with('/') {
            return Err(StatusCode::BAD_REQUEST);
        }
        let mut parts: Vec<String> = Vec::new();
        let mut dir = false;
        for segment in decoded.split('/') {
            dir = matches!(segment, "" | "." | "..");
            match segment {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(StatusCode::BAD_REQUEST);
                    }
                }
                name => parts.push(name.to_owned()),
            }
        }
        // `/.well-known/` (RFC 8615) is public by definition: ACME challenges live
        // there. Any other hidden component stays hidden.
        let hidden =
            |(i, part): (usize, &String)| part.starts_with('.') && !(i == 0 && part == WELL_KNOWN);
        if parts.iter().enumerate().any(hidden) {
            return Err(StatusCode::NOT_FOUND);
        }
        Ok(Self { parts, dir })
    }

    /// Whether no file system could hold this path, so asking the kernel is pointless.
    fn impossible(&self) -> bool {
        self.parts.iter().any(|part| part.len() > NAME_MAX)
    }

    /// The cache key: the normalised path, with the trailing slash of a directory.
    fn key(&self) -> String {
        let mut key =
            String::with_capacity(self.parts.iter().map(|p| p.len() + 1).sum::<usize>() + 1);
        for part in &self.parts {
            key.push('/');
            key.push_str(part);
        }
        if self.dir {
            key.push('/');
        }
        key
    }

    /// The path as a URL again, with the trailing slash the redirect adds.
    fn directory_location(&self, query: Option<&str>) -> String {
        let mut location = String::from("/");
        for part in &self.parts {
            location.extend(utf8_percent_encode(part, PATH_SEGMENT));
            location.push('/');
        }
        if let Some(query) = query {
            location.push('?');
            location.push_str(query);
        }
        location
    }
}

/// What was found at a path, after following symlinks.
enum Found {
    /// A regular file, opened.
    File {
        /// The canonical path, used for siblings, the gzip cache and log lines.
        path: PathBuf,
        /// Opened once and read from, so a rename after the check cannot swap contents.
        file: File,
        /// Of the opened file: the source of length and validators.
        meta: Metadata,
    },
    /// A directory (not opened: only its path is needed).
    Dir(PathBuf),
    /// Something that must not be served: outside the root, hidden, or not a regular
    /// file (a FIFO would block the reader forever).
    Refused,
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
enum Content {
    File(File),
    Memory(Bytes),
}

/// The precompressed siblings of a cached file that may be served (present, not
/// stale), read into memory.
#[derive(Debug, Default)]
struct Siblings {
    br: Option<Bytes>,
    gz: Option<Bytes>,
}

impl Siblings {
    fn get(&self, suffix: &str) -> Option<&Bytes> {
        match suffix {
            ".br" => self.br.as_ref(),
            _ => self.gz.as_ref(),
        }
    }
}

/// A small file as it was found on disk at `checked`, ready to be served from memory.
struct CachedFile {
    checked: Instant,
    /// Always served from memory (`Content::Memory`), with its siblings read.
    resource: Resource,
}

impl std::fmt::Debug for CachedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedFile")
            .field("path", &self.resource.path)
            .field("len", &self.resource.len)
            .field("checked", &self.checked)
            .finish()
    }
}

impl Resource {
    /// A copy sharing this resource's bytes; `None` for a file still on disk, which
    /// cannot be shared.
    fn share(&self) -> Option<Resource> {
        let Content::Memory(bytes) = &self.content else {
            return None;
        };
        Some(Resource {
            path: Arc::clone(&self.path),
            content: Content::Memory(bytes.clone()),
            len: self.len,
            modified_exact: self.modified_exact,
            modified: self.modified,
            tag: Arc::clone(&self.tag),
            etag: self.etag.clone(),
            weak_etag: self.weak_etag.clone(),
            last_modified: self.last_modified.clone(),
            mime: self.mime,
            compressible: self.compressible,
            siblings: self.siblings.clone(),
        })
    }
}

impl CachedFile {
    /// What the entry is charged against [`FILE_CACHE_BUDGET`].
    fn cost(&self, key: &str) -> usize {
        let siblings = self.resource.siblings.as_ref().map_or(0, |s| {
            [&s.br, &s.gz]
                .into_iter()
                .flatten()
                .map(Bytes::len)
                .sum::<usize>()
        });
        self.resource.len as usize + siblings + key.len() + FILE_CACHE_ENTRY_OVERHEAD
    }
}

/// Small files keyed by the normalised request path (nginx's `open_file_cache`).
#[derive(Debug, Default)]
struct FileCache {
    entries: HashMap<String, Arc<CachedFile>>,
    /// Sum of the entries' costs, kept under [`FILE_CACHE_BUDGET`].
    bytes: usize,
}

impl FileCache {
    fn get(&self, key: &str) -> Option<Arc<CachedFile>> {
        self.entries
            .get(key)
            .filter(|entry| entry.checked.elapsed() < FILE_CACHE_TTL)
            .cloned()
    }

    fn insert(&mut self, key: String, entry: Arc<CachedFile>) {
        let cost = entry.cost(&key);
        // Like the gzip cache: when full, start over.
        if self.bytes + cost > FILE_CACHE_BUDGET {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += cost;
        if let Some(old) = self.entries.insert(key.clone(), entry) {
            self.bytes -= old.cost(&key);
        }
    }
}

/// The content coding chosen for a response.
enum Coding {
    Identity,
    /// A `.br`/`.gz` file next to the original, prepared at build time.
    Precompressed {
        /// The `Content-Encoding` value: `br` or `gzip`.
        encoding: &'static str,
        /// The sibling; its bytes are the body.
        content: Content,
        /// The sibling's length, which is the `Content-Length`.
        len: u64,
    },
    /// Gzip computed here (and cached).
    Gzip,
}

/// One piece of a response body: literal bytes (multipart headers) or a slice of the file.
#[derive(Debug)]
enum Segment {
    Bytes(Bytes),
    File { start: u64, len: u64 },
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
            content: Content::File(file),
            siblings: None,
        };
        let resource = self.remember(req, resource);
        self.represent(req, resource, true)
    }

    /// A fresh cache entry for `req`, as a resource served from memory.
    fn cached(&self, path: &RelPath) -> Option<Resource> {
        let entry = self
            .file_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&path.key())?;
        entry.resource.share()
    }

    /// Reads a small file (and its precompressed siblings) into memory and caches it
    /// under the request path; returns the resource to serve this request from. A
    /// file that cannot be cached is returned as it came, unread.
    fn remember(&self, req: &Request, mut res: Resource) -> Resource {
        let Content::File(file) = &res.content else {
            return res;
        };
        if res.len > CACHE_FILE_MAX {
            return res;
        }
        // Positioned reads leave the file offset alone, so on failure the file is
        // served (and the error reported) exactly as without the cache.
        let Ok(content) = read_whole(file, res.len) else {
            return res;
        };
        let mut siblings = Siblings::default();
        let mut cacheable = true;
        if res.compressible && res.len >= COMPRESS_MIN_LEN {
            for suffix in [".br", ".gz"] {
                let Some((file, len)) = self.sibling(&res, suffix) else {
                    continue;
                };
                match (len <= CACHE_FILE_MAX)
                    .then(|| read_whole(&file, len))
                    .and_then(Result::ok)
                {
                    Some(bytes) if suffix == ".br" => siblings.br = Some(bytes),
                    Some(bytes) => siblings.gz = Some(bytes),
                    None => cacheable = false,
                }
            }
        }
        res.content = Content::Memory(content);
        if !cacheable {
            // Siblings are looked up on disk again, as without the cache.
            return res;
        }
        res.siblings = Some(Arc::new(siblings));
        let entry = CachedFile {
            checked: Instant::now(),
            resource: res.share().expect("the content was just read into memory"),
        };
        self.file_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(req.path.key(), Arc::new(entry));
        res
    }

    /// Resolves `path` through symlinks and opens it if it may be served.
    fn find(&self, path: &Path) -> Result<Found, Failure> {
        let canonical = fs::canonicalize(path).at(path)?;
        let Ok(inside) = canonical.strip_prefix(&self.root) else {
            tracing::warn!(
                path = %path.display(),
                target = %canonical.display(),
                "refusing a symlink that leads outside the static root"
            );
            return Ok(Found::Refused);
        };
        let hidden = inside.components().enumerate().any(|(i, c)| {
            matches!(c, Component::Normal(name)
                if name.as_encoded_bytes().starts_with(b".")
                    && !(i == 0 && name.as_encoded_bytes() == WELL_KNOWN.as_bytes()))
        });
        if hidden {
            return Ok(Found::Refused);
        }
        // Look before opening: opening a FIFO blocks until someone writes to it.
        let meta = fs::metadata(&canonical).at(&canonical)?;
        if meta.is_dir() {
            return Ok(Found::Dir(canonical));
        }
        if !meta.is_file() {
            return Ok(Found::Refused);
        }
        let file = File::open(&canonical).at(&canonical)?;
        // Trust the metadata of what was opened, not of what was looked at.
        let meta = file.metadata().at(&canonical)?;
        Ok(Found::File {
            path: canonical,
            file,
            meta,
        })
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
                let body = file_body(res.content, segments, req.head).at(&res.path)?;
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
                let body = file_body(res.content, segments, req.head).at(&res.path)?;
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
                req.head,
            )
            .at(&res.path)?,
            Coding::Precompressed {
                encoding,
                content,
                len,
            } => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
                file_body(content, vec![Segment::File { start: 0, len }], req.head).at(&res.path)?
            }
            Coding::Gzip => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                let gzipped = self.gzip(&mut res, blocking).at(&res.path)?;
                Payload::new(gzipped, req.head)
            }
        };
        Ok(Outcome::Response(body.respond(StatusCode::OK, headers)))
    }

    /// Picks the content coding the client prefers among those available for `res`.
    fn negotiate(&self, req: &Request, res: &Resource) -> Coding {
        let accepted = Accepted::parse(req.accept_encoding.as_deref());
        let mut choices = [("br", accepted.br, ".br"), ("gzip", accepted.gzip, ".gz")];
        // Brotli wins ties: it is smaller at the same quality.
        if accepted.gzip > accepted.br {
            choices.swap(0, 1);
        }
        for (encoding, q, suffix) in choices {
            if q <= 0.0 {
                continue;
            }
            let found = match &res.siblings {
                Some(siblings) => siblings
                    .get(suffix)
                    .map(|bytes| (Content::Memory(bytes.clone()), bytes.len() as u64)),
                None => self
                    .sibling(res, suffix)
                    .map(|(file, len)| (Content::File(file), len)),
            };
            if let Some((content, len)) = found {
                return Coding::Precompressed {
                    encoding,
                    content,
                    len,
                };
            }
            if encoding == "gzip" && res.len <= IN_MEMORY_MAX {
                return Coding::Gzip;
            }
        }
        Coding::Identity
    }

    /// Opens `<file><suffix>` if it exists, may be served and is not older than the
    /// file it was compressed from (an older one is stale: serving it would undo an edit).
    fn sibling(&self, res: &Resource, suffix: &str) -> Option<(File, u64)> {
        let mut name = res.path.to_path_buf().into_os_string();
        name.push(suffix);
        let path = PathBuf::from(name);
        // Most files have no sibling: one `lstat` settles that, where the full
        // resolution in `find` would walk every component of the path.
        if fs::symlink_metadata(&path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
            return None;
        }
        let found = match self.find(&path) {
            Ok(found) => found,
            Err(Failure { error, .. }) => {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(path = %path.display(), %error, "precompressed file ignored");
                }
                return None;
            }
        };
        match found {
            Found::File { file, meta, .. }
                if meta.modified().is_ok_and(|m| m >= res.modified_exact) =>
            {
                Some((file, meta.len()))
            }
            _ => None,
        }
    }

    /// The gzipped contents of `res`, from the cache when its validator still matches.
    /// Off the blocking pool (`blocking` false) a cache miss is a `WouldBlock` error.
    fn gzip(&self, res: &mut Resource, blocking: bool) -> io::Result<Bytes> {
        if let Some(hit) = self.cache().get(&res.path, &res.tag) {
            return Ok(hit);
        }
        if !blocking {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let whole = [Segment::File {
            start: 0,
            len: res.len,
        }];
        let plain = match &mut res.content {
            Content::File(file) => read_segments(file, &whole)?,
            Content::Memory(bytes) => memory_segments(bytes, &whole)?,
        };
        let mut encoder = GzEncoder::new(
            Vec::with_capacity(plain.len() / 3 + 64),
            Compression::default(),
        );
        encoder.write_all(&plain)?;
        let gzipped = Bytes::from(encoder.finish()?);
        self.cache()
            .insert(res.path.to_path_buf(), res.tag.to_string(), gzipped.clone());
        Ok(gzipped)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, GzipCache> {
        // The cache holds no invariant a panic could break half-way.
        self.gzip_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Gzipped bodies keyed by file path, each valid for one ETag.
#[derive(Debug, Default)]
struct GzipCache {
    /// Canonical path to (ETag opaque part the body was made from, gzipped body).
    entries: HashMap<PathBuf, (String, Bytes)>,
    /// Sum of the cached bodies' sizes, kept under [`GZIP_CACHE_BUDGET`].
    bytes: usize,
}

impl GzipCache {
    fn get(&self, path: &Path, tag: &str) -> Option<Bytes> {
        self.entries
            .get(path)
            .filter(|(cached, _)| cached == tag)
            .map(|(_, body)| body.clone())
    }

    fn insert(&mut self, path: PathBuf, tag: String, body: Bytes) {
        // Crude but bounded: when full, start over. Hot files are back after one
        // request each, and there is no bookkeeping on the hit path.
        if self.bytes + body.len() > GZIP_CACHE_BUDGET {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += body.len();
        if let Some((_, old)) = self.entries.insert(path, (tag, body)) {
            self.bytes -= old.len();
        }
    }
}

/// How much the client wants each coding we can produce (RFC 9110 §12.5.3).
struct Accepted {
    /// q-value for gzip (0 = refused).
    gzip: f32,
    /// q-value for brotli (0 = refused).
    br: f32,
}

impl Accepted {
    /// No header means identity only: compressing for a client that did not ask risks
    /// one that cannot decode it, so (like nginx) we don't.
    fn parse(header: Option<&str>) -> Self {
        let (mut gzip, mut br, mut star) = (None::<f32>, None::<f32>, None::<f32>);
        for item in header.unwrap_or("").split(',') {
            let mut params = item.split(';');
            let coding = params.next().unwrap_or("").trim();
            let mut q = Some(1.0);
            for param in params {
                if let Some((key, value)) = param.split_once('=') {
                    if key.trim().eq_ignore_ascii_case("q") {
                        q = value
                            .trim()
                            .parse::<f32>()
                            .ok()
                            .filter(|q| (0.0..=1.0).contains(q));
                    }
                }
            }
            // An unreadable q-value makes the whole item meaningless; skip it.
            let Some(q) = q else { continue };
            let slot =
                if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                    &mut gzip
                } else if coding.eq_ignore_ascii_case("br") {
                    &mut br
                } else if coding == "*" {
                    &mut star
                } else {
                    continue;
                };
            *slot = Some(slot.map_or(q, |old| old.max(q)));
        }
        Self {
            gzip: gzip.or(star).unwrap_or(0.0),
            br: br.or(star).unwrap_or(0.0),
        }
    }
}

enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// Evaluates the conditional headers in the order of RFC 9110 §13.2.2.
fn preconditions(req: &Request, res: &Resource, weak: bool) -> Precondition {
    if let Some(list) = &req.if_match {
        if !etag_list_matches(list, &res.tag, Comparison::Strong { ours_weak: weak }) {
            return Precondition::Failed;
        }
    } else if let Some(date) = req.if_unmodified_since {
        if res.modified > date {
            return Precondition::Failed;
        }
    }
    if let Some(list) = &req.if_none_match {
        if etag_list_matches(list, &res.tag, Comparison::Weak) {
            return Precondition::NotModified;
        }
    } else if let Some(date) = req.if_modified_since {
        // A date in the future is invalid (RFC 9110 §13.1.3): a client clock ahead
        // of ours must not pin a stale copy, so it is ignored, as nginx does.
        if res.modified <= date && date <= SystemTime::now() {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// The two ways of comparing entity tags (RFC 9110 §8.8.3.2).
#[derive(Clone, Copy)]
enum Comparison {
    /// Both tags must be strong and equal; `ours_weak` says whether ours is.
    Strong { ours_weak: bool },
    /// The opaque parts must be equal, weakness ignored.
    Weak,
}

/// Whether an `If-Match`/`If-None-Match` list (or `*`) matches our tag.
fn etag_list_matches(list: &str, tag: &str, comparison: Comparison) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            return false;
        }
        let (theirs_weak, after) = match rest.strip_prefix("W/") {
            Some(after) => (true, after),
            None => (false, rest),
        };
        let Some(quoted) = after.strip_prefix('"') else {
            return false;
        };
        let Some(end) = quoted.find('"') else {
            return false;
        };
        let equal = &quoted[..end] == tag;
        let matches = match comparison {
            Comparison::Weak => equal,
            Comparison::Strong { ours_weak } => equal && !ours_weak && !theirs_weak,
        };
        if matches {
            return true;
        }
        rest = &quoted[end + 1..];
    }
}

/// Whether the `If-Range` validator still describes the file, so the range may be
/// sent (RFC 9110 §13.1.5): a strong ETag match, or exactly our `Last-Modified`.
fn if_range_holds(value: &str, res: &Resource) -> bool {
    let value = value.trim();
    if let Some(quoted) = value.strip_prefix('"') {
        quoted.strip_suffix('"') == Some(&*res.tag)
    } else if value.starts_with("W/") {
        false
    } else {
        httpdate::parse_http_date(value).is_ok_and(|date| date == res.modified)
    }
}

/// One byte-range spec of a `Range: bytes=` header, not yet checked against the length.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RangeSpec {
    /// `a-b`, both inclusive.
    FromTo(u64, u64),
    /// `a-`: from `a` to the end.
    From(u64),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// Parses a `Range` header; `None` when it is not valid `bytes=` syntax, in which case
/// the header is ignored and the whole file sent (RFC 9110 §14.2).
fn parse_range(value: &str) -> Option<Vec<RangeSpec>> {
    let (unit, set) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    for spec in set.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        let (first, last) = spec.split_once('-')?;
        let (first, last) = (first.trim(), last.trim());
        specs.push(match (first.is_empty(), last.is_empty()) {
            (true, true) => return None,
            (true, false) => RangeSpec::Suffix(digits(last)?),
            (false, true) => RangeSpec::From(digits(first)?),
            (false, false) => {
                let (first, last) = (digits(first)?, digits(last)?);
                if last < first {
                    return None;
                }
                RangeSpec::FromTo(first, last)
            }
        });
    }
    (!specs.is_empty()).then_some(specs)
}

/// A decimal number made of ASCII digits only (`u64::from_str` would also take `+`).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The ranges that overlap a file of `len` bytes, as inclusive `(start, end)` pairs,
/// sorted, with overlapping and adjacent ranges merged. Empty means 416.
fn satisfiable(specs: &[RangeSpec], len: u64) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = specs
        .iter()
        .filter_map(|spec| match *spec {
            RangeSpec::FromTo(first, _) | RangeSpec::From(first) if first >= len => None,
            RangeSpec::FromTo(first, last) => Some((first, last.min(len - 1))),
            RangeSpec::From(first) => Some((first, len - 1)),
            RangeSpec::Suffix(0) => None,
            RangeSpec::Suffix(_) if len == 0 => None,
            RangeSpec::Suffix(n) => Some((len - n.min(len), len - 1)),
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// A body made of `segments`, and its length.
///
/// Small bodies are read now (a failed read can still become a 500); large ones are
/// streamed from the open file in [`CHUNK`]-sized reads.
fn file_body(content: Content, segments: Vec<Segment>, head: bool) -> io::Result<Payload> {
    let total = segments.iter().map(segment_len).sum();
    if head {
        return Ok(Payload::empty(total));
    }
    let mut file = match content {
        Content::File(file) => file,
        Content::Memory(bytes) => {
            return Ok(Payload::new(memory_segments(&bytes, &segments)?, false))
        }
    };
    if total <= IN_MEMORY_MAX {
        return Ok(Payload::new(read_segments(&mut file, &segments)?, false));
    }
    let state = Streamer {
        file: tokio::fs::File::from_std(file),
        segments: segments.into(),
        position: None,
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
fn read_segments(file: &mut File, segments: &[Segment]) -> io::Result<Bytes> {
    let total: u64 = segments.iter().map(segment_len).sum();
    let mut buf = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    // A freshly opened file is at offset 0; skip the seek for the common whole-file case.
    let mut position = 0;
    for segment in segments {
        match segment {
            Segment::Bytes(bytes) => buf.extend_from_slice(bytes),
            Segment::File { start, len } => {
                if *start != position {
                    file.seek(SeekFrom::Start(*start))?;
                }
                let read = Read::by_ref(file).take(*len).read_to_end(&mut buf)?;
                if read as u64 != *len {
                    return Err(shrank());
                }
                position = start + len;
            }
        }
    }
    Ok(buf.into())
}

/// [`read_segments`] for a body already in memory; a whole-body segment is shared,
/// not copied.
fn memory_segments(bytes: &Bytes, segments: &[Segment]) -> io::Result<Bytes> {
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

/// The first `len` bytes of `file`, read without moving its offset; an error if the
/// file is shorter now.
fn read_whole(file: &File, len: u64) -> io::Result<Bytes> {
    let mut buf = vec![0; usize::try_from(len).map_err(|_| shrank())?];
    file.read_exact_at(&mut buf, 0).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            shrank()
        } else {
            e
        }
    })?;
    Ok(buf.into())
}

fn shrank() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "file became shorter while it was being served",
    )
}

/// State of a streamed body: the file and what is left to send.
struct Streamer {
    /// The open file, read from the blocking pool by tokio.
    file: tokio::fs::File,
    /// What is left to send, in order; a partly sent slice is put back shortened.
    segments: VecDeque<Segment>,
    /// The file offset, when known, so consecutive reads need no seek.
    position: Option<u64>,
}

impl Streamer {
    /// The next chunk of the body, or `None` at the end.
    async fn next(mut self) -> io::Result<Option<(Bytes, Self)>> {
        let Some(segment) = self.segments.pop_front() else {
            return Ok(None);
        };
        let (start, len) = match segment {
            Segment::Bytes(bytes) => return Ok(Some((bytes, self))),
            Segment::File { start, len } => (start, len),
        };
        if self.position != Some(start) {
            self.file.seek(SeekFrom::Start(start)).await?;
        }
        let want = len.min(CHUNK as u64);
        let mut buf = BytesMut::with_capacity(want as usize);
        let mut limited = (&mut self.file).take(want);
        while (buf.len() as u64) < want {
            if limited.read_buf(&mut buf).await? == 0 {
                return Err(shrank());
            }
        }
        let read = buf.len() as u64;
        self.position = Some(start + read);
        if read < len {
            self.segments.push_front(Segment::File {
                start: start + read,
                len: len - read,
            });
        }
        Ok(Some((buf.freeze(), self)))
    }
}

/// A body and the length its `Content-Length` must announce (for HEAD, the length GET
/// would send).
struct Payload {
    /// What is sent (empty for HEAD).
    body: net::Body,
    /// The `Content-Length` to announce.
    len: u64,
}

impl Payload {
    fn new(bytes: Bytes, head: bool) -> Self {
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

    fn respond(self, status: StatusCode, headers: HeaderMap) -> Response<net::Body> {
        respond(status, headers, self.body, Some(self.len))
    }
}

/// A response with `headers`; `len` becomes `Content-Length` (`None` for a 304, which
/// announces no body).
fn respond(
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
fn with_headers(mut response: Response<net::Body>, headers: HeaderMap) -> Response<net::Body> {
    response.headers_mut().extend(headers);
    response
}

/// A short plain-text page for an error or other bodiless status.
fn status_page(status: StatusCode, head: bool) -> Response<net::Body> {
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
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::time::Duration;
    use tempfile::TempDir;

    const CSS: &str = "body { color: #333; margin: 0 auto; max-width: 40em; }\n";

    fn css() -> String {
        CSS.repeat(40)
    }

    fn big() -> Vec<u8> {
        (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect()
    }

    /// A small site: what a real document root holds, plus the traps.
    fn site() -> (TempDir, StaticFiles) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("index.html"), "<h1>home</h1>").unwrap();
        fs::write(root.join("style.css"), css()).unwrap();
        fs::write(root.join("small.txt"), "hi").unwrap();
        fs::write(root.join("app.mjs"), "export {}").unwrap();
        fs::write(root.join("data.json"), "{}").unwrap();
        fs::write(root.join("logo.PNG"), [0x89, b'P', b'N', b'G']).unwrap();
        fs::write(root.join("font.woff2"), "w").unwrap();
        fs::write(root.join("blob"), "b").unwrap();
        fs::write(root.join("hello world.txt"), "spaced").unwrap();
        fs::write(root.join(".env"), "SECRET=1").unwrap();
        fs::create_dir(root.join(".git")).unwrap();
        fs::write(root.join(".git/config"), "SECRET").unwrap();
        fs::create_dir(root.join("docs")).unwrap();
        fs::write(root.join("docs/index.html"), "<h1>docs</h1>").unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::write(root.join("big.bin"), big()).unwrap();
        let files = StaticFiles::new(root).unwrap();
        (dir, files)
    }

    async fn outcome(
        files: &StaticFiles,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Outcome {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::try_from(*name).unwrap(),
                HeaderValue::try_from(*value).unwrap(),
            );
        }
        files.serve(&method, &uri.parse().unwrap(), &map).await
    }

    async fn request(
        files: &StaticFiles,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        match outcome(files, method, uri, headers).await {
            Outcome::Response(response) => {
                let (parts, body) = response.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                (parts.status, parts.headers, body)
            }
            Outcome::NotFound => panic!("{uri}: expected a response, got NotFound"),
        }
    }

    async fn get(
        files: &StaticFiles,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        request(files, Method::GET, uri, headers).await
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .to_str()
            .unwrap()
    }

    fn content_length(headers: &HeaderMap) -> usize {
        header(headers, "content-length").parse().unwrap()
    }

    fn gunzip(bytes: &[u8]) -> String {
        let mut out = String::new();
        GzDecoder::new(bytes).read_to_string(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn missing_root_is_an_error_naming_it() {
        let error = StaticFiles::new("/definitely/not/here").unwrap_err();
        assert!(
            error.to_string().contains("/definitely/not/here"),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        let error = StaticFiles::new(&file).unwrap_err();
        assert!(error.to_string().contains("not a directory"), "{error}");
    }

    #[tokio::test]
    async fn content_types_follow_the_extension() {
        let (_dir, files) = site();
        for (uri, mime) in [
            ("/index.html", "text/html; charset=utf-8"),
            ("/style.css", "text/css; charset=utf-8"),
            ("/small.txt", "text/plain; charset=utf-8"),
            ("/app.mjs", "text/javascript; charset=utf-8"),
            ("/data.json", "application/json"),
            ("/logo.PNG", "image/png"),
            ("/font.woff2", "font/woff2"),
            ("/blob", "application/octet-stream"),
        ] {
            let (status, headers, _) = get(&files, uri, &[]).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(header(&headers, "content-type"), mime, "{uri}");
            assert_eq!(header(&headers, "accept-ranges"), "bytes", "{uri}");
        }
        let (_, _, body) = get(&files, "/hello%20world.txt", &[]).await;
        assert_eq!(body, "spaced");
    }

    #[tokio::test]
    async fn etag_and_last_modified_look_like_nginx() {
        let (dir, files) = site();
        let meta = fs::metadata(dir.path().join("small.txt")).unwrap();
        let secs = meta
            .modified()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (_, headers, body) = get(&files, "/small.txt", &[]).await;
        assert_eq!(body, "hi");
        assert_eq!(header(&headers, "etag"), format!("\"{secs:x}-2\""));
        assert_eq!(
            httpdate::parse_http_date(header(&headers, "last-modified")).unwrap(),
            UNIX_EPOCH + Duration::from_secs(secs)
        );
        assert_eq!(content_length(&headers), 2);
    }

    #[tokio::test]
    async fn if_none_match_gives_304_with_validators_and_no_body() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("style.css"), css()).unwrap();
        let files = StaticFiles::with_options(
            dir.path(),
            Options {
                cache_control: Some(HeaderValue::from_static("max-age=60")),
                ..Options::default()
            },
        )
        .unwrap();
        let (_, headers, _) = get(&files, "/style.css", &[]).await;
        let etag = header(&headers, "etag").to_owned();
        let weak = format!("W/{etag}");
        let list = format!("\"other\", {etag}");
        for inm in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
            let (status, headers, body) =
                get(&files, "/style.css", &[("if-none-match", inm)]).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED, "{inm}");
            assert!(body.is_empty());
            assert_eq!(header(&headers, "etag"), etag);
            assert!(headers.contains_key("last-modified"));
            assert_eq!(header(&headers, "cache-control"), "max-age=60");
            assert_eq!(header(&headers, "vary"), "accept-encoding");
            assert!(!headers.contains_key("content-length"));
        }
        let (status, _, body) = get(&files, "/style.css", &[("if-none-match", "\"nope\"")]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, css());
    }

    #[tokio::test]
    async fn if_modified_since_gives_304_only_without_if_none_match() {
        let (_dir, files) = site();
        let (_, headers, _) = get(&files, "/small.txt", &[]).await;
        let last_modified = header(&headers, "last-modified").to_owned();
        let (status, _, body) = get(
            &files,
            "/small.txt",
            &[("if-modified-since", &last_modified)],
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());

        let earlier = httpdate::fmt_http_date(
            httpdate::parse_http_date(&last_modified).unwrap() - Duration::from_secs(10),
        );
        let (status, _, _) = get(&files, "/small.txt", &[("if-modified-since", &earlier)]).await;
        assert_eq!(status, StatusCode::OK);

        // If-None-Match decides alone when present (RFC 9110 §13.1.3).
        let (status, _, _) = get(
            &files,
            "/small.txt",
            &[
                ("if-none-match", "\"stale\""),
                ("if-modified-since", &last_modified),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn if_match_failure_is_412() {
        let (_dir, files) = site();
        let (status, _, _) = get(&files, "/small.txt", &[("if-match", "\"other\"")]).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
        let (_, headers, _) = get(&files, "/small.txt", &[]).await;
        let etag = header(&headers, "etag").to_owned();
        let (status, _, _) = get(&files, "/small.txt", &[("if-match", &etag)]).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn head_has_the_headers_of_get_and_no_body() {
        let (_dir, files) = site();
        for accept in ["identity", "gzip"] {
            let (_, get_headers, get_body) =
                get(&files, "/style.css", &[("accept-encoding", accept)]).await;
            let (status, head_headers, head_body) = request(
                &files,
                Method::HEAD,
                "/style.css",
                &[("accept-encoding", accept)],
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert!(head_body.is_empty());
            assert_eq!(content_length(&head_headers), get_body.len());
            for name in ["etag", "content-type", "content-length", "last-modified"] {
                assert_eq!(head_headers.get(name), get_headers.get(name), "{name}");
            }
        }
        // HEAD never gets a partial response.
        let (status, _, _) = request(
            &files,
            Method::HEAD,
            "/style.css",
            &[("range", "bytes=0-1")],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn single_and_suffix_ranges_are_206() {
        let (_dir, files) = site();
        let css = css();
        let len = css.len();
        let (status, headers, body) = get(&files, "/style.css", &[("range", "bytes=0-4")]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, css[..5]);
        assert_eq!(
            header(&headers, "content-range"),
            format!("bytes 0-4/{len}")
        );
        assert_eq!(content_length(&headers), 5);
        assert_eq!(header(&headers, "content-type"), "text/css; charset=utf-8");

        let (status, headers, body) = get(&files, "/style.css", &[("range", "bytes=-3")]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, css[len - 3..]);
        assert_eq!(
            header(&headers, "content-range"),
            format!("bytes {}-{}/{len}", len - 3, len - 1)
        );

        let (_, headers, body) = get(&files, "/style.css", &[("range", "bytes=10-")]).await;
        assert_eq!(body, css[10..]);
        assert_eq!(content_length(&headers), len - 10);

        // A last byte past the end is clamped; a suffix longer than the file is all of it.
        let (_, _, body) = get(&files, "/small.txt", &[("range", "bytes=1-99")]).await;
        assert_eq!(body, "i");
        let (_, _, body) = get(&files, "/small.txt", &[("range", "bytes=-99")]).await;
        assert_eq!(body, "hi");
    }

    #[tokio::test]
    async fn range_wins_over_compression() {
        let (_dir, files) = site();
        let (status, headers, body) = get(
            &files,
            "/style.css",
            &[("range", "bytes=0-9"), ("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert!(!headers.contains_key("content-encoding"));
        assert_eq!(body, css()[..10]);
        assert!(header(&headers, "etag").starts_with('"'));
    }

    /// Splits a multipart/byteranges body into (headers, data) pairs.
    fn parts(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
        let delimiter = format!("\r\n--{boundary}");
        let text = body.to_vec();
        let mut found = Vec::new();
        let mut rest = &text[..];
        let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
        assert!(rest.starts_with(delimiter.as_bytes()));
        loop {
            rest = &rest[delimiter.len()..];
            if rest.starts_with(b"--\r\n") {
                assert_eq!(rest.len(), 4, "nothing after the close delimiter");
                return found;
            }
            rest = rest.strip_prefix(b"\r\n").unwrap();
            let end_of_headers = find(rest, b"\r\n\r\n").unwrap();
            let head = String::from_utf8(rest[..end_of_headers].to_vec()).unwrap();
            rest = &rest[end_of_headers + 4..];
            let next = find(rest, delimiter.as_bytes()).unwrap();
            found.push((head, rest[..next].to_vec()));
            rest = &rest[next..];
        }
    }

    #[tokio::test]
    async fn multiple_ranges_are_multipart() {
        let (_dir, files) = site();
        let css = css();
        let len = css.len();
        let (status, headers, body) =
            get(&files, "/style.css", &[("range", "bytes=0-1, 10-12,-2")]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(content_length(&headers), body.len());
        let content_type = header(&headers, "content-type");
        let boundary = content_type
            .strip_prefix("multipart/byteranges; boundary=")
            .unwrap();
        let parts = parts(&body, boundary);
        let expected = [(0, 1), (10, 12), (len - 2, len - 1)];
        assert_eq!(parts.len(), expected.len());
        for ((head, data), (start, end)) in parts.iter().zip(expected) {
            assert!(
                head.contains("Content-Type: text/css; charset=utf-8"),
                "{head}"
            );
            assert!(
                head.contains(&format!("Content-Range: bytes {start}-{end}/{len}")),
                "{head}"
            );
            assert_eq!(data, &css.as_bytes()[start..=end]);
        }

        // Overlapping ranges collapse into one, which is then a plain 206.
        let (_, headers, body) = get(&files, "/style.css", &[("range", "bytes=0-5,3-9")]).await;
        assert_eq!(
            header(&headers, "content-range"),
            format!("bytes 0-9/{len}")
        );
        assert_eq!(body, css[..10]);
    }

    #[tokio::test]
    async fn too_many_ranges_get_the_whole_file() {
        let (_dir, files) = site();
        let many: Vec<String> = (0..100).map(|i| format!("{0}-{0}", i * 2)).collect();
        let range = format!("bytes={}", many.join(","));
        let (status, _, body) = get(&files, "/style.css", &[("range", &range)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, css());
    }

    #[tokio::test]
    async fn unsatisfiable_range_is_416_and_invalid_range_is_ignored() {
        let (_dir, files) = site();
        let len = css().len();
        let (status, headers, _) =
            get(&files, "/style.css", &[("range", &format!("bytes={len}-"))]).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(header(&headers, "content-range"), format!("bytes */{len}"));

        for invalid in [
            "bytes=abc",
            "bytes=5-1",
            "items=0-1",
            "bytes=",
            "bytes=+1-2",
        ] {
            let (status, _, body) = get(&files, "/style.css", &[("range", invalid)]).await;
            assert_eq!(status, StatusCode::OK, "{invalid}");
            assert_eq!(body, css(), "{invalid}");
        }
    }

    #[tokio::test]
    async fn if_range_decides_between_part_and_whole() {
        let (_dir, files) = site();
        let (_, headers, _) = get(&files, "/style.css", &[]).await;
        let etag = header(&headers, "etag").to_owned();
        let last_modified = header(&headers, "last-modified").to_owned();

        for stale in ["\"old\"", "Thu, 01 Jan 1998 00:00:00 GMT", "W/\"x\""] {
            let (status, _, body) = get(
                &files,
                "/style.css",
                &[("range", "bytes=0-4"), ("if-range", stale)],
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{stale}");
            assert_eq!(body, css());
        }
        for fresh in [etag.as_str(), last_modified.as_str()] {
            let (status, _, body) = get(
                &files,
                "/style.css",
                &[("range", "bytes=0-4"), ("if-range", fresh)],
            )
            .await;
            assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{fresh}");
            assert_eq!(body, css()[..5]);
        }
    }

    #[tokio::test]
    async fn gzip_on_the_fly() {
        let (_dir, files) = site();
        let (_, plain_headers, _) = get(&files, "/style.css", &[]).await;
        assert_eq!(header(&plain_headers, "vary"), "accept-encoding");
        let strong = header(&plain_headers, "etag").to_owned();

        for _ in 0..2 {
            // The second round comes from the cache and must be identical.
            let (status, headers, body) = get(
                &files,
                "/style.css",
                &[("accept-encoding", "gzip, deflate, br")],
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(header(&headers, "content-encoding"), "gzip");
            assert_eq!(header(&headers, "vary"), "accept-encoding");
            assert_eq!(header(&headers, "etag"), format!("W/{strong}"));
            assert_eq!(content_length(&headers), body.len());
            assert!(body.len() < css().len());
            assert_eq!(gunzip(&body), css());
        }
    }

    #[tokio::test]
    async fn cached_files_answer_like_fresh_ones() {
        let (dir, warm) = site();
        fs::write(dir.path().join("style.css.br"), "pretend brotli").unwrap();
        type Case<'a> = (Method, &'a str, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (Method::GET, "/style.css", &[]),
            (
                Method::GET,
                "/style.css",
                &[("accept-encoding", "br, gzip")],
            ),
            (Method::GET, "/style.css", &[("accept-encoding", "gzip")]),
            (Method::HEAD, "/style.css", &[("accept-encoding", "gzip")]),
            (Method::GET, "/style.css", &[("range", "bytes=3-9")]),
            (Method::GET, "/style.css", &[("range", "bytes=99999-")]),
            (Method::GET, "/small.txt", &[]),
            (Method::HEAD, "/small.txt", &[]),
            (Method::GET, "/", &[]),
            (Method::GET, "/docs/", &[]),
            (Method::GET, "/alias/../index.html", &[]),
        ];
        for round in 0..3 {
            for (method, uri, headers) in cases {
                // A new handler has an empty cache: what the warm one must match.
                let cold = StaticFiles::new(dir.path()).unwrap();
                let expected = request(&cold, method.clone(), uri, headers).await;
                let got = request(&warm, method.clone(), uri, headers).await;
                assert_eq!(got, expected, "round {round}: {method} {uri} {headers:?}");
            }
        }
        // Validators taken from a cached answer work against the cache.
        let (_, headers, _) = get(&warm, "/style.css", &[]).await;
        let etag = header(&headers, "etag").to_owned();
        let (status, _, body) = get(&warm, "/style.css", &[("if-none-match", &etag)]).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());
        let (status, _, _) = get(&warm, "/style.css", &[("if-match", "\"other\"")]).await;
        assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    }

    #[tokio::test]
    async fn a_changed_file_is_served_within_a_second() {
        let (dir, files) = site();
        let (_, _, body) = get(&files, "/small.txt", &[]).await;
        assert_eq!(body, "hi");
        let (status, _, _) = get(&files, "/index.html", &[]).await;
        assert_eq!(status, StatusCode::OK);
        fs::write(dir.path().join("small.txt"), "changed").unwrap();
        fs::remove_file(dir.path().join("index.html")).unwrap();
        tokio::time::sleep(FILE_CACHE_TTL + Duration::from_millis(100)).await;
        let (_, headers, body) = get(&files, "/small.txt", &[]).await;
        assert_eq!(body, "changed");
        assert_eq!(content_length(&headers), 7);
        assert!(matches!(
            outcome(&files, Method::GET, "/index.html", &[]).await,
            Outcome::NotFound
        ));
        // A file that became a directory redirects, as without the cache.
        fs::remove_file(dir.path().join("small.txt")).unwrap();
        fs::create_dir(dir.path().join("small.txt")).unwrap();
        tokio::time::sleep(FILE_CACHE_TTL + Duration::from_millis(100)).await;
        let (status, _, _) = get(&files, "/small.txt", &[]).await;
        assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    }

    #[tokio::test]
    async fn gzip_refused_or_not_worth_it_is_identity() {
        let (_dir, files) = site();
        for refusal in [
            "gzip;q=0",
            "gzip;q=0.000, br;q=0",
            "identity",
            "gzip;q=bogus",
            "*;q=0",
        ] {
            let (_, headers, body) =
                get(&files, "/style.css", &[("accept-encoding", refusal)]).await;
            assert!(!headers.contains_key("content-encoding"), "{refusal}");
            assert_eq!(body, css());
        }
        let (_, headers, _) = get(&files, "/style.css", &[]).await;
        assert!(!headers.contains_key("content-encoding"));

        let (_, headers, body) = get(&files, "/small.txt", &[("accept-encoding", "gzip")]).await;
        assert!(!headers.contains_key("content-encoding"));
        assert_eq!(body, "hi");
        assert_eq!(header(&headers, "vary"), "accept-encoding");

        let (_, headers, _) = get(&files, "/logo.PNG", &[("accept-encoding", "gzip")]).await;
        assert!(!headers.contains_key("content-encoding"));
        assert!(!headers.contains_key("vary"));

        // `*` accepts gzip too.
        let (_, headers, _) = get(&files, "/style.css", &[("accept-encoding", "*")]).await;
        assert!(headers.contains_key("content-encoding"));
    }

    fn precompress(path: &Path, marker: &str) -> Vec<u8> {
        let mut encoder = flate2::GzBuilder::new()
            .filename(marker)
            .write(Vec::new(), Compression::best());
        encoder.write_all(css().as_bytes()).unwrap();
        let gz = encoder.finish().unwrap();
        fs::write(path, &gz).unwrap();
        gz
    }

    #[tokio::test]
    async fn precompressed_siblings_are_preferred() {
        let (dir, files) = site();
        let gz = precompress(&dir.path().join("style.css.gz"), "sibling");
        fs::write(dir.path().join("style.css.br"), "pretend brotli").unwrap();

        let (_, headers, body) = get(&files, "/style.css", &[("accept-encoding", "gzip")]).await;
        assert_eq!(header(&headers, "content-encoding"), "gzip");
        assert_eq!(body, gz);
        assert_eq!(content_length(&headers), gz.len());
        assert!(header(&headers, "etag").starts_with("W/\""));

        let (_, headers, body) =
            get(&files, "/style.css", &[("accept-encoding", "gzip, br")]).await;
        assert_eq!(header(&headers, "content-encoding"), "br");
        assert_eq!(body, "pretend brotli");

        // The client's preference wins over ours.
        let (_, headers, _) = get(
            &files,
            "/style.css",
            &[("accept-encoding", "gzip;q=1, br;q=0.5")],
        )
        .await;
        assert_eq!(header(&headers, "content-encoding"), "gzip");
    }

    #[tokio::test]
    async fn stale_sibling_is_not_served() {
        let (dir, files) = site();
        let gz_path = dir.path().join("style.css.gz");
        let gz = precompress(&gz_path, "stale");
        let original = fs::metadata(dir.path().join("style.css"))
            .unwrap()
            .modified()
            .unwrap();
        File::options()
            .write(true)
            .open(&gz_path)
            .unwrap()
            .set_modified(original - Duration::from_secs(60))
            .unwrap();
        let (_, headers, body) = get(&files, "/style.css", &[("accept-encoding", "gzip")]).await;
        assert_eq!(header(&headers, "content-encoding"), "gzip");
        assert_ne!(body, gz);
        assert_eq!(gunzip(&body), css());
    }

    #[tokio::test]
    async fn traversal_is_400_and_never_leaks() {
        let (_dir, files) = site();
        for uri in [
            "/../../etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/%2E%2E/%2E%2E/etc/passwd",
            "/..%2f..%2fetc%2fpasswd",
            "/docs/../../etc/passwd",
            "/docs/%2e%2e/%2e%2e/etc/passwd",
            "/..%5c..%5cetc%5cpasswd",
            "/docs%5c..%5cindex.html",
            "/index.html%00.txt",
            "/%ff.html",
        ] {
            let (status, _, body) = get(&files, uri, &[]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert!(!String::from_utf8_lossy(&body).contains("root:"), "{uri}");
        }
        // Climbing that stays inside the root is fine.
        let (status, _, body) = get(&files, "/docs/../small.txt", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "hi");
    }

    #[tokio::test]
    async fn symlinks_out_of_the_root_are_not_followed() {
        let (dir, files) = site();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret.txt"), "TOP SECRET").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.txt"),
            dir.path().join("leak.txt"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("leakdir")).unwrap();
        std::os::unix::fs::symlink(dir.path().join(".env"), dir.path().join("env.txt")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("small.txt"), dir.path().join("alias.txt"))
            .unwrap();
        for uri in ["/leak.txt", "/leakdir/secret.txt", "/env.txt"] {
            let (status, _, body) = get(&files, uri, &[]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            let body = String::from_utf8_lossy(&body);
            assert!(!body.contains("SECRET"), "{uri}: {body}");
        }
        let (status, _, body) = get(&files, "/alias.txt", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "hi");
    }

    #[tokio::test]
    async fn well_known_files_are_served_but_hidden_files_inside_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let challenge = dir.path().join(".well-known/acme-challenge");
        std::fs::create_dir_all(&challenge).unwrap();
        std::fs::write(challenge.join("tok3n"), "tok3n.key").unwrap();
        std::fs::write(challenge.join(".secret"), "no").unwrap();
        let files = StaticFiles::new(dir.path()).unwrap();
        let get = |path: &'static str| {
            let files = files.clone();
            async move {
                match files
                    .serve(&Method::GET, &path.parse().unwrap(), &HeaderMap::new())
                    .await
                {
                    Outcome::Response(resp) => resp.status(),
                    Outcome::NotFound => StatusCode::NOT_FOUND,
                }
            }
        };
        assert_eq!(
            get("/.well-known/acme-challenge/tok3n").await,
            StatusCode::OK
        );
        assert_eq!(
            get("/.well-known/acme-challenge/.secret").await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get("/a/.well-known/x").await, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn dotfiles_are_404() {
        let (_dir, files) = site();
        for uri in [
            "/.env",
            "/.git/config",
            "/docs/.hidden",
            "/%2eenv",
            "/.git/",
        ] {
            let (status, _, body) = get(&files, uri, &[]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            assert!(!String::from_utf8_lossy(&body).contains("SECRET"), "{uri}");
        }
    }

    #[tokio::test]
    async fn directories_redirect_and_serve_their_index() {
        let (_dir, files) = site();
        let (status, headers, _) = get(&files, "/docs", &[]).await;
        assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(header(&headers, "location"), "/docs/");
        let (_, headers, _) = get(&files, "/docs?page=2", &[]).await;
        assert_eq!(header(&headers, "location"), "/docs/?page=2");
        // A doubled slash must not become a protocol-relative redirect to another host.
        let (_, headers, _) = get(&files, "//docs", &[]).await;
        assert_eq!(header(&headers, "location"), "/docs/");

        let (status, headers, body) = get(&files, "/docs/", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "<h1>docs</h1>");
        assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
        let (_, _, body) = get(&files, "/", &[]).await;
        assert_eq!(body, "<h1>home</h1>");

        for uri in ["/empty/", "/small.txt/", "/nothing.css", "/nothing/"] {
            assert!(
                matches!(
                    outcome(&files, Method::GET, uri, &[]).await,
                    Outcome::NotFound
                ),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn large_files_stream_whole_and_in_ranges() {
        let (_dir, files) = site();
        let big = big();
        let (status, headers, body) = get(&files, "/big.bin", &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_length(&headers), big.len());
        assert_eq!(body, big);

        let (status, headers, body) =
            get(&files, "/big.bin", &[("range", "bytes=1000000-2999999")]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(content_length(&headers), 2_000_000);
        assert_eq!(body, big[1_000_000..3_000_000]);

        let (status, headers, body) = get(
            &files,
            "/big.bin",
            &[("range", "bytes=5-9,1000000-2500000")],
        )
        .await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(content_length(&headers), body.len());
        let boundary = header(&headers, "content-type")
            .strip_prefix("multipart/byteranges; boundary=")
            .unwrap()
            .to_owned();
        let parts = parts(&body, &boundary);
        assert_eq!(parts[0].1, big[5..=9]);
        assert_eq!(parts[1].1, big[1_000_000..=2_500_000]);
    }

    #[tokio::test]
    async fn large_file_body_is_chunked() {
        let (_dir, files) = site();
        let Outcome::Response(response) = outcome(&files, Method::GET, "/big.bin", &[]).await
        else {
            panic!("expected a response");
        };
        let mut body = response.into_body();
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
            assert!(chunk.len() <= CHUNK);
            total += chunk.len();
        }
        assert_eq!(total, big().len());
    }

    #[tokio::test]
    async fn other_methods_are_left_to_the_app() {
        let (_dir, files) = site();
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert!(matches!(
                outcome(&files, method, "/index.html", &[]).await,
                Outcome::NotFound
            ));
        }
    }

    #[test]
    fn paths_normalise() {
        let parse = |raw| RelPath::parse(raw);
        assert_eq!(
            parse("/a/./b//c/../d"),
            Ok(RelPath {
                parts: vec!["a".into(), "b".into(), "d".into()],
                dir: false
            })
        );
        assert!(parse("/a/..").unwrap().dir);
        assert!(parse("/a/").unwrap().dir);
        assert_eq!(parse("/a/../.."), Err(StatusCode::BAD_REQUEST));
        assert_eq!(parse("/a/.b/c"), Err(StatusCode::NOT_FOUND));
        assert_eq!(parse("relative"), Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn accept_encoding_q_values() {
        let accepted = Accepted::parse(Some("GZIP;q=0.5, br;q=0"));
        assert_eq!((accepted.gzip, accepted.br), (0.5, 0.0));
        let accepted = Accepted::parse(Some("gzip;q=0, *"));
        assert_eq!((accepted.gzip, accepted.br), (0.0, 1.0));
        let accepted = Accepted::parse(None);
        assert_eq!((accepted.gzip, accepted.br), (0.0, 0.0));
    }
}
