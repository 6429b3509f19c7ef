//! The running cluster member: heartbeats out and in, the heartbeat link, the
//! election, and the takeover, on a thread of its own.
//!
//! The thread has its own single-threaded runtime so that a load balancer saturated
//! with client traffic still sends and reads its heartbeats on time: a busy node
//! must not look dead to its peer.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::election::{Election, Transition};
use crate::takeover::Takeover;
use crate::wire::{self, Beat, Rejected, ReplayGuard, State};

/// One member's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name.
    pub name: String,
    /// This node's priority (higher wins).
    pub priority: u8,
    /// Where this node receives heartbeats (UDP) and link connections (TCP).
    pub heartbeat: SocketAddr,
    /// The peer's name; beats from any other name are ignored.
    pub peer_name: String,
    /// Where the peer receives heartbeats.
    pub peer_heartbeat: SocketAddr,
    /// The shared secret that signs every beat.
    pub secret: Vec<u8>,
    /// Time between beats.
    pub interval: Duration,
    /// Missed beats before the peer counts as dead.
    pub dead_after: u32,
    /// Whether a higher-priority node takes the address back when it returns.
    pub preempt: bool,
    /// How the address moves.
    pub takeover: Takeover,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    forged: AtomicU64,
    replayed: AtomicU64,
    transitions: AtomicU64,
    link_up: AtomicBool,
}

/// A handle on the running member.
pub struct Cluster {
    config: Config,
    role: watch::Receiver<State>,
    election: Arc<Mutex<Election>>,
    counters: Arc<Counters>,
    healthy: Arc<AtomicBool>,
    health_changed: Arc<Notify>,
    commands: mpsc::Sender<Command>,
}

/// What the heartbeat link reports.
/// What the load balancer asks of the member.
enum Command {
    /// Announce leaving; answer once the peer says it is active.
    Leave(oneshot::Sender<()>),
    /// Give the address up; answer when done.
    Release(oneshot::Sender<()>),
}

enum Link {
    /// Established and authenticated.
    Up,
    /// The peer's side closed it: its process is gone.
    Lost,
    /// Failed in the network; says nothing about the peer's process.
    Broken,
}

