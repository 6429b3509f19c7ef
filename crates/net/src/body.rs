//! The one response/request body type every role speaks.
//!
//! Roles mix bodies of different origins (a file stream, an upstream response, a
//! small error page); boxing them into one type keeps every handler's signature the
//! same without generic soup. The box costs one allocation per body, which is small
//! next to a socket write.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used throughout scaleup.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `bytes` in one piece.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A body with nothing in it (HEAD, 304, 204).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}
