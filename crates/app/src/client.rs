//! Who is on the other end: the client's address (for login throttling) and whether the
//! client reached the site over HTTPS, as the web tier reports them.
//!
//! The app's TCP peer is a web server, not the client, so the client's address comes from
//! the forwarding headers, and only when the peer is one of the site's proxies
//! ([`crate::AppConfig::trusted_proxies`]); anyone else reaching the app directly could
//! otherwise pick a new address per request and never be throttled. `X-Forwarded-For` is
//! read from the right, as nginx's `real_ip_recursive` does: each proxy appends the
//! address it saw, so the rightmost entry that is not one of our own proxies is the
//! client; entries to its left were written by the client and are not believed. With
//! no usable `X-Forwarded-For`, the web server's `X-Real-IP` is used, then the TCP peer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::http::request::Parts;
use axum::http::HeaderMap;

/// The TCP peer of the connection a request arrived on, put in the request's extensions
/// by the node ([`crate::node`]). A router driven in-process has none, and then its
/// caller vouches for the forwarding headers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// What the app knows about the client of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Client {
    /// The client's address; `0.0.0.0` when nothing says (all such requests then share
    /// one throttling bucket, which errs on the side of throttling).
    pub(crate) address: IpAddr,
    /// A trusted hop said the client used plain HTTP (`X-Forwarded-Proto: http`).
    pub(crate) plain_http: bool,
}

impl Client {
    /// Reads the client from a request, believing forwarding headers only from `trusted`
    /// peers (or when there is no peer: in-process use).
    pub(crate) fn of(parts: &Parts, trusted: &[IpAddr]) -> Client {
        let peer = parts.extensions.get::<Peer>().map(|p| p.0.ip());
        Client::from_headers(&parts.headers, peer, trusted)
    }

    pub(crate) fn from_headers(
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        trusted: &[IpAddr],
    ) -> Client {
        let believed = peer.is_none_or(|p| trusted.contains(&p));
        if !believed {
            return Client {
                address: peer.unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
                plain_http: false,
            };
        }
        let address = forwarded_for(headers, trusted)
            .or_else(|| real_ip(headers))
            .or(peer)
            .unwrap_or(Ipv4Addr::UNSPECIFIED.into());
        let plain_http = headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"http"));
        Client {
            address,
            plain_http,
        }
    }
}

/// The rightmost `X-Forwarded-For` address that is not a trusted proxy (or the leftmost
/// when all are). `None` when the header is missing or an entry to be read is malformed.
fn forwarded_for(headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let value = value.to_str().ok()?;
        entries.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()));
    }
    let mut chosen = None;
    for entry in entries.iter().rev() {
        let address = parse_address(entry)?;
        chosen = Some(address);
        if !trusted.contains(&address) {
            break;
        }
    }
    chosen
}

fn real_ip(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get("x-real-ip")?.to_str().ok()?;
    parse_address(value.trim())
}

/// `192.0.2.1`, `2001:db8::1`, or either with a port (`192.0.2.1:5000`, `[2001:db8::1]:5000`).
fn parse_address(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_rightmost_untrusted_forwarded_address_is_the_client() {
        let lb = ip("10.0.0.1");
        let web = ip("10.0.0.2");
        let trusted = [lb, web];
        // The client forged an entry; the load balancer appended the real address, the
        // web server appended the load balancer's.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.1")]);
        let client = Client::from_headers(&h, Some(web), &trusted);
        assert_eq!(client.address, ip("203.0.113.9"));
        assert!(!client.plain_http);

        // All proxies on one machine: the leftmost entry, which the first hop writes.
        let h = headers(&[("x-forwarded-for", "127.0.0.1, 127.0.0.1")]);
        let local = [ip("127.0.0.1")];
        assert_eq!(
            Client::from_headers(&h, Some(local[0]), &local).address,
            ip("127.0.0.1")
        );

        // Two header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        assert_eq!(
            Client::from_headers(&h, Some(web), &trusted).address,
            ip("203.0.113.9")
        );
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
            ("x-forwarded-proto", "http"),
        ]);
        let stranger = ip("198.51.100.7");
        let client = Client::from_headers(&h, Some(stranger), &[ip("10.0.0.2")]);
        assert_eq!(client.address, stranger);
        assert!(!client.plain_http);
    }

    #[test]
    fn real_ip_then_peer_are_fallbacks() {
        let web = ip("10.0.0.2");
        let h = headers(&[("x-real-ip", "203.0.113.9"), ("x-forwarded-proto", "HTTP")]);
        let client = Client::from_headers(&h, Some(web), &[web]);
        assert_eq!(client.address, ip("203.0.113.9"));
        assert!(client.plain_http);
        let h = headers(&[("x-forwarded-for", "not an address")]);
        assert_eq!(Client::from_headers(&h, Some(web), &[web]).address, web);
        assert_eq!(
            Client::from_headers(&HeaderMap::new(), None, &[]).address,
            ip("0.0.0.0")
        );
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(
            Client::from_headers(&h, None, &[]).address,
            ip("2001:db8::1")
        );
    }
}
