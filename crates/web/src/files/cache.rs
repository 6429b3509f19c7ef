//! The open-file cache (nginx's `open_file_cache`): small files kept in memory with
//! their validators and precompressed siblings, larger ones as an open descriptor
//! with their validators, keyed by request path and answered without the file
//! system for `FILE_CACHE_TTL` after they were found.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::body::read_whole;
use super::compress::COMPRESS_MIN_LEN;
use super::path::RelPath;
use super::{Content, Inner, Request, Resource};

/// Files up to this size are kept in memory by the open-file cache (nginx's
/// `open_file_cache`), together with their validators and precompressed siblings, so a
/// hot small file is served without a trip to the blocking pool.
const CACHE_FILE_MAX: u64 = 64 * 1024;

/// Upper bound on the bytes kept by the open-file cache.
const FILE_CACHE_BUDGET: usize = 32 << 20;

/// What one cache entry is charged beyond its bodies, so many empty files cannot
/// grow the cache without limit either.
const FILE_CACHE_ENTRY_OVERHEAD: usize = 256;

/// What a kept descriptor is charged: the cache holds at most 256 of them, a small
/// share of the node's descriptors (its connection budget is sized from the same
/// limit). A stale entry keeps its descriptor until the path is looked up again or
/// the cache starts over, so a deleted file's space may be held that long (as with
/// nginx's `open_file_cache`).
const DESCRIPTOR_COST: usize = FILE_CACHE_BUDGET / 256;

/// How long a cached file is served without looking at the file system again: a
/// file changed on disk is served stale for at most this long.
pub(super) const FILE_CACHE_TTL: Duration = Duration::from_secs(1);

/// The precompressed siblings of a cached file that may be served (present, not
/// stale), read into memory.
#[derive(Debug, Default)]
pub(super) struct Siblings {
    br: Option<Bytes>,
    gz: Option<Bytes>,
}

impl Siblings {
    pub(super) fn get(&self, suffix: &str) -> Option<&Bytes> {
        match suffix {
            ".br" => self.br.as_ref(),
            _ => self.gz.as_ref(),
        }
    }
}

/// A file as it was found on disk at `checked`: a small one served from memory
/// (`Content::Memory`, its siblings read), a larger one from its open descriptor.
struct CachedFile {
    checked: Instant,
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
    /// A copy sharing this resource's bytes or descriptor.
    fn share(&self) -> Resource {
        let content = match &self.content {
            Content::Memory(bytes) => Content::Memory(bytes.clone()),
            Content::File(file) => Content::File(Arc::clone(file)),
        };
        Resource {
            path: Arc::clone(&self.path),
            content,
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
        }
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
        let body = match &self.resource.content {
            Content::Memory(bytes) => bytes.len(),
            Content::File(_) => DESCRIPTOR_COST,
        };
        body + siblings + key.len() + FILE_CACHE_ENTRY_OVERHEAD
    }
}

/// Small files keyed by the normalised request path (nginx's `open_file_cache`).
#[derive(Debug, Default)]
pub(super) struct FileCache {
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

impl Inner {
    /// A fresh cache entry for `req`, as a resource served from memory.
    pub(super) fn cached(&self, path: &RelPath) -> Option<Resource> {
        let entry = self
            .file_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&path.key())?;
        Some(entry.resource.share())
    }

    /// Reads a small file (and its precompressed siblings) into memory and caches it
    /// under the request path; returns the resource to serve this request from. A
    /// larger file is cached as its open descriptor when it has no content coding to
    /// choose (not compressible: images, media, archives, the large downloads); a
    /// file that cannot be cached is returned as it came, unread.
    pub(super) fn remember(&self, req: &Request, mut res: Resource) -> Resource {
        let Content::File(file) = &res.content else {
            return res;
        };
        if res.len > CACHE_FILE_MAX {
            if !res.compressible {
                self.keep(req, &res);
            }
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
        self.keep(req, &res);
        res
    }

    fn keep(&self, req: &Request, res: &Resource) {
        let entry = CachedFile {
            checked: Instant::now(),
            resource: res.share(),
        };
        self.file_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(req.path.key(), Arc::new(entry));
    }
}
