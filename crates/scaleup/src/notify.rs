//! systemd's notification protocol (`sd_notify(3)`), for a node run by a
//! `Type=notify` unit (`scaleup systemd` writes one): `READY=1` once the node serves,
//! so that `systemctl start` returns, and units ordered after it start, only then;
//! `STOPPING=1` when it begins a clean stop.
//!
//! The protocol is one datagram of `KEY=value` lines sent to the Unix socket named
//! by `$NOTIFY_SOCKET`: a path, or, starting with `@`, a name in Linux's abstract
//! namespace. Written here rather than taken from a crate because it is those few
//! lines. Without the variable (not under systemd) every call does nothing.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The variable systemd sets for a `Type=notify` service.
const VAR: &str = "NOTIFY_SOCKET";

/// Sends `state` (`"READY=1"`, `"STOPPING=1"`, more lines with `\n`) to systemd.
/// `Ok(false)` when not run by systemd (no `$NOTIFY_SOCKET`), `Ok(true)` once sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os(VAR) else {
        return Ok(false);
    };
    send(&target, state)?;
    Ok(true)
}

/// Sends one datagram to the socket `target` names in `$NOTIFY_SOCKET`'s syntax.
fn send(target: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = target.as_bytes();
    let socket = UnixDatagram::unbound()?;
    let sent = match bytes.first() {
        Some(b'/') => socket.send_to(state.as_bytes(), target)?,
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            socket.send_to_addr(state.as_bytes(), &addr)?
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "${VAR} is {:?}: neither a socket path (/...) nor an abstract name (@...)",
                    target
                ),
            ))
        }
    };
    if sent != state.len() {
        return Err(io::Error::other("the notification was cut short"));
    }
    Ok(())
}

/// [`notify`], with a failure logged rather than returned: systemd not hearing from a
/// node is reported by systemd itself (a start that times out), and must not stop it.
pub fn notify_logged(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("cannot tell systemd {state:?} through ${VAR}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn a_path_socket_receives_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        assert_eq!(receive(&socket), "READY=1\nSTATUS=serving");
    }

    #[test]
    fn an_abstract_socket_receives_the_state() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("scaleup-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[test]
    fn a_target_of_another_kind_is_an_error_that_says_why() {
        let e = send(OsStr::new("vsock:2:1234"), "READY=1").unwrap_err();
        assert!(e.to_string().contains("neither a socket path"), "{e}");
        let e = send(OsStr::new("/nonexistent/scaleup/notify"), "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }
}
