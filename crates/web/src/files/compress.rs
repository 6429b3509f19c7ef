//! Content coding: `Accept-Encoding` negotiation, precompressed `.br`/`.gz` siblings,
//! and gzip on the fly with its bounded cache.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use flate2::{write::GzEncoder, Compression};

use super::body::{memory_segments, read_segments, Segment};

/// Files up to this size may be gzipped on the fly: the whole file is read and
/// compressed in memory, so larger compressible files should ship a precompressed
/// `.gz` or `.br` sibling.
const GZIP_MAX: u64 = 1 << 20;
use super::path::Found;
use super::{Content, Failure, Inner, Request, Resource};

/// Files smaller than this are never compressed: the gzip header and the
/// `Content-Encoding` line eat most of what could be saved (nginx's `gzip_min_length`
/// is in the same spirit).
pub(super) const COMPRESS_MIN_LEN: u64 = 256;

/// Upper bound on the bytes kept by the cache of gzipped files, so a site with many
/// compressible files cannot grow the process without limit.
const GZIP_CACHE_BUDGET: usize = 32 << 20;

/// The content coding chosen for a response.
pub(super) enum Coding {
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

impl Inner {
    /// Picks the content coding the client prefers among those available for `res`.
    pub(super) fn negotiate(&self, req: &Request, res: &Resource) -> Coding {
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
                    .map(|(file, len)| (Content::File(Arc::new(file)), len)),
            };
            if let Some((content, len)) = found {
                return Coding::Precompressed {
                    encoding,
                    content,
                    len,
                };
            }
            if encoding == "gzip" && res.len <= GZIP_MAX {
                return Coding::Gzip;
            }
        }
        Coding::Identity
    }

    /// Opens `<file><suffix>` if it exists, may be served and is not older than the
    /// file it was compressed from (an older one is stale: serving it would undo an edit).
    pub(super) fn sibling(&self, res: &Resource, suffix: &str) -> Option<(File, u64)> {
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
    pub(super) fn gzip(&self, res: &mut Resource, blocking: bool) -> io::Result<Bytes> {
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
pub(super) struct GzipCache {
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

#[cfg(test)]
mod tests {
    use super::*;

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
