//! Properties of the `Range` header parser (`web::files::range`) and of what the
//! static-file handler sends for it: the one header that makes the web server slice
//! files at offsets a client chooses.
//!
//! - any header value: no panic; the parsed specs are no more than the header's `-`s;
//!   the resolved ranges lie inside the file, sorted, disjoint and not adjacent, no
//!   more of them than specs, and covering exactly the bytes the specs cover;
//! - a well-formed single range agrees with a simple reference model of RFC 9110;
//! - through `StaticFiles::serve`: 200, 206 or 416 only, every `Content-Range` inside
//!   the file, every body byte the file's byte at that offset, and never more than
//!   `MAX_RANGES` parts.
//!
//! The number of cases comes from `PROPTEST_CASES` (proptest's default, 256, when it is
//! unset); `bench/fuzz` runs this file with 100,000.

use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;
use proptest::prelude::*;
use web::files::range::{parse_range, satisfiable, RangeSpec, MAX_RANGES};
use web::files::{Outcome, StaticFiles};

/// Lengths the resolved ranges are checked against: the edges and a few in between.
fn file_len() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(1), 0..200u64, any::<u64>(), Just(u64::MAX)]
}

/// A number as a client could write it: small, near the file sizes used, huge, or
/// with leading zeros.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => (0..300u64).prop_map(|n| n.to_string()),
        5 => (0..6000u64).prop_map(|n| n.to_string()),
        5 => any::<u64>().prop_map(|n| n.to_string()),
        5 => (0..300u64).prop_map(|n| format!("000{n}")),
        // One past u64::MAX: not a number we can hold, so the header is ignored.
        1 => Just("18446744073709551616".to_owned()),
    ]
}

/// A spec as RFC 9110 writes it, with the optional whitespace around it.
fn valid_spec() -> impl Strategy<Value = String> {
    let ws = || prop::sample::select(&["", "", " ", "\t", "  "][..]);
    prop_oneof![
        (number(), number(), ws(), ws()).prop_map(|(a, b, w1, w2)| {
            // Backwards specs make the whole header invalid: keep them rare.
            let (a, b) = match (a.parse::<u128>(), b.parse::<u128>()) {
                (Ok(x), Ok(y)) if x > y => (b, a),
                _ => (a, b),
            };
            format!("{w1}{a}-{b}{w2}")
        }),
        (number(), ws()).prop_map(|(a, w)| format!("{a}-{w}")),
        (number(), ws()).prop_map(|(n, w)| format!("{w}-{n}")),
    ]
}

/// A spec, or something that is not one.
fn spec() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => valid_spec(),
        1 => Just(String::new()),
        1 => Just("-".to_owned()),
        1 => Just("1-2-3".to_owned()),
        1 => Just("+1-2".to_owned()),
        1 => Just("5-1".to_owned()),
        1 => "[0-9, -]{1,6}",
    ]
}

/// Many disjoint ranges, `width` bytes every `step` from `start` (in any order), so
/// that they stay apart after merging: the multipart cap is reached.
fn stride() -> impl Strategy<Value = String> {
    (0..50u64, 2..80u64, 1..3u64, 2..120usize, any::<bool>()).prop_map(
        |(start, step, width, count, reverse)| {
            let width = width.min(step - 1);
            let mut specs: Vec<String> = (0..count as u64)
                .map(|i| {
                    let a = start + i * step;
                    format!("{a}-{}", a + width - 1)
                })
                .collect();
            if reverse {
                specs.reverse();
            }
            format!("bytes={}", specs.join(","))
        },
    )
}

/// `Range` values: `bytes=` lists of one to a few hundred specs, mostly valid ones.
fn range_header() -> impl Strategy<Value = String> {
    let count = || prop_oneof![1..4usize, 1..200usize];
    prop_oneof![
        2 => stride(),
        3 => (
            prop::sample::select(&["bytes", "BYTES", "Bytes", " bytes "][..]),
            count().prop_flat_map(|n| proptest::collection::vec(valid_spec(), n)),
            prop::sample::select(&[",", ", ", " ,", ",,"][..]),
        )
            .prop_map(|(unit, specs, sep)| format!("{unit}={}", specs.join(sep))),
        1 => (
            prop::sample::select(&["bytes", "BYTES", " bytes ", "items", ""][..]),
            count().prop_flat_map(|n| proptest::collection::vec(spec(), n)),
            prop::sample::select(&[",", ", ", " ,", ",,"][..]),
        )
            .prop_map(|(unit, specs, sep)| format!("{unit}={}", specs.join(sep))),
    ]
}