impl Cluster {
    /// Binds the heartbeat sockets (errors now, not later) and starts the member.
    pub fn start(config: Config) -> anyhow::Result<Cluster> {
        let std_udp = std::net::UdpSocket::bind(config.heartbeat).with_context(|| {
            format!(
                "cannot bind the heartbeat address {} (UDP)",
                config.heartbeat
            )
        })?;
        std_udp.set_nonblocking(true)?;
        let std_tcp = std::net::TcpListener::bind(config.heartbeat).with_context(|| {
            format!(
                "cannot bind the heartbeat address {} (TCP)",
                config.heartbeat
            )
        })?;
        std_tcp.set_nonblocking(true)?;
        if config.secret.is_empty() {
            tracing::warn!("cluster: no secret configured: heartbeats are not authenticated; set cluster.secret");
        }

        let dead_after = config.interval * config.dead_after;
        let election = Arc::new(Mutex::new(Election::new(
            &config.name,
            config.priority,
            config.preempt,
            dead_after,
            Instant::now(),
        )));
        let (role_tx, role) = watch::channel(State::Passive);
        let counters = Arc::new(Counters::default());
        let healthy = Arc::new(AtomicBool::new(true));
        let health_changed = Arc::new(Notify::new());
        let (commands, commands_rx) = mpsc::channel(2);

        let member = Member {
            config: config.clone(),
            election: election.clone(),
            counters: counters.clone(),
            healthy: healthy.clone(),
            health_changed: health_changed.clone(),
            role: role_tx,
            boot: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            seq: 0,
        };
        std::thread::Builder::new()
            .name(format!("{}-cluster", config.name))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                runtime.block_on(async move {
                    let udp = UdpSocket::from_std(std_udp).expect("inside a runtime");
                    let tcp = TcpListener::from_std(std_tcp).expect("inside a runtime");
                    member.run(udp, tcp, commands_rx).await;
                });
            })?;
        Ok(Cluster {
            config,
            role,
            election,
            counters,
            healthy,
            health_changed,
            commands,
        })
    }

    /// This node's state, now and as it changes.
    pub fn role(&self) -> watch::Receiver<State> {
        self.role.clone()
    }

    /// Tells the election whether this node has at least one healthy backend.
    pub fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Relaxed) != healthy {
            self.health_changed.notify_one();
        }
    }

    /// Stops on purpose: tells the peer, waits (at most `wait`) until the peer
    /// holds the address, then gives the address up (linux: removes the IP; hook:
    /// runs `on_passive`). The caller closes its floating listener after this.
    pub async fn leave(&self, wait: Duration) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.commands.send(Command::Leave(done_tx)).await.is_ok() {
            let _ = tokio::time::timeout(wait, done_rx).await;
        }
        let (done_tx, done_rx) = oneshot::channel();
        if self.commands.send(Command::Release(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }

    /// The member's state as JSON for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let election = self.election.lock().expect("poisoned");
        let peer = election.peer().map(|p| {
            serde_json::json!({
                "name": p.name,
                "state": p.state.as_str(),
                "priority": p.priority,
                "healthy": p.healthy,
                "last_heartbeat_ms_ago": p.last_seen.elapsed().as_millis() as u64,
                "gone": p.gone,
            })
        });
        let transitions: Vec<serde_json::Value> = election
            .history()
            .map(|(at, t)| {
                serde_json::json!({
                    "at": httpdate::fmt_http_date(*at),
                    "from": t.from.as_str(),
                    "to": t.to.as_str(),
                    "reason": t.reason,
                })
            })
            .collect();
        serde_json::json!({
            "role": election.state().as_str(),
            "priority": self.config.priority,
            "effective_priority": election.effective_priority(),
            "preempt": self.config.preempt,
            "interval_ms": self.config.interval.as_millis() as u64,
            "dead_after_beats": self.config.dead_after,
            "link_up": self.counters.link_up.load(Relaxed),
            "peer": peer,
            "heartbeats": {
                "sent": self.counters.sent.load(Relaxed),
                "received": self.counters.received.load(Relaxed),
                "rejected": {
                    "malformed": self.counters.malformed.load(Relaxed),
                    "forged": self.counters.forged.load(Relaxed),
                    "replayed": self.counters.replayed.load(Relaxed),
                },
            },
            "transitions": transitions,
        })
    }

    /// Appends the member's metrics in Prometheus text format.
    pub fn render_metrics(&self, node: &str, out: &mut String) {
        let election = self.election.lock().expect("poisoned");
        let c = &self.counters;
        let _ = writeln!(
            out,
            "# HELP scaleup_cluster_active Whether this load balancer holds the floating address.\n\
             # TYPE scaleup_cluster_active gauge\n\
             scaleup_cluster_active{{node=\"{node}\"}} {}\n\
             # HELP scaleup_cluster_transitions_total Role changes since start.\n\
             # TYPE scaleup_cluster_transitions_total counter\n\
             scaleup_cluster_transitions_total{{node=\"{node}\"}} {}\n\
             # HELP scaleup_cluster_heartbeats_sent_total Heartbeats sent to the peer.\n\
             # TYPE scaleup_cluster_heartbeats_sent_total counter\n\
             scaleup_cluster_heartbeats_sent_total{{node=\"{node}\"}} {}\n\
             # HELP scaleup_cluster_heartbeats_received_total Authentic heartbeats received.\n\
             # TYPE scaleup_cluster_heartbeats_received_total counter\n\
             scaleup_cluster_heartbeats_received_total{{node=\"{node}\"}} {}\n\
             # HELP scaleup_cluster_heartbeats_rejected_total Datagrams refused, by reason.\n\
             # TYPE scaleup_cluster_heartbeats_rejected_total counter",
            u8::from(election.state() == State::Active),
            c.transitions.load(Relaxed),
            c.sent.load(Relaxed),
            c.received.load(Relaxed),
        );
        for (reason, count) in [
            ("malformed", &c.malformed),
            ("forged", &c.forged),
            ("replayed", &c.replayed),
        ] {
            let _ = writeln!(
                out,
                "scaleup_cluster_heartbeats_rejected_total{{node=\"{node}\",reason=\"{reason}\"}} {}",
                count.load(Relaxed)
            );
        }
        if let Some(peer) = election.peer() {
            let _ = writeln!(
                out,
                "# HELP scaleup_cluster_peer_last_heartbeat_seconds Time since the peer's last heartbeat.\n\
                 # TYPE scaleup_cluster_peer_last_heartbeat_seconds gauge\n\
                 scaleup_cluster_peer_last_heartbeat_seconds{{node=\"{node}\",peer=\"{}\"}} {:.3}",
                peer.name,
                peer.last_seen.elapsed().as_secs_f64()
            );
        }
    }
}

/// The state owned by the cluster thread.
struct Member {
    config: Config,
    election: Arc<Mutex<Election>>,
    counters: Arc<Counters>,
    healthy: Arc<AtomicBool>,
    health_changed: Arc<Notify>,
    role: watch::Sender<State>,
    boot: u64,
    seq: u64,
}

