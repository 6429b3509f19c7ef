//! Properties of the PROXY protocol v2 header (`net::proxy_protocol`): written by a
//! load balancer, read by a web server from the first bytes of every TLS connection,
//! so read from anyone who can connect.
//!
//! - what `header` writes, `accept` reads back as the same client, for every address
//!   family it writes (IPv4, IPv6, IPv4-mapped IPv6 and mixed pairs), however the
//!   bytes are split across reads, and the bytes after the header come out unchanged;
//! - arbitrary bytes (random, signature-led with any length, written headers with
//!   bytes changed) never panic, never make `accept` read more than the largest header
//!   it accepts (`MAX_HEADER`; the one buffer it allocates is that long at most), and a
//!   connection without a header gets every byte back, in order;
//! - an announced length above the limit is refused after the 16 fixed bytes, and an
//!   untrusted peer's header is refused without reading past them.
//!
//! The number of cases comes from `PROPTEST_CASES` (proptest's default, 256, when it is
//! unset); `bench/fuzz` runs this file with 100,000.

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use net::proxy_protocol::{accept, header, MAX_HEADER};
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The 12 bytes every v2 header starts with.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The load balancer the web server trusts, and the address it connects from.
const LB: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

fn peer() -> SocketAddr {
    SocketAddr::new(LB.into(), 40_000)
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
});

/// A connection that delivers `data` in reads of the given sizes (taken in turn), then
/// ends; `consumed` counts what the reader took.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
    consumed: Rc<Cell<usize>>,
}

impl Chunked {
    fn new(data: Vec<u8>, sizes: Vec<usize>) -> (Chunked, Rc<Cell<usize>>) {
        let consumed = Rc::new(Cell::new(0));
        let stream = Chunked {
            data,
            pos: 0,
            sizes,
            turn: 0,
            consumed: Rc::clone(&consumed),
        };
        (stream, consumed)
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = size.min(self.data.len() - self.pos).min(buf.remaining());
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        self.consumed.set(self.consumed.get() + n);
        Poll::Ready(Ok(()))
    }
}

/// What `accept` says after reading `data` split into reads of `sizes`: the client
/// (or the error's kind), how many bytes it took before handing the stream back, and
/// what the stream it handed back then yields.
fn run(
    data: Vec<u8>,
    sizes: Vec<usize>,
    trusted: bool,
) -> (Result<SocketAddr, io::ErrorKind>, usize, Vec<u8>) {
    let (stream, consumed) = Chunked::new(data, sizes);
    let trusted: &[IpAddr] = if trusted { &[IpAddr::V4(LB)] } else { &[] };
    RUNTIME.block_on(async {
        match accept(stream, peer(), trusted).await {
            Ok((client, mut rest)) => {
                let taken = consumed.get();
                let mut after = Vec::new();
                rest.read_to_end(&mut after).await.unwrap();
                (Ok(client), taken, after)
            }
            Err(e) => (Err(e.kind()), consumed.get(), Vec::new()),
        }
    })
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<Ipv4Addr>().prop_map(IpAddr::V4),
        any::<Ipv6Addr>().prop_map(IpAddr::V6),
        // IPv4-mapped IPv6, as a dual-stack socket reports an IPv4 client.
        any::<Ipv4Addr>().prop_map(|v4| IpAddr::V6(v4.to_ipv6_mapped())),
        Just(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(prop_oneof![1..4usize, 1..64usize, Just(4096)], 1..8)
}

/// The client `accept` must report for a header written for `(client, local)`: the
/// client itself, except that an IPv4-mapped client relayed through an IPv4 address is
/// written (and so read) as plain IPv4.
fn expected(client: SocketAddr, local: SocketAddr) -> SocketAddr {
    match (client, local) {
        (SocketAddr::V6(c), SocketAddr::V4(_)) => match c.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), c.port()),
            None => client,
        },
        _ => client,
    }
}

/// A v2 header with every field chosen by the test: version/command byte, family
/// byte, announced length, and that many bytes (or fewer) after it.
fn signature_led() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(0x21u8), Just(0x20), any::<u8>()],
        prop_oneof![
            Just(0x11u8),
            Just(0x21),
            Just(0x31),
            Just(0x00),
            any::<u8>()
        ],
        prop_oneof![0..64u16, 0..600u16, any::<u16>()],
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(command, family, len, body)| {
            let mut bytes = SIGNATURE.to_vec();
            bytes.extend_from_slice(&[command, family]);
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&body);
            bytes
        })
}

/// A header `header` wrote, with up to four bytes changed and the tail cut or grown.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        addr(),
        addr(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        prop_oneof![Just(None), any::<usize>().prop_map(Some)],
        proptest::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(client, local, changes, cut, more)| {
            let mut bytes = header(client, local).unwrap();
            for (at, value) in changes {
                let i = at % bytes.len();
                bytes[i] = value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            bytes.extend_from_slice(&more);
            bytes
        })
}

/// Whether `data` starts the way a v2 header does, as far as it goes.
fn could_be_header(data: &[u8]) -> bool {
    let k = data.len().min(SIGNATURE.len());
    data[..k] == SIGNATURE[..k]
}

proptest! {
    #[test]
    fn what_header_writes_accept_reads(
        client in addr(),
        local in addr(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        sizes in sizes(),
    ) {
        let written = header(client, local).unwrap();
        prop_assert!(written.len() <= MAX_HEADER);
        prop_assert!(written.starts_with(SIGNATURE));
        let mut data = written.clone();
        data.extend_from_slice(&payload);
        let (got, taken, after) = run(data, sizes, true);
        prop_assert_eq!(got, Ok(expected(client, local)), "local {}", local);
        prop_assert_eq!(taken, written.len(), "read past the header");
        prop_assert_eq!(after, payload);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_reads_stay_bounded(
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..700),
            signature_led(),
            mutated(),
        ],
        sizes in sizes(),
        trusted in any::<bool>(),
    ) {
        let first = &data[..data.len().min(16).min(sizes[0].max(1))];
        let (got, taken, after) = run(data.clone(), sizes, trusted);
        prop_assert!(taken <= MAX_HEADER, "read {} bytes", taken);
        let head = &data[..data.len().min(16)];
        if data.is_empty() {
            prop_assert_eq!(got, Err(io::ErrorKind::UnexpectedEof));
        } else if !trusted {
            // A stranger is judged on its first read: bytes that could begin a header
            // are refused at once, anything else is the client itself, replayed.
            if could_be_header(first) {
                prop_assert_eq!(got, Err(io::ErrorKind::PermissionDenied));
                prop_assert!(taken <= 16);
            } else {
                prop_assert_eq!(got, Ok(peer()));
                prop_assert_eq!(&after, &data);
            }
        } else if !could_be_header(head) {
            // Not a header: this is the client itself, and nothing it sent is lost.
            prop_assert_eq!(got, Ok(peer()));
            prop_assert_eq!(&after, &data);
        } else if data.len() >= 16 {
            let len = 16 + u16::from_be_bytes([data[14], data[15]]) as usize;
            if len > MAX_HEADER {
                prop_assert_eq!(got, Err(io::ErrorKind::InvalidData));
                prop_assert!(taken <= 16);
            } else if got.is_ok() {
                // A header was read: the stream goes on right after it.
                prop_assert_eq!(taken, len);
                prop_assert_eq!(&after[..], &data[len..]);
            }
        }
    }
}
