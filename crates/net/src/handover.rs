//! Handing a running node's listening sockets to a new process of the same node
//! (`scaleup upgrade`), so that no connection ever meets a closed port.
//!
//! The running process (the predecessor) listens on a Unix socket of its own,
//! `STATE/run/NODE.sock` ([`socket_path`]). A successor started with `--upgrade`
//! connects and receives every listening socket of the node in one message
//! (`SCM_RIGHTS`), each with its name, the Unix listener itself included (so the
//! successor can be upgraded in turn). From then on both processes accept from the
//! same kernel sockets: a connection is taken by one or the other, never refused.
//!
//! Once the successor answers on the node's admin address it says `serving`; the
//! predecessor then stops as on SIGTERM (stops accepting, finishes what is in
//! flight, closes kept-alive connections between requests, keeps WebSockets until
//! its drain timeout) and, as soon as it has let go of what only one process of a
//! node may hold (a load balancer's heartbeat sockets and place in the election),
//! says `released`. Its exit closes the Unix connection. A successor that fails
//! before `serving` changes nothing: the predecessor goes on serving.
//!
//! The messages are lines of text; the first, from the predecessor, is JSON and
//! carries the descriptors.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// How this process starts its successor (`POST /upgrade`): set once by the binary,
/// which alone knows how the node was started. A process holds one node, so one
/// starter per process.
type Starter = Box<dyn Fn() -> Result<serde_json::Value, String> + Send + Sync>;
static STARTER: std::sync::OnceLock<Starter> = std::sync::OnceLock::new();

/// Sets how `POST /upgrade` starts this node's successor (the first call wins).
pub fn on_upgrade(start: impl Fn() -> Result<serde_json::Value, String> + Send + Sync + 'static) {
    let _ = STARTER.set(Box::new(start));
}

/// Starts this node's successor: what was started (JSON), or why not.
pub fn start_successor() -> Result<serde_json::Value, String> {
    match STARTER.get() {
        Some(start) => start(),
        None => Err(
            "this node was not started by `scaleup run`, so it cannot start its \
                     successor: restart it instead"
                .into(),
        ),
    }
}

/// At most this many sockets change hands (a node has four or five).
const MAX_SOCKETS: usize = 16;
/// The name the Unix listener itself travels under.
pub const HANDOVER: &str = "handover";

/// Where node `name`'s process listens for its successor.
pub fn socket_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("run").join(format!("{name}.sock"))
}

/// Where node `name`'s serving process writes its pid (the supervisor of `scaleup up`
/// reads it to follow a node across an upgrade).
pub fn pid_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("run").join(format!("{name}.pid"))
}

/// Binds the Unix socket a node's successor will connect to. A socket file left by a
/// process that is gone is replaced; one a live process answers on is an error (two
/// processes of one node would fight over its sockets).
pub fn listen(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "another process of this node answers on {}: stop it, or replace it with \
                 `scaleup upgrade`",
                path.display()
            ),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    // Only this user may hand sockets over (the state directory is private too).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Sends `sockets` (name, descriptor) over `stream`, with the sender's pid.
