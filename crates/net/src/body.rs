//! The one response/request body type every role speaks.
//!
//! Roles mix bodies of different origins (a file stream, an upstream response, a
//! small error page); boxing them into one type keeps every handler's signature the
//! same without generic soup. The box costs one allocation per body, which is small
//! next to a socket write.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used throughout scaleup.
/// Not `Sync`: no body is read from two threads at once, and requiring it would
/// shut out bodies that are not (axum's, for one).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes` in one piece.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body with nothing in it (HEAD, 304, 204).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
