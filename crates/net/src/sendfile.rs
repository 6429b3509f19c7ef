//! Files sent by `sendfile(2)`, from the page cache to the socket, through hyper.
//!
//! hyper writes every byte of a response itself, from the body's frames: it has no
//! way to let the kernel send a body from a file. Copying a file through user space
//! instead (a read into a buffer, then the socket's write copying it again) was 28%
//! of the web server's CPU on 1 MiB downloads (perf: `_copy_from_iter` 18%,
//! `_copy_to_iter` 9%); nginx sends it with `sendfile`.
//!
//! So a large file on a plain HTTP/1 connection is given to hyper as *stand-ins*:
//! frames whose bytes are slices of one static buffer that nobody reads, each
//! announced first in the connection's [`Outbox`] with the file and range it stands
//! for. The connection's socket, a [`FileOut`], knows those slices by their address
//! when hyper writes them, and sends as many bytes of the file by `sendfile` in their
//! place. hyper frames, counts and orders them like any body bytes (its
//! `Content-Length` check, a pipelined next answer, the access log's byte count), so
//! nothing above the socket changes.
//!
//! The head written right before a file's first stand-in goes with `MSG_MORE`, so
//! it leaves in the same segment as the file's first bytes (nginx's `tcp_nopush`).
//! Sent alone (the socket has `TCP_NODELAY`), it was a small segment of its own, and
//! the file's bytes then left paced by the client's ACKs, from the client's side of
//! the loopback: wrk spent 520-600 µs of kernel time per 1 MiB answer instead of
//! 230-260, and the machine served 2,400-2,800 downloads a second instead of
//! 3,800-5,000.
//!
//! This relies on hyper handing the frames' `Bytes` to the socket uncopied, which its
//! queued write strategy does; `writev(true)` on the HTTP/1 builder pins that
//! strategy. Had it copied them, the stand-ins' zeros would go out: the web tests
//! compare downloaded files with nginx's byte for byte. A stand-in written with no
//! file announced is an error, never zeros.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The most one stand-in frame covers. Its buffer is never touched, so it costs
/// address space, not memory.
pub const STAND_IN_MAX: usize = 1 << 20;

/// What stand-in frames are sliced from.
static STAND_IN: [u8; STAND_IN_MAX] = [0; STAND_IN_MAX];

/// The files whose stand-ins a connection's answers gave hyper and its socket has
/// not sent yet, in order.
#[derive(Clone, Debug, Default)]
pub struct Outbox(Arc<Mutex<VecDeque<Job>>>);

#[derive(Debug)]
struct Job {
    file: Arc<File>,
    offset: u64,
    left: u64,
}

