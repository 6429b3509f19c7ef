//! Conditional requests (RFC 9110 §13): `If-Match`, `If-None-Match`,
//! `If-Modified-Since`, `If-Unmodified-Since`, and the `If-Range` guard of a range.

use std::time::SystemTime;

use super::{Request, Resource};

pub(super) enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// Evaluates the conditional headers in the order of RFC 9110 §13.2.2.
pub(super) fn preconditions(req: &Request, res: &Resource, weak: bool) -> Precondition {
    if let Some(list) = &req.if_match {
        if !etag_list_matches(list, &res.tag, Comparison::Strong { ours_weak: weak }) {
            return Precondition::Failed;
        }
    } else if let Some(date) = req.if_unmodified_since {
        if res.modified > date {
            return Precondition::Failed;
        }
    }
    if let Some(list) = &req.if_none_match {
        if etag_list_matches(list, &res.tag, Comparison::Weak) {
            return Precondition::NotModified;
        }
    } else if let Some(date) = req.if_modified_since {
        // A date in the future is invalid (RFC 9110 §13.1.3): a client clock ahead
        // of ours must not pin a stale copy, so it is ignored, as nginx does.
        if res.modified <= date && date <= SystemTime::now() {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// The two ways of comparing entity tags (RFC 9110 §8.8.3.2).
#[derive(Clone, Copy)]
enum Comparison {
    /// Both tags must be strong and equal; `ours_weak` says whether ours is.
    Strong { ours_weak: bool },
    /// The opaque parts must be equal, weakness ignored.
    Weak,
}

/// Whether an `If-Match`/`If-None-Match` list (or `*`) matches our tag.
fn etag_list_matches(list: &str, tag: &str, comparison: Comparison) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            return false;
        }
        let (theirs_weak, after) = match rest.strip_prefix("W/") {
            Some(after) => (true, after),
            None => (false, rest),
        };
        let Some(quoted) = after.strip_prefix('"') else {
            return false;
        };
        let Some(end) = quoted.find('"') else {
            return false;
        };
        let equal = &quoted[..end] == tag;
        let matches = match comparison {
            Comparison::Weak => equal,
            Comparison::Strong { ours_weak } => equal && !ours_weak && !theirs_weak,
        };
        if matches {
            return true;
        }
        rest = &quoted[end + 1..];
    }
}

/// Whether the `If-Range` validator still describes the file, so the range may be
/// sent (RFC 9110 §13.1.5): a strong ETag match, or exactly our `Last-Modified`.
pub(super) fn if_range_holds(value: &str, res: &Resource) -> bool {
    let value = value.trim();
    if let Some(quoted) = value.strip_prefix('"') {
        quoted.strip_suffix('"') == Some(&*res.tag)
    } else if value.starts_with("W/") {
        false
    } else {
        httpdate::parse_http_date(value).is_ok_and(|date| date == res.modified)
    }
}
