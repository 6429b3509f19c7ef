//! What a node may spend on client connections: one budget per process, shared by
//! all its listeners, sized from the open-file limit, with a cap per client address.
//!
//! Running out of file descriptors is the cheapest attack on a proxy: idle sockets
//! cost the attacker nothing, and when `accept`, a health check's `connect` or the
//! heartbeat's socket fails with `EMFILE`, a node that counts that as a dead backend
//! fakes a failover. So, as HAProxy derives `maxconn` from `ulimit -n`:
//!
//! - [`raise_open_file_limit`] lifts the soft limit to the hard one at start;
//! - a [`Budget`] admits at most `(limit - reserve) / fds_per_connection` client
//!   connections across every listener of the process (each proxied connection
//!   also holds an upstream socket), leaving the reserve for upstream connections,
//!   health checks, the heartbeat, the admin listener and log files;
//! - no one client address (an IPv6 /64 counts as one) may hold more than
//!   `per_client` of them, so a single host cannot make the site answer nobody else;
//! - while the budget is nearly spent, new connections get a shorter wait for their
//!   first request ([`Slot::pressed`]), so idle sockets are recycled fast.
//!
//! [`is_local_exhaustion`] tells the errors that are this node's own shortage
//! (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) from a server's failure: those never mark
//! a server down.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::headers::Trusted;

/// Descriptors kept out of the client budget for everything else a node opens:
/// listeners, upstream and database pools, health checks, the heartbeat link, the
/// admin listener's own connections, log files.
const RESERVE: u64 = 256;

/// The default cap on connections from one client address (the site file's
/// `max_connections_per_client`).
pub const DEFAULT_PER_CLIENT: usize = 256;

/// The process's open-file limit (soft), or a conservative guess if it cannot be read.
pub fn open_file_limit() -> u64 {
    getrlimit().map_or(1024, |(soft, _)| soft)
}

/// Raises the soft open-file limit to the hard one (systemd's default soft limit is
/// 1,024, which a few hundred idle clients exhaust). Returns the limits before and
/// after, for the start-up log.
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = getrlimit()?;
    if soft >= hard {
        return Ok((soft, soft));
    }
    let limit = libc::rlimit {
        rlim_cur: hard as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: `limit` is a valid, initialised `rlimit` the call only reads.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((soft, hard))
}

