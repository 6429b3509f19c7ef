//! Path safety: the request path decoded and normalised so it cannot climb out of
//! the root or name a hidden file, and its resolution on disk, which refuses symlinks
//! leading out of the root, hidden targets and anything that is not a regular file or
//! a directory.

use std::fs::{self, File, Metadata};
use std::path::{Component, Path, PathBuf};

use http::StatusCode;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use super::{At, Failure, Inner};

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

/// A request path after percent-decoding and removing `.`/`..`: guaranteed not to
/// climb above the root and not to name a hidden file.
#[derive(Debug, PartialEq)]
pub(super) struct RelPath {
    /// The path components below the root, decoded; none is empty, `.`, `..` or hidden.
    pub(super) parts: Vec<String>,
    /// The request asked for a directory (trailing `/`), so the index file is served.
    pub(super) dir: bool,
}

impl RelPath {
    /// Decodes and normalises a raw request path.
    ///
    /// 400 for a path nginx would also refuse (NUL, invalid UTF-8, a backslash, `..`
    /// above the root), 404 for a hidden component (dotfiles may hold secrets such as
    /// `.env` or `.git`).
    pub(super) fn parse(raw: &str) -> Result<Self, StatusCode> {
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
    pub(super) fn impossible(&self) -> bool {
        self.parts.iter().any(|part| part.len() > NAME_MAX)
    }

    /// The cache key: the normalised path, with the trailing slash of a directory.
    pub(super) fn key(&self) -> String {
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
    pub(super) fn directory_location(&self, query: Option<&str>) -> String {
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
pub(super) enum Found {
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

impl Inner {
    /// Resolves `path` through symlinks and opens it if it may be served.
    pub(super) fn find(&self, path: &Path) -> Result<Found, Failure> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