impl Member {
    async fn run(
        mut self,
        udp: UdpSocket,
        tcp: TcpListener,
        mut commands: mpsc::Receiver<Command>,
    ) {
        // A node starts passive: an address left on this host by an earlier run
        // (killed before it could release it) must not answer for the site.
        if let Err(e) = self.config.takeover.release().await {
            tracing::warn!("cluster: clearing the floating address at start: {e:#}");
        }
        let (events_tx, mut events) = mpsc::channel(16);
        tokio::spawn(accept_links(tcp, self.config.clone()));
        tokio::spawn(hold_link(self.config.clone(), events_tx));
        let mut guard = ReplayGuard::default();
        let mut buf = [0u8; wire::MAX_BEAT];
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leaving: Option<oneshot::Sender<()>> = None;

        loop {
            let deadline = self.election.lock().expect("poisoned").next_deadline();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let transition = tokio::select! {
                received = udp.recv_from(&mut buf) => {
                    let Ok((len, _from)) = received else { continue };
                    match self.accept_beat(&buf[..len], &mut guard) {
                        Some(beat) => {
                            let t = self.election.lock().expect("poisoned").on_beat(&beat, Instant::now());
                            if beat.state == State::Active {
                                if let Some(done) = leaving.take() {
                                    let _ = done.send(());
                                }
                            }
                            t
                        }
                        None => None,
                    }
                }
                _ = ticker.tick() => {
                    self.send_beat(&udp).await;
                    None
                }
                _ = sleep => self.election.lock().expect("poisoned").on_tick(Instant::now()),
                Some(event) = events.recv() => match event {
                    Link::Up => {
                        self.counters.link_up.store(true, Relaxed);
                        None
                    }
                    Link::Lost => {
                        self.counters.link_up.store(false, Relaxed);
                        self.election.lock().expect("poisoned").on_link_lost(Instant::now())
                    }
                    Link::Broken => {
                        self.counters.link_up.store(false, Relaxed);
                        None
                    }
                },
                _ = self.health_changed.notified() => {
                    let healthy = self.healthy.load(Relaxed);
                    self.election.lock().expect("poisoned").set_healthy(healthy, Instant::now())
                }
                Some(command) = commands.recv() => match command {
                    Command::Leave(done) => {
                        let mut election = self.election.lock().expect("poisoned");
                        let t = election.leave();
                        if election.peer_is_alive(Instant::now()) {
                            leaving = Some(done);
                        } else {
                            // Nobody to hand over to: do not wait for an answer.
                            let _ = done.send(());
                        }
                        t
                    }
                    Command::Release(done) => {
                        if let Err(e) = self.config.takeover.release_and_wait(Duration::from_secs(10)).await {
                            tracing::error!("cluster: giving the floating address up: {e:#}");
                        }
                        let _ = done.send(());
                        None
                    }
                },
            };
            if let Some(transition) = transition {
                self.apply(&transition).await;
                // Say it now, not at the next tick: the peer reacts within a round trip.
                self.send_beat(&udp).await;
                if transition.to == State::Leaving {
                    // A second and third copy, in case the first datagram is lost.
                    for _ in 0..2 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        self.send_beat(&udp).await;
                    }
                }
            } else if self.role.borrow().eq(&State::Active) && self.peer_active_and_outranked() {
                // A lower-ranked peer still claims the address (a healed split):
                // tell the network again where it lives.
                if let Err(e) = self.config.takeover.announce().await {
                    tracing::warn!("cluster: re-announcing the address: {e:#}");
                }
            }
        }
    }

    fn peer_active_and_outranked(&self) -> bool {
        let election = self.election.lock().expect("poisoned");
        election
            .peer()
            .is_some_and(|p| p.state == State::Active && !p.gone)
    }

    fn accept_beat(&self, bytes: &[u8], guard: &mut ReplayGuard) -> Option<Beat> {
        let checked = Beat::decode(bytes, &self.config.secret).and_then(|beat| {
            if beat.name != self.config.peer_name {
                return Err(Rejected::Forged);
            }
            guard.admit(&beat).map(|()| beat)
        });
        match checked {
            Ok(beat) => {
                self.counters.received.fetch_add(1, Relaxed);
                Some(beat)
            }
            Err(reason) => {
                let counter = match reason {
                    Rejected::Malformed => &self.counters.malformed,
                    Rejected::Forged => &self.counters.forged,
                    Rejected::Replayed => &self.counters.replayed,
                };
                counter.fetch_add(1, Relaxed);
                tracing::debug!("cluster: ignored a {} heartbeat", reason.as_str());
                None
            }
        }
    }

    async fn send_beat(&mut self, udp: &UdpSocket) {
        self.seq += 1;
        let beat = {
            let election = self.election.lock().expect("poisoned");
            Beat {
                name: self.config.name.clone(),
                state: election.state(),
                priority: election.effective_priority(),
                healthy: election.healthy(),
                boot: self.boot,
                seq: self.seq,
            }
        };
        let bytes = beat.encode(&self.config.secret);
        if udp
            .send_to(&bytes, self.config.peer_heartbeat)
            .await
            .is_ok()
        {
            self.counters.sent.fetch_add(1, Relaxed);
        }
    }

    async fn apply(&self, transition: &Transition) {
        self.counters.transitions.fetch_add(1, Relaxed);
        tracing::warn!(
            "cluster: {} -> {}: {}",
            transition.from.as_str(),
            transition.to.as_str(),
            transition.reason
        );
        let result = match transition.to {
            State::Active => self.config.takeover.acquire().await,
            State::Passive => self.config.takeover.release().await,
            // The address is released by the load balancer once the peer holds it.
            State::Leaving => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!("cluster: moving the floating address failed: {e:#}");
        }
        self.role.send_replace(transition.to);
    }
}