/// The bytes of a file of `len` bytes that `specs` ask for, as a bitmap (small files).
fn covered(specs: &[RangeSpec], len: u64) -> Vec<bool> {
    let mut map = vec![false; len as usize];
    for spec in specs {
        let (from, to) = match *spec {
            RangeSpec::FromTo(a, b) => (a, b.saturating_add(1)),
            RangeSpec::From(a) => (a, len),
            RangeSpec::Suffix(n) => (len.saturating_sub(n), len),
        };
        for byte in map
            .iter_mut()
            .take(to.min(len) as usize)
            .skip(from as usize)
        {
            *byte = true;
        }
    }
    map
}

fn check_resolved(specs: &[RangeSpec], len: u64) -> Result<(), TestCaseError> {
    let ranges = satisfiable(specs, len);
    prop_assert!(ranges.len() <= specs.len());
    for (i, &(start, end)) in ranges.iter().enumerate() {
        prop_assert!(start <= end && end < len, "({start}, {end}) of {len}");
        if i > 0 {
            let (_, before) = ranges[i - 1];
            prop_assert!(start > before + 1, "not merged: {ranges:?}");
        }
    }
    if len <= 300 {
        let mut map = vec![false; len as usize];
        for &(start, end) in &ranges {
            for byte in &mut map[start as usize..=end as usize] {
                *byte = true;
            }
        }
        prop_assert_eq!(
            map,
            covered(specs, len),
            "ranges {:?} of {:?}",
            ranges,
            specs
        );
    }
    Ok(())
}

/// A single range and the answer RFC 9110 §14.1.2 gives for it, written out plainly.
#[derive(Debug, Clone)]
enum Single {
    FromTo(u64, u64),
    From(u64),
    Suffix(u64),
}

fn single() -> impl Strategy<Value = Single> {
    let n = || prop_oneof![0..1000u64, any::<u64>()];
    prop_oneof![
        (n(), n()).prop_map(|(a, b)| Single::FromTo(a.min(b), a.max(b))),
        n().prop_map(Single::From),
        n().prop_map(Single::Suffix),
    ]
}

/// The reference: `None` is 416, `Some((first, last))` the bytes sent.
fn reference(range: &Single, len: u64) -> Option<(u64, u64)> {
    match *range {
        Single::FromTo(first, _) | Single::From(first) if first >= len => None,
        Single::FromTo(first, last) => Some((first, last.min(len - 1))),
        Single::From(first) => Some((first, len - 1)),
        Single::Suffix(0) => None,
        Single::Suffix(_) if len == 0 => None,
        Single::Suffix(n) if n >= len => Some((0, len - 1)),
        Single::Suffix(n) => Some((len - n, len - 1)),
    }
}

/// Small files served from one document root, and a runtime to ask for them.
struct Site {
    _dir: tempfile::TempDir,
    files: StaticFiles,
    runtime: tokio::runtime::Runtime,
    /// (name, contents); every byte differs from its neighbours, so a wrong offset
    /// shows.
    contents: Vec<(String, Vec<u8>)>,
}

static SITE: LazyLock<Site> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let mut contents = Vec::new();
    // Small enough for the open-file cache: answered without the blocking pool.
    for len in [0usize, 1, 2, 100, 300, 5000] {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let name = format!("f{len}.bin");
        std::fs::write(dir.path().join(&name), &bytes).unwrap();
        contents.push((name, bytes));
    }
    let files = StaticFiles::new(dir.path()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Site {
        _dir: dir,
        files,
        runtime,
        contents,
    }
});

/// A `bytes a-b/len` Content-Range value.
fn content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.strip_prefix("bytes ")?;
    let (range, len) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, len.parse().ok()?))
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `hay` cut at every `needle`.
fn split<'a>(mut hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match find(hay, needle) {
            Some(at) => {
                let piece = &hay[..at];
                hay = &hay[at + needle.len()..];
                Some(piece)
            }
            None => {
                done = true;
                Some(hay)
            }
        }
    })
}

