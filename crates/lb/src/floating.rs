//! The load balancer's side of the cluster: serving the floating address while
//! active, and feeding the election with the backends' health.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cluster::State;
use net::Shutdown;

use crate::{Frontends, Task};

/// How long a stopping node waits for its peer to take the address before it stops
/// accepting anyway.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(2);

/// This load balancer's place in the cluster.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Heartbeats, election, takeover.
    pub member: cluster::Config,
    /// The `ip:port` clients use, which this node serves while active (local mode)
    /// or always (linux mode: the kernel delivers only while the IP is here).
    pub floating: Option<SocketAddr>,
    /// The floating `ip:port` for HTTPS, served like `floating` (local mode).
    pub tls_floating: Option<SocketAddr>,
    /// Whether the floating listener is bound only while active (local mode).
    pub only_while_active: bool,
}

/// Starts serving the floating address as the election decides, and reporting the
/// backends' health to it; ends after `stop`. `active` (if given) follows whether this
/// node holds the address.
pub fn spawn(
    membership: &Membership,
    frontends: Arc<Frontends>,
    stop: Shutdown,
    active: Option<tokio::sync::watch::Sender<bool>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let cluster = frontends.lb.cluster.get().expect("a member was started");
    let mut role = cluster.role();
    let interval = membership.member.interval;
    let addresses: Vec<(SocketAddr, bool)> = membership
        .floating
        .map(|a| (a, false))
        .into_iter()
        .chain(membership.tls_floating.map(|a| (a, true)))
        .collect();
    let only_while_active = membership.only_while_active;
    // Linux mode: bind the floating IP once, up front (IP_FREEBIND).
    let mut always = Vec::new();
    if !only_while_active {
        for (addr, tls) in &addresses {
            always.push((net::server::bind_floating(*addr)?, *tls));
        }
    }
    Ok(tokio::spawn(async move {
        let mut serving: Vec<Serving> = always
            .into_iter()
            .filter_map(|(listener, tls)| start(listener, tls, &frontends))
            .collect();
        let mut health = tokio::time::interval(interval);
        loop {
            let state = *role.borrow_and_update();
            if let Some(active) = &active {
                active.send_replace(state == State::Active);
            }
            if only_while_active {
                match state {
                    State::Active if serving.is_empty() => {
                        for (addr, tls) in &addresses {
                            match net::server::bind_floating(*addr) {
                                Ok(listener) => {
                                    // A steering program left by the previous owner's
                                    // handover would send every connection to one
                                    // listener: remove it.
                                    if let Err(e) = net::reuseport::clear(&listener) {
                                        tracing::warn!(
                                            "clearing connection steering on {addr}: {e}"
                                        );
                                    }
                                    tracing::info!("serving the floating address {addr}");
                                    serving.extend(start(listener, *tls, &frontends));
                                }
                                Err(e) => tracing::error!("{e}"),
                            }
                        }
                    }
                    State::Passive if !serving.is_empty() => {
                        tracing::info!("no longer serving the floating address");
                        for s in serving.drain(..) {
                            s.trigger.fire();
                        }
                    }
                    _ => {}
                }
            }
            tokio::select! {
                changed = role.changed() => if changed.is_err() { break },
                _ = health.tick() => {
                    if let Some(cluster) = frontends.lb.cluster.get() {
                        cluster.set_healthy(frontends.lb.live.load().pool.any_up());
                    }
                }
                _ = stop.wait() => break,
            }
        }
        if let Some(active) = &active {
            active.send_replace(false);
        }
        if only_while_active && *role.borrow() == State::Leaving {
            for s in &serving {
                s.steer_to_peer();
            }
            tokio::time::sleep(QUEUE_SETTLE).await;
        }
        for s in serving {
            // Close our second descriptor first, so that the socket closes as soon
            // as the accept loop lets go of it.
            let Serving {
                trigger,
                task,
                socket,
            } = s;
            drop(socket);
            trigger.fire();
            let _ = task.await;
        }
    }))
}

/// A floating listener being served.
struct Serving {
    trigger: net::shutdown::Trigger,
    task: Task,
    /// A second handle on the listening socket, to steer its group on handover.
    socket: std::os::fd::OwnedFd,
}

/// How long a leaving node keeps its listeners after steering new connections to
/// the peer: long enough for handshakes already under way to complete and be
/// accepted, so that closing resets nothing.
const QUEUE_SETTLE: Duration = Duration::from_millis(50);

impl Serving {
    /// Sends new connections to the peer, which bound the address last.
    fn steer_to_peer(&self) {
        if let Err(e) = net::reuseport::steer_to(&self.socket, 1) {
            tracing::warn!("steering new connections to the peer: {e}");
        }
    }
}

fn start(listener: tokio::net::TcpListener, tls: bool, frontends: &Frontends) -> Option<Serving> {
    use std::os::fd::AsFd;
    let socket = listener
        .as_fd()
        .try_clone_to_owned()
        .expect("duplicating a listening socket's descriptor");
    let (trigger, shutdown) = net::shutdown::channel();
    let task = if tls {
        frontends.spawn_https(listener, shutdown)?
    } else {
        frontends.spawn_http(listener, shutdown)
    };
    Some(Serving {
        trigger,
        task,
        socket,
    })
}
