//! `Server-Timing` (W3C Server Timing): each hop a response crosses adds one entry
//! saying how long it took, so a browser's developer tools show where the time went:
//!
//! ```text
//! Server-Timing: lb;dur=4.210, web;dur=3.902, app;dur=3.101, db;dur=1.240;desc="3 queries"
//! ```
//!
//! A hop measures its whole time, from the request received to the response head
//! ready, so each entry includes the entries after it (the hops below it) and the
//! network between them. Its entry goes first, before what the hop below returned,
//! which is kept: the order reads from the client inwards.
//!
//! On the hot path this costs one `String` per response, the header value itself.

use std::fmt::Write as _;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `Server-Timing`.
pub static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// One entry: a hop (or the database) and the time it took.
#[derive(Debug, Clone, Copy)]
pub struct Metric<'a> {
    /// The entry's name: `lb`, `web`, `app`, `db`.
    pub name: &'a str,
    /// How long it took.
    pub dur: Duration,
    /// A count shown as the description, `desc="3 queries"`: (count, noun).
    pub count: Option<(u64, &'a str)>,
}

impl<'a> Metric<'a> {
    /// An entry with a duration only.
    pub fn new(name: &'a str, dur: Duration) -> Metric<'a> {
        Metric {
            name,
            dur,
            count: None,
        }
    }
}

/// Puts `metrics` in front of the `Server-Timing` entries already in `headers` (what
/// the hop below returned), as one header line.
///
/// Lines from below that are not visible ASCII are dropped rather than passed on:
/// they cannot be ours.
pub fn prepend(headers: &mut HeaderMap, metrics: &[Metric<'_>]) {
    let mut value = String::with_capacity(48 * metrics.len() + 64);
    for metric in metrics {
        if !value.is_empty() {
            value.push_str(", ");
        }
        // Milliseconds with microsecond resolution, from whole microseconds (not a
        // float's formatting: 1% of the load balancer's CPU); truncation is
        // monotonic, so a hop that took longer never shows less.
        let micros = metric.dur.as_micros();
        let _ = write!(
            value,
            "{};dur={}.{:03}",
            metric.name,
            micros / 1000,
            micros % 1000
        );
        if let Some((count, noun)) = metric.count {
            let _ = write!(value, ";desc=\"{count} {noun}\"");
        }
    }
    for below in headers.get_all(&SERVER_TIMING) {
        if let Ok(below) = below.to_str() {
            if !below.trim().is_empty() {
                value.push_str(", ");
                value.push_str(below);
            }
        }
    }
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(SERVER_TIMING.clone(), value);
    }
}

/// The entries of a `Server-Timing` value as (name, duration in milliseconds), in
/// order; for tests and tools that read the header back.
pub fn parse(value: &str) -> Vec<(String, Option<f64>)> {
    value
        .split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let mut params = entry.split(';').map(str::trim);
            let name = params.next().unwrap_or_default().to_string();
            let dur = params
                .filter_map(|p| p.strip_prefix("dur="))
                .find_map(|d| d.parse().ok());
            (name, dur)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_formats_in_milliseconds() {
        let mut headers = HeaderMap::new();
        prepend(
            &mut headers,
            &[Metric::new("web", Duration::from_micros(1_234_567))],
        );
        assert_eq!(headers[&SERVER_TIMING], "web;dur=1234.567");
    }

    #[test]
    fn a_hop_goes_first_and_keeps_the_entries_below() {
        let mut headers = HeaderMap::new();
        prepend(
            &mut headers,
            &[
                Metric::new("app", Duration::from_micros(3_100)),
                Metric {
                    name: "db",
                    dur: Duration::from_micros(1_240),
                    count: Some((3, "queries")),
                },
            ],
        );
        prepend(
            &mut headers,
            &[Metric::new("web", Duration::from_micros(3_902))],
        );
        prepend(
            &mut headers,
            &[Metric::new("lb", Duration::from_micros(4_210))],
        );
        assert_eq!(
            headers[&SERVER_TIMING],
            "lb;dur=4.210, web;dur=3.902, app;dur=3.100, db;dur=1.240;desc=\"3 queries\""
        );
        assert_eq!(headers.get_all(&SERVER_TIMING).iter().count(), 1);
        assert_eq!(
            parse(headers[&SERVER_TIMING].to_str().unwrap()),
            vec![
                ("lb".to_string(), Some(4.21)),
                ("web".to_string(), Some(3.902)),
                ("app".to_string(), Some(3.1)),
                ("db".to_string(), Some(1.24)),
            ]
        );
    }

    #[test]
    fn several_lines_below_are_merged_and_opaque_ones_dropped() {
        let mut headers = HeaderMap::new();
        headers.append(&SERVER_TIMING, HeaderValue::from_static("app;dur=2"));
        headers.append(&SERVER_TIMING, HeaderValue::from_static("cache;desc=hit"));
        headers.append(
            &SERVER_TIMING,
            HeaderValue::from_bytes(b"x;desc=\"\xff\"").unwrap(),
        );
        headers.append(&SERVER_TIMING, HeaderValue::from_static(" "));
        prepend(&mut headers, &[Metric::new("web", Duration::ZERO)]);
        assert_eq!(
            headers[&SERVER_TIMING],
            "web;dur=0.000, app;dur=2, cache;desc=hit"
        );
        assert_eq!(headers.get_all(&SERVER_TIMING).iter().count(), 1);
    }
}