/// The link's challenge: the connecting side proves it knows the secret by
/// answering a fresh nonce, and the accepting side answers in turn.
async fn accept_links(listener: TcpListener, config: Config) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let config = config.clone();
        tokio::spawn(async move {
            let nonce: [u8; 16] = rand::random();
            let handshake = async {
                stream.write_all(&nonce).await?;
                let mut answer = [0u8; 16];
                stream.read_exact(&mut answer).await?;
                if !wire::verify(
                    &config.secret,
                    &[&nonce, b"link", config.peer_name.as_bytes()],
                    &answer,
                ) {
                    return Err(std::io::Error::other("link: wrong answer"));
                }
                let ack = wire::tag(&config.secret, &[&nonce, b"ok", config.name.as_bytes()]);
                stream.write_all(&ack).await
            };
            if tokio::time::timeout(Duration::from_secs(2), handshake)
                .await
                .is_err()
            {
                return;
            }
            // Hold the connection: when this process dies, the kernel closes it and
            // the peer knows at once. If the connection breaks for another reason
            // (a network fault), keep the socket rather than close it: a close
            // from a live node must never read as a death.
            let mut sink = [0u8; 64];
            loop {
                match stream.read(&mut sink).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(_) => std::future::pending::<()>().await,
                }
            }
        });
    }
}

/// Keeps a link open to the peer; reports when it comes up and when the peer's
/// side closes it (its process ended). A link broken by the network (an error, not
/// an orderly close or a reset) is only reconnected: missed beats decide then.
async fn hold_link(config: Config, events: mpsc::Sender<Link>) {
    loop {
        if let Ok(mut stream) = connect_link(&config).await {
            tracing::info!("cluster: heartbeat link to {} up", config.peer_name);
            let _ = events.send(Link::Up).await;
            let mut sink = [0u8; 64];
            let closed_by_peer = loop {
                match stream.read(&mut sink).await {
                    Ok(0) => break true,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("cluster: heartbeat link: {e}");
                        break e.kind() == std::io::ErrorKind::ConnectionReset;
                    }
                }
            };
            if closed_by_peer {
                let _ = events.send(Link::Lost).await;
            } else {
                tracing::info!(
                    "cluster: heartbeat link to {} broken by the network",
                    config.peer_name
                );
                let _ = events.send(Link::Broken).await;
            }
        }
        tokio::time::sleep(config.interval).await;
    }
}

async fn connect_link(config: &Config) -> std::io::Result<TcpStream> {
    let attempt = async {
        let mut stream = TcpStream::connect(config.peer_heartbeat).await?;
        stream.set_nodelay(true)?;
        let mut nonce = [0u8; 16];
        stream.read_exact(&mut nonce).await?;
        let answer = wire::tag(&config.secret, &[&nonce, b"link", config.name.as_bytes()]);
        stream.write_all(&answer).await?;
        let mut ack = [0u8; 16];
        stream.read_exact(&mut ack).await?;
        if !wire::verify(
            &config.secret,
            &[&nonce, b"ok", config.peer_name.as_bytes()],
            &ack,
        ) {
            return Err(std::io::Error::other(
                "link: the peer does not know the secret",
            ));
        }
        Ok(stream)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("link: handshake timed out")))
}
