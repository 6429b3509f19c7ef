//! The running cluster member: heartbeats out and in, the heartbeat link, the
//! election, and the takeover, on a thread of its own.
//!
//! The thread has its own single-threaded runtime so that a load balancer saturated
//! with client traffic still sends and reads its heartbeats on time: a busy node
//! must not look dead to its peer.

use std::collections::VecDeque;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::{AbortHandle, JoinSet};

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
    /// The site file this node runs ([`wire::config_hash`] of its bytes), sent in
    /// every beat so that each node sees whether its peer runs the same one.
    pub config_hash: wire::ConfigHash,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    version: AtomicU64,
    forged: AtomicU64,
    replayed: AtomicU64,
    transitions: AtomicU64,
    link_up: AtomicBool,
    /// The peer's config hash as a big-endian u64 (from its last authentic beat),
    /// valid once `peer_config_known`.
    peer_config: AtomicU64,
    peer_config_known: AtomicBool,
    /// The wire version of the peer's last authentic beat (0: none yet).
    peer_wire: AtomicU8,
    /// This node's own config hash as a big-endian u64: `Config::config_hash` at
    /// start, then the file's a reload applied ([`Cluster::set_config_hash`]).
    own_config: AtomicU64,
}

impl Counters {
    /// The peer's config hash, once a beat of it arrived.
    fn peer_config(&self) -> Option<wire::ConfigHash> {
        self.peer_config_known
            .load(Relaxed)
            .then(|| self.peer_config.load(Relaxed).to_be_bytes())
    }