proptest! {
    #[test]
    fn any_value_parses_without_panic_and_resolves_inside_the_file(
        value in prop_oneof![any::<String>(), "[bytes=0-9, \t-]{0,40}", range_header()],
        len in file_len(),
    ) {
        if let Some(specs) = parse_range(&value) {
            prop_assert!(!specs.is_empty());
            prop_assert!(specs.len() <= value.matches('-').count());
            check_resolved(&specs, len)?;
        }
    }

    #[test]
    fn a_single_range_agrees_with_the_reference(
        range in single(),
        len in file_len(),
        unit in prop::sample::select(&["bytes", "BYTES", " bytes"][..]),
        ws in prop::sample::select(&["", " ", "\t"][..]),
    ) {
        let (value, spec) = match range {
            Single::FromTo(a, b) => (format!("{unit}={ws}{a}-{b}{ws}"), RangeSpec::FromTo(a, b)),
            Single::From(a) => (format!("{unit}={ws}{a}-"), RangeSpec::From(a)),
            Single::Suffix(n) => (format!("{unit}=-{n}{ws}"), RangeSpec::Suffix(n)),
        };
        prop_assert_eq!(parse_range(&value), Some(vec![spec]));
        let expected: Vec<(u64, u64)> = reference(&range, len).into_iter().collect();
        prop_assert_eq!(satisfiable(&[spec], len), expected);
    }

    #[test]
    fn a_backwards_range_is_ignored(a in 1..u64::MAX, d in 1..1000u64) {
        let b = a.saturating_sub(d);
        prop_assume!(b < a);
        prop_assert_eq!(parse_range(&format!("bytes={a}-{b}")), None);
    }

    #[test]
    fn served_ranges_are_the_files_bytes_and_bounded(
        value in range_header(),
        which in any::<prop::sample::Index>(),
    ) {
        let Ok(header) = HeaderValue::from_str(&value) else {
            return Ok(());
        };
        let site = &*SITE;
        let (name, file) = &site.contents[which.index(site.contents.len())];
        let len = file.len() as u64;
        let uri: Uri = format!("/{name}").parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, header);
        let (status, headers, body) = site.runtime.block_on(async {
            let Outcome::Response(response) =
                site.files.serve(&Method::GET, &uri, &headers, None).await
            else {
                panic!("{uri} exists");
            };
            let (parts, body) = response.into_parts();
            let body: Bytes = body.collect().await.unwrap().to_bytes();
            (parts.status, parts.headers, body)
        });
        // What the parser and resolver say must happen, with the handler's cap.
        let resolved = parse_range(&value).map(|specs| satisfiable(&specs, len));
        let expected = match &resolved {
            None => StatusCode::OK,
            Some(r) if r.is_empty() => StatusCode::RANGE_NOT_SATISFIABLE,
            Some(r) if r.len() > MAX_RANGES => StatusCode::OK,
            Some(_) => StatusCode::PARTIAL_CONTENT,
        };
        prop_assert_eq!(status, expected, "Range: {}", value);
        match status {
            StatusCode::OK => prop_assert_eq!(&body[..], &file[..]),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let unsatisfied = format!("bytes */{len}");
                prop_assert_eq!(headers[CONTENT_RANGE].to_str().unwrap(), unsatisfied.as_str());
            }
            _ => {
                let ranges = resolved.unwrap();
                let content_type = headers[CONTENT_TYPE].to_str().unwrap();
                if ranges.len() == 1 {
                    let (a, b, total) =
                        content_range(headers[CONTENT_RANGE].to_str().unwrap()).unwrap();
                    prop_assert!(a <= b && b < len && total == len);
                    prop_assert_eq!(&body[..], &file[a as usize..=b as usize]);
                } else {
                    let boundary = content_type
                        .strip_prefix("multipart/byteranges; boundary=")
                        .unwrap();
                    let delimiter = format!("\r\n--{boundary}");
                    let mut parts = 0;
                    // Each part: delimiter, CRLF, headers, CRLF CRLF, data; then the
                    // closing delimiter followed by `--`.
                    let mut pieces = split(&body, delimiter.as_bytes());
                    prop_assert!(pieces.next().is_some_and(<[u8]>::is_empty));
                    for piece in pieces {
                        if piece == b"--\r\n" {
                            break;
                        }
                        let head_end = find(piece, b"\r\n\r\n").unwrap();
                        let head = std::str::from_utf8(&piece[..head_end]).unwrap();
                        let value = head.split("Content-Range: ").nth(1).unwrap();
                        let (a, b, total) = content_range(value).unwrap();
                        prop_assert!(a <= b && b < len && total == len);
                        prop_assert_eq!((a, b), ranges[parts]);
                        prop_assert_eq!(&piece[head_end + 4..], &file[a as usize..=b as usize]);
                        parts += 1;
                    }
                    prop_assert!(parts == ranges.len() && parts <= MAX_RANGES);
                }
            }
        }
    }
}