fn send_sockets(stream: &UnixStream, sockets: &[(String, BorrowedFd<'_>)]) -> std::io::Result<()> {
    let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
    let mut line = serde_json::json!({ "pid": std::process::id(), "sockets": names }).to_string();
    line.push('\n');
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("too many sockets to hand over"));
    }
    let sent = sendmsg(
        stream,
        &[IoSlice::new(line.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != line.len() {
        return Err(std::io::Error::other("the handover message was cut short"));
    }
    Ok(())
}

/// Receives what [`send_sockets`] sent: the predecessor's pid and the sockets.
fn receive_sockets(stream: &UnixStream) -> std::io::Result<(u32, Vec<(String, OwnedFd)>)> {
    let mut buf = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        // Not inherited by any process this one starts, its own successor included
        // (which gets them the same way).
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = VecDeque::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let text = std::str::from_utf8(&buf[..received.bytes])
        .map_err(|_| std::io::Error::other("the handover message is not text"))?;
    let header: serde_json::Value = serde_json::from_str(text.trim_end())
        .map_err(|e| std::io::Error::other(format!("the handover message is not JSON: {e}")))?;
    let pid = header["pid"].as_u64().unwrap_or(0) as u32;
    let names = header["sockets"]
        .as_array()
        .ok_or_else(|| std::io::Error::other("the handover message names no sockets"))?;
    if names.len() != fds.len() {
        return Err(std::io::Error::other(format!(
            "the handover message names {} sockets but carries {}",
            names.len(),
            fds.len()
        )));
    }
    let sockets = names
        .iter()
        .map(|n| n.as_str().unwrap_or_default().to_string())
        .zip(fds)
        .collect();
    Ok((pid, sockets))
}

/// The sockets a successor took over, and its line to the predecessor.
pub struct Taken {
    /// The predecessor's pid.
    pub predecessor: u32,
    sockets: Vec<(String, OwnedFd)>,
    stream: UnixStream,
}

/// Connects to the node process listening on `path` and takes its sockets. Blocks
/// (briefly): call it before serving.
pub fn take(path: &Path) -> std::io::Result<Taken> {
    let stream = UnixStream::connect(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot reach the running process of this node on {}: {e} (is it running, \
                 from the same state directory?)",
                path.display()
            ),
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (predecessor, sockets) = receive_sockets(&stream)?;
    stream.set_read_timeout(None)?;
    Ok(Taken {
        predecessor,
        sockets,
        stream,
    })
}

impl Taken {
    /// The socket handed over under `name`, if there was one.
    pub fn socket(&mut self, name: &str) -> Option<OwnedFd> {
        let at = self.sockets.iter().position(|(n, _)| n == name)?;
        Some(self.sockets.remove(at).1)
    }

    /// The listening TCP socket handed over under `name`, ready for tokio.
    pub fn tcp(&mut self, name: &str) -> std::io::Result<Option<tokio::net::TcpListener>> {
        let Some(fd) = self.socket(name) else {
            return Ok(None);
        };
        let listener = std::net::TcpListener::from(fd);
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener).map(Some)
    }

    /// Tells the predecessor this process serves: it stops accepting and drains.
    /// The answer resolves once it has released what one process of a node may hold.
    pub fn serving(self) -> std::io::Result<Released> {
        let mut stream = self.stream;
        stream.write_all(format!("serving {}\n", std::process::id()).as_bytes())?;
        Ok(Released(stream))
    }
}

/// The predecessor's line after `serving`.
pub struct Released(UnixStream);

impl Released {
    /// Waits until the predecessor has released its exclusive resources (or is gone).
    pub async fn wait(self) {
        let stream = self.0;
        let _ = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            // `released`, or the end of the stream when the predecessor exited.
            let _ = BufReader::new(stream).read_line(&mut line);
        })
        .await;
    }
}

