//! The headers a proxy hop owns: forwarding headers, the request id, and the
//! hop-by-hop headers that must not cross it (RFC 9110 §7.6.1).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

/// `X-Request-Id`: one id follows a request through every hop and every log line.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-For`: the chain of client addresses.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

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
    /// The id of a request: the client's `X-Request-Id` when it sent a sane one,
    /// else a new one. The header is set on `headers` either way.
    pub fn ensure(&self, headers: &mut HeaderMap) -> HeaderValue {
        if let Some(existing) = headers.get(&X_REQUEST_ID) {
            let bytes = existing.as_bytes();
            if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
            {
                return existing.clone();
            }
        }
        let id = format!(
            "{:08x}{:016x}",
            self.prefix,
            self.next.fetch_add(1, Relaxed)
        );
        let value = HeaderValue::from_str(&id).expect("hex is a valid header value");
        headers.insert(X_REQUEST_ID.clone(), value.clone());
        value
    }
}

/// Adds this hop's client to `X-Forwarded-For` and sets `X-Forwarded-Proto` unless a
/// trusted earlier hop did (`trust_proto`).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    proto: &'static str,
    trust_proto: bool,
) {
    let ip = peer.ip().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(chain) if !chain.is_empty() => format!("{chain}, {ip}"),
        _ => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !(trust_proto && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_kept_when_sane_and_made_when_not() {
        let ids = RequestIds::default();
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("abc-123"));
        assert_eq!(ids.ensure(&mut h), "abc-123");
        let mut h = HeaderMap::new();
        let a = ids.ensure(&mut h);
        let b = ids.ensure(&mut HeaderMap::new());
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert_eq!(h.get(&X_REQUEST_ID), Some(&a));
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("has space"));
        assert_ne!(ids.ensure(&mut h), "has space");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "10.0.0.1:5000".parse().unwrap(), "http", false);
        add_forwarded(&mut h, "10.0.0.2:5000".parse().unwrap(), "http", true);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
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
}