impl Outbox {
    /// Announces that the next `len` stand-in bytes this connection writes are `file`
    /// from `offset`. Call it right before giving hyper the first of their
    /// [`stand_in`] frames (an announced range whose stand-ins never reach hyper
    /// would be sent in the place of the next one's).
    pub fn announce(&self, file: &Arc<File>, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.jobs().push_back(Job {
            file: Arc::clone(file),
            offset,
            left: len,
        });
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A frame of `len` stand-in bytes (at most [`STAND_IN_MAX`]).
pub fn stand_in(len: usize) -> Bytes {
    Bytes::from_static(&STAND_IN[..len.min(STAND_IN_MAX)])
}

/// Whether `buf` is (a part of) a stand-in frame.
fn is_stand_in(buf: &[u8]) -> bool {
    let start = STAND_IN.as_ptr() as usize;
    let at = buf.as_ptr() as usize;
    !buf.is_empty() && (start..start + STAND_IN_MAX).contains(&at)
}

/// A plain connection's socket: writes go to it as usual, except stand-ins, which
/// become `sendfile` calls for the files announced in its [`Outbox`].
#[derive(Debug)]
pub struct FileOut {
    tcp: TcpStream,
    /// `None` for the connections of a role that sends no files: writes pass through.
    outbox: Option<Outbox>,
}

impl FileOut {
    pub fn new(tcp: TcpStream, outbox: Option<Outbox>) -> FileOut {
        FileOut { tcp, outbox }
    }

    /// The socket, for a connection parked between rounds (its outbox is empty then:
    /// every announced file was sent with its answer).
    pub fn into_tcp(self) -> TcpStream {
        self.tcp
    }

    /// Sends up to `want` bytes of the first announced file.
    fn poll_send_file(&self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let Some(outbox) = &self.outbox else {
            return Poll::Ready(Err(unannounced()));
        };
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut jobs = outbox.jobs();
            let Some(job) = jobs.front_mut() else {
                return Poll::Ready(Err(unannounced()));
            };
            let count = usize::try_from(job.left).unwrap_or(usize::MAX).min(want);
            let sent = self.tcp.try_io(Interest::WRITABLE, || {
                let offset = Some(&mut job.offset);
                Ok(rustix::fs::sendfile(&self.tcp, &*job.file, offset, count)?)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file became shorter while it was being sent",
                    )))
                }
                Ok(n) => {
                    job.left -= n as u64;
                    if job.left == 0 {
                        jobs.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                // Not writable after all: readiness was cleared, wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `bufs` with `MSG_MORE`: the kernel waits for what follows (the file's
    /// bytes, sent next) before it sends a segment.
    fn poll_write_more(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let written = self.tcp.try_io(Interest::WRITABLE, || {
                let mut control = SendAncillaryBuffer::default();
                Ok(sendmsg(&self.tcp, bufs, &mut control, SendFlags::MORE)?)
            });
            match written {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }
}

fn unannounced() -> io::Error {
    io::Error::other("stand-in bytes written with no file announced for them")
}

impl AsyncRead for FileOut {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl crate::clock::ReadReady for FileOut {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_read_ready(cx)
    }
}

impl AsyncWrite for FileOut {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// The bytes before the first stand-in are written as they are; a stand-in at the
    /// front is sent from its file. Each call does one or the other, and says how
    /// much it wrote, as a partial write would.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.outbox.is_none() {
            return Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        }
        let plain = bufs.iter().take_while(|b| !is_stand_in(b)).count();
        match bufs.get(plain) {
            Some(stand_in) if plain == 0 => self.poll_send_file(cx, stand_in.len()),
            // A head right before a file: held back (`MSG_MORE`) to go out with the
            // file's first bytes, as nginx's `tcp_nopush` does.
            Some(_) => self.poll_write_more(cx, &bufs[..plain]),
            None => Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(outbox: Option<Outbox>) -> (FileOut, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (FileOut::new(server, outbox), client)
    }

    fn file_of(bytes: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        Arc::new(file)
    }

    /// Writes `bufs` to the end, as hyper's queued writes do.
    async fn write_all(out: &mut FileOut, bufs: &[Bytes]) -> io::Result<()> {
        let mut bufs: VecDeque<Bytes> = bufs.iter().cloned().collect();
        while !bufs.is_empty() {
            let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            let n = std::future::poll_fn(|cx| Pin::new(&mut *out).poll_write_vectored(cx, &slices))
                .await?;
            let mut n = n;
            while n > 0 {
                let front = bufs.front_mut().unwrap();
                let step = n.min(front.len());
                let _ = front.split_to(step);
                n -= step;
                if front.is_empty() {
                    bufs.pop_front();
                }
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn stand_ins_go_out_as_the_announced_file_ranges_in_order() {
        let outbox = Outbox::default();
        let (mut out, mut client) = pair(Some(outbox.clone())).await;
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = file_of(&content);
        // A head, a range of the file in two frames, literal bytes, another range.
        outbox.announce(&file, 10, 2_000_000);
        let frames = [
            Bytes::from_static(b"HEAD\r\n"),
            stand_in(STAND_IN_MAX),
            stand_in(2_000_000 - STAND_IN_MAX),
            Bytes::from_static(b"--"),
        ];
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all(&mut out, &frames).await.unwrap();
        outbox.announce(&file, 2_999_990, 10);
        write_all(&mut out, &[stand_in(10)]).await.unwrap();
        out.shutdown().await.unwrap();
        drop(out);
        let got = reader.await.unwrap();
        let mut want = b"HEAD\r\n".to_vec();
        want.extend_from_slice(&content[10..2_000_010]);
        want.extend_from_slice(b"--");
        want.extend_from_slice(&content[2_999_990..]);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the bytes sent are not the file's");
        assert!(outbox.jobs().is_empty());
    }

    #[tokio::test]
    async fn a_stand_in_with_no_file_announced_is_an_error_not_zeros() {
        let (mut out, _client) = pair(Some(Outbox::default())).await;
        let e = write_all(&mut out, &[stand_in(100)]).await.unwrap_err();
        assert!(e.to_string().contains("no file announced"), "{e}");
        // A connection of a role that sends no files has no outbox: plain writes.
        let (mut out, _client) = pair(None).await;
        write_all(&mut out, &[Bytes::from_static(b"plain")])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_file_shorter_than_announced_is_an_error() {
        let outbox = Outbox::default();
        let (mut out, _client) = pair(Some(outbox.clone())).await;
        outbox.announce(&file_of(b"short"), 0, 100);
        let e = write_all(&mut out, &[stand_in(100)]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }
}