    /// This node's config hash now.
    fn own_config(&self) -> wire::ConfigHash {
        self.own_config.load(Relaxed).to_be_bytes()
    }
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
    /// Told when the member's thread has ended, its sockets closed.
    ended: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

/// What the heartbeat link reports.
/// What the load balancer asks of the member.
enum Command {
    /// Announce leaving; answer once the peer says it is active.
    Leave(oneshot::Sender<()>),
    /// Give the address up; answer when done.
    Release(oneshot::Sender<()>),
    /// Stop the member: no more beats, the heartbeat sockets closed once the thread
    /// ends (which `Cluster::stop` waits for).
    Stop,
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
        let counters = Arc::new(Counters {
            own_config: AtomicU64::new(u64::from_be_bytes(config.config_hash)),
            ..Counters::default()
        });
        let healthy = Arc::new(AtomicBool::new(true));
        let health_changed = Arc::new(Notify::new());
        let (commands, commands_rx) = mpsc::channel(2);
        let (ended_tx, ended) = std::sync::mpsc::channel();

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
            config_mismatch: false,
            peer_speaks_v1: false,
            other_versions: RateLimited::new(Duration::from_secs(60)),
        };
        // Built here so that a failure (no descriptors left for its epoll) is an
        // error at start, not a panic on the thread.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the cluster member's runtime")?;
        std::thread::Builder::new()
            .name(format!("{}-cluster", config.name))
            .spawn(move || {
                runtime.block_on(async move {
                    let udp = UdpSocket::from_std(std_udp).expect("inside a runtime");
                    let tcp = TcpListener::from_std(std_tcp).expect("inside a runtime");
                    member.run(udp, tcp, commands_rx).await;
                });
                // With the runtime go the link tasks and every socket.
                drop(runtime);
                let _ = ended_tx.send(());
            })?;
        Ok(Cluster {
            config,
            role,
            election,
            counters,
            healthy,
            health_changed,
            commands,
            ended: Mutex::new(Some(ended)),
        })
    }

    /// Stops the member (after [`Cluster::leave`]): no more beats, and once this
    /// returns its heartbeat sockets are closed, so a new process of this node (an
    /// upgrade) can bind them and join the election afresh.
    pub async fn stop(&self) {
        let _ = self.commands.send(Command::Stop).await;
        let ended = self.ended.lock().expect("poisoned").take();
        if let Some(ended) = ended {
            let _ = tokio::task::spawn_blocking(move || ended.recv()).await;
        }
    }

    /// The site file this node runs now, after a reload: the next beats carry its
    /// hash, and `status` and `/metrics` show it.
    pub fn set_config_hash(&self, hash: wire::ConfigHash) {
        self.counters
            .own_config
            .store(u64::from_be_bytes(hash), Relaxed);
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
        let peer_config = self.counters.peer_config();
        let peer = election.peer().map(|p| {
            serde_json::json!({
                "name": p.name,
                "config_hash": peer_config.as_ref().map(wire::hex),
                "wire_version": self.counters.peer_wire.load(Relaxed),
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
            "config_hash": wire::hex(&self.counters.own_config()),
            "config_mismatch": self.config_mismatch(),
            "peer": peer,
            "heartbeats": {
                "sent": self.counters.sent.load(Relaxed),
                "received": self.counters.received.load(Relaxed),
                "rejected": {
                    "malformed": self.counters.malformed.load(Relaxed),
                    "version": self.counters.version.load(Relaxed),
                    "forged": self.counters.forged.load(Relaxed),
                    "replayed": self.counters.replayed.load(Relaxed),
                },
            },
            "transitions": transitions,
        })
    }

    /// Whether the peer's last beat named another site file than this node's: the
    /// two load balancers would serve the site differently after a failover.
    pub fn config_mismatch(&self) -> bool {
        self.counters
            .peer_config()
            .is_some_and(|peer| peer != self.counters.own_config())
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
            ("version", &c.version),
            ("forged", &c.forged),
            ("replayed", &c.replayed),
        ] {
            let _ = writeln!(
                out,
                "scaleup_cluster_heartbeats_rejected_total{{node=\"{node}\",reason=\"{reason}\"}} {}",
                count.load(Relaxed)
            );
        }
        let peer_config = c.peer_config();
        let _ = writeln!(
            out,
            "# HELP scaleup_cluster_config_mismatch Whether the peer runs another site file than this node (1), by the hash in its heartbeats.\n\
             # TYPE scaleup_cluster_config_mismatch gauge\n\
             scaleup_cluster_config_mismatch{{node=\"{node}\"}} {}\n\
             # HELP scaleup_cluster_config_info The site files' hashes (first 16 hex digits of SHA-256) of this node and its peer (empty until its first heartbeat).\n\
             # TYPE scaleup_cluster_config_info gauge\n\
             scaleup_cluster_config_info{{node=\"{node}\",hash=\"{}\",peer=\"{}\",peer_hash=\"{}\"}} 1",
            u8::from(self.config_mismatch()),
            wire::hex(&self.counters.own_config()),
            self.config.peer_name,
            peer_config.as_ref().map(wire::hex).unwrap_or_default(),
        );
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
    /// Whether the peer's last beat named another site file: a warning is logged
    /// when this becomes true, and a note when it ends.
    config_mismatch: bool,
    /// Whether the peer speaks wire version 1 (an older release, in the middle of a
    /// rolling upgrade): this node's beats are then sent in version 1 too, which it
    /// reads, or it would count this node as dead and take the address as well.
    peer_speaks_v1: bool,
    /// Beats of another wire version: logged at most once a minute.
    other_versions: RateLimited,
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
                    Command::Stop => return,
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

    fn accept_beat(&mut self, bytes: &[u8], guard: &mut ReplayGuard) -> Option<Beat> {
        let checked = Beat::decode(bytes, &self.config.secret).and_then(|beat| {
            if beat.name != self.config.peer_name {
                return Err(Rejected::Forged);
            }
            guard.admit(&beat).map(|()| beat)
        });
        match checked {
            Ok(beat) => {
                self.counters.received.fetch_add(1, Relaxed);
                self.note_peer_version(beat.config.is_none());
                if let Some(config) = &beat.config {
                    self.note_peer_config(config);
                }
                Some(beat)
            }
            Err(Rejected::Version(version)) => {
                // Not authenticated (the layout is unknown), so it could be anyone's:
                // counted, and said at most once a minute, in words that fit the
                // likely cause.
                self.counters.version.fetch_add(1, Relaxed);
                if let Some(count) = self.other_versions.tick() {
                    tracing::warn!(
                        "cluster: ignored {count} heartbeat(s) of wire version {version} (this \
                         node reads versions {} and {}): {} probably runs a newer scaleup \
                         release; install the same release on both load balancers",
                        wire::VERSION_WITHOUT_CONFIG,
                        wire::VERSION,
                        self.config.peer_name
                    );
                }
                None
            }
            Err(reason) => {
                let counter = match reason {
                    Rejected::Malformed | Rejected::Version(_) => &self.counters.malformed,
                    Rejected::Forged => &self.counters.forged,
                    Rejected::Replayed => &self.counters.replayed,
                };
                counter.fetch_add(1, Relaxed);
                tracing::debug!("cluster: ignored a {} heartbeat", reason.as_str());
                None
            }
        }
    }

    /// Follows the peer's wire version: an older peer is answered in version 1.
    fn note_peer_version(&mut self, v1: bool) {
        self.counters.peer_wire.store(
            if v1 {
                wire::VERSION_WITHOUT_CONFIG
            } else {
                wire::VERSION
            },
            Relaxed,
        );
        if v1 == self.peer_speaks_v1 {
            return;
        }
        self.peer_speaks_v1 = v1;
        if v1 {
            // Its hash is unknown now: neither the same nor another.
            self.counters.peer_config_known.store(false, Relaxed);
            self.config_mismatch = false;
            tracing::warn!(
                "cluster: {} sends heartbeats of wire version {} (an older scaleup release): \
                 answering in that version, without the site file's hash, until it is \
                 upgraded to this release",
                self.config.peer_name,
                wire::VERSION_WITHOUT_CONFIG
            );
        } else {
            tracing::info!(
                "cluster: {} speaks heartbeat version {} again",
                self.config.peer_name,
                wire::VERSION
            );
        }
    }

    /// Remembers the peer's site-file hash and says when it starts or stops
    /// differing from this node's.
    fn note_peer_config(&mut self, peer: &wire::ConfigHash) {
        self.counters
            .peer_config
            .store(u64::from_be_bytes(*peer), Relaxed);
        self.counters.peer_config_known.store(true, Relaxed);
        let mismatch = *peer != self.counters.own_config();
        if mismatch == self.config_mismatch {
            return;
        }
        self.config_mismatch = mismatch;
        let (mine, theirs) = (wire::hex(&self.counters.own_config()), wire::hex(peer));
        if mismatch {
            tracing::warn!(
                "cluster: {} runs another site file than {} ({theirs} vs {mine} here): a \
                 failover would change how the site behaves; run the same file on both",
                self.config.peer_name,
                self.config.name
            );
        } else {
            tracing::info!(
                "cluster: {} runs the same site file as {} again ({mine})",
                self.config.peer_name,
                self.config.name
            );
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
                config: (!self.peer_speaks_v1).then_some(self.counters.own_config()),
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

/// How many link connections may be in their handshake at once. The real peer needs
/// one; the rest only bound what a stranger can make this node hold.
const MAX_HANDSHAKES: usize = 3;

/// How long a link handshake may take: a round trip and two HMACs, so anything
/// slower is not the peer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Accepts the peer's heartbeat link.
///
/// The heartbeat port is reachable by anyone who can reach the load balancer, so
/// what a connection can make this node hold is bounded: a connection from an
/// address other than the peer's heartbeat IP is closed unread; a handshake that
/// fails, errs or times out is closed at once; at most [`MAX_HANDSHAKES`] are in
/// progress (a new one pushes the oldest out, so a stranger who keeps the slots
/// busy must keep connecting, and the peer's quick handshake still gets through);
/// and one authenticated link is held, the newest (the peer only connects again
/// once its previous link ended, so an older one is stale). At most four link
/// sockets, whatever comes in.
async fn accept_links(listener: TcpListener, config: Config) {
    let mut handshakes: JoinSet<Option<TcpStream>> = JoinSet::new();
    let mut in_order: VecDeque<AbortHandle> = VecDeque::new();
    let mut link: Option<TcpStream> = None;
    let mut strangers = RateLimited::new(Duration::from_secs(10));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, from) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, most likely: wait rather than spin.
                        tracing::debug!("cluster: heartbeat link accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if !peer_may_connect(&config, from) {
                    if let Some(count) = strangers.tick() {
                        tracing::warn!(
                            "cluster: closed {count} heartbeat-link connection(s) from addresses \
                             other than the peer's ({}), e.g. {from}",
                            config.peer_heartbeat.ip()
                        );
                    }
                    continue;
                }
                in_order.retain(|h| !h.is_finished());
                if in_order.len() >= MAX_HANDSHAKES {
                    if let Some(oldest) = in_order.pop_front() {
                        oldest.abort();
                    }
                }
                let config = config.clone();
                in_order.push_back(handshakes.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, answer_link(stream, &config)).await {
                        Ok(Ok(stream)) => Some(stream),
                        Ok(Err(e)) => {
                            tracing::debug!("cluster: heartbeat link from {from} refused: {e}");
                            None
                        }
                        Err(_) => {
                            tracing::debug!("cluster: heartbeat link from {from}: handshake timed out");
                            None
                        }
                    }
                }));
            }
            Some(done) = handshakes.join_next() => {
                if let Ok(Some(stream)) = done {
                    // Replaces (and so closes) the previous link, if any.
                    link = Some(stream);
                }
            }
            ended = read_link(&mut link) => {
                // Held while the peer's process lives: its death closes it and the
                // peer side of this node's own link tells the election at once.
                // Once the peer closed it or it failed (a reset, a timeout: the
                // kernel's connection is already gone), closing this end tells
                // nobody anything, so it goes.
                if let Err(e) = ended {
                    tracing::debug!("cluster: heartbeat link from the peer: {e}");
                }
                link = None;
            }
        }
    }
}

