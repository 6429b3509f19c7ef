//! PROXY protocol v2 (HAProxy's binary header): how a load balancer that passes TLS
//! through untouched tells the web server who the client is.
//!
//! The receiving side accepts the header only from the addresses it is told to trust
//! (the site's load balancers): from anyone else a header would let a client claim
//! any address, so such a connection is refused.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use ppp::v2::{Addresses, Builder, Command, Header, Protocol, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The 12 bytes every v2 header starts with; no HTTP request or TLS record can.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header a load balancer writes first on a connection it relays from `client`
/// (which reached it at `local`).
pub fn header(client: SocketAddr, local: SocketAddr) -> io::Result<Vec<u8>> {
    // Both addresses must be of one family; a v4 client on a v6 socket is mapped.
    let (client, local) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V6(l)) => (
            client,
            l.ip()
                .to_ipv4_mapped()
                .map(|ip| SocketAddr::new(ip.into(), l.port()))
                .unwrap_or(SocketAddr::new([0, 0, 0, 0].into(), l.port())),
        ),
        (SocketAddr::V6(c), SocketAddr::V4(l)) => match c.ip().to_ipv4_mapped() {
            Some(ip) => (SocketAddr::new(ip.into(), c.port()), local),
            // A real IPv6 client: the local address goes up to IPv6 (mixed families
            // would be written as UNSPEC and the client's address lost).
            None => (
                client,
                SocketAddr::new(l.ip().to_ipv6_mapped().into(), l.port()),
            ),
        },
        _ => (client, local),
    };
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (client, local),
    )
    .build()
}

/// The longest header accepted: the addresses plus room for TLVs. A load balancer
/// of this site writes no TLVs; anything this long is not ours. Public so the
/// property tests can check that `accept` never reads (or allocates) more.
pub const MAX_HEADER: usize = 16 + 512;

/// A warning a hostile client can trigger: written at most once a second.
static REFUSED: crate::budget::LogEvery = crate::budget::LogEvery::new();

/// Reads a v2 header if `stream` starts with one, and returns the client it names
/// and the stream with whatever was read past the header put back in front; without
/// a header the client is `peer` itself.
///
/// Only a peer in `trusted` (the load balancers) may send a header. Anyone else's
/// connection is read once: if those bytes could begin a header it is refused at
/// once with `PermissionDenied` (a TLS record or an HTTP request never starts with
/// `\r\n\r\n`), otherwise they are replayed. Nothing polls or sleeps: a client that
/// sends one byte and waits costs one pending read, and one that leaves ends it.
pub async fn accept<S: AsyncRead + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    trusted: &[IpAddr],
) -> io::Result<(SocketAddr, Replay<S>)> {
    let trusted = trusted.contains(&peer.ip().to_canonical());
    let mut head = [0u8; 16];
    let mut filled = 0;
    while filled < head.len() {
        let n = stream.read(&mut head[filled..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        let k = filled.min(SIGNATURE.len());
        if head[..k] != SIGNATURE[..k] {
            return Ok((peer, Replay::new(head[..filled].to_vec(), stream)));
        }
        if !trusted {
            if let Some(n) = REFUSED.hit() {
                tracing::warn!(
                    %peer,
                    "refused {n} connection(s) in the last second that began with a \
                     PROXY protocol header from a peer that is not a load balancer"
                );
            }
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("PROXY protocol header from {peer}, which is not a load balancer"),
            ));
        }
    }
    let len = 16 + u16::from_be_bytes([head[14], head[15]]) as usize;
    if len > MAX_HEADER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("PROXY header of {len} bytes, more than the {MAX_HEADER} accepted"),
        ));
    }
    let mut bytes = vec![0u8; len];
    bytes[..16].copy_from_slice(&head);
    stream.read_exact(&mut bytes[16..]).await?;
    let header = Header::try_from(&bytes[..]).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("bad PROXY header: {e}"))
    })?;
    let client = match (header.command, header.addresses) {
        (Command::Proxy, Addresses::IPv4(a)) => {
            SocketAddr::new(a.source_address.into(), a.source_port)
        }
        (Command::Proxy, Addresses::IPv6(a)) => {
            SocketAddr::new(a.source_address.into(), a.source_port)
        }
        // LOCAL (the balancer's own checks) or an address kind without an IP.
        _ => peer,
    };
    Ok((client, Replay::new(Vec::new(), stream)))
}

/// A stream with bytes already read from it put back in front: what the PROXY
/// header check read of a TLS handshake or an HTTP request is read again by them.
#[derive(Debug)]
pub struct Replay<S> {
    prefix: Vec<u8>,
    /// How much of `prefix` has been read again.
    pos: usize,
    inner: S,
}

impl<S> Replay<S> {
    /// `inner`, read after `prefix`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Replay<S> {
        Replay {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The inner stream, once every byte of the prefix was read again; else `Err`
    /// with the replay as it was.
    pub fn into_inner(self) -> Result<S, Replay<S>> {
        if self.pos < self.prefix.len() {
            return Err(self);
        }
        Ok(self.inner)
    }

    /// The same stream, with `inner` wrapped by `f`.
    pub fn map<T>(self, f: impl FnOnce(S) -> T) -> Replay<T> {
        Replay {
            prefix: self.prefix,
            pos: self.pos,
            inner: f(self.inner),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let rest = &self.prefix[self.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: crate::clock::ReadReady> crate::clock::ReadReady for Replay<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_read_ready(cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (client, server, peer)
    }

    #[tokio::test]
    async fn a_trusted_header_names_the_client_and_the_stream_goes_on() {
        let (mut client, server, peer) = pair().await;
        let real: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let mut bytes = header(real, "127.0.0.1:443".parse().unwrap()).unwrap();
        bytes.extend_from_slice(b"\x16\x03\x01hello");
        client.write_all(&bytes).await.unwrap();
        let (got, mut rest) = accept(server, peer, &["127.0.0.1".parse().unwrap()])
            .await
            .unwrap();
        assert_eq!(got, real);
        let mut after = [0u8; 8];
        rest.read_exact(&mut after).await.unwrap();
        assert_eq!(&after, b"\x16\x03\x01hello");
    }

    #[tokio::test]
    async fn no_header_means_the_peer_itself_and_its_bytes_are_replayed() {
        let (mut client, server, peer) = pair().await;
        client.write_all(b"\x16\x03\x01abc").await.unwrap();
        let (got, mut rest) = accept(server, peer, &[]).await.unwrap();
        assert_eq!(got, peer);
        let mut all = [0u8; 6];
        rest.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"\x16\x03\x01abc");
    }

    #[tokio::test]
    async fn a_header_from_an_untrusted_peer_is_refused_at_its_first_byte() {
        let (mut client, server, peer) = pair().await;
        // One byte that could start a header, and then nothing: no waiting for more.
        client.write_all(b"\r").await.unwrap();
        let refused = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            accept(server, peer, &["10.0.0.1".parse().unwrap()]),
        )
        .await
        .expect("refused at once, not after the head timeout");
        assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }

    #[tokio::test]
    async fn a_trusted_peer_that_leaves_mid_header_ends_the_wait() {
        let (mut client, server, peer) = pair().await;
        client.write_all(b"\r\n\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        drop(client);
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            accept(server, peer, &["127.0.0.1".parse().unwrap()]),
        )
        .await
        .expect("a closed connection ends the wait")
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn an_oversize_header_is_refused_without_reading_it() {
        let (mut client, server, peer) = pair().await;
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        client.write_all(&bytes).await.unwrap();
        let err = accept(server, peer, &["127.0.0.1".parse().unwrap()])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