fn getrlimit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid `rlimit` the call writes into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Whether `e` is this node running short of a local resource (descriptors, socket
/// buffers, memory) rather than the far end failing: such an error must never count
/// against a server, nor make a load balancer give up the floating address.
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Client connections a process may hold, and per client address.
#[derive(Debug)]
pub struct Budget {
    permits: Arc<Semaphore>,
    /// Connections admitted at most; a reload may change it ([`Budget::resize`]).
    capacity: AtomicUsize,
    per_client: AtomicUsize,
    /// Places a smaller capacity took back that were in use: each is forgotten
    /// instead of freed when its connection closes.
    owed: AtomicUsize,
    /// Open connections per client key (see [`client_key`]); absent means none. An
    /// entry is 16 bytes (an `IpAddr` key and a `usize` made it 32): with one entry
    /// per idle client from its own address, that was 54 bytes of each one's cost.
    clients: Mutex<HashMap<u64, u32>>,
    /// Addresses the per-client cap does not apply to: the tier in front, whose one
    /// address carries many clients' requests.
    exempt: arc_swap::ArcSwap<Trusted>,
    /// Connections closed at once because their address was over `per_client`.
    refused: AtomicU64,
    /// Places held by acceptors waiting for their next connection ([`Room`]): free,
    /// as far as the pressure on the budget goes.
    waiting: AtomicUsize,
}

impl Budget {
    /// A budget of exactly `capacity` connections, at most `per_client` from one
    /// address (tests and the admin listener; nodes use [`Budget::for_process`]).
    pub fn new(capacity: usize, per_client: usize) -> Arc<Budget> {
        Budget::build(capacity, per_client, Trusted::default())
    }

    fn build(capacity: usize, per_client: usize, exempt: Trusted) -> Arc<Budget> {
        let capacity = capacity.max(1);
        Arc::new(Budget {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity: AtomicUsize::new(capacity),
            per_client: AtomicUsize::new(per_client.max(1)),
            owed: AtomicUsize::new(0),
            clients: Mutex::new(HashMap::new()),
            exempt: arc_swap::ArcSwap::from_pointee(exempt),
            refused: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
        })
    }

    /// The budget of a node configured for `max_connections`, lowered to what the
    /// open-file limit allows when each client connection costs `fds_per_connection`
    /// descriptors (2 for a proxy: the client's and the upstream's). Connections
    /// from `exempt` (the tier in front) are counted but not capped per address.
    pub fn for_process(
        max_connections: usize,
        per_client: usize,
        fds_per_connection: u64,
        exempt: Trusted,
    ) -> Arc<Budget> {
        Budget::build(
            Budget::affordable(max_connections, fds_per_connection),
            per_client,
            exempt,
        )
    }

    /// `max_connections`, lowered (and said so) to what the open-file limit allows
    /// when each costs `fds_per_connection` descriptors.
    fn affordable(max_connections: usize, fds_per_connection: u64) -> usize {
        let limit = open_file_limit();
        let allowed = fd_allowance(limit, fds_per_connection);
        let wanted = max_connections as u64;
        if wanted > allowed {
            let why = format!(
                "max_connections {max_connections} lowered to {allowed}: the open-file \
                 limit is {limit} and each connection needs {fds_per_connection} \
                 (raise the hard limit, e.g. LimitNOFILE= in the systemd unit)"
            );
            // A few percent off is worth knowing, not worth a warning at every start.
            if allowed * 10 < wanted * 9 {
                tracing::warn!("{why}");
            } else {
                tracing::info!("{why}");
            }
        }
        (max_connections as u64).min(allowed) as usize
    }

    /// Changes the budget in place (a reload): `max_connections` (lowered as in
    /// [`Budget::for_process`]), `per_client` and the addresses `exempt` from it. More
    /// room is usable at once; less closes no connection: the places it takes back
    /// are taken from the free ones, then from the connections open now as they close.
    pub fn resize(
        &self,
        max_connections: usize,
        per_client: usize,
        fds_per_connection: u64,
        exempt: Trusted,
    ) {
        let new = Budget::affordable(max_connections, fds_per_connection).max(1);
        self.per_client.store(per_client.max(1), Relaxed);
        self.exempt.store(Arc::new(exempt));
        let old = self.capacity.swap(new, Relaxed);
        if new > old {
            // Places still owed are cancelled first, then new ones are made.
            let mut more = new - old;
            let _ = self.owed.fetch_update(Relaxed, Relaxed, |owed| {
                let cancel = owed.min(more);
                more = new - old - cancel;
                Some(owed - cancel)
            });
            self.permits.add_permits(more);
        } else if new < old {
            let fewer = old - new;
            let taken = self.permits.forget_permits(fewer);
            self.owed.fetch_add(fewer - taken, Relaxed);
        }
    }

    /// Connections admitted at most.
    pub fn capacity(&self) -> usize {
        self.capacity.load(Relaxed)
    }

    /// Connections open now.
    pub fn in_use(&self) -> usize {
        (self.capacity() + self.owed.load(Relaxed))
            .saturating_sub(self.permits.available_permits() + self.waiting.load(Relaxed))
    }

    /// Connections closed because their address held too many already.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// Waits for room for one more connection (before `accept`, so that over the
    /// budget new connections wait in the kernel's backlog, not in our memory).
    pub async fn room(self: &Arc<Self>) -> Room {
        // The semaphore is never closed.
        match self.permits.clone().acquire_owned().await {
            Ok(permit) => self.hold(permit),
            Err(_) => unreachable!("the budget's semaphore is never closed"),
        }
    }

    /// Room for one more connection now, if there is any (a listener draining its
    /// queue at shutdown must not wait).
    pub fn room_now(self: &Arc<Self>) -> Option<Room> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.hold(permit))
    }

    fn hold(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Room {
        self.waiting.fetch_add(1, Relaxed);
        Room {
            permit: Some(permit),
            budget: self.clone(),
        }
    }

    /// Admits a connection from `client` into `room`, or gives the room back when
    /// that address already holds `per_client` connections.
    pub fn admit(self: &Arc<Self>, mut room: Room, client: IpAddr) -> Result<Slot, Room> {
        let client = client.to_canonical();
        let key = (!self.exempt.load().contains(client)).then(|| client_key(client));
        if let Some(key) = key {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            let count = clients.entry(key).or_insert(0);
            if *count as usize >= self.per_client.load(Relaxed) {
                drop(clients);
                self.refused.fetch_add(1, Relaxed);
                return Err(room);
            }
            *count += 1;
        }
        let permit = room
            .permit
            .take()
            .expect("a room holds its place until admitted");
        let waiting = self.waiting.fetch_sub(1, Relaxed) - 1;
        // Nearly spent: under a tenth left (the places other acceptors hold while
        // they wait count as left).
        let pressed = self.permits.available_permits() + waiting < self.capacity() / 10;
        Ok(Slot {
            budget: self.clone(),
            key,
            pressed,
            permit: Some(permit),
        })
    }
}

