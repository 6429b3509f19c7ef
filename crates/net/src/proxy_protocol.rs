//! PROXY protocol v2 (HAProxy's binary header): how a load balancer that passes TLS
//! through untouched tells the web server who the client is.
//!
//! The receiving side accepts the header only from the addresses it is told to trust
//! (the site's load balancers): from anyone else a header would let a client claim
//! any address, so such a connection is refused.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::v2::{Addresses, Builder, Command, Header, Protocol, Version};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

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
        (SocketAddr::V6(c), SocketAddr::V4(_)) => match c.ip().to_ipv4_mapped() {
            Some(ip) => (SocketAddr::new(ip.into(), c.port()), local),
            None => (
                client,
                SocketAddr::new(local.ip().to_canonical(), local.port()),
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

/// Reads a v2 header if `stream` starts with one, and returns the client it names;
/// without a header the client is `peer` itself. A header from a peer not in
/// `trusted` is refused with `PermissionDenied`.
pub async fn accept(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[IpAddr],
) -> io::Result<SocketAddr> {
    let mut probe = [0u8; 16];
    // Wait for enough bytes to tell; bounded by the caller's handshake timeout.
    loop {
        let n = stream.peek(&mut probe).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let k = n.min(SIGNATURE.len());
        if probe[..k] != SIGNATURE[..k] {
            return Ok(peer);
        }
        if n >= 16 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if !trusted.contains(&peer.ip().to_canonical()) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("PROXY protocol header from {peer}, which is not a load balancer"),
        ));
    }
    let len = u16::from_be_bytes([probe[14], probe[15]]) as usize;
    let mut bytes = vec![0u8; 16 + len];
    stream.read_exact(&mut bytes).await?;
    let header = Header::try_from(&bytes[..]).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("bad PROXY header: {e}"))
    })?;
    Ok(match (header.command, header.addresses) {
        (Command::Proxy, Addresses::IPv4(a)) => {
            SocketAddr::new(a.source_address.into(), a.source_port)
        }
        (Command::Proxy, Addresses::IPv6(a)) => {
            SocketAddr::new(a.source_address.into(), a.source_port)
        }
        // LOCAL (the balancer's own checks) or an address kind without an IP.
        _ => peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

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
        let (mut client, mut server, peer) = pair().await;
        let real: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let mut bytes = header(real, "127.0.0.1:443".parse().unwrap()).unwrap();
        bytes.extend_from_slice(b"\x16\x03\x01hello");
        client.write_all(&bytes).await.unwrap();
        let got = accept(&mut server, peer, &["127.0.0.1".parse().unwrap()])
            .await
            .unwrap();
        assert_eq!(got, real);
        let mut rest = [0u8; 8];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x16\x03\x01hello");
    }

    #[tokio::test]
    async fn no_header_means_the_peer_itself() {
        let (mut client, mut server, peer) = pair().await;
        client.write_all(b"\x16\x03\x01").await.unwrap();
        assert_eq!(accept(&mut server, peer, &[]).await.unwrap(), peer);
    }

    #[tokio::test]
    async fn a_header_from_an_untrusted_peer_is_refused() {
        let (mut client, mut server, peer) = pair().await;
        let bytes = header(
            "203.0.113.7:1".parse().unwrap(),
            "127.0.0.1:443".parse().unwrap(),
        )
        .unwrap();
        client.write_all(&bytes).await.unwrap();
        let err = accept(&mut server, peer, &["10.0.0.1".parse().unwrap()])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }
}
