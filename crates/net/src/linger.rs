//! Lingering close, as nginx does it: a server that answers before it has read the
//! request body (413 for a body over the limit, 400 for a broken one) must not close
//! the socket at once, or the kernel answers the client's next body bytes with a
//! reset that destroys the answer still unread in the client's buffer, and the
//! browser shows "connection reset" instead of the 413 page. So the write side is
//! shut (the client sees the answer end), and what the client still sends is read
//! and thrown away until it stops, for a bounded time.
//!
//! hyper owns the socket while it serves the connection; [`Lent`] gives it back to
//! the connection's task when hyper drops it, so the lingering happens inside the
//! task and still counts against the node's connection budget.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

/// The longest a closing connection lingers.
const LINGER_TIME: Duration = Duration::from_secs(5);
/// The longest it waits for the client's next bytes while lingering.
const LINGER_QUIET: Duration = Duration::from_secs(1);

/// A socket lent to hyper, returned through a channel when hyper drops it.
pub struct Lent<IO> {
    io: Option<IO>,
    back: Option<oneshot::Sender<IO>>,
}

impl<IO> Lent<IO> {
    /// Lends `io`; the receiver gets it back when the lent socket is dropped.
    pub fn new(io: IO) -> (Lent<IO>, oneshot::Receiver<IO>) {
        let (back, returned) = oneshot::channel();
        (
            Lent {
                io: Some(io),
                back: Some(back),
            },
            returned,
        )
    }

    fn inner(&mut self) -> io::Result<&mut IO> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "socket returned"))
    }
}

impl<IO> Drop for Lent<IO> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            // Nobody waiting: the socket simply closes.
            let _ = back.send(io);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Lent<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<IO: crate::clock::ReadReady> crate::clock::ReadReady for Lent<IO> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.io {
            Some(io) => io.poll_read_ready(cx),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "socket returned",
            ))),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Lent<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.inner() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.inner() {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Shuts the write side of `io`, then reads and drops what the client still sends
/// until it closes, goes quiet for [`LINGER_QUIET`], or [`LINGER_TIME`] has passed.
pub async fn close(mut io: impl AsyncRead + AsyncWrite + Unpin) {
    let _ = io.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut sink = vec![0u8; 16 * 1024];
    loop {
        let wait = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(LINGER_QUIET);
        match tokio::time::timeout(wait, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => return,
        }
    }
}