/// Client connections `limit` descriptors allow when each costs `per_connection`.
fn fd_allowance(limit: u64, per_connection: u64) -> u64 {
    // Small limits keep a quarter for the rest, large ones a fixed reserve.
    let reserve = RESERVE.min(limit / 4);
    (limit.saturating_sub(reserve) / per_connection.max(1)).max(1)
}

/// The address that counts as one client, as a number: an IPv6 /64 (the smallest
/// block a single host is usually given) is its first 64 bits; an IPv4 address
/// (IPv4-mapped IPv6 too) is put under `ffff:ffff::/32`, a multicast block no TCP
/// peer's address can be in, so the two never meet.
fn client_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V6(v6) => (u128::from(v6) >> 64) as u64,
        IpAddr::V4(v4) => 0xffff_ffff_0000_0000 | u64::from(u32::from(v4)),
    }
}

/// A place an acceptor holds while it waits for its next connection (each serving
/// thread of a listener holds one); dropping it frees the place.
#[derive(Debug)]
pub struct Room {
    permit: Option<OwnedSemaphorePermit>,
    budget: Arc<Budget>,
}

impl Drop for Room {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.budget.waiting.fetch_sub(1, Relaxed);
        }
    }
}

/// One admitted connection's place in the budget; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    budget: Arc<Budget>,
    /// `None` for an exempt address.
    key: Option<u64>,
    pressed: bool,
    /// The place itself; `None` once given back.
    permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// Whether the budget was nearly spent when this connection came: it then gets
    /// a shorter wait for its first request.
    pub fn pressed(&self) -> bool {
        self.pressed
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A smaller budget is still owed places: this one goes, instead of being freed.
        let owed = &self.budget.owed;
        if owed.load(Relaxed) > 0
            && owed
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok()
        {
            if let Some(permit) = self.permit.take() {
                permit.forget();
            }
        }
        let Some(key) = self.key else { return };
        let mut clients = self
            .budget
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = clients.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                clients.remove(&key);
            }
        }
    }
}

/// A warning a hostile client can trigger at will (a failed accept, a refused
/// connection): written at most once a second, with how often it happened.
#[derive(Debug, Default)]
pub struct LogEvery {
    /// When the last line was written.
    last: Mutex<Option<Instant>>,
    /// Events since that line.
    count: AtomicU64,
}

