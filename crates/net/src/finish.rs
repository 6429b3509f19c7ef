//! A body wrapper that reports when a response is really done.
//!
//! A response "ends" when its last byte is handed to the socket, or when the client
//! goes away midway, not when the handler returns. Access logs and latency metrics
//! both want that moment and the number of bytes sent, so they hang a callback here.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::{Body, BoxError};

/// Wraps `body`; `done(bytes_sent)` runs once, when the body is finished or dropped.
pub fn on_finish<F>(body: Body, done: F) -> Body
where
    F: FnOnce(u64) + Send + Unpin + 'static,
{
    Finish {
        inner: body,
        sent: 0,
        done: Some(done),
    }
    .boxed_unsync()
}

struct Finish<F: FnOnce(u64)> {
    inner: Body,
    sent: u64,
    done: Option<F>,
}

impl<F: FnOnce(u64) + Unpin> HttpBody for Finish<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(u64)> Drop for Finish<F> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.sent);
        }
    }
}
