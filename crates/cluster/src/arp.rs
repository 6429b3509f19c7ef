//! Gratuitous ARP: an ARP announcement (RFC 5227: a broadcast request whose sender
//! and target IP are both the moved address) saying "this IP is at this MAC".
//! Neighbours that have the IP in their cache update it at once, so a moved address
//! reaches its new owner without waiting for caches to expire. Linux overrides a
//! recently confirmed entry (inside `locktime`) only for a packet it recognises as
//! gratuitous, which is why the request form is used: a reply would also need its
//! target MAC equal to its sender MAC.
//!
//! This is the one place scaleup needs raw sockets (`AF_PACKET`), which the standard
//! library does not offer; the unsafe code is confined to this module.
#![allow(unsafe_code)]

use std::io;
use std::net::Ipv4Addr;

const ETH_P_ARP: u16 = 0x0806;

/// Broadcasts one gratuitous ARP announcement for `ip` on `interface`.
pub fn gratuitous(interface: &str, ip: Ipv4Addr) -> io::Result<()> {
    let (index, mac) = interface_info(interface)?;
    let frame = frame(mac, ip.octets());
    // SAFETY: plain libc calls with valid pointers and lengths; the socket is closed
    // on every path.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ETH_P_ARP.to_be()),
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = index;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let result = if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        libc::close(fd);
        result
    }
}

/// The Ethernet frame: broadcast destination, ARP request with sender = target = `ip`.
fn frame(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]); // destination: broadcast
    f.extend_from_slice(&mac); // source
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    f.extend_from_slice(&mac); // sender MAC
    f.extend_from_slice(&ip); // sender IP
    f.extend_from_slice(&[0; 6]); // target MAC: unknown, as in any request
    f.extend_from_slice(&ip); // target IP
    f
}

/// The interface's index and MAC address, from sysfs.
fn interface_info(interface: &str) -> io::Result<(i32, [u8; 6])> {
    let base = std::path::Path::new("/sys/class/net").join(interface);
    let index: i32 = std::fs::read_to_string(base.join("ifindex"))?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad ifindex"))?;
    let text = std::fs::read_to_string(base.join("address"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad MAC `{}`", text.trim()),
        ));
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad MAC"))?;
    }
    Ok((index, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let f = frame([2, 0, 0, 0, 0, 1], [10, 0, 0, 100]);
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0x00, 0x01], "an ARP request (announcement)");
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[28..32], &[10, 0, 0, 100]);
        assert_eq!(&f[38..42], &[10, 0, 0, 100]);
    }
}