impl LogEvery {
    /// A quiet limiter, for a `static`.
    pub const fn new() -> LogEvery {
        LogEvery {
            last: Mutex::new(None),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one event; `Some(n)` when a line should be written now, `n` being the
    /// events since the last line (this one included).
    pub fn hit(&self) -> Option<u64> {
        let n = self.count.fetch_add(1, Relaxed) + 1;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t).as_secs() < 1) {
            return None;
        }
        *last = Some(now);
        self.count.fetch_sub(n, Relaxed);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_address_cannot_take_every_place() {
        let budget = Budget::new(10, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(budget.admit(budget.room().await, a).unwrap());
        }
        assert!(budget.admit(budget.room().await, a).is_err());
        assert_eq!(budget.refused(), 1);
        let other = budget.admit(budget.room().await, b).unwrap();
        assert_eq!(budget.in_use(), 4);
        held.pop();
        held.push(budget.admit(budget.room().await, a).unwrap());
        drop(other);
        drop(held);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.clients.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_resized_budget_closes_nothing_and_takes_places_back_as_they_free() {
        let budget = Budget::new(6, 2);
        let ip = |i: u8| IpAddr::from([192, 0, 2, i]);
        let mut held = Vec::new();
        for i in 0..4 {
            held.push(budget.admit(budget.room().await, ip(i)).unwrap());
        }
        // Down to 3 (and 1 per address) with 4 open: none closes, none comes in.
        budget.resize(3, 1, 1, Trusted::default());
        assert_eq!((budget.capacity(), budget.in_use()), (3, 4));
        assert!(budget.room_now().is_none());
        held.pop();
        assert_eq!(budget.in_use(), 3);
        assert!(budget.room_now().is_none(), "the freed place was owed");
        held.pop();
        let permit = budget.room_now().expect("below the new capacity");
        // One per address now: 192.0.2.0 already has its one.
        assert!(budget.admit(permit, ip(0)).is_err());
        // Up to 10, 2 per address: room at once.
        budget.resize(10, 2, 1, Trusted::default());
        held.push(budget.admit(budget.room().await, ip(0)).unwrap());
        assert_eq!((budget.capacity(), budget.in_use()), (10, 3));
        drop(held);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.permits.available_permits(), 10);
    }

    #[tokio::test]
    async fn an_ipv6_slash_64_is_one_client_and_mapped_ipv4_is_ipv4() {
        let budget = Budget::new(10, 1);
        let _one = budget
            .admit(budget.room().await, "2001:db8::1".parse().unwrap())
            .unwrap();
        assert!(budget
            .admit(budget.room().await, "2001:db8::ffff:2".parse().unwrap())
            .is_err());
        let _v4 = budget
            .admit(budget.room().await, "192.0.2.9".parse().unwrap())
            .unwrap();
        assert!(budget
            .admit(budget.room().await, "::ffff:192.0.2.9".parse().unwrap())
            .is_err());
        // The next /64 is another client; so is an IPv6 address whose last bits spell
        // the IPv4 one (keys of the two families never meet).
        let _next = budget
            .admit(budget.room().await, "2001:db8:0:1::1".parse().unwrap())
            .unwrap();
        let _spelled = budget
            .admit(budget.room().await, "::192.0.2.9".parse().unwrap())
            .unwrap();
    }

    #[tokio::test]
    async fn the_tier_in_front_is_not_capped() {
        let budget = Budget::build(10, 1, Trusted::addresses(["192.0.2.1".parse().unwrap()]));
        let front: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let slots: Vec<Slot> = futures_util::future::join_all((0..5).map(|_| budget.room()))
            .await
            .into_iter()
            .map(|p| budget.admit(p, front).unwrap())
            .collect();
        assert_eq!(budget.in_use(), 5);
        drop(slots);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn the_last_tenth_is_pressed() {
        let budget = Budget::new(20, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut slots = Vec::new();
        for _ in 0..20 {
            slots.push(budget.admit(budget.room().await, ip).unwrap());
        }
        assert!(!slots[0].pressed());
        assert!(slots[19].pressed());
        assert!(budget.room_now().is_none());
    }

    #[test]
    fn descriptors_are_kept_for_the_rest() {
        assert_eq!(fd_allowance(1024, 2), 384);
        assert_eq!(fd_allowance(20_000, 2), 9_872);
        assert_eq!(fd_allowance(100, 1), 75);
        assert_eq!(fd_allowance(1, 2), 1);
    }

    #[test]
    fn exhaustion_is_told_from_a_remote_failure() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_local_exhaustion(&std::io::Error::from_raw_os_error(
                errno
            )));
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_local_exhaustion(&refused));
    }

    #[test]
    fn a_flood_of_warnings_is_one_line_a_second() {
        let every = LogEvery::new();
        assert_eq!(every.hit(), Some(1));
        for _ in 0..999 {
            assert_eq!(every.hit(), None);
        }
        *every.last.lock().unwrap() = Some(Instant::now() - std::time::Duration::from_secs(2));
        assert_eq!(every.hit(), Some(1000));
    }
}