/// What the predecessor does when its successor serves: stop (the caller's shutdown
/// trigger, fired by `stop`), then release (resolved by `released`).
pub struct Offer {
    /// The sockets to hand over, by name. They stay open in this process too.
    pub sockets: Vec<(String, OwnedFd)>,
    /// Fired when a successor serves: the node stops as on SIGTERM.
    pub stop: Box<dyn FnOnce() + Send>,
    /// Resolves once the node let go of what only one of its processes may hold.
    pub released: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

/// Serves `listener` until a successor takes over: hands it the sockets, waits for
/// its `serving` (as long as it takes to start; a successor that fails first changes
/// nothing, and the next one may try), then stops this node, and tells the successor
/// when it released. Returns the connection: keep it until the process exits, which
/// the successor sees as its end. When the node stops first (`shutdown`), it takes no
/// successor any more: the socket file goes, so a new process of the node can start
/// while this one drains.
pub async fn offer(
    listener: UnixListener,
    offer: Offer,
    shutdown: crate::Shutdown,
) -> std::io::Result<Option<UnixStream>> {
    let path = listener.local_addr()?.as_pathname().map(Path::to_path_buf);
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let Offer {
        sockets,
        stop,
        released,
    } = offer;
    let sockets = std::sync::Arc::new(sockets);
    let stream = loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.wait() => {
                if let Some(path) = path {
                    let _ = std::fs::remove_file(path);
                }
                return Ok(None);
            }
        };
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        let sockets = sockets.clone();
        let handed = tokio::task::spawn_blocking(move || -> std::io::Result<UnixStream> {
            let borrowed: Vec<(String, BorrowedFd<'_>)> = sockets
                .iter()
                .map(|(n, fd)| (n.clone(), fd.as_fd()))
                .collect();
            send_sockets(&stream, &borrowed)?;
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line)?;
            match line.strip_prefix("serving ") {
                Some(pid) => {
                    tracing::info!(
                        "the new process (pid {}) serves: this one stops accepting and drains",
                        pid.trim()
                    );
                    Ok(stream)
                }
                None => Err(std::io::Error::other(
                    "the new process ended before it served",
                )),
            }
        })
        .await
        .map_err(std::io::Error::other)?;
        match handed {
            Ok(stream) => break stream,
            Err(e) => tracing::warn!("upgrade failed, this process goes on serving: {e}"),
        }
    };
    // This process no longer takes successors: the new one does.
    drop(listener);
    stop();
    released.await;
    let mut writer = &stream;
    if let Err(e) = writer.write_all(b"released\n") {
        tracing::warn!("telling the new process it may take over: {e}");
    }
    Ok(Some(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shutdown that is never asked for (its trigger kept for the test's life).
    fn never_stopping() -> crate::Shutdown {
        let (trigger, shutdown) = crate::shutdown::channel();
        std::mem::forget(trigger);
        shutdown
    }

    #[tokio::test]
    async fn a_node_that_stops_takes_no_successor_and_frees_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "lb1");
        let unix = listen(&path).unwrap();
        let (trigger, shutdown) = crate::shutdown::channel();
        let offering = tokio::spawn(offer(
            unix,
            Offer {
                sockets: Vec::new(),
                stop: Box::new(|| {}),
                released: Box::pin(async {}),
            },
            shutdown,
        ));
        trigger.fire();
        assert!(offering.await.unwrap().unwrap().is_none());
        assert!(!path.exists());
        // A new process of the node can listen there at once.
        listen(&path).unwrap();
    }

    #[tokio::test]
    async fn a_successor_takes_the_sockets_and_both_accept_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "web1");
        let unix = listen(&path).unwrap();
        // A second process of the node cannot listen there while this one answers.
        assert_eq!(
            listen(&path).unwrap_err().kind(),
            std::io::ErrorKind::AddrInUse
        );
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let offering = tokio::spawn(offer(
            unix.try_clone().unwrap(),
            Offer {
                sockets: vec![
                    ("http".into(), OwnedFd::from(tcp.try_clone().unwrap())),
                    (HANDOVER.into(), OwnedFd::from(unix)),
                ],
                stop: Box::new(move || {
                    let _ = stopped_tx.send(());
                }),
                released: Box::pin(async move {
                    let _ = release_rx.await;
                }),
            },
            never_stopping(),
        ));

        let mut taken = tokio::task::spawn_blocking(move || take(&path))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(taken.predecessor, std::process::id());
        let theirs = taken.tcp("http").unwrap().expect("the http socket");
        assert_eq!(theirs.local_addr().unwrap(), addr);
        assert!(taken.socket(HANDOVER).is_some());
        assert!(taken.tcp("tls").unwrap().is_none());
        // One kernel socket: a connection queued on it is accepted through the copy.
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, peer) = theirs.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        drop(accepted);

        let released = taken.serving().unwrap();
        stopped_rx.await.expect("serving stops the predecessor");
        let waiting = tokio::spawn(released.wait());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "released before the node let go");
        release_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released")
            .unwrap();
        drop(
            offering
                .await
                .unwrap()
                .unwrap()
                .expect("a successor took over"),
        );
    }

    #[tokio::test]
    async fn a_successor_that_dies_first_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "app1");
        let unix = listen(&path).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stopped.clone();
        let offering = tokio::spawn(offer(
            unix,
            Offer {
                sockets: vec![("http".into(), OwnedFd::from(tcp))],
                stop: Box::new(move || flag.store(true, std::sync::atomic::Ordering::SeqCst)),
                released: Box::pin(async {}),
            },
            never_stopping(),
        ));
        // The first successor takes the sockets and dies without serving.
        let first_path = path.clone();
        let first = tokio::task::spawn_blocking(move || take(&first_path))
            .await
            .unwrap()
            .unwrap();
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!stopped.load(std::sync::atomic::Ordering::SeqCst));
        // The next one succeeds.
        let second = tokio::task::spawn_blocking(move || take(&path))
            .await
            .unwrap()
            .unwrap();
        second.serving().unwrap().wait().await;
        drop(
            offering
                .await
                .unwrap()
                .unwrap()
                .expect("a successor took over"),
        );
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
    }
}
