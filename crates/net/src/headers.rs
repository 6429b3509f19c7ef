//! The headers a proxy hop owns: forwarding headers, the request id, and the
//! hop-by-hop headers that must not cross it (RFC 9110 §7.6.1); and the requests no
//! hop passes on (`CONNECT`, a missing or doubled `Host`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::pages::error_page;
use crate::Body;

/// `X-Request-Id`: one id follows a request through every hop and every log line.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-For`: the chain of client addresses.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `X-Real-IP`: the client's address as the hop that met it saw it; what the next
/// tiers (the app, the access log) take as "the client".
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers a client may send to claim another address, host or scheme. A hop that
/// does not trust its peer deletes them all; none reaches the app from a client.
const CLIENT_CLAIMS: [&str; 9] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
];

/// Makes request ids unique without a random draw per request: a random prefix per
/// process and a counter. 24 hex digits, like nginx's `$request_id` length class.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            prefix: rand::random(),
            next: AtomicU64::new(rand::random::<u32>() as u64),
        }
    }
}

impl RequestIds {
    /// The id of a request: the `X-Request-Id` it came with when that is a sane one
    /// (1 to 128 of `[A-Za-z0-9._-]`: nothing that could forge a log field or a
    /// header), else a new one. The header is set on `headers` either way.
    pub fn ensure(&self, headers: &mut HeaderMap) -> HeaderValue {
        if let Some(existing) = headers.get(&X_REQUEST_ID) {
            let bytes = existing.as_bytes();
            let sane = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
            if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(sane) {
                return existing.clone();
            }
        }
        let id = format!(
            "{:08x}{:016x}",
            self.prefix,
            self.next.fetch_add(1, Relaxed)
        );
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
            .unwrap_or(HeaderValue::from_static("-"));
        headers.insert(X_REQUEST_ID.clone(), value.clone());
        value
    }
}

/// An address block: the first address and how many leading bits its members share
/// (at most 32 for IPv4, 128 for IPv6); a single address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Block {
    /// Whether `ip` is in this block. An IPv4 address seen as IPv4-mapped IPv6
    /// (`::ffff:10.1.2.3`, what a dual-stack socket reports) counts as the IPv4
    /// address, so one `10.0.0.0/8` entry works on either kind of listener.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Addresses or blocks (`10.0.0.0/8`), for the peers whose forwarding headers a hop
/// believes.
#[derive(Debug, Clone, Default)]
pub struct Trusted(Vec<Block>);

impl Trusted {
    /// Exactly these addresses.
    pub fn addresses(ips: impl IntoIterator<Item = IpAddr>) -> Trusted {
        Trusted(
            ips.into_iter()
                .map(|ip| {
                    let addr = ip.to_canonical();
                    let prefix = if addr.is_ipv4() { 32 } else { 128 };
                    Block { addr, prefix }
                })
                .collect(),
        )
    }

    /// These blocks (a load balancer's `trusted_proxies`).
    pub fn blocks(blocks: impl IntoIterator<Item = Block>) -> Trusted {
        Trusted(blocks.into_iter().collect())
    }

    /// Whether `ip` is one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(ip))
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Makes a request's headers this hop's, in the only safe order: first the
/// hop-by-hop headers go (with those the client's `Connection` names), then the
/// forwarding headers are written, so a client can neither delete nor forge them.
///
/// From a `trusted` peer (the tier in front) `X-Forwarded-For` is kept and extended
/// and `X-Forwarded-Proto` kept, and the client is the last address that peer
/// appended; from anyone else every forwarding claim is deleted and the client is
/// the peer itself. `X-Real-IP` then names the client for the tiers behind. Returns
/// the client's address (for the access log).
///
/// A WebSocket upgrade (`Upgrade: websocket` with `Connection: upgrade`) keeps
/// exactly those two headers, rewritten, so that it can pass this hop;
/// [`crate::proxy::forward`] still passes it only on `GET` over HTTP/1.1. Any other
/// `Upgrade` goes with the hop-by-hop headers.
pub fn forwarding(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    secure: bool,
    trusted: &Trusted,
) -> IpAddr {
    let websocket = crate::tunnel::asks_websocket(headers);
    strip_hop_by_hop(headers);
    if websocket {
        crate::tunnel::set_upgrade_headers(headers);
    }
    let peer_ip = peer.ip().to_canonical();
    let believed = trusted.contains(peer_ip);
    let client = client_of(headers, peer, trusted);
    let mut chain = None;
    if believed {
        // Earlier entries are whatever the client claimed, kept for the record.
        chain = joined(headers, &X_FORWARDED_FOR);
    } else {
        let claims = picked(headers, |name| CLIENT_CLAIMS.contains(&name.as_str()));
        remove_all(headers, claims);
    }
    // An address is always a valid header value.
    let Ok(real_ip) = HeaderValue::from_str(&client.to_string()) else {
        return client;
    };
    let chain = match chain {
        Some(chain) if !chain.is_empty() => HeaderValue::from_str(&format!("{chain}, {peer_ip}")),
        // The first hop: the chain is the client, already formatted.
        _ => Ok(real_ip.clone()),
    };
    if let Ok(chain) = chain {
        headers.insert(X_FORWARDED_FOR.clone(), chain);
    }
    if !(believed && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if secure { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    headers.insert(X_REAL_IP.clone(), real_ip);
    client
}

/// The client of a request, without touching its headers: from a `trusted` peer, the
/// last address that peer appended to `X-Forwarded-For` (earlier entries are the
/// client's own claims); from anyone else, the peer itself. What a hop that answers
/// by itself (a static file) needs for its log; [`forwarding`] gives the same answer.
pub fn client_of(headers: &HeaderMap, peer: SocketAddr, trusted: &Trusted) -> IpAddr {
    let peer_ip = peer.ip().to_canonical();
    if !trusted.contains(peer_ip) {
        return peer_ip;
    }
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .next_back()
        .and_then(|line| line.to_str().ok())
        .and_then(|line| line.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer_ip)
}

/// Every line of header `name`, joined with `, ` as RFC 9110 §5.3 allows.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for value in headers.get_all(name) {
        let value = value.to_str().ok()?;
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(value);
            }
            None => out = Some(value.to_string()),
        }
    }
    out
}

