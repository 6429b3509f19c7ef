//! What the crates' tests share (a dev-dependency only).
//!
//! Free ports. A port the kernel handed out for port 0 lies in its ephemeral range,
//! which is also where every outgoing connection's local port comes from: between a
//! test picking such a port and a server (MariaDB, nginx, a node) binding it, a
//! kept-alive upstream connection may take it as its local end, and the server cannot
//! listen (seen: a restarted load balancer that could not listen again). Ports here
//! come from below that range, at random, checked free for TCP and UDP (the cluster's
//! heartbeat address uses both).
#![forbid(unsafe_code)]

use std::net::{TcpListener, UdpSocket};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the ports come from: at or above this, below the ephemeral range.
const LOWEST: u16 = 10_000;

/// The first of `count` consecutive loopback ports free now for TCP and UDP, below
/// the kernel's ephemeral range. Panics if 200 tries find none.
pub fn free_ports(count: u16) -> u16 {
    let span = ephemeral_start().saturating_sub(LOWEST + count).max(1);
    for attempt in 0..200u64 {
        let seed = u64::from(std::process::id())
            ^ SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
            ^ attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let offset = (seed.wrapping_mul(6_364_136_223_846_793_005) >> 33) % u64::from(span);
        let base = LOWEST + offset as u16;
        let free = |p: u16| {
            TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok()
        };
        if (base..base + count).all(free) {
            return base;
        }
    }
    panic!("no {count} free ports in a row on 127.0.0.1 below the ephemeral range");
}

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
}

/// One loopback port free now for TCP and UDP, below the kernel's ephemeral range.
pub fn free_port() -> u16 {
    free_ports(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_and_below_the_ephemeral_range() {
        let ephemeral = ephemeral_start();
        for _ in 0..20 {
            let base = free_ports(5);
            assert!(base >= LOWEST && base + 5 <= ephemeral, "{base}");
            for p in base..base + 5 {
                TcpListener::bind(("127.0.0.1", p)).unwrap();
                UdpSocket::bind(("127.0.0.1", p)).unwrap();
            }
        }
    }
}
