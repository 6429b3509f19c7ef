//! The heartbeat link's port is open to anyone who can reach a load balancer: what a
//! stranger's connections make a member hold must stay bounded, and the real peer
//! must still link. Real members, real sockets on loopback.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cluster::{Cluster, Config, Takeover};

const SECRET: &[u8] = b"link test secret";

// Free for both TCP and UDP (the heartbeat address uses both).
use testkit::free_port;

fn member(name: &str, me: u16, peer_name: &str, peer: u16, interval: Duration) -> Config {
    Config {
        name: name.into(),
        priority: 100,
        heartbeat: SocketAddr::from(([127, 0, 0, 1], me)),
        peer_name: peer_name.into(),
        peer_heartbeat: SocketAddr::from(([127, 0, 0, 1], peer)),
        secret: SECRET.to_vec(),
        interval,
        dead_after: 3,
        preempt: false,
        takeover: Takeover::Local,
        config_hash: cluster::wire::config_hash(b"the same site file"),
    }
}

/// This process's open descriptors.
fn descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until the member closes the connection; returns what it sent and how long
/// the close took, or panics if it is still open after `within`.
fn until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, start.elapsed()),
            Err(e) => panic!(
                "the member kept the connection open ({e}) after {:?}",
                start.elapsed()
            ),
        }
    }
}

#[test]
fn strangers_cannot_make_the_link_hold_descriptors() {
    the_peer_links_while_strangers_hold_the_handshake_slots();
    let (p1, p2) = (free_port(), free_port());
    let interval = Duration::from_millis(50);
    let lb1 = Cluster::start(member("lb1", p1, "lb2", p2, interval)).unwrap();
    let lb2 = Cluster::start(member("lb2", p2, "lb1", p1, interval)).unwrap();
    let linked = |c: &Cluster| c.status()["link_up"] == true;
    wait_for("the pair links", Duration::from_secs(5), || {
        linked(&lb1) && linked(&lb2)
    });
    let before = descriptors();
    let target = SocketAddr::from(([127, 0, 0, 1], p1));

    // Garbage: the member sends its challenge, gets a wrong answer, and must close
    // at once, not when the handshake times out (2 s) or never.
    for i in 0..200 {
        let mut s = TcpStream::connect(target).unwrap();
        s.write_all(&[i as u8; 16]).unwrap();
        let (got, took) = until_closed(&mut s, Duration::from_secs(3));
        assert_eq!(got.len(), 16, "the challenge, then nothing");
        assert!(took < Duration::from_secs(1), "garbage #{i} held {took:?}");
    }
    // Resets: connect and abort (SO_LINGER 0), before or after the challenge.
    for i in 0..50 {
        let s = TcpStream::connect(target).unwrap();
        let mut s = socket2::Socket::from(s);
        if i % 2 == 0 {
            let mut nonce = [0u8; 16];
            s.read_exact(&mut nonce).unwrap();
        }
        s.set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
    }
    // Silence: 20 connections that never answer. At most a few are held; the
    // others are closed while the client still holds them open.
    let silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(target).unwrap())
        .collect();
    let closed_early = silent
        .iter()
        .filter(|&s| {
            let mut s: &TcpStream = s;
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 64];
            let mut got = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return true,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                    Err(_) => return got > 16,
                }
            }
        })
        .count();
    assert!(
        closed_early >= 16,
        "only {closed_early} of 20 silent connections were closed"
    );
    drop(silent);

    wait_for(
        &format!("descriptors back to {before}"),
        Duration::from_secs(3),
        || descriptors() <= before,
    );
    assert!(
        linked(&lb1) && linked(&lb2),
        "the real link survives the flood"
    );
    let received = |c: &Cluster| c.status()["heartbeats"]["received"].as_u64().unwrap();
    let (r1, r2) = (received(&lb1), received(&lb2));
    wait_for("heartbeats still flow", Duration::from_secs(2), || {
        received(&lb1) > r1 + 2 && received(&lb2) > r2 + 2
    });

    // Only the peer's address: 127.0.0.2 is not where lb2 heartbeats from, so the
    // member closes the connection without a word (not even its challenge).
    let stranger =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stranger
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    stranger.connect(&target.into()).unwrap();
    let (got, took) = until_closed(&mut TcpStream::from(stranger), Duration::from_secs(2));
    assert!(got.is_empty(), "a stranger got {} bytes", got.len());
    assert!(
        took < Duration::from_millis(500),
        "a stranger was held {took:?}"
    );
}

/// While strangers keep every handshake slot busy, the peer's own handshake still
/// succeeds: a new connection pushes the oldest pending one out. (Called from the
/// test above, before it counts descriptors: tests of one binary run side by side.)
fn the_peer_links_while_strangers_hold_the_handshake_slots() {
    let (p3, p4) = (free_port(), free_port());
    // lb4 never runs: this test plays it.
    let _lb3 = Cluster::start(member("lb3", p3, "lb4", p4, Duration::from_secs(10))).unwrap();
    let target = SocketAddr::from(([127, 0, 0, 1], p3));
    let _silent: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(target).unwrap())
        .collect();

    let mut peer = TcpStream::connect(target).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut nonce = [0u8; 16];
    peer.read_exact(&mut nonce).unwrap();
    peer.write_all(&cluster::wire::tag(SECRET, &[&nonce, b"link", b"lb4"]))
        .unwrap();
    let mut ack = [0u8; 16];
    peer.read_exact(&mut ack).unwrap();
    assert!(cluster::wire::verify(
        SECRET,
        &[&nonce, b"ok", b"lb3"],
        &ack
    ));
    // Held, not closed, once authenticated.
    peer.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let err = peer.read(&mut [0u8; 1]).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
}