/// Whether a link connection from `from` may be the peer's: it comes from the
/// peer's heartbeat IP (the peer binds that IP before it connects, see
/// [`connect_link`]), unless the peer's heartbeat address is a wildcard.
fn peer_may_connect(config: &Config, from: SocketAddr) -> bool {
    let peer = config.peer_heartbeat.ip().to_canonical();
    peer.is_unspecified() || peer == from.ip().to_canonical()
}

/// The accepting side of the link's challenge: the connecting side proves it knows
/// the secret by answering a fresh nonce, and this side answers in turn.
async fn answer_link(mut stream: TcpStream, config: &Config) -> std::io::Result<TcpStream> {
    let nonce: [u8; 16] = rand::random();
    stream.write_all(&nonce).await?;
    let mut answer = [0u8; 16];
    stream.read_exact(&mut answer).await?;
    if !wire::verify(
        &config.secret,
        &[&nonce, b"link", config.peer_name.as_bytes()],
        &answer,
    ) {
        return Err(std::io::Error::other("wrong answer to the challenge"));
    }
    let ack = wire::tag(&config.secret, &[&nonce, b"ok", config.name.as_bytes()]);
    stream.write_all(&ack).await?;
    Ok(stream)
}

/// Waits until the held link ends (never, while there is none): `Ok` when the peer
/// closed it, the error when it failed. Bytes the peer sends are read and dropped.
async fn read_link(link: &mut Option<TcpStream>) -> std::io::Result<()> {
    let Some(stream) = link else {
        return std::future::pending().await;
    };
    let mut sink = [0u8; 64];
    loop {
        if stream.read(&mut sink).await? == 0 {
            return Ok(());
        }
    }
}

/// Lets a warning through at most once per period, with how many events it stands for.
struct RateLimited {
    period: Duration,
    last: Option<Instant>,
    count: u64,
}

impl RateLimited {
    fn new(period: Duration) -> RateLimited {
        RateLimited {
            period,
            last: None,
            count: 0,
        }
    }

    /// Counts one event; `Some(events since the last warning)` when one is due.
    fn tick(&mut self) -> Option<u64> {
        self.count += 1;
        let now = Instant::now();
        if self.last.is_some_and(|at| now - at < self.period) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
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
        // From this node's own heartbeat IP: the peer accepts link connections from
        // that address only, and the kernel's choice of source could be another
        // (the floating IP, a second interface).
        let socket = match config.peer_heartbeat {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if config.heartbeat.is_ipv4() == config.peer_heartbeat.is_ipv4() {
            socket.bind(SocketAddr::new(config.heartbeat.ip(), 0))?;
        }
        let mut stream = socket.connect(config.peer_heartbeat).await?;
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