/// Headers a client's `Connection` list may not remove: without `Host` a request
/// means something else.
const NEVER_HOP_BY_HOP: [HeaderName; 1] = [HOST];

/// The hop-by-hop headers of RFC 9110 §7.6.1 and the older ones still seen, with
/// `Proxy-Authorization` and `Proxy-Authenticate` (credentials for a proxy, never
/// for the site).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "keep-alive",
    "proxy-connection",
];

/// Removes hop-by-hop headers ([`HOP_BY_HOP`]), with those the `Connection` header
/// names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = {
        // The names `Connection` lists, split once (a client chooses how many).
        let listed: Vec<&[u8]> = connection_options(headers).collect();
        let is_listed = |name: &HeaderName| {
            !NEVER_HOP_BY_HOP.contains(name)
                && listed
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(name.as_str().as_bytes()))
        };
        picked(headers, |name| {
            HOP_BY_HOP.contains(&name.as_str()) || is_listed(name)
        })
    };
    remove_all(headers, doomed);
}

/// The names of `headers` that `pick` picks, each looked at once. Most messages
/// carry none of the names a hop strips, and a removal by name hashes it and probes
/// the table even for one that is absent (a `&str` name is parsed first): removing
/// each by name was a twentieth of the load balancer's user-space cycles (`perf`),
/// for the one or two fields present.
fn picked(headers: &HeaderMap, pick: impl Fn(&HeaderName) -> bool) -> Vec<HeaderName> {
    headers.keys().filter(|&n| pick(n)).cloned().collect()
}

/// Removes every field named in `names`.
fn remove_all(headers: &mut HeaderMap, names: Vec<HeaderName>) {
    for name in names {
        headers.remove(name);
    }
}

/// Whether the `Connection` header lists `option` (`close`, `upgrade`...), in any
/// of its fields, case-insensitively.
pub fn connection_has(headers: &HeaderMap, option: &str) -> bool {
    connection_options(headers).any(|o| o.eq_ignore_ascii_case(option.as_bytes()))
}

/// The options of every `Connection` field, trimmed, empty ones left out.
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|option| !option.is_empty())
}

