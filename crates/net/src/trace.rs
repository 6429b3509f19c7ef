//! W3C Trace Context (`traceparent`, `tracestate`): a client that traces its requests
//! (a browser's or a service's tracing library) sends `traceparent`, and every hop
//! passes it on unchanged, as a proxy that takes no part in the trace should. The
//! request id stays this site's own (`X-Request-Id`); the access logs carry the trace
//! id next to it, so a trace found in the client's tracing system leads to our lines.
//!
//! A `traceparent` that does not follow the specification's format is dropped with
//! its `tracestate` (the specification says to ignore both then), so nothing
//! malformed reaches the application or a log.

use http::header::{HeaderMap, HeaderName};

/// `traceparent`: `VERSION-TRACEID-PARENTID-FLAGS`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`: vendors' data, meaningful only with a valid `traceparent`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Drops `traceparent` and `tracestate` unless there is exactly one `traceparent`
/// and it is valid. What the first hop (and any hop a client may reach directly)
/// calls before forwarding.
pub fn check(headers: &mut HeaderMap) {
    let mut lines = headers.get_all(&TRACEPARENT).iter();
    let valid = match (lines.next(), lines.next()) {
        (None, _) => return,
        (Some(one), None) => trace_id(one.as_bytes()).is_some(),
        (Some(_), Some(_)) => false,
    };
    if !valid {
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
    }
}

/// The trace id of a request's `traceparent`, when it has one valid one.
pub fn trace_id_of(headers: &HeaderMap) -> Option<&str> {
    let mut lines = headers.get_all(&TRACEPARENT).iter();
    match (lines.next(), lines.next()) {
        (Some(one), None) => trace_id(one.as_bytes()),
        _ => None,
    }
}

/// The trace id (32 lowercase hex digits) of a valid `traceparent` value, per
/// W3C Trace Context §3.2: `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not all
/// zeros, version `ff` forbidden. A later version may append `-` and more fields;
/// version 00 may not.
pub fn trace_id(value: &[u8]) -> Option<&str> {
    if value.len() < 55 {
        return None;
    }
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zeros = |s: &[u8]| s.iter().all(|&b| b == b'0');
    let (version, trace, parent, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    let dashes = value[2] == b'-' && value[35] == b'-' && value[52] == b'-';
    let ok = dashes
        && hex(version)
        && version != b"ff"
        && hex(trace)
        && !zeros(trace)
        && hex(parent)
        && !zeros(parent)
        && hex(flags)
        && match (version, value.len()) {
            (b"00", len) => len == 55,
            (_, 55) => true,
            _ => value[55] == b'-',
        };
    if !ok {
        return None;
    }
    std::str::from_utf8(trace).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_is_valid() {
        assert_eq!(
            trace_id(GOOD.as_bytes()),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // A later version may carry more fields after a dash.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert!(trace_id(later.as_bytes()).is_some());
    }

    #[test]
    fn malformed_values_are_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff, and version 00 with more after it.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            // A later version whose extra part does not start with a dash.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            // Wrong separators, non-hex, a log-forging attempt.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\"",
        ] {
            assert_eq!(trace_id(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn check_keeps_a_valid_header_and_drops_an_invalid_one_with_its_state() {
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static(GOOD));
        headers.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
        check(&mut headers);
        assert_eq!(headers[&TRACEPARENT], GOOD);
        assert_eq!(headers[&TRACESTATE], "vendor=1");
        assert_eq!(
            trace_id_of(&headers),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );

        headers.insert(&TRACEPARENT, HeaderValue::from_static("00-nonsense"));
        check(&mut headers);
        assert!(!headers.contains_key(&TRACEPARENT));
        assert!(!headers.contains_key(&TRACESTATE));

        // Two traceparent lines: which one is meant is unknowable.
        headers.append(&TRACEPARENT, HeaderValue::from_static(GOOD));
        headers.append(&TRACEPARENT, HeaderValue::from_static(GOOD));
        assert_eq!(trace_id_of(&headers), None);
        check(&mut headers);
        assert!(!headers.contains_key(&TRACEPARENT));
    }
}
