//! The `Range` header (RFC 9110 §14.2): parsing `bytes=` specs and resolving them
//! against a file's length into sorted, merged, inclusive ranges.

/// More disjoint ranges than this (after coalescing) and the Range header is ignored
/// and the whole file is sent: thousands of tiny parts would cost more in part headers
/// than the file itself, a known amplification trick (RFC 9110 §14.2 allows ignoring).
pub const MAX_RANGES: usize = 64;

/// One byte-range spec of a `Range: bytes=` header, not yet checked against the length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeSpec {
    /// `a-b`, both inclusive.
    FromTo(u64, u64),
    /// `a-`: from `a` to the end.
    From(u64),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// Parses a `Range` header; `None` when it is not valid `bytes=` syntax, in which case
/// the header is ignored and the whole file sent (RFC 9110 §14.2).
pub fn parse_range(value: &str) -> Option<Vec<RangeSpec>> {
    let (unit, set) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    for spec in set.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        let (first, last) = spec.split_once('-')?;
        let (first, last) = (first.trim(), last.trim());
        specs.push(match (first.is_empty(), last.is_empty()) {
            (true, true) => return None,
            (true, false) => RangeSpec::Suffix(digits(last)?),
            (false, true) => RangeSpec::From(digits(first)?),
            (false, false) => {
                let (first, last) = (digits(first)?, digits(last)?);
                if last < first {
                    return None;
                }
                RangeSpec::FromTo(first, last)
            }
        });
    }
    (!specs.is_empty()).then_some(specs)
}

/// A decimal number made of ASCII digits only (`u64::from_str` would also take `+`).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The ranges that overlap a file of `len` bytes, as inclusive `(start, end)` pairs,
/// sorted, with overlapping and adjacent ranges merged. Empty means 416.
pub fn satisfiable(specs: &[RangeSpec], len: u64) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = specs
        .iter()
        .filter_map(|spec| match *spec {
            RangeSpec::FromTo(first, _) | RangeSpec::From(first) if first >= len => None,
            RangeSpec::FromTo(first, last) => Some((first, last.min(len - 1))),
            RangeSpec::From(first) => Some((first, len - 1)),
            RangeSpec::Suffix(0) => None,
            RangeSpec::Suffix(_) if len == 0 => None,
            RangeSpec::Suffix(n) => Some((len - n.min(len), len - 1)),
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}