/// Refuses what no hop should pass on: `CONNECT` (405: this is not a forward
/// proxy), and an HTTP/1.1 request with no `Host` or with two (400: RFC 9112 §3.2;
/// two hops could each pick another one). HTTP/2 names the host in `:authority`.
pub fn refuse_malformed(
    req: &Request<Incoming>,
    request_id: &HeaderValue,
) -> Option<Response<Body>> {
    if req.method() == Method::CONNECT {
        let mut resp = error_page(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not served here: this is a web site, not a proxy.",
            Some(request_id),
        );
        resp.headers_mut().insert(
            http::header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return Some(resp);
    }
    let hosts = req.headers().get_all(HOST).iter().count();
    let missing = hosts == 0 && req.version() == Version::HTTP_11;
    if hosts > 1 || missing {
        let detail = if missing {
            "The request has no Host header."
        } else {
            "The request has more than one Host header."
        };
        let mut resp = error_page(StatusCode::BAD_REQUEST, detail, Some(request_id));
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return Some(resp);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::UPGRADE;

    #[test]
    fn request_id_kept_when_sane_and_made_when_not() {
        let ids = RequestIds::default();
        let mut h = HeaderMap::new();
        h.insert(
            X_REQUEST_ID.clone(),
            HeaderValue::from_static("abc-123_x.y"),
        );
        assert_eq!(ids.ensure(&mut h), "abc-123_x.y");
        let mut h = HeaderMap::new();
        let a = ids.ensure(&mut h);
        let b = ids.ensure(&mut HeaderMap::new());
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert_eq!(h.get(&X_REQUEST_ID), Some(&a));
        for forged in ["has space", "a\"b", "x=1 rid=y", "<script>", "a,b", ""] {
            let mut h = HeaderMap::new();
            h.insert(X_REQUEST_ID.clone(), HeaderValue::from_str(forged).unwrap());
            let id = ids.ensure(&mut h);
            assert_ne!(id, forged);
            assert_eq!(h[&X_REQUEST_ID], id);
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_hop_replaces_every_client_claim() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "5.6.7.8"),
            ("forwarded", "for=9.9.9.9"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ] {
            h.insert(name, HeaderValue::from_static(value));
        }
        let client = forwarding(
            &mut h,
            addr("198.51.100.7:5000"),
            false,
            &Trusted::default(),
        );
        assert_eq!(client, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "198.51.100.7");
        assert_eq!(h[&X_REAL_IP], "198.51.100.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        for gone in ["x-forwarded-host", "forwarded", "proxy-authorization"] {
            assert!(!h.contains_key(gone), "{gone} passed");
        }
    }

    #[test]
    fn a_trusted_hop_is_believed_and_extended() {
        let lb = Trusted::addresses(["10.0.0.2".parse().unwrap()]);
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_static("1.1.1.1, 203.0.113.9"),
        );
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        let client = forwarding(&mut h, addr("10.0.0.2:4000"), false, &lb);
        assert_eq!(client, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 203.0.113.9, 10.0.0.2");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_REAL_IP], "203.0.113.9");
    }

    #[test]
    fn a_connection_header_cannot_delete_what_the_proxy_adds() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("X-Forwarded-For, X-Request-Id, Host, X-Real-IP"),
        );
        h.insert(HOST, HeaderValue::from_static("www.foobar.com"));
        let ids = RequestIds::default();
        forwarding(&mut h, addr("198.51.100.7:5000"), true, &Trusted::default());
        let id = ids.ensure(&mut h);
        assert_eq!(h[&X_FORWARDED_FOR], "198.51.100.7");
        assert_eq!(h[&X_REAL_IP], "198.51.100.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[HOST], "www.foobar.com");
        assert_eq!(h[&X_REQUEST_ID], id);
    }

    fn block(addr: &str, prefix: u8) -> Block {
        Block {
            addr: addr.parse().unwrap(),
            prefix,
        }
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(block("10.0.0.0", 8).contains(ip("10.255.1.2")));
        assert!(!block("10.0.0.0", 8).contains(ip("11.0.0.1")));
        assert!(block("192.0.2.1", 32).contains(ip("192.0.2.1")));
        assert!(!block("192.0.2.1", 32).contains(ip("192.0.2.2")));
        assert!(block("0.0.0.0", 0).contains(ip("203.0.113.9")));
        assert!(
            !block("0.0.0.0", 0).contains(ip("::1")),
            "v4 blocks hold no v6"
        );
        assert!(
            block("10.0.0.0", 8).contains(ip("::ffff:10.1.2.3")),
            "mapped v4"
        );
        assert!(block("2001:db8::", 32).contains(ip("2001:db8:1::5")));
        assert!(!block("2001:db8::", 32).contains(ip("2001:db9::5")));
        assert!(block("::", 0).contains(ip("fe80::1")));
    }

    #[test]
    fn blocks_and_addresses_are_trusted() {
        let t = Trusted::blocks([block("10.0.0.0", 8)]);
        assert!(t.contains("10.200.3.4".parse().unwrap()));
        assert!(t.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        let t = Trusted::addresses(["::ffff:192.0.2.1".parse().unwrap()]);
        assert!(t.contains("192.0.2.1".parse().unwrap()));
        assert!(!t.contains("192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn a_websocket_upgrade_is_kept_and_any_other_upgrade_stripped() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        forwarding(
            &mut h,
            addr("198.51.100.7:5000"),
            false,
            &Trusted::default(),
        );
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
        assert!(!h.contains_key("x-secret"), "named by Connection");
        assert!(h.contains_key("sec-websocket-key"), "end to end");

        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQCAAAAAAIAAAAA"),
        );
        forwarding(
            &mut h,
            addr("198.51.100.7:5000"),
            false,
            &Trusted::default(),
        );
        for gone in [
            UPGRADE,
            CONNECTION,
            HeaderName::from_static("http2-settings"),
        ] {
            assert!(!h.contains_key(&gone), "{gone} passed");
        }
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_names_any_case_in_any_line_but_never_host() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("X-One ,Host"));
        h.append(CONNECTION, HeaderValue::from_static("x-TWO"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("x-three", HeaderValue::from_static("3"));
        h.insert(HOST, HeaderValue::from_static("www.foobar.com"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-three"]);
    }
}
