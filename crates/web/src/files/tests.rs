//! End-to-end tests of [`StaticFiles::serve`] on a small document root: what nginx
//! would answer, request by request.

use super::body::CHUNK;
use super::cache::FILE_CACHE_TTL;
use super::*;
use flate2::read::GzDecoder;
use flate2::Compression;
use http_body_util::BodyExt;
use std::io::{Read, Write};
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
    files
        .serve(&method, &uri.parse().unwrap(), &map, None)
        .await
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
        let (status, headers, body) = get(&files, "/style.css", &[("if-none-match", inm)]).await;
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
async fn a_large_file_is_served_from_its_kept_descriptor_for_a_second() {
    let (dir, files) = site();
    let (_, _, body) = get(&files, "/big.bin", &[]).await;
    assert!(body == big());
    // Replaced on disk (a new file renamed over it, as deploys do): the kept
    // descriptor still serves the old file, whole or in ranges, to several
    // downloads at once (each reads at its own offsets).
    let path = dir.path().join("big.bin");
    fs::write(dir.path().join("big.bin.new"), b"new contents").unwrap();
    fs::rename(dir.path().join("big.bin.new"), &path).unwrap();
    let (whole, range) = tokio::join!(
        get(&files, "/big.bin", &[]),
        get(&files, "/big.bin", &[("range", "bytes=1000000-2999999")]),
    );
    assert!(whole.2 == big(), "the kept descriptor's file, whole");
    assert_eq!(range.0, StatusCode::PARTIAL_CONTENT);
    assert!(range.2 == big()[1_000_000..3_000_000]);
    // After the cache's time the path is looked up again.
    tokio::time::sleep(FILE_CACHE_TTL + Duration::from_millis(100)).await;
    let (_, headers, body) = get(&files, "/big.bin", &[]).await;
    assert_eq!(body, "new contents");
    assert_eq!(content_length(&headers), 12);
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
        let (_, headers, body) = get(&files, "/style.css", &[("accept-encoding", refusal)]).await;
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

    let (_, headers, body) = get(&files, "/style.css", &[("accept-encoding", "gzip, br")]).await;
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
    std::os::unix::fs::symlink(dir.path().join("small.txt"), dir.path().join("alias.txt")).unwrap();
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
                .serve(
                    &Method::GET,
                    &path.parse().unwrap(),
                    &HeaderMap::new(),
                    None,
                )
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
    let Outcome::Response(response) = outcome(&files, Method::GET, "/big.bin", &[]).await else {
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
